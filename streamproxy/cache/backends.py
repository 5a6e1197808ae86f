"""Where cached answers live: an in-process LRU (the default) or Redis (shared by instances).

A backend maps a key to an entry dict (`cache/entry.py`) for `ttl` seconds. Backend trouble
never fails a request: a Redis that is down or slow reads as a miss, and a failed write is
logged and forgotten.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any, Protocol

import orjson

log = logging.getLogger("streamproxy.cache")


class CacheBackend(Protocol):
    async def get(self, key: str) -> dict[str, Any] | None: ...

    async def set(self, key: str, entry: dict[str, Any], ttl: float) -> None: ...

    async def delete(self, key: str) -> None: ...

    async def close(self) -> None: ...


class MemoryCache:
    """LRU bounded by entry count and by size. Entries are kept encoded (orjson bytes), so
    `max_bytes` bounds the memory they hold: decoded, a streamed answer's deltas cost ~6 times
    their JSON (a str object each). A hit parses its entry (~4 µs for 200 deltas, a tenth of
    the replay's encoding)."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        # key → (encoded entry, expires at, monotonic)
        self._items: OrderedDict[str, tuple[bytes, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    async def get(self, key: str) -> dict[str, Any] | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[1] <= time.monotonic():
            self._drop(key)
            return None
        self._items.move_to_end(key)
        return orjson.loads(item[0])  # type: ignore[no-any-return]

    async def set(self, key: str, entry: dict[str, Any], ttl: float) -> None:
        # A copy: orjson's bytes keep the whole buffer it wrote into (32 KiB for a 2 KB entry).
        raw = bytes(memoryview(orjson.dumps(entry)))
        if key in self._items:  # (an answer too big to keep still replaces the older one)
            self._drop(key)
        if len(raw) > self.max_bytes:
            return
        self._items[key] = (raw, time.monotonic() + ttl)
        self.bytes += len(raw)
        while len(self._items) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self._items)))  # the least recently used

    async def delete(self, key: str) -> None:
        if key in self._items:
            self._drop(key)

    def _drop(self, key: str) -> None:
        raw, _ = self._items.pop(key)
        self.bytes -= len(raw)

    async def close(self) -> None:
        self._items.clear()
        self.bytes = 0


class RedisCache:
    """Entries as orjson bytes under `streamproxy:cache:<key>`, expiring with Redis's own TTL.
    An entry over `max_bytes` is not written (as the memory backend keeps none over its bound):
    every hit would carry it whole, in each worker that reads it. It still replaces an older
    entry under its key, which is deleted: after a forced refresh, the old answer is gone.

    Any failure is a miss, not only a RedisError: a server that answers garbage (`+OK` to
    `HELLO 3`) makes redis-py fail inside its parsing, with an AttributeError or a TypeError.

    Each call takes at most twice `timeout`: up to one waiting for a free connection, the
    rest to ask. redis-py's own timeouts bound each reply, and a new connection asks three
    questions before the command: a slow Redis held a lookup (and the request's upstream) up
    to five times `timeout`. (Not once: a lookup cut as the others' pool wait ended freed
    its connection to one of them, which opened a new one only to be cut at once.)"""

    PREFIX = "streamproxy:cache:"

    def __init__(self, url: str, *, timeout: float = 1.0, max_bytes: int | None = None,
                 max_connections: int = 50) -> None:
        import redis.asyncio as redis

        # A blocking pool: a burst of requests shares `max_connections` (redis-py < 8 opens
        # one connection per concurrent command, without bound; 8.x fails those beyond its
        # 100 at once). A request that waits `timeout` for a free connection is a miss.
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=timeout, socket_timeout=timeout,
            socket_connect_timeout=timeout)
        self._redis = redis.Redis.from_pool(pool)
        self.deadline = 2 * timeout  # (see the class)
        self._last_warning = 0.0
        self.max_bytes = max_bytes

    async def get(self, key: str) -> dict[str, Any] | None:
        try:
            async with asyncio.timeout(self.deadline):  # (see the class)
                raw = await self._redis.get(self.PREFIX + key)
        except Exception as e:  # (see the class)
            self._warn("read", e)
            return None
        if raw is None:
            return None
        try:
            entry = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        return entry if isinstance(entry, dict) else None

    async def set(self, key: str, entry: dict[str, Any], ttl: float) -> None:
        raw = orjson.dumps(entry)
        if self.max_bytes is not None and len(raw) > self.max_bytes:
            await self.delete(key)
            return
        try:
            async with asyncio.timeout(self.deadline):
                await self._redis.set(self.PREFIX + key, raw, px=max(1, int(ttl * 1000)))
        except Exception as e:  # (see the class)
            self._warn("write", e)

    async def delete(self, key: str) -> None:
        try:
            async with asyncio.timeout(self.deadline):
                await self._redis.delete(self.PREFIX + key)
        except Exception as e:  # (see the class)
            self._warn("write", e)

    def _warn(self, what: str, err: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_warning >= 60:  # at most once a minute, not once a request
            self._last_warning = now
            log.warning("redis cache %s failed (a miss; logged once a minute): %s: %s", what,
                        type(err).__name__, err)

    async def close(self) -> None:
        await self._redis.aclose()
