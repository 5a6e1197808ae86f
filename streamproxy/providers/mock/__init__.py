"""The built-in mock provider (`type: mock`).

It speaks Anthropic's wire format by default (`wire: openai` for OpenAI's), so requests to it
take the same translation path as a real provider. Without a `base_url` it is served
in-process on an ephemeral loopback port started with the proxy (`attach_local`).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, ClassVar

from streamproxy.config import ConfigError, ProviderConfig
from streamproxy.openai_api.chunks import ChunkSink
from streamproxy.providers.anthropic import AnthropicProvider
from streamproxy.providers.base import Provider, StreamTranslator, UpstreamRequest
from streamproxy.providers.openai_compat import OpenAIProvider

if TYPE_CHECKING:
    from streamproxy.openai_api.request import ChatRequest
    from streamproxy.routing.target import Target

WIRES: dict[str, type[Provider]] = {"anthropic": AnthropicProvider, "openai": OpenAIProvider}


class MockProvider(Provider):
    type_name: ClassVar[str] = "mock"
    option_keys: ClassVar[frozenset[str]] = frozenset({"wire"})
    forwarded_client_headers: ClassVar[tuple[str, ...]] = ("x-mock-options",)

    def __init__(self, cfg: ProviderConfig, **kw: Any) -> None:
        super().__init__(cfg, **kw)
        self.in_process = cfg.base_url is None
        self._wire = WIRES[cfg.options.get("wire", "anthropic")](cfg, **kw)

    @classmethod
    def check_options(cls, options: dict[str, Any], source: str, where: str) -> None:
        super().check_options(options, source, where)
        wire = options.get("wire", "anthropic")
        if not isinstance(wire, str) or wire not in WIRES:
            raise ConfigError(source, f"{where}.wire", f"must be one of {', '.join(WIRES)}")

    def attach_local(self, base_url: str) -> None:
        """Point an in-process mock at the loopback server the app started for it."""
        if self._wire.passthrough:
            base_url += "/v1"  # OpenAI's base URL convention includes the version
        self._wire.cfg = ProviderConfig(**{**_fields(self.cfg), "base_url": base_url})

    def with_base_url(self, base_url: str) -> Provider:
        clone = copy.copy(self)
        clone._wire = self._wire.with_base_url(base_url)
        return clone

    def build_request(self, req: ChatRequest, target: Target) -> UpstreamRequest:
        return self._wire.build_request(req, target)

    def stream_translator(self, req: ChatRequest, out: ChunkSink) -> StreamTranslator:
        return self._wire.stream_translator(req, out)

    def translate_response(self, body: bytes, req: ChatRequest, *, completion_id: str,
                           created: int, model: str = "") -> dict[str, Any] | bytes:
        return self._wire.translate_response(body, req, completion_id=completion_id,
                                             created=created, model=model)

    def parse_error(self, status: int, body: bytes) -> Any:
        return self._wire.parse_error(status, body)

    @property  # type: ignore[override]
    def passthrough(self) -> bool:
        return self._wire.passthrough

    @property  # type: ignore[override]
    def custom_tools(self) -> bool:
        return self._wire.passthrough


def _fields(cfg: ProviderConfig) -> dict[str, Any]:
    return {name: getattr(cfg, name) for name in cfg.__dataclass_fields__}
