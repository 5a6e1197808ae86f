"""Test helpers: read the proxy's output the way an OpenAI client does, and fake upstreams."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import orjson
from aiohttp import web
from hypothesis import strategies as st

from streamproxy.config import Config, parse_config
from streamproxy.decode.sse import SSEDecoder
from streamproxy.errors import ProxyError
from streamproxy.observe.metrics import metrics
from streamproxy.openai_api.chunks import ChunkEncoder, RecordingChunkEncoder
from streamproxy.providers.base import StreamTranslator

FIXTURES = Path(__file__).parent / "fixtures"


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


# Real model ids that select the translators' model-specific paths, for the fuzzes that send
# one example to every provider type (test_fuzz.py, test_faults.py): with one generic name
# these paths were never fuzzed. By the classifiers that pick them:
TRANSLATOR_MODELS = (
    "m",  # none of them
    # Claude: on a vertex provider, Vertex's Claude view (VertexProvider.for_model); a
    # budget, adaptive-only (no sampling), and no-thinking Claude (anthropic/thinking.py)
    "claude-sonnet-4-5@20250929", "claude-opus-4-7", "claude-3-5-haiku-20241022",
    # Bedrock: a Claude with native schemas, one without, Nova 2, gpt-oss, no system prompt
    "us.anthropic.claude-sonnet-4-5-20250929-v1:0", "anthropic.claude-3-haiku-20240307-v1:0",
    "amazon.nova-2-lite-v1:0", "openai.gpt-oss-120b-1:0", "mistral.mistral-7b-instruct-v0:2",
    # Gemini: a budget (2.5 Pro's least), no thinking but penalties, levels (low/high only,
    # minimal), Gemma 3 (no system role), Gemma 4 (two levels), xhigh
    "gemini-2.5-pro", "gemini-2.0-flash", "gemini-3-pro-preview", "gemini-3-flash-preview",
    "gemma-3-27b-it", "gemma-4-31b-it", "gemini-4-hydrogen",
    # the OpenAI-compatible presets' reasoning models (Groq, DeepSeek, Kimi, xAI)
    "qwen/qwen3-32b", "deepseek-reasoner", "kimi-k2-thinking", "grok-4",
)


def jsonl_to_sse(data: bytes, *, event_names: bool = True, crlf: bool = False) -> bytes:
    """Payload-only JSON lines (vercel/ai recordings) → SSE as the provider sends it."""
    out = []
    for line in data.splitlines():
        if not line.strip():
            continue
        event = orjson.loads(line).get("type") if event_names else None
        frame = (b"event: " + event.encode() + b"\n" if event else b"") + b"data: " + line + b"\n\n"
        out.append(frame)
    body = b"".join(out)
    return body.replace(b"\n", b"\r\n") if crlf else body


def random_splits(data: bytes, rng: random.Random, max_piece: int = 64) -> list[bytes]:
    pieces, i = [], 0
    while i < len(data):
        n = rng.randint(1, max_piece)
        pieces.append(data[i : i + n])
        i += n
    return pieces


# Header lines as a client or an upstream may send them, to check a fast path of head parsing
# against its line-by-line rules: usual ones (framing headers among them, repeated, in any case,
# with odd values), and odd ones (bytes that are not ASCII or not UTF-8, control bytes, CR or LF
# alone, obs-fold, an empty value, whitespace around a value, no colon, a name not a token).
_NAMES = st.sampled_from([b"Host", b"Content-Length", b"content-length", b"CONTENT-LENGTH",
                          b"Connection", b"connection", b"Transfer-Encoding", b"Expect",
                          b"UPGRADE", b"Content-Encoding", b"X-Trace", b"a", b"!#$%&'*+-.^_`|~"])
_VALUES = st.sampled_from([b"123", b"0", b"5", b"12a", b"0x10", b"+5", b"close", b"Close",
                           b"keep-alive", b"Upgrade, close", b"chunked", b"gzip",
                           b"identity, chunked", b"a b\tc", b"a:b", b"Bearer sk-xyz", b"~"])
_USUAL_LINES = st.tuples(_NAMES, st.sampled_from([b":", b": ", b":\t", b":  "]),
                         _VALUES).map(b"".join)
_ODD_LINES = st.one_of(
    st.tuples(_NAMES | st.sampled_from([b"", b" Host", b"Bad Name", b"X-\xc3\xa9", b"X\x00"]),
              st.sampled_from([b":", b": ", b" :"]),
              st.sampled_from([b"", b" ", b"\t", b" 123 ", b"\xd9\xa3", b"\t x \t", b"a  ",
                               b"caf\xc3\xa9", b"\xff", b"a\x00b", b"a\rb", b"a\nb", b"\x01",
                               b"x\x7f", b"x\x0b"]) | st.binary(max_size=8)).map(b"".join),
    st.builds(lambda name, value: (name + ": " + value).encode(),
              st.text("!#$%&'*+-.^_`|~09AZaz", min_size=1, max_size=6), st.text(max_size=8)),
    st.binary(max_size=12),  # anything, a line with no colon among it
    st.sampled_from([b" folded", b"\tfolded: x", b"X-A: b\r", b"\n"]),
)


def header_lines(max_size: int = 8) -> st.SearchStrategy[bytes]:
    """The header part of a head: CRLF and a header line, any number of times; usual lines, with
    an odd one among them or not."""
    usual = st.lists(_USUAL_LINES, max_size=max_size // 2)
    odd = st.lists(_ODD_LINES, max_size=1)
    return st.tuples(usual, odd, usual).map(
        lambda parts: b"".join(b"\r\n" + line for lines in parts for line in lines))


def relay_reads(encoder: Any, translator: Any, reads: list[bytes]) -> bytes:
    """What the relay sends for these upstream reads: feed and take per read, and the close
    at EOF when the stream's end did not come."""
    out = []
    for read in reads:
        translator.feed(read)
        out.append(encoder.take())
    if not translator.done:
        translator.close()
    out.append(encoder.take())
    return b"".join(out)


def relay_pieces(encoder: ChunkEncoder, translator: Any, pieces: list[bytes]) -> bytes:
    """What the relay sends for these reads: feed and take per read, then close; a typed error
    from feed() or close() ends the stream in an error frame, as the relay does."""
    out = b""
    try:
        for piece in pieces:
            translator.feed(piece)
            out += encoder.take()
        translator.close()
    except ProxyError as e:
        encoder.error(e)
    return out + encoder.take()


def sse_chunks(body: bytes) -> list[Any]:
    """The proxy's SSE output → parsed JSON chunks, with "[DONE]" kept as the string."""
    dec = SSEDecoder()
    events = dec.feed(body) + dec.close()
    out: list[Any] = []
    for ev in events:
        out.append("[DONE]" if ev.data == b"[DONE]" else orjson.loads(ev.data))
    return out


@dataclass
class Collected:
    content: str = ""
    reasoning: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    done: bool = False
    ids: set[str] = field(default_factory=set)
    created: set[int] = field(default_factory=set)
    roles: int = 0
    thinking_blocks: list[dict[str, Any]] = field(default_factory=list)
    chunks: int = 0

    def args(self, i: int) -> Any:
        return orjson.loads(self.tool_calls[i]["arguments"])


def collect(chunks: list[Any]) -> Collected:
    """Accumulate chunks as a strict OpenAI client would, checking the invariants on the way."""
    c = Collected()
    for chunk in chunks:
        assert not c.done, "nothing may follow [DONE]"
        assert c.error is None, "nothing may follow an error frame"
        if chunk == "[DONE]":
            c.done = True
            continue
        if "error" in chunk:
            c.error = chunk["error"]
            continue
        c.chunks += 1
        assert chunk["object"] == "chat.completion.chunk"
        c.ids.add(chunk["id"])
        c.created.add(chunk["created"])
        if not chunk["choices"]:
            assert chunk.get("usage"), "an empty-choices chunk must be the usage chunk"
            c.usage = chunk["usage"]
            continue
        choice = chunk["choices"][0]
        assert choice["index"] == 0
        delta = choice.get("delta") or {}
        if delta.get("role"):
            c.roles += 1
        c.content += delta.get("content") or ""
        c.reasoning += delta.get("reasoning_content") or ""
        for block in delta.get("thinking_blocks") or []:
            block = dict(block)
            assert block.pop("index") == len(c.thinking_blocks), "thinking blocks numbered"
            c.thinking_blocks.append(block)
        for tc in delta.get("tool_calls") or []:
            i = tc["index"]
            if i == len(c.tool_calls):
                assert tc.get("id") and tc["function"].get("name"), "first fragment has id+name"
                c.tool_calls.append({"id": tc["id"], "name": tc["function"]["name"],
                                     "arguments": tc["function"].get("arguments") or ""})
            else:
                assert i < len(c.tool_calls), f"tool index {i} skipped ahead"
                assert "id" not in tc or tc["id"] == c.tool_calls[i]["id"]
                c.tool_calls[i]["arguments"] += tc["function"].get("arguments") or ""
        if choice.get("finish_reason"):
            assert c.finish_reason is None, "finish_reason must come once"
            c.finish_reason = choice["finish_reason"]
    return c


def assert_finish_last(chunks: list[Any]) -> None:
    """The finish chunk comes once, after every content/reasoning/tool delta (only the usage
    chunk, `[DONE]` or an error frame may follow it)."""
    seen_finish = False
    for chunk in chunks:
        if chunk == "[DONE]" or "error" in chunk or not chunk["choices"]:
            continue
        choice = chunk["choices"][0]
        if seen_finish:
            raise AssertionError(f"a delta after the finish chunk: {choice}")
        seen_finish = choice["finish_reason"] is not None

def openai_sdk(client: Any, key: str = "x") -> openai.AsyncOpenAI:
    """The official SDK pointed at a test proxy (no retries: a failure must show)."""
    return openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key=key, max_retries=0)


@dataclass
class SDKStream:
    """What naive SDK client code gathers from a stream: every choice's deltas, joined."""

    text: str = ""
    finish: str | None = None
    usage: Any = None
    tool_calls: dict[int, list[str]] = field(default_factory=dict)  # index → [id, name, args]


async def read_sdk_stream(stream: Any) -> SDKStream:
    out = SDKStream()
    async for chunk in stream:
        out.usage = chunk.usage or out.usage
        for choice in chunk.choices:
            out.text += choice.delta.content or ""
            out.finish = choice.finish_reason or out.finish
            for tc in choice.delta.tool_calls or []:
                call = out.tool_calls.setdefault(tc.index, ["", "", ""])
                call[0] = call[0] or tc.id or ""
                call[1] = call[1] or (tc.function.name or "")
                call[2] += tc.function.arguments or ""
    return out


def make_config(providers: dict[str, dict[str, Any]], default: str | None = None,
                **sections: Any) -> Config:
    data: dict[str, Any] = {"providers": providers, **sections}
    if default:
        data["default_provider"] = default
    return parse_config(data, "<test>")


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


class FakeUpstream:
    """A scripted upstream on loopback: answers with `body` split into `pieces` (each piece one
    write, with a yield in between so they arrive as separate reads), and records requests."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.status = 200
        self.statuses: list[int] = []  # error statuses answered first, one per request
        self.content_type = "text/event-stream"
        self.body: bytes = b""
        self.pieces: list[bytes] | None = None
        self.extra_headers: dict[str, str] = {}
        self.delay_before_headers = 0.0
        self.hold_open = False  # keep the connection open after the body (a stall)
        self.piece_delay = 0.0  # seconds between pieces, so each one is a separate read
        self.piece_delays: list[float] | None = None  # per piece, the wait after it
        self.closed = asyncio.Event()  # set when a streaming response's connection closed
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(Received(request.path_qs, dict(request.headers),
                                      await request.read()))
        if self.delay_before_headers:
            await asyncio.sleep(self.delay_before_headers)
        if self.statuses:  # a scripted error, then the next request's
            return web.json_response({"error": {"message": "scripted"}},
                                     status=self.statuses.pop(0), headers=self.extra_headers)
        if self.status >= 400 or self.content_type.startswith("application/json"):
            return web.Response(body=self.body, status=self.status,
                                content_type=self.content_type.split(";")[0],
                                headers=self.extra_headers)
        resp = web.StreamResponse(status=self.status,
                                  headers={"content-type": self.content_type,
                                           **self.extra_headers})
        await resp.prepare(request)
        try:
            pieces = self.pieces if self.pieces is not None else [self.body]
            for i, piece in enumerate(pieces):
                await resp.write(piece)
                await asyncio.sleep(self.piece_delay if self.piece_delays is None
                                    else self.piece_delays[i])
            if self.hold_open:
                await asyncio.sleep(3600)
            await resp.write_eof()
        finally:
            self.closed.set()
        return resp


class Clock:
    """A settable clock for code that takes one (`clock()` → seconds)."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def count_spliced_reads(monkeypatch: Any) -> list[int]:
    """Every `ChunkEncoder.content_literals` call from now on (the Anthropic splice), as the
    number of literals it got."""
    from streamproxy.openai_api.chunks import ChunkEncoder

    spliced: list[int] = []
    literals = ChunkEncoder.content_literals

    def counting(self: ChunkEncoder, texts: list[bytes]) -> None:
        spliced.append(len(texts))
        literals(self, texts)

    monkeypatch.setattr(ChunkEncoder, "content_literals", counting)
    return spliced


# -- the splice (providers/splice.py) against the decoder's path ---------------------------------

class DecodingEncoder(ChunkEncoder):
    """An encoder translators cannot splice into: every event goes through the decoder."""

    content_literals = None  # type: ignore[assignment]
    raw_run = None  # type: ignore[assignment]


class DecodingRecorder(RecordingChunkEncoder):
    content_literals = None  # type: ignore[assignment]
    raw_run = None  # type: ignore[assignment]


def make_encoder(cls: type[ChunkEncoder] = ChunkEncoder) -> ChunkEncoder:
    return cls(completion_id="chatcmpl-1", created=1, model="m", include_usage=True)


def translate_reads(factory: Callable[[ChunkEncoder], StreamTranslator], reads: list[bytes],
                    encoder: ChunkEncoder) -> list[bytes]:
    """What the client gets, read by read, as the relay drives a translator."""
    translator = factory(encoder)
    out = []
    for read in reads:
        translator.feed(read)
        out.append(encoder.take())
    translator.close()
    return out


def assert_splice_matches_decoding(factory: Callable[[ChunkEncoder], StreamTranslator],
                                   reads: list[bytes]) -> None:
    """Spliced or decoded, the client gets the same bytes read by read, and store and the
    cache the same texts."""
    spliced, decoded = make_encoder(), make_encoder(DecodingEncoder)
    assert translate_reads(factory, reads, spliced) == translate_reads(factory, reads, decoded)
    assert spliced.chunks == decoded.chunks
    recorded, decoded = make_encoder(RecordingChunkEncoder), make_encoder(DecodingRecorder)
    assert translate_reads(factory, reads, recorded) == translate_reads(factory, reads, decoded)
    assert recorded.literals == decoded.literals  # type: ignore[attr-defined]


def unnumbered(annotations: list[Any]) -> list[Any]:
    """Streamed `delta.annotations` entries as `message.annotations` has them: each carries its
    `index` in the stream (the openai SDK's stream helper merges list deltas by it), which must
    count from 0; the entries without it."""
    assert [a.get("index") for a in annotations] == list(range(len(annotations)))
    return [{k: v for k, v in a.items() if k != "index"} for a in annotations]


def metric_value(name: str, labels: dict[str, str]) -> float:
    """One sample of the process's metrics (0 when absent), collecting only its family:
    REGISTRY.get_sample_value walks every series the suite has made so far (a second per
    call late in a full run)."""
    for sample in metric_samples(name):
        if sample.name == name and sample.labels == labels:
            return sample.value
    return 0.0


_SAMPLE_SUFFIXES = ("", "_total", "_count", "_sum", "_bucket")


def metric_samples(name: str) -> list[Any]:
    """Every sample of the streamproxy_ family that `name` (a sample's name) belongs to."""
    for metric in vars(metrics()).values():
        families = getattr(metric, "describe", lambda: [])()
        if any(name.removeprefix(f.name) in _SAMPLE_SUFFIXES for f in families):
            return [s for family in metric.collect() for s in family.samples]
    raise KeyError(name)


def every_turn_marked(mark: dict[str, Any]) -> list[dict[str, Any]]:
    """A system prompt and five user turns, each with a cache_control `mark` (a client that
    marks every turn, LiteLLM's message form): more breakpoints than Claude takes."""
    turns: list[dict[str, Any]] = [{"role": "system", "content": "Rules.", "cache_control": mark}]
    for n in range(4):
        turns += [{"role": "user", "content": f"q{n}", "cache_control": mark},
                  {"role": "assistant", "content": f"a{n}"}]
    turns.append({"role": "user", "content": "last", "cache_control": mark})
    return turns



def late_system_loop(answer: dict[str, Any], call_id: str) -> list[dict[str, Any]]:
    """An agent's loop around a late instruction: [user, assistant, system] (answered after a
    placeholder user turn), then the model's `answer` to it and the tool's result."""
    return [{"role": "user", "content": "Book me a table."},
            {"role": "assistant", "content": "Done: I booked it."},
            {"role": "system", "content": "You did not call book. Call it now."},
            answer,
            {"role": "tool", "tool_call_id": call_id, "content": "booked"}]


def thinking_call(call_id: str) -> dict[str, Any]:
    """An assistant message that thought, then called `book`."""
    call = {"id": call_id, "type": "function", "function": {"name": "book", "arguments": "{}"}}
    return {"role": "assistant", "content": None, "tool_calls": [call],
            "thinking_blocks": [{"type": "thinking", "thinking": "Call it.", "signature": "sig"}]}


def calls_of_every_name(names: list[str], model: str) -> dict[str, Any]:
    """A request declaring a function of each name, replaying a call of each with its result,
    and forcing the first: every place a tool name goes."""
    history = [{"role": "user", "content": "x"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": f"c{i}", "type": "function",
                    "function": {"name": name, "arguments": "{}"}}
                   for i, name in enumerate(names)]},
               *({"role": "tool", "tool_call_id": f"c{i}", "content": "1"}
                 for i in range(len(names)))]
    return {"model": model, "messages": history,
            "tools": [{"type": "function", "function": {"name": name}} for name in names],
            "tool_choice": {"type": "function", "function": {"name": names[0]}}}
