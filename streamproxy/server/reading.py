"""Timeouts on reading a request, on both fronts.

A request's whole head must arrive within `server.client_header_timeout` seconds of its first
byte (or, for one already waiting behind the request before it, of that request's answer), and
a client may leave at most `server.client_body_timeout` seconds between two reads of its body
(60 s each by default), as nginx's client_header_timeout and client_body_timeout do. A head is a
few KB: bounding only the gaps between its reads let a client sending a byte now and then hold
a connection for ever (slowloris). A body is bounded by its gaps alone: a large one on a slow
link takes as long as it takes, a stalled one is cut. The request is then answered 408
(RFC 9110 §15.5.9) in OpenAI's error shape and the connection closes. Between requests the
keep-alive timeout applies instead (75 s, `front.KEEPALIVE_TIMEOUT`), so a connection that
sends nothing is closed too.

The lean front keeps these with the one timer it has per connection (server/front.py).
aiohttp has no such timeouts (only keep-alive, which does not look at a request being read), so
the connections it serves — every request the lean front hands over, and every connection
with `server.front: aiohttp` — get `ReadTimedHandler`, its connection protocol with the same
rules.

Neither re-arms a timer per read: a read stores the time (and the first read of a head, when
it began), and the timer, when it fires, looks at those and either acts or sets itself again for
when a timeout could next run out.
"""

from __future__ import annotations

import asyncio
from email.utils import formatdate
from typing import Any

from aiohttp import web
from aiohttp.http import HttpVersion11
from aiohttp.http_exceptions import BadHttpMethod
from aiohttp.http_parser import HttpRequestParser
from aiohttp.web_protocol import RequestPayloadError, _ErrInfo

from streamproxy.config import ServerConfig
from streamproxy.errors import ClientReadTimeout
from streamproxy.server.errors import (
    SERVER_NAME,
    BodyTimeout,
    error_headers,
    internal_error,
    malformed_request,
)
from streamproxy.server.header_limits import beyond_backstop
from streamproxy.server.send_timeout import SendWatch

# How long a closed connection's unsent bytes may wait without the client taking any (nginx's
# send_timeout): closing waits for them to drain, so a client that stays connected and never
# reads would keep its connection, and the answer it does not read, for ever.
SEND_TIMEOUT = 60.0
# How long a drain keeps a connection that is between requests open (from its last answer), for
# the next request its client may be sending right then, which closing would lose (the
# keep-alive race, RFC 9112 §9.3.1): served, its answer says `Connection: close`.
DRAIN_LINGER = 1.0


# A lingering close (nginx's lingering_close): how long, and how many bytes, what a client still
# sends after its connection's last answer is read and discarded, so that it reads the answer.
# Closing with bytes unread, or arriving later, makes Linux reset the connection, and a client
# still uploading (a 413's body, a 408's resumed upload) saw "connection reset", not the answer
# (the openai SDK retries that, uploading it all again). aiohttp's own lingering_time is 10 s.
LINGER_TIME = 10.0
LINGER_BYTES = 64 * 2**20


def close_lingering(transport: asyncio.Transport, former: asyncio.BaseProtocol,
                    lingering: set[Lingering]) -> None:
    """Close `transport` after its last answer as `Lingering` does; `former`, its protocol
    until now, is told when the connection is lost, as it would have been."""
    if transport.is_closing() or not transport.can_write_eof():
        close_bounded(transport)
        return
    Lingering(transport, former, lingering)


class Lingering(asyncio.Protocol):
    """A connection whose answer is written and whose client may still be sending: its side is
    shut (the client reads the answer, then the end), what comes is discarded, and it closes
    once the client closes its side, LINGER_BYTES came, LINGER_TIME passed, or the server
    shuts down (it is in `lingering` till then). Nothing here is a request: it is neither
    parsed nor counted."""

    __slots__ = ("_former", "_left", "_lingering", "_timer", "_transport")

    def __init__(self, transport: asyncio.Transport, former: asyncio.BaseProtocol,
                 lingering: set[Lingering]) -> None:
        self._transport = transport
        self._former = former
        self._lingering = lingering
        self._left = LINGER_BYTES
        lingering.add(self)
        self._timer = asyncio.get_running_loop().call_later(LINGER_TIME, self.close)
        transport.set_protocol(self)
        transport.write_eof()  # (once the answer has left)
        transport.resume_reading()  # (paused while pipelined requests waited)

    def data_received(self, data: bytes) -> None:
        self._left -= len(data)
        if self._left < 0:
            self.close()

    def eof_received(self) -> bool:
        self.close()
        return True  # (closed here, with its unsent bytes bounded)

    def close(self) -> None:
        self._timer.cancel()
        self._lingering.discard(self)
        close_bounded(self._transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._timer.cancel()
        self._lingering.discard(self)
        self._former.connection_lost(exc)


def close_bounded(transport: asyncio.WriteTransport) -> None:
    """Close `transport`, its unsent bytes bounded (`bound_unsent`)."""
    transport.close()
    bound_unsent(transport)


def bound_unsent(transport: asyncio.WriteTransport) -> None:
    """For a closing transport: once its unsent bytes stop leaving for SEND_TIMEOUT, reset it."""
    unsent = transport.get_write_buffer_size()
    if unsent:
        asyncio.get_running_loop().call_later(SEND_TIMEOUT, _reset_if_stuck, transport, unsent)


def _reset_if_stuck(transport: asyncio.WriteTransport, unsent_before: int) -> None:
    unsent = transport.get_write_buffer_size()
    if not unsent:  # sent (the connection is closed by now)
        return
    if unsent < unsent_before:  # the client reads, slowly: look again later
        asyncio.get_running_loop().call_later(SEND_TIMEOUT, _reset_if_stuck, transport, unsent)
        return
    transport.abort()


class ReadTimeouts:
    """The two timeouts, and `step`: how far ahead a check is set when the part being read
    may change before it (a head's next read may start a body), so neither is overshot."""

    __slots__ = ("body", "header", "step")

    def __init__(self, server: ServerConfig) -> None:
        self.header = server.client_header_timeout
        self.body = server.client_body_timeout
        self.step = min(self.header, self.body)


def request_timeout(part: str, seconds: float) -> ClientReadTimeout:
    if part == "head":
        return ClientReadTimeout(f"The request head did not arrive within {seconds:g} seconds.")
    return ClientReadTimeout(f"The request {part} stopped arriving: nothing came for "
                             f"{seconds:g} seconds.")


def timeout_response(err: ClientReadTimeout) -> bytes:
    """The 408 as bytes, for a request no handler can answer (its head, or its body on the
    lean front, never complete), with the trace headers the error carries (a chat request's
    body: those of its log line, `observe_rejection`), typed as aiohttp types its error
    answers (an aiohttp route's body timeout is one)."""
    body = err.body()
    fields = "".join(f"{name}: {value}\r\n" for name, value in
                     (err.response_headers or {}).items()).encode()
    return (b"HTTP/1.1 408 Request Timeout\r\nserver: %b\r\ncontent-type: application/json\r\n"
            b"%bcontent-length: %d\r\ndate: %b\r\nconnection: close\r\n\r\n%b"
            % (_SERVER, fields, len(body), formatdate(usegmt=True).encode(), body))


_SERVER = SERVER_NAME.encode()
_FIRST = object()  # the connection's first head, read before aiohttp started waiting for one


class ReadTimedHandler(web.RequestHandler):
    """aiohttp's connection protocol, with the request read timeouts.

    aiohttp keeps what this needs in private attributes, read here (one written): `_waiter`
    (pending while it waits for a head), `_messages` (heads parsed, not yet served),
    `_current_request` (the request whose handler runs) and `_reading_paused`; its keep-alive
    check, `_process_keepalive`, stands aside while a head arrives; `_lingering_time` is zeroed
    once a body cannot be read on. tests/test_reading.py pins them.

    A head is being read when bytes came while aiohttp waited for one and made no whole
    request (or came first on a connection the lean front handed over before aiohttp waited):
    only then, with no response in flight, may a 408 be written. A body is being read while
    a handler runs and its request's payload has not ended; its timeout is set on the payload,
    so the handler's own read fails and the route answers.

    Its parser stops after each whole request (`max_msg_queue_size=1`), and a read parses on
    while one comes: aiohttp's, failing on bytes that are no request, dropped the requests
    it had parsed from the same read (a client pipelining a request and junk got only the
    400); one at a time, they are queued before the 400 as they arrived.
    """

    __slots__ = ("_drain_timer", "_head_began", "_head_wait", "_header_limits", "_last_read",
                 "_lingering", "_read_timeouts", "_read_timer", "_send_timeout", "_send_watch",
                 "send_timed_out")

    def __init__(self, manager: ReadTimedServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._read_timeouts = manager.read_timeouts
        self._header_limits = manager.header_limits  # (the configured ones, for refusals)
        self._last_read = 0.0
        self._head_wait: object = None  # the wait during which bytes of a head came (or _FIRST)
        self._head_began = 0.0  # when that head's first bytes came
        self._read_timer: asyncio.TimerHandle | None = None
        self._drain_timer: asyncio.TimerHandle | None = None
        self._send_timeout = manager.send_timeout
        self._lingering = manager.lingering
        self._send_watch: SendWatch | None = None  # while writing is paused (send_timeout.py)
        self.send_timed_out = False
        self._parser = HttpRequestParser(
            self, self._loop, self._read_bufsize, max_line_size=self.max_line_size,
            max_field_size=self.max_field_size, max_headers=self.max_headers,
            payload_exception=RequestPayloadError,
            auto_decompress=kwargs.get("auto_decompress", True), max_msg_queue_size=1)

    def data_received(self, data: bytes) -> None:
        queued = len(self._messages)
        super().data_received(data)
        messages = self._messages
        # A request came: parse on from where the parser stopped after it (bounded: each
        # turn takes a whole request from what is held, or ends), up to aiohttp's queue limit.
        while (queued < len(messages) < self._max_msg_queue_size and not self._upgraded
               and not isinstance(messages[-1][0], _ErrInfo)):
            queued = len(messages)
            super().data_received(b"")
        if messages and isinstance(messages[-1][0], _ErrInfo):
            self._fail_unfinished_body(messages[-1][0].exc)
        if not data or self.transport is None:  # (aiohttp parses what it held back with b"")
            return
        loop = self._loop
        first = self._last_read == 0.0
        self._last_read = loop.time()
        waiter = self._waiter
        if self._messages or self._current_request is not None:
            head_wait = None  # a whole head, or a body being read
        elif waiter is not None:
            head_wait = waiter if not waiter.done() else None
        else:
            head_wait = _FIRST if first else None
        if self._head_wait is None and head_wait is not None:
            self._head_began = self._last_read  # a head begins
        self._head_wait = head_wait
        if self._read_timer is None:
            self._read_timer = loop.call_at(self._last_read + self._read_timeouts.step,
                                            self._check_reading)

    def _fail_unfinished_body(self, exc: BaseException) -> None:
        """The parser failed inside a body (a chunked body's framing broke): the handler
        reading it gets the 400 now. It was not told, and waited for the rest until the body
        timeout (a 408); the refusal queued behind it is never answered, as the handler's
        answer closes the connection (`MalformedRequest`)."""
        payloads = [payload for _, payload in list(self._messages)[:-1]]  # (read, not served)
        if self._current_request is not None:
            payloads.append(self._current_request.content)
        for payload in payloads:
            if not payload.is_eof():
                payload.set_exception(malformed_request(exc))
                # Nothing more of it can be read: aiohttp's lingering read after the answer
                # would raise the error again (logged as an unhandled exception), and wait.
                self._lingering_time = 0.0

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """aiohttp's answer to a request its parser refused (400; 431 or 414 over its limits),
        or to a handler's exception that escaped the middlewares (500), in OpenAI's shape where
        aiohttp's was plain text.
        The connection closes, as aiohttp's does: after a malformed head the stream's framing
        is lost."""
        # Logged as aiohttp logs them (access_log.ParserErrorFilter keeps a parser's refusal to
        # a line naming it, without the bad line's bytes)
        if self._request_count == 1 and isinstance(exc, BadHttpMethod):  # (port scanners)
            self.logger.debug("Error handling request from %s", request.remote, exc_info=exc)
        else:
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
        if status == 400 and exc is not None:
            err = (beyond_backstop(exc, self.max_line_size, self.max_field_size,
                                   *self._header_limits) or malformed_request(exc))
        else:
            err = internal_error()
        if request.writer.output_size > 0:  # (as aiohttp: an answer had begun)
            raise ConnectionError("an answer had begun: no error answer can follow it")
        if status == 400:
            # The parser's refusal is made for aiohttp's fixed error request, which says
            # HTTP/1.0: the status line says HTTP/1.1, this server's version (RFC 9110 §6.2), as
            # nginx's does to any request it cannot parse.
            request._version = HttpVersion11
        response = web.Response(body=err.body(), status=err.status,
                                content_type="application/json",
                                headers=error_headers(err, request.headers))
        # Said, not only done: an HTTP/1.0 request's answer (a 500's) would close silently.
        response.headers["connection"] = "close"
        response.headers["server"] = SERVER_NAME  # (no request here runs the app's hooks)
        response.force_close()
        return response

    async def start(self) -> None:
        try:
            await super().start()
        finally:  # (it closed the transport, unless force_close did)
            if self.transport is not None and self.transport.is_closing():
                bound_unsent(self.transport)

    def force_close(self) -> None:
        transport = self.transport
        super().force_close()
        if transport is not None:
            bound_unsent(transport)

    async def finish_response(self, request: web.BaseRequest, resp: web.StreamResponse,
                              start_time: float | None) -> tuple[web.StreamResponse, bool]:
        if not request.content.is_eof():
            # Answered before its body all came (a 413): the connection closes, lingering, as
            # after any last answer. aiohttp read the rest for its lingering_time, then closed
            # on a client still uploading (a reset the openai SDK retries).
            resp.force_close()
        resp, reset = await super().finish_response(request, resp, start_time)
        if not reset and not resp.keep_alive:  # the last answer (a 400, a 408, a 413, ...)
            self._close_lingering()
        return resp, reset

    def _close_lingering(self) -> None:
        """Close after the answer written, lingering (`Lingering`), in place of aiohttp's
        close: the request loop ends and nothing more is parsed (`_force_close`)."""
        transport = self.transport
        if transport is None:
            return
        self.transport = None
        self.force_close()  # (with no transport to close)
        close_lingering(transport, self, self._lingering)

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        for timer in (self._read_timer, self._drain_timer, self._send_watch):
            if timer is not None:
                timer.cancel()
        self._read_timer = self._drain_timer = self._send_watch = None

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_timeout and self.transport is not None:
            self._send_watch = SendWatch(self.transport, self._send_timeout, self._send_stalled)

    def resume_writing(self) -> None:
        if self._send_watch is not None:
            self._send_watch.cancel()
            self._send_watch = None
        super().resume_writing()

    def _send_stalled(self) -> None:
        """The client took nothing for `server.send_timeout`: the connection ends, and with
        it the handler (`handler_cancellation`)."""
        self._send_watch = None
        self.send_timed_out = True
        if self.transport is not None:
            self.transport.abort()  # (closing would wait for the bytes it does not take)

    def wind_down(self) -> None:
        """The drain: every answer not begun yet (of the request being served, or a later
        one) says `Connection: close` (aiohttp then closes), and the connection closes once it
        has been between requests DRAIN_LINGER seconds (at once if it has been already)."""
        make_request = self._request_factory
        self._request_factory = lambda message, *rest: make_request(
            message._replace(should_close=True), *rest)
        request = self._current_request
        if request is not None:  # its answer, unless begun already, closes the connection too
            request._message = request._message._replace(should_close=True)
        if self._drain_timer is None:  # (looked at once connected, for a connection this new)
            self._drain_timer = self._loop.call_at(self._loop.time(), self._close_if_idle)

    def _close_if_idle(self) -> None:
        """The drain's timer: close the connection if it has been idle long enough, else look
        again when it could have been."""
        self._drain_timer = None
        if self.transport is None:
            return
        now = self._loop.time()
        waiter = self._waiter
        due = now + DRAIN_LINGER  # (a request being read or served: look again later)
        if waiter is not None and not waiter.done() and not self._reading_head():
            # between requests since its last answer (or since it connected)
            due = self._next_keepalive_close_time - self._keepalive_timeout + DRAIN_LINGER
            if now >= due:
                self.force_close()
                return
        self._drain_timer = self._loop.call_at(due, self._close_if_idle)

    def _reading_head(self) -> bool:
        waiter = self._waiter
        return (waiter is not None and not waiter.done() and not self._messages
                and (self._head_wait is waiter or self._head_wait is _FIRST))

    def _process_keepalive(self) -> None:
        if self._reading_head():  # a head is arriving: its read timeout decides, not keep-alive
            self._keepalive_handle = None
            if self._read_timer is None:  # (its read set the timer: never, but never stay open)
                self._check_reading()
            return
        super()._process_keepalive()

    def _check_reading(self) -> None:
        """The read timer: time out the request being read, or look again when it could."""
        self._read_timer = None
        if self.transport is None:
            return
        loop = self._loop
        now = loop.time()
        request = self._current_request
        if self._reading_head():
            due = self._head_began + self._read_timeouts.header
            if now >= due:
                self.transport.write(timeout_response(
                    request_timeout("head", self._read_timeouts.header)))
                self._close_lingering()
                return
        elif request is not None and not request.content.is_eof():
            if self._reading_paused:  # the handler has not taken what came: not the client's gap
                self._last_read = now
            due = self._last_read + self._read_timeouts.body
            if now >= due:
                request.content.set_exception(BodyTimeout(
                    request_timeout("body", self._read_timeouts.body)))
                return
        else:
            return  # nothing being read: the next read sets the timer again
        step = self._read_timeouts.step
        self._read_timer = loop.call_at(min(due, now + step), self._check_reading)


class ReadTimedServer(web.Server):
    """aiohttp's low-level server, making `ReadTimedHandler`s."""

    def __init__(self, *args: Any, read_timeouts: ReadTimeouts,
                 header_limits: tuple[int, int], send_timeout: float | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read_timeouts = read_timeouts
        self.header_limits = header_limits  # server.max_header_bytes, server.max_headers
        self.send_timeout = send_timeout
        self.stopping = False
        self.lingering: set[Lingering] = set()  # connections closing (`close_lingering`)

    def __call__(self) -> ReadTimedHandler:
        return ReadTimedHandler(self, loop=self._loop, **self._kwargs)

    def connection_made(self, handler: web.RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        # Here, not as the handler is made: asyncio calls connection_made a loop turn after
        # making the protocol, and `wind_down` finds only the connections made by then.
        if self.stopping:  # accepted (or handed over by the lean front) as the drain began
            handler.wind_down()  # type: ignore[attr-defined]

    def wind_down(self) -> None:
        """The drain begins: idle connections close, the others after their next answers."""
        self.stopping = True
        for handler in self.connections:
            handler.wind_down()  # type: ignore[attr-defined]

    async def shutdown(self, timeout: float | None = None) -> None:
        await super().shutdown(timeout)
        for conn in list(self.lingering):
            conn.close()

    def open_connections(self) -> int:
        """Connections not closing yet (the drain waits for them)."""
        return sum(1 for handler in self.connections if handler.transport is not None
                   and not handler.transport.is_closing())


def read_timed(server: web.Server, config: ServerConfig) -> ReadTimedServer:
    """The server aiohttp's runner made (its app's handler and settings), with the read
    timeouts."""
    return ReadTimedServer(server.request_handler, request_factory=server.request_factory,
                           handler_cancellation=server.handler_cancellation,
                           read_timeouts=ReadTimeouts(config),
                           header_limits=(config.max_header_bytes, config.max_headers),
                           send_timeout=config.send_timeout, **server._kwargs)
