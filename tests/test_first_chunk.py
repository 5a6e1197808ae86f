"""The first chunk of a translated stream, as OpenAI sends it (the recorded gpt-4o-mini streams
in tests/fixtures/openai): `{"role": "assistant", "content": "", "refusal": null}` before text,
and before a tool call one chunk carrying the role, `content: null` and the call — so a client
that joins the deltas ends with the `content` the whole answer has, null for tool calls only."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streamproxy.openai_api.chunks import ChunkEncoder
from streamproxy.providers.anthropic.stream import AnthropicStreamTranslator
from streamproxy.providers.cohere.stream import CohereStreamTranslator
from tests.conftest import provider_config
from tests.eventstream_frames import event
from tests.helpers import fixture_bytes, jsonl_to_sse, openai_sdk, sse_chunks
from tests.test_bedrock import EVENTSTREAM, bedrock_config
from tests.test_cache import cache_header, drained
from tests.test_openai_sdk_helpers import anthropic_sse, gemini_sse

USER = [{"role": "user", "content": "hi"}]


def encoder() -> ChunkEncoder:
    return ChunkEncoder(completion_id="chatcmpl-t", created=1, model="m", include_usage=True)


def first_choices(name: str) -> list[Any]:
    return sse_chunks(fixture_bytes(f"openai/{name}"))[0]["choices"]  # type: ignore[no-any-return]


def test_the_role_chunk_before_text_is_openais() -> None:
    enc = encoder()
    enc.start()
    enc.content("The")
    first = sse_chunks(enc.take())[0]
    assert first["choices"] == first_choices("pydantic-ai_run_stream_sync.response1.sse")
    assert first["usage"] is None


def test_a_tool_call_that_begins_the_answer_carries_the_role_as_openais_does() -> None:
    enc = encoder()
    enc.start()
    enc.tool_call_start(0, "call_ZR5UUuTt3pf61kjwAJIYdVMj", "get_capital")
    chunks = sse_chunks(enc.take())
    want = first_choices("pydantic-ai_run_stream_sync.response0.sse")
    assert len(chunks) == 1 and chunks[0]["choices"] == want
    assert list(chunks[0]["choices"][0]["delta"]) == list(want[0]["delta"])  # in its order


def test_reasoning_before_anything_else_leaves_content_null() -> None:
    enc = encoder()
    enc.start()
    enc.reasoning("Let me see.")
    role, reasoning = sse_chunks(enc.take())
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": None,
                                           "refusal": None}
    assert reasoning["choices"][0]["delta"] == {"reasoning_content": "Let me see."}


def _anthropic(kind: str, block: dict[str, Any]) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (kind.encode(), orjson.dumps(block))


MESSAGE_START = _anthropic("message_start", {"type": "message_start", "message": {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": [],
    "stop_reason": None, "usage": {"input_tokens": 5, "output_tokens": 1}}})


@pytest.mark.parametrize(("block", "content"), [
    ({"type": "text", "text": ""}, ""),
    ({"type": "thinking", "thinking": ""}, None),
])
def test_the_role_chunk_leaves_with_the_read_that_begins_the_first_block(
        block: dict[str, Any], content: str | None) -> None:
    # message_start alone says nothing of the answer: the commit waits for the first block,
    # whose read sends the role chunk without waiting for the block's first delta.
    enc = encoder()
    tr = AnthropicStreamTranslator(enc, 1 << 20)
    tr.feed(MESSAGE_START)
    assert not enc.pending and enc.take() == b""
    tr.feed(_anthropic("content_block_start", {"type": "content_block_start", "index": 0,
                                               "content_block": block}))
    assert enc.pending
    (role,) = sse_chunks(enc.take())
    assert role["model"] == "claude-x"
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": content,
                                           "refusal": None}


def test_cohere_sends_the_role_chunk_with_its_first_blocks_read() -> None:
    enc = encoder()
    tr = CohereStreamTranslator(enc, 1 << 20)
    tr.feed(b'data: {"type":"message-start","delta":{"message":{"role":"assistant"}}}\n\n')
    assert enc.take() == b""
    tr.feed(b'data: {"type":"content-start","index":0,"delta":{"message":{"content":'
            b'{"type":"text","text":""}}}}\n\n')
    (role,) = sse_chunks(enc.take())
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": "",
                                           "refusal": None}


# -- through the proxy: a tool call only, joined by the openai SDK's stream helper ------------

TOOL_USE = [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}},
            {"type": "input_json_delta", "partial_json": '{"a": 1}'}]


def _bedrock_tool_only() -> bytes:
    return b"".join([
        event("messageStart", {"role": "assistant"}),
        event("contentBlockStart", {"contentBlockIndex": 0, "start": {
            "toolUse": {"toolUseId": "t1", "name": "f"}}}),
        event("contentBlockDelta", {"contentBlockIndex": 0,
                                    "delta": {"toolUse": {"input": '{"a": 1}'}}}),
        event("contentBlockStop", {"contentBlockIndex": 0}),
        event("messageStop", {"stopReason": "tool_use"}),
        event("metadata", {"usage": {"inputTokens": 3, "outputTokens": 2}}),
    ])


def _ollama_tool_only() -> bytes:
    lines = [{"model": "m", "done": False, "message": {
                 "role": "assistant", "content": "",
                 "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]}},
             {"model": "m", "done": True, "done_reason": "stop", "prompt_eval_count": 1,
              "eval_count": 2, "message": {"role": "assistant", "content": ""}}]
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


TOOL_ONLY = {  # kind → (body, content type)
    "anthropic": (anthropic_sse(TOOL_USE, stop="tool_use"), "text/event-stream"),
    "gemini": (gemini_sse([{"functionCall": {"name": "f", "args": {"a": 1}}}]),
               "text/event-stream"),
    "bedrock": (_bedrock_tool_only(), EVENTSTREAM),
    # (its tool plan comes as reasoning_content: not content either)
    "cohere": (jsonl_to_sse(fixture_bytes("cohere/vercel-ai_cohere-tool-call.chunks.jsonl")),
               "text/event-stream"),
    "ollama": (_ollama_tool_only(), "application/x-ndjson"),
}


@pytest.mark.parametrize("kind", sorted(TOOL_ONLY))
async def test_a_tool_only_answer_joins_to_null_content(kind: str, proxy: Any,
                                                        upstream: Any) -> None:
    upstream.body, upstream.content_type = TOOL_ONLY[kind]
    config = (bedrock_config(upstream.url) if kind == "bedrock"
              else provider_config(kind, upstream.url))
    client = openai_sdk(await proxy(config))
    async with client.chat.completions.stream(model="m", messages=USER) as stream:
        final = await stream.get_final_completion()
    message = final.choices[0].message
    assert message.content is None and message.tool_calls
    assert final.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("fill_streamed", [True, False])
async def test_a_streamed_hit_of_a_tool_only_answer_joins_to_null_content(
        fill_streamed: bool, proxy: Any, upstream: Any) -> None:
    if fill_streamed:
        upstream.body = TOOL_ONLY["anthropic"][0]
    else:
        upstream.content_type = "application/json"
        upstream.body = orjson.dumps({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}}],
            "stop_reason": "tool_use", "usage": {"input_tokens": 5, "output_tokens": 9}})
    app = await proxy(provider_config("anthropic", upstream.url))
    client = openai_sdk(app)
    headers = cache_header()
    filled = await client.chat.completions.create(model="m", messages=USER, stream=fill_streamed,
                                                  extra_headers=headers)
    if fill_streamed:
        [_ async for _ in filled]  # type: ignore[union-attr]
    await drained(app)
    async with client.chat.completions.stream(model="m", messages=USER,
                                              extra_headers=headers) as stream:
        final = await stream.get_final_completion()
    assert len(upstream.requests) == 1  # a hit
    message = final.choices[0].message
    assert message.content is None and message.tool_calls
