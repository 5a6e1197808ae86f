"""The upstream HTTP client of a worker, and the one place client errors become ours.

By default the lean HTTP/1.1 client in `upstream/http11.py` (one asyncio Protocol per
connection, the sans-IO parser of `upstream/response_parser.py`, a keep-alive pool): against
aiohttp's client it cuts the critical path to the first upstream byte and the memory of an
open stream (docs/performance.md). `server.upstream_client: aiohttp` (or the environment variable
`STREAMPROXY_UPSTREAM_CLIENT`, which wins over the config) selects aiohttp's client instead.

Timeouts: aiohttp's default 5-minute total would cut long generations, so the session has no
total; the connect timeout is aiohttp's, and first-token / idle / total deadlines are enforced
by `Deadline` (relay.py) with one timer per stream rather than one per read.

Both responses offer the same attributes, so nothing past `send()` knows which one it got.
Both go through the same egress proxies (`upstream/egress.py`) and read the system's trust
store (`SSL_CERT_FILE` / `SSL_CERT_DIR` included) when the worker starts its client.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from streamproxy.errors import (
    ProxyError,
    StreamTruncated,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from streamproxy.providers.base import UpstreamRequest
from streamproxy.upstream.egress import NO_PROXIES, EgressProxies
from streamproxy.upstream.http11 import ConnectFailed, HTTP11Client
from streamproxy.upstream.response_parser import (
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    Dropped,
    Inflater,
    MalformedResponse,
    UnsupportedContentCoding,
    UnsupportedTransferCoding,
    body_coding,
    body_decoder,
    transfer_codings,
)
from streamproxy.upstream.userinfo import has_authorization, split_userinfo

log = logging.getLogger("streamproxy.upstream")

CLIENT_ENV = "STREAMPROXY_UPSTREAM_CLIENT"
CLIENT_KINDS = ("aiohttp", "native")


def trust_store() -> ssl.SSLContext:
    """The system's trust store as a client TLS context: read once per process for each
    `SSL_CERT_FILE` / `SSL_CERT_DIR` (reading it blocks the loop ~80 ms; a process starts
    one client, a test run hundreds)."""
    return _trust_store(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@functools.lru_cache(maxsize=8)
def _trust_store(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    return ssl.create_default_context()  # (OpenSSL reads both variables itself)


class MalformedBody(aiohttp.ClientPayloadError):
    """A response body aiohttp's parser refused after the head (a malformed chunk)."""


class BodyFailingHandler(ResponseHandler):
    """aiohttp's connection protocol, also failing the body being read when the parser refuses
    its bytes, or when a reset cuts a body read until close. aiohttp's C parser raises on a
    malformed chunk in a read after the head, the body already handed out: the protocol kept the
    error and closed the connection, but the body neither ended nor failed, so its reader waited
    for our idle (streamed) or first-token deadline. Only those failures run this: nothing is
    added per read."""

    def connection_lost(self, exc: BaseException | None) -> None:
        # Without Content-Length or chunked framing only the close ends a body, and aiohttp
        # takes any close for that end: a reset (or any read error) may have cut it anywhere,
        # so it is a truncation, as the native client, curl and Go read it. A clean close (a
        # FIN; TLS without close_notify brings no error here either) still ends the body. Set
        # before aiohttp's own handling, which ends the body and wakes its reader.
        body = self._payload
        if (exc is not None and body is not None and not body.is_eof()
                and body.exception() is None):
            body.set_exception(aiohttp.ClientPayloadError(
                f"Response payload is not completed: {exc!r}"), exc)
        super().connection_lost(exc)

    def set_exception(self, exc: BaseException, *cause: BaseException) -> None:
        super().set_exception(exc, *cause)
        body = self._payload
        if (isinstance(exc, HttpProcessingError)  # the parser's, not a timeout or a write's
                and body is not None and not body.is_eof() and body.exception() is None):
            error = MalformedBody(str(exc))
            error.__cause__ = cause[0] if cause else exc  # the parser's own error
            body.set_exception(error)


class Decoded:
    """aiohttp's body reader of a gzip or deflate response, its reads inflated (`readany`, all
    the proxy reads; the rest is aiohttp's reader's), or of an error's body that is dropped
    (`Dropped`). Only such a response pays for it."""

    __slots__ = ("_body", "_inflater")

    def __init__(self, body: aiohttp.StreamReader, inflater: Inflater | Dropped) -> None:
        self._body = body
        self._inflater = inflater

    async def readany(self) -> bytes:
        while data := await self._body.readany():
            data = self._inflater.decompress(data)
            if data:  # (a read of a gzip header alone inflates to nothing yet)
                return data
        return b""

    async def read(self) -> bytes:
        parts = []
        while data := await self.readany():
            parts.append(data)
        return b"".join(parts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._body, name)


class UpstreamClient:
    def __init__(self, *, limit_per_host: int = 0, keepalive_timeout: float = 30.0,
                 kind: str = "native", egress: EgressProxies = NO_PROXIES) -> None:
        kind = os.environ.get(CLIENT_ENV) or kind
        if kind not in CLIENT_KINDS:
            raise ValueError(f"{CLIENT_ENV} must be one of {', '.join(CLIENT_KINDS)}")
        self.kind = kind
        self.native: HTTP11Client | None = None
        self._limit_per_host = limit_per_host
        self._keepalive = keepalive_timeout
        self.egress = egress
        self.session: aiohttp.ClientSession | None = None
        # Per-request objects aiohttp would otherwise rebuild every time (URL parsing is the
        # costly one): one entry per upstream URL / connect timeout, each map emptied when full
        # (a client's x-portkey-config may choose both: a model in the path, any timeout).
        self._urls: dict[str, URL] = {}
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        self._proxies: dict[str, dict[str, Any]] = {}  # aiohttp's proxy arguments per URL
        # "Basic …" of a URL's user info, sent as the native client sends it: aiohttp's own
        # refused a request with an Authorization besides (a ValueError, a 500) and would
        # replace one (upstream/userinfo.py).
        self._basic: dict[str, str] = {}

    async def start(self) -> None:
        if self.kind == "native":
            # The trust store read now, not at the first https request (~80 ms of the loop).
            self.native = HTTP11Client(keepalive_timeout=self._keepalive, egress=self.egress,
                                       ssl_context=trust_store())
            return
        connector = aiohttp.TCPConnector(
            ssl=trust_store(),
            limit=0,  # admission control, not the pool, limits concurrency
            limit_per_host=self._limit_per_host,
            keepalive_timeout=self._keepalive,
            ttl_dns_cache=300,
        )
        # aiohttp takes no protocol for its connections but through this attribute.
        connector._factory = functools.partial(BodyFailingHandler,
                                               loop=asyncio.get_running_loop())
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None),
            # Decoded here by the native client's rule (`Decoded`): aiohttp's parser reads one
            # Content-Encoding line (its C parser the last, its Python one the first), no list
            # ("identity, gzip") and no x-gzip, and passed such a body on still compressed.
            auto_decompress=False,
            # The codings zlib decodes: aiohttp's own default adds br and zstd whenever their
            # packages happen to be installed (not dependencies of ours), as the native client
            # never would (it asks for identity and refuses them).
            headers={"Accept-Encoding": "gzip, deflate"},
            skip_auto_headers=("User-Agent",),
            # A proxy must never carry one client's upstream cookies into another's request;
            # the dummy jar also skips aiohttp's per-request cookie filtering.
            cookie_jar=aiohttp.DummyCookieJar(),
            # The native client's limits, not aiohttp's 8190-byte line / field and 128 headers:
            # a head one client serves, the other does not refuse (README, "Choices we made").
            max_line_size=MAX_HEAD_BYTES,
            max_field_size=MAX_HEAD_BYTES,
            max_headers=MAX_HEADERS,
        )

    async def close(self) -> None:
        if self.native is not None:
            await self.native.close()
            self.native = None
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def send(self, req: UpstreamRequest, *, connect_timeout: float,
                   provider: str) -> aiohttp.ClientResponse:
        """Send the request and return once the response headers are in. The caller owns the
        response and must `release()` or `close()` it."""
        if self.native is not None:
            try:
                answer = await self.native.send(
                    req.method, req.url, req.body, req.headers, connect_timeout=connect_timeout)
            except Exception as e:
                raise map_client_error(e, provider, before_response=True) from None
            if answer.status == 407:
                self._refused_by_proxy(answer, req, provider)
            return answer  # type: ignore[return-value]
        assert self.session is not None, "UpstreamClient.start() was not awaited"
        url = self._urls.get(req.url)
        if url is None:
            if len(self._urls) > 1024:  # per-request URLs (e.g. a model in the path): bound it
                self._urls.clear()
                self._proxies.clear()
                self._basic.clear()
            plain, basic = split_userinfo(req.url)
            if basic is not None:
                self._basic[req.url] = basic
            url = self._urls[req.url] = URL(plain)
            self._proxies[req.url] = self._proxy_arguments(url)
        timeout = self._timeouts.get(connect_timeout)
        if timeout is None:
            if len(self._timeouts) >= 64:
                self._timeouts.clear()
            timeout = self._timeouts[connect_timeout] = aiohttp.ClientTimeout(
                total=None, sock_connect=connect_timeout, connect=connect_timeout)
        proxy = self._proxies[req.url]
        headers = {**req.headers, **proxy["headers"]} if "headers" in proxy else req.headers
        basic = self._basic.get(req.url) if self._basic else None
        if basic is not None and not has_authorization(headers):
            headers = {**headers, "Authorization": basic}
        try:
            resp = await self.session.request(
                req.method, url, data=req.body, headers=headers, timeout=timeout,
                allow_redirects=False, proxy=proxy.get("proxy"),
                proxy_headers=proxy.get("proxy_headers"),  # type: ignore[arg-type]
            )
        except Exception as e:
            raise map_client_error(e, provider, before_response=True) from None
        if resp.status == 407:
            self._refused_by_proxy(resp, req, provider)
        # RFC 9112 5.1: no whitespace before a field's colon. llhttp refuses it but for the
        # names it matches for framing (Content-Length, Transfer-Encoding, Connection, Upgrade,
        # Proxy-Connection), which it takes, space and all, and frames the body by: refused
        # here as h11 and the native client refuse every such line (one pass over the names).
        if any(name[-1:] == b" " for name, _ in resp.raw_headers):
            resp.close()
            raise map_client_error(MalformedResponse("whitespace before a header's colon"),
                                   provider, before_response=True)
        # The codings of the body, read as the native client reads them (aiohttp's parser
        # reads one Content-Encoding line and no list, and takes a Transfer-Encoding ending in
        # chunked, or without it, as a plain body): a gzip or deflate body is inflated here,
        # anything else refused before the body.
        headers = resp.headers
        codings = headers.getall("Content-Encoding", None)
        te = headers.getall("Transfer-Encoding", None)
        if codings or (te and te != ["chunked"]):  # rare: we ask for gzip and deflate only
            try:
                if te:
                    transfer_codings(te)
                encoding = body_coding(codings, resp.status) if codings else ""
            except MalformedResponse as e:
                resp.close()
                raise map_client_error(e, provider, before_response=True) from None
            if encoding:
                resp.content = Decoded(resp.content,  # type: ignore[assignment]
                                       body_decoder(encoding))
        return resp

    def _refused_by_proxy(self, resp: Any, req: UpstreamRequest, provider: str) -> None:
        """A 407 to an http upstream's request, which went to the egress proxy itself, is the
        proxy's refusal, as a 407 to a CONNECT is: the upstream was not reached (a 502, a
        fallback tried), and why is logged. Passed on, the client got 407 Proxy Authentication
        Required from a gateway it reaches directly."""
        parts = urlsplit(split_userinfo(req.url)[0])
        scheme = parts.scheme.lower()
        route = (self.egress.route(scheme, parts.hostname or "", parts.port or 80)
                 if scheme == "http" else None)  # (an https one's CONNECT was answered 2xx)
        if route is None:
            return
        resp.close()
        raise map_client_error(
            ConnectFailed(f"the egress proxy {route.host}:{route.port} answered 407 to "
                          f"{req.method} {parts.netloc}"), provider, before_response=True)

    def _proxy_arguments(self, url: URL) -> dict[str, Any]:
        route = self.egress.route(url.scheme, url.host or "", url.port or 0)
        if route is None:
            return {}
        arguments: dict[str, Any] = {"proxy": route.url}
        if route.authorization:
            auth = {"Proxy-Authorization": route.authorization}
            # aiohttp sends proxy_headers with a CONNECT only; an http upstream's request goes
            # to the proxy itself, so the header travels with it.
            arguments["proxy_headers" if url.scheme == "https" else "headers"] = auth
        return arguments


def map_client_error(exc: BaseException, provider: str, *, before_response: bool) -> ProxyError:
    """aiohttp/asyncio exception → our error tree. Messages name the provider, never a URL with
    credentials or a header."""
    if isinstance(exc, ProxyError):
        return exc
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        phase = "connecting to" if before_response else "reading from"
        return UpstreamTimeout(f"timed out {phase} provider '{provider}'")
    if isinstance(exc, MalformedResponse):  # the native client's; before ConnectionError
        if isinstance(exc, UnsupportedTransferCoding | UnsupportedContentCoding):
            err = UpstreamProtocolError(f"bad response from provider '{provider}': {exc}")
            # (the upstream frames, or codes, every answer so: not retried)
            err.should_retry = False
            return err
        return UpstreamProtocolError(f"bad response from provider '{provider}': "
                                     f"{type(exc).__name__}")
    if isinstance(exc, aiohttp.ClientPayloadError):
        if isinstance(exc, MalformedBody):
            # A malformed chunk: no cut, as the native client's MalformedResponse says.
            return UpstreamProtocolError(f"bad response from provider '{provider}': "
                                         f"{type(exc.__cause__).__name__}")
        return StreamTruncated(f"provider '{provider}' closed the connection mid-response")
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ClientOSError
                  | aiohttp.ServerDisconnectedError | ConnectionError
                  | aiohttp.ClientHttpProxyError):  # (an egress proxy refused the tunnel)
        if before_response:
            _log_unreachable(provider, exc)
            return UpstreamUnreachable(f"could not reach provider '{provider}': "
                                       f"{type(exc).__name__}")
        return StreamTruncated(f"provider '{provider}' closed the connection mid-response")
    if isinstance(exc, aiohttp.ClientResponseError | aiohttp.ClientError):
        return UpstreamProtocolError(f"bad response from provider '{provider}': "
                                     f"{type(exc).__name__}")
    raise exc


# (provider, cause) → when it was last logged. The client's error names only the exception's
# type (no upstream address for it); the cause — a certificate not trusted, a refused port, an
# egress proxy's 407 — is for the operator, once a minute for each, not per request.
_UNREACHABLE_LOGGED: dict[tuple[str, str], float] = {}


def _log_unreachable(provider: str, exc: BaseException) -> None:
    # The native client's ConnectFailed already says its cause (the OSError's type and text,
    # or the egress proxy's answer). Neither client's text holds a URL's userinfo: hosts and
    # ports only.
    cause = str(exc) if isinstance(exc, ConnectFailed) else f"{type(exc).__name__}: {exc}"
    now = time.monotonic()
    key = (provider, cause)
    if now - _UNREACHABLE_LOGGED.get(key, -60.0) < 60.0:
        return
    if len(_UNREACHABLE_LOGGED) >= 256:  # causes name ports and addresses: bounded
        _UNREACHABLE_LOGGED.clear()
    _UNREACHABLE_LOGGED[key] = now
    log.warning("could not reach provider %r (logged once a minute): %s", provider, cause)
