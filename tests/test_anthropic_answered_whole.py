"""Anthropic-compatible upstreams that answer a stream request with one whole `message` (a
relay that ignores `stream: true`): streamed as the events its stream would have been."""

from __future__ import annotations

import json
from typing import Any

import openai
import orjson
import pytest

from streamproxy.openai_api.chunks import ChunkEncoder
from streamproxy.providers.anthropic.response import answer_events, to_completion
from streamproxy.providers.anthropic.stream import AnthropicStreamTranslator
from tests.conftest import provider_config
from tests.helpers import assert_finish_last, collect, openai_sdk, relay_pieces, sse_chunks

USER = [{"role": "user", "content": "Hi"}]
USAGE = {"input_tokens": 10, "output_tokens": 4, "cache_read_input_tokens": 5,
         "cache_creation_input_tokens": 2}
TEXT = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [{"type": "text", "text": "Hello \"there\" ✓"}],
        "stop_reason": "end_turn", "stop_sequence": None, "usage": USAGE}
# An integer past 64 bits: the client gets it as written, as the non-streamed answer does.
INPUT = '{"city":"Paris","wei":123456789012345678901,"n":[1,2.5]}'
CALL = ('{"id":"msg_2","type":"message","role":"assistant","model":"claude-x","content":['
        '{"type":"text","text":"Let me check."},'
        '{"type":"tool_use","id":"toolu_1","name":"weather","input":' + INPUT + '},'
        '{"type":"tool_use","id":"toolu_2","name":"ping","input":{}}],'
        '"stop_reason":"tool_use","stop_sequence":null,'
        '"usage":{"input_tokens":7,"output_tokens":9}}').encode()
THINKING = {**TEXT, "content": [
    {"type": "thinking", "thinking": "Let me think.", "signature": "sig=="},
    {"type": "redacted_thinking", "data": "EncRypted"},
    {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search",
     "input": {"query": "x"}},
    {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
    {"type": "text", "text": "Done."}]}
TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}},
    {"type": "function", "function": {"name": "ping", "parameters": {"type": "object"}}}]


def streamed(body: bytes) -> list[Any]:
    events = answer_events(body)
    assert events is not None
    enc = ChunkEncoder(completion_id="c", created=1, model="m", include_usage=True)
    return sse_chunks(relay_pieces(enc, AnthropicStreamTranslator(enc, 1 << 20), [events]))


def test_a_whole_message_streams_as_its_non_streamed_translation() -> None:
    stop = {**TEXT, "stop_reason": "stop_sequence", "stop_sequence": "END"}
    refused = {**TEXT, "stop_reason": "refusal",
               "stop_details": {"type": "refusal", "explanation": "Not that."}}
    unended = {**TEXT, "stop_reason": None, "usage": None}
    for body in (orjson.dumps(TEXT), CALL, orjson.dumps(THINKING), orjson.dumps(stop),
                 orjson.dumps(refused), orjson.dumps(unended)):
        chunks = streamed(body)
        got = collect(chunks)
        assert_finish_last(chunks)
        assert got.done and got.error is None
        whole = to_completion(body, completion_id="c", created=1, model="m")
        message = whole["choices"][0]["message"]
        assert got.content == (message["content"] or "")
        assert got.reasoning == (message.get("reasoning_content") or "")
        assert got.thinking_blocks == [{k: v for k, v in b.items() if k != "index"}
                                       for b in message.get("thinking_blocks", [])]
        assert [(t["id"], t["name"], t["arguments"]) for t in got.tool_calls] == [
            (t["id"], t["function"]["name"], t["function"]["arguments"])
            for t in message.get("tool_calls") or []]
        assert got.finish_reason == whole["choices"][0]["finish_reason"]
        # (none reported: the zeros a stream's usage chunk has, README)
        assert got.usage == whole.get("usage", {"prompt_tokens": 0, "completion_tokens": 0,
                                                "total_tokens": 0})


def test_the_whole_message_keeps_what_its_blocks_carry() -> None:
    got = collect(streamed(CALL))
    assert got.content == "Let me check." and got.finish_reason == "tool_calls"
    assert [t["arguments"] for t in got.tool_calls] == [INPUT, "{}"]
    assert json.loads(got.tool_calls[0]["arguments"])["wei"] == 123456789012345678901
    got = collect(streamed(orjson.dumps(THINKING)))
    assert got.reasoning == "Let me think." and got.content == "Done."
    assert got.thinking_blocks == [
        {"type": "thinking", "thinking": "Let me think.", "signature": "sig=="},
        {"type": "redacted_thinking", "data": "EncRypted"}]
    assert got.usage is not None and got.usage["prompt_tokens"] == 17
    assert got.usage["prompt_tokens_details"]["cached_tokens"] == 5


def test_other_bodies_are_no_answer() -> None:
    for other in (b'{"type":"error","error":{"type":"overloaded_error","message":"x"}}',
                  b"[]", b"not json", b'{"content":"x"}', b'{"type":"message","content":[1]}',
                  b'{"choices":[{"message":{"content":"x"}}]}'):
        assert answer_events(other) is None


async def test_a_streamed_request_answered_whole_streams_it(proxy: Any, upstream: Any) -> None:
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps(TEXT)
    client = openai_sdk(await proxy(provider_config("anthropic", upstream.url)))
    async with client.chat.completions.stream(
            model="m", messages=USER, stream_options={"include_usage": True}) as events:
        final = await events.get_final_completion()
    whole = await client.chat.completions.create(model="m", messages=USER)
    assert final.choices[0].message.content == whole.choices[0].message.content == (
        "Hello \"there\" ✓")
    assert final.choices[0].finish_reason == whole.choices[0].finish_reason == "stop"
    assert final.usage is not None and final.usage == whole.usage
    assert final.usage.prompt_tokens == 17 and final.usage.total_tokens == 21


async def test_a_streamed_tool_call_answered_whole_reaches_the_stream_helper(
        proxy: Any, upstream: Any) -> None:
    upstream.content_type = "application/json"
    upstream.body = CALL
    client = openai_sdk(await proxy(provider_config("anthropic", upstream.url)))
    async with client.chat.completions.stream(model="m", messages=USER,
                                              tools=TOOLS) as events:
        final = await events.get_final_completion()
    whole = await client.chat.completions.create(model="m", messages=USER, tools=TOOLS)
    calls = [(c.id, c.function.name, c.function.arguments)
             for c in final.choices[0].message.tool_calls or []]
    assert calls == [(c.id, c.function.name, c.function.arguments)
                     for c in whole.choices[0].message.tool_calls or []]
    assert calls == [("toolu_1", "weather", INPUT), ("toolu_2", "ping", "{}")]
    assert final.choices[0].finish_reason == "tool_calls"


async def test_a_streamed_thinking_answer_answered_whole(proxy: Any, upstream: Any) -> None:
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps(THINKING)
    client = openai_sdk(await proxy(provider_config("anthropic", upstream.url)))
    async with client.chat.completions.stream(model="m", messages=USER) as events:
        final = await events.get_final_completion()
    whole = await client.chat.completions.create(model="m", messages=USER)
    got, want = final.choices[0].message, whole.choices[0].message
    assert got.content == want.content == "Done."
    assert got.model_extra["reasoning_content"] == want.model_extra["reasoning_content"]
    # (a stream's blocks carry the `index` their deltas had)
    assert [{k: v for k, v in b.items() if k != "index"}
            for b in got.model_extra["thinking_blocks"]] == want.model_extra["thinking_blocks"]
    assert [b["type"] for b in want.model_extra["thinking_blocks"]] == [
        "thinking", "redacted_thinking"]


async def test_an_error_answer_stays_the_providers_error(proxy: Any, upstream: Any) -> None:
    upstream.content_type = "application/json"
    upstream.body = b'{"type":"error","error":{"type":"overloaded_error","message":"busy"}}'
    client = openai_sdk(await proxy(provider_config("anthropic", upstream.url)))
    with pytest.raises(openai.APIStatusError) as raised:
        await client.chat.completions.create(model="m", messages=USER, stream=True)
    assert raised.value.status_code == 529 and "busy" in str(raised.value)
