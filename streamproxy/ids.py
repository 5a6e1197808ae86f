"""Random ids for traces and completions.

They only have to be unique, not secret, so they come from `random`'s generator (seeded from
the OS, and reseeded by `random` itself in every forked worker) instead of a getrandom()
system call per id on the request path."""

from random import getrandbits
from time import time_ns


def random_hex(nbytes: int) -> str:
    """`nbytes` random bytes as 2 * nbytes lowercase hex digits."""
    return f"{getrandbits(nbytes * 8):0{nbytes * 2}x}"


def time_ordered_hex() -> str:
    """24 hex digits: the milliseconds since the epoch (11), then 52 random bits (13).

    Ids made later sort after earlier ones, so a stored completion's id lands at the end of
    the store's (owner, id) index instead of at a random page of it: at 100k rows, random ids
    cost SQLite about twice the work per insert (bench/run.py `store-c32`)."""
    return f"{time_ns() // 1_000_000:011x}{getrandbits(52):013x}"
