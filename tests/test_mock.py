"""The built-in mock upstream's own behaviour: its pacing, and the shapes of its answers."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from streamproxy.providers.mock import server as mock_server
from streamproxy.providers.mock.server import start_mock_server
from tests.helpers import openai_sdk

USER = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def mock_url() -> AsyncIterator[str]:
    runner, url = await start_mock_server()
    try:
        yield url
    finally:
        await runner.cleanup()


async def _hog_the_loop(stop: asyncio.Event) -> None:
    """Another tenant of the loop, holding it 8 ms at a time: every timer fires late."""
    while not stop.is_set():
        time.sleep(0.008)
        await asyncio.sleep(0.001)


async def test_paced_deltas_keep_their_rate_on_a_busy_loop(mock_url: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Each delta is due at a fixed time from the first, so late timers do not add up (with a
    fixed gap after each write, 29 gaps of 20 ms took ~4 ms more each here). The deadlines the
    mock sets are checked, not the stream's length: a loaded machine made its timers late by
    more than any bound the length could be held to."""
    loop = asyncio.get_running_loop()
    deadlines: list[tuple[float, float]] = []  # (due, woken)
    sleep_until = mock_server._sleep_until

    async def recording(loop_: asyncio.AbstractEventLoop, when: float) -> None:
        await sleep_until(loop_, when)
        deadlines.append((when, loop.time()))

    monkeypatch.setattr(mock_server, "_sleep_until", recording)
    stop = asyncio.Event()
    hog = asyncio.create_task(_hog_the_loop(stop))
    try:
        async with aiohttp.ClientSession() as session, session.post(
                mock_url + "/v1/messages", json={"model": "tokens=30,tps=50", "stream": True,
                                                 "max_tokens": 50, "messages": USER}) as resp:
            body = await resp.read()
    finally:
        stop.set()
        await hog
    assert body.count(b"text_delta") == 30
    assert len(deadlines) == 29
    first = deadlines[0][0] - 0.02
    # Each due 20 ms after the first delta's time, however late the one before woke.
    assert [round(due - first, 6) for due, _ in deadlines] == [
        round(0.02 * k, 6) for k in range(1, 30)]
    assert max(woken - due for due, woken in deadlines) > 0.001  # the loop was busy
    # Never faster than the rate: no delta woke before its time (the timer's resolution aside).
    # (Not the client's clock: the hog on its loop can read the first delta late, which
    # shortens what it measures below 29 gaps.)
    assert min(woken - due for due, woken in deadlines) >= -0.001


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("provider", ["mock", "mock-openai"])
async def test_a_tool_only_answer_has_null_content(default_proxy: Any, provider: str,
                                                   stream: bool) -> None:
    """`tokens=0` with tool calls answers as a real tool-only answer does: no text block, so
    content null (an empty text block made it "")."""
    client = openai_sdk(await default_proxy())
    model = provider + "/tokens=0,tool_calls=2"
    if stream:
        async with client.chat.completions.stream(model=model, messages=USER) as events:
            final = await events.get_final_completion()
    else:
        final = await client.chat.completions.create(model=model, messages=USER)
    message = final.choices[0].message
    assert message.content is None
    assert [call.id for call in message.tool_calls or []] == [
        f"{'toolu' if provider == 'mock' else 'call'}_mock_{k}" for k in range(2)]
    assert final.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize(("path", "status"), [("/v1/messages", 529),
                                               ("/v1/chat/completions", 503)])
async def test_a_non_streamed_answer_fails_as_its_stream_would(mock_url: str, path: str,
                                                               status: int) -> None:
    """`mock/error` is documented as an overloaded_error: asked without `stream`, it answered
    a 200 with a whole answer, so a non-streamed fallback could not be tried against it."""
    body = {"model": "error", "max_tokens": 64, "messages": USER}
    async with aiohttp.ClientSession() as session:
        async with session.post(mock_url + path, json=body) as resp:
            error = (await resp.json())["error"]
            assert (resp.status, error["message"]) == (status, "Overloaded")
        for knob in ("truncate_after=3", "reset_first=1"):
            with pytest.raises(aiohttp.ClientPayloadError):
                async with session.post(mock_url + path, json={**body, "model": knob}) as resp:
                    assert resp.status == 200
                    await resp.read()
        started = time.monotonic()
        async with session.post(mock_url + path, json={**body, "model": "ttft_ms=150"}) as resp:
            assert resp.status == 200 and (await resp.json())["model"] == "ttft_ms=150"
        assert time.monotonic() - started >= 0.15


@pytest.mark.parametrize("model", ["mock/fast:tokens=3", "mock-openai/fast:tokens=3"])
async def test_a_request_with_a_large_image_is_answered(default_proxy: Any, model: str) -> None:
    """A 3 MB base64 image (as the openai SDK sends one) through the embedded default: the
    mock refused any body over aiohttp's 1 MiB default, and the client got a 413 ("provider
    'mock' returned HTTP 413") for what every real provider takes."""
    image = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(2**21)
                                                        ).decode()
    client = openai_sdk(await default_proxy())
    done = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": image}}]}])
    assert done.choices[0].message.content == mock_server.mock_text(3)


@pytest.mark.parametrize(("path", "statuses"), [("/v1/messages", (429, 529)),
                                                ("/v1/chat/completions", (429, 503))])
async def test_only_a_status_a_provider_asks_a_wait_on_carries_retry_after(
        mock_url: str, default_proxy: Any, path: str, statuses: tuple[int, ...]) -> None:
    """The mock sent `retry-after: 1` on every error status, 400 and 401 too, and the proxy
    passed it on: a client read a wait into an answer no retry changes. Now only a rate limit
    and an overload (429, 503, Anthropic's 529) carry it, as a provider's do."""
    body = {"model": "fast", "max_tokens": 64, "messages": USER}
    async with aiohttp.ClientSession() as session:
        for status in (400, 401, 403, 404, 422, 500, *statuses):
            options = {"x-mock-options": f"status={status}"}
            async with session.post(mock_url + path, json=body, headers=options) as resp:
                assert resp.status == status
                assert ("retry-after" in resp.headers) == (status in statuses), status
    client = await default_proxy()
    provider = "mock" if path == "/v1/messages" else "mock-openai"
    for status in (400, 401, 404, 429):
        resp = await client.post("/v1/chat/completions", json={
            "model": f"{provider}/fast:status={status}", "messages": USER})
        assert resp.status == status
        passed = {h for h in ("retry-after", "retry-after-ms") if h in resp.headers}
        assert passed == ({"retry-after", "retry-after-ms"} if status == 429 else set()), status


@pytest.mark.parametrize(("status", "anthropic", "openai"), [
    (400, "invalid_request_error", ("invalid_request_error", None)),
    (401, "authentication_error", ("invalid_request_error", "invalid_api_key")),
    (403, "permission_error", ("invalid_request_error", None)),
    (404, "not_found_error", ("invalid_request_error", None)),
    (413, "request_too_large", ("invalid_request_error", None)),
    (422, "invalid_request_error", ("invalid_request_error", None)),
    (429, "rate_limit_error", ("requests", "rate_limit_exceeded")),
    (500, "api_error", ("server_error", None)),
    (529, "overloaded_error", ("server_error", None))])
def test_the_mocks_error_status_reads_as_its_providers(status: int, anthropic: str,
                                                       openai: tuple[str, str | None]) -> None:
    """`status=401` answered `api_error` (Anthropic's internal error) on the Anthropic wire and
    `server_error` on OpenAI's, so a client testing its handling of a bad key or a bad request
    against the mock saw a server fault; each status now has the type its provider sends."""
    assert mock_server.ANTHROPIC.error_body(status)["error"]["type"] == anthropic
    error = mock_server.OPENAI.error_body(status)["error"]
    assert (error["type"], error["code"]) == openai


async def test_the_mocks_client_errors_reach_the_client_as_client_errors(
        default_proxy: Any) -> None:
    client = await default_proxy()
    for provider in ("mock", "mock-openai"):
        resp = await client.post("/v1/chat/completions", json={
            "model": f"{provider}/fast:status=401", "messages": USER})
        error = (await resp.json())["error"]
        assert resp.status == 401 and error["type"] != "server_error", provider
        assert error["code"] != "api_error", provider


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("provider", ["mock", "mock-openai"])
@pytest.mark.parametrize(("knobs", "named"), [
    ("tokens=abc", "tokens"), ("bogus=1", "bogus"), ("fast:tps=", "tps"),  # mistyped
    ("status=999", "status"), ("status=302", "status"), ("tokens=-3", "tokens"),  # out of range
    ("tool_calls=-1", "tool_calls")])
async def test_a_bad_knob_is_a_400_that_names_it(default_proxy: Any, provider: str, stream: bool,
                                                 knobs: str, named: str) -> None:
    """A mistyped knob answered a plain-text 400 the proxy could not read, so the client saw
    only "provider 'mock' returned HTTP 400"; one out of range was worse: `status=999` was
    relayed as an HTTP 999 (and `status=1xx` left the client waiting), `tokens=-3` answered a
    200 with `completion_tokens: -3`. Each is now a 400 that says which option was wrong."""
    client = await default_proxy()
    resp = await client.post("/v1/chat/completions", json={
        "model": f"{provider}/{knobs}", "stream": stream, "messages": USER})
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert f"mock option {named!r}" in error["message"], error
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("stream", [True, False])
async def test_the_prompt_tokens_are_the_same_on_either_wire(default_proxy: Any,
                                                             stream: bool) -> None:
    """On the Anthropic wire the system prompt travels as `system`, outside `messages`, and the
    mock counted only `messages`: the same request reported 2 prompt tokens through `mock` and
    16 through `mock-openai`."""
    client = openai_sdk(await default_proxy())
    messages: Any = [{"role": "system", "content": "You are a helpful assistant. " * 4},
                     {"role": "user", "content": "Hello"}]
    usages = []
    for provider in ("mock", "mock-openai"):
        model = provider + "/tokens=3"
        if stream:
            chunks = [c async for c in await client.chat.completions.create(
                model=model, messages=messages, stream=True,
                stream_options={"include_usage": True})]
            usage = chunks[-1].usage
        else:
            usage = (await client.chat.completions.create(model=model, messages=messages)).usage
        assert usage is not None
        usages.append((usage.prompt_tokens, usage.completion_tokens))
    assert usages[0] == usages[1] == (mock_server.prompt_tokens({"messages": messages}), 3)


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("provider", ["mock", "mock-openai"])
@pytest.mark.parametrize("param", ["max_tokens", "max_completion_tokens"])
async def test_max_tokens_caps_the_answer(default_proxy: Any, provider: str, stream: bool,
                                          param: str) -> None:
    """The mock sent all its deltas whatever the request's cap: `max_tokens: 3` on mock/fast
    answered 200 tokens and `finish_reason: stop`, so a client's handling of a cut answer
    could not be tried against it. Now it stops at the cap with `length`, as a provider does."""
    client = openai_sdk(await default_proxy())
    for model, cap in ((f"{provider}/fast", 3), (f"{provider}/tool", 12)):
        kw: Any = {"model": model, "messages": USER, param: cap}
        tokens = min(cap, 10)
        if stream:  # (the SDK's stream helper raises on a cut answer: the chunks as they are)
            chunks = [c async for c in await client.chat.completions.create(
                **kw, stream=True, stream_options={"include_usage": True})]
            deltas = [c.choices[0] for c in chunks if c.choices]
            answer = ("".join(d.delta.content or "" for d in deltas),
                      [d.delta.tool_calls for d in deltas if d.delta.tool_calls],
                      deltas[-1].finish_reason, chunks[-1].usage)
        else:
            done = await client.chat.completions.create(**kw)
            answer = (done.choices[0].message.content, done.choices[0].message.tool_calls or [],
                      done.choices[0].finish_reason, done.usage)
        assert answer[:3] == (mock_server.mock_text(tokens), [], "length"), model
        assert answer[3] is not None and answer[3].completion_tokens == tokens
    final = await client.chat.completions.create(  # room for it all: the whole answer
        model=f"{provider}/tool", messages=USER, **{param: 20})
    assert final.choices[0].finish_reason == "tool_calls"
