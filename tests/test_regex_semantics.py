"""Properties of conditional routing's `$regex` translation (routing/conditions.py): dropping
a leading or trailing `.*` never changes what a search finds."""

from __future__ import annotations

import re

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
