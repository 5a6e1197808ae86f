"""What a client sees of the upstream's answer besides its content: the provider's rate-limit
headers (and, on an error, OpenAI's x-should-retry) and its request id pass on, streamed and
not, translated or not, on errors too; nothing else of the upstream's head does."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import time
from typing import Any

import openai
import orjson
import pytest
from aiohttp import web

from streamproxy.observe.access_log import ACCESS_LOGGER
from streamproxy.upstream.passed_headers import passed_headers, upstream_request_id
from streamproxy.upstream.response_parser import ResponseHead
from tests.conftest import provider_config
from tests.helpers import make_config, openai_sdk

USER = [{"role": "user", "content": "hi"}]
COMPLETION = orjson.dumps({
    "id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
CHUNKS = (b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
          b'"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"stop"}]}\n\n'
          b"data: [DONE]\n\n")
OPENAI_LIMITS = {"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "59",
                 "x-ratelimit-reset-requests": "1s", "x-ratelimit-limit-tokens": "150000",
                 "x-ratelimit-remaining-tokens": "149990", "x-ratelimit-reset-tokens": "6ms"}
ANTHROPIC_LIMITS = {"anthropic-ratelimit-requests-limit": "50",
                    "anthropic-ratelimit-requests-remaining": "0",
                    "anthropic-ratelimit-requests-reset": "2026-01-01T00:00:07Z"}
# What stays upstream: its cookies, its organization, its timings, its server (and CDN's).
NOT_PASSED = {"set-cookie": "__cf_bm=abc; path=/", "openai-organization": "org-secret",
              "openai-processing-ms": "12", "cf-ray": "8f-SJC", "server": "cloudflare"}


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [orjson.loads(r.getMessage()) for r in caplog.records if r.name == ACCESS_LOGGER.name]


def assert_passed(headers: Any, expected: dict[str, str]) -> None:
    assert {k: headers.get(k) for k in expected} == expected
    # (the upstream's values: our own `Server: streamproxy` is not the upstream's cloudflare)
    assert not {(k.lower(), v) for k, v in headers.items()} & set(NOT_PASSED.items())


@pytest.mark.parametrize("stream", [False, True])
async def test_the_upstreams_rate_limits_reach_the_sdk(proxy: Any, upstream: Any,
                                                      stream: bool) -> None:
    upstream.content_type = "text/event-stream" if stream else "application/json"
    upstream.body = CHUNKS if stream else COMPLETION
    upstream.extra_headers = {**OPENAI_LIMITS, **NOT_PASSED, "x-request-id": "req_upstream",
                              "x-should-retry": "false"}
    client = await proxy(provider_config("openai", upstream.url))
    raw = await openai_sdk(client).chat.completions.with_raw_response.create(
        model="m", messages=USER, stream=stream)
    assert_passed(raw.headers, OPENAI_LIMITS)
    assert raw.headers["x-request-id"] != "req_upstream"  # ours: the trace id
    assert "x-should-retry" not in raw.headers  # an error's alone
    if stream:
        assert [c.choices[0].delta.content async for c in raw.parse()] == ["hi"]
    else:
        assert raw.parse().choices[0].message.content == "hi"


async def test_a_stream_builds_no_header_mapping_of_its_upstream_answer(
        proxy: Any, upstream: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The native client's response keeps its head for the stream's whole life: reading its
    `headers` (a CIMultiDict, built on first use) to pick the rate-limit fields cost every
    open stream ~0.7 KB (the slow-streams bench: 17.0 -> 17.7 KB a stream)."""
    built: list[int] = []
    original = ResponseHead.headers
    monkeypatch.setattr(ResponseHead, "headers", property(
        lambda head: built.append(1) or original.fget(head)))  # type: ignore[attr-defined]
    upstream.content_type = "text/event-stream"
    upstream.body = CHUNKS
    upstream.extra_headers = OPENAI_LIMITS
    client = await proxy(provider_config("openai", upstream.url))
    resp = await client.post("/v1/chat/completions", json={
        "model": "m", "messages": USER, "stream": True})
    assert resp.status == 200 and b"[DONE]" in await resp.read()
    assert_passed(resp.headers, OPENAI_LIMITS)
    assert built == []


@pytest.mark.parametrize("stream", [False, True])
async def test_a_translated_429_keeps_its_rate_limits_and_retry_after(
        proxy: Any, upstream: Any, stream: bool) -> None:
    upstream.status = 429
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps({"type": "error", "error": {"type": "rate_limit_error",
                                                             "message": "slow down"}})
    upstream.extra_headers = {**ANTHROPIC_LIMITS, **NOT_PASSED, "retry-after": "7",
                              "x-should-retry": "true"}
    client = await proxy(provider_config("anthropic", upstream.url))
    with pytest.raises(openai.RateLimitError) as info:
        await openai_sdk(client).chat.completions.create(model="m", messages=USER,
                                                         stream=stream)
    headers = info.value.response.headers
    assert_passed(headers, {**ANTHROPIC_LIMITS, "x-should-retry": "true"})
    assert (headers["retry-after"], headers["retry-after-ms"]) == ("7", "7000")


async def test_an_upstream_that_says_not_to_retry_is_not_retried(proxy: Any,
                                                                 upstream: Any) -> None:
    upstream.status = 500
    upstream.content_type = "application/json"
    upstream.body = b'{"error": {"message": "bad model config", "type": "server_error"}}'
    upstream.extra_headers = {"x-should-retry": "false"}
    client = await proxy(provider_config("openai", upstream.url))
    sdk = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="x", max_retries=2)
    with pytest.raises(openai.InternalServerError):
        await sdk.chat.completions.create(model="m", messages=USER)
    assert len(upstream.requests) == 1  # the SDK obeyed it


async def _limited_upstream_then_mock(proxy: Any, upstream: Any) -> Any:
    """A proxy whose `up` answers 429 with its rate limits and x-should-retry: false, and
    whose `mock` answers."""
    upstream.status = 429
    upstream.content_type = "application/json"
    upstream.body = b'{"error": {"message": "slow down"}}'
    upstream.extra_headers = {**OPENAI_LIMITS, "x-should-retry": "false"}
    return await proxy(make_config({
        "up": {"type": "openai", "base_url": upstream.url, "api_key": "k", "default_model": "m"},
        "mock": {"type": "mock", "default_model": "fast"}}, default="mock"))


async def test_a_fallbacks_answer_carries_none_of_the_failed_targets_headers(
        proxy: Any, upstream: Any) -> None:
    client = await _limited_upstream_then_mock(proxy, upstream)
    config = json.dumps({"strategy": {"mode": "fallback"},
                         "targets": [{"provider": "up"}, {"provider": "mock"}]})
    resp = await client.post("/v1/chat/completions", headers={"x-portkey-config": config},
                             json={"messages": USER})
    assert resp.status == 200 and resp.headers["x-portkey-provider"] == "mock"
    assert not any(k.lower().startswith("x-ratelimit-") or k.lower() == "x-should-retry"
                   for k in resp.headers)


@pytest.mark.parametrize("stream", [False, True])
async def test_the_upstreams_request_id_reaches_the_client_and_the_log(
        proxy: Any, upstream: Any, caplog: pytest.LogCaptureFixture, stream: bool) -> None:
    """The id an operator gives the provider's support: it stayed upstream, in neither the
    answer nor the access log. OpenAI's x-request-id is ours (the trace id): it goes under
    LiteLLM's name for it."""
    caplog.set_level(logging.INFO)
    upstream.content_type = "text/event-stream" if stream else "application/json"
    upstream.body = CHUNKS if stream else COMPLETION
    upstream.extra_headers = {"x-request-id": "req_upstream"}
    client = await proxy(provider_config("openai", upstream.url))
    resp = await client.post("/v1/chat/completions", headers={"x-portkey-trace-id": "t-1"},
                             json={"model": "m", "messages": USER, "stream": stream})
    assert resp.status == 200 and await resp.read()
    assert resp.headers["x-request-id"] == "t-1"
    assert resp.headers["llm_provider-x-request-id"] == "req_upstream"
    [line] = access_lines(caplog)
    assert (line["trace_id"], line["upstream_request_id"]) == ("t-1", "req_upstream")


async def test_a_failed_upstreams_request_id_reaches_the_client_and_the_log(
        proxy: Any, upstream: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    upstream.status = 529
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps({"type": "error", "error": {"type": "overloaded_error",
                                                             "message": "busy"}})
    upstream.extra_headers = {"request-id": "req_011CUp"}
    client = await proxy(provider_config("anthropic", upstream.url))
    resp = await client.post("/v1/chat/completions", json={"messages": USER})
    assert resp.status == 529 and resp.headers["request-id"] == "req_011CUp"
    [line] = access_lines(caplog)
    assert line["upstream_request_id"] == "req_011CUp"


def test_each_providers_request_id_passes_under_its_name() -> None:
    assert passed_headers([("X-Amzn-RequestId", "8a1b-42"), ("request-id", "req_1"),
                           ("X-Request-ID", "req_2"), ("x-amz-apigw-id", "no")],
                          error=False) == {"x-amzn-requestid": "8a1b-42", "request-id": "req_1",
                                           "llm_provider-x-request-id": "req_2"}


def test_only_printable_ascii_values_pass() -> None:
    assert passed_headers({"X-RateLimit-Remaining-Requests": "5",
                           "x-ratelimit-limit-requests": "caf\udce9",
                           "x-ratelimit-reset-requests": "1s\x01"}.items(), error=False) == {
        "x-ratelimit-remaining-requests": "5"}
    assert passed_headers([("content-type", "application/json")], error=True) is None


def test_long_values_and_many_headers_are_left_out() -> None:
    """An upstream's 10 KB value or thousand headers made the client's head one a strict
    client or a proxy in front refuses."""
    assert passed_headers({"x-ratelimit-remaining-requests": "9" * 129,
                           "x-ratelimit-limit-requests": "9" * 128}.items(), error=False) == {
        "x-ratelimit-limit-requests": "9" * 128}
    many = {f"x-ratelimit-n{i}": str(i) for i in range(1000)}
    assert len(passed_headers(many.items(), error=False) or {}) == 24


def test_the_request_id_and_should_retry_pass_after_many_rate_limit_headers() -> None:
    """The cap stopped at the 24th header: an upstream sending more rate-limit headers
    before its request id lost it (the client's header, the log's upstream_request_id null),
    and an error's x-should-retry after them, which the SDKs obey."""
    many = [(f"x-ratelimit-n{i}", str(i)) for i in range(30)]
    passed = passed_headers([*many, ("x-request-id", "req_9"), ("x-should-retry", "false")],
                            error=True) or {}
    assert passed["llm_provider-x-request-id"] == "req_9"
    assert passed["x-should-retry"] == "false"
    assert sum(name.startswith("x-ratelimit-") for name in passed) == 24
    assert upstream_request_id(passed) == "req_9"


@pytest.mark.parametrize(("ahead", "seconds"), [(5, {"5", "6"}), (-60, {"1"})])
async def test_a_retry_after_as_an_http_date_is_the_wait_until_then(
        proxy: Any, upstream: Any, ahead: int, seconds: set[str]) -> None:
    # RFC 9110's other form, which the SDKs read too: it was dropped, a blind back-off.
    upstream.status = 429
    upstream.content_type = "application/json"
    # (from the next whole second: the date has no fraction, so a date floored from now + 5
    # was 4.x s away, and read 4 when the request took longer than that fraction's rest)
    upstream.extra_headers = {"retry-after": email.utils.formatdate(
        math.ceil(time.time()) + ahead, usegmt=True)}
    client = await proxy(provider_config("anthropic", upstream.url))
    resp = await client.post("/v1/chat/completions", json={"messages": USER})
    assert resp.status == 429 and resp.headers["retry-after"] in seconds


@pytest.mark.parametrize("value", ["soon", "Mon, 01 Jan 99999999999999999999 00:00:00 GMT"])
async def test_a_retry_after_in_neither_form_is_ignored(proxy: Any, upstream: Any,
                                                       value: str) -> None:
    # (a date whose year overflows the parser's C long was a 500 with a traceback)
    upstream.status = 429
    upstream.content_type = "application/json"
    upstream.extra_headers = {"retry-after": value}
    client = await proxy(provider_config("anthropic", upstream.url))
    resp = await client.post("/v1/chat/completions", json={"messages": USER})
    assert resp.status == 429 and "retry-after" not in resp.headers


@pytest.mark.parametrize("ms", ["soon", "-5", "nan"])
async def test_a_retry_after_ms_in_neither_form_leaves_the_retry_after_read(
        proxy: Any, upstream: Any, ms: str) -> None:
    # As the SDKs read them: an unreadable retry-after-ms hid a good Retry-After.
    upstream.status = 429
    upstream.content_type = "application/json"
    upstream.extra_headers = {"retry-after-ms": ms, "retry-after": "2"}
    client = await proxy(provider_config("anthropic", upstream.url))
    resp = await client.post("/v1/chat/completions", json={"messages": USER})
    assert resp.status == 429
    assert (resp.headers["retry-after"], resp.headers["retry-after-ms"]) == ("2", "2000")


@pytest.mark.parametrize("header", ["retry-after", "retry-after-ms"])
async def test_a_negative_retry_after_is_ignored_and_retries_back_off(
        proxy: Any, upstream: Any, header: str) -> None:
    # In neither form: read as no wait, the retries all went at once (and the client was
    # told `retry-after-ms: 0`).
    upstream.status = 429
    upstream.content_type = "application/json"
    upstream.extra_headers = {header: "-5"}
    client = await proxy(provider_config("anthropic", upstream.url))
    started = time.monotonic()
    resp = await client.post("/v1/chat/completions", json={"messages": USER},
                             headers={"x-portkey-config": '{"retry": {"attempts": 2}}'})
    assert resp.status == 429 and "retry-after" not in resp.headers
    assert len(upstream.requests) == 3
    assert time.monotonic() - started >= 0.375  # the backoff: 0.125 s at least, then 0.25


@pytest.mark.parametrize("stream", [False, True])
async def test_a_fallbacks_cache_hit_carries_none_of_the_failed_targets_headers(
        proxy: Any, upstream: Any, stream: bool) -> None:
    # The hit answers without a request of its own: the failed target's limits (and its
    # x-should-retry: false) stayed on the record and reached the hit's client.
    client = await _limited_upstream_then_mock(proxy, upstream)
    cached = {"provider": "mock", "cache": {"mode": "simple", "max_age": 60}}
    body = {"messages": USER, "stream": stream}
    resp = await client.post("/v1/chat/completions", json=body,
                             headers={"x-portkey-config": json.dumps(cached)})
    assert resp.status == 200 and resp.headers["x-portkey-cache-status"] == "MISS"
    await resp.read()
    config = json.dumps({"strategy": {"mode": "fallback"},
                         "targets": [{"provider": "up"}, cached]})
    resp = await client.post("/v1/chat/completions", json=body,
                             headers={"x-portkey-config": config})
    await resp.read()
    assert resp.status == 200 and resp.headers["x-portkey-cache-status"] == "HIT"
    assert not any(k.lower().startswith("x-ratelimit-") or k.lower() == "x-should-retry"
                   for k in resp.headers)


async def _limited_then_streaming(aiohttp_server: Any, first_event_after: float) -> str:
    """An upstream whose first answer is a 429 with its rate limits (none left), its request id
    and `x-should-retry: true`, asking for a 0.4 s wait; every later one a 200 stream with its
    own limits and id, whose first event comes `first_event_after` seconds after its head."""
    answered: list[int] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        answered.append(1)
        if len(answered) == 1:
            return web.json_response({"error": {"message": "slow down"}}, status=429, headers={
                "x-ratelimit-remaining-requests": "0", "x-request-id": "req_failed",
                "x-should-retry": "true", "retry-after-ms": "400"})
        resp = web.StreamResponse(headers={"content-type": "text/event-stream",
                                           "x-ratelimit-remaining-requests": "41",
                                           "x-request-id": "req_answer"})
        await resp.prepare(request)
        await resp.write(b": opening\n\n")  # (the head goes out now)
        await asyncio.sleep(first_event_after)
        await resp.write(CHUNKS)
        return resp

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    return str((await aiohttp_server(app)).make_url("")).rstrip("/")


async def test_a_keepalive_head_carries_no_failed_trys_headers(proxy: Any,
                                                               aiohttp_server: Any) -> None:
    """The keep-alive comments commit the 200 while a retry waits: its head carried the 429's
    rate limits (0 requests left), request id and `x-should-retry: true`, which the client
    read as its answer's. Before the answer is known, no upstream's head is the request's."""
    url = await _limited_then_streaming(aiohttp_server, 0.0)
    client = await proxy(make_config({"up": {"type": "openai", "base_url": url, "api_key": "k",
                                             "default_model": "m"}}, default="up",
                                     server={"keepalive_interval": 0.1}))
    retry = json.dumps({"retry": {"attempts": 1, "on_status_codes": [429]}})
    resp = await client.post("/v1/chat/completions", headers={"x-portkey-config": retry},
                             json={"messages": USER, "stream": True})
    assert resp.status == 200
    assert await resp.content.readuntil(b"\n\n") == b": keep-alive\n\n"
    assert not [k for k in resp.headers if k.lower().startswith("x-ratelimit-")
                or k.lower() in ("x-should-retry", "llm_provider-x-request-id")]
    assert b'"content":"hi"' in await resp.read()


async def test_a_keepalive_head_of_the_only_try_carries_its_headers(proxy: Any,
                                                                    aiohttp_server: Any) -> None:
    """One target without retries: the try whose head came before its late first event is
    the answer, whatever follows, so its rate limits and id are the request's."""
    url = await _limited_then_streaming(aiohttp_server, 0.4)
    client = await proxy(make_config({"up": {"type": "openai", "base_url": url, "api_key": "k",
                                             "default_model": "m"}}, default="up",
                                     server={"keepalive_interval": 0.1}))
    limited = await client.post("/v1/chat/completions", json={"messages": USER, "stream": True})
    assert limited.status == 429  # (no retries: the first answer, as it came)
    resp = await client.post("/v1/chat/completions", json={"messages": USER, "stream": True})
    assert await resp.content.readuntil(b"\n\n") == b": keep-alive\n\n"
    assert resp.headers["x-ratelimit-remaining-requests"] == "41"
    assert resp.headers["llm_provider-x-request-id"] == "req_answer"
    assert "x-should-retry" not in resp.headers
    assert b'"content":"hi"' in await resp.read()


async def _proxy_to(proxy: Any, aiohttp_server: Any, handle: Any) -> Any:
    """A proxy whose only provider, an OpenAI-compatible one, is answered by `handle`."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = await aiohttp_server(app)
    return await proxy(make_config({"up": {
        "type": "openai", "base_url": str(server.make_url("")).rstrip("/"), "api_key": "k",
        "default_model": "m"}}, default="up"))


@pytest.mark.parametrize("stream", [True, False])
async def test_a_configs_retry_waits_as_each_answer_says_and_passes_on_the_last(
        proxy: Any, aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch,
        stream: bool) -> None:
    """Each retry waits as the answer before it says — retry-after-ms over Retry-After, an
    HTTP-date, whole seconds — and the client gets the last answer's wait and rate limits,
    never an earlier try's (the waits are recorded, then skipped)."""
    from streamproxy.routing import executor
    waits: list[float | None] = []
    delay = executor.retry_delay

    def recorded(*args: Any) -> float | None:
        waits.append(delay(*args))
        return None if waits[-1] is None else 0.0

    monkeypatch.setattr(executor, "retry_delay", recorded)
    heads = [{"retry-after-ms": "50", "retry-after": "9", "x-ratelimit-remaining-requests": "2"},
             {"retry-after": email.utils.formatdate(math.ceil(time.time()) + 5, usegmt=True),
              "x-ratelimit-remaining-requests": "1"},
             {"retry-after": "2"},
             {"retry-after": "7", "x-ratelimit-limit-requests": "60"}]
    answered: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        answered.append(1)
        return web.json_response({"error": {"message": f"slow down {len(answered)}"}},
                                 status=429, headers=heads[len(answered) - 1])

    client = await _proxy_to(proxy, aiohttp_server, handle)
    resp = await client.post("/v1/chat/completions", json={"messages": USER, "stream": stream},
                             headers={"x-portkey-config": json.dumps(
                                 {"retry": {"attempts": 3, "on_status_codes": [429]}})})
    assert resp.status == 429 and len(answered) == 4
    assert waits[0] == 0.05 and 3 < (waits[1] or 0) <= 6 and waits[2] == 2
    assert (resp.headers["retry-after"], resp.headers["retry-after-ms"]) == ("7", "7000")
    assert resp.headers["x-ratelimit-limit-requests"] == "60"
    assert "x-ratelimit-remaining-requests" not in resp.headers
    assert (await resp.json())["error"]["message"] == "slow down 4"


async def test_a_targets_retry_waits_together_stay_within_portkeys_60_seconds(
        proxy: Any, aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each `retry-after: 25` is under the 30 s a single wait may be, but five of them held the
    request (its stream not started) for over two minutes: as Portkey caps a request's retry
    waits at 60 s together, the retry whose wait would pass that is given up (the waits are
    recorded, then skipped)."""
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def skipped(delay: float, result: Any = None) -> Any:
        if delay >= 1:  # (a retry's wait: recorded, not waited)
            slept.append(delay)
            delay = 0
        return await real_sleep(delay, result)

    monkeypatch.setattr(asyncio, "sleep", skipped)
    answered: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        answered.append(1)
        return web.json_response({"error": {"message": "slow down"}}, status=429,
                                 headers={"retry-after": "25"})

    client = await _proxy_to(proxy, aiohttp_server, handle)
    resp = await client.post("/v1/chat/completions", json={"messages": USER, "stream": True},
                             headers={"x-portkey-config": json.dumps(
                                 {"retry": {"attempts": 5, "on_status_codes": [429]}})})
    assert resp.status == 429
    assert slept == [25, 25] and len(answered) == 3  # a third wait: 75 s in all
    assert resp.headers["x-portkey-retry-attempt-count"] == "-1"  # the retries given up


@pytest.mark.parametrize(("extra", "expected"), [
    ({"x-ms-retry-after-ms": "2500"}, ("3", "2500")),
    # retry-after-ms (OpenAI's, which Azure sends too) first, as Azure's SDKs read them
    ({"retry-after-ms": "1200", "x-ms-retry-after-ms": "2500", "retry-after": "9"},
     ("2", "1200")),
    # before Retry-After, whole seconds only: the milliseconds are the finer word
    ({"x-ms-retry-after-ms": "400", "retry-after": "1"}, ("1", "400")),
    ({"x-ms-retry-after-ms": "soon", "retry-after": "2"}, ("2", "2000")),
])
async def test_azures_x_ms_retry_after_ms_is_the_wait(proxy: Any, upstream: Any,
                                                      extra: dict[str, str],
                                                      expected: tuple[str, str]) -> None:
    # Azure's 429s (Foundry, the Azure SDKs' `x-ms-retry-after-ms`, read by azure-core and
    # Portkey) named their wait only there: it was not read, so the proxy's retries backed
    # off blind and the client was told no wait at all.
    upstream.status = 429
    upstream.content_type = "application/json"
    upstream.body = b'{"error": {"code": "429", "message": "Rate limit is exceeded."}}'
    upstream.extra_headers = extra
    client = await proxy(provider_config("azure", upstream.url, api_version="2024-10-21"))
    resp = await client.post("/v1/chat/completions", json={"messages": USER})
    assert resp.status == 429
    assert (resp.headers.get("retry-after"), resp.headers.get("retry-after-ms")) == expected
