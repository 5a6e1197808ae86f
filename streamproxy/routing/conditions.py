"""Conditional routing queries (Portkey's `strategy.conditions[].query`), evaluated purely.

A query is an object of `field: matcher` pairs (all must hold) plus `$and` / `$or` arrays.
Fields are `metadata.<key>` (from `x-portkey-metadata`), `params.<key>` (the request body,
dotted for nesting) or `url.pathname` (the request's path). A matcher is a literal (equality)
or an object of operators: `$eq $ne $gt $gte $lt $lte $in $nin $regex $length`.

As in Portkey's conditionalRouter.ts, `$gt $gte $lt $lte` compare both sides as JavaScript's
`parseFloat` reads them, so metadata's strings compare as numbers (`"3"` ≥ 2) and a value
that is not a number never matches; `$length` applies a number (equality) or an operator
object to the length of an array (anything else never matches). Equality (`$eq $ne $in $nin`,
a literal) is JavaScript's strict one for booleans: `true` is not `1`, nor `false` `0`.
`$regex` reads a number or a boolean as JavaScript's `RegExp.test` does, as its text (`3`,
`1024`, `true`); an array, an object, null or an absent field never matches.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from decimal import Decimal
from functools import lru_cache
from typing import Any

from streamproxy.errors import InvalidRequest

OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$regex", "$length")
URL_FIELDS = ("url.pathname",)
_ORDERING: dict[str, Callable[[float, float], bool]] = {
    "$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt, "$lte": operator.le}
# What parseFloat reads: leading whitespace, then the longest prefix that is a decimal number.
_FLOAT_PREFIX = re.compile(r"\s*([+-]?(?:Infinity|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?))")
_MISSING = object()
# How deep `$and` / `$or` may nest: far beyond what a routing rule needs, and far within
# Python's stack (330 levels, a 4 kB header, ran matching out of it: a 500).
MAX_QUERY_DEPTH = 32


def _bad(path: str, reason: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid config: '{path}' {reason}.", param=path,
                          code="invalid_config")


def validate_query(query: Any, path: str, depth: int = 0) -> None:
    if not isinstance(query, dict):
        raise _bad(path, "must be an object")
    for key, value in query.items():
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise _bad(f"{path}.{key}", "must be a non-empty array of queries")
            if depth >= MAX_QUERY_DEPTH:
                raise _bad(f"{path}.{key}", f"is nested deeper than {MAX_QUERY_DEPTH} levels "
                                            "of $and / $or")
            for i, sub in enumerate(value):
                validate_query(sub, f"{path}.{key}[{i}]", depth + 1)
        elif key.startswith("$"):
            raise _bad(f"{path}.{key}", "is not a logical operator ($and, $or)")
        elif not key.startswith(("metadata.", "params.")) and key not in URL_FIELDS:
            raise _bad(f"{path}.{key}", "must start with metadata. or params., or be "
                                        "url.pathname")
        elif isinstance(value, dict) and any(k.startswith("$") for k in value):
            _validate_operators(value, f"{path}.{key}")


def _validate_operators(matcher: dict[str, Any], path: str) -> None:
    for op, arg in matcher.items():
        if op not in OPERATORS:
            raise _bad(f"{path}.{op}", f"is not an operator ({', '.join(OPERATORS)})")
        if op in ("$in", "$nin") and not isinstance(arg, list):
            raise _bad(f"{path}.{op}", "must be an array")
        if op == "$regex":
            try:
                _regex(arg)
            except (re.error, TypeError):
                raise _bad(f"{path}.{op}", "must be a valid regex") from None
        if op == "$length":
            if isinstance(arg, dict):
                _validate_operators(arg, f"{path}.{op}")
            elif isinstance(arg, bool) or not isinstance(arg, int | float):
                raise _bad(f"{path}.{op}", "must be a number or an object of operators")


@lru_cache(maxsize=256)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _parse_float(value: Any) -> float:
    """JavaScript's `parseFloat(value)` for the JSON values a query meets: NaN when no number."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = _FLOAT_PREFIX.match(value) if isinstance(value, str) else None
    return float(match.group(1).replace("Infinity", "inf")) if match else math.nan


def _js_text(value: Any) -> str | None:
    """A scalar as JavaScript's `String(value)` writes it (the text `RegExp.test` reads): 1.0
    is "1", True "true", 1e-05 "0.00001", 1e-07 "1e-7"; None for what is no scalar (its
    text would be "[object Object]" or "null")."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):  # (the shortest digits, as both write them; where they differ
        # is when to use an exponent: JavaScript's from 1e21 and below 1e-6, and its form)
        if value.is_integer() and abs(value) < 1e21:
            return str(int(value))
        text = repr(value)
        if "e" in text and -6 <= int(text.partition("e")[2]) < 21:
            return format(Decimal(text), "f")
        return re.sub(r"e([+-])0*", r"e\1", text)
    return None


def _lookup(field: str, metadata: dict[str, Any], params: dict[str, Any], path: str) -> Any:
    root, _, rest = field.partition(".")
    value: Any = {"metadata": metadata, "params": params, "url": {"pathname": path}}[root]
    for part in rest.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _equal(value: Any, arg: Any) -> bool:
    """Python's `==`, except that a boolean equals only a boolean (in Python `True == 1`)."""
    if isinstance(value, bool) or isinstance(arg, bool):
        return value is arg
    return bool(value == arg)


def _compare(op: str, value: Any, arg: Any) -> bool:
    if op == "$eq":
        return _equal(value, arg)
    if op == "$ne":
        return not _equal(value, arg)
    if op == "$in":
        return any(_equal(value, a) for a in arg)
    if op == "$nin":
        return not any(_equal(value, a) for a in arg)
    if op == "$regex":
        text = _js_text(value)
        return text is not None and _regex(arg).search(text) is not None
    if op == "$length":
        if not isinstance(value, list):
            return False
        if isinstance(arg, dict):
            return all(_compare(o, len(value), a) for o, a in arg.items())
        return len(value) == arg
    return _ORDERING[op](_parse_float(value), _parse_float(arg))  # NaN: always false


def matches(query: dict[str, Any], metadata: dict[str, Any], params: dict[str, Any],
            path: str = "") -> bool:
    """Whether the query holds; `path` is the request's, for `url.pathname`."""
    for key, matcher in query.items():
        if key == "$and":
            if not all(matches(q, metadata, params, path) for q in matcher):
                return False
        elif key == "$or":
            if not any(matches(q, metadata, params, path) for q in matcher):
                return False
        else:
            value = _lookup(key, metadata, params, path)
            if isinstance(matcher, dict) and any(k.startswith("$") for k in matcher):
                if value is _MISSING:
                    # Only "not equal" / "not in" can hold for an absent field.
                    if any(op not in ("$ne", "$nin") for op in matcher):
                        return False
                    continue
                if not all(_compare(op, value, arg) for op, arg in matcher.items()):
                    return False
            elif value is _MISSING or not _equal(value, matcher):
                return False
    return True
