"""The YAML configuration: load, validate, and the embedded default.

A config error names the file, the key and the reason (`ConfigError`), never a traceback.
Provider-specific keys are validated by the provider type itself (`Provider.check_options`), so
adding a provider never touches this file.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787
MAX_PORT = 65535
# server.max_json_depth's ceiling: orjson writes no more than 255 levels, and the translators
# nest a client's JSON a few levels deeper (Converse's toolConfig.tools[].toolSpec.inputSchema.json,
# Gemini's anyOf around a described $ref): above it, a body the limit let in became a 500.
MAX_JSON_DEPTH = 200


def shown_address(host: str, port: int) -> str:
    """`host:port` as a user would paste it into a URL: an IPv6 address bracketed, and ""
    (every interface, IPv4 and IPv6 alike) as 0.0.0.0, said so (":8787" is no address)."""
    if not host:
        return f"0.0.0.0:{port} (every interface)"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


LISTEN_HOST_RULE = "must be a host name or IP address alone (a port goes in server.port, --port)"


def listen_host(text: str) -> str:
    """A listen address as server.host or --host gives it: an IPv6 one may come bracketed, as
    in a URL (`[::1]`), which the socket layer would look up as a name. One with a port, a
    scheme or a space (`localhost:8080`, `http://0.0.0.0`) resolves as no name: check-config
    said OK and serve failed. ValueError(LISTEN_HOST_RULE) for those."""
    host = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if host.count(":") == 1 or any(c in "/[]" or c.isspace() for c in host):
        raise ValueError(LISTEN_HOST_RULE)
    return host


LOG_LEVELS = ("debug", "info", "warning", "error")
MAX_DRAIN_DELAY = 300  # seconds; a load balancer notices a failing readiness probe well before


class ConfigError(Exception):
    def __init__(self, source: str, key: str, reason: str) -> None:
        super().__init__(f"{source}: {key}: {reason}" if key else f"{source}: {reason}")
        self.source, self.key, self.reason = source, key, reason


class ConfigErrors(ConfigError):
    """Several independent problems, for check-config to print each (a linter's list, not one
    fix-and-rerun per mistake); read as a ConfigError, it is the first, as `serve` reports."""

    def __init__(self, errors: list[ConfigError]) -> None:
        first = errors[0]
        super().__init__(first.source, first.key, first.reason)
        self.errors = errors


def raise_collected(errors: list[ConfigError]) -> None:
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ConfigErrors(errors)


def each_problem(error: ConfigError) -> list[ConfigError]:
    return error.errors if isinstance(error, ConfigErrors) else [error]


def unknown_key(key: Any, known: Iterable[str], what: str = "unknown key",
                meant: str | None = None) -> str:
    """Why `key` is refused: the known key it most likely misspells (`defualt_model`), if
    any (or `meant`), then all of them; a long list alone hides the one a typo meant."""
    names = sorted(known)
    close = [meant] if meant else difflib.get_close_matches(str(key), names, n=1)
    return f"{what}{f'; did you mean {close[0]}?' if close else ''} (known: {', '.join(names)})"


@dataclass(slots=True, frozen=True)
class Timeouts:
    """Seconds. `first_token`: from sending the request to the first upstream event (for a
    non-streamed request, to the whole answer). `idle`: the longest gap between two upstream
    reads once streaming. `total`: optional cap on the whole request (a target's retries
    share it); None = no cap, so long generations are never cut. `request`: Portkey's
    `request_timeout` (a config's, or the `x-portkey-request-timeout` header's), like
    `first_token` but answered with Portkey's 408 rather than our 504, so that
    `on_status_codes: [408]` acts on it."""

    connect: float = 10.0
    first_token: float = 600.0
    idle: float = 300.0
    total: float | None = None
    request: float | None = None

    def merged(self, override: dict[str, Any]) -> Timeouts:
        # As given: a provider's `total: 0` or `null` (None: the only None a timeout takes)
        # lifts the server's total for its long generations, rather than being skipped.
        return replace(self, **override)


@dataclass(slots=True, frozen=True)
class ProviderConfig:
    name: str
    type: str
    base_url: str | None = None
    api_key: str | None = None  # the secret itself, resolved from api_key / api_key_env
    api_key_env: str | None = None  # the variable looked in (check-config names it when unset)
    headers: dict[str, str] = field(default_factory=dict)
    default_model: str | None = None
    models: tuple[str, ...] = ()
    timeouts: dict[str, float | None] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  # type-specific keys

    def __repr__(self) -> str:  # never print a key
        return f"ProviderConfig(name={self.name!r}, type={self.type!r})"


@dataclass(slots=True, frozen=True)
class ServerConfig:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    max_body_bytes: int = 10 * 1024 * 1024
    max_event_bytes: int = 16 * 1024 * 1024
    max_messages: int = 10_000
    max_tools: int = 512
    max_json_depth: int = 64
    max_concurrent_streams: int = 10_000  # per worker; beyond it 503 + Retry-After
    max_header_bytes: int = 8190  # one request line or header field (aiohttp's parser)
    max_headers: int = 128
    timeouts: Timeouts = Timeouts()
    log_level: str = "info"
    # Processes (cli's --workers wins); None: one per CPU (server/workers.py). Set at start.
    workers: int | None = None
    # Seconds without a first upstream event after which SSE comments keep the client's
    # connection alive; once streaming, the time the client may get nothing (a silent pause,
    # or reads that give it nothing: pings) before a comment goes (relay.py). Off by default:
    # sending one commits a 200, so a plan whose targets all fail (fallbacks still run behind
    # it) ends in an error frame, not the error's status (README, Gateway controls: "Timeouts").
    keepalive_interval: float | None = None
    shutdown_grace: float = 30.0  # seconds running requests get on SIGTERM (server/drain.py)
    # Seconds between SIGTERM and the listeners' close: /healthz answers 503 at once while new
    # requests are still served, so a load balancer (a Kubernetes Service) stops sending first.
    drain_delay: float = 0.0
    # The longest gap between two reads of a request's head / body before it is answered 408
    # and its connection closed (server/reading.py; nginx's client_*_timeout).
    client_header_timeout: float = 60.0
    client_body_timeout: float = 60.0
    # The longest a client may leave a response's bytes untaken (its socket full, nothing
    # leaving) before its connection is closed, its stream and upstream request with it
    # (server/send_timeout.py; nginx's send_timeout). None: never.
    send_timeout: float | None = 60.0
    # The HTTP client for upstream requests: the lean one in upstream/http11.py, or aiohttp's
    # (env STREAMPROXY_UPSTREAM_CLIENT overrides this; upstream/client.py).
    upstream_client: str = "native"
    # The HTTP server side for POST /v1/chat/completions: the lean front (server/front.py), or
    # aiohttp's for every request (env STREAMPROXY_FRONT overrides this).
    front: str = "lean"
    # Egress proxy for upstream requests: "env" (HTTPS_PROXY / HTTP_PROXY / ALL_PROXY /
    # NO_PROXY), "none", or {"url": ..., "no_proxy": [...]} (upstream/egress.py).
    upstream_proxy: str | dict[str, Any] = "env"


@dataclass(slots=True, frozen=True)
class Config:
    server: ServerConfig
    providers: dict[str, ProviderConfig]
    default_provider: str | None
    source: str = "<embedded default>"
    sections: dict[str, Any] = field(default_factory=dict)  # later sections, validated by owners


COMMON_PROVIDER_KEYS = {"type", "base_url", "api_key", "api_key_env", "headers",
                        "default_model", "models", "timeouts"}
_TIMEOUT_KEYS = {"connect", "first_token", "idle", "total"}
# Top-level sections owned by other modules; each validates its own.
EXTRA_SECTIONS: set[str] = {"auth", "logging",  # server/auth.py, observe/access_log.py
                             "storage", "cache",  # storage/config.py, cache/config.py
                             # routing/gateway.py
                             "configs", "routes", "default_config", "virtual_keys",
                             "allowed_custom_hosts"}

EMBEDDED_DEFAULT = """
# streamproxy's embedded default: works with no API keys.
providers:
  mock:                 # served in-process; speaks Anthropic's wire format
    type: mock
    default_model: fast
    models: [fast, slow, paced, tool, tools, error]
  mock-openai:          # the same mock, speaking OpenAI's format (pass-through path)
    type: mock
    wire: openai
    default_model: fast
    models: [fast, slow, tool]
  openai:
    type: openai
    base_url: https://api.openai.com/v1
    api_key_env: OPENAI_API_KEY   # unset: the client's own key is forwarded
    default_model: gpt-4o-mini
  anthropic:
    type: anthropic
    base_url: https://api.anthropic.com
    api_key_env: ANTHROPIC_API_KEY
    default_model: claude-sonnet-4-5
default_provider: mock
"""


_MERGE_TAG = "tag:yaml.org,2002:merge"


class _ConfigLoader(yaml.SafeLoader):
    """YAML's safe loader without timestamps: no setting is a date, and one written like a date
    stays the string it reads as (`api_version: 2024-10-21`, `anthropic_version: 2023-06-01`,
    a header value), not a `datetime.date` that fails as "not a string" or reaches the wire.
    A key written twice in one mapping is an error, as YAML's spec says, where PyYAML keeps
    the last silently: two providers given one name would serve as one, unannounced."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        # Compared as the names they are read as (str): `1` and `"1"` both became provider "1".
        seen: dict[str, Any] = {}
        for key_node, _ in node.value:  # (a `<<` merge's keys may be overridden: not these)
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG:
                key = self.construct_object(key_node)
                if (name := str(key)) in seen:
                    first = seen[name]
                    also = "" if first == key else f" ({first!r} and {key!r} are one name)"
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {name!r} in one mapping{also}",
                        key_node.start_mark)
                seen[name] = key
        return super().construct_mapping(node, deep)


_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_config(path: str | os.PathLike[str] | None) -> Config:
    if path is None:
        return parse_config(yaml.load(EMBEDDED_DEFAULT, _ConfigLoader), "<embedded default>")
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(source, "", f"cannot read file: {e.strerror}") from None
    try:  # UTF-8 whatever the locale, as YAML files are; a BOM (Windows editors) dropped
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:  # (a Latin-1 comment): a traceback, and a master's death
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(source, f"line {line}", "not UTF-8 text") from None
    try:
        data = _parse_text(text, source)
        if data is None:  # (not the embedded default: a reload of a truncated file would
            # swap the operator's providers for the mock, and clients' keys go to OpenAI)
            raise ConfigError(source, "", "the file is empty: give at least `providers` "
                              "(without --config, the embedded default is served)")
        return parse_config(data, source)
    except RecursionError:  # thousands of nested brackets: no config is that deep
        raise ConfigError(source, "", "nested too deeply") from None


def _parse_text(text: str, source: str) -> Any:
    """YAML, or JSON: YAML's flow style reads most JSON, but PyYAML takes no tab before a
    token, so a JSON file indented with tabs (jq --tab, Go's MarshalIndent) is read as JSON.
    A `.json` file is JSON alone: re-read as YAML, one with a trailing comma or an unquoted
    key passed here, and failed the next tool that reads it (jq, an editor's schema)."""
    is_json = source.lower().endswith(".json")
    if is_json and not text.strip():
        return None  # (the caller's "the file is empty")
    if is_json or text.lstrip().startswith("{"):
        try:
            return json.loads(text, object_pairs_hook=_json_object, parse_constant=_json_constant)
        except _NotJSON:  # (JSON, but a key twice or a NaN: an error, whatever the file's name)
            raise _json_error(source, _json_problem(text)) from None
        except json.JSONDecodeError as e:  # (elsewhere maybe a YAML flow mapping: `{a: 1}`)
            if is_json:
                raise _json_error(source, e) from None
    try:
        return yaml.load(text, _ConfigLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else ""
        raise ConfigError(source, where, f"invalid YAML: {getattr(e, 'problem', e)}") from None


def _json_error(source: str, e: json.JSONDecodeError) -> ConfigError:
    return ConfigError(source, f"line {e.lineno}", f"invalid JSON: {e.msg} (column {e.colno})")


class _NotJSON(Exception):
    """A key written twice in one object (refused as the YAML loader refuses it: its
    docstring), or Python's NaN / Infinity, which no JSON is: `_json_problem` says where."""


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _NotJSON
    return obj


def _json_constant(name: str) -> Any:
    raise _NotJSON


# A string (a key, with its colon), a non-finite constant, or a bracket: enough to walk JSON
# that the decoder read up to its problem, a string's brackets and colons skipped whole.
_JSON_TOKEN = re.compile(r'("(?:[^"\\]|\\.)*")(\s*:)?|(-?Infinity|NaN)|[{}\[\]]')


def _json_problem(text: str) -> json.JSONDecodeError:
    """The first duplicate key or non-finite number in `text`, as the decoder's error (its
    line and column): the decoder's hooks are given no position. Only on that error path."""
    keys: list[set[str] | None] = []  # per open object its keys; None for an array
    for m in _JSON_TOKEN.finditer(text):
        string, colon, constant = m.groups()
        if constant:
            return json.JSONDecodeError(f"{constant} is no JSON number", text, m.start())
        if string is None:
            if m[0] in "{[":
                keys.append(set() if m[0] == "{" else None)
            elif keys:
                keys.pop()
        elif colon and keys and (seen := keys[-1]) is not None:
            if (key := json.loads(string)) in seen:
                return json.JSONDecodeError(f"duplicate key {key!r} in one mapping", text,
                                            m.start())
            seen.add(key)
    return json.JSONDecodeError("a duplicate key or NaN", text, 0)  # (not reached)


def parse_config(data: Any, source: str) -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, "", "the top level must be a mapping")
    known = {"server", "providers", "default_provider"} | EXTRA_SECTIONS
    # Each top-level key and each provider checked apart, every problem collected.
    errors = [ConfigError(source, str(key), unknown_key(key, known))
              for key in data if key not in known]
    server = ServerConfig()
    try:
        server = _parse_server(unless_null(data.get("server"), {}), source)
    except ConfigError as e:
        errors.extend(each_problem(e))
    providers_raw = data.get("providers")
    providers: dict[str, ProviderConfig] = {}
    if not isinstance(providers_raw, dict) or not providers_raw:
        errors.append(ConfigError(source, "providers",
                                  "must be a non-empty mapping of name → provider"))
        providers_raw = {}
    for n, p in providers_raw.items():
        try:
            providers[str(n)] = _parse_provider(str(n), p, source)
        except ConfigError as e:
            errors.append(e)
    names = [str(n) for n in providers_raw]  # (a provider in error is still configured)
    default = name_reference(data.get("default_provider"))
    if default is not None and (not isinstance(default, str) or default not in names):
        errors.append(ConfigError(source, "default_provider",
                                  f"{default!r} is not a configured provider "
                                  f"(configured: {', '.join(names)})"))
    raise_collected(errors)
    sections = {k: data[k] for k in EXTRA_SECTIONS if k in data}
    return Config(server=server, providers=providers, default_provider=default, source=source,
                  sections=sections)


def name_reference(value: Any) -> Any:
    """A reference to a name as the name's key is read: a number as its text (`1`, as
    `providers: {1: ...}` is provider "1"); anything else as it is, for the caller to check."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


# `${VAR}` (compose files'), `$VAR` (the shell's), `os.environ/VAR` (LiteLLM's config files').
# `$VAR` only with an upper-case name, as environment variables are named: `$ecretPw` is a
# password that begins with a `$` (refused, and echoed in the error, it was neither usable
# nor kept secret).
_ENV_REFERENCE = re.compile(
    r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Z_][A-Z0-9_]*)|os\.environ/([A-Za-z_][A-Za-z0-9_]*)")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def refuse_env_reference(secret: Any, source: str, key: str, env_key: str) -> None:
    """A secret written as a reference to a variable would go upstream as those very
    characters (the provider's 401): nothing here expands one, so it is refused with the key
    that reads the variable."""
    if isinstance(secret, str) and (match := _ENV_REFERENCE.fullmatch(secret.strip())):
        name = next(filter(None, match.groups()))
        raise ConfigError(source, key, f"{secret.strip()} is not expanded here: write "
                          f"{env_key}: {name} to read the environment")


def check_env_name(env: Any, source: str, key: str) -> None:
    """A `*_env` value that is no variable's name named a variable that is never set: serve
    only warned of it, and the client's own key went upstream. A reference
    (`api_key_env: ${OPENAI_API_KEY}`) is refused with the name alone to write instead; any
    other non-name (`api_key_env: sk-proj-...`, the key itself) without its value."""
    if not isinstance(env, str) or not env:  # (the type and emptiness are the caller's)
        return
    # (`None`, a template's rendering of it, named a variable "None": serve warned it unset)
    refuse_null_word(env, source, key)
    if match := _ENV_REFERENCE.fullmatch(env.strip()):
        leaf = key.rpartition(".")[2]
        raise ConfigError(source, key, f"{env.strip()} is not expanded here: write {leaf}: "
                          f"{next(filter(None, match.groups()))}, the variable's name alone")
    if env != env.strip() and _ENV_NAME.fullmatch(env.strip()):  # (a paste's, in quotes)
        raise ConfigError(source, key, "has spaces around it: write the variable's name alone")
    if not _ENV_NAME.fullmatch(env):
        raise ConfigError(source, key, "is no environment variable's name (the key itself? it "
                          "is not shown): write the name of the variable that holds it")


def required_secret(raw: dict[str, Any], source: str, where: str, key: str,
                    env_key: str) -> str:
    """The secret of an entry that is nothing without one (a proxy key, a virtual key): written
    as `key`, or read from the variable `env_key` names, exactly one of them. It fails closed:
    an unset variable is an error, never an entry that acts without its secret."""
    if (key in raw) == (env_key in raw):
        raise ConfigError(source, where, f"give exactly one of `{key}` or `{env_key}`")
    if key in raw:
        secret = raw[key]
        # Stripped as secret_from_env's (a pasted key's space, a newline); spaces alone are
        # no secret (a quoted, unset template variable), refused as the empty string is.
        if not isinstance(secret, str) or not (secret := secret.strip()):
            raise ConfigError(source, f"{where}.{key}", "must be a non-empty string")
        refuse_env_reference(secret, source, f"{where}.{key}", env_key)
        check_secret(secret, source, f"{where}.{key}")
        return secret
    env = raw[env_key]
    if not isinstance(env, str) or not env:
        raise ConfigError(source, f"{where}.{env_key}", "must be an environment variable name")
    check_env_name(env, source, f"{where}.{env_key}")
    secret = secret_from_env(env, source, f"{where}.{env_key}")
    if not secret:
        raise ConfigError(source, f"{where}.{env_key}", f"environment variable {shown_env(env)} "
                          f"{unset_or_empty(env)}")
    return secret


def unset_or_empty(env: str) -> str:
    """Why variable `env` gave no secret: "is not set", or "is empty" when it is set to nothing
    or whitespace alone (an empty secret mount, `export KEY=$UNSET`), not the missing export an
    operator looked for when told "not set"."""
    return "is not set" if os.environ.get(env) is None else "is empty"


# A key that passes as a variable's name (letters, digits and `_` alone): one of the known
# prefixes (Groq's gsk_, Hugging Face's hf_, GitHub's, Replicate's r8_, Google's AIza, AWS's
# access key ids) before a dozen more, or a run of 20 letters and digits that no name's word
# is: with a digit or both cases in it, or 32 long (Cohere's, Mistral's, a hex token).
_KEY_PREFIX = re.compile(r"(?:sk|gsk|hf|ghp|gho|ghs|ghu|github_pat|r8)_[A-Za-z0-9]{12}"
                         r"|(?:AIza|AKIA|ASIA)[A-Za-z0-9_-]{12}")
_LONG_RUN = re.compile(r"[A-Za-z0-9]{20,}")


def shown_env(env: str) -> str:
    """The variable `env` as a message names it: not when it is no variable's name, or looks
    like a key, as the key itself written where its variable's name goes does
    (`api_key_env: sk-proj-...`, or one of letters and digits alone), which check-config
    printed and serve logged."""
    if _ENV_NAME.fullmatch(env) and not (_KEY_PREFIX.match(env) or _looks_random(env)):
        return env
    return "(not shown: it looks like the key itself, not a variable's name)"


def _looks_random(env: str) -> bool:
    return any(len(run) >= 32 or not run.isalpha() or not (run.isupper() or run.islower())
               for run in _LONG_RUN.findall(env))


# A secret goes into a header (Authorization, x-api-key...), which no control character may be
# in: every request to the provider was a 500. Refused as the config loads, never echoed.
_SECRET_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_secret(secret: Any, source: str, key: str) -> None:
    if isinstance(secret, str) and _SECRET_CONTROL.search(secret):
        raise ConfigError(source, key, "holds a control character (a line break?), which no "
                                       "header can carry")


def check_provider_key(secret: Any, source: str, key: str) -> None:
    """A provider's key is ASCII, as every provider issues them: smart quotes pasted from a
    document, a zero-width or non-breaking space went upstream as UTF-8 bytes (the provider's
    401, no hint) or failed as the header was written. Not a proxy key's rule: a client may
    send one as UTF-8, which the server side reads."""
    if isinstance(secret, str) and not secret.isascii():
        raise ConfigError(source, key, "holds a character that is not ASCII (a smart quote, a "
                                       "non-breaking or zero-width space pasted with it?), which "
                                       "no provider's key has; it is not shown")


def secret_from_env(env: str, source: str, key: str) -> str | None:
    """The secret in variable `env`, None when unset or empty. Without the whitespace around
    it: one mounted from a file (a Kubernetes secret) or written with `echo` ends in a newline,
    which no key has."""
    secret = (os.environ.get(env) or "").strip()
    check_secret(secret, source, key)
    return secret or None


def unless_null(value: Any, default: Any) -> Any:
    """`value`, or `default` when it is null (a key written with nothing after it). Not `or`:
    it read any empty value as "not given", so `server: []` or `timeouts: 0` passed silently
    where the type is checked."""
    return default if value is None else value


def positive_seconds(value: Any, source: str, key: str) -> float:
    # Finite: YAML reads .nan and .inf, and both passed `<= 0`; a NaN first-token timeout
    # expired every request at once (a ValueError under uvloop), a NaN idle one cut every
    # stream at its first timer, a NaN total was no cap at all.
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            0 < value < math.inf):
        raise ConfigError(source, key, "must be a positive, finite number of seconds")
    return float(value)


def _number(value: Any, source: str, key: str, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    return positive_seconds(value, source, key)


def parse_timeouts(raw: Any, source: str, key: str) -> dict[str, float | None]:
    if not isinstance(raw, dict):
        raise ConfigError(source, key, "must be a mapping")
    out: dict[str, float | None] = {}
    for k, v in raw.items():
        if k not in _TIMEOUT_KEYS:
            raise ConfigError(source, f"{key}.{k}", unknown_key(k, _TIMEOUT_KEYS,
                                                                "unknown timeout"))
        if k != "total":
            if v is not None:  # (null: not set, the server's or default holds, as `timeouts: ~`)
                out[k] = positive_seconds(v, source, f"{key}.{k}")
        elif v is None or (v == 0 and type(v) is not bool):
            # None: no total, over the server's. 0 as in a client's config (where null is "not
            # set": portkey_config.py), which here was an error; null kept, as configs use it.
            out[k] = None
        elif isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < math.inf:
            raise ConfigError(source, f"{key}.{k}", "must be a positive, finite number of "
                              "seconds, or 0 (or null) for none")
        else:
            out[k] = float(v)
    return out


def _parse_server(raw: Any, source: str) -> ServerConfig:
    if not isinstance(raw, dict):
        raise ConfigError(source, "server", "must be a mapping")
    kwargs: dict[str, Any] = {}
    errors: list[ConfigError] = []  # each key's problem, as check-config lists them
    for k, v in raw.items():
        if v is None and k in _NULL_IS_DEFAULT:  # (`log_level: ~`, or nothing after it)
            continue
        try:
            kwargs[k] = _server_value(k, v, source, f"server.{k}")
        except ConfigError as e:
            errors.append(e)
    raise_collected(errors)
    return ServerConfig(**kwargs)


_SERVER_INTS = {"port", "workers", "max_body_bytes", "max_event_bytes", "max_messages", "max_tools",
                "max_json_depth", "max_concurrent_streams", "max_header_bytes", "max_headers"}


# A server key given null is not set, its default served, as `server: ~` is; but send_timeout's
# null is a value of its own (never), not its default 60 s.
_NULL_IS_DEFAULT = set(ServerConfig.__dataclass_fields__) - {"send_timeout"}


def _server_value(k: str, v: Any, source: str, key: str) -> Any:
    if k in _SERVER_INTS:
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ConfigError(source, key, "must be a positive integer")
        if k == "port" and v > MAX_PORT:  # (the socket layer would wrap it: 70000 → 4464)
            raise ConfigError(source, key, f"must be a port number, 1 to {MAX_PORT}")
        if k == "max_json_depth" and v > MAX_JSON_DEPTH:
            raise ConfigError(source, key, f"must be at most {MAX_JSON_DEPTH}")
        return v
    elif k == "host":
        if not isinstance(v, str):
            raise ConfigError(source, key, "must be a string")
        try:
            return listen_host(v)
        except ValueError as e:
            raise ConfigError(source, key, str(e)) from None
    elif k == "log_level":  # any case, as env STREAMPROXY_LOG_LEVEL
        if not isinstance(v, str) or v.lower() not in LOG_LEVELS:
            raise ConfigError(source, key, f"must be one of {', '.join(LOG_LEVELS)}")
        return v.lower()
    elif k == "timeouts":
        return Timeouts().merged(parse_timeouts(v, source, key))
    elif k == "keepalive_interval":
        return _number(v, source, key, allow_none=True)
    elif k in ("client_header_timeout", "client_body_timeout"):
        return _number(v, source, key)
    elif k == "upstream_client":
        if v not in ("aiohttp", "native"):
            raise ConfigError(source, key, "must be one of aiohttp, native")
        return v
    elif k == "upstream_proxy":
        return _upstream_proxy(v, source, key)
    elif k == "front":
        if v not in ("aiohttp", "lean"):
            raise ConfigError(source, key, "must be one of aiohttp, lean")
        return v
    elif k == "shutdown_grace":
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < math.inf:
            raise ConfigError(source, key, "must be a finite number of seconds, 0 or more")
        return float(v)
    elif k == "send_timeout":  # 0 or null: off
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)
                              or not 0 <= v < math.inf):  # (NaN fails both)
            raise ConfigError(source, key, "must be a finite number of seconds, 0 or null "
                              "for none")
        return float(v) if v else None
    elif k == "drain_delay":
        if isinstance(v, bool) or not isinstance(v, int | float) or not (
                0 <= v <= MAX_DRAIN_DELAY):  # (NaN fails both)
            raise ConfigError(source, key,
                              f"must be a finite number of seconds, 0 to {MAX_DRAIN_DELAY}")
        return float(v)
    else:
        raise ConfigError(source, key, unknown_key(k, ServerConfig.__dataclass_fields__))


def _upstream_proxy(value: Any, source: str, key: str) -> str | dict[str, Any]:
    from streamproxy.upstream.egress import check_no_proxy, parse_proxy_url

    # Any case, as log_level: `None` (YAML's null is `null` or `~`) read as a bare `host` named a
    # proxy at none:80 for every upstream.
    if isinstance(value, str) and value.strip().lower() in ("env", "none"):
        return value.strip().lower()
    if isinstance(value, str):
        value = {"url": value}
    if not isinstance(value, dict) or set(value) - {"url", "no_proxy"} or "url" not in value:
        raise ConfigError(source, key, "must be env, none, a proxy URL, or a mapping with "
                          "url and (optionally) no_proxy")
    if not isinstance(value["url"], str):  # (as its text, `3` or null named a proxy host)
        raise ConfigError(source, f"{key}.url", "must be a string (http://[user:pass@]host"
                          "[:port])")
    try:
        parse_proxy_url(value["url"])
    except ValueError as e:
        raise ConfigError(source, f"{key}.url", str(e)) from None
    no_proxy = value.get("no_proxy", [])
    if isinstance(no_proxy, str):
        no_proxy = no_proxy.split(",")
    if not isinstance(no_proxy, list) or not all(isinstance(e, str) for e in no_proxy):
        raise ConfigError(source, f"{key}.no_proxy", "must be a list of hosts, domains, "
                          "addresses or CIDR blocks")
    try:
        check_no_proxy(no_proxy)
    except ValueError as e:
        raise ConfigError(source, f"{key}.no_proxy", str(e)) from None
    return {"url": value["url"], "no_proxy": no_proxy}


# A cloud region (AWS's us-east-1, Vertex's us-central1 or global): it becomes part of the
# provider's host name, so never a '.' (`x.s3`: bedrock-runtime.x.s3.amazonaws.com, an S3
# bucket's host), '/', ':' or '@'.
REGION = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,62}")
REGION_RULE = "a region name of letters, digits and '-' (e.g. us-east-1)"
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an RFC 9110 token
_HEADER_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # (a tab may be in a value)
# `${VAR}` or `os.environ/VAR` within a header value (`Bearer ${TOKEN}`); not `$VAR`, which a
# value may hold as it is (a password's `$`).
_EMBEDDED_ENV_REFERENCE = re.compile(
    r"\$\{[A-Za-z_][A-Za-z0-9_]*\}|os\.environ/[A-Za-z_][A-Za-z0-9_]*")
_SHELL_REFERENCE = re.compile(r"\$[A-Z_][A-Z0-9_]*")  # (as _ENV_REFERENCE reads `$VAR`)
_NOT_IN_BASE_URL = re.compile(r"[?#\s\x00-\x1f\x7f]")


def _parse_headers(raw: Any, source: str, key: str) -> dict[str, str]:
    """A provider's extra upstream headers. Lowercase, as the providers write the headers they
    set: `Authorization` here then replaces (or yields to) their `authorization` rather than
    going as a second one. A name that is no HTTP token or a value with a CR or LF would
    split the request head: both HTTP clients refuse it as it is sent, a 500 for every
    request to the provider, so it is refused here with the header's name."""
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise ConfigError(source, key, "must be a mapping of strings")
    for name, value in raw.items():
        if not _HEADER_NAME.fullmatch(str(name)):
            raise ConfigError(source, f"{key}.{name}", "is not a header name (RFC 9110 token)")
        if _HEADER_CONTROL.search(value):  # (the value is not echoed: it may be a secret)
            raise ConfigError(source, f"{key}.{name}",
                              "a header value may not hold a control character (CR, LF, ...)")
        if ref := _EMBEDDED_ENV_REFERENCE.search(value):  # (the reference alone is echoed)
            raise ConfigError(source, f"{key}.{name}", f"{ref[0]} is not expanded here: the "
                              "header would go upstream as those very characters (a provider's "
                              "key is read from the environment by api_key_env)")
    # Not accept-encoding: the upstream client asks for the codings it decodes (a `br` here
    # invited an answer it refuses), and Bedrock's SigV4 would sign one it replaces.
    return {str(k).lower(): v for k, v in raw.items() if str(k).lower() != "accept-encoding"}


def refuse_reference(value: Any, source: str, key: str, what: str = "the model's name") -> None:
    """A name written as a variable (a template's `${DEFAULT_MODEL}`): nothing expands it, and
    it went upstream as those characters, the provider's 404 for every request that named no
    model. No model's (deployment's, API version's) name holds one."""
    if isinstance(value, str) and (ref := _EMBEDDED_ENV_REFERENCE.search(value)
                                   or _ENV_REFERENCE.fullmatch(value)):
        raise ConfigError(source, key, f"{ref[0]} is not expanded here: write {what}")
    refuse_null_word(value, source, key)


# A null written as a word YAML reads as a string: Python's `None` (a template's rendering of
# it) or a quoted `"null"`. No name or URL is one, so it is refused where it would go upstream.
_NULL_WORDS = frozenset({"none", "null"})


def refuse_null_word(value: Any, source: str, key: str) -> None:
    if isinstance(value, str) and value.strip().lower() in _NULL_WORDS:
        leaf = key.rpartition(".")[2]
        raise ConfigError(source, key, f"`{value.strip()}` is a string here, not YAML's null "
                          f"(`~` or `null`, unquoted): give a value, or leave {leaf} out")


def _check_base_url(url: str, source: str, key: str) -> None:
    """An http(s) URL with a host and a port that is one: `http://` alone or a port beyond
    65535 passed, then every request to the provider was a 500 with a traceback."""
    # (`http://${OLLAMA_HOST}:11434` passed as a URL whose host is those characters; `$VAR`
    # looked for after the user info alone, in the host, path and query: a password in the
    # URL may hold a `$`, and is not echoed)
    authority, slash, path = url.partition("://")[2].partition("/")
    after_userinfo = authority.rpartition("@")[2] + slash + path
    if ref := _EMBEDDED_ENV_REFERENCE.search(url) or _SHELL_REFERENCE.search(after_userinfo):
        raise ConfigError(source, key, f"{ref[0]} is not expanded here: write the URL itself")
    # The provider's paths are appended to it: after a '?' they were the query, after a '#'
    # dropped (POST /v1?...), and a space (a paste's, quoted) went as %20: the provider's 404
    # on every request. Refused as a custom_host's are; the URL is not echoed (its user info).
    if bad := _NOT_IN_BASE_URL.search(url):
        what = {"?": "a query ('?')", "#": "a fragment ('#')"}.get(
            bad[0], "a space or control character")
        raise ConfigError(source, key, f"holds {what}: give the URL the provider's paths "
                          "(/chat/completions, ...) are appended to")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(source, key, "must start with http:// or https://")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises for a port that is not a number, or out of range
    except ValueError:  # (not its text: in `https://user:secret` the "port" is the secret)
        reason = "has a port that is not a number from 0 to 65535"
        raise ConfigError(source, key, reason) from None
    if not parts.hostname:
        raise ConfigError(source, key, "names no host")


def _check_base_url_ending(url: Any, cls: Any, source: str, key: str) -> None:
    """A base_url that ends in (part of) the path its type appends (Provider.api_path)."""
    if not isinstance(url, str):
        return
    path = url.rstrip("/").lower()
    for ending in cls.base_url_endings:
        if path.endswith(ending):
            raise ConfigError(source, key, f"ends in {ending}, and type {cls.type_name} "
                              f"appends {cls.api_path} to base_url: leave {ending} out")


def _parse_provider(name: str, raw: Any, source: str) -> ProviderConfig:
    from streamproxy.providers.registry import PROVIDER_TYPES, type_for_prefix

    where = f"providers.{name}"
    if "/" in name or not name:
        raise ConfigError(source, where, "a provider name may not be empty or contain '/'")
    if not isinstance(raw, dict):
        raise ConfigError(source, where, "must be a mapping")
    ptype = raw.get("type")
    if not isinstance(ptype, str) or ptype not in PROVIDER_TYPES:
        meant = type_for_prefix(ptype) if isinstance(ptype, str) else None  # (OneLLM's names)
        raise ConfigError(source, f"{where}.type", unknown_key(
            ptype, PROVIDER_TYPES, f"unknown provider type {ptype!r}", meant))
    cls = PROVIDER_TYPES[ptype]
    if isinstance(raw.get("base_url"), str) and not raw["base_url"].strip():
        # (read as "not given", a template's unset variable sent the key meant for a local
        # server, and every prompt, to the type's default: api.openai.com)
        raise ConfigError(source, f"{where}.base_url", "is empty: give the URL, or leave "
                          "base_url out for the type's default")
    refuse_null_word(raw.get("base_url"), source, f"{where}.base_url")  # (not api_key's:
    # `api_key: none` is a dummy a keyless local server is given)
    options = {k: v for k, v in raw.items() if k not in COMMON_PROVIDER_KEYS}
    cls.check_options(options, source, where)
    cls.check_entry(raw, source, where)
    _check_base_url_ending(raw.get("base_url"), cls, source, f"{where}.base_url")
    for key in ("base_url", "api_key", "api_key_env", "default_model"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise ConfigError(source, f"{where}.{key}", "must be a string")
    headers = _parse_headers(unless_null(raw.get("headers"), {}), source, f"{where}.headers")
    models = unless_null(raw.get("models"), [])
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise ConfigError(source, f"{where}.models", "must be a list of model names")
    for key, model in [("default_model", raw.get("default_model")),
                       *((f"models[{i}]", m) for i, m in enumerate(models))]:
        refuse_reference(model, source, f"{where}.{key}")
    for key in ("api_key", "api_key_env"):
        if isinstance(raw.get(key), str) and not raw[key].strip():
            # (an unset template variable, most likely: read as "no key", the client's own
            # key went upstream, and an api_key_env beside it was ignored; fail closed)
            raise ConfigError(source, f"{where}.{key}", "is empty: give it, or leave it out "
                              "(with neither api_key nor api_key_env, the client's key is "
                              "forwarded)")
    if raw.get("api_key") is not None and raw.get("api_key_env") is not None:
        # (one was used silently, the inline key: a rotated variable was never read)
        raise ConfigError(source, where, "give one of `api_key` or `api_key_env`, not both")
    check_env_name(raw.get("api_key_env"), source, f"{where}.api_key_env")
    api_key = raw.get("api_key")
    if isinstance(api_key, str):  # (a paste's space, a block scalar's newline: no key has
        api_key = api_key.strip()  # one; sent, the provider's 401, as from the environment)
    refuse_env_reference(api_key, source, f"{where}.api_key", "api_key_env")
    check_secret(api_key, source, f"{where}.api_key")
    if api_key is None and raw.get("api_key_env"):
        api_key = secret_from_env(raw["api_key_env"], source, f"{where}.api_key_env")
        check_provider_key(api_key, source, f"{where}.api_key_env")
    else:
        check_provider_key(api_key, source, f"{where}.api_key")
    base_url = raw.get("base_url") or cls.default_base_url
    if base_url is not None:
        _check_base_url(base_url, source, f"{where}.base_url")
    return ProviderConfig(
        name=name,
        type=ptype,
        base_url=base_url.rstrip("/") if base_url else None,
        api_key=api_key,
        api_key_env=raw.get("api_key_env") or None,
        headers=headers,
        default_model=raw.get("default_model"),
        models=tuple(models),
        timeouts=parse_timeouts(unless_null(raw.get("timeouts"), {}), source, f"{where}.timeouts"),
        options=options,
    )
