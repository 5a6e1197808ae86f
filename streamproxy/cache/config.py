"""Where caching is configured.

Per request, in Portkey's form: the config's `cache: {mode: simple, max_age: <seconds>}`,
whichever way the config came (`x-portkey-config` header JSON or name, a route, the default
config: routing/gateway.py); the planner hands each attempt its leaf's (`Attempt.cache`).
A request's `Cache-Control: max-age=N` is the max age of a cache that names none (Portkey's).

The operator's defaults and the backend, in the `cache:` top-level YAML section:

    cache:
      backend: memory            # memory (per process, LRU) | redis (shared by instances)
      redis_url: redis://127.0.0.1:6379/0
      redis_timeout: 1.0         # seconds to wait for a connection, and for each reply
                                 # (a lookup or write: twice this at most, all told)
      redis_max_connections: 50  # per worker process; a burst beyond it waits (then a miss)
      max_entries: 10000         # memory: LRU bound on entries…
      max_bytes: 268435456       # …and on their encoded size
      default_max_age: 604800    # seconds, when a config says no max_age (Portkey: 7 days;
                                 # at most 90 days, Portkey's maximum)
      mode: simple               # optional: cache every request, with no config needed
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from streamproxy.config import Config, ConfigError, positive_seconds, unknown_key
from streamproxy.errors import InvalidRequest

FORCE_REFRESH_HEADER = "x-portkey-cache-force-refresh"
NAMESPACE_HEADER = "x-portkey-cache-namespace"
MODES = ("simple",)
# Portkey's maximum `max_age` (90 days). A longer one is capped, not refused: Redis refuses a
# TTL beyond ~2.9e8 years, so an uncapped "forever" was never cached there.
MAX_AGE_CAP = 90 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class CacheSettings:
    backend: str = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    max_entries: int = 10_000
    max_bytes: int = 256 * 1024 * 1024
    default_max_age: float = 7 * 24 * 3600.0
    mode: str | None = None
    redis_timeout: float = 1.0  # a wait for a connection, a reply; a slow Redis is a miss
    redis_max_connections: int = 50  # per process: requests beyond it wait for one


_KEYS = ("backend", "redis_url", "max_entries", "max_bytes", "default_max_age", "mode",
         "redis_timeout", "redis_max_connections")


def parse_cache_settings(config: Config) -> CacheSettings:
    raw: Any = config.sections.get("cache")
    if raw is None:
        raw = {}
    source = config.source
    if not isinstance(raw, dict):
        raise ConfigError(source, "cache", "must be a mapping")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        where = f"cache.{key}"
        if key == "backend":
            if value not in ("memory", "redis"):
                raise ConfigError(source, where, "must be 'memory' or 'redis'")
        elif key == "redis_url":
            if not isinstance(value, str) or not value.startswith(("redis://", "rediss://",
                                                                   "unix://")):
                raise ConfigError(source, where, "must be a redis://, rediss:// or unix:// URL")
            _check_redis_url(value, source, where)
        elif key in ("max_entries", "max_bytes", "redis_max_connections"):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(source, where, "must be a positive integer")
        elif key in ("default_max_age", "redis_timeout"):
            value = positive_seconds(value, source, where)
            if key == "default_max_age" and value > MAX_AGE_CAP:  # (Redis refused such a
                # TTL on every write: no request without its own max_age was ever cached)
                raise ConfigError(source, where, f"must be at most {MAX_AGE_CAP:.0f} seconds "
                                  "(90 days, Portkey's maximum max_age)")
        elif key == "mode":
            if value not in MODES:
                raise ConfigError(source, where, f"must be one of {', '.join(MODES)}")
        else:
            raise ConfigError(source, where, unknown_key(key, _KEYS))
        out[key] = value
    return CacheSettings(**out)


def _check_redis_url(url: str, source: str, key: str) -> None:
    """The URL as redis-py reads it when the cache is built: a port that is no number, or
    an option's value that is not one, raised its ValueError out of start-up and
    check-config as a traceback."""
    from redis.connection import parse_url

    try:
        parse_url(url)
    except ValueError:  # (not its text: it may quote the password, read where a port goes)
        raise ConfigError(source, key, "is not a Redis URL redis-py reads (its port or "
                          "options)") from None


# A request's `Cache-Control: max-age=N` directive (Portkey's docs write `max-age:N`).
_MAX_AGE = re.compile(r'(?:^|,)[ \t]*max-age[ \t]*[=:][ \t]*"?(\d+)"?[ \t]*(?:,|$)', re.I)


def requested_max_age(cache_control: str) -> float | None:
    """The positive `max-age` of a request's Cache-Control header, else None. Portkey reads it
    as the cache's max age when the config gives none. `no-cache` / `no-store` are not read:
    a browser's DevTools ("Disable cache") sends them on every request, and the cache is the
    config's (x-portkey-cache-force-refresh asks for a fresh answer)."""
    found = _MAX_AGE.search(cache_control) if cache_control else None
    seconds = float(found.group(1)) if found else 0.0
    return seconds or None  # (max-age=0 is no age to keep an answer for: the default's)


def max_age_for(cache: dict[str, Any] | None, settings: CacheSettings,
                requested: float | None = None) -> float | None:
    """Seconds an answer may be served from cache for this request; None = caching is off.
    `requested`: the request's own (`requested_max_age`), for a cache that names none."""
    default = settings.default_max_age if requested is None else min(requested, MAX_AGE_CAP)
    if cache is None:
        return default if settings.mode else None
    mode = cache.get("mode")
    if mode not in MODES:
        raise InvalidRequest(f"Unsupported cache mode {mode!r}: streamproxy supports "
                             "'simple' (exact match) only.", param="cache.mode",
                             code="unsupported_value")
    max_age = cache.get("max_age")
    if max_age is None:
        return default
    if isinstance(max_age, bool) or not isinstance(max_age, int | float) or max_age <= 0:
        raise InvalidRequest("'cache.max_age' must be a positive number of seconds.",
                             param="cache.max_age", code="invalid_value")
    return min(float(max_age), MAX_AGE_CAP)
