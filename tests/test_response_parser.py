"""The sans-IO response parser (`streamproxy/upstream/response_parser.py`) without sockets:
heads, framing, the chunked decoder, whole, byte by byte and at any split."""

from __future__ import annotations

import gzip
import random
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproxy.upstream import response_parser
from streamproxy.upstream.response_parser import (
    ChunkedDecoder,
    Disconnected,
    HeadTooLarge,
    InvalidChunk,
    MalformedResponse,
    ResponseParser,
    _fields_exactly,
    parse_head,
    plain_fields,
)
from tests.helpers import header_lines, random_splits

CHUNKED = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nX-Dup: a\r\nx-dup: b\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n1;ext=1\r\n \r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: x\r\n\r\n")
CHUNKED_BODY = b"hello 0123456789abcdef"


def parse_all(pieces: list[bytes]) -> tuple[ResponseParser, bytes]:
    parser = ResponseParser()
    body = b"".join(parser.feed(p) for p in pieces)
    return parser, body


def test_parser_content_length_whole_and_byte_by_byte() -> None:
    raw = b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nabcde"
    for pieces in ([raw], [raw[i:i + 1] for i in range(len(raw))]):
        parser, body = parse_all(pieces)
        assert parser.head is not None and parser.head.status == 201
        assert parser.head.reason == "Created" and parser.head.keep_alive
        assert body == b"abcde" and parser.done and not parser.extra


def test_parser_chunked_headers_and_trailers() -> None:
    for pieces in ([CHUNKED], [CHUNKED[i:i + 1] for i in range(len(CHUNKED))]):
        parser, body = parse_all(pieces)
        assert body == CHUNKED_BODY and parser.done and not parser.extra
        head = parser.head
        assert head is not None and head.chunked and head.keep_alive
        assert head.headers["content-type"] == "text/event-stream"
        assert head.headers.getall("X-DUP") == ["a", "b"]


@pytest.mark.parametrize("trailers", [b"not a trailer\r\n", b"X: 1\r\n: no name\r\n",
                                      b"Bad Name: 1\r\n", b" a fold of nothing\r\n"])
def test_a_malformed_trailer_line_is_refused(trailers: bytes) -> None:
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n" + trailers
    for pieces in ([raw], [raw[i:i + 1] for i in range(len(raw))]):
        with pytest.raises(InvalidChunk):
            parse_all(pieces)


def test_parser_skips_interim_responses() -> None:
    raw = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n"
           b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    parser, body = parse_all([raw])
    assert parser.head is not None and parser.head.status == 200 and body == b"ok"


def test_parser_read_until_close_and_connection_close() -> None:
    parser, body = parse_all([b"HTTP/1.1 200 OK\r\n\r\nsome", b" more"])
    assert body == b"some more" and not parser.done
    assert parser.head is not None and not parser.head.keep_alive
    parser.eof()
    assert parser.done
    parser, _ = parse_all([b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"])
    assert parser.done and parser.head is not None and not parser.head.keep_alive
    parser, _ = parse_all([b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"])
    assert parser.head is not None and not parser.head.keep_alive


def test_parser_no_body_statuses_and_extra_bytes() -> None:
    parser, body = parse_all([b"HTTP/1.1 204 No Content\r\n\r\n"])
    assert parser.done and body == b""
    # a stray CRLF after it is no body (aiohttp's client takes it too); a body is malformed
    parser, body = parse_all([b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n\r\n"])
    assert parser.done and body == b"" and parser.extra
    for raw in (b"HTTP/1.1 204 No Content\r\nContent-Length: 2\r\n\r\nok",
                b"HTTP/1.1 304 Not Modified\r\n\r\n\r\n{}"):
        with pytest.raises(MalformedResponse):
            ResponseParser().feed(raw)
    parser, body = parse_all([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA"])
    assert body == b"ok" and parser.done and parser.extra


def test_a_101_ends_the_response_and_the_connection() -> None:
    """A 101 is the last response on its connection (what follows is another protocol's): a
    head without a body, never reused; the executor says what it was."""
    parser, body = parse_all([b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                              b"Connection: Upgrade\r\n\r\n\x81\x05hello"])
    assert parser.head is not None and parser.head.status == 101 and body == b""
    assert parser.done and parser.extra and not parser.head.keep_alive


def test_parser_decodes_gzip_and_refuses_unknown_encodings() -> None:
    packed = gzip.compress(b"data: hello\n\n" * 50)
    raw = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (
        len(packed), packed)
    parser, body = parse_all([raw[i:i + 7] for i in range(0, len(raw), 7)])
    assert body == b"data: hello\n\n" * 50 and parser.done
    with pytest.raises(MalformedResponse):
        ResponseParser().feed(b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\n\r\n")
    with pytest.raises(MalformedResponse):
        ResponseParser().feed(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n\r\nnot gzip")


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize("coding", [b"br", b"zstd", b"gzip, gzip"])
def test_parser_keeps_an_errors_head_whose_body_it_cannot_decode(
        status: int, coding: bytes) -> None:
    """An error's status and head are its answer (a 429's Retry-After): refused for its body's
    coding, the client got a 502 in place of the upstream's 429. The body is dropped, whole
    by its framing (the connection kept); a 200 in such a coding is still refused."""
    raw = (b"HTTP/1.1 %d Oops\r\nRetry-After: 3\r\nContent-Encoding: %s\r\n"
           b"Content-Length: 6\r\n\r\n\x8b\x05\x80abc" % (status, coding))
    parser, body = parse_all([raw[i:i + 5] for i in range(0, len(raw), 5)])
    assert parser.head is not None and parser.head.status == status
    assert parser.head.headers["retry-after"] == "3"
    assert body == b"" and parser.done and parser.head.keep_alive and not parser.extra
    with pytest.raises(MalformedResponse):
        ResponseParser().feed(raw.replace(b"%d Oops" % status, b"200 OK"))


@pytest.mark.parametrize("fields", [
    [b"Content-Encoding: identity", b"Content-Encoding: gzip"],
    [b"Content-Encoding: gzip", b"Content-Encoding: identity"],
    [b"Content-Encoding: identity, gzip"],
    [b"Content-Encoding: gzip,identity"],
])
def test_content_codings_are_read_from_every_field(fields: list[bytes]) -> None:
    """RFC 9110 5.3 / 8.4: a field sent as several lines is one list, and identity is no
    layer. Only the first line was read: identity then gzip passed the body on compressed
    (aiohttp's client decodes it), and "identity, gzip" in one line was a 502."""
    packed = gzip.compress(b"data: hello\n\n")
    raw = b"HTTP/1.1 200 OK\r\n%s\r\nContent-Length: %d\r\n\r\n%s" % (
        b"\r\n".join(fields), len(packed), packed)
    parser, body = parse_all([raw])
    assert body == b"data: hello\n\n" and parser.done


@pytest.mark.parametrize("fields", [
    [b"Content-Encoding: gzip", b"Content-Encoding: gzip"],
    [b"Content-Encoding: gzip, deflate"],
    [b"Content-Encoding: identity", b"Content-Encoding: br"],
])
def test_a_coding_not_decoded_in_any_field_is_refused(fields: list[bytes]) -> None:
    """Two layers (only one is decoded) or an unknown coding after identity: refused, not
    passed on still compressed."""
    with pytest.raises(MalformedResponse):
        ResponseParser().feed(b"HTTP/1.1 200 OK\r\n%s\r\n\r\n" % b"\r\n".join(fields))


@pytest.mark.parametrize("wbits", [zlib.MAX_WBITS, -zlib.MAX_WBITS])
@pytest.mark.parametrize("piece", [1, 7, 1 << 20])
def test_a_deflate_body_is_decoded_with_or_without_its_zlib_header(wbits: int,
                                                                    piece: int) -> None:
    """RFC 9110's `deflate` is zlib-wrapped; some servers send the raw stream (IIS did):
    both are read, as aiohttp's client reads them."""
    packer = zlib.compressobj(wbits=wbits)
    packed = packer.compress(b"data: hello\n\n" * 50) + packer.flush()
    raw = b"HTTP/1.1 200 OK\r\nContent-Encoding: deflate\r\nContent-Length: %d\r\n\r\n%s" % (
        len(packed), packed)
    parser, body = parse_all([raw[i:i + piece] for i in range(0, len(raw), piece)])
    assert body == b"data: hello\n\n" * 50 and parser.done


@pytest.mark.parametrize("piece", [1, 7, 100, 1 << 20])
def test_a_gzip_body_of_several_members_is_decoded_whole(piece: int) -> None:
    """RFC 1952: a gzip body is a series of members (a writer may flush one per event); the
    second and later were dropped."""
    packed = b"".join(gzip.compress(b"data: %d\n\n" % i) for i in range(5))
    raw = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (
        len(packed), packed)
    parser, body = parse_all([raw[i:i + piece] for i in range(0, len(raw), piece)])
    assert body == b"".join(b"data: %d\n\n" % i for i in range(5)) and parser.done


def test_a_compressed_body_inflating_past_the_read_cap_is_refused(monkeypatch: Any) -> None:
    """A decompression bomb: 16 MiB from 16 KiB was inflated whole in one call."""
    monkeypatch.setattr(response_parser, "MAX_INFLATED_READ", 1 << 20)
    packed = gzip.compress(b"\0" * (16 << 20))
    parser = ResponseParser()
    with pytest.raises(MalformedResponse, match="inflating over 1048576 bytes"):
        parser.feed(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(packed), packed))


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\nContent-Length: 2\nX-A: b\n\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\nX-A: b\r\n\nok",
    b"HTTP/1.1 200 OK\nContent-Length: 2\nX-A: b\n\r\nok",
    # (a bare LF, then the CRLF of the empty line, before the CRLF CRLF of a chunked end)
    b"HTTP/1.1 200 OK\nX-A: b\nTransfer-Encoding: chunked\n\r\n2\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.1 100 Continue\n\nHTTP/1.1 200 OK\nX-A: b\nTransfer-Encoding: chunked\n\n"
    b"2\r\nok\r\n0\r\n\r\n",
])
def test_a_head_whose_lines_end_with_a_bare_lf_is_read(raw: bytes) -> None:
    """RFC 9112 2.2: a recipient may take a bare LF as a line's end, and aiohttp's client
    does; looking for CRLF CRLF alone, the native one waited for such a head's end until the
    first-token timeout."""
    for pieces in ([raw], [raw[i:i + 1] for i in range(len(raw))]):
        parser, body = parse_all(pieces)
        assert parser.head is not None and parser.head.status == 200
        assert parser.head.headers["x-a"] == "b" and parser.head.keep_alive
        assert body == b"ok" and parser.done and not parser.extra


def test_a_folded_header_line_goes_on_with_the_field_before_it() -> None:
    """RFC 9112 5.2: an obs-fold is read as a SP (aiohttp's client does); the native client
    refused the answer as malformed, a 502. Framing fields fold too."""
    raw = (b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n  b\r\n\tc\r\nTransfer-Encoding:\r\n chunked\r\n"
           b"X-After: d\r\n\r\n2\r\nok\r\n0\r\n\r\n")
    parser, body = parse_all([raw])
    assert parser.head is not None and parser.head.chunked and body == b"ok" and parser.done
    assert parser.head.headers["x-folded"] == "a b c" and parser.head.headers["x-after"] == "d"


def test_parser_truncation_is_typed() -> None:
    parser, _ = parse_all([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"])
    with pytest.raises(Disconnected):
        parser.eof()
    parser, _ = parse_all([CHUNKED[:-10]])
    with pytest.raises(Disconnected):
        parser.eof()
    parser = ResponseParser()
    with pytest.raises(Disconnected) as info:
        parser.eof()
    assert info.value.nothing_received
    parser.feed(b"HTTP/1.1 2")
    with pytest.raises(Disconnected) as info:
        parser.eof()
    assert not info.value.nothing_received


def test_a_body_read_until_close_ends_at_a_close_not_at_a_reset() -> None:
    """Without Content-Length or chunked only the close ends the body: a clean one (FIN) does;
    a reset (or any read error) may have cut it anywhere, so it is a truncation."""
    raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: par"
    parser, body = parse_all([raw])
    parser.eof()
    assert parser.done and body == b"data: par"
    parser, _ = parse_all([raw])
    with pytest.raises(Disconnected):
        parser.eof(reset=True)
    assert not parser.done


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 OK\r\n\r\n",
    b"HTTP/2 200 OK\r\n\r\n",
    b"garbage\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno-colon\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",
    # RFC 9110 5.5: NUL or CR in a field value is rejected (or replaced), never kept
    b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-A: a\r\n \x00b\r\n\r\n",
])
def test_parser_malformed_head(raw: bytes) -> None:
    with pytest.raises(MalformedResponse):
        ResponseParser().feed(raw)


def test_framing_headers_in_any_case_and_repeated() -> None:
    """Framing is read from the head's fields by lower-cased name (the header map itself is
    built only when asked for): any case, repeated equal lengths, a coding list."""
    parser, body = parse_all([b"HTTP/1.1 200 OK\r\nCONTENT-LENGTH: 5\r\ncontent-length: 5\r\n"
                              b"CONNECTION: Close\r\n\r\nhello"])
    assert body == b"hello" and parser.done
    assert parser.head is not None and not parser.head.keep_alive
    assert parser.head.headers.getall("content-length") == ["5", "5"]
    parser, body = parse_all([b"HTTP/1.1 200 OK\r\ntransfer-ENCODING: identity, Chunked\r\n\r\n"
                              b"2\r\nhi\r\n0\r\n\r\n"])
    assert body == b"hi" and parser.done and parser.head is not None and parser.head.keep_alive
    parser, body = parse_all([b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n"
                              b"Content-Length: 2\r\n\r\nok"])
    assert parser.head is not None and parser.head.keep_alive and body == b"ok"


def test_transfer_encoding_with_content_length_is_read_chunked_and_not_reused() -> None:
    """RFC 9112 6.3: Transfer-Encoding wins, and both at once may split a response (the
    next one hidden in this body, or this body's end in the next): no reuse."""
    parser, body = parse_all([b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"
                              b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"])
    assert body == b"hello" and parser.done and not parser.extra
    assert parser.head is not None and not parser.head.keep_alive


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from([b"HTTP/1.1 200 OK", b"HTTP/1.0 204 No Content", b"HTTP/1.1 200"]),
       header_lines())
def test_the_one_pass_field_reading_agrees_with_the_line_by_line_one(first: bytes,
                                                                    lines: bytes) -> None:
    """`plain_fields` reads a head of plain lines in one pass; when it reads one, reading it
    line by line gives the same fields (and does not refuse it)."""
    head = first + lines
    fields = plain_fields(head, len(first))
    if fields is not None:
        assert fields == _fields_exactly(head.split(b"\r\n")[1:])


def test_the_usual_response_head_is_read_in_one_pass() -> None:
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\nDate: Sun, 22 Nov 2026 05:00:00 GMT\r\n"
            b"Server: Python/3.11 aiohttp/3.10")
    fields = plain_fields(head, len(b"HTTP/1.1 200 OK"))
    assert fields is not None and fields[3] == ("Date", "Sun, 22 Nov 2026 05:00:00 GMT")
    assert parse_head(head).chunked


def test_parser_head_size_cap() -> None:
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\n")
    with pytest.raises(HeadTooLarge):
        for _ in range(100):
            parser.feed(b"X-Filler: " + b"a" * 1000 + b"\r\n")
    many = b"HTTP/1.1 200 OK\r\n" + b"A: b\r\n" * 300 + b"\r\n"
    with pytest.raises(HeadTooLarge):
        ResponseParser().feed(many)
    assert issubclass(HeadTooLarge, MalformedResponse)


@pytest.mark.parametrize("raw", [
    b"zz\r\nab\r\n0\r\n\r\n",  # not hex
    b"+5\r\nhello\r\n0\r\n\r\n",
    b"0x5\r\nhello\r\n0\r\n\r\n",
    b"2\r\nabc\r\n0\r\n\r\n",  # data longer than its size
    b"2\nab\r\n0\r\n\r\n",  # bare LF
    b"1" * 5000,  # a size line without end
])
def test_chunked_malformed(raw: bytes) -> None:
    with pytest.raises(InvalidChunk):
        ChunkedDecoder().feed(raw)


@pytest.mark.parametrize("raw", [b"zz\r\nab\r\n", b"+5\r\nhello\r\n", b"0x5\r\nhello\r\n",
                                 b" 5\r\nhello\r\n", b"2\r\nabc\r\n",
                                 b"1_0\r\n" + b"a" * 16 + b"\r\n"])
def test_a_malformed_chunk_alone_in_a_read_is_refused(raw: bytes) -> None:
    # One whole chunk per read takes a fast path (a provider's flushed event); same rules.
    with pytest.raises(InvalidChunk):
        ChunkedDecoder().feed(raw)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=300), max_size=8), st.booleans())
def test_chunked_one_whole_chunk_per_read(pieces: list[bytes], upper: bool) -> None:
    decoder = ChunkedDecoder()
    out = []
    for p in pieces:
        size = (b"%X" if upper else b"%x") % len(p)
        out.append(decoder.feed(size + b"\r\n" + p + b"\r\n"))
    assert decoder.feed(b"0\r\n\r\n") == b"" and decoder.done
    assert out == pieces


# Data that looks like framing: CRLFs, hex digits, a lone CR at either end.
_framing_like = st.lists(st.sampled_from([b"\r\n", b"\r", b"\n", b"0", b"5", b"a", b"x", b"3\r\n"]),
                         min_size=1, max_size=12).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_framing_like, st.binary(min_size=1, max_size=40)), max_size=10),
       st.lists(st.integers(1, 4), min_size=10, max_size=10), st.booleans())
def test_chunked_several_whole_chunks_per_read(pieces: list[bytes], groups: list[int],
                                               warm: bool) -> None:
    # A loaded proxy reads a few flushed events at once (`_whole_chunks`). Data holding CRLFs
    # must not pass for framing; sizes already seen (warm) take the split, others the loop.
    chunks = [b"%x\r\n%b\r\n" % (len(p), p) for p in pieces] + [b"0\r\n\r\n"]
    decoder = ChunkedDecoder()
    if warm:
        for c in chunks[:-1]:
            ChunkedDecoder().feed(c)  # the sizes are now known
    out, i = [], 0
    for n in groups:
        out.append(decoder.feed(b"".join(chunks[i:i + n])))
        i += n
    if i < len(chunks):
        out.append(decoder.feed(b"".join(chunks[i:])))
    assert b"".join(out) == b"".join(pieces) and decoder.done and decoder.rest == b""


def test_a_chunk_whose_data_holds_a_crlf_is_not_cut_there() -> None:
    # "3\r\nx" inside the data reads like a chunk of its own once the size is known.
    ChunkedDecoder().feed(b"3\r\nabc\r\n")
    ChunkedDecoder().feed(b"8\r\n12345678\r\n")
    tricky = b"8\r\nx\r\n3\r\nab\r\n3\r\nabc\r\n"  # one 8-byte chunk, then "abc"
    assert ChunkedDecoder().feed(tricky) == b"x\r\n3\r\nababc"


@pytest.mark.parametrize("raw", [
    b"5 \r\nhello\r\n0\r\n\r\n",
    b"5\t\r\nhello\r\n0 \r\n\r\n",
    b"5  \r\nhello\r\n",  # alone in a read: the fast path
    b"2 \r\nhe\r\n3\t\r\nllo\r\n",  # whole chunks in a read
])
def test_whitespace_after_a_chunk_size_is_taken(raw: bytes) -> None:
    """A chunk size padded with spaces or tabs (some servers write fixed-width sizes) was an
    InvalidChunk, a 502, where aiohttp's client (llhttp), Go's and curl read the size: the
    whitespace is read as before an extension (BWS), with or without one."""
    decoder = ChunkedDecoder()
    assert decoder.feed(raw) == b"hello"


def test_chunk_extensions_are_not_remembered() -> None:
    """The process-wide memo of chunk-size lines took any line up to 4 KiB: an upstream
    sending a new extension each chunk left 4,096 of them, 16 MB, for the process's life."""
    from streamproxy.upstream import response_parser

    for i in range(50):
        line = b"1;ext=%d" % i + b"x" * 1000
        assert ChunkedDecoder().feed(line + b"\r\na\r\n") == b"a"
        assert line not in response_parser._SIZES
    assert ChunkedDecoder().feed(b"1;e\r\nb\r\n") == b"b"  # a short one still is
    assert b"1;e" in response_parser._SIZES


def test_chunked_rest_after_end() -> None:
    decoder = ChunkedDecoder()
    assert decoder.feed(b"3\r\nabc\r\n0\r\n\r\nNEXT") == b"abc"
    assert decoder.done and decoder.rest == b"NEXT"


def _chunked(pieces: list[bytes]) -> bytes:
    out = b"".join(b"%x;e=1\r\n%s\r\n" % (len(p), p) for p in pieces if p)
    return out + b"0\r\nT: 1\r\n\r\n"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8), st.randoms(use_true_random=False))
def test_chunked_any_split(pieces: list[bytes], rng: random.Random) -> None:
    wire = _chunked(pieces)
    decoder = ChunkedDecoder()
    out = b"".join(decoder.feed(p) for p in random_splits(wire, rng, max_piece=40))
    assert out == b"".join(pieces) and decoder.done and decoder.rest == b""


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=6), st.randoms(use_true_random=False),
       st.booleans())
def test_parser_any_split(pieces: list[bytes], rng: random.Random, chunked: bool) -> None:
    body = b"".join(pieces)
    if chunked:
        wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + _chunked(pieces)
    else:
        wire = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    parser, out = parse_all(random_splits(wire, rng, max_piece=30))
    assert out == body and parser.done and not parser.extra
