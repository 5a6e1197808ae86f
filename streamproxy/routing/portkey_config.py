"""Portkey's gateway config schema → a validated tree of `ConfigNode`s (pure).

Accepted from the `x-portkey-config` header (inline JSON), by name from the YAML `configs:`
section, or as a route's default. Every invalid field is a 400 naming its path
(`config.targets[1].weight`). Inheritance follows Portkey: a target inherits `retry`,
`request_timeout`, `timeouts`, `cb_config`, `forward_headers`, `custom_host`, `provider`/
`api_key`/`virtual_key` from its parent (the key only while it names no other provider), and
`override_params` merge parent-first.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import orjson

from streamproxy.config import REGION, REGION_RULE
from streamproxy.errors import InvalidRequest
from streamproxy.openai_api.request import (
    GATEWAY_FIELDS,
    MAX_FALLBACK_MODELS,
    parse_chat_request,
)
from streamproxy.routing.conditions import (
    CLIENT_REGEX_BUDGET,
    CLIENT_REGEX_TEXT_MAX,
    client_regex_costs,
    validate_query,
)
from streamproxy.routing.target import override_reasoning

_T = TypeVar("_T")

MODES = ("single", "fallback", "loadbalance", "conditional")
# Portkey's documented defaults, with Anthropic's 529 "overloaded" (its most common transient
# failure, and a status we pass on as it is): without it `retry: {attempts: 3}` gave up at once.
DEFAULT_RETRY_CODES = frozenset({429, 500, 502, 503, 504, 529})
RETRY_ATTEMPTS_MAX = 10
# How deep targets may nest: far beyond what a config needs, and far within Python's stack
# (400 levels, a header under a raised server.max_header_bytes, ran parsing out of it: a 500).
MAX_TARGET_DEPTH = 32
# What a client's inline config may ask of the gateway for one request: as much as OneLLM's
# body fields may (a primary with its retries, then 50 fallback models). Without a cap one
# request, one count of a rate limit, fanned out to thousands of upstream requests (a root
# `retry` inherited by every `{}` target of a header), and every target was resolved first.
MAX_CLIENT_TARGETS = 1 + MAX_FALLBACK_MODELS
MAX_CLIENT_TRIES = MAX_CLIENT_TARGETS + RETRY_ATTEMPTS_MAX
_TIMEOUT_KEYS = ("connect", "first_token", "idle", "total")

# Portkey's per-target provider settings, applied where the target's provider type takes
# them (the provider's `target_options`); not inherited, as in Portkey. Then Azure's three
# (its resource, deployment and api-version) and Anthropic's two.
PROVIDER_OPTION_KEYS = ("openai_organization", "openai_project", "aws_region", "vertex_region",
                        "resource_name", "deployment_id", "api_version",
                        "anthropic_version", "anthropic_beta")
_NODE_KEYS = {"strategy", "targets", "name", "weight", "provider", "api_key", "virtual_key",
              "override_params", "forward_headers", "request_timeout", "timeouts",
              "custom_host", "retry", "cache", "cb_config", *PROVIDER_OPTION_KEYS}
# An organization id, a region, an Azure resource, deployment or api-version: it lands in a
# header, a path or a host name (under the provider's own domain). A '.' for deployments
# named after their model (`gpt-4.1`); never a '/' or ':' that would make it a host.
_ID = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
OPTION_VALUE = re.compile(_ID)
OPTION_VALUE_RULE = "an id of letters, digits, '.', '-' and '_'"
# Azure's resource is the first label of its host ({resource}.openai.azure.com): a host given
# (`myres.openai.azure.com`) built `myres.openai.azure.com.openai.azure.com`.
_HOST_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
_HOST_LABEL_RULE = ("a resource's name alone (letters, digits and '-': myres, for "
                    "https://myres.openai.azure.com), not a host or URL")
_HOST_LABEL_OPTIONS = frozenset({"resource_name"})
_REGION_OPTIONS = frozenset({"aws_region", "vertex_region"})  # (host name parts too)
# Anthropic's beta header names several betas, comma-separated; an empty name (a trailing
# comma) names none and is skipped, as in the gateway's own config (anthropic/options.py).
_LIST_OPTIONS = frozenset({"anthropic_beta"})
_OPTION_LIST_RULE = "a comma-separated list of ids of letters, digits, '.', '-' and '_'"
# A control character in a key that goes into a header: CR/LF would split it (both upstream
# clients refuse to write one: a 500), NUL would go on as it is (RFC 9110 5.5 forbids it).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# A custom_host is the provider's base URL, its paths appended: after a '?' or '#' they would be
# the query or fragment (and the request would go to the host's root); urlsplit drops a tab or
# newline the client's URL library may not.
_NOT_IN_CUSTOM_HOST = re.compile(r"[?#\s\x00-\x1f\x7f]")
CUSTOM_HOST_RULE = "must be a URL with no query or fragment ('?', '#') and no spaces"
# Portkey fields we accept and ignore (they configure Portkey's hosted features).
_IGNORED_KEYS = {"id", "strict_open_ai_compliance"}
# Portkey's credential and account settings: a provider authenticates with what the gateway's
# config gives it, never with a request's (the portkey-ai SDK's headers for them are ignored,
# README). Refused here, where the field sits on one target: that target would not run as it
# asks, and "not a config field" would not say why. (Never the value: it is a secret.)
_CREDENTIALS_NOT_TAKEN = {
    "vertex_project_id": "is not taken: a vertex provider uses the project its gateway config "
                         "names, which its credentials are for; configure another provider "
                         "for another project (vertex_region is taken)",
    "vertex_service_account_json": "is not taken: a vertex provider authenticates with its "
                                   "gateway config's credentials (credentials_file, ADC, "
                                   "token_command), never a request's (vertex_region is taken)",
    **{key: "is not taken: a bedrock provider signs with its gateway config's AWS credentials "
            "(keys, profile or the host's credential chain), never a request's (aws_region is "
            "taken)"
       for key in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")},
}
# Guardrails and mutators: refused unless empty, since serving a request without the checks
# its config asks for would be worse than a 400.
_HOOK_KEYS = {"before_request_hooks", "after_request_hooks", "input_guardrails",
              "output_guardrails", "input_mutators", "output_mutators"}
# A node's fields in any of Portkey's forms (their camelCase names are theirs: `_given`).
_ANY_NODE_KEY = frozenset({*_NODE_KEYS, *_IGNORED_KEYS, *_CREDENTIALS_NOT_TAKEN, *_HOOK_KEYS})


@dataclass(frozen=True, slots=True)
class RetrySpec:
    attempts: int = 0
    on_status_codes: frozenset[int] = DEFAULT_RETRY_CODES
    use_retry_after_header: bool = True  # Portkey defaults to false; honouring is kinder
    # The config wrote `attempts` (0 included): an operator's "no retries" for a target is
    # theirs to make; OneLLM's body `retries` go only where a config set none (gateway.py).
    attempts_set: bool = field(default=False, compare=False)


@dataclass(frozen=True, slots=True)
class BreakerSpec:
    failure_threshold: int | None = None
    failure_threshold_percentage: float | None = None
    cooldown_interval: float = 30.0  # seconds (Portkey gives milliseconds; converted)
    failure_status_codes: frozenset[int] | None = None  # None: any status ≥ 500
    minimum_requests: int = 1
    # A client's inline x-portkey-config gave it (`client_made`): its breakers are kept apart
    # in the tables' caps. Not part of the rules: the same rules share one breaker.
    client: bool = field(default=False, compare=False)

    def is_failure(self, status: int) -> bool:
        if self.failure_status_codes is None:
            return status >= 500
        return status in self.failure_status_codes


@dataclass(frozen=True, slots=True)
class Condition:
    query: dict[str, Any]
    then: str
    # A client's inline config's (`client_made`): its `$regex` reads CLIENT_REGEX_TEXT_MAX
    # characters at most (conditions.py).
    client: bool = False


@dataclass(frozen=True, slots=True)
class ConfigNode:
    path: str
    mode: str | None = None  # None: a leaf target
    targets: tuple[ConfigNode, ...] = ()
    on_status_codes: frozenset[int] | None = None  # fallback triggers; None = any error
    conditions: tuple[Condition, ...] = ()
    default: str | None = None
    name: str | None = None
    weight: float = 1.0
    provider: str | None = None
    api_key: str | None = None
    virtual_key: str | None = None
    override_params: dict[str, Any] = field(default_factory=dict)
    forward_headers: tuple[str, ...] = ()
    custom_host: str | None = None
    provider_options: dict[str, str] = field(default_factory=dict)  # PROVIDER_OPTION_KEYS
    timeouts: dict[str, float | None] = field(default_factory=dict)
    retry: RetrySpec = RetrySpec()
    breaker: BreakerSpec | None = None
    cache: dict[str, Any] | None = None
    # The fields written in camelCase (snake → as written; `_given`), its own and those it
    # inherits: a 400 at request time names a field as the client wrote it (`field_path`).
    # (None for none: no dict made for each node, most of them built per request)
    written: dict[str, str] | None = field(default=None, compare=False)

    @property
    def is_leaf(self) -> bool:
        return self.mode is None

    def field_path(self, name: str) -> str:
        """Where this node's field `name` is, as the client wrote it: `config.virtualKey`
        (`config.virtual_key` named a field its config does not have)."""
        return f"{self.path}.{(self.written or {}).get(name, name)}"

    def leaves(self) -> list[ConfigNode]:
        if self.is_leaf:
            return [self]
        return [leaf for t in self.targets for leaf in t.leaves()]


def custom_host_error(value: str) -> str | None:
    """Why `value` cannot be a custom_host (CUSTOM_HOST_RULE); None when it can."""
    return CUSTOM_HOST_RULE if _NOT_IN_CUSTOM_HOST.search(value) else None


def option_value_error(name: str, value: Any) -> str | None:
    """What a provider setting's value must be, when `value` is not that; None when it is."""
    if name in _LIST_OPTIONS:
        # (split, not one pattern: optional names among optional spaces backtrack badly)
        names = [n.strip(" \t") for n in value.split(",")] if isinstance(value, str) else None
        ok = names is not None and all(not n or OPTION_VALUE.fullmatch(n) for n in names)
        return None if ok else _OPTION_LIST_RULE
    if name in _HOST_LABEL_OPTIONS:
        pattern, rule = _HOST_LABEL, _HOST_LABEL_RULE
    elif name in _REGION_OPTIONS:
        pattern, rule = REGION, REGION_RULE
    else:
        pattern, rule = OPTION_VALUE, OPTION_VALUE_RULE
    return None if isinstance(value, str) and pattern.fullmatch(value) else rule


def _bad(path: str, reason: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid config: '{path}' {reason}.", param=path,
                          code="invalid_config")


_UPPER = re.compile(r"[A-Z]")


def _given(raw: dict[str, Any], path: str,
           known: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """A config object's fields as this module reads them, from the forms clients write, and
    the camelCase names it was given some under:
    - null says "not set": typed clients write every optional field (pydantic's model_dump,
      a TypeScript object's undefined), and a null weight, cache or retry was a 400, a null
      virtual_key dropped the inherited provider;
    - a `known` field in camelCase (`virtualKey`, `onStatusCodes`, `maxAge`) is that field, as
      in Portkey, whose gateway reads its configs camelCased (a JavaScript client's keys)."""
    out: dict[str, Any] = {}
    written: dict[str, str] = {}
    for key, value in raw.items():
        if value is None:
            continue
        if isinstance(key, str) and _UPPER.search(key):
            snake = _UPPER.sub(lambda m: "_" + m.group().lower(), key)
            if snake in known:
                if snake in raw and raw[snake] is not None:
                    raise _bad(f"{path}.{key}", f"gives {snake} a second time")
                written[snake] = key
                key = snake
        out[key] = value
    return out, written


def _read(raw: dict[str, Any], path: str, known: Any,
          read: Callable[[dict[str, Any]], _T]) -> _T:
    """`read` of the object at `path` as `_given` gives it, its 400s naming a field as the
    client wrote it: for `maxAge`, `config.cache.max_age` named a field the config lacks."""
    fields, written = _given(raw, path, known)
    try:
        return read(fields)
    except InvalidRequest as e:
        _as_written(e, path, written)
        raise


def _as_written(e: InvalidRequest, path: str, written: dict[str, str]) -> None:
    """`e`, raised under the object at `path`, naming its field as the client wrote it."""
    param = e.param or ""
    for snake, key in written.items():
        old = f"{path}.{snake}"
        if param == old or param.startswith((f"{old}.", f"{old}[")):
            e.param = f"{path}.{key}{param[len(old):]}"
            e.message = e.message.replace(f"'{param}'", f"'{e.param}'", 1)
            e.args = (e.message,)
            return


def _unknown(path: str, key: Any, what: str, known: Any, listed: str = "") -> InvalidRequest:
    """A field no `what` has, with the known one it most likely misspells (`stratgy`)."""
    hints = [listed] if listed else []
    hints += [f"did you mean {m}?" for m in difflib.get_close_matches(str(key), sorted(known), 1)]
    return _bad(f"{path}.{key}", f"is not a {what}" + (f" ({'; '.join(hints)})" if hints else ""))


def _override_params(params: Any, where: str) -> dict[str, Any]:
    """A node's own `override_params`, checked: none that only the request may set, and the
    rest as a request's fields (`_check_overrides`)."""
    if not isinstance(params, dict):
        raise _bad(where, "must be an object")
    if "store" in params:  # consumed before routing, never forwarded: it cannot apply here
        raise _bad(f"{where}.store", "is the proxy's stored completions switch, not a provider "
                   "parameter: send store in the request body, or set storage.force_store")
    if "stream" in params:  # the answer's form is the request's: an upstream told otherwise
        # answered in the other form, which failed as a truncated stream (502)
        raise _bad(f"{where}.stream", "would change the answer's form from the one the client "
                   "asked for: send stream in the request body")
    if "n" in params:  # how many choices is the client's to say: with another n, a client
        # got choices it did not ask for or lost some, and the cache replayed and storage kept
        # choice 0 alone (they read n from the request)
        raise _bad(f"{where}.n", "would change how many choices the answer has from what the "
                   "client asked for: send n in the request body")
    model = params.get("model")
    if isinstance(model, str) and not model.strip():  # (no model's name: it sent the
        # provider's default model in place of the request's, where null keeps the request's)
        raise _bad(f"{where}.model", "is empty: give a model name, or null to keep the "
                   "request's model")
    for key in GATEWAY_FIELDS.intersection(params):  # read from the body before routing,
        # never forwarded: as an override each went upstream as it was (OpenAI's 400)
        raise _bad(f"{where}.{key}", "is a routing field of the request (OneLLM's), not a "
                   "provider parameter: send it in the request body, or give this config "
                   "fallback targets or a retry")
    _check_overrides(params, where)
    return params


# What an override's fields are checked beside: a request's messages, and the fields some of
# them require (stream_options needs stream, top_logprobs needs logprobs) when it does not set
# them itself — the request brings those.
_OVERRIDE_COMPANIONS = {"messages": [{"role": "user", "content": "-"}]}
_TOKEN_CAPS = frozenset({"max_tokens", "max_completion_tokens"})
_COMPANION_OF = {"stream_options": ("stream", True), "top_logprobs": ("logprobs", True)}


def _check_overrides(params: dict[str, Any], where: str) -> None:
    """An override goes on top of every body after the request's checks ran: checked as a
    request's own fields are (an override's `tools` of another shape reached a provider's
    translator unchecked: a KeyError there, a 500)."""
    probe = {**_OVERRIDE_COMPANIONS, **params}
    for name, (needed, value) in _COMPANION_OF.items():
        if name in params and needed not in params:
            probe[needed] = value
    try:
        raw = orjson.dumps(probe)
    except orjson.JSONEncodeError:  # nested deeper than orjson writes (an uncaught 500)
        raise _bad(where, "is nested deeper than a request may be") from None
    try:
        parse_chat_request(raw)
    except InvalidRequest as e:
        field_ = f"{where}.{e.param}" if e.param else where
        raise InvalidRequest(f"Invalid config: '{field_}': {e.message}", param=field_,
                             code="invalid_config") from None


def _codes(value: Any, path: str) -> frozenset[int]:
    if not isinstance(value, list) or not all(
            isinstance(c, int) and not isinstance(c, bool) and 100 <= c <= 599 for c in value):
        raise _bad(path, "must be an array of HTTP status codes")
    return frozenset(value)


def _number(value: Any, path: str, *, minimum: float = 0, unit: str = "") -> float:
    """`unit` (" of milliseconds") is said in the 400: Portkey's request_timeout and
    cooldown_interval are ms where this config's timeouts and max_age are seconds."""
    # Finite: YAML reads .inf and .nan (JSON has neither); a NaN weight passed every check and
    # then drew no target (an IndexError per request), an infinite one was never drawn.
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            minimum <= value < math.inf):
        raise _bad(path, f"must be a finite number{unit} ≥ {minimum:g}")
    return float(value)


# Portkey documents `use_retry_after_headers`; its gateway reads `useRetryAfterHeader`.
_USE_RETRY_AFTER = ("use_retry_after_headers", "use_retry_after_header")


def _retry(raw: Any, path: str) -> RetrySpec:
    if not isinstance(raw, dict):  # (a count alone: Portkey's schema refuses it too)
        attempts = raw if type(raw) is int and 0 <= raw <= RETRY_ATTEMPTS_MAX else 3
        raise _bad(path, f"must be an object: {{attempts: {attempts}}}, with on_status_codes "
                   "if need be")
    return _read(raw, path, _RETRY_KEYS, lambda fields: _retry_fields(fields, path))


_RETRY_KEYS = ("attempts", "on_status_codes", *_USE_RETRY_AFTER)


def _retry_fields(raw: dict[str, Any], path: str) -> RetrySpec:
    known = _RETRY_KEYS
    for key in raw:
        if key not in known:
            raise _unknown(path, key, "retry field", known)
    attempts = raw.get("attempts", 0)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or not (
            0 <= attempts <= RETRY_ATTEMPTS_MAX):
        raise _bad(f"{path}.attempts", f"must be an integer from 0 to {RETRY_ATTEMPTS_MAX}")
    codes = raw.get("on_status_codes")
    use_header = True
    for key in _USE_RETRY_AFTER:
        if key in raw:
            if not isinstance(raw[key], bool):
                raise _bad(f"{path}.{key}", "must be a boolean")
            use_header = raw[key]
    if len({raw[k] for k in _USE_RETRY_AFTER if k in raw}) > 1:
        raise _bad(f"{path}.{_USE_RETRY_AFTER[1]}", f"contradicts {_USE_RETRY_AFTER[0]}")
    return RetrySpec(attempts, _codes(codes, f"{path}.on_status_codes") if codes is not None
                     else DEFAULT_RETRY_CODES, use_header, "attempts" in raw)


def _breaker(raw: Any, path: str) -> BreakerSpec:
    if not isinstance(raw, dict):
        raise _bad(path, "must be an object")
    return _read(raw, path, _BREAKER_KEYS, lambda fields: _breaker_fields(fields, path))


_BREAKER_KEYS = ("failure_threshold", "failure_threshold_percentage", "cooldown_interval",
                 "failure_status_codes", "minimum_requests")


def _breaker_fields(raw: dict[str, Any], path: str) -> BreakerSpec:
    for key in raw:
        if key not in _BREAKER_KEYS:
            raise _unknown(path, key, "cb_config field", _BREAKER_KEYS)
    threshold = raw.get("failure_threshold")
    pct = raw.get("failure_threshold_percentage")
    if threshold is None and pct is None:
        raise _bad(path, "needs failure_threshold or failure_threshold_percentage")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, int)
                                  or threshold < 1):
        raise _bad(f"{path}.failure_threshold", "must be a positive integer")
    if pct is not None and (isinstance(pct, bool) or not isinstance(pct, int | float)
                            or not 0 < pct <= 100):  # (one rule: -1 was told '≥ 0', then 0
        # '(0, 100]')
        raise _bad(f"{path}.failure_threshold_percentage",
                   "must be a percentage above 0, at most 100")
    minimum = raw.get("minimum_requests", 1)
    if isinstance(minimum, bool) or not isinstance(minimum, int) or minimum < 1:
        raise _bad(f"{path}.minimum_requests", "must be a positive integer")
    cooldown_ms = _number(raw.get("cooldown_interval", 30_000), f"{path}.cooldown_interval",
                          minimum=1, unit=" of milliseconds")
    codes = raw.get("failure_status_codes")
    return BreakerSpec(threshold, pct, cooldown_ms / 1000,
                       _codes(codes, f"{path}.failure_status_codes") if codes is not None
                       else None, minimum)


def _cache(raw: Any, path: str) -> dict[str, Any]:
    """Checked with the config, not per request: there a bad one was a 400 only when a draw or
    a condition reached its target, and a named config with one refused every request."""
    if not isinstance(raw, dict):  # (a mode alone: Portkey's schema refuses it too)
        raise _bad(path, "must be an object: {mode: simple}, with max_age in seconds if need be"
                   + ("; this gateway has no semantic cache" if raw == "semantic" else ""))
    return _read(raw, path, ("mode", "max_age"), lambda fields: _cache_fields(fields, path))


def _cache_fields(raw: dict[str, Any], path: str) -> dict[str, Any]:
    for key in raw:
        if key not in ("mode", "max_age"):
            raise _unknown(path, key, "cache field", ("mode", "max_age"), "mode, max_age")
    if raw.get("mode") != "simple":
        raise _bad(f"{path}.mode", "must be 'simple' (exact match; this gateway has no "
                                   "semantic cache)")
    max_age = raw.get("max_age")  # (absent or null: the cache section's default_max_age)
    if max_age is not None and (isinstance(max_age, bool) or not isinstance(
            max_age, int | float) or not 0 < max_age < math.inf):  # (one rule, not two
        # 400s: -1 was told '≥ 0', and 0 then 'positive')
        raise _bad(f"{path}.max_age", "must be a positive number of seconds")
    return raw


def _timeouts(raw: Any, path: str) -> dict[str, float | None]:
    if not isinstance(raw, dict):
        raise _bad(path, f"must be an object of seconds: {', '.join(_TIMEOUT_KEYS)} "
                   "({total: 120})")
    return _read(raw, path, _TIMEOUT_KEYS, lambda fields: _timeout_fields(fields, path))


def _timeout_fields(raw: dict[str, Any], path: str) -> dict[str, float | None]:
    # (a null one is not set, as any config field: a typed client writes every key, `_given`)
    out: dict[str, float | None] = {}
    for key, value in raw.items():
        if key not in _TIMEOUT_KEYS:
            listed = ("Portkey's request_timeout, in ms, is a field beside timeouts"
                      if key == "request" else ", ".join(_TIMEOUT_KEYS))
            raise _unknown(path, key, "timeout", _TIMEOUT_KEYS, listed)
        # `total: 0` lifts a total set below (a parent's, the provider's: a long generation);
        # a null one was that, and lifted the operator's cap for a client that set none.
        if key == "total" and value == 0 and type(value) is not bool:
            out[key] = None
        elif isinstance(value, bool) or not isinstance(value, int | float) or not (
                0.001 <= value < math.inf):  # (a string, "30s", is not one)
            raise _bad(f"{path}.{key}", "must be a number of seconds (at least 0.001)"
                       + (", or 0 for none" if key == "total" else ""))
        else:
            out[key] = float(value)
    return out


def _string(raw: dict[str, Any], key: str, path: str) -> str | None:
    value = raw.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise _bad(f"{path}.{key}", "must be a non-empty string")
    return value


def parse_config(raw: Any, path: str = "config", parent: ConfigNode | None = None,
                 depth: int = 0) -> ConfigNode:
    if not isinstance(raw, dict):
        raise _bad(path, "must be a JSON object")
    fields, written = _given(raw, path, _ANY_NODE_KEY)
    try:
        return _node(fields, written, path, parent, depth)
    except InvalidRequest as e:
        _as_written(e, path, written)
        raise


def _node(raw: dict[str, Any], written: dict[str, str], path: str,
          parent: ConfigNode | None, depth: int) -> ConfigNode:
    if "mode" in raw or "options" in raw:
        raise _older_form(raw, path)
    for key in raw:
        if key in _HOOK_KEYS:
            if raw[key]:
                raise _bad(f"{path}.{key}", "asks for guardrails or mutators, which this gateway "
                                            "does not run")
        elif key in _CREDENTIALS_NOT_TAKEN:
            raise _bad(f"{path}.{key}", _CREDENTIALS_NOT_TAKEN[key])
        elif key not in _NODE_KEYS and key not in _IGNORED_KEYS:
            raise _unknown(path, key, "config field", _NODE_KEYS)
    base = parent or ConfigNode(path=path)
    node = replace(
        base, path=path, mode=None, targets=(), on_status_codes=None, conditions=(),
        default=None, name=_string(raw, "name", path), weight=1.0,
        provider_options={}, cache=None)
    if written or base.written:  # (an inherited field keeps its name: none set here again)
        node = replace(node, written={
            **{k: v for k, v in (base.written or {}).items() if k not in raw}, **written})
    if "weight" in raw:
        node = replace(node, weight=_number(raw["weight"], f"{path}.weight"))
    node = _leaf_fields(node, raw, path)
    if "strategy" in raw or "targets" in raw:
        node = _strategy(node, raw, path, depth)
    # A leaf without provider or virtual_key routes like a plain request (model prefix,
    # x-portkey-provider, default provider): a config may only add cache, retry, timeouts.
    return node


def operators_form(raw: Any) -> Any:
    """A named config of the gateway's YAML (`configs:`) as `parse_config` reads it: there
    `timeouts.total: null` is no total, as the YAML's provider and server timeouts read it
    (a client's null is "not set", `_given`; its none is 0). Before that rule an operator's
    null lifted a total; written so, it then kept the provider's, silently."""
    if not isinstance(raw, dict):
        return raw
    out = dict(raw)
    timeouts = out.get("timeouts")
    if isinstance(timeouts, dict) and "total" in timeouts and timeouts["total"] is None:
        out["timeouts"] = {**timeouts, "total": 0}
    if isinstance(targets := out.get("targets"), list):
        out["targets"] = [operators_form(t) for t in targets]
    return out


def _older_form(raw: dict[str, Any], path: str) -> InvalidRequest:
    """Portkey's first config form (`mode` and `options` on the node), which its gateway
    refuses too ("migrate to the latest version"): "not a config field" said neither why nor
    what to write in its place."""
    mode = raw.get("mode")
    if "mode" not in raw:
        return _bad(f"{path}.options", "is Portkey's older config form: write options: [...] "
                    "as targets: [...], beside a strategy: {mode: fallback} (or loadbalance)")
    shown = mode if mode in MODES else "fallback"
    return _bad(f"{path}.mode", f"is Portkey's older config form: write {{mode: {shown}, "
                f"options: [...]}} as {{strategy: {{mode: {shown}}}, targets: [...]}}")


def client_made(node: ConfigNode) -> ConfigNode:
    """`node` as a client's inline config: its breakers marked the client's, so a flood of
    distinct client configs cannot crowd the operator's out of the breaker tables or the
    circuit gauge (routing/breaker.py); its conditions' `$regex` held to a budget, as they
    run on the event loop (conditions.py)."""
    leaves = node.leaves()
    if len(leaves) > MAX_CLIENT_TARGETS or most_tries(node) > MAX_CLIENT_TRIES:
        raise _bad(node.path, f"may have at most {MAX_CLIENT_TARGETS} targets and send one "
                   f"request upstream at most {MAX_CLIENT_TRIES} times (each target once and "
                   "its retry.attempts more, along its longest fallback)")
    _check_client_regexes(node)
    return _client_made(node)


def most_tries(node: ConfigNode) -> int:
    """The most upstream requests `node` may make for one request: a fallback's targets in
    turn, one target of any other strategy."""
    if node.is_leaf:
        return 1 + node.retry.attempts
    tries = [most_tries(t) for t in node.targets]
    return sum(tries) if node.mode == "fallback" else max(tries)


def _client_made(node: ConfigNode) -> ConfigNode:
    breaker = node.breaker
    return replace(node, targets=tuple(_client_made(t) for t in node.targets),
                   breaker=None if breaker is None else replace(breaker, client=True),
                   conditions=tuple(replace(c, client=True) for c in node.conditions))


def _check_client_regexes(root: ConfigNode) -> None:
    """The whole config's patterns within CLIENT_REGEX_BUDGET together (each condition may run
    on every request), else a 400 naming the one that spent it."""
    spent = 0.0
    nodes = [root]
    while nodes:
        node = nodes.pop()
        nodes.extend(node.targets)
        for i, cond in enumerate(node.conditions):
            where = f"{node.path}.strategy.conditions[{i}].query"
            for path, cost in client_regex_costs(cond.query, where):
                spent += cost
                if spent > CLIENT_REGEX_BUDGET:
                    raise _bad(path, "may backtrack too long for a client's config: no "
                               "repeated group that can match a text in several ways "
                               "((a+)+, (a|ab)*), no backreference, at most one unbounded "
                               f"repeat (two after a leading ^); values longer than "
                               f"{CLIENT_REGEX_TEXT_MAX} characters never match")


def _leaf_fields(node: ConfigNode, raw: dict[str, Any], path: str) -> ConfigNode:
    changes: dict[str, Any] = {}
    for key in ("provider", "api_key", "virtual_key", "custom_host"):
        value = _string(raw, key, path)
        if value is not None:
            changes[key] = value
    if "api_key" in changes:  # without a paste's space or a block scalar's line end, as a
        # provider's own key (config.py): `Bearer  sk-...` was the provider's 401
        if not (key := changes["api_key"].strip()):
            raise _bad(f"{path}.api_key", "must be a non-empty string")
        changes["api_key"] = key
    if _CONTROL.search(changes.get("api_key", "")):
        raise _bad(f"{path}.api_key", "must not contain control characters")
    if not changes.get("api_key", "").isascii():  # (config.py's check_provider_key: the
        # provider's 401 with no hint, for smart quotes or a non-breaking space pasted with it)
        raise _bad(f"{path}.api_key", "must be ASCII, as every provider's key is (a smart "
                   "quote, a non-breaking or zero-width space pasted with it? it is not shown)")
    if custom_host_error(changes.get("custom_host", "")):
        raise _bad(f"{path}.custom_host", CUSTOM_HOST_RULE)
    if _names_another_provider(node, changes):
        # A key goes only to the provider it was given for: the parent's api_key or virtual
        # key (another provider's secret) is not this target's.
        changes = {"api_key": None, "virtual_key": None, **changes}
    if "virtual_key" in raw and "provider" not in raw:
        changes["provider"] = None  # the virtual key names its own provider
    options = {key: raw[key] for key in PROVIDER_OPTION_KEYS if key in raw}
    for key, value in options.items():
        rule = option_value_error(key, value)
        if rule is not None:
            raise _bad(f"{path}.{key}", f"must be {rule}")
    if options:
        changes["provider_options"] = options
    if "override_params" in raw:
        params = _override_params(raw["override_params"], f"{path}.override_params")
        inherited = node.override_params
        if not _TOKEN_CAPS.isdisjoint(params):  # the answer's cap has two names: the target's
            # replaces its parent's under either (both went upstream: OpenAI's 400, and the
            # translators read one of them first, maybe the parent's)
            inherited = {k: v for k, v in inherited.items() if k not in _TOKEN_CAPS}
        merged = {**inherited, **params}
        override_reasoning(merged, params)  # (so has the reasoning effort: the target's wins)
        changes["override_params"] = merged
    if "forward_headers" in raw:
        headers = raw["forward_headers"]
        if not isinstance(headers, list) or not all(isinstance(h, str) for h in headers):
            raise _bad(f"{path}.forward_headers", "must be an array of header names")
        changes["forward_headers"] = tuple(h.lower() for h in headers)
    # Portkey: milliseconds until the answer starts (then 408); 0 sets none, as there (its
    # gateway reads 0 as unset: the parent's holds, else there is none).
    ms = _number(raw.get("request_timeout", 0), f"{path}.request_timeout",
                 unit=" of milliseconds")
    if ms:
        changes["timeouts"] = {**node.timeouts, "request": ms / 1000}
    if "timeouts" in raw:
        changes["timeouts"] = {**changes.get("timeouts", node.timeouts),
                               **_timeouts(raw["timeouts"], f"{path}.timeouts")}
    if "retry" in raw:
        changes["retry"] = _retry(raw["retry"], f"{path}.retry")
    if "cb_config" in raw:
        changes["breaker"] = _breaker(raw["cb_config"], f"{path}.cb_config")
    if "cache" in raw:
        changes["cache"] = _cache(raw["cache"], f"{path}.cache")
    return replace(node, **changes)


def _names_another_provider(parent: ConfigNode, own: dict[str, Any]) -> bool:
    """Whether a target's own fields name a provider other than the one its parent gave a key
    for: a virtual key (which names its own), or a provider under a virtual key or under
    another provider (a key given with no provider named is for whichever its targets name)."""
    if "virtual_key" in own:
        return True
    provider = own.get("provider")
    if provider is None:
        return False
    if parent.virtual_key is not None:
        return True
    return parent.provider is not None and _bare(provider) != _bare(parent.provider)


def _bare(provider: str) -> str:
    return provider.removeprefix("@")


def _strategy(node: ConfigNode, raw: dict[str, Any], path: str, depth: int) -> ConfigNode:
    strategy = raw.get("strategy")
    if not isinstance(strategy, dict):  # (a mode alone: Portkey's schema refuses it too)
        shown = strategy if strategy in MODES else "fallback"
        raise _bad(f"{path}.strategy", f"must be an object with a mode: {{mode: {shown}}}")
    return _read(strategy, f"{path}.strategy", _STRATEGY_KEYS,
                 lambda fields: _strategy_fields(node, fields, raw, path, depth))


_STRATEGY_KEYS = ("mode", "on_status_codes", "conditions", "default", "cb_config")


def _strategy_fields(node: ConfigNode, strategy: dict[str, Any], raw: dict[str, Any],
                     path: str, depth: int) -> ConfigNode:
    known = _STRATEGY_KEYS
    mode = strategy.get("mode")
    if mode not in MODES:
        raise _bad(f"{path}.strategy.mode", f"must be one of {', '.join(MODES)}")
    for key in strategy:
        if key not in known:
            raise _unknown(f"{path}.strategy", key, "strategy field", known)
    changes: dict[str, Any] = {"mode": mode}
    if "on_status_codes" in strategy:
        changes["on_status_codes"] = _codes(strategy["on_status_codes"],
                                            f"{path}.strategy.on_status_codes")
    if "cb_config" in strategy:
        changes["breaker"] = _breaker(strategy["cb_config"], f"{path}.strategy.cb_config")
    node = replace(node, **changes)
    targets = raw.get("targets")
    if not isinstance(targets, list) or not targets:
        raise _bad(f"{path}.targets", "must be a non-empty array")
    if depth >= MAX_TARGET_DEPTH:
        raise _bad(f"{path}.targets", f"are nested deeper than {MAX_TARGET_DEPTH} levels")
    children = tuple(parse_config(t, f"{path}.targets[{i}]", node, depth + 1)
                     for i, t in enumerate(targets))
    node = replace(node, targets=children)
    if mode == "loadbalance" and sum(c.weight for c in children) <= 0:
        raise _bad(f"{path}.targets", "needs at least one target with a positive weight")
    if mode == "conditional":
        node = _conditions(node, strategy, path)
    return node


def _names_target(name: Any, names: set[str]) -> bool:
    return isinstance(name, str) and name in names  # (a list or an object is no name)


def _conditions(node: ConfigNode, strategy: dict[str, Any], path: str) -> ConfigNode:
    names = {c.name for c in node.targets if c.name}
    raw = strategy.get("conditions")
    # Empty with a default: every request goes to it, as in Portkey (a config whose rules
    # were removed); with no default, none could be routed.
    if not isinstance(raw, list) or not (raw or strategy.get("default") is not None):
        raise _bad(f"{path}.strategy.conditions", "must be an array, non-empty unless "
                                                  "strategy.default names a target")
    conditions = []
    for i, cond in enumerate(raw):
        where = f"{path}.strategy.conditions[{i}]"
        if not isinstance(cond, dict) or not isinstance(cond.get("query"), dict):
            raise _bad(f"{where}.query", "must be an object")
        if not _names_target(cond.get("then"), names):
            raise _bad(f"{where}.then", _name_one_of(names))
        validate_query(cond["query"], f"{where}.query")
        conditions.append(Condition(cond["query"], cond["then"]))
    default = strategy.get("default")
    if default is not None and not _names_target(default, names):
        raise _bad(f"{path}.strategy.default", _name_one_of(names))
    return replace(node, conditions=tuple(conditions), default=default)


def _name_one_of(names: set[str]) -> str:
    if not names:  # (a list of none read "(names: )"; the targets need a `name` first)
        return "must name a target, and no target has a name"
    return f"must name a target (names: {', '.join(sorted(names))})"
