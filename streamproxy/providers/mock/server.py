"""A deterministic fake upstream speaking Anthropic's and OpenAI's wire formats.

Knobs per request, from the model name (`fast`, `slow:tokens=40`, `tokens=500,tps=50`) and the
`x-mock-options` header (same `k=v,k=v` syntax, applied last):

    tokens          text deltas to send
    tps             deltas per second (0 = all at once)
    ttft_ms         delay before the first delta
    tool_calls      tool calls after the text
    error_after     send an error event after N deltas (not streamed: the error status)
    truncate_after  close the connection abruptly after N deltas (not streamed: mid-body)
    status          answer with this HTTP error status (429, 503, 529: retry-after: 1)
    stall_ms        delay before the response headers
    reset_first     1: send 200 headers, then reset the connection before any event
    flush           1: write every event on its own, as providers flush them (no delay)

A request's `max_tokens` (`max_completion_tokens`) cuts the answer there, as a provider does.

Unpaced bodies are built once per distinct request shape and cached, so the mock is never the
bottleneck of a benchmark: a 200-delta stream is one cached bytes object and one write. With
`flush=1` the same stream is 205 writes, the shape a real provider's stream arrives in.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, fields, replace
from typing import Any

import orjson
from aiohttp import web

PRESETS: dict[str, dict[str, Any]] = {
    "fast": {"tokens": 200},
    "slow": {"tokens": 20, "tps": 10},
    "paced": {"tokens": 50, "tps": 50},
    "tool": {"tokens": 10, "tool_calls": 1},
    "tools": {"tokens": 5, "tool_calls": 2},
    "error": {"tokens": 20, "error_after": 5},
}
# The statuses a provider names a wait on (a rate limit, an overload; Anthropic's is 529): a
# `retry-after` on a 400 or 401 told clients to wait for an answer no retry changes.
WAIT_STATUSES = frozenset({429, 503, 529})
WORDS = ("Hello", " from", " the", " streamproxy", " mock", ",", " token", " by", " token", ".")
TOOL_ARGS = ('{"city": ', '"Paris"', ', "unit": "c"}')


class MockOptionError(ValueError):
    """A knob the mock cannot take: answered as the provider's 400, its message the reason."""


@dataclass(frozen=True, slots=True)
class MockOptions:
    tokens: int = 200
    tps: float = 0.0
    ttft_ms: float = 0.0
    tool_calls: int = 0
    error_after: int = -1
    truncate_after: int = -1
    status: int = 200
    stall_ms: float = 0.0
    reset_first: int = 0  # 1: send the headers, then reset before any event
    flush: int = 0  # 1: one write per event even when unpaced
    cut: bool = False  # stopped at the request's max_tokens (not a knob)

    @classmethod
    def parse(cls, model: str, header: str | None) -> MockOptions:
        opts = cls()
        for spec in (model, header or ""):
            preset, _, rest = spec.partition(":") if ":" in spec or "=" not in spec else ("", "",
                                                                                         spec)
            if preset:
                opts = replace(opts, **PRESETS.get(preset, {}))
            opts = replace(opts, **_kv(rest))
        opts._check()
        return opts

    def capped(self, limit: Any) -> MockOptions:
        """The answer cut at the request's `max_tokens`, as a provider cuts it: the text up to
        the cap, no tool call (each counts 10), and the stop reason of a cut answer."""
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0 or \
                self.tokens + 10 * self.tool_calls <= limit:
            return self
        return replace(self, tokens=min(self.tokens, limit), tool_calls=0, cut=True)

    def _check(self) -> None:
        # A status outside the error range was relayed as is (an HTTP 999, a 1xx the client
        # waited on for ever), and a negative count answered negative usage.
        if self.status != 200 and not 400 <= self.status <= 599:
            raise MockOptionError(f"mock option 'status' must be 200 or 400-599, not "
                                  f"{self.status}")
        for name in ("tokens", "tool_calls", "tps", "ttft_ms", "stall_ms"):
            if getattr(self, name) < 0:
                raise MockOptionError(f"mock option {name!r} must not be negative")


_FIELD_TYPES = {f.name: (float if f.type == "float" else int) for f in fields(MockOptions)
                if f.name != "cut"}


def _kv(spec: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        key, _, value = item.partition("=")
        kind = _FIELD_TYPES.get(key)
        if kind is None:
            raise MockOptionError(f"unknown mock option {key!r}")
        try:
            out[key] = kind(value)
        except ValueError:
            raise MockOptionError(f"bad value for mock option {key!r}: {value!r}") from None
    return out


def token(i: int) -> str:
    return WORDS[i % len(WORDS)]


def mock_text(n: int) -> str:
    return "".join(token(i) for i in range(n))


def has_text(opts: MockOptions) -> bool:
    """A tool-only answer (`tokens=0` with tool calls) has no text block, as a real one: its
    content is null, where an empty text answer's is ""."""
    return opts.tokens > 0 or not opts.tool_calls


def prompt_tokens(body: dict[str, Any]) -> int:
    """A deterministic stand-in for tokenisation: ~4 characters per token. Anthropic's wire
    carries the system prompt in `system`, outside `messages`: counted too, so a request's
    prompt tokens are the same on either wire."""
    contents = [m.get("content") for m in body.get("messages") or [] if isinstance(m, dict)]
    size = sum(_text_size(c) for c in (body.get("system"), *contents))
    return size // 4 + 1


def _text_size(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(len(p.get("text") or "") for p in content if isinstance(p, dict))
    return 0


# -- Anthropic wire -----------------------------------------------------------------------------

def _sse(event: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def anthropic_prelude(model: str, prompt: int, text: bool = True) -> bytes:
    start = _sse("message_start", {"type": "message_start", "message": {
        "id": "msg_mock", "type": "message", "role": "assistant", "model": model,
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": prompt, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 0, "output_tokens": 1}}})
    if not text:
        return start
    return start + _sse("content_block_start", {"type": "content_block_start", "index": 0,
                                                "content_block": {"type": "text", "text": ""}})


def anthropic_delta(i: int) -> bytes:
    return _sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                        "delta": {"type": "text_delta", "text": token(i)}})


def anthropic_error() -> bytes:
    return _sse("error", {"type": "error",
                          "error": {"type": "overloaded_error", "message": "Overloaded"}})


def anthropic_epilogue(opts: MockOptions) -> bytes:
    text = has_text(opts)
    parts = [_sse("content_block_stop", {"type": "content_block_stop", "index": 0})] if text \
        else []
    for k in range(opts.tool_calls):
        idx = k + text  # the tool_use blocks follow the text block, if any
        parts.append(_sse("content_block_start", {
            "type": "content_block_start", "index": idx, "content_block": {
                "type": "tool_use", "id": f"toolu_mock_{k}", "name": "get_weather",
                "input": {}}}))
        for frag in ("", *TOOL_ARGS):
            parts.append(_sse("content_block_delta", {
                "type": "content_block_delta", "index": idx,
                "delta": {"type": "input_json_delta", "partial_json": frag}}))
        parts.append(_sse("content_block_stop", {"type": "content_block_stop", "index": idx}))
    parts.append(_sse("message_delta", {
        "type": "message_delta",
        "delta": {"stop_reason": anthropic_stop(opts),
                  "stop_sequence": None},
        "usage": {"output_tokens": opts.tokens + 10 * opts.tool_calls}}))
    parts.append(_sse("message_stop", {"type": "message_stop"}))
    return b"".join(parts)


def anthropic_stop(opts: MockOptions) -> str:
    return "tool_use" if opts.tool_calls else "max_tokens" if opts.cut else "end_turn"


def openai_finish(opts: MockOptions) -> str:
    return "tool_calls" if opts.tool_calls else "length" if opts.cut else "stop"


def anthropic_message(opts: MockOptions, model: str, prompt: int) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": mock_text(opts.tokens)}] \
        if has_text(opts) else []
    for k in range(opts.tool_calls):
        content.append({"type": "tool_use", "id": f"toolu_mock_{k}", "name": "get_weather",
                        "input": orjson.loads("".join(TOOL_ARGS))})
    return {"id": "msg_mock", "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": anthropic_stop(opts),
            "stop_sequence": None,
            "usage": {"input_tokens": prompt, "output_tokens": opts.tokens + 10 * opts.tool_calls,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}


# -- OpenAI wire --------------------------------------------------------------------------------

def _chunk(model: str, delta: dict[str, Any], finish: str | None = None,
           usage: bool = False) -> dict[str, Any]:
    out = {"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1700000000,
           "model": model, "system_fingerprint": None,
           "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    if usage:
        out["usage"] = None
    return out


def _data(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def openai_prelude(model: str, usage: bool, text: bool = True) -> bytes:
    return _data(_chunk(model, {"role": "assistant", "content": "" if text else None,
                                "refusal": None}, usage=usage))


def openai_delta(i: int, model: str, usage: bool) -> bytes:
    return _data(_chunk(model, {"content": token(i)}, usage=usage))


def openai_error() -> bytes:
    return _data({"error": {"message": "Overloaded", "type": "server_error",
                            "code": "overloaded"}})


def openai_epilogue(opts: MockOptions, model: str, prompt: int, usage: bool) -> bytes:
    parts = []
    for k in range(opts.tool_calls):
        parts.append(_data(_chunk(model, {"tool_calls": [{
            "index": k, "id": f"call_mock_{k}", "type": "function",
            "function": {"name": "get_weather", "arguments": ""}}]}, usage=usage)))
        for frag in TOOL_ARGS:
            parts.append(_data(_chunk(model, {"tool_calls": [{
                "index": k, "function": {"arguments": frag}}]}, usage=usage)))
    parts.append(_data(_chunk(model, {}, openai_finish(opts), usage=usage)))
    if usage:
        completion = opts.tokens + 10 * opts.tool_calls
        parts.append(_data({"id": "chatcmpl-mock", "object": "chat.completion.chunk",
                            "created": 1700000000, "model": model, "choices": [],
                            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                      "total_tokens": prompt + completion}}))
    parts.append(b"data: [DONE]\n\n")
    return b"".join(parts)


def openai_completion(opts: MockOptions, model: str, prompt: int) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant",
                               "content": mock_text(opts.tokens) if has_text(opts) else None,
                               "refusal": None}
    if opts.tool_calls:
        message["tool_calls"] = [{"id": f"call_mock_{k}", "type": "function", "function": {
            "name": "get_weather", "arguments": "".join(TOOL_ARGS)}}
            for k in range(opts.tool_calls)]
    completion = opts.tokens + 10 * opts.tool_calls
    return {"id": "chatcmpl-mock", "object": "chat.completion", "created": 1700000000,
            "model": model, "choices": [{"index": 0, "message": message, "logprobs": None,
                                         "finish_reason": openai_finish(opts)}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion}}


# -- serving ------------------------------------------------------------------------------------

# Anthropic's error type per status (its other 4xx are invalid_request_error, 5xx api_error)
ANTHROPIC_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                         403: "permission_error", 404: "not_found_error",
                         413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
                         529: "overloaded_error"}


@dataclass(frozen=True, slots=True)
class _Wire:
    name: str
    content_type: str

    def prelude(self, opts: MockOptions, model: str, prompt: int, usage: bool) -> bytes:
        text = has_text(opts)
        return anthropic_prelude(model, prompt, text) if self.name == "anthropic" else \
            openai_prelude(model, usage, text)

    def delta(self, i: int, model: str, usage: bool) -> bytes:
        return anthropic_delta(i) if self.name == "anthropic" else openai_delta(i, model, usage)

    def error(self) -> bytes:
        return anthropic_error() if self.name == "anthropic" else openai_error()

    def epilogue(self, opts: MockOptions, model: str, prompt: int, usage: bool) -> bytes:
        return anthropic_epilogue(opts) if self.name == "anthropic" else \
            openai_epilogue(opts, model, prompt, usage)

    def message(self, opts: MockOptions, model: str, prompt: int) -> dict[str, Any]:
        return anthropic_message(opts, model, prompt) if self.name == "anthropic" else \
            openai_completion(opts, model, prompt)

    def error_body(self, status: int, msg: str = "") -> dict[str, Any]:
        """The error as the provider types it: a 401 read as a server fault (`api_error`)
        told a client testing its key handling that the provider failed."""
        msg = msg or f"mock error status {status}"
        if self.name == "anthropic":
            kind = ANTHROPIC_ERROR_TYPES.get(status) or (
                "invalid_request_error" if status < 500 else "api_error")
            return {"type": "error", "error": {"type": kind, "message": msg}}
        if status == 429:  # as OpenAI words a rate limit
            return {"error": {"message": msg, "type": "requests", "param": None,
                              "code": "rate_limit_exceeded"}}
        return {"error": {"message": msg, "param": None,
                          "type": "invalid_request_error" if status < 500 else "server_error",
                          "code": "invalid_api_key" if status == 401 else None}}


ANTHROPIC = _Wire("anthropic", "text/event-stream; charset=utf-8")
OPENAI = _Wire("openai", "text/event-stream; charset=utf-8")


# Built bodies by request shape, oldest first. Clients choose the shape (`tokens`, the model
# name), and the embedded default serves the mock in the proxy's process: the memo is bounded
# in bytes, and a body too large for it is built each time.
_BODIES: dict[tuple[Any, ...], bytes] = {}
_BODIES_MAX_BYTES = 32 << 20
_BODY_MEMO_MAX = 1 << 20
_bodies_bytes = 0


def unpaced_body(wire: _Wire, opts: MockOptions, model: str, prompt: int, usage: bool) -> bytes:
    global _bodies_bytes
    key = (wire, opts, model, prompt, usage)
    body = _BODIES.get(key)
    if body is None:
        body = _build_body(wire, opts, model, prompt, usage)
        if len(body) <= _BODY_MEMO_MAX:
            while _BODIES and _bodies_bytes + len(body) > _BODIES_MAX_BYTES:
                _bodies_bytes -= len(_BODIES.pop(next(iter(_BODIES))))
            _BODIES[key] = body
            _bodies_bytes += len(body)
    return body


def _build_body(wire: _Wire, opts: MockOptions, model: str, prompt: int, usage: bool) -> bytes:
    parts = [wire.prelude(opts, model, prompt, usage)]
    for i in range(opts.tokens):
        if i == opts.error_after:
            parts.append(wire.error())
            return b"".join(parts)
        parts.append(wire.delta(i, model, usage))
    if opts.error_after == opts.tokens:
        parts.append(wire.error())
        return b"".join(parts)
    parts.append(wire.epilogue(opts, model, prompt, usage))
    return b"".join(parts)


async def _serve(request: web.Request, wire: _Wire) -> web.StreamResponse:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return web.json_response(wire.error_body(400), status=400)
    model = body.get("model")
    messages = body.get("messages")
    if not isinstance(model, str) or not isinstance(messages, list) or not messages or (
            wire is ANTHROPIC and not isinstance(body.get("max_tokens"), int)):
        return web.json_response(wire.error_body(400), status=400)
    try:
        opts = MockOptions.parse(model, request.headers.get("x-mock-options"))
    except MockOptionError as e:  # in the provider's error shape, so the proxy relays why
        return web.json_response(wire.error_body(400, str(e)), status=400)
    if opts.stall_ms:
        await asyncio.sleep(opts.stall_ms / 1000)
    if opts.status != 200:
        wait = {"retry-after": "1"} if opts.status in WAIT_STATUSES else None
        return web.Response(body=orjson.dumps(wire.error_body(opts.status)), status=opts.status,
                            content_type="application/json", headers=wait)
    opts = opts.capped(body.get("max_completion_tokens", body.get("max_tokens")))
    prompt = prompt_tokens(body)
    if not body.get("stream"):
        return await _whole(request, wire, opts, model, prompt)
    usage = bool((body.get("stream_options") or {}).get("include_usage"))
    resp = web.StreamResponse(headers={"content-type": wire.content_type,
                                       "cache-control": "no-cache"})
    await resp.prepare(request)
    if opts.reset_first:
        request.transport.close()  # type: ignore[union-attr]
        return resp
    if opts.tps <= 0 and opts.ttft_ms <= 0 and opts.truncate_after < 0 and not opts.flush:
        await resp.write(unpaced_body(wire, opts, model, prompt, usage))
        await resp.write_eof()
        return resp
    await _paced(request, resp, wire, opts, model, prompt, usage)
    return resp


async def _whole(request: web.Request, wire: _Wire, opts: MockOptions, model: str,
                 prompt: int) -> web.StreamResponse:
    """A non-streamed answer fails as its stream would: an error event is the provider's
    error status (Anthropic's overloaded_error is a 529), a cut or reset stream a body cut
    short; `ttft_ms` is the wait before it."""
    if opts.ttft_ms:
        await asyncio.sleep(opts.ttft_ms / 1000)
    if 0 <= opts.error_after <= opts.tokens:
        status = 529 if wire is ANTHROPIC else 503
        error = orjson.loads(wire.error().partition(b"data: ")[2])
        return web.Response(body=orjson.dumps(error), status=status,
                            content_type="application/json")
    answer = orjson.dumps(wire.message(opts, model, prompt))
    if opts.reset_first or 0 <= opts.truncate_after <= opts.tokens:
        resp = web.StreamResponse(headers={"content-type": "application/json"})
        resp.content_length = len(answer)
        await resp.prepare(request)
        if not opts.reset_first:
            await resp.write(answer[:len(answer) // 2])
        request.transport.close()  # type: ignore[union-attr]
        return resp
    return web.Response(body=answer, content_type="application/json")


async def _paced(request: web.Request, resp: web.StreamResponse, wire: _Wire, opts: MockOptions,
                 model: str, prompt: int, usage: bool) -> None:
    await resp.write(wire.prelude(opts, model, prompt, usage))
    loop = asyncio.get_running_loop()
    # Each delta is due at a fixed time from the first one's, not a gap after the one before:
    # on a busy loop every sleep overshoots a little, and fixed gaps would add that up.
    due = loop.time() + opts.ttft_ms / 1000
    if opts.ttft_ms:
        await _sleep_until(loop, due)
    gap = 1 / opts.tps if opts.tps > 0 else 0
    for i in range(opts.tokens):
        if i == opts.truncate_after:
            request.transport.close()  # type: ignore[union-attr]  # an abrupt reset
            return
        if i == opts.error_after:
            await resp.write(wire.error())
            await resp.write_eof()
            return
        if i and gap:
            due += gap
            await _sleep_until(loop, due)
        await resp.write(wire.delta(i, model, usage))
    if opts.truncate_after == opts.tokens:
        request.transport.close()  # type: ignore[union-attr]
        return
    await resp.write(wire.epilogue(opts, model, prompt, usage))
    await resp.write_eof()


async def _sleep_until(loop: asyncio.AbstractEventLoop, when: float) -> None:
    """asyncio.sleep with a deadline: the same future and timer, without reading the clock."""
    wake = loop.create_future()
    timer = loop.call_at(when, _wake, wake)
    try:
        await wake
    finally:
        timer.cancel()


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def anthropic_messages(request: web.Request) -> web.StreamResponse:
    return await _serve(request, ANTHROPIC)


async def openai_chat(request: web.Request) -> web.StreamResponse:
    return await _serve(request, OPENAI)


# The largest body the mock takes. aiohttp's default, 1 MiB, answered a request with an image
# of a few MB 413, which the APIs it stands in for take (Anthropic's cap is 32 MB); this is
# above any body the proxy accepts by default (`server.max_body_bytes`, 10 MiB).
MAX_BODY = 64 * 2**20


def create_mock_app() -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post("/v1/messages", anthropic_messages)
    app.router.add_post("/v1/chat/completions", openai_chat)
    return app


async def start_mock_server(host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, str]:
    """Serve the mock on loopback; returns the runner and its base URL."""
    runner = web.AppRunner(create_mock_app(), access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096)  # benchmarks open thousands at once
    await site.start()
    sock = site._server.sockets[0]  # type: ignore[union-attr]
    bound_host, bound_port = sock.getsockname()[:2]
    return runner, f"http://{bound_host}:{bound_port}"
