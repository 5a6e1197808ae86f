"""An upstream that writes every event on its own (the mock's `flush=1`), as real providers
do: the proxy then reads once per event, the piped relay's common case. The mock's bytes and
the proxy's answer must be the same as for the one-write body."""

from __future__ import annotations

import tracemalloc
from typing import Any

import orjson
import pytest

from streamproxy.providers.mock.server import (
    ANTHROPIC,
    OPENAI,
    MockOptions,
    start_mock_server,
    unpaced_body,
)
from tests.helpers import collect, sse_chunks


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/chat/completions"])
async def test_the_mock_sends_the_same_bytes_flushed_or_not(path: str) -> None:
    import aiohttp

    runner, url = await start_mock_server()
    try:
        bodies = []
        async with aiohttp.ClientSession() as session:
            for options in ("", "flush=1"):
                body = {"model": "fast:tokens=30", "stream": True, "max_tokens": 50,
                        "messages": [{"role": "user", "content": "hi"}]}
                async with session.post(url + path, json=body,
                                        headers={"x-mock-options": options}) as resp:
                    assert resp.status == 200
                    bodies.append(await resp.read())
        assert bodies[0] == bodies[1]
        assert bodies[0].count(b"\n\n") >= 30
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("model", ["mock/fast", "mock-openai/fast"])
async def test_a_flushed_stream_translates_like_a_one_write_one(default_proxy: Any,
                                                                model: str) -> None:
    client = await default_proxy()
    results = []
    for flush in ("", ",flush=1"):
        body = {"model": model + ":tokens=60" + flush, "stream": True,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": "hi"}]}
        resp = await client.post("/v1/chat/completions", data=orjson.dumps(body),
                                 headers={"content-type": "application/json"})
        assert resp.status == 200
        results.append(collect(sse_chunks(await resp.read())))
    one_write, flushed = results
    assert flushed.done and flushed.error is None
    assert flushed.content == one_write.content and len(flushed.content) > 100
    assert flushed.chunks == one_write.chunks
    assert flushed.finish_reason == one_write.finish_reason == "stop"
    assert flushed.usage == one_write.usage


def test_the_mocks_memo_of_bodies_is_bounded_in_bytes() -> None:
    """Clients choose the body's shape (`mock/tokens=100000`), and the embedded default serves
    the mock in the proxy's process: what it keeps of built bodies is bounded."""
    small = unpaced_body(OPENAI, MockOptions(tokens=20), "m", 1, True)
    assert unpaced_body(OPENAI, MockOptions(tokens=20), "m", 1, True) is small  # built once
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(20):  # ~2.4 MB each
            body = unpaced_body(ANTHROPIC, MockOptions(tokens=20_000 + i), "m", 1, True)
            assert body.count(b"event: content_block_delta") == 20_000 + i
        del body
        for i in range(200):  # ~0.1 MB each
            unpaced_body(OPENAI, MockOptions(tokens=1000 + i), f"m{i}", 1, True)
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 40 << 20  # a 512-entry memo kept all of them: ~100 MB here
