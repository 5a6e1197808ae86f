"""Circuit-breaker states shared by all the workers of a master (`--workers N`).

A fixed table in a shared region (server/shared_memory.py): a slot per target key, found by
an 8-byte BLAKE2b hash of the key and linear probing. Updates are read-modify-writes under the
region's lock; the per-request check (`is_open`) reads without it: a slot is filled before
its hash is written, and a state read a moment early is as good as one read a moment later.

A key names a model and rules a client's config chooses, so the slots are reclaimed: a key
with no free slot within `PROBES` of its own takes the least recently recorded closed one
there (never freed, they filled for good, and every later target's breaker, the operator's
among them, was kept per worker). A slot is never emptied (a probe chain keeps no hole), only
given another hash, so a worker checks that a slot it found still holds its key's hash (read
with the state, in one unpack): a key whose slot went starts again from closed, as one the
in-process map drops. An open breaker is never reclaimed: with every slot near a key open,
the key keeps its state in the worker, as without workers. Except for the operator's: a
client's inline config makes breakers of its own (`BreakerState.client`), and a flood of them,
each opened by a bad request of the client's, filled every slot near a key of the operator's,
which then tripped per worker (after N times its failure_threshold). The operator's keys take
the least recently recorded client-made slot nearby, open or not, when no closed one is left;
a client's key takes a closed one, a client's first.
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
# requests, failures, opened_at, trial_until (NaN: none), recorded_at (when last saved),
# client (1: made by a client's inline config), since (when the counts began; NaN: none)
_STATE = struct.Struct("qqdddqd")
_SLOT = struct.Struct("Q" + _STATE.format)  # the hash and the state, read at once
_SLOT_SIZE = _SLOT.size
SLOTS = 4096
PROBES = 64


def key_hash(key: str) -> int:
    digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return _HASH.unpack(digest)[0] or 1


class SharedBreakerTable:
    def __init__(self, slots: int = SLOTS) -> None:
        self.slots = slots
        self.region = SharedRegion(slots * _SLOT_SIZE)

    def find(self, h: int, claim: bool, client: bool = False) -> int | None:
        """The byte offset of the slot of the key hashed `h`; with `claim` (under the lock), a
        free one is taken for it when it has none, else the least recently recorded nearby of
        the client-made closed ones, the operator's closed ones, and (for an operator's key,
        `client` False) the client-made open ones, in that order. None: no slot (not claimed,
        or none of those nearby)."""
        region = self.region.map
        reclaim, best = None, (3, math.inf)  # (rank, recorded_at): the lowest goes
        for i in range(PROBES):
            offset = ((h + i) % self.slots) * _SLOT_SIZE
            found, _, _, opened_at, _, recorded_at, made, _ = _SLOT.unpack_from(region, offset)
            if found == h:
                return offset
            if found == 0:
                if not claim:
                    return None
                reclaim = offset
                break
            rank = (not made) if math.isnan(opened_at) else 2 if made and not client else 3
            if rank < 3 and (rank, recorded_at) < best:
                reclaim, best = offset, (rank, recorded_at)
        if not claim or reclaim is None:
            return None
        _STATE.pack_into(region, reclaim + _HASH.size, 0, 0, math.nan, math.nan, -math.inf,
                         client, math.nan)
        _HASH.pack_into(region, reclaim, h)
        return reclaim


class SharedCircuitBreakers(CircuitBreakers):
    def __init__(self, table: SharedBreakerTable,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        self._table = table
        self._offsets: dict[str, tuple[int, int]] = {}  # keys whose slot this worker found

    def _offset(self, key: str, claim: bool, client: bool = False) -> tuple[int, int] | None:
        """(offset, hash) of `key`'s slot, as this worker last found it (it may be another
        key's since: _load checks)."""
        found = self._offsets.get(key)
        if found is None:
            h = key_hash(key)
            offset = self._table.find(h, claim, client)
            if offset is None:
                return None
            found = self._offsets[key] = (offset, h)
        return found

    def _read(self, key: str, claim: bool, client: bool = False
              ) -> tuple[int, tuple[int, int, float, float, float, int]] | None:
        found = self._offset(key, claim, client)
        if found is None:
            return None
        offset, h = found
        slot = _SLOT.unpack_from(self._table.region.map, offset)
        if slot[0] != h:  # reclaimed for another key: this one's is gone, or elsewhere
            del self._offsets[key]
            return self._read(key, claim, client) if claim else None
        return offset, slot[1:]

    def _load(self, key: str) -> BreakerState | None:
        read = self._read(key, claim=False)
        if read is None:
            return super()._load(key)  # never recorded, or kept here (no slot free)
        requests, failures, opened_at, trial_until, _, client, since = read[1]
        return BreakerState(requests, failures, None if math.isnan(opened_at) else opened_at,
                            None if math.isnan(trial_until) else trial_until, bool(client),
                            None if math.isnan(since) else since)

    def _save(self, key: str, st: BreakerState) -> bool:
        read = self._read(key, claim=True, client=st.client)  # (record() holds the lock)
        if read is None:
            return super()._save(key, st)
        _STATE.pack_into(self._table.region.map, read[0] + _HASH.size, st.requests,
                         st.failures, math.nan if st.opened_at is None else st.opened_at,
                         math.nan if st.trial_until is None else st.trial_until,
                         self._clock(), st.client, math.nan if st.since is None else st.since)
        return True

    def _locked(self) -> AbstractContextManager[object]:
        return self._table.region.locked()
