"""Gemini / Vertex streams → OpenAI chunks: the recorded fixtures (tests/fixtures/gemini, from
../shared/fixtures) give exactly the results listed in its README, whole and at random byte
splits, through the pure pipeline and through the proxy; hand-built streams cover the rest.

How the fixture bodies are built:
- `llm-gemini_…response0.json` was recorded WITHOUT `alt=sse` (one JSON array sent
  incrementally). The proxy always asks for `alt=sse`, whose framing is one `data: <element>`
  per array element with CRLF separators and no `[DONE]` (provider-streams.md §1.1, §4.1), so
  the SSE body is built from the array's elements: `data: <element>\r\n\r\n`.
- `vercel-ai_…prompt-block.chunks.jsonl` keeps only the JSON payloads; they are framed the same
  way.
- Vertex AI has no recording: its streams here are built from the same documented format
  (Vertex answers the same `GenerateContentResponse` chunks, §4.1).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import sys
import time
from dataclasses import dataclass
from typing import Any

import openai
import orjson
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproxy.openai_api.chunks import ChunkEncoder
from streamproxy.providers.gemini.auth import CommandToken
from streamproxy.providers.gemini.errors import RETRY_INFO, google_error
from streamproxy.providers.gemini.response import to_completion
from streamproxy.providers.gemini.stream import GeminiStreamTranslator
from tests.conftest import provider_config
from tests.helpers import (
    DecodingEncoder,
    assert_finish_last,
    collect,
    count_spliced_reads,
    fixture_bytes,
    make_config,
    make_encoder,
    openai_sdk,
    random_splits,
    relay_pieces,
    sse_chunks,
)

USER = [{"role": "user", "content": "hi"}]


def gemini_sse(elements: list[Any]) -> bytes:
    """`alt=sse` framing as Gemini sends it: one compact JSON per event, CRLF, no [DONE]."""
    return b"".join(b"data: " + orjson.dumps(e) + b"\r\n\r\n" for e in elements)


def jsonl_elements(data: bytes) -> list[Any]:
    return [orjson.loads(line) for line in data.splitlines() if line.strip()]


TOOL_ELEMENTS = orjson.loads(
    fixture_bytes("gemini/llm-gemini_test_stream_events_tool_calls.response0.json"))
BLOCK_ELEMENTS = jsonl_elements(
    fixture_bytes("gemini/vercel-ai_issue-19758-prompt-block.chunks.jsonl"))
SIGNATURE = TOOL_ELEMENTS[0]["candidates"][0]["content"]["parts"][0]["thoughtSignature"]


@dataclass
class Golden:
    body: bytes
    content: str
    finish: str
    usage: tuple[int, int, int]
    tools: list[tuple[str, str, str]]  # (id, name, exact arguments string)


GOLDEN = {
    "tool-call": Golden(gemini_sse(TOOL_ELEMENTS), "", "tool_calls", (295 - 267, 267, 295),
                        [("c9bjmkfz", "pelican_name_generator", '{"type": "funny"}')]),
    "prompt-block": Golden(gemini_sse(BLOCK_ELEMENTS), "", "content_filter", (9, 0, 9), []),
}


def translate(pieces: list[bytes], *, include_usage: bool = True,
              encoder: type[ChunkEncoder] = ChunkEncoder) -> bytes:
    enc = encoder(completion_id="chatcmpl-t", created=1, model="m", include_usage=include_usage)
    tr = GeminiStreamTranslator(enc, 1 << 20)
    return relay_pieces(enc, tr, pieces)


def check(golden: Golden, out: bytes) -> Any:
    chunks = sse_chunks(out)
    c = collect(chunks)
    assert_finish_last(chunks)
    assert c.error is None
    assert c.done and chunks[-1] == "[DONE]"
    assert len(c.ids) == 1 and len(c.created) == 1
    assert c.roles == 1
    assert c.content == golden.content
    assert c.finish_reason == golden.finish
    assert c.usage is not None
    assert (c.usage["prompt_tokens"], c.usage["completion_tokens"],
            c.usage["total_tokens"]) == golden.usage
    assert [(t["id"], t["name"], t["arguments"]) for t in c.tool_calls] == golden.tools
    return c


@pytest.mark.parametrize("name", GOLDEN)
def test_fixture_whole_and_at_random_splits(name: str) -> None:
    golden = GOLDEN[name]
    check(golden, translate([golden.body]))
    rng = random.Random(name)
    for _ in range(25):
        check(golden, translate(random_splits(golden.body, rng, max_piece=rng.choice([3, 50]))))
    check(golden, translate([golden.body[i:i + 1] for i in range(len(golden.body))]))


def test_fixture_tool_call_details() -> None:
    c = check(GOLDEN["tool-call"], translate([GOLDEN["tool-call"].body]))
    assert c.usage["completion_tokens_details"] == {"reasoning_tokens": 248}
    assert c.usage["prompt_tokens_details"] == {"cached_tokens": 0}
    # The thought signature reaches the client, tied to its call, for the next turn.
    assert c.thinking_blocks == [{"type": "thought_signature", "signature": SIGNATURE,
                                  "tool_call_id": "c9bjmkfz"}]
    chunks = sse_chunks(translate([GOLDEN["tool-call"].body]))
    assert chunks[0]["model"] == "gemini-3-flash-preview"  # modelVersion


def test_usage_chunk_only_when_asked() -> None:
    c = collect(sse_chunks(translate([GOLDEN["tool-call"].body], include_usage=False)))
    assert c.usage is None and c.done and c.finish_reason == "tool_calls"


@pytest.mark.parametrize("name", GOLDEN)
async def test_fixture_through_the_proxy_at_random_splits(name: str, proxy: Any,
                                                          upstream: Any) -> None:
    golden = GOLDEN[name]
    upstream.pieces = random_splits(golden.body, random.Random(name), max_piece=40)
    client = await proxy(provider_config("gemini", upstream.url))
    resp = await client.post("/v1/chat/completions", json={
        "model": "m", "stream": True, "stream_options": {"include_usage": True},
        "messages": USER})
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    check(golden, await resp.read())


# -- hand-built streams ---------------------------------------------------------------------

def chunk(parts: list[dict[str, Any]] | None = None, *, finish: str | None = None,
          usage: dict[str, int] | None = None) -> dict[str, Any]:
    candidate: dict[str, Any] = {"index": 0}
    if parts is not None:
        candidate["content"] = {"role": "model", "parts": parts}
    if finish:
        candidate["finishReason"] = finish
    out: dict[str, Any] = {"candidates": [candidate], "modelVersion": "gemini-2.5-flash"}
    if usage:
        out["usageMetadata"] = usage
    return out


MULTI = [
    chunk([{"text": "Let me think about the weather.", "thought": True}],
          usage={"promptTokenCount": 55, "candidatesTokenCount": 3, "totalTokenCount": 80}),
    chunk([{"text": "Checking "}, {"text": "two cities."}],
          usage={"promptTokenCount": 55, "candidatesTokenCount": 9, "totalTokenCount": 90}),
    chunk([{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}, "id": "g1"},
            "thoughtSignature": "c2lnLTE="}],
          usage={"promptTokenCount": 10, "candidatesTokenCount": 2, "totalTokenCount": 12}),
    chunk([{"functionCall": {"name": "get_weather", "args": {"city": "Zürich", "n": [1, 2]}}}]),
    chunk([{"text": ""}], finish="STOP",
          usage={"promptTokenCount": 165, "candidatesTokenCount": 30, "totalTokenCount": 240,
                 "thoughtsTokenCount": 40, "toolUsePromptTokenCount": 5,
                 "cachedContentTokenCount": 100}),
]


def test_multi_chunk_stream_text_thought_two_calls_last_usage_wins() -> None:
    body = gemini_sse(MULTI)
    rng = random.Random(7)
    for pieces in ([body], *(random_splits(body, rng, max_piece=20) for _ in range(20))):
        chunks = sse_chunks(translate(pieces))
        assert_finish_last(chunks)
        c = collect(chunks)
        assert c.reasoning == "Let me think about the weather."
        assert c.content == "Checking two cities."
        assert [t["name"] for t in c.tool_calls] == ["get_weather", "get_weather"]
        assert c.tool_calls[0]["id"] == "g1"
        assert c.tool_calls[1]["id"].startswith("call_") and len(c.tool_calls[1]["id"]) == 29
        assert c.args(0) == {"city": "Paris"}
        assert c.args(1) == {"city": "Zürich", "n": [1, 2]}
        assert c.finish_reason == "tool_calls"
        assert c.thinking_blocks == [{"type": "thought_signature", "signature": "c2lnLTE=",
                                      "tool_call_id": "g1"}]
        # Only the last snapshot counts (the third one went *down*); nothing is summed.
        assert c.usage == {"prompt_tokens": 170, "completion_tokens": 70, "total_tokens": 240,
                           "prompt_tokens_details": {"cached_tokens": 100},
                           "completion_tokens_details": {"reasoning_tokens": 40}}
        assert c.done


@settings(max_examples=150, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=len(gemini_sse(MULTI))), max_size=12))
def test_any_split_gives_the_same_answer(cuts: list[int]) -> None:
    body = gemini_sse(MULTI)
    bounds = [0, *sorted(cuts), len(body)]
    c = collect(sse_chunks(translate([body[a:b] for a, b in itertools.pairwise(bounds)])))
    c.tool_calls[1]["id"] = "generated"
    whole = collect(sse_chunks(translate([body])))
    whole.tool_calls[1]["id"] = "generated"
    assert c == whole


def test_tool_indices_count_across_chunks() -> None:
    chunks = sse_chunks(translate([gemini_sse(MULTI)]))
    indices = [tc["index"] for ch in chunks if ch != "[DONE]" and ch["choices"]
               for tc in ch["choices"][0]["delta"].get("tool_calls") or []]
    assert indices == [0, 1]


def test_finish_before_the_last_usage_snapshot() -> None:
    body = gemini_sse([
        chunk([{"text": "Hello"}], usage={"promptTokenCount": 4, "candidatesTokenCount": 1,
                                          "totalTokenCount": 5}),
        chunk([{"text": ""}], finish="STOP"),
        {"usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 2,
                           "totalTokenCount": 6}},
    ])
    chunks = sse_chunks(translate([body]))
    assert_finish_last(chunks)
    c = collect(chunks)
    assert c.content == "Hello" and c.finish_reason == "stop" and c.done
    assert (c.usage["prompt_tokens"], c.usage["completion_tokens"]) == (4, 2)


def test_a_signature_on_a_text_part_is_kept() -> None:
    body = gemini_sse([chunk([{"text": "Hi", "thoughtSignature": "dGV4dA=="}], finish="STOP")])
    c = collect(sse_chunks(translate([body])))
    assert c.content == "Hi" and c.finish_reason == "stop"
    assert c.thinking_blocks == [{"type": "thought_signature", "signature": "dGV4dA=="}]


AUDIO_PROMPT_USAGE = {  # an input_audio prompt, per-modality details as Gemini gives them
    "promptTokenCount": 236, "candidatesTokenCount": 12, "totalTokenCount": 248,
    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 11},
                            {"modality": "AUDIO", "tokenCount": 225}],
    "candidatesTokensDetails": [{"modality": "TEXT", "tokenCount": 12}]}


def test_audio_prompt_tokens_are_reported() -> None:
    """`promptTokensDetails`' AUDIO count → `prompt_tokens_details.audio_tokens`, as OpenAI
    reports an audio prompt's tokens (billed above text); streamed and not alike."""
    elements = [chunk([{"text": "A dog "}]),
                chunk([{"text": "barks."}], finish="STOP", usage=AUDIO_PROMPT_USAGE)]
    body = gemini_sse(elements)
    details = {"cached_tokens": 0, "audio_tokens": 225}
    rng = random.Random(11)
    for pieces in ([body], *(random_splits(body, rng, max_piece=30) for _ in range(10))):
        c = collect(sse_chunks(translate(pieces)))
        assert c.content == "A dog barks." and c.done
        assert c.usage["prompt_tokens"] == 236 and c.usage["prompt_tokens_details"] == details
    whole = {**elements[1], "candidates": [{**elements[1]["candidates"][0], "content": {
        "role": "model", "parts": [{"text": "A dog barks."}]}}]}
    answer = to_completion(orjson.dumps(whole), completion_id="c", created=1, model="m")
    assert answer["usage"]["prompt_tokens_details"] == details
    # No AUDIO entry (a text prompt): the details stay as they were.
    text_only = {**AUDIO_PROMPT_USAGE, "promptTokensDetails": [{"modality": "TEXT",
                                                                 "tokenCount": 236}]}
    c = collect(sse_chunks(translate([gemini_sse([chunk([{"text": "x"}], finish="STOP",
                                                        usage=text_only)])])))
    assert c.usage["prompt_tokens_details"] == {"cached_tokens": 0}



def test_total_tokens_is_prompt_plus_completion_whatever_the_total_said() -> None:
    """A Gemini-compatible server's totalTokenCount that leaves the thoughts (or the tool-use
    prompt) out, or says 0: the client's total_tokens is still prompt + completion, streamed
    and not, as OpenAI's always is."""
    for total in (15, 0):
        usage = {"promptTokenCount": 10, "candidatesTokenCount": 5, "thoughtsTokenCount": 20,
                 "toolUsePromptTokenCount": 3, "totalTokenCount": total}
        element = chunk([{"text": "Hi"}], finish="STOP", usage=usage)
        c = collect(sse_chunks(translate([gemini_sse([element])])))
        answer = to_completion(orjson.dumps(element), completion_id="c", created=1, model="m")
        for got in (c.usage, answer["usage"]):
            assert (got["prompt_tokens"], got["completion_tokens"], got["total_tokens"]) \
                == (13, 25, 38)

def test_a_call_without_arguments_gets_an_empty_object() -> None:
    body = gemini_sse([chunk([{"functionCall": {"name": "now"}}], finish="STOP")])
    c = collect(sse_chunks(translate([body])))
    assert c.tool_calls[0]["arguments"] == "{}" and c.finish_reason == "tool_calls"


@pytest.mark.parametrize(("reason", "expected"), [
    ("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"),
    ("RECITATION", "content_filter"), ("PROHIBITED_CONTENT", "content_filter"),
    ("BLOCKLIST", "content_filter"), ("SPII", "content_filter"), ("LANGUAGE", "content_filter"),
    ("IMAGE_SAFETY", "content_filter"), ("OTHER", "content_filter"),
    ("MODEL_ARMOR", "content_filter"),  # Vertex: the answer was blocked by Model Armor
    ("FINISH_REASON_UNSPECIFIED", "stop"), ("SOMETHING_NEW", "stop"),
])
def test_finish_reasons(reason: str, expected: str) -> None:
    # A finish with no parts at all (SAFETY does that) must not crash either.
    body = gemini_sse([chunk([{"text": "Some"}]), chunk(None, finish=reason)])
    c = collect(sse_chunks(translate([body])))
    assert c.finish_reason == expected and c.content == "Some" and c.done


@pytest.mark.parametrize("reason", ["MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL",
                                    "TOO_MANY_TOOL_CALLS", "MALFORMED_RESPONSE"])
def test_failed_finish_reasons_are_errors_not_stops(reason: str) -> None:
    failed = chunk(None, finish=reason)
    failed["candidates"][0]["finishMessage"] = "Malformed function call: foo("
    c = collect(sse_chunks(translate([gemini_sse([chunk([{"text": "x"}]), failed])])))
    assert c.finish_reason is None and not c.done
    assert c.error is not None and reason in c.error["message"]
    assert "Malformed function call: foo(" in c.error["message"]
    assert c.error["code"] == reason.lower()


@pytest.mark.parametrize("cut", ["before-finish", "mid-json", "empty"])
def test_truncated_stream_is_an_error_never_a_stop(cut: str) -> None:
    body = gemini_sse(MULTI)
    if cut == "before-finish":
        body = gemini_sse(MULTI[:-1])
    elif cut == "mid-json":
        body = body[: len(body) - 30]
    else:
        body = b""
    chunks = sse_chunks(translate([body]))
    c = collect(chunks)
    assert c.error is not None and c.error["code"] in ("upstream_stream_truncated",
                                                       "upstream_protocol_error")
    assert not c.done and c.finish_reason is None
    assert "[DONE]" not in chunks


def test_error_object_mid_stream() -> None:
    body = gemini_sse([chunk([{"text": "partial"}]),
                       {"error": {"code": 503, "message": "The model is overloaded.",
                                  "status": "UNAVAILABLE"}}])
    c = collect(sse_chunks(translate([body])))
    assert c.content == "partial" and not c.done
    assert c.error == {"message": "The model is overloaded.", "type": "api_error",
                       "param": None, "code": "UNAVAILABLE"}


def test_an_error_that_is_only_text_is_the_providers_error() -> None:
    """`{"error": "…"}` (a string, as some Google front ends and proxies send): Google's
    words, not a 502 about the stream's shape."""
    body = gemini_sse([chunk([{"text": "partial"}]), {"error": "Internal error encountered."}])
    c = collect(sse_chunks(translate([body])))
    assert c.content == "partial" and not c.done
    assert c.error == {"message": "Internal error encountered.", "type": "api_error",
                       "param": None, "code": None}


# -- through the proxy ----------------------------------------------------------------------

async def test_truncated_stream_through_the_proxy(proxy: Any, upstream: Any) -> None:
    upstream.pieces = random_splits(gemini_sse(MULTI[:-1]), random.Random(3), max_piece=30)
    client = await proxy(provider_config("gemini", upstream.url))
    resp = await client.post("/v1/chat/completions", json={"model": "m", "stream": True,
                                                           "messages": USER})
    assert resp.status == 200  # committed: content went out before the cut
    chunks = sse_chunks(await resp.read())
    c = collect(chunks)
    assert c.content == "Checking two cities." and len(c.tool_calls) == 2
    assert c.error is not None and c.error["code"] == "upstream_stream_truncated"
    assert c.finish_reason is None and "[DONE]" not in chunks


async def test_failed_finish_before_any_output_is_an_http_error(proxy: Any,
                                                                upstream: Any) -> None:
    upstream.body = gemini_sse([chunk(None, finish="MALFORMED_FUNCTION_CALL")])
    client = await proxy(provider_config("gemini", upstream.url))
    resp = await client.post("/v1/chat/completions", json={"model": "m", "stream": True,
                                                           "messages": USER})
    # Nothing was committed yet, so the client gets an HTTP error (and a router may fall back).
    assert resp.status == 502
    err = (await resp.json())["error"]
    assert "MALFORMED_FUNCTION_CALL" in err["message"]
    assert err["code"] == "malformed_function_call"


GOOGLE_429 = orjson.dumps([{"error": {
    "code": 429, "message": "Resource has been exhausted (e.g. check quota).",
    "status": "RESOURCE_EXHAUSTED"}}])


@pytest.mark.parametrize("stream", [True, False])
async def test_upstream_error_status_and_message_carried_over(stream: bool, proxy: Any,
                                                              upstream: Any) -> None:
    upstream.status = 429
    upstream.content_type = "application/json"
    upstream.body = GOOGLE_429  # wrapped in a list, as the streaming endpoint does
    client = await proxy(provider_config("gemini", upstream.url))
    resp = await client.post("/v1/chat/completions", json={"model": "m", "stream": stream,
                                                           "messages": USER})
    assert resp.status == 429
    err = (await resp.json())["error"]
    assert err["message"] == "Resource has been exhausted (e.g. check quota)."
    assert err["type"] == "rate_limit_error" and err["code"] == "RESOURCE_EXHAUSTED"
    assert "sk-test-secret" not in await resp.text()


async def test_a_429s_retry_info_is_the_wait_for_retries_and_the_client(proxy: Any,
                                                                         upstream: Any) -> None:
    # Google names its wait in the body only (no Retry-After header).
    upstream.status = 429
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps({"error": {
        "code": 429, "message": "Quota exceeded.", "status": "RESOURCE_EXHAUSTED",
        "details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo",
                     "retryDelay": "0.400s"}]}})
    client = await proxy(provider_config("gemini", upstream.url))
    config = orjson.dumps({"retry": {"attempts": 1}}).decode()
    started = time.monotonic()
    resp = await client.post("/v1/chat/completions", headers={"x-portkey-config": config},
                             json={"model": "m", "messages": USER})
    waited = time.monotonic() - started
    assert resp.status == 429 and len(upstream.requests) == 2
    assert 0.4 <= waited < 2.0  # Google's 0.4 s, not a backoff of 0.125-0.25 s
    assert (resp.headers["retry-after"], resp.headers["retry-after-ms"]) == ("1", "400")


async def test_an_absurd_retry_delay_is_still_answered(proxy: Any, upstream: Any) -> None:
    # A finite retryDelay past ~1e305 s overflowed the client's retry-after-ms: an empty reply.
    upstream.status = 429
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps({"error": {"code": 429, "message": "Quota exceeded.",
                                            "details": [{"@type": RETRY_INFO,
                                                         "retryDelay": "1e306s"}]}})
    client = await proxy(provider_config("gemini", upstream.url))
    resp = await client.post("/v1/chat/completions", json={"model": "m", "messages": USER})
    assert resp.status == 429 and resp.headers["retry-after"] == "86400"
    assert (await resp.json())["error"]["message"] == "Quota exceeded."


@pytest.mark.parametrize("delay", ["soon", "-1s", "nans", 24])
def test_an_unreadable_retry_delay_is_no_wait(delay: Any) -> None:
    body = orjson.dumps({"error": {"code": 429, "message": "m", "details": [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}]}})
    assert google_error(429, body, "gemini").retry_after is None
    ok = body.replace(b'"retryDelay":' + orjson.dumps(delay), b'"retryDelay":"24s"')
    assert google_error(429, ok, "gemini").retry_after == 24.0


async def test_plain_object_error_body(proxy: Any, upstream: Any) -> None:
    upstream.status = 400
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps({"error": {"code": 400, "message": "API key not valid.",
                                            "status": "INVALID_ARGUMENT"}})
    client = await proxy(provider_config("gemini", upstream.url))
    resp = await client.post("/v1/chat/completions", json={"model": "m", "messages": USER})
    assert resp.status == 400
    assert (await resp.json())["error"] == {"message": "API key not valid.",
                                            "type": "invalid_request_error", "param": None,
                                            "code": "INVALID_ARGUMENT"}


# -- non-streamed answers -------------------------------------------------------------------

def whole_answer() -> dict[str, Any]:
    """A `generateContent` answer, built from the recorded stream's elements (same shape)."""
    answer = orjson.loads(orjson.dumps(TOOL_ELEMENTS[0]))
    answer["candidates"][0]["finishReason"] = "STOP"
    return answer


async def test_non_streamed_answer(proxy: Any, upstream: Any) -> None:
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps(whole_answer())
    client = await proxy(provider_config("gemini", upstream.url))
    resp = await client.post("/v1/chat/completions", json={"model": "m", "messages": USER})
    assert resp.status == 200
    body = await resp.json()
    assert upstream.requests[0].path == "/v1beta/models/m:generateContent"
    assert body["object"] == "chat.completion" and body["model"] == "gemini-3-flash-preview"
    [choice] = body["choices"]
    assert choice["finish_reason"] == "tool_calls"
    msg = choice["message"]
    assert msg["content"] is None
    assert msg["tool_calls"] == [{"id": "c9bjmkfz", "type": "function", "function": {
        "name": "pelican_name_generator", "arguments": '{"type": "funny"}'}}]
    assert msg["thinking_blocks"] == [{"type": "thought_signature", "signature": SIGNATURE,
                                       "tool_call_id": "c9bjmkfz"}]
    assert (body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"],
            body["usage"]["total_tokens"]) == (28, 267, 295)


async def test_non_streamed_blocked_prompt(proxy: Any, upstream: Any) -> None:
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps(BLOCK_ELEMENTS[0])
    client = await proxy(provider_config("gemini", upstream.url))
    resp = await client.post("/v1/chat/completions", json={"model": "m", "messages": USER})
    body = await resp.json()
    assert body["choices"][0]["finish_reason"] == "content_filter"
    # Why, in OpenAI's place for a refusal (content null, as the stream's role chunk says)
    message = body["choices"][0]["message"]
    assert message["content"] is None
    assert message["refusal"] == "The prompt was blocked (PROHIBITED_CONTENT)."
    assert body["usage"]["total_tokens"] == 9


async def test_non_streamed_answer_without_finish_reason_is_an_error(proxy: Any,
                                                                      upstream: Any) -> None:
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps(TOOL_ELEMENTS[0])  # no finishReason
    client = await proxy(provider_config("gemini", upstream.url))
    resp = await client.post("/v1/chat/completions", json={"model": "m", "messages": USER})
    assert resp.status == 502


# -- the official openai SDK end to end -----------------------------------------------------

SDK_STREAM = [
    chunk([{"text": "Pondering.", "thought": True}]),
    chunk([{"text": "The weather "}, {"text": "in Paris:"}]),
    chunk([{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]),
    chunk([{"functionCall": {"name": "get_time", "args": {}}}]),
    chunk([{"text": ""}], finish="STOP", usage={
        "promptTokenCount": 12, "candidatesTokenCount": 20, "thoughtsTokenCount": 8,
        "totalTokenCount": 40}),
]


@pytest.mark.parametrize("kind", ["gemini", "vertex"])
async def test_openai_sdk_streaming(kind: str, proxy: Any, upstream: Any) -> None:
    upstream.pieces = random_splits(gemini_sse(SDK_STREAM), random.Random(kind), max_piece=25)
    extra = {"project": "p", "location": "europe-west4"} if kind == "vertex" else {}
    client = openai_sdk(await proxy(provider_config(kind, upstream.url, **extra)))
    async with client:
        stream = await client.chat.completions.create(
            model="gemini-2.5-flash", messages=USER, stream=True,
            stream_options={"include_usage": True})
        text, reasoning, finish, usage = "", "", None, None
        calls: dict[int, dict[str, str]] = {}
        async for ch in stream:
            if ch.usage:
                usage = ch.usage
            for choice in ch.choices:
                text += choice.delta.content or ""
                reasoning += (choice.delta.model_extra or {}).get("reasoning_content") or ""
                finish = choice.finish_reason or finish
                for tc in choice.delta.tool_calls or []:
                    call = calls.setdefault(tc.index, {"id": "", "name": "", "args": ""})
                    call["id"] = tc.id or call["id"]
                    call["name"] = tc.function.name or call["name"]
                    call["args"] += tc.function.arguments or ""
    assert text == "The weather in Paris:"
    assert reasoning == "Pondering."
    assert finish == "tool_calls"
    assert sorted(calls) == [0, 1]
    assert [calls[0]["name"], calls[1]["name"]] == ["get_weather", "get_time"]
    assert [orjson.loads(calls[i]["args"]) for i in (0, 1)] == [{"city": "Paris"}, {}]
    assert all(c["id"].startswith("call_") for c in calls.values())
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (12, 28, 40)
    assert usage.completion_tokens_details.reasoning_tokens == 8
    sent = upstream.requests[0]
    if kind == "gemini":
        assert sent.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    else:
        assert sent.path == ("/v1/projects/p/locations/europe-west4/publishers/google/models/"
                             "gemini-2.5-flash:streamGenerateContent?alt=sse")


async def test_openai_sdk_non_streaming_and_error(proxy: Any, upstream: Any) -> None:
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps({
        "candidates": [{"content": {"role": "model", "parts": [{"text": "Hello!"}]},
                        "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2,
                          "totalTokenCount": 5},
        "modelVersion": "gemini-2.5-flash"})
    client = openai_sdk(await proxy(provider_config("gemini", upstream.url)))
    async with client:
        done = await client.chat.completions.create(model="gemini-2.5-flash", messages=USER)
        assert done.choices[0].message.content == "Hello!"
        assert done.choices[0].finish_reason == "stop"
        assert done.model == "gemini-2.5-flash"
        assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (3, 2)
        upstream.status = 429
        upstream.body = GOOGLE_429
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(model="gemini-2.5-flash", messages=USER)
        assert "Resource has been exhausted" in str(info.value)


async def test_openai_sdk_sees_a_truncation_as_an_error(proxy: Any, upstream: Any) -> None:
    upstream.body = gemini_sse(SDK_STREAM[:-1])
    client = openai_sdk(await proxy(provider_config("gemini", upstream.url)))
    async with client:
        stream = await client.chat.completions.create(model="m", messages=USER, stream=True)
        with pytest.raises(openai.APIError):
            async for _ in stream:
                pass


# -- request translation on what the upstream received --------------------------------------

def headers(received: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in received.headers.items()}


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                           "parameters": {"type": "object", "properties": {
                                               "city": {"type": "string"}},
                                               "additionalProperties": False}}}]


async def test_gemini_request_on_the_wire(proxy: Any, upstream: Any) -> None:
    upstream.body = gemini_sse([chunk([{"text": "ok"}], finish="STOP")])
    client = await proxy(provider_config("gemini", upstream.url,
                                         headers={"x-extra": "1"}))
    resp = await client.post("/v1/chat/completions", headers={"authorization": "Bearer client"},
                             json={
        "model": "gemini-2.5-flash", "stream": True, "max_tokens": 100, "temperature": 0.2,
        "top_p": 0.9, "stop": "END", "n": 1, "tools": TOOLS, "tool_choice": "required",
        "response_format": {"type": "json_object"}, "logit_bias": {"1": 2}, "user": "u1",
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Weather?"}]})
    assert resp.status == 200
    await resp.read()
    [sent] = upstream.requests
    assert sent.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    assert headers(sent)["x-goog-api-key"] == "sk-test-secret"  # the configured key wins
    assert "authorization" not in headers(sent)
    assert headers(sent)["x-extra"] == "1"
    assert headers(sent)["content-type"] == "application/json"
    assert sent.json() == {
        "contents": [{"role": "user", "parts": [{"text": "Weather?"}]}],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        # (no responseMimeType: beside the forced call, Gemini 2.5's 400; the calls are the
        # whole answer)
        "generationConfig": {"maxOutputTokens": 100, "temperature": 0.2, "topP": 0.9,
                             "candidateCount": 1, "stopSequences": ["END"]},
        "tools": [{"functionDeclarations": [{
            "name": "get_weather", "description": "Weather",
            "parametersJsonSchema": TOOLS[0]["function"]["parameters"]}]}],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY"}},
    }


# (a null is OpenAI's 400 before any translator: test_request_params)
@pytest.mark.parametrize("content", ["", [{"type": "text", "text": ""}]])
async def test_a_user_message_without_text_keeps_its_turn(proxy: Any, upstream: Any,
                                                          content: Any) -> None:
    # Gemini refuses an empty text part; left out, the request would end with the model turn
    # instead of the user's, and the model turns around one in the middle would merge.
    upstream.body = gemini_sse([chunk([{"text": "ok"}], finish="STOP")])
    client = await proxy(provider_config("gemini", upstream.url))
    resp = await client.post("/v1/chat/completions", json={"stream": True, "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": content}, {"role": "assistant", "content": "still there?"},
        {"role": "user", "content": content}]})
    assert resp.status == 200
    await resp.read()
    blank = {"role": "user", "parts": [{"text": "(empty message)"}]}
    assert upstream.requests[0].json()["contents"] == [
        {"role": "user", "parts": [{"text": "hi"}]},
        {"role": "model", "parts": [{"text": "hello"}]}, blank,
        {"role": "model", "parts": [{"text": "still there?"}]}, blank]


async def test_gemini_forwards_the_client_key_when_none_is_configured(proxy: Any,
                                                                       upstream: Any) -> None:
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps(chunk([{"text": "ok"}], finish="STOP"))
    client = await proxy(make_config({"g": {"type": "gemini", "base_url": upstream.url}},
                                     default="g"))
    resp = await client.post("/v1/chat/completions", headers={"authorization": "Bearer ck"},
                             json={"model": "gemini-2.5-pro", "messages": USER})
    assert (await resp.json())["choices"][0]["message"]["content"] == "ok"
    assert headers(upstream.requests[0])["x-goog-api-key"] == "ck"
    assert upstream.requests[0].path == "/v1beta/models/gemini-2.5-pro:generateContent"


async def test_vertex_request_on_the_wire_with_the_provider_key(proxy: Any,
                                                                upstream: Any) -> None:
    upstream.body = gemini_sse([chunk([{"text": "ok"}], finish="STOP")])
    client = await proxy(provider_config("vertex", upstream.url, project="my-proj",
                                         location="us-central1"))
    resp = await client.post("/v1/chat/completions", json={
        "model": "gemini-2.5-flash", "stream": True, "messages": USER,
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "object"}}}})
    assert collect(sse_chunks(await resp.read())).content == "ok"
    [sent] = upstream.requests
    assert sent.path == ("/v1/projects/my-proj/locations/us-central1/publishers/google/models/"
                         "gemini-2.5-flash:streamGenerateContent?alt=sse")
    assert headers(sent)["authorization"] == "Bearer sk-test-secret"
    assert "x-goog-api-key" not in headers(sent)
    assert sent.json()["generationConfig"] == {"responseMimeType": "application/json",
                                               "responseJsonSchema": {"type": "object"}}


async def test_a_portkey_meta_model_on_vertex_is_a_400_not_sent(proxy: Any,
                                                                  upstream: Any) -> None:
    client = await proxy(provider_config("vertex", upstream.url, project="my-proj",
                                         location="us-east5"))
    resp = await client.post("/v1/chat/completions", json={
        "model": "meta.llama-3.3-70b-instruct-maas", "stream": True, "messages": USER})
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert (error["param"], error["code"]) == ("model", "unsupported_value")
    assert "Gemini and Claude" in error["message"]
    assert upstream.requests == []  # (was a Gemini request to publishers/google/models/meta.…)


async def test_vertex_token_from_env(proxy: Any, upstream: Any,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SP_TEST_VERTEX_TOKEN", "ya29.env-token\n")  # (as a mounted file ends)
    upstream.body = gemini_sse([chunk([{"text": "ok"}], finish="STOP")])
    client = await proxy(provider_config("vertex", upstream.url, project="p", location="global",
                                         token_env="SP_TEST_VERTEX_TOKEN"))
    resp = await client.post("/v1/chat/completions", json={"model": "m", "stream": True,
                                                           "messages": USER})
    await resp.read()
    assert headers(upstream.requests[0])["authorization"] == "Bearer ya29.env-token"
    monkeypatch.delenv("SP_TEST_VERTEX_TOKEN")
    resp = await client.post("/v1/chat/completions", json={"model": "m", "messages": USER})
    assert resp.status == 502
    assert "SP_TEST_VERTEX_TOKEN" in (await resp.json())["error"]["message"]
    assert len(upstream.requests) == 1  # nothing sent without a token


@pytest.mark.parametrize("token", ["ya29.a\n# rotated 2026-01-01", "ya29.tok\u00e9n",
                                   "ya29.a b"])
async def test_a_token_env_that_holds_no_single_token_is_a_clear_error(
        token: str, proxy: Any, upstream: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # As a token_command's output and a Google token are: a value that cannot go in the header
    # was a 500 internal_error (a line break) or sent to Vertex for its 401 (non-ASCII).
    monkeypatch.setenv("SP_TEST_VERTEX_TOKEN", token)
    client = await proxy(provider_config("vertex", upstream.url, project="p", location="global",
                                         token_env="SP_TEST_VERTEX_TOKEN"))
    resp = await client.post("/v1/chat/completions", json={"model": "m", "stream": True,
                                                           "messages": USER})
    assert resp.status == 502
    err = (await resp.json())["error"]
    assert err["code"] == "upstream_credentials_unavailable"
    assert "SP_TEST_VERTEX_TOKEN" in err["message"] and "ya29" not in err["message"]
    assert upstream.requests == []


async def test_vertex_token_command_is_cached_and_refetched_after_a_401(
        proxy: Any, upstream: Any, tmp_path: Any) -> None:
    counter = tmp_path / "runs"
    script = ("import pathlib, sys; p = pathlib.Path(sys.argv[1]); "
              "n = int(p.read_text()) + 1 if p.exists() else 1; p.write_text(str(n)); "
              "print(f'ya29.token-{n}')")
    upstream.body = gemini_sse([chunk([{"text": "ok"}], finish="STOP")])
    config = provider_config("vertex", upstream.url, project="p", location="us-east5",
                             token_command=[sys.executable, "-c", script, str(counter)],
                             token_refresh=3600)
    client = await proxy(config)
    for _ in range(3):
        resp = await client.post("/v1/chat/completions", json={"model": "m", "stream": True,
                                                               "messages": USER})
        assert collect(sse_chunks(await resp.read())).done
    assert [headers(r)["authorization"] for r in upstream.requests] == \
        ["Bearer ya29.token-1"] * 3
    upstream.status = 401
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps({"error": {"code": 401, "message": "Request had invalid "
                                            "authentication credentials.",
                                            "status": "UNAUTHENTICATED"}})
    resp = await client.post("/v1/chat/completions", json={"model": "m", "messages": USER})
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "UNAUTHENTICATED"
    upstream.status = 200
    upstream.content_type = "text/event-stream"
    upstream.body = gemini_sse([chunk([{"text": "ok"}], finish="STOP")])
    resp = await client.post("/v1/chat/completions", json={"model": "m", "stream": True,
                                                           "messages": USER})
    await resp.read()
    assert headers(upstream.requests[-1])["authorization"] == "Bearer ya29.token-2"
    assert counter.read_text() == "2"


async def test_a_late_401_for_a_replaced_token_keeps_the_new_one(
        proxy: Any, aiohttp_server: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # A request sent with token 1 is answered 401 only after a background refresh replaced
    # it with token 2: token 2 was dropped (it was never rejected), and the next request
    # waited for a third fetch; under load, every such late 401 cost one more.
    sources: list[CommandToken] = []

    class Recorded(CommandToken):
        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            sources.append(self)

    monkeypatch.setattr("streamproxy.providers.gemini.CommandToken", Recorded)
    sent: list[str] = []

    async def vertex(request: web.Request) -> web.StreamResponse:
        sent.append(request.headers["authorization"])
        if len(sent) == 1:  # the refresh ends while this request is in flight
            [source] = sources
            source._stale_at = 0.0
            assert await source.get() == "ya29.token-1"
            assert source._running is not None and await source._running == "ya29.token-2"
            return web.json_response({"error": {"code": 401, "message": "Request had invalid "
                                                "authentication credentials.",
                                                "status": "UNAUTHENTICATED"}}, status=401)
        return web.Response(body=gemini_sse([chunk([{"text": "ok"}], finish="STOP")]),
                            content_type="text/event-stream")

    app = web.Application()
    app.router.add_post("/{tail:.*}", vertex)
    server = await aiohttp_server(app)
    counter = tmp_path / "runs"
    script = ("import pathlib, sys; p = pathlib.Path(sys.argv[1]); "
              "n = int(p.read_text()) + 1 if p.exists() else 1; p.write_text(str(n)); "
              "print(f'ya29.token-{n}')")
    client = await proxy(provider_config(
        "vertex", str(server.make_url("")).rstrip("/"), project="p", location="us-east5",
        token_command=[sys.executable, "-c", script, str(counter)], token_refresh=3600))
    resp = await client.post("/v1/chat/completions", json={"model": "m", "messages": USER})
    assert resp.status == 401
    resp = await client.post("/v1/chat/completions", json={"model": "m", "stream": True,
                                                           "messages": USER})
    assert collect(sse_chunks(await resp.read())).done
    assert sent == ["Bearer ya29.token-1", "Bearer ya29.token-2"]
    assert counter.read_text() == "2"


async def test_vertex_express_mode_streams_with_the_api_key(proxy: Any, upstream: Any) -> None:
    upstream.body = gemini_sse([chunk([{"text": "ok"}], finish="STOP")])
    client = await proxy(provider_config("vertex", upstream.url, api_key="AIzaSy-express"))
    resp = await client.post("/v1/chat/completions", json={"model": "gemini-2.5-flash",
                                                           "stream": True, "messages": USER})
    assert collect(sse_chunks(await resp.read())).content == "ok"
    [sent] = upstream.requests
    assert sent.path == "/v1/publishers/google/models/gemini-2.5-flash" \
                        ":streamGenerateContent?alt=sse"
    assert headers(sent)["x-goog-api-key"] == "AIzaSy-express"
    assert "authorization" not in headers(sent)


async def test_vertex_token_command_failure_is_a_clear_error(proxy: Any, upstream: Any) -> None:
    config = provider_config("vertex", upstream.url, project="p", location="us-east5",
                             token_command=[sys.executable, "-c", "import sys; sys.exit(3)"])
    client = await proxy(config)
    resp = await client.post("/v1/chat/completions", json={"model": "m", "messages": USER})
    assert resp.status == 502
    err = (await resp.json())["error"]
    assert err["code"] == "upstream_credentials_unavailable"
    assert "exited with status 3" in err["message"]
    assert not upstream.requests


def test_a_hung_token_fetch_does_not_hold_up_the_shutdown() -> None:
    """The request gave up on the fetch (its deadline); the process must not wait for the
    fetch's thread when its loop ends, as asyncio.run waits for to_thread's executor: a SIGTERM
    took as long as the hung command (up to its 30 s timeout), whatever shutdown_grace said."""
    source = CommandToken([sys.executable, "-c", "import time; time.sleep(4)"], 300,
                          provider="v")

    async def request_that_gives_up() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(source.get(), 0.2)

    started = time.monotonic()
    asyncio.run(request_that_gives_up())
    assert time.monotonic() - started < 2


async def test_openai_sdk_thought_signature_round_trip(proxy: Any, upstream: Any) -> None:
    """The documented round trip: the client sends the assistant message back as it got it
    (here the SDK's own message object, whose `thinking_blocks` extra field rides along), and
    Gemini receives the signature on the function call it belongs to."""
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps(whole_answer())
    client = openai_sdk(await proxy(provider_config("gemini", upstream.url)))
    async with client:
        first = await client.chat.completions.create(model="gemini-3-flash-preview",
                                                     messages=USER)
        message = first.choices[0].message
        upstream.body = orjson.dumps(chunk([{"text": "Sir Pouch-a-lot"}], finish="STOP"))
        second = await client.chat.completions.create(model="gemini-3-flash-preview", messages=[
            *USER, message,
            {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": "Pouchy"}])
    assert second.choices[0].message.content == "Sir Pouch-a-lot"
    contents = upstream.requests[1].json()["contents"]
    assert contents[1] == {"role": "model", "parts": [{
        "functionCall": {"name": "pelican_name_generator", "args": {"type": "funny"},
                         "id": "c9bjmkfz"},
        "thoughtSignature": SIGNATURE}]}
    assert contents[2] == {"role": "user", "parts": [{"functionResponse": {
        "name": "pelican_name_generator", "response": {"output": "Pouchy"}, "id": "c9bjmkfz"}}]}



async def test_a_streamed_tool_loop_that_kept_no_signature_still_works(proxy: Any,
                                                                        upstream: Any) -> None:
    # A streaming client that collects content and tool calls only (no thinking_blocks), as
    # frameworks do: the second turn reaches Gemini 3 with the call marked to skip its
    # signature check, rather than being answered "missing a thought_signature" (400).
    upstream.body = gemini_sse(TOOL_ELEMENTS)
    client = openai_sdk(await proxy(provider_config("gemini", upstream.url)))
    async with client:
        stream = await client.chat.completions.create(
            model="gemini-3-flash-preview", messages=USER, stream=True)
        calls: dict[int, dict[str, Any]] = {}
        async for piece in stream:
            deltas = piece.choices[0].delta.tool_calls if piece.choices else None
            for delta in deltas or ():
                call = calls.setdefault(delta.index, {"id": delta.id, "type": "function",
                                                      "function": {"name": "",
                                                                   "arguments": ""}})
                call["function"]["name"] += delta.function.name or ""
                call["function"]["arguments"] += delta.function.arguments or ""
        upstream.content_type = "application/json"
        upstream.body = orjson.dumps(chunk([{"text": "Sir Pouch-a-lot"}], finish="STOP"))
        second = await client.chat.completions.create(model="gemini-3-flash-preview", messages=[
            *USER, {"role": "assistant", "content": None, "tool_calls": list(calls.values())},
            {"role": "tool", "tool_call_id": calls[0]["id"], "content": "Pouchy"}])
    assert second.choices[0].message.content == "Sir Pouch-a-lot"
    assert upstream.requests[1].json()["contents"][1] == {"role": "model", "parts": [{
        "functionCall": {"name": "pelican_name_generator", "args": {"type": "funny"},
                         "id": "c9bjmkfz"},
        "thoughtSignature": "skip_thought_signature_validator"}]}


async def test_user_text_after_tool_results_goes_in_a_content_of_its_own(proxy: Any,
                                                                          upstream: Any) -> None:
    # Vertex refuses a content mixing function responses and text ("Requests ending with a
    # model turn are not supported"); two user contents in a row it takes.
    upstream.body = gemini_sse([chunk([{"text": "ok"}], finish="STOP")])
    client = await proxy(provider_config("vertex", upstream.url, project="p", location="global"))
    resp = await client.post("/v1/chat/completions", json={
        "model": "gemini-2.5-flash", "stream": True, "tools": TOOLS, "messages": [
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": f"c{i}", "type": "function", "function": {
                    "name": "get_weather", "arguments": orjson.dumps({"city": city}).decode()}}
                for i, city in enumerate(("Paris", "Rome"))]},
            {"role": "tool", "tool_call_id": "c0", "content": "sunny"},
            {"role": "tool", "tool_call_id": "c1", "content": "rain"},
            {"role": "user", "content": "Answer in French."}]})
    assert collect(sse_chunks(await resp.read())).content == "ok"
    assert upstream.requests[0].json()["contents"][2:] == [
        {"role": "user", "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"output": "sunny"},
                                  "id": "c0"}},
            {"functionResponse": {"name": "get_weather", "response": {"output": "rain"},
                                  "id": "c1"}}]},
        {"role": "user", "parts": [{"text": "Answer in French."}]},
    ]

# -- the fast path for plain text chunks (providers/gemini/stream.py, "Speed") ----------------
# Gemini writes `": "` between a key and its value and a bare `,` between items; the translator
# recognises a plain one-text-part chunk by that exact text. `google_sse` frames elements as
# Gemini writes them (so they can take the fast path); `gemini_sse` (orjson's compact form)
# never does, so its translation is the reference every fast-path stream must equal, byte for
# byte.

def google_sse(elements: list[Any], *, ascii_only: bool = False) -> bytes:
    return b"".join(
        b"data: " + json.dumps(e, separators=(",", ": "), ensure_ascii=ascii_only).encode()
        + b"\r\n\r\n" for e in elements)


def text_chunk(text: str, candidates_tokens: int = 19) -> dict[str, Any]:
    """A plain text chunk in the recorded chunk's own envelope: its key order, its
    usageMetadata (with `candidatesTokenCount` set), modelVersion and responseId."""
    element = orjson.loads(orjson.dumps(TOOL_ELEMENTS[1]))
    candidate = element["candidates"][0]
    candidate["content"]["parts"] = [{"text": text}]
    del candidate["finishReason"]
    element["usageMetadata"]["candidatesTokenCount"] = candidates_tokens
    return element


FINISH = TOOL_ELEMENTS[1]  # the recorded finish chunk: `{"text": ""}` + STOP, with usage


def translate_counting(pieces: list[bytes]) -> tuple[bytes, int]:
    """`translate`, also counting the chunks that went through the full parse."""
    enc = ChunkEncoder(completion_id="chatcmpl-t", created=1, model="m", include_usage=True)
    tr = GeminiStreamTranslator(enc, 1 << 20)
    parsed = 0
    full_parse = tr.on_message

    def counting(msg: dict[str, Any], raw: bytes | None = None) -> None:
        nonlocal parsed
        parsed += 1
        full_parse(msg, raw)

    tr.on_message = counting  # type: ignore[method-assign]
    out = relay_pieces(enc, tr, pieces)
    return out, parsed


def test_the_fast_path_shape_is_the_recorded_key_order() -> None:
    # The recording (made without alt=sse) is pretty-printed; its key order, written with the
    # separators Gemini's alt=sse output uses, is the fast path's prefix up to `finishReason`.
    recorded = google_sse([FINISH])
    assert recorded.startswith(b'data: {"candidates": [{"content": {"parts": [{"text": ""}],'
                               b'"role": "model"},"finishReason": "STOP","index": 0}],'
                               b'"usageMetadata": {')
    assert google_sse([text_chunk("Hi")]).startswith(
        b'data: {"candidates": [{"content": {"parts": [{"text": "Hi"}],"role": "model"},'
        b'"index": 0}],"usageMetadata": {')


@pytest.mark.parametrize("name", GOLDEN)
def test_fixtures_in_geminis_own_separators(name: str) -> None:
    elements = TOOL_ELEMENTS if name == "tool-call" else BLOCK_ELEMENTS
    body = google_sse(elements)
    rng = random.Random(name)
    for pieces in ([body], *(random_splits(body, rng, max_piece=40) for _ in range(10))):
        check(GOLDEN[name], translate(pieces))


TRICKY_TEXTS = [
    "Hello", "", " world", 'say "hi"', "ends in a backslash \\", "\\", '"', "\\\"",
    '"}],"role": "model"},"index": 0}],"usageMetadata": {',
    '\\"}],"role": "model"},"index": 0}],"usageMetadata": {',
    "line\nbreak\ttab\r", "Zürich ✓ 😀", "<b>&amp;</b>='", "\u2028\u2029", "\x00\x1f",
]


@pytest.mark.parametrize("ascii_only", [False, True])
def test_fast_path_text_stream_equals_the_full_parse(ascii_only: bool) -> None:
    elements = [text_chunk(t, i) for i, t in enumerate(TRICKY_TEXTS)] + [FINISH]
    reference = translate([gemini_sse(elements)])
    c = collect(sse_chunks(reference))
    assert c.content == "".join(TRICKY_TEXTS) and c.finish_reason == "stop" and c.done
    assert c.usage["completion_tokens"] == 19 + 248  # the recorded finish chunk's snapshot
    body = google_sse(elements, ascii_only=ascii_only)
    rng = random.Random(int(ascii_only))
    for pieces in ([body], *(random_splits(body, rng, max_piece=60) for _ in range(10))):
        out, parsed = translate_counting(pieces)
        assert out == reference
        assert parsed == 2  # the first chunk (it starts the stream) and the finish chunk


def test_fast_path_decodes_googles_html_escapes() -> None:
    elements = [text_chunk("a"), text_chunk("<b> & 'c'="), FINISH]
    body = google_sse(elements).replace(b"<", b"\\u003c").replace(b">", b"\\u003e") \
        .replace(b"&", b"\\u0026").replace(b"'", b"\\u0027").replace(b"=", b"\\u003d")
    assert b"\\u003cb\\u003e \\u0026 \\u0027c\\u0027\\u003d" in body
    out, parsed = translate_counting([body])
    assert out == translate([gemini_sse(elements)]) and parsed == 2


def near_miss(change: str) -> dict[str, Any]:
    """A chunk that starts exactly like a plain text chunk but is not one."""
    element = text_chunk("x")
    candidate = element["candidates"][0]
    parts = candidate["content"]["parts"]
    if change == "thought":
        parts[0]["thought"] = True
    elif change == "thought-then-text":  # `_TEXT_END` follows the *second* part's text
        parts.insert(0, {"text": "pondering", "thought": True})
    elif change == "two-text-parts":
        parts.append({"text": "y"})
    elif change == "signature":
        parts[0]["thoughtSignature"] = "dGV4dA=="
    elif change == "finish":
        element["candidates"][0] = {"content": candidate["content"], "finishReason": "STOP",
                                    "index": 0}
    elif change == "max-tokens":
        element["candidates"][0] = {"content": candidate["content"],
                                    "finishReason": "MAX_TOKENS", "index": 0}
    elif change == "second-index":
        candidate["index"] = 1
    elif change == "safety-ratings":
        candidate["safetyRatings"] = [{"category": "HARM_CATEGORY_HATE_SPEECH",
                                       "probability": "NEGLIGIBLE"}]
    elif change == "two-candidates":
        element["candidates"].append({"content": {"parts": [{"text": "other"}],
                                                  "role": "model"}, "index": 1})
    elif change == "no-usage":
        del element["usageMetadata"]
    elif change == "error-after-candidates":
        del element["usageMetadata"]
        element["error"] = {"code": 503, "message": "The model is overloaded.",
                            "status": "UNAVAILABLE"}
    else:
        raise AssertionError(change)
    return element


NEAR_MISSES = ["thought", "thought-then-text", "two-text-parts", "signature", "finish",
               "max-tokens", "second-index", "safety-ratings", "two-candidates", "no-usage",
               "error-after-candidates"]


@pytest.mark.parametrize("change", NEAR_MISSES)
def test_near_misses_take_the_full_parse(change: str) -> None:
    elements = [text_chunk("a"), text_chunk("b"), near_miss(change), text_chunk("c"), FINISH]
    body = google_sse(elements)
    assert body.split(b"\r\n\r\n")[2].startswith(
        b'data: {"candidates": [{"content": {"parts": [{"text": "')
    reference = translate([gemini_sse(elements)])
    out, parsed = translate_counting([body])
    assert out == reference
    # Fully parsed: the first chunk, the near miss, the finish chunk; after a finish, every
    # chunk (here "c" too); after an error, nothing more.
    assert parsed == {"finish": 4, "max-tokens": 4, "error-after-candidates": 2}.get(change, 3)
    c = collect(sse_chunks(out))
    if change in ("thought", "thought-then-text"):
        assert c.reasoning.endswith(("x", "pondering"))
    if change == "signature":
        assert c.thinking_blocks == [{"type": "thought_signature", "signature": "dGV4dA=="}]
    if change in ("finish", "max-tokens"):  # the finish comes where it was sent
        assert c.content == "abx" and c.done
    if change == "error-after-candidates":
        assert c.error is not None and not c.done


def test_the_last_snapshot_may_be_an_unread_one() -> None:
    finish_without_usage = orjson.loads(orjson.dumps(FINISH))
    del finish_without_usage["usageMetadata"]
    elements = [text_chunk("a", 1), text_chunk("b", 7), text_chunk("c", 5), finish_without_usage]
    out, parsed = translate_counting([google_sse(elements)])
    assert out == translate([gemini_sse(elements)]) and parsed == 2
    c = collect(sse_chunks(out))
    assert c.content == "abc" and c.done
    assert c.usage["completion_tokens"] == 5 + 248  # the third chunk's, although it went down
    # A usage-only chunk after the finish replaces it, as any later snapshot does.
    late = {"usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 2,
                              "totalTokenCount": 6}}
    c = collect(sse_chunks(translate([google_sse([*elements, late])])))
    assert (c.usage["prompt_tokens"], c.usage["completion_tokens"]) == (4, 2)


def test_a_malformed_last_snapshot_is_an_error_not_a_clean_end() -> None:
    finish_without_usage = orjson.loads(orjson.dumps(FINISH))
    del finish_without_usage["usageMetadata"]
    body = google_sse([text_chunk("a"), text_chunk("b"), finish_without_usage])
    chunks = body.split(b"\r\n\r\n")
    chunks[1] = chunks[1].replace(b'"promptTokenCount": 28', b'"promptTokenCount": 2 8')
    chunks = sse_chunks(translate([b"\r\n\r\n".join(chunks)]))
    c = collect(chunks)
    assert c.content == "ab" and c.finish_reason == "stop"
    assert c.error is not None and c.error["code"] == "upstream_protocol_error"
    assert not c.done and "[DONE]" not in chunks


def test_a_replaced_snapshot_is_never_read() -> None:
    # By design: a plain text chunk's keys after its text are read only if its snapshot is the
    # last one, so damage there is not seen once a later snapshot replaced it.
    body = google_sse([text_chunk("a"), text_chunk("b"), FINISH])
    chunks = body.split(b"\r\n\r\n")
    chunks[1] = chunks[1].replace(b'"promptTokenCount": 28', b'"promptTokenCount": 2 8')
    c = collect(sse_chunks(translate([b"\r\n\r\n".join(chunks)])))
    assert c.content == "ab" and c.done and c.usage["total_tokens"] == 295


@pytest.mark.parametrize("literal", [b'"bad \\q escape"', b'"raw \x01 control"',
                                     b'"cut short'])
def test_an_invalid_text_literal_is_an_error(literal: bytes) -> None:
    body = google_sse([text_chunk("a"), text_chunk("PLACEHOLDER"), FINISH])
    body = body.replace(b'"PLACEHOLDER"', literal)
    c = collect(sse_chunks(translate_counting([body])[0]))
    assert c.content == "a"
    assert c.error is not None and c.error["code"] == "upstream_protocol_error"
    assert not c.done


@settings(max_examples=120, deadline=None)
@given(texts=st.lists(st.text(max_size=12), min_size=1, max_size=6), ascii_only=st.booleans(),
       cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=8))
def test_any_text_through_the_fast_path_equals_the_full_parse(
        texts: list[str], ascii_only: bool, cuts: list[int]) -> None:
    elements = [text_chunk(t, i) for i, t in enumerate(texts)] + [FINISH]
    body = google_sse(elements, ascii_only=ascii_only)
    bounds = [0, *sorted(min(cut, len(body)) for cut in cuts), len(body)]
    out, parsed = translate_counting([body[a:b] for a, b in itertools.pairwise(bounds)])
    assert out == translate([gemini_sse(elements)])
    assert parsed == 2


# -- runs of plain text chunks, spliced (providers/splice.py) ----------------------------------

def test_runs_of_plain_text_chunks_are_spliced(monkeypatch: pytest.MonkeyPatch) -> None:
    spliced = count_spliced_reads(monkeypatch)
    texts = ["Hi", " there", "you", "", 'a "q"', "b", "\x00", "é\n", "c"]
    elements = [text_chunk(t, i) for i, t in enumerate(texts)] + [FINISH]
    body = google_sse(elements)
    reference = translate([gemini_sse(elements)])
    out, parsed = translate_counting([body])
    assert out == reference and parsed == 2
    # The first chunk starts the stream; an empty text and a \u escape end a run.
    assert spliced == [2, 2, 2]
    spliced.clear()  # a chunk a read, as a paced stream comes: the per-chunk fast path
    out, parsed = translate_counting([p + b"\r\n\r\n" for p in body.split(b"\r\n\r\n")[:-1]])
    assert out == reference and parsed == 2 and spliced == []
    rng = random.Random(5)
    for cut in (random_splits(body, rng, max_piece=1500) for _ in range(20)):
        assert translate_counting(cut)[0] == reference


@pytest.mark.parametrize("before", [b"id: 7\r\n", b"data: 1\r\n", b": note\r\n"])
def test_a_run_that_does_not_start_an_event_is_decoded(before: bytes) -> None:
    elements = [text_chunk(t) for t in "abcdefgh"] + [FINISH]
    first, *rest = google_sse(elements).split(b"\r\n\r\n")[:-1]
    reads = [first + b"\r\n\r\n", before + b"\r\n\r\n".join(rest) + b"\r\n\r\n"]
    assert translate(reads) == translate(reads, encoder=DecodingEncoder)


def test_a_line_break_inside_a_chunk_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    # `\n: note` makes a second line (a comment) of the chunk's block: the decoder drops it,
    # so the snapshot it reads at the end is the first line alone.
    finish_without_usage = orjson.loads(orjson.dumps(FINISH))
    del finish_without_usage["usageMetadata"]
    chunks = google_sse([text_chunk(t, i) for i, t in enumerate("abcdef")]
                        + [finish_without_usage]).split(b"\r\n\r\n")
    chunks[5] += b"\n: note"
    body = b"\r\n\r\n".join(chunks)
    spliced = count_spliced_reads(monkeypatch)
    out = translate([body])
    assert spliced == []  # the run that holds it (b to f) is decoded whole
    assert out == translate([body], encoder=DecodingEncoder)
    c = collect(sse_chunks(out))
    assert c.content == "abcdef" and c.error is None and c.usage["completion_tokens"] == 5 + 248


# -- usage reported before a failure -----------------------------------------------------------

@pytest.mark.parametrize("how", ["spliced", "fast path", "full parse"])
def test_a_cut_stream_keeps_its_latest_usage_snapshot(how: str) -> None:
    """Every chunk carries a snapshot: a stream cut short still tells what it had cost
    (`usage_so_far`, read by the relay at the end), whichever path read the last one."""
    elements = [text_chunk(t, i) for i, t in enumerate("abcdef")]
    body = gemini_sse(elements) if how == "full parse" else google_sse(elements)
    reads = ([p + b"\r\n\r\n" for p in body.split(b"\r\n\r\n")[:-1]] if how == "fast path"
             else [body])
    enc = make_encoder()
    tr = GeminiStreamTranslator(enc, 1 << 20)
    c = collect(sse_chunks(relay_pieces(enc, tr, reads)))
    assert c.content == "abcdef" and c.error is not None and enc.usage_data is None
    # (the chunks keep the recorded totalTokenCount, 295, made for 19 candidate tokens)
    assert tr.usage_so_far() == {"prompt_tokens": 28, "completion_tokens": 5 + 248,
                                 "total_tokens": 28 + 5 + 248, "prompt_tokens_details": {
                                     "cached_tokens": 0},
                                 "completion_tokens_details": {"reasoning_tokens": 248}}


def test_no_usage_so_far_from_a_malformed_or_absent_snapshot() -> None:
    tr = GeminiStreamTranslator(make_encoder(), 1 << 20)
    assert tr.usage_so_far() is None
    body = google_sse([text_chunk("a"), text_chunk("b", 7)])
    tr.feed(body.replace(b'"candidatesTokenCount": 7', b'"candidatesTokenCount": "7"'))
    assert tr.usage_so_far() is None  # never raises: the relay reads it in its cleanup


@pytest.mark.parametrize("status", [400, 0])  # 0: the same object inside a 200
def test_a_refused_api_key_is_a_401(status: int) -> None:
    # Google answers a wrong, deleted or expired key with 400 INVALID_ARGUMENT, its ErrorInfo
    # reason API_KEY_INVALID: the openai SDK raised BadRequestError, not AuthenticationError.
    body = orjson.dumps({"error": {
        "code": 400, "message": "API key not valid. Please pass a valid API key.",
        "status": "INVALID_ARGUMENT", "details": [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
             "domain": "googleapis.com",
             "metadata": {"service": "generativelanguage.googleapis.com"}},
            {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US",
             "message": "API key not valid. Please pass a valid API key."}]}})
    err = google_error(status, body, "gemini")
    assert (err.status, err.error_type, err.code) == (401, "authentication_error",
                                                      "API_KEY_INVALID")
    assert err.message == "API key not valid. Please pass a valid API key."
    other = body.replace(b"API_KEY_INVALID", b"SERVICE_DISABLED")  # any other reason: as sent
    assert (google_error(status, other, "gemini").status,
            google_error(status, other, "gemini").code) == (400, "INVALID_ARGUMENT")


@pytest.mark.parametrize("separators", ["google", "compact"])
def test_a_failed_finish_without_usage_keeps_the_latest_snapshot(separators: str) -> None:
    # The failed finish chunk carried no usageMetadata: the snapshot of the chunk before it
    # (parsed, or left unread on the fast path) is the answer's count, as at a normal end. It
    # was lost: the sink got none, and the access log had a partial count for a final one.
    failed = {"candidates": [{"finishReason": "MALFORMED_FUNCTION_CALL", "index": 0}]}
    elements = [text_chunk("Let me", 3), text_chunk(" call it", 7), failed]
    body = google_sse(elements) if separators == "google" else gemini_sse(elements)
    enc = ChunkEncoder(completion_id="chatcmpl-t", created=1, model="m", include_usage=True)
    c = collect(sse_chunks(relay_pieces(enc, GeminiStreamTranslator(enc, 1 << 20), [body])))
    assert c.content == "Let me call it" and c.error is not None
    assert enc.usage_data is not None and enc.usage_data["completion_tokens"] == 7 + 248


@pytest.mark.parametrize("whole", ["array", "object"])
async def test_a_stream_request_answered_whole_is_streamed(whole: str, proxy: Any,
                                                           upstream: Any) -> None:
    # A server or relay that drops `alt=sse` answers streamGenerateContent with Google's JSON
    # array of the stream's chunks; one that ignores the stream, with the whole answer (both
    # pretty-printed, as Google writes JSON): the chunks the stream would have been, not a
    # 502 upstream_stream_truncated.
    answer = MULTI if whole == "array" else MULTI[-1] | {"candidates": [{
        "content": {"role": "model", "parts": [{"text": "Checking two cities."}]},
        "finishReason": "STOP"}]}
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps(answer, option=orjson.OPT_INDENT_2)
    client = await proxy(provider_config("gemini", upstream.url))
    resp = await client.post("/v1/chat/completions", json={
        "model": "m", "stream": True, "messages": USER,
        "stream_options": {"include_usage": True}})
    assert resp.status == 200
    chunks = sse_chunks(await resp.read())
    assert chunks[-1] == "[DONE]"
    c = collect(chunks[:-1])
    assert c.content == "Checking two cities." and c.error is None
    assert c.finish_reason == ("tool_calls" if whole == "array" else "stop")
    assert c.usage is not None and c.usage["total_tokens"] > 0


@pytest.mark.parametrize("stream", [True, False])
async def test_a_call_of_a_renamed_tool_an_allowed_tools_choice_kept_maps_back(
        stream: bool, proxy: Any, upstream: Any) -> None:
    # An allowed_tools choice goes to Gemini as the tools it allows: `1a` (which Gemini
    # refuses) as `_1a`, the other tool `_1a` left out. The model's call of `_1a` is the
    # client's `1a`, not its `_1a`, a tool it did not allow (the map back was worked out from
    # every tool the client sent, where `_1a` was taken).
    answer = chunk([{"functionCall": {"name": "_1a", "args": {}}}], finish="STOP")
    if stream:
        upstream.body = gemini_sse([answer])
    else:
        upstream.content_type, upstream.body = "application/json", orjson.dumps(answer)
    client = await proxy(provider_config("gemini", upstream.url))
    resp = await client.post("/v1/chat/completions", json={
        "model": "m", "stream": stream, "messages": USER,
        "tools": [{"type": "function", "function": {"name": name}} for name in ("1a", "_1a")],
        "tool_choice": {"type": "allowed_tools", "allowed_tools": {
            "mode": "required", "tools": [{"type": "function", "function": {"name": "1a"}}]}}})
    assert resp.status == 200
    sent = upstream.requests[0].json()
    assert [d["name"] for d in sent["tools"][0]["functionDeclarations"]] == ["_1a"]
    if stream:
        names = [call["name"] for call in collect(sse_chunks(await resp.read())).tool_calls]
    else:
        names = [call["function"]["name"]
                 for call in (await resp.json())["choices"][0]["message"]["tool_calls"]]
    assert names == ["1a"]
