"""A tool call's arguments at a stream's edges: a call whose stream ends without the event
that closes it (a compatible server's), or whose input came whole in its start, still ends with
complete JSON arguments — the same string the non-streamed answer to it gives."""

from __future__ import annotations

from typing import Any

import orjson

from streamproxy.openai_api.completion import CompletionBuilder
from streamproxy.openai_api.request import parse_chat_request
from streamproxy.server.app import build_providers
from tests.eventstream_frames import event
from tests.helpers import make_config

REQ = parse_chat_request(orjson.dumps({"model": "m", "stream": True,
                                       "messages": [{"role": "user", "content": "hi"}]}))


# Bedrock's config needs a region and keys (never used: nothing is sent).
EXTRA = {"bedrock": {"region": "us-west-2", "aws_access_key_id": "AKIDEXAMPLE",
                     "aws_secret_access_key": "secret"}}


def _provider(kind: str) -> Any:
    return build_providers(make_config({"p": {"type": kind, "default_model": "m",
                                              **EXTRA.get(kind, {})}}))["p"]


def streamed_calls(kind: str, stream: bytes) -> list[dict[str, Any]]:
    out = CompletionBuilder()
    translator = _provider(kind).stream_translator(REQ, out)
    translator.feed(stream)
    translator.close()
    assert out.failure is None
    done = out.completion(completion_id="c", created=1, model="m")
    return done["choices"][0]["message"]["tool_calls"]


def whole_calls(kind: str, body: bytes) -> list[dict[str, Any]]:
    done = _provider(kind).translate_response(body, REQ, completion_id="c", created=1, model="m")
    return done["choices"][0]["message"]["tool_calls"]


def sse(events: list[dict[str, Any]]) -> bytes:
    return b"".join(b"event: %s\ndata: %s\n\n" % (e["type"].encode(), orjson.dumps(e))
                    for e in events)


# -- Anthropic ---------------------------------------------------------------------------------

MESSAGE_START = {"type": "message_start", "message": {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude", "content": [],
    "usage": {"input_tokens": 3}}}
TOOL_USE_STOP = {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                 "usage": {"output_tokens": 4}}
MESSAGE_STOP = {"type": "message_stop"}


def tool_use_start(index: int, tool_input: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": {
        "type": "tool_use", "id": f"toolu_{index}", "name": "f", "input": tool_input}}


def anthropic_whole(*inputs: str) -> bytes:
    blocks = ",".join(f'{{"type":"tool_use","id":"toolu_{i}","name":"f","input":{raw}}}'
                      for i, raw in enumerate(inputs))
    return ('{"id":"msg_1","type":"message","role":"assistant","model":"claude","content":['
            + blocks + '],"stop_reason":"tool_use","usage":{"input_tokens":3,"output_tokens":4}}'
            ).encode()


def test_anthropic_calls_without_a_block_stop_end_with_their_arguments() -> None:
    # No content_block_stop before the end (an Anthropic-compatible server's): the calls went
    # out with arguments "" (json.loads fails) instead of "{}" / their start's input.
    for ending in ([TOOL_USE_STOP, MESSAGE_STOP], [MESSAGE_STOP]):
        calls = streamed_calls("anthropic", sse([MESSAGE_START, tool_use_start(0, {}),
                                                 tool_use_start(1, {"city": "Oslo"}),
                                                 *ending]))
        assert calls == whole_calls("anthropic", anthropic_whole("{}", '{"city":"Oslo"}'))
        assert [c["function"]["arguments"] for c in calls] == ["{}", '{"city":"Oslo"}']


def test_anthropic_input_whole_in_the_start_keeps_its_big_integers() -> None:
    # A compatible server's tool_use with its input in content_block_start: an integer past
    # 64 bits went out as 1.2345678901234568e+20, while the non-streamed answer (and the
    # fragments of Anthropic's own stream) keep 123456789012345678901.
    raw = '{"wei":123456789012345678901,"n":5,"x":1.5,"s":"é"}'
    start = ('event: content_block_start\ndata: {"type":"content_block_start","index":0,'
             '"content_block":{"type":"tool_use","id":"toolu_0","name":"f","input":'
             + raw + "}}\n\n").encode()
    for end in ([{"type": "content_block_stop", "index": 0}, TOOL_USE_STOP, MESSAGE_STOP],
                [TOOL_USE_STOP, MESSAGE_STOP]):
        calls = streamed_calls("anthropic", sse([MESSAGE_START]) + start + sse(end))
        assert calls == whole_calls("anthropic", anthropic_whole(raw))
        assert calls[0]["function"]["arguments"] == raw


# -- Cohere ------------------------------------------------------------------------------------

def cohere_call_start(index: int, arguments: str = "") -> dict[str, Any]:
    return {"type": "tool-call-start", "index": index, "delta": {"message": {"tool_calls": {
        "id": f"c{index}", "type": "function",
        "function": {"name": "f", "arguments": arguments}}}}}


def cohere_delta(index: int, fragment: str) -> dict[str, Any]:
    return {"type": "tool-call-delta", "index": index, "delta": {"message": {
        "tool_calls": {"function": {"arguments": fragment}}}}}


def test_cohere_calls_without_a_call_end_end_with_their_arguments() -> None:
    # message-end with no tool-call-end: an empty call's arguments were "" and a held "nu"
    # was lost, where the non-streamed answer gives "{}" and "nu" (and "{}" for "null").
    events = [{"type": "message-start", "delta": {"message": {"role": "assistant"}}},
              cohere_call_start(0), cohere_call_start(1), cohere_delta(1, "nu"),
              cohere_call_start(2), cohere_delta(2, "null"),
              cohere_call_start(3), cohere_delta(3, '{"a":'), cohere_delta(3, "1}"),
              {"type": "message-end", "delta": {"finish_reason": "TOOL_CALL"}}]
    whole = {"id": "x", "finish_reason": "TOOL_CALL", "message": {"role": "assistant",
             "tool_calls": [{"id": f"c{i}", "type": "function",
                             "function": {"name": "f", "arguments": args}}
                            for i, args in enumerate(["", "nu", "null", '{"a":1}'])]}}
    calls = streamed_calls("cohere", sse(events))
    assert calls == whole_calls("cohere", orjson.dumps(whole))
    assert [c["function"]["arguments"] for c in calls] == ["{}", "nu", "{}", '{"a":1}']


# -- Bedrock -----------------------------------------------------------------------------------

def test_bedrock_a_call_without_a_block_stop_ends_with_empty_object_arguments() -> None:
    # messageStop with no contentBlockStop for a toolUse that got no input delta: its
    # arguments were "", where the non-streamed answer gives "{}".
    stream = (event("messageStart", {"role": "assistant"})
              + event("contentBlockStart", {"contentBlockIndex": 0, "start": {
                  "toolUse": {"toolUseId": "b0", "name": "f"}}})
              + event("contentBlockStart", {"contentBlockIndex": 1, "start": {
                  "toolUse": {"toolUseId": "b1", "name": "f"}}})
              + event("contentBlockDelta", {"contentBlockIndex": 1,
                                            "delta": {"toolUse": {"input": '{"a":1}'}}})
              + event("messageStop", {"stopReason": "tool_use"})
              + event("metadata", {"usage": {"inputTokens": 1, "outputTokens": 2,
                                             "totalTokens": 3}}))
    whole = {"output": {"message": {"role": "assistant", "content": [
        {"toolUse": {"toolUseId": "b0", "name": "f", "input": {}}},
        {"toolUse": {"toolUseId": "b1", "name": "f", "input": {"a": 1}}}]}},
        "stopReason": "tool_use", "usage": {"inputTokens": 1, "outputTokens": 2,
                                             "totalTokens": 3}}
    calls = streamed_calls("bedrock", stream)
    assert calls == whole_calls("bedrock", orjson.dumps(whole))
    assert [c["function"]["arguments"] for c in calls] == ["{}", '{"a":1}']


# -- Gemini ------------------------------------------------------------------------------------

def gemini_chunk(parts: list[dict[str, Any]], finish: str | None = None) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], "modelVersion": "gemini-2.5-flash"}


def test_gemini_calls_that_share_an_id_get_ids_of_their_own() -> None:
    # Two functionCalls with one `id` in an answer went out with one tool-call id: a client
    # pairs each result with its call by id, and OpenAI's API refuses the next turn's
    # duplicate tool_call_id. The later call gets an id of its own, the same streamed and not.
    first = {"functionCall": {"id": "fc_1", "name": "f", "args": {"city": "Oslo"}}}
    second = {"functionCall": {"id": "fc_1", "name": "f", "args": {"city": "Rome"}}}
    third = {"functionCall": {"id": "fc_1", "name": "g", "args": {}}}
    whole = whole_calls("gemini", orjson.dumps(gemini_chunk([first, second, third], "STOP")))
    for chunks in ([gemini_chunk([first, second, third], "STOP")],
                   [gemini_chunk([first]), gemini_chunk([second, third], "STOP")]):
        stream = b"".join(b"data: " + orjson.dumps(c) + b"\r\n\r\n" for c in chunks)
        assert streamed_calls("gemini", stream) == whole
    ids = [c["id"] for c in whole]
    assert ids[0] == "fc_1" and len(set(ids)) == 3
    assert [c["function"]["arguments"] for c in whole] == [
        '{"city": "Oslo"}', '{"city": "Rome"}', "{}"]


# -- Ollama ------------------------------------------------------------------------------------

def ollama_line(calls: list[dict[str, Any]], done: bool = False) -> dict[str, Any]:
    line: dict[str, Any] = {"model": "m", "message": {"role": "assistant", "content": "",
                                                      "tool_calls": calls}, "done": done}
    if done:
        line |= {"done_reason": "stop", "prompt_eval_count": 3, "eval_count": 4}
    return line


def test_ollama_calls_that_share_an_id_get_ids_of_their_own() -> None:
    # Two tool_calls with one `id` in an answer (a server that numbers each line's calls
    # alike) went out with one tool-call id: a client pairs each result with its call by id,
    # and OpenAI's API refuses the next turn's duplicate tool_call_id. The later call gets an
    # id of its own, the same streamed and not.
    first = {"id": "call_0", "function": {"name": "f", "arguments": {"city": "Oslo"}}}
    second = {"id": "call_0", "function": {"name": "f", "arguments": {"city": "Rome"}}}
    third = {"id": "call_0", "function": {"name": "g", "arguments": {}}}
    whole = whole_calls("ollama", orjson.dumps(ollama_line([first, second, third], True)))
    for lines in ([ollama_line([first, second, third], True)],
                  [ollama_line([first]), ollama_line([second]), ollama_line([third], True)]):
        assert streamed_calls("ollama", b"".join(orjson.dumps(x) + b"\n" for x in lines)) == whole
    ids = [c["id"] for c in whole]
    assert ids[0] == "call_0" and len(set(ids)) == 3
    assert [c["function"]["arguments"] for c in whole] == [
        '{"city":"Oslo"}', '{"city":"Rome"}', "{}"]
