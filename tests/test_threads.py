"""The daemon thread that runs blocking credential work (Vertex's tokens, AWS credentials)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from streamproxy.providers.threads import in_daemon_thread


def test_a_call_that_ends_after_its_loop_gave_up_on_it_ends_quietly(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """asyncio.run cancels the task awaiting the call when it ends (a shutdown); the call
    finishing later set a cancelled future: InvalidStateError, the thread's crash printed."""
    crashes: list[Any] = []
    monkeypatch.setattr(threading, "excepthook", crashes.append)
    release = threading.Event()

    def call() -> str:
        release.wait(5)
        return "late"

    async def give_up() -> None:
        run = asyncio.ensure_future(in_daemon_thread(call, "late-call"))  # as a shared run is
        await asyncio.sleep(0.05)
        assert not run.done()

    started = time.monotonic()
    asyncio.run(give_up())  # ends at once: nothing waits for the thread
    assert time.monotonic() - started < 2
    [thread] = [t for t in threading.enumerate() if t.name == "late-call"]
    release.set()
    thread.join(5)
    assert not thread.is_alive() and crashes == []


async def test_the_result_and_the_error_reach_the_caller() -> None:
    assert await in_daemon_thread(lambda: 42, "answer") == 42

    def fail() -> None:
        raise LookupError("nothing")

    with pytest.raises(LookupError, match="nothing"):
        await in_daemon_thread(fail, "failure")


async def test_a_wait_cancelled_as_the_thread_starts_or_runs_ends_quietly(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A request that gives up on a token (its deadline, its client gone) cancels the wait,
    maybe before the thread has marked its future running."""
    errors: list[Any] = []
    monkeypatch.setattr(threading, "excepthook", errors.append)
    release = threading.Event()
    for wait in (0, 0.05):  # cancelled as the thread starts, and while it runs
        task = asyncio.ensure_future(in_daemon_thread(lambda: release.wait(5), "t-cancelled"))
        await asyncio.sleep(wait)
        thread = next(t for t in threading.enumerate() if t.name == "t-cancelled")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        thread.join(5)
        release.clear()
    assert errors == []
