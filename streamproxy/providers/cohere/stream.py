"""Cohere v2 chat stream → ChunkSink (pure). provider-streams.md §6.

- Events are SSE whose JSON carries `type`; `[DONE]` and empty events are tolerated (the
  Cohere SDK does the same).
- `content-delta` text → content; a `thinking` content block (reasoning models) → reasoning.
- `tool-plan-delta` → reasoning_content. The plan ("I will use the weather tool…") is the
  model's reasoning before it calls tools; OpenAI's schema has no slot for it, and
  `reasoning_content` is where OpenAI-compatible clients already look for text that is not the
  answer — putting it in `content` would make a tool turn look like a text answer; after
  thinking it follows a blank line (PLAN_BREAK).
- `tool-call-start` (its `tool_calls` is one object, not an array) → tool_call_start. Cohere's
  `index` is already a dense tool ordinal, but we keep our own (running count, mapped from
  Cohere's index) so a gap, a shared content/tool numbering or an index used again can never
  make a client merge two calls. `tool-call-delta` → argument fragments; `tool-call-end` with
  no fragment → "{}", as for arguments that are "null" (a tool without parameters; held until
  they cannot be); a call still open at `message-end` ends there the same way.
- `citation-start` (its `citations` is one object, as `tool_calls`) → `url_citation`
  annotations (`delta.annotations`), one per source with a `url`, each once; a citation of the
  tool plan or of thinking, or a source without a url, has no OpenAI place and is left out.
- `message-end`: finish COMPLETE/STOP_SEQUENCE → stop, MAX_TOKENS → length, TOOL_CALL →
  tool_calls (but stop when no call came, and tool_calls for a stop with calls);
  ERROR/TIMEOUT → an OpenAI error frame (never a fake finish). Usage: prompt =
  tokens.input_tokens, completion = tokens.output_tokens (billed_units when `tokens` is
  absent), cached = cached_tokens. EOF before message-end → StreamTruncated.
- Logprobs (only when the client asked: `logprobs=True`): a text `content-delta`'s
  `logprobs` item goes with its text as one content delta (`content_logprobs`), one OpenAI
  entry per item (`token_logprobs`); a thinking delta's are dropped (OpenAI gives none for
  reasoning).
"""

from __future__ import annotations

import math
from typing import Any

from streamproxy.decode.sse import SSEEvent
from streamproxy.errors import UpstreamStatusError
from streamproxy.openai_api.chunks import ChunkSink, make_usage, unseen_citations
from streamproxy.providers.base import (
    WRONG_SHAPE,
    SSETranslator,
    context_overflow,
    detail_message,
    event_kind,
    load_event_json,
    malformed,
)

FINISH_REASONS = {
    "COMPLETE": "stop",
    "STOP_SEQUENCE": "stop",
    "MAX_TOKENS": "length",
    "TOOL_CALL": "tool_calls",
}
# A call's arguments when its tool has no parameters (non-streamed and streamed): OpenAI's
# are always a JSON object, so it goes to the client as "{}".
NULL = "null"
# Between a reasoning model's thinking and its tool plan, both reasoning_content: it thinks
# first, then plans its calls (streamed and whole alike); joined bare, their words ran together.
PLAN_BREAK = "\n\n"
# Finish reasons that mean the answer failed: HTTP status of the error frame.
FAILED = {"ERROR": 502, "TIMEOUT": 504}
# How Cohere's 400 words a prompt over the model's context ("too many tokens: size limit
# exceeded by 11326 tokens. …"): OpenAI's `context_length_exceeded`.
OVERFLOW = ("too many tokens",)
# …except that its refusal of a max_tokens over the model's output cap opens with the same
# words ("too many tokens: max tokens must be less than or equal to 4096, the maximum output
# for this model - received 8192."): no prompt to shorten, which a client trims its history for.
OUTPUT_CAP = "max tokens must be"


def overflow(err: UpstreamStatusError) -> UpstreamStatusError:
    """`err` as OpenAI's context overflow when it is Cohere's (providers/base.py)."""
    return err if OUTPUT_CAP in err.message.lower() else context_overflow(err, OVERFLOW)


def answered_status(message: str) -> int:
    """The status of an error body Cohere sent after its 200 (an SSE event, or a stream
    request's one JSON body), which has none: its "too many tokens" refusal of the request is
    the 400 it is over HTTP (then read as there: `overflow`), anything else 502."""
    lowered = message.lower()
    return 400 if any(phrase in lowered for phrase in OVERFLOW) else 502


def call_arguments(arguments: str | None) -> str:
    """A call's whole arguments as OpenAI's JSON object, streamed (held) and not alike: Cohere
    sends "null" for a tool without parameters (and may send none), which a client parsing
    them into keyword arguments cannot take, so "null" and blank are "{}"; anything else goes
    as it came, spaces and all (the two paths differed: " nu" vs "nu")."""
    return arguments if arguments and arguments.strip() not in ("", NULL) else "{}"


def error_text(message: Any) -> str:
    """An error event's `message` as the client's: read as an error body's over HTTP is
    (`generic_error`), since one that is no string went out as Python's str() of it."""
    if not isinstance(message, str):
        message = detail_message(message)
    return message or "the provider reported an error"


def finish_reason(reason: str, made_calls: bool) -> str:
    """Cohere's finish reason as OpenAI's, by the calls the answer made: OpenAI says
    tool_calls exactly when there are calls, and a client that runs `message.tool_calls` on it
    would find null after a text-only answer that Cohere ended with TOOL_CALL."""
    finish = FINISH_REASONS.get(reason, "stop")
    if finish == "stop" and made_calls:
        return "tool_calls"
    return "stop" if finish == "tool_calls" and not made_calls else finish


def map_usage(usage: dict[str, Any]) -> dict[str, Any]:
    counts = usage.get("tokens") or usage.get("billed_units") or {}
    prompt = _count(counts.get("input_tokens") or 0)
    cached = usage.get("cached_tokens")
    # cached_tokens counts model tokens, as `tokens` does; a prompt counted in billed_units
    # (the template left out) can be smaller: cached is part of the prompt, never more.
    return make_usage(prompt, _count(counts.get("output_tokens") or 0),
                      cached=min(_count(cached), prompt) if cached is not None else None)


def _count(n: Any) -> Any:
    # A count written past a double (1e400) is read as inf, which int() refuses: kept, the
    # client's null as another provider's is (the metrics and the log count only ints).
    return n if isinstance(n, float) and not math.isfinite(n) else int(n)


def url_citations(citation: dict[str, Any]) -> list[dict[str, Any]]:
    """A citation → OpenAI `url_citation` annotations, one per source that has a `url`: the
    fields of a client's document (or of its tool's output) come back in the source, so a
    document given with a url cites it. OpenAI has no annotation for a source without one
    (Cohere's own examples: a title and a snippet). Offsets are Cohere's, in characters of the
    answer's text; a citation of the tool plan or of thinking counts in those (which reach the
    client as reasoning), so it is left out."""
    if citation.get("type", "TEXT_CONTENT") != "TEXT_CONTENT":
        return []
    entries = []
    for source in citation.get("sources") or ():
        fields = source.get("document") or source.get("tool_output")
        url = fields.get("url") if isinstance(fields, dict) else None
        if isinstance(url, str) and url:
            title = fields.get("title")
            entries.append({"type": "url_citation", "url_citation": {
                "url": url, "title": title if isinstance(title, str) else "",
                "start_index": citation.get("start") or 0,
                "end_index": citation.get("end") or 0}})
    return entries


def token_logprobs(item: Any, text: str) -> list[dict[str, Any]]:
    """A `LogprobItem` (`text`, `token_ids`, `logprobs`: one per token) → OpenAI
    `logprobs.content` entries: one for the item, its text the token and the sum of its tokens'
    logprobs the logprob (the text's own; an item of several tokens, a character split over
    two, has no text for each). Cohere gives no top candidates: `top_logprobs` is empty.
    `text`: the item's when it names none. None for an item without logprobs, and for a
    malformed one: logprobs are an extra, which must not cost the client its answer."""
    try:
        logprobs = item.get("logprobs")
        if not logprobs:
            return []
        logprob = float(sum(logprobs))
    except (AttributeError, TypeError, ValueError):
        return []
    token = item.get("text")
    token = token if isinstance(token, str) else text
    return [{"token": token, "logprob": logprob, "bytes": list(token.encode()),
             "top_logprobs": []}]


def failure(reason: str, message: Any, provider: str) -> UpstreamStatusError:
    text = message if isinstance(message, str) and message else \
        f"the provider ended the answer with finish_reason {reason}"
    return UpstreamStatusError(FAILED[reason], text, provider=provider, code=reason.lower())


class CohereStreamTranslator(SSETranslator):
    def __init__(self, out: ChunkSink, max_event_bytes: int, provider: str = "cohere", *,
                 logprobs: bool = False) -> None:
        super().__init__(out, max_event_bytes)
        self._provider = provider
        if logprobs:  # the client asked: deltas' logprobs are read (else no per-event look)
            self._dispatch = self._dispatch_logprobs  # type: ignore[method-assign]
        self._tool_of: dict[int, int] = {}  # Cohere tool index → our ordinal
        self._calls = 0  # calls started: the next ordinal (an index seen again is a new call)
        self._args_seen: set[int] = set()  # ordinals whose arguments were sent
        self._held: dict[int, str] = {}  # a call's first fragments while they may spell null
        self._cited: set[bytes] = set()  # the url_citations sent
        self._started = False
        # Some thinking was sent (a plan after it needs PLAN_BREAK; after an empty thinking
        # block, none: the plan opens the reasoning)
        self._thought = False
        self._planned = False  # some of the tool plan was sent

    def on_event(self, event: SSEEvent) -> None:
        data = event.data
        if not data.strip() or data[:6] == b"[DONE]":
            return
        msg = load_event_json(data)
        try:
            self._dispatch(msg)
        except WRONG_SHAPE as e:
            raise malformed(event_kind(msg.get("type")), e) from None

    def _dispatch(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "content-delta":  # the hot case first
            content = msg["delta"]["message"]["content"]
            if content.get("text"):
                self.out.content(content["text"])
            elif content.get("thinking"):
                self._thought = True
                self.out.reasoning(content["thinking"])
        elif kind == "tool-call-delta":
            fragment = msg["delta"]["message"]["tool_calls"]["function"].get("arguments")
            tool = self._tool_of[msg["index"]]
            if fragment:
                if tool in self._args_seen:
                    self.out.tool_call_args(tool, fragment)
                else:
                    self._opening_args(tool, fragment)
        elif kind == "tool-plan-delta":
            self._start()
            plan = msg["delta"]["message"].get("tool_plan")
            if plan:
                if not self._planned:
                    self._planned = True
                    if self._thought:
                        plan = PLAN_BREAK + plan
                self.out.reasoning(plan)
        elif kind == "tool-call-start":
            self._tool_start(msg)
        elif kind == "tool-call-end":
            self._end_args(self._tool_of[msg["index"]])
        elif kind == "message-start":
            self._start()
        elif kind == "content-start":
            self._start()
            content = msg["delta"]["message"]["content"]
            # What the answer's first block is says what the role chunk holds, so it leaves
            # with this read even when the block's first delta comes in a later one.
            self.out.start(None, content.get("type", "text") == "text")
            if content.get("text"):
                self.out.content(content["text"])
            elif content.get("thinking"):
                self._thought = True
                self.out.reasoning(content["thinking"])
        elif kind == "citation-start":
            self._citations(msg)
        elif kind == "message-end":
            self._end(msg.get("delta") or {})
        elif kind is None and msg.get("message"):  # an error body sent as an event
            message = error_text(msg["message"])
            self.out.error(overflow(UpstreamStatusError(
                answered_status(message), message, provider=self._provider)))
            self.done = True
        # content-end, citation-end and unknown types: nothing to emit.

    def _dispatch_logprobs(self, msg: dict[str, Any]) -> None:
        item = msg.get("logprobs")
        if item and msg.get("type") == "content-delta":
            text = msg["delta"]["message"]["content"].get("text")
            tokens = token_logprobs(item, text) if text else None
            if tokens:
                self.out.content_logprobs(text, tokens)
                return
        CohereStreamTranslator._dispatch(self, msg)

    def _start(self) -> None:
        if not self._started:
            self._started = True
            self.out.start(None)  # Cohere's events carry no model name

    def _tool_start(self, msg: dict[str, Any]) -> None:
        self._start()
        call = msg["delta"]["message"]["tool_calls"]
        tool = self._calls
        self._calls += 1
        self._tool_of[msg["index"]] = tool
        arguments = call["function"].get("arguments") or ""
        if arguments and not NULL.startswith(arguments.strip()):
            self._args_seen.add(tool)
            self.out.tool_call_start(tool, call["id"], call["function"]["name"], arguments)
            return
        if arguments:
            self._held[tool] = arguments
        self.out.tool_call_start(tool, call["id"], call["function"]["name"], "")

    def _opening_args(self, tool: int, fragment: str) -> None:
        """A call's first argument fragments: held while they may still spell `null` (Cohere's
        arguments for a tool without parameters, which the call ends as "{}"), sent once they
        cannot. Only until then: later fragments go straight out."""
        held = self._held.pop(tool, "") + fragment
        if NULL.startswith(held.strip()):
            self._held[tool] = held
        else:
            self._args_seen.add(tool)
            self.out.tool_call_args(tool, held)

    def _end_args(self, tool: int) -> None:
        """A call's arguments when it ends with none sent: none, or held: "null" (or blank) is
        "{}", a held start of it ("nu") is what came."""
        if tool not in self._args_seen:
            self._args_seen.add(tool)
            self.out.tool_call_args(tool, call_arguments(self._held.pop(tool, "")))

    def _citations(self, msg: dict[str, Any]) -> None:
        # An annotation is an extra: an event without a citation object is no broken answer.
        citation = ((msg.get("delta") or {}).get("message") or {}).get("citations")
        if not isinstance(citation, dict):
            return
        entries = unseen_citations(url_citations(citation), self._cited)
        if entries:
            self._start()
            self.out.citations(entries)

    def _end(self, delta: dict[str, Any]) -> None:
        self._start()
        reason = delta.get("finish_reason") or "COMPLETE"
        if delta.get("usage"):  # first: a failed answer's tokens are still counted
            self.out.usage(map_usage(delta["usage"]))
        if reason in FAILED:
            self.out.error(failure(reason, delta.get("error"), self._provider))
            self.done = True
            return
        # A server may end the message without a call's tool-call-end: its arguments are due.
        for tool in range(self._calls):
            self._end_args(tool)
        self.out.finish(finish_reason(reason, bool(self._tool_of)))
        self.out.end()
        self.done = True
