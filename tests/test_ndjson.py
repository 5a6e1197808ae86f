"""The NDJSON decoder: whole, byte by byte, any split (Hypothesis), CRLF, the cap."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproxy.decode.ndjson import NDJSONDecoder
from streamproxy.errors import BufferOverflow, StreamDecodeError
from tests.helpers import fixture_bytes

STREAM = (b'{"message":{"content":"caf\xc3\xa9 \xe2\x80\xa8 ok"},"done":false}\n'
          b'\n'
          b'{"message":{"content":"a\\nb\\r"},"done":false}\r\n'
          b'{"done":true,"eval_count":3}\n')
LINES = [b'{"message":{"content":"caf\xc3\xa9 \xe2\x80\xa8 ok"},"done":false}',
         b'{"message":{"content":"a\\nb\\r"},"done":false}',
         b'{"done":true,"eval_count":3}']


def decode(pieces: list[bytes], cap: int = 1 << 20) -> list[bytes]:
    dec = NDJSONDecoder(cap)
    out: list[bytes] = []
    for piece in pieces:
        out += dec.feed(piece)
    return out + dec.close()


def test_whole() -> None:
    assert decode([STREAM]) == LINES


def test_byte_by_byte() -> None:
    assert decode([STREAM[i : i + 1] for i in range(len(STREAM))]) == LINES


def test_lines_come_out_as_soon_as_they_end() -> None:
    dec = NDJSONDecoder()
    assert dec.feed(b'{"a":1}\n{"b"') == [b'{"a":1}']
    assert dec.feed(b":2}") == []
    assert dec.feed(b"\n") == [b'{"b":2}']
    assert dec.close() == []


def test_unterminated_last_line_is_returned_at_close() -> None:
    assert decode([b'{"a":1}\n{"done":true}']) == [b'{"a":1}', b'{"done":true}']
    assert decode([b'{"a":1}\r\n{"done":true}\r']) == [b'{"a":1}', b'{"done":true}']


def test_lone_cr_and_unicode_separators_do_not_split() -> None:
    assert decode([b'{"a":"x\ry"}\n{"b":"\xe2\x80\xa9"}\n']) == [b'{"a":"x\ry"}',
                                                                   b'{"b":"\xe2\x80\xa9"}']


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_split_gives_the_same_lines(data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(STREAM)), max_size=20)))
    bounds = [0, *cuts, len(STREAM)]
    pieces = [STREAM[a:b] for a, b in pairwise(bounds)]
    assert decode(pieces) == LINES


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=8),
       st.data())
def test_any_lines_any_split(lines: list[bytes], data: st.DataObject) -> None:
    body = b"".join(line + b"\n" for line in lines)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=10)))
    bounds = [0, *cuts, len(body)]
    pieces = [body[a:b] for a, b in pairwise(bounds)]
    expected = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    assert decode(pieces) == [line for line in expected if line]


# Recorded JSON lines (../shared/fixtures), as Ollama frames its stream: LF, and CRLF as a
# server on Windows or behind a proxy writes them.
RECORDED = [fixture_bytes(name) for name in (
    "anthropic/vercel-ai_anthropic-text.chunks.jsonl",
    "cohere/vercel-ai_cohere-tool-call.chunks.jsonl",
    "gemini/vercel-ai_issue-19758-prompt-block.chunks.jsonl")]
RECORDED_VARIANTS = [b for r in RECORDED for b in (r, r.replace(b"\n", b"\r\n"))]


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(RECORDED_VARIANTS), st.data())
def test_any_split_of_a_recorded_stream_gives_its_lines(body: bytes, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=40)))
    pieces = [body[a:b] for a, b in pairwise([0, *cuts, len(body)])]
    whole = decode([body])
    assert whole == [line for line in body.replace(b"\r\n", b"\n").split(b"\n") if line]
    assert decode(pieces) == whole


def test_cap_on_an_incomplete_line_is_a_typed_error() -> None:
    dec = NDJSONDecoder(max_line_bytes=16)
    assert dec.feed(b'{"ok":1}\n' + b"x" * 16) == [b'{"ok":1}']
    with pytest.raises(BufferOverflow) as info:
        dec.feed(b"y")
    assert isinstance(info.value, StreamDecodeError)
    assert info.value.status == 502


def test_cap_counts_a_line_growing_over_many_reads() -> None:
    dec = NDJSONDecoder(max_line_bytes=100)
    with pytest.raises(BufferOverflow):
        for _ in range(101):
            dec.feed(b"z")


def test_a_long_line_in_one_read_is_refused_as_it_is_split() -> None:
    # (Once taken whole: the same bytes then failed or not by where TCP split them.)
    line = b'{"x":"' + b"a" * 500 + b'"}'
    with pytest.raises(BufferOverflow):
        decode([b'{"ok":1}\n' + line + b"\n"], cap=100)


def _capped(pieces: list[bytes], cap: int) -> list[bytes] | None:
    try:
        return decode(pieces, cap)
    except BufferOverflow:
        return None


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
def test_a_line_over_the_cap_is_refused_wherever_the_reads_split(eol: bytes) -> None:
    # 60 + 60 bytes: taken when the second read carried the newline, refused when not.
    body = b"x" * 120 + eol + b"{}" + eol
    for cut in range(len(body) + 1):
        assert _capped([body[:cut], body[cut:]], 100) is None, cut


def test_a_line_at_the_cap_is_taken_wherever_the_reads_split() -> None:
    line = b"y" * 100  # the cap counts a line's bytes before its newline
    body = line + b"\n" + line + b"\n" + line
    for cut in range(len(body) + 1):
        assert _capped([body[:cut], body[cut:]], 100) == [line] * 3, cut
        assert _capped([body[:cut], body[cut:]], 99) is None, cut


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(st.binary(max_size=40), min_size=1, max_size=6),
       eol=st.sampled_from([b"\n", b"\r\n"]), terminated=st.booleans(),
       cap=st.integers(1, 40), cuts=st.lists(st.integers(0, 300), max_size=6))
def test_the_lines_and_the_cap_do_not_depend_on_the_read_splits(
        lines: list[bytes], eol: bytes, terminated: bool, cap: int, cuts: list[int]) -> None:
    lines = [line.replace(b"\r", b"").replace(b"\n", b"") for line in lines]
    body = eol.join(lines) + (eol if terminated else b"")
    ends = [len(eol) - 1] * (len(lines) - 1) + [len(eol) - 1 if terminated else 0]
    over = any(len(line) + cr > cap for line, cr in zip(lines, ends, strict=True))
    whole = _capped([body], cap)
    assert whole == (None if over else [line for line in lines if line])
    edges = [0, *sorted(min(c, len(body)) for c in cuts), len(body)]
    assert _capped([body[a:b] for a, b in pairwise(edges)], cap) == whole
