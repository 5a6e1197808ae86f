"""Random ids for traces and completions.

They only have to be unique, not secret, so they come from a Mersenne Twister seeded from the
OS instead of a getrandom() system call per id on the request path. It is the proxy's own, not
`random`'s global one: an application or test that seeds the global generator must not make
the proxy repeat ids, and the proxy must not move a state others read. Reseeded in every
forked child, so workers do not replay the master's ids."""

import os
from random import Random
from time import time_ns

_rng = Random()
os.register_at_fork(after_in_child=_rng.seed)
getrandbits = _rng.getrandbits


def random_hex(nbytes: int) -> str:
    """`nbytes` random bytes as 2 * nbytes lowercase hex digits."""
    return f"{getrandbits(nbytes * 8):0{nbytes * 2}x}"


def time_ordered_hex() -> str:
    """24 hex digits: the milliseconds since the epoch (11), then 52 random bits (13).

    Ids made later sort after earlier ones, so a stored completion's id lands at the end of
    the store's (owner, id) index instead of at a random page of it: at 100k rows, random ids
    cost SQLite about twice the work per insert (bench/run.py `store-c32`)."""
    return f"{time_ns() // 1_000_000:011x}{getrandbits(52):013x}"
