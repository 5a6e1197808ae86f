"""Rate-limit buckets shared by the workers of one generation (`--workers N`).

Without this, each worker would keep its own token bucket per proxy key and a key would get N
times its `rate_limit`. The master makes, before it forks a generation of workers, one small
shared region (server/shared_memory.py) with a (tokens, stamp) slot per rate-limited key;
every worker of that generation takes its tokens there, under the region's lock. A reload's
new generation gets new buckets (its keys may differ), but a key whose `rate_limit` it keeps
takes its tokens from the same slot as before: a reload is no fresh burst for a client at its
limit, nor are the old workers still draining a second budget. A key whose `rate_limit` it
changes starts with the tokens its old slot had left (at most its new burst), not a full
bucket. One worker alone keeps its buckets in memory (server/auth.py).
"""

from __future__ import annotations

import struct
import time

from streamproxy.config import Config, ConfigError
from streamproxy.server.shared_memory import SharedRegion

_SLOT = struct.Struct("dd")  # tokens (negative: never used), stamp (time.monotonic())


class SharedBuckets:
    def __init__(self, names: list[str], limits: dict[str, tuple[float, int]] | None = None,
                 previous: SharedBuckets | None = None, now: float | None = None) -> None:
        """`limits`: each name's (requests_per_minute, burst); a name `previous` (the serving
        generation's) has with the same limit keeps its slot there (the region stays open
        while a generation uses it); with another limit, its new slot starts with the tokens
        left there at `now` (default: the clock), at most its new burst."""
        self.slots = {name: i for i, name in enumerate(names)}
        self.limits = limits or {}
        self._region = SharedRegion(len(names) * _SLOT.size)
        self._where: list[tuple[SharedRegion, int]] = []  # each slot's region and offset
        for i, name in enumerate(names):
            limit = self.limits.get(name)
            old = (previous.limits.get(name) if previous is not None and name in previous.slots
                   else None)
            if previous is not None and limit is not None and old == limit:
                self._where.append(previous._where[previous.slots[name]])
                continue
            tokens, stamp = -1.0, 0.0
            if previous is not None and limit is not None and old is not None:
                region, offset = previous._where[previous.slots[name]]
                with region.locked() as mapped:
                    left, since = _SLOT.unpack_from(mapped, offset)
                if left >= 0:  # (never used: the new one starts full)
                    tokens, stamp = carried(left, since, old, limit[1],
                                            time.monotonic() if now is None else now)
            _SLOT.pack_into(self._region.map, i * _SLOT.size, tokens, stamp)
            self._where.append((self._region, i * _SLOT.size))

    @classmethod
    def for_config(cls, config: Config, previous: SharedBuckets | None = None,
                   now: float | None = None) -> SharedBuckets:
        from streamproxy.server.auth import parse_auth

        try:
            auth = parse_auth(config)
        except ConfigError:  # the workers report it
            auth = None
        limits = {k.name: (k.bucket.per_minute, k.bucket.burst)
                  for k in (auth.keys if auth is not None else ()) if k.bucket is not None}
        return cls(list(limits), limits, previous, now)

    def take(self, slot: int, burst: int, rate: float, now: float) -> float | None:
        """`TokenBucket.take` on the shared slot: None when granted, else seconds to wait."""
        shared, offset = self._where[slot]
        with shared.locked() as region:
            tokens, stamp = _SLOT.unpack_from(region, offset)
            fresh = tokens < 0
            tokens, stamp, wait = take_token(float(burst) if fresh else tokens,
                                             None if fresh else stamp, burst, rate, now)
            _SLOT.pack_into(region, offset, tokens, stamp)
        return wait


def take_token(tokens: float, stamp: float | None, burst: int, rate: float,
               now: float) -> tuple[float, float, float | None]:
    """One token bucket step: (tokens, stamp) after taking one at `now`, and None when granted,
    else the seconds until a token is available. `stamp` None: never used. (Another worker may
    have read a later clock and written first: time never runs back.)"""
    if stamp is not None and now > stamp:
        tokens = min(float(burst), tokens + (now - stamp) * rate)
    stamp = now if stamp is None else max(now, stamp)
    if tokens >= 1.0:
        return tokens - 1.0, stamp, None
    return tokens, stamp, (1.0 - tokens) / rate


def carried(tokens: float, stamp: float, old: tuple[float, int], burst: int,
            now: float) -> tuple[float, float]:
    """A reload's changed `rate_limit`: (tokens, stamp) of the key's new bucket, the tokens
    its old one (`old`: requests_per_minute, burst) had at `now`, at most the new `burst`. A
    full new bucket was a fresh burst for a client at its limit at every SIGHUP."""
    if now > stamp:
        tokens = min(float(old[1]), tokens + (now - stamp) * old[0] / 60.0)
    return min(float(burst), tokens), max(now, stamp)
