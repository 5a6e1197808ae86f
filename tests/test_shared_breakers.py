"""Circuit breakers shared by the workers (`--workers N`): several processes' failures count
toward one threshold, a breaker opened by one worker is open in the others, and a table with
no free slot left for a target keeps that target's state in the worker (as without workers).
(The breaker rules themselves run on both kinds of state in test_planner.py.)"""

from __future__ import annotations

import multiprocessing

from streamproxy.routing.breaker import CLOSED, HALF_OPEN, OPEN
from streamproxy.routing.portkey_config import BreakerSpec
from streamproxy.server.shared_breakers import (
    PROBES,
    SharedBreakerTable,
    SharedCircuitBreakers,
)
from tests.helpers import Clock

SPEC = BreakerSpec(failure_threshold=3, cooldown_interval=30)


def test_two_workers_count_toward_one_threshold_and_see_one_state() -> None:
    table, clock = SharedBreakerTable(), Clock(100.0)
    a, b = SharedCircuitBreakers(table, clock), SharedCircuitBreakers(table, clock)
    a.record("down", SPEC, 500)
    b.record("down", SPEC, 503)
    assert a.state("down", SPEC) == b.state("down", SPEC) == CLOSED
    b.record("down", SPEC, 502)  # the third failure on the instance
    assert a.is_open("down", SPEC) and b.is_open("down", SPEC)
    assert a.state("other", SPEC) == CLOSED
    clock.now += 31
    assert a.state("down", SPEC) == HALF_OPEN
    a.record("down", SPEC, None)  # one worker's successful trial closes it for both
    assert b.state("down", SPEC) == CLOSED
    b.record("down", SPEC, 500)  # and the counts started again
    assert a.state("down", SPEC) == CLOSED


def _fail_once(table: SharedBreakerTable) -> None:
    SharedCircuitBreakers(table).record("down", SPEC, 500)


def test_forked_workers_trip_the_breaker_together() -> None:
    table = SharedBreakerTable()  # made before the fork, as the master makes it
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_fail_once, args=(table,)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(20)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert SharedCircuitBreakers(table).state("down", SPEC) == OPEN  # 3 failures, 1 each


def test_a_full_table_keeps_the_state_in_the_worker() -> None:
    table, clock = SharedBreakerTable(slots=2), Clock(100.0)
    a, b = SharedCircuitBreakers(table, clock), SharedCircuitBreakers(table, clock)
    keys = [f"provider-{i}|m|" for i in range(3)]
    for key in keys:
        for _ in range(3):
            a.record(key, SPEC, 500)
    assert all(a.state(key, SPEC) == OPEN for key in keys)  # each tripped, wherever it lives
    assert sum(b.state(key, SPEC) == OPEN for key in keys) == 2  # two slots were shared


def test_closed_slots_are_reclaimed_for_new_targets() -> None:
    """The table's slots were never freed: a client naming new models (or inline cb_config
    values) filled it with closed breakers of one success each, after which every new target's
    breaker — the operator's among them — was kept per worker, tripping after N times its
    failure_threshold. A new target now takes the least recently recorded closed slot near its
    own; the workers that cached the slot for its old target find it is no longer theirs."""
    table, clock = SharedBreakerTable(slots=8), Clock(100.0)
    a, b = SharedCircuitBreakers(table, clock), SharedCircuitBreakers(table, clock)
    client = [f"openai|client-model-{i}|" for i in range(8)]
    for key in client:
        clock.now += 1
        a.record(key, SPEC, None)
        b.state(key, SPEC)  # (b caches the slot too)
    clock.now += 1
    a.record(client[1], SPEC, 500)  # (recorded again: the least recent is now client-0's)
    for _ in range(2):
        a.record("operator|gpt-4o|", SPEC, 500)
    b.record("operator|gpt-4o|", SPEC, 503)  # the third failure on the instance
    assert a.is_open("operator|gpt-4o|", SPEC) and b.is_open("operator|gpt-4o|", SPEC)
    # client-0's slot went: its old breaker is closed with no count, in every worker, never
    # read as the operator's open one; client-1's failure is still counted.
    assert a.state(client[0], SPEC) == b.state(client[0], SPEC) == CLOSED
    for _ in range(2):
        b.record(client[1], SPEC, 500)
    assert a.is_open(client[1], SPEC)


def test_open_slots_are_not_reclaimed() -> None:
    """An open breaker never loses its state to a new target (a down target would be tried
    by every request again): a table full of open ones keeps the new one in the worker."""
    table, clock = SharedBreakerTable(slots=2), Clock(100.0)
    a, b = SharedCircuitBreakers(table, clock), SharedCircuitBreakers(table, clock)
    for key in ("down-1", "down-2"):
        for _ in range(3):
            a.record(key, SPEC, 500)
    a.record("new", SPEC, None)
    assert b.is_open("down-1", SPEC) and b.is_open("down-2", SPEC)


def test_a_flood_of_client_breakers_leaves_the_operator_a_slot() -> None:
    """Open slots are never reclaimed, so a client's inline configs, each breaker opened by a
    bad request of its own, filled every slot near the operator's key: its breaker was kept
    per worker, and tripped only after failure_threshold failures in each. The operator's
    keys take a client-made slot, open or not; a client's never takes an open one."""
    table, clock = SharedBreakerTable(slots=PROBES), Clock(100.0)
    a, b = SharedCircuitBreakers(table, clock), SharedCircuitBreakers(table, clock)
    for i in range(PROBES):
        client = BreakerSpec(failure_threshold=1, cooldown_interval=1 + i,
                             failure_status_codes=frozenset({404}), client=True)
        a.record("down", client, 404)
        clock.now += 1
    for _ in range(3):
        a.record("down", SPEC, 500)
    assert b.is_open("down", SPEC)  # one breaker for the workers
    # The oldest client-made one gave its slot; the others are still shared.
    first = BreakerSpec(failure_threshold=1, cooldown_interval=1,
                        failure_status_codes=frozenset({404}), client=True)
    assert not b.is_open("down", first) and b.is_open("down", client)
    a.record("another", first, 404)  # a client's key: no open slot for it, kept in a
    assert a.is_open("another", first) and not b.is_open("another", first)
    assert b.is_open("down", SPEC) and b.is_open("down", client)
