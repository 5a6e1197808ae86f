"""Circuit breakers shared by the workers (`--workers N`): several processes' failures count
toward one threshold, a breaker opened by one worker is open in the others, and a table with
no free slot left for a target keeps that target's state in the worker (as without workers).
(The breaker rules themselves run on both kinds of state in test_planner.py.)"""

from __future__ import annotations

import multiprocessing

from streamproxy.routing.breaker import CLOSED, HALF_OPEN, OPEN
from streamproxy.routing.portkey_config import BreakerSpec
from streamproxy.server.shared_breakers import SharedBreakerTable, SharedCircuitBreakers
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
