"""The AWS event-stream decoder: both recordings whole, byte by byte and at any split (checked
against botocore's own decoder); damaged bytes are a typed error, never a wrong event; lengths
are checked against the cap before anything is buffered; every header value type parses."""

from __future__ import annotations

import struct
import uuid
import zlib
from datetime import UTC, datetime
from itertools import pairwise

import pytest
from botocore.eventstream import EventStreamBuffer
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproxy.decode import eventstream
from streamproxy.decode.eventstream import (
    DEFAULT_MAX_FRAME_BYTES,
    EventStreamCRCError,
    EventStreamDecoder,
    EventStreamMessage,
    frame_pattern,
)
from streamproxy.errors import BufferOverflow, ProxyError, StreamDecodeError, StreamTruncated
from tests.eventstream_frames import encode_frame, encode_header, split_frames
from tests.helpers import fixture_bytes

RECORDINGS = {
    "converse-stream": fixture_bytes(
        "bedrock/pydantic-ai_bedrock_model_iter_stream.converse-stream.bin"),
    "exception": fixture_bytes("bedrock/vercel-ai_model-stream-error-exception.eventstream.bin"),
}


def decode(*pieces: bytes, max_frame_bytes: int = 1 << 20) -> list[EventStreamMessage]:
    dec = EventStreamDecoder(max_frame_bytes)
    out: list[EventStreamMessage] = []
    for piece in pieces:
        out += dec.feed(piece)
    return out + dec.close()


def as_tuples(messages: list[EventStreamMessage]) -> list[tuple[dict, bytes]]:
    return [(dict(m.headers), m.payload) for m in messages]


def botocore_decode(data: bytes) -> list[tuple[dict, bytes]]:
    buf = EventStreamBuffer()
    buf.add_data(data)
    return [(m.headers, m.payload) for m in buf]


EXPECTED = {name: botocore_decode(data) for name, data in RECORDINGS.items()}


def test_recordings_decode_whole_as_botocore_decodes_them() -> None:
    events = as_tuples(decode(RECORDINGS["converse-stream"]))
    assert events == EXPECTED["converse-stream"]
    assert len(events) == 49
    assert [h[":event-type"] for h, _ in events[:2]] == ["messageStart", "contentBlockDelta"]
    assert events[-1][0][":event-type"] == "metadata"
    [(headers, payload)] = as_tuples(decode(RECORDINGS["exception"]))
    assert headers == {":message-type": "exception",
                       ":exception-type": "modelStreamErrorException",
                       ":content-type": "application/json"}
    assert payload.startswith(b'{"message":"Model Stream Error"')


@pytest.mark.parametrize("name", RECORDINGS)
def test_byte_by_byte(name: str) -> None:
    data = RECORDINGS[name]
    assert as_tuples(decode(*(data[i : i + 1] for i in range(len(data))))) == EXPECTED[name]


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(sorted(RECORDINGS)), data=st.data())
def test_any_split_gives_the_same_events(name: str, data: st.DataObject) -> None:
    body = RECORDINGS[name]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=40)))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    assert as_tuples(decode(*pieces)) == EXPECTED[name]


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(RECORDINGS)), data=st.data())
def test_a_flipped_byte_is_a_typed_error_never_a_wrong_event(name: str,
                                                             data: st.DataObject) -> None:
    body = RECORDINGS[name]
    position = data.draw(st.integers(0, len(body) - 1))
    mask = data.draw(st.integers(1, 255))
    damaged = bytearray(body)
    damaged[position] ^= mask
    piece = data.draw(st.integers(1, 600))
    # The frame that holds the damaged byte, and how many whole frames precede it.
    starts = [0]
    for frame in split_frames(body):
        starts.append(starts[-1] + len(frame))
    damaged_frame = max(i for i, start in enumerate(starts[:-1]) if start <= position)
    dec = EventStreamDecoder(1 << 20)
    seen: list[EventStreamMessage] = []
    with pytest.raises(StreamDecodeError):
        for i in range(0, len(damaged), piece):
            seen += dec.feed(bytes(damaged[i : i + piece]))
    # Whatever came out before the error is exactly the undamaged frames before it.
    assert as_tuples(seen) == EXPECTED[name][: len(seen)]
    assert len(seen) <= damaged_frame


def test_crc_mismatches_are_their_own_type() -> None:
    frame = bytearray(RECORDINGS["exception"])
    frame[-1] ^= 1
    with pytest.raises(EventStreamCRCError, match="message CRC"):
        decode(bytes(frame))
    frame = bytearray(RECORDINGS["exception"])
    frame[9] ^= 1  # inside the prelude CRC
    with pytest.raises(EventStreamCRCError, match="prelude CRC"):
        decode(bytes(frame))


def _prelude(total: int, headers_len: int) -> bytes:
    head = struct.pack(">II", total, headers_len)
    return head + struct.pack(">I", zlib.crc32(head))


def test_an_oversized_length_is_rejected_from_the_prelude_alone() -> None:
    dec = EventStreamDecoder(max_frame_bytes=1 << 20)
    assert dec.feed(_prelude(0xFFFFFFFF, 0)[:11]) == []  # not yet a whole prelude
    with pytest.raises(BufferOverflow):
        dec.feed(_prelude(0xFFFFFFFF, 0)[11:])  # no payload byte was ever needed
    with pytest.raises(BufferOverflow):  # a real frame above a small cap
        decode(RECORDINGS["exception"], max_frame_bytes=220)
    assert decode(RECORDINGS["exception"], max_frame_bytes=221)


@pytest.mark.parametrize(("total", "headers_len"), [(15, 0), (0, 0), (30, 15), (16, 1)])
def test_inconsistent_lengths_with_a_valid_prelude_crc_are_rejected(total: int,
                                                                    headers_len: int) -> None:
    with pytest.raises(StreamDecodeError, match="inconsistent"):
        decode(_prelude(total, headers_len) + bytes(64))


def test_frames_are_never_rescanned(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fed byte by byte, each frame's prelude and message CRC are computed exactly once."""
    calls = []
    real = zlib.crc32

    class CountingZlib:
        @staticmethod
        def crc32(data: bytes, value: int = 0) -> int:
            calls.append(len(data))
            return real(data, value)

    monkeypatch.setattr(eventstream, "zlib", CountingZlib)
    body = RECORDINGS["converse-stream"]
    assert len(decode(*(body[i : i + 1] for i in range(len(body))))) == 49
    assert len(calls) == 2 * 49
    # The prelude (8 bytes), then the rest before the message CRC, continuing from the
    # verified prelude CRC: every byte before each message CRC exactly once.
    assert sum(calls) == sum(len(f) - 4 for f in split_frames(body))


def test_close_inside_a_frame_is_truncation_and_empty_close_is_fine() -> None:
    body = RECORDINGS["converse-stream"]
    dec = EventStreamDecoder()
    assert dec.close() == []
    events = dec.feed(body[:-5])
    assert len(events) == 48
    with pytest.raises(StreamTruncated):
        dec.close()
    dec = EventStreamDecoder()
    dec.feed(body[:5])  # not even a whole prelude
    with pytest.raises(StreamTruncated):
        dec.close()


def test_every_header_value_type() -> None:
    when = datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    block = b"".join([
        encode_header("t", 0), encode_header("f", 1), encode_header("i8", 2, -5),
        encode_header("i16", 3, -300), encode_header("i32", 4, 70000),
        encode_header("i64", 5, -(2**40)), encode_header("bin", 6, b"\x00\xff"),
        encode_header("str", 7, "héllo"), encode_header("ts", 8, when),
        encode_header("id", 9, ident),
    ])
    [message] = decode(encode_frame(block, b"payload"))
    assert dict(message.headers) == {
        "t": True, "f": False, "i8": -5, "i16": -300, "i32": 70000, "i64": -(2**40),
        "bin": b"\x00\xff", "str": "héllo", "ts": when, "id": ident,
    }
    assert message.payload == b"payload"
    assert botocore_decode(encode_frame(block, b"payload"))[0][0]["i64"] == -(2**40)


@pytest.mark.parametrize(("block", "reason"), [
    (bytes([1]) + b"x" + bytes([10]), "unknown"),  # value type 10
    (bytes([1]) + b"x" + bytes([7, 0, 9]) + b"short", "runs past"),
    (bytes([4]) + b"ab", "runs past"),  # name longer than the block
    (bytes([1]) + b"x" + bytes([4, 0]), "runs past"),  # int32 cut short
    (bytes([1]) + b"x" + bytes([7, 0, 1]) + b"\xff", "UTF-8"),
    (bytes([0, 0]), "empty name"),
    (encode_header("a", 0) + encode_header("a", 1), "duplicate"),
])
def test_malformed_header_blocks_are_typed_errors(block: bytes, reason: str) -> None:
    with pytest.raises(StreamDecodeError, match=reason):
        decode(encode_frame(block, b"{}"))


def test_a_duplicate_header_is_refused_as_botocore_refuses_it() -> None:
    # Kept strict on purpose: botocore raises DuplicateHeader rather than letting a later value
    # win, so a frame of two `:event-type`s has no meaning an AWS SDK would give it.
    frame = encode_frame(encode_header(":event-type", 7, "a")
                         + encode_header(":event-type", 7, "b"), b"{}")
    with pytest.raises(Exception, match="Duplicate header"):
        botocore_decode(frame)
    with pytest.raises(StreamDecodeError, match="duplicate"):
        decode(frame)


def test_headers_are_read_only_and_shared_between_identical_blocks() -> None:
    events = decode(RECORDINGS["converse-stream"])
    assert events[1].headers is events[2].headers  # parsed once, memoised
    with pytest.raises(TypeError):
        events[1].headers[":event-type"] = "x"  # type: ignore[index]
    assert events[0].headers[":event-type"] == "messageStart"


def test_header_blocks_are_parsed_once_per_process_and_the_memo_is_bounded() -> None:
    first = EventStreamDecoder().feed(RECORDINGS["converse-stream"])
    again = EventStreamDecoder().feed(RECORDINGS["converse-stream"])
    assert first[1].headers is again[1].headers  # another stream: no parsing again
    big = encode_header("x", 7, "y" * 600)  # over the memo's block size: parsed every time
    (a, _), = EventStreamDecoder().feed(encode_frame(big, b"{}"))
    (b, _), = EventStreamDecoder().feed(encode_frame(big, b"{}"))
    assert a == b and a is not b
    for i in range(eventstream._HEADERS_MAX + 10):  # ever-new blocks: the memo stays bounded
        decode(encode_frame(encode_header("n", 7, str(i)), b"{}"))
        assert len(eventstream._HEADERS) <= eventstream._HEADERS_MAX


# -- runs of frames, for the Bedrock splice ------------------------------------------------------

_DELTA_BLOCK = encode_header(":event-type", 7, "contentBlockDelta")
_TEXT = frame_pattern(_DELTA_BLOCK, rb'\{"text":"([a-z]*)"\}')


def _delta(text: str) -> bytes:
    return encode_frame(_DELTA_BLOCK, b'{"text":"%s"}' % text.encode())


def test_take_run_takes_the_frames_of_one_header_block_and_payload_shape() -> None:
    other = encode_frame(encode_header(":event-type", 7, "ping"), b'{"text":"p"}')
    data = _delta("a") + _delta("bc") + other + _delta("d")
    dec = EventStreamDecoder()
    assert dec.take_run(data, 0, _TEXT) == ([b"a", b"bc"], len(_delta("a") * 2) + 1)
    after = len(_delta("a") + _delta("bc"))
    assert dec.take_run(data, after, _TEXT) == ([], after)
    assert dec.frame_end(data, after) == after + len(other)
    assert dec.take_run(data, after + len(other), _TEXT) == ([b"d"], len(data))
    assert dec.take_run(_delta("A1"), 0, _TEXT) == ([], 0)  # payload: no match
    # Other headers with the same payload: of the same length, and starting the same way.
    for block in (encode_header(":event-type", 7, "contentBlockDeltA"),
                  _DELTA_BLOCK + encode_header("x", 7, "y")):
        assert dec.take_run(encode_frame(block, b'{"text":"a"}'), 0, _TEXT) == ([], 0)


def test_take_run_refuses_a_frame_longer_than_the_pattern_matched() -> None:
    # Intact (both CRCs match) but with bytes after the payload's JSON: the pattern ends the
    # frame early, its declared length does not, so the frame is feed's (a decode error there).
    long = encode_frame(_DELTA_BLOCK, b'{"text":"b"}12345678')
    data = _delta("a") + long
    dec = EventStreamDecoder()
    assert dec.take_run(data, 0, _TEXT) == ([b"a"], len(_delta("a")))
    assert dec.take_run(long + _delta("a"), 0, _TEXT) == ([], 0)


@pytest.mark.parametrize("after", range(16))
def test_take_run_ends_at_a_read_with_any_part_of_a_next_frame_after_it(after: int) -> None:
    # The last frame's CRC is read with the next prelude when a whole prelude follows it, on
    # its own when not: both at the boundary (a prelude's 12 bytes) and around it.
    run = _delta("a") + _delta("bc")
    data = run + _delta("d")[:after]
    dec = EventStreamDecoder()
    assert dec.take_run(data, 0, _TEXT) == ([b"a", b"bc"], len(run))


@pytest.mark.parametrize("damage", ["prelude-crc", "message-crc", "cut", "over-cap",
                                    "lengths", "prelude-crc-chained"])
def test_take_run_leaves_what_feed_would_refuse_to_feed(damage: str) -> None:
    good, bad = _delta("a"), bytearray(_delta("b"))
    cap = DEFAULT_MAX_FRAME_BYTES
    if damage == "prelude-crc":
        bad[9] ^= 1
    elif damage == "message-crc":
        bad[-2] ^= 1
    elif damage == "prelude-crc-chained":
        # A wrong prelude CRC, and a message CRC computed on from it (not from the prelude's
        # bytes): only the prelude's own check refuses this one. `good` has the same total,
        # so its prelude CRC was seen first.
        struct.pack_into(">I", bad, 8, zlib.crc32(bytes(bad[:8])) ^ 1)
        struct.pack_into(">I", bad, len(bad) - 4,
                         zlib.crc32(bytes(bad[8:-4]), zlib.crc32(bytes(bad[:8])) ^ 1))
    elif damage == "cut":
        bad = bad[:-1]
    elif damage == "over-cap":
        cap = len(good)  # `good` fits, `bad` (one byte longer) does not
        bad = bytearray(_delta("bb"))
    else:  # a headers length past the frame's end, with a prelude CRC to match
        struct.pack_into(">I", bad, 4, len(bad))
        struct.pack_into(">I", bad, 8, zlib.crc32(bytes(bad[:8])))
    data = good + bytes(bad)
    dec = EventStreamDecoder(cap)
    assert dec.take_run(data, 0, _TEXT) == ([b"a"], len(good))
    with pytest.raises(ProxyError):  # what the decoder's own path makes of it
        dec.feed(data[len(good):])
        dec.close()


def test_block_of_and_between_frames() -> None:
    dec = EventStreamDecoder()
    frame = _delta("a")
    (headers, _), = dec.feed(frame)
    assert dec.block_of(headers) == _DELTA_BLOCK
    assert dec.block_of({":event-type": "contentBlockDelta"}) is None  # not one it handed out
    assert dec.between_frames
    dec.feed(frame[:5])
    assert not dec.between_frames
    assert dec.frame_end(frame[:5], 0) == 5  # no whole prelude: the end of what there is


def test_rest_of_frame_is_what_finishes_the_held_frame() -> None:
    frame, dec = _delta("abc"), EventStreamDecoder()
    assert dec.rest_of_frame(frame) == 0  # nothing held
    for cut in (2, 12, 30):  # within the total length field, the prelude, the payload
        dec = EventStreamDecoder()
        assert dec.feed(frame[:cut]) == []
        assert dec.rest_of_frame(frame[cut:] + frame) == len(frame) - cut
        assert dec.rest_of_frame(frame[cut:-1]) == len(frame) - cut - 1  # not finished here
        assert dec.rest_of_frame(b"") == 0


@settings(max_examples=300, deadline=None)
@given(payloads=st.lists(st.binary(max_size=60), max_size=5), cap=st.integers(16, 140),
       cuts=st.lists(st.integers(0, 500), max_size=6))
def test_the_frames_and_the_cap_do_not_depend_on_the_read_splits(
        payloads: list[bytes], cap: int, cuts: list[int]) -> None:
    frames = [encode_frame({":event-type": "e"}, p) for p in payloads]
    body = b"".join(frames)

    def outcome(pieces: list[bytes]) -> list[tuple[dict, bytes]] | None:
        try:
            return as_tuples(decode(*pieces, max_frame_bytes=cap))
        except BufferOverflow:
            return None

    whole = outcome([body])
    over = any(len(f) > cap for f in frames)
    assert whole == (None if over else [({":event-type": "e"}, p) for p in payloads])
    edges = [0, *sorted(min(c, len(body)) for c in cuts), len(body)]
    assert outcome([body[a:b] for a, b in pairwise(edges)]) == whole
