"""`logprobs` / `top_logprobs` for the translating providers that have them: Gemini / Vertex
(`generationConfig.responseLogprobs` + `logprobs`; `candidates[].logprobsResult`), Ollama
0.12.11+ (`logprobs` / `top_logprobs`; each line's `logprobs`) and Cohere (`logprobs`; a text
delta's `logprobs` item, a whole answer's list of them), mapped to OpenAI's
`choices[].logprobs = {"content": [{token, logprob, bytes, top_logprobs}], "refusal": null}`,
streamed (a chunk's tokens on the chunk carrying its text) and not.

No recording with logprobs exists: the bodies are built from the documented shapes. Gemini's
`logprobsResult` (`chosenCandidates[]` and `topCandidates[].candidates[]` of `{token, tokenId,
logProbability}`, one entry per decoding step) sits after `index` in the candidate, in field
number order as the recorded chunks have theirs; Ollama's lines are its release notes' example
(`{token, logprob, bytes, top_logprobs}`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from streamproxy.errors import InvalidRequest
from streamproxy.openai_api.chunks import ChunkEncoder, RecordingChunkEncoder
from streamproxy.openai_api.completion import CompletionBuilder, TeeSink
from streamproxy.providers.anthropic.request import to_anthropic
from streamproxy.providers.bedrock.request import to_converse
from streamproxy.providers.cohere.request import to_cohere
from streamproxy.providers.cohere.response import to_completion as cohere_completion
from streamproxy.providers.cohere.stream import CohereStreamTranslator
from streamproxy.providers.gemini.request import to_gemini
from streamproxy.providers.gemini.response import to_completion
from streamproxy.providers.gemini.stream import GeminiStreamTranslator, token_logprobs
from streamproxy.providers.ollama.request import to_ollama
from streamproxy.providers.ollama.stream import OllamaStreamTranslator, content_logprobs_only
from tests.conftest import provider_config
from tests.helpers import (
    count_spliced_reads,
    jsonl_to_sse,
    openai_sdk,
    random_splits,
    relay_pieces,
    sse_chunks,
)

USER = [{"role": "user", "content": "hi"}]


# -- requests -------------------------------------------------------------------------------

def test_gemini_request_asks_for_logprobs_and_the_top_count() -> None:
    def config(**params: Any) -> dict[str, Any]:
        return to_gemini({"messages": USER, **params}, "gemini-2.5-flash").get(
            "generationConfig", {})

    assert config(logprobs=True, top_logprobs=3) == {"responseLogprobs": True, "logprobs": 3}
    assert config(logprobs=True, top_logprobs=0) == {"responseLogprobs": True}  # Vertex: 1-20
    assert config(logprobs=True) == {"responseLogprobs": True}
    assert config(logprobs=False) == {}
    assert config() == {}


def test_ollama_request_asks_for_logprobs_and_the_top_count() -> None:
    def sent(**params: Any) -> dict[str, Any]:
        body = to_ollama({"messages": USER, **params}, "gemma3", stream=True)
        return {k: body[k] for k in ("logprobs", "top_logprobs") if k in body}

    assert sent(logprobs=True, top_logprobs=3) == {"logprobs": True, "top_logprobs": 3}
    assert sent(logprobs=True) == {"logprobs": True}
    assert sent(logprobs=False) == {}


TRANSLATORS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "anthropic": lambda body: to_anthropic(body, "claude-sonnet-4-5"),
    "bedrock": lambda body: to_converse(body, "amazon.nova-micro-v1:0"),
    "cohere": lambda body: to_cohere(body, "command-a"),
    "gemini": lambda body: to_gemini(body, "gemini-2.5-flash"),
    "ollama": lambda body: to_ollama(body, "gemma3", stream=True),
}


@pytest.mark.parametrize("provider", TRANSLATORS)
@pytest.mark.parametrize("logprobs", [{}, {"logprobs": False}, {"logprobs": None}])
@pytest.mark.parametrize("top", [0, 3])
def test_top_logprobs_without_logprobs_is_a_400_as_openai_answers(
        provider: str, logprobs: dict[str, Any], top: int) -> None:
    # OpenAI: "The 'top_logprobs' parameter is only allowed when 'logprobs' is enabled." —
    # whether the provider maps logprobs (Gemini, Ollama) or drops them, never ignored.
    with pytest.raises(InvalidRequest) as caught:
        TRANSLATORS[provider]({"messages": USER, "top_logprobs": top, **logprobs})
    assert caught.value.status == 400 and caught.value.param == "top_logprobs"
    assert "'logprobs' is enabled" in str(caught.value)
    TRANSLATORS[provider]({"messages": USER, "top_logprobs": top, "logprobs": True})
    TRANSLATORS[provider]({"messages": USER, "top_logprobs": None})


async def test_top_logprobs_without_logprobs_is_an_openai_400_through_the_proxy(
        proxy: Any, upstream: Any) -> None:
    client = await proxy(provider_config("gemini", upstream.url))
    resp = await client.post("/v1/chat/completions", json={
        "messages": USER, "stream": True, "top_logprobs": 2})
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", "top_logprobs")
    assert not upstream.requests


# -- Gemini answers -------------------------------------------------------------------------

def candidate(token: str, logprob: float | None, token_id: int = 1) -> dict[str, Any]:
    out: dict[str, Any] = {"token": token, "tokenId": token_id}
    if logprob is not None:  # proto3 JSON leaves out a 0.0
        out["logProbability"] = logprob
    return out


def logprobs_result(tokens: list[tuple[str, float | None]], top: int = 2) -> dict[str, Any]:
    """One step per token; the chosen one first among `top` candidates (when asked)."""
    result: dict[str, Any] = {"chosenCandidates": [candidate(t, lp) for t, lp in tokens]}
    if top:
        result["topCandidates"] = [
            {"candidates": [candidate(t, lp), candidate(t + "?", -9.5, 7)][:top]}
            for t, lp in tokens]
    return result


def openai_tokens(tokens: list[tuple[str, float | None]], top: int = 2) -> list[dict[str, Any]]:
    def entry(t: str, lp: float | None) -> dict[str, Any]:
        return {"token": t, "logprob": lp or 0.0, "bytes": list(t.encode())}
    return [{**entry(t, lp), "top_logprobs": [entry(t, lp), entry(t + "?", -9.5)][:top]}
            for t, lp in tokens]


def gemini_chunk(text: str, tokens: list[tuple[str, float | None]] | None, *,
                 finish: str | None = None, thought: str | None = None) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"text": thought, "thought": True}] if thought else []
    parts.append({"text": text})
    cand: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
    if finish:
        cand["finishReason"] = finish
    cand["index"] = 0
    if tokens is not None:
        cand["avgLogprobs"] = -0.5
        cand["logprobsResult"] = logprobs_result(tokens)
    return {"candidates": [cand],
            "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 9,
                              "totalTokenCount": 13},
            "modelVersion": "gemini-2.5-flash", "responseId": "r1"}


STEPS = [
    [("Hello", -0.25), (",", None)],
    [(" wor", -1.5), ("ld", -0.0625)],
    [(" é", -2.0)],
    [("!", -0.125)],
]
GEMINI_STREAM = [gemini_chunk(text, steps) for text, steps in
                 zip(["Hello,", " world", " é", "!"], STEPS, strict=True)]
GEMINI_STREAM.append(gemini_chunk("", [], finish="STOP"))


def google_sse(elements: list[Any]) -> bytes:
    """Framed and written as Gemini writes them (`": "`, bare `,`): the fast path's form."""
    return b"".join(b"data: " + json.dumps(e, separators=(",", ": "), ensure_ascii=False)
                    .encode() + b"\r\n\r\n" for e in elements)


def translate_gemini(pieces: list[bytes], *, logprobs: bool = True) -> list[Any]:
    enc = ChunkEncoder(completion_id="chatcmpl-t", created=1, model="m", include_usage=True)
    tr = GeminiStreamTranslator(enc, 1 << 20, logprobs=logprobs)
    return sse_chunks(relay_pieces(enc, tr, pieces))


def logprob_chunks(chunks: list[Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """(the chunk's content, its logprobs.content) of each chunk that carries logprobs."""
    out = []
    for ch in chunks[:-1]:
        for choice in ch["choices"]:
            if choice["logprobs"] is not None:
                assert choice["logprobs"]["refusal"] is None
                out.append((choice["delta"]["content"], choice["logprobs"]["content"]))
    return out


def test_token_logprobs_maps_chosen_and_top_candidates() -> None:
    steps = [("Hi", -0.5), ("日", None)]
    assert token_logprobs(logprobs_result(steps)) == openai_tokens(steps)
    assert token_logprobs(logprobs_result(steps, top=0)) == openai_tokens(steps, top=0)
    assert token_logprobs({}) == []


def test_gemini_stream_carries_each_chunks_logprobs_with_its_text() -> None:
    body = google_sse(GEMINI_STREAM)
    assert len(body) > 1024  # one read of it would take the splice, were it plain text
    expected = [(text, openai_tokens(steps)) for text, steps in
                zip(["Hello,", " world", " é", "!"], STEPS, strict=True)]
    rng = random.Random(3)
    for pieces in ([body], *(random_splits(body, rng, max_piece=60) for _ in range(10))):
        chunks = translate_gemini(pieces)
        assert chunks[-1] == "[DONE]"
        assert logprob_chunks(chunks) == expected
        assert "".join(ch["choices"][0]["delta"].get("content") or ""
                       for ch in chunks[:-1] if ch["choices"]) == "Hello, world é!"


def test_gemini_plain_chunks_around_logprob_ones_keep_both(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Plain text chunks as Gemini writes them are spliced in runs; the chunks with logprobs
    # between them are parsed, never spliced, and keep their tokens.
    plain = orjson.loads(orjson.dumps(GEMINI_STREAM[0]))
    del plain["candidates"][0]["avgLogprobs"], plain["candidates"][0]["logprobsResult"]
    runs = []
    for i in range(12):
        chunk = orjson.loads(orjson.dumps(plain))
        chunk["candidates"][0]["content"]["parts"][0]["text"] = f"p{i} "
        runs.append(chunk)
    elements = [GEMINI_STREAM[0], *runs[:6], GEMINI_STREAM[1], *runs[6:], GEMINI_STREAM[-1]]
    spliced = count_spliced_reads(monkeypatch)
    chunks = translate_gemini([google_sse(elements)])
    assert spliced == [6, 6]
    assert logprob_chunks(chunks) == [("Hello,", openai_tokens(STEPS[0])),
                                      (" world", openai_tokens(STEPS[1]))]
    text = "".join(ch["choices"][0]["delta"].get("content") or ""
                   for ch in chunks[:-1] if ch["choices"])
    assert text == "Hello," + "".join(f"p{i} " for i in range(6)) + " world" + "".join(
        f"p{i} " for i in range(6, 12))


def test_gemini_logprobs_go_with_the_answer_text_not_a_thought() -> None:
    chunks = translate_gemini([google_sse([
        gemini_chunk("Yes", [("Yes", -0.5)], thought="Thinking."),
        gemini_chunk("", [], finish="STOP")])])
    deltas = [ch["choices"][0] for ch in chunks[:-1] if ch["choices"]]
    assert [d["delta"] for d in deltas if d["delta"].get("reasoning_content")] == [
        {"reasoning_content": "Thinking."}]
    assert logprob_chunks(chunks) == [("Yes", openai_tokens([("Yes", -0.5)]))]


def test_gemini_logprobs_are_not_read_unless_asked() -> None:
    asked = translate_gemini([google_sse(GEMINI_STREAM)], logprobs=False)
    assert logprob_chunks(asked) == []
    assert all(ch["choices"][0]["logprobs"] is None for ch in asked[:-1] if ch["choices"])


def test_gemini_non_streamed_answer_has_the_whole_logprobs() -> None:
    steps = [("Hello", -0.25), (" there", None)]
    body = orjson.dumps(gemini_chunk("Hello there", steps, finish="STOP"))
    done = to_completion(body, completion_id="c", created=1, model="m", logprobs=True)
    [choice] = done["choices"]
    assert choice["message"]["content"] == "Hello there"
    assert choice["logprobs"] == {"content": openai_tokens(steps), "refusal": None}
    plain = to_completion(body, completion_id="c", created=1, model="m")
    assert plain["choices"][0]["logprobs"] is None


def test_a_captured_stream_keeps_its_logprobs_and_is_not_replayable() -> None:
    # store: true and cache fills see the stream through a TeeSink: the text is recorded once,
    # the logprobs joined as OpenAI's whole answer has them; a replay could not give them back.
    encoder = RecordingChunkEncoder(completion_id="c", created=1, model="m",
                                    include_usage=False)
    builder = CompletionBuilder()
    tr = GeminiStreamTranslator(TeeSink(encoder, builder), 1 << 20, logprobs=True)
    tr.feed(google_sse(GEMINI_STREAM))
    tr.close()
    done = builder.completion(completion_id="c", created=1, model="m")
    assert done["choices"][0]["message"]["content"] == "Hello, world é!"
    assert done["choices"][0]["logprobs"] == {
        "content": [t for steps in STEPS for t in openai_tokens(steps)], "refusal": None}
    assert not builder.replayable


# -- Ollama answers -------------------------------------------------------------------------

def ollama_token(token: str, logprob: float, top: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {"token": token, "logprob": logprob, "bytes": list(token.encode())}
    if top:
        out["top_logprobs"] = [{"token": token, "logprob": logprob,
                                "bytes": list(token.encode())},
                               {"token": "Okay", "logprob": -1.25,
                                "bytes": [79, 107, 97, 121]}][:top]
    return out


def ollama_line(content: str, tokens: list[dict[str, Any]] | None, *, done: bool = False,
                thinking: str | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    line: dict[str, Any] = {"model": "gemma3", "created_at": "2025-11-14T22:26:10.466324Z",
                            "message": message, "done": done}
    if done:
        line.update(done_reason="stop", prompt_eval_count=5, eval_count=3)
    if tokens is not None:
        line["logprobs"] = tokens
    return line


OLLAMA_LINES = [
    ollama_line("", [ollama_token("Hmm", -0.5, 2)], thinking="Hmm"),  # thinking: dropped
    ollama_line("The", [ollama_token("The", -0.8361086845397949, 2)]),
    ollama_line(" sky", [ollama_token(" sky", -0.25)]),  # no top_logprobs given: []
    ollama_line("", None, done=True),
]


def ollama_translate(body: bytes, *, logprobs: bool = True) -> list[Any]:
    enc = ChunkEncoder(completion_id="chatcmpl-t", created=1, model="m", include_usage=False)
    tr = OllamaStreamTranslator(enc, 1 << 20, logprobs=logprobs)
    tr.feed(body)
    tr.close()
    return sse_chunks(enc.take())


def ndjson(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


OLLAMA_EXPECTED = [
    ("The", [{**ollama_token("The", -0.8361086845397949), "top_logprobs": ollama_token(
        "The", -0.8361086845397949, 2)["top_logprobs"]}]),
    (" sky", [{**ollama_token(" sky", -0.25), "top_logprobs": []}]),
]


def test_ollama_stream_carries_each_lines_logprobs_with_its_content() -> None:
    chunks = ollama_translate(ndjson(OLLAMA_LINES))
    assert logprob_chunks(chunks) == OLLAMA_EXPECTED
    assert any(ch["choices"][0]["delta"].get("reasoning_content") == "Hmm"
               for ch in chunks[:-1] if ch["choices"])
    unasked = ollama_translate(ndjson(OLLAMA_LINES), logprobs=False)
    assert logprob_chunks(unasked) == []


# -- through the proxy ----------------------------------------------------------------------

async def test_openai_sdk_gets_gemini_logprobs_streamed_and_not(proxy: Any,
                                                               upstream: Any) -> None:
    upstream.pieces = random_splits(google_sse(GEMINI_STREAM), random.Random(1), max_piece=90)
    client = openai_sdk(await proxy(provider_config("gemini", upstream.url)))
    async with client:
        stream = await client.chat.completions.create(
            model="gemini-2.5-flash", messages=USER, stream=True, logprobs=True, top_logprobs=2)
        got = []
        async for ch in stream:
            for choice in ch.choices:
                if choice.logprobs is not None:
                    got.append((choice.delta.content, [
                        (t.token, t.logprob, t.bytes, [(c.token, c.logprob) for c in
                                                       t.top_logprobs])
                        for t in choice.logprobs.content or ()]))
        sent = upstream.requests[0].json()
        assert sent["generationConfig"] == {"responseLogprobs": True, "logprobs": 2}
        assert got == [(text, [(t["token"], t["logprob"], t["bytes"],
                                [(c["token"], c["logprob"]) for c in t["top_logprobs"]])
                               for t in openai_tokens(steps)])
                       for text, steps in zip(["Hello,", " world", " é", "!"], STEPS,
                                              strict=True)]
        upstream.pieces = None
        upstream.content_type = "application/json"
        upstream.body = orjson.dumps(gemini_chunk("Hi", [("Hi", -0.5)], finish="STOP"))
        done = await client.chat.completions.create(
            model="gemini-2.5-flash", messages=USER, logprobs=True)
        assert done.choices[0].message.content == "Hi"
        assert [(t.token, t.logprob) for t in done.choices[0].logprobs.content] == [
            ("Hi", -0.5)]


async def test_ollama_logprobs_through_the_proxy(proxy: Any, upstream: Any) -> None:
    upstream.content_type = "application/x-ndjson"
    upstream.body = ndjson(OLLAMA_LINES)
    client = await proxy(provider_config("ollama", upstream.url))
    resp = await client.post("/v1/chat/completions", json={
        "model": "gemma3", "messages": USER, "stream": True, "logprobs": True,
        "top_logprobs": 2})
    assert resp.status == 200
    chunks = sse_chunks(await resp.read())
    assert upstream.requests[0].json()["top_logprobs"] == 2
    assert logprob_chunks(chunks) == OLLAMA_EXPECTED
    upstream.body = ndjson([ollama_line("The", [ollama_token("The", -0.5)], done=True)])
    resp = await client.post("/v1/chat/completions", json={
        "model": "gemma3", "messages": USER, "logprobs": True})
    body = await resp.json()
    assert body["choices"][0]["logprobs"] == {
        "content": [{**ollama_token("The", -0.5), "top_logprobs": []}], "refusal": None}


# A thinking model's answer as Ollama's builtin parser streams it, a line per token: the tag
# and the blank after it spell nothing; thinking lines carry thinking. Non-streamed, Ollama
# joins the lines' thinking and content and gives every line's logprobs in one list.
THINKING_LINES = [
    ollama_line("", [ollama_token("<think>", -0.01)]),
    ollama_line("", [ollama_token("Blue", -0.5)], thinking="Blue"),
    ollama_line("", [ollama_token(" sky", -0.75)], thinking=" sky"),
    ollama_line("", [ollama_token("</think>", -0.02)]),
    ollama_line("", [ollama_token("\n\n", -0.03)]),
    ollama_line("The", [ollama_token("The", -0.25)]),
    ollama_line(" sky", [ollama_token(" sky", -0.125)]),
    ollama_line("", None, done=True),
]
THINKING_WHOLE = {**THINKING_LINES[-1], "message": {
    "role": "assistant", "content": "The sky", "thinking": "Blue sky"},
    "logprobs": [t for line in THINKING_LINES for t in line.get("logprobs") or ()]}


async def test_ollama_thinking_tokens_logprobs_are_left_out_streamed_and_not(
        proxy: Any, upstream: Any) -> None:
    # Streamed, a thinking line's logprobs are dropped (OpenAI gives none for reasoning); the
    # non-streamed answer's list holds them all, and they came back as the content's, before
    # its own: content "The sky" with logprobs for "<think>Blue sky</think>\n\nThe sky".
    client = await proxy(provider_config("ollama", upstream.url))
    upstream.content_type = "application/x-ndjson"
    upstream.body = ndjson(THINKING_LINES)
    resp = await client.post("/v1/chat/completions", json={
        "model": "gemma3", "messages": USER, "stream": True, "logprobs": True})
    streamed = [t for _, tokens in logprob_chunks(sse_chunks(await resp.read()))
                for t in tokens]
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps(THINKING_WHOLE)
    resp = await client.post("/v1/chat/completions", json={
        "model": "gemma3", "messages": USER, "logprobs": True})
    whole = (await resp.json())["choices"][0]
    assert whole["message"]["content"] == "The sky"
    assert whole["message"]["reasoning_content"] == "Blue sky"
    expected = [{**ollama_token(t, lp), "top_logprobs": []}
                for t, lp in (("The", -0.25), (" sky", -0.125))]
    assert streamed == expected
    assert whole["logprobs"] == {"content": expected, "refusal": None}


@pytest.mark.parametrize(("tokens", "content", "kept"), [
    (["<think>", "Say", " Hi", "</think>", "Hi", "!"], "Hi!", ["Hi", "!"]),  # said in thinking too
    (["Let", " me", " check", "[", "{\"name\"", "}]"], "Let me check", ["Let", " me", " check"]),
    (["<think>", "Hm", "</think>"], "", []),  # thinking only: no content, no content logprobs
    (["H", "i"], "Hi", ["H", "i"]),
    (["\ufffd", "\ufffd"], "\U0001f600", ["\ufffd", "\ufffd"]),  # spelled nowhere: as it came
])
def test_ollama_whole_answer_keeps_the_logprobs_of_its_content(
        tokens: list[str], content: str, kept: list[str]) -> None:
    answer = {"message": {"role": "assistant", "content": content},
              "logprobs": [ollama_token(t, -0.5) for t in tokens]}
    assert [t["token"] for t in content_logprobs_only(answer)["logprobs"]] == kept


def test_ollama_line_of_thinking_and_content_keeps_the_contents_logprobs() -> None:
    # One line can end the thinking and begin the answer (its logprobs the tokens of both):
    # streamed, all went as the content's, "</think>" and the thinking's tokens too, where the
    # same answer non-streamed keeps only the content's. Streamed and not now agree.
    both = ollama_line("The", [ollama_token(t, -0.5) for t in (" sky", "</think>", "\n\n",
                                                              "The")], thinking=" sky")
    lines = [THINKING_LINES[0], THINKING_LINES[1], both, *THINKING_LINES[6:]]
    streamed = [t["token"] for _, tokens in logprob_chunks(ollama_translate(ndjson(lines)))
                for t in tokens]
    assert streamed == ["The", " sky"]
    whole = {**THINKING_WHOLE, "logprobs": [t for line in lines for t in line.get("logprobs")
                                            or ()]}
    assert [t["token"] for t in content_logprobs_only(whole)["logprobs"]] == streamed


@pytest.mark.parametrize("stream", [True, False])
async def test_gemini_logprobs_asked_by_a_configs_override_params(stream: bool, proxy: Any,
                                                                  upstream: Any) -> None:
    """A config target's `override_params` asking for logprobs: Gemini is asked for them, and
    the answer carries them as it does for a client that asked itself."""
    if stream:
        upstream.body = google_sse(GEMINI_STREAM)
    else:
        upstream.content_type = "application/json"
        upstream.body = orjson.dumps(gemini_chunk("Hi", [("Hi", -0.5)], finish="STOP"))
    config = {"provider": "up", "override_params": {"logprobs": True, "top_logprobs": 2}}
    client = openai_sdk(await proxy(provider_config("gemini", upstream.url)))
    async with client:
        answer = await client.chat.completions.create(
            model="gemini-2.5-flash", messages=USER, stream=stream,
            extra_headers={"x-portkey-config": json.dumps(config)})
        if stream:
            got = [(choice.delta.content, [(t.token, t.logprob) for t in choice.logprobs.content])
                   async for ch in answer for choice in ch.choices
                   if choice.logprobs is not None]
            assert got == [(text, [(t, lp or 0.0) for t, lp in steps]) for text, steps in
                           zip(["Hello,", " world", " é", "!"], STEPS, strict=True)]
        else:
            assert answer.choices[0].logprobs is not None
            assert [(t.token, t.logprob) for t in answer.choices[0].logprobs.content] == [
                ("Hi", -0.5)]
    assert upstream.requests[0].json()["generationConfig"] == {"responseLogprobs": True,
                                                               "logprobs": 2}


# -- Cohere ----------------------------------------------------------------------------------
# Cohere v2's documented shape (its API reference, LogprobItem): a stream's `content-delta`
# event carries `logprobs: {text, token_ids, logprobs}` beside its `delta`; a whole answer a
# top-level `logprobs` list of such items. No top candidates.

def cohere_item(text: str, logprobs: list[float]) -> dict[str, Any]:
    return {"text": text, "token_ids": list(range(7, 7 + len(logprobs))), "logprobs": logprobs}


def cohere_entry(text: str, logprob: float) -> dict[str, Any]:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode()), "top_logprobs": []}


COHERE_ITEMS = [cohere_item("Hello", [-0.25]), cohere_item(" wörld", [-0.5]),
                cohere_item("😀", [-1.0, -0.25])]  # (one character of two tokens: their sum)
COHERE_TOKENS = [cohere_entry("Hello", -0.25), cohere_entry(" wörld", -0.5),
                 cohere_entry("😀", -1.25)]


def cohere_stream(thinking: str | None = None) -> bytes:
    events: list[dict[str, Any]] = [{"id": "x", "type": "message-start", "delta": {"message": {
        "role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}}}]
    index = 0
    if thinking is not None:
        events += [{"type": "content-start", "index": 0, "delta": {"message": {"content": {
                    "type": "thinking", "thinking": ""}}}},
                   {"type": "content-delta", "index": 0, "delta": {"message": {"content": {
                       "thinking": thinking}}}, "logprobs": cohere_item(thinking, [-2.0])},
                   {"type": "content-end", "index": 0}]
        index = 1
    events.append({"type": "content-start", "index": index,
                   "delta": {"message": {"content": {"type": "text", "text": ""}}}})
    events += [{"type": "content-delta", "index": index,
                "delta": {"message": {"content": {"text": item["text"]}}}, "logprobs": item}
               for item in COHERE_ITEMS]
    events += [{"type": "content-end", "index": index},
               {"type": "message-end", "delta": {"finish_reason": "COMPLETE", "usage": {
                   "tokens": {"input_tokens": 3, "output_tokens": 4}}}}]
    return jsonl_to_sse(b"\n".join(orjson.dumps(e) for e in events))


def test_cohere_request_asks_for_logprobs() -> None:
    def sent(**params: Any) -> Any:
        return to_cohere({"messages": USER, **params}, "command-a").get("logprobs")

    assert sent(logprobs=True) is True
    assert sent(logprobs=True, top_logprobs=3) is True  # (Cohere has no top candidates)
    assert "top_logprobs" not in to_cohere({"messages": USER, "logprobs": True,
                                            "top_logprobs": 3}, "command-a")
    assert sent(logprobs=False) is None and sent() is None


@pytest.mark.parametrize("thinking", [None, "Hm."])
def test_cohere_stream_carries_each_deltas_logprobs_with_its_text(thinking: str | None) -> None:
    enc = ChunkEncoder(completion_id="c", created=1, model="m", include_usage=False)
    chunks = sse_chunks(relay_pieces(enc, CohereStreamTranslator(enc, 1 << 20, logprobs=True),
                                     [cohere_stream(thinking)]))
    got = [(c["choices"][0]["delta"].get("content"), c["choices"][0]["logprobs"]["content"])
           for c in chunks[:-1] if c["choices"] and c["choices"][0].get("logprobs")]
    assert got == [(item["text"], [token])
                   for item, token in zip(COHERE_ITEMS, COHERE_TOKENS, strict=True)]
    # Not asked: none read.
    enc = ChunkEncoder(completion_id="c", created=1, model="m", include_usage=False)
    chunks = sse_chunks(relay_pieces(enc, CohereStreamTranslator(enc, 1 << 20),
                                     [cohere_stream(thinking)]))
    assert chunks[-1] == "[DONE]"
    assert not any(c["choices"][0].get("logprobs") for c in chunks[:-1] if c["choices"])


@pytest.mark.parametrize("thinking", [False, True])
def test_cohere_non_streamed_answer_has_its_contents_logprobs(thinking: bool) -> None:
    content: list[dict[str, Any]] = [{"type": "thinking", "thinking": "Hm."}] if thinking else []
    content.append({"type": "text", "text": "Hello wörld😀"})
    items = ([cohere_item("Hm.", [-2.0])] if thinking else []) + COHERE_ITEMS
    body = orjson.dumps({"id": "x", "finish_reason": "COMPLETE", "message": {
        "role": "assistant", "content": content}, "logprobs": items})
    answer = cohere_completion(body, completion_id="c", created=1, model="m",
                               provider="cohere", logprobs=True)
    # The thinking's tokens (OpenAI gives none for reasoning) are left out, as streamed.
    assert answer["choices"][0]["logprobs"] == {"content": COHERE_TOKENS, "refusal": None}
    plain = cohere_completion(body, completion_id="c", created=1, model="m", provider="cohere")
    assert plain["choices"][0]["logprobs"] is None


BAD_COHERE_ITEMS = ["x", None, [1], {"text": " wörld", "logprobs": "x"},
                    {"text": " wörld", "logprobs": [None]}, {"text": " wörld", "logprobs": [[1]]},
                    {"text": " wörld", "logprobs": {"a": 1}}, {"text": 5, "logprobs": "x"}]


@pytest.mark.parametrize("bad", BAD_COHERE_ITEMS)
def test_a_malformed_cohere_logprobs_item_loses_its_logprobs_not_the_answer(bad: Any) -> None:
    # Logprobs are an extra: one malformed item made the whole answer a protocol error (502
    # non-streamed, an error frame streamed). Now only that item's logprobs are left out.
    items = [COHERE_ITEMS[0], bad, COHERE_ITEMS[2]]
    texts = ["Hello", " wörld", "😀"]
    body = orjson.dumps({"id": "x", "finish_reason": "COMPLETE", "message": {
        "role": "assistant", "content": [{"type": "text", "text": "".join(texts)}]},
        "logprobs": items})
    answer = cohere_completion(body, completion_id="c", created=1, model="m",
                               provider="cohere", logprobs=True)
    assert answer["choices"][0]["message"]["content"] == "Hello wörld😀"
    assert answer["choices"][0]["logprobs"]["content"] == [COHERE_TOKENS[0], COHERE_TOKENS[2]]
    events: list[dict[str, Any]] = [{"type": "message-start", "delta": {"message": {
        "role": "assistant"}}}]
    events += [{"type": "content-delta", "index": 0, "delta": {"message": {"content": {
        "text": text}}}, "logprobs": item} for text, item in zip(texts, items, strict=True)]
    events.append({"type": "message-end", "delta": {"finish_reason": "COMPLETE"}})
    enc = ChunkEncoder(completion_id="c", created=1, model="m", include_usage=False)
    chunks = sse_chunks(relay_pieces(
        enc, CohereStreamTranslator(enc, 1 << 20, logprobs=True),
        [jsonl_to_sse(b"\n".join(orjson.dumps(e) for e in events))]))
    assert chunks[-1] == "[DONE]"
    deltas = [c["choices"][0] for c in chunks[:-1] if c["choices"]]
    assert "".join(d["delta"].get("content") or "" for d in deltas) == "Hello wörld😀"
    assert [t for d in deltas if d.get("logprobs") for t in d["logprobs"]["content"]] == [
        COHERE_TOKENS[0], COHERE_TOKENS[2]]
    assert deltas[-1]["finish_reason"] == "stop"
    # A list that is no list: no logprobs, the answer still.
    body = orjson.dumps({**orjson.loads(body), "logprobs": {"text": "Hello"}})
    answer = cohere_completion(body, completion_id="c", created=1, model="m",
                               provider="cohere", logprobs=True)
    assert answer["choices"][0]["message"]["content"] == "Hello wörld😀"


@pytest.mark.parametrize("stream", [True, False])
async def test_openai_sdk_gets_cohere_logprobs(stream: bool, proxy: Any, upstream: Any) -> None:
    if stream:
        upstream.body = cohere_stream()
    else:
        upstream.content_type = "application/json"
        upstream.body = orjson.dumps({"id": "x", "finish_reason": "COMPLETE", "message": {
            "role": "assistant", "content": [{"type": "text", "text": "Hello wörld😀"}]},
            "logprobs": COHERE_ITEMS})
    client = openai_sdk(await proxy(provider_config("cohere", upstream.url)))
    async with client:
        answer = await client.chat.completions.create(
            model="command-a", messages=USER, stream=stream, logprobs=True, top_logprobs=2)
        if stream:
            got = [(t.token, t.logprob) async for ch in answer for choice in ch.choices
                   if choice.logprobs is not None for t in choice.logprobs.content or ()]
        else:
            got = [(t.token, t.logprob) for t in answer.choices[0].logprobs.content]
    assert got == [(t["token"], t["logprob"]) for t in COHERE_TOKENS]
    assert upstream.requests[0].json()["logprobs"] is True
