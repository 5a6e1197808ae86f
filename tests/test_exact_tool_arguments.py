"""A tool call's arguments that come whole in a parsed object (Gemini's functionCall args,
Ollama's arguments object, an Anthropic-compatible block start's input): the client gets the
numbers the upstream wrote, not orjson's reading of them (an integer past 64 bits is a float
to it: 123456789012345678901 → 1.2345678901234568e+20)."""

from __future__ import annotations

import json

import orjson

from streamproxy._json import dumps_exact, exact_values, loads_exact
from streamproxy.config import parse_config
from streamproxy.errors import UpstreamProtocolError
from streamproxy.openai_api.chunks import ChunkEncoder
from streamproxy.openai_api.request import parse_chat_request
from streamproxy.providers.anthropic.request import to_anthropic
from streamproxy.providers.anthropic.stream import AnthropicStreamTranslator, exact_start_input
from streamproxy.providers.bedrock.request import to_converse
from streamproxy.providers.gemini.request import to_gemini
from streamproxy.providers.gemini.response import to_completion as gemini_completion
from streamproxy.providers.gemini.stream import GeminiStreamTranslator, exact_args
from streamproxy.providers.ollama import OllamaProvider
from streamproxy.providers.ollama.request import to_ollama
from streamproxy.providers.ollama.stream import OllamaStreamTranslator, exact_arguments
from tests.helpers import collect, relay_pieces, sse_chunks
from tests.test_anthropic_response import whole_arguments as anthropic_whole

# What the model wrote: integers past 64 bits (an amount in wei, a 20-digit id), a fraction
# longer than a double holds, and ordinary values beside them.
ARGS = ('{"wei": 123456789012345678901, "low": -9223372036854775809, '
        '"p": 0.1000000000000000055511151231257827, "n": 5, "x": 1.5, "s": "é"}')


def gemini_chunk(args: str, finish: str = "") -> bytes:
    reason = f', "finishReason": "{finish}"' if finish else ""
    return ('{"candidates": [{"content": {"parts": [{"functionCall": {"name": "send", "args": '
            + args + '}}, {"functionCall": {"name": "ping", "args": {"k": 1}}}], '
            '"role": "model"}, "index": 0' + reason + '}], "modelVersion": "gemini-2.5-flash"}'
            ).encode()


def gemini_streamed(args: str) -> list[str]:
    enc = ChunkEncoder(completion_id="c", created=1, model="m", include_usage=False)
    body = (b"data: " + gemini_chunk(args) + b"\r\n\r\n" + b"data: " + gemini_chunk(args, "STOP")
            + b"\r\n\r\n")
    c = collect(sse_chunks(relay_pieces(enc, GeminiStreamTranslator(enc, 1 << 20), [body])))
    return [str(t["arguments"]) for t in c.tool_calls]


def gemini_whole(args: str) -> list[str]:
    completion = gemini_completion(gemini_chunk(args, "STOP"), completion_id="c", created=1,
                                   model="m")
    return [t["function"]["arguments"] for t in completion["choices"][0]["message"]["tool_calls"]]


def test_gemini_call_args_keep_the_numbers_written_streamed_and_whole() -> None:
    assert gemini_streamed(ARGS) == [ARGS, '{"k": 1}', ARGS, '{"k": 1}']
    assert gemini_whole(ARGS) == [ARGS, '{"k": 1}']
    assert isinstance(json.loads(gemini_whole(ARGS)[0])["wei"], int)


def test_gemini_ordinary_args_are_as_before() -> None:
    assert gemini_whole('{"city": "Zürich", "n": [1, 2]}') == ['{"city": "Zürich", "n": [1, 2]}',
                                                              '{"k": 1}']


# Ollama (Go) writes its lines compact.
COMPACT = ('{"wei":123456789012345678901,"low":-9223372036854775809,'
           '"p":0.1000000000000000055511151231257827,"n":5,"x":1.5,"s":"é"}')


def ollama_line(args: str, done: bool) -> bytes:
    end = ',"done_reason":"stop","prompt_eval_count":3,"eval_count":4' if done else ""
    return ('{"model":"llama3.2","created_at":"2025-01-01T00:00:00Z","message":{"role":'
            '"assistant","content":"","tool_calls":[{"function":{"name":"send","arguments":'
            + args + '}},{"function":{"name":"ping","arguments":{"k":1}}}]},"done":'
            + ("true" + end if done else "false") + "}").encode()


def test_ollama_call_arguments_keep_the_numbers_written_streamed_and_whole() -> None:
    enc = ChunkEncoder(completion_id="c", created=1, model="m", include_usage=False)
    body = ollama_line(COMPACT, False) + b"\n" + ollama_line(COMPACT, True) + b"\n"
    c = collect(sse_chunks(relay_pieces(enc, OllamaStreamTranslator(enc, 1 << 20), [body])))
    assert [t["arguments"] for t in c.tool_calls] == [COMPACT, '{"k":1}', COMPACT, '{"k":1}']
    provider = OllamaProvider(parse_config({"providers": {"o": {
        "type": "ollama", "base_url": "http://127.0.0.1:9"}}}, "<t>").providers["o"])
    completion = provider.translate_response(ollama_line(COMPACT, True), parse_chat_request(
        b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'),
        completion_id="c", created=1)
    calls = completion["choices"][0]["message"]["tool_calls"]
    assert [t["function"]["arguments"] for t in calls] == [COMPACT, '{"k":1}']


def test_an_anthropic_compatible_block_starts_input_keeps_the_numbers_written() -> None:
    # An Anthropic-compatible server that sends a call whole in its block's start, with no
    # input_json_delta: what a streamed fragment would have carried.
    def sse(event: str) -> bytes:
        return b"data: " + event.encode() + b"\n\n"

    body = b"".join(sse(e) for e in (
        '{"type":"message_start","message":{"id":"m","type":"message","role":"assistant",'
        '"model":"claude","content":[],"usage":{"input_tokens":3}}}',
        '{"type":"content_block_start","index":0,"content_block":{"type":"tool_use",'
        '"id":"toolu_1","name":"send","input":' + COMPACT + '}}',
        '{"type":"content_block_stop","index":0}',
        '{"type":"message_delta","delta":{"stop_reason":"tool_use"},'
        '"usage":{"output_tokens":4}}',
        '{"type":"message_stop"}'))
    enc = ChunkEncoder(completion_id="c", created=1, model="m", include_usage=False)
    c = collect(sse_chunks(relay_pieces(enc, AnthropicStreamTranslator(enc, 1 << 20), [body])))
    assert [t["arguments"] for t in c.tool_calls] == [COMPACT]


def test_an_exponent_past_a_double_is_passed_on_as_written_not_a_502() -> None:
    # orjson refuses 1e400 (an infinity as a double): a whole answer was a 502, a stream
    # chunk an error, for valid JSON whose streamed fragments passed on as written.
    huge = '{"x":1e400,"y":-1E+400,"z":1e-400,"n":2}'
    assert anthropic_whole(huge) == huge
    spaced = '{"x": 1e400, "n": 2}'
    assert gemini_whole(spaced) == [spaced, '{"k": 1}']
    assert gemini_streamed(spaced) == [spaced, '{"k": 1}', spaced, '{"k": 1}']
    enc = ChunkEncoder(completion_id="c", created=1, model="m", include_usage=False)
    c = collect(sse_chunks(relay_pieces(enc, OllamaStreamTranslator(enc, 1 << 20),
                                        [ollama_line(huge, True) + b"\n"])))
    assert [t["arguments"] for t in c.tool_calls] == [huge, '{"k":1}']


def test_a_nan_or_an_infinity_literal_is_still_refused() -> None:
    # (not JSON: the stdlib's reading of them is no reason to take them)
    for literal in ("NaN", "Infinity"):
        body = ('{"candidates": [{"content": {"parts": [{"functionCall": {"name": "f", "args": '
                '{"x": ' + literal + ', "e": 1e400}}}]}, "finishReason": "STOP"}]}').encode()
        try:
            gemini_completion(body, completion_id="c", created=1, model="m")
        except UpstreamProtocolError:
            continue
        raise AssertionError(f"{literal} was taken")


def test_a_replayed_calls_arguments_reach_the_provider_with_the_numbers_written() -> None:
    # The client sends the call back as the model made it; parsed into the object the
    # provider takes, 123456789012345678901 went back as 1.2345678901234568e+20 (and the long
    # fraction as 0.1): the model read another number in its own turn than it wrote.
    messages = [{"role": "user", "content": "pay"},
                {"role": "assistant", "content": None, "tool_calls": [{
                    "id": "call_1", "type": "function",
                    "function": {"name": "send", "arguments": COMPACT}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "ok"}]
    bodies = [to_gemini({"messages": messages}, "gemini-2.5-flash"),
              to_anthropic({"messages": messages}, "claude-sonnet-4-5"),
              to_ollama({"messages": messages}, "llama3.2", stream=True),
              to_converse({"messages": messages}, "anthropic.claude-sonnet-4-5")]
    for body in bodies:
        assert COMPACT.encode() in orjson.dumps(body)
    plain = '{"n":5,"x":1.5}'  # (as before: a plain object)
    assert to_ollama({"messages": [{**messages[1], "tool_calls": [{
        "id": "c", "type": "function", "function": {"name": "send", "arguments": plain}}]}]},
        "llama3.2", stream=True)["messages"][0]["tool_calls"][0]["function"]["arguments"] == \
        {"n": 5, "x": 1.5}


def test_a_structured_outputs_answer_is_text_and_keeps_its_numbers() -> None:
    # response_format json_schema answers come as text (a JSON string on the wire): passed
    # on as written, with no reading of the numbers inside.
    text = json.dumps(COMPACT, ensure_ascii=False)
    body = ('{"candidates": [{"content": {"parts": [{"text": ' + text + '}], "role": "model"}, '
            '"finishReason": "STOP", "index": 0}]}').encode()
    completion = gemini_completion(body, completion_id="c", created=1, model="m")
    assert completion["choices"][0]["message"]["content"] == COMPACT


def test_a_deep_input_with_a_long_number_is_read_as_one_without() -> None:
    # 600 levels: orjson reads them (up to 1024), but the stdlib's writer (and at ~1000, its
    # parser) ran out of Python's recursion: a RecursionError, a 500, where the same answer
    # with a short number is the orjson path's result. Now the exact path steps aside.
    def nested(number: str) -> str:
        return '{"x":' + "[" * 600 + number + "]" * 600 + "}"

    deep = nested("123456789012345678901")
    assert loads_exact(("[" * 1000 + "12345678901234567890" + "]" * 1000).encode()) is None
    assert exact_values(deep.encode(), lambda doc: [dumps_exact(doc)]) is None
    for read in (exact_start_input, exact_args, exact_arguments):
        block = ('{"content_block":{"input":' + deep + '},"candidates":[{"content":{"parts":'
                 '[{"functionCall":{"args":' + deep + '}}]}}],"message":{"tool_calls":'
                 '[{"function":{"arguments":' + deep + '}}]}}')
        assert read(block.encode()) is None
    try:  # (orjson writes no more than 255 levels: the plain path's 502)
        anthropic_whole(deep)
    except UpstreamProtocolError:
        pass
    else:
        raise AssertionError("a 600-level input was written")
    assert json.loads(gemini_whole(deep.replace(",", ", "))[0])["x"] is not None


def test_sixteen_digits_before_an_exponent_keep_their_last_digit() -> None:
    # 9007199254740993e0 is 2**53 + 1, which a double cannot hold: with no dot, its digit run
    # (16) was too short to be noticed, and the whole answer said 9007199254740992.0 where
    # the streamed fragment passed on what the model wrote.
    for written in ('{"a":9007199254740993e0}', '{"a":-1234567890123457E-3,"b":[1]}'):
        assert anthropic_whole(written) == written
        assert loads_exact(written.encode()) is not None
    assert gemini_whole('{"a": 9007199254740993E+2}') == ['{"a": 9007199254740993E+2}',
                                                          '{"k": 1}']


def test_a_replayed_call_with_an_exponent_past_a_double_goes_back_as_its_object() -> None:
    # The answer passed {"x":1e400,...} on as written (valid JSON): replayed, orjson refused
    # it, and the provider got {"raw_arguments": "<the text>"}, as for a call cut off
    # mid-JSON: the model read an input it never wrote.
    huge = '{"x":1e400,"n":2,"s":"é"}'
    messages = [{"role": "user", "content": "pay"},
                {"role": "assistant", "content": None, "tool_calls": [{
                    "id": "call_1", "type": "function",
                    "function": {"name": "send", "arguments": huge}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "ok"}]
    body = orjson.dumps(to_anthropic({"messages": messages}, "claude-sonnet-4-5"))
    assert b'"input":' + huge.encode() in body
    assert huge.encode() in orjson.dumps(to_converse({"messages": messages}, "anthropic.c"))
    # (not JSON at all, or a NaN, stays the text it was)
    for text in ('{"x":1e400', '{"x":NaN,"y":1e400}'):
        call = {**messages[1]["tool_calls"][0], "function": {"name": "send", "arguments": text}}
        got = to_anthropic({"messages": [messages[0], {**messages[1], "tool_calls": [call]}]},
                           "claude-sonnet-4-5")
        assert got["messages"][1]["content"][0]["input"] == {"raw_arguments": text}


def test_a_huge_number_too_deep_for_the_exact_path_is_never_written_as_infinity() -> None:
    # 1e400 beside 600 levels: the exact path steps aside (past Python's recursion) and the
    # stdlib wrote its reading, inf, as `Infinity`: no JSON, which a client's JSON.parse of the
    # arguments refused. Now a protocol error says why, streamed and whole.
    args = '{"a": 1e400, "x": ' + "[" * 600 + "1" + "]" * 600 + "}"
    enc = ChunkEncoder(completion_id="c", created=1, model="m", include_usage=False)
    body = b"data: " + gemini_chunk(args, "STOP") + b"\r\n\r\n"
    c = collect(sse_chunks(relay_pieces(enc, GeminiStreamTranslator(enc, 1 << 20), [body])))
    assert c.tool_calls == [] and c.error is not None
    assert c.error["code"] == "upstream_protocol_error" and "1e400" not in c.error["message"]
    assert "number" in c.error["message"]
    try:
        gemini_whole(args)
    except UpstreamProtocolError as e:
        assert e.status == 502 and "number" in str(e)
    else:
        raise AssertionError("Infinity was written")
