"""`/v1/models` and `/v1/models/{id}` with the portkey-ai SDK's headers: the providers and the
model they name are the ones a chat request with the same headers is planned to (no sockets,
no upstream call: the Gateway's answers against its plan)."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from streamproxy.errors import ProxyError
from streamproxy.openai_api.request import parse_chat_request
from streamproxy.routing.breaker import CircuitBreakers
from streamproxy.routing.gateway import Gateway, load_settings
from streamproxy.routing.router import Router
from streamproxy.server.app import build_providers
from tests.helpers import make_config

PROVIDERS = {"mock": {"type": "mock", "default_model": "fast", "models": ["paced"]},
             "mock-openai": {"type": "mock", "wire": "openai", "default_model": "fast",
                             "models": ["tool"]}}


def gateway(**sections: Any) -> Gateway:
    config = make_config(PROVIDERS, default="mock",
                         virtual_keys={"team": {"provider": "mock-openai", "api_key": "sk-team"}},
                         **sections)
    router = Router(build_providers(config), config.default_provider, config.server.timeouts)
    return Gateway(router, load_settings(config), CircuitBreakers(), random.Random(0))


def chat_providers(gw: Gateway, headers: dict[str, str], model: str = "fast") -> set[str]:
    """The providers a chat request's plan sends to (every attempt: a fallback's included)."""
    req = parse_chat_request(orjson.dumps({"model": model,
                                           "messages": [{"role": "user", "content": "x"}]}))
    return {a.target.provider.name for a in gw.plan(headers, req, None).attempts}


def config(raw: dict[str, Any]) -> str:
    return orjson.dumps(raw).decode()


def test_list_ignores_the_provider_header_beside_a_config_whose_targets_name_theirs() -> None:
    """A config whose targets each name a provider runs whatever x-portkey-provider says (the
    portkey-ai SDK sends both when a client sets provider= and config=): the list was a 400
    for an unknown or `@` header the chat never reads."""
    gw = gateway()
    for header in ("nope", "@nope"):
        headers = {"x-portkey-provider": header,
                   "x-portkey-config": config({"provider": "mock-openai"})}
        assert chat_providers(gw, headers) == {"mock-openai"}
        assert gw.header_providers(headers) == {"mock-openai"}
    headers = {"x-portkey-virtual-key": "nope", "x-portkey-config": config({"provider": "mock"})}
    assert chat_providers(gw, headers) == gw.header_providers(headers) == {"mock"}
    # a target naming none is sent where the header says: its 400 is the chat's
    headers = {"x-portkey-provider": "nope", "x-portkey-config": config({"retry": {"attempts": 2}})}
    for ask in (lambda: chat_providers(gw, headers), lambda: gw.header_providers(headers)):
        with pytest.raises(ProxyError) as err:
            ask()
        assert err.value.status == 400


@pytest.mark.parametrize("raw", [
    {"virtual_key": "nope"},
    {"provider": "nope"},
    {"provider": "mock", "virtual_key": "team"},  # (team's secret is mock-openai's)
    {"strategy": {"mode": "fallback"}, "targets": [{"provider": "mock"},
                                                    {"virtual_key": "nope"}]},
])
@pytest.mark.parametrize("beside", [{}, {"x-portkey-provider": "mock-openai"}])
def test_list_refuses_a_config_the_chat_refuses(raw: dict[str, Any],
                                                beside: dict[str, str]) -> None:
    """An inline config naming an unknown virtual key or provider (or a key beside another
    provider) is the chat's 400 for every model: the list answered the header's provider's
    models, every provider's, or none, as if the config ran."""
    gw = gateway()
    headers = {**beside, "x-portkey-config": config(raw)}
    with pytest.raises(ProxyError) as chat:
        chat_providers(gw, headers)
    with pytest.raises(ProxyError) as listed:
        gw.header_providers(headers)
    assert (listed.value.status, listed.value.code) == (chat.value.status, chat.value.code)


def test_a_target_the_chat_never_picks_serves_no_model() -> None:
    """A load balance's `weight: 0` target (Portkey's way to drain one) and a `single`
    strategy's targets after the first are never planned: retrieve said their provider's model
    exists, and the list held their provider's models, which the chat then sent elsewhere."""
    gw = gateway()
    for raw in ({"strategy": {"mode": "loadbalance"},
                 "targets": [{"provider": "mock", "weight": 0}, {"provider": "mock-openai"}]},
                {"strategy": {"mode": "loadbalance"},
                 "targets": [{"weight": 0}, {"provider": "mock-openai", "weight": 2}]},
                {"strategy": {"mode": "single"},
                 "targets": [{"provider": "mock-openai"}, {"provider": "mock"}]}):
        headers = {"x-portkey-config": config(raw)}
        for _ in range(20):  # (the draw is random: none of them is mock)
            assert chat_providers(gw, headers, "paced") == {"mock-openai"}
        assert gw.config_served(headers, "paced") == ["mock-openai/paced"]
        assert gw.header_providers(headers) == {"mock-openai"}
