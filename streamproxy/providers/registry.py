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
