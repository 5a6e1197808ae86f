"""Fault suite: malformed upstream streams of every framing (SSE, NDJSON, AWS event-stream) end
with an OpenAI error — a JSON 502/504 before the commit point, one error frame after it — never
a hang, never a fake `stop`, never [DONE]; every provider's stream translator, and its
translation of a whole answer, raises only our typed errors on arbitrary events; 1,000 client
disconnects mid-stream leave no upstream connection open and memory back near its baseline."""

from __future__ import annotations

import asyncio
import gc
import struct
import tracemalloc
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamproxy.config import Config, parse_config
from streamproxy.decode.eventstream import EventStreamDecoder
from streamproxy.decode.ndjson import NDJSONDecoder
from streamproxy.decode.sse import SSEDecoder
from streamproxy.errors import BufferOverflow, ProxyError
from streamproxy.observe.access_log import ACCESS_LOGGER
from streamproxy.openai_api.chunks import ChunkEncoder
from streamproxy.openai_api.request import ChatRequest, parse_chat_request
from streamproxy.providers.registry import PROVIDER_TYPES
from streamproxy.routing.target import Target
from streamproxy.server.admission import ADMISSION
from streamproxy.server.app import STATE
from tests.eventstream_frames import encode_frame, split_frames
from tests.helpers import TRANSLATOR_MODELS, collect, fixture_bytes, make_config, sse_chunks

USER = [{"role": "user", "content": "hi"}]
UPSTREAM_CODES = {"upstream_protocol_error", "upstream_stream_truncated", "upstream_timeout"}
CAP = 64 * 1024  # server.max_event_bytes in these configs
TIMEOUTS = {"first_token": 1.5, "idle": 0.75}  # stalls end quickly, normal reads never wait

# -- the four framings: a valid start (commit point + one content delta), then faults --------

ANTHROPIC_START = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","type":"message",'
    b'"role":"assistant","model":"m","content":[],"usage":{"input_tokens":1,"output_tokens":1}}}'
    b'\n\nevent: content_block_start\ndata: {"type":"content_block_start","index":0,'
    b'"content_block":{"type":"text","text":""}}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"Hel"}}\n\n')
OPENAI_START = (
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{'
    b'"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{'
    b'"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}\n\n')
OLLAMA_LINE = orjson.dumps({"model": "m", "created_at": "2024-01-01T00:00:00Z", "message": {
    "role": "assistant", "content": "Hel"}, "done": False}) + b"\n"
BEDROCK_FRAMES = split_frames(fixture_bytes(
    "bedrock/pydantic-ai_bedrock_model_iter_stream.converse-stream.bin"))
GARBAGE = bytes(range(256)) * 4 + b"\r\n\x00\xff garbage without fields \x89PNG\r\n\x1a\n" * 8


def _huge_prelude() -> bytes:
    """A prelude with a valid CRC announcing a 1 GiB frame: refused before any payload."""
    prelude = struct.pack(">II", 1 << 30, 0)
    return prelude + struct.pack(">I", zlib.crc32(prelude))


def _flipped(frame: bytes) -> bytes:
    i = len(frame) - 8  # inside the payload: the message CRC no longer matches
    return frame[:i] + bytes([frame[i] ^ 0xFF]) + frame[i + 1:]


@dataclass(frozen=True)
class Wire:
    kind: str
    content_type: str
    start: bytes
    faults: dict[str, tuple[bytes, bool]]  # name → (bytes, hold the connection open after)
    extra: dict[str, Any]


WIRES = {
    "anthropic": Wire("anthropic", "text/event-stream", ANTHROPIC_START, {
        "garbage": (GARBAGE, False),
        "garbage_then_stall": (GARBAGE, True),
        "invalid_json": (b'event: content_block_delta\ndata: {"type":"content_block_delta",'
                         b'"delta":{"text":"x"\n\n', False),
        "not_json": (b"data: <html>502 Bad Gateway</html>\n\n", False),
        "wrong_shape": (b'data: {"type":"content_block_delta","index":0}\n\n', False),
        "cut_mid_event": (b'event: content_block_delta\ndata: {"type":"content_bl', False),
        "endless_line": (b"data: " + b"x" * (4 * CAP), True),
    }, {}),
    "openai": Wire("openai", "text/event-stream", OPENAI_START, {
        "garbage": (GARBAGE, False),
        "garbage_then_stall": (GARBAGE, True),
        "invalid_json": (b'data: {"id":"c","choices":[{"delta":{"content":"x"\n\n', False),
        "not_json": (b"data: <html>502 Bad Gateway</html>\n\n", False),
        "wrong_shape": (b'data: {"id":"c","choices":{"finish_reason":"stop"}}\n\n', False),
        "cut_mid_event": (b'data: {"id":"c","object":"chat.completion.chunk","choi', False),
        "endless_line": (b"data: " + b"x" * (4 * CAP), True),
    }, {}),
    "ollama": Wire("ollama", "application/x-ndjson", OLLAMA_LINE, {
        "garbage": (GARBAGE, False),
        "garbage_then_stall": (b"\x00\xfe" * 100, True),
        "invalid_json": (b'{"message": {"content": "x"\n', False),
        "not_json": (b"<html>502 Bad Gateway</html>\n", False),
        "wrong_shape": (b'{"message": "x", "done": 7}\n', False),
        "cut_mid_event": (OLLAMA_LINE[:30], False),
        "endless_line": (b"x" * (4 * CAP), True),
    }, {}),
    "bedrock": Wire("bedrock", "application/vnd.amazon.eventstream",
                    b"".join(BEDROCK_FRAMES[:3]), {
        "garbage": (GARBAGE, False),
        "bad_crc": (_flipped(BEDROCK_FRAMES[3]), False),
        "wrong_shape": (encode_frame({":event-type": "contentBlockDelta",
                                      ":content-type": "application/json",
                                      ":message-type": "event"}, b'{"delta": 5}'), False),
        "not_json": (encode_frame({":event-type": "contentBlockDelta",
                                   ":content-type": "application/json",
                                   ":message-type": "event"}, b"<html>"), False),
        "cut_mid_frame": (BEDROCK_FRAMES[3][:20], False),
        "stall_mid_frame": (BEDROCK_FRAMES[3][:20], True),
        "huge_frame": (_huge_prelude(), True),
    }, {"region": "us-west-2", "aws_access_key_id": "AKIDEXAMPLE",
        "aws_secret_access_key": "secret", "default_model": "amazon.nova-micro-v1:0"}),
}


def wire_config(wire: Wire, url: str) -> Config:
    return make_config({"up": {"type": wire.kind, "base_url": url, "api_key": "k",
                               "default_model": "m", "timeouts": TIMEOUTS, **wire.extra}},
                       default="up", server={"max_event_bytes": CAP})


CASES = [(kind, fault) for kind, wire in WIRES.items() for fault in wire.faults]


class Scripted:
    """An upstream that sends a valid start, waits until the test says the client has it (so
    the fault surely arrives after the commit point, in a read of its own), then the fault."""

    def __init__(self, wire: Wire, fault: bytes, hold: bool, mid: bool) -> None:
        self.wire, self.fault, self.hold, self.mid = wire, fault, hold, mid
        self.release = asyncio.Event()
        self.closed = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"content-type": self.wire.content_type})
        await resp.prepare(request)
        try:
            if self.mid:
                await resp.write(self.wire.start)
                await self.release.wait()
            await resp.write(self.fault)
            if self.hold:
                await asyncio.sleep(3600)
            await resp.write_eof()
        finally:
            self.closed.set()
        return resp


@pytest.mark.parametrize(("kind", "fault"), CASES)
@pytest.mark.parametrize("where", ["first", "mid"])
async def test_malformed_upstream_stream_ends_with_an_openai_error(
        proxy: Any, aiohttp_server: Any, kind: str, fault: str, where: str) -> None:
    wire = WIRES[kind]
    upstream = Scripted(wire, *wire.faults[fault], mid=where == "mid")
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", upstream.handle)
    server = await aiohttp_server(app)
    client = await proxy(wire_config(wire, str(server.make_url("")).rstrip("/")))
    resp = await client.post("/v1/chat/completions",
                             json={"model": "m", "stream": True, "messages": USER})
    if where == "first":  # nothing was committed: a plain JSON error
        body = await asyncio.wait_for(resp.read(), 15)  # never a hang
        assert resp.status in (502, 504), body[:300]
        err = orjson.loads(body)["error"]
        assert err["code"] in UPSTREAM_CODES, err
        return
    assert resp.status == 200
    body = await asyncio.wait_for(resp.content.readany(), 15)
    upstream.release.set()
    body += await asyncio.wait_for(resp.read(), 15)  # never a hang
    chunks = sse_chunks(body)
    c = collect(chunks)  # a strict client's invariants: nothing after the error frame
    assert c.chunks >= 1  # what came before the fault was relayed
    assert c.error is not None and c.error["code"] in UPSTREAM_CODES, c.error
    assert "[DONE]" not in chunks and c.finish_reason is None  # never a fake `stop`
    await asyncio.wait_for(upstream.closed.wait(), 10)  # the upstream connection was let go


@pytest.mark.parametrize("status", [500, 200])
async def test_an_upstream_body_is_held_to_the_event_cap(proxy: Any, aiohttp_server: Any,
                                                        status: int) -> None:
    """An error body, or a non-streamed answer, that goes on past `max_event_bytes` is not
    buffered whole: the error is read up to the cap (its status is kept), the answer refused."""
    closed = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(status=status, headers={"content-type": "application/json"})
        await resp.prepare(request)
        try:
            await resp.write(b'{"error": {"message": "' + b"x" * (4 * CAP))
            await asyncio.sleep(3600)  # and more would come
        finally:
            closed.set()
        return resp

    app = web.Application()
    app.router.add_post("/v1/messages", endless)
    server = await aiohttp_server(app)
    client = await proxy(wire_config(WIRES["anthropic"], str(server.make_url("")).rstrip("/")))
    resp = await client.post("/v1/chat/completions",
                             json={"model": "m", "stream": status != 200, "messages": USER})
    err = (await resp.json())["error"]
    if status == 200:
        assert resp.status == 502 and err["code"] == "upstream_protocol_error", err
    else:
        assert resp.status == 500, err  # the upstream's, not a timeout
    await asyncio.wait_for(closed.wait(), 5)


# -- pure: every translator, arbitrary events ----------------------------------------------

VOCAB = ["type", "index", "delta", "text", "content_block", "message", "usage", "choices",
         "finish_reason", "candidates", "content", "parts", "role", "tool_calls", "function",
         "arguments", "name", "id", "done", "stop_reason", "error", "input_tokens",
         "output_tokens", "partial_json", "thinking", "signature", "tool_use", "text_delta",
         "input_json_delta", "message_start", "message_delta", "message_stop",
         "content_block_start", "content_block_delta", "content_block_stop", "functionCall",
         "args", "usageMetadata", "promptTokenCount", "finishReason", "contentBlockIndex",
         "toolUse", "input", "stopReason", "toolUseId", "reasoningContent", "done_reason",
         "eval_count", "thought", "thoughtSignature", "inlineData", "data", "content-delta",
         "message-end", "tool-call-start", "tool-call-delta", "prompt_tokens",
         "completion_tokens", "prompt_tokens_details", "redacted_thinking", "refusal", "output",
         "inputTokens", "outputTokens", "candidatesTokenCount", "tokens", "billed_units"]
EVENT_TYPES = ["", "message_start", "content_block_delta", "message_stop", "error",
               "messageStart", "contentBlockDelta", "contentBlockStop", "messageStop",
               "metadata", "internalServerException"]
SCALAR = (st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=4)
          | st.sampled_from(VOCAB))
VALUE = st.recursive(SCALAR, lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.sampled_from(VOCAB), inner, max_size=4),
                     max_leaves=12)
EVENTS = st.lists(st.tuples(st.dictionaries(st.sampled_from(VOCAB), VALUE, max_size=6),
                            st.sampled_from(EVENT_TYPES)), min_size=1, max_size=6)
PROVIDER_EXTRAS = {"bedrock": {"region": "us-east-1"},
                   "vertex": {"project": "p", "location": "us-central1"},
                   "azure": {"deployment": "d", "api_version": "2024-10-21"}}
# What a translator reads of the request besides the stream: nothing, logprobs with n and tools
# (the compatible types' choices and calls, Gemini's and Ollama's logprobs), a web search
# (Gemini's grounding).
STREAM_ASKS = ({}, {"logprobs": True, "top_logprobs": 2, "n": 2,
                    "tools": [{"type": "function", "function": {"name": "f"}}]},
               {"web_search_options": {}})
STREAM_REQS = [parse_chat_request(orjson.dumps({
    "model": "m", "stream": True, "messages": USER, "stream_options": {"include_usage": True},
    **asks})) for asks in STREAM_ASKS]
WHOLE_REQS = [parse_chat_request(orjson.dumps({"model": "m", "messages": USER, **asks}))
              for asks in STREAM_ASKS]


def frame(kind: str, events: list[tuple[dict[str, Any], str]]) -> bytes:
    if kind == "bedrock":
        return b"".join(encode_frame({":event-type": et or "messageStart",
                                      ":content-type": "application/json",
                                      ":message-type": "event"}, orjson.dumps(e))
                        for e, et in events)
    if kind == "ollama":
        return b"".join(orjson.dumps(e) + b"\n" for e, _ in events)
    return b"".join((b"event: " + et.encode() + b"\n" if et else b"") + b"data: "
                    + orjson.dumps(e) + b"\n\n" for e, et in events)


def test_stream_translators_raise_only_typed_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each example goes to every provider type's translator in turn. Drawing the examples is
    nearly all of the cost (one type's translators take a few ms of the seconds 150 examples
    take), and with derandomize every type was given the same 150 anyway when each drew its
    own: one draw, fed to all, is the same cases for ~1/20 of the time. The target's model is
    drawn from TRANSLATOR_MODELS and served as the executor serves it (`Target.served`): a
    Claude on a vertex provider streams Anthropic's events (vertex_anthropic.py)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake")
    served = {}
    for kind in sorted(PROVIDER_TYPES):
        config = parse_config({"providers": {"p": {
            "type": kind, "base_url": "http://127.0.0.1:9", "api_key": "k",
            "default_model": "m", **PROVIDER_EXTRAS.get(kind, {})}}}, "<faults>")
        provider = PROVIDER_TYPES[kind](config.providers["p"])
        for model in TRANSLATOR_MODELS:
            served[kind, model] = Target(provider, model).served().provider

    @settings(max_examples=150, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(events=EVENTS, model=st.sampled_from(TRANSLATOR_MODELS), asks=st.integers(0, 2))
    def translate(events: list[tuple[dict[str, Any], str]], model: str, asks: int) -> None:
        req = STREAM_REQS[asks]
        for kind in PROVIDER_TYPES:
            try:
                translate_one(kind, served[kind, model], events, req)
                # The first event as a whole answer (a 200's body): the same few ms.
                answer_one(served[kind, model], orjson.dumps(events[0][0]), WHOLE_REQS[asks])
            except BaseException as e:
                e.add_note(f"provider type: {kind}, model: {model}, request: {req.body}")
                raise

    translate()


def translate_one(kind: str, provider: Any, events: list[tuple[dict[str, Any], str]],
                  req: ChatRequest) -> None:
    out = ChunkEncoder(completion_id="c", created=1, model="m", include_usage=True)
    translator = provider.stream_translator(req, out)
    try:
        translator.feed(frame(kind, events))
        translator.close()
    except ProxyError:
        return  # the relay turns it into one error frame
    # No error: the provider's own end came, so the stream ended properly — [DONE] or an
    # error frame — and never just stopped.
    assert translator.done and out.ended


def answer_one(provider: Any, body: bytes, req: ChatRequest) -> None:
    try:
        answer = provider.translate_response(body, req, completion_id="c", created=1, model="m")
    except ProxyError:
        return  # an OpenAI error answer
    assert isinstance(answer, dict | bytes)


# -- pure: decoders hold at most their cap (plus one read) of an endless event --------------

@pytest.mark.parametrize("decoder", ["sse", "ndjson"])
def test_an_endless_event_is_refused_at_the_cap(decoder: str) -> None:
    piece = 4096
    dec: Any = SSEDecoder(CAP) if decoder == "sse" else NDJSONDecoder(CAP)
    fed = 0
    with pytest.raises(BufferOverflow):
        dec.feed(b"data: ")
        for _ in range(10_000):
            dec.feed(b"z" * piece)
            fed += piece
    assert fed <= CAP + piece


def test_a_huge_eventstream_frame_is_refused_before_its_payload() -> None:
    with pytest.raises(BufferOverflow):
        EventStreamDecoder(CAP).feed(_huge_prelude())


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(data=st.binary(max_size=2000), cuts=st.lists(st.integers(0, 2000), max_size=5))
def test_decoders_take_any_bytes_with_typed_errors_only(data: bytes, cuts: list[int]) -> None:
    for dec in (SSEDecoder(1024), NDJSONDecoder(1024), EventStreamDecoder(1024)):
        try:
            start = 0
            for cut in sorted(cuts):
                dec.feed(data[start:cut])
                start = max(start, cut)
            dec.feed(data[start:])
            dec.close()
        except ProxyError:
            pass


# -- 1,000 client disconnects mid-stream ----------------------------------------------------

def established_to(port: int) -> int:
    """Established TCP connections with `port` at either end (loopback, IPv4), from the
    kernel's own table."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        if state == "01" and port in (int(local.split(":")[1], 16),
                                      int(remote.split(":")[1], 16)):
            count += 1
    return count


async def settle(check: Any, timeout: float = 20) -> bool:
    for _ in range(int(timeout / 0.05)):
        if check():
            return True
        await asyncio.sleep(0.05)
    return check()


async def test_a_thousand_client_disconnects_leave_nothing_behind(
        proxy: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Access lines are still built and emitted, but pytest's log capture must not keep them.
    monkeypatch.setattr(ACCESS_LOGGER, "propagate", False)
    config = make_config({"mock": {"type": "mock", "default_model": "fast"}}, default="mock")
    client = await proxy(config)
    state, admission = client.server.app[STATE], client.server.app[ADMISSION]
    assert state.mock_runner is not None and state.mock_runner.server is not None
    mock_port = int(state.mock_runner.addresses[0][1])
    mock_server = state.mock_runner.server
    url = client.make_url("/v1/chat/completions")
    body = {"model": "fast:tokens=5000,tps=100", "stream": True, "messages": USER}
    gate = asyncio.Semaphore(50)
    started = 0
    # A session of our own: the test client keeps every response it made (for its cleanup),
    # which would count here as memory held.
    session = aiohttp.ClientSession()

    async def one() -> None:
        nonlocal started
        async with gate:
            resp = await session.post(url, json=body)
            assert resp.status == 200
            assert await resp.content.readany()  # mid-stream: the answer has begun
            started += 1
            resp.close()  # the client goes away

    def quiet() -> bool:
        return (admission.active == 0 and not mock_server.connections
                and established_to(mock_port) == 0)

    try:
        await asyncio.gather(*(one() for _ in range(50)))  # warm-up: pools, caches, interned
        assert await settle(quiet)
        gc.collect()
        tracemalloc.start()
        baseline = tracemalloc.get_traced_memory()[0]
        await asyncio.wait_for(asyncio.gather(*(one() for _ in range(1000))), 180)
        assert started == 1050
        # No upstream connection is left: none in the kernel's table, none in the mock.
        assert await settle(quiet), (admission.active, len(mock_server.connections),
                                     established_to(mock_port))
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
        await session.close()
    # Anything kept per stream (a response, a buffer, a task) would be megabytes by now.
    assert grown < 1_000_000, f"{grown} bytes still held after 1,000 disconnects"


@pytest.mark.parametrize("stream", [True, False])
async def test_an_error_whose_body_stalls_keeps_its_status(
        proxy: Any, aiohttp_server: Any, monkeypatch: Any, stream: bool) -> None:
    """An upstream error's head, then part of its body and a stall: the error's own status
    (503) once its body's short bound runs out, not a 504 at the first-token timeout."""
    from streamproxy.routing import executor
    monkeypatch.setattr(executor, "ERROR_BODY_SECONDS", 0.05)

    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(status=503, headers={"content-type": "application/json"})
        await resp.prepare(request)
        await resp.write(b'{"error": {"message": "overlo')
        await asyncio.sleep(3600)  # (cancelled when the proxy closes the connection)
        return resp

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    server = await aiohttp_server(app)
    url = str(server.make_url("")).rstrip("/")
    client = await proxy(make_config({"up": {
        "type": "openai", "base_url": url, "api_key": "k", "default_model": "m",
        "timeouts": {"first_token": 20, "idle": 20}}}, default="up"))
    resp = await client.post("/v1/chat/completions", json={"messages": USER, "stream": stream})
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] != "upstream_timeout"
