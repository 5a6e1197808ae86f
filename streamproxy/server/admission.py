"""Admission control: at most `server.max_concurrent_streams` chat requests in flight per
worker (streamed or not: both hold an upstream connection for the whole generation). One more
is refused at once with 503 and `Retry-After`, rather than admitted to slow every stream down.

A request is counted in by the chat handler once its body is read and parsed, not when it
arrives: a client still uploading (or stalled half-way through) a body holds no slot, so a few
slow uploads cannot make the proxy refuse everyone else. The body's memory is bounded by
`server.max_body_bytes` and the time it may take by `server.client_body_timeout`.

503, not 429: the client did nothing wrong and is not over any quota of its own; this
instance is full. A load balancer or client retry then goes elsewhere or comes back later
(the OpenAI SDKs retry both, honouring Retry-After). 429 stays the answer for a proxy key over
its own rate limit (server/auth.py).
"""

from __future__ import annotations

from aiohttp import web

from streamproxy.errors import Overloaded
from streamproxy.observe.metrics import metrics

RETRY_AFTER_SECONDS = 1


class Admission:
    """`active` is this worker's count of admitted requests in flight (also the
    streamproxy_active_streams gauge). `previous`: the app a process reloads in place from,
    whose requests still run in the same memory: they count against the new limit too."""

    __slots__ = ("_gauge", "_in_flight", "limit")

    def __init__(self, limit: int, previous: Admission | None = None) -> None:
        self.limit = limit
        self._in_flight = previous._in_flight if previous is not None else [0]  # (shared)
        self._gauge = metrics().active_streams

    @property
    def active(self) -> int:
        return self._in_flight[0]

    def enter(self) -> None:
        """Count one more request in, or refuse it (503, counted; the chat handler's record
        logs it)."""
        if self._in_flight[0] >= self.limit:
            metrics().rejected.labels("overloaded").inc()
            raise Overloaded(f"The proxy is serving its limit of {self.limit} concurrent "
                             "requests; retry shortly.", retry_after=RETRY_AFTER_SECONDS)
        self._in_flight[0] += 1
        self._gauge.inc()

    def leave(self) -> None:
        self._in_flight[0] -= 1
        self._gauge.dec()


ADMISSION = web.AppKey("streamproxy_admission", Admission)
