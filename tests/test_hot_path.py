"""The hot path's shortcuts against plain implementations of the same rules.

- SSEDecoder handles whole event blocks and recognises the common shapes with slices; a
  straightforward line-by-line decoder (the WHATWG algorithm as written) is the oracle, on
  generated streams of every field kind, line ending and split.
- PassthroughTranslator picks the events worth parsing with one regex; it must pick exactly
  what the list of byte patterns it replaced picked.
"""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproxy.decode.sse import SSEDecoder, SSEEvent
from streamproxy.providers.openai_compat import _INTERESTING


class LineByLineDecoder:
    """WHATWG HTML §9.2.6, one line at a time; ends an unterminated event at close."""

    def __init__(self) -> None:
        self.buf = b""
        self.data: list[bytes] = []
        self.event = b""
        self.last_id = b""
        self.started = False

    def decode(self, stream: bytes) -> list[SSEEvent]:
        if stream.startswith(b"\xef\xbb\xbf"):
            stream = stream[3:]
        lines = stream.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        out: list[SSEEvent] = []
        for line in [*lines, b""]:  # the final b"" ends an unterminated event
            if not line:
                if self.data:
                    out.append(SSEEvent(b"\n".join(self.data), self.event, self.last_id))
                self.data, self.event = [], b""
                continue
            if line[:1] == b":":
                continue
            name, colon, value = line.partition(b":")
            if colon and value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                self.data.append(value)
            elif name == b"event":
                self.event = value
            elif name == b"id" and b"\x00" not in value:
                self.last_id = value
        return out


VALUES = st.sampled_from([b"", b"x", b" padded", b'{"a":1}', b"a:b", b"\xc3\xa9t\xc3\xa9",
                          b"[DONE]", b"data: inside", b"\xef\xbb\xbf"])
FIELD = st.one_of(
    st.tuples(st.sampled_from([b"data", b"event", b"id", b"retry", b"other", b"dat"]),
              st.sampled_from([b": ", b":", b":  ", b""]), VALUES).map(lambda t: b"".join(t)),
    st.sampled_from([b":comment", b": keep-alive", b"", b"id: 1\x002"]),
)
EOL = st.sampled_from([b"\n", b"\r\n", b"\r"])


@st.composite
def near_miss_block(draw: st.DrawFn) -> bytes:
    """Blocks that start like the decoder's fast shapes (`data: …`, `event: …` + `data: …`)
    and may or may not be exactly them."""
    lines = [b"event: " + draw(VALUES)] if draw(st.booleans()) else []
    lines += [b"data: " + draw(VALUES) for _ in range(draw(st.integers(1, 3)))]
    lines += draw(st.lists(FIELD, max_size=2))
    if draw(st.booleans()):  # one line ending for the block, as providers write them
        eol = draw(EOL)
        return eol.join(lines) + eol + eol
    # Mixed endings: a CRLF-framed block may hide a bare LF or CR (the CRLF fast path's trap).
    return b"".join(line + draw(EOL) for line in lines) + draw(EOL)


@st.composite
def sse_streams(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):  # blocks only: the fast paths' own ground
        parts = draw(st.lists(near_miss_block(), max_size=12))
    else:
        parts = draw(st.lists(st.one_of(
            st.tuples(FIELD, EOL).map(lambda t: t[0] + t[1]), near_miss_block()), max_size=30))
    body = b"".join(parts)
    if draw(st.booleans()):
        body = b"\xef\xbb\xbf" + body
    return body


@settings(max_examples=400, deadline=None)
@given(sse_streams(), st.lists(st.integers(min_value=0, max_value=2000), max_size=12))
def test_block_decoder_matches_the_line_by_line_algorithm(body: bytes, cuts: list[int]) -> None:
    assert_decodes_like_the_algorithm(body, cuts)


def assert_decodes_like_the_algorithm(body: bytes, cuts: list[int]) -> None:
    points = sorted({c % (len(body) + 1) for c in cuts})
    dec = SSEDecoder()
    got: list[SSEEvent] = []
    for a, b in zip([0, *points], [*points, len(body)], strict=True):
        got += dec.feed(body[a:b])
    got += dec.close()
    assert got == LineByLineDecoder().decode(body)


CRLF_MOSTLY = st.sampled_from([b"\r\n", b"\r\n", b"\n", b"\r"])


@st.composite
def crlf_streams(draw: st.DrawFn) -> bytes:
    """Gemini-like streams (CRLF-framed `data:` blocks) with stray bare LFs and CRs: the CRLF
    fast path must hand every block it cannot take whole to the general path."""
    blocks = []
    for _ in range(draw(st.integers(0, 10))):
        lines = [b"data: " + draw(VALUES) for _ in range(draw(st.integers(1, 2)))]
        lines += draw(st.lists(FIELD, max_size=1))
        blocks.append(b"".join(line + draw(CRLF_MOSTLY) for line in lines) + draw(CRLF_MOSTLY))
    return b"".join(blocks)


@settings(max_examples=400, deadline=None)
@given(crlf_streams(), st.lists(st.integers(min_value=0, max_value=600), max_size=8))
def test_crlf_fast_path_matches_the_line_by_line_algorithm(body: bytes, cuts: list[int]) -> None:
    assert_decodes_like_the_algorithm(body, cuts)


PATTERNS = (b'"usage":{', b'"usage": {', b'"error"', b'"finish_reason":"',
            b'"finish_reason": "', b'"choices":[]', b'"choices":null', b'"choices": []',
            b'"choices": null')


@st.composite
def openai_chunks(draw: st.DrawFn) -> bytes:
    chunk: dict[str, object] = {"id": "c", "object": "chat.completion.chunk"}
    if draw(st.booleans()):
        chunk["choices"] = draw(st.sampled_from([[], None, [{"index": 0, "delta": {
            "content": draw(st.sampled_from(["hi", "usage", '"error"', "finish_reason"]))},
            "finish_reason": draw(st.sampled_from([None, "stop"]))}]]))
    if draw(st.booleans()):
        chunk["usage"] = draw(st.sampled_from([None, {"prompt_tokens": 1}]))
    if draw(st.booleans()):
        chunk["error"] = {"message": "x"}
    data = orjson.dumps(chunk)
    return data.replace(b'":', b'": ') if draw(st.booleans()) else data


@settings(max_examples=300, deadline=None)
@given(openai_chunks())
def test_passthrough_regex_picks_what_the_pattern_list_picked(data: bytes) -> None:
    assert (_INTERESTING.search(data) is not None) == any(p in data for p in PATTERNS)


FAST_SHAPE = st.tuples(st.one_of(st.just(b""), VALUES.map(lambda v: b"event: " + v + b"\n")),
                       VALUES).map(lambda t: t[0] + b"data: " + t[1] + b"\n\n")


@st.composite
def flushed_reads(draw: st.DrawFn) -> list[bytes]:
    """A stream as a provider that flushes each event sends it: one block a read, many of them
    the one-read fast path's shapes, the others near misses (an extra LF, a CR inside, `event:`
    without data, a lone field, stray blank lines). Some reads are cut in two, so that a
    whole-event read also comes after a pending block, a pending CR or a held BOM, and some
    carry two blocks, as when the proxy falls behind."""
    blocks = draw(st.lists(st.one_of(
        FAST_SHAPE,
        near_miss_block(),
        st.tuples(FIELD, EOL).map(lambda t: t[0] + t[1] + t[1]),
        st.sampled_from([b"\n", b"\r\n", b"data: x\n\n\n", b"event: a\n\n", b"data\n\n",
                         b"event\ndata\n\n", b"data: a\ndata: b\n\n", b"data: x\r\n\n"]),
    ), max_size=12))
    if blocks and draw(st.booleans()):
        blocks[0] = b"\xef\xbb\xbf" + blocks[0]
    reads: list[bytes] = []
    for block in blocks:
        way = draw(st.integers(0, 5))
        if way == 0 and len(block) > 1:
            cut = draw(st.integers(1, len(block) - 1))
            reads += [block[:cut], block[cut:]]
        elif way == 1 and reads:
            reads[-1] += block
        else:
            reads.append(block)
    return reads


@settings(max_examples=400, deadline=None)
@given(flushed_reads())
def test_one_event_per_read_matches_the_line_by_line_algorithm(reads: list[bytes]) -> None:
    dec = SSEDecoder()
    got: list[SSEEvent] = []
    for read in reads:
        got += dec.feed(read)
    got += dec.close()
    assert got == LineByLineDecoder().decode(b"".join(reads))
