"""Per-stream deadlines with one timer: the first-token, idle and total timeouts each expire
on time, whichever order they are configured in, and an early timer re-arms, never expires."""

from __future__ import annotations

import asyncio
from typing import Any

from streamproxy.config import Timeouts
from streamproxy.errors import ProxyError, RequestTimeout, UpstreamTimeout
from streamproxy.upstream.deadline import Deadline


async def _run(timeouts: Timeouts, events_at: tuple[float, ...], wait: float,
               hold: float = 0.0) -> tuple[float | None, str | None]:
    """A task that receives events at the given offsets (the first calls first_event), then
    is held for `hold` seconds (a slow client) if asked, then waits; returns when its
    deadline cancelled it (seconds after start) and why."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    expired: list[tuple[float, str]] = []

    async def stream() -> None:
        deadline = Deadline(timeouts, "p")
        try:
            for i, at in enumerate(events_at):
                await asyncio.sleep(max(0.0, start + at - loop.time()))
                if i == 0:
                    deadline.first_event()
                else:
                    deadline.progress()
            if hold:
                deadline.hold()
                await asyncio.sleep(hold)
                deadline.release()
            await asyncio.sleep(wait)
        except asyncio.CancelledError:
            assert deadline.owns()
            assert isinstance(deadline.expired, UpstreamTimeout)
            expired.append((loop.time() - start, str(deadline.expired)))
        finally:
            deadline.cancel()

    await asyncio.create_task(stream())
    return expired[0] if expired else (None, None)


async def test_first_token_timeout_longer_than_idle_waits_for_the_first_token() -> None:
    # The timer is first armed at the idle time (0.1): it must re-arm, not expire.
    at, why = await _run(Timeouts(first_token=0.4, idle=0.1), (), 1.0)
    assert at is not None and 0.38 <= at < 0.8, at
    assert "first-token" in (why or "")


async def test_idle_timeout_after_the_first_event() -> None:
    at, why = await _run(Timeouts(first_token=5, idle=0.15), (0.05, 0.1, 0.2), 1.0)
    assert at is not None and 0.33 <= at < 0.7, at  # 0.15 after the last read (0.2)
    assert "idle" in (why or "")


async def test_idle_timeout_shorter_than_the_wait_for_the_first_event() -> None:
    # first_token > idle and the first event comes after `idle`: no expiry before it.
    at, why = await _run(Timeouts(first_token=1.0, idle=0.1), (0.25,), 0.5)
    assert at is not None and 0.33 <= at < 0.7, at  # 0.1 after the first event (0.25)
    assert "idle" in (why or "")


async def test_first_token_timeout_shorter_than_idle() -> None:
    at, why = await _run(Timeouts(first_token=0.1, idle=5), (), 1.0)
    assert at is not None and 0.09 <= at < 0.5, at
    assert "first-token" in (why or "")


async def test_total_timeout_caps_a_flowing_stream() -> None:
    reads = tuple(i * 0.05 for i in range(20))
    at, why = await _run(Timeouts(first_token=5, idle=5, total=0.3), reads, 1.0)
    assert at is not None and 0.29 <= at < 0.7, at
    assert "total" in (why or "")


async def test_a_stream_that_keeps_reading_never_expires() -> None:
    reads = tuple(i * 0.03 for i in range(12))
    at, _ = await _run(Timeouts(first_token=0.1, idle=0.1), reads, 0.0)
    assert at is None


async def test_a_held_stream_is_not_timed_out_for_idling_and_counts_again_from_release() -> None:
    # Paused for a slow client 0.4 s with an idle timeout of 0.1: the provider is not idle.
    at, why = await _run(Timeouts(first_token=5, idle=0.1), (0.0,), 0.5, hold=0.4)
    assert at is not None and 0.48 <= at < 0.8, at  # 0.1 after the release (0.4)
    assert "idle" in (why or "")
    at, _ = await _run(Timeouts(first_token=5, idle=0.1), (0.0,), 0.05, hold=0.4)
    assert at is None  # released and done before the idle gap


async def test_the_total_timeout_still_applies_while_held() -> None:
    at, why = await _run(Timeouts(first_token=5, idle=0.1, total=0.3), (0.0,), 0.0, hold=1.0)
    assert at is not None and 0.28 <= at < 0.6, at
    assert "total" in (why or "")


async def test_the_idle_timeout_counts_again_after_a_hold_when_a_total_is_set() -> None:
    # The timer came due (idle) while held, and the total is far: it must not wait for the
    # total once the client has drained and the upstream then stalls.
    at, why = await _run(Timeouts(first_token=5, idle=0.1, total=30), (0.0,), 2.0, hold=0.4)
    assert at is not None, "the stalled stream was not ended by its idle timeout"
    assert "idle" in (why or "")


async def _expiry(timeouts: Timeouts) -> ProxyError | None:
    """What the deadline of a stream that never gets its first event expires with."""

    async def wait() -> ProxyError | None:
        deadline = Deadline(timeouts, "p")
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            assert deadline.owns()
            return deadline.expired
        finally:
            deadline.cancel()
        return None

    return await asyncio.create_task(wait())


async def test_portkeys_request_timeout_expires_as_a_408_and_ours_as_a_504() -> None:
    portkeys = await _expiry(Timeouts(first_token=10, request=0.05))
    assert isinstance(portkeys, RequestTimeout)
    assert (portkeys.status, portkeys.error_type) == (408, "timeout_error")
    assert "50ms" in portkeys.message
    ours = await _expiry(Timeouts(first_token=0.05, request=10))
    assert isinstance(ours, UpstreamTimeout) and not isinstance(ours, RequestTimeout)
    assert ours.status == 504


class _EarlyClock:
    """The running loop's timers, its clock standing `early` seconds before `due`: uvloop
    keeps milliseconds, so its timer may fire up to 1 ms before the time asked for."""

    def __init__(self, loop: asyncio.AbstractEventLoop, due: float, early: float) -> None:
        self._loop, self._now = loop, due - early

    def time(self) -> float:
        return self._now

    def call_at(self, when: float, callback: Any) -> asyncio.TimerHandle:
        return self._loop.call_at(when, callback)


async def _fired_early(timeouts: Timeouts, streaming: bool) -> ProxyError | None:
    """What the deadline expires with when its timer fires 0.5 ms before the total is due."""

    async def wait() -> ProxyError | None:
        deadline = Deadline(timeouts, "p")
        assert timeouts.total is not None
        due = deadline.last_read + timeouts.total  # (its start, before any event)
        if streaming:
            deadline.first_event()
        deadline.cancel()
        deadline.loop = _EarlyClock(deadline.loop, due, 0.0005)  # type: ignore[assignment]
        try:
            deadline._fire()
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return deadline.expired
        finally:
            deadline.cancel()
        return None

    return await asyncio.create_task(wait())


async def test_a_total_whose_timer_fires_a_moment_early_is_the_total() -> None:
    """Under uvloop a total that ran out was told as the first-token timeout's (600 s) in
    about a third of cases, as Portkey's request_timeout's 408 (a 60000 ms wait, after 5 s)
    when one was set, and mid-stream as the idle timeout's."""
    for timeouts, streaming in [(Timeouts(first_token=600, total=0.2), False),
                                (Timeouts(first_token=600, request=60, total=0.2), False),
                                (Timeouts(first_token=600, idle=300, total=0.2), True)]:
        expired = await _fired_early(timeouts, streaming)
        assert isinstance(expired, UpstreamTimeout) and not isinstance(expired, RequestTimeout)
        assert "the total timeout of 0.2s" in expired.message, expired.message


async def test_request_timeout_and_total_both_apply_the_sooner_ends_it() -> None:
    """Portkey's request_timeout (the wait for the answer to start, per try) and the total
    (the whole target) are not one setting: neither replaces the other, whichever runs out
    first ends the try, and at the same moment it is the total's 504."""
    portkeys = await _expiry(Timeouts(first_token=10, request=0.05, total=10))
    assert isinstance(portkeys, RequestTimeout) and portkeys.status == 408
    for request in (10, 0.05):
        total = await _expiry(Timeouts(first_token=10, request=request, total=0.05))
        assert isinstance(total, UpstreamTimeout) and not isinstance(total, RequestTimeout)
        assert total.status == 504 and "total timeout of 0.05s" in total.message
