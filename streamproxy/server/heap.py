"""Keep a cushion of free memory at the top of glibc's heap.

glibc's `free()` hands the top of the heap back to the kernel as soon as more than 128 KiB is
free there, and the next allocation that reaches past it takes a page fault per 4 KiB page to
get it back. A streaming proxy allocates and frees buffers of tens of KiB (a read of many
events, the frames it became) thousands of times a second, so its heap top crosses that line
over and over: at 32 concurrent streams that was ~55,000 page faults a second and ~15 % of the
worker's CPU. A 1 MiB pad (`M_TOP_PAD`) keeps that much free at the top when trimming, so the
churn stays in memory the process already has; it costs at most the pad per malloc arena.

Operators who tune malloc themselves (`GLIBC_TUNABLES=glibc.malloc.…`) keep their settings.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TOP_PAD = -2  # glibc's mallopt parameter number
HEAP_CUSHION = 1 << 20


def keep_heap_cushion(pad: int = HEAP_CUSHION) -> bool:
    """Set glibc's M_TOP_PAD; False (and nothing changed) on another libc or when the
    environment already tunes malloc."""
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(M_TOP_PAD, pad))
    except (OSError, AttributeError):
        return False
