"""Prometheus metrics: fed once per request from its record; `/metrics` shows them after a
streamed request; multi-process aggregation when PROMETHEUS_MULTIPROC_DIR is set."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamproxy.config import Timeouts
from streamproxy.errors import StreamTruncated, UpstreamStatusError, UpstreamTimeout
from streamproxy.observe.access_log import access_entry
from streamproxy.observe.metrics import (
    MAX_CIRCUIT_LABELS,
    MAX_LABEL_CHARS,
    MAX_MODEL_LABELS,
    metrics,
    set_circuit_state,
)
from streamproxy.record import RequestRecord
from streamproxy.server.app import STATE
from streamproxy.server.store_and_cache import FEATURES
from streamproxy.upstream.deadline import Deadline
from tests.helpers import collect, make_config, metric_samples, metric_value, sse_chunks

ROOT = Path(__file__).parent.parent


def sample(name: str, **labels: str) -> float:
    return metric_value(name, labels)


async def test_metrics_after_a_streamed_request(default_proxy: Any) -> None:
    client = await default_proxy()
    lbl = {"provider": "mock", "model": "paced"}
    before = {
        "req": sample("streamproxy_requests_total", **lbl, status="200", stream="true"),
        "ttft": sample("streamproxy_time_to_first_token_seconds_count", **lbl),
        "dur": sample("streamproxy_request_duration_seconds_count", **lbl, stream="true",
                      status="200"),
        "gap": sample("streamproxy_stream_max_gap_seconds_count", **lbl),
        "gap_sum": sample("streamproxy_stream_max_gap_seconds_sum", **lbl),
        "in": sample("streamproxy_tokens_total", **lbl, type="input"),
        "out": sample("streamproxy_tokens_total", **lbl, type="output"),
        "bytes_in": sample("streamproxy_request_body_bytes_total", provider="mock"),
        "bytes_out": sample("streamproxy_response_body_bytes_total", provider="mock"),
    }
    body = await (await client.post("/v1/chat/completions", json={
        "model": "mock/paced", "stream": True,
        "messages": [{"role": "user", "content": "hello there"}]})).read()
    c = collect(sse_chunks(body))
    assert c.done and c.finish_reason == "stop"

    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("text/plain")
    text = await resp.text()
    families = {f.name for f in text_string_to_metric_families(text)}
    for name in ("streamproxy_requests", "streamproxy_active_streams",
                 "streamproxy_time_to_first_token_seconds", "streamproxy_request_duration_seconds",
                 "streamproxy_stream_max_gap_seconds", "streamproxy_stream_mean_gap_seconds",
                 "streamproxy_tokens", "streamproxy_request_body_bytes",
                 "streamproxy_response_body_bytes",
                 "streamproxy_upstream_errors", "streamproxy_retries", "streamproxy_fallbacks",
                 "streamproxy_circuit_breaker_state"):
        assert name in families, name
    assert 'streamproxy_requests_total{model="paced",provider="mock",status="200",' \
           'stream="true"}' in text

    assert sample("streamproxy_requests_total", **lbl, status="200", stream="true") \
        == before["req"] + 1
    assert sample("streamproxy_time_to_first_token_seconds_count", **lbl) == before["ttft"] + 1
    assert sample("streamproxy_request_duration_seconds_count", **lbl, stream="true",
                      status="200") \
        == before["dur"] + 1
    assert sample("streamproxy_stream_max_gap_seconds_count", **lbl) == before["gap"] + 1
    # The mock paces 50 deltas at 50/s: some gap between reads is at least a few ms.
    assert sample("streamproxy_stream_max_gap_seconds_sum", **lbl) - before["gap_sum"] > 0.005
    assert sample("streamproxy_tokens_total", **lbl, type="input") > before["in"]
    assert sample("streamproxy_tokens_total", **lbl, type="output") == before["out"] + 50
    assert sample("streamproxy_request_body_bytes_total", provider="mock") > before["bytes_in"]
    assert sample("streamproxy_response_body_bytes_total", provider="mock") \
        == before["bytes_out"] + len(body)
    assert sample("streamproxy_active_streams") == 0


async def test_non_streamed_request_counts_without_ttft(default_proxy: Any) -> None:
    client = await default_proxy()
    lbl = {"provider": "mock", "model": "tool"}
    ttft = sample("streamproxy_time_to_first_token_seconds_count", **lbl)
    req = sample("streamproxy_requests_total", **lbl, status="200", stream="false")
    out = sample("streamproxy_response_body_bytes_total", provider="mock")
    resp = await client.post("/v1/chat/completions", json={
        "model": "mock/tool", "messages": [{"role": "user", "content": "x"}]})
    body = await resp.read()
    assert resp.status == 200
    assert sample("streamproxy_requests_total", **lbl, status="200", stream="false") == req + 1
    assert sample("streamproxy_time_to_first_token_seconds_count", **lbl) == ttft
    assert sample("streamproxy_response_body_bytes_total", provider="mock") == out + len(body)


async def test_an_invalid_request_counts_with_its_status(default_proxy: Any) -> None:
    client = await default_proxy()
    before = sample("streamproxy_requests_total", provider="", model="", status="400",
                    stream="false")
    resp = await client.post("/v1/chat/completions", json={"messages": []})
    assert resp.status == 400
    assert sample("streamproxy_requests_total", provider="", model="", status="400",
                  stream="false") == before + 1


def test_retries_fallbacks_errors_and_cached_tokens_from_the_record() -> None:
    m = metrics()
    r = RequestRecord(trace_id="t", provider="rec-b", model="m1", stream=True, attempts=4,
                      target_index=1, status=200, client_disconnected=True,
                      usage={"prompt_tokens": 10, "completion_tokens": 4,
                             "prompt_tokens_details": {"cached_tokens": 6}})
    r.provider = "rec-a"
    r.note_upstream_error(UpstreamStatusError(429, "slow down"))
    r.note_retry()
    r.note_upstream_error(UpstreamTimeout("late"))
    r.note_retry()
    r.note_upstream_error(ValueError("ours, not the provider's"))
    r.note_fallback()
    r.provider = "rec-b"
    r.note_upstream_error(StreamTruncated("cut"))
    r.finished = r.started + 1.5
    m.observe(r)
    assert sample("streamproxy_upstream_errors_total", provider="rec-a", kind="status_429") == 1
    assert sample("streamproxy_upstream_errors_total", provider="rec-a", kind="timeout") == 1
    assert sample("streamproxy_upstream_errors_total", provider="rec-b", kind="truncated") == 1
    assert sample("streamproxy_retries_total", provider="rec-a") == 2
    assert sample("streamproxy_retries_total", provider="rec-b") == 0
    # (the provider left, as for retries: it was counted on the final one, rec-b)
    assert sample("streamproxy_fallbacks_total", provider="rec-a") == 1
    assert sample("streamproxy_fallbacks_total", provider="rec-b") == 0
    assert sample("streamproxy_client_disconnects_total", provider="rec-b") == 1
    assert sample("streamproxy_tokens_total", provider="rec-b", model="m1", type="cached") == 6
    assert sample("streamproxy_request_duration_seconds_sum", provider="rec-b", model="m1",
                  stream="true", status="200") == pytest.approx(1.5)


async def test_retries_count_against_the_retried_provider_not_the_fallback(
        proxy: Any, access_log: Any) -> None:
    client = await proxy(make_config({"mock": {"type": "mock", "default_model": "fast"},
                                      "mock2": {"type": "mock", "default_model": "fast"}},
                                     default="mock"))
    before = {p: sample("streamproxy_retries_total", provider=p) for p in ("mock", "mock2")}
    retry = {"attempts": 2, "use_retry_after_header": False}
    config = {"strategy": {"mode": "fallback"}, "targets": [
        {"provider": "mock", "override_params": {"model": "fast:status=503"}, "retry": retry},
        {"provider": "mock2", "override_params": {"model": "fast:tokens=2"}}]}
    resp = await client.post("/v1/chat/completions", headers={"x-portkey-config": json.dumps(
        config)}, json={"messages": [{"role": "user", "content": "x"}]})
    assert resp.status == 200
    assert access_log()[-1]["attempts"] == 4  # 1 try + 2 retries, then 1 fallback
    assert resp.headers["x-portkey-retry-attempt-count"] == "0"  # the fallback's own
    assert sample("streamproxy_retries_total", provider="mock") == before["mock"] + 2
    assert sample("streamproxy_retries_total", provider="mock2") == before["mock2"]


async def test_fallbacks_count_against_the_provider_left_not_the_last(
        proxy: Any, access_log: Any) -> None:
    """A→B→C: one fallback from A, one from B, none from C (labelled with the final provider,
    C counted 2 and a fallback reaching a refusal counted on provider="")."""
    names = ("mock", "mock2", "mock3")
    client = await proxy(make_config({n: {"type": "mock", "default_model": "fast"}
                                      for n in names}, default="mock"))
    before = {p: sample("streamproxy_fallbacks_total", provider=p) for p in (*names, "")}
    config = {"strategy": {"mode": "fallback"}, "targets": [
        {"provider": "mock", "override_params": {"model": "fast:status=503"}},
        {"provider": "mock2", "override_params": {"model": "fast:status=502"}},
        {"provider": "mock3", "override_params": {"model": "fast:tokens=2"}}]}
    resp = await client.post("/v1/chat/completions", headers={"x-portkey-config": json.dumps(
        config)}, json={"messages": [{"role": "user", "content": "x"}]})
    assert resp.status == 200
    assert access_log()[-1]["fallbacks"] == 2
    assert sample("streamproxy_fallbacks_total", provider="mock") == before["mock"] + 1
    assert sample("streamproxy_fallbacks_total", provider="mock2") == before["mock2"] + 1
    assert sample("streamproxy_fallbacks_total", provider="mock3") == before["mock3"]
    assert sample("streamproxy_fallbacks_total", provider="") == before[""]
    unmatched = {"strategy": {"mode": "conditional",
                              "conditions": [{"query": {"metadata.tier": "gold"},
                                              "then": "gold"}]},
                 "targets": [{"name": "gold", "provider": "mock2"}]}
    config = {"strategy": {"mode": "fallback"}, "targets": [
        {"provider": "mock", "override_params": {"model": "fast:status=503"}}, unmatched]}
    resp = await client.post("/v1/chat/completions", headers={"x-portkey-config": json.dumps(
        config)}, json={"messages": [{"role": "user", "content": "x"}]})
    assert resp.status == 400  # the conditional's refusal, reached by the fallback
    assert sample("streamproxy_fallbacks_total", provider="mock") == before["mock"] + 2
    assert sample("streamproxy_fallbacks_total", provider="") == before[""]


def test_request_duration_is_apart_per_status() -> None:
    """During an outage a provider's fast errors (a 502 in milliseconds) fell in the same
    series as its streams, pulling the stream-duration quantiles down as if it were faster."""
    m = metrics()
    lbl = {"provider": "dur-status", "model": "m", "stream": "true"}
    for status, seconds in ((200, 30.0), (502, 0.01), (502, 0.02)):
        r = RequestRecord(trace_id="t", provider="dur-status", model="m", stream=True,
                          status=status)
        r.finished = r.started + seconds
        m.observe(r)
    name = "streamproxy_request_duration_seconds"
    assert sample(f"{name}_count", **lbl, status="200") == 1
    assert sample(f"{name}_sum", **lbl, status="200") == pytest.approx(30.0)
    assert sample(f"{name}_count", **lbl, status="502") == 2
    assert sample(f"{name}_bucket", **lbl, status="502", le="0.1") == 2


def test_histogram_buckets_match_prometheus_clients_own_observe() -> None:
    """The observer feeds histogram values directly (bisection); every bucket, the boundaries
    included, must hold what prometheus-client's `Histogram.observe` would put there."""
    from prometheus_client import CollectorRegistry, Histogram

    from streamproxy.observe.metrics import DURATION_BUCKETS

    reference = Histogram("ref_duration", "", buckets=DURATION_BUCKETS,
                          registry=CollectorRegistry())
    durations = [0.0, 0.05, 0.1, 0.1000001, 0.25, 1.0, 7.0, 1200.0, 5000.0]
    for d in durations:
        r = RequestRecord(trace_id="t", provider="hist", model="h", stream=False)
        r.finished = r.started + d
        metrics().observe(r)
        reference.observe(r.duration)
    for bound in (*(str(float(b)) for b in DURATION_BUCKETS), "+Inf"):
        ours = sample("streamproxy_request_duration_seconds_bucket", provider="hist", model="h",
                      stream="false", status="200", le=bound)
        theirs = reference.collect()[0].samples
        expected = next(s.value for s in theirs
                        if s.name == "ref_duration_bucket" and s.labels["le"] == bound)
        assert ours == expected, bound
    assert sample("streamproxy_request_duration_seconds_count", provider="hist", model="h",
                  stream="false", status="200") == len(durations)


def test_odd_usage_from_a_passthrough_provider_is_ignored() -> None:
    r = RequestRecord(trace_id="t", provider="rec-odd", model="m",
                      usage={"prompt_tokens": "12", "completion_tokens": True,
                             "prompt_tokens_details": 3})
    metrics().observe(r)  # must not raise
    assert sample("streamproxy_tokens_total", provider="rec-odd", model="m", type="input") == 0
    metrics().observe(RequestRecord(trace_id="t", provider="rec-odd", usage=7))  # type: ignore


def test_model_labels_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    m = metrics()
    # The cap is the process's: filled here and kept, it turned later tests' models "other".
    monkeypatch.setattr(m, "_models", set())
    labels = {m.model_label(f"cap-model-{i}") for i in range(MAX_MODEL_LABELS + 50)}
    assert "other" in labels
    assert len(labels) <= MAX_MODEL_LABELS + 1
    assert m.model_label("x" * 500) in ("x" * 100, "other")


async def test_configured_models_are_not_crowded_out_by_clients_models(
        default_proxy: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    client = await default_proxy()  # the embedded default lists mock's models: fast, slow, …
    m = metrics()
    monkeypatch.setattr(m, "_models", set())  # (the cap is the process's: not kept full)
    for i in range(MAX_MODEL_LABELS + 1):
        m.model_label(f"crowd-{i}")
    assert m.model_label("crowd-x") == "other"
    resp = await client.post("/v1/chat/completions", json={
        "model": "mock/slow", "messages": [{"role": "user", "content": "x"}]})
    assert resp.status == 200
    assert sample("streamproxy_requests_total", provider="mock", model="slow", status="200",
                  stream="false") >= 1


def test_circuit_state() -> None:
    set_circuit_state("openai/gpt-4o", "open")
    assert sample("streamproxy_circuit_breaker_state", target="openai/gpt-4o", cb_config="") == 2
    set_circuit_state("openai/gpt-4o", "half_open")
    assert sample("streamproxy_circuit_breaker_state", target="openai/gpt-4o", cb_config="") == 1
    set_circuit_state("openai/gpt-4o", "closed")
    assert sample("streamproxy_circuit_breaker_state", target="openai/gpt-4o", cb_config="") == 0
    with pytest.raises(ValueError):
        set_circuit_state("openai/gpt-4o", "ajar")
    set_circuit_state("p|m|https://user:pw@llm.internal/v1", "open")
    assert sample("streamproxy_circuit_breaker_state", target="p|m|https://llm.internal/v1",
                  cb_config="") == 2
    # An '@' in the password (urlsplit and yarl read the host after the last one): no part of
    # it in the label.
    set_circuit_state("p|m|https://user:p@ss-SECRET@llm.internal/v2", "open")
    assert sample("streamproxy_circuit_breaker_state", target="p|m|https://llm.internal/v2",
                  cb_config="") == 2
    # A '|' in the password (the key's own separator; split_userinfo sends it as Basic auth)
    set_circuit_state("p|m|https://user:p|ss-SECRET@llm.internal/v3", "open")
    assert sample("streamproxy_circuit_breaker_state", target="p|m|https://llm.internal/v3",
                  cb_config="") == 2


@pytest.mark.parametrize(("kind", "options", "host"), [
    ("bedrock", {"region": "us-east-1", "api_key": "k"},
     "vpce-1.bedrock-runtime.us-east-1.vpce.amazonaws.com"),
    ("vertex", {"project": "p", "location": "us-east5", "token_env": "SP_UNSET"},
     "vertex.corp.example"),
])
@pytest.mark.parametrize("userinfo", ["", "alice:pw-SECRET@"])
def test_a_regional_breakers_label_keeps_its_host(kind: str, options: dict[str, str],
                                                  host: str, userinfo: str) -> None:
    """A regional type's breaker key is its base URL and its region: the credentials' mask
    read the `@` before the region as the end of a user info, and the host went with it
    (`https://us-east-1`: a VPC endpoint's breaker no longer said which)."""
    from streamproxy.routing.planner import Attempt
    from streamproxy.routing.target import Target
    from streamproxy.server.app import build_providers

    config = make_config({"up": {"type": kind, "base_url": f"https://{userinfo}{host}",
                                 "default_model": "m", **options}}, default="up")
    key = Attempt(Target(build_providers(config)["up"], f"m-{kind}-{len(userinfo)}"),
                  "").breaker_key
    set_circuit_state(key, "open")
    labels = [s.labels["target"] for s in metric_samples("streamproxy_circuit_breaker_state")
              if s.labels["target"].startswith(f"up|m-{kind}-{len(userinfo)}|")]
    assert len(labels) == 1
    assert f"https://{host}" in labels[0] and "SECRET" not in labels[0]


def test_circuit_targets_are_capped() -> None:
    """A client's config names the model in a breaker's key, and its cb_config the rules:
    10k models or cooldowns must not make 10k series."""
    m = metrics()
    exported = set(m._circuit_targets)
    try:
        for i in range(MAX_CIRCUIT_LABELS + 50):
            set_circuit_state(f"mock|cap-{i}|", "open")
            set_circuit_state("mock|cap|", "open", None, f"cooldown_interval={i}")
        series = {tuple(s.labels.values())
                  for s in metric_samples("streamproxy_circuit_breaker_state")}
        # (the clients' inline configs' breakers, made by other tests, are capped apart)
        assert len(series - m._client_circuit_targets) <= MAX_CIRCUIT_LABELS
        set_circuit_state("openai/gpt-4o", "closed")  # a target already exported still changes
        assert sample("streamproxy_circuit_breaker_state", target="openai/gpt-4o",
                      cb_config="") == 0
    finally:  # (the other tests' breakers exported as before: the cap is per process)
        for target, rules in m._circuit_targets - exported:
            m.circuit.remove(target, rules)
        m._circuit_targets = exported


def test_client_made_breakers_cannot_crowd_the_operators_out_of_the_gauge() -> None:
    """One cap for all: a client's 100 inline cb_configs (each a breaker of its own, opened by
    a bad request of its own) took every series, and the operator's breaker opening later was
    never reported. The clients' breakers are capped apart."""
    from streamproxy.routing.breaker import CircuitBreakers
    from streamproxy.routing.portkey_config import BreakerSpec

    m = metrics()
    exported, clients = set(m._circuit_targets), set(m._client_circuit_targets)
    breakers = CircuitBreakers(clock=lambda: 0.0)
    breakers.listeners.append(set_circuit_state)
    try:
        for i in range(MAX_CIRCUIT_LABELS + 50):
            breakers.record("mock|flood|", BreakerSpec(
                failure_threshold=1, cooldown_interval=1 + i,
                failure_status_codes=frozenset({404}), client=True), 404)
        assert len(m._client_circuit_targets) == MAX_CIRCUIT_LABELS
        breakers.record("mock|operators|", BreakerSpec(failure_threshold=1,
                                                       cooldown_interval=600), 500)
        assert sample("streamproxy_circuit_breaker_state", target="mock|operators|",
                      cb_config="failure_threshold=1,cooldown_interval=600000") == 2
    finally:  # (the other tests' breakers exported as before: the cap is per process)
        for target, rules in (m._circuit_targets - exported) | (
                m._client_circuit_targets - clients):
            m.circuit.remove(target, rules)
        m._circuit_targets, m._client_circuit_targets = exported, clients


def test_one_targets_breakers_under_other_rules_are_apart_series() -> None:
    """Breakers are kept per target and cb_config: the gauge, labelled by the target alone,
    showed whichever changed last — a client's inline config closing its own breaker on the
    target read as the operator's open one closed. Each is now its own series, its rules in
    the cb_config label (Portkey's names; the cooldown in ms as given)."""
    from streamproxy.routing.breaker import CircuitBreakers
    from streamproxy.routing.portkey_config import BreakerSpec

    now = [0.0]
    breakers = CircuitBreakers(clock=lambda: now[0])
    breakers.listeners.append(set_circuit_state)
    operator = BreakerSpec(failure_threshold=1, cooldown_interval=600)
    client = BreakerSpec(failure_threshold=2, cooldown_interval=0.001,
                         failure_status_codes=frozenset({500, 400}))
    key = "openai/gpt-4o"  # (exported, whatever the cap test ran before)
    breakers.record(key, operator, 503)
    breakers.record(key, client, 400)
    breakers.record(key, client, 400)  # (open)
    breakers.record(key, client, None)  # (open: no change)
    name = "streamproxy_circuit_breaker_state"
    assert sample(name, target=key,
                  cb_config="failure_threshold=1,cooldown_interval=600000") == 2
    assert sample(name, target=key, cb_config="failure_threshold=2,cooldown_interval=1,"
                                              "failure_status_codes=400 500") == 2
    now[0] = 1  # (the client's half-open: its trial closes it)
    breakers.record(key, client, None)
    assert sample(name, target=key, cb_config="failure_threshold=2,cooldown_interval=1,"
                                              "failure_status_codes=400 500") == 0
    assert sample(name, target=key,
                  cb_config="failure_threshold=1,cooldown_interval=600000") == 2
    pct = BreakerSpec(failure_threshold_percentage=12.5, minimum_requests=4,
                      cooldown_interval=30)
    breakers.record(key, pct, 500)  # (1 of 1, under minimum_requests)
    for _ in range(3):
        breakers.record(key, pct, 500)
    assert sample(name, target=key, cb_config="failure_threshold_percentage=12.5,"
                                              "minimum_requests=4,cooldown_interval=30000") == 2


def test_long_labels_that_share_their_start_stay_apart_series() -> None:
    """Labels are cut to MAX_LABEL_CHARS, and a cut one kept only its first 100 characters: an
    operator's breaker and a client's on one target, under rules that differ past them (the
    failure_status_codes of a percentage rule), showed as one series, whichever changed last —
    the open one read closed. So did two long model names (Vertex's resource paths) with one
    start: their requests were counted as one model's."""
    from streamproxy.routing.breaker import rules_label
    from streamproxy.routing.portkey_config import BreakerSpec

    codes = frozenset({429, 500, 502, 503, 504})
    operator = rules_label(BreakerSpec(failure_threshold_percentage=50, minimum_requests=10,
                                       cooldown_interval=60, failure_status_codes=codes))
    client = rules_label(BreakerSpec(failure_threshold_percentage=50, minimum_requests=10,
                                     cooldown_interval=60,
                                     failure_status_codes=codes | {529}))
    assert operator[:MAX_LABEL_CHARS] == client[:MAX_LABEL_CHARS]
    target = "mock|long-rules|"
    set_circuit_state(target, "open", None, operator)
    set_circuit_state(target, "closed", None, client)
    states = {s.labels["cb_config"]: s.value
              for s in metric_samples("streamproxy_circuit_breaker_state")
              if s.labels["target"] == target}
    assert sorted(states.values()) == [0, 2]
    assert all(len(label) <= MAX_LABEL_CHARS for label in states)
    assert all(label.startswith(operator[:80]) for label in states)

    m = metrics()
    path = ("projects/a-fairly-long-project-name-0123/locations/us-central1/publishers/google/"
            "models/")
    pro, flash = m.model_label(path + "gemini-2.5-pro"), m.model_label(path + "gemini-2.5-flash")
    assert pro != flash and len(pro) <= MAX_LABEL_CHARS and len(flash) <= MAX_LABEL_CHARS
    assert m.model_label(path + "gemini-2.5-pro") == pro  # the same model: the same label
    short = "gemini-2.5-pro"
    assert m.model_label(short) == short  # (a label within the limit is the name itself)


async def test_circuit_breakers_report_their_changes(default_proxy: Any) -> None:
    client = await default_proxy()
    assert set_circuit_state in client.server.app[STATE].breakers.listeners


async def test_deadline_tracks_read_gaps_without_a_timer_per_read() -> None:
    deadline = Deadline(Timeouts(first_token=30, idle=30), "p")
    assert deadline.gap_stats() == (0, None, None)
    deadline.first_event()
    for pause in (0.0, 0.05, 0.0):
        await asyncio.sleep(pause)
        deadline.progress()
    reads, gap_max, gap_mean = deadline.gap_stats()
    deadline.cancel()
    assert reads == 3
    assert gap_max is not None and gap_mean is not None
    assert 0.04 <= gap_max < 5
    assert gap_mean <= gap_max


async def test_read_gaps_include_the_waits_for_a_slow_client() -> None:
    """While a slow client holds the stream its reads pause (the idle deadline does not run):
    that wait is in the gap between two reads, as documented, for the max as for the mean.
    The max left it out and the mean did not, so a slow client's stream read a mean gap
    larger than its max."""
    deadline = Deadline(Timeouts(first_token=30, idle=30), "p")
    deadline.first_event()
    for _ in range(2):
        await asyncio.sleep(0.01)  # the provider's own gap
        deadline.progress()
        deadline.hold()  # the client's buffer is full
        await asyncio.sleep(0.15)
        deadline.release()
    deadline.progress()
    reads, gap_max, gap_mean = deadline.gap_stats()
    deadline.cancel()
    assert reads == 3 and gap_max is not None and gap_mean is not None
    assert gap_max >= 0.15
    assert gap_mean <= gap_max


MULTIPROCESS_SCRIPT = textwrap.dedent("""
    import os, sys
    import prometheus_client  # imported before the env is set: metrics() must still comply
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
    from prometheus_client import multiprocess
    from streamproxy.observe.metrics import metrics, render, set_circuit_state
    from streamproxy.record import RequestRecord

    def one():
        metrics().observe(RequestRecord(trace_id="t", provider="mp", model="m", stream=True))

    one()
    set_circuit_state("down", "open", None, "failure_threshold=1,cooldown_interval=1000")
    pid = os.fork()
    if pid == 0:  # a second worker
        one()
        metrics().active_streams.inc()
        set_circuit_state("down", "closed", None,  # a later change of the shared breaker
                          "failure_threshold=1,cooldown_interval=1000")
        set_circuit_state("down", "open", None, "failure_threshold=2,cooldown_interval=1000")
        os._exit(0)
    os.waitpid(pid, 0)
    print(render().decode())
    print("---")
    multiprocess.mark_process_dead(pid)  # the master's job when a worker exits
    print(render().decode())
""")


def test_multiprocess_mode_aggregates_workers(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", MULTIPROCESS_SCRIPT, str(tmp_path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    live, _, after = proc.stdout.partition("---")
    line = 'streamproxy_requests_total{model="m",provider="mp",status="200",stream="true"}'
    assert f"{line} 2.0" in live  # both processes' samples, from either one
    assert "streamproxy_active_streams 1.0" in live
    # The workers share the breakers: the latest change is the state, whoever made it; the
    # target's breaker under other rules is another series.
    gauge = "streamproxy_circuit_breaker_state"
    assert (f'{gauge}{{cb_config="failure_threshold=1,cooldown_interval=1000",target="down"}} '
            '0.0') in live
    assert (f'{gauge}{{cb_config="failure_threshold=2,cooldown_interval=1000",target="down"}} '
            '2.0') in live
    assert "streamproxy_active_streams 0.0" in after  # livesum drops the dead worker


RETIRE_SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
    from streamproxy.observe.metrics import metrics, render, retire_process
    from streamproxy.record import RequestRecord

    for generation in range(3):  # as reloads: two workers each, then they exit
        pids = []
        for _ in range(2):
            pid = os.fork()
            if pid == 0:
                metrics().observe(RequestRecord(trace_id="t", provider="mp", model="m",
                                                stream=True))
                os._exit(0)
            pids.append(pid)
        for pid in pids:
            os.waitpid(pid, 0)
            retire_process(pid)  # the master's job when a worker exits
        print(sorted(f for f in os.listdir(sys.argv[1]) if f.endswith(".db")))
    print(render().decode())
""")


def test_exited_workers_files_are_summed_into_one_not_kept_each(tmp_path: Path) -> None:
    """Six workers over three generations: their counts stay in the totals, and the directory
    holds one file per kind (it held two more per worker ever started: a scrape read them all,
    ~4 MB of histograms each, for the master's life)."""
    proc = subprocess.run([sys.executable, "-c", RETIRE_SCRIPT, str(tmp_path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == lines[1] == lines[2] == "['counter_retired.db', 'histogram_retired.db']"
    line = 'streamproxy_requests_total{model="m",provider="mp",status="200",stream="true"}'
    assert f"{line} 6.0" in proc.stdout
    assert 'streamproxy_request_duration_seconds_count{model="m",provider="mp",' in proc.stdout


CIRCUIT_RETIRE_SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
    from streamproxy.observe.metrics import render, retire_process, set_circuit_state

    rules = "failure_threshold=1,cooldown_interval=600000"
    for generation in range(3):  # as reloads or replaced workers: each one's exits
        pid = os.fork()
        if pid == 0:  # the worker that saw the shared breakers change
            set_circuit_state(f"down-{generation}", "open", None, rules)
            if generation == 2:
                set_circuit_state("down-0", "open", None, rules)
            os._exit(0)
        os.waitpid(pid, 0)
        retire_process(pid)  # the master's job when a worker exits
        print(sorted(f for f in os.listdir(sys.argv[1]) if f.startswith("gauge_mostrecent")))
    set_circuit_state("down-1", "closed", None, rules)  # a later change, by a live worker
    print(render().decode())
""")


def test_an_open_breaker_stays_exported_after_the_worker_that_opened_it_exits(
        tmp_path: Path) -> None:
    """The gauge was `livemostrecent`: when the only worker that set a breaker's state exited,
    its series went, though the breaker is still open in the table the workers share (and a
    reload's workers do not report it again until it changes). The latest change stays, in one
    retired file, until a later change by any worker."""
    proc = subprocess.run([sys.executable, "-c", CIRCUIT_RETIRE_SCRIPT, str(tmp_path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == lines[1] == lines[2] == "['gauge_mostrecent_retired.db']"
    gauge = 'streamproxy_circuit_breaker_state{cb_config="failure_threshold=1,' \
        'cooldown_interval=600000",target="down-%s"}'
    assert f"{gauge % 0} 2.0" in proc.stdout
    assert f"{gauge % 1} 0.0" in proc.stdout  # (the live worker's later change)
    assert f"{gauge % 2} 2.0" in proc.stdout


HALF_OPEN_SCRIPT = textwrap.dedent("""
    import asyncio, os, sys
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
    from streamproxy.observe.metrics import metrics, render, retire_process, set_circuit_state

    rules = {"short": "failure_threshold=1,cooldown_interval=1",
             "long": "failure_threshold=1,cooldown_interval=600000"}

    async def saw_them_open():  # and exits before its half-open timers fire (a reload)
        for name, rule in rules.items():
            cooldown = float(rule.rsplit("=", 1)[1]) / 1000
            set_circuit_state(f"down-{name}", "open", cooldown, rule)
        os._exit(0)

    async def started_later():  # a reload's worker: its metrics are made with its app
        metrics()
        for _ in range(10):  # (the short cooldown has long ended: its timer is due now)
            await asyncio.sleep(0.01)
        print(render().decode())
        os._exit(0)

    for worker in (saw_them_open, started_later):
        pid = os.fork()
        if pid == 0:
            asyncio.run(worker())
        os.waitpid(pid, 0)
        retire_process(pid)
""")


def test_an_open_breaker_turns_half_open_after_the_worker_that_opened_it_exits(
        tmp_path: Path) -> None:
    """Only the worker that saw a breaker open had the timer that shows it half-open: when it
    exited (a reload), the gauge said open (2) for good, until a request reached the target
    (a fallback's target, used only when its primary fails, may see none for days)."""
    proc = subprocess.run([sys.executable, "-c", HALF_OPEN_SCRIPT, str(tmp_path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    gauge = 'streamproxy_circuit_breaker_state{cb_config="failure_threshold=1,' \
        'cooldown_interval=%s",target="down-%s"}'
    assert f"{gauge % ('1', 'short')} 1.0" in proc.stdout
    assert f"{gauge % ('600000', 'long')} 2.0" in proc.stdout  # (still cooling down)


MODELS_SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
    from streamproxy.observe.metrics import MAX_MODEL_LABELS, metrics, render, retire_process
    from streamproxy.record import RequestRecord

    for generation in range(3):  # as reloads: two workers each, then they exit
        pids = []
        for worker in range(2):
            pid = os.fork()
            if pid == 0:  # clients naming models of their own, more than the cap
                for n in range(MAX_MODEL_LABELS + 50):
                    metrics().observe(RequestRecord(trace_id="t", provider="mp", stream=True,
                                                    model=f"g{generation}-w{worker}-{n}"))
                os._exit(0)
            pids.append(pid)
        for pid in pids:
            os.waitpid(pid, 0)
            retire_process(pid)  # the master's job when a worker exits
    print(render().decode())
""")


def test_reloads_do_not_add_model_series_past_the_cap(tmp_path: Path) -> None:
    """Each worker capped the models it exported at 100, but a reload's (or a replacement's)
    workers started with none: each generation added 100 per worker, kept for good in the
    retired files — the series grew with every SIGHUP. A worker now counts those the
    directory already holds."""
    proc = subprocess.run([sys.executable, "-c", MODELS_SCRIPT, str(tmp_path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    models = set(re.findall(r'^streamproxy_requests_total\{model="([^"]*)"', proc.stdout,
                            re.MULTILINE))
    assert "other" in models
    assert {m.split("-")[0] for m in models - {"other"}} == {"g0"}  # the first generation's
    assert len(models) <= 2 * MAX_MODEL_LABELS + 1
    total = sum(float(v) for v in re.findall(r"^streamproxy_requests_total\{.*\} (\S+)$",
                                             proc.stdout, re.MULTILINE))
    assert total == 3 * 2 * (MAX_MODEL_LABELS + 50)  # every request still counted


@pytest.mark.parametrize(("ttft", "bucket"), [
    (0.0004, "0.001"),  # the proxy's own answer (a mock, a cache hit): sub-millisecond
    (0.008, "0.01"),
    (400.0, "600.0"),  # late, within the default first_token timeout (600 s)
])
def test_ttft_buckets_tell_the_proxy_s_own_times_and_the_slowest_first_tokens(
        ttft: float, bucket: str) -> None:
    """The buckets went from 50 ms to 120 s: every answer of the proxy's own fell in the
    first, and every first token later than 2 minutes in +Inf alone."""
    r = RequestRecord(trace_id="t", provider="ttft-b", model="m", stream=True, status=200)
    r.first_byte = r.first_token = r.started + ttft
    r.finished = r.first_byte + 1
    name, lbl = "streamproxy_time_to_first_token_seconds_bucket", {"provider": "ttft-b",
                                                                  "model": "m"}
    before = sample(name, **lbl, le=bucket)
    metrics().observe(r)
    assert sample(name, **lbl, le=bucket) == before + 1


@pytest.mark.parametrize(("gap", "bucket"), [
    (90.0, "120.0"),  # a long silence, as reasoning models keep mid-stream
    (Timeouts().idle, "300.0"),  # the final gap of a stream the default idle timeout cut
])
def test_gap_buckets_reach_the_default_idle_timeout(gap: float, bucket: str) -> None:
    """The gap buckets ended at 60 s, the idle timeout's default is 300 s: every gap from a
    minute to the timeout fell in +Inf together, and histogram_quantile read each as 60 s."""
    r = RequestRecord(trace_id="t", provider="gap-b", model="m", stream=True, status=200)
    r.first_byte = r.first_token = r.started + 0.5
    r.finished = r.first_byte + gap
    r.gap_max, r.gap_mean = gap, gap
    lbl = {"provider": "gap-b", "model": "m"}
    names = ("streamproxy_stream_max_gap_seconds_bucket",
             "streamproxy_stream_mean_gap_seconds_bucket")
    before = [sample(name, **lbl, le=bucket) for name in names]
    metrics().observe(r)
    assert [sample(name, **lbl, le=bucket) for name in names] == [n + 1 for n in before]


def test_the_ttft_help_says_first_token_not_first_chunk() -> None:
    """The HELP line (what Prometheus' and Grafana's metric browsers show) said "to first
    chunk sent": a stream that commits on a role chunk alone counts on to its first token,
    which is what the histogram measures (operations.md)."""
    help_text = metrics().ttft.describe()[0].documentation
    assert "first token" in help_text
    assert "first chunk" not in help_text


async def test_the_circuit_gauge_turns_half_open_when_the_cooldown_ends() -> None:
    """Open → half-open happens by time alone, with no record to report it: the gauge read 2
    (open) until a trial request closed or reopened the breaker, never 1."""
    from streamproxy.routing.breaker import CircuitBreakers, rules_label
    from streamproxy.routing.portkey_config import BreakerSpec

    breakers = CircuitBreakers()
    breakers.listeners.append(set_circuit_state)
    spec = BreakerSpec(failure_threshold=1, cooldown_interval=0.1)
    key = "openai/gpt-4o"  # (exported, whatever the cap test ran before)

    def gauge() -> float:
        return sample("streamproxy_circuit_breaker_state", target=key,
                      cb_config=rules_label(spec))

    async def half_open() -> None:
        for _ in range(200):  # bounded: 2 s
            await asyncio.sleep(0.01)
            if gauge() == 1:
                break
        assert gauge() == 1 and breakers.state(key, spec) == "half_open"

    breakers.record(key, spec, 503)
    assert gauge() == 2
    await half_open()
    breakers.record(key, spec, 503)  # the trial failed: open again, for another cooldown
    breakers.record(key, spec, None)  # (a success while open does not count)
    assert gauge() == 2
    await half_open()
    breakers.record(key, spec, None)  # the trial succeeded
    assert gauge() == 0
    await asyncio.sleep(0.2)  # no timer left to turn it half-open
    assert gauge() == 0


@pytest.mark.parametrize("stream", [True, False])
async def test_a_cache_hit_is_not_in_the_providers_latency(proxy: Any, stream: bool) -> None:
    """A hit answers from the proxy in a millisecond, in the provider's name: its TTFT and
    duration in the provider's histograms pulled that provider's latency down (a 50 % hit
    rate halved its apparent p50). It counts as a request, and as a HIT."""
    client = await proxy(make_config({"mock": {"type": "mock", "default_model": "hits"}},
                                     default="mock"))
    lbl = {"provider": "mock", "model": "hits"}
    s = "true" if stream else "false"

    def counts() -> tuple[float, ...]:
        return (sample("streamproxy_time_to_first_token_seconds_count", **lbl),
                sample("streamproxy_request_duration_seconds_count", **lbl, stream=s,
                       status="200"),
                sample("streamproxy_requests_total", **lbl, status="200", stream=s),
                sample("streamproxy_cache_requests_total", status="HIT"))

    before = counts()
    cache = {"x-portkey-config": json.dumps({"cache": {"mode": "simple"}})}
    for expected in ("MISS", "HIT"):
        resp = await client.post("/v1/chat/completions", headers=cache, json={
            "model": "mock/hits", "stream": stream,
            "messages": [{"role": "user", "content": "x"}]})
        assert resp.status == 200 and await resp.read()
        assert resp.headers["x-portkey-cache-status"] == expected
        await client.server.app[FEATURES].cache.drain()
    ttft, duration, requests, hits = (a - b for a, b in zip(counts(), before, strict=True))
    assert (ttft, duration, requests, hits) == (1 if stream else 0, 1, 2, 1)


async def test_a_request_refused_before_its_body_was_read_is_neither_stream(
        proxy: Any, access_log: Any) -> None:
    """Its client may have asked for a stream: labelled stream="false", a dashboard's
    non-streamed error rate counted the refused streams (a 401, 429, 431, 413, a drain's
    503). Unknown: stream="" (as provider="" is), null in the log."""
    client = await proxy(make_config({"mock": {"type": "mock", "default_model": "fast"}},
                                     default="mock", server={"max_headers": 20}))
    labels = {"provider": "", "model": "", "status": "431"}
    before = {s: sample("streamproxy_requests_total", **labels, stream=s)
              for s in ("", "false")}
    resp = await client.post("/v1/chat/completions", headers={
        f"x-extra-{i}": "1" for i in range(30)}, json={
        "stream": True, "messages": [{"role": "user", "content": "x"}]})
    assert resp.status == 431
    assert sample("streamproxy_requests_total", **labels, stream="") == before[""] + 1
    assert sample("streamproxy_requests_total", **labels, stream="false") == before["false"]
    assert access_log()[-1]["stream"] is None


def test_reasoning_and_cache_write_tokens_are_counted() -> None:
    """Reasoning is billed as output, and a cache write above the input price: neither had a
    series, so a dashboard's cost left both out."""
    r = RequestRecord(trace_id="t", provider="rec-tokens", model="m1", stream=True,
                      usage={"prompt_tokens": 30, "completion_tokens": 9,
                             "prompt_tokens_details": {"cached_tokens": 4},
                             "cache_read_input_tokens": 4, "cache_creation_input_tokens": 20,
                             "completion_tokens_details": {"reasoning_tokens": 7}})
    r.finished = r.started + 1
    metrics().observe(r)
    lbl = {"provider": "rec-tokens", "model": "m1"}
    assert {t: sample("streamproxy_tokens_total", **lbl, type=t) for t in (
        "input", "output", "cached", "cache_write", "reasoning")} == {
        "input": 30, "output": 9, "cached": 4, "cache_write": 20, "reasoning": 7}
    entry = access_entry(r)
    assert (entry["cache_write_tokens"], entry["reasoning_tokens"]) == (20, 7)


def test_cache_writes_named_in_prompt_tokens_details_are_counted() -> None:
    """OpenRouter's usage (the usage chunk of its docs) names a cache write only as
    `prompt_tokens_details.cache_write_tokens`, OpenAI's name, with no Anthropic-style
    `cache_creation_input_tokens` beside it: the client got the count, the dashboard and the
    access log must too."""
    r = RequestRecord(trace_id="t", provider="rec-tokens-or", model="m1", stream=True,
                      usage={"prompt_tokens": 194, "completion_tokens": 2, "total_tokens": 196,
                             "prompt_tokens_details": {"cached_tokens": 0,
                                                       "cache_write_tokens": 100,
                                                       "audio_tokens": 0},
                             "completion_tokens_details": {"reasoning_tokens": 0}})
    r.finished = r.started + 1
    metrics().observe(r)
    lbl = {"provider": "rec-tokens-or", "model": "m1"}
    assert sample("streamproxy_tokens_total", **lbl, type="cache_write") == 100
    assert access_entry(r)["cache_write_tokens"] == 100


PREVIOUS_RUN_SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
    from streamproxy.observe.metrics import metrics
    from streamproxy.record import RequestRecord

    metrics().observe(RequestRecord(trace_id="t", provider="old-run", model="m", stream=True))
    metrics().active_streams.inc()  # (killed mid-stream: its livesum gauge file stays)
""")


def test_serve_clears_a_previous_runs_samples_from_the_operators_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PROMETHEUS_MULTIPROC_DIR the operator gives persists across restarts (a volume, a
    fixed path in a unit file): the previous run's files were summed into every scrape, so
    the counters started where the last run left them (prometheus-client: wipe it between
    runs). serve removes prometheus-client's files from it at start, and nothing else."""
    from streamproxy.config import load_config
    from streamproxy.observe.metrics import render
    from streamproxy.server import workers

    subprocess.run([sys.executable, "-c", PREVIOUS_RUN_SCRIPT, str(tmp_path)], check=True,
                   timeout=60, cwd=ROOT)
    assert any(p.name.startswith("gauge_livesum_") for p in tmp_path.iterdir())
    (tmp_path / "README.txt").write_text("the operator's")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    scraped: list[str] = []
    monkeypatch.setattr(workers, "raise_fd_limit", lambda: None)
    monkeypatch.setattr(workers, "run_worker", lambda *_, **__: scraped.append(
        render().decode()) or 0)
    assert workers.run(None, load_config(None), "127.0.0.1", 0) == 0
    assert "old-run" not in scraped[0]
    assert "streamproxy_active_streams 1.0" not in scraped[0]
    assert {p.name for p in tmp_path.iterdir() if not p.name.startswith(".")} == {"README.txt"}


def test_metric_names_end_in_their_unit() -> None:
    """Prometheus' naming: the unit, plural, is the name's suffix, before a counter's _total
    (`node_network_receive_bytes_total`); the byte counters were streamproxy_bytes_in_total
    and streamproxy_bytes_out_total."""
    from prometheus_client import CollectorRegistry

    from streamproxy.observe.metrics import Metrics

    registry = CollectorRegistry()
    Metrics(registry)
    families = {f.name: f for f in registry.collect()}
    assert families, "no metric registered"
    for name in families:
        assert name.startswith("streamproxy_"), name
        for unit in ("bytes", "seconds"):
            if unit in name.split("_"):
                assert name.endswith(f"_{unit}"), name
    assert families["streamproxy_request_body_bytes"].type == "counter"
    assert families["streamproxy_response_body_bytes"].type == "counter"


def test_the_metrics_directory_is_one_running_instances_until_it_exits(tmp_path: Path) -> None:
    """Two instances given one PROMETHEUS_MULTIPROC_DIR: the second cleared the first's files
    at start. The first holds the directory now; once it is gone, the next one may start."""
    from streamproxy.config import ConfigError
    from streamproxy.observe.metrics import claim_directory

    first = claim_directory(str(tmp_path))
    held = rf"is in use by another streamproxy \(pid {os.getpid()}\)"
    with pytest.raises(ConfigError, match=held):
        claim_directory(str(tmp_path))
    os.close(first)  # (its processes exited, however: the kernel lets the lock go)
    os.close(claim_directory(str(tmp_path)))


@pytest.mark.parametrize("model", ["fast:tokens=2", "mock/fast:tokens=2", "@mock/fast:tokens=2"])
async def test_models_the_operators_configs_ask_for_are_not_crowded_out(
        proxy: Any, monkeypatch: pytest.MonkeyPatch, model: str) -> None:
    """A named config's target (a `routes:` alias runs it) asks for a model no provider's
    `models:` lists: it was a client model, and a client cycling 100 names turned the
    operator's own routed traffic into `model="other"`."""
    config = make_config({"mock": {"type": "mock", "default_model": "fast"}}, default="mock",
                         configs={"smart": {"strategy": {"mode": "fallback"}, "targets": [
                             {"provider": "mock", "override_params": {"model": model}}]}},
                         routes={"smart": "smart"})
    client = await proxy(config)
    m = metrics()
    monkeypatch.setattr(m, "_models", set())  # (the cap is the process's: not kept full)
    for i in range(MAX_MODEL_LABELS + 1):
        m.model_label(f"crowd-op-{i}")
    assert m.model_label("crowd-op-x") == "other"
    before = sample("streamproxy_requests_total", provider="mock", model="fast:tokens=2",
                    status="200", stream="false")
    resp = await client.post("/v1/chat/completions", json={
        "model": "smart", "messages": [{"role": "user", "content": "x"}]})
    assert resp.status == 200
    assert sample("streamproxy_requests_total", provider="mock", model="fast:tokens=2",
                  status="200", stream="false") == before + 1
