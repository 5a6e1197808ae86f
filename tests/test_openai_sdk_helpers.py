"""The openai SDK's higher-level helpers (`chat.completions.stream()`, `parse()`,
`pydantic_function_tool`) through the proxy, against translating providers' fake upstreams.
The helpers accumulate chunks strictly (list deltas merged by `index`, arguments and content
parsed at their end), so a shape a naive loop tolerates can fail them."""

from __future__ import annotations

from typing import Any

import openai
import orjson
import pydantic
import pytest

from tests.conftest import provider_config
from tests.helpers import openai_sdk

USER = [{"role": "user", "content": "hi"}]


def anthropic_sse(*blocks: list[dict[str, Any]], stop: str = "end_turn") -> bytes:
    """A Messages stream: each block is its `content_block` then its deltas."""
    events: list[dict[str, Any]] = [{"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [], "stop_reason": None, "usage": {"input_tokens": 5, "output_tokens": 1}}}]
    for i, (start, *deltas) in enumerate(blocks):
        events.append({"type": "content_block_start", "index": i, "content_block": start})
        events += [{"type": "content_block_delta", "index": i, "delta": d} for d in deltas]
        events.append({"type": "content_block_stop", "index": i})
    events += [{"type": "message_delta", "delta": {"stop_reason": stop},
                "usage": {"output_tokens": 9}}, {"type": "message_stop"}]
    return b"".join(b"event: %s\ndata: %s\n\n" % (e["type"].encode(), orjson.dumps(e))
                    for e in events)


def gemini_sse(*chunks: list[dict[str, Any]]) -> bytes:
    """`alt=sse` chunks of parts; the last one finishes."""
    out = []
    for i, parts in enumerate(chunks, 1):
        candidate: dict[str, Any] = {"index": 0, "content": {"role": "model", "parts": parts}}
        if i == len(chunks):
            candidate["finishReason"] = "STOP"
        out.append(b"data: " + orjson.dumps({"candidates": [candidate]}) + b"\r\n\r\n")
    return b"".join(out)


THINKING = [{"type": "thinking", "thinking": ""},
            {"type": "thinking_delta", "thinking": "Let me see."},
            {"type": "signature_delta", "signature": "c2lnLTE="}]
REDACTED = [{"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"}]
TEXT = [{"type": "text", "text": ""}, {"type": "text_delta", "text": "Hello."}]
TWO_BLOCKS = {
    "anthropic": anthropic_sse(THINKING, REDACTED, TEXT),
    # Gemini signs the last part of a text answer; a stream can sign more than one part.
    "gemini": gemini_sse([{"text": "Hel", "thoughtSignature": "c2lnLTE="}],
                         [{"text": "lo.", "thoughtSignature": "c2lnLTI="}]),
}


@pytest.mark.parametrize("kind", sorted(TWO_BLOCKS))
async def test_stream_helper_takes_two_thinking_blocks(kind: str, proxy: Any,
                                                       upstream: Any) -> None:
    upstream.body = TWO_BLOCKS[kind]
    client = openai_sdk(await proxy(provider_config(kind, upstream.url)))
    async with client.chat.completions.stream(model="m", messages=USER) as stream:
        deltas = [event.delta async for event in stream if event.type == "content.delta"]
        final = await stream.get_final_completion()
    message = final.choices[0].message
    assert "".join(deltas) == message.content == "Hello."
    assert final.choices[0].finish_reason == "stop"
    blocks = (message.model_extra or {})["thinking_blocks"]
    assert [b["index"] for b in blocks] == [0, 1]
    assert [b.get("signature") or b.get("data") for b in blocks] == (
        ["c2lnLTE=", "EmwKAhgBEgy3va3pzix"] if kind == "anthropic" else ["c2lnLTE=", "c2lnLTI="])


async def test_blocks_from_the_stream_helper_go_back_to_anthropic_as_it_sent_them(
        proxy: Any, upstream: Any) -> None:
    upstream.body = TWO_BLOCKS["anthropic"]
    client = openai_sdk(await proxy(provider_config("anthropic", upstream.url)))
    async with client.chat.completions.stream(model="m", messages=USER) as stream:
        final = await stream.get_final_completion()
    replay = final.choices[0].message.model_dump(include={"role", "content", "thinking_blocks"})
    await client.chat.completions.create(model="m", messages=[
        *USER, replay, {"role": "user", "content": "and?"}], stream=True)
    sent = upstream.requests[-1].json()["messages"][1]["content"]
    assert sent == [{"type": "thinking", "thinking": "Let me see.", "signature": "c2lnLTE="},
                    {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
                    {"type": "text", "text": "Hello."}]


@pytest.mark.parametrize(("kind", "options"), [
    ("openai", {}), ("azure", {"api_version": "2024-10-21"}), ("groq", {}), ("mistral", {})])
async def test_stream_helper_takes_tool_calls_an_upstream_sent_without_index(
        kind: str, options: dict[str, Any], proxy: Any, upstream: Any) -> None:
    # Gemini's OpenAI-compatible endpoint leaves `index` out; the helper needs it to merge.
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [{"index": 0, "finish_reason": "tool_calls", "delta": {
                 "role": "assistant", "tool_calls": [
                     {"id": "call_a", "type": "function",
                      "function": {"name": "weather", "arguments": '{"city":"Paris"}'}},
                     {"id": "call_b", "type": "function",
                      "function": {"name": "time", "arguments": "{}"}}]}}]}
    upstream.body = b"data: " + orjson.dumps(chunk) + b"\n\ndata: [DONE]\n\n"
    client = openai_sdk(await proxy(provider_config(kind, upstream.url, **options)))
    assert await streamed_calls(client) == [
        ("call_a", "weather", '{"city":"Paris"}'), ("call_b", "time", "{}")]



async def streamed_calls(client: Any) -> list[tuple[str, str, str]]:
    """The tool calls of the final message the SDK's stream() helper builds, offered the
    weather and time functions: (id, name, arguments) each."""
    tools = [{"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
             for name in ("weather", "time")]
    async with client.chat.completions.stream(model="m", messages=USER,
                                              tools=tools) as stream:
        final = await stream.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    return [(c.id, c.function.name, c.function.arguments) for c in calls]

async def test_stream_helper_takes_citations_streamed_in_several_deltas(
        proxy: Any, upstream: Any) -> None:
    # Cohere streams a `delta.annotations` per citation (Gemini per chunk that cites): the
    # helper merges list deltas by `index` and raised on the second entry without one.
    from tests.test_cohere_citations import ANNOTATIONS, RAG_SSE, TEXT

    upstream.body = RAG_SSE
    client = openai_sdk(await proxy(provider_config("cohere", upstream.url)))
    async with client.chat.completions.stream(model="m", messages=USER) as stream:
        final = await stream.get_final_completion()
    message = final.choices[0].message
    assert message.content == TEXT
    annotations = [a.model_dump() for a in message.annotations or []]
    assert [a.pop("index") for a in annotations] == [0, 1, 2]
    assert annotations == ANNOTATIONS


def _sse_chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    return b"data: " + orjson.dumps({
        "id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + b"\n\n"


def _mistral_call(index: int, arguments: str, call_id: str | None = None,
                  name: str = "") -> dict[str, Any]:
    call: dict[str, Any] = {"function": {"name": name, "arguments": arguments},
                            "index": index}  # (Mistral writes `index` last)
    return {"id": call_id, **call} if call_id is not None else call


async def test_stream_helper_keeps_the_call_id_mistral_follows_with_a_placeholder(
        proxy: Any, upstream: Any) -> None:
    """Mistral's continuation fragments of a tool call can carry `"id": "null"`, and a later
    one its call's own id again (mistral-vibe's recorded stream; langchainjs#11505): the
    helper concatenates ids as strings, so the call's id became `abc123XYZnull…`, the id the
    client then sends back with the call and its result."""
    upstream.body = b"".join([
        _sse_chunk({"role": "assistant", "content": ""}),
        _sse_chunk({"tool_calls": [_mistral_call(0, "", "abc123XYZ", "weather")]}),
        _sse_chunk({"tool_calls": [_mistral_call(0, '{"city": ')]}),
        _sse_chunk({"tool_calls": [_mistral_call(0, '"Paris"}', "null")]}),
        _sse_chunk({"tool_calls": [_mistral_call(1, "{}", "def456UVW", "time")]}),
        _sse_chunk({"tool_calls": [_mistral_call(1, "", "def456UVW")]}),
        _sse_chunk({"content": ""}, "tool_calls"), b"data: [DONE]\n\n"])
    client = openai_sdk(await proxy(provider_config("mistral", upstream.url)))
    assert await streamed_calls(client) == [
        ("abc123XYZ", "weather", '{"city": "Paris"}'), ("def456UVW", "time", "{}")]


# OpenRouter's deltas (speakeasy-api/gram#921) and Together's (its chunks keep `token_id`)
# carry the role on every chunk.
ROLE_EVERY_DELTA = {
    "openrouter": lambda text: {"role": "assistant", "content": text},
    "together": lambda text: {"token_id": 30, "role": "assistant", "content": text,
                              "tool_calls": None},
}


@pytest.mark.parametrize("kind", sorted(ROLE_EVERY_DELTA))
async def test_stream_helper_message_role_is_assistant_when_every_delta_repeats_it(
        kind: str, proxy: Any, upstream: Any) -> None:
    """The helper joins string fields of deltas, the role among them: the final message's
    role was `assistantassistant…`, refused as a role when the client appends the message
    to its next request (an agent loop's second turn)."""
    delta = ROLE_EVERY_DELTA[kind]
    texts = ["", "Hel", "lo", "", ""]
    upstream.body = b"".join(_sse_chunk(delta(text), "stop" if i == 4 else None)
                             for i, text in enumerate(texts)) + b"data: [DONE]\n\n"
    client = openai_sdk(await proxy(provider_config(kind, upstream.url)))
    async with client.chat.completions.stream(model="m", messages=USER) as stream:
        final = await stream.get_final_completion()
    message = final.choices[0].message
    assert (message.role, message.content) == ("assistant", "Hello")


class LineItem(pydantic.BaseModel):
    sku: str = pydantic.Field(min_length=3, max_length=12)
    qty: int = pydantic.Field(ge=1, le=99)


class Order(pydantic.BaseModel):
    items: list[LineItem] = pydantic.Field(min_length=1, max_length=5)
    total: float = pydantic.Field(gt=0, multiple_of=0.01)
    due: str = pydantic.Field(json_schema_extra={"format": "date"})


def _keywords(schema: Any) -> set[str]:
    """Every key of every object in a JSON value (the schema's keywords and property names)."""
    if isinstance(schema, list):
        return set().union(*map(_keywords, schema)) if schema else set()
    if not isinstance(schema, dict):
        return set()
    return set(schema).union(*map(_keywords, schema.values()))


ORDER = '{"items":[{"sku":"ABC","qty":2}],"total":9.5,"due":"2025-01-02"}'


def answer_order(upstream: Any, stream: bool, model: str) -> None:
    """The fake Anthropic answers ORDER, streamed in two deltas or as one Message."""
    if stream:
        upstream.body = anthropic_sse([{"type": "text", "text": ""},
                                       {"type": "text_delta", "text": ORDER[:20]},
                                       {"type": "text_delta", "text": ORDER[20:]}])
    else:
        upstream.content_type = "application/json"
        upstream.body = orjson.dumps({
            "id": "msg_1", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": ORDER}], "stop_reason": "end_turn",
            "usage": {"input_tokens": 5, "output_tokens": 9}})


async def parse_order(proxy_client: Any, stream: bool, model: str) -> Any:
    """The Order the openai SDK parses: stream() + get_final_completion(), or parse()."""
    client = openai_sdk(proxy_client)
    if stream:
        async with client.chat.completions.stream(model=model, messages=USER,
                                                  response_format=Order) as events:
            return (await events.get_final_completion()).choices[0].message.parsed
    answered = await client.chat.completions.parse(model=model, messages=USER,
                                                   response_format=Order)
    return answered.choices[0].message.parsed


@pytest.mark.parametrize("stream", [False, True])
async def test_parse_with_field_constraints_on_claude(stream: bool, proxy: Any,
                                                      upstream: Any) -> None:
    """pydantic's Field(ge=…, max_length=…) writes constraints OpenAI's json_schema takes and
    Claude's structured outputs refuse with a 400 ("For 'integer' type, property 'minimum' is
    not supported"): they reach Claude in the descriptions, and parse() still checks them."""
    answer_order(upstream, stream, "claude-sonnet-4-5")
    parsed = await parse_order(await proxy(provider_config("anthropic", upstream.url)), stream,
                               "m")
    assert parsed == Order.model_validate_json(ORDER)
    schema = upstream.requests[-1].json()["output_config"]["format"]["schema"]
    assert not _keywords(schema) & {"minimum", "maximum", "exclusiveMinimum", "multipleOf",
                                    "minLength", "maxLength", "maxItems"}
    item = schema["$defs"]["LineItem"]["properties"]
    assert item["qty"]["description"] == "Constraints: maximum 99, minimum 1."
    assert item["sku"]["description"] == "Constraints: maxLength 12, minLength 3."
    items = schema["properties"]["items"]
    assert items["minItems"] == 1 and items["description"] == "Constraints: maxItems 5."
    assert schema["properties"]["total"]["description"] == (
        "Constraints: exclusiveMinimum 0, multipleOf 0.01.")
    assert schema["properties"]["due"]["format"] == "date"  # a format Claude takes stays


@pytest.mark.parametrize("stream", [False, True])
async def test_parse_on_a_claude_without_structured_outputs(stream: bool, proxy: Any,
                                                            upstream: Any) -> None:
    """Claude 3.7 refuses `output_config.format`: it is asked for the schema in the system
    prompt instead, and parse() yields the object from its answer, checking every constraint
    (sent as written)."""
    answer_order(upstream, stream, "claude-3-7-sonnet-20250219")
    parsed = await parse_order(await proxy(provider_config("anthropic", upstream.url)), stream,
                               "up/claude-3-7-sonnet-20250219")
    assert parsed == Order.model_validate_json(ORDER)
    sent = upstream.requests[-1].json()
    assert "output_config" not in sent
    [instruction] = sent["system"]
    assert '"maxLength":12' in instruction["text"]  # the schema as the client wrote it


async def test_strict_pydantic_tool_reaches_claude_without_refused_constraints(
        proxy: Any, upstream: Any) -> None:
    """pydantic_function_tool makes a strict tool; Claude's strict tool use refuses the
    constraints its structured outputs refuse, so they go into the descriptions there too."""
    upstream.body = anthropic_sse(TEXT)
    client = openai_sdk(await proxy(provider_config("anthropic", upstream.url)))
    tool = openai.pydantic_function_tool(LineItem)
    async for _ in await client.chat.completions.create(model="m", messages=USER, tools=[tool],
                                                        stream=True):
        pass
    sent = upstream.requests[-1].json()["tools"][0]
    assert sent["strict"] is True
    assert not _keywords(sent["input_schema"]) & {"minimum", "maximum", "minLength", "maxLength"}
    assert sent["input_schema"]["properties"]["qty"]["description"] == (
        "Constraints: maximum 99, minimum 1.")


class City(pydantic.BaseModel):
    city: str


# (the SDK warns while serialising its own ParsedChatCompletionMessage[City] to send it back)
@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning")
async def test_a_parsed_answer_appended_to_the_next_request_reaches_groq_without_parsed(
        proxy: Any, upstream: Any) -> None:
    """parse()'s message carries `parsed` (the object it read), which the SDK sends back when
    an agent loop appends the message; Groq answers any message key it does not know with a
    400 ("property 'parsed' is unsupported"), so the loop's second turn failed there."""
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps({
        "id": "c1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {
            "role": "assistant", "content": '{"city":"Paris"}'}}]})
    client = openai_sdk(await proxy(provider_config("groq", upstream.url)))
    answer = await client.chat.completions.parse(model="m", messages=USER, response_format=City)
    assert answer.choices[0].message.parsed == City(city="Paris")
    await client.chat.completions.parse(model="m", response_format=City, messages=[
        *USER, answer.choices[0].message, {"role": "user", "content": "and?"}])
    sent = upstream.requests[-1].json()["messages"][1]
    assert "parsed" not in sent
    assert (sent["role"], sent["content"]) == ("assistant", '{"city":"Paris"}')


async def test_a_parsed_tool_call_appended_to_the_next_request_reaches_mistral_as_its_schema(
        proxy: Any, upstream: Any) -> None:
    """The stream() and parse() helpers put `parsed_arguments` (the tool's pydantic object)
    in each call's `function`, which the SDK sends back when an agent loop appends the
    message with the tools' results; Mistral refuses any key its schemas lack (a 422, "Extra
    inputs are not permitted"), so the loop's second turn failed there."""
    upstream.body = b"".join([
        _sse_chunk({"role": "assistant", "content": ""}),
        _sse_chunk({"tool_calls": [{"id": "abc123XYZ", "type": "function", "function": {
            "name": "City", "arguments": '{"city": "Paris"}'}, "index": 0}]}),
        _sse_chunk({"content": ""}, "tool_calls"), b"data: [DONE]\n\n"])
    client = openai_sdk(await proxy(provider_config("mistral", upstream.url)))
    tools = [openai.pydantic_function_tool(City)]
    async with client.chat.completions.stream(model="m", messages=USER, tools=tools) as stream:
        message = (await stream.get_final_completion()).choices[0].message
    assert message.tool_calls and message.tool_calls[0].function.parsed_arguments == City(
        city="Paris")
    async with client.chat.completions.stream(model="m", tools=tools, messages=[
            *USER, message, {"role": "tool", "tool_call_id": "abc123XYZ", "content": "sunny"}
    ]) as stream:
        await stream.get_final_completion()
    [call] = upstream.requests[-1].json()["messages"][1]["tool_calls"]
    assert call["function"] == {"name": "City", "arguments": '{"city": "Paris"}'}
    assert call["id"] == "abc123XYZ" and call["type"] == "function"


async def test_stream_helper_parses_a_strict_tools_call_an_upstream_sent_without_type(
        proxy: Any, upstream: Any) -> None:
    """Mistral's streamed tool calls can leave out `"type": "function"` (and `index`: the
    AI SDK's recorded mistral-large stream): the helper parses a strict tool's arguments, and
    fires its `tool_calls.function.arguments.*` events, only for a call whose type says
    function, so `parsed_arguments` stayed None and no event came."""
    upstream.body = b"".join([
        _sse_chunk({"role": "assistant", "content": ""}),
        _sse_chunk({"content": None, "tool_calls": [{"id": "yfBEybNYi", "function": {
            "name": "City", "arguments": '{"city": "Paris"}'}}]}, "tool_calls"),
        b"data: [DONE]\n\n"])
    client = openai_sdk(await proxy(provider_config("mistral", upstream.url)))
    async with client.chat.completions.stream(
            model="m", messages=USER, tools=[openai.pydantic_function_tool(City)]) as stream:
        parsed = [event.parsed_arguments async for event in stream
                  if event.type == "tool_calls.function.arguments.delta"]
        final = await stream.get_final_completion()
    [call] = final.choices[0].message.tool_calls or []
    assert (call.id, call.type, call.function.parsed_arguments) == (
        "yfBEybNYi", "function", City(city="Paris"))
    assert parsed == [{"city": "Paris"}]


class Zone(pydantic.BaseModel):
    zone: str


@pytest.mark.parametrize("kind", ["openai", "mistral"])
async def test_stream_helper_fires_arguments_done_for_a_call_on_the_finish_chunk(
        kind: str, proxy: Any, upstream: Any) -> None:
    """Mistral (and Gemini's OpenAI-compatible endpoint) send tool calls on the finish
    chunk: the helper reads a chunk's finish before its calls, so the call it started got no
    `tool_calls.function.arguments.done`, which a client that dispatches tools on that event
    never ran. The usage the upstream put on that chunk stays the answer's."""
    usage = {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}
    finish = orjson.loads(_sse_chunk({"tool_calls": [
        {"index": 1, "id": "b", "type": "function",
         "function": {"name": "Zone", "arguments": '{"zone":"CET"}'}}]}, "tool_calls")[6:])
    upstream.body = b"".join([
        _sse_chunk({"role": "assistant", "content": ""}),
        _sse_chunk({"tool_calls": [{"index": 0, "id": "a", "type": "function", "function": {
            "name": "City", "arguments": '{"city":"Paris"}'}}]}),
        b"data: " + orjson.dumps({**finish, "usage": usage}) + b"\n\n", b"data: [DONE]\n\n"])
    client = openai_sdk(await proxy(provider_config(kind, upstream.url)))
    tools = [openai.pydantic_function_tool(City), openai.pydantic_function_tool(Zone)]
    async with client.chat.completions.stream(
            model="m", messages=USER, tools=tools,
            stream_options={"include_usage": True}) as stream:
        done = [(event.index, event.name, event.parsed_arguments) async for event in stream
                if event.type == "tool_calls.function.arguments.done"]
        final = await stream.get_final_completion()
    assert done == [(0, "City", City(city="Paris")), (1, "Zone", Zone(zone="CET"))]
    assert final.choices[0].finish_reason == "tool_calls"
    assert [c.function.arguments for c in final.choices[0].message.tool_calls or []] == [
        '{"city":"Paris"}', '{"zone":"CET"}']
    assert final.usage is not None and final.usage.total_tokens == 14


def _fireworks_call(index: int, call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"index": index, "id": call_id, "type": "function",
            "function": {"name": name, "arguments": arguments}, "name": None}


async def test_stream_helper_keeps_the_call_id_and_name_fireworks_repeats_on_every_fragment(
        proxy: Any, upstream: Any) -> None:
    """Fireworks repeats a call's id, type and function name on every fragment (LiteLLM#8990,
    SillyTavern#5948's recorded chunks): the helper joins string fields, so the call's id
    became `chatcmpl-tool-aa62chatcmpl-tool-aa62…` and its name `CityCityCity`, no tool the
    client offered (no `parsed_arguments`; the agent loop cannot dispatch it)."""
    upstream.body = b"".join([
        _sse_chunk({"role": "assistant", "content": None}),
        _sse_chunk({"tool_calls": [_fireworks_call(0, "chatcmpl-tool-aa62", "City", "")]}),
        _sse_chunk({"tool_calls": [_fireworks_call(0, "chatcmpl-tool-aa62", "City",
                                                   '{"city": ')]}),
        _sse_chunk({"tool_calls": [_fireworks_call(0, "chatcmpl-tool-aa62", "City",
                                                   '"Paris"}')]}),
        _sse_chunk({"tool_calls": [_fireworks_call(1, "chatcmpl-tool-bb73", "Zone",
                                                   '{"zone": "CET"}')]}),
        _sse_chunk({"tool_calls": [_fireworks_call(1, "chatcmpl-tool-bb73", "Zone", "")]}),
        _sse_chunk({}, "tool_calls"), b"data: [DONE]\n\n"])
    client = openai_sdk(await proxy(provider_config("fireworks", upstream.url)))
    tools = [openai.pydantic_function_tool(City), openai.pydantic_function_tool(Zone)]
    async with client.chat.completions.stream(model="m", messages=USER, tools=tools) as stream:
        final = await stream.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    assert [(c.id, c.type, c.function.name, c.function.arguments) for c in calls] == [
        ("chatcmpl-tool-aa62", "function", "City", '{"city": "Paris"}'),
        ("chatcmpl-tool-bb73", "function", "Zone", '{"zone": "CET"}')]
    assert [c.function.parsed_arguments for c in calls] == [City(city="Paris"), Zone(zone="CET")]


async def test_tools_a_configs_override_params_adds_get_fireworks_repeated_ids_handled(
        proxy: Any, upstream: Any) -> None:
    """The repeated-id handling is switched on by the tools of the body sent upstream (the
    translator reads the request as sent, `routing.executor.as_sent`), so tools that only a
    config's `override_params` adds get it too: the call's id comes once, not on every
    fragment."""
    upstream.body = b"".join([
        _sse_chunk({"role": "assistant", "content": None}),
        _sse_chunk({"tool_calls": [_fireworks_call(0, "chatcmpl-tool-aa62", "City", "")]}),
        _sse_chunk({"tool_calls": [_fireworks_call(0, "chatcmpl-tool-aa62", "City",
                                                   '{"city": "Paris"}')]}),
        _sse_chunk({}, "tool_calls"), b"data: [DONE]\n\n"])
    client = openai_sdk(await proxy(provider_config("fireworks", upstream.url)))
    config = {"provider": "up",
              "override_params": {"tools": [openai.pydantic_function_tool(City)]}}
    stream = await client.chat.completions.create(
        model="m", messages=USER, stream=True,
        extra_headers={"x-portkey-config": orjson.dumps(config).decode()})
    calls = [(call.id, call.function.name if call.function else None)
             async for chunk in stream for choice in chunk.choices
             for call in choice.delta.tool_calls or ()]
    assert calls == [("chatcmpl-tool-aa62", "City"), (None, None)]
