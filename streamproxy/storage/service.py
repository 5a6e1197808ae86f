"""`store: true` end to end: the decision before routing, the write after the request, and the
`/v1/chat/completions` list / retrieve / update / delete / messages endpoints.

Before routing (`before_upstream`): a request to store has its body snapshotted, its `metadata`
checked, and `record.capture` set so the executor tees the answer into a CompletionBuilder. The
proxy consumes `store` and, when it stores, `metadata`: neither is forwarded to any provider.
After the request (`observe`, an AppState observer): a successful, complete answer is queued
for the backend's background writer; an errored, truncated, cancelled or disconnected one is not
stored at all.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from streamproxy.errors import InvalidRequest, NotFound
from streamproxy.openai_api.chunks import no_usage
from streamproxy.openai_api.request import ChatRequest
from streamproxy.record import RequestRecord
from streamproxy.routing.gateway import CONFIG_HEADER
from streamproxy.routing.router import client_key, model_names, routed_model
from streamproxy.server.auth import PROXY_KEY_HEADER
from streamproxy.server.errors import expect_within_limit
from streamproxy.server.observing import AUTH_KEY
from streamproxy.server.state import STATE
from streamproxy.storage.base import CompletionStore, StoredCompletion
from streamproxy.storage.config import StorageConfig
from streamproxy.storage.objects import (
    check_metadata,
    completion_object,
    deleted_object,
    message_objects,
    messages_page,
    page,
    parse_list_query,
    parse_page,
)
from streamproxy.storage.sqlite import SQLiteStore

if TYPE_CHECKING:
    from streamproxy.server.exchange import Exchange

log = logging.getLogger("streamproxy.storage")
# Hashed with the credentials: an owner is no other digest of a key (auth's, the cache's).
_OWNER_DOMAIN = "streamproxy stored-completions owner v1"
_API_KEY_NAMES = ("api_key", "apiKey")  # a target's key, as portkey_config reads it


def proxy_key_name(request: Mapping[str, Any]) -> str:
    """The name of the proxy key that authenticated the request (server/auth.py), "" when
    auth is off: the cache's namespace (its key also holds the provider key it is sent with)."""
    key = request.get(AUTH_KEY)
    if key is not None:
        return key.name
    return request.get("auth_key_name") or ""


def owner_of(request: Exchange | web.Request) -> str:
    """Whose stored completions a request writes and reads. With auth on, the proxy key's
    name. With auth off, the credentials the client brought — OpenAI scopes stored
    completions by key, and clients with their own provider keys must not read each other's
    prompts: see `credential_owner`."""
    name = proxy_key_name(request)
    return name if name else credential_owner(request.headers)


def credential_owner(headers: Mapping[str, str]) -> str:
    """A hash of the client's provider key (as routing reads it: `Authorization: Bearer`,
    `x-api-key`, `api-key`), its `x-portkey-api-key` (the portkey-ai SDK's `api_key`, sent
    with a placeholder Bearer when the client gives no provider key) and the `api_key`s of an
    inline `x-portkey-config` (the SDK's `config`, sent on every call) — the keys themselves
    are never kept. "" (the anonymous scope, the one all clients shared before) when it sent
    none."""
    provider_key = client_key(headers)
    portkey_key = (headers.get(PROXY_KEY_HEADER) or "").strip()
    config_keys = inline_config_keys(headers.get(CONFIG_HEADER) or "")
    if provider_key is None and not portkey_key and not config_keys:
        return ""
    # (NUL cannot occur in a header value: the separator keeps them apart; a key without
    # inline ones hashes as before, so existing owners keep their rows)
    material = f"{_OWNER_DOMAIN}\0{provider_key or ''}\0{portkey_key}"
    if config_keys:
        material += "\0" + "\0".join(config_keys)
    return "key:" + hashlib.sha256(material.encode("utf-8", "surrogateescape")).hexdigest()


def inline_config_keys(header: str) -> list[str]:
    """The `api_key`s (or `apiKey`s) anywhere in an inline config (its targets', nested),
    sorted and unique; none for a named config (the operator's keys, not the client's) or
    one not JSON (that request was a 400)."""
    text = header.strip()
    if not text.startswith("{"):
        return []
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError:
        return []
    keys: set[str] = set()
    stack = [raw]  # (a loop, not recursion: JSON may nest deeper than Python's stack)
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            # (as the config reads a target's key: a JavaScript client writes `apiKey`)
            for name in _API_KEY_NAMES:
                # stripped, as the config sends it upstream: one key, one owner
                if isinstance(node.get(name), str) and (key := node[name].strip()):
                    keys.add(key)
            targets = node.get("targets")
            if isinstance(targets, list):
                stack.extend(targets)
    return sorted(keys)


@dataclass(slots=True)
class StoreTicket:
    owner: str
    request: dict[str, Any]
    metadata: dict[str, str]
    # the model by the name routing read it (the list's `model` filter matches it)
    request_model: str | None = None


class StoredCompletions:
    def __init__(self, cfg: StorageConfig, store: CompletionStore | None = None,
                 routed: Callable[[Mapping[str, str], str | None], str | None] = routed_model,
                 ) -> None:
        self.cfg = cfg
        # The name routing reads a model by (the app's Gateway.routed_model, which knows its
        # virtual keys): the stored request's model, which the list's filter matches.
        self.routed_model = routed
        self.store: CompletionStore = store or SQLiteStore(cfg.path,
                                                           max_pending=cfg.max_pending)

    # -- the chat request --------------------------------------------------------------------
    def before_upstream(self, request: Exchange, req: ChatRequest,
                        record: RequestRecord) -> None:
        body = req.body
        asked = body.get("store") is True
        if not asked and not self.cfg.force_store:
            if "store" in body:  # store: false — ours to consume too
                del body["store"]
                req.stripped = True
            return
        body.pop("store", None)
        snapshot = dict(body)
        if asked:  # the client's metadata for the stored completion: OpenAI's rules, ours
            metadata = check_metadata(body.pop("metadata", None))
        else:  # stored by the operator's force_store: the request goes on as without it (its
            # metadata forwarded, not a 400 a provider taking it never gave), kept if it fits
            metadata = _fitting_metadata(body.get("metadata"))
        # `raw` is not encoded again here: only a pass-through forwards it, and it encodes a
        # stripped body itself (a translating provider never reads it).
        req.stripped = True
        record.capture = True
        pending = record.pending if record.pending is not None else {}
        pending["store"] = StoreTicket(owner_of(request), snapshot, dict(metadata),
                                       self.routed_model(request.headers,
                                                         snapshot.get("model")))
        record.pending = pending

    def observe(self, record: RequestRecord) -> None:
        ticket = record.pending.get("store") if record.pending else None
        if ticket is None or not _succeeded(record):
            return
        try:
            item = self._stored(record, ticket)
        except Exception:
            log.exception("could not prepare a completion for storage")
            return
        if item is not None:
            self.store.add(item)

    def _stored(self, record: RequestRecord, ticket: StoreTicket) -> StoredCompletion | None:
        answer = record.response
        if answer is None:
            builder = record.builder
            if builder is None or not builder.ended or builder.failure is not None:
                return None
            answer = builder.completion(completion_id=builder.id or record.completion_id or "",
                                        created=builder.created or int(time.time()),
                                        model=record.model or "")
        if not answer.get("id"):
            return None
        if answer.get("usage") is None and not record.passthrough:
            # As the client of a non-streamed answer got it (the executor's zeros): a stream
            # (or a streamed hit) of a provider that reported none was stored without usage.
            answer = {**answer, "usage": no_usage()}
        return StoredCompletion(
            id=answer["id"], owner=ticket.owner, created=_created(answer, record),
            model=_text(answer.get("model")) or record.model or "",
            request_model=ticket.request_model, metadata=ticket.metadata,
            request=ticket.request, response=answer,
            answered_model=f"{record.provider}/{record.model}"
            if record.provider and record.model else None)

    # -- the endpoints -----------------------------------------------------------------------
    def add_routes(self, app: web.Application) -> None:
        r = app.router
        expect = expect_within_limit  # (aiohttp's: plain-text 417s, a 500 for a non-UTF-8 one)
        r.add_get("/v1/chat/completions", self.list_completions, expect_handler=expect)
        r.add_get("/v1/chat/completions/{completion_id}", self.retrieve, expect_handler=expect)
        r.add_post("/v1/chat/completions/{completion_id}", self.update, expect_handler=expect)
        r.add_delete("/v1/chat/completions/{completion_id}", self.delete, expect_handler=expect)
        r.add_get("/v1/chat/completions/{completion_id}/messages", self.list_messages,
                  expect_handler=expect)

    async def list_completions(self, request: web.Request) -> web.Response:
        # (`mock/x`, `@mock/x` and, the default provider's, `x` are one model: a request
        # created under one is listed under each, as `/v1/models/{model}` reads them; a
        # virtual key's `@key/x` is its provider's, as the chat route and the stored row read it)
        config = request.app[STATE].config
        query = parse_list_query(request.query, lambda model: model_names(
            config, self.routed_model(request.headers, model) or model))
        items, has_more = await self.store.list(owner_of(request), query)
        return _json(page([completion_object(i) for i in items], has_more))

    async def retrieve(self, request: web.Request) -> web.Response:
        return _json(completion_object(await self._get(request)))

    async def update(self, request: web.Request) -> web.Response:
        # A leading BOM is dropped, as the chat route drops it (RFC 8259 lets a parser ignore
        # it; a body file saved by a Windows editor has one)
        raw = (await request.read()).removeprefix(b"\xef\xbb\xbf")
        # What is wrong is said as the chat route says it: "Only 'metadata' can be updated"
        # sent a client whose body was cut or not JSON after a field it had sent.
        try:
            body = orjson.loads(raw or b"{}")
        except orjson.JSONDecodeError as e:
            raise InvalidRequest(f"We could not parse the JSON body of your request: {e}",
                                 code="invalid_json") from None
        if not isinstance(body, dict):
            raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
        if "metadata" not in body:
            raise InvalidRequest("Only 'metadata' can be updated on a stored chat completion.",
                                 param="metadata", code="missing_required_parameter")
        extra = sorted(k for k in body if k != "metadata")
        if extra:  # (as OpenAI answers: nothing else of a stored completion changes)
            raise InvalidRequest(f"Unrecognized request argument supplied: {extra[0]}",
                                 param=extra[0], code="unknown_parameter")
        metadata = check_metadata(body["metadata"])
        cid = request.match_info["completion_id"]
        item = await self.store.update_metadata(owner_of(request), cid, metadata)
        if item is None:
            raise _not_found(cid)
        return _json(completion_object(item))

    async def delete(self, request: web.Request) -> web.Response:
        cid = request.match_info["completion_id"]
        if not await self.store.delete(owner_of(request), cid):
            raise _not_found(cid)
        return _json(deleted_object(cid))

    async def list_messages(self, request: web.Request) -> web.Response:
        after, limit, order = parse_page(request.query)
        item = await self._get(request)
        return _json(messages_page(message_objects(item), after, limit, order))

    async def _get(self, request: web.Request) -> StoredCompletion:
        cid = request.match_info["completion_id"]
        item = await self.store.get(owner_of(request), cid)
        if item is None:
            raise _not_found(cid)
        return item

    async def close(self) -> None:
        await self.store.close()


def _fitting_metadata(value: Any) -> dict[str, str]:
    """A forced store's metadata: the client's when within OpenAI's limits, else none."""
    try:
        return check_metadata(value)
    except InvalidRequest:
        return {}


def _not_found(cid: str) -> NotFound:
    # The same answer for "never existed" and "another key's": ids reveal nothing.
    return NotFound(f"No stored chat completion found with id '{cid}'.", param="completion_id",
                    code="not_found")


def _json(obj: Any) -> web.Response:
    return web.Response(body=orjson.dumps(obj), content_type="application/json")


def _created(answer: dict[str, Any], record: RequestRecord) -> int:
    """The row's `created`: the answer's, else (a pass-through's 1e400, "…", null, a float, or
    an int SQLite cannot hold: `int()` raised, or the row was refused, and the completion was
    not stored) the proxy's own. The stored answer keeps the upstream's, as the client got it."""
    created = answer.get("created")
    if type(created) is int and _SQLITE_MIN <= created <= _SQLITE_MAX:
        return created
    return record.created if record.created is not None else int(time.time())


def _text(value: Any) -> str:
    # (a pass-through's model of another type — 1e400, an object — was stored as its str():
    # "inf", "{'name': …}", which no list filter names)
    return value if isinstance(value, str) else ""


_SQLITE_MIN, _SQLITE_MAX = -(1 << 63), (1 << 63) - 1  # an INTEGER column's range


def _succeeded(record: RequestRecord) -> bool:
    return (record.status < 400 and record.error_type is None
            and not record.client_disconnected)
