"""Incremental Server-Sent Events decoder (WHATWG HTML §9.2.6 "Interpreting an event stream").

Sans-IO: `feed(bytes) -> list[SSEEvent]`, `close() -> list[SSEEvent]`. Lines are split on bytes,
never with str.splitlines() (which also splits on U+2028). `data` stays bytes: JSON parsers take
bytes, so UTF-8 is decoded once, by the JSON parser, and a character split across reads is
never seen half-decoded.

Line endings: CRLF, LF and a lone CR all end a line. A read is normalised to LF with two
C-level replaces; a CR that ends a read is remembered, so an LF that starts the next read is
recognised as the second half of that CRLF rather than as a blank line. CRLF-framed `data:`
events (Gemini's whole stream) skip the copy: a read is cut at `\r\n\r\n` and each block that
holds no other CR or LF is an event as it stands; only what follows the first other block is
normalised.

Speed: after normalisation an event is the block of lines between two blank lines, so a read
is cut at `\n\n` in C (`bytes.split`) and each block handled whole. The two shapes providers
actually send — `data: …` alone and `event: …` + `data: …` — are recognised by partitioning a
block at its first LF and each line at its first `": "` (a line without one is all name: for
`data` and `event` the empty value the spec gives it); any other block (comments, `id:`,
multi-line data, no space after the colon) takes the line-by-line path, which applies every
rule. A read that is one whole event of those shapes, as a provider that flushes each event
sends it, is recognised the same way before the split. An incomplete block is kept as a list of
reads and joined once, when its end arrives, so a large event costs O(size), not O(size * reads).

The cap (`max_event_bytes`) is on an event's bytes up to the blank line that ends it, each line
end counted as one byte, and holds however the reads split: an event over it is refused
(BufferOverflow) whether it ends in the read that brings it over or later, as soon as that is
known, and nothing over it is held meanwhile. Only a read longer than the cap has its whole
events measured, so a read costs one length compare more.

One departure from the spec: a block with an `error` field (`error: {…}`, not an SSE field, the
line llama.cpp's server writes a failure in before its `data: [DONE]`) is an event whose data is
`{"error": <the value>}`, the shape OpenAI-compatible servers send an error in. Ignored, as the
spec ignores unknown fields, the stream ended as if the answer were complete. Such blocks take
the line-by-line path: the common shapes cost nothing more.

Byte tests are written `0x0A in chunk`, not `b"\n" in chunk`: CPython 3.11 first tries a bytes
operand as an integer, raising and clearing a TypeError (~0.2 µs a test).
"""

from __future__ import annotations

from typing import NamedTuple

import orjson

from streamproxy.errors import BufferOverflow

_BOM = b"\xef\xbb\xbf"
DEFAULT_MAX_EVENT_BYTES = 16 * 1024 * 1024  # a Gemini inlineData image can be megabytes


class SSEEvent(NamedTuple):
    data: bytes
    event: bytes = b""  # the `event:` field, b"" when absent (the spec's "message")
    id: bytes = b""  # the last event id, which persists across events per the spec


# SSEEvent(...) runs the namedtuple's generated __new__; this skips that frame (per event).
_make_event = tuple.__new__


class SSEDecoder:
    __slots__ = ("_last_id", "_max", "_parts", "_pending_cr", "_size", "_start")

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._max = max_event_bytes
        self._parts: list[bytes] = []  # the incomplete block (LF-normalised reads)
        self._size = 0  # its length
        self._pending_cr = False  # the previous read ended with CR
        self._start: bytes | None = b""  # bytes held until the BOM check is decided; None after
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
        if not self._parts and chunk[-1] == 0x0A and 0x0D not in chunk and len(chunk) <= self._max:
            # Perhaps one whole event, within the cap (a longer read is checked below). (The LF
            # test spares a read cut mid-event, such as a large read of many events, the
            # partitions' copies.) The shape test is `_blocks`'s, written out in both: as one
            # shared function it cost +3 % per one-event read and +15 % per bulk read (callgrind).
            line, _, after = chunk.partition(b"\n")
            name, _, value = line.partition(b": ")
            if name == b"event":
                event = value
                line, _, after = after.partition(b"\n")
                name, _, value = line.partition(b": ")
            else:
                event = b""
            if after == b"\n" and name == b"data":  # the blank line, and nothing after it
                return [_make_event(SSEEvent, (value, event, self._last_id))]
        events: list[SSEEvent] = []
        if 0x0D in chunk:
            if self._parts:  # finish the pending block alone, so that the rest takes the fast path
                end = chunk.find(b"\r\n\r\n") + 4
                if 4 <= end < len(chunk):
                    events = self.feed(chunk[:end])
                    events += self.feed(chunk[end:])
                    return events
            elif len(chunk) <= self._max:  # (each block is under the cap)
                chunk = self._crlf_data_events(chunk, events)
                if not chunk:
                    return events
            if 0x0D in chunk:
                self._pending_cr = chunk[-1] == 0x0D
                chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if self._parts:
            chunk = self._complete(chunk, events)
            if chunk is None:
                return events
        blocks = chunk.split(b"\n\n")
        rest = blocks.pop()
        if len(chunk) > self._max:  # only a read longer than the cap can hold a whole event over it
            for block in blocks:
                if len(block) >= self._max:  # (its size counts its last line's end)
                    self._overflow()
        self._blocks(blocks, events)
        if rest:
            if len(rest) > self._max:
                self._overflow()
            self._parts.append(rest)
            self._size = len(rest)
        return events

    @property
    def between_events(self) -> bool:
        """Nothing held: the next byte fed starts an event (and the BOM check is behind)."""
        return not self._parts and not self._pending_cr and self._start is None

    def _crlf_data_events(self, chunk: bytes, events: list[SSEEvent]) -> bytes:
        """CRLF framing without normalising (Gemini): the leading `data: …` blocks that hold no
        other CR or LF are events as they stand. Returns the rest of the read, from the first
        block that is anything else (or the unfinished last one), for the general path."""
        blocks = chunk.split(b"\r\n\r\n")
        last = len(blocks) - 1
        i = 0
        while i < last:
            block = blocks[i]
            if block[:6] != b"data: " or 0x0D in block or 0x0A in block:
                return b"\r\n\r\n".join(blocks[i:])
            events.append(_make_event(SSEEvent, (block[6:], b"", self._last_id)))
            i += 1
        return blocks[last]

    def close(self) -> list[SSEEvent]:
        """End of stream. The spec discards an event that was not ended by a blank line; we end
        it instead (as openai-python's decoder does), so `data: [DONE]` without a trailing blank
        line still counts. A cut inside a JSON payload then fails in the JSON parser."""
        events: list[SSEEvent] = []
        if self._start:  # a stream of fewer than three bytes
            start, self._start = self._start, None
            events.extend(self.feed(start))
        if self._parts:
            self._lines(b"".join(self._parts), events)
            self._parts = []
            self._size = 0
        return events

    def _strip_bom(self, chunk: bytes) -> bytes:
        head = self._start + chunk  # type: ignore[operator]
        if len(head) < 3 and _BOM.startswith(head):
            self._start = head  # could still be a BOM: wait for more bytes
            return b""
        self._start = None
        return head[3:] if head.startswith(_BOM) else head

    def _complete(self, chunk: bytes, events: list[SSEEvent]) -> bytes | None:
        """Continue the incomplete block with `chunk`: dispatch it if it ends here and return
        what follows; None if it goes on (then `chunk` is kept)."""
        parts = self._parts
        if chunk[0] == 0x0A and parts[-1][-1] == 0x0A:  # the blank line starts this read
            self._parts, self._size = [], 0
            self._blocks([b"".join(parts)[:-1]], events)
            return chunk[1:]
        end = chunk.find(b"\n\n")
        if end < 0:
            self._size += len(chunk)
            if self._size > self._max:
                self._overflow()
            parts.append(chunk)
            return None
        if self._size + end >= self._max:  # the event ends in this read, but over the cap
            self._overflow()
        parts.append(chunk[:end])
        self._parts, self._size = [], 0
        self._blocks([b"".join(parts)], events)
        return chunk[end + 2 :]

    def _overflow(self) -> None:
        raise BufferOverflow(f"an SSE event exceeded {self._max} bytes")

    def _blocks(self, blocks: list[bytes], events: list[SSEEvent]) -> None:
        """Complete event blocks: the two common shapes here, any other line by line. (One
        call per read; the loop runs once per event.)"""
        last_id = self._last_id
        for block in blocks:
            line, _, after = block.partition(b"\n")
            name, _, value = line.partition(b": ")
            if name == b"event":
                event = value
                line, _, after = after.partition(b"\n")
                name, _, value = line.partition(b": ")
            else:
                event = b""
            if not after and name == b"data":
                events.append(_make_event(SSEEvent, (value, event, last_id)))
                continue
            self._lines(block, events)
            last_id = self._last_id

    def _lines(self, block: bytes, events: list[SSEEvent]) -> None:
        """Every WHATWG field rule. A block holds no blank line, except leading or trailing
        ones, which dispatch nothing here (nothing was buffered before them)."""
        data: list[bytes] = []
        event = b""
        error: bytes | None = None
        for line in block.split(b"\n"):
            if not line or line[0] == 0x3A:  # blank, or ':' comment (keep-alives)
                continue
            colon = line.find(b":")
            if colon < 0:
                name, value = line, b""
            else:
                name = line[:colon]
                value = line[colon + 1 :]
                if value[:1] == b" ":
                    value = value[1:]
            if name == b"data":
                data.append(value)
            elif name == b"event":
                event = value
            elif name == b"id" and b"\x00" not in value:
                self._last_id = value
            elif name == b"error":  # (see the module's docstring)
                error = value
            # `retry` and unknown fields are ignored: we never reconnect to an upstream.
        if error is not None:
            events.append(SSEEvent(_error_data(error), event, self._last_id))
        elif data:
            events.append(SSEEvent(data[0] if len(data) == 1 else b"\n".join(data), event,
                                   self._last_id))


def _error_data(value: bytes) -> bytes:
    """An `error` field's value as an error event's data: `{"error": <value>}`, a value that is
    no JSON object as a string (a malformed object fails the JSON parse, an error too)."""
    if value[:1] != b"{":
        value = orjson.dumps(value.decode("utf-8", "replace"))
    return b'{"error":' + value + b"}"
