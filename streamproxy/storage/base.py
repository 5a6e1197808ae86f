"""The storage interface: what a stored completion is, and what a backend must do.

Every read and write is scoped by `owner` — the proxy auth key's name, or with auth off a hash
of the client's credentials ("" when it sent none; service.owner_of) — so one key never sees
another's completions. `add` is fire-and-forget (called from an observer after the request
ended, never awaited on a request's path); backends batch these writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol


@dataclass(slots=True)
class StoredCompletion:
    id: str
    owner: str
    created: int
    model: str  # the model the answer names (the upstream's)
    # the model the client sent (e.g. "anthropic/claude-…"), as `provider/model` when a
    # header chose the provider (routing/gateway.py `Gateway.routed_model`)
    request_model: str | None
    metadata: dict[str, str]
    request: dict[str, Any]  # the client's body (messages, params), minus `store`
    response: dict[str, Any]  # the chat.completion object the client received
    # `provider/model` of the target that answered (a fallback's, when one did): the list's
    # `model` filter finds it by that name too, as the client named it in fallback_models
    answered_model: str | None = None


@dataclass(slots=True, frozen=True)
class ListQuery:
    model: str | None = None
    # The names a chat request may give `model` (routing/router.py `model_names`): a stored
    # request's model as sent matches any.
    model_names: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    after: str | None = None
    limit: int = 20
    order: Literal["asc", "desc"] = "asc"


class CompletionStore(Protocol):
    def add(self, item: StoredCompletion) -> bool:
        """Queue a write without waiting; False when the backend is saturated and drops it."""

    async def get(self, owner: str, completion_id: str) -> StoredCompletion | None: ...

    async def list(self, owner: str, query: ListQuery) -> tuple[list[StoredCompletion], bool]:
        """One page in insertion order (or reversed), and whether more follow."""

    async def update_metadata(self, owner: str, completion_id: str,
                              metadata: dict[str, str]) -> StoredCompletion | None: ...

    async def delete(self, owner: str, completion_id: str) -> bool: ...

    async def flush(self) -> None:
        """Return once every write queued before the call is durable."""

    async def close(self) -> None: ...
