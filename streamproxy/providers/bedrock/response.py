"""Bedrock Converse response (non-streamed) → OpenAI `chat.completion` (pure)."""

from __future__ import annotations

from typing import Any

import orjson

from streamproxy._json import dumps_exact, exact_values, loads_lenient
from streamproxy.errors import UpstreamProtocolError
from streamproxy.openai_api.completion import CompletionBuilder
from streamproxy.providers.base import WRONG_SHAPE
from streamproxy.providers.bedrock.stream import (
    FAILED_REASONS,
    failed_stop,
    finish_reason,
    is_server_tool,
    map_usage,
    service_tier,
)


def to_completion(body: bytes, *, completion_id: str, created: int, model: str,
                  provider: str = "bedrock", names: dict[str, str] | None = None
                  ) -> dict[str, Any]:
    """`names`: Converse's name → the client's, for the tools renamed for Converse (names.py)."""
    try:
        answer = loads_lenient(body)
        blocks = answer["output"]["message"]["content"]
        out = _translate(blocks, answer, body, names or {})
    except WRONG_SHAPE:  # (orjson.JSONDecodeError is a ValueError)
        raise UpstreamProtocolError("the upstream answered with a malformed message") from None
    if answer.get("stopReason") in FAILED_REASONS:
        raise failed_stop(answer["stopReason"], provider).with_usage(out.usage_data)
    return out.completion(completion_id=completion_id, created=created, model=model)


def exact_inputs(body: bytes) -> list[str] | None:
    """The answer's toolUse inputs (the client's calls) with every number as the model wrote
    it, when orjson may have read one otherwise (else None): as the stream passes them on."""
    return exact_values(body, lambda doc: (
        dumps_exact(b["toolUse"].get("input") or {}) for b in doc["output"]["message"]["content"]
        if "text" not in b and "toolUse" in b and not is_server_tool(b["toolUse"])))


def _translate(blocks: list[dict[str, Any]], answer: dict[str, Any],
               body: bytes, names: dict[str, str]) -> CompletionBuilder:
    out = CompletionBuilder()
    out.start(None)
    tools = 0
    exact: list[str] | None = None
    for block in blocks:
        if "text" in block:
            if block["text"]:  # (as the stream, which skips empty text deltas)
                out.content(block["text"])
        elif "toolUse" in block:
            call = block["toolUse"]
            if is_server_tool(call):  # run by Bedrock (nova_grounding): no call of the client's
                continue
            if not tools:
                exact = exact_inputs(body)
            args = (exact[tools] if exact is not None and tools < len(exact)
                    else orjson.dumps(call.get("input") or {}).decode())
            out.tool_call_start(tools, call["toolUseId"], names.get(call["name"], call["name"]),
                                args)
            tools += 1
        elif "reasoningContent" in block:
            _reasoning(block["reasoningContent"], out)
        elif "citationsContent" in block:
            # A cited span's text is only here (the stream sends it as text deltas); the
            # citations themselves have no OpenAI slot.
            for part in block["citationsContent"].get("content") or ():
                if part.get("text"):
                    out.content(part["text"])
        # image, document... have no OpenAI slot in an answer: dropped.
    out.finish(finish_reason(answer.get("stopReason") or "end_turn", tools > 0))
    if answer.get("usage"):
        out.usage(map_usage(answer["usage"]))
    tier = service_tier(answer)
    if tier is not None:  # (OpenAI's answer says which tier served it: a flex request may not)
        out.service_tier(tier)
    return out


def _reasoning(content: dict[str, Any], out: CompletionBuilder) -> None:
    text = content.get("reasoningText")
    if text:
        if text.get("text"):  # (empty when Claude leaves it out, display "omitted": no reasoning)
            out.reasoning(text["text"])
        if text.get("signature"):
            out.thinking_block({"type": "thinking", "thinking": text.get("text") or "",
                                "signature": text["signature"]})
    elif content.get("redactedContent"):
        out.thinking_block({"type": "redacted_thinking", "data": content["redactedContent"]})
