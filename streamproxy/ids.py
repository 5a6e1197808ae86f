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


_last_ordered = 0  # the last time_ordered_hex, as an int (this process's: forks copy it)


def time_ordered_hex() -> str:
    """24 hex digits: the milliseconds since the epoch (11), then 52 random bits (13).

    Ids made later sort after earlier ones, so a stored completion's id lands at the end of
    the store's (owner, id) index instead of at a random page of it: at 100k rows, random ids
    cost SQLite about twice the work per insert (bench/run.py `store-c32`). Within a process
    each sorts after the last, even in its millisecond (or after a clock stepped back): the
    id is a stored completion's place in the list, and requests one after another to a fast
    upstream or the cache share a millisecond."""
    global _last_ordered
    value = (time_ns() // 1_000_000) << 52 | getrandbits(52)
    if value <= _last_ordered:
        value = _last_ordered + 1
    _last_ordered = value
    return f"{value:024x}"
