"""The SSE decoder against the WHATWG rules, whole, byte by byte, and at any split."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproxy.decode.sse import SSEDecoder, SSEEvent
from streamproxy.errors import BufferOverflow
from tests.helpers import FIXTURES


def decode(*pieces: bytes) -> list[SSEEvent]:
    dec = SSEDecoder()
    out: list[SSEEvent] = []
    for p in pieces:
        out += dec.feed(p)
    return out + dec.close()


def test_lf_crlf_and_cr_line_endings_decode_alike() -> None:
    for eol in (b"\n", b"\r\n", b"\r"):
        body = eol.join([b"event: a", b"data: 1", b"", b"data: 2", b"", b""])
        assert decode(body) == [SSEEvent(b"1", b"a"), SSEEvent(b"2")]


def test_cr_at_end_of_read_pairs_with_lf_at_start_of_next() -> None:
    # Had the CR and LF been taken as two line ends, `data: 2` would join event 1.
    assert decode(b"data: 1\r", b"\n\r\ndata: 2\r\n\r\n") == [SSEEvent(b"1"), SSEEvent(b"2")]
    assert decode(b"data: 1\r", b"\r") == [SSEEvent(b"1")]


def test_multiline_data_joins_with_lf_and_comments_are_ignored() -> None:
    body = b": keep-alive\ndata: a\n:comment\ndata:b\ndata\n\n"
    assert decode(body) == [SSEEvent(b"a\nb\n")]


def test_only_one_space_after_colon_is_dropped() -> None:
    assert decode(b"data:  x\n\n") == [SSEEvent(b" x")]


def test_bom_dropped_only_at_start_even_when_split() -> None:
    assert decode(b"\xef", b"\xbb", b"\xbfdata: 1\n\n") == [SSEEvent(b"1")]
    assert decode(b"data: \xef\xbb\xbf\n\n") == [SSEEvent(b"\xef\xbb\xbf")]


def test_event_without_data_is_not_dispatched_and_event_name_resets() -> None:
    assert decode(b"event: ping\n\ndata: x\n\n") == [SSEEvent(b"x")]


def test_id_persists_and_nul_ids_are_ignored() -> None:
    events = decode(b"id: 7\ndata: a\n\ndata: b\n\nid: x\x00y\ndata: c\n\n")
    assert [e.id for e in events] == [b"7", b"7", b"7"]


def test_unterminated_last_event_is_flushed_at_close() -> None:
    assert decode(b"data: [DONE]") == [SSEEvent(b"[DONE]")]
    assert decode(b"data: [DONE]\n") == [SSEEvent(b"[DONE]")]


def test_utf8_split_across_reads_stays_intact() -> None:
    body = "data: héllo ✓\n\n".encode()
    pieces = [body[i : i + 1] for i in range(len(body))]
    assert decode(*pieces)[0].data.decode() == "héllo ✓"


def test_incomplete_event_over_the_cap_is_a_typed_error() -> None:
    dec = SSEDecoder(max_event_bytes=100)
    dec.feed(b"data: " + b"x" * 60 + b"\n")
    with pytest.raises(BufferOverflow):
        dec.feed(b"data: " + b"y" * 60)


def test_u2028_is_not_a_line_break() -> None:
    assert decode("data: a\u2028b\n\n".encode()) == [SSEEvent("a\u2028b".encode())]


ONE_READ_EVENTS = [  # a read each: the one-read fast path's shapes, and near misses
    (b"event: e\ndata: x\n\n", [SSEEvent(b"x", b"e")]),
    (b"data: x\n\n", [SSEEvent(b"x")]),
    (b"data: \n\n", [SSEEvent(b"")]),
    (b"data\n\n", [SSEEvent(b"")]),
    (b"event\ndata\n\n", [SSEEvent(b"")]),
    (b"data:x\n\n", [SSEEvent(b"x")]),
    (b"event: e\n\n", []),
    (b"event: a: b\ndata: c: d\n\n", [SSEEvent(b"c: d", b"a: b")]),
    (b"event: e\ndata: x\ndata: y\n\n", [SSEEvent(b"x\ny", b"e")]),
    (b"data: x\n\n\n", [SSEEvent(b"x")]),
    (b"data: x\r\n\n", [SSEEvent(b"x")]),
    (b"data: x\rdata: y\n\n", [SSEEvent(b"x\ny")]),
    (b"event: e\ndata: x\n\ndata: y\n\n", [SSEEvent(b"x", b"e"), SSEEvent(b"y")]),
]


@pytest.mark.parametrize(("read", "events"), ONE_READ_EVENTS)
def test_a_read_of_one_event_follows_the_rules(read: bytes, events: list[SSEEvent]) -> None:
    assert SSEDecoder().feed(read) == events
    assert decode(*[read[i : i + 1] for i in range(len(read))]) == events


def test_id_persists_into_events_read_one_at_a_time() -> None:
    events = decode(b"id: 7\ndata: a\n\n", b"data: b\n\n", b"event: e\ndata: c\n\n")
    assert [e.id for e in events] == [b"7", b"7", b"7"]


RECORDED = [
    (FIXTURES / "anthropic" / "sdk-python_tool_use_response.sse").read_bytes(),
    (FIXTURES / "anthropic" / "llm-anthropic_test_thinking_prompt.response0.sse").read_bytes(),
    (FIXTURES / "openai" / "pydantic-ai_run_stream_sync.response0.sse").read_bytes(),
]
VARIANTS = [b for r in RECORDED for b in (r, r.replace(b"\n", b"\r\n"), r.replace(b"\n", b"\r"))]


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(VARIANTS), st.lists(st.integers(min_value=0, max_value=4000),
                                           max_size=40))
def test_any_split_of_a_recorded_stream_gives_the_same_events(body: bytes,
                                                              cuts: list[int]) -> None:
    points = sorted({c % (len(body) + 1) for c in cuts})
    pieces = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
    assert decode(*pieces) == decode(body)


def test_byte_by_byte_equals_whole() -> None:
    for body in VARIANTS:
        assert decode(*[body[i : i + 1] for i in range(len(body))]) == decode(body)



def test_an_error_field_is_an_error_event() -> None:
    # llama.cpp's server writes a failure as `error: {…}` and then `data: [DONE]`: ignored as
    # an unknown field, the stream ended as if the answer were complete.
    failure = b'{"code":500,"message":"context full","type":"server_error"}'
    assert decode(b"error: " + failure + b"\n\ndata: [DONE]\n\n") == [
        SSEEvent(b'{"error":' + failure + b"}"), SSEEvent(b"[DONE]")]
    assert decode(b"error: out of memory\r\n\r\n") == [SSEEvent(b'{"error":"out of memory"}')]


# -- the cap: an event's bytes up to its blank line (line ends counted as one byte each) ------

def _capped(cap: int, pieces: list[bytes]) -> list[SSEEvent] | None:
    """The events, or None when the decoder refused the stream (BufferOverflow)."""
    dec = SSEDecoder(cap)
    out: list[SSEEvent] = []
    try:
        for p in pieces:
            out += dec.feed(p)
        return out + dec.close()
    except BufferOverflow:
        return None


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
def test_an_event_over_the_cap_is_refused_wherever_the_reads_split(eol: bytes) -> None:
    # 67 + 67 bytes of lines: the same upstream bytes were accepted when the read that
    # carried the second line also carried the blank line, refused when it did not.
    body = (b"data: " + b"x" * 60 + eol + b"data: " + b"y" * 60 + eol + eol
            + b"data: ok" + eol + eol)
    assert _capped(100, [body]) is None
    for cut in range(len(body) + 1):
        assert _capped(100, [body[:cut], body[cut:]]) is None, cut


def test_an_event_at_the_cap_is_taken_wherever_the_reads_split() -> None:
    event = b"data: " + b"x" * 93 + b"\n"  # 100 bytes with its line end
    body = event + b"\n" + event + b"\n"
    expected = [SSEEvent(b"x" * 93)] * 2
    assert _capped(100, [body]) == expected
    for cut in range(len(body) + 1):
        assert _capped(100, [body[:cut], body[cut:]]) == expected, cut
    assert _capped(99, [body]) is None


def _split(body: bytes, cuts: list[int]) -> list[bytes]:
    edges = [0, *sorted(min(c, len(body)) for c in cuts), len(body)]
    return [body[a:b] for a, b in pairwise(edges)]


_LINE = st.one_of(st.binary(max_size=30).map(lambda v: b"data: " + v),
                  st.binary(max_size=8).map(lambda v: b"event: " + v),
                  st.just(b": ping"), st.just(b"data"))


@settings(max_examples=300, deadline=None)
@given(events=st.lists(st.lists(_LINE, min_size=1, max_size=3), max_size=5),
       eol=st.sampled_from([b"\n", b"\r\n", b"\r"]), cap=st.integers(8, 60),
       cuts=st.lists(st.integers(0, 400), max_size=6))
def test_the_events_and_the_cap_do_not_depend_on_the_read_splits(
        events: list[list[bytes]], eol: bytes, cap: int, cuts: list[int]) -> None:
    lines = [[line.replace(b"\r", b"").replace(b"\n", b"") for line in ev] for ev in events]
    body = b"".join(eol.join(ev) + eol + eol for ev in lines)
    over = any(sum(len(line) + 1 for line in ev) > cap for ev in lines)
    whole = _capped(cap, [body])
    assert (whole is None) == over
    assert whole == (None if over else decode(body))
    assert _capped(cap, _split(body, cuts)) == whole
