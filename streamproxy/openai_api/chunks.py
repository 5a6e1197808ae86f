"""The client-facing stream: `ChunkSink`, what translators write to, and `ChunkEncoder`, the sink
that turns it into OpenAI `chat.completion.chunk` SSE frames.

Translators speak in OpenAI delta terms (content, tool call start, argument fragment, finish,
usage) and never build chunk objects or bytes themselves. The encoder fixes the envelope (`id`,
`created`, `model`) once per stream as pre-encoded bytes and splices each delta into it, so a
text delta costs one `orjson.dumps` of a string and a few byte copies — or no dumps, when a
translator hands over text still JSON-escaped from the provider's bytes
(`content_literals`: the frames of a whole read by one join). Frames from one upstream
read accumulate as a list of pieces, joined once by `take()` for one write (cheaper than
appending to a bytearray and copying it out with `bytes()`).

What observers need (finish reason, usage, chunk count, error) is kept as O(1) counters on the
encoder; storage and caching that need the content use `RecordingChunkEncoder` behind a
`TeeSink`, only when switched on.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from streamproxy.errors import ProxyError, UpstreamStatusError

_dumps = orjson.dumps

DONE_FRAME = b"data: [DONE]\n\n"
# The role chunk's delta as OpenAI's: `content` is "" before text, null before anything else
# (a tool call's start carries the role itself), so a client that accumulates the stream ends
# with the whole answer's `content`.
_ROLE_TEXT = b'{"role":"assistant","content":"","refusal":null}'
_ROLE_NO_TEXT = b'{"role":"assistant","content":null,"refusal":null}'
_ROLE_WITH_CALL = b'{"role":"assistant","content":null,"tool_calls":%b,"refusal":null}'
_NULL_LOGPROBS_LEN = len(b',"logprobs":null')  # the envelope tail's first field
_CONTENT_WRAP = len(b'{"content":""}')  # a text delta's, the least any delta has
_ARGS_DELTA = b'{"tool_calls":[{"index":%d,"function":{"arguments":%b}}]}'
# What an argument delta's wrapper has over a text delta's (a one-digit index): no tokens.
_ARGS_WRAP = len(_ARGS_DELTA % (0, b'""')) - _CONTENT_WRAP
_REASONING_WRAP = len(b'{"reasoning_content":""}') - _CONTENT_WRAP  # (as _ARGS_WRAP)


class ChunkSink(Protocol):
    """What a stream translator emits, in OpenAI's terms. One response, choice index 0."""

    def start(self, model: str | None = None, text: bool | None = None) -> None:
        """The answer has begun: the role chunk is due. `text`: whether the answer begins with
        text, when known before its first delta (the first block began); then the role chunk
        leaves with this read even if that delta comes in a later one. Unknown, the first
        delta decides: `content: ""` before text, null before anything else, and a tool call's
        start carries the role, as OpenAI's. Called again before any delta, it tells `text`."""

    def content(self, text: str) -> None: ...

    def content_logprobs(self, text: str, tokens: list[dict[str, Any]]) -> None:
        """A content delta with its tokens' logprobs, on one chunk as OpenAI sends them:
        `tokens` are `logprobs.content` entries (`token`, `logprob`, `bytes`,
        `top_logprobs`). Only for a client that asked for logprobs."""

    def reasoning(self, text: str) -> None:
        """`delta.reasoning_content` (DeepSeek / LiteLLM convention)."""

    def refusal(self, text: str) -> None:
        """`delta.refusal`: the words of a refusal the provider gave apart from the content
        (Claude's `stop_details.explanation`, why Gemini blocked the prompt), before the
        content_filter finish; a refusal alone leaves `content` null, as OpenAI's."""

    def thinking_block(self, block: dict[str, Any]) -> None:
        """`delta.thinking_blocks: [block]` — opaque reasoning state (signatures, redacted
        thinking) that the client must send back for the next turn. Each is whole; the
        encoder adds its `index` in the response."""

    def image(self, url: str) -> None:
        """`delta.images: [image_entry(url, index)]` — an image the model generated, whole, as
        a data: URL. OpenAI's Chat Completions has no field for one; this is OpenRouter's (and
        LiteLLM's), which clients of image-generating models read. The encoder numbers them."""

    def citations(self, entries: list[dict[str, Any]]) -> None:
        """`delta.annotations: entries` — `url_citation`s for the answer's text, as OpenAI's
        search models send them (`{"type": "url_citation", "url_citation": {"url", "title",
        "start_index", "end_index"}}`); whole, on a delta of their own. The encoder numbers
        them (`index`, as for images); `message.annotations` has no index."""

    def tool_call_start(self, index: int, call_id: str, name: str, arguments: str = "") -> None: ...

    def tool_call_args(self, index: int, fragment: str) -> None: ...

    def content_null(self) -> None:
        """The answer's content stays null though no call or image stands for it: a cache
        replay's, before its finish, of an OpenAI-compatible upstream's answer that said so
        (DeepSeek's reasoner out of budget), where a translated stream's would end with
        `content: ""`. No sink but a replay's is told."""

    def finish(self, reason: str) -> None: ...

    def service_tier(self, tier: str) -> None:
        """OpenAI's `service_tier`, the tier that served the answer, when the provider tells
        it at the end (Bedrock's metadata): on the usage chunk, the stream's last, so no
        chunk before it pays, and in the whole answer."""

    def usage(self, usage: dict[str, Any]) -> None:
        """Latest cumulative usage in OpenAI's shape; the last call wins."""

    def end(self) -> None:
        """Normal end: the usage chunk (when the client asked for it), then `[DONE]`."""

    def error(self, err: ProxyError) -> None:
        """Abnormal end: one `data: {"error": …}` frame and no `[DONE]`."""

    def raw(self, data: bytes, finish_reason: str | None = None) -> None:
        """An already-OpenAI chunk (pass-through), forwarded without re-encoding; the finish
        reason it carries, when the translator looked, is recorded for observers."""

    def zero_usage(self, data: bytes) -> None:
        """A pass-through's usage chunk of zeros, made for a client that asked for usage when
        the upstream sent none: forwarded as `raw()` forwards, never kept as the answer's
        usage (a stored answer is as the upstream gave it)."""

    def envelope(self) -> dict[str, Any]:
        """The stream's own `id`, `created` and `model`, for a pass-through chunk that comes
        before any chunk naming them (Azure's asynchronous-filter finish); rare, not per chunk."""


def make_usage(
    prompt: int,
    completion: int,
    *,
    cached: int | None = None,
    cache_write: int | None = None,
    reasoning: int | None = None,
) -> dict[str, Any]:
    # The total is always the sum, never an upstream's own total (which may disagree with
    # its parts): clients and the token metrics take total = prompt + completion.
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    if cache_write or (cache_write is not None and cached):
        # Anthropic's and Bedrock's cache counts, as Portkey (and LiteLLM) add them: cache
        # writes cost more than input does. OpenAI's usage now names them too (its SDK's
        # `prompt_tokens_details.cache_write_tokens`).
        usage["cache_read_input_tokens"] = cached or 0
        usage["cache_creation_input_tokens"] = cache_write
        if cache_write:
            details = usage.setdefault("prompt_tokens_details", {"cached_tokens": cached or 0})
            details["cache_write_tokens"] = cache_write
    if reasoning is not None:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return usage


def no_usage() -> dict[str, Any]:
    """The usage of an answer whose provider reported none (an Anthropic-, Gemini- or
    Cohere-compatible server): zeros, as LiteLLM and Portkey give, since OpenAI's answer
    always has usage and clients read `usage.total_tokens`."""
    return make_usage(0, 0)


NO_USAGE_JSON = orjson.dumps(no_usage())


def image_entry(url: str, index: int) -> dict[str, Any]:
    """One generated image in `message.images` / `delta.images`, as OpenRouter and LiteLLM
    write it; `index` counts the answer's images (the openai SDK's stream helper merges list
    deltas by it, and raises on an entry without one)."""
    return {"type": "image_url", "image_url": {"url": url}, "index": index}


def error_frame(err: ProxyError) -> bytes:
    return b"data: " + _dumps(err.to_dict()) + b"\n\n"


def unseen_citations(entries: list[dict[str, Any]], seen: set[bytes]) -> list[dict[str, Any]]:
    """The `url_citation` entries not in `seen` yet (by their JSON), which they join: a
    provider may repeat a source on later chunks, or two citations may share a url; the
    client gets each annotation once."""
    fresh = []
    for entry in entries:
        key = orjson.dumps(entry)
        if key not in seen:
            seen.add(key)
            fresh.append(entry)
    return fresh


def _blank_frames(frames: bytes) -> tuple[int, bool]:
    """How many of `frames` (`data: {…}` frames, one line each), from the first, are chunks
    with nothing of the answer in them (no finish reason, no usage, no delta field with a
    value but the role), and whether that is all of them. Parsed only at a commit and while
    the first token is due after one, never after it."""
    start, size, blank = 0, len(frames), 0
    while start < size:  # (frame by frame, to the first with something: no split of the rest)
        end = frames.find(b"\n\n", start)
        if end < 0 or not frames.startswith(b"data: ", start):
            return blank, False
        try:
            chunk = orjson.loads(frames[start + 6:end])
        except orjson.JSONDecodeError:
            return blank, False
        start = end + 2
        choices = chunk.get("choices") if isinstance(chunk, dict) else None
        if not (choices and not chunk.get("usage") and all(
                isinstance(c, dict) and not c.get("finish_reason")
                and isinstance(c.get("delta"), dict)
                and not any(v for k, v in c["delta"].items() if k != "role")
                for c in choices)):
            return blank, False
        blank += 1
    return blank, True


class ChunkEncoder:
    """ChunkSink → SSE bytes. Also the per-stream record that logs and metrics read."""

    __slots__ = (
        "_buf", "_citations", "_content_head", "_content_null", "_content_tail", "_images",
        "_literal_sep", "_prefix", "_role", "_tail", "_thinking_blocks", "_tier", "_token_after",
        "_untold",
        "bytes_taken",
        "chunks",
        "completion_id", "created", "ended", "failure", "finish_reason", "include_usage",
        "model", "secrets", "usage_data",
    )

    # The envelope's fields after `model`: ours are null; a cache hit's encoder gives back an
    # upstream's own system_fingerprint and service_tier (cache/entry.ReplayEncoder).
    upstream_fields_json = b',"system_fingerprint":null'

    def __init__(
        self, *, completion_id: str, created: int, model: str, include_usage: bool
    ) -> None:
        self.completion_id = completion_id
        self.created = created
        self.model = model
        self.include_usage = include_usage
        self._buf: list[bytes] = []  # the frames' pieces since the last take(), joined there
        self._prefix = b""  # built at the first frame: the model may come from the upstream
        self._tail = b""
        # Built at the first text delta (_open_text), so `not _content_head` is also "no text
        # came": the check every content delta made anyway, no cost added.
        self._content_head = b""
        self._content_tail = b""
        # The role chunk said `content: null` and no call or image has come to stand for it.
        self._content_null = False
        self._literal_sep = b""  # content_literals(): built when a read brings two or more
        # start() made the role chunk due: the delta take() sends alone (b"": not before a
        # delta, what the answer begins with is not known yet); None: none due.
        self._role: bytes | None = None
        self._thinking_blocks = 0  # thinking_block(): the next block's index
        self._images = 0  # image(): the next image's index
        self._citations = 0  # citations(): the next annotation's index
        self._tier = b""  # service_tier(): the usage chunk's `"service_tier":…,`
        # Bytes of deltas that are no tokens of the answer: a thinking block repeats the
        # reasoning sent and adds its signature, an image is its data, logprobs and citations
        # describe the text (tokens_sent(); counted where each is built, never per text delta).
        self._untold = 0
        self.chunks = 0
        # After a commit on the role chunk alone: the chunks that carried nothing of the answer
        # (role_only, skip_empty); the next one is its first token.
        self._token_after = 1
        self.bytes_taken = 0  # everything take() returned: the bytes sent to the client
        self.finish_reason: str | None = None
        self.usage_data: dict[str, Any] | None = None
        self.failure: ProxyError | None = None
        self.ended = False
        # the credentials sent upstream: masked in the errors that echo them
        self.secrets: tuple[str, ...] = ()

    # -- output ------------------------------------------------------------------------------
    def take(self) -> bytes:
        """Everything encoded since the last call, for one write."""
        buf = self._buf
        if not buf:
            if not self._role:
                return b""
            self._open(self._role)  # the answer's first block began, its delta is to come
        out = b"".join(buf)
        buf.clear()
        self.bytes_taken += len(out)
        return out

    @property
    def pending(self) -> bool:
        return bool(self._buf or self._role)

    def role_only(self, blanks: bool = False) -> bool:
        """Asked once, at the commit: the frames due are the answer's role chunk alone, with
        nothing of the answer in it (an OpenAI-compatible reasoning model sends it at once,
        then thinks in silence), with any chunks as empty after it. `past_role()` and
        `answered()` tell when a chunk with something in it followed."""
        if not self.chunks:  # (a translator's start(): its role chunk is built by take())
            return bool(self._role) and not self._buf
        # A pass-through upstream's role chunk (`blanks`) may come with chunks as empty in the
        # same read (`content: ""`, `{}`): the answer has not begun either. A translator's
        # chunks always carry something: more than the role's is the answer.
        if self.chunks != 1 and not blanks:
            return False
        blank, whole = _blank_frames(b"".join(self._buf))
        if not whole:
            # (the answer began in this read: after its blank chunks, for tokens_sent; none
            # for an upstream that sends no role chunk of its own, only its role on the first)
            if blanks:
                self._token_after = blank
            return False
        self._token_after = self.chunks
        return True

    def skip_empty(self, frames: bytes) -> None:
        """Only while the first token is due after a commit on the role chunk alone: `frames`,
        what take() just returned, are chunks with nothing of the answer in them either (an
        OpenAI-compatible server's `content: ""` or `{}` before it thinks, its role again), so
        the first token is still to come (`past_role`, `answered`)."""
        if frames and not self.ended:
            blank, whole = _blank_frames(frames)
            # (the chunks before this read were blank, the role's too: _token_after counted
            # them; the answer began after this read's blank ones, if not all are)
            self._token_after = self.chunks if whole else self._token_after + blank

    def past_role(self) -> bool:
        """After a commit on the role chunk alone: a chunk with something of the answer
        followed it (the answer began), or the stream ended (an end or error frame is no
        chunk, and nothing may follow it)."""
        return self.chunks > self._token_after or self.ended

    def answered(self) -> bool:
        """After a commit on the role chunk alone: the answer's first token went out — a
        chunk followed the role's (content, reasoning, a tool call, a refusal; for an empty
        answer its finish), or the stream ended well without one. An error is no token."""
        return self.chunks > self._token_after or (self.ended and self.failure is None)

    # -- envelope ----------------------------------------------------------------------------
    def _envelope(self) -> None:
        self._prefix = b"".join((
            b'data: {"id":', _dumps(self.completion_id),
            b',"object":"chat.completion.chunk","created":', str(self.created).encode(),
            b',"model":', _dumps(self.model), self.upstream_fields_json,
            b',"choices":[{"index":0,"delta":',
        ))
        self._tail = b',"logprobs":null,"finish_reason":null}]' + (
            b',"usage":null}\n\n' if self.include_usage else b"}\n\n"
        )

    def _open_text(self) -> None:
        """The answer's first text delta: the role chunk, if none went out, says `content: ""`."""
        if not self._prefix:
            self._open(_ROLE_TEXT)
        self._content_head = self._prefix + b'{"content":'
        self._content_tail = b"}" + self._tail

    def _open(self, role: bytes) -> None:
        """The first frame's envelope, after the role chunk when start() made one due: as its
        `text` said, else `role` (what the first delta makes it)."""
        self._envelope()
        if self._role is not None:
            role = self._role or role
            self._buf += (self._prefix, role, self._tail)
            self._content_null = role is _ROLE_NO_TEXT
            self._role = None
            self.chunks += 1

    def _frame(self, delta: bytes) -> None:
        if not self._prefix:
            self._open(_ROLE_NO_TEXT)
        self._buf += (self._prefix, delta, self._tail)
        self.chunks += 1

    # -- ChunkSink ---------------------------------------------------------------------------
    def start(self, model: str | None = None, text: bool | None = None) -> None:
        if self._prefix:
            return  # (frames went out: the role chunk leads a stream or is not sent)
        if model:
            self.model = model
        self._role = b"" if text is None else _ROLE_TEXT if text else _ROLE_NO_TEXT

    def content(self, text: str) -> None:
        if not self._content_head:
            self._open_text()
        self._buf += (self._content_head, _dumps(text), self._content_tail)
        self.chunks += 1

    def content_literals(self, literals: list[bytes]) -> None:
        """Content deltas given as the insides of JSON string literals, escaped as JSON
        requires and valid UTF-8 (spliced from a provider's bytes, see
        providers/anthropic/stream.py): one frame each, built by one join."""
        if not self._content_head:
            self._open_text()
        if len(literals) == 1:
            text = literals[0]
        else:
            if not self._literal_sep:  # frame i's closing, then frame i+1's opening
                self._literal_sep = b'"' + self._content_tail + self._content_head + b'"'
            text = self._literal_sep.join(literals)
        self._buf += (self._content_head, b'"', text, b'"', self._content_tail)
        self.chunks += len(literals)

    def content_logprobs(self, text: str, tokens: list[dict[str, Any]]) -> None:
        if not self._content_head:
            self._open_text()
        # The envelope's tail with its `"logprobs":null` replaced by the tokens.
        logprobs = _dumps({"content": tokens, "refusal": None})
        self._untold += len(logprobs) - 4  # (in the place of the tail's `null`)
        self._buf += (self._content_head, _dumps(text), b'},"logprobs":', logprobs,
                      self._tail[_NULL_LOGPROBS_LEN:])
        self.chunks += 1

    def reasoning(self, text: str) -> None:
        self._frame(b'{"reasoning_content":' + _dumps(text) + b"}")
        self._untold += _REASONING_WRAP  # (no tokens: tokens_sent takes it off)

    def refusal(self, text: str) -> None:
        self._frame(b'{"refusal":' + _dumps(text) + b"}")
        self._content_null = False  # (a refusal alone: content null, as OpenAI's)

    def thinking_block(self, block: dict[str, Any]) -> None:
        # Numbered like tool calls: the openai SDK's stream helper merges list deltas by
        # `index` and raises on a second entry without one.
        delta = _dumps({"thinking_blocks": [{"index": self._thinking_blocks, **block}]})
        self._untold += len(delta) - _CONTENT_WRAP  # (tokens_sent takes that off each)
        self._frame(delta)
        self._thinking_blocks += 1

    def image(self, url: str) -> None:
        delta = _dumps({"images": [image_entry(url, self._images)]})
        self._untold += len(delta) - _CONTENT_WRAP  # (tokens_sent takes that off each)
        self._frame(delta)
        self._images += 1
        self._content_null = False  # (an image answer's content is null without text)

    def citations(self, entries: list[dict[str, Any]]) -> None:
        # Numbered across the stream, as thinking blocks and images: a stream may cite in more
        # than one delta, and the openai SDK's stream helper raises on a second list delta
        # whose entries have no `index` (OpenAI's search models send theirs in one delta).
        first = self._citations
        self._citations += len(entries)
        delta = _dumps({"annotations": [{"index": first + i, **entry}
                                         for i, entry in enumerate(entries)]})
        self._untold += len(delta) - _CONTENT_WRAP  # (tokens_sent takes that off each)
        self._frame(delta)

    def tool_call_start(self, index: int, call_id: str, name: str, arguments: str = "") -> None:
        calls = _dumps([{"index": index, "id": call_id, "type": "function",
                         "function": {"name": name, "arguments": arguments}}])
        if self._role is None or self._role is _ROLE_TEXT:
            self._frame(b'{"tool_calls":%b}' % calls)
            self._content_null = False  # (calls only: null, as OpenAI's)
            return
        self._role = None  # the answer begins with this call: its chunk carries the role
        self._envelope()
        self._buf += (self._prefix, _ROLE_WITH_CALL % calls, self._tail)
        self.chunks += 1

    def content_null(self) -> None:
        if not self._prefix:  # (nothing came: the role chunk says null, not the finish's "")
            self._open(_ROLE_NO_TEXT)
        self._content_null = False

    def tool_call_args(self, index: int, fragment: str) -> None:
        self._frame(_ARGS_DELTA % (index, _dumps(fragment)))
        # (no tokens: some providers send a token a delta, each with ~9 tokens' worth of
        # wrapper, which tokens_sent takes off)
        self._untold += _ARGS_WRAP

    def finish(self, reason: str) -> None:
        if not self._prefix:
            self._open(_ROLE_TEXT)
        self.finish_reason = reason
        delta = b'{"content":""}' if self._null_content_is_due() else b"{}"
        self._buf += (self._prefix, delta, b',"logprobs":null,"finish_reason":', _dumps(reason),
                      b'}],"usage":null}\n\n' if self.include_usage else b"}]}\n\n")
        self.chunks += 1

    def _null_content_is_due(self) -> bool:
        """Reasoning alone came after a `content: null` role chunk: the answer's content is
        still due, as the "" OpenAI's reasoning models give an answer with no text (and as the
        non-streamed and stored answers say). Asked once, at the end."""
        if self._content_null and not self._content_head:
            self._content_null = False
            return True
        return False

    def service_tier(self, tier: str) -> None:
        self._tier = b'"service_tier":%b,' % _dumps(tier)

    def usage(self, usage: dict[str, Any]) -> None:
        self.usage_data = usage

    def end(self) -> None:
        if self.ended:
            return
        if self._role is not None:  # an answer with nothing in it
            self._open(_ROLE_TEXT)
        if self._null_content_is_due():  # (a stream that ended with no finish reason)
            self._frame(b'{"content":""}')
        if self.include_usage:
            if not self._prefix:
                self._envelope()
            # The usage chunk: same envelope, `choices: []`. OpenAI sends it to every client
            # that asked, so a provider that reported no usage gives zeros (usage_data, what
            # the log records, stays None: not reported).
            usage = NO_USAGE_JSON if self.usage_data is None else _dumps(self.usage_data)
            head = self._prefix[: self._prefix.rindex(b'"choices":')]
            self._buf += (head, self._tier, b'"choices":[],"usage":', usage, b"}\n\n")
            self.chunks += 1
        self._buf.append(DONE_FRAME)
        self.ended = True

    def error(self, err: ProxyError) -> None:
        if self.ended:
            return
        if isinstance(err, UpstreamStatusError):  # an upstream's error event
            for secret in self.secrets:
                err.mask(secret)
        self.failure = err
        self._role = None  # (a stream that fails before its first delta has no role chunk)
        self._buf.append(error_frame(err))
        self.ended = True

    def raw(self, data: bytes, finish_reason: str | None = None) -> None:
        if finish_reason:
            self.finish_reason = finish_reason
        self._buf += (b"data: ", data, b"\n\n")
        self.chunks += 1

    zero_usage = raw

    def tokens_sent(self) -> int:
        """An estimate of the answer's tokens the client got, for a stream cut before its
        provider's final count (docs/operations.md, `tokens_partial`); read once, at the end,
        from the counts take() keeps anyway. Each chunk after the role's is at least one token
        (a delta is); with our envelope, the bytes the deltas carried beyond it — text and
        tool calls' arguments, as JSON escapes them, not a reasoning or argument delta's
        wrapper — are a token per four. A pass-through's
        frames are the upstream's own, padded as it likes: counted only."""
        # Less the role chunk (and a pass-through's blank ones before the first token: see
        # role_only) and the finish's.
        deltas = self.chunks - self._token_after - (self.finish_reason is not None)
        if deltas <= 0 or not self._prefix:
            return max(deltas, 0)
        size = (self.bytes_taken - self._untold - len(_ROLE_TEXT) - _CONTENT_WRAP * deltas
                - (len(self._prefix) + len(self._tail)) * self.chunks)
        if self.failure is not None and not self._buf:  # (its error frame went out)
            size -= len(error_frame(self.failure))
        return max(deltas, size // 4)

    def envelope(self) -> dict[str, Any]:
        return {"id": self.completion_id, "created": self.created, "model": self.model}

    def raw_run(self, frames: bytes, count: int) -> None:
        """`count` pass-through events, each already framed as `raw()` frames one (the
        translator checked), none with a finish reason: forwarded as one piece."""
        self._buf.append(frames)
        self.chunks += count


class RecordingChunkEncoder(ChunkEncoder):
    """A ChunkEncoder that also keeps each content delta in `literals` (a CompletionBuilder's
    list, wired by TeeSink) for store: true and cache fills, as the inside of its JSON string
    literal — the bytes the client's frame carried. Spliced runs are kept as they came (the
    list grows by the read's literals, no object made per delta); the builder decodes them once,
    when the whole answer is wanted. Content is nearly every event, so recording it here costs
    one call per delta where a tee in front of the encoder cost two. `content` is the base one
    written out with the append, for the same reason."""

    __slots__ = ("literals",)

    def __init__(self, *, completion_id: str, created: int, model: str,
                 include_usage: bool) -> None:
        # (spelled out: a `**envelope` pass-through doubled the encoder's construction cost)
        ChunkEncoder.__init__(self, completion_id=completion_id, created=created, model=model,
                              include_usage=include_usage)
        self.literals: list[bytes] = []

    def content(self, text: str) -> None:
        if not self._content_head:
            self._open_text()
        literal = _dumps(text)
        self._buf += (self._content_head, literal, self._content_tail)
        self.chunks += 1
        self.literals.append(literal[1:-1])

    def content_literals(self, literals: list[bytes]) -> None:
        super().content_literals(literals)
        self.literals += literals

    def content_logprobs(self, text: str, tokens: list[dict[str, Any]]) -> None:
        super().content_logprobs(text, tokens)
        self.literals.append(_dumps(text)[1:-1])
