"""A client that stops reading must stop the upstream too: the relay awaits each write, aiohttp's
write waits for the client's socket buffer to drain, so the proxy stops reading, the upstream's
TCP window closes and its own writes block. Without that, a slow client would make the proxy
buffer the whole generation in memory.

The fake upstream streams text deltas without end (up to a cap, so a broken proxy fails the
test instead of eating the machine's memory) and counts the bytes its writes got through."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import orjson
import pytest
from aiohttp import web

from streamproxy.config import ConfigError
from streamproxy.providers.mock.server import anthropic_delta, anthropic_prelude, openai_delta
from streamproxy.server.admission import ADMISSION
from streamproxy.server.front import FRONT_ENV
from streamproxy.upstream.client import CLIENT_ENV
from tests.conftest import provider_config
from tests.helpers import FakeUpstream, make_config

SMALL_BUFFER = 32 * 1024  # socket buffers at both ends we control, so the kernel holds little
CAP = 512 * 1024 * 1024  # an unbounded proxy would drain this much in well under a minute


class EndlessUpstream:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.written = 0
        self.url = ""
        self.gone = asyncio.Event()  # the proxy closed the upstream connection

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        sock = request.transport.get_extra_info("socket")  # type: ignore[union-attr]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        if self.kind == "anthropic":
            await resp.write(anthropic_prelude("m", 1))
            batch = b"".join(anthropic_delta(i) for i in range(500))
        else:
            batch = b"".join(openai_delta(i, "m", False) for i in range(500))
        try:
            while self.written < CAP:
                await resp.write(batch)  # returns only once the transport has room again
                self.written += len(batch)
        except (ConnectionError, RuntimeError):
            pass  # the proxy went away with the client
        finally:
            self.gone.set()
        return resp


async def open_slow_client(port: int, body: bytes) -> tuple[asyncio.StreamReader, Any]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=SMALL_BUFFER)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                 % (len(body), body))
    return reader, writer


async def until_flat(upstream: EndlessUpstream, timeout: float = 15.0) -> int:
    """Wait until the upstream's count has not grown for a whole second; returns it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    samples = [-3, -2, -1]
    while samples[-1] != samples[-2] or samples[-2] != samples[-3]:
        assert loop.time() < deadline, f"the upstream kept writing: {upstream.written} bytes"
        await asyncio.sleep(0.5)
        samples.append(upstream.written)
    return samples[-1]


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
async def test_a_client_that_stops_reading_stops_the_upstream(kind: str, proxy: Any,
                                                              aiohttp_server: Any) -> None:
    upstream = EndlessUpstream(kind)
    server = await aiohttp_server(upstream.app())
    # An idle timeout far shorter than the client's pause: while the client is full, the
    # upstream is paused by us, not idle, and the stream must survive the pause.
    client = await proxy(provider_config(kind, str(server.make_url("")).rstrip("/"),
                                         timeouts={"idle": 0.5}))
    body = orjson.dumps({"model": "m", "stream": True,
                         "messages": [{"role": "user", "content": "hi"}]})
    reader, writer = await open_slow_client(client.server.port, body)
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200")
        assert b"chat.completion.chunk" in await asyncio.wait_for(reader.read(4096), 10)
        # The client reads nothing more. The upstream gets ahead by what the buffers on the
        # way hold (kernel socket buffers, the proxy's transport, its read buffer)...
        stalled_at = await until_flat(upstream)
        # ...and then its writes block, far below what it would have sent.
        assert stalled_at < 64 * 1024 * 1024, f"{stalled_at} bytes got through"
        await asyncio.sleep(1.0)
        assert upstream.written == stalled_at
        # Reading again releases it: the stream was paused, not broken.
        got = b""
        for _ in range(50):
            got += await asyncio.wait_for(reader.read(1 << 20), 10)
        await asyncio.sleep(0.2)
        assert upstream.written > stalled_at
        assert b'"error"' not in got
    finally:
        writer.close()


@pytest.mark.parametrize("upstream_client", ["native", "aiohttp"])  # piped, pulled relay
@pytest.mark.parametrize("front", ["lean", "aiohttp"])
async def test_a_total_timeout_while_the_client_is_full_ends_the_stream_it_was_reading(
        front: str, upstream_client: str, proxy: Any, aiohttp_server: Any, monkeypatch: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    """The total runs while a slow client holds the stream paused: at its expiry the upstream
    closes, and the client that reads on gets the error frame and the body's end — a slow
    client, not a gone one (the expiry's cancel landed on the wait for its buffer)."""
    caplog.set_level(logging.INFO, logger="streamproxy.access")
    monkeypatch.setenv(FRONT_ENV, front)
    monkeypatch.setenv(CLIENT_ENV, upstream_client)
    upstream = EndlessUpstream("openai")
    server = await aiohttp_server(upstream.app())
    client = await proxy(provider_config("openai", str(server.make_url("")).rstrip("/"),
                                         timeouts={"idle": 0.5, "total": 1.5}))
    body = orjson.dumps({"model": "m", "stream": True,
                         "messages": [{"role": "user", "content": "hi"}]})
    reader, writer = await open_slow_client(client.server.port, body)
    try:
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).startswith(
            b"HTTP/1.1 200")
        await asyncio.wait_for(upstream.gone.wait(), 10)  # the total ran out, not read on
        got = b""
        while not got.endswith(b"\r\n0\r\n\r\n"):
            piece = await asyncio.wait_for(reader.read(1 << 20), 10)
            assert piece, f"the body ended without its last chunk: {got[-300:]!r}"
            got += piece
    finally:
        writer.close()
    assert b'"code":"upstream_timeout"' in got[-400:]
    for _ in range(100):
        lines = [orjson.loads(r.getMessage()) for r in caplog.records
                 if r.name == "streamproxy.access"]
        if lines:
            break
        await asyncio.sleep(0.02)
    [line] = lines
    assert (line["status"], line["error_code"]) == (200, "upstream_timeout")
    assert line["client_disconnected"] is False


def send_timeout_config(url: str, seconds: float) -> Any:
    return make_config({"up": {"type": "openai", "base_url": url, "api_key": "sk-test-secret",
                               "default_model": "m"}}, default="up",
                       server={"send_timeout": seconds})


async def open_raw_client(port: int) -> socket.socket:
    """A client socket with a small receive buffer that has sent a streamed chat request."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    body = orjson.dumps({"model": "m", "stream": True,
                         "messages": [{"role": "user", "content": "hi"}]})
    await loop.sock_sendall(sock, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                            % (len(body), body))
    return sock


@pytest.mark.parametrize("upstream_client", ["native", "aiohttp"])  # piped, pulled relay
@pytest.mark.parametrize("front", ["lean", "aiohttp"])
async def test_a_client_that_stops_reading_is_cut_after_the_send_timeout(
        front: str, upstream_client: str, proxy: Any, aiohttp_server: Any, monkeypatch: Any,
        access_log: Any) -> None:
    """`server.send_timeout`: a client that keeps its connection open but takes nothing for that
    long loses it, and its upstream request and admission slot go with it."""
    monkeypatch.setenv(FRONT_ENV, front)
    monkeypatch.setenv(CLIENT_ENV, upstream_client)
    upstream = EndlessUpstream("openai")
    server = await aiohttp_server(upstream.app())
    client = await proxy(send_timeout_config(str(server.make_url("")).rstrip("/"), 0.5))
    loop = asyncio.get_running_loop()
    sock = await open_raw_client(client.server.port)
    try:
        first = await asyncio.wait_for(loop.sock_recv(sock, 4096), 10)
        assert first.startswith(b"HTTP/1.1 200")
        # The client reads nothing more: the proxy closes the upstream request...
        await asyncio.wait_for(upstream.gone.wait(), 10)
        # ...and the client's connection: what it reads now ends, no error frame in it (none
        # could be written to a client that takes nothing).
        got = b""
        for _ in range(10_000):
            try:
                piece = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 10)
            except ConnectionResetError:
                break
            if not piece:
                break
            got += piece
        else:
            raise AssertionError("the connection stayed open")
        assert not got.endswith(b"\r\n0\r\n\r\n")
    finally:
        sock.close()
    for _ in range(100):
        if access_log():
            break
        await asyncio.sleep(0.02)
    [line] = access_log()
    assert line["status"] == 200
    assert (line["client_disconnected"], line["error_code"]) == (True, "client_send_timeout")
    assert client.server.app[ADMISSION].active == 0


@pytest.mark.parametrize("front", ["lean", "aiohttp"])
async def test_a_slow_client_that_reads_on_is_not_cut(front: str, proxy: Any,
                                                       aiohttp_server: Any,
                                                       monkeypatch: Any) -> None:
    """The send timeout is on a stall, not on a slow pace: a client taking a little every
    0.2 s, its buffers full all along, keeps its stream (the proxy's transport buffer stays
    flat for seconds meanwhile: the socket's send queue is what moves)."""
    monkeypatch.setenv(FRONT_ENV, front)
    upstream = EndlessUpstream("openai")
    server = await aiohttp_server(upstream.app())
    # 1 s, five reads' time: a margin for a loaded machine's late timers
    client = await proxy(send_timeout_config(str(server.make_url("")).rstrip("/"), 1.0))
    loop = asyncio.get_running_loop()
    sock = await open_raw_client(client.server.port)
    try:
        assert (await asyncio.wait_for(loop.sock_recv(sock, 4096), 10)).startswith(
            b"HTTP/1.1 200")
        for _ in range(15):  # 3 s: three send timeouts
            await asyncio.sleep(0.2)
            assert await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), 10)
        # It was held back all along (the upstream, unpaused, would have sent hundreds of MB)...
        assert upstream.written < 64 * 1024 * 1024
        # ...and was not cut.
        assert not upstream.gone.is_set()
        assert await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), 10)
    finally:
        sock.close()


def test_send_timeout_validates() -> None:
    assert make_config({"x": {"type": "mock"}}).server.send_timeout == 60.0
    for off in (0, None):
        assert not make_config({"x": {"type": "mock"}},
                               server={"send_timeout": off}).server.send_timeout
    for bad in (-1, "60", float("inf"), float("nan"), True):
        with pytest.raises(ConfigError, match=r"server\.send_timeout"):
            make_config({"x": {"type": "mock"}}, server={"send_timeout": bad})


def _buffered(client: Any) -> int:
    """The bytes the proxy's client transports hold unsent (either front's)."""
    server = client.server.runner.server
    front_server = getattr(server, "aiohttp_server", server)
    transports = [c.transport for c in getattr(server, "connections", ())]
    transports += [h.transport for h in front_server.connections]
    return sum(t.get_write_buffer_size() for t in transports if t is not None)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("front", ["lean", "aiohttp"])
async def test_pipelined_requests_wait_while_the_client_takes_no_answer(
        front: str, stream: bool, proxy: Any, upstream: FakeUpstream, monkeypatch: Any) -> None:
    """A client that pipelines requests and reads none of the answers: the next request is
    served once the answer before it has left (as aiohttp's front does), not at once — each
    1 MB answer would otherwise pile up in the proxy's transport, unbounded as the client
    sends more. Reading again gets every answer, in order."""
    monkeypatch.setenv(FRONT_ENV, front)
    text = "x" * (1 << 20)
    if stream:
        upstream.body = b"data: %b\n\ndata: [DONE]\n\n" % orjson.dumps({
            "id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": text},
                         "finish_reason": "stop"}]})
    else:
        upstream.content_type = "application/json"
        upstream.body = orjson.dumps({
            "id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
    client = await proxy(provider_config("openai", upstream.url))
    body = orjson.dumps({"model": "m", "stream": stream,
                         "messages": [{"role": "user", "content": "hi"}]})
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
               b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", client.server.port))
    try:
        await loop.sock_sendall(sock, request * 20)
        samples = [-2, -1]
        for _ in range(100):  # until the upstream's count is flat for 0.3 s
            await asyncio.sleep(0.1)
            samples.append(len(upstream.requests))
            if samples[-1] == samples[-2] == samples[-3] == samples[-4] > 0:
                break
        assert len(upstream.requests) <= 4, f"{len(upstream.requests)} requests served"
        assert _buffered(client) < 8 << 20  # (one answer's ~1 MB, twice the kernel's)
        got = bytearray()
        for _ in range(100_000):  # the client reads: every answer comes
            piece = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 10)
            assert piece
            got += piece
            if got.endswith(b"0\r\n\r\n" if stream else b"}") and got.count(
                    b"HTTP/1.1 200") == 20:
                break
        assert len(upstream.requests) == 20
    finally:
        sock.close()
