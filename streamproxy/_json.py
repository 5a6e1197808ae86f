"""orjson everywhere: bytes in, bytes out, one place to change the codec."""

from __future__ import annotations

import re
from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError

# An escaped backslash, a surrogate pair, or a UTF-16 half alone (case-insensitive hex): matched
# left to right, so a `\\` pair is never read as the start of an escape.
_ESCAPES = re.compile(rb"\\\\|\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
                      rb"|\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


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
