"""The response cache around one chat request, per target as in Portkey's gateway.

Before routing (`before_upstream`): no target with a cache config → DISABLED. Otherwise the
request's `TargetLookups` goes to the executor (`record.lookup`), which calls it before each
target's first request (not before its retries): a target without cache is DISABLED; one
with cache has its key computed and, unless `x-portkey-cache-force-refresh: true` (REFRESH),
looked up. A fresh entry is a HIT: the executor returns its answer — a stream's SSE replay,
whole, or the completion object — and that target is not called. On a MISS (or REFRESH) the
target is asked; `record.capture` makes the executor tee the answer into a CompletionBuilder
as it streams past. After the request (`observe`): a complete, successful answer is written,
in a background task, under the key of the target that gave it; an errored, truncated,
cancelled or disconnected one is never cached. The status noted last (the answering
target's) goes out as `x-portkey-cache-status` on every chat response (`on_response_prepare`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
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
    requested_max_age,
)
from streamproxy.cache.key import cache_key
from streamproxy.openai_api.chunks import no_usage
from streamproxy.openai_api.request import ChatRequest
from streamproxy.providers.presets import FAILED_FINISHES
from streamproxy.record import RequestRecord
from streamproxy.routing.executor import as_sent, new_completion_id
from streamproxy.routing.planner import Attempt
from streamproxy.routing.target import Target
from streamproxy.server.exchange import Exchange, HasHeaders
from streamproxy.storage.service import proxy_key_name

log = logging.getLogger("streamproxy.cache")

STATUS_HEADER = "x-portkey-cache-status"
# Finish reasons of answers never kept: cut by a content filter, or ended by a failure once the
# model had begun, a 200 with what came before it (OpenRouter's "error", vLLM's "abort",
# DeepSeek's overload: their presets' failures, which reach a client of `type: openai` as is).
NOT_KEPT = frozenset({"content_filter", *FAILED_FINISHES})
_STATUS = web.RequestKey("streamproxy_cache_status", str)  # for on_response_prepare


class TargetLookups:
    """One request's cache, target by target, as Portkey's gateway keeps it: each target that
    caches (its own `cache`, or its parents') looks up its own key before its first request —
    a primary that failed never hides a fallback's entry — and an answer is written under the
    key of the target that gave it. The executor calls this with the attempt's index and the
    record (as `record.lookup`: not kept here, which would make a cycle that only the garbage
    collector frees); the status noted last, `x-portkey-cache-status`, is then the answering
    target's."""

    __slots__ = ("_attempts", "_cache", "_max_ages", "_namespace", "_refresh", "_req",
                 "_request", "keys", "looking")

    def __init__(self, cache: ResponseCache, request: Exchange, req: ChatRequest,
                 attempts: Sequence[Attempt], max_ages: list[float | None]) -> None:
        self._cache, self._request, self._req = cache, request, req
        self._attempts, self._max_ages = attempts, max_ages
        self._namespace = _namespace(request)
        self._refresh = request.headers.get(FORCE_REFRESH_HEADER, "").strip().lower() == "true"
        self.keys: dict[int, tuple[str, float]] = {}  # index → where its answer is written
        # Done once the lookup under way noted its status (a keep-alive head waits for it).
        self.looking: asyncio.Future[None] | None = None

    async def __call__(self, index: int, record: RequestRecord) -> bytes | None:
        """The cached answer of the attempt at `index` (a HIT, noted on the record), or None:
        the target is asked (MISS, REFRESH, or DISABLED when it has no cache)."""
        request = self._request
        max_age = self._max_ages[index]
        if max_age is None:
            _note(request, record, "DISABLED")
            return None
        attempt = self._attempts[index]
        key = _key(self._namespace, self._req, attempt.target)
        self.keys[index] = key, max_age
        if self._refresh:
            _note(request, record, "REFRESH")
            return None
        looking = self.looking = asyncio.get_running_loop().create_future()
        try:
            entry = await self._cache.backend.get(key)
            # A cancel the lookup swallowed (redis-py's may, as its pool's wait times out) is
            # still the task's: its client left, or the worker stops. Going on would ask the
            # upstream, and spend its tokens, for nobody.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError
            if entry is not None and cached.is_fresh(entry, max_age):
                answer = self._cache.replay(request, self._req, attempt, record, entry)
                if answer is not None:
                    return answer
            _note(request, record, "MISS")
            return None
        finally:
            looking.set_result(None)  # (the status is noted)


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

    def before_upstream(self, request: Exchange, req: ChatRequest,
                        attempts: Sequence[Attempt], record: RequestRecord) -> None:
        """Note DISABLED when no target caches; else hand the executor the request's
        `TargetLookups` and capture the answer (its target's key is known once it is asked)."""
        if (req.body.get("n") or 1) > 1:
            _note(request, record, "DISABLED")  # a replay carries one choice
            return
        # every target's `cache`, checked up front: a bad one is a 400 whatever answers
        requested = requested_max_age(request.headers.get("cache-control", ""))
        max_ages = [max_age_for(a.cache, self.settings, requested) for a in attempts]
        if max_ages.count(None) == len(max_ages):  # no target caches
            _note(request, record, "DISABLED")
            return
        lookups = TargetLookups(self, request, req, attempts, max_ages)
        record.lookup = lookups
        record.capture = True
        pending = record.pending if record.pending is not None else {}
        pending["cache"] = lookups
        record.pending = pending

    def replay(self, request: Exchange, req: ChatRequest, attempt: Attempt,
               record: RequestRecord, entry: dict[str, Any]) -> bytes | None:
        """The answer `entry` gives this request (a HIT, noted on the record): a stream's SSE
        body, whole, or the completion's JSON; None when the entry cannot answer it — a stream
        it cannot carry whole, or an entry that claims our format but lacks its fields (an
        older or corrupted one): a miss, whose answer replaces it."""
        target = attempt.target
        completion_id, created = new_completion_id(), int(time.time())
        configured = target.model or target.provider.cfg.default_model
        stored = record.pending is not None and "store" in record.pending  # under this id
        try:  # the whole answer is built before the HIT is noted
            if req.stream and not cached.streams_whole(entry):
                return None
            model = cached.model_of(entry) or configured or ""
            completion = (cached.completion_from(entry, completion_id=completion_id,
                                                 created=created, model=model)
                          if stored or not req.stream else None)
            encoder = finish = None
            usage: dict[str, Any] | None = None
            if req.stream:
                # (an answer whose upstream reported no usage replays the usage chunk of zeros
                # the client that asked got uncached, a pass-through's too: ChunkSink.zero_usage)
                include_usage = as_sent(req, target).include_usage
                encoder = cached.ReplayEncoder(cached.upstream_fields(entry),
                                               completion_id=completion_id, created=created,
                                               model=model, include_usage=include_usage)
                cached.replay(entry, encoder)
                body = encoder.take()
            else:
                assert completion is not None
                usage = completion.get("usage")
                if usage is None and not target.provider.passthrough:
                    # As the executor answers uncached: a translated answer always has usage
                    # (zeros when the provider reported none; a stream's fill kept none).
                    completion = {**completion, "usage": no_usage()}
                finish = (completion.get("choices") or [{}])[0].get("finish_reason")
                # (dumped here: an entry Redis held may nest deeper than orjson writes)
                body = orjson.dumps(completion)
        except cached.MALFORMED:
            if not self._warned_malformed:
                self._warned_malformed = True
                log.warning("a cache entry could not be replayed (an older or corrupted one?): "
                            "it counts as a miss (logged once)", exc_info=True)
            return None
        _note(request, record, "HIT")
        record.provider, record.model = target.provider.name, configured
        record.passthrough = target.provider.passthrough
        # As Portkey answers a hit: no retries (no upstream asked for this target).
        record.retries, record.retries_exhausted = 0, False
        if stored:
            record.response = completion
        if encoder is not None:
            record.chunks = encoder.chunks
            record.finish_reason, record.usage = encoder.finish_reason, encoder.usage_data
        else:
            assert completion is not None
            record.finish_reason, record.usage = finish, usage  # (null: not reported)
        record.usage_partial = False  # (a failed earlier target's partial count is not this)
        return body

    def observe(self, record: RequestRecord) -> None:
        lookups = record.pending.get("cache") if record.pending else None
        if lookups is None or record.cache_status == "HIT" or not _succeeded(record):
            return
        where = lookups.keys.get(record.target_index or 0)
        if where is None:  # the target that answered has no cache
            return
        key, max_age = where
        try:
            if record.finish_reason in NOT_KEPT:
                # Cut by a filter's verdict on this sampling, or by a failure, not an answer
                # to the question: kept, it would answer every identical request cut for its
                # max_age.
                if record.cache_status != "REFRESH":
                    return
                write = self.backend.delete(key)  # (as for an answer a replay cannot say)
            elif record.response is not None:
                entry = cached.from_completion(record.response,
                                               translated=not record.passthrough)
                write = self.backend.set(key, entry, max_age)
            else:
                builder = record.builder
                if builder is None or not builder.ended or builder.failure is not None:
                    return
                if not builder.replayable:  # (a refusal, audio…: no replay could say it)
                    if record.cache_status != "REFRESH":
                        return
                    # A forced refresh's answer replaces the entry even when it can't be
                    # kept: later requests go upstream, not to the answer it refreshed.
                    write = self.backend.delete(key)
                else:
                    write = self.backend.set(key, cached.from_builder(builder), max_age)
            task = asyncio.get_running_loop().create_task(write)
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
        if status:  # ("": withheld, see withhold_status)
            response.headers[STATUS_HEADER] = status

    async def close(self) -> None:
        await self.drain()
        await self.backend.close()


def lookup_under_way(record: RequestRecord) -> asyncio.Future[None] | None:
    """Done once the request's cache lookup under way has noted its status; None when none is
    under way."""
    lookups = record.pending.get("cache") if record.pending else None
    looking = lookups.looking if lookups is not None else None
    return looking if looking is not None and not looking.done() else None


def withhold_status(request: Exchange) -> None:
    """No cache status on a head sent before the answering target is known (keep-alive
    comments): a status noted so far is an earlier target's, and a fallback may still be
    answered from the cache (its MISS went out on a HIT's replay)."""
    request[_STATUS] = ""


def _note(request: Exchange, record: RequestRecord, status: str) -> None:
    """The cache status: the response header's, and the record's (the access log; a hit's
    tokens are not the provider's to count again)."""
    request[_STATUS] = record.cache_status = status


def _namespace(request: Exchange) -> str:
    return proxy_key_name(request) + "\n" + request.headers.get(NAMESPACE_HEADER, "")


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
