"""One chat request as the handler sees it, whichever HTTP front received it.

The chat path (handlers, auth, cache, storage) reads a request and answers it through this
small surface, so it runs unchanged on aiohttp (`AiohttpExchange`, every route) and on the
lean front for `POST /v1/chat/completions` (server/front.py, `LeanExchange`):

- `headers` (case-insensitive), `app` (the application's keys), request-scoped state
  (`get`, `[]`), `read()` the body, `client_max_size`, `arrived` (`time.monotonic()` when the
  head had come: the request's timings, TTFT and duration, count from it on both fronts),
  `send_timed_out` (its connection was closed for taking nothing for `server.send_timeout`);
- `reply(body, status, headers)`: a whole JSON answer (a `ConnectionError` when the client is
  found gone as it is written: the lean front writes it at once, aiohttp's after the handler);
- `await start_events(headers)`: the commit point of a stream. It returns the `EventWriter`
  the relay writes to; the head leaves with the first frame, in one write.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, MutableMapping
from typing import Any, Protocol

import orjson
from aiohttp import web

from streamproxy.errors import InvalidRequest, ProxyError
from streamproxy.openai_api.request import loads_refused_body
from streamproxy.server.errors import error_headers
from streamproxy.server.sse_writer import SSEWriter


class HasHeaders(Protocol):
    """A response about to be sent, as `on_response_prepare` hooks see it."""

    headers: MutableMapping[str, str]


class EventWriter(Protocol):
    """The client side of a committed stream (see relay.py)."""

    direct: bool  # write_now() may be called from a synchronous callback

    async def write(self, data: bytes) -> None: ...

    def write_now(self, data: bytes) -> None: ...

    def end_with(self, data: bytes) -> None:
        """After a first `write()`: the stream's last frames (may be b""), sent with the
        body's end where the writer can, in one write (`write_eof()` then has nothing left)."""

    async def finish(self, data: bytes) -> None:
        """The whole stream at once, the head with it on a fresh writer, and the body's end:
        one write where the writer can (`write_eof()` then has nothing left to send)."""

    @property
    def full(self) -> bool: ...

    async def drain(self) -> None: ...

    async def write_eof(self) -> None: ...


class Exchange(Protocol):
    headers: Mapping[str, str]
    app: web.Application
    client_max_size: int
    arrived: float
    send_timed_out: bool

    def get(self, key: Any, default: Any = None) -> Any: ...

    def __getitem__(self, key: Any) -> Any: ...

    def __setitem__(self, key: Any, value: Any) -> None: ...

    async def read(self) -> bytes: ...

    async def reply(self, body: bytes, *, status: int = 200,
                    headers: Mapping[str, str] | None = None, close: bool = False) -> None:
        """A whole JSON answer; `close`: the connection closes after it. Raises
        ConnectionError when the client is gone."""

    async def start_events(self, headers: Mapping[str, str]) -> EventWriter: ...


async def reply_error(ex: Exchange, err: ProxyError, *, close: bool = False) -> None:
    """`err` as OpenAI's error JSON, with its status and headers (`error_headers`); a client
    already gone is not answered."""
    with contextlib.suppress(ConnectionError):
        await ex.reply(err.body(), status=err.status,
                       headers=error_headers(err, ex.headers), close=close)


class SSEResponse(web.StreamResponse):
    """An event stream whose head leaves with its first frame, in one write. (aiohttp sends a
    prepared StreamResponse's head at once by default: one more syscall and TCP segment before
    the first token. Every SSE response here writes a frame right after `prepare`.)"""

    _send_headers_immediately = False

    def enable_compression(self, force: Any = None, strategy: int | None = None) -> None:
        """Ignored (an embedding app's `on_response_prepare` hook may call it): aiohttp's
        compressor does not flush per write, so a compressed stream's frames and keep-alive
        comments waited in its buffer, the client getting nothing until it filled or the stream
        ended. Compressing each small frame on its own, with a flush, would save little."""


class AiohttpExchange:
    """The aiohttp front: a `web.Request`, and the response the route handler returns."""

    __slots__ = ("arrived", "request", "response")

    def __init__(self, request: web.Request) -> None:
        self.arrived = time.monotonic()  # aiohttp runs the route once the head has come
        self.request = request
        self.response: web.StreamResponse | None = None

    @property
    def headers(self) -> Mapping[str, str]:
        return self.request.headers

    @property
    def app(self) -> web.Application:
        return self.request.app

    @property
    def client_max_size(self) -> int:
        return self.request.client_max_size

    @property
    def send_timed_out(self) -> bool:
        return getattr(self.request.protocol, "send_timed_out", False)  # (ReadTimedHandler's)

    def get(self, key: Any, default: Any = None) -> Any:
        return self.request.get(key, default)

    def __getitem__(self, key: Any) -> Any:
        return self.request[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self.request[key] = value  # where aiohttp's on_response_prepare hooks look

    async def read(self) -> bytes:
        return await self.request.read()

    async def reply(self, body: bytes, *, status: int = 200,
                    headers: Mapping[str, str] | None = None, close: bool = False) -> None:
        self.response = web.Response(body=body, status=status, content_type="application/json",
                                     headers=headers)
        if close:
            self.response.force_close()

    async def start_events(self, headers: Mapping[str, str]) -> SSEWriter:
        response = SSEResponse(headers=headers)
        await response.prepare(self.request)
        self.response = response
        return SSEWriter(self.request, response)


class DeploymentExchange(AiohttpExchange):
    """The AzureOpenAI SDK's request: the path's deployment is the body's model, whatever the
    body says (as Azure serves the path's; an SDK built for one deployment sends any model)."""

    __slots__ = ("model", "received")

    def __init__(self, request: web.Request, model: str) -> None:
        super().__init__(request)
        self.model = model
        # The body as the client sent it, for the log's bytes_in and request_body
        # (server/observing.py): `read()` gives the routed one, re-encoded.
        self.received = b""

    async def read(self) -> bytes:
        raw = self.received = await self.request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            try:  # (a BOM, a lone surrogate escape: the chat route reads them; left, the
                # body's own model was routed)
                body, raw = loads_refused_body(raw, e)
            except InvalidRequest:
                return raw  # (the chat handler's 400 says what is wrong with it)
        return orjson.dumps({**body, "model": self.model}) if isinstance(body, dict) else raw
