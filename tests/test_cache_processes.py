"""Two real proxy processes share cache hits through one real Redis (issue 7)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis

from tests.helpers import collect, fixture_bytes, sse_chunks
from tests.redis_server import _free_port, redis_server
from tests.test_workers import healthy, until

CACHE = '{"cache": {"mode": "simple", "max_age": 60}}'


def start(config: Path, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "streamproxy", "serve", "--config", str(config), "--port",
         str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


async def stream(url: str) -> tuple[str, bytes]:
    async with aiohttp.ClientSession() as s, s.post(url + "/v1/chat/completions", headers={
            "x-portkey-config": CACHE}, json={
            "model": "m", "stream": True, "messages": [{"role": "user", "content": "shared?"}],
            "stream_options": {"include_usage": True}}) as r:
        assert r.status == 200
        return r.headers["x-portkey-cache-status"], await r.read()


async def test_two_proxy_processes_share_hits_through_redis(tmp_path: Path,
                                                            upstream: Any) -> None:
    upstream.body = fixture_bytes("anthropic/sdk-python_tool_use_response.sse")
    with redis_server() as redis_url:
        config = tmp_path / "proxy.yaml"
        config.write_text(orjson.dumps({
            "providers": {"up": {"type": "anthropic", "base_url": upstream.url,
                                 "api_key": "k", "default_model": "m"}},
            "default_provider": "up",
            "cache": {"backend": "redis", "redis_url": redis_url}}).decode())
        ports = [_free_port(), _free_port()]
        procs = [start(config, port) for port in ports]
        try:
            one, two = (f"http://127.0.0.1:{port}" for port in ports)
            for url in (one, two):
                await until(lambda u=url: healthy(u), f"proxy at {url}")
            status, first = await stream(one)
            assert status == "MISS"
            shared = redis.Redis.from_url(redis_url)
            try:  # the fill is written just after the stream ends
                await until(lambda: shared.dbsize() > 0, "the cache entry in Redis", 10)
            finally:
                shared.close()
            status, second = await stream(two)
            assert status == "HIT"
            assert len(upstream.requests) == 1  # the second process never went upstream
            a, b = collect(sse_chunks(first)), collect(sse_chunks(second))
            assert (b.content, b.tool_calls, b.finish_reason) == (a.content, a.tool_calls,
                                                                  a.finish_reason)
            assert a.ids != b.ids  # fresh ids on the replay
        finally:
            for proc in procs:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)
