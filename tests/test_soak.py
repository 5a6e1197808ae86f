"""Soak: a few hundred requests under mixed failures, on both fronts and both upstream
clients; afterwards everything the proxy holds per request is back where it started.

Mixed in: clients that leave mid-stream, before the first byte, half-way through sending the
body and during a retry's wait; upstreams that reset, stall past `request_timeout`, send
garbage, refuse the connection, answer 429 (retried), send an error event, cut a stream after
its commit; fallbacks and load balancing behind circuit breakers that open and half-open every
40 ms; cache hits and `store: true`; more requests at once than `max_concurrent_streams`
admits; keep-alive comments (`keepalive_interval`) on one run, which opens streams in a task
of their own. The end state, exactly: no admission slot and no active-streams gauge left, no
request the drain still counts, no half-open breaker's trial held, no cache write or stored
completion pending, no upstream connection busy nor open beyond the pool's idle ones, no task,
no socket.

(tests/test_chaos.py checks what the answers say under random upstream bytes; this one checks
what is held, under the failure presets of the mock provider.) STREAMPROXY_SOAK_SEED picks
the run; every wait has a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from streamproxy.observe.metrics import metrics
from streamproxy.routing.breaker import OPEN
from streamproxy.server.admission import ADMISSION
from streamproxy.server.app import STATE
from streamproxy.server.store_and_cache import FEATURES
from tests.helpers import make_config
from tests.test_gateway import closed_port

SEED = int(os.environ.get("STREAMPROXY_SOAK_SEED", "222"))
REQUESTS = 240
CONCURRENCY = 12
LIMIT = 8  # max_concurrent_streams: clients that leave early free theirs at once, so it fills
REQUEST_BOUND = 8.0  # seconds any one client may take
USER = [{"role": "user", "content": "hi"}]
GARBAGE = bytes(range(256)) + b"\r\n\x00<html>502 Bad Gateway</html>\n\n"
CB = {"failure_threshold": 1, "cooldown_interval": 40}  # (ms) opens and half-opens many times a run


def leaf(model: str, provider: str = "mock", **extra: Any) -> dict[str, Any]:
    return {"provider": provider, "override_params": {"model": model}, **extra}


FAULTS: list[dict[str, Any]] = [
    leaf("fast:status=500"),
    leaf("fast:reset_first=1"),
    leaf("fast:error_after=0"),
    leaf("fast:truncate_after=3,flush=1"),  # (streamed: after the commit, the relay's error)
    leaf("fast:stall_ms=3000", request_timeout=150),
    {"provider": "garbage"},
    {"provider": "down"},
]
CLIENTS = ["read"] * 8 + ["mid", "mid", "first", "first", "upload"]


def plan(rng: random.Random) -> tuple[dict[str, Any], dict[str, str], str]:
    """A request's body and headers, and what its client does (`run_one`)."""
    body: dict[str, Any] = {"model": "m", "messages": USER, "stream": rng.random() < 0.75}
    kind = rng.choice(["ok", "fallback", "fallback", "lb", "fault", "retry", "cache"])
    client = rng.choice(CLIENTS)
    if kind == "ok":
        config: dict[str, Any] = leaf(f"fast:tokens={rng.randrange(1, 30)}")
    elif kind in ("fallback", "lb"):
        config = {"strategy": {"mode": "fallback" if kind == "fallback" else "loadbalance",
                               "cb_config": CB},
                  "targets": [rng.choice(FAULTS), leaf("fast:tokens=5", "mock2")]}
    elif kind == "fault":
        config = rng.choice(FAULTS)
    elif kind == "retry":
        client = rng.choice(["read", "retry_wait"])
        # (the mock asks for 1 s: waited by the client that leaves during it, not by others)
        config = {**leaf("fast:status=429"), "retry": {
            "attempts": 1, "on_status_codes": [429],
            "use_retry_after_headers": client == "retry_wait"}}
    else:  # a few keys, so later requests hit what earlier ones wrote
        config = leaf(f"fast:tokens={rng.randrange(3)}")
    if kind == "cache" or rng.random() < 0.2:
        config["cache"] = {"mode": "simple", "max_age": 60}
    if rng.random() < 0.15:
        body["store"] = True
    if client == "mid" and "override_params" in config:  # paced: it leaves while it streams
        config["override_params"] = {"model": config["override_params"]["model"] + ",tps=400"}
    return body, {"x-portkey-config": orjson.dumps(config).decode()}, client


async def garbage(request: web.Request) -> web.StreamResponse:
    await request.read()
    resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(GARBAGE)
    await resp.write_eof()
    return resp


async def send_and_leave(url: str, body: dict[str, Any], headers: dict[str, str],
                         cut: bool) -> None:
    """A client that sends its request (`cut`: half its body) and goes away before any byte
    of the answer."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    payload = orjson.dumps(body)
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(payload)}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(head + (payload[:len(payload) // 2] if cut else payload))
    await writer.drain()
    writer.transport.abort()


async def run_one(session: aiohttp.ClientSession, url: str, body: dict[str, Any],
                  headers: dict[str, str], client: str) -> int | None:
    """The status the client saw; None when it left before the status came."""
    if client in ("first", "upload"):
        await send_and_leave(url, body, headers, cut=client == "upload")
        return None
    if client == "retry_wait":  # leave during the 1 s the upstream's 429 asked for
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.3), session.post(url, json=body,
                                                          headers=headers) as resp:
                await resp.read()
                return resp.status
        return None
    async with session.post(url, json=body, headers=headers) as resp:
        if client == "mid" and resp.status == 200 and body["stream"]:
            await resp.content.readany()
            resp.close()  # the client goes away
            return resp.status
        await resp.read()
        return resp.status


def _tasks() -> set[asyncio.Task[Any]]:
    """The tasks running, but the servers' connection tasks (keep-alive: counted apart)."""
    return {t for t in asyncio.all_tasks()
            if not t.done() and t.get_coro().__qualname__ != "RequestHandler.start"}


def _sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # (the listing's own descriptor, closed since)
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


async def settle(check: Callable[[], bool], timeout: float = 8) -> bool:
    for _ in range(int(timeout / 0.05)):
        if check():
            return True
        await asyncio.sleep(0.05)
    return check()


@pytest.mark.parametrize(("front", "upstream_client", "keepalive"), [
    ("lean", "native", None), ("lean", "aiohttp", None), ("aiohttp", "native", None),
    ("aiohttp", "aiohttp", None), ("lean", "native", 0.05)])
async def test_a_soak_of_mixed_failures_leaves_nothing_behind(
        proxy: Any, aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch, front: str,
        upstream_client: str, keepalive: float | None) -> None:
    monkeypatch.setenv("STREAMPROXY_FRONT", front)
    monkeypatch.setenv("STREAMPROXY_UPSTREAM_CLIENT", upstream_client)
    # (the models of its configs would fill the cap on model labels later tests count on)
    monkeypatch.setattr(metrics(), "_models", set(metrics()._models))
    bad = web.Application()
    bad.router.add_post("/{tail:.*}", garbage)
    bad_server = await aiohttp_server(bad)
    client = await proxy(make_config({
        "mock": {"type": "mock", "default_model": "fast"},
        "mock2": {"type": "mock", "wire": "openai", "default_model": "fast"},
        "garbage": {"type": "openai", "base_url": str(bad_server.make_url("/v1")),
                    "api_key": "sk-g", "default_model": "m"},
        "down": {"type": "anthropic", "base_url": f"http://127.0.0.1:{closed_port()}",
                 "api_key": "sk-d", "default_model": "m"},
    }, default="mock", server={"max_concurrent_streams": LIMIT,
                               "keepalive_interval": keepalive}))
    state, admission = client.server.app[STATE], client.server.app[ADMISSION]
    features = client.server.app[FEATURES]
    gauge = metrics().active_streams
    opened: list[str] = []  # breakers that opened during the run (at its end they may be closed)
    state.breakers.listeners.append(
        lambda key, after, *_: opened.append(key) if after == OPEN else None)
    url = str(client.make_url("/v1/chat/completions"))
    rng = random.Random(SEED)
    plans = [plan(rng) for _ in range(REQUESTS)]
    gate = asyncio.Semaphore(CONCURRENCY)
    statuses: list[int | None] = []
    failures: list[str] = []

    async with aiohttp.ClientSession() as session:
        # One request first: the mock's server and a pooled connection are in the baseline.
        await run_one(session, url, {"model": "m", "messages": USER}, {}, "read")
        baseline_tasks, baseline_sockets = _tasks(), _sockets()
        gauge_before = gauge._value.get()  # type: ignore[attr-defined]

        async def one(i: int) -> None:
            body, headers, how = plans[i]
            async with gate:
                try:
                    async with asyncio.timeout(REQUEST_BOUND):
                        statuses.append(await run_one(session, url, body, headers, how))
                except Exception as e:
                    failures.append(f"request {i} ({how}, {headers}): {type(e).__name__}: {e}")

        await asyncio.gather(*(one(i) for i in range(REQUESTS)))
    where = f"(STREAMPROXY_SOAK_SEED={SEED})"
    assert not failures, (where, failures[:5])
    assert 200 in statuses, where

    pool = state.client.native.pool if state.client.native is not None else None

    def idle() -> int:  # upstream connections kept for reuse
        if pool is not None:
            return sum(map(len, pool.idle.values()))
        assert state.client.session is not None
        return sum(map(len, state.client.session.connector._conns.values()))  # type: ignore

    def trials() -> list[str]:  # half-open breakers whose trial is still held
        return [k for k, st in state.breakers._states.items() if st.trial_until is not None]

    await features.cache.drain()
    store = features.storage.store
    await store.flush()
    assert await settle(lambda: admission.active == 0), (where, admission.active)
    assert gauge._value.get() == gauge_before, where  # type: ignore[attr-defined]
    assert await settle(lambda: state.drain.active == 0), (where, state.drain.active)
    assert await settle(lambda: pool is None or pool.busy == 0), (where, pool and pool.busy)
    assert trials() == [], (where, trials())
    assert opened, where  # (the breakers were exercised; their trials are checked above)
    assert not features.cache._writes, where
    assert store._sent == store._written and not store._batch, where  # type: ignore
    assert await settle(lambda: not (_tasks() - baseline_tasks - {asyncio.current_task()})), (
        where, _tasks() - baseline_tasks)
    # (an idle upstream connection is two sockets here: the upstreams are in this process)
    assert await settle(lambda: _sockets() <= baseline_sockets + 2 * idle()), (
        where, _sockets(), baseline_sockets, idle())


@pytest.mark.parametrize("lost", [False, True], ids=["swallowed", "lost"])
async def test_a_stream_opened_after_its_client_left_during_keepalives_is_closed(
        proxy: Any, monkeypatch: pytest.MonkeyPatch, lost: bool) -> None:
    """With `keepalive_interval` the stream opens in a task of its own, cancelled when the
    client goes. A cancel that task never sees (redis-py's cache lookup swallows one that
    comes as its pool's wait times out: the soak with a Redis cache found it) let it open the
    upstream stream anyway, which nobody relayed or closed: its connection stayed busy, out of
    the pool and open, for good. A swallowed cancel is still the task's (`cancelling()`): the
    upstream is not asked. One lost without a trace (`lost`: uncancelled too) still opens the
    stream, which is then closed."""
    monkeypatch.delenv("STREAMPROXY_UPSTREAM_CLIENT", raising=False)
    client = await proxy(make_config({"mock": {"type": "mock", "default_model": "fast"}},
                                     default="mock", server={"keepalive_interval": 0.05}))
    state, features = client.server.app[STATE], client.server.app[FEATURES]
    pool = state.client.native.pool
    looked_up = asyncio.Event()
    opening: list[asyncio.Task[Any]] = []

    async def swallowing_get(key: str) -> None:
        task = asyncio.current_task()
        assert task is not None
        opening.append(task)
        looked_up.set()
        with contextlib.suppress(asyncio.CancelledError):  # as redis-py may
            await asyncio.sleep(0.5)
        if lost:
            task.uncancel()
        return None  # a miss: the upstream is asked

    monkeypatch.setattr(features.cache.backend, "get", swallowing_get)
    # (a fallback: one target's keep-alive head would wait for its lookup, for its status)
    config = {"strategy": {"mode": "fallback"}, "cache": {"mode": "simple"},
              "targets": [leaf("fast:tokens=3"), leaf("fast:tokens=3")]}
    resp = await client.post("/v1/chat/completions", headers={
        "x-portkey-config": orjson.dumps(config).decode()},
        json={"model": "m", "messages": USER, "stream": True})
    assert resp.status == 200
    assert await resp.content.readany()  # a keep-alive comment: the lookup is under way
    assert looked_up.is_set()
    opened = pool.opened
    resp.close()  # the client goes away
    done, _ = await asyncio.wait(opening, timeout=3)
    assert done
    if lost:
        assert await settle(lambda: pool.opened > opened, timeout=3)  # the upstream was asked
    else:
        assert pool.opened == opened  # not asked
    assert await settle(lambda: pool.busy == 0, timeout=3), pool.busy


@pytest.mark.parametrize("front", ["lean", "aiohttp"])
@pytest.mark.parametrize("stream", [True, False])
async def test_a_request_whose_client_left_during_a_swallowing_lookup_asks_no_upstream(
        proxy: Any, upstream: Any, access_log: Any, monkeypatch: pytest.MonkeyPatch,
        front: str, stream: bool) -> None:
    """Without keep-alive comments the handler's own task looks the cache up; a lookup that
    swallows the cancel of its client's leaving (redis-py's may) returned a miss, and the
    request went on: the upstream was asked, its tokens spent, for nobody."""
    monkeypatch.setenv("STREAMPROXY_FRONT", front)
    client = await proxy(make_config({"up": {"type": "openai", "base_url": upstream.url,
                                             "api_key": "sk-up", "default_model": "m"}},
                                     default="up"))
    features = client.server.app[FEATURES]
    looked_up, returned = asyncio.Event(), asyncio.Event()

    async def swallowing_get(key: str) -> None:
        looked_up.set()
        with contextlib.suppress(asyncio.CancelledError):  # as redis-py may
            await asyncio.sleep(0.5)
        returned.set()
        return None  # a miss: the upstream would be asked

    monkeypatch.setattr(features.cache.backend, "get", swallowing_get)
    headers = {"x-portkey-config": orjson.dumps({"provider": "up",
                                                 "cache": {"mode": "simple"}}).decode()}
    body = {"model": "m", "messages": USER, "stream": stream}
    leaving = asyncio.ensure_future(send_and_leave(
        str(client.make_url("/v1/chat/completions")), body, headers, cut=False))
    async with asyncio.timeout(5):
        await looked_up.wait()
        await leaving
        await returned.wait()
    assert await settle(lambda: bool(access_log()), timeout=3)  # the request has ended
    assert access_log()[-1]["client_disconnected"] is True
    assert upstream.requests == []
