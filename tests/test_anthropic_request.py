"""OpenAI request → Anthropic Messages request, checked on what the upstream received; and
the non-streamed answer's translation back."""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

import orjson
import pytest

from streamproxy.errors import InvalidRequest, UpstreamProtocolError
from streamproxy.openai_api.chunks import ChunkEncoder
from streamproxy.openai_api.content import PLACEHOLDER_USER_TEXT
from streamproxy.openai_api.request import parse_chat_request
from streamproxy.providers.anthropic.request import (
    VERTEX_WITHOUT_STRUCTURED_OUTPUTS,
    WITHOUT_STRUCTURED_OUTPUTS,
    to_anthropic,
)
from streamproxy.providers.anthropic.response import to_completion
from streamproxy.providers.bedrock.request import to_converse
from streamproxy.providers.gemini.request import to_gemini
from streamproxy.providers.ollama.request import to_ollama
from streamproxy.routing.target import Target
from streamproxy.server.app import build_providers
from tests.conftest import provider_config
from tests.helpers import (
    calls_of_every_name,
    collect,
    every_turn_marked,
    fixture_bytes,
    late_system_loop,
    make_config,
    openai_sdk,
    read_sdk_stream,
    relay_pieces,
    sse_chunks,
    thinking_call,
)

TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                         "parameters": {"type": "object", "properties": {
                                             "city": {"type": "string"}}}}}

CLAUDE = "claude-sonnet-4-5"  # one that takes a thinking budget (not Opus 4.7 on)


async def sent_for(proxy: Any, upstream: Any, body: dict[str, Any],
                   headers: dict[str, str] | None = None, **provider: Any) -> Any:
    upstream.body = fixture_bytes("anthropic/sdk-python_tool_use_response.sse")
    client = await proxy(provider_config("anthropic", upstream.url, **provider))
    resp = await client.post("/v1/chat/completions", json={"stream": True, **body},
                             headers=headers or {})
    assert resp.status == 200, await resp.text()
    await resp.read()
    return upstream.requests[-1]


async def test_conversation_with_tools_images_and_tool_results(proxy: Any,
                                                               upstream: Any) -> None:
    sent = await sent_for(proxy, upstream, {
        "model": "up/claude-sonnet-4-5",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "Weather here and there?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                {"id": "call_2", "type": "function",
                 "function": {"name": "get_weather", "arguments": ""}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_2",
             "content": [{"type": "text", "text": "rain"}]},
            {"role": "user", "content": "Thanks"}],
        "tools": [TOOL], "tool_choice": "required", "parallel_tool_calls": False,
        "stop": "END", "temperature": 0.2, "top_p": 0.9, "user": "u-1",
        "frequency_penalty": 1.0, "logprobs": True, "seed": 3, "store": True,
        "fallback_models": [], "stream_options": {"include_usage": True}})
    body = sent.json()
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == "sk-test-secret"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in {k.lower() for k in sent.headers}
    assert body["model"] == "claude-sonnet-4-5"  # provider prefix stripped
    assert body["system"] == [{"type": "text", "text": "Be brief."},
                              {"type": "text", "text": "Use tools."}]
    assert body["max_tokens"] == 4096 and body["stream"] is True
    assert body["stop_sequences"] == ["END"]
    # (Sonnet 4.5 refuses temperature beside top_p: the temperature goes alone)
    assert body["temperature"] == 0.2 and "top_p" not in body
    assert body["metadata"] == {"user_id": "u-1"}
    assert body["tools"] == [{"name": "get_weather", "description": "Weather",
                              "input_schema": TOOL["function"]["parameters"]}]
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    for dropped in ("frequency_penalty", "logprobs", "seed", "store", "stream_options",
                    "fallback_models", "parallel_tool_calls", "tool_calls", "user", "stop"):
        assert dropped not in body
    user, assistant, results = body["messages"]
    assert user["content"][1] == {"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": "iVBORw0="}}  # (padded)
    assert user["content"][2] == {"type": "image", "source": {
        "type": "url", "url": "https://example.com/a.jpg"}}
    assert assistant == {"role": "assistant", "content": [
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {}}]}
    # Consecutive tool results become one user turn, and the next user text joins it.
    assert results["role"] == "user"
    assert results["content"][:2] == [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
        {"type": "tool_result", "tool_use_id": "call_2",
         "content": [{"type": "text", "text": "rain"}]}]
    assert results["content"][2:] == [{"type": "text", "text": "Thanks"}]


@pytest.mark.parametrize(("choice", "expected"), [
    ("auto", {"type": "auto"}), ("none", {"type": "none"}),
    ({"type": "function", "function": {"name": "get_weather"}},
     {"type": "tool", "name": "get_weather"})])
async def test_tool_choice(proxy: Any, upstream: Any, choice: Any, expected: Any) -> None:
    sent = await sent_for(proxy, upstream, {"messages": [{"role": "user", "content": "x"}],
                                            "tools": [TOOL], "tool_choice": choice})
    assert sent.json()["tool_choice"] == expected


async def test_max_tokens_reasoning_and_response_format(proxy: Any, upstream: Any) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    sent = (await sent_for(proxy, upstream, {
        "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 77,
        "response_format": {"type": "json_schema", "json_schema": {"name": "s",
                                                                   "schema": schema}}})).json()
    assert sent["max_tokens"] == 77
    assert sent["output_config"] == {"format": {"type": "json_schema", "schema": {
        **schema, "additionalProperties": False}}}
    sent = (await sent_for(proxy, upstream, {
        "messages": [{"role": "user", "content": "x"}], "reasoning_effort": "medium",
        "response_format": {"type": "json_object"}})).json()
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 4096}
    assert sent["max_tokens"] > 4096
    assert "JSON" in sent["system"][-1]["text"]


PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}},
          "required": ["name"]}
AS_PERSON = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}


@pytest.mark.parametrize("model", ["claude-3-7-sonnet-20250219", "claude-3-5-haiku-latest",
                                   "claude-3-haiku-20240307", "claude-sonnet-4-20250514",
                                   "claude-sonnet-4-0", "claude-opus-4-20250514",
                                   "claude-opus-4-0", "claude-opus-4-1-20250805",
                                   "claude-opus-4-1"])
async def test_a_json_schema_is_an_instruction_for_claudes_without_structured_outputs(
        proxy: Any, upstream: Any, model: str) -> None:
    """Claude 3, Claude 4 and Opus 4.1 refuse `output_config.format` with a 400 (Anthropic
    lists the models that take it): they get the schema, as written, in the system prompt, as
    Bedrock's models without it do; the client's own system prompt comes first."""
    sent = (await sent_for(proxy, upstream, {
        "model": f"up/{model}", "response_format": AS_PERSON,
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Ann"}]})).json()
    assert "output_config" not in sent
    assert sent["system"] == [
        {"type": "text", "text": "Be brief."},
        {"type": "text", "text": "Respond with a single valid JSON object and nothing else, "
                                 "matching this JSON Schema: " + orjson.dumps(PERSON).decode()}]


@pytest.mark.parametrize("model", ["claude-sonnet-4-5-20250929", "claude-sonnet-4-5",
                                   "claude-haiku-4-5", "claude-opus-4-5-20251101",
                                   "claude-opus-4-6", "claude-sonnet-4-6", "claude-opus-4-7",
                                   "claude-sonnet-5", "claude-sonnet-4-5"])
async def test_a_json_schema_is_structured_output_for_the_other_claudes(
        proxy: Any, upstream: Any, model: str) -> None:
    """The models Anthropic lists, and any name it does not know (a newer model), are sent
    structured outputs."""
    sent = (await sent_for(proxy, upstream, {
        "model": f"up/{model}", "response_format": AS_PERSON,
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Ann"}]})).json()
    assert sent["output_config"]["format"]["schema"]["required"] == ["name"]
    assert sent["system"] == [{"type": "text", "text": "Be brief."}]


@pytest.mark.parametrize(("model", "vertex", "strict"), [
    ("claude-sonnet-4-20250514", False, False), ("claude-3-7-sonnet-20250219", False, False),
    ("claude-opus-4-1", False, False), ("claude-sonnet-4-5@20250929", True, False),
    ("claude-sonnet-4-5", False, True), ("claude-opus-4-7", True, True),
    ("claude-sonnet-4-5", False, True)])
def test_a_strict_tool_is_strict_only_where_claude_has_structured_outputs(
        model: str, vertex: bool, strict: bool) -> None:
    """Strict tool use shares structured outputs' availability: the other models refuse it
    ("'claude-sonnet-4-20250514' does not support strict tools"), so the tool goes to them as
    a non-strict one, its parameters as written."""
    params = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 9}}}
    tool = {"type": "function", "function": {"name": "f", "parameters": params,
                                              "strict": True}}
    without = VERTEX_WITHOUT_STRUCTURED_OUTPUTS if vertex else WITHOUT_STRUCTURED_OUTPUTS
    [sent] = to_anthropic({"messages": [{"role": "user", "content": "x"}], "tools": [tool]},
                          model, without)["tools"]
    assert ("strict" in sent) is strict
    assert (sent["input_schema"] == params) is not strict


@pytest.mark.parametrize(("model", "vertex", "native"), [
    # OpenRouter's (and some Anthropic-compatible services') ids name Claude 4 without a date
    ("anthropic/claude-sonnet-4", False, False), ("anthropic/claude-opus-4", False, False),
    ("claude-sonnet-4", False, False), ("claude-opus-4", True, False),
    ("anthropic/claude-opus-4.1", False, False),
    # the later ones keep theirs
    ("anthropic/claude-sonnet-4.5", False, True), ("anthropic/claude-opus-4.6", False, True),
    ("claude-sonnet-4-5", False, True), ("anthropic/claude-sonnet-4.5", True, False)])
def test_claude_4_without_a_date_is_sent_no_structured_outputs(model: str, vertex: bool,
                                                               native: bool) -> None:
    without = VERTEX_WITHOUT_STRUCTURED_OUTPUTS if vertex else WITHOUT_STRUCTURED_OUTPUTS
    out = to_anthropic({"messages": [{"role": "user", "content": "x"}],
                        "response_format": AS_PERSON}, model, without)
    assert ("output_config" in out) is native
    assert ("system" in out) is not native


def test_json_object_is_an_instruction_for_every_claude() -> None:
    for model in ("claude-3-7-sonnet-20250219", "claude-sonnet-4-5"):
        out = to_anthropic({"messages": [{"role": "user", "content": "x"}],
                            "response_format": {"type": "json_object"}}, model)
        assert "output_config" not in out
        assert out["system"] == [{"type": "text", "text": "Respond with a single valid JSON "
                                                          "object and nothing else."}]


async def test_structured_outputs_beside_a_prefill_are_a_400_naming_messages(
        proxy: Any, upstream: Any) -> None:
    """Anthropic documents prefilling as incompatible with structured outputs: a clear 400,
    not Anthropic's; dropping the prefill would answer something else than asked. A model
    that gets the instruction keeps its prefill."""
    body = {"stream": True, "response_format": AS_PERSON,
            "messages": [{"role": "user", "content": "Ann"},
                         {"role": "assistant", "content": "{"}]}
    upstream.body = fixture_bytes("anthropic/sdk-python_tool_use_response.sse")
    client = await proxy(provider_config("anthropic", upstream.url))
    resp = await client.post("/v1/chat/completions", json={**body, "model": "up/claude-opus-4-7"})
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["param"] == "messages" and "prefill" in error["message"]
    assert not upstream.requests
    sent = await sent_for(proxy, upstream, {**body, "model": "up/claude-3-7-sonnet-20250219"})
    assert sent.json()["messages"][-1] == {"role": "assistant",
                                           "content": [{"type": "text", "text": "{"}]}


def translate(**body: Any) -> dict[str, Any]:
    return to_anthropic({"messages": [{"role": "user", "content": "x"}], **body}, CLAUDE)


@pytest.mark.parametrize("param", ["max_tokens", "max_completion_tokens"])
def test_a_max_above_the_model_s_output_cap_is_sent_as_given(param: str) -> None:
    # A choice (README): no table of caps to go stale; Anthropic's 400 names the model's cap,
    # as OpenAI's does, and a fallback target's override_params sets a smaller one.
    assert translate(**{param: 200_000})["max_tokens"] == 200_000
    assert translate(**{param: 200_000}, reasoning_effort="low")["max_tokens"] == 200_000


@pytest.mark.parametrize("choice", ["none", "auto", "required"])
def test_no_tool_choice_is_sent_without_tools(choice: str) -> None:
    # Nothing to choose from: Claude calls no tool without tools, so "none" holds; a
    # tool_choice goes only beside the tools it refers to, as on Gemini and Converse.
    assert "tool_choice" not in translate(tool_choice=choice)
    assert "tool_choice" not in translate(tool_choice=choice, tools=[])


def test_safety_identifier_is_the_end_user_id() -> None:
    # OpenAI's replacement for `user` as the end user's id for abuse detection.
    assert translate(safety_identifier="h-1")["metadata"] == {"user_id": "h-1"}
    assert translate(safety_identifier="h-1", user="u-1")["metadata"] == {"user_id": "h-1"}
    assert translate(user="u-1")["metadata"] == {"user_id": "u-1"}
    assert "metadata" not in translate(prompt_cache_key="k")


def test_an_end_user_id_too_long_for_anthropic_goes_as_its_hash() -> None:
    # Anthropic takes 256 characters at most (OpenAI, any): a longer id goes as its
    # SHA-256, one per user; a cut would merge users that share a prefix.
    assert translate(user="u" * 256)["metadata"] == {"user_id": "u" * 256}
    long_ids = ("u" * 300, "u" * 299 + "v")
    sent = [translate(safety_identifier=i)["metadata"]["user_id"] for i in long_ids]
    assert sent == [hashlib.sha256(i.encode()).hexdigest() for i in long_ids]


@pytest.mark.parametrize("user_id", ["alice@example.com", "Bob.Smith+llm@mail.example.co.uk"])
def test_an_end_user_id_that_is_an_email_goes_as_its_hash(user_id: str) -> None:
    # Anthropic answers an email in metadata.user_id with a 400 ("user_id appears to contain
    # an email address"), where OpenAI takes one as `user`: it goes as its SHA-256, one per
    # user. An id without one goes as sent.
    for field in ("user", "safety_identifier"):
        sent = translate(**{field: user_id})["metadata"]["user_id"]
        assert sent == hashlib.sha256(user_id.encode()).hexdigest()
    assert translate(user="u-1")["metadata"] == {"user_id": "u-1"}


@pytest.mark.parametrize(("temperature", "sent"), [(1.5, 1), (2, 1), (1.0, 1.0), (0.7, 0.7),
                                                   (0, 0), (2.5, 2.5)])
def test_a_temperature_above_claudes_range_is_claudes_top(temperature: float, sent: float,
                                                          ) -> None:
    """OpenAI's temperature runs to 2, Claude's to 1 (Anthropic answers 1.5 with a 400, and so
    a fallback from an OpenAI model would fail): one within OpenAI's range is sent as Claude's
    most random, 1; one OpenAI refuses goes as sent, for Anthropic's 400. So on Vertex."""
    assert translate(temperature=temperature)["temperature"] == sent
    vertex = to_anthropic({"messages": [{"role": "user", "content": "x"}],
                           "temperature": temperature}, "claude-sonnet-4-5@20250929",
                          VERTEX_WITHOUT_STRUCTURED_OUTPUTS, url_images=False)
    assert vertex["temperature"] == sent


def test_a_temperature_sent_as_1_goes_beside_thinking() -> None:
    # Thinking takes a temperature of 1 only: 1.5 is sent as 1, so it is not refused.
    out = translate(temperature=1.5, reasoning_effort="low")
    assert out["temperature"] == 1 and out["thinking"]["type"] == "enabled"
    with pytest.raises(InvalidRequest) as refused:
        translate(temperature=0.5, reasoning_effort="low")
    assert refused.value.param == "temperature"


def test_top_p_of_one_is_not_sent_beside_temperature() -> None:
    """Newer Claude models refuse temperature and top_p together ("cannot both be specified
    for this model"), and frameworks send OpenAI's default top_p 1 (no nucleus cut) with a
    temperature: a top_p of 1 is the same as none, so it is left out."""
    out = translate(temperature=0.7, top_p=1)
    assert out["temperature"] == 0.7 and "top_p" not in out
    assert "top_p" not in translate(top_p=1.0)
    # a real choice: sent to a Claude that takes both (test_claudes_that_take_one_sampler_…)
    both = to_anthropic({"messages": [{"role": "user", "content": "x"}], "temperature": 0.7,
                         "top_p": 0.9}, "claude-sonnet-4-20250514")
    assert both["top_p"] == 0.9


@pytest.mark.parametrize("temperature", [1, 1.0, 1.5])
def test_temperature_of_one_is_not_sent_beside_top_p(temperature: float) -> None:
    """The mirror of a top_p of 1: a temperature of 1 is Claude's default (so is one above it,
    sent as 1), and newer Claudes (Sonnet and Haiku 4.5, Opus 4.1 on) answer it beside a top_p
    with a 400 ("`temperature` and `top_p` cannot both be specified for this model"); clients
    send OpenAI's default temperature 1 with the top_p they chose. The top_p is what is sent,
    also beside thinking (which takes a top_p from 0.95) and on Vertex."""
    out = translate(temperature=temperature, top_p=0.9)
    assert out["top_p"] == 0.9 and "temperature" not in out
    thinking = translate(temperature=temperature, top_p=0.95, reasoning_effort="low")
    assert thinking["top_p"] == 0.95 and "temperature" not in thinking
    assert thinking["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    vertex = to_anthropic({"messages": [{"role": "user", "content": "x"}],
                           "temperature": temperature, "top_p": 0.9}, "claude-haiku-4-5@20251001",
                          VERTEX_WITHOUT_STRUCTURED_OUTPUTS, url_images=False)
    assert vertex["top_p"] == 0.9 and "temperature" not in vertex
    # Alone, or beside a top_p of 1 (not sent), it goes; another temperature goes beside top_p
    # as given (a real choice of both: Claude's to take or refuse).
    assert translate(temperature=temperature)["temperature"] == 1
    assert translate(temperature=temperature, top_p=1)["temperature"] == 1
    assert translate(temperature=0.7, top_p=0.9)["temperature"] == 0.7


def test_json_schema_objects_are_closed_as_anthropic_requires() -> None:
    """Anthropic refuses an object schema without `additionalProperties: false` (OpenAI's
    non-strict json_schema takes one): objects that say nothing get it, at every depth; an
    explicit value is left for Anthropic to judge, and data keywords are never rewritten."""
    item = {"type": "object", "properties": {"n": {"type": "integer"}}}
    schema = {
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}},
            "extra": {"anyOf": [{"type": ["object", "null"], "properties": {}}, {"type": "null"}]},
            "tags": {"type": "object", "additionalProperties": {"type": "string"}},
            "default": {"type": "object", "properties": {}},  # a property so named
            "const": {"const": {"type": "object"}},
        },
        "$defs": {"Item": item},
    }
    sent = translate(response_format={"type": "json_schema",
                                      "json_schema": {"name": "s", "schema": schema}})
    out = sent["output_config"]["format"]["schema"]
    assert out["additionalProperties"] is False
    assert out["$defs"]["Item"] == {**item, "additionalProperties": False}
    props = out["properties"]
    assert props["extra"]["anyOf"][0]["additionalProperties"] is False
    assert "additionalProperties" not in props["extra"]["anyOf"][1]
    assert props["tags"]["additionalProperties"] == {"type": "string"}
    assert props["default"]["additionalProperties"] is False
    assert props["const"] == {"const": {"type": "object"}}
    assert "additionalProperties" not in schema and "additionalProperties" not in item


@pytest.mark.parametrize(("body", "budget", "max_tokens"), [
    # The client's max counts thinking and answer together (OpenAI's max_completion_tokens):
    # it is kept, and the budget stays below it (Anthropic: 1024 <= budget < max_tokens).
    ({"reasoning_effort": "high", "max_completion_tokens": 5000}, 4999, 5000),
    ({"reasoning_effort": "low", "max_tokens": 1025}, 1024, 1025),
    ({"reasoning_effort": "medium", "max_tokens": 30000}, 4096, 30000),
    # minimal is still reasoning (OpenAI's, Gemini's, Cohere's): Claude's smallest budget.
    ({"reasoning_effort": "minimal"}, 1024, 1024 + 4096),
    # No client max: room for the budget and the default answer allowance.
    ({"reasoning_effort": "high"}, 16384, 16384 + 4096),
    # OpenAI's top effort is at least as much thinking as high, never none; the pair stays
    # within every thinking Claude's output cap (32000 on Opus 4 / 4.1).
    ({"reasoning_effort": "xhigh"}, 24576, 24576 + 4096),
    # max, above xhigh: the largest budget that, with the answer allowance, still fits Opus 4's.
    ({"reasoning_effort": "max"}, 32000 - 4096, 32000),
    ({"reasoning_effort": "max", "max_tokens": 20000}, 19999, 20000),
    ({"thinking": {"type": "enabled", "budget_tokens": 10000}}, 10000, 10000 + 4096),
    # The client's own thinking object wins over reasoning_effort, and sizes max_tokens.
    ({"thinking": {"type": "enabled", "budget_tokens": 2000}, "reasoning_effort": "high"},
     2000, 2000 + 4096),
])
def test_thinking_budget_stays_below_max_tokens(body: dict[str, Any], budget: int,
                                                max_tokens: int) -> None:
    out = translate(**body)
    assert out["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert out["max_tokens"] == max_tokens


@pytest.mark.parametrize("model", [
    "claude-3-5-sonnet-20241022", "claude-3-5-haiku-latest", "claude-3-opus-20240229",
    "claude-3-haiku-20240307", "claude-3-sonnet@20240229", "anthropic/claude-3.5-sonnet",
    "claude-2.1", "claude-instant-1.2"])
def test_reasoning_effort_is_dropped_for_claudes_that_cannot_think(model: str) -> None:
    # Extended thinking came with Claude 3.7 Sonnet: the earlier Claudes answer a thinking
    # budget with a 400, so reasoning_effort is dropped for them, as on Gemini's non-thinking
    # models; so are the 400s it would bring (a sampling or forced tool beside thinking).
    body = {"messages": [{"role": "user", "content": "x"}], "reasoning_effort": "high",
            "temperature": 0.2, "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": "required"}
    out = to_anthropic(body, model)
    assert "thinking" not in out and "output_config" not in out
    assert out["max_tokens"] == 4096 and out["temperature"] == 0.2
    # a client's own thinking object still goes as given
    own = {"type": "enabled", "budget_tokens": 2000}
    assert to_anthropic({**body, "thinking": own}, model)["thinking"] == own


@pytest.mark.parametrize("model", ["claude-3-7-sonnet-20250219", "anthropic/claude-3.7-sonnet",
                                   "claude-sonnet-4-20250514", "claude-haiku-4-5"])
def test_reasoning_effort_thinks_on_the_claudes_that_can(model: str) -> None:
    out = to_anthropic({"messages": [{"role": "user", "content": "x"}],
                        "reasoning_effort": "low"}, model)
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 1024}


def test_a_native_thinking_object_is_sent_as_given() -> None:
    adaptive = translate(thinking={"type": "adaptive"})
    assert adaptive["thinking"] == {"type": "adaptive"}
    tight = translate(thinking={"type": "enabled", "budget_tokens": 3000}, max_tokens=2000)
    assert tight["thinking"]["budget_tokens"] == 3000 and tight["max_tokens"] == 2000


@pytest.mark.parametrize("choice", ["required", {"type": "function",
                                                 "function": {"name": "get_weather"}}])
def test_thinking_from_effort_with_a_forced_tool_is_a_400(choice: Any) -> None:
    """Claude refuses thinking with a tool_choice that forces a tool: said before sending."""
    with pytest.raises(InvalidRequest) as caught:
        translate(reasoning_effort="low", tools=[TOOL], tool_choice=choice)
    assert caught.value.param == "tool_choice" and "tool_choice 'auto'" in str(caught.value)
    assert translate(reasoning_effort="low", tools=[TOOL], tool_choice="auto")["thinking"]


@pytest.mark.parametrize(("body", "param"), [
    ({"reasoning_effort": "high", "max_completion_tokens": 1000}, "max_completion_tokens"),
    ({"reasoning_effort": "low", "max_tokens": 1024}, "max_tokens"),
])
def test_a_max_too_small_for_any_thinking_budget_is_a_400(body: dict[str, Any],
                                                           param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        translate(**body)
    assert caught.value.param == param
    assert f"'{param}' to at least 1025" in str(caught.value)


async def test_a_max_too_small_for_thinking_is_refused_before_sending(proxy: Any,
                                                                      upstream: Any) -> None:
    client = await proxy(provider_config("anthropic", upstream.url))
    resp = await client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "x"}], "reasoning_effort": "high",
        "max_completion_tokens": 1000})
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "max_completion_tokens" and "reasoning_effort" in error["message"]
    assert not upstream.requests


@pytest.mark.parametrize("messages", [
    [{"role": "system", "content": "Write a haiku about the sea."}],
    [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": ""}],
])
def test_a_request_without_a_user_turn_gets_a_placeholder_one(
        messages: list[dict[str, Any]]) -> None:
    # OpenAI answers system-only requests; Anthropic rejects "messages": [].
    out = to_anthropic({"messages": messages}, "claude-sonnet-4-5")
    assert out["system"] == [{"type": "text", "text": messages[0]["content"]}]
    assert out["messages"] == [{"role": "user", "content": [{"type": "text",
                                                             "text": "Begin."}]}]


def user_parts(*parts: dict[str, Any]) -> list[dict[str, Any]]:
    out = to_anthropic({"messages": [{"role": "user", "content": list(parts)}]}, CLAUDE)
    return out["messages"][0]["content"]


def file_part(data_url: str) -> dict[str, Any]:
    return {"type": "file", "file": {"filename": "f", "file_data": data_url}}


def test_files_are_pdf_or_plain_text_documents() -> None:
    text = base64.b64encode("Ünïcode notes\n".encode()).decode()
    assert user_parts(file_part("data:application/pdf;base64,JVBERi0="),
                      file_part(f"data:text/plain;base64,{text}"),
                      file_part(f"data:text/markdown;charset=utf-8;base64,{text}")) == [
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                        "data": "JVBERi0="}, "title": "f"},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                        "data": "Ünïcode notes\n"}, "title": "f"},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                        "data": "Ünïcode notes\n"}, "title": "f"},
    ]


@pytest.mark.parametrize(("filename", "title"), [
    ("Q3 report.pdf", "Q3 report.pdf"), (None, None), ("", None), ("x" * 600, "x" * 500)])
def test_a_files_name_is_its_documents_title(filename: Any, title: Any) -> None:
    # Claude reads a document's title (and cites by it): without it, it cannot tell which
    # of several files a question names, nor answer with the name the user gave.
    file = {"file_data": "data:application/pdf;base64,JVBERi0="}
    if filename is not None:
        file["filename"] = filename
    [block] = user_parts({"type": "file", "file": file})
    assert block.get("title") == title


def test_image_jpg_is_sent_as_image_jpeg() -> None:
    [block] = user_parts({"type": "image_url", "image_url": {"url": "data:image/jpg;base64,/9j/"}})
    assert block["source"] == {"type": "base64", "media_type": "image/jpeg", "data": "/9j/"}


@pytest.mark.parametrize(("part", "named"), [
    (file_part("data:application/msword;base64,AAAA"), "application/msword"),
    (file_part("data:image/png;base64,iVBORw0"), "image/png"),
    (file_part("data:text/plain;base64,not base64!"), "base64"),
    (file_part("data:text/plain;base64,//79"), "UTF-8"),  # bytes ff fe fd: not UTF-8
    ({"type": "image_url", "image_url": {"url": "data:image/bmp;base64,Qk0="}}, "image/bmp"),
    ({"type": "image_url", "image_url": {"url": "data:image/svg+xml;base64,PHN2Zz4="}},
     "image/svg+xml"),
])
def test_unsupported_file_and_image_types_are_a_400_naming_them(part: dict[str, Any],
                                                                  named: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        user_parts(part)
    assert named in str(caught.value)
    assert caught.value.param in ("messages[0].content[0].file.file_data",
                                  "messages[0].content[0].image_url.url")


async def test_thinking_blocks_are_sent_back(proxy: Any, upstream: Any) -> None:
    block = {"type": "thinking", "thinking": "hmm", "signature": "sig=="}
    sent = (await sent_for(proxy, upstream, {"messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a", "thinking_blocks": [block]},
        {"role": "user", "content": "q2"}]})).json()
    assert sent["messages"][1]["content"] == [block, {"type": "text", "text": "a"}]



PORTKEY_THINKING = {"type": "thinking", "thinking": "Needs the tool.", "signature": "sig=="}
PORTKEY_CALL = {"id": "toolu_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{}"}}


@pytest.mark.parametrize("assistant", [
    # Portkey's docs: the thinking goes back as parts of the assistant's content ...
    {"content": [PORTKEY_THINKING, {"type": "text", "text": "Checking."}]},
    # ... or as its answers' `content_blocks`, beside the content string.
    {"content": "Checking.", "content_blocks": [PORTKEY_THINKING,
                                                {"type": "text", "text": "Checking."}]},
])
async def test_thinking_sent_back_as_portkey_clients_do(proxy: Any, upstream: Any,
                                                        assistant: dict[str, Any]) -> None:
    # Claude refuses a tool loop whose last assistant turn lost its thinking ("a final
    # assistant message must start with a thinking block"); the first form was a 400 here.
    sent = (await sent_for(proxy, upstream, {
        "thinking": {"type": "enabled", "budget_tokens": 2048}, "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "tool_calls": [PORTKEY_CALL], **assistant},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"}]})).json()
    assert sent["messages"][1]["content"] == [
        PORTKEY_THINKING, {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]



@pytest.mark.parametrize("model", [CLAUDE, "claude-opus-4-6", "claude-opus-4-7"])
@pytest.mark.parametrize("late", [
    [{"role": "system", "content": "Now answer in French."}],
    [{"role": "developer", "content": "Now answer in French."},
     {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}],
])
def test_system_messages_after_the_last_assistant_turn_ask_for_a_new_answer(
        model: str, late: list[dict[str, Any]]) -> None:
    """OpenAI answers [user, assistant, system] anew, as the system message asks. Its text is
    hoisted into Anthropic's system prompt, which left the assistant turn last: a prefill,
    which Claude 4.6 and later refuse with a 400 ("does not support assistant message
    prefill") the client could not make sense of, and which older Claudes continued instead of
    answering. A user turn (as for a request of system messages alone) follows it now."""
    messages = [{"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello! How can I help?"}, *late]
    out = to_anthropic({"messages": messages, "reasoning_effort": "low"}, model)
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user"]
    assert out["messages"][-1]["content"] == [{"type": "text", "text": PLACEHOLDER_USER_TEXT}]
    assert out["system"][0]["text"] == "Now answer in French."
    assert "thinking" in out  # a new turn: Claude thinks as asked
    converse = to_converse({"messages": messages}, "us.anthropic.claude-opus-4-6-v1")
    assert [m["role"] for m in converse["messages"]] == ["user", "assistant", "user"]
    assert converse["messages"][-1]["content"] == [{"text": PLACEHOLDER_USER_TEXT}]
    # A final assistant message the client sent (a prefill) is continued as before, and a
    # system message before it or after a user turn adds no turn.
    prefill = to_anthropic({"messages": [*late, *messages[:2]]}, model)
    assert prefill["messages"][-1]["role"] == "assistant"
    answered = to_anthropic({"messages": [*messages, {"role": "user", "content": "Oui?"}, *late]},
                            model)
    assert [m["role"] for m in answered["messages"]] == ["user", "assistant", "user"]
    assert answered["messages"][-1]["content"] == [{"type": "text", "text": "Oui?"}]


def test_an_assistant_turn_after_a_late_system_message_is_not_merged_into_the_one_before(
        ) -> None:
    """An agent's late instruction ([user, assistant, system]) is answered after a `Begin.`
    turn; its answer, sent back in the next step of the loop, was merged into the assistant
    turn before the system message: not what Claude was sent, and with its thinking after
    that turn's text Claude refuses the request ("a final assistant message must start with
    a thinking block"). It is replayed as it was asked, after the same placeholder turn."""
    messages = late_system_loop(thinking_call("call_1"), "call_1")
    tools = [{"type": "function", "function": {"name": "book"}}]
    asked = to_anthropic({"messages": messages[:3], "tools": tools, "reasoning_effort": "low"},
                         "claude-sonnet-4-5")
    out = to_anthropic({"messages": messages, "tools": tools, "reasoning_effort": "low"},
                       "claude-sonnet-4-5")
    assert out["messages"][:3] == asked["messages"]
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user", "assistant",
                                                    "user"]
    assert [b["type"] for b in out["messages"][3]["content"]] == ["thinking", "tool_use"]
    assert "thinking" in out
    # Beside a user turn, or before an assistant message of thinking alone (left out), none.
    for later in ([{"role": "user", "content": "Hm?"}, messages[3]],
                  [{"role": "assistant", "content": None, "thinking_blocks": [
                      {"type": "thinking", "thinking": "t", "signature": "s"}]}]):
        out = to_anthropic({"messages": [*messages[:3], *later], "tools": tools},
                           "claude-sonnet-4-5")
        assert PLACEHOLDER_USER_TEXT not in str(out["messages"])


def loop(assistant: dict[str, Any], *after: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": "Weather?"},
            {"role": "assistant", "tool_calls": [PORTKEY_CALL], **assistant},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"}, *after]


# A later step of the loop: a call without thinking, and its result.
STEP = ({"role": "assistant", "content": None, "tool_calls": [{**PORTKEY_CALL, "id": "toolu_2"}]},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "windy"})


@pytest.mark.parametrize(("messages", "thinks"), [
    # An OpenAI client keeps no thinking (nor does a loop begun on Gemini): Claude would
    # refuse thinking here ("a final assistant message must start with a thinking block").
    (loop({"content": None}), False),
    (loop({"content": None, "thinking_blocks": [
        {"type": "thought_signature", "signature": "g", "tool_call_id": "toolu_1"}]}), False),
    (loop({"content": None, "thinking_blocks": [{**PORTKEY_THINKING, "signature": ""}]}), False),
    # The blocks came back: the loop thinks on.
    (loop({"content": None, "thinking_blocks": [PORTKEY_THINKING]}), True),
    (loop({"content": None, "thinking_blocks": [{"type": "redacted_thinking", "data": "d"}]}),
     True),
    # A final assistant turn (a prefill Claude continues) without its thinking: refused with
    # thinking on ("Expected thinking or redacted_thinking, but found text"), as in a loop;
    # a system message after it asks for a new answer (a user turn is sent after it), which
    # thinks (test_system_messages_after_the_last_assistant_turn_ask_for_a_new_answer).
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Well,"}], False),
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Well,"},
      {"role": "system", "content": "Be brief."}], True),
    ([{"role": "user", "content": "Hi"},
      {"role": "assistant", "content": "Well,", "thinking_blocks": [PORTKEY_THINKING]}], True),
    # Claude thinks once, at its turn's start, not after each tool result (Anthropic's
    # extended thinking with tool use): a loop's later steps carry no thinking, the first
    # one's does. Thinking turned off there was the 400 "When thinking is disabled, an
    # `assistant` message in the final position cannot contain `thinking`".
    (loop({"content": None, "thinking_blocks": [PORTKEY_THINKING]}, *STEP), True),
    (loop({"content": None, "thinking_blocks": [PORTKEY_THINKING]}, *STEP,
          {"role": "user", "content": "Hurry."}), True),
    (loop({"content": None, "thinking_blocks": [PORTKEY_THINKING]}, *STEP,
          {"role": "assistant", "content": "Well,"}), True),
    (loop({"content": None}, *STEP), False),
    # Thinking of an earlier turn (before the user's message that began this one) is not
    # this turn's.
    ([{"role": "user", "content": "Hi"},
      {"role": "assistant", "content": "Hello.", "thinking_blocks": [PORTKEY_THINKING]},
      *loop({"content": None})], False),
    # A new user turn after the loop, or no loop: thinking as asked.
    (loop({"content": None}, {"role": "assistant", "content": "Sunny."},
          {"role": "user", "content": "And tomorrow?"}), True),
    ([{"role": "user", "content": "Hi"}], True),
])
def test_effort_thinks_unless_a_tool_loop_came_back_without_its_thinking(
        messages: list[dict[str, Any]], thinks: bool) -> None:
    out = to_anthropic({"messages": messages, "reasoning_effort": "low"}, "claude-sonnet-4-5")
    assert ("thinking" in out) == thinks
    assert out["max_tokens"] == (1024 + 4096 if thinks else 4096)


SIGNED = {"type": "thinking", "thinking": "Hmm.", "signature": "sig"}


@pytest.mark.parametrize("after", [[], [{"role": "user", "content": "Again?"}]])
def test_thinking_that_ends_an_assistant_turn_is_left_out(after: list[Any]) -> None:
    # A turn that only thought (cut off while thinking, its text blank): Claude refuses an
    # assistant turn whose last block is thinking, as the last turn or in the middle.
    messages = [{"role": "user", "content": "Hi"},
                {"role": "assistant", "content": " ", "thinking_blocks": [SIGNED]}, *after]
    expected = [{"role": "user", "content": [{"type": "text", "text": "Hi"},
                                             *[{"type": "text", "text": "Again?"}
                                               for _ in after]]}]
    assert to_anthropic({"messages": messages}, "claude-sonnet-4-5")["messages"] == expected
    converse = to_converse({"messages": messages}, "anthropic.claude-x")["messages"]
    assert converse == [{"role": "user", "content": [{"text": "Hi"},
                                                      *[{"text": "Again?"} for _ in after]]}]
    # Thinking before the turn's text or tool calls stays, as Claude wants it (in the final
    # turn, a prefill, only when the request thinks: see below).
    messages[1]["content"] = "Hello."
    sent = to_anthropic({"messages": messages, "reasoning_effort": "low"},
                        "claude-sonnet-4-5")["messages"][1]["content"]
    assert [block["type"] for block in sent] == ["thinking", "text"]


@pytest.mark.parametrize("off", [{}, {"reasoning_effort": "none"},
                                 {"thinking": {"type": "disabled"}}])
@pytest.mark.parametrize("messages", [
    loop({"content": None, "thinking_blocks": [PORTKEY_THINKING]}),
    loop({"content": None, "thinking_blocks": [PORTKEY_THINKING]}, *STEP),
    [{"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Well,", "thinking_blocks": [PORTKEY_THINKING]}],
])
def test_thinking_of_the_final_turn_is_left_out_when_the_request_does_not_think(
        messages: list[dict[str, Any]], off: dict[str, Any]) -> None:
    # A loop begun with reasoning_effort and continued without (a client that asks for it on
    # a plan's first step only, a fallback target without it), or a prefill: Claude refuses
    # "When thinking is disabled, an `assistant` message in the final position cannot contain
    # `thinking`", where OpenAI answers. Both Claude APIs alike.
    for sent in (to_anthropic({"messages": messages, **off}, CLAUDE)["messages"],
                 to_converse({"messages": messages, **off}, "anthropic.claude-sonnet-4-5")
                 ["messages"]):
        assert not [block for message in sent for block in message["content"]
                    if block.get("type") in ("thinking", "redacted_thinking")
                    or "reasoningContent" in block]
        assert sent[1]["role"] == "assistant"  # (the turn itself stays)


def test_thinking_of_an_earlier_turn_is_sent_back_when_the_request_does_not_think() -> None:
    # Claude takes it there (and leaves it out of its context itself): sent as it came.
    messages = [{"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello.", "thinking_blocks": [PORTKEY_THINKING]},
                {"role": "user", "content": "Bye."}]
    assert to_anthropic({"messages": messages}, CLAUDE)["messages"][1]["content"][0] == \
        PORTKEY_THINKING


def test_a_native_thinking_object_is_kept_in_a_loop_without_thinking() -> None:
    thinking = {"type": "enabled", "budget_tokens": 2048}
    out = to_anthropic({"messages": loop({"content": None}), "thinking": thinking}, CLAUDE)
    assert out["thinking"] == thinking  # the client asked Claude itself: its call


async def test_an_openai_client_s_tool_loop_with_reasoning_effort_goes_on(
        proxy: Any, upstream: Any) -> None:
    # The openai SDK's second turn, built from the first answer's OpenAI fields only.
    client = openai_sdk(await proxy(provider_config("anthropic", upstream.url)))
    upstream.body = fixture_bytes("anthropic/sdk-python_tool_use_response.sse")
    async with client:
        stream = await client.chat.completions.create(
            model="claude-sonnet-4-5", messages=[{"role": "user", "content": "Weather?"}],
            reasoning_effort="low", stream=True)
        first = await read_sdk_stream(stream)
        call_id, name, args = first.tool_calls[0]
        stream = await client.chat.completions.create(model=CLAUDE, reasoning_effort="low",
                                                      stream=True, messages=[
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": first.text, "tool_calls": [
                {"id": call_id, "type": "function",
                 "function": {"name": name, "arguments": args}}]},
            {"role": "tool", "tool_call_id": call_id, "content": "sunny"}])
        await read_sdk_stream(stream)
    first_sent, second_sent = (r.json() for r in upstream.requests)
    assert first_sent["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert "thinking" not in second_sent


async def test_client_key_is_forwarded_when_none_is_configured(proxy: Any,
                                                               upstream: Any) -> None:
    upstream.body = fixture_bytes("anthropic/sdk-python_tool_use_response.sse")
    config = make_config({"claude": {"type": "anthropic", "base_url": upstream.url}})
    client = await proxy(config)
    resp = await client.post("/v1/chat/completions",
                             headers={"x-portkey-provider": "claude",
                                      "authorization": "Bearer sk-ant-client"},
                             json={"model": "claude-y", "stream": True,
                                   "messages": [{"role": "user", "content": "x"}]})
    assert resp.status == 200
    assert upstream.requests[0].headers["x-api-key"] == "sk-ant-client"
    assert upstream.requests[0].json()["model"] == "claude-y"


@pytest.mark.parametrize("arguments", ['{"city": "Par', "Paris", "{bad"])
async def test_tool_arguments_that_are_not_json_go_as_raw_text(proxy: Any, upstream: Any,
                                                                arguments: str) -> None:
    # A call cut off at max_tokens (or a model's malformed output), replayed: OpenAI answers
    # it, taking any string as arguments; Anthropic (and Bedrock, Gemini, Ollama) want an
    # object, which holds the text as written.
    messages = tool_loop(["call_1"])
    messages[1]["tool_calls"][0]["function"]["arguments"] = arguments
    sent = (await sent_for(proxy, upstream, {"messages": messages})).json()
    assert sent["messages"][1]["content"][0]["input"] == {"raw_arguments": arguments}
    bedrock = to_converse({"messages": messages}, "anthropic.claude-x")["messages"]
    assert bedrock[1]["content"][0]["toolUse"]["input"] == {"raw_arguments": arguments}
    ollama = to_ollama({"messages": messages}, "llama3.2", stream=True)["messages"]
    assert ollama[1]["tool_calls"][0]["function"]["arguments"] == {"raw_arguments": arguments}


@pytest.mark.parametrize("arguments", ["null", " null ", ""])
def test_a_call_without_arguments_written_as_null_goes_back_with_none(arguments: str) -> None:
    # "null" is how Cohere (and clients serialising a missing value) write a call of a tool
    # without parameters; it went back as {"value": null}, an argument the call never had,
    # which the model then read as one it had passed.
    messages = tool_loop(["call_1"])
    messages[1]["tool_calls"][0]["function"]["arguments"] = arguments
    anthropic = translate(messages=messages)["messages"]
    assert anthropic[1]["content"][0]["input"] == {}
    bedrock = to_converse({"messages": messages}, "anthropic.claude-x")["messages"]
    assert bedrock[1]["content"][0]["toolUse"]["input"] == {}
    gemini = to_gemini({"messages": messages}, "gemini-2.5-flash")["contents"]
    assert gemini[1]["parts"][0]["functionCall"]["args"] == {}
    ollama = to_ollama({"messages": messages}, "llama3.2", stream=True)["messages"]
    assert ollama[1]["tool_calls"][0]["function"]["arguments"] == {}


@pytest.mark.parametrize(("body", "param"), [
    ({"n": 2}, "n"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio",
                                                 "input_audio": {}}]}]},
     "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url",
                                                 "image_url": {"url": "ftp://x"}}]}]},
     "messages[0].content[0].image_url.url"),
])
async def test_untranslatable_requests_are_400(proxy: Any, upstream: Any, body: dict[str, Any],
                                               param: str) -> None:
    client = await proxy(provider_config("anthropic", upstream.url))
    resp = await client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "x"}], **body})
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == param
    assert not upstream.requests


@pytest.mark.parametrize("message", [
    {"content": [{"type": "tool_use", "name": "f", "input": {}}]},  # no id
    {"content": [{"type": "tool_use", "id": "t", "input": {}}]},  # no name
    {"content": ["text"]},  # a block that is not an object
    {"content": 5},
    [],
])
def test_a_malformed_non_streamed_message_is_a_protocol_error(message: Any) -> None:
    """A 502 that retries and fallbacks act on, never an exception that becomes a 500."""
    with pytest.raises(UpstreamProtocolError):
        to_completion(orjson.dumps(message), completion_id="c", created=1, model="m")


@pytest.mark.parametrize(("blocks", "finish"), [
    ([{"type": "text", "text": "Hi"}], "stop"),
    ([{"type": "tool_use", "id": "t", "name": "f", "input": {}}], "tool_calls"),
])
def test_a_non_streamed_answer_without_stop_reason_finishes_by_what_it_holds(
        blocks: list[dict[str, Any]], finish: str) -> None:
    # (an Anthropic-compatible upstream); a stream ends the same way (test_golden_core.py)
    answer = to_completion(orjson.dumps({"content": blocks, "stop_reason": None}),
                           completion_id="c", created=1, model="m")
    assert answer["choices"][0]["finish_reason"] == finish


def test_a_tool_without_parameters_gets_an_empty_object_schema() -> None:
    body = translate(tools=[{"type": "function", "function": {"name": "now"}}])
    assert body["tools"] == [{"name": "now",
                              "input_schema": {"type": "object", "properties": {}}}]


def tool_loop(call_ids: list[str]) -> list[dict[str, Any]]:
    """A tool loop whose calls carry another provider's ids."""
    return [{"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": call_id, "type": "function",
                 "function": {"name": "get_weather", "arguments": "{}"}}
                for call_id in call_ids]},
            *({"role": "tool", "tool_call_id": call_id, "content": "sunny"}
              for call_id in call_ids)]


def test_tool_call_ids_anthropic_refuses_are_mapped_alike_in_call_and_result() -> None:
    # Anthropic takes ids of [A-Za-z0-9_-] only (a 400 otherwise); Kimi's ids, replayed after
    # a fallback, have dots and colons. Ids that fit are sent as they are.
    ids = ["functions.get_weather:0", "functions_get_weather_0", "call_1", "x" * 80]
    _, assistant, results = translate(messages=tool_loop(ids))["messages"]
    sent = [block["id"] for block in assistant["content"]]
    assert [block["tool_use_id"] for block in results["content"]] == sent
    assert sent[2] == "call_1" and len(set(sent)) == 4
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,64}", call_id) for call_id in sent)
    assert sent[0].startswith("functions_get_weather_0_")
    assert translate(messages=tool_loop(ids[:1]))["messages"][1]["content"][0]["id"] == sent[0]


def test_a_tool_s_cache_control_inside_its_function_is_kept_on_the_tool() -> None:
    # LiteLLM's place for a tool's breakpoint (`tools[].function.cache_control`) was ignored:
    # no caching and no error. It marks the tool as Portkey's place beside `function` does,
    # and is not sent inside the tool's fields.
    ephemeral = {"type": "ephemeral"}
    tool = {"type": "function", "function": {**TOOL["function"], "cache_control": ephemeral}}
    sent = translate(tools=[tool])["tools"][0]
    assert sent["cache_control"] == ephemeral
    assert sent["name"] == "get_weather" and "cache_control" not in sent["input_schema"]
    hour = {"type": "ephemeral", "ttl": "1h"}  # the tool-level one, where both are given
    assert translate(tools=[{**tool, "cache_control": hour}])["tools"][0]["cache_control"] == hour


def test_cache_control_on_parts_and_tools_is_kept_on_their_blocks() -> None:
    # Prompt caching as Portkey passes it: a breakpoint on a system, user, assistant or tool
    # result part, an image or file part, or a tool stays on the block made from it. (Two
    # requests: Anthropic takes at most 4 breakpoints in one, MAX_BREAKPOINTS.)
    ephemeral = {"type": "ephemeral"}
    hour = {"type": "ephemeral", "ttl": "1h"}
    pdf = "data:application/pdf;base64," + base64.b64encode(b"%PDF-1.4").decode()
    body = translate(messages=[
        {"role": "system", "content": [{"type": "text", "text": "Long rules.",
                                        "cache_control": hour}]},
        {"role": "user", "content": [
            {"type": "text", "text": "Read this.", "cache_control": ephemeral},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"},
             "cache_control": ephemeral},
            {"type": "file", "file": {"file_data": pdf}, "cache_control": ephemeral},
            {"type": "text", "text": "Now?"}]}])
    assert body["system"] == [{"type": "text", "text": "Long rules.", "cache_control": hour}]
    [user] = body["messages"]
    assert [block.get("cache_control") for block in user["content"]] == [
        ephemeral, ephemeral, ephemeral, None]
    body = translate(messages=[
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Sure.",
                                           "cache_control": ephemeral}],
         "tool_calls": [{"id": "call_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1",
         "content": [{"type": "text", "text": "sunny", "cache_control": ephemeral}]}],
        tools=[{**TOOL, "cache_control": ephemeral}])
    _, assistant, result = body["messages"]
    assert assistant["content"][0] == {"type": "text", "text": "Sure.",
                                       "cache_control": ephemeral}
    assert result["content"][0]["content"] == [{"type": "text", "text": "sunny",
                                                "cache_control": ephemeral}]
    assert body["tools"][0]["cache_control"] == ephemeral
    assert "cache_control" not in translate(tools=[TOOL])["tools"][0]


def _breakpoints(body: dict[str, Any]) -> list[str]:
    """The text (or tool name) of each block that holds a cache_control, in prefix order."""
    blocks = [*body.get("tools", []), *body.get("system", [])]
    for message in body["messages"]:
        for block in message["content"]:
            if block.get("type") == "tool_result" and isinstance(block.get("content"), list):
                blocks.extend(block["content"])
            blocks.append(block)
    return [b.get("text") or b.get("name") or b["type"] for b in blocks if "cache_control" in b]


def test_more_breakpoints_than_anthropic_takes_keep_the_stable_prefix_and_the_latest() -> None:
    # Anthropic answers a 5th cache_control with a 400 ("A maximum of 4 blocks with
    # cache_control may be provided. Found 5."), which failed the whole request of a client
    # that marks every turn (LiteLLM's message form) or every tool: the tools' and system's
    # breakpoints (the prefix other conversations share) and the latest turns' are kept, the
    # earliest turns' dropped. A breakpoint only decides what is cached, never the answer.
    mark = {"type": "ephemeral"}
    turns = every_turn_marked(mark)
    body = translate(messages=turns, tools=[{**TOOL, "cache_control": mark}])
    assert _breakpoints(body) == ["get_weather", "Rules.", "q3", "last"]
    # The request's own (automatic caching) takes one of the four.
    body = translate(messages=turns, cache_control=mark)
    assert body["cache_control"] == mark and _breakpoints(body) == ["Rules.", "q3", "last"]
    # Every tool marked: the last ones (each caches the tools before it) and the latest turn.
    tools = [{"type": "function", "function": {"name": f"t{n}"}, "cache_control": mark}
             for n in range(6)]
    body = translate(messages=turns[-1:], tools=tools)
    assert _breakpoints(body) == ["t3", "t4", "t5", "last"]
    # Within the limit, nothing moves; a tool result's inner breakpoints count as Anthropic's.
    loop = [{"role": "user", "content": "w?", "cache_control": mark},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1",
             "content": [{"type": "text", "text": "r1", "cache_control": mark},
                         {"type": "text", "text": "r2", "cache_control": mark}]}]
    assert _breakpoints(translate(messages=loop)) == ["w?", "r1", "r2"]
    body = translate(messages=loop, tools=[{**TOOL, "cache_control": mark}], cache_control=mark)
    assert _breakpoints(body) == ["get_weather", "r1", "r2"]


def test_a_tool_result_s_images_and_files_go_in_its_content() -> None:
    """A tool that returns a screenshot or a PDF (a computer-use or browser agent's, an MCP
    tool's image content) as image_url / file parts of its tool message: Anthropic's
    tool_result takes image and document blocks, in order among the text; they were a 400
    ("Content part type 'image_url' is not allowed here"), and the agent's loop stopped."""
    png = "data:image/png;base64," + base64.b64encode(IMAGE_HEADS["image/png"]).decode()
    pdf = "data:application/pdf;base64," + base64.b64encode(b"%PDF-1.4").decode()
    ephemeral = {"type": "ephemeral"}
    loop = [{"role": "user", "content": "Look."},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "screenshot", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": [
                {"type": "text", "text": "The screen:"},
                {"type": "image_url", "image_url": {"url": png}, "cache_control": ephemeral},
                {"type": "text", "text": " "},
                {"type": "file", "file": {"file_data": pdf, "filename": "page.pdf"}}]}]
    [result] = translate(messages=loop)["messages"][2]["content"]
    assert result["content"] == [
        {"type": "text", "text": "The screen:"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": png.split(",", 1)[1]},
         "cache_control": ephemeral},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                        "data": pdf.split(",", 1)[1]}, "title": "page.pdf"}]
    # An http(s) image where the platform takes none (Claude on Vertex) is a 400 naming it.
    loop[2]["content"][1] = {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}
    assert translate(messages=loop)["messages"][2]["content"][0]["content"][1] == {
        "type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}}
    with pytest.raises(InvalidRequest) as err:
        to_anthropic({"messages": loop}, "claude-sonnet-4-5@20250929", url_images=False)
    assert err.value.param == "messages[2].content[1].image_url.url"
    # Parts no tool result takes stay a 400 naming them.
    loop[2]["content"][1] = {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}
    with pytest.raises(InvalidRequest) as err:
        translate(messages=loop)
    assert err.value.param == "messages[2].content[1].type"


async def test_a_message_s_cache_control_goes_on_its_last_block(proxy: Any,
                                                                 upstream: Any) -> None:
    # LiteLLM's form: a breakpoint on the message itself, the only place a string content can
    # carry one. Dropped, the prompt was never cached and every request paid full price.
    ephemeral = {"type": "ephemeral"}
    hour = {"type": "ephemeral", "ttl": "1h"}
    sent = await sent_for(proxy, upstream, {"model": "up/claude-x", "messages": [
        {"role": "system", "content": "Long rules.", "cache_control": hour},
        {"role": "user", "content": "A long document."},  # (4 breakpoints: all Anthropic takes)
        # (1h before the 1h one below: Anthropic takes longer lifetimes first, see
        # test_a_5m_breakpoint_before_a_1h_one_is_sent_as_1h)
        {"role": "assistant", "content": "Calling.", "cache_control": hour,
         "tool_calls": [{"id": "call_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny",
         "cache_control": hour},
        {"role": "user", "content": [{"type": "text", "text": "And?"},
                                     {"type": "text", "text": "Tomorrow?", "cache_control": hour}],
         "cache_control": ephemeral}]})
    body = sent.json()
    assert body["system"] == [{"type": "text", "text": "Long rules.", "cache_control": hour}]
    user, assistant, results = body["messages"]
    assert user["content"] == [{"type": "text", "text": "A long document."}]
    assert assistant["content"][0] == {"type": "text", "text": "Calling."}
    assert assistant["content"][1]["cache_control"] == hour  # the tool_use block
    assert results["content"][0] == {"type": "tool_result", "tool_use_id": "call_1",
                                     "content": "sunny", "cache_control": hour}
    assert results["content"][1:] == [  # the part's own marker is kept
        {"type": "text", "text": "And?"},
        {"type": "text", "text": "Tomorrow?", "cache_control": hour}]


@pytest.mark.parametrize("own", [{"type": "ephemeral"}, {"type": "ephemeral", "ttl": "5m"}])
def test_a_message_s_1h_marker_on_a_part_s_own_5m_one_makes_it_1h(own: Any) -> None:
    # The message's marker goes on its last block, where a part's own is kept: with that one
    # 5m and the message's 1h, the hour the client asked for was silently lost. The longer
    # wins on that block, as the request's own 1h does (fit_breakpoints) and as on Bedrock.
    hour = {"type": "ephemeral", "ttl": "1h"}
    body = translate(messages=[{"role": "user", "cache_control": hour, "content": [
        {"type": "text", "text": "doc", "cache_control": own}]}])
    assert body["messages"][0]["content"] == [{"type": "text", "text": "doc",
                                               "cache_control": hour}]
    assert own == {"type": "ephemeral", **({"ttl": "5m"} if "ttl" in own else {})}  # (a copy)
    # the message's shorter one leaves the part's 1h as it is
    body = translate(messages=[{"role": "system", "cache_control": own, "content": [
        {"type": "text", "text": "rules", "cache_control": hour}]}])
    assert body["system"] == [{"type": "text", "text": "rules", "cache_control": hour}]


async def test_a_request_s_cache_control_is_sent_as_given(proxy: Any, upstream: Any) -> None:
    # Anthropic's automatic caching (a top-level cache_control, openai SDK extra_body): dropped,
    # the conversation was never cached and every turn paid full price.
    hour = {"type": "ephemeral", "ttl": "1h"}
    sent = await sent_for(proxy, upstream, {"model": "up/claude-x", "cache_control": hour,
                                            "messages": [{"role": "user", "content": "Hi"}]})
    body = sent.json()
    assert body["cache_control"] == hour
    assert "cache_control" not in body["messages"][0]["content"][0]
    assert "cache_control" not in translate()


@pytest.mark.parametrize("stream", [True, False])
async def test_an_openai_client_sees_the_cache_writes(proxy: Any, upstream: Any,
                                                      stream: bool) -> None:
    # A first request with a breakpoint writes the cache (billed above the input price): the
    # count goes where OpenAI's SDK reads it (`prompt_tokens_details.cache_write_tokens`), and
    # as Portkey (and LiteLLM) put it, beside the reads.
    usage = {"input_tokens": 12, "cache_creation_input_tokens": 2048,
             "cache_read_input_tokens": 0, "output_tokens": 3}
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
               "content": [{"type": "text", "text": "Hi"}], "stop_reason": "end_turn",
               "usage": usage}
    if stream:
        events = [{"type": "message_start", "message": {**message, "content": [],
                                                        "stop_reason": None}},
                  {"type": "content_block_start", "index": 0,
                   "content_block": {"type": "text", "text": ""}},
                  {"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": "Hi"}},
                  {"type": "content_block_stop", "index": 0},
                  {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                   "usage": {"output_tokens": 3}},
                  {"type": "message_stop"}]
        upstream.body = b"".join(b"event: %b\ndata: %b\n\n" % (e["type"].encode(),
                                                              orjson.dumps(e)) for e in events)
    else:
        upstream.content_type = "application/json"
        upstream.body = orjson.dumps(message)
    client = openai_sdk(await proxy(provider_config("anthropic", upstream.url)))
    async with client:
        answer = await client.chat.completions.create(
            model=CLAUDE, stream=stream, stream_options={"include_usage": True} if stream
            else None, messages=[{"role": "user", "content": "Hi", "cache_control":
                                  {"type": "ephemeral"}}])
        got = (await read_sdk_stream(answer)).usage if stream else answer.usage
    assert (got.prompt_tokens, got.completion_tokens, got.total_tokens) == (2060, 3, 2063)
    assert got.prompt_tokens_details.cached_tokens == 0
    assert got.prompt_tokens_details.cache_write_tokens == 2048
    assert got.model_extra == {"cache_read_input_tokens": 0,
                               "cache_creation_input_tokens": 2048}


@pytest.mark.parametrize("content", ["\n\n", [{"type": "text", "text": " "}]])
def test_whitespace_only_assistant_text_is_left_out(content: Any) -> None:
    # Claude may answer "\n\n" before a tool call; sent back as a text block, the next turn
    # would be a 400 ("text content blocks must contain non-whitespace text").
    messages = tool_loop(["call_1"])
    messages[1]["content"] = content
    assistant = translate(messages=messages)["messages"][1]
    assert [block["type"] for block in assistant["content"]] == ["tool_use"]


def test_whitespace_only_text_is_left_out() -> None:
    # Anthropic: "text content blocks must contain non-whitespace text" (a 400), e.g. the
    # "\n\n" an assistant turn holds before its tool call, or a blank system message.
    out = to_anthropic({"messages": [
        {"role": "system", "content": " "},
        {"role": "user", "content": [{"type": "text", "text": "\n"},
                                     {"type": "text", "text": "Weather?"}]},
        {"role": "assistant", "content": "\n\n", "tool_calls": [
            {"id": "t1", "type": "function", "function": {"name": "now", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "t1", "content": [{"type": "text", "text": " "},
                                                           {"type": "text", "text": "Sun"}]},
        {"role": "user", "content": "\t"},
    ]}, "claude-sonnet-4-5")
    assert "system" not in out
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "now",
                                           "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                      "content": [{"type": "text", "text": "Sun"}]}]},
    ]


BLANK_USER_CONTENTS = ["  ", "", None, [{"type": "text", "text": ""}],
                       [{"type": "text", "text": "\n"}, {"type": "text", "text": " "}]]


# (through the proxy: a null is OpenAI's 400 before any translator, test_request_params)
@pytest.mark.parametrize("content", [c for c in BLANK_USER_CONTENTS if c is not None])
async def test_a_final_blank_user_message_keeps_its_turn(proxy: Any, upstream: Any,
                                                        content: Any) -> None:
    # Left out, the request would end with the assistant turn, which Claude continues (a
    # prefill) instead of answering the user; Anthropic refuses the blank text itself.
    sent = (await sent_for(proxy, upstream, {"messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": content}]})).json()
    assert sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
        {"role": "user", "content": [{"type": "text", "text": "(empty message)"}]}]


@pytest.mark.parametrize("content", BLANK_USER_CONTENTS)
def test_a_blank_user_message_between_assistant_turns_keeps_them_apart(content: Any) -> None:
    out = to_anthropic({"messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": content}, {"role": "assistant", "content": "still there?"},
        {"role": "user", "content": "yes"}]}, "claude-sonnet-4-5")
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user", "assistant",
                                                    "user"]
    assert out["messages"][2]["content"] == [{"type": "text", "text": "(empty message)"}]


@pytest.mark.parametrize("content", ["  ", None, [{"type": "text", "text": ""}]])
def test_a_blank_user_message_before_a_user_message_is_left_out(content: Any) -> None:
    # The next user message keeps the turn: the stand-in went with it, as a second text.
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
               {"role": "user", "content": content}, {"role": "user", "content": "and?"}]
    claude = to_anthropic({"messages": history}, "claude-sonnet-4-5")["messages"][-1]
    assert claude == {"role": "user", "content": [{"type": "text", "text": "and?"}]}
    converse = to_converse({"messages": history}, "amazon.nova-pro-v1:0")["messages"][-1]
    assert converse == {"role": "user", "content": [{"text": "and?"}]}
    if content != "  ":  # (Gemini takes whitespace as it is)
        gemini = to_gemini({"messages": history}, "gemini-2.5-flash")["contents"][-1]
        assert gemini == {"role": "user", "parts": [{"text": "and?"}]}


def test_a_blank_user_message_after_tool_results_is_left_out() -> None:
    # The tool results' user turn answers the assistant turn already.
    out = to_anthropic({"messages": [*tool_loop(["call_1"]), {"role": "user", "content": " "}]},
                       "claude-sonnet-4-5")
    assert out["messages"][-1] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"}]}


@pytest.mark.parametrize("content", ["\n", " ", "", None, [{"type": "text", "text": "\t"}], []])
async def test_a_tool_result_without_text_has_no_content(proxy: Any, upstream: Any,
                                                          content: Any) -> None:
    # A tool that printed nothing (or only "\n"): a blank string is a text block Anthropic
    # refuses ("text content blocks must contain non-whitespace text"), so the loop would
    # stop there; a tool_result may leave `content` out.
    messages = tool_loop(["call_1"])
    messages[2]["content"] = content
    sent = (await sent_for(proxy, upstream, {"messages": messages})).json()
    assert sent["messages"][2]["content"] == [{"type": "tool_result", "tool_use_id": "call_1"}]


def test_a_final_assistant_turn_loses_its_trailing_whitespace() -> None:
    # Anthropic continues a final assistant turn (prefill) and refuses one that ends in
    # whitespace: "final assistant content cannot end with trailing whitespace".
    out = to_anthropic({"messages": [{"role": "user", "content": "Name a colour."},
                                     {"role": "assistant", "content": "The colour is \n"}]},
                       "claude-sonnet-4-5")
    assert out["messages"][-1] == {"role": "assistant",
                                   "content": [{"type": "text", "text": "The colour is"}]}


def test_an_openai_file_id_is_a_400_naming_it() -> None:
    with pytest.raises(InvalidRequest) as caught:
        user_parts({"type": "file", "file": {"file_id": "file-abc123"}})
    assert caught.value.param == "messages[0].content[0].file.file_id"
    assert "file_data" in str(caught.value)


@pytest.mark.parametrize(("sampling", "param"), [
    ({"temperature": 0.2}, "temperature"),
    ({"temperature": 0}, "temperature"),
    ({"top_k": 5}, "top_k"),
    ({"top_p": 0.9}, "top_p"),
])
def test_thinking_from_effort_beside_sampling_claude_refuses_is_a_400(
        sampling: dict[str, Any], param: str) -> None:
    """Anthropic: with thinking, temperature may only be 1, top_k must be unset and top_p
    within 0.95-1. Said before sending, naming the parameter."""
    with pytest.raises(InvalidRequest) as caught:
        translate(reasoning_effort="medium", **sampling)
    assert caught.value.param == param and "reasoning_effort" in str(caught.value)
    assert caught.value.code == "unsupported_value"
    # Without thinking the same sampling is sent as given.
    assert translate(**sampling)[param] == sampling[param]


@pytest.mark.parametrize(("effort", "claude_effort"), [("minimal", "low"), ("medium", "medium"),
                                                      ("max", "max")])
@pytest.mark.parametrize("model", ["claude-opus-4-7", "claude-sonnet-5", "claude-mythos-preview"])
def test_claudes_without_a_budget_think_adaptively(model: str, effort: str,
                                                   claude_effort: str) -> None:
    # Opus 4.7 and later answer a thinking budget with a 400: every request with a
    # reasoning_effort failed there. Adaptive thinking's depth is Claude's effort, beside a
    # structured-outputs format when there is one.
    schema = {"type": "json_schema", "json_schema": {"name": "a", "schema": {
        "type": "object", "properties": {"x": {"type": "string"}}}}}
    out = to_anthropic({"messages": [{"role": "user", "content": "x"}], "reasoning_effort": effort,
                        "response_format": schema}, model)
    assert out["thinking"] == {"type": "adaptive"}
    assert out["output_config"]["effort"] == claude_effort
    assert out["output_config"]["format"]["type"] == "json_schema"
    assert out["max_tokens"] > 4096  # room for the thinking (test_adaptive_thinking_has_room)
    # They take no sampling at all (test_claudes_that_take_no_sampling_get_none): a
    # temperature beside the effort is left out, not refused.
    sampled = to_anthropic({"messages": [{"role": "user", "content": "x"}],
                            "reasoning_effort": effort, "temperature": 0.2}, model)
    assert sampled["thinking"] == {"type": "adaptive"} and "temperature" not in sampled
    budget = to_anthropic({"messages": [{"role": "user", "content": "x"}],
                           "reasoning_effort": effort}, "claude-opus-4-6")
    assert budget["thinking"]["type"] == "enabled" and "output_config" not in budget


@pytest.mark.parametrize(("model", "claude_effort"), [
    ("claude-opus-4-7", "xhigh"), ("claude-opus-4-8", "xhigh"), ("claude-opus-5", "xhigh"),
    ("claude-sonnet-5", "xhigh"), ("claude-mythos-5", "xhigh"), ("claude-fable-5", "xhigh"),
    ("claude-opus-4-7@20260416", "xhigh"),
    # Mythos Preview has max but no xhigh (Anthropic's effort docs): its top, as before.
    ("claude-mythos-preview", "max")])
def test_xhigh_is_claudes_own_xhigh_where_it_has_one(model: str, claude_effort: str) -> None:
    """Claude's xhigh, like OpenAI's, lies between high and max. Every adaptive Claude got
    max for OpenAI's xhigh — the same as for OpenAI's max, above it: a client asking for
    xhigh paid for Claude's unbounded top."""
    out = to_anthropic({"messages": [{"role": "user", "content": "x"}],
                        "reasoning_effort": "xhigh"}, model)
    assert out["output_config"] == {"effort": claude_effort}


@pytest.mark.parametrize(("body", "max_tokens"), [
    ({"reasoning_effort": "high"}, 16384 + 4096),
    ({"reasoning_effort": "xhigh"}, 24576 + 4096),
    ({"reasoning_effort": "max"}, 32000),
    ({"reasoning_effort": "low"}, 1024 + 4096),
    ({"thinking": {"type": "adaptive"}}, 16384 + 4096),  # Claude's default effort, high
    ({"reasoning_effort": "high", "max_tokens": 3000}, 3000),  # the client's own, as sent
    ({"reasoning_effort": "none"}, 4096),  # no thinking: the default
])
@pytest.mark.parametrize("model", ["claude-opus-4-7", "claude-opus-4-7@20260416"])
def test_adaptive_thinking_has_room_for_its_thinking(body: dict[str, Any], max_tokens: int,
                                                     model: str) -> None:
    """Adaptive thinking counts against max_tokens as a budget does, and Anthropic needs a
    max: with the bare default (4096) a reasoning_effort 'high' request without a max could
    spend it all thinking and stop at `length` with no answer, where a budget Claude gets its
    budget + 4096. It gets the same room now (so on Vertex, which shares the translation;
    Converse's default max is the model's own, so Bedrock is sent none)."""
    out = to_anthropic({"messages": [{"role": "user", "content": "x"}], **body}, model)
    assert out["max_tokens"] == max_tokens


SAMPLING = {"temperature": 0.7, "top_p": 0.9, "top_k": 40}


@pytest.mark.parametrize("model", ["claude-opus-4-7", "claude-opus-4-8", "claude-sonnet-5",
                                   "claude-opus-4-7@20260416"])
def test_claudes_that_take_no_sampling_get_none(model: str) -> None:
    """Opus 4.7 and every later Claude answer any temperature, top_p or top_k with a 400
    ("`temperature` is deprecated for this model"): every request that carried one (a
    framework's default temperature) failed there. They are left out, as parameters a model
    cannot take are; the rest of the request is sent."""
    body = {"messages": [{"role": "user", "content": "x"}], **SAMPLING}
    out = to_anthropic(body, model)
    assert not SAMPLING.keys() & out.keys()
    assert out["max_tokens"] == 4096 and out["messages"][0]["role"] == "user"
    # Not refused beside reasoning_effort either: there is no sampling left to refuse.
    thinking = to_anthropic({**body, "reasoning_effort": "high"}, model)
    assert thinking["thinking"] == {"type": "adaptive"} and not SAMPLING.keys() & thinking.keys()
    # The Claudes before them take it as sent (but for a top_p beside the temperature,
    # which Opus 4.1 to 4.6 refuse: test_claudes_that_take_one_sampler_get_temperature_alone).
    assert to_anthropic(body, "claude-opus-4-6").keys() >= {"temperature", "top_k"}
    assert to_anthropic(body, "claude-haiku-4-5").keys() >= {"temperature", "top_k"}
    assert to_anthropic(body, "claude-sonnet-4-20250514").keys() >= SAMPLING.keys()


@pytest.mark.parametrize("model", ["us.anthropic.claude-opus-4-7", "anthropic.claude-sonnet-5"])
def test_claudes_that_take_no_sampling_get_none_on_bedrock(model: str) -> None:
    body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 300, **SAMPLING}
    out = to_converse(body, model)
    assert out["inferenceConfig"] == {"maxTokens": 300}
    assert "additionalModelRequestFields" not in out
    thinking = to_converse({**body, "reasoning_effort": "low"}, model)
    assert thinking["additionalModelRequestFields"] == {"thinking": {"type": "adaptive"},
                                                        "output_config": {"effort": "low"}}
    assert thinking["inferenceConfig"] == {"maxTokens": 300}
    older = to_converse(body, "anthropic.claude-sonnet-4-5-20250929-v1:0")
    assert older["inferenceConfig"] == {"maxTokens": 300, "temperature": 0.7}  # (one sampler)
    assert older["additionalModelRequestFields"] == {"top_k": 40}


def test_thinking_from_effort_keeps_sampling_claude_takes_with_it() -> None:
    out = translate(reasoning_effort="low", temperature=1, top_p=0.99)
    assert out["thinking"]["budget_tokens"] == 1024
    assert out["top_p"] == 0.99  # (the temperature of 1 beside it is not sent: see above)
    out = translate(reasoning_effort="low", temperature=1)
    assert out["thinking"]["budget_tokens"] == 1024 and out["temperature"] == 1


@pytest.mark.parametrize("stop", ["\n", ["END", " \t"], ["", "\n"]])
def test_a_whitespace_only_stop_sequence_is_a_400(stop: Any) -> None:
    """Anthropic: "stop_sequences: each stop sequence must contain non-whitespace"."""
    with pytest.raises(InvalidRequest) as caught:
        translate(stop=stop)
    assert caught.value.param == "stop" and caught.value.code == "unsupported_value"
    assert translate(stop=["\nEND", "x "])["stop_sequences"] == ["\nEND", "x "]


def test_an_empty_stop_sequence_is_left_out_as_on_every_other_provider() -> None:
    # `stop: [""]` (a settings form's empty field) cuts nothing; `stop: ""` was already not
    # sent, and Gemini, Bedrock's other models, Cohere and Ollama answer both. It was a 400.
    assert translate(stop=["", "END"])["stop_sequences"] == ["END"]
    assert "stop_sequences" not in translate(stop=[""])
    assert "stop_sequences" not in translate(stop="")


def test_a_strict_function_is_a_strict_tool() -> None:
    """Anthropic's strict tool use is OpenAI's strict function calling."""
    schema = {"type": "object", "properties": {"city": {"type": "string"}},
              "required": ["city"], "additionalProperties": False}
    strict = {"type": "function", "function": {"name": "f", "parameters": schema,
                                               "strict": True}}
    loose = {"type": "function", "function": {"name": "g", "parameters": schema,
                                              "strict": False}}
    tools = translate(tools=[strict, loose])["tools"]
    assert tools[0] == {"name": "f", "input_schema": schema, "strict": True}
    assert "strict" not in tools[1]


def test_thinking_blocks_without_a_signature_are_left_out() -> None:
    """Anthropic refuses a thinking block without its signature ("thinking.signature: Field
    required"); a signed one goes back with only the fields Anthropic knows."""
    signed = {"type": "thinking", "thinking": "hmm", "signature": "sig==", "index": 0}
    out = translate(messages=[
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a", "thinking_blocks": [
            {"type": "thinking", "thinking": "unsigned"}, signed,
            {"type": "redacted_thinking"}, {"type": "redacted_thinking", "data": "UkVE"},
            {"type": "thought_signature", "signature": "gemini"}]},
        {"role": "user", "content": "q2"}])
    assert out["messages"][1]["content"] == [
        {"type": "thinking", "thinking": "hmm", "signature": "sig=="},
        {"type": "redacted_thinking", "data": "UkVE"}, {"type": "text", "text": "a"}]


def test_claude_schema_describes_the_constraints_claude_refuses() -> None:
    """Anthropic and Bedrock's Claude refuse (400) numeric, length and array-size constraints,
    a minItems above 1 and a format outside their list; each goes into the description, beside
    any the schema had; what Claude takes stays."""
    schema = {"type": "object", "properties": {
        "tags": {"type": "array", "items": {"type": "string", "format": "binary"},
                 "minItems": 2, "uniqueItems": True, "description": "Labels."},
        "one": {"type": "array", "minItems": 1},
        "maximum": {"type": "string", "pattern": "^a+$", "format": "uuid"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
    props = translate(response_format=fmt)["output_config"]["format"]["schema"]["properties"]
    body = {"messages": [{"role": "user", "content": "x"}], "response_format": fmt}
    converse = to_converse(body, "anthropic.claude-sonnet-4-5-20250929-v1:0")
    assert orjson.loads(converse["outputConfig"]["textFormat"]["structure"]["jsonSchema"][
        "schema"])["properties"] == props
    assert props["tags"] == {"type": "array", "description":
                             'Labels.\nConstraints: minItems 2, uniqueItems true.',
                             "items": {"type": "string",
                                       "description": 'Constraints: format "binary".'}}
    assert props["one"] == {"type": "array", "minItems": 1}
    assert props["maximum"] == {"type": "string", "pattern": "^a+$", "format": "uuid"}


@pytest.mark.parametrize("value", [{}, ["date"], None, 5])
def test_a_format_that_is_no_string_goes_into_the_description(value: Any) -> None:
    """A `format` of another type than a string is outside Claude's list too; it was looked up
    in that set, a TypeError (500) for an object or an array."""
    fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": {
        "type": "object", "properties": {"d": {"type": "string", "format": value}}}}}
    prop = translate(response_format=fmt)["output_config"]["format"]["schema"]["properties"]["d"]
    assert prop == {"type": "string",
                    "description": f"Constraints: format {orjson.dumps(value).decode()}."}


def test_strict_tools_take_claude_schema_on_bedrock_too() -> None:
    params = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}},
              "required": ["n"], "additionalProperties": False}
    tools = [{"type": "function", "function": {"name": "f", "parameters": params,
                                               "strict": True}},
             {"type": "function", "function": {"name": "g", "parameters": params}}]
    body = {"messages": [{"role": "user", "content": "x"}], "tools": tools}
    specs = to_converse(body, "anthropic.claude-sonnet-4-5-v1:0")["toolConfig"]["tools"]
    strict, loose = (spec["toolSpec"]["inputSchema"]["json"] for spec in specs)
    assert strict["properties"]["n"] == {"type": "integer",
                                         "description": "Constraints: minimum 1."}
    assert loose == params  # a tool that is not strict takes any schema


IMAGE_HEADS = {"image/png": b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR",
               "image/jpeg": b"\xff\xd8\xff\xe0\0\x10JFIF\0",
               "image/gif": b"GIF89a\x01\0\x01\0\x80\0", "image/webp": b"RIFF\x24\0\0\0WEBPVP8 "}


@pytest.mark.parametrize("actual", list(IMAGE_HEADS))
@pytest.mark.parametrize("label", ["image/jpeg", "image/png", "application/octet-stream"])
def test_an_image_is_sent_as_the_type_its_bytes_are(actual: str, label: str) -> None:
    """Anthropic refuses an image whose media_type is not what its bytes are ("The image was
    specified using the image/jpeg media type, but the image appears to be a image/png
    image"), where OpenAI reads a PNG labelled image/jpeg (or application/octet-stream):
    the type is read from the bytes' signature."""
    data = base64.b64encode(IMAGE_HEADS[actual] + b"rest of the image").decode()
    [block] = user_parts({"type": "image_url", "image_url": {"url": f"data:{label};base64,{data}"}})
    assert block["source"] == {"type": "base64", "media_type": actual, "data": data}


# OpenRouter answers a Claude's thinking as `reasoning_details` (format `anthropic-claude-v1`:
# `reasoning.text` with its signature, `reasoning.encrypted` for redacted thinking), which its
# docs say to send back whole. A loop begun there that fell back to Anthropic or Bedrock lost
# it: thinking was turned off for the loop (or, with a client's own `thinking`, Claude's 400
# "a final assistant message must start with a thinking block"). Another model's entries
# (Gemini's signatures, OpenAI's encrypted reasoning) mean nothing to Claude.
OPENROUTER_CLAUDE = [
    {"type": "reasoning.text", "text": "Needs ", "format": "anthropic-claude-v1", "index": 0},
    {"type": "reasoning.text", "text": "the tool.", "signature": "sig==",
     "format": "anthropic-claude-v1", "index": 0},
    {"type": "reasoning.encrypted", "data": "UkVE", "format": "anthropic-claude-v1", "index": 1},
    {"type": "reasoning.encrypted", "data": "gem", "id": "toolu_1", "format": "google-gemini-v1",
     "index": 2},
    {"type": "reasoning.text", "text": "Other.", "signature": "x", "format": "unknown",
     "index": 3}]


def test_openrouters_claude_reasoning_details_go_back_to_claude() -> None:
    messages = loop({"content": None, "reasoning": "Needs the tool.",
                     "reasoning_details": OPENROUTER_CLAUDE})
    out = to_anthropic({"messages": messages, "reasoning_effort": "low"}, CLAUDE)
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert out["messages"][1]["content"] == [
        PORTKEY_THINKING, {"type": "redacted_thinking", "data": "UkVE"},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]
    converse = to_converse({"messages": messages, "reasoning_effort": "low"},
                           "anthropic.claude-sonnet-4-5-20250929-v1:0")
    assert converse["messages"][1]["content"] == [
        {"reasoningContent": {"reasoningText": {"text": "Needs the tool.",
                                                "signature": "sig=="}}},
        {"reasoningContent": {"redactedContent": "UkVE"}},
        {"toolUse": {"toolUseId": "toolu_1", "name": "get_weather", "input": {}}}]


def test_other_models_reasoning_details_are_not_claudes() -> None:
    details = [d for d in OPENROUTER_CLAUDE if d["format"] != "anthropic-claude-v1"]
    messages = loop({"content": None, "reasoning_details": details})
    out = to_anthropic({"messages": messages, "reasoning_effort": "low"}, CLAUDE)
    assert "thinking" not in out
    assert out["messages"][1]["content"] == [
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]


@pytest.mark.parametrize(("dotted", "hyphenated"), [
    ("claude-sonnet-4.5", "claude-sonnet-4-5"),
    ("anthropic/claude-sonnet-4.5", "claude-sonnet-4-5"),  # OpenRouter's Anthropic endpoint
    ("claude-opus-4.1", "claude-opus-4-1"),
    ("claude-haiku-4.5", "claude-haiku-4-5"),
    ("anthropic/claude-3.7-sonnet", "claude-3-7-sonnet-20250219"),
    ("claude-opus-4.7", "claude-opus-4-7"),
])
def test_dotted_claude_ids_are_classified_as_their_hyphenated_twins(dotted: str,
                                                                    hyphenated: str) -> None:
    # Some Anthropic-compatible services (OpenRouter) spell versions with a dot. Read as a
    # Claude newer than the closed set of budget Claudes, Sonnet 4.5 got adaptive thinking
    # (its 400) and lost the client's temperature; Opus 4.1 got structured outputs (its 400).
    schema = {"type": "json_schema", "json_schema": {"name": "a", "schema": {
        "type": "object", "properties": {"x": {"type": "string"}}}}}
    for body in ({"reasoning_effort": "high"}, {"temperature": 0.3},
                 {"response_format": schema}):
        request = {"messages": [{"role": "user", "content": "x"}], **body}
        out = to_anthropic(request, dotted)
        twin = to_anthropic(request, hyphenated)
        assert out["model"] == dotted  # the id is sent as the client wrote it
        assert {**out, "model": hyphenated} == twin


@pytest.mark.parametrize(("number_first", "twin"), [
    ("claude-4-sonnet", "claude-sonnet-4"),  # Snowflake Cortex's (Anthropic-compatible) name
    ("claude-4-opus", "claude-opus-4"),
    ("anthropic/claude-4-sonnet", "claude-sonnet-4"),  # DeepInfra's
    ("claude-4-sonnet-20250514", "claude-sonnet-4-20250514"),
    ("claude-4-0-sonnet", "claude-sonnet-4-0"),
    ("claude-4-1-opus", "claude-opus-4-1"),
    ("claude-4-5-sonnet", "claude-sonnet-4-5"),
    ("claude-4.5-sonnet", "claude-sonnet-4-5"),  # (Cursor's)
])
def test_number_first_claude_4_ids_are_classified_as_anthropic_s_twins(number_first: str,
                                                                       twin: str) -> None:
    # Claude 3.x was named number first (claude-3-7-sonnet); Claude 4 on, Anthropic writes
    # the family first, but some services and clients kept the old order. Read as a Claude
    # newer than every one the rules name, Sonnet 4 got adaptive thinking (its 400) and lost
    # the client's temperature (sampling left out as for Opus 4.7 on).
    schema = {"type": "json_schema", "json_schema": {"name": "a", "schema": {
        "type": "object", "properties": {"x": {"type": "string"}}}}}
    for body in ({"reasoning_effort": "high"}, {"temperature": 0.3, "top_p": 0.9},
                 {"response_format": schema}):
        request = {"messages": [{"role": "user", "content": "x"}], **body}
        out = to_anthropic(request, number_first)
        assert out["model"] == number_first  # the id is sent as the client wrote it
        assert {**out, "model": twin} == to_anthropic(request, twin)


def test_a_discriminator_mapping_is_no_schema_to_describe() -> None:
    """A discriminator's mapping maps tags to references: a tag named like a refused
    constraint (`format`, `minimum`) was moved into a description, losing the tag."""
    mapping = {"format": "#/$defs/F", "minimum": "#/$defs/M"}
    fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": {
        "oneOf": [{"$ref": "#/$defs/F"}, {"$ref": "#/$defs/M"}],
        "discriminator": {"propertyName": "kind", "mapping": mapping},
        "$defs": {"F": {"type": "object"}, "M": {"type": "object"}}}}}
    sent = translate(response_format=fmt)["output_config"]["format"]["schema"]
    assert sent["discriminator"] == {"propertyName": "kind", "mapping": mapping}


@pytest.mark.parametrize("model", [
    "claude-sonnet-4-5", "claude-sonnet-4-5-20250929", "claude-haiku-4-5@20251001",
    "claude-opus-4-1-20250805", "claude-opus-4-1", "claude-opus-4-5", "claude-opus-4-6",
    "claude-sonnet-4-6", "anthropic/claude-sonnet-4.5",
    "publishers/anthropic/models/claude-opus-4-5@20251101"])
def test_claudes_that_take_one_sampler_get_temperature_alone(model: str) -> None:
    """Opus 4.1, Sonnet/Haiku/Opus 4.5 and later answer a temperature beside a top_p with a 400
    ("`temperature` and `top_p` cannot both be specified for this model"): a chat UI's preset
    or a fallback from GPT that sets both failed there. The temperature is kept, as gateways
    do (the parameter OpenAI's docs and clients tune), and the top_p left out; on Vertex too
    (which shares the translation)."""
    body = {"messages": [{"role": "user", "content": "x"}], "temperature": 0.7, "top_p": 0.9}
    out = to_anthropic(body, model)
    assert out["temperature"] == 0.7 and "top_p" not in out
    vertex = to_anthropic(body, model, VERTEX_WITHOUT_STRUCTURED_OUTPUTS, url_images=False)
    assert vertex["temperature"] == 0.7 and "top_p" not in vertex
    # Alone, each goes as sent; top_k is no part of the refusal.
    assert to_anthropic({**body, "temperature": None}, model)["top_p"] == 0.9
    assert to_anthropic({**body, "top_k": 40}, model)["top_k"] == 40


@pytest.mark.parametrize("model", ["claude-sonnet-4-20250514", "claude-opus-4-20250514",
                                   "claude-opus-4-0", "claude-sonnet-4@20250514",
                                   "claude-3-7-sonnet-20250219", "claude-3-5-haiku-latest"])
def test_claudes_that_take_both_samplers_keep_both(model: str) -> None:
    body = {"messages": [{"role": "user", "content": "x"}], "temperature": 0.7, "top_p": 0.9}
    out = to_anthropic(body, model)
    assert out["temperature"] == 0.7 and out["top_p"] == 0.9


@pytest.mark.parametrize(("model", "one"), [
    ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", True),
    ("anthropic.claude-opus-4-1-20250805-v1:0", True),
    ("global.anthropic.claude-haiku-4-5-20251001-v1:0", True),
    ("us.anthropic.claude-sonnet-4-20250514-v1:0", False),
    ("anthropic.claude-3-5-sonnet-20240620-v1:0", False)])
def test_claudes_that_take_one_sampler_get_temperature_alone_on_bedrock(model: str,
                                                                        one: bool) -> None:
    body = {"messages": [{"role": "user", "content": "x"}], "temperature": 0.7, "top_p": 0.9}
    config = to_converse(body, model)["inferenceConfig"]
    assert config == ({"temperature": 0.7} if one else {"temperature": 0.7, "topP": 0.9})


def test_a_5m_breakpoint_before_a_1h_one_is_sent_as_1h() -> None:
    """Anthropic takes mixed cache lifetimes only longest first, in prompt order (tools →
    system → messages): a 1h breakpoint after a 5m one (or one without `ttl`, 5m) is its 400.
    A client that marks its system prompt as a framework does (no ttl) and a document an hour
    failed. The 1h one caches the whole prefix before it for an hour, and Anthropic bills the
    prompt up to it as 1h writes anyway: the earlier ones go as 1h, so every breakpoint stays
    and the bill does not change. The client's own marker is not changed."""
    five, hour = {"type": "ephemeral"}, {"type": "ephemeral", "ttl": "1h"}
    five_m = {"type": "ephemeral", "ttl": "5m"}
    tool = {**TOOL, "cache_control": five}
    body = {"messages": [
        {"role": "system", "content": [{"type": "text", "text": "Rules.",
                                        "cache_control": five_m}]},
        {"role": "user", "content": [{"type": "text", "text": "Doc.", "cache_control": hour},
                                     {"type": "text", "text": "Q?", "cache_control": five}]}],
        "tools": [tool]}
    out = to_anthropic(body, CLAUDE)
    assert out["tools"][0]["cache_control"] == hour
    assert out["system"][0]["cache_control"] == hour
    assert [b["cache_control"] for b in out["messages"][0]["content"]] == [hour, five]
    assert five == {"type": "ephemeral"} and five_m["ttl"] == "5m"  # (the client's, as sent)
    # The request's own (automatic caching) is the last breakpoint: a 1h one raises the rest.
    auto = to_anthropic({**body, "cache_control": hour}, CLAUDE)
    assert auto["messages"][0]["content"][1]["cache_control"] == hour
    assert auto["cache_control"] == hour
    # Longest first already, or one lifetime alone: sent as given.
    ordered = to_anthropic({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "Doc.", "cache_control": hour},
        {"type": "text", "text": "Q?", "cache_control": five}]}], "cache_control": five}, CLAUDE)
    assert [b["cache_control"] for b in ordered["messages"][0]["content"]] == [hour, five]
    assert ordered["cache_control"] == five
    # A marker that is no object goes as sent, for Anthropic's 400 (not the proxy's 500).
    odd = to_anthropic({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "Doc.", "cache_control": "5m"},
        {"type": "text", "text": "Q?", "cache_control": hour}]}]}, CLAUDE)
    assert odd["messages"][0]["content"][0]["cache_control"] == "5m"


def test_a_5m_cache_point_before_a_1h_one_is_sent_as_1h_on_bedrock() -> None:
    # Converse takes cachePoint ttls non-increasing too (tools → system → messages).
    five, hour = {"type": "ephemeral"}, {"type": "ephemeral", "ttl": "1h"}
    body = {"messages": [
        {"role": "system", "content": "Rules.", "cache_control": five},
        {"role": "user", "content": [{"type": "text", "text": "Doc.", "cache_control": hour},
                                     {"type": "text", "text": "Q?", "cache_control": five}]}],
        "tools": [{**TOOL, "cache_control": five}]}
    out = to_converse(body, "us.anthropic.claude-sonnet-4-5-20250929-v1:0")
    points = [b["cachePoint"] for blocks in (out["toolConfig"]["tools"], out["system"],
                                             out["messages"][0]["content"])
              for b in blocks if "cachePoint" in b]
    assert points == [{"type": "default", "ttl": "1h"}] * 3 + [{"type": "default"}]


# Tool names clients send that Claude refuses (it takes 1 to 128 of [a-zA-Z0-9_-]: any other is
# a 400 for the whole request, on Anthropic and Vertex alike): an MCP tool's dot, slash or
# space, over 128 characters, and two that read alike once their other characters are `_`.
CLAUDE_REFUSES = ["github.create_issue", "fs/read file", "mcp__" + "x" * 130, "a.b", "a/b"]


@pytest.mark.parametrize(("provider", "model"), [("a", CLAUDE),
                                                 ("v", "claude-sonnet-4-5@20250929")])
def test_tool_names_claude_refuses_go_renamed_and_come_back_as_declared(provider: str,
                                                                         model: str) -> None:
    # (a rename takes none of the names Claude takes: not even one over Converse's 64)
    names = [*CLAUDE_REFUSES, "github_create_issue", "mcp__" + "y" * 100, "plain"]
    body = calls_of_every_name(names, model)
    providers = build_providers(make_config({
        "a": {"type": "anthropic", "api_key": "k"},
        "v": {"type": "vertex", "base_url": "https://vertex.test", "project": "p",
              "location": "us-east5", "api_key": "ya29.t"}}))
    target = Target(providers[provider], model).served()
    req = parse_chat_request(orjson.dumps(body))
    sent = orjson.loads(target.provider.build_request(req, target).body)
    declared = [t["name"] for t in sent["tools"]]
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,128}", name) for name in declared)
    assert len(set(declared)) == len(names) and declared[-3:] == names[-3:]
    assert [b["name"] for b in sent["messages"][1]["content"]] == declared
    assert sent["tool_choice"] == {"type": "tool", "name": declared[0]}
    # Claude's calls, by the names it was sent, reach the client by the client's names.
    answer = {"type": "message", "role": "assistant", "stop_reason": "tool_use", "content": [
        {"type": "tool_use", "id": f"t{i}", "name": name, "input": {}}
        for i, name in enumerate(declared)]}
    done = target.provider.translate_response(orjson.dumps(answer), req, completion_id="c",
                                              created=1)
    assert [c["function"]["name"] for c in done["choices"][0]["message"]["tool_calls"]] == names
    enc = ChunkEncoder(completion_id="c", created=1, model="m", include_usage=False)
    translator = target.provider.stream_translator(req, enc)
    stream = target.provider.events_of_answer(orjson.dumps(answer))
    assert stream is not None
    c = collect(sse_chunks(relay_pieces(enc, translator, [stream])))
    assert [t["name"] for t in c.tool_calls] == names


def test_a_request_whose_tool_names_claude_takes_goes_as_given() -> None:
    names = ["get_weather", "mcp__" + "y" * 123, "A-1"]  # (128 characters: Claude takes it)
    out = to_anthropic(calls_of_every_name(names, CLAUDE), CLAUDE)
    assert [t["name"] for t in out["tools"]] == names
    assert [b["name"] for b in out["messages"][1]["content"]] == names
