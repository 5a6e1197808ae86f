"""Conditional routing queries (Portkey's `strategy.conditions[].query`), evaluated purely.

A query is an object of `field: matcher` pairs (all must hold) plus `$and` / `$or` arrays.
Fields are `metadata.<key>` (from `x-portkey-metadata`) or `params.<key>` (the request body,
dotted for nesting). A matcher is a literal (equality) or an object of operators:
`$eq $ne $gt $gte $lt $lte $in $nin $regex`.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from streamproxy.errors import InvalidRequest

OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$regex")
_MISSING = object()


def _bad(path: str, reason: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid config: '{path}' {reason}.", param=path,
                          code="invalid_config")


def validate_query(query: Any, path: str) -> None:
    if not isinstance(query, dict):
        raise _bad(path, "must be an object")
    for key, value in query.items():
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise _bad(f"{path}.{key}", "must be a non-empty array of queries")
            for i, sub in enumerate(value):
                validate_query(sub, f"{path}.{key}[{i}]")
        elif key.startswith("$"):
            raise _bad(f"{path}.{key}", "is not a logical operator ($and, $or)")
        elif not key.startswith(("metadata.", "params.")):
            raise _bad(f"{path}.{key}", "must start with metadata. or params.")
        elif isinstance(value, dict) and any(k.startswith("$") for k in value):
            for op, arg in value.items():
                if op not in OPERATORS:
                    raise _bad(f"{path}.{key}.{op}",
                               f"is not an operator ({', '.join(OPERATORS)})")
                if op in ("$in", "$nin") and not isinstance(arg, list):
                    raise _bad(f"{path}.{key}.{op}", "must be an array")
                if op == "$regex":
                    try:
                        _regex(arg)
                    except (re.error, TypeError):
                        raise _bad(f"{path}.{key}.{op}", "must be a valid regex") from None


@lru_cache(maxsize=256)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _lookup(field: str, metadata: dict[str, Any], params: dict[str, Any]) -> Any:
    root, _, rest = field.partition(".")
    value: Any = metadata if root == "metadata" else params
    for part in rest.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _compare(op: str, value: Any, arg: Any) -> bool:
    if op == "$eq":
        return value == arg
    if op == "$ne":
        return value != arg
    if op == "$in":
        return value in arg
    if op == "$nin":
        return value not in arg
    if op == "$regex":
        return isinstance(value, str) and _regex(arg).search(value) is not None
    try:  # ordering operators: only between comparable values
        if op == "$gt":
            return value > arg
        if op == "$gte":
            return value >= arg
        if op == "$lt":
            return value < arg
        return value <= arg  # $lte
    except TypeError:
        return False


def matches(query: dict[str, Any], metadata: dict[str, Any], params: dict[str, Any]) -> bool:
    for key, matcher in query.items():
        if key == "$and":
            if not all(matches(q, metadata, params) for q in matcher):
                return False
        elif key == "$or":
            if not any(matches(q, metadata, params) for q in matcher):
                return False
        else:
            value = _lookup(key, metadata, params)
            if isinstance(matcher, dict) and any(k.startswith("$") for k in matcher):
                if value is _MISSING:
                    # Only "not equal" / "not in" can hold for an absent field.
                    if any(op not in ("$ne", "$nin") for op in matcher):
                        return False
                    continue
                if not all(_compare(op, value, arg) for op, arg in matcher.items()):
                    return False
            elif value is _MISSING or value != matcher:
                return False
    return True
