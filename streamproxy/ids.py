"""Random ids for traces and completions.

They only have to be unique, not secret, so they come from `random`'s generator (seeded from
the OS, and reseeded by `random` itself in every forked worker) instead of a getrandom()
system call per id on the request path."""

from random import getrandbits


def random_hex(nbytes: int) -> str:
    """`nbytes` random bytes as 2 * nbytes lowercase hex digits."""
    return f"{getrandbits(nbytes * 8):0{nbytes * 2}x}"
