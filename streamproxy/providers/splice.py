"""Runs of text deltas, spliced from a provider's bytes into the client's frames.

A provider writes nearly every event of a stream as the same bytes around a text. A run of
such events in a read is found by one regular expression per provider, for one event's exact
form with its text's literal as group 1: searched for once, then matched event after event
where the last one ended (one pass over the run that checks every byte and cuts every
literal). Each text goes into the client's frame still JSON-escaped
(`ChunkEncoder.content_literals`), without decoding an event. The events around a run take the
provider's decoder as before. A literal is spliced only in the spelling orjson writes (raw
UTF-8, and no escapes but `\\" \\\\ \\b \\f \\n \\r \\t`), so a spliced frame is byte for byte the
one the decoder's path would write; any other spelling ends the run.
"""

from __future__ import annotations

import re
from typing import Protocol

# The inside of a JSON string as orjson writes it (see above).
JSON_TEXT = rb'[^"\\\x00-\x1f]*(?:\\["\\bfnrt][^"\\\x00-\x1f]*)*'
# A block index: a JSON integer of no sign and no leading zero (`01` is no JSON, which the
# decoder's path reports). Possessive: what follows it cannot start with a digit.
JSON_INDEX = rb"(?:0|[1-9][0-9]*+)"


def is_utf8(data: bytes) -> bool:
    return data.isascii() or _decodes(data)


def _decodes(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


class RunReader(Protocol):
    """A translator that splices: its decoder's path for the bytes between runs, and its
    splice, which answers False when it cannot take a run: the stream ended, or its decoder
    holds part of an event (a run can follow an `id:` line of the same block). Methods, not
    stored bound methods: those would tie the translator in a cycle, freed only by the GC."""

    max_event_bytes: int  # its decoder's cap

    def decode_read(self, data: bytes) -> object: ...

    def splice_run(self, data: bytes, start: int, end: int, literals: list[bytes]) -> bool: ...


def feed_runs(reader: RunReader, data: bytes, event: re.Pattern[bytes]) -> None:
    """Feed a read: each run of `event` (one event's exact form, its text's literal as group
    1) to the reader's splice with the run's literals, the bytes between runs to its
    decoder; a run it refuses is decoded with everything after it. A read that is not valid
    UTF-8 is decoded whole (the decoder's path reports it), and so is a read longer than the
    decoder's cap: it may hold a whole event over it, which a run would pass on and the
    decoder refuses (as it refuses it split across reads)."""
    if len(data) > reader.max_event_bytes or not (data.isascii() or _decodes(data)):
        reader.decode_read(data)
        return
    done = 0  # what has been handed on
    first = event.match(data) or event.search(data)  # most reads start with a run: no search
    while first is not None:
        start, end = first.span()
        literals = [first[1]]
        keep = literals.append
        next_event = event.scanner(data, end).match  # each match starts where the last ended
        while (m := next_event()) is not None:
            keep(m[1])
            end = m.end()
        if start > done:
            reader.decode_read(data[done:start])
            done = start
        if not reader.splice_run(data, start, end, literals):
            break
        done = end
        first = event.search(data, end) if end < len(data) else None
    if done < len(data):
        reader.decode_read(data[done:] if done else data)
