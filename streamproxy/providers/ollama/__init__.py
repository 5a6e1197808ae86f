"""Ollama's native chat API (`type: ollama`): `POST {base}/api/chat`, NDJSON stream."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from streamproxy.config import ConfigError
from streamproxy.errors import UpstreamProtocolError, UpstreamStatusError
from streamproxy.openai_api.chunks import ChunkSink
from streamproxy.openai_api.completion import CompletionBuilder
from streamproxy.providers.base import (
    Provider,
    StreamTranslator,
    UpstreamRequest,
    context_overflow,
    generic_error,
    load_event_json,
)
from streamproxy.providers.ollama.request import (
    DROPPED,
    is_duration,
    option_type_error,
    to_ollama,
)
from streamproxy.providers.ollama.stream import (
    OVERFLOW,
    OllamaStreamTranslator,
    content_logprobs_only,
    line_status,
)

if TYPE_CHECKING:
    from streamproxy.openai_api.request import ChatRequest
    from streamproxy.routing.target import Target


class OllamaProvider(Provider):
    type_name: ClassVar[str] = "ollama"
    default_base_url: ClassVar[str | None] = "http://127.0.0.1:11434"
    api_path: ClassVar[str] = "/api/chat"  # (/v1 and /api: check_entry, which says more)
    base_url_endings: ClassVar[tuple[str, ...]] = ("/api/chat",)
    # keep_alive: how long Ollama keeps the model loaded; options: default model options
    # (e.g. num_ctx) under the request's own.
    option_keys: ClassVar[frozenset[str]] = frozenset({"keep_alive", "options"})
    # The model options change the answer (a cached one must not outlive a change of them);
    # keep_alive does not.
    answering_options: ClassVar[frozenset[str]] = frozenset({"options"})
    dropped_params: ClassVar[frozenset[str]] = DROPPED

    @classmethod
    def check_options(cls, options: dict[str, Any], source: str, where: str) -> None:
        super().check_options(options, source, where)
        if not isinstance(options.get("options", {}), dict):
            raise ConfigError(source, f"{where}.options", "must be a mapping of Ollama options")
        # (else Ollama refuses every request, a 400 its clients take for their own mistake)
        for name, value in (options.get("options") or {}).items():
            problem = option_type_error(str(name), value)
            if problem:
                raise ConfigError(source, f"{where}.options.{name}", problem)
        if "keep_alive" in options and not is_duration(options["keep_alive"]):
            raise ConfigError(source, f"{where}.keep_alive",
                              "must be a duration string (e.g. 5m) or a number of seconds")

    @classmethod
    def check_entry(cls, entry: dict[str, Any], source: str, where: str) -> None:
        # Ollama's OpenAI-compatible root (`…:11434/v1`, as OpenAI clients are pointed at it)
        # or its /api: requests went to /v1/api/chat, Ollama's plain-text 404 for every one.
        base_url = entry.get("base_url")
        if isinstance(base_url, str) and base_url.rstrip("/").lower().endswith(("/v1", "/api")):
            raise ConfigError(source, f"{where}.base_url", (
                "must be Ollama's root (e.g. http://127.0.0.1:11434), which /api/chat is "
                "appended to: without its /v1 or /api (or type: openai for the /v1 API)"))

    def build_request(self, req: ChatRequest, target: Target) -> UpstreamRequest:
        body = to_ollama(target.apply_overrides(req.body), self.model_for(target),
                         stream=req.stream, defaults=self.cfg.options.get("options"))
        if "keep_alive" not in body and self.cfg.options.get("keep_alive") is not None:
            body["keep_alive"] = self.cfg.options["keep_alive"]
        headers = {"content-type": "application/json", **self.cfg.headers, **target.headers}
        if target.api_key:  # Ollama itself takes none; a reverse proxy or ollama.com may
            headers["authorization"] = f"Bearer {target.api_key}"
        return UpstreamRequest(f"{self.base_url}/api/chat", orjson.dumps(body), headers)

    def parse_error(self, status: int, body: bytes) -> UpstreamStatusError:
        error = generic_error(status, body, self.name)
        if status == 404 and _own_error(body):
            # Ollama's 404 is a model it has not pulled (`model "x" not found, try pulling it
            # first`): OpenAI's answer for an unknown model, as the gateway's own says it. Only
            # Ollama's `{"error": "..."}`: a wrong base_url's 404 is Go's plain text.
            error.code, error.error_type = "model_not_found", "invalid_request_error"
        return context_overflow(error, OVERFLOW)

    def answered_error(self, body: bytes) -> UpstreamStatusError:
        # (a stream request's 200 that is one `{"error": …}`: the status its line would have)
        error = generic_error(502, body, self.name)
        error.status = line_status(error.message)  # (its type, api_error, stays so for 503)
        return context_overflow(error, OVERFLOW)

    def stream_translator(self, req: ChatRequest, out: ChunkSink) -> StreamTranslator:
        return OllamaStreamTranslator(out, self.max_event_bytes, self.name,
                                      logprobs=bool(req.body.get("logprobs")))

    def translate_response(self, body: bytes, req: ChatRequest, *, completion_id: str,
                           created: int, model: str = "") -> dict[str, Any]:
        # A non-streamed answer is one object of the streamed shape, with `done: true`.
        builder = CompletionBuilder()
        logprobs = bool(req.body.get("logprobs"))
        translator = OllamaStreamTranslator(builder, 0, self.name, logprobs=logprobs)
        try:
            answer = load_event_json(body)
            translator.handle(content_logprobs_only(answer) if logprobs else answer, body)
        except UpstreamProtocolError:
            raise UpstreamProtocolError("the upstream answered with a malformed message") from None
        if builder.failure is not None:
            raise builder.failure
        if not translator.done:
            raise UpstreamProtocolError("the upstream answered without `done: true`")
        return builder.completion(completion_id=completion_id, created=created,
                                  model=model)



def _own_error(body: bytes) -> bool:
    """Whether `body` is Ollama's error object, `{"error": "<message>"}`."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(obj, dict) and isinstance(obj.get("error"), str)
