"""The native HTTP/1.1 upstream client (`streamproxy/upstream/http11.py`) end to end, against
aiohttp servers on loopback (its sans-IO parser: test_response_parser.py)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import select
import socket
import ssl
import struct
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from yarl import URL

from streamproxy.config import Config, ConfigError, parse_config
from streamproxy.errors import (
    StreamTruncated,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from streamproxy.providers.base import UpstreamRequest
from streamproxy.server.app import STATE
from streamproxy.upstream import http11
from streamproxy.upstream.client import (
    CLIENT_ENV,
    UpstreamClient,
    _trust_store,
    map_client_error,
)
from streamproxy.upstream.http11 import PAUSE_AT, ConnectFailed, HTTP11Client, _split_url
from streamproxy.upstream.response_parser import (
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    Disconnected,
    InvalidChunk,
)
from tests.helpers import (
    FakeUpstream,
    collect,
    fixture_bytes,
    jsonl_to_sse,
    sse_chunks,
)

TEST_TIMEOUT = 10


@contextlib.asynccontextmanager
async def native_client() -> AsyncIterator[HTTP11Client]:
    """A native client for one test, closed after it, the test bounded by TEST_TIMEOUT."""
    client = HTTP11Client()
    try:
        async with asyncio.timeout(TEST_TIMEOUT):
            yield client
    finally:
        await client.close()


def test_error_mapping() -> None:
    assert isinstance(map_client_error(ConnectFailed("x"), "p", before_response=True),
                      UpstreamUnreachable)
    assert isinstance(map_client_error(Disconnected("x"), "p", before_response=False),
                      StreamTruncated)
    assert isinstance(map_client_error(InvalidChunk("x"), "p", before_response=False),
                      UpstreamProtocolError)
    assert isinstance(map_client_error(TimeoutError(), "p", before_response=True),
                      UpstreamTimeout)


# -- end to end -----------------------------------------------------------------------------------

class Upstream:
    """An aiohttp server on loopback that counts its connections."""

    def __init__(self) -> None:
        self.connections = 0
        self.handler_cancelled = asyncio.Event()
        self.requests: list[tuple[dict[str, str], bytes]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/length", self.length)
        app.router.add_post("/chunked", self.chunked)
        app.router.add_post("/close", self.until_close)
        app.router.add_post("/hang", self.hang)
        app.router.add_post("/big", self.big)
        return app

    async def length(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        return web.Response(body=b"x" * 1000, headers={"X-Test": "1"})

    async def chunked(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(20):
            await resp.write(b"data: %d\n\n" % i)
        await resp.write_eof()
        return resp

    async def until_close(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Connection": "close"})
        resp.force_close()
        await resp.prepare(request)
        await resp.write(b"part one ")
        await resp.write(b"part two")
        await resp.write_eof()
        return resp

    async def hang(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"started")
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.handler_cancelled.set()
            raise
        return resp

    async def big(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = 8 * 1024 * 1024
        await resp.prepare(request)
        for _ in range(128):
            await resp.write(b"b" * 65536)
        return resp


@pytest.fixture
async def server(aiohttp_server: Any) -> tuple[Upstream, str]:
    up = Upstream()
    srv = await aiohttp_server(up.app())  # handler_cancellation is on in TestServer
    return up, str(srv.make_url("")).rstrip("/")


async def post(client: HTTP11Client, url: str, body: bytes = b"{}", **kw: Any) -> Any:
    return await client.send("POST", url, body, {"Content-Type": "application/json", **kw},
                             connect_timeout=5)


async def test_content_length_and_request_shape(server: tuple[Upstream, str]) -> None:
    up, base = server
    async with native_client() as client:
        resp = await post(client, base + "/length?x=1", b'{"a":1}', **{"X-Key": "v"})
        assert resp.status == 200 and resp.headers["x-test"] == "1"
        assert await resp.read() == b"x" * 1000 and resp.content.at_eof()
        resp.release()
    headers, body = up.requests[0]
    assert body == b'{"a":1}' and headers["X-Key"] == "v"
    assert headers["Accept-Encoding"] == "identity" and headers["Content-Length"] == "7"
    assert headers["Host"] == base.removeprefix("http://")


@pytest.mark.parametrize(("url", "target"), [
    ("http://h/v1/chat/completions", "/v1/chat/completions"),
    ("http://h/a b HTTP/1.0\x00\x0bx/é?q=a b&c=%41",
     "/a%20b%20HTTP/1.0%00%0Bx/%C3%A9?q=a%20b&c=%41"),
    ("http://h/v1/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
     "/v1/models/gemini-2.5-flash:streamGenerateContent?alt=sse"),
    ("http://h/model/a%2Fb%3Av1/converse-stream?x=%20", "/model/a%2Fb%3Av1/converse-stream?x=%20"),
])
def test_the_request_target_has_no_space_or_control_character(url: str, target: str) -> None:
    """A custom_host path went into the request line as it was: `POST /a b HTTP/1.0…`."""
    assert _split_url(url).target == target


@pytest.mark.parametrize(("url", "host_header"), [
    ("https://例え.jp/v1", "xn--r8jz45g.jp"),
    ("http://Bücher.example:8080/v1", "xn--bcher-kva.example:8080"),
    # IDNA 2008, as aiohttp's client (yarl) encodes: Python's own codec, IDNA 2003, maps ß to
    # "ss" and would reach another host (the one getaddrinfo and SNI were given)
    ("https://straße.de/v1", "xn--strae-oqa.de"),
])
def test_a_non_ascii_host_is_sent_and_reached_as_punycode(url: str, host_header: str) -> None:
    """The Host header went out as UTF-8 bytes (aiohttp sends the A-label), and the connect
    and TLS SNI encoded the name their own way."""
    u = _split_url(url)
    assert u.host_header == host_header
    assert u.key[1] == host_header.partition(":")[0]  # what is resolved, and SNI's name


async def test_large_request_body(server: tuple[Upstream, str]) -> None:
    up, base = server
    body = bytes(range(256)) * 1000  # over the size that is joined to the head
    async with native_client() as client:
        resp = await post(client, base + "/length", body)
        await resp.read()
        resp.release()
    assert up.requests[0][1] == body


async def test_idle_connection_closed_by_the_upstream(aiohttp_server: Any) -> None:
    """The upstream's keep-alive ends before ours: the pooled connection is found closed and
    the next request opens a new one without an error."""
    up = Upstream()
    srv = await aiohttp_server(up.app(), keepalive_timeout=0.05)
    async with native_client() as client:
        for _ in range(2):
            resp = await post(client, str(srv.make_url("/length")))
            assert await resp.read() == b"x" * 1000
            resp.release()
            await asyncio.sleep(0.3)
    assert client.pool.opened == 2 and len(up.requests) == 2


async def test_chunked_and_until_close(server: tuple[Upstream, str]) -> None:
    _, base = server
    async with native_client() as client:
        resp = await post(client, base + "/chunked")
        parts = []
        while data := await resp.content.readany():
            parts.append(data)
        assert b"".join(parts) == b"".join(b"data: %d\n\n" % i for i in range(20))
        resp.release()
        assert client.pool.idle  # reusable
        resp = await post(client, base + "/close")
        assert await resp.read() == b"part one part two"
        resp.release()
        # The keep-alive connection served both; `Connection: close` ended it.
        assert client.pool.opened == 1 and not any(client.pool.idle.values())


async def test_keep_alive_reuse(server: tuple[Upstream, str]) -> None:
    up, base = server
    peers = set()
    async with native_client() as client:
        for _ in range(5):
            resp = await post(client, base + "/length")
            await resp.read()
            resp.release()
        # Two at once need two connections, both pooled afterwards.
        a, b = await asyncio.gather(post(client, base + "/length"),
                                    post(client, base + "/length"))
        for r in (a, b):
            await r.read()
            r.release()
            peers.add(id(r._conn))
    assert client.pool.opened == 2 and len(peers) == 2 and len(up.requests) == 7
    assert client.pool.busy == 0


async def test_idle_connections_are_kept_for_a_bounded_number_of_hosts(
        aiohttp_server: Any) -> None:
    """A client's region names the upstream host: each made-up one kept a socket for 30 s."""
    bases = [str((await aiohttp_server(Upstream().app())).make_url("")).rstrip("/")
             for _ in range(5)]
    async with native_client() as client:
        client.pool.max_hosts = 3
        for base in [bases[0], *bases[1:], bases[0]]:  # the first host, in use, is kept
            resp = await post(client, base + "/length")
            await resp.read()
            resp.release()
        idle = client.pool.idle
        assert len(idle) == 3 and sum(map(len, idle.values())) == 3
        assert [key[2] for key in idle] == [URL(b).port for b in (bases[3], bases[4], bases[0])]


async def test_stale_pooled_connection_is_retried(server: tuple[Upstream, str]) -> None:
    up, base = server
    async with native_client() as client:
        resp = await post(client, base + "/length")
        await resp.read()
        resp.release()
        ((conn,),) = client.pool.idle.values()
        # Pretend the upstream's close has not been noticed yet: the write goes out on a
        # socket the peer shuts, and the request is retried once on a new connection.
        sock = conn.transport.get_extra_info("socket")
        sock.shutdown(socket.SHUT_RDWR)
        conn.closed = False
        resp = await post(client, base + "/length")
        assert await resp.read() == b"x" * 1000
        resp.release()
    assert client.pool.opened == 2 and len(up.requests) == 2


async def test_a_pooled_connection_closed_before_the_loop_saw_it_is_not_used() -> None:
    """An upstream closing an idle keep-alive connection (uvicorn's 5 s, vLLM's) just as a
    request comes: its FIN is in our socket, the loop has not read it yet. The POST was written
    on the dead connection and failed with no byte of an answer (a 502, as aiohttp's client
    gives), though the upstream closed before it could read any of it: a pooled connection
    with something to read is not trusted, and the request goes on a new one."""
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
    accepted: list[socket.socket] = []

    async def answer() -> None:
        for _ in range(2):
            sock, _ = await loop.sock_accept(listener)
            accepted.append(sock)
            request = b""
            for _ in range(100):
                request += await loop.sock_recv(sock, 65536)
                if request.endswith(b"\r\n\r\n{}"):
                    break
            await loop.sock_sendall(sock, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    upstream = asyncio.ensure_future(answer())
    try:
        async with native_client() as client:
            resp = await post(client, url)
            assert await resp.read() == b"ok"
            resp.release()
            ((conn,),) = client.pool.idle.values()
            accepted[0].close()  # the upstream's keep-alive timeout
            # Blocking, not awaiting: the FIN is in, and the loop does not read it first.
            sock = conn.transport.get_extra_info("socket")
            assert select.select([sock.fileno()], [], [], TEST_TIMEOUT)[0]
            resp = await post(client, url)
            assert await resp.read() == b"ok"
            resp.release()
            await upstream
        assert client.pool.opened == 2
    finally:
        upstream.cancel()
        listener.close()
        for sock in accepted:
            sock.close()


async def test_connection_refused_and_connect_timeout() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        client = HTTP11Client()
        with pytest.raises(ConnectFailed):
            await post(client, f"http://127.0.0.1:{port}/x")
    # A listener whose backlog is full never completes a handshake... portably, a connect
    # timeout of 0 expires before any connection can complete.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        with pytest.raises(TimeoutError):
            await client.send("POST", f"http://127.0.0.1:{s.getsockname()[1]}/x", b"", {},
                              connect_timeout=0)
    await client.close()


async def test_a_name_whose_first_address_does_not_answer_is_reached_on_the_next(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A provider's name resolving to an address that never answers (an IPv6 route that drops
    packets: providers publish AAAA records) before one that does: every new connection waited
    the whole connect timeout on the first and failed (a 504), where aiohttp's client tries the
    next address after 250 ms (Happy Eyeballs, RFC 8305) and is answered."""
    # A listener whose accept queue is full drops SYNs (Linux): a connect to it never ends.
    black = socket.create_server(("127.0.0.1", 0), backlog=0)
    filler = socket.create_connection(black.getsockname())

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        writer.close()

    server, _ = await raw_server(answer)
    addresses = [black.getsockname(), server.sockets[0].getsockname()]
    resolve = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "upstream.test":
            return resolve(host, *args, **kwargs)
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", address)
                for address in addresses]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    try:
        async with native_client() as client:
            resp = await post(client, "http://upstream.test/")
            assert resp.status == 200 and await resp.read() == b"ok"
            resp.release()
    finally:
        server.close()
        filler.close()
        black.close()


async def test_cancellation_closes_the_connection(server: tuple[Upstream, str]) -> None:
    up, base = server
    async with native_client() as client:
        resp = await post(client, base + "/hang")
        assert await resp.content.readany() == b"started"
        task = asyncio.ensure_future(resp.content.readany())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert resp._conn.closed and client.pool.busy == 0
        await up.handler_cancelled.wait()  # the upstream saw the disconnect
        assert not any(client.pool.idle.values())


async def test_cancel_while_waiting_for_head_closes(server: tuple[Upstream, str]) -> None:
    up, base = server
    async with native_client() as client:
        resp = await post(client, base + "/hang")  # headers come at once; hang the body
        resp.close()
        await up.handler_cancelled.wait()
        up.handler_cancelled.clear()
        task = asyncio.ensure_future(post(client, base + "/hang"))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert client.pool.busy == 0


async def test_backpressure_bounds_the_buffer(server: tuple[Upstream, str]) -> None:
    _, base = server
    async with native_client() as client:
        resp = await post(client, base + "/big")
        await asyncio.sleep(0.3)  # the upstream writes 8 MiB as fast as it can; we don't read
        # Paused past PAUSE_AT: at most one more socket read lands after it.
        assert PAUSE_AT < resp._buffered < PAUSE_AT + 512 * 1024
        total = 0
        while data := await resp.content.readany():
            total += len(data)
            assert resp._buffered < PAUSE_AT + 512 * 1024
        assert total == 8 * 1024 * 1024
        resp.release()


async def test_truncated_body_raises_disconnected(aiohttp_server: Any) -> None:
    async def cut(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = 100
        await resp.prepare(request)
        await resp.write(b"short")
        assert request.transport is not None
        request.transport.close()
        return resp

    app = web.Application()
    app.router.add_post("/cut", cut)
    srv = await aiohttp_server(app)
    async with native_client() as client:
        resp = await post(client, str(srv.make_url("/cut")))
        with pytest.raises(Disconnected):
            await resp.read()
        resp.close()


@pytest.mark.parametrize("kind", ["native", "aiohttp"])
@pytest.mark.parametrize("reset", [True, False], ids=["reset", "clean-close"])
async def test_a_body_read_until_close_cut_by_a_reset_is_a_truncation(
        proxy: Any, monkeypatch: pytest.MonkeyPatch, kind: str, reset: bool) -> None:
    """No Content-Length, not chunked: the upstream's reset after the body's bytes was taken
    as the body's end, so what had come was served as a whole answer (a 200 from aiohttp's
    client here; a cut JSON was "the upstream answered with a malformed message",
    upstream_protocol_error). A reset may cut a body anywhere: it is a truncation, as curl
    reads it; a clean close (FIN) still ends the body."""
    monkeypatch.setenv(CLIENT_ENV, kind)

    async def answer_then_close(reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n"
                         b'{"id":"msg_1","type":"message","role":"assistant","model":"m",'
                         b'"content":[{"type":"text","text":"Hi"}],"stop_reason":"end_turn",'
                         b'"usage":{"input_tokens":1,"output_tokens":1}}')
            await writer.drain()
            await asyncio.sleep(0.05)  # read by the proxy before the close
            if reset:
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
            else:
                writer.close()

    server, url = await raw_server(answer_then_close)
    client = await proxy(native_anthropic_config(url.rstrip("/")))
    resp = await client.post("/v1/chat/completions", json={
        "model": "m", "messages": [{"role": "user", "content": "hi"}]})
    server.close()
    if reset:
        assert resp.status == 502
        assert (await resp.json())["error"]["code"] == "upstream_stream_truncated"
    else:
        assert resp.status == 200
        assert (await resp.json())["choices"][0]["message"]["content"] == "Hi"


# -- selection: the config key and the environment variable ---------------------------------------

def _config(server: dict[str, Any]) -> Any:
    return parse_config({"server": server, "providers": {"m": {"type": "mock"}}}, "<t>")


def test_config_key_and_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CLIENT_ENV, raising=False)
    assert _config({}).server.upstream_client == "native"
    config = _config({"upstream_client": "aiohttp"})
    assert UpstreamClient(kind=config.server.upstream_client).kind == "aiohttp"
    with pytest.raises(ConfigError, match="upstream_client"):
        _config({"upstream_client": "curl"})
    monkeypatch.setenv(CLIENT_ENV, "aiohttp")
    assert UpstreamClient(kind="native").kind == "aiohttp"
    monkeypatch.setenv(CLIENT_ENV, "bogus")
    with pytest.raises(ValueError, match=CLIENT_ENV):
        UpstreamClient()


@pytest.mark.parametrize("kind", ["native", "aiohttp"])
async def test_the_trust_store_is_read_when_the_client_starts(
        kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading the trust store takes ~80 ms of the loop. The native client read it at its
    first https connect: the first request of each worker waited that long more for its
    first token, and every stream the worker was relaying stalled as long."""
    monkeypatch.delenv(CLIENT_ENV, raising=False)
    contexts: list[ssl.SSLContext] = []
    create = ssl.create_default_context

    def counted() -> ssl.SSLContext:
        contexts.append(create())
        return contexts[-1]

    monkeypatch.setattr(ssl, "create_default_context", counted)
    _trust_store.cache_clear()  # (read once per process: not by an earlier test)
    client = UpstreamClient(kind=kind)
    await client.start()
    try:
        assert len(contexts) == 1  # before any request
        if client.native is not None:
            assert client.native.pool._ssl is contexts[0]
        await client.close()
        await client.start()  # another client (a test's): the same store, not read again
        assert len(contexts) == 1
    finally:
        await client.close()
        _trust_store.cache_clear()  # (the counted one is not left for later tests)


async def test_the_aiohttp_clients_memos_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client's x-portkey-config chooses any connect timeout (and a model in the URL)."""
    monkeypatch.delenv(CLIENT_ENV, raising=False)
    with socket.socket() as s:  # a port nobody listens on: each send fails at once
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1/models/m"
    client = UpstreamClient(kind="aiohttp")
    await client.start()
    try:
        for i in range(300):
            with pytest.raises(UpstreamUnreachable):
                await client.send(UpstreamRequest(f"{url}{i}", b"{}"),
                                  connect_timeout=5 + i / 1000, provider="p")
            assert len(client._timeouts) <= 64 and len(client._urls) <= 1025
    finally:
        await client.close()


def native_anthropic_config(url: str) -> Config:
    return parse_config({"server": {"upstream_client": "native"},
                         "providers": {"up": {"type": "anthropic", "base_url": url,
                                              "api_key": "sk-test-secret", "default_model": "m"}},
                         "default_provider": "up"}, "<t>")


async def test_through_the_proxy(proxy: Any, upstream: FakeUpstream,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A translated stream end to end with `upstream_client: native`, twice on one pooled
    connection, and the upstream never asked for a compressed body."""
    monkeypatch.delenv(CLIENT_ENV, raising=False)
    upstream.body = jsonl_to_sse(fixture_bytes("anthropic/vercel-ai_anthropic-text.chunks.jsonl"))
    config = native_anthropic_config(upstream.url)
    client = await proxy(config)
    state = client.server.app[STATE]
    for _ in range(2):
        resp = await client.post("/v1/chat/completions", json={
            "model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
        assert resp.status == 200
        got = collect(sse_chunks(await resp.read()))
        assert got.content and got.finish_reason
    assert state.client.native is not None and state.client.native.pool.opened == 1
    assert upstream.requests[0].headers["Accept-Encoding"] == "identity"


# -- content codings -----------------------------------------------------------------------------

def _accepted(field: str | None) -> set[str]:
    return {c.split(";")[0].strip().lower() for c in (field or "").split(",")} - {""}


@pytest.mark.parametrize("kind", ["native", "aiohttp"])
async def test_the_upstream_is_asked_only_for_codings_the_client_decodes(
        proxy: Any, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch,
        kind: str) -> None:
    """Never `br` (or `zstd`): the native client decodes gzip and deflate only (a br answer is
    a 502), and aiohttp's offered br whenever the brotli package happened to be installed
    (not a dependency: it was, here, through a test tool). Neither a client's
    Accept-Encoding, even listed in x-portkey-forward-headers, nor a provider's configured
    one invites it."""
    monkeypatch.setenv(CLIENT_ENV, kind)
    upstream.body = (b'data: {"id":"c","object":"chat.completion.chunk","created":1,'
                     b'"model":"m","choices":[{"index":0,"delta":{"content":"hi"},'
                     b'"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n')
    client = await proxy(parse_config({"providers": {
        "plain": {"type": "openai", "base_url": upstream.url, "api_key": "k",
                  "default_model": "m"},
        "configured": {"type": "openai", "base_url": upstream.url, "api_key": "k",
                       "default_model": "m", "headers": {"Accept-Encoding": "br, zstd"}}},
        "default_provider": "plain"}, "test"))
    for provider in ("plain", "configured"):
        resp = await client.post("/v1/chat/completions", headers={
            "x-portkey-provider": provider, "accept-encoding": "br, zstd",
            "x-portkey-forward-headers": "accept-encoding"}, json={
            "model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
        assert resp.status == 200 and collect(sse_chunks(await resp.read())).content == "hi"
        assert _accepted(upstream.requests[-1].headers.get("Accept-Encoding")) <= {
            "identity", "gzip", "deflate"}, provider


# -- TLS ----------------------------------------------------------------------------------------

def _self_signed(tmp: Any) -> tuple[str, str]:
    """A certificate for localhost / 127.0.0.1 made with the openssl CLI."""
    cert, key = str(tmp / "cert.pem"), str(tmp / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", key, "-out", cert, "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


async def test_https_with_sni_and_certificate_checks(aiohttp_server: Any, tmp_path: Any) -> None:
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    seen_sni: list[str | None] = []
    server_ctx.sni_callback = lambda sock, name, ctx: seen_sni.append(name)  # type: ignore[assignment]
    up = Upstream()
    srv = await aiohttp_server(up.app(), ssl=server_ctx)
    url = f"https://localhost:{srv.port}/chunked"
    trusting = ssl.create_default_context(cafile=cert)
    async with native_client() as client:
        # The system CA store does not know this certificate: a refused handshake is a
        # connection failure (the proxy's "unreachable"), never a silent plain connection.
        with pytest.raises(ConnectionError):
            await post(client, url)
        client.pool._ssl = trusting  # what a deployment's CA store would provide
        for _ in range(2):
            resp = await post(client, url)
            parts = []
            while data := await resp.content.readany():
                parts.append(data)
            assert b"".join(parts) == b"".join(b"data: %d\n\n" % i for i in range(20))
            resp.release()
    assert seen_sni and seen_sni[-1] == "localhost"
    assert client.pool.opened == 1  # the TLS connection was kept alive and reused


async def test_an_https_upstream_closing_without_an_answer_is_a_disconnect(
        tmp_path: Any) -> None:
    """The connection is closed twice (connection_lost's failure, then the request's): a TLS
    transport closed twice drops its protocol, and the second close's write-buffer check
    raised AttributeError — a 500 internal error where aiohttp's client gave a 502."""
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(close_at_once, "127.0.0.1", 0, ssl=server_ctx)
    url = f"https://localhost:{server.sockets[0].getsockname()[1]}/"
    async with native_client() as client:
        client.pool._ssl = ssl.create_default_context(cafile=cert)
        for _ in range(2):
            with pytest.raises(Disconnected):
                await post(client, url)
        assert client.pool.busy == 0 and not any(client.pool.idle.values())
    server.close()


# -- a body released before its framing ended ----------------------------------------------------

HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n")


async def scripted_server(script: list[bytes | float]) -> tuple[asyncio.Server, str,
                                                                 list[asyncio.Event]]:
    """A raw upstream: per request, writes each bytes item and sleeps each float. The list of
    events gets one per connection, set when the proxy side closed it."""
    closed: list[asyncio.Event] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        gone = asyncio.Event()
        closed.append(gone)
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                await reader.readexactly(2)  # the body: b"{}"
                for step in script:
                    if isinstance(step, float):
                        await asyncio.sleep(step)
                    else:
                        writer.write(step)
                        await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            gone.set()
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/", closed


async def read_event(resp: Any) -> bytes:
    data = b""
    while b"\n\n" not in data:
        data += await resp.content.readany()
    return data


async def test_released_before_the_terminator_is_pooled_when_it_arrives() -> None:
    server, url, closed = await scripted_server([HEAD, b"9\r\ndata: x\n\n\r\n", 0.05,
                                                 b"0\r\n\r\n"])
    async with native_client() as client:
        for _ in range(3):
            resp = await post(client, url)
            assert await read_event(resp) == b"data: x\n\n"
            resp.release()  # the last event is in; the terminator is 50 ms away
            assert client.pool.busy == 1  # not closed: still reading to the end
            while client.pool.busy:
                await asyncio.sleep(0.01)
            assert len(client.pool.idle[next(iter(client.pool.idle))]) == 1
        server.close()
    assert client.pool.opened == 1 and len(closed) == 1


@pytest.mark.parametrize("tail", ["never", "too_much"])
async def test_a_released_body_that_does_not_end_is_closed(
        tail: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamproxy.upstream import http11
    monkeypatch.setattr(http11, "LINGER_SECONDS", 0.1)
    script: list[bytes | float] = [HEAD, b"9\r\ndata: x\n\n\r\n"]
    if tail == "too_much":  # more than LINGER_MAX_BYTES after the release, no end
        script += [0.02, b"%x\r\n%s\r\n" % (70_000, b"y" * 70_000), 5.0]
    else:
        script += [5.0]
    server, url, _ = await scripted_server(script)
    async with native_client() as client:
        resp = await post(client, url)
        await read_event(resp)
        resp.release()
        assert client.pool.busy == 1  # reading on, for the end that does not come
        started = asyncio.get_running_loop().time()
        while client.pool.busy:
            await asyncio.sleep(0.005)
        waited = asyncio.get_running_loop().time() - started
        # Closed at the linger deadline (0.1 s), or at once on too many bytes.
        assert waited < 0.09 if tail == "too_much" else 0.09 < waited < 2.0
        assert resp._conn.closed and not any(client.pool.idle.values())
        server.close()


@pytest.mark.parametrize("piped", [False, True])
async def test_closing_the_client_ends_the_requests_still_running(piped: bool) -> None:
    """close() (a worker's cleanup, after its drain) closed only idle connections: a stream
    still running kept its socket open and its reader waiting, for as long as the upstream
    went on. Now, as aiohttp's client does, every connection closes and what is still being
    read fails."""
    closed = asyncio.Event()

    async def answer_and_wait(reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await read_request(reader)
            writer.write(HEAD + b"9\r\ndata: x\n\n\r\n")  # and never the end
            await reader.read()  # until the proxy side closes
            closed.set()
        writer.close()

    server, url = await raw_server(answer_and_wait)
    ended: list[BaseException | None] = []

    class Sink:
        def data(self, data: bytes) -> None:
            pass

        def end(self, exc: BaseException | None) -> None:
            ended.append(exc)

    async with native_client() as client:
        resp = await post(client, url)
        await read_event(resp)
        if piped:
            resp.pipe(Sink())
        else:
            reading = asyncio.ensure_future(resp.read())
            await asyncio.sleep(0)
        await client.close()
        assert client.pool.busy == 0 and resp._conn.closed
        await closed.wait()  # the upstream saw the close
        if piped:
            assert len(ended) == 1 and isinstance(ended[0], Disconnected)
        else:
            with pytest.raises(Disconnected):
                await reading
        # A request sent after the close is refused, as by a closed aiohttp session.
        with pytest.raises(ConnectionError):
            await post(client, url)
    server.close()


async def test_a_connection_still_opening_when_the_client_closes_carries_no_request(
        server: tuple[Upstream, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """close() ran while a new connection was being opened (its DNS, TCP or TLS): the connect
    went on and the request was sent on it, a socket the closed client no longer tracked,
    held for as long as the upstream answered. The connection is now closed as it opens and
    the request refused, as one begun after the close is."""
    up, base = server
    opening, go_on = asyncio.Event(), asyncio.Event()
    open_socket = http11._open_socket

    async def slow_open(host: str, port: int) -> socket.socket:
        opening.set()
        await go_on.wait()
        return await open_socket(host, port)

    monkeypatch.setattr(http11, "_open_socket", slow_open)
    async with native_client() as client:
        sending = asyncio.ensure_future(post(client, base + "/length"))
        await opening.wait()
        await client.close()
        go_on.set()
        with pytest.raises(ConnectFailed):
            await sending
    assert up.requests == [] and client.pool.busy == 0


async def test_through_the_proxy_the_terminator_a_read_later_keeps_the_connection(
        proxy: Any, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    """The chunked terminator often arrives a read after the last event (here 50 ms after):
    the connection must still go back to the pool, not be closed and replaced."""
    monkeypatch.delenv(CLIENT_ENV, raising=False)
    text = fixture_bytes("anthropic/vercel-ai_anthropic-text.chunks.jsonl")
    upstream.pieces = [jsonl_to_sse(text)]
    upstream.piece_delay = 0.05
    config = native_anthropic_config(upstream.url)
    client = await proxy(config)
    pool = client.server.app[STATE].client.native.pool
    for _ in range(3):
        resp = await client.post("/v1/chat/completions", json={
            "model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
        got = collect(sse_chunks(await resp.read()))
        assert got.content and got.finish_reason
        async with asyncio.timeout(TEST_TIMEOUT):
            while pool.busy:
                await asyncio.sleep(0.01)
    assert pool.opened == 1


# -- requests against raw upstreams ---------------------------------------------------------------

async def read_request(reader: asyncio.StreamReader) -> None:
    """Read one request with a Content-Length body (what the proxy sends upstream)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    await reader.readexactly(length)


async def raw_server(handle: Any) -> tuple[asyncio.Server, str]:
    """A raw upstream on loopback calling `handle(reader, writer)` per connection."""
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"


async def test_a_connection_whose_request_was_not_all_sent_is_not_pooled() -> None:
    """An upstream answering before it read the body (keep-alive, as a 413 may come) leaves
    part of the request unwritten: a request reusing that connection would queue behind it."""
    done = asyncio.Event()

    async def answer_early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 2\r\n\r\nno")
        await done.wait()  # reads none of the body
        writer.close()

    server, url = await raw_server(answer_early)
    async with native_client() as client:
        resp = await post(client, url, body=b"x" * (16 << 20))
        assert resp.status == 413 and await resp.read() == b"no"
        resp.release()
        assert not any(client.pool.idle.values()) and resp._conn.closed
    done.set()
    server.close()


async def test_a_request_that_went_out_on_a_pooled_connection_is_never_sent_twice() -> None:
    """An upstream that reads a POST and closes without answering (it crashed, or closed
    the idle connection just as the request came) may have acted on it: no resend."""
    received: list[bytes] = []

    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(2)
                received.append(head.split(b" ", 2)[1])
                if head.startswith(b"POST /close"):
                    break
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        writer.close()

    server, url = await raw_server(answer_once)
    async with native_client() as client:
        resp = await post(client, url + "first")
        assert await resp.read() == b"ok"
        resp.release()
        with pytest.raises(Disconnected):
            await post(client, url + "close")
    server.close()
    assert received == [b"/first", b"/close"] and client.pool.opened == 1


@pytest.mark.parametrize("answer", [
    b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\r\n",
    b"Content-Length: 5\r\n\r\nhello\r\n",
])
async def test_bytes_after_a_whole_response_drop_the_connection_not_the_response(
        answer: bytes) -> None:
    async def answer_then_crlf(reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)
            writer.write(b"HTTP/1.1 200 OK\r\n" + answer)  # one write: one read
            await reader.read()
        writer.close()

    server, url = await raw_server(answer_then_crlf)
    async with native_client() as client:
        resp = await post(client, url)
        assert await resp.read() == b"hello"
        resp.release()
        assert not any(client.pool.idle.values()) and resp._conn.closed
    server.close()


@pytest.mark.parametrize("coding", [b"gzip, chunked", b"gzip"])
async def test_a_transfer_coding_besides_chunked_is_refused_by_name(
        proxy: Any, coding: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 9112 6.1: gzip as a transfer coding is a layer of the body, not framing; read as
    chunked (or until close) it reached the translator still compressed. A 502 names it."""
    monkeypatch.delenv(CLIENT_ENV, raising=False)
    event = b'event: message_start\ndata: {"type":"message_start","message":{}}\n\n'
    packed = gzip.compress(event)

    async def answer_gzip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Transfer-Encoding: " + coding + b"\r\n\r\n"
                         + b"%x\r\n%s\r\n0\r\n\r\n" % (len(packed), packed))
            await writer.drain()
        writer.close()

    server, url = await raw_server(answer_gzip)
    client = await proxy(native_anthropic_config(url.rstrip("/")))
    resp = await client.post("/v1/chat/completions", json={
        "model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    server.close()
    assert resp.status == 502
    message = (await resp.json())["error"]["message"]
    assert message == "bad response from provider 'up': unsupported Transfer-Encoding 'gzip'"


@pytest.mark.parametrize("kind", ["native", "aiohttp"])
async def test_an_error_answer_read_whole_keeps_its_connection(
        proxy: Any, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 429 or 500 is read to its end, then the response closed: aiohttp's client had
    released the connection at the body's end, the native one closed it, so every error
    answer cost a new connection (a new TLS handshake, in a 429 storm)."""
    monkeypatch.setenv(CLIENT_ENV, kind)
    connections = 0

    async def answer_errors(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                await read_request(reader)
                writer.write(b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json"
                             b"\r\nContent-Length: 30\r\n\r\n"
                             b'{"error":{"message":"slow"}}\n\n')
        writer.close()

    server, url = await raw_server(answer_errors)
    client = await proxy(native_anthropic_config(url.rstrip("/")))
    for stream in (True, False, True):
        resp = await client.post("/v1/chat/completions", json={
            "model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
        assert resp.status == 429 and (await resp.json())["error"]["message"] == "slow"
    server.close()
    assert connections == 1


@pytest.mark.parametrize("kind", ["native", "aiohttp"])
@pytest.mark.parametrize("stream", [True, False])
async def test_a_body_that_does_not_inflate_is_a_protocol_error_not_a_cut(
        proxy: Any, kind: str, stream: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A body labelled gzip that is not: the native client's MalformedResponse, while
    aiohttp's ClientPayloadError (its ContentEncodingError) was read as a truncation: "closed
    the connection mid-response", upstream_stream_truncated, of an upstream that had not."""
    monkeypatch.setenv(CLIENT_ENV, kind)

    async def answer_not_gzip(reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Content-Encoding: gzip\r\nContent-Length: 14\r\n\r\n"
                         b"data: [DONE]\n\n")
            await reader.read()
        writer.close()

    server, url = await raw_server(answer_not_gzip)
    client = await proxy(native_anthropic_config(url.rstrip("/")))
    resp = await client.post("/v1/chat/completions", json={
        "model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
    server.close()
    assert resp.status == 502
    error = (await resp.json())["error"]
    assert error["code"] == "upstream_protocol_error"
    assert error["message"].startswith("bad response from provider 'up': ")


# Anthropic's first events, enough for a stream to commit (its first content frame).
FIRST_EVENTS = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":'
    b'"message","role":"assistant","model":"m","content":[],"usage":{"input_tokens":1,'
    b'"output_tokens":0}}}\n\n'
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
    b'"content_block":{"type":"text","text":""}}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"Hi"}}\n\n')


@pytest.mark.parametrize("kind", ["native", "aiohttp"])
@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("bad_chunk", [b"zz\r\nxx\r\n", b"2\r\nabcdef\r\n"],
                         ids=["bad-size", "data-longer-than-size"])
async def test_a_bad_chunk_after_the_first_fails_at_once(
        proxy: Any, kind: str, stream: bool, bad_chunk: bytes,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A malformed chunk in a later read, then the upstream closes: aiohttp's C parser raised
    with the body already handed out and never failed it, so the proxy waited for the idle
    timeout (300 s) streamed or the first-token one (600 s) not, where the native client
    fails at once."""
    monkeypatch.setenv(CLIENT_ENV, kind)

    async def answer_a_bad_chunk(reader: asyncio.StreamReader,
                                 writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await read_request(reader)
            writer.write(HEAD + b"%x\r\n%s\r\n" % (len(FIRST_EVENTS), FIRST_EVENTS))
            await writer.drain()
            await asyncio.sleep(0.05)  # read apart from the head and the first chunk
            writer.write(bad_chunk)
            await writer.drain()
        writer.close()

    server, url = await raw_server(answer_a_bad_chunk)
    client = await proxy(native_anthropic_config(url.rstrip("/")))
    async with asyncio.timeout(5):
        resp = await client.post("/v1/chat/completions", json={
            "model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
        if stream:
            assert resp.status == 200
            got = collect(sse_chunks(await resp.read()))
            assert got.content == "Hi" and got.error is not None
            error = got.error
        else:
            assert resp.status == 502
            error = (await resp.json())["error"]
    server.close()
    assert error["code"] == "upstream_protocol_error"
    assert error["message"].startswith("bad response from provider 'up': ")


@pytest.mark.parametrize("kind", ["native", "aiohttp"])
@pytest.mark.parametrize(("fields", "accepted"), [
    ([b"x-big: " + b"a" * 10_000], True),  # a field over aiohttp's default 8190 bytes
    # with Content-Type and Content-Length: 256 headers (over its default 128), then 257
    ([b"x-h%d: v" % i for i in range(MAX_HEADERS - 2)], True),
    ([b"x-h%d: v" % i for i in range(MAX_HEADERS - 1)], False),
    ([b"x-big: " + b"a" * (MAX_HEAD_BYTES + 100)], False),
], ids=["10k-field", "256-headers", "257-headers", "over-64k-field"])
async def test_both_clients_take_the_same_response_heads(
        proxy: Any, kind: str, fields: list[bytes], accepted: bool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """aiohttp's client refused a header field over 8190 bytes or more than 128 headers (a
    502) that the native client, with its 64 KiB head and 256 headers, served."""
    monkeypatch.setenv(CLIENT_ENV, kind)

    async def answer_with_fields(reader: asyncio.StreamReader,
                                 writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await read_request(reader)
            writer.write(b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
                         + b"".join(field + b"\r\n" for field in fields)
                         + b'Content-Length: 28\r\n\r\n{"error":{"message":"slow"}}')
            await writer.drain()
        writer.close()

    server, url = await raw_server(answer_with_fields)
    client = await proxy(native_anthropic_config(url.rstrip("/")))
    resp = await client.post("/v1/chat/completions", json={
        "model": "m", "messages": [{"role": "user", "content": "hi"}]})
    server.close()
    error = (await resp.json())["error"]
    if accepted:
        assert resp.status == 429 and error["message"] == "slow"
    else:
        assert resp.status == 502 and error["code"] == "upstream_protocol_error"
