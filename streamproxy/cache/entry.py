"""A cached answer, and its replay into any ChunkSink (pure: no I/O).

Two forms, both plain JSON-able dicts:
- from a stream: the delta parts and their order (`runs`, see CompletionBuilder), so a hit
  replays the same deltas with the same chunk boundaries — the content byte for byte;
- from a non-streamed answer: the `chat.completion` object itself.

Either form answers either kind of request: a streamed request that hits a non-streamed fill
gets each message part as one delta; a non-streamed request that hits a streamed fill gets the
completion rebuilt by replaying into a CompletionBuilder. Every hit gets a fresh id and created.
"""

from __future__ import annotations

import time
from typing import Any

from streamproxy.openai_api.chunks import ChunkSink
from streamproxy.openai_api.completion import CompletionBuilder

FORMAT = 1


def from_builder(b: CompletionBuilder) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "stored_at": time.time(),
        "model": b.model,
        "runs": b.runs,
        "content": b.content_parts,
        "reasoning": b.reasoning_parts,
        "thinking": b.thinking_blocks,
        "tools": [{"id": call["id"], "name": call["function"]["name"], "args": args}
                  for call, args in zip(b.tool_calls, b.tool_args, strict=True)],
        "finish": b.finish_reason,
        "usage": b.usage_data,
    }


def from_completion(completion: dict[str, Any]) -> dict[str, Any]:
    return {"format": FORMAT, "stored_at": time.time(), "completion": completion}


def is_fresh(entry: dict[str, Any], max_age: float, now: float | None = None) -> bool:
    stored_at = entry.get("stored_at")
    if entry.get("format") != FORMAT or not isinstance(stored_at, int | float):
        return False
    return (time.time() if now is None else now) - stored_at <= max_age


def streams_whole(entry: dict[str, Any]) -> bool:
    """Whether a stream replayed from `entry` carries the whole answer: a non-streamed fill's
    refusal, logprobs and custom tool calls have no delta here (a streamed request is then a
    miss). Streamed fills that had them are never kept (CompletionBuilder.replayable)."""
    completion = entry.get("completion")
    if completion is None:
        return True
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    return not (choice.get("logprobs") or message.get("refusal") or any(
        call.get("type") != "function" for call in message.get("tool_calls") or ()))


def model_of(entry: dict[str, Any]) -> str | None:
    completion = entry.get("completion")
    return completion.get("model") if completion is not None else entry.get("model")


def replay(entry: dict[str, Any], sink: ChunkSink) -> None:
    """Emit the cached answer into `sink`, start to end."""
    completion = entry.get("completion")
    if completion is not None:
        _replay_completion(completion, sink)
        return
    sink.start(entry.get("model"))
    content, reasoning, thinking, tools = (entry["content"], entry["reasoning"],
                                           entry["thinking"], entry["tools"])
    ci = ri = ti = 0
    ai = [0] * len(tools)
    for kind, index, count in entry["runs"]:
        for _ in range(count):
            if kind == "c":
                sink.content(content[ci])
                ci += 1
            elif kind == "r":
                sink.reasoning(reasoning[ri])
                ri += 1
            elif kind == "t":
                sink.thinking_block(thinking[ti])
                ti += 1
            elif kind == "s":
                sink.tool_call_start(index, tools[index]["id"], tools[index]["name"])
            elif kind == "S":
                sink.tool_call_start(index, tools[index]["id"], tools[index]["name"],
                                     tools[index]["args"][ai[index]])
                ai[index] += 1
            elif kind == "a":
                sink.tool_call_args(index, tools[index]["args"][ai[index]])
                ai[index] += 1
    _close(sink, entry.get("finish"), entry.get("usage"))


def _replay_completion(completion: dict[str, Any], sink: ChunkSink) -> None:
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    sink.start(completion.get("model"))
    if message.get("reasoning_content"):
        sink.reasoning(message["reasoning_content"])
    for block in message.get("thinking_blocks") or []:
        sink.thinking_block(block)
    if message.get("content"):
        sink.content(message["content"])
    for i, call in enumerate(message.get("tool_calls") or []):
        fn = call.get("function") or {}
        sink.tool_call_start(i, call.get("id") or "", fn.get("name") or "",
                             fn.get("arguments") or "")
    _close(sink, choice.get("finish_reason"), completion.get("usage"))


def _close(sink: ChunkSink, finish: str | None, usage: dict[str, Any] | None) -> None:
    if finish:
        sink.finish(finish)
    if usage:
        sink.usage(usage)
    sink.end()


def completion_from(entry: dict[str, Any], *, completion_id: str, created: int,
                    model: str) -> dict[str, Any]:
    """The non-streamed answer for a hit, under a fresh id and creation time."""
    completion = entry.get("completion")
    if completion is not None:
        return {**completion, "id": completion_id, "created": created}
    builder = CompletionBuilder()
    replay(entry, builder)
    return builder.completion(completion_id=completion_id, created=created, model=model)
