"""Anthropic non-streamed Message → OpenAI `chat.completion` (pure)."""

from __future__ import annotations

from typing import Any

import orjson

from streamproxy._json import dumps_exact, exact_values, loads_lenient
from streamproxy.errors import UpstreamProtocolError
from streamproxy.openai_api.completion import CompletionBuilder
from streamproxy.providers.anthropic.stream import finish_reason, map_usage, refusal_text
from streamproxy.providers.base import WRONG_SHAPE


def to_completion(body: bytes, *, completion_id: str, created: int, model: str) -> dict[str, Any]:
    try:
        return _completion(loads_lenient(body), completion_id, created, model, body)
    except WRONG_SHAPE:  # (orjson.JSONDecodeError is a ValueError)
        # A 502 that retries and fallbacks act on, not a 500 (an Anthropic-compatible
        # upstream may send a block without its id or name).
        raise UpstreamProtocolError("the upstream answered with a malformed message") from None


def exact_inputs(body: bytes) -> list[str] | None:
    """The answer's tool_use inputs with every number as Claude wrote it, when orjson may have
    read one otherwise (else None): the stream's fragments pass on as written."""
    return exact_values(body, lambda doc: (
        dumps_exact(b.get("input") or {}) for b in doc["content"]
        if isinstance(b, dict) and b.get("type") == "tool_use"))


def _completion(msg: dict[str, Any], completion_id: str, created: int, model: str,
                body: bytes) -> dict[str, Any]:
    blocks = msg["content"]
    out = CompletionBuilder()
    # As the stream's role chunk: `content: ""` when the first block is text, though it is
    # empty; an empty text block after thinking or a call adds nothing (content stays null).
    out.start(msg.get("model"), blocks[0].get("type") == "text" if blocks else None)
    tools = 0
    exact: list[str] | None = None
    for block in blocks:
        kind = block.get("type")
        if kind == "text":
            if block.get("text"):
                out.content(block["text"])
        elif kind == "tool_use":
            if not tools:
                exact = exact_inputs(body)
            args = (exact[tools] if exact is not None and tools < len(exact)
                    else orjson.dumps(block.get("input") or {}).decode())
            out.tool_call_start(tools, block["id"], block["name"], args)
            tools += 1
        elif kind == "thinking":
            thinking = block.get("thinking", "")
            if thinking:  # (empty when Claude leaves it out, display "omitted": no reasoning)
                out.reasoning(thinking)
            if block.get("signature"):  # (as the stream: an unsigned block has no replay)
                out.thinking_block({"type": "thinking", "thinking": thinking,
                                    "signature": block["signature"]})
        elif kind == "redacted_thinking" and block.get("data"):  # (no data: nothing to replay)
            out.thinking_block({"type": "redacted_thinking", "data": block["data"]})
    # No stop_reason (an Anthropic-compatible upstream): the calls made say how it ended.
    reason = msg.get("stop_reason") or ("tool_use" if tools else "end_turn")
    why = refusal_text(reason, msg.get("stop_details"))
    if why:
        out.refusal(why)
    out.finish(finish_reason(reason, tools > 0))
    if msg.get("usage"):
        out.usage(map_usage(msg["usage"]))
    return out.completion(completion_id=completion_id, created=created, model=model)
