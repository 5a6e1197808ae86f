"""Proxy authentication: keys in `Authorization` or `x-portkey-api-key`, every endpoint but
/healthz, per-key providers (403) and rate limits (429 + Retry-After), OpenAI-shaped errors, and
a proxy key in `Authorization` is never forwarded as the provider key."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

import orjson
import pytest

from streamproxy.config import ConfigError
from streamproxy.errors import RateLimited
from streamproxy.server import front
from streamproxy.server.auth import TokenBucket, parse_auth, presented_key
from streamproxy.server.errors import error_headers
from streamproxy.server.state import STATE
from tests.helpers import make_config, metric_value

USER = [{"role": "user", "content": "hi"}]
KEY_A, KEY_B = "proxy-key-team-a-0123456789", "proxy-key-team-b-9876543210"
COMPLETION = orjson.dumps({
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


def config(upstream_url: str, **key_a: Any) -> Any:
    return make_config({
        "up": {"type": "openai", "base_url": upstream_url, "default_model": "m"},
        "mock": {"type": "mock", "default_model": "fast"},
    }, default="up", auth={"keys": [{"name": "team-a", "key": KEY_A, **key_a},
                                    {"name": "team-b", "key": KEY_B}]})


@pytest.fixture
def json_upstream(upstream: Any) -> Any:
    upstream.content_type = "application/json"
    upstream.body = COMPLETION
    return upstream


def assert_error(body: dict[str, Any], status_type: str, code: str | None) -> str:
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == status_type
    assert body["error"]["code"] == code
    return body["error"]["message"]


def sent_auth(upstream: Any) -> list[str | None]:
    return [{k.lower(): v for k, v in r.headers.items()}.get("authorization")
            for r in upstream.requests]


async def test_every_endpoint_but_healthz_needs_a_key(proxy: Any, json_upstream: Any) -> None:
    client = await proxy(config(json_upstream.url))
    assert (await client.get("/healthz")).status == 200
    for method, path in (("POST", "/v1/chat/completions"), ("GET", "/v1/models"),
                         ("GET", "/metrics"), ("GET", "/nowhere")):
        resp = await client.request(method, path, json={"messages": USER})
        assert resp.status == 401, path
        message = assert_error(await resp.json(), "authentication_error", "invalid_api_key")
        assert "Missing proxy API key" in message
    resp = await client.get("/v1/models", headers={"authorization": "Bearer wrong"})
    assert resp.status == 401
    assert "Invalid proxy API key" in assert_error(await resp.json(), "authentication_error",
                                                   "invalid_api_key")
    for headers in ({"authorization": f"Bearer {KEY_A}"}, {"x-portkey-api-key": KEY_B},
                    {"authorization": f"bearer   {KEY_A}  "}):
        assert (await client.get("/v1/models", headers=headers)).status == 200
        assert (await client.get("/metrics", headers=headers)).status == 200
    assert json_upstream.requests == []


async def test_a_placeholder_portkey_key_gives_way_to_a_proxy_key_in_authorization(
        proxy: Any, json_upstream: Any) -> None:
    # An empty or placeholder x-portkey-api-key (the portkey SDK given no api_key sends ""; a
    # JS template of an unset key sends "undefined") is no key: the proxy key the client sent
    # as `Authorization: Bearer` is the one it presents, and it is still not forwarded.
    from portkey_ai import AsyncPortkey

    client = await proxy(config(json_upstream.url))
    portkey = AsyncPortkey(base_url=str(client.make_url("/v1")), max_retries=0,
                           Authorization=f"Bearer {KEY_A}")
    answer = await portkey.chat.completions.create(model="m", messages=USER)
    assert answer.choices[0].message.content == "ok"
    for placeholder in ("", "  ", "undefined", "null", "None", "OPENAI_API_KEY"):
        for headers in ({"x-portkey-api-key": placeholder, "authorization": f"Bearer {KEY_A}"},
                        {"authorization": f"Bearer {KEY_A}", "x-portkey-api-key": placeholder}):
            resp = await client.post("/v1/chat/completions", json={"messages": USER},
                                     headers=headers)
            assert resp.status == 200, (placeholder, await resp.text())
    assert set(sent_auth(json_upstream)) == {None}
    # A real x-portkey-api-key still wins (Portkey's order); Authorization stays the
    # provider key. A wrong one is refused, never echoed, never passed over for Authorization.
    resp = await client.post("/v1/chat/completions", json={"messages": USER},
                             headers={"x-portkey-api-key": "sk-wrong-0123456789",
                                      "authorization": f"Bearer {KEY_A}"})
    text = await resp.text()
    assert resp.status == 401 and "Invalid proxy API key." in text and "wrong" not in text
    # Both placeholders: told as missing.
    resp = await client.post("/v1/chat/completions", json={"messages": USER},
                             headers={"x-portkey-api-key": "undefined",
                                      "authorization": "Bearer OPENAI_API_KEY"})
    assert resp.status == 401 and "Missing proxy API key" in await resp.text()


async def test_a_placeholder_key_is_told_as_missing_and_a_wrong_key_is_never_echoed(
        proxy: Any, json_upstream: Any) -> None:
    # What clients send when given no key: "Invalid proxy API key." sent their users looking
    # for a typo in a key they never set.
    from portkey_ai import AsyncPortkey

    client = await proxy(config(json_upstream.url))
    portkey = AsyncPortkey(base_url=str(client.make_url("/v1")), max_retries=0)  # no api_key
    with pytest.raises(Exception) as info:  # (the SDK's vendored openai AuthenticationError)
        await portkey.chat.completions.create(model="m", messages=USER)
    assert getattr(info.value, "status_code", None) == 401
    assert "Missing proxy API key" in str(info.value)
    assert "OPENAI_API_KEY" in str(info.value)  # the portkey SDK's placeholder, named
    for presented in ("Bearer null", "Bearer undefined", "Bearer None", "Bearer ",
                      "Bearer OPENAI_API_KEY"):
        resp = await client.get("/v1/models", headers={"authorization": presented})
        assert resp.status == 401
        message = assert_error(await resp.json(), "authentication_error", "invalid_api_key")
        assert message.startswith("Missing proxy API key"), presented
    for headers in ({"authorization": "Bearer sk-real-looking-0123456789"},
                    {"x-portkey-api-key": "sk-real-looking-0123456789"},
                    {"authorization": "Bearer nullable-key"}):
        resp = await client.get("/v1/models", headers=headers)
        text = await resp.text()
        assert resp.status == 401 and "Invalid proxy API key." in text
        assert "real-looking" not in text and "nullable" not in text
    assert json_upstream.requests == []


async def test_only_a_refused_chat_request_is_logged_and_counted_as_a_request(
        proxy: Any, json_upstream: Any, caplog: pytest.LogCaptureFixture) -> None:
    # A 401 on /v1/models or /metrics (a scraper with a wrong key) is a rejection, not a
    # chat request: the access log and streamproxy_requests_total are chat requests'.

    def counted() -> float:
        return metric_value("streamproxy_requests_total", {
            "provider": "", "model": "", "status": "401", "stream": ""})

    def rejected() -> float:
        return metric_value("streamproxy_rejected_requests_total", {"reason": "unauthenticated"})

    caplog.set_level(logging.INFO, logger="streamproxy.access")
    client = await proxy(config(json_upstream.url))
    before = counted(), rejected()
    for method, path in (("GET", "/v1/models"), ("GET", "/metrics"),
                         ("GET", "/v1/chat/completions"), ("POST", "/v1/chat/completions")):
        resp = await client.request(method, path, json={"messages": USER})
        assert resp.status == 401
    assert (counted() - before[0], rejected() - before[1]) == (1, 4)
    (line,) = [r for r in caplog.records if r.name == "streamproxy.access"]
    assert orjson.loads(line.getMessage())["bytes_out"] == len(await resp.read())


async def test_a_request_refused_while_draining_is_logged_under_its_keys_name(
        proxy: Any, json_upstream: Any) -> None:
    """A chat request that came once a drain's grace was over (503 shutting_down) was logged
    and counted with no proxy key name: the key was noted only as the body was read."""
    client = await proxy(config(json_upstream.url))
    state = client.server.app[STATE]
    records: list[Any] = []
    state.observers.append(records.append)
    state.drain.aborted = True
    resp = await client.post("/v1/chat/completions", json={"messages": USER},
                             headers={"authorization": f"Bearer {KEY_A}"})
    assert resp.status == 503
    assert [(r.status, r.auth_key_name) for r in records] == [(503, "team-a")]


async def test_a_proxy_key_in_authorization_is_not_forwarded_upstream(
        proxy: Any, json_upstream: Any) -> None:
    client = await proxy(config(json_upstream.url))
    resp = await client.post("/v1/chat/completions", json={"messages": USER},
                             headers={"authorization": f"Bearer {KEY_A}"})
    assert resp.status == 200
    # With x-portkey-api-key carrying the proxy key, Authorization is the provider key.
    resp = await client.post("/v1/chat/completions", json={"messages": USER},
                             headers={"x-portkey-api-key": KEY_A,
                                      "authorization": "Bearer sk-provider"})
    assert resp.status == 200
    assert sent_auth(json_upstream) == [None, "Bearer sk-provider"]


async def test_a_proxy_key_sent_in_both_headers_is_not_forwarded_as_the_provider_key(
        proxy: Any, json_upstream: Any) -> None:
    # The openai SDK given the proxy key as api_key and as x-portkey-api-key sends it twice:
    # Authorization went upstream as the provider key, the proxy's secret to a third party.
    client = await proxy(config(json_upstream.url))
    for bearer in (f"Bearer {KEY_A}", f"bearer  {KEY_A} "):
        resp = await client.post("/v1/chat/completions", json={"messages": USER},
                                 headers={"x-portkey-api-key": KEY_A, "authorization": bearer})
        assert resp.status == 200
    assert sent_auth(json_upstream) == [None, None]


async def test_request_state_set_downstream_survives_the_header_removal(
        proxy: Any, json_upstream: Any) -> None:
    client = await proxy(config(json_upstream.url))
    for headers in ({"authorization": f"Bearer {KEY_A}"}, {"x-portkey-api-key": KEY_A}):
        resp = await client.post("/v1/chat/completions", json={"messages": USER},
                                 headers=headers)
        assert resp.status == 200
        # Set by the response cache on the request, read when the response is prepared.
        assert resp.headers["x-portkey-cache-status"] == "DISABLED"


async def test_without_auth_the_client_key_is_forwarded_as_before(
        proxy: Any, json_upstream: Any) -> None:
    client = await proxy(make_config({"up": {"type": "openai", "base_url": json_upstream.url,
                                             "default_model": "m"}}, default="up"))
    resp = await client.post("/v1/chat/completions", json={"messages": USER},
                             headers={"authorization": "Bearer sk-provider"})
    assert resp.status == 200
    assert sent_auth(json_upstream) == ["Bearer sk-provider"]


async def test_a_refused_chat_request_answers_with_the_trace_id_it_is_logged_under(
        proxy: Any, json_upstream: Any, caplog: pytest.LogCaptureFixture) -> None:
    # A client (or its SDK's error.request_id) reports x-request-id: the 401 and the 429 each
    # sent a new id while the access log made another, so the report matched no line.
    caplog.set_level(logging.INFO, logger="streamproxy.access")
    client = await proxy(config(json_upstream.url,
                                rate_limit={"requests_per_minute": 1, "burst": 1}))
    sent = []
    for headers in ({}, {"authorization": f"Bearer {KEY_A}"}, {"authorization": f"Bearer {KEY_A}"}):
        resp = await client.post("/v1/chat/completions", json={"messages": USER},
                                 headers=headers)
        assert resp.headers["x-request-id"] == resp.headers["x-portkey-trace-id"]
        sent.append((resp.status, resp.headers["x-request-id"]))
    logged = [orjson.loads(r.getMessage()) for r in caplog.records
              if r.name == "streamproxy.access"]
    assert [(line["status"], line["trace_id"]) for line in logged] == sent
    assert [status for status, _ in sent] == [401, 200, 429]


@pytest.mark.parametrize("front_kind", front.FRONTS)
async def test_a_rate_limited_keys_line_carries_its_metadata(
        proxy: Any, json_upstream: Any, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch, front_kind: str) -> None:
    # A 429's line had no metadata though its key's client sent x-portkey-metadata (the docs:
    # present whenever sent): which user or team hit the key's limit was not in the log. A
    # 401's sender is nobody's key: its header is not parsed, nor logged.
    monkeypatch.setenv(front.FRONT_ENV, front_kind)
    caplog.set_level(logging.INFO, logger="streamproxy.access")
    client = await proxy(config(json_upstream.url,
                                rate_limit={"requests_per_minute": 1, "burst": 1}))
    metadata = {"x-portkey-metadata": '{"_user": "ann"}'}
    for headers in ({}, {"authorization": f"Bearer {KEY_A}"}, {"authorization": f"Bearer {KEY_A}"},
                    {"authorization": f"Bearer {KEY_A}", "x-portkey-metadata": "[1]"}):
        resp = await client.post("/v1/chat/completions", json={"messages": USER},
                                 headers={**metadata, **headers})
        await resp.read()
    logged = [orjson.loads(r.getMessage()) for r in caplog.records
              if r.name == "streamproxy.access"]
    assert [(line["status"], line.get("metadata")) for line in logged] == [
        (401, None), (200, {"_user": "ann"}), (429, {"_user": "ann"}), (429, None)]


async def test_a_client_key_that_is_not_ascii_is_a_401_not_a_crash(
        proxy: Any, json_upstream: Any) -> None:
    # Python `requests` sends header values as Latin-1: "café" arrives as the byte 0xE9,
    # which the front keeps as an undecodable character; as UTF-8 it is non-ASCII text.
    client = await proxy(make_config({"up": {"type": "openai", "base_url": json_upstream.url,
                                             "default_model": "m"}}, default="up"))
    body = orjson.dumps({"messages": USER})
    for key in ("sk-caf\xc3\xa9".encode("latin-1"), b"sk-caf\xe9"):
        reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     b"application/json\r\nAuthorization: Bearer " + key +
                     b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%b" % (len(body), body))
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        head, _, payload = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 401"), head
        assert orjson.loads(payload)["error"]["code"] == "invalid_api_key"
    assert json_upstream.requests == []


async def test_allowed_providers_is_enforced_after_routing(proxy: Any,
                                                           json_upstream: Any) -> None:
    client = await proxy(config(json_upstream.url, allowed_providers=["mock"]))
    a = {"authorization": f"Bearer {KEY_A}"}
    resp = await client.post("/v1/chat/completions", headers=a,
                             json={"model": "up/m", "messages": USER})
    assert resp.status == 403
    message = assert_error(await resp.json(), "permission_error", "provider_not_allowed")
    assert "'team-a'" in message and "'up'" in message
    resp = await client.post("/v1/chat/completions", headers={**a, "x-portkey-provider": "up"},
                             json={"model": "m", "messages": USER})
    assert resp.status == 403
    resp = await client.post("/v1/chat/completions", headers=a,
                             json={"model": "mock/fast:tokens=2", "messages": USER})
    assert resp.status == 200
    resp = await client.post("/v1/chat/completions", headers={"authorization": f"Bearer {KEY_B}"},
                             json={"model": "up/m", "messages": USER})
    assert resp.status == 200  # team-b has no provider restriction
    assert len(json_upstream.requests) == 1


async def test_models_lists_only_the_providers_a_key_may_use(proxy: Any,
                                                             json_upstream: Any) -> None:
    client = await proxy(config(json_upstream.url, allowed_providers=["mock"]))

    async def ids(key: str) -> set[str]:
        resp = await client.get("/v1/models", headers={"authorization": f"Bearer {key}"})
        assert resp.status == 200
        return {m["id"] for m in (await resp.json())["data"]}

    assert await ids(KEY_A) == {"mock/fast"}  # team-a: mock only
    assert await ids(KEY_B) == {"mock/fast", "up/m"}  # team-b: every provider


async def test_a_rate_limits_sub_second_wait_is_told_in_retry_after_ms(proxy: Any,
                                                                      json_upstream: Any) -> None:
    # 600 a minute is a token every 0.1 s: retry-after-ms said 1000 (the wait rounded up to
    # whole seconds first), and the openai SDK, which reads it first, waited ten times longer.
    client = await proxy(config(json_upstream.url,
                                rate_limit={"requests_per_minute": 600, "burst": 1}))
    a = {"authorization": f"Bearer {KEY_A}"}
    assert (await client.post("/v1/chat/completions", headers=a,
                              json={"messages": USER})).status == 200
    refused = await client.post("/v1/chat/completions", headers=a, json={"messages": USER})
    assert refused.status == 429
    assert refused.headers["retry-after"] == "1"  # whole seconds, never early
    assert 0 < int(refused.headers["retry-after-ms"]) <= 100


async def test_rate_limit_per_key_is_429_with_retry_after(proxy: Any,
                                                          json_upstream: Any) -> None:
    client = await proxy(config(json_upstream.url,
                                rate_limit={"requests_per_minute": 6, "burst": 2}))
    a = {"authorization": f"Bearer {KEY_A}"}
    statuses = []
    for _ in range(3):
        resp = await client.post("/v1/chat/completions", headers=a, json={"messages": USER})
        statuses.append(resp.status)
        last = resp
    assert statuses == [200, 200, 429]
    assert 1 <= int(last.headers["retry-after"]) <= 10  # one token per 10 s
    message = assert_error(await last.json(), "rate_limit_error", "rate_limit_exceeded")
    assert "team-a" in message and KEY_A not in message
    # Another key has its own bucket.
    resp = await client.post("/v1/chat/completions", headers={"x-portkey-api-key": KEY_B},
                             json={"messages": USER})
    assert resp.status == 200


def test_token_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(per_minute=60, burst=2)  # one per second
    assert bucket.take(100.0) is None
    assert bucket.take(100.0) is None
    assert bucket.take(100.0) == pytest.approx(1.0)
    assert bucket.take(100.5) == pytest.approx(0.5)
    assert bucket.take(101.0) is None
    assert bucket.take(1000.0) is None and bucket.take(1000.0) is None  # capped at burst
    assert bucket.take(1000.0) is not None


def test_a_refusal_never_says_retry_after_ms_0() -> None:
    """600 a minute is a token every 0.1 s; the next request 0.1 s later (as retry-after-ms
    said) found 0.99999… of a token (floating point), and its 429 said `retry-after-ms: 0`:
    retry at once, to be refused again (the openai SDKs, reading 0 as no wait, backed off a
    second instead). A refusal's wait is rounded up to a millisecond, never down to 0."""
    bucket = TokenBucket(per_minute=600, burst=1)
    assert bucket.take(100.0) is None
    wait = bucket.take(100.1)
    assert wait is not None
    headers = error_headers(RateLimited("slow down", retry_after=wait), {})
    assert (headers["retry-after"], headers["retry-after-ms"]) == ("1", "1")


def test_identify_compares_against_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    auth = parse_auth(config("http://x"))
    assert auth is not None
    assert auth.identify(KEY_A).name == "team-a"  # type: ignore[union-attr]
    assert auth.identify(KEY_B).name == "team-b"  # type: ignore[union-attr]
    for wrong in (KEY_A[:-1], KEY_A + "x", "", KEY_A.upper(), "\udcff"):
        assert auth.identify(wrong) is None
    calls = []
    import hmac
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    auth.identify(KEY_A)
    assert len(calls) == 2  # no early exit on the first match
    assert "proxy-key" not in repr(auth)


def test_presented_key() -> None:
    assert presented_key({"authorization": "Bearer k"}) == ("k", True)
    assert presented_key({"x-portkey-api-key": "k", "authorization": "Bearer p"}) == ("k", False)
    assert presented_key({"authorization": "Basic abc"}) == (None, False)
    assert presented_key({"authorization": "Bearer "}) == (None, True)
    assert presented_key({}) == (None, False)
    # an empty or placeholder x-portkey-api-key is no key: Authorization's is the one presented
    assert presented_key({"x-portkey-api-key": " ", "authorization": "Bearer k"}) == ("k", True)
    assert presented_key({"x-portkey-api-key": "null", "authorization": "Bearer k"}) == ("k",
                                                                                         True)
    assert presented_key({"x-portkey-api-key": "undefined"}) == ("undefined", False)
    # the same key in both: Authorization carried it too, and is removed
    assert presented_key({"x-portkey-api-key": "k", "authorization": "Bearer k"}) == ("k", True)
    assert presented_key({"x-portkey-api-key": "null", "authorization": "Bearer "}) == ("null",
                                                                                         False)


@pytest.mark.parametrize(("auth", "key", "fragment"), [
    ({"keys": []}, "auth.keys", "non-empty"),
    ({"keys": [{"key": "k"}]}, "auth.keys[0].name", "required"),
    ({"keys": [{"name": "a"}]}, "auth.keys[0]", "exactly one"),
    ({"keys": [{"name": "a", "key": "k", "key_env": "E"}]}, "auth.keys[0]", "exactly one"),
    ({"keys": [{"name": "a", "key_env": "STREAMPROXY_TEST_UNSET"}]}, "auth.keys[0].key_env",
     "not set"),
    ({"keys": [{"name": "a", "key": "k"}, {"name": "a", "key": "j"}]}, "auth.keys[1].name",
     "duplicate"),
    ({"keys": [{"name": "a", "key": "k"}, {"name": "b", "key": "k"}]}, "auth.keys[1]",
     "twice"),
    ({"keys": [{"name": "a", "key": "k", "allowed_providers": ["nope"]}]},
     "auth.keys[0].allowed_providers", "not a configured provider"),
    ({"keys": [{"name": "a", "key": "k", "rate_limit": {"requests_per_minute": 0}}]},
     "auth.keys[0].rate_limit.requests_per_minute", "positive"),
    # YAML's .nan and .inf: a traceback (the default burst could not be computed), or, with
    # a burst given, a NaN rate that refilled every bucket at once (no limit at all).
    ({"keys": [{"name": "a", "key": "k", "rate_limit": {"requests_per_minute": math.nan}}]},
     "auth.keys[0].rate_limit.requests_per_minute", "positive"),
    ({"keys": [{"name": "a", "key": "k", "rate_limit": {"requests_per_minute": math.nan,
                                                         "burst": 2}}]},
     "auth.keys[0].rate_limit.requests_per_minute", "positive"),
    ({"keys": [{"name": "a", "key": "k", "rate_limit": {"requests_per_minute": math.inf}}]},
     "auth.keys[0].rate_limit.requests_per_minute", "positive"),
    ({"keys": [{"name": "a", "key": "k", "rate_limit": {"requests_per_minute": 5,
                                                         "burst": 1.5}}]},
     "auth.keys[0].rate_limit.burst", "positive integer"),
    ({"keys": [{"name": "a", "key": "k", "role": "admin"}]}, "auth.keys[0].role", "unknown"),
    ({"tokens": []}, "auth", "one key"),
])
def test_auth_config_errors(auth: Any, key: str, fragment: str,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STREAMPROXY_TEST_UNSET", raising=False)
    cfg = make_config({"mock": {"type": "mock"}}, auth=auth)
    with pytest.raises(ConfigError) as e:
        parse_auth(cfg)
    assert e.value.key == key
    assert fragment in e.value.reason
    assert "'k'" not in str(e.value)


def test_default_burst_is_a_minute_of_requests() -> None:
    auth = parse_auth(make_config({"mock": {"type": "mock"}}, auth={"keys": [
        {"name": "a", "key": "k", "rate_limit": {"requests_per_minute": 2.5}}]}))
    assert auth is not None and auth.keys[0].bucket is not None
    assert auth.keys[0].bucket.burst == math.ceil(2.5)


async def test_a_loadbalance_draws_among_the_targets_the_key_may_use(proxy: Any,
                                                                   json_upstream: Any) -> None:
    """A load balance over an allowed and a disallowed provider drew the disallowed one as
    often as its weight said, and the request was a 403 though the other target could serve
    it: the same request passed or failed at random. The draw is among the allowed ones."""
    client = await proxy(config(json_upstream.url, allowed_providers=["mock"]))
    lb = orjson.dumps({"strategy": {"mode": "loadbalance"}, "targets": [
        {"provider": "up", "weight": 1},
        {"provider": "mock", "weight": 0.000001,
         "override_params": {"model": "fast:tokens=2"}}]}).decode()
    a = {"authorization": f"Bearer {KEY_A}", "x-portkey-config": lb}
    for _ in range(3):
        resp = await client.post("/v1/chat/completions", headers=a,
                                 json={"messages": USER, "stream": False})
        assert resp.status == 200
        assert resp.headers["x-portkey-last-used-option-index"] == "config.targets[1]"
    assert json_upstream.requests == []
    # With none of its targets allowed, still the 403.
    only_up = orjson.dumps({"strategy": {"mode": "loadbalance"},
                            "targets": [{"provider": "up"}]}).decode()
    resp = await client.post("/v1/chat/completions", json={"messages": USER},
                             headers={**a, "x-portkey-config": only_up})
    assert resp.status == 403


async def test_the_403_names_every_refused_provider(proxy: Any, json_upstream: Any) -> None:
    """A fallback over two providers the key may not use was refused naming the first one
    only: the operator fixing `allowed_providers` found the second by a second 403. Every
    refused provider is named, once each, sorted."""
    client = await proxy(make_config({
        "up": {"type": "openai", "base_url": json_upstream.url, "default_model": "m"},
        "other": {"type": "openai", "base_url": json_upstream.url, "default_model": "m"},
        "mock": {"type": "mock", "default_model": "fast"},
    }, default="up", auth={"keys": [{"name": "team-a", "key": KEY_A,
                                     "allowed_providers": ["mock"]}]}))
    fallback = orjson.dumps({"strategy": {"mode": "fallback"}, "targets": [
        {"provider": "up"}, {"provider": "other"}, {"provider": "up"}]}).decode()
    resp = await client.post("/v1/chat/completions", json={"messages": USER},
                             headers={"authorization": f"Bearer {KEY_A}",
                                      "x-portkey-config": fallback})
    assert resp.status == 403
    message = assert_error(await resp.json(), "permission_error", "provider_not_allowed")
    assert message == "The proxy key 'team-a' may not use providers 'other', 'up'."
    assert json_upstream.requests == []


@pytest.mark.parametrize("placeholder", ["None", "null", "undefined", " OPENAI_API_KEY "])
@pytest.mark.parametrize("where", ["key", "key_env"])
def test_a_proxy_key_that_is_a_clients_placeholder_is_a_config_error(
        placeholder: str, where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`key: None` (YAML's null is `~` or `null`: `None` is a string) or a variable a template
    set to the text of nothing was taken as the key: a client given no key (Python's
    f"Bearer {None}", a JS template's `undefined`) presents exactly that, and was let in."""
    entry = {"name": "team", where: placeholder}
    if where == "key_env":
        monkeypatch.setenv("STREAMPROXY_TEST_PLACEHOLDER", placeholder)
        entry["key_env"] = "STREAMPROXY_TEST_PLACEHOLDER"
    cfg = make_config({"mock": {"type": "mock"}}, auth={"keys": [entry]})
    with pytest.raises(ConfigError) as e:
        parse_auth(cfg)
    assert e.value.key == f"auth.keys[0].{where}"
    assert "placeholder" in e.value.reason
