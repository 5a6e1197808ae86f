"""`CompletionBuilder`: a ChunkSink that accumulates a whole `chat.completion` object.

Used where the whole answer is wanted — stored completions, the response cache, non-streamed
answers built from a stream — never on the plain streaming path. Memory is the answer's size.

Besides the parts, it keeps the order they came in as `runs` — `[kind, index, count]`, one entry
per change of kind, not per delta — so the cache can replay a stream with its original chunk
boundaries (`cache/entry.py`). Kinds: c content, r reasoning, t thinking block, s tool call
start, S tool call start carrying its first argument fragment, a argument fragment.

A builder holds choice 0; a pass-through's other choices (`n` > 1) get a builder each
(`other_choices`), whose parts are theirs and whose envelope is the first's.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

from streamproxy._json import loads_lenient, loads_repaired
from streamproxy.errors import ProxyError
from streamproxy.openai_api.chunks import RecordingChunkEncoder, image_entry

_MAX_TOOL_CALLS = 1024  # a pass-through chunk's tool call index above this is not captured
_MAX_CHOICES = 128  # OpenAI's bound on `n`: a choice index beyond it is not captured
# A pass-through's envelope fields kept as the upstream sent them (in OpenAI's order); ours
# are null (system_fingerprint) or absent (service_tier).
UPSTREAM_FIELDS = ("service_tier", "system_fingerprint")
# A search model's sources on a pass-through's top level, beside `choices` (Perplexity's
# `citations` and `search_results`, xAI's `citations`): the answer keeps them there.
SOURCE_FIELDS = ("citations", "search_results")
# A `reasoning_details` entry's fields that come in pieces (`_raw_reasoning_details`).
_JOINED_DETAILS = frozenset({"text", "summary", "data"})


class CompletionBuilder:
    def __init__(self) -> None:
        self.model: str | None = None
        # Content deltas in order: a str when given decoded (`content`), or the inside of its
        # JSON string literal (bytes) when a RecordingChunkEncoder appends it, escaped as the
        # client's chunk carried it — a spliced read's literals as they came. Decoded once, at
        # the end; `_decoded` counts the str ones, so a list of one kind needs no look inside.
        self._parts: list[str | bytes] = []
        self._decoded = 0
        self.reasoning_parts: list[str] = []
        # The field the reasoning came in: a pass-through's client read it under the upstream's
        # name (`reasoning`: OpenRouter, Groq, vLLM), as the upstream's whole answer has it.
        self.reasoning_key = "reasoning_content"
        self.reasoning_details: list[dict[str, Any]] = []  # a pass-through's, joined
        self.thinking_blocks: list[dict[str, Any]] = []
        self.tool_calls: list[dict[str, Any]] = []
        self._args: list[list[str]] = []
        # What start() said the answer begins with before any part came (None: not said). The
        # stream's role chunk follows it — `content: ""` for a text block, though it may stay
        # empty; null for another block, though nothing may follow it.
        self.text_first: bool | None = None
        self.null_told = False  # content_null(): a replay's answer has content null
        self.finish_reason: str | None = None
        self.usage_data: dict[str, Any] | None = None
        self.failure: ProxyError | None = None
        self.ended = False
        self.raw_chunks = 0
        # The answer's refusal (a pass-through's, captured, or a translator's `refusal`), and
        # whether it carried what a replay cannot give back (a refusal, logprobs, annotations,
        # audio, images, reasoning named `reasoning` or in `reasoning_details`, a custom or
        # signed tool call, typed content parts, a choice beyond 0): the cache keeps no entry.
        self.refusal_parts: list[str] = []
        self.replayable = True
        self.annotations: list[Any] = []  # a pass-through's citations (search models)
        self._audio: dict[str, Any] | None = None  # a pass-through's audio answer (_raw_audio)
        self.images: list[Any] = []  # generated images (`message.images`), in order
        # This choice's logprobs (a pass-through's, or a translator's), joined as
        # OpenAI's whole answer has them: `{"content": [...], "refusal": [...]}`; None when no
        # chunk carried any.
        self.logprobs: dict[str, Any] | None = None
        self.custom_calls: set[int] = set()  # indices of custom (freeform) tool calls
        # A pass-through's call of the deprecated `functions` (`delta.function_call`): its
        # name and argument pieces, as `message.function_call` has them joined.
        self._function_call: tuple[str, list[str]] | None = None
        self.upstream_fields: dict[str, str] = {}  # a pass-through's UPSTREAM_FIELDS
        # A translator's `service_tier()`: told at the end (Bedrock's metadata), not on every
        # chunk as a pass-through's is, so a cache replay tells it at the end too.
        self.tier: str | None = None
        # A pass-through's content as typed parts (Mistral's reasoning models), joined: the
        # whole answer's `content` list, its thinking with it (None: none came).
        self.typed_parts: list[dict[str, Any]] | None = None
        self.sources: dict[str, Any] = {}  # a pass-through's SOURCE_FIELDS, the last given
        self.other_choices: dict[int, CompletionBuilder] = {}  # a pass-through's n > 1
        self._runs: list[list[Any]] = []  # closed runs; the open one is the three below
        self._kind: str | None = None
        self._index = 0
        self._count = 0
        self._mark = 0  # len(_parts) when the runs last took it in (content() only appends)
        # The envelope the client saw: set from the encoder by TeeSink, or from a pass-through
        # stream's first chunk (the upstream's own id).
        self.id: str | None = None
        self.created: int | None = None
        # A pass-through chunk with a UTF-16 half alone came (see `_mend`).
        self._halves = False

    def _take_text(self) -> None:
        """The content deltas appended since the last step, as (the rest of) a `c` run."""
        n = len(self._parts) - self._mark
        if not n:
            return
        self._mark += n
        if self._kind == "c":
            self._count += n
            return
        if self._kind is not None:
            self._runs.append([self._kind, self._index, self._count])
        self._kind, self._index, self._count = "c", 0, n

    def _step(self, kind: str, index: int = 0) -> None:
        self._take_text()
        if self._kind == kind and self._index == index:
            self._count += 1
            return
        if self._kind is not None:
            self._runs.append([self._kind, self._index, self._count])
        self._kind, self._index, self._count = kind, index, 1

    @property
    def runs(self) -> list[list[Any]]:
        self._take_text()
        if self._kind is None:
            return list(self._runs)
        return [*self._runs, [self._kind, self._index, self._count]]

    @property
    def literal_parts(self) -> list[Any]:
        """The list a RecordingChunkEncoder appends its literals to (TeeSink wires it)."""
        return self._parts

    @property
    def content_parts(self) -> list[str]:
        """Each content delta's text (literals decoded: one parse for all)."""
        parts: list[Any] = self._parts
        if self._decoded == len(parts):
            return parts
        if not self._decoded:
            return orjson.loads(b'["%b"]' % b'","'.join(parts))  # type: ignore[no-any-return]
        return [p if type(p) is str else orjson.loads(b'"%b"' % p) for p in parts]

    @property
    def tool_args(self) -> list[list[str]]:
        """Each tool call's argument fragments, in order (a start's inline arguments first)."""
        return self._args

    def start(self, model: str | None = None, text: bool | None = None) -> None:
        if model:
            self.model = model
        if text is not None and self._kind is None and not self._parts and not self.images:
            self.text_first = text  # (as the encoder: once a part came, the role is out)

    def content(self, text: str) -> None:
        # Only the append: the run is counted when the kind changes (_take_text), so a
        # RecordingChunkEncoder can append to this list itself, with no call here per delta.
        self._parts.append(text)
        self._decoded += 1

    def content_logprobs(self, text: str, tokens: list[dict[str, Any]]) -> None:
        if text:
            self.content(text)
        self.add_logprobs(tokens)

    def add_logprobs(self, tokens: list[dict[str, Any]]) -> None:
        """A translated answer's content logprobs, joined in order. A replay has no logprobs
        to give back, so the cache keeps no entry for a stream that had them."""
        self.replayable = False
        self._raw_logprobs({"content": tokens})

    def reasoning(self, text: str) -> None:
        self.reasoning_parts.append(text)
        if self._kind == "r" and len(self._parts) == self._mark:
            self._count += 1
        else:
            self._step("r")

    def refusal(self, text: str) -> None:
        self.refusal_parts.append(text)
        self.replayable = False  # a replay's runs have no refusal

    def thinking_block(self, block: dict[str, Any]) -> None:
        self.thinking_blocks.append(block)
        self._step("t")

    def image(self, url: str) -> None:
        self.images.append(image_entry(url, len(self.images)))
        self.replayable = False  # a replay would answer without it (its runs have no kind)

    def citations(self, entries: list[dict[str, Any]]) -> None:
        self.annotations.extend(entries)
        self.replayable = False  # a replay would answer without them

    def tool_call_start(self, index: int, call_id: str, name: str, arguments: str = "") -> None:
        while len(self.tool_calls) <= index:
            self.tool_calls.append({"id": "", "type": "function",
                                    "function": {"name": "", "arguments": ""}})
            self._args.append([])
        self.tool_calls[index]["id"] = call_id
        self.tool_calls[index]["function"]["name"] = name
        if arguments:
            self._args[index].append(arguments)
        self._step("S" if arguments else "s", index)

    def tool_call_args(self, index: int, fragment: str) -> None:
        self._args[index].append(fragment)
        self._step("a", index)

    def finish(self, reason: str) -> None:
        self.finish_reason = reason

    def service_tier(self, tier: str) -> None:
        self.tier = tier

    def usage(self, usage: dict[str, Any]) -> None:
        self.usage_data = usage

    def end(self) -> None:
        self.ended = True
        if self._halves:
            self._mend()

    def _mend(self) -> None:
        """A Node server cuts a string inside an emoji as `\\ud83d` in one chunk and `\\ude00`
        in the next; the client's JavaScript parser joins its deltas into the emoji. Such
        chunks were read keeping each half (`raw_chunk`): once, at the end, the halves that
        meet across pieces are paired and those still alone read as U+FFFD, what the stream
        path reads them as — no str kept here holds one (orjson could not write it)."""
        for b in (self, *self.other_choices.values()):
            b._parts[:] = _paired(b.content_parts)
            b._decoded = len(b._parts)
            b.reasoning_parts = _paired(b.reasoning_parts)
            b.refusal_parts = _paired(b.refusal_parts)
            b._args = [_paired(args) for args in b._args]
            if b._function_call is not None:
                b._function_call = (_whole(b._function_call[0]), _paired(b._function_call[1]))
            if b._audio is not None:
                b._audio["transcript"] = _paired(b._audio["transcript"])
            for name in ("model", "id", "tool_calls", "annotations", "images", "logprobs",
                         "_audio", "upstream_fields", "sources", "usage_data",
                         "reasoning_details", "typed_parts"):
                setattr(b, name, _whole(getattr(b, name)))

    def error(self, err: ProxyError) -> None:
        self.failure = err
        self.ended = True

    def raw(self, data: bytes, finish_reason: str | None = None) -> None:
        self.raw_chunk(data, finish_reason)

    def zero_usage(self, data: bytes) -> None:
        pass  # (the client's, not the answer's: see ChunkSink.zero_usage)

    def envelope(self) -> dict[str, Any]:
        return {"id": self.id or "", "created": self.created or 0, "model": self.model or ""}

    def raw_run(self, frames: bytes) -> None:
        """Pass-through events framed as `ChunkEncoder.raw_run` takes them, one by one."""
        for data in frames[6:-2].split(b"\n\ndata: "):
            self.raw_chunk(data)

    def raw_chunk(self, data: bytes, finish_reason: str | None = None) -> None:
        """A pass-through chunk: parsed and accumulated like a client would (capture only).
        What the upstream sends is forwarded unparsed, so any shape can come here: what is
        not a chunk's is skipped, never raised (the client's stream must not fail for it)."""
        self.raw_chunks += 1
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            try:  # (a lone surrogate escape: the client's parser read it, so do we)
                loads_repaired(data)  # (what orjson takes but for the halves: no NaN, no 2**64)
            except orjson.JSONDecodeError:
                return
            chunk = json.loads(data)  # its halves kept, to pair across chunks (`_mend`)
            self._halves = True
        if not isinstance(chunk, dict):
            return
        if self.raw_chunks == 1:  # a pass-through stream: the client saw the upstream's ids
            if isinstance(chunk.get("id"), str) and chunk["id"]:
                self.id = chunk["id"]
            if isinstance(chunk.get("created"), int):
                self.created = chunk["created"]
        if isinstance(chunk.get("model"), str) and chunk["model"]:
            self.model = chunk["model"]
        for key in UPSTREAM_FIELDS:
            if isinstance(chunk.get(key), str):
                self.upstream_fields[key] = chunk[key]
        for key in SOURCE_FIELDS:
            if chunk.get(key):  # (repeated on every chunk, or sent once at the end)
                self.sources[key] = chunk[key]
                self.replayable = False  # a replay's chunks would carry none
        if isinstance(chunk.get("usage"), dict) and chunk["usage"]:
            self.usage_data = chunk["usage"]
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            if index == 0:
                builder = self
            elif type(index) is int and 0 < index < _MAX_CHOICES:
                builder = self._other_choice(index)
            else:
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                builder._raw_delta(delta)
            if choice.get("logprobs") is not None:
                builder.replayable = False
                if isinstance(choice["logprobs"], dict):
                    builder._raw_logprobs(choice["logprobs"])
            if isinstance(choice.get("finish_reason"), str) and choice["finish_reason"]:
                builder.finish_reason = choice["finish_reason"]

    def _other_choice(self, index: int) -> CompletionBuilder:
        """The builder of a pass-through's choice `index` > 0 (`n` > 1): its parts are its
        own, the envelope (id, model, usage) is this one's."""
        other = self.other_choices.get(index)
        if other is None:
            other = self.other_choices[index] = CompletionBuilder()
            self.replayable = False  # a replay gives back one choice
        return other

    def _raw_logprobs(self, logprobs: dict[str, Any]) -> None:
        joined = self.logprobs
        if joined is None:
            joined = self.logprobs = {"content": None, "refusal": None}
        for key in ("content", "refusal"):
            tokens = logprobs.get(key)
            if isinstance(tokens, list):
                if joined[key] is None:
                    joined[key] = []
                joined[key].extend(tokens)

    def _raw_delta(self, delta: dict[str, Any]) -> None:
        content = delta.get("content")
        if isinstance(content, list):  # typed parts (Mistral's reasoning models): their text
            # A replay writes text deltas only: the client's parts (its thinking) would be lost.
            self.replayable = False
            self._raw_typed_parts(content)
            content = "".join(p["text"] for p in content if isinstance(p, dict)
                              and p.get("type") == "text" and isinstance(p.get("text"), str))
        elif self.typed_parts is not None and isinstance(content, str) and content:
            self._raw_typed_parts([{"type": "text", "text": content}])  # (a plain one among them)
        if isinstance(content, str) and content:
            self.content(content)
        else:
            if isinstance(content, str):  # (a pass-through's content is what its stream
                self.text_first = True  # said: a string, or null)
            call = delta.get("function_call")  # (never beside text: text deltas skip this)
            if isinstance(call, dict):
                self._raw_function_call(call)
        # DeepSeek's name, else OpenRouter's, Groq's and vLLM's; a server that sends both
        # (vllm-mlx, vLLM while it renamed the field) sends the same text twice.
        key = "reasoning_content"
        reasoning = delta.get(key)
        if not isinstance(reasoning, str) or not reasoning:
            key, reasoning = "reasoning", delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            if not self.reasoning_parts:  # the first delta names it (a server may send both)
                self.reasoning_key = key
                if key == "reasoning":  # a replay would write it as reasoning_content
                    self.replayable = False
            self.reasoning(reasoning)
        refusal = delta.get("refusal")
        if isinstance(refusal, str) and refusal:
            self.refusal_parts.append(refusal)
            self.replayable = False
        annotations = delta.get("annotations")
        if annotations:  # (web search citations: the stream's one delta carries them all)
            self.replayable = False  # a replay would answer without them
            if isinstance(annotations, list):
                self.annotations.extend(annotations)
        images = delta.get("images")
        if images:  # (an image model's answer through OpenRouter: each image whole)
            self.replayable = False  # a replay would answer without them
            if isinstance(images, list):
                self.images.extend(images)
        audio = delta.get("audio")
        if audio:
            self.replayable = False  # a replay would answer without it
            if isinstance(audio, dict):
                self._raw_audio(audio)
        details = delta.get("reasoning_details")
        if details:  # (OpenRouter's, often encrypted: the next turn sends them back; a replay
            self.replayable = False  # has no delta for them)
            if isinstance(details, list):
                self._raw_reasoning_details(details)
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            self._raw_tool_calls(calls)

    def _raw_reasoning_details(self, details: list[Any]) -> None:
        """OpenRouter's `reasoning_details` pieces, joined as its whole answer has them: a
        piece with the `index` and type of a kept entry continues it (its text, summary or
        data appended, a later field such as the signature added), another is a new entry."""
        kept = self.reasoning_details
        for piece in details:
            if not isinstance(piece, dict):
                continue
            index = piece.get("index")
            entry = next((e for e in reversed(kept) if index is not None
                          and e.get("index") == index and e.get("type") == piece.get("type")),
                         None)
            if entry is None:
                kept.append(dict(piece))
                continue
            for key, value in piece.items():
                if key in _JOINED_DETAILS and isinstance(value, str) \
                        and isinstance(entry.get(key), str):
                    entry[key] += value
                elif value is not None:
                    entry[key] = value

    def _raw_typed_parts(self, parts: list[Any]) -> None:
        """Typed content parts joined as the whole answer has them: a text part continues the
        text part before it, a thinking part the thinking before it (its texts joined, its
        other fields the latest); any other part is kept as it came."""
        kept = self.typed_parts
        if kept is None:
            kept = self.typed_parts = []
            if self._parts:  # (text that came as a plain string before the first part)
                kept.append({"type": "text", "text": "".join(self.content_parts)})
        for part in parts:
            if not isinstance(part, dict):
                continue
            last = kept[-1] if kept else {}
            kind = part.get("type")
            if kind == last.get("type") == "text" and isinstance(part.get("text"), str) \
                    and isinstance(last.get("text"), str):
                last["text"] += part["text"]
            elif kind == last.get("type") == "thinking" and isinstance(part.get("thinking"), list) \
                    and isinstance(last.get("thinking"), list):
                for key, value in part.items():
                    if key != "thinking":
                        last[key] = value
                _join_texts(last["thinking"], part["thinking"])
            else:
                part = dict(part)
                if isinstance(part.get("thinking"), list):  # (a copy: later pieces join it)
                    part["thinking"] = _join_texts([], part["thinking"])
                kept.append(part)

    def _raw_tool_calls(self, calls: list[Any]) -> None:
        for tc in calls:
            index = tc.get("index", 0) if isinstance(tc, dict) else None
            if type(index) is not int or not 0 <= index < _MAX_TOOL_CALLS:
                continue  # (the list grows to the index: a bound, whatever the upstream says)
            extra = tc.get("extra_content")
            if extra:  # (Gemini's thought signature: the next turn sends it back; a replay's
                self.replayable = False  # call has only id, name, args)
            fn = tc.get("function")
            if not isinstance(fn, dict):
                fn = self._custom_call(index, tc.get("custom"))
            name, args = fn.get("name"), fn.get("arguments")
            name = name if isinstance(name, str) else ""
            args = args if isinstance(args, str) else ""
            call_id = tc.get("id")
            call_id = call_id if isinstance(call_id, str) else ""
            if not self._started(index):
                # An id or, without one, a name starts the call: some proxies in front of
                # Gemini send `"id": ""` with the name, and the client got the call all the same.
                if call_id or name:
                    self.tool_call_start(index, call_id, name, args)
            elif args:  # (some upstreams repeat the id and name on every chunk)
                self.tool_call_args(index, args)
            if isinstance(extra, dict) and self._started(index):  # kept on the call, as the
                call = self.tool_calls[index]  # whole answer has it
                call["extra_content"] = {**call.get("extra_content", {}), **extra}

    def _started(self, index: int) -> bool:
        """Whether the call at `index` has started (not a gap `tool_call_start` filled)."""
        if index >= len(self.tool_calls):
            return False
        call = self.tool_calls[index]
        return bool(call["id"] or call["function"]["name"])

    def _raw_audio(self, audio: dict[str, Any]) -> None:
        """An audio answer's delta: its id and expiry come once, its base64 data and its
        transcript in pieces, joined as the whole answer's `message.audio` has them."""
        kept = self._audio
        if kept is None:
            kept = self._audio = {"id": "", "data": [], "expires_at": None, "transcript": []}
        for key in ("id", "expires_at"):
            if audio.get(key) is not None:
                kept[key] = audio[key]
        for key in ("data", "transcript"):
            if isinstance(audio.get(key), str):
                kept[key].append(audio[key])

    def _raw_function_call(self, call: dict[str, Any]) -> None:
        """A deprecated `functions` call's delta: the name once, the arguments in pieces. A
        replay has no delta for it (it would answer finish_reason "function_call" and no
        call), so the cache keeps none."""
        self.replayable = False
        name, args = call.get("name"), call.get("arguments")
        if self._function_call is None:
            self._function_call = name if isinstance(name, str) else "", []
        if isinstance(args, str) and args:
            self._function_call[1].append(args)

    def _custom_call(self, index: int, custom: Any) -> dict[str, Any]:
        """A custom tool call's delta (`custom: {name, input}`), read as a function's: its
        input is the arguments; `message` gives it back its own shape. A replay would make
        it a function call, so the cache keeps none."""
        if not isinstance(custom, dict):
            return {}
        self.custom_calls.add(index)
        self.replayable = False
        return {"name": custom.get("name"), "arguments": custom.get("input")}

    def message(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"role": "assistant", "content": None,
                               "refusal": "".join(self.refusal_parts) or None}
        if self._parts:
            parts: list[Any] = self._parts
            msg["content"] = ("".join(self.content_parts) if self._decoded
                              else orjson.loads(b'"%b"' % b"".join(parts)))
        elif self.text_first or (not (self.raw_chunks or self.null_told) and self._empty):
            msg["content"] = ""  # as OpenAI's empty answer, and the stream's chunks, say
        if self.typed_parts:
            msg["content"] = self.typed_parts
        if self.reasoning_parts:
            msg[self.reasoning_key] = "".join(self.reasoning_parts)
        if self.reasoning_details:
            msg["reasoning_details"] = self.reasoning_details
        if self.thinking_blocks:
            msg["thinking_blocks"] = self.thinking_blocks
        if self.annotations:
            msg["annotations"] = self.annotations
        if self.images:
            msg["images"] = self.images
        if self._audio is not None:
            audio = self._audio
            msg["audio"] = {"id": audio["id"], "data": "".join(audio["data"]),
                            "expires_at": audio["expires_at"],
                            "transcript": "".join(audio["transcript"])}
        if self._function_call is not None:
            name, args = self._function_call
            msg["function_call"] = {"name": name, "arguments": "".join(args)}
        if self.tool_calls:
            for call, parts in zip(self.tool_calls, self._args, strict=True):
                call["function"]["arguments"] = "".join(parts)
            msg["tool_calls"] = [
                {"id": call["id"], "type": "custom", "custom": {
                    "name": call["function"]["name"], "input": call["function"]["arguments"]}}
                if i in self.custom_calls else call for i, call in enumerate(self.tool_calls)]
        return msg

    def content_null(self) -> None:
        self.null_told = True

    @property
    def content_is_null(self) -> bool:
        """message()'s `content` is null (without building it)."""
        return not (self._parts or self.typed_parts or self.text_first
                    or (not (self.raw_chunks or self.null_told) and self._empty))

    @property
    def _empty(self) -> bool:
        """Nothing a null content stands for came (calls, images, a refusal, audio): the
        stream's role or finish chunk gave `content: ""`, as OpenAI answers when a model says
        nothing (a reasoning model's budget spent, a stop sequence hit at once). Reasoning is
        no answer: OpenAI's reasoning models give "" when they only reasoned."""
        return not (self.tool_calls or self.images or self.refusal_parts
                    or self._audio is not None)

    def _choice(self, index: int) -> dict[str, Any]:
        return {"index": index, "message": self.message(), "logprobs": self.logprobs,
                "finish_reason": self.finish_reason}

    def completion(self, *, completion_id: str, created: int, model: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": self.model or model,
            "system_fingerprint": None,
            "choices": [self._choice(0), *(other._choice(index) for index, other
                                           in sorted(self.other_choices.items()))],
        }
        if self.usage_data is not None:
            out["usage"] = self.usage_data
        out.update(self.upstream_fields)
        if self.tier is not None:
            out["service_tier"] = self.tier
        out.update(self.sources)
        return out


def _join_texts(kept: list[Any], pieces: list[Any]) -> list[Any]:
    """`pieces` (`{"type": "text", "text": …}` and others) added to `kept`: a text piece
    continues a text one before it."""
    for piece in pieces:
        last = kept[-1] if kept and isinstance(kept[-1], dict) else {}
        if isinstance(piece, dict) and piece.get("type") == last.get("type") == "text" \
                and isinstance(piece.get("text"), str) and isinstance(last.get("text"), str):
            last["text"] += piece["text"]
        else:
            kept.append(dict(piece) if isinstance(piece, dict) else piece)
    return kept


def _whole_text(text: str) -> str:
    """`text` with its UTF-16 halves paired, each one alone as U+FFFD (a UTF-16 decoder's
    reading)."""
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _whole(value: Any) -> Any:
    """`value` (parsed JSON) with `_whole_text` applied to each string in it."""
    if isinstance(value, str):
        return _whole_text(value)
    if isinstance(value, list):
        return [_whole(item) for item in value]
    if isinstance(value, dict):
        return {_whole(key): _whole(item) for key, item in value.items()}
    return value


def _paired(parts: list[str]) -> list[str]:
    """Text pieces in order, whole (`_whole_text`): a high half ending a piece goes on to the
    next, where the low half that starts it makes the pair (the piece it left may be empty;
    the count stays, for the cache's runs)."""
    out: list[str] = []
    carry = ""
    for part in parts:
        part = carry + part
        carry = part[-1:] if "\ud800" <= part[-1:] <= "\udbff" else ""
        out.append(_whole_text(part[:-1] if carry else part))
    if carry and out:
        out[-1] += "\ufffd"
    return out


# An `"id"` with a non-empty string in a pass-through chunk: its completion id, or a nested
# object's (a tool call's), which may come first (`_upstream_id`).
_ANY_ID = re.compile(rb'"id": ?("(?:[^"\\]|\\.)+")')


def _upstream_id(data: bytes) -> bytes | None:
    """The completion id, spelled as in `data` (a JSON string), of the first of these
    pass-through events (one, or a run's frames) that has one: its top-level `id`, not a tool
    call's — Gemini writes `choices` before `id`, so its first `"id"` is a call's. An event is
    parsed only if it has an `"id"` at all, and only until the id is known."""
    for event in data.removeprefix(b"data: ").removesuffix(b"\n\n").split(b"\n\ndata: "):
        spellings = _ANY_ID.findall(event)
        if not spellings:
            continue
        try:
            chunk = loads_lenient(event)
        except orjson.JSONDecodeError:
            continue
        completion_id = chunk.get("id") if isinstance(chunk, dict) else None
        for spelling in spellings:
            if loads_lenient(spelling) == completion_id:
                return spelling  # type: ignore[no-any-return]
    return None


def _with_id(event: bytes, id_field: bytes) -> bytes:
    """A pass-through event with `id_field` (our `"id":"chatcmpl-…"`) first when it has no
    `id` at all: a client of a server that leaves it out would have no id to retrieve its
    stored completion by."""
    if event[:1] != b"{":
        return event
    try:  # (what is no JSON object goes as it came; an empty id of its own stays)
        chunk = loads_lenient(event)
    except orjson.JSONDecodeError:
        return event
    if not isinstance(chunk, dict) or "id" in chunk:
        return event
    empty = event[1:].lstrip()[:1] == b"}"
    return b"{%b%b%b" % (id_field, b"" if empty else b",", event[1:])


class TeeSink:
    """Feeds one stream to the encoder and to a CompletionBuilder. Used only when something
    needs the whole answer (store: true, a cache fill), so the plain path pays nothing.
    Content deltas go to the encoder alone, which records their text in the builder's list
    (`RecordingChunkEncoder`): one call per delta; the rarer events are forwarded to both.

    Pass-through chunks are forwarded under the encoder's completion id, not the upstream's:
    a captured answer lives in the proxy's id space, where an upstream's ids may repeat (a
    mock, a local server) and a stored completion would overwrite another."""

    __slots__ = ("_ours", "_theirs", "builder", "content", "content_literals", "encoder")

    def __init__(self, encoder: RecordingChunkEncoder, builder: CompletionBuilder) -> None:
        self.encoder = encoder
        self.builder = builder
        self._theirs: tuple[bytes, ...] = ()  # the upstream id's `"id":` spellings, once seen
        self._ours = b""  # ours, spelled when a pass-through chunk first needs it
        builder.id = encoder.completion_id
        builder.created = encoder.created
        encoder.literals = builder.literal_parts  # CompletionBuilder.content is this append
        self.content = encoder.content
        self.content_literals = encoder.content_literals

    def start(self, model: str | None = None, text: bool | None = None) -> None:
        self.encoder.start(model, text)
        self.builder.start(model, text)

    def content_logprobs(self, text: str, tokens: list[dict[str, Any]]) -> None:
        self.encoder.content_logprobs(text, tokens)  # records the text in the builder's list
        self.builder.add_logprobs(tokens)

    def reasoning(self, text: str) -> None:
        self.encoder.reasoning(text)
        self.builder.reasoning(text)

    def refusal(self, text: str) -> None:
        self.encoder.refusal(text)
        self.builder.refusal(text)

    def thinking_block(self, block: dict[str, Any]) -> None:
        self.encoder.thinking_block(block)
        self.builder.thinking_block(block)

    def image(self, url: str) -> None:
        self.encoder.image(url)
        self.builder.image(url)

    def citations(self, entries: list[dict[str, Any]]) -> None:
        self.encoder.citations(entries)
        self.builder.citations(entries)

    def tool_call_start(self, index: int, call_id: str, name: str, arguments: str = "") -> None:
        self.encoder.tool_call_start(index, call_id, name, arguments)
        self.builder.tool_call_start(index, call_id, name, arguments)

    def tool_call_args(self, index: int, fragment: str) -> None:
        self.encoder.tool_call_args(index, fragment)
        self.builder.tool_call_args(index, fragment)

    def content_null(self) -> None:
        self.encoder.content_null()
        self.builder.content_null()

    def finish(self, reason: str) -> None:
        self.encoder.finish(reason)
        self.builder.finish(reason)

    def service_tier(self, tier: str) -> None:
        self.encoder.service_tier(tier)
        self.builder.service_tier(tier)

    def usage(self, usage: dict[str, Any]) -> None:
        self.encoder.usage(usage)
        self.builder.usage(usage)

    def end(self) -> None:
        self.encoder.end()
        self.builder.end()

    def error(self, err: Any) -> None:
        self.encoder.error(err)
        self.builder.error(err)

    def raw(self, data: bytes, finish_reason: str | None = None) -> None:
        data = self._our_id(data)
        self.encoder.raw(data, finish_reason)
        self.builder.raw_chunk(data, finish_reason)

    def zero_usage(self, data: bytes) -> None:
        self.encoder.raw(self._our_id(data))  # (the client's alone: not the builder's)

    def envelope(self) -> dict[str, Any]:
        return self.encoder.envelope()

    def raw_run(self, frames: bytes, count: int) -> None:
        if self._theirs:
            frames = self._our_id(frames)
        else:  # event by event, as `raw` takes them, until one names the completion
            events = frames[6:-2].split(b"\n\ndata: ")
            frames = b"data: %b\n\n" % b"\n\ndata: ".join(map(self._our_id, events))
        self.encoder.raw_run(frames, count)
        self.builder.raw_run(frames)

    def _our_id(self, data: bytes) -> bytes:
        if not self._theirs:
            if not self._ours:
                self._ours = b'"id":' + orjson.dumps(self.encoder.completion_id)
            theirs = _upstream_id(data)
            if theirs is None:  # (no event yet named the completion: the client gets ours)
                return _with_id(data, self._ours)
            self._theirs = (b'"id":' + theirs, b'"id": ' + theirs)
        for theirs in self._theirs:
            data = data.replace(theirs, self._ours)
        return data
