"""Reading OpenAI message content, shared by the request translators (pure)."""

from __future__ import annotations

from typing import Any

from streamproxy.errors import InvalidRequest


def texts(content: Any, where: str) -> list[str]:
    """The non-empty texts of a content field that may hold only text: a string, or an array
    of `text` parts (`refusal` parts are skipped; any other part is a 400 naming it)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content] if content else []
    out = []
    for j, part in enumerate(content):
        kind = part.get("type")
        if kind == "text":
            if part.get("text"):
                out.append(part["text"])
        elif kind != "refusal":
            raise InvalidRequest(f"Content part type '{kind}' is not allowed here.",
                                 param=f"{where}[{j}].type", code="unsupported_value")
    return out


def parse_data_url(url: str, where: str) -> tuple[str, str]:
    """`data:<mime>;base64,<data>` → (lower-cased mime, the base64 text as it is)."""
    head, _, data = url.partition(",")
    mime = head[5:].split(";")[0].lower()
    if not head.startswith("data:") or ";base64" not in head or not mime or not data:
        raise InvalidRequest("A data: URL must look like data:<mime>;base64,<data>.",
                             param=where, code="invalid_value")
    return mime, data
