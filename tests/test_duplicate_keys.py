"""Duplicate JSON keys: the proxy reads a body as orjson does (a key's last value wins); the
upstream of a pass-through provider must be sent that same request, not the client's bytes,
which an upstream keeping a key's first value (or refusing duplicates) reads otherwise."""

from __future__ import annotations

import json
from typing import Any

import pytest

from streamproxy.openai_api.request import parse_chat_request
from streamproxy.providers.registry import PROVIDER_TYPES
from streamproxy.routing.target import Target
from tests.helpers import make_config


def _first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        out.setdefault(k, v)
    return out


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), f"duplicate keys sent upstream: {keys}"
    return dict(pairs)


MSG = '[{"role": "user", "content": "hi"}]'
BODIES = [
    # (a first-value upstream: the model the proxy did not route, limit or cache by)
    '{"model": "big-model", "messages": ' + MSG + ', "model": "some-model"}',
    '{"model": "some-model", "messages": ' + MSG + ', "stream": true, "stream": false}',
    '{"model": "some-model", "messages": ' + MSG + ', "max_tokens": 100000, "max_tokens": 5}',
    '{"model": "some-model", "messages": ' + MSG + ', "n": 128, "n": 1}',
    '{"model": "some-model", "messages": [{"role": "user", "content": "secret"}], '
    '"messages": ' + MSG + '}',
    '{"model": "some-model", "messages": ' + MSG + ', "tools": [{"type": "function", '
    '"function": {"name": "rm_rf"}}], "tools": [{"type": "function", "function": '
    '{"name": "ls"}}]}',
    # nested: what the model sees, and what the answer is cached under
    '{"model": "some-model", "messages": [{"role": "user", "content": "other", '
    '"content": "hi"}]}',
    '{"model": "some-model", "messages": ' + MSG + ', "tools": [{"type": "function", '
    '"function": {"name": "rm_rf", "name": "ls"}}]}',
    # a key spelt with an escape is still the same key
    '{"model": "big-model", "messages": ' + MSG + ', "mod\\u0065l": "some-model"}',
]


@pytest.mark.parametrize("kind", ["openai", "vllm", "groq"])
@pytest.mark.parametrize("raw", BODIES)
def test_upstream_gets_the_request_the_proxy_read(kind: str, raw: str) -> None:
    config = make_config({"p": {"type": kind, "api_key": "k",
                                "base_url": "http://127.0.0.1:1/v1"}})
    provider = PROVIDER_TYPES[kind](config.providers["p"])
    req = parse_chat_request(raw.encode())
    sent = provider.build_request(req, Target(provider, "some-model", api_key="k")).body
    assert json.loads(sent, object_pairs_hook=_unique) is not None
    read_first = json.loads(sent, object_pairs_hook=_first_wins)
    assert read_first["model"] == req.model == "some-model"
    assert read_first.get("stream", False) == req.stream
    for name in ("max_tokens", "n", "messages", "tools"):
        assert read_first.get(name) == req.body.get(name)

