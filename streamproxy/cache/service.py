"""The response cache around one chat request.

Before routing (`before_upstream`): no cache config → DISABLED. Otherwise the key is computed
and, unless `x-portkey-cache-force-refresh: true` (REFRESH), looked up: a fresh entry is a HIT
and is answered right here — a stream replayed as SSE in one write, or the completion object —
with no upstream call. A MISS (or REFRESH) sets `record.capture`, so the executor tees the
answer into a CompletionBuilder as it streams past, and notes the key in `record.pending`.
After the request (`observe`): a complete, successful answer is written in a background task;
an errored, truncated, cancelled or disconnected one is never cached.
The status goes out as `x-portkey-cache-status` on every chat response (`on_response_prepare`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from streamproxy.cache import entry as cached
from streamproxy.cache.backends import CacheBackend, MemoryCache, RedisCache
from streamproxy.cache.config import (
    FORCE_REFRESH_HEADER,
    NAMESPACE_HEADER,
    CacheSettings,
    max_age_for,
)
from streamproxy.cache.key import cache_key
from streamproxy.openai_api.request import ChatRequest
from streamproxy.record import RequestRecord
from streamproxy.routing.executor import new_completion_id
from streamproxy.routing.planner import Attempt
from streamproxy.routing.target import Target
from streamproxy.server.exchange import Exchange, HasHeaders
from streamproxy.storage.service import owner_of

log = logging.getLogger("streamproxy.cache")

STATUS_HEADER = "x-portkey-cache-status"
_STATUS = web.RequestKey("streamproxy_cache_status", str)  # for on_response_prepare


@dataclass(slots=True, frozen=True)
class CacheFill:
    """Where an answer will be written: under the key of the target that gave it — the plan's
    first, whose key was looked up, or a fallback, whose own `cache` then decides (Portkey
    keys its cache by target: an answer is never served as another target's)."""

    key: str | None  # None: the first target has no cache (only a fallback's answer is kept)
    max_age: float
    namespace: str
    req: ChatRequest
    attempts: Sequence[Attempt]

    def for_attempt(self, index: int, settings: CacheSettings) -> tuple[str, float] | None:
        if index == 0:
            return None if self.key is None else (self.key, self.max_age)
        attempt = self.attempts[index]
        max_age = max_age_for(attempt.cache, settings)
        if max_age is None:
            return None
        return _key(self.namespace, self.req, attempt.target), max_age


def make_backend(settings: CacheSettings) -> CacheBackend:
    if settings.backend == "redis":
        return RedisCache(settings.redis_url, timeout=settings.redis_timeout,
                          max_bytes=settings.max_bytes,
                          max_connections=settings.redis_max_connections)
    return MemoryCache(settings.max_entries, settings.max_bytes)


class ResponseCache:
    def __init__(self, settings: CacheSettings, backend: CacheBackend | None = None) -> None:
        self.settings = settings
        # (`is None`: an empty MemoryCache is falsy, and one passed in must be the one used)
        self.backend = backend if backend is not None else make_backend(settings)
        self._writes: set[asyncio.Task[None]] = set()
        self._warned_malformed = False

    async def before_upstream(self, request: Exchange, req: ChatRequest,
                              attempts: Sequence[Attempt], record: RequestRecord) -> bool:
        """True when the cache answered the request (a hit)."""
        if (req.body.get("n") or 1) > 1:
            _note(request, record, "DISABLED")  # a replay carries one choice
            return False
        max_age = max_age_for(attempts[0].cache, self.settings)  # (the first target's)
        if max_age is None:
            _note(request, record, "DISABLED")
            if len(attempts) > 1 and any(a.cache is not None for a in attempts[1:]):
                # a fallback's answer may be cached
                self._fill_later(record, CacheFill(None, 0, _namespace(request), req, attempts))
            return False
        namespace = _namespace(request)
        target = attempts[0].target
        key = _key(namespace, req, target)
        refresh = request.headers.get(FORCE_REFRESH_HEADER, "").strip().lower() == "true"
        if not refresh:
            entry = await self.backend.get(key)
            if (entry is not None and cached.is_fresh(entry, max_age)
                    and await self._answer(request, req, attempts[0], record, entry)):
                return True
        _note(request, record, "REFRESH" if refresh else "MISS")
        self._fill_later(record, CacheFill(key, max_age, namespace, req, attempts))
        return False

    @staticmethod
    def _fill_later(record: RequestRecord, fill: CacheFill) -> None:
        record.capture = True
        pending = record.pending if record.pending is not None else {}
        pending["cache"] = fill
        record.pending = pending

    async def _answer(self, request: Exchange, req: ChatRequest, attempt: Attempt,
                      record: RequestRecord, entry: dict[str, Any]) -> bool:
        """Answer the request from `entry` (a HIT); False, with nothing sent, when the entry
        cannot answer it: a stream it cannot carry whole, or an entry that claims our format
        but lacks its fields (an older or corrupted one) — a miss, whose answer replaces it."""
        from streamproxy.server.handlers import SSE_HEADERS, response_headers  # (server imports us)

        target = attempt.target
        completion_id, created = new_completion_id(), int(time.time())
        configured = target.model or target.provider.cfg.default_model
        stored = record.pending is not None and "store" in record.pending  # under this id
        try:  # the whole answer is built before the HIT is noted or a byte is sent
            if req.stream and not cached.streams_whole(entry):
                return False
            model = cached.model_of(entry) or configured or ""
            completion = (cached.completion_from(entry, completion_id=completion_id,
                                                 created=created, model=model)
                          if stored or not req.stream else None)
            encoder = finish = None
            if req.stream:
                encoder = cached.ReplayEncoder(cached.upstream_fields(entry),
                                               completion_id=completion_id, created=created,
                                               model=model, include_usage=req.include_usage)
                cached.replay(entry, encoder)
                body = encoder.take()
            else:
                assert completion is not None
                finish = (completion.get("choices") or [{}])[0].get("finish_reason")
                # (dumped here: an entry Redis held may nest deeper than orjson writes)
                body = orjson.dumps(completion)
        except cached.MALFORMED:
            if not self._warned_malformed:
                self._warned_malformed = True
                log.warning("a cache entry could not be replayed (an older or corrupted one?): "
                            "it counts as a miss (logged once)", exc_info=True)
            return False
        _note(request, record, "HIT")
        record.provider, record.model = target.provider.name, configured
        record.option_path = attempt.path  # the target whose entry answered (header, log)
        if stored:
            record.response = completion
        # As Portkey answers a hit: the target's index, and no retries (no upstream asked).
        headers = {**response_headers(record, target.provider.name),
                   "x-portkey-retry-attempt-count": "0"}
        if completion is not None and encoder is None:
            record.first_byte = time.monotonic()
            record.finish_reason, record.usage = finish, completion.get("usage")
            record.bytes_out = len(body)
            await request.reply(body, headers=headers)
            return True
        client = await request.start_events({**SSE_HEADERS, **headers})
        record.first_byte = time.monotonic()
        try:
            await client.finish(body)  # the whole answer and the end: one write
        except ConnectionError:
            record.client_disconnected = True
        record.chunks, record.bytes_out = encoder.chunks, len(body)
        record.finish_reason, record.usage = encoder.finish_reason, encoder.usage_data
        return True

    def observe(self, record: RequestRecord) -> None:
        fill = record.pending.get("cache") if record.pending else None
        if fill is None or not _succeeded(record):
            return
        where = fill.for_attempt(record.target_index or 0, self.settings)
        if where is None:  # a fallback answered, and its target has no cache
            return
        key, max_age = where
        try:
            if record.response is not None:
                entry = cached.from_completion(record.response)
            else:
                builder = record.builder
                if (builder is None or not builder.ended or builder.failure is not None
                        or not builder.replayable):
                    return
                entry = cached.from_builder(builder)
            task = asyncio.get_running_loop().create_task(self.backend.set(key, entry, max_age))
        except Exception:
            log.exception("could not prepare a cache entry")
            return
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def drain(self) -> None:
        """Wait for the cache writes under way (shutdown, tests)."""
        if self._writes:
            await asyncio.wait(list(self._writes), timeout=10)

    async def on_response_prepare(self, request: web.Request | Exchange,
                                  response: HasHeaders) -> None:
        status = request.get(_STATUS)
        if status is not None:
            response.headers[STATUS_HEADER] = status

    async def close(self) -> None:
        await self.drain()
        await self.backend.close()


def _note(request: Exchange, record: RequestRecord, status: str) -> None:
    """The cache status: the response header's, and the record's (the access log; a hit's
    tokens are not the provider's to count again)."""
    request[_STATUS] = record.cache_status = status


def _namespace(request: Exchange) -> str:
    return owner_of(request) + "\n" + request.headers.get(NAMESPACE_HEADER, "")


def _key(namespace: str, req: ChatRequest, target: Target) -> str:
    provider = target.provider
    # The configured base URL, or a custom_host's or an Azure resource's: another server
    # under the same provider name may serve another model under the same name. Not the
    # region (README: the same model answers alike wherever it runs), which is why this is
    # not `provider.endpoint`.
    return cache_key(namespace=namespace, provider=provider.name,
                     model=provider.answering_model(target),
                     body=target.apply_overrides(req.body), headers=target.headers,
                     credential=target.api_key, base_url=provider.answering_server,
                     options=provider.answering_option_values(target))


def _succeeded(record: RequestRecord) -> bool:
    return (record.status < 400 and record.error_type is None
            and not record.client_disconnected)
