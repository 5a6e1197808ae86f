"""Properties of conditional routing's `$regex` (routing/conditions.py): dropping a leading or
trailing `.*` never changes what a search finds; a client's pattern is costed once."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamproxy.routing.conditions import _regex

# Pieces that put `.*` next to what could be mistaken for it: escapes, classes, groups,
# alternations, anchors, lookarounds and lazy forms.
_PIECES = ["a", "b", ".", ".*", ".*?", r"\.", r"\.*", "[.*]", r"\\", r"\\.*", "(.*)",
           "(?:.*)", "|", "^", "$", "a*", "(a|b)", "[^a]", "x?", "(?:a|.*)", r"\b", ".+",
           "(?=a)", "(?!b)"]
_FLAGS = ["", "(?i)", "(?s)", "(?is)", "(?i)(?s)"]


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(_FLAGS), st.lists(st.sampled_from(_PIECES), max_size=6),
       st.text("abAB.*\\ \n", max_size=8))
def test_dropping_a_leading_or_trailing_dot_star_changes_no_match(
        flags: str, pieces: list[str], text: str) -> None:
    pattern = flags + "".join(pieces)
    try:  # (the same pattern, untranslated but for $: JavaScript's is the text's end)
        plain = re.compile(pattern.replace("$", r"\Z"), re.ASCII)
    except re.error:
        return
    searched, _ = _regex(pattern)
    assert (searched.search(text) is None) == (plain.search(text) is None)


def test_a_clients_pattern_is_costed_once_not_on_every_request(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # An inline config is parsed on every request; its `$regex`'s cost (a parse and a
    # translation, ~250 µs) was computed anew each time.
    from streamproxy.routing import conditions
    pattern = r"^(gpt|o)\d+.*-costed-once$"
    query = {"metadata.m": {"$regex": pattern}}
    conditions.client_regex_costs(query, "q")
    calls: list[str] = []
    real = conditions._python
    monkeypatch.setattr(conditions, "_python", lambda p: calls.append(p) or real(p))
    for _ in range(3):
        [(path, cost)] = conditions.client_regex_costs(query, "q")
    assert (path, calls) == ("q.metadata.m.$regex", [])
    assert cost == conditions.regex_cost(pattern)
