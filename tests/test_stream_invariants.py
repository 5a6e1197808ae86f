"""Every translator against the client's invariants, on generated valid streams.

One logical answer (text, reasoning with its signature, tool calls with argument fragments,
a finish reason, usage, or an error part way) is written in each provider's wire format
(provider-streams.md), in the spellings providers use (compact or padded JSON, `\\u` escapes,
`\\/`), with keep-alives and unknown events among the events, and fed at any split. What the
client gets must hold as a strict OpenAI client reads it (tests/helpers.py `collect`): one
envelope, the role once, the answer's text and calls exactly, one finish reason, the usage
chunk last, or one error frame and no `[DONE]`. Any split gives the same bytes, spliced or
decoded, and what store captures is what the client's chunks add up to.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
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
from streamproxy.providers.base import StreamTranslator
from streamproxy.providers.bedrock.stream import BedrockStreamTranslator
from streamproxy.providers.cohere.stream import CohereStreamTranslator
from streamproxy.providers.gemini.stream import GeminiStreamTranslator
from streamproxy.providers.ollama.stream import OllamaStreamTranslator
from streamproxy.providers.openai_compat import PassthroughTranslator
from tests.eventstream_frames import encode_frame, event
from tests.helpers import DecodingEncoder, collect, sse_chunks

# -- the logical answer -----------------------------------------------------------------------

TEXT = st.one_of(
    st.text(max_size=10),
    st.text(alphabet='\\"/\n\r\t\x00\x1f\x7f\u2028\u2029 é€🙂𝄞ab<>&=\'', max_size=10),
)
NONEMPTY = TEXT.filter(bool)
ARGS = st.dictionaries(st.sampled_from(["city", "n", "q", "é/🙂"]),
                       st.one_of(st.integers(-5, 5), TEXT, st.booleans(), st.none()),
                       max_size=3)


@dataclass
class Tool:
    id: str
    name: str
    args: dict[str, Any]
    cuts: list[int]  # where the arguments' JSON is cut into fragments

    def fragments(self, text: str) -> list[str]:
        points = sorted({c % (len(text) + 1) for c in self.cuts})
        return [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]


@dataclass
class Answer:
    parts: list[tuple[str, Any]]  # ("text", [str]), ("think", ([str], signature)), ("tool", Tool)
    finish: str  # OpenAI's: stop, length, tool_calls (when tools), content_filter
    usage: tuple[int, int]
    error_at: int | None  # an error event before part i (None: none)
    extras: list[int] = field(default_factory=list)  # where keep-alives go (event positions)

    @property
    def tools(self) -> list[Tool]:
        return [p for k, p in self.parts if k == "tool"]

    def text(self) -> str:
        return "".join("".join(p) for k, p in self.parts if k == "text")

    def reasoning(self) -> str:
        return "".join("".join(p[0]) for k, p in self.parts if k == "think")


@st.composite
def answers(draw: st.DrawFn, *, reasoning: bool = True, tools: bool = True) -> Answer:
    kinds = ["text", "text"] + (["think"] if reasoning else []) + (["tool"] if tools else [])
    parts: list[tuple[str, Any]] = []
    n_tools = 0
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(kinds))
        if kind == "text":
            parts.append(("text", draw(st.lists(TEXT, min_size=1, max_size=5))))
        elif kind == "think":
            parts.append(("think", (draw(st.lists(NONEMPTY, min_size=1, max_size=3)),
                                    draw(st.sampled_from(["sig+/=", "c2ln"])))))
        else:
            parts.append(("tool", Tool(f"call_{n_tools}x", draw(st.sampled_from(["f", "get_w"])),
                                       draw(ARGS), draw(st.lists(st.integers(0, 60),
                                                                 max_size=4)))))
            n_tools += 1
    finish = "tool_calls" if n_tools else draw(st.sampled_from(["stop", "length"]))
    error_at = draw(st.none() | st.integers(0, len(parts)))
    usage = (draw(st.integers(0, 99)), draw(st.integers(0, 99)))
    return Answer(parts, finish, usage, error_at, draw(st.lists(st.integers(0, 40), max_size=3)))


def args_json(tool: Tool) -> str:
    """The arguments as the reference translation writes them (Python's json, no ASCII
    escapes): what every provider that takes an object (Gemini, Ollama) would have us write.
    Providers that stream fragments send whatever text their model wrote; we use the same."""
    return json.dumps(tool.args, ensure_ascii=False)


# -- JSON spellings -------------------------------------------------------------------------

def spell(obj: Any, style: int) -> bytes:
    if style == 0:
        return orjson.dumps(obj)
    if style == 1:  # \u escapes (surrogate pairs for astral characters)
        return json.dumps(obj, separators=(",", ":")).encode()
    if style == 2:  # \/ escapes
        return orjson.dumps(obj).replace(b"/", b"\\/")
    if style == 3:  # Anthropic's padding before the last brace
        return orjson.dumps(obj)[:-1] + b"   }"
    return json.dumps(obj, ensure_ascii=False).encode()  # spaces after separators


STYLES = st.sampled_from([0, 0, 0, 1, 2, 3, 4])


def insert_extras(events: list[bytes], positions: list[int], extras: list[bytes]) -> list[bytes]:
    """Keep-alives and unknown events among the events (never before the first)."""
    out = list(events)
    for i, pos in enumerate(positions):
        at = 1 + pos % max(1, len(out))
        out.insert(at, extras[i % len(extras)])
    return out


# -- the providers' wire formats -----------------------------------------------------------

def sse(kind: str | None, data: bytes, eol: bytes = b"\n") -> bytes:
    head = b"event: " + kind.encode() + eol if kind else b""
    return head + b"data: " + data + eol + eol


def anthropic_stream(a: Answer, draw: st.DrawFn) -> list[bytes]:
    reasons = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}

    def ev(obj: dict[str, Any]) -> bytes:
        return sse(obj["type"], spell(obj, draw(STYLES)))

    cache = (draw(st.integers(0, a.usage[0])), 0)
    cache = (cache[0], draw(st.integers(0, a.usage[0] - cache[0])))
    events = [ev({"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": [],
        "usage": {"input_tokens": a.usage[0] - cache[0] - cache[1], "output_tokens": 1,
                  "cache_read_input_tokens": cache[0],
                  "cache_creation_input_tokens": cache[1]}}})]
    error = ev({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    for block, (kind, part) in enumerate(a.parts):
        if a.error_at == block:
            events.append(error)
            return insert_extras(events, a.extras, EXTRA_ANTHROPIC)
        if kind == "text":
            events.append(ev({"type": "content_block_start", "index": block,
                              "content_block": {"type": "text", "text": ""}}))
            events += [ev({"type": "content_block_delta", "index": block,
                           "delta": {"type": "text_delta", "text": t}}) for t in part]
        elif kind == "think":
            texts, signature = part
            events.append(ev({"type": "content_block_start", "index": block,
                              "content_block": {"type": "thinking", "thinking": "",
                                                "signature": ""}}))
            events += [ev({"type": "content_block_delta", "index": block,
                           "delta": {"type": "thinking_delta", "thinking": t}}) for t in texts]
            events.append(ev({"type": "content_block_delta", "index": block,
                              "delta": {"type": "signature_delta", "signature": signature}}))
        else:
            events.append(ev({"type": "content_block_start", "index": block, "content_block": {
                "type": "tool_use", "id": part.id, "name": part.name, "input": {}}}))
            events += [ev({"type": "content_block_delta", "index": block,
                           "delta": {"type": "input_json_delta", "partial_json": f}})
                       for f in ["", *part.fragments(args_json(part))]]
        events.append(ev({"type": "content_block_stop", "index": block}))
    if a.error_at == len(a.parts):
        events.append(error)
        return insert_extras(events, a.extras, EXTRA_ANTHROPIC)
    events.append(ev({"type": "message_delta", "delta": {"stop_reason": reasons[a.finish],
                                                         "stop_sequence": None},
                      "usage": draw(st.sampled_from([
                          {"output_tokens": a.usage[1]},
                          {"output_tokens": a.usage[1], "input_tokens": None},
                          {"output_tokens": a.usage[1], "input_tokens": a.usage[0] - sum(cache),
                           "cache_read_input_tokens": cache[0],
                           "cache_creation_input_tokens": cache[1]}]))}))
    events.append(ev({"type": "message_stop"}))
    return insert_extras(events, a.extras, EXTRA_ANTHROPIC)


EXTRA_ANTHROPIC = [sse("ping", b'{"type": "ping"}'), b": keep-alive\n\n",
                   sse("future_event", b'{"type":"future_event","x":[1]}')]


def gemini_stream(a: Answer, draw: st.DrawFn) -> list[bytes]:
    reasons = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP"}
    usage = {"promptTokenCount": a.usage[0], "candidatesTokenCount": a.usage[1],
             "totalTokenCount": a.usage[0] + a.usage[1]}

    def chunk(parts: list[dict[str, Any]], finish: str | None = None) -> bytes:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
        if finish:
            candidate["finishReason"] = finish
        candidate["index"] = 0
        obj: dict[str, Any] = {"candidates": [candidate]}
        if finish or draw(st.integers(0, 3)):  # snapshots before the last are not monotonic
            obj["usageMetadata"] = usage if finish else {
                "promptTokenCount": draw(st.integers(0, 200)), "candidatesTokenCount": 1}
        obj["modelVersion"] = "gemini-x"
        if draw(st.integers(0, 3)):  # Google's own separators, as the fast path knows them
            data = json.dumps(obj, separators=(",", ": "),
                              ensure_ascii=draw(st.booleans())).encode()
        else:
            data = spell(obj, draw(st.sampled_from([0, 1, 2, 4])))
        return sse(None, data, b"\r\n")

    events: list[bytes] = []
    pending: list[dict[str, Any]] = []
    for i, (kind, part) in enumerate(a.parts):
        if a.error_at == i:
            if pending:
                events.append(chunk(pending))
            events.append(sse(None, b'{"error": {"code": 503, "message": "overloaded",'
                                    b' "status": "UNAVAILABLE"}}', b"\r\n"))
            return insert_extras(events, a.extras, EXTRA_GEMINI)
        if kind == "text":
            pending += [{"text": t} for t in part]
        elif kind == "think":
            texts, signature = part
            pending += [{"text": t, "thought": True} for t in texts]
            pending.append({"text": "", "thoughtSignature": signature})
        else:
            pending.append({"functionCall": {"id": part.id, "name": part.name,
                                             "args": part.args}})
        while pending and draw(st.integers(0, 2)):  # parts of several kinds share a chunk
            n = draw(st.integers(1, len(pending)))
            events.append(chunk(pending[:n]))
            del pending[:n]
    if a.error_at == len(a.parts):
        events += [chunk(pending)] if pending else []
        events.append(sse(None, b'{"error": {"code": 500, "message": "x"}}', b"\r\n"))
        return insert_extras(events, a.extras, EXTRA_GEMINI)
    if pending and draw(st.booleans()):  # the last parts with the finish reason
        events.append(chunk(pending, reasons[a.finish]))
    else:
        events += [chunk(pending)] if pending else []
        events.append(chunk([{"text": ""}], reasons[a.finish]))
    if draw(st.booleans()):  # a last usage snapshot of its own, after the finish
        events.append(sse(None, json.dumps({"usageMetadata": usage, "modelVersion": "gemini-x"},
                                           separators=(",", ": ")).encode(), b"\r\n"))
    return insert_extras(events, a.extras, EXTRA_GEMINI)


EXTRA_GEMINI = [b": keep-alive\r\n\r\n"]


def bedrock_stream(a: Answer, draw: st.DrawFn) -> list[bytes]:
    reasons = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}

    def ev(kind: str, payload: dict[str, Any]) -> bytes:
        if draw(st.booleans()):
            payload = {**payload, "p": "abcdefgh"[: draw(st.integers(0, 8))]}
        style = draw(st.sampled_from([0, 0, 1, 2]))
        headers = {":event-type": kind, ":content-type": "application/json",
                   ":message-type": "event"}
        return encode_frame(headers, spell(payload, style))

    events = [ev("messageStart", {"role": "assistant"})]
    error = encode_frame({":exception-type": "throttlingException",
                          ":content-type": "application/json", ":message-type": "exception"},
                         b'{"message":"slow down"}')
    for block, (kind, part) in enumerate(a.parts):
        if a.error_at == block:
            events.append(error)
            return insert_extras(events, a.extras, EXTRA_BEDROCK)
        if kind == "text":
            events += [ev("contentBlockDelta", {"contentBlockIndex": block,
                                                "delta": {"text": t}}) for t in part]
        elif kind == "think":
            texts, signature = part
            events += [ev("contentBlockDelta", {"contentBlockIndex": block, "delta": {
                "reasoningContent": {"text": t}}}) for t in texts]
            events.append(ev("contentBlockDelta", {"contentBlockIndex": block, "delta": {
                "reasoningContent": {"signature": signature}}}))
        else:
            events.append(ev("contentBlockStart", {"contentBlockIndex": block, "start": {
                "toolUse": {"toolUseId": part.id, "name": part.name}}}))
            events += [ev("contentBlockDelta", {"contentBlockIndex": block,
                                                "delta": {"toolUse": {"input": f}}})
                       for f in part.fragments(args_json(part))]
        events.append(ev("contentBlockStop", {"contentBlockIndex": block}))
    if a.error_at == len(a.parts):
        events.append(error)
        return insert_extras(events, a.extras, EXTRA_BEDROCK)
    events.append(ev("messageStop", {"stopReason": reasons[a.finish]}))
    events.append(ev("metadata", {"usage": {"inputTokens": a.usage[0], "outputTokens": a.usage[1],
                                            "totalTokens": sum(a.usage)},
                                  "metrics": {"latencyMs": 5}}))
    return insert_extras(events, a.extras, EXTRA_BEDROCK)


EXTRA_BEDROCK = [event("futureEvent", {"x": 1})]


def cohere_stream(a: Answer, draw: st.DrawFn) -> list[bytes]:
    reasons = {"stop": "COMPLETE", "length": "MAX_TOKENS", "tool_calls": "TOOL_CALL"}

    def ev(obj: dict[str, Any]) -> bytes:
        return sse(obj["type"], spell(obj, draw(st.sampled_from([0, 1, 2, 4]))))

    events = [ev({"type": "message-start", "id": "m1", "delta": {"message": {
        "role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}}})]
    error = ev({"type": "message-end", "delta": {"finish_reason": "ERROR", "error": "boom"}})
    content, tool = 0, 0
    for i, (kind, part) in enumerate(a.parts):
        if a.error_at == i:
            events.append(error)
            return insert_extras(events, a.extras, EXTRA_COHERE)
        if kind == "text":
            events.append(ev({"type": "content-start", "index": content, "delta": {"message": {
                "content": {"type": "text", "text": ""}}}}))
            events += [ev({"type": "content-delta", "index": content, "delta": {"message": {
                "content": {"text": t}}}}) for t in part]
            events.append(ev({"type": "content-end", "index": content}))
            content += 1
        elif kind == "think":
            events += [ev({"type": "tool-plan-delta", "delta": {"message": {"tool_plan": t}}})
                       for t in part[0]]
        else:
            events.append(ev({"type": "tool-call-start", "index": tool, "delta": {"message": {
                "tool_calls": {"id": part.id, "type": "function",
                               "function": {"name": part.name, "arguments": ""}}}}}))
            events += [ev({"type": "tool-call-delta", "index": tool, "delta": {"message": {
                "tool_calls": {"function": {"arguments": f}}}}})
                for f in part.fragments(args_json(part))]
            events.append(ev({"type": "tool-call-end", "index": tool}))
            tool += 1
    if a.error_at == len(a.parts):
        events.append(error)
        return insert_extras(events, a.extras, EXTRA_COHERE)
    events.append(ev({"type": "message-end", "delta": {"finish_reason": reasons[a.finish],
                                                       "usage": {"tokens": {
                                                           "input_tokens": a.usage[0],
                                                           "output_tokens": a.usage[1]}}}}))
    return insert_extras(events, a.extras, EXTRA_COHERE)


EXTRA_COHERE = [b": ping\n\n", sse("citation-start", b'{"type":"citation-start","index":0}')]


def ollama_stream(a: Answer, draw: st.DrawFn) -> list[bytes]:
    def line(message: dict[str, Any], **extra: Any) -> bytes:
        obj = {"model": "llama-x", "created_at": "2025-01-01T00:00:00Z",
               "message": {"role": "assistant", "content": "", **message}, "done": False, **extra}
        return spell(obj, draw(st.sampled_from([0, 1, 2, 4]))) + b"\n"

    events = []
    for i, (kind, part) in enumerate(a.parts):
        if a.error_at == i:
            events.append(b'{"error":"model crashed"}\n')
            return events
        if kind == "text":
            events += [line({"content": t}) for t in part]
        elif kind == "think":
            events += [line({"thinking": t}) for t in part[0]]
        else:
            events.append(line({"tool_calls": [{"id": part.id, "function": {
                "name": part.name, "arguments": part.args}}]}))
    if a.error_at == len(a.parts):
        return [*events, b'{"error":"model crashed"}\n']
    events.append(line({}, done=True, done_reason="length" if a.finish == "length" else "stop",
                       prompt_eval_count=a.usage[0], eval_count=a.usage[1]))
    return events


def openai_stream(a: Answer, draw: st.DrawFn) -> list[bytes]:
    base = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 7, "model": "gpt-x",
            "system_fingerprint": None}

    def ev(delta: dict[str, Any] | None = None, finish: str | None = None,
           **extra: Any) -> bytes:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                              "finish_reason": finish}]
        return sse(None, spell({**base, "choices": choices, "usage": None, **extra},
                               draw(st.sampled_from([0, 0, 1, 2, 4]))))

    events = [ev({"role": "assistant", "content": "", "refusal": None})]
    error = sse(None, b'{"error":{"message":"overloaded","type":"server_error","code":529}}')
    tool = 0
    for i, (kind, part) in enumerate(a.parts):
        if a.error_at == i:
            events.append(error)
            return insert_extras(events, a.extras, [b": OPENROUTER PROCESSING\n\n"])
        if kind == "text":
            events += [ev({"content": t}) for t in part]
        elif kind == "think":
            both = draw(st.booleans())  # vllm-mlx sends the text under both names
            events += [ev({"reasoning_content": t, **({"reasoning": t} if both else {})})
                       for t in part[0]]
        else:
            events.append(ev({"tool_calls": [{"index": tool, "id": part.id, "type": "function",
                                              "function": {"name": part.name,
                                                           "arguments": ""}}]}))
            events += [ev({"tool_calls": [{"index": tool, "function": {"arguments": f}}]})
                       for f in part.fragments(args_json(part)) if f]
            tool += 1
    if a.error_at == len(a.parts):
        events.append(error)
        return insert_extras(events, a.extras, [b": OPENROUTER PROCESSING\n\n"])
    events.append(ev({}, a.finish))
    events.append(sse(None, orjson.dumps({**base, "choices": [], "usage": {
        "prompt_tokens": a.usage[0], "completion_tokens": a.usage[1],
        "total_tokens": sum(a.usage)}})))
    events.append(b"data: [DONE]\n\n")
    return insert_extras(events, a.extras, [b": OPENROUTER PROCESSING\n\n"])


_SSE_EVENT = re.compile(rb"(?:event: ([^\r\n]*)\r?\n)?data: ([^\r\n]*)\r?\n\r?\n")


def reframe(events: list[bytes], draw: st.DrawFn) -> list[bytes]:
    """The same SSE events in another valid framing (WHATWG §9.2.6): any line ending, no space
    after the colon, `id:`/`retry:`/comment lines inside an event, and a JSON payload written
    over several `data:` lines (joined with LF, which JSON takes as whitespace)."""
    eol = draw(st.sampled_from([b"\n", b"\r\n", b"\r", None]))
    out = []
    for ev in events:
        m = _SSE_EVENT.fullmatch(ev)
        if m is None:  # a comment: as it is, in the stream's line ending
            out.append(ev if eol is None else ev.replace(b"\r\n", b"\n").replace(b"\n", eol))
            continue
        kind, data = m[1], m[2]
        end = eol or (b"\r\n" if ev.endswith(b"\r\n\r\n") else b"\n")
        lines = []
        if draw(st.integers(0, 5)) == 0:
            lines.append(draw(st.sampled_from([b"id: 42", b"retry: 100", b": note", b"id"])))
        if kind is not None:
            lines.append(b"event: " + kind)
        sep = draw(st.sampled_from([b": ", b": ", b":"]))
        if data[:1] == b"{" and draw(st.integers(0, 4)) == 0:
            pretty = json.dumps(json.loads(data), indent=1, ensure_ascii=False).encode()
            lines += [b"data" + sep + line for line in pretty.split(b"\n")]
        else:
            lines.append(b"data" + sep + data if data[:1] != b" " else b"data: " + data)
        out.append(b"".join(line + end for line in lines) + end)
    return out


Factory = Callable[[Any], StreamTranslator]
PROVIDERS: dict[str, tuple[Callable[[Answer, st.DrawFn], list[bytes]], Factory]] = {
    "anthropic": (anthropic_stream, lambda out: AnthropicStreamTranslator(out, 1 << 20)),
    "gemini": (gemini_stream, lambda out: GeminiStreamTranslator(out, 1 << 20)),
    "bedrock": (bedrock_stream, lambda out: BedrockStreamTranslator(out, 1 << 20)),
    "cohere": (cohere_stream, lambda out: CohereStreamTranslator(out, 1 << 20)),
    "ollama": (ollama_stream, lambda out: OllamaStreamTranslator(out, 1 << 20)),
    "openai": (openai_stream, lambda out: PassthroughTranslator(
        out, 1 << 20, provider="p", client_wants_usage=True)),
}


# -- driving a translator -----------------------------------------------------------------------

def cut(body: bytes, points: list[int]) -> list[bytes]:
    marks = sorted({p % (len(body) + 1) for p in points} - {0})
    return [body[a:b] for a, b in zip([0, *marks], [*marks, len(body)], strict=True) if a < b]


def run(factory: Factory, reads: list[bytes], encoder: type[ChunkEncoder] = ChunkEncoder,
        tee: bool = False) -> tuple[bytes, str | None, CompletionBuilder | None]:
    """What the client gets (the relay turns a failure after the commit point into an error
    frame), the failure's type, and what store captured."""
    if tee and encoder is ChunkEncoder:
        encoder = RecordingChunkEncoder
    # (the executor's rule: a pass-through forwards the upstream's usage chunk itself)
    enc = encoder(completion_id="chatcmpl-t", created=1, model="m",
                  include_usage=not isinstance(factory(ChunkEncoder(
                      completion_id="", created=0, model="", include_usage=False)),
                      PassthroughTranslator))
    builder = CompletionBuilder() if tee else None
    sink: Any = TeeSink(enc, builder) if builder is not None else enc  # type: ignore[arg-type]
    tr = factory(sink)
    failure = None
    try:
        for read in reads:
            tr.feed(read)
        if not tr.done:
            tr.close()
    except ProxyError as e:
        failure = type(e).__name__
        sink.error(e)
    return enc.take(), failure, builder


def expected(a: Answer, provider: str) -> dict[str, Any]:
    tools = [{"id": t.id, "name": t.name, "arguments": args_json(t) or "{}"} for t in a.tools]
    if a.error_at is not None:
        parts = a.parts[: a.error_at]
        tools = tools[: sum(1 for k, _ in parts if k == "tool")]
        a = Answer(parts, a.finish, a.usage, None)
    blocks: list[dict[str, Any]] = []
    for kind, part in a.parts:
        if kind == "think" and provider in ("anthropic", "bedrock"):
            blocks.append({"type": "thinking", "thinking": "".join(part[0]),
                           "signature": part[1]})
        elif kind == "think" and provider == "gemini":
            blocks.append({"type": "thought_signature", "signature": part[1]})
    return {"content": a.text(), "reasoning": a.reasoning(), "tool_calls": tools,
            "thinking_blocks": blocks}


SSE_FRAMED = {"anthropic", "gemini", "cohere", "openai"}
WHOLE_CALLS = {"gemini", "ollama"}  # calls come whole, their arguments a JSON object


def check(provider: str, a: Answer, body: bytes, cuts_: list[int]) -> None:
    factory = PROVIDERS[provider][1]
    whole, failure, builder = run(factory, [body], tee=True)
    c = collect(sse_chunks(whole))
    # the client's invariants
    assert failure is None or a.error_at is not None, failure
    assert len(c.ids) <= 1 and len(c.created) <= 1
    assert c.roles == (1 if c.chunks else 0)
    want = expected(a, provider)
    assert c.content == want["content"]
    assert c.reasoning == want["reasoning"]
    if provider in WHOLE_CALLS:  # arguments as an object: any spelling of it
        assert [{**t, "arguments": json.loads(t["arguments"])} for t in c.tool_calls] == [
            {**t, "arguments": json.loads(t["arguments"])} for t in want["tool_calls"]]
    else:
        assert c.tool_calls == want["tool_calls"]
    assert c.thinking_blocks == want["thinking_blocks"]
    if a.error_at is None:
        assert c.done and c.error is None
        assert c.finish_reason == a.finish
        assert c.usage is not None
        assert (c.usage["prompt_tokens"], c.usage["completion_tokens"],
                c.usage["total_tokens"]) == (a.usage[0], a.usage[1], sum(a.usage))
        assert sse_chunks(whole)[-2].get("choices") == []  # usage chunk last before [DONE]
    else:
        assert c.error is not None and not c.done
    # any split, byte by byte, spliced or decoded: the same bytes
    plain = run(factory, [body])[:2]
    if provider == "openai":  # captured, a pass-through's chunks carry our id (README)
        plain = (re.sub(rb'"id": ?"chatcmpl-up"', b'"id":"chatcmpl-t"', plain[0]), plain[1])
        whole = re.sub(rb'"id": ?"chatcmpl-t"', b'"id":"chatcmpl-t"', whole)
    assert plain == (whole, failure)
    whole = run(factory, [body])[0]
    for reads in (cut(body, cuts_), [body[i : i + 1] for i in range(len(body))]):
        assert run(factory, reads)[:2] == (whole, failure)
    assert run(factory, cut(body, cuts_), DecodingEncoder)[:2] == (whole, failure)
    # what store captures is what the client's chunks add up to
    assert builder is not None
    if failure is None:
        msg = builder.completion(completion_id="x", created=1, model="m")["choices"][0]
        assert (msg["message"]["content"] or "") == c.content
        assert msg["message"].get("reasoning_content", "") == c.reasoning
        assert [{"id": t["id"], "name": t["function"]["name"],
                 "arguments": t["function"]["arguments"]}
                for t in msg["message"].get("tool_calls", [])] == c.tool_calls
        assert msg["finish_reason"] == c.finish_reason
        assert msg["message"].get("thinking_blocks", []) == c.thinking_blocks
        assert builder.usage_data == c.usage
    if c.error is None and provider != "openai":  # a cache hit replays the same chunks
        entry = orjson.loads(orjson.dumps(cache_entry.from_builder(builder)))
        replayed = ChunkEncoder(completion_id="chatcmpl-t", created=1, model="m",
                                include_usage=True)
        cache_entry.replay(entry, replayed)
        assert replayed.take() == whole


_ZERO_USAGE = (b'"choices":[],"usage":{"prompt_tokens":0,"completion_tokens":0,'
               b'"total_tokens":0}}\n\n')


# Fixed examples by default (bounded, reproducible); STREAMPROXY_FUZZ_EXAMPLES=5000 explores.
EXPLORE = int(os.environ.get("STREAMPROXY_FUZZ_EXAMPLES", "0"))
SETTINGS = settings(max_examples=EXPLORE or 120, deadline=None, derandomize=not EXPLORE,
                    suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
@SETTINGS
@given(data=st.data())
def test_any_valid_stream_at_any_split_keeps_the_clients_invariants(
        provider: str, data: st.DataObject) -> None:
    a = data.draw(answers(reasoning=True, tools=True))
    events = PROVIDERS[provider][0](a, data.draw)
    if provider in SSE_FRAMED and data.draw(st.booleans()):
        events = reframe(events, data.draw)
    if provider in SSE_FRAMED and data.draw(st.integers(0, 5)) == 0:
        events[0] = b"\xef\xbb\xbf" + events[0]
    body = b"".join(events)
    check(provider, a, body, data.draw(st.lists(st.integers(0, 10_000), max_size=8)))


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
@settings(SETTINGS, max_examples=EXPLORE or 25)
@given(data=st.data())
def test_a_stream_cut_anywhere_is_the_whole_answer_or_a_prefix_and_an_error(
        provider: str, data: st.DataObject) -> None:
    a = data.draw(answers())
    a.error_at = None
    make, factory = PROVIDERS[provider]
    body = b"".join(make(a, data.draw))
    whole = run(factory, [body])[0]
    for at in range(len(body)):
        out, failure, _ = run(factory, [body[:at]])
        if failure is None:  # the end came (a last line or event needs no terminator)
            # (Gemini's end is EOF: a cut after its finish chunk is an end, the usage then the
            # last snapshot that came; so is an OpenAI-compatible close after the finish chunk,
            # the frames before our [DONE] those that came)
            # — and, its usage chunk cut off, the zeros a client that asked for usage gets)
            done = b"data: [DONE]\n\n"
            came = out[:-len(done)]
            if came.endswith(_ZERO_USAGE):
                came = came[:came.rindex(b"data: ")]
            assert (out == whole or (provider == "gemini" and out.endswith(done))
                    or (provider == "openai" and out.endswith(done)
                        and whole.startswith(came)))
            continue
        assert failure in ("StreamTruncated", "StreamDecodeError"), failure
        head, _, _ = out.rpartition(b"data: {\"error\"")
        assert whole.startswith(head) and b"[DONE]" not in out


def test_a_pass_through_delta_with_both_reasoning_names_is_captured_once() -> None:
    builder = CompletionBuilder()
    builder.raw_chunk(b'{"choices":[{"index":0,"delta":{"reasoning_content":"hm",'
                      b'"reasoning":"hm"}}]}')
    builder.raw_chunk(b'{"choices":[{"index":0,"delta":{"reasoning":"!"}}]}')
    assert builder.message()["reasoning_content"] == "hm!"
