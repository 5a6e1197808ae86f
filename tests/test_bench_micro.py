"""Micro-benchmarks of the hot path's pure parts (pytest-benchmark): the SSE decoder, the
translators with the chunk encoder, as the relay drives them (one `feed` + `take` per read).

`make test` runs each once (`--benchmark-disable`) as a plain correctness test: every
benchmark checks what it produced. `make bench-micro` times them. No timing is asserted:
figures depend on the machine; compare them run to run (`--benchmark-compare`).

Bodies: 200 text deltas each, the mock's Anthropic and OpenAI bodies and the bench
upstream's Gemini (CRLF SSE) and Bedrock (event-stream) bodies. "bulk" feeds 16 KiB reads (an
unpaced upstream on loopback), "paced" one upstream event per read (a model streaming at speed).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bench.upstreams import bedrock_body, gemini_body
from streamproxy.decode.sse import SSEDecoder
from streamproxy.openai_api.chunks import ChunkEncoder
from streamproxy.providers.anthropic.stream import AnthropicStreamTranslator
from streamproxy.providers.base import StreamTranslator
from streamproxy.providers.bedrock.stream import BedrockStreamTranslator
from streamproxy.providers.gemini.stream import GeminiStreamTranslator
from streamproxy.providers.mock.server import (
    ANTHROPIC,
    OPENAI,
    MockOptions,
    mock_text,
    unpaced_body,
)
from streamproxy.providers.openai_compat import PassthroughTranslator
from tests.eventstream_frames import split_frames
from tests.helpers import collect, relay_reads, sse_chunks

pytestmark = pytest.mark.benchmark

DELTAS = 200
MAX_EVENT = 16 * 1024 * 1024
READ = 16 * 1024
ANTHROPIC_BODY = unpaced_body(ANTHROPIC, MockOptions(tokens=DELTAS), "m", 10, False)
OPENAI_BODY = unpaced_body(OPENAI, MockOptions(tokens=DELTAS), "m", 10, True)
GEMINI_BODY = gemini_body(DELTAS)
BEDROCK_BODY = bedrock_body(DELTAS)

Factory = Callable[[ChunkEncoder], StreamTranslator]
FACTORIES: dict[str, tuple[Factory, bytes, Callable[[bytes], list[bytes]]]] = {
    "anthropic": (lambda enc: AnthropicStreamTranslator(enc, MAX_EVENT), ANTHROPIC_BODY,
                  lambda body: [e + b"\n\n" for e in body.split(b"\n\n")[:-1]]),
    "openai": (lambda enc: PassthroughTranslator(enc, MAX_EVENT, provider="p",
                                                 client_wants_usage=False), OPENAI_BODY,
               lambda body: [e + b"\n\n" for e in body.split(b"\n\n")[:-1]]),
    "gemini": (lambda enc: GeminiStreamTranslator(enc, MAX_EVENT), GEMINI_BODY,
               lambda body: [e + b"\r\n\r\n" for e in body.split(b"\r\n\r\n")[:-1]]),
    "bedrock": (lambda enc: BedrockStreamTranslator(enc, MAX_EVENT), BEDROCK_BODY,
                split_frames),
}


def bulk(body: bytes) -> list[bytes]:
    return [body[i : i + READ] for i in range(0, len(body), READ)]


def relay_once(factory: Factory, reads: list[bytes]) -> bytes:
    enc = ChunkEncoder(completion_id="chatcmpl-bench", created=1, model="m",
                       include_usage=False)
    return relay_reads(enc, factory(enc), reads)


@pytest.mark.parametrize("reads", ["bulk", "paced"])
@pytest.mark.parametrize("kind", list(FACTORIES))
def test_pipeline(benchmark: BenchmarkFixture, kind: str, reads: str) -> None:
    factory, body, events = FACTORIES[kind]
    pieces = bulk(body) if reads == "bulk" else events(body)
    out = benchmark(relay_once, factory, pieces)
    c = collect(sse_chunks(out))
    assert c.done and c.error is None and c.finish_reason == "stop"
    if kind in ("anthropic", "openai"):
        assert c.content == mock_text(DELTAS)
    else:  # the bench upstream's own words
        assert len(c.content) > DELTAS and c.content.startswith("Hello from the bench")


@pytest.mark.parametrize("reads", ["bulk", "paced"])
def test_sse_decoder(benchmark: BenchmarkFixture, reads: str) -> None:
    pieces = bulk(ANTHROPIC_BODY) if reads == "bulk" else FACTORIES["anthropic"][2](
        ANTHROPIC_BODY)

    def decode() -> int:
        dec = SSEDecoder(MAX_EVENT)
        n = 0
        for piece in pieces:
            n += len(dec.feed(piece))
        return n + len(dec.close())

    assert benchmark(decode) == DELTAS + 5


def test_chunk_encoder_content(benchmark: BenchmarkFixture) -> None:
    def encode() -> bytes:
        enc = ChunkEncoder(completion_id="chatcmpl-bench", created=1, model="m",
                           include_usage=False)
        enc.start()
        for _ in range(DELTAS):
            enc.content(" token")
        enc.finish("stop")
        enc.end()
        return enc.take()

    c = collect(sse_chunks(benchmark(encode)))
    assert c.content == " token" * DELTAS and c.done
