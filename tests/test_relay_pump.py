"""The piped relay (`relay._Pump`) without sockets: an upstream stand-in calls its `data()` and
`end()` as the native client's connection does, a client stand-in records the writes and can
report a full buffer. Checked: the bytes equal what the pulled loop produces, a full client
pauses the upstream and holds what still arrives (the end too) until it drains, and after a
failure or a cancellation nothing more is written."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

import orjson
import pytest

from streamproxy.errors import StreamDecodeError, StreamTruncated
from streamproxy.openai_api.chunks import ChunkEncoder
from streamproxy.providers.anthropic.stream import AnthropicStreamTranslator
from streamproxy.providers.mock.server import ANTHROPIC, MockOptions, unpaced_body
from streamproxy.record import RequestRecord
from streamproxy.relay import _FirstToken, _Pump
from streamproxy.upstream.response_parser import Disconnected
from tests.helpers import relay_reads

BODY = unpaced_body(ANTHROPIC, MockOptions(tokens=40), "m", 7, True)


class Upstream:
    def __init__(self) -> None:
        self.sink: Any = None
        self.paused = False
        self.pauses = 0

    def pipe(self, sink: Any) -> None:
        self.sink = sink

    def handover(self, sink: Any) -> None:
        self.sink = sink

    def pause_reading(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume_reading(self) -> None:
        self.paused = False


class Client:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.full = False
        self.ended = False  # end_with() was called: the body's end went with the last frames
        self.drained = asyncio.Event()

    def write_now(self, data: bytes) -> None:
        assert not self.ended
        self.written.append(data)

    def end_with(self, data: bytes) -> None:
        self.write_now(data)
        self.ended = True

    async def drain(self) -> None:
        await self.drained.wait()
        self.drained.clear()
        self.full = False


class Deadline:
    reads = 0
    held = False

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()

    def progress(self) -> None:
        assert not self.held, "a read while held"
        self.reads += 1

    def hold(self) -> None:
        self.held = True

    def release(self) -> None:
        self.held = False

    def token_came(self) -> None:
        self.token_reads = self.reads


def parts() -> tuple[ChunkEncoder, AnthropicStreamTranslator]:
    enc = ChunkEncoder(completion_id="chatcmpl-t", created=1, model="m", include_usage=True)
    return enc, AnthropicStreamTranslator(enc, 1 << 20)


def pulled(reads: list[bytes]) -> bytes:
    """What the pulled loop sends for these reads: feed, take, per read; the close at EOF."""
    return relay_reads(*parts(), reads)


def random_reads(body: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(body)), 30))
    return [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]


async def start(client: Client) -> tuple[_Pump, Upstream, ChunkEncoder, asyncio.Task[None]]:
    enc, tr = parts()
    up = Upstream()
    pump = _Pump(tr, enc, Deadline(), client, up)  # type: ignore[arg-type]
    task = asyncio.ensure_future(pump.run())
    await asyncio.sleep(0)
    assert up.sink is pump
    return pump, up, enc, task


@pytest.mark.parametrize("seed", range(5))
async def test_piped_bytes_equal_the_pulled_loop(seed: int) -> None:
    reads = random_reads(BODY, random.Random(seed))
    client = Client()
    pump, up, enc, task = await start(client)
    for read in reads:
        pump.data(read)
    pump.end(None)
    await asyncio.wait_for(task, 1)
    assert b"".join(client.written) + enc.take() == pulled(reads)
    assert up.pauses == 0
    # The read that completes the stream sends [DONE] and the body's end together.
    assert client.ended and client.written[-1].endswith(b"data: [DONE]\n\n")


async def test_a_full_client_pauses_the_upstream_and_holds_the_rest_in_order() -> None:
    reads = random_reads(BODY, random.Random(7))
    client = Client()
    pump, up, enc, task = await start(client)
    pump.data(reads[0])
    client.full = True
    pump.data(reads[1])  # written, then the buffer is found full
    assert up.paused
    before = len(client.written)
    for read in reads[2:]:  # already on their way when reading paused
        pump.data(read)
    pump.end(None)
    await asyncio.sleep(0.01)
    assert len(client.written) == before and not task.done()
    client.drained.set()
    await asyncio.wait_for(task, 1)
    assert b"".join(client.written) + enc.take() == pulled(reads)
    frames = (b"".join(client.written) + enc.take()).split(b"\n\n")
    assert frames[-2:] == [b"data: [DONE]", b""]


async def test_reading_resumes_after_a_drain_when_the_stream_goes_on() -> None:
    reads = random_reads(BODY, random.Random(8))
    client = Client()
    pump, up, enc, task = await start(client)
    client.full = True
    pump.data(reads[0])
    assert up.paused
    client.drained.set()
    await asyncio.sleep(0.01)
    assert not up.paused and not task.done()
    for read in reads[1:]:
        pump.data(read)
    pump.end(None)
    await asyncio.wait_for(task, 1)
    assert b"".join(client.written) + enc.take() == pulled(reads)


async def test_a_translator_error_stops_the_pump_and_later_reads_are_dropped() -> None:
    client = Client()
    pump, _up, _enc, task = await start(client)
    pump.data(BODY[:BODY.index(b"event: content_block_delta")])
    pump.data(b"event: content_block_delta\ndata: {not json\n\n")
    with pytest.raises(StreamDecodeError):
        await asyncio.wait_for(task, 1)
    written = len(client.written)
    pump.data(BODY[BODY.index(b"event: content_block_delta"):])
    assert len(client.written) == written


@pytest.mark.parametrize("exc", [None, Disconnected("the connection closed mid-response")])
async def test_an_early_end_fails_the_stream(exc: BaseException | None) -> None:
    client = Client()
    pump, _up, _enc, task = await start(client)
    pump.data(BODY[: BODY.index(b"event: content_block_delta", len(BODY) // 2)])
    pump.end(exc)
    with pytest.raises(StreamTruncated if exc is None else Disconnected):
        await asyncio.wait_for(task, 1)


async def test_nothing_is_written_after_a_cancellation() -> None:
    client = Client()
    pump, _up, _enc, task = await start(client)
    pump.data(BODY[:300])
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    written = len(client.written)
    pump.data(BODY[300:])
    pump.end(None)
    assert len(client.written) == written


async def test_a_client_gone_mid_write_ends_the_pump_with_its_error() -> None:
    class GoneClient(Client):
        def write_now(self, data: bytes) -> None:
            raise ConnectionResetError("the client closed the connection")

        end_with = write_now

    pump, _up, _enc, task = await start(GoneClient())
    pump.data(BODY)
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(task, 1)


def test_the_body_has_the_expected_shape() -> None:
    # The cases above rely on it: a complete 40-delta Anthropic stream.
    text = pulled([BODY])
    chunks = [orjson.loads(f[6:]) for f in text.split(b"\n\n")[:-2]]
    assert len([c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
               ) == 40


async def test_a_client_full_from_the_first_piped_read_keeps_the_native_upstream_paused(
        aiohttp_server: Any) -> None:
    """The native response's buffered reads go to the pump as it starts; when they fill the
    client, the pump pauses the upstream, and the start of piping must not resume it: the
    reads that kept coming were held in memory for as long as the client stayed full."""
    from streamproxy.upstream.http11 import PAUSE_AT, HTTP11Client
    from tests.test_backpressure import EndlessUpstream

    upstream = EndlessUpstream("anthropic")
    server = await aiohttp_server(upstream.app())
    http = HTTP11Client()
    try:
        async with asyncio.timeout(10):
            resp = await http.send("POST", str(server.make_url("/")), b"{}", {},
                                   connect_timeout=5)
            while resp._buffered <= PAUSE_AT:  # nobody reads yet: reading pauses past it
                await asyncio.sleep(0.01)
            client = Client()
            client.full = True  # the first frames went out and filled the client's buffer
            enc, tr = parts()
            pump = _Pump(tr, enc, Deadline(), client, resp)  # type: ignore[arg-type]
            task = asyncio.ensure_future(pump.run())
            await asyncio.sleep(0.5)
            held = sum(map(len, pump._held or ()))
            assert held < 512 * 1024, f"{held} bytes held while the client was full"
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        resp.close()
        await http.close()


async def test_a_first_token_among_reads_held_for_a_full_client_is_noted_when_they_go() -> None:
    """Committed on a role chunk alone, whose write left the client's buffer full: the reads
    that follow are held, the first token among them. When the client drains they go to the
    sink that asks for the token, so it is noted then (and the pump takes the reads over),
    not taken at the stream's end by the relay's last resort."""
    split = BODY.find(b"event: content_block_delta")
    enc, tr = parts()
    tr.feed(BODY[:split])  # the commit: the role chunk alone
    assert enc.role_only()
    enc.take()  # (the relay wrote it)
    client, up, deadline = Client(), Upstream(), Deadline()
    record = RequestRecord(trace_id="t")
    client.full = True  # ...and the client stopped reading
    pump = _Pump(tr, enc, deadline, client, up)  # type: ignore[arg-type]
    sink = _FirstToken(pump, enc, deadline, up, record)  # type: ignore[arg-type]
    task = asyncio.ensure_future(pump.run(sink))
    await asyncio.sleep(0)
    sink.data(b'event: ping\ndata: {"type": "ping"}\n\n')  # nothing for the client...
    assert up.paused  # ...who is found full: reading pauses
    rest = BODY[split:]
    sink.data(rest[:200])  # the first token's read, already on its way: held
    assert record.first_token is None
    client.drained.set()
    await asyncio.sleep(0.01)
    assert not task.done() and not up.paused
    assert record.first_token is not None and up.sink is pump
    assert deadline.token_reads == 2  # (the ping, then the held reads as one)
    noted = record.first_token
    up.sink.data(rest[200:])
    up.sink.end(None)
    await asyncio.wait_for(task, 1)
    assert record.first_token == noted and client.ended
