"""The response cache: Portkey's `cache: {mode: simple, max_age}` config and headers, streamed
hits replayed byte for byte (modulo a fresh id and created), non-streamed hits, expiry, what is
never cached, the LRU bound, and two proxy instances sharing hits through a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import tracemalloc
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproxy.cache import entry as cached
from streamproxy.cache.backends import MemoryCache, RedisCache
from streamproxy.cache.config import CacheSettings, max_age_for, parse_cache_settings
from streamproxy.cache.key import cache_key
from streamproxy.cache.service import make_backend
from streamproxy.config import ConfigError
from streamproxy.openai_api.chunks import ChunkEncoder, RecordingChunkEncoder
from streamproxy.openai_api.completion import CompletionBuilder, TeeSink
from streamproxy.providers.anthropic.stream import AnthropicStreamTranslator
from streamproxy.providers.mock.server import mock_text
from streamproxy.providers.openai_compat import PassthroughTranslator
from streamproxy.server.store_and_cache import FEATURES
from tests.helpers import (
    collect,
    fixture_bytes,
    jsonl_to_sse,
    make_config,
    metric_value,
    random_splits,
    sse_chunks,
)
from tests.redis_server import FakeRedis, redis_server

USER = [{"role": "user", "content": "Hello"}]
STATUS = "x-portkey-cache-status"
ANTHROPIC_FIXTURES = {
    "text": jsonl_to_sse(fixture_bytes("anthropic/vercel-ai_anthropic-text.chunks.jsonl")),
    "thinking": fixture_bytes("anthropic/llm-anthropic_test_thinking_prompt.response0.sse"),
    "tool-use": fixture_bytes("anthropic/sdk-python_tool_use_response.sse"),
}
OPENAI_FIXTURES = {
    "text": fixture_bytes("openai/pydantic-ai_run_stream_sync.response1.sse"),
    "tool": fixture_bytes("openai/pydantic-ai_run_stream_sync.response0.sse"),
}


def cache_header(**cache: Any) -> dict[str, str]:
    return {"x-portkey-config": orjson.dumps({"cache": {"mode": "simple", **cache}}).decode()}


def config(upstream_url: str | None = None, kind: str = "anthropic", **sections: Any) -> Any:
    providers: dict[str, Any] = {
        "mock": {"type": "mock", "default_model": "fast"},
        "mock-openai": {"type": "mock", "wire": "openai", "default_model": "fast"},
    }
    if upstream_url:
        providers["up"] = {"type": kind, "base_url": upstream_url, "api_key": "sk-secret",
                           "default_model": "m"}
    return make_config(providers, default="mock", **sections)


async def post(client: Any, body: dict[str, Any], headers: dict[str, str] | None = None,
               **extra: Any) -> tuple[Any, bytes]:
    resp = await client.post("/v1/chat/completions", json={"messages": USER, **body, **extra},
                             headers=headers or {})
    return resp, await resp.read()


async def drained(client: Any) -> None:
    """Wait for the cache writes of finished requests (they run in background tasks)."""
    await client.server.app[FEATURES].cache.drain()


_ENVELOPE = re.compile(rb'"id":"chatcmpl-[0-9a-f]+"|"created":\d+')


def envelope_free(body: bytes) -> bytes:
    return _ENVELOPE.sub(b"", body)


def ids(body: bytes) -> set[str]:
    return collect(sse_chunks(body)).ids


# -- through the proxy ----------------------------------------------------------------------

@pytest.mark.parametrize("stream", [True, False])
async def test_a_hit_is_logged_as_one_and_its_tokens_are_not_the_providers(
        proxy: Any, caplog: pytest.LogCaptureFixture, stream: bool) -> None:
    caplog.set_level(logging.INFO)
    client = await proxy(config())
    body = {"model": "mock/fast", "stream": stream}  # a configured model: its own label
    lbl = {"provider": "mock", "model": "fast", "type": "output"}
    before = metric_value("streamproxy_tokens_total", lbl)
    for _ in range(2):
        resp, _ = await post(client, body, cache_header())
        assert resp.status == 200
        await drained(client)
    assert resp.headers[STATUS] == "HIT"
    lines = [orjson.loads(r.getMessage()) for r in caplog.records
             if r.name == "streamproxy.access"]
    assert [line["cache_status"] for line in lines] == ["MISS", "HIT"]
    assert lines[1]["completion_tokens"] == 200  # what the client got, logged
    assert metric_value("streamproxy_tokens_total", lbl) == before + 200  # once


@pytest.mark.parametrize("stream", [True, False])
async def test_a_hit_names_the_target_that_answered_and_no_retries(proxy: Any,
                                                                    stream: bool) -> None:
    # Portkey's hit carries x-portkey-last-used-option-index (the target whose entry
    # answered) and x-portkey-retry-attempt-count 0, as a miss does.
    client = await proxy(config())
    headers = {"x-portkey-config": orjson.dumps({
        "strategy": {"mode": "fallback"}, "cache": {"mode": "simple"},
        "targets": [{"provider": "mock", "override_params": {"model": "fast:tokens=3"}},
                    {"provider": "mock-openai"}]}).decode()}
    answers = []
    for _ in range(2):
        resp, _ = await post(client, {"stream": stream}, headers)
        answers.append(resp.headers)
        await drained(client)
    miss, hit = answers
    assert (miss[STATUS], hit[STATUS]) == ("MISS", "HIT")
    for name in ("x-portkey-last-used-option-index", "x-portkey-retry-attempt-count",
                 "x-portkey-provider"):
        assert hit.get(name) == miss.get(name), name
    assert hit["x-portkey-last-used-option-index"] == "config.targets[0]"
    assert hit["x-portkey-retry-attempt-count"] == "0"


@pytest.mark.parametrize("model", ["mock/fast:tokens=40", "mock/tools", "mock/tool"])
@pytest.mark.parametrize("usage", [True, False])
async def test_a_streamed_hit_replays_the_same_bytes_with_a_fresh_id(proxy: Any, model: str,
                                                                    usage: bool) -> None:
    client = await proxy(config())
    body = {"model": model, "stream": True, "stream_options": {"include_usage": usage}}
    miss, first = await post(client, body, cache_header())
    assert miss.status == 200 and miss.headers[STATUS] == "MISS"
    await drained(client)
    hit, second = await post(client, body, cache_header())
    assert hit.status == 200 and hit.headers[STATUS] == "HIT"
    assert hit.headers["content-type"].startswith("text/event-stream")
    assert hit.headers["x-portkey-provider"] == "mock"
    assert envelope_free(second) == envelope_free(first)  # every delta, byte for byte
    assert ids(first).isdisjoint(ids(second)) and len(ids(second)) == 1
    again = collect(sse_chunks(second))
    assert again.done and again.finish_reason and (again.usage is not None) == usage
    assert max(again.created) >= max(collect(sse_chunks(first)).created)


@pytest.mark.parametrize("name", ANTHROPIC_FIXTURES)
async def test_a_recorded_anthropic_stream_replays_byte_for_byte(name: str, proxy: Any,
                                                                 upstream: Any) -> None:
    upstream.pieces = random_splits(ANTHROPIC_FIXTURES[name], random.Random(name), 40)
    client = await proxy(config(upstream.url))
    body = {"model": "up/m", "stream": True, "stream_options": {"include_usage": True}}
    _, first = await post(client, body, cache_header())
    await drained(client)
    hit, second = await post(client, body, cache_header())
    assert hit.headers[STATUS] == "HIT"
    assert len(upstream.requests) == 1  # the hit asked nobody
    assert envelope_free(second) == envelope_free(first)


@pytest.mark.parametrize("name", OPENAI_FIXTURES)
async def test_a_passthrough_stream_replays_the_same_deltas(name: str, proxy: Any,
                                                            upstream: Any) -> None:
    upstream.body = OPENAI_FIXTURES[name]
    client = await proxy(config(upstream.url, kind="openai"))
    body = {"model": "up/m", "stream": True, "stream_options": {"include_usage": True}}
    _, first = await post(client, body, cache_header())
    await drained(client)
    hit, second = await post(client, body, cache_header())
    assert hit.headers[STATUS] == "HIT" and len(upstream.requests) == 1
    assert deltas(second) == deltas(first)
    a, b = collect(sse_chunks(first)), collect(sse_chunks(second))
    assert (b.content, b.tool_calls, b.finish_reason, b.usage) == (
        a.content, a.tool_calls, a.finish_reason, a.usage)
    assert a.ids.isdisjoint(b.ids)


def _envelopes(body: bytes, stream: bool) -> list[dict[str, Any]]:
    """What a client reads around the deltas: each chunk's (or the object's) model,
    system_fingerprint and service_tier."""
    objects = ([c for c in sse_chunks(body) if c != "[DONE]"] if stream
               else [orjson.loads(body)])
    return [{k: o.get(k) for k in ("model", "system_fingerprint", "service_tier")}
            for o in objects]


TOOL_ANSWER = {  # an OpenAI answer with the upstream's own fields and a tool call
    "id": "chatcmpl-up", "object": "chat.completion", "created": 5, "model": "m-2024-01-01",
    "service_tier": "default", "system_fingerprint": "fp_abc",
    "choices": [{"index": 0, "logprobs": None, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "Let me look.", "refusal": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}}


@pytest.mark.parametrize("fill_streamed", [True, False])
@pytest.mark.parametrize("hit_streamed", [True, False])
async def test_a_hit_keeps_what_a_client_reads_of_a_passthrough_answer(
        proxy: Any, upstream: Any, fill_streamed: bool, hit_streamed: bool) -> None:
    # system_fingerprint and service_tier (which clients log to tell backends apart) came
    # back null or missing from every replay but the non-streamed one of a non-streamed fill.
    if fill_streamed:
        upstream.body = OPENAI_FIXTURES["text"]
    else:
        upstream.content_type, upstream.body = "application/json", orjson.dumps(TOOL_ANSWER)
    client = await proxy(config(upstream.url, kind="openai"))
    body = {"model": "up/m", "stream": fill_streamed, "stream_options": (
        {"include_usage": True} if fill_streamed else None)}
    miss, first = await post(client, body, cache_header())
    await drained(client)
    body = {"model": "up/m", "stream": hit_streamed, "stream_options": (
        {"include_usage": True} if hit_streamed else None)}
    hit, replayed = await post(client, body, cache_header())
    assert (miss.headers[STATUS], hit.headers[STATUS]) == ("MISS", "HIT")
    assert len(upstream.requests) == 1
    expected = _envelopes(first, fill_streamed)[0]
    assert expected["system_fingerprint"] and expected["service_tier"]
    assert all(e == expected for e in _envelopes(replayed, hit_streamed))
    if hit_streamed:
        a = collect(sse_chunks(replayed))
        content, calls, finish, usage = (a.content, [(t["id"], t["name"], t["arguments"])
                                                      for t in a.tool_calls],
                                         a.finish_reason, a.usage)
    else:
        choice = orjson.loads(replayed)["choices"][0]
        content, finish, usage = (choice["message"]["content"], choice["finish_reason"],
                                  orjson.loads(replayed)["usage"])
        calls = [(t["id"], t["function"]["name"], t["function"]["arguments"])
                 for t in choice["message"].get("tool_calls") or []]
    if fill_streamed:
        b = collect(sse_chunks(first))
        assert (content, calls, finish, usage) == (
            b.content, [(t["id"], t["name"], t["arguments"]) for t in b.tool_calls],
            b.finish_reason, b.usage)
    else:
        message = TOOL_ANSWER["choices"][0]["message"]  # type: ignore[index]
        assert (content, finish, usage) == ("Let me look.", "tool_calls", TOOL_ANSWER["usage"])
        assert calls == [("call_1", "get_weather", message["tool_calls"][0]["function"][
            "arguments"])]


def deltas(body: bytes) -> list[Any]:
    """Each chunk's delta content, reasoning and tool-call pieces, in order."""
    out = []
    for chunk in sse_chunks(body):
        if chunk == "[DONE]" or not chunk.get("choices"):
            continue
        d = chunk["choices"][0].get("delta") or {}
        for key in ("content", "reasoning_content"):
            if d.get(key):
                out.append((key, d[key]))
        for tc in d.get("tool_calls") or []:
            out.append(("tool", tc.get("index"), tc.get("id"),
                        (tc.get("function") or {}).get("name"),
                        (tc.get("function") or {}).get("arguments")))
    return out


async def test_force_refresh_and_disabled(proxy: Any, upstream: Any) -> None:
    upstream.body = ANTHROPIC_FIXTURES["text"]
    client = await proxy(config(upstream.url))
    body = {"model": "up/m", "stream": True}
    resp, _ = await post(client, body)
    assert resp.headers[STATUS] == "DISABLED"
    resp, _ = await post(client, body)
    assert resp.headers[STATUS] == "DISABLED" and len(upstream.requests) == 2
    resp, _ = await post(client, body, cache_header())
    assert resp.headers[STATUS] == "MISS" and len(upstream.requests) == 3
    await drained(client)
    refresh = {**cache_header(), "x-portkey-cache-force-refresh": "true"}
    resp, _ = await post(client, body, refresh)
    assert resp.headers[STATUS] == "REFRESH" and len(upstream.requests) == 4
    await drained(client)
    resp, _ = await post(client, body, cache_header())
    assert resp.headers[STATUS] == "HIT" and len(upstream.requests) == 4


async def test_a_non_streamed_hit_is_the_object_with_a_fresh_id(proxy: Any) -> None:
    client = await proxy(config())
    body = {"model": "mock/tools"}
    miss, first = await post(client, body, cache_header())
    await drained(client)
    hit, second = await post(client, body, cache_header())
    assert (miss.headers[STATUS], hit.headers[STATUS]) == ("MISS", "HIT")
    a, b = orjson.loads(first), orjson.loads(second)
    assert a["id"] != b["id"] and b["id"].startswith("chatcmpl-")
    assert b["choices"] == a["choices"] and b["usage"] == a["usage"]


async def test_streamed_and_non_streamed_requests_share_entries(proxy: Any) -> None:
    client = await proxy(config())
    _, streamed = await post(client, {"model": "mock/tool", "stream": True}, cache_header())
    await drained(client)
    hit, whole = await post(client, {"model": "mock/tool"}, cache_header())
    assert hit.headers[STATUS] == "HIT"
    s, message = collect(sse_chunks(streamed)), orjson.loads(whole)["choices"][0]["message"]
    assert message["content"] == s.content
    assert [(t["id"], t["function"]["name"], t["function"]["arguments"])
            for t in message["tool_calls"]] == [(t["id"], t["name"], t["arguments"])
                                                for t in s.tool_calls]
    _, whole = await post(client, {"model": "mock/fast:tokens=3"}, cache_header())
    await drained(client)
    hit, streamed = await post(client, {"model": "mock/fast:tokens=3", "stream": True},
                               cache_header())
    assert hit.headers[STATUS] == "HIT"
    assert collect(sse_chunks(streamed)).content == (
        orjson.loads(whole)["choices"][0]["message"]["content"])


async def test_what_changes_the_answer_changes_the_key(proxy: Any, upstream: Any) -> None:
    upstream.body = ANTHROPIC_FIXTURES["text"]
    client = await proxy(config(upstream.url))
    base = {"model": "up/m", "stream": True, "temperature": 0.2}
    await post(client, base, cache_header())
    await drained(client)
    same = [{"user": "u2"}, {"metadata": {"a": "b"}}, {"stream_options": {"include_usage": True}},
            {"store": False}]
    for extra in same:
        resp, _ = await post(client, {**base, **extra}, cache_header())
        assert resp.headers[STATUS] == "HIT", extra
    resp, _ = await post(client, {**base, "temperature": 0.3}, cache_header())
    assert resp.headers[STATUS] == "MISS"
    resp, _ = await post(client, base, {**cache_header(), "x-portkey-cache-namespace": "n2"})
    assert resp.headers[STATUS] == "MISS"


async def test_max_age_expires_entries(proxy: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    client = await proxy(config())
    body = {"model": "mock/fast:tokens=3", "stream": True}
    await post(client, body, cache_header(max_age=60))
    await drained(client)
    resp, _ = await post(client, body, cache_header(max_age=60))
    assert resp.headers[STATUS] == "HIT"
    real = cached.time.time
    monkeypatch.setattr(cached.time, "time", lambda: real() + 61)
    resp, _ = await post(client, body, cache_header(max_age=60))
    assert resp.headers[STATUS] == "MISS"
    resp, _ = await post(client, body, cache_header(max_age=3600))  # a longer max_age still
    assert resp.headers[STATUS] == "HIT"                              # accepts the old entry


async def test_failed_answers_are_never_cached(proxy: Any) -> None:
    client = await proxy(config())
    failing = [({"model": "mock/error", "stream": True}, {}),
               ({"model": "mock/fast", "stream": True}, {"x-mock-options": "truncate_after=2"}),
               ({"model": "mock/fast"}, {"x-mock-options": "status=500"})]
    for body, headers in failing:
        for _ in range(2):
            resp, out = await post(client, body, {**cache_header(), **headers})
            assert resp.headers[STATUS] == "MISS", body
            # before the commit point an error status, after it an error frame
            assert resp.status >= 400 or collect(sse_chunks(out)).error is not None
            await drained(client)


def _fallback(root_cache: bool, primary_cache: bool, fallback_cache: bool) -> dict[str, str]:
    """A fallback config whose primary fails (503) and whose second target answers; `cache`
    at the root and/or on either target."""
    cache = {"cache": {"mode": "simple", "max_age": 60}}
    config = {"strategy": {"mode": "fallback"}, **(cache if root_cache else {}), "targets": [
        {"provider": "mock", "override_params": {"model": "fast:status=503"},
         **(cache if primary_cache else {})},
        {"provider": "mock-openai", "override_params": {"model": "fast:tokens=3"},
         **(cache if fallback_cache else {})}]}
    return {"x-portkey-config": orjson.dumps(config).decode()}


ANSWERING = {"x-portkey-config": orjson.dumps({  # the fallback's target, on its own
    "provider": "mock-openai", "override_params": {"model": "fast:tokens=3"},
    "cache": {"mode": "simple", "max_age": 60}}).decode()}


@pytest.mark.parametrize("stream", [True, False])
async def test_an_answer_is_cached_under_the_target_that_gave_it(
        proxy: Any, access_log: Any, stream: bool) -> None:
    # Portkey keys its cache by target, and each target looks up its own key before its
    # request: the fallback's answer is served in its name, never as the primary's. The
    # lookup went by the first target's key alone: the answer was written where no request
    # read it, and every later one asked the fallback again (MISS, 2 upstream requests).
    client = await proxy(config())
    answers = []
    for _ in range(2):
        resp, out = await post(client, {"stream": stream}, _fallback(True, False, False))
        assert resp.status == 200 and resp.headers["x-portkey-provider"] == "mock-openai"
        assert resp.headers["x-portkey-last-used-option-index"] == "config.targets[1]"
        answers.append((resp.headers[STATUS], resp.headers["x-portkey-retry-attempt-count"],
                        _text(out, stream)))
        await drained(client)
    assert answers == [("MISS", "0", mock_text(3)), ("HIT", "0", mock_text(3))]
    # the primary is still tried first (its key holds nothing); the fallback is not asked
    assert [(line["attempts"], line["cache_status"], line["target_index"])
            for line in access_log()] == [(2, "MISS", 1), (1, "HIT", 1)]
    resp, hit = await post(client, {"stream": stream}, ANSWERING)  # the same target's key
    assert resp.headers[STATUS] == "HIT"
    assert _text(hit, stream) == _text(out, stream) == mock_text(3)


def _text(body: bytes, stream: bool) -> str | None:
    if stream:
        return collect(sse_chunks(body)).content
    return orjson.loads(body)["choices"][0]["message"]["content"]  # type: ignore[no-any-return]


class OneEntryCache(MemoryCache):
    """Whatever the key, the hand-made entry it holds (until a fill replaces it)."""

    def __init__(self, entry: dict[str, Any]) -> None:
        super().__init__(100, 1 << 20)
        self.entry: dict[str, Any] | None = entry

    async def get(self, key: str) -> dict[str, Any] | None:
        return self.entry if self.entry is not None else await super().get(key)

    async def set(self, key: str, entry: dict[str, Any], max_age: float) -> None:
        self.entry = None
        await super().set(key, entry, max_age)


_NOW = {"format": cached.FORMAT, "stored_at": 4e9}  # (fresh until 2096)


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("entry", [
    {**_NOW, "model": "m", "content": ["a"]},  # no runs
    {**_NOW, "model": "m", "runs": [["c", 0, 2]], "content": ["a"], "reasoning": [],
     "thinking": [], "tools": []},  # a run longer than its parts
    {**_NOW, "runs": "c", "content": 5, "reasoning": [], "thinking": [], "tools": []},
    {**_NOW, "completion": ["not", "an", "object"]},
    {**_NOW, "completion": {"model": "m", "choices": "x"}},
], ids=["no-runs", "short-parts", "wrong-types", "completion-list", "choices-string"])
async def test_a_malformed_entry_is_a_miss_logged_once(
        proxy: Any, caplog: pytest.LogCaptureFixture, stream: bool, entry: dict[str, Any]) -> None:
    """An entry that claims the current format but lacks its fields (an older or corrupted one,
    in Redis) raised in the replay: a 500 for every request under its key until it expired."""
    client = await proxy(config())
    cache = client.server.app[FEATURES].cache
    await cache.backend.close()
    cache.backend = OneEntryCache(entry)
    body = {"model": "mock/fast:tokens=3", "stream": stream}
    statuses = []
    for _ in range(3):
        resp, out = await post(client, body, cache_header())
        assert resp.status == 200
        if stream:
            assert collect(sse_chunks(out)).done
        statuses.append(resp.headers[STATUS])
        await drained(client)
        if statuses[-1] == "MISS" and len(statuses) == 1:
            cache.backend.entry = entry  # the bad entry again: one warning, not one per request
    assert statuses == ["MISS", "MISS", "HIT"]  # the miss's answer replaced it
    assert [r.levelname for r in caplog.records if r.name == "streamproxy.cache"] == ["WARNING"]


async def test_a_targets_own_cache_decides_for_that_target(proxy: Any) -> None:
    client = await proxy(config())
    # cache on the primary only: the fallback's answer is not kept, and the status is the
    # answering target's, as Portkey's (it has no cache)
    resp, _ = await post(client, {}, _fallback(False, True, False))
    assert resp.status == 200 and resp.headers[STATUS] == "DISABLED"
    await drained(client)
    resp, _ = await post(client, {}, ANSWERING)
    assert resp.headers[STATUS] == "MISS"
    await drained(client)
    # cache on the fallback target only (none at the root): kept, under its key
    await client.server.app[FEATURES].cache.backend.close()
    client.server.app[FEATURES].cache.backend = MemoryCache(100, 1 << 20)
    resp, _ = await post(client, {}, _fallback(False, False, True))
    assert resp.status == 200 and resp.headers[STATUS] == "MISS"  # the fallback's own
    await drained(client)
    resp, _ = await post(client, {}, ANSWERING)
    assert resp.headers[STATUS] == "HIT"
    # and a target's cache config is the one looked up when it is first
    first = {"x-portkey-config": orjson.dumps({"strategy": {"mode": "fallback"}, "targets": [
        {"provider": "mock", "override_params": {"model": "fast:tokens=2"},
         "cache": {"mode": "simple", "max_age": 60}}, {"provider": "mock-openai"}]}).decode()}
    statuses = []
    for _ in range(2):
        resp, _ = await post(client, {}, first)
        statuses.append(resp.headers[STATUS])
        await drained(client)
    assert statuses == ["MISS", "HIT"]


@pytest.mark.parametrize(("caches", "statuses"), [
    ((False, False, False), ["DISABLED", "DISABLED"]),
    ((False, True, False), ["DISABLED", "DISABLED"]),  # only the failing primary caches
    ((False, False, True), ["MISS", "HIT"]),
    ((True, False, False), ["MISS", "HIT"]),  # both inherit the root's
    ((False, True, True), ["MISS", "HIT"]),
])
@pytest.mark.parametrize("stream", [True, False])
async def test_the_status_is_the_answering_targets(proxy: Any, access_log: Any, stream: bool,
                                                    caches: tuple[bool, bool, bool],
                                                    statuses: list[str]) -> None:
    client = await proxy(config())
    for _ in range(2):
        resp, out = await post(client, {"stream": stream}, _fallback(*caches))
        assert resp.status == 200 and _text(out, stream) == mock_text(3)
        await drained(client)
    assert [line["cache_status"] for line in access_log()] == statuses
    assert resp.headers[STATUS] == statuses[-1]
    refresh = {**_fallback(*caches), "x-portkey-cache-force-refresh": "true"}
    resp, _ = await post(client, {"stream": stream}, refresh)
    assert resp.headers[STATUS] == ("DISABLED" if statuses[0] == "DISABLED" else "REFRESH")
    assert access_log()[-1]["attempts"] == 2  # the fallback asked again


class CountingCache(MemoryCache):
    def __init__(self) -> None:
        super().__init__(100, 1 << 20)
        self.gets = 0

    async def get(self, key: str) -> dict[str, Any] | None:
        self.gets += 1
        return await super().get(key)


async def test_a_target_looks_up_its_cache_once_not_before_each_retry(
        proxy: Any, access_log: Any) -> None:
    client = await proxy(config())
    backend = CountingCache()
    await client.server.app[FEATURES].cache.backend.close()
    client.server.app[FEATURES].cache.backend = backend
    retried = {"x-portkey-config": orjson.dumps({
        "strategy": {"mode": "fallback"}, "cache": {"mode": "simple"}, "targets": [
            {"provider": "mock", "override_params": {"model": "fast:status=503"},
             "retry": {"attempts": 1, "on_status_codes": [503]}},
            {"provider": "mock-openai", "override_params": {"model": "fast:tokens=3"}}]}
    ).decode()}
    resp, _ = await post(client, {}, retried)
    assert resp.status == 200 and resp.headers[STATUS] == "MISS"
    assert access_log()[-1]["attempts"] == 3  # the primary twice, then the fallback
    assert backend.gets == 2  # one lookup per target


async def test_a_hit_on_the_second_target_after_keepalives(proxy: Any, access_log: Any) -> None:
    # The keep-alive comments committed the stream while the primary was slow to fail: the
    # fallback's hit is replayed on it.
    client = await proxy(config(server={"keepalive_interval": 0.05}))
    resp, _ = await post(client, {"stream": True}, ANSWERING)  # fills the fallback's key
    await drained(client)
    slow = {"x-portkey-config": orjson.dumps({
        "strategy": {"mode": "fallback"}, "cache": {"mode": "simple", "max_age": 60},
        "targets": [{"provider": "mock",
                     "override_params": {"model": "fast:status=503,stall_ms=200"}},
                    {"provider": "mock-openai",
                     "override_params": {"model": "fast:tokens=3"}}]}).decode()}
    resp, out = await post(client, {"stream": True}, slow)
    assert resp.status == 200 and out.startswith(b": keep-alive\n\n")
    got = collect(sse_chunks(out))
    assert got.done and got.content == mock_text(3)
    assert access_log()[-1]["cache_status"] == "HIT"
    # The comments count among the bytes sent, as before a relayed stream's frames.
    assert access_log()[-1]["bytes_out"] == len(out)


async def test_per_target_lookups_under_loadbalance_and_conditional(proxy: Any) -> None:
    client = await proxy(config())
    failing_then_answering = {"strategy": {"mode": "fallback"}, "targets": [
        {"provider": "mock", "override_params": {"model": "fast:status=503"}},
        {"provider": "mock-openai", "override_params": {"model": "fast:tokens=3"}}]}
    balanced = {"strategy": {"mode": "loadbalance"}, "cache": {"mode": "simple"}, "targets": [
        {"weight": 1, **failing_then_answering},
        {"weight": 0, "provider": "mock", "override_params": {"model": "fast:tokens=2"}}]}
    conditional = {"strategy": {"mode": "conditional", "default": "other",
                                "conditions": [{"query": {"metadata.tier": "gold"},
                                                "then": "gold"}]},
                   "cache": {"mode": "simple"}, "targets": [
                       {"name": "gold", **failing_then_answering},
                       {"name": "other", "provider": "mock",
                        "override_params": {"model": "fast:tokens=2"}}]}
    gold = {"x-portkey-metadata": '{"tier": "gold"}'}
    for routing, headers in ((balanced, {}), (conditional, gold)):
        await client.server.app[FEATURES].cache.backend.close()  # (one target: one key)
        client.server.app[FEATURES].cache.backend = MemoryCache(100, 1 << 20)
        seen = []
        for _ in range(2):
            resp, _ = await post(client, {}, {"x-portkey-config": orjson.dumps(routing).decode(),
                                              **headers})
            seen.append((resp.headers[STATUS], resp.headers["x-portkey-last-used-option-index"]))
            await drained(client)
        assert seen == [("MISS", "config.targets[0].targets[1]"),
                        ("HIT", "config.targets[0].targets[1]")], routing["strategy"]
    # the conditional's other branch has its own key
    resp, _ = await post(client, {}, {"x-portkey-config": orjson.dumps(conditional).decode()})
    assert resp.headers[STATUS] == "MISS"


async def test_bad_cache_configs_are_400(proxy: Any) -> None:
    client = await proxy(config())
    for cache in ({"mode": "semantic"}, {"mode": "simple", "max_age": -1}, "simple"):
        resp = await client.post("/v1/chat/completions", json={"model": "mock/fast",
                                                               "messages": USER},
                                 headers={"x-portkey-config": orjson.dumps({"cache": cache})
                                          .decode()})
        assert resp.status == 400, cache


async def test_yaml_mode_caches_every_request(proxy: Any) -> None:
    client = await proxy(config(cache={"mode": "simple", "default_max_age": 30}))
    resp, _ = await post(client, {"model": "mock/fast:tokens=2"})
    assert resp.headers[STATUS] == "MISS"
    await drained(client)
    resp, _ = await post(client, {"model": "mock/fast:tokens=2"})
    assert resp.headers[STATUS] == "HIT"


@pytest.mark.parametrize("fallback", [False, True])
async def test_store_and_cache_together(proxy: Any, tmp_path: Any, fallback: bool) -> None:
    # (fallback: the hit is the second target's, after the first failed)
    client = await proxy(config(storage={"path": str(tmp_path / "s.sqlite3")}))
    body = {"model": "mock/fast:tokens=4", "stream": True, "store": True}
    headers = _fallback(True, False, False) if fallback else cache_header()
    _, first = await post(client, body, headers)
    await drained(client)
    hit, second = await post(client, body, headers)
    assert hit.headers[STATUS] == "HIT"
    storage = client.server.app[FEATURES].storage.store
    await storage.flush()
    for out in (first, second):
        [cid] = ids(out)
        item = await storage.get("", cid)
        assert item is not None
        assert item.response["choices"][0]["message"]["content"] == collect(
            sse_chunks(out)).content


async def test_the_portkey_sdk_drives_the_cache(proxy: Any) -> None:
    from portkey_ai import AsyncPortkey

    client = await proxy(config())
    pk = AsyncPortkey(base_url=str(client.make_url("/v1")), api_key="pk-unused",
                      config={"cache": {"mode": "simple", "max_age": 60}})
    first = await pk.chat.completions.create(model="mock/fast:tokens=5", messages=USER)
    await drained(client)
    second = await pk.chat.completions.create(model="mock/fast:tokens=5", messages=USER)
    assert second.get_headers()["cache-status"] == "HIT"
    assert second.choices[0].message.content == first.choices[0].message.content
    assert second.id != first.id
    refreshed = AsyncPortkey(base_url=str(client.make_url("/v1")), api_key="pk-unused",
                             config={"cache": {"mode": "simple"}}, cache_force_refresh=True)
    third = await refreshed.chat.completions.create(model="mock/fast:tokens=5", messages=USER)
    assert third.get_headers()["cache-status"] == "REFRESH"


# -- Redis: one cache, two proxy instances --------------------------------------------------

@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


async def test_two_proxies_share_hits_through_redis(proxy: Any, upstream: Any,
                                                    redis_url: str) -> None:
    upstream.body = ANTHROPIC_FIXTURES["tool-use"]
    cfg = config(upstream.url, cache={"backend": "redis", "redis_url": redis_url})
    one, two = await proxy(cfg), await proxy(cfg)
    assert one.server.app is not two.server.app
    body = {"model": "up/m", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": f"redis {random.random()}"}]}
    miss, first = await post(one, body, cache_header(max_age=30))
    assert miss.headers[STATUS] == "MISS"
    await drained(one)
    hit, second = await post(two, body, cache_header(max_age=30))
    assert hit.headers[STATUS] == "HIT" and len(upstream.requests) == 1
    assert envelope_free(second) == envelope_free(first)
    whole, obj = await post(two, {**body, "stream": False, "stream_options": None},
                            cache_header(max_age=30))
    assert whole.headers[STATUS] == "HIT" and len(upstream.requests) == 1
    assert orjson.loads(obj)["choices"][0]["finish_reason"] == "tool_calls"


async def test_redis_entries_expire_with_max_age(redis_url: str) -> None:
    backend = RedisCache(redis_url)
    try:
        await backend.set("k-expiring", cached.from_completion({"id": "x"}), 0.05)
        await backend.set("k-kept", cached.from_completion({"id": "y"}), 60)
        assert (await backend.get("k-expiring"))["completion"]["id"] == "x"
        for _ in range(100):  # Redis expires on its own clock: a bounded wait
            if await backend.get("k-expiring") is None:
                break
            await asyncio.sleep(0.02)
        assert await backend.get("k-expiring") is None
        assert (await backend.get("k-kept"))["completion"]["id"] == "y"
    finally:
        await backend.close()


async def test_a_max_age_beyond_portkeys_90_days_is_capped_and_cached(
        proxy: Any, redis_url: str) -> None:
    """Portkey caps `max_age` at 90 days. Uncapped, a "forever" max_age (1e17 s) was a TTL
    Redis refuses ("value is not an integer or out of range"): every such request a MISS,
    the write failing in the log, while the memory backend cached it."""
    assert max_age_for({"mode": "simple", "max_age": 1e17}, CacheSettings()) == 90 * 86400
    assert max_age_for({"mode": "simple", "max_age": 3600}, CacheSettings()) == 3600
    client = await proxy(config(cache={"backend": "redis", "redis_url": redis_url}))
    body = {"model": "mock/fast:tokens=3", "messages": [{"role": "user",
                                                         "content": f"{random.random()}"}]}
    statuses = []
    for _ in range(2):
        resp, _ = await post(client, body, cache_header(max_age=1e17))
        statuses.append(resp.headers[STATUS])
        await drained(client)
    assert statuses == ["MISS", "HIT"]


async def test_a_redis_entry_over_max_bytes_is_not_written(redis_url: str) -> None:
    """As the memory backend: `cache.max_bytes` 1 MiB let a 2.3 MB entry into Redis (a
    300,000-token stream), which every hit then carried whole."""
    backend = make_backend(CacheSettings(backend="redis", redis_url=redis_url, max_bytes=4096))
    try:
        await backend.set("k-small", cached.from_completion({"id": "s"}), 60)
        await backend.set("k-huge", cached.from_completion({"id": "h" * 5000}), 60)
        assert (await backend.get("k-small"))["completion"]["id"] == "s"
        assert await backend.get("k-huge") is None
    finally:
        await backend.close()


async def test_a_burst_shares_a_capped_redis_pool() -> None:
    """Redis's connections are bounded per process: 40 lookups at once through a pool of 4
    wait their turn and all hit (redis-py 8's default pool failed 60 of 160 outright as
    misses; older ones opened a connection per lookup, thousands in a burst)."""
    entry = cached.from_completion({"id": "burst"})
    fake = FakeRedis(orjson.dumps(entry), delay=0.01)
    async with fake as url:
        backend = make_backend(CacheSettings(backend="redis", redis_url=url,
                                             redis_max_connections=4, redis_timeout=5.0))
        try:
            got = await asyncio.wait_for(
                asyncio.gather(*(backend.get(f"k{i}") for i in range(160))), 20)
        finally:
            await backend.close()
    assert fake.peak <= 4
    assert all(g is not None and g["completion"]["id"] == "burst" for g in got)


async def test_a_lookup_waiting_for_a_redis_connection_times_out_as_a_miss() -> None:
    fake = FakeRedis(b"", delay=None)  # holds every connection
    async with fake as url:
        backend = RedisCache(url, timeout=0.2, max_connections=2)
        try:
            loop = asyncio.get_running_loop()
            start = loop.time()
            got = await asyncio.wait_for(
                asyncio.gather(*(backend.get(f"k{i}") for i in range(10))), 10)
            assert loop.time() - start < 2
        finally:
            await backend.close()
    assert got == [None] * 10 and fake.peak <= 2


async def test_a_slow_redis_lookup_is_a_miss_within_redis_timeout(
        caplog: pytest.LogCaptureFixture) -> None:
    """`redis_timeout` bounded each reply, not the lookup: on a new connection redis-py asks
    HELLO and CLIENT SETINFO (twice) before the GET, so a Redis answering each within the
    timeout held the request up to 4 times redis_timeout before its upstream was asked
    (after a pool wait of up to one more). The whole lookup is now bounded (twice
    redis_timeout, a connection's wait included): a miss."""
    fake = FakeRedis(orjson.dumps(cached.from_completion({"id": "slow"})), delay=0,
                     every=0.8)
    async with fake as url:
        backend = RedisCache(url, timeout=1.0)
        try:
            got = await asyncio.wait_for(backend.get("k"), 10)
        finally:
            await backend.close()
    assert got is None
    assert "redis cache read failed" in caplog.text


def test_redis_max_connections_is_configurable() -> None:
    assert parse_cache_settings(config()).redis_max_connections == 50
    settings = parse_cache_settings(config(cache={"redis_max_connections": 8}))
    assert settings.redis_max_connections == 8
    with pytest.raises(ConfigError, match="redis_max_connections"):
        parse_cache_settings(config(cache={"redis_max_connections": 0}))


@pytest.mark.parametrize("key", ["redis_timeout", "default_max_age"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])  # YAML's .nan and .inf
def test_cache_seconds_must_be_finite(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"cache.{key}.*finite"):
        parse_cache_settings(config(cache={key: value}))


async def test_an_unreachable_redis_is_a_miss_not_a_failure(proxy: Any) -> None:
    from tests.redis_server import _free_port

    cfg = config(cache={"backend": "redis", "redis_timeout": 0.5,
                        "redis_url": f"redis://127.0.0.1:{_free_port()}/0"})
    client = await proxy(cfg)
    for _ in range(2):
        resp, out = await post(client, {"model": "mock/fast:tokens=3", "stream": True},
                               cache_header())
        assert resp.status == 200 and resp.headers[STATUS] == "MISS"
        assert collect(sse_chunks(out)).done
        await drained(client)


# -- pure parts -----------------------------------------------------------------------------

def _tee(body: bytes, kind: str, pieces: list[bytes]) -> tuple[bytes, CompletionBuilder]:
    # (as the executor does: a pass-through stream forwards its own usage chunk)
    enc = RecordingChunkEncoder(completion_id="chatcmpl-x", created=7, model="m",
                                include_usage=kind == "anthropic")
    builder = CompletionBuilder()
    sink = TeeSink(enc, builder)
    tr: Any = (AnthropicStreamTranslator(sink, 1 << 20) if kind == "anthropic" else
               PassthroughTranslator(sink, 1 << 20, provider="p", client_wants_usage=True))
    out = b""
    for piece in pieces:
        tr.feed(piece)
        out += enc.take()
    tr.close()
    return out + enc.take(), builder


@pytest.mark.parametrize("name", ANTHROPIC_FIXTURES)
def test_a_tee_gives_the_client_the_plain_encoders_bytes_and_keeps_the_text(name: str) -> None:
    body = ANTHROPIC_FIXTURES[name]
    rng = random.Random(name)
    plain = ChunkEncoder(completion_id="chatcmpl-x", created=7, model="m", include_usage=True)
    tr = AnthropicStreamTranslator(plain, 1 << 20)
    tr.feed(body)
    tr.close()
    expected = plain.take()
    teed, builder = _tee(body, "anthropic", random_splits(body, rng, 40))
    assert teed == expected
    assert "".join(builder.content_parts) == collect(sse_chunks(expected)).content
    assert builder.completion(completion_id="chatcmpl-x", created=7, model="m")[
        "choices"][0]["message"]["content"] == (collect(sse_chunks(expected)).content or None)


@pytest.mark.parametrize("name", ANTHROPIC_FIXTURES)
def test_replay_of_a_captured_stream_is_identical_at_any_split(name: str) -> None:
    body = ANTHROPIC_FIXTURES[name]
    rng = random.Random(name)
    for _ in range(10):
        original, builder = _tee(body, "anthropic", random_splits(body, rng, rng.choice([3, 60])))
        entry = orjson.loads(orjson.dumps(cached.from_builder(builder)))  # as Redis keeps it
        enc = ChunkEncoder(completion_id="chatcmpl-x", created=7, model="m", include_usage=True)
        cached.replay(entry, enc)
        assert enc.take() == original


@pytest.mark.parametrize("name", OPENAI_FIXTURES)
def test_replay_of_a_passthrough_stream_keeps_its_deltas(name: str) -> None:
    body = OPENAI_FIXTURES[name]
    original, builder = _tee(body, "openai", [body])
    enc = ChunkEncoder(completion_id="chatcmpl-y", created=8, model="m", include_usage=True)
    cached.replay(cached.from_builder(builder), enc)
    replayed = enc.take()
    assert deltas(replayed) == deltas(original)
    assert collect(sse_chunks(replayed)).usage == collect(sse_chunks(original)).usage
    assert builder.id == collect(sse_chunks(original)).ids.pop()  # the id the client saw


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["spliced", "encoded", "decoded"]), st.lists(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=8), min_size=1, max_size=4)),
    max_size=12))
def test_captured_content_is_kept_escaped_and_decoded_once(groups: list[Any]) -> None:
    """Spliced literals, deltas the encoder wrote, and texts given to the builder decoded (as a
    pass-through capture does), with escapes, quotes, controls and non-ASCII, in any mix: the
    same texts come back, in order, and as the message's content."""
    b = CompletionBuilder()
    enc = RecordingChunkEncoder(completion_id="chatcmpl-r", created=1, model="m",
                                include_usage=False)
    sink = TeeSink(enc, b)
    texts: list[str] = []
    framed: list[str] = []
    for how, group in groups:
        if how == "spliced":
            sink.content_literals([orjson.dumps(t)[1:-1] for t in group])
        for t in group:
            if how == "encoded":
                sink.content(t)
            elif how == "decoded":
                b.content(t)
        texts += group
        framed += group if how != "decoded" else []
    assert b.content_parts == texts
    message = b.completion(completion_id="chatcmpl-r", created=1, model="m")[
        "choices"][0]["message"]
    assert message["content"] == "".join(texts)  # (nothing said: "", as OpenAI's)
    assert deltas(enc.take()) == [("content", t) for t in framed if t]


def test_a_builder_keeps_order_as_runs_not_per_delta() -> None:
    b = CompletionBuilder()
    for _ in range(100):
        b.content("x")
    b.tool_call_start(0, "c0", "f", '{"a"')
    b.tool_call_args(0, ": 1}")
    b.tool_call_start(1, "c1", "g")
    b.tool_call_args(1, "{}")
    assert b.runs == [["c", 0, 100], ["S", 0, 1], ["a", 0, 1], ["s", 1, 1], ["a", 1, 1]]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["c", "r", "t", "s", "S", "a"]), max_size=40),
       st.booleans())
def test_runs_are_one_entry_per_change_of_kind_through_a_tee(kinds: list[str],
                                                            tee: bool) -> None:
    """Content deltas are only appended (counted when the kind changes): whatever the
    interleaving, the runs equal one [kind, index, count] per change, as a client saw it."""
    b = CompletionBuilder()
    enc = RecordingChunkEncoder(completion_id="chatcmpl-r", created=1, model="m",
                                include_usage=False)
    sink: Any = TeeSink(enc, b) if tee else b
    expected: list[list[Any]] = []
    tools = 0
    for kind in kinds:
        index = 0
        if kind == "c":
            sink.content("x")
        elif kind == "r":
            sink.reasoning("y")
        elif kind == "t":
            sink.thinking_block({"type": "thinking", "thinking": "z", "signature": "s"})
        elif kind in "sS":
            index = tools
            tools += 1
            sink.tool_call_start(index, f"call_{index}", "f", "{" if kind == "S" else "")
        elif not tools:
            continue  # an argument fragment needs a tool call before it
        else:
            index = tools - 1
            sink.tool_call_args(index, "}")
        if expected and expected[-1][:2] == [kind, index]:
            expected[-1][2] += 1
        else:
            expected.append([kind, index, 1])
    assert b.runs == expected
    assert b.runs == expected  # reading them changes nothing
    assert b.content_parts == ["x"] * kinds.count("c")


def test_the_key_ignores_delivery_and_bookkeeping() -> None:
    body = {"messages": USER, "temperature": 0.1, "tools": [{"type": "function",
                                                             "function": {"name": "f"}}]}
    key = cache_key(namespace="", provider="p", model="m", body=body)
    for extra in ({"stream": True}, {"stream_options": {"include_usage": True}}, {"user": "u"},
                  {"metadata": {"a": "b"}}, {"store": True}, {"model": "p/m"},
                  # how long OpenAI keeps the prompt's prefix cached, not what it answers
                  {"prompt_cache_retention": "24h"}, {"prompt_cache_key": "k"},
                  {"safety_identifier": "s"}):
        assert cache_key(namespace="", provider="p", model="m", body={**body, **extra}) == key
    assert cache_key(namespace="", provider="p", model="m",
                     body=dict(reversed(list(body.items())))) == key  # order-free
    for other in (dict(namespace="team-b", provider="p", model="m", body=body),
                  dict(namespace="", provider="q", model="m", body=body),
                  dict(namespace="", provider="p", model="m2", body=body),
                  dict(namespace="", provider="p", model="m", body={**body, "seed": 1}),
                  dict(namespace="", provider="p", model="m", body=body,
                       headers={"x-mock-options": "tokens=3"}),
                  dict(namespace="", provider="p", model="m", body=body, credential="sk-a"),
                  dict(namespace="", provider="p", model="m", body=body,
                       base_url="https://other.example/v1")):
        assert cache_key(**other) != key  # type: ignore[arg-type]


async def test_a_clients_own_provider_key_partitions_the_cache(proxy: Any, upstream: Any) -> None:
    # No key configured for the provider: each client's key pays for its own answers; a
    # caller with another key (or none) must not get them from the cache.
    upstream.body = OPENAI_FIXTURES["text"]
    client = await proxy(make_config({"byok": {"type": "openai", "base_url": upstream.url,
                                               "default_model": "m"}}, default="byok"))
    statuses = []
    for key in ("sk-good", "sk-other", None, "sk-good"):
        headers = {**cache_header(), **({"authorization": f"Bearer {key}"} if key else {})}
        resp, _ = await post(client, {"model": "byok/m", "stream": True}, headers)
        statuses.append(resp.headers[STATUS])
        await drained(client)
    assert statuses == ["MISS", "MISS", "MISS", "HIT"]


@pytest.mark.parametrize("how", ["header", "config"])
async def test_a_custom_host_partitions_the_cache(proxy: Any, upstream: Any, how: str) -> None:
    # One provider aimed at two servers (say two vLLM hosts, each serving its own "m"): one
    # server's answers must not be served as the other's.
    upstream.body = OPENAI_FIXTURES["text"]
    host = upstream.url.split("://")[1]
    client = await proxy(make_config({"oa": {"type": "openai", "base_url": upstream.url,
                                             "api_key": "sk", "default_model": "m"}},
                                     default="oa", allowed_custom_hosts=[host]))

    def aimed_at(path: str) -> dict[str, str]:
        if how == "header":
            return {**cache_header(), "x-portkey-custom-host": upstream.url + path}
        return {"x-portkey-config": orjson.dumps({
            "provider": "oa", "custom_host": upstream.url + path,
            "cache": {"mode": "simple"}}).decode()}

    statuses = []
    for path in ("/a/v1", "/b/v1", "/a/v1", "/b/v1"):
        resp, _ = await post(client, {"model": "oa/m", "stream": True}, aimed_at(path))
        statuses.append(resp.headers[STATUS])
        await drained(client)
    assert statuses == ["MISS", "MISS", "HIT", "HIT"]
    assert [r.path for r in upstream.requests] == ["/a/v1/chat/completions",
                                                   "/b/v1/chat/completions"]


async def test_anthropic_betas_partition_the_cache(proxy: Any, upstream: Any) -> None:
    # A beta can change the answer's shape (interleaved thinking, longer outputs): an answer
    # given under one set of betas must not be served to a request made under another.
    upstream.body = ANTHROPIC_FIXTURES["text"]
    client = await proxy(config(upstream.url, kind="anthropic"))
    statuses = []
    for beta in ("b-1", "b-2", "b-1", None):
        headers = cache_header()
        if beta:
            headers["x-portkey-anthropic-beta"] = beta
        resp, _ = await post(client, {"model": "up/m", "stream": True}, headers)
        statuses.append(resp.headers[STATUS])
        await drained(client)
    assert statuses == ["MISS", "MISS", "HIT", "MISS"]
    assert [r.headers.get("anthropic-beta") for r in upstream.requests] == ["b-1", "b-2", None]


_GEMINI_TEXT = (b'data: {"candidates":[{"content":{"role":"model","parts":[{"text":"Hi"}]},'
                b'"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":1,'
                b'"candidatesTokenCount":1,"totalTokenCount":2}}\r\n\r\n')
_CLAUDE_HOSTS = {
    "vertex": ({"project": "p", "location": "us-east5"}, "text/event-stream",
               ANTHROPIC_FIXTURES["text"], _GEMINI_TEXT),
    "bedrock": ({"region": "us-east-1", "aws_access_key_id": "AKIDEXAMPLE",
                 "aws_secret_access_key": "secret"}, "application/vnd.amazon.eventstream",
                fixture_bytes("bedrock/pydantic-ai_bedrock_model_iter_stream.converse-stream.bin"),
                fixture_bytes("bedrock/pydantic-ai_bedrock_model_iter_stream.converse-stream.bin")),
}


@pytest.mark.parametrize(("kind", "model", "claude"), [
    ("vertex", "claude-sonnet-4-5@20250929", True), ("vertex", "gemini-2.5-flash", False),
    ("bedrock", "us.anthropic.claude-sonnet-4-5-20250929-v1:0", True),
    ("bedrock", "amazon.nova-micro-v1:0", False)])
async def test_claudes_betas_partition_the_cache_on_bedrock_and_vertex_for_claude_alone(
        proxy: Any, upstream: Any, kind: str, model: str, claude: bool) -> None:
    # As on the anthropic type: a beta changes Claude's answer. Another model is sent no beta,
    # so its answers are shared whatever betas the requests name.
    options, upstream.content_type, claude_body, other_body = _CLAUDE_HOSTS[kind]
    upstream.body = claude_body if claude else other_body
    client = await proxy(make_config({"up": {"type": kind, "base_url": upstream.url,
                                             "api_key": "sk-secret", **options}}, default="up"))
    statuses = []
    for beta in ("b-1", "b-2", "b-1", None):
        headers = cache_header()
        if beta:
            headers["x-portkey-anthropic-beta"] = beta
        resp, _ = await post(client, {"model": f"up/{model}", "stream": True}, headers)
        statuses.append(resp.headers[STATUS])
        await drained(client)
    assert statuses == (["MISS", "MISS", "HIT", "MISS"] if claude else
                        ["MISS", "HIT", "HIT", "HIT"])


def _openai_chunks(*chunks: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + orjson.dumps({"id": "c", "object": "chat.completion.chunk",
                                              "created": 1, "model": "m", **c}) + b"\n\n"
                    for c in chunks) + b"data: [DONE]\n\n"


async def _fill_then_ask_both_ways(client: Any, upstream: Any, fill_streamed: bool,
                                   streamed: bytes, whole: bytes, expected: bytes) -> list[str]:
    """A fill (streamed or not), then a streamed and a non-streamed request: their cache
    statuses, each answer checked to hold `expected`."""
    statuses = []
    for stream in (fill_streamed, True, False):
        upstream.content_type = "text/event-stream" if stream else "application/json"
        upstream.body = streamed if stream else whole
        resp, out = await post(client, {"model": "up/m", "stream": stream}, cache_header())
        statuses.append(resp.headers[STATUS])
        assert expected in out, (stream, resp.headers[STATUS])
        await drained(client)
    return statuses


def test_a_refusal_is_captured_and_its_stream_is_not_kept_for_replay() -> None:
    body = _openai_chunks(
        {"choices": [{"index": 0, "delta": {"role": "assistant", "refusal": ""}}]},
        {"choices": [{"index": 0, "delta": {"refusal": "I can't "}}]},
        {"choices": [{"index": 0, "delta": {"refusal": "help with that."},
                      "finish_reason": "stop"}]})
    _, builder = _tee(body, "openai", [body])
    message = builder.completion(completion_id="x", created=1, model="m")["choices"][0]
    assert message["message"]["refusal"] == "I can't help with that."
    assert not builder.replayable  # a replay has no refusal delta: the cache keeps nothing
    plain = _openai_chunks({"choices": [{"index": 0, "delta": {"content": "Hi"},
                                         "logprobs": {"content": []}}]})
    assert not _tee(plain, "openai", [plain])[1].replayable  # logprobs: likewise
    assert not cached.streams_whole(cached.from_completion({"choices": [
        {"message": {"content": None, "refusal": "No."}, "finish_reason": "stop"}]}))


@pytest.mark.parametrize("fill_streamed", [True, False])
async def test_an_answer_with_citations_is_never_replayed_without_them(
        proxy: Any, upstream: Any, fill_streamed: bool) -> None:
    # A search model's url_citation annotations: a replay has no delta for them, so a
    # streamed fill is not kept and a non-streamed one answers non-streamed requests only.
    annotations = [{"type": "url_citation", "url_citation": {
        "url": "https://example.com", "title": "Example", "start_index": 0, "end_index": 2}}]
    streamed = _openai_chunks(
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}]},
        {"choices": [{"index": 0, "delta": {"annotations": annotations},
                      "finish_reason": "stop"}]})
    whole = orjson.dumps({**TOOL_ANSWER, "choices": [{
        "index": 0, "logprobs": None, "finish_reason": "stop", "message": {
            "role": "assistant", "content": "Hi", "annotations": annotations}}]})
    client = await proxy(config(upstream.url, kind="openai"))
    statuses = await _fill_then_ask_both_ways(client, upstream, fill_streamed, streamed, whole,
                                              b'"url_citation"')
    assert statuses == (["MISS", "MISS", "MISS"] if fill_streamed else ["MISS", "MISS", "HIT"])


@pytest.mark.parametrize("fill_streamed", [True, False])
async def test_top_level_citations_are_never_replayed_without_them(
        proxy: Any, upstream: Any, fill_streamed: bool) -> None:
    # Perplexity's `citations` and `search_results` (xAI's `citations`) ride on the chunks'
    # and the answer's top level: a replayed stream's chunks have no place for them, so a
    # client on a hit read an answer whose [1] cites nothing.
    sources = {"citations": ["https://example.com/"],
               "search_results": [{"title": "Example", "url": "https://example.com/"}]}
    streamed = _openai_chunks(
        {**sources, "choices": [{"index": 0, "delta": {"role": "assistant",
                                                       "content": "Hi [1]"}}]},
        {**sources, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    whole = orjson.dumps({**TOOL_ANSWER, **sources, "choices": [{
        "index": 0, "logprobs": None, "finish_reason": "stop", "message": {
            "role": "assistant", "content": "Hi [1]"}}]})
    client = await proxy(config(upstream.url, kind="openai"))
    statuses = await _fill_then_ask_both_ways(client, upstream, fill_streamed, streamed, whole,
                                              b'"citations":["https://example.com/"]')
    assert statuses == (["MISS", "MISS", "MISS"] if fill_streamed else ["MISS", "MISS", "HIT"])


@pytest.mark.parametrize("stream", [True, False])
async def test_an_answer_cut_by_a_content_filter_is_not_cached(proxy: Any, upstream: Any,
                                                               stream: bool) -> None:
    # finish_reason "content_filter" (Azure's, OpenAI's): the output was cut by a filter that
    # judged this sampling of it, not the question. Cached, every identical request got the
    # cut answer for the entry's max_age (7 days by default) without the upstream asked.
    cut = {"role": "assistant", "content": "Here is how"}
    if stream:
        upstream.body = _openai_chunks(
            {"choices": [{"index": 0, "delta": cut}]},
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "content_filter"}]})
    else:
        upstream.content_type = "application/json"
        upstream.body = orjson.dumps({**TOOL_ANSWER, "choices": [{
            "index": 0, "logprobs": None, "finish_reason": "content_filter", "message": cut}]})
    client = await proxy(config(upstream.url, kind="openai"))
    statuses = []
    for _ in range(2):
        resp, out = await post(client, {"model": "up/m", "stream": stream}, cache_header())
        assert b'"content_filter"' in out
        statuses.append(resp.headers[STATUS])
        await drained(client)
    assert statuses == ["MISS", "MISS"] and len(upstream.requests) == 2


@pytest.mark.parametrize("stream", [True, False])
async def test_an_answer_that_ended_in_an_error_is_not_cached(proxy: Any, upstream: Any,
                                                              stream: bool) -> None:
    # finish_reason "error" (OpenRouter's, in the choice, with the choice's `error`): the model
    # failed part way once it had begun, so the upstream answered 200 with what came before.
    # Cached, every identical request got that broken answer for the entry's max_age.
    cut = {"role": "assistant", "content": "Here is how"}
    error = {"code": 502, "message": "Provider disconnected unexpectedly"}
    if stream:
        upstream.body = _openai_chunks(
            {"choices": [{"index": 0, "delta": cut}]},
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "error", "error": error}]})
    else:
        upstream.content_type = "application/json"
        upstream.body = orjson.dumps({**TOOL_ANSWER, "choices": [{
            "index": 0, "logprobs": None, "finish_reason": "error", "error": error,
            "message": cut}]})
    client = await proxy(config(upstream.url, kind="openai"))
    statuses = []
    for _ in range(2):
        resp, out = await post(client, {"model": "up/m", "stream": stream}, cache_header())
        assert b'"finish_reason":"error"' in out
        statuses.append(resp.headers[STATUS])
        await drained(client)
    assert statuses == ["MISS", "MISS"] and len(upstream.requests) == 2


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("reason", ["abort", "insufficient_system_resource"])
async def test_an_answer_a_failure_ended_is_not_cached_behind_type_openai(
        proxy: Any, upstream: Any, stream: bool, reason: str) -> None:
    # vLLM's engine-side abort (shutdown, scale-down, sleep: vllm-project/vllm#57082) and
    # DeepSeek's overload end a partial answer with a 200, this finish and [DONE]. Their own
    # types make it an error; behind `type: openai` it was cached as complete and every
    # identical request got the cut answer, HIT, for the entry's max_age.
    cut = {"role": "assistant", "content": "Here is how"}
    if stream:
        upstream.body = _openai_chunks(
            {"choices": [{"index": 0, "delta": cut}]},
            {"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]})
    else:
        upstream.content_type = "application/json"
        upstream.body = orjson.dumps({**TOOL_ANSWER, "choices": [{
            "index": 0, "logprobs": None, "finish_reason": reason, "message": cut}]})
    client = await proxy(config(upstream.url, kind="openai"))
    statuses = []
    for _ in range(2):
        resp, out = await post(client, {"model": "up/m", "stream": stream}, cache_header())
        assert f'"finish_reason":"{reason}"'.encode() in out
        statuses.append(resp.headers[STATUS])
        await drained(client)
    assert statuses == ["MISS", "MISS"] and len(upstream.requests) == 2


@pytest.mark.parametrize("fill_streamed", [True, False])
async def test_reasoning_under_the_upstreams_own_name_is_never_replayed_under_another(
        proxy: Any, upstream: Any, fill_streamed: bool) -> None:
    # OpenRouter, Groq and vLLM call it `reasoning`; a replayed stream writes
    # `reasoning_content`, so a client reading `reasoning` would find none on a hit.
    streamed = _openai_chunks(
        {"choices": [{"index": 0, "delta": {"role": "assistant", "reasoning": "Think."}}]},
        {"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": "stop"}]})
    whole = orjson.dumps({**TOOL_ANSWER, "choices": [{
        "index": 0, "logprobs": None, "finish_reason": "stop", "message": {
            "role": "assistant", "content": "Hi", "reasoning": "Think."}}]})
    client = await proxy(config(upstream.url, kind="openai"))
    statuses = await _fill_then_ask_both_ways(client, upstream, fill_streamed, streamed, whole,
                                              b'"reasoning":"Think."')
    assert statuses == (["MISS", "MISS", "MISS"] if fill_streamed else ["MISS", "MISS", "HIT"])


@pytest.mark.parametrize("fill_streamed", [True, False])
async def test_typed_content_parts_are_never_replayed_as_a_stream(
        proxy: Any, upstream: Any, fill_streamed: bool) -> None:
    # Mistral's reasoning models (behind `type: openai`) stream content as typed parts, their
    # thinking among them; a replay writes text deltas only, so a hit lost the thinking the
    # miss had carried (and gave a string where the miss gave parts). A non-streamed fill's
    # list of parts answers non-streamed requests only: a streamed hit on it had a role chunk
    # saying `content: null`, then the whole list as one text delta.
    thinking = {"type": "thinking", "thinking": [{"type": "text", "text": "Two plus two."}]}
    streamed = _openai_chunks(
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": [thinking]}}]},
        {"choices": [{"index": 0, "delta": {"content": [{"type": "text", "text": "4"}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    whole = orjson.dumps({**TOOL_ANSWER, "choices": [{
        "index": 0, "logprobs": None, "finish_reason": "stop", "message": {
            "role": "assistant", "content": [thinking, {"type": "text", "text": "4"}]}}]})
    client = await proxy(config(upstream.url, kind="openai"))
    statuses = await _fill_then_ask_both_ways(client, upstream, fill_streamed, streamed, whole,
                                              b'"thinking":[{"type":"text","text":"Two plus')
    assert statuses == (["MISS", "MISS", "MISS"] if fill_streamed else ["MISS", "MISS", "HIT"])


@pytest.mark.parametrize("fill_streamed", [True, False])
async def test_a_legacy_function_call_is_never_replayed_without_it(
        proxy: Any, upstream: Any, fill_streamed: bool) -> None:
    # The deprecated `functions`' answer, `function_call` (a delta of its own when streamed):
    # a replay has no delta for it, so a client on a hit got finish_reason "function_call"
    # and no call to make.
    streamed = _openai_chunks(
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": None, "function_call":
                                            {"name": "get_weather", "arguments": ""}}}]},
        {"choices": [{"index": 0, "delta": {"function_call": {"arguments": '{"city":"Paris"}'}}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "function_call"}]})
    whole = orjson.dumps({**TOOL_ANSWER, "choices": [{
        "index": 0, "logprobs": None, "finish_reason": "function_call", "message": {
            "role": "assistant", "content": None, "function_call": {
                "name": "get_weather", "arguments": '{"city":"Paris"}'}}}]})
    client = await proxy(config(upstream.url, kind="openai"))
    statuses = await _fill_then_ask_both_ways(client, upstream, fill_streamed, streamed, whole,
                                              b'"function_call":{"name":"get_weather"')
    assert statuses == (["MISS", "MISS", "MISS"] if fill_streamed else ["MISS", "MISS", "HIT"])


# What a thinking model's next turn needs back, riding beside the parts a replay writes:
# Gemini's OpenAI endpoint signs a tool call in its `extra_content`, OpenRouter gives the
# (often encrypted) reasoning as `reasoning_details`; an answer replayed without them made
# the client's next turn lose its reasoning, or Gemini 3 refuse the unsigned call (a 400).
_SIGNED_CALL = {"index": 0, "id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                "extra_content": {"google": {"thought_signature": "c2lnbmVk"}}}
_DETAILS = [{"type": "reasoning.encrypted", "data": "ZW5j", "id": "call_1",
             "format": "google-gemini-v1", "index": 0}]
_KEPT_BESIDE = {
    "thought-signature": ({"tool_calls": [_SIGNED_CALL]},
                          {"tool_calls": [{k: v for k, v in _SIGNED_CALL.items()
                                           if k != "index"}]},
                          b'"thought_signature":"c2lnbmVk"'),
    "reasoning-details": ({"reasoning_details": _DETAILS, "tool_calls": [{
                              k: v for k, v in _SIGNED_CALL.items() if k != "extra_content"}]},
                          {"reasoning_details": _DETAILS, "tool_calls": [{
                              k: v for k, v in _SIGNED_CALL.items()
                              if k not in ("index", "extra_content")}]},
                          b'"reasoning_details":[{"type":"reasoning.encrypted"'),
}


@pytest.mark.parametrize("fill_streamed", [True, False])
@pytest.mark.parametrize("case", list(_KEPT_BESIDE))
async def test_what_a_next_turn_needs_back_is_never_replayed_without_it(
        proxy: Any, upstream: Any, fill_streamed: bool, case: str) -> None:
    delta, message, expected = _KEPT_BESIDE[case]
    streamed = _openai_chunks(
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": None, **delta}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    whole = orjson.dumps({**TOOL_ANSWER, "choices": [{
        "index": 0, "logprobs": None, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": None, **message}}]})
    client = await proxy(config(upstream.url, kind="openai"))
    statuses = await _fill_then_ask_both_ways(client, upstream, fill_streamed, streamed, whole,
                                              expected)
    assert statuses == (["MISS", "MISS", "MISS"] if fill_streamed else ["MISS", "MISS", "HIT"])


async def test_a_forced_refresh_whose_answer_cant_be_kept_removes_the_old_one(
        proxy: Any, upstream: Any) -> None:
    # The client forced a refresh to be rid of a cached answer; when the fresh one can't be
    # replayed (a refusal), the old one stayed and went on answering every later request.
    client = await proxy(config(upstream.url, kind="openai"))
    body = {"model": "up/m", "stream": True}
    upstream.body = _openai_chunks(
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Old"},
                      "finish_reason": "stop"}]})
    resp, _ = await post(client, body, cache_header())
    assert resp.headers[STATUS] == "MISS"
    await drained(client)
    upstream.body = _openai_chunks(
        {"choices": [{"index": 0, "delta": {"role": "assistant", "refusal": "No."},
                      "finish_reason": "stop"}]})
    refresh = {**cache_header(), "x-portkey-cache-force-refresh": "true"}
    resp, _ = await post(client, body, refresh)
    assert resp.headers[STATUS] == "REFRESH"
    await drained(client)
    resp, text = await post(client, body, cache_header())
    assert resp.headers[STATUS] == "MISS" and b'"refusal":"No."' in text


async def test_an_answer_too_big_to_keep_replaces_the_older_entry(redis_url: str) -> None:
    """A forced refresh whose answer is over `max_bytes` left the refreshed entry in place,
    in both backends, so later requests still got the old answer."""
    for backend in (MemoryCache(max_entries=10, max_bytes=4096),
                    make_backend(CacheSettings(backend="redis", redis_url=redis_url,
                                               max_bytes=4096))):
        try:
            await backend.set("k", cached.from_completion({"id": "old"}), 60)
            assert (await backend.get("k"))["completion"]["id"] == "old"
            await backend.set("k", cached.from_completion({"id": "n" * 5000}), 60)
            assert await backend.get("k") is None
        finally:
            await backend.close()


def test_a_tool_call_whose_id_and_name_repeat_on_every_chunk_is_captured_once() -> None:
    # DeepSeek and Qwen send id (and name) again with each argument fragment.
    def call(args: str, name: str) -> dict[str, Any]:
        return {"choices": [{"index": 0, "delta": {"tool_calls": [{
            "index": 0, "id": "call_1", "type": "function",
            "function": {"name": name, "arguments": args}}]}}]}

    body = _openai_chunks(call("", "get_weather"), call('{"city": ', ""), call('"Paris"}', ""),
                          {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    _, builder = _tee(body, "openai", [body])
    [tool] = builder.completion(completion_id="x", created=1, model="m")["choices"][0][
        "message"]["tool_calls"]
    assert tool["id"] == "call_1" and tool["function"]["name"] == "get_weather"
    assert tool["function"]["arguments"] == '{"city": "Paris"}'


async def test_the_memory_lru_is_bounded_by_entries_and_bytes() -> None:
    lru = MemoryCache(max_entries=2, max_bytes=10_000)
    for k in ("a", "b"):
        await lru.set(k, {"v": k}, 60)
    assert await lru.get("a") is not None  # now b is the least recently used
    await lru.set("c", {"v": "c"}, 60)
    assert await lru.get("b") is None and len(lru) == 2
    assert await lru.get("a") is not None and await lru.get("c") is not None
    small = MemoryCache(max_entries=100, max_bytes=100)
    for i in range(10):
        await small.set(str(i), {"v": "x" * 30}, 60)
    assert len(small) == 2 and small.bytes <= 100
    await small.set("huge", {"v": "x" * 1000}, 60)  # bigger than the whole cache: not kept
    assert await small.get("huge") is None and len(small) == 2
    await small.set("gone", {"v": 1}, 0)
    assert await small.get("gone") is None


async def test_the_memory_lru_byte_bound_bounds_the_memory_it_holds() -> None:
    def streamed(i: int) -> dict[str, Any]:
        b = CompletionBuilder()
        b.start("fast")
        for text in orjson.loads(orjson.dumps([f" w{i}"] + [" token"] * 199)):
            b.content(text)  # a str of its own per delta, as decoding an upstream gives
        b.finish("stop")
        b.end()
        return cached.from_builder(b)

    lru = MemoryCache(max_entries=100_000, max_bytes=500_000)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1000):
            await lru.set(str(i), streamed(i), 60)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert lru.bytes <= 500_000 and len(lru) > 100
    assert held < 1.5 * 500_000  # decoded entries held ~6 times their JSON size
    hit = await lru.get(str(999))
    assert hit is not None and hit["content"][:2] == [" w999", " token"]


def test_cache_settings_are_validated() -> None:
    assert parse_cache_settings(config()).backend == "memory"
    for bad in ({"backend": "memcached"}, {"max_entries": 0}, {"redis_url": "http://x"},
                {"mode": "semantic"}, {"default_max_age": "1d"}, {"nope": 1}, []):
        with pytest.raises(ConfigError, match="cache"):
            parse_cache_settings(config(cache=bad))



@pytest.mark.parametrize("url", ["redis://:sk-secret@cache:port/0", "redis://cache:99999/0",
                                 "redis://:sk-secret", "redis://cache/0?socket_timeout=soon"])
def test_a_redis_url_redis_py_cannot_read_is_a_config_error(url: str) -> None:
    """redis-py's ValueError escaped as the app was built: a traceback at start-up and from
    check-config, never naming `cache.redis_url`."""
    with pytest.raises(ConfigError) as info:
        parse_cache_settings(config(cache={"backend": "redis", "redis_url": url}))
    assert info.value.key == "cache.redis_url" and "sk-secret" not in str(info.value)


async def test_named_configs_and_routes_carry_cache_settings(proxy: Any) -> None:
    cfg = config(configs={"cached": {"provider": "mock",
                                     "override_params": {"model": "fast:tokens=3"},
                                     "cache": {"mode": "simple", "max_age": 60}}},
                 routes={"cheap-and-cached": "cached"})
    client = await proxy(cfg)
    named = {"x-portkey-config": "cached"}
    resp, _ = await post(client, {"model": "anything", "stream": True}, named)
    assert resp.headers[STATUS] == "MISS"
    await drained(client)
    resp, out = await post(client, {"model": "anything", "stream": True}, named)
    assert resp.headers[STATUS] == "HIT"
    assert collect(sse_chunks(out)).content == mock_text(3)
    # The route runs the same config: the same upstream question, so the same entry.
    resp, out = await post(client, {"model": "cheap-and-cached", "stream": True})
    assert resp.headers[STATUS] == "HIT"
    assert collect(sse_chunks(out)).content == mock_text(3)


async def test_proxy_keys_do_not_share_cached_answers(proxy: Any) -> None:
    client = await proxy(config(auth={"keys": [{"name": "team-a", "key": "ka"},
                                               {"name": "team-b", "key": "kb"}]}))
    body = {"model": "mock/fast:tokens=3", "stream": True}
    statuses = []
    for key in ("ka", "kb", "ka", "kb"):
        resp, _ = await post(client, body, {**cache_header(), "x-portkey-api-key": key})
        statuses.append(resp.headers[STATUS])
        await drained(client)
    assert statuses == ["MISS", "MISS", "HIT", "HIT"]


def test_a_backend_passed_in_is_used_even_while_empty() -> None:
    from streamproxy.cache.service import ResponseCache
    backend = MemoryCache(10, 1 << 20)
    assert not len(backend)  # (empty: falsy, which `backend or …` replaced)
    assert ResponseCache(CacheSettings(), backend).backend is backend


async def test_a_redis_that_answers_garbage_is_a_miss(
        proxy: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A server on Redis's port answering `+OK` to every command (`HELLO 3` included) makes
    redis-py fail with an AttributeError, not a RedisError: the request was a 500, where every
    failure of the cache is a miss (logged once a minute, not once a request)."""

    async def answer_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while (line := await reader.readline()).startswith(b"*"):
                for _ in range(2 * int(line[1:])):
                    await reader.readline()
                writer.write(b"+OK\r\n")
        writer.close()

    server = await asyncio.start_server(answer_ok, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = await proxy(config(cache={"backend": "redis",
                                           "redis_url": f"redis://127.0.0.1:{port}/0"}))
        for _ in range(3):
            resp, _ = await post(client, {"model": "fast:tokens=2"}, cache_header(max_age=30))
            assert (resp.status, resp.headers[STATUS]) == (200, "MISS")
        resp, _ = await post(client, {"model": "fast:tokens=2", "stream": True},
                             cache_header(max_age=30))
        assert (resp.status, resp.headers[STATUS]) == (200, "MISS")
        await drained(client)
    finally:
        server.close()
        await server.wait_closed()
    warned = [r for r in caplog.records if r.name == "streamproxy.cache"]
    assert len(warned) == 1 and "a miss" in warned[0].getMessage()


async def test_cache_lookups_are_counted_by_status(proxy: Any) -> None:
    """The hit rate was in the access log alone: `streamproxy_cache_requests_total{status}`
    counts the lookups (a request with no cache config, DISABLED, is none)."""

    def counted(status: str) -> float:
        return metric_value("streamproxy_cache_requests_total", {"status": status})

    statuses = ("HIT", "MISS", "REFRESH", "DISABLED")
    before = {s: counted(s) for s in statuses}
    client = await proxy(config())
    body = {"model": "fast:tokens=2",
            "messages": [{"role": "user", "content": f"counted {random.random()}"}]}
    for headers in (cache_header(max_age=30), cache_header(max_age=30),
                    {**cache_header(max_age=30), "x-portkey-cache-force-refresh": "true"}, {}):
        await post(client, body, headers)
        await drained(client)
    assert {s: counted(s) - before[s] for s in statuses} == {
        "HIT": 1, "MISS": 1, "REFRESH": 1, "DISABLED": 0}


async def test_a_keepalive_head_names_no_cache_status_a_fallback_may_change(
        proxy: Any, access_log: Any) -> None:
    # The first keep-alive comment commits the head while the primary is late: its MISS went
    # out, and the fallback's cached answer then followed under it.
    from tests.test_gateway import leaf

    config = make_config({"mock": {"type": "mock", "default_model": "fast"},
                          "mock2": {"type": "mock", "default_model": "fast"}}, default="mock",
                         server={"keepalive_interval": 0.05}, cache={"backend": "memory"})
    client = await proxy(config)
    slow = leaf("fast:stall_ms=2000", request_timeout=300)
    fallback = orjson.dumps({"cache": {"mode": "simple"}, "strategy": {"mode": "fallback"},
                             "targets": [slow, leaf("fast:tokens=3", "mock2")]}).decode()
    heads = []
    for _ in range(2):
        resp = await client.post("/v1/chat/completions", headers={"x-portkey-config": fallback},
                                 json={"messages": USER, "stream": True})
        assert collect(sse_chunks(await resp.read())).content == mock_text(3)
        heads.append(resp.headers.get("x-portkey-cache-status"))
    assert access_log()[-1]["cache_status"] == "HIT"  # the second came from the cache
    assert heads == [None, None]
    # One target: the status noted before its request is its answer's.
    alone = orjson.dumps({"cache": {"mode": "simple"}, **slow}).decode()
    resp = await client.post("/v1/chat/completions", headers={"x-portkey-config": alone},
                             json={"messages": USER, "stream": True})
    await resp.read()
    assert resp.headers["x-portkey-cache-status"] == "MISS"


# An answer that says "Hi" and reports no usage: a Gemini-compatible server's (translated) and
# an OpenAI-compatible one's (passed through), streamed and not.
_GEMINI_HI = {"candidates": [{"index": 0, "finishReason": "STOP", "content": {
    "role": "model", "parts": [{"text": "Hi"}]}}]}
_OPENAI_HI_CHUNKS = [
    {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [
        {"index": 0, "delta": {"role": "assistant", "content": "Hi"}, "finish_reason": None}]},
    {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [
        {"index": 0, "delta": {}, "finish_reason": "stop"}]}]
UNCOUNTED = {
    ("gemini", True): b"data: " + orjson.dumps(_GEMINI_HI) + b"\r\n\r\n",
    ("gemini", False): orjson.dumps(_GEMINI_HI),
    ("openai", True): b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in _OPENAI_HI_CHUNKS)
    + b"data: [DONE]\n\n",
    ("openai", False): orjson.dumps({
        "id": "c", "object": "chat.completion", "created": 1, "model": "m", "choices": [
            {"index": 0, "finish_reason": "stop",
             "message": {"role": "assistant", "content": "Hi"}}]}),
}


@pytest.mark.parametrize("kind", ["gemini", "openai"])
@pytest.mark.parametrize("fill_streamed", [True, False])
@pytest.mark.parametrize("hit_streamed", [True, False])
async def test_a_hit_of_an_answer_without_usage_has_the_usage_an_uncached_one_has(
        proxy: Any, upstream: Any, kind: str, fill_streamed: bool, hit_streamed: bool) -> None:
    # A translated answer gets zeros (OpenAI's always has usage), a passed-through one is
    # forwarded as it came, but for the usage chunk of zeros a streamed client that asked
    # for usage gets: a hit filled by a stream with none gave a non-streamed client no
    # `usage` (translated), or a streamed one no usage chunk (pass-through).
    client = await proxy(config(upstream.url, kind=kind))

    def serve(streamed: bool) -> None:
        upstream.content_type = "text/event-stream" if streamed else "application/json"
        upstream.body = UNCOUNTED[kind, streamed]

    async def usage_of(streamed: bool, headers: dict[str, str] | None) -> Any:
        body = {"model": "up/m", "stream": streamed, "stream_options": (
            {"include_usage": True} if streamed else None)}
        resp, raw = await post(client, body, headers)
        assert resp.status == 200
        if streamed:
            got = collect(sse_chunks(raw))
            assert got.content == "Hi" and got.done
            return resp, got.usage
        answer = orjson.loads(raw)
        assert answer["choices"][0]["message"]["content"] == "Hi"
        return resp, answer.get("usage", "absent")

    serve(hit_streamed)
    _, uncached = await usage_of(hit_streamed, None)
    serve(fill_streamed)
    miss, _ = await usage_of(fill_streamed, cache_header())
    await drained(client)
    hit, replayed = await usage_of(hit_streamed, cache_header())
    assert (miss.headers[STATUS], hit.headers[STATUS]) == ("MISS", "HIT")
    assert replayed == uncached


class SlowCache(MemoryCache):
    """A lookup slower than the keep-alive interval (a Redis far away, or busy)."""

    def __init__(self, delay: float) -> None:
        super().__init__(100, 1 << 20)
        self.delay = delay

    async def get(self, key: str) -> dict[str, Any] | None:
        await asyncio.sleep(self.delay)
        return await super().get(key)


async def test_a_keepalive_head_waits_for_a_single_targets_slow_lookup(
        proxy: Any, access_log: Any) -> None:
    # One target: its cache status is the answer's, so the first keep-alive comment's head
    # waits for the lookup instead of going out without any x-portkey-cache-status.
    client = await proxy(config(server={"keepalive_interval": 0.02}))
    await client.server.app[FEATURES].cache.backend.close()
    client.server.app[FEATURES].cache.backend = SlowCache(0.15)
    slow = cache_header()
    body = {"model": "mock/fast:tokens=3,stall_ms=150", "stream": True}
    statuses, outs = [], []
    for _ in range(2):
        resp, out = await post(client, body, slow)
        assert resp.status == 200 and collect(sse_chunks(out)).content == mock_text(3)
        statuses.append(resp.headers.get(STATUS))
        outs.append(out)
        await drained(client)
    assert statuses == ["MISS", "HIT"]
    assert [line["cache_status"] for line in access_log()] == ["MISS", "HIT"]
    assert outs[0].startswith(b": keep-alive\n\n")  # the miss's slow upstream still kept alive


class TTLCache(MemoryCache):
    def __init__(self) -> None:
        super().__init__(100, 1 << 20)
        self.ttls: list[float] = []

    async def set(self, key: str, entry: dict[str, Any], ttl: float) -> None:
        self.ttls.append(ttl)
        await super().set(key, entry, ttl)


@pytest.mark.parametrize(("cache", "cache_control", "ttl"), [
    ({}, "max-age=60", 60.0),
    ({}, "public, Max-Age = 120", 120.0),
    ({}, "max-age:90", 90.0),  # (as Portkey's docs write it)
    ({"max_age": 3600}, "max-age=60", 3600.0),  # the config's own wins
    ({}, "max-age=0", 604800.0),  # (no positive age: the default)
    ({}, "no-cache", 604800.0),  # (not honoured: README, "The cache")
    ({}, None, 604800.0),
])
async def test_a_requests_cache_control_max_age_is_the_max_age_a_config_gives_none(
        proxy: Any, cache: dict[str, Any], cache_control: str | None, ttl: float) -> None:
    """Portkey reads a request's `Cache-Control: max-age=N` as its cache's max age when the
    config sets none; here it was ignored: the answer was kept (and a stored one served) for
    the default 7 days where the client asked for N seconds."""
    client = await proxy(config())
    backend = TTLCache()
    await client.server.app[FEATURES].cache.backend.close()
    client.server.app[FEATURES].cache.backend = backend
    headers = cache_header(**cache)
    if cache_control is not None:
        headers["cache-control"] = cache_control
    resp, _ = await post(client, {"model": "mock/fast:tokens=2"}, headers)
    await drained(client)
    assert resp.status == 200 and resp.headers[STATUS] == "MISS"
    assert backend.ttls == [ttl]


async def test_a_stored_answer_older_than_the_requests_max_age_is_not_served(
        proxy: Any) -> None:
    client = await proxy(config())
    body = {"model": "mock/fast:tokens=2"}
    resp, _ = await post(client, body, cache_header())
    await drained(client)
    backend = client.server.app[FEATURES].cache.backend
    [key] = list(backend._items)
    entry = await backend.get(key)
    await backend.set(key, {**entry, "stored_at": entry["stored_at"] - 120}, 604800)
    statuses = []
    for cache_control in ("max-age=600", "max-age=60"):  # (the answer is 120 s old)
        resp, _ = await post(client, body, {**cache_header(), "cache-control": cache_control})
        await drained(client)
        statuses.append(resp.headers[STATUS])
    assert statuses == ["HIT", "MISS"]


def _tier_told_at_the_end(sink: Any) -> None:
    """An answer whose provider tells the tier that served it after the finish (Bedrock's
    metadata), as its translator writes it."""
    sink.start("m")
    for text in ("Hel", "lo"):
        sink.content(text)
    sink.finish("stop")
    sink.service_tier("flex")
    sink.usage({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})
    sink.end()


def _tiers(body: bytes) -> list[Any]:
    return [c.get("service_tier") for c in sse_chunks(body) if c != "[DONE]"]


@pytest.mark.parametrize("include_usage", [True, False])
@pytest.mark.parametrize("fill_streamed", [True, False])
def test_a_tier_told_at_the_end_is_replayed_at_the_end(fill_streamed: bool,
                                                       include_usage: bool) -> None:
    # Uncached, such a tier is on the usage chunk only (or on none, when the client asked
    # for no usage); a hit put it in the envelope of every chunk it replayed.
    encoder = RecordingChunkEncoder(completion_id="c", created=1, model="m",
                                    include_usage=include_usage)
    builder = CompletionBuilder()
    _tier_told_at_the_end(TeeSink(encoder, builder))
    uncached = encoder.take()
    if fill_streamed:
        entry = cached.from_builder(builder)
    else:  # a non-streamed answer, translated as bedrock/response.py builds it
        whole = CompletionBuilder()
        _tier_told_at_the_end(whole)
        entry = cached.from_completion(
            whole.completion(completion_id="c", created=1, model="m"), translated=True)
    entry = orjson.loads(orjson.dumps(entry))  # (as a backend keeps it)
    replayer = cached.ReplayEncoder(cached.upstream_fields(entry), completion_id="r",
                                    created=2, model="m", include_usage=include_usage)
    cached.replay(entry, replayer)
    replayed = replayer.take()
    # (a non-streamed fill replays its text as one delta: fewer chunks, the same last one)
    last = "flex" if include_usage else None
    for body in (uncached, replayed):
        *before, at_end = _tiers(body)
        assert (before, at_end) == ([None] * len(before), last)
    assert collect(sse_chunks(replayed)).content == "Hello"
    whole_hit = cached.completion_from(entry, completion_id="r", created=2, model="m")
    assert whole_hit["service_tier"] == "flex"  # a non-streamed hit says it, as uncached
