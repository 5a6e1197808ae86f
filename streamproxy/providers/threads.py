"""Blocking credential work run off the event loop (Vertex's token fetch, Bedrock's AWS
credential lookup)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import TypeVar

_T = TypeVar("_T")


async def in_daemon_thread(call: Callable[[], _T], name: str) -> _T:
    """`call()` in a thread of its own that nothing waits for at exit: `asyncio.to_thread`'s
    executor is joined by `asyncio.run`, so a fetch that hangs (a token endpoint trickling its
    answer, a token_command until its timeout) held a shutdown up past its grace period."""
    outcome: concurrent.futures.Future[_T] = concurrent.futures.Future()

    def run() -> None:
        # Running: the awaiting task's cancellation no longer cancels `outcome` (setting a
        # cancelled one raised InvalidStateError here, printed as the thread's crash).
        if not outcome.set_running_or_notify_cancel():
            return  # given up before it began
        try:
            outcome.set_result(call())
        except BaseException as e:  # handed to the awaiting task
            outcome.set_exception(e)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await asyncio.wrap_future(outcome)  # (a loop closed meanwhile is left alone)
