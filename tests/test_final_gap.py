"""A stream that ends without its end event — an idle timeout, above all — records the silence
it ended in as its last gap: the access log's `max_gap_ms` and the gap histograms measured
between reads only, so a stream cut by a long idle gap logged the small gaps before it."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from streamproxy.config import Timeouts
from streamproxy.upstream.client import CLIENT_ENV
from streamproxy.upstream.deadline import Deadline
from tests.helpers import collect, make_config, metric_value, sse_chunks


def frame(delta: dict[str, Any]) -> bytes:
    return b"data: %s\n\n" % orjson.dumps({
        "id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]})


async def _streamed(proxy: Any, upstream: Any, idle: float) -> Any:
    """The chunks a streamed request got through a proxy to `upstream` (OpenAI-compatible)
    with a 5 s first-token timeout and an `idle` one."""
    client = await proxy(make_config(
        {"o": {"type": "openai", "base_url": upstream.url, "api_key": "k",
               "default_model": "m", "timeouts": {"first_token": 5, "idle": idle}}},
        default="o"))
    resp = await client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "hi"}], "stream": True})
    return collect(sse_chunks(await resp.read()))


@pytest.mark.parametrize("upstream_client", ["native", "aiohttp"])  # piped, pulled relay
async def test_an_idle_timeout_logs_the_gap_that_ended_the_stream(
        upstream_client: str, proxy: Any, upstream: Any, access_log: Any,
        monkeypatch: Any) -> None:
    monkeypatch.setenv(CLIENT_ENV, upstream_client)
    upstream.pieces = [frame({"role": "assistant", "content": "a"}), frame({"content": "b"}),
                       frame({"content": "c"})]
    upstream.piece_delay = 0.01
    upstream.hold_open = True  # then silence, until the idle timeout (0.3 s)
    lbl = {"provider": "o", "model": "m"}
    before = metric_value("streamproxy_stream_max_gap_seconds_sum", lbl)
    c = await _streamed(proxy, upstream, idle=0.3)
    assert c.content == "abc" and c.error is not None and c.error["code"] == "upstream_timeout"
    line = access_log()[-1]
    assert line["error_code"] == "upstream_timeout"
    assert line["max_gap_ms"] is not None and line["max_gap_ms"] >= 290, line["max_gap_ms"]
    gap = metric_value("streamproxy_stream_max_gap_seconds_sum", lbl) - before
    assert gap >= 0.29, gap


async def test_a_cut_stream_without_reads_after_its_first_event_has_its_gap() -> None:
    deadline = Deadline(Timeouts(first_token=30, idle=30), "p")
    deadline.first_event()
    await asyncio.sleep(0.05)
    reads, gap_max, gap_mean = deadline.gap_stats(cut=True)
    deadline.cancel()
    assert reads == 0 and gap_max is not None and gap_mean is not None
    assert 0.04 <= gap_max < 5 and gap_mean == gap_max


async def test_a_stream_that_ended_normally_adds_no_gap() -> None:
    deadline = Deadline(Timeouts(first_token=30, idle=30), "p")
    deadline.first_event()
    deadline.progress()  # its end came with this read
    await asyncio.sleep(0.05)  # (the relay's own work after it)
    reads, gap_max, _ = deadline.gap_stats()
    deadline.cancel()
    assert reads == 1 and gap_max is not None and gap_max < 0.04


@pytest.mark.parametrize("upstream_client", ["native", "aiohttp"])  # piped, pulled relay
async def test_the_silence_before_the_first_token_is_no_stream_gap(
        upstream_client: str, proxy: Any, upstream: Any, access_log: Any,
        monkeypatch: Any) -> None:
    """A stream that commits on a role chunk alone, then thinks: that silence is timed by
    `first_token` (and the TTFT), not `idle`; the gaps count from the first token."""
    monkeypatch.setenv(CLIENT_ENV, upstream_client)
    upstream.pieces = [frame({"role": "assistant", "content": ""}), frame({"content": "a"}),
                       frame({"content": "b"}), frame({"content": "c"}),
                       b'data: {"id":"c1","object":"chat.completion.chunk","created":1,'
                       b'"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}'
                       b"\n\ndata: [DONE]\n\n"]
    upstream.piece_delays = [0.4, 0.01, 0.01, 0.01, 0.0]  # a 400 ms think after the role
    lbl = {"provider": "o", "model": "m"}
    before = metric_value("streamproxy_stream_max_gap_seconds_sum", lbl)
    c = await _streamed(proxy, upstream, idle=5)
    assert c.content == "abc" and c.error is None
    line = access_log()[-1]
    assert line["ttft_ms"] >= 390 and line["first_chunk_ms"] < line["ttft_ms"], line
    assert line["max_gap_ms"] is not None and line["max_gap_ms"] < 300, line["max_gap_ms"]
    gap = metric_value("streamproxy_stream_max_gap_seconds_sum", lbl) - before
    assert 0 < gap < 0.3, gap


async def test_a_stream_cut_before_its_first_token_has_no_gap() -> None:
    """Its silence after a role-only commit was the first-token timeout's, not a gap."""
    deadline = Deadline(Timeouts(first_token=30, idle=30), "p")
    deadline.first_event(lambda: False)  # committed on a role chunk alone
    await asyncio.sleep(0.02)
    deadline.progress()  # (a read that gave the client nothing: a ping)
    reads, gap_max, gap_mean = deadline.gap_stats(cut=True)
    deadline.cancel()
    assert (reads, gap_max, gap_mean) == (1, None, None)
