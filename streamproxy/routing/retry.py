"""Retry timing (pure): exponential backoff with "equal" jitter (a wait between half the
ceiling and the ceiling, so a retry never comes at once), or the upstream's Retry-After."""

from __future__ import annotations

import random

BACKOFF_BASE = 0.25  # seconds before the first retry, doubled each time
BACKOFF_CAP = 8.0
RETRY_AFTER_CAP = 30.0  # an upstream asking for longer is treated as failed, not waited on
# A target's waits between its tries, together (Portkey's cap): each under RETRY_AFTER_CAP,
# ten `retry-after: 25` held a request, its stream not begun, for four minutes. The backoff's
# alone never reach it (ten retries wait under 48 s).
RETRY_WAIT_BUDGET = 60.0


def retry_delay(retry_number: int, rng: random.Random, retry_after: float | None,
                use_retry_after: bool, waited: float = 0.0) -> float | None:
    """Seconds to wait before retry `retry_number` (0-based), after `waited` seconds of
    waits before the target's earlier retries; None = do not retry (the upstream asked for a
    wait beyond RETRY_AFTER_CAP, or the wait would take the waits past RETRY_WAIT_BUDGET). A
    wait of 0 (`retry-after: 0`, an HTTP-date already past) names none, as the openai SDKs
    read it: the backoff applies, not a burst of instant retries at an upstream that is
    refusing."""
    if use_retry_after and retry_after is not None and retry_after > 0:
        delay = None if retry_after > RETRY_AFTER_CAP else retry_after
    else:
        ceiling = min(BACKOFF_CAP, BACKOFF_BASE * (2 ** retry_number))
        delay = ceiling / 2 + rng.random() * ceiling / 2  # jitter in [ceiling/2, ceiling]
    return None if delay is None or waited + delay > RETRY_WAIT_BUDGET else delay
