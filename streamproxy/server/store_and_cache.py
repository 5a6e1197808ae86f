"""Stored completions and the response cache, wired into the app (issue 7).

`install` (from `create_app`) builds both from the config's `storage:` and `cache:` sections,
adds the stored-completion routes, the end-of-request observers and the cache-status header.
`before_upstream` (from the chat handler, once the plan is known) lets storage mark the
request for capture and lets the cache hand the executor its per-target lookups (a hit is
answered before its target is asked).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from streamproxy.cache.config import parse_cache_settings
from streamproxy.cache.service import ResponseCache, lookup_under_way, withhold_status
from streamproxy.openai_api.request import ChatRequest
from streamproxy.record import RequestRecord
from streamproxy.routing.planner import Attempt
from streamproxy.server.exchange import Exchange
from streamproxy.storage.config import parse_storage_config
from streamproxy.storage.service import StoredCompletions

if TYPE_CHECKING:
    from streamproxy.server.state import AppState


@dataclass(slots=True)
class StoreAndCache:
    storage: StoredCompletions
    cache: ResponseCache


FEATURES = web.AppKey("streamproxy_store_and_cache", StoreAndCache)


def install(app: web.Application, state: AppState) -> None:
    features = StoreAndCache(StoredCompletions(parse_storage_config(state.config),
                                               routed=state.gateway.routed_model),
                             ResponseCache(parse_cache_settings(state.config)))
    app[FEATURES] = features
    features.storage.add_routes(app)
    state.observers.append(features.storage.observe)
    state.observers.append(features.cache.observe)
    app.on_response_prepare.append(features.cache.on_response_prepare)
    app.on_cleanup.append(_close)


def before_upstream(ex: Exchange, req: ChatRequest, attempts: Sequence[Attempt],
                    record: RequestRecord) -> None:
    features = ex.app[FEATURES]
    features.storage.before_upstream(ex, req, record)
    features.cache.before_upstream(ex, req, attempts, record)


def head_before_answer(ex: Exchange, attempts: Sequence[Attempt],
                       record: RequestRecord) -> asyncio.Future[None] | None:
    """A head about to be committed before any target answered (keep-alive comments): the
    cache status noted so far is final only when the plan has one target. Then, while its
    lookup is still under way (a slow Redis), the head must wait for the returned future: the
    status is noted once, before the request, and no header can follow the head. The wait is
    the lookup's own, which the backend bounds (Redis: `redis_timeout`, twice at most)."""
    if len(attempts) > 1:
        withhold_status(ex)
        return None
    return lookup_under_way(record)


async def _close(app: web.Application) -> None:
    features = app[FEATURES]
    await features.cache.close()
    await features.storage.close()
