r"""Conditional routing queries (Portkey's `strategy.conditions[].query`), evaluated purely.

A query is an object of `field: matcher` pairs (all must hold) plus `$and` / `$or` arrays.
Fields are `metadata.<key>` (from `x-portkey-metadata`), `params.<key>` (the request body,
dotted for nesting, an array's items by index: `params.messages.0.role`) or `url.pathname`
(the request's path). A matcher is a literal (equality)
or an object of operators: `$eq $ne $gt $gte $lt $lte $in $nin $regex $length`.

As in Portkey's conditionalRouter.ts, `$gt $gte $lt $lte` compare both sides as JavaScript's
`parseFloat` reads them, so metadata's strings compare as numbers (`"3"` ≥ 2) and a value
that is not a number never matches; `$length` applies a number (equality) or an operator
object to the length of an array (anything else never matches). Equality (`$eq $ne $in $nin`,
a literal) is JavaScript's strict one for booleans: `true` is not `1`, nor `false` `0`.
`$regex` reads a number or a boolean as JavaScript's `RegExp.test` does, as its text (`3`,
`1024`, `true`); an array, an object, null or an absent field never matches. Its pattern means
what `new RegExp(pattern)` does in Portkey's gateway (`_from_js`): `(?<name>…)`, `\k<name>`,
`[^]` and `[]` are taken, `\d \w \b` are ASCII's, `\s` Unicode's spaces, and `$` the text's end
(Python's also matched before a final newline); Python's own syntax still works.

A client's inline config's `$regex` runs on the event loop against values the request brings,
and Python's `re` backtracks: `(a+)+$` takes time exponential in its subject, `a*a*$` cubic,
stalling every stream of the worker. So its patterns must fit a backtracking budget
(`regex_cost`, checked as the config is read) and a value longer than
CLIENT_REGEX_TEXT_MAX characters never matches one. An operator's patterns are the
operator's to write and are not refused, but the values they read are the client's: each reads
a value only as long as its cost on it fits the same budget (`regex_text_max`; a longer one
never matches), unless it takes a bounded few steps per start (a literal, `-mini$`), which
reads any length; each way's walk counts (`\w{1000}` is one way but a thousand steps). A
leading (after `(?i)`-style flags) or trailing `.*` is dropped first: it changes nothing a
search finds, and a leading one made `.*urgent` quadratic.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from decimal import Decimal
from functools import lru_cache
from re import _constants as sre  # (the stdlib's own parse of a pattern: no new dependency)
from re import _parser as sre_parse
from typing import Any

from streamproxy.errors import InvalidRequest

OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$regex", "$length")
URL_FIELDS = ("url.pathname",)
_ORDERING: dict[str, Callable[[float, float], bool]] = {
    "$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt, "$lte": operator.le}
# What parseFloat reads: leading whitespace, then the longest prefix that is a decimal number.
_FLOAT_PREFIX = re.compile(r"\s*([+-]?(?:Infinity|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?))")
_MISSING = object()
# An array's item in a field path, as MongoDB's queries write it (`messages.0`): no sign, no
# leading zero, no index from the end.
_INDEX = re.compile(r"0|[1-9][0-9]{0,8}")
# How deep `$and` / `$or` may nest: far beyond what a routing rule needs, and far within
# Python's stack (330 levels, a 4 kB header, ran matching out of it: a 500).
MAX_QUERY_DEPTH = 32
# What a client's patterns may cost: the ways backtracking may try them on a subject of
# CLIENT_REGEX_TEXT_MAX characters, all of a config's together (~20 ms of the loop at most).
# Room for one unbounded repeat (`-mini$`, `.*sonnet`), or two behind a `^` (`^o\d+.*$`);
# not for a repeated group that can match a text in several ways (`(a+)+`, `(a|ab)*`).
CLIENT_REGEX_TEXT_MAX = 256
CLIENT_REGEX_BUDGET = 1 << 21
# A pattern that backtracks at most _LINEAR_WAYS ways and takes at most _LINEAR_STEPS steps
# per start, whatever the text, costs a search time linear in it: it reads a value of any
# length (`regex_text_max`). Room for a literal phrase or `^gpt-4o(-mini|-nano)?$`, not for
# `\w{255}x` (~7 ns a step: 1.8 s on 1 MB).
_LINEAR_WAYS = 16
_LINEAR_STEPS = 32
_TEXT_LIMIT = 1 << 24  # longer than any request body (server.max_body_bytes: 10 MB)
# JavaScript's \s (ECMA-262 WhiteSpace and LineTerminator), for re.ASCII's narrower one.
_JS_SPACES = r"\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
# JavaScript's \S inside a class (`[^\S\r\n]`: a space but no line end), where `[^…]` cannot
# nest: every character outside _JS_SPACES, as ranges.
_JS_NON_SPACES = (r"\x00-\x08\x0e-\x1f\x21-\x9f\xa1-\u167f\u1681-\u1fff\u200b-\u2027"
                  r"\u202a-\u202e\u2030-\u205e\u2060-\u2fff\u3001-\ufefe\uff00-\U0010ffff")
_JS_NAMED_GROUP = re.compile(r"\(\?<(?=[A-Za-z_])")  # (not a lookbehind's (?<= or (?<!)
_JS_GROUP_REF = re.compile(r"\\k<(\w+)>")
# Python's global inline flags, which must open a pattern (`(?i)`, `(?i)(?s)`): a `.*` after
# them leads the pattern as much as one at its start.
_GLOBAL_FLAGS = re.compile(r"(?:\(\?[aiLmsux]+\))*")
_REPEATS = (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT)
_BEGINNINGS = (sre.AT_BEGINNING, sre.AT_BEGINNING_STRING)


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


def regex_cost(pattern: str, text_max: int = CLIENT_REGEX_TEXT_MAX,
               client: bool = True) -> float:
    """An upper bound on the steps a search for `pattern` (a valid one) may backtrack through
    on a text of `text_max` characters: one per start (one only after a leading `^`) times its
    items' ways; a backreference's are unbounded (inf) in a client's pattern."""
    items = sre_parse.parse(_python(pattern), re.ASCII)
    if client:
        return _cost(items, text_max, math.inf)
    return _starts(items, text_max) * _search_steps(items, text_max)[1]


def regex_text_max(pattern: str) -> int | None:
    """The longest text a search for `pattern` (a valid one) reads within
    CLIENT_REGEX_BUDGET steps; None when it takes a bounded few per start (linear)."""
    items = sre_parse.parse(_python(pattern), re.ASCII)
    ways, steps = _search_steps(items, _TEXT_LIMIT)
    if ways <= _LINEAR_WAYS and steps <= _LINEAR_STEPS:
        return None
    low, high = 0, _TEXT_LIMIT  # (the cost grows with the text: the longest within budget)
    while low < high:  # (24 halvings)
        mid = (low + high + 1) // 2
        if _starts(items, mid) * _search_steps(items, mid)[1] <= CLIENT_REGEX_BUDGET:
            low = mid
        else:
            high = mid - 1
    return low


def _python(pattern: str) -> str:
    """`pattern` (JavaScript's, or Python's) as the Python pattern that is searched for."""
    python = _from_js(pattern, dollar=True)
    if sre_parse.parse(python, re.ASCII).state.flags & re.MULTILINE:  # ((?m): $ is a line's)
        python = _from_js(pattern, dollar=False)
    return _searched(python)


def _from_js(pattern: str, dollar: bool) -> str:
    r"""What Portkey's `new RegExp(pattern)` means, in Python's syntax (compiled re.ASCII, as
    JavaScript's \d \w \b are): its named groups and their references, `[^]` (any character)
    and `[]` (none), \s as Unicode's spaces, and `$` (`dollar`) as the text's end only."""
    out: list[str] = []
    i, in_class = 0, False
    while i < len(pattern):
        char = pattern[i]
        step = 1
        if char == "\\":
            step = 2
            escape = pattern[i:i + 2]
            ref = _JS_GROUP_REF.match(pattern, i)
            if ref:
                char, step = f"(?P={ref.group(1)})", ref.end() - i
            elif escape == "\\s":
                char = _JS_SPACES if in_class else f"[{_JS_SPACES}]"
            elif escape == "\\S":
                char = _JS_NON_SPACES if in_class else f"[^{_JS_SPACES}]"
            else:
                char = escape
        elif in_class:
            in_class = char != "]"
        elif pattern.startswith("[^]", i):
            char, step = "[\\s\\S]", 3
        elif pattern.startswith("[]", i):
            char, step = "(?!)", 2
        elif char == "[":
            in_class = True
            if pattern.startswith("[^", i):
                char, step = "[^", 2
        elif char == "$" and dollar:
            char = "\\Z"
        elif _JS_NAMED_GROUP.match(pattern, i):
            char, step = "(?P<", 3
        out.append(char)
        i += step
    return "".join(out)


def _searched(pattern: str) -> str:
    """`pattern` without a leading or trailing `.*` / `.*?`: each may match nothing, so a
    search finds a match with them exactly when without, and a leading one has sre try every
    start against the rest of the text (`.*urgent` on 100 kB: 14 s)."""
    head = _GLOBAL_FLAGS.match(pattern).end()  # (`(?i).*urgent`: after the flags)
    while True:
        items = sre_parse.parse(pattern)
        if len(items) and _is_dot_star(items[0]) and pattern.startswith(".*", head):
            cut = 3 if pattern.startswith(".*?", head) else 2
            pattern = pattern[:head] + pattern[head + cut:]
        elif len(items) and _is_dot_star(items[-1]) and pattern.endswith((".*", ".*?")):
            pattern = pattern[:-3] if pattern.endswith(".*?") else pattern[:-2]
        else:
            return pattern


def _is_dot_star(item: Any) -> bool:
    op, av = item
    return (op in (sre.MAX_REPEAT, sre.MIN_REPEAT) and av[0] == 0 and av[1] == sre.MAXREPEAT
            and list(av[2]) == [(sre.ANY, None)])


def _cost(items: Any, text_max: int, ref_ways: float) -> float:
    return _starts(items, text_max) * _ways(items, text_max, ref_ways)


def _starts(items: Any, text_max: int) -> int:
    anchored = (len(items) > 0 and items[0][0] is sre.AT and items[0][1] in _BEGINNINGS
                and not items.state.flags & re.MULTILINE)  # ((?m)^: each line's start)
    return 1 if anchored else text_max + 1


def _search_steps(items: Any, text_max: int) -> tuple[float, float]:
    """`_steps` of a search: sre finds a leading literal (case-sensitive) in time linear in
    the text, with a table of its overlaps, so it counts as one step (a phrase reads any
    length) and only the rest is tried at each place it occurs."""
    head = 0
    if not items.state.flags & re.IGNORECASE:
        while head < len(items) and items[head][0] is sre.LITERAL:
            head += 1
    ways, steps = _steps(sre_parse.SubPattern(items.state, items.data[head:]), text_max)
    return ways, steps + (head > 0)


def _steps(items: Any, text_max: int) -> tuple[float, float]:
    r"""The ways `items` (an operator's parsed sequence) may match from one place in a text of
    `text_max` characters, and the steps sre may take trying them all: each way of an item
    tries the rest, and a repeat walks its iterations, so `\w{1000}` is one way but a thousand
    steps (`_ways` counts it as one: `(?:\w{100}){100}x` stalled 2.6 s on 100 kB), and a
    backreference compares as many characters as its group may hold."""
    ways, steps = 1.0, 0.0
    for op, av in items:
        if op in _REPEATS:
            low, high, body = av
            high = min(high, text_max)
            inner, walk = _steps(body, text_max)
            if inner == 1:
                item = (max(high - low + 1, 1), max(high, 1) * walk)
            else:  # (every partial path tries one more iteration)
                item = (_repeat_ways(low, high, inner), _repeat_ways(0, high, inner) * walk)
        elif op is sre.SUBPATTERN:
            item = _steps(av[3], text_max)
        elif op is sre.ATOMIC_GROUP:
            item = _steps(av, text_max)
        elif op in (sre.ASSERT, sre.ASSERT_NOT):
            item = _steps(av[1], text_max)
        elif op is sre.BRANCH:
            arms = [_steps(alt, text_max) for alt in av[1]]
            item = (sum(w for w, _ in arms), sum(s for _, s in arms))
        elif op is sre.GROUPREF:
            item = (1, max(min(items.state.groupwidths[av][1], text_max), 1))
        elif op is sre.GROUPREF_EXISTS:
            arms = [_steps(arm, text_max) if arm else (1, 1) for arm in av[1:]]
            item = (sum(w for w, _ in arms), 1 + sum(s for _, s in arms))
        else:
            item = (1, 1)
        steps += ways * item[1]
        ways *= item[0]
        if steps > CLIENT_REGEX_BUDGET or ways > CLIENT_REGEX_BUDGET:
            return math.inf, math.inf
    return ways, steps


def _ways(items: Any, text_max: int, ref_ways: float) -> float:
    """How many ways `items` (a parsed sequence) may match from one place in a text of
    `text_max` characters, at most, a backreference counted as `ref_ways`: a client's are
    refused (inf), an operator's are one (the text its group took: one comparison)."""
    total = 1.0
    for op, av in items:
        if op in _REPEATS:
            low, high, body = av
            total *= _repeat_ways(low, min(high, text_max), _ways(body, text_max, ref_ways))
        elif op is sre.SUBPATTERN:
            total *= _ways(av[3], text_max, ref_ways)
        elif op is sre.ATOMIC_GROUP:
            total *= _ways(av, text_max, ref_ways)
        elif op in (sre.ASSERT, sre.ASSERT_NOT):
            total *= _ways(av[1], text_max, ref_ways)
        elif op is sre.BRANCH:
            total *= sum(_ways(alt, text_max, ref_ways) for alt in av[1])
        elif op is sre.GROUPREF:
            total *= ref_ways
        elif op is sre.GROUPREF_EXISTS:  # ((?(1)yes|no): either arm)
            total *= ref_ways * sum(_ways(arm, text_max, ref_ways) if arm else 1
                                    for arm in av[1:])
        if total > CLIENT_REGEX_BUDGET:
            return math.inf
    return total


def _repeat_ways(low: int, high: int, inner: float) -> float:
    """The ways of a repeat of `low` to `high` iterations, each of `inner` ways: one per count
    of iterations when the body has one way, else a sum of powers (`(a|a)*`: exponential)."""
    if inner == 1:
        return max(high - low + 1, 1)  # (a `low` past the longest text: it never matches)
    ways, term = 0.0, 1.0
    for count in range(high + 1):  # (ends past the budget: `inner` ≥ 2)
        if count >= low:
            ways += term
        if ways > CLIENT_REGEX_BUDGET:
            return math.inf
        term *= inner
    return max(ways, 1)


def client_regex_costs(query: dict[str, Any], path: str) -> list[tuple[str, float]]:
    """Each `$regex` of `query` (a valid one) with its path and `regex_cost`."""
    out = []
    for key, value in query.items():
        if key in ("$and", "$or"):
            for i, sub in enumerate(value):
                out += client_regex_costs(sub, f"{path}.{key}[{i}]")
        elif isinstance(value, dict) and "$regex" in value:
            out.append((f"{path}.{key}.$regex", _client_cost(value["$regex"])))
    return out


@lru_cache(maxsize=256)
def _client_cost(pattern: str) -> float:
    """`regex_cost` once per pattern: an inline config is read on every request, and a
    pattern's parse and translation took ~250 µs of the loop each time."""
    return regex_cost(pattern)


@lru_cache(maxsize=256)
def _regex(pattern: str) -> tuple[re.Pattern[str], int | None]:
    """`pattern` compiled as searched, and the longest text it reads (None: any)."""
    return re.compile(_python(pattern), re.ASCII), regex_text_max(pattern)


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
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and _INDEX.fullmatch(part) and int(part) < len(value):
            value = value[int(part)]  # (`params.messages.0.role`: without it, never a match)
        else:
            return _MISSING
    return value


def _equal(value: Any, arg: Any) -> bool:
    """Python's `==`, except that a boolean equals only a boolean (in Python `True == 1`)."""
    if isinstance(value, bool) or isinstance(arg, bool):
        return value is arg
    return bool(value == arg)


def _compare(op: str, value: Any, arg: Any, text_max: int | None = None) -> bool:
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
        if text is None:
            return False
        regex, reads = _regex(arg)
        return ((text_max is None or len(text) <= text_max)
                and (reads is None or len(text) <= reads) and regex.search(text) is not None)
    if op == "$length":
        if not isinstance(value, list):
            return False
        if isinstance(arg, dict):
            return all(_compare(o, len(value), a) for o, a in arg.items())
        return len(value) == arg
    return _ORDERING[op](_parse_float(value), _parse_float(arg))  # NaN: always false


def matches(query: dict[str, Any], metadata: dict[str, Any], params: dict[str, Any],
            path: str = "", text_max: int | None = None) -> bool:
    """Whether the query holds; `path` is the request's, for `url.pathname`; `text_max`: the
    longest text a `$regex` reads (a longer one never matches), for a client's query."""
    for key, matcher in query.items():
        if key == "$and":
            if not all(matches(q, metadata, params, path, text_max) for q in matcher):
                return False
        elif key == "$or":
            if not any(matches(q, metadata, params, path, text_max) for q in matcher):
                return False
        else:
            value = _lookup(key, metadata, params, path)
            if isinstance(matcher, dict) and any(k.startswith("$") for k in matcher):
                if value is _MISSING:
                    # Only "not equal" / "not in" can hold for an absent field.
                    if any(op not in ("$ne", "$nin") for op in matcher):
                        return False
                    continue
                if not all(_compare(op, value, arg, text_max) for op, arg in matcher.items()):
                    return False
            elif value is _MISSING or not _equal(value, matcher):
                return False
    return True
