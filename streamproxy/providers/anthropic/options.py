"""Anthropic's provider options, `anthropic_version` and `anthropic_beta`, as a provider's
config sets them (a config target's field and the portkey-ai SDK's headers are checked by the
gateway, routing/portkey_config.py `option_value_error`).

Betas are a string of names, comma-separated as the `anthropic-beta` header carries them, or a
YAML list; an empty one (a trailing comma) is skipped. Their values go into a header or a
request body as they are: each is checked at startup, so a bad one is a config error rather
than a split header or a 500 per request.
"""

from __future__ import annotations

import re
from typing import Any

from streamproxy.config import ConfigError

# A version (`2023-06-01`) or a beta's name (`context-1m-2025-08-07`).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def beta_names(value: str | list[str] | None) -> list[str]:
    """The betas an `anthropic_beta` value names, in order (none for None)."""
    if not value:  # (most providers set none: no list made per request)
        return []
    names = value.split(",") if isinstance(value, str) else value
    return [name.strip() for name in names if name.strip()]


def check_option_values(options: dict[str, Any], source: str, where: str) -> None:
    version = options.get("anthropic_version")
    if version is not None and not (isinstance(version, str) and _NAME.fullmatch(version)):
        raise ConfigError(source, f"{where}.anthropic_version",
                          "must be a version like 2023-06-01")
    betas = options.get("anthropic_beta")
    names = betas.split(",") if isinstance(betas, str) else betas
    # An empty name (a trailing comma, `b1,,b2`) names no beta: beta_names skips it.
    if betas is not None and not (isinstance(names, list) and all(
            isinstance(name, str) and (not name.strip() or _NAME.fullmatch(name.strip()))
            for name in names)):
        raise ConfigError(source, f"{where}.anthropic_beta",
                          "must be beta names of letters, digits, '.', '-' and '_', "
                          "comma-separated or a list")
