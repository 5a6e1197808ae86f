"""Runs of text deltas, spliced from a provider's bytes into the client's frames.

A provider writes nearly every event of a stream as the same bytes around a text. A run of
such events in a read is found by one regular expression per provider, which checks every
event's exact form, and each text goes into the client's frame still JSON-escaped
(`ChunkEncoder.content_literals`), without decoding an event. The events around a run take the
provider's decoder as before. A literal is spliced only in the spelling orjson writes (raw
UTF-8, and no escapes but `\\" \\\\ \\b \\f \\n \\r \\t`), so a spliced frame is byte for byte the
one the decoder's path would write; any other spelling ends the run.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# The inside of a JSON string as orjson writes it (see above).
JSON_TEXT = rb'[^"\\\x00-\x1f]*(?:\\["\\bfnrt][^"\\\x00-\x1f]*)*'


def is_utf8(data: bytes) -> bool:
    return data.isascii() or _decodes(data)


def _decodes(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def feed_runs(data: bytes, pattern: re.Pattern[bytes], decode: Callable[[bytes], object],
              splice: Callable[[bytes, int, int], bool]) -> None:
    """Feed a read: the bytes between runs of `pattern` (a possessive run of events) to
    `decode`, each run to `splice`, which answers False when it cannot take it: the stream
    ended, or its decoder holds part of an event (a run can follow an `id:` line of the same
    block). Then that run and everything after it are decoded. A read that is not valid UTF-8
    is decoded whole (the decoder's path reports it)."""
    if not (data.isascii() or _decodes(data)):
        decode(data)
        return
    done = 0  # what has been handed on
    first = pattern.match(data)  # most reads start with a run, many are one: no search then
    if first is not None:
        if not splice(data, 0, first.end()):
            decode(data)
            return
        done = first.end()
        if done == len(data):
            return
    for run in pattern.finditer(data, done):
        start, end = run.span()
        if start > done:
            decode(data[done:start])
            done = start
        if not splice(data, start, end):
            break
        done = end
    if done < len(data):
        decode(data[done:] if done else data)
