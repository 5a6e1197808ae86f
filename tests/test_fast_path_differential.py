"""The fast paths against the general path, on random streams of long runs of text deltas.

test_stream_invariants.py drives short answers; test_hot_path.py one provider's splice at a
time. Here each splicing translator (Anthropic, Gemini, Bedrock) and the OpenAI pass-through
gets long runs of text deltas — JSON escapes, control characters, U+2028/2029, astral
characters (raw, or as `\\ud83d\\ude00` pairs), quotes, backslashes, empty and very long texts —
among reasoning, tool-call arguments and usage, each event in a random spelling, at random read
boundaries. The same reads go through the fast path (an encoder that takes spliced literals and
pass-through runs) and the general one (every event decoded and re-encoded: `DecodingEncoder`),
plain and captured for store and the cache (TeeSink): the client's bytes read by read, the
encoder's counters, the stored completion and the cache entry must be identical.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamproxy.cache import entry as cache_entry
from streamproxy.errors import ProxyError
from streamproxy.openai_api.chunks import ChunkEncoder, RecordingChunkEncoder
from streamproxy.openai_api.completion import CompletionBuilder, TeeSink
from streamproxy.providers.anthropic.stream import AnthropicStreamTranslator
from streamproxy.providers.bedrock.stream import BedrockStreamTranslator
from streamproxy.providers.gemini.stream import GeminiStreamTranslator
from streamproxy.providers.openai_compat import PassthroughTranslator
from tests.eventstream_frames import encode_frame
from tests.helpers import DecodingEncoder, DecodingRecorder, collect, make_encoder, sse_chunks

EXPLORE = int(os.environ.get("STREAMPROXY_FUZZ_EXAMPLES", "0"))
SETTINGS = settings(max_examples=EXPLORE or 60, deadline=None, derandomize=not EXPLORE,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- texts and spellings ----------------------------------------------------------------------

ALPHABET = '\\"/\n\r\t\b\f\x00\x01\x1f\x7f\u2028\u2029 é€\ufffe😀𝄞ab<>&\''
SHORT = st.text(alphabet=ALPHABET, max_size=10) | st.text(max_size=6)
TEXT = st.one_of(SHORT, SHORT, st.just(""),
                 st.tuples(SHORT.filter(bool), st.integers(50, 400)).map(lambda t: t[0] * t[1]))


def spell(obj: Any, style: int, *, google: bool = False) -> bytes:
    if style == 0:  # the provider's own spelling: the one the splice takes
        if google:
            return json.dumps(obj, separators=(",", ": "), ensure_ascii=False).encode()
        return orjson.dumps(obj)
    if style == 1:  # \u escapes, astral characters as surrogate pairs
        return json.dumps(obj, separators=(",", ": ") if google else (",", ":")).encode()
    if style == 2:  # \/ escapes
        return spell(obj, 0, google=google).replace(b"/", b"\\/")
    return json.dumps(obj, ensure_ascii=False).encode()  # other separators


STYLE = st.sampled_from([0, 0, 0, 0, 1, 2, 3])


def as_reads(draw: st.DrawFn, body: bytes) -> list[bytes]:
    """`body` cut at random points: a few cuts (large reads, the splice's ground) or many."""
    n = draw(st.sampled_from([0, 1, 3, 8, 30]))
    points = sorted({draw(st.integers(1, max(1, len(body) - 1))) for _ in range(n)})
    bounds = [0, *points, len(body)]
    return [body[a:b] for a, b in itertools.pairwise(bounds) if a < b]


@st.composite
def parts(draw: st.DrawFn) -> list[tuple[str, Any]]:
    """The answer as blocks: mostly long runs of text deltas, some reasoning and tool calls."""
    blocks: list[tuple[str, Any]] = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["text", "text", "text", "think", "tool"]))
        if kind == "tool":
            blocks.append(("tool", draw(st.lists(SHORT, min_size=1, max_size=3))))
        else:
            blocks.append((kind, draw(st.lists(TEXT, min_size=1, max_size=25))))
    return blocks


# -- the providers' streams ---------------------------------------------------------------------

def _sse(kind: str | None, data: bytes, eol: bytes = b"\n") -> bytes:
    return (b"event: " + kind.encode() + eol if kind else b"") + b"data: " + data + eol + eol


@st.composite
def anthropic_body(draw: st.DrawFn) -> bytes:
    def ev(obj: dict[str, Any]) -> bytes:
        return _sse(obj["type"], spell(obj, draw(STYLE)))

    events = [ev({"type": "message_start", "message": {"id": "msg_1", "model": "claude-x",
                                                       "usage": {"input_tokens": 5,
                                                                 "output_tokens": 1}}})]
    tools = 0
    for index, (kind, texts) in enumerate(draw(parts())):
        block = {"text": {"type": "text", "text": draw(st.sampled_from(["", "Hi\u2028"]))},
                 "think": {"type": "thinking", "thinking": ""},
                 "tool": {"type": "tool_use", "id": f"t{tools}", "name": "f", "input": {}}}[kind]
        events.append(ev({"type": "content_block_start", "index": index,
                          "content_block": block}))
        for text in texts:
            delta = {"text": {"type": "text_delta", "text": text},
                     "think": {"type": "thinking_delta", "thinking": text},
                     "tool": {"type": "input_json_delta", "partial_json": text}}[kind]
            events.append(ev({"type": "content_block_delta", "index": index, "delta": delta}))
            if draw(st.integers(0, 9)) == 0:
                events.append(_sse("ping", b'{"type": "ping"}'))
        if kind == "think":
            events.append(ev({"type": "content_block_delta", "index": index,
                              "delta": {"type": "signature_delta", "signature": "c2ln"}}))
        tools += kind == "tool"
        events.append(ev({"type": "content_block_stop", "index": index}))
    if draw(st.integers(0, 5)):
        events.append(ev({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                          "usage": {"output_tokens": 9}}))
        events.append(ev({"type": "message_stop"}))
    return b"".join(events)


GEMINI_USAGE = {"promptTokenCount": 3, "candidatesTokenCount": 4, "totalTokenCount": 7}


@st.composite
def gemini_body(draw: st.DrawFn) -> bytes:
    def chunk(part: dict[str, Any], finish: str | None = None, n: int = 1) -> bytes:
        candidate: dict[str, Any] = {"content": {"parts": [part], "role": "model"}}
        if finish:
            candidate["finishReason"] = finish
        candidate["index"] = 0
        usage = {**GEMINI_USAGE, "candidatesTokenCount": n}
        obj = {"candidates": [candidate], "usageMetadata": usage, "modelVersion": "gemini-x",
               "responseId": "r1"}
        return _sse(None, spell(obj, draw(STYLE), google=True), b"\r\n")

    events = []
    n = 0
    for kind, texts in draw(parts()):
        for text in texts:
            n += 1
            if kind == "tool":
                events.append(chunk({"functionCall": {"id": f"t{n}", "name": "f",
                                                      "args": {"q": text}}}, n=n))
            elif kind == "think":
                events.append(chunk({"text": text, "thought": True}, n=n))
            else:
                events.append(chunk({"text": text}, n=n))
    if draw(st.integers(0, 5)):
        events.append(chunk({"text": draw(TEXT)}, "STOP", n=n + 1))
    return b"".join(events)


def _frame(kind: str, payload: dict[str, Any], style: int, padding: str | None) -> bytes:
    if padding is not None:
        payload = {**payload, "p": padding}
    headers = {":event-type": kind, ":content-type": "application/json",
               ":message-type": "event"}
    return encode_frame(headers, spell(payload, style))


@st.composite
def bedrock_body(draw: st.DrawFn) -> bytes:
    def ev(kind: str, payload: dict[str, Any]) -> bytes:
        padding = draw(st.one_of(st.none(), st.text("abcXYZ019", max_size=8)))
        return _frame(kind, payload, draw(STYLE), padding)

    frames = [ev("messageStart", {"role": "assistant"})]
    for index, (kind, texts) in enumerate(draw(parts())):
        if kind == "tool":
            frames.append(ev("contentBlockStart", {"contentBlockIndex": index, "start": {
                "toolUse": {"toolUseId": f"t{index}", "name": "f"}}}))
        for text in texts:
            delta = {"text": {"text": text}, "think": {"reasoningContent": {"text": text}},
                     "tool": {"toolUse": {"input": text}}}[kind]
            frames.append(ev("contentBlockDelta", {"contentBlockIndex": index, "delta": delta}))
        frames.append(ev("contentBlockStop", {"contentBlockIndex": index}))
    if draw(st.integers(0, 5)):
        frames.append(ev("messageStop", {"stopReason": "end_turn"}))
        frames.append(ev("metadata", {"usage": {"inputTokens": 3, "outputTokens": 4,
                                                "totalTokens": 7}}))
    return b"".join(frames)


@st.composite
def openai_body(draw: st.DrawFn, indexless: bool = False) -> bytes:
    base = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 7, "model": "g"}

    def ev(delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return _sse(None, spell(chunk, draw(STYLE)))

    events = [ev({"role": "assistant", "content": ""})]
    index = -1  # the tool calls' ordinal
    # (some servers leave the index out: given one when the request offered tools)
    indexed = not indexless or draw(st.integers(0, 3))
    for kind, texts in draw(parts()):
        index += kind == "tool"
        for i, text in enumerate(texts):
            if kind == "tool":
                call: dict[str, Any] = {"function": {"arguments": text}}
                if indexed:
                    call["index"] = index
                if i == 0:
                    call.update(id=f"t{index}", type="function")
                    call["function"]["name"] = "f"
                events.append(ev({"tool_calls": [call]}))
            else:
                events.append(ev({"reasoning_content" if kind == "think" else "content": text}))
    if draw(st.integers(0, 5)):
        events.append(ev({}, "stop"))
        events.append(_sse(None, orjson.dumps({**base, "choices": [], "usage": {
            "prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}})))
        events.append(b"data: [DONE]\n\n")
    return b"".join(events)


class FullParseGemini(GeminiStreamTranslator):
    """Every chunk through the full parse (no per-chunk fast path)."""

    def decode_read(self, data: bytes) -> None:
        for event in self._decoder.feed(data):
            if self.done:
                return
            self.on_event(event)


class FullParseBedrock(BedrockStreamTranslator):
    """Every frame through the general dispatch (no inline text delta)."""

    def _feed_frames(self, data: bytes) -> None:
        for headers, payload in self._decoder.feed(data):
            if self.done:
                return
            self._on_message(headers, payload)


Factory = Callable[[Any, int], Any]
PROVIDERS: dict[str, tuple[Any, Factory, Factory]] = {
    "anthropic": (anthropic_body, lambda out, limit: AnthropicStreamTranslator(out, limit),
                  lambda out, limit: AnthropicStreamTranslator(out, limit)),
    "gemini": (gemini_body, lambda out, limit: GeminiStreamTranslator(out, limit),
               lambda out, limit: FullParseGemini(out, limit)),
    "bedrock": (bedrock_body, lambda out, limit: BedrockStreamTranslator(out, limit),
                lambda out, limit: FullParseBedrock(out, limit)),
    "openai": (openai_body, lambda out, limit: PassthroughTranslator(out, limit, provider="p",
                                                              client_wants_usage=True),
               lambda out, limit: PassthroughTranslator(out, limit, provider="p",
                                                 client_wants_usage=True)),
    "openai-tools": (lambda: openai_body(indexless=True), lambda out, limit: PassthroughTranslator(
        out, limit, provider="p", client_wants_usage=True, tools_offered=True),
        lambda out, limit: PassthroughTranslator(out, limit, provider="p", client_wants_usage=True,
                                          tools_offered=True)),
}


# -- the two paths --------------------------------------------------------------------------------

class DecodingTee(TeeSink):
    """A tee translators can neither splice into nor forward runs to."""

    raw_run = None  # type: ignore[assignment]

    def __init__(self, encoder: RecordingChunkEncoder, builder: CompletionBuilder) -> None:
        super().__init__(encoder, builder)
        self.content_literals = None  # type: ignore[assignment]


def drive(factory: Factory, reads: list[bytes], fast: bool, tee: bool,
          limit: int) -> dict[str, Any]:
    """Everything observable of one stream: what the client gets read by read, the encoder's
    record, and (captured) the stored completion and the cache entry."""
    encoder = make_encoder((RecordingChunkEncoder if fast else DecodingRecorder) if tee
                           else (ChunkEncoder if fast else DecodingEncoder))
    builder = CompletionBuilder()
    sink: Any = ((TeeSink if fast else DecodingTee)(encoder, builder)  # type: ignore[arg-type]
                 if tee else encoder)
    translator = factory(sink, limit)
    out, failure = [], None
    try:
        for read in reads:
            translator.feed(read)
            out.append(encoder.take())
        translator.close()
    except ProxyError as e:  # as the relay ends it
        failure = f"{type(e).__name__}: {e}"
        sink.error(e)
    out.append(encoder.take())
    seen: dict[str, Any] = {
        "out": out, "failure": failure, "chunks": encoder.chunks,
        "finish": encoder.finish_reason, "usage": encoder.usage_data,
        "usage_so_far": translator.usage_so_far()}
    if tee:
        seen["completion"] = builder.completion(completion_id="c", created=1, model="m")
        seen["replayable"] = builder.replayable
        if builder.ended and builder.failure is None:
            entry = cache_entry.from_builder(builder)
            del entry["stored_at"]
            seen["entry"] = entry
            replayed = make_encoder()
            cache_entry.replay(orjson.loads(orjson.dumps(entry)), replayed)
            seen["replayed"] = replayed.take()
        if failure is None:  # what store keeps is what the client's chunks add up to
            assert_captured(builder, b"".join(out))
    return seen


def assert_captured(builder: CompletionBuilder, client: bytes) -> None:
    c = collect(sse_chunks(client))
    msg = builder.completion(completion_id="c", created=1, model="m")["choices"][0]
    assert (msg["message"]["content"] or "") == c.content
    assert msg["message"].get("reasoning_content", "") == c.reasoning
    assert [{"id": t["id"], "name": t["function"]["name"],
             "arguments": t["function"]["arguments"]}
            for t in msg["message"].get("tool_calls", [])] == c.tool_calls
    assert msg["finish_reason"] == c.finish_reason


def assert_paths_agree(provider: str, reads: list[bytes], limit: int = 1 << 20) -> None:
    """`limit`: the event (or frame) size the decoders hold at most. (Drawn for the SSE
    providers only, whose splices leave a read longer than it to the decoder: on Bedrock's, a
    frame over it fails from the run's end on — the frames before it reach the client, as
    before a damaged frame — where the decoder's path fails the whole read.)"""
    _, fast, general = PROVIDERS[provider]
    for tee in (False, True):
        want = drive(general, reads, False, tee, limit)
        assert drive(fast, reads, True, tee, limit) == want, tee
        assert drive(fast, reads, False, tee, limit) == want, tee


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
@SETTINGS
@given(data=st.data())
def test_the_fast_path_gives_what_the_general_path_gives(provider: str,
                                                        data: st.DataObject) -> None:
    body = data.draw(PROVIDERS[provider][0]())
    assert_paths_agree(provider, as_reads(data.draw, body))


@pytest.mark.parametrize("provider", ["anthropic", "gemini", "openai", "openai-tools"])
@SETTINGS
@given(data=st.data())
def test_the_fast_path_refuses_what_the_general_path_refuses_at_the_cap(
        provider: str, data: st.DataObject) -> None:
    # A read holding a whole event over `max_event_bytes` was spliced on the fast path, while
    # the decoder's path (and the same event split across reads) refused it.
    body = data.draw(PROVIDERS[provider][0]())
    assert_paths_agree(provider, as_reads(data.draw, body), data.draw(st.integers(100, 600)))
