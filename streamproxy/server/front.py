"""The lean HTTP/1.1 front (`server.front: lean`, the default) for `POST /v1/chat/completions`.

Why: aiohttp's server path for a request (parser, `Request`, router, middleware chain, the
response's `prepare`/`write`/`write_eof`) is ~190k of the ~940k instructions a streamed request
costs, and ~0.3 ms of an idle worker's time to first token. This front parses the request
line and headers with a few bytes operations, runs the same chat handler, and writes the
response head with the first frame, straight to the transport.

Every connection starts here. A request it fully understands — exactly
`POST /v1/chat/completions HTTP/1.1`, a Content-Length body within `server.max_body_bytes`,
one Host, no Transfer-Encoding, Content-Encoding, Expect or Upgrade, headers within
`server.max_headers` / `server.max_header_bytes`, well-formed lines — is served here, with
what aiohttp's middlewares do for that route (auth, OpenAI-shaped errors). At anything else
(another path or method, HTTP/1.0, a chunked body, a limit exceeded, anything unusual) the
connection, with every byte received so far, is handed to aiohttp's own protocol and stays
there: every other route, and every refusal, is exactly aiohttp's.

As on aiohttp's side: keep-alive with a 75 s idle close, the request read timeouts of
server/reading.py while a request arrives (a head's whole time, a gap between reads of a
body), `Connection: close` honoured, pipelined requests served in order
(reading pauses while more than 64 KiB waits; the next is served once the client's socket
buffer has room for its answer, not while it holds the one before), and a client that goes
away cancels its request's task (aiohttp's `handler_cancellation`), which cancels the upstream
request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Mapping
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from streamproxy.config import ServerConfig
from streamproxy.errors import ProxyError
from streamproxy.server.auth import AUTH, ProxyKey, identify_client, without_authorization
from streamproxy.server.errors import SERVER_NAME, internal_error, name_server
from streamproxy.server.exchange import reply_error
from streamproxy.server.handlers import chat
from streamproxy.server.observing import AUTH_KEY, observe_abandoned, observe_rejection
from streamproxy.server.reading import (
    DRAIN_LINGER,
    Lingering,
    ReadTimeouts,
    close_bounded,
    close_lingering,
    read_timed,
    request_timeout,
    timeout_response,
)
from streamproxy.server.send_timeout import SendWatch
from streamproxy.server.sse_writer import chunk
from streamproxy.server.state import STATE
from streamproxy.upstream.response_parser import plain_fields

log = logging.getLogger("streamproxy.server")

CHAT_LINE = b"POST /v1/chat/completions HTTP/1.1"
_CHAT_HEAD = CHAT_LINE + b"\r\n"
KEEPALIVE_TIMEOUT = 75.0  # aiohttp's web.run_app default; given to its runner too
PIPELINE_LIMIT = 64 * 1024  # bytes of later requests held before reading pauses
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # a header name (RFC 9110 token)
# A control byte other than HTAB: invalid in a field value (RFC 9110 §5.5); aiohttp's parser
# answers 400 to any, so such a head is aiohttp's.
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# What a head this front serves never has: a control byte but HTAB, CR and LF, a CR not
# before an LF, an LF not after a CR, a line that starts with neither a name nor the end (CR).
# Looked for while a head is incomplete, so that one which will not end in CRLF CRLF (LF LF,
# 'a: b\n\r\n', '\r\n \r\n', a body after the last field with no empty line) is not held until
# the head timeout (a 408 a minute later) but goes to aiohttp, which answers 400 at once.
_UNSERVED = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r[^\n]|(?<!\r)\n"
                       rb"|\r\n[^!#$%&'*+\-.^_`|~0-9A-Za-z\r]")
# aiohttp's to handle (Content-Encoding: it decodes, and caps the decoded size at max_body_bytes)
_REFUSED = frozenset({b"transfer-encoding", b"content-encoding", b"expect", b"upgrade"})
_SERVER = b"server: %b\r\n" % SERVER_NAME.encode()  # (errors.SERVER_NAME, as aiohttp's answers)
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
# aiohttp's for a JSON body given as bytes (its chat route's answers, every error's): no charset
JSON_TYPE = "application/json"
# Longer Content-Length values are aiohttp's: int() refuses over 4,300 digits (a ValueError in
# data_received would drop the connection unanswered), and none this long fits the body limit
# but a zero-padded one.
_MAX_LENGTH_DIGITS = 18


def _lists_close(tokens: str) -> bool:
    """A lower-cased Connection value has the `close` option: one of its comma-separated
    tokens, as aiohttp's parser reads it (`closed` or `x-close` is another option, after which
    aiohttp keeps the connection)."""
    return "close" in tokens and "close" in (t.strip(" \t") for t in tokens.split(","))


FRONT_ENV = "STREAMPROXY_FRONT"
FRONTS = ("lean", "aiohttp")


def make_runner(app: web.Application, **kwargs: Any) -> web.AppRunner:
    """The app's runner, with the front the config asks for (the environment variable
    STREAMPROXY_FRONT wins: CI runs the core tests on both)."""
    kind = os.environ.get(FRONT_ENV) or app[STATE].config.server.front
    if kind not in FRONTS:
        raise ValueError(f"{FRONT_ENV} must be one of {', '.join(FRONTS)}")
    kwargs.setdefault("keepalive_timeout", KEEPALIVE_TIMEOUT)  # AppRunner's own is an hour
    return FrontRunner(app, **kwargs) if kind == "lean" else AiohttpRunner(app, **kwargs)


class AiohttpRunner(web.AppRunner):
    """An AppRunner whose connections have the request read timeouts (server/reading.py)."""

    async def _make_server(self) -> Any:
        return read_timed(await super()._make_server(), self.app[STATE].config.server)


class FrontRunner(AiohttpRunner):
    """An AppRunner whose sites accept connections into the lean front."""

    async def _make_server(self) -> Any:
        return Front(await super()._make_server(), self.app)


class Front:
    """The protocol factory the sites listen with, in place of aiohttp's `web.Server` (which
    it keeps, for the connections it hands over)."""

    def __init__(self, aiohttp_server: web.Server, app: web.Application) -> None:
        self.aiohttp_server = aiohttp_server
        self.app = app
        self.loop = asyncio.get_running_loop()
        server: ServerConfig = app[STATE].config.server
        self.max_headers = server.max_headers
        self.max_field = server.max_header_bytes
        self.max_head = (server.max_headers + 1) * (server.max_header_bytes + 2)
        self.max_body = server.max_body_bytes
        self.read_timeouts = ReadTimeouts(server)
        self.send_timeout = server.send_timeout
        self.auth = app.get(AUTH)
        # (the app is frozen by now; `name_server`'s work is in the head's constant part)
        self.prepare_hooks = tuple(h for h in app.on_response_prepare if h is not name_server)
        self.connections: set[Connection] = set()
        self.lingering: set[Lingering] = set()  # connections closing (`close_lingering`)
        self.stopping = False  # draining: every answer from now on says `Connection: close`
        app[STATE].drain.on_abort(self.refuse_uploads)

    def __call__(self) -> Connection:
        return Connection(self)

    def refuse_uploads(self) -> None:
        """The drain's grace is over: a request whose body is still arriving is answered now
        (`Connection.refuse_upload`), not left open for the runner's cleanup to cut."""
        for conn in list(self.connections):
            conn.refuse_upload()

    def check_every(self) -> float:
        """How far ahead a connection's timer is ever set: it fires before any timeout runs
        out. (Called when the timer is armed, not per request.)"""
        return min(self.keepalive(), self.read_timeouts.step)

    def keepalive(self) -> float:
        """How long a connection may wait between requests (checked when its timer fires)."""
        return DRAIN_LINGER if self.stopping else KEEPALIVE_TIMEOUT

    def wind_down(self) -> None:
        """The drain begins: a connection between requests closes once it has been for
        DRAIN_LINGER seconds (at once if it has been already), the others after an answer
        that says `Connection: close` (their client's next request goes to a new connection,
        which the next generation or listener takes)."""
        self.stopping = True
        for conn in self.connections:
            conn.check_timeouts_now()
        self.aiohttp_server.wind_down()

    def open_connections(self) -> int:
        """Connections not closing yet (the drain waits for them)."""
        return self.aiohttp_server.open_connections() + sum(
            1 for conn in self.connections
            if conn.transport is not None and not conn.transport.is_closing())

    def pre_shutdown(self) -> None:
        self.stopping = True
        for conn in list(self.connections):
            conn.close_when_idle()
        self.aiohttp_server.pre_shutdown()

    async def shutdown(self, timeout: float | None = None) -> None:
        tasks = [c.task for c in self.connections if c.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
        for conn in list(self.connections):
            conn.close()
        for lingering in list(self.lingering):
            lingering.close()
        await self.aiohttp_server.shutdown(timeout)

    def parse_head(self, head: bytes) -> tuple[CIMultiDict[str], int, bool] | None:
        """(headers, body length, close after) of a chat request head this front serves,
        None for anything aiohttp should answer."""
        # The usual head, of plain lines, is read in one pass, its framing headers looked up
        # (a head no longer than a field has no line over the limit); any other, line by line.
        fields = None
        if len(head) <= self.max_field and head.startswith(_CHAT_HEAD):
            fields = plain_fields(head, len(CHAT_LINE))
        if fields is None:
            return self.parse_head_exactly(head)
        if len(fields) > self.max_headers:
            return None
        headers: CIMultiDict[str] = CIMultiDict(fields)
        if ("Transfer-Encoding" in headers or "Content-Encoding" in headers
                or "Expect" in headers or "Upgrade" in headers):
            return None  # (_REFUSED)
        if len(headers.getall("Host", ())) != 1:  # none or several: a 400 (RFC 9112 §3.2)
            return None
        lengths = headers.getall("Content-Length", ())
        if (len(lengths) != 1 or not lengths[0].isdigit()  # (plain fields are ASCII)
                or len(lengths[0]) > _MAX_LENGTH_DIGITS):
            return None
        length = int(lengths[0])
        if length > self.max_body:
            return None
        close = False
        for value in headers.getall("Connection", ()):
            tokens = value.lower()
            if "upgrade" in tokens:
                return None
            close = close or _lists_close(tokens)  # (a list: one close token is enough)
        return headers, length, close

    def parse_head_exactly(self, head: bytes) -> tuple[CIMultiDict[str], int, bool] | None:
        """`parse_head`, line by line: the rules, for any head (`parse_head` is this for the
        heads it does not read whole)."""
        lines = head.split(b"\r\n")
        if lines[0] != CHAT_LINE or len(lines) - 1 > self.max_headers:
            return None
        headers: CIMultiDict[str] = CIMultiDict()
        length = -1
        hosts = 0
        close = False
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            value = value.strip(b" \t")
            # A field's size as aiohttp's front measures it (`header_limits`: "name: value"),
            # so that what it answers 431 is never served here.
            if (not colon or len(name) + len(value) + 2 > self.max_field
                    or not _TOKEN.fullmatch(name) or _CONTROL.search(value)):
                return None
            try:  # (aiohttp answers a head that is not UTF-8 as it does)
                text = value.decode()
            except UnicodeDecodeError:
                return None
            lower = name.lower()
            if lower == b"content-length":
                if (length >= 0 or not text.isdigit() or not text.isascii()
                        or len(text) > _MAX_LENGTH_DIGITS):
                    return None
                length = int(text)
            elif lower == b"connection":
                tokens = text.lower()
                if "upgrade" in tokens:
                    return None
                close = close or _lists_close(tokens)  # (a list: one close token is enough)
            elif lower == b"host":
                hosts += 1
            elif lower in _REFUSED:
                return None
            headers.add(name.decode(), text)
        if hosts != 1 or length < 0 or length > self.max_body:
            return None
        return headers, length, close

    async def serve(self, ex: LeanExchange, admitted: Admitted = None) -> None:
        """The chat route with what aiohttp's middlewares do for it: auth, and errors as
        OpenAI JSON (header limits were checked by `parse_head`). `admitted`: what its head's
        proxy key check gave, when that came before the body (`Connection._next`)."""
        try:
            if self.auth is not None:
                if isinstance(admitted, ProxyError):
                    raise admitted
                key, in_authorization = admitted or identify_client(self.auth, ex)
                ex[AUTH_KEY] = key
                if in_authorization:
                    ex.headers = without_authorization(ex.headers)
            await chat(ex)
        except ProxyError as e:
            await ex.fail(e)
        except Exception:
            log.exception("unhandled error serving POST /v1/chat/completions")
            await ex.fail(internal_error())


# A request's proxy key, checked as its head came: (the key, whether it came in
# Authorization), or the refusal (401, 429); None when not checked yet (or auth is off).
Admitted = tuple[ProxyKey, bool] | ProxyError | None


class Connection(asyncio.Protocol):
    """One client connection, until it closes or is handed to aiohttp."""

    __slots__ = ("_admitted", "_buf", "_drain", "_front", "_head", "_head_began", "_last_read",
                 "_paused",
                 "_scanned", "_send_watch", "_timer", "_writing_paused", "closing",
                 "send_timed_out", "task", "transport")

    def __init__(self, front: Front) -> None:
        self._front = front
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._scanned = 0  # how far the buffer is known to hold no head end
        self._head_began = 0.0  # when the head being read began to arrive (0: none is)
        # (headers, body start, body length, close after, arrived): a head awaiting its body
        self._head: tuple[CIMultiDict[str], int, int, bool, float] | None = None
        self._admitted: Admitted = None  # the key of the head awaiting its body
        self.task: asyncio.Task[None] | None = None  # the request being served
        self._timer: asyncio.TimerHandle | None = None  # keep-alive and read timeouts
        self._last_read = 0.0  # when bytes last came (or the connection was last ready for them)
        self.closing = False  # close once the request being served is answered
        self._paused = False  # reading paused: pipelined requests wait
        self._writing_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._send_watch: SendWatch | None = None  # while writing is paused
        self.send_timed_out = False  # closed for taking nothing for `server.send_timeout`

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._front.connections.add(self)
        self._wait_for_request()

    def data_received(self, data: bytes) -> None:
        self._last_read = self._front.loop.time()
        self._buf += data
        if self.task is None and not self._writing_paused:
            self._next()
        elif len(self._buf) > PIPELINE_LIMIT and not self._paused and self.transport:
            self._paused = True
            self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._front.connections.discard(self)
        self.transport = None
        if self._timer is not None:
            self._timer.cancel()
        self._unwatch_send()
        if self.task is not None:
            self.task.cancel()  # the client went away: so does its upstream request
        elif self._head is not None:  # ... while its body was arriving
            observe_abandoned(self._unanswered(self._head), self._key_name())
        self._wake_drain(ConnectionResetError("the client closed the connection"))

    def pause_writing(self) -> None:
        self._writing_paused = True
        seconds = self._front.send_timeout
        if seconds and self.transport is not None:
            self._send_watch = SendWatch(self.transport, seconds, self._send_stalled)

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._unwatch_send()
        self._wake_drain(None)
        if self.task is None and self.transport is not None:
            self._serve_next()  # (one that waited for the answer before it to leave)

    def _send_stalled(self) -> None:
        """The client took nothing for `server.send_timeout`: the connection ends, its
        request's task is cancelled (`connection_lost`)."""
        self._send_watch = None
        self.send_timed_out = True
        if self.transport is not None:
            self.transport.abort()  # (closing would wait for the bytes it does not take)

    def _unwatch_send(self) -> None:
        if self._send_watch is not None:
            self._send_watch.cancel()
            self._send_watch = None

    # -- requests ------------------------------------------------------------------------------
    def _next(self) -> None:
        """Serve the next whole request in the buffer, hand the connection to aiohttp, or wait
        for more bytes."""
        buf = self._buf
        head = self._head
        if head is None:
            if not buf:
                return
            end = buf.find(b"\r\n\r\n", self._scanned)
            if end < 0:
                # Not the chat line, a head too long or one this front would not serve
                # (`_UNSERVED`): aiohttp's, at once, which answers 400 as soon as a line is bad.
                if (not CHAT_LINE.startswith(bytes(buf[:len(CHAT_LINE)]))
                        or len(buf) > self._front.max_head
                        or _UNSERVED.search(buf, self._scanned)):
                    self._hand_off()
                else:  # a head that arrives in pieces is scanned once, not once per piece
                    self._scanned = max(0, len(buf) - 3)
                    if not self._head_began:  # its first byte, or the connection's ready time
                        self._head_began = self._last_read
                return
            self._scanned = 0
            self._head_began = 0.0
            parsed = self._front.parse_head(bytes(buf[:end]))
            if parsed is None:
                self._hand_off()
                return
            headers, length, close = parsed
            # The request's timings count from its head, as on aiohttp's front, which starts
            # the handler then (its record's clock reading, taken here instead).
            head = self._head = (headers, end + 4, length, close, time.monotonic())
            auth = self._front.auth
            if len(buf) < end + 4 + length and auth is not None:
                # Its body still to come: the proxy key is checked now, as aiohttp's front
                # checks it before reading a body, taking its rate token then. A missing or
                # wrong key (401) or one over its rate (429) is answered at once, not after an
                # upload that may stall (a 408) or that the client sends whole for nothing.
                # (Once, for a body that is not in with its head.)
                try:
                    self._admitted = identify_client(auth, self._unanswered(head))
                except ProxyError as e:  # (counted and logged as it was raised)
                    self._admitted = e
                    self._answer_without_body(head)
                    return
        headers, start, length, close, arrived = head
        if len(buf) < start + length:
            return
        body = bytes(buf[start:start + length])
        del buf[:start + length]
        self._head = None
        admitted, self._admitted = self._admitted, None
        ex = LeanExchange(self, headers, body, close, arrived)
        self.task = self._front.loop.create_task(self._serve(ex, admitted))

    async def _serve(self, ex: LeanExchange, admitted: Admitted = None) -> None:
        try:
            await self._front.serve(ex, admitted)
        except Exception:  # answering the error failed too: the connection closes, said once
            log.exception("could not answer POST /v1/chat/completions")
        finally:
            self.task = None
            transport = self.transport
            if transport is not None:
                if not ex.finished:
                    close_bounded(transport)  # an unfinished answer cannot be followed by another
                elif ex.close or self.closing:
                    self._close_lingering()  # (the client may have sent more)
                else:
                    self._wait_for_request()
                    self._serve_next()

    def _serve_next(self) -> None:
        """After an answer: the next request, once the client is taking the answer. While
        its buffer is full (the answer left into the transport whole) the next waits for
        `resume_writing`, as on aiohttp's front: a client that pipelines requests and reads
        no answer would otherwise have each one's answer piled up here, without bound."""
        if self._writing_paused:
            return
        if self._paused:
            self._paused = False
            assert self.transport is not None
            self.transport.resume_reading()
        self._next()

    def refuse_upload(self) -> None:
        """Serve the request whose body is arriving without it, now: the chat handler, seeing
        the drain's grace over, answers 503 `shutting_down` and closes the connection (as
        aiohttp's front answers one whose handler is reading its body; what the client still
        sends is discarded, `Lingering`)."""
        head = self._head
        if head is None or self.task is not None or self.transport is None:
            return
        self._answer_without_body(head)

    def _answer_without_body(self, head: tuple[CIMultiDict[str], int, int, bool, float]) -> None:
        """Serve the request of `head` with no body, now: for an answer that needs none (its
        connection then closes, discarding what the client still sends: `Lingering`)."""
        self._head = None
        del self._buf[:]
        admitted, self._admitted = self._admitted, None
        self.task = self._front.loop.create_task(self._serve(self._unanswered(head), admitted))

    def _hand_off(self) -> None:
        """From now on aiohttp serves this connection, from the bytes received so far."""
        transport = self.transport
        assert transport is not None and self.task is None
        self._front.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        self._unwatch_send()  # (aiohttp's protocol watches from here: pause_writing below)
        data, self._buf = bytes(self._buf), bytearray()
        self.transport = None
        handler = self._front.aiohttp_server()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._writing_paused:
            handler.pause_writing()
        handler.data_received(data)

    def _wait_for_request(self) -> None:
        """Ready for a request: the keep-alive timeout (or the read timeout of a request that
        starts before it runs out) counts from now. The timer is armed once per connection,
        never more than `check_every()` ahead."""
        loop = self._front.loop
        self._last_read = now = loop.time()  # bytes that waited while we served: no gap
        if self._timer is None:
            self._timer = loop.call_at(now + self._front.check_every(), self._check_timeouts)

    def _check_timeouts(self) -> None:
        """The timer: between requests the keep-alive timeout; once one is arriving, the time
        allowed for its whole head, then the gap allowed between reads of its body; none while
        a request is served (the timer stays armed then, so that a request neither cancels nor
        re-arms it). Reads only store their time; this sets the timer again when no timeout
        has run out."""
        loop = self._front.loop
        now = loop.time()
        # (a request that waits for its client to take the answer before is not late)
        if self.task is not None or (self._writing_paused and self._buf):
            self._timer = loop.call_at(now + self._front.check_every(), self._check_timeouts)
            return
        timeouts = self._front.read_timeouts
        if self._head is not None:
            due = self._last_read + timeouts.body
        elif self._head_began:  # a head arriving in pieces
            due = self._head_began + timeouts.header
        else:
            due = self._last_read + self._front.keepalive()
        if now < due:  # (the next read may start a head, or a body: the step overshoots neither)
            self._timer = loop.call_at(min(due, now + self._front.check_every()),
                                       self._check_timeouts)
            return
        self._timer = None
        if self._buf:
            self._time_out()
        else:
            self.close()

    def check_timeouts_now(self) -> None:
        """The timeouts changed (a drain began): look now, not when the timer was due."""
        if self._timer is not None:
            self._timer.cancel()
        self._check_timeouts()

    def _time_out(self) -> None:
        """A request stopped arriving: 408, and the connection closes. A chat request whose
        head came is counted and logged like one refused before its handler."""
        assert self.transport is not None
        timeouts = self._front.read_timeouts
        if self._head is None:
            err = request_timeout("head", timeouts.header)
        else:
            err = request_timeout("body", timeouts.body)
            observe_rejection(self._unanswered(self._head), err, "request_timeout",
                              self._key_name())
            self._head = None  # answered: not a request its client abandoned
        self.transport.write(timeout_response(err))
        self._close_lingering()

    def _key_name(self) -> str | None:
        """The name of the proxy key an unfinished upload's head presented, for its log line
        (aiohttp's front names it, having authenticated the head before the body)."""
        admitted = self._admitted
        return admitted[0].name if isinstance(admitted, tuple) else None

    def _unanswered(self, head: tuple[CIMultiDict[str], int, int, bool, float]) -> LeanExchange:
        """The exchange of a request whose body never came whole, to be logged."""
        return LeanExchange(self, head[0], b"", True, head[4])

    def close_when_idle(self) -> None:
        if self.task is None:
            self.close()
        else:
            self.closing = True

    def close(self) -> None:
        if self.transport is not None:
            close_bounded(self.transport)

    def _close_lingering(self) -> None:
        """Close after the last answer, lingering (`Lingering`, in `Front.lingering` till
        closed): its bytes are no request, and it is not open to the drain."""
        transport, self.transport = self.transport, None
        if transport is None:
            return
        self._front.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._unwatch_send()
        close_lingering(transport, self, self._front.lingering)

    # -- writing -------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        transport.write(data)

    @property
    def full(self) -> bool:
        return self._writing_paused

    async def drain(self) -> None:
        if not self._writing_paused:
            return
        if self.transport is None:
            raise ConnectionResetError("the client closed the connection")
        if self._drain is None:
            self._drain = self._front.loop.create_future()
        await self._drain

    def _wake_drain(self, exc: Exception | None) -> None:
        waiter, self._drain = self._drain, None
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)


class ResponseHead:
    """A response about to leave, as `on_response_prepare` hooks see it (the cache adds its
    status header)."""

    __slots__ = ("headers", "status")

    def __init__(self, status: int, headers: Mapping[str, str]) -> None:
        self.status = status
        self.headers: CIMultiDict[str] = CIMultiDict(headers)


class LeanExchange:
    """One chat request on the lean front (the `Exchange` of server/exchange.py)."""

    __slots__ = ("_conn", "_state", "arrived", "body", "close", "committed", "finished",
                 "headers")

    def __init__(self, conn: Connection, headers: CIMultiDict[str], body: bytes,
                 close: bool, arrived: float) -> None:
        self._conn = conn
        self.arrived = arrived  # time.monotonic() when its head had come
        self.headers: Mapping[str, str] = headers
        self.body = body
        self.close = close  # the connection closes after this answer
        self._state: dict[Any, Any] = {}
        self.committed = False  # a 200 head is on its way: no other answer is possible
        self.finished = False  # the whole answer is written

    @property
    def app(self) -> web.Application:
        return self._conn._front.app

    @property
    def client_max_size(self) -> int:
        return self._conn._front.max_body

    @property
    def send_timed_out(self) -> bool:
        return self._conn.send_timed_out

    def get(self, key: Any, default: Any = None) -> Any:
        return self._state.get(key, default)

    def __getitem__(self, key: Any) -> Any:
        return self._state[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._state[key] = value

    async def read(self) -> bytes:
        return self.body

    async def reply(self, body: bytes, *, status: int = 200,
                    headers: Mapping[str, str] | None = None, close: bool = False) -> None:
        self.close = self.close or close
        head = await self._prepare(status, {"content-type": JSON_TYPE, **(headers or {})})
        self._conn.write(head + b"content-length: %d\r\n\r\n" % len(body) + body)
        self.finished = True

    async def fail(self, err: ProxyError) -> None:
        if self.committed:  # a stream already answered 200: only closing is left
            return
        await reply_error(self, err)

    async def start_events(self, headers: Mapping[str, str]) -> LeanEvents:
        head = await self._prepare(200, headers)
        self.committed = True
        return LeanEvents(self, head + b"transfer-encoding: chunked\r\n\r\n")

    async def _prepare(self, status: int, headers: Mapping[str, str]) -> bytes:
        """The head's status line and header lines (not its end), after the app's
        on_response_prepare hooks."""
        front = self._conn._front
        # Read as the answer begins, not as the request came: one being served as a drain
        # begins closes its connection too, instead of lingering for a next request.
        self.close = self.close or front.stopping
        response = ResponseHead(status, headers)
        for hook in front.prepare_hooks:
            await hook(self, response)
        # One str.join per line, no loop in Python: it takes the names, multidict's istr, as
        # they are (an f-string calls the subclass's __format__ for each). Never empty: every
        # answer has a content-type.
        fields = "\r\n".join(map(": ".join, response.headers.items()))
        return b"HTTP/1.1 %d %s\r\n%b\r\ndate: %b\r\n%b%b" % (
            status, _REASONS.get(status, b"Unknown"), fields.encode(), _http_date(), _SERVER,
            b"connection: close\r\n" if self.close else b"")


class LeanEvents:
    """The client side of a committed stream on the lean front (an `EventWriter`): chunked
    framing; the head leaves with the first frame."""

    __slots__ = ("_conn", "_ex", "_head")
    direct = True

    def __init__(self, ex: LeanExchange, head: bytes) -> None:
        self._ex = ex
        self._conn = ex._conn
        self._head = head

    async def write(self, data: bytes) -> None:
        self.write_now(data)
        if self._conn.full:
            await self._conn.drain()

    def write_now(self, data: bytes) -> None:
        framed = chunk(data)
        if self._head:
            framed, self._head = self._head + framed, b""
        if framed:
            self._conn.write(framed)

    def end_with(self, data: bytes) -> None:
        self._conn.write(self._head + chunk(data) + b"0\r\n\r\n")
        self._head = b""
        self._ex.finished = True

    @property
    def full(self) -> bool:
        return self._conn.full

    async def drain(self) -> None:
        await self._conn.drain()

    async def finish(self, data: bytes) -> None:
        self.end_with(data)

    async def write_eof(self) -> None:
        if not self._ex.finished:
            self.end_with(b"")


_date: list[Any] = [0, b""]  # the last whole second, and its HTTP date


def _http_date() -> bytes:
    now = int(time.time())
    if now != _date[0]:
        _date[0], _date[1] = now, formatdate(now, usegmt=True).encode()
    return _date[1]
