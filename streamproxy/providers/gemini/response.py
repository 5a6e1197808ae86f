"""Gemini non-streamed `generateContent` answer → OpenAI `chat.completion` (pure).

The answer is one `GenerateContentResponse`, the same object a stream chunk is, so it goes
through the stream translator's message handler into a CompletionBuilder: one mapping for both.
"""

from __future__ import annotations

from typing import Any

import orjson

from streamproxy._json import loads_lenient
from streamproxy.errors import StreamTruncated, UpstreamProtocolError, UpstreamStatusError
from streamproxy.openai_api.completion import CompletionBuilder
from streamproxy.providers.gemini.stream import GeminiStreamTranslator


def to_completion(body: bytes, *, completion_id: str, created: int, model: str,
                  provider: str = "gemini", logprobs: bool = False,
                  names: dict[str, str] | None = None) -> dict[str, Any]:
    try:
        msg = loads_lenient(body)
    except orjson.JSONDecodeError:
        msg = None
    if not isinstance(msg, dict):
        raise UpstreamProtocolError("the upstream answered with a malformed response")
    out = CompletionBuilder()
    translator = GeminiStreamTranslator(out, 0, provider, logprobs=logprobs, grounded=True,
                                        names=names)
    translator.on_message(msg, body)
    if out.failure is not None:
        if isinstance(out.failure, UpstreamStatusError):  # a failed finish
            raise out.failure.with_usage(translator.usage_so_far())
        raise out.failure
    try:
        translator.end_of_stream()
    except StreamTruncated:
        raise UpstreamProtocolError("the upstream answered without a finish reason") from None
    return out.completion(completion_id=completion_id, created=created, model=model)
