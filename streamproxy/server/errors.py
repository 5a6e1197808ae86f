"""The server boundary where errors become OpenAI-shaped JSON responses."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from aiohttp.http import HttpVersion11
from aiohttp.http_exceptions import BadHttpMessage, BadHttpMethod, BadStatusLine, LineTooLong
from aiohttp.web_protocol import RequestPayloadError
from aiohttp.web_urldispatcher import _default_expect_handler

from streamproxy.errors import (
    ClientReadTimeout,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    ProxyError,
)
from streamproxy.ids import random_hex
from streamproxy.upstream.passed_headers import SHOULD_RETRY

log = logging.getLogger("streamproxy.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
TRACE_HEADER = "x-portkey-trace-id"
# The longest trace id echoed: it goes back twice (also as x-request-id), and one near the
# 8 KB field limit made a response head over 16 KB, Node's default limit (its client failed
# to read the answer). Ids in use (W3C traceparent 55, a UUID 36) are far shorter.
MAX_TRACE_ID_CHARS = 1024
# Every answer's `Server`, on both fronts: aiohttp's default named Python's and aiohttp's exact
# versions (what a scanner matches against advisories), and the lean front's said nothing.
SERVER_NAME = "streamproxy"
# OpenAI's request id header: the SDKs expose it as `response._request_id` and
# `APIStatusError.request_id`. It carries the trace id, the id the access log knows.
REQUEST_ID_HEADER = "x-request-id"
# The longest wait a client is told: an upstream may name any (Gemini's retryDelay "1e306s"),
# and one past ~1e305 s overflowed `retry-after-ms` (the client got an empty reply).
MAX_RETRY_AFTER = 86400.0


class BodyTimeout(asyncio.TimeoutError):
    """Set on a request's payload when its body stopped arriving: the handler's read raises it
    and the server boundary answers `error` (408); aiohttp's lingering read after that answer
    raises it too, and ends quietly on a TimeoutError."""

    def __init__(self, error: ClientReadTimeout) -> None:
        super().__init__(error.message)
        self.error = error


def trace_headers(trace_id: str) -> dict[str, str]:
    return {TRACE_HEADER: trace_id, REQUEST_ID_HEADER: trace_id}


def request_trace_headers(request_headers: Mapping[str, str]) -> dict[str, str]:
    """The trace headers of an answer the chat handler did not make: the client's trace id
    echoed, else a new one (every OpenAI answer has an x-request-id, errors and other routes
    included)."""
    return trace_headers(client_trace_id(request_headers))


def client_trace_id(request_headers: Mapping[str, str]) -> str:
    """The client's trace id, or a new one when it sent none, or one that is not UTF-8 (which
    `invalid_trace_id` refuses: aiohttp cannot write it back as it came)."""
    value = request_headers.get(TRACE_HEADER)
    if not value or trace_id_error(value) is not None:
        return random_hex(16)
    return value


def is_text(value: str) -> bool:
    """A header value aiohttp decoded whole: its undecodable bytes are surrogates
    ('surrogateescape'), which its writer drops."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def invalid_trace_id() -> InvalidRequest:
    return InvalidRequest(f"The {TRACE_HEADER} header is not UTF-8 text.",
                          code="invalid_trace_id")


def trace_id_too_long(length: int) -> InvalidRequest:
    return InvalidRequest(f"The {TRACE_HEADER} header is {length} characters long: at most "
                          f"{MAX_TRACE_ID_CHARS} are echoed.", param=TRACE_HEADER,
                          code="invalid_trace_id")


def trace_id_error(value: str | None) -> InvalidRequest | None:
    """Why the client's trace id cannot be echoed (`invalid_trace_id`, or over
    MAX_TRACE_ID_CHARS); None when it can, or when there is none."""
    if value is None:
        return None
    if len(value) > MAX_TRACE_ID_CHARS:
        return trace_id_too_long(len(value))
    if value.isascii() or is_text(value):
        return None
    return invalid_trace_id()


def error_headers(err: ProxyError, request_headers: Mapping[str, str]) -> dict[str, str]:
    """Retry-After when the error has one, x-should-retry when it says (`should_retry`), and
    the x-portkey-* headers: those the chat handler noted, else (a request refused before it
    ran, another route's error) the client's trace id echoed or a new one
    (`request_trace_headers`)."""
    headers = dict(err.response_headers or {})
    if TRACE_HEADER not in headers:
        headers.update(request_trace_headers(request_headers))
    if err.should_retry is not None:  # (over an upstream's own: this failure is ours)
        headers[SHOULD_RETRY] = "true" if err.should_retry else "false"
    retry_after = getattr(err, "retry_after", None)
    if retry_after is not None:
        retry_after = min(retry_after, MAX_RETRY_AFTER)
        # Whole seconds, never early (HTTP); the SDKs read OpenAI's `retry-after-ms` first,
        # which keeps an upstream's sub-second wait as it was. Rounded up too, and never 0 (a
        # wait under a millisecond read as "now" is refused again); the 1e-6 keeps a whole
        # number of ms that floating point put a hair over (0.007 s: 7.000000000000001).
        headers["retry-after"] = str(max(1, math.ceil(retry_after)))
        headers["retry-after-ms"] = str(max(1, math.ceil(retry_after * 1000 - 1e-6)))
    return headers


def internal_error() -> ProxyError:
    """A bug's answer: the details go to the log, never to the client."""
    return ProxyError("The server had an error while processing your request.",
                      code="internal_error")


def body_too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body exceeds the limit of {limit} bytes.")


# What aiohttp's parser faults are called when its message cannot be shown (see `malformed_request`)
_FAULTS: tuple[tuple[type[BaseException], str], ...] = (
    (LineTooLong, "a request line or header field is too long"),
    (BadHttpMethod, "the request method is not valid (HTTPS sent to an HTTP port?)"),
    (BadStatusLine, "the request line is not valid"),
)
# llhttp's name for an HTTP/2 connection preface, which says nothing to its client
_H2_PREFACE = "Pause on PRI/Upgrade"


class MalformedRequest(InvalidRequest):
    """A request aiohttp's parser refused: its framing is lost, so its connection closes."""

    code = "malformed_request"


def malformed_request(exc: BaseException) -> MalformedRequest:
    """aiohttp's parser refused the request (it answered a plain-text 400 quoting the bad
    line): the refusal in OpenAI's shape. Only the fault's name is told, never the request's
    bytes, which may hold a key: the llhttp parser's reason (its message's text before
    ':\n\n', then the quoted bytes) or aiohttp's own fixed message; the Python parser quotes
    the bytes in its messages, so its faults are named by class."""
    text = exc.message if isinstance(exc, BadHttpMessage) else ""
    reason, quoted, _ = text.partition(":\n\n")
    if quoted:  # llhttp's: 'Bad status line:\n  <reason>' for a request line
        fault = reason.rpartition("\n")[2].strip()
    elif type(exc) is BadHttpMessage and "\n" not in text:  # aiohttp's own, a fixed text
        fault = text.rstrip(".")
    else:
        fault = next((f for cls, f in _FAULTS if isinstance(exc, cls)), "it cannot be parsed")
    if fault == _H2_PREFACE:
        fault = "HTTP/2 is not served on this port (send HTTP/1.1)"
    return MalformedRequest(f"Malformed HTTP request: {fault}.")


def undecodable_body() -> InvalidRequest:
    """A gzip or deflate body that does not decode (aiohttp's RequestPayloadError on reading
    it): the client's mistake, not a bug's 500."""
    return InvalidRequest("The request body could not be decoded as its Content-Encoding says.",
                          code="invalid_encoding")


async def name_server(request: web.Request, response: web.StreamResponse) -> None:
    """An `on_response_prepare` hook: `SERVER_NAME` over aiohttp's `Python/3.x aiohttp/3.x`
    (the lean front writes it in its heads, and leaves this hook out)."""
    response.headers["Server"] = SERVER_NAME


def error_response(err: ProxyError, request: web.Request,
                   headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=err.body(), status=err.status,
                        content_type="application/json",
                        headers={**error_headers(err, request.headers), **(headers or {})})


def expectation_failed() -> ProxyError:
    return ProxyError("Expect: 100-continue is the only expectation supported.",
                      status=417, error_type="invalid_request_error", code="expectation_failed")


# A request whose `100 Continue` waits for the middlewares (`continue_after_refusals`)
EXPECTS_CONTINUE: web.RequestKey[bool] = web.RequestKey("streamproxy_expects_continue", bool)


async def expect_within_limit(request: web.Request) -> web.StreamResponse | None:
    """A route's `Expect` handler: a body declared over `max_body_bytes` is refused with 413 at
    once (RFC 9110 §10.1.1), not after the client has sent all of it; another expectation than
    100-continue, with 417 in OpenAI's shape (aiohttp's is plain text, and a 500 for a value
    that is not UTF-8); any other gets `100 Continue` from `continue_after_refusals`, once the
    middlewares have not refused it. (HTTP/1.0: ignored, as the RFC asks, and as aiohttp does.)
    """
    length = request.content_length
    err: ProxyError | None = None
    if length is not None and length > request.client_max_size:
        err = body_too_large(request.client_max_size)
    elif (request.version >= HttpVersion11
          and request.headers.get("Expect", "").lower() != "100-continue"):
        err = expectation_failed()
    if err is not None:
        response = error_response(err, request)
        response.force_close()  # its body is not read
        return response
    if request.version >= HttpVersion11:
        request[EXPECTS_CONTINUE] = True
    return None


@web.middleware
async def continue_after_refusals(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The innermost middleware: `100 Continue` for a request that expects it, now that those
    before it (header limits, auth, rate limits) did not refuse it. aiohttp sends it before
    any middleware runs, so a client was told to upload a body (a 20 MB image) only to be
    refused for its key; a refusal instead of 100 Continue is allowed (RFC 9110 §10.1.1), and
    its unread body closes the connection (reading.py)."""
    if request.get(EXPECTS_CONTINUE):
        await _default_expect_handler(request)
    return await handler(request)


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The trace headers on the answers of the routes besides chat (models, health, metrics,
    stored completions), which set none themselves; chat answers carry the handler's."""
    response = await handler(request)
    if not response.prepared and REQUEST_ID_HEADER not in response.headers:
        response.headers.update(request_trace_headers(request.headers))
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ProxyError as e:
        response = error_response(e, request)
        # the rest of the request will not be read, or cannot be (its framing broke)
        if isinstance(e, (ClientReadTimeout, MalformedRequest)):
            response.force_close()
        return response
    except BodyTimeout as e:  # another route's read of a body that stopped arriving
        response = error_response(e.error, request)
        response.force_close()
        return response
    except RequestPayloadError:  # (another route's body: chat's is read by `read_body`)
        return error_response(undecodable_body(), request)
    except web.HTTPRequestEntityTooLarge:  # aiohttp's exception keeps no max_size attribute
        return error_response(body_too_large(request.client_max_size), request)
    except web.HTTPNotFound:
        # The path as sent: decoded, `/v1%2Fchat/completions` read as the chat route's own path,
        # which the 404 then said was unknown. (Not the query: it may hold a key.)
        return error_response(NotFound(f"Unknown path: {request.method} "
                                       f"{request.rel_url.raw_path}", code="unknown_url"),
                              request)
    except web.HTTPMethodNotAllowed as e:  # a 405 must list the allowed methods (RFC 9110)
        return error_response(ProxyError(f"Method {request.method} is not allowed on "
                                         f"{request.path}.", status=405,
                                         error_type="invalid_request_error",
                                         code="method_not_allowed"), request,
                              {"allow": ", ".join(sorted(e.allowed_methods))})
    except web.HTTPException:
        raise
    except Exception:
        log.exception("unhandled error serving %s %s", request.method, request.path)
        return error_response(internal_error(), request)
