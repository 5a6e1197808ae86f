"""OpenAI-compatible upstreams (`type: openai`): the pass-through path.

A streamed answer is already in the client's format, so each event's bytes are re-framed and
forwarded without touching the JSON. Only the few events that matter to the gateway are parsed,
picked out by a cheap byte search first: the usage chunk, finish chunks, error objects and
empty-`choices` chunks. The request always asks the upstream for usage
(`stream_options.include_usage`) so logs and metrics have token counts; the usage chunk is
forwarded only when the client asked for it itself.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from streamproxy.decode.sse import SSEEvent
from streamproxy.errors import StreamDecodeError, UpstreamStatusError
from streamproxy.openai_api.chunks import ChunkSink
from streamproxy.providers.base import (
    Provider,
    SSETranslator,
    StreamTranslator,
    UpstreamRequest,
    load_event_json,
)

if TYPE_CHECKING:
    from streamproxy.openai_api.request import ChatRequest
    from streamproxy.routing.target import Target

# Byte patterns that mark an event worth parsing: a usage object, an error, a finish reason,
# empty or null choices. A false positive only costs a parse. One regex scan per event, not
# one substring scan per pattern (four times cheaper on a typical 200-byte chunk).
_INTERESTING = re.compile(
    rb'"(?:usage": ?\{|error"|finish_reason": ?"|choices": ?(?:\[\]|null))')


class PassthroughTranslator(SSETranslator):
    def __init__(self, out: ChunkSink, max_event_bytes: int, *, provider: str,
                 client_wants_usage: bool) -> None:
        super().__init__(out, max_event_bytes)
        self._provider = provider
        self._forward_usage = client_wants_usage

    def on_event(self, event: SSEEvent) -> None:
        data = event.data
        if data[:6] == b"[DONE]":
            self.on_done()
            return
        if _INTERESTING.search(data) is not None:
            self.on_chunk(load_chunk(data), data)
            return
        if data[:1] != b"{" or data[-1:] != b"}":
            # Not framed like a JSON object: a cut or garbled event is an error, never forwarded
            # (the parse, only on this rare path, still lets padded JSON through).
            load_event_json(data)
        self.out.raw(data)

    def on_done(self) -> None:
        """The upstream's `[DONE]`, the normal end (a subclass may emit a last chunk first)."""
        self.out.end()
        self.done = True

    def on_chunk(self, chunk: dict[str, Any], data: bytes) -> None:
        """An event worth a look, parsed; `data` (its bytes) is what gets forwarded. Provider
        quirks hook in by overriding this (providers/presets.py, providers/azure.py)."""
        error = chunk.get("error")
        if error:
            self.out.error(_stream_error(error, self._provider))
            self.done = True
            return
        usage = chunk.get("usage")
        if usage:
            self.out.usage(usage)
        choices = chunk.get("choices")
        if not choices:
            # The usage chunk (vLLM sends `choices: null`), or Azure's prompt-filter preamble.
            if usage and self._forward_usage:
                if choices is None:
                    chunk["choices"] = []
                    data = orjson.dumps(chunk)
                self.out.raw(data)
            return
        reason = choices[0].get("finish_reason") if isinstance(choices[0], dict) else None
        self.out.raw(data, reason)


def load_chunk(data: bytes) -> dict[str, Any]:
    """An OpenAI chunk event, parsed: a JSON object whose `choices`, when present, is an array
    (so `choices[0]` is safe wherever a chunk is inspected)."""
    chunk = load_event_json(data)
    choices = chunk.get("choices")
    if choices is not None and not isinstance(choices, list):
        raise StreamDecodeError("the upstream sent a chunk whose 'choices' is not an array")
    return chunk


def _stream_error(error: Any, provider: str) -> UpstreamStatusError:
    if not isinstance(error, dict):
        error = {"message": str(error)}
    code = error.get("code")
    status = code if isinstance(code, int) and 400 <= code < 600 else 502
    return UpstreamStatusError(status, error.get("message") or "the provider reported an error",
                               provider=provider,
                               code=str(code) if code is not None else error.get("type"))


class OpenAIProvider(Provider):
    type_name: ClassVar[str] = "openai"
    default_base_url: ClassVar[str | None] = "https://api.openai.com/v1"
    option_keys: ClassVar[frozenset[str]] = frozenset({"organization", "project"})
    passthrough = True
    # Whether the upstream takes `stream_options.include_usage` (Mistral rejects it with a 422
    # and sends the counts anyway).
    asks_stream_usage: ClassVar[bool] = True

    def adapt_body(self, body: dict[str, Any]) -> dict[str, Any]:
        """The body to send, for compatible upstreams whose parameters differ from OpenAI's
        (providers/presets.py). Returns `body` itself when nothing changes, else a new dict."""
        return body

    def auth_headers(self, api_key: str | None) -> dict[str, str]:
        return {"authorization": f"Bearer {api_key}"} if api_key else {}

    def chat_url(self, model: str) -> str:
        return f"{self.base_url}/chat/completions"

    def build_request(self, req: ChatRequest, target: Target) -> UpstreamRequest:
        model = self.model_for(target)
        body = self.adapt_body(target.apply_overrides(req.body))
        changed = (model != req.model or body is not req.body or req.fallback_models
                   or req.retries is not None)
        if req.stream and not req.include_usage and self.asks_stream_usage:
            body = {**body, "stream_options": {**(body.get("stream_options") or {}),
                                               "include_usage": True}}
            changed = True
        raw = orjson.dumps({**body, "model": model}) if changed else req.raw
        headers = {"content-type": "application/json", **self.auth_headers(target.api_key)}
        if self.cfg.options.get("organization"):
            headers["openai-organization"] = self.cfg.options["organization"]
        if self.cfg.options.get("project"):
            headers["openai-project"] = self.cfg.options["project"]
        headers.update(self.cfg.headers)
        headers.update(target.headers)
        return UpstreamRequest(self.chat_url(model), raw, headers)

    def stream_translator(self, req: ChatRequest, out: ChunkSink) -> StreamTranslator:
        return PassthroughTranslator(out, self.max_event_bytes, provider=self.name,
                                     client_wants_usage=req.include_usage)

    def translate_response(self, body: bytes, req: ChatRequest, *, completion_id: str,
                           created: int) -> bytes:
        return body  # already a chat.completion: forwarded byte for byte
