"""Locust load test for streamproxy's streaming chat completions.

Locust times whole requests only; a streaming user needs more. Each stream reports, as locust
statistics (request type STREAM, so they sit in the same tables, CSVs and charts):

    <scenario> TTFT            request sent → first content token (ms)
    <scenario> inter-token     gap between two content chunks (ms), one sample per chunk
    <scenario> stream          request sent → data: [DONE] (ms); a failure when the
                               stream is cut, ends with an error frame or without [DONE];
                               its "size" is the stream's completion tokens, not bytes
    <scenario> tokens/s        completion tokens per second of the stream — the "response
                               time" columns hold tokens/s here, not ms; kept out of the
                               Aggregated row (logged to its own row, not as a request)

Configuration, all by environment variable (see loadtests/README.md):

    SP_SCENARIOS   comma-separated scenarios to run, default "translated,passthrough":
                   translated   the built-in mock in Anthropic's format (translation path)
                   passthrough  the built-in mock in OpenAI's format (pass-through path)
                   custom       SP_MODEL against whatever the proxy routes it to
    SP_MODEL       model for `custom` (e.g. "claude/claude-sonnet-4-5")
    SP_MOCK        mock knobs for the two mock scenarios, default "tokens=100,tps=100"
    SP_PROMPT      the user message, default a short one
    SP_MAX_TOKENS  max_completion_tokens, default 256
    SP_API_KEY     sent as `Authorization: Bearer` (a proxy key, or a provider key)
    SP_HEADERS     extra headers, JSON object (e.g. '{"x-portkey-provider": "openai"}')
    SP_WAIT        seconds each user waits between streams, default 0
    SP_CA_BUNDLE   CA certificates (PEM file) an https --host's certificate chains to
    SP_TIMEOUT     seconds to wait for the connection, the response headers and each read
                   of the stream, default 600; a stream that stalls longer is a failure
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from typing import Any

from locust import HttpUser, constant, events, task

STREAM_TYPE = "STREAM"
PATH = "/v1/chat/completions"


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


MOCK = _env("SP_MOCK", "tokens=100,tps=100")
MODELS = {
    "translated": f"mock/{MOCK}",
    "passthrough": f"mock-openai/{MOCK}",
    "custom": os.environ.get("SP_MODEL", ""),
}
SCENARIOS = [s.strip() for s in _env("SP_SCENARIOS", "translated,passthrough").split(",")
             if s.strip()]


def _number(name: str, default: str, kind: type[float] | type[int], what: str) -> Any:
    """A numeric setting, refused here, once: read in a user's on_start, a bad one was a
    traceback for every user and a run that streamed nothing."""
    try:
        return kind(_env(name, default))
    except ValueError:
        raise SystemExit(f"{name}: not {what}: {os.environ[name]!r}") from None


# Locust's client has no timeout: a hung proxy or upstream would hold its users for ever and
# the run would end with no failure at all. 600 s is the OpenAI SDK's default and the proxy's
# own first-token timeout (a reasoning model can think that long before its first byte).
TIMEOUT = _number("SP_TIMEOUT", "600", float, "a number of seconds")
MAX_TOKENS = _number("SP_MAX_TOKENS", "256", int, "a whole number of tokens")
WAIT = _number("SP_WAIT", "0", float, "a number of seconds")
# Read once, here: read per user, a bad value was a traceback for each user and a run that
# idled to its end with nothing streamed.
try:
    EXTRA_HEADERS = json.loads(os.environ.get("SP_HEADERS") or "{}")
except ValueError as e:
    raise SystemExit(f"SP_HEADERS: not a JSON object of headers ({e}): "
                     f"{os.environ['SP_HEADERS']!r}") from None
if not isinstance(EXTRA_HEADERS, dict):
    raise SystemExit(f"SP_HEADERS: not a JSON object of headers: {os.environ['SP_HEADERS']!r}")
for _name in SCENARIOS:
    if _name not in MODELS:
        raise SystemExit(f"SP_SCENARIOS: unknown scenario {_name!r} (known: {', '.join(MODELS)})")
    if not MODELS[_name]:
        raise SystemExit("SP_SCENARIOS=custom needs SP_MODEL")


def _chat_url(base_url: str) -> str:
    """The chat endpoint under --host. Locust only appends a path to the host: one written as
    a client's base URL (`http://127.0.0.1:8787/v1`, as the openai SDK takes it) or with a
    trailing slash made every request a 404 on `/v1/v1/…` or `//v1/…`. A path prefix (a
    deployment behind `/llm`) is kept."""
    base = base_url.rstrip("/")
    return base + (PATH.removeprefix("/v1") if base.endswith("/v1") else PATH)


def _headers() -> dict[str, str]:
    headers = {"content-type": "application/json", "accept": "text/event-stream"}
    if os.environ.get("SP_API_KEY"):
        headers["authorization"] = f"Bearer {os.environ['SP_API_KEY']}"
    # A value that is no string is sent as its JSON text: an inline x-portkey-config object
    # (Portkey's header is the config's JSON), a number (requests takes only strings). A null
    # (a template's unset value) is no header, as requests reads None: its text "null" was
    # sent, a config or provider of that name.
    headers.update({k: v if isinstance(v, str) else json.dumps(v)
                    for k, v in EXTRA_HEADERS.items() if v is not None})
    return headers


# What a delta carries that the model generated: `reasoning` is OpenRouter's, Groq's and vLLM's
# name for `reasoning_content` (passed through as is), `refusal` OpenAI's refused answer.
CONTENT_FIELDS = ("content", "reasoning_content", "reasoning", "refusal", "tool_calls")


class StreamFailed(Exception):
    pass


class StreamReader:
    """Splits the response into SSE events and keeps the per-stream figures."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.buffer = b""
        self.cr_ended = False  # the last read ended in CR: an LF starting the next is its pair
        self.first_token: float | None = None
        self.last_token: float | None = None
        self.gaps: list[float] = []
        self.chunks = 0  # chunks that carried content
        self.usage_tokens: int | None = None
        self.reasoning_tokens = 0  # usage's completion_tokens_details.reasoning_tokens
        self.reasoning_streamed = False
        self.finish_reason: str | None = None  # the last choice's, to say why none had content
        self.done = False
        self.error: str | None = None
        self.content_type = "text/event-stream"
        self.head = b""  # the start of a body served as no event stream, to name its failure

    def feed(self, data: bytes, now: float) -> None:
        # A line ends in CR, LF or CRLF (the SSE spec; the openai SDK reads all three): each is
        # made one LF, the LF of a CRLF cut between two reads dropped.
        if self.cr_ended and data[:1] == b"\n":
            data = data[1:]
        self.cr_ended = data[-1:] == b"\r"
        self.buffer += data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *events, self.buffer = self.buffer.split(b"\n\n")
        for event in events:
            self.event(event, now)

    def event(self, event: bytes, now: float) -> None:
        payload = b"\n".join(line[5:].lstrip() for line in event.split(b"\n")
                             if line.startswith(b"data:"))
        if not payload:
            return
        if payload.startswith(b"[DONE]"):  # as the openai SDK reads it: `[DONE] ` ends it too
            self.done = True
            return
        chunk = json.loads(payload)
        # As the openai SDK reads it: a truthy `error` only (a null one is a healthy chunk),
        # an object with a message or the message itself (Hugging Face TGI sends a string).
        error = chunk.get("error")
        if error:
            self.error = str(error.get("message") or error) if isinstance(error, dict) else str(
                error)
            return
        if chunk.get("usage"):
            usage = chunk["usage"]
            self.usage_tokens = usage.get("completion_tokens")
            self.reasoning_tokens = (usage.get("completion_tokens_details") or {}).get(
                "reasoning_tokens") or 0
        for choice in chunk.get("choices") or []:
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content") or delta.get("reasoning"):
                self.reasoning_streamed = True
            if any(delta.get(field) for field in CONTENT_FIELDS):
                if self.first_token is None:
                    self.first_token = now
                else:
                    self.gaps.append(now - self.last_token)  # type: ignore[operator]
                self.last_token = now
                self.chunks += 1


# A number standing alone (not part of a name: gpt-4o, org-x1), with its unit if a time: a
# count, a wait (60ms, 1.92s), an address.
_NUMBER = re.compile(r"(?<![\w-])\d+(?:\.\d+)*(?:ms|s|m|h)?(?!\w)")
# An ID standing alone: a UUID, a long hex one, a `prefix_` one with digits (OpenAI's request
# `req_1332ed8a…`, Anthropic's `req_011C…`). OpenAI's server error names the failed request's.
_ID = re.compile(r"(?<![\w-])(?:[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}"
                 r"|[0-9a-fA-F]{16,}|[a-z]+_(?=[A-Za-z]*\d)[A-Za-z0-9]{12,})(?![\w-])")


def _grouped(text: str) -> str:
    """Locust makes a row of each distinct failure text: a message with the counts of its
    moment (OpenAI's 429 "Used 199826, Requested 374. Please try again in 60ms", requests'
    "IncompleteRead(1234 bytes read, …)") or the ID of its request would be a row per failure.
    Its numbers and IDs are masked."""
    return _NUMBER.sub("#", _ID.sub("#", text))


def _why_no_stream(resp: Any) -> str:
    """A non-200's status and body; status 0 is locust's "no response", its cause in `error`
    (a TLS certificate not trusted, a refused connection, a name that does not resolve)."""
    if resp.status_code == 0:
        return f"no response: {_grouped(repr(resp.error))}"
    try:
        body = resp.text
    except OSError as e:  # requests' errors are OSErrors. A reset mid-body, raised out of
        # locust's context, was a `stream` failure and the POST row (HTTP failures) had none.
        body = f"(body cut: {type(e).__name__}: {e})"
    return f"HTTP {resp.status_code}: {_grouped(body)[:200]}"


def _reads(resp: Any) -> Iterator[bytes]:
    """The body as it arrives. iter_content(chunk_size=None) reads a body without chunked
    framing (HTTP/1.0, ended by the close, or with a length) to its end in one piece: TTFT was
    the whole stream's time and every gap 0. urllib3's read1 returns what has arrived."""
    raw = resp.raw
    if raw.chunked or not hasattr(raw, "read1"):  # read1: urllib3 2.3 and later
        return resp.iter_content(chunk_size=None)
    return iter(lambda: raw.read1(65536, decode_content=True), b"")


# Enough for a whole non-streamed completion, to read it as JSON; a page is cut much shorter.
HEAD = 65536


def _keeping_head(reads: Iterator[bytes], reader: StreamReader) -> Iterator[bytes]:
    """A body served as no event stream is still read as one (a server may mislabel its
    stream); its start is kept, to say what came if it holds no stream."""
    for data in reads:
        if len(reader.head) < HEAD:
            reader.head += data[:HEAD - len(reader.head)]
        yield data


def _what_came(content_type: str, head: bytes) -> str:
    """A 200 that is no stream: an upstream that ignored `stream: true` (its whole answer as
    JSON), an error answered with a 200, a front proxy's page. A completion's id and text
    differ per request: it is named by its keys, so that it is one failure row."""
    text = head.decode(errors="replace")
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        error = doc.get("error")
        if error:
            shown = "error: " + (str(error.get("message") or error) if isinstance(error, dict)
                                 else str(error))
        else:
            shown = f"JSON {doc.get('object') or 'object'} with {', '.join(doc)}"
    else:
        shown = " ".join(text.split())[:120]
    return f"not an event stream ({content_type or 'no content-type'}): {_grouped(shown)[:200]}"


def _how_it_failed(r: StreamReader) -> StreamFailed | None:
    """Why a stream read to its end failed, or None."""
    if r.error is not None:
        return StreamFailed(f"error frame: {_grouped(r.error)}")
    if not r.done and "event-stream" not in r.content_type:
        return StreamFailed(_what_came(r.content_type, r.head))
    if not r.done:
        return StreamFailed("stream ended without [DONE]")
    if r.first_token is None:
        # A reasoning model can spend a low SP_MAX_TOKENS thinking, unseen (`length`), a
        # filter can stop it (`content_filter`): said, so that the cause shows in the report.
        why = [f"finish_reason {r.finish_reason}"] if r.finish_reason else []
        if r.reasoning_tokens and not r.reasoning_streamed:
            why.append("hidden reasoning only")
        return StreamFailed("no content token" + (f" ({', '.join(why)})" if why else ""))
    return None


def _report(name: str, ms: float, length: int = 0, exception: Exception | None = None) -> None:
    events.request.fire(request_type=STREAM_TYPE, name=name, response_time=ms,
                        response_length=length, exception=exception, context={})


class _StreamingUser(HttpUser):
    abstract = True
    scenario = ""
    wait_time = constant(WAIT)
    url = PATH

    def on_start(self) -> None:
        self.body = json.dumps({
            "model": MODELS[self.scenario], "stream": True,
            "stream_options": {"include_usage": True},
            # OpenAI's current name, which its reasoning models require (they refuse
            # `max_tokens`); the proxy's translators and renaming presets read it.
            "max_completion_tokens": MAX_TOKENS,
            "messages": [{"role": "user", "content": _env(
                "SP_PROMPT", "Write two sentences about load testing.")}],
        })
        self.headers = _headers()
        # HttpSession's base_url: --host without the user info it turned into basic auth.
        self.url = _chat_url(self.client.base_url)
        if os.environ.get("SP_CA_BUNDLE"):  # HttpUser's client ignores REQUESTS_CA_BUNDLE
            self.client.verify = os.environ["SP_CA_BUNDLE"]

    @task
    def stream(self) -> None:
        name = self.scenario
        started = time.perf_counter()
        reader = StreamReader(started)
        try:
            with self.client.post(self.url, data=self.body, headers=self.headers, stream=True,
                                  timeout=TIMEOUT, name=f"{name} POST (headers)",
                                  catch_response=True) as resp:
                if resp.status_code != 200:
                    # One failure, on this row: no stream began, so no `stream` sample (a
                    # few-ms "stream" would also drag the stream times' percentiles down).
                    resp.failure(_why_no_stream(resp))
                    return
                resp.success()
                reads = _reads(resp)
                reader.content_type = resp.headers.get("content-type") or ""
                if "event-stream" not in reader.content_type:
                    reads = _keeping_head(reads, reader)
                for data in reads:
                    reader.feed(data, time.perf_counter())
                    if reader.done:
                        # The stream's end, as the openai SDK reads it: it stops at [DONE] and
                        # closes the response. Read on, a body held open after it (a server or
                        # front proxy that ends it late) was in `stream`, or a timeout failure.
                        break
                resp.close()
        except Exception as e:  # connection reset, bad JSON, …: a stream error
            # What arrived before is reported as an error frame's is: the client saw its first
            # token and gaps, and TTFT's count is every stream that had one.
            self.report(name, reader, time.perf_counter(),
                        StreamFailed(_grouped(f"{type(e).__name__}: {e}")))
            return
        self.report(name, reader, time.perf_counter())

    def report(self, name: str, r: StreamReader, ended: float,
               cut: Exception | None = None) -> None:
        """`cut`: the exception that ended the reading (a reset, a read timeout, bad JSON)."""
        total_ms = (ended - r.started) * 1000
        failure = cut or _how_it_failed(r)
        tokens = r.usage_tokens or r.chunks
        _report(f"{name} stream", total_ms, tokens, failure)
        if r.first_token is None:
            return
        _report(f"{name} TTFT", (r.first_token - r.started) * 1000)
        for gap in r.gaps:
            _report(f"{name} inter-token", gap * 1000)
        # Reasoning kept hidden (OpenAI's o-series and gpt-5, Gemini's thinking) is counted in
        # completion_tokens but was generated before the first visible token.
        visible = tokens if r.reasoning_streamed else tokens - r.reasoning_tokens
        generating = (r.last_token or r.first_token) - r.first_token
        if r.chunks > 1 and generating > 0:
            # The first chunk's tokens arrived as the clock started: its share is left out (one
            # token when a chunk is one; Gemini's and Bedrock's chunks carry several).
            # Logged to its own row only: fired as a request, it went into locust's Aggregated
            # row too, tokens/s read as milliseconds in its average and percentiles.
            self.environment.stats.get(f"{name} tokens/s", STREAM_TYPE).log(
                visible * (r.chunks - 1) / r.chunks / generating, 0)


class TranslatedUser(_StreamingUser):
    scenario = "translated"
    abstract = "translated" not in SCENARIOS


class PassthroughUser(_StreamingUser):
    scenario = "passthrough"
    abstract = "passthrough" not in SCENARIOS


class CustomUser(_StreamingUser):
    scenario = "custom"
    abstract = "custom" not in SCENARIOS

