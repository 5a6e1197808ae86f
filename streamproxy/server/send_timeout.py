"""`server.send_timeout`: a client that stops taking an answer loses its connection.

A client that stops reading but keeps its socket open would otherwise hold its stream for
ever: backpressure pauses the upstream read while its socket is full (relay.py), time spent
waiting for it is not the upstream's idle time, and there is no total by default — so its
upstream connection and admission slot with it. As nginx's `send_timeout`, the connection is
closed once nothing of its unsent bytes has left for that long; closing it cancels the
request's task, which closes the upstream request (on both fronts, as any disconnect does).

No per-write cost: a `SendWatch` exists only while the transport has paused writing (its
buffer over the high-water mark), made in `pause_writing` and cancelled in `resume_writing`.
Progress is the count of bytes not yet taken changing (the transport's and the socket's send
queue, `_count`): it falls as the client takes bytes, and grows while a writer still adds
some (aiohttp's writer writes on for a while before it waits for the drain), so a slow reader
that takes some now and then is never cut.
"""

from __future__ import annotations

import asyncio
import fcntl
import struct
import termios
from collections.abc import Callable

CLIENT_SEND_TIMEOUT = "client_send_timeout"  # the access log's error_code for such a request
STEPS = 4  # checks per timeout: a stall is cut between 1 and 1.25 timeouts after its start


class SendWatch:
    """While `transport`'s writing is paused: `on_stall()` once its unsent bytes have not
    changed for `seconds`."""

    __slots__ = ("_fd", "_handle", "_on_stall", "_seconds", "_since", "_transport", "_unsent")

    def __init__(self, transport: asyncio.WriteTransport, seconds: float,
                 on_stall: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        self._transport = transport
        self._seconds = seconds
        self._on_stall = on_stall
        sock = transport.get_extra_info("socket")
        self._fd = sock.fileno() if sock is not None and _OUTQ is not None else -1
        self._unsent = self._count()
        self._since = loop.time()
        self._handle = loop.call_later(seconds / STEPS, self._check)

    def cancel(self) -> None:
        self._handle.cancel()

    def _check(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        unsent = self._count()
        if unsent != self._unsent:
            self._unsent, self._since = unsent, now
        elif now - self._since >= self._seconds:
            self._on_stall()
            return
        self._handle = loop.call_later(self._seconds / STEPS, self._check)

    def _count(self) -> int:
        """The bytes not yet taken: the transport's, and the socket's send queue (a kernel
        buffer of megabytes lets the transport's move only in large steps, seconds apart for a
        slow reader; the queue shrinks with every acknowledgement)."""
        unsent = self._transport.get_write_buffer_size()
        if self._fd >= 0:
            try:
                unsent += struct.unpack("i", fcntl.ioctl(self._fd, _OUTQ, b"\0" * 4))[0]
            except OSError:  # (closed, or not a TCP socket): the transport's count alone
                self._fd = -1
        return unsent


# Linux's SIOCOUTQ (unsent and unacknowledged bytes of a TCP socket) is TIOCOUTQ.
_OUTQ: int | None = getattr(termios, "TIOCOUTQ", None)
