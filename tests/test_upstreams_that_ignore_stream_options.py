"""OpenAI-compatible upstreams that do not stream as asked: a server that ignores
`stream_options` (sends no usage chunk), or `stream` (answers one chat.completion)."""

from __future__ import annotations

from typing import Any

import orjson

from streamproxy.openai_api.chunks import ChunkEncoder
from streamproxy.providers.openai_compat import PassthroughTranslator, answer_events
from tests.conftest import provider_config
from tests.helpers import assert_finish_last, collect, openai_sdk, read_sdk_stream, sse_chunks

USER = [{"role": "user", "content": "Hi"}]
HEAD = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 7, "model": "m"}


def _event(choices: list[Any], **extra: Any) -> bytes:
    return b"data: " + orjson.dumps({**HEAD, "choices": choices, **extra}) + b"\n\n"


NO_USAGE_STREAM = (
    _event([{"index": 0, "delta": {"role": "assistant", "content": "Hel"},
             "finish_reason": None}])
    + _event([{"index": 0, "delta": {"content": "lo"}, "finish_reason": None}])
    + _event([{"index": 0, "delta": {}, "finish_reason": "stop"}])
    + b"data: [DONE]\n\n")


def _passthrough(wants_usage: bool, body: bytes) -> list[Any]:
    # (as the executor builds a pass-through's: the usage chunk is the translator's)
    encoder = ChunkEncoder(completion_id="chatcmpl-1", created=1, model="m",
                           include_usage=False)
    translator = PassthroughTranslator(encoder, 1 << 20, provider="up",
                                       client_wants_usage=wants_usage)
    translator.feed(body)
    assert translator.done
    *chunks, done = sse_chunks(encoder.take())
    assert done == "[DONE]"
    return chunks


def test_a_client_that_asked_for_usage_gets_zeros_when_the_upstream_sent_none() -> None:
    chunks = _passthrough(True, NO_USAGE_STREAM)
    last = chunks[-1]
    assert last["choices"] == [] and last["object"] == "chat.completion.chunk"
    assert last["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert {c["id"] for c in chunks} == {"chatcmpl-up"}  # (the stream's own envelope)
    assert last["model"] == "m" and last["created"] == 7


def test_no_usage_chunk_is_made_for_a_client_that_did_not_ask() -> None:
    assert all(c.get("usage") is None for c in _passthrough(False, NO_USAGE_STREAM))


def test_the_upstreams_own_usage_is_not_doubled_by_zeros() -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    body = NO_USAGE_STREAM.replace(b"data: [DONE]", _event([], usage=usage)[:-2] + b"\n\n"
                                   b"data: [DONE]")
    chunks = _passthrough(True, body)
    assert [c["usage"] for c in chunks if c.get("usage")] == [usage]


async def test_the_sdk_final_completion_has_usage_from_an_upstream_that_sent_none(
        proxy: Any, upstream: Any) -> None:
    upstream.body = NO_USAGE_STREAM
    client = openai_sdk(await proxy(provider_config("openai", upstream.url)))
    async with client.chat.completions.stream(
            model="m", messages=USER, stream_options={"include_usage": True}) as events:
        final = await events.get_final_completion()
    assert final.choices[0].message.content == "Hello"
    assert final.usage is not None and final.usage.total_tokens == 0


# A stream request answered with a whole chat.completion (a server that ignores `stream`).
WHOLE = {"id": "chatcmpl-w", "object": "chat.completion", "created": 9, "model": "m",
         "system_fingerprint": "fp_1",
         "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"},
                      "logprobs": None, "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
CALL = {"id": "call_1", "type": "function",
        "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}
TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}]


def test_a_whole_answer_is_the_chunks_its_stream_would_have_been() -> None:
    answer = {**WHOLE, "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None, "tool_calls": [CALL]}}]}
    body = answer_events(orjson.dumps(answer))
    assert body is not None
    chunks = _passthrough(True, body)
    assert {(c["id"], c["object"], c["model"]) for c in chunks} == {
        ("chatcmpl-w", "chat.completion.chunk", "m")}
    got = collect(chunks)
    assert got.finish_reason == "tool_calls" and got.usage == WHOLE["usage"]
    assert chunks[0]["choices"][0]["delta"]["tool_calls"] == [{"index": 0, **CALL}]
    assert_finish_last(chunks)
    for other in (b'{"error": {"message": "x"}}', b"[]", b'{"choices": [{"delta": {}}]}',
                  b"not json"):
        assert answer_events(other) is None


async def test_a_streamed_request_answered_whole_streams_it(proxy: Any, upstream: Any) -> None:
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps(WHOLE)
    client = openai_sdk(await proxy(provider_config("openai", upstream.url)))
    async with client.chat.completions.stream(
            model="m", messages=USER, stream_options={"include_usage": True}) as events:
        final = await events.get_final_completion()
    assert final.choices[0].message.content == "Hello!"
    assert final.choices[0].finish_reason == "stop"
    assert final.usage is not None and final.usage.total_tokens == 5
    # (no usage asked: none forwarded, as for a stream)
    got = await read_sdk_stream(await client.chat.completions.create(
        model="m", messages=USER, stream=True))
    assert got.text == "Hello!" and got.finish == "stop" and got.usage is None


async def test_a_streamed_tool_call_answered_whole_reaches_the_stream_helper(
        proxy: Any, upstream: Any) -> None:
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps({**WHOLE, "choices": [{
        "index": 0, "finish_reason": "tool_calls",
        "message": {"role": "assistant", "content": None, "tool_calls": [CALL]}}]})
    client = openai_sdk(await proxy(provider_config("openai", upstream.url)))
    async with client.chat.completions.stream(model="m", messages=USER,
                                              tools=TOOLS) as events:
        final = await events.get_final_completion()
    [call] = final.choices[0].message.tool_calls
    assert (call.id, call.function.name, call.function.arguments) == (
        "call_1", "weather", '{"city":"Paris"}')
    assert final.choices[0].finish_reason == "tool_calls"


async def test_a_failed_choice_answered_whole_is_its_error_streamed_or_not(
        proxy: Any, upstream: Any) -> None:
    # OpenRouter's failed answer: the choice's own `error` says what failed and its status;
    # a stream request answered so gets the error a non-streamed one gets, not a bare 502.
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps({**WHOLE, "choices": [{
        "index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "error",
        "native_finish_reason": "error",
        "error": {"code": 429, "message": "Provider rate limited"}}]})
    client = await proxy(provider_config("openrouter", upstream.url))
    answers = []
    for stream in (False, True):
        response = await client.post("/v1/chat/completions", json={
            "model": "m", "messages": USER, "stream": stream})
        answers.append((response.status, (await response.json())["error"]["message"]))
    assert answers == [(429, "Provider rate limited")] * 2
