"""A client that goes away at any moment leaves nothing behind.

A raw loopback upstream (its behaviour named by the request's model) and raw client sockets:
the client closes its connection at a chosen moment (while the proxy connects upstream, before
the first upstream byte, after the role chunk, mid-stream, in a retry's backoff, in a fallback
to the second target, in the keep-alive comments' wait, while a non-streamed answer is read),
on both fronts and both upstream clients. Afterwards: the upstream saw every connection that
carried an unfinished answer closed, the in-flight gauge and admission are back to 0, no task
is left, and the pool holds no busy or half-read connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from streamproxy.observe.metrics import metrics
from streamproxy.server.admission import ADMISSION
from streamproxy.server.app import STATE
from tests.helpers import make_config

BOUND = 5.0  # seconds any wait here may take
USER = [{"role": "user", "content": "hi"}]


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(delta: dict[str, Any], finish: str | None = None) -> bytes:
    return b"data: " + orjson.dumps({
        "id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + b"\n\n"


ROLE = _event({"role": "assistant", "content": ""})
WORDS = [_event({"content": w}) for w in ("Hel", "lo", " there")]
END = _event({}, "stop") + b"data: [DONE]\n\n"
STREAM_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
               b"transfer-encoding: chunked\r\n\r\n")
WHOLE = orjson.dumps({"id": "chatcmpl-up", "object": "chat.completion", "created": 1,
                      "model": "m", "choices": [{"index": 0, "message": {
                          "role": "assistant", "content": "Hello"}, "finish_reason": "stop"}],
                      "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                "total_tokens": 2}})


@dataclass
class Conn:
    """One upstream connection, as the upstream sees it."""

    requests: int = 0
    model: str = ""  # the last request's
    answering: bool = False  # an answer is unfinished on it (the proxy must close it)
    closed: asyncio.Event = field(default_factory=asyncio.Event)


class Upstream:
    """Behaviours, by model: `ok` (a whole stream or answer), `silent` (nothing, ever), `role`
    (the head and the role chunk, then nothing), `mid` (and two words), `e503` (a 503 asking
    for a 3 s wait), `e500`, `partial` (a non-streamed answer's head and half its body)."""

    def __init__(self) -> None:
        self.conns: list[Conn] = []
        self.got: list[str] = []  # the models asked for, in order
        self.scripts: dict[str, list[str]] = {}  # a model's behaviours, request by request
        self.changed = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Conn()
        self.conns.append(conn)
        self._note()
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = orjson.loads(await reader.readexactly(length))
                model = str(body.get("model"))
                conn.requests += 1
                conn.model = model
                conn.answering = True
                self.got.append(model)
                self._note()
                script = self.scripts.get(model)
                behaviour = script.pop(0) if script else model
                await self.answer(behaviour, bool(body.get("stream")), writer, reader)
                conn.answering = False
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            conn.closed.set()
            self._note()
            writer.close()

    def _note(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    async def answer(self, model: str, stream: bool, writer: asyncio.StreamWriter,
                     reader: asyncio.StreamReader) -> None:
        if model in ("e503", "e500"):
            body = b'{"error":{"message":"busy","type":"server_error"}}'
            status = b"503 Service Unavailable" if model == "e503" else b"500 Internal Error"
            writer.write(b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
                         b"retry-after: 3\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()
            return
        if model in ("ok", "flaky") and stream:
            writer.write(STREAM_HEAD + b"".join(_chunk(e) for e in [ROLE, *WORDS, END])
                         + b"0\r\n\r\n")
            await writer.drain()
            return
        if model in ("ok", "flaky"):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                         b"content-length: %d\r\n\r\n" % len(WHOLE) + WHOLE)
            await writer.drain()
            return
        if model == "flood":  # more than any socket buffer holds, then nothing
            writer.write(STREAM_HEAD + _chunk(ROLE))
            word = _chunk(_event({"content": "x" * 2000}))
            for _ in range(2000):
                writer.write(word)
                await writer.drain()
        elif model == "big":  # a whole answer larger than the client's socket buffers
            big = orjson.dumps({**orjson.loads(WHOLE), "pad": "x" * 8_000_000})
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                         b"content-length: %d\r\n\r\n" % len(big) + big)
            await writer.drain()
            return
        elif model == "role":
            writer.write(STREAM_HEAD + _chunk(ROLE))
        elif model == "mid":
            writer.write(STREAM_HEAD + _chunk(ROLE) + _chunk(WORDS[0]) + _chunk(WORDS[1]))
        elif model == "partial":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                         b"content-length: %d\r\n\r\n" % len(WHOLE) + WHOLE[:40])
        await writer.drain()
        self._note()
        await reader.read()  # nothing more, until the proxy closes the connection
        raise ConnectionError

    async def wait(self, check: Callable[[], bool]) -> None:
        async with asyncio.timeout(BOUND):
            while not check():
                await self.changed.wait()


@dataclass(frozen=True)
class Case:
    name: str
    body: dict[str, Any]
    headers: dict[str, str]
    until: str  # "upstream:N" (N requests reached the upstream) or bytes the client reads
    tls: bool = False  # the upstream never answers the TLS handshake: the proxy is connecting
    keepalive: float | None = None


def _body(model: str, stream: bool) -> dict[str, Any]:
    return {"model": model, "messages": USER, "stream": stream}


def _fallback(first: str, second: str) -> dict[str, str]:
    return {"x-portkey-config": orjson.dumps({"strategy": {"mode": "fallback"}, "targets": [
        {"provider": "up", "override_params": {"model": first}},
        {"provider": "up", "override_params": {"model": second}}]}).decode()}


RETRY = {"x-portkey-config": orjson.dumps({"provider": "up", "retry": {"attempts": 2}}).decode()}
CASES = [
    Case("connecting", _body("silent", True), {}, "connect", tls=True),
    Case("before_first_byte", _body("silent", True), {}, "upstream:1"),
    Case("after_role", _body("role", True), {}, '"role":"assistant"'),
    Case("mid_stream", _body("mid", True), {}, '"content":"lo"'),
    Case("retry_backoff", _body("e503", True), RETRY, "upstream:1"),
    Case("fallback", _body("x", True), _fallback("e500", "silent"), "upstream:2"),
    Case("keepalive_wait", _body("silent", True), {}, ": keep-alive",
         keepalive=0.05),
    Case("non_stream_read", _body("partial", False), {}, "upstream:1"),
    # The client reads nothing: the proxy's writes wait for it (backpressure) when it leaves.
    Case("stream_client_full", _body("flood", True), {}, "full"),
    Case("answer_client_full", _body("big", False), {}, "full"),
]


def _config(url: str, front: str, client: str, keepalive: float | None) -> Any:
    server: dict[str, Any] = {"front": front, "upstream_client": client}
    if keepalive:
        server["keepalive_interval"] = keepalive
    return make_config({"up": {"type": "openai", "base_url": url, "api_key": "sk-k",
                               "default_model": "m",
                               "timeouts": {"connect": 20, "first_token": 20, "idle": 20}}},
                       default="up", server=server)


def _tasks() -> set[asyncio.Task[Any]]:
    """The tasks running, but the fake upstream's (a kept connection waits for its next
    request: its own check is `Conn.answering`)."""
    return {t for t in asyncio.all_tasks()
            if not t.done() and t.get_coro().__qualname__ != "Upstream.handle"}


async def _settle(check: Callable[[], bool]) -> bool:
    for _ in range(int(BOUND / 0.02)):
        if check():
            return True
        await asyncio.sleep(0.02)
    return check()


def _request(body: dict[str, Any], headers: dict[str, str]) -> bytes:
    raw = orjson.dumps(body)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (f"POST /v1/chat/completions HTTP/1.1\r\nhost: proxy\r\n"
            f"content-type: application/json\r\ncontent-length: {len(raw)}\r\n{head}\r\n"
            ).encode() + raw


Run = Callable[[Case, Callable[[], Awaitable[None]] | None], Awaitable[None]]


@pytest.fixture(params=["lean", "aiohttp"])
def front(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["native", "aiohttp"])
def upstream_client(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("STREAMPROXY_UPSTREAM_CLIENT", raising=False)
    monkeypatch.delenv("STREAMPROXY_FRONT", raising=False)
    return str(request.param)


async def _serve(proxy: Any, front: str, client: str, case: Case,
                 ) -> tuple[Upstream, Any, asyncio.Server]:
    up = Upstream()
    server = await asyncio.start_server(up.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    scheme = "https" if case.tls else "http"
    test_client = await proxy(_config(f"{scheme}://127.0.0.1:{port}/v1", front, client,
                                      case.keepalive))
    return up, test_client, server


async def _disconnect(up: Upstream, port: int, case: Case, at: int | None = None,
                      within: float = 0.3) -> bytes:
    """Send the case's request; close the connection at its moment (or after `at` bytes or
    `within` seconds, whichever comes first)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_request(case.body, case.headers))
    got = b""
    try:
        async with asyncio.timeout(BOUND):
            if at is not None:
                with contextlib.suppress(TimeoutError):  # (a silent upstream: bounded)
                    async with asyncio.timeout(within):
                        while len(got) < at:
                            data = await reader.read(at - len(got))
                            if not data:
                                break
                            got += data
            elif case.until == "full":
                await up.wait(lambda: len(up.got) >= 1)
                await asyncio.sleep(0.5)  # (bounded: the proxy's buffers fill meanwhile)
            elif case.until == "connect":
                await up.wait(lambda: bool(up.conns))
            elif case.until.startswith("upstream:"):
                n = int(case.until.split(":")[1])
                await up.wait(lambda: len(up.got) >= n)
                await asyncio.sleep(0.05)  # into the backoff, the second read, the wait
            else:
                while case.until.encode() not in got:
                    data = await reader.read(65536)
                    assert data, got
                    got += data
    finally:
        writer.transport.abort()
    return got


async def _nothing_left(up: Upstream, test_client: Any, baseline: set[asyncio.Task[Any]],
                        what: str) -> None:
    app = test_client.server.app
    state = app[STATE]
    # The upstream saw every connection with an unfinished answer closed (a request a busy
    # proxy sent just as its client left included: it is closed once the cancel comes).
    assert await _settle(lambda: all(c.closed.is_set() for c in up.conns if c.answering)), (
        what, "upstream connection left open", [c for c in up.conns if c.answering
                                                and not c.closed.is_set()], up.got)
    assert await _settle(lambda: metrics().active_streams._value.get() == 0), (
        what, metrics().active_streams._value.get())
    assert await _settle(lambda: app[ADMISSION].active == 0), (what, app[ADMISSION].active)
    pool = state.client.native.pool if state.client.native is not None else None
    if pool is not None:
        assert await _settle(lambda: pool.busy == 0), (what, pool.busy)
    me = asyncio.current_task()
    assert await _settle(lambda: not (_tasks() - baseline - {me})), (
        what, _tasks() - baseline - {me})


async def _check_case(proxy: Any, front: str, upstream_client: str, case: Case) -> None:
    up, test_client, server = await _serve(proxy, front, upstream_client, case)
    try:
        await asyncio.sleep(0)
        baseline = _tasks()
        got = await _disconnect(up, test_client.port, case)
        await _nothing_left(up, test_client, baseline, f"{case.name} (client read {got[:300]!r})")
        # And the proxy still answers (a whole stream) on what the pool kept.
        if not case.tls:
            reader, writer = await asyncio.open_connection("127.0.0.1", test_client.port)
            writer.write(_request(_body("ok", True), {"connection": "close"}))
            async with asyncio.timeout(BOUND):
                answer = await reader.read()
            writer.close()
            assert answer.startswith(b"HTTP/1.1 200") and b"data: [DONE]" in answer, answer
    finally:
        server.close()
        for conn in up.conns:
            conn.closed.set()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_a_client_leaving_at_each_moment_leaves_nothing(
        proxy: Any, front: str, upstream_client: str, case: Case) -> None:
    await _check_case(proxy, front, upstream_client, case)


async def test_clients_leaving_at_random_points_leave_nothing(
        proxy: Any, front: str, upstream_client: str) -> None:
    rng = random.Random(284)
    models = ["ok", "ok", "mid", "role", "silent", "e500", "e503", "flood", "partial", "big"]
    up = Upstream()
    server = await asyncio.start_server(up.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    test_client = await proxy(_config(f"http://127.0.0.1:{port}/v1", front, upstream_client,
                                      0.05))
    try:
        await asyncio.sleep(0)
        baseline = _tasks()
        for batch in range(12):  # four clients at once, each leaving at its own point
            ones = [_random_one(rng, models, f"random {batch}.{i}") for i in range(4)]
            await asyncio.gather(*(_disconnect(up, test_client.port, one, at=at, within=within)
                                   for one, at, within in ones))
            await _nothing_left(up, test_client, baseline, str(ones))
    finally:
        server.close()
        for conn in up.conns:
            conn.closed.set()


def _random_one(rng: random.Random, models: list[str], name: str) -> tuple[Case, int, float]:
    stream = rng.random() < 0.8
    first, second = rng.choice(models), rng.choice(["ok", "mid", "silent"])
    targets = [first, second] if rng.random() < 0.5 else [first]
    config: dict[str, Any] = {"strategy": {"mode": "fallback"}, "targets": [
        {"provider": "up", "override_params": {"model": m}} for m in targets]}
    if rng.random() < 0.3:
        config["cache"] = {"mode": "simple", "max_age": 60}
    if rng.random() < 0.3:
        config["retry"] = {"attempts": 1}
    headers = {"x-portkey-config": orjson.dumps(config).decode()}
    body = {"model": first, "messages": USER, "stream": stream,
            "store": rng.random() < 0.3}
    at = rng.choice([0, 1, 30, 150, 300, 500, 700, 1000, 100_000])
    return Case(name, body, headers, ""), at, rng.random() * 0.4


def _breaker_plan() -> dict[str, str]:
    return {"x-portkey-config": orjson.dumps({
        "strategy": {"mode": "fallback",
                     "cb_config": {"failure_threshold": 1, "cooldown_interval": 100}},
        "targets": [{"provider": "up", "override_params": {"model": "flaky"}},
                    {"provider": "up", "override_params": {"model": "ok"}}]}).decode()}


async def _answered(port: int, body: dict[str, Any]) -> bytes:
    """The whole answer to `body` under the breaker plan (the connection closes after it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_request(body, {**_breaker_plan(), "connection": "close"}))
    async with asyncio.timeout(BOUND):
        answer = await reader.read()
    writer.close()
    return answer


@pytest.mark.parametrize("moment", ["before_first_byte", "keepalive_wait", "non_stream_read"])
async def test_a_half_open_breakers_trial_whose_client_left_is_released(
        proxy: Any, front: str, upstream_client: str, moment: str) -> None:
    """The trial of a half-open target whose client goes away is no trial: the next request
    tries the target (it is not skipped as if a trial were still under way)."""
    case = next(c for c in CASES if c.name == moment)
    up, test_client, server = await _serve(proxy, front, upstream_client, case)
    port = test_client.port
    try:
        await asyncio.sleep(0)
        baseline = _tasks()
        body = {**case.body, "model": "x"}
        up.scripts["flaky"] = ["e500", str(case.body["model"])]
        # The first target fails: its breaker opens, the second answers...
        assert (await _answered(port, body)).startswith(b"HTTP/1.1 200")
        assert up.got == ["flaky", "ok"], up.got
        await asyncio.sleep(0.15)  # ...and turns half-open: the next request is its trial,
        await _disconnect(up, port, Case("trial", body, _breaker_plan(), case.until))
        await _nothing_left(up, test_client, baseline, moment)
        assert up.got == ["flaky", "ok", "flaky"], up.got
        # ...whose client left: the next request is a trial again, and answers.
        answer = await _answered(port, body)
        assert answer.startswith(b"HTTP/1.1 200"), answer
        assert up.got == ["flaky", "ok", "flaky", "flaky"], up.got
    finally:
        server.close()
        for conn in up.conns:
            conn.closed.set()
