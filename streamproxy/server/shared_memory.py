"""State that the workers of one master share (`--workers N`): a file mapping made by the
master before it forks, with a lock, and what each forked worker inherits from it.

A region is an unlinked temporary file, mapped: the open fd, kept for the object's life, is
what the forked workers share. `locked()` takes a POSIX record lock on it (`lockf`: per
process, released by the kernel if a worker dies holding it). What lives in regions: the rate
limits' token buckets (server/shared_rate.py, one set per generation: its keys may differ; a
key whose rate_limit a reload keeps keeps its slot) and
the circuit breakers' states (server/shared_breakers.py, one table for the master's life: a
reload does not forget that a provider is down). One worker alone keeps both in memory.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streamproxy.server.shared_breakers import SharedBreakerTable
    from streamproxy.server.shared_rate import SharedBuckets


class SharedRegion:
    def __init__(self, size: int) -> None:
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 (kept open: the share)
        self._file.truncate(max(1, size))
        self.map = mmap.mmap(self._file.fileno(), max(1, size))

    @contextlib.contextmanager
    def locked(self) -> Iterator[mmap.mmap]:
        fd = self._file.fileno()
        fcntl.lockf(fd, fcntl.LOCK_EX)
        try:
            yield self.map
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)


@dataclass(frozen=True, slots=True)
class Shared:
    """What a worker inherits from its master."""

    buckets: SharedBuckets | None = None
    breakers: SharedBreakerTable | None = None


_inherited: list[Shared] = [Shared()]


def inherit(shared: Shared) -> None:
    """Set by the master just before it forks a worker: what that worker shares."""
    _inherited[0] = shared


def inherited() -> Shared:
    return _inherited[0]
