"""Fuzzing the client side: Hypothesis-generated request bodies — random JSON, valid bodies with
wrong types everywhere, structurally and byte-wise mutated valid bodies — against a running
proxy with the in-process mock. Every answer is 2xx/4xx JSON (or a well-formed stream), never a
500 or a crash. The same bodies also go through each translator's request side directly, where
the only exception allowed is our typed error."""

from __future__ import annotations

import asyncio
import http.client
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamproxy.config import load_config, parse_config
from streamproxy.errors import InvalidRequest, ProxyError
from streamproxy.openai_api import request
from streamproxy.openai_api.request import Limits, parse_chat_request
from streamproxy.providers.registry import PROVIDER_TYPES
from streamproxy.routing.target import Target
from streamproxy.server.app import create_app, http_limits
from tests.helpers import TRANSLATOR_MODELS, collect, sse_chunks

# Fixed examples by default (bounded, reproducible); STREAMPROXY_FUZZ_EXAMPLES=5000 explores.
EXPLORE = int(os.environ.get("STREAMPROXY_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=EXPLORE or 120, deadline=None, derandomize=not EXPLORE,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SCALE = max(1, EXPLORE // 120)

# -- a proxy on loopback, in its own thread, so Hypothesis drives plain synchronous tests ------


@pytest.fixture(scope="module")
def live_port() -> Iterator[int]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    config = load_config(None)  # the embedded default: in-process mock, both wire formats

    async def start() -> tuple[web.AppRunner, int]:
        runner = web.AppRunner(create_app(config), handler_cancellation=True, access_log=None,
                               **http_limits(config))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    runner, port = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    try:
        yield port
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def post(port: int, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/v1/chat/completions", body=body,
                     headers={"content-type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.getheader("content-type") or "", resp.read()
    finally:
        conn.close()


def check_answer(status: int, content_type: str, body: bytes) -> None:
    assert 200 <= status < 500, (status, body[:500])
    if content_type.startswith("text/event-stream"):
        assert status == 200
        c = collect(sse_chunks(body))  # a strict client's invariants hold
        assert c.done or c.error is not None
        if c.error is not None:
            assert c.error["code"] != "internal_error", c.error
        return
    assert content_type.startswith("application/json"), content_type
    obj = orjson.loads(body)
    assert isinstance(obj, dict)
    if status >= 400:
        assert set(obj) == {"error"}
        assert set(obj["error"]) == {"message", "type", "param", "code"}
        assert isinstance(obj["error"]["message"], str) and obj["error"]["message"]
    else:
        assert obj["object"] == "chat.completion"


# -- strategies -----------------------------------------------------------------------------

SCALARS = (st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
# Fast mock answers only: the mock reads its knobs from the model name.
MODELS = st.sampled_from(["mock/fast:tokens=3", "mock-openai/fast:tokens=3", "fast:tokens=2",
                          "@mock/tool", "mock-openai/tool", "nope/x", "@nope/x", ""]) | st.text(
    alphabet="abcdefghijklmnop/-_.@", max_size=12)


def maybe(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A field's valid value, or one time in eight any JSON value at all (the wrong type, most
    of the time): rare enough that many bodies pass validation and reach the translators with
    one odd field deep inside."""
    return st.integers(0, 7).flatmap(lambda i: JSON if i == 0 else valid)


TEXT_PART = st.fixed_dictionaries({"type": st.just("text"), "text": maybe(st.text(max_size=10))})
IMAGE_PART = st.fixed_dictionaries({"type": st.just("image_url"), "image_url": maybe(
    st.fixed_dictionaries({"url": maybe(st.sampled_from([
        "https://example.com/a.png", "data:image/png;base64,AAAA", "data:,x", "ftp://x"]))}))})
FILE_PART = st.fixed_dictionaries({"type": st.just("file"), "file": maybe(
    st.fixed_dictionaries({"file_data": maybe(st.just("data:application/pdf;base64,AAAA"))}))})
PART = maybe(TEXT_PART | IMAGE_PART | FILE_PART)
CONTENT = maybe(st.text(max_size=20) | st.lists(PART, max_size=3) | st.none())
TOOL_CALL = maybe(st.fixed_dictionaries({
    "id": maybe(st.just("call_1")), "type": st.just("function"),
    "function": maybe(st.fixed_dictionaries({"name": maybe(st.just("get_weather")),
                                             "arguments": maybe(st.just('{"city": "P"}'))}))}))
MESSAGE = maybe(st.fixed_dictionaries(
    {"role": maybe(st.sampled_from(["system", "developer", "user", "assistant", "tool",
                                    "function"]))},
    optional={"content": CONTENT, "tool_calls": maybe(st.lists(TOOL_CALL, max_size=2)),
              "tool_call_id": maybe(st.just("call_1")), "name": maybe(st.just("n")),
              "thinking_blocks": maybe(st.lists(maybe(st.fixed_dictionaries({
                  "type": st.just("thinking"), "thinking": st.text(max_size=5),
                  "signature": st.just("sig")})), max_size=2))}))
TOOL = maybe(st.fixed_dictionaries({"type": st.just("function"), "function": maybe(
    st.fixed_dictionaries({"name": maybe(st.just("get_weather"))},
                          optional={"description": maybe(st.text(max_size=5)),
                                    "parameters": maybe(st.just({"type": "object"}))}))}))
BODY = st.fixed_dictionaries({"messages": maybe(st.lists(MESSAGE, min_size=1, max_size=4))},
                             optional={
    "model": maybe(MODELS),
    "stream": maybe(st.booleans()),
    "stream_options": maybe(st.fixed_dictionaries({"include_usage": maybe(st.booleans())})),
    "max_tokens": maybe(st.integers(1, 100)),
    "max_completion_tokens": maybe(st.integers(1, 100)),
    "n": maybe(st.integers(1, 2)),
    "temperature": maybe(st.floats(0, 2)),
    "top_p": maybe(st.floats(0, 1)),
    "stop": maybe(st.text(max_size=3) | st.lists(st.text(max_size=3), max_size=2)),
    "tools": maybe(st.lists(TOOL, max_size=2)),
    "tool_choice": maybe(st.sampled_from(["auto", "none", "required"])
                         | st.fixed_dictionaries({"type": st.just("function"), "function": maybe(
                             st.fixed_dictionaries({"name": maybe(st.just("get_weather"))}))})),
    "parallel_tool_calls": maybe(st.booleans()),
    "response_format": maybe(st.fixed_dictionaries({"type": maybe(st.sampled_from(
        ["text", "json_object", "json_schema"]))}, optional={"json_schema": maybe(
            st.fixed_dictionaries({"name": st.just("s"), "schema": maybe(st.just(
                {"type": "object"}))}))})),
    "reasoning_effort": maybe(st.sampled_from(["none", "minimal", "low", "medium", "high",
                                               "xhigh", "max"])),
    "user": maybe(st.text(max_size=5)),
    "metadata": maybe(st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2)),
    "fallback_models": maybe(st.lists(st.text(max_size=5), max_size=2)),
    "retries": maybe(st.integers(0, 3)),
    "top_k": JSON, "thinking": JSON, "seed": JSON, "logit_bias": JSON,
})

VALID = {
    "model": "mock/fast:tokens=3", "stream": True, "stream_options": {"include_usage": True},
    "max_tokens": 20, "temperature": 0.5, "stop": ["\n\nUser:"],  # (Claude: not blank)
    "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "weather?"},
                                     {"type": "image_url",
                                      "image_url": {"url": "data:image/png;base64,AAAA"}}]},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ],
    "tools": [{"type": "function", "function": {"name": "get_weather",
                                                "parameters": {"type": "object"}}}],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "response_format": {"type": "json_schema", "json_schema": {"name": "s",
                                                               "schema": {"type": "object"}}},
}


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    """VALID with a few nodes anywhere in its tree replaced by random JSON or removed."""
    body = orjson.loads(orjson.dumps(VALID))
    for _ in range(draw(st.integers(1, 4))):
        node, key = body, None
        for _depth in range(draw(st.integers(0, 5))):
            keys = list(node) if isinstance(node, dict) else list(range(len(node))) \
                if isinstance(node, list) else []
            if not keys:
                break
            key = draw(st.sampled_from(keys))
            if not isinstance(node[key], dict | list):
                break
            node = node[key]
        if isinstance(node, dict | list) and len(node):
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            key = draw(st.sampled_from(keys))
            if draw(st.booleans()):
                node[key] = draw(JSON)
            else:
                del node[key]
    return body


@st.composite
def byte_mutated(draw: st.DrawFn) -> bytes:
    raw = bytearray(orjson.dumps(VALID))
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(raw) - 1))
        op = draw(st.sampled_from(["flip", "delete", "insert"]))
        if op == "flip":
            raw[i] = draw(st.integers(0, 255))
        elif op == "delete":
            del raw[i:i + draw(st.integers(1, 8))]
        else:
            raw[i:i] = draw(st.binary(min_size=1, max_size=8))
    return bytes(raw)


# -- against the running proxy --------------------------------------------------------------

@FUZZ
@given(body=BODY, provider=st.none() | st.sampled_from(["mock", "mock-openai", "nope", ""]))
def test_wrong_types_everywhere(live_port: int, body: dict[str, Any],
                                provider: str | None) -> None:
    headers = {"x-portkey-provider": provider} if provider is not None else {}
    check_answer(*post(live_port, orjson.dumps(body), headers))


@FUZZ
@given(body=mutated())
def test_mutated_valid_bodies(live_port: int, body: Any) -> None:
    check_answer(*post(live_port, orjson.dumps(body)))


@settings(FUZZ, max_examples=60 * SCALE)
@given(raw=byte_mutated() | st.binary(max_size=200) | JSON.map(orjson.dumps))
def test_random_bytes_and_random_json(live_port: int, raw: bytes) -> None:
    check_answer(*post(live_port, raw))


def test_the_valid_template_itself_streams(live_port: int) -> None:
    status, ctype, body = post(live_port, orjson.dumps(VALID))
    assert status == 200 and ctype.startswith("text/event-stream")
    assert collect(sse_chunks(body)).done


# -- validation's shortcuts, against checking every field -------------------------------------

def outcome(check: Callable[[], object]) -> tuple[str, str | None, str | None] | None:
    try:
        check()
    except InvalidRequest as e:
        return e.message, e.param, e.code
    return None


@settings(FUZZ, max_examples=300 * SCALE)
@given(body=BODY | st.dictionaries(st.sampled_from(sorted(request._SCALARS)), JSON, max_size=6)
       .map(lambda fields: {"messages": [], **fields}))
def test_validation_names_the_first_wrong_field_in_its_order(body: dict[str, Any]) -> None:
    """`_validate` looks only at the fields a body has, in the body's order; the wrong one it
    names is still the first of `_SCALARS`, as checking every one in order finds."""
    first_wrong = outcome(lambda: request._check_scalars(body))
    got = outcome(lambda: request._validate(body, Limits()))
    if first_wrong is not None:
        assert got == first_wrong
    else:  # (no type error; a well-typed value may still be refused: max_tokens 0)
        assert got is None or got[1] not in request._SCALARS or got[2] != "invalid_type"


@settings(FUZZ, max_examples=300 * SCALE)
@given(message=MESSAGE | st.fixed_dictionaries({
    "role": st.sampled_from([*sorted(request.ROLES), "bot"]) | JSON,
    "content": st.text(max_size=3) | JSON}))
def test_a_message_passed_as_plain_is_valid_in_full(message: Any) -> None:
    """`_validate` skips the checks of a role-and-text message: what it finds of any message is
    what checking it in full does."""
    assert (outcome(lambda: request._validate({"messages": [message]}, Limits()))
            == outcome(lambda: request._validate_message(0, message)))


# -- the translators' request side, directly ------------------------------------------------

# Type-specific keys a provider needs to be built at all (fake values: nothing is sent).
PROVIDER_EXTRAS: dict[str, dict[str, Any]] = {
    "bedrock": {"region": "us-east-1"},
    "vertex": {"project": "p", "location": "us-central1"},
    "azure": {"deployment": "d", "api_version": "2024-10-21"},
}


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def test_request_translation_raises_only_typed_errors(aws_env: None) -> None:
    """Each example goes to every provider type's translator in turn (the stream fuzz's way,
    test_faults.py): drawing the examples is nearly all of the cost. Its model is drawn from
    TRANSLATOR_MODELS, as the target's, so each type's model-specific paths are fuzzed too —
    Vertex's Claude view among them (`Target.served`, as the executor picks it)."""
    providers = {}
    for kind in sorted(PROVIDER_TYPES):
        config = parse_config({"providers": {"p": {
            "type": kind, "base_url": "http://127.0.0.1:9", "api_key": "k",
            "default_model": "m", **PROVIDER_EXTRAS.get(kind, {})}}}, "<fuzz>")
        providers[kind] = PROVIDER_TYPES[kind](config.providers["p"])
    targets = {(kind, model): Target(provider=provider, model=model, api_key="k").served()
               for kind, provider in providers.items() for model in TRANSLATOR_MODELS}

    async def prepare() -> None:
        for target in targets.values():
            await target.provider.prepare(target)

    asyncio.run(prepare())

    @settings(FUZZ, max_examples=400 * SCALE)
    @given(body=BODY | mutated(), model=st.sampled_from(TRANSLATOR_MODELS))
    def translate(body: dict[str, Any], model: str) -> None:
        try:
            req = parse_chat_request(orjson.dumps(body))
        except ProxyError as e:
            assert 400 <= e.status < 500
            return
        for kind in providers:
            target = targets[kind, model]
            try:
                target.provider.build_request(req, target)
            except ProxyError as e:
                assert 400 <= e.status < 500, (kind, e)
            except BaseException as e:
                e.add_note(f"provider type: {kind}, model: {model}")
                raise

    translate()
