"""The tools a client declares, checked as OpenAI checks them: a request OpenAI refuses gets its
400 (naming the field it names) whichever provider answers it, rather than one in the
provider's own words, or an answer."""

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

FUNCTION = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}


def refusal(tools: list[Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse_chat_request(orjson.dumps({"model": "m", "tools": tools,
                                         "messages": [{"role": "user", "content": "hi"}]}))
    return info.value


@pytest.mark.parametrize("tool", [
    {"type": "tool", "function": {"name": "f"}},  # was sent as a function tool
    {"type": "web_search_20250305", "name": "web_search"},  # was "function.name is required"
    {"type": 5, "function": {"name": "f"}},
])
def test_a_tool_of_a_type_openai_does_not_know_is_its_400_on_the_type(tool: Any) -> None:
    err = refusal([FUNCTION, tool])
    assert (err.param, err.code) == ("tools[1].type", "invalid_value")
    assert "Supported values are: 'function' and 'custom'" in err.message


def test_a_function_tool_with_an_empty_name_is_openais_400_naming_it() -> None:
    # It went to the provider: Claude, Gemini and Bedrock refused it in their own words (a
    # param-less 400), Ollama answered. OpenAI refuses it, naming the name.
    err = refusal([FUNCTION, {"type": "function", "function": {"name": ""}}])
    assert (err.param, err.code) == ("tools[1].function.name", "empty_string")
    assert "empty string" in err.message


# -- the same tool declared twice ----------------------------------------------------------------

def _sent_names(kind: str, body: dict[str, Any]) -> list[str]:
    """The names of the function tools a translator sends for `body`."""
    if kind == "anthropic":
        return [t["name"] for t in to_anthropic(body, "claude-sonnet-4-5")["tools"]]
    if kind == "gemini":
        return [d["name"] for d in to_gemini(body, "gemini-2.5-flash")["tools"][0][
            "functionDeclarations"]]
    if kind == "bedrock":
        return [t["toolSpec"]["name"] for t in to_converse(body, "anthropic.claude")[
            "toolConfig"]["tools"] if "toolSpec" in t]
    if kind == "cohere":
        return [t["function"]["name"] for t in to_cohere(body, "command-a")["tools"]]
    return [t["function"]["name"] for t in to_ollama(body, "llama3", stream=True)["tools"]]


OTHER = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {}}}}


@pytest.mark.parametrize("kind", ["anthropic", "gemini", "bedrock", "cohere", "ollama"])
@pytest.mark.parametrize("choice", [None, "required", {"type": "function",
                                                       "function": {"name": "get_weather"}}])
def test_a_tool_declared_twice_alike_goes_once(kind: str, choice: Any) -> None:
    # OpenAI takes a tool list with the same tool in it twice (an agent that merged two tool
    # sets); Claude refused it ("Tool names must be unique"), Gemini ("Duplicate function
    # declaration found") and Converse too. The repeat is the same tool: it goes once.
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                            "tools": [FUNCTION, OTHER, orjson.loads(orjson.dumps(FUNCTION))]}
    if choice is not None:
        body["tool_choice"] = choice
    parse_chat_request(orjson.dumps(body))  # (OpenAI's checks let it through)
    names = _sent_names(kind, body)
    assert names == (["get_weather"] if isinstance(choice, dict) and kind in ("cohere", "ollama")
                     else ["get_weather", "get_time"])


def test_tools_of_one_name_that_differ_all_go() -> None:
    # Not the same tool: which one the client meant is not ours to guess (the provider judges).
    other_weather = {"type": "function", "function": {"name": "get_weather"}}
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "tools": [FUNCTION, other_weather]}
    assert _sent_names("anthropic", body) == ["get_weather", "get_weather"]


def test_a_replayed_call_with_an_empty_name_is_openais_400_naming_it() -> None:
    # It went on as a call of no name (Claude's and Gemini's 400s in their words, Ollama's
    # answer); OpenAI refuses it, naming the call's name.
    call = {"id": "call_1", "type": "function", "function": {"name": "", "arguments": "{}"}}
    body = {"model": "m", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]}
    with pytest.raises(InvalidRequest) as info:
        parse_chat_request(orjson.dumps(body))
    assert (info.value.param, info.value.code) == ("messages[1].tool_calls[0].function.name",
                                                   "empty_string")


@pytest.mark.parametrize("tool", [
    {"function": {"name": "f"}},  # (the shape of `functions` entries, moved into `tools`)
    {"type": None, "function": {"name": "f"}},
])
def test_a_tool_without_a_type_is_openais_400_naming_it(tool: Any) -> None:
    # OpenAI answers "Missing required parameter: 'tools[0].type'."; it was sent as a function
    # tool: answered by a translating provider, refused in OpenAI's words by an OpenAI-type one.
    err = refusal([FUNCTION, tool])
    assert (err.param, err.code) == ("tools[1].type", "missing_required_parameter")
    assert err.message == "Missing required parameter: 'tools[1].type'."


@pytest.mark.parametrize(("tool", "code"), [
    ({"type": "custom", "custom": {"name": ""}}, "empty_string"),  # was taken, and sent
    ({"type": "custom", "custom": {}}, "missing_required_parameter"),  # named `function.name`
    ({"type": "custom"}, "missing_required_parameter"),
    ({"type": "custom", "custom": {"name": 5}}, "missing_required_parameter"),
])
def test_a_custom_tool_without_a_name_is_a_400_naming_its_name(tool: Any, code: str) -> None:
    # A custom tool is named as a function tool is: none, or an empty one, names no tool a
    # call could name (OpenAI refuses it). The 400 names the custom tool's name, which the
    # client wrote, not a `function.name` its tool has no place for.
    err = refusal([FUNCTION, tool])
    assert (err.param, err.code) == ("tools[1].custom.name", code)


def choice_refusal(choice: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse_chat_request(orjson.dumps({"model": "m", "tools": [FUNCTION], "tool_choice": choice,
                                         "messages": [{"role": "user", "content": "hi"}]}))
    return info.value


def test_a_named_tool_choice_without_a_type_is_openais_400_naming_it() -> None:
    # OpenAI answers it so (a tool_choice's `type` is required); the translators took it as a
    # forced call of the function, so one request was answered or refused by which target.
    err = choice_refusal({"function": {"name": "get_weather"}})
    assert (err.param, err.code) == ("tool_choice.type", "missing_required_parameter")
    assert err.message == "Missing required parameter: 'tool_choice.type'."


def test_a_named_tool_choice_of_another_type_is_a_400_on_tool_choice() -> None:
    err = choice_refusal({"type": "tool", "function": {"name": "get_weather"}})
    assert (err.param, err.code) == ("tool_choice", "invalid_value")
