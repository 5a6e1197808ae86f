"""Fuzzing requests across every provider type: Hypothesis-generated Chat Completions bodies —
mostly valid per OpenAI's schema (every role and content part, tool calls and results, odd tool
schemas, each sampling parameter at its edges), some with one field of the wrong shape — sent
through the proxy to each provider type, whose fake upstream answers a fixed valid answer in
its own wire format, streamed or not. The proxy never answers 500, never logs a traceback;
a 4xx is OpenAI-shaped and names the field at fault; a 200 is a well-formed answer."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamproxy.server.app import create_app, http_limits
from streamproxy.server.front import make_runner
from tests.helpers import collect, fixture_bytes, jsonl_to_sse, make_config, sse_chunks

EXPLORE = int(os.environ.get("STREAMPROXY_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=EXPLORE or 100, deadline=None, derandomize=not EXPLORE,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

# -- each wire format's fixed answer -----------------------------------------------------------

OPENAI_JSON = orjson.dumps({
    "id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
ANTHROPIC_JSON = orjson.dumps({
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
    "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
    "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 1}})
GEMINI_JSON = orjson.dumps({
    "candidates": [{"content": {"role": "model", "parts": [{"text": "hi"}]},
                    "finishReason": "STOP", "index": 0}],
    "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1, "totalTokenCount": 2}})
BEDROCK_JSON = orjson.dumps({
    "output": {"message": {"role": "assistant", "content": [{"text": "hi"}]}},
    "stopReason": "end_turn", "usage": {"inputTokens": 1, "outputTokens": 1, "totalTokens": 2},
    "metrics": {"latencyMs": 1}})
COHERE_JSON = orjson.dumps({
    "id": "c1", "finish_reason": "COMPLETE",
    "message": {"role": "assistant", "content": [{"type": "text", "text": "hi"}]},
    "usage": {"billed_units": {"input_tokens": 1, "output_tokens": 1},
              "tokens": {"input_tokens": 1, "output_tokens": 1}}})
OLLAMA_LINE = {"model": "m", "created_at": "2024-01-01T00:00:00Z",
               "message": {"role": "assistant", "content": "hi"}}
OLLAMA_JSON = orjson.dumps({**OLLAMA_LINE, "done": True, "done_reason": "stop",
                            "prompt_eval_count": 1, "eval_count": 1})
OLLAMA_NDJSON = orjson.dumps({**OLLAMA_LINE, "done": False}) + b"\n" + OLLAMA_JSON + b"\n"

SSE, JSON_TYPE = "text/event-stream", "application/json"
# By wire format: (content type, body) of the answer streamed, then of the answer whole.
ANSWERS = {
    "openai": ((SSE, fixture_bytes("openai/pydantic-ai_run_stream_sync.response1.sse")),
               (JSON_TYPE, OPENAI_JSON)),
    "anthropic": ((SSE, jsonl_to_sse(fixture_bytes(
        "anthropic/vercel-ai_anthropic-text.chunks.jsonl"))), (JSON_TYPE, ANTHROPIC_JSON)),
    "gemini": ((SSE, b"data: " + GEMINI_JSON + b"\r\n\r\n"), (JSON_TYPE, GEMINI_JSON)),
    "bedrock": (("application/vnd.amazon.eventstream", fixture_bytes(
        "bedrock/pydantic-ai_bedrock_model_iter_stream.converse-stream.bin")),
        (JSON_TYPE, BEDROCK_JSON)),
    "cohere": ((SSE, jsonl_to_sse(fixture_bytes("cohere/vercel-ai_cohere-tool-call.chunks.jsonl"))),
               (JSON_TYPE, COHERE_JSON)),
    "ollama": (("application/x-ndjson", OLLAMA_NDJSON), (JSON_TYPE, OLLAMA_JSON)),
}


def wire_of(path: str) -> str:
    if path.endswith("/api/chat"):
        return "ollama"
    if path.endswith("/v2/chat"):
        return "cohere"
    if "/converse" in path:
        return "bedrock"
    if "GenerateContent" in path or "generateContent" in path:
        return "gemini"
    if path.endswith("/messages") or "awPredict" in path:
        return "anthropic"
    return "openai"


def wants_stream(wire: str, path: str, body: dict[str, Any]) -> bool:
    if wire == "gemini":
        return "streamGenerateContent" in path
    if wire == "bedrock":
        return path.endswith("converse-stream")
    return bool(body.get("stream", wire == "ollama"))


async def answer(request: web.Request) -> web.Response:
    body = orjson.loads(await request.read())
    wire = wire_of(request.path)
    content_type, payload = ANSWERS[wire][0 if wants_stream(wire, request.path, body) else 1]
    return web.Response(body=payload, content_type=content_type)


# -- every provider type, against that one upstream ---------------------------------------------

CLAUDE = "claude-sonnet-4-5"
PROVIDERS: dict[str, dict[str, Any]] = {
    "openai": {}, "anthropic": {}, "gemini": {}, "cohere": {}, "ollama": {},
    "vertex": {"project": "p", "location": "us-east5"},
    "bedrock": {"region": "us-east-1", "aws_access_key_id": "AKIDEXAMPLE",
                "aws_secret_access_key": "secret"},
    "azure": {"deployment": "d", "api_version": "2024-10-21"},
    **{kind: {} for kind in ("groq", "mistral", "deepseek", "together", "fireworks",
                             "openrouter", "xai", "vllm")},
    "mock": {"wire": "openai"},
}


def fuzz_config(url: str, store: str) -> Any:
    providers = {kind: {"type": kind, "base_url": url, "api_key": "sk-test", "default_model": "m",
                        **extra} for kind, extra in PROVIDERS.items()}
    providers["vertex-claude"] = {**providers["vertex"], "default_model": CLAUDE}
    return make_config(providers, default="openai", storage={"path": store})


class Live(logging.Handler):
    """The running proxy: a kept-alive connection to it (one per request would use up
    ephemeral ports), and every record at ERROR or above, from any logger."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []
        self.conn: Any = None

    def emit(self, record: logging.LogRecord) -> None:
        if not _another_loops_leftover(record):
            self.records.append(record)


def _another_loops_leftover(record: logging.LogRecord) -> bool:
    """An earlier test's openai SDK client, collected while this proxy's loop runs, schedules
    its close there (AsyncHttpxClientWrapper.__del__) on connections of a loop long closed:
    asyncio logs "Task exception was never retrieved ... Event loop is closed". Not this
    proxy's doing (its loop runs until the module ends), so not counted."""
    exc = record.exc_info[1] if record.exc_info else None
    return (record.name == "asyncio" and isinstance(exc, RuntimeError)
            and str(exc) == "Event loop is closed")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """The fake upstream and the proxy on loopback, in their own thread's loop."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    store = str(tmp_path_factory.mktemp("fuzz") / "store.sqlite3")
    sockets = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]  # (ephemeral ports)
    upstream_port, proxy_port = (sock.getsockname()[1] for sock in sockets)
    config = fuzz_config(f"http://127.0.0.1:{upstream_port}", store)
    live = Live()
    logging.getLogger().addHandler(live)

    async def start() -> list[web.AppRunner]:
        upstream = web.Application()
        upstream.router.add_route("POST", "/{tail:.*}", answer)
        runners = [web.AppRunner(upstream, access_log=None),
                   make_runner(create_app(config), handler_cancellation=True, access_log=None,
                               **http_limits(config))]
        for runner, sock in zip(runners, sockets, strict=True):
            await runner.setup()
            await web.SockSite(runner, sock).start()
        return runners

    runners = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    live.conn = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=30)
    try:
        yield live
    finally:
        live.conn.close()
        logging.getLogger().removeHandler(live)
        for runner in reversed(runners):
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def post(conn: http.client.HTTPConnection, body: bytes,
         route: dict[str, str]) -> tuple[int, str, bytes]:
    conn.request("POST", "/v1/chat/completions", body=body,
                 headers={"content-type": "application/json", **route})
    resp = conn.getresponse()
    return resp.status, resp.getheader("content-type") or "", resp.read()


def check_answer(status: int, content_type: str, body: bytes, at_fault: str | None) -> None:
    """A well-formed answer; `at_fault`: the one top-level field made wrong, if any."""
    assert status < 500, (status, body[:600])
    if content_type.startswith(SSE):
        assert status == 200
        c = collect(sse_chunks(body))  # a strict client's invariants hold
        assert c.done or c.error is not None, body[-300:]
        assert c.error is None or c.error["code"] != "internal_error", c.error
        return
    assert content_type.startswith(JSON_TYPE), (content_type, body[:300])
    obj = orjson.loads(body)
    if status >= 400:
        assert set(obj) == {"error"} and set(obj["error"]) == {"message", "type", "param",
                                                               "code"}, obj
        assert obj["error"]["message"] and obj["error"]["code"] != "internal_error", obj
        if status == 400 and at_fault is not None:  # the field at fault is named
            assert (obj["error"]["param"] or "").startswith(at_fault), (at_fault, obj)
        return
    assert status == 200 and obj["object"] == "chat.completion", obj
    message = obj["choices"][0]["message"]
    assert message["role"] == "assistant" and obj["choices"][0]["finish_reason"]


# -- strategies: valid per OpenAI's schema, mostly --------------------------------------------

ODD_TEXT = st.sampled_from(["", " ", "\x00", "\u2028", "é\"\\", "\ud7ff\U0001f600", "\r\n",
                            "x" * 5000]) | st.text(max_size=12)
NUMBER = st.sampled_from([0, -1, 1, 0.5, 2, 1e9, -1e9, 2**53, 2**63 - 1, -(2**63), 1e308,
                          1.0, 3.7, None])
ODD_SCHEMA = st.sampled_from([
    {"type": "object"}, {}, {"type": "object", "properties": {}},
    {"type": "object", "properties": {"a": {"type": ["string", "null"]},
                                      "b": {"anyOf": [{"type": "integer"}, {"$ref": "#/$defs/x"}]}},
     "$defs": {"x": {"type": "object", "additionalProperties": False}}, "required": ["a"]},
    {"type": "array", "items": {"type": "string"}}, {"type": "string", "enum": []},
    {"properties": {"x": {"type": "object", "properties": {"y": {"const": 1}}}}},
    {"type": "object", "properties": {"t": {"type": "string", "format": "date-time",
                                            "default": None, "examples": [1]}}},
    {"type": "object", "properties": None}, {"type": "object", "required": "a"},
    {"type": 5}, {"oneOf": [], "allOf": [{}], "not": {}}, {"$schema": "x", "title": "t"},
])
WRONG = st.sampled_from([None, True, -1, 1.5, "", "x" * 10000, [], [None], {}, {"a": None},
                         "\x00\x1f", 2**64])
# Schemas of any shape: the keywords translators rewrite (Claude's subset, Gemini's $defs),
# each with a value that is a schema or any JSON value at all.
KEYWORDS = st.sampled_from(["type", "properties", "items", "anyOf", "allOf", "$ref", "$defs",
                            "definitions", "required", "format", "minimum", "minItems",
                            "description", "enum", "additionalProperties"])
SCHEMA = st.recursive(
    st.sampled_from([{}, {"type": "object"}, {"type": "string"}]),
    lambda inner: st.dictionaries(KEYWORDS, inner | st.lists(inner, max_size=2)
                                  | st.dictionaries(st.sampled_from(["a", "b"]), inner,
                                                    max_size=2) | WRONG, max_size=4),
    max_leaves=8)
URLS = st.sampled_from(["https://example.com/a.png", "data:image/png;base64,AAAA", "data:,x",
                        "data:image/png;base64,", "data:;base64,AA==", "ftp://x", "", "gs://b/o",
                        "data:image/jpeg;base64,!!!", "s3://b/k.png"])
TEXT_PART = st.fixed_dictionaries({"type": st.just("text"), "text": ODD_TEXT})
IMAGE_URL = st.fixed_dictionaries(
    {"url": URLS}, optional={"detail": st.sampled_from(["auto", "low", "high", "x"])})
AUDIO = st.fixed_dictionaries({}, optional={"data": st.sampled_from(["AAAA", "", "!!"]),
                                            "format": st.sampled_from(["wav", "mp3", "ogg", ""])})
FILE = st.fixed_dictionaries({}, optional={
    "file_data": st.sampled_from(["data:application/pdf;base64,AAAA", "AAAA", "",
                                  "data:text/plain;base64,aGk="]),
    "file_id": st.sampled_from(["file-1", ""]), "filename": st.sampled_from(["a.pdf", ""])})
IMAGE_PART = st.fixed_dictionaries({"type": st.just("image_url"), "image_url": IMAGE_URL})
AUDIO_PART = st.fixed_dictionaries({"type": st.just("input_audio"), "input_audio": AUDIO})
FILE_PART = st.fixed_dictionaries({"type": st.just("file"), "file": FILE})
REFUSAL_PART = st.fixed_dictionaries({"type": st.just("refusal"), "refusal": ODD_TEXT})
ODD_PART = st.fixed_dictionaries({"type": st.sampled_from(["image", "audio", "video", "x", ""])},
                                 optional={"text": ODD_TEXT})
PARTS = st.lists(TEXT_PART | IMAGE_PART | AUDIO_PART | FILE_PART | REFUSAL_PART | ODD_PART,
                 max_size=3)
ARGUMENTS = st.sampled_from(['{"city": "P"}', "{}", "", "not json", "[1]", "null", '"s"',
                             '{"a": {"b": [1, 2]}}', "{\"x\": \"\u0000\"}"])
TOOL_CALL = st.fixed_dictionaries({
    "id": st.sampled_from(["call_1", "call_2", "", "toolu_01", "x y/z", "a" * 100]),
    "type": st.just("function"),
    "function": st.fixed_dictionaries({"name": st.sampled_from(["get_weather", "", "a.b-c",
                                                                "ünï", "x" * 80]),
                                       "arguments": ARGUMENTS})})
THINKING = st.fixed_dictionaries({"type": st.sampled_from(["thinking", "redacted_thinking"]),
                                  "thinking": ODD_TEXT, "signature": st.just("sig")})
CONTENT = ODD_TEXT | PARTS | st.none()
MESSAGE = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "developer", "user"]),
                           "content": CONTENT}, optional={"name": ODD_TEXT}),
    st.fixed_dictionaries({"role": st.just("assistant")}, optional={
        "content": CONTENT, "tool_calls": st.lists(TOOL_CALL, max_size=2),
        "refusal": ODD_TEXT | st.none(), "name": ODD_TEXT, "audio": st.just({"id": "a1"}),
        "reasoning_content": ODD_TEXT, "thinking_blocks": st.lists(THINKING, max_size=2)}),
    st.fixed_dictionaries({"role": st.just("tool"), "tool_call_id": st.sampled_from(
        ["call_1", "call_9", ""]), "content": CONTENT}),
    st.fixed_dictionaries({"role": st.just("function"), "name": ODD_TEXT, "content": CONTENT}),
)
TOOL = st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
    {"name": st.sampled_from(["get_weather", "", "a.b-c", "ünï", "x" * 80])},
    optional={"description": ODD_TEXT, "parameters": ODD_SCHEMA | SCHEMA,
              "strict": st.booleans() | st.none()})})
TOOL_CHOICE = st.sampled_from(["auto", "none", "required"]) | st.fixed_dictionaries({
    "type": st.just("function"), "function": st.fixed_dictionaries(
        {"name": st.sampled_from(["get_weather", "missing", ""])})})
RESPONSE_FORMAT = st.builds(lambda schema, strict: {"type": "json_schema", "json_schema": {
    "name": "s", "schema": schema, "strict": strict}}, SCHEMA, st.booleans()) | st.sampled_from([
    {"type": "text"}, {"type": "json_object"},
    {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}},
    {"type": "json_schema", "json_schema": {"name": "s", "strict": True}},
    {"type": "json_schema", "json_schema": {"name": "s", "schema": {}}},
    {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object",
     "properties": {"a": {"type": "array", "items": {"$ref": "#"}}}}}},
    {"type": "json_schema"}, {"type": "json_schema", "json_schema": {}}, {"type": "x"}, {},
    {"type": "json_schema", "json_schema": {"schema": None}},
])
STOP = ODD_TEXT | st.lists(ODD_TEXT, max_size=5) | st.none()
SAMPLING = ("temperature", "top_p", "frequency_penalty", "presence_penalty", "seed", "top_k",
            "top_logprobs", "max_tokens", "max_completion_tokens", "n", "logprobs")
OPTIONAL: dict[str, st.SearchStrategy[Any]] = {
    # names that switch model-specific mappings (Bedrock's Claude/Nova/gpt-oss, Gemini 2/3,
    # OpenAI's reasoning models)
    "model": st.none() | st.sampled_from([
        "m", "gpt-4o", "o3-mini", "gpt-5", CLAUDE, "claude-3-7-sonnet", "a/b", "x" * 300,
        "anthropic.claude-sonnet-4-5-v1:0", "us.amazon.nova-2-lite-v1:0", "amazon.nova-pro-v1:0",
        "openai.gpt-oss-20b-1:0", "gemini-2.5-flash", "gemini-3-pro-preview",
        "deepseek-reasoner", "qwen3", "magistral-medium"]),
    **{name: NUMBER for name in SAMPLING},
    "logprobs": st.booleans() | st.none(),
    "stop": STOP,
    "tools": st.lists(TOOL, max_size=3),
    "tool_choice": TOOL_CHOICE,
    "parallel_tool_calls": st.booleans(),
    "response_format": RESPONSE_FORMAT,
    "user": ODD_TEXT,
    "metadata": st.dictionaries(ODD_TEXT, ODD_TEXT, max_size=3),
    "reasoning_effort": st.sampled_from(["minimal", "low", "medium", "high", "none", "x", ""]),
    "modalities": st.sampled_from([["text"], ["text", "audio"], [], ["audio"], ["image"]]),
    "audio": st.sampled_from([{"voice": "alloy", "format": "wav"}, {}]),
    "prediction": st.sampled_from([{"type": "content", "content": "x"},
                                   {"type": "content", "content": [{"type": "text",
                                                                    "text": "x"}]}]),
    "service_tier": st.sampled_from(["auto", "default", "flex", "priority", "x"]),
    "store": st.booleans(),
    "logit_bias": st.sampled_from([{}, {"50256": -100}, {"x": 1e9}]),
    "verbosity": st.sampled_from(["low", "high"]),
    "web_search_options": st.just({}),
    "safety_identifier": ODD_TEXT,
    "prompt_cache_key": ODD_TEXT,
    "unknown_field": st.just(1),
    "functions": st.just([{"name": "f", "parameters": {"type": "object"}}]),
    "function_call": st.sampled_from(["auto", "none", {"name": "f"}]),
    # providers' own fields, as the openai SDK's extra_body sends them
    "thinking": st.sampled_from([{"type": "disabled"}, {"type": "adaptive"}, {"type": "enabled"},
                                 {}]) | st.builds(lambda b: {"type": "enabled", "budget_tokens": b},
                                                  NUMBER),
    "thinking_config": st.sampled_from([{"thinkingBudget": 0}, {"includeThoughts": True}, {}]),
    "cache_control": st.sampled_from([{"type": "ephemeral"}, {}]),
    "safety_settings": st.sampled_from([[], [{"category": "x", "threshold": "y"}]]),
    "cached_content": st.just("cachedContents/x"),
    "options": st.sampled_from([{}, {"num_ctx": 1, "temperature": None}, {"seed": 1.5}]),
    "think": st.sampled_from([True, False, "high"]),
    "keep_alive": st.sampled_from(["5m", 0, -1]),
    "additionalModelRequestFields": st.sampled_from([
        {}, {"top_k": 5}, {"thinking": {"type": "enabled", "budget_tokens": 1024}},
        {"inferenceConfig": {"topK": 2}}, {"reasoningConfig": {"type": "enabled"}}]),
    "guardrailConfig": st.just({"guardrailIdentifier": "g", "guardrailVersion": "1"}),
    "k": NUMBER, "safety_mode": st.just("NONE"), "strict_tools": st.booleans(),
    "documents": st.sampled_from([[], ["a doc"], [{"data": {"text": "t"}}]]),
}


@st.composite
def conversation(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A turn-taking conversation: a system prompt perhaps, a user turn, then perhaps an
    assistant's tool calls with each one's result, and a last user turn."""
    messages = draw(st.lists(MESSAGE.filter(lambda m: m["role"] in ("system", "developer")),
                             max_size=1))
    messages.append(draw(MESSAGE.filter(lambda m: m["role"] == "user")))
    calls = draw(st.lists(TOOL_CALL, max_size=2, unique_by=lambda c: c["id"]))
    if calls:
        messages.append({"role": "assistant", "content": draw(CONTENT), "tool_calls": calls})
        messages += [{"role": "tool", "tool_call_id": c["id"], "content": draw(CONTENT)}
                     for c in calls]
        messages.append(draw(MESSAGE.filter(lambda m: m["role"] == "user")))
    return messages


@st.composite
def bodies(draw: st.DrawFn) -> dict[str, Any]:
    body = {"messages": draw(conversation() | st.lists(MESSAGE, min_size=1, max_size=5))}
    for name in draw(st.lists(st.sampled_from(sorted(OPTIONAL)), max_size=8, unique=True)):
        body[name] = draw(OPTIONAL[name])
    body["stream"] = draw(st.booleans())  # half the bodies stream
    if body["stream"] and draw(st.booleans()):
        body["stream_options"] = draw(st.sampled_from([
            {"include_usage": True}, {"include_usage": False}, {}, {"include_obfuscation": False}]))
    return body


@st.composite
def one_wrong_field(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any], str]:
    """A body, and the same with one top-level field's value replaced by a value of any
    shape."""
    valid = draw(bodies())
    name = draw(st.sampled_from(sorted({*OPTIONAL, "messages", "stream_options"})))
    wrong = {**valid, name: draw(WRONG)}
    if name == "stream_options" and draw(st.booleans()):
        valid["stream"] = wrong["stream"] = True
        valid.pop("stream_options", None)
    return valid, wrong, name


# -- the property --------------------------------------------------------------------------------

TARGETS = [*PROVIDERS, "vertex-claude"]


# How a request names its provider: the header, or a Portkey config with a cache or with
# override_params (checked as a request's fields, then merged over the body).
ROUTES = st.sampled_from([{}, {"cache": {"mode": "simple"}}]) | st.lists(
    st.sampled_from(sorted(set(OPTIONAL) - {"store"})), min_size=1, max_size=2).flatmap(
        lambda names: st.fixed_dictionaries({name: OPTIONAL[name] for name in names})).map(
            lambda fields: {"override_params": fields})


def route_to(provider: str, config: dict[str, Any]) -> dict[str, str]:
    if not config:
        return {"x-portkey-provider": provider}
    return {"x-portkey-config": json.dumps({"provider": provider, **config})}


def send(live: Live, body: dict[str, Any], provider: str, config: dict[str, Any],
         at_fault: str | None = None) -> int:
    before = len(live.records)
    raw = json.dumps(body).encode()  # (orjson refuses integers beyond 64 bits)
    status, content_type, answer_body = post(live.conn, raw, route_to(provider, config))
    check_answer(status, content_type, answer_body, at_fault)
    logged = live.records[before:]
    assert not logged, (provider, [r.getMessage() for r in logged])
    return status


@FUZZ
@given(body=bodies(), config=ROUTES)
def test_valid_bodies_to_every_provider_never_500(live: Live, body: dict[str, Any],
                                                  config: dict[str, Any]) -> None:
    for provider in TARGETS:
        send(live, body, provider, config)


@FUZZ
@given(case=one_wrong_field(), config=ROUTES)
def test_one_wrong_field_is_a_400_naming_it_or_served(
        live: Live, case: tuple[dict[str, Any], dict[str, Any], str],
        config: dict[str, Any]) -> None:
    """Where the body as generated is served, the one field made wrong is either served too
    or refused with a 400 that names it."""
    valid, wrong, name = case
    for provider in TARGETS:
        served = send(live, valid, provider, config) == 200
        send(live, wrong, provider, config, name if served else None)


@st.composite
def one_wrong_node(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any], str]:
    """A body, and the same with one node anywhere in its tree (a message's part, a tool's
    schema, a call's arguments...) replaced by a value of any shape; and that node's top-level
    field."""
    valid = draw(bodies())
    wrong = json.loads(json.dumps(valid))
    name = draw(st.sampled_from(sorted(wrong)))
    node, key = wrong, name
    while isinstance(node[key], dict | list) and node[key] and draw(st.integers(0, 3)):
        node = node[key]
        key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
    node[key] = draw(WRONG)
    return valid, wrong, name


@FUZZ
@given(case=one_wrong_node(), config=ROUTES)
def test_one_wrong_node_anywhere_is_a_400_naming_its_field_or_served(
        live: Live, case: tuple[dict[str, Any], dict[str, Any], str],
        config: dict[str, Any]) -> None:
    valid, wrong, name = case
    for provider in TARGETS:
        served = send(live, valid, provider, config) == 200
        send(live, wrong, provider, config, name if served else None)


@FUZZ
@given(schema=SCHEMA, strict=st.booleans(), where=st.sampled_from(["tool", "response_format"]),
       stream=st.booleans())
def test_any_schema_in_a_tool_or_response_format_is_served_or_a_400(
        live: Live, schema: Any, strict: bool, where: str, stream: bool) -> None:
    """The translators rewrite schemas (Claude's subset, Gemini's `$defs`): a schema of any
    shape is forwarded or refused, never a crash."""
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], "stream": stream}
    if where == "tool":
        body["tools"] = [{"type": "function", "function": {"name": "f", "parameters": schema,
                                                           "strict": strict}}]
    else:
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "s", "schema": schema, "strict": strict}}
    for provider in TARGETS:
        send(live, body, provider, {})
