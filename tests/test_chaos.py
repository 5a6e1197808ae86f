"""Chaos: random upstream behaviour and random request features, end to end through the proxy.

Six fake providers (OpenAI pass-through, Anthropic, Gemini, Bedrock event-stream, Cohere,
Ollama NDJSON) on one loopback server answer each upstream request, at random: a recorded-shape
answer split at random bytes and paced at random; an HTTP error before the body (429 with and
without Retry-After, 500, 503, 400); an error event part way; a connection cut mid-event or
mid-frame; a stall past the idle timeout; garbage; a close without the end event. Requests mix
fallback and retry configs, `stream` true/false, `n`, `include_usage`, the in-memory cache,
`store: true` and clients that go away part way. Every answer must hold as an OpenAI client
reads it (`check_*`), within a bound; afterwards nothing may be left behind (tasks, pooled
connections, descriptors, the in-flight gauge) and every cache entry must replay an answer some
client got whole.

Bounded and reproducible: STREAMPROXY_CHAOS_SEED picks the run (printed on failure),
STREAMPROXY_CHAOS_REQUESTS its size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from streamproxy.cache import entry as cache_entry
from streamproxy.observe.metrics import metrics
from streamproxy.server.admission import ADMISSION
from streamproxy.server.app import STATE
from streamproxy.server.store_and_cache import FEATURES
from tests.eventstream_frames import split_frames
from tests.helpers import fixture_bytes, jsonl_to_sse, make_config

SEED = int(os.environ.get("STREAMPROXY_CHAOS_SEED", "20240611"))
REQUESTS = int(os.environ.get("STREAMPROXY_CHAOS_REQUESTS", "150"))
CONCURRENCY = 6
REQUEST_BOUND = 10.0  # seconds any one request may take, retries and fallbacks included
TIMEOUTS = {"connect": 1, "first_token": 0.8, "idle": 0.4}
STALL = 5.0  # an upstream stall: far past the idle timeout, bounded
USER = [{"role": "user", "content": "hi"}]
GARBAGE = bytes(range(256)) + b"\r\n\x00\xff<html>502 Bad Gateway</html>\n\n" * 3

# -- what each provider answers: its events (so faults can fall between or inside them) -------


def _sse_events(body: bytes) -> list[bytes]:
    return [e + b"\n\n" for e in body.replace(b"\r\n", b"\n").split(b"\n\n") if e.strip()]


def _ndjson(*objs: dict[str, Any]) -> list[bytes]:
    return [orjson.dumps(o) + b"\n" for o in objs]


def _gemini_sse(array_json: bytes) -> list[bytes]:
    return [b"data: " + orjson.dumps(obj) + b"\n\n" for obj in orjson.loads(array_json)]


def _openai_chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
    return b"data: " + orjson.dumps({"id": "chatcmpl-up", "object": "chat.completion.chunk",
                                     "created": 1, "model": "m", "choices": choices,
                                     **extra}) + b"\n\n"


def _delta(index: int, finish: str | None = None, **delta: Any) -> dict[str, Any]:
    return {"index": index, "delta": delta, "finish_reason": finish}


# n=2: the choices' deltas interleaved, each choice's finish in its own chunk
OPENAI_TWO_CHOICES = [
    _openai_chunk([_delta(0, role="assistant", content="")]),
    _openai_chunk([_delta(1, role="assistant", content="")]),
    _openai_chunk([_delta(0, content="Hel")]),
    _openai_chunk([_delta(1, content="Hi")]),
    _openai_chunk([_delta(0, content="lo")]),
    _openai_chunk([_delta(1, "stop")]),
    _openai_chunk([_delta(0, "stop")]),
    _openai_chunk([], usage={"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}),
    b"data: [DONE]\n\n",
]
_OLLAMA_LINE = {"model": "m", "created_at": "2024-01-01T00:00:00Z"}


@dataclass(frozen=True)
class Wire:
    content_type: str
    streams: list[list[bytes]]  # whole answers, event by event; the last event(s) end them
    ending: int  # how many trailing events are the end (dropped by "no_terminator")
    error_event: bytes  # the provider's mid-stream error
    non_stream: bytes  # a whole non-streamed answer


WIRES: dict[str, Wire] = {
    "openai": Wire(
        "text/event-stream",
        [_sse_events(fixture_bytes(f"openai/pydantic-ai_run_stream_sync.response{i}.sse"))
         for i in (0, 1)], 1,
        b'data: {"error":{"message":"boom","type":"server_error","code":null}}\n\n',
        orjson.dumps({"id": "chatcmpl-up", "object": "chat.completion", "created": 1,
                      "model": "m", "choices": [{"index": 0, "message": {
                          "role": "assistant", "content": "Hello"}, "finish_reason": "stop"}],
                      "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                "total_tokens": 2}})),
    "anthropic": Wire(
        "text/event-stream",
        [_sse_events(fixture_bytes("anthropic/sdk-python_tool_use_response.sse")),
         _sse_events(fixture_bytes("anthropic/llm-anthropic_test_thinking_prompt.response0.sse")),
         _sse_events(jsonl_to_sse(fixture_bytes("anthropic/vercel-ai_anthropic-text.chunks.jsonl")))],
        1,
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
        b'"message":"Overloaded"}}\n\n',
        orjson.dumps({"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
                      "content": [{"type": "text", "text": "Hello"}],
                      "stop_reason": "end_turn",
                      "usage": {"input_tokens": 1, "output_tokens": 1}})),
    "gemini": Wire(
        "text/event-stream",
        [_gemini_sse(fixture_bytes(
            "gemini/llm-gemini_test_stream_events_tool_calls.response0.json")),
         _sse_events(jsonl_to_sse(fixture_bytes(
             "gemini/vercel-ai_issue-19758-prompt-block.chunks.jsonl"), event_names=False))],
        1,
        b'data: {"error":{"code":500,"message":"boom","status":"INTERNAL"}}\n\n',
        orjson.dumps({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hello"}]},
                                      "finishReason": "STOP"}],
                      "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1,
                                        "totalTokenCount": 2}})),
    "bedrock": Wire(
        "application/vnd.amazon.eventstream",
        [split_frames(fixture_bytes(
            "bedrock/pydantic-ai_bedrock_model_iter_stream.converse-stream.bin"))],
        2,
        fixture_bytes("bedrock/vercel-ai_model-stream-error-exception.eventstream.bin"),
        orjson.dumps({"output": {"message": {"role": "assistant",
                                             "content": [{"text": "Hello"}]}},
                      "stopReason": "end_turn",
                      "usage": {"inputTokens": 1, "outputTokens": 1, "totalTokens": 2}})),
    "cohere": Wire(
        "text/event-stream",
        [_sse_events(jsonl_to_sse(fixture_bytes("cohere/vercel-ai_cohere-tool-call.chunks.jsonl")))],
        1,
        b'event: message-end\ndata: {"type":"message-end","delta":{"finish_reason":"ERROR",'
        b'"error":"boom"}}\n\n',
        orjson.dumps({"id": "c1", "finish_reason": "COMPLETE",
                      "message": {"role": "assistant",
                                  "content": [{"type": "text", "text": "Hello"}]},
                      "usage": {"billed_units": {"input_tokens": 1, "output_tokens": 1},
                                "tokens": {"input_tokens": 1, "output_tokens": 1}}})),
    "ollama": Wire(
        "application/x-ndjson",
        [_ndjson(*({**_OLLAMA_LINE, "message": {"role": "assistant", "content": t},
                    "done": False} for t in ("Hel", "lo", " there")),
                 {**_OLLAMA_LINE, "message": {"role": "assistant", "content": ""},
                  "done": True, "done_reason": "stop", "prompt_eval_count": 3,
                  "eval_count": 3})],
        1,
        b'{"error":"boom"}\n',
        orjson.dumps({**_OLLAMA_LINE, "message": {"role": "assistant", "content": "Hello"},
                      "done": True, "done_reason": "stop", "prompt_eval_count": 1,
                      "eval_count": 1})),
}
PROVIDERS = list(WIRES)
FAULTS = ["ok", "ok", "ok", "ok", "http_error", "error_event", "cut", "stall", "garbage",
          "no_terminator"]


def chaos_config(url: str) -> Any:
    extra = {"bedrock": {"region": "us-west-2", "aws_access_key_id": "AKIDEXAMPLE",
                         "aws_secret_access_key": "secret"}}
    return make_config({name: {"type": name, "base_url": f"{url}/{name}", "api_key": "sk-k",
                               "default_model": "m", "timeouts": TIMEOUTS,
                               **extra.get(name, {})} for name in PROVIDERS})


# -- the upstreams ----------------------------------------------------------------------------


@dataclass
class Behaviour:
    fault: str
    seed: int


@dataclass
class ChaosUpstream:
    """One server for the six providers (`/{provider}/...`); the model names a script: the
    behaviours its upstream requests get in turn (then a clean answer)."""

    scripts: dict[str, list[Behaviour]] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        provider = request.path.split("/")[1]
        model = _model_of(request.path, body)
        script = self.scripts.get(model)
        behaviour = script.pop(0) if script else Behaviour("ok", 0)
        self.seen.append(f"{provider}/{model}:{behaviour.fault}")
        wire = WIRES[provider]
        rng = random.Random(behaviour.seed)
        stream = _streamed(provider, request.path, body)
        if behaviour.fault == "http_error":
            return _http_error(rng)
        events = list(rng.choice(wire.streams)) if stream else [wire.non_stream]
        if provider == "openai" and stream and orjson.loads(body).get("n") == 2:
            events = OPENAI_TWO_CHOICES
        content_type = wire.content_type if stream else "application/json"
        resp = web.StreamResponse(headers={"content-type": content_type})
        await resp.prepare(request)
        fault, body_out, close_abruptly = behaviour.fault, b"", False
        whole = b"".join(events)
        if fault == "ok":
            body_out = whole
        elif fault == "error_event":
            body_out = b"".join(events[:rng.randrange(len(events))]) + (
                wire.error_event if stream else GARBAGE)
        elif fault in ("cut", "stall"):
            body_out, close_abruptly = whole[:rng.randrange(len(whole))], fault == "cut"
        elif fault == "garbage":
            body_out = b"".join(events[:rng.randrange(len(events))]) + GARBAGE
        elif fault == "no_terminator":
            body_out = b"".join(events[:-wire.ending] if stream else [whole[:-1]])
        for piece in _pieces(body_out, rng):
            await resp.write(piece)
            if rng.random() < 0.3:
                await asyncio.sleep(rng.random() * 0.01)
        if fault == "stall":
            await asyncio.sleep(STALL)  # cancelled when the proxy lets the connection go
        if close_abruptly:
            assert request.transport is not None
            request.transport.abort()
            return resp
        await resp.write_eof()
        return resp


def _streamed(provider: str, path: str, body: bytes) -> bool:
    if provider in ("gemini", "bedrock"):  # the path says
        return "stream" in path.lower()
    return bool(orjson.loads(body).get("stream", provider == "ollama"))  # Ollama's default


def _model_of(path: str, body: bytes) -> str:
    found = re.search(r"/models?/([^/:]+)", path)
    if found:
        return found.group(1)
    return str(orjson.loads(body).get("model"))


def _http_error(rng: random.Random) -> web.Response:
    status = rng.choice([429, 429, 500, 503, 400])
    headers = {"retry-after": rng.choice(["0", "1"])} if status == 429 and rng.random() < 0.5 \
        else {}
    return web.json_response({"error": {"message": "scripted", "type": "scripted_error"}},
                             status=status, headers=headers)


def _pieces(data: bytes, rng: random.Random) -> list[bytes]:
    pieces, i = [], 0
    while i < len(data):
        n = rng.choice([1, 3, 17, 64, 500, 4096])
        pieces.append(data[i:i + n])
        i += n
    return pieces


# -- the requests -----------------------------------------------------------------------------


@dataclass
class Plan:
    body: dict[str, Any]
    headers: dict[str, str]
    disconnect_after: int | None  # bytes read before the client goes away (None: never)
    scripts: dict[str, list[Behaviour]]

    def describe(self) -> str:
        return orjson.dumps({"body": self.body, "headers": self.headers,
                             "disconnect_after": self.disconnect_after,
                             "scripts": {k: [b.fault for b in v]
                                         for k, v in self.scripts.items()}}).decode()


def make_plan(i: int, rng: random.Random) -> Plan:
    cache = rng.random() < 0.25
    stream = rng.random() < 0.75
    retries = rng.choice([0, 0, 1, 2])
    n_targets = rng.choice([1, 1, 1, 2, 3])
    targets, scripts = [], {}
    for j in range(n_targets):
        provider = rng.choice(PROVIDERS)
        # cached requests share a few models, so later ones can hit what earlier ones filled
        model = f"c{rng.randrange(2)}" if cache else f"r{i}t{j}"
        behaviours = [Behaviour(rng.choice(FAULTS), rng.randrange(1 << 30))
                      for _ in range(retries + 1)]
        scripts.setdefault(model, []).extend(behaviours)
        targets.append({"provider": provider, "override_params": {"model": model}})
    config: dict[str, Any] = {}
    if n_targets > 1:
        config = {"strategy": {"mode": "fallback"}, "targets": targets}
    else:
        config = {**targets[0]}
    if retries:
        config["retry"] = {"attempts": retries}
    if cache:
        config["cache"] = {"mode": "simple", "max_age": 60}
    body: dict[str, Any] = {"model": "m", "messages": USER, "stream": stream}
    if rng.random() < 0.1:
        body["n"] = 2
    if stream and rng.random() < 0.5:
        body["stream_options"] = {"include_usage": True}
    if rng.random() < 0.15:
        body["store"] = True
    disconnect = rng.choice([None] * 6 + [0, 1, 50, 300, 2000])
    return Plan(body, {"x-portkey-config": orjson.dumps(config).decode()}, disconnect, scripts)


# -- the invariants ---------------------------------------------------------------------------

Answer = tuple[str, str, tuple[tuple[str, str, str], ...], str | None]


def check_error(status: int, body: bytes) -> None:
    err = orjson.loads(body)["error"]
    assert isinstance(err["message"], str) and err["message"], err
    assert {"type", "param", "code"} <= err.keys(), err
    assert 400 <= status < 600


def check_completion(body: bytes, n: int) -> tuple[str, list[Answer]]:
    """A non-streamed answer: its id and its choices' answers."""
    completion = orjson.loads(body)
    assert completion["object"] == "chat.completion", completion
    assert isinstance(completion["id"], str) and isinstance(completion["created"], int)
    choices = completion["choices"]
    assert choices and all(0 <= c["index"] < n for c in choices), choices
    answers = []
    for choice in choices:
        message = choice["message"]
        assert message["role"] == "assistant" and choice["finish_reason"], choice
        calls = tuple((c["id"], c["function"]["name"], c["function"]["arguments"])
                      for c in message.get("tool_calls") or ())
        answers.append((message.get("content") or "", message.get("reasoning_content") or "",
                        calls, choice["finish_reason"]))
    return completion["id"], answers


def check_stream(body: bytes, n: int, whole: bool, include_usage: bool = False,
                 prefix: bool = False) -> tuple[str, list[Answer]] | None:
    """The events of a 200 stream; `whole`: the client read it to its end. The id and answers
    of a stream that ended normally (`prefix`: of what it had, if any), else None."""
    if whole:
        assert body.endswith(b"\n\n"), body[-200:]
    events = body.split(b"\n\n")
    if not whole or not body.endswith(b"\n\n"):
        events = events[:-1]  # the last one may be cut short by the client leaving
    else:
        assert events.pop() == b""
    envelope: tuple[Any, ...] | None = None
    texts: dict[int, list[Any]] = {}
    finishes: dict[int, int] = {}
    end = None
    usage_seen = False
    for event in events:
        assert end is None, f"an event after the stream's end: {event[:200]!r}"
        assert event.startswith(b"data: ") and b"\n" not in event, event[:200]
        data = event[6:]
        if data == b"[DONE]":
            end = "done"
            continue
        chunk = orjson.loads(data)
        if "error" in chunk:
            check_error(500, data)
            end = "error"
            continue
        assert chunk["object"] == "chat.completion.chunk", chunk
        assert not usage_seen, f"a chunk after the usage chunk: {chunk}"
        if not chunk["choices"]:  # the usage chunk: asked for, after every finish
            assert include_usage and chunk["usage"], chunk
            assert texts and all(finishes.get(i) == 1 for i in texts), (texts, finishes)
            usage_seen = True
        this = (chunk["id"], chunk["created"], chunk["model"])
        assert envelope is None or this == envelope, (envelope, this)
        envelope = this
        for choice in chunk["choices"]:
            i = choice["index"]
            assert 0 <= i < n, choice
            assert not finishes.get(i), f"a delta after choice {i}'s finish: {choice}"
            delta = choice.get("delta") or {}
            parts = texts.setdefault(i, ["", "", {}])
            parts[0] += delta.get("content") or ""
            parts[1] += delta.get("reasoning_content") or ""
            for tc in delta.get("tool_calls") or ():
                call = parts[2].setdefault(tc["index"], ["", "", ""])
                call[0] = call[0] or tc.get("id") or ""
                call[1] = call[1] or (tc.get("function") or {}).get("name") or ""
                call[2] += (tc.get("function") or {}).get("arguments") or ""
            if choice.get("finish_reason"):
                finishes[i] = finishes.get(i, 0) + 1
    finished = bool(texts) and all(finishes.get(i) == 1 for i in texts)
    if not whole and not (finished or (prefix and envelope is not None)):
        return None  # (a client that left after every finish had the answer: it may be kept)
    assert not whole or end is not None, f"a stream that ends with neither: {body[-300:]!r}"
    if end == "error":
        return None
    assert finished or not whole, (texts, finishes)
    assert envelope is not None
    return envelope[0], [(t[0], t[1], tuple(tuple(c) for _, c in sorted(t[2].items())), None)
                         for _, t in sorted(texts.items())]


@dataclass
class Outcome:
    answers: dict[str, list[Answer]] = field(default_factory=dict)  # by completion id
    # what clients that left part way had of their answers (which the proxy may have finished
    # writing before it could see them go: then it is kept)
    partial: dict[str, list[Answer]] = field(default_factory=dict)
    statuses: list[int] = field(default_factory=list)


async def run_one(session: aiohttp.ClientSession, url: str, plan: Plan,
                  outcome: Outcome) -> None:
    n = plan.body.get("n", 1)
    include_usage = bool(plan.body.get("stream_options"))
    async with session.post(url, json=plan.body, headers=plan.headers) as resp:
        outcome.statuses.append(resp.status)
        body = b""
        if plan.disconnect_after is not None:
            while len(body) <= plan.disconnect_after:
                piece = await resp.content.readany()
                if not piece:
                    break
                body += piece
            # (whole when it ends: a client that got it all got an answer, even if it left)
            if not resp.content.at_eof() and not _ends(body):
                resp.close()  # the client goes away
                if resp.status == 200 and plan.body["stream"]:
                    got = check_stream(body, n, whole=False, include_usage=include_usage)
                    if got is not None:
                        outcome.answers[got[0]] = got[1]
                    elif (partial := check_stream(body, n, whole=False, prefix=True)):
                        outcome.partial[partial[0]] = partial[1]
                return
        body += await resp.read()
    if resp.status != 200:
        assert resp.content_type == "application/json", (resp.status, body[:300])
        check_error(resp.status, body)
    elif plan.body["stream"]:
        assert resp.content_type == "text/event-stream", body[:300]
        got = check_stream(body, n, whole=True, include_usage=include_usage)
        if got is not None:
            outcome.answers[got[0]] = got[1]
    else:
        cid, answers = check_completion(body, n)
        outcome.answers[cid] = answers


def _ends(body: bytes) -> bool:
    if body.endswith(b"data: [DONE]\n\n"):
        return True
    try:
        return isinstance(orjson.loads(body), dict)
    except orjson.JSONDecodeError:
        return False


def _tasks() -> set[asyncio.Task[Any]]:
    """The tasks running, but the servers' connection tasks (keep-alive: counted apart)."""
    return {t for t in asyncio.all_tasks()
            if not t.done() and t.get_coro().__qualname__ != "RequestHandler.start"}


async def settle(check: Callable[[], bool], timeout: float = 8) -> bool:
    for _ in range(int(timeout / 0.05)):
        if check():
            return True
        await asyncio.sleep(0.05)
    return check()


def _sockets() -> int:
    """This process's open sockets (the stored completions' database files open on first use)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # (the listing's own descriptor, closed since)
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


async def test_every_client_stream_is_well_formed_whatever_the_upstreams_do(
        proxy: Any, aiohttp_server: Any, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.WARNING, logger="streamproxy")
    # Its many models would fill the process's cap on model labels, which later tests count on.
    monkeypatch.setattr(metrics(), "_models", set(metrics()._models))
    rng = random.Random(SEED)
    upstream = ChaosUpstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", upstream.handle)
    server = await aiohttp_server(app)  # (handlers cancelled on disconnect)
    client = await proxy(chaos_config(str(server.make_url("")).rstrip("/")))
    state, admission = client.server.app[STATE], client.server.app[ADMISSION]
    features = client.server.app[FEATURES]
    cache = features.cache
    url = str(client.make_url("/v1/chat/completions"))
    baseline_tasks, baseline_sockets = _tasks(), _sockets()
    outcome = Outcome()
    gate = asyncio.Semaphore(CONCURRENCY)
    failures: list[str] = []

    async def one(i: int, plan: Plan) -> None:
        async with gate:
            for model, script in plan.scripts.items():
                upstream.scripts.setdefault(model, []).extend(script)
            try:
                async with asyncio.timeout(REQUEST_BOUND):
                    await run_one(session, url, plan, outcome)
            except Exception as e:
                failures.append(f"request {i}: {type(e).__name__}: {e}\n  plan {plan.describe()}")

    plans = [make_plan(i, rng) for i in range(REQUESTS)]
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(i, plan) for i, plan in enumerate(plans)))
    where = f"(STREAMPROXY_CHAOS_SEED={SEED} STREAMPROXY_CHAOS_REQUESTS={REQUESTS})"
    assert not failures, f"{where}\n" + "\n".join(failures[:5])
    assert 200 in outcome.statuses and outcome.answers, where

    # Nothing left behind: the in-flight gauge, upstream connections, tasks, descriptors.
    pool = state.client.native.pool if state.client.native is not None else None

    def idle() -> int:  # upstream connections kept for reuse
        if pool is not None:
            return sum(map(len, pool.idle.values()))
        assert state.client.session is not None
        return sum(map(len, state.client.session.connector._conns.values()))  # type: ignore

    await cache.drain()
    assert await settle(lambda: admission.active == 0), (where, admission.active)
    assert await settle(lambda: pool is None or pool.busy == 0), (where, pool and pool.busy)
    assert await settle(lambda: not (_tasks() - baseline_tasks - {asyncio.current_task()})), (
        where, _tasks() - baseline_tasks)
    upstream_conns = server.runner.server.connections
    assert await settle(lambda: len(upstream_conns) <= idle()), (
        where, len(upstream_conns))
    # (a pooled connection is two descriptors here: the upstream server is in this process)
    assert await settle(lambda: _sockets() <= baseline_sockets + 2 * idle()), (
        where, _sockets(), baseline_sockets)

    # Every cache entry replays an answer some client got whole: nothing half-written.
    got = {(content, reasoning, calls) for answers in outcome.answers.values()
           for content, reasoning, calls, _ in answers}
    for key, (raw, _) in cache.backend._items.items():  # type: ignore[attr-defined]
        completion = cache_entry.completion_from(orjson.loads(raw), completion_id="chatcmpl-x",
                                                 created=1, model="m")
        _, [(content, reasoning, calls, _)] = check_completion(orjson.dumps(completion), 1)
        assert (content, reasoning, calls) in got or any(  # (see Outcome.partial)
            content.startswith(p[0]) for answers in outcome.partial.values() for p in answers
        ), (where, key, completion)

    # Every stored completion is an answer its client got whole, under the id it got.
    await features.storage.store.flush()
    listed = await client.get("/v1/chat/completions", params={"limit": "100"})
    stored = (await listed.json())["data"]
    for completion in stored:
        cid, answers = check_completion(orjson.dumps(completion), 2)
        if cid in outcome.partial:
            assert all(a[0].startswith(p[0]) for a, p in zip(answers, outcome.partial[cid],
                                                             strict=False)), (where, completion)
            continue
        assert [a[:3] for a in answers] == [a[:3] for a in outcome.answers.get(cid, [])], (
            where, completion, outcome.answers.get(cid))
    errors = [r.getMessage() for r in caplog.records
              if r.levelno >= logging.ERROR and r.name.startswith("streamproxy")]
    assert not errors, (where, errors[:3])


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("stream", [True, False])
async def test_each_chaos_upstream_answers_cleanly_when_told_to(
        proxy: Any, aiohttp_server: Any, provider: str, stream: bool) -> None:
    """The chaos test's clean answers are answers: its faults are the only failures."""
    upstream = ChaosUpstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", upstream.handle)
    server = await aiohttp_server(app)
    client = await proxy(chaos_config(str(server.make_url("")).rstrip("/")))
    for seed in range(4):
        upstream.scripts["ok"] = [Behaviour("ok", seed)]
        resp = await client.post("/v1/chat/completions", json={
            "model": f"{provider}/ok", "messages": USER, "stream": stream})
        body = await resp.read()
        assert resp.status == 200, body[:300]
        assert (check_stream(body, 1, whole=True) if stream else check_completion(body, 1))
