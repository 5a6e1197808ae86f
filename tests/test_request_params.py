"""OpenAI request parameters a translating provider cannot take as written: refused with a 400
in OpenAI's shape naming the parameter, never dropped or clamped unnoticed."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streamproxy.errors import InvalidRequest
from streamproxy.openai_api.request import parse_chat_request
from streamproxy.providers.anthropic.request import to_anthropic
from streamproxy.providers.bedrock.request import to_converse
from streamproxy.providers.cohere.request import to_cohere
from streamproxy.providers.gemini.request import to_gemini
from streamproxy.providers.ollama.request import to_ollama
from tests.conftest import provider_config
from tests.helpers import fixture_bytes, jsonl_to_sse

TRANSLATING = ("anthropic", "gemini", "bedrock", "cohere", "ollama", "mistral")


def _settings(kind: str) -> dict[str, Any]:
    return {"region": "us-east-1", "api_key": "k"} if kind == "bedrock" else {}


@pytest.mark.parametrize("kind", TRANSLATING)
@pytest.mark.parametrize(("fmt", "code"), [
    ({"type": "object"}, "invalid_value"),  # a real client's mistake: OpenAI answers a 400
    ({"type": "json"}, "invalid_value"),
    ({}, "missing_required_parameter"),
])
async def test_a_response_format_of_no_known_type_is_a_400(
        proxy: Any, upstream: Any, kind: str, fmt: dict[str, Any], code: str) -> None:
    """The translators read json_object and json_schema only: another type went unnoticed and
    the client, which asked for a format, got prose where OpenAI answers a 400."""
    client = await proxy(provider_config(kind, upstream.url, **_settings(kind)))
    resp = await client.post("/v1/chat/completions", json={
        "model": "m", "messages": [{"role": "user", "content": "hi"}], "response_format": fmt})
    assert resp.status == 400
    err = (await resp.json())["error"]
    assert (err["code"], err["param"]) == (code, "response_format.type")
    assert err["type"] == "invalid_request_error"
    assert upstream.requests == []


async def test_a_text_response_format_still_goes_to_a_translating_provider(
        proxy: Any, upstream: Any) -> None:
    upstream.body = jsonl_to_sse(fixture_bytes("anthropic/vercel-ai_anthropic-text.chunks.jsonl"))
    client = await proxy(provider_config("anthropic", upstream.url))
    resp = await client.post("/v1/chat/completions", json={
        "model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "text"}})
    assert resp.status == 200
    assert len(upstream.requests) == 1


async def test_a_pass_through_type_forwards_other_response_formats(proxy: Any,
                                                                   upstream: Any) -> None:
    # (OpenAI-compatible servers have their own: Fireworks' grammar, vLLM's structural_tag)
    upstream.body = fixture_bytes("openai/pydantic-ai_run_stream_sync.response0.sse")
    client = await proxy(provider_config("openai", upstream.url))
    fmt = {"type": "grammar", "grammar": "root ::= \"yes\""}
    await client.post("/v1/chat/completions", json={
        "model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}],
        "response_format": fmt})
    [sent] = upstream.requests
    assert sent.json()["response_format"] == fmt


@pytest.mark.parametrize("top_p", [1.5, 7])
def test_a_top_p_above_openai_s_range_is_not_clamped_for_cohere(top_p: float) -> None:
    """Cohere's `p` tops out at 0.99, so top_p 1 (no nucleus cut) goes as 0.99; a top_p above
    1, which OpenAI refuses, went as 0.99 too and was answered as if it were valid."""
    with pytest.raises(InvalidRequest) as caught:
        to_cohere({"messages": [{"role": "user", "content": "hi"}], "top_p": top_p}, "m")
    assert (caught.value.param, caught.value.code) == ("top_p", "decimal_above_max_value")
    assert f"got {top_p} instead" in str(caught.value)


WEATHER = {"type": "function", "function": {"name": "get_weather",
                                            "parameters": {"type": "object", "properties": {}}}}


@pytest.mark.parametrize("kind", TRANSLATING)
@pytest.mark.parametrize("extra", [
    {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
    {"tool_choice": {"type": "function", "function": {"name": "get_time"}}, "tools": [WEATHER]},
    {"tool_choice": "required"},
    {"tool_choice": "required", "tools": []},
])
async def test_a_tool_choice_forcing_a_call_to_no_tool_offered_is_a_400(
        proxy: Any, upstream: Any, kind: str, extra: dict[str, Any]) -> None:
    """Anthropic, Bedrock and Gemini send a tool_choice only beside tools: a client that
    forced a call got a prose answer (or the provider's own 400 about its field)."""
    client = await proxy(provider_config(kind, upstream.url, **_settings(kind)))
    resp = await client.post("/v1/chat/completions", json={
        "model": "m", "messages": [{"role": "user", "content": "hi"}], **extra})
    assert resp.status == 400
    err = (await resp.json())["error"]
    assert (err["code"], err["param"]) == ("invalid_value", "tool_choice")
    assert "'tools'" in err["message"]
    assert upstream.requests == []


@pytest.mark.parametrize("choice", ["auto", "none"])
async def test_a_tool_choice_that_forces_nothing_still_goes_without_tools(
        proxy: Any, upstream: Any, choice: str) -> None:
    upstream.body = jsonl_to_sse(fixture_bytes("anthropic/vercel-ai_anthropic-text.chunks.jsonl"))
    client = await proxy(provider_config("anthropic", upstream.url))
    resp = await client.post("/v1/chat/completions", json={
        "model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}],
        "tool_choice": choice})
    assert resp.status == 200
    [sent] = upstream.requests
    assert "tool_choice" not in sent.json()


def test_an_assistant_tool_call_without_an_id_is_a_400() -> None:
    """OpenAI refuses it; the translators made one up (`toolu_1_0`), which the tool result
    that follows could not name: Anthropic and Bedrock answered their own 400 about an
    unknown tool_use_id, Ollama and Gemini lost which call a result answers."""
    body = {"messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sun"},
        {"role": "tool", "tool_call_id": "call_2", "content": "rain"}]}
    with pytest.raises(InvalidRequest) as caught:
        parse_chat_request(orjson.dumps(body))
    assert (caught.value.param, caught.value.code) == ("messages[1].tool_calls[1].id",
                                                       "missing_required_parameter")


def _results_pair(provider: str, sent: dict[str, Any]) -> list[tuple[str, str]]:
    """(call, result) of each tool result in a translated request, by what pairs them: the
    id (Anthropic, Bedrock, Cohere) or the function's name (Gemini, Ollama)."""
    if provider == "gemini":
        calls = [p["functionCall"]["name"] for c in sent["contents"] for p in c["parts"]
                 if "functionCall" in p]
        results = [p["functionResponse"]["name"] for c in sent["contents"] for p in c["parts"]
                   if "functionResponse" in p]
    elif provider == "ollama":
        calls = [c["function"]["name"] for m in sent["messages"] for c in m.get("tool_calls", ())]
        results = [m.get("tool_name", "") for m in sent["messages"] if m["role"] == "tool"]
    elif provider == "cohere":
        calls = [c["id"] for m in sent["messages"] for c in m.get("tool_calls", ())]
        results = [m["tool_call_id"] for m in sent["messages"] if m["role"] == "tool"]
    else:
        blocks = [b for m in sent["messages"] for b in m["content"] if isinstance(b, dict)]
        if provider == "anthropic":
            calls = [b["id"] for b in blocks if b.get("type") == "tool_use"]
            results = [b["tool_use_id"] for b in blocks if b.get("type") == "tool_result"]
        else:
            calls = [b["toolUse"]["toolUseId"] for b in blocks if "toolUse" in b]
            results = [b["toolResult"]["toolUseId"] for b in blocks if "toolResult" in b]
    return list(zip(calls, results, strict=True))


@pytest.mark.parametrize("provider", ["anthropic", "bedrock", "cohere", "gemini", "ollama"])
def test_tool_calls_replayed_with_empty_ids_pair_with_their_results(provider: str) -> None:
    """Calls replayed with `id: ""` (as some proxies in front of Gemini send them) and their
    results with `tool_call_id: ""`: the translators gave each call a made-up id and each
    result another (Anthropic's and Bedrock's `_e3b0c44298fc1c14`, Cohere's `""`), so the
    provider answered a 400 about a call without its result; Gemini answered our 400 (no
    call named ''), Ollama gave both results the second call's name. Each result now names
    the call it follows, in order."""
    call = {"type": "function", "id": ""}
    body = parse_chat_request(orjson.dumps({"model": "m", "messages": [
        {"role": "user", "content": "weather and time?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {**call, "function": {"name": "weather", "arguments": "{}"}},
            {**call, "function": {"name": "time", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "", "content": "sun"},
        {"role": "tool", "tool_call_id": "", "content": "noon"},
        {"role": "assistant", "content": None, "tool_calls": [
            {**call, "function": {"name": "date", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "", "content": "monday"}]})).body
    sent = {"anthropic": lambda: to_anthropic(body, "claude-sonnet-4-5"),
            "bedrock": lambda: to_converse(body, "amazon.nova-micro-v1:0"),
            "cohere": lambda: to_cohere(body, "command-a"),
            "gemini": lambda: to_gemini(body, "gemini-2.5-flash"),
            "ollama": lambda: to_ollama(body, "qwen3", stream=True)}[provider]()
    pairs = _results_pair(provider, sent)
    assert len(pairs) == 3 and all(call == result for call, result in pairs), pairs
    assert len({call for call, _ in pairs}) == 3 and all(call for call, _ in pairs)
    if provider == "gemini":  # an id we made up is not sent to Gemini (its own ids are)
        parts = [p for c in sent["contents"] for p in c["parts"]]
        assert not [p for p in parts if "id" in (p.get("functionCall") or {})
                    or "id" in (p.get("functionResponse") or {})]


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("seed", 1.5, "an integer"),
    ("seed", "42", "an integer"),
    ("frequency_penalty", "0.5", "a number"),
    ("presence_penalty", True, "a number"),
    ("logprobs", "yes", "a boolean"),
    ("top_logprobs", 2.5, "an integer"),
    ("safety_identifier", 123, "a string"),
])
def test_sampling_fields_of_the_wrong_type_are_a_400_naming_them(field: str, value: Any,
                                                                  expected: str) -> None:
    """Translators forwarded them as sent, into fields the client never named (a number as
    Anthropic's metadata.user_id: its 400 about that), or read them loosely (logprobs "yes"
    as true), or dropped them: OpenAI refuses each."""
    body = {"messages": [{"role": "user", "content": "hi"}], field: value}
    with pytest.raises(InvalidRequest) as caught:
        parse_chat_request(orjson.dumps(body))
    assert (caught.value.param, caught.value.code) == (field, "invalid_type")
    assert expected in str(caught.value)


@pytest.mark.parametrize("message", [
    {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                          "function": {"name": "f", "arguments": "{}"}}]},
    {"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}},
    {"role": "assistant", "audio": {"id": "audio_1"}},
    {"role": "assistant", "content": None},  # a replayed answer's null: a blank message
    {"role": "assistant", "content": [], "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
    # A tool that returned nothing (OpenAI refuses these two): the result goes without
    # content, so the agent loop goes on (test_anthropic_request).
    {"role": "tool", "tool_call_id": "c", "content": None},
    {"role": "tool", "tool_call_id": "c", "content": []},
])
def test_a_message_may_say_nothing_in_content_where_it_is_allowed(
        message: dict[str, Any]) -> None:
    body = {"messages": [{"role": "user", "content": "x"}, message]}
    assert parse_chat_request(orjson.dumps(body)).body["messages"][1] == message


@pytest.mark.parametrize("role", ["system", "developer", "user"])
@pytest.mark.parametrize(("content", "code", "says"), [
    (None, "invalid_type", "expected a string, got null"),
    ([], "empty_array", "empty array"),
])
def test_a_null_or_empty_content_is_openai_s_400_where_it_is_one(
        role: str, content: Any, code: str, says: str) -> None:
    # OpenAI refuses both for these roles; translators went on without the message (Cohere and
    # Ollama sent a blank one; Anthropic, Bedrock and Gemini left it out, or put a made-up
    # "Begin." in its place), answering a request OpenAI refuses.
    body = {"messages": [{"role": "user", "content": "x"}, {"role": role, "content": content}]}
    with pytest.raises(InvalidRequest) as caught:
        parse_chat_request(orjson.dumps(body))
    assert (caught.value.param, caught.value.code) == ("messages[1].content", code)
    assert says in str(caught.value)


_HI = b'"messages": [{"role": "user", "content": "hi"}]'


@pytest.mark.parametrize(("field", "number", "code", "bound"), [
    # 2**64 and more: orjson reads the integer as a float (it was 'expected an integer')
    ("seed", b"18446744073709551616", "integer_above_max_value", "<= 9223372036854775807"),
    ("seed", b"-9223372036854775809", "integer_below_min_value", ">= -9223372036854775808"),
    ("seed", b"123456789012345678901234567890", "integer_above_max_value",
     "<= 9223372036854775807"),
    # beyond OpenAI's int64 seed, within orjson's u64: it went upstream as it was
    ("seed", b"9223372036854775808", "integer_above_max_value", "<= 9223372036854775807"),
    ("seed", b"18446744073709551615", "integer_above_max_value", "<= 9223372036854775807"),
    ("max_tokens", b"18446744073709551616", "integer_above_max_value", "<= 9223372036854775807"),
    ("max_completion_tokens", b"99999999999999999999", "integer_above_max_value",
     "<= 9223372036854775807"),
    ("n", b"18446744073709551616", "integer_above_max_value", "<= 128"),
    ("top_logprobs", b"18446744073709551616", "integer_above_max_value", "<= 20"),
    ("max_tokens", b"-18446744073709551616", "integer_below_min_value", ">= 1"),
    ("top_logprobs", b"-18446744073709551616", "integer_below_min_value", ">= 0"),
])
def test_an_integer_beyond_64_bits_is_openai_s_range_error(field: str, number: bytes, code: str,
                                                           bound: str) -> None:
    """OpenAI's answer to an integer out of range (its `seed` is an int64) is a 400 naming the
    bound, not 'expected an integer' for a number that is one."""
    raw = b'{"model": "m", "%b": %b, %b}' % (field.encode(), number, _HI)
    with pytest.raises(InvalidRequest) as caught:
        parse_chat_request(raw)
    assert (caught.value.param, caught.value.code) == (field, code)
    assert f"Expected a value {bound}" in str(caught.value)


@pytest.mark.parametrize(("field", "number"), [
    ("max_tokens", 0), ("max_tokens", -678), ("max_completion_tokens", 0), ("n", 0), ("n", -1)])
def test_a_count_below_1_is_openai_s_range_error(field: str, number: int) -> None:
    """OpenAI answers `max_tokens: 0` (a client that computed its budget and ran out) with
    integer_below_min_value and the bound; here it was an invalid_value of other words, where
    an integer below 64 bits' least already got OpenAI's."""
    body = {"messages": [{"role": "user", "content": "hi"}], field: number}
    with pytest.raises(InvalidRequest) as caught:
        parse_chat_request(orjson.dumps(body))
    assert (caught.value.param, caught.value.code) == (field, "integer_below_min_value")
    assert str(caught.value) == (f"Invalid '{field}': integer below minimum value. Expected a "
                                 f"value >= 1, but got {number} instead.")


@pytest.mark.parametrize(("field", "number", "says"), [
    # OpenAI's API reference bounds these lower than int64, and answers so; they went on (a
    # provider made 129 choices, or refused with its own wording), 2**63 to 2**64 - 1 too
    ("n", 129, "integer above maximum value. Expected a value <= 128, but got 129 instead."),
    ("n", 2**64 - 1, "integer above maximum value. Expected a value <= 128, but got "
                     "18446744073709551615 instead."),
    ("top_logprobs", 21, "integer above maximum value. Expected a value <= 20, but got 21 "
                         "instead."),
    ("top_logprobs", -1, "integer below minimum value. Expected a value >= 0, but got -1 "
                         "instead."),
    ("max_tokens", 2**63, "integer above maximum value. Expected a value <= "
                          "9223372036854775807, but got 9223372036854775808 instead."),
])
def test_n_and_top_logprobs_out_of_openai_s_range_are_its_400(field: str, number: int,
                                                              says: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "logprobs": True,
            field: number}
    with pytest.raises(InvalidRequest) as caught:
        parse_chat_request(orjson.dumps(body))
    assert caught.value.status == 400
    assert (caught.value.param, str(caught.value)) == (field, f"Invalid '{field}': {says}")
    assert caught.value.code == f"integer_{'above_max' if number > 0 else 'below_min'}_value"
    for within in ((1, 128) if field == "n" else (0, 20) if field == "top_logprobs" else ()):
        parse_chat_request(orjson.dumps({**body, field: within}))


@pytest.mark.parametrize("body", [b'"seed": 9223372036854775807', b'"seed": -9223372036854775808',
                                  b'"seed": 0', b'"max_tokens": 9223372036854775807'])
def test_integers_within_int64_still_pass(body: bytes) -> None:
    req = parse_chat_request(b'{"model": "m", %b, %b}' % (body, _HI))
    assert orjson.loads(req.raw) == req.body


@pytest.mark.parametrize("value", [b"1.5", b"5.0", b'"5"'])
def test_a_seed_that_is_no_integer_is_still_a_type_error(value: bytes) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_chat_request(b'{"model": "m", "seed": %b, %b}' % (value, _HI))
    assert (caught.value.param, caught.value.code) == ("seed", "invalid_type")


@pytest.mark.parametrize("message", [
    {"role": "assistant", "content": "sunny", "tool_calls": []},
    {"role": "assistant", "tool_calls": []},  # went on as a blank assistant turn
    {"role": "assistant", "content": None, "tool_calls": []},
])
def test_an_empty_tool_calls_array_is_openai_s_400(message: dict[str, Any]) -> None:
    """OpenAI refuses `tool_calls: []` (what openai-node's parse helpers once sent back);
    the translators answered it, and one with no content besides as a blank turn."""
    body = {"messages": [{"role": "user", "content": "weather?"}, message]}
    with pytest.raises(InvalidRequest) as caught:
        parse_chat_request(orjson.dumps(body))
    assert (caught.value.param, caught.value.code) == ("messages[1].tool_calls", "empty_array")
    assert "Expected an array with minimum length 1" in str(caught.value)


@pytest.mark.parametrize(("retries", "code"), [
    (11, "invalid_value"), (-1, "invalid_value"), (10**30, "invalid_value"),
    ("2", "invalid_type"), (1.5, "invalid_type"), (True, "invalid_type"), ({}, "invalid_type"),
])
def test_a_onellm_retries_out_of_range_or_type_has_a_code(retries: Any, code: str) -> None:
    """A 400 naming `retries` had `code: null`, where every other field's has one."""
    body = {"messages": [{"role": "user", "content": "hi"}], "retries": retries}
    with pytest.raises(InvalidRequest) as caught:
        parse_chat_request(orjson.dumps(body) if retries != 10**30 else
                           b'{"retries": %d, %b}' % (retries, _HI))
    assert (caught.value.param, caught.value.code) == ("retries", code)
    assert "from 0 to 10" in str(caught.value)


@pytest.mark.parametrize("kind", TRANSLATING)
@pytest.mark.parametrize("verbosity", ["max", "LOW", 3, True])
async def test_a_verbosity_openai_does_not_know_is_a_400_where_it_is_dropped(
        proxy: Any, upstream: Any, kind: str, verbosity: Any) -> None:
    """The translating providers (and mistral) drop `verbosity`, a hint they have no field for:
    a value OpenAI refuses went unnoticed, so one request was a 400 on OpenAI and an answer on
    Claude, as a reasoning_effort OpenAI does not know is not."""
    client = await proxy(provider_config(kind, upstream.url, **_settings(kind)))
    resp = await client.post("/v1/chat/completions", json={
        "model": "m", "messages": [{"role": "user", "content": "hi"}], "verbosity": verbosity})
    assert resp.status == 400
    err = (await resp.json())["error"]
    assert (err["code"], err["param"]) == ("invalid_value", "verbosity")
    assert "'low', 'medium', and 'high'" in err["message"]
    assert upstream.requests == []


@pytest.mark.parametrize("verbosity", ["low", "medium", "high", None])
async def test_a_verbosity_openai_knows_is_still_dropped(proxy: Any, upstream: Any,
                                                         verbosity: Any) -> None:
    upstream.body = jsonl_to_sse(fixture_bytes("anthropic/vercel-ai_anthropic-text.chunks.jsonl"))
    client = await proxy(provider_config("anthropic", upstream.url))
    resp = await client.post("/v1/chat/completions", json={
        "model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}],
        "verbosity": verbosity})
    assert resp.status == 200
    [sent] = upstream.requests
    assert "verbosity" not in sent.json()


# (an OpenAI-compatible upstream may know more: OpenRouter's verbosity `max`, Groq's own
# service tiers on_demand and performance)
@pytest.mark.parametrize(("field", "value"), [("verbosity", "max"),
                                              ("service_tier", "on_demand")])
async def test_a_pass_through_type_forwards_any_value_of_a_dropped_field(
        proxy: Any, upstream: Any, field: str, value: str) -> None:
    upstream.body = fixture_bytes("openai/pydantic-ai_run_stream_sync.response0.sse")
    client = await proxy(provider_config("openai", upstream.url))
    await client.post("/v1/chat/completions", json={
        "model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}],
        field: value})
    [sent] = upstream.requests
    assert sent.json()[field] == value


@pytest.mark.parametrize("kind", TRANSLATING)
@pytest.mark.parametrize("modalities", ["audio", "text", {"audio": True}, ["text", 5]])
async def test_modalities_that_are_no_array_of_strings_are_a_400(
        proxy: Any, upstream: Any, kind: str, modalities: Any) -> None:
    """The refusal of audio answers looks into an array: `modalities: "audio"` (a string) went
    past it, was dropped, and the client that asked for a spoken answer got text, where OpenAI
    answers a 400 for the type."""
    client = await proxy(provider_config(kind, upstream.url, **_settings(kind)))
    resp = await client.post("/v1/chat/completions", json={
        "model": "m", "messages": [{"role": "user", "content": "hi"}], "modalities": modalities})
    assert resp.status == 400
    err = (await resp.json())["error"]
    assert (err["code"], err["param"]) == ("invalid_type", "modalities")
    assert "an array of strings" in err["message"]
    assert upstream.requests == []


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("service_tier", 5, "a string"),
    ("prompt_cache_key", 3, "a string"),
    ("prompt_cache_retention", 24, "a string"),
    ("logit_bias", "x", "an object of numbers"),
    ("logit_bias", {"50256": "ban"}, "an object of numbers"),
    ("audio", "alloy", "an object"),
    ("prediction", "the old file", "an object"),
    ("web_search_options", True, "an object"),
])
def test_dropped_fields_of_the_wrong_type_are_a_400_naming_them(field: str, value: Any,
                                                                 expected: str) -> None:
    """The translating providers drop these: a value OpenAI refuses for its type was answered
    as if valid, so one request was a 400 on OpenAI and an answer elsewhere."""
    body = {"messages": [{"role": "user", "content": "hi"}], field: value}
    with pytest.raises(InvalidRequest) as caught:
        parse_chat_request(orjson.dumps(body))
    assert (caught.value.param, caught.value.code) == (field, "invalid_type")
    assert expected in str(caught.value)


@pytest.mark.parametrize("value", ["yes", 1])
def test_include_obfuscation_that_is_no_boolean_is_a_400(value: Any) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True,
            "stream_options": {"include_obfuscation": value}}
    with pytest.raises(InvalidRequest) as caught:
        parse_chat_request(orjson.dumps(body))
    assert (caught.value.param, caught.value.code) == ("stream_options.include_obfuscation",
                                                       "invalid_type")


@pytest.mark.parametrize("option", ["include_usage", "include_obfuscation"])
def test_a_stream_option_of_null_is_no_option(option: str) -> None:
    """OpenAI reads null as the option left out (clients that serialise every field of their
    options object, Java's and .NET's among them, write it): it was a 400 invalid_type."""
    req = parse_chat_request(orjson.dumps({
        "messages": [{"role": "user", "content": "hi"}], "stream": True,
        "stream_options": {option: None}}))
    assert req.stream and not req.include_usage


def test_dropped_fields_of_the_right_type_still_pass() -> None:
    req = parse_chat_request(orjson.dumps({
        "messages": [{"role": "user", "content": "hi"}], "stream": True,
        "service_tier": "flex", "prompt_cache_key": "k", "prompt_cache_retention": "24h",
        "logit_bias": {"50256": -100, "13": 2.5}, "audio": {"voice": "alloy"},
        "prediction": {"type": "content", "content": "x"}, "web_search_options": {},
        "stream_options": {"include_usage": True, "include_obfuscation": False}}))
    assert req.include_usage


@pytest.mark.parametrize("kind", TRANSLATING)
@pytest.mark.parametrize(("field", "value"), [
    ("service_tier", "turbo"), ("service_tier", "on_demand"), ("service_tier", "FLEX"),
])
async def test_a_dropped_value_openai_does_not_know_is_a_400(
        proxy: Any, upstream: Any, kind: str, field: str, value: str) -> None:
    """Dropped, `service_tier: "turbo"` was answered as if valid, where OpenAI answers 400."""
    client = await proxy(provider_config(kind, upstream.url, **_settings(kind)))
    resp = await client.post("/v1/chat/completions", json={
        "model": "m", "messages": [{"role": "user", "content": "hi"}], field: value})
    assert resp.status == 400
    err = (await resp.json())["error"]
    assert (err["code"], err["param"]) == ("invalid_value", field)
    assert "'auto', 'default', 'flex', 'scale', 'priority', and 'fast'" in err["message"]
    assert upstream.requests == []


@pytest.mark.parametrize(("field", "value"), [
    ("service_tier", "priority"), ("service_tier", "auto"), ("prompt_cache_retention", "24h"),
    # OpenAI renamed priority processing Fast mode and takes both names (the openai SDK's
    # `service_tier` type has "fast"): a 400 for it refused what a typed client may send.
    ("service_tier", "fast")])
async def test_a_dropped_value_openai_knows_is_still_dropped(proxy: Any, upstream: Any,
                                                             field: str, value: str) -> None:
    upstream.body = jsonl_to_sse(fixture_bytes("anthropic/vercel-ai_anthropic-text.chunks.jsonl"))
    client = await proxy(provider_config("anthropic", upstream.url))
    resp = await client.post("/v1/chat/completions", json={
        "model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}],
        field: value})
    assert resp.status == 200
    [sent] = upstream.requests
    assert field not in sent.json()




@pytest.mark.parametrize(("field", "value", "code", "bound"), [
    ("temperature", 2.5, "decimal_above_max_value", "<= 2"),
    ("temperature", -0.1, "decimal_below_min_value", ">= 0"),
    ("top_p", 1.5, "decimal_above_max_value", "<= 1"),
    ("top_p", -1, "decimal_below_min_value", ">= 0"),
    ("presence_penalty", 3, "decimal_above_max_value", "<= 2"),
    ("frequency_penalty", -2.5, "decimal_below_min_value", ">= -2"),
])
def test_a_decimal_outside_openai_s_range_is_its_400(field: str, value: float, code: str,
                                                     bound: str) -> None:
    """OpenAI refuses these on every model. Unchecked, a request went on as it was: answered
    where a translator drops the field (penalties on Anthropic, Bedrock and most Gemini
    models; sampling on the Claudes that take none), else refused in the provider's words."""
    body = {"messages": [{"role": "user", "content": "hi"}], field: value}
    with pytest.raises(InvalidRequest) as caught:
        parse_chat_request(orjson.dumps(body))
    assert (caught.value.param, caught.value.code) == (field, code)
    assert f"Expected a value {bound}, but got {value} instead." in str(caught.value)


@pytest.mark.parametrize(("field", "value"), [
    ("temperature", 0), ("temperature", 2), ("top_p", 0), ("top_p", 1),
    ("presence_penalty", -2), ("frequency_penalty", 2), ("frequency_penalty", 0.5)])
def test_a_decimal_at_openai_s_bounds_is_taken(field: str, value: float) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], field: value}
    assert parse_chat_request(orjson.dumps(body)).body[field] == value


@pytest.mark.parametrize("message", [{"content": "hi"}, {"role": None, "content": "hi"}])
def test_a_message_without_a_role_is_a_missing_parameter(message: dict[str, Any]) -> None:
    # As OpenAI answers it (a null role is none); it was an invalid_value listing the roles.
    with pytest.raises(InvalidRequest) as caught:
        parse_chat_request(orjson.dumps({"messages": [message]}))
    assert (caught.value.param, caught.value.code) == ("messages[0].role",
                                                       "missing_required_parameter")
    assert str(caught.value) == "Missing required parameter: 'messages[0].role'."


@pytest.mark.parametrize(("bias", "says"), [
    ({"hello": 5}, "Invalid key in 'logit_bias': hello. You should only be submitting "
                   "non-negative integers."),
    ({"-1": 5}, "Invalid key in 'logit_bias': -1."),
    ({"50256": 150}, "Expected a value <= 100, but got 150 instead."),
    ({"13": 2, "50256": -100.5}, "Expected a value >= -100, but got -100.5 instead."),
])
def test_a_logit_bias_openai_refuses_is_its_400(bias: dict[str, Any], says: str) -> None:
    """OpenAI takes token ids (non-negative integers) to biases from -100 to 100. Unchecked,
    every translating provider dropped such a bias and answered (a word as its key, as the
    tokenizer-unaware send it, was ignored unnoticed); pass-through ones sent it on."""
    body = {"messages": [{"role": "user", "content": "hi"}], "logit_bias": bias}
    with pytest.raises(InvalidRequest) as caught:
        parse_chat_request(orjson.dumps(body))
    assert (caught.value.param, caught.value.code) == ("logit_bias", "invalid_value")
    assert says in str(caught.value)


def test_a_logit_bias_at_openai_s_bounds_is_taken() -> None:
    bias = {"0": -100, "50256": 100, "13": 2.5}
    body = {"messages": [{"role": "user", "content": "hi"}], "logit_bias": bias}
    assert parse_chat_request(orjson.dumps(body)).body["logit_bias"] == bias


@pytest.mark.parametrize("kind", ["anthropic", "groq"])
async def test_a_logit_bias_out_of_range_reaches_no_upstream(proxy: Any, upstream: Any,
                                                             kind: str) -> None:
    client = await proxy(provider_config(kind, upstream.url, **_settings(kind)))
    resp = await client.post("/v1/chat/completions", json={
        "model": "m", "messages": [{"role": "user", "content": "hi"}],
        "logit_bias": {"50256": 1000}})
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == "logit_bias"
    assert upstream.requests == []
