"""Rate-limit buckets shared by the workers of one generation (`--workers N`).

Without this, each worker would keep its own token bucket per proxy key and a key would get N
times its `rate_limit`. The master makes, before it forks a generation of workers, one small
shared region (server/shared_memory.py) with a (tokens, stamp) slot per rate-limited key;
every worker of that generation takes its tokens there, under the region's lock. A reload's
new generation gets new buckets (its keys may differ). One worker alone keeps its buckets in
memory (server/auth.py).
"""

from __future__ import annotations

import struct

from streamproxy.config import Config, ConfigError
from streamproxy.server.shared_memory import SharedRegion

_SLOT = struct.Struct("dd")  # tokens (negative: never used), stamp (time.monotonic())


class SharedBuckets:
    def __init__(self, names: list[str]) -> None:
        self.slots = {name: i for i, name in enumerate(names)}
        self._region = SharedRegion(len(names) * _SLOT.size)
        for i in range(len(names)):
            _SLOT.pack_into(self._region.map, i * _SLOT.size, -1.0, 0.0)

    @classmethod
    def for_config(cls, config: Config) -> SharedBuckets:
        from streamproxy.server.auth import parse_auth

        try:
            auth = parse_auth(config)
        except ConfigError:  # the workers report it
            auth = None
        keys = auth.keys if auth is not None else ()
        return cls([k.name for k in keys if k.bucket is not None])

    def take(self, slot: int, burst: int, rate: float, now: float) -> float | None:
        """`TokenBucket.take` on the shared slot: None when granted, else seconds to wait."""
        offset = slot * _SLOT.size
        with self._region.locked() as region:
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
