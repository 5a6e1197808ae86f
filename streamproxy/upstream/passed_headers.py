"""Which headers of an upstream's answer reach the client: its rate-limit state, as Portkey
and LiteLLM pass it on, so a client can pace itself on the provider's own counts (OpenAI's
and most OpenAI-compatible APIs' `x-ratelimit-*`, Anthropic's `anthropic-ratelimit-*`), and on
an error OpenAI's `x-should-retry`, which its SDKs obey before the status. Nothing else: no
cookie, no upstream request id or server detail, no framing; `retry-after` is the error's
own (server/errors.py). Picked once per upstream response, never per chunk."""

from __future__ import annotations

from collections.abc import Iterable

RATE_LIMIT_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")
SHOULD_RETRY = "x-should-retry"
# A count, a duration or a date is short, and providers send a dozen such headers: an upstream
# sending more or longer ones would make the client's head one that a strict client or a
# reverse proxy in front refuses (nginx's default buffer is 4 to 8 KB).
MAX_VALUE = 128
MAX_PASSED = 24


def passed_headers(fields: Iterable[tuple[str, str]], *, error: bool) -> dict[str, str] | None:
    """The headers to pass on from an upstream answer's (name, value) fields (`error`: its
    status is 4xx/5xx), or None. A value that is not printable ASCII, or longer than
    MAX_VALUE, is left out: the client's head carries it as it came, and such bytes have no
    place in a count or a time; MAX_PASSED at most."""
    passed: dict[str, str] | None = None
    for name, value in fields:
        lower = name.lower()
        if not (lower.startswith(RATE_LIMIT_PREFIXES) or (error and lower == SHOULD_RETRY)):
            continue
        if len(value) <= MAX_VALUE and value.isascii() and value.isprintable():
            if passed is None:
                passed = {}
            elif len(passed) == MAX_PASSED:
                break
            passed[lower] = value
    return passed
