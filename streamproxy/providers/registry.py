"""Every provider type, registered in this one place."""

from __future__ import annotations

from streamproxy.providers.anthropic import AnthropicProvider
from streamproxy.providers.azure import AzureOpenAIProvider
from streamproxy.providers.base import Provider
from streamproxy.providers.bedrock import BedrockProvider
from streamproxy.providers.cohere import CohereProvider
from streamproxy.providers.gemini import GeminiProvider, VertexProvider
from streamproxy.providers.mock import MockProvider
from streamproxy.providers.ollama import OllamaProvider
from streamproxy.providers.openai_compat import OpenAIProvider
from streamproxy.providers.presets import PRESETS

PROVIDER_TYPES: dict[str, type[Provider]] = {
    cls.type_name: cls
    for cls in (
        OpenAIProvider,
        AnthropicProvider,
        MockProvider,
        BedrockProvider,
        GeminiProvider,
        VertexProvider,
        CohereProvider,
        OllamaProvider,
        AzureOpenAIProvider,
        *PRESETS,
    )
}

# OneLLM's provider prefixes that are not our type names (its others — openai, anthropic,
# bedrock, azure, groq, mistral, cohere, ollama, openrouter, together, fireworks, deepseek,
# xai — are): an unknown-provider error says which type to configure under that name.
ONELLM_PREFIX_TYPES = {"google": "gemini", "vertexai": "vertex"}


def type_for_prefix(name: str) -> str | None:
    """The provider type a OneLLM-style `name/` prefix stands for, if any."""
    ptype = ONELLM_PREFIX_TYPES.get(name, name)
    return ptype if ptype in PROVIDER_TYPES else None
