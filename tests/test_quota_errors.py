"""An exhausted quota or credit balance (billing, not a rate): OpenAI's 429 `insufficient_quota`
— which the client gets with `x-should-retry: false`, and a config's `retry` does not repeat
(it comes again until someone pays; a fallback still runs) — whichever provider said it."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streamproxy.errors import UpstreamStatusError
from streamproxy.providers.registry import PROVIDER_TYPES
from tests.conftest import provider_config


def provider(kind: str, **extra: Any) -> Any:
    cfg = provider_config(kind, "http://127.0.0.1:9", **extra).providers["up"]
    return PROVIDER_TYPES[kind](cfg)


OPENAI_QUOTA = {"message": "You exceeded your current quota, please check your plan and "
                           "billing details.", "type": "insufficient_quota", "param": None,
                "code": "insufficient_quota"}


@pytest.mark.parametrize("error", [OPENAI_QUOTA, {**OPENAI_QUOTA, "code": None}])
@pytest.mark.parametrize("kind", ["openai", "azure", "openrouter", "deepseek"])
def test_an_openai_compatible_insufficient_quota_is_not_retried(kind: str,
                                                                error: dict[str, Any]) -> None:
    extra = {"resource": "r", "api_version": "2024-10-21"} if kind == "azure" else {}
    err = provider(kind, **extra).parse_error(429, orjson.dumps({"error": error}))
    assert err.status == 429 and err.code == "insufficient_quota"
    assert err.should_retry is False
    assert err.to_dict()["error"] == {**error}  # its own fields, as they came


def test_a_rate_limit_is_still_retried() -> None:
    body = orjson.dumps({"error": {"message": "Rate limit reached for gpt-4o", "type":
                                   "requests", "param": None, "code": "rate_limit_exceeded"}})
    err: UpstreamStatusError = provider("openai").parse_error(429, body)
    assert err.status == 429 and err.should_retry is None
