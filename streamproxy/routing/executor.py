"""The executor: tries planned targets in order until an upstream stream *opens*.

"Opens" means the upstream answered 2xx and its first event translated into output — the
commit point. Until then nothing has reached the client, so a failure (an error status, a
refused connection, a timeout, an upstream that says 200 and then sends an error event or
closes) moves on to the next target. After it, failures belong to the relay. Before a
target's first request (not its retries) its response cache, if it has one, is looked up
(`record.lookup`, cache/service.py): a hit is the answer, in that target's name.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import math
import random
import time
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import orjson
from yarl import URL

from streamproxy._json import loads_lenient
from streamproxy.errors import (
    BufferOverflow,
    InvalidRequest,
    ProxyError,
    UpstreamProtocolError,
    UpstreamStatusError,
)
from streamproxy.ids import time_ordered_hex
from streamproxy.openai_api.chunks import ChunkEncoder, RecordingChunkEncoder, no_usage
from streamproxy.openai_api.completion import CompletionBuilder, TeeSink
from streamproxy.openai_api.request import (
    ChatRequest,
    answer_changing_refusal,
    custom_tools_refused,
    narrowed_to_allowed,
    offers_custom_tools,
)
from streamproxy.providers.base import Provider, StreamTranslator
from streamproxy.record import RequestRecord
from streamproxy.routing.breaker import CircuitBreakers, Trial
from streamproxy.routing.planner import Attempt, Plan
from streamproxy.routing.retry import RETRY_AFTER_CAP, RETRY_WAIT_BUDGET, retry_delay
from streamproxy.routing.target import Target
from streamproxy.upstream.client import UpstreamClient, map_client_error
from streamproxy.upstream.deadline import Deadline
from streamproxy.upstream.passed_headers import SHOULD_RETRY, passed_headers
from streamproxy.upstream.response_parser import unread_coding

ERROR_BODY_SECONDS = 5.0  # an upstream error's body, after its status line and headers
# Statuses that are no answer and no error of the provider's: what each one means, said as
# it is (a 304 is not a redirect, a 204 no truncated stream).
NOT_ANSWERS = {
    101: "Switching Protocols, an upgrade the request never asked for",
    204: "No Content: a success without the answer",
    304: "Not Modified to a request that was not conditional",
}


def new_completion_id() -> str:
    return "chatcmpl-" + time_ordered_hex()


def as_sent(req: ChatRequest, target: Target) -> ChatRequest:
    """The request as the target's upstream was asked it (its `override_params` on top), for
    the translator and the encoder: they read what the answer holds from it (logprobs, a web
    search, `n`, the usage chunk of `stream_options.include_usage`), so a field a config adds
    is read back from the answer, not dropped. An allowed_tools choice is narrowed as `_send`
    narrows it: a tool name a translator renames is mapped back by the tools that went."""
    if not target.provider.custom_tools:
        narrowed = narrowed_to_allowed(req.body)
        if narrowed is not req.body:
            req = replace(req, body=narrowed)
    overrides = target.override_params
    if not overrides:
        return req
    sent = replace(req, body=target.apply_overrides(req.body))
    if "stream_options" in overrides:  # (checked as a request's: an object or null)
        sent.include_usage = bool((overrides["stream_options"] or {}).get("include_usage"))
    return sent


@dataclass(slots=True)
class OpenedStream:
    target: Target
    response: aiohttp.ClientResponse
    translator: StreamTranslator
    encoder: ChunkEncoder
    deadline: Deadline


def _with_signals(err: UpstreamStatusError,
                  resp: aiohttp.ClientResponse) -> UpstreamStatusError:
    """The upstream's error with what its answer's head says of a retry — an HTTP error's,
    and a 200's whose body or first event is the error (OpenRouter's, Gemini's, Vertex
    Claude's): the same head, read alike."""
    retry_after = _retry_after(resp)
    if retry_after is not None:  # the header, else the wait the body named (Gemini's)
        err.retry_after = retry_after
    if resp.headers.get(SHOULD_RETRY, "").strip().lower() == "false":
        # The upstream's word that a retry gets the same (OpenAI's SDKs obey it before the
        # status): not retried by the config either; a fallback still runs.
        err.should_retry = False
    return err


# Waits in milliseconds, in the order read (azure-core's): Azure's 429s can name theirs only
# in `x-ms-retry-after-ms`, which was unread — a blind back-off, and no wait told the client.
_MS_WAITS = ("retry-after-ms", "x-ms-retry-after-ms")


def _retry_after(resp: aiohttp.ClientResponse) -> float | None:
    """The upstream's wait: `retry-after-ms` first, then Azure's `x-ms-retry-after-ms`, then
    `Retry-After` (seconds or an HTTP-date), as the SDKs (Azure's too) read them — a header
    in neither form is absent, so the next is still read."""
    for name in _MS_WAITS:
        ms = _wait(resp.headers.get(name))
        if ms is not None:
            return ms / 1000
    value = resp.headers.get("retry-after")
    if value is None:
        return None
    seconds = _wait(value)
    # RFC 9110's other form, an HTTP-date (as the SDKs read it): the wait until then
    return seconds if seconds is not None else _seconds_until(value)


def _wait(value: str | None) -> float | None:
    """A header's number; None for no number, and for "nan", "inf", "1e400" (math.ceil of
    one, for the client's Retry-After, raised while the error was answered: the client got
    an empty reply) and a negative one, in neither RFC 9110 form (read as no wait, every
    retry went at once)."""
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _seconds_until(http_date: str) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(http_date)
    except (TypeError, ValueError, OverflowError):  # (a year beyond a C long: Overflow)
        return None  # neither form: absent
    if when.tzinfo is None:  # (-0000: UTC, as HTTP-dates are)
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - time.time())


class Executor:
    def __init__(self, client: UpstreamClient, breakers: CircuitBreakers | None = None,
                 rng: random.Random | None = None) -> None:
        self.client = client
        self.breakers = breakers or CircuitBreakers()
        self.rng = rng or random.Random()

    async def _send(self, req: ChatRequest, target: Target,
                    record: RequestRecord) -> aiohttp.ClientResponse:
        provider = target.provider
        record.upstream_headers = None  # (an earlier attempt's belong to its answer alone)
        if not provider.custom_tools:
            # (the target's override_params go on top: an override is refused as the request's
            # own fields are, not dropped by the translator)
            overrides = target.override_params
            body = target.apply_overrides(req.body)
            if req.custom_tools or (overrides and offers_custom_tools(overrides)):
                raise custom_tools_refused(provider.name, body)
            # An allowed_tools choice of functions goes as the tools it allows and its mode
            # (the translators know no such choice); once per request, not per chunk.
            narrowed = narrowed_to_allowed(body)
            if narrowed is not body:
                if overrides and "tools" in overrides:  # (they would go back on top of it)
                    raise custom_tools_refused(provider.name, body)
                req = replace(req, body=narrowed_to_allowed(req.body), stripped=True)
            refusal = answer_changing_refusal(provider.refusal_subject, narrowed,
                                              provider.answer_modalities, provider.searches_web)
            if refusal is not None:
                raise refusal
        await provider.prepare(target)
        upstream = provider.build_request(req, target)
        target.secrets = upstream.credentials(target.api_key)
        # Counted here, as it goes: a target that refused the request above sent nothing.
        record.attempts += 1
        resp = await self.client.send(upstream, connect_timeout=target.timeouts.connect,
                                      provider=provider.name)
        # (the native client's fields as parsed: its `headers` would build a CIMultiDict,
        # which the response keeps for as long as the stream lasts)
        fields = getattr(resp, "header_fields", None)
        record.upstream_headers = passed_headers(
            resp.headers.items() if fields is None else fields, error=resp.status >= 400)
        if resp.status in NOT_ANSWERS:
            resp.close()
            err = UpstreamProtocolError(f"provider '{provider.name}' answered HTTP {resp.status} "
                                        f"{NOT_ANSWERS[resp.status]}")
            err.should_retry = False  # (every try would get the same)
            raise err
        if resp.status >= 300:
            parts: list[bytes] = []
            unread: str | None = None
            try:
                # Under a short bound of its own: the status is the answer, the body only its
                # words, and one that stalls was held to the first-token timeout, then a 504.
                async with asyncio.timeout(ERROR_BODY_SECONDS):
                    await _read_body(resp, provider.max_event_bytes, cut=True, parts=parts)
            except TimeoutError:
                pass  # the status stands, with what came of its body
            except (ConnectionError, aiohttp.ClientError):
                # Cut, or not the gzip it said (either client): the status and its head (a
                # 429's Retry-After) still stand, not a 502 for the body.
                unread = "it was cut short or malformed"
            finally:
                resp.close()
            body = b"".join(parts)
            if resp.status < 400:
                raise _redirect_error(resp, provider.name)
            provider.rejected(resp.status, upstream)
            err = provider.error_from_response(resp.status, body, resp.headers)
            # (a coding the clients do not decode: its status and head stand, its body dropped)
            unread = unread_coding(resp.headers.getall("content-encoding", None)) or unread
            if unread is not None:
                err.message = f"{err.message} (its body could not be read: {unread})"
            raise _with_signals(err, resp)
        return resp

    async def open_stream(self, req: ChatRequest, plan: Plan,
                          record: RequestRecord) -> OpenedStream | bytes:
        """The opened stream, or a target's cached answer: its SSE body, whole."""
        return await self._run(req, plan, record, self._open_one)

    async def complete(self, req: ChatRequest, plan: Plan, record: RequestRecord) -> bytes:
        """The answer's JSON body: an upstream's, translated, or a target's cached one."""
        return await self._run(req, plan, record, self._complete_one)

    async def _run(self, req: ChatRequest, plan: Plan, record: RequestRecord,
                   once: Any) -> Any:
        """Try the plan's attempts in order until one opens or its cache answers; a failure
        moves to where the plan's fallback structure says (`Plan.next_after`), or ends the
        request."""
        index = 0
        failed: tuple[int, int] | None = None  # the last failed attempt, and its status
        skipped: frozenset[int] = frozenset()
        while True:
            attempt = plan.attempts[index]
            # (a failed target's headers belong to its error alone: not to a refusal's or a
            # cache hit's answer, which send no request)
            record.upstream_headers = None
            if attempt.refusal is not None:  # reached by a fallback: the request's answer
                record.option_path, record.retries = attempt.path, None
                # (the gateway's error, not the failed target's before it: no provider named)
                record.provider = record.model = None
                record.passthrough = False
                raise attempt.refusal
            # The target's own cache first, once (not before each retry), as Portkey's
            # tryPost looks it up: a hit answers in its name.
            cached = None if record.lookup is None else await record.lookup(index, record)
            if cached is not None:
                record.target_index, record.option_path = index, attempt.path
                record.target_position = attempt.position
                return cached
            trial = None if attempt.breaker is None else self.breakers.admit(
                attempt.breaker_key, attempt.breaker, _longest_tries(attempt))
            if trial is False:
                # Another request's trial of this half-open target is under way: skipped as
                # if open (as the planner leaves open targets out), unless the plan has
                # nothing else, which tries it as when all its targets are open.
                skipped |= {index}
                following = (index + 1 if index + 1 < len(plan.attempts) else None
                             ) if failed is None else plan.next_after(*failed, skipped)
                if following is not None:
                    index = following
                    continue
            try:
                result = await self._with_retries(req, attempt, record, once, trial or None,
                                                  plan.max_tries)
            except ProxyError as e:
                spent = plan.max_tries is not None and record.attempts >= plan.max_tries
                following = None if spent else plan.next_after(index, e.status, skipped)
                if following is None:
                    record.option_path = attempt.path  # the target whose error is returned
                    raise
                record.note_fallback()  # (record.provider: the failed target's)
                failed, index = (index, e.status), following
                continue
            record.target_index, record.target_position = index, attempt.position
            record.option_path = attempt.path
            return result

    async def _with_retries(self, req: ChatRequest, attempt: Attempt, record: RequestRecord,
                            once: Any, trial: Trial | None = None,
                            max_tries: int | None = None) -> Any:
        """The target's tries (no retry once the request sent `max_tries`); its breaker
        records their outcome once, retries and all (as Portkey records a target's response
        after its retries): a request is the unit of `failure_threshold` and of a failure
        percentage, so one request's retries never trip a breaker by themselves, and a
        half-open breaker's trial is the whole request."""
        spec = attempt.breaker
        if spec is None:
            return await self._retrying(req, attempt, record, once, max_tries)
        key, recorded = attempt.breaker_key, False  # (the key is built per call)
        try:
            result = await self._retrying(req, attempt, record, once, max_tries)
        except ProxyError as e:
            if not isinstance(e, InvalidRequest):
                # (a 400 of the target's translation was never sent: it tells nothing of the
                # upstream's health, and must not close a half-open breaker)
                self.breakers.record(key, spec, e.status, trial)
                recorded = True
            raise
        else:
            self.breakers.record(key, spec, None, trial)
            recorded = True
            return result
        finally:
            if trial is not None and not recorded:  # (cancelled, or never sent): the next
                self.breakers.release(key, spec, trial)  # one may try

    async def _retrying(self, req: ChatRequest, attempt: Attempt, record: RequestRecord,
                        once: Any, max_tries: int | None = None) -> Any:
        target, spec = attempt.target.served(), attempt.retry
        record.provider, record.passthrough = target.provider.name, target.provider.passthrough
        record.model = target.model or target.provider.cfg.default_model
        record.retries, record.retries_exhausted = 0, False
        retry, waited = 0, 0.0
        total = target.timeouts.total if spec.attempts else None
        # The retries share the target's total, from its first try (the loop's clock: only
        # looked up for them, as on 3.11 each lookup is a system call).
        first_try = None if total is None else asyncio.get_running_loop().time()
        while True:
            try:
                result = await once(req, target, record, first_try)
            except ProxyError as e:
                if isinstance(e, UpstreamStatusError):
                    for secret in target.secrets:  # an HTTP error, a 200 error body, an event
                        e.mask(secret)
                record.note_upstream_error(e)  # metrics: upstream errors by kind
                # (an error ours that says a retry cannot mend it — a redirect, a 204, an
                # answer over the cap — comes again on every try of this target, whatever its
                # status, as does a refusal of its translation, made before any request; a
                # fallback to another target still may answer: `_run` decides)
                if (e.status not in spec.on_status_codes or e.should_retry is False
                        or isinstance(e, InvalidRequest)):
                    raise
                if retry >= spec.attempts or (max_tries is not None
                                              and record.attempts >= max_tries):
                    record.retries_exhausted = spec.attempts > 0
                    raise
                delay = retry_delay(retry, self.rng, getattr(e, "retry_after", None),
                                    spec.use_retry_after_header, waited)
                if delay is None or _after_total(first_try, total, delay):
                    # a Retry-After beyond the cap, waits past their budget together, or a
                    # retry that would start after the target's total ran out: the retries
                    # are given up
                    record.retries_exhausted = True
                    raise
                retry += 1
                waited += delay
                await asyncio.sleep(delay)
                record.retries = retry
                record.note_retry()
                continue
            return result

    async def _open_one(self, req: ChatRequest, target: Target, record: RequestRecord,
                        first_try: float | None) -> OpenedStream:
        provider = target.provider
        deadline = Deadline(target.timeouts, provider.name, first_try)
        resp: aiohttp.ClientResponse | None = None
        parts = _StreamParts(req, target, record)
        try:
            # Scheduled now, run as soon as this task waits for the upstream's answer (its
            # request written): building them is then off the time to first token.
            deadline.loop.call_soon(parts.build)
            resp = await self._send(req, target, record)
            encoder, translator = parts.take()
            encoder.secrets = target.secrets  # (known once the request was built)
            read = resp.content.readany
            # The reads before the commit, up to the event cap: a body that ends among them
            # may be no stream at all, but one JSON error (`_json_error`).
            reads: list[bytes] = []
            kept, cap = 0, provider.max_event_bytes
            while not encoder.pending:
                data = await read()
                if not data:
                    try:
                        translator.close()
                    except ProxyError as e:
                        answer = _json_error(provider, reads) if kept <= cap else None
                        events = None if answer or kept > cap else provider.events_of_answer(
                            b"".join(reads))
                        if events is None:
                            raise answer or e from None
                        # A whole answer for the stream asked (a server that ignores
                        # `stream`): its stream, read by a translator the body did not feed.
                        translator = parts.retranslate()
                        translator.feed(events)
                    break
                if kept <= cap:
                    reads.append(data)
                    kept += len(data)
                try:
                    translator.feed(data)
                except ProxyError as e:  # (a binary framing the JSON broke: Bedrock's)
                    answer = await _json_error_body(provider, reads, kept, read)
                    raise answer or e from None
            if encoder.failure is not None:
                raise encoder.failure
            # A role chunk alone is not the first token: a reasoning model that sends it, then
            # thinks in silence, stays under the first-token timeout, not the shorter idle one.
            role_only = encoder.role_only(blanks=provider.passthrough)
            deadline.first_event(encoder.past_role if role_only else None)
            return OpenedStream(target, resp, translator, encoder, deadline)
        except BaseException as e:
            parts.note_usage()
            raise _failure(e, deadline, resp, provider.name) from None

    async def _complete_one(self, req: ChatRequest, target: Target, record: RequestRecord,
                            first_try: float | None) -> bytes:
        provider = target.provider
        deadline = Deadline(target.timeouts, provider.name, first_try)
        resp: aiohttp.ClientResponse | None = None
        record.usage = None  # this attempt's, never an earlier one's (as a stream's)
        # Made when the request is sent, as a stream's (_StreamParts.build): ids begin with
        # their millisecond and stored completions are listed in that order — made once the
        # answer came, a slow request was listed after those that came while it waited.
        completion_id, created = record.completion_id or new_completion_id(), int(time.time())
        record.created = created
        try:
            resp = await self._send(req, target, record)
            body = await _read_body(resp, provider.max_event_bytes)
        except BaseException as e:
            raise _failure(e, deadline, resp, provider.name) from None
        deadline.cancel()
        resp.release()
        try:
            result = provider.translate_response(body, as_sent(req, target),
                                                 completion_id=completion_id,
                                                 created=created,
                                                 model=_envelope_model(target))
        except UpstreamStatusError as e:
            record.usage = e.usage  # an answer made an error (a failed finish) spent tokens
            raise _with_signals(e, resp) from None
        except UpstreamProtocolError as e:
            # A 200 with one JSON error object in place of the answer: the provider's error,
            # not "malformed message" (its message and status lost), as for a stream.
            answer = _json_error(provider, [body])
            raise e if answer is None else _with_signals(answer, resp) from None
        if isinstance(result, bytes):  # the pass-through's body
            parsed = _parse_body(result)
            record.usage = parsed.get("usage")
            record.finish_reason = _finish_reason(parsed)
            if record.capture:  # captured under our id, as a stream's (TeeSink)
                # (a completion without an id gets ours too: stored without one, it was lost)
                if parsed.get("id") or isinstance(parsed.get("choices"), list):
                    parsed = {**parsed, "id": completion_id}
                    try:
                        result = orjson.dumps(parsed)
                    except TypeError:  # nested past orjson's 254 levels (it reads 1024): no
                        return result  # row could hold it, and `store` must not make a 500
                record.response = parsed
            return result
        if record.capture:
            record.response = result
        record.usage = result.get("usage")
        if record.usage is None:  # (the log keeps null: the provider reported none)
            result["usage"] = no_usage()  # OpenAI's answer always has it
        record.finish_reason = _finish_reason(result)
        return orjson.dumps(result)


class _StreamParts:
    """A stream's encoder and translator: nothing in them depends on the response."""

    __slots__ = ("_record", "_req", "_sink", "_target", "built")

    def __init__(self, req: ChatRequest, target: Target, record: RequestRecord) -> None:
        self._req, self._target, self._record = req, target, record
        self._sink: Any = None
        self.built: tuple[ChunkEncoder, StreamTranslator] | None = None

    def build(self) -> None:
        if self.built is not None:
            return
        req, provider, record = as_sent(self._req, self._target), self._target.provider, \
            self._record
        record.created = created = int(time.time())
        encoder = (RecordingChunkEncoder if record.capture else ChunkEncoder)(
            completion_id=record.completion_id or new_completion_id(),
            created=created,
            model=_envelope_model(self._target),
            include_usage=req.include_usage and not provider.passthrough,
        )
        sink: Any = encoder
        if record.capture:
            record.builder = CompletionBuilder()
            sink = TeeSink(encoder, record.builder)
        self._sink = sink
        self.built = encoder, provider.stream_translator(req, sink)

    def note_usage(self) -> None:
        """An attempt that failed before the commit point (its first read held the error):
        the record's usage is what its provider had reported (typically the prompt's tokens),
        or none — never an earlier attempt's."""
        if self.built is None:
            self._record.usage, self._record.usage_partial = None, False
        else:
            encoder, translator = self.built
            self._record.note_usage(encoder.usage_data, translator)

    def retranslate(self) -> StreamTranslator:
        """A new translator for the same encoder (and tee), in place of the built one."""
        assert self.built is not None
        encoder = self.built[0]
        translator = self._target.provider.stream_translator(
            as_sent(self._req, self._target), self._sink)
        self.built = encoder, translator
        return translator

    def take(self) -> tuple[ChunkEncoder, StreamTranslator]:
        """The parts, built now if the loop has not run `build` yet (the send did not wait)."""
        self.build()
        assert self.built is not None
        return self.built


def _longest_tries(attempt: Attempt) -> float:
    """The longest a target's tries may take before their outcome is known (how long a
    half-open breaker's trial is held): its total, else each try's connect and first-token
    (for a non-streamed answer, whole-answer) timeouts and the longest waits between them."""
    t, retries = attempt.target.timeouts, attempt.retry.attempts
    if t.total is not None:
        return t.total
    first = t.first_token if t.request is None else min(t.first_token, t.request)
    return (retries + 1) * (t.connect + first) + min(retries * RETRY_AFTER_CAP,
                                                     RETRY_WAIT_BUDGET)


def _after_total(first_try: float | None, total: float | None, delay: float) -> bool:
    """Would a retry `delay` seconds from now start once the target's total has run out?"""
    if first_try is None or total is None:
        return False
    return asyncio.get_running_loop().time() + delay >= first_try + total


def _json_error(provider: Provider, reads: list[bytes]) -> UpstreamStatusError | None:
    """The provider's error when a stream request was answered 200 with one JSON error object
    instead of events (as some OpenAI-compatible servers and relays answer): read as the same
    body answering a non-streamed request is, not reported as a stream cut short (its message
    and code lost). None for any other body: an event stream begins with a field or a
    comment, never `{`."""
    body = b"".join(reads).strip()
    if body[:1] not in (b"{", b"["):
        return None
    try:
        obj = loads_lenient(body)  # (as the error parses)
    except orjson.JSONDecodeError:
        return None
    if isinstance(obj, list) and obj:  # (Gemini wraps its error in an array)
        obj = obj[0]
    if not isinstance(obj, dict) or ("error" not in obj and obj.get("object") != "error"
                                     and not _bare_error(obj)):
        # (`object: "error"`: vLLM's and Mistral's error object itself, with its `param`)
        return None
    return provider.answered_error(body)


def _bare_error(obj: dict[str, Any]) -> bool:
    """`{"message": "..."}` and nothing but an error's fields: Bedrock's errors, and bare ones
    (not an answer or a stream's line that has a `message`: Cohere's, Ollama's)."""
    return isinstance(obj.get("message"), str) and obj.keys() <= _BARE_ERROR_FIELDS


_BARE_ERROR_FIELDS = frozenset(("message", "__type", "code", "type"))


async def _json_error_body(provider: Provider, reads: list[bytes], kept: int,
                           read: Any) -> UpstreamStatusError | None:
    """`_json_error` for a body whose framing failed before it ended (a binary event stream
    reads a JSON object's first bytes as a length): the rest of the body is read, up to the
    event cap, when it begins as JSON — never for an event stream, whose prelude's first byte
    is never `{` or `[` (a length over 2 GB)."""
    if b"".join(reads).lstrip()[:1] not in (b"{", b"["):
        return None
    cap = provider.max_event_bytes
    while kept <= cap and (data := await read()):
        reads.append(data)
        kept += len(data)
    return _json_error(provider, reads) if kept <= cap else None


def _envelope_model(target: Target) -> str:
    """The `model` an answer carries when the upstream names none: the target's, else the
    provider's default — the same for a stream and a non-streamed answer (never the
    client's prefixed `provider/model`, nor empty when the default model was used)."""
    return target.model or target.provider.cfg.default_model or ""


def _redirect_error(resp: aiohttp.ClientResponse, provider: str) -> UpstreamStatusError:
    """A 3xx is not an answer: redirects are not followed (the request carries the provider
    key), so one means the base URL is off (`http://` for `https://`, a moved host). Read as
    a stream it would pass for one cut short. Only the target's origin is shown: a Location
    may carry a token in its path or query."""
    try:
        location = URL(resp.headers.get("location") or "")
        where = f" to {location.origin()}" if location.is_absolute() else ""
    except ValueError:  # an upstream's malformed Location (a bad port, IPv6 literal): unnamed
        where = ""
    err = UpstreamStatusError(
        502, f"provider '{provider}' answered HTTP {resp.status}, a redirect{where}, which is "
        "not followed: check the provider's base_url", provider=provider,
        code="upstream_redirect")
    err.should_retry = False  # (every try is redirected alike, until the config changes)
    return err


async def _read_body(resp: aiohttp.ClientResponse, limit: int, *, cut: bool = False,
                     parts: list[bytes] | None = None) -> bytes:
    """A whole upstream body, held to `server.max_event_bytes` as a stream's events are: an
    answer over it is refused (BufferOverflow), an error body (`cut`) is cut there — only its
    status and message are read. `parts`: where the reads go (what came, if it is cut short)."""
    if parts is None:
        parts = []
    size = 0
    while data := await resp.content.readany():
        size += len(data)
        if size > limit:
            if not cut:
                raise BufferOverflow(f"the provider's answer exceeded {limit} bytes")
            parts.append(data[:len(data) - (size - limit)])
            break
        parts.append(data)
    return b"".join(parts)


def _parse_body(body: bytes) -> dict[str, Any]:
    try:
        obj = loads_lenient(body)
    except orjson.JSONDecodeError:
        raise UpstreamStatusError(502, "the provider answered with a body that is not JSON",
                                  code="upstream_protocol_error") from None
    return obj if isinstance(obj, dict) else {}


def _finish_reason(answer: dict[str, Any]) -> str | None:
    """The first choice's finish reason, for the log; read defensively, since a
    pass-through body is the upstream's (its `choices` may be missing or odd)."""
    choices = answer.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    reason = first.get("finish_reason") if isinstance(first, dict) else None
    return reason if isinstance(reason, str) else None


def _failure(exc: BaseException, deadline: Deadline, resp: aiohttp.ClientResponse | None,
             provider: str) -> BaseException:
    """An attempt failed before the commit point: release it, and say what to raise — our
    timeout when the cancel was our deadline's, our error tree for aiohttp's errors."""
    deadline.cancel()
    if resp is not None:
        resp.close()
    if isinstance(exc, asyncio.CancelledError):
        return deadline.expired if deadline.owns() and deadline.expired else exc
    if resp is not None and isinstance(exc, UpstreamStatusError):
        return _with_signals(exc, resp)  # a 200's error (event): its head's retry signals
    if isinstance(exc, Exception):
        return map_client_error(exc, provider, before_response=resp is None)
    return exc
