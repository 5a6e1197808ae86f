"""What the translators that rename tool names share (pure): the names an OpenAI request uses,
and the short form of a name too long or taken (gemini/names.py, bedrock/names.py — each
provider has its own rule for the names it refuses)."""

from __future__ import annotations

import hashlib
from typing import Any


def declared_names(body: dict[str, Any]) -> set[str]:
    """The names of the request's function tools."""
    return {name for tool in body.get("tools") or () if (name := _function_name(tool))}


def called_names(body: dict[str, Any]) -> set[str]:
    """The names of the function calls its assistant messages replay."""
    return {name for message in body.get("messages") or () if isinstance(message, dict)
            for call in message.get("tool_calls") or () if (name := _function_name(call))}


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
