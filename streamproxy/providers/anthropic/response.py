"""Anthropic non-streamed Message → OpenAI `chat.completion` (pure)."""

from __future__ import annotations

from typing import Any

import orjson

from streamproxy._json import dumps_exact, exact_values, loads_lenient
from streamproxy.errors import UpstreamProtocolError
from streamproxy.openai_api.completion import CompletionBuilder
from streamproxy.providers.anthropic.stream import finish_reason, map_usage, refusal_text
from streamproxy.providers.base import WRONG_SHAPE


def to_completion(body: bytes, *, completion_id: str, created: int, model: str,
                  names: dict[str, str] | None = None) -> dict[str, Any]:
    """`names`: Claude's name → the client's, for the tools renamed for Claude (names.py)."""
    try:
        return _completion(loads_lenient(body), completion_id, created, model, body,
                           names or {})
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
                body: bytes, names: dict[str, str]) -> dict[str, Any]:
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
            out.tool_call_start(tools, block["id"], names.get(block["name"], block["name"]),
                                args)
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


def answer_events(body: bytes) -> bytes | None:
    """A whole Messages API `message` as the events its stream would have been, or None for
    any other body. An Anthropic-compatible relay may answer a stream request so (it ignores
    `stream: true`). message_start, then each block as Anthropic streams it (text and thinking
    as one delta, a signature as its own, a tool_use's input as one fragment with its numbers
    as written, any other block whole at its start), message_delta with the stop and the usage,
    message_stop: the stream's translator reads them as a stream's. Once, on that odd answer."""
    try:
        msg = loads_lenient(body)
    except orjson.JSONDecodeError:
        return None
    blocks = msg.get("content") if isinstance(msg, dict) else None
    if not (isinstance(blocks, list) and (msg.get("type") == "message"
                                          or msg.get("role") == "assistant")
            and all(isinstance(b, dict) for b in blocks)):
        return None
    usage = msg.get("usage")
    head = {k: v for k, v in msg.items() if k not in ("content", "stop_reason",
                                                       "stop_sequence", "stop_details")}
    events = [("message_start", {"type": "message_start", "message": {
        **head, "content": [], "stop_reason": None, "stop_sequence": None}})]
    exact = exact_inputs(body)
    tools = 0
    for index, block in enumerate(blocks):
        kind = block.get("type")
        deltas: list[dict[str, Any]] = []
        if kind == "text":
            start = {**block, "text": ""}
            if block.get("text"):
                deltas.append({"type": "text_delta", "text": block["text"]})
        elif kind == "thinking":
            start = {**block, "thinking": "", "signature": ""}
            if block.get("thinking"):
                deltas.append({"type": "thinking_delta", "thinking": block["thinking"]})
            if block.get("signature"):
                deltas.append({"type": "signature_delta", "signature": block["signature"]})
        elif kind == "tool_use":
            start = {**block, "input": {}}
            args = (exact[tools] if exact is not None and tools < len(exact)
                    else orjson.dumps(block.get("input") or {}).decode())
            tools += 1
            if args != "{}":
                deltas.append({"type": "input_json_delta", "partial_json": args})
        else:  # redacted_thinking, server tool blocks: whole at their start, as streamed
            start = block
        events.append(("content_block_start", {"type": "content_block_start", "index": index,
                                               "content_block": start}))
        events.extend(("content_block_delta", {"type": "content_block_delta", "index": index,
                                               "delta": d}) for d in deltas)
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    delta = {"stop_reason": msg.get("stop_reason"), "stop_sequence": msg.get("stop_sequence")}
    if "stop_details" in msg:
        delta["stop_details"] = msg["stop_details"]
    events.append(("message_delta", {"type": "message_delta", "delta": delta,
                                     "usage": usage if isinstance(usage, dict) else {}}))
    events.append(("message_stop", {"type": "message_stop"}))
    return b"".join(b"event: %b\ndata: %b\n\n" % (kind.encode(), orjson.dumps(data))
                    for kind, data in events)
