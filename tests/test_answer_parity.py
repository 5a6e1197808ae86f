"""One logical answer, every provider's wire format, the same OpenAI result.

Each answer (`Answer`) is rendered as each provider sends it, streamed and whole
(provider-streams.md §3 to §8, shapes as in /work/shared/fixtures), and fed through the provider's
translator:
the stream whole, at every byte boundary and at random splits; the whole answer through
`translate_response`. What an OpenAI client reads must be the same everywhere: the joined content
and reasoning, the tool calls (ids present and unique, names, arguments as JSON, indexes 0..n-1,
each call's first delta with id, type and name — the openai SDK's accumulator needs them), the
finish_reason, usage that adds up, the role on the first chunk only and one finish chunk.

Usage differs only where a provider reports less: Anthropic, Bedrock and Cohere give no reasoning
token count, nor does Ollama (its cached count comes from servers that send
`prompt_eval_cached_count`). A pass-through preset (DeepSeek) sends its own usage chunk, so the
encoder adds none (routing/executor.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from streamproxy.openai_api.chunks import ChunkEncoder
from streamproxy.openai_api.request import parse_chat_request
from streamproxy.server.app import build_providers
from tests import eventstream_frames as es
from tests.helpers import make_config, random_splits, sse_chunks

ENVELOPE = {"completion_id": "chatcmpl-p", "created": 1, "model": "m"}
PROMPT, CACHED, COMPLETION, REASONING = 100, 40, 30, 12


@dataclass(frozen=True)
class Answer:
    text: tuple[str, ...] = ()
    reasoning: tuple[str, ...] = ()
    calls: tuple[tuple[str, str, dict[str, Any]], ...] = ()  # (provider's id, name, arguments)
    finish: str = "stop"  # OpenAI's

    @property
    def visible(self) -> int:  # the completion tokens that are not reasoning
        return COMPLETION - (REASONING if self.reasoning else 0)


ANSWERS = {
    "text with a unicode split": Answer(text=("Héllo, w", "örld ", "👋", " — bye.")),
    "thinking then text": Answer(reasoning=("Let me ", "think… ✓"), text=("The ", "answer.")),
    "two parallel calls": Answer(calls=(("call_w1", "get_weather", {"city": "Zürich"}),
                                        ("call_n2", "now", {})), finish="tool_calls"),
    "cut at the length": Answer(text=("Once ", "upon"), finish="length"),
    "thinking, text, then calls": Answer(
        reasoning=("Weather ", "and time."), text=("Checking ", "both."),
        calls=(("toolu_a", "get_weather", {"city": "Oslo", "units": ["c"]}),
               ("toolu_b", "now", {})), finish="tool_calls"),
    "cut while thinking": Answer(reasoning=("Hmm, ", "let"), finish="length"),
}


@dataclass
class Wire:
    kind: str
    stream: bytes
    whole: bytes
    options: dict[str, Any] = field(default_factory=dict)
    # The usage an OpenAI client should read (None: the provider reports none of that detail).
    cached: int | None = CACHED
    reasoning: int | None = REASONING


# -- each provider's wire format ------------------------------------------------------------------

def sse(events: list[dict[str, Any]], named: bool = False) -> bytes:
    out = b""
    for e in events:
        out += (b"event: " + e["type"].encode() + b"\n" if named else b"")
        out += b"data: " + orjson.dumps(e) + b"\n\n"
    return out


def anthropic(a: Answer) -> Wire:
    blocks: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = [{"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude", "content": [],
        "stop_reason": None, "usage": {"input_tokens": PROMPT - CACHED,
                                       "cache_read_input_tokens": CACHED,
                                       "cache_creation_input_tokens": 0, "output_tokens": 1}}}]

    def block(start: dict[str, Any], deltas: list[dict[str, Any]], whole: dict[str, Any]) -> None:
        i = len(blocks)
        blocks.append(whole)
        events.append({"type": "content_block_start", "index": i, "content_block": start})
        events.extend({"type": "content_block_delta", "index": i, "delta": d} for d in deltas)
        events.append({"type": "content_block_stop", "index": i})

    if a.reasoning:
        block({"type": "thinking", "thinking": "", "signature": ""},
              [{"type": "thinking_delta", "thinking": p} for p in a.reasoning]
              + [{"type": "signature_delta", "signature": "sig"}],
              {"type": "thinking", "thinking": "".join(a.reasoning), "signature": "sig"})
    if a.text:
        block({"type": "text", "text": ""}, [{"type": "text_delta", "text": p} for p in a.text],
              {"type": "text", "text": "".join(a.text)})
    for call_id, name, args in a.calls:
        raw = orjson.dumps(args).decode()
        block({"type": "tool_use", "id": call_id, "name": name, "input": {}},
              [{"type": "input_json_delta", "partial_json": ""}]  # (always first, then none
              + [{"type": "input_json_delta", "partial_json": raw[i:i + 5]}  # for no input)
                 for i in range(0, len(raw), 5) if args],
              {"type": "tool_use", "id": call_id, "name": name, "input": args})
    stop = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}[a.finish]
    events += [{"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": COMPLETION}}, {"type": "message_stop"}]
    whole = {**events[0]["message"], "content": blocks, "stop_reason": stop,
             "usage": {**events[0]["message"]["usage"], "output_tokens": COMPLETION}}
    return Wire("anthropic", sse(events, named=True), orjson.dumps(whole), reasoning=None)


def gemini(a: Answer) -> Wire:
    usage = {"promptTokenCount": PROMPT, "cachedContentTokenCount": CACHED,
             "candidatesTokenCount": a.visible, "totalTokenCount": PROMPT + COMPLETION}
    if a.reasoning:
        usage["thoughtsTokenCount"] = REASONING
    # Gemini 3: calls with ids, the first with its thought signature, parallel ones in one chunk
    calls = [{"functionCall": {"name": name, "args": args, "id": f"g{i}"}}
             for i, (_, name, args) in enumerate(a.calls)]
    if calls:
        calls[0]["thoughtSignature"] = "c2ln"
    parts = [[{"text": p, "thought": True}] for p in a.reasoning] + [[{"text": p}] for p in a.text]
    parts += [calls] * bool(calls)
    finish = "MAX_TOKENS" if a.finish == "length" else "STOP"

    def chunk(part_list: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"candidates": [{"content": {"role": "model", "parts": part_list}, "index": 0,
                                **extra}],
                "usageMetadata": {**usage, "candidatesTokenCount": 1, "totalTokenCount": 101},
                "modelVersion": "gemini-2.5-flash", "responseId": "r1"}

    chunks = [chunk(p) for p in parts] + [
        {**chunk([{"text": ""}], finishReason=finish), "usageMetadata": usage}]
    joined = {**chunk([]), "usageMetadata": usage}
    joined["candidates"] = [{"content": {"role": "model", "parts": [
        {"text": "".join(a.reasoning), "thought": True}] * bool(a.reasoning)
        + [{"text": "".join(a.text)}] * bool(a.text)
        + calls},
        "finishReason": finish, "index": 0}]
    stream = b"".join(b"data: " + orjson.dumps(c) + b"\r\n\r\n" for c in chunks)
    return Wire("gemini", stream, orjson.dumps(joined))


def bedrock(a: Answer) -> Wire:
    frames = [es.event("messageStart", {"role": "assistant"})]
    content: list[dict[str, Any]] = []
    if a.reasoning:
        i = len(content)
        frames += [es.event("contentBlockDelta", {"contentBlockIndex": i, "delta": {
            "reasoningContent": {"text": p}}}) for p in a.reasoning]
        frames += [es.event("contentBlockDelta", {"contentBlockIndex": i, "delta": {
            "reasoningContent": {"signature": "sig"}}}),
            es.event("contentBlockStop", {"contentBlockIndex": i})]
        content.append({"reasoningContent": {"reasoningText": {
            "text": "".join(a.reasoning), "signature": "sig"}}})
    if a.text:
        i = len(content)
        frames += [es.event("contentBlockDelta", {"contentBlockIndex": i, "delta": {"text": p}})
                   for p in a.text]
        frames.append(es.event("contentBlockStop", {"contentBlockIndex": i}))
        content.append({"text": "".join(a.text)})
    for call_id, name, args in a.calls:
        i = len(content)
        frames.append(es.event("contentBlockStart", {"contentBlockIndex": i, "start": {
            "toolUse": {"toolUseId": call_id, "name": name}}}))
        raw = orjson.dumps(args).decode() if args else ""  # ({} streams no input at all)
        frames += [es.event("contentBlockDelta", {"contentBlockIndex": i, "delta": {
            "toolUse": {"input": raw[j:j + 5]}}}) for j in range(0, len(raw), 5)]
        frames.append(es.event("contentBlockStop", {"contentBlockIndex": i}))
        content.append({"toolUse": {"toolUseId": call_id, "name": name, "input": args}})
    stop = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}[a.finish]
    usage = {"inputTokens": PROMPT - CACHED, "outputTokens": COMPLETION,
             "totalTokens": PROMPT + COMPLETION, "cacheReadInputTokens": CACHED,
             "cacheWriteInputTokens": 0}
    frames += [es.event("messageStop", {"stopReason": stop}),
               es.event("metadata", {"usage": usage, "metrics": {"latencyMs": 9}})]
    whole = {"output": {"message": {"role": "assistant", "content": content}},
             "stopReason": stop, "usage": usage, "metrics": {"latencyMs": 9}}
    return Wire("bedrock", b"".join(frames), orjson.dumps(whole),
                {"region": "us-east-1", "api_key": "k"}, reasoning=None)


def cohere(a: Answer) -> Wire:
    usage = {"billed_units": {"input_tokens": PROMPT - CACHED, "output_tokens": COMPLETION},
             "tokens": {"input_tokens": PROMPT, "output_tokens": COMPLETION},
             "cached_tokens": CACHED}
    events: list[dict[str, Any]] = [{"id": "c-1", "type": "message-start", "delta": {"message": {
        "role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}}}]
    content = [("thinking", a.reasoning)] * bool(a.reasoning) + [("text", a.text)] * bool(a.text)
    for i, (kind, pieces) in enumerate(content):
        events.append({"type": "content-start", "index": i,
                       "delta": {"message": {"content": {"type": kind, kind: ""}}}})
        events += [{"type": "content-delta", "index": i,
                    "delta": {"message": {"content": {kind: p}}}} for p in pieces]
        events.append({"type": "content-end", "index": i})
    for i, (call_id, name, args) in enumerate(a.calls):
        raw = orjson.dumps(args).decode()
        events.append({"type": "tool-call-start", "index": i, "delta": {"message": {
            "tool_calls": {"id": call_id, "type": "function",
                           "function": {"name": name, "arguments": ""}}}}})
        events += [{"type": "tool-call-delta", "index": i, "delta": {"message": {
            "tool_calls": {"function": {"arguments": raw[j:j + 5]}}}}}
            for j in range(0, len(raw), 5)]
        events.append({"type": "tool-call-end", "index": i})
    finish = {"stop": "COMPLETE", "length": "MAX_TOKENS", "tool_calls": "TOOL_CALL"}[a.finish]
    events.append({"type": "message-end", "delta": {"finish_reason": finish, "usage": usage}})
    message: dict[str, Any] = {"role": "assistant", "content": [
        {"type": kind, kind: "".join(pieces)} for kind, pieces in content]}
    if a.calls:
        message["tool_calls"] = [{"id": c, "type": "function", "function": {
            "name": n, "arguments": orjson.dumps(g).decode()}} for c, n, g in a.calls]
    whole = {"id": "c-1", "finish_reason": finish, "message": message, "usage": usage}
    return Wire("cohere", sse(events), orjson.dumps(whole), reasoning=None)


def ollama(a: Answer) -> Wire:
    def line(message: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {"model": "llama3.2", "created_at": "2025-01-01T00:00:00Z",
                "message": {"role": "assistant", "content": "", **message}, "done": False,
                **extra}

    lines = ([line({"thinking": p}) for p in a.reasoning] + [line({"content": p}) for p in a.text]
             + [line({"tool_calls": [{"function": {"name": n, "arguments": g}}
                                     for _, n, g in a.calls]})] * bool(a.calls))
    last = {**line({}), "done": True, "done_reason": "length" if a.finish == "length" else "stop",
            "prompt_eval_count": PROMPT, "prompt_eval_cached_count": CACHED,  # (newer servers)
            "eval_count": COMPLETION, "total_duration": 9}
    message: dict[str, Any] = {"role": "assistant", "content": "".join(a.text)}
    if a.reasoning:
        message["thinking"] = "".join(a.reasoning)
    if a.calls:
        message["tool_calls"] = [{"function": {"name": n, "arguments": g}} for _, n, g in a.calls]
    stream = b"".join(orjson.dumps(x) + b"\n" for x in [*lines, last])
    return Wire("ollama", stream, orjson.dumps({**last, "message": message}), reasoning=None)


def deepseek(a: Answer) -> Wire:
    usage = {"prompt_tokens": PROMPT, "completion_tokens": COMPLETION,
             "total_tokens": PROMPT + COMPLETION,
             "prompt_tokens_details": {"cached_tokens": CACHED},
             "prompt_cache_hit_tokens": CACHED, "prompt_cache_miss_tokens": PROMPT - CACHED}
    if a.reasoning:
        usage["completion_tokens_details"] = {"reasoning_tokens": REASONING}

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
        return {"id": "d-1", "object": "chat.completion.chunk", "created": 1, "model": "ds",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}

    chunks = [chunk({"role": "assistant", "content": None if a.calls and not a.text else ""})]
    chunks += [chunk({"reasoning_content": p, "content": None}) for p in a.reasoning]
    chunks += [chunk({"content": p}) for p in a.text]
    for i, (call_id, name, args) in enumerate(a.calls):
        raw = orjson.dumps(args).decode()
        chunks.append(chunk({"tool_calls": [{"index": i, "id": call_id, "type": "function",
                                             "function": {"name": name, "arguments": ""}}]}))
        chunks += [chunk({"tool_calls": [{"index": i, "function": {"arguments": raw[j:j + 5]}}]})
                   for j in range(0, len(raw), 5)]
    chunks += [chunk({}, a.finish), {**chunk({}), "choices": [], "usage": usage}]
    message: dict[str, Any] = {"role": "assistant",
                               "content": None if a.calls and not a.text else "".join(a.text)}
    if a.reasoning:
        message["reasoning_content"] = "".join(a.reasoning)
    if a.calls:
        message["tool_calls"] = [{"id": c, "type": "function", "function": {
            "name": n, "arguments": orjson.dumps(g).decode()}} for c, n, g in a.calls]
    whole = {"id": "d-1", "object": "chat.completion", "created": 1, "model": "ds", "choices": [
        {"index": 0, "message": message, "finish_reason": a.finish}], "usage": usage}
    return Wire("deepseek", sse(chunks) + b"data: [DONE]\n\n", orjson.dumps(whole))


PROVIDERS: dict[str, Callable[[Answer], Wire]] = {
    "anthropic": anthropic, "gemini": gemini, "bedrock": bedrock, "cohere": cohere,
    "ollama": ollama, "deepseek": deepseek}


# -- what a client reads ---------------------------------------------------------------------------

def expected(a: Answer, wire: Wire) -> dict[str, Any]:
    usage: dict[str, Any] = {"prompt_tokens": PROMPT, "completion_tokens": COMPLETION,
                             "total_tokens": PROMPT + COMPLETION}
    if wire.cached is not None:
        usage["cached"] = wire.cached
    if wire.reasoning is not None and a.reasoning:
        usage["reasoning"] = wire.reasoning
    # (README "Streaming guarantees": null for tool calls only, "" for nothing or reasoning only)
    content = "".join(a.text) if a.text or not a.calls else None
    return {"content": content, "reasoning": "".join(a.reasoning) or None,
            "calls": [(name, args) for _, name, args in a.calls], "finish": a.finish,
            "usage": usage}


def read(message: dict[str, Any], finish: Any, usage: dict[str, Any]) -> dict[str, Any]:
    calls = message.get("tool_calls") or []
    ids = [c["id"] for c in calls]
    assert all(ids) and len(set(ids)) == len(ids), ids
    assert all(c["type"] == "function" for c in calls)
    seen = {k: usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
    assert seen["total_tokens"] == seen["prompt_tokens"] + seen["completion_tokens"]
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    if cached:
        seen["cached"] = cached
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens")
    if reasoning:
        seen["reasoning"] = reasoning
    return {"content": message.get("content"),
            "reasoning": message.get("reasoning_content"),
            "calls": [(c["function"]["name"], orjson.loads(c["function"]["arguments"]))
                      for c in calls], "finish": finish, "usage": seen}


def streamed(provider: Any, req: Any, pieces: list[bytes]) -> dict[str, Any]:
    encoder = ChunkEncoder(include_usage=not provider.passthrough, **ENVELOPE)
    translator = provider.stream_translator(req, encoder)
    out = b""
    for piece in pieces:
        translator.feed(piece)
        out += encoder.take()
    translator.close()
    chunks = [c for c in sse_chunks(out + encoder.take()) if c != "[DONE]"]
    roles = [i for i, c in enumerate(chunks) for ch in c["choices"] if "role" in ch["delta"]]
    assert roles == [0], roles
    finishes = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["finish_reason"]]
    assert len(finishes) == 1, finishes
    first_deltas: dict[int, dict[str, Any]] = {}
    for c in chunks:
        for ch in c["choices"]:
            for tc in ch["delta"].get("tool_calls") or ():
                assert tc["index"] in first_deltas or tc["index"] == len(first_deltas), tc
                first_deltas.setdefault(tc["index"], tc)
    for tc in first_deltas.values():
        assert tc.get("id") and tc.get("type") == "function" and tc["function"].get("name"), tc
    state = ChatCompletionStreamState()
    for c in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(c))
    snapshot = state.current_completion_snapshot
    [choice] = snapshot.choices
    message = choice.message.model_dump()
    message["reasoning_content"] = getattr(choice.message, "reasoning_content", None)
    assert snapshot.usage is not None
    return read(message, choice.finish_reason, snapshot.usage.model_dump())


@pytest.mark.parametrize("answer", ANSWERS)
@pytest.mark.parametrize("kind", PROVIDERS)
def test_one_answer_reads_the_same_everywhere(kind: str, answer: str) -> None:
    a = ANSWERS[answer]
    wire = PROVIDERS[kind](a)
    provider = build_providers(make_config({"p": {"type": wire.kind, "default_model": "m",
                                                  **wire.options}}))["p"]
    req = parse_chat_request(orjson.dumps({
        "model": "m", "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "hi"}]}))
    want = expected(a, wire)
    done = provider.translate_response(wire.whole, req, **ENVELOPE)
    if isinstance(done, bytes):
        done = orjson.loads(done)
    [choice] = done["choices"]
    assert read(choice["message"], choice["finish_reason"], done["usage"]) == want, "whole"
    rng = random.Random(f"{kind}/{answer}")
    byte_by_byte = [wire.stream[i:i + 1] for i in range(len(wire.stream))]  # every boundary
    for pieces in ([wire.stream], byte_by_byte, random_splits(wire.stream, rng, 9)):
        assert streamed(provider, req, pieces) == want
