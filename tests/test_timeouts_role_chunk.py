"""An OpenAI-compatible reasoning model (OpenAI's o-series, vLLM, DeepSeek's reasoner behind a
relay) sends its role chunk at once, then thinks in silence: that chunk commits the stream but
is not its first token, so the first-token timeout, not the idle one, runs until the answer
begins. Fake upstreams on loopback, short timeouts, both relays."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from streamproxy.config import Timeouts
from streamproxy.providers.openai_compat import PassthroughTranslator
from streamproxy.upstream.client import CLIENT_ENV
from streamproxy.upstream.deadline import Deadline
from tests.helpers import collect, make_config, make_encoder, sse_chunks

USER = [{"role": "user", "content": "hi"}]


def frame(delta: dict[str, Any], finish: str | None = None) -> bytes:
    return b"data: %s\n\n" % orjson.dumps({
        "id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "o3",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})


ROLE = frame({"role": "assistant", "content": "", "refusal": None})  # OpenAI's first chunk
ANSWER = frame({"content": "42"}) + frame({}, "stop") + b"data: [DONE]\n\n"


async def _stream(proxy: Any, upstream: Any, timeouts: dict[str, float]) -> Any:
    client = await proxy(make_config(
        {"o": {"type": "openai", "base_url": upstream.url, "api_key": "k",
               "default_model": "o3", "timeouts": timeouts}}, default="o"))
    resp = await client.post("/v1/chat/completions",
                             json={"messages": USER, "stream": True})
    assert resp.status == 200
    return collect(sse_chunks(await resp.read()))


@pytest.mark.parametrize("upstream_client", ["native", "aiohttp"])  # piped, pulled relay
async def test_a_silent_think_after_the_role_chunk_runs_under_the_first_token_timeout(
        upstream_client: str, proxy: Any, upstream: Any, monkeypatch: Any) -> None:
    # The answer comes 0.6 s after the role chunk: past the idle timeout (0.25), within the
    # first-token one. The idle timeout cut the think with an error frame.
    monkeypatch.setenv(CLIENT_ENV, upstream_client)
    upstream.pieces = [ROLE, ANSWER]
    upstream.piece_delay = 0.6
    c = await _stream(proxy, upstream, {"first_token": 5, "idle": 0.25})
    assert c.error is None and c.done and c.content == "42"


@pytest.mark.parametrize("upstream_client", ["native", "aiohttp"])
async def test_the_idle_timeout_applies_once_the_answer_began_after_a_role_chunk(
        upstream_client: str, proxy: Any, upstream: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv(CLIENT_ENV, upstream_client)
    upstream.pieces = [ROLE, frame({"content": "4"})]
    upstream.piece_delay = 0.1
    upstream.hold_open = True  # then a stall: the idle timeout (0.25), not the first-token
    c = await _stream(proxy, upstream, {"first_token": 30, "idle": 0.25})
    assert c.content == "4" and not c.done
    assert c.error is not None and c.error["code"] == "upstream_timeout"
    assert "idle" in c.error["message"]


async def test_a_think_past_the_first_token_timeout_after_a_role_chunk_is_cut(
        proxy: Any, upstream: Any) -> None:
    upstream.pieces = [ROLE]
    upstream.hold_open = True
    c = await _stream(proxy, upstream, {"first_token": 0.4, "idle": 0.15})
    assert not c.done and c.error is not None and c.error["code"] == "upstream_timeout"
    assert "first-token" in c.error["message"]


@pytest.mark.parametrize(("frames", "role_only"), [
    (ROLE, True),
    (frame({"role": "assistant"}), True),
    (frame({"role": "assistant", "content": "Hi"}), False),
    (frame({"role": "assistant", "reasoning_content": "Let me"}), False),
    (frame({"role": "assistant", "content": None, "tool_calls": [
        {"index": 0, "id": "c", "type": "function",
         "function": {"name": "f", "arguments": ""}}]}), False),
    (frame({"role": "assistant", "content": ""}, "stop"), False),
    (ROLE + frame({"content": "Hi"}), False),  # both came in the first read
])
def test_role_only_is_a_role_chunk_with_nothing_of_the_answer(
        frames: bytes, role_only: bool) -> None:
    encoder = make_encoder()
    translator = PassthroughTranslator(encoder, 1 << 20, provider="o",
                                       client_wants_usage=False)
    translator.feed(frames)
    assert encoder.pending and encoder.role_only() is role_only
    if role_only:
        encoder.take()
        assert not encoder.past_role()
        translator.feed(frame({"content": "4"}))
        assert encoder.past_role()


def test_a_translators_role_chunk_alone_is_role_only() -> None:
    encoder = make_encoder()
    encoder.start(None, True)  # (Anthropic's text block began: its first delta is to come)
    assert encoder.pending and encoder.role_only()
    encoder.take()
    assert not encoder.past_role()
    encoder.content("4")
    assert encoder.past_role()
    other = make_encoder()
    other.start(None, True)
    other.content("4")
    assert not other.role_only()


@pytest.mark.parametrize("role_chunk_at", [0.0, 0.2])  # before, after the timer first fired
async def test_an_answer_that_begins_after_the_timer_looked_still_gets_the_idle_timeout(
        role_chunk_at: float) -> None:
    # The timer finds no answer at 0.15 s; it begins at 0.25 s, then stalls: the idle timeout
    # ends it 0.15 s later, not the first-token timeout (30 s) the timer could have waited for.
    loop = asyncio.get_running_loop()
    began: list[bool] = []
    start = loop.time()
    at: list[float] = []

    async def stream() -> None:
        deadline = Deadline(Timeouts(first_token=30, idle=0.15), "p")
        try:
            await asyncio.sleep(role_chunk_at)
            deadline.first_event(lambda: bool(began))
            await asyncio.sleep(0.25 - role_chunk_at)
            deadline.progress()
            began.append(True)
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            assert deadline.owns() and "idle" in str(deadline.expired)
            at.append(loop.time() - start)
        finally:
            deadline.cancel()

    await asyncio.wait_for(asyncio.create_task(stream()), 10)
    assert at and 0.38 <= at[0] < 2, at


@pytest.mark.parametrize("upstream_client", ["native", "aiohttp"])  # piped, pulled relay
async def test_keepalives_while_a_model_thinks_in_silence_after_its_role_chunk(
        upstream_client: str, proxy: Any, upstream: Any, monkeypatch: Any) -> None:
    # No read comes while it thinks: the comments went out only on reads, so with
    # keepalive_interval set the client (and a load balancer) got nothing for the whole think.
    monkeypatch.setenv(CLIENT_ENV, upstream_client)
    upstream.pieces = [ROLE, frame({"content": "4"}), frame({"content": "2"}),
                       frame({}, "stop") + b"data: [DONE]\n\n"]
    upstream.piece_delay = 0.5
    client = await proxy(make_config(
        {"o": {"type": "openai", "base_url": upstream.url, "api_key": "k",
               "default_model": "o3", "timeouts": {"first_token": 5, "idle": 5}}},
        default="o", server={"keepalive_interval": 0.1}))
    resp = await client.post("/v1/chat/completions", json={"messages": USER, "stream": True})
    body = await resp.read()
    assert resp.status == 200
    think = body[:body.index(b'"content":"4"')]
    assert 2 <= think.count(b"\n\n: keep-alive\n\n") <= 6, think  # ~0.5 s at 0.1 s
    # The answer's own pauses (0.5 s each) are kept alive too: they were not, by design then.
    answer = body[body.index(b'"content":"4"'):body.index(b'"content":"2"')]
    assert 2 <= answer.count(b"\n\n: keep-alive\n\n") <= 6, answer
    c = collect(sse_chunks(body))
    assert c.content == "42" and c.done and c.error is None


# Chunks with nothing of the answer in them, as OpenAI-compatible servers and relays send them
# after (or with) the role chunk and before a think: empty content, an empty delta, the role
# again with empty fields (OpenRouter repeats the role; DashScope and LiteLLM keep an empty
# `reasoning_content`).
NOTHING = [
    frame({"content": ""}),
    frame({}),
    frame({"role": "assistant", "content": "", "reasoning_content": "", "tool_calls": []}),
]


@pytest.mark.parametrize("empty", NOTHING)
def test_a_chunk_with_nothing_in_it_after_the_role_chunk_is_not_the_first_token(
        empty: bytes) -> None:
    encoder = make_encoder()
    translator = PassthroughTranslator(encoder, 1 << 20, provider="o",
                                       client_wants_usage=False)
    translator.feed(ROLE)
    assert encoder.role_only()
    encoder.take()
    translator.feed(empty + empty)  # (what the relay does with a read while the token is due)
    encoder.skip_empty(encoder.take())
    assert not encoder.past_role() and not encoder.answered()
    translator.feed(empty + frame({"content": "4"}))
    encoder.skip_empty(encoder.take())
    assert encoder.past_role() and encoder.answered()


@pytest.mark.parametrize("empty", NOTHING)
def test_a_first_read_of_the_role_chunk_and_empty_chunks_is_role_only(empty: bytes) -> None:
    encoder = make_encoder()
    translator = PassthroughTranslator(encoder, 1 << 20, provider="o",
                                       client_wants_usage=False)
    translator.feed(ROLE + empty)
    assert encoder.role_only(blanks=True)  # (a pass-through upstream's, as the executor asks)
    encoder.take()
    assert not encoder.past_role()
    translator.feed(frame({}, "stop"))  # (an empty answer: its finish is its first token)
    encoder.skip_empty(encoder.take())
    assert encoder.past_role() and encoder.answered()


@pytest.mark.parametrize("upstream_client", ["native", "aiohttp"])  # piped, pulled relay
@pytest.mark.parametrize("together", [False, True])  # the empty chunk in the role's read
async def test_an_empty_chunk_before_a_silent_think_leaves_it_the_first_token_timeout(
        upstream_client: str, together: bool, proxy: Any, upstream: Any,
        access_log: Any, monkeypatch: Any) -> None:
    # The empty chunk counted as the first token: the idle timeout (0.25 s) cut the think
    # with an error frame, and the access log's ttft_ms was the empty chunk's time.
    monkeypatch.setenv(CLIENT_ENV, upstream_client)
    empty = frame({"content": ""})
    upstream.pieces = [ROLE + empty, ANSWER] if together else [ROLE, empty, ANSWER]
    upstream.piece_delays = [0.05, 0.6, 0] if not together else [0.6, 0]
    c = await _stream(proxy, upstream, {"first_token": 5, "idle": 0.25})
    assert c.error is None and c.done and c.content == "42"
    (line,) = access_log()
    assert line["ttft_ms"] >= 600 and line["first_chunk_ms"] < 600
