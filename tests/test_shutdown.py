"""Graceful shutdown of a worker (server/drain.py, workers.drain_and_stop): stop accepting,
/healthz says draining, running streams finish within the grace period, the rest end with one
OpenAI error frame, and a request that has not started streaming gets a 503. Idle kept-alive
connections close; a request that comes on an open one during the drain is served, its answer
saying `Connection: close` (a 503 only once the grace period is over)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from streamproxy.server.app import STATE, create_app
from streamproxy.server.front import FRONT_ENV, make_runner
from streamproxy.server.store_and_cache import FEATURES
from streamproxy.server.workers import drain_and_stop
from tests.helpers import collect, make_config, sse_chunks

TEST_TIMEOUT = 20  # seconds: a broken drain fails the test instead of hanging the suite


@dataclass
class Running:
    app: web.Application
    runner: web.AppRunner
    url: str

    async def drain(self, grace: float) -> float:
        """SIGTERM's work; returns how long it took."""
        t0 = time.monotonic()
        await drain_and_stop(self.runner, [grace])
        return time.monotonic() - t0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    """The proxy on a real socket (the embedded mock in-process), as a worker runs it."""
    async with serving(make_runner) as started:
        yield started


@contextlib.asynccontextmanager
async def serving(make: Any, **server: Any) -> AsyncIterator[Running]:
    config = make_config({"mock": {"type": "mock", "default_model": "fast"}}, default="mock",
                         server=server)
    app = create_app(config)
    runner = make(app, handler_cancellation=True, shutdown_timeout=2.0)
    await runner.setup()
    port = _free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield Running(app, runner, f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()


def chat(model: str) -> dict[str, Any]:
    return {"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_a_stream_that_ends_within_the_grace_period_completes(running: Running) -> None:
    async with asyncio.timeout(TEST_TIMEOUT), aiohttp.ClientSession() as session, session.post(
            running.url + "/v1/chat/completions", json=chat("mock/tokens=10,tps=20")) as resp:
        first = await resp.content.readany()  # streaming: the commit point is behind us
        took, rest = await asyncio.gather(running.drain(grace=10.0), resp.read())
    c = collect(sse_chunks(first + rest))
    assert c.done and c.error is None and c.finish_reason == "stop"
    assert c.content.startswith("Hello from the streamproxy mock")
    assert took < 5.0  # it returned when the stream ended, not at the end of the grace period


async def test_streams_still_running_after_the_grace_period_end_with_an_error_frame(
        running: Running) -> None:
    async with asyncio.timeout(TEST_TIMEOUT), aiohttp.ClientSession() as session, session.post(
            running.url + "/v1/chat/completions", json=chat("mock/tokens=200,tps=20")) as resp:
        first = await resp.content.readany()
        took, rest = await asyncio.gather(running.drain(grace=0.3), resp.read())
    chunks = sse_chunks(first + rest)
    c = collect(chunks)  # the strict client: nothing after the error frame, no [DONE]
    assert c.error is not None and not c.done
    assert c.error["code"] == "shutting_down" and c.error["type"] == "api_error"
    assert chunks[-1] == {"error": c.error}
    assert 0 < len(c.content) < len("Hello from the streamproxy mock") * 20  # cut, not silent
    assert 0.3 <= took < 3.0


@pytest.mark.parametrize("front", ["lean", "aiohttp"])
async def test_a_request_on_a_kept_alive_connection_during_the_drain_is_served_then_closed(
        monkeypatch: pytest.MonkeyPatch, front: str) -> None:
    """It was answered 503 shutting_down: an error on every reload for a client that does not
    retry (curl, load-test users). Served, with `Connection: close`, as nginx and uvicorn do."""
    monkeypatch.setenv(FRONT_ENV, front)
    async with (asyncio.timeout(TEST_TIMEOUT), serving(make_runner) as running,
                aiohttp.ClientSession() as idle, aiohttp.ClientSession() as busy):
        url = running.url
        resp = await idle.get(url + "/healthz")  # leaves a kept-alive connection in `idle`
        assert resp.status == 200 and await resp.json() == {"status": "ok"}
        async with busy.post(url + "/v1/chat/completions",
                             json=chat("mock/tokens=40,tps=20")) as stream:
            await stream.content.readany()
            drain = asyncio.create_task(running.drain(grace=10.0))
            await wait_for(lambda: running.app[STATE].drain.draining)
            served = await idle.post(url + "/v1/chat/completions",
                                     json={**chat("mock/fast"), "stream": False})
            assert served.status == 200 and (await served.json())["choices"]
            assert served.headers.get("connection", "").lower() == "close"
            with pytest.raises(aiohttp.ClientConnectionError):  # no longer accepting
                await idle.get(url + "/healthz")
            c = collect(sse_chunks(await stream.read()))
        assert c.done  # the running stream was left to finish
        await drain


@pytest.mark.parametrize("front", ["lean", "aiohttp"])
async def test_a_request_being_served_as_the_drain_begins_is_answered_with_connection_close(
        monkeypatch: pytest.MonkeyPatch, front: str) -> None:
    """Its answer kept the connection alive, which the drain then closed once idle 1 s: a
    client that does not retry (http.client) and waited longer before its next request sent
    it on a closed connection, an error on every reload. Told to close, it opens a new one."""
    monkeypatch.setenv(FRONT_ENV, front)
    async with asyncio.timeout(TEST_TIMEOUT), serving(make_runner) as running:
        host, port = running.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        body = (b'{"model": "mock/fast:stall_ms=300", "messages": [{"role": "user", '
                b'"content": "hi"}]}')
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     b"application/json\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
        await wait_for(lambda: running.app[STATE].drain.active == 1)
        drain = asyncio.create_task(running.drain(grace=5.0))
        answer = (await asyncio.wait_for(reader.read(), 2)).lower()  # then EOF
        writer.close()
        await drain
    assert answer.startswith(b"http/1.1 200") and b"connection: close" in answer


@pytest.mark.parametrize("front", ["lean", "aiohttp"])
async def test_an_idle_kept_alive_connection_closes_when_the_drain_begins(
        monkeypatch: pytest.MonkeyPatch, front: str) -> None:
    """Closed at once (it has been idle longer than the drain's linger), without waiting for
    the runner's cleanup: the drain returns as soon as nothing runs."""
    monkeypatch.setenv(FRONT_ENV, front)
    async with (asyncio.timeout(TEST_TIMEOUT), serving(make_runner) as running):
        host, port = running.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        await asyncio.sleep(1.2)  # idle longer than DRAIN_LINGER
        took = await running.drain(grace=10.0)
        assert await asyncio.wait_for(reader.read(), 1) == b'{"status": "ok"}'  # then EOF
        writer.close()
    assert took < 0.5


@pytest.mark.parametrize("front", ["lean", "aiohttp"])
async def test_the_drain_health_and_a_request_after_the_grace_on_open_connections(
        monkeypatch: pytest.MonkeyPatch, front: str) -> None:
    """/healthz answers 503 draining on a connection still open; once the grace is over, a new
    request there cannot be served: 503 shutting_down, and the connection closes."""
    monkeypatch.setenv(FRONT_ENV, front)
    async with (asyncio.timeout(TEST_TIMEOUT), serving(make_runner) as running,
                aiohttp.ClientSession() as kept, aiohttp.ClientSession() as busy):
        url = running.url
        assert (await kept.get(url + "/healthz")).status == 200
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))  # open, idle (< 1 s)
        async with busy.post(url + "/v1/chat/completions",
                             json=chat("mock/tokens=200,tps=20")) as stream:
            await stream.content.readany()
            drain = asyncio.create_task(running.drain(grace=0.3))
            await wait_for(lambda: running.app[STATE].drain.draining)
            health = await kept.get(url + "/healthz")
            assert health.status == 503 and await health.json() == {"status": "draining"}
            assert health.headers.get("connection", "").lower() == "close"
            await stream.read()
        await drain
        assert running.app[STATE].drain.aborted
        body = b'{"model": "mock/fast", "messages": [{"role": "user", "content": "hi"}]}'
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     b"application/json\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
        answer = (await asyncio.wait_for(reader.read(), 2)).lower()
        writer.close()
        assert answer.startswith(b"http/1.1 503") and b"connection: close" in answer
        assert b'"code":"shutting_down"' in answer


@pytest.mark.parametrize("front", ["lean", "aiohttp"])
async def test_a_request_after_the_grace_gets_a_503_when_no_stream_outlived_it(
        monkeypatch: pytest.MonkeyPatch, front: str) -> None:
    """The grace ended with nothing running but a connection still open (idle less than the
    drain's linger): a request it brings then was served, after the grace (a worker waiting
    for a reload's old app to drain kept serving such requests, then cut them at cleanup).
    Its 503 is its answer: the log line's `bytes_out` (and the response-bytes counter) said 0,
    though the client got its JSON."""
    monkeypatch.setenv(FRONT_ENV, front)
    async with (asyncio.timeout(TEST_TIMEOUT), serving(make_runner) as running):
        records: list[Any] = []
        running.app[STATE].observers.append(records.append)
        host, port = running.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))  # open, idle (< 1 s)
        await wait_for(lambda: running.runner.server.open_connections() == 1)  # type: ignore
        await running.drain(grace=0.3)
        body = b'{"model": "mock/fast", "messages": [{"role": "user", "content": "hi"}]}'
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     b"application/json\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
        answer = await asyncio.wait_for(reader.read(), 2)
        writer.close()
    assert answer.lower().startswith(b"http/1.1 503") and b'"code":"shutting_down"' in answer
    [record] = records
    assert record.error_code == "shutting_down"
    assert record.bytes_out == len(answer.split(b"\r\n\r\n", 1)[1]) > 0


@pytest.mark.parametrize("front", ["lean", "aiohttp"])
async def test_a_connection_accepted_as_the_drain_begins_is_wound_down_too(
        monkeypatch: pytest.MonkeyPatch, front: str) -> None:
    """asyncio makes an accepted connection's protocol, then calls its connection_made a loop
    turn later: a drain beginning in between did not find it among the connections, so it kept
    its requests alive (no `Connection: close`) and stayed open, for a request after the grace
    or the runner's cleanup to cut."""
    monkeypatch.setenv(FRONT_ENV, front)
    async with asyncio.timeout(TEST_TIMEOUT), serving(make_runner) as running:
        draining: list[asyncio.Task[float]] = []

        def accept() -> asyncio.BaseProtocol:
            protocol = running.runner.server()  # type: ignore[misc]
            draining.append(asyncio.create_task(running.drain(grace=5.0)))  # runs first
            return protocol

        ours, theirs = socket.socketpair()
        await asyncio.get_running_loop().connect_accepted_socket(accept, ours)
        reader, writer = await asyncio.open_connection(sock=theirs)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = (await asyncio.wait_for(reader.read(), 2)).lower()  # then EOF
        writer.close()
        await draining[0]
    assert answer.startswith(b"http/1.1 503") and b"connection: close" in answer


async def test_a_request_not_yet_streaming_when_the_grace_ends_gets_a_503(
        running: Running) -> None:
    drain_state = running.app[STATE].drain
    async with asyncio.timeout(TEST_TIMEOUT), aiohttp.ClientSession() as session:
        pending = asyncio.create_task(session.post(  # the mock holds its headers for 5 s
            running.url + "/v1/chat/completions", json=chat("mock/fast:stall_ms=5000")))
        await wait_for(lambda: drain_state.active == 1)
        took = await running.drain(grace=0.2)
        resp = await pending
        assert resp.status == 503
        assert (await resp.json())["error"]["code"] == "shutting_down"
    assert took < 3.0


@pytest.mark.parametrize("front", ["lean", "aiohttp"])
async def test_a_request_still_uploading_its_body_when_the_grace_ends_gets_a_503(
        monkeypatch: pytest.MonkeyPatch, front: str) -> None:
    """On the lean front (the default) a body still arriving was no request to the drain: its
    connection stayed open, unanswered, until the runner's cleanup closed it (after a reload's
    old app drained too, maybe much later), logged as a client that left (499). Now it gets
    the 503 `shutting_down` a request waiting for its upstream gets, as on aiohttp's front."""
    monkeypatch.setenv(FRONT_ENV, front)
    async with asyncio.timeout(TEST_TIMEOUT), serving(make_runner) as running:
        records: list[Any] = []
        running.app[STATE].observers.append(records.append)
        server: Any = running.runner.server
        host, port = running.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        body = b'{"model": "mock/fast", "messages": [{"role": "user", "content": "hi"}]}'
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     b"application/json\r\nContent-Length: %d\r\n\r\n%b"
                     % (len(body), body[:20]))
        await wait_for(lambda: running.app[STATE].drain.active == 1 if front == "aiohttp"
                       else any(c._head is not None for c in server.connections))
        await running.drain(grace=0.3)
        answer = (await asyncio.wait_for(reader.read(), 2)).lower()  # before the cleanup
        writer.close()
    assert answer.startswith(b"http/1.1 503") and b"connection: close" in answer
    assert b'"code":"shutting_down"' in answer and b"retry-after: 1" in answer
    [record] = records
    assert record.status == 503 and record.error_code == "shutting_down"
    assert not record.client_disconnected


@pytest.mark.parametrize("front", ["lean", "aiohttp"])
async def test_a_stream_kept_alive_while_its_first_event_is_late_ends_with_an_error_frame(
        monkeypatch: pytest.MonkeyPatch, front: str) -> None:
    """The keep-alive comments committed a 200: when the grace ends before the first event,
    the stream ends as a running one does (one error frame, the body's end), not cut."""
    monkeypatch.setenv(FRONT_ENV, front)
    async with (asyncio.timeout(TEST_TIMEOUT), serving(make_runner, keepalive_interval=0.05)
                as server, aiohttp.ClientSession() as session, session.post(
                    server.url + "/v1/chat/completions",
                    json=chat("mock/fast:stall_ms=5000")) as resp):
        assert resp.status == 200
        first = await resp.content.readany()
        assert first.startswith(b": keep-alive")
        took, rest = await asyncio.gather(server.drain(grace=0.2), resp.read())
    c = collect(sse_chunks(first + rest))
    assert c.error is not None and c.error["code"] == "shutting_down" and not c.done
    assert took < 3.0


@pytest.mark.parametrize("front", ["lean", "aiohttp"])
async def test_a_503_at_the_grace_end_carries_its_log_lines_trace_id_and_provider(
        monkeypatch: pytest.MonkeyPatch, front: str) -> None:
    """The 503 of a request the grace's end aborted before it committed had none of the
    headers the handler noted: a new x-request-id (not the one its access-log line has, so
    the client's error could not be found in the log) and no x-portkey-provider, which every
    other error of a routed request carries."""
    monkeypatch.setenv(FRONT_ENV, front)
    async with asyncio.timeout(TEST_TIMEOUT), serving(make_runner) as running:
        records: list[Any] = []
        running.app[STATE].observers.append(records.append)
        async with aiohttp.ClientSession() as session:
            pending = asyncio.create_task(session.post(  # the mock holds its headers for 5 s
                running.url + "/v1/chat/completions",
                json={**chat("mock/fast:stall_ms=5000"), "stream": False}))
            await wait_for(lambda: running.app[STATE].drain.active == 1)
            await running.drain(grace=0.2)
            resp = await pending
            body = await resp.read()
            assert resp.status == 503 and b'"code":"shutting_down"' in body
    [record] = records
    assert record.status == 503 and record.error_code == "shutting_down"
    assert record.bytes_out == len(body)  # (it said 0)
    assert resp.headers["x-request-id"] == record.trace_id
    assert resp.headers["x-portkey-trace-id"] == record.trace_id
    assert resp.headers["x-portkey-provider"] == "mock"
    assert resp.headers["retry-after"] == "1"


@pytest.mark.parametrize("front", ["lean", "aiohttp"])
async def test_a_cache_hits_replay_the_grace_ends_during_finishes_as_a_200(
        monkeypatch: pytest.MonkeyPatch, front: str) -> None:
    """A streamed hit's replay was no stream to the drain: at the grace's end its task was
    cancelled while its one write waited for a slow client, and the aiohttp front wrote a
    503's head into the 200's chunked body (the client's HTTP parser failed after [DONE]),
    the access log saying 503. Its whole answer is written at once: it finishes."""
    monkeypatch.setenv(FRONT_ENV, front)
    config = make_config({"mock": {"type": "mock", "default_model": "fast"}}, default="mock",
                         cache={"default_max_age": 60})
    app = create_app(config)
    records: list[Any] = []
    app[STATE].observers.append(records.append)
    runner = make_runner(app, handler_cancellation=True, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    body = orjson.dumps({**chat("mock/tokens=30000,tps=0"), "stream": True})
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/"
               b"json\r\nx-portkey-config: {\"cache\": {\"mode\": \"simple\"}}\r\n"
               b"Content-Length: %d\r\n\r\n%b" % (len(body), body))
    try:
        async with asyncio.timeout(TEST_TIMEOUT):
            assert await _filled(app, port, body, '{"cache": {"mode": "simple"}}') == "MISS"
            # a client that reads nothing while the grace runs out
            reader, writer = await _reading_nothing(port)
            writer.write(request)
            # (the lean front writes it at once, with no wait: it may be over already)
            await wait_for(lambda: len(records) == 2 or app[STATE].drain.active == 1)
            drain = asyncio.create_task(drain_and_stop(runner, [0.3]))
            await wait_for(lambda: app[STATE].drain.aborted)
            answer = await reader.read()  # to the connection's end
            writer.close()
            await drain
    finally:
        await runner.cleanup()
    head, _, chunked = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"x-portkey-cache-status: HIT" in head
    assert chunked.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
    assert b"HTTP/1.1 503" not in chunked and b"shutting_down" not in chunked
    assert collect(sse_chunks(_unchunked(chunked))).done
    assert records[-1].status == 200 and records[-1].cache_status == "HIT"
    assert records[-1].error_code is None


async def _filled(app: Any, port: int, body: bytes, cache: str) -> str:
    """The cache status of one request that fills the cache with `body`'s answer, written."""
    async with aiohttp.ClientSession() as session, session.post(
            f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
            headers={"content-type": "application/json", "x-portkey-config": cache}) as miss:
        status = miss.headers["x-portkey-cache-status"]
        await miss.read()
    await app[FEATURES].cache.drain()
    return status


async def _reading_nothing(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection with a small receive buffer, for a client that reads nothing for a while."""
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.setblocking(False)
    await asyncio.get_running_loop().sock_connect(slow, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=slow)


def _unchunked(body: bytes) -> bytes:
    """A chunked body's data (bounded by its length: every chunk consumes bytes)."""
    out, at = [], 0
    while at < len(body):
        size_end = body.index(b"\r\n", at)
        size = int(body[at:size_end], 16)
        if size == 0:
            break
        out.append(body[size_end + 2:size_end + 2 + size])
        at = size_end + 4 + size
    return b"".join(out)


@pytest.mark.parametrize("front", ["lean", "aiohttp"])
@pytest.mark.parametrize("hit", [True, False])
async def test_a_stream_the_cleanup_cuts_is_logged_as_cut_by_the_proxy(
        monkeypatch: pytest.MonkeyPatch, front: str, hit: bool) -> None:
    """A client that reads nothing past the grace and ABORTED_WAIT: the runner's cleanup cuts
    its connection (a replay's, or a live stream's after its error frame). The proxy cut it:
    the log must not say the client went away."""
    from streamproxy.server import workers

    monkeypatch.setenv(FRONT_ENV, front)
    monkeypatch.setattr(workers, "ABORTED_WAIT", 0.2)
    config = make_config({"mock": {"type": "mock", "default_model": "fast"}}, default="mock",
                         cache={"default_max_age": 60})
    app = create_app(config)
    records: list[Any] = []
    app[STATE].observers.append(records.append)
    runner = make_runner(app, handler_cancellation=True, shutdown_timeout=0.3)
    await runner.setup()
    listener = socket.socket()  # small send buffers (inherited): the answer cannot all leave
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    site = web.SockSite(runner, listener)
    await site.start()
    port = listener.getsockname()[1]
    cache = '{"cache": {"mode": "simple"}}'
    body = orjson.dumps({**chat("mock/tokens=30000,tps=0"), "stream": True})
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/"
               b"json\r\nx-portkey-config: %b\r\nContent-Length: %d\r\n\r\n%b"
               % (cache.encode() if hit else b"{}", len(body), body))
    cleaned = False
    try:
        async with asyncio.timeout(TEST_TIMEOUT):
            if hit:
                await _filled(app, port, body, cache)
            # a client that reads nothing until the cleanup is over
            reader, writer = await _reading_nothing(port)
            writer.write(request)
            await wait_for(lambda: len(records) == int(hit) + 1 or app[STATE].drain.active == 1)
            await drain_and_stop(runner, [0.2])
            await runner.cleanup()
            cleaned = True
            await wait_for(lambda: len(records) == int(hit) + 1)
            with contextlib.suppress(ConnectionError):
                await reader.read()
            writer.close()
    finally:
        if not cleaned:
            await runner.cleanup()
    record = records[-1]
    assert record.status == 200 and record.cache_status == ("HIT" if hit else "DISABLED")
    assert not record.client_disconnected
    if hit and front == "lean":  # its one write went to the transport at once: it ended
        assert record.error_code is None
    else:
        assert (record.error_type, record.error_code) == ("api_error", "shutting_down")


@pytest.mark.parametrize("front", ["lean", "aiohttp"])
async def test_a_head_still_arriving_when_the_grace_ends_is_no_request_yet(
        monkeypatch: pytest.MonkeyPatch, front: str) -> None:
    """A head in pieces at the grace's end is not answered for itself: finished before the
    clean-up it is a request, refused 503 `shutting_down`; never finished, its connection
    closes at the clean-up with no answer (as nginx's and Envoy's drains close theirs), and
    no log line: nothing was asked."""
    monkeypatch.setenv(FRONT_ENV, front)
    body = b'{"model": "mock/fast", "messages": [{"role": "user", "content": "hi"}]}'
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
            b"application/json\r\nContent-Length: %d\r\n" % len(body))
    async with asyncio.timeout(TEST_TIMEOUT), serving(make_runner) as running:
        records: list[Any] = []
        running.app[STATE].observers.append(records.append)
        host, port = running.url.removeprefix("http://").split(":")
        finished = await asyncio.open_connection(host, int(port))
        left = await asyncio.open_connection(host, int(port))
        for _, writer in (finished, left):
            writer.write(head[:30])
        await asyncio.sleep(0.05)  # (both heads have begun to arrive)
        await running.drain(grace=0.3)
        finished[1].write(head[30:] + b"\r\n" + body)
        answer = (await asyncio.wait_for(finished[0].read(), 2)).lower()
        await running.runner.cleanup()
        cut = await asyncio.wait_for(left[0].read(), 2)
        for _, writer in (finished, left):
            writer.close()
    assert answer.startswith(b"http/1.1 503") and b'"code":"shutting_down"' in answer
    assert cut == b""
    assert [r.error_code for r in records] == ["shutting_down"]
