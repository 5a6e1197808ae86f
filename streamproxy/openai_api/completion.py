"""`CompletionBuilder`: a ChunkSink that accumulates a whole `chat.completion` object.

Used where the whole answer is wanted — stored completions, the response cache, non-streamed
answers built from a stream — never on the plain streaming path. Memory is the answer's size.
"""

from __future__ import annotations

from typing import Any

from streamproxy.errors import ProxyError


class CompletionBuilder:
    def __init__(self) -> None:
        self.model: str | None = None
        self._text: list[str] = []
        self.reasoning_parts: list[str] = []
        self.thinking_blocks: list[dict[str, Any]] = []
        self.tool_calls: list[dict[str, Any]] = []
        self._args: list[list[str]] = []
        self.finish_reason: str | None = None
        self.usage_data: dict[str, Any] | None = None
        self.failure: ProxyError | None = None
        self.ended = False
        self.raw_chunks = 0

    def start(self, model: str | None = None) -> None:
        if model:
            self.model = model

    def content(self, text: str) -> None:
        self._text.append(text)

    def reasoning(self, text: str) -> None:
        self.reasoning_parts.append(text)

    def thinking_block(self, block: dict[str, Any]) -> None:
        self.thinking_blocks.append(block)

    def tool_call_start(self, index: int, call_id: str, name: str, arguments: str = "") -> None:
        while len(self.tool_calls) <= index:
            self.tool_calls.append({"id": "", "type": "function",
                                    "function": {"name": "", "arguments": ""}})
            self._args.append([])
        self.tool_calls[index]["id"] = call_id
        self.tool_calls[index]["function"]["name"] = name
        if arguments:
            self._args[index].append(arguments)

    def tool_call_args(self, index: int, fragment: str) -> None:
        self._args[index].append(fragment)

    def finish(self, reason: str) -> None:
        self.finish_reason = reason

    def usage(self, usage: dict[str, Any]) -> None:
        self.usage_data = usage

    def end(self) -> None:
        self.ended = True

    def error(self, err: ProxyError) -> None:
        self.failure = err
        self.ended = True

    def raw(self, data: bytes, finish_reason: str | None = None) -> None:
        self.raw_chunks += 1
        if finish_reason:
            self.finish_reason = finish_reason

    def message(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
        if self._text:
            msg["content"] = "".join(self._text)
        if self.reasoning_parts:
            msg["reasoning_content"] = "".join(self.reasoning_parts)
        if self.thinking_blocks:
            msg["thinking_blocks"] = self.thinking_blocks
        if self.tool_calls:
            for call, parts in zip(self.tool_calls, self._args, strict=True):
                call["function"]["arguments"] = "".join(parts)
            msg["tool_calls"] = self.tool_calls
        return msg

    def completion(self, *, completion_id: str, created: int, model: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": self.model or model,
            "system_fingerprint": None,
            "choices": [{
                "index": 0,
                "message": self.message(),
                "logprobs": None,
                "finish_reason": self.finish_reason,
            }],
        }
        if self.usage_data is not None:
            out["usage"] = self.usage_data
        return out
