"""Ollama native `/api/chat` (`type: ollama`).

No recorded Ollama stream exists (tests/fixtures/SOURCES.md), so the streams here are built from
Ollama's documented NDJSON format (docs/api.md "Generate a chat completion": one object per
line, `done: false` lines with `message.content` / `message.thinking` / `message.tool_calls`
whose arguments are objects, a final `done: true` line with `done_reason` and eval counts; an
`{"error": …}` line on failure).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from streamproxy.config import ConfigError, load_config
from streamproxy.errors import InvalidRequest, StreamTruncated
from streamproxy.openai_api.chunks import ChunkEncoder
from streamproxy.openai_api.completion import CompletionBuilder
from streamproxy.providers.ollama import OllamaProvider
from streamproxy.providers.ollama.request import to_ollama
from streamproxy.providers.ollama.stream import OllamaStreamTranslator
from tests.conftest import provider_config
from tests.helpers import (
    collect,
    make_config,
    openai_sdk,
    random_splits,
    read_sdk_stream,
    sse_chunks,
)

NDJSON = "application/x-ndjson"
CREATED = "2024-07-22T20:33:28.123648Z"


def line(content: str = "", *, done: bool = False, **message: Any) -> dict[str, Any]:
    return {"model": "llama3.2", "created_at": CREATED,
            "message": {"role": "assistant", "content": content, **message}, "done": done}


def final(reason: str = "stop", **extra: Any) -> dict[str, Any]:
    return {**line(done=True), "done_reason": reason, "total_duration": 4883583458,
            "load_duration": 1334875, "prompt_eval_count": 26,
            "prompt_eval_duration": 342546000, "eval_count": 282,
            "eval_duration": 4535599000, **extra}


def ndjson(*objs: dict[str, Any]) -> bytes:
    return b"".join(orjson.dumps(o) + b"\n" for o in objs)


TEXT = ndjson(line("The"), line(" sky is"), line(" blue — \u2028 because"), line("."), final())
TOOLS = ndjson(
    line(thinking="Need the weather."),
    line(tool_calls=[{"function": {"name": "get_weather", "arguments": {"city": "Toronto"}}}]),
    line(tool_calls=[{"function": {"name": "get_weather",
                                   "arguments": {"city": "Paris", "unit": "c"}}},
                     {"function": {"name": "get_time", "arguments": {}}}]),
    final(),
)
USAGE = {"prompt_tokens": 26, "completion_tokens": 282, "total_tokens": 308}
STREAM_REQ = {"model": "m", "stream": True, "stream_options": {"include_usage": True},
              "messages": [{"role": "user", "content": "hi"}]}


def translate(pieces: list[bytes]) -> bytes:
    enc = ChunkEncoder(completion_id="chatcmpl-t", created=1, model="m", include_usage=True)
    tr = OllamaStreamTranslator(enc, 1 << 20)
    out = b""
    for piece in pieces:
        tr.feed(piece)
        out += enc.take()
    tr.close()
    return out + enc.take()


def check_text(out: bytes) -> None:
    c = collect(sse_chunks(out))
    assert c.error is None and c.done and c.roles == 1 and len(c.ids) == 1
    assert c.content == "The sky is blue — \u2028 because."
    assert c.finish_reason == "stop"
    assert c.usage == USAGE


def check_tools(out: bytes) -> None:
    c = collect(sse_chunks(out))
    assert c.error is None and c.done
    assert c.reasoning == "Need the weather."
    assert [(t["name"], c.args(i)) for i, t in enumerate(c.tool_calls)] == [
        ("get_weather", {"city": "Toronto"}),
        ("get_weather", {"city": "Paris", "unit": "c"}),
        ("get_time", {}),
    ]
    ids = [t["id"] for t in c.tool_calls]
    assert len(set(ids)) == 3 and all(i.startswith("call_") for i in ids)
    assert c.finish_reason == "tool_calls"
    assert c.usage == USAGE


@pytest.mark.parametrize(("body", "check"), [(TEXT, check_text), (TOOLS, check_tools)])
@pytest.mark.parametrize("eol", ["lf", "crlf"])
def test_stream_whole_and_at_random_splits(body: bytes, check: Any, eol: str) -> None:
    if eol == "crlf":
        body = body.replace(b"\n", b"\r\n")
    check(translate([body]))
    rng = random.Random(eol)
    for _ in range(30):
        check(translate(random_splits(body, rng, max_piece=rng.choice([1, 7, 80]))))


@pytest.mark.parametrize(("body", "check"), [(TEXT, check_text), (TOOLS, check_tools)])
async def test_stream_through_the_proxy(proxy: Any, upstream: Any, body: bytes,
                                        check: Any) -> None:
    upstream.content_type = NDJSON
    upstream.pieces = random_splits(body, random.Random(5), max_piece=30)
    client = await proxy(provider_config("ollama", upstream.url))
    resp = await client.post("/v1/chat/completions", json=STREAM_REQ)
    assert resp.status == 200
    check(await resp.read())


def test_done_reason_length() -> None:
    c = collect(sse_chunks(translate([ndjson(line("a"), final("length"))])))
    assert c.finish_reason == "length" and c.content == "a"


def test_error_line_is_an_error_frame() -> None:
    c = collect(sse_chunks(translate([ndjson(line("a")) + b'{"error":"model crashed"}\n'])))
    assert c.content == "a"
    assert c.error is not None and c.error["message"] == "model crashed"
    assert not c.done and c.finish_reason is None


@pytest.mark.parametrize("cut", ["before_done", "mid_line"])
def test_eof_before_done_raises_truncated(cut: str) -> None:
    body = ndjson(line("a"), line("b"))
    if cut == "mid_line":
        body += ndjson(final())[:30]
    enc = ChunkEncoder(completion_id="c", created=1, model="m", include_usage=True)
    tr = OllamaStreamTranslator(enc, 1 << 20)
    tr.feed(body)
    with pytest.raises(StreamTruncated):
        tr.close()


@pytest.mark.parametrize("cut", ["before_done", "mid_line"])
async def test_truncated_stream_through_the_proxy(proxy: Any, upstream: Any, cut: str) -> None:
    upstream.content_type = NDJSON
    upstream.body = TEXT[: TEXT.rindex(b"\n", 0, TEXT.index(b'"done":true')) + 1]
    if cut == "mid_line":
        upstream.body += ndjson(final())[:40]
    client = await proxy(provider_config("ollama", upstream.url))
    resp = await client.post("/v1/chat/completions", json=STREAM_REQ)
    chunks = sse_chunks(await resp.read())
    c = collect(chunks)
    assert c.content == "The sky is blue — \u2028 because."
    assert c.error is not None and c.error["code"] == "upstream_stream_truncated"
    assert "[DONE]" not in chunks and c.finish_reason is None


async def test_request_translation_on_the_wire(proxy: Any, upstream: Any) -> None:
    upstream.content_type = NDJSON
    upstream.body = TEXT
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    client = await proxy(provider_config("ollama", upstream.url, keep_alive="10m",
                                         options={"num_ctx": 8192}))
    resp = await client.post("/v1/chat/completions", json={
        "model": "llama3.2", "stream": True,
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}}]},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "c1", "type": "function",
                 "function": {"name": "lookup", "arguments": '{"q":"cat"}'}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "a cat"},
        ],
        "tools": [{"type": "function", "function": {
            "name": "lookup", "description": "Look up", "strict": True,
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}],
        "max_tokens": 50, "temperature": 0.1, "top_p": 0.8, "stop": ["\n\n"], "seed": 3,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x",
                                                                    "schema": schema}},
        "reasoning_effort": "medium", "logprobs": True, "user": "u",
    })
    assert resp.status == 200
    await resp.read()
    [sent] = upstream.requests
    assert sent.path == "/api/chat"
    assert sent.headers["Authorization"] == "Bearer sk-test-secret"
    assert sent.json() == {
        "model": "llama3.2", "stream": True,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is this?", "images": ["iVBORw0K"]},
            {"role": "assistant", "content": "", "tool_calls": [
                {"function": {"name": "lookup", "arguments": {"q": "cat"}}}]},
            {"role": "tool", "content": "a cat", "tool_name": "lookup"},
        ],
        "options": {"num_ctx": 8192, "num_predict": 50, "temperature": 0.1, "top_p": 0.8,
                    "seed": 3, "stop": ["\n\n"]},
        "format": schema, "think": True, "keep_alive": "10m", "logprobs": True,
        "tools": [{"type": "function", "function": {
            "name": "lookup", "description": "Look up",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}],
    }


@pytest.mark.parametrize(("model", "effort", "think"), [
    # Most thinking models take only true/false ('think value "medium" is not supported').
    ("qwen3:8b", "medium", True), ("deepseek-r1", "minimal", True), ("llama3.2", "high", True),
    ("qwen3", "none", False),
    # gpt-oss takes levels, and always reasons: Ollama reads false as no level (it reasons at
    # its default, medium), and beside a `format` its answer came back empty; low is its least.
    ("gpt-oss:20b", "medium", "medium"), ("gpt-oss:120b", "minimal", "low"),
    ("GPT-OSS", "xhigh", "high"), ("gpt-oss", "max", "high"), ("gpt-oss:20b", "none", "low"),
    ("qwen3", "max", True),
])
def test_reasoning_effort_is_think_true_except_on_gpt_oss(model: str, effort: str,
                                                          think: Any) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "reasoning_effort": effort}
    assert to_ollama(body, model, stream=True)["think"] == think
    assert to_ollama({**body, "think": "high"}, model, stream=True)["think"] == "high"


@pytest.mark.parametrize(("stop", "sent"), [
    (["", "END"], ["END"]), ([""], None), ("", None), ([], None), (" ", [" "]), ("END", ["END"]),
])
def test_an_empty_stop_sequence_is_not_sent(stop: Any, sent: list[str] | None) -> None:
    # Ollama's runner stops at once on an empty sequence (an empty answer, finish "stop"), and
    # `stop: []` replaces the model's own stop tokens (ollama/ollama#3629): an empty sequence
    # cuts nothing, as on Gemini and Bedrock.
    body = {"messages": [{"role": "user", "content": "hi"}], "stop": stop}
    assert to_ollama(body, "llama3.2", stream=True).get("options", {}).get("stop") == sent


async def test_no_key_no_auth_header_and_json_mode(proxy: Any, upstream: Any) -> None:
    upstream.content_type = NDJSON
    upstream.body = TEXT
    client = await proxy(make_config({"local": {"type": "ollama", "base_url": upstream.url,
                                                "default_model": "m"}}, default="local"))
    resp = await client.post("/v1/chat/completions", json={
        **STREAM_REQ, "response_format": {"type": "json_object"}, "tool_choice": "none",
        "tools": [{"type": "function", "function": {"name": "f"}}]})
    await resp.read()
    [sent] = upstream.requests
    assert "Authorization" not in sent.headers
    body = sent.json()
    assert body["format"] == "json" and "tools" not in body


async def test_remote_image_url_is_rejected(proxy: Any, upstream: Any) -> None:
    client = await proxy(provider_config("ollama", upstream.url))
    resp = await client.post("/v1/chat/completions", json={"model": "m", "messages": [
        {"role": "user", "content": [{"type": "image_url",
                                      "image_url": {"url": "http://example.com/a.png"}}]}]})
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == "messages[0].content[0].image_url.url"
    assert upstream.requests == []


async def test_an_unpulled_model_is_openai_s_model_not_found(proxy: Any,
                                                            upstream: Any) -> None:
    # Ollama's 404 for a model it does not have, streamed or not, keeps its status and words;
    # the openai SDK's NotFoundError carries OpenAI's code for it, as the gateway's own
    # unknown model does.
    upstream.status = 404
    upstream.content_type = "application/json"
    upstream.body = b'{"error":"model \\"nope\\" not found, try pulling it first"}'
    client = openai_sdk(await proxy(provider_config("ollama", upstream.url)))
    for stream in (False, True):
        with pytest.raises(openai.NotFoundError) as info:
            await client.chat.completions.create(
                model="nope", messages=[{"role": "user", "content": "hi"}], stream=stream)
        assert info.value.code == "model_not_found"
        assert info.value.body["type"] == "invalid_request_error"  # type: ignore[index]
        assert info.value.message.endswith('model "nope" not found, try pulling it first')


async def test_a_404_that_is_not_ollama_s_own_names_no_model(proxy: Any,
                                                             upstream: Any) -> None:
    # A wrong base_url (an /api/chat that is no Ollama's): Go's plain-text 404, not a model.
    upstream.status = 404
    upstream.content_type = "text/plain"
    upstream.body = b"404 page not found"
    client = await proxy(provider_config("ollama", upstream.url))
    resp = await client.post("/v1/chat/completions", json=STREAM_REQ)
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] != "model_not_found"


NON_STREAM = {**line("Hello!", thinking="greet"), "done": True, "done_reason": "stop",
              "prompt_eval_count": 9, "eval_count": 3}


async def test_non_stream_response(proxy: Any, upstream: Any) -> None:
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps(NON_STREAM)
    client = await proxy(provider_config("ollama", upstream.url))
    resp = await client.post("/v1/chat/completions", json={
        "model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status == 200
    done = await resp.json()
    assert upstream.requests[0].json()["stream"] is False
    assert done["object"] == "chat.completion"
    assert done["choices"][0]["message"]["content"] == "Hello!"
    assert done["choices"][0]["message"]["reasoning_content"] == "greet"
    assert done["choices"][0]["finish_reason"] == "stop"
    assert done["usage"] == {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}


async def test_non_stream_without_done_is_a_protocol_error(proxy: Any, upstream: Any) -> None:
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps(line("Hel"))
    client = await proxy(provider_config("ollama", upstream.url))
    resp = await client.post("/v1/chat/completions", json={
        "model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status == 502


async def test_openai_sdk_streaming_tool_calls(proxy: Any, upstream: Any) -> None:
    upstream.content_type = NDJSON
    upstream.body = TOOLS
    client = openai_sdk(await proxy(provider_config("ollama", upstream.url)))
    got = await read_sdk_stream(await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True}))
    calls, finish, usage = got.tool_calls, got.finish, got.usage
    assert {i: (name, orjson.loads(args)) for i, (_, name, args) in calls.items()} == {
        0: ("get_weather", {"city": "Toronto"}),
        1: ("get_weather", {"city": "Paris", "unit": "c"}),
        2: ("get_time", {})}
    assert finish == "tool_calls"
    assert usage is not None and usage.total_tokens == 308


async def test_openai_sdk_non_streaming(proxy: Any, upstream: Any) -> None:
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps(NON_STREAM)
    client = openai_sdk(await proxy(provider_config("ollama", upstream.url)))
    done = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}])
    assert done.choices[0].message.content == "Hello!"
    assert done.usage.completion_tokens == 3


async def test_openai_sdk_sees_a_truncated_stream_as_an_error(proxy: Any,
                                                              upstream: Any) -> None:
    upstream.content_type = NDJSON
    upstream.body = ndjson(line("partial"))
    client = openai_sdk(await proxy(provider_config("ollama", upstream.url)))
    stream = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
    text = ""
    with pytest.raises(openai.APIError, match="closed the stream"):
        async for chunk in stream:
            text += chunk.choices[0].delta.content or "" if chunk.choices else ""
    assert text == "partial"


def test_assistant_reasoning_goes_back_as_thinking() -> None:
    # Ollama's docs ask for an assistant turn's `thinking` in the history (gpt-oss otherwise
    # forgets why it called its tools); we stream it as `reasoning_content`.
    body = {"messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "reasoning_content": "Need the weather tool.",
         "tool_calls": [{"id": "c1", "type": "function",
                         "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "18C"},
        {"role": "assistant", "content": "It is 18C.", "reasoning_content": ""},
    ]}
    messages = to_ollama(body, "gpt-oss:20b", stream=True)["messages"]
    assert messages[1] == {"role": "assistant", "content": "", "thinking": "Need the weather tool.",
                           "tool_calls": [{"function": {"name": "get_weather",
                                                        "arguments": {"city": "Paris"}}}]}
    assert messages[3] == {"role": "assistant", "content": "It is 18C."}


# History collected through OpenRouter, Groq or vLLM (then sent here, by a fallback or a
# client that changed providers) names the reasoning `reasoning`; OpenRouter's answers also
# carry it as `reasoning_details` entries (encrypted ones have no text).
@pytest.mark.parametrize("fields", [
    {"reasoning": "Need the weather tool."},
    {"reasoning_details": [{"type": "reasoning.text", "text": "Need the ", "format": "unknown",
                            "index": 0},
                           {"type": "reasoning.encrypted", "data": "b64", "index": 1},
                           {"type": "reasoning.summary", "summary": "weather tool."}]},
    {"reasoning_content": "Need the weather tool.", "reasoning": "other"},
    {"reasoning_content": "", "reasoning": "Need the weather tool."},
])
def test_reasoning_under_other_names_goes_back_as_thinking(fields: dict[str, Any]) -> None:
    body = {"messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, **fields,
         "tool_calls": [{"id": "c1", "type": "function",
                         "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "18C"},
    ]}
    messages = to_ollama(body, "gpt-oss:20b", stream=True)["messages"]
    assert messages[1]["thinking"] == "Need the weather tool."


def test_tool_results_go_in_the_order_of_their_calls() -> None:
    # Calls and results go to Ollama without ids: the model reads a turn's results in order, so
    # parallel calls answered in another order (as each finished) would swap their results.
    def call(call_id: str, city: str) -> dict[str, Any]:
        return {"id": call_id, "type": "function",
                "function": {"name": "get_weather", "arguments": f'{{"city": "{city}"}}'}}
    body = {"messages": [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [call("c1", "Paris"),
                                                               call("c2", "Rome")]},
        {"role": "tool", "tool_call_id": "c2", "content": "rain"},
        {"role": "tool", "tool_call_id": "other", "content": "?"},
        {"role": "tool", "tool_call_id": "c1", "content": "sun"},
        {"role": "user", "content": "And Oslo?"},
    ]}
    messages = to_ollama(body, "llama3.2", stream=True)["messages"]
    assert [m["content"] for m in messages[2:]] == ["sun", "rain", "?", "And Oslo?"]
    assert messages[2]["tool_name"] == messages[3]["tool_name"] == "get_weather"


def test_text_parts_of_every_role_are_joined_as_a_user_s_are() -> None:
    # Ollama's message content is one string; parts joined with nothing ran words together
    # ("Be brief.Answer in French."). Every role joins them as a user message does.
    parts = [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use French."}]
    body = {"messages": [
        {"role": "system", "content": parts},
        {"role": "user", "content": parts},
        {"role": "assistant", "content": parts, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": parts},
    ]}
    messages = to_ollama(body, "llama3.2", stream=True)["messages"]
    assert [m["content"] for m in messages] == ["Be brief.\nUse French."] * 4


@pytest.mark.parametrize("keep_alive", [True, False, {"m": 5}, ["5m"]])
def test_a_keep_alive_ollama_cannot_read_is_a_400_naming_it(keep_alive: Any) -> None:
    # Ollama reads keep_alive as a duration string or a number of seconds and answers anything
    # else with a 400 ("Unsupported type: 'bool'") that names no field, after a round trip.
    body = {"messages": [{"role": "user", "content": "hi"}], "keep_alive": keep_alive}
    with pytest.raises(InvalidRequest) as caught:
        to_ollama(body, "llama3.2", stream=True)
    assert (caught.value.param, caught.value.code) == ("keep_alive", "invalid_type")
    for fine in ("10m", -1, 0, 300, 1.5):
        assert to_ollama({**body, "keep_alive": fine}, "llama3.2",
                         stream=True)["keep_alive"] == fine


@pytest.mark.parametrize("keep_alive", ["300", "-1", "", "forever", "5 m", "5M", ".m", "1.5"])
def test_a_keep_alive_string_that_is_no_go_duration_is_a_400_naming_it(keep_alive: str) -> None:
    # Ollama parses a keep_alive string with Go's time.ParseDuration, which wants a unit on
    # every number ("0" alone aside): "300" or "-1" as a string was its 400 "time: missing unit
    # in duration", naming no field, after a round trip.
    body = {"messages": [{"role": "user", "content": "hi"}], "keep_alive": keep_alive}
    with pytest.raises(InvalidRequest) as caught:
        to_ollama(body, "llama3.2", stream=True)
    assert (caught.value.param, caught.value.code) == ("keep_alive", "invalid_type")


@pytest.mark.parametrize("keep_alive", ["0", "-1m", "+5m", "1h30m", "2h45m", "300ms", "1.5h",
                                        ".5s", "1.s", "10us", "10\u00b5s", "24h"])
def test_a_go_duration_keep_alive_goes_as_it_is(keep_alive: str) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "keep_alive": keep_alive}
    assert to_ollama(body, "llama3.2", stream=True)["keep_alive"] == keep_alive


@pytest.mark.parametrize(("value", "ok"), [
    ("true", False), ("no", False), ("[5m]", False), ("10m", True), ("-1", True), ("1.5", True),
    ("'-1'", False), ("'300'", False), ("forever", False), ("1h30m", True),
])
def test_a_configured_keep_alive_ollama_cannot_read_is_a_config_error(
        tmp_path: Path, value: str, ok: bool) -> None:
    # YAML's true/no are booleans, which passed the check (a bool is an int to Python) and
    # then failed every request at Ollama; a number of seconds with a fraction was refused.
    path = tmp_path / "streamproxy.yaml"
    path.write_text(f"providers: {{o: {{type: ollama, keep_alive: {value}}}}}")
    if ok:
        load_config(path)
        return
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "providers.o.keep_alive"


def test_empty_text_parts_of_a_user_message_add_no_blank_line() -> None:
    # Other roles' empty parts are left out (`texts`); a user's were joined as they came, so
    # ["Be brief.", "", "Use French."] reached the model with an empty line between them (and
    # an image's empty caption part as a leading line).
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    parts = [{"type": "text", "text": ""}, image, {"type": "text", "text": "Be brief."},
             {"type": "text", "text": ""}, {"type": "text", "text": "Use French."}]
    [msg] = to_ollama({"messages": [{"role": "user", "content": parts}]}, "llama3.2",
                      stream=True)["messages"]
    assert msg["content"] == "Be brief.\nUse French."
    assert msg["images"] == ["iVBORw0KGgo="]
    [msg] = to_ollama({"messages": [{"role": "user", "content": [image, {"type": "text"}]}]},
                      "llama3.2", stream=True)["messages"]
    assert msg["content"] == ""


def test_tool_results_follow_the_calls_of_assistant_messages_in_a_row() -> None:
    # Two assistant messages in a row ask one turn's calls: a result answering the second's
    # call goes after the first's.
    def call(call_id: str, city: str) -> dict[str, Any]:
        return {"id": call_id, "type": "function",
                "function": {"name": "get_weather", "arguments": f'{{"city": "{city}"}}'}}
    body = {"messages": [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "Paris first.", "tool_calls": [call("c1", "Paris")]},
        {"role": "assistant", "content": None, "tool_calls": [call("c2", "Rome")]},
        {"role": "tool", "tool_call_id": "c2", "content": "rain"},
        {"role": "tool", "tool_call_id": "c1", "content": "sun"},
    ]}
    messages = to_ollama(body, "llama3.2", stream=True)["messages"]
    assert [m["content"] for m in messages[3:]] == ["sun", "rain"]


def test_calls_sharing_an_id_keep_their_own_results() -> None:
    # Some OpenAI-compatible servers give a turn's calls one id (e.g. "call_0" each): the
    # translator kept one call per id, the last, so both results went as that call's (its
    # tool_name, its place) and the model read the weather as the time. Results of a shared
    # id answer its calls in order, as they are sent.
    def call(name: str) -> dict[str, Any]:
        return {"id": "call_0", "type": "function", "function": {"name": name, "arguments": "{}"}}
    body = {"messages": [
        {"role": "user", "content": "Weather and time in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call("get_weather"),
                                                               call("get_time")]},
        {"role": "tool", "tool_call_id": "call_0", "content": "sun"},
        {"role": "tool", "tool_call_id": "call_0", "content": "noon"},
        {"role": "assistant", "content": None, "tool_calls": [call("get_date")]},
        {"role": "tool", "tool_call_id": "call_0", "content": "May 1"},
    ]}
    messages = to_ollama(body, "llama3.2", stream=True)["messages"]
    assert [(m["content"], m["tool_name"]) for m in messages if m["role"] == "tool"] == [
        ("sun", "get_weather"), ("noon", "get_time"), ("May 1", "get_date")]
    # The same turn asked in two assistant messages in a row.
    body["messages"][1:2] = [{"role": "assistant", "content": "First the weather.",
                              "tool_calls": [call("get_weather")]},
                             {"role": "assistant", "content": None,
                              "tool_calls": [call("get_time")]}]
    messages = to_ollama(body, "llama3.2", stream=True)["messages"]
    assert [(m["content"], m["tool_name"]) for m in messages if m["role"] == "tool"] == [
        ("sun", "get_weather"), ("noon", "get_time"), ("May 1", "get_date")]


def test_tool_call_arguments_go_back_as_an_object() -> None:
    # Ollama takes a call's arguments as an object only (a JSON string or list is its 400);
    # OpenAI takes any arguments string in the history. As on Anthropic, Gemini and Bedrock, a
    # non-object value is wrapped.
    def turn(arguments: str) -> dict[str, Any]:
        return {"messages": [{"role": "user", "content": "Weather?"}, {
            "role": "assistant", "content": None, "tool_calls": [{
                "id": "c1", "type": "function",
                "function": {"name": "get_weather", "arguments": arguments}}]}]}
    sent = [to_ollama(turn(arguments), "llama3.2", stream=True)["messages"][1]["tool_calls"]
            for arguments in ('"Paris"', "[1]", "", '{"city": "Paris"}')]
    assert [calls[0]["function"]["arguments"] for calls in sent] == [
        {"value": "Paris"}, {"value": [1]}, {}, {"city": "Paris"}]


PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAA"  # a PNG's first 18 bytes


def _images(url: str) -> Any:
    return to_ollama({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is it?"},
        {"type": "image_url", "image_url": {"url": url}}]}]},
        "gemma3", stream=False)["messages"][0]["images"]


@pytest.mark.parametrize("url", [
    f"data:image/png;base64,{PNG_B64}",
    f"data:IMAGE/PNG;charset=utf-8;base64,{PNG_B64}",
    f"data:application/octet-stream;base64,{PNG_B64}",  # a generic label: the bytes say PNG
])
def test_an_image_data_url_goes_as_its_base64(url: str) -> None:
    assert _images(url) == [PNG_B64]


@pytest.mark.parametrize("url", [
    "data:application/pdf;base64,JVBERi0xLjQK",  # a PDF is no image: Ollama cannot decode it
    "data:text/plain;base64,aGVsbG8=",
    "https://example.com/cat.png",  # Ollama takes base64 only; the proxy fetches nothing
    f"data:image/png,{PNG_B64}",
])
def test_what_ollama_cannot_take_as_an_image_is_a_400_naming_it(url: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        _images(url)
    assert info.value.param == "messages[0].content[1].image_url.url"


SVG_B64 = "PHN2ZyB4bWxucz0iaHR0cDovL3d3dy53My5vcmcvMjAwMC9zdmciLz4="  # <svg xmlns=…/>


@pytest.mark.parametrize(("url", "named"), [
    # Neither of Ollama's image decoders reads these: the client got Ollama's decode error
    # ("image: unknown format"), naming no part, after the model had loaded.
    (f"data:image/svg+xml;base64,{SVG_B64}", "image/svg+xml"),
    ("data:image/heic;base64,AAAAGGZ0eXBoZWlj", "image/heic"),
    ("data:image/avif;base64,AAAAHGZ0eXBhdmlm", "image/avif"),
    ("data:image/x-icon;base64,AAABAAEAEBA=", "image/x-icon"),
])
def test_an_image_type_ollama_cannot_decode_is_a_400_naming_the_part(url: str,
                                                                    named: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        _images(url)
    assert info.value.param == "messages[0].content[1].image_url.url"
    assert named in str(info.value)


@pytest.mark.parametrize("url", [
    "data:image/jpeg;base64,/9j/4AAQSkZJRg==",
    "data:image/jpg;base64,/9j/4AAQSkZJRg==",
    "data:image/webp;base64,UklGRiQAAABXRUJQVlA4IA==",
    "data:image/gif;base64,R0lGODlhAQABAAAAACw=",  # llama.cpp's decoder (older models) reads it
    "data:image/bmp;base64,Qk0eAAAAAAAAABoAAAA=",
    "data:image/tiff;base64,SUkqAAgAAAA=",
])
def test_an_image_type_one_of_ollamas_decoders_reads_goes_on(url: str) -> None:
    assert _images(url) == [url.partition(",")[2]]


def test_the_configured_options_partition_the_cache() -> None:
    # A provider's `options` (num_predict, temperature, stop, num_ctx…) change the answer, as
    # Anthropic's betas do: after an operator raised `num_predict` (a reload, or another
    # instance on the same Redis), answers cut at the old cap were still served from the
    # cache. `keep_alive` changes no answer: it shares the key.
    from streamproxy.cache.service import _key
    from streamproxy.openai_api.request import parse_chat_request
    from streamproxy.routing.target import Target
    from streamproxy.server.app import build_providers

    req = parse_chat_request(b'{"model":"m","messages":[{"role":"user","content":"x"}]}')

    def key(**options: Any) -> str:
        config = make_config({"local": {"type": "ollama", "default_model": "m", **options}})
        return _key("ns", req, Target(build_providers(config)["local"], "m"))

    assert key(options={"num_predict": 64}) != key(options={"num_predict": 4096})
    assert key(options={"num_predict": 64}) != key()
    assert key(keep_alive="5m") == key(keep_alive=-1) == key()


def test_prompt_tokens_read_from_the_cache_are_cached_tokens() -> None:
    # Ollama's final line counts the prompt's tokens found in its KV cache apart
    # (`prompt_eval_cached_count`, within `prompt_eval_count`): OpenAI's `cached_tokens`.
    out = translate([ndjson(line("Hi"), final(prompt_eval_count=900,
                                              prompt_eval_cached_count=850, eval_count=5))])
    usage = sse_chunks(out)[-2]["usage"]  # (the usage chunk, before [DONE])
    assert usage == {"prompt_tokens": 900, "completion_tokens": 5, "total_tokens": 905,
                     "prompt_tokens_details": {"cached_tokens": 850}}


def test_ollama_option_names_at_the_top_level_go_into_options() -> None:
    # A client's extra_body with Ollama's own option names (as LiteLLM's ollama_chat takes
    # them): num_ctx left out, Ollama's default context cuts a long prompt's start in silence.
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 9, "num_ctx": 32768,
            "min_p": 0.05, "typical_p": 0.9, "repeat_penalty": 1.1, "repeat_last_n": 128,
            "options": {"num_ctx": 4096, "min_p": 0.2, "mirostat": 1}}
    assert to_ollama(body, "llama3.2", stream=True)["options"] == {
        "num_ctx": 32768, "min_p": 0.05, "typical_p": 0.9, "repeat_penalty": 1.1,
        "repeat_last_n": 128, "mirostat": 1, "num_predict": 9}


def test_ollama_num_predict_and_other_options_at_the_top_level_go_into_options() -> None:
    # Ollama documents every option (num_predict, mirostat, tfs_z…) under `options` only; a
    # client's extra_body sends them at the top level, as LiteLLM's ollama_chat passes them on.
    # A top-level num_predict was dropped: the answer ran to Ollama's default length.
    body = {"messages": [{"role": "user", "content": "hi"}], "num_predict": 64, "mirostat": 2,
            "mirostat_tau": 4.0, "tfs_z": 0.9, "num_keep": 5, "penalize_newline": False,
            "options": {"num_predict": 8}}
    assert to_ollama(body, "llama3.2", stream=True)["options"] == {
        "num_predict": 64, "mirostat": 2, "mirostat_tau": 4.0, "tfs_z": 0.9, "num_keep": 5,
        "penalize_newline": False}
    # OpenAI's cap wins over Ollama's name for it, wherever that is
    for cap in ("max_tokens", "max_completion_tokens"):
        assert to_ollama({**body, cap: 9}, "llama3.2",
                         stream=True)["options"]["num_predict"] == 9


def test_truncate_and_shift_go_to_ollama() -> None:
    # Ollama's own switches for a prompt over the context: `truncate: false` asks for its 400
    # (context_length_exceeded) where it would cut the history's start in silence, `shift:
    # false` ends the answer (`length`) where it would slide the context. They were dropped.
    body = {"messages": [{"role": "user", "content": "hi"}]}
    for value in (False, True):
        out = to_ollama({**body, "truncate": value, "shift": value}, "llama3.2", stream=True)
        assert (out["truncate"], out["shift"]) == (value, value)
    out = to_ollama({**body, "truncate": None}, "llama3.2", stream=True)
    assert "truncate" not in out and "shift" not in out


@pytest.mark.parametrize("key", ["truncate", "shift"])
@pytest.mark.parametrize("value", ["false", 0, {"x": 1}])
def test_a_truncate_or_shift_that_is_no_bool_is_a_400_naming_it(key: str, value: Any) -> None:
    # Ollama refuses the request ("cannot unmarshal … of type bool"), naming no field
    body = {"messages": [{"role": "user", "content": "hi"}], key: value}
    with pytest.raises(InvalidRequest) as caught:
        to_ollama(body, "llama3.2", stream=True)
    assert (caught.value.param, caught.value.code) == (key, "invalid_type")


@pytest.mark.parametrize(("option", "value", "ok"), [
    ("num_ctx", '"8k"', False), ("num_ctx", "true", False), ("num_ctx", "8192", True),
    ("temperature", "hot", False), ("temperature", "0.7", True), ("temperature", "1", True),
    ("stop", '"<|end|>"', False), ("stop", "[1, 2]", False), ("stop", '["<|end|>"]', True),
    ("use_mmap", '"yes"', False), ("use_mmap", "false", True),
    ("some_new_option", '"x"', True),  # one Ollama may take that we do not know of
])
def test_a_configured_ollama_option_of_the_wrong_type_is_a_config_error(
        tmp_path: Path, option: str, value: str, ok: bool) -> None:
    # Ollama refuses every request whose option has the wrong type ("option \"num_ctx\" must
    # be of type integer", a 400 the client took for its own mistake): a config's is caught
    # at load, naming it.
    path = tmp_path / "streamproxy.yaml"
    path.write_text(f"providers: {{o: {{type: ollama, options: {{{option}: {value}}}}}}}")
    if ok:
        load_config(path)
        return
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == f"providers.o.options.{option}"


@pytest.mark.parametrize(("extra", "param"), [
    ({"num_ctx": "8k"}, "num_ctx"), ({"repeat_penalty": "1.1"}, "repeat_penalty"),
    ({"repetition_penalty": "1.1"}, "repetition_penalty"), ({"num_predict": True}, "num_predict"),
    ({"use_mmap": "yes"}, "use_mmap"), ({"options": {"num_ctx": "8k"}}, "options.num_ctx"),
    ({"options": {"stop": "<|end|>"}}, "options.stop"),
])
def test_a_clients_ollama_option_of_the_wrong_type_is_a_400_naming_it(
        extra: dict[str, Any], param: str) -> None:
    # Ollama refuses it with its 500 ("option \"num_ctx\" must be of type integer"): a server
    # error the gateway retried and fell back on, for the client's own mistake.
    body = {"messages": [{"role": "user", "content": "hi"}], **extra}
    with pytest.raises(InvalidRequest) as caught:
        to_ollama(body, "llama3.2", stream=True)
    assert (caught.value.param, caught.value.code) == (param, "invalid_type")
    # a number for a number, and a name Ollama does not know, still go as they are
    ok = {"messages": body["messages"], "num_ctx": 8192.0, "options": {"new_option": "x"}}
    assert to_ollama(ok, "llama3.2", stream=True)["options"] == {"new_option": "x",
                                                                  "num_ctx": 8192.0}


def test_repetition_penalty_is_ollamas_repeat_penalty() -> None:
    # vLLM's and OpenRouter's name for the same multiplicative penalty (1.0: none) was dropped;
    # Ollama's own name, sent too, wins
    body = {"messages": [{"role": "user", "content": "hi"}], "repetition_penalty": 1.15}
    out = to_ollama(body, "llama3.2", stream=True)
    assert out["options"]["repeat_penalty"] == 1.15 and "repetition_penalty" not in out
    out = to_ollama({**body, "repeat_penalty": 1.3}, "llama3.2", stream=True)
    assert out["options"]["repeat_penalty"] == 1.3


# Ollama's refusals to take a request now: its scheduler's queue full (OLLAMA_MAX_QUEUE,
# ollama/ollama#4159) and ollama.com's overload (ollama/ollama#15934) are its HTTP 503; a
# server that sends one as a line (after its 200) said it no other way
@pytest.mark.parametrize(("message", "status"), [
    ("server busy, please try again.  maximum pending requests exceeded", 503),
    ("Server overloaded, please retry shortly (ref: aaa65c70-cfa0-446b-86f1-4ab0e2deb9e4)", 503),
    ("model runner has unexpectedly stopped", 502),
])
def test_a_busy_line_is_a_retryable_503(message: str, status: int) -> None:
    # it was a 502 (a gateway fault), with no overload for a client's or a config's retry
    builder = CompletionBuilder()
    OllamaStreamTranslator(builder, 1 << 20).feed(orjson.dumps({"error": message}) + b"\n")
    assert builder.failure is not None and builder.failure.status == status
    assert builder.failure.message == message
    up = OllamaProvider(provider_config("ollama", "http://127.0.0.1:9").providers["up"])
    answered = up.answered_error(orjson.dumps({"error": message}))  # a stream request's 200
    assert answered.status == status and answered.message == message


@pytest.mark.parametrize("fmt", ["json", {"type": "object",
                                           "properties": {"a": {"type": "integer"}}}])
def test_a_native_format_goes_to_ollama(fmt: Any) -> None:
    # Ollama's own `format` (extra_body, as its native API and LiteLLM's ollama_chat take it)
    # was dropped in silence, beside the native think, keep_alive and options that go: the
    # client got free text where it asked for JSON. It wins over a response_format, as think
    # over reasoning_effort.
    body = {"messages": [{"role": "user", "content": "hi"}], "format": fmt}
    assert to_ollama(body, "llama3.2", stream=True)["format"] == fmt
    both = {**body, "response_format": {"type": "json_object"}}
    assert to_ollama(both, "llama3.2", stream=True)["format"] == fmt
    assert "format" not in to_ollama({**body, "format": None}, "llama3.2", stream=True)


@pytest.mark.parametrize("url", ["http://localhost:11434/v1", "http://localhost:11434/v1/",
                                 "http://localhost:11434/api", "https://ollama.example.com/V1"])
def test_a_base_url_of_ollamas_openai_or_api_path_is_a_config_error(
        tmp_path: Path, url: str) -> None:
    # `http://localhost:11434/v1`, as OpenAI clients are pointed at Ollama, passed check-config;
    # every request then went to /v1/api/chat (or /api/api/chat), Ollama's plain-text 404.
    path = tmp_path / "streamproxy.yaml"
    path.write_text(f"providers: {{o: {{type: ollama, base_url: '{url}'}}}}")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "providers.o.base_url"
    assert "/api/chat" in info.value.reason and "type: openai" in info.value.reason


def test_a_base_url_with_a_path_of_its_own_is_ollamas_root(tmp_path: Path) -> None:
    path = tmp_path / "streamproxy.yaml"  # (Ollama behind a reverse proxy's path)
    path.write_text("providers: {o: {type: ollama, base_url: 'https://gw.example.com/ollama'}}")
    assert load_config(path).providers["o"].base_url == "https://gw.example.com/ollama"
