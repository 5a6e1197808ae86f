"""Anthropic Messages stream → ChunkSink (pure). provider-streams.md §3.3 to §3.4.

- Tool-call `index` is the running count of tool_use blocks, not Anthropic's block index
  (text and thinking blocks count there too).
- A tool_use block that ends with no argument fragment gets the input its start gave (an
  Anthropic-compatible upstream may send it whole there, as Anthropic's SDK reads it), else
  "{}" so the arguments parse; at its content_block_stop, or at the finish when none came.
  Fragments, when they come, are the arguments alone.
- Usage values are cumulative: the latest message_delta overwrites message_start, field by
  field (but for a null, or a 0 input count); prompt_tokens = input + cache read + cache
  creation.
- An `error` event ends the stream with an OpenAI error frame and no [DONE].
- The finish reason comes once: a `message_stop` with no `stop_reason` before it (an
  Anthropic-compatible upstream) ends as `tool_calls` after a tool call, else `stop`, as the
  non-streamed answer does.

Speed: nearly every event is a text delta. A run of them in a read (the middle of every
stream; most of a stream that arrives in a few reads) is translated without decoding an event:
one regular expression for one text delta's exact compact form is matched event after event,
checking every byte and cutting out each text's JSON literal, which is spliced, still escaped,
into the client's frames (providers/splice.py). The events around a run take the decoder,
and `on_event` tests for a text delta first, inline, before the general dispatch. (Splicing
per event was measured too: validating each literal in Python cost what orjson's parse did.)
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from streamproxy._json import dumps_exact, loads_exact
from streamproxy.decode.sse import SSEEvent
from streamproxy.errors import UpstreamStatusError
from streamproxy.openai_api.chunks import ChunkSink, make_usage
from streamproxy.providers.base import (
    WRONG_SHAPE,
    SSETranslator,
    context_overflow,
    event_kind,
    generic_error,
    load_event_json,
    malformed,
    quota_exhausted,
)
from streamproxy.providers.splice import JSON_INDEX, JSON_TEXT, feed_runs

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def finish_reason(stop_reason: str, made_calls: bool) -> str:
    """A stop reason as OpenAI's finish reason, which says tool_calls exactly when the answer
    made calls: `tool_use` is tool_calls only then (Claude may end a text-only answer with it,
    and a client that runs `message.tool_calls` on tool_calls, as OpenAI's examples do, would
    find null), and a turn with calls that names `end_turn` or `stop_sequence` (a stop
    sequence matched after them; an Anthropic-compatible server) is tool_calls, as on Bedrock:
    an agent loop runs the calls only on tool_calls."""
    finish = FINISH_REASONS.get(stop_reason, "stop")
    if finish == "tool_calls" and not made_calls:
        return "stop"
    return "tool_calls" if made_calls and finish == "stop" else finish


def refusal_text(stop_reason: Any, details: Any) -> str | None:
    """A refusal stop's `stop_details.explanation` (the message's, or the stream's
    message_delta's): its words, which OpenAI gives as `refusal`. None when it has none (null
    for a category without one; no stop_details from an older Claude or a compatible server)."""
    if stop_reason != "refusal" or not isinstance(details, dict):
        return None
    why = details.get("explanation")
    return why if isinstance(why, str) and why else None


# Anthropic error type → HTTP status, for errors that arrive inside a stream (Anthropic's
# errors page). Before the commit point the status is the client's, and what retries and
# fallbacks act on: an unknown type is a 502, which the default retry codes retry.
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "conflict_error": 409,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


# A text delta exactly as Anthropic sends it, with the padding it sometimes puts before the
# last brace, and its text's literal as group 1 (providers/splice.py: runs of these are
# spliced). It starts with literal bytes, which sre searches for by a fast scan.
_TEXT_DELTA = re.compile(
    rb'event: content_block_delta\ndata: \{"type":"content_block_delta","index":' + JSON_INDEX
    + rb',"delta":\{"type":"text_delta","text":"(' + JSON_TEXT + rb')"\} *\}\n\n')


def exact_start_input(data: bytes) -> str | None:
    """A content_block_start event's tool input as JSON with every integer as written, when
    the event holds a long digit run orjson may have read as a float (else None): as the
    non-streamed answer's (response.py `exact_inputs`). Once a call, never per chunk."""
    doc = loads_exact(data)
    try:
        return None if doc is None else dumps_exact(doc["content_block"]["input"])
    except (KeyError, TypeError, RecursionError):
        return None


# The usage counts of the prompt side, which a message_delta's 0 does not overwrite.
_INPUT_COUNTS = frozenset({"input_tokens", "cache_read_input_tokens",
                           "cache_creation_input_tokens"})


def map_usage(u: dict[str, Any]) -> dict[str, Any]:
    cache_read = u.get("cache_read_input_tokens") or 0
    cache_write = u.get("cache_creation_input_tokens") or 0
    prompt = (u.get("input_tokens") or 0) + cache_read + cache_write
    return make_usage(prompt, u.get("output_tokens") or 0, cached=cache_read,
                      cache_write=cache_write)


# How Anthropic's 400 words a prompt over the model's context ("prompt is too long: 208656
# tokens > 200000 maximum"; with max_tokens, "input length and `max_tokens` exceed context
# limit: …"): OpenAI's `context_length_exceeded` (providers/base.py `context_overflow`).
OVERFLOW = ("prompt is too long", "exceed context limit")


# How Anthropic's 400 words a credit balance used up ("Your credit balance is too low to access
# the Anthropic API. …") or a spend limit reached, an organization's or a workspace's ("You
# have reached your specified [workspace] API usage limits. You will regain access on …"):
# OpenAI's 429 `insufficient_quota` (providers/base.py).
NO_CREDIT = ("credit balance is too low", "reached your specified api usage limits",
             "reached your specified workspace api usage limits")


def anthropic_error(status: int, body: bytes, provider: str) -> UpstreamStatusError:
    """An error body of Anthropic's (`{"type": "error", "error": {"type", "message"}}`)."""
    return quota_exhausted(context_overflow(generic_error(status, body, provider), OVERFLOW),
                           NO_CREDIT)


def stream_error(err: dict[str, Any], provider: str) -> UpstreamStatusError:
    etype = err.get("type") if isinstance(err, dict) else None
    message = err.get("message") if isinstance(err, dict) else None
    # (OpenAI's message and code are text: an Anthropic-compatible upstream's other JSON is not)
    etype = etype if isinstance(etype, str) else None
    # Read as the same object over HTTP is (anthropic_error): a used-up credit balance or spend
    # limit as an error event (a relay's 200 stream) was a 400 that fallbacks on 429 passed by.
    return quota_exhausted(context_overflow(UpstreamStatusError(
        ERROR_STATUS.get(etype or "", 502),
        message if isinstance(message, str) and message
        else "the provider reported an error mid-stream",
        provider=provider,
        code=etype,
    ), OVERFLOW), NO_CREDIT)


class AnthropicStreamTranslator(SSETranslator):
    def __init__(self, out: ChunkSink, max_event_bytes: int, provider: str = "anthropic",
                 names: dict[str, str] | None = None) -> None:
        super().__init__(out, max_event_bytes)
        self._provider = provider
        # Claude's name → the client's, for the tools renamed for Claude (names.py)
        self._names = names or {}
        self._tool_of_block: dict[int, int] = {}  # block index → tool ordinal
        # A tool_use block's arguments should no fragment come: its start's input, else "{}".
        self._unsent_args: dict[int, str] = {}
        self._usage: dict[str, Any] = {}
        self._started = False
        self._blocks_begun = False  # a content_block_start came
        self._finished = False  # a finish reason was emitted
        self._thinking: list[str] = []  # the current thinking block's text, for its signature
        # (block index, signature) of a thinking block whose start carried its signature (an
        # Anthropic-compatible server's whole block): sent at its stop, unless a delta's came.
        self._start_signature: tuple[int, str] | None = None
        self._content = out.content
        # Sinks that take escaped text literals (the encoders, the tee) get runs spliced.
        self._literals = getattr(out, "content_literals", None)

    def feed(self, data: bytes) -> None:
        if self._literals is None:
            super().feed(data)
        else:
            feed_runs(self, data, _TEXT_DELTA)

    decode_read = SSETranslator.feed  # feed_runs's decoder path: no splice

    def splice_run(self, data: bytes, start: int, end: int, literals: list[bytes]) -> bool:
        if self.done or not self._decoder.between_events:
            return False  # the stream has ended, or the run does not start an event
        self._literals(literals)  # type: ignore[misc]
        return True

    def on_event(self, event: SSEEvent) -> None:
        msg = load_event_json(event.data)
        try:
            if msg["type"] == "content_block_delta":  # the hot case, inline
                delta = msg["delta"]
                if delta["type"] == "text_delta":
                    self._content(delta["text"])
                    return
            self._dispatch(msg, event.data)
        except WRONG_SHAPE as e:
            if "type" not in msg and isinstance(msg.get("error"), dict):
                # An error event in the platform's own shape, with no `type` (Vertex's).
                self.out.error(self.platform_error(msg["error"]))
                self.done = True
                return
            raise malformed(event_kind(msg.get("type")), e) from None

    def platform_error(self, err: dict[str, Any]) -> UpstreamStatusError:
        """An error object that came as an event of its own, without Anthropic's envelope."""
        return stream_error(err, self._provider)

    def _dispatch(self, msg: dict[str, Any], data: bytes) -> None:
        kind = msg["type"]
        if kind == "content_block_delta":  # the hot case first
            delta = msg["delta"]
            dtype = delta["type"]
            if dtype == "text_delta":
                self.out.content(delta["text"])
            elif dtype == "input_json_delta":
                fragment = delta["partial_json"]
                tool = self._tool_of_block.get(msg["index"])
                if fragment and tool is not None:
                    self._unsent_args.pop(msg["index"], None)
                    self.out.tool_call_args(tool, fragment)
            elif dtype == "thinking_delta":
                self._thinking.append(delta["thinking"])
                self.out.reasoning(delta["thinking"])
            elif dtype == "signature_delta":
                # The signature covers the whole thinking text: send both, so the client can
                # return the block unchanged on its next turn.
                self._start_signature = None
                self.out.thinking_block({"type": "thinking", "thinking": "".join(self._thinking),
                                         "signature": delta["signature"]})
            # citations_delta (annotations would need the content's character offsets, which
            # the spliced text path does not count) and future delta types: dropped (README).
        elif kind == "content_block_start":
            self._block_start(msg["index"], msg["content_block"], data)
        elif kind == "content_block_stop":
            index = msg["index"]
            args = self._unsent_args.pop(index, None)
            if args is not None:
                self.out.tool_call_args(self._tool_of_block[index], args)
            elif self._start_signature is not None and self._start_signature[0] == index:
                self.out.thinking_block({"type": "thinking", "thinking": "".join(self._thinking),
                                         "signature": self._start_signature[1]})
                self._start_signature = None
        elif kind == "message_start":
            message = msg["message"]
            self._usage.update(message.get("usage") or {})
            self._start(message.get("model"))
        elif kind == "message_delta":
            self._start(None)
            # Fields the delta leaves out — or sends as null (Anthropic-compatible upstreams,
            # and the SDK's types allow it) — keep message_start's values. So does an input
            # count of 0: Anthropic's are cumulative, never back to 0; Anthropic-compatible
            # servers (SGLang) send 0 there for "counted in message_start".
            usage = msg.get("usage") or {}
            self._usage.update((k, v) for k, v in usage.items()
                               if v is not None and (v or k not in _INPUT_COUNTS))
            # Its counts are cumulative: the whole answer's, kept over a cut's estimate.
            self.usage_runs = self.usage_runs or bool(usage.get("output_tokens"))
            delta = msg.get("delta") or {}
            reason = delta.get("stop_reason")
            if reason and not self._finished:
                self._finished = True
                self._unsent_calls()
                why = refusal_text(reason, delta.get("stop_details"))
                if why:
                    self.out.refusal(why)
                self.out.finish(finish_reason(reason, bool(self._tool_of_block)))
        elif kind == "message_stop":
            self._start(None)
            if not self._finished:
                self._finished = True
                self._unsent_calls()
                self.out.finish("tool_calls" if self._tool_of_block else "stop")
            if self._usage:
                self.out.usage(map_usage(self._usage))
            self.out.end()
            self.done = True
        elif kind == "error":
            self.out.error(stream_error(msg.get("error") or {}, self._provider))
            self.done = True
        # ping and unknown event types: nothing to emit.

    def usage_so_far(self) -> dict[str, Any] | None:
        # message_start's input tokens are billed even if the stream then fails.
        try:
            return map_usage(self._usage) if self._usage else None
        except TypeError:  # a count that is not a number (an Anthropic-compatible upstream)
            return None

    def _unsent_calls(self) -> None:
        """The arguments of calls still open at the finish: an Anthropic-compatible server may
        end the message without their content_block_stop, and a call must not end as ""."""
        for index, args in self._unsent_args.items():
            self.out.tool_call_args(self._tool_of_block[index], args)
        self._unsent_args.clear()

    def _start(self, model: str | None) -> None:
        if not self._started:
            self._started = True
            self.out.start(model)

    def _block_start(self, index: int, block: dict[str, Any], data: bytes) -> None:
        btype = block["type"]
        if not self._blocks_begun:
            # The answer's first block says what the role chunk holds (text or not), so it
            # leaves with this read even when the block's first delta comes in a later one.
            self._blocks_begun = True
            self._started = True
            self.out.start(None, btype == "text")
        if btype == "tool_use":
            tool = len(self._tool_of_block)
            self._tool_of_block[index] = tool
            # Never serialise the placeholder `input: {}` into the arguments: it is the call's
            # input only if no fragment follows (content_block_stop).
            start_input = block.get("input")
            self._unsent_args[index] = (
                (exact_start_input(data) or orjson.dumps(start_input).decode()) if start_input
                else "{}")
            self.out.tool_call_start(tool, block["id"],
                                     self._names.get(block["name"], block["name"]))
        elif btype == "text":
            if block.get("text"):
                self.out.content(block["text"])
        elif btype == "thinking":
            self._thinking = [block.get("thinking") or ""]
            if block.get("thinking"):
                self.out.reasoning(block["thinking"])
            # (Anthropic's start has `signature: ""`, its signature comes as a delta)
            signature = block.get("signature")
            self._start_signature = (index, signature) if signature else None
        elif btype == "redacted_thinking" and block.get("data"):
            # (no data, an Anthropic-compatible server's: nothing to send back, left out as the
            # whole answer, and Bedrock, do)
            self.out.thinking_block({"type": "redacted_thinking", "data": block["data"]})
