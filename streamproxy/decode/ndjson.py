"""Incremental newline-delimited JSON framing (Ollama's `application/x-ndjson`).

Sans-IO: `feed(bytes) -> list[bytes]` returns the complete lines, `close() -> list[bytes]` the
last one if the stream did not end with a newline. Lines are split on `\\n` only (a lone `\\r`
is not a separator; one trailing `\\r` is dropped, so CRLF framing works), blank lines are
skipped, and the JSON itself is left to the caller.

The carried partial line never contains a newline, so each read is searched once and bytes are
never rescanned; it grows in a bytearray (amortised appends, no quadratic copying when one long
line arrives in many small reads).

The cap (`max_line_bytes`) is on a line's bytes before its newline, and holds however the reads
split: a longer line is a BufferOverflow whether it ends in the read that brings it over or
later, as soon as that is known, and no more than the cap is held meanwhile. Only a read longer
than the cap has its whole lines measured, so a read costs one length compare more.
"""

from __future__ import annotations

from streamproxy.errors import BufferOverflow

DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024  # a line may carry base64 images


class NDJSONDecoder:
    __slots__ = ("_max", "_partial")

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        self._max = max_line_bytes
        self._partial = bytearray()  # the unterminated last line; never contains b"\n"

    def feed(self, data: bytes) -> list[bytes]:
        nl = data.find(b"\n")
        if nl < 0:
            self._partial += data
            self._check()
            return []
        if self._partial:
            self._partial += data[:nl]
            self._check()  # the line it ends
            first = bytes(self._partial)
        else:
            first = data[:nl]
        rest = data[nl + 1 :].split(b"\n")
        self._partial = bytearray(rest.pop())
        self._check()
        if len(data) > self._max:  # only a read longer than the cap can hold a whole line over it
            for line in (first, *rest):
                if len(line) > self._max:
                    self._overflow()
        lines = []
        for line in (first, *rest):
            if line[-1:] == b"\r":
                line = line[:-1]
            if line:
                lines.append(line)
        return lines

    def close(self) -> list[bytes]:
        """End of stream: an unterminated last line is returned as it is (the caller decides
        whether it parses)."""
        line, self._partial = bytes(self._partial), bytearray()
        if line[-1:] == b"\r":
            line = line[:-1]
        return [line] if line else []

    def _check(self) -> None:
        if len(self._partial) > self._max:
            self._overflow()

    def _overflow(self) -> None:
        raise BufferOverflow(f"an NDJSON line exceeded {self._max} bytes")
