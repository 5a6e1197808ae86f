"""Recorded Anthropic and OpenAI streams (tests/fixtures, from ../shared/fixtures) translate to
exactly the results listed in tests/fixtures/SOURCES.md — whole, split at random byte
boundaries, with LF and CRLF line endings; through the pure pipeline and through the proxy."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from streamproxy.errors import ProxyError
from streamproxy.openai_api.chunks import ChunkEncoder
from streamproxy.openai_api.request import parse_chat_request
from streamproxy.providers.anthropic.response import to_completion
from streamproxy.providers.anthropic.stream import AnthropicStreamTranslator
from streamproxy.providers.openai_compat import PassthroughTranslator
from tests.conftest import provider_config
from tests.helpers import (
    DecodingEncoder,
    assert_finish_last,
    collect,
    count_spliced_reads,
    fixture_bytes,
    jsonl_to_sse,
    random_splits,
    relay_pieces,
    sse_chunks,
)


@dataclass
class Golden:
    kind: str  # provider type
    body: bytes
    content: str
    finish: str
    usage: tuple[int, int, int]
    tools: list[tuple[str, str, Any]]  # (id, name, parsed args)
    reasoning_len: int = 0


GOLDEN = {
    "anthropic-tool-use": Golden(
        "anthropic", fixture_bytes("anthropic/sdk-python_tool_use_response.sse"),
        "I'll check the current weather in Paris for you.", "tool_calls", (377, 65, 442),
        [("toolu_01NRLabsLyVHZPKxbKvkfSMn", "get_weather", {"location": "Paris"})]),
    "anthropic-thinking": Golden(
        "anthropic", fixture_bytes("anthropic/llm-anthropic_test_thinking_prompt.response0.sse"),
        "Scoop and Beaky", "stop", (45, 94, 139), [], reasoning_len=310),
    "anthropic-text": Golden(
        "anthropic", jsonl_to_sse(fixture_bytes("anthropic/vercel-ai_anthropic-text.chunks.jsonl")),
        "Hello! I'm doing well, thank you for asking. How are you doing today? Is there anything "
        "I can help you with?", "stop", (12, 30, 42), []),
    "openai-tool": Golden(
        "openai", fixture_bytes("openai/pydantic-ai_run_stream_sync.response0.sse"),
        "", "tool_calls", (53, 15, 68),
        [("call_ZR5UUuTt3pf61kjwAJIYdVMj", "get_capital", {"country": "UK"})]),
    "openai-text": Golden(
        "openai", fixture_bytes("openai/pydantic-ai_run_stream_sync.response1.sse"),
        "The capital of the UK is London.", "stop", (78, 9, 87), []),
}


def check(golden: Golden, out: bytes) -> None:
    chunks = sse_chunks(out)
    assert_finish_last(chunks)
    c = collect(chunks)
    assert c.error is None
    assert c.done
    assert len(c.ids) == 1 and len(c.created) == 1
    assert c.roles == 1
    assert c.content == golden.content
    assert c.finish_reason == golden.finish
    assert c.usage is not None
    assert (c.usage["prompt_tokens"], c.usage["completion_tokens"],
            c.usage["total_tokens"]) == golden.usage
    assert [(t["id"], t["name"]) for t in c.tool_calls] == [(i, n) for i, n, _ in golden.tools]
    assert [c.args(i) for i in range(len(c.tool_calls))] == [a for _, _, a in golden.tools]
    assert len(c.reasoning) == golden.reasoning_len


def translate(golden: Golden, pieces: list[bytes]) -> bytes:
    enc = ChunkEncoder(completion_id="chatcmpl-t", created=1, model="m",
                       include_usage=golden.kind == "anthropic")
    if golden.kind == "anthropic":
        tr = AnthropicStreamTranslator(enc, 1 << 20)
    else:
        tr = PassthroughTranslator(enc, 1 << 20, provider="p", client_wants_usage=True)
    out = b""
    for piece in pieces:
        tr.feed(piece)
        out += enc.take()
    tr.close()
    return out + enc.take()


@pytest.mark.parametrize("name", GOLDEN)
@pytest.mark.parametrize("eol", ["lf", "crlf"])
def test_pure_pipeline_whole_and_random_splits(name: str, eol: str) -> None:
    golden = GOLDEN[name]
    body = golden.body if eol == "lf" else golden.body.replace(b"\n", b"\r\n")
    check(golden, translate(golden, [body]))
    rng = random.Random(name + eol)
    for _ in range(25):
        check(golden, translate(golden, random_splits(body, rng, max_piece=rng.choice([3, 50]))))


def event_reads(body: bytes, per_read: int) -> list[bytes]:
    """The body as a provider that flushes every event sends it, `per_read` events a read (a
    loaded proxy reads several at once)."""
    sep = b"\r\n\r\n" if b"\r\n" in body else b"\n\n"
    events = [e + sep for e in body.split(sep) if e]
    return [b"".join(events[i:i + per_read]) for i in range(0, len(events), per_read)]


@pytest.mark.parametrize("name", GOLDEN)
@pytest.mark.parametrize("per_read", [1, 3])
def test_pure_pipeline_whole_events_per_read(name: str, per_read: int,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # Reads of whole events are where Anthropic text deltas are spliced, not decoded: the
    # recorded streams (compact, and padded before the last brace) must take that path.
    spliced = count_spliced_reads(monkeypatch)
    golden = GOLDEN[name]
    check(golden, translate(golden, event_reads(golden.body, per_read)))
    if per_read == 1 or name == "anthropic-text":  # the others' few deltas share reads
        assert bool(spliced) == (golden.kind == "anthropic")


def test_thinking_signature_survives_for_the_next_turn() -> None:
    golden = GOLDEN["anthropic-thinking"]
    c = collect(sse_chunks(translate(golden, [golden.body])))
    [block] = c.thinking_blocks
    assert block["type"] == "thinking" and len(block["signature"]) == 312
    assert block["thinking"] == c.reasoning  # the signed text, complete


@pytest.mark.parametrize("name", GOLDEN)
@pytest.mark.parametrize("eol", ["lf", "crlf"])
async def test_through_the_proxy_at_random_splits(name: str, eol: str, proxy: Any,
                                                  upstream: Any) -> None:
    golden = GOLDEN[name]
    body = golden.body if eol == "lf" else golden.body.replace(b"\n", b"\r\n")
    upstream.pieces = random_splits(body, random.Random(name), max_piece=40)
    client = await proxy(provider_config(golden.kind, upstream.url))
    resp = await client.post("/v1/chat/completions", json={
        "model": "m", "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.headers["cache-control"] == "no-cache"
    assert resp.headers["x-accel-buffering"] == "no"
    assert "content-encoding" not in resp.headers
    check(golden, await resp.read())


async def test_passthrough_forwards_event_bytes_unchanged(proxy: Any, upstream: Any) -> None:
    golden = GOLDEN["openai-text"]
    upstream.body = golden.body
    client = await proxy(provider_config("openai", upstream.url))
    resp = await client.post("/v1/chat/completions", json={
        "model": "m", "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "hi"}]})
    assert await resp.read() == golden.body


async def test_passthrough_hides_the_usage_chunk_the_client_did_not_ask_for(
        proxy: Any, upstream: Any) -> None:
    upstream.body = GOLDEN["openai-text"].body
    client = await proxy(provider_config("openai", upstream.url))
    resp = await client.post("/v1/chat/completions", json={
        "model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    c = collect(sse_chunks(await resp.read()))
    assert c.usage is None and c.done and c.content == GOLDEN["openai-text"].content
    sent = upstream.requests[0].json()
    assert sent["stream_options"] == {"include_usage": True}  # asked upstream for the counts


def test_passthrough_sends_the_client_only_data_lines() -> None:
    # An `id:` the client's decoder keeps would make every later blank line an event with empty
    # data, which openai-python json-parses and fails on (provider-streams.md §1.1).
    body = (b"id: 1\nevent: message\n" + _chunk_event("Hi") + b"retry: 5\n\n\n\nid: 2\n"
            + _chunk_event("!") + b"data: [DONE]\n\n")
    out = _passthrough(body, wants_usage=False)  # (else our usage chunk of zeros ends it)
    assert out == _chunk_event("Hi") + _chunk_event("!") + b"data: [DONE]\n\n"

def _passthrough(body: bytes, tools_offered: bool = False, wants_usage: bool = True) -> bytes:
    """What the client gets from a pass-through stream, a failure after commit included."""
    # (as the executor builds it: the translator forwards the usage, the encoder adds none)
    enc = ChunkEncoder(completion_id="chatcmpl-t", created=1, model="m", include_usage=False)
    tr = PassthroughTranslator(enc, 1 << 20, provider="p", client_wants_usage=wants_usage,
                               tools_offered=tools_offered)
    try:
        tr.feed(body)
        tr.close()
    except ProxyError as e:  # what the relay does with a failure after commit
        enc.error(e)
    return enc.take()


def test_an_event_of_several_data_lines_reaches_the_client_as_one_line() -> None:
    # The decoder joins the lines with LF; framed as they came, the client would read the
    # second line as a field of its own and get cut JSON.
    body = (b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",\n'
            b'data: "choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\n'
            b'data: [DONE]\n\n')
    c = collect(sse_chunks(_passthrough(body)))
    assert c.content == "Hi" and c.done and c.error is None


def test_an_event_cut_by_the_end_of_the_stream_is_never_forwarded() -> None:
    cut = (b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",'
           b'"choices":[{"index":0,"delta":{"content":"Hi"}')  # ends with "}" by chance
    out = _passthrough(_chunk_event("He") + cut)
    c = collect(sse_chunks(out))  # (collect parses every frame: a cut one would raise)
    assert c.content == "He" and c.error is not None and not c.done
    # `data: [DONE]` without its blank line is still the normal end
    c = collect(sse_chunks(_passthrough(_chunk_event("He") + b"data: [DONE]")))
    assert c.content == "He" and c.done and c.error is None


@pytest.mark.parametrize("empty", [b"data: \n\n", b"data:\n\n", b"data:  \n\n",
                                   b"data: \r\n\r\n", b"data:\ndata: \n\n"])
def test_an_empty_data_event_is_skipped_not_a_failure(empty: bytes) -> None:
    """Some relays keep a stream alive with empty `data:` events (WHATWG dispatches them,
    with empty data): each failed the stream as "not valid JSON", a good answer cut. Passed
    on, the openai SDK would fail on it too (`json.loads("")`). Fast path and decoder."""
    clean = (_chunk_event("He") + _chunk_event("llo") + _finish_event("stop") + _USAGE_EVENT
             + b"data: [DONE]\n\n")
    body = (empty + _chunk_event("He") + empty + _chunk_event("llo") + empty
            + _finish_event("stop") + empty + _USAGE_EVENT + empty + b"data: [DONE]\n\n")
    rng = random.Random(5)
    for cls in (ChunkEncoder, DecodingEncoder):
        for pieces in [[body], *(random_splits(body, rng, max_piece=60) for _ in range(10))]:
            # (a pass-through's encoder adds no usage chunk: the translator forwards it)
            enc = cls(completion_id="chatcmpl-t", created=1, model="m", include_usage=False)
            tr = PassthroughTranslator(enc, 1 << 20, provider="p", client_wants_usage=True)
            assert relay_pieces(enc, tr, pieces) == clean
    # one at the end of a stream that closes without [DONE] once its answer is whole
    tail = _chunk_event("He") + _finish_event("stop")
    c = collect(sse_chunks(_passthrough(tail + empty.rstrip(b"\r\n"))))
    assert c.content == "He" and c.done and c.error is None


def _tool_event(*calls: dict[str, Any], finish: str | None = None) -> bytes:
    return b"data: " + orjson.dumps({
        "id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": list(calls)},
                     "finish_reason": finish}]}) + b"\n\n"


# Gemini's OpenAI-compatible endpoint: tool calls without `index`, two in one chunk, each
# whole; then an older server's split call: id and name first, arguments in id-less deltas.
INDEXLESS_TOOL_CALLS = (
    _tool_event({"id": "call_a", "type": "function",
                 "function": {"name": "weather", "arguments": '{"city":"Paris"}'}},
                {"function": {"name": "time", "arguments": "{}"}, "id": "call_b",
                 "type": "function"})
    + _tool_event({"id": "call_c", "type": "function",
                   "function": {"name": "news", "arguments": ""}})
    + _tool_event({"function": {"arguments": '{"topic"'}})
    + _tool_event({"function": {"arguments": ':"rain"}'}}, finish="stop")
    + b"data: [DONE]\n\n")


def test_tool_calls_without_index_are_numbered_as_openai_numbers_them() -> None:
    rng = random.Random(7)
    for pieces in [[INDEXLESS_TOOL_CALLS],
                   *(random_splits(INDEXLESS_TOOL_CALLS, rng, max_piece=40) for _ in range(20))]:
        enc = ChunkEncoder(completion_id="chatcmpl-t", created=1, model="m", include_usage=True)
        tr = PassthroughTranslator(enc, 1 << 20, provider="p", client_wants_usage=True,
                                   tools_offered=True)
        c = collect(sse_chunks(relay_pieces(enc, tr, pieces)))  # (asserts the indexes' order)
        assert [(t["id"], t["name"], t["arguments"]) for t in c.tool_calls] == [
            ("call_a", "weather", '{"city":"Paris"}'), ("call_b", "time", "{}"),
            ("call_c", "news", '{"topic":"rain"}')]
        assert c.finish_reason == "tool_calls"  # Gemini ends its streamed tool calls with "stop"
        assert c.done and c.error is None


def test_tool_calls_with_index_are_forwarded_as_they_came() -> None:
    # (vLLM writes `id` before `index`: parsed for a look, forwarded unchanged)
    body = (_tool_event({"id": "call_a", "type": "function", "index": 0,
                         "function": {"name": "weather", "arguments": ""}})
            + _tool_event({"index": 0, "function": {"arguments": "{}"}}, finish="tool_calls")
            + _USAGE_EVENT + b"data: [DONE]\n\n")
    assert _passthrough(body, tools_offered=True) == body


def _finish_event(reason: str, index: int = 0) -> bytes:
    return b"data: " + orjson.dumps({
        "id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": index, "delta": {}, "finish_reason": reason}]}) + b"\n\n"


_USAGE_EVENT = (b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",'
                b'"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,'
                b'"total_tokens":5}}\n\n')


def test_a_stream_that_closes_after_its_finish_without_done_ends_normally() -> None:
    # Some OpenAI-compatible servers close right after the finish (and usage) chunk.
    for tail in (_USAGE_EVENT, b""):
        c = collect(sse_chunks(_passthrough(_chunk_event("He") + _finish_event("stop") + tail)))
        assert c.content == "He" and c.finish_reason == "stop"
        assert c.done and c.error is None
    c = collect(sse_chunks(_passthrough(_chunk_event("He") + _finish_event("stop")
                                        + _USAGE_EVENT)))
    assert c.usage is not None and c.usage["total_tokens"] == 5
    # before any finish reason, the same end is a truncation
    c = collect(sse_chunks(_passthrough(_chunk_event("He") + _USAGE_EVENT)))
    assert c.error is not None and c.error["code"] == "upstream_stream_truncated"
    assert not c.done


def test_an_unwrapped_error_object_mid_stream_ends_the_stream_with_that_error() -> None:
    """vLLM-style servers write a mid-stream failure as the error object itself (`object:
    "error"`, not under an `error` key), then `[DONE]` (block/goose's "vllm error format"
    test). It was dropped as an empty-choices chunk: the client got `[DONE]` after a cut
    answer, as if it were whole."""
    failure = (b'data: {"object":"error","message":"CUDA out of memory",'
               b'"type":"InternalServerError","param":null,"code":500}\n\n')
    c = collect(sse_chunks(_passthrough(_chunk_event("He") + failure + b"data: [DONE]\n\n")))
    assert c.content == "He" and not c.done
    assert c.error is not None and c.error["message"] == "CUDA out of memory"
    assert c.error["type"] == "InternalServerError"


def _two_choices(body: bytes) -> tuple[Any, str | None]:
    """A pass-through stream of `n: 2`: its last frame and the answer's finish reason
    (`collect` reads one choice only)."""
    enc = ChunkEncoder(completion_id="chatcmpl-t", created=1, model="m", include_usage=False)
    tr = PassthroughTranslator(enc, 1 << 20, provider="p", client_wants_usage=False, choices=2)
    try:
        tr.feed(body)
        tr.close()
    except ProxyError as e:
        enc.error(e)
    return sse_chunks(enc.take())[-1], enc.finish_reason


def test_a_finish_whose_choice_index_is_garbled_counts_as_choice_0() -> None:
    # (an unhashable index raised a TypeError out of the translator)
    finish = (b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",'
              b'"choices":[{"index":[1],"delta":{},"finish_reason":"stop"}]}\n\n')
    frames = sse_chunks(_passthrough(_chunk_event("He") + finish))
    assert frames[-1] == "[DONE]" and not any("error" in f for f in frames[:-1])


def test_with_n_choices_the_stream_is_complete_only_once_each_has_finished() -> None:
    def last_frame(body: bytes) -> Any:
        return _two_choices(body)[0]

    one = _chunk_event("He") + _finish_event("stop", 0)
    assert last_frame(one)["error"]["code"] == "upstream_stream_truncated"
    assert last_frame(one + _finish_event("stop", 0))["error"]["code"] == (
        "upstream_stream_truncated")  # (a finish repeated is still one choice's)
    assert last_frame(one + _finish_event("length", 1)) == "[DONE]"


def test_one_chunk_may_finish_several_choices_and_the_answers_reason_is_choice_0s() -> None:
    """Only a chunk's first choice was looked at: a server that finishes both choices in one
    chunk and closes without [DONE] ended in a truncation error; and the access log's
    finish_reason was the last choice to finish, where a non-streamed answer's is choice 0's."""
    both = b"data: " + orjson.dumps({
        "id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "length"},
                    {"index": 1, "delta": {}, "finish_reason": "stop"}]}) + b"\n\n"
    assert _two_choices(_chunk_event("He") + both) == ("[DONE]", "length")
    one_by_one = _chunk_event("He") + _finish_event("length", 0) + _finish_event("stop", 1)
    assert _two_choices(one_by_one + b"data: [DONE]\n\n") == ("[DONE]", "length")


def _chunk_event(text: str) -> bytes:
    return b"data: " + orjson.dumps({
        "id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}) + b"\n\n"


def _anthropic_usage_after(delta_input: int | None, cache: int | None) -> dict[str, Any]:
    """The usage a client reads after message_start (10 input, 1000 cache reads, 50 cache
    writes) and a message_delta with these input-side counts and 7 output tokens."""
    start = {"type": "message_start", "message": {"id": "m", "model": "c", "usage": {
        "input_tokens": 10, "cache_read_input_tokens": 1000,
        "cache_creation_input_tokens": 50, "output_tokens": 1}}}
    delta = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {
        "input_tokens": delta_input, "cache_read_input_tokens": cache,
        "cache_creation_input_tokens": cache, "output_tokens": 7}}
    body = b"".join(b"event: %b\ndata: %b\n\n" % (e["type"].encode(), orjson.dumps(e))
                    for e in (start, delta, {"type": "message_stop"}))
    enc = ChunkEncoder(completion_id="chatcmpl-t", created=1, model="m", include_usage=True)
    tr = AnthropicStreamTranslator(enc, 1 << 20)
    tr.feed(body)
    tr.close()
    usage = collect(sse_chunks(enc.take())).usage
    assert usage is not None
    return usage


def test_anthropic_usage_left_null_by_message_delta_keeps_message_start_values() -> None:
    usage = _anthropic_usage_after(None, None)
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (1060, 7)
    assert usage["prompt_tokens_details"] == {"cached_tokens": 1000, "cache_write_tokens": 50}


def test_anthropic_usage_zeroed_by_message_delta_keeps_message_start_values() -> None:
    # Anthropic-compatible servers (SGLang's /v1/messages; envoyproxy/ai-gateway#1631 met it
    # too) send `input_tokens: 0` in message_delta, meaning "none here", where Anthropic
    # repeats the cumulative count. Taken as the count, the client's prompt_tokens was 0.
    usage = _anthropic_usage_after(0, 0)
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (1060, 7)
    assert usage["prompt_tokens_details"] == {"cached_tokens": 1000, "cache_write_tokens": 50}
    # (a count that did grow, as a server tool's search adds input, still overwrites)
    assert _anthropic_usage_after(30, 0)["prompt_tokens"] == 1080


def test_anthropic_usage_so_far_is_message_start_and_deltas_before_a_cut() -> None:
    start = {"type": "message_start", "message": {"id": "m", "model": "c", "usage": {
        "input_tokens": 10, "cache_read_input_tokens": 1000, "output_tokens": 1}}}
    delta = {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 7}}
    event = b"event: %b\ndata: %b\n\n"
    enc = ChunkEncoder(completion_id="chatcmpl-t", created=1, model="m", include_usage=True)
    tr = AnthropicStreamTranslator(enc, 1 << 20)
    assert tr.usage_so_far() is None
    tr.feed(event % (b"message_start", orjson.dumps(start)))
    assert tr.usage_so_far() == {"prompt_tokens": 1010, "completion_tokens": 1,
                                 "total_tokens": 1011,
                                 "prompt_tokens_details": {"cached_tokens": 1000},
                                 "cache_read_input_tokens": 1000,
                                 "cache_creation_input_tokens": 0}
    tr.feed(event % (b"message_delta", orjson.dumps(delta)))
    assert tr.usage_so_far()["completion_tokens"] == 7  # type: ignore[index]
    assert enc.usage_data is None  # nothing handed on: message_stop never came
    tr.feed(event % (b"message_delta", b'{"type": "message_delta", "delta": {}, '
                                       b'"usage": {"output_tokens": "8"}}'))
    assert tr.usage_so_far() is None  # an odd count: none, and no exception at the end


def test_request_parse_keeps_raw_bytes() -> None:
    raw = b'{"model":"m","messages":[{"role":"user","content":"x"}]}'
    assert parse_chat_request(raw).raw is raw


# -- Anthropic events the recordings do not hold (provider-streams.md §3.3, §3.4) ---------------

START = {"type": "message_start", "message": {"id": "m", "model": "c", "usage": {
    "input_tokens": 5, "output_tokens": 1}}}


def anthropic_chunks(*events: dict[str, Any]) -> list[Any]:
    """The chunks a client gets for these events, between message_start and message_stop."""
    body = b"".join(b"event: %b\ndata: %b\n\n" % (e["type"].encode(), orjson.dumps(e))
                    for e in (START, *events, {"type": "message_stop"}))
    enc = ChunkEncoder(completion_id="chatcmpl-t", created=1, model="m", include_usage=True)
    tr = AnthropicStreamTranslator(enc, 1 << 20)
    tr.feed(body)
    tr.close()
    chunks = sse_chunks(enc.take())
    assert_finish_last(chunks)
    return chunks


def anthropic(*events: dict[str, Any]) -> Any:
    """The client's view of a stream of these events, between message_start and message_stop."""
    return collect(anthropic_chunks(*events))


def stop(reason: str | None) -> dict[str, Any]:
    return {"type": "message_delta", "delta": {"stop_reason": reason}, "usage": {
        "output_tokens": 3}}


def block(index: int, content_block: dict[str, Any], *deltas: dict[str, Any]
          ) -> list[dict[str, Any]]:
    return [{"type": "content_block_start", "index": index, "content_block": content_block},
            *({"type": "content_block_delta", "index": index, "delta": d} for d in deltas),
            {"type": "content_block_stop", "index": index}]


TOOL_BLOCK = block(1, {"type": "tool_use", "id": "t1", "name": "now", "input": {}},
                   {"type": "input_json_delta", "partial_json": ""})


@pytest.mark.parametrize(("reason", "finish"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("pause_turn", "stop"),
    ("max_tokens", "length"), ("model_context_window_exceeded", "length"),
    ("tool_use", "stop"), ("refusal", "content_filter"), ("a_new_reason", "stop"),
])
def test_anthropic_stop_reasons(reason: str, finish: str) -> None:
    # (no block in these answers: a `tool_use` without a call is a stop, see below)
    c = anthropic(stop(reason))
    assert c.finish_reason == finish and c.done


def test_anthropic_tool_use_is_tool_calls_only_with_a_call() -> None:
    # Claude may end a text-only answer with `tool_use` (anthropics/claude-code#40240): OpenAI
    # never says tool_calls without calls, and a client that runs `message.tool_calls` on that
    # finish (OpenAI's own examples) failed on its null. Streamed and not.
    text = block(0, {"type": "text", "text": ""}, {"type": "text_delta", "text": "Let me look."})
    assert anthropic(*text, stop("tool_use")).finish_reason == "stop"
    assert anthropic(*text, *TOOL_BLOCK, stop("tool_use")).finish_reason == "tool_calls"
    for blocks, finish in (([{"type": "text", "text": "Let me look."}], "stop"),
                           ([{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
                            "tool_calls")):
        whole = to_completion(orjson.dumps({"content": blocks, "stop_reason": "tool_use"}),
                              completion_id="c", created=1, model="m")
        assert whole["choices"][0]["finish_reason"] == finish


def test_anthropic_end_without_a_stop_reason_still_finishes_once() -> None:
    # An Anthropic-compatible upstream may leave stop_reason null (or send no message_delta):
    # the stream ended normally, so the client still gets its one finish chunk.
    assert anthropic(stop(None)).finish_reason == "stop"
    assert anthropic().finish_reason == "stop"
    assert anthropic(*TOOL_BLOCK, stop(None)).finish_reason == "tool_calls"
    assert anthropic(stop("end_turn"), stop("max_tokens")).finish_reason == "stop"


def test_anthropic_blocks_and_deltas_with_no_openai_slot() -> None:
    c = anthropic(
        *block(0, {"type": "redacted_thinking", "data": "OPAQUE"}),
        # a server tool: its input is not a call for the client, nor is its result block
        *block(1, {"type": "server_tool_use", "id": "srv", "name": "web_search", "input": {}},
               {"type": "input_json_delta", "partial_json": '{"query": "x"}'}),
        *block(2, {"type": "web_search_tool_result", "tool_use_id": "srv", "content": []}),
        *block(3, {"type": "text", "text": ""},
               {"type": "citations_delta", "citation": {"type": "web_search_result_location"}},
               {"type": "text_delta", "text": "Now."}),
        # a call with no arguments: only an empty fragment, so "{}" for the client
        *block(4, {"type": "tool_use", "id": "t1", "name": "now", "input": {}},
               {"type": "input_json_delta", "partial_json": ""}),
        stop("tool_use"))
    assert c.thinking_blocks == [{"type": "redacted_thinking", "data": "OPAQUE"}]
    assert c.content == "Now."
    assert c.tool_calls == [{"id": "t1", "name": "now", "arguments": "{}"}]  # index 0
    assert c.finish_reason == "tool_calls" and c.done


def test_anthropic_thinking_left_out_is_no_reasoning_streamed_or_not() -> None:
    # Claude's thinking with `display: "omitted"` (Opus 4.7's default) comes as a thinking
    # block with empty text and its signature. The stream gave no reasoning_content, the
    # whole answer `reasoning_content: ""`: a client showed an empty reasoning either way.
    omitted = {"type": "thinking", "thinking": "", "signature": "SIG"}
    events = (*block(0, {"type": "thinking", "thinking": "", "signature": ""},
                     {"type": "signature_delta", "signature": "SIG"}),
              *block(1, {"type": "text", "text": ""}, {"type": "text_delta", "text": "Hi."}),
              stop("end_turn"))
    chunks = anthropic_chunks(*events)
    assert not any("reasoning_content" in c["choices"][0]["delta"]
                   for c in chunks if c != "[DONE]" and c["choices"])
    assert collect(chunks).thinking_blocks == [omitted]
    msg = to_completion(orjson.dumps({"content": [omitted, {"type": "text", "text": "Hi."}],
                                      "stop_reason": "end_turn"}),
                        completion_id="c", created=1, model="m")["choices"][0]["message"]
    assert "reasoning_content" not in msg
    assert msg["thinking_blocks"] == [omitted] and msg["content"] == "Hi."


def test_anthropic_unsigned_thinking_is_reasoning_without_a_block_streamed_or_not() -> None:
    # An Anthropic-compatible server's thinking has no signature (SGLang's /v1/messages, for
    # an open model: no signature field, or ""). The stream gave its text as reasoning and no
    # thinking block (there is nothing to replay: a request leaves unsigned blocks out); the
    # whole answer added a block with a `signature: ""` the upstream never sent.
    events = (*block(0, {"type": "thinking", "thinking": ""},
                     {"type": "thinking_delta", "thinking": "Hm."}),
              *block(1, {"type": "text", "text": ""}, {"type": "text_delta", "text": "Hi."}),
              stop("end_turn"))
    streamed = anthropic(*events)
    assert (streamed.reasoning, streamed.thinking_blocks) == ("Hm.", [])
    for unsigned in ({"type": "thinking", "thinking": "Hm."},
                     {"type": "thinking", "thinking": "Hm.", "signature": ""}):
        msg = to_completion(orjson.dumps({"content": [unsigned, {"type": "text", "text": "Hi."}],
                                          "stop_reason": "end_turn"}),
                            completion_id="c", created=1, model="m")["choices"][0]["message"]
        assert msg["reasoning_content"] == "Hm." and "thinking_blocks" not in msg


def test_anthropic_signature_sent_whole_at_its_start_is_kept_streamed_or_not() -> None:
    # An Anthropic-compatible server may send a thinking block whole in its
    # content_block_start, signature included, with no signature_delta: the stream lost the
    # signature (no thinking block to send back), where the whole answer kept it.
    signed = {"type": "thinking", "thinking": "hm.", "signature": "SIG"}
    c = anthropic(*block(0, signed),
                  *block(1, {"type": "text", "text": ""}, {"type": "text_delta", "text": "Hi."}),
                  stop("end_turn"))
    assert c.error is None and c.reasoning == "hm." and c.thinking_blocks == [signed]
    # Its text may still come as deltas: the signature covers all of it, and comes once.
    c = anthropic(*block(0, {"type": "thinking", "thinking": "", "signature": "SIG"},
                         {"type": "thinking_delta", "thinking": "hm."}), stop("end_turn"))
    assert c.reasoning == "hm." and c.thinking_blocks == [signed]
    c = anthropic(*block(0, {"type": "thinking", "thinking": "", "signature": "OLD"},
                         {"type": "thinking_delta", "thinking": "hm."},
                         {"type": "signature_delta", "signature": "SIG"}), stop("end_turn"))
    assert c.thinking_blocks == [signed]
    msg = to_completion(orjson.dumps({"content": [signed], "stop_reason": "end_turn"}),
                        completion_id="c", created=1, model="m")["choices"][0]["message"]
    assert msg["thinking_blocks"] == [signed] and msg["reasoning_content"] == "hm."


@pytest.mark.parametrize("redacted", [{"type": "redacted_thinking"},
                                      {"type": "redacted_thinking", "data": ""}])
def test_anthropic_redacted_thinking_without_data_is_left_out_streamed_or_not(
        redacted: dict[str, Any]) -> None:
    # An Anthropic-compatible server's redacted_thinking with no data: the stream failed as
    # malformed (a 502, or an error frame mid-answer), the whole answer kept a block with
    # data "" that a replay leaves out (nothing to send back). Both now leave it out.
    c = anthropic(*block(0, redacted),
                  *block(1, {"type": "text", "text": ""}, {"type": "text_delta", "text": "Hi."}),
                  stop("end_turn"))
    assert c.error is None and c.content == "Hi." and c.thinking_blocks == []
    msg = to_completion(orjson.dumps({"content": [redacted, {"type": "text", "text": "Hi."}],
                                      "stop_reason": "end_turn"}),
                        completion_id="c", created=1, model="m")["choices"][0]["message"]
    assert "thinking_blocks" not in msg and msg["content"] == "Hi."


def refused(details: Any, *blocks: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the openai SDK's stream helper's message and finish, the whole answer's choice) for a
    Claude answer of `blocks` that ends with stop_reason refusal and `details`."""
    events: list[dict[str, Any]] = []
    for index, b in enumerate(blocks):
        events += block(index, {"type": "text", "text": ""},
                        {"type": "text_delta", "text": b["text"]})
    end = {"type": "message_delta", "delta": {"stop_reason": "refusal", "stop_sequence": None,
                                              "stop_details": details},
           "usage": {"output_tokens": 3}}
    chunks = anthropic_chunks(*events, end)
    state = ChatCompletionStreamState()
    for chunk in chunks:
        if chunk != "[DONE]":
            state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    [streamed] = state.current_completion_snapshot.choices
    whole = to_completion(orjson.dumps({"content": list(blocks), "stop_reason": "refusal",
                                        "stop_details": details}),
                          completion_id="c", created=1, model="m")["choices"][0]
    return ({"content": streamed.message.content, "refusal": streamed.message.refusal,
             "finish": streamed.finish_reason},
            {"content": whole["message"]["content"], "refusal": whole["message"]["refusal"],
             "finish": whole["finish_reason"]})


def test_anthropic_refusal_explanation_is_the_answer_s_refusal_streamed_or_not() -> None:
    # Claude's refusal stop says why in `stop_details.explanation` (the whole message's, the
    # stream's message_delta's): OpenAI's place for a refusal's words is message.refusal /
    # delta.refusal. The client got finish_reason content_filter and no word of why.
    why = "This request was declined under the cyber policy."
    details = {"type": "refusal", "category": "cyber", "explanation": why}
    streamed, whole = refused(details, {"type": "text", "text": "Hello.."})
    assert streamed == whole == {"content": "Hello..", "refusal": why,
                                 "finish": "content_filter"}
    # Refused before any output: content null, as OpenAI's refusals.
    streamed, whole = refused(details)
    assert streamed == whole == {"content": None, "refusal": why, "finish": "content_filter"}
    # No explanation (null for a category without one, or no stop_details): no refusal text.
    for details in ({"type": "refusal", "category": None, "explanation": None}, None):
        streamed, whole = refused(details, {"type": "text", "text": "Hello.."})
        assert streamed == whole == {"content": "Hello..", "refusal": None,
                                     "finish": "content_filter"}


def test_anthropic_tool_input_sent_whole_at_its_start_is_the_calls_arguments() -> None:
    # An Anthropic-compatible upstream may send a call's input whole in its content_block_start
    # and no argument fragment; Anthropic's SDK keeps that input then (fragments, when they
    # come, replace it). The client got "{}", and ran the tool without its arguments.
    def call(index: int, city: str, *fragments: str) -> list[dict[str, Any]]:
        return block(index, {"type": "tool_use", "id": f"t{index}", "name": "get",
                             "input": {"city": city}},
                     *({"type": "input_json_delta", "partial_json": f} for f in fragments))

    c = anthropic(*call(0, "Paris"), *call(1, "Rome", ""), *call(2, "x", '{"city": ', '"Oslo"}'),
                  *block(3, {"type": "tool_use", "id": "t3", "name": "now", "input": {}}),
                  stop("tool_use"))
    assert c.tool_calls == [
        {"id": "t0", "name": "get", "arguments": '{"city":"Paris"}'},
        {"id": "t1", "name": "get", "arguments": '{"city":"Rome"}'},
        {"id": "t2", "name": "get", "arguments": '{"city": "Oslo"}'},
        {"id": "t3", "name": "now", "arguments": "{}"}]


# An answer with server tools, as Anthropic's web search, web fetch and code execution docs show
# them (doc-derived: no recorded one was found). Nothing in it may become a client tool call but
# the one tool_use; the text arrives whole, its citations dropped; usage is message_delta's.
SEARCHED = [
    {"type": "server_tool_use", "id": "srvtoolu_01", "name": "web_search",
     "input": {"query": "weather NYC today"}},
    {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_01", "content": [
        {"type": "web_search_result", "url": "https://w.example/nyc", "title": "NYC",
         "encrypted_content": "EqgfCioIARgB", "page_age": "January 1, 2025"}]},
    {"type": "text", "text": "It is sunny", "citations": [
        {"type": "web_search_result_location", "url": "https://w.example/nyc", "title": "NYC",
         "encrypted_index": "Eo8BCioIAhgB", "cited_text": "Sunny, 75F"}]},
    {"type": "text", "text": " and 75°F.\n"},
    {"type": "server_tool_use", "id": "srvtoolu_02", "name": "web_fetch",
     "input": {"url": "https://w.example/nyc"}},
    {"type": "web_fetch_tool_result", "tool_use_id": "srvtoolu_02", "content": {
        "type": "web_fetch_result", "url": "https://w.example/nyc", "content": {}}},
    {"type": "server_tool_use", "id": "srvtoolu_03", "name": "bash_code_execution",
     "input": {"command": "echo 75"}},
    {"type": "bash_code_execution_tool_result", "tool_use_id": "srvtoolu_03", "content": {
        "type": "bash_code_execution_result", "stdout": "75\n", "stderr": "",
        "return_code": 0, "content": []}},
    {"type": "mcp_tool_use", "id": "mcptoolu_01", "name": "lookup", "server_name": "s",
     "input": {"q": "x"}},
    {"type": "mcp_tool_result", "tool_use_id": "mcptoolu_01", "is_error": False,
     "content": [{"type": "text", "text": "y"}]},
    {"type": "tool_use", "id": "toolu_01", "name": "save", "input": {"temp": 75}},
]
SEARCHED_USAGE = {"input_tokens": 10682, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 0, "output_tokens": 510,
                  "server_tool_use": {"web_search_requests": 1, "web_fetch_requests": 1},
                  "cache_creation": {"ephemeral_5m_input_tokens": 0,
                                     "ephemeral_1h_input_tokens": 0},
                  "service_tier": "standard"}


def _searched_events() -> list[dict[str, Any]]:
    """SEARCHED as Anthropic streams it: inputs as JSON fragments, citations as deltas."""
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {
            "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {**SEARCHED_USAGE, "input_tokens": 2679, "output_tokens": 3,
                      "server_tool_use": None}}},
        {"type": "ping"}]
    for i, b in enumerate(SEARCHED):
        start, deltas = dict(b), []
        if "input" in b:
            start["input"] = {}
            args = orjson.dumps(b["input"]).decode()
            deltas = [{"type": "input_json_delta", "partial_json": part}
                      for part in ("", args[:5], args[5:])]
        elif b["type"] == "text":
            start = {"type": "text", "text": ""}
            deltas = [{"type": "citations_delta", "citation": c} for c in b.get("citations", [])]
            deltas.append({"type": "text_delta", "text": b["text"]})
        events += block(i, start, *deltas)
    return [*events,
            {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 400}},
            {"type": "a_future_event"},
            {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
             "usage": SEARCHED_USAGE},
            {"type": "message_stop"}]


def test_anthropic_server_tool_answer_streamed_and_whole_agree() -> None:
    whole = to_completion(orjson.dumps({
        "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-x",
        "content": SEARCHED, "stop_reason": "tool_use", "stop_sequence": None,
        "container": {"id": "container_01", "expires_at": "2025-01-01T00:00:00Z"},
        "usage": SEARCHED_USAGE}), completion_id="chatcmpl-t", created=1, model="m")
    [choice] = whole["choices"]
    msg = choice["message"]
    assert msg["content"] == "It is sunny and 75°F.\n"
    assert msg["tool_calls"] == [{"id": "toolu_01", "type": "function", "function": {
        "name": "save", "arguments": '{"temp":75}'}}]
    assert choice["finish_reason"] == "tool_calls"
    assert whole["usage"]["prompt_tokens"] == 10682 and whole["usage"]["total_tokens"] == 11192
    body = b"".join(b"event: %b\ndata: %b\n\n" % (e["type"].encode(), orjson.dumps(e))
                    for e in _searched_events())
    golden = Golden("anthropic", body, msg["content"], "tool_calls", (10682, 510, 11192),
                    [("toolu_01", "save", {"temp": 75})])
    rng = random.Random("searched")
    for pieces in ([body], event_reads(body, 1), event_reads(body, 3),
                   *(random_splits(body, rng, max_piece=rng.choice([3, 50])) for _ in range(25))):
        check(golden, translate(golden, pieces))
