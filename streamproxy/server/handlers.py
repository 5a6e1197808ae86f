"""HTTP handlers. The chat handler reads top-down: body → request → plan → open → relay.

`chat` answers through an `Exchange` (server/exchange.py), so the same code serves the aiohttp
route and the lean front (server/front.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import orjson
from aiohttp import web

from streamproxy.errors import NotFound, ProxyError
from streamproxy.ids import random_hex
from streamproxy.openai_api.chunks import error_frame
from streamproxy.openai_api.request import ChatRequest, parse_chat_request
from streamproxy.record import RequestRecord
from streamproxy.relay import KEEPALIVE_COMMENT, relay
from streamproxy.routing.executor import OpenedStream
from streamproxy.routing.gateway import CONFIG_HEADER, parse_metadata
from streamproxy.routing.planner import Plan
from streamproxy.routing.router import listed_model
from streamproxy.server.admission import ADMISSION
from streamproxy.server.auth import allowed_targets
from streamproxy.server.drain import shutdown_error
from streamproxy.server.errors import (
    MAX_TRACE_ID_CHARS,
    TRACE_HEADER,
    trace_headers,
    trace_id_too_long,
)
from streamproxy.server.exchange import (
    AiohttpExchange,
    DeploymentExchange,
    EventWriter,
    Exchange,
    reply_error,
)
from streamproxy.server.observing import AUTH_KEY, CLIENT_CLOSED, read_body
from streamproxy.server.send_timeout import CLIENT_SEND_TIMEOUT
from streamproxy.server.state import STATE, AppState
from streamproxy.server.store_and_cache import before_upstream, head_before_answer

# Portkey's x-portkey-retry-attempt-count when the target whose error is returned used up its
# retries (automatic-retries: "-1: all retries exhausted, request failed").
RETRIES_EXHAUSTED = "-1"
SSE_HEADERS = {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
}


def response_headers(record: RequestRecord, provider: str | None,
                     upstream: bool = True) -> dict[str, str]:
    """The x-portkey-* headers of an answer, a success's or (as Portkey sends them) an
    error's: what is known by then; the trace id also as OpenAI's x-request-id; and
    (`upstream`) the upstream's rate-limit headers (upstream/passed_headers.py)."""
    headers = trace_headers(record.trace_id)
    if upstream and record.upstream_headers:
        headers.update(record.upstream_headers)
    if provider is not None:
        headers["x-portkey-provider"] = provider
    if record.retries is not None:  # (Portkey's: the retries of that target alone)
        headers["x-portkey-retry-attempt-count"] = (
            RETRIES_EXHAUSTED if record.retries_exhausted else str(record.retries))
    if record.option_path is not None:
        headers["x-portkey-last-used-option-index"] = record.option_path
    return headers


def _only_allowed(ex: Exchange, plan: Plan) -> None:
    """Drop the attempts the proxy key may not use (403 when none is left)."""
    targets = [a.target for a in plan.attempts]
    allowed = allowed_targets(ex, targets)
    if allowed is not targets:
        kept = {id(t) for t in allowed}
        plan.attempts = [a for a in plan.attempts if id(a.target) in kept]


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """The aiohttp route; its middlewares (errors, header limits, auth) have run."""
    ex = AiohttpExchange(request)
    await chat(ex)
    assert ex.response is not None
    return ex.response


async def deployment_chat_completions(request: web.Request) -> web.StreamResponse:
    """`POST /openai/deployments/{deployment}/chat/completions?api-version=…`, where the
    AzureOpenAI SDK (and LangChain's AzureChatOpenAI) pointed at the proxy sends a chat, as
    LiteLLM's proxy serves it: the chat route's, the deployment as the model (routed as a
    model is), the `api-key` header the proxy key (server/auth.py). The api-version is the
    SDK's, not a provider's: not read. Served by aiohttp on either front (the lean one hands
    over any other path), so /v1/chat/completions costs nothing more."""
    ex = DeploymentExchange(request, request.match_info["deployment"])
    await chat(ex)
    assert ex.response is not None
    return ex.response


async def chat(ex: Exchange) -> None:
    state = ex.app[STATE]
    key = ex.get(AUTH_KEY)  # (noted first: every answer's log line names it, a drain's 503 too)
    trace_id = ex.headers.get(TRACE_HEADER)
    too_long = trace_id is not None and len(trace_id) > MAX_TRACE_ID_CHARS
    record = RequestRecord(trace_id=random_hex(16) if too_long or not trace_id else trace_id,
                           stream=None, started=ex.arrived,
                           auth_key_name=key.name if key is not None else None)
    task = asyncio.current_task()
    assert task is not None
    state.drain.enter(task)
    try:
        if state.drain.aborted:  # (draining, it is served: its answer closes the connection)
            await _refuse_while_draining(ex, record)
            return
        if too_long:  # (the lean front's: aiohttp's header_limits refused it before)
            raise trace_id_too_long(len(trace_id or ""))
        raw = await read_body(ex, record)
        try:
            req = parse_chat_request(raw, state.limits)
        except ProxyError:
            _note_refused_body(raw, record)
            raise
        record.stream = req.stream
        admission = ex.app[ADMISSION]
        admission.enter()  # only now: a body still arriving holds no slot (admission.py)
        try:
            await _answer(ex, state, req, record)
        finally:
            admission.leave()
    except ProxyError as e:
        _note_metadata(ex, record)
        _note_error(e, record)
        raise
    except asyncio.CancelledError:
        _note_metadata(ex, record)
        if state.drain.owns():  # the shutdown grace ran out before this request committed
            err = shutdown_error()
            _note_error(err, record)  # (its headers too: the log line's trace id, ...)
            raise err from None
        if state.drain.closing:  # not gone: cut by the runner's cleanup, past the grace
            _cut_at_shutdown(record)
            raise
        _client_left(record)
        if ex.send_timed_out:  # not gone: cut by us, for taking nothing (send_timeout.py)
            record.error_code = CLIENT_SEND_TIMEOUT
        raise
    except BaseException as e:
        if isinstance(e, Exception):
            record.status = 500  # a bug; the front answers 500
        else:
            _client_left(record)
        raise
    finally:
        state.drain.leave(task)
        record.finished = time.monotonic()
        for observe in state.observers:
            observe(record)


def _note_error(e: ProxyError, record: RequestRecord) -> None:
    """`e` answers the request: its log line says so, and its headers say what was noted."""
    record.status = e.status
    record.error_type, record.error_code = e.error_type, e.code
    if record.first_byte is None:  # the error's JSON body is the answer (not yet written)
        record.bytes_out = len(e.body())
    e.response_headers = response_headers(record, record.provider)


def _note_refused_body(raw: bytes, record: RequestRecord) -> None:
    """A body refused by validation: its log line and metrics still say whether the client
    asked to stream (the error path only: a valid body is parsed once)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    # (not a JSON object: whether it asked is unknown, null and "" as before its body was read)
    record.stream = bool(body.get("stream")) if isinstance(body, dict) else None


def _note_metadata(ex: Exchange, record: RequestRecord) -> None:
    """An answer before `_answer` read the client's metadata (a refused body, a 413, a
    drain's 503, a client gone while its body arrived): its log line still carries it."""
    if record.metadata is None:
        with contextlib.suppress(ProxyError):  # (the answer's error is the one answered)
            record.metadata = parse_metadata(ex.headers, ex.app[STATE].limits.max_json_depth)


def _cut_at_shutdown(record: RequestRecord) -> None:
    """A request still running when the worker's clean-up closed its connection: its client
    (reading nothing since the grace ended) did not leave, we cut it. A stream's error frame
    noted `shutting_down` already; a replay's 200 gets it."""
    record.client_disconnected = False  # (the relay's catch of the same cancel set it)
    if record.error_code is None:
        err = shutdown_error()
        record.error_type, record.error_code = err.error_type, err.code


def _client_left(record: RequestRecord) -> None:
    record.client_disconnected = True
    if record.first_byte is None and not record.kept_alive:  # nothing was sent: not a 200
        # (nginx's "client closed")
        record.status = CLIENT_CLOSED


async def _answer(ex: Exchange, state: AppState, req: ChatRequest,
                  record: RequestRecord) -> None:
    record.metadata = parse_metadata(ex.headers, state.limits.max_json_depth)
    key = ex.get(AUTH_KEY)
    plan = state.gateway.plan(ex.headers, req, record.metadata,
                              key.allowed_providers if key is not None else None)
    _only_allowed(ex, plan)
    # Stored completions and the response cache (issue 7): the executor answers a hit.
    before_upstream(ex, req, plan.attempts, record)
    if req.stream:
        await _stream(ex, state, req, plan, record)
        return
    body = await state.executor.complete(req, plan, record)
    record.first_byte = time.monotonic()
    record.bytes_out = len(body)
    served = plan.attempts[record.target_index or 0].target
    try:
        await ex.reply(body, headers=response_headers(record, served.provider.name))
    except ConnectionError:  # (as a stream's write_eof)
        record.client_disconnected = True


async def _stream(ex: Exchange, state: AppState, req: ChatRequest, plan: Plan,
                  record: RequestRecord) -> None:
    interval = state.config.server.keepalive_interval
    if interval:
        stream, client = await _open_with_keepalives(ex, state, req, plan, record, interval)
        if stream is None:
            return
    else:
        stream, client = await state.executor.open_stream(req, plan, record), None
    if isinstance(stream, bytes):
        await _replay_cached(ex, state, record, stream, client)
        return
    if client is None:
        try:  # the commit point: from here the client has a 200
            client = await ex.start_events({
                **SSE_HEADERS, **response_headers(record, stream.target.provider.name)})
        except BaseException:
            _close_unrelayed(stream)
            raise
    record.first_byte = time.monotonic()
    state.drain.committed(stream.deadline)  # a shutdown now ends it with an error frame
    try:
        await relay(stream, client, record, interval)
    finally:
        state.drain.leave(stream.deadline.task)
    if not record.client_disconnected:
        try:
            await client.write_eof()
        except ConnectionError:
            record.client_disconnected = True


async def _replay_cached(ex: Exchange, state: AppState, record: RequestRecord, body: bytes,
                         client: EventWriter | None) -> None:
    """A cache hit's stream (`client`: the keep-alive comments' committed one, if any): the
    whole answer and the end, one write, which a shutdown lets finish (drain.py)."""
    task = asyncio.current_task()  # (a hit's, once: no upstream to ask)
    assert task is not None
    state.drain.replaying(task)
    if client is None:
        client = await ex.start_events({**SSE_HEADERS,
                                        **response_headers(record, record.provider)})
    record.first_byte = record.first_token = time.monotonic()  # the whole answer, at once
    record.bytes_out += len(body)  # (after any keep-alive comments, as the relay counts)
    try:
        await client.finish(body)
    except ConnectionError:
        record.client_disconnected = True


async def _open_with_keepalives(ex: Exchange, state: AppState, req: ChatRequest,
                                plan: Plan, record: RequestRecord, interval: float,
                                ) -> tuple[OpenedStream | bytes | None, EventWriter | None]:
    """Open the upstream while sending `: keep-alive` comments every `interval` seconds once
    the first event is late. The first comment commits the response (200, SSE headers): the
    plan's retries and fallbacks still run behind it, and its failure is an error frame."""
    opening = asyncio.ensure_future(state.executor.open_stream(req, plan, record))
    client: EventWriter | None = None
    stream: OpenedStream | bytes | None = None
    try:
        try:
            while not (await asyncio.wait({opening}, timeout=interval))[0]:
                if client is None:
                    looking = head_before_answer(ex, plan.attempts, record)
                    if looking is not None:  # the head carries the cache status
                        await asyncio.wait({opening, looking},
                                           return_when=asyncio.FIRST_COMPLETED)
                        if opening.done():  # (a hit, or a first event no longer late)
                            break
                    client = await ex.start_events({**SSE_HEADERS,
                                                    **_keepalive_head(record, plan)})
                    record.kept_alive = True
                await client.write(KEEPALIVE_COMMENT)
                record.bytes_out += len(KEEPALIVE_COMMENT)
            stream = opening.result()
        except ProxyError as e:
            if client is None:
                raise
            await _end_with_error(client, record, e)
            return None, client
        except ConnectionError:  # the client's reset came before its cancel (as the relay's)
            record.client_disconnected = True
            return None, client
        except asyncio.CancelledError:
            # The shutdown grace ran out while the first event was late: once the comments
            # have committed a 200, the answer is an error frame, as for a running stream.
            if client is None or not state.drain.owns():
                raise
            await _end_with_error(client, record, shutdown_error())
            return None, client
        if isinstance(stream, OpenedStream):  # (not a cache hit's answer)
            stream.deadline.rebind()
        return stream, client
    finally:
        if stream is None:  # nobody will relay what the opening gives
            if not opening.done():
                opening.cancel()  # the client went away (or the worker stops) while we waited
            # Closed once done: a stream that opened in this same loop iteration, or one
            # opened after all because the cancel never reached it (redis-py's cache lookup
            # swallows one), which held its upstream connection, busy, for good.
            opening.add_done_callback(_close_if_opened)


def _keepalive_head(record: RequestRecord, plan: Plan) -> dict[str, str]:
    """The head the first keep-alive comment commits, before any target answered: of the
    x-portkey-* headers an answer carries, those already known (once committed, no header can
    follow: the SDKs read no trailers). The provider when every target of the plan is its; the
    option when the plan has one target (a cache hit answers in its name too), and its retry
    count and the upstream's headers (its head may have come before a late first event) when
    it has no retries: that one try is the answer. Not the count or the upstream headers so
    far: the answer's may differ (a retry or a fallback to come), and a failed try's rate
    limits or `x-should-retry` would be read as the answer's."""
    attempts = plan.attempts
    final = len(attempts) == 1 and attempts[0].refusal is None and attempts[0].retry.attempts == 0
    providers = {a.target.served().provider.name for a in attempts}
    headers = response_headers(record, providers.pop() if len(providers) == 1 else None,
                               upstream=final)
    headers.pop("x-portkey-retry-attempt-count", None)
    if len(attempts) == 1 and attempts[0].refusal is None:
        headers["x-portkey-last-used-option-index"] = attempts[0].path
        if final:
            headers["x-portkey-retry-attempt-count"] = "0"
    else:
        headers.pop("x-portkey-last-used-option-index", None)
    return headers


def _close_if_opened(opening: asyncio.Future[OpenedStream | bytes]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opened = opening.result()
        if isinstance(opened, OpenedStream):
            _close_unrelayed(opened)


def _close_unrelayed(stream: OpenedStream) -> None:
    stream.deadline.cancel()
    stream.response.close()


async def _end_with_error(client: EventWriter, record: RequestRecord, err: ProxyError) -> None:
    """A committed stream that never opened: one error frame, and the body's end."""
    record.error_type, record.error_code = err.error_type, err.code
    frame = error_frame(err)
    try:
        await client.write(frame)
        record.bytes_out += len(frame)
        await client.write_eof()
    except ConnectionError:  # the client's reset came before its cancel (as the relay's)
        record.client_disconnected = True


async def _refuse_while_draining(ex: Exchange, record: RequestRecord) -> None:
    """A request that came once the drain's grace period was over: 503, and the connection
    closes."""
    err = shutdown_error()
    _note_error(err, record)  # (its bytes too: the 503's JSON is the answer)
    await reply_error(ex, err, close=True)


def _models(request: web.Request) -> list[dict[str, object]]:
    """The configured providers' models, as `provider/model`: only the providers the request's
    proxy key may use (`allowed_providers`), like the chat endpoint; and with headers naming
    where every chat goes (x-portkey-provider, a virtual key, x-portkey-config), only those
    providers' (another's `name/model` would be sent to them as the model's name)."""
    config = request.app[STATE].config
    gateway = request.app[STATE].gateway
    key = request.get(AUTH_KEY)
    allowed = key.allowed_providers if key is not None else None
    only = gateway.header_providers(request.headers)
    data: list[dict[str, object]] = []
    for name, cfg in config.providers.items():
        if (allowed is not None and name not in allowed) or (only is not None
                                                             and name not in only):
            continue
        models = list(dict.fromkeys(cfg.models))  # (a model written twice is listed once)
        if cfg.default_model and cfg.default_model not in models:
            models.insert(0, cfg.default_model)
        data.extend({"id": f"{name}/{m}", "object": "model", "created": 0, "owned_by": name}
                    for m in models)
    # A `routes:` alias is a model a chat request names as it is (`smart` runs its config),
    # for a key that may use one of its providers (the chat's 403 otherwise); not under an
    # x-portkey-config, which runs instead.
    if not request.headers.get(CONFIG_HEADER):
        data.extend({"id": alias, "object": "model", "created": 0, "owned_by": "streamproxy"}
                    for alias in gateway.settings.routes
                    if allowed is None or not allowed.isdisjoint(gateway.route_providers(alias)))
    return data


async def list_models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": _models(request)})


async def retrieve_model(request: web.Request) -> web.Response:
    """`GET /v1/models/{model}` (the SDKs' `models.retrieve`): one of the listed models, else
    OpenAI's 404. The SDKs percent-encode the id's `/`; aiohttp decodes it. The model is
    named as a chat request with the same headers would be served: with `x-portkey-provider`
    or a virtual key a bare one is that provider's, not the default's; under a config
    (x-portkey-config, `default_config`) the first of its targets' models that is listed
    (a fallback's included; a conditional's pick for the model and x-portkey-metadata)."""
    model = request.match_info["model"]
    gateway = request.app[STATE].gateway
    headers = request.headers
    if model in gateway.settings.routes and not headers.get(CONFIG_HEADER):
        served = [model]  # (an alias wins, as in chat, unless a config header runs instead)
    else:
        served = gateway.config_served(
            headers, model, parse_metadata(headers, request.app[STATE].limits.max_json_depth))
        if served is None:  # the plain path
            routed = gateway.routed_model(headers, model) or model
            served = [listed_model(request.app[STATE].config, routed)]
    items = {item["id"]: item for item in _models(request)}
    for listed in served:
        if listed in items:
            return web.json_response({**items[listed], "id": model})
    raise NotFound(f"The model `{model}` does not exist or you do not have access to it.",
                   code="model_not_found", error_type="invalid_request_error")  # as OpenAI


async def healthz(request: web.Request) -> web.Response:
    if request.app[STATE].drain.unready:  # load balancers: stop sending here
        return web.json_response({"status": "draining"}, status=503)
    return web.json_response({"status": "ok"})
