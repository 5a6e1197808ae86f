"""Function names Gemini refuses, renamed on the way there and back (pure).

Gemini takes a function name that starts with a letter or an underscore, holds only letters,
digits, `_ . : -` and is at most 64 characters long; any other is a 400 for the whole request
("Invalid function name. Must start with a letter or an underscore…"). OpenAI takes a name that
starts with a digit or a dash, and clients send more (MCP tools' names with spaces or slashes,
prefixed names over 64 characters). Such a name goes to Gemini as one it takes: its other
characters as `_`, with an `_` before a first character that is no letter, and, when that is
over 64 characters, a declared name or the rename of another declared name too (`a/b`, `a b`),
its first 55 characters, `_` and 8 hex digits of the SHA-256 of the client's name. The rename
depends only on the name and the declared names, so a replayed call, its result and
`tool_choice` go by the same name as the declaration, and Gemini's calls reach the client by
the names it declared (`client_names`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection
from typing import Any

from streamproxy.providers.tool_names import declared_names, shortened

MAX_NAME = 64
_TAKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,63}")
_REFUSED_CHARACTER = re.compile(r"[^A-Za-z0-9_.:-]")
_FIRST = re.compile(r"[A-Za-z_]")


def declared(body: dict[str, Any]) -> set[str]:
    """The names a rename must not take: the declared names, and a plain rename (`_plain`)
    that two declared names share (else both went as one name: Gemini's calls of it reached
    the client as one of the two tools)."""
    names = declared_names(body)
    refused = [name for name in names if not _TAKEN.fullmatch(name)]
    if len(refused) < 2:  # (the usual case: no second rename to share one with)
        return names
    shared = [new for new, count in Counter(map(_plain, refused)).items() if count > 1]
    return names.union(shared) if shared else names


def _plain(name: str) -> str:
    """`name`'s refused characters as `_`, with an `_` before a first one that is no letter."""
    out = _REFUSED_CHARACTER.sub("_", name)
    return out if _FIRST.match(out) else "_" + out


def gemini_name(name: Any, taken: Collection[str]) -> Any:
    """`name` as Gemini takes it (module docstring); `taken`: the names a rename must not
    take (`declared`)."""
    if not isinstance(name, str) or _TAKEN.fullmatch(name):
        return name
    out = _plain(name)
    if len(out) > MAX_NAME or out in taken:
        out = shortened(out, name, MAX_NAME)
    return out


def client_names(body: dict[str, Any]) -> dict[str, str]:
    """Gemini's name → the client's, for each declared function Gemini would refuse (none,
    the usual case: an empty dict)."""
    taken = declared(body)
    return {gemini_name(name, taken): name for name in declared_names(body)
            if not _TAKEN.fullmatch(name)}


def rename(out: dict[str, Any], taken: Collection[str]) -> None:
    """Every function name in the Gemini request `out` as Gemini takes it, in place."""
    for tool in out.get("tools") or ():
        for decl in tool.get("functionDeclarations") or ():
            decl["name"] = gemini_name(decl["name"], taken)
    for content in out["contents"]:
        for part in content["parts"]:
            for key in ("functionCall", "functionResponse"):
                if key in part:
                    part[key]["name"] = gemini_name(part[key]["name"], taken)
    config = (out.get("toolConfig") or {}).get("functionCallingConfig") or {}
    if "allowedFunctionNames" in config:
        config["allowedFunctionNames"] = [gemini_name(name, taken)
                                          for name in config["allowedFunctionNames"]]
