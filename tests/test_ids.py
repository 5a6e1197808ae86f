"""Trace and completion ids: the right shape, and unique across forked workers."""

import os
import random
import re
import time

import pytest

from streamproxy import ids as ids_module
from streamproxy.ids import random_hex, time_ordered_hex
from streamproxy.routing.executor import new_completion_id


def test_random_hex_has_the_asked_length_and_alphabet() -> None:
    for nbytes in (1, 12, 16):
        values = {random_hex(nbytes) for _ in range(200)}
        assert all(re.fullmatch(f"[0-9a-f]{{{nbytes * 2}}}", v) for v in values)
    assert len({random_hex(16) for _ in range(1000)}) == 1000


def test_completion_ids_sort_by_time_and_do_not_repeat() -> None:
    # Time first, so a store's (owner, id) index grows at its end; random after, so ids
    # made in the same millisecond still differ.
    ids = []
    for _ in range(3):
        ids += [new_completion_id() for _ in range(500)]
        time.sleep(0.002)
    assert all(re.fullmatch("chatcmpl-[0-9a-f]{24}", i) for i in ids)
    assert len(set(ids)) == len(ids)
    millis = [int(i[9:20], 16) for i in ids]
    assert millis == sorted(millis)
    assert abs(millis[-1] - time.time() * 1000) < 5_000
    assert millis[-1] - millis[0] >= 4  # two sleeps apart
    assert sorted(ids[:500])[-1] < ids[-1]  # a later millisecond sorts after every earlier id
    assert len({time_ordered_hex()[11:] for _ in range(1000)}) == 1000


def test_ids_made_in_one_millisecond_sort_in_the_order_they_were_made(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A stored completion's id is its place in the list: in one millisecond (a client's
    # requests one after another, to a fast upstream or the cache) they sorted at random.
    monkeypatch.setattr(ids_module, "time_ns", lambda: 1_700_000_000_123_456_789)
    monkeypatch.setattr(ids_module, "_last_ordered", 0, raising=False)  # (none made yet)
    made = [time_ordered_hex() for _ in range(1000)]
    assert made == sorted(made) and len(set(made)) == len(made)
    assert {m[:11] for m in made} == {f"{1_700_000_000_123:011x}"}
    # a clock stepped back (NTP) does not sort a new id before the last one either
    monkeypatch.setattr(ids_module, "time_ns", lambda: 1_700_000_000_000_000_000)
    assert time_ordered_hex() > made[-1]


def test_a_forked_worker_does_not_repeat_its_parents_ids() -> None:
    # The prefork master forks workers: each must draw its own ids, not replay the master's.
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id and leave at once
        os.write(write, random_hex(16).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 32 and child != random_hex(16)


def test_ids_do_not_follow_the_global_random_state() -> None:
    # An application or a test that seeds `random` (or reads it to check it was left alone,
    # as hypothesis does) must neither make the proxy repeat ids nor see the proxy move it.
    random.seed(7)
    first = (random_hex(16), time_ordered_hex()[11:])
    random.seed(7)
    state = random.getstate()
    second = (random_hex(16), time_ordered_hex()[11:])
    assert random.getstate() == state
    assert first[0] != second[0] and first[1] != second[1]
