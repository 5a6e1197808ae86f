"""The sans-IO half of the native HTTP/1.1 client (`upstream/http11.py`): bytes in, a parsed
response out. No socket and no asyncio here, so all of it is tested byte by byte without a
connection (`tests/test_response_parser.py`), as h11 is.

`ResponseParser` reads one response: its head (`parse_head` → `ResponseHead`; 1xx interim
responses skipped), then its body, framed by Content-Length, by `ChunkedDecoder` or by the
connection's close, a gzip or deflate body inflated. `plain_fields` reads header lines in one
regex pass; the lean front (`server/front.py`) reads request heads with it too.

Errors: a malformed response is `MalformedResponse` (`HeadTooLarge`, `InvalidChunk`), a
response cut by the connection's close `Disconnected`; both are `ConnectionError`s, so every
path that catches OSError sees them; `upstream/client.py` maps them.
"""

from __future__ import annotations

import re
import zlib

from multidict import CIMultiDict, CIMultiDictProxy

MAX_HEAD_BYTES = 64 * 1024  # status line + headers of one response
MAX_HEADERS = 256
MAX_CHUNK_LINE = 4096  # a chunk-size line with its extensions
# A longer Content-Length is malformed: no body that long is real, and int() refuses past
# 4,300 digits (a ValueError that would escape data_received).
MAX_LENGTH_DIGITS = 18
# What one read of a compressed body may inflate to (a read is at most a few hundred KiB: a
# ratio of 64 or more): beyond it a decompression bomb, refused before it takes the memory.
MAX_INFLATED_READ = 16 * 1024 * 1024


# -- errors ---------------------------------------------------------------------------------------

class Disconnected(ConnectionError):
    """The upstream closed the connection before the response ended."""

    def __init__(self, msg: str, *, nothing_received: bool = False) -> None:
        super().__init__(msg)
        # No byte of a response came. Not a reason to send the request again: it may have
        # reached the upstream (only http11.NotSent, nothing written, is resent).
        self.nothing_received = nothing_received


class MalformedResponse(ConnectionError):
    """The upstream's bytes are not valid HTTP/1.1."""


class HeadTooLarge(MalformedResponse):
    pass


class InvalidChunk(MalformedResponse):
    pass


class UnsupportedTransferCoding(MalformedResponse):
    """A transfer coding besides chunked (its name is the message: the 502 says it)."""


class UnsupportedContentCoding(MalformedResponse):
    """A content coding not decoded (br, zstd, two layers): named in the message, as the
    upstream codes every answer so (a retry gets the same)."""


# -- sans-IO parsing ------------------------------------------------------------------------------

_HEXDIGITS = b"0123456789abcdefABCDEF"
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_STATUS = re.compile(rb"HTTP/1\.([01]) (\d{3})(?: (.*))?")
# A plain header line (`plain_fields`): a token, a colon, and a value of printable ASCII, with
# spaces and tabs inside but not at its end (an empty value or trailing whitespace is not plain).
PLAIN_FIELD = re.compile(r"\r\n([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*"
                         r"([!-~][\t -~]*)(?<![ \t])(?=\r\n|\Z)")


_LAST_CHUNK = b"\r\n0\r\n\r\n"  # a chunk's end, then the last chunk with no trailers
_SIZES: dict[bytes, int] = {}  # chunk-size lines already validated → size; a stream has few


def _chunk_size(line: bytes) -> int:
    """A chunk-size line (without CRLF) → the size; extensions are ignored. Sizes seen are
    remembered: validating one costs ~1,000 instructions (`translate` builds a table per
    call), a lookup ~50, and a stream's chunks repeat a few dozen sizes."""
    given = line
    if b";" in line:
        line = line.split(b";", 1)[0]
    # Whitespace after the size, with an extension or without (padded sizes), is taken as
    # llhttp (aiohttp's client), Go and curl take it.
    line = line.rstrip(b" \t")
    # int(x, 16) alone would also take "0x1f", "+5", "1_0" and spaces.
    if not line or len(line) > 16 or line.translate(None, _HEXDIGITS):
        raise InvalidChunk("invalid chunk size")
    size = int(line, 16)
    # Only lines a plain size fits in: one with extensions may be MAX_CHUNK_LINE long, and an
    # upstream sending ever-new ones would fill the memo with 16 MB for the process's life.
    if len(given) <= 16 and len(_SIZES) < 4096:
        _SIZES[given] = size
    return size


# ChunkedDecoder's states; module constants, not class attributes, which Python 3.11 looks up
# through the instance (unspecialised) on every read.
_SIZE, _DATA, _DATA_END, _TRAILER, _MORE_TRAILERS = range(5)
# A trailer line's start (RFC 9112 7.1.2: field lines): a name and its colon. Values are not
# read: trailers are dropped.
_TRAILER_FIELD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:")


class ChunkedDecoder:
    """Transfer-Encoding: chunked → body bytes. `feed` returns the data bytes found in its input
    (b"" when none); `done` turns true after the last chunk and its trailers; `rest` holds any
    bytes after that."""

    __slots__ = ("_line", "_need", "_state", "done", "rest")

    def __init__(self) -> None:
        self._state = _SIZE
        self._need = 0  # data bytes left in the current chunk
        self._line = b""  # a partial size / CRLF / trailer line
        self.done = False
        self.rest = b""

    def feed(self, data: bytes) -> bytes:
        if self.done:
            self.rest += data
            return b""
        state = self._state
        # Fast path: the whole input is the middle of a chunk (no copy).
        if state == _DATA and len(data) < self._need:
            self._need -= len(data)
            return data
        # Fast paths: the input is one whole chunk, as a provider's flushed event is, or a few.
        if state == _SIZE and not self._line and data.endswith(b"\r\n"):
            nl = data.find(b"\r\n", 0, 18)
            if nl > 0:
                line = data[:nl]
                size = _SIZES.get(line)
                if size is None:
                    size = _chunk_size(line)
                if size and nl + 4 + size == len(data):
                    return data[nl + 2 : -2]
                whole = self._whole_chunks(data)
                if whole is not None:
                    return whole
        out: list[bytes] = []
        pos, end = 0, len(data)
        while pos < end:
            state = self._state
            if state == _SIZE and not self._line:
                # Fast path: a size line whole in this read, and usually its whole chunk too.
                nl = data.find(b"\r\n", pos, pos + MAX_CHUNK_LINE)
                if nl >= 0:
                    line = data[pos:nl]
                    size = _SIZES.get(line)
                    if size is None:
                        size = _chunk_size(line)
                    start = nl + 2
                    stop = start + size
                    if size and stop + 2 <= end:
                        if data[stop:stop + 2] != b"\r\n":
                            raise InvalidChunk("chunk data longer than its size")
                        out.append(data[start:stop])
                        pos = stop + 2
                        continue
                    pos = start
                    self._need = size
                    self._state = _DATA if size else _TRAILER
                    continue
            if state == _DATA:
                take = min(self._need, end - pos)
                out.append(data[pos:pos + take])
                pos += take
                self._need -= take
                if not self._need:
                    self._state = _DATA_END
                continue
            nl = data.find(b"\n", pos)
            if nl < 0:
                self._line += data[pos:]
                if len(self._line) > MAX_CHUNK_LINE:
                    raise InvalidChunk("chunk line too long")
                break
            line = self._line + data[pos:nl + 1]
            self._line = b""
            pos = nl + 1
            if len(line) > MAX_CHUNK_LINE:
                raise InvalidChunk("chunk line too long")
            if not line.endswith(b"\r\n"):
                raise InvalidChunk("chunk line not ended by CRLF")
            line = line[:-2]
            if state == _SIZE:
                self._need = _chunk_size(line)
                self._state = _DATA if self._need else _TRAILER
            elif state == _DATA_END:
                if line:
                    raise InvalidChunk("chunk data longer than its size")
                self._state = _SIZE
            elif not line:  # the empty line that ends the trailers
                self.done = True
                self.rest = data[pos:]
                break
            elif _TRAILER_FIELD.match(line) or (state == _MORE_TRAILERS and line[:1] in b" \t"):
                self._state = _MORE_TRAILERS  # (a field: an obs-fold may go on with it)
            else:
                # Not a field line: what follows the last chunk is not what the framing says
                # (aiohttp's client and h11 refuse it too).
                raise InvalidChunk("malformed trailer line")
        if len(out) == 1:
            return out[0]
        return b"".join(out)

    @staticmethod
    def _whole_chunks(data: bytes) -> bytes | None:
        """A read of several whole chunks (a loaded proxy reads a few flushed events at once),
        split in C instead of walked chunk by chunk: 0.45 → 0.24 µs per event at nine chunks
        a read. Cut at every CRLF the read alternates size line, data, …, b"". The pairs are
        checked against known sizes in order, so a match means that each piece is a whole
        chunk's data: data holding a CRLF makes its piece shorter than its size. None when the
        read is anything else (a size not seen yet, the last chunk, a cut): the loop decides.
        A read that ends with the last chunk (a body written at once) is refused before the
        split, which would only copy it (~20 µs for 25 KB of SSE)."""
        if data.endswith(_LAST_CHUNK):
            return None
        parts = data.split(b"\r\n")
        sizes = list(map(_SIZES.get, parts[0:-1:2]))
        pieces = parts[1::2]
        if sizes == list(map(len, pieces)) and 0 not in sizes:
            return b"".join(pieces)
        return None


class ResponseHead:
    """A parsed response head. `headers` is built on first use: only error paths (Retry-After,
    Bedrock's error type) read an upstream's headers; framing reads its few fields here."""

    __slots__ = ("_headers", "chunked", "encoding", "fields", "keep_alive", "length", "reason",
                 "status")

    def __init__(self, status: int, reason: str, fields: list[tuple[str, str]],
                 keep_alive: bool, chunked: bool, length: int | None, encoding: str) -> None:
        self.status = status
        self.reason = reason
        self.fields = fields
        self.keep_alive = keep_alive
        self.chunked = chunked
        self.length = length  # Content-Length; None with chunked or read-until-close
        # Content-Encoding: "" (identity), "gzip", "deflate" or an error's UNREAD
        self.encoding = encoding
        self._headers: CIMultiDictProxy[str] | None = None

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        if self._headers is None:
            self._headers = CIMultiDictProxy(CIMultiDict(self.fields))
        return self._headers


_FRAMING = frozenset({"connection", "transfer-encoding", "content-length", "content-encoding"})


def plain_fields(head: bytes, start: int) -> list[tuple[str, str]] | None:
    """The (name, value) fields of the header lines after `start` (where the first line ends)
    when every one is plain, read in one regex pass; None when any is not. (A head's lines read
    one by one cost several times more: a cold request pays for every call.) The lean front
    reads request heads with this too."""
    # Latin-1 decodes any bytes; a line with a non-ASCII byte is not plain.
    fields = PLAIN_FIELD.findall(head.decode("latin-1"), start)
    # Each match is one whole line, so a line that is not plain makes the count short.
    return fields if len(fields) == head.count(b"\r\n") else None


def _fields_exactly(lines: list[bytes]) -> list[tuple[str, str]]:
    """The (name, value) fields of header lines, whatever their bytes."""
    fields: list[tuple[str, str]] = []
    for line in lines:
        # RFC 9110 5.5: NUL or CR in a value MUST be rejected (or replaced); kept, a NUL went
        # on in a passed header. (Plain lines never hold them; other CTLs MAY stay, and do,
        # as aiohttp's client keeps them.)
        if b"\x00" in line or b"\r" in line:
            raise MalformedResponse("NUL or CR in a header line")
        if line[:1] in (b" ", b"\t") and fields:
            # obs-fold (RFC 9112 5.2): the line goes on with the field before it, the fold
            # read as one SP, as aiohttp's client reads it (a 502 for an answer it takes).
            # Whitespace before the first field stays malformed.
            name, value = fields[-1]
            more = line.strip(b" \t").decode("utf-8", "surrogateescape")
            fields[-1] = (name, f"{value} {more}" if value and more else value or more)
            continue
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name):
            raise MalformedResponse("invalid header line")
        fields.append((name.decode("ascii"),
                       value.strip(b" \t").decode("utf-8", "surrogateescape")))
    return fields


def parse_head(head: bytes, *, head_request: bool = False) -> ResponseHead:
    """One response head (status line + header lines, without the final empty line)."""
    status_line = head.partition(b"\r\n")[0]
    m = _STATUS.fullmatch(status_line)
    if m is None:
        raise MalformedResponse("invalid status line")
    minor, status = m.group(1), int(m.group(2))
    if head.count(b"\r\n") > MAX_HEADERS:
        raise HeadTooLarge(f"more than {MAX_HEADERS} headers")
    fields = plain_fields(head, len(status_line))
    if fields is None:
        fields = _fields_exactly(head.split(b"\r\n")[1:])
    framing: dict[str, list[str]] = {}
    for name, value in fields:
        lower = name.lower()
        if lower in _FRAMING:
            framing.setdefault(lower, []).append(value)
    conn = ",".join(framing.get("connection", ())).lower()
    keep_alive = "close" not in conn if minor == b"1" else "keep-alive" in conn
    chunked, length = False, None
    te = framing.get("transfer-encoding")
    if te and "content-length" in framing:
        # RFC 9112 6.3: Transfer-Encoding overrides the Content-Length, but both at once may
        # be a response splitting attempt: the body is read, the connection not reused.
        keep_alive = False
    if te == ["chunked"]:  # the usual one: no coding list to read
        chunked = True
    elif te:
        codings = transfer_codings(te)
        chunked = codings[-1] == "chunked"
        if not chunked:
            keep_alive = False  # RFC 9112 6.3: read until close
    else:
        lengths = {v.strip() for v in framing.get("content-length", ())}
        if len(lengths) > 1:
            raise MalformedResponse("conflicting Content-Length headers")
        if lengths:
            value = lengths.pop()
            if not value.isdigit() or not value.isascii() or len(value) > MAX_LENGTH_DIGITS:
                raise MalformedResponse("invalid Content-Length")
            length = int(value)
    content_codings = framing.get("content-encoding")
    encoding = body_coding(content_codings, status) if content_codings else ""
    if head_request or status in (101, 204, 304):
        chunked, length = False, 0
        if status == 101:  # what follows is another protocol's: never reused
            keep_alive = False
    elif not chunked and length is None:
        keep_alive = False  # the body ends when the connection does
    return ResponseHead(status, m.group(3).decode("latin-1") if m.group(3) else "",
                        fields, keep_alive, chunked, length, encoding)


def content_coding(values: list[str]) -> str:
    """The one coding to undo, of every Content-Encoding line: RFC 9110 5.3 makes the lines
    one list, so "identity" then "gzip" is a gzip body (reading the first line alone passed it
    on compressed). We ask for identity; one layer of gzip or deflate is decoded anyway
    anything else — another coding, two layers — refused. aiohttp's client follows this rule
    too (`upstream/client.py`): its own parser reads one line and no list."""
    codings = [c for c in (c.strip().lower() for c in ",".join(values).split(","))
               if c not in ("", "identity")]
    if not codings:
        return ""
    if len(codings) > 1 or codings[0] not in ("gzip", "x-gzip", "deflate"):
        named = ", ".join(codings)
        if not all(_TOKEN.fullmatch(c.encode("latin-1", "replace")) for c in codings):
            named = "?"  # (the upstream's bytes, not echoed)
        raise UnsupportedContentCoding(f"unsupported Content-Encoding {named[:40]!r}")
    return "deflate" if codings[0] == "deflate" else "gzip"


# An error answer's coding that is not decoded: its body is dropped (`Dropped`), its status and
# head stand.
UNREAD = "unread"


def body_coding(values: list[str], status: int) -> str:
    """`content_coding`, but an error answer (4xx/5xx) in a coding not decoded is not refused:
    its status and head are the answer (a 429's Retry-After), its body only the words, which
    the executor says could not be read (`unread_coding`). Both clients read it so."""
    try:
        return content_coding(values)
    except UnsupportedContentCoding:
        if status < 400:
            raise
        return UNREAD


def unread_coding(values: list[str] | None) -> str | None:
    """Why an error answer's body was dropped (`body_coding`), or None when it was read."""
    if values:
        try:
            content_coding(values)
        except UnsupportedContentCoding as e:
            return str(e)
    return None


class Dropped:
    """The body of an error answer in a coding not decoded: its reads come to nothing."""

    __slots__ = ()

    def decompress(self, body: bytes) -> bytes:
        return b""


def body_decoder(encoding: str) -> Inflater | Dropped:
    """The decoder of a body in `encoding` (not ""), as `body_coding` named it."""
    return Dropped() if encoding == UNREAD else Inflater(encoding)


def transfer_codings(values: list[str]) -> list[str]:
    """The transfer codings of every Transfer-Encoding line. RFC 9112 6.1: one besides chunked
    (gzip, compress, deflate) is a layer of the body we never asked for (no TE header goes out)
    and would pass on undecoded, so it is refused by name; "identity" (RFC 2616's, since
    withdrawn) changes nothing. aiohttp's client is held to this too (`upstream/client.py`)."""
    codings = [c.strip().lower() for c in ",".join(values).split(",")]
    for coding in codings:
        if coding not in ("chunked", "identity", ""):
            name = coding if _TOKEN.fullmatch(coding.encode("latin-1", "replace")) else "?"
            raise UnsupportedTransferCoding(f"unsupported Transfer-Encoding {name[:40]!r}")
    return codings


class Inflater:
    """A gzip or deflate body → its bytes, read by read (both clients decode with this)."""

    __slots__ = ("_gzip", "_inflate", "_sniff_deflate")

    def __init__(self, encoding: str) -> None:
        self._gzip = encoding == "gzip"
        self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS if self._gzip else zlib.MAX_WBITS)
        self._sniff_deflate = not self._gzip  # a deflate body whose first byte is to come

    def decompress(self, body: bytes) -> bytes:
        """The bytes of one read (not empty) of the body; b"" when they are not out yet."""
        inflate = self._inflate
        if self._sniff_deflate:
            self._sniff_deflate = False
            if body[0] & 0x0F != 8:  # no zlib header (its method nibble is 8): raw deflate,
                # as some servers send for `deflate` (aiohttp's client reads it the same way)
                inflate = self._inflate = zlib.decompressobj(-zlib.MAX_WBITS)
        out: list[bytes] = []
        room = MAX_INFLATED_READ
        while True:
            try:
                data = inflate.decompress(body, room)
            except zlib.error:
                raise MalformedResponse("invalid compressed body") from None
            out.append(data)
            room -= len(data)
            if inflate.unconsumed_tail or (room <= 0 and inflate.unused_data):
                raise MalformedResponse(f"compressed body inflating over {MAX_INFLATED_READ} "
                                        "bytes in one read")
            if not (inflate.eof and inflate.unused_data and self._gzip):
                return data if len(out) == 1 else b"".join(out)
            # The next member of a gzip body written in several (RFC 1952 2.2: a gzip file
            # is a series of members, and a reader decodes them all).
            body = inflate.unused_data
            inflate = self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)


_HEAD_END = re.compile(rb"\r?\n\r?\n")
# An empty line after a line ended by a bare LF ("\n\n", "\n\r\n"): where such a head ends.
_BARE_LF_HEAD_END = re.compile(rb"\n\r?\n")


def find_head_end(buf: bytes) -> tuple[int, int]:
    """Where a head ends, its lines ended by CRLF or a bare LF, and where what follows starts;
    -1 when it has not ended. RFC 9112 2.2 lets a recipient take a bare LF as a line's end, and
    aiohttp's client does: some small servers write them, and looking for CRLF CRLF alone
    such a head never ended — the answer was waited for until the first-token timeout."""
    m = _HEAD_END.search(buf)
    return (m.start(), m.end()) if m is not None else (-1, -1)


class ResponseParser:
    """Bytes → one response: `feed` returns body bytes (b"" when none); `head` is set when the
    head is complete (1xx interim responses are skipped), `done` when the body ended, `extra`
    is true when bytes followed the end (the connection is then not reused). `eof()` is called
    when the connection closes and raises `Disconnected` when the body was cut."""

    __slots__ = ("_buf", "_chunked", "_head_request", "_inflate", "_left", "done", "extra",
                 "head", "received")

    def __init__(self, *, head_request: bool = False) -> None:
        self._buf = b""
        self._head_request = head_request
        self._chunked: ChunkedDecoder | None = None
        self._left: int | None = None  # Content-Length bytes left; None = until close
        self._inflate: Inflater | Dropped | None = None  # a compressed body (rare)
        self.head: ResponseHead | None = None
        self.done = False
        self.extra = False
        self.received = False  # any byte at all (a stale connection gets none)

    def feed(self, data: bytes) -> bytes:
        if self.head is None:
            if data:
                self.received = True
            data = self._feed_head(data)
            if self.head is None or not data:
                return b""
        if self.done:
            self.extra = self.extra or bool(data)
            return b""
        chunked = self._chunked
        if chunked is not None:  # most reads
            body = chunked.feed(data)
            if chunked.done:
                self.done = True
                self.extra = bool(chunked.rest)
        else:
            body = self._feed_length(data)
        if self._inflate is not None and body:
            return self._inflate.decompress(body)
        return body

    def _feed_length(self, data: bytes) -> bytes:
        """A Content-Length body, or one read until the connection closes."""
        left = self._left
        if left is None:
            return data
        if len(data) < left:
            self._left = left - len(data)
            return data
        self._left = 0
        self.done = True
        self.extra = len(data) > left
        return data[:left] if self.extra else data

    def _feed_head(self, data: bytes) -> bytes:
        buf = self._buf + data if self._buf else data
        while True:
            end = buf.find(b"\r\n\r\n")
            rest, bare_lf = end + 4, False
            # (a head of bare-LF lines may end before a CRLF CRLF of its body: a chunked end)
            if end < 0 or _BARE_LF_HEAD_END.search(buf, 0, end) is not None:
                end, rest = find_head_end(buf)
                bare_lf = True
            if end < 0:
                if len(buf) > MAX_HEAD_BYTES:
                    raise HeadTooLarge(f"response head over {MAX_HEAD_BYTES} bytes")
                self._buf = buf
                return b""
            if end > MAX_HEAD_BYTES:
                raise HeadTooLarge(f"response head over {MAX_HEAD_BYTES} bytes")
            raw = buf[:end]
            if bare_lf:  # read as CRLF lines
                raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            head = parse_head(raw, head_request=self._head_request)
            buf = buf[rest:]
            if 100 <= head.status < 200 and head.status != 101:
                # An interim response: the real one follows. (A 101 ends the response: what
                # follows is the other protocol's, and the executor refuses the switch.)
                continue
            if head.status in (204, 304) and buf.strip(b"\r\n"):
                # RFC 9112 6.3: these end at their head, so bytes after it in its read are a
                # body they cannot have (content sent with a 204): refused, as aiohttp's client
                # refuses them, not an answer of "No Content" that dropped the upstream's.
                # (Stray CRLFs are no body; bytes in a later read only end the connection.)
                raise MalformedResponse(f"a body after a {head.status} response")
            self._buf = b""
            self.head = head
            if head.encoding:
                self._inflate = body_decoder(head.encoding)
            if head.chunked:
                self._chunked = ChunkedDecoder()
            elif head.length is not None:
                self._left = head.length
                self.done = head.length == 0
            return buf

    def eof(self, *, reset: bool = False) -> None:
        """`reset`: the connection ended by an error (a reset), not the upstream's close."""
        if self.done:
            return
        if self.head is not None and self._chunked is None and self._left is None:
            if reset:  # a body read until close is cut by a reset, as curl and Go read it
                raise Disconnected("the connection was reset mid-response")
            self.done = True  # read-until-close: this is the end
            return
        if self.head is None:
            raise Disconnected("the connection closed before a response",
                               nothing_received=not self.received)
        raise Disconnected("the connection closed mid-response")
