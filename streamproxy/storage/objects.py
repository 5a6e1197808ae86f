"""OpenAI's object shapes for stored completions, and the parsing of their endpoints' inputs
(pure: no I/O). The `openai` SDK reads these as `ChatCompletion`, `ChatCompletionDeleted`,
`ChatCompletionStoreMessage` and cursor pages (`data`, `first_id`, `last_id`, `has_more`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from streamproxy.errors import InvalidRequest
from streamproxy.storage.base import ListQuery, StoredCompletion

# OpenAI's metadata limits.
METADATA_MAX_KEYS = 16
METADATA_KEY_MAX = 64
METADATA_VALUE_MAX = 512
PAGE_MAX = 100
PAGE_DEFAULT = 20
# Request parameters OpenAI echoes on a stored completion (`user` as `input_user`). Not
# `service_tier`: the answer's is the tier that served it, which the stored answer has when
# the provider told it (the one asked, "auto" or a tier a provider ignored, is not that).
_ECHOED = ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty", "tools",
           "tool_choice", "response_format")


def check_metadata(value: Any, param: str = "metadata") -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"'{param}' must be an object of string values.", param=param,
                             code="invalid_type")
    if len(value) > METADATA_MAX_KEYS:
        raise InvalidRequest(f"'{param}' may have at most {METADATA_MAX_KEYS} keys.",
                             param=param, code="invalid_value")
    for k, v in value.items():
        if len(k) > METADATA_KEY_MAX:
            raise InvalidRequest(f"'{param}' keys are at most {METADATA_KEY_MAX} characters.",
                                 param=param, code="invalid_value")
        if not isinstance(v, str) or len(v) > METADATA_VALUE_MAX:
            raise InvalidRequest(f"'{param}.{k}' must be a string of at most "
                                 f"{METADATA_VALUE_MAX} characters.", param=f"{param}.{k}",
                                 code="invalid_value")
    return value


def parse_page(query: Mapping[str, str]) -> tuple[str | None, int, str]:
    """`after`, `limit` (1…100, default 20) and `order` (asc | desc, default asc)."""
    raw_limit = query.get("limit")
    limit = PAGE_DEFAULT
    if raw_limit is not None:
        # Plain ASCII digits, as OpenAI reads it: int() also took `1_0`, `+5`, ` 5`, `٣`.
        limit = int(raw_limit) if raw_limit.isascii() and raw_limit.isdigit() else 0
        if not 1 <= limit <= PAGE_MAX:
            raise InvalidRequest(f"'limit' must be an integer from 1 to {PAGE_MAX}.",
                                 param="limit", code="invalid_value")
    order = query.get("order") or "asc"
    if order not in ("asc", "desc"):
        raise InvalidRequest("'order' must be 'asc' or 'desc'.", param="order",
                             code="invalid_value")
    return query.get("after") or None, limit, order


def parse_list_query(query: Mapping[str, str],
                     names: Callable[[str], tuple[str, ...]] | None = None) -> ListQuery:
    """`?model=…&metadata[k]=v&after=…&limit=…&order=…` (the SDK's bracket encoding);
    `names`: every name of a model (`model_names`), which the filter matches."""
    after, limit, order = parse_page(query)
    metadata = {k[9:-1]: v for k, v in query.items()
                if k.startswith("metadata[") and k.endswith("]")}
    model = query.get("model") or None
    return ListQuery(model=model, model_names=names(model) if model and names else (),
                     metadata=metadata, after=after, limit=limit,
                     order=order)  # type: ignore[arg-type]


def completion_object(item: StoredCompletion) -> dict[str, Any]:
    """The stored chat.completion, with its metadata and the echoed request parameters."""
    out = dict(item.response)
    out["metadata"] = item.metadata
    for key in _ECHOED:
        if key in item.request:
            out.setdefault(key, item.request[key])
    if "user" in item.request:
        out.setdefault("input_user", item.request["user"])
    return out


def message_objects(item: StoredCompletion) -> list[dict[str, Any]]:
    """The request's messages, each with an id (`<completion id>-<index>`)."""
    out = []
    for i, message in enumerate(item.request.get("messages") or []):
        msg = dict(message)
        content = msg.get("content")
        if isinstance(content, list):
            msg["content_parts"] = content
            texts = [p.get("text") or "" for p in content if p.get("type") == "text"]
            msg["content"] = "".join(texts) if texts else None
        else:
            msg.setdefault("content_parts", None)
        msg["id"] = f"{item.id}-{i}"
        out.append(msg)
    return out


def page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def messages_page(messages: list[dict[str, Any]], after: str | None, limit: int,
                  order: str) -> dict[str, Any]:
    ordered = messages if order == "asc" else messages[::-1]
    start = 0
    if after is not None:
        ids = [m["id"] for m in ordered]
        if after not in ids:
            raise InvalidRequest(f"No message found with id '{after}'.", param="after",
                                 code="invalid_value")
        start = ids.index(after) + 1
    chunk = ordered[start : start + limit]
    return page(chunk, start + limit < len(ordered))


def deleted_object(completion_id: str) -> dict[str, Any]:
    return {"object": "chat.completion.deleted", "id": completion_id, "deleted": True}
