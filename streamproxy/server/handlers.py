"""HTTP handlers. The chat handler reads top-down: body → request → plan → open → relay."""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING

from aiohttp import web

from streamproxy.errors import ProxyError
from streamproxy.openai_api.chunks import error_frame
from streamproxy.openai_api.request import ChatRequest, parse_chat_request
from streamproxy.record import RequestRecord
from streamproxy.relay import relay
from streamproxy.routing.executor import OpenedStream
from streamproxy.routing.gateway import parse_metadata
from streamproxy.routing.planner import Plan
from streamproxy.routing.target import Target
from streamproxy.server.auth import allowed_targets
from streamproxy.server.drain import shutdown_error
from streamproxy.server.errors import error_response
from streamproxy.server.observing import AUTH_KEY, read_body
from streamproxy.server.sse_writer import SSEWriter
from streamproxy.server.store_and_cache import before_upstream

if TYPE_CHECKING:
    from streamproxy.server.app import AppState

TRACE_HEADER = "x-portkey-trace-id"
PLAN = web.RequestKey("streamproxy_plan", Plan)  # read by the cache for the config's `cache`
SSE_HEADERS = {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
}


class SSEResponse(web.StreamResponse):
    """An event stream whose head leaves with its first frame, in one write. (aiohttp sends a
    prepared StreamResponse's head at once by default: one more syscall and TCP segment before
    the first token. Every SSE response here writes a frame right after `prepare`.)"""

    _send_headers_immediately = False


def _state(request: web.Request) -> AppState:
    from streamproxy.server.app import STATE

    return request.app[STATE]


def _response_headers(record: RequestRecord, target: Target | None) -> dict[str, str]:
    headers = {TRACE_HEADER: record.trace_id}
    if target is not None:
        headers["x-portkey-provider"] = target.provider.name
    if record.attempts:
        headers["x-portkey-retry-attempt-count"] = str(record.attempts - 1)
    if record.option_path is not None:
        headers["x-portkey-last-used-option-index"] = record.option_path
    return headers


def _only_allowed(request: web.Request, plan: Plan) -> None:
    """Drop the attempts the proxy key may not use (403 when none is left)."""
    allowed = {id(t) for t in allowed_targets(request, [a.target for a in plan.attempts])}
    plan.attempts = [a for a in plan.attempts if id(a.target) in allowed]


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    record = RequestRecord(trace_id=request.headers.get(TRACE_HEADER) or os.urandom(16).hex())
    task = asyncio.current_task()
    assert task is not None
    state.drain.enter(task)
    try:
        if state.drain.draining:
            return _refuse_while_draining(record)
        req = parse_chat_request(await read_body(request, record), state.limits)
        record.stream = req.stream
        record.metadata = parse_metadata(request.headers)
        plan = state.gateway.plan(request.headers, req, record.metadata)
        _only_allowed(request, plan)
        request[PLAN] = plan
        # Stored completions and the response cache (issue 7): a cache hit is answered here.
        cached = await before_upstream(request, req, plan.attempts[0].target, record)
        if cached is not None:
            return cached
        if req.stream:
            return await _stream(request, state, req, plan, record)
        body = await state.executor.complete(req, plan, record)
        record.first_byte = time.monotonic()
        record.bytes_out = len(body)
        served = plan.attempts[record.target_index or 0].target
        return web.Response(body=body, content_type="application/json",
                            headers=_response_headers(record, served))
    except ProxyError as e:
        record.status = e.status
        record.error_type, record.error_code = e.error_type, e.code
        raise
    except asyncio.CancelledError:
        if state.drain.owns():  # the shutdown grace ran out before this request committed
            err = shutdown_error()
            record.status, record.error_type, record.error_code = 503, err.error_type, err.code
            raise err from None
        record.client_disconnected = True
        raise
    except BaseException as e:
        if isinstance(e, Exception):
            record.status = 500  # a bug; error_middleware answers 500
        else:
            record.client_disconnected = True
        raise
    finally:
        state.drain.leave(task)
        record.finished = time.monotonic()
        for observe in state.observers:
            observe(record)


async def _stream(request: web.Request, state: AppState, req: ChatRequest, plan: Plan,
                  record: RequestRecord) -> web.StreamResponse:
    interval = state.config.server.keepalive_interval
    if interval:
        stream, response = await _open_with_keepalives(request, state, req, plan, record,
                                                        interval)
        if stream is None:
            return response
    else:
        stream, response = await state.executor.open_stream(req, plan, record), None
    if response is None:
        response = SSEResponse(headers={**SSE_HEADERS,
                                        **_response_headers(record, stream.target)})
        try:
            await response.prepare(request)  # the commit point: headers are gone
        except BaseException:
            stream.deadline.cancel()
            stream.response.close()
            raise
    record.first_byte = time.monotonic()
    state.drain.committed(stream.deadline)  # a shutdown now ends it with an error frame
    try:
        await relay(stream, SSEWriter(request, response), record)
    finally:
        state.drain.leave(stream.deadline.task)
    if not record.client_disconnected:
        try:
            await response.write_eof()
        except ConnectionError:
            record.client_disconnected = True
    return response


async def _open_with_keepalives(request: web.Request, state: AppState, req: ChatRequest,
                                plan: Plan, record: RequestRecord, interval: float,
                                ) -> tuple[OpenedStream | None, web.StreamResponse | None]:
    """Open the upstream while sending `: keep-alive` comments every `interval` seconds once
    the first event is late. The first comment commits the response (200, SSE headers), so a
    failure after it is an error frame, not a fallback."""
    opening = asyncio.ensure_future(state.executor.open_stream(req, plan, record))
    response: web.StreamResponse | None = None
    try:
        while not (await asyncio.wait({opening}, timeout=interval))[0]:
            if response is None:
                response = SSEResponse(headers={**SSE_HEADERS,
                                                **_response_headers(record, None)})
                await response.prepare(request)
            await response.write(b": keep-alive\n\n")
        try:
            stream = opening.result()
        except ProxyError as e:
            if response is None:
                raise
            await response.write(error_frame(e))
            await response.write_eof()
            record.error_type, record.error_code = e.error_type, e.code
            return None, response
        stream.deadline.rebind()
        return stream, response
    finally:
        if not opening.done():
            opening.cancel()  # the client went away while we waited


async def list_models(request: web.Request) -> web.Response:
    """The configured providers' models, as `provider/model`: only the providers the request's
    proxy key may use (`allowed_providers`), like the chat endpoint."""
    config = _state(request).config
    key = request.get(AUTH_KEY)
    allowed = key.allowed_providers if key is not None else None
    data = []
    for name, cfg in config.providers.items():
        if allowed is not None and name not in allowed:
            continue
        models = list(cfg.models)
        if cfg.default_model and cfg.default_model not in models:
            models.insert(0, cfg.default_model)
        data.extend({"id": f"{name}/{m}", "object": "model", "created": 0, "owned_by": name}
                    for m in models)
    return web.json_response({"object": "list", "data": data})


def _refuse_while_draining(record: RequestRecord) -> web.Response:
    """A request on a kept-alive connection after SIGTERM: 503, and the connection closes."""
    err = shutdown_error()
    record.status, record.error_type, record.error_code = err.status, err.error_type, err.code
    response = error_response(err)
    response.force_close()
    return response


async def healthz(request: web.Request) -> web.Response:
    if _state(request).drain.draining:  # load balancers: stop sending here
        return web.json_response({"status": "draining"}, status=503)
    return web.json_response({"status": "ok"})
