"""The usage a cut stream records (docs/operations.md, `tokens_partial`): a stream that ends
before its provider's final count (its client left, a drain's grace ended, an upstream reset,
a timeout) records the provider's latest snapshot, with at least the completion tokens the
client got (`ChunkEncoder.tokens_sent`, computed once at the end), still marked partial."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streamproxy.errors import UpstreamTimeout
from streamproxy.openai_api.chunks import ChunkEncoder
from streamproxy.providers.anthropic.stream import AnthropicStreamTranslator
from streamproxy.providers.base import StreamTranslator
from streamproxy.providers.bedrock.stream import BedrockStreamTranslator
from streamproxy.providers.cohere.stream import CohereStreamTranslator
from streamproxy.providers.gemini.stream import GeminiStreamTranslator
from streamproxy.providers.ollama.stream import OllamaStreamTranslator
from streamproxy.providers.openai_compat import PassthroughTranslator
from streamproxy.record import RequestRecord
from tests.helpers import fixture_bytes, jsonl_to_sse, make_encoder, sse_chunks


def cut_anthropic(name: str) -> tuple[ChunkEncoder, AnthropicStreamTranslator, int]:
    """The recorded stream fed up to its message_delta (every delta went to the client, the
    final count never came); with the count message_delta would have given."""
    data = fixture_bytes(name)
    if name.endswith(".jsonl"):
        data = jsonl_to_sse(data)
    cut = data.index(b"event: message_delta")
    final = orjson.loads(data[cut:].split(b"data: ", 1)[1].split(b"\n", 1)[0])
    encoder = make_encoder()
    translator = AnthropicStreamTranslator(encoder, 1 << 20)
    translator.feed(data[:cut])
    encoder.take()
    return encoder, translator, final["usage"]["output_tokens"]


def record_cut(encoder: ChunkEncoder, translator: StreamTranslator) -> RequestRecord:
    """As the relay notes a stream that did not end well."""
    record = RequestRecord("t", stream=True)
    ended = encoder.ended and encoder.failure is None
    record.note_usage(encoder.usage_data, translator, ended=ended,
                      sent=0 if ended else encoder.tokens_sent())
    return record


def test_a_cut_anthropic_stream_records_the_text_it_sent_not_message_starts_one_token(
        ) -> None:
    """message_start says `output_tokens: 1`; no other count comes before message_delta. Six
    deltas of text went out: the record says about the 30 tokens Anthropic billed."""
    encoder, translator, final = cut_anthropic("anthropic/vercel-ai_anthropic-text.chunks.jsonl")
    record = record_cut(encoder, translator)
    assert record.usage_partial is True
    assert record.usage is not None
    assert record.usage["prompt_tokens"] == 12  # message_start's, as it was
    assert 0.8 * final <= record.usage["completion_tokens"] <= 1.2 * final
    assert record.usage["total_tokens"] == 12 + record.usage["completion_tokens"]


def test_a_cut_thinking_stream_counts_its_reasoning_once_and_not_its_signature() -> None:
    """The thinking block's entry repeats the reasoning sent and adds a long signature: those
    bytes are no more tokens."""
    encoder, translator, final = cut_anthropic(
        "anthropic/llm-anthropic_test_thinking_prompt.response0.sse")
    usage = record_cut(encoder, translator).usage
    assert usage is not None
    assert 0.8 * final <= usage["completion_tokens"] <= 1.3 * final


def test_a_cut_tool_call_stream_counts_its_arguments() -> None:
    """Four argument deltas of `{"location": "Paris"}`: each one's wrapper is no token (it
    counted ~10: 92 for the 65 billed). Now 50: Anthropic bills a call's own structure
    (~50 tokens here, for a name and 21 bytes of arguments), which the call's first chunk
    (its id, name, type) stands for only in part."""
    encoder, translator, final = cut_anthropic("anthropic/sdk-python_tool_use_response.sse")
    usage = record_cut(encoder, translator).usage
    assert usage is not None
    assert 0.7 * final <= usage["completion_tokens"] <= 1.1 * final


def test_the_error_frame_of_a_failed_stream_is_no_token() -> None:
    encoder, _, _ = cut_anthropic("anthropic/vercel-ai_anthropic-text.chunks.jsonl")
    sent = encoder.tokens_sent()
    encoder.error(UpstreamTimeout("the upstream went silent"))
    assert encoder.take()  # the error frame went out
    assert encoder.tokens_sent() == sent


def test_a_larger_snapshot_is_kept() -> None:
    """A snapshot that runs with the stream (Gemini's usageMetadata, a vLLM's running count)
    may say more than the estimate: it is the provider's count, kept."""

    class Running(StreamTranslator):
        def usage_so_far(self) -> dict[str, Any] | None:
            return {"prompt_tokens": 7, "completion_tokens": 500, "total_tokens": 507}

    encoder = make_encoder()
    encoder.start("m", True)
    encoder.content("Hello there")
    encoder.take()
    record = record_cut(encoder, Running())
    assert record.usage == {"prompt_tokens": 7, "completion_tokens": 500, "total_tokens": 507}
    assert record.usage_partial is True


def test_a_cut_gemini_stream_keeps_its_running_count() -> None:
    """Gemini's usageMetadata comes with every chunk, counting all sent so far: the provider's
    own count, kept even where the estimate (a token per four bytes) says more."""
    text = "def f(x):\n    return {'a': [x, x]}\n"  # code: fewer bytes a token than prose
    encoder = make_encoder()
    translator = GeminiStreamTranslator(encoder, 1 << 20)
    for n in (1, 2, 3):
        translator.feed(b"data: " + orjson.dumps({
            "candidates": [{"content": {"role": "model", "parts": [{"text": text}]},
                            "index": 0}],
            "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 4 * n,
                              "totalTokenCount": 9 + 4 * n}}) + b"\r\n\r\n")
    encoder.take()
    assert encoder.tokens_sent() > 12  # (what the max of the two would have logged)
    record = record_cut(encoder, translator)
    assert record.usage is not None and record.usage_partial is True
    assert (record.usage["prompt_tokens"], record.usage["completion_tokens"],
            record.usage["total_tokens"]) == (9, 12, 21)


def test_a_cut_stream_whose_provider_reports_usage_only_at_the_end_records_what_it_sent(
        ) -> None:
    """Ollama (as Bedrock and Cohere) reports usage only on its last line: a cut stream had no
    count at all, and logged none for the tokens its client got. Its prompt stays unknown."""
    encoder = make_encoder()
    translator = OllamaStreamTranslator(encoder, 1 << 20)
    words = ["Hello", " there", ",", " how", " are", " you", " today", "?"]
    translator.feed(b"".join(orjson.dumps({
        "model": "m", "message": {"role": "assistant", "content": w}, "done": False}) + b"\n"
        for w in words))
    encoder.take()
    record = record_cut(encoder, translator)
    assert record.usage_partial is True
    assert record.usage is not None
    assert record.usage["prompt_tokens"] is None
    assert record.usage["completion_tokens"] == len(words)  # a delta is at least a token


def test_logprobs_are_no_tokens_of_the_answer() -> None:
    encoder = make_encoder()
    encoder.start("m", True)
    for word in ("Hi", " there"):
        encoder.content_logprobs(word, [{"token": word, "logprob": -0.25, "bytes": [72, 105],
                                         "top_logprobs": [{"token": word, "logprob": -0.25,
                                                           "bytes": [72, 105]}] * 5}])
    encoder.take()
    assert encoder.tokens_sent() == 2


def test_a_pass_through_stream_counts_its_frames() -> None:
    """An OpenAI-compatible upstream's frames are its own (with padding: OpenAI's
    `obfuscation`), so their size says nothing; each chunk after the role's is a token."""
    encoder = make_encoder()
    encoder.raw(b'{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}')
    for word in ("Hello", " there", "!"):
        encoder.raw(orjson.dumps({"choices": [{"index": 0, "delta": {"content": word}}],
                                  "obfuscation": "x" * 40}))
    encoder.take()
    assert encoder.tokens_sent() == 3


def test_a_stream_that_ended_well_without_usage_records_none() -> None:
    """Not cut: a provider that reported no usage reported none; nothing is estimated."""
    encoder = make_encoder()
    translator = OllamaStreamTranslator(encoder, 1 << 20)
    translator.feed(orjson.dumps({"model": "m", "message": {"role": "assistant",
                                                             "content": "Hi"},
                                  "done": True, "done_reason": "stop"}) + b"\n")
    encoder.take()
    assert encoder.ended
    record = record_cut(encoder, translator)
    assert record.usage_partial is False
    assert record.usage is None or record.usage["completion_tokens"] == 0  # (Ollama's zeros)


def test_a_stream_cut_after_anthropics_message_delta_keeps_its_count() -> None:
    """message_delta's usage is cumulative, the answer's whole count: a stream cut between it
    and message_stop (a reset, a drain) logs that count, not the estimate (over it for
    deeply indented code: a run of spaces is a token, four bytes of the estimate's)."""
    line = " " * 32 + "pass\n"
    data = b"".join(b"event: %s\ndata: %s\n\n" % (e["type"].encode(), orjson.dumps(e)) for e in [
        {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [], "stop_reason": None,
            "usage": {"input_tokens": 45, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text",
                                                                     "text": ""}},
        *({"type": "content_block_delta", "index": 0,
           "delta": {"type": "text_delta", "text": line}} for _ in range(5)),
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
         "usage": {"output_tokens": 18}}])
    encoder = make_encoder()
    translator = AnthropicStreamTranslator(encoder, 1 << 20)
    translator.feed(data)  # (cut before message_stop)
    encoder.take()
    assert encoder.tokens_sent() > 18  # (what the max of the two would have logged)
    usage = record_cut(encoder, translator).usage
    assert usage is not None
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (45, 18)


def test_a_tool_calls_arguments_count_the_same_however_they_are_split() -> None:
    """An argument delta's wrapper (`{"tool_calls":[{"index":0,"function":{"arguments":…}}]}`)
    is ours, no token: arguments sent in ten fragments (Anthropic's partial_json, Cohere's
    a token each) estimate as in one, but for the floor of a token a delta."""
    args = '{"location": "San Francisco, CA", "unit": "celsius", "days": 3}'

    def estimate(pieces: list[str]) -> int:
        encoder = make_encoder()
        encoder.start("m", False)
        encoder.tool_call_start(0, "call_1", "get_weather")
        for piece in pieces:
            encoder.tool_call_args(0, piece)
        encoder.take()
        return encoder.tokens_sent()

    whole = estimate([args])
    split = estimate([args[i:i + 7] for i in range(0, len(args), 7)])
    assert len(args) // 7 + 1 == 10
    assert split - whole <= 2  # (the division's rounding; it was 9 tokens a fragment)


def _sse_frames(data: bytes) -> list[bytes]:
    return [event + b"\n\n" for event in data.split(b"\n\n") if event.strip()]


# The recorded gpt-4o-mini text stream (billed 9 tokens: "The capital of the UK is London."):
# its role chunk, then what a reasoning model sends before its first token (`content: ""`
# chunks while it thinks), then its first six tokens; the stream is cut there.
_TEXT_FRAMES = _sse_frames(fixture_bytes("openai/pydantic-ai_run_stream_sync.response1.sse"))
_BLANK = _TEXT_FRAMES[0].replace(b'"role":"assistant",', b"").replace(b',"refusal":null', b"")


def _cut_pass_through(reads: list[bytes]) -> ChunkEncoder:
    """As the executor commits on the first read and the relay pulls the rest."""
    encoder = make_encoder()
    translator = PassthroughTranslator(encoder, 1 << 20, provider="o", client_wants_usage=True)
    translator.feed(reads[0])
    waiting = encoder.role_only(blanks=True)
    encoder.take()
    for read in reads[1:]:
        translator.feed(read)
        out = encoder.take()
        if waiting:
            encoder.skip_empty(out)
            waiting = not encoder.answered()
    return encoder


@pytest.mark.parametrize("reads", [
    [_TEXT_FRAMES[0], _BLANK * 3, b"".join(_TEXT_FRAMES[1:7])],  # apart
    [_TEXT_FRAMES[0] + _BLANK * 3, b"".join(_TEXT_FRAMES[1:7])],  # with the role
    [_TEXT_FRAMES[0], _BLANK * 3 + b"".join(_TEXT_FRAMES[1:7])],  # with the first token
    [_TEXT_FRAMES[0] + _BLANK * 3 + b"".join(_TEXT_FRAMES[1:7])],  # all in one read
], ids=["apart", "with-role", "with-token", "one-read"])
def test_a_pass_through_streams_empty_chunks_before_its_first_token_are_no_tokens(
        reads: list[bytes]) -> None:
    """A pass-through stream counts a token a chunk after the role's: the `content: ""`
    chunks a reasoning model sends before its first token counted one each."""
    assert b'"content":""' in _BLANK and b'"role"' not in _BLANK
    encoder = _cut_pass_through(reads)
    assert encoder.tokens_sent() == 6


def test_a_pass_through_stream_without_a_role_chunk_counts_its_first_token() -> None:
    """Some OpenAI-compatible servers send no role chunk of its own (Ollama's puts the role on
    every chunk with its text): the first chunk is a token, not the role's."""
    first = _TEXT_FRAMES[1].replace(b'"delta":{', b'"delta":{"role":"assistant",')
    encoder = _cut_pass_through([first + b"".join(_TEXT_FRAMES[2:7])])
    assert encoder.tokens_sent() == 6


def test_reasoning_counts_the_same_however_it_is_split() -> None:
    """A reasoning delta's `{"reasoning_content":…}` is 10 bytes more than a text delta's
    wrapper, no token either: Cohere's tool plan (a token a delta) counted 2.5 tokens a delta
    more than it carried."""
    plan = ("I will use the weather tool to find the weather in San Francisco and the "
            "cityAttractions tool to find attractions in San Francisco.")

    def estimate(pieces: list[str]) -> int:
        encoder = make_encoder()
        encoder.start("m", False)
        for piece in pieces:
            encoder.reasoning(piece)
        encoder.take()
        return encoder.tokens_sent()

    whole = estimate([plan])
    split = estimate([plan[i:i + 5] for i in range(0, len(plan), 5)])
    assert len(plan) // 5 + 1 == 27
    assert split == whole
    assert abs(split - len(plan) // 4) <= 1  # (the role chunk's `content: null`, 2 bytes)


# -- the estimate against the billed figure, on every recorded stream ------------------------

def _events(data: bytes) -> list[bytes]:
    """A recording's events, one a read (SSE), or its frames (AWS event stream)."""
    if data[:1] == b"\x00":
        frames, at = [], 0
        while at < len(data):  # (bounded: each frame is at least its 16-byte prelude and CRC)
            size = int.from_bytes(data[at:at + 4], "big")
            frames.append(data[at:at + size])
            at += size
        return frames
    return _sse_frames(data.replace(b"\r\n", b"\n"))


def _passthrough(encoder: ChunkEncoder) -> PassthroughTranslator:
    return PassthroughTranslator(encoder, 1 << 20, provider="o", client_wants_usage=True)


# name → (translator, events, tokens billed for the whole answer, the final count's event)
RECORDED: dict[str, tuple[Any, list[bytes], int]] = {
    "anthropic text": (lambda e: AnthropicStreamTranslator(e, 1 << 20), _events(jsonl_to_sse(
        fixture_bytes("anthropic/vercel-ai_anthropic-text.chunks.jsonl"))), 30),
    "anthropic thinking": (lambda e: AnthropicStreamTranslator(e, 1 << 20), _events(
        fixture_bytes("anthropic/llm-anthropic_test_thinking_prompt.response0.sse")), 94),
    "anthropic tool": (lambda e: AnthropicStreamTranslator(e, 1 << 20), _events(
        fixture_bytes("anthropic/sdk-python_tool_use_response.sse")), 65),
    "bedrock text, tool": (lambda e: BedrockStreamTranslator(e, 1 << 20), _events(
        fixture_bytes("bedrock/pydantic-ai_bedrock_model_iter_stream.converse-stream.bin")), 59),
    "cohere plan, 2 tools": (lambda e: CohereStreamTranslator(e, 1 << 20), _events(jsonl_to_sse(
        fixture_bytes("cohere/vercel-ai_cohere-tool-call.chunks.jsonl"))), 95),
    "openai text": (_passthrough, _TEXT_FRAMES, 9),
    "openai tool": (_passthrough, _events(
        fixture_bytes("openai/pydantic-ai_run_stream_sync.response0.sse")), 15),
    "gemini tool": (lambda e: GeminiStreamTranslator(e, 1 << 20), [
        b"data: " + orjson.dumps(element) + b"\r\n\r\n" for element in orjson.loads(
            fixture_bytes("gemini/llm-gemini_test_stream_events_tool_calls.response0.json"))],
        267),
}


def _answer_bytes(sent: bytes) -> int:
    """The bytes of the answer the client got: text, reasoning, tool calls' names and
    arguments, as it decodes them."""
    size = 0
    for chunk in sse_chunks(sent):
        if chunk == "[DONE]":
            break
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            size += sum(len((delta.get(k) or "").encode())
                        for k in ("content", "reasoning_content", "refusal"))
            for call in delta.get("tool_calls") or ():
                function = call.get("function") or {}
                size += len((function.get("name") or "").encode())
                size += len((function.get("arguments") or "").encode())
    return size


def _cut_recorded(name: str, events: int) -> tuple[int, int]:
    """The recorded stream cut after `events` events, read one a read as the executor commits
    and the relay pulls: the completion tokens its record logs, and the answer's bytes the
    client got."""
    factory, recorded, _ = RECORDED[name]
    encoder = make_encoder()
    translator = factory(encoder)
    blanks = isinstance(translator, PassthroughTranslator)
    sent, committed, waiting = b"", False, False
    for event in recorded[:events]:
        translator.feed(event)
        if not committed and encoder.pending:
            committed, waiting = True, encoder.role_only(blanks=blanks)
            sent += encoder.take()
            continue
        out = encoder.take()
        sent += out
        if waiting and blanks:
            encoder.skip_empty(out)
            waiting = not encoder.answered()
    usage = record_cut(encoder, translator).usage
    return (usage or {}).get("completion_tokens") or 0, _answer_bytes(sent)


def test_a_thinking_blocks_chunk_takes_nothing_from_the_estimate() -> None:
    """Its bytes are no tokens (the reasoning again, a signature), but neither is it less
    than nothing: sending it took its wrapper off the text's bytes, and the recorded thinking
    stream's estimate fell from 79 to 75 at its signature."""
    events = RECORDED["anthropic thinking"][1]
    signature = next(i for i, e in enumerate(events) if b"signature_delta" in e)
    before = _cut_recorded("anthropic thinking", signature)[0]
    assert _cut_recorded("anthropic thinking", signature + 1)[0] == before


def test_text_with_logprobs_counts_as_text_without() -> None:
    """A logprobs delta's `logprobs` stand where a text delta's tail says `null`: only the
    difference is no token (all of it was taken off: a token less a delta)."""
    text = "Hello there my friend, how are you today"

    def estimate(logprobs: bool) -> int:
        encoder = make_encoder()
        encoder.start("m", True)
        for _ in range(3):
            if logprobs:
                encoder.content_logprobs(text, [{"token": text, "logprob": -0.25,
                                                 "bytes": [72], "top_logprobs": []}])
            else:
                encoder.content(text)
        encoder.take()
        return encoder.tokens_sent()

    assert estimate(True) == estimate(False) == 30


# Each recorded stream cut after so many events (one a read), the last cut after its last
# delta, before its provider's final count: the completion tokens the record logs, and the
# reference — the tokens billed for the whole answer, pro rata of the answer's bytes the
# client had got (exactly the bill at the last cut). What had been sent: text and reasoning
# only, or tool calls too (a call's own structure is billed at its start, and differs by
# provider: the pro-rata reference is rough there). docs/operations.md states these ranges.
CUT_TABLE = [
    ("anthropic text", 5, 2, 2, "text"),  # +0%
    ("anthropic text", 7, 17, 19, "text"),  # -11%
    ("anthropic text", 10, 27, 30, "text"),  # -10%
    ("anthropic thinking", 8, 41, 48, "text"),  # -15%
    ("anthropic thinking", 14, 79, 90, "text"),  # -12%
    ("anthropic thinking", 19, 83, 94, "text"),  # -12%
    ("anthropic tool", 5, 12, 39, "text"),  # -69%: the reference counts the call's cost here
    ("anthropic tool", 9, 44, 54, "tools"),  # -19%
    ("anthropic tool", 13, 48, 65, "tools"),  # -26%
    ("bedrock text, tool", 12, 14, 15, "text"),  # -7%
    ("bedrock text, tool", 24, 28, 29, "text"),  # -3%
    ("bedrock text, tool", 44, 51, 51, "text"),  # +0%
    ("bedrock text, tool", 48, 89, 59, "tools"),  # +51%: Nova's call costs ~10, its chunk 30
    ("cohere plan, 2 tools", 14, 16, 29, "text"),  # -45%: as the anthropic tool's first
    ("cohere plan, 2 tools", 28, 33, 60, "text"),  # -45%
    ("cohere plan, 2 tools", 38, 98, 84, "tools"),  # +17%
    ("cohere plan, 2 tools", 46, 105, 95, "tools"),  # +11%
    ("openai text", 4, 3, 4, "text"),  # -25%: a token a chunk; its bill has one more
    ("openai text", 7, 6, 7, "text"),  # -14%
    ("openai text", 10, 8, 9, "text"),  # -11%
    ("openai tool", 3, 3, 11, "tools"),  # -73%: a token a chunk; the call's cost unseen
    ("openai tool", 5, 5, 14, "tools"),  # -64%
    ("openai tool", 7, 6, 15, "tools"),  # -60%
    ("gemini tool", 1, 267, 267, "tools"),  # +0%: its running count, not the estimate
]
# The range of logged ÷ reference, by what had been sent, but for the rows whose reference
# counts a tool call's cost before its call was sent (the text ahead of Anthropic's and
# Cohere's calls: -69%, -45%).
RANGES = {"text": (0.75, 1.0), "tools": (0.25, 1.55)}
AHEAD_OF_A_CALL = {("anthropic tool", 5), ("cohere plan, 2 tools", 14),
                   ("cohere plan, 2 tools", 28)}


@pytest.mark.parametrize(("name", "events", "logged", "reference", "sent"), CUT_TABLE,
                         ids=[f"{row[0]}@{row[1]}" for row in CUT_TABLE])
def test_the_estimate_against_the_bill_on_every_recorded_stream(
        name: str, events: int, logged: int, reference: int, sent: str) -> None:
    billed = RECORDED[name][2]
    last = max(row[1] for row in CUT_TABLE if row[0] == name)
    tokens, size = _cut_recorded(name, events)
    assert tokens == logged
    assert round(billed * size / _cut_recorded(name, last)[1]) == reference
    low, high = RANGES[sent]
    if (name, events) not in AHEAD_OF_A_CALL:
        assert low * reference <= logged <= high * reference


def test_the_table_cuts_every_recorded_stream_after_its_last_delta() -> None:
    """The last cut of each: one event more brings its final count (or ends the stream with
    it; Gemini's came with every chunk), which the record then logs as the provider gave it."""
    for name, (_, recorded, billed) in RECORDED.items():
        last = max(row[1] for row in CUT_TABLE if row[0] == name)
        if name == "gemini tool":
            assert last == len(recorded) - 1
            continue
        assert _cut_recorded(name, last + 1)[0] == billed
