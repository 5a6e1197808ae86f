"""What the translators that rename tool names share (pure): the names an OpenAI request uses,
the renames of those a provider refuses, and the short form of a name too long or taken
(gemini/names.py, bedrock/names.py, anthropic/names.py — each provider has its own rule for
the names it refuses)."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any


def declared_names(body: dict[str, Any]) -> set[str]:
    """The names of the request's function tools."""
    return {name for tool in body.get("tools") or () if (name := _function_name(tool))}


def called_names(body: dict[str, Any]) -> set[str]:
    """The names of the function calls its assistant messages replay."""
    return {name for message in body.get("messages") or () if isinstance(message, dict)
            for call in message.get("tool_calls") or () if (name := _function_name(call))}


def request_names(body: dict[str, Any]) -> set[str]:
    """The tool names of an OpenAI request: its function tools' and its assistant calls'."""
    return declared_names(body) | called_names(body)


def renames(names: Iterable[str], taken: re.Pattern[str], refused_character: re.Pattern[str],
            max_len: int) -> dict[str, str]:
    """The client's name → the provider's, for each of `names` that `taken` does not match
    (none, the usual case: an empty dict): its `refused_character`s as `_`, and, when that is
    over `max_len`, one of `names` as it is or the rename of another name too, `shortened`."""
    names = set(names)
    refused = [name for name in names if not taken.fullmatch(name)]
    if not refused:
        return {}
    plain = {name: refused_character.sub("_", name) for name in refused}
    count = Counter(plain.values())  # (two refused names may read alike: a.b, a/b)
    out = {}
    for name, new in plain.items():
        if len(new) > max_len or new in names or count[new] > 1:
            new = shortened(new, name, max_len)
        out[name] = new
    return out


def _function_name(item: Any) -> str | None:
    """A tool's or a call's `function.name`, when it is a string."""
    fn = item.get("function") if isinstance(item, dict) else None
    name = fn.get("name") if isinstance(fn, dict) else None
    return name if isinstance(name, str) else None


def shortened(new: str, name: str, max_len: int) -> str:
    """`new` (a rename of the client's `name`) cut to fit `max_len` with 8 hex digits of the
    SHA-256 of `name`: distinct from any other name's, and the same in every request."""
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{new[:max_len - 9]}_{digest}"
