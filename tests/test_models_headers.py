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
    {"override_params": {"model": "@nope/x"}},  # (an `@name/` naming no provider nor key)
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


def test_a_load_balances_conditional_matching_nothing_does_not_refuse_its_siblings_models() -> None:
    """A load balance draws one target: a conditional matching nothing fails only the chats
    whose draw picks it, so its siblings still serve their models. Retrieve was the 400 when
    that conditional came first, and served the sibling's model when it came second."""
    gw = gateway()
    conditional = orjson.loads(_BY_MODEL)  # (no match for "paced", no default)
    for targets in ([conditional, {"provider": "mock-openai"}],
                    [{"provider": "mock-openai"}, conditional]):
        headers = {"x-portkey-config": _lb(*targets)}
        answered = set()
        for _ in range(40):  # (the draw is random: some chats are answered by mock-openai)
            try:
                answered |= chat_providers(gw, headers, "paced")
            except ProxyError as e:
                assert e.status == 400
        assert answered == {"mock-openai"}
        assert gw.config_served(headers, "paced") == ["mock-openai/paced"]
    # Every target matching nothing: every chat's 400, and retrieve's.
    headers = {"x-portkey-config": _lb(conditional, conditional)}
    with pytest.raises(ProxyError) as err:
        gw.config_served(headers, "paced")
    assert err.value.status == 400


def _lb(*targets: dict[str, Any]) -> str:
    return config({"strategy": {"mode": "loadbalance"}, "targets": list(targets)})


def _fallback(*targets: dict[str, Any]) -> str:
    return config({"strategy": {"mode": "fallback"}, "targets": list(targets)})


_CONDITIONAL = config({
    "strategy": {"mode": "conditional", "default": "free",
                 "conditions": [{"query": {"metadata.tier": {"$eq": "pro"}}, "then": "pro"}]},
    "targets": [{"name": "free", "provider": "mock"},
                {"name": "pro", "provider": "mock-openai"}]})
_PRO = {"x-portkey-metadata": '{"tier": "pro"}'}
_BY_MODEL = config({  # (no default: a model matching nothing is the chat's 400)
    "strategy": {"mode": "conditional",
                 "conditions": [{"query": {"params.model": {"$eq": "tool"}}, "then": "oa"}]},
    "targets": [{"name": "m", "provider": "mock"}, {"name": "oa", "provider": "mock-openai"}]})

# (headers, model ids asked): every id through retrieve and a chat request alike
HEADER_SETS: list[tuple[dict[str, str], tuple[str, ...]]] = [
    ({}, ("fast", "paced", "tool", "mock/paced", "@mock/paced", "mock-openai/tool",
          "@team/tool", "@team/paced", "nope/x")),
    ({"x-portkey-provider": "mock-openai"}, ("fast", "tool", "paced", "mock/paced")),
    ({"x-portkey-provider": "@team"}, ("tool", "paced", "@team/tool")),
    ({"x-portkey-provider": "nope"}, ("fast",)),
    ({"x-portkey-virtual-key": "team"}, ("tool", "paced", "mock-openai/tool")),
    ({"x-portkey-virtual-key": "nope"}, ("fast",)),
    ({"x-portkey-config": config({"provider": "mock-openai"})}, ("tool", "paced", "fast")),
    ({"x-portkey-config": config({"provider": "@team"})}, ("tool", "paced")),
    ({"x-portkey-config": config({"virtual_key": "team"}), "x-portkey-provider": "nope"},
     ("tool", "paced")),
    ({"x-portkey-config": config({"virtual_key": "nope"})}, ("fast",)),
    ({"x-portkey-config": config({"override_params": {"model": "mock-openai/tool"}})},
     ("anything",)),
    ({"x-portkey-config": config({"retry": {"attempts": 2}}),
      "x-portkey-provider": "mock-openai"}, ("tool", "paced")),
    ({"x-portkey-config": _fallback({"provider": "mock-openai"}, {"provider": "mock"})},
     ("tool", "paced", "fast", "nope")),
    ({"x-portkey-config": _fallback({"provider": "mock-openai",
                                     "override_params": {"model": "tool"}},
                                    {"provider": "mock"})}, ("paced", "other")),
    ({"x-portkey-config": _lb({"provider": "mock", "weight": 0}, {"provider": "mock-openai"})},
     ("tool", "paced")),
    ({"x-portkey-config": _lb({"provider": "mock", "weight": 0},
                              {"virtual_key": "team", "weight": 3})}, ("tool", "paced")),
    ({"x-portkey-config": _CONDITIONAL}, ("paced", "tool")),
    ({"x-portkey-config": _CONDITIONAL, **_PRO}, ("paced", "tool")),
    ({"x-portkey-config": _BY_MODEL}, ("tool", "paced")),
    ({"x-portkey-config": _fallback({"provider": "mock-openai"},
                                    orjson.loads(_BY_MODEL))}, ("tool", "paced", "fast")),
]


async def test_retrieve_names_the_model_where_the_chat_is_planned(proxy: Any) -> None:
    """For each header set and model id, `GET /v1/models/{id}` answers what a chat request
    with the same headers is planned to (the planner's attempts, nothing sent upstream): the
    first of the plan's `provider/model`s the list holds, owned by its provider; a 404 when it
    holds none; the chat's 400 when the chat's is one."""
    from streamproxy.routing.gateway import parse_metadata
    from streamproxy.server.state import STATE
    cfg = make_config(PROVIDERS, default="mock",
                      virtual_keys={"team": {"provider": "mock-openai", "api_key": "sk-team"}})
    client = await proxy(cfg)
    gw = client.server.app[STATE].gateway
    for headers, models in HEADER_SETS:
        listed = await client.get("/v1/models", headers=headers)
        ids = ({m["id"] for m in (await listed.json())["data"]} if listed.status == 200
               else set())
        for model in models:
            req = parse_chat_request(orjson.dumps(
                {"model": model, "messages": [{"role": "user", "content": "x"}]}))
            try:
                attempts = gw.plan(headers, req, parse_metadata(headers, 64)).attempts
            except ProxyError as e:
                expected: tuple[int, str | None] = (e.status, None)
            else:
                served = [f"{a.target.provider.name}/"
                          f"{a.target.model or a.target.provider.cfg.default_model}"
                          for a in attempts if a.refusal is None]  # (a conditional's
                # no-match, in a fallback's later place, is skipped: it serves nothing)
                first = next((s for s in served if s in ids), None)
                expected = (200, first.partition("/")[0]) if first else (404, None)
            resp = await client.get(f"/v1/models/{model.replace('/', '%2F')}",
                                    headers=headers)
            body = await resp.json()
            got = (resp.status, body.get("owned_by") if resp.status == 200 else None)
            assert got == expected, (headers, model, body)
