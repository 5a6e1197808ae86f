"""The client side of a committed stream on the aiohttp front (the lean front has its own, in
server/front.py): a prepared aiohttp response, written two ways.

`write()` is aiohttp's own coroutine: the response head leaves with the first frame (see
`SSEResponse`) and `write_eof()` ends the chunked body. `write_now()` writes straight to the
transport, with the chunk framing the response declared, from a synchronous callback: a piped
relay (relay.py) has no coroutine to await aiohttp's write in, and skipping it saves ~1 µs a
read besides. Both go to the same transport, in call order.
"""

from __future__ import annotations

import asyncio

from aiohttp import hdrs, web


def chunk(data: bytes) -> bytes:
    """`data` as one HTTP/1.1 chunk (b"" for none: an empty chunk would end the body)."""
    return b"%x\r\n%b\r\n" % (len(data), data) if data else b""


class SSEWriter:
    __slots__ = ("_chunked", "_protocol", "_response", "_transport", "_writer", "direct")

    def __init__(self, request: web.BaseRequest, response: web.StreamResponse) -> None:
        self._response = response
        self._transport = request.transport
        self._protocol = request.protocol
        self._writer = request.writer
        # Read after prepare(): aiohttp chose the framing (chunked for HTTP/1.1, raw for 1.0).
        self._chunked = response.headers.get(hdrs.TRANSFER_ENCODING, "").lower() == "chunked"
        # write_now() reproduces chunked or raw framing, not a compressed body.
        self.direct = self._transport is not None and not response.compression

    async def write(self, data: bytes) -> None:
        try:
            await self._response.write(data)
        except asyncio.CancelledError:
            self._forget_cancelled_drain()
            raise

    def write_now(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        transport.write(chunk(data) if self._chunked else data)

    def end_with(self, data: bytes) -> None:
        if data:
            self.write_now(data)  # aiohttp's write_eof() sends the body's end

    @property
    def full(self) -> bool:
        """The client's socket buffer is over its high-water mark (reads should pause)."""
        return self._protocol.writing_paused

    async def drain(self) -> None:
        """Wait until the client's socket buffer is back under its low-water mark."""
        try:
            await self._writer.drain()
        except asyncio.CancelledError:
            self._forget_cancelled_drain()
            raise

    def _forget_cancelled_drain(self) -> None:
        """A deadline's expiry cancelled the wait for a full client. aiohttp keeps the
        cancelled waiter (`_drain_waiter`, private) and would raise it at the next drain —
        the stream's end — as if the client had gone: the next drain waits afresh."""
        waiter = self._protocol._drain_waiter
        if waiter is not None and waiter.cancelled():
            self._protocol._drain_waiter = None

    async def finish(self, data: bytes) -> None:
        await self._response.write(data)
        await self._response.write_eof()

    async def write_eof(self) -> None:
        await self._response.write_eof()
