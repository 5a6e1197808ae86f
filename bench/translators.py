"""Translator CPU per upstream event, at the pure level: decoder + translator + ChunkEncoder, no
sockets, as the relay drives them (`feed(read)` then `take()` per read, `close()` at EOF).

Each provider gets a realistic 200-delta text stream, the same words as the mock upstream's:
- anthropic: the mock's own body (`unpaced_body`, 205 SSE events: message_start,
  content_block_start, 200 text deltas, content_block_stop, message_delta, message_stop);
- gemini: 200 `alt=sse` chunks, CRLF framing, shaped like real Gemini output (one text part,
  `usageMetadata`, `modelVersion`, `responseId` on every chunk; Google's `": "` separators),
  the last one with `finishReason: STOP`;
- bedrock: 204 ConverseStream frames (messageStart, 200 text contentBlockDeltas, contentBlockStop,
  messageStop, metadata), each payload with the `"p"` padding key real Bedrock adds.

Two read patterns: `paced` (one upstream event per read, as a stream at model speed arrives) and
`bulk` (16 KiB reads, as an unpaced loopback upstream arrives). The figure is CPU time
(`time.process_time`) per upstream event, the minimum over several repeats; the cases are
interleaved within each repeat so that load from other processes hits them alike. Each output is
checked once before timing, so a broken translator cannot post a fast figure.

Usage: python -m bench.translators [--quick]   (about 15 s; --quick about 5 s)
       python -m bench.translators --calibrate (about 1 s: Anthropic, bulk reads, one number;
       `make bench` runs it on the proxy's core to say how fast this VM is at that moment)
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from bench import upstreams
from streamproxy.openai_api.chunks import ChunkEncoder
from streamproxy.providers.anthropic.stream import AnthropicStreamTranslator
from streamproxy.providers.base import StreamTranslator
from streamproxy.providers.bedrock.stream import BedrockStreamTranslator
from streamproxy.providers.gemini.stream import GeminiStreamTranslator
from streamproxy.providers.mock.server import ANTHROPIC, MockOptions, token, unpaced_body
from tests.eventstream_frames import event, split_frames

DELTAS = 200
BULK_READ = 16 * 1024
MAX_EVENT = 16 * 1024 * 1024
TEXT = "".join(token(i) for i in range(DELTAS))


def anthropic_body(deltas: int = DELTAS) -> bytes:
    return unpaced_body(ANTHROPIC, MockOptions(tokens=deltas), "m", 10, True)


def gemini_body(deltas: int = DELTAS) -> bytes:
    return upstreams.gemini_body(deltas, tuple(token(i) for i in range(deltas)))


def bedrock_body(deltas: int = DELTAS) -> bytes:
    pad = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

    def p(i: int) -> str:  # Bedrock's padding: a prefix of this alphabet, of varying length
        return pad[: 5 + (i * 7) % 50]

    frames = [event("messageStart", {"p": p(0), "role": "assistant"})]
    frames += [event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": token(i)},
                                           "p": p(i)}) for i in range(deltas)]
    frames += [
        event("contentBlockStop", {"contentBlockIndex": 0, "p": p(1)}),
        event("messageStop", {"p": p(2), "stopReason": "end_turn"}),
        event("metadata", {"metrics": {"latencyMs": 433}, "p": p(3), "usage": {
            "inputTokens": 10, "outputTokens": deltas, "totalTokens": 10 + deltas}}),
    ]
    return b"".join(frames)


def sse_events(body: bytes, sep: bytes) -> list[bytes]:
    pieces = body.split(sep)
    assert not pieces[-1]
    return [piece + sep for piece in pieces[:-1]]


def bulk_reads(body: bytes) -> list[bytes]:
    return [body[i : i + BULK_READ] for i in range(0, len(body), BULK_READ)]


Factory = Callable[[ChunkEncoder], StreamTranslator]


@dataclass
class Case:
    name: str
    factory: Factory
    events: list[bytes]  # one upstream event each (the paced reads)
    body: bytes


def cases() -> list[Case]:
    anthropic, gemini, bedrock = anthropic_body(), gemini_body(), bedrock_body()
    return [
        Case("anthropic", lambda enc: AnthropicStreamTranslator(enc, MAX_EVENT),
             sse_events(anthropic, b"\n\n"), anthropic),
        Case("gemini", lambda enc: GeminiStreamTranslator(enc, MAX_EVENT),
             sse_events(gemini, b"\r\n\r\n"), gemini),
        Case("bedrock", lambda enc: BedrockStreamTranslator(enc, MAX_EVENT),
             split_frames(bedrock), bedrock),
    ]


def run_stream(factory: Factory, reads: list[bytes], keep: list[bytes] | None = None) -> None:
    """One stream as the relay runs it (the bytes for the client go to `keep`, if given)."""
    enc = ChunkEncoder(completion_id="chatcmpl-bench", created=1, model="m", include_usage=True)
    tr = factory(enc)
    for read in reads:
        tr.feed(read)
        taken = enc.take()
        if keep is not None:
            keep.append(taken)
    tr.close()
    taken = enc.take()
    if keep is not None:
        keep.append(taken)


def check(case: Case, reads: list[bytes]) -> None:
    out: list[bytes] = []
    run_stream(case.factory, reads, out)
    frames = b"".join(out).split(b"\n\n")
    assert frames[-2:] == [b"data: [DONE]", b""], f"{case.name}: no [DONE] at the end"
    chunks = [orjson.loads(f.removeprefix(b"data: ")) for f in frames[:-2]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1]
    assert text == TEXT, f"{case.name}: wrong content"
    assert finish == "stop", f"{case.name}: finish {finish!r}"
    assert chunks[-1]["usage"]["completion_tokens"] == DELTAS, f"{case.name}: wrong usage"


def batch(factory: Factory, reads: list[bytes], streams: int) -> float:
    gc.collect()
    t0 = time.process_time()
    for _ in range(streams):
        run_stream(factory, reads)
    return time.process_time() - t0


def measure(all_cases: list[Case], mode: str, budget: float, max_repeats: int) -> dict[str, float]:
    """µs of CPU per upstream event for each case: the best of up to `max_repeats` batches
    (each about 0.1 s), interleaved, within `budget` seconds for the whole mode."""
    runs = []
    for case in all_cases:
        reads = case.events if mode == "paced" else bulk_reads(case.body)
        check(case, reads)
        batch(case.factory, reads, 3)  # warm-up
        per_stream = max(batch(case.factory, reads, 20) / 20, 1e-6)
        runs.append((case, reads, max(1, round(0.1 / per_stream))))
    best = {case.name: float("inf") for case in all_cases}
    stop_at = time.monotonic() + budget
    for _ in range(max_repeats):
        for case, reads, streams in runs:
            cpu = batch(case.factory, reads, streams)
            best[case.name] = min(best[case.name], cpu / streams / len(case.events) * 1e6)
        if time.monotonic() > stop_at:
            break
    return best


def _decoded(translator: AnthropicStreamTranslator) -> AnthropicStreamTranslator:
    translator._literals = None  # every event through the decoder: no splice
    return translator


def calibration() -> float:
    """Anthropic's pure translation through its decoder (the splice off), bulk reads, µs per
    event: a yardstick for the VM's speed at the moment (its hours differ by up to ~60 %),
    against which a proxy figure is read. The decoder's path is the yardstick since the first
    recorded runs, so the figure stays comparable across sessions whatever the splice does."""
    anthropic = next(c for c in cases() if c.name == "anthropic")
    decoded = Case("anthropic-decoded", lambda enc: _decoded(anthropic.factory(enc)),  # type: ignore[arg-type]
                   anthropic.events, anthropic.body)
    return measure([decoded], "bulk", 0.8, 8)["anthropic-decoded"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.translators",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (about 5 s)")
    parser.add_argument("--calibrate", action="store_true",
                        help="print only Anthropic's bulk µs per event (about 1 s)")
    args = parser.parse_args(argv)
    if args.calibrate:
        print(f"{calibration():.3f}")
        return
    budget, repeats = (1.5, 5) if args.quick else (6.0, 15)
    all_cases = cases()
    print(f"translator CPU per upstream event (µs, best of up to {repeats} repeats; "
          f"{DELTAS} text deltas per stream)")
    print(f"{'':10} {'events':>6} {'paced':>8} {'ratio':>6} {'bulk':>8} {'ratio':>6}")
    results = {mode: measure(all_cases, mode, budget, repeats) for mode in ("paced", "bulk")}
    base = {mode: results[mode]["anthropic"] for mode in results}
    for case in all_cases:
        row = f"{case.name:10} {len(case.events):6}"
        for mode in ("paced", "bulk"):
            value = results[mode][case.name]
            row += f" {value:8.2f} {value / base[mode]:5.2f}x"
        print(row)


if __name__ == "__main__":
    main()
