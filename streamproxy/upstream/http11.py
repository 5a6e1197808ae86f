"""A lean asyncio HTTP/1.1 client for upstream requests (`server.upstream_client: native`).

Why: aiohttp's client costs ~350 µs from writing a request to having its headers, and its
per-connection objects are a large part of the memory an open stream holds. Upstream calls are
one shape only — a request with a bytes body, a streamed response read chunk by chunk — so this
client is small: one `asyncio.Protocol` per connection (no StreamReader layering), the request
written as one bytes write, the sans-IO parser of `upstream/response_parser.py`
(`ResponseParser`, `ChunkedDecoder`) fed from `data_received`, and a per-(scheme, host, port)
pool of idle keep-alive connections. This module holds the I/O: the connection, `Response`,
`Pool`, the CONNECT tunnel and `HTTP11Client`.

The response offers what the proxy uses of aiohttp's: `status`, `headers` (a CIMultiDict),
`content.readany()` / `content.at_eof()`, `read()`, `release()`, `close()`. And one thing
aiohttp's cannot: `pipe(sink)` hands each read's body bytes to `sink` from inside the
connection's `data_received`, so a relay can translate and write them with no task wake-up
per read (`relay.py`).

Errors: connection failures are `ConnectionError`s (`ConnectFailed` here, `Disconnected`) and a
malformed response is `MalformedResponse` (also a `ConnectionError`, so every path that catches
OSError sees it; it and `Disconnected` are the parser's); `upstream/client.py` maps them.

Egress proxies (`upstream/egress.py`): an https upstream is reached through a CONNECT tunnel to
the proxy (TLS to the upstream inside it, pooled per upstream as usual); an http one is sent to
the proxy with its absolute URL as the request target (pooled per proxy).
"""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
import struct
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote, urlsplit

import aiohappyeyeballs
import idna
from multidict import CIMultiDictProxy

from streamproxy.upstream.egress import NO_PROXIES, EgressProxies, ProxyRoute
from streamproxy.upstream.response_parser import (
    MAX_HEAD_BYTES,
    Disconnected,
    MalformedResponse,
    ResponseHead,
    ResponseParser,
    find_head_end,
)
from streamproxy.upstream.userinfo import has_authorization, split_userinfo

PAUSE_AT = 64 * 1024  # unread body bytes beyond which the socket stops being read
KEEPALIVE_TIMEOUT = 30.0  # like aiohttp's connector
MAX_IDLE_PER_HOST = 1024
# Hosts with idle connections: a client's `vertex_region` / `aws_region` (Azure's
# `resource_name`) names the host, so without a bound every one a client made up would keep a
# socket for `keepalive`.
MAX_IDLE_HOSTS = 256
# A body released before its framing ended (the last event was read, the chunked terminator
# was not yet): it is read and dropped for up to this long / this many bytes, then pooled.
LINGER_SECONDS = 1.0
LINGER_MAX_BYTES = 64 * 1024
HAPPY_EYEBALLS_DELAY = 0.25  # aiohttp's client's, RFC 8305's recommended


# -- errors ---------------------------------------------------------------------------------------

class ConnectFailed(ConnectionError):
    """The connection could not be opened (refused, DNS, TLS handshake)."""


class NotSent(Disconnected):
    """A pooled connection was found closed before any of the request went out on it: the
    request is safe to send again on a new one."""


# -- the connection -------------------------------------------------------------------------------

class _Connection(asyncio.Protocol):
    __slots__ = ("_head_waiter", "_loop", "_paused", "busy", "closed", "idle_since", "key",
                 "parser", "pool", "response", "transport")

    def __init__(self, loop: asyncio.AbstractEventLoop, key: tuple[str, str, int],
                 pool: Pool) -> None:
        self._loop = loop
        self.key = key
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser: ResponseParser | None = None
        self.response: Response | None = None
        self._head_waiter: asyncio.Future[Response] | None = None
        self._paused = False
        self.busy = False  # a request is on it (counted in pool.busy)
        self.closed = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        if parser is None:  # bytes on an idle connection: it cannot be trusted any more
            self.close()
            return
        try:
            body = parser.feed(data)
        except MalformedResponse as e:
            if self.response is None and parser.head is not None:
                # The head was whole, its body's first bytes bad (not the gzip it said): the
                # head is still the answer (an error's status and Retry-After), its body fails
                # — as aiohttp's client has it, the same read whether in one packet or two.
                self._answer(parser.head)
            self._fail(e)
            return
        response = self.response
        if response is None:
            head = parser.head
            if head is None:
                return
            response = self._answer(head)
        if body:
            sink = response._sink
            if sink is not None:  # piped: straight on, nothing buffered here
                sink.data(body)
            else:
                response._push(body)
            if response._buffered > PAUSE_AT and not self._paused and self.transport:
                self._paused = True
                self.transport.pause_reading()
        if parser.done:
            if parser.extra:
                # Bytes after the end (a stray CRLF some servers add): the response is whole
                # by its framing and stands, as curl, Go and aiohttp's client take it, but the
                # connection is not trusted any more, so it is not reused.
                self.close()
            response._finish(None)

    def _answer(self, head: ResponseHead) -> Response:
        """The response to `head`, handed to the request waiting for it."""
        response = self.response = Response(self, head)
        waiter = self._head_waiter
        self._head_waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_result(response)
        return response

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost does the rest

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        parser = self.parser
        if parser is None:
            return
        try:
            parser.eof(reset=exc is not None)
        except Disconnected as e:
            self._fail(e)
            return
        if self.response is not None:
            self.response._finish(None)

    def _fail(self, exc: BaseException) -> None:
        waiter = self._head_waiter
        self._head_waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self.response is not None:
            self.response._finish(exc)
        self.close()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    async def request(self, data: bytes | tuple[bytes, bytes], head_request: bool) -> Response:
        transport = self.transport
        if transport is None or self.closed or transport.is_closing():
            raise NotSent("stale connection", nothing_received=True)
        self.parser = ResponseParser(head_request=head_request)
        self.response = None
        self._set_busy(True)
        if type(data) is bytes:
            transport.write(data)
        else:
            transport.writelines(data)
        if transport.is_closing():  # the socket refused the write at once: a peer's reset
            self.close()
            raise NotSent("stale connection", nothing_received=True)
        waiter = self._head_waiter = self._loop.create_future()
        try:
            return await waiter
        except BaseException:
            self.close()  # cancelled or failed: the connection is not reusable
            raise

    def request_unsent(self) -> bool:
        """Part of the request is still to be written: the upstream answered before reading
        all of it (a 413, a 401 on a large body). The next request would wait behind those
        bytes, on a connection the upstream may be about to close, so it is not reused."""
        return self.transport is not None and self.transport.get_write_buffer_size() > 0

    def _set_busy(self, busy: bool) -> None:
        if busy != self.busy:
            self.busy = busy
            if busy:
                self.pool.in_use.add(self)
            else:
                self.pool.in_use.discard(self)

    def close(self) -> None:
        self.closed = True
        self.parser = None
        self._set_busy(False)
        transport = self.transport
        if transport is None or transport.is_closing():
            # Closed already (by us, or the peer: connection_lost). A TLS transport closed
            # twice drops its protocol, and then its get_write_buffer_size() raises.
            return
        if transport.get_write_buffer_size():
            # A request still being written (an upstream that stopped reading its body):
            # close() would wait for the upstream to read it all, holding the connection and
            # the body for as long as it does not. What is left is dropped, with a reset.
            _reset(transport)
        else:
            transport.close()


def _reset(transport: asyncio.Transport) -> None:
    """Close at once, discarding what is still unsent (ours and the kernel's): the upstream
    sees a reset now, not a FIN behind the rest of an abandoned request."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _readable(transport: asyncio.Transport) -> bool:
    """An idle connection with something to read: the upstream's close (its keep-alive ended
    as our request came, the loop not having read the FIN yet) or bytes nobody asked for.
    Either way a request written on it would fail, or read a stray answer, so it is not
    reused (urllib3's and httpcore's check: one poll, per reuse, not per read)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


class BodySink(Protocol):
    """Where a piped response delivers its body, called from the connection's callbacks."""

    def data(self, data: bytes) -> None: ...

    def end(self, exc: BaseException | None) -> None: ...


class Response:
    """One upstream response; also its own `content` (aiohttp's StreamReader role)."""

    __slots__ = ("_buffered", "_chunks", "_conn", "_eof", "_error", "_head", "_linger",
                 "_released", "_sink", "_waiter", "content", "reason", "status")

    def __init__(self, conn: _Connection, head: ResponseHead) -> None:
        self._conn = conn
        self._head = head
        self.status = head.status
        self.reason = head.reason
        self.content = self
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._released = False
        self._linger: asyncio.TimerHandle | None = None  # released, waiting for the body's end
        self._sink: BodySink | None = None  # piped: the body goes there, not to readany()

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        return self._head.headers

    @property
    def header_fields(self) -> list[tuple[str, str]]:
        """The head's (name, value) fields as parsed, with no CIMultiDict built: one kept for
        a stream's whole life cost ~0.7 KB a stream."""
        return self._head.fields

    # Called by the connection (a piped body goes to the sink instead).
    def _push(self, data: bytes) -> None:
        if self._linger is not None:  # released: nobody reads these bytes any more
            self._buffered += len(data)
            if self._buffered > LINGER_MAX_BYTES:
                self._stop_lingering()
                self._conn.close()
            return
        self._chunks.append(data)
        self._buffered += len(data)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _finish(self, exc: BaseException | None) -> None:
        if self._eof:
            return
        self._eof = True
        self._error = exc
        if self._linger is not None:
            self._stop_lingering()
            self._pool_or_close()
            return
        if self._sink is not None:
            sink, self._sink = self._sink, None
            sink.end(exc)
            return
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # The reader side.
    async def readany(self) -> bytes:
        """The body bytes available now (waiting for some), b"" at the end."""
        while not self._chunks:
            if self._eof:
                if self._error is not None:
                    raise self._error
                return b""
            waiter = self._waiter = self._conn._loop.create_future()
            try:
                await waiter
            except BaseException:
                self.close()  # a cancelled read drops the connection
                raise
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        self._buffered = 0
        self._conn.resume()
        return data

    def at_eof(self) -> bool:
        return self._eof and not self._chunks

    # The push side.
    def pipe(self, sink: BodySink) -> None:
        """From now on each read's body bytes go to `sink.data` and the end (or the failure)
        to `sink.end`, called from the connection's callbacks; bytes already buffered go
        first. Until `release()` or `close()`."""
        if not self._eof:
            self._sink = sink
            # Reading resumes before the buffered bytes go: the sink may pause it for them
            # (a full client), which a resume after would undo.
            self._conn.resume()
        if self._chunks:
            data = b"".join(self._chunks)
            self._chunks = []
            self._buffered = 0
            sink.data(data)
        if self._eof:
            sink.end(self._error)

    def handover(self, sink: BodySink) -> None:
        """A piped body goes to `sink` from the next read on (its end too)."""
        if self._sink is not None:
            self._sink = sink

    def pause_reading(self) -> None:
        """Stop reading the socket (the client's buffer is full): the upstream's TCP window
        closes instead of our memory growing."""
        conn = self._conn
        if not conn._paused and conn.transport is not None and not conn.closed:
            conn._paused = True
            conn.transport.pause_reading()

    def resume_reading(self) -> None:
        self._conn.resume()

    async def read(self) -> bytes:
        parts = []
        while True:
            data = await self.readany()
            if not data:
                return b"".join(parts)
            parts.append(data)

    def release(self) -> None:
        """Back to the pool once the body has been read to its end. A body whose framing has
        not ended yet (the reader has all it needs, the last chunk's terminator is still on
        its way) is read to that end and dropped, bounded in time and bytes, then pooled."""
        if self._released:
            return
        self._released = True
        self._sink = None
        conn = self._conn
        if not self._eof and not conn.closed and conn.parser is not None:
            self._chunks = []
            self._buffered = 0
            self._linger = conn._loop.call_later(LINGER_SECONDS, self._linger_expired)
            conn.resume()
            return
        self._pool_or_close()

    def _pool_or_close(self) -> None:
        conn = self._conn
        parser = conn.parser
        if (self._eof and self._error is None and not self._chunks and parser is not None
                and parser.done and parser.head is not None and parser.head.keep_alive
                and not conn.closed and not conn.request_unsent()):
            conn.parser = None
            conn.response = None
            conn._set_busy(False)
            conn.resume()
            conn.pool.put(conn)
        else:
            conn.close()

    def _stop_lingering(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None

    def _linger_expired(self) -> None:
        self._linger = None
        self._conn.close()

    def close(self) -> None:
        self._sink = None
        if self._linger is not None:
            self._stop_lingering()
            self._conn.close()
        if not self._released:
            self._released = True
            # A body already read to its end (an error answer, a stream that failed in its
            # translation) leaves a sound connection: pooled, as aiohttp's client releases one
            # at the body's end. Closing it cost every 429 or 500 a new connection (and TLS).
            self._pool_or_close()
        self._finish(self._error)


# -- the pool and the client ----------------------------------------------------------------------

class Pool:
    """Idle keep-alive connections per (scheme, host, port), newest first; a connection idle
    longer than `keepalive` is closed by one sweep timer for the whole pool. Beyond `max_hosts`
    hosts, the least recently used host's idle connections are closed."""

    def __init__(self, *, keepalive: float = KEEPALIVE_TIMEOUT,
                 max_idle_per_host: int = MAX_IDLE_PER_HOST,
                 max_hosts: int = MAX_IDLE_HOSTS,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.keepalive = keepalive
        self.max_idle = max_idle_per_host
        self.max_hosts = max_hosts
        self.idle: dict[tuple[str, str, int], list[_Connection]] = {}  # least recently put first
        self.opened = 0  # connections ever opened (tests, metrics)
        self.in_use: set[_Connection] = set()  # connections carrying a request now
        # Made at the first https connect when not given: reading the trust store blocks the
        # loop ~80 ms, which a worker's client pays at its start (upstream/client.py).
        self._ssl = ssl_context
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def busy(self) -> int:
        return len(self.in_use)

    def take(self, key: tuple[str, str, int]) -> _Connection | None:
        conns = self.idle.get(key)
        if not conns:
            return None
        now = conns[-1]._loop.time()  # the pool's loop, without asyncio's lookup (a getpid())
        while conns:
            conn = conns.pop()
            if conn.closed or conn.transport is None or conn.transport.is_closing():
                continue
            if now - conn.idle_since > self.keepalive or _readable(conn.transport):
                conn.close()
                continue
            return conn
        return None

    def put(self, conn: _Connection) -> None:
        idle = self.idle
        conns = idle.pop(conn.key, None)  # put back last: the hosts in use are dropped last
        if conns is None:
            conns = []
            if len(idle) >= self.max_hosts:
                for old in idle.pop(next(iter(idle))):
                    old.close()
        idle[conn.key] = conns
        if self._closed or len(conns) >= self.max_idle:
            conn.close()
            return
        loop = conn._loop
        conn.idle_since = loop.time()
        conns.append(conn)
        if self._sweep is None:
            self._sweep = loop.call_later(self.keepalive / 2, self._sweep_idle)

    def _sweep_idle(self) -> None:
        self._sweep = None
        loop = asyncio.get_running_loop()
        horizon = loop.time() - self.keepalive
        left = False
        for key, conns in list(self.idle.items()):
            keep = []
            for conn in conns:
                if conn.closed:
                    continue
                if conn.idle_since < horizon:
                    conn.close()
                else:
                    keep.append(conn)
            if keep:
                self.idle[key] = keep
                left = True
            else:
                del self.idle[key]
        if left:
            self._sweep = loop.call_later(self.keepalive / 2, self._sweep_idle)

    async def connect(self, key: tuple[str, str, int], timeout: float,
                      tunnel: ProxyRoute | None = None) -> _Connection:
        """A new connection for `key`; with `tunnel`, through a CONNECT to that proxy."""
        if self._closed:  # (its connection would outlive the client)
            raise ConnectFailed("the upstream client is closed")
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        conn = _Connection(loop, key, self)
        context = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        try:
            async with asyncio.timeout(timeout):
                if tunnel is None:
                    await loop.create_connection(lambda: conn, sock=await _open_socket(host, port),
                                                 ssl=context,
                                                 server_hostname=host if context else None)
                else:  # (only https upstreams are tunnelled: see _split_url)
                    assert context is not None
                    await _open_tunnel(loop, conn, tunnel, host, port, context)
        except (TimeoutError, ConnectFailed):  # (the tunnel's: its cause said already)
            raise
        except OSError as e:  # its text may not name the host (a TLS or DNS failure), and a
            # target's or client's host (an Azure resource, a custom host) is not the config's
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            if tunnel is not None:
                where += f" via the egress proxy {tunnel.host}:{tunnel.port}"
            # (asyncio's TLS handshake, on a connection closed under it, raises one of no text)
            raise ConnectFailed(f"{type(e).__name__} connecting to {where}: "
                                f"{e.strerror or str(e) or 'the connection was closed'}") from e
        if self._closed:  # close() ran while it opened: it would carry a request no one ends
            conn.close()
            raise ConnectFailed("the upstream client is closed")
        self.opened += 1
        return conn

    def close(self) -> None:
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for conns in self.idle.values():
            for conn in conns:
                conn.close()
        self.idle.clear()
        # Requests still running (those a worker's drain did not end) too, as aiohttp's client
        # closes its acquired connections: left open, each kept its socket and its reader
        # waiting for as long as the upstream went on. Their readers see the failure.
        for conn in list(self.in_use):
            conn._fail(Disconnected("the upstream client closed"))


async def _open_socket(host: str, port: int) -> socket.socket:
    """A connected socket to `host`, its addresses tried as aiohttp's client tries them (Happy
    Eyeballs, RFC 8305): the next one starts when the one before has not connected within
    HAPPY_EYEBALLS_DELAY, address families alternating. One at a time (asyncio's and uvloop's
    create_connection), an address that drops packets (a broken IPv6 route, when the provider
    publishes AAAA records) held every new connection for the whole connect timeout, and the
    next address was never tried."""
    try:  # an address needs no lookup (nor the executor's thread)
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port,
                                                             type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"no address for {host}")
    return await aiohappyeyeballs.start_connection(
        infos, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY, interleave=1)


class _TunnelHandshake(asyncio.Protocol):
    """Sends CONNECT and waits for the proxy's answer head (nothing may follow it: the
    upstream speaks only after our TLS hello)."""

    def __init__(self, request: bytes) -> None:
        self._request = request
        self._buf = b""
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self._request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self._buf += data
        # (its lines may end with a bare LF, as a response head's may: response_parser.py)
        while not self.answer.done():
            start, end = find_head_end(self._buf)
            if start < 0:
                if len(self._buf) > MAX_HEAD_BYTES:
                    self.answer.set_result(self._buf)
                return
            # RFC 9110 15.2: interim 1xx answers (100, 102, 103) come before the final one and
            # are skipped, as by any client; a 101 is no answer to a CONNECT (refused as one).
            status = _status_of(self._buf)
            if 100 <= status < 200 and status != 101:
                self._buf = self._buf[end:]
                continue
            self.answer.set_result(self._buf)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(ConnectionResetError("the proxy closed the connection"))


def _status_of(answer: bytes) -> int:
    """The status code of the answer head at the start of `answer`; 0 when malformed."""
    parts = answer.split(b"\n", 1)[0].rstrip(b"\r").split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


async def _open_tunnel(loop: asyncio.AbstractEventLoop, conn: _Connection, proxy: ProxyRoute,
                       host: str, port: int, context: ssl.SSLContext) -> None:
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    auth = f"Proxy-Authorization: {proxy.authorization}\r\n" if proxy.authorization else ""
    request = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{auth}\r\n".encode()
    transport, handshake = await loop.create_connection(
        lambda: _TunnelHandshake(request), sock=await _open_socket(proxy.host, proxy.port))
    try:
        answer = await handshake.answer
        status = _status_of(answer)
        head_end = find_head_end(answer)
        if head_end[1] != len(answer) or not 200 <= status < 300:
            if not status:
                reason = "sent a malformed answer"
            elif not 200 <= status < 300:
                reason = f"answered {status}"
            elif head_end[0] >= 0:  # (a 2xx is no failure: name what is wrong with it)
                reason = f"sent bytes after its {status} answer"
            else:  # a head over MAX_HEAD_BYTES
                reason = f"sent a {status} answer with an oversized head"
            raise ConnectFailed(f"the egress proxy {proxy.host}:{proxy.port} {reason} to "
                                f"CONNECT {authority}")
        tls = await loop.start_tls(transport, conn, context, server_hostname=host)
    except BaseException:
        transport.close()
        raise
    assert tls is not None
    conn.connection_made(tls)


@dataclass(slots=True, frozen=True)
class _Url:
    key: tuple[str, str, int]  # the pool's: the upstream's, or an http proxy's
    target: str  # path + query; the absolute URL when sent to an http proxy
    host_header: str
    tunnel: ProxyRoute | None = None  # an https upstream behind this proxy
    proxy_authorization: str | None = None  # an http upstream sent through a proxy
    authorization: str | None = None  # "Basic …" of the URL's user info (upstream/userinfo.py)


_DROPPED = frozenset({"host", "content-length", "connection", "transfer-encoding",
                      "accept-encoding", "keep-alive", "te", "upgrade",
                      "proxy-authorization"})


_TARGET_SAFE = "/?#[]@!$&'()*+,;=:%~"  # with letters, digits and "_.-": kept as they are


def _split_url(url: str, egress: EgressProxies = NO_PROXIES) -> _Url:
    url, authorization = split_userinfo(url)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"unsupported upstream URL scheme {scheme!r}")
    default = 443 if scheme == "https" else 80
    port = parts.port or default
    host = name = parts.hostname
    if not host.isascii():
        # The A-label everywhere — Host, the name resolved, SNI, CONNECT — by IDNA 2008 as
        # aiohttp's client (yarl) encodes it. Left as it was, the Host header went out as UTF-8
        # and the connect and SNI encoded by Python's IDNA 2003 codec (ß → ss: another host).
        try:
            host = idna.encode(host, uts46=True).decode("ascii")
        except idna.IDNAError as e:
            raise ValueError(f"invalid upstream host name: {e}") from None
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == default else f"{shown}:{port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    # RFC 9112 3.2: no space or control character in the target (a custom_host path may hold
    # any), percent-encoded as aiohttp's client does; escapes already there are kept.
    target = quote(target, safe=_TARGET_SAFE)
    # NO_PROXY is matched against the name as written, as for aiohttp's client (client.py)
    proxy = egress.route(scheme, name, port)
    if proxy is None:
        return _Url((scheme, host, port), target, host_header, authorization=authorization)
    if scheme == "https":
        return _Url((scheme, host, port), target, host_header, tunnel=proxy,
                    authorization=authorization)
    return _Url(("http", proxy.host, proxy.port), f"http://{host_header}{target}", host_header,
                proxy_authorization=proxy.authorization, authorization=authorization)


class HTTP11Client:
    """`send()` → a `Response` once its head is in; the caller `release()`s or `close()`s it."""

    def __init__(self, *, keepalive_timeout: float = KEEPALIVE_TIMEOUT,
                 max_idle_per_host: int = MAX_IDLE_PER_HOST,
                 egress: EgressProxies = NO_PROXIES,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.pool = Pool(keepalive=keepalive_timeout, max_idle_per_host=max_idle_per_host,
                         ssl_context=ssl_context)
        self.egress = egress
        self._urls: dict[str, _Url] = {}

    def _url(self, url: str) -> _Url:
        parsed = self._urls.get(url)
        if parsed is None:
            if len(self._urls) > 1024:  # per-request URLs (a model in the path): bound it
                self._urls.clear()
            parsed = self._urls[url] = _split_url(url, self.egress)
        return parsed

    async def send(self, method: str, url: str, body: bytes, headers: dict[str, str], *,
                   connect_timeout: float) -> Response:
        u = self._url(url)
        lines = [f"{method} {u.target} HTTP/1.1\r\nHost: {u.host_header}\r\n"
                 f"Content-Length: {len(body)}\r\nAccept-Encoding: identity\r\n"
                 "Connection: keep-alive\r\n"]
        if u.proxy_authorization:
            lines.append(f"Proxy-Authorization: {u.proxy_authorization}\r\n")
        if u.authorization is not None and not has_authorization(headers):
            lines.append(f"Authorization: {u.authorization}\r\n")
        for name, value in headers.items():
            if name.lower() in _DROPPED:
                continue
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
                raise ValueError("newline or colon in an upstream header")
            lines.append(f"{name}: {value}\r\n")
        lines.append("\r\n")
        # (a header value that came as bytes that are not UTF-8 goes on as those bytes)
        head = "".join(lines).encode("utf-8", "surrogateescape")
        # One write: a small body is joined (one send); a large one is not copied.
        data = head + body if len(body) <= 65536 else (head, body)
        head_request = method == "HEAD"
        conn = self.pool.take(u.key)
        if conn is not None:
            try:
                return await conn.request(data, head_request)
            except NotSent:
                pass  # the upstream had closed the pooled connection: send on a new one
            # Any other failure is not retried, even with no byte of an answer: the request
            # went out and may have reached the upstream (which then closed, or crashed), and
            # a POST must not reach it twice (a second generation, billed twice).
        conn = await self.pool.connect(u.key, connect_timeout, u.tunnel)
        return await conn.request(data, head_request)

    async def close(self) -> None:
        self.pool.close()
