"""The hot path's shortcuts against plain implementations of the same rules.

- SSEDecoder handles whole event blocks and recognises the common shapes with slices; a
  straightforward line-by-line decoder (the WHATWG algorithm as written) is the oracle, on
  generated streams of every field kind, line ending and split.
- PassthroughTranslator picks the events worth parsing with one regex; it must pick exactly
  what the list of byte patterns it replaced picked.
- The Anthropic translator splices reads made only of text deltas without decoding them; what
  it writes must be, byte for byte, what the decoder's path writes for the same reads.
- The OpenAI pass-through forwards a read's run of plain events whole; what the client gets,
  how a stream fails and what store captures must be what the decoder's path gives.
"""

from __future__ import annotations

import contextlib
import gc
import json
import re
import weakref
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from streamproxy.decode.sse import SSEDecoder, SSEEvent
from streamproxy.errors import StreamDecodeError
from streamproxy.openai_api.chunks import ChunkEncoder, RecordingChunkEncoder
from streamproxy.openai_api.completion import CompletionBuilder, TeeSink
from streamproxy.providers.anthropic.stream import AnthropicStreamTranslator
from streamproxy.providers.azure import AzureTranslator
from streamproxy.providers.openai_compat import INTERESTING, PassthroughTranslator
from streamproxy.providers.presets import CompatTranslator, MistralTranslator
from streamproxy.providers.splice import feed_runs
from tests.helpers import (
    DecodingEncoder,
    assert_splice_matches_decoding,
    count_spliced_reads,
    make_encoder,
    translate_reads,
)


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
    assert (INTERESTING.search(data) is not None) == any(p in data for p in PATTERNS)


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
    return as_reads(draw, blocks, joined=1, ways=6)


def as_reads(draw: st.DrawFn, blocks: list[bytes], joined: int, ways: int) -> list[bytes]:
    """The blocks as reads: of `ways` equally likely, one cuts a block in two, `joined` put it
    in the read before, the others make it a read of its own."""
    reads: list[bytes] = []
    for block in blocks:
        way = draw(st.integers(0, ways - 1))
        if way == 0 and len(block) > 1:
            cut = draw(st.integers(1, len(block) - 1))
            reads += [block[:cut], block[cut:]]
        elif 1 <= way <= joined and reads:
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


# -- Anthropic text deltas, spliced --------------------------------------------------------------

def _event(kind: str, payload: bytes) -> bytes:
    return b"event: %b\ndata: %b\n\n" % (kind.encode(), payload)


def _delta_json(text: str, index: int, style: int) -> bytes:
    delta = {"type": "content_block_delta", "index": index,
             "delta": {"type": "text_delta", "text": text}}
    if style == 0:  # as Anthropic writes them: compact, raw UTF-8
        return orjson.dumps(delta)
    if style == 1:  # padded before the last brace, as Anthropic sometimes does
        return orjson.dumps(delta)[:-1] + b"      }"
    if style == 2:  # \u escapes for everything outside ASCII
        return json.dumps(delta, separators=(",", ":")).encode()
    if style == 3:  # \/ escapes
        return orjson.dumps(delta).replace(b"/", b"\\/")
    return json.dumps(delta, ensure_ascii=False).encode()  # spaces after the separators


OTHER_EVENTS = st.sampled_from([
    _event("ping", b'{"type": "ping"}'),
    _event("content_block_stop", b'{"type":"content_block_stop","index":0}'),
    _event("content_block_delta", b'{"type":"content_block_delta","index":0,'
                                  b'"delta":{"type":"thinking_delta","thinking":"hm"}}'),
    b": comment\n\n",
    b"\n",  # a stray blank line
    b"id: 7\n" + _event("content_block_delta", b'{"type":"content_block_delta","index":0,'
                                               b'"delta":{"type":"text_delta","text":"i"}}'),
])
TEXTS = st.one_of(st.text(max_size=12),
                  st.text(alphabet='\\"/\n\t\x00\x1f\x7f\u2028 é🙂ab', max_size=8))
START = _event("message_start", orjson.dumps({"type": "message_start", "message": {
    "id": "msg_1", "model": "claude-x", "usage": {"input_tokens": 3, "output_tokens": 1}}}))
END = (_event("message_delta", b'{"type":"message_delta","delta":{"stop_reason":"end_turn"},'
                               b'"usage":{"output_tokens":9}}')
       + _event("message_stop", b'{"type":"message_stop"}'))


@st.composite
def anthropic_reads(draw: st.DrawFn) -> list[bytes]:
    """A stream of text deltas in every JSON spelling (compact ones are spliced), other
    events among them, grouped into reads of whole events or cut anywhere."""
    events = [START]
    for _ in range(draw(st.integers(1, 14))):
        if draw(st.integers(0, 5)) == 0:
            events.append(draw(OTHER_EVENTS))
        else:
            style = draw(st.sampled_from([0, 0, 0, 1, 2, 3, 4]))
            events.append(_event("content_block_delta", _delta_json(
                draw(TEXTS), draw(st.integers(0, 12)), style)))
    events.append(END)
    if draw(st.booleans()):  # deltas after the end are not the client's
        events.append(_event("content_block_delta", _delta_json("late", 0, 0)))
    return as_reads(draw, events, joined=2, ways=5)


def _translate(reads: list[bytes], encoder: ChunkEncoder) -> list[bytes]:
    return translate_reads(_anthropic, reads, encoder)


def _anthropic(encoder: ChunkEncoder) -> AnthropicStreamTranslator:
    return AnthropicStreamTranslator(encoder, 1 << 20)


@settings(max_examples=400, deadline=None)
@given(anthropic_reads())
def test_spliced_text_deltas_write_what_the_decoder_path_writes(reads: list[bytes]) -> None:
    assert_splice_matches_decoding(_anthropic, reads)


def test_a_captured_translated_stream_spells_no_pass_through_id(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # TeeSink's id rewrite is for pass-through chunks: setting up store's or a cache fill's
    # capture of a translated stream encodes nothing for it.
    body = START + _event("content_block_delta", _delta_json("Hi", 0, 0)) + END
    dumped: list[Any] = []
    real = orjson.dumps
    monkeypatch.setattr(orjson, "dumps", lambda *a, **kw: dumped.append(a) or real(*a, **kw))
    encoder, builder = make_encoder(RecordingChunkEncoder), CompletionBuilder()
    translator = _anthropic(TeeSink(encoder, builder))  # type: ignore[arg-type]
    translator.feed(body)
    translator.close()
    assert dumped == [] and encoder.take().endswith(b"data: [DONE]\n\n")
    assert builder.completion(completion_id="c", created=1, model="m")["choices"][0][
        "message"]["content"] == "Hi"


def test_runs_of_compact_text_deltas_are_spliced(monkeypatch: pytest.MonkeyPatch) -> None:
    spliced = count_spliced_reads(monkeypatch)
    deltas = b"".join(_event("content_block_delta", _delta_json(t, 0, s))
                      for t, s in [("Hel", 0), ("lo\n", 1), ('"é"', 0)])
    out = _translate([START, deltas, deltas[:50], deltas[50:], END], make_encoder())
    # The cut read goes to the decoder; the one after it finishes its event in the decoder,
    # then splices the two whole events it holds.
    assert spliced == [3, 2]
    assert b"".join(out).count(b'{"content":') == 6
    ping = _event("ping", b'{"type":"ping"}')
    whole = START + deltas + ping + deltas + END  # a stream that came in one read
    spliced.clear()
    out = _translate([whole], make_encoder())
    assert spliced == [3, 3]
    assert out == _translate([whole], make_encoder(DecodingEncoder))


class _Reader:
    """Records what feed_runs hands it; refuses the run that starts at `refuse_at`."""

    max_event_bytes = 1 << 20

    def __init__(self, refuse_at: int) -> None:
        self.refuse_at = refuse_at
        self.calls: list[tuple[str, bytes]] = []

    def decode_read(self, data: bytes) -> None:
        self.calls.append(("decode", data))

    def splice_run(self, data: bytes, start: int, end: int, literals: list[bytes]) -> bool:
        if start == self.refuse_at:
            return False
        self.calls.append(("splice", data[start:end]))
        self.calls.append(("literals", b",".join(literals)))
        return True


def _feed_runs_calls(data: bytes, refuse_at: int = -1) -> list[tuple[str, bytes]]:
    reader = _Reader(refuse_at)
    feed_runs(reader, data, re.compile(rb"a=(\d)\n"))
    return reader.calls


def test_feed_runs_hands_on_runs_and_what_lies_between_them_in_order() -> None:
    assert _feed_runs_calls(b"x\na=1\na=2\ny\na=3\n") == [
        ("decode", b"x\n"), ("splice", b"a=1\na=2\n"), ("literals", b"1,2"), ("decode", b"y\n"),
        ("splice", b"a=3\n"), ("literals", b"3")]
    assert _feed_runs_calls(b"a=1\n") == [("splice", b"a=1\n"), ("literals", b"1")]
    assert _feed_runs_calls(b"y\n") == [("decode", b"y\n")]
    # A refused run is decoded with everything after it, runs included.
    assert _feed_runs_calls(b"a=1\ny\na=2\n", refuse_at=0) == [("decode", b"a=1\ny\na=2\n")]
    assert _feed_runs_calls(b"a=1\ny\na=2\nz\na=3\n", refuse_at=6) == [
        ("splice", b"a=1\n"), ("literals", b"1"), ("decode", b"y\n"),
        ("decode", b"a=2\nz\na=3\n")]
    # Not UTF-8: all of it to the decoder, which reports it.
    assert _feed_runs_calls(b"a=1\n\xff\na=2\n") == [("decode", b"a=1\n\xff\na=2\n")]
    assert _feed_runs_calls("a=1\né\n".encode()) == [("splice", b"a=1\n"), ("literals", b"1"),
                                                      ("decode", "é\n".encode())]


@pytest.mark.parametrize("read", [
    _event("content_block_delta", _delta_json("a\u00e9", 0, 2)),  # \u escape
    _event("content_block_delta", _delta_json("a/b", 0, 3)),  # \/ escape
    _event("content_block_delta", _delta_json("x", 0, 4)),  # not compact
    _event("content_block_delta", _delta_json("x", 0, 0)).replace(b"\n", b"\r\n"),
    _event("content_block_delta", _delta_json("x", 0, 0))[:-1],  # unfinished
    b"id: 1\n" + _event("content_block_delta", _delta_json("x", 0, 0)),  # not at an event's start
    b"data: 1\n" + _event("content_block_delta", _delta_json("x", 0, 0)),
    _event("content_block_delta", b'{"type":"content_block_delta","index":0,"delta":{"type":'
                                  b'"text_delta","text":"a","x":"b"}}'),  # another key
    _event("content_block_delta", b'{"type":"content_block_delta","index":0,"delta":{"type":'
                                  b'"text_delta","text":"a\tb"}}'),  # a raw control char
    _event("content_block_delta", b'{"type":"content_block_delta","index":01,"delta":{"type":'
                                  b'"text_delta","text":"a"}}'),  # no JSON number
    _event("content_block_delta", b'{"type":"content_block_delta","index":0,"delta":{"type":'
                                  b'"text_delta","text":"a\xff"}}'),  # not UTF-8
])
def test_anything_but_compact_text_deltas_at_an_event_start_goes_to_the_decoder(
        monkeypatch: pytest.MonkeyPatch, read: bytes) -> None:
    spliced = count_spliced_reads(monkeypatch)
    translator = AnthropicStreamTranslator(make_encoder(), 1 << 20)
    translator.feed(START)
    with contextlib.suppress(StreamDecodeError):  # the malformed ones fail in the decoder
        translator.feed(read)
    assert spliced == []


def test_invalid_utf8_fails_the_same_way_on_either_path() -> None:
    bad = _event("content_block_delta", b'{"type":"content_block_delta","index":0,"delta":'
                                        b'{"type":"text_delta","text":"a\xff"}}')
    for encoder in (make_encoder(), make_encoder(DecodingEncoder)):
        with pytest.raises(StreamDecodeError):
            _translate([START, bad, END], encoder)


def test_a_read_after_an_unfinished_event_is_not_spliced() -> None:
    # The decoder holds `data: …` of an event still open: the next read continues that event
    # (its data lines join), however whole its own events look.
    delta = _event("content_block_delta", _delta_json("x", 0, 0))
    for encoder in (make_encoder(), make_encoder(DecodingEncoder)):
        translator = AnthropicStreamTranslator(encoder, 1 << 20)
        translator.feed(START)
        translator.feed(b'data: {"type":\n')
        with pytest.raises(StreamDecodeError):
            translator.feed(delta)


@pytest.mark.parametrize("provider", ["anthropic", "gemini", "bedrock", "openai"])
def test_a_splicing_translator_is_freed_when_its_stream_is(provider: str) -> None:
    # Freed by reference counting, as the decoding ones are: no cycle through a stored bound
    # method of its own, which would leave each stream's parts to the cyclic GC.
    from streamproxy.providers.bedrock.stream import BedrockStreamTranslator
    from streamproxy.providers.gemini.stream import GeminiStreamTranslator

    cls = {"anthropic": AnthropicStreamTranslator, "gemini": GeminiStreamTranslator,
           "bedrock": BedrockStreamTranslator,
           "openai": lambda out, limit: PassthroughTranslator(out, limit, provider="p",
                                                              client_wants_usage=True),
           }[provider]
    gc.disable()
    try:
        translator = cls(make_encoder(), 1 << 20)
        translator.feed(START if provider == "anthropic" else b"")
        freed = weakref.ref(translator)
        del translator
        assert freed() is None
    finally:
        gc.enable()


# -- OpenAI pass-through: runs of events forwarded whole ------------------------------------------

def _chunk(text: str, style: int, **fields: object) -> bytes:
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
             **fields}
    data = orjson.dumps(chunk)
    if style == 1:  # spaces after the separators (Python's json)
        data = json.dumps(chunk, ensure_ascii=False).encode()
    return b"data: " + data + b"\n\n"


PASSTHROUGH_OTHER = st.sampled_from([
    b'data: {"id":"c1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n',
    b'data: {"id":"c1","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,'
    b'"total_tokens":3}}\n\n',
    b'data: {"id":"c1","choices":null,"usage":{"prompt_tokens":1,"completion_tokens":2,'
    b'"total_tokens":3}}\n\n',
    b'data: {"error":{"message":"overloaded","code":529}}\n\n',
    b'data: {"id":"c1","choices":[{"index":0,"delta":{"content":[{"type":"text","text":"l"}]},'
    b'"finish_reason":null}]}\n\n',  # Mistral's list content
    b"data: [DONE]\n\n",
    b": keep-alive\n\n",
    b"\n",  # a stray blank line
    b"event: x\ndata: {}\n\n",
    b"id: 3\ndata: {}\n\n",
    b'data:{"a":1}\n\n',  # no space after the colon
    b'data: {"a":1}\r\n\r\n',
    b'data: {"a":\ndata: 1}\n\n',  # data over two lines
    b'data: {"a":\ndata: {"b":1}}\n\n',  # …whose second looks like an event of its own
    b'data: {"a":1} \n\n',  # padded after the brace: parsed, forwarded as it came
    b'data: {"a":"x\ry"}\n\n',  # a CR ends the line: `{"a":"x` is not JSON
    b'data: {"a":1}\r\n\n',
    # JSON a client would choke on, forwarded unparsed: capturing it must not fail the stream
    b'data: {"choices":[1,{"index":0,"delta":"x"},{"index":0,"delta":{"content":7}}]}\n\n',
    b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":1000000000,"id":"t",'
    b'"function":{"name":"f"}},{"index":0,"function":{"arguments":1}},7]}}]}\n\n',
    b"data: {not json}\n\n",
    b"data: nothing\n\n",
])


@st.composite
def passthrough_reads(draw: st.DrawFn) -> list[bytes]:
    """An OpenAI stream: mostly content chunks (spliced texts of every kind, compact or with
    spaces), among them the events the translator parses and shapes that are not a run's,
    grouped into reads of whole events or cut anywhere."""
    events = [_chunk("", 0)] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 14))):
        if draw(st.integers(0, 4)) == 0:
            events.append(draw(PASSTHROUGH_OTHER))
        else:
            events.append(_chunk(draw(TEXTS), draw(st.sampled_from([0, 0, 1]))))
    if draw(st.booleans()):
        events.append(b"data: [DONE]\n\n")
    if events and draw(st.booleans()):
        events[0] = b"\xef\xbb\xbf" + events[0]
    return as_reads(draw, events, joined=3, ways=6)


def _outcome(factory: Callable[[Any], Any], reads: list[bytes],
             sink: Any, encoder: ChunkEncoder) -> tuple[list[bytes], str | None]:
    """What the client gets read by read, and how the stream failed, if it did."""
    translator = factory(sink)
    out = []
    try:
        for read in reads:
            translator.feed(read)
            out.append(encoder.take())
        translator.close()
    except Exception as e:  # either path must fail alike
        return [*out, encoder.take()], f"{type(e).__name__}: {e}"
    return [*out, encoder.take()], None


class DecodingTee(TeeSink):
    """A tee translators cannot forward runs to."""

    raw_run = None  # type: ignore[assignment]


PASSTHROUGH_TRANSLATORS = {
    "openai": lambda out: PassthroughTranslator(out, 1 << 20, provider="p",
                                                client_wants_usage=True),
    "groq": lambda out: CompatTranslator(out, 1 << 20, provider="p", client_wants_usage=True,
                                         finish_reasons={"eos": "stop"}, failed_finishes={}),
    "mistral": lambda out: MistralTranslator(out, 1 << 20, provider="p",
                                             client_wants_usage=True, finish_reasons={},
                                             failed_finishes={}),
}


@pytest.mark.parametrize("provider", PASSTHROUGH_TRANSLATORS)
@settings(max_examples=300, deadline=None)
@given(reads=passthrough_reads())
@example(reads=[_chunk("", 0), b'data: {"a":\n', b'data: {"b":1}}\n\n' + _chunk("x", 0)])
def test_passthrough_runs_forward_what_the_decoder_path_forwards(provider: str,
                                                                 reads: list[bytes]) -> None:
    factory = PASSTHROUGH_TRANSLATORS[provider]
    runs, decoded = make_encoder(), make_encoder(DecodingEncoder)
    outcome = _outcome(factory, reads, runs, runs)
    assert outcome == _outcome(factory, reads, decoded, decoded)
    assert (runs.chunks, runs.finish_reason, runs.usage_data) == (
        decoded.chunks, decoded.finish_reason, decoded.usage_data)
    # store and the cache capture the same answer, and capturing never fails a stream (nor
    # changes what the client gets, but for the completion id: the proxy's, not the upstream's)
    teed = [(tee, make_encoder(RecordingChunkEncoder), CompletionBuilder())
            for tee in (TeeSink, DecodingTee)]
    outcomes = [_outcome(factory, reads, tee(enc, builder), enc)  # type: ignore[arg-type]
                for tee, enc, builder in teed]
    assert outcomes[0] == outcomes[1]
    assert _any_id(_without_added_ids(outcomes[0], outcome)) == _any_id(outcome)
    assert teed[0][2].completion(completion_id="x", created=1, model="m") == \
        teed[1][2].completion(completion_id="x", created=1, model="m")


def _without_added_ids(captured: tuple[list[bytes], str | None],
                       plain: tuple[list[bytes], str | None]) -> tuple[list[bytes], str | None]:
    """`captured` without the id a capture puts first in events that had none (TeeSink), where
    the same event in `plain` (not captured) is a JSON object with no `id`."""
    added = re.compile(rb'^data: \{"id":"chatcmpl-1"(,|(?=\s*\}))')
    reads = []
    for ours, theirs in zip(captured[0], plain[0], strict=False):
        frames = ours.split(b"\n\n")
        for i, (frame, upstream) in enumerate(zip(frames, theirs.split(b"\n\n"), strict=False)):
            try:
                event = orjson.loads(upstream[6:]) if upstream.startswith(b"data: {") else None
            except orjson.JSONDecodeError:
                event = None
            if isinstance(event, dict) and "id" not in event:
                frames[i] = added.sub(b"data: {", frame)
        reads.append(b"\n\n".join(frames))
    return reads + captured[0][len(reads):], captured[1]


def _any_id(outcome: tuple[list[bytes], str | None]) -> tuple[list[bytes], str | None]:
    reads, failure = outcome
    return [re.sub(rb'"id": ?"(?:[^"\\]|\\.)*"', b'"id":"X"', r) for r in reads], failure


def test_a_whole_openai_body_is_forwarded_as_one_run(monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[int] = []
    raw_run = ChunkEncoder.raw_run

    def counting(self: ChunkEncoder, frames: bytes, count: int) -> None:
        runs.append(count)
        raw_run(self, frames, count)

    monkeypatch.setattr(ChunkEncoder, "raw_run", counting)
    deltas = [_chunk(f"t{i}", 0) for i in range(20)]
    finish = b'data: {"id":"c1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    # (the usage chunk the client asked for: without one, it gets ours of zeros)
    finish += (b'data: {"id":"c1","choices":[],"usage":{"prompt_tokens":1,'
               b'"completion_tokens":20,"total_tokens":21}}\n\n')
    body = _chunk("", 0) + b"".join(deltas) + finish + b"data: [DONE]\n\n"
    factory = PASSTHROUGH_TRANSLATORS["openai"]

    def encoder() -> ChunkEncoder:  # as the executor builds a pass-through's: no usage chunk
        return ChunkEncoder(completion_id="c1", created=1, model="m", include_usage=False)

    out = translate_reads(factory, [body], encoder())
    assert runs == [20]  # the first event checks for a BOM in the decoder, the finish is parsed
    assert out == [body]
    runs.clear()  # flushed, a read an event: each delta is a run of one
    flushed = [_chunk("", 0), *deltas, finish, b"data: [DONE]\n\n"]
    assert translate_reads(factory, flushed, encoder()) == flushed
    assert runs == [1] * 20
    runs.clear()  # the Azure translator looks at every event itself
    translate_reads(lambda out: AzureTranslator(out, 1 << 20, provider="p",
                                                client_wants_usage=True), [body], make_encoder())
    assert runs == []
