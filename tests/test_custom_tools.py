"""OpenAI's custom (freeform-input) tools and allowed_tools choices: forwarded as written to
OpenAI-type providers, refused with a clear 400 by the providers that translate the request,
and captured in their own shape from a streamed answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from streamproxy.cache.entry import streams_whole
from streamproxy.openai_api.completion import CompletionBuilder
from tests.conftest import provider_config
from tests.helpers import fixture_bytes, jsonl_to_sse, make_config, openai_sdk
from tests.test_storage import stored, stream_text

CUSTOM_TOOL = {"type": "custom", "custom": {"name": "run_sql", "description": "SQL to run"}}
FUNCTION_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {}}}}
ALLOWED = {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [
    {"type": "custom", "name": "run_sql"}]}}
CUSTOM_CALL = {"id": "call_1", "type": "custom",
               "custom": {"name": "run_sql", "input": "SELECT 1"}}
HISTORY = [{"role": "user", "content": "count"},
           {"role": "assistant", "content": None, "tool_calls": [CUSTOM_CALL]},
           {"role": "tool", "tool_call_id": "call_1", "content": "1"}]


@pytest.mark.parametrize("extra", [
    {"tools": [CUSTOM_TOOL, FUNCTION_TOOL], "tool_choice": ALLOWED},
    {"tools": [CUSTOM_TOOL], "tool_choice": {"type": "custom", "custom": {"name": "run_sql"}}},
    {"tools": [CUSTOM_TOOL], "messages": HISTORY},
    {"functions": [FUNCTION_TOOL["function"]], "function_call": {"name": "get_weather"}},
    {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}},
    {"web_search_options": {}},
])
async def test_an_openai_type_provider_gets_them_as_written(proxy: Any, upstream: Any,
                                                            extra: dict[str, Any]) -> None:
    upstream.body = fixture_bytes("openai/pydantic-ai_run_stream_sync.response0.sse")
    client = await proxy(provider_config("openai", upstream.url))
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}],
            **extra}
    resp = await client.post("/v1/chat/completions", json=body)
    assert resp.status == 200
    [sent] = upstream.requests
    assert {k: sent.json()[k] for k in extra} == extra


@pytest.mark.parametrize("kind", ["anthropic", "gemini", "cohere", "ollama", "mistral"])
@pytest.mark.parametrize(("extra", "param"), [
    ({"tools": [CUSTOM_TOOL]}, "tools"),
    # (the tools are functions: the choice, allowing a custom tool, is what is refused)
    ({"tools": [FUNCTION_TOOL], "tool_choice": ALLOWED}, "tool_choice"),
    ({"tools": [FUNCTION_TOOL], "messages": HISTORY}, "tools"),
])
async def test_a_translating_provider_refuses_them_with_a_400(
        proxy: Any, upstream: Any, kind: str, extra: dict[str, Any], param: str) -> None:
    client = await proxy(provider_config(kind, upstream.url))
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
    resp = await client.post("/v1/chat/completions", json=body)
    assert resp.status == 400
    err = (await resp.json())["error"]
    assert (err["code"], err["param"]) == ("unsupported_value", param)
    assert "provider 'up'" in err["message"] and "custom tools" in err["message"]
    assert upstream.requests == []


@pytest.mark.parametrize("kind", ["anthropic", "gemini", "bedrock", "cohere", "ollama",
                                  "mistral"])
async def test_a_translating_provider_refuses_deprecated_functions_with_a_400(
        proxy: Any, upstream: Any, kind: str) -> None:
    # Dropped, the model could never call one: a plain answer where a function_call is awaited.
    extra = {"region": "us-east-1", "api_key": "k"} if kind == "bedrock" else {}
    client = await proxy(provider_config(kind, upstream.url, **extra))
    resp = await client.post("/v1/chat/completions", json={
        "model": "m", "messages": [{"role": "user", "content": "hi"}],
        "functions": [FUNCTION_TOOL["function"]], "function_call": "auto"})
    assert resp.status == 400
    err = (await resp.json())["error"]
    assert (err["code"], err["param"]) == ("unsupported_value", "functions")
    assert "provider 'up'" in err["message"] and "'tools'" in err["message"]
    assert upstream.requests == []


_AUDIO = ({"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}},
          "modalities")
_WEB_SEARCH = ({"web_search_options": {}}, "web_search_options")


# (Gemini searches with Google Search: test_gemini_grounding.py)
@pytest.mark.parametrize(("kind", "extra", "param"), [
    *((kind, *_AUDIO) for kind in ("anthropic", "gemini", "bedrock", "cohere", "ollama",
                                   "mistral")),
    *((kind, *_WEB_SEARCH) for kind in ("anthropic", "bedrock", "cohere", "ollama", "mistral")),
])
async def test_a_translating_provider_refuses_audio_answers_and_web_search_with_a_400(
        proxy: Any, upstream: Any, kind: str, extra: dict[str, Any], param: str) -> None:
    # Dropped, the client would get a silent text answer, or one from no search.
    settings = {"region": "us-east-1", "api_key": "k"} if kind == "bedrock" else {}
    client = await proxy(provider_config(kind, upstream.url, **settings))
    resp = await client.post("/v1/chat/completions", json={
        "model": "m", "messages": [{"role": "user", "content": "hi"}], **extra})
    assert resp.status == 400
    err = (await resp.json())["error"]
    assert (err["code"], err["param"]) == ("unsupported_value", param)
    assert "provider 'up'" in err["message"]
    assert upstream.requests == []


@pytest.mark.parametrize(("override", "param"), [
    ({"tools": [CUSTOM_TOOL]}, "tools"),
    ({"functions": [FUNCTION_TOOL["function"]]}, "functions"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"web_search_options": {}}, "web_search_options"),
])
async def test_a_targets_override_params_are_refused_as_the_requests_own(
        proxy: Any, upstream: Any, override: dict[str, Any], param: str) -> None:
    """A target's override_params go on top of the request: the refusals looked at the
    request's body alone, so these reached the translator and were dropped (or, custom tools,
    a 500)."""
    client = await proxy(provider_config("anthropic", upstream.url))
    resp = await client.post("/v1/chat/completions", headers={
        "x-portkey-config": orjson.dumps({"provider": "up", "override_params": override}).decode()},
        json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status == 400
    err = (await resp.json())["error"]
    assert (err["code"], err["param"]) == ("unsupported_value", param)
    assert upstream.requests == []


async def test_text_only_modalities_still_go_to_a_translating_provider(
        proxy: Any, upstream: Any) -> None:
    upstream.body = jsonl_to_sse(fixture_bytes("anthropic/vercel-ai_anthropic-text.chunks.jsonl"))
    client = await proxy(provider_config("anthropic", upstream.url))
    resp = await client.post("/v1/chat/completions", json={
        "model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True,
        "modalities": ["text"]})
    assert resp.status == 200
    assert len(upstream.requests) == 1


@pytest.mark.parametrize(("extra", "param"), [
    ({"tools": [{"type": "custom", "custom": {}}]}, "tools[0].custom.name"),
    ({"tool_choice": {"type": "allowed_tools"}}, "tool_choice"),
    ({"tool_choice": {"type": "custom", "custom": {"name": 5}}}, "tool_choice"),
])
async def test_malformed_custom_forms_are_still_400(default_proxy: Any, extra: dict[str, Any],
                                                     param: str) -> None:
    client = await default_proxy()
    resp = await client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "hi"}], **extra})
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == param


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    return b"data: " + orjson.dumps({
        "id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": "gpt",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + b"\n\n"


CUSTOM_STREAM = b"".join([
    _chunk({"role": "assistant", "content": None}),
    _chunk({"tool_calls": [{"index": 0, "id": "call_9", "type": "custom",
                            "custom": {"name": "run_sql", "input": "SELECT "}}]}),
    _chunk({"tool_calls": [{"index": 0, "custom": {"input": "1"}}]}),
    _chunk({}, "tool_calls"), b"data: [DONE]\n\n"])


def test_a_captured_custom_call_keeps_its_shape_and_is_not_replayable() -> None:
    builder = CompletionBuilder()
    for event in CUSTOM_STREAM.split(b"\n\n")[:-2]:
        builder.raw_chunk(event[len(b"data: "):])
    assert builder.message()["tool_calls"] == [
        {"id": "call_9", "type": "custom", "custom": {"name": "run_sql", "input": "SELECT 1"}}]
    assert not builder.replayable  # a replay would turn it into a function call


def test_a_non_streamed_answer_with_a_custom_call_is_not_replayed_as_a_stream() -> None:
    completion = {"choices": [{"message": {"role": "assistant", "tool_calls": [CUSTOM_CALL]}}]}
    assert not streams_whole({"completion": completion})
    completion["choices"][0]["message"]["tool_calls"] = [{"type": "function", "function": {}}]
    assert streams_whole({"completion": completion})


async def test_a_streamed_custom_call_is_stored_as_one(proxy: Any, upstream: Any,
                                                       tmp_path: Path) -> None:
    upstream.body = CUSTOM_STREAM
    cfg = make_config({"oa": {"type": "openai", "base_url": upstream.url, "api_key": "sk-x",
                              "default_model": "gpt"}}, default="oa",
                      storage={"path": str(tmp_path / "s.sqlite3")})
    api = openai_sdk(await proxy(cfg), "sk-client")
    cid, _ = await stream_text(api, model="gpt", messages=[{"role": "user", "content": "count"}],
                               tools=[CUSTOM_TOOL], store=True)
    [call] = (await stored(api, cid)).choices[0].message.tool_calls
    assert (call.type, call.custom.name, call.custom.input) == ("custom", "run_sql", "SELECT 1")


OTHER_TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {}}}}
ALLOWED_FUNCTIONS = {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [
    {"type": "function", "function": {"name": "get_weather"}}]}}


def _sent_tools(kind: str, sent: dict[str, Any]) -> tuple[list[str], Any]:
    """The tool names and the tool choice a translator sent, in its provider's words."""
    if kind == "anthropic":
        return [t["name"] for t in sent["tools"]], sent.get("tool_choice")
    if kind == "bedrock":
        config = sent["toolConfig"]
        return [t["toolSpec"]["name"] for t in config["tools"]], config.get("toolChoice")
    if kind == "gemini":
        return ([d["name"] for d in sent["tools"][0]["functionDeclarations"]],
                sent.get("toolConfig"))
    return [t["function"]["name"] for t in sent["tools"]], sent.get("tool_choice")


@pytest.mark.parametrize(("kind", "forced"), [
    ("anthropic", {"type": "any"}),
    ("bedrock", {"any": {}}),
    ("gemini", {"functionCallingConfig": {"mode": "ANY"}}),
    ("cohere", "REQUIRED"),
    ("ollama", None),  # (Ollama cannot force a call: required is best effort)
    ("mistral", "any"),
])
async def test_an_allowed_tools_choice_of_functions_sends_only_those(
        proxy: Any, upstream: Any, kind: str, forced: Any) -> None:
    """An allowed_tools choice listing function tools only was refused by every translating
    provider; it goes as the tools it allows, with its mode as the provider's choice."""
    settings = {"region": "us-east-1", "api_key": "k"} if kind == "bedrock" else {}
    client = await proxy(provider_config(kind, upstream.url, **settings))
    await client.post("/v1/chat/completions", json={
        "model": "m", "messages": [{"role": "user", "content": "hi"}],
        "tools": [FUNCTION_TOOL, OTHER_TOOL], "tool_choice": ALLOWED_FUNCTIONS})
    [sent] = upstream.requests
    assert _sent_tools(kind, sent.json()) == (["get_weather"], forced)


@pytest.mark.parametrize("kind", ["anthropic", "cohere", "mistral"])
async def test_an_allowed_tools_choice_in_auto_mode_lets_the_model_choose(
        proxy: Any, upstream: Any, kind: str) -> None:
    client = await proxy(provider_config(kind, upstream.url))
    choice = {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [
        {"type": "function", "function": {"name": "get_time"}}]}}
    await client.post("/v1/chat/completions", json={
        "model": "m", "messages": [{"role": "user", "content": "hi"}],
        "tools": [FUNCTION_TOOL, OTHER_TOOL], "tool_choice": choice})
    [sent] = upstream.requests
    names, mapped = _sent_tools(kind, sent.json())
    assert names == ["get_time"]
    assert mapped in (None, "auto", {"type": "auto"})



async def test_an_allowed_tools_choice_of_functions_still_goes_as_written_to_openai(
        proxy: Any, upstream: Any) -> None:
    upstream.body = fixture_bytes("openai/pydantic-ai_run_stream_sync.response0.sse")
    client = await proxy(provider_config("openai", upstream.url))
    await client.post("/v1/chat/completions", json={
        "model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}],
        "tools": [FUNCTION_TOOL, OTHER_TOOL], "tool_choice": ALLOWED_FUNCTIONS})
    [sent] = upstream.requests
    assert sent.json()["tool_choice"] == ALLOWED_FUNCTIONS
    assert len(sent.json()["tools"]) == 2


async def test_an_allowed_tools_choice_beside_a_targets_tools_override_is_still_a_400(
        proxy: Any, upstream: Any) -> None:
    # (the override's tools would go on top of the narrowed ones: all callable again)
    client = await proxy(provider_config("anthropic", upstream.url))
    resp = await client.post("/v1/chat/completions", headers={"x-portkey-config": orjson.dumps(
        {"provider": "up", "override_params": {"tools": [FUNCTION_TOOL, OTHER_TOOL]}}).decode()},
        json={"model": "m", "messages": [{"role": "user", "content": "hi"}],
              "tool_choice": ALLOWED_FUNCTIONS})
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == "tool_choice"
    assert upstream.requests == []
