"""orjson everywhere: bytes in, bytes out, one place to change the codec."""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError

# An escaped backslash, a surrogate pair, or a UTF-16 half alone (case-insensitive hex): matched
# left to right, so a `\\` pair is never read as the start of an escape.
_ESCAPES = re.compile(rb"\\\\|\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
                      rb"|\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
# A run of 19 digits: an integer that may be past 64 bits, which orjson reads as a float
# (123456789012345678901 → 1.2345678901234568e+20).
_LONG_DIGITS = re.compile(rb"\d{19}")


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


def dumps_str(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def without_lone_surrogates(data: bytes) -> bytes:
    """`data` with each `\\ud83d` escape that has no other half rewritten as `\\ufffd`. Such an
    escape is valid JSON (RFC 8259 §8.2): JSON.stringify and json.dumps write one for a string
    cut inside an emoji (a JavaScript client's text, a Node server's stream), and OpenAI and
    the SDKs' parsers accept it; orjson refuses it, and no str holding one could be encoded
    again. U+FFFD is what a UTF-16 decoder reads it as. Only for JSON orjson refused: the
    regex and its callback cost what the parse did."""
    return _ESCAPES.sub(lambda m: rb"\ufffd" if len(m[0]) == 6 else m[0], data)


def loads_repaired(data: bytes) -> Any:
    """JSON orjson refused, parsed again with its lone surrogate escapes read as U+FFFD;
    JSONDecodeError if that was not why. (Call it in the `except`, off the fast path.)"""
    return orjson.loads(without_lone_surrogates(data))


def loads_lenient(data: bytes) -> Any:
    """orjson.loads, and `loads_repaired` when it refuses: for a provider's answers (each
    parsed once, not per streamed chunk), which a Node server may cut inside an emoji."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return loads_repaired(data)


def loads_exact(data: bytes) -> Any:
    """`data` parsed with every integer as written, when it holds one orjson may not read so
    (a long digit run); None when it holds none, or does not parse. For the values passed on
    as written (a whole answer's tool arguments, which the stream's fragments carry exactly):
    the stdlib's parser keeps integers exact. Once an answer, and only where it matters."""
    if _LONG_DIGITS.search(data) is None:
        return None
    try:
        return json.loads(without_lone_surrogates(data))
    except ValueError:
        return None


def dumps_exact(obj: Any) -> str:
    """JSON of a `loads_exact` value (its big integers as they were), compact as orjson's."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
