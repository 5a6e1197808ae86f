"""Reading a request (server/reading.py), on both fronts: a head or body that stops arriving is
a 408 and a closed connection after `server.client_header_timeout` / `client_body_timeout`,
measured between reads, so a slow but steady one is never cut; a connection that sends nothing
closes after the keep-alive timeout."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

import orjson
import pytest
from aiohttp import web

from streamproxy.config import ConfigError, load_config, parse_config
from streamproxy.server import front, reading
from streamproxy.server.reading import ReadTimedHandler
from tests.helpers import make_config, metric_value

TIMEOUT = 0.4  # both read timeouts, in these tests
FRONTS = ["lean", "aiohttp"]
BODY = orjson.dumps({"model": "fast:tokens=2", "messages": [{"role": "user", "content": "hi"}]})


def config(**server: Any) -> Any:
    return make_config({"mock": {"type": "mock", "default_model": "fast"}}, default="mock",
                       server={"client_header_timeout": TIMEOUT,
                               "client_body_timeout": TIMEOUT, **server})


@pytest.fixture
async def start(proxy: Any, monkeypatch: Any) -> Any:
    """Start the proxy on a front; the connections opened are closed at the end."""
    writers: list[asyncio.StreamWriter] = []

    async def started(front_kind: str, **server: Any) -> Any:
        monkeypatch.setenv(front.FRONT_ENV, front_kind)
        client = await proxy(config(**server))

        async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            reader, writer = await asyncio.open_connection(client.host, client.port)
            writers.append(writer)
            return reader, writer

        client.connect = connect
        return client

    yield started
    for writer in writers:
        writer.close()


def chat_head(length: int, version: bytes = b"1.1", extra: bytes = b"") -> bytes:
    return (b"POST /v1/chat/completions HTTP/%b\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n%b\r\n" % (version, length, extra))


CHUNKED_HEAD = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                b"Content-Type: application/json\r\n\r\n")


async def closed_after_answer(reader: asyncio.StreamReader) -> tuple[bytes, float]:
    """Everything the proxy sends until it closes the connection, and how long that took."""
    began = time.monotonic()
    data = await asyncio.wait_for(reader.read(), 10)
    return data, time.monotonic() - began


def assert_408(answer: bytes) -> None:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith((b"HTTP/1.1 408 ", b"HTTP/1.0 408 ")), answer  # (the request's)
    assert b"connection: close" in head.lower() or head.startswith(b"HTTP/1.0")
    assert b"\r\ncontent-type: application/json\r\n" in head.lower() + b"\r\n"  # (aiohttp's)
    assert b"\r\nserver: streamproxy\r\n" in head.lower() + b"\r\n"  # (no versions)
    error = orjson.loads(body)["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "request_timeout")


def rejected_for_timeout() -> float:
    return metric_value("streamproxy_rejected_requests_total", {"reason": "request_timeout"})


# What a client sent before it stopped: a Content-Length body (the lean front's own), and the
# kinds the lean front hands to aiohttp.
STALLED_BODIES = {
    "content-length": chat_head(len(BODY)) + BODY[:10],
    "chunked": CHUNKED_HEAD + b"a\r\n" + BODY[:10] + b"\r\n",
    "http1.0": chat_head(len(BODY), b"1.0") + BODY[:10],
    "no-body-yet": chat_head(len(BODY)),
}


@pytest.mark.parametrize("kind", list(STALLED_BODIES))
@pytest.mark.parametrize("front_kind", FRONTS)
async def test_a_body_that_stops_arriving_is_408(start: Any, front_kind: str, kind: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    client = await start(front_kind)
    rejected = rejected_for_timeout()
    reader, writer = await client.connect()
    writer.write(STALLED_BODIES[kind])
    answer, waited = await closed_after_answer(reader)
    assert_408(answer)
    assert TIMEOUT * 0.9 <= waited < TIMEOUT + 5
    assert b"body" in answer
    assert rejected_for_timeout() == rejected + 1  # counted, and logged, on both fronts
    logged = [orjson.loads(r.getMessage()) for r in caplog.records
              if r.name == "streamproxy.access"]
    assert [(line["status"], line["error_code"]) for line in logged] == [
        (408, "request_timeout")]
    assert not [r for r in caplog.records  # nothing unhandled (aiohttp.server logs that)
                if r.levelno >= logging.WARNING and r.name.startswith(("aiohttp", "streamproxy"))]


@pytest.mark.parametrize("front_kind", FRONTS)
async def test_a_body_timeouts_line_carries_the_clients_metadata(
        start: Any, front_kind: str, caplog: pytest.LogCaptureFixture) -> None:
    # The lean front's 408 (refused before the handler, no proxy key configured) was logged
    # without the x-portkey-metadata aiohttp's front logged for the same request.
    caplog.set_level(logging.INFO)
    client = await start(front_kind)
    reader, writer = await client.connect()
    writer.write(chat_head(len(BODY), extra=b'x-portkey-metadata: {"team": "blue"}\r\n')
                 + BODY[:10])
    assert_408((await closed_after_answer(reader))[0])
    (line,) = [orjson.loads(r.getMessage()) for r in caplog.records
               if r.name == "streamproxy.access"]
    assert line["metadata"] == {"team": "blue"}


@pytest.mark.parametrize("front_kind", FRONTS)
async def test_a_body_timeout_answers_with_the_trace_id_it_is_logged_under(
        start: Any, front_kind: str, caplog: pytest.LogCaptureFixture) -> None:
    # The lean front wrote its 408 without trace headers, though the request is logged under
    # one (aiohttp's front sent them): the client had no id to report.
    caplog.set_level(logging.INFO)
    client = await start(front_kind)
    reader, writer = await client.connect()
    writer.write(STALLED_BODIES["content-length"])
    answer, _ = await closed_after_answer(reader)
    assert_408(answer)
    head = answer.partition(b"\r\n\r\n")[0].decode().lower().split("\r\n")
    fields = dict(line.split(": ", 1) for line in head[1:])
    (line,) = [orjson.loads(r.getMessage()) for r in caplog.records
               if r.name == "streamproxy.access"]
    assert fields["x-request-id"] == fields["x-portkey-trace-id"] == line["trace_id"]


@pytest.mark.parametrize("front_kind", FRONTS)
async def test_a_client_gone_during_its_upload_is_logged_499(
        start: Any, front_kind: str, caplog: pytest.LogCaptureFixture) -> None:
    """As on aiohttp's front (its handler is running then), the lean front logs it once."""
    caplog.set_level(logging.INFO)
    client = await start(front_kind)
    _, writer = await client.connect()
    writer.write(chat_head(len(BODY), extra=b"x-portkey-trace-id: cut-upload\r\n") + BODY[:10])
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.close()

    def logged() -> list[dict[str, Any]]:
        return [orjson.loads(r.getMessage()) for r in caplog.records
                if r.name == "streamproxy.access"]

    for _ in range(200):
        if logged():
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)  # (and no second line)
    assert [(line["trace_id"], line["status"], line["client_disconnected"])
            for line in logged()] == [("cut-upload", 499, True)]


@pytest.mark.parametrize("front_kind", FRONTS)
async def test_a_body_that_stops_arriving_on_another_route_is_408(start: Any,
                                                                  front_kind: str) -> None:
    client = await start(front_kind)
    reader, writer = await client.connect()
    writer.write(b"POST /v1/chat/completions/chatcmpl-1 HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Length: 40\r\n\r\n{\"metadata\": ")
    answer, _ = await closed_after_answer(reader)
    assert_408(answer)


@pytest.mark.parametrize("front_kind", FRONTS)
async def test_a_body_after_100_continue_that_never_comes_is_408(start: Any,
                                                                 front_kind: str) -> None:
    client = await start(front_kind)
    reader, writer = await client.connect()
    writer.write(chat_head(len(BODY), extra=b"Expect: 100-continue\r\n"))
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == (
        b"HTTP/1.1 100 Continue\r\n\r\n")
    answer, _ = await closed_after_answer(reader)
    assert_408(answer)


STALLED_HEADS = {
    "chat": chat_head(len(BODY))[:40],
    "other-route": b"GET /healthz HTTP/1.1\r\nHost: x\r\nAccept: */*",
    "request-line": b"GET /v1/mod",
}


@pytest.mark.parametrize("kind", list(STALLED_HEADS))
@pytest.mark.parametrize("front_kind", FRONTS)
async def test_a_head_that_stops_arriving_is_408(start: Any, front_kind: str,
                                                 kind: str) -> None:
    client = await start(front_kind)
    reader, writer = await client.connect()
    writer.write(STALLED_HEADS[kind])
    answer, waited = await closed_after_answer(reader)
    assert_408(answer)
    assert b"head" in answer
    assert TIMEOUT * 0.9 <= waited < TIMEOUT + 5


@pytest.mark.parametrize("front_kind", FRONTS)
async def test_a_head_that_stops_after_a_first_request_is_408(start: Any,
                                                              front_kind: str) -> None:
    """Not only a connection's first request: the next one on a kept-alive connection."""
    client = await start(front_kind)
    reader, writer = await client.connect()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)).startswith(b"HTTP/1.1 200")
    await asyncio.wait_for(reader.readuntil(b'"ok"}'), 5)
    writer.write(STALLED_HEADS["other-route"])
    answer, _ = await closed_after_answer(reader)
    assert_408(answer)


@pytest.mark.parametrize("front_kind", FRONTS)
async def test_a_connection_that_sends_nothing_closes_after_the_keep_alive(
        start: Any, monkeypatch: Any, front_kind: str) -> None:
    monkeypatch.setattr(front, "KEEPALIVE_TIMEOUT", 0.3)
    client = await start(front_kind, client_header_timeout=60, client_body_timeout=60)
    reader, _ = await client.connect()
    answer, waited = await closed_after_answer(reader)
    assert answer == b"" and 0.25 <= waited < 5  # no request, no answer


async def trickle(writer: asyncio.StreamWriter, data: bytes, pieces: int, gap: float) -> None:
    size = -(-len(data) // pieces)
    for i in range(0, len(data), size):
        writer.write(data[i:i + size])
        await writer.drain()
        await asyncio.sleep(gap)


def chunked(body: bytes) -> bytes:
    return b"".join(b"%x\r\n%b\r\n" % (len(body[i:i + 8]), body[i:i + 8])
                    for i in range(0, len(body), 8)) + b"0\r\n\r\n"


@pytest.mark.parametrize("kind", ["content-length", "chunked"])
@pytest.mark.parametrize("front_kind", FRONTS)
async def test_a_slow_steady_upload_is_never_cut(start: Any, monkeypatch: Any,
                                                 front_kind: str, kind: str) -> None:
    """Pieces of the body come well within the read timeout, for far longer than it and the
    keep-alive timeout: the request is served (the lean front closed such a connection 75 s
    after the previous request, however fast its body was still arriving)."""
    monkeypatch.setattr(front, "KEEPALIVE_TIMEOUT", 0.3)
    client = await start(front_kind)
    reader, writer = await client.connect()
    head, body = ((chat_head(len(BODY)), BODY) if kind == "content-length"
                  else (CHUNKED_HEAD, chunked(BODY)))
    began = time.monotonic()
    writer.write(head)  # (a head's whole time is bounded: see the test below)
    await trickle(writer, body, 12, TIMEOUT / 4)
    assert time.monotonic() - began > 2 * TIMEOUT
    status_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
    assert status_line.startswith(b"HTTP/1.1 200"), status_line


@pytest.mark.parametrize("front_kind", FRONTS)
async def test_a_slow_steady_head_is_never_cut(start: Any, monkeypatch: Any,
                                               front_kind: str) -> None:
    """aiohttp's keep-alive timer stands aside while a head arrives (within the header
    timeout, which bounds the whole head)."""
    monkeypatch.setattr(front, "KEEPALIVE_TIMEOUT", 0.3)
    client = await start(front_kind, client_header_timeout=10 * TIMEOUT)
    reader, writer = await client.connect()
    await trickle(writer, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: 1234567\r\n\r\n", 8,
                  TIMEOUT / 4)
    status_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
    assert status_line.startswith(b"HTTP/1.1 200"), status_line


@pytest.mark.parametrize("front_kind", FRONTS)
async def test_time_spent_answering_is_not_a_gap_in_the_next_request(start: Any,
                                                                     front_kind: str) -> None:
    """Half of a pipelined head waits while the request before it streams for longer than the
    read timeouts; its client sends the rest a while after the answer is in."""
    client = await start(front_kind, client_header_timeout=3 * TIMEOUT)
    reader, writer = await client.connect()
    slow = orjson.dumps({"model": "fast:tokens=15,tps=10", "stream": True,
                         "messages": [{"role": "user", "content": "hi"}]})
    second = chat_head(len(BODY)) + BODY
    writer.write(chat_head(len(slow)) + slow + second[:30])
    began = time.monotonic()
    await asyncio.wait_for(reader.readuntil(b"data: [DONE]\n\n\r\n0\r\n\r\n"), 10)
    assert time.monotonic() - began > 3 * TIMEOUT
    await asyncio.sleep(1.5 * TIMEOUT)  # within the head's timeout, counted from the answer
    writer.write(second[30:])
    status_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
    assert status_line.startswith(b"HTTP/1.1 200"), status_line


def test_the_read_timeouts_are_configurable() -> None:
    server = load_config(None).server
    assert (server.client_header_timeout, server.client_body_timeout) == (60.0, 60.0)
    mock = {"mock": {"type": "mock"}}
    server = parse_config({"server": {"client_header_timeout": 5, "client_body_timeout": 120},
                           "providers": mock}, "<t>").server
    assert (server.client_header_timeout, server.client_body_timeout) == (5.0, 120.0)
    for bad in (0, -1, "60", True):
        with pytest.raises(ConfigError, match=r"server\.client_body_timeout: must be a positive"):
            parse_config({"server": {"client_body_timeout": bad}, "providers": mock}, "<t>")
    # null is not set, as every server key's: the default holds
    server = parse_config({"server": {"client_body_timeout": None}, "providers": mock},
                          "<t>").server
    assert server.client_body_timeout == 60.0


def test_what_aiohttp_keeps_privately_is_still_there() -> None:
    """ReadTimedHandler reads a few private attributes of aiohttp's RequestHandler; an aiohttp
    that renames them fails here, not in production."""
    slots = {name for cls in ReadTimedHandler.__mro__ for name in getattr(cls, "__slots__", ())}
    assert {"_waiter", "_messages", "_current_request", "_reading_paused",
            "_keepalive_handle", "_loop", "_request_factory", "_next_keepalive_close_time",
            "_keepalive_timeout", "_parser", "_read_bufsize", "_max_msg_queue_size",
            "_upgraded", "_lingering_time"} <= slots
    assert callable(ReadTimedHandler.__mro__[1]._process_keepalive)
    assert "_message" in web.BaseRequest.ATTRS  # (its should_close: wind_down)


async def dribble(writer: asyncio.StreamWriter, data: bytes, gap: float) -> None:
    """One byte every `gap` seconds, until the proxy closes the connection."""
    for byte in data:
        if writer.is_closing():
            return
        writer.write(bytes([byte]))
        await asyncio.sleep(gap)


@pytest.mark.parametrize("kind", ["chat", "other-route"])
@pytest.mark.parametrize("front_kind", FRONTS)
async def test_a_head_that_dribbles_in_is_cut_at_the_header_timeout(
        start: Any, front_kind: str, kind: str) -> None:
    """The header timeout bounds the whole head, from its first byte (nginx's
    client_header_timeout): a client sending a byte within every gap (slowloris) held the
    connection for ever."""
    client = await start(front_kind)
    reader, writer = await client.connect()
    head = {"chat": chat_head(len(BODY)) + b"X-Pad: " + b"a" * 200,
            "other-route": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 200}[kind]
    sending = asyncio.ensure_future(dribble(writer, head, TIMEOUT / 8))
    try:
        answer, waited = await closed_after_answer(reader)
    finally:
        sending.cancel()
    assert_408(answer)
    assert b"head" in answer
    assert TIMEOUT * 0.9 <= waited < 2 * TIMEOUT + 0.5


def open_connections(client: Any) -> int:
    """The proxy's client connections still open, on either front."""
    server = client.server.runner.server
    lean = getattr(server, "connections", None)
    aiohttp_server = getattr(server, "aiohttp_server", server)
    return (len(lean) if isinstance(lean, set) else 0) + len(aiohttp_server.connections)


@pytest.mark.parametrize("after", ["connection-close", "keep-alive"])
@pytest.mark.parametrize("front_kind", FRONTS)
async def test_a_client_that_never_reads_its_answer_is_reset_when_closed(
        start: Any, monkeypatch: Any, front_kind: str, after: str) -> None:
    """A closed connection's unsent bytes wait for the client at most `SEND_TIMEOUT` seconds
    without progress, then it is reset: closing waited for them to drain, so a client that
    stayed connected but never read kept its connection, and its unsent answer, for ever."""
    monkeypatch.setattr(front, "KEEPALIVE_TIMEOUT", 0.3)
    monkeypatch.setattr(reading, "SEND_TIMEOUT", 0.3)
    monkeypatch.setattr(reading, "LINGER_TIME", 0.3)  # (a closing connection lingers first)
    client = await start(front_kind)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # (before the window is set)
    sock.connect((client.host, client.port))
    _, writer = await asyncio.open_connection(sock=sock)
    writer.transport.pause_reading()  # and the kernel's buffers fill (a 9.6 MB answer)
    if front_kind == "aiohttp":  # its handler awaits the drain of a write over the high-water
        await asyncio.sleep(0.05)  # mark: let it end with bytes unsent, as under the mark
        for handler in client.server.runner.server.connections:
            handler.transport.set_write_buffer_limits(high=64 * 2**20)
    big = orjson.dumps({"model": "fast:tokens=2000000", "max_tokens": 2000000,
                        "messages": [{"role": "user", "content": "hi"}]})
    writer.write(chat_head(len(big), extra=b"Connection: close\r\n"
                           if after == "connection-close" else b"") + big)
    for _ in range(100):  # bounded: 5 s
        await asyncio.sleep(0.05)
        if not open_connections(client):
            break
    assert open_connections(client) == 0
    writer.close()


async def test_a_closed_connection_whose_client_reads_slowly_is_not_reset(
        monkeypatch: Any) -> None:
    monkeypatch.setattr(reading, "SEND_TIMEOUT", 0.01)

    class Transport:  # between two looks the client takes 1,000 bytes, then what is left
        unsent = [5000, 4000, 3000, 0]
        aborted = False

        def close(self) -> None:
            pass

        def get_write_buffer_size(self) -> int:
            return self.unsent.pop(0)

        def abort(self) -> None:
            self.aborted = True

    transport: Any = Transport()
    reading.close_bounded(transport)
    for _ in range(100):  # bounded
        await asyncio.sleep(0.01)
        if not transport.unsent:
            break
    assert not transport.unsent and not transport.aborted


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [orjson.loads(r.getMessage()) for r in caplog.records
            if r.name == "streamproxy.access"]


@pytest.mark.parametrize("front_kind", FRONTS)
async def test_timings_count_from_the_heads_arrival(start: Any, front_kind: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """TTFT and the duration count from the request's head, as aiohttp's front runs the
    handler then: the lean front's counted from the body's end, so an upload's time was not in
    them (and a 408 for a body that stopped arriving logged 0 ms)."""
    caplog.set_level(logging.INFO)
    client = await start(front_kind)
    streamed = orjson.dumps({**orjson.loads(BODY), "stream": True})
    reader, writer = await client.connect()
    writer.write(chat_head(len(streamed)) + streamed[:10])
    await asyncio.sleep(TIMEOUT / 2)
    writer.write(streamed[10:])
    await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 10)
    writer.write(STALLED_BODIES["content-length"])  # the next one stops
    assert_408((await closed_after_answer(reader))[0])
    answered, timed_out = access_lines(caplog)
    assert answered["status"] == 200
    assert answered["ttft_ms"] >= TIMEOUT / 2 * 1000 * 0.9
    assert answered["duration_ms"] >= answered["ttft_ms"]
    assert timed_out["status"] == 408
    assert timed_out["duration_ms"] >= TIMEOUT * 1000 * 0.9


@pytest.mark.parametrize("front_kind", FRONTS)
async def test_an_abandoned_uploads_duration_counts_from_its_head(
        start: Any, front_kind: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    client = await start(front_kind)
    _, writer = await client.connect()
    writer.write(chat_head(len(BODY)) + BODY[:10])
    await writer.drain()
    await asyncio.sleep(TIMEOUT / 2)
    writer.close()
    for _ in range(200):
        if access_lines(caplog):
            break
        await asyncio.sleep(0.01)
    (line,) = access_lines(caplog)
    assert line["status"] == 499
    assert line["duration_ms"] >= TIMEOUT / 2 * 1000 * 0.9


async def keep_sending(writer: asyncio.StreamWriter, data: bytes, times: int) -> None:
    """`data`, `times` times, a loop turn apart, as a client still uploading does; a write the
    proxy refuses (a reset) is the client's error to see when it reads."""
    for _ in range(times):
        if writer.is_closing():
            return
        writer.write(data)
        await asyncio.sleep(0.01)


# What a client sent before a 408: part of a head, part of a body.
BEFORE_408 = {"head": chat_head(len(BODY))[:30], "body": chat_head(len(BODY)) + BODY[:10]}


@pytest.mark.parametrize("part", list(BEFORE_408))
@pytest.mark.parametrize("front_kind", FRONTS)
async def test_a_client_still_sending_after_a_408_reads_all_of_it(
        start: Any, front_kind: str, part: str) -> None:
    """A client whose bytes arrive after its 408 (a stalled upload that resumes, a head that
    dribbles in) reads the whole answer: closing with bytes unread, or arriving later, made
    Linux reset the connection, and the client saw "connection reset" instead of the 408.
    The proxy closes its side and discards what comes until the client closes (bounded)."""
    client = await start(front_kind)
    reader, writer = await client.connect()
    writer.write(BEFORE_408[part])
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)  # the 408 has come
    await keep_sending(writer, b"x" * 1000, 5)
    answer = head + await asyncio.wait_for(reader.read(), 10)  # to the proxy's close
    assert_408(answer)
    writer.close()


def lingering(client: Any) -> int:
    """The proxy's connections closing, lingering (reading.Lingering), on either front."""
    server = client.server.runner.server
    aiohttp_server = getattr(server, "aiohttp_server", None)
    return len(server.lingering) + (len(aiohttp_server.lingering) if aiohttp_server else 0)


@pytest.mark.parametrize("bound", ["time", "bytes"])
@pytest.mark.parametrize("front_kind", FRONTS)
async def test_a_client_that_never_stops_sending_after_a_408_is_closed(
        start: Any, monkeypatch: Any, front_kind: str, bound: str) -> None:
    """Lingering is bounded, in time and in bytes: a client that never stops sending is
    closed all the same; what it sent is no request (a whole one gets no answer)."""
    monkeypatch.setattr(reading, "LINGER_TIME", 0.3 if bound == "time" else 60.0)
    monkeypatch.setattr(reading, "LINGER_BYTES", 10**9 if bound == "time" else 50_000)
    client = await start(front_kind)
    reader, writer = await client.connect()
    writer.write(BEFORE_408["head"])
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    await asyncio.sleep(0.05)  # (the proxy closes its side, and lingers)
    # (not open to a drain, which does not wait for it)
    assert lingering(client) == 1 and client.server.runner.server.open_connections() == 0
    another = (chat_head(len(BODY)) + BODY) * 20
    for _ in range(500):  # bounded: 5 s
        writer.write(another)
        await asyncio.sleep(0.01)
        if not lingering(client) and not open_connections(client):
            break
    assert lingering(client) == 0 and open_connections(client) == 0
    with pytest.raises(ConnectionError):  # closed with bytes unread (the bound): a reset
        for _ in range(10):  # bounded
            writer.write(another)
            await asyncio.sleep(0.01)
            await writer.drain()
    assert b"HTTP/1.1" not in reader._buffer.split(b"\r\n\r\n", 1)[-1]  # one answer: the 408


@pytest.mark.parametrize("expect", [True, False])
@pytest.mark.parametrize("front_kind", FRONTS)
async def test_a_client_uploading_a_body_over_the_limit_reads_its_413(
        start: Any, front_kind: str, expect: bool) -> None:
    """A body over `server.max_body_bytes` sent as fast as the client can, with
    `Connection: close` or after an `Expect: 100-continue` it did not wait on (the 413 comes
    at once): the client reads the whole 413, not a reset (the closing connection lingers
    where aiohttp's own read of the rest of the body did)."""
    client = await start(front_kind, max_body_bytes=100_000)
    size = 20_000_000
    extra = b"Expect: 100-continue\r\n" if expect else b"Connection: close\r\n"
    reader, writer = await client.connect()
    writer.write(chat_head(size, extra=extra) + b"x" * size)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert orjson.loads(answer.partition(b"\r\n\r\n")[2])["error"]["code"] == "request_too_large"


@pytest.mark.parametrize("front_kind", FRONTS)
async def test_a_client_still_sending_after_a_400_reads_all_of_it(start: Any,
                                                                 front_kind: str) -> None:
    """A malformed head (aiohttp's parser answers 400 and closes) whose client sends on."""
    client = await start(front_kind)
    reader, writer = await client.connect()
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nBad header\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    await keep_sending(writer, b"x" * 1000, 5)
    answer = head + await asyncio.wait_for(reader.read(), 10)
    assert answer.startswith((b"HTTP/1.1 400 ", b"HTTP/1.0 400 ")), answer  # (aiohttp's)
    writer.close()


@pytest.mark.parametrize("front_kind", FRONTS)
async def test_a_413_on_a_kept_alive_connection_lingers_for_the_rest_of_the_upload(
        start: Any, monkeypatch: Any, front_kind: str) -> None:
    """A body over `server.max_body_bytes` on a keep-alive connection, whose rest arrives
    after aiohttp's own lingering read (`lingering_time`, shortened here) gave up: aiohttp
    then closed the connection while the client was still uploading (a reset, which the
    openai SDK retries, uploading it all again). The 413 says `Connection: close`, and the
    connection lingers (reading.Lingering) while the client sends the rest, then reads it."""
    handler_init = ReadTimedHandler.__init__

    def short_lingering(self: ReadTimedHandler, manager: Any, **kwargs: Any) -> None:
        handler_init(self, manager, **{**kwargs, "lingering_time": 0.05})

    monkeypatch.setattr(ReadTimedHandler, "__init__", short_lingering)
    client = await start(front_kind, max_body_bytes=100_000)
    size, sent = 1_000_000, 200_000
    reader, writer = await client.connect()
    writer.write(chat_head(size) + b"x" * sent)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 413 "), head
    assert b"\r\nconnection: close\r\n" in head.lower()
    await asyncio.sleep(0.2)  # (longer than aiohttp's lingering, shortened above)
    for _ in range((size - sent) // 100_000):  # the rest of the upload, after it
        writer.write(b"x" * 100_000)
        await writer.drain()
        await asyncio.sleep(0.01)
    writer.write_eof()
    answer = head + await asyncio.wait_for(reader.read(), 10)  # to the proxy's close
    assert orjson.loads(answer.partition(b"\r\n\r\n")[2])["error"]["code"] == "request_too_large"
    assert lingering(client) == 0 and client.server.runner.server.open_connections() == 0


async def _keyed_proxy(proxy: Any, monkeypatch: Any, front_kind: str,
                       caplog: pytest.LogCaptureFixture) -> Any:
    """A proxy on `front_kind` with one proxy key (team-a) and short read timeouts, logging."""
    caplog.set_level(logging.INFO)
    monkeypatch.setenv(front.FRONT_ENV, front_kind)
    return await proxy(make_config(
        {"mock": {"type": "mock", "default_model": "fast"}}, default="mock",
        server={"client_header_timeout": TIMEOUT, "client_body_timeout": TIMEOUT},
        auth={"keys": [{"name": "team-a", "key": "sk-proxy-a"}]}))


@pytest.mark.parametrize("ending", ["abandoned", "stalled"])
@pytest.mark.parametrize("front_kind", FRONTS)
async def test_an_unfinished_uploads_line_names_its_proxy_key(
        proxy: Any, monkeypatch: Any, front_kind: str, ending: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """The access log's `auth_key` is the name of the key a request presented: the lean front
    authenticates once the body is in, so the 499 of an upload its client left and the 408 of
    one that stalled were logged with `auth_key: null` (aiohttp's front, which authenticates
    the head first, named the key): a team's failed uploads were no one's."""
    client = await _keyed_proxy(proxy, monkeypatch, front_kind, caplog)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(chat_head(len(BODY), extra=b"Authorization: Bearer sk-proxy-a\r\n") + BODY[:10])
    await writer.drain()
    if ending == "abandoned":
        await asyncio.sleep(TIMEOUT / 4)
        writer.close()
    else:
        assert_408((await closed_after_answer(reader))[0])
    for _ in range(200):  # bounded: 2 s
        if access_lines(caplog):
            break
        await asyncio.sleep(0.01)
    writer.close()
    (line,) = access_lines(caplog)
    assert line["status"] == (499 if ending == "abandoned" else 408)
    assert line["auth_key"] == "team-a"


@pytest.mark.parametrize("presented", [b"", b"Authorization: Bearer sk-wrong\r\n"],
                         ids=["missing", "wrong"])
@pytest.mark.parametrize("front_kind", FRONTS)
async def test_an_unauthenticated_upload_that_stalls_is_401(
        proxy: Any, monkeypatch: Any, front_kind: str, presented: bytes,
        caplog: pytest.LogCaptureFixture) -> None:
    """aiohttp's front authenticates the head and answers 401 before reading the body; the
    lean front waited for the body, and a stalled one got a 408 (counted `request_timeout`,
    not `unauthenticated`). Both answer 401, counted and logged as one, and close."""
    client = await _keyed_proxy(proxy, monkeypatch, front_kind, caplog)
    reasons = ("unauthenticated", "request_timeout")
    before = [metric_value("streamproxy_rejected_requests_total", {"reason": r})
              for r in reasons]
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(chat_head(len(BODY), extra=presented) + BODY[:10])
    await writer.drain()
    answer = (await closed_after_answer(reader))[0]
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 "), answer
    assert b"\r\nconnection: close" in head.lower()
    assert orjson.loads(body)["error"]["code"] == "invalid_api_key"
    assert [metric_value("streamproxy_rejected_requests_total", {"reason": r})
            for r in reasons] == [before[0] + 1, before[1]]
    (line,) = access_lines(caplog)
    assert (line["status"], line["stream"], line["auth_key"]) == (401, None, None)


@pytest.mark.parametrize("front_kind", FRONTS)
async def test_an_upload_over_its_keys_rate_limit_that_stalls_is_429(
        proxy: Any, monkeypatch: Any, front_kind: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """aiohttp's front takes the key's rate token as the head comes and answers 429 before
    reading the body; the lean front took it once the body was in, so an upload over the
    limit that stalled got a 408 a body timeout later (counted `request_timeout`), and one
    that came whole in pieces was refused only after its client had sent it all. Both
    answer 429 at once (with retry-after), counted and logged as one, and close; an upload
    within the limit that comes in pieces takes one token (its head's), not two."""
    caplog.set_level(logging.INFO)
    monkeypatch.setenv(front.FRONT_ENV, front_kind)
    client = await proxy(make_config(
        {"mock": {"type": "mock", "default_model": "fast"}}, default="mock",
        server={"client_header_timeout": TIMEOUT, "client_body_timeout": TIMEOUT},
        auth={"keys": [{"name": "team-a", "key": "sk-proxy-a",
                        "rate_limit": {"requests_per_minute": 1, "burst": 2}}]}))
    keyed = chat_head(len(BODY), extra=b"Authorization: Bearer sk-proxy-a\r\n")
    reasons = ("rate_limited", "request_timeout")
    before = [metric_value("streamproxy_rejected_requests_total", {"reason": r})
              for r in reasons]
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(keyed + BODY[:10])  # within the limit, in two pieces: its head's token
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(BODY[10:])
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200 "), head
    writer.close()
    resp = await client.post("/v1/chat/completions", data=BODY, headers={
        "authorization": "Bearer sk-proxy-a", "content-type": "application/json"})
    assert resp.status == 200  # the burst's second token
    await resp.read()
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(keyed + BODY[:10])  # over the limit, and stalled
    await writer.drain()
    answer = (await closed_after_answer(reader))[0]
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 429 "), answer  # (not the body timeout's 408)
    assert b"\r\nretry-after: " in head.lower() and b"\r\nconnection: close" in head.lower()
    assert orjson.loads(body)["error"]["code"] == "rate_limit_exceeded"
    assert [metric_value("streamproxy_rejected_requests_total", {"reason": r})
            for r in reasons] == [before[0] + 1, before[1]]
    statuses = [(line["status"], line["auth_key"]) for line in access_lines(caplog)]
    assert statuses == [(200, "team-a"), (200, "team-a"), (429, "team-a")]
