"""What the openai SDK's retries do with the proxy's errors: it obeys `x-should-retry` before
the status (`_base_client._should_retry`), so an error a retry cannot mend says `false`, and
the SDK does not send (and pay for) the same request again."""

from __future__ import annotations

from typing import Any

import openai
import openai._base_client
import orjson
import pytest

from tests.conftest import provider_config
from tests.helpers import make_config

USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK's retries at once (its backoff starts at half a second)."""
    monkeypatch.setattr(openai._base_client, "INITIAL_RETRY_DELAY", 0.0)


def _sdk(client: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="x", max_retries=2)


@pytest.mark.parametrize("stream", [True, False])
async def test_an_upstream_redirect_is_not_retried_by_the_sdk(proxy: Any, upstream: Any,
                                                              stream: bool) -> None:
    upstream.status = 301  # a base_url that is off: every try gets the same redirect
    upstream.content_type = "application/json"
    upstream.extra_headers = {"location": "https://api.example.com/v1/chat/completions"}
    client = await proxy(provider_config("openai", upstream.url))
    with pytest.raises(openai.InternalServerError) as info:
        await _sdk(client).chat.completions.create(model="m", messages=USER, stream=stream)
    assert info.value.status_code == 502 and info.value.code == "upstream_redirect"
    assert info.value.response.headers["x-should-retry"] == "false"
    assert len(upstream.requests) == 1


def _capped(url: str) -> Any:
    return make_config({"up": {"type": "openai", "base_url": url, "api_key": "k",
                               "default_model": "m"}}, default="up",
                       server={"max_event_bytes": 64 * 1024})


async def test_an_answer_over_max_event_bytes_is_not_generated_again(proxy: Any,
                                                                     upstream: Any) -> None:
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps({
        "id": "c", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "x" * 100_000}}]})
    client = await proxy(_capped(upstream.url))
    with pytest.raises(openai.InternalServerError) as info:
        await _sdk(client).chat.completions.create(model="m", messages=USER)
    assert info.value.status_code == 502 and "exceeded" in info.value.message
    assert len(upstream.requests) == 1  # (the SDK's retries had it generated three times)


async def test_a_first_stream_event_over_max_event_bytes_is_not_retried(proxy: Any,
                                                                        upstream: Any) -> None:
    upstream.pieces = [b"data: " + b"x" * 16384] + [b"x" * 16384] * 8
    client = await proxy(_capped(upstream.url))
    with pytest.raises(openai.InternalServerError) as info:
        await _sdk(client).chat.completions.create(model="m", messages=USER, stream=True)
    assert info.value.status_code == 502
    assert len(upstream.requests) == 1


async def test_an_upstreams_own_5xx_is_still_retried(proxy: Any, upstream: Any) -> None:
    """A provider's 500 or 503 may pass: the SDK's own rule (retry a 5xx) stands."""
    upstream.statuses = [503, 500]
    upstream.body = b'data: {"choices":[{"index":0,"delta":{"content":"ok"}}]}\n\ndata: [DONE]\n\n'
    client = await proxy(provider_config("openai", upstream.url))
    stream = await _sdk(client).chat.completions.create(model="m", messages=USER, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert text == "ok" and len(upstream.requests) == 3


@pytest.mark.parametrize("front_kind", ["lean", "aiohttp"])
@pytest.mark.parametrize("close", [False, True])
async def test_a_body_over_the_limit_is_the_sdks_413_sent_once(
        proxy: Any, monkeypatch: pytest.MonkeyPatch, access_log: Any, front_kind: str,
        close: bool) -> None:
    """An image too large for `server.max_body_bytes`: the SDK gets the 413 as an
    APIStatusError, not a connection reset it retries, uploading it all again."""
    from streamproxy.server import front

    monkeypatch.setenv(front.FRONT_ENV, front_kind)
    client = await proxy(make_config({"mock": {"type": "mock", "default_model": "fast"}},
                                     default="mock", server={"max_body_bytes": 100_000}))
    sdk = _sdk(client)
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 400_000}}
    with pytest.raises(openai.APIStatusError) as info:
        await sdk.chat.completions.create(
            model="fast", messages=[{"role": "user", "content": [image]}],
            extra_headers={"connection": "close"} if close else None)
    assert info.value.status_code == 413 and info.value.code == "request_too_large"
    assert [line["status"] for line in access_log()] == [413]  # (sent once)


@pytest.mark.parametrize("stream", [True, False])
async def test_a_request_timeout_the_client_set_is_retried_as_the_sdks_own_timeout(
        proxy: Any, upstream: Any, stream: bool) -> None:
    """`x-portkey-request-timeout` running out is Portkey's 408, with no `x-should-retry`
    (Portkey's gateway sends none): the SDK retries it as it retries its own `timeout=` running
    out — a late first token is often a queue that the next try misses, and `max_retries` is
    the client's choice. So the proxy does not say `false` on it (nor a wait)."""
    upstream.delay_before_headers = 2.0  # every try outlasts the client's 50 ms
    client = await proxy(provider_config("openai", upstream.url))
    with pytest.raises(openai.APIStatusError) as info:
        await _sdk(client).chat.completions.create(
            model="m", messages=USER, stream=stream,
            extra_headers={"x-portkey-request-timeout": "50"})
    assert info.value.status_code == 408
    assert (info.value.type, info.value.code) == ("timeout_error", "request_timeout")
    assert not {"x-should-retry", "retry-after"} & set(info.value.response.headers)
    assert len(upstream.requests) == 3  # the first try and the SDK's two retries
