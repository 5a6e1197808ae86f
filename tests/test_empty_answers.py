"""Degenerate answers — nothing said, only reasoning, a call with no arguments — reach an
OpenAI client alike streamed (joined by the openai SDK's stream helper, whole and at random
byte splits), non-streamed, stored and replayed from the cache, with OpenAI's `content`: `""`
for an answer with no text and no calls — nothing, or only reasoning (OpenAI's, when a reasoning
model spends its budget or a stop sequence is hit at once) —, null when only calls came."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from streamproxy.cache.entry import completion_from, from_builder, from_completion, replay
from streamproxy.openai_api.chunks import ChunkEncoder, RecordingChunkEncoder
from streamproxy.openai_api.completion import CompletionBuilder, TeeSink
from streamproxy.providers.anthropic.response import to_completion as anthropic_whole
from streamproxy.providers.anthropic.stream import AnthropicStreamTranslator
from streamproxy.providers.bedrock.response import to_completion as bedrock_whole
from streamproxy.providers.bedrock.stream import BedrockStreamTranslator
from streamproxy.providers.cohere.response import to_completion as cohere_whole
from streamproxy.providers.cohere.stream import CohereStreamTranslator
from streamproxy.providers.gemini.response import to_completion as gemini_whole
from streamproxy.providers.gemini.stream import GeminiStreamTranslator
from streamproxy.providers.ollama.stream import OllamaStreamTranslator
from streamproxy.providers.openai_compat import PassthroughTranslator
from tests.eventstream_frames import encode_frame
from tests.helpers import random_splits, sse_chunks

ENVELOPE = {"completion_id": "chatcmpl-e", "created": 1, "model": "m"}
Factory = Callable[[Any], Any]


def answer(message: dict[str, Any], finish: str | None) -> dict[str, Any]:
    """What a client reads of an answer."""
    calls = message.get("tool_calls") or []
    return {"content": message.get("content"), "finish": finish,
            "calls": [(c["function"]["name"], c["function"]["arguments"]) for c in calls]}


def streamed(factory: Factory, pieces: list[bytes]) -> tuple[dict[str, Any], CompletionBuilder]:
    """What the openai SDK's stream helper joins of the client's stream, and the capture."""
    encoder = RecordingChunkEncoder(include_usage=True, **ENVELOPE)
    builder = CompletionBuilder()
    translator = factory(TeeSink(encoder, builder))
    out = b""
    for piece in pieces:
        translator.feed(piece)
        out += encoder.take()
    if not translator.done:
        translator.close()
    state = ChatCompletionStreamState()
    for chunk in sse_chunks(out + encoder.take()):
        if chunk != "[DONE]":
            state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    [choice] = state.current_completion_snapshot.model_dump()["choices"]
    return answer(choice["message"], choice["finish_reason"]), builder


def check(factory: Factory, body: bytes, whole: dict[str, Any] | None,
          expected: dict[str, Any]) -> None:
    """Streamed whole and split, stored, non-streamed and replayed from the cache: the same."""
    rng = random.Random(body)
    for pieces in ([body], *(random_splits(body, rng, rng.choice([3, 40])) for _ in range(10))):
        got, builder = streamed(factory, pieces)
        assert got == expected
    stored = builder.completion(**ENVELOPE)["choices"][0]
    assert answer(stored["message"], stored["finish_reason"]) == expected
    if whole is not None:
        [choice] = whole["choices"]
        assert answer(choice["message"], choice["finish_reason"]) == expected
    entry = from_builder(builder)
    hit = completion_from(entry, **ENVELOPE)["choices"][0]
    assert answer(hit["message"], hit["finish_reason"]) == expected
    assert replayed(entry) == expected


def empty(finish: str = "stop") -> dict[str, Any]:
    return {"content": "", "finish": finish, "calls": []}


# -- Anthropic --------------------------------------------------------------------------------

def anthropic_stream(blocks: list[dict[str, Any]], stop: str) -> bytes:
    """A Messages stream of whole blocks, each as its start (text and input empty) and one
    delta (none for an empty text block, as Anthropic sends it)."""
    events: list[dict[str, Any]] = [{"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude", "content": [],
        "stop_reason": None, "usage": {"input_tokens": 5, "output_tokens": 1}}}]
    for i, block in enumerate(blocks):
        kind = block["type"]
        start = {**block, "text": ""} if kind == "text" else (
            {**block, "input": {}} if kind == "tool_use" else {**block, "thinking": ""})
        events.append({"type": "content_block_start", "index": i, "content_block": start})
        delta = ({"type": "text_delta", "text": block["text"]} if kind == "text" else
                 {"type": "input_json_delta", "partial_json": orjson.dumps(block["input"])
                  .decode() if block["input"] else ""} if kind == "tool_use" else
                 {"type": "thinking_delta", "thinking": block["thinking"]})
        if kind != "text" or block["text"]:
            events.append({"type": "content_block_delta", "index": i, "delta": delta})
        events.append({"type": "content_block_stop", "index": i})
    events += [{"type": "message_delta", "delta": {"stop_reason": stop},
                "usage": {"output_tokens": 1}}, {"type": "message_stop"}]
    return b"".join(b"event: %s\ndata: %s\n\n" % (e["type"].encode(), orjson.dumps(e))
                    for e in events)


ANTHROPIC = {  # name: (content blocks, stop reason, expected)
    "empty end_turn after tool results": ([], "end_turn", empty()),
    "stop sequence at once": ([], "stop_sequence", empty()),
    "refusal with no text": ([], "refusal", empty("content_filter")),
    "thinking only, max_tokens": ([{"type": "thinking", "thinking": "Hm", "signature": ""}],
                                  "max_tokens", empty("length")),
    "an empty text block": ([{"type": "text", "text": ""}], "end_turn", empty()),
    "thinking, then an empty text block": (
        [{"type": "thinking", "thinking": "Hm", "signature": ""}, {"type": "text", "text": ""}],
        "end_turn", empty()),
    "an empty text block, then a call": (  # its role chunk left before the block ended
        [{"type": "text", "text": ""},
         {"type": "tool_use", "id": "toolu_1", "name": "now", "input": {}}], "tool_use",
        {"content": "", "finish": "tool_calls", "calls": [("now", "{}")]}),
    "whitespace only": ([{"type": "text", "text": "\n\n"}], "end_turn",
                        {"content": "\n\n", "finish": "stop", "calls": []}),
    "two argument-less calls to one function": (
        [{"type": "tool_use", "id": "toolu_1", "name": "now", "input": {}},
         {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}}], "tool_use",
        {"content": None, "finish": "tool_calls", "calls": [("now", "{}"), ("now", "{}")]}),
}


@pytest.mark.parametrize("name", ANTHROPIC)
def test_anthropic(name: str) -> None:
    blocks, stop, expected = ANTHROPIC[name]
    whole = anthropic_whole(orjson.dumps({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
        "content": blocks, "stop_reason": stop, "usage": {"input_tokens": 5, "output_tokens": 1}}),
        **ENVELOPE)
    check(lambda out: AnthropicStreamTranslator(out, 1 << 20), anthropic_stream(blocks, stop),
          whole, expected)


# -- Gemini -------------------------------------------------------------------------------------

USAGE = {"promptTokenCount": 5, "candidatesTokenCount": 0, "totalTokenCount": 5}


def gemini_chunk(parts: list[dict[str, Any]] | None, finish: str | None = None) -> bytes:
    content: dict[str, Any] = {"role": "model"}
    if parts is not None:
        content["parts"] = parts
    candidate: dict[str, Any] = {"index": 0, "content": content}
    if finish:
        candidate["finishReason"] = finish
    return orjson.dumps({"candidates": [candidate], "usageMetadata": USAGE})


GEMINI = {  # name: (the answer as one chunk, expected)
    "no parts": (gemini_chunk(None, "STOP"), empty()),
    "an empty text part": (gemini_chunk([{"text": ""}], "STOP"), empty()),
    "thoughts only, MAX_TOKENS": (gemini_chunk([{"text": "Hm", "thought": True}], "MAX_TOKENS"),
                                  empty("length")),
    "a blocked answer": (gemini_chunk(None, "SAFETY"), empty("content_filter")),
    # (a blocked prompt is no empty answer: its refusal says why, tests/test_prompt_blocked.py)
}


@pytest.mark.parametrize("name", GEMINI)
def test_gemini(name: str) -> None:
    chunk, expected = GEMINI[name]
    check(lambda out: GeminiStreamTranslator(out, 1 << 20), b"data: %b\r\n\r\n" % chunk,
          gemini_whole(chunk, **ENVELOPE), expected)


# -- Bedrock, Cohere, Ollama, an OpenAI-compatible upstream ------------------------------------

def bedrock_event(kind: str, body: dict[str, Any]) -> bytes:
    return encode_frame({":message-type": "event", ":event-type": kind,
                         ":content-type": "application/json"}, orjson.dumps(body))


def test_bedrock_empty_answer() -> None:
    usage = {"inputTokens": 5, "outputTokens": 1, "totalTokens": 6}
    body = b"".join((bedrock_event("messageStart", {"role": "assistant"}),
                     bedrock_event("messageStop", {"stopReason": "end_turn"}),
                     bedrock_event("metadata", {"usage": usage})))
    whole = bedrock_whole(orjson.dumps({
        "output": {"message": {"role": "assistant", "content": []}}, "stopReason": "end_turn",
        "usage": usage}), **ENVELOPE)
    check(lambda out: BedrockStreamTranslator(out, 1 << 20), body, whole, empty())


def test_bedrock_reasoning_then_an_empty_text_block() -> None:
    usage = {"inputTokens": 5, "outputTokens": 1, "totalTokens": 6}
    body = b"".join((
        bedrock_event("messageStart", {"role": "assistant"}),
        bedrock_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {
            "reasoningContent": {"text": "Hm"}}}),
        bedrock_event("contentBlockStop", {"contentBlockIndex": 0}),
        bedrock_event("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"text": ""}}),
        bedrock_event("contentBlockStop", {"contentBlockIndex": 1}),
        bedrock_event("messageStop", {"stopReason": "end_turn"}),
        bedrock_event("metadata", {"usage": usage})))
    whole = bedrock_whole(orjson.dumps({"output": {"message": {"role": "assistant", "content": [
        {"reasoningContent": {"reasoningText": {"text": "Hm"}}}, {"text": ""}]}},
        "stopReason": "end_turn", "usage": usage}), **ENVELOPE)
    check(lambda out: BedrockStreamTranslator(out, 1 << 20), body, whole, empty())


@pytest.mark.parametrize("first", ["text", "thinking"])
def test_cohere_an_empty_block_then_a_call(first: str) -> None:
    usage = {"billed_units": {"input_tokens": 5, "output_tokens": 1}}
    block = {"type": first, first: ""}
    call = {"id": "c_1", "type": "function", "function": {"name": "now", "arguments": ""}}
    events = [{"type": "message-start", "id": "c1", "delta": {"message": {"role": "assistant"}}},
              {"type": "content-start", "index": 0, "delta": {"message": {"content": block}}},
              {"type": "content-end", "index": 0},
              {"type": "tool-call-start", "index": 0, "delta": {"message": {"tool_calls": call}}},
              {"type": "tool-call-end", "index": 0},
              {"type": "message-end", "delta": {"finish_reason": "TOOL_CALL", "usage": usage}}]
    body = b"".join(b"event: %s\ndata: %s\n\n" % (e["type"].encode(), orjson.dumps(e))
                    for e in events)
    whole = cohere_whole(orjson.dumps({"id": "c1", "finish_reason": "TOOL_CALL", "message": {
        "role": "assistant", "content": [block], "tool_calls": [call]}, "usage": usage}),
        provider="cohere", **ENVELOPE)
    check(lambda out: CohereStreamTranslator(out, 1 << 20), body, whole,
          {"content": "" if first == "text" else None, "finish": "tool_calls",
           "calls": [("now", "{}")]})


def test_cohere_empty_answer() -> None:
    usage = {"billed_units": {"input_tokens": 5, "output_tokens": 1}}
    events = [{"type": "message-start", "id": "c1", "delta": {"message": {"role": "assistant"}}},
              {"type": "message-end", "delta": {"finish_reason": "COMPLETE", "usage": usage}}]
    body = b"".join(b"event: %s\ndata: %s\n\n" % (e["type"].encode(), orjson.dumps(e))
                    for e in events)
    whole = cohere_whole(orjson.dumps({"id": "c1", "finish_reason": "COMPLETE", "message": {
        "role": "assistant"}, "usage": usage}), provider="cohere", **ENVELOPE)
    check(lambda out: CohereStreamTranslator(out, 1 << 20), body, whole, empty())


def test_ollama_empty_answer() -> None:
    line = {"model": "llama3", "done": True, "done_reason": "stop", "prompt_eval_count": 5,
            "eval_count": 1, "message": {"role": "assistant", "content": ""}}
    builder = CompletionBuilder()  # the non-streamed answer: one line, as Ollama sends it
    OllamaStreamTranslator(builder, 0).handle(line)
    check(lambda out: OllamaStreamTranslator(out, 1 << 20), orjson.dumps(line) + b"\n",
          builder.completion(**ENVELOPE), empty())


def test_passthrough_empty_answer_is_stored_as_its_stream_said() -> None:
    """OpenAI's own empty answer: the role chunk's `content: ""` and a finish."""
    def chunk(choices: list[Any], usage: Any = None) -> bytes:
        return b"data: %b\n\n" % orjson.dumps({
            "id": "chatcmpl-u", "object": "chat.completion.chunk", "created": 1,
            "model": "o4-mini", "choices": choices, "usage": usage})
    body = b"".join((
        chunk([{"index": 0, "delta": {"role": "assistant", "content": "", "refusal": None},
                "finish_reason": None}]),
        chunk([{"index": 0, "delta": {}, "finish_reason": "length"}]),
        chunk([], {"prompt_tokens": 5, "completion_tokens": 64, "total_tokens": 69}),
        b"data: [DONE]\n\n"))
    check(lambda out: PassthroughTranslator(out, 1 << 20, provider="p",
                                            client_wants_usage=True),
          body, None, empty("length"))


def test_passthrough_reasoning_only_is_stored_as_its_stream_said() -> None:
    """DeepSeek's reasoner out of budget: every delta's content null, so its client joined
    null — the stored answer says so too (the proxy forwards the chunks as they came)."""
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return b"data: %b\n\n" % orjson.dumps({
            "id": "chatcmpl-d", "object": "chat.completion.chunk", "created": 1,
            "model": "deepseek-reasoner",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    body = b"".join((
        chunk({"role": "assistant", "content": None, "reasoning_content": ""}),
        chunk({"content": None, "reasoning_content": "Hm"}),
        chunk({"content": None, "reasoning_content": None}, "length"),
        b"data: [DONE]\n\n"))
    got, builder = streamed(lambda out: PassthroughTranslator(
        out, 1 << 20, provider="p", client_wants_usage=False), [body])
    assert got == {"content": None, "finish": "length", "calls": []}
    assert builder.completion(**ENVELOPE)["choices"][0]["message"]["content"] is None
    # A cache hit, either kind, and from the non-streamed answer too: null, as the first
    # client joined (a replay gave `content: ""` on its finish chunk, as a translated stream)
    entry = from_builder(builder)
    whole = from_completion(builder.completion(**ENVELOPE))
    for hit in (entry, whole):
        assert completion_from(hit, **ENVELOPE)["choices"][0]["message"]["content"] is None
        assert replayed(hit) == got


def replayed(entry: dict[str, Any]) -> dict[str, Any]:
    """What the openai SDK's stream helper joins of a streamed cache hit."""
    encoder = ChunkEncoder(include_usage=False, **ENVELOPE)
    replay(entry, encoder)
    state = ChatCompletionStreamState()
    for chunk in sse_chunks(encoder.take()):
        if chunk != "[DONE]":
            state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    [choice] = state.current_completion_snapshot.model_dump()["choices"]
    return answer(choice["message"], choice["finish_reason"])


def test_a_cached_empty_answer_with_content_null_replays_null() -> None:
    """An OpenAI-compatible server's answer with nothing in it and content null (non-streamed,
    or streamed with no content at all): a streamed hit's role chunk says null and nothing
    after it says "" — as the first client read it and a non-streamed hit gives it."""
    message = {"role": "assistant", "content": None}
    whole = {"id": "chatcmpl-n", "object": "chat.completion", "created": 1, "model": "m",
             "choices": [{"index": 0, "message": message, "finish_reason": "length"}]}
    builder = CompletionBuilder()
    builder.raw(orjson.dumps({**whole, "object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": message, "finish_reason": "length"}]}), "length")
    for entry in (from_completion(whole), from_builder(builder)):
        assert completion_from(entry, **ENVELOPE)["choices"][0]["message"]["content"] is None
        assert replayed(entry) == {"content": None, "finish": "length", "calls": []}


def test_reasoning_then_a_call_keeps_content_null() -> None:
    """Only a call after the reasoning: null, and no `content: ""` on the finish chunk."""
    blocks = [{"type": "thinking", "thinking": "Hm", "signature": ""},
              {"type": "tool_use", "id": "toolu_1", "name": "now", "input": {}}]
    whole = anthropic_whole(orjson.dumps({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
        "content": blocks, "stop_reason": "tool_use",
        "usage": {"input_tokens": 5, "output_tokens": 1}}), **ENVELOPE)
    check(lambda out: AnthropicStreamTranslator(out, 1 << 20), anthropic_stream(blocks, "tool_use"),
          whole, {"content": None, "finish": "tool_calls", "calls": [("now", "{}")]})


def test_a_cached_call_with_content_empty_replays_empty() -> None:
    """An OpenAI-compatible server's `content: ""` beside a call (vLLM, Mistral: their streams'
    role chunk says "" too) is the answer's content: a streamed hit joins "", as a non-streamed
    hit gives it — not OpenAI's null, which would make the two hits disagree."""
    call = {"id": "call_1", "type": "function", "function": {"name": "now", "arguments": "{}"}}
    message = {"role": "assistant", "content": "", "tool_calls": [call]}
    whole = {"id": "chatcmpl-c", "object": "chat.completion", "created": 1, "model": "m",
             "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}]}
    builder = CompletionBuilder()
    for delta, finish in (({"role": "assistant", "content": ""}, None),
                          ({"tool_calls": [{"index": 0, **call}]}, None), ({}, "tool_calls")):
        builder.raw(orjson.dumps({**whole, "object": "chat.completion.chunk", "choices": [
            {"index": 0, "delta": delta, "finish_reason": finish}]}), finish)
    expected = {"content": "", "finish": "tool_calls", "calls": [("now", "{}")]}
    for entry in (from_completion(whole), from_builder(builder)):
        hit = completion_from(entry, **ENVELOPE)["choices"][0]
        assert answer(hit["message"], hit["finish_reason"]) == expected
        assert replayed(entry) == expected
