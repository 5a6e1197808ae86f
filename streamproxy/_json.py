"""orjson everywhere: bytes in, bytes out, one place to change the codec."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError

# An escaped backslash, a surrogate pair, or a UTF-16 half alone (case-insensitive hex): matched
# left to right, so a `\\` pair is never read as the start of an escape.
_ESCAPES = re.compile(rb"\\\\|\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
                      rb"|\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
# A number orjson may not read as written: 17 digits (and dots) in a run, an integer past 64
# bits (123456789012345678901 → 1.2345678901234568e+20) or a fraction longer than a double
# holds (0.12345678901234567 → 0.12345678901234566); 16 of them before an exponent
# (9007199254740993e0 → 9007199254740992.0); or a three-digit exponent (1e400, which orjson
# refuses; 1e-400, which it reads as 0.0). (One leading \d, then a branch: as fast as one.)
_INEXACT = re.compile(rb"\d(?:[\d.]{15}[\d.eE]|[eE][+-]?\d{3})")
# What the stdlib's parser and dumps_exact raise on a value orjson takes but they cannot hold:
# nesting past Python's recursion (orjson reads 1024 levels). The orjson path stands then.
_UNREADABLE = (ValueError, RecursionError)
# An exponent past a double's (1e400): valid JSON (RFC 8259 leaves the range to the parser),
# which orjson refuses as an infinity.
_HUGE_EXPONENT = re.compile(rb"\d[eE]\+?\d{3}")


class _Written(str):
    """A number other than an integer, kept as the upstream wrote it (dumps_exact writes it
    bare): a double may not hold it."""

    __slots__ = ()


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


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads_refused(data: bytes) -> Any:
    """JSON orjson refused, parsed again: its lone surrogate escapes read as U+FFFD, and, when
    a number's exponent is past a double's (a tool argument of 1e400), by the stdlib, which
    reads it as inf (loads_exact keeps its text where values are passed on). JSONDecodeError
    if that was not why. (Call it in the `except`, off the fast path.)"""
    repaired = without_lone_surrogates(data)
    try:
        return orjson.loads(repaired)
    except orjson.JSONDecodeError as refused:
        if _HUGE_EXPONENT.search(repaired) is None:
            raise
        try:
            return json.loads(repaired, parse_constant=_not_json)
        except (ValueError, RecursionError):
            raise refused from None


def loads_lenient(data: bytes) -> Any:
    """orjson.loads, and `loads_refused` when it refuses: for a provider's answers (each
    parsed once, not per streamed chunk), which a Node server may cut inside an emoji."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return loads_refused(data)


def loads_exact(data: bytes) -> Any:
    """`data` parsed with every number as written, when it holds one orjson may not read so
    (see _INEXACT); None when it holds none, or does not parse. For the values passed on as
    written (a whole answer's tool arguments, which the stream's fragments carry exactly):
    the stdlib's parser keeps integers exact, and the other numbers are kept as text. Only
    for `dumps_exact`; once an answer, and only where it matters."""
    if _INEXACT.search(data) is None:
        return None
    try:
        # (NaN and Infinity are no JSON: the stdlib's reading of them is no reason to take them)
        return json.loads(without_lone_surrogates(data), parse_float=_Written,
                          parse_constant=_not_json)
    except _UNREADABLE:
        return None


def exact_values(data: bytes, pick: Callable[[Any], Iterable[Any]]) -> list[Any] | None:
    """The values `pick` finds in `data` as `loads_exact` reads it (numbers as written, for
    `dumps_exact`), when `data` holds a number orjson may not read so; None when it holds
    none, or is not the shape `pick` expects (the caller's own parse stands then)."""
    doc = loads_exact(data)
    if doc is None:
        return None
    try:
        return list(pick(doc))
    except (KeyError, IndexError, TypeError, AttributeError, RecursionError):
        return None


def dumps_exact(obj: Any, separators: tuple[str, str] = (",", ":")) -> str:
    """JSON of a `loads_exact` value (its numbers as they were), compact as orjson's.
    RecursionError past a few hundred levels: the caller's orjson path stands then."""
    if isinstance(obj, _Written):
        return str.__str__(obj)
    if isinstance(obj, dict):
        comma, colon = separators
        return "{" + comma.join(json.dumps(k, ensure_ascii=False) + colon
                                + dumps_exact(v, separators) for k, v in obj.items()) + "}"
    if isinstance(obj, list):
        return "[" + separators[0].join(dumps_exact(v, separators) for v in obj) + "]"
    return json.dumps(obj, ensure_ascii=False)


def loads_fragments(text: str) -> Any:
    """`text` parsed for orjson.dumps to write again with its numbers as written, when it
    holds one orjson may not read so (see _INEXACT): those as orjson.Fragment; else None.
    For a replayed tool call's arguments, which the provider's request holds as an object."""
    doc = loads_exact(text.encode())
    try:
        return None if doc is None else _fragments(doc)
    except RecursionError:  # (past a few hundred levels, as dumps_exact)
        return None


def _fragments(obj: Any) -> Any:
    if isinstance(obj, _Written):
        return orjson.Fragment(str.__str__(obj))
    if isinstance(obj, dict):
        return {k: _fragments(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_fragments(v) for v in obj]
    if type(obj) is int and not -(1 << 63) <= obj < 1 << 64:  # (orjson's range)
        return orjson.Fragment(str(obj))
    return obj
