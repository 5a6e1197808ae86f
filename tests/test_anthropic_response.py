"""Anthropic's non-streamed Message → `chat.completion`: what a tool call's arguments carry."""

from __future__ import annotations

import json
from typing import Any

import orjson

from streamproxy.openai_api.chunks import ChunkEncoder
from streamproxy.providers.anthropic.response import to_completion
from streamproxy.providers.anthropic.stream import AnthropicStreamTranslator
from tests.helpers import collect, relay_pieces, sse_chunks

# An integer past 64 bits (an amount in wei, a 20-digit id): orjson reads it as a float.
INPUT = ('{"wei":123456789012345678901,"low":-9223372036854775809,"id":18446744073709551616,'
         '"n":5,"x":1.5,"s":"é"}')


def whole_arguments(raw_input: str) -> str:
    body = ('{"id":"msg_1","type":"message","role":"assistant","model":"claude","content":['
            '{"type":"tool_use","id":"toolu_1","name":"send","input":' + raw_input + '}],'
            '"stop_reason":"tool_use","usage":{"input_tokens":3,"output_tokens":4}}')
    completion = to_completion(body.encode(), completion_id="c", created=1, model="m")
    return completion["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]


def streamed_arguments(raw_input: str) -> str:
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {"id": "msg_1", "type": "message",
                                              "role": "assistant", "model": "claude",
                                              "content": [], "usage": {"input_tokens": 3}}},
        {"type": "content_block_start", "index": 0, "content_block": {
            "type": "tool_use", "id": "toolu_1", "name": "send", "input": {}}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "input_json_delta", "partial_json": raw_input}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
         "usage": {"output_tokens": 4}},
        {"type": "message_stop"}]
    sse = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events)
    enc = ChunkEncoder(completion_id="c", created=1, model="m", include_usage=False)
    c = collect(sse_chunks(relay_pieces(enc, AnthropicStreamTranslator(enc, 1 << 20), [sse])))
    return str(c.tool_calls[0]["arguments"])


def test_a_tool_calls_big_integers_keep_every_digit_as_in_the_stream() -> None:
    # The whole answer's arguments read 1.2345678901234568e+20 where the client's tool (and
    # the streamed call) had 123456789012345678901: a different number, and no integer.
    exact = json.loads(INPUT)
    assert json.loads(whole_arguments(INPUT)) == exact == json.loads(streamed_arguments(INPUT))
    assert isinstance(json.loads(whole_arguments(INPUT))["wei"], int)


def test_a_long_digit_run_in_text_leaves_the_arguments_as_before() -> None:
    assert whole_arguments('{"q":"1234567890123456789012","n":2}') == \
        '{"q":"1234567890123456789012","n":2}'
    assert whole_arguments("{}") == "{}"


def test_a_tool_calls_long_fractions_keep_the_text_claude_wrote_as_in_the_stream() -> None:
    # More digits than a double holds: read as a float, a client parsing numbers as decimals
    # got 0.1 (and 0.12345678901234566, another number) for what the model and the streamed
    # call said. A short fraction, an exponent, and integers are kept as written too.
    raw = ('{"p":0.1000000000000000055511151231257827,"q":0.12345678901234567,'
           '"wei":123456789012345678901,"x":1.50,"e":2E5}')
    assert whole_arguments(raw) == raw == streamed_arguments(raw)


def finishes(stop_reason: str) -> tuple[str, str]:
    """The finish reason of a turn that made a call then ended with `stop_reason`: whole and
    streamed."""
    block = {"type": "tool_use", "id": "toolu_1", "name": "send", "input": {"n": 1}}
    body = orjson.dumps({"id": "msg_1", "type": "message", "role": "assistant",
                         "model": "claude", "content": [{"type": "text", "text": "Sending."},
                                                        block],
                         "stop_reason": stop_reason, "stop_sequence": None,
                         "usage": {"input_tokens": 3, "output_tokens": 4}})
    whole = to_completion(body, completion_id="c", created=1, model="m")
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {"id": "msg_1", "type": "message",
                                              "role": "assistant", "model": "claude",
                                              "content": [], "usage": {"input_tokens": 3}}},
        {"type": "content_block_start", "index": 0, "content_block": {**block, "input": {}}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "input_json_delta", "partial_json": '{"n": 1}'}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None},
         "usage": {"output_tokens": 4}},
        {"type": "message_stop"}]
    sse = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events)
    enc = ChunkEncoder(completion_id="c", created=1, model="m", include_usage=False)
    c = collect(sse_chunks(relay_pieces(enc, AnthropicStreamTranslator(enc, 1 << 20), [sse])))
    assert c.tool_calls and whole["choices"][0]["message"]["tool_calls"]
    return whole["choices"][0]["finish_reason"], str(c.finish_reason)


def test_a_turn_that_made_calls_finishes_with_tool_calls_whatever_stop_it_names() -> None:
    # A stop sequence matched after a call (or an Anthropic-compatible server's end_turn) gave
    # `stop` beside tool_calls: an agent loop that runs the calls on `tool_calls` (OpenAI's
    # examples) ran none. Claude on Bedrock already says tool_calls here.
    for reason in ("end_turn", "stop_sequence", "tool_use"):
        assert finishes(reason) == ("tool_calls", "tool_calls"), reason
    assert finishes("max_tokens") == ("length", "length")  # (cut: as OpenAI, and Bedrock)
