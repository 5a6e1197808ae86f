"""The cache key: a SHA-256 of the normalized request (pure).

Two requests share a key when they would ask the same upstream the same question: same
provider, same endpoint (its base URL: a `custom_host` aims one provider at another server),
same upstream model, same messages and same output-changing parameters (temperature,
tools, response_format, max_tokens, seed, n, …, the target's override_params and forwarded
headers, and the provider options that change an answer: Anthropic's version and betas).
Left out, because they do not change the answer: how it is delivered (`stream`,
`stream_options`) and bookkeeping (`user`, `metadata`, `store`, `safety_identifier`, and
the provider's own prompt caching: `prompt_cache_key`, `prompt_cache_retention`). The
namespace — the proxy auth key's name and `x-portkey-cache-namespace` — partitions the
cache, so one tenant's answers are never served to another; so does the provider key the
request is sent with (a client's own key, when the provider has none).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

NOT_IN_KEY = frozenset({"model", "stream", "stream_options", "user", "metadata", "store",
                        "prompt_cache_key", "prompt_cache_retention", "safety_identifier"})
_VERSION = 4  # bump when the normalization changes: old entries then simply miss


def cache_key(*, namespace: str, provider: str, model: str | None, body: Mapping[str, Any],
              headers: Mapping[str, str] | None = None, credential: str | None = None,
              base_url: str | None = None, options: Mapping[str, Any] | None = None) -> str:
    material = {
        "v": _VERSION,
        "ns": namespace,
        "provider": provider,
        "base_url": base_url,
        "model": model,
        "body": {k: v for k, v in body.items() if k not in NOT_IN_KEY},
        "headers": dict(headers or {}),
        "options": dict(options or {}),
        # The provider key the request goes with: a client's own key (no key configured for
        # the provider) must not buy answers for callers with another key or none. Hashed
        # with the rest, never kept.
        "credential": credential,
    }
    return hashlib.sha256(orjson.dumps(material, option=orjson.OPT_SORT_KEYS)).hexdigest()
