"""The tools a client declares, checked as OpenAI checks them: a request OpenAI refuses gets its
400 (naming the field it names) whichever provider answers it, rather than one in the
provider's own words, or an answer."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streamproxy.errors import InvalidRequest
from streamproxy.openai_api.request import parse_chat_request

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
