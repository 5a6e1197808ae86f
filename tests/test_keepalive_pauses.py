"""`server.keepalive_interval` once a stream's answer runs: an upstream silent in a pause
(Gemini and Bedrock send no pings, nor does an OpenAI-compatible server) leaves the client with
nothing, and a load balancer's idle timeout (an ALB's, nginx's 60 s) cut a healthy stream. Fake
upstreams on loopback that pause between events; short intervals; both relays, both fronts."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiohttp import web

from streamproxy.server.app import create_app
from streamproxy.upstream.client import CLIENT_ENV
from tests.conftest import ProxyTestServer
from tests.helpers import collect, make_config, sse_chunks

USER = [{"role": "user", "content": "hi"}]
COMMENT = b"\n\n: keep-alive\n\n"


def openai_frame(delta: dict[str, Any], finish: str | None = None) -> bytes:
    return b"data: %s\n\n" % orjson.dumps({
        "id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


def gemini_frame(text: str, finish: str | None = None) -> bytes:
    candidate: dict[str, Any] = {"index": 0,
                                 "content": {"role": "model", "parts": [{"text": text}]}}
    if finish:
        candidate["finishReason"] = finish
    return b"data: %s\r\n\r\n" % orjson.dumps({"candidates": [candidate]})


STREAMS = {
    "openai": [openai_frame({"role": "assistant", "content": "4"}),
               openai_frame({"content": "2"}),
               openai_frame({}, "stop") + b"data: [DONE]\n\n"],
    "gemini": [gemini_frame("4"), gemini_frame("2"), gemini_frame("", "STOP")],
}


@pytest.mark.parametrize("front", ["lean", "aiohttp"])
@pytest.mark.parametrize("upstream_client", ["native", "aiohttp"])  # piped, pulled relay
@pytest.mark.parametrize("kind", sorted(STREAMS))
async def test_keepalives_while_an_upstream_is_silent_after_its_first_token(
        kind: str, upstream_client: str, front: str, proxy: Any, upstream: Any,
        monkeypatch: Any) -> None:
    # 0.5 s of silence after "4", at 0.1 s: the client got nothing until "2".
    monkeypatch.setenv(CLIENT_ENV, upstream_client)
    upstream.pieces = STREAMS[kind]
    upstream.piece_delay = 0.5
    client = await proxy(make_config(
        {"up": {"type": kind, "base_url": upstream.url, "api_key": "k", "default_model": "m",
                "timeouts": {"first_token": 5, "idle": 5}}},
        default="up", server={"keepalive_interval": 0.1, "front": front}))
    resp = await client.post("/v1/chat/completions", json={"messages": USER, "stream": True})
    body = await resp.read()
    assert resp.status == 200
    pause = body[body.index(b'"content":"4"'):body.index(b'"content":"2"')]
    assert pause.count(COMMENT) >= 1, pause
    c = collect(sse_chunks(body))
    assert c.content == "42" and c.done and c.error is None


async def test_no_keepalives_without_the_interval(proxy: Any, upstream: Any) -> None:
    upstream.pieces = STREAMS["openai"]
    upstream.piece_delay = 0.2
    client = await proxy(make_config(
        {"up": {"type": "openai", "base_url": upstream.url, "api_key": "k",
                "default_model": "m"}}, default="up"))
    resp = await client.post("/v1/chat/completions", json={"messages": USER, "stream": True})
    body = await resp.read()
    assert b"keep-alive" not in body and collect(sse_chunks(body)).content == "42"


async def test_an_event_stream_an_app_hook_compresses_still_streams(
        upstream: Any, aiohttp_client: Any) -> None:
    """An embedding app's `on_response_prepare` hook enables compression (aiohttp front):
    aiohttp's compressor does not flush per write, so the frames, and the keep-alive comments
    (sent through it, or not at all), waited in its buffer: the client got nothing until it
    filled or the stream ended. An event stream is left uncompressed."""
    upstream.pieces = [openai_frame({"role": "assistant", "content": "4"})]
    upstream.hold_open = True  # then silent for good
    app = create_app(make_config(
        {"up": {"type": "openai", "base_url": upstream.url, "api_key": "k",
                "default_model": "m"}},
        default="up", server={"keepalive_interval": 0.1, "front": "aiohttp"}))

    async def compress(request: Any, response: Any) -> None:
        if isinstance(response, web.StreamResponse):
            response.enable_compression()

    app.on_response_prepare.append(compress)
    client = await aiohttp_client(ProxyTestServer(app, handler_cancellation=True))
    resp = await client.post("/v1/chat/completions", json={"messages": USER, "stream": True},
                             headers={"accept-encoding": "gzip"})
    async with asyncio.timeout(5):  # (held in the compressor: until the bound)
        assert b'"content":"4"' in await resp.content.readuntil(b"\n\n")
        assert await resp.content.readuntil(b"\n\n") == b": keep-alive\n\n"
    resp.close()
