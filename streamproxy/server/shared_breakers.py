"""Circuit-breaker states shared by all the workers of a master (`--workers N`).

A fixed table in a shared region (server/shared_memory.py): a slot per target key, found by
an 8-byte BLAKE2b hash of the key and linear probing, never freed (a key is a target's
provider, model and base URL, so there are few). Updates are read-modify-writes under the
region's lock; the per-request check (`is_open`) reads without it: a slot is filled before
its hash is written, and a state read a moment early is as good as one read a moment later.
A key that finds no slot within `PROBES` of its own (a table full of other targets) keeps its
state in the worker, as without workers.
"""

from __future__ import annotations

import hashlib
import math
import struct
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

from streamproxy.routing.breaker import BreakerState, CircuitBreakers
from streamproxy.server.shared_memory import SharedRegion

_HASH = struct.Struct("Q")  # 0: a free slot
_STATE = struct.Struct("qqdd")  # requests, failures, opened_at, trial_until (NaN: none)
_SLOT_SIZE = _HASH.size + _STATE.size
SLOTS = 4096
PROBES = 64


class SharedBreakerTable:
    def __init__(self, slots: int = SLOTS) -> None:
        self.slots = slots
        self.region = SharedRegion(slots * _SLOT_SIZE)

    def find(self, key: str, claim: bool) -> int | None:
        """The byte offset of `key`'s slot; with `claim` (under the lock), a free one is taken
        for it when it has none. None: no slot (not claimed, or none free nearby)."""
        digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest()
        h = _HASH.unpack(digest)[0] or 1
        region = self.region.map
        for i in range(PROBES):
            offset = ((h + i) % self.slots) * _SLOT_SIZE
            found = _HASH.unpack_from(region, offset)[0]
            if found == h:
                return offset
            if found == 0:
                if not claim:
                    return None
                _STATE.pack_into(region, offset + _HASH.size, 0, 0, math.nan, math.nan)
                _HASH.pack_into(region, offset, h)
                return offset
        return None


class SharedCircuitBreakers(CircuitBreakers):
    def __init__(self, table: SharedBreakerTable,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        self._table = table
        self._offsets: dict[str, int] = {}  # keys whose slot this worker has found

    def _offset(self, key: str, claim: bool) -> int | None:
        offset = self._offsets.get(key)
        if offset is None:
            offset = self._table.find(key, claim)
            if offset is not None:
                self._offsets[key] = offset
        return offset

    def _load(self, key: str) -> BreakerState | None:
        offset = self._offset(key, claim=False)
        if offset is None:
            return super()._load(key)  # never recorded, or kept here (no slot free)
        requests, failures, opened_at, trial_until = _STATE.unpack_from(
            self._table.region.map, offset + _HASH.size)
        return BreakerState(requests, failures, None if math.isnan(opened_at) else opened_at,
                            None if math.isnan(trial_until) else trial_until)

    def _save(self, key: str, st: BreakerState) -> None:
        offset = self._offset(key, claim=True)  # (record() holds the lock)
        if offset is None:
            super()._save(key, st)
            return
        _STATE.pack_into(self._table.region.map, offset + _HASH.size, st.requests, st.failures,
                         math.nan if st.opened_at is None else st.opened_at,
                         math.nan if st.trial_until is None else st.trial_until)

    def _locked(self) -> AbstractContextManager[object]:
        return self._table.region.locked()
