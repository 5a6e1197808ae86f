"""Google error bodies → our error tree, by their JSON fields.

Google answers `{"error": {"code": 400, "message": "…", "status": "INVALID_ARGUMENT"}}`, and
the streaming endpoint sometimes wraps that object in a one-element array. The client gets the
same HTTP status, Google's message, and Google's status string as the OpenAI `code`. A 429's
`RetryInfo` detail (`"retryDelay": "24s"`), Google's only word on when to come back (it sends no
Retry-After header), becomes the error's wait, for retries and the client's Retry-After. A
refused API key (400 with the `ErrorInfo` reason `API_KEY_INVALID`) is a 401.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from streamproxy._json import loads_lenient
from streamproxy.errors import UpstreamStatusError
from streamproxy.providers.base import context_overflow, generic_error, insufficient_quota

# The `details` entry that says when to retry (google.rpc.RetryInfo, its `retryDelay`).
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
# The `details` entry that names the cause (google.rpc.ErrorInfo, its `reason`). Google answers
# a wrong, deleted or expired API key with 400 INVALID_ARGUMENT and this reason: the client gets
# a 401, as any OpenAI client reads a refused key (the openai SDK's AuthenticationError).
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
# The `details` entry that names the quotas a 429 hit (google.rpc.QuotaFailure, its
# `violations[].quotaId`). A per-day one ("GenerateRequestsPerDayPerProjectPerModel-FreeTier",
# "…InputTokensPerModelPerDay…") resets at midnight Pacific, yet comes with a RetryInfo of
# seconds (the per-minute quota's listed with it): it is OpenAI's `insufficient_quota`, not
# retried by a config or the SDKs, without that wait (a fallback still runs). So is a quota
# whose `quotaValue` is 0 ("…, limit: 0"): the key's tier has none for the model (a free-tier
# key and a paid-only model), and no wait brings one.
QUOTA_FAILURE = "type.googleapis.com/google.rpc.QuotaFailure"
KEY_REFUSED = "API_KEY_INVALID"
# How a 400 INVALID_ARGUMENT (Gemini's and Vertex's) words a prompt over the model's context:
# "The input token count (1200293) exceeds the maximum number of tokens allowed (1048576).",
# and Vertex's other wording: "Unable to submit request because the input token count is
# 1251952 but model only supports up to 1048576. Reduce the input token count and try again."
OVERFLOW = ("exceeds the maximum number of tokens allowed", "but model only supports up to")


def google_error(status: int, body: bytes, provider: str) -> UpstreamStatusError:
    try:
        obj = loads_lenient(body) if body else None  # (as generic_error)
    except orjson.JSONDecodeError:
        obj = None
    if isinstance(obj, list) and obj:
        obj = obj[0]
    err = obj.get("error") if isinstance(obj, dict) else None
    if not isinstance(err, dict):  # (one with no `code`: 502 for an error in a 200)
        return generic_error(status or 502, body, provider)
    return error_from_object(err, status, provider)


def error_from_object(err: Any, status: int, provider: str) -> UpstreamStatusError:
    """`status` is the HTTP status; an error that arrives inside a 200 stream passes 0 and
    takes Google's numeric `code` (502 when that is missing or not an HTTP error status).
    An error that is only text (`{"error": "…"}`, as a whole body generic_error reads it) is
    that message: the provider's error, not a stream of the wrong shape."""
    if not isinstance(err, dict):
        err = {"message": err}
    if not status:
        code = err.get("code")
        status = code if isinstance(code, int) and 400 <= code < 600 else 502
    message = err.get("message")
    if not isinstance(message, str) or not message:
        message = f"provider '{provider}' returned HTTP {status}"
    google_status = err.get("status")
    code = google_status if isinstance(google_status, str) else None
    details = err.get("details")
    if _reason(details) == KEY_REFUSED:
        status, code = 401, KEY_REFUSED
    error = UpstreamStatusError(status, message, provider=provider, code=code,
                                retry_after=_retry_delay(details))
    if status == 429 and _quota_used_up(details):
        return insufficient_quota(error)
    return context_overflow(error, OVERFLOW)


def _reason(details: Any) -> str | None:
    """The `reason` of an `ErrorInfo` detail, if there is one."""
    for detail in details if isinstance(details, list) else ():
        if isinstance(detail, dict) and detail.get("@type") == ERROR_INFO:
            reason = detail.get("reason")
            return reason if isinstance(reason, str) else None
    return None


def _quota_used_up(details: Any) -> bool:
    """Does a `QuotaFailure` detail name a per-day quota, or one of 0, among those the request
    hit?"""
    for detail in details if isinstance(details, list) else ():
        if isinstance(detail, dict) and detail.get("@type") == QUOTA_FAILURE:
            violations = detail.get("violations")
            for violation in violations if isinstance(violations, list) else ():
                if not isinstance(violation, dict):
                    continue
                quota, limit = violation.get("quotaId"), violation.get("quotaValue")
                if isinstance(quota, str) and "PerDay" in quota:
                    return True
                if limit in ("0", 0) and not isinstance(limit, bool):  # (False == 0)
                    return True
    return False


def _retry_delay(details: Any) -> float | None:
    """Seconds from a `RetryInfo` detail's `retryDelay` (a protobuf Duration in JSON: "24s",
    "0.250s"); None without a readable one."""
    if not isinstance(details, list):
        return None
    for detail in details:
        if isinstance(detail, dict) and detail.get("@type") == RETRY_INFO:
            delay = detail.get("retryDelay")
            if isinstance(delay, str) and delay.endswith("s"):
                try:
                    seconds = float(delay[:-1])
                except ValueError:
                    return None
                return seconds if math.isfinite(seconds) and seconds >= 0 else None
    return None
