"""OpenAI-compatible providers by name (`type: groq`, `mistral`, …): the pass-through path with
a default base URL, and each provider's known quirks (provider-streams.md §8) normalised where
they would break an OpenAI client.

Stream quirks, handled by `CompatTranslator` (on the few chunks the pass-through parses anyway —
usage, finish and error chunks; every other chunk is still forwarded byte for byte):
- usage riding on a content/finish chunk (xAI sends it on the second-to-last chunk, then an
  empty-choices chunk; Mistral on the finish chunk) or only in Groq's `x_groq.usage` or in
  Moonshot's finish choice (`choices[0].usage`, MoonshotTranslator): the counts
  are taken for logs and, when the client asked for usage, sent as OpenAI's own usage chunk
  (`choices: []`) just before `[DONE]` — unless the upstream sent one itself, so usage is never
  duplicated. Usage on a chunk with choices is removed from it (a client summing would count
  it twice); a trailing empty-choices chunk without usage is dropped by the pass-through, and
  so is a chunk that, once the answer has finished, held nothing but usage (OpenRouter's, whose
  choice carries only the role it repeats on every chunk, or the finish repeated). A client that
  asked for usage on every chunk (`stream_options.continuous_usage_stats`, vLLM's and SGLang's)
  has each chunk's left on it, and the last one counted.
- OpenRouter's and Together's deltas all carry `"role": "assistant"`: kept on the first only
  (RoleOnceTranslator), as OpenAI sends it.
- finish reasons outside OpenAI's set are mapped (`eos` → stop, `model_length` → length);
  those that mean the answer failed (`error`, DeepSeek's `insufficient_system_resource`) end
  the stream with an OpenAI error frame instead of a finish that looks complete.
- OpenRouter's `: OPENROUTER PROCESSING` keep-alives are SSE comments (the decoder skips them);
  its mid-stream `data: {"error": …}` becomes an error frame (the pass-through does that), and
  so does a choice's own `error` beside its finish `error` (`failed_finish`).
- Groq's `x_groq.error` (it stopped the stream early, then ends it as if complete) becomes an
  error frame (GroqTranslator).
- vLLM's usage chunk with `choices: null` is forwarded with `choices: []` (the pass-through).
- xAI's usage leaves reasoning tokens out of `completion_tokens`: they are added in
  (`count_reasoning_as_completion`), streamed or not.
- Moonshot's and DeepSeek's usage count the prompt's cache hits at its top (`cached_tokens`,
  `prompt_cache_hit_tokens`): they also go in `prompt_tokens_details.cached_tokens`
  (`nest_cached_tokens`), streamed or not.

Request quirks: Mistral (see MistralProvider: names, roles, tool-call ids). Mistral's reasoning
models also stream `delta.content` as a list of typed chunks, which becomes OpenAI's string, and
a tool call's later fragments can carry a placeholder id, which is dropped (MistralTranslator).
"""

from __future__ import annotations

import hashlib
import re
import string
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from streamproxy._json import loads_lenient
from streamproxy.config import ConfigError
from streamproxy.decode.sse import SSEEvent
from streamproxy.errors import InvalidRequest, UpstreamStatusError
from streamproxy.openai_api.chunks import ChunkSink
from streamproxy.openai_api.content import reasoning_effort, replayed_reasoning, with_call_ids
from streamproxy.providers.openai_compat import (
    INTERESTING,
    OpenAIProvider,
    PassthroughTranslator,
    choice_number,
    error_answer,
    error_object,
    load_chunk,
)

if TYPE_CHECKING:
    from streamproxy.openai_api.request import ChatRequest

# The keys of the upstream's chunk not copied onto a usage chunk we build from its usage: every
# other (id, model, system_fingerprint, service_tier, OpenRouter's `provider`…) is the stream's,
# on each of its chunks, as on OpenAI's usage chunk; a client reads them from the last.
_NOT_ENVELOPE = frozenset(("choices", "usage"))


def failed_finish(status: int, reason: str, provider: str,
                  error: Any = None) -> UpstreamStatusError:
    """A finish reason that means the answer failed, as the error the client gets (an error
    frame in a stream; the HTTP error of a non-streamed answer). The choice's own `error`
    (OpenRouter's schema gives a choice one), when it has one, is that error: its message,
    status and metadata say what failed, where the finish reason says only that it did."""
    if isinstance(error, dict):
        return error_object(error, provider, status)
    return UpstreamStatusError(status, f"the provider ended the answer with finish_reason "
                               f"'{reason}'", provider=provider, code=reason)


class CompatTranslator(PassthroughTranslator):
    def __init__(self, out: ChunkSink, max_event_bytes: int, *, finish_reasons: dict[str, str],
                 failed_finishes: dict[str, int], reasoning_beside_completion: bool = False,
                 running_usage: bool = False, top_cached_tokens: str | None = None,
                 **passthrough: Any) -> None:
        super().__init__(out, max_event_bytes, **passthrough)
        self._finish_reasons = finish_reasons
        self._failed = failed_finishes
        self._count_reasoning = reasoning_beside_completion  # see count_reasoning_as_completion
        self._top_cached = top_cached_tokens  # see nest_cached_tokens
        # The client asked for the running usage on every chunk (vLLM's and SGLang's
        # `stream_options.continuous_usage_stats`): a chunk's usage stays on it.
        self._running_usage = running_usage
        self._moved_usage: dict[str, Any] | None = None  # counts taken off a choices chunk
        self._usage_chunk_seen = False  # the upstream sent a proper usage chunk
        self._envelope: dict[str, Any] = {}

    def on_chunk(self, chunk: dict[str, Any], data: bytes) -> None:
        choices = chunk.get("choices")
        if chunk.get("error") or not choices or not isinstance(choices[0], dict):
            if chunk.get("usage") and not chunk.get("error"):
                self._usage_chunk_seen = True
                if self._openai_usage(chunk["usage"]):
                    data = orjson.dumps(chunk)
            super().on_chunk(chunk, data)
            return
        changed = self._take_usage(chunk)
        if changed and len(self._finished) >= self._choices and all(map(_says_nothing, choices)):
            # OpenRouter's usage chunk: after the finish, a choice with nothing in it (or only
            # the finish repeated). Without its usage it would be a delta after the finish
            # chunk, or a second finish, which OpenAI never sends.
            return
        for choice in choices:  # (with `n`, a server may finish several choices in one chunk)
            reason = choice.get("finish_reason") if isinstance(choice, dict) else None
            if not isinstance(reason, str):
                continue
            if reason in self._failed:
                self.out.error(failed_finish(self._failed[reason], reason, self._provider,
                                             choice.get("error")))
                self._note_finishes(choices)  # (the usage beside a failed finish is final)
                self.done = True
                return
            if reason in self._finish_reasons:
                choice["finish_reason"] = self._finish_reasons[reason]
                changed = True
        super().on_chunk(chunk, orjson.dumps(chunk) if changed else data)

    def _take_usage(self, chunk: dict[str, Any]) -> bool:
        """Keep usage found on a chunk with choices; True if the chunk changed: its usage was
        removed, or (the running usage the client asked for, left on it) made OpenAI's."""
        usage = chunk.get("usage")
        kept = bool(usage) and self._running_usage
        changed = bool(usage) and not kept
        if changed:
            del chunk["usage"]
        elif not usage:
            x_groq = chunk.get("x_groq")
            usage = x_groq.get("usage") if isinstance(x_groq, dict) else None
        if usage:
            changed = (self._openai_usage(usage) and kept) or changed
            self._moved_usage = usage
            self._envelope = {k: v for k, v in chunk.items() if k not in _NOT_ENVELOPE}
            self.out.usage(usage)
            self._usage_reported = True
        return changed

    def _openai_usage(self, usage: Any) -> bool:
        """Give usage a provider counts otherwise OpenAI's counts, in place; True when it
        changed. Only usage goes through here: a chunk or two a stream."""
        nested = self._top_cached is not None and nest_cached_tokens(usage, self._top_cached)
        return (self._count_reasoning and count_reasoning_as_completion(usage)) or nested

    def on_done(self) -> None:
        if self._moved_usage and self._forward_usage and not self._usage_chunk_seen:
            usage_chunk = {**self._envelope, "choices": [], "usage": self._moved_usage}
            usage_chunk["object"] = "chat.completion.chunk"
            self.out.raw(orjson.dumps(usage_chunk))
        super().on_done()


# The role as OpenRouter and Together repeat it on every delta (with a key after it), compact.
_REPEATED_ROLE = b'"role":"assistant",'


class RoleOnceTranslator(CompatTranslator):
    """For upstreams whose deltas all carry `"role": "assistant"`, where OpenAI's first alone
    does: the openai SDK's stream helper joins deltas' strings, the role among them, into
    `assistantassistant…` (its final message, appended to the next request, is refused). The
    role stays on the first event that has it and is cut from every later one — in place, as
    bytes (one C-level replace per run or decoded event, only for these types). A JSON string
    holds its quotes escaped, so the bytes are never a string's content. Not with `n` > 1,
    where each choice has a first delta."""

    def __init__(self, out: ChunkSink, max_event_bytes: int, **options: Any) -> None:
        super().__init__(out, max_event_bytes, **options)
        self._role_kept = False  # the first event with the role has gone
        self._cut = self._choices == 1
        self._forward_run = self._raw_run
        if self._raw_run is not None and self._cut:
            self._raw_run = self._run_without_role

    def _without_role(self, data: bytes) -> bytes:
        if self._role_kept:
            return data.replace(_REPEATED_ROLE, b"")
        first = data.find(_REPEATED_ROLE)
        if first < 0:
            return data
        self._role_kept = True
        first += len(_REPEATED_ROLE)
        return data[:first] + data[first:].replace(_REPEATED_ROLE, b"")

    def _run_without_role(self, run: bytes, events: int) -> None:
        self._forward_run(self._without_role(run), events)  # type: ignore[misc]

    def on_event(self, event: SSEEvent) -> None:
        data = self._without_role(event.data) if self._cut else event.data
        super().on_event(event if data is event.data else event._replace(data=data))


def count_reasoning_as_completion(usage: Any) -> bool:
    """Usage whose reasoning tokens are counted beside `completion_tokens` (in `total_tokens`
    only: xAI's) gets OpenAI's count, which includes them; True when it changed. Only when the
    sum shows they are left out, so a count already OpenAI's is left alone."""
    if not isinstance(usage, dict):
        return False
    details = usage.get("completion_tokens_details")
    reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else None
    counts = (usage.get("prompt_tokens"), usage.get("completion_tokens"),
              usage.get("total_tokens"), reasoning)
    if not reasoning or not all(type(n) is int for n in counts):
        return False
    prompt, completion, total, _ = counts
    if prompt + completion + reasoning != total:
        return False
    usage["completion_tokens"] = completion + reasoning
    return True


def nest_cached_tokens(usage: Any, key: str) -> bool:
    """Usage that counts the prompt's cache hits at its top under `key` (Moonshot's
    `cached_tokens`, DeepSeek's `prompt_cache_hit_tokens`, within `prompt_tokens`) gets them
    where OpenAI's clients read them too, `prompt_tokens_details.cached_tokens`; True when it
    changed. A count already there wins."""
    if not isinstance(usage, dict):
        return False
    cached, details = usage.get(key), usage.get("prompt_tokens_details")
    if type(cached) is not int or (isinstance(details, dict) and "cached_tokens" in details):
        return False
    usage["prompt_tokens_details"] = {**(details if isinstance(details, dict) else {}),
                                      "cached_tokens": cached}
    return True


_REPEATED = ("index", "delta", "finish_reason", "native_finish_reason")


def _says_nothing(choice: Any) -> bool:
    """A choice, after every choice has finished, with no content or logprobs: its delta is
    empty but for a role, which OpenRouter repeats on every chunk, and its finish reason, if
    any, a repeat."""
    if not isinstance(choice, dict) or not isinstance(choice.get("delta", {}), dict):
        return False
    return (not any(v for k, v in choice.items() if k not in _REPEATED)
            and not any(v for k, v in choice.get("delta", {}).items() if k != "role"))


_NONE: frozenset[str] = frozenset()
# The reasoning of a tool-call turn that came back with none: DeepSeek refuses "" as missing.
NO_REASONING = " "


def _renamed(body: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """`body` with each parameter in `names` under the upstream's name; a value given wins over
    one the body already has under that name (`max_completion_tokens` is OpenAI's current name,
    `max_tokens` its deprecated one), a null is dropped."""
    out = dict(body)
    for ours, theirs in names.items():
        value = out.pop(ours, None)
        if value is not None:
            out[theirs] = value
    return out


def _is_zero(value: Any) -> bool:
    return value is None or (type(value) in (int, float) and value == 0)


class CompatProvider(OpenAIProvider):
    """Base of the presets: OpenAI's wire format under another name and URL. The request goes as
    the client wrote it but for what the upstream refuses with a 400 or ignores: the parameters
    in `dropped_params`, those in `renamed_params` (sent under the upstream's name), those in
    `unsent_when_zero` at 0, the message
    keys in `refused_message_keys`, and the `developer` role where `developer_as_system` (the
    same instructions as a `system` message)."""

    option_keys: ClassVar[frozenset[str]] = frozenset()
    # Non-OpenAI finish reasons → OpenAI's; and those that mean failure → the error's status.
    finish_reasons: ClassVar[dict[str, str]] = {}
    failed_finishes: ClassVar[dict[str, int]] = {}
    # Message keys the upstream refuses, by role ("*": any role); removed before sending.
    refused_message_keys: ClassVar[dict[str, frozenset[str]]] = {}
    # OpenAI's parameter → the upstream's name for it (one the upstream would ignore otherwise).
    renamed_params: ClassVar[dict[str, str]] = {}
    # Parameters not sent when 0 or null (no effect), for upstreams that refuse them on some
    # models whatever the value, while clients send the 0 by default.
    unsent_when_zero: ClassVar[frozenset[str]] = frozenset()
    developer_as_system: ClassVar[bool] = False
    # Thinking mode refuses an assistant turn with tool calls sent back without its
    # `reasoning_content` (DeepSeek's, Moonshot's): see `_adapt_message`.
    tool_turns_carry_reasoning: ClassVar[bool] = False
    # Usage counts reasoning tokens beside completion_tokens (count_reasoning_as_completion).
    reasoning_beside_completion: ClassVar[bool] = False
    # The key at usage's top under which the upstream counts the prompt's cache hits, which
    # OpenAI nests (nest_cached_tokens); None: OpenAI's place.
    top_cached_tokens: ClassVar[str | None] = None
    translator_type = CompatTranslator

    def adapt_body(self, body: dict[str, Any], model: str = "") -> dict[str, Any]:
        """`body` itself when nothing is refused (so the client's bytes go as they are)."""
        out = body
        if not self.dropped_params.isdisjoint(body):
            out = {k: v for k, v in body.items() if k not in self.dropped_params}
        if not self.renamed_params.keys().isdisjoint(out):
            out = _renamed(out, self.renamed_params)
        if any(k in out and _is_zero(out[k]) for k in self.unsent_when_zero):
            out = {k: v for k, v in out.items() if k not in self.unsent_when_zero
                   or not _is_zero(v)}
        refused = self.refused_keys(model)
        if refused or self.developer_as_system or self.tool_turns_carry_reasoning:
            messages = body["messages"]
            adapted = [self._adapt_message(m, refused) for m in messages]
            if any(a is not m for a, m in zip(adapted, messages, strict=True)):
                out = {**out, "messages": adapted}
        return out

    def refused_keys(self, model: str) -> dict[str, frozenset[str]]:
        """The message keys `model` refuses, by role (a preset whose models differ says so)."""
        return self.refused_message_keys

    def _adapt_message(self, message: dict[str, Any],
                       refused: dict[str, frozenset[str]]) -> dict[str, Any]:
        role = message["role"]
        for_any = refused.get("*", _NONE)
        for_role = refused.get(role, _NONE)
        to_system = role == "developer" and self.developer_as_system
        out = message
        if to_system or not (for_any.isdisjoint(message) and for_role.isdisjoint(message)):
            out = {k: v for k, v in message.items() if k not in for_any and k not in for_role}
            if to_system:
                out["role"] = "system"
        if self.tool_turns_carry_reasoning and role == "assistant" and message.get("tool_calls"):
            reasoning = message.get("reasoning_content")
            if not (isinstance(reasoning, str) and reasoning):
                return {**out, "reasoning_content": replayed_reasoning(message) or NO_REASONING}
        return out

    def translator_options(self, req: ChatRequest) -> dict[str, Any]:
        stream_options = req.body.get("stream_options")
        return {**super().translator_options(req), "finish_reasons": self.finish_reasons,
                "failed_finishes": self.failed_finishes,
                "reasoning_beside_completion": self.reasoning_beside_completion,
                "top_cached_tokens": self.top_cached_tokens,
                "running_usage": req.include_usage and isinstance(stream_options, dict)
                and stream_options.get("continuous_usage_stats") is True}

    def translate_response(self, body: bytes, req: ChatRequest, *, completion_id: str,
                           created: int, model: str = "") -> bytes:
        """A non-streamed answer gets its stream's finish-reason handling: mapped, or an
        error when the reason means the answer failed (before anything reached the client,
        so retries and fallbacks apply); and its usage its stream's."""
        body = super().translate_response(body, req, completion_id=completion_id,
                                          created=created, model=model)
        finishes = bool(self.finish_reasons or self.failed_finishes) and b"finish_reason" in body
        usage = self.reasoning_beside_completion and b'"reasoning_tokens"' in body
        cached = self.top_cached_tokens
        if cached is not None and f'"{cached}"'.encode() not in body:
            cached = None
        if not (finishes or usage or cached):
            return body
        try:  # (lenient: refused, a Node server's answer cut inside an emoji went unmapped)
            answer = loads_lenient(body)
        except orjson.JSONDecodeError:
            return body  # the executor's parse reports it
        changed = self._map_finishes(answer)
        if usage and isinstance(answer, dict):
            changed = count_reasoning_as_completion(answer.get("usage")) or changed
        if cached and isinstance(answer, dict):
            changed = nest_cached_tokens(answer.get("usage"), cached) or changed
        return orjson.dumps(answer) if changed else body

    def _map_finishes(self, answer: Any) -> bool:
        changed = False
        choices = answer.get("choices") if isinstance(answer, dict) else None
        for choice in choices if isinstance(choices, list) else ():
            reason = choice.get("finish_reason") if isinstance(choice, dict) else None
            if not isinstance(reason, str):
                continue
            if reason in self.failed_finishes:
                raise failed_finish(self.failed_finishes[reason], reason, self.name,
                                    choice.get("error")).with_usage(answer.get("usage"))
            if reason in self.finish_reasons:
                choice["finish_reason"] = self.finish_reasons[reason]
                changed = True
        return changed


class GroqTranslator(CompatTranslator):
    """Groq says why it stopped a stream early in the chunk's `x_groq.error` (its API's
    chunk schema: "An error string indicating why a stream was stopped early") and then ends
    the stream as a complete one: the client took the cut answer for a whole one. That chunk
    becomes the error frame; it is parsed anyway (its `"error"` key is one the pass-through
    looks for), so no other chunk costs more."""

    def on_chunk(self, chunk: dict[str, Any], data: bytes) -> None:
        x_groq = chunk.get("x_groq")
        error = x_groq.get("error") if isinstance(x_groq, dict) else None
        if error and not chunk.get("error"):
            chunk["error"] = error
        super().on_chunk(chunk, data)


# Groq's reasoning models (console.groq.com/docs/reasoning): gpt-oss, Qwen 3 and the retired
# QwQ and DeepSeek R1 distill; any other model refuses an assistant `reasoning`.
_GROQ_REASONING = re.compile(r"gpt-oss|qwen3|qwq|deepseek-r1", re.IGNORECASE)
# OpenAI's reasoning_effort → the values Groq's reasoning models take (its reasoning docs):
# Qwen 3's two, "none" or "default" (a level is a 400: "`reasoning_effort` must be one of
# `none` or `default`"), thinking on for any level; gpt-oss's three, low to high, the nearest
# (as on Ollama: gpt-oss cannot stop reasoning). Another value (Groq's own "default") goes
# as it is, and Groq's 400 names it.
_GROQ_EFFORTS = (
    (re.compile(r"qwen3|qwq", re.IGNORECASE),
     {"none": "none", **dict.fromkeys(("minimal", "low", "medium", "high", "xhigh", "max"),
                                      "default")}),
    (re.compile(r"gpt-oss", re.IGNORECASE),
     {"none": "low", "minimal": "low", "xhigh": "high", "max": "high"}),
)


class GroqProvider(CompatProvider):
    """Groq answers a 400 to `logprobs`, `logit_bias`, `top_logprobs` and `messages[].name`
    (console.groq.com/docs/openai, "Currently Unsupported OpenAI Features"), and to any message
    key it does not know — among them, in an assistant turn sent back, the `reasoning_content`
    DeepSeek's clients and our own translated streams carry, the `thinking_blocks` and
    `images` of our translated answers (Claude's and Gemini's thinking, Gemini's pictures),
    and the answer-only fields of OpenAI's message that the openai SDK echoes when a client
    appends the answer's message (`refusal`, `annotations`, `audio`: "property 'annotations'
    is unsupported"; `parsed` from its parse() and stream() helpers), and OpenRouter's
    `reasoning_details`. Its own `reasoning` (its answers'
    name for the thinking) it takes back on its reasoning models alone: the others answer it
    with "reasoning is not supported with this model" (vercel/ai#8057); those models get the
    thinking sent under another name as `reasoning`."""

    type_name: ClassVar[str] = "groq"
    default_base_url: ClassVar[str | None] = "https://api.groq.com/openai/v1"
    translator_type = GroqTranslator
    dropped_params: ClassVar[frozenset[str]] = frozenset({"logprobs", "logit_bias",
                                                          "top_logprobs"})
    refused_message_keys: ClassVar[dict[str, frozenset[str]]] = {
        "*": frozenset({"name"}),
        "assistant": frozenset({"reasoning_content", "reasoning_details", "thinking_blocks",
                                "images", "refusal", "annotations", "audio", "parsed"})}
    _without_reasoning: ClassVar[dict[str, frozenset[str]]] = {
        **refused_message_keys,
        "assistant": refused_message_keys["assistant"] | {"reasoning"}}

    def refused_keys(self, model: str) -> dict[str, frozenset[str]]:
        if _GROQ_REASONING.search(model) is not None:
            return self.refused_message_keys
        return self._without_reasoning

    def adapt_body(self, body: dict[str, Any], model: str = "") -> dict[str, Any]:
        """A reasoning model also gets, as its `reasoning`, the thinking a turn carries under
        another name (`reasoning_content`, `reasoning_details`: dropped, each a 400 here), so a
        gpt-oss tool loop begun elsewhere keeps it; and a reasoning_effort it takes
        (_GROQ_EFFORTS)."""
        out = super().adapt_body(body, model)
        effort = body.get("reasoning_effort")
        if isinstance(effort, str):
            for family, efforts in _GROQ_EFFORTS:
                if family.search(model) is not None and efforts.get(effort, effort) != effort:
                    out = {**out, "reasoning_effort": efforts[effort]}
                    break
        if out is body or _GROQ_REASONING.search(model) is None:
            return out  # (unchanged: no such key was dropped)
        messages = list(out["messages"])
        for i, (sent, m) in enumerate(zip(messages, body["messages"], strict=True)):
            if sent is not m and m["role"] == "assistant" and not sent.get("reasoning"):
                reasoning = replayed_reasoning(m)
                if reasoning:
                    messages[i] = {**sent, "reasoning": reasoning}
        return {**out, "messages": messages}



# The keys Mistral's message schemas take; anything else (an echoed `refusal: null`, a user
# `name`, `reasoning_content`) is a 422 there.
_MISTRAL_MESSAGE_KEYS = {
    "system": ("content",),
    "user": ("content",),
    "assistant": ("content", "tool_calls", "prefix"),
    "tool": ("content", "tool_call_id", "name"),
}


def _mistral_message(m: dict[str, Any]) -> dict[str, Any]:
    role = "system" if m["role"] == "developer" else m["role"]
    keys = _MISTRAL_MESSAGE_KEYS.get(role)
    if keys is None:  # the legacy function role: Mistral's own error says why
        return m
    out = {"role": role}
    out.update((k, m[k]) for k in keys if k in m)
    if isinstance(out.get("tool_calls"), list):
        out["tool_calls"] = [_with_mistral_id(call) for call in out["tool_calls"]]
    if isinstance(out.get("tool_call_id"), str):
        out["tool_call_id"] = mistral_tool_call_id(out["tool_call_id"])
    return out


# The keys of Mistral's FunctionCall: the openai SDK's parse() and stream() helpers add
# `parsed_arguments` to a call they parsed, sent back with the message (a 422 there).
_MISTRAL_FUNCTION_KEYS = ("name", "arguments")


def _with_mistral_id(call: Any) -> Any:
    if not isinstance(call, dict):
        return call
    out = dict(call)
    function = call.get("function")
    if isinstance(function, dict) and not function.keys() <= set(_MISTRAL_FUNCTION_KEYS):
        out["function"] = {k: function[k] for k in _MISTRAL_FUNCTION_KEYS if k in function}
    if isinstance(call.get("id"), str):
        out["id"] = mistral_tool_call_id(call["id"])
    return out


_MISTRAL_ID = re.compile(r"[A-Za-z0-9]{9}")
_BASE62 = string.digits + string.ascii_letters


def mistral_tool_call_id(call_id: str) -> str:
    """Mistral takes only tool-call ids of 9 letters and digits (a 400 otherwise). Any other id
    (OpenAI's `call_…`, Anthropic's `toolu_…`, the `call_…` we make for Gemini and Ollama) becomes
    9 base-62 digits of its SHA-256: a call and its result map alike, in this request and in
    every later one of the conversation."""
    if _MISTRAL_ID.fullmatch(call_id):
        return call_id
    n = int.from_bytes(hashlib.sha256(call_id.encode()).digest()[:8], "big")
    digits = []
    for _ in range(9):
        n, d = divmod(n, 62)
        digits.append(_BASE62[d])
    return "".join(digits)


_LIST_CONTENT = re.compile(rb'"content": ?\[')


def flatten_mistral_content(message: dict[str, Any]) -> bool:
    """A message or delta whose `content` is Mistral's list of typed chunks (reasoning models:
    `{"type": "thinking", "thinking": [{"type": "text", "text": …}]}` and `{"type": "text",
    "text": …}`) gets OpenAI's shape: the text as the `content` string (None when there is
    none), the thinking as `reasoning_content`. Other chunk types (references) are dropped.
    True when it changed the message."""
    parts = message.get("content")
    if not isinstance(parts, list):
        return False
    texts: list[str] = []
    thoughts: list[str] = []
    for part in parts:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text":
            texts.append(str(part.get("text") or ""))
        elif part.get("type") == "thinking":
            thoughts.extend(str(inner.get("text") or "") for inner in part.get("thinking") or ()
                            if isinstance(inner, dict) and inner.get("type", "text") == "text")
    message["content"] = "".join(texts) if texts else None
    if thoughts:
        message["reasoning_content"] = "".join(thoughts)
    return True


def _flatten_choices(obj: dict[str, Any], field: str) -> bool:
    """`flatten_mistral_content` on each choice's `delta` / `message`; True if any changed."""
    changed = False
    for c in obj.get("choices") or ():
        if isinstance(c, dict) and isinstance(c.get(field), dict):
            message = c[field]
            if flatten_mistral_content(message):
                changed = True
                if field == "message" and message["content"] is None \
                        and not message.get("tool_calls"):
                    # A whole answer of thinking alone (cut by max_tokens): "", as its
                    # stream's role chunk gave and OpenAI's reasoning models answer; a
                    # delta's None is only "no text in this chunk".
                    message["content"] = ""
    return changed


class RepeatedCallTranslator(CompatTranslator):
    """For upstreams whose later fragments of a tool call carry its id (or a placeholder) and
    its function's name again, where OpenAI's carry only `index` and arguments: clients that
    accumulate a call join its strings (the openai SDK's stream helper: `abc123XYZnull`,
    `get_weatherget_weather`, no tool the client offered), so those repeats are dropped."""

    def __init__(self, out: ChunkSink, max_event_bytes: int, **options: Any) -> None:
        super().__init__(out, max_event_bytes, **options)
        # (choice, call index) → the call's first id and function name
        self._calls: dict[tuple[int, int], tuple[Any, Any]] = {}

    def _index_tool_calls(self, choices: list[Any]) -> bool:
        changed = super()._index_tool_calls(choices)
        for choice in choices:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            calls = delta.get("tool_calls") if isinstance(delta, dict) else None
            for call in calls if isinstance(calls, list) else ():
                index = call.get("index") if isinstance(call, dict) else None
                if not isinstance(index, int):
                    continue
                key = (choice_number(choice), index)
                function = call.get("function")
                name = function.get("name") if isinstance(function, dict) else None
                if key not in self._calls:
                    self._calls[key] = (call.get("id"), name)
                    continue
                first_id, first_name = self._calls[key]
                if "id" in call and call["id"] in ("null", None, first_id):
                    del call["id"]
                    changed = True
                if name is not None and name in ("", first_name):
                    del function["name"]
                    changed = True
        return changed


class MistralTranslator(RepeatedCallTranslator):
    """Only events whose content is a list are parsed for it (a byte search first). A call's
    later fragments can carry `"id": "null"` or its id again (mistral-vibe's recorded stream);
    Mistral puts `index` last in a call, so with tools offered these chunks are parsed
    anyway."""

    run_stop = re.compile(INTERESTING.pattern + b"|" + _LIST_CONTENT.pattern)

    def on_event(self, event: SSEEvent) -> None:
        data = event.data
        if _LIST_CONTENT.search(data) is None:
            super().on_event(event)
            return
        chunk = load_chunk(data)
        changed = _flatten_choices(chunk, "delta") or 0x0A in data
        self.on_chunk(chunk, orjson.dumps(chunk) if changed else data)


# OpenAI's reasoning_effort → the two Mistral takes (its reasoning docs and API schema: "none",
# which still thinks minimally, and "high"; another is its 422): the nearest, thinking on for
# any level above minimal.
MISTRAL_EFFORTS = {"none": "none", "minimal": "none", "low": "high", "medium": "high",
                   "high": "high", "xhigh": "high", "max": "high"}


class MistralProvider(CompatProvider):
    """Mistral validates strictly (unknown fields are a 422) and differs from OpenAI in names:
    `stream_options` is not accepted (usage comes anyway, on the finish chunk), max tokens is
    `max_tokens` only, `seed` is `random_seed`, there is no `developer` role (→ system),
    tool_choice "required" is "any" and a named tool_choice does not exist (→ "any" with only
    the named tool sent, which forces exactly that call). Tool-call ids that are not Mistral's
    9 letters and digits are mapped to such ids (`mistral_tool_call_id`). Message keys Mistral
    does not know and the parameters in `dropped_params` are dropped; `reasoning_effort` goes as
    the one of Mistral's two values nearest (MISTRAL_EFFORTS; Mistral Small 4 and Medium 3.5
    take it), and the thinking its answers then carry becomes `reasoning_content`, streamed or
    not."""

    type_name: ClassVar[str] = "mistral"
    default_base_url: ClassVar[str | None] = "https://api.mistral.ai/v1"
    custom_tools = False  # its tool_choice is rewritten from the function tools
    asks_stream_usage: ClassVar[bool] = False
    translator_type = MistralTranslator
    finish_reasons: ClassVar[dict[str, str]] = {"model_length": "length"}
    failed_finishes: ClassVar[dict[str, int]] = {"error": 502}
    dropped_params: ClassVar[frozenset[str]] = frozenset({
        "stream_options", "logit_bias", "logprobs", "top_logprobs", "user", "store",
        "metadata", "modalities", "audio", "service_tier", "web_search_options", "functions",
        "function_call", "verbosity", "safety_identifier", "prompt_cache_key",
        "prompt_cache_retention",
    })

    def translate_response(self, body: bytes, req: ChatRequest, *, completion_id: str,
                           created: int, model: str = "") -> bytes:
        if _LIST_CONTENT.search(body) is None:
            return super().translate_response(body, req, completion_id=completion_id,
                                              created=created, model=model)
        # (an error object can quote a message's list content: its validation error's input)
        error = error_answer(body, self.name)
        if error is not None:
            raise error
        try:
            answer = loads_lenient(body)  # (as CompatProvider's)
        except orjson.JSONDecodeError:
            return body  # the executor's parse reports it
        changed = _flatten_choices(answer, "message")
        changed = self._map_finishes(answer) or changed
        return orjson.dumps(answer) if changed else body

    def adapt_body(self, body: dict[str, Any], model: str = "") -> dict[str, Any]:
        out = {k: v for k, v in body.items() if k not in self.dropped_params}
        # Calls replayed with `id: ""` get distinct ids first (their results pair with them):
        # each "" would map to one id, shared by a turn's calls.
        out["messages"] = [_mistral_message(m)
                           for m in with_call_ids(body["messages"], "call_")]
        if out.get("max_completion_tokens") is not None:
            out["max_tokens"] = out.pop("max_completion_tokens")
        out.pop("max_completion_tokens", None)
        # (`seed` is a 422 there whatever its value, a null too: it goes only as `random_seed`)
        seed = out.pop("seed", None)
        if seed is not None:
            out["random_seed"] = seed
        effort = reasoning_effort(body)  # (OpenAI's 400 for one it does not know, as elsewhere)
        if effort is not None:
            out["reasoning_effort"] = MISTRAL_EFFORTS[effort]
        choice = out.get("tool_choice")
        if choice == "required":
            out["tool_choice"] = "any"
        elif isinstance(choice, dict):
            name = choice["function"]["name"]
            tools = [t for t in out.get("tools") or [] if t["function"]["name"] == name]
            if not tools:
                raise InvalidRequest(f"tool_choice names '{name}', which is not in 'tools'.",
                                     param="tool_choice", code="invalid_value")
            out["tools"], out["tool_choice"] = tools, "any"
        return out



class DeepSeekProvider(CompatProvider):
    """`delta.reasoning_content` (reasoner models) passes through untouched. DeepSeek has no
    `developer` role ("messages[0].role: unknown variant `developer`", a 400), and knows the
    answer's cap only as `max_tokens`: `max_completion_tokens`, which the openai SDKs and most
    frameworks now send, is silently ignored (the answer runs to the server's default cap).
    In thinking mode (V4's default, deepseek-reasoner) an assistant turn with tool calls must
    come back with its `reasoning_content`, not empty ("Missing `reasoning_content` field in
    the assistant message", a 400): one without gets its reasoning under another provider's
    name (`replayed_reasoning`), else NO_REASONING — a loop begun elsewhere, or a client that
    keeps only content and calls, goes on (its guide: reasoning sent back where none is
    needed is ignored). Its usage counts the prompt's cache hits as `prompt_cache_hit_tokens`:
    they also go where OpenAI's are (`nest_cached_tokens`), streamed or not."""

    type_name: ClassVar[str] = "deepseek"
    default_base_url: ClassVar[str | None] = "https://api.deepseek.com"
    developer_as_system: ClassVar[bool] = True
    renamed_params: ClassVar[dict[str, str]] = {"max_completion_tokens": "max_tokens"}
    failed_finishes: ClassVar[dict[str, int]] = {"insufficient_system_resource": 503}
    tool_turns_carry_reasoning: ClassVar[bool] = True
    top_cached_tokens: ClassVar[str | None] = "prompt_cache_hit_tokens"


class MoonshotTranslator(CompatTranslator):
    def _take_usage(self, chunk: dict[str, Any]) -> bool:
        """Moonshot puts a stream's usage in the finish chunk's choice (`choices[0].usage`),
        where no OpenAI client looks: it is taken as usage on the chunk would be."""
        moved = False
        if not chunk.get("usage"):
            for choice in chunk["choices"]:
                if isinstance(choice, dict) and "usage" in choice:
                    usage, moved = choice.pop("usage"), True
                    if usage:
                        chunk["usage"] = usage
        return super()._take_usage(chunk) or moved


# Kimi models whose sampling is fixed (platform.kimi.ai "Model Parameter Reference": K2.5 and
# K2.6 — temperature, top_p, n and the penalties "cannot be modified"; the K2 and K2 thinking
# series and moonshot-v1 take them).
_KIMI_FIXED_SAMPLING = re.compile(r"kimi-k2\.[5-9]", re.IGNORECASE)
# OpenAI's defaults, which clients send when none is set: no change to the model's sampling.
_DEFAULT_SAMPLING = {"temperature": 1, "top_p": 1}


def _default_sampling(key: str, value: Any) -> bool:
    return key in _DEFAULT_SAMPLING and (value is None or (
        type(value) in (int, float) and value == _DEFAULT_SAMPLING[key]))


class MoonshotProvider(CompatProvider):
    """Moonshot's Kimi API (platform.kimi.ai; `https://api.moonshot.cn/v1` for a mainland-China
    key, as `base_url`). Its thinking models (kimi-k2-thinking, K2.5 on, thinking by default)
    have DeepSeek's rule: an assistant turn with tool calls must come back with its
    `reasoning_content` ("thinking is enabled but reasoning_content is missing in assistant
    tool call message at index N", a 400), so one without gets it as on DeepSeek. A stream's
    usage comes in the finish chunk's choice (MoonshotTranslator), and its cache hits at the
    usage's top (`cached_tokens`), where OpenAI's are nested: both places get them. K2.5 on fix
    their sampling (`adapt_body`)."""

    type_name: ClassVar[str] = "moonshot"
    default_base_url: ClassVar[str | None] = "https://api.moonshot.ai/v1"
    translator_type = MoonshotTranslator
    tool_turns_carry_reasoning: ClassVar[bool] = True
    top_cached_tokens: ClassVar[str | None] = "cached_tokens"

    def adapt_body(self, body: dict[str, Any], model: str = "") -> dict[str, Any]:
        """K2.5 on refuse any sampling but their own ("invalid top_p: only 0.95 is allowed for
        this model", a 400), OpenAI's default top_p of 1 and temperature of 1 too, which chat
        UIs send when none is set: those (and nulls) are not sent. Another value goes, and
        Moonshot's 400 names it, as xAI's does a penalty."""
        out = super().adapt_body(body, model)
        if (_KIMI_FIXED_SAMPLING.search(model) is not None
                and any(_default_sampling(k, out[k]) for k in _DEFAULT_SAMPLING if k in out)):
            out = {k: v for k, v in out.items() if not _default_sampling(k, v)}
        return out


class TogetherProvider(CompatProvider):
    type_name: ClassVar[str] = "together"
    translator_type = RoleOnceTranslator  # its deltas all carry the role
    default_base_url: ClassVar[str | None] = "https://api.together.xyz/v1"
    finish_reasons: ClassVar[dict[str, str]] = {"eos": "stop"}


class FireworksTranslator(RepeatedCallTranslator):
    """Fireworks repeats a call's id, type and name on every fragment (LiteLLM#8990,
    SillyTavern#5948): with tools offered, every tool-call delta is parsed (this pattern
    replaces the pass-through's, so the scan of other events costs no more)."""

    tool_call_stop = rb'"tool_calls": ?\[\{'


class FireworksProvider(CompatProvider):
    type_name: ClassVar[str] = "fireworks"
    translator_type = FireworksTranslator
    default_base_url: ClassVar[str | None] = "https://api.fireworks.ai/inference/v1"


class OpenRouterProvider(CompatProvider):
    type_name: ClassVar[str] = "openrouter"
    translator_type = RoleOnceTranslator  # its deltas all carry the role
    default_base_url: ClassVar[str | None] = "https://openrouter.ai/api/v1"
    failed_finishes: ClassVar[dict[str, int]] = {"error": 502}


class CerebrasProvider(CompatProvider):
    type_name: ClassVar[str] = "cerebras"
    default_base_url: ClassVar[str | None] = "https://api.cerebras.ai/v1"


class DeepInfraProvider(CompatProvider):
    type_name: ClassVar[str] = "deepinfra"
    default_base_url: ClassVar[str | None] = "https://api.deepinfra.com/v1/openai"


_NAME = frozenset({"name"})


class XAIProvider(CompatProvider):
    """xAI takes a `name` on user messages only ("Only messages of role 'user' can have a name.",
    a 400), so it is dropped from the others. Its usage counts a reasoning model's reasoning
    tokens beside `completion_tokens` ("counted separately from completion_tokens, but ... in
    the total_tokens"), where OpenAI's include them: they are added in. Its grok-4 models
    refuse the penalties even at 0 ("Model grok-4.5 does not support parameter
    presencePenalty."), which chat UIs send when none is set: a 0 is not sent (any other
    value is, and xAI's 400 names it)."""

    type_name: ClassVar[str] = "xai"
    default_base_url: ClassVar[str | None] = "https://api.x.ai/v1"
    unsent_when_zero: ClassVar[frozenset[str]] = frozenset({"presence_penalty",
                                                            "frequency_penalty"})
    reasoning_beside_completion: ClassVar[bool] = True
    refused_message_keys: ClassVar[dict[str, frozenset[str]]] = {
        role: _NAME for role in ("system", "developer", "assistant", "tool")}


class VLLMProvider(CompatProvider):
    """A self-hosted server: no default URL (`base_url` is required), the key is optional. A
    request the engine aborts (shutdown, scale-down, sleep) ends with finish `abort` and
    `[DONE]`, as if complete (vllm-project/vllm#57082): an error here."""

    type_name: ClassVar[str] = "vllm"
    failed_finishes: ClassVar[dict[str, int]] = {"abort": 503}

    @classmethod
    def check_entry(cls, entry: dict[str, Any], source: str, where: str) -> None:
        if not entry.get("base_url"):
            raise ConfigError(source, f"{where}.base_url",
                              "required for type vllm (e.g. http://127.0.0.1:8000/v1)")


PRESETS: tuple[type[CompatProvider], ...] = (
    GroqProvider, MistralProvider, DeepSeekProvider, TogetherProvider, FireworksProvider,
    OpenRouterProvider, XAIProvider, MoonshotProvider, CerebrasProvider,
    DeepInfraProvider, VLLMProvider,
)
# Every finish a preset reads as a failure: behind `type: openai` (the same server, not
# named) such an answer still reaches the client as a 200, and the cache must not keep it.
FAILED_FINISHES: frozenset[str] = frozenset(
    reason for preset in PRESETS for reason in preset.failed_finishes)
