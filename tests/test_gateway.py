"""Gateway controls end to end: fault-injecting upstreams on loopback, each strategy, the
commit point, retries, breakers, headers, and the portkey-ai / openai SDKs as clients."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from typing import Any

import orjson
import pytest
from aiohttp import web

from streamproxy.config import ConfigError
from streamproxy.providers.mock.server import mock_text
from streamproxy.routing.gateway import _allowed_url, load_settings
from streamproxy.upstream.client import CLIENT_ENV
from tests.helpers import collect, make_config, openai_sdk, sse_chunks

USER = [{"role": "user", "content": "hi"}]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gateway_config(**sections: Any) -> Any:
    return make_config({
        "mock": {"type": "mock", "default_model": "fast"},
        "mock2": {"type": "mock", "default_model": "fast"},
        "down": {"type": "anthropic", "base_url": f"http://127.0.0.1:{closed_port()}",
                 "api_key": "sk-down", "default_model": "m"},
    }, default="mock", **sections)


def leaf(model: str, provider: str = "mock", **extra: Any) -> dict[str, Any]:
    return {"provider": provider, "override_params": {"model": model}, **extra}


def fallback(*targets: dict[str, Any], **strategy: Any) -> str:
    return json.dumps({"strategy": {"mode": "fallback", **strategy}, "targets": list(targets)})


async def post(client: Any, config: str | None = None, stream: bool = True,
               headers: dict[str, str] | None = None, **body: Any) -> Any:
    hdrs = dict(headers or {})
    if config is not None:
        hdrs["x-portkey-config"] = config
    return await client.post("/v1/chat/completions", headers=hdrs,
                             json={"messages": USER, "stream": stream, **body})


FAULTS = {
    "429 with Retry-After": leaf("fast:status=429"),
    "500": leaf("fast:status=500"),
    "503": leaf("fast:status=503"),
    "connection refused": {"provider": "down"},
    "reset before the first event": leaf("fast:reset_first=1"),
    "stall before the first byte": leaf("fast:stall_ms=5000", request_timeout=300),
    "200 then an error event at once": leaf("fast:error_after=0"),
}


@pytest.mark.parametrize("fault", FAULTS)
async def test_fallback_streams_the_second_target_for_every_fault_before_commit(
        proxy: Any, access_log: Any, fault: str) -> None:
    client = await proxy(gateway_config())
    resp = await post(client, fallback(FAULTS[fault], leaf("fast:tokens=7", "mock2")),
                      stream_options={"include_usage": True})
    assert resp.status == 200
    c = collect(sse_chunks(await resp.read()))
    assert c.error is None and c.done
    assert c.content == mock_text(7) and c.finish_reason == "stop"
    assert c.usage["completion_tokens"] == 7
    assert resp.headers["x-portkey-provider"] == "mock2"
    assert resp.headers["x-portkey-last-used-option-index"] == "config.targets[1]"
    assert resp.headers["x-portkey-retry-attempt-count"] == "0"  # the second's: none
    assert access_log()[-1]["attempts"] == 2
    assert len(resp.headers["x-portkey-trace-id"]) == 32


async def test_fallback_for_a_non_streamed_request(proxy: Any) -> None:
    client = await proxy(gateway_config())
    resp = await post(client, fallback(leaf("fast:status=500"), leaf("fast:tokens=3")),
                      stream=False)
    assert resp.status == 200
    body = await resp.json()
    assert body["choices"][0]["message"]["content"] == mock_text(3)
    assert resp.headers["x-portkey-last-used-option-index"] == "config.targets[1]"


@pytest.mark.parametrize("fault", ["fast:tokens=50,tps=20,truncate_after=3",
                                   "fast:tokens=50,tps=20,error_after=3"])
async def test_after_commit_a_failure_is_one_error_frame_not_a_fallback(
        proxy: Any, fault: str) -> None:
    client = await proxy(gateway_config())
    resp = await post(client, fallback(leaf(fault), leaf("fast:tokens=2", "mock2")))
    assert resp.status == 200
    assert resp.headers["x-portkey-provider"] == "mock"
    c = collect(sse_chunks(await resp.read()))
    assert c.content == mock_text(3)
    assert c.error is not None and not c.done and c.finish_reason is None


async def test_stall_mid_stream_hits_the_idle_timeout(proxy: Any) -> None:
    config = make_config({"mock": {"type": "mock", "default_model": "fast",
                                   "timeouts": {"idle": 0.3}}}, default="mock")
    client = await proxy(config)
    resp = await post(client, model="mock/fast:tokens=5,tps=0.5")
    c = collect(sse_chunks(await resp.read()))
    assert c.error is not None and c.error["code"] == "upstream_timeout"


async def test_a_providers_null_total_lifts_the_servers(proxy: Any) -> None:
    # `total: null` was accepted and skipped: the server's total still cut the stream.
    config = make_config({"mock": {"type": "mock", "default_model": "fast",
                                   "timeouts": {"total": None}}}, default="mock",
                         server={"timeouts": {"total": 0.3}})
    client = await proxy(config)
    c = collect(sse_chunks(await (await post(client, model="mock/fast:tokens=4,tps=8")).read()))
    assert c.error is None and c.done and c.content == mock_text(4)


async def test_a_targets_zero_total_lifts_the_providers(proxy: Any) -> None:
    # As a provider's `total: null`; in a client's config null is "not set" (a typed client
    # writes every key), so `total: 0` is the way to say none.
    config = make_config({"mock": {"type": "mock", "default_model": "fast",
                                   "timeouts": {"total": 0.3}}}, default="mock")
    client = await proxy(config)
    lifted = {"provider": "mock", "override_params": {"model": "fast:tokens=4,tps=8"},
              "timeouts": {"total": 0}}
    c = collect(sse_chunks(await (await post(client, json.dumps(lifted))).read()))
    assert c.error is None and c.done and c.content == mock_text(4)
    lifted["timeouts"] = {"total": None}  # (not set: the provider's, not lifted, cuts it)
    c = collect(sse_chunks(await (await post(client, json.dumps(lifted))).read()))
    assert c.error is not None and c.error["code"] == "upstream_timeout"
    del lifted["timeouts"]  # (the provider's total, not lifted, cuts the same stream)
    c = collect(sse_chunks(await (await post(client, json.dumps(lifted))).read()))
    assert c.error is not None and c.error["code"] == "upstream_timeout"


async def test_every_target_failing_returns_the_last_error(proxy: Any) -> None:
    client = await proxy(gateway_config())
    resp = await post(client, fallback(leaf("fast:status=503"), {"provider": "down"}))
    assert resp.status == 502
    assert (await resp.json())["error"]["code"] == "upstream_unreachable"


async def test_fallback_on_status_codes_limits_what_falls_back(proxy: Any) -> None:
    client = await proxy(gateway_config())
    resp = await post(client, fallback(leaf("fast:status=500"), leaf("fast"),
                                       on_status_codes=[429]))
    assert resp.status == 500


async def test_retries_honour_retry_after_then_succeed_elsewhere(proxy: Any,
                                                                access_log: Any) -> None:
    client = await proxy(gateway_config())
    config = fallback(leaf("fast:status=429", retry={"attempts": 1}), leaf("fast:tokens=2"))
    started = time.monotonic()
    resp = await post(client, config)
    elapsed = time.monotonic() - started
    assert resp.status == 200
    assert elapsed >= 0.95  # the mock answers 429 with `retry-after: 1`
    assert access_log()[-1]["attempts"] == 3  # two on the first target
    assert resp.headers["x-portkey-last-used-option-index"] == "config.targets[1]"
    assert resp.headers["x-portkey-retry-attempt-count"] == "0"  # the second's, as Portkey


@pytest.mark.parametrize("stream", [True, False])
async def test_the_retry_count_is_the_answering_targets_own(proxy: Any, upstream: Any,
                                                           access_log: Any,
                                                           stream: bool) -> None:
    # As Portkey's x-portkey-retry-attempt-count: the retries of the target that answered
    # (or whose error is returned), not the earlier targets' tries nor the fallbacks.
    from tests.helpers import fixture_bytes

    upstream.body = fixture_bytes("openai/pydantic-ai_run_stream_sync.response1.sse")
    config = make_config({"mock": {"type": "mock", "default_model": "fast"},
                          "mock2": {"type": "mock", "default_model": "fast"},
                          "flaky": {"type": "openai", "base_url": upstream.url,
                                    "api_key": "sk-flaky", "default_model": "m"}},
                         default="mock")
    client = await proxy(config)
    retry = {"attempts": 2, "on_status_codes": [503], "use_retry_after_header": False}
    first = leaf("fast:status=503", retry={**retry, "attempts": 1})
    upstream.statuses = [503]
    if not stream:
        upstream.content_type = "application/json"
        upstream.body = orjson.dumps({
            "id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                         "finish_reason": "stop"}]})
    resp = await post(client, fallback(first, {"provider": "flaky", "retry": retry}),
                      stream=stream)
    assert resp.status == 200
    await resp.read()
    assert resp.headers["x-portkey-last-used-option-index"] == "config.targets[1]"
    assert resp.headers["x-portkey-retry-attempt-count"] == "1"  # flaky's one retry
    assert access_log()[-1]["attempts"] == 4  # 2 tries of the first, 2 of flaky
    # An error: the count of the target whose error is returned — 0 when it has no retries,
    # even after a first target that used all of its own; -1 when it used up its own.
    failed = await post(client, fallback(first, leaf("fast:status=500", "mock2")),
                        stream=stream)
    assert failed.status == 500
    assert failed.headers["x-portkey-retry-attempt-count"] == "0"
    exhausted = await post(client, fallback(leaf("fast:status=500"),
                                            leaf("fast:status=503", "mock2", retry=retry)),
                           stream=stream)
    assert exhausted.status == 503
    assert exhausted.headers["x-portkey-retry-attempt-count"] == "-1"
    # Retries that end on an error not retried: the retries made, as Portkey counts them.
    upstream.statuses = [503, 400]
    resp = await post(client, json.dumps({"provider": "flaky", "retry": retry}), stream=stream)
    assert resp.status == 400
    assert resp.headers["x-portkey-retry-attempt-count"] == "1"


@pytest.mark.parametrize(("wire", "etype", "code"), [
    ("openai", "requests", "rate_limit_exceeded"),  # OpenAI's own error, as it came
    ("anthropic", "rate_limit_error", "rate_limit_error")])
async def test_the_mocks_rate_limit_reads_as_its_wires(proxy: Any, wire: str, etype: str,
                                                      code: str) -> None:
    client = await proxy(make_config({"mock": {"type": "mock", "wire": wire}}, default="mock"))
    resp = await post(client, json.dumps(leaf("fast:status=429")))
    error = (await resp.json())["error"]
    assert resp.status == 429
    assert (error["type"], error["code"]) == (etype, code)


async def test_retry_without_retry_after_uses_backoff(proxy: Any) -> None:
    client = await proxy(gateway_config())
    config = json.dumps(leaf("fast:status=503", retry={"attempts": 2,
                                                       "use_retry_after_header": False}))
    started = time.monotonic()
    resp = await post(client, config)
    assert resp.status == 503
    assert resp.headers.get("retry-after") == "1"
    assert time.monotonic() - started < 2.5  # backoff ≤ 0.25 + 0.5, not the 1s header


async def test_a_targets_retries_share_its_total_timeout(proxy: Any) -> None:
    client = await proxy(gateway_config())
    # The mock asks for `retry-after: 1`, past the 0.5 s total: no retry is waited for.
    config = json.dumps(leaf("fast:status=503", retry={"attempts": 2},
                             timeouts={"total": 0.5}))
    started = time.monotonic()
    resp = await post(client, config)
    assert resp.status == 503 and time.monotonic() - started < 0.5
    assert resp.headers["x-portkey-retry-attempt-count"] == "-1"  # the retries given up
    # Each try stalls 0.6 s: the retry gets what is left of the total, then a 504.
    config = json.dumps(leaf("fast:status=503,stall_ms=600", timeouts={"total": 1},
                             retry={"attempts": 3, "use_retry_after_header": False}))
    started = time.monotonic()
    resp = await post(client, config)
    assert resp.status == 504 and time.monotonic() - started < 1.4
    assert "total timeout" in (await resp.json())["error"]["message"]


def _claude_refusing_and_gpt() -> Any:
    """An Anthropic target (its translation refuses `stop: ["\\n"]` before sending; nothing
    listens at its URL) and a mock to fall back to."""
    return make_config({
        "claude": {"type": "anthropic", "base_url": f"http://127.0.0.1:{closed_port()}",
                   "api_key": "sk-claude", "default_model": "m"},
        "gpt": {"type": "mock", "wire": "openai", "default_model": "fast"}}, default="gpt")


async def test_a_targets_own_400_is_a_providers_400_to_the_fallback(proxy: Any) -> None:
    # Claude refuses a whitespace-only stop, so its translation answers the 400 Claude would:
    # a fallback acts on it as on any 400, moving on unless its on_status_codes leave 400 out.
    client = await proxy(_claude_refusing_and_gpt())
    targets = ({"provider": "claude"}, leaf("fast:tokens=2", "gpt"))
    for stream in (True, False):
        resp = await post(client, fallback(*targets), stream=stream, stop=["\n"])
        assert resp.status == 200
        assert resp.headers["x-portkey-last-used-option-index"] == "config.targets[1]"
        resp = await post(client, fallback(*targets, on_status_codes=[429, 500]),
                          stream=stream, stop=["\n"])
        assert resp.status == 400 and (await resp.json())["error"]["param"] == "stop"
        assert resp.headers["x-portkey-provider"] == "claude"
        assert resp.headers["x-portkey-last-used-option-index"] == "config.targets[0]"


@pytest.mark.parametrize("stream", [True, False])
async def test_a_targets_own_400_is_final_for_it_but_falls_back(proxy: Any, access_log: Any,
                                                                 stream: bool) -> None:
    # The refusal is the target's translation's, made before any request: a retry on 400
    # got it again after each backoff (three tries, the retries reported run out). Another
    # target may take the request: a fallback still runs.
    client = await proxy(_claude_refusing_and_gpt())
    claude = {"provider": "claude", "retry": {"attempts": 2, "on_status_codes": [400]}}
    resp = await post(client, json.dumps(claude), stream=stream, stop=["\n"])
    assert resp.status == 400 and (await resp.json())["error"]["param"] == "stop"
    assert resp.headers["x-portkey-retry-attempt-count"] == "0"
    assert access_log()[-1]["attempts"] == 0  # (upstream requests sent: none)
    resp = await post(client, fallback(claude, leaf("fast:tokens=2", "gpt")), stream=stream,
                      stop=["\n"])
    assert resp.status == 200
    assert resp.headers["x-portkey-last-used-option-index"] == "config.targets[1]"
    await resp.read()
    assert access_log()[-1]["attempts"] == 1


@pytest.mark.parametrize("stream", [True, False])
async def test_a_targets_own_400_is_no_trial_of_its_breaker(proxy: Any, access_log: Any,
                                                            stream: bool) -> None:
    # The refusal never reached the upstream, so it says nothing of its health: a half-open
    # breaker waits for a request that does, and the next failure opens it again.
    client = await proxy(_claude_refusing_and_gpt())
    config = fallback({"provider": "claude"}, leaf("fast:tokens=2", "gpt"),
                      cb_config={"failure_threshold": 2, "cooldown_interval": 100})
    for _ in range(2):  # the upstream is down: two failures open the breaker
        await post(client, config, stream=stream)
        assert access_log()[-1]["attempts"] == 2
    await asyncio.sleep(0.15)  # half-open: the next request that reaches claude decides
    # refused by claude's translation
    resp = await post(client, config, stream=stream, stop=["\n"])
    assert resp.status == 200
    assert resp.headers["x-portkey-last-used-option-index"] == "config.targets[1]"
    await post(client, config, stream=stream)
    assert access_log()[-1]["attempts"] == 2  # claude tried: its breaker was still half-open
    # the trial failed: open again, claude is skipped
    resp = await post(client, config, stream=stream)
    assert access_log()[-1]["attempts"] == 1
    assert resp.headers["x-portkey-last-used-option-index"] == "config.targets[1]"


async def test_an_open_circuit_is_skipped(proxy: Any, access_log: Any) -> None:
    client = await proxy(gateway_config())
    config = json.dumps({
        "strategy": {"mode": "fallback",
                     "cb_config": {"failure_threshold": 2, "cooldown_interval": 60000}},
        "targets": [{"provider": "down"}, leaf("fast:tokens=2", "mock2")]})
    for _ in range(2):  # two failures trip the breaker of `down`
        await post(client, config)
        assert access_log()[-1]["attempts"] == 2
    resp = await post(client, config)
    assert resp.status == 200
    assert access_log()[-1]["attempts"] == 1  # `down` was not tried
    assert resp.headers["x-portkey-last-used-option-index"] == "config.targets[1]"


async def test_a_target_logs_the_same_index_whether_or_not_a_breaker_before_it_is_open(
        proxy: Any, access_log: Any) -> None:
    # The skipped target was left out of the plan, and the index counted what was left: the
    # fallback logged target_index 1 while `down` failed, 0 once its breaker opened, with
    # option config.targets[1] both times (a dashboard of who served read the primary).
    client = await proxy(gateway_config())
    config = json.dumps({
        "strategy": {"mode": "fallback",
                     "cb_config": {"failure_threshold": 1, "cooldown_interval": 60000}},
        "targets": [{"provider": "down"}, leaf("fast:tokens=2", "mock2")]})
    for _ in range(2):  # the first opens the breaker of `down`; the second skips it
        assert (await post(client, config)).status == 200
    assert [(line["attempts"], line["target_index"], line["option"])
            for line in access_log()] == [(2, 1, "config.targets[1]"),
                                          (1, 1, "config.targets[1]")]


class HalfOpen:
    """A target that fails with a 503 once `release` is set, behind a 50 ms breaker that its
    first failure opened and that is half-open now; `arrived` counts its requests."""

    def __init__(self) -> None:
        self.client: Any = None
        self.config = ""
        self.release = asyncio.Event()
        self.arrived: list[None] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.arrived.append(None)
        await asyncio.wait_for(self.release.wait(), 10)
        return web.json_response({"error": {"message": "down"}}, status=503)

    async def trial(self, stream: bool = True) -> asyncio.Future[Any]:
        """The trial request, once it has reached the target (and waits on it)."""
        trial = asyncio.ensure_future(post(self.client, self.config, stream=stream))
        for _ in range(200):  # (bounded)
            if self.arrived[1:]:
                break
            await asyncio.sleep(0.01)
        return trial


async def half_open(proxy: Any, aiohttp_server: Any, access_log: Any) -> HalfOpen:
    target = HalfOpen()
    app = web.Application()
    app.router.add_post("/{tail:.*}", target.handle)
    server = await aiohttp_server(app)
    client = target.client = await proxy(make_config({
        "mock2": {"type": "mock", "default_model": "fast"},
        "slow": {"type": "openai", "base_url": str(server.make_url("")).rstrip("/"),
                 "api_key": "k", "default_model": "m"}}, default="mock2"))
    config = target.config = fallback({"provider": "slow"}, leaf("fast:tokens=2", "mock2"),
                                      cb_config={"failure_threshold": 1,
                                                 "cooldown_interval": 50})
    target.release.set()
    await post(client, config)  # one failure opens it
    assert access_log()[-1]["attempts"] == 2
    target.release.clear()
    await asyncio.sleep(0.1)  # half-open
    return target


async def test_a_half_open_target_gets_one_trial_while_others_fall_back(
        proxy: Any, aiohttp_server: Any, access_log: Any) -> None:
    # A target still down after its cooldown: of the requests that come at once, one is the
    # trial (and waits for its failure); the others go straight to the fallback.
    target = await half_open(proxy, aiohttp_server, access_log)
    trial = await target.trial()
    others = [await post(target.client, target.config) for _ in range(3)]
    assert [r.headers["x-portkey-last-used-option-index"] for r in others] == [
        "config.targets[1]"] * 3
    assert [line["attempts"] for line in access_log()[-3:]] == [1, 1, 1]
    assert len(target.arrived) == 2  # the first request's, then the trial's alone
    target.release.set()
    assert (await trial).status == 200  # the trial failed over
    assert access_log()[-1]["attempts"] == 2
    resp = await post(target.client, target.config)  # the failed trial opened it again
    assert access_log()[-1]["attempts"] == 1 and resp.status == 200


async def test_a_slow_trial_is_the_only_one_past_its_cooldown(
        proxy: Any, aiohttp_server: Any, access_log: Any) -> None:
    # A trial that takes longer than the cooldown (a slow first token, a long non-streamed
    # answer) is still the only one: a second request let through after one cooldown met
    # the same broken target, with its own client waiting on it.
    target = await half_open(proxy, aiohttp_server, access_log)
    trial = await target.trial(stream=False)
    await asyncio.sleep(0.15)  # three cooldowns, the trial still waiting on the target
    others = [await post(target.client, target.config) for _ in range(2)]
    assert [r.headers["x-portkey-last-used-option-index"] for r in others] == [
        "config.targets[1]"] * 2
    assert len(target.arrived) == 2  # the first request's, then the trial's alone
    target.release.set()
    assert (await trial).status == 200  # the trial failed over
    assert access_log()[-1]["attempts"] == 2


@pytest.mark.parametrize("stream", [True, False])
async def test_a_trial_its_client_left_lets_the_next_request_be_the_trial(
        proxy: Any, aiohttp_server: Any, access_log: Any, stream: bool) -> None:
    # A trial cancelled by its client's disconnect never records an outcome: it is released
    # at once, and the next request tries the target (not skipped for a hold that lasts as
    # long as the trial's tries could).
    target = await half_open(proxy, aiohttp_server, access_log)
    trial = await target.trial(stream=stream)
    logged = len(access_log())
    trial.cancel()
    for _ in range(300):  # (bounded) until the proxy has seen the client leave
        if len(access_log()) > logged:
            break
        await asyncio.sleep(0.01)
    assert access_log()[-1]["status"] == 499
    following = asyncio.ensure_future(post(target.client, target.config, stream=stream))
    for _ in range(300):  # (bounded) until it reaches the target, or is answered
        if target.arrived[2:] or following.done():
            break
        await asyncio.sleep(0.01)
    assert len(target.arrived) == 3  # the first request's, the trial's, the next one's
    target.release.set()
    resp = await following
    assert resp.status == 200 and access_log()[-1]["attempts"] == 2  # it failed over


async def test_a_requests_retries_count_once_toward_the_breaker(
        proxy: Any, access_log: Any, monkeypatch: Any) -> None:
    # The unit is a request's try of the target, retries and all (as Portkey records a
    # target's response after its retries): one request with retries never trips a
    # threshold by itself; three such requests trip a threshold of 3.
    from streamproxy.routing import retry
    monkeypatch.setattr(retry, "BACKOFF_BASE", 0.001)
    client = await proxy(gateway_config())
    config = fallback(leaf("fast:status=503", retry={"attempts": 2,
                                                     "use_retry_after_header": False}),
                      leaf("fast:tokens=2", "mock2"),
                      cb_config={"failure_threshold": 3, "cooldown_interval": 60000})
    for _ in range(3):
        resp = await post(client, config)
        assert resp.status == 200
        assert access_log()[-1]["attempts"] == 4  # the target tried 3 times, then mock2
    await post(client, config)
    assert access_log()[-1]["attempts"] == 1  # open: skipped


async def test_loadbalance_through_the_proxy_uses_every_weighted_target(proxy: Any) -> None:
    client = await proxy(gateway_config())
    config = json.dumps({"strategy": {"mode": "loadbalance"},
                         "targets": [leaf("fast:tokens=1", "mock", weight=1),
                                     leaf("fast:tokens=1", "mock2", weight=1)]})
    seen = set()
    for _ in range(30):
        resp = await post(client, config, stream=False)
        seen.add(resp.headers["x-portkey-provider"])
    assert seen == {"mock", "mock2"}


async def test_conditional_on_metadata_header(proxy: Any) -> None:
    client = await proxy(gateway_config())
    config = json.dumps({
        "strategy": {"mode": "conditional",
                     "conditions": [{"query": {"metadata.tier": "gold"}, "then": "gold"}],
                     "default": "base"},
        "targets": [{"name": "gold", **leaf("fast:tokens=3", "mock2")},
                    {"name": "base", **leaf("fast:tokens=1")}]})
    gold = await post(client, config, headers={"x-portkey-metadata": '{"tier": "gold"}'})
    base = await post(client, config)
    assert gold.headers["x-portkey-provider"] == "mock2"
    assert base.headers["x-portkey-provider"] == "mock"
    bad = await post(client, config, headers={"x-portkey-metadata": "[1]"})
    assert bad.status == 400 and (await bad.json())["error"]["param"] == "x-portkey-metadata"



async def test_a_conditional_whose_then_is_no_name_is_a_400_naming_it(proxy: Any) -> None:
    client = await proxy(gateway_config())
    bad = json.dumps({"strategy": {"mode": "conditional",
                                   "conditions": [{"query": {}, "then": ["g"]}]},
                      "targets": [{"name": "g", **leaf("fast")}]})
    response = await post(client, bad)
    assert response.status == 400  # was a 500: a list in a set's membership test
    assert (await response.json())["error"]["param"] == "config.strategy.conditions[0].then"


@pytest.mark.parametrize("stream", [True, False])
async def test_a_conditional_without_a_match_fails_only_when_a_fallback_reaches_it(
        proxy: Any, stream: bool) -> None:
    # As in Portkey, whose router error is thrown where the conditional is tried: a fallback
    # whose first target answers serves the request.
    client = await proxy(gateway_config())
    unmatched = {"strategy": {"mode": "conditional",
                              "conditions": [{"query": {"metadata.tier": "gold"}, "then": "g"}]},
                 "targets": [{"name": "g", **leaf("fast", "mock2")}]}
    served = await post(client, fallback(leaf("fast:tokens=2"), unmatched), stream=stream)
    assert served.status == 200
    assert served.headers["x-portkey-last-used-option-index"] == "config.targets[0]"
    failed = await post(client, fallback(leaf("fast:status=500"), unmatched), stream=stream)
    assert failed.status == 400
    assert (await failed.json())["error"]["code"] == "no_condition_matched"
    assert failed.headers["x-portkey-last-used-option-index"] == "config.targets[1]"
    assert "x-portkey-retry-attempt-count" not in failed.headers  # no upstream answered
    first = await post(client, fallback(unmatched, leaf("fast")), stream=stream)
    assert first.status == 400  # nothing was tried


@pytest.mark.parametrize("stream", [True, False])
async def test_a_conditional_refusal_after_a_fallback_names_no_provider(
        proxy: Any, access_log: Any, stream: bool) -> None:
    # The 400 is the gateway's (no condition matched), not the failed first target's: it
    # was answered with x-portkey-provider: mock and logged and counted under mock's
    # provider and model, as if mock had refused the request.
    client = await proxy(gateway_config())
    unmatched = {"strategy": {"mode": "conditional",
                              "conditions": [{"query": {"metadata.tier": "gold"}, "then": "g"}]},
                 "targets": [{"name": "g", **leaf("fast", "mock2")}]}
    failed = await post(client, fallback(leaf("fast:status=500"), unmatched), stream=stream)
    assert failed.status == 400
    assert "x-portkey-provider" not in failed.headers
    line = access_log()[-1]
    assert (line["provider"], line["model"]) == (None, None)
    assert line["upstream_errors"] == ["mock:status_500"]  # (the failed target still shows)

async def test_trace_id_is_echoed(proxy: Any) -> None:
    client = await proxy(gateway_config())
    resp = await post(client, headers={"x-portkey-trace-id": "trace-123"}, model="mock/fast")
    assert resp.headers["x-portkey-trace-id"] == "trace-123"


@pytest.mark.parametrize("stream", [True, False])
async def test_errors_carry_the_portkey_headers(proxy: Any, access_log: Any,
                                                stream: bool) -> None:
    client = await proxy(gateway_config())
    trace = {"x-portkey-trace-id": "trace-err"}
    invalid = await post(client, headers=trace, stream=stream, model="mock/fast", n=0)
    assert invalid.status == 400
    assert invalid.headers["x-portkey-trace-id"] == "trace-err"
    assert "x-portkey-provider" not in invalid.headers  # no target was tried
    failed = await post(client, fallback(leaf("fast:status=503"), leaf("fast:status=500", "mock2"),
                                         on_status_codes=[503]), headers=trace, stream=stream)
    assert failed.status == 500
    assert failed.headers["x-portkey-trace-id"] == "trace-err"
    assert failed.headers["x-portkey-provider"] == "mock2"
    assert failed.headers["x-portkey-last-used-option-index"] == "config.targets[1]"
    assert failed.headers["x-portkey-retry-attempt-count"] == "0"  # mock2's: none configured
    assert access_log()[-1]["attempts"] == 2
    generated = await post(client, json.dumps(leaf("fast:status=500")), stream=stream)
    assert len(generated.headers["x-portkey-trace-id"]) == 32
    assert generated.headers["x-portkey-last-used-option-index"] == "config"


async def test_retry_count_is_minus_one_when_the_retries_ran_out(proxy: Any) -> None:
    client = await proxy(gateway_config())
    retry = {"attempts": 1, "use_retry_after_header": False}
    resp = await post(client, json.dumps(leaf("fast:status=503", retry=retry)))
    assert resp.status == 503
    assert resp.headers["x-portkey-retry-attempt-count"] == "-1"
    assert resp.headers["retry-after"] == "1"  # the upstream's, still passed on
    not_retried = await post(client, json.dumps(leaf("fast:status=400", retry=retry)))
    assert not_retried.status == 400
    assert not_retried.headers["x-portkey-retry-attempt-count"] == "0"


@pytest.mark.parametrize(("status", "headers"), [
    (301, {"location": "https://api.example.com/v1/chat/completions"}),  # base_url is off
    (204, {}),  # a success without the answer
])
@pytest.mark.parametrize("stream", [True, False])
async def test_a_final_error_of_the_proxys_is_not_retried_but_falls_back(
        proxy: Any, upstream: Any, access_log: Any, status: int, headers: dict[str, str],
        stream: bool) -> None:
    """A 502 the proxy answers with `x-should-retry: false` (a redirect, a 204) comes again on
    every try of that target: a retry asking for 502 sent the same request again, after a
    backoff, and had it fail alike. Another target may answer: its fallback still runs."""
    upstream.status, upstream.extra_headers = status, headers
    upstream.content_type = "application/json"
    await tried_once_then_fallen_back(proxy, upstream, access_log, 502, stream)


async def tried_once_then_fallen_back(proxy: Any, upstream: Any, access_log: Any, status: int,
                                      stream: bool) -> None:
    """`upstream`, set to fail with `status` and `x-should-retry: false`, under a retry on that
    status: tried once, then, behind a fallback, once more before the mock answers."""
    client = await proxy(make_config({
        "up": {"type": "openai", "base_url": upstream.url, "api_key": "sk-up",
               "default_model": "m"},
        "mock": {"type": "mock", "default_model": "fast"}}, default="mock"))
    retries = {"provider": "up", "retry": {"attempts": 2, "on_status_codes": [status]}}
    resp = await post(client, json.dumps(retries), stream=stream)
    assert resp.status == status and resp.headers["x-should-retry"] == "false"
    assert resp.headers["x-portkey-retry-attempt-count"] == "0"
    assert len(upstream.requests) == 1 and access_log()[-1]["attempts"] == 1
    resp = await post(client, fallback(retries, leaf("fast:tokens=2")), stream=stream)
    assert resp.status == 200 and resp.headers["x-portkey-provider"] == "mock"
    await resp.read()
    assert len(upstream.requests) == 2 and access_log()[-1]["attempts"] == 2


@pytest.mark.parametrize("stream", [True, False])
async def test_an_upstreams_own_should_retry_false_is_not_retried_but_falls_back(
        proxy: Any, upstream: Any, access_log: Any, stream: bool) -> None:
    """An upstream that says `x-should-retry: false` (as OpenAI's API may) knows a retry gets
    the same: the openai SDKs obey it before the status, the config's retry sent the request
    again after each backoff, generated and paid for, to fail alike. A fallback still runs."""
    upstream.statuses, upstream.extra_headers = [500] * 6, {"x-should-retry": "false"}
    await tried_once_then_fallen_back(proxy, upstream, access_log, 500, stream)


# OpenRouter's error in a 200: as the body of a non-streamed answer, as a stream's first event.
ERROR_IN_200 = b'{"error": {"message": "Rate limit exceeded", "code": 429}}'


@pytest.mark.parametrize("stream", [True, False])
async def test_a_200s_error_is_retried_as_its_head_says(
        proxy: Any, upstream: Any, access_log: Any, stream: bool) -> None:
    """An upstream's error in a 200 (OpenRouter's body, a stream's first event) comes with the
    same head as an HTTP error: its `x-should-retry: false` and its Retry-After were read only
    from an error status, so the config retried the request it said not to (three requests,
    the backoffs waited out), and the client got neither header."""
    upstream.body = b"data: " + ERROR_IN_200 + b"\n\n" if stream else ERROR_IN_200
    upstream.content_type = "text/event-stream" if stream else "application/json"
    upstream.extra_headers = {"x-should-retry": "false", "retry-after": "7"}
    client = await proxy(make_config({
        "up": {"type": "openai", "base_url": upstream.url, "api_key": "sk-up",
               "default_model": "m"},
        "mock": {"type": "mock", "default_model": "fast"}}, default="mock"))
    retries = {"provider": "up", "retry": {"attempts": 2, "on_status_codes": [429]}}
    resp = await post(client, json.dumps(retries), stream=stream)
    assert resp.status == 429 and resp.headers["x-should-retry"] == "false"
    assert resp.headers["retry-after"] == "7" and resp.headers["retry-after-ms"] == "7000"
    assert resp.headers["x-portkey-retry-attempt-count"] == "0"
    assert len(upstream.requests) == 1
    # A Retry-After past the cap gives the retries up, as on an HTTP error's.
    upstream.extra_headers = {"retry-after": "600"}
    resp = await post(client, json.dumps(retries), stream=stream)
    assert resp.status == 429 and resp.headers["retry-after"] == "600"
    assert resp.headers["x-portkey-retry-attempt-count"] == "-1"
    assert len(upstream.requests) == 2
    resp = await post(client, fallback(retries, leaf("fast:tokens=2")), stream=stream)
    assert resp.status == 200 and resp.headers["x-portkey-provider"] == "mock"
    await resp.read()
    assert len(upstream.requests) == 3


async def test_anthropics_overloaded_529_is_retried_by_default(
        proxy: Any, access_log: Any) -> None:
    # Anthropic's "overloaded" answer is its most common transient failure; Portkey's default
    # retry codes include it. A config asking for retries without codes did not retry it.
    client = await proxy(gateway_config())
    retry = {"attempts": 1, "use_retry_after_header": False}
    resp = await post(client, json.dumps(leaf("fast:status=529", retry=retry)))
    assert resp.status == 529
    assert resp.headers["x-portkey-retry-attempt-count"] == "-1"  # retried, then ran out
    assert access_log()[-1]["attempts"] == 2


async def test_a_refusal_before_routing_echoes_the_trace_id(proxy: Any) -> None:
    config = make_config({"mock": {"type": "mock", "default_model": "fast"}}, default="mock",
                         auth={"keys": [{"name": "a", "key": "proxy-key-0123456789abcdef"}]})
    client = await proxy(config)
    resp = await post(client, headers={"x-portkey-trace-id": "trace-401"}, model="mock/fast")
    assert resp.status == 401
    assert resp.headers["x-portkey-trace-id"] == "trace-401"


async def test_invalid_config_header_is_a_400_naming_the_field(proxy: Any) -> None:
    client = await proxy(gateway_config())
    resp = await post(client, '{"strategy": {"mode": "fallback"}, "targets": [{"weight": "x"}]}')
    assert resp.status == 400
    err = (await resp.json())["error"]
    assert err["param"] == "config.targets[0].weight"
    for value in ("{not json", "no-such-config"):
        resp = await post(client, value)
        assert resp.status == 400


@pytest.mark.parametrize(("field", "says"), [
    ("vertex_project_id", "uses the project its gateway config names"),
    ("vertex_service_account_json", "authenticates with its gateway config's credentials"),
    ("aws_secret_access_key", "signs with its gateway config's AWS credentials"),
])
async def test_a_targets_cloud_credentials_are_a_400_saying_what_is_taken(
        proxy: Any, field: str, says: str) -> None:
    """Portkey's fields for a target's own Vertex project or key (AWS keys alike) were "not a
    config field", as if misspelt; the answer says the gateway's own are used (and the region
    is taken), as the portkey-ai SDK's headers for them are ignored. Never the value."""
    client = await proxy(gateway_config())
    secret = "-----BEGIN PRIVATE KEY-----secret-material"
    config = {"strategy": {"mode": "fallback"},
              "targets": [leaf("fast"), leaf("fast", vertex_region="us-east5",
                                             **{field: secret})]}
    resp = await post(client, json.dumps(config))
    assert resp.status == 400
    err = (await resp.json())["error"]
    assert err["param"] == f"config.targets[1].{field}" and err["code"] == "invalid_config"
    assert says in err["message"] and "is taken" in err["message"]
    assert "not a config field" not in err["message"] and secret not in await resp.text()
    # the SDK's headers for the same settings are ignored: the request is answered
    sdk = await post(client, headers={"x-portkey-vertex-project-id": "other-proj",
                                      "x-portkey-vertex-service-account-json": "{}"})
    assert sdk.status == 200


@pytest.mark.parametrize("api_key", ["sk-a\r\nX-Injected: 1", "sk-a\u0000b", "sk-\u007f"])
async def test_a_config_api_key_with_a_control_character_is_a_400(proxy: Any,
                                                                   api_key: str) -> None:
    """A config's api_key goes into an upstream header: CR/LF was a 500 (both upstream
    clients refuse to write it), NUL went upstream as it was."""
    client = await proxy(gateway_config())
    resp = await post(client, json.dumps({"provider": "down", "api_key": api_key}))
    assert resp.status == 400
    err = (await resp.json())["error"]
    assert err["param"] == "config.api_key" and err["code"] == "invalid_config"
    assert api_key not in err["message"]


async def test_custom_host_only_for_allowed_hosts(proxy: Any, upstream: Any) -> None:
    upstream.body = (await _anthropic_body())
    host = upstream.url.split("://")[1]
    client = await proxy(gateway_config(allowed_custom_hosts=[host]))
    ok = await post(client, json.dumps({"provider": "down", "custom_host": upstream.url}))
    assert ok.status == 200
    assert upstream.requests[0].path == "/v1/messages"
    denied = await post(client, json.dumps({"provider": "down",
                                            "custom_host": "http://169.254.169.254"}))
    assert denied.status == 400
    assert (await denied.json())["error"]["code"] == "custom_host_not_allowed"


async def test_targets_inherit_their_parents_custom_host(proxy: Any, upstream: Any) -> None:
    host = upstream.url.split("://")[1]
    client = await proxy(openai_pair(upstream, allowed_custom_hosts=[host]))
    config = {"custom_host": f"{upstream.url}/custom/v1", "strategy": {"mode": "fallback"},
              "targets": [{"provider": "e1"}, {"provider": "e2", "custom_host": upstream.url}]}
    resp = await post(client, json.dumps(config), stream=False)
    assert resp.status == 200  # as Portkey's tryTargetsRecursively: not e1's own base URL
    assert upstream.requests[-1].path == "/custom/v1/chat/completions"
    denied = {**config, "custom_host": "http://169.254.169.254"}
    resp = await post(client, json.dumps(denied), stream=False)
    assert resp.status == 400
    err = (await resp.json())["error"]
    assert (err["param"], err["code"]) == ("config.targets[0].custom_host",
                                           "custom_host_not_allowed")
    named = openai_pair(upstream, configs={"c": denied})  # every request would be refused
    with pytest.raises(ConfigError, match=r"targets\[0\]\.custom_host"):
        load_settings(named)


def test_a_named_config_with_a_bad_cache_fails_at_start() -> None:
    # It loaded, and then every request through it was a 400.
    named = gateway_config(configs={"c": {"strategy": {"mode": "fallback"}, "targets": [
        {"provider": "mock"}, {"provider": "mock2", "cache": {"mode": "semantic"}}]}})
    with pytest.raises(ConfigError, match=r"configs\.c.*targets\[1\]\.cache\.mode"):
        load_settings(named)


def test_a_named_configs_camel_case_field_is_named_as_written() -> None:
    # An operator's YAML in Portkey's camelCase: the start-up error named `virtual_key`.
    named = gateway_config(configs={"c": {"strategy": {"mode": "fallback"}, "targets": [
        {"provider": "mock"}, {"virtualKey": "nope"}]}})
    with pytest.raises(ConfigError, match=r"configs\.c.*targets\[1\]\.virtualKey"):
        load_settings(named)


def test_a_named_configs_null_total_still_lifts_a_total() -> None:
    """The YAML reads `total: null` as no total (a provider's, the server's): so did a named
    config's until a client's null became "not set" (7f6a2b6), and then an operator's
    `configs:` entry written so kept the provider's total, silently. A client's 0 is none too."""
    for none in (None, 0):
        named = gateway_config(configs={"long": {
            "provider": "mock", "timeouts": {"total": none},
            "strategy": {"mode": "fallback"},
            "targets": [{"provider": "mock2", "timeouts": {"connect": 2, "total": none}},
                        {"provider": "mock", "timeouts": {"idle": 5}}]}})
        root = load_settings(named).configs["long"]
        assert root.timeouts == {"total": None}
        assert [t.timeouts for t in root.targets] == [{"connect": 2.0, "total": None},
                                                      {"total": None, "idle": 5.0}]


@pytest.mark.parametrize(("config", "key"), [
    # A template's rendering of Python's None, or a quoted null, in the operator's YAML: the
    # config loaded, and every request through it went upstream with the model "None" (the
    # provider's 404), where YAML's null (~) keeps the request's model.
    ({"provider": "mock", "override_params": {"model": "None"}},
     "configs.c: config.override_params.model"),
    ({"provider": "mock", "overrideParams": {"model": "null"}},
     "configs.c: config.overrideParams.model"),
    ({"override_params": {"model": "None"}, "strategy": {"mode": "fallback"},
      "targets": [{"provider": "mock"}, {"provider": "mock2"}]},
     "configs.c: config.override_params.model"),
    ({"strategy": {"mode": "fallback"}, "targets": [
        {"provider": "mock", "override_params": {"model": "fast"}},
        {"provider": "mock2", "override_params": {"model": "NULL"}}]},
     "configs.c: config.targets[1].override_params.model"),
])
def test_a_named_configs_model_written_as_none_fails_at_start(config: dict[str, Any],
                                                               key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(gateway_config(configs={"c": config}))
    assert info.value.key == key
    assert "is a string here, not YAML's null (`~`" in info.value.reason, info.value.reason


async def _anthropic_body() -> bytes:
    from tests.helpers import fixture_bytes

    return fixture_bytes("anthropic/sdk-python_tool_use_response.sse")


async def test_named_configs_routes_virtual_keys_and_forward_headers(
        proxy: Any, upstream: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("VK_SECRET", "sk-virtual")
    upstream.body = await _anthropic_body()
    config = make_config(
        {"mock": {"type": "mock", "default_model": "fast"},
         "claude": {"type": "anthropic", "base_url": upstream.url, "default_model": "m"}},
        default="mock",
        virtual_keys={"claude-prod": {"provider": "claude", "api_key_env": "VK_SECRET"}},
        configs={"smart": {"strategy": {"mode": "fallback"}, "targets": [
            {"provider": "mock", "override_params": {"model": "fast:status=500"}},
            {"virtual_key": "claude-prod", "forward_headers": ["x-team"],
             "override_params": {"model": "claude-haiku-4-5", "temperature": 0.5}}]}},
        routes={"smart": "smart"})
    client = await proxy(config)
    resp = await post(client, model="smart", headers={"x-team": "blue"})
    assert resp.status == 200
    assert resp.headers["x-portkey-provider"] == "claude"
    sent = upstream.requests[0]
    assert sent.headers["x-api-key"] == "sk-virtual"
    assert sent.headers["x-team"] == "blue"
    assert sent.json()["model"] == "claude-haiku-4-5" and sent.json()["temperature"] == 0.5
    by_name = await post(client, "smart", model="whatever")
    assert by_name.status == 200


async def test_request_timeout_header_bounds_the_first_token(proxy: Any) -> None:
    client = await proxy(gateway_config())
    resp = await post(client, model="mock/fast:stall_ms=3000",
                      headers={"x-portkey-request-timeout": "200"})
    assert resp.status == 408  # Portkey's answer to its own request timeout
    assert (await resp.json())["error"]["type"] == "timeout_error"


@pytest.mark.parametrize("value", ["nan", "inf", "-5", "soon"])
async def test_a_request_timeout_header_that_is_no_number_of_ms_is_a_400(proxy: Any,
                                                                        value: str) -> None:
    client = await proxy(gateway_config())
    for stream in (False, True):
        resp = await post(client, model="mock/fast:tokens=1", stream=stream,
                          headers={"x-portkey-request-timeout": value})
        assert resp.status == 400, (value, stream)
        assert (await resp.json())["error"]["param"] == "x-portkey-request-timeout"


async def test_a_request_timeout_of_0_sets_none_as_in_portkey(proxy: Any) -> None:
    # Portkey's gateway reads 0 as unset (the header's: the config's holds; a target's: its
    # parent's holds, else there is none); here each was a 400.
    client = await proxy(gateway_config())
    zero = {"x-portkey-request-timeout": "0"}
    resp = await post(client, json.dumps(leaf("fast:stall_ms=300", request_timeout=0)),
                      headers=zero)
    assert resp.status == 200
    held = await post(client, json.dumps({"request_timeout": 100, "strategy": {
        "mode": "fallback"}, "targets": [leaf("fast:stall_ms=3000", request_timeout=0)]}),
        headers=zero)
    assert held.status == 408


async def test_request_timeout_is_a_408_that_on_status_codes_act_on(proxy: Any) -> None:
    client = await proxy(gateway_config())
    slow = leaf("fast:stall_ms=3000", request_timeout=200)
    alone = await post(client, json.dumps(slow))
    assert alone.status == 408
    err = (await alone.json())["error"]
    assert (err["type"], err["code"]) == ("timeout_error", "request_timeout")
    resp = await post(client, fallback(slow, leaf("fast:tokens=2", "mock2"),
                                       on_status_codes=[408]))
    assert resp.status == 200
    assert resp.headers["x-portkey-provider"] == "mock2"
    retried = await post(client, fallback(
        {**slow, "retry": {"attempts": 1, "on_status_codes": [408]}}, leaf("fast:tokens=2"),
        on_status_codes=[429]))
    assert retried.status == 408  # retried once, then the fallback does not act on 408
    assert retried.headers["x-portkey-retry-attempt-count"] == "-1"  # retries exhausted


async def test_server_timeouts_stay_504(proxy: Any) -> None:
    config = make_config({"mock": {"type": "mock", "default_model": "fast",
                                   "timeouts": {"first_token": 0.2}}}, default="mock")
    client = await proxy(config)
    resp = await post(client, json.dumps({"provider": "mock", "request_timeout": 60000}),
                      model="mock/fast:stall_ms=3000")
    assert resp.status == 504  # the provider's own first_token ran out first
    assert (await resp.json())["error"]["code"] == "upstream_timeout"


async def test_onellm_fallback_models_and_retries_through_the_openai_sdk(
        proxy: Any, upstream: Any, access_log: Any) -> None:
    upstream.content_type = "application/json"
    upstream.body = json.dumps({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test",
        "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}}],
        "stop_reason": "tool_use", "usage": {"input_tokens": 5, "output_tokens": 2}}).encode()
    config = make_config({"mock": {"type": "mock", "default_model": "fast"},
                          "claude": {"type": "anthropic", "base_url": upstream.url,
                                     "api_key": "k"}}, default="mock")
    client = openai_sdk(await proxy(config))
    raw = await client.chat.completions.with_raw_response.create(
        model="mock/fast:status=503", messages=USER, stream=False,
        extra_body={"fallback_models": ["claude/claude-test"], "retries": 1})
    done = raw.parse()
    assert raw.headers["x-portkey-provider"] == "claude"
    assert raw.headers["x-portkey-retry-attempt-count"] == "0"  # claude's own retries
    assert access_log()[-1]["attempts"] == 3  # 1 retry + 1 fallback
    assert done.choices[0].finish_reason == "tool_calls"
    assert done.choices[0].message.tool_calls[0].function.arguments == '{"a":1}'
    sent = upstream.requests[0].json()
    assert sent["model"] == "claude-test"
    assert "fallback_models" not in sent and "retries" not in sent


async def test_onellm_retries_are_the_primarys_alone(proxy: Any, access_log: Any) -> None:
    # OneLLM: `retries` more tries of the primary, then each fallback model once.
    config = make_config({"mock": {"type": "mock", "default_model": "fast"},
                          "mock2": {"type": "mock", "default_model": "fast"}}, default="mock")
    client = await proxy(config)
    resp = await client.post("/v1/chat/completions", json={
        "model": "mock/fast:status=503", "messages": USER, "retries": 2,
        "fallback_models": ["mock2/fast:status=503", "mock2/fast:tokens=2"]})
    assert resp.status == 200
    assert resp.headers["x-portkey-last-used-option-index"] == "config.targets[2]"
    # 3 tries of the primary, 1 of the first fallback, 1 of the second
    assert access_log()[-1]["attempts"] == 5
    assert resp.headers["x-portkey-retry-attempt-count"] == "0"  # the second fallback's


async def test_portkey_sdk_streams_through_a_fallback_config(proxy: Any) -> None:
    from portkey_ai import AsyncPortkey

    client = await proxy(gateway_config())
    portkey = AsyncPortkey(base_url=str(client.make_url("/v1")), api_key="pk-local",
                           config={"strategy": {"mode": "fallback"},
                                   "targets": [leaf("fast:status=500"),
                                               leaf("fast:tokens=6", "mock2")]},
                           max_retries=0)
    stream = await portkey.chat.completions.create(model="ignored", messages=USER, stream=True)
    text = ""
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
    assert text == mock_text(6)
    scoped = portkey.with_options(config={"provider": "mock2",
                                          "override_params": {"model": "fast:tokens=2"}})
    done = await scoped.chat.completions.create(model="x", messages=USER)
    assert done.choices[0].message.content == mock_text(2)


def keepalive_config() -> Any:
    return make_config({"mock": {"type": "mock", "default_model": "fast",
                                 "timeouts": {"first_token": 1.0}}},
                       default="mock", server={"keepalive_interval": 0.1})


async def test_a_client_gone_after_keepalives_is_logged_as_the_200_it_got(
        proxy: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="streamproxy.access")
    client = await proxy(keepalive_config())
    resp = await post(client, model="mock/fast:tokens=3,stall_ms=800")
    assert resp.status == 200
    assert await resp.content.readuntil(b"\n\n") == b": keep-alive\n\n"
    resp.close()  # gone while the first token is late, after the 200 went out
    for _ in range(200):
        lines = [orjson.loads(r.getMessage()) for r in caplog.records
                 if r.name == "streamproxy.access"]
        if lines:
            break
        await asyncio.sleep(0.01)
    [line] = lines
    assert (line["status"], line["client_disconnected"]) == (200, True)


async def test_keepalives_while_the_first_token_is_late(proxy: Any) -> None:
    client = await proxy(keepalive_config())
    resp = await post(client, model="mock/fast:tokens=3,stall_ms=450")
    body = await resp.read()
    assert resp.status == 200
    assert body.startswith(b": keep-alive\n\n")
    assert body.count(b": keep-alive\n\n") >= 3
    c = collect(sse_chunks(body))
    assert c.content == mock_text(3) and c.done


async def test_failure_after_a_keepalive_is_an_error_frame(proxy: Any) -> None:
    client = await proxy(keepalive_config())
    resp = await post(client, model="mock/fast:stall_ms=3000")
    assert resp.status == 200  # committed by the keep-alives
    c = collect(sse_chunks(await resp.read()))
    assert c.error is not None and c.error["code"] == "upstream_timeout" and not c.done


async def test_a_keepalive_head_names_the_target_when_the_plan_has_one(proxy: Any) -> None:
    """The keep-alive comments commit the 200 before any target answered: its head had the
    trace id alone, where an answer names x-portkey-provider and the option that answered.
    When the plan has one target (a cache hit aside, nothing else can answer), they are
    known and sent, as the answer without keep-alives sends them, and its retry count when
    it has no retries (0, final). A fallback across providers knows none."""
    mock = {"type": "mock", "default_model": "fast", "timeouts": {"first_token": 1.0}}
    client = await proxy(make_config({"mock": mock, "mock2": mock}, default="mock",
                                     server={"keepalive_interval": 0.1}))
    fast = await post(client, model="mock/fast:tokens=2")
    await fast.read()
    late = await post(client, model="mock/fast:tokens=2,stall_ms=300")
    assert await late.content.readuntil(b"\n\n") == b": keep-alive\n\n"
    for name in ("x-portkey-provider", "x-portkey-last-used-option-index",
                 "x-portkey-retry-attempt-count"):  # (no retries: 0 is final)
        assert late.headers.get(name) == fast.headers[name], name
    await late.read()
    retried = json.dumps(leaf("fast:tokens=2,stall_ms=300", retry={"attempts": 2}))
    resp = await post(client, retried)  # (a retry may follow: no count yet)
    assert await resp.content.readuntil(b"\n\n") == b": keep-alive\n\n"
    assert resp.headers.get("x-portkey-provider") == "mock"
    assert resp.headers.get("x-portkey-last-used-option-index") == "config"
    assert "x-portkey-retry-attempt-count" not in resp.headers
    await resp.read()
    one = fallback(leaf("fast:tokens=2,stall_ms=300"), leaf("fast:tokens=2"))
    resp = await post(client, one)  # (two targets of one provider: the provider is known)
    assert await resp.content.readuntil(b"\n\n") == b": keep-alive\n\n"
    assert resp.headers.get("x-portkey-provider") == "mock"
    assert "x-portkey-last-used-option-index" not in resp.headers
    assert "x-portkey-retry-attempt-count" not in resp.headers
    await resp.read()
    two = fallback(leaf("fast:tokens=2,stall_ms=300"), leaf("fast:tokens=2", "mock2"))
    resp = await post(client, two)
    assert await resp.content.readuntil(b"\n\n") == b": keep-alive\n\n"
    assert "x-portkey-provider" not in resp.headers
    await resp.read()


def anthropic_event(obj: dict[str, Any]) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (obj["type"].encode(), orjson.dumps(obj))


@pytest.mark.parametrize("upstream_client", ["native", "aiohttp"])  # piped, pulled relay
async def test_keepalives_while_a_committed_stream_is_quiet_but_for_pings(
        upstream_client: str, proxy: Any, upstream: Any, monkeypatch: Any) -> None:
    """Claude pauses mid-answer (a long tool input is sent a whole key at a time) with only
    `ping` events: the client, past its first token, got nothing either, and a load balancer's
    idle timeout cut a stream the upstream kept alive. An upstream read that gives the client
    nothing sends a comment once `keepalive_interval` passed since the last one."""
    monkeypatch.setenv(CLIENT_ENV, upstream_client)
    delta = [anthropic_event({"type": "content_block_delta", "index": 0,
                              "delta": {"type": "text_delta", "text": t}}) for t in ("a", "b")]
    upstream.pieces = [
        anthropic_event({"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [],
            "stop_reason": None, "usage": {"input_tokens": 3, "output_tokens": 1}}}),
        anthropic_event({"type": "content_block_start", "index": 0,
                         "content_block": {"type": "text", "text": ""}}),
        delta[0], *[anthropic_event({"type": "ping"})] * 8, delta[1],
        anthropic_event({"type": "content_block_stop", "index": 0}),
        anthropic_event({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                         "usage": {"output_tokens": 2}}),
        anthropic_event({"type": "message_stop"})]
    upstream.piece_delay = 0.1
    client = await proxy(make_config(
        {"claude": {"type": "anthropic", "base_url": upstream.url, "api_key": "k",
                    "default_model": "m"}}, default="claude", server={"keepalive_interval": 0.2}))
    resp = await post(client)
    body = await resp.read()
    assert resp.status == 200
    quiet = body[body.index(b'"content":"a"'):body.index(b'"content":"b"')]
    assert 1 <= quiet.count(b"\n\n: keep-alive\n\n") <= 8  # (at most one a read)
    c = collect(sse_chunks(body))
    assert c.content == "ab" and c.done
    stream = await openai_sdk(client).chat.completions.create(  # (comments: nothing to it)
        model="m", messages=USER, stream=True)
    assert "".join([ch.choices[0].delta.content or "" async for ch in stream
                    if ch.choices]) == "ab"


async def test_no_keepalive_when_the_first_token_is_fast(proxy: Any) -> None:
    client = await proxy(keepalive_config())
    resp = await post(client, model="mock/fast:tokens=2")
    body = await resp.read()
    assert not body.startswith(b":")
    assert resp.headers["x-portkey-provider"] == "mock"


# -- routing by header: x-portkey-provider with model ids and OneLLM's fallback_models ----------

COMPLETION = json.dumps({
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()


def openai_pair(upstream: Any, default: str = "mock", **sections: Any) -> Any:
    """Two OpenAI-type providers on one fake upstream, told apart by their path, and the
    mock."""
    upstream.content_type = "application/json"
    upstream.body = COMPLETION
    return make_config({
        "mock": {"type": "mock", "default_model": "fast"},
        "e1": {"type": "openai", "base_url": f"{upstream.url}/e1", "default_model": "m"},
        "e2": {"type": "openai", "base_url": f"{upstream.url}/e2", "default_model": "m"},
    }, default=default, **sections)


def served(upstream: Any) -> tuple[str, str]:
    """(provider path, model) of the last upstream request."""
    last = upstream.requests[-1]
    return last.path.split("/")[1], last.json()["model"]


@pytest.mark.parametrize("model", ["@cf/meta/llama-3.1-8b-instruct", "@hf/thebloke/x-awq"])
async def test_an_at_model_id_goes_verbatim_to_the_provider_the_header_names(
        proxy: Any, upstream: Any, model: str) -> None:
    client = await proxy(openai_pair(upstream))
    resp = await post(client, stream=False, model=model, headers={"x-portkey-provider": "e2"})
    assert resp.status == 200
    assert served(upstream) == ("e2", model)
    known = await post(client, stream=False, model="@e2/m2", headers={"x-portkey-provider": "e2"})
    assert known.status == 200 and served(upstream) == ("e2", "m2")
    config = json.dumps({"provider": "e1", "override_params": {"model": model}})
    assert (await post(client, config, stream=False)).status == 200
    assert served(upstream) == ("e1", model)
    unnamed = await post(client, stream=False, model=model)  # no header: `cf` must be a provider
    assert unnamed.status == 400
    assert (await unnamed.json())["error"]["code"] == "unknown_provider"


async def test_fallback_models_keep_the_primary_on_the_provider_the_header_names(
        proxy: Any, upstream: Any) -> None:
    client = await proxy(openai_pair(upstream, default="e1"))
    resp = await post(client, stream=False, model="primary", fallback_models=["e1/other"],
                      headers={"x-portkey-provider": "e2"})
    assert resp.status == 200
    assert resp.headers["x-portkey-provider"] == "e2"
    assert served(upstream) == ("e2", "primary")
    # The primary fails: a fallback with a provider prefix goes there, one without it to the
    # header's provider (not to the default).
    resp = await post(client, stream=False, model="fast:status=500",
                      fallback_models=["fast:tokens=2"], headers={"x-portkey-provider": "mock"})
    assert resp.status == 200
    assert resp.headers["x-portkey-provider"] == "mock"
    assert (await resp.json())["choices"][0]["message"]["content"] == mock_text(2)
    resp = await post(client, stream=False, model="fast:status=500",
                      fallback_models=["e1/other"], headers={"x-portkey-provider": "mock"})
    assert resp.headers["x-portkey-provider"] == "e1" and served(upstream) == ("e1", "other")
    unknown = await post(client, model="primary", fallback_models=["e1/other"],
                         headers={"x-portkey-provider": "nope"})
    assert unknown.status == 400
    assert (await unknown.json())["error"]["param"] == "x-portkey-provider"



# -- the portkey-ai SDK's client options, sent as headers ----------------------------------------

async def test_portkey_sdk_virtual_key_picks_the_provider_and_its_secret(
        proxy: Any, upstream: Any, monkeypatch: Any) -> None:
    from portkey_ai import AsyncPortkey

    monkeypatch.setenv("VK_E2", "sk-e2-secret")
    config = openai_pair(upstream, virtual_keys={"vk-e2": {"provider": "e2",
                                                            "api_key_env": "VK_E2"}})
    client = await proxy(config)
    portkey = AsyncPortkey(base_url=str(client.make_url("/v1")), api_key="pk-placeholder",
                           virtual_key="vk-e2", max_retries=0)
    done = await portkey.with_options(trace_id="t-vk").chat.completions.create(
        model="m2", messages=USER, extra_body={"retries": 1})
    assert done.choices[0].message.content == "ok"
    assert served(upstream) == ("e2", "m2")
    sent = {k.lower(): v for k, v in upstream.requests[-1].headers.items()}
    assert sent["authorization"] == "Bearer sk-e2-secret"  # not the client's placeholder
    # A config target that names no provider takes the header's virtual key, as it takes
    # x-portkey-provider; one that names a provider keeps it.
    vk = {"x-portkey-virtual-key": "vk-e2"}
    resp = await post(client, json.dumps({"retry": {"attempts": 1}}), stream=False,
                      headers=vk, model="m3")
    assert resp.status == 200 and served(upstream) == ("e2", "m3")
    resp = await post(client, json.dumps({"provider": "e1"}), stream=False, headers=vk,
                      model="m4")
    assert resp.status == 200 and served(upstream) == ("e1", "m4")
    resp = await post(client, stream=False, headers=vk, model="m5",
                      fallback_models=["e1/m6"])
    assert resp.status == 200 and served(upstream) == ("e2", "m5")
    unknown = await post(client, stream=False, model="m",
                         headers={"x-portkey-virtual-key": "vk-nope"})
    assert unknown.status == 400
    err = (await unknown.json())["error"]
    assert (err["param"], err["code"]) == ("x-portkey-virtual-key", "unknown_virtual_key")
    assert "vk-nope" in err["message"]


async def test_portkey_sdk_without_a_model_gets_the_providers_default_model(
        proxy: Any, upstream: Any) -> None:
    # The SDK sends `model: "portkey-default"` when its caller names none, which Portkey's
    # gateway reads as the provider's default; sent on as written, the upstream has no such model.
    from portkey_ai import AsyncPortkey

    client = await proxy(openai_pair(upstream))
    portkey = AsyncPortkey(base_url=str(client.make_url("/v1")), api_key="pk", provider="e1",
                           max_retries=0)
    done = await portkey.chat.completions.create(messages=USER)
    assert done.choices[0].message.content == "ok"
    assert served(upstream) == ("e1", "m")


async def test_a_parents_key_never_goes_to_a_target_naming_another_provider(
        proxy: Any, upstream: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("VK_E2", "sk-e2-secret")
    client = await proxy(openai_pair(upstream, virtual_keys={"vk-e2": {"provider": "e2",
                                                                        "api_key_env": "VK_E2"}}))

    async def key_sent(config: dict[str, Any]) -> tuple[str, str]:
        resp = await post(client, json.dumps(config), stream=False,
                          headers={"authorization": "Bearer sk-client"})
        assert resp.status == 200
        sent = {k.lower(): v for k, v in upstream.requests[-1].headers.items()}
        return served(upstream)[0], sent["authorization"]

    def under(parent: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
        return {**parent, "strategy": {"mode": "fallback"}, "targets": [child]}

    # Another provider under a virtual key, or under a provider given its api_key: the
    # parent's secret was sent to it (e2's to e1, e1's to e2).
    assert await key_sent(under({"virtual_key": "vk-e2"}, {"provider": "e1"})) == \
        ("e1", "Bearer sk-client")
    assert await key_sent(under({"provider": "e2", "api_key": "sk-e2"}, {"provider": "e1"})) \
        == ("e1", "Bearer sk-client")
    assert await key_sent(under({"provider": "e1", "api_key": "sk-e1"},
                                {"virtual_key": "vk-e2"})) == ("e2", "Bearer sk-e2-secret")
    # The same provider, or none named, keeps the key it inherits; so does any provider under
    # a key given with none.
    assert await key_sent(under({"api_key": "sk-any"}, {"provider": "e1"})) == \
        ("e1", "Bearer sk-any")
    assert await key_sent(under({"provider": "e2", "api_key": "sk-e2"}, {"provider": "@e2"})) \
        == ("e2", "Bearer sk-e2")
    assert await key_sent(under({"virtual_key": "vk-e2"}, {"retry": {"attempts": 1}})) == \
        ("e2", "Bearer sk-e2-secret")


async def test_a_virtual_key_never_goes_to_another_provider_named_beside_it(
        proxy: Any, upstream: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("VK_E2", "sk-e2-secret")
    vkeys = {"vk-e2": {"provider": "e2", "api_key_env": "VK_E2"}}
    client = await proxy(openai_pair(upstream, virtual_keys=vkeys))
    # One target with both: e2's secret was sent to e1 (a 200 from e1 with it).
    for config in ({"virtual_key": "vk-e2", "provider": "e1"},
                   {"strategy": {"mode": "fallback"}, "virtual_key": "vk-e2",
                    "targets": [{"provider": "@e1", "virtual_key": "vk-e2"}]}):
        resp = await post(client, json.dumps(config), stream=False)
        assert resp.status == 400
        err = (await resp.json())["error"]
        assert err["code"] == "invalid_config" and err["param"].endswith(".provider")
        assert "sk-e2-secret" not in json.dumps(err)
    assert upstream.requests == []
    resp = await post(client, json.dumps({"virtual_key": "vk-e2", "provider": "@e2"}),
                      stream=False)
    assert resp.status == 200 and served(upstream)[0] == "e2"
    named = openai_pair(upstream, virtual_keys=vkeys,
                        configs={"c": {"virtual_key": "vk-e2", "provider": "e1"}})
    with pytest.raises(ConfigError, match=r"config\.provider"):
        load_settings(named)


async def test_custom_host_header_under_the_same_allow_list(proxy: Any, upstream: Any) -> None:
    from portkey_ai import AsyncPortkey

    host = upstream.url.split("://")[1]
    client = await proxy(openai_pair(upstream, allowed_custom_hosts=[host]))
    portkey = AsyncPortkey(base_url=str(client.make_url("/v1")), api_key="pk", provider="e1",
                           custom_host=f"{upstream.url}/custom/v1", max_retries=0)
    done = await portkey.chat.completions.create(model="m", messages=USER)
    assert done.choices[0].message.content == "ok"
    assert upstream.requests[-1].path == "/custom/v1/chat/completions"
    config = json.dumps({"provider": "e2", "custom_host": "http://169.254.169.254"})
    resp = await post(client, config, stream=False,
                      headers={"x-portkey-custom-host": f"{upstream.url}/header"})
    assert resp.status == 200  # the header wins over the config's, as in Portkey
    assert upstream.requests[-1].path == "/header/chat/completions"
    denied = await post(client, stream=False, model="e1/m",
                        headers={"x-portkey-custom-host": "http://169.254.169.254/latest"})
    assert denied.status == 400
    err = (await denied.json())["error"]
    assert (err["param"], err["code"]) == ("x-portkey-custom-host", "custom_host_not_allowed")


async def test_a_custom_host_with_a_query_or_fragment_is_refused(proxy: Any,
                                                                 upstream: Any) -> None:
    """`https://allowed.host?x` matched its allowed host, and the provider's path went after
    the '?' (the request reached the host's root, the path in its query)."""
    host = upstream.url.split("://")[1]
    client = await proxy(openai_pair(upstream, allowed_custom_hosts=[host]))
    for bad in (f"{upstream.url}?x", f"{upstream.url}/v1#f", f"{upstream.url}/v1?",
                f"{upstream.url}/v\t1"):
        header = await post(client, stream=False, model="e1/m",
                            headers={"x-portkey-custom-host": bad})
        config = await post(client, json.dumps({"strategy": {"mode": "fallback"}, "targets": [
            {"provider": "e1", "custom_host": bad}]}), stream=False)
        for resp, param in ((header, "x-portkey-custom-host"),
                            (config, "config.targets[0].custom_host")):
            assert resp.status == 400
            err = (await resp.json())["error"]
            assert err["param"] == param and "no query or fragment" in err["message"]
    assert upstream.requests == []
    named = openai_pair(upstream, allowed_custom_hosts=[host],
                        configs={"c": {"provider": "e1", "custom_host": f"{upstream.url}?x"}})
    with pytest.raises(ConfigError, match=r"configs\.c.*custom_host.*no query or fragment"):
        load_settings(named)


def test_an_allowed_host_entry_that_no_url_can_match_is_a_config_error() -> None:
    # (a path, query or bad port in a scheme-less entry loaded, then matched nothing)
    for bad in ("allowed.host:0", "allowed.host:99999", "allowed.host:", "allowed.host/v1",
                "allowed.host?x", "allowed.host#x", "https://allowed.host:0"):
        with pytest.raises(ConfigError, match=r"allowed_custom_hosts\[1\]"):
            load_settings(gateway_config(allowed_custom_hosts=["ok.host", bad]))
    hosts = load_settings(gateway_config(allowed_custom_hosts=[
        "OK.Host:8443", "[::1]:8080", "HTTPS://ok.host/", "u:p@ok.host"])).allowed_hosts
    assert hosts == {"ok.host:8443", "[::1]:8080", "https://ok.host", "u:p@ok.host"}


@pytest.mark.parametrize(("entry", "url", "allowed"), [
    ("https://llm.example.com", "https://llm.example.com:443/v1", True),
    ("https://llm.example.com:443", "https://llm.example.com/v1", True),
    ("http://llm.example.com:80", "http://llm.example.com", True),
    ("llm.example.com", "https://llm.example.com:443", True),
    ("llm.example.com", "http://llm.example.com:80/v1", True),
    ("llm.example.com:443", "https://llm.example.com/v1", True),
    ("llm.example.com.", "https://llm.example.com/v1", True),
    ("https://llm.example.com", "https://LLM.example.com.:443/v1", True),
    # (a port other than the scheme's default is another server)
    ("https://llm.example.com", "https://llm.example.com:8443", False),
    ("llm.example.com", "http://llm.example.com:443", False),
    ("llm.example.com:443", "http://llm.example.com", False),
    ("https://llm.example.com:443", "http://llm.example.com:443", False),
    ("llm.example.com", "https://llm.example.com.evil.com", False),
])
def test_an_allowed_host_matches_its_url_written_with_the_default_port_or_a_root_dot(
        entry: str, url: str, allowed: bool) -> None:
    """`https://h:443` is `https://h`, and `h.` (a fully qualified name) is `h`: the same
    server. An entry written one way refused a custom_host written the other (400
    custom_host_not_allowed, a config error for a named config)."""
    settings = load_settings(gateway_config(allowed_custom_hosts=[entry]))
    assert _allowed_url(url, settings) is allowed


async def test_an_allowed_host_written_with_its_scheme_allows_that_scheme_alone(
        proxy: Any, upstream: Any) -> None:
    """A scheme-less entry allows http:// and https:// alike, so a client could send the
    gateway's key in clear to an https-only host; an entry written with its scheme (which
    used to match nothing at all) now allows that scheme only."""
    host = upstream.url.split("://")[1]  # (the fake upstream speaks http)
    client = await proxy(openai_pair(upstream, allowed_custom_hosts=[f"HTTP://{host}/"]))
    resp = await post(client, stream=False, model="e1/m",
                      headers={"x-portkey-custom-host": f"{upstream.url}/v1"})
    assert resp.status == 200 and upstream.requests[-1].path == "/v1/chat/completions"
    client = await proxy(openai_pair(upstream, allowed_custom_hosts=[f"https://{host}"]))
    config = json.dumps({"provider": "e1", "custom_host": upstream.url})
    for headers in ({"x-portkey-custom-host": upstream.url}, {"x-portkey-config": config}):
        resp = await post(client, stream=False, model="e1/m", headers=headers)
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "custom_host_not_allowed"
    assert len(upstream.requests) == 1


@pytest.mark.parametrize("custom_host", ["https://[::1", "https://llm\u2100.example.com",
                                         "ftp://llm.example.com/v1", "ws://llm.example.com"])
async def test_a_custom_host_that_is_no_url_is_refused(proxy: Any, upstream: Any,
                                                       custom_host: str) -> None:
    # urlsplit's ValueError (an unclosed '[', a host NFKC would change) was a 500, and so was
    # the upstream client's for an allowed host under a scheme other than HTTP's.
    client = await proxy(openai_pair(upstream, allowed_custom_hosts=["llm.example.com"]))
    config = json.dumps({"provider": "e1", "custom_host": custom_host})
    for headers in ({"x-portkey-custom-host": custom_host.encode().decode("latin-1")},
                    {"x-portkey-config": config}):
        resp = await post(client, stream=False, model="e1/m", headers=headers)
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "custom_host_not_allowed"
    assert not upstream.requests


async def test_forward_headers_header(proxy: Any, upstream: Any) -> None:
    client = await proxy(openai_pair(upstream))
    listed = {"x-portkey-forward-headers": "X-Team, x-trace ,transfer-encoding,x-portkey-api-key",
              "x-team": "blue", "x-trace": "t1", "x-other": "no",
              "x-portkey-api-key": "proxy-secret"}
    resp = await post(client, stream=False, model="e1/m", headers=listed)
    assert resp.status == 200
    sent = {k.lower(): v for k, v in upstream.requests[-1].headers.items()}
    assert (sent["x-team"], sent["x-trace"]) == ("blue", "t1")
    assert "x-other" not in sent and "x-portkey-api-key" not in sent
    assert "transfer-encoding" not in sent
    config = json.dumps({"provider": "e2", "forward_headers": ["x-other"]})
    resp = await post(client, config, stream=False, headers=listed)
    sent = {k.lower(): v for k, v in upstream.requests[-1].headers.items()}
    assert "x-team" in sent and "x-other" not in sent  # the header's list wins, as in Portkey


async def test_an_unconfigured_onellm_prefix_is_named_with_what_to_configure(
        proxy: Any, upstream: Any) -> None:
    """With no default provider, `google/gemini-2.5-flash` (OneLLM's name for Gemini) was "No
    provider given … prefix the model with a provider name" — it has one — and a fallback
    model's was blamed on the client's valid `model`."""
    client = await proxy(openai_pair(upstream, default=""))
    resp = await post(client, stream=False, model="google/gemini-2.5-flash")
    assert resp.status == 400
    err = (await resp.json())["error"]
    assert (err["param"], err["code"]) == ("model", "unknown_provider")
    assert err["message"] == ("Unknown provider 'google'. Configured providers: mock, e1, e2. "
                              "To serve 'google/…' models, configure a provider named 'google' "
                              "(type gemini).")
    resp = await post(client, stream=False, model="e1/m",
                      fallback_models=["e2/m", "anthropic/claude-haiku-4-5"])
    assert resp.status == 400 and not upstream.requests
    err = (await resp.json())["error"]
    assert err["param"] == "fallback_models[1]"
    assert "'anthropic'" in err["message"] and "(type anthropic)" in err["message"]
    for model in ("meta-llama/Llama-3", "@cf/x"):  # no type: no hint
        resp = await post(client, stream=False, model="e1/m", fallback_models=[model])
        err = (await resp.json())["error"]
        assert err["param"] == "fallback_models[0]" and "configure" not in err["message"]
    # With a default provider, such a model is that provider's model id, as before.
    client = await proxy(openai_pair(upstream, default="e1"))
    resp = await post(client, stream=False, model="google/gemma-3-27b-it")
    assert resp.status == 200 and served(upstream) == ("e1", "google/gemma-3-27b-it")


async def test_fallback_models_keep_an_unprefixed_model_on_the_default_config(
        proxy: Any, upstream: Any) -> None:
    """A model naming no provider runs default_config alone; with fallback_models it went to
    the default provider (past the config's targets), or was a 400 with none."""
    for default in ("", "e1"):
        client = await proxy(openai_pair(upstream, default=default,
                                         configs={"c": {"provider": "e2"}},
                                         default_config="c"))
        resp = await post(client, stream=False, model="x", fallback_models=["mock/fast", "y"])
        assert resp.status == 200 and served(upstream) == ("e2", "x")
        assert resp.headers["x-portkey-last-used-option-index"] == "config.targets[0]"
        resp = await post(client, stream=False, model="mock/fast:status=500",
                          fallback_models=["y"])
        assert resp.status == 200 and served(upstream) == ("e2", "y")  # the config, model y
        assert resp.headers["x-portkey-last-used-option-index"] == "config.targets[1]"


async def test_onellm_fallback_config_is_consumed_and_max_fallbacks_honoured(
        proxy: Any, upstream: Any) -> None:
    client = await proxy(openai_pair(upstream))
    for extra in ({"fallback_config": {"max_fallbacks": 1, "log_fallbacks": True}},
                  {"fallback_models": [], "retries": 0}):
        resp = await post(client, stream=False, model="e1/m", **extra)
        assert resp.status == 200
        sent = upstream.requests[-1].json()
        assert not set(sent) & {"fallback_config", "fallback_models", "retries"}, sent
    chain = ["mock/fast:status=503", "e2/m"]
    capped = await post(client, stream=False, model="mock/fast:status=500",
                        fallback_models=chain, fallback_config={"max_fallbacks": 1})
    assert capped.status == 503  # the primary and one fallback, as OneLLM tries them
    assert capped.headers["x-portkey-last-used-option-index"] == "config.targets[1]"
    full = await post(client, stream=False, model="mock/fast:status=500", fallback_models=chain)
    assert full.status == 200 and served(upstream) == ("e2", "m")
    none = await post(client, stream=False, model="mock/fast:status=500",
                      fallback_models=chain, fallback_config={"max_fallbacks": 0})
    assert none.status == 500
    for bad, param in (({"max_fallbacks": -1}, "fallback_config.max_fallbacks"),
                       ({"retriable_errors": ["APIError"]}, "fallback_config.retriable_errors"),
                       ([1], "fallback_config")):
        resp = await post(client, stream=False, model="e1/m", fallback_config=bad)
        assert resp.status == 400
        assert (await resp.json())["error"]["param"] == param


async def test_a_config_model_without_a_prefix_is_for_the_provider_the_header_names(
        proxy: Any, upstream: Any) -> None:
    # Portkey's SDK sends provider= as the header and a config's override_params.model as the
    # model to ask it for; a model with a provider prefix still routes by its prefix.
    client = await proxy(openai_pair(upstream, default="mock"))
    for model, where in (("m7", ("e2", "m7")), ("e1/m8", ("e1", "m8")),
                         ("@e1/m9", ("e1", "m9")), ("org/m10", ("e2", "org/m10"))):
        resp = await post(client, stream=False, headers={"x-portkey-provider": "e2"},
                          config=orjson.dumps({"override_params": {"model": model}}).decode())
        assert resp.status == 200, await resp.text()
        assert served(upstream) == where
    unknown = await post(client, headers={"x-portkey-provider": "e2"},
                         config='{"override_params": {"model": "@nope/m"}}')
    assert unknown.status == 400


async def test_a_provider_named_by_header_or_prefix_wins_over_the_default_config(
        proxy: Any, upstream: Any) -> None:
    """README, Routing a request: default_config comes after the headers and the model prefix,
    which name the provider themselves; only a request naming none runs it."""
    client = await proxy(openai_pair(upstream, configs={"c": {"provider": "e2"}},
                                     default_config="c"))
    resp = await post(client, stream=False, model="m", headers={"x-portkey-provider": "e1"})
    assert resp.status == 200 and served(upstream) == ("e1", "m")
    resp = await post(client, stream=False, model="e1/m")
    assert resp.status == 200 and served(upstream) == ("e1", "m")
    resp = await post(client, stream=False, model="m")
    assert resp.status == 200 and served(upstream) == ("e2", "m")
    assert resp.headers["x-portkey-last-used-option-index"] == "config"


# -- Portkey's Model Catalog: `@name` addresses a virtual key ------------------------------------

def catalog_pair(upstream: Any, monkeypatch: Any, **sections: Any) -> Any:
    """openai_pair with the virtual key vk-e2 (e2's secret) and one named e1 (a provider's
    name: the provider wins)."""
    monkeypatch.setenv("VK_E2", "sk-e2-secret")
    vkeys = {"vk-e2": {"provider": "e2", "api_key_env": "VK_E2"},
             "e1": {"provider": "e2", "api_key": "sk-shadowed"}}
    return openai_pair(upstream, virtual_keys=vkeys, **sections)


def key_sent(upstream: Any) -> tuple[str, str, str]:
    """(provider path, model, Authorization) of the last upstream request."""
    sent = {k.lower(): v for k, v in upstream.requests[-1].headers.items()}
    return (*served(upstream), sent.get("authorization", ""))


async def test_an_at_name_selects_the_virtual_key_of_that_name(
        proxy: Any, upstream: Any, monkeypatch: Any) -> None:
    # The catalog's `@openai-prod/gpt-4o` and x-portkey-provider `@openai-prod` were a 400
    # 'Unknown provider' for a name under virtual_keys.
    client = await proxy(catalog_pair(
        upstream, monkeypatch, configs={"c": {"provider": "@vk-e2"},
                                        "c2": {"override_params": {"model": "@vk-e2/m9"}}},
        routes={"smart": "c", "smarter": "c2"}))
    mine = {"authorization": "Bearer sk-client"}
    secret = "Bearer sk-e2-secret"

    async def sent(config: str | None = None, headers: dict[str, str] | None = None,
                   **body: Any) -> tuple[str, str, str]:
        resp = await post(client, config, stream=False, headers={**mine, **(headers or {})},
                          **body)
        assert resp.status == 200, await resp.text()
        return key_sent(upstream)

    assert await sent(model="@vk-e2/m1") == ("e2", "m1", secret)
    at_vk = {"x-portkey-provider": "@vk-e2"}
    assert await sent(headers=at_vk, model="m2") == ("e2", "m2", secret)
    assert await sent(headers=at_vk, model="@vk-e2/m3") == ("e2", "m3", secret)
    assert await sent(headers=at_vk, model="m4", retries=1) == ("e2", "m4", secret)
    # fallback_models: the primary fails (the mock's 500), the fallback is the key's
    assert await sent(model="fast:status=500", fallback_models=["@vk-e2/m5"]) == (
        "e2", "m5", secret)
    assert await sent(model="@vk-e2/m6", fallback_models=["e1/x"]) == ("e2", "m6", secret)
    assert await sent(headers={"x-portkey-provider": "mock"}, model="fast:status=500",
                      fallback_models=["@vk-e2/m7"]) == ("e2", "m7", secret)
    # a config target's provider or override model, inline or under routes:
    assert await sent(json.dumps({"provider": "@vk-e2", "override_params": {"model": "m8"}})) \
        == ("e2", "m8", secret)
    assert await sent(json.dumps({"override_params": {"model": "@vk-e2/m9"}})) == (
        "e2", "m9", secret)
    assert await sent(json.dumps({"retry": {"attempts": 1}}), headers=at_vk, model="m10") == (
        "e2", "m10", secret)
    assert await sent(model="smart") == ("e2", "smart", secret)
    assert await sent(model="smarter") == ("e2", "m9", secret)
    # A provider of the name wins; the catalog's form needs its `@`.
    assert await sent(model="@e1/m11") == ("e1", "m11", "Bearer sk-client")
    assert await sent(headers={"x-portkey-provider": "@e1"}, model="m12") == (
        "e1", "m12", "Bearer sk-client")
    bare = await post(client, stream=False, headers={"x-portkey-provider": "vk-e2"}, model="m")
    assert bare.status == 400 and (await bare.json())["error"]["param"] == "x-portkey-provider"


async def test_an_at_name_never_sends_a_virtual_keys_secret_elsewhere(
        proxy: Any, upstream: Any, monkeypatch: Any) -> None:
    client = await proxy(catalog_pair(upstream, monkeypatch))
    mine = {"authorization": "Bearer sk-client"}

    async def sent(config: Any = None, headers: dict[str, str] | None = None,
                   **body: Any) -> tuple[str, str, str]:
        resp = await post(client, None if config is None else json.dumps(config),
                          stream=False, headers={**mine, **(headers or {})}, **body)
        assert resp.status == 200, await resp.text()
        return key_sent(upstream)

    # Another provider named beside the `@name` (header, target, parent) keeps its own key:
    # the `@name/` model is its model id there, as any other prefix.
    assert await sent(headers={"x-portkey-provider": "e1"}, model="@vk-e2/m") == (
        "e1", "@vk-e2/m", "Bearer sk-client")
    assert await sent({"provider": "e1", "override_params": {"model": "@vk-e2/m"}}) == (
        "e1", "@vk-e2/m", "Bearer sk-client")
    assert await sent({"provider": "@vk-e2", "strategy": {"mode": "fallback"},
                       "targets": [{"provider": "e1"}]}, model="m") == (
        "e1", "m", "Bearer sk-client")
    assert await sent({"provider": "@vk-e2", "strategy": {"mode": "fallback"},
                       "targets": [{"override_params": {"model": "m2"}}]}) == (
        "e2", "m2", "Bearer sk-e2-secret")  # (the parent's provider is the key's)
    # Two keys, or a custom host, beside it: refused before anything is sent.
    for config, headers in (
            ({"provider": "@vk-e2", "virtual_key": "e1"}, {}),
            ({"provider": "@e1", "virtual_key": "vk-e2"}, {}),
            ({"provider": "@vk-e2", "custom_host": "https://evil.example"}, {}),
            (None, {"x-portkey-provider": "@vk-e2",
                    "x-portkey-custom-host": "https://evil.example"})):
        before = len(upstream.requests)
        resp = await post(client, None if config is None else json.dumps(config),
                          stream=False, headers={**mine, **headers}, model="m")
        assert resp.status == 400, config
        assert "sk-e2-secret" not in await resp.text()
        assert len(upstream.requests) == before
    # The same key named twice is one key.
    assert await sent({"provider": "@vk-e2", "virtual_key": "vk-e2"}, model="m3") == (
        "e2", "m3", "Bearer sk-e2-secret")


def test_a_named_config_may_name_a_virtual_key_as_its_provider(
        upstream: Any, monkeypatch: Any) -> None:
    assert load_settings(catalog_pair(upstream, monkeypatch,
                                      configs={"c": {"provider": "@vk-e2"}})).configs
    for target in ({"provider": "@vk-e2", "virtual_key": "e1"}, {"provider": "vk-e2"}):
        with pytest.raises(ConfigError, match=r"config\.provider"):
            load_settings(catalog_pair(upstream, monkeypatch, configs={"c": target}))


@pytest.mark.parametrize("header", [{"x-portkey-virtual-key": "vk-e2"},
                                    {"x-portkey-provider": "@vk-e2"}])
async def test_a_config_model_without_a_prefix_is_for_the_virtual_key_the_header_names(
        proxy: Any, upstream: Any, monkeypatch: Any, header: dict[str, str]) -> None:
    # The SDK's virtual_key= (or provider="@vk-e2") with a config's override_params.model:
    # the model went to the default provider (the mock: its model-not-found, or another
    # provider's answer), not the key's; a prefixed model still routes by its prefix.
    client = await proxy(catalog_pair(upstream, monkeypatch))
    for model, where in (("m7", ("e2", "m7", "Bearer sk-e2-secret")),
                         ("e1/m8", ("e1", "m8", "Bearer sk-client")),
                         ("org/m10", ("e2", "org/m10", "Bearer sk-e2-secret"))):
        resp = await post(client, stream=False, headers={**header,
                                                         "authorization": "Bearer sk-client"},
                          config=orjson.dumps({"override_params": {"model": model}}).decode())
        assert resp.status == 200, await resp.text()
        assert key_sent(upstream) == where


@pytest.mark.parametrize("wire", ["anthropic", "openai"])
async def test_a_targets_stream_options_override_says_whether_the_client_gets_usage(
        proxy: Any, wire: str, caplog: pytest.LogCaptureFixture) -> None:
    """Portkey's `override_params` may set `stream_options` (a client that cannot ask for
    usage itself): the upstream is asked so, and the client gets the usage chunk, translated
    or passed through; an override turning it off leaves it out, and the log still counts."""
    client = await proxy(make_config({"mock": {"type": "mock", "wire": wire,
                                               "default_model": "fast"}}, default="mock"))

    async def usage(client_asks: bool, override: bool) -> Any:
        config = {"provider": "mock", "override_params": {
            "stream_options": {"include_usage": override}}}
        body: dict[str, Any] = {"model": "fast:tokens=3", "stream": True, "messages": USER}
        if client_asks:
            body["stream_options"] = {"include_usage": True}
        resp = await client.post("/v1/chat/completions", json=body, headers={
            "x-portkey-config": json.dumps(config)})
        c = collect(sse_chunks(await resp.read()))
        assert resp.status == 200 and c.done and c.content
        return c.usage

    caplog.set_level(logging.INFO)
    assert (await usage(False, True))["completion_tokens"] == 3
    assert await usage(True, False) is None
    lines = [orjson.loads(r.getMessage()) for r in caplog.records
             if r.name == "streamproxy.access"]
    assert [line["completion_tokens"] for line in lines] == [3, 3]


async def test_a_deeply_nested_condition_is_a_400_not_a_500(proxy: Any) -> None:
    client = await proxy(gateway_config())
    query = '{"$and":[' * 330 + '{"metadata.x":"1"}' + ']}' * 330
    config = ('{"strategy":{"mode":"conditional","conditions":[{"query":' + query
              + ',"then":"a"}],"default":"a"},"targets":[{"name":"a","provider":"mock"}]}')
    resp = await post(client, config, stream=False, headers={"x-portkey-metadata": '{"x":"1"}'})
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "invalid_config"


def _regex_config(pattern: str, field: str = "params.user") -> str:
    return json.dumps({
        "strategy": {"mode": "conditional",
                     "conditions": [{"query": {field: {"$regex": pattern}}, "then": "g"}],
                     "default": "base"},
        "targets": [{"name": "g", **leaf("fast", "mock2")}, {"name": "base", **leaf("fast")}]})


@pytest.mark.parametrize("pattern", ["(a+)+$", "(a|a)*$", "a*a*$"])
async def test_a_clients_backtracking_regex_is_a_400_not_a_stalled_worker(
        proxy: Any, pattern: str) -> None:
    # `(a+)+$` on 22 a's and a b took ~1 s of the event loop (every stream of the worker
    # stalled); on 30, minutes.
    client = await proxy(gateway_config())
    response = await post(client, _regex_config(pattern), user="a" * 22 + "b")
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["param"] == "config.strategy.conditions[0].query.params.user.$regex"
    assert error["code"] == "invalid_config"


async def test_a_clients_regex_reads_no_value_longer_than_its_cap(proxy: Any) -> None:
    # Backtracking is polynomial in the subject's length at best (`.*x` on a 100 kB `user`
    # held the loop for ~25 s), so a longer value never matches a client's pattern.
    client = await proxy(gateway_config())
    config = _regex_config("^gpt|x$")
    short = await post(client, config, user="a" * 100 + "x")
    assert short.headers["x-portkey-provider"] == "mock2"
    long = await post(client, config, user="a" * 100_000 + "x")
    assert long.status == 200 and long.headers["x-portkey-provider"] == "mock"


async def test_a_clients_config_cannot_fan_one_request_out_to_hundreds_upstream(
        proxy: Any, access_log: Any) -> None:
    # 100 failing targets: one request (one count of a rate limit) made 100 upstream requests;
    # a retry on the root, inherited by each of 2,700 `{}`s in a header, ~30,000.
    client = await proxy(gateway_config())
    fanned = await post(client, fallback(*[leaf("fast:status=400")] * 100), stream=False)
    assert fanned.status == 400
    error = (await fanned.json())["error"]
    assert (error["param"], error["code"]) == ("config", "invalid_config")
    assert "61" in error["message"]
    retried = json.dumps({"retry": {"attempts": 10}, "strategy": {"mode": "fallback"},
                          "targets": [leaf("fast:status=400")] * 6})
    assert (await post(client, retried, stream=False)).status == 400  # 66 tries
    drawn = json.dumps({"strategy": {"mode": "loadbalance"}, "targets": [leaf("fast")] * 60})
    assert (await post(client, drawn, stream=False)).status == 400  # resolved, each of them
    # the most OneLLM's fields may ask for (a primary with 10 retries, 50 fallbacks) is served
    most = json.dumps({"strategy": {"mode": "fallback"}, "targets": [
        {**leaf("fast:status=400"), "retry": {"attempts": 10}}, *[leaf("fast:status=400")] * 49,
        leaf("fast")]})
    served = await post(client, most, stream=False)
    assert served.status == 200
    assert access_log()[-1]["attempts"] == 51  # (a 400 is not retried: one try each)


async def test_an_empty_override_model_is_refused_and_null_keeps_the_requests(
        proxy: Any) -> None:
    """override_params {model: ""} answered from the provider's default model, not the one
    the request named; null (unset) keeps the request's."""
    client = await proxy(gateway_config())
    resp = await post(client, json.dumps({"provider": "mock", "override_params": {"model": ""}}),
                      stream=False, model="slow")
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == "config.override_params.model"
    resp = await post(client, json.dumps({"provider": "mock",
                                          "override_params": {"model": None}}),
                      stream=False, model="slow")
    assert resp.status == 200
    assert (await resp.json())["model"] == "slow"


def test_a_named_config_api_key_that_is_not_ascii_fails_at_start() -> None:
    # It loaded, and every request through the target went upstream with the pasted smart
    # quotes as UTF-8 bytes: the provider's 401, no hint.
    named = gateway_config(configs={"c": {"provider": "mock", "api_key": "\u201csk-abc\u201d"}})
    with pytest.raises(ConfigError, match=r"configs\.c.*config\.api_key.*ASCII") as info:
        load_settings(named)
    assert "sk-abc" not in str(info.value)


async def test_a_config_api_key_is_sent_without_the_whitespace_around_it(
        proxy: Any, upstream: Any) -> None:
    """A pasted key's space went upstream (`Bearer  sk-...`: the provider's 401), and one from
    a YAML block scalar (its line end) was refused as a control character, where a provider's
    own api_key is used stripped. Spaces alone are no key: refused, not sent as one."""
    client = await proxy(openai_pair(upstream))
    resp = await post(client, json.dumps({"provider": "e1", "api_key": " sk-own-key\n"}),
                      stream=False)
    assert resp.status == 200
    sent = {k.lower(): v for k, v in upstream.requests[-1].headers.items()}
    assert sent["authorization"] == "Bearer sk-own-key"
    resp = await post(client, json.dumps({"provider": "e1", "api_key": "   "}), stream=False)
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == "config.api_key"


async def test_onellm_fields_over_an_operators_configs_send_one_request_at_most_61_times(
        proxy: Any, upstream: Any, access_log: Any) -> None:
    # Each fallback model ran default_config (or a route's config) whole, and `retries` went
    # on each of its targets: 50 fallbacks over a 6-target default config sent one request
    # (one count of a rate limit) upstream 306 times; the inline config's 61 did not apply.
    wide = {"strategy": {"mode": "fallback"}, "targets": [{"provider": "e1"}] * 6}
    big = {"strategy": {"mode": "fallback"}, "targets": [{"provider": "e1"}] * 70}
    client = await proxy(openai_pair(upstream, configs={"wide": wide, "big": big},
                                     default_config="wide", routes={"alias": "wide"}))
    upstream.status = 503
    asks = [({}, {"fallback_models": ["m"] * 50}),  # the default config, each
            ({"x-portkey-provider": "e2"}, {"fallback_models": ["alias"] * 50}),  # a route's
            ({"x-portkey-config": "wide"}, {"fallback_models": ["alias"] * 50}),
            ({}, {"retries": 10, "fallback_models": ["alias"] * 2})]  # 66 tries, then 12
    upstream.extra_headers = {"retry-after-ms": "1"}  # (retries without backoff's waits)
    for headers, fields in asks:
        sent = len(upstream.requests)
        resp = await post(client, stream=False, model="m", headers=headers, **fields)
        assert resp.status == 503, fields
        assert len(upstream.requests) - sent == 61, (headers, fields)
        assert access_log()[-1]["attempts"] == 61
    # The operator's own config is theirs: it runs whole, the client's additions cut.
    sent = len(upstream.requests)
    resp = await post(client, stream=False, model="m", headers={"x-portkey-config": "big"},
                      fallback_models=["m"])
    assert resp.status == 503 and len(upstream.requests) - sent == 70
    # and a request that fails over within the bound still reaches its answer
    upstream.statuses, upstream.status = [503] * 60, 200
    resp = await post(client, stream=False, model="m", fallback_models=["m"] * 50)
    assert resp.status == 200 and access_log()[-1]["attempts"] == 61
