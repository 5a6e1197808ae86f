"""A client that goes away cancels its upstream request promptly; nothing is left open."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import orjson
import pytest

from streamproxy.routing.executor import Executor
from streamproxy.server import handlers
from tests.conftest import provider_config
from tests.helpers import make_config

START = (b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","model":"m",'
         b'"usage":{"input_tokens":3,"output_tokens":1}}}\n\n'
         b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
         b'"delta":{"type":"text_delta","text":"one"}}\n\n')


async def test_client_disconnect_mid_stream_closes_the_upstream_within_a_second(
        proxy: Any, upstream: Any) -> None:
    upstream.pieces = [START]
    upstream.hold_open = True  # the upstream would stream forever
    client = await proxy(provider_config("anthropic", upstream.url))
    async with aiohttp.ClientSession() as session:
        resp = await session.post(client.make_url("/v1/chat/completions"), json={
            "messages": [{"role": "user", "content": "hi"}], "stream": True})
        first = await resp.content.readany()
        assert b'"content":"one"' in first or b"role" in first
        resp.close()  # the client goes away mid-stream
    await asyncio.wait_for(upstream.closed.wait(), timeout=1.0)


async def test_client_disconnect_while_waiting_for_the_first_event(
        proxy: Any, upstream: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="streamproxy.access")
    upstream.delay_before_headers = 30
    client = await proxy(provider_config("anthropic", upstream.url))
    async with aiohttp.ClientSession() as session:
        task = asyncio.ensure_future(session.post(client.make_url("/v1/chat/completions"),
                                                  json={"messages": [{"role": "user",
                                                                      "content": "hi"}],
                                                        "stream": True}))
        while not upstream.requests:
            await asyncio.sleep(0.01)
        task.cancel()
    # The proxy's upstream connection closes: the fake's handler sees the cancel.
    proxy_app = client.server.app
    from streamproxy.server.app import STATE

    upstream_client = proxy_app[STATE].client

    def in_use() -> int:  # connections carrying a request, whichever client is configured
        if upstream_client.native is not None:
            return upstream_client.native.pool.busy
        return len(upstream_client.session.connector._acquired)  # type: ignore[union-attr]

    for _ in range(100):
        if not in_use():
            break
        await asyncio.sleep(0.01)
    assert not in_use()
    # Logged (and counted) as nginx's 499, not as a 200 nothing was sent for.
    [line] = [orjson.loads(r.getMessage()) for r in caplog.records
              if r.name == "streamproxy.access"]
    assert line["status"] == 499 and line["client_disconnected"] is True


async def test_a_client_gone_as_the_stream_opens_behind_keepalives_closes_it(
        proxy: Any, upstream: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """With keep-alives the stream opens in a task of its own: a client that goes away in the
    loop iteration it opened in must not leave its upstream connection open."""
    upstream.pieces = [START]
    upstream.hold_open = True
    upstream.delay_before_headers = 0.3  # the keep-alives commit the response first
    handler_tasks: list[asyncio.Task[Any]] = []
    keepalives, open_stream = handlers._open_with_keepalives, Executor.open_stream

    async def keeping_alive(*args: Any) -> Any:
        handler_tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        return await keepalives(*args)

    async def opening(self: Executor, *args: Any) -> Any:
        stream = await open_stream(self, *args)
        handler_tasks[0].cancel()  # the client's disconnect, in the same iteration
        return stream

    monkeypatch.setattr(handlers, "_open_with_keepalives", keeping_alive)
    monkeypatch.setattr(Executor, "open_stream", opening)
    client = await proxy(make_config({"up": {"type": "anthropic", "base_url": upstream.url,
                                             "api_key": "k", "default_model": "m"}},
                                     default="up", server={"keepalive_interval": 0.05}))
    async with aiohttp.ClientSession() as session:
        resp = await session.post(client.make_url("/v1/chat/completions"), json={
            "messages": [{"role": "user", "content": "hi"}], "stream": True})
        assert await resp.content.readuntil(b"\n\n") == b": keep-alive\n\n"
        await asyncio.wait_for(upstream.closed.wait(), timeout=1.0)


@pytest.mark.parametrize("front", ["lean", "aiohttp"])
async def test_the_response_head_leaves_with_the_first_frame_in_one_write(
        proxy: Any, upstream: Any, monkeypatch: Any, front: str) -> None:
    """One write (one syscall, one TCP segment) carries the head and the first chunk, so the
    first token is not a second send behind the head."""
    from aiohttp import http_writer

    from streamproxy.server import front as lean

    writes: list[bytes] = []
    original = (http_writer.StreamWriter._write, http_writer.StreamWriter._writelines,
                lean.Connection.write)

    def write(self: Any, chunk: bytes) -> None:
        writes.append(bytes(chunk))
        original[0](self, chunk)

    def writelines(self: Any, chunks: Any) -> None:
        chunks = list(chunks)
        writes.append(b"".join(bytes(c) for c in chunks))
        original[1](self, chunks)

    def lean_write(self: Any, data: bytes) -> None:
        writes.append(data)
        original[2](self, data)

    monkeypatch.setenv(lean.FRONT_ENV, front)
    monkeypatch.setattr(http_writer.StreamWriter, "_write", write)
    monkeypatch.setattr(http_writer.StreamWriter, "_writelines", writelines)
    monkeypatch.setattr(lean.Connection, "write", lean_write)
    upstream.pieces = [START]
    upstream.hold_open = True
    client = await proxy(provider_config("anthropic", upstream.url))
    async with aiohttp.ClientSession() as session:
        resp = await session.post(client.make_url("/v1/chat/completions"), json={
            "messages": [{"role": "user", "content": "hi"}], "stream": True})
        await resp.content.readany()
        resp.close()
    streamed = [w for w in writes if b"x-portkey-trace-id" in w.lower()]  # not the upstream
    assert len(streamed) == 1 and streamed[0].startswith(b"HTTP/1.1 200")
    assert b"data: {" in streamed[0]  # the first frame is in the head's write


async def test_the_stream_is_set_up_while_the_upstream_thinks(
        proxy: Any, upstream: Any, monkeypatch: Any) -> None:
    """The encoder and translator are built after the upstream request is sent and before
    its answer arrives, so their cost is not on the time to first token."""
    from streamproxy.providers.anthropic import AnthropicProvider
    from streamproxy.upstream.client import UpstreamClient

    events: list[str] = []
    send, make = UpstreamClient.send, AnthropicProvider.stream_translator

    async def sending(self: Any, *args: Any, **kwargs: Any) -> Any:
        events.append("send")
        response = await send(self, *args, **kwargs)
        events.append("answer")
        return response

    def building(self: Any, *args: Any) -> Any:
        events.append("build")
        return make(self, *args)

    monkeypatch.setattr(UpstreamClient, "send", sending)
    monkeypatch.setattr(AnthropicProvider, "stream_translator", building)
    upstream.pieces = [START + b'event: message_stop\ndata: {"type":"message_stop"}\n\n']
    upstream.delay_before_headers = 0.1
    client = await proxy(provider_config("anthropic", upstream.url))
    resp = await client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "hi"}], "stream": True})
    assert b'"content":"one"' in await resp.read()
    assert events == ["send", "build", "answer"]


async def test_a_request_body_the_upstream_stopped_reading_is_dropped_when_the_client_leaves(
        proxy: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """An upstream that reads a request's head and not its body: once the client goes away,
    the half-sent request is dropped at once — a graceful close would wait, connection and
    body held, until the upstream read it all."""
    from streamproxy.upstream.client import CLIENT_ENV
    from tests.test_faults import established_to

    monkeypatch.setenv(CLIENT_ENV, "native")  # (aiohttp's client closes its own connections)
    heads = asyncio.Queue[asyncio.StreamWriter]()

    async def read_only_the_head(reader: asyncio.StreamReader,
                                 writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await heads.put(writer)  # and never read again: the body fills the buffers

    server = await asyncio.start_server(read_only_the_head, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = await proxy(provider_config("openai", f"http://127.0.0.1:{port}"))
        big = "x" * 8_000_000  # more than the kernel's buffers hold on both ends
        _, writer = await asyncio.open_connection(client.host, client.port)
        body = orjson.dumps({"messages": [{"role": "user", "content": big}], "stream": True})
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
                     % (len(body), body))
        upstream = await asyncio.wait_for(heads.get(), 10)
        writer.transport.abort()  # the client goes away while its request is being sent on
        for _ in range(100):
            if established_to(port) == 0:
                break
            await asyncio.sleep(0.01)
        assert established_to(port) == 0  # the proxy's end is gone, and the upstream's reset
        upstream.transport.abort()
    finally:
        server.close()


async def test_a_deadline_that_runs_out_as_the_stream_opens_behind_keepalives_still_ends_it(
        proxy: Any, upstream: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """With keep-alives the stream opens in a task of its own and moves to the handler's: a
    deadline that runs out in between (its cancel reaches a task already done) must still end
    the stream with its error frame, not leave it relayed with no deadline at all."""
    upstream.pieces = [START]
    upstream.hold_open = True  # after its first event the upstream stalls, for ever
    upstream.delay_before_headers = 0.2  # the keep-alives commit the response first
    open_stream = Executor.open_stream

    async def opening(self: Executor, *args: Any) -> Any:
        stream = await open_stream(self, *args)
        deadline = stream.deadline
        deadline._total_end = deadline.loop.time()  # the total runs out...
        deadline.loop.call_soon(deadline._fire)  # ...once this task is done
        return stream

    monkeypatch.setattr(Executor, "open_stream", opening)
    client = await proxy(make_config({"up": {"type": "anthropic", "base_url": upstream.url,
                                             "api_key": "k", "default_model": "m",
                                             "timeouts": {"total": 30}}},
                                     default="up", server={"keepalive_interval": 0.05}))
    async with aiohttp.ClientSession() as session:
        resp = await session.post(client.make_url("/v1/chat/completions"), json={
            "messages": [{"role": "user", "content": "hi"}], "stream": True})
        body = await asyncio.wait_for(resp.read(), 2)
    assert b'"code":"upstream_timeout"' in body and b"[DONE]" not in body
    await asyncio.wait_for(upstream.closed.wait(), timeout=1.0)


async def test_an_app_that_stopped_serving_is_freed(tmp_path: Any) -> None:
    """A single process reloading in place retires its previous app: once cleaned up, nothing
    may keep it (its config, providers, client, stores) alive. aiohttp caches every route's
    middleware chain process-wide, keyed by the app (up to 1,024), so each reloaded-away app
    that had served a /v1/models, /metrics or stored-completions request stayed in memory."""
    import gc
    import weakref

    from streamproxy.server.app import create_app
    from streamproxy.server.front import make_runner

    async def serve_once() -> weakref.ref[Any]:
        app = create_app(make_config({"mock": {"type": "mock", "default_model": "fast"}},
                                     default="mock",
                                     storage={"path": str(tmp_path / "db.sqlite3")}))
        runner = make_runner(app)
        await runner.setup()
        site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with aiohttp.ClientSession() as session:
            for path in ("/v1/models", "/metrics", "/v1/chat/completions", "/healthz"):
                async with session.get(url + path) as resp:
                    assert resp.status == 200, path
        await runner.cleanup()
        return weakref.ref(app)

    freed = await serve_once()
    await asyncio.sleep(0)
    gc.collect()
    assert freed() is None
