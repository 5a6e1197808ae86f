"""Header limits with an OpenAI-shaped answer.

aiohttp's own parser limits refuse a request with a plain-text 400 before any middleware
runs, so they are set to a looser backstop (BACKSTOP times ours) and this middleware enforces the
configured `server.max_header_bytes` (the request target or one header field) and
`server.max_headers` in OpenAI's error shape: 431, or 414 for the target (RFC 9110 §15.5.15).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from streamproxy.errors import ProxyError
from streamproxy.server.observing import observe_refused_chat

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
BACKSTOP = 4


def too_large(what: str) -> ProxyError:
    return ProxyError(f"Request header fields too large: {what}.", status=431,
                      error_type="invalid_request_error", code="request_header_fields_too_large")


def target_too_long(limit: int) -> ProxyError:
    return ProxyError(f"Request target too long: it is over {limit} bytes.", status=414,
                      error_type="invalid_request_error", code="uri_too_long")


def header_limits(max_field_bytes: int, max_headers: int) -> Callable[..., Awaitable[object]]:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        err = _over_limits(request, max_field_bytes, max_headers)
        if err is not None:
            observe_refused_chat(request, err)  # a chat request's line and count, as a 413's
            raise err
        return await handler(request)

    return middleware


def _over_limits(request: web.Request, max_field_bytes: int,
                 max_headers: int) -> ProxyError | None:
    raw = request.raw_headers
    if len(raw) > max_headers:
        return too_large(f"{len(raw)} headers, the limit is {max_headers}")
    if len(request.raw_path) > max_field_bytes:
        return target_too_long(max_field_bytes)
    for name, value in raw:
        if len(name) + len(value) + 2 > max_field_bytes:
            # The header's name only: its value may be a key.
            return too_large(f"header '{name.decode('latin-1')[:64]}' is over "
                             f"{max_field_bytes} bytes")
    return None
