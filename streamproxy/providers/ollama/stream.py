"""Ollama `/api/chat` NDJSON lines → ChunkSink (pure). provider-streams.md §7.

- Every line is `{model, message: {content, thinking?, tool_calls?}, done}`; `content` →
  content, `thinking` → reasoning_content.
- A tool call arrives whole, its `arguments` a JSON object: one tool_call_start carrying the
  serialised arguments. Calls are accumulated across lines (not only the last); the index is
  the running count; an id is generated when Ollama gives none (a second call with the same
  id gets `call_<id>_<index>`: calls go back to Ollama without ids, by position).
- `done: true` ends the answer: finish `tool_calls` if any call was seen, else `length` for
  `done_reason: "length"`, else `stop`; usage = prompt_eval_count / eval_count,
  cached_tokens = prompt_eval_cached_count when the server sends it.
- Logprobs (only when the client asked: `logprobs=True`): a line's `logprobs` are its
  tokens', already in OpenAI's entry shape; they go with the line's content as one delta.
  A line of thinking only has them too: OpenAI gives none for reasoning, so they are dropped
  (from a non-streamed answer, whose list holds every token's, by `content_logprobs_only`,
  and from a line of both thinking and content, whose content keeps its own).
- A line with `error` ends the stream with an OpenAI error frame (a prompt over the context:
  400 `context_length_exceeded`, a busy server: 503, as their HTTP errors; `line_status`).
  EOF before `done` (or inside a line) is StreamTruncated, never a fake `stop`.

The same translator reads a non-streamed answer (one such line) into a CompletionBuilder.
"""

from __future__ import annotations

import os
from typing import Any

import orjson

from streamproxy._json import dumps_exact, loads_exact
from streamproxy.decode.ndjson import NDJSONDecoder
from streamproxy.errors import StreamDecodeError, StreamTruncated, UpstreamStatusError
from streamproxy.openai_api.chunks import ChunkSink, make_usage
from streamproxy.providers.base import (
    WRONG_SHAPE,
    StreamTranslator,
    context_overflow,
    distinct_call_id,
    load_event_json,
    malformed,
)


def new_call_id() -> str:
    return "call_" + os.urandom(12).hex()


def arguments_json(arguments: Any) -> str:
    if isinstance(arguments, str):  # already serialised (not Ollama's documented shape)
        return arguments or "{}"
    return orjson.dumps(arguments if arguments is not None else {}).decode()


def exact_arguments(raw: bytes) -> list[str] | None:
    """A line's calls' arguments objects, in order, with their numbers as the upstream wrote
    them, when it holds one orjson may not read so (an integer past 64 bits read as a float:
    a client got 1.2345678901234568e+20 for 123456789012345678901); else None. Only for a
    line with a call, once a line."""
    doc = loads_exact(raw)
    try:
        return None if doc is None else [
            None if isinstance(args, str) else dumps_exact(args if args is not None else {})
            for args in (c["function"].get("arguments") for c in doc["message"]["tool_calls"])]
    except (*WRONG_SHAPE, RecursionError):  # (too deep for the stdlib: as orjson reads it)
        return None


def _entry(token: dict[str, Any], top: bool) -> dict[str, Any]:
    """An Ollama logprob → OpenAI's entry: the same fields, each always present."""
    text = token.get("token") or ""
    entry = {"token": text, "logprob": token.get("logprob") or 0.0,
             "bytes": token.get("bytes") or list(text.encode())}
    if top:
        entry["top_logprobs"] = [_entry(t, False) for t in token.get("top_logprobs") or ()]
    return entry


def content_logprobs_only(answer: dict[str, Any]) -> dict[str, Any]:
    """A non-streamed answer with only the logprobs of the tokens that spell its content.

    Ollama gives such an answer every token's logprobs, thinking's, its tags' and tool calls'
    too, where the stream carries them on lines of their own, whose logprobs go nowhere
    (OpenAI gives none for reasoning). The content is the last place its text stands in the
    tokens' (after the thinking); where it stands nowhere (a parser that rewrote it), the list
    is left as it came."""
    tokens, message = answer.get("logprobs"), answer.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not tokens or not isinstance(tokens, list) or not isinstance(content, str):
        return answer
    if not content:
        return {**answer, "logprobs": []}
    try:
        texts = [token.get("token") or "" for token in tokens]
        start = "".join(texts).rfind(content)
    except (AttributeError, TypeError):
        return answer  # not Ollama's shape: read (and refused) as the stream reads it
    if start < 0:
        return answer
    end, at, kept = start + len(content), 0, []
    for token, text in zip(tokens, texts, strict=True):
        if at < end and at + len(text) > start:
            kept.append(token)
        at += len(text)
    return {**answer, "logprobs": kept}


# How Ollama's 400 words a prompt over the model's context (its `num_ctx`), when it refuses
# one rather than cutting it: "prompt too long; exceeded max context length by N tokens"
# (ollama.com's), "the input length exceeds the context length" (its runner's, asked not to
# truncate), "the prompt is longer than the context length currently available to the model"
# (its server's), and llama.cpp's own error passed on as text ("request (N tokens) exceeds the
# available context size …", type exceed_context_size_error).
OVERFLOW = ("exceeded max context length", "exceeds the context length",
            "longer than the context length", "exceeds the available context size",
            "exceed_context_size_error")


# How Ollama words a refusal to take the request now, which its HTTP error says with a 503:
# its scheduler's full queue (OLLAMA_MAX_QUEUE: "server busy, please try again.  maximum
# pending requests exceeded") and ollama.com's "Server overloaded, please retry shortly".
BUSY = ("server busy", "server overloaded")


def line_status(message: str) -> int:
    """The status of an error that came with no status of its own (an `{"error": …}` line, a
    200's body): a refusal of the request 400, a busy server 503, anything else 502."""
    lowered = message.lower()
    if any(phrase in lowered for phrase in OVERFLOW):
        return 400  # (the refusal of a request, whatever the line's place: as its HTTP error)
    if any(phrase in lowered for phrase in BUSY):
        return 503  # (retried, and waited out, as the same 503 over HTTP is)
    return 502


class OllamaStreamTranslator(StreamTranslator):
    def __init__(self, out: ChunkSink, max_line_bytes: int, provider: str = "ollama", *,
                 logprobs: bool = False) -> None:
        self.out = out
        self._logprobs = logprobs  # the client asked: lines' logprobs are read
        self.done = False
        self._decoder = NDJSONDecoder(max_line_bytes)
        self._provider = provider
        self._started = False
        self._tools = 0
        self._call_ids: set[str] = set()  # the answer's tool-call ids so far

    def feed(self, data: bytes) -> None:
        for line in self._decoder.feed(data):
            if self.done:
                return
            self._line(line)

    def close(self) -> None:
        if not self.done:
            for line in self._decoder.close():
                try:
                    self._line(line)
                except StreamDecodeError:  # EOF inside a line: a cut, not bad JSON
                    raise StreamTruncated("the upstream closed the stream mid-line") from None
        if not self.done:
            raise StreamTruncated("the upstream closed the stream before it was complete")

    def _call_id(self, given: Any) -> str:
        return distinct_call_id(given, self._call_ids, self._tools) or new_call_id()

    def _line(self, line: bytes) -> None:
        self.handle(load_event_json(line), line)

    def handle(self, msg: dict[str, Any], raw: bytes | None = None) -> None:
        """One parsed line (also a whole non-streamed answer), and its JSON (its calls'
        arguments are read again from it if orjson may have changed a number)."""
        try:
            self._dispatch(msg, raw)
        except WRONG_SHAPE as e:
            raise malformed("line", e) from None

    def _dispatch(self, msg: dict[str, Any], raw: bytes | None) -> None:
        if "error" in msg:
            error = msg["error"]
            text = error if isinstance(error, str) else (error or {}).get("message")
            err = UpstreamStatusError(  # (a message that is not text is none)
                502, text if isinstance(text, str) and text
                else "the provider reported an error mid-stream",
                provider=self._provider)
            err.status = line_status(err.message)
            self.out.error(context_overflow(err, OVERFLOW))
            self.done = True
            return
        if not self._started:
            self._started = True
            self.out.start(msg.get("model"))
        message = msg.get("message") or {}
        thinking = message.get("thinking")
        if thinking:
            self.out.reasoning(thinking)
        tokens = self._logprobs and msg.get("logprobs")
        if tokens and message.get("content"):
            if thinking:  # a line that ends the thinking: its tokens are the thinking's too
                tokens = content_logprobs_only(msg)["logprobs"]
            self.out.content_logprobs(message["content"], [_entry(t, True) for t in tokens])
        elif message.get("content"):
            self.out.content(message["content"])
        calls = message.get("tool_calls")
        if calls:
            exact = exact_arguments(raw) if raw is not None else None
            for i, call in enumerate(calls):
                fn = call["function"]
                args = exact[i] if exact is not None and i < len(exact) else None
                self.out.tool_call_start(self._tools, self._call_id(call.get("id")), fn["name"],
                                         args or arguments_json(fn.get("arguments")))
                self._tools += 1
        if msg.get("done"):
            if self._tools:
                reason = "tool_calls"
            elif msg.get("done_reason") == "length":
                reason = "length"
            else:
                reason = "stop"
            self.out.finish(reason)
            # `prompt_eval_count` includes the prompt's tokens found in the KV cache, which
            # newer servers count apart (`prompt_eval_cached_count`): OpenAI's cached_tokens.
            cached = msg.get("prompt_eval_cached_count")
            self.out.usage(make_usage(msg.get("prompt_eval_count") or 0,
                                      msg.get("eval_count") or 0,
                                      cached=cached if type(cached) is int else None))
            self.out.end()
            self.done = True
