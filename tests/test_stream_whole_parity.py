"""One upstream reply, streamed and not: Cohere v2 and Ollama give a client the same content,
reasoning, finish_reason, tool calls and usage either way.

Each reply is written once, as the provider's non-streamed answer, and its stream is built from
it as the provider sends one (Cohere: provider-streams.md §6 events; Ollama: a line per piece,
the last with `done`, whose non-streamed answer joins the lines' text and calls — its
ChatHandler's). The stream goes through the provider's translator whole and at random splits
and is joined by the openai SDK's stream helper; the answer through its `translate_response`.
"""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from streamproxy.openai_api.chunks import ChunkEncoder
from streamproxy.openai_api.request import parse_chat_request
from streamproxy.server.app import build_providers
from tests.helpers import jsonl_to_sse, make_config, random_splits, sse_chunks

ENVELOPE = {"completion_id": "chatcmpl-p", "created": 1, "model": "m"}


def seen(message: dict[str, Any], finish: str | None, usage: Any) -> dict[str, Any]:
    """What a client reads of an answer (ids only where the provider gave them)."""
    calls = [(c["id"] if not c["id"].startswith("call_") else None, c["function"]["name"],
              c["function"]["arguments"]) for c in message.get("tool_calls") or ()]
    return {"content": message.get("content"), "reasoning": message.get("reasoning_content"),
            "finish": finish, "calls": calls, "usage": usage}


def check(kind: str, stream: bytes, whole: bytes) -> None:
    provider = build_providers(make_config({"p": {"type": kind, "default_model": "m"}}))["p"]
    req = parse_chat_request(orjson.dumps({
        "model": "m", "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "hi"}]}))
    done = provider.translate_response(whole, req, **ENVELOPE)
    [choice] = done["choices"]
    expected = seen(choice["message"], choice["finish_reason"], done.get("usage"))
    rng = random.Random(stream)
    for pieces in ([stream], *(random_splits(stream, rng, rng.choice([5, 50]))
                               for _ in range(8))):
        encoder = ChunkEncoder(include_usage=True, **ENVELOPE)
        translator = provider.stream_translator(req, encoder)
        out = b""
        for piece in pieces:
            translator.feed(piece)
            out += encoder.take()
        translator.close()
        state = ChatCompletionStreamState()
        for chunk in sse_chunks(out + encoder.take()):
            if chunk != "[DONE]":
                state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
        snapshot = state.current_completion_snapshot.model_dump()
        [streamed] = snapshot["choices"]
        message = {**streamed["message"],
                   "reasoning_content": getattr(state.current_completion_snapshot.choices[0]
                                                .message, "reasoning_content", None)}
        assert seen(message, streamed["finish_reason"], unset(snapshot["usage"])) == expected


def unset(value: Any) -> Any:
    """A model_dump() without the fields the SDK's models add as None."""
    if not isinstance(value, dict):
        return value
    kept = {k: unset(v) for k, v in value.items()}
    return {k: v for k, v in kept.items() if v is not None} or None


# -- Cohere ------------------------------------------------------------------------------------

COHERE_USAGE = {"billed_units": {"input_tokens": 12, "output_tokens": 7},
                "tokens": {"input_tokens": 507, "output_tokens": 10}, "cached_tokens": 448}


def cohere_stream(reply: dict[str, Any], fragment: int = 4) -> bytes:
    """The events Cohere streams for `reply` (its non-streamed answer)."""
    message = reply["message"]
    events: list[dict[str, Any]] = [{"id": reply["id"], "type": "message-start", "delta": {
        "message": {"role": "assistant", "content": [], "tool_plan": "", "tool_calls": [],
                    "citations": []}}}]
    plan = message.get("tool_plan") or ""
    events += [{"type": "tool-plan-delta", "delta": {"message": {"tool_plan": plan[i:i + 5]}}}
               for i in range(0, len(plan), 5)]
    for index, block in enumerate(message.get("content") or ()):
        kind = block["type"]
        events.append({"type": "content-start", "index": index,
                       "delta": {"message": {"content": {"type": kind, kind: ""}}}})
        text = block[kind]
        events += [{"type": "content-delta", "index": index,
                    "delta": {"message": {"content": {kind: text[i:i + 6]}}}}
                   for i in range(0, len(text), 6)]
        events.append({"type": "content-end", "index": index})
    for index, call in enumerate(message.get("tool_calls") or ()):
        fn = call["function"]
        events.append({"type": "tool-call-start", "index": index, "delta": {"message": {
            "tool_calls": {"id": call["id"], "type": "function",
                           "function": {"name": fn["name"], "arguments": ""}}}}})
        args = fn["arguments"]
        events += [{"type": "tool-call-delta", "index": index, "delta": {"message": {
            "tool_calls": {"function": {"arguments": args[i:i + fragment]}}}}}
            for i in range(0, len(args), fragment)]
        events.append({"type": "tool-call-end", "index": index})
    events.append({"type": "message-end", "delta": {"finish_reason": reply["finish_reason"],
                                                     "usage": reply["usage"]}})
    return jsonl_to_sse(b"\n".join(orjson.dumps(e) for e in events))


def cohere_reply(finish: str, **message: Any) -> dict[str, Any]:
    return {"id": "c-1", "finish_reason": finish, "usage": COHERE_USAGE,
            "message": {"role": "assistant", **message}}


def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": arguments}}


COHERE = {
    "thinking then text": cohere_reply("COMPLETE", content=[
        {"type": "thinking", "thinking": "The user greets."},
        {"type": "text", "text": "Hello! How can I help?"}]),
    "a plan and two calls": cohere_reply(
        "TOOL_CALL", tool_plan="I will look up the weather and the time.",
        tool_calls=[call("weather_1", "weather", '{"city": "Paris"}'),
                    call("now_2", "now", "{}")]),
    "a call of a tool without parameters (null)": cohere_reply(
        "TOOL_CALL", tool_calls=[call("now_1", "now", "null")]),
    "TOOL_CALL with text and no call": cohere_reply(
        "TOOL_CALL", content=[{"type": "text", "text": "It is noon."}]),
    "cut at max tokens": cohere_reply("MAX_TOKENS", content=[{"type": "text", "text": "Once"}]),
    "a stop sequence": cohere_reply("STOP_SEQUENCE", content=[{"type": "text", "text": "A, B"}]),
}


@pytest.mark.parametrize("name", COHERE)
@pytest.mark.parametrize("fragment", [1, 4, 100])
def test_cohere(name: str, fragment: int) -> None:
    reply = COHERE[name]
    check("cohere", cohere_stream(reply, fragment), orjson.dumps(reply))


# -- Ollama ------------------------------------------------------------------------------------

def ollama_line(message: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": "llama3.2", "created_at": "2025-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": "", **message}, "done": False, **extra}


def ollama_done(reason: str = "stop") -> dict[str, Any]:
    return {**ollama_line({}), "done": True, "done_reason": reason, "total_duration": 9,
            "prompt_eval_count": 26, "eval_count": 31}


def ollama_whole(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """The non-streamed answer to the same request: the lines' thinking and content joined,
    their calls gathered, the last line's counts (Ollama's ChatHandler)."""
    message: dict[str, Any] = {"role": "assistant", "content": "".join(
        line["message"].get("content", "") for line in lines)}
    thinking = "".join(line["message"].get("thinking", "") for line in lines)
    if thinking:
        message["thinking"] = thinking
    calls = [c for line in lines for c in line["message"].get("tool_calls") or ()]
    if calls:
        message["tool_calls"] = calls
    return {**lines[-1], "message": message}


def ndjson(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def weather(city: str, call_id: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"function": {"name": "get_weather", "arguments": {"city": city}}}
    if call_id:
        out["id"] = call_id
    return out


OLLAMA = {
    "thinking then text": [ollama_line({"thinking": "Greet"}), ollama_line({"thinking": " back."}),
                           ollama_line({"content": "Hello"}), ollama_line({"content": "!"}),
                           ollama_done()],
    "text then calls on two lines": [
        ollama_line({"content": "Checking."}),
        ollama_line({"tool_calls": [weather("Paris", "call_a1")]}),
        ollama_line({"tool_calls": [weather("Oslo", "call_b2"),
                                    {"function": {"name": "now", "arguments": {}}}]}),
        ollama_done()],
    "thinking then a call": [ollama_line({"thinking": "Need weather."}),
                             ollama_line({"tool_calls": [weather("Rome", "call_r")]}),
                             ollama_done()],
    "cut at the length": [ollama_line({"content": "Once upon"}), ollama_done("length")],
    "nothing said": [ollama_done()],
}


@pytest.mark.parametrize("name", OLLAMA)
def test_ollama(name: str) -> None:
    lines = OLLAMA[name]
    check("ollama", ndjson(lines), orjson.dumps(ollama_whole(lines)))
