"""Cohere v2 chat (`type: cohere`): `POST {base}/v2/chat`, SSE stream, bearer key."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from streamproxy.errors import UpstreamStatusError
from streamproxy.openai_api.chunks import ChunkSink
from streamproxy.providers.base import (
    Provider,
    StreamTranslator,
    UpstreamRequest,
    quota_exhausted,
)
from streamproxy.providers.cohere.request import DROPPED, to_cohere
from streamproxy.providers.cohere.response import to_completion
from streamproxy.providers.cohere.stream import (
    CohereStreamTranslator,
    answered_status,
    overflow,
)

if TYPE_CHECKING:
    from streamproxy.openai_api.request import ChatRequest
    from streamproxy.routing.target import Target


# Cohere's own status for a key it refuses ("invalid token"), which no OpenAI client reads as
# one: the openai SDK raises a bare APIStatusError for it, not an AuthenticationError.
INVALID_TOKEN = 498
# A trial key's monthly cap ("…limited to 1000 API calls / month"), a 429 worded as its
# per-minute limit is ("… / minute"): it lifts when the month turns, not after a backoff, so it
# is OpenAI's `insufficient_quota`, not retried.
PER_MONTH = ("calls / month",)


class CohereProvider(Provider):
    type_name: ClassVar[str] = "cohere"
    api_path: ClassVar[str] = "/v2/chat"
    base_url_endings: ClassVar[tuple[str, ...]] = ("/v1", "/v2", "/v2/chat")  # (/v1: v1's)
    default_base_url: ClassVar[str | None] = "https://api.cohere.com"
    dropped_params: ClassVar[frozenset[str]] = DROPPED

    def build_request(self, req: ChatRequest, target: Target) -> UpstreamRequest:
        body = to_cohere(target.apply_overrides(req.body), self.model_for(target))
        headers = {"content-type": "application/json", **self.cfg.headers, **target.headers}
        if target.api_key:
            headers["authorization"] = f"Bearer {target.api_key}"
        return UpstreamRequest(f"{self.base_url}/v2/chat", orjson.dumps(body), headers)

    def stream_translator(self, req: ChatRequest, out: ChunkSink) -> StreamTranslator:
        return CohereStreamTranslator(out, self.max_event_bytes, self.name,
                                      logprobs=bool(req.body.get("logprobs")))

    def translate_response(self, body: bytes, req: ChatRequest, *, completion_id: str,
                           created: int, model: str = "") -> dict[str, Any]:
        return to_completion(body, completion_id=completion_id, created=created,
                             model=model, provider=self.name,
                             logprobs=bool(req.body.get("logprobs")))

    def answered_error(self, body: bytes) -> UpstreamStatusError:
        # (a 502 unless it is the overflow, which is read as over HTTP)
        err = self.parse_error(502, body)
        return self.parse_error(400, body) if answered_status(err.message) == 400 else err

    def parse_error(self, status: int, body: bytes) -> UpstreamStatusError:
        err = super().parse_error(401 if status == INVALID_TOKEN else status, body)
        return quota_exhausted(overflow(err), PER_MONTH)
