"""Properties of the day's new sans-IO code: the encoder's deferred role chunk against the
openai SDK's stream accumulation and the non-streamed builder; the native client's response
parser at any split; Gemini's contents for any message sequence; Portkey config inheritance of
keys and hosts. Hypothesis-generated inputs, a bounded number of fixed examples
(STREAMPROXY_FUZZ_EXAMPLES explores, as in test_fuzz.py)."""

from __future__ import annotations

import gzip
import os
import zlib
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from streamproxy.errors import InvalidRequest, UpstreamStatusError
from streamproxy.openai_api.chunks import ChunkEncoder, RecordingChunkEncoder
from streamproxy.openai_api.completion import CompletionBuilder, TeeSink
from streamproxy.openai_api.request import parse_chat_request
from streamproxy.providers.gemini.request import to_gemini
from streamproxy.routing import portkey_config
from streamproxy.server.app import create_app
from streamproxy.server.state import STATE
from streamproxy.upstream.response_parser import ResponseParser
from tests.helpers import make_config, sse_chunks
from tests.test_stream_invariants import cut

EXPLORE = int(os.environ.get("STREAMPROXY_FUZZ_EXAMPLES", "0"))
PROPERTY = settings(max_examples=EXPLORE or 150, deadline=None, derandomize=not EXPLORE,
                    suppress_health_check=[HealthCheck.too_slow])

# -- (1) any sequence of sink calls: the client's accumulation is the whole answer -------------

TAKE = ("take",)


@st.composite
def sink_calls(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    """The calls a translator makes, in an order one can: start (the model, then perhaps what
    the first block is), deltas, then finish and usage, then end — or an error anywhere; with
    `take()` (the relay's read boundary) anywhere between them."""
    model = draw(st.sampled_from([None, "up-model"]))
    if draw(st.booleans()):  # the message's start, then the first block's telling what it is
        calls: list[tuple[Any, ...]] = [("start", model, None),  # (Anthropic, Cohere)
                                        ("start", None, draw(st.booleans()))]
    else:
        calls = [("start", model, draw(st.sampled_from([None, True, False])))]
    tools = 0
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["content", "reasoning", "thinking", "tool", "args"]))
        if kind == "content":
            calls.append(("content", draw(st.sampled_from(["", "Hi", " é\"\\", "\u2028"]))))
        elif kind == "reasoning":
            calls.append(("reasoning", draw(st.sampled_from(["hm", "so"]))))
        elif kind == "thinking":
            calls.append(("thinking_block", {"type": "redacted_thinking", "data": "x"}))
        elif kind == "tool" or not tools:
            calls.append(("tool_call_start", tools, f"call_{tools}", "f",
                          draw(st.sampled_from(["", '{"a"'])))),
            tools += 1
        else:
            calls.append(("tool_call_args", draw(st.integers(0, tools - 1)), ':1}'))
    if draw(st.booleans()):
        calls.append(("finish", "tool_calls" if tools else "stop"))
    if draw(st.booleans()):
        calls.append(("usage", {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}))
    calls.append(("end",))
    if draw(st.integers(0, 5)) == 0:  # an error instead, after any call
        calls[draw(st.integers(1, len(calls) - 1)):] = [("error",)]
    takes = draw(st.lists(st.integers(0, len(calls)), max_size=len(calls) + 1))
    for at in sorted(takes, reverse=True):
        calls.insert(at, TAKE)
    return [*calls, TAKE]


def _play(sink: Any, call: tuple[Any, ...]) -> None:
    name, *args = call
    if name in ("thinking_block", "usage"):
        args = [dict(args[0])]
    elif name == "error":
        args = [UpstreamStatusError(502, "upstream failed", provider="p")]
    getattr(sink, name)(*args)


def _accumulate(body: bytes) -> tuple[dict[str, Any] | None, list[dict[str, Any]], bool]:
    """The message the openai SDK's stream helper accumulates from the client's bytes (None
    before any chunk), the chunks' deltas, and whether an error frame ended them."""
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    deltas, failed, seen = [], False, False
    for chunk in sse_chunks(body):
        assert not failed, "nothing after an error frame"
        if chunk == "[DONE]":
            continue
        if "error" in chunk:
            failed = True
            continue
        seen = True
        deltas += [choice["delta"] for choice in chunk["choices"]]
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    if not seen:
        return None, deltas, failed
    message = state.current_completion_snapshot.choices[0].message.model_dump()
    return message, deltas, failed


def _message_parts(message: dict[str, Any]) -> dict[str, Any]:
    calls = [(c["id"], c["function"]["name"], c["function"]["arguments"])
             for c in message.get("tool_calls") or ()]
    blocks = [{k: v for k, v in b.items() if k != "index"}
              for b in message.get("thinking_blocks") or ()]
    return {"content": message.get("content"), "tool_calls": calls,
            "reasoning_content": message.get("reasoning_content"), "thinking_blocks": blocks}


def _due(calls: list[tuple[Any, ...]]) -> bool:
    """Whether these calls made the role chunk due: a start that told what the answer
    begins with, or anything the answer holds."""
    return any((c[0] == "start" and c[2] is not None)
               or c[0] not in ("start", "usage", "take") for c in calls)


@PROPERTY
@given(calls=sink_calls(), record=st.booleans())
def test_any_sink_calls_accumulate_to_the_non_streamed_message(
        calls: list[tuple[Any, ...]], record: bool) -> None:
    encoder = (RecordingChunkEncoder if record else ChunkEncoder)(
        completion_id="chatcmpl-t", created=1, model="m", include_usage=True)
    builder = CompletionBuilder()  # fed the same calls, as a non-streamed answer is
    stored = CompletionBuilder()  # what store: true and a cache fill keep of the stream
    sink: Any = TeeSink(encoder, stored) if record else encoder  # type: ignore[arg-type]
    sent, done = b"", []
    for call in calls:
        if call is not TAKE:
            _play(sink, call)
            if call[0] != "error":
                _play(builder, call)
            done.append(call)
            continue
        sent += encoder.take()
        # Nothing due is held: what was sent so far is what the calls so far make.
        assert not encoder.pending
        message, deltas, failed = _accumulate(sent)
        if failed:
            continue
        if not _due(done):
            assert message is None or not any("role" in d for d in deltas), done
            continue
        assert message is not None, done
        assert [("role" in d) for d in deltas][:1] == [True], deltas
        assert sum("role" in d for d in deltas) == 1, deltas
        so_far = _message_parts(builder.message())
        got = _message_parts(message)
        assert (got["content"] or None) == (so_far["content"] or None)
        assert {**got, "content": None} == {**so_far, "content": None}
    message, deltas, failed = _accumulate(sent)
    if failed or message is None:
        return
    # Text: a content delta, or a first block told to be text (an empty one: content "").
    # Null only when calls came instead; an answer with nothing in it, or only reasoning, is
    # "", as OpenAI's.
    told = [c[2] for c in calls if c[0] == "start"][-1]
    texts = told is True or any(c[0] == "content" for c in calls)
    calls_only = any(c[0] == "tool_call_start" for c in calls)
    assert (message["content"] is None) == (not texts and calls_only), (calls, message)
    assert message["role"] == "assistant"
    assert _message_parts(message) == _message_parts(builder.message()), calls
    if record:
        assert _message_parts(stored.message()) == _message_parts(message), calls


# -- (2) the native client's response parser: any valid response at any split ------------------

def _compress(body: bytes, encoding: str, pieces: int) -> bytes:
    """gzip (perhaps several members), deflate with its zlib header or raw."""
    if encoding == "gzip":
        cut = len(body) // 2 if pieces > 1 else len(body)
        return b"".join(gzip.compress(part) for part in (body[:cut], body[cut:]) if part) \
            or gzip.compress(b"")
    wbits = zlib.MAX_WBITS if encoding == "deflate" else -zlib.MAX_WBITS
    packer = zlib.compressobj(wbits=wbits)
    return packer.compress(body) + packer.flush()


@st.composite
def responses(draw: st.DrawFn) -> tuple[bytes, bytes, bool]:
    """A valid HTTP/1.1 response (interim ones before it, any framing and coding, extensions
    and trailers), the body it carries, and whether its connection may be reused."""
    body = draw(st.binary(max_size=300) | st.sampled_from([b"", b"data: {}\r\n\r\n" * 9]))
    coding = draw(st.sampled_from(["", "gzip", "deflate", "raw-deflate"]))
    wire = _compress(body, coding, draw(st.integers(1, 2))) if coding else body
    framing = draw(st.sampled_from(["length", "chunked", "both", "close"]))
    headers = [b"Content-Type: text/event-stream"]
    if coding:
        headers.append(b"Content-Encoding: " + (b"deflate" if "deflate" in coding
                                                 else b"gzip"))
    if framing == "close":
        headers.append(b"Connection: close")
        payload = wire
    elif framing == "length":
        headers.append(b"Content-Length: %d" % len(wire))
        payload = wire
    else:
        headers.append(b"Transfer-Encoding: chunked")
        if framing == "both":  # TE overrides CL (RFC 9112 6.3): read chunked, never reused
            headers.append(b"Content-Length: %d" % (len(wire) + 3))
        chunks, pos = [], 0
        for size in draw(st.lists(st.integers(1, 64), max_size=12)):
            if pos >= len(wire):
                break
            piece = wire[pos:pos + size]
            pos += len(piece)
            ext = draw(st.sampled_from([b"", b";a=b", b' ; name="v;x"']))
            chunks.append(b"%x%b\r\n%b\r\n" % (len(piece), ext, piece))
        if pos < len(wire):
            chunks.append(b"%X\r\n%b\r\n" % (len(wire) - pos, wire[pos:]))
        trailers = draw(st.sampled_from([b"", b"X-Trailer: 1\r\n", b"A: b\r\nC: d\r\n"]))
        payload = b"".join(chunks) + b"0\r\n" + trailers + b"\r\n"
    interim = draw(st.sampled_from([b"", b"HTTP/1.1 100 Continue\r\n\r\n"]))
    head = b"\r\n".join([b"HTTP/1.1 200 OK", *headers]) + b"\r\n\r\n"
    return interim + head + payload, body, framing in ("length", "chunked")


def _parse(reads: list[bytes]) -> tuple[bytes, ResponseParser]:
    parser = ResponseParser()
    out = b"".join(parser.feed(read) for read in reads)
    if not parser.done:
        parser.eof()
    return out, parser


@PROPERTY
@given(response=responses(), points=st.lists(st.integers(0, 5_000), max_size=10),
       after=st.sampled_from([b"", b"\r\n", b"HTTP/1.1 200 OK\r\n"]))
def test_any_valid_response_at_any_split_gives_its_body(
        response: tuple[bytes, bytes, bool], points: list[int], after: bytes) -> None:
    raw, body, reusable = response
    if b"Connection: close" in raw:
        after = b""  # (read until the close: whatever follows is its body)
    whole, parser = _parse([raw + after])
    assert whole == body and parser.done
    reused = parser.head is not None and parser.head.keep_alive and not parser.extra
    # Bytes after the response (a stray CRLF, a second response) never go back to the pool.
    assert reused == (reusable and not after), (parser.extra, after)
    data = raw + after
    for reads in (cut(data, points), [data[i:i + 1] for i in range(len(data))]):
        got, split = _parse(reads)
        assert got == body and split.done
        assert (split.head is not None and split.head.keep_alive and not split.extra) == reused


# -- (3) Gemini's contents for any OpenAI message sequence --------------------------------------

_TEXTS = st.sampled_from(["", "hi", [], [{"type": "text", "text": "a"}],
                          [{"type": "text", "text": ""}, {"type": "text", "text": "b"}]])


@st.composite
def conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A valid OpenAI message sequence: system/developer anywhere, user and assistant turns in
    any order, and each assistant's tool calls answered by tool messages right after it (in
    any order), as OpenAI requires."""
    messages: list[dict[str, Any]] = []
    calls = 0
    for _ in range(draw(st.integers(0, 10))):
        kind = draw(st.sampled_from(["system", "developer", "user", "assistant", "tools"]))
        if kind in ("system", "developer", "user"):
            messages.append({"role": kind, "content": draw(_TEXTS) or "x"
                             if kind != "user" else draw(_TEXTS)})
        elif kind == "assistant":
            messages.append({"role": "assistant", "content": draw(st.sampled_from(
                [None, "", "ok"]))})
        else:
            ids = [f"call_{calls + i}" for i in range(draw(st.integers(1, 3)))]
            calls += len(ids)
            messages.append({"role": "assistant", "content": draw(st.sampled_from([None, "ok"])),
                             "tool_calls": [{"id": i, "type": "function", "function": {
                                 "name": "f", "arguments": "{}"}} for i in ids]})
            for call_id in draw(st.permutations(ids)):
                messages.append({"role": "tool", "tool_call_id": call_id,
                                 "content": draw(st.sampled_from(["", "42", '{"a": 1}']))})
    return messages


@PROPERTY
@given(messages=conversations(), model=st.sampled_from(["gemini-2.5-flash", "gemini-3-pro"]))
def test_gemini_contents_alternate_and_keep_results_apart(messages: list[dict[str, Any]],
                                                          model: str) -> None:
    contents = to_gemini({"model": model, "messages": messages}, model)["contents"]
    assert contents
    results = ["functionResponse" in c["parts"][0] for c in contents]
    for content, holds in zip(contents, results, strict=True):
        assert content["role"] in ("user", "model") and content["parts"]
        # Function responses share a content with nothing else, and only a user one.
        assert all(("functionResponse" in p) == holds for p in content["parts"]), content
        assert not holds or content["role"] == "user"
    for i in range(1, len(contents)):
        before, now = contents[i - 1], contents[i]
        # Turns alternate; two user contents in a row only across a results boundary.
        assert before["role"] != "model" or now["role"] != "model", contents
        if before["role"] == now["role"] == "user":
            assert results[i - 1] != results[i], contents
        if results[i]:  # the answers of the model turn right before, one each
            assert before["role"] == "model", contents
            asked = [p for p in before["parts"] if "functionCall" in p]
            assert len(now["parts"]) == len(asked), contents


# -- (4) config inheritance: keys and hosts -----------------------------------------------------

_PROVIDERS = {"p1": "openai", "p2": "anthropic", "p3": "openai"}
_VIRTUAL = {"vk1": "p1", "vk2": "p2"}
_HOSTS = ("https://h1.example.com", "https://h2.example.com")


@pytest.fixture(scope="module")
def gateway() -> Any:
    config = make_config(
        {name: {"type": kind, "base_url": f"https://{name}.example.com",
                "api_key": f"op-{name}", "default_model": "m"}
         for name, kind in _PROVIDERS.items()},
        default="p1",
        virtual_keys={vk: {"provider": name, "api_key": f"vk-{name}"}
                      for vk, name in _VIRTUAL.items()},
        allowed_custom_hosts=[h.removeprefix("https://") for h in _HOSTS])
    return create_app(config)[STATE].gateway


@st.composite
def config_trees(draw: st.DrawFn, depth: int = 0) -> dict[str, Any]:
    """A config node with any of provider / virtual_key / api_key / custom_host, and targets
    below it (to depth 3). An api_key is named after the node that gave it."""
    node: dict[str, Any] = {}
    if draw(st.booleans()):
        node["provider"] = draw(st.sampled_from(["p1", "p2", "p3", "@p1"]))
    if draw(st.integers(0, 3)) == 0:
        node["virtual_key"] = draw(st.sampled_from(sorted(_VIRTUAL)))
    if draw(st.booleans()):
        node["api_key"] = "key"  # named at the end, by its path
    if draw(st.integers(0, 2)) == 0:
        node["custom_host"] = draw(st.sampled_from(_HOSTS))
    if depth < 3 and draw(st.booleans()):
        node["strategy"] = {"mode": "fallback"}
        node["targets"] = [draw(config_trees(depth + 1)) for _ in range(draw(st.integers(1, 3)))]
    return node


def _given_keys(raw: dict[str, Any], path: str, provider: str | None,
                out: dict[str, str | None]) -> None:
    """Each api_key (renamed after its node's path) → the provider it was given for: its node's
    own or inherited one (a virtual key's, when the node names that), None when none is."""
    if "virtual_key" in raw and "provider" not in raw:
        provider = _VIRTUAL[raw["virtual_key"]]
    elif "provider" in raw:
        provider = raw["provider"].removeprefix("@")
    if "api_key" in raw:
        raw["api_key"] = f"key@{path}"
        out[raw["api_key"]] = provider
    for i, child in enumerate(raw.get("targets", ())):
        _given_keys(child, f"{path}.targets[{i}]", provider, out)


@PROPERTY
@given(tree=config_trees())
def test_a_targets_key_is_only_ever_one_given_for_its_provider(gateway: Any,
                                                                tree: dict[str, Any]) -> None:
    given_for: dict[str, str | None] = {}
    _given_keys(tree, "config", None, given_for)
    hosts = {h for h in _HOSTS if h in orjson.dumps(tree).decode()}
    headers = {"authorization": "Bearer sk-client"}
    req = parse_chat_request(orjson.dumps({"model": "m", "messages": [
        {"role": "user", "content": "hi"}]}))
    for leaf in portkey_config.parse_config(tree).leaves():
        try:
            target = gateway.resolve_leaf(leaf, headers, req, {})
        except InvalidRequest as e:  # a virtual key of another provider than the one named
            assert e.param == f"{leaf.path}.provider", e.message
            assert _VIRTUAL[leaf.virtual_key] != leaf.provider.removeprefix("@")
            continue
        name = target.provider.name
        key = target.api_key
        if key in given_for:  # a config's key: given for this provider, or for none named
            assert given_for[key] in (None, name), (leaf.path, key, name, tree)
        else:  # the provider's own, a virtual key's for it, or the client's
            assert key in (f"op-{name}", f"vk-{name}", "sk-client"), (leaf.path, key, tree)
        base = target.provider.cfg.base_url
        assert base == f"https://{name}.example.com" or base in hosts, (leaf.path, base)


def test_a_virtual_key_for_another_provider_than_the_one_named_is_a_400(gateway: Any) -> None:
    # vk2 holds p2's secret: named beside provider p1, it went to p1 (and to p1's custom host).
    req = parse_chat_request(b'{"model":"m","messages":[{"role":"user","content":"hi"}]}')
    tree = {"strategy": {"mode": "fallback"}, "targets": [
        {"provider": "@p2", "virtual_key": "vk2"}, {"provider": "p1", "virtual_key": "vk2"}]}
    same, other = portkey_config.parse_config(tree).leaves()
    assert gateway.resolve_leaf(same, {}, req, {}).api_key == "vk-p2"
    with pytest.raises(InvalidRequest) as e:
        gateway.resolve_leaf(other, {}, req, {})
    assert (e.value.param, e.value.code) == ("config.targets[1].provider", "invalid_config")
    assert "vk-p2" not in e.value.message
