"""Header limits with an OpenAI-shaped answer.

aiohttp's own parser limits refuse a request before any middleware runs, so they are set to a
looser backstop (BACKSTOP times ours) and this middleware enforces the configured
`server.max_header_bytes` (the request target or one header field) and `server.max_headers` in
OpenAI's error shape: 431, or 414 for the target (RFC 9110 §15.5.15). A head beyond the backstop
gets the same answer (`beyond_backstop`), from the connection's error handler.
It also answers a transfer coding other than chunked with 501 (RFC 9112 §6.1): aiohttp's parser
removes only the chunked framing and hands the still-coded bytes on as the body; any in an
HTTP/1.0 request with 400, closing the connection (§6.1: its framing is faulty); CONNECT
with 501: this is no forward proxy; and a request line in an HTTP version other than 1.x with
505 (aiohttp's parser takes `HTTP/2.0` and `HTTP/0.9`, and answered in that version).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http import HttpVersion11
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong

from streamproxy.errors import ProxyError
from streamproxy.server.errors import (
    TRACE_HEADER,
    MalformedRequest,
    error_response,
    trace_id_error,
)
from streamproxy.server.observing import observe_refused_chat

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
BACKSTOP = 4


def too_large(what: str) -> ProxyError:
    return ProxyError(f"Request header fields too large: {what}.", status=431,
                      error_type="invalid_request_error", code="request_header_fields_too_large")


def target_too_long(limit: int) -> ProxyError:
    return ProxyError(f"Request target too long: it is over {limit} bytes.", status=414,
                      error_type="invalid_request_error", code="uri_too_long")


def unsupported_coding(codings: str) -> ProxyError:
    """501, as RFC 9112 §6.1 asks, with a server error's type as its status class says (the
    SDKs go by the status); a retry gets the same, so the SDKs are told not to (they retry a
    5xx unless `x-should-retry: false`)."""
    err = ProxyError(f"Transfer-Encoding '{codings[:64]}' is not supported: send the body with "
                     "chunked alone (Content-Encoding: gzip or deflate is understood).",
                     status=501, code="unsupported_transfer_coding")
    err.should_retry = False
    return err


def connect_not_supported() -> ProxyError:
    """501 (RFC 9110 §15.6.2: a method served for no resource), as `unsupported_coding`."""
    err = ProxyError("CONNECT is not supported: this is an API gateway, not a forward proxy; "
                     "send requests to it directly (POST /v1/chat/completions).",
                     status=501, code="method_not_supported")
    err.should_retry = False
    return err


def version_not_supported(version: str) -> ProxyError:
    """505 (RFC 9110 §15.6.6), as `unsupported_coding`: the same request gets the same."""
    err = ProxyError(f"HTTP/{version} is not supported: send HTTP/1.1.", status=505,
                     code="http_version_not_supported")
    err.should_retry = False
    return err


def backstop_limits(max_field_bytes: int, max_headers: int) -> dict[str, int]:
    """aiohttp's parser limits (its runner's keyword arguments) for the configured ones. The
    target's is a byte over the fields': its refusal (LineTooLong) names only the limit passed,
    which tells `beyond_backstop` whether the target or a field was too long."""
    return {"max_line_size": BACKSTOP * max_field_bytes + 1,
            "max_field_size": BACKSTOP * max_field_bytes,
            "max_headers": BACKSTOP * max_headers}


def beyond_backstop(exc: BaseException, line_limit: int, field_limit: int,
                    max_field_bytes: int, max_headers: int) -> ProxyError | None:
    """The answer to a head aiohttp's parser refused over its limits (`line_limit`,
    `field_limit`: those it was given): the 431 or 414 that a smaller excess gets from the
    middleware, not a 400 `malformed_request`. None for another refusal."""
    if isinstance(exc, LineTooLong):
        if exc.args[1] == line_limit != field_limit:  # (equal: not set by backstop_limits)
            return target_too_long(max_field_bytes)
        return too_large(f"a header field is over {max_field_bytes} bytes")
    if type(exc) is BadHttpMessage and exc.message == "Too many headers received":
        return too_large(f"over {BACKSTOP * max_headers} headers, the limit is {max_headers}")
    return None


def header_limits(max_field_bytes: int, max_headers: int) -> Callable[..., Awaitable[object]]:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        version = request.version
        if version.major != 1:
            # llhttp reads `HTTP/2.0` and `HTTP/0.9` request lines (the lean front hands them
            # here), and aiohttp answered in the request's version: `HTTP/2.0 200 OK` in
            # HTTP/1 framing. The refusal says HTTP/1.1, this server's version (RFC 9110 §6.2),
            # as `ReadTimedHandler.handle_error` does; what follows is not read.
            err = version_not_supported(f"{version.major}.{version.minor}")
            observe_refused_chat(request, err)
            request._version = HttpVersion11  # (aiohttp's status line reads it, cached)
            request._cache.pop("version", None)
            response = error_response(err, request)
            response.force_close()
            return response
        err = (_over_limits(request, max_field_bytes, max_headers)
               or _unsupported_coding(request) or _undecodable_trace_id(request))
        if err is None and request.method == "CONNECT":
            # A client given this server as its HTTPS proxy: aiohttp reads no path in the
            # request (a 404 'Unknown path: CONNECT '), or auth asked for a key it cannot send.
            # Its parser takes every later byte for the tunnel: the connection closes.
            response = error_response(connect_not_supported(), request)
            response.force_close()
            return response
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


def _unsupported_coding(request: web.Request) -> ProxyError | None:
    # aiohttp's parser answers 400 when chunked is not the last coding, so here it is; any
    # other before it (`gzip, chunked`, with or without parameters) is not decoded.
    codings = request.headers.getall("Transfer-Encoding", ())
    if not codings:
        return None
    if request.version < HttpVersion11:
        # HTTP/1.0 has no transfer codings: its framing is faulty and the connection must
        # close after it (RFC 9112 §6.1). aiohttp read it as chunked, and the bytes after it
        # as the next request, which a server in front that ignores the header (Go's does)
        # frames otherwise: request smuggling. A 400, as nginx's (MalformedRequest: closes).
        return MalformedRequest("Malformed HTTP request: Transfer-Encoding in an HTTP/1.0 "
                                "request (HTTP/1.0 has no transfer codings).")
    joined = ",".join(codings)
    if any(c.partition(";")[0].strip(" \t").lower() != "chunked" for c in joined.split(",")):
        return unsupported_coding(joined)
    return None


def _undecodable_trace_id(request: web.Request) -> ProxyError | None:
    # (aiohttp's alone: the lean front hands every head that is not UTF-8 to it, and its chat
    # handler refuses a trace id too long)
    return trace_id_error(request.headers.get(TRACE_HEADER))
