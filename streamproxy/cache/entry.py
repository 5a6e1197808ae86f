"""A cached answer, and its replay into any ChunkSink (pure: no I/O).

Two forms, both plain JSON-able dicts:
- from a stream: the delta parts and their order (`runs`, see CompletionBuilder), so a hit
  replays the same deltas with the same chunk boundaries — the content byte for byte;
- from a non-streamed answer: the `chat.completion` object itself.

Either form answers either kind of request: a streamed request that hits a non-streamed fill
gets each message part as one delta; a non-streamed request that hits a streamed fill gets the
completion rebuilt by replaying into a CompletionBuilder. Every hit gets a fresh id and created;
the upstream's own `system_fingerprint` and `service_tier` (an OpenAI pass-through's) are kept.
A translated answer's `service_tier`, which its provider told at the end (Bedrock's), is kept
as `tier` and told at the end of a replay: on the usage chunk, as the first stream had it.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from streamproxy.openai_api.chunks import ChunkEncoder, ChunkSink
from streamproxy.openai_api.completion import (
    SOURCE_FIELDS,
    UPSTREAM_FIELDS,
    CompletionBuilder,
)

FORMAT = 1
# What replaying an entry that claims FORMAT but lacks fields or has the wrong types raises.
MALFORMED = (KeyError, IndexError, TypeError, AttributeError, ValueError)


def from_builder(b: CompletionBuilder) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "stored_at": time.time(),
        "model": b.model,
        "runs": b.runs,
        "text_first": b.text_first,
        "content": b.content_parts,
        "reasoning": b.reasoning_parts,
        "thinking": b.thinking_blocks,
        "tools": [{"id": call["id"], "name": call["function"]["name"], "args": args}
                  for call, args in zip(b.tool_calls, b.tool_args, strict=True)],
        "finish": b.finish_reason,
        "usage": b.usage_data,
        "upstream": b.upstream_fields,
        "tier": b.tier,
        # (a pass-through's null, which a replay would give as "" with nothing standing for it)
        "content_null": b.content_is_null,
    }


def from_completion(completion: dict[str, Any], translated: bool = False) -> dict[str, Any]:
    """`translated`: the answer is ours, made from another API's, so its `service_tier` is one
    its provider told at the end (`tier`), not an upstream envelope's."""
    entry = {"format": FORMAT, "stored_at": time.time(), "completion": completion}
    if translated and isinstance(completion.get("service_tier"), str):
        entry["tier"] = completion["service_tier"]
    return entry


def is_fresh(entry: dict[str, Any], max_age: float, now: float | None = None) -> bool:
    stored_at = entry.get("stored_at")
    if entry.get("format") != FORMAT or not isinstance(stored_at, int | float):
        return False
    return (time.time() if now is None else now) - stored_at <= max_age


def streams_whole(entry: dict[str, Any]) -> bool:
    """Whether a stream replayed from `entry` carries the whole answer: a non-streamed fill's
    top-level sources (`citations`, `search_results`), refusal, logprobs, annotations, audio,
    generated images, custom tool calls, a deprecated `functions` call (`function_call`),
    reasoning under the upstream's own name (`reasoning`; a replay writes
    `reasoning_content`), content given as typed parts (Mistral's reasoning models: a replay
    writes text deltas) and what a thinking model's next turn sends back beside the parts
    (OpenRouter's `reasoning_details`, a tool call's `extra_content`: Gemini's thought
    signature) have no delta here (a streamed request is then a miss). Streamed
    fills that had them are never kept (CompletionBuilder.replayable)."""
    completion = entry.get("completion")
    if completion is None:
        return True
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content = message.get("content")
    return not (any(completion.get(key) for key in SOURCE_FIELDS)
                or not (content is None or isinstance(content, str))
                or choice.get("logprobs") or message.get("refusal") or message.get("annotations")
                or message.get("audio") or message.get("images") or message.get("reasoning")
                or message.get("function_call") or message.get("reasoning_details")
                or any(call.get("type") != "function" or call.get("extra_content")
                       for call in message.get("tool_calls") or ()))


def upstream_fields(entry: dict[str, Any]) -> dict[str, str]:
    """The answer's `system_fingerprint` / `service_tier` as the upstream sent them (none for a
    translated answer: ours are null)."""
    completion = entry.get("completion")
    fields = completion if completion is not None else entry.get("upstream") or {}
    told = _tier(entry) is not None  # (a translated answer's: told at the end)
    return {k: fields[k] for k in UPSTREAM_FIELDS if isinstance(fields.get(k), str)
            and not (told and k == "service_tier")}


def _tier(entry: dict[str, Any]) -> str | None:
    tier = entry.get("tier")
    return tier if isinstance(tier, str) else None


class ReplayEncoder(ChunkEncoder):
    """The encoder of a streamed hit: its envelope carries the upstream fields the answer came
    with (`upstream_fields`), as the first stream's chunks did."""

    def __init__(self, fields: dict[str, str], **envelope: Any) -> None:
        super().__init__(**envelope)
        self.upstream_fields_json = b"".join(
            b',"%s":%b' % (k.encode(), orjson.dumps(fields.get(k))) for k in UPSTREAM_FIELDS
            if k in fields or k == "system_fingerprint")


def model_of(entry: dict[str, Any]) -> str | None:
    completion = entry.get("completion")
    return completion.get("model") if completion is not None else entry.get("model")


def replay(entry: dict[str, Any], sink: ChunkSink) -> None:
    """Emit the cached answer into `sink`, start to end."""
    completion = entry.get("completion")
    if completion is not None:
        _replay_completion(completion, sink, _tier(entry))
        return
    # (an entry without `text_first`, from before it was kept, replays as it did)
    text_first = entry.get("text_first")
    sink.start(entry.get("model"), text_first if isinstance(text_first, bool) else None)
    content, reasoning, thinking, tools = (entry["content"], entry["reasoning"],
                                           entry["thinking"], entry["tools"])
    ci = ri = ti = 0
    ai = [0] * len(tools)
    for kind, index, count in _runs(entry):
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
    if entry.get("content_null") is True:  # (absent in entries from before it was kept)
        sink.content_null()
    _close(sink, entry.get("finish"), entry.get("usage"), _tier(entry))


_RUN_KINDS = frozenset("crtsSa")  # CompletionBuilder's (openai_api/completion.py)


def _runs(entry: dict[str, Any]) -> list[Any]:
    """The entry's runs, if its parts can fill them (else it is malformed: a miss). Each unit
    of a run takes a part or starts a call, which a builder does once per call; a corrupted
    count replayed for as long as it said: a million starts of a call for a minute, a kind we
    never write for ever."""
    runs = entry["runs"]
    left = (len(entry["content"]) + len(entry["reasoning"]) + len(entry["thinking"])
            + sum(1 + len(tool["args"]) for tool in entry["tools"]))
    for kind, _, count in runs:
        left -= max(count, 0)
        if left < 0 or kind not in _RUN_KINDS:
            raise ValueError("a cache entry's runs are longer than its parts")
    return runs  # type: ignore[no-any-return]


def _replay_completion(completion: dict[str, Any], sink: ChunkSink, tier: str | None) -> None:
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    # Its content null or not, the stream's role chunk says so (tool calls, reasoning or
    # nothing may come first): a client that joins the deltas gets the answer's content.
    sink.start(completion.get("model"), isinstance(message.get("content"), str))
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
    if message.get("content") is None:  # (an upstream's null stays null, calls or not)
        sink.content_null()
    _close(sink, choice.get("finish_reason"), completion.get("usage"), tier)


def _close(sink: ChunkSink, finish: str | None, usage: dict[str, Any] | None,
           tier: str | None) -> None:
    if finish:
        sink.finish(finish)
    if tier is not None:
        sink.service_tier(tier)
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
    builder.upstream_fields = upstream_fields(entry)
    return builder.completion(completion_id=completion_id, created=created, model=model)
