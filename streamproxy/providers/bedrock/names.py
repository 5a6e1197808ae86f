"""Tool names Converse refuses, renamed on the way there and back (pure).

Converse takes a tool name (a toolSpec's, a toolUse's, a toolChoice's) of 1 to 64 letters,
digits, `_` and `-` (its ToolName); any other is a 400 for the whole request ("Member must
satisfy regular expression pattern: [a-zA-Z0-9_-]+"). Clients send more: MCP tools' names with
dots, spaces or slashes (`github.create_issue`), prefixed names over 64 characters. Such a name
goes to Converse with its other characters as `_`, and, when that is over 64 characters, a name
the request uses as it is or the rename of another name too, its first 55 characters, `_` and 8
hex digits of the SHA-256 of the client's name, as on Gemini (gemini/names.py). The renames
depend only on the request's names (its tools' and its replayed calls'), so a declaration, a
replayed call and `tool_choice` go by one name, and the model's calls reach the client by the
client's names (`client_names`).
"""

from __future__ import annotations

import re
from typing import Any

from streamproxy.providers.tool_names import renames, request_names

MAX_NAME = 64
_TAKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")
_REFUSED_CHARACTER = re.compile(r"[^A-Za-z0-9_-]")


def converse_renames(body: dict[str, Any]) -> dict[str, str]:
    """The client's name → Converse's, for the OpenAI request's names Converse refuses
    (usually none: an empty dict)."""
    return renames(request_names(body), _TAKEN, _REFUSED_CHARACTER, MAX_NAME)


def client_names(body: dict[str, Any]) -> dict[str, str]:
    """Converse's name → the client's, for the names renamed in the request (usually none)."""
    return {new: name for name, new in converse_renames(body).items()}


def rename(out: dict[str, Any], names: dict[str, str]) -> None:
    """Every tool name in the Converse request `out` as `names` (renames) maps it, in place."""
    config = out.get("toolConfig") or {}
    for tool in config.get("tools") or ():
        if "toolSpec" in tool:
            tool["toolSpec"]["name"] = names.get(tool["toolSpec"]["name"],
                                                 tool["toolSpec"]["name"])
    chosen = (config.get("toolChoice") or {}).get("tool")
    if chosen is not None:
        chosen["name"] = names.get(chosen["name"], chosen["name"])
    for message in out["messages"]:
        for block in message["content"]:
            if "toolUse" in block:
                block["toolUse"]["name"] = names.get(block["toolUse"]["name"],
                                                     block["toolUse"]["name"])
