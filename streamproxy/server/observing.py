"""Wiring between the server and the observers (metrics, access log): installing them, the
request-level facts the chat handler notes in its record, and records for requests refused
before the handler ran (auth, rate limit), so those are counted and logged too."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from streamproxy.errors import ProxyError
from streamproxy.observe.access_log import ACCESS_LOGGER, AccessLog, LoggingSettings, parse_logging
from streamproxy.observe.metrics import metrics, metrics_handler, set_circuit_state
from streamproxy.record import RequestRecord
from streamproxy.routing.gateway import AZURE_V1_CHAT_PATH, CHAT_PATH, parse_metadata
from streamproxy.server.errors import (
    BodyTimeout,
    body_too_large,
    client_trace_id,
    expect_within_limit,
    trace_headers,
    undecodable_body,
)

if TYPE_CHECKING:
    from streamproxy.server.exchange import Exchange
    from streamproxy.server.state import AppState

LOGGING = web.AppKey("streamproxy_logging", LoggingSettings)
TRACE_HEADER = "x-portkey-trace-id"
CLIENT_CLOSED = 499  # the status logged for a request its client left before any answer
# Request state: the ProxyKey that authenticated the request (server/auth.py).
AUTH_KEY: web.RequestKey[Any] = web.RequestKey("streamproxy_auth_key", object)


def install_observers(app: web.Application, state: AppState) -> None:
    """Validate `logging:`, register the metrics and access-log observers, serve /metrics."""
    settings = parse_logging(state.config)
    app[LOGGING] = settings
    state.observers.append(metrics().observe)
    # (the providers' models, and those the named configs' targets ask for: a `routes:`
    # alias's traffic is the operator's as much as a listed model's)
    metrics().keep_models(state.gateway.operator_upstream_models())
    if set_circuit_state not in state.breakers.listeners:  # (breakers kept by a reload)
        state.breakers.listeners.append(set_circuit_state)
    if settings.access_log:
        if ACCESS_LOGGER.level == 0:  # not configured by the CLI: don't let root's level hide it
            ACCESS_LOGGER.setLevel("INFO")
        state.observers.append(AccessLog())
    app.router.add_get("/metrics", metrics_handler, expect_handler=expect_within_limit)


async def read_body(request: Exchange, record: RequestRecord) -> bytes:
    """The request body, with its facts noted in the record: size, and the body itself when
    the operator opted in. Too large a body is a typed 413 here, and one that
    stopped arriving a 408 (server/reading.py), so the record gets the right status rather than
    looking like a disconnect; a gzip or deflate body that does not decode is a 400, not a
    bug's 500."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as e:
        raise body_too_large(request.client_max_size) from e
    except BodyTimeout as e:  # (aiohttp's front: the lean one has the body before the handler)
        metrics().rejected.labels("request_timeout").inc()
        raise e.error from None
    except RequestPayloadError as e:  # (aiohttp's decoder failed on the body)
        raise undecodable_body() from e
    # (the client's bytes, not a body the exchange rewrote: DeploymentExchange's)
    received = getattr(request, "received", raw)
    record.bytes_in = len(received)
    settings = request.app.get(LOGGING)
    if settings is not None and settings.log_bodies:
        record.request_body = received
    return raw


def observe_rejection(request: web.Request | Exchange, err: ProxyError, reason: str,
                      auth_key_name: str | None = None) -> None:
    """Count a request refused before any handler ran; a chat request is also logged and
    counted as one (the access log and streamproxy_requests_total are chat requests': a 401
    on /v1/models or /metrics is only a rejection)."""
    metrics().rejected.labels(reason).inc()
    observe_refused_chat(request, err, auth_key_name)


def observe_refused_chat(request: web.Request | Exchange, err: ProxyError,
                         auth_key_name: str | None = None) -> None:
    """A chat request refused before its handler ran (also by the header limits, whose 431
    is no rejection reason, as a 413 is not): logged and counted as one."""
    if _is_chat(request):
        trace_id = _trace_id(request)
        # The answer carries the id its log line has (`error_headers` keeps it), as the chat
        # handler's answers do: the one a client reports is the one the log knows.
        err.response_headers = {**(err.response_headers or {}), **trace_headers(trace_id)}
        _observe_unhandled(request, RequestRecord(
            trace_id=trace_id, stream=None, status=err.status, error_type=err.error_type,
            error_code=err.code, auth_key_name=auth_key_name, bytes_out=len(err.body())))


def observe_abandoned(request: Exchange, auth_key_name: str | None = None) -> None:
    """A chat request whose client went away while its body was arriving (the lean front: on
    aiohttp's the handler is running and logs it): logged and counted as any request its
    client left before an answer, 499."""
    _observe_unhandled(request, RequestRecord(trace_id="", stream=None, status=CLIENT_CLOSED,
                                              client_disconnected=True,
                                              auth_key_name=auth_key_name))


def _observe_unhandled(request: web.Request | Exchange, record: RequestRecord) -> None:
    from streamproxy.server.state import STATE

    state = request.app.get(STATE)
    if state is None:
        return
    record.trace_id = record.trace_id or _trace_id(request)
    if record.status not in (401, 431):
        # Its line carries the client's metadata, as the handler's refusals' do (a 429, a
        # 408); not a 401's, whose sender holds no key, nor a 431's, whose head was too large.
        with contextlib.suppress(ProxyError):  # (the refusal is the answer, not the header's)
            record.metadata = parse_metadata(request.headers, state.limits.max_json_depth)
    # A lean front's request counts from its head, as its handler's would; aiohttp's refuses
    # before the handler runs, once the head is in: now.
    record.started = getattr(request, "arrived", record.started)
    record.finished = time.monotonic()
    for observe in state.observers:
        observe(record)


def _trace_id(request: web.Request | Exchange) -> str:
    return client_trace_id(request.headers)  # (as `request_trace_headers`)


def _is_chat(request: web.Request | Exchange) -> bool:
    # (the lean front's exchanges are chat requests only; aiohttp's carry method and path)
    path = getattr(request, "path", CHAT_PATH)
    return getattr(request, "method", "POST") == "POST" and (
        path in (CHAT_PATH, AZURE_V1_CHAT_PATH) or (
        path.startswith("/openai/deployments/") and path.endswith("/chat/completions")))
