"""Rate-limit buckets shared by a generation of workers: the same answers as a worker's own
bucket, and one budget for several processes."""

from __future__ import annotations

import multiprocessing
import time

from hypothesis import given
from hypothesis import strategies as st

from streamproxy.config import Config
from streamproxy.server.app import create_app
from streamproxy.server.auth import AUTH, TokenBucket, keep_buckets, parse_auth, share_buckets
from streamproxy.server.shared_rate import SharedBuckets
from tests.helpers import make_config


@given(st.floats(0.5, 600), st.integers(1, 20),
       st.lists(st.floats(0, 5, allow_nan=False), min_size=1, max_size=60))
def test_a_shared_bucket_answers_as_a_local_one(rpm: float, burst: int,
                                                gaps: list[float]) -> None:
    local = TokenBucket(rpm, burst)
    shared = TokenBucket(rpm, burst)
    shared.shared = (SharedBuckets(["k"]), 0)
    now = 1000.0
    for gap in gaps:
        now += gap
        a, b = local.take(now), shared.take(now)
        assert (a is None) == (b is None)
        if a is not None and b is not None:
            assert abs(a - b) < 1e-9


def _spend(buckets: SharedBuckets, tries: int, granted: multiprocessing.Queue) -> None:
    granted.put(sum(buckets.take(0, 50, 1e-9, time.monotonic()) is None for _ in range(tries)))


def test_processes_share_one_budget() -> None:
    buckets = SharedBuckets(["k"])  # burst 50, (almost) no refill
    ctx = multiprocessing.get_context("fork")  # as the master forks its workers
    granted: multiprocessing.Queue = ctx.Queue()
    procs = [ctx.Process(target=_spend, args=(buckets, 40, granted)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(20)
    assert sum(granted.get(timeout=5) for _ in procs) == 50  # not 40 each


def test_only_rate_limited_keys_get_a_shared_slot() -> None:
    config = make_config(
        {"m": {"type": "mock"}}, "m",
        auth={"keys": [{"name": "a", "key": "ka", "rate_limit": {"requests_per_minute": 6}},
                       {"name": "b", "key": "kb"},
                       {"name": "c", "key": "kc", "rate_limit": {"requests_per_minute": 1,
                                                                  "burst": 2}}]})
    shared = SharedBuckets.for_config(config)
    assert shared.slots == {"a": 0, "c": 1}
    auth = parse_auth(config)
    assert auth is not None
    share_buckets(auth, shared)
    a, b, c = auth.keys
    assert a.bucket is not None and a.bucket.shared == (shared, 0)
    assert b.bucket is None
    assert c.bucket is not None and c.bucket.shared == (shared, 1)
    assert [c.bucket.take(10.0) for _ in range(3)][:2] == [None, None]
    assert a.bucket.take(10.0) is None  # c's spending is not a's


def _keys(**limits: dict[str, float]) -> Config:
    return make_config({"m": {"type": "mock"}}, "m", auth={"keys": [
        {"name": name, "key": f"k-{name}", "rate_limit": limit}
        for name, limit in limits.items()]})


def test_a_reload_keeps_the_spent_tokens_of_keys_whose_limit_it_keeps() -> None:
    """Each reload's generation got new, full buckets: a client at its limit had a fresh
    burst after every SIGHUP (and the old workers still draining a budget of their own).
    A key with the same rate_limit now takes from the slot it had; a changed one starts full."""
    before = SharedBuckets.for_config(_keys(a={"requests_per_minute": 1, "burst": 2},
                                            b={"requests_per_minute": 1, "burst": 2}))
    for name in ("a", "b"):
        assert [before.take(before.slots[name], 2, 1 / 60, 10.0) for _ in range(2)] == [None] * 2
    after = SharedBuckets.for_config(_keys(c={"requests_per_minute": 1},
                                           a={"requests_per_minute": 1, "burst": 2},
                                           b={"requests_per_minute": 2, "burst": 2}), before,
                                     now=11.0)
    assert after.take(after.slots["a"], 2, 1 / 60, 11.0) is not None  # still spent
    assert after.take(after.slots["b"], 2, 2 / 60, 11.0) is not None  # a new limit: still spent
    assert after.take(after.slots["c"], 1, 1 / 60, 11.0) is None
    # The old generation's draining workers and the new one share a's one budget.
    assert before.take(before.slots["a"], 2, 1 / 60, 100.0) is None  # (refilled by then)
    assert after.take(after.slots["a"], 2, 1 / 60, 100.0) is not None


def test_a_reload_in_place_keeps_the_spent_tokens_of_keys_whose_limit_it_keeps() -> None:
    """A single process reloading in place (no master) built new, full buckets too. (The
    reload reads the clock: a token a day, so none comes back meanwhile.)"""
    daily = 1 / (24 * 60)
    running = create_app(_keys(a={"requests_per_minute": daily, "burst": 1},
                               b={"requests_per_minute": daily, "burst": 1}))
    old = running[AUTH].keys
    now = time.monotonic()
    assert all(k.bucket is not None and k.bucket.take(now) is None for k in old)
    reloaded = create_app(_keys(a={"requests_per_minute": daily, "burst": 1},
                                b={"requests_per_minute": daily, "burst": 2}),
                          running_auth=running[AUTH])
    a, b = reloaded[AUTH].keys
    assert a.bucket is not None and a.bucket.take(now + 1) is not None
    assert b.bucket is not None and b.bucket.take(now + 1) is not None  # a new limit: still spent


def test_a_reload_that_changes_a_limit_carries_the_tokens_left() -> None:
    """A reload that lowered a key's burst or changed its rate gave it a full new bucket: a
    client at its limit had a fresh burst from the SIGHUP. The tokens it had left (refilled at
    the old rate until the reload) carry over, at most the new burst; a key never used is full."""
    before = SharedBuckets.for_config(_keys(a={"requests_per_minute": 60, "burst": 10},
                                            b={"requests_per_minute": 60, "burst": 10},
                                            c={"requests_per_minute": 60, "burst": 10}))
    for _ in range(10):  # a: all ten spent
        assert before.take(before.slots["a"], 10, 1.0, 100.0) is None
    assert before.take(before.slots["b"], 10, 1.0, 100.0) is None  # b: nine left
    after = SharedBuckets.for_config(_keys(a={"requests_per_minute": 6, "burst": 10},
                                           b={"requests_per_minute": 60, "burst": 4},
                                           c={"requests_per_minute": 6, "burst": 3}), before,
                                     now=102.0)

    def granted(name: str, burst: int, rate: float) -> int:
        return sum(after.take(after.slots[name], burst, rate, 102.0) is None for _ in range(20))

    assert granted("a", 10, 0.1) == 2  # 2 s at the old 1/s
    assert granted("b", 4, 1.0) == 4  # nine left, the new burst four
    assert granted("c", 3, 0.1) == 3  # never used: full


def test_a_reload_in_place_that_changes_a_limit_carries_the_tokens_left() -> None:
    running = create_app(_keys(a={"requests_per_minute": 60, "burst": 10},
                               b={"requests_per_minute": 60, "burst": 10},
                               c={"requests_per_minute": 60, "burst": 10}))
    a, b, _ = running[AUTH].keys
    assert a.bucket is not None and b.bucket is not None
    assert all(a.bucket.take(100.0) is None for _ in range(10))
    assert b.bucket.take(100.0) is None
    auth = parse_auth(_keys(a={"requests_per_minute": 6, "burst": 10},
                            b={"requests_per_minute": 60, "burst": 4},
                            c={"requests_per_minute": 6, "burst": 3}))
    assert auth is not None
    keep_buckets(auth, running[AUTH], now=102.0)

    def granted(i: int) -> int:
        bucket = auth.keys[i].bucket
        assert bucket is not None
        return sum(bucket.take(102.0) is None for _ in range(20))

    assert [granted(i) for i in range(3)] == [2, 4, 3]
