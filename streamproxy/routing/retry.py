"""Retry timing (pure): exponential backoff with "equal" jitter (a wait between half the
ceiling and the ceiling, so a retry never comes at once), or the upstream's Retry-After."""

from __future__ import annotations

import random

BACKOFF_BASE = 0.25  # seconds before the first retry, doubled each time
BACKOFF_CAP = 8.0
RETRY_AFTER_CAP = 30.0  # an upstream asking for longer is treated as failed, not waited on


def retry_delay(retry_number: int, rng: random.Random, retry_after: float | None,
                use_retry_after: bool) -> float | None:
    """Seconds to wait before retry `retry_number` (0-based); None = do not retry (the upstream
    asked for a wait beyond RETRY_AFTER_CAP). A wait of 0 (`retry-after: 0`, an HTTP-date
    already past) names none, as the openai SDKs read it: the backoff applies, not a burst of
    instant retries at an upstream that is refusing."""
    if use_retry_after and retry_after is not None and retry_after > 0:
        return None if retry_after > RETRY_AFTER_CAP else retry_after
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * (2 ** retry_number))
    return ceiling / 2 + rng.random() * ceiling / 2  # jitter in [ceiling/2, ceiling]
