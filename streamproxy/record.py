"""`RequestRecord`: what one request did, filled in along the data path (per request, never
per chunk) and handed to observers — access log, metrics, storage — when the request ends."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class RequestRecord:
    trace_id: str
    stream: bool = False
    provider: str | None = None
    model: str | None = None  # the upstream model asked for
    status: int = 200
    started: float = field(default_factory=time.monotonic)
    first_byte: float | None = None  # monotonic time the first byte went to the client
    finished: float | None = None
    attempts: int = 0  # upstream requests sent, retries and fallbacks included
    target_index: int | None = None  # which planned target served the answer
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    chunks: int = 0
    bytes_out: int = 0
    error_type: str | None = None
    error_code: str | None = None
    client_disconnected: bool = False
    metadata: dict[str, Any] | None = None
    completion_id: str | None = None
    # Set before routing by features that need the whole answer (store, cache fill): the
    # executor then tees the stream into `builder`; a non-streamed answer lands in `response`.
    capture: bool = False
    builder: Any = None  # CompletionBuilder when captured
    response: dict[str, Any] | None = None

    @property
    def ttft(self) -> float | None:
        return None if self.first_byte is None else self.first_byte - self.started

    @property
    def duration(self) -> float | None:
        return None if self.finished is None else self.finished - self.started


Observer = Callable[[RequestRecord], None]
