"""The one error tree. Every error knows its HTTP status and its OpenAI error type.

    ProxyError                          500 api_error
    ├── InvalidRequest                  400 invalid_request_error
    │   └── UnknownProvider             400 invalid_request_error  code=unknown_provider
    ├── AuthenticationFailed            401 authentication_error
    ├── PermissionDenied                403 permission_error
    ├── NotFound                        404 not_found_error
    ├── ClientReadTimeout               408 invalid_request_error  code=request_timeout
    ├── PayloadTooLarge                 413 invalid_request_error  code=request_too_large
    ├── RateLimited                     429 rate_limit_error       (carries retry_after)
    ├── Overloaded                      503 api_error              (carries retry_after)
    ├── UpstreamStatusError             <upstream status>          provider's message carried over
    ├── UpstreamUnreachable             502 api_error              code=upstream_unreachable
    ├── CredentialsUnavailable          502 api_error              no Vertex token or AWS keys
    ├── UpstreamTimeout                 504 api_error              code=upstream_timeout
    │   └── RequestTimeout              408 timeout_error          code=request_timeout
    └── UpstreamProtocolError           502 api_error              code=upstream_protocol_error
        ├── StreamDecodeError               malformed framing (SSE, NDJSON, event-stream)
        │   └── BufferOverflow              an incomplete event grew past its cap
        └── StreamTruncated                 the upstream closed before its end-of-stream event

An error a retry cannot mend (an upstream's redirect, an answer over `max_event_bytes`) has
`should_retry = False`: its answer says `x-should-retry: false`, which the openai SDKs obey
before the status (a 502 they would retry twice, generating and paying for it three times),
and a config's `retry` does not repeat it either (routing/executor.py; a fallback still runs).

Foreign exceptions (aiohttp, asyncio) are mapped into this tree at one boundary each
(`upstream/client.py`); errors become JSON only at the server boundary (`server/errors.py`).
Messages never contain API keys: a key (or any credential the request carried upstream,
`UpstreamRequest.credentials`) an upstream's error echoes is masked in the message
and in the fields an OpenAI-compatible provider's error keeps (`UpstreamStatusError.mask`,
where an attempt fails, `routing/executor.py`, and in a stream's error frame,
`openai_api/chunks.py`).
"""

from __future__ import annotations

from typing import Any

import orjson


class ProxyError(Exception):
    status: int = 500
    error_type: str = "api_error"
    code: str | None = None
    # Headers the answer carries besides the error's own (the chat handler's x-portkey-*).
    response_headers: dict[str, str] | None = None
    # The answer's `x-should-retry` when not None (server/errors.py): False for a failure
    # that would come again however often the request is sent.
    should_retry: bool | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        error_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if error_type is not None:
            self.error_type = error_type

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def body(self) -> bytes:
        """The JSON body of the error's HTTP answer."""
        try:
            return orjson.dumps(self.to_dict())
        except TypeError:
            # A message quoting a header whose bytes were not UTF-8 (aiohttp keeps them as lone
            # surrogates), which orjson refuses: the refusal became a 500. They read as U+FFFD.
            error = self.to_dict()["error"]
            return orjson.dumps({"error": {k: _text(v) if isinstance(v, str) else v
                                           for k, v in error.items()}})


def _text(value: str) -> str:
    """`value` with its lone surrogates as U+FFFD."""
    return value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


class InvalidRequest(ProxyError):
    status = 400
    error_type = "invalid_request_error"


class UnknownProvider(InvalidRequest):
    code = "unknown_provider"


class AuthenticationFailed(ProxyError):
    status = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(ProxyError):
    status = 403
    error_type = "permission_error"


class NotFound(ProxyError):
    status = 404
    error_type = "not_found_error"


class ClientReadTimeout(ProxyError):
    """The client stopped sending its request (server/reading.py)."""

    status = 408
    error_type = "invalid_request_error"
    code = "request_timeout"


class PayloadTooLarge(ProxyError):
    status = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class _RetryAfter(ProxyError):
    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class RateLimited(_RetryAfter):
    status = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"


class Overloaded(_RetryAfter):
    status = 503
    error_type = "api_error"
    code = "overloaded"


# OpenAI's error type for an upstream status, used when the provider's body has none we keep.
_TYPE_FOR_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class UpstreamStatusError(ProxyError):
    """The provider answered with an HTTP error; the client gets the same status.

    `fields`: an OpenAI-compatible provider's own error fields (`providers/base.py`
    `kept_fields`), which the client gets as they came — Azure's `innererror`, OpenRouter's
    `metadata`, a `type` or `code` of null — over ours; ours fill only what they lack.
    `error_type` and `code` stay ours for logs and metrics."""

    # The usage (OpenAI's shape) of an answer this error replaced (a non-streamed answer with
    # a failed finish): it still cost its tokens, which the request's record keeps.
    usage: dict[str, Any] | None = None

    def __init__(
        self,
        status: int,
        message: str,
        *,
        provider: str = "",
        code: str | None = None,
        param: str | None = None,
        error_type: str | None = None,
        retry_after: float | None = None,
        fields: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            message,
            status=status,
            code=code,
            param=param,
            error_type=error_type or _TYPE_FOR_STATUS.get(status, "api_error"),
        )
        self.provider = provider
        self.retry_after = retry_after
        self.fields = fields

    def with_usage(self, usage: Any) -> UpstreamStatusError:
        """This error, carrying `usage` (none unless an object): the answer it replaces still
        cost its tokens."""
        self.usage = usage if isinstance(usage, dict) else None
        return self

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        if self.fields:
            body["error"].update(self.fields)
        return body

    def mask(self, key: str) -> None:
        """Mask the key the upstream's error echoes (a provider that echoes the key it refused
        would show the client a server-side secret), in its message, code, param and every
        field kept (the code and param go to the access log too). Not a key shorter than
        `MIN_SECRET_LENGTH`: a placeholder a local server ignores (`x`, `EMPTY`, `ollama`, the
        openai SDK wants one), masked inside every word that held its letters ("ma…_tokens")."""
        if len(key) < MIN_SECRET_LENGTH:
            return
        if key in self.message:
            self.message = _masked(self.message, key)
            self.args = (self.message,)  # (what str(), repr() and a traceback print)
        if self.code and key in self.code:
            self.code = _masked(self.code, key)
        if self.param and key in self.param:
            self.param = _masked(self.param, key)
        if self.fields:
            self.fields = _masked_value(self.fields, key)


# No provider issues a key this short (theirs are 32 to 100+ characters): a shorter one is a
# placeholder, whose characters are in ordinary words.
MIN_SECRET_LENGTH = 8


def _masked(text: str, key: str) -> str:
    """`text` with `key` replaced by its last four characters."""
    shown = "…" + key[-4:] if len(key) >= 16 else "…"
    text = text.replace(key, shown)
    # Again while it is found: of two copies that overlap only the first is replaced, and the
    # tail shown spells the key again with the rest of the second. Each pass shortens the text.
    while len(shown) < len(key) and key in text:
        text = text.replace(key, shown)
    return text


def _masked_value(value: Any, key: str) -> Any:
    """A JSON value with the key masked in each of its strings, however deep."""
    if isinstance(value, str):
        return _masked(value, key) if key in value else value
    if isinstance(value, dict):
        return {_masked_value(k, key): _masked_value(v, key) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked_value(item, key) for item in value]
    return value


class UpstreamUnreachable(ProxyError):
    status = 502
    code = "upstream_unreachable"


class CredentialsUnavailable(ProxyError):
    """A provider's credentials for the upstream (a Vertex token, AWS credentials) could not be
    had: the lookup failed or took too long."""

    status = 502
    code = "upstream_credentials_unavailable"


class UpstreamTimeout(ProxyError):
    status = 504
    code = "upstream_timeout"


class RequestTimeout(UpstreamTimeout):
    """Portkey's `request_timeout` ran out before the answer started: Portkey answers 408 with
    type `timeout_error`, and its documented fallbacks and retries act on 408."""

    status = 408
    error_type = "timeout_error"
    code = "request_timeout"


class UpstreamProtocolError(ProxyError):
    status = 502
    code = "upstream_protocol_error"


class StreamDecodeError(UpstreamProtocolError):
    pass


class BufferOverflow(StreamDecodeError):
    # (the same request gets an answer, or an event, as large again)
    should_retry = False


class StreamTruncated(UpstreamProtocolError):
    code = "upstream_stream_truncated"
