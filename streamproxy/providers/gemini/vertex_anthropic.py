"""Claude on Vertex AI: a `type: vertex` provider's Claude models speak Anthropic's format.

    POST {base}/v1/projects/{project}/locations/{location}/publishers/anthropic/models/
         {model}:streamRawPredict       (streamed: Anthropic's SSE)
         {model}:rawPredict             (not streamed: Anthropic's Message JSON)

The body is Anthropic's Messages request without `model` (it is in the URL) and with
`"anthropic_version": "vertex-2023-10-16"`; the answer is Anthropic's SSE stream or Message
JSON. So the Anthropic translations are reused whole, and only the URL, the body's two keys and
the authentication (the Vertex provider's token) differ — and images: Vertex refuses URL image
sources ("URL sources are not supported"), so an http(s) image is a 400 naming it (as on
Bedrock: the proxy fetches nothing), and images go as data: URLs. Claude's betas (the provider
option `anthropic_beta`, the `anthropic` type's `anthropic-beta` header) go in the body too, as
the list `anthropic_beta`: Vertex refuses some of them in the header (`context-1m-2025-08-07`).
(Anthropic's "Claude on Vertex AI" page and its SDK's `AnthropicVertex` client give these
rules.)

A model is Claude when its name starts with `claude-` (Vertex's ids: `claude-sonnet-4-5@20250929`),
with Portkey's publisher prefix `anthropic.` (`anthropic.claude-sonnet-4-5@20250929`, sent as the
id after it), or it is the resource path `publishers/anthropic/models/<model>` (also after
`projects/…/locations/…/`: VertexProvider.for_model).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from streamproxy._json import loads_lenient
from streamproxy.errors import UpstreamStatusError
from streamproxy.openai_api.chunks import ChunkSink
from streamproxy.providers.anthropic.names import client_names
from streamproxy.providers.anthropic.options import beta_names
from streamproxy.providers.anthropic.request import (
    DROPPED,
    VERTEX_WITHOUT_STRUCTURED_OUTPUTS,
    to_anthropic,
)
from streamproxy.providers.anthropic.response import answer_events, to_completion
from streamproxy.providers.anthropic.stream import (
    ERROR_STATUS,
    AnthropicStreamTranslator,
    anthropic_error,
)
from streamproxy.providers.base import Provider, StreamTranslator, UpstreamRequest, generic_error
from streamproxy.providers.gemini.errors import error_from_object, google_error

if TYPE_CHECKING:
    from streamproxy.openai_api.request import ChatRequest
    from streamproxy.providers.gemini import VertexProvider
    from streamproxy.routing.target import Target

VERTEX_ANTHROPIC_VERSION = "vertex-2023-10-16"
PUBLISHER_PATH = "publishers/anthropic/models/"
# Portkey's Vertex names a partner model `<publisher>.<id>` ("prepend anthropic. to the model
# name"): the id is what Vertex and the model lists know.
PORTKEY_PREFIX = "anthropic."


def is_claude(model: str) -> bool:
    return model.startswith(("claude-", PUBLISHER_PATH, PORTKEY_PREFIX))


class VertexClaudeProvider(Provider):
    """A Vertex provider's view for one Claude request: its endpoint and token, Anthropic's
    translations. Made per request by `VertexProvider.for_model`, so a per-target clone (its
    `vertex_region`) is always the one asked."""

    type_name: ClassVar[str] = "vertex"
    dropped_params: ClassVar[frozenset[str]] = DROPPED
    answering_options: ClassVar[frozenset[str]] = frozenset({"anthropic_beta"})

    def __init__(self, vertex: VertexProvider) -> None:
        super().__init__(vertex.cfg, max_event_bytes=vertex.max_event_bytes)
        self.vertex = vertex

    @property
    def base_url(self) -> str:
        return self.vertex.base_url

    @property
    def refusal_subject(self) -> str:
        # (the provider's Gemini models search and answer with images: the refusal is Claude's)
        return f"Claude on provider '{self.name}'"

    async def prepare(self, target: Target) -> None:
        await self.vertex.prepare(target)

    def build_request(self, req: ChatRequest, target: Target) -> UpstreamRequest:
        model = self.vertex.checked_model(target).removeprefix(PORTKEY_PREFIX)
        url = self.vertex.model_url(model if "/" in model else PUBLISHER_PATH + model)
        # (Vertex takes no URL image sources: a 400 naming the image, not Vertex's misleading one)
        body = to_anthropic(target.apply_overrides(req.body), model,
                            VERTEX_WITHOUT_STRUCTURED_OUTPUTS, url_images=False)
        del body["model"]
        body["anthropic_version"] = VERTEX_ANTHROPIC_VERSION
        betas = beta_names(self.cfg.options.get("anthropic_beta"))
        if betas:
            body["anthropic_beta"] = betas
        method = "streamRawPredict" if req.stream else "rawPredict"
        headers = {"content-type": "application/json", **self.cfg.headers, **target.headers,
                   **self.vertex.auth_headers(target)}
        return UpstreamRequest(f"{url}:{method}", orjson.dumps(body), headers)

    def stream_translator(self, req: ChatRequest, out: ChunkSink) -> StreamTranslator:
        return VertexClaudeStreamTranslator(out, self.max_event_bytes, self.name,
                                            client_names(req.body))

    def translate_response(self, body: bytes, req: ChatRequest, *, completion_id: str,
                           created: int, model: str = "") -> dict[str, Any]:
        return to_completion(body, completion_id=completion_id, created=created, model=model,
                             names=client_names(req.body))

    def rejected(self, status: int, sent: UpstreamRequest) -> None:
        self.vertex.rejected(status, sent)

    def events_of_answer(self, body: bytes) -> bytes | None:
        return answer_events(body)  # (rawPredict's whole Message for streamRawPredict)

    def parse_error(self, status: int, body: bytes) -> UpstreamStatusError:
        """Vertex's own refusals (quota, permission, an unknown model) are Google's
        `{"error": {"code", "message", "status"}}`; Claude's are Anthropic's `{"type": "error",
        "error": {"type", "message"}}`, passed through: each read by its own fields."""
        if _is_claudes(body):
            return anthropic_error(status, body, self.name)
        return google_error(status, body, self.name)

    def answered_error(self, body: bytes) -> UpstreamStatusError:
        """An error a 200 carried, with the status it names, as the same object with its own
        status is read: Claude's by its type (overloaded_error: 529, as `type: anthropic`
        reads it), Vertex's by its numeric `code` (as for Gemini). Each was a 502 `api_error`,
        which retries and fallbacks listing 429 or 529 did not act on."""
        if not _is_claudes(body):
            return google_error(0, body, self.name)
        err = generic_error(502, body, self.name)
        status = ERROR_STATUS.get(err.code or "")
        return err if status is None else anthropic_error(status, body, self.name)


class VertexClaudeStreamTranslator(AnthropicStreamTranslator):
    """Claude's stream, in which Vertex itself may fail with Google's `data: {"error": {"code",
    "message", "status"}}` (a quota, a permission): read as the Gemini stream reads it, by its
    numeric code, Google's status as the code and its RetryInfo wait."""

    def platform_error(self, err: dict[str, Any]) -> UpstreamStatusError:
        return error_from_object(err, 0, self._provider)


def _is_claudes(body: bytes) -> bool:
    """Whether an error body is Anthropic's `{"type": "error", ...}` (else Google's). Parsed
    as leniently as each reader then parses it: strictly, one quoting text cut inside an emoji
    (a lone surrogate escape) was read as Google's, its type and context overflow lost."""
    try:
        obj = loads_lenient(body) if body else None
    except orjson.JSONDecodeError:
        return False
    return isinstance(obj, dict) and obj.get("type") == "error"
