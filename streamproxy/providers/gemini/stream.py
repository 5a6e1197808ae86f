"""Gemini `streamGenerateContent?alt=sse` → ChunkSink (pure). provider-streams.md §4.3 to §4.5.

- The stream has no end event: it ends at EOF, after a chunk that carried a `finishReason` (or
  a `promptFeedback.blockReason`). The finish chunk goes out when that reason arrives; usage and
  `[DONE]` only at EOF (`close()`), because the last usage snapshot may come after the reason.
  EOF before any reason is a truncation (StreamTruncated), never a fake `stop`.
- `functionCall` parts arrive whole: one `tool_call_start` with the full JSON arguments. Tool
  index = running count of calls over the whole response; Gemini's id when it gives one (a
  second call with the same id gets `call_<id>_<index>`), else a generated `call_…` (never
  sent back upstream).
- `inlineData` image parts (image models) → `images` entries, each whole, as a data: URL;
  thought images (drafts) are left out.
- `executableCode` / `codeExecutionResult` parts (code execution) → fenced blocks of the
  content (code_block).
- `thought: true` text parts → reasoning. A `thoughtSignature` → a `thinking_blocks` entry
  `{"type": "thought_signature", "signature", "tool_call_id"?}` for the client to send back.
- `usageMetadata` is a snapshot repeated on chunks and not monotonic: the last one wins whole.
- Once a finish reason was emitted, later parts are ignored (Gemini sends none): the client
  has already been told the answer is complete.
- A chunk `{"error": {...}}` ends the stream with an OpenAI error frame and no `[DONE]`.
- `citationMetadata` sources, and the web sources of `groundingMetadata` (Google Search
  grounding: each `groundingSupports` entry's sources over its `segment`) → OpenAI's
  `url_citation` annotations (`delta.annotations`), each once, after the parts of the chunk
  that carried them. Their offsets count UTF-8 bytes, OpenAI's characters: a stream asking
  for Google Search (`grounded`) keeps its answer's text to convert them (AnswerText).
- Logprobs (only when the client asked: `logprobs=True`): a candidate's `logprobsResult`
  covers the tokens of its chunk, so they go with the chunk's first answer text, as one
  content delta (`content_logprobs`), the way OpenAI pairs them.

Speed: nearly every chunk is one plain text part, and Gemini writes those byte for byte alike:
`{"candidates": [{"content": {"parts": [{"text": "…"}],"role": "model"},"index": 0}],
"usageMetadata": {…},"modelVersion": …}`. `feed` recognises that exact prefix (up to
`"usageMetadata"`) on the bytes and decodes only the text's JSON string (a candidate with a
`logprobsResult` never has that form: its chunk takes the full parse). The rest is per-chunk
bookkeeping (the usage snapshot, modelVersion, responseId) and is left unread: the next
snapshot replaces this one, so it is parsed at EOF only if it was the last (damage inside a
snapshot that was replaced therefore goes unseen). Anything else (a second part, `thought`, a
signature, a finish reason, another key order or other separators, the first chunk) takes the
full parse. A read of a kilobyte or more (several chunks: a body that came at once, a loaded
proxy's reads) has its runs of such chunks spliced (providers/splice.py): one regular
expression for one such chunk is matched chunk after chunk, checking it and cutting out its
literal, and the run's last chunk is kept as the unread snapshot; 1.2 -> 0.67 us per chunk on
a whole body. Below a kilobyte the per-chunk
fast path is cheaper.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from typing import Any

import orjson

from streamproxy._json import dumps_exact, loads_exact, loads_lenient
from streamproxy.decode.sse import SSEEvent
from streamproxy.errors import StreamDecodeError, StreamTruncated, UpstreamStatusError
from streamproxy.openai_api.chunks import ChunkSink, make_usage, unseen_citations
from streamproxy.providers.base import (
    WRONG_SHAPE,
    SSETranslator,
    distinct_call_id,
    load_event_json,
    malformed,
)
from streamproxy.providers.gemini.errors import error_from_object
from streamproxy.providers.gemini.request import GENERATED_ID_PREFIX, SIGNATURE_BLOCK
from streamproxy.providers.splice import JSON_TEXT, feed_runs

_FILTERED = "content_filter"
FINISH_REASONS = {
    "STOP": "stop",  # becomes tool_calls when the response made a function call
    "MAX_TOKENS": "length",
    "SAFETY": _FILTERED,
    "RECITATION": _FILTERED,
    "LANGUAGE": _FILTERED,
    "BLOCKLIST": _FILTERED,
    "PROHIBITED_CONTENT": _FILTERED,
    "SPII": _FILTERED,
    "IMAGE_SAFETY": _FILTERED,
    "IMAGE_PROHIBITED_CONTENT": _FILTERED,
    "IMAGE_RECITATION": _FILTERED,
    "IMAGE_OTHER": _FILTERED,
    "MODEL_ARMOR": _FILTERED,  # Vertex: Model Armor (the project's screening) blocked the answer
    "OTHER": _FILTERED,  # "unknown reason": cut short, so never reported as a clean stop
    "NO_IMAGE": "stop",
    "FINISH_REASON_UNSPECIFIED": "stop",
}
# Reasons that mean no usable answer was produced: an error, never a finish. Before the first
# byte reaches the client that is an HTTP error (and the router may try elsewhere).
FAILED_REASONS = {
    "MALFORMED_FUNCTION_CALL": 502,
    "UNEXPECTED_TOOL_CALL": 502,
    "TOO_MANY_TOOL_CALLS": 502,
    "MALFORMED_RESPONSE": 502,
    "MISSING_THOUGHT_SIGNATURE": 400,  # the client did not send a signature back
}


# The plain text chunk, as Gemini serialises it (§4.3; Google's `": "` and bare `,`): the text
# literal sits between these two, and the chunk's remaining keys follow the second.
_TEXT_HEAD = b'{"candidates": [{"content": {"parts": [{"text": "'
_TEXT_END = b'"}],"role": "model"},"index": 0}],"usageMetadata": {'
_USAGE_KEY = b'"usageMetadata": {'
_TEXT_AT = len(_TEXT_HEAD)  # the first byte of the text, after its opening quote
# A plain text chunk with a non-empty text, its literal as group 1 (providers/splice.py: runs
# of these are spliced); the keys after the text are the fast path's, left unread.
# `\r\n\r\n` ends an event, and no other line break may be in one: CR is excluded here, LF
# counted by the splice (`[^\r\n]` costs 2.5x `[^\r]`).
_TEXT_CHUNK = re.compile(rb"data: " + re.escape(_TEXT_HEAD) + rb'(?!")(' + JSON_TEXT + rb")"
                         + re.escape(_TEXT_END) + rb"[^\r]*+\r\n\r\n")
# An image part's media type as a data: URL may carry it: image/<subtype> and nothing else (a
# comma or semicolon in it would start the URL's data, or a parameter, where the upstream chose).
_IMAGE_TYPE = re.compile(r"image/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*")
_RUNS_FROM = 1024  # bytes a read: below, the fast path is cheaper (a chunk is ~300 bytes)
_loads = orjson.loads
_DecodeError = orjson.JSONDecodeError


def map_usage(u: dict[str, Any]) -> dict[str, Any]:
    prompt = (u.get("promptTokenCount") or 0) + (u.get("toolUsePromptTokenCount") or 0)
    thoughts = u.get("thoughtsTokenCount") or 0
    completion = (u.get("candidatesTokenCount") or 0) + thoughts
    # totalTokenCount is not read: total_tokens is prompt + completion, as OpenAI's is, even
    # from a server whose total leaves the thoughts or the tool-use prompt out (make_usage).
    usage = make_usage(prompt, completion, cached=u.get("cachedContentTokenCount") or 0,
                       reasoning=thoughts)
    audio = _modality_tokens(u.get("promptTokensDetails"), "AUDIO")
    if audio:  # OpenAI's field for it; Gemini bills audio input above text
        usage["prompt_tokens_details"]["audio_tokens"] = audio
    return usage


def _modality_tokens(details: Any, modality: str) -> int:
    """The tokens of one modality in a `…TokensDetails` list (`[{modality, tokenCount}]`)."""
    return sum(d.get("tokenCount") or 0 for d in details or () if d.get("modality") == modality)


def unread_usage(chunk: bytes) -> Any:
    """The usage snapshot of a plain text chunk the fast path took: its keys after the text,
    parsed as an object of their own."""
    rest = chunk[chunk.index(_TEXT_END, _TEXT_AT) + len(_TEXT_END) - len(_USAGE_KEY) :]
    return load_event_json(b"{" + rest)["usageMetadata"]


def dump_args(args: Any) -> str:
    # Python's default separators (`{"type": "funny"}`), as the reference translation has them;
    # one call per tool call, so the stdlib's speed does not matter here.
    try:
        return json.dumps(args if args is not None else {}, ensure_ascii=False,
                          allow_nan=False)
    except ValueError:
        # A number past a double's (1e400, read as inf) where exact_args stepped aside (nesting
        # past Python's recursion): the stdlib wrote `Infinity`, no JSON for any client.
        raise StreamDecodeError("the upstream sent a tool call's arguments with a number "
                                "too large to pass on, nested too deep to copy as written"
                                ) from None


def exact_args(raw: bytes) -> list[str] | None:
    """The functionCall args of a chunk's (or whole answer's) candidate, in order, with their
    numbers as the upstream wrote them, when it holds one orjson may not read so (an integer
    past 64 bits read as a float: a client got 1.2345678901234568e+20 for 123456789012345678901);
    else None. Only for a chunk with a call, once a chunk."""
    doc = loads_exact(raw)
    try:
        return None if doc is None else [
            dumps_exact(p["functionCall"].get("args") or {}, (", ", ": "))
            for p in doc["candidates"][0]["content"]["parts"] if "functionCall" in p]
    except (*WRONG_SHAPE, RecursionError):  # (too deep for the stdlib: as orjson reads it)
        return None


def new_call_id() -> str:
    return GENERATED_ID_PREFIX + os.urandom(12).hex()


def token_logprobs(result: dict[str, Any]) -> list[dict[str, Any]]:
    """A `logprobsResult` → OpenAI `logprobs.content` entries: `chosenCandidates[i]` is the
    token of step i, `topCandidates[i].candidates` that step's likeliest (only with a count)."""
    tops = result.get("topCandidates") or ()
    tokens = []
    for i, chosen in enumerate(result.get("chosenCandidates") or ()):
        top = (tops[i].get("candidates") or ()) if i < len(tops) else ()
        tokens.append({**_token(chosen), "top_logprobs": [_token(c) for c in top]})
    return tokens


def _token(candidate: dict[str, Any]) -> dict[str, Any]:
    # proto3 JSON leaves out default values: a certain token (0.0) has no logProbability.
    token = candidate.get("token") or ""
    return {"token": token, "logprob": candidate.get("logProbability") or 0.0,
            "bytes": list(token.encode())}


def image_url(part: dict[str, Any]) -> str | None:
    """An answer's image part (image models: `inlineData` with an `image/*` type and base64
    data) as the data: URL `images` carries; None for a thought image (an interim draft of
    Gemini 3 Pro Image's thinking, not the answer), inline data of another kind, or a type
    or data that is not one (an upstream never chooses the URL's shape)."""
    blob = part["inlineData"]
    mime, data = blob.get("mimeType"), blob.get("data")
    if (part.get("thought") or not isinstance(mime, str) or not _IMAGE_TYPE.fullmatch(mime)
            or not data or not isinstance(data, str)):
        return None
    return f"data:{mime};base64,{data}"


def code_block(part: dict[str, Any]) -> str:
    """A code execution part (`executableCode`, or its run's `codeExecutionResult`) as a
    fenced block of the answer's text, the code's language (`PYTHON`) or `output` naming it:
    OpenAI has no slot for either, and an answer whose reasoning ran there made no sense
    without them. On lines of their own, whatever text comes before or after."""
    if "executableCode" in part:
        code = part["executableCode"]
        tag = str(code.get("language") or "").lower().replace("language_unspecified", "")
        body = code.get("code") or ""
    else:
        tag, body = "output", part["codeExecutionResult"].get("output") or ""
    if not body.endswith("\n"):
        body += "\n"
    return f"\n```{tag}\n{body}```\n"


def url_citations(metadata: dict[str, Any]) -> list[dict[str, Any]]:
    """`citationMetadata` → OpenAI `url_citation` annotations. Vertex (and Google's current
    SDKs) name the list `citations`, the Gemini API's reference `citationSources`; a source
    without a `uri` (a book, say) has no place in a url_citation and is left out."""
    entries = []
    for source in metadata.get("citations") or metadata.get("citationSources") or ():
        uri = source.get("uri")
        if isinstance(uri, str) and uri:
            entries.append(_url_citation(uri, source.get("title"), source))
    return entries


def grounding_citations(metadata: dict[str, Any], chunks: list[Any]) -> list[dict[str, Any]]:
    """`groundingMetadata` (Google Search grounding) → `url_citation` annotations: one for
    each web source (`groundingChunks[i].web`) a support cites, over that support's
    `segment`. A chunk that is not a web page (a retrieved document, a map place), or an
    index that names no chunk, is left out. `chunks`: the stream's earlier groundingChunks,
    which this metadata's join — streamed, a chunk sends only the sources not sent before,
    and the indices count them all (Google's reference)."""
    chunks += metadata.get("groundingChunks") or ()
    entries = []
    for support in metadata.get("groundingSupports") or ():
        segment = support.get("segment") or {}
        for i in support.get("groundingChunkIndices") or ():
            web = chunks[i].get("web") if isinstance(i, int) and 0 <= i < len(chunks) else None
            uri = web.get("uri") if web else None
            if isinstance(uri, str) and uri:
                entries.append(_url_citation(uri, web.get("title"), segment))
    return entries


def _url_citation(uri: str, title: Any, span: dict[str, Any]) -> dict[str, Any]:
    # The indices are Gemini's (proto3 JSON leaves out a 0): bytes, until to_characters.
    return {"type": "url_citation", "url_citation": {
        "url": uri, "title": title or "", "start_index": span.get("startIndex") or 0,
        "end_index": span.get("endIndex") or 0}}


def to_characters(entries: list[dict[str, Any]], text: str) -> None:
    """Gemini's offsets count UTF-8 bytes of the answer's text ("measured in bytes"),
    OpenAI's count its characters (code points: Python's `content[start:end]`): each entry's
    converted in place. An offset inside a character counts that character's start; one past
    the text known goes on counting bytes as characters."""
    if text.isascii():
        return  # the same count
    data = text.encode()
    for entry in entries:
        citation = entry["url_citation"]
        for key in ("start_index", "end_index"):
            offset = citation[key]
            if isinstance(offset, int) and offset > 0:
                citation[key] = (len(data[:offset].decode(errors="ignore"))
                                 + max(0, offset - len(data)))


class AnswerText:
    """The answer's text so far, kept for a stream whose citations' byte offsets must become
    characters (one asking for Google Search): each piece is passed on to the sink as well.
    Spliced literals are kept escaped, and decoded only when a citation needs them."""

    __slots__ = ("_content", "_literals", "_pieces")

    def __init__(self, out: ChunkSink) -> None:
        self._pieces: list[str | bytes] = []
        self._content = out.content
        self._literals = getattr(out, "content_literals", None)

    def content(self, text: str) -> None:
        self._pieces.append(text)
        self._content(text)

    def literals(self, literals: list[bytes]) -> None:
        self._pieces += literals
        self._literals(literals)  # type: ignore[misc]

    def logprobs_text(self, text: str) -> None:  # (the sink took it with its logprobs)
        self._pieces.append(text)

    def text(self) -> str:
        text = "".join(p if isinstance(p, str) else _loads(b'"' + p + b'"')
                       for p in self._pieces)
        self._pieces = [text]
        return text


def failed_finish(reason: str, candidate: dict[str, Any], provider: str) -> UpstreamStatusError:
    detail = candidate.get("finishMessage")
    message = f"Gemini ended the answer with {reason}" + (f": {detail}" if detail else ".")
    if reason == "MISSING_THOUGHT_SIGNATURE":
        message += (" Send back the assistant message's thinking_blocks (type "
                    "thought_signature) with the conversation.")
    return UpstreamStatusError(FAILED_REASONS[reason], message, provider=provider,
                               code=reason.lower())


def blocked_prompt(feedback: dict[str, Any]) -> str:
    """Why Gemini blocked the prompt, for the answer's `refusal`: its `blockReason` and
    Vertex's `blockReasonMessage`. (The answer is otherwise empty: a client could not tell a
    blocked prompt from a blocked answer, nor which rule it broke.)"""
    detail = feedback.get("blockReasonMessage")
    text = f"The prompt was blocked ({feedback['blockReason']})"
    return f"{text}: {detail}" if isinstance(detail, str) and detail else text + "."


class GeminiStreamTranslator(SSETranslator):
    usage_runs = True  # (every chunk's usageMetadata: the count of what was sent)

    def __init__(self, out: ChunkSink, max_event_bytes: int, provider: str = "gemini", *,
                 logprobs: bool = False, grounded: bool = False,
                 names: dict[str, str] | None = None) -> None:
        super().__init__(out, max_event_bytes)
        # Gemini's name → the client's, for the functions renamed for Gemini (names.py)
        self._names = names or {}
        self._provider = provider
        self._logprobs = logprobs  # the client asked: candidates' logprobsResult are read
        self._started = False
        self.finished = False  # a finish reason (or a prompt block) was emitted
        self._tools = 0
        self._call_ids: set[str] = set()  # the answer's tool-call ids so far
        # The chunk being read (on the full parse only), and the exact args of the one whose
        # calls were last read: a chunk's calls take theirs in order (exact_args).
        self._raw: bytes | None = None
        self._exact_of: bytes | None = None
        self._exact: list[str] | None = None
        self._cited: set[bytes] = set()  # the url_citations sent (a stream may repeat them)
        self._sources: list[Any] = []  # the groundingChunks so far, which supports index
        self._usage: dict[str, Any] | None = None
        # The plain text chunk whose unread usage snapshot is the latest one, if it is.
        self._usage_chunk: bytes | None = None
        self._plain = False  # a plain text chunk may take the fast path (started, not finished)
        self._content = out.content
        # Sinks that take escaped text literals (the encoders, the tee) get runs spliced.
        self._literals = getattr(out, "content_literals", None)
        # A grounded answer's text is kept (its citations' offsets count its bytes); any
        # other stream's text is only passed on, at no cost.
        self._said = AnswerText(out) if grounded else None
        if self._said is not None:
            self._content = self._said.content
            if self._literals is not None:
                self._literals = self._said.literals

    def feed(self, data: bytes) -> None:
        # A read of a chunk or two (a paced stream) is cheaper on the per-chunk fast path.
        if self._literals is None or len(data) < _RUNS_FROM:
            self.decode_read(data)
        else:
            feed_runs(self, data, _TEXT_CHUNK)

    def splice_run(self, data: bytes, start: int, end: int, literals: list[bytes]) -> bool:
        if self.done or self.finished:
            return False
        if not self._plain:  # the stream's first chunk starts it: parsed whole
            first = data.index(b"\r\n\r\n", start) + 4
            self.decode_read(data[start:first])
            start = first
            del literals[0]
        if start == end:
            return True
        if (self._plain and not self.done and self._decoder.between_events
                and len(literals) * 2 == data.count(b"\n", start, end)):  # LF: events' ends
            self._literals(literals)  # type: ignore[misc]
            cut = data.rfind(b"\r\n\r\n", start, end - 4)  # the run's last event: its usage
            self._usage_chunk = data[(start if cut < 0 else cut + 4) + 6 : end - 4]
        else:  # the first chunk also ended the answer, or the run is not whole events
            self.decode_read(data[start:end])
        return True

    def decode_read(self, data: bytes) -> None:  # feed_runs's decoder path, and short reads
        for event in self._decoder.feed(data):
            if self.done:
                return
            chunk = event.data
            if self._plain and chunk.startswith(_TEXT_HEAD):  # the fast path (docstring)
                end = chunk.find(_TEXT_END, _TEXT_AT)
                if end > 0:
                    try:  # parses only as one whole JSON string: `end` closes the text
                        text = _loads(chunk[_TEXT_AT - 1 : end + 1])
                    except _DecodeError:  # not a plain part: more keys, or a second part
                        text = None
                    if text is not None:
                        if text:
                            self._content(text)
                        self._usage_chunk = chunk  # its unread snapshot is now the latest
                        continue
            self.on_message(load_event_json(chunk), chunk)

    def on_event(self, event: SSEEvent) -> None:  # close()'s events: the full parse only
        self.on_message(load_event_json(event.data), event.data)

    def on_message(self, msg: dict[str, Any], raw: bytes | None = None) -> None:
        """One `GenerateContentResponse` (a stream chunk, or the whole non-streamed answer),
        and its JSON (its calls' args are read again from it if orjson may have changed a
        number)."""
        self._raw = raw
        try:
            if "error" in msg:
                self.out.error(error_from_object(msg["error"], 0, self._provider))
                self.done = True
                return
            usage = msg.get("usageMetadata")
            if usage is not None:
                self._usage = usage  # a snapshot: replace, never merge
                self._usage_chunk = None
            if not self._started:
                self._started = True
                self.out.start(msg.get("modelVersion"))
            if self.finished:
                return
            candidates = msg.get("candidates")
            if candidates:
                candidate = candidates[0]
                content = candidate.get("content")
                if content:
                    parts = content.get("parts")
                    if parts:
                        result = self._logprobs and candidate.get("logprobsResult")
                        if result:
                            self._parts_with_logprobs(parts, token_logprobs(result))
                        else:
                            self._parts(parts)
                # (neither is ever on a plain text chunk: the fast path never looks)
                if "citationMetadata" in candidate:
                    self._cite(url_citations(candidate["citationMetadata"]))
                if "groundingMetadata" in candidate:
                    self._cite(grounding_citations(candidate["groundingMetadata"], self._sources))
                reason = candidate.get("finishReason")
                if reason:
                    self._finish(reason, candidate)
            else:
                feedback = msg.get("promptFeedback")
                if feedback and feedback.get("blockReason"):
                    self.out.refusal(blocked_prompt(feedback))
                    self.out.finish(_FILTERED)
                    self.finished = True
            self._plain = not self.finished
        except WRONG_SHAPE as e:
            raise malformed("chunk", e) from None

    def close(self) -> None:
        for event in self._decoder.close():
            if self.done:
                break
            self.on_event(event)
        if not self.done:
            self.end_of_stream()

    def end_of_stream(self) -> None:
        """Gemini's end is EOF: complete only if a finish reason came before it."""
        if not self.finished:
            raise StreamTruncated("the upstream closed the stream before a finish reason")
        chunk = self._usage_chunk
        usage = self._usage if chunk is None else unread_usage(chunk)
        if usage is not None:
            try:
                self.out.usage(map_usage(usage))
            except WRONG_SHAPE as e:
                raise malformed("usageMetadata", e) from None
        self.out.end()
        self.done = True

    def usage_so_far(self) -> dict[str, Any] | None:
        # The latest snapshot (every chunk carries one): what the stream had cost when it failed.
        chunk = self._usage_chunk
        try:
            usage = self._usage if chunk is None else unread_usage(chunk)
            return map_usage(usage) if usage is not None else None
        except (StreamDecodeError, *WRONG_SHAPE):  # malformed: none
            return None

    def _parts(self, parts: Sequence[dict[str, Any]]) -> None:
        out = self.out
        for part in parts:
            text = part.get("text")
            if text is not None and len(part) == 1:  # the hot case: a plain text part
                if text:
                    self._content(text)
                continue
            call_id = None
            if text is not None:
                if text:
                    if part.get("thought"):
                        out.reasoning(text)
                    else:
                        self._content(text)
            elif "functionCall" in part:
                call = part["functionCall"]
                call_id = self._call_id(call.get("id"))
                name = call["name"]
                out.tool_call_start(self._tools, call_id, self._names.get(name, name),
                                    self._args(call))
                self._tools += 1
            elif "inlineData" in part:
                url = image_url(part)
                if url is not None:
                    out.image(url)
            elif "executableCode" in part or "codeExecutionResult" in part:
                self._content(code_block(part))
            if "thoughtSignature" in part:
                self._signature(part["thoughtSignature"], call_id)

    def _call_id(self, given: Any) -> str:
        # (a renamed repeat starts with GENERATED_ID_PREFIX: never sent back, so Gemini pairs
        # its result by position)
        return distinct_call_id(given, self._call_ids, self._tools) or new_call_id()

    def _args(self, call: dict[str, Any]) -> str:
        raw = self._raw
        if raw is not self._exact_of:  # the chunk's first call
            self._exact_of, self._exact = raw, exact_args(raw) if raw is not None else None
        return self._exact.pop(0) if self._exact else dump_args(call.get("args"))

    def _signature(self, signature: str, call_id: str | None) -> None:
        if signature:
            block = {"type": SIGNATURE_BLOCK, "signature": signature}
            if call_id:
                block["tool_call_id"] = call_id
            self.out.thinking_block(block)

    def _cite(self, annotations: list[dict[str, Any]]) -> None:
        """A candidate's `url_citation` annotations, each once (a stream may repeat its
        sources on later chunks)."""
        if self._said is not None:  # else no text is known: the offsets stay bytes
            to_characters(annotations, self._said.text())
        entries = unseen_citations(annotations, self._cited)
        if entries:
            self.out.citations(entries)

    def _parts_with_logprobs(self, parts: list[dict[str, Any]],
                             tokens: list[dict[str, Any]]) -> None:
        """A chunk's parts, its tokens' logprobs with its first answer text (thought
        summaries and calls have none in OpenAI's terms)."""
        for part in parts:
            text = part.get("text")
            if text is None or part.get("thought") or not tokens:
                self._parts((part,))
                continue
            self.out.content_logprobs(text, tokens)
            if self._said is not None:
                self._said.logprobs_text(text)
            tokens = []
            if "thoughtSignature" in part:
                self._signature(part["thoughtSignature"], None)

    def _finish(self, reason: str, candidate: dict[str, Any]) -> None:
        if reason in FAILED_REASONS:
            self.out.error(failed_finish(reason, candidate, self._provider))
            # The latest snapshot (the finish chunk's, else an earlier chunk's, as at a normal
            # end) is the answer's final count, not one taken before a failure (the sink has
            # ended: no usage chunk follows), as Bedrock's failed stop hands on its metadata's.
            usage = self.usage_so_far()  # (malformed: none)
            if usage is not None:
                self.out.usage(usage)
            self.done = True
            return
        mapped = FINISH_REASONS.get(reason, "stop")
        if mapped == "stop" and self._tools:
            mapped = "tool_calls"
        self.out.finish(mapped)
        self.finished = True


def answer_events(body: bytes) -> bytes | None:
    """A stream request's body that is no event stream but the answer whole, as the `alt=sse`
    events its stream would have been; None for any other body. A relay that drops `alt=sse`
    gets Google's JSON array of the stream's chunks, a server that ignores the stream the
    whole GenerateContentResponse (both pretty-printed, one event's line each now). Numbers
    are kept as written (a call's args). Read once, on that odd answer only."""
    try:
        answer = loads_lenient(body)
    except orjson.JSONDecodeError:
        return None
    chunks = answer if isinstance(answer, list) else [answer]
    if not chunks or not all(isinstance(c, dict) and _ANSWER_KEYS & c.keys() for c in chunks):
        return None
    exact = loads_exact(body)
    if exact is not None:
        lines = [dumps_exact(c).encode() for c in (exact if isinstance(exact, list) else [exact])]
    else:
        lines = [orjson.dumps(c) for c in chunks]
    return b"".join(b"data: %b\r\n\r\n" % line for line in lines)


# What every GenerateContentResponse has one of (an error object is the executor's to read).
_ANSWER_KEYS = frozenset(("candidates", "promptFeedback", "usageMetadata"))
