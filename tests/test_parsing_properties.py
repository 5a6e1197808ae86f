"""Properties of the sans-IO parsing added last: the pass-through's numbering of tool calls sent
without `index` and its end without `[DONE]`, the error objects an upstream sends (kept fields,
the key masked), and the cache entries a hit answers from. Hypothesis-generated inputs, a
bounded number of fixed examples (STREAMPROXY_FUZZ_EXAMPLES explores, as in test_fuzz.py)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamproxy.cache import entry as cache_entry
from streamproxy.cache.backends import MemoryCache
from streamproxy.cache.config import parse_cache_settings
from streamproxy.cache.service import ResponseCache
from streamproxy.errors import ProxyError, UpstreamStatusError
from streamproxy.openai_api.chunks import ChunkEncoder
from streamproxy.openai_api.completion import CompletionBuilder
from streamproxy.openai_api.request import parse_chat_request
from streamproxy.providers.base import generic_error
from streamproxy.providers.openai_compat import PassthroughTranslator, error_answer, error_object
from streamproxy.record import RequestRecord
from streamproxy.routing.planner import Attempt
from streamproxy.routing.target import Target
from streamproxy.server.app import build_providers
from tests.helpers import DecodingEncoder, make_config, relay_pieces, sse_chunks
from tests.test_stream_invariants import STYLES, cut, reframe, spell

EXPLORE = int(os.environ.get("STREAMPROXY_FUZZ_EXAMPLES", "0"))
PROPERTY = settings(max_examples=EXPLORE or 100, deadline=None, derandomize=not EXPLORE,
                    suppress_health_check=[HealthCheck.too_slow])

# -- (1) tool calls without `index`, at any split -----------------------------------------------

_ENVELOPE = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 7, "model": "g"}


@st.composite
def indexless_stream(draw: st.DrawFn) -> tuple[bytes, list[tuple[str | None, str, str]]]:
    """A stream of tool calls without `index`, as Gemini's endpoint (each call whole, several
    in a chunk) and older Ollama servers (id and name first, then arguments in deltas with
    neither) send them, in any spelling and framing; and the calls a client must get."""
    calls = []
    deltas: list[list[dict[str, Any]]] = []  # the tool_calls of each chunk
    for number in range(draw(st.integers(1, 4))):
        name = draw(st.sampled_from(["weather", "time", "f"]))
        args = draw(st.lists(st.sampled_from(['{"a"', ":1", "}", "", '"é/\\"']), max_size=3))
        # a fresh id, an empty one (some proxies in front of Gemini), or none
        call_id = draw(st.sampled_from([f"call_{number}", "", None]))
        first: dict[str, Any] = {"type": "function",
                                 "function": {"name": name, "arguments": "".join(args[:1])}}
        if call_id is not None:
            first = {"id": call_id, **first} if draw(st.booleans()) else {**first, "id": call_id}
        if deltas and draw(st.booleans()):
            deltas[-1].append(first)  # in the chunk of the call before it
        else:
            deltas.append([first])
        deltas += [[{"function": {"arguments": a}}] for a in args[1:]]
        calls.append((call_id, name, "".join(args)))
    finish = draw(st.sampled_from(["stop", "tool_calls"]))

    def event(choice: dict[str, Any], **extra: Any) -> bytes:
        chunk = {**_ENVELOPE, "choices": [choice] if choice else [], **extra}
        return b"data: " + spell(chunk, draw(STYLES)) + b"\n\n"

    events = [event({"index": 0, "delta": {"role": "assistant", "content": ""}})]
    events += [event({"index": 0, "delta": {"tool_calls": d}, "finish_reason": None})
               for d in deltas]
    if draw(st.booleans()):  # the finish on the last call's chunk
        events[-1] = event({"index": 0, "delta": {"tool_calls": deltas[-1]},
                            "finish_reason": finish})
    else:
        events.append(event({"index": 0, "delta": {}, "finish_reason": finish}))
    if draw(st.booleans()):
        events.append(event({}, usage={"prompt_tokens": 1, "completion_tokens": 2,
                                       "total_tokens": 3}))
    if draw(st.booleans()):  # (some servers close right after the finish and usage chunks)
        events.append(b"data: [DONE]\n\n")
    if draw(st.booleans()):
        events = reframe(events, draw)
    body = b"".join(events)
    if draw(st.booleans()):  # the last event cut off before its blank line
        body = body.rstrip(b"\r\n")
    return body, calls


def _client_bytes(reads: list[bytes], encoder: type[ChunkEncoder] = ChunkEncoder) -> bytes:
    enc = encoder(completion_id="chatcmpl-t", created=1, model="m", include_usage=True)
    tr = PassthroughTranslator(enc, 1 << 20, provider="p", client_wants_usage=True,
                               tools_offered=True)
    return relay_pieces(enc, tr, reads)


def _accumulated(body: bytes) -> list[tuple[int, str, str, str]]:
    """The calls as the openai SDK accumulates them, by `index`: (index, id, name, arguments),
    in the order they started; the stream must end in `[DONE]`, its finish `tool_calls`."""
    chunks = sse_chunks(body)
    assert chunks[-1] == "[DONE]"
    calls: dict[int, list[Any]] = {}
    finishes = []
    for chunk in chunks[:-1]:
        assert "error" not in chunk, chunk
        for choice in chunk["choices"]:
            if choice.get("finish_reason"):
                finishes.append(choice["finish_reason"])
            for tc in (choice.get("delta") or {}).get("tool_calls") or ():
                index = tc["index"]
                assert isinstance(index, int), tc
                fn = tc.get("function") or {}
                if index not in calls:
                    calls[index] = [index, tc.get("id"), fn.get("name"), ""]
                calls[index][3] += fn.get("arguments") or ""
    assert finishes == ["tool_calls"]  # (Gemini ends its streamed calls with "stop")
    return [tuple(call) for call in calls.values()]  # type: ignore[misc]


@PROPERTY
@given(stream=indexless_stream(), points=st.lists(st.integers(0, 10_000), max_size=8))
def test_indexless_tool_calls_at_any_split_are_numbered_in_order(
        stream: tuple[bytes, list[tuple[str | None, str, str]]], points: list[int]) -> None:
    body, calls = stream
    whole = _client_bytes([body])
    assert _accumulated(whole) == [(i, *call) for i, call in enumerate(calls)]
    assert _client_bytes(cut(body, points)) == whole
    assert _client_bytes([body[i : i + 1] for i in range(len(body))]) == whole
    assert _client_bytes(cut(body, points), DecodingEncoder) == whole


# -- (2) any error object: OpenAI's shape ------------------------------------------------------

_SCALARS = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
            | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=6))


def nested(value: Any, levels: int, in_list: bool) -> Any:
    for _ in range(levels):
        value = [value] if in_list else {"x": value}
    return value


def error_objects(strings: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    """Error objects with OpenAI's field names holding any JSON, extras, deep nests; or any JSON
    value in their place."""
    values = st.recursive(_SCALARS | strings, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(strings, inner, max_size=3), max_leaves=12)
    deep = st.builds(nested, values, st.integers(0, 300), st.booleans())
    fields = st.dictionaries(
        st.sampled_from(["message", "type", "code", "param", "status", "msg", "detail",
                         "metadata", "innererror"]) | strings, values | deep, max_size=6)
    return fields | values | deep


def _shaped(err: ProxyError) -> dict[str, Any]:
    body = orjson.loads(err.body())
    error = body["error"]
    assert isinstance(error["message"], str) and error["message"]
    for name in ("type", "code", "param"):
        assert error[name] is None or isinstance(error[name], str), (name, error[name])
    return body  # type: ignore[no-any-return]


def _errors_from(error: Any) -> list[UpstreamStatusError]:
    """The error an upstream's error object becomes on each path: an event of a stream, a
    non-streamed 200's body, an HTTP error's body (compatible and not)."""
    out = [error_object(error, "p")]
    try:
        body = orjson.dumps({"error": error})
    except orjson.JSONEncodeError:  # (deeper than orjson writes: built by hand)
        return out
    answer = error_answer(body, "p")
    if error:
        assert answer is not None
        out.append(answer)
    out += [generic_error(status, raw, "p", keep_fields=keep)
            for status in (400, 502) for raw in (body, orjson.dumps(error))
            for keep in (True, False)]
    return out


@PROPERTY
@given(error=error_objects(st.text(max_size=6)))
def test_any_error_object_becomes_an_openai_shaped_error(error: Any) -> None:
    for err in _errors_from(error):
        _shaped(err)


@PROPERTY
@given(error=error_objects(st.text(max_size=6)))
def test_any_error_event_ends_the_stream_in_an_openai_shaped_error_frame(error: Any) -> None:
    enc = ChunkEncoder(completion_id="chatcmpl-t", created=1, model="m", include_usage=True)
    tr = PassthroughTranslator(enc, 1 << 20, provider="p", client_wants_usage=True)
    try:
        tr.feed(b'data: {"error":' + _dumps_deep(error) + b"}\n\n")
        if not tr.done:
            tr.close()
    except ProxyError as e:  # the relay's error frame
        enc.error(e)
    frames = sse_chunks(enc.take())
    assert len(frames) == 1 and "error" in frames[0]
    error_frame = frames[0]["error"]
    assert isinstance(error_frame["message"], str) and error_frame["message"]
    for name in ("type", "code", "param"):
        assert error_frame[name] is None or isinstance(error_frame[name], str)


def _dumps_deep(value: Any) -> bytes:
    """JSON for any value, nests deeper than orjson writes included."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        if isinstance(value, list):
            return b"[" + b",".join(map(_dumps_deep, value)) + b"]"
        return b"{" + b",".join(orjson.dumps(k) + b":" + _dumps_deep(v)
                                for k, v in value.items()) + b"}"


# -- the key masked ---------------------------------------------------------------------------

# The key's alphabet (as API keys have) cannot spell JSON syntax, a number or a literal, nor a
# run of our own messages: an occurrence in the JSON is the key, not a coincidence. Some keys
# end as they begin, so that two copies in an echo can overlap.
_KEY_CHARS = st.text(alphabet="skQZ-_", min_size=1, max_size=3)
KEYS = (st.text(alphabet="skQZ-_", min_size=8, max_size=20)
        | st.builds(lambda edge, middle: edge + middle + edge, _KEY_CHARS,
                    st.text(alphabet="skQZ-_", min_size=6, max_size=16)))


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *_strings(v)]]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []


@st.composite
def key_and_error(draw: st.DrawFn) -> tuple[str, Any]:
    key = draw(KEYS)
    # the key, parts of it, and the key after a part of it (two copies that may overlap)
    parts = [key, *(key[i:] for i in range(1, len(key))), *(key[:i] for i in range(1, len(key)))]
    pieces = (st.sampled_from(parts) | st.sampled_from(parts).map(lambda part: part + key)
              | st.text(max_size=4))
    echoing = st.lists(pieces, min_size=1, max_size=4).map("".join)
    return key, draw(error_objects(echoing))


@PROPERTY
@given(case=key_and_error())
def test_a_masked_error_holds_the_key_nowhere(case: tuple[str, Any]) -> None:
    key, error = case
    for err in _errors_from(error):
        err.mask(key)
        body = _shaped(err)
        assert key.encode() not in err.body()
        assert not [s for s in _strings(body) if key in s]


# -- (3) any cache entry: a hit or a miss --------------------------------------------------------

class _StoredEntry(MemoryCache):
    """The entry a backend holds under any key (both give back JSON objects only)."""

    def __init__(self, entry: dict[str, Any]) -> None:
        super().__init__(1, 1 << 20)
        self.entry = entry

    async def get(self, key: str) -> dict[str, Any] | None:
        return self.entry


class _Exchange(dict[Any, Any]):
    """The chat request's side of the cache (server/exchange.py `Exchange`): its headers, and
    the status noted on it."""

    headers: dict[str, str] = {}


_CONFIG = make_config({"mock": {"type": "mock", "default_model": "fast"}})
_ATTEMPT = Attempt(Target(build_providers(_CONFIG)["mock"], "fast"), "config",
                   cache={"mode": "simple"})


def _looked_up(entry: dict[str, Any], stream: bool) -> tuple[bool, bytes | None]:
    """Whether the cache answered a request from `entry` (a hit), and what the client got."""
    req = parse_chat_request(orjson.dumps({"model": "mock/fast", "stream": stream,
                                           "messages": [{"role": "user", "content": "Hi"}]}))
    cache = ResponseCache(parse_cache_settings(_CONFIG))
    cache.backend = _StoredEntry(entry)  # (an empty backend is falsy: the constructor's default)
    record = RequestRecord("t")
    cache.before_upstream(_Exchange(), req, [_ATTEMPT], record)
    assert record.lookup is not None
    body = asyncio.run(record.lookup(0, record))  # (the executor's, before the target's request)
    return body is not None, body


def _valid_entries() -> list[dict[str, Any]]:
    """A streamed fill with every kind of run, and a non-streamed one."""
    b = CompletionBuilder()
    b.start("m")
    b.reasoning("hm")
    b.thinking_block({"type": "thinking", "thinking": "hm", "signature": "s"})
    b.content("Hi")
    b.tool_call_start(0, "call_a", "f")
    b.tool_call_args(0, "{}")
    b.tool_call_start(1, "call_b", "g", "{}")
    b.finish("tool_calls")
    b.usage({"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3})
    streamed = cache_entry.from_builder(b)
    whole = cache_entry.from_completion(b.completion(completion_id="x", created=1, model="m"))
    return [orjson.loads(orjson.dumps(e)) for e in (streamed, whole)]


_ANY_JSON = error_objects(st.text(max_size=6))  # (any JSON value, deep ones among them)
# Any count, large ones among the first tried: a start, which takes no part, or a kind no fill
# has, repeated that often. (Larger ones are the same to the check that bounds them: before it,
# a run of 10**13 replayed for ever, and a regression must fail, not hang.)
_ANY_COUNT = st.sampled_from([50, 10**5, 1, 0, -1]) | st.integers(-(10**5), 10**5)
_ANY_RUN = st.tuples(st.sampled_from("sx") | st.sampled_from("crtSa"), st.integers(-1, 2),
                     _ANY_COUNT).map(list)


@st.composite
def cache_entries(draw: st.DrawFn) -> dict[str, Any]:
    """A valid entry with parts of it replaced by any JSON (a field, a part, a run's field), or
    a streamed fill's run by any run."""
    entry: Any = draw(st.sampled_from(_valid_entries()))
    for _ in range(draw(st.integers(1, 3))):
        runs = entry.get("runs")
        if isinstance(runs, list) and runs and draw(st.booleans()):
            at = draw(st.integers(0, len(runs) - 1))
            if draw(st.booleans()):  # any count in a fill's run
                runs[at] = [*runs[at][:2], draw(_ANY_COUNT)]
            else:  # any run among a fill's
                runs.insert(at, draw(_ANY_RUN))
            continue
        node, path = entry, []
        while isinstance(node, dict | list) and node and draw(st.integers(0, 2)):
            step = draw(st.sampled_from(sorted(node) if isinstance(node, dict)
                                        else range(len(node))))
            node, path = node[step], [*path, step]
        if not path or path[0] in ("format", "stored_at"):
            continue  # (an entry that is not ours, or not fresh, is not read: a miss)
        parent = entry
        for step in path[:-1]:
            parent = parent[step]
        parent[path[-1]] = draw(_ANY_JSON)
    return entry  # type: ignore[no-any-return]


@pytest.mark.parametrize("run", [["s", 0, 1000], ["x", 0, 10**7]], ids=["starts", "unknown"])
def test_a_run_its_parts_cannot_fill_is_a_miss(run: list[Any]) -> None:
    # (a corrupted count replayed for as long as it said: 10**13 for ever)
    entry = _valid_entries()[0]
    entry["runs"].append(run)
    assert _looked_up(entry, stream=True) == (False, None)


def _parts(entry: dict[str, Any]) -> int:
    """A streamed fill's parts: its deltas, and its calls' starts."""
    return (len(entry["content"]) + len(entry["reasoning"]) + len(entry["thinking"])
            + sum(1 + len(tool["args"]) for tool in entry["tools"]))


@PROPERTY
@given(entry=cache_entries(), stream=st.booleans())
def test_any_cache_entry_is_a_hit_or_a_miss(entry: dict[str, Any], stream: bool) -> None:
    hit, body = _looked_up(entry, stream)
    if not hit:
        assert body is None
    elif stream:
        frames = sse_chunks(body or b"")
        assert frames[-1] == "[DONE]"
        if "completion" not in entry:  # a chunk per part at most (and role, finish, usage)
            assert len(frames) <= 4 + _parts(entry)
    else:
        assert isinstance(orjson.loads(body or b""), dict)
