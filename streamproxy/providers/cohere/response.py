"""Cohere v2 non-streamed chat response → OpenAI `chat.completion` (pure).

Same mapping as the stream: text → content, thinking blocks and the tool plan →
reasoning_content, tool calls with their JSON-string arguments ("{}" when blank or "null"),
citations of sources with a url → `message.annotations`, finish reasons, usage, the answer
text's logprobs when asked; ERROR/TIMEOUT → an error with the same status the stream would
give.
"""

from __future__ import annotations

from typing import Any

from streamproxy._json import loads_lenient
from streamproxy.errors import UpstreamProtocolError
from streamproxy.openai_api.chunks import unseen_citations
from streamproxy.openai_api.completion import CompletionBuilder
from streamproxy.providers.base import WRONG_SHAPE
from streamproxy.providers.cohere.stream import (
    FAILED,
    PLAN_BREAK,
    call_arguments,
    failure,
    finish_reason,
    map_usage,
    token_logprobs,
    url_citations,
)


def to_completion(body: bytes, *, completion_id: str, created: int, model: str,
                  provider: str, logprobs: bool = False) -> dict[str, Any]:
    try:
        resp = loads_lenient(body)
        message = resp["message"]
        reason = resp.get("finish_reason") or "COMPLETE"
        if reason in FAILED:
            usage = map_usage(resp["usage"]) if resp.get("usage") else None
            raise failure(reason, resp.get("error"), provider).with_usage(usage)
        out = CompletionBuilder()
        thought = False
        for block in message.get("content") or ():
            # As the stream's content-start: what the first block is says the role chunk's
            # content ("" before text), and an empty block adds nothing.
            out.start(None, block.get("type", "text") == "text")
            if block.get("type") == "text":
                if block.get("text"):
                    out.content(block["text"])
            elif block.get("type") == "thinking" and block.get("thinking"):
                # (an empty block is no reasoning, as streamed: no "" reasoning_content)
                thought = True
                out.reasoning(block["thinking"])
        if logprobs and resp.get("logprobs"):
            tokens = _content_logprobs(resp["logprobs"], message.get("content") or ())
            if tokens:
                out.add_logprobs(tokens)
        if message.get("tool_plan"):  # after the thinking, as streamed
            out.reasoning((PLAN_BREAK if thought else "") + message["tool_plan"])
        seen: set[bytes] = set()
        cited = [e for c in message.get("citations") or ()
                 for e in unseen_citations(url_citations(c), seen)]
        if cited:
            out.citations(cited)
        calls = message.get("tool_calls") or ()
        for i, call in enumerate(calls):
            out.tool_call_start(i, call["id"], call["function"]["name"],
                                call_arguments(call["function"].get("arguments")))
        usage = map_usage(resp["usage"]) if resp.get("usage") else None
    except WRONG_SHAPE:  # (orjson.JSONDecodeError is a ValueError)
        raise UpstreamProtocolError("the upstream answered with a malformed message") from None
    out.finish(finish_reason(reason, bool(calls)))
    if usage:
        out.usage(usage)
    return out.completion(completion_id=completion_id, created=created, model=model)


def _content_logprobs(items: Any, content: Any) -> list[dict[str, Any]]:
    """The OpenAI entries of the items that spell the answer's text, as the stream gives them
    (with text deltas, not thinking ones): the list's last items, the thinking's coming
    first. A list that does not end in the text goes as it came. A malformed item (or list)
    has no entries, as streamed: logprobs are an extra, not worth the answer."""
    if not isinstance(items, list):
        return []
    text = "".join(block.get("text") or "" for block in content if block.get("type") == "text")
    kept, spelled = len(items), ""
    while kept and len(spelled) < len(text):
        kept -= 1
        said = items[kept].get("text") if isinstance(items[kept], dict) else None
        spelled = (said if isinstance(said, str) else "") + spelled
    if spelled != text:
        kept = 0
    return [entry for item in items[kept:] for entry in token_logprobs(item, "")]
