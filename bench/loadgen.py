"""A cheap HTTP/1.1 streaming load generator on raw asyncio protocols.

It must never be the bottleneck, so it does almost nothing per byte: one persistent connection
per virtual user, a pre-encoded request, chunked-transfer framing walked by offsets (no copies),
events counted with `bytes.count(separator, start, end)` and the first token found with
`bytes.find(marker, ...)`. Nothing is JSON-parsed. Separators and markers that straddle reads
are caught by carrying the last few body bytes over.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

_now = time.perf_counter
_END_BYTES = 512  # the whole last event of every bench stream


@dataclass(frozen=True, slots=True)
class Target:
    """One kind of request: where it goes, its bytes, and how to read its answer."""

    host: str
    port: int
    path: str
    body: bytes
    separator: bytes  # one per event in the response body (b"\n\n" for SSE)
    first_token: bytes  # marks the first event that carries generated text
    end_marker: bytes  # must be in the last bytes of a complete, error-free stream
    expect_events: int | None = None  # when known: every stream must have exactly this many
    headers: tuple[tuple[str, str], ...] = ()

    def request_bytes(self) -> bytes:
        lines = [f"POST {self.path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                 "Content-Type: application/json", f"Content-Length: {len(self.body)}",
                 *(f"{k}: {v}" for k, v in self.headers)]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


@dataclass(slots=True)
class Stats:
    """Counters shared by every connection of a run; only updated while `measuring`."""

    measuring: bool = False
    events: int = 0
    streams: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)  # seconds, streams that started measured
    duration: list[float] = field(default_factory=list)
    streams_total: int = 0  # completed streams, measured or not
    errors_total: int = 0

    def error(self, what: str) -> None:
        self.errors_total += 1
        if self.measuring:
            self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(what)


class _Failed(Exception):
    pass


class StreamConnection(asyncio.Protocol):
    """One keep-alive connection that runs one streamed request at a time."""

    def __init__(self, target: Target, stats: Stats) -> None:
        self._target = target
        self._request = target.request_bytes()
        self._sep = target.separator
        self._marker = target.first_token
        self._sep_keep = len(self._sep) - 1
        self._mark_keep = len(self._marker) - 1
        self._keep = max(self._sep_keep, self._mark_keep)
        self._stats = stats
        self.transport: asyncio.Transport | None = None
        self._done: asyncio.Future[None] | None = None
        self._ttft: float | None = None
        self.closed = False

    @property
    def got_token(self) -> bool:
        """The current stream has delivered its first token."""
        return self._ttft is not None

    @property
    def streaming(self) -> bool:
        """The current stream has delivered its first token and has not ended (nor failed)."""
        return self._ttft is not None and self._done is not None and not self._done.done()

    # -- one request ---------------------------------------------------------------------------
    async def run_once(self) -> bool:
        """Send the request and wait for the whole response. False if the stream failed."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        self._head = b""
        self._in_body = False
        self._chunked = False
        self._remaining = 0  # bytes left in the current chunk (or the whole body)
        self._skip = 0  # CRLF bytes after a chunk still to skip
        self._size_line = b""
        self._final = False  # read the last chunk; its CRLF ends the response
        self._tail = b""  # the last body bytes, for separators split across reads
        self._end = b""  # the last _END_BYTES of the body, to check how the stream ended
        self._events = 0
        self._stream_events = 0
        self._measured = self._stats.measuring
        self._t0 = _now()
        self._ttft: float | None = None
        self.transport.write(self._request)
        try:
            await self._done
        except _Failed as e:
            self._stats.error(str(e))
            return False
        stats = self._stats
        target = self._target
        if target.end_marker not in self._end:
            stats.error(f"stream ended without {target.end_marker!r}: ...{self._end[-120:]!r}")
            return False
        if target.expect_events is not None and self._stream_events != target.expect_events:
            stats.error(f"{self._stream_events} events instead of {target.expect_events}")
            return False
        stats.streams_total += 1
        if stats.measuring:
            stats.streams += 1
        if self._measured:
            stats.duration.append(_now() - self._t0)
            if self._ttft is not None:
                stats.ttft.append(self._ttft)
        return True

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._done is not None and not self._done.done():
            self._done.set_exception(_Failed(f"connection lost: {exc or 'closed by peer'}"))

    def data_received(self, data: bytes) -> None:
        if self._done is None or self._done.done():
            return
        pos = 0
        if not self._in_body:
            head = self._head + data
            end = head.find(b"\r\n\r\n")
            if end < 0:
                self._head = head
                return
            if not self._headers(head[:end]):
                return
            data, pos = head, end + 4
        n = len(data)
        while pos < n:
            if self._skip:
                step = min(self._skip, n - pos)
                self._skip -= step
                pos += step
                if not self._skip and self._final:
                    self._finish()
                    return
                continue
            if self._remaining:
                end = min(n, pos + self._remaining)
                self._body(data, pos, end)
                self._remaining -= end - pos
                pos = end
                if not self._remaining:
                    if not self._chunked:
                        self._finish()
                        return
                    self._skip = 2
                continue
            if not self._chunked:
                break
            # The LF ends a size line: a read may end between its CR and LF, and then the CR
            # is carried over with the line (a search for CRLF would miss it).
            nl = data.find(b"\n", pos)
            if nl < 0:
                self._size_line += data[pos:]
                return
            line = (self._size_line + data[pos:nl]).rstrip(b"\r")
            self._size_line = b""
            pos = nl + 1
            try:
                self._remaining = int(line.split(b";", 1)[0], 16)
            except ValueError:
                self._fail(f"bad chunk size line {line[:20]!r}")
                return
            if not self._remaining:
                self._final = True
                self._skip = 2

    # -- parsing -------------------------------------------------------------------------------
    def _headers(self, head: bytes) -> bool:
        self._in_body = True
        status = head[9:12]
        lower = head.lower()
        self._chunked = b"transfer-encoding: chunked" in lower
        if not self._chunked:
            at = lower.find(b"content-length:")
            if at < 0:
                self._fail("response with neither chunked encoding nor content-length")
                return False
            eol = lower.find(b"\r\n", at)
            self._remaining = int(lower[at + 15:eol if eol > 0 else None])
        if status != b"200":
            self._fail(f"HTTP {status.decode(errors='replace')}")
            return False
        if not self._chunked and not self._remaining:
            self._finish()
            return False
        return True

    def _body(self, data: bytes, start: int, end: int) -> None:
        sep, keep, tail = self._sep, self._keep, self._tail
        if tail:
            if self._sep_keep:
                k = self._sep_keep
                self._events += (tail[-k:] + data[start:start + k]).count(sep)
            if self._ttft is None and self._mark_keep:
                k = self._mark_keep
                if self._marker in tail[-k:] + data[start:start + k]:
                    self._ttft = _now() - self._t0
        self._events += data.count(sep, start, end)
        if self._ttft is None and data.find(self._marker, start, end) >= 0:
            self._ttft = _now() - self._t0
        if keep:
            # The last `keep` body bytes, from before this piece too when it is shorter (a
            # marker or separator may span three reads).
            self._tail = (data[end - keep:end] if end - start >= keep
                          else (tail + data[start:end])[-keep:])
        self._end = (self._end + data[max(start, end - _END_BYTES):end])[-_END_BYTES:]
        self._stream_events += self._events
        if self._stats.measuring:
            self._stats.events += self._events
        self._events = 0

    def _finish(self) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    def _fail(self, why: str) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_exception(_Failed(why))
        if self.transport is not None:
            self.transport.close()


async def connect(target: Target, stats: Stats) -> StreamConnection:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(lambda: StreamConnection(target, stats),
                                            target.host, target.port)
    return proto


async def user(target: Target, stats: Stats, stop_at: float, delay: float = 0.0) -> None:
    """One virtual user: after `delay`, stream after stream on one connection until `stop_at`
    (reconnecting after a failure)."""
    if delay:
        await asyncio.sleep(delay)
    conn: StreamConnection | None = None
    try:
        while _now() < stop_at:
            if conn is None or conn.closed:
                try:
                    conn = await connect(target, stats)
                except OSError as e:
                    stats.error(f"connect: {e}")
                    await asyncio.sleep(0.05)
                    continue
            ok = await conn.run_once()
            if not ok and conn.transport is not None:
                conn.transport.close()
                conn = None
    finally:  # cancelled too: a stream that never ended leaves no connection behind
        if conn is not None and conn.transport is not None:
            conn.transport.close()


async def finish(users: list[asyncio.Task[None]], stats: Stats, timeout: float) -> None:
    """Wait for the users' last streams; a stream not ended `timeout` seconds later is a
    failed stream (a stall, which no other check sees), and its user is cancelled."""
    if not users:
        return
    _, stalled = await asyncio.wait(users, timeout=timeout)
    for task in stalled:
        stats.error(f"a stream still open {timeout:g} s after the window ended")
        task.cancel()
    await asyncio.gather(*stalled, return_exceptions=True)


async def open_many(target: Target, stats: Stats, count: int, batch: int = 250,
                    ) -> list[StreamConnection]:
    """`count` connections, opened `batch` at a time (a burst of SYNs bigger than the accept
    backlog would only be retried a second later)."""
    conns: list[StreamConnection] = []
    for i in range(0, count, batch):
        results = await asyncio.gather(
            *(connect(target, stats) for _ in range(min(batch, count - i))),
            return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                stats.error(f"connect: {r}")
            else:
                conns.append(r)
    return conns
