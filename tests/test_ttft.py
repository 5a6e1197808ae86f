"""Time to first token as operators read it (`streamproxy_time_to_first_token_seconds`, the
access log's `ttft_ms`): from the request's arrival to the first token the client got —
content, reasoning, a tool call, a refusal — not to the role chunk a stream may commit on
(Anthropic's first block's start, an OpenAI reasoning model's role chunk) while the model is
still silent. Fake upstreams on loopback that pause before the first token, both relays."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streamproxy.server.store_and_cache import FEATURES
from streamproxy.upstream.client import CLIENT_ENV
from tests.helpers import collect, make_config, metric_value, sse_chunks

USER = [{"role": "user", "content": "hi"}]
PAUSE = 0.3  # seconds between the role event and the first token


def sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (event.encode(), orjson.dumps(data))


CLAUDE_HEAD = (
    sse("message_start", {"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 1}}})
    + sse("content_block_start", {"type": "content_block_start", "index": 0,
                                  "content_block": {"type": "text", "text": ""}})
    + sse("ping", {"type": "ping"}))
CLAUDE_TAIL = (
    sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                "delta": {"type": "text_delta", "text": "Hello"}})
    + sse("content_block_stop", {"type": "content_block_stop", "index": 0})
    + sse("message_delta", {"type": "message_delta",
                            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                            "usage": {"output_tokens": 2}})
    + sse("message_stop", {"type": "message_stop"}))


def frame(delta: dict[str, Any], finish: str | None = None) -> bytes:
    return b"data: %s\n\n" % orjson.dumps({
        "id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "o3",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})


ROLE = frame({"role": "assistant", "content": "", "refusal": None})  # OpenAI's first chunk
DONE = b"data: [DONE]\n\n"


async def _stream(proxy: Any, upstream: Any, kind: str) -> Any:
    client = await proxy(make_config(
        {"up": {"type": kind, "base_url": upstream.url, "api_key": "k",
                "default_model": "m"}}, default="up"))
    resp = await client.post("/v1/chat/completions", json={"messages": USER, "stream": True})
    assert resp.status == 200
    return collect(sse_chunks(await resp.read()))


@pytest.mark.parametrize("upstream_client", ["native", "aiohttp"])  # piped, pulled relay
async def test_a_claude_stream_counts_its_ttft_to_the_first_text_not_the_block_start(
        upstream_client: str, proxy: Any, upstream: Any, access_log: Any,
        monkeypatch: Any) -> None:
    # The stream commits on the text block's start (the role chunk alone); the text comes
    # PAUSE later. The log said ~1 ms, the metric too.
    monkeypatch.setenv(CLIENT_ENV, upstream_client)
    upstream.pieces = [CLAUDE_HEAD, CLAUDE_TAIL]
    upstream.piece_delay = PAUSE
    labels = {"provider": "up", "model": "m"}
    before = metric_value("streamproxy_time_to_first_token_seconds_sum", labels)
    c = await _stream(proxy, upstream, "anthropic")
    assert c.content == "Hello" and c.done
    (line,) = access_log()
    assert line["ttft_ms"] >= PAUSE * 1000
    assert line["first_chunk_ms"] < line["ttft_ms"] <= line["duration_ms"]
    after = metric_value("streamproxy_time_to_first_token_seconds_sum", labels)
    assert after - before >= PAUSE


@pytest.mark.parametrize("upstream_client", ["native", "aiohttp"])
@pytest.mark.parametrize(("rest", "finish"), [
    (frame({"reasoning_content": "hmm"}) + frame({}, "stop"), "stop"),  # reasoning
    (frame({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {
        "name": "f", "arguments": "{}"}}]}) + frame({}, "tool_calls"), "tool_calls"),
    (frame({"refusal": "no"}) + frame({}, "stop"), "stop"),
    (frame({}, "stop"), "stop"),  # an empty answer: its finish is its first token
])
async def test_a_role_chunk_then_a_pause_counts_to_what_the_answer_begins_with(
        upstream_client: str, rest: bytes, finish: str, proxy: Any, upstream: Any,
        access_log: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv(CLIENT_ENV, upstream_client)
    upstream.pieces = [ROLE, rest + DONE]
    upstream.piece_delay = PAUSE
    c = await _stream(proxy, upstream, "openai")
    assert c.done and c.finish_reason == finish
    (line,) = access_log()
    assert line["ttft_ms"] >= PAUSE * 1000
    assert line["first_chunk_ms"] < line["ttft_ms"]


async def test_a_stream_that_begins_with_its_answer_has_its_first_chunk_as_first_token(
        proxy: Any, upstream: Any, access_log: Any) -> None:
    upstream.pieces = [frame({"role": "assistant", "content": "Hi"}), frame({}, "stop") + DONE]
    upstream.piece_delay = PAUSE
    c = await _stream(proxy, upstream, "openai")
    assert c.content == "Hi"
    (line,) = access_log()
    assert line["ttft_ms"] == line["first_chunk_ms"] < PAUSE * 1000


@pytest.mark.parametrize("upstream_client", ["native", "aiohttp"])
async def test_a_stream_that_fails_before_its_first_token_has_no_ttft(
        upstream_client: str, proxy: Any, upstream: Any, access_log: Any,
        monkeypatch: Any) -> None:
    # Cut after the role chunk: no token came, so there is no time to it (the stream's
    # failure is in its error fields); its first chunk's time is still logged.
    monkeypatch.setenv(CLIENT_ENV, upstream_client)
    upstream.pieces = [ROLE]
    labels = {"provider": "up", "model": "m"}
    before = metric_value("streamproxy_time_to_first_token_seconds_count", labels)
    c = await _stream(proxy, upstream, "openai")
    assert c.error is not None
    (line,) = access_log()
    assert line["ttft_ms"] is None and line["first_chunk_ms"] is not None
    assert metric_value("streamproxy_time_to_first_token_seconds_count", labels) == before


async def test_a_fallbacks_ttft_counts_from_the_clients_request(
        proxy: Any, upstream: Any, access_log: Any) -> None:
    # The first target fails after PAUSE; the second answers at once: the client waited
    # PAUSE and more for its first token, not the last attempt's milliseconds.
    upstream.statuses = [500]
    upstream.delay_before_headers = PAUSE
    upstream.pieces = [frame({"role": "assistant", "content": "Hi"}) + frame({}, "stop") + DONE]
    client = await proxy(make_config(
        {"a": {"type": "openai", "base_url": upstream.url, "api_key": "k",
               "default_model": "m"},
         "b": {"type": "openai", "base_url": upstream.url, "api_key": "k",
               "default_model": "m"}}, default="a"))
    config = {"strategy": {"mode": "fallback"}, "targets": [{"provider": "a"}, {"provider": "b"}]}
    resp = await client.post("/v1/chat/completions", json={"messages": USER, "stream": True},
                             headers={"x-portkey-config": orjson.dumps(config).decode()})
    assert collect(sse_chunks(await resp.read())).content == "Hi"
    (line,) = access_log()
    assert line["fallbacks"] == 1 and line["ttft_ms"] >= PAUSE * 1000 * 2


async def test_a_cache_hits_ttft_is_its_whole_answers_time(proxy: Any, upstream: Any,
                                                           access_log: Any) -> None:
    # A hit's stream is the whole answer in one write: its first token is then (logged,
    # and kept out of the provider's histogram: test_metrics), as its first chunk.
    upstream.pieces = [ROLE, frame({"content": "Hi"}) + frame({}, "stop") + DONE]
    upstream.piece_delay = PAUSE
    client = await proxy(make_config(
        {"up": {"type": "openai", "base_url": upstream.url, "api_key": "k",
                "default_model": "m"}}, default="up"))
    cache = {"x-portkey-config": orjson.dumps({"cache": {"mode": "simple"}}).decode()}
    for expected in ("MISS", "HIT"):
        resp = await client.post("/v1/chat/completions", headers=cache,
                                 json={"messages": USER, "stream": True})
        assert collect(sse_chunks(await resp.read())).content == "Hi"
        assert resp.headers["x-portkey-cache-status"] == expected
        await client.server.app[FEATURES].cache.drain()
    miss, hit = access_log()
    assert miss["ttft_ms"] >= PAUSE * 1000 > miss["first_chunk_ms"]
    assert hit["cache_status"] == "HIT" and hit["ttft_ms"] == hit["first_chunk_ms"]
    assert hit["ttft_ms"] < PAUSE * 1000
