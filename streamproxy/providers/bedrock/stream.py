"""Bedrock ConverseStream (AWS event-stream frames) → ChunkSink (pure). provider-streams.md §5.3.

- Dispatch is on the frame headers (`:message-type`, then `:event-type` / `:exception-type`),
  never on which keys a payload happens to hold; the `"p"` padding key is ignored.
- Tool-call `index` is the running count of toolUse blocks, not `contentBlockIndex` (a text block
  before the tool takes index 0 there). A system tool's block (`type: server_tool_use`, run by
  Bedrock) is no client call: left out, and not counted. A toolUse block with no input
  fragment gets "{}" (at its contentBlockStop, or at messageStop when none came).
- Reasoning text goes to `reasoning_content`; the block's signature (Claude) is emitted with the
  whole signed text as a `thinking_blocks` entry, so the client can send it back (request.py).
- A turn with tool calls finishes as `tool_calls` even when its stopReason says `end_turn`.
- Bedrock sends `metadata` (usage, the tier that served the answer) *after* `messageStop`, so
  the tier (`service_tier`) is on the usage chunk only; metadata is the end of the stream.
  A stream that closes after messageStop without metadata is reported as truncated: the answer
  is complete, but nothing tells a cut connection from a finished one there, so we do not guess.
- A failed stop (FAILED_REASONS) is an error at once, so an attempt whose first read held it
  still falls back; the stream is then read on to its metadata, whose usage the answer cost
  (access log, metrics), and nothing else of it reaches the sink.
- Exception frames end the stream with one OpenAI error frame and no [DONE] (a
  modelStreamErrorException with the status the model answered, its `originalStatusCode`,
  and the model's own message, its `originalMessage`, after AWS's).

Speed: nearly every frame is a text delta, so `feed` handles those inline. It knows them by
their header mapping, which the decoder shares between frames with the same header block:
an identity test instead of two lookups. Any other delta goes through the general dispatch.
A read of 512 bytes or more (a body that came at once, a loaded proxy's reads) has its runs of
text deltas spliced (providers/splice.py): one regex (`frame_pattern`: the first delta's
header block, a text delta's payload) walks the run frame by frame, yielding each text's
literal, and the decoder checks each frame as `feed` does (declared length, cap, both CRCs)
(`EventStreamDecoder.take_run`); 1.8 -> 1.0 us per frame on a whole body. A frame that stops
a run goes through the decoder alone, so the frames before a damaged one still reach the client
(its `intact` frames, when it raises for the read), as they do at any read boundaries.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from streamproxy.decode.eventstream import (
    EventStreamDecoder,
    FramePattern,
    HeaderValue,
    frame_cap,
    frame_pattern,
)
from streamproxy.errors import StreamDecodeError, StreamTruncated, UpstreamStatusError
from streamproxy.openai_api.chunks import ChunkSink, make_usage
from streamproxy.providers.base import (
    WRONG_SHAPE,
    StreamTranslator,
    context_overflow,
    event_kind,
    insufficient_quota,
    load_event_json,
    malformed,
    quota_exhausted,
)
from streamproxy.providers.splice import JSON_INDEX, JSON_TEXT, is_utf8

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
# Stop reasons that mean no usable answer was produced (a tool call's input cut or invalid):
# an error, never a finish that looks complete (provider-streams.md §2.4).
FAILED_REASONS = {"malformed_tool_use": 502, "malformed_model_output": 502}


def finish_reason(reason: str, called: bool) -> str:
    """`stopReason` → OpenAI's finish reason, which says `tool_calls` exactly when the turn
    made calls. A turn that made tool calls ends as `tool_calls` though it names `end_turn`,
    as some Converse models do (AWS's Strands SDK overrides it the same way): an agent loop runs
    the calls only on `tool_calls`. Bedrock may end a text-only answer with `tool_use`, where a
    client would look for calls in null: `stop`."""
    finish = FINISH_REASONS.get(reason, "stop")
    if finish == "tool_calls" and not called:
        return "stop"
    return "tool_calls" if called and finish == "stop" else finish


def is_server_tool(tool: dict[str, Any]) -> bool:
    """Whether a toolUse block is a system tool's (Nova's nova_grounding…), which Bedrock runs
    itself and answers in the same turn: no call of the client's, left out as on Anthropic (its
    input deltas too, its block being no client call's)."""
    return tool.get("type") == "server_tool_use"


def failed_stop(reason: str, provider: str) -> UpstreamStatusError:
    return UpstreamStatusError(FAILED_REASONS[reason], f"Bedrock ended the answer with "
                               f"stopReason '{reason}'.", provider=provider, code=reason)

# AWS error shape name (lower-cased) → HTTP status, for exception frames (camelCase names) and
# HTTP error bodies (`x-amzn-errortype: ValidationException:...`). AWS Bedrock API reference.
ERROR_STATUS = {
    "validationexception": 400,
    "servicequotaexceededexception": 400,
    "accessdeniedexception": 403,
    "unrecognizedclientexception": 403,
    "resourcenotfoundexception": 404,
    "modeltimeoutexception": 408,
    "conflictexception": 409,
    "modelerrorexception": 424,
    "throttlingexception": 429,
    "modelnotreadyexception": 429,
    "internalserverexception": 500,
    # AWS lists it as 424, with "Retry your request": as 424 it would be retried by no default
    # (Portkey's retry codes, the breaker's ≥ 500), so without the model's own status
    # (`originalStatusCode`, which wins) it is the 500 those treat as worth retrying.
    "modelstreamerrorexception": 500,
    "serviceunavailableexception": 503,
}


def aws_error(kind: Any, message: Any, provider: str,
              original: Any = None) -> UpstreamStatusError:
    """An AWS error name + message from a stream → our error; an unknown name is a 502.
    `original`: a ModelStreamErrorException's `originalStatusCode`, the status the model
    answered with (a 429 is a rate limit), which wins when it is an error status."""
    name = kind if isinstance(kind, str) else ""
    status = ERROR_STATUS.get(name.lower(), 502)
    text = message if isinstance(message, str) and message else (
        f"provider '{provider}' reported {name or 'an error'}")
    if type(original) is int and 400 <= original <= 599:
        status = original
    elif name.lower() == STREAM_ERROR and says_overflow(text):
        # The model refused the prompt as over its context and gave no status: a client error
        # no retry of the same prompt mends, not the 500 retries and breakers count.
        status = 400
    return overflow_checked(UpstreamStatusError(status, text, provider=provider,
                                                code=name or None))


# How a ValidationException words a prompt over the model's context: Bedrock's own ("Input is
# too long for requested model.", "Too many input tokens. …"), Amazon Nova's ("Input Tokens
# Exceeded: …") or the model's, quoted ("The model returned the following errors: prompt is
# too long: …", and "input length and `max_tokens` exceed context limit: …", Claude's: the
# prompt leaves no room for the answer, which OpenAI's overflow counts too), or OpenAI's own
# ("This model's maximum context length is N tokens…"), as the models Bedrock serves behind an
# OpenAI-style engine word it (Llama 4, GLM, MiniMax).
OVERFLOW = ("input is too long", "too many input tokens", "prompt is too long",
            "input tokens exceeded", "exceed context limit", "maximum context length")
# A ModelStreamErrorException quotes the model (`originalMessage`): a prompt the model refused
# once the stream had begun says so in the same words.
STREAM_ERROR = "modelstreamerrorexception"
OVERFLOW_CODES = frozenset({"validationexception", STREAM_ERROR})
# A ThrottlingException is also how Bedrock says an account's daily quota for the model is
# used up ("Too many tokens per day, please wait before trying again."): it lifts when the day
# turns, not after a backoff, so it is OpenAI's `insufficient_quota` (a per-minute one stays a
# rate limit: "Too many tokens, please wait …").
THROTTLING = "throttlingexception"
PER_DAY = ("per day",)
# A ServiceQuotaExceededException (AWS lists it as a 400) is an account's quota, not a mistake
# in the request: until the quota is raised or its period turns, every try of that account and
# region gets it again, and another target (a fallback on 429) can answer. So it is OpenAI's
# `insufficient_quota`, as the daily quota above.
SERVICE_QUOTA = "servicequotaexceededexception"


def says_overflow(message: str) -> bool:
    lowered = message.lower()
    return any(phrase in lowered for phrase in OVERFLOW)


def overflow_checked(err: UpstreamStatusError) -> UpstreamStatusError:
    """`err` as OpenAI's `context_length_exceeded` when it is a 400 ValidationException (or
    ModelStreamErrorException) that says the prompt is over the model's context
    (providers/base.py `context_overflow`); as its `insufficient_quota` when it is a
    ThrottlingException for a daily quota (`quota_exhausted`), or a
    ServiceQuotaExceededException (`insufficient_quota`)."""
    code = (err.code or "").lower()
    if code == SERVICE_QUOTA:
        return insufficient_quota(err)
    if code == THROTTLING:
        return quota_exhausted(err, PER_DAY)
    if code not in OVERFLOW_CODES:
        return err
    return context_overflow(err, OVERFLOW)


def map_usage(u: dict[str, Any]) -> dict[str, Any]:
    cache_read = u.get("cacheReadInputTokens") or 0
    cache_write = u.get("cacheWriteInputTokens") or 0
    prompt = (u.get("inputTokens") or 0) + cache_read + cache_write
    return make_usage(prompt, u.get("outputTokens") or 0, cached=cache_read,
                      cache_write=cache_write)


# Converse's `serviceTier.type` (the tier that served the answer) → OpenAI's `service_tier`: the
# same words, but reserved capacity, bought ahead, is what OpenAI calls its scale tier.
_SERVICE_TIERS = {"reserved": "scale"}


def service_tier(answer: dict[str, Any]) -> str | None:
    """The tier a Converse answer (or a stream's metadata) says served it, in OpenAI's words;
    None when it names none."""
    tier = answer.get("serviceTier")
    kind = tier.get("type") if isinstance(tier, dict) else None
    return _SERVICE_TIERS.get(kind, kind) if isinstance(kind, str) and kind else None


# A text delta's payload as Bedrock writes it, with a non-empty text in the spelling orjson
# writes (providers/splice.py) and the padding key it adds to every payload. Its own repeats are
# possessive: what follows each cannot start inside it, so giving back never matches more, and
# sre then keeps nothing to give back (~300 instructions a frame, under callgrind).
_TEXT_PAYLOAD = (rb'\{"contentBlockIndex":' + JSON_INDEX + rb',"delta":\{"text":"((?!")'
                 + JSON_TEXT + rb')"\}(?:,"p":"[0-9A-Za-z]*+")?+\}')
_RUNS_FROM = 512  # bytes a read: below (one or two deltas), frame by frame is as cheap
_PROBES = 8  # frames a stream decodes one by one in large reads, looking for its first delta


def _exception_error(kind: Any, payload: bytes, provider: str) -> UpstreamStatusError:
    """An exception frame's error, from its payload's `message` (and `originalMessage`,
    `originalStatusCode`); a payload that is not JSON still ends the stream with the
    exception's status, not with a decode error that would hide it."""
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        return aws_error(kind, None, provider)
    message = body.get("message") or body.get("Message")
    original = body.get("originalMessage")  # a ModelStreamErrorException's: the model's words
    if isinstance(original, str) and original and original != message:
        # AWS's own message is generic ("Model Stream Error"): what went wrong is the model's.
        message = f"{message}: {original}" if isinstance(message, str) and message else original
    return aws_error(kind, message, provider, body.get("originalStatusCode"))


class BedrockStreamTranslator(StreamTranslator):
    def __init__(self, out: ChunkSink, max_event_bytes: int, provider: str = "bedrock",
                 names: dict[str, str] | None = None) -> None:
        self.out = out
        # Converse's name → the client's, for the tools renamed for Converse (names.py)
        self._names = names or {}
        self.done = False
        self._provider = provider
        # `max_event_bytes` is a payload's cap: a frame's headers and framing come on top, so
        # the default takes AWS's largest frame.
        self._decoder = EventStreamDecoder(frame_cap(max_event_bytes))
        self._tool_of_block: dict[int, int] = {}  # contentBlockIndex → tool ordinal
        self._args_seen: set[int] = set()  # block indices whose arguments went out
        self._started = False
        self._stopped = False  # messageStop seen
        self._failed = False  # a failed stop reported: only the metadata is still read
        self._thinking_block: int | None = None  # block index the reasoning text belongs to
        self._thinking: list[str] = []
        self._content = out.content
        self._delta_headers: object = None  # the header mapping of a text-delta event frame
        self._delta_frame: FramePattern | None = None  # such a frame with a text delta
        self._probes = 0  # frames decoded one by one while that block was unknown
        # Sinks that take escaped text literals (the encoders, the tee) get runs spliced.
        self._literals = getattr(out, "content_literals", None)

    def feed(self, data: bytes) -> None:
        if self._literals is None or len(data) < _RUNS_FROM:
            self._feed_frames(data)
            return
        decoder = self._decoder
        pos, have = decoder.rest_of_frame(data), len(data)
        if pos:  # a read cuts frames: first the end of the one the decoder holds
            self._feed_frames(data[:pos])
        while pos < have and decoder.between_frames and not self.done:
            frame = self._delta_frame
            if frame is not None:
                literals, end = decoder.take_run(data, pos, frame)
                if literals:
                    # Joined by an ASCII byte, no character can straddle two literals.
                    if not is_utf8(b"\n".join(literals)):
                        break  # the decoder's path reports it
                    self._start()
                    self._literals(literals)
                    pos = end
                    continue
            elif self._probes >= _PROBES:
                break  # no text delta in the stream's first frames: frame by frame no more
            else:
                self._probes += 1
            # Not a text delta (or the first one, which tells its headers): this frame alone.
            end = decoder.frame_end(data, pos)
            self._feed_frames(data[pos:end])
            pos = end
        if pos < have:
            self._feed_frames(data[pos:] if pos else data)

    def _feed_frames(self, data: bytes) -> None:
        failure = None
        try:
            frames = self._decoder.feed(data)
        except StreamDecodeError as e:
            # The frames before the damaged one go out first, whatever the read boundaries.
            frames, failure = self._decoder.intact, e
        for headers, payload in frames:
            if self.done:
                return
            if headers is self._delta_headers:  # the hot case inline: see _on_message
                body = load_event_json(payload)
                delta = body.get("delta")
                text = delta.get("text") if type(delta) is dict else None
                if type(text) is str and "contentBlockIndex" in body:
                    if text:
                        self._content(text)
                    continue
                self._on_event("contentBlockDelta", body)
                continue
            self._on_message(headers, payload)
        if failure is not None and not self.done:
            raise failure

    def close(self) -> None:
        self._decoder.close()  # raises StreamTruncated if a frame was cut short
        if not self.done:
            what = "metadata" if self._stopped else "messageStop"
            raise StreamTruncated(f"the upstream closed the stream before its {what} event")

    def _on_message(self, headers: Mapping[str, HeaderValue], payload: bytes) -> None:
        kind = headers.get(":message-type")
        if self._failed:
            self._after_failure(kind, headers, payload)
        elif kind == "event":
            event = headers.get(":event-type")
            if event == "contentBlockDelta":
                # The decoder hands out one shared read-only mapping per distinct header block:
                # feed() recognises the next deltas by identity (this one starts the stream).
                self._delta_headers = headers
                block = self._decoder.block_of(headers)
                if block is not None:
                    self._delta_frame = frame_pattern(block, _TEXT_PAYLOAD)
            self._on_event(event, load_event_json(payload))
        elif kind == "exception":
            self._fail(_exception_error(headers.get(":exception-type"), payload,
                                        self._provider))
        elif kind == "error":  # protocol-level error: code and message are headers
            self._fail(aws_error(headers.get(":error-code"), headers.get(":error-message"),
                                 self._provider))
        else:
            raise StreamDecodeError(f"event-stream frame with :message-type {kind!r}")

    def _on_event(self, event: Any, body: dict[str, Any]) -> None:
        try:
            self._event(event, body)
        except WRONG_SHAPE as e:
            raise malformed(event_kind(event), e) from None

    def _fail(self, err: UpstreamStatusError) -> None:
        self.out.error(err)
        self.done = True

    def _event(self, event: Any, body: dict[str, Any]) -> None:
        if event == "contentBlockDelta":  # the hot case first
            self._delta(body["contentBlockIndex"], body["delta"])
        elif event == "contentBlockStart":
            self._start()
            tool = body["start"].get("toolUse")
            if tool is not None and not is_server_tool(tool):
                ordinal = len(self._tool_of_block)
                self._tool_of_block[body["contentBlockIndex"]] = ordinal
                self.out.tool_call_start(ordinal, tool["toolUseId"],
                                         self._names.get(tool["name"], tool["name"]))
        elif event == "contentBlockStop":
            self._end_args(body["contentBlockIndex"])
        elif event == "messageStart":
            self._start()
        elif event == "messageStop":
            self._start()
            reason = body.get("stopReason") or "end_turn"
            self._stopped = True
            if reason in FAILED_REASONS:
                self.out.error(failed_stop(reason, self._provider))
                self._failed = True
                # Every frame now goes through _on_message (_after_failure).
                self._delta_headers = self._delta_frame = None
                return
            # A server may stop without a toolUse block's contentBlockStop: its "{}" is due.
            for index in self._tool_of_block:
                self._end_args(index)
            self.out.finish(finish_reason(reason, bool(self._tool_of_block)))
        elif event == "metadata":
            self._start()
            tier = service_tier(body)
            if tier is not None:
                self.out.service_tier(tier)
            if body.get("usage"):
                self.out.usage(map_usage(body["usage"]))
            self.out.end()
            self.done = True
        # Unknown event types (new additions to the API) carry nothing we can map.

    def _end_args(self, index: int) -> None:
        """A toolUse block's end: "{}" for its arguments when no input fragment came."""
        tool = self._tool_of_block.get(index)
        if tool is not None and index not in self._args_seen:
            self._args_seen.add(index)
            self.out.tool_call_args(tool, "{}")

    def _after_failure(self, kind: Any, headers: Mapping[str, HeaderValue],
                       payload: bytes) -> None:
        """A frame after a failed stop. Its metadata still ends the stream, with the usage the
        answer cost (the sink has ended: no usage chunk follows the error); an exception
        ends it too; any other event is dropped."""
        if kind == "event":
            if headers.get(":event-type") == "metadata":
                self._on_event("metadata", load_event_json(payload))
        else:
            self.done = True

    def _start(self) -> None:
        if not self._started:
            self._started = True
            self.out.start(None)  # ConverseStream names no model; the encoder keeps ours

    def _delta(self, index: int, delta: dict[str, Any]) -> None:
        if not self._started:
            self._start()
        text = delta.get("text")
        if text is not None:
            if text:
                self.out.content(text)
            return
        tool_use = delta.get("toolUse")
        if tool_use is not None:
            fragment = tool_use.get("input")
            tool = self._tool_of_block.get(index)
            if fragment and tool is not None:
                self._args_seen.add(index)
                self.out.tool_call_args(tool, fragment)
            return
        reasoning = delta.get("reasoningContent")
        if reasoning is not None:
            self._reasoning(index, reasoning)
        # citation, image, toolResult deltas have no OpenAI slot: dropped.

    def _reasoning(self, index: int, reasoning: dict[str, Any]) -> None:
        if index != self._thinking_block:
            self._thinking_block = index
            self._thinking = []
        if reasoning.get("text"):
            self._thinking.append(reasoning["text"])
            self.out.reasoning(reasoning["text"])
        if reasoning.get("signature"):
            # The signature covers the block's whole text: send both, so the client can return
            # the block unchanged on its next turn.
            self.out.thinking_block({"type": "thinking", "thinking": "".join(self._thinking),
                                     "signature": reasoning["signature"]})
        if reasoning.get("redactedContent"):
            self.out.thinking_block({"type": "redacted_thinking",
                                     "data": reasoning["redactedContent"]})
