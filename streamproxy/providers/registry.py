"""Every provider type, registered in this one place."""

from __future__ import annotations

from streamproxy.providers.anthropic import AnthropicProvider
from streamproxy.providers.base import Provider
from streamproxy.providers.mock import MockProvider
from streamproxy.providers.openai_compat import OpenAIProvider

PROVIDER_TYPES: dict[str, type[Provider]] = {
    cls.type_name: cls
    for cls in (
        OpenAIProvider,
        AnthropicProvider,
        MockProvider,
    )
}
