"""Which headers of an upstream's answer reach the client: its rate-limit state, as Portkey
and LiteLLM pass it on, so a client can pace itself on the provider's own counts (OpenAI's
and most OpenAI-compatible APIs' `x-ratelimit-*`, Anthropic's `anthropic-ratelimit-*`), on
an error OpenAI's `x-should-retry`, which its SDKs obey before the status, and the provider's
own id of the request, which its support asks for (`REQUEST_IDS`). Nothing else: no cookie,
no server detail or timing, no framing; `retry-after` is the error's own (server/errors.py).
Picked once per upstream response, never per chunk."""

from __future__ import annotations

from collections.abc import Iterable

RATE_LIMIT_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")
SHOULD_RETRY = "x-should-retry"
# An upstream's request id → the name the client gets it under: its own (as Portkey passes
# it), but OpenAI's `x-request-id` (also Azure's, Groq's, most OpenAI-compatible APIs') is
# this proxy's trace id, which the openai SDK reads as `_request_id`: it goes under LiteLLM's
# name for it. Anthropic's `request-id`, Bedrock's `x-amzn-requestid`. (Gemini's answer has
# none in its head: its `responseId` is in the body.)
REQUEST_IDS = {"x-request-id": "llm_provider-x-request-id", "request-id": "request-id",
               "x-amzn-requestid": "x-amzn-requestid"}
# A count, a duration or a date is short, and providers send a dozen such headers: an upstream
# sending more or longer ones would make the client's head one that a strict client or a
# reverse proxy in front refuses (nginx's default buffer is 4 to 8 KB).
MAX_VALUE = 128
MAX_PASSED = 24  # rate-limit headers; the few others (an id, x-should-retry) pass besides


def passed_headers(fields: Iterable[tuple[str, str]], *, error: bool) -> dict[str, str] | None:
    """The headers to pass on from an upstream answer's (name, value) fields (`error`: its
    status is 4xx/5xx), or None; a request id under its `REQUEST_IDS` name. A value that is
    not printable ASCII, or longer than MAX_VALUE, is left out: the client's head carries it
    as it came, and such bytes have no place in a count, a time or an id; MAX_PASSED
    rate-limit headers at most, counted apart: an upstream sending more of them before its
    request id or x-should-retry must not lose those (a handful of names, so still bounded)."""
    passed: dict[str, str] | None = None
    rate_limits = 0
    for name, value in fields:
        passed_as = name.lower()
        rate_limit = passed_as.startswith(RATE_LIMIT_PREFIXES)
        if not (rate_limit or (error and passed_as == SHOULD_RETRY)):
            passed_as = REQUEST_IDS.get(passed_as, "")
            if not passed_as:
                continue
        if len(value) <= MAX_VALUE and value.isascii() and value.isprintable():
            if passed is None:
                passed = {}
            if rate_limit and passed_as not in passed:
                if rate_limits == MAX_PASSED:
                    continue
                rate_limits += 1
            passed[passed_as] = value
    return passed


def upstream_request_id(passed: dict[str, str] | None) -> str | None:
    """The upstream's request id among the headers `passed_headers` picked, for the log."""
    if passed:
        for name in REQUEST_IDS.values():
            if name in passed:
                return passed[name]
    return None
