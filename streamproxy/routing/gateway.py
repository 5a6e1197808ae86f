"""Gateway controls: which config tree a request runs, and how its leaves become Targets.

YAML sections owned here:

    configs:              # named Portkey configs; `x-portkey-config: <name>` selects one
      resilient: {strategy: {mode: fallback}, targets: [...]}
    routes:               # a model alias → a named config (`model: "smart"`)
      smart: resilient
    default_config: resilient   # for requests that name no provider and no config
    virtual_keys:         # `virtual_key: openai-prod` in a config → provider + secret
      openai-prod: {provider: openai, api_key_env: OPENAI_PROD_KEY}
    allowed_custom_hosts: [api.example.com, "https://llm.example.com"]  # custom_host allow-list

Precedence for a request: the `x-portkey-config` header; a route for its model; an explicit
provider (`x-portkey-virtual-key` or `x-portkey-provider` header, or model prefix; an `@name`
naming a virtual key, not a provider, is that key: Portkey's Model Catalog);
`default_config`; the plain default provider. OneLLM's body fields `fallback_models` /
`retries` build an implicit fallback config, whose primary runs the config that applies
(the header's, a route's, `default_config`) when one does. The headers the
portkey-ai SDK sends for its client options apply to every target, over the config's
fields, as in Portkey: `x-portkey-custom-host` (allowed hosts only, as `custom_host`),
`x-portkey-forward-headers`, `x-portkey-request-timeout`. Its provider settings
(`x-portkey-aws-region`, `x-portkey-vertex-region`, `x-portkey-openai-organization` & co.,
Azure's `x-portkey-azure-resource-name` & co., `x-portkey-anthropic-beta` & co.) apply to
the targets whose provider type takes them, unless the config's target sets its own. An
Azure resource is another tenant's host, as a custom_host is: one other than the provider's
takes the gateway's key only when allowed.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import orjson

from streamproxy.config import (
    Config,
    ConfigError,
    Timeouts,
    check_provider_key,
    name_reference,
    refuse_env_reference,
    refuse_null_word,
    required_secret,
    unknown_key,
    unless_null,
)
from streamproxy.errors import InvalidRequest, UnknownProvider
from streamproxy.openai_api.request import ChatRequest, check_depth
from streamproxy.providers.base import Provider
from streamproxy.providers.registry import PROVIDER_TYPES
from streamproxy.routing.breaker import CircuitBreakers
from streamproxy.routing.planner import NO_RETRY, Plan, plan, reachable_leaves, single
from streamproxy.routing.portkey_config import (
    DEFAULT_RETRY_CODES,
    MAX_CLIENT_TRIES,
    PROVIDER_OPTION_KEYS,
    BreakerSpec,
    ConfigNode,
    RetrySpec,
    client_made,
    custom_host_error,
    most_tries,
    operators_form,
    option_value_error,
    parse_config,
)
from streamproxy.routing.router import PROVIDER_HEADER, Router, client_key, routed_model
from streamproxy.routing.target import Target

CONFIG_HEADER = "x-portkey-config"
VIRTUAL_KEY_HEADER = "x-portkey-virtual-key"
CUSTOM_HOST_HEADER = "x-portkey-custom-host"
FORWARD_HEADERS_HEADER = "x-portkey-forward-headers"  # comma-separated header names
# Never forwarded, whoever lists them: framing and hop-by-hop headers, the proxy key, and
# accept-encoding (the proxy reads the upstream's body itself: the native client asks for
# identity and drops it, after Bedrock's SigV4 had signed it).
_UNFORWARDABLE = frozenset({"host", "content-length", "transfer-encoding", "connection",
                            "keep-alive", "te", "trailer", "upgrade", "expect",
                            "proxy-authorization", "proxy-connection", "x-portkey-api-key",
                            "accept-encoding"})
METADATA_HEADER = "x-portkey-metadata"
_VIRTUAL_KEY_FIELDS = frozenset({"provider", "api_key", "api_key_env"})
# `url.pathname` in conditions: the one chat that plans, the Azure-shaped route's too (a config
# written for the chat routes it alike)
CHAT_PATH = "/v1/chat/completions"
# The AzureOpenAI SDK's path for the same (served as it, the deployment as the model); a
# deployment may hold a '/' (`provider/model`, which the SDK's `azure_deployment` sends unquoted).
DEPLOYMENT_CHAT_ROUTE = "/openai/deployments/{deployment:.+}/chat/completions"
# Azure's v1 API's path for the same, which the plain openai client with base_url
# `{endpoint}/openai/v1` calls (the model in the body, as here): the chat route itself.
AZURE_V1_CHAT_PATH = "/openai/v1/chat/completions"
TIMEOUT_HEADER = "x-portkey-request-timeout"  # milliseconds until the answer starts (then 408)
# The portkey-ai SDK's `aws_region` & co. arrive as `x-portkey-aws-region` & co.; Azure's
# (`azure_resource_name` …, a config's `resource_name` …) as `x-portkey-azure-resource-name` ….
_AZURE_OPTIONS = ("resource_name", "deployment_id", "api_version")
PROVIDER_OPTION_HEADERS = {
    name: "x-portkey-" + ("azure-" if name in _AZURE_OPTIONS else "") + name.replace("_", "-")
    for name in PROVIDER_OPTION_KEYS}
# As in Portkey, Anthropic's own header names set its options too (the x-portkey-* one wins).
_PROVIDERS_OWN_HEADERS = {"anthropic_version": "anthropic-version",
                          "anthropic_beta": "anthropic-beta"}
# What moves OneLLM's fallback_models on: its FallbackConfig's retriable errors (rate limit,
# service unavailable, bad gateway, timeout: 408 and our 504), not an invalid request or a bad
# key, which it raises at once (each fallback would be asked in vain, the primary's error lost).
_ONELLM_FALLBACK_CODES = sorted(DEFAULT_RETRY_CODES | {408})


@dataclass(frozen=True, slots=True)
class VirtualKey:
    provider: str
    api_key: str

    def __repr__(self) -> str:  # never print the secret
        return f"VirtualKey(provider={self.provider!r})"


@dataclass(slots=True)
class GatewaySettings:
    configs: dict[str, ConfigNode] = field(default_factory=dict)
    routes: dict[str, str] = field(default_factory=dict)
    default_config: str | None = None
    virtual_keys: dict[str, VirtualKey] = field(default_factory=dict)
    allowed_hosts: frozenset[str] = frozenset()  # host[:port], or scheme://host[:port]


def load_settings(config: Config) -> GatewaySettings:
    src, sections = config.source, config.sections
    settings = GatewaySettings()
    raw_configs = unless_null(sections.get("configs"), {})
    if not isinstance(raw_configs, dict):
        raise ConfigError(src, "configs", "must be a mapping of name → Portkey config")
    for name, raw in raw_configs.items():
        try:
            settings.configs[str(name)] = parse_config(operators_form(raw), "config")
        except InvalidRequest as e:
            raise ConfigError(src, f"configs.{name}", e.message) from None
    raw_routes = unless_null(sections.get("routes"), {})
    if not isinstance(raw_routes, dict):
        raise ConfigError(src, "routes", "must map model aliases to names under configs")
    for alias, name in raw_routes.items():
        if not _names_config(name_reference(name), settings):
            raise ConfigError(src, f"routes.{alias}", f"{name!r} is not under configs")
    settings.routes = {str(k): name_reference(v) for k, v in raw_routes.items()}
    default = name_reference(sections.get("default_config"))
    if default is not None and not _names_config(default, settings):
        raise ConfigError(src, "default_config", f"{default!r} is not under configs")
    settings.default_config = default
    raw_keys = unless_null(sections.get("virtual_keys"), {})
    if not isinstance(raw_keys, dict):
        raise ConfigError(src, "virtual_keys", "must be a mapping")
    for name, raw in raw_keys.items():
        where = f"virtual_keys.{name}"
        if not isinstance(raw, dict):  # (the secret alone, most likely: not echoed)
            raise ConfigError(src, where, "must be a mapping with provider, and api_key or "
                              "api_key_env")
        # Its keys first: a misspelt `provider` read as none, "must name a configured
        # provider" for an entry that named one, and the typo unnamed.
        _check_virtual_fields(raw, src, where)
        provider = name_reference(raw.get("provider"))
        if not isinstance(provider, str) or provider not in config.providers:
            raise ConfigError(src, f"{where}.provider",
                              f"must name a configured provider ({', '.join(config.providers)})")
        settings.virtual_keys[str(name)] = VirtualKey(provider, _virtual_secret(raw, src, where))
    hosts = unless_null(sections.get("allowed_custom_hosts"), [])
    if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
        raise ConfigError(src, "allowed_custom_hosts", "must be a list of host[:port] names")
    settings.allowed_hosts = frozenset(_allowed_entry(h, src, f"allowed_custom_hosts[{i}]")
                                       for i, h in enumerate(hosts))
    for name, node in settings.configs.items():
        _check_override_model(node, config.source, f"configs.{name}")
        for leaf in node.leaves():
            _check_leaf_static(leaf, settings, config, f"configs.{name}")
    return settings


def _check_override_model(node: ConfigNode, src: str, where: str) -> None:
    """An operator's `override_params.model` written `None` (a template's rendering of it) or a
    quoted "null" went upstream as that model for every request: refused as a provider's
    default_model is. Parents first, so the node that wrote it is named (its targets inherit it)."""
    refuse_null_word(node.override_params.get("model"), src,
                     f"{where}: {node.field_path('override_params')}.model")
    for target in node.targets:
        _check_override_model(target, src, where)


# A virtual key's secret is for its own provider: a target naming another beside it sent that
# secret there (an inline config could hand any virtual key's secret to any provider). Refused
# as the config loads for a named config (_check_leaf_static), per request for an inline one.
_VKEY_PROVIDER_RULE = "names another provider than its virtual_key's, whose secret is for that one"


def _names_other_than_key(leaf: ConfigNode, key_provider: str,
                          providers: Mapping[str, Any], keys: Mapping[str, VirtualKey]) -> bool:
    """Whether `leaf` names a provider other than `key_provider`, its virtual key's (its
    `@name` naming that same key names no other)."""
    return (bool(leaf.provider) and leaf.provider.removeprefix("@") != key_provider
            and catalog_key(leaf.provider, providers, keys) != leaf.virtual_key)


def catalog_key(name: str | None, providers: Mapping[str, Any],
                keys: Mapping[str, VirtualKey]) -> str | None:
    """The virtual key `@name` addresses, as Portkey's Model Catalog names an AI provider (its
    successor to virtual keys) by `@slug` — in x-portkey-provider, a config's `provider` and
    a model's `@slug/` prefix; only with the `@`, which a model id's own prefix rarely has,
    and only when no provider has the name (a provider of that name wins)."""
    if not name or name[:1] != "@":
        return None
    name = name[1:]
    return name if name not in providers and name in keys else None


_SPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f]")


def _allowed_entry(entry: str, src: str, where: str) -> str:
    """An allow-list entry as `_allowed_url` looks it up: host[:port], any HTTP scheme; or
    scheme://host[:port], that scheme alone (an entry written https:// used to match nothing)."""
    if _SPACE_OR_CONTROL.search(entry):  # (matched no custom_host, which holds none, in silence)
        raise ConfigError(src, where, "holds a space or control character: write host[:port] "
                                      "alone")
    host = _host_of(entry)
    scheme = entry.split("://", 1)[0].lower() if "://" in entry else None
    written = entry.lower().rstrip("/") if scheme else entry.lower()
    # (a path, query or port 0 / over 65535 in an entry matched no request, in silence)
    if not host or (f"{scheme}://{host}" if scheme else host) != written:
        raise ConfigError(src, where, "must be host[:port], or http:// or https:// and "
                                      "host[:port] (no path)")
    if not _port_ok(host):
        raise ConfigError(src, where, "has a port outside 1-65535")
    canonical = _joined(*_canonical(host, scheme))
    return f"{scheme}://{canonical}" if scheme else canonical


_DEFAULT_PORTS = {"http": "80", "https": "443"}
_NETLOC = re.compile(r"(?P<user>.*@)?(?P<host>\[[^\]]*\]|[^:]*)(?::(?P<port>\d*))?")


def _canonical(netloc: str, scheme: str | None) -> tuple[str, str | None]:
    """host[:port] as the allow-list compares it, as (userinfo and host, port or None): a
    name's trailing root dot dropped (`h.` is `h`), and the scheme's default port
    (`https://h:443` is `https://h`) — the same server written two ways, where an entry
    written one way refused a custom_host written the other."""
    m = _NETLOC.fullmatch(netloc)
    if m is None:
        return netloc, None
    host, port = m["host"], m["port"]
    if not host.startswith("["):
        host = host.rstrip(".") or host
    if scheme is not None and port == _DEFAULT_PORTS.get(scheme):
        port = None
    return f"{m['user'] or ''}{host}", port


def _joined(host: str, port: str | None) -> str:
    return host if port is None else f"{host}:{port}"


def _port_ok(host: str) -> bool:
    """Whether host[:port] has no port, or one from 1 to 65535."""
    try:
        port = urlsplit(f"//{host}").port
    except ValueError:
        return False
    return (port is None and not host.endswith(":")) or (port is not None and port > 0)


def _check_virtual_fields(raw: dict[str, Any], src: str, where: str) -> None:
    """A virtual key entry's keys: known ones (a typo named, with the key it most likely
    misspells), each a string or null."""
    for key in raw:
        if key not in _VIRTUAL_KEY_FIELDS:
            raise ConfigError(src, f"{where}.{key}", unknown_key(key, _VIRTUAL_KEY_FIELDS))
    for key, value in raw.items():
        if key != "provider" and value is not None and not isinstance(value, str):
            raise ConfigError(src, f"{where}.{key}", "must be a string")


def _virtual_secret(raw: dict[str, Any], src: str, where: str) -> str:
    """A virtual key's secret, once its entry's fields are checked (_check_virtual_fields)."""
    # A virtual key is its secret: without one the provider's key, or the client's own, would
    # go upstream in its name.
    secret = required_secret(raw, src, where, "api_key", "api_key_env")
    check_provider_key(secret, src, f"{where}.{'api_key' if 'api_key' in raw else 'api_key_env'}")
    return secret


def _names_config(name: Any, settings: GatewaySettings) -> bool:
    return isinstance(name, str) and name in settings.configs


def _check_leaf_static(leaf: ConfigNode, settings: GatewaySettings, config: Config,
                       where: str) -> None:
    keys = settings.virtual_keys
    at_key = catalog_key(leaf.provider, config.providers, keys)
    provider = "" if at_key else (leaf.provider or "").removeprefix("@")
    if provider and provider not in config.providers:
        raise ConfigError(config.source, f"{where}: {leaf.path}.provider",
                          f"'{provider}' is not a configured provider")
    if leaf.virtual_key and leaf.virtual_key not in settings.virtual_keys:
        raise ConfigError(config.source, f"{where}: {leaf.field_path('virtual_key')}",
                          f"'{leaf.virtual_key}' is not under virtual_keys")
    # A target's own key reads no environment: a virtual key does.
    refuse_env_reference(leaf.api_key, config.source, f"{where}: {leaf.field_path('api_key')}",
                         "a virtual key's api_key_env")
    if leaf.custom_host and not _allowed_url(leaf.custom_host, settings):
        # every request through this target would be refused (the 400 of Gateway._custom_host)
        raise ConfigError(config.source, f"{where}: {leaf.field_path('custom_host')}",
                          f"'{_shown_host(leaf.custom_host)}' is not under "
                          "allowed_custom_hosts")
    if leaf.virtual_key and _names_other_than_key(
            leaf, keys[leaf.virtual_key].provider, config.providers, keys):
        raise ConfigError(config.source, f"{where}: {leaf.path}.provider", _VKEY_PROVIDER_RULE)
    vk_name = leaf.virtual_key or at_key
    provider = provider or (keys[vk_name].provider if vk_name else "")
    if provider and provider in config.providers:
        type_name = config.providers[provider].type
        for name in leaf.provider_options:
            if PROVIDER_TYPES[type_name].target_option(name) is None:
                raise ConfigError(config.source, f"{where}: {leaf.field_path(name)}",
                                  _option_misplaced(leaf.field_path(name), provider, type_name))
        _check_tenant_static(leaf, settings, config, where, provider)


def _check_tenant_static(leaf: ConfigNode, settings: GatewaySettings, config: Config,
                         where: str, provider: str) -> None:
    """A named config's Azure resource outside allowed_custom_hosts, for a key the gateway
    holds: every request through the target would be refused (Gateway._refuse_other_tenant)."""
    entry = config.providers[provider]
    cls = PROVIDER_TYPES[entry.type]
    name = cls.tenant_option
    if name is None or name not in leaf.provider_options:
        return
    if not (leaf.api_key or leaf.virtual_key or entry.api_key or entry.api_key_env):
        return  # the client's own key goes upstream
    configured = cls(entry)
    moved = configured.with_options({cls.target_options[name]: leaf.provider_options[name]})
    url = _tenant_url(configured, moved)
    if url is not None and not _allowed_url(url, settings):
        raise ConfigError(config.source, f"{where}: {leaf.field_path(name)}",
                          f"'{_shown_host(url)}' is not under allowed_custom_hosts (the key sent "
                          "there is the gateway's)")


def _host_of(url: str) -> str | None:
    """The host[:port] a custom_host names; None when urlsplit refuses it as a URL (an
    unclosed '[', a host that NFKC normalisation changes: its ValueError was a 500) or its
    scheme is not HTTP's (the upstream client's error for `ftp://` was a 500 too)."""
    try:
        parts = urlsplit(url if "://" in url else f"https://{url}")
    except ValueError:
        return None
    if parts.scheme not in ("http", "https"):
        return None
    return (parts.netloc or "").lower()


# A URL's or a host[:port]'s user info, to the host part's last @ (as urlsplit reads it)
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)?[^/?#]*@")


def _shown_host(url: str) -> str:
    """The host[:port] a custom_host names, for a message (the value itself when it names
    none), without its user info: a Basic auth password, which config errors printed to
    terminals and CI logs."""
    return _USERINFO.sub(lambda m: m[1] or "", _host_of(url) or url, count=1)


def _allowed_url(url: str, settings: GatewaySettings) -> bool:
    """Whether allowed_custom_hosts lists where `url` goes: its host[:port], or its
    scheme://host[:port] — so an entry written https:// keeps the gateway's key off a plain
    http:// to the same host."""
    netloc = _host_of(url)
    if netloc is None:
        return False
    scheme = url.split("://", 1)[0].lower() if "://" in url else "https"
    host, port = _canonical(netloc, scheme)  # (port None: the scheme's default)
    hosts = settings.allowed_hosts
    if port is None and f"{host}:{_DEFAULT_PORTS[scheme]}" in hosts:
        return True  # (a scheme-less entry keeps its port as written: `h:443` is https://h)
    written = _joined(host, port)
    return written in hosts or f"{scheme}://{written}" in hosts


def _tenant_url(configured: Provider, provider: Provider) -> str | None:
    """The base URL `provider` (`configured` with a target's options) goes to when its host is
    not the configured one's; None when the same (a configured base_url keeps it, too)."""
    url = provider.base_url
    return None if _host_of(url) == _host_of(configured.base_url) else url


class Gateway:
    """Turns a request into a Plan. Pure apart from the RNG and the breakers it is given."""

    def __init__(self, router: Router, settings: GatewaySettings, breakers: CircuitBreakers,
                 rng: random.Random | None = None) -> None:
        self.router = router
        self.settings = settings
        router.virtual_keys = tuple(settings.virtual_keys)
        self.breakers = breakers
        self.rng = rng or random.Random()
        self._operator_models = _operator_models(router, settings)

    def operator_upstream_models(self) -> set[str]:
        """The models the operator names, as a provider is asked for them (the metrics'
        `model` label): a `name/` or `@name/` prefix naming a provider or virtual key dropped,
        as routing drops it."""
        names = set(self._operator_models)
        for model in self._operator_models:
            head, _, rest = model.partition("/")
            head = head.removeprefix("@")
            if rest and (head in self.router.providers or head in self.settings.virtual_keys):
                names.add(rest)
        return names

    # -- which tree ----------------------------------------------------------------------------
    def root_for(self, headers: Mapping[str, str], req: ChatRequest) -> ConfigNode | None:
        header = headers.get(CONFIG_HEADER)
        if header:
            config = self._header_config(header)
            if not (req.fallback_models or req.retries):
                return config
            # OneLLM's fields keep working beside it, as beside a route: the config is the
            # primary (they were dropped in silence); a client's is capped with their additions.
            inline = _inline_config(headers)
            if req.fallback_models:
                return self._onellm_fallbacks(self._named_by_headers(headers), req, config,
                                              inline)
            root = _with_retries(config, req.retries)
            return client_made(root) if inline else root
        model = req.model
        if model in self.settings.routes and not req.fallback_models:
            # OneLLM's retries go on its targets, as on a default config's (below)
            return _with_retries(self.settings.configs[self.settings.routes[model]],
                                 req.retries)
        named = self._named_by_headers(headers)
        if req.fallback_models:
            return self._onellm_fallbacks(named, req)
        if not named and (vk := self._model_key(model)):
            named = {"virtual_key": vk}
        if "virtual_key" in named:
            # The plain path knows no virtual keys: one target resolved as a config's.
            raw: dict[str, Any] = dict(named)
            if req.retries:
                raw["retry"] = {"attempts": req.retries}
            return parse_config(raw, "config")
        default = self.settings.default_config
        if default and not (named or self.router.split_model(model)[0]):  # nothing explicit
            return _with_retries(self.settings.configs[default], req.retries)
        return None  # (an unknown `@name/` prefix is refused by the router's resolve)

    def _named_by_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """The target the request's headers name, as a config target's fields: a virtual key
        (which names its provider and holds its secret), else a provider."""
        vkey = headers.get(VIRTUAL_KEY_HEADER)
        if vkey:
            self._virtual_key(vkey, VIRTUAL_KEY_HEADER)
            return {"virtual_key": vkey}
        name = headers.get(PROVIDER_HEADER)
        if not name:
            return {}
        if vk := self._at_key(name):
            return {"virtual_key": vk}
        name = name.removeprefix("@")
        if name not in self.router.providers:
            raise UnknownProvider(f"Unknown provider '{name}' in {PROVIDER_HEADER}. "
                                  f"{self.router.known_names()}", param=PROVIDER_HEADER)
        return {"provider": name}

    def _onellm_fallbacks(self, named: dict[str, str], req: ChatRequest,
                          primary: ConfigNode | None = None, inline: bool = False) -> ConfigNode:
        """OneLLM's `fallback_models` (and `retries`, the primary's) as a fallback config. Each
        model goes where it would alone: to the provider (or virtual key) the headers name,
        unless (for a fallback model) its prefix names another configured one; else by its
        prefix, else to the default; a model that `routes:` names runs its config, as it would
        alone. `primary`: the x-portkey-config the primary runs instead; `inline`: a client's,
        held to its caps with the fallbacks' one target each."""
        default = None if named else self.settings.default_config
        routes = self.settings.routes
        # A prefix naming the headers' own provider keeps their target: with a virtual key, its
        # secret (`an/y` alone is sent with it; as a fallback it went with the provider's key).
        own = (self.settings.virtual_keys[named["virtual_key"]].provider
               if "virtual_key" in named else named.get("provider"))
        leaves = []
        for i, model in enumerate([req.model, *req.fallback_models]):
            leaf: dict[str, Any] = {"override_params": {"model": model}} if model else {}
            if model in routes or (i == 0 and primary is not None):
                pass  # (replaced by the route's config, or `primary`, below)
            elif named and (i == 0 or self._prefix_target(model) in (None, own)):
                leaf.update(named)
            elif vk := self._model_key(model):
                leaf["virtual_key"] = vk
            elif (i or default) and (error := self.router.unroutable(
                    model, f"fallback_models[{i - 1}]" if i else "model", bool(default))):
                # (a fallback's leaf would be refused as the client's `model`; under the
                # default config an unknown `@name/` was sent to its provider as the model)
                raise error
            leaves.append(leaf)
        if req.retries:  # the primary's, as OneLLM's: more tries before the first fallback
            leaves[0]["retry"] = {"attempts": req.retries}
        raw: dict[str, Any] = {"strategy": {"mode": "fallback",
                                            "on_status_codes": _ONELLM_FALLBACK_CODES},
                               "targets": leaves}
        root = parse_config(raw, "config")
        if (primary is None and not default and routes.keys().isdisjoint(req.fallback_models)
                and req.model not in routes):
            return root
        # A route's model runs its config, one naming no provider the default config, as
        # each would alone; the primary's with the primary's retries.
        targets = []
        for i, (t, model) in enumerate(
                zip(root.targets, [req.model, *req.fallback_models], strict=True)):
            if i == 0 and primary is not None:  # (its leaves take the request's model)
                t = _with_retries(_as_target(primary, t.path, None), req.retries)
                if inline:
                    # The client's config and fields, each fallback model one target: the
                    # operator's configs those run (which the client cannot see) are bounded
                    # as without the header, by the plan's tries (Plan.max_tries), not a 400.
                    client_made(replace(root, targets=(t, *root.targets[1:])))
            elif model in routes:
                t = _with_retries(_as_target(self.settings.configs[routes[model]], t.path,
                                             model), None if i else req.retries)
            elif default and self._prefix_target(model) is None:
                t = _with_retries(_as_target(self.settings.configs[default], t.path, model),
                                  None if i else req.retries)
            targets.append(t)
        return replace(root, targets=tuple(targets))

    def _header_config(self, header: str) -> ConfigNode:
        text = header.strip()
        if not text.startswith("{"):
            if text in self.settings.configs:
                return self.settings.configs[text]
            raise InvalidRequest(f"Unknown config '{text[:64]}' in {CONFIG_HEADER}; named "
                                 f"configs: {', '.join(self.settings.configs) or 'none'}.",
                                 param=CONFIG_HEADER, code="unknown_config")
        try:
            raw = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise InvalidRequest(f"{CONFIG_HEADER} is not valid JSON.", param=CONFIG_HEADER,
                                 code="invalid_config") from None
        return client_made(parse_config(raw, "config"))

    # -- the plan ------------------------------------------------------------------------------
    def plan(self, headers: Mapping[str, str], req: ChatRequest,
             metadata: dict[str, Any] | None,
             allowed_providers: frozenset[str] | None = None) -> Plan:
        """`allowed_providers`: the request's proxy key's (None: any); a load balance draws
        among their targets (the handler drops the others' attempts)."""
        request_timeouts = _request_timeouts(headers)
        root = self.root_for(headers, req)
        if root is None:  # the plain path: one target, no planner
            target = self.router.resolve(headers, req.model)
            if request_timeouts:
                target.timeouts = target.timeouts.merged(request_timeouts)
            self._client_options(target, headers, None, bool(target.provider.cfg.api_key))
            return single(target, RetrySpec(req.retries) if req.retries else NO_RETRY)

        chosen: set[str] = set()  # leaves whose model the client chose

        def resolve(leaf: ConfigNode) -> Target:
            target = self.resolve_leaf(leaf, headers, req, request_timeouts)
            if leaf.breaker is not None and not leaf.breaker.client:
                model = leaf.override_params.get("model") or req.model
                known = self._operator_models
                if model and model not in known and target.model not in known:
                    chosen.add(leaf.path)
            return target

        usable = (None if allowed_providers is None
                  else lambda t: t.provider.name in allowed_providers)
        planned = plan(root, resolve, rng=self.rng, breakers=self.breakers,
                       metadata=metadata, params=req.body, path=CHAT_PATH, usable=usable)
        if req.fallback_models or req.retries:
            planned.max_tries = (MAX_CLIENT_TRIES if _inline_config(headers)
                                 else self._most_tries_with(headers, req))
        if chosen:
            # A breaker key names the model: one the operator's config let the client choose
            # counts as the client's in the tables' caps and the gauge's, or a client cycling
            # model names crowded out the operator's open breakers (the rules are the config's,
            # so a model the operator names shares the breaker: its records make it theirs).
            for a in planned.attempts:
                if a.path in chosen and a.breaker is not None:
                    a.breaker = _as_clients(a.breaker)
        return planned

    def _most_tries_with(self, headers: Mapping[str, str], req: ChatRequest) -> int:
        """The upstream requests a plan built with OneLLM's `fallback_models` / `retries` may
        send: as many as an inline config may (MAX_CLIENT_TRIES), or as the operator's config
        alone may make, if more. Each fallback model ran a `routes:` or default config whole,
        its retries on each target: 50 of them over an 18-try config, ~900 upstream requests
        for one client request. (An inline config's are counted as it is read: client_made.)"""
        own = self.root_for(headers, replace(req, fallback_models=[], retries=None))
        return max(MAX_CLIENT_TRIES, 1 if own is None else most_tries(own))

    def resolve_leaf(self, leaf: ConfigNode, headers: Mapping[str, str], req: ChatRequest,
                     request_timeouts: dict[str, float | None]) -> Target:
        params = dict(leaf.override_params)
        model_param = params.pop("model", None)
        model = model_param if model_param is not None else req.model
        vkey = None
        vk_name = self._leaf_key(leaf, headers, model_param, model)
        if vk_name is not None:
            vkey = self._virtual_key(vk_name, leaf.field_path("virtual_key") if leaf.virtual_key
                                     else VIRTUAL_KEY_HEADER)
            if leaf.virtual_key and _names_other_than_key(
                    leaf, vkey.provider, self.router.providers, self.settings.virtual_keys):
                raise InvalidRequest(f"Invalid config: '{leaf.path}.provider' "
                                     f"{_VKEY_PROVIDER_RULE}.", param=f"{leaf.path}.provider",
                                     code="invalid_config")
        name = vkey.provider if vkey else (leaf.provider or "").removeprefix("@")
        if name:
            if name not in self.router.providers:
                raise InvalidRequest(
                    f"Unknown provider '{name}' at '{leaf.path}.provider'. "
                    f"{self.router.known_names()}",
                    param=f"{leaf.path}.provider", code="unknown_provider")
            upstream = (model.partition("/")[2] or None
                        if vk_name and model and model.startswith(f"@{vk_name}/")
                        else self.router.model_for(name, model))
            target = self.router.target(name, upstream, headers)
        else:  # a model in override_params with a provider prefix routes by it, not by the
            # header; without one it is the model for the provider the header names
            target = self.router.resolve({k: v for k, v in headers.items()
                                          if k.lower() != PROVIDER_HEADER}
                                         if _names_a_provider(self.router, model_param)
                                         else headers, model)
        provider = target.provider
        secret = leaf.api_key or (vkey.api_key if vkey else None)
        target.api_key = secret or provider.cfg.api_key or client_key(headers)
        if secret:  # (over the provider's other credentials: Bedrock's SigV4, Vertex's token)
            # The key's name for its breaker (a metrics label: a digest, never the key)
            target.key_id = f"@{vk_name}" if vkey and not leaf.api_key else "key-" + \
                hashlib.blake2b(secret.encode("utf-8", "surrogatepass"), digest_size=6).hexdigest()
            target.provider = provider.with_own_key()
        if leaf.provider_options:
            target.provider = _with_target_options(target.provider, leaf)
        target.override_params = params
        target.timeouts = _merge(target.timeouts, leaf.timeouts, request_timeouts)
        self._client_options(target, headers, leaf,
                             _sends_operators_key(leaf, vkey, provider, headers))
        return target

    def _leaf_key(self, leaf: ConfigNode, headers: Mapping[str, str],
                  model_param: str | None, model: str | None) -> str | None:
        """The virtual key a leaf's target uses: its own, or its `provider: "@name"`; for a
        leaf naming no provider, as a plain request reads it — an override model's `@name/`
        prefix, else the x-portkey-virtual-key header or x-portkey-provider `@name` (unless
        an override model's prefix names a provider other than the key's: the SDK's
        virtual_key= with a config's model asks the key's provider for it), else the model's
        `@name/`."""
        if leaf.virtual_key or leaf.provider:
            return leaf.virtual_key or self._at_key(leaf.provider)
        if model_param is not None and (vk := self._model_key(model_param)):
            return vk
        header = headers.get(PROVIDER_HEADER)
        if VIRTUAL_KEY_HEADER in headers or header:
            vk = headers.get(VIRTUAL_KEY_HEADER) or self._at_key(header)
            key = self.settings.virtual_keys.get(vk) if vk else None
            # (a prefix naming the key's own provider keeps the key, as the request's model's
            # does: it went with the provider's key, not the key's secret)
            if _names_a_provider(self.router, model_param) and (
                    key is None or self.router.prefix_provider(model_param) != key.provider):
                return None
            return vk
        return self._model_key(model)

    def routed_model(self, headers: Mapping[str, str], model: str | None) -> str | None:
        """The name routing reads `model` by (router.routed_model), as `provider/model` for
        the provider a virtual key picks too — by x-portkey-virtual-key, x-portkey-provider
        `@key` or, without those, a model's `@key/` prefix: what `/v1/models/{model}` and the
        stored completions' model filter match, as a chat request would be served."""
        vk = headers.get(VIRTUAL_KEY_HEADER) or self._at_key(headers.get(PROVIDER_HEADER))
        if not vk and not headers.get(PROVIDER_HEADER):
            vk = self._model_key(model)
        vkey = self.settings.virtual_keys.get(vk) if vk else None
        if vkey is None or not model:  # (an unknown key: routing's 400)
            return routed_model(headers, model)
        upstream = (model.partition("/")[2] or None if model.startswith(f"@{vk}/")
                    else self.router.model_for(vkey.provider, model))  # (as resolve_leaf)
        return f"{vkey.provider}/{upstream}" if upstream else model

    def config_served(self, headers: Mapping[str, str], model: str,
                      metadata: dict[str, Any] | None = None) -> list[str] | None:
        """Where a chat request for `model` with these headers goes when a config runs it
        (x-portkey-config, a virtual key's target, `default_config`, a route's): each target's
        `provider/model`, in the config's order, resolved as the chat's (no upstream call; a
        config's error is the chat's). None on the plain path, which `routed_model` names.
        `metadata`: x-portkey-metadata, which a conditional's pick reads as the chat's does."""
        req = ChatRequest(body={"model": model}, raw=b"", stream=False, include_usage=False)
        root = self.root_for(headers, req)
        if root is None:
            return None
        # Every target resolved, as the chat's plan does (a bad one is its 400 whatever the
        # draw); only those a draw may pick serve the model.
        targets = {leaf.path: self.resolve_leaf(leaf, headers, req, {})
                   for leaf in root.leaves()}
        served = []
        for leaf in reachable_leaves(root, metadata, req.body, CHAT_PATH):
            target = targets[leaf.path]
            upstream = target.model or target.provider.cfg.default_model
            if upstream:
                served.append(f"{target.provider.name}/{upstream}")
        return served

    def route_providers(self, alias: str) -> frozenset[str]:
        """The providers a `routes:` alias's config may send to: each target's provider, its
        virtual key's, or (naming neither) its model prefix's or the default provider — what
        a proxy key's `allowed_providers` is checked against."""
        leaves = self.settings.configs[self.settings.routes[alias]].leaves()
        return frozenset(name for leaf in leaves
                         if (name := self._leaf_provider(leaf) or self.router.default))

    def header_providers(self, headers: Mapping[str, str]) -> frozenset[str] | None:
        """The providers a chat request with these headers goes to whatever its model: its
        x-portkey-config's targets', else its virtual key's or x-portkey-provider's; None when
        the headers name none, or a config target leaves it to the model. (`GET /v1/models`
        lists theirs alone, as Portkey's lists the provider such a signal names.)"""
        config = headers.get(CONFIG_HEADER)
        if not config:
            named = self._named_by_headers(headers)
            vk = named.get("virtual_key")
            provider = self.settings.virtual_keys[vk].provider if vk else named.get("provider")
            return frozenset({provider}) if provider else None
        names: set[str] = set()
        by_model = False  # a target whose provider the model decides: any provider's
        named = bool(headers.get(VIRTUAL_KEY_HEADER) or headers.get(PROVIDER_HEADER))
        req = ChatRequest(body={}, raw=b"", stream=False, include_usage=False)
        root = self._header_config(config)
        reachable = {leaf.path for leaf in reachable_leaves(root)}  # (no weight: 0 target's)
        for leaf in root.leaves():
            if not (named or leaf.virtual_key or leaf.provider  # (an unknown `@name/` too)
                    or _names_a_provider(self.router, leaf.override_params.get("model"))):
                by_model = by_model or leaf.path in reachable
                continue
            # Resolved as the chat resolves every target up front, whatever the model: its 400
            # for an unknown virtual key or provider is the list's (the headers are read only
            # for a target naming no provider, as there).
            name = self.resolve_leaf(leaf, headers, req, {}).provider.name
            if leaf.path in reachable:
                names.add(name)
        return None if by_model else frozenset(names)

    def _leaf_provider(self, leaf: ConfigNode) -> str | None:
        """The provider a config target names: its virtual key's, its own, or its override
        model's prefix's (None: the request decides)."""
        keys = self.settings.virtual_keys
        vk = leaf.virtual_key or self._at_key(leaf.provider)
        if vk and vk in keys:
            return keys[vk].provider
        if leaf.provider:
            return leaf.provider.removeprefix("@")
        return self.router.prefix_provider(leaf.override_params.get("model"))

    def _at_key(self, name: str | None) -> str | None:
        return catalog_key(name, self.router.providers, self.settings.virtual_keys)

    def _model_key(self, model: str | None) -> str | None:
        """The virtual key a model's `@name/` prefix names (see catalog_key), if any."""
        return self._at_key(model.partition("/")[0]) if model and "/" in model else None

    def _prefix_target(self, model: str | None) -> str | None:
        """The provider or virtual key a model's prefix names, if any."""
        return self.router.prefix_provider(model) or self._model_key(model)

    def _virtual_key(self, name: str, param: str) -> VirtualKey:
        keys = self.settings.virtual_keys
        vkey = keys.get(name)
        if vkey is None:
            # The names (never their secrets) a client may use, as an unknown provider's lists.
            known = (f"Configured virtual keys: {', '.join(keys)}." if keys
                     else "This gateway has no virtual keys.")
            raise InvalidRequest(f"Unknown virtual key '{name[:64]}' in {param}: it is not "
                                 f"under this gateway's virtual_keys. {known}", param=param,
                                 code="unknown_virtual_key")
        return vkey

    def _client_options(self, target: Target, headers: Mapping[str, str],
                        leaf: ConfigNode | None, operators_key: bool) -> None:
        """Where the target's request goes and which client headers go with it: the
        x-portkey-custom-host / x-portkey-forward-headers headers, else the leaf's
        `custom_host` / `forward_headers` (Portkey's order); and the SDK's provider settings.
        `operators_key`: the key the target sends is the gateway's, not the client's."""
        options = _header_provider_options(target.provider, headers, leaf)
        if options:
            target.provider = target.provider.with_options(options)
        host = headers.get(CUSTOM_HOST_HEADER)
        if host:
            target.provider = self._custom_host(target.provider, host, CUSTOM_HOST_HEADER)
        elif leaf is not None and leaf.custom_host:
            target.provider = self._custom_host(target.provider, leaf.custom_host,
                                                leaf.field_path("custom_host"))
        refused = target.provider.refused_option()
        if refused is not None:
            name, reason = refused
            param = _option_param(name, headers, leaf) or name
            raise InvalidRequest(f"'{param}': {reason}.", param=param, code="invalid_value")
        if operators_key:
            self._refuse_other_tenant(target.provider, headers, leaf)
        listed = headers.get(FORWARD_HEADERS_HEADER)
        names = (_header_names(listed) if listed is not None
                 else leaf.forward_headers if leaf is not None else ())
        forwarded = {h: headers[h] for h in names if h in headers and h not in _UNFORWARDABLE}
        if forwarded:
            target.headers = {**target.headers, **forwarded}

    def _custom_host(self, provider: Provider, custom_host: str, param: str) -> Provider:
        rule = custom_host_error(custom_host)  # (a config's is refused as it is parsed)
        if rule is not None:
            raise InvalidRequest(f"{param} {rule}.", param=param, code="invalid_value")
        host = _host_of(custom_host)
        if not _allowed_url(custom_host, self.settings):
            raise InvalidRequest(
                f"custom_host '{host or custom_host[:100]}' at '{param}' is not allowed by "
                "this gateway (allowed_custom_hosts in its config).", param=param,
                code="custom_host_not_allowed")
        url = custom_host if "://" in custom_host else f"https://{host}"
        return provider.with_base_url(url.rstrip("/"))

    def _refuse_other_tenant(self, provider: Provider, headers: Mapping[str, str],
                             leaf: ConfigNode | None) -> None:
        """The gateway's key goes to another tenant's endpoint (an Azure resource: another
        company's host, unlike a region of the operator's own account) only when its host is
        allowed, as a custom_host's; a client's own key may go to any."""
        param = _tenant_param(provider, headers, leaf)
        if param is None:
            return
        url = _tenant_url(self.router.providers[provider.name], provider)
        if url is not None and not _allowed_url(url, self.settings):
            raise InvalidRequest(
                f"'{_shown_host(url)}' at '{param}' is not allowed by this gateway with its own "
                "key (allowed_custom_hosts in its config); send your own key to use it.",
                param=param, code="custom_host_not_allowed")


def _operator_models(router: Router, settings: GatewaySettings) -> frozenset[str]:
    """The models the operator names: the providers' `models:` and default_model, the named
    configs' targets' override_params.model, the routes' aliases."""
    names = set(settings.routes)
    for provider in router.providers.values():
        names.update(m for m in (provider.cfg.default_model, *provider.cfg.models) if m)
    for config in settings.configs.values():
        names.update(str(leaf.override_params["model"]) for leaf in config.leaves()
                     if leaf.override_params.get("model"))
    return frozenset(names)


@functools.lru_cache(maxsize=1024)
def _as_clients(spec: BreakerSpec) -> BreakerSpec:
    return replace(spec, client=True)


def _as_target(config: ConfigNode, path: str, model: str | None) -> ConfigNode:
    """A named config (parsed at `config`) as the target at `path` of another, its leaves
    asking for `model` where they name none of their own."""
    moved = path + config.path.removeprefix("config")
    if not config.is_leaf:
        return replace(config, path=moved,
                       targets=tuple(_as_target(t, path, model) for t in config.targets))
    params = config.override_params
    if model and "model" not in params:
        params = {**params, "model": model}
    return replace(config, path=moved, override_params=params)


def _with_retries(node: ConfigNode, attempts: int | None) -> ConfigNode:
    """`node` with OneLLM's `retries` on each target that has none of its own, as a parent's
    `retry` is inherited in Portkey's configs: the primary's retries when it runs a config.
    A config's `attempts: 0` is its own: the operator's "no retries" wins over the body's."""
    if not attempts:
        return node
    if node.is_leaf:
        return node if node.retry.attempts or node.retry.attempts_set else replace(
            node, retry=replace(node.retry, attempts=attempts))
    return replace(node, targets=tuple(_with_retries(t, attempts) for t in node.targets))


def _with_target_options(provider: Provider, leaf: ConfigNode) -> Provider:
    """The provider with the leaf's provider settings (`aws_region`, Azure's `resource_name`,
    …: PROVIDER_OPTION_KEYS) set as its own options; one its type does not take is a 400
    saying what to do instead."""
    options = {}
    for name, value in leaf.provider_options.items():
        key = provider.target_option(name)
        if key is None:
            raise InvalidRequest(_option_misplaced(leaf.field_path(name), provider.name,
                                                   provider.type_name),
                                 param=leaf.field_path(name), code="invalid_config")
        options[key] = value
    return provider.with_options(options)


def _header_provider_options(provider: Provider, headers: Mapping[str, str],
                             leaf: ConfigNode | None) -> dict[str, str]:
    """The provider options the SDK's headers set for this target: only those its type takes
    (as Portkey reads `x-portkey-aws-region` for Bedrock alone, so a fallback to another type
    still works) and its config target does not set itself (the target is the more specific:
    a fallback across regions keeps its regions)."""
    options = {}
    for name, header in PROVIDER_OPTION_HEADERS.items():
        if header not in headers and name in _PROVIDERS_OWN_HEADERS:
            header = _PROVIDERS_OWN_HEADERS[name]
        value = headers.get(header)
        if value is None:
            continue
        rule = option_value_error(name, value)
        if rule is not None:  # it lands in a host name, a path or a header
            raise InvalidRequest(f"{header} must be {rule}.", param=header,
                                 code="invalid_value")
        key = provider.target_option(name)
        if key is not None and (leaf is None or name not in leaf.provider_options):
            options[key] = value
    return options


def _sends_operators_key(leaf: ConfigNode, vkey: VirtualKey | None, provider: Provider,
                        headers: Mapping[str, str]) -> bool:
    """Whether the key resolve_leaf picked is the gateway's (a named config's `api_key`, a
    virtual key's, the provider's) rather than the client's own (its inline config's
    `api_key`, its Authorization)."""
    if leaf.api_key:
        return not _inline_config(headers)
    return vkey is not None or bool(provider.cfg.api_key)


def _inline_config(headers: Mapping[str, str]) -> bool:
    """The config is the client's JSON, not a named one (as `Gateway.root_for` reads it)."""
    return (headers.get(CONFIG_HEADER) or "").strip().startswith("{")


def _tenant_param(provider: Provider, headers: Mapping[str, str],
                  leaf: ConfigNode | None) -> str | None:
    """Where the target's tenant option (Azure's resource_name) was set, if anywhere: its
    config target's field, else the SDK's header (as `_header_provider_options` picks)."""
    name = provider.tenant_option
    if name is None or provider.target_option(name) is None:
        return None
    return _option_param(name, headers, leaf)


def _option_param(name: str, headers: Mapping[str, str], leaf: ConfigNode | None) -> str | None:
    """Where a provider setting (Portkey's `name`) was set for the target, if anywhere: its
    config target's field, else the SDK's header (as `_header_provider_options` picks)."""
    if leaf is not None and name in leaf.provider_options:
        return leaf.field_path(name)
    header = PROVIDER_OPTION_HEADERS[name]
    return header if header in headers else None


def _option_misplaced(param: str, provider: str, type_name: str) -> str:
    return (f"Invalid config: '{param}' does not apply to provider '{provider}' (type "
            f"{type_name}); name a provider that takes it, or set the option on a provider "
            "in the gateway's config.")


def _header_names(listed: str) -> tuple[str, ...]:
    return tuple(h for h in (name.strip().lower() for name in listed.split(",")) if h)


def _merge(base: Timeouts, *overrides: dict[str, float | None]) -> Timeouts:
    for override in overrides:
        if override:
            base = base.merged(override)
    return base


def _request_timeouts(headers: Mapping[str, str]) -> dict[str, float | None]:
    value = headers.get(TIMEOUT_HEADER)
    if value is None:
        return {}
    try:
        ms = float(value)
    except ValueError:
        ms = -1
    if not 0 <= ms < math.inf:  # (NaN too: a timer cannot be set for it)
        raise InvalidRequest(f"{TIMEOUT_HEADER} must be a number of milliseconds (0: none).",
                             param=TIMEOUT_HEADER, code="invalid_value")
    # 0 sets none, as in Portkey (its gateway reads 0 as unset): the config's holds
    return {"request": ms / 1000} if ms else {}


def parse_metadata(headers: Mapping[str, str], max_depth: int) -> dict[str, Any] | None:
    """The x-portkey-metadata object, held to the body's depth limit (`server.max_json_depth`):
    it goes into the access-log line, and orjson writes no more than 255 levels (deeper, the
    request's line was lost)."""
    value = headers.get(METADATA_HEADER)
    if not value:
        return None
    try:
        metadata = orjson.loads(value)
    except orjson.JSONDecodeError:
        metadata = None
    if not isinstance(metadata, dict):
        raise InvalidRequest(f"{METADATA_HEADER} must be a JSON object.",
                             param=METADATA_HEADER, code="invalid_metadata")
    if value.count("{") + value.count("[") > max_depth:  # (as the body's: no walk when fewer)
        try:
            check_depth(metadata, max_depth, f"The {METADATA_HEADER} header")
        except InvalidRequest as e:
            e.param = METADATA_HEADER
            raise
    return metadata


def _names_a_provider(router: Router, model: str | None) -> bool:
    """`model` (an override's) has a provider prefix: a configured `name/`, or any `@name/`
    (an unknown one is the client's mistake, refused by routing)."""
    return bool(model) and (router.prefix_provider(model) is not None
                            or (model[:1] == "@" and "/" in model))
