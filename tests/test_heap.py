"""The heap cushion (server/heap.py): freeing and reallocating a few hundred KiB, as a stream's
reads and frames do, takes no page faults once the cushion is set, and ~100 per round without.
Each case runs in a fresh interpreter: malloc settings are per process and stay set."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

CHURN = """
import resource, sys
from streamproxy.server.heap import keep_heap_cushion
applied = keep_heap_cushion() if sys.argv[1] == "cushion" else None

def churn():  # 480 KiB in blocks below glibc's mmap threshold: they come from the heap's top
    blocks = [bytearray(60_000) for _ in range(8)]
    del blocks

for _ in range(5):
    churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(200):
    churn()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

GLIBC = platform.libc_ver()[0] == "glibc"


def _churn(mode: str, tunables: str | None = None) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if tunables is not None:
        env["GLIBC_TUNABLES"] = tunables
    out = subprocess.run([sys.executable, "-c", CHURN, mode], env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout.split()
    return out[0], int(out[1])


def test_the_cushion_stops_the_page_faults_of_heap_churn() -> None:
    applied, with_cushion = _churn("cushion")
    _, without = _churn("plain")
    if GLIBC:
        assert applied == "True"
        assert without > 200 * 50  # the top is trimmed and refaulted every round
        assert with_cushion < 200
    else:  # another libc: nothing is changed, and the call says so
        assert applied == "False"


def test_an_operators_own_malloc_tuning_is_kept() -> None:
    applied, faults = _churn("cushion", tunables="glibc.malloc.trim_threshold=131072")
    assert applied == "False"
    if GLIBC:
        assert faults > 200 * 50  # their setting (the default threshold) stands

