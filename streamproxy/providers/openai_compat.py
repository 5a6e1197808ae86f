"""OpenAI-compatible upstreams (`type: openai`): the pass-through path.

A streamed answer is already in the client's format, so each event's bytes are re-framed and
forwarded without touching the JSON. Only the few events that matter to the gateway are parsed,
picked out by a cheap byte search first: the usage chunk, finish chunks, error objects and
empty-`choices` chunks (and, when the request offers tools, tool-call deltas without the
`index` some servers leave out: they get one). The request always asks the upstream for usage
(`stream_options.include_usage`) so logs and metrics have token counts; the usage chunk is
forwarded only when the client asked for it itself. A stream that closes without `[DONE]`
once every choice has finished ends normally; an error object reaches the client with the
provider's own fields (`kept_fields`).

Speed: an upstream framed as OpenAI frames (`data: {…}` and a blank line, LF only) sends the
events between its first and its finish chunk as the bytes the client gets. A read's run of
them — up to the first event worth parsing — is checked as a whole by a few C-level scans
(one regex search, byte counts) and forwarded as one piece, with no event decoded; the events
around it take the decoder. The counts prove the framing: see `_run_events`.
"""

from __future__ import annotations

import functools
import math
import re
import time
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from streamproxy._json import loads_lenient
from streamproxy.config import ConfigError
from streamproxy.decode.sse import SSEEvent
from streamproxy.errors import StreamDecodeError, StreamTruncated, UpstreamStatusError
from streamproxy.openai_api.chunks import ChunkSink, no_usage
from streamproxy.providers.base import (
    Provider,
    SSETranslator,
    StreamTranslator,
    UpstreamRequest,
    context_overflow,
    detail_message,
    generic_error,
    kept_fields,
    load_event_json,
    quota_not_retried,
    upstream_code,
)

if TYPE_CHECKING:
    from streamproxy.openai_api.request import ChatRequest
    from streamproxy.routing.target import Target

# Byte patterns that mark an event worth parsing: a usage object, an error, a finish reason,
# empty or null choices. A false positive only costs a parse. One regex scan per event, not
# one substring scan per pattern (four times cheaper on a typical 200-byte chunk).
# An OpenAI organization or project id (a config target's openai_organization is held to the
# same rule: routing/portkey_config.py OPTION_VALUE).
_ACCOUNT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
INTERESTING = re.compile(
    rb'"(?:usage": ?\{|error"|finish_reason": ?"|choices": ?(?:\[\]|null))')
# When the request offered tools, also tool calls whose first key is not OpenAI's leading
# `index` (it may be missing: `_index_tool_calls`). Only then: one more alternative costs the
# scan of every event ~10 %.
_TOOL_CALL_WITHOUT_INDEX = rb'"tool_calls": ?\[\{"(?!index")'


@functools.cache
def with_tool_calls(pattern: re.Pattern[bytes],
                    calls: bytes = _TOOL_CALL_WITHOUT_INDEX) -> re.Pattern[bytes]:
    return re.compile(pattern.pattern + b"|" + calls)


_RUN_HEAD = b"data: {"
_RUN_SEPARATOR = b"}\n\ndata: {"  # one event's end and the next one's start


def _run_events(run: bytes) -> int:
    """How many events `run` is when it is only events of exactly the form `data: {…}\\n\\n`
    with no CR or LF inside (0 when it is anything else): every LF is one of a separator's
    two or the last two, so n events hold 2n LFs and n-1 separators (which cannot overlap),
    and each event's line lies between a `data: {` and a `}`. The decoder would hand each to
    `on_event` as `{…}`, to be re-framed as the same bytes."""
    lines = run.count(0x0A)
    if (0x0D in run or lines % 2 or not run.startswith(_RUN_HEAD)
            or not run.endswith(b"}\n\n") or run.count(_RUN_SEPARATOR) != lines // 2 - 1):
        return 0
    return lines // 2


class PassthroughTranslator(SSETranslator):
    # What ends a run: the events `on_event` parses. None: no runs (a subclass that looks at
    # every event).
    run_stop: ClassVar[re.Pattern[bytes] | None] = INTERESTING
    # The tool-call deltas parsed when the request offered tools (a subclass can widen it).
    tool_call_stop: ClassVar[bytes] = _TOOL_CALL_WITHOUT_INDEX

    def __init__(self, out: ChunkSink, max_event_bytes: int, *, provider: str,
                 client_wants_usage: bool, choices: int = 1,
                 tools_offered: bool = False) -> None:
        super().__init__(out, max_event_bytes)
        self._provider = provider
        self._forward_usage = client_wants_usage
        self._choices = choices  # `n`
        self._finished: set[Any] = set()  # the indexes of the choices whose finish came
        self._interesting = (with_tool_calls(INTERESTING, self.tool_call_stop)
                             if tools_offered else INTERESTING)
        self._run_stop = self.run_stop
        if tools_offered and self.run_stop is not None:
            self._run_stop = with_tool_calls(self.run_stop, self.tool_call_stop)
        self._tool_calls: dict[int, _ToolCalls] = {}  # by choice: see _index_tool_calls
        self._usage_reported = False  # the upstream sent usage (a subclass's moved one too)
        self._finish_head: dict[str, Any] | None = None  # a finish chunk's id, model, …
        # Sinks that take framed events whole (the encoders, the tee) get runs forwarded.
        self._raw_run = getattr(out, "raw_run", None) if self.run_stop is not None else None

    def feed(self, data: bytes) -> None:
        forward = self._raw_run
        # A read longer than the cap may hold a whole event over it: a run would forward it,
        # the decoder refuses it (as it does split across reads).
        if forward is None or self.done or len(data) > self.max_event_bytes:
            super().feed(data)
            return
        if not self._decoder.between_events:
            # The stream's first read (the decoder checks for a BOM) or the rest of an event:
            # the decoder takes the bytes to the first blank line.
            first = data.find(b"\n\n") + 2
            if first < 2 or first == len(data):
                super().feed(data)
                return
            super().feed(data[:first])
            data = data[first:]
            if self.done or not self._decoder.between_events:
                super().feed(data)
                return
        stop = self._run_stop.search(data)  # type: ignore[union-attr]
        end = data.rfind(b"\n\n", 0, len(data) if stop is None else stop.start()) + 2
        run = data[:end] if end < len(data) else data
        events = _run_events(run) if end >= 2 else 0
        if not events:
            super().feed(data)
            return
        forward(run, events)
        if end < len(data):
            super().feed(data[end:])

    def on_event(self, event: SSEEvent) -> None:
        data = event.data
        if data[:6] == b"[DONE]":
            self.on_done()
            return
        if 0x0A in data:  # several data: lines, joined by the decoder: one line again
            if data.isspace():
                return  # (a keep-alive: see below)
            data = orjson.dumps(load_event_json(data))
        if self._interesting.search(data) is not None:
            self.on_chunk(load_chunk(data), data)
            return
        if data[:1] != b"{" or data[-1:] != b"}":
            if not data.strip():
                # An empty `data:` event, some relays' keep-alive: it carries nothing, and
                # forwarded it would fail the openai SDK (`json.loads("")`) as it fails here.
                return
            # Not framed like a JSON object: a cut or garbled event is an error, never forwarded
            # (the parse, only on this rare path, still lets padded JSON through).
            load_event_json(data)
        self.out.raw(data)

    def close(self) -> None:
        """EOF without `[DONE]`: some OpenAI-compatible servers end so, right after the finish
        chunk (and the usage chunk). Once every choice has its finish reason the answer is
        complete, so the stream ends normally; before that it is a truncation."""
        try:
            super().close()
        except StreamTruncated:
            if len(self._finished) < self._choices:
                raise
            self.on_done()

    def usage_is_final(self) -> bool:
        # Usage may come on every chunk (vLLM's continuous_usage_stats, servers that send it
        # unasked): the count given once every choice had finished (on its finish chunk, or
        # the usage chunk after) is the answer's; one before is a running count.
        return len(self._finished) >= self._choices

    def on_unended_event(self, event: SSEEvent) -> None:
        # Forwarded only if it parses: a cut that happens to end with "}" is an error.
        if event.data[:6] != b"[DONE]" and event.data.strip():
            load_event_json(event.data)
        self.on_event(event)

    def on_done(self) -> None:
        """The upstream's `[DONE]`, the normal end (a subclass may emit a last chunk first)."""
        if self._forward_usage and not self._usage_reported:
            # A client that asked for usage gets its chunk, as OpenAI always sends it (the
            # openai SDK's final completion, LangChain read it): zeros when the upstream (a
            # server that ignores stream_options) reported none, as translated streams give.
            head = self._finish_head or self.out.envelope()
            self.out.zero_usage(orjson.dumps({**head, "object": "chat.completion.chunk",
                                              "choices": [], "usage": no_usage()}))
        self.out.end()
        self.done = True

    def on_chunk(self, chunk: dict[str, Any], data: bytes) -> None:
        """An event worth a look, parsed; `data` (its bytes) is what gets forwarded. Provider
        quirks hook in by overriding this (providers/presets.py, providers/azure.py)."""
        error = chunk.get("error")
        if not error and chunk.get("object") == "error" and "choices" not in chunk:
            # The error object itself, not under an `error` key (vLLM-style servers' and
            # Mistral's shape); dropped as a chunk without choices, the client got `[DONE]`.
            error = {k: v for k, v in chunk.items() if k != "object"}
        if error:
            self.out.error(error_object(error, self._provider))
            self.done = True
            return
        usage = chunk.get("usage")
        if usage:
            self.out.usage(usage)
            self._usage_reported = True
        choices = chunk.get("choices")
        if not choices:
            # The usage chunk (vLLM sends `choices: null`), or Azure's prompt-filter preamble.
            if usage and self._forward_usage:
                if choices is None:
                    chunk["choices"] = []
                    data = orjson.dumps(chunk)
                self.out.raw(data)
            return
        changed = self._index_tool_calls(choices)
        reason = self._note_finishes(choices)
        if reason is not None and self._finish_head is None:
            # (the stream's envelope, for a usage chunk of zeros: see on_done)
            self._finish_head = {k: v for k, v in chunk.items() if k not in _NOT_HEAD}
        finish = finish_apart(chunk, choices)
        if finish is not None:
            self.out.raw(orjson.dumps(chunk))
            self.out.raw(orjson.dumps(finish), reason)
            return
        self.out.raw(orjson.dumps(chunk) if changed else data, reason)

    def _note_finishes(self, choices: list[Any]) -> str | None:
        """Mark the choices this chunk finishes (a server may finish several in one chunk);
        the answer's finish reason, as a non-streamed answer's, is choice 0's."""
        answer_reason = None
        for choice in choices:
            reason = choice.get("finish_reason") if isinstance(choice, dict) else None
            if reason:
                number = choice_number(choice)
                self._finished.add(number)
                if number == 0:
                    answer_reason = reason
        return answer_reason

    def _index_tool_calls(self, choices: list[Any]) -> bool:
        """Give tool-call deltas without `index` one, a call's first delta without `type`
        `"function"`, and a `stop` after them `tool_calls` (True if the chunk changed).
        Gemini's OpenAI-compatible endpoint and older Ollama servers leave the index out;
        the openai SDK's stream helpers and the AI SDK refuse such chunks. Mistral can leave
        both out; the SDK's helper parses a strict tool's arguments only for a call typed
        `function`. A call starts with an id not seen before (or, without an id, with its
        function's name); a delta with neither continues the choice's last call."""
        changed = False
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            number = choice_number(choice)
            delta = choice.get("delta")
            calls = delta.get("tool_calls") if isinstance(delta, dict) else None
            for position, call in enumerate(calls if isinstance(calls, list) else ()):
                if not isinstance(call, dict):
                    continue
                fixed = call
                if "index" not in call:
                    seen = self._tool_calls.setdefault(number, _ToolCalls())
                    fixed = {"index": seen.index_of(call), **call}
                if "type" not in call and _names_a_call(call):
                    fixed = {**fixed, "type": "function"}
                if fixed is not call:
                    calls[position] = fixed
                    changed = True
            if choice.get("finish_reason") == "stop" and number in self._tool_calls:
                # (Gemini's streams end a tool call so; its non-streamed answers, and OpenAI,
                # say tool_calls, which agent loops wait for)
                choice["finish_reason"] = "tool_calls"
                changed = True
        return changed


# A chunk's keys that are not the stream's envelope (id, object, created, model, …).
_NOT_HEAD = frozenset(("choices", "usage", "error"))


def finish_apart(chunk: dict[str, Any], choices: list[Any]) -> dict[str, Any] | None:
    """The finish chunk to send after `chunk` when a choice's finish reason came on a chunk
    that starts a tool call (Mistral's and Gemini's OpenAI-compatible streams send their
    calls on the finish chunk), or None. The openai SDK's stream helper fires a call's
    `tool_calls.function.arguments.done` when the next call starts or when a finish arrives
    while it is the latest: on one chunk, the finish is seen before that chunk's calls, so
    the call it started never got its event (nor its `parsed_arguments` checked). Split, as
    OpenAI sends it: the chunk without the finish (and without its usage: the helper keeps
    the last chunk's), then an empty delta with it. A call's last fragment on the finish
    chunk is complete when the finish is seen: left as it came. Only finish chunks get here:
    no per-chunk cost."""
    finishing = [choice for choice in choices if isinstance(choice, dict)
                 and choice.get("finish_reason") and _starts_a_call(choice.get("delta"))]
    if not finishing:
        return None
    finish = {key: value for key, value in chunk.items() if key != "choices"}
    finish["choices"] = [{**choice, "delta": {}, "logprobs": None} for choice in finishing]
    for choice in finishing:
        choice["finish_reason"] = None
    if chunk.get("usage"):
        chunk["usage"] = None
    return finish


def _starts_a_call(delta: Any) -> bool:
    calls = delta.get("tool_calls") if isinstance(delta, dict) else None
    return isinstance(calls, list) and any(
        isinstance(call, dict) and _names_a_call(call) for call in calls)


def choice_number(choice: dict[str, Any]) -> int:
    """A choice's `index`; 0 when it is none or no integer (a garbled one must not raise)."""
    number = choice.get("index")
    return number if isinstance(number, int) else 0


def _names_a_call(call: dict[str, Any]) -> bool:
    """A tool-call delta that carries its call's id or function name: a call's first."""
    function = call.get("function")
    return bool(call.get("id")) or (isinstance(function, dict) and bool(function.get("name")))


class _ToolCalls:
    """One choice's tool calls seen without `index`: the ordinals given."""

    __slots__ = ("by_id", "latest")

    def __init__(self) -> None:
        self.by_id: dict[str, int] = {}
        self.latest = -1

    def index_of(self, call: dict[str, Any]) -> int:
        call_id = call.get("id")
        if not isinstance(call_id, str):
            call_id = None
        if call_id and call_id in self.by_id:
            return self.by_id[call_id]
        function = call.get("function")
        if call_id or (isinstance(function, dict) and function.get("name")) or self.latest < 0:
            self.latest += 1
            if call_id:
                self.by_id[call_id] = self.latest
        return self.latest


def load_chunk(data: bytes) -> dict[str, Any]:
    """An OpenAI chunk event, parsed: a JSON object whose `choices`, when present, is an array
    (so `choices[0]` is safe wherever a chunk is inspected)."""
    chunk = load_event_json(data)
    choices = chunk.get("choices")
    if choices is not None and not isinstance(choices, list):
        raise StreamDecodeError("the upstream sent a chunk whose 'choices' is not an array")
    return chunk


def error_answer(body: bytes, provider: str) -> UpstreamStatusError | None:
    """The error a non-streamed 200 carries instead of a completion, or None. OpenRouter
    answers 200 once the model has started and puts a later failure in the body (its stream
    sends the same object as a `data: {"error": …}` event): passed on, the client would get a
    200 that is no completion, and no retry or fallback would act on it."""
    if b'"error"' not in body:  # (a completion's text holds the word only escaped)
        return None
    try:  # (lenient, as the executor's parse: else a cut message made the error a 200)
        answer = loads_lenient(body)
    except orjson.JSONDecodeError:
        return None  # the executor's parse reports it
    if not isinstance(answer, dict) or answer.get("choices"):
        return None
    error = answer.get("error")
    if not error and answer.get("object") == "error":
        # vLLM's and Mistral's shape, the error object itself (as their error events): it went
        # to the client as a completion
        error = {k: v for k, v in answer.items() if k != "object"}
    return error_object(error, provider) if error else None


# A whole answer's choice's keys that its stream's finish chunk does not repeat.
_ANSWER_ONLY = frozenset(("index", "message", "logprobs", "finish_reason"))


def answer_events(body: bytes) -> bytes | None:
    """A whole `chat.completion` as the events of its stream, or None for any other body. Some
    OpenAI-compatible servers answer a stream request so (vLLM and llama.cpp builds, relays
    that drop `stream`, models that cannot stream): each choice's message as one delta (its
    tool calls given their `index`), its finish on a chunk of its own, then the usage chunk
    and `[DONE]`, which the stream's translator reads as it reads a stream's (the usage goes
    to a client that asked for it). Read once, on a stream request's odd answer only."""
    try:
        answer = loads_lenient(body)
    except orjson.JSONDecodeError:
        return None
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not (isinstance(choices, list) and choices and all(
            isinstance(c, dict) and isinstance(c.get("message"), dict) for c in choices)):
        return None
    head = {k: v for k, v in answer.items() if k not in ("choices", "usage")}
    head["object"] = "chat.completion.chunk"
    chunks = []
    for number, choice in enumerate(choices):
        index = choice.get("index", number)
        delta = dict(choice["message"])
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            delta["tool_calls"] = [{"index": i, **call} if isinstance(call, dict) else call
                                   for i, call in enumerate(calls)]
        chunks.append({**head, "choices": [{"index": index, "delta": delta,
                                            "logprobs": choice.get("logprobs"),
                                            "finish_reason": None}]})
        # The choice's other fields go on its finish chunk, where a stream carries them: a
        # failed choice's `error` (OpenRouter's: the status and message of the failure),
        # `native_finish_reason`, `stop_reason`, Azure's `content_filter_results`.
        rest = {k: v for k, v in choice.items() if k not in _ANSWER_ONLY}
        chunks.append({**head, "choices": [{**rest, "index": index, "delta": {},
                                            "logprobs": None,
                                            "finish_reason": choice.get("finish_reason")}]})
    if answer.get("usage"):
        chunks.append({**head, "choices": [], "usage": answer["usage"]})
    return b"".join(b"data: %b\n\n" % orjson.dumps(c) for c in chunks) + b"data: [DONE]\n\n"


def error_object(error: Any, provider: str, status: int = 502) -> UpstreamStatusError:
    """An OpenAI-compatible error object (an event's, a 200's, a choice's) as our error: the
    status it names, else `status`."""
    if not isinstance(error, dict):
        error = {"message": error}
    code, message = error.get("code"), error.get("message")
    if not isinstance(message, str):
        # (a server's message under `detail`, FastAPI's way, or a validation error's list)
        message = detail_message(message if message is not None else error.get("detail"))
    if not isinstance(message, str) or not message:
        # (an object went out as the message, against OpenAI's shape; nested past the 254
        # levels orjson writes, or a bare nested list through str(), it was a 500)
        message = "the provider reported an error"
    etype = error.get("type")
    err = UpstreamStatusError(_event_status(error, status), message, provider=provider,
                              code=upstream_code(code, etype), fields=kept_fields(error),
                              retry_after=named_wait(error))
    # (an overflow comes this way too: OpenRouter's provider refuses the prompt after the 200,
    # vLLM's engine after its stream began; each names its 400 in `code`; a used-up quota is
    # not retried, as over HTTP)
    return context_overflow(quota_not_retried(err, etype), OVERFLOW)


def named_wait(error: dict[str, Any]) -> float | None:
    """The seconds to wait an error object names in its `metadata` (OpenRouter's, for its
    provider's 429: `retry_after_seconds`, and the provider's `Retry-After` under `headers`;
    for its own, the `X-RateLimit-Reset` under `headers`, epoch milliseconds): an error event
    or a 200's body has no header of its own to say it. None without one."""
    metadata = error.get("metadata")
    if not isinstance(metadata, dict):
        return None
    headers = metadata.get("headers")
    named = [metadata.get("retry_after_seconds_raw"), metadata.get("retry_after_seconds")]
    reset: list[Any] = []
    if isinstance(headers, dict):
        for key, value in headers.items():
            name = key.lower() if isinstance(key, str) else ""
            if name == "retry-after":
                named.append(value)
            elif name == "x-ratelimit-reset":
                reset.append(value)
    for value in named:
        seconds = _number(value)  # (an HTTP-date is read as none)
        if seconds is not None:
            return seconds
    for value in reset:
        # (a reset already past is no wait: the limit has lifted)
        at = _number(value)
        if at is not None:
            return max(0.0, at / 1000 - time.time())
    return None


def _number(value: Any) -> float | None:
    """A JSON value's finite, non-negative number (a numeric string's too), else None."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and value >= 0):
        return float(value)
    return None


def _event_status(error: dict[str, Any], default: int) -> int:
    """The HTTP status an error object names: OpenRouter's numeric `code` (LiteLLM's proxy
    sends it as a string, "429"), else Azure's `status` (its `code` is a name,
    `content_filter`), else Mistral's `raw_status_code` (its `code` is its own number, "1300");
    else the status its OpenAI `code` or `type` name stands for; `default` when none is
    known."""
    code, etype = error.get("code"), error.get("type")
    for status in (code, error.get("status"), error.get("raw_status_code")):
        if isinstance(status, str) and status.isascii() and status.isdigit():
            status = int(status)  # (isascii: int() also reads other scripts' digits)
        if isinstance(status, int) and 400 <= status < 600:
            return status
    for name in (code, etype):  # (the code is the finer: server_error's `overloaded`)
        if isinstance(name, str) and name in STATUS_FOR_NAME:
            return STATUS_FOR_NAME[name]
    return default


# The status each of OpenAI's error types and codes stands for (and Anthropic's overloaded,
# which relays pass on, and Mistral's rate-limit types), for an error object that names no
# number: taken for a 502, a client error was retried as a server error before the first
# byte, a rate limit not waited out.
STATUS_FOR_NAME = {
    "invalid_request_error": 400, "context_length_exceeded": 400,
    "authentication_error": 401, "invalid_api_key": 401,
    "permission_error": 403,
    "not_found_error": 404, "model_not_found": 404,
    "rate_limit_error": 429, "rate_limit_exceeded": 429, "insufficient_quota": 429,
    "server_error": 500, "overloaded": 503, "overloaded_error": 529,
    # Mistral's rate limits where its object has no `raw_status_code` (its `code` is its own
    # number, "1300", "3505"): a 502 was retried at once and no fallback on 429 taken
    "rate_limited": 429, "service_tier_capacity_exceeded": 429,
}


# How OpenAI-compatible servers word a prompt over the model's context, which OpenAI calls
# `context_length_exceeded` and they do not (a code null, or their type again): "This model's
# maximum context length is N tokens. …" (OpenAI's own wording, kept by DeepSeek, vLLM and
# OpenRouter's "This endpoint's …"), Mistral's "Prompt contains N tokens, too large for model
# with M maximum context length", Together's and SGLang's "The input (N tokens) is longer than
# the model's context length (M tokens).", vLLM's engine's "The decoder prompt (length N) is
# longer than the maximum model length of M." and llama.cpp's "request (N tokens) exceeds the
# available context size (M tokens)" (older builds: "the request exceeds the available context
# size, try increasing it"), xAI's "This model's maximum prompt length is N but the request
# contains M tokens.", Moonshot's "Your request exceeded model token limit: N (requested: M)",
# LM Studio's "The number of tokens to keep from the initial prompt is greater than the context
# length." Read only on a 400 (errors, never a chunk): an HTTP error, an error event, or the
# error object a 200 carried.
OVERFLOW = ("maximum context length", "longer than the model's context length",
            "longer than the maximum model length", "exceeds the available context size",
            "maximum prompt length", "exceeded model token limit",
            "greater than the context length")


class OpenAIProvider(Provider):
    type_name: ClassVar[str] = "openai"
    api_path: ClassVar[str] = "/chat/completions"
    base_url_endings: ClassVar[tuple[str, ...]] = ("/chat/completions",)
    default_base_url: ClassVar[str | None] = "https://api.openai.com/v1"
    option_keys: ClassVar[frozenset[str]] = frozenset({"organization", "project"})
    target_options: ClassVar[dict[str, str]] = {"openai_organization": "organization",
                                                "openai_project": "project"}
    passthrough = True
    custom_tools = True  # the body goes as the client wrote it
    # Whether the upstream takes `stream_options.include_usage` (Mistral rejects it with a 422
    # and sends the counts anyway).
    asks_stream_usage: ClassVar[bool] = True
    # The stream's translator; subclasses with their own quirks name theirs (Azure, presets).
    translator_type: ClassVar[type[PassthroughTranslator]] = PassthroughTranslator

    @classmethod
    def check_options(cls, options: dict[str, Any], source: str, where: str) -> None:
        super().check_options(options, source, where)
        # Sent as OpenAI-Organization / OpenAI-Project as they are: a `|` block's line break
        # failed every request as it was written, a number or a list was no header value.
        for key in ("organization", "project"):
            if key in options and not (isinstance(options[key], str)
                                       and _ACCOUNT_ID.fullmatch(options[key])):
                raise ConfigError(source, f"{where}.{key}", "must be an id of letters, digits, "
                                  "'.', '-' and '_' (org-..., proj_...)")

    def parse_error(self, status: int, body: bytes) -> UpstreamStatusError:
        err = generic_error(status, body, self.name, keep_fields=True)
        if err.fields:  # (a Retry-After header, read later, wins: routing/executor.py)
            err.retry_after = named_wait(err.fields)
        return context_overflow(err, OVERFLOW)

    def answered_error(self, body: bytes) -> UpstreamStatusError:
        # as a non-streamed 200's error is read: the status its `code` names (OpenRouter's)
        return error_answer(body, self.name) or self.parse_error(502, body)

    def events_of_answer(self, body: bytes) -> bytes | None:
        return answer_events(body)

    def adapt_body(self, body: dict[str, Any], model: str = "") -> dict[str, Any]:
        """The body to send to `model`, for compatible upstreams whose parameters differ from
        OpenAI's (providers/presets.py). Returns `body` itself when nothing changes, else a new
        dict."""
        return body

    def auth_headers(self, api_key: str | None) -> dict[str, str]:
        return {"authorization": f"Bearer {api_key}"} if api_key else {}

    def chat_url(self, model: str) -> str:
        return f"{self.base_url}/chat/completions"

    def build_request(self, req: ChatRequest, target: Target) -> UpstreamRequest:
        model = self.model_for(target)
        body = self.adapt_body(target.apply_overrides(req.body), model)
        changed = model != req.model or body is not req.body or req.stripped
        # (the body's own, a target's override in it: logs and metrics want the counts even
        # where an override turned them off for the client)
        if req.stream and self.asks_stream_usage and not (
                body.get("stream_options") or {}).get("include_usage"):
            body = {**body, "stream_options": {**(body.get("stream_options") or {}),
                                               "include_usage": True}}
            changed = True
        # Never the client's bytes as they came: orjson kept a repeated key's last value (the
        # one routed, authorised, limited and cached by, as OpenAI reads it), and an upstream
        # that keeps the first (serde, Go, Java servers) or refuses duplicates would be asked
        # something else, at any depth (a message's content). Writing the parsed body costs a
        # fifth of its parse; telling whether the bytes hold a duplicate would cost more.
        raw = orjson.dumps({**body, "model": model} if changed else body)
        headers = {"content-type": "application/json", **self.auth_headers(target.api_key)}
        if self.cfg.options.get("organization"):
            headers["openai-organization"] = self.cfg.options["organization"]
        if self.cfg.options.get("project"):
            headers["openai-project"] = self.cfg.options["project"]
        headers.update(self.cfg.headers)
        headers.update(target.headers)
        return UpstreamRequest(self.chat_url(model), raw, headers)

    def stream_translator(self, req: ChatRequest, out: ChunkSink) -> StreamTranslator:
        return self.translator_type(out, self.max_event_bytes, **self.translator_options(req))

    def translator_options(self, req: ChatRequest) -> dict[str, Any]:
        """The keyword arguments of `translator_type`: what it needs of the request (a
        subclass whose translator takes more adds them)."""
        body = req.body
        return {"provider": self.name, "client_wants_usage": req.include_usage,
                "choices": body.get("n") or 1,  # (validated as at least 1 when given)
                "tools_offered": "tools" in body or "functions" in body}

    def translate_response(self, body: bytes, req: ChatRequest, *, completion_id: str,
                           created: int, model: str = "") -> bytes:
        error = error_answer(body, self.name)
        if error is not None:
            raise error
        return body  # already a chat.completion: forwarded byte for byte
