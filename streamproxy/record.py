"""`RequestRecord`: what one request did, filled in along the data path (per request, never
per chunk) and handed to observers — access log, metrics, storage — when the request ends."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from streamproxy.errors import (
    BufferOverflow,
    StreamDecodeError,
    StreamTruncated,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
    UpstreamUnreachable,
)

if TYPE_CHECKING:
    from streamproxy.providers.base import StreamTranslator


@dataclass(slots=True)
class RequestRecord:
    trace_id: str
    stream: bool | None = False  # None: unknown, the request refused before its body was read
    provider: str | None = None
    passthrough: bool = False  # that provider forwards OpenAI's answer as it came
    model: str | None = None  # the upstream model asked for
    status: int = 200
    started: float = field(default_factory=time.monotonic)
    first_byte: float | None = None  # monotonic time the first byte went to the client
    # ...and its first token (a stream's: relay.py), or its whole cached answer; None for a
    # non-streamed answer, and for a stream that failed before any token.
    first_token: float | None = None
    kept_alive: bool = False  # a 200 and keep-alive comments went out before the answer
    finished: float | None = None
    attempts: int = 0  # upstream requests sent, retries and fallbacks included
    target_index: int | None = None  # which attempt of the request's plan served the answer
    target_position: int | None = None  # ...its `Attempt.position`: the log's target_index
    option_path: str | None = None  # where that attempt (or the failed last) sits in the config
    # Retries of the target whose answer (or error) is returned, as Portkey counts them for
    # x-portkey-retry-attempt-count; None: no upstream target was tried for the answer.
    retries: int | None = None
    retries_exhausted: bool = False  # the failure returned used up its target's retries
    fallbacks: int = 0  # moves to another planned target after a failure
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    # `usage` is what the provider had reported when its stream failed or its client left,
    # not the answer's final count (the prompt's tokens are billed all the same).
    usage_partial: bool = False
    chunks: int = 0
    bytes_out: int = 0
    error_type: str | None = None
    error_code: str | None = None
    client_disconnected: bool = False
    metadata: dict[str, Any] | None = None
    completion_id: str | None = None
    # The proxy's own `created` (wall clock when the answer's request was sent): a stored
    # completion's when the upstream's cannot be stored (storage/service.py)
    created: int | None = None
    cache_status: str | None = None  # HIT, MISS, REFRESH or DISABLED; None: not looked at
    # Set before routing by features that need the whole answer (store, cache fill): the
    # executor then tees the stream into `builder`; a non-streamed answer lands in `response`.
    capture: bool = False
    builder: Any = None  # CompletionBuilder when captured
    # Set before routing by the cache when a target caches: the executor awaits it with an
    # attempt's index (and this record) before that target's first request; bytes are its
    # cached answer.
    lookup: Callable[[int, RequestRecord], Awaitable[bytes | None]] | None = None
    response: dict[str, Any] | None = None
    # What end-of-request features noted before routing, for their observers (store: the
    # request and owner to persist; cache: its TargetLookups, whose keys say where the
    # answering target's answer is written). Keyed by feature name.
    pending: dict[str, Any] | None = None
    # Operations (observe/, server/auth.py): who asked, how much, how the stream flowed.
    auth_key_name: str | None = None  # the proxy key's configured name, never the key
    request_body: bytes | None = None  # only when the operator opts in (logging.log_bodies)
    bytes_in: int = 0  # request body bytes from the client
    upstream_reads: int = 0  # upstream reads after the commit point (relay)
    # Largest gap between two of those reads from the first token's on (or the last one and
    # a cut stream's end: Deadline.gap_stats), seconds; None without a token
    gap_max: float | None = None
    gap_mean: float | None = None
    # (provider, kind) of every upstream failure, retried or final (see upstream_error_kind).
    upstream_errors: list[tuple[str, str]] | None = None
    # The provider of every attempt that repeated a target (a retry), for metrics.
    retried: list[str] | None = None
    # The provider of every target a fallback left (after its failure), for metrics.
    fell_back: list[str] | None = None
    # The last upstream answer's headers the client gets (upstream/passed_headers.py): the
    # answer's, or the returned error's.
    upstream_headers: dict[str, str] | None = None

    @property
    def ttft(self) -> float | None:
        """Time to first token: from arrival to the first token sent (not to a role chunk
        alone that the stream committed on while the model was still silent)."""
        return None if self.first_token is None else self.first_token - self.started

    @property
    def first_chunk(self) -> float | None:
        """From arrival to the first byte of the answer: a stream's commit (its first chunk,
        perhaps the role alone), a non-streamed answer's body."""
        return None if self.first_byte is None else self.first_byte - self.started

    @property
    def duration(self) -> float | None:
        return None if self.finished is None else self.finished - self.started

    def note_usage(self, given: dict[str, Any] | None, translator: StreamTranslator,
                   ended: bool = False, sent: int = 0) -> None:
        """A stream's usage, once, at its end: the count its sink was given, else (it failed,
        or its client left) what the provider had reported by then (`usage_so_far`). Partial
        unless the stream `ended` normally or the translator says the count given is final
        (a pass-through's may be a running count: `usage_is_final`). A cut stream's
        completion tokens are at least `sent`, the encoder's estimate of what the client got
        (`ChunkEncoder.tokens_sent`): Anthropic's snapshot still says message_start's 1 after
        a hundred tokens went out, Bedrock's, Cohere's and Ollama's say nothing. A running
        count (Gemini's, a pass-through's given on every chunk) that has the answer's tokens
        is the provider's own, and kept."""
        usage = given if given is not None else translator.usage_so_far()
        final = given is not None and (ended or translator.usage_is_final())
        runs = given is not None or translator.usage_runs
        if not final and not ended and sent and not (runs and _completion(usage) > 0):
            usage = _at_least(usage, sent)
        self.usage, self.usage_partial = usage, usage is not None and not final

    def note_upstream_error(self, err: BaseException) -> None:
        """Remember an upstream failure for metrics; errors of our own making are skipped."""
        kind = upstream_error_kind(err)
        if kind is not None:
            if self.upstream_errors is None:
                self.upstream_errors = []
            self.upstream_errors.append((self.provider or "", kind))

    def note_retry(self) -> None:
        """One more attempt at the current target: counted against its provider, not the
        one a later fallback reaches."""
        if self.retried is None:
            self.retried = []
        self.retried.append(self.provider or "")

    def note_fallback(self) -> None:
        """A move to another planned target after the current one failed: counted against
        the failed target's provider, as a retry is (not the one the move reaches)."""
        self.fallbacks += 1
        if self.fell_back is None:
            self.fell_back = []
        self.fell_back.append(self.provider or "")


def _completion(usage: dict[str, Any] | None) -> int:
    """The usage's completion tokens; 0 when none, or not a count (a pass-through's JSON)."""
    n = usage.get("completion_tokens") if usage is not None else None
    return n if isinstance(n, int) and not isinstance(n, bool) else 0


def _at_least(usage: dict[str, Any] | None, completion: int) -> dict[str, Any]:
    """`usage` (a snapshot, perhaps none: its prompt then unknown) with at least `completion`
    completion tokens, its total following."""
    if usage is not None and _completion(usage) >= completion:
        return usage
    usage = dict(usage) if usage is not None else {"prompt_tokens": None}
    usage["completion_tokens"] = completion
    prompt = usage.get("prompt_tokens")
    if isinstance(prompt, int) and not isinstance(prompt, bool):
        usage["total_tokens"] = prompt + completion
    else:
        usage["total_tokens"] = None
    return usage


def cache_write_tokens(usage: dict[str, Any], details: Any) -> Any:
    """The prompt's tokens written to the provider's cache, as the client's usage names them:
    OpenAI's `prompt_tokens_details.cache_write_tokens` (OpenRouter's usage has only that),
    else Anthropic's `cache_creation_input_tokens` at the top. `details` is the usage's
    `prompt_tokens_details`; the value is the provider's JSON, unchecked."""
    if isinstance(details, dict) and "cache_write_tokens" in details:
        return details["cache_write_tokens"]
    return usage.get("cache_creation_input_tokens")


def upstream_error_kind(err: BaseException) -> str | None:
    """A small, bounded label for an upstream failure; None when the provider is not to blame."""
    if isinstance(err, UpstreamStatusError):
        return f"status_{err.status}"  # an HTTP error, or an error event mid-stream
    for cls, kind in _UPSTREAM_KINDS:
        if isinstance(err, cls):
            return kind
    return None


# Most specific first.
_UPSTREAM_KINDS = (
    (UpstreamTimeout, "timeout"),
    (UpstreamUnreachable, "unreachable"),
    (BufferOverflow, "buffer_overflow"),
    (StreamDecodeError, "decode_error"),
    (StreamTruncated, "truncated"),
    (UpstreamProtocolError, "protocol_error"),
)

Observer = Callable[[RequestRecord], None]
