"""Incremental decoder for the AWS binary event-stream framing
(`application/vnd.amazon.eventstream`, used by Bedrock ConverseStream). provider-streams.md §5.2.

Sans-IO: `feed(bytes) -> list[EventStreamMessage]`, `close()`. Every frame is, big-endian:

    total_length:u32  headers_length:u32  prelude_crc:u32  headers  payload  message_crc:u32

Frames are cut by `total_length`, never by searching. The lengths are trusted only after the
prelude CRC matched, and a length above the cap is refused right there (BufferOverflow), before a
single payload byte is buffered. The message CRC covers everything before it; a frame whose CRC
does not match raises instead of yielding an event, so a flipped byte can never become a wrong
event (the whole frames before it in that read are still the caller's: `intact`). A frame that
spans reads costs one prelude check: its length is remembered (`_need`), so later reads only add
up sizes, and the reads are joined once, when it is whole.

Header blocks repeat verbatim across frames of one event type, and across streams (Bedrock sends
the same three string headers on every delta of every stream), so parsed header blocks are
memoised by their bytes, once per process; the mappings handed out are read-only because they
are shared.
"""

from __future__ import annotations

import functools
import re
import struct
import uuid
import zlib
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import NamedTuple

from streamproxy.errors import BufferOverflow, StreamDecodeError, StreamTruncated

_PRELUDE = struct.Struct(">III")
_PRELUDE_LEN = 12
_MAX_HEADERS_BYTES = 128 * 1024  # AWS's cap on a message's headers


def frame_cap(max_payload_bytes: int) -> int:
    """The frame cap that takes a payload of `max_payload_bytes`: AWS caps a message's headers
    at 128 KiB beside its payload, and the prelude and message CRC take 16 bytes more."""
    return max_payload_bytes + _MAX_HEADERS_BYTES + _PRELUDE_LEN + 4


# AWS caps a message at 16 MiB of payload plus 128 KiB of headers (botocore allows 24 MiB).
DEFAULT_MAX_FRAME_BYTES = frame_cap(16 * 1024 * 1024)
_TAIL = struct.Struct(">II")
_U32 = struct.Struct(">I")
_MIN_FRAME = _PRELUDE_LEN + 4  # no headers, no payload
# The process-wide memo of parsed header blocks: small blocks only, and emptied when full, so
# an upstream sending ever-new headers costs parsing, never memory.
_HEADERS: dict[bytes, Mapping[str, HeaderValue]] = {}
_HEADERS_MAX = 256
_HEADER_BLOCK_MAX = 512
_PRELUDE_CRCS_MAX = 4096  # a FramePattern's memo; totals beyond it are checked each time
# A message CRC, then the next frame's total and prelude CRC (its headers length is a
# FramePattern's: the regex checks it).
_CRC_AND_NEXT_PRELUDE = struct.Struct(">II4xI")

HeaderValue = bool | int | bytes | str | datetime | uuid.UUID


class EventStreamCRCError(StreamDecodeError):
    """A prelude or message CRC-32 did not match: the bytes were damaged in transit."""


class EventStreamMessage(NamedTuple):
    headers: Mapping[str, HeaderValue]  # read-only, may be shared between messages
    payload: bytes


_make = tuple.__new__


class EventStreamDecoder:
    __slots__ = ("_max", "_need", "_parts", "_size", "intact")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self._max = max_frame_bytes
        self._parts: list[bytes] = []  # an unfinished frame: the reads it spans so far
        self._size = 0  # their length
        self._need = 0  # total length of the frame at the head of _parts, once its prelude passed
        # When feed() raises: the whole frames of that read before the damaged one, which the
        # caller still hands on (they are intact; only what follows them is lost).
        self.intact: list[EventStreamMessage] = []

    def feed(self, data: bytes) -> list[EventStreamMessage]:
        if self._parts:  # joined once, when the frame is complete: O(size), not O(size * reads)
            self._parts.append(data)
            self._size += len(data)
            if self._size < (self._need or _PRELUDE_LEN):
                return []
            data = b"".join(self._parts)
            self._parts = []
        have = len(data)
        need = self._need  # the head frame's length, if its prelude was checked in an earlier read
        out: list[EventStreamMessage] = []
        pos = 0
        cache = _HEADERS
        crc32 = zlib.crc32
        prelude_from = _PRELUDE.unpack_from
        u32_from = _U32.unpack_from
        cap = self._max
        try:  # (free in 3.11 until something raises)
            while have - pos >= _PRELUDE_LEN:
                total, headers_len, prelude_crc = prelude_from(data, pos)
                if not need:
                    if crc32(data[pos : pos + 8]) != prelude_crc:
                        raise EventStreamCRCError("event-stream prelude CRC mismatch")
                    if not (_MIN_FRAME <= total <= cap and headers_len <= total - _MIN_FRAME):
                        self._bad_lengths(total, headers_len)
                    need = total
                if have - pos < total:
                    break
                end = pos + total
                # The message CRC continues from the (verified) prelude CRC.
                if crc32(data[pos + 8 : end - 4], prelude_crc) != u32_from(data, end - 4)[0]:
                    raise EventStreamCRCError("event-stream message CRC mismatch")
                start = pos + _PRELUDE_LEN
                block = data[start : start + headers_len]
                headers = cache.get(block)
                if headers is None:
                    headers = _parsed(block)
                out.append(_make(EventStreamMessage,
                                 (headers, data[start + headers_len : end - 4])))
                pos = end
                need = 0
        except StreamDecodeError:
            self.intact = out
            raise
        self._need = need
        if pos < have:
            rest = data[pos:] if pos else data
            self._parts = [rest]
            self._size = len(rest)
        return out

    @property
    def between_frames(self) -> bool:
        """Nothing held: the next byte fed starts a frame."""
        return not self._parts

    def block_of(self, headers: Mapping[str, HeaderValue]) -> bytes | None:
        """The header block's bytes that `headers` (a mapping a decoder handed out) was parsed
        from, if it is memoised."""
        for block, parsed in _HEADERS.items():
            if parsed is headers:
                return block
        return None

    def take_run(self, data: bytes, pos: int, frame: FramePattern) -> tuple[list[bytes], int]:
        """From `pos`, while the decoder holds nothing: the whole frames of `data` that `frame`
        matches one after another, each checked as `feed` checks every frame (its declared
        length, the cap, both CRCs), as their first groups; and where they stop. Whatever
        stops them (another frame, a damaged one, a cut one) is `feed`'s."""
        found: list[bytes] = []
        have = len(data)
        if have - pos < _PRELUDE_LEN:
            return found, pos
        crc32 = zlib.crc32
        checked = frame.prelude_crcs
        tail_from = _CRC_AND_NEXT_PRELUDE.unpack_from
        cap = self._max
        keep = found.append
        last_tail = have - _CRC_AND_NEXT_PRELUDE.size  # the last CRC with a whole prelude after it
        total, _, prelude_crc = _PRELUDE.unpack_from(data, pos)
        next_match = frame.regex.scanner(data, pos).match  # each match starts where the last ended
        while (m := next_match()) is not None:
            end = pos + total
            if end != m.end() or total > cap:
                break
            if checked.get(total) != prelude_crc:
                if crc32(data[pos : pos + 8]) != prelude_crc:
                    break
                if len(checked) < _PRELUDE_CRCS_MAX:
                    checked[total] = prelude_crc
            crc_at = end - 4
            if crc_at <= last_tail:  # this frame's CRC and the next frame's prelude
                message_crc, total, next_crc = tail_from(data, crc_at)
            else:  # no whole prelude after it, so no frame for the pattern either
                message_crc, total, next_crc = _U32.unpack_from(data, crc_at)[0], 0, 0
            if crc32(data[pos + 8 : crc_at], prelude_crc) != message_crc:
                break
            keep(m[1])
            pos = end
            prelude_crc = next_crc
        return found, pos

    def rest_of_frame(self, data: bytes) -> int:
        """How many leading bytes of `data` finish the frame the decoder holds the start of: 0
        when it holds none, all of `data` when they do not finish it. (A prelude still cut is
        read unchecked here: `feed` checks it.)"""
        if not self._parts:
            return 0
        need = self._need
        if not need:
            head = b"".join(self._parts)[:4] + data[:4]
            if len(head) < 4:
                return len(data)
            need = _U32.unpack_from(head)[0]
        return min(max(need - self._size, 0), len(data))

    def frame_end(self, data: bytes, pos: int) -> int:
        """Where the frame at `pos` ends by its declared length, if that is within `data` (it is
        not checked: `feed` does that), else the end of `data`."""
        if len(data) - pos >= _PRELUDE_LEN:
            total = _U32.unpack_from(data, pos)[0]
            if _MIN_FRAME <= total <= len(data) - pos:
                return pos + total
        return len(data)

    def close(self) -> list[EventStreamMessage]:
        """End of stream: bytes left over are a frame cut short."""
        if self._parts:
            held = self._size
            self._parts = []
            self._size = 0
            self._need = 0
            raise StreamTruncated(f"the event stream ended inside a frame ({held} bytes held)")
        return []

    def _bad_lengths(self, total: int, headers_len: int) -> None:
        if total > self._max:
            raise BufferOverflow(f"an event-stream frame declares {total} bytes, "
                                 f"above the {self._max}-byte cap")
        raise StreamDecodeError(f"event-stream frame lengths are inconsistent "
                                f"(total {total}, headers {headers_len})")


class FramePattern(NamedTuple):
    """A whole frame whose header block is `block` and whose payload matches a regex in full
    (its groups are the regex's): one regex walks a run of such frames (`take_run`), cheaper
    than a call per frame to check the block and the payload. The lengths and CRCs it matches
    as any bytes are `take_run`'s to check. A prelude's CRC depends on its two lengths alone,
    and the headers length is the pattern's: `prelude_crcs` keeps those checked, by total."""

    regex: re.Pattern[bytes]
    prelude_crcs: dict[int, int]


@functools.lru_cache(maxsize=16)
def frame_pattern(block: bytes, payload: bytes) -> FramePattern:
    """The FramePattern of `block` and the regex source `payload`, made once."""
    headers_len = _U32.pack(len(block))
    regex = re.compile(rb"(?s)...." + re.escape(headers_len) + rb"...." + re.escape(block)
                       + rb"(?:" + payload + rb")....")
    return FramePattern(regex, {})


def _parsed(block: bytes) -> Mapping[str, HeaderValue]:
    headers = MappingProxyType(parse_headers(block))
    if len(block) <= _HEADER_BLOCK_MAX:
        if len(_HEADERS) >= _HEADERS_MAX:
            _HEADERS.clear()
        _HEADERS[block] = headers
    return headers


def _bytes(block: bytes, i: int, n: int) -> bytes:
    if i + n > len(block):
        raise StreamDecodeError("an event-stream header runs past its block")
    return block[i : i + n]


def _int(block: bytes, i: int, n: int) -> int:
    return int.from_bytes(_bytes(block, i, n), signed=True)


def parse_headers(block: bytes) -> dict[str, HeaderValue]:
    """One header block: repeated `name_len:u8 name type:u8 value` (value types 0 to 9)."""
    headers: dict[str, HeaderValue] = {}
    i, n = 0, len(block)
    try:
        while i < n:
            name_len = block[i]
            if not name_len:
                raise StreamDecodeError("an event-stream header has an empty name")
            name = _bytes(block, i + 1, name_len).decode()
            i += 1 + name_len
            kind = _bytes(block, i, 1)[0]
            i += 1
            value: HeaderValue
            if kind == 7 or kind == 6:  # string / byte array: u16 length + bytes
                size = int.from_bytes(_bytes(block, i, 2))
                raw = _bytes(block, i + 2, size)
                value = raw.decode() if kind == 7 else raw
                i += 2 + size
            elif kind <= 1:  # bool true / false: no value bytes
                value = kind == 0
            elif kind <= 5:  # int8, int16, int32, int64
                size = 1 << (kind - 2)
                value = _int(block, i, size)
                i += size
            elif kind == 8:  # timestamp: int64 milliseconds since the epoch
                value = datetime.fromtimestamp(_int(block, i, 8) / 1000, UTC)
                i += 8
            elif kind == 9:
                value = uuid.UUID(bytes=_bytes(block, i, 16))
                i += 16
            else:
                raise StreamDecodeError(f"unknown event-stream header value type {kind}")
            if name in headers:
                raise StreamDecodeError(f"duplicate event-stream header {name!r}")
            headers[name] = value
    except UnicodeDecodeError:
        raise StreamDecodeError("an event-stream header is not valid UTF-8") from None
    except (OverflowError, ValueError) as e:  # an out-of-range timestamp
        raise StreamDecodeError(f"an event-stream header value is invalid ({e})") from None
    return headers
