"""A config target's or virtual key's own key (`api_key`) is the credential each provider type
sends, over the provider's own; without one, the provider's credentials are sent. Pure: the
gateway plans, the provider builds the request; no sockets."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from streamproxy.openai_api.request import parse_chat_request
from streamproxy.providers.base import UpstreamRequest
from streamproxy.routing.breaker import CircuitBreakers
from streamproxy.routing.gateway import Gateway, load_settings
from streamproxy.routing.router import Router
from streamproxy.routing.target import Target
from streamproxy.server.app import build_providers
from tests.helpers import make_config
from tests.test_bedrock import hermetic_aws_env

OWN = "own-target-key-1"
PROVIDERS: dict[str, dict[str, Any]] = {
    "oa": {"type": "openai", "api_key": "operator-key"},
    "an": {"type": "anthropic", "api_key": "operator-key"},
    "gm": {"type": "gemini", "api_key": "operator-key"},
    "az": {"type": "azure", "resource": "res", "api_version": "2024-10-21",
           "api_key": "operator-key"},
    "az-entra": {"type": "azure", "resource": "res", "api_version": "2024-10-21",
                 "auth": "entra", "api_key": "operator-key"},
    "co": {"type": "cohere", "api_key": "operator-key"},
    "ol": {"type": "ollama", "base_url": "http://127.0.0.1:11434", "api_key": "operator-key"},
    "aws-key": {"type": "bedrock", "region": "us-east-1", "api_key": "operator-key"},
    "aws-sigv4": {"type": "bedrock", "region": "us-east-1", "aws_access_key_id": "AKIDEXAMPLE",
                  "aws_secret_access_key": "operator-secret"},
    "aws-chain": {"type": "bedrock", "region": "us-east-1"},
    "vx": {"type": "vertex", "project": "p", "location": "us-central1", "api_key": "operator-key"},
    "vx-cmd": {"type": "vertex", "project": "p", "location": "us-central1",
               "token_command": ["false"]},
}
# Where each type carries the key, and how.
SENT_AS = {"oa": ("authorization", "Bearer {}"), "an": ("x-api-key", "{}"),
           "gm": ("x-goog-api-key", "{}"), "az": ("api-key", "{}"),
           "az-entra": ("api-key", "{}"),
           "co": ("authorization", "Bearer {}"), "ol": ("authorization", "Bearer {}"),
           "aws-key": ("authorization", "Bearer {}"), "aws-sigv4": ("authorization", "Bearer {}"),
           "aws-chain": ("authorization", "Bearer {}"), "vx": ("authorization", "Bearer {}"),
           "vx-cmd": ("authorization", "Bearer {}")}


def gateway(**sections: Any) -> Gateway:
    config = make_config(PROVIDERS, default="oa", **sections)
    router = Router(build_providers(config), config.default_provider, config.server.timeouts)
    return Gateway(router, load_settings(config), CircuitBreakers(), random.Random(0))


def planned(headers: dict[str, str], **sections: Any) -> Target:
    req = parse_chat_request(orjson.dumps({"model": "m", "messages": [
        {"role": "user", "content": "hi"}]}))
    return gateway(**sections).plan(headers, req, None).attempts[0].target


async def sent(target: Target) -> UpstreamRequest:
    req = parse_chat_request(orjson.dumps({"model": "m", "stream": True, "messages": [
        {"role": "user", "content": "hi"}]}))
    await target.provider.prepare(target)
    return target.provider.build_request(req, target)


def lowered(request: UpstreamRequest) -> dict[str, str]:
    return {k.lower(): v for k, v in request.headers.items()}


def own_key_ways(name: str) -> list[tuple[dict[str, str], dict[str, Any]]]:
    """(headers, config sections): an inline config target's key, a named config's, a virtual
    key's (by header and by `@name`)."""
    return [
        ({"x-portkey-config": orjson.dumps({"provider": name, "api_key": OWN}).decode()}, {}),
        ({"x-portkey-config": "named"},
         {"configs": {"named": {"provider": name, "api_key": OWN}}}),
        ({"x-portkey-virtual-key": "vk"},
         {"virtual_keys": {"vk": {"provider": name, "api_key": OWN}}}),
        ({"x-portkey-provider": "@vk"},
         {"virtual_keys": {"vk": {"provider": name, "api_key": OWN}}}),
    ]


@pytest.mark.parametrize("name", sorted(PROVIDERS))
async def test_a_target_s_own_key_is_the_credential_sent(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    hermetic_aws_env(monkeypatch)
    header, shape = SENT_AS[name]
    for headers, sections in own_key_ways(name):
        request = lowered(await sent(planned(headers, **sections)))
        assert request[header] == shape.format(OWN), (name, headers)
        assert "operator-key" not in str(request) and "x-amz-date" not in request
        assert "x-goog-user-project" not in request


@pytest.mark.parametrize("name", ["aws-key", "aws-sigv4", "vx"])
async def test_without_an_own_key_the_provider_s_credentials_are_sent(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    hermetic_aws_env(monkeypatch)
    for headers in ({"x-portkey-config": orjson.dumps({"provider": name}).decode()},
                    {"x-portkey-provider": name}):
        target = planned({**headers, "authorization": "Bearer client-key"})
        auth = lowered(await sent(target))["authorization"]
        if name == "aws-sigv4":
            assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
        else:
            assert auth == "Bearer operator-key"


async def test_bedrock_with_an_own_key_looks_no_aws_credentials_up(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The chain is not searched (no instance-metadata call, no STS) for a target that brings
    # its key; a chain with nothing in it would have made it a 401.
    hermetic_aws_env(monkeypatch)
    from streamproxy.providers.bedrock import auth

    def no_lookup(self: Any) -> None:
        raise AssertionError("looked AWS credentials up")

    monkeypatch.setattr(auth.BedrockAuth, "load", no_lookup)
    monkeypatch.setattr(auth.BedrockAuth, "_resolve", no_lookup)
    target = planned({"x-portkey-virtual-key": "vk"},
                     virtual_keys={"vk": {"provider": "aws-chain", "api_key": OWN}})
    assert lowered(await sent(target))["authorization"] == f"Bearer {OWN}"


# A Microsoft Entra ID access token (a JWT), as test_azure's.
ENTRA_TOKEN = ("eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9"
               ".eyJhdWQiOiJodHRwczovL2NvZ25pdGl2ZXNlcnZpY2VzLmF6dXJlLmNvbSJ9.c2ln")


async def test_azure_s_auth_entra_is_the_provider_key_s_not_a_target_s() -> None:
    # `auth: entra` says what the provider's key is: a target's own Azure key on such a
    # provider went as `Authorization: Bearer` (Azure's 401). It goes by its shape, as Azure
    # takes it: `api-key`, or the bearer for an Entra token (a JWT, always).
    config = orjson.dumps({"provider": "az-entra", "api_key": ENTRA_TOKEN}).decode()
    request = lowered(await sent(planned({"x-portkey-config": config})))
    assert request["authorization"] == f"Bearer {ENTRA_TOKEN}" and "api-key" not in request
    request = lowered(await sent(planned({"x-portkey-config": '{"provider": "az-entra"}'})))
    assert request["authorization"] == "Bearer operator-key" and "api-key" not in request
