"""Which provider and model a request names (pure; no sockets).

Order: the `x-portkey-provider` header; a model prefix `@name/model` or `name/model` where
`name` is a configured provider (stripped before the request goes upstream); otherwise the
configured `default_provider`. With the header set, a model prefix naming that same provider
is stripped too; any other prefix is part of the model name (`meta-llama/Llama-3` is a model
name on several providers, `@cf/meta/llama-3-8b-instruct` one of Cloudflare Workers AI's).
"""

from __future__ import annotations

from collections.abc import Mapping

from streamproxy.config import Config, Timeouts
from streamproxy.errors import AuthenticationFailed, UnknownProvider
from streamproxy.providers.base import Provider
from streamproxy.providers.registry import type_for_prefix
from streamproxy.routing.target import Target

PROVIDER_HEADER = "x-portkey-provider"


def client_key(headers: Mapping[str, str]) -> str | None:
    """The client's own provider key, forwarded when a provider has none configured
    (Portkey's convention: `Authorization: Bearer <provider key>`)."""
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        key = auth[7:].strip() or None
    else:
        key = headers.get("x-api-key") or headers.get("api-key") or None
    if key is not None and not key.isascii():  # (no provider issues such keys)
        raise AuthenticationFailed("The API key in the request is not ASCII text.")
    return key


def listed_model(config: Config, model: str) -> str:
    """A model's one name (the `/v1/models` id) from any a chat request gives it:
    `@name/model` is `name/model`, and a model naming no configured provider is the default
    provider's (the chat endpoint sends `claude-sonnet-4-5` there)."""
    head, slash, _ = model.partition("/")
    if slash and head.removeprefix("@") in config.providers:
        return model.removeprefix("@")
    return f"{config.default_provider}/{model}" if config.default_provider else model


def model_names(config: Config, model: str) -> tuple[str, ...]:
    """Every name a chat request may give the model `model` names: itself, its
    `listed_model`, that with `@`, and the bare model when it is the default provider's (and
    routes there: `x/y` with `x` configured does not)."""
    listed = listed_model(config, model)
    names = {model, listed}
    head, slash, rest = listed.partition("/")
    if slash and head in config.providers:
        names.add("@" + listed)
        if listed_model(config, rest) == listed:
            names.add(rest)
    return tuple(sorted(names))


def model_for(name: str, model: str | None) -> str | None:
    """The model as provider `name` gets it when something other than the model (a header,
    a config target) chose that provider: a prefix naming `name` is stripped, any other
    prefix, `@x/` included, is part of the model's id."""
    if model and "/" in model:
        head, _, rest = model.partition("/")
        if head.removeprefix("@") == name:
            return rest or None
    return model


def routed_model(headers: Mapping[str, str], model: str | None) -> str | None:
    """The name routing reads `model` by: with an `x-portkey-provider` header, `name/model`
    (the header chose the provider: a bare `fast` is that provider's, not the default's);
    else the model as sent. (The header names a configured provider: routing refused it
    otherwise.)"""
    header = headers.get(PROVIDER_HEADER)
    if not header or not model:
        return model
    name = header.removeprefix("@")
    upstream = model_for(name, model)
    return f"{name}/{upstream}" if upstream else model


class Router:
    def __init__(self, providers: dict[str, Provider], default: str | None,
                 timeouts: Timeouts) -> None:
        self.providers = providers
        self.default = default
        self.timeouts = timeouts
        # Timeouts are frozen: each provider's merged set is built once, not per request.
        self._provider_timeouts = {name: timeouts.merged(p.cfg.timeouts)
                                   for name, p in providers.items()}
        # The gateway's virtual keys, which `@name` names as well (the Gateway sets them): an
        # unknown name's 400 lists them beside the providers.
        self.virtual_keys: tuple[str, ...] = ()

    def known_names(self) -> str:
        """What a 400 for an unknown provider lists: the providers, and the virtual keys an
        `@name` may name (not one a provider's name shadows)."""
        text = f"Configured providers: {', '.join(self.providers)}."
        keys = [k for k in self.virtual_keys if k not in self.providers]
        return text + (f" Virtual keys (as @name): {', '.join(keys)}." if keys else "")

    def split_model(self, model: str | None) -> tuple[str | None, str | None]:
        """`@name/model` / `name/model` → (name, model) when name is a configured provider;
        an `@name/` naming none is an unknown provider."""
        name = self.prefix_provider(model)
        if name is not None:
            return name, model.partition("/")[2] or None  # type: ignore[union-attr]
        if model and model[:1] == "@" and "/" in model:
            raise self._unknown(model.partition("/")[0][1:])
        return None, model

    def unroutable(self, model: str | None, param: str,
                   default_config: bool = False) -> UnknownProvider | None:
        """Why `model` alone (no header) reaches no provider, or None: an `@name/` prefix
        naming none; with no default provider and no `default_config` (which serves a model
        naming no provider), any model without a configured one."""
        if self.prefix_provider(model) is not None:
            return None
        if model and model[:1] == "@" and "/" in model:
            return self._unknown(model.partition("/")[0][1:], param)
        return None if self.default or default_config else self._no_default(model, param)

    def prefix_provider(self, model: str | None) -> str | None:
        """The configured provider a model's `name/` or `@name/` prefix names, if any."""
        if not model or "/" not in model:
            return None
        name = model.partition("/")[0].removeprefix("@")
        return name if name in self.providers else None

    def model_for(self, name: str, model: str | None) -> str | None:
        return model_for(name, model)

    def resolve(self, headers: Mapping[str, str], model: str | None) -> Target:
        header = headers.get(PROVIDER_HEADER)
        if header:
            name = header.removeprefix("@")
            if name not in self.providers:
                raise self._unknown(name, PROVIDER_HEADER)
            return self.target(name, self.model_for(name, model), headers)
        prefix, upstream_model = self.split_model(model)
        if prefix:
            name = prefix
        elif self.default:
            name, upstream_model = self.default, model
        else:
            raise self._no_default(model, "model")
        return self.target(name, upstream_model, headers)

    def target(self, name: str, model: str | None, headers: Mapping[str, str]) -> Target:
        provider = self.providers[name]
        forwarded = {h: headers[h] for h in provider.forwarded_client_headers if h in headers}
        return Target(
            provider=provider,
            model=model,
            api_key=provider.cfg.api_key or client_key(headers),
            headers=forwarded,
            timeouts=self._provider_timeouts[name],
        )

    def _no_default(self, model: str | None, param: str) -> UnknownProvider:
        """No provider for a model without a configured prefix when there is no default: one
        with a prefix (a OneLLM name such as `google/` left unconfigured) names it."""
        if model and "/" in model:
            return self._unknown(model.partition("/")[0], param)
        return UnknownProvider(
            "No provider given: set the x-portkey-provider header or prefix the model with "
            f"a provider name. {self.known_names()}",
            param=param)

    def _unknown(self, name: str, param: str = "model") -> UnknownProvider:
        ptype = type_for_prefix(name)
        hint = (f" To serve '{name}/…' models, configure a provider named '{name}' "
                f"(type {ptype}).") if ptype else ""
        return UnknownProvider(
            f"Unknown provider '{name[:64]}'. {self.known_names()}{hint}", param=param)
