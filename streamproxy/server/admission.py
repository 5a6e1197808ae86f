"""Admission control: at most `server.max_concurrent_streams` chat requests in flight per
worker (streamed or not: both hold an upstream connection for the whole generation). One more
is refused at once with 503 and `Retry-After`, rather than admitted to slow every stream down.

503, not 429: the client did nothing wrong and is not over any quota of its own; this
instance is full. A load balancer or client retry then goes elsewhere or comes back later
(the OpenAI SDKs retry both, honouring Retry-After). 429 stays the answer for a proxy key over
its own rate limit (server/auth.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from streamproxy.errors import Overloaded
from streamproxy.observe.metrics import metrics
from streamproxy.server.observing import observe_rejection

if TYPE_CHECKING:
    from streamproxy.server.exchange import Exchange

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RETRY_AFTER_SECONDS = 1


class Admission:
    """`active` is this worker's count of admitted requests in flight (also the
    streamproxy_active_streams gauge)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self._gauge = metrics().active_streams

    def admits(self, request: web.Request) -> bool:
        """Only generation requests count; /healthz, /metrics, model lists and the stored
        completions API must keep answering when the proxy is full."""
        return request.method == "POST" and request.path == "/v1/chat/completions"

    def enter(self, request: web.Request | Exchange) -> None:
        """Count one more request in, or refuse it (503, counted and logged)."""
        if self.active >= self.limit:
            err = Overloaded(f"The proxy is serving its limit of {self.limit} concurrent "
                             "requests; retry shortly.", retry_after=RETRY_AFTER_SECONDS)
            observe_rejection(request, err, "overloaded")
            raise err
        self.active += 1
        self._gauge.inc()

    def leave(self) -> None:
        self.active -= 1
        self._gauge.dec()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not self.admits(request):
            return await handler(request)
        self.enter(request)
        try:
            return await handler(request)
        finally:
            self.leave()


ADMISSION = web.AppKey("streamproxy_admission", Admission)
