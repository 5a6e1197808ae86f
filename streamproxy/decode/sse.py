"""Incremental Server-Sent Events decoder (WHATWG HTML §9.2.6 "Interpreting an event stream").

Sans-IO: `feed(bytes) -> list[SSEEvent]`, `close() -> list[SSEEvent]`. Lines are split on bytes,
never with str.splitlines() (which also splits on U+2028). `data` stays bytes: JSON parsers take
bytes, so UTF-8 is decoded once, by the JSON parser, and a character split across reads is
never seen half-decoded.

Line endings: CRLF, LF and a lone CR all end a line. Each read is normalised to LF with two
C-level replaces; a CR that ends a read is remembered, so an LF that starts the next read is
recognised as the second half of that CRLF rather than as a blank line.
"""

from __future__ import annotations

from typing import NamedTuple

from streamproxy.errors import BufferOverflow

_BOM = b"\xef\xbb\xbf"
DEFAULT_MAX_EVENT_BYTES = 16 * 1024 * 1024  # a Gemini inlineData image can be megabytes


class SSEEvent(NamedTuple):
    data: bytes
    event: bytes = b""  # the `event:` field, b"" when absent (the spec's "message")
    id: bytes = b""  # the last event id, which persists across events per the spec


class SSEDecoder:
    __slots__ = ("_data", "_event", "_last_id", "_max", "_partial", "_pending_cr", "_size",
                 "_start")

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._max = max_event_bytes
        self._partial = b""  # an incomplete line carried to the next read
        self._pending_cr = False  # the previous read ended with CR
        self._start: bytes | None = b""  # bytes held until the BOM check is decided; None after
        self._data: list[bytes] = []
        self._size = 0
        self._event = b""
        self._last_id = b""

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if self._start is not None:
            chunk = self._strip_bom(chunk)
        if not chunk:
            return []
        if self._pending_cr:
            self._pending_cr = False
            if chunk[0] == 0x0A:  # LF completing a CRLF split across two reads
                chunk = chunk[1:]
                if not chunk:
                    return []
        if b"\r" in chunk:
            self._pending_cr = chunk[-1] == 0x0D
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if self._partial:
            chunk = self._partial + chunk
        lines = chunk.split(b"\n")
        partial = lines.pop()
        events: list[SSEEvent] = []
        for line in lines:
            self._line(line, events)
        self._partial = partial
        if len(partial) + self._size > self._max:
            raise BufferOverflow(f"an SSE event exceeded {self._max} bytes before it ended")
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream. The spec discards an event that was not ended by a blank line; we end
        it instead (as openai-python's decoder does), so `data: [DONE]` without a trailing blank
        line still counts. A cut inside a JSON payload then fails in the JSON parser."""
        events: list[SSEEvent] = []
        if self._start:  # a stream of fewer than three bytes
            start, self._start = self._start, None
            events.extend(self.feed(start))
        if self._partial:
            self._line(self._partial, events)
            self._partial = b""
        self._line(b"", events)
        return events

    def _strip_bom(self, chunk: bytes) -> bytes:
        head = self._start + chunk  # type: ignore[operator]
        if len(head) < 3 and _BOM.startswith(head):
            self._start = head  # could still be a BOM: wait for more bytes
            return b""
        self._start = None
        return head[3:] if head.startswith(_BOM) else head

    def _line(self, line: bytes, events: list[SSEEvent]) -> None:
        if not line:  # blank line: dispatch
            if self._data:
                data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
                events.append(SSEEvent(data, self._event, self._last_id))
                self._data = []
                self._size = 0
            self._event = b""
            return
        if line[0] == 0x3A:  # ':' comment, e.g. keep-alives
            return
        colon = line.find(b":")
        if colon < 0:
            name, value = line, b""
        else:
            name = line[:colon]
            value = line[colon + 1 :]
            if value[:1] == b" ":
                value = value[1:]
        if name == b"data":
            self._data.append(value)
            self._size += len(value) + 1
        elif name == b"event":
            self._event = value
        elif name == b"id" and b"\x00" not in value:
            self._last_id = value
        # `retry` and unknown fields are ignored: we never reconnect to an upstream mid-answer.
