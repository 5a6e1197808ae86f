"""Per-stream deadlines — first token, idle gap, total — with one timer per stream.

A read only stores the loop's clock (`progress()`); the timer, when it fires, compares the
clock with the latest read and re-arms itself for the new due time instead of expiring. So a
stream that reads 10,000 times schedules a handful of timers, not 10,000. The first timer is
armed for the earliest time any deadline could fall due (the idle one cannot before
`start + idle`), so a first event that comes sooner does not have to move it. On expiry it cancels
the task that carries the stream and records why, so the task can tell its own timeout from a
client disconnect (`owns()`), as asyncio.timeout does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from streamproxy.config import Timeouts
from streamproxy.errors import ProxyError, RequestTimeout, UpstreamTimeout


class Deadline:
    __slots__ = ("_answered", "_handle", "_held", "_last", "_provider", "_resumed", "_since",
                 "_start", "_streaming", "_task", "_timeouts", "_token_reads", "_total_end",
                 "expired", "loop", "max_gap", "reads")

    def __init__(self, timeouts: Timeouts, provider: str,
                 first_try: float | None = None) -> None:
        """`first_try`: the loop time a retried target was first tried at; its retries share
        its total timeout (none is given a whole one of its own)."""
        # The request's loop, for whoever needs it next (on 3.11 each asyncio lookup of the
        # running loop is a getpid() system call).
        self.loop = asyncio.get_running_loop()
        task = asyncio.current_task(self.loop)
        assert task is not None
        self._task = task
        self._timeouts = timeouts
        self._provider = provider
        self._start = self._last = self.loop.time()
        self._total_end = (None if timeouts.total is None
                           else (self._start if first_try is None else first_try)
                           + timeouts.total)
        self._streaming = False
        # After a commit on a role chunk alone (see first_event): whether the answer began since
        self._answered: Callable[[], bool] | None = None
        self._held = False  # upstream reads paused for a slow client (`hold`)
        # When they last resumed: the idle gap counts from there or the last read, whichever
        # is later. Not `_last`, which the gap metrics read: they include the client's waits.
        self._resumed = self._start
        self._since = self._start
        self.reads = 0  # reads after the first event, and the largest gap between two reads:
        self.max_gap = 0.0  # kept here because progress() already has the clock (metrics)
        # `reads` when the first token came (`token_came`); None while it is still due
        self._token_reads: int | None = 0
        self.expired: ProxyError | None = None  # an UpstreamTimeout, or why abort() ended it
        first = self._start + min(self._first_token(), timeouts.idle)
        if self._total_end is not None:
            first = min(first, self._total_end)
        # call_later from the time in hand: uvloop's call_at is call_later after another
        # Python-level call and clock read (~35 % of arming a timer, once per request).
        self._handle: asyncio.TimerHandle | None = self.loop.call_later(first - self._start,
                                                                        self._fire)

    @property
    def task(self) -> asyncio.Task[object]:
        """The task that carries the stream (cancelled on expiry)."""
        return self._task

    def _first_token(self) -> float:
        """Seconds from the start to the first event: our timeout, or Portkey's if sooner."""
        t = self._timeouts
        return t.first_token if t.request is None else min(t.first_token, t.request)

    def _due(self) -> float | None:
        if self._held:  # the gap is the client's doing: only the total applies
            if self._total_end is None:
                return None
            # ...but the timer comes back within an idle gap: release() (per write) does not
            # re-arm an armed one, which a stall after it would otherwise wait out to the total
            return min(self._total_end, self.loop.time() + self._timeouts.idle)
        due = (max(self._last, self._resumed) + self._timeouts.idle if self._streaming
               else self._start + self._first_token())
        if self._answered is not None:  # the answer may begin any time and its idle gap
            due = min(due, self.loop.time() + self._timeouts.idle)  # end: look by then
        if self._total_end is not None:
            due = min(due, self._total_end)
        return due

    def progress(self) -> None:
        """Called after each upstream read."""
        now = self.loop.time()
        gap = now - self._last
        if gap > self.max_gap:
            self.max_gap = gap
        self._last = now
        self.reads += 1

    def first_event(self, answered: Callable[[], bool] | None = None) -> None:
        """The first upstream event arrived: from now on the idle gap applies. `answered`:
        the event gave the client a role chunk alone (a reasoning model's, sent before it
        thinks in silence), so the first-token timeout runs on until the answer begins, which
        the timer, when it fires, asks `answered()` about (reads do nothing more)."""
        self._last = self._since = self.loop.time()
        if answered is None:
            self._streaming = True
        else:
            self._answered = answered
            self._token_reads = None
        due = self._due()  # later than the armed time, unless the timer already re-armed
        if self._handle is not None and due is not None and due < self._handle.when():
            self._handle.cancel()
            self._handle = self.loop.call_at(due, self._fire)

    def token_came(self) -> None:
        """The latest read carried the first token after a commit on a role chunk alone: the
        gaps count from it, as the silence before it is `first_token`'s, not `idle`'s (once
        a stream; the reads after it pay nothing)."""
        self._since = self._last
        self.max_gap = 0.0
        self._token_reads = self.reads

    @property
    def first_token_due(self) -> bool:
        """Committed on a role chunk alone, with no sign yet that the answer began."""
        return self._answered is not None

    @property
    def last_read(self) -> float:
        """Loop time of the latest upstream read (or of the first event): the keep-alive
        timer reads it, so no read pays for a clock of its own."""
        return self._last

    def hold(self) -> None:
        """The client's buffer is full and upstream reads are paused: the wait is not the
        provider's, so no idle (or first-token) deadline runs until `release()`."""
        self._held = True

    def release(self) -> None:
        """Reads resume: the idle gap counts again, from now."""
        self._held = False
        self._resumed = self.loop.time()
        if self._handle is None and self.expired is None:
            self._handle = self.loop.call_at(self._due(), self._fire)  # type: ignore[arg-type]

    def _fire(self) -> None:
        now = self.loop.time()
        if self._answered is not None and self._answered():
            self._answered = None
            self._streaming = True  # the idle gap counts from the last read
        due = self._due()
        if due is None:  # held, with no total: release() re-arms
            self._handle = None
            return
        if now + 0.001 < due:
            self._handle = self.loop.call_at(due, self._fire)
            return
        self._handle = None
        # As of the time it was due: uvloop keeps milliseconds, and its timer fired up to 1 ms
        # early, before the total's end, which then was told as the first-token (or
        # request_timeout's 408, or idle) timeout that had not run out.
        self.expired = self._expiry(max(now, due))
        self._task.cancel()

    def _expiry(self, now: float) -> UpstreamTimeout:
        t = self._timeouts
        if self._total_end is not None and now >= self._total_end:
            what = f"the total timeout of {t.total:g}s"
        elif self._streaming:
            what = f"the idle timeout of {t.idle:g}s between events"
        elif t.request is not None and t.request <= t.first_token:
            return RequestTimeout(f"Request exceeded the timeout sent in the request: "
                                  f"{t.request * 1000:g}ms (provider '{self._provider}')")
        else:
            what = f"the first-token timeout of {t.first_token:g}s"
        return UpstreamTimeout(f"provider '{self._provider}' exceeded {what}")

    def abort(self, err: ProxyError) -> None:
        """End the stream now with `err` (the worker is shutting down): the task sees it as
        it sees an expiry, so the relay sends one error frame."""
        if self.expired is None:
            self.cancel()
            self.expired = err
            self._task.cancel()

    def rebind(self) -> None:
        """The stream moved to the current task (opened in a helper task, relayed here)."""
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        if self.expired is not None:  # it ran out after the helper task was done, whose
            task.cancel()  # cancel was lost: this task ends the stream as it would have

    def owns(self, exc: asyncio.CancelledError | None = None) -> bool:
        """True when `exc` is our own expiry and nobody else also cancelled the task."""
        return self.expired is not None and self._task.uncancel() == 0

    def gap_stats(self, cut: bool = False) -> tuple[int, float | None, float | None]:
        """(reads, largest gap, mean gap): the reads since the first event, the gaps since
        the first token (`token_came`; the first event when that carried it); gaps None
        without one, or without a token. `cut`: the stream ended without its end event (a
        timeout, the client gone, an error), so the silence since the last read is a gap
        too — the one an idle timeout ended it for, which measured between reads alone it
        was not."""
        reads, end, largest = self.reads, self._last, self.max_gap
        if self._token_reads is None:  # no token: all its silence was the first token's
            return reads, None, None
        gaps = reads - self._token_reads
        if cut:  # (once per stream: no read pays for it)
            end = self.loop.time()
            largest = max(largest, end - self._last)
            gaps += 1
        if not gaps:
            return 0, None, None
        return reads, largest, (end - self._since) / gaps

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
