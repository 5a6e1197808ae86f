"""Tool names Claude refuses, renamed on the way there and back (pure).

Claude takes a tool name (a tool's, a replayed tool_use's, tool_choice's) of 1 to 128 letters,
digits, `_` and `-` (Anthropic's `^[a-zA-Z0-9_-]{1,128}$`); any other is a 400 for the whole
request, on Anthropic and Claude on Vertex alike. Clients send more: MCP tools' names with
dots, spaces or slashes (`github.create_issue`), prefixed names over 128 characters. Such a
name goes to Claude as Converse's do (bedrock/names.py), within Claude's 128: its other
characters as `_`, and, when that is too long or a name the request uses too, its first 119
characters, `_` and 8 hex digits of the SHA-256 of the client's name. The renames depend only
on the request's names, so a declaration, a replayed call and `tool_choice` go by one name,
and Claude's calls reach the client by the client's names (`client_names`).
"""

from __future__ import annotations

import re
from typing import Any

from streamproxy.providers.tool_names import renames, request_names

MAX_NAME = 128
_TAKEN = re.compile(r"[A-Za-z0-9_-]{1,128}")
_REFUSED_CHARACTER = re.compile(r"[^A-Za-z0-9_-]")


def claude_renames(body: dict[str, Any]) -> dict[str, str]:
    """The client's name → Claude's, for the OpenAI request's names Claude refuses (usually
    none: an empty dict)."""
    return renames(request_names(body), _TAKEN, _REFUSED_CHARACTER, MAX_NAME)


def client_names(body: dict[str, Any]) -> dict[str, str]:
    """Claude's name → the client's, for the names renamed in the request (usually none)."""
    return {new: name for name, new in claude_renames(body).items()}


def rename(out: dict[str, Any], names: dict[str, str]) -> None:
    """Every tool name in the Anthropic request `out` as `names` (renames) maps it, in place."""
    for tool in out.get("tools") or ():
        tool["name"] = names.get(tool["name"], tool["name"])
    choice = out.get("tool_choice") or {}
    if "name" in choice:
        choice["name"] = names.get(choice["name"], choice["name"])
    for message in out["messages"]:
        for block in message["content"]:
            if block.get("type") == "tool_use":
                block["name"] = names.get(block["name"], block["name"])
