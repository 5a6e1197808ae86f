"""What every provider type implements, and the helpers they share.

A provider is four pure translations around one HTTP exchange:

    build_request(ChatRequest, Target)        -> UpstreamRequest   (OpenAI → provider)
    stream_translator(ChatRequest, ChunkSink) -> StreamTranslator  (provider bytes → sink)
    translate_response(bytes, ...)            -> chat.completion    (non-streamed answer)
    parse_error(status, bytes)                -> UpstreamStatusError

None of them does I/O; `routing/executor.py` and `relay.py` own the sockets.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

import orjson

from streamproxy._json import loads_lenient, loads_refused
from streamproxy.config import COMMON_PROVIDER_KEYS, ConfigError, ProviderConfig, unknown_key
from streamproxy.decode.sse import SSEDecoder, SSEEvent
from streamproxy.errors import (
    InvalidRequest,
    ProxyError,
    StreamDecodeError,
    StreamTruncated,
    UpstreamStatusError,
)
from streamproxy.openai_api.chunks import ChunkSink
from streamproxy.openai_api.request import TEXT_ONLY
from streamproxy.upstream.userinfo import userinfo_secrets

if TYPE_CHECKING:
    from streamproxy.openai_api.request import ChatRequest
    from streamproxy.routing.target import Target
    from streamproxy.upstream.egress import EgressProxies


@dataclass(slots=True)
class UpstreamRequest:
    url: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "POST"

    def credentials(self, api_key: str | None) -> tuple[str, ...]:
        """The secrets this request carries (`api_key`, and each credential header's value):
        masked in an error that echoes them. Not the target's key alone: a Vertex or Azure
        token, Bedrock's bearer key or AWS session token are none of them, and an upstream (or
        a relay before it) that echoes its request's headers showed them to the client."""
        found = [api_key] if api_key else []
        for name, value in self.headers.items():
            lowered = name.lower()
            if lowered in CREDENTIAL_HEADERS or _CREDENTIAL_NAME.search(lowered):
                scheme, _, token = value.partition(" ")
                found.append(token if token and scheme.lower() == "bearer" else value)
        if "@" in self.url:  # (user info the upstream client sends as Basic auth)
            found.extend(userinfo_secrets(self.url))
        return tuple(found)


# The headers a provider authenticates with (signed AWS requests carry the session token apart
# from the signature; botocore writes them capitalized).
CREDENTIAL_HEADERS = frozenset({"authorization", "x-api-key", "api-key", "x-goog-api-key",
                                "x-amz-security-token"})
# A gateway's or API manager's before the provider, set in a provider's `headers:`
# (Cloudflare AI Gateway's cf-aig-authorization, Helicone-Auth, Portkey's x-portkey-api-key,
# Azure API Management's Ocp-Apim-Subscription-Key): by its name, as no list can know them.
_CREDENTIAL_NAME = re.compile(r"auth|key|token|secret|passw|credential|signature|cookie")


class StreamTranslator:
    """Provider stream bytes → ChunkSink calls. `done` turns true at the provider's end-of-stream
    event; `close()` at EOF raises StreamTruncated if that never came (never a fake `stop`)."""

    done: bool = False
    # Its `usage_so_far` counts every chunk translated (Gemini's usageMetadata comes with each):
    # the provider's own count of a cut stream, kept over the relay's estimate of it.
    usage_runs: bool = False

    def feed(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def usage_so_far(self) -> dict[str, Any] | None:
        """For a stream that ended without its usage (failed, cut, its client gone): the usage
        the provider had reported by then, in OpenAI's shape, read from what the translator
        keeps anyway; None when it reported none or hands usage on at once (`out.usage`).
        Read once, at the stream's end, by the relay; never raises."""
        return None

    def usage_is_final(self) -> bool:
        """Whether the usage the sink was given (`out.usage`) is the answer's final count, for
        a stream that did not end normally; read once, at its end. Translators hand on the
        final count alone, but for a pass-through's running one."""
        return True


class SSETranslator(StreamTranslator):
    """Base for SSE-framed providers: subclasses implement `on_event(SSEEvent)`."""

    def __init__(self, out: ChunkSink, max_event_bytes: int) -> None:
        self.out = out
        self.done = False
        self.max_event_bytes = max_event_bytes  # (a splice leaves a longer read to the decoder)
        self._decoder = SSEDecoder(max_event_bytes)

    def feed(self, data: bytes) -> None:
        for event in self._decoder.feed(data):
            if self.done:
                return
            self.on_event(event)

    def close(self) -> None:
        for event in self._decoder.close():
            if self.done:
                break
            self.on_unended_event(event)
        if not self.done:
            raise StreamTruncated("the upstream closed the stream before it was complete")

    def on_event(self, event: SSEEvent) -> None:
        raise NotImplementedError

    def on_unended_event(self, event: SSEEvent) -> None:
        """An event the stream's end cut off before its blank line (`close`): the decoder
        hands it on as openai-python does, so `data: [DONE]` alone still ends the stream."""
        self.on_event(event)


def load_event_json(data: bytes) -> dict[str, Any]:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        try:  # (a lone surrogate escape, or 1e400: valid JSON orjson refuses)
            obj = loads_refused(data)
        except orjson.JSONDecodeError:
            raise StreamDecodeError("the upstream sent an event that is not valid JSON"
                                    ) from None
    if not isinstance(obj, dict):
        raise StreamDecodeError("the upstream sent an event that is not a JSON object")
    return obj


# What a translator meets in well-formed JSON of another shape: a missing field, a number or
# list where an object belongs, a string where a count belongs (int("s"), dict.update("s")).
WRONG_SHAPE = (KeyError, TypeError, AttributeError, ValueError)


def distinct_call_id(given: Any, seen: set[str], place: int) -> str | None:
    """A call's id in its answer: the upstream's (`given`), unless an earlier call of the answer
    had it — a client pairs results by id, and OpenAI refuses a turn with two calls of one id —
    then `call_<id>_<place>`, the same streamed and not (the proxy's own: never sent back
    upstream). None when the upstream gave none (the caller makes one). Notes it in `seen`."""
    if not given:
        return None
    call_id = str(given)
    if call_id in seen:
        call_id = f"call_{call_id}_{place}"
    seen.add(call_id)
    return call_id


def malformed(what: str, e: Exception) -> StreamDecodeError:
    """A translator's error for well-formed JSON of the wrong shape: `what` it was, and the
    field a KeyError names. Never Python's text for `e` ("KeyError('delta')", "'int' object
    is not subscriptable"), which the client would read and could not act on."""
    if not isinstance(e, KeyError):
        detail = "a field of the wrong type"
    elif e.args and isinstance(e.args[0], str) and e.args[0].isidentifier():
        detail = f"no '{e.args[0][:40]}' field"
    else:  # (our lookup of an upstream's value: a block index it never started)
        detail = "an index it never started"
    return StreamDecodeError(f"the upstream sent a malformed {what} ({detail})")


def event_kind(kind: Any) -> str:
    """An event named by its type, for `malformed`: "'message_delta' event", else "event"."""
    return f"{kind!r} event" if isinstance(kind, str) and len(kind) <= 40 else "event"


class Provider:
    type_name: ClassVar[str]
    default_base_url: ClassVar[str | None] = None
    # The path requests append to base_url (when one is), and the endings of base_url that
    # repeat it, refused at load: pasted with the base URL (`https://api.anthropic.com/v1`),
    # every request went to …/v1/v1/messages, the provider's 404.
    api_path: ClassVar[str] = ""
    base_url_endings: ClassVar[tuple[str, ...]] = ()
    option_keys: ClassVar[frozenset[str]] = frozenset()
    # OpenAI parameters this provider cannot take and silently drops (documented in README).
    dropped_params: ClassVar[frozenset[str]] = frozenset()
    # Client request headers copied to the upstream request (e.g. the mock's knobs).
    forwarded_client_headers: ClassVar[tuple[str, ...]] = ()
    # Portkey config-target fields that set one of this type's options for that target
    # (`openai_organization` → `organization`); see `target_option` and `with_options`.
    target_options: ClassVar[dict[str, str]] = {}
    # Options that change what the upstream answers (the response cache keys on them).
    answering_options: ClassVar[frozenset[str]] = frozenset()
    # The Portkey field among them that aims a target at another tenant's endpoint (Azure's
    # resource: another company's host, as a custom_host is), not at a region of the
    # operator's own account (Bedrock's, Vertex's); see routing/gateway.py `_tenant_url`.
    tenant_option: ClassVar[str | None] = None
    # True when the upstream already streams OpenAI chunks, forwarded as they are; the
    # translator then forwards the usage chunk itself and the encoder must not add one.
    passthrough: bool = False
    # True when the upstream takes OpenAI's custom tools and allowed_tools choices (and the
    # deprecated `functions`, any `modalities`, web search) as they are; the others refuse
    # them (openai_api.request.custom_tools_refused, answer_changing_refusal).
    custom_tools: bool = False
    # What a translating provider's answers can hold, as OpenAI's `modalities` names it: asked
    # for anything else, it answers a 400 (openai_api.request.answer_changing_refusal).
    answer_modalities: ClassVar[frozenset[str]] = TEXT_ONLY
    # True when the translator maps `web_search_options` to the upstream's own web search
    # (Gemini's Google Search grounding); the other translating providers refuse it.
    searches_web: ClassVar[bool] = False

    def __init__(self, cfg: ProviderConfig, *, max_event_bytes: int = 16 * 1024 * 1024) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.max_event_bytes = max_event_bytes

    @classmethod
    def check_options(cls, options: dict[str, Any], source: str, where: str) -> None:
        for key in options:
            if key not in cls.option_keys:
                raise ConfigError(source, f"{where}.{key}", unknown_key(
                    key, COMMON_PROVIDER_KEYS | cls.option_keys,
                    f"unknown key for type {cls.type_name}"))

    @classmethod
    def check_entry(cls, entry: dict[str, Any], source: str, where: str) -> None:
        """Checks that need the whole provider entry, not only its type-specific keys (e.g. a
        type without a default base URL requires `base_url`). Raises ConfigError."""

    @property
    def base_url(self) -> str:
        if not self.cfg.base_url:
            raise ProxyError(f"provider '{self.name}' has no base_url")
        return self.cfg.base_url

    @property
    def endpoint(self) -> str:
        """Where requests go, as far as a circuit breaker tells targets apart (its key): the
        configured base URL; a regional type adds its region, which fails on its own, after
        a `#`: after an `@`, the metrics' label took the host for a URL's user info, masked
        it and showed `https://us-east-1`."""
        return self.cfg.base_url or ""

    @property
    def answering_server(self) -> str | None:
        """The server that answers, as the cache tells answers apart: the configured base URL
        (a custom_host's: another server); not a region, which serves the same models."""
        return self.cfg.base_url

    @property
    def refusal_subject(self) -> str:
        """What a refusal of an OpenAI feature this provider lacks names as lacking it."""
        return f"provider '{self.name}'"

    def model_for(self, target: Target) -> str:
        model = target.model or self.cfg.default_model
        if not model:
            raise InvalidRequest(
                f"No model given and provider '{self.name}' has no default_model.",
                param="model", code="missing_required_parameter")
        return model

    def answering_model(self, target: Target) -> str | None:
        """The model that answers the target, as the cache tells answers apart: its model
        name (Azure's: the deployment its URL names, whatever the body's model says)."""
        return target.model or self.cfg.default_model

    def with_base_url(self, base_url: str) -> Provider:
        """This provider aimed at another host (a config's allowed `custom_host`)."""
        clone = copy.copy(self)
        clone.cfg = replace(self.cfg, base_url=base_url)
        return clone

    @classmethod
    def target_option(cls, field: str) -> str | None:
        """The option a config target's Portkey `field` sets on this type, or None (a subclass
        whose options lack it, such as the OpenAI-compatible presets, does not take it)."""
        key = cls.target_options.get(field)
        return key if key in cls.option_keys else None

    def answering_option_values(self, target: Target) -> dict[str, Any]:
        """This provider's options among `answering_options`, as set for the target (a type
        whose option applies to some models only leaves it out for the others)."""
        options = self.cfg.options
        return {k: options[k] for k in self.answering_options if k in options}

    def with_options(self, options: dict[str, str]) -> Provider:
        """This provider with some options set otherwise for one target (`target_option`)."""
        clone = copy.copy(self)
        clone.cfg = replace(self.cfg, options={**self.cfg.options, **options})
        return clone

    def refused_option(self) -> tuple[str, str] | None:
        """A Portkey field of `target_options` whose value, as set for this target, its
        endpoint refuses on every request, and why (the gateway's 400 names where it was
        set); None when there is none."""
        return None

    def with_own_key(self) -> Provider:
        """This provider for a target with a key of its own (a config target's or virtual key's
        `api_key`), when it holds credentials besides a key that such a target must not use or
        touch (Vertex's token source, Bedrock's SigV4). Itself by default."""
        return self

    def for_model(self, model: str | None) -> Provider:
        """The provider that serves `model`: this one, unless one endpoint speaks another
        format for some models (Vertex's Claude models take Anthropic's). `Target.served`."""
        return self

    def auth_summary(self) -> str | None:
        """How this provider authenticates when it is not by a key, for `check-config`
        (names and paths, never a secret); None: by a key."""
        return None

    def use_egress(self, egress: EgressProxies) -> None:
        """The egress proxies (`server.upstream_proxy`) for HTTP calls of the provider's own,
        such as a token fetch; the upstream client routes its requests itself. No-op here."""

    async def prepare(self, target: Target) -> None:
        """Async work a request needs before `build_request`, such as a Vertex access token
        (`token_command`, Google credentials); cached, so it normally returns at once. The
        executor awaits it; translations stay pure. No-op by default."""

    def build_request(self, req: ChatRequest, target: Target) -> UpstreamRequest:
        raise NotImplementedError

    def stream_translator(self, req: ChatRequest, out: ChunkSink) -> StreamTranslator:
        raise NotImplementedError

    def translate_response(self, body: bytes, req: ChatRequest, *, completion_id: str,
                           created: int, model: str = "") -> dict[str, Any] | bytes:
        """The whole non-streamed answer. `model` is the one a stream's envelope would carry
        (the target's, else the provider's default), used when the answer names none."""
        raise NotImplementedError

    def parse_error(self, status: int, body: bytes) -> UpstreamStatusError:
        return generic_error(status, body, self.name)

    def rejected(self, status: int, sent: UpstreamRequest) -> None:
        """The upstream answered `sent` with an HTTP error (before `error_from_response`): a
        provider that caches credentials forgets those it refused. No-op by default."""

    def error_from_response(self, status: int, body: bytes,
                            headers: Mapping[str, str]) -> UpstreamStatusError:
        """An upstream HTTP error → our error; override when the headers say something the
        body does not (Bedrock's `x-amzn-errortype`)."""
        return self.parse_error(status, body)

    def answered_error(self, body: bytes) -> UpstreamStatusError:
        """An error object a 200 carried instead of the answer (a stream request answered
        with one JSON body): 502, unless the provider's errors name their status (override)."""
        return self.parse_error(502, body)

    def events_of_answer(self, body: bytes) -> bytes | None:
        """The stream a whole non-streamed answer stands for, as this provider's events, when
        a stream request was answered with one (a server that ignores `stream`); None when
        `body` is no answer, or the provider knows no such fallback."""
        return None


def path_segment(value: str, what: str = "model") -> str:
    """A request's `value` (its model, Azure's deployment) as one segment of the upstream URL's
    path: percent-encoded ('/', '?', '#' included), and never a dot segment, which yarl and
    servers resolve however encoded (RFC 3986 5.2.4): `..` took the request to the path's
    parent (Bedrock's /converse, Azure's /openai/chat/completions). A 400 naming `what`."""
    if value in (".", ".."):
        raise InvalidRequest(f"'{value}' is not a valid {what} name.", param="model",
                             code="invalid_value")
    return quote(value, safe="")


def generic_error(status: int, body: bytes, provider: str, *,
                  keep_fields: bool = False) -> UpstreamStatusError:
    """Read an error body by its JSON fields: OpenAI's `{"error": {...}}`, Anthropic's
    `{"type": "error", "error": {...}}`, a bare `{"message": ...}`, Cloudflare's list
    (`_listed_error`), or a validation error's `detail` (`detail_message`). A body that is not
    JSON is not echoed (it may be an HTML page from some intermediary). `keep_fields`: an
    OpenAI-compatible provider's `{"error": {...}}` (or `{"object": "error", ...}`) also goes
    to the client as it came (`kept_fields`)."""
    message, code, etype, param, fields = None, None, None, None, None
    try:  # (lenient: a message quoting a string cut inside an emoji was lost)
        obj = loads_lenient(body) if body else None
    except orjson.JSONDecodeError:
        obj = None
    if isinstance(obj, list) and obj and isinstance(obj[0], dict):
        obj = obj[0]  # Gemini sometimes wraps its error in an array
    if isinstance(obj, dict):
        err = obj.get("error", _listed_error(obj) or obj)
        if isinstance(err, dict):
            message = err.get("message") or err.get("msg")
            code = err.get("code")
            etype = err.get("type") or err.get("status")
            param = err.get("param")
            if keep_fields and err is obj.get("error"):
                fields = kept_fields(err)
            elif keep_fields and obj.get("object") == "error":
                # (vLLM's and Mistral's shape, the error object itself: kept as their error
                # events' are)
                fields = kept_fields({k: v for k, v in err.items() if k != "object"})
        elif isinstance(err, str):
            message = err
        if not isinstance(message, str):
            # (the error object's own `detail` before the body's: `{"error": {"detail": …}}`)
            detail = err.get("detail") if isinstance(err, dict) else None
            message = detail_message(message if message is not None
                                     else obj.get("detail") if detail is None else detail)
    if not isinstance(message, str) or not message:
        message = f"provider '{provider}' returned HTTP {status}"
    err = UpstreamStatusError(
        status,
        message,
        provider=provider,
        code=upstream_code(code, etype),
        param=param if isinstance(param, str) else None,
        fields=fields,
    )
    return quota_not_retried(err, etype)


def quota_not_retried(err: UpstreamStatusError, etype: Any) -> UpstreamStatusError:
    """`err` not to be retried when its code or its type `etype` is `insufficient_quota`."""
    if err.code == INSUFFICIENT_QUOTA or etype == INSUFFICIENT_QUOTA:
        # (OpenAI names the cause in `code`, credit_balance_exhausted or a spend limit, under
        # this type: as used up, until someone pays or the month turns)
        err.should_retry = False
    return err


# OpenAI's code (and type) for a quota or credit balance used up: a 429 that, unlike a rate
# limit, comes again on every try until someone pays. It says `x-should-retry: false` (the
# openai SDK would retry its 429 twice more) and a config's `retry` does not repeat it,
# which only delayed the fallback that can answer (routing/executor.py).
INSUFFICIENT_QUOTA = "insufficient_quota"


def quota_exhausted(err: UpstreamStatusError, phrases: tuple[str, ...]) -> UpstreamStatusError:
    """`err` as OpenAI's used-up quota (429, type and code `insufficient_quota`, not retried)
    when its message holds one of the provider's own `phrases` for it (lower case), which it
    sent with another status (Anthropic's 400): a client, or a fallback on 429, took it for a
    mistake in the request. The provider's message stays."""
    if any(phrase in err.message.lower() for phrase in phrases):
        insufficient_quota(err)
    return err


def insufficient_quota(err: UpstreamStatusError) -> UpstreamStatusError:
    """`err` as OpenAI's used-up quota: 429, type and code `insufficient_quota`, not retried,
    no wait (none the provider named brings the quota back); its message stays."""
    err.status, err.param, err.should_retry, err.retry_after = 429, None, False, None
    err.code = err.error_type = INSUFFICIENT_QUOTA
    if err.fields:
        err.fields = {**err.fields, "type": err.error_type, "param": None, "code": err.code}
    return err


# OpenAI's code for a prompt longer than the model's context (400 `invalid_request_error`,
# param `messages`): what the openai SDK's users, LangChain and agents that trim their history
# key on. Each provider says it in words of its own (`context_overflow`).
CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"


def context_overflow(err: UpstreamStatusError, phrases: tuple[str, ...]) -> UpstreamStatusError:
    """`err` as OpenAI's context overflow when it is a 400 whose message holds one of the
    provider's own `phrases` for it (lower case); the provider's message and status stay, and
    so do the other fields an OpenAI-compatible error keeps (ours replace its own type, code
    and param, which said otherwise: DeepSeek's code is its type again, its param null)."""
    if err.status == 400 and any(phrase in err.message.lower() for phrase in phrases):
        err.code, err.param = CONTEXT_LENGTH_EXCEEDED, "messages"
        err.error_type = "invalid_request_error"
        if err.fields:
            err.fields = {**err.fields, "type": err.error_type, "param": err.param,
                          "code": err.code}
    return err


def upstream_code(code: Any, etype: Any) -> str | None:
    """Our `code` for an upstream's error: its `code` as a string (OpenRouter's and
    Cloudflare's are numbers), else its `type`. An object or a list is no code: its Python
    repr went to the client, and a key inside it was never masked. Nor is a boolean, which
    names nothing (it went out as "True")."""
    if isinstance(code, str | int | float) and not isinstance(code, bool):
        return str(code)
    return etype if isinstance(etype, str) else None


# OpenAI's error fields whose value the client gets only in OpenAI's shape (a string or null):
# any other (OpenRouter's numeric `code`) is left to ours (its string).
_SHAPED_FIELDS = ("type", "param", "code")
# How deep a kept field may nest. Real extras nest a few levels (Azure's
# innererror.content_filter_result.hate: 3); orjson parses 1,024 but writes 254 at most, and
# masking the key walks them recursively: a deeper one made the answer a 500.
KEPT_FIELD_DEPTH = 32


def kept_fields(error: dict[str, Any]) -> dict[str, Any]:
    """The fields of an OpenAI-compatible error object the client gets as the provider sent
    them (`UpstreamStatusError.fields`): all but `message` (the error's own, whose key is
    masked), a shaped field that does not fit OpenAI's shape, and one nested deeper than
    `KEPT_FIELD_DEPTH`. Client code written for the provider reads its extras (Azure's
    `innererror.content_filter_result`, which category was filtered) and its own
    `type`/`code`, which ours would otherwise replace."""
    return {key: value for key, value in error.items()
            if key != "message" and (key not in _SHAPED_FIELDS or value is None
                                     or isinstance(value, str))
            and _nests_within(value, KEPT_FIELD_DEPTH)}


def _nests_within(value: Any, levels: int) -> bool:
    """Whether a JSON value's objects and arrays nest at most `levels` deep."""
    if isinstance(value, dict):
        value = list(value.values())
    if not isinstance(value, list):
        return True
    return levels > 0 and all(_nests_within(item, levels - 1) for item in value)


def _listed_error(body: dict[str, Any]) -> dict[str, Any] | None:
    """The first of the errors Cloudflare's API lists, `{"success": false, "errors": [{"code":
    7009, "message": ...}]}` — also the answer of Workers AI's OpenAI-compatible endpoint and
    of AI Gateway."""
    errors = body.get("errors")
    first = errors[0] if isinstance(errors, list) and errors else None
    return first if isinstance(first, dict) else None


def detail_message(detail: Any) -> str | None:
    """The message of a FastAPI/pydantic validation error, which Mistral's 422 sends as
    `{"message": {"detail": [...]}}` (or `"message": [...]`) and other servers as a top-level
    `{"detail": ...}`: each item's `loc` and `msg`, e.g. `body.messages.0.user.name: Extra
    inputs are not permitted` — the one thing that says which field was refused."""
    if isinstance(detail, dict):
        # (FastAPI's HTTPException(detail={"message": …}): a server's own error, not a list)
        detail = next((detail[key] for key in ("detail", "message", "msg") if key in detail),
                      None)
    if isinstance(detail, str):
        return detail
    if not isinstance(detail, list):
        return None
    lines = []
    for item in detail:
        if isinstance(item, dict) and isinstance(item.get("msg"), str):
            loc = item.get("loc")
            where = ".".join(str(p) for p in loc) if isinstance(loc, list) else ""
            lines.append(f"{where}: {item['msg']}" if where else item["msg"])
    return "; ".join(lines) or None
