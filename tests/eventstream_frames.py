"""A small AWS event-stream frame *encoder*, for building test streams (tests only)."""

from __future__ import annotations

import struct
import uuid
import zlib
from datetime import datetime
from typing import Any

import orjson


def encode_header(name: str, kind: int, value: Any = None) -> bytes:
    raw_name = name.encode()
    out = bytes([len(raw_name)]) + raw_name + bytes([kind])
    if kind <= 1:
        return out
    if kind <= 5:
        return out + int(value).to_bytes(1 << (kind - 2), "big", signed=True)
    if kind in (6, 7):
        raw = value.encode() if isinstance(value, str) else value
        return out + struct.pack(">H", len(raw)) + raw
    if kind == 8:
        ms = int(value.timestamp() * 1000) if isinstance(value, datetime) else int(value)
        return out + ms.to_bytes(8, "big", signed=True)
    if kind == 9:
        return out + (value.bytes if isinstance(value, uuid.UUID) else value)
    raise ValueError(kind)


def encode_frame(headers: dict[str, str] | bytes, payload: bytes) -> bytes:
    """One frame with valid CRCs. `headers` is string headers, or a raw header block."""
    if isinstance(headers, dict):
        block = b"".join(encode_header(k, 7, v) for k, v in headers.items())
    else:
        block = headers
    total = 12 + len(block) + len(payload) + 4
    prelude = struct.pack(">II", total, len(block))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + block + payload
    return body + struct.pack(">I", zlib.crc32(body))


def event(event_type: str, payload: dict[str, Any]) -> bytes:
    headers = {":event-type": event_type, ":content-type": "application/json",
               ":message-type": "event"}
    return encode_frame(headers, orjson.dumps(payload))


def exception(exception_type: str, message: str) -> bytes:
    headers = {":exception-type": exception_type, ":content-type": "application/json",
               ":message-type": "exception"}
    return encode_frame(headers, orjson.dumps({"message": message}))


def split_frames(data: bytes) -> list[bytes]:
    """A recorded stream → its frames, cut by their length fields."""
    frames, i = [], 0
    while i < len(data):
        total = int.from_bytes(data[i : i + 4], "big")
        frames.append(data[i : i + total])
        i += total
    return frames
