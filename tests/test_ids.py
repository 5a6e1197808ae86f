"""Trace and completion ids: the right shape, and unique across forked workers."""

import os
import re

from streamproxy.ids import random_hex


def test_random_hex_has_the_asked_length_and_alphabet() -> None:
    for nbytes in (1, 12, 16):
        values = {random_hex(nbytes) for _ in range(200)}
        assert all(re.fullmatch(f"[0-9a-f]{{{nbytes * 2}}}", v) for v in values)
    assert len({random_hex(16) for _ in range(1000)}) == 1000


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
