"""Anthropic Messages API (`type: anthropic`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from streamproxy.openai_api.chunks import ChunkSink
from streamproxy.providers.anthropic.names import client_names
from streamproxy.providers.anthropic.options import beta_names, check_option_values
from streamproxy.providers.anthropic.request import DROPPED, to_anthropic
from streamproxy.providers.anthropic.response import answer_events, to_completion
from streamproxy.providers.anthropic.stream import (
    ERROR_STATUS,
    AnthropicStreamTranslator,
    anthropic_error,
)
from streamproxy.providers.base import Provider, StreamTranslator, UpstreamRequest

if TYPE_CHECKING:
    from streamproxy.errors import UpstreamStatusError
    from streamproxy.openai_api.request import ChatRequest
    from streamproxy.routing.target import Target

ANTHROPIC_VERSION = "2023-06-01"


class AnthropicProvider(Provider):
    type_name: ClassVar[str] = "anthropic"
    api_path: ClassVar[str] = "/v1/messages"
    base_url_endings: ClassVar[tuple[str, ...]] = ("/v1", "/v1/messages")
    default_base_url: ClassVar[str | None] = "https://api.anthropic.com"
    option_keys: ClassVar[frozenset[str]] = frozenset({"anthropic_version", "anthropic_beta"})
    answering_options: ClassVar[frozenset[str]] = option_keys  # (betas change answers)
    target_options: ClassVar[dict[str, str]] = {"anthropic_version": "anthropic_version",
                                                "anthropic_beta": "anthropic_beta"}
    dropped_params: ClassVar[frozenset[str]] = DROPPED

    @classmethod
    def check_options(cls, options: dict[str, Any], source: str, where: str) -> None:
        super().check_options(options, source, where)
        check_option_values(options, source, where)

    def build_request(self, req: ChatRequest, target: Target) -> UpstreamRequest:
        body = to_anthropic(target.apply_overrides(req.body), self.model_for(target))
        headers = {
            "content-type": "application/json",
            "anthropic-version": self.cfg.options.get("anthropic_version", ANTHROPIC_VERSION),
            **self.cfg.headers,
            **target.headers,
        }
        betas = beta_names(self.cfg.options.get("anthropic_beta"))
        if betas:  # (a value naming none, ",", sends no empty header)
            headers["anthropic-beta"] = ",".join(betas)
        if target.api_key:
            headers["x-api-key"] = target.api_key
        return UpstreamRequest(f"{self.base_url}/v1/messages", orjson.dumps(body), headers)

    def stream_translator(self, req: ChatRequest, out: ChunkSink) -> StreamTranslator:
        return AnthropicStreamTranslator(out, self.max_event_bytes, self.name,
                                         client_names(req.body))

    def translate_response(self, body: bytes, req: ChatRequest, *, completion_id: str,
                           created: int, model: str = "") -> dict[str, Any]:
        return to_completion(body, completion_id=completion_id, created=created,
                             model=model, names=client_names(req.body))

    def parse_error(self, status: int, body: bytes) -> UpstreamStatusError:
        return anthropic_error(status, body, self.name)

    def answered_error(self, body: bytes) -> UpstreamStatusError:
        # The status its error type names (overloaded_error: 529), as for the same object sent
        # as an error event: a 502 was not retried or failed over by codes listing 529.
        err = self.parse_error(502, body)
        status = ERROR_STATUS.get(err.code or "")
        return err if status is None else self.parse_error(status, body)

    def events_of_answer(self, body: bytes) -> bytes | None:
        return answer_events(body)
