"""The pure side of gateway controls: config validation, planning, conditions, breakers,
retry timing — no sockets."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from streamproxy.errors import InvalidRequest
from streamproxy.routing.breaker import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    CircuitBreakers,
    Trial,
    _rules,
)
from streamproxy.routing.conditions import matches, validate_query
from streamproxy.routing.planner import plan
from streamproxy.routing.portkey_config import BreakerSpec, ConfigNode, parse_config
from streamproxy.routing.retry import RETRY_AFTER_CAP, RETRY_WAIT_BUDGET, retry_delay
from streamproxy.routing.target import Target
from streamproxy.server.shared_breakers import SharedBreakerTable, SharedCircuitBreakers
from tests.helpers import Clock


class FakeProvider:
    def __init__(self, name: str) -> None:
        self.name = name
        self.cfg = type("Cfg", (), {"base_url": None, "default_model": None})()
        self.endpoint = ""


def resolver(leaf: ConfigNode) -> Target:
    return Target(provider=FakeProvider(leaf.provider or "p"),  # type: ignore[arg-type]
                  model=leaf.override_params.get("model"))


def names(p: Any) -> list[str]:
    return [a.target.provider.name for a in p.attempts]


def make(raw: dict[str, Any], seed: int = 0, breakers: CircuitBreakers | None = None,
         **kw: Any) -> Any:
    return plan(parse_config(raw), resolver, rng=random.Random(seed),
                breakers=breakers or CircuitBreakers(), **kw)


# -- validation ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "param"), [
    ({"strategy": {"mode": "roundrobin"}, "targets": [{"provider": "a"}]}, "config.strategy.mode"),
    ({"strategy": {"mode": "fallback"}, "targets": []}, "config.targets"),
    ({"strategy": {"mode": "loadbalance"}, "targets": [{"provider": "a", "weight": -1}]},
     "config.targets[0].weight"),
    ({"strategy": {"mode": "loadbalance"},  # YAML's .nan: a finite number is required
      "targets": [{"provider": "a", "weight": float("nan")}]}, "config.targets[0].weight"),
    ({"strategy": {"mode": "loadbalance"}, "targets": [
        {"provider": "a", "weight": float("inf")}, {"provider": "b"}]}, "config.targets[0].weight"),
    ({"provider": "a", "request_timeout": float("inf")}, "config.request_timeout"),
    ({"strategy": {"mode": "fallback"}, "targets": [
        {"provider": "a", "override_params": {"stream": False}}]},
     "config.targets[0].override_params.stream"),
    ({"strategy": {"mode": "fallback", "on_status_codes": ["500"]},
      "targets": [{"provider": "a"}]}, "config.strategy.on_status_codes"),
    ({"strategy": {"mode": "fallback"}, "targets": [{"provider": "a", "retry": {"attempts": 99}}]},
     "config.targets[0].retry.attempts"),
    ({"strategy": {"mode": "fallback"}, "targets": [{"provider": "a", "bogus": 1}]},
     "config.targets[0].bogus"),
    ({"strategy": {"mode": "conditional", "conditions": [{"query": {}, "then": "x"}]},
      "targets": [{"provider": "a", "name": "y"}]}, "config.strategy.conditions[0].then"),
    # a list or an object is no target's name (it raised a TypeError: a 500 for the header)
    ({"strategy": {"mode": "conditional", "conditions": [{"query": {}, "then": ["y"]}]},
      "targets": [{"provider": "a", "name": "y"}]}, "config.strategy.conditions[0].then"),
    ({"strategy": {"mode": "conditional", "conditions": [{"query": {}, "then": "y"}],
                   "default": {"name": "y"}},
      "targets": [{"provider": "a", "name": "y"}]}, "config.strategy.default"),
    ({"strategy": {"mode": "conditional", "conditions": [
        {"query": {"metadata.x": {"$near": 1}}, "then": "y"}]},
      "targets": [{"provider": "a", "name": "y"}]},
     "config.strategy.conditions[0].query.metadata.x.$near"),
    ({"strategy": {"mode": "fallback", "cb_config": {"cooldown_interval": 1000}},
      "targets": [{"provider": "a"}]}, "config.strategy.cb_config"),
    ({"provider": "a", "request_timeout": "soon"}, "config.request_timeout"),
    ({"targets": [{"provider": "a"}]}, "config.strategy"),
    # a target's cache, checked with the config: checked per request, a bad one was a 400
    # naming 'cache.mode' only when a draw or condition reached its target, and a named
    # config with one loaded and then refused every request
    ({"strategy": {"mode": "loadbalance"}, "targets": [
        {"provider": "a"}, {"provider": "b", "cache": {"mode": "semantic"}}]},
     "config.targets[1].cache.mode"),
    ({"provider": "a", "cache": {"max_age": 60}}, "config.cache.mode"),
    # as Portkey's gateway validates x-portkey-config (zod: cache an object, max_age a number)
    ({"provider": "a", "cache": {"mode": "simple", "max_age": "60"}}, "config.cache.max_age"),
    ({"provider": "a", "cache": "simple"}, "config.cache"),
    ({"provider": "a", "cache": {"mode": "simple", "max_age": 0}}, "config.cache.max_age"),
    ({"provider": "a", "cache": {"mode": "simple", "ttl": 60}}, "config.cache.ttl"),
    # store is consumed before routing and never forwarded: in a target it could not apply
    ({"strategy": {"mode": "fallback"}, "targets": [
        {"provider": "a", "override_params": {"store": True}}]},
     "config.targets[0].override_params.store"),
    # the answer's number of choices is the client's: the cache and storage read it from the
    # request, so a streamed n: 2 forced here was cached and stored as its choice 0 alone
    ({"strategy": {"mode": "fallback"}, "targets": [
        {"provider": "a", "override_params": {"n": 2}}]},
     "config.targets[0].override_params.n"),
    ({"provider": "a", "override_params": {"n": 1}}, "config.override_params.n"),
    # a model's name is never empty: "" sent the provider's default model in place of the
    # request's, where null keeps the request's
    ({"provider": "a", "override_params": {"model": ""}}, "config.override_params.model"),
    ({"strategy": {"mode": "fallback"}, "targets": [
        {"provider": "a", "override_params": {"model": " "}}]},
     "config.targets[0].override_params.model"),
    # nor has whitespace at an end, or a control character: sent as written (a provider's 404)
    ({"provider": "a", "override_params": {"model": "gpt-4o "}}, "config.override_params.model"),
    ({"provider": "a", "override_params": {"model": "oa/"}}, "config.override_params.model"),
    # OneLLM's routing fields are read from the body before routing: as overrides they went
    # upstream as they were (OpenAI answers an unknown argument with a 400)
    ({"provider": "a", "override_params": {"fallback_models": ["b/m"]}},
     "config.override_params.fallback_models"),
    ({"strategy": {"mode": "fallback"}, "targets": [
        {"provider": "a", "override_params": {"retries": 2}}]},
     "config.targets[0].override_params.retries"),
    ({"provider": "a", "override_params": {"fallback_config": {"max_fallbacks": 1}}},
     "config.override_params.fallback_config"),
    # an override goes on top of a checked body: a server tool's shape reached Anthropic's
    # translator unchecked (KeyError 'function': a 500); its type is OpenAI's 400
    ({"provider": "a", "override_params": {"tools": [
        {"type": "web_search_20250305", "name": "web_search"}]}},
     "config.override_params.tools[0].type"),
    ({"strategy": {"mode": "fallback"}, "targets": [
        {"provider": "a", "override_params": {"temperature": "hot"}}]},
     "config.targets[0].override_params.temperature"),
    ({"provider": "a", "override_params": {"messages": []}}, "config.override_params.messages"),
    # deeper than orjson writes (254 levels; a header of 620 bytes): its TypeError was a 500
    ({"provider": "a", "override_params": {"x": orjson.loads("[" * 300 + "]" * 300)}},
     "config.override_params"),
])
def test_invalid_configs_name_the_bad_field(raw: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_config(raw)
    assert info.value.param == param
    assert info.value.status == 400
    assert param in info.value.message


def test_overrides_that_need_a_request_field_are_checked_beside_it() -> None:
    """stream_options and top_logprobs need stream and logprobs, which the request brings."""
    root = parse_config({"provider": "a", "override_params": {
        "stream_options": {"include_usage": True}, "top_logprobs": 2, "max_tokens": 5}})
    assert root.override_params["top_logprobs"] == 2


def test_targets_inherit_retry_timeouts_and_merge_override_params() -> None:
    root = parse_config({
        "retry": {"attempts": 3}, "request_timeout": 2500,
        "override_params": {"temperature": 0.1, "max_tokens": 5},
        "strategy": {"mode": "fallback"},
        "targets": [{"provider": "a", "override_params": {"max_tokens": 9}},
                    {"provider": "b", "retry": {"attempts": 0}}]})
    a, b = root.targets
    assert a.retry.attempts == 3 and b.retry.attempts == 0
    assert a.timeouts == {"request": 2.5}  # Portkey's request_timeout: a 408 when it runs out
    assert a.override_params == {"temperature": 0.1, "max_tokens": 9}
    assert b.override_params == {"temperature": 0.1, "max_tokens": 5}



def test_a_request_timeout_of_0_sets_none_and_keeps_the_parents() -> None:
    # As Portkey's gateway reads 0 (unset): a 400 before.
    assert parse_config({"provider": "a", "request_timeout": 0}).timeouts == {}
    root = parse_config({"request_timeout": 2500, "strategy": {"mode": "fallback"},
                         "targets": [{"provider": "a", "request_timeout": 0}]})
    assert root.targets[0].timeouts == {"request": 2.5}


# -- planning -----------------------------------------------------------------------------------

def test_loadbalance_1_2_7_splits_10000_plans_within_2_percent() -> None:
    raw = {"strategy": {"mode": "loadbalance"},
           "targets": [{"provider": "a", "weight": 1}, {"provider": "b", "weight": 2},
                       {"provider": "c", "weight": 7}]}
    rng = random.Random(1234)
    root = parse_config(raw)
    counts = Counter(names(plan(root, resolver, rng=rng, breakers=CircuitBreakers()))[0]
                     for _ in range(10_000))
    for name, share in (("a", 0.1), ("b", 0.2), ("c", 0.7)):
        assert abs(counts[name] / 10_000 - share) < 0.02, counts


def test_loadbalance_is_reproducible_with_a_seed() -> None:
    raw = {"strategy": {"mode": "loadbalance"},
           "targets": [{"provider": "a"}, {"provider": "b"}]}
    assert [names(make(raw, seed=s)) for s in range(20)] == \
           [names(make(raw, seed=s)) for s in range(20)]


def test_zero_weight_is_never_chosen() -> None:
    raw = {"strategy": {"mode": "loadbalance"},
           "targets": [{"provider": "a", "weight": 0}, {"provider": "b", "weight": 1}]}
    assert {names(make(raw, seed=s))[0] for s in range(200)} == {"b"}


def test_fallback_orders_leaves_and_next_after_respects_nested_codes() -> None:
    raw = {"strategy": {"mode": "fallback"}, "targets": [
        {"strategy": {"mode": "fallback", "on_status_codes": [429]},
         "targets": [{"provider": "a"}, {"provider": "b"}]},
        {"provider": "c"}]}
    p = make(raw)
    assert names(p) == ["a", "b", "c"]
    assert p.next_after(0, 429) == 1  # the inner fallback acts on 429
    assert p.next_after(0, 500) == 2  # it does not act on 500: the outer moves on to c
    assert p.next_after(1, 500) == 2
    assert p.next_after(2, 500) is None
    assert [a.path for a in p.attempts] == ["config.targets[0].targets[0]",
                                            "config.targets[0].targets[1]", "config.targets[1]"]


def test_fallback_with_status_codes_stops_on_others() -> None:
    p = make({"strategy": {"mode": "fallback", "on_status_codes": [503]},
              "targets": [{"provider": "a"}, {"provider": "b"}]})
    assert p.next_after(0, 503) == 1
    assert p.next_after(0, 400) is None


def test_single_uses_the_first_target_and_loadbalance_inside_fallback() -> None:
    assert names(make({"strategy": {"mode": "single"},
                       "targets": [{"provider": "a"}, {"provider": "b"}]})) == ["a"]
    raw = {"strategy": {"mode": "fallback"}, "targets": [
        {"strategy": {"mode": "loadbalance"},
         "targets": [{"provider": "x"}, {"provider": "y"}]},
        {"provider": "z"}]}
    for seed in range(10):
        p = make(raw, seed=seed)
        assert len(p.attempts) == 2 and names(p)[1] == "z" and names(p)[0] in ("x", "y")
        assert p.next_after(0, 500) == 1


CONDITIONAL = {
    "strategy": {"mode": "conditional", "conditions": [
        {"query": {"metadata.plan": {"$eq": "paid"}, "params.max_tokens": {"$gte": 100}},
         "then": "big"},
        {"query": {"$or": [{"metadata.region": {"$in": ["eu", "uk"]}},
                           {"params.model": {"$regex": "^eu-"}}]}, "then": "eu"}],
        "default": "small"},
    "targets": [{"name": "big", "provider": "big"}, {"name": "eu", "provider": "eu"},
                {"name": "small", "provider": "small"}]}


@pytest.mark.parametrize(("metadata", "params", "expected"), [
    ({"plan": "paid"}, {"max_tokens": 500}, "big"),
    ({"plan": "paid"}, {"max_tokens": 50}, "small"),
    ({"region": "uk"}, {}, "eu"),
    ({}, {"model": "eu-large"}, "eu"),
    ({"region": "us"}, {"model": "us-large"}, "small"),
])
def test_conditional_routing(metadata: dict[str, Any], params: dict[str, Any],
                             expected: str) -> None:
    assert names(make(CONDITIONAL, metadata=metadata, params=params)) == [expected]


def test_a_repeated_target_name_routes_to_the_first() -> None:
    raw = {"strategy": {"mode": "conditional", "default": "x",
                        "conditions": [{"query": {"metadata.t": "x"}, "then": "x"}]},
           "targets": [{"name": "x", "provider": "a"}, {"name": "x", "provider": "b"}]}
    assert names(make(raw, metadata={"t": "x"})) == names(make(raw)) == ["a"]


def test_conditional_without_match_or_default_is_a_400() -> None:
    raw = {"strategy": {"mode": "conditional",
                        "conditions": [{"query": {"metadata.x": 1}, "then": "a"}]},
           "targets": [{"name": "a", "provider": "a"}]}
    with pytest.raises(InvalidRequest, match="No condition"):
        make(raw, metadata={"x": 2})


@pytest.mark.parametrize(("query", "expected"), [
    ({"metadata.n": {"$gt": 3, "$lt": 10}}, True),
    ({"metadata.n": {"$lte": 4}}, False),
    ({"metadata.n": {"$ne": 5}}, False),
    ({"metadata.missing": {"$ne": 5}}, True),
    ({"metadata.missing": {"$eq": 5}}, False),
    ({"metadata.tags": {"$nin": ["a"]}}, True),
    ({"metadata.n": "5"}, False),
    ({"metadata.s": {"$gt": 3}}, False),  # incomparable: false, not an error
    ({"$and": [{"metadata.n": 5}, {"params.a.b": True}]}, True),
])
def test_query_operators(query: dict[str, Any], expected: bool) -> None:
    assert matches(query, {"n": 5, "s": "x", "tags": "b"}, {"a": {"b": True}}) is expected


@pytest.mark.parametrize(("query", "expected"), [
    ({"params.stream": 1}, False),
    ({"params.stream": {"$eq": 1}}, False),
    ({"params.stream": {"$in": [1]}}, False),
    ({"params.stream": {"$ne": 1}}, True),
    ({"params.temperature": False}, False),
    ({"params.temperature": {"$nin": [False]}}, True),
    ({"params.stream": True, "params.temperature": 0}, True),
    ({"params.temperature": {"$in": [0.0]}}, True),  # 0 === 0.0 in JavaScript too
])
def test_equality_keeps_booleans_apart_from_numbers(query: dict[str, Any],
                                                    expected: bool) -> None:
    # Portkey's conditionalRouter.ts compares with === and Array.includes: true is not 1.
    assert matches(query, {}, {"stream": True, "temperature": 0}) is expected


# -- circuit breakers ---------------------------------------------------------------------------

BreakersFactory = Callable[[Callable[[], float]], CircuitBreakers]


@pytest.fixture(params=["in-process", "shared"])
def new_breakers(request: pytest.FixtureRequest) -> BreakersFactory:
    """Each breaker test runs on a worker's own states and on the workers' shared table."""
    if request.param == "shared":
        return lambda clock: SharedCircuitBreakers(SharedBreakerTable(slots=8), clock)
    return CircuitBreakers


def test_breaker_opens_at_the_threshold_cools_down_and_closes_on_success(
        new_breakers: BreakersFactory) -> None:
    clock = Clock()
    cb = new_breakers(clock)
    spec = BreakerSpec(failure_threshold=2, cooldown_interval=30)
    changes: list[tuple[str, str, float | None]] = []
    cb.listeners.append(lambda *change: changes.append(change[:3]))
    cb.record("k", spec, 500)
    assert cb.state("k", spec) == CLOSED
    cb.record("k", spec, 429)  # not a failure by default (only ≥ 500)
    cb.record("k", spec, 502)
    assert cb.state("k", spec) == OPEN and cb.is_open("k", spec)
    clock.now = 31
    assert cb.state("k", spec) == HALF_OPEN and not cb.is_open("k", spec)
    cb.record("k", spec, 500)  # a failed trial opens it again
    assert cb.state("k", spec) == OPEN
    clock.now = 62
    cb.record("k", spec, None)
    assert cb.state("k", spec) == CLOSED
    # (an open one turns half-open after its cooldown, by time alone: the listener is told)
    assert changes == [("k", OPEN, 30), ("k", OPEN, 30), ("k", CLOSED, None)]


def test_a_clients_cb_config_keeps_apart_from_the_operators_breaker(
        new_breakers: BreakersFactory) -> None:
    """Breakers were shared by target whatever the cb_config: a client's inline
    x-portkey-config naming the operator's target with a 1 ms cooldown_interval found the
    breaker the operator's config had opened for 10 minutes half-open at once, and its trial
    closed it (or re-opened it for 1 ms); with failure_threshold 1 and its own
    failure_status_codes, one bad request of its own opened the operator's. Other rules keep
    other states (Portkey keeps them per config)."""
    clock = Clock()
    cb = new_breakers(clock)
    operator = BreakerSpec(failure_threshold=1, cooldown_interval=600)
    client = BreakerSpec(failure_threshold=1, cooldown_interval=0.001,
                         failure_status_codes=frozenset({400}))
    changes: list[tuple[str, str, float | None]] = []
    cb.listeners.append(lambda *change: changes.append(change[:3]))
    cb.record("k", operator, 500)
    clock.now = 1
    assert cb.admit("k", client) is None  # (closed, its own: no trial)
    cb.record("k", client, None)  # its success does not close the operator's
    assert cb.state("k", operator) == OPEN and cb.is_open("k", operator)
    cb.record("k", operator, None)  # (open: a last-hope try changes nothing)
    clock.now = 1000
    trial = cb.admit("k", operator)
    assert isinstance(trial, Trial)
    cb.record("k", operator, None, trial)
    cb.record("k", client, 400)  # the client's own bad request opens its breaker alone
    assert cb.state("k", client) == OPEN and cb.state("k", operator) == CLOSED
    assert changes == [("k", OPEN, 600), ("k", CLOSED, None), ("k", OPEN, 0.001)]


def test_a_half_open_breaker_lets_one_trial_through(new_breakers: BreakersFactory) -> None:
    # After the cooldown one request is the trial; the others skip the target as if it were
    # open until the trial's outcome closes it or opens it again (a new cooldown).
    clock = Clock()
    cb = new_breakers(clock)
    spec = BreakerSpec(failure_threshold=1, cooldown_interval=30)
    cb.record("k", spec, 500)
    clock.now = 31
    assert not cb.is_open("k", spec)
    trial = cb.admit("k", spec)
    assert isinstance(trial, Trial)  # the trial
    assert cb.is_open("k", spec) and cb.admit("k", spec) is False  # the others skip it
    assert cb.state("k", spec) == HALF_OPEN
    cb.record("k", spec, 500, trial)  # the trial failed: open for another cooldown
    assert cb.state("k", spec) == OPEN
    clock.now = 62
    trial = cb.admit("k", spec)
    assert isinstance(trial, Trial)
    cb.record("k", spec, None, trial)  # it succeeded: closed, every request goes
    assert cb.state("k", spec) == CLOSED and cb.admit("k", spec) is None
    # A trial whose outcome never came (its request cancelled, refused before sending) is
    # released; one never released (a worker that died) is stale after a cooldown.
    cb.record("k", spec, 500)
    clock.now = 93
    trial = cb.admit("k", spec)
    assert isinstance(trial, Trial)
    cb.release("k", spec, trial)
    assert isinstance(cb.admit("k", spec), Trial) and cb.admit("k", spec) is False
    clock.now = 124
    assert not cb.is_open("k", spec) and isinstance(cb.admit("k", spec), Trial)


def test_a_trial_under_way_is_held_for_as_long_as_its_tries_may_last(
        new_breakers: BreakersFactory) -> None:
    # A trial is stale (its worker died) only once its tries could no longer be running: a
    # slow one (a long non-streamed answer, retries) let a second trial through after one
    # cooldown while the first was still waiting on the target.
    clock = Clock()
    cb = new_breakers(clock)
    spec = BreakerSpec(failure_threshold=1, cooldown_interval=30)
    cb.record("k", spec, 500)
    clock.now = 31
    assert isinstance(cb.admit("k", spec, lasts=600), Trial)
    clock.now = 31 + 300  # ten cooldowns on, the trial still under way
    assert cb.is_open("k", spec) and cb.admit("k", spec, lasts=600) is False
    clock.now = 31 + 601  # past anything its tries could take: its worker is gone
    assert not cb.is_open("k", spec) and isinstance(cb.admit("k", spec, lasts=600), Trial)


def test_a_stale_trials_late_release_or_outcome_leaves_the_newer_trial_alone(
        new_breakers: BreakersFactory) -> None:
    """A trial held past its `lasts` is stale and another request becomes the trial: the
    stale one's release, coming late, cleared the newer trial's mark (a third request went
    to the half-open target while the second was still trying it), and its late outcome
    decided the breaker the newer trial was testing (a late failure re-opened it, and the
    newer trial's success then changed nothing). Only the trial under way decides."""
    clock = Clock()
    cb = new_breakers(clock)
    spec = BreakerSpec(failure_threshold=1, cooldown_interval=30)
    cb.record("k", spec, 500)
    clock.now = 31
    stale = cb.admit("k", spec)
    assert isinstance(stale, Trial)
    clock.now = 62  # its hold is over: the next request is the trial
    newer = cb.admit("k", spec)
    assert isinstance(newer, Trial)
    cb.release("k", spec, stale)
    assert cb.is_open("k", spec) and cb.admit("k", spec) is False  # still the newer's
    cb.record("k", spec, 500, stale)  # a late failure: the newer trial decides
    cb.record("k", spec, None)  # (nor does a last-hope try, not the trial)
    assert cb.state("k", spec) == HALF_OPEN and cb.admit("k", spec) is False
    cb.record("k", spec, None, newer)
    assert cb.state("k", spec) == CLOSED
    cb.release("k", spec, newer)  # (recorded: nothing to release)
    assert cb.state("k", spec) == CLOSED


def test_breaker_percentage_waits_for_minimum_requests(new_breakers: BreakersFactory) -> None:
    cb = new_breakers(Clock())
    spec = BreakerSpec(failure_threshold_percentage=50, minimum_requests=4,
                       failure_status_codes=frozenset({429}))
    for status in (429, None, 429):
        cb.record("k", spec, status)
    assert cb.state("k", spec) == CLOSED  # 3 requests < minimum 4
    cb.record("k", spec, 429)
    assert cb.state("k", spec) == OPEN  # 3/4 failed


def test_breaker_counts_only_the_last_cooldown_interval(
        new_breakers: BreakersFactory) -> None:
    """The counts of a closed breaker never started again: five stray 5xx over a day of good
    answers opened a `failure_threshold: 5` breaker (a healthy target skipped for a
    cooldown), and after a long healthy run a target down for good never reached a
    `failure_threshold_percentage` (its failures diluted by every success it had ever had).
    Counts cover a window of one `cooldown_interval` from its first request, as Portkey
    resets them when a cooldown ends."""
    clock = Clock()
    cb = new_breakers(clock)
    spec = BreakerSpec(failure_threshold=3, cooldown_interval=30)
    for hour in range(3):  # one stray failure an hour, among successes
        clock.now = hour * 3600
        cb.record("k", spec, 500)
        cb.record("k", spec, None)
    assert cb.state("k", spec) == CLOSED
    for _ in range(3):  # three in one window: a target in trouble
        clock.now += 1
        cb.record("k", spec, 503)
    assert cb.state("k", spec) == OPEN
    pct = BreakerSpec(failure_threshold_percentage=50, minimum_requests=10,
                      cooldown_interval=30)
    for i in range(2000):  # a long healthy run
        clock.now = 10_000 + i
        cb.record("p", pct, None)
    down = 0
    while cb.state("p", pct) == CLOSED and down < 100:  # then every request fails
        clock.now += 0.5
        cb.record("p", pct, 500)
        down += 1
    assert cb.state("p", pct) == OPEN and down <= 60  # (within two windows, not 2000)


def test_breaker_states_are_capped_least_recently_recorded_first() -> None:
    # A key names the target's model, which a client's x-portkey-config chooses.
    cb = CircuitBreakers(Clock(), max_states=3)
    spec = BreakerSpec(failure_threshold=1, cooldown_interval=30)
    cb.record("down", spec, 500)
    for i in range(1000):
        cb.record(f"mock|client-model-{i}|", spec, None)
        cb.record("down", spec, 500)  # recorded again: kept (open: no trial yet)
    assert len(cb._states) == 3
    assert cb.is_open("down", spec)
    assert cb.state("mock|client-model-0|", spec) == CLOSED  # dropped: starts again closed


def test_an_open_breaker_outlives_the_cap_while_closed_ones_are_dropped() -> None:
    """An open target is skipped, so not recorded again until its cooldown ends: it was the
    least recently recorded state, and 4,096 other models (a client's to choose) closed it."""
    cb = CircuitBreakers(Clock(), max_states=3)
    spec = BreakerSpec(failure_threshold=1, cooldown_interval=30)
    cb.record("down", spec, 500)
    for i in range(1000):
        cb.record(f"mock|client-model-{i}|", spec, None)
    assert len(cb._states) == 3 and cb.is_open("down", spec)
    for i in range(3):  # all open: the least recently recorded open one goes
        cb.record(f"mock|failing-{i}|", spec, 500)
    assert len(cb._states) == 3 and not cb.is_open("down", spec)
    assert cb.is_open("mock|failing-0|", spec)


def test_a_flood_of_client_breakers_never_drops_the_operators_open_one() -> None:
    """A client's inline configs make breakers (other rules: other states), each opened by a
    bad request of its own (failure_threshold 1, failure_status_codes [404]): 4,096 of them
    dropped the operator's open breaker, the least recently recorded open one, and its failing
    target was tried again at full rate. Client-made states are capped apart, at half."""
    cb = CircuitBreakers(Clock(), max_states=8)
    operator = BreakerSpec(failure_threshold=1, cooldown_interval=600)
    cb.record("down", operator, 500)
    cb.record("up", operator, None)  # (an operator's closed one is kept too)
    for i in range(1000):
        client = BreakerSpec(failure_threshold=1, cooldown_interval=1 + i,
                             failure_status_codes=frozenset({404}), client=True)
        cb.record("down", client, 404)
        assert cb.is_open("down", client)  # (the client's own breakers still work)
    assert cb.is_open("down", operator) and len(cb._states) <= 8
    assert "up" + _rules(operator) in cb._states
    assert len(cb._clients) == 4
    # The operator's config giving the same rules makes a client-made state the operator's.
    cb.record("down", BreakerSpec(failure_threshold=1, cooldown_interval=1000,
                                  failure_status_codes=frozenset({404})), None)
    assert "down" + _rules(client) not in cb._clients
    # A client's breaker when every state is an operator's open one: not kept.
    full = CircuitBreakers(Clock(), max_states=2)
    for key in ("a", "b"):
        full.record(key, operator, 500)
    full.record("c", client, 404)
    assert full.is_open("a", operator) and full.is_open("b", operator)


def test_an_inline_configs_breakers_are_the_clients() -> None:
    # (the named config names the model: a breaker for a model the client chose is the
    # client's, test_a_model_the_client_chose_makes_a_client_breaker)
    gateway = gateway_for(configs={"named": {"cb_config": {"failure_threshold": 1},
                                             "provider": "oa",
                                             "override_params": {"model": "m"}}})
    from streamproxy.openai_api.request import parse_chat_request
    req = parse_chat_request(orjson.dumps({"model": "m", "messages": [
        {"role": "user", "content": "hi"}]}))
    inline = {"strategy": {"mode": "fallback", "cb_config": {"failure_threshold": 1}},
              "targets": [{"provider": "oa"}, {"provider": "groq",
                                               "cb_config": {"failure_threshold": 2}}]}
    attempts = gateway.plan({"x-portkey-config": orjson.dumps(inline).decode()}, req,
                            None).attempts
    assert [a.breaker is not None and a.breaker.client for a in attempts] == [True, True]
    named = gateway.plan({"x-portkey-config": "named"}, req, None).attempts
    assert named[0].breaker is not None and not named[0].breaker.client
    assert named[0].breaker == attempts[0].breaker  # (the same rules: one breaker)


def test_open_targets_are_skipped_unless_all_are_open(new_breakers: BreakersFactory) -> None:
    clock = Clock()
    cb = new_breakers(clock)
    raw = {"strategy": {"mode": "fallback",
                        "cb_config": {"failure_threshold": 1, "cooldown_interval": 60000}},
           "targets": [{"provider": "a"}, {"provider": "b"}]}
    first = make(raw, breakers=cb)
    cb.record(first.attempts[0].breaker_key, first.attempts[0].breaker, 500)
    assert names(make(raw, breakers=cb)) == ["b"]
    cb.record(first.attempts[1].breaker_key, first.attempts[1].breaker, 500)
    assert names(make(raw, breakers=cb)) == ["a", "b"]  # all open: breakers bypassed
    lb = {**raw, "strategy": {**raw["strategy"], "mode": "loadbalance"}}
    cb2 = new_breakers(clock)
    cb2.record(first.attempts[0].breaker_key, first.attempts[0].breaker, 500)
    assert {names(make(lb, seed=s, breakers=cb2))[0] for s in range(50)} == {"b"}


# -- retry timing -------------------------------------------------------------------------------

def test_backoff_grows_with_jitter_and_retry_after_wins_up_to_the_cap() -> None:
    rng = random.Random(7)
    first = [retry_delay(0, rng, None, True) for _ in range(200)]
    third = [retry_delay(2, rng, None, True) for _ in range(200)]
    assert min(first) >= 0.125 and max(first) <= 0.25
    assert min(third) >= 0.5 and max(third) <= 1.0
    assert len(set(first)) > 100  # jittered
    assert retry_delay(0, rng, 1.5, True) == 1.5
    assert retry_delay(0, rng, 1.5, False) <= 0.25
    assert retry_delay(0, rng, RETRY_AFTER_CAP + 1, True) is None


def test_a_zero_retry_after_is_no_wait_named_and_backs_off() -> None:
    # `retry-after: 0` (or an HTTP-date already past) sent every retry at once, up to ten in
    # a burst at an upstream that is refusing; the openai SDKs read a wait of 0 as none named
    # and back off, and so do the config's retries now.
    rng = random.Random(7)
    for retry in range(3):
        waits = [retry_delay(retry, rng, 0.0, True) for _ in range(50)]
        assert min(waits) >= 0.125 * 2 ** retry  # the backoff's, never an instant retry
    assert retry_delay(0, rng, 0.001, True) == 0.001  # (a short wait named is still waited)


def test_a_targets_retry_waits_together_are_held_to_a_budget() -> None:
    # Each wait under RETRY_AFTER_CAP, but not without end together (as Portkey caps them).
    rng = random.Random(7)
    assert retry_delay(2, rng, 25.0, True, waited=25.0) == 25.0
    assert retry_delay(2, rng, 25.0, True, waited=50.0) is None  # 75 s in all
    assert retry_delay(9, rng, None, True, waited=RETRY_WAIT_BUDGET - 1) is None  # 8 s more
    waited = 0.0
    for retry in range(10):  # the backoff's alone stay within it
        delay = retry_delay(retry, rng, None, False, waited)
        assert delay is not None
        waited += delay


@pytest.mark.parametrize("key", ["use_retry_after_headers", "use_retry_after_header"])
def test_use_retry_after_in_portkeys_documented_spelling_and_its_gateways(key: str) -> None:
    for value in (True, False):
        leaf = parse_config({"provider": "a", "retry": {"attempts": 2, key: value}})
        assert leaf.retry.use_retry_after_header is value
    with pytest.raises(InvalidRequest, match="must be a boolean"):
        parse_config({"provider": "a", "retry": {key: "yes"}})


def test_both_spellings_of_use_retry_after_must_agree() -> None:
    both = {"use_retry_after_headers": False, "use_retry_after_header": False}
    assert parse_config({"provider": "a", "retry": both}).retry.use_retry_after_header is False
    with pytest.raises(InvalidRequest) as info:
        parse_config({"provider": "a", "retry": {**both, "use_retry_after_header": True}})
    assert info.value.param == "config.retry.use_retry_after_header"


# -- per-target provider settings (Portkey's openai_organization, aws_region, vertex_region) ------

def gateway_for(breakers: CircuitBreakers | None = None,
                providers: dict[str, Any] | None = None, **sections: Any) -> Any:
    from streamproxy.routing.gateway import Gateway, load_settings
    from streamproxy.routing.router import Router
    from streamproxy.server.app import build_providers
    from tests.helpers import make_config

    config = make_config({
        "oa": {"type": "openai", "api_key": "k", "organization": "org-provider"},
        "groq": {"type": "groq", "api_key": "k"},
        "aws": {"type": "bedrock", "region": "us-east-1", "aws_access_key_id": "AKIDEXAMPLE",
                "aws_secret_access_key": "secret"},
        "vx": {"type": "vertex", "project": "p", "location": "us-central1", "api_key": "tok"},
        "an": {"type": "anthropic", "api_key": "k"}, **(providers or {}),
    }, default="oa", **sections)
    router = Router(build_providers(config), config.default_provider, config.server.timeouts)
    return Gateway(router, load_settings(config), breakers or CircuitBreakers(),
                   random.Random(0))


def sent_for(gateway: Any, config: dict[str, Any] | None) -> Any:
    """The upstream request the first planned target would send (no sockets)."""
    import orjson

    from streamproxy.openai_api.request import parse_chat_request

    req = parse_chat_request(orjson.dumps({"model": "m", "messages": [
        {"role": "user", "content": "hi"}]}))
    headers = {"x-portkey-config": orjson.dumps(config).decode()} if config else {}
    target = gateway.plan(headers, req, None).attempts[0].target
    return target.provider.build_request(req, target)


def test_target_provider_options_apply_where_the_provider_takes_them() -> None:
    gateway = gateway_for()
    sent = sent_for(gateway, {"provider": "oa", "openai_organization": "org-target"})
    assert sent.headers["openai-organization"] == "org-target"
    assert sent_for(gateway, None).headers["openai-organization"] == "org-provider"
    sent = sent_for(gateway, {"provider": "aws", "aws_region": "eu-west-1"})
    assert sent.url.startswith("https://bedrock-runtime.eu-west-1.amazonaws.com/model/m/")
    assert "/eu-west-1/bedrock/aws4_request" in sent.headers["Authorization"]
    sent = sent_for(gateway, {"provider": "aws"})  # the provider itself is left as it was
    assert "/us-east-1/bedrock/aws4_request" in sent.headers["Authorization"]
    sent = sent_for(gateway, {"provider": "vx", "vertex_region": "europe-west4"})
    assert sent.url.startswith("https://europe-west4-aiplatform.googleapis.com/v1/projects/p/"
                               "locations/europe-west4/")


@pytest.mark.parametrize(("config", "param"), [
    ({"provider": "groq", "openai_organization": "org-x"}, "config.openai_organization"),
    ({"provider": "oa", "aws_region": "eu-west-1"}, "config.aws_region"),
    ({"strategy": {"mode": "fallback"},
      "targets": [{"provider": "vx"}, {"provider": "aws", "vertex_region": "europe-west4"}]},
     "config.targets[1].vertex_region"),
])
def test_a_target_option_its_provider_does_not_take_is_a_400(config: dict[str, Any],
                                                               param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        sent_for(gateway_for(), config)
    assert info.value.param == param
    assert "does not apply to provider" in info.value.message


def test_a_target_option_is_an_id_never_a_host() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_config({"provider": "aws", "aws_region": "evil.example.com/x"})
    assert info.value.param == "config.aws_region"


def sent_with_headers(gateway: Any, headers: dict[str, str]) -> Any:
    from streamproxy.openai_api.request import parse_chat_request

    req = parse_chat_request(orjson.dumps({"model": "m", "messages": [
        {"role": "user", "content": "hi"}]}))
    target = gateway.plan(headers, req, None).attempts[0].target
    return target.provider.build_request(req, target)


def test_the_sdks_provider_option_headers_apply_where_the_provider_takes_them() -> None:
    from portkey_ai import Portkey

    sdk = Portkey(base_url="http://127.0.0.1:1/v1", api_key="unused", aws_region="eu-west-1",
                  vertex_region="europe-west4", openai_organization="org-sdk").custom_headers
    options = {k: v for k, v in sdk.items() if k.endswith(("-region", "-organization"))}
    gateway = gateway_for()
    sent = sent_with_headers(gateway, {"x-portkey-provider": "aws", **options})
    assert sent.url.startswith("https://bedrock-runtime.eu-west-1.amazonaws.com/model/m/")
    assert "/eu-west-1/bedrock/aws4_request" in sent.headers["Authorization"]
    sent = sent_with_headers(gateway, {"x-portkey-provider": "vx", **options})
    assert sent.url.startswith("https://europe-west4-aiplatform.googleapis.com/v1/projects/p/"
                               "locations/europe-west4/")
    sent = sent_with_headers(gateway, {"x-portkey-provider": "oa", **options})
    assert sent.headers["openai-organization"] == "org-sdk"
    # A type that takes none of them (a fallback's other target) goes as configured.
    assert "openai-organization" not in sent_with_headers(
        gateway, {"x-portkey-provider": "groq", **options}).headers
    # Under a config: each target's own setting wins; the others take the header's.
    config = {"strategy": {"mode": "loadbalance"}, "targets": [
        {"provider": "aws", "aws_region": "ap-south-1", "weight": 1}]}
    sent = sent_with_headers(gateway, {"x-portkey-config": orjson.dumps(config).decode(),
                                       **options})
    assert "/ap-south-1/bedrock/aws4_request" in sent.headers["Authorization"]
    sent = sent_with_headers(gateway, {"x-portkey-config": '{"provider": "aws"}', **options})
    assert "/eu-west-1/bedrock/aws4_request" in sent.headers["Authorization"]


def test_a_breaker_is_kept_per_region() -> None:
    # Two regions are two endpoints that fail apart: a cross-region fallback skips the one
    # whose breaker is open (one shared state opened both, and with all open the breakers
    # were bypassed: the failing region was tried first every time).
    gateway = gateway_for()
    breaker = {"failure_threshold": 1, "cooldown_interval": 60000}
    config = orjson.dumps({"strategy": {"mode": "fallback", "cb_config": breaker}, "targets": [
        {"provider": "aws", "aws_region": "us-east-1"},
        {"provider": "aws", "aws_region": "eu-west-1"}]}).decode()
    first = planned(gateway, {"x-portkey-config": config})
    gateway.breakers.record(first[0].breaker_key, first[0].breaker, 500)
    assert [a.target.provider.region for a in planned(gateway, {"x-portkey-config": config})
            ] == ["eu-west-1"]
    # The SDK's region header: a breaker opened in one Vertex location leaves another closed.
    config = orjson.dumps({"strategy": {"mode": "fallback", "cb_config": breaker},
                           "targets": [{"provider": "vx"}, {"provider": "oa"}]}).decode()
    headers = {"x-portkey-config": config, "x-portkey-vertex-region": "us-central1"}
    down = planned(gateway, headers)[0]
    gateway.breakers.record(down.breaker_key, down.breaker, 500)
    assert [a.target.provider.name for a in planned(gateway, headers)] == ["oa"]
    elsewhere = planned(gateway, {**headers, "x-portkey-vertex-region": "europe-west4"})
    assert [a.target.provider.name for a in elsewhere] == ["vx", "oa"]


def planned(gateway: Any, headers: dict[str, str]) -> list[Any]:
    from streamproxy.openai_api.request import parse_chat_request

    req = parse_chat_request(orjson.dumps({"model": "m", "messages": [
        {"role": "user", "content": "hi"}]}))
    return gateway.plan(headers, req, None).attempts


def test_a_provider_option_header_is_an_id_never_a_host() -> None:
    with pytest.raises(InvalidRequest) as info:
        sent_with_headers(gateway_for(), {"x-portkey-provider": "aws",
                                          "x-portkey-aws-region": "evil.example.com/x"})
    assert info.value.param == "x-portkey-aws-region"


@pytest.mark.parametrize("region", ["x.s3", "us-east-1.evil", "us_east_1", "-us"])
@pytest.mark.parametrize("option", ["aws_region", "vertex_region"])
def test_a_region_is_letters_digits_and_dashes(option: str, region: str) -> None:
    """A region names a host under the provider's domain: `aws_region: "x.s3"` aimed Bedrock
    at bedrock-runtime.x.s3.amazonaws.com (an S3 bucket's host)."""
    provider = "aws" if option == "aws_region" else "vx"
    with pytest.raises(InvalidRequest) as info:
        sent_for(gateway_for(), {"provider": provider, option: region})
    assert info.value.param == f"config.{option}" and "a region name" in info.value.message
    header = "x-portkey-" + option.replace("_", "-")
    with pytest.raises(InvalidRequest) as info:
        sent_with_headers(gateway_for(), {"x-portkey-provider": provider, header: region})
    assert info.value.param == header and "a region name" in info.value.message


def test_a_named_config_with_a_misplaced_target_option_fails_at_start() -> None:
    from streamproxy.config import ConfigError

    with pytest.raises(ConfigError, match="does not apply"):
        gateway_for(configs={"c": {"provider": "groq", "openai_organization": "org-x"}})


# -- conditions as Portkey's conditionalRouter.ts evaluates them ---------------------------------

@pytest.mark.parametrize(("query", "expected"), [
    ({"metadata.tier": {"$gte": 2}}, True),  # metadata values are strings: "3" ≥ 2
    ({"metadata.tier": {"$gt": "2.5", "$lt": "10"}}, True),
    ({"metadata.tier": {"$lte": 2}}, False),
    ({"metadata.big": {"$gt": 9}}, True),  # "10" > 9 as numbers, not as text
    ({"metadata.lead": {"$gte": 7}}, True),  # parseFloat("7 seats") is 7
    ({"metadata.word": {"$gt": 0}}, False),  # parseFloat("gold") is NaN: never true
    ({"metadata.word": {"$lt": 0}}, False),
    ({"metadata.word": {"$gt": "a"}}, False),  # no string ordering either
    ({"metadata.flag": {"$gte": 0}}, False),  # parseFloat(true) is NaN
    ({"params.temperature": {"$lt": "0.5"}}, True),
])
def test_ordering_operators_compare_numbers_held_in_strings(query: dict[str, Any],
                                                            expected: bool) -> None:
    metadata = {"tier": "3", "big": "10", "lead": " 7 seats", "word": "gold", "flag": True}
    assert matches(query, metadata, {"temperature": 0.2}) is expected


@pytest.mark.parametrize(("query", "expected"), [
    ({"params.messages": {"$length": 2}}, True),
    ({"params.messages": {"$length": {"$gt": 1, "$lte": 2}}}, True),
    ({"params.messages": {"$length": {"$gte": 3}}}, False),
    ({"params.tools": {"$length": {"$in": [0, 1]}}}, True),
    ({"params.model": {"$length": 5}}, False),  # only arrays have a length here, as in Portkey
    ({"params.missing": {"$length": 0}}, False),
    ({"url.pathname": "/v1/chat/completions"}, True),
    ({"url.pathname": {"$regex": "^/v1/chat/"}}, True),
    ({"url.pathname": {"$ne": "/v1/embeddings"}}, True),
])
def test_length_operator_and_url_pathname(query: dict[str, Any], expected: bool) -> None:
    params = {"messages": [{}, {}], "tools": [], "model": "gpt-x"}
    validate_query(query, "q")
    assert matches(query, {}, params, "/v1/chat/completions") is expected


@pytest.mark.parametrize(("query", "expected"), [
    ({"params.messages.0.role": "system"}, True),
    ({"params.messages.1.content": {"$regex": "urgent"}}, True),
    ({"params.messages.1.content.0.text": "x"}, False),  # (a string has no parts)
    ({"params.tools.0.function.name": {"$in": ["search", "fetch"]}}, True),
    ({"params.messages.2.role": {"$eq": "user"}}, False),  # past the end: absent
    ({"params.messages.2.role": {"$ne": "user"}}, True),
    ({"params.messages.-1.role": "user"}, False),  # no index from the end, as in MongoDB
    ({"params.messages.01.role": "user"}, False),  # (not an index's text)
    ({"params.messages.1.role": {"$ne": "user"}}, False),
])
def test_a_field_path_indexes_into_arrays(query: dict[str, Any], expected: bool) -> None:
    # `params.messages.0.role` read through objects only: an array ended the path, so a
    # condition on a message never matched (and its `$ne` always held), silently.
    params = {"messages": [{"role": "system", "content": "be brief"},
                           {"role": "user", "content": "an urgent one"}],
              "tools": [{"type": "function", "function": {"name": "search"}}]}
    validate_query(query, "q")
    assert matches(query, {}, params) is expected


@pytest.mark.parametrize(("query", "param"), [
    ({"params.messages": {"$length": "2"}}, "q.params.messages.$length"),
    ({"params.messages": {"$length": {"$near": 2}}}, "q.params.messages.$length.$near"),
    ({"url.host": "x"}, "q.url.host"),
])
def test_invalid_length_and_url_queries_name_the_field(query: dict[str, Any],
                                                       param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        validate_query(query, "q")
    assert info.value.param == param


def test_conditional_routing_on_the_request_path_through_the_gateway() -> None:
    gateway = gateway_for()
    config = {"strategy": {"mode": "conditional", "conditions": [
        {"query": {"url.pathname": {"$eq": "/v1/chat/completions"},
                   "params.messages": {"$length": {"$gte": 1}}}, "then": "chat"}],
        "default": "other"},
        "targets": [{"name": "chat", "provider": "aws"}, {"name": "other", "provider": "oa"}]}
    assert sent_for(gateway, config).url.startswith("https://bedrock-runtime.")


@pytest.mark.parametrize("key", ["input_guardrails", "output_guardrails", "before_request_hooks",
                                 "after_request_hooks", "input_mutators", "output_mutators"])
def test_guardrails_and_mutators_are_refused_not_ignored(key: str) -> None:
    with pytest.raises(InvalidRequest, match="does not run") as info:
        parse_config({"provider": "a", key: ["pg-pii-123"]})
    assert info.value.param == f"config.{key}"
    assert parse_config({"provider": "a", key: []}).provider == "a"  # nothing asked: fine


def test_the_sdks_anthropic_and_openai_project_options_reach_the_upstream() -> None:
    # The portkey-ai SDK's `anthropic_beta`, `anthropic_version` and `openai_project` arrive
    # as x-portkey-* headers; they were ignored: no beta feature, the default version, no
    # OpenAI-Project (the provider types already had these options in their config).
    from portkey_ai import Portkey

    sdk = Portkey(base_url="http://127.0.0.1:1/v1", api_key="unused",
                  anthropic_beta="prompt-caching-2024-07-31,context-1m-2025-08-07",
                  anthropic_version="2023-01-01", openai_project="proj_sdk").custom_headers
    options = {k: v for k, v in sdk.items() if k.startswith(("x-portkey-anthropic",
                                                              "x-portkey-openai"))}
    gateway = gateway_for()
    sent = sent_with_headers(gateway, {"x-portkey-provider": "an", **options})
    assert sent.headers["anthropic-beta"] == "prompt-caching-2024-07-31,context-1m-2025-08-07"
    assert sent.headers["anthropic-version"] == "2023-01-01"
    sent = sent_with_headers(gateway, {"x-portkey-provider": "oa", **options})
    assert sent.headers["openai-project"] == "proj_sdk"
    assert "anthropic-beta" not in sent.headers
    # As Portkey, Anthropic's own header names are read too; a config target's field wins.
    sent = sent_with_headers(gateway, {"x-portkey-provider": "an", "anthropic-beta": "b1"})
    assert sent.headers["anthropic-beta"] == "b1"
    config = {"provider": "an", "anthropic_beta": "b2", "anthropic_version": "2023-06-01"}
    sent = sent_for(gateway, config)
    assert (sent.headers["anthropic-beta"], sent.headers["anthropic-version"]) == (
        "b2", "2023-06-01")
    assert sent_for(gateway, {"provider": "oa", "openai_project": "proj_t"}).headers[
        "openai-project"] == "proj_t"


@pytest.mark.parametrize("value", ["b1,b2,", " b1 , ,b2 ", "b1,,b2"])
def test_an_empty_beta_name_in_a_header_or_config_is_skipped(value: str) -> None:
    # As in the gateway's own config (anthropic/options.py): a trailing comma, as a list is
    # often left when edited, names no beta. Here it was a 400 (header and inline config).
    gateway = gateway_for()
    for header in ("x-portkey-anthropic-beta", "anthropic-beta"):
        sent = sent_with_headers(gateway, {"x-portkey-provider": "an", header: value})
        assert sent.headers["anthropic-beta"] == "b1,b2"
    sent = sent_for(gateway, {"provider": "an", "anthropic_beta": value})
    assert sent.headers["anthropic-beta"] == "b1,b2"
    # a value naming no beta at all names none, as in the gateway's config
    assert "anthropic-beta" not in sent_for(gateway, {"provider": "an",
                                                      "anthropic_beta": ","}).headers
    with pytest.raises(InvalidRequest):  # a name is still an id
        sent_for(gateway, {"provider": "an", "anthropic_beta": "b1,b 2"})


@pytest.mark.parametrize("header", ["x-portkey-anthropic-beta", "anthropic-beta",
                                    "x-portkey-anthropic-version"])
def test_an_anthropic_option_header_cannot_split_a_header(header: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        sent_with_headers(gateway_for(), {"x-portkey-provider": "an", header: "a;b=c\u00e9"})
    assert info.value.param == header


@pytest.mark.parametrize(("query", "expected"), [
    ({"metadata.tier": {"$regex": "^[23]$"}}, True),  # a number, as JavaScript prints it
    ({"params.max_tokens": {"$regex": "^\\d{4}$"}}, True),
    ({"params.temperature": {"$regex": "^1$"}}, True),  # 1.0 prints "1" in JavaScript
    ({"params.top_p": {"$regex": "^0\\.5$"}}, True),
    ({"params.stream": {"$regex": "^true$"}}, True),  # not Python's "True"
    ({"params.small": {"$regex": "^0\\.00001$"}}, True),  # not Python's "1e-05"
    ({"params.tools": {"$regex": "."}}, False),  # an array: no text to match
    ({"metadata.missing": {"$regex": "."}}, False),
])
def test_regex_matches_numbers_and_booleans_as_javascript_prints_them(
        query: dict[str, Any], expected: bool) -> None:
    # Portkey's conditionalRouter.ts runs `new RegExp(arg).test(value)`, which reads the
    # value as a string: metadata.tier 3 matched ^[23]$ there and never here.
    params = {"max_tokens": 1024, "temperature": 1.0, "top_p": 0.5, "stream": True,
              "small": 1e-05, "tools": [{}]}
    validate_query(query, "q")
    assert matches(query, {"tier": 3}, params) is expected


def test_a_conditional_without_conditions_routes_to_its_default() -> None:
    # Portkey's conditionalRouter.ts loops over no conditions and takes the default (a config
    # whose rules were all removed, or not yet written): a 400 here for every request.
    raw = {"strategy": {"mode": "conditional", "conditions": [], "default": "b"},
           "targets": [{"name": "a", "provider": "a"}, {"name": "b", "provider": "b"}]}
    assert names(make(raw, metadata={"x": 1})) == ["b"]
    # with no default either, no request could be routed: refused with the config
    del raw["strategy"]["default"]
    with pytest.raises(InvalidRequest) as info:
        parse_config(raw)
    assert info.value.param == "config.strategy.conditions"


def attempts_for(gateway: Any, body: dict[str, Any]) -> list[tuple[str, str | None, int]]:
    """(provider, model, retries) of each attempt the gateway plans for `body` (no headers)."""
    from streamproxy.openai_api.request import parse_chat_request

    req = parse_chat_request(orjson.dumps({"messages": [{"role": "user", "content": "hi"}],
                                           **body}))
    return [(a.target.provider.name, a.target.model, a.retry.attempts)
            for a in gateway.plan({}, req, None).attempts]


def test_onellm_retries_apply_when_the_primary_runs_the_default_config() -> None:
    # README: the primary goes where it would alone — naming no provider, through
    # default_config — and `retries` are its more tries. They were dropped there: set on the
    # primary's leaf, which the default config then replaced (and ignored with no fallbacks).
    gateway = gateway_for(
        configs={"dc": {"strategy": {"mode": "fallback"}, "targets": [
            {"provider": "an"}, {"provider": "groq", "retry": {"attempts": 1}}]}},
        default_config="dc")
    assert attempts_for(gateway, {"model": "x", "retries": 2, "fallback_models": ["oa/y"]}) == [
        ("an", "x", 2), ("groq", "x", 1), ("oa", "y", 0)]  # a target's own retry stands
    assert attempts_for(gateway, {"model": "x", "retries": 2}) == [("an", "x", 2), ("groq", "x", 1)]
    # A fallback model's run of the config gets none: retries are the primary's.
    assert attempts_for(gateway, {"model": "oa/x", "retries": 2, "fallback_models": ["y"]}) == [
        ("oa", "x", 2), ("an", "y", 0), ("groq", "y", 1)]
    assert attempts_for(gateway, {"model": "x"}) == [("an", "x", 0), ("groq", "x", 1)]


def test_a_targets_own_retry_attempts_0_is_not_overridden_by_onellm_retries() -> None:
    # The operator's `retry: {attempts: 0}` says "never retry this target" (a paid provider,
    # one that bills failed tries): a client's body `retries` gave it retries anyway, as if it
    # set no retry. A retry object without `attempts`, or none, still takes the client's.
    gateway = gateway_for(
        configs={"dc": {"strategy": {"mode": "fallback"}, "targets": [
            {"provider": "an", "retry": {"attempts": 0}},
            {"provider": "groq", "retry": {"on_status_codes": [429]}},
            {"provider": "oa"}]},
            "none": {"retry": {"attempts": 0}, "strategy": {"mode": "fallback"},
                     "targets": [{"provider": "an"}, {"provider": "oa"}]}},
        default_config="dc", routes={"m": "none"})
    assert attempts_for(gateway, {"model": "x", "retries": 2}) == [
        ("an", "x", 0), ("groq", "x", 2), ("oa", "x", 2)]
    assert attempts_for(gateway, {"model": "x", "retries": 2, "fallback_models": ["oa/y"]}) == [
        ("an", "x", 0), ("groq", "x", 2), ("oa", "x", 2), ("oa", "y", 0)]
    # inherited from the config's top: each of its targets is "no retries"
    assert attempts_for(gateway, {"model": "m", "retries": 3}) == [("an", "m", 0),
                                                                   ("oa", "m", 0)]


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "@nope/x", "fallback_models": ["oa/y"]}, "model"),
    ({"model": "oa/x", "fallback_models": ["y", "@nope/y"]}, "fallback_models[1]"),
])
def test_an_unknown_at_prefix_is_a_400_beside_fallback_models_and_a_default_config(
        body: dict[str, Any], param: str) -> None:
    # README: an `@name/` prefix naming no configured provider is a 400, as `@nope/x` alone is
    # with a default_config. With fallback_models it ran the default config, whose provider
    # was asked for the model '@nope/x' (a typo'd provider answered as another's 404).
    from streamproxy.errors import UnknownProvider

    gateway = gateway_for(configs={"dc": {"provider": "an"}}, default_config="dc")
    with pytest.raises(UnknownProvider) as info:
        attempts_for(gateway, body)
    assert info.value.param == param and "'nope'" in info.value.message
    # A name that is not an `@` prefix still runs the config, as it would alone.
    assert attempts_for(gateway, {"model": "nope/x", "fallback_models": ["oa/y"]}) == [
        ("an", "nope/x", 0), ("oa", "y", 0)]


@pytest.mark.parametrize("sections", [{}, {"default_config": "one"}])
@pytest.mark.parametrize("headers", [{}, {"x-portkey-provider": "groq"}])
def test_a_fallback_model_naming_a_route_runs_its_config(sections: dict[str, Any],
                                                         headers: dict[str, str]) -> None:
    # README: a fallback model goes where it would alone, and a model that `routes:` names
    # runs that config (before the headers and default_config). `smart` went to the provider
    # as a model name: the client got its model-not-found instead of the operator's route.
    from streamproxy.openai_api.request import parse_chat_request

    gateway = gateway_for(configs={
        "smart": {"strategy": {"mode": "fallback"}, "targets": [
            {"provider": "an", "override_params": {"model": "claude"}},
            {"provider": "vx"}]},
        "one": {"provider": "oa"}}, routes={"smart": "smart"}, **sections)
    req = parse_chat_request(orjson.dumps({"messages": [{"role": "user", "content": "hi"}],
                                           "model": "aws/x", "fallback_models": ["smart"]}))
    attempts = gateway.plan(headers, req, None).attempts
    assert [(a.target.provider.name, a.target.model, a.path) for a in attempts][1:] == [
        ("an", "claude", "config.targets[1].targets[0]"),
        ("vx", "smart", "config.targets[1].targets[1]")]  # as `smart` alone asks for it


def test_a_route_as_the_primary_keeps_fallback_models_and_retries() -> None:
    # The route ran, but fallback_models and retries in the same body were dropped in
    # silence: a failing route was the request's answer, with no fallback and no retry.
    gateway = gateway_for(configs={
        "smart": {"strategy": {"mode": "fallback"}, "targets": [
            {"provider": "an", "override_params": {"model": "claude"}},
            {"provider": "vx", "retry": {"attempts": 1}}]}}, routes={"smart": "smart"})
    assert attempts_for(gateway, {"model": "smart", "retries": 2,
                                  "fallback_models": ["oa/y", "groq/z"]}) == [
        ("an", "claude", 2), ("vx", "smart", 1), ("oa", "y", 0), ("groq", "z", 0)]
    assert attempts_for(gateway, {"model": "smart", "retries": 2}) == [
        ("an", "claude", 2), ("vx", "smart", 1)]
    assert attempts_for(gateway, {"model": "smart", "fallback_models": ["oa/y"]}) == [
        ("an", "claude", 0), ("vx", "smart", 1), ("oa", "y", 0)]
    assert attempts_for(gateway, {"model": "smart"}) == [("an", "claude", 0), ("vx", "smart", 1)]


def test_an_at_virtual_key_is_explicit_beside_a_default_config() -> None:
    # `@vk/x` names a provider (the key's) as `@an/x` does: the default_config serves only
    # models naming none, alone or beside fallback_models.
    gateway = gateway_for(configs={"dc": {"provider": "groq"}}, default_config="dc",
                          virtual_keys={"vk": {"provider": "an", "api_key": "sk-vk"}})
    assert attempts_for(gateway, {"model": "@vk/x"}) == [("an", "x", 0)]
    assert attempts_for(gateway, {"model": "@vk/x", "retries": 1,
                                  "fallback_models": ["@vk/y", "z"]}) == [
        ("an", "x", 1), ("an", "y", 0), ("groq", "z", 0)]
    assert [a.target.api_key for a in gateway.plan({}, _req({"model": "@vk/x"}),
                                                   None).attempts] == ["sk-vk"]


def _req(body: dict[str, Any]) -> Any:
    from streamproxy.openai_api.request import parse_chat_request

    return parse_chat_request(orjson.dumps({"messages": [{"role": "user", "content": "hi"}],
                                            **body}))


@pytest.mark.parametrize(("headers", "model"), [
    ({}, "@claude-prd/m"),
    ({"x-portkey-provider": "@claude-prd"}, "m"),
    ({"x-portkey-config": '{"provider": "@claude-prd"}'}, "m"),
], ids=["model-prefix", "provider-header", "config-provider"])
def test_an_unknown_name_lists_the_virtual_keys_beside_the_providers(
        headers: dict[str, str], model: str) -> None:
    # `@name` names a virtual key as well as a provider: a typo in one listed the providers
    # alone, so the client could not tell which names it may use. (Not a key a provider's
    # name shadows, which @name does not reach.)
    import orjson

    from streamproxy.openai_api.request import parse_chat_request

    gateway = gateway_for(virtual_keys={"claude-prod": {"provider": "an", "api_key": "sk-vk"},
                                        "an": {"provider": "an", "api_key": "sk-vk2"}})
    req = parse_chat_request(orjson.dumps({"model": model, "messages": [
        {"role": "user", "content": "hi"}]}))
    with pytest.raises(InvalidRequest) as info:
        gateway.plan(headers, req, None)
    assert info.value.code == "unknown_provider"
    assert info.value.message.endswith(
        "Configured providers: oa, groq, aws, vx, an. Virtual keys (as @name): claude-prod.")


@pytest.mark.parametrize(("headers", "param"), [
    ({"x-portkey-virtual-key": "claude-prd"}, "x-portkey-virtual-key"),
    ({"x-portkey-config": '{"virtual_key": "claude-prd"}'}, "config.virtual_key"),
], ids=["header", "config"])
def test_an_unknown_virtual_key_lists_the_configured_ones(headers: dict[str, str],
                                                          param: str) -> None:
    # The portkey-ai SDK's virtual_key= (the header) or a config's virtual_key with a typo:
    # the 400 named the key alone, so the client could not tell which names it may use.
    gateway = gateway_for(virtual_keys={"claude-prod": {"provider": "an", "api_key": "sk-vk"},
                                        "oa-prod": {"provider": "oa", "api_key": "sk-vk2"}})
    with pytest.raises(InvalidRequest) as info:
        gateway.plan(headers, _req({"model": "m"}), None)
    assert (info.value.code, info.value.param) == ("unknown_virtual_key", param)
    assert info.value.message == (
        f"Unknown virtual key 'claude-prd' in {param}: it is not under this gateway's "
        "virtual_keys. Configured virtual keys: claude-prod, oa-prod.")
    assert "sk-vk" not in info.value.message


@pytest.mark.parametrize(("config", "param"), [
    ({"virtualKey": "claude-prd"}, "config.virtualKey"),
    ({"strategy": {"mode": "fallback"}, "targets": [{"virtualKey": "claude-prd"}]},
     "config.targets[0].virtualKey"),
    # inherited: named at the target, as the client spelt it
    ({"virtualKey": "claude-prd", "strategy": {"mode": "fallback"}, "targets": [{}]},
     "config.targets[0].virtualKey"),
    ({"provider": "oa", "customHost": "https://llm.example.com"}, "config.customHost"),
    ({"provider": "an", "resourceName": "myres"}, "config.resourceName"),
    ({"provider": "an", "awsRegion": "us-east-1"}, "config.awsRegion"),
    # (snake_case as written stays so)
    ({"provider": "oa", "custom_host": "https://llm.example.com"}, "config.custom_host"),
])
def test_a_request_time_400_names_a_field_as_the_client_wrote_it(
        config: dict[str, Any], param: str) -> None:
    """A camelCase field's 400 found while routing (an unknown virtual key, a host not
    allowed, a provider setting its provider does not take) named the snake_case field
    (`config.virtual_key`), which the client's config does not have."""
    gateway = gateway_for(virtual_keys={"claude-prod": {"provider": "an", "api_key": "sk-vk"}})
    with pytest.raises(InvalidRequest) as info:
        gateway.plan({"x-portkey-config": orjson.dumps(config).decode()}, _req({"model": "m"}),
                     None)
    assert info.value.param == param
    assert param in info.value.message


def test_an_unknown_virtual_key_says_when_there_are_none() -> None:
    with pytest.raises(InvalidRequest) as info:
        gateway_for().plan({"x-portkey-virtual-key": "vk"}, _req({"model": "m"}), None)
    assert info.value.message.endswith("This gateway has no virtual keys.")


def test_a_client_breaker_not_kept_is_not_reported() -> None:
    """Every state an operator's open breaker: a new client breaker is not stored, but its
    listener (the circuit gauge) was told it opened, showing an open breaker that isn't kept
    (and that the next request finds closed)."""
    operator = BreakerSpec(failure_threshold=1, cooldown_interval=600)
    client = BreakerSpec(failure_threshold=1, cooldown_interval=1,
                         failure_status_codes=frozenset({404}), client=True)
    full = CircuitBreakers(Clock(), max_states=2)
    heard: list[tuple[str, str, bool]] = []
    full.listeners.append(lambda key, state, _after, _rules, made: heard.append(
        (key, state, made)))
    for key in ("a", "b"):
        full.record(key, operator, 500)
    full.record("c", client, 404)
    assert not full.is_open("c", client)  # (not kept)
    assert heard == [("a", OPEN, False), ("b", OPEN, False)]


def test_a_shared_client_breaker_not_kept_is_not_reported() -> None:
    """The same with workers: no slot near the key, and the worker's own map full."""
    operator = BreakerSpec(failure_threshold=1, cooldown_interval=600)
    client = BreakerSpec(failure_threshold=1, cooldown_interval=1,
                         failure_status_codes=frozenset({404}), client=True)
    table = SharedBreakerTable(slots=2)
    shared = SharedCircuitBreakers(table, Clock())
    shared._max_states = shared._max_clients = 0  # (no room in the worker either)
    heard: list[str] = []
    shared.listeners.append(lambda key, state, *_: heard.append(key))
    for key in ("a", "b"):
        shared.record(key, operator, 500)
    assert shared.is_open("a", operator) and shared.is_open("b", operator)
    shared.record("c", client, 404)
    assert not shared.is_open("c", client) and heard == ["a", "b"]


def test_a_model_the_client_chose_makes_a_client_breaker() -> None:
    """A breaker key names the model, which a client chooses under an operator's named config
    whose targets name none: those breakers counted as the operator's, so a client cycling
    model names (each failing: a 5xx from the provider) filled the operator's share of the
    states and dropped the operator's open breaker of a model it named (and its 100 gauge
    series). A model neither the config nor the providers' `models:` name is the client's."""
    from streamproxy.openai_api.request import parse_chat_request
    from streamproxy.routing.portkey_config import BreakerSpec as Spec

    cb = CircuitBreakers(Clock(), max_states=4)
    cb_config = {"failure_threshold": 1, "cooldown_interval": 600000}
    gateway = gateway_for(cb, configs={
        "any": {"provider": "oa", "cb_config": cb_config},
        "pinned": {"provider": "groq", "cb_config": cb_config,
                   "override_params": {"model": "llama"}}},
        providers={"oa": {"type": "openai", "api_key": "k", "models": ["gpt-4o"]}})

    def attempt(config: str, model: str) -> Any:
        req = parse_chat_request(orjson.dumps({"model": model, "messages": [
            {"role": "user", "content": "hi"}]}))
        return gateway.plan({"x-portkey-config": config}, req, None).attempts[0]

    def spec(a: Any) -> Spec:
        assert a.breaker is not None
        return a.breaker  # type: ignore[no-any-return]

    listed, pinned = attempt("any", "gpt-4o"), attempt("pinned", "whatever")
    assert not spec(listed).client and not spec(pinned).client  # the operator named them
    assert spec(attempt("any", "client-model")).client
    for a in (listed, pinned):
        cb.record(a.breaker_key, a.breaker, 500)
    for i in range(100):  # a client cycling models the provider fails
        a = attempt("any", f"client-model-{i}")
        cb.record(a.breaker_key, a.breaker, 500)
        assert cb.is_open(a.breaker_key, a.breaker)  # (its breakers still work)
    assert cb.is_open(listed.breaker_key, listed.breaker)
    assert cb.is_open(pinned.breaker_key, pinned.breaker)


@pytest.mark.parametrize("stream", [False, True])
def test_an_overrides_stream_options_goes_only_with_a_streamed_request(stream: bool) -> None:
    # A config asking every stream for usage served non-streamed requests too: they went to
    # OpenAI with stream_options beside no stream, which it refuses (a 400 for every one).
    gateway = gateway_for()
    config = {"provider": "oa", "override_params": {"stream_options": {"include_usage": True}}}
    req = _req({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                **({"stream": True} if stream else {})})
    target = gateway.plan({"x-portkey-config": orjson.dumps(config).decode()}, req,
                          None).attempts[0].target
    sent = orjson.loads(target.provider.build_request(req, target).body)
    assert sent.get("stream_options") == ({"include_usage": True} if stream else None)
    assert sent.get("stream") is (True if stream else None)


def test_a_query_nested_deeper_than_a_config_needs_is_a_400() -> None:
    # 330 levels of $and (a 3.8 kB header) ran matching out of Python's stack: a 500
    query: dict[str, Any] = {"metadata.x": "1"}
    for _ in range(330):
        query = {"$and": [query]}
    raw = {"strategy": {"mode": "conditional", "conditions": [{"query": query, "then": "a"}]},
           "targets": [{"name": "a", "provider": "a"}]}
    with pytest.raises(InvalidRequest, match="nested deeper") as info:
        parse_config(raw)
    assert info.value.param.startswith("config.strategy.conditions[0].query.$and[0].$and[0]")
    shallow = {"$or": [{"$and": [{"metadata.x": "1"}, {"$or": [{"metadata.y": "2"}]}]}]}
    validate_query(shallow, "q")
    assert matches(shallow, {"x": "1", "y": "2"}, {})


def test_targets_nested_deeper_than_a_config_needs_are_a_400() -> None:
    # 400 levels (17 kB: a header under a raised server.max_header_bytes) ran parsing and
    # planning out of Python's stack: a 500
    raw: dict[str, Any] = {"provider": "a"}
    for _ in range(400):
        raw = {"strategy": {"mode": "single"}, "targets": [raw]}
    with pytest.raises(InvalidRequest, match="nested deeper") as info:
        parse_config(raw)
    assert info.value.param.startswith("config" + ".targets[0]" * 32)
    raw = {"provider": "a"}
    for _ in range(32):  # as deep as may be
        raw = {"strategy": {"mode": "fallback"}, "targets": [raw, {"provider": "b"}]}
    assert names(make(raw))[0] == "a"


def _caps_sent(gateway: Any, config: dict[str, Any], req: Any) -> list[Any]:
    """The token caps, under any of their names, in the body `config`'s first target sends."""
    target = gateway.plan({"x-portkey-config": orjson.dumps(config).decode()}, req,
                          None).attempts[0].target
    sent = orjson.loads(target.provider.build_request(req, target).body)
    return [v for k, v in {**sent, **sent.get("inferenceConfig", {})}.items()
            if k in ("max_tokens", "max_completion_tokens", "maxTokens")]


@pytest.mark.parametrize(("override", "asked"), [("max_tokens", "max_completion_tokens"),
                                                  ("max_completion_tokens", "max_tokens")])
@pytest.mark.parametrize("provider", ["oa", "an", "aws"])
def test_an_overrides_token_cap_replaces_the_requests_under_either_name(
        provider: str, override: str, asked: str) -> None:
    # The cap has two names: a config's max_tokens went beside a client's
    # max_completion_tokens, which OpenAI refuses (a 400) and Anthropic's and Bedrock's
    # translators read first (the client's 4000 went, not the config's cap of 50).
    gateway = gateway_for()
    config = {"provider": provider, "override_params": {override: 50}}
    req = _req({"model": "m", asked: 4000})
    assert _caps_sent(gateway, config, req) == [50]


@pytest.mark.parametrize(("pattern", "allowed"), [
    ("-mini$", True), (".*sonnet", True), ("^gpt-4o(-mini|-nano)?$", True),
    (r"^(gpt|o)\d+.*$", True), ("^(prod|staging)$", True),
    ("(a+)+$", False), ("(a|ab)*c", False), ("a*a*$", False), (r"(a)\1", False),
    ("(?m)^a*a*$", False)])
def test_a_clients_regex_is_held_to_a_backtracking_budget(pattern: str, allowed: bool) -> None:
    from streamproxy.routing.conditions import CLIENT_REGEX_BUDGET, regex_cost
    from streamproxy.routing.portkey_config import client_made
    assert (regex_cost(pattern) <= CLIENT_REGEX_BUDGET) is allowed
    raw = {"strategy": {"mode": "conditional", "conditions": [
               {"query": {"metadata.m": {"$regex": pattern}}, "then": "a"}]},
           "targets": [{"name": "a"}]}
    node = parse_config(raw)  # an operator's config may hold any valid pattern
    if allowed:
        assert client_made(node).conditions[0].client
    else:
        with pytest.raises(InvalidRequest, match=r"conditions\[0\]\.query\.metadata\.m\.\$regex"):
            client_made(node)


@pytest.mark.parametrize(("parents", "own"), [("max_tokens", "max_completion_tokens"),
                                              ("max_completion_tokens", "max_tokens")])
@pytest.mark.parametrize("provider", ["oa", "an", "aws"])
def test_a_targets_token_cap_replaces_its_parents_under_either_name(
        provider: str, parents: str, own: str) -> None:
    # A parent's override_params and a target's were checked and merged apart: a parent's
    # max_tokens stayed beside its target's max_completion_tokens, and both went upstream —
    # OpenAI's 400, and Anthropic's and Bedrock's translators read the parent's cap first
    # (the target's 50 never applied). The target's cap replaces its parent's, as an
    # override's replaces the request's.
    node = parse_config({"override_params": {parents: 4000, "temperature": 0.5},
                         "strategy": {"mode": "single"},
                         "targets": [{"override_params": {own: 50}}]})
    assert node.leaves()[0].override_params == {"temperature": 0.5, own: 50}
    gateway = gateway_for()
    config = {"provider": provider, "override_params": {parents: 4000},
              "strategy": {"mode": "single"}, "targets": [{"override_params": {own: 50}}]}
    req = _req({"model": "m"})
    assert _caps_sent(gateway, config, req) == [50]


def test_onellm_fallback_models_move_on_for_the_errors_onellm_falls_back_on() -> None:
    # OneLLM's FallbackConfig moves to the next model on its retriable errors alone (rate
    # limit, service unavailable, bad gateway, timeout); an invalid request or a bad key is
    # raised at once. Here any error moved on: a 400 (a bad parameter, a context overflow) or
    # a 401 went to each of up to 50 fallback models, and the client got the last one's error
    # instead of the primary's.
    from streamproxy.openai_api.request import parse_chat_request

    gateway = gateway_for(configs={"smart": {"provider": "an"}}, routes={"smart": "smart"})
    for model in ("oa/x", "smart"):
        req = parse_chat_request(orjson.dumps({
            "messages": [{"role": "user", "content": "hi"}], "model": model,
            "fallback_models": ["groq/y", "an/z"]}))
        planned = gateway.plan({}, req, None)
        for status in (429, 500, 502, 503, 504, 529, 408):
            assert planned.next_after(0, status) == 1, status
            assert planned.next_after(1, status) == 2, status
        for status in (400, 401, 403, 404, 413, 422):
            assert planned.next_after(0, status) is None, status
            assert planned.next_after(1, status) is None, status


def test_an_x_portkey_config_keeps_fallback_models_and_retries() -> None:
    # With an x-portkey-config, fallback_models and retries in the same body were dropped in
    # silence (the client's fallbacks never ran, its retries never happened), as they were
    # beside a `routes:` alias: the config now runs as the primary, as a route's does.
    from streamproxy.openai_api.request import parse_chat_request

    gateway = gateway_for(configs={"named": {"strategy": {"mode": "fallback"}, "targets": [
        {"provider": "an", "override_params": {"model": "claude"}},
        {"provider": "vx", "retry": {"attempts": 1}}]}})
    inline = orjson.dumps({"strategy": {"mode": "fallback"}, "targets": [
        {"provider": "an", "override_params": {"model": "claude"}},
        {"provider": "vx", "retry": {"attempts": 1}}]}).decode()

    def attempts(header: str, body: dict[str, Any]) -> list[tuple[str, str | None, int, str]]:
        req = parse_chat_request(orjson.dumps({
            "messages": [{"role": "user", "content": "hi"}], "model": "m", **body}))
        return [(a.target.provider.name, a.target.model, a.retry.attempts, a.path)
                for a in gateway.plan({"x-portkey-config": header}, req, None).attempts]

    for header in ("named", inline):
        assert attempts(header, {"retries": 2, "fallback_models": ["oa/y", "groq/z"]}) == [
            ("an", "claude", 2, "config.targets[0].targets[0]"),
            ("vx", "m", 1, "config.targets[0].targets[1]"),
            ("oa", "y", 0, "config.targets[1]"), ("groq", "z", 0, "config.targets[2]")]
        assert attempts(header, {"retries": 2}) == [
            ("an", "claude", 2, "config.targets[0]"), ("vx", "m", 1, "config.targets[1]")]
        assert attempts(header, {}) == [
            ("an", "claude", 0, "config.targets[0]"), ("vx", "m", 1, "config.targets[1]")]
    # A client's config stays within its caps with the body's additions counted.
    wide = orjson.dumps({"strategy": {"mode": "fallback"},
                         "targets": [{"provider": "oa"}] * 30}).decode()
    with pytest.raises(InvalidRequest) as info:
        attempts(wide, {"fallback_models": ["groq/z"] * 30})
    assert info.value.param.startswith("config")
    with pytest.raises(InvalidRequest):
        attempts(wide, {"retries": 2})


@pytest.mark.parametrize("api_key", ["\u201csk-proj-abc123\u201d", "sk-proj-abc123\u200b",
                                     "sk-proj-abc\u00a0123"])
def test_a_config_api_key_that_is_not_ascii_is_refused_naming_the_field(api_key: str) -> None:
    """Smart quotes or a non-breaking/zero-width space pasted with a target's key went upstream
    as UTF-8 bytes: the provider's 401 with no hint. Refused as a control character is, in a
    client's config and a nested target alike, the key never echoed."""
    for raw, param in (({"provider": "p", "api_key": api_key}, "config.api_key"),
                       ({"strategy": {"mode": "fallback"}, "targets": [
                           {"provider": "p"}, {"provider": "q", "api_key": api_key}]},
                        "config.targets[1].api_key")):
        with pytest.raises(InvalidRequest) as info:
            parse_config(raw)
        assert info.value.param == param and "ASCII" in info.value.message
        assert "abc" not in info.value.message


@pytest.mark.parametrize(("raw", "param", "hint"), [
    # Portkey's first config form, which its gateway refuses too ("migrate to the latest
    # version"): "not a config field" said neither why nor what to write
    ({"mode": "fallback", "options": [{"provider": "a"}, {"provider": "b"}]}, "config.mode",
     "{strategy: {mode: fallback}, targets: [...]}"),
    ({"options": [{"provider": "a"}]}, "config.options", "targets: [...]"),
    ({"strategy": {"mode": "fallback"}, "targets": [
        {"mode": "loadbalance", "options": [{"provider": "a"}]}]}, "config.targets[0].mode",
     "{strategy: {mode: loadbalance}, targets: [...]}"),
])
def test_portkeys_older_config_form_is_refused_saying_how_to_write_it(
        raw: dict[str, Any], param: str, hint: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_config(raw)
    assert (info.value.param, info.value.code) == (param, "invalid_config")
    assert "older config form" in info.value.message and hint in info.value.message


@pytest.mark.parametrize(("raw", "param", "hint"), [
    # scalars where Portkey's schema (and this one) takes an object: refused as there, with
    # the object to write ("must be an object" named no field of it)
    ({"provider": "a", "cache": "simple"}, "config.cache", "{mode: simple}"),
    ({"provider": "a", "cache": "semantic"}, "config.cache", "no semantic cache"),
    ({"provider": "a", "retry": 3}, "config.retry", "{attempts: 3}"),
    ({"strategy": "fallback", "targets": [{"provider": "a"}]}, "config.strategy",
     "{mode: fallback}"),
])
def test_a_scalar_for_an_object_field_is_refused_saying_what_to_write(
        raw: dict[str, Any], param: str, hint: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_config(raw)
    assert info.value.param == param and hint in info.value.message, info.value.message


@pytest.mark.parametrize("headers", [{"x-portkey-virtual-key": "vk"},
                                     {"x-portkey-provider": "@vk"}])
def test_a_fallback_model_prefixed_with_the_virtual_keys_provider_keeps_the_key(
        headers: dict[str, str]) -> None:
    # With a virtual key in the headers, a fallback model `an/y` (its prefix naming the key's
    # own provider) went out with the provider's key, not the key's secret: the client's
    # fallback was billed to another account (or, with no provider key, sent its own key),
    # where `an/y` alone with the same headers is sent with the virtual key's secret.
    gateway = gateway_for(virtual_keys={"vk": {"provider": "an", "api_key": "sk-vk"}})
    req = _req({"model": "an/x", "fallback_models": ["an/y", "z", "oa/w"]})
    assert [(a.target.provider.name, a.target.model, a.target.api_key)
            for a in gateway.plan(headers, req, None).attempts] == [
        ("an", "x", "sk-vk"), ("an", "y", "sk-vk"), ("an", "z", "sk-vk"), ("oa", "w", "k")]
    alone = gateway.plan(headers, _req({"model": "an/y"}), None).attempts
    assert [(a.target.model, a.target.api_key) for a in alone] == [("y", "sk-vk")]


@pytest.mark.parametrize("headers", [{"x-portkey-virtual-key": "vk"},
                                     {"x-portkey-provider": "@vk"}])
def test_a_config_model_prefixed_with_the_virtual_keys_provider_keeps_the_key(
        headers: dict[str, str]) -> None:
    # The SDK's virtual_key= with a config's override model `an/y` (the key's own provider):
    # sent with the provider's key, not the key's secret, where the request's own `an/y` with
    # the same header is sent with the secret (a prefix naming the header's provider is
    # stripped and the header's target kept). A prefix naming another provider still routes.
    gateway = gateway_for(virtual_keys={"vk": {"provider": "an", "api_key": "sk-vk"}})

    def sent(model: str) -> list[tuple[str, str | None, str | None]]:
        config = orjson.dumps({"override_params": {"model": model}}).decode()
        return [(a.target.provider.name, a.target.model, a.target.api_key) for a in
                gateway.plan({**headers, "x-portkey-config": config}, _req({"model": "x"}),
                             None).attempts]

    assert sent("an/y") == [("an", "y", "sk-vk")]
    assert sent("y") == [("an", "y", "sk-vk")]
    assert sent("oa/y") == [("oa", "y", "k")]


@pytest.mark.parametrize(("pattern", "value", "expected"), [
    (".*urgent", "x" * 100_000, False),  # a leading .* changes nothing a search finds
    (".*urgent.*", "x" * 100_000 + "urgent" + "x" * 10, True),
    ("(?i).*urgent", "x" * 100_000 + "URGENT", True),  # after inline flags too
    ("(?i)(?s).*urgent.*", "x\n" * 50_000 + "Urgent\n", True),
    ("urgent", "x" * 1_000_000 + "urgent", True),  # no backtracking: any length is read
    ("^gpt-4o(-mini|-nano)?$", "gpt-4o-mini", True),
    (r"\s+$", " " * 100_000 + "x", False),  # quadratic: past its cap, never a match
    (r"\d+x", "1" * 100_000, False),
    ("(a+)+$", "a" * 100_000 + "b", False),  # exponential
    (r"\d+x", "123x", True),  # within the cap, as before
    (r"(\w+) \1", "hello hello", True),  # a backreference: one comparison
    (r"(a)\1", "x" * 100_000 + "aa", True),
    (r"^(?:(a)|b)(?(1)a|b)$", "aa", True),
    # One way, but each start walks 1,000 characters: 0.26 s on 100 kB, 1.8 s for \w{255}x
    # on 1 MB; (?:\w{100}){100}x 2.6 s on 100 kB. Each way's walk is counted now.
    (r"\w{1000}x", "a" * 100_000 + "x", False),
    (r"(?:\w{100}){100}x", "a" * 100_000 + "x", False),
    (r"\w{4}x", "a" * 100_000 + "x", True),  # a short walk: still any length
    # A backreference compares as many characters as its group took: n³ on a run of a's.
    (r"(a*)\1x", "a" * 1_400 + "x", False),
    ("please escalate this conversation to a human agent", "x" * 1_000_000
     + "please escalate this conversation to a human agent", True),  # sre's prefix search
])
def test_an_operators_regex_cannot_stall_the_loop_on_a_clients_long_value(
        pattern: str, value: str, expected: bool) -> None:
    # An operator's pattern ran unbounded on whatever the request brought: `.*urgent` over
    # a 100 kB params.user took 14 s of the event loop, every stream of the worker with it.
    # Now the text it reads is bounded by what fits CLIENT_REGEX_BUDGET (its cost counted
    # on that text), and a value past that never matches; a pattern that backtracks no
    # more than a few ways per start (a literal) reads any length.
    from streamproxy.routing.conditions import CLIENT_REGEX_BUDGET, regex_cost, regex_text_max
    query = {"params.user": {"$regex": pattern}}
    validate_query(query, "q")
    text_max = regex_text_max(pattern)
    if text_max is None:  # only what backtracks a bounded number of ways per start
        assert regex_cost(pattern, 1 << 20, client=False) <= 16 * ((1 << 20) + 1)
    else:
        assert regex_cost(pattern, text_max, client=False) <= CLIENT_REGEX_BUDGET
    assert matches(query, {}, {"user": value}) is expected


@pytest.mark.parametrize(("pattern", "value", "expected"), [
    ("^(?<tier>gold|silver)$", "gold", True),  # a named group, as JavaScript writes it
    (r"^(?<c>[a-z])\k<c>$", "zz", True),  # and its backreference
    ("^a[^]b$", "a\nb", True),  # [^]: any character, a newline too
    ("^a[]", "a", False),  # []: no character
    (r"^\d+$", "\u0661\u0662", False),  # Arabic-Indic digits: not \d in JavaScript
    (r"^\w+$", "h\u00e9", False),
    (r"\bx", "\u00e9x", True),
    ("^gpt-4o$", "gpt-4o\n", False),  # $ is the end of the text, not before a last \n
    (r"^\s$", "\u00a0", True),  # but \s is Unicode's spaces in JavaScript too
    (r"^\S$", "\u00a0", False),
    (r"^[\s,]+$", "\u3000,", True),
    (r"^[^\S\r\n]+$", "\u00a0\u3000", True),  # \S in a class: JavaScript's too
    (r"^[^\S\r\n]+$", " \n", False),
    (r"^[\S]$", "\u00a0", False),
    (r"^[\S]$", "a", True),
    ("(?m)^b$", "a\nb\nc", True),  # Python's inline flags still work
])
def test_regex_means_what_it_means_in_portkeys_javascript(
        pattern: str, value: str, expected: bool) -> None:
    # Portkey's gateway runs `new RegExp(arg).test(value)`: a config written for it was a 400
    # here ((?<name>...), \k<name>, [^]), or routed differently (\d took any script's digits,
    # $ matched before a final newline).
    query = {"params.user": {"$regex": pattern}}
    validate_query(query, "q")
    assert matches(query, {}, {"user": value}) is expected


def test_two_keys_of_one_provider_have_breakers_apart() -> None:
    """Load balancing (or falling back) across two API keys of one provider is Portkey's own
    pattern: the targets shared one breaker (its key: provider, model, base URL), so a key
    rate-limited or revoked (`failure_status_codes: [429]` or `[401]`) opened the other's
    too; with both open the breakers were bypassed, and half the requests still went to the
    failing key. Each key of the operator's (a virtual key, a target's api_key) fails apart."""
    gateway = gateway_for(virtual_keys={"oa-1": {"provider": "oa", "api_key": "sk-one"},
                                        "oa-2": {"provider": "oa", "api_key": "sk-two"}})
    breaker = {"failure_threshold": 1, "cooldown_interval": 60000,
               "failure_status_codes": [429]}
    for leaves in ([{"virtual_key": "oa-1"}, {"virtual_key": "oa-2"}],
                   [{"provider": "oa", "api_key": "sk-a"}, {"provider": "oa", "api_key": "sk-b"}]):
        fallback = orjson.dumps({"strategy": {"mode": "fallback", "cb_config": breaker},
                                 "targets": leaves}).decode()
        first = planned(gateway, {"x-portkey-config": fallback})
        assert first[0].breaker_key != first[1].breaker_key
        assert "sk-" not in first[0].breaker_key  # (a metrics label: never the key)
        gateway.breakers.record(first[0].breaker_key, first[0].breaker, 429)
        assert [a.target.api_key for a in planned(gateway, {"x-portkey-config": fallback})
                ] == [first[1].target.api_key]
        lb = orjson.dumps({"strategy": {"mode": "loadbalance", "cb_config": breaker},
                           "targets": leaves}).decode()
        assert {planned(gateway, {"x-portkey-config": lb})[0].target.api_key
                for _ in range(20)} == {first[1].target.api_key}


def test_onellm_fields_over_an_operators_config_bound_the_requests_tries() -> None:
    # `retries: 10` went on each of a 30-target default config's targets: 330 upstream
    # requests for one client request. The plan now carries the bound the executor keeps:
    # an inline config's 61, or the operator's config's own most, if more.
    from streamproxy.openai_api.request import parse_chat_request

    gateway = gateway_for(configs={
        "wide": {"strategy": {"mode": "fallback"}, "targets": [{"provider": "an"}] * 30},
        "big": {"strategy": {"mode": "fallback"}, "targets": [{"provider": "an"}] * 70}},
        default_config="wide")

    def bound(body: dict[str, Any], headers: dict[str, str] | None = None) -> int | None:
        req = parse_chat_request(orjson.dumps({
            "messages": [{"role": "user", "content": "hi"}], "model": "m", **body}))
        return gateway.plan(headers or {}, req, None).max_tries

    assert bound({"retries": 10}) == 61
    assert bound({"fallback_models": ["m"]}) == 61
    assert bound({"retries": 1}, {"x-portkey-config": "big"}) == 70
    # the plain path: one target, its 11 tries at most
    assert bound({"retries": 10}, {"x-portkey-provider": "oa"}) is None
    assert bound({}) is None  # the operator's config alone: as it asks


def test_an_inline_configs_caps_count_the_clients_fallbacks_not_the_operators_configs() -> None:
    # Beside a one-target inline config, 9 fallback models that run a 6-target default config
    # were a 400 "'config' may have at most 51 targets": the operator's config, which the
    # client cannot see, counted against the client's. Without the header they are served;
    # now here too, the request's tries bounded as there (61).
    from streamproxy.openai_api.request import parse_chat_request

    gateway = gateway_for(configs={"dc": {"strategy": {"mode": "fallback"},
                                          "targets": [{"provider": "an"}] * 6}},
                          default_config="dc")

    def planned(config: dict[str, Any], body: dict[str, Any]) -> Any:
        req = parse_chat_request(orjson.dumps({
            "messages": [{"role": "user", "content": "hi"}], "model": "x", **body}))
        return gateway.plan({"x-portkey-config": orjson.dumps(config).decode()}, req, None)

    plan = planned({"provider": "oa"}, {"fallback_models": ["y"] * 9, "retries": 2})
    assert len(plan.attempts) == 55 and plan.max_tries == 61
    assert [(a.target.provider.name, a.retry.attempts) for a in plan.attempts[:2]] == [
        ("oa", 2), ("an", 0)]
    # The client's own config and fields still count: its targets, its retries, its fallbacks.
    wide = {"strategy": {"mode": "fallback"}, "targets": [{"provider": "oa"}] * 30}
    for body in ({"fallback_models": ["y"] * 30}, {"retries": 2}):
        with pytest.raises(InvalidRequest) as info:
            planned(wide, body)
        assert info.value.param == "config"


def test_a_conditional_whose_pick_is_open_is_not_drawn_beside_a_healthy_target(
        new_breakers: BreakersFactory) -> None:
    # The conditional sends this request to `a`, whose breaker is open; its other target `c`
    # (healthy) is not where it would go, so the draw must take the healthy `b`.
    clock = Clock()
    cb = new_breakers(clock)
    breaker = {"failure_threshold": 1, "cooldown_interval": 60000}
    raw = {"strategy": {"mode": "loadbalance"}, "cb_config": breaker, "targets": [
        {"strategy": {"mode": "conditional", "default": "c", "conditions": [
            {"query": {"metadata.tier": "pro"}, "then": "a"}]},
         "targets": [{"name": "a", "provider": "a"}, {"name": "c", "provider": "c"}]},
        {"provider": "b"}]}
    pro = {"metadata": {"tier": "pro"}}
    first = make({"provider": "a", "cb_config": breaker}, breakers=cb)
    cb.record(first.attempts[0].breaker_key, first.attempts[0].breaker, 500)
    assert {names(make(raw, seed=s, breakers=cb, **pro))[0] for s in range(50)} == {"b"}
    # (the default `c`, healthy, is still drawn for a request the condition sends there)
    assert "c" in {names(make(raw, seed=s, breakers=cb))[0] for s in range(50)}
    # As for a proxy key's providers: a pick it may not use is not drawn beside one it may.
    usable = {names(make(raw, seed=s, usable=lambda t: t.provider.name != "a", **pro))[0]
              for s in range(50)}
    assert usable == {"b"}


@pytest.mark.parametrize(("targets", "said"), [
    ([{"provider": "a"}, {"provider": "b"}], "must name a target, and no target has a name"),
    ([{"provider": "a", "name": "b"}, {"provider": "a", "name": "a"}],
     "must name a target (names: a, b)"),
])
@pytest.mark.parametrize("field", ["conditions[0].then", "default"])
def test_a_conditional_naming_no_target_says_which_names_there_are(
        targets: list[dict[str, Any]], said: str, field: str) -> None:
    # (with no name at all the message ended "(names: )", which told the client nothing)
    strategy: dict[str, Any] = {"mode": "conditional", "default": "a",
                                "conditions": [{"query": {}, "then": "a"}]}
    if field == "default":
        strategy.update(default="x", conditions=[])  # (no `then` to be refused first)
    else:
        strategy["conditions"][0]["then"] = "x"
    with pytest.raises(InvalidRequest) as err:
        parse_config({"strategy": strategy, "targets": targets})
    assert err.value.message == f"Invalid config: 'config.strategy.{field}' {said}."
