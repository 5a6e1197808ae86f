"""An upstream that writes every event on its own (the mock's `flush=1`), as real providers
do: the proxy then reads once per event, the piped relay's common case. The mock's bytes and
the proxy's answer must be the same as for the one-write body."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streamproxy.providers.mock.server import start_mock_server
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
