"""`reasoning_effort` across the providers that translate it: OpenAI's values only (OpenAI
answers another with a 400 naming the parameter, and so does the proxy, never a silent drop)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from streamproxy.errors import InvalidRequest
from streamproxy.openai_api.content import REASONING_EFFORTS
from streamproxy.providers.anthropic.request import to_anthropic
from streamproxy.providers.bedrock.request import to_converse
from streamproxy.providers.cohere.request import to_cohere
from streamproxy.providers.gemini.request import to_gemini
from streamproxy.providers.ollama.request import to_ollama

TRANSLATORS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "anthropic": lambda body: to_anthropic(body, "claude-sonnet-4-5"),
    "bedrock-claude": lambda body: to_converse(body, "us.anthropic.claude-sonnet-4-5-v1:0"),
    "bedrock-nova": lambda body: to_converse(body, "amazon.nova-micro-v1:0"),
    "gemini": lambda body: to_gemini(body, "gemini-2.5-flash"),
    "cohere": lambda body: to_cohere(body, "command-a-reasoning"),
    "ollama": lambda body: to_ollama(body, "qwen3", stream=True),
}


def body(effort: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "hi"}], "reasoning_effort": effort}


@pytest.mark.parametrize("provider", TRANSLATORS)
@pytest.mark.parametrize("effort", ["extreme", "HIGH", "", 3, ["low"]])
def test_a_value_outside_openais_is_a_400_naming_it(provider: str, effort: Any) -> None:
    with pytest.raises(InvalidRequest) as caught:
        TRANSLATORS[provider](body(effort))
    assert caught.value.param == "reasoning_effort" and caught.value.code == "invalid_value"
    assert "'xhigh'" in str(caught.value)


# Each provider's own thinking knob, which wins over reasoning_effort where both are given.
NATIVE_THINKING = {"anthropic": {"thinking": {"type": "disabled"}},
                   "bedrock-claude": {"additionalModelRequestFields": {"thinking": {
                       "type": "disabled"}}},
                   "gemini": {"thinking_config": {"thinkingBudget": 0}},
                   "cohere": {"thinking": {"type": "disabled"}},
                   "ollama": {"think": False}}


@pytest.mark.parametrize("provider", NATIVE_THINKING)
def test_a_value_outside_openais_is_a_400_beside_a_native_thinking_knob(provider: str) -> None:
    # The native knob wins over a valid effort; an invalid one is still the client's mistake.
    with pytest.raises(InvalidRequest) as caught:
        TRANSLATORS[provider]({**body("extreme"), **NATIVE_THINKING[provider]})
    assert caught.value.param == "reasoning_effort"


@pytest.mark.parametrize("provider", TRANSLATORS)
@pytest.mark.parametrize("effort", [*REASONING_EFFORTS, None])
def test_every_openai_value_is_taken(provider: str, effort: Any) -> None:
    TRANSLATORS[provider](body(effort))


def test_openais_values_are_the_openai_sdks() -> None:
    """The openai SDK types `reasoning_effort` with every value OpenAI takes; its top, `max`
    (above xhigh), was a 400 "Invalid value" on every translating provider."""
    from typing import get_args

    from openai.types.shared.reasoning_effort import ReasoningEffort
    sdk = {v for arg in get_args(ReasoningEffort) for v in get_args(arg)}
    assert set(REASONING_EFFORTS) == sdk


@pytest.mark.parametrize("provider", TRANSLATORS)
def test_max_is_taken(provider: str) -> None:
    TRANSLATORS[provider](body("max"))
