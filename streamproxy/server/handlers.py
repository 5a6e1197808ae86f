"""HTTP handlers. The chat handler reads top-down: body → request → plan → open → relay."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING

from aiohttp import web

from streamproxy.errors import ProxyError
from streamproxy.openai_api.request import parse_chat_request
from streamproxy.record import RequestRecord
from streamproxy.relay import relay
from streamproxy.routing.target import Target

if TYPE_CHECKING:
    from streamproxy.server.app import AppState

TRACE_HEADER = "x-portkey-trace-id"
SSE_HEADERS = {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
}


def _state(request: web.Request) -> AppState:
    from streamproxy.server.app import STATE

    return request.app[STATE]


def _response_headers(record: RequestRecord, target: Target | None) -> dict[str, str]:
    headers = {TRACE_HEADER: record.trace_id}
    if target is not None:
        headers["x-portkey-provider"] = target.provider.name
    if record.attempts:
        headers["x-portkey-retry-attempt-count"] = str(record.attempts - 1)
    if record.target_index is not None:
        headers["x-portkey-last-used-option-index"] = str(record.target_index)
    return headers


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    record = RequestRecord(trace_id=request.headers.get(TRACE_HEADER) or uuid.uuid4().hex)
    try:
        req = parse_chat_request(await request.read(), state.limits)
        record.stream = req.stream
        targets = [state.router.resolve(request.headers, req.model)]
        if req.stream:
            return await _stream(request, state, req, targets, record)
        body = await state.executor.complete(req, targets, record)
        record.first_byte = time.monotonic()
        return web.Response(body=body, content_type="application/json",
                            headers=_response_headers(record, targets[record.target_index or 0]))
    except ProxyError as e:
        record.status = e.status
        record.error_type, record.error_code = e.error_type, e.code
        raise
    except BaseException:
        record.client_disconnected = True
        raise
    finally:
        record.finished = time.monotonic()
        for observe in state.observers:
            observe(record)


async def _stream(request: web.Request, state: AppState, req, targets: list[Target],
                  record: RequestRecord) -> web.StreamResponse:
    stream = await state.executor.open_stream(req, targets, record)
    response = web.StreamResponse(headers={**SSE_HEADERS,
                                           **_response_headers(record, stream.target)})
    try:
        await response.prepare(request)  # the commit point: headers are gone
    except BaseException:
        stream.deadline.cancel()
        stream.response.close()
        raise
    record.first_byte = time.monotonic()
    await relay(stream, response, record)
    if not record.client_disconnected:
        try:
            await response.write_eof()
        except ConnectionError:
            record.client_disconnected = True
    return response


async def list_models(request: web.Request) -> web.Response:
    config = _state(request).config
    data = []
    for name, cfg in config.providers.items():
        models = list(cfg.models)
        if cfg.default_model and cfg.default_model not in models:
            models.insert(0, cfg.default_model)
        data.extend({"id": f"{name}/{m}", "object": "model", "created": 0, "owned_by": name}
                    for m in models)
    return web.json_response({"object": "list", "data": data})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})
