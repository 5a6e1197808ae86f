"""JSON and text edge cases end to end: request bodies that are valid but unusual, provider
answers cut anywhere, and the SSE frames written back."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamproxy.cache import entry as cache_entry
from streamproxy.errors import InvalidRequest, UpstreamStatusError
from streamproxy.openai_api.chunks import ChunkEncoder, RecordingChunkEncoder
from streamproxy.openai_api.completion import CompletionBuilder, TeeSink
from streamproxy.openai_api.content import tool_call_input
from streamproxy.openai_api.request import parse_chat_request
from streamproxy.providers.base import load_event_json
from streamproxy.providers.gemini.request import _result as gemini_tool_result
from streamproxy.providers.openai_compat import PassthroughTranslator
from streamproxy.providers.registry import PROVIDER_TYPES
from streamproxy.server.store_and_cache import FEATURES
from tests.conftest import provider_config
from tests.helpers import collect, fixture_bytes, jsonl_to_sse, make_config, sse_chunks

# Text with UTF-16 halves in it, alone or paired, as a JavaScript string cut at a code unit has.
_HALVES = st.sampled_from(["\ud83d", "\ude00", "\udbff", "\udc00", "\ud800", "\udfff"])
_TEXT = st.lists(_HALVES | st.sampled_from(["\\", "\\u", "ud800", "é", "😀", '"', "a"]),
                 max_size=8).map("".join)


def _as_a_server_reads_it(text: str) -> str:
    """Pairs joined, each half alone replaced by U+FFFD (as a UTF-16 decoder does)."""
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


@given(_TEXT)
def test_a_lone_surrogate_escape_is_read_as_u_fffd(text: str) -> None:
    """JSON.stringify (openai-node, the Vercel AI SDK) and Python's json.dumps write a lone
    UTF-16 half as a `\\ud83d` escape, valid JSON that OpenAI accepts; orjson refuses it."""
    raw = json.dumps({"model": "m", "messages": [{"role": "user", "content": text}]}).encode()
    req = parse_chat_request(raw)
    assert req.body["messages"][0]["content"] == _as_a_server_reads_it(text)
    assert orjson.loads(req.raw) == req.body  # what is forwarded says the same


async def test_a_lone_surrogate_reaches_a_translated_provider(proxy: Any, upstream: Any) -> None:
    upstream.body = jsonl_to_sse(fixture_bytes("anthropic/vercel-ai_anthropic-text.chunks.jsonl"))
    client = await proxy(provider_config("anthropic", upstream.url))
    resp = await client.post("/v1/chat/completions", data=(
        b'{"model": "m", "stream": true, "messages": [{"role": "user", "content": '
        b'"cut \\ud83d"}]}'), headers={"content-type": "application/json"})
    assert resp.status == 200, await resp.text()
    [sent] = upstream.requests
    assert sent.json()["messages"][0]["content"] in ("cut \ufffd",
                                                     [{"type": "text", "text": "cut \ufffd"}])


# -- a provider's answer with a UTF-16 half alone (a Node server cut a stream inside an emoji) --

def _openai_sse(*texts: str, finish_text: str = "") -> bytes:
    events = [{"id": "up-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
               "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
              for text in texts]
    events.append({"id": "up-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                   "choices": [{"index": 0, "delta": {"content": finish_text},
                                "finish_reason": "stop"}]})
    # json.dumps, as a Node server's JSON.stringify, writes a lone half as its escape
    return b"".join(b"data: %b\n\n" % json.dumps(e).encode() for e in events) + b"data: [DONE]\n\n"


def _chunks(body: bytes) -> list[dict[str, Any]]:
    """A stream's chunks as the openai SDK reads them (json.loads takes a lone half)."""
    frames = body.split(b"\n\n")
    assert frames.pop() == b"" and frames.pop() == b"data: [DONE]", body[-200:]
    return [json.loads(frame.removeprefix(b"data: ")) for frame in frames]


def _text(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


@given(_TEXT)
def test_an_event_with_a_lone_surrogate_escape_is_read(text: str) -> None:
    event = json.dumps({"type": "text_delta", "text": text}).encode()
    assert load_event_json(event)["text"] == _as_a_server_reads_it(text)


async def test_a_lone_surrogate_in_an_answer_is_no_502(proxy: Any, upstream: Any) -> None:
    """OpenAI's SDKs read such an answer; the proxy answered 502 upstream_protocol_error
    (streamed: the finish chunk's parse; whole: the answer's; translated: every event's)."""
    upstream.body = _openai_sse("a", finish_text="b\ud83d")
    client = await proxy(provider_config("openai", upstream.url))
    streamed = await client.post("/v1/chat/completions", json={
        "model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    assert streamed.status == 200, await streamed.text()
    assert _text(_chunks(await streamed.read())) == "ab\ud83d"  # as it came

    upstream.content_type, upstream.body = "application/json", json.dumps({
        "id": "up-1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "b\ud83d"},
                     "finish_reason": "stop"}]}).encode()
    whole = await client.post("/v1/chat/completions", json={
        "model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert whole.status == 200, await whole.text()

    upstream.content_type = "text/event-stream"
    upstream.body = b"".join(b"data: %b\n\n" % json.dumps(e).encode() for e in [
        {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
            "content": [], "stop_reason": None, "usage": {"input_tokens": 1, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "text_delta", "text": "b\ud83d"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
         "usage": {"output_tokens": 2}},
        {"type": "message_stop"}])
    client = await proxy(provider_config("anthropic", upstream.url))
    translated = await client.post("/v1/chat/completions", json={
        "model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    assert translated.status == 200, await translated.text()
    assert collect(sse_chunks(await translated.read())).content == "b\ufffd"


async def test_a_cached_pass_through_keeps_the_chunks_with_a_lone_surrogate(
        proxy: Any, upstream: Any) -> None:
    """The capture parsed each chunk with orjson and skipped those it refused: the cache
    replayed the answer without their text (here, all but ' ok'), and the client's stream
    carried the upstream's id on them and ours on the others. The emoji cut in two halves
    across the chunks is the emoji again (it was two U+FFFD), as a JavaScript client read it."""
    upstream.body = _openai_sse("a\ud83d", "\ude00b", " ok")
    client = await proxy(make_config({"up": {
        "type": "openai", "base_url": upstream.url, "api_key": "sk-test-secret",
        "default_model": "m"}}, default="up"))
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"x-portkey-config": '{"cache": {"mode": "simple"}}'}
    first = await client.post("/v1/chat/completions", json=body, headers=headers)
    ids = {chunk["id"] for chunk in _chunks(await first.read())}
    assert len(ids) == 1 and "up-1" not in ids
    await client.server.app[FEATURES].cache.drain()
    hit = await client.post("/v1/chat/completions", json=body, headers=headers)
    assert hit.headers["x-portkey-cache-status"] == "HIT"
    assert collect(sse_chunks(await hit.read())).content == "a\U0001f600b ok"


def _captured(*deltas: dict[str, Any]) -> CompletionBuilder:
    """A pass-through stream of these deltas (written as a Node server writes a cut string),
    captured as for store: true and a cache fill."""
    encoder = RecordingChunkEncoder(completion_id="c", created=1, model="m", include_usage=False)
    builder = CompletionBuilder()
    translator = PassthroughTranslator(TeeSink(encoder, builder), 1 << 20, provider="p",
                                       client_wants_usage=False)
    for i, delta in enumerate(deltas):
        translator.feed(b"data: %b\n\n" % json.dumps({
            "id": "up-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta,
                         "finish_reason": "stop" if i == len(deltas) - 1 else None}]}).encode())
    translator.feed(b"data: [DONE]\n\n")
    translator.close()
    return builder


def test_an_emoji_cut_across_pass_through_chunks_is_stored_and_cached_whole() -> None:
    """Each chunk's halves were read as U+FFFD one by one: the stored completion and the
    cache entry had two where the client's deltas joined into the emoji; a half still alone
    stays U+FFFD, and nothing kept holds a half orjson cannot write."""
    builder = _captured(
        {"content": "a\ud83d"}, {"content": "\ude00b"}, {"content": "\ud83d"},
        {"content": "\ude00"}, {"reasoning_content": "r\ud83d"}, {"reasoning_content": "\ude00"},
        {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                         "function": {"name": "f", "arguments": '{"s": "\ud83d'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '\ude00"}'}}]},
        {"content": "end \ude00"})
    completion = builder.completion(completion_id="c", created=1, model="m")
    message = completion["choices"][0]["message"]
    assert message["content"] == "a\U0001f600b\U0001f600end \ufffd"
    assert message["reasoning_content"] == "r\U0001f600"
    assert message["tool_calls"][0]["function"]["arguments"] == '{"s": "\U0001f600"}'
    assert orjson.loads(orjson.dumps(completion)) == completion

    entry = cache_entry.from_builder(builder)
    assert "".join(entry["content"]) == message["content"]
    replayed = ChunkEncoder(completion_id="c", created=1, model="m", include_usage=False)
    cache_entry.replay(orjson.loads(orjson.dumps(entry)), replayed)
    assert collect(sse_chunks(replayed.take())).content == message["content"]


# -- a request body that starts with a UTF-8 byte order mark --

_BOM = b"\xef\xbb\xbf"


def test_a_body_after_a_utf8_bom_is_read() -> None:
    """A file saved with a BOM (Windows editors), sent by `curl -d @body.json`: RFC 8259 lets a
    parser ignore the mark, and what is forwarded is the JSON without it."""
    raw = b'{"model": "m", "messages": [{"role": "user", "content": "hi \\ud83d"}]}'
    req = parse_chat_request(_BOM + raw)
    assert req.body["messages"][0]["content"] == "hi \ufffd"
    assert not req.raw.startswith(_BOM) and orjson.loads(req.raw) == req.body
    plain = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
    assert parse_chat_request(_BOM + plain).raw == plain


async def test_a_body_after_a_bom_is_answered_on_both_fronts(proxy: Any, upstream: Any,
                                                             monkeypatch: Any) -> None:
    from streamproxy.server import front
    upstream.body = _openai_sse("hello")
    for kind in front.FRONTS:
        monkeypatch.setenv(front.FRONT_ENV, kind)
        client = await proxy(provider_config("openai", upstream.url))
        body = orjson.dumps({"model": "m", "stream": True,
                             "messages": [{"role": "user", "content": "hi"}]})
        resp = await client.post("/v1/chat/completions", data=_BOM + body,
                                 headers={"content-type": "application/json"})
        assert resp.status == 200, (kind, await resp.text())
        await resp.read()
        assert upstream.requests[-1].json()["messages"] == [{"role": "user", "content": "hi"}]


# -- a non-streamed answer with a UTF-16 half alone, on a preset that rewrites answers --

def _cut_answer(reason: str, content: Any = "cut \ud83d", **extra: Any) -> bytes:
    """A completion as a Node server (OpenRouter's) writes one cut inside an emoji."""
    return json.dumps({"id": "x", "object": "chat.completion", "created": 1, "model": "m",
                       "choices": [{"index": 0, "finish_reason": reason, "message": {
                           "role": "assistant", "content": content}}], **extra}).encode()


def _translated(kind: str, body: bytes) -> Any:
    config = make_config({"p": {"type": kind, "api_key": "k", "base_url": "http://127.0.0.1:9"}})
    provider = PROVIDER_TYPES[kind](config.providers["p"])
    req = parse_chat_request(b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}')
    return provider.translate_response(body, req, completion_id="c", created=1)


def test_a_failed_finish_beside_a_lone_surrogate_is_still_an_error() -> None:
    """The preset's parse of the answer was orjson's, and on its refusal the answer went on as
    it came: an OpenRouter answer that failed inside an emoji reached the client as a 200 with
    finish_reason "error" (no retry, no fallback), Together's `eos` went out unmapped,
    Mistral's list content unflattened, Moonshot's cached tokens not where OpenAI's are."""
    for kind, reason, status in [("openrouter", "error", 502), ("mistral", "error", 502),
                                 ("deepseek", "insufficient_system_resource", 503),
                                 ("vllm", "abort", 503)]:
        with pytest.raises(UpstreamStatusError) as e:
            _translated(kind, _cut_answer(reason))
        assert (e.value.status, e.value.code) == (status, reason)
    answer = orjson.loads(_translated("together", _cut_answer("eos")))
    assert answer["choices"][0] == {"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": "cut \ufffd"}}
    answer = orjson.loads(_translated("mistral", _cut_answer(
        "stop", [{"type": "text", "text": "cut \ud83d"}])))
    assert answer["choices"][0]["message"]["content"] == "cut \ufffd"
    answer = orjson.loads(_translated("moonshot", _cut_answer("stop", usage={
        "prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10, "cached_tokens": 8})))
    assert answer["usage"]["prompt_tokens_details"]["cached_tokens"] == 8


# -- a provider's error body with a UTF-16 half alone (a message that quotes a cut string) --

_CUT_MESSAGE = "Invalid content: 'cut \ud83d'"


@pytest.mark.parametrize(("kind", "error"), [
    ("openai", {"error": {"message": _CUT_MESSAGE, "type": "invalid_request_error",
                          "param": None, "code": "bad"}}),
    ("mistral", {"object": "error", "message": _CUT_MESSAGE, "type": "invalid_request_error",
                 "param": None, "code": "bad"}),
    ("anthropic", {"type": "error", "error": {"type": "invalid_request_error",
                                              "message": _CUT_MESSAGE}}),
    ("gemini", {"error": {"code": 400, "message": _CUT_MESSAGE, "status": "INVALID_ARGUMENT"}}),
    ("bedrock", {"message": _CUT_MESSAGE}),
    ("cohere", {"message": _CUT_MESSAGE}),
])
def test_an_error_body_with_a_lone_surrogate_keeps_its_message(kind: str,
                                                               error: dict[str, Any]) -> None:
    """Each error parse was orjson's alone: the provider's message (and type, code, fields)
    was lost for "provider 'p' returned HTTP 400", and a context overflow or an exhausted
    quota quoting a cut string was not known as one."""
    entry = ({"region": "us-east-1", "aws_access_key_id": "a", "aws_secret_access_key": "b"}
             if kind == "bedrock" else {"api_key": "k", "base_url": "http://127.0.0.1:9"})
    provider = PROVIDER_TYPES[kind](make_config({"p": {"type": kind, **entry}}).providers["p"])
    err = provider.parse_error(400, json.dumps(error).encode())
    assert (err.status, err.message) == (400, "Invalid content: 'cut \ufffd'")
    assert orjson.loads(err.body())["error"]["message"] == err.message


@pytest.mark.parametrize("stream", [False, True])
async def test_a_200_error_object_with_a_lone_surrogate_is_that_error(
        proxy: Any, upstream: Any, stream: bool) -> None:
    """OpenRouter answers 200 and puts a later failure in the body: with a cut string in its
    message orjson refused it, so a non-streamed request's client got it as a 200 completion
    (no retry, no fallback), and a streamed one's a 502 "malformed" in place of its error."""
    upstream.content_type = "application/json"
    upstream.body = json.dumps({"error": {"message": _CUT_MESSAGE, "code": 429}}).encode()
    client = await proxy(provider_config("openrouter", upstream.url))
    resp = await client.post("/v1/chat/completions", json={
        "model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status == 429, await resp.text()
    assert (await resp.json())["error"]["message"] == "Invalid content: 'cut \ufffd'"


@pytest.mark.parametrize(("body", "at"), [
    ('{"model": "m", "messages": [{"role": "user", "content": "café"}]}'.encode("latin-1"), 60),
    ('{"model": "m", "messages": []}'.encode("utf-16"), 0),  # `charset=utf-16`, its BOM first
    (b'{"model": "m", "messages": [{"role": "user", "content": "\xc0\xaf"}]}', 57),  # overlong
])
def test_a_body_that_is_not_utf8_is_refused_saying_so(body: bytes, at: int) -> None:
    """orjson's reason for any bytes that are not UTF-8 is "str is not valid UTF-8: surrogates
    not allowed ... (char 0)": a client that sent latin-1 or UTF-16 (its `charset=`) was told
    of surrogates it never sent, at the body's start."""
    with pytest.raises(InvalidRequest) as e:
        parse_chat_request(body)
    assert (e.value.status, e.value.code) == (400, "invalid_json")
    assert e.value.message == ("We could not parse the JSON body of your request: it is not "
                               f"UTF-8 (byte {at}); JSON is sent as UTF-8 (RFC 8259 §8.1).")


# -- a lone UTF-16 half in JSON a client sends inside a string (a tool call's arguments) --

@pytest.mark.parametrize(("arguments", "sent"), [
    # (json.dumps, as JSON.stringify, writes a string cut inside an emoji with a lone escape)
    (json.dumps({"city": "Par\ud83d"}), b'{"city":"Par\xef\xbf\xbd"}'),
    (json.dumps({"q": "\udc00", "n": 123456789012345678901}),
     b'{"q":"\xef\xbf\xbd","n":123456789012345678901}'),  # (its big integer as written)
])
def test_arguments_with_a_lone_surrogate_escape_go_as_their_object(arguments: str,
                                                                   sent: bytes) -> None:
    """A replayed call's arguments are JSON text, and a JavaScript client's (or a Node
    server's answer it replays) may hold a lone UTF-16 half's escape, valid JSON that OpenAI
    takes. orjson refused it, and the call went to Claude, Gemini, Bedrock and Ollama as
    `{"raw_arguments": "<the text>"}`: another input than the one the model wrote."""
    assert orjson.dumps(tool_call_input(arguments)) == sent


def test_a_tool_result_with_a_lone_surrogate_escape_goes_to_gemini_as_its_object() -> None:
    assert gemini_tool_result(json.dumps({"temp": 21, "note": "cut \ud83d"}), 2) == {
        "temp": 21, "note": "cut \ufffd"}
