"""Graceful shutdown of one worker: stop taking work, let running requests finish up to a grace
period, then end the rest with an OpenAI error instead of cutting them.

The handler registers each chat request's task (`enter`/`leave`, per request, never per chunk)
and, at the commit point, the stream's `Deadline` (`committed`). The handler passes its task
in: Python 3.11's `asyncio.current_task()` makes a getpid() system call each time. Ending a
committed stream goes through that deadline (`Deadline.abort`), so the relay writes one error
frame exactly as it does for a timeout. A request that has not committed yet is cancelled and
answers 503, and so does a request that comes after that (before, a request that comes on a
connection still open is served: the fronts close its connection after it, `wind_down`). A
cache hit's replay (`replaying`) is left to finish: its whole answer is one write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from streamproxy.errors import Overloaded
from streamproxy.upstream.deadline import Deadline

# `_requests`' mark for a cache hit's replay: nothing to end, its answer is written whole
REPLAY = object()


def shutdown_error() -> Overloaded:
    return Overloaded("The proxy is shutting down; retry the request.", code="shutting_down",
                      retry_after=1)


class Drain:
    __slots__ = ("_cancelled", "_idle", "_on_abort", "_requests", "aborted", "closing",
                 "draining", "unready")

    def __init__(self) -> None:
        self.unready = False  # /healthz answers 503 (`server.drain_delay`: requests still served)
        self.draining = False  # ... no new connections; the open ones close after their answers
        self.aborted = False  # the grace period is over: what is left gets an error
        # ... and the time the aborted had to end too: the runner's cleanup closes what is
        # still open (a client that reads nothing), so a request cancelled now is our cut
        self.closing = False
        self._requests: dict[asyncio.Task[object], Deadline | object | None] = {}
        self._cancelled: set[asyncio.Task[object]] = set()  # aborted before their commit
        self._idle: asyncio.Event | None = None
        self._on_abort: list[Callable[[], None]] = []

    @property
    def active(self) -> int:
        return len(self._requests)

    def on_abort(self, hook: Callable[[], None]) -> None:
        """`hook` is called at the grace's end: a front's requests that are no task yet (a body
        still arriving) are answered then."""
        self._on_abort.append(hook)

    def enter(self, task: asyncio.Task[object]) -> None:
        self._requests[task] = None

    def committed(self, deadline: Deadline) -> None:
        """The stream carried by `deadline`'s task has committed."""
        self._requests[deadline.task] = deadline

    def replaying(self, task: asyncio.Task[object]) -> None:
        """`task` answers a cache hit: the grace's end lets it finish. Its whole stream goes to
        the socket in one write, [DONE] included, so there is nothing to end with an error
        frame; cancelled while the write waited for a slow client, the aiohttp front wrote a
        503's head into the 200's chunked body."""
        self._requests[task] = REPLAY

    def leave(self, task: asyncio.Task[object]) -> None:
        self._requests.pop(task, None)
        if self._idle is not None and not self._requests:
            self._idle.set()

    def owns(self) -> bool:
        """In a handler that caught CancelledError: was it our abort of a request that had not
        committed, and nobody else's cancel?"""
        task = asyncio.current_task()
        if task is None or task not in self._cancelled:
            return False
        self._cancelled.discard(task)
        return task.uncancel() == 0

    def announce(self) -> None:
        """The drain is coming: load balancers are told (`/healthz`), requests still served."""
        self.unready = True

    def start(self, leaving: bool = True) -> None:
        """`leaving`: the instance goes (a stop), so `/healthz` fails; a reload's old app or
        workers drain while the new ones serve, and the instance stays healthy."""
        self.draining = True
        self.unready = self.unready or leaving

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no chat request is running, at most `timeout` seconds."""
        if not self._requests:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def abort_all(self) -> int:
        """End every running request now: committed streams with an error frame, the others
        with a 503 (cache hits' replays finish). Returns how many it ended."""
        self.aborted = True
        ended = 0
        for task, deadline in list(self._requests.items()):
            if deadline is REPLAY:
                continue
            ended += 1
            if isinstance(deadline, Deadline):
                deadline.abort(shutdown_error())
            else:
                self._cancelled.add(task)
                task.cancel()
        for hook in self._on_abort:
            hook()
        return ended
