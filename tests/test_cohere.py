"""Cohere v2 (`type: cohere`).

The recorded stream (tests/fixtures/cohere/vercel-ai_cohere-tool-call.chunks.jsonl) is
payload-only JSON lines; `jsonl_to_sse` rebuilds the SSE framing Cohere sends (`event:` +
`data:` lines). Text, thinking, error and truncated streams are built from the documented
event shapes (provider-streams.md §6).
"""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from streamproxy.errors import InvalidRequest, StreamTruncated
from streamproxy.openai_api.chunks import ChunkEncoder
from streamproxy.openai_api.request import parse_chat_request
from streamproxy.providers.cohere.request import to_cohere
from streamproxy.providers.cohere.response import to_completion
from streamproxy.providers.cohere.stream import CohereStreamTranslator
from tests.conftest import provider_config
from tests.helpers import (
    assert_finish_last,
    collect,
    fixture_bytes,
    jsonl_to_sse,
    openai_sdk,
    random_splits,
    read_sdk_stream,
    sse_chunks,
)

TOOL_SSE = jsonl_to_sse(fixture_bytes("cohere/vercel-ai_cohere-tool-call.chunks.jsonl"))
PLAN = ("I will use the weather tool to find the weather in San Francisco and the "
        "cityAttractions tool to find attractions in San Francisco.")
USAGE = {"prompt_tokens": 1549, "completion_tokens": 95, "total_tokens": 1644,
         "prompt_tokens_details": {"cached_tokens": 1504}}
STREAM_REQ = {"model": "m", "stream": True, "stream_options": {"include_usage": True},
              "messages": [{"role": "user", "content": "hi"}]}


def events(*payloads: dict[str, Any]) -> bytes:
    return jsonl_to_sse(b"\n".join(orjson.dumps(p) for p in payloads))


START = {"id": "x", "type": "message-start", "delta": {"message": {
    "role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}}}


def text_delta(text: str, index: int = 0) -> dict[str, Any]:
    return {"type": "content-delta", "index": index,
            "delta": {"message": {"content": {"text": text}}}}


def end(reason: str = "COMPLETE", **extra: Any) -> dict[str, Any]:
    return {"type": "message-end", "delta": {"finish_reason": reason, **extra, "usage": {
        "billed_units": {"input_tokens": 12, "output_tokens": 7},
        "tokens": {"input_tokens": 507, "output_tokens": 10}, "cached_tokens": 448}}}


TEXT_SSE = events(
    START,
    {"type": "content-start", "index": 0,
     "delta": {"message": {"content": {"type": "thinking", "thinking": ""}}}},
    {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"thinking": "Hm."}}}},
    {"type": "content-end", "index": 0},
    {"type": "content-start", "index": 1,
     "delta": {"message": {"content": {"type": "text", "text": ""}}}},
    text_delta("The capital", 1), text_delta(" is Paris.", 1),
    {"type": "content-end", "index": 1},
    end(),
)


def translate(pieces: list[bytes], *, include_usage: bool = True) -> bytes:
    enc = ChunkEncoder(completion_id="chatcmpl-t", created=1, model="m",
                       include_usage=include_usage)
    tr = CohereStreamTranslator(enc, 1 << 20)
    out = b""
    for piece in pieces:
        tr.feed(piece)
        out += enc.take()
    tr.close()
    return out + enc.take()


def check_tool_golden(out: bytes) -> None:
    chunks = sse_chunks(out)
    assert_finish_last(chunks)
    c = collect(chunks)
    assert c.error is None and c.done
    assert len(c.ids) == 1 and c.roles == 1
    assert c.content == ""
    assert c.reasoning == PLAN
    assert [(t["id"], t["name"], t["arguments"]) for t in c.tool_calls] == [
        ("weather_e8p4pn45zt0t", "weather", '{"location": "San Francisco"}'),
        ("cityAttractions_pyxssbwnq9fq", "cityAttractions", '{"city": "San Francisco"}'),
    ]
    assert c.finish_reason == "tool_calls"
    assert c.usage == USAGE


@pytest.mark.parametrize("eol", ["lf", "crlf"])
def test_recorded_tool_stream_whole_and_at_random_splits(eol: str) -> None:
    body = TOOL_SSE if eol == "lf" else TOOL_SSE.replace(b"\n", b"\r\n")
    check_tool_golden(translate([body]))
    rng = random.Random(eol)
    for _ in range(30):
        check_tool_golden(translate(random_splits(body, rng, max_piece=rng.choice([2, 9, 60]))))


def test_tool_index_is_our_own_dense_ordinal() -> None:
    # Cohere's index is dense in practice; a gap must still give the client 0, 1.
    body = TOOL_SSE.replace(b'"index":1', b'"index":7')
    check_tool_golden(translate([body]))


def test_a_cohere_index_seen_again_is_still_a_new_call() -> None:
    # Our ordinal was the size of the index map, which a start under an index already seen
    # does not grow: the second and third calls both went out as index 1, and the openai
    # SDK merged them into one call (one id, arguments '{"city": "B"}{"city": "C"}').
    def start(call_id: str) -> dict[str, Any]:
        return {"type": "tool-call-start", "index": 0, "delta": {"message": {"tool_calls": {
            "id": call_id, "type": "function",
            "function": {"name": "weather", "arguments": ""}}}}}
    def args(city: str) -> dict[str, Any]:
        return {"type": "tool-call-delta", "index": 0, "delta": {"message": {"tool_calls": {
            "function": {"arguments": f'{{"city": "{city}"}}'}}}}}
    body = events(START, *(e for call_id, city in (("w_a", "A"), ("w_b", "B"), ("w_c", "C"))
                           for e in (start(call_id), args(city),
                                     {"type": "tool-call-end", "index": 0})),
                  end("TOOL_CALL"))
    c = collect(sse_chunks(translate([body])))
    assert [(t["id"], t["arguments"]) for t in c.tool_calls] == [
        ("w_a", '{"city": "A"}'), ("w_b", '{"city": "B"}'), ("w_c", '{"city": "C"}')]
    assert c.finish_reason == "tool_calls"


async def test_recorded_tool_stream_through_the_proxy(proxy: Any, upstream: Any) -> None:
    upstream.pieces = random_splits(TOOL_SSE, random.Random(3), max_piece=40)
    client = await proxy(provider_config("cohere", upstream.url))
    resp = await client.post("/v1/chat/completions", json=STREAM_REQ)
    assert resp.status == 200
    check_tool_golden(await resp.read())


def test_text_and_thinking_stream() -> None:
    c = collect(sse_chunks(translate([TEXT_SSE])))
    assert c.content == "The capital is Paris."
    assert c.reasoning == "Hm."
    assert c.finish_reason == "stop" and c.done
    assert c.usage == {"prompt_tokens": 507, "completion_tokens": 10, "total_tokens": 517,
                       "prompt_tokens_details": {"cached_tokens": 448}}


def test_empty_events_and_done_are_skipped_as_the_sdk_skips_them() -> None:
    # A `[DONE]` is not Cohere's end (message-end is): one before it ends nothing.
    body = (events(START) + b"data: \n\ndata: [DONE]\n\n" + events(text_delta("Hi"), end())
            + b"data: [DONE]\n\n")
    c = collect(sse_chunks(translate([body])))
    assert c.content == "Hi" and c.finish_reason == "stop" and c.done and c.error is None

def test_usage_falls_back_to_billed_units_and_max_tokens_is_length() -> None:
    body = events(START, text_delta("a"), {"type": "message-end", "delta": {
        "finish_reason": "MAX_TOKENS",
        "usage": {"billed_units": {"input_tokens": 12, "output_tokens": 7}}}})
    c = collect(sse_chunks(translate([body])))
    assert c.finish_reason == "length"
    assert c.usage == {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}



def test_cached_tokens_never_exceed_a_prompt_counted_in_billed_units() -> None:
    # No `tokens`: the prompt is billed_units' count (the template left out), but
    # cached_tokens counts model tokens — passed on, the client read 448 cached of a 12 prompt.
    body = events(START, text_delta("a"), {"type": "message-end", "delta": {
        "finish_reason": "COMPLETE",
        "usage": {"billed_units": {"input_tokens": 12, "output_tokens": 7},
                  "cached_tokens": 448}}})
    c = collect(sse_chunks(translate([body])))
    assert c.usage == {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19,
                       "prompt_tokens_details": {"cached_tokens": 12}}

def test_tool_call_without_arguments_gets_an_empty_object() -> None:
    body = events(
        START,
        {"type": "tool-call-start", "index": 0, "delta": {"message": {"tool_calls": {
            "id": "currentTime_1", "type": "function",
            "function": {"name": "currentTime", "arguments": ""}}}}},
        {"type": "tool-call-end", "index": 0},
        end("TOOL_CALL"))
    c = collect(sse_chunks(translate([body])))
    assert c.tool_calls == [{"id": "currentTime_1", "name": "currentTime", "arguments": "{}"}]
    assert c.finish_reason == "tool_calls"


def call_events(start: str, fragments: list[str]) -> bytes:
    return events(START, {"type": "tool-call-start", "index": 0, "delta": {"message": {
        "tool_calls": {"id": "now_1", "type": "function",
                       "function": {"name": "now", "arguments": start}}}}},
        *({"type": "tool-call-delta", "index": 0,
           "delta": {"message": {"tool_calls": {"function": {"arguments": f}}}}}
          for f in fragments),
        {"type": "tool-call-end", "index": 0}, end("TOOL_CALL"))


@pytest.mark.parametrize(("start", "fragments", "arguments"), [
    ("", ["null"], "{}"), ("", ["nu", "ll"], "{}"), ("", [" ", "null", "\n"], "{}"),
    ("null", [], "{}"), ("", [" ", '{"tz"', ': "UTC"}'], ' {"tz": "UTC"}'),
    ("", ["{}"], "{}"), ('{"tz": "UTC"}', [], '{"tz": "UTC"}'),
    # What came, when not null nor blank: streamed, a held " nu" went trimmed ("nu"), and
    # blank arguments were "{}" streamed but " " whole.
    ("", [" ", "nu"], " nu"), ("", ["nu", " "], "nu "), ("", [" "], "{}"), (" ", [], "{}"),
])
def test_streamed_null_arguments_are_an_empty_object_as_non_streamed(
        start: str, fragments: list[str], arguments: str) -> None:
    # Cohere's arguments for a call of a tool without parameters are "null" (non-streamed
    # they become "{}" since cf07bd2); streamed, the client got "null", which parses to None
    # where OpenAI always gives an object. A call's first fragments that may still spell null
    # are held until they do not.
    body = call_events(start, fragments)
    rng = random.Random(body)
    for pieces in ([body], *(random_splits(body, rng, 7) for _ in range(5))):
        c = collect(sse_chunks(translate(pieces)))
        assert c.tool_calls == [{"id": "now_1", "name": "now", "arguments": arguments}]
        assert c.finish_reason == "tool_calls"
    whole = to_completion(orjson.dumps({**NON_STREAM, "message": {"role": "assistant",
        "tool_calls": [{"id": "now_1", "type": "function", "function": {
            "name": "now", "arguments": start + "".join(fragments)}}]}}),
        completion_id="c", created=1, model="m", provider="cohere")
    assert whole["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == arguments


CALL_START = {"type": "tool-call-start", "index": 0, "delta": {"message": {"tool_calls": {
    "id": "now_1", "type": "function", "function": {"name": "now", "arguments": "{}"}}}}}


@pytest.mark.parametrize("with_call", [False, True])
def test_a_tool_call_finish_without_a_call_is_stop_streamed_or_not(with_call: bool) -> None:
    # Cohere may end a text-only answer with TOOL_CALL (as Claude and Bedrock with tool_use):
    # OpenAI never says tool_calls without calls, and a client that runs message.tool_calls
    # on that finish (as OpenAI's examples do) finds null.
    expected = "tool_calls" if with_call else "stop"
    call = [CALL_START, {"type": "tool-call-end", "index": 0}] if with_call else []
    c = collect(sse_chunks(translate([events(START, text_delta("It is noon."), *call,
                                             end("TOOL_CALL"))])))
    assert (c.content, c.finish_reason) == ("It is noon.", expected)
    message: dict[str, Any] = {"role": "assistant",
                               "content": [{"type": "text", "text": "It is noon."}]}
    if with_call:
        message["tool_calls"] = [{"id": "now_1", "type": "function",
                                  "function": {"name": "now", "arguments": "{}"}}]
    done = to_completion(orjson.dumps({**NON_STREAM, "message": message}), completion_id="c",
                         created=1, model="m", provider="cohere")
    assert done["choices"][0]["finish_reason"] == expected
    assert done["choices"][0]["message"]["content"] == "It is noon."


@pytest.mark.parametrize(("reason", "status"), [("ERROR", 502), ("TIMEOUT", 504)])
def test_error_finish_is_an_error_frame(reason: str, status: int) -> None:
    body = events(START, text_delta("partial"), end(reason, error="the model broke"))
    c = collect(sse_chunks(translate([body])))
    assert c.content == "partial"
    assert c.error is not None and c.error["code"] == reason.lower()
    assert "the model broke" in c.error["message"]
    assert c.finish_reason is None and not c.done


def test_error_finish_keeps_the_usage_it_came_with() -> None:
    # The failed answer cost its tokens: the record (metrics, access log) keeps them.
    enc = ChunkEncoder(completion_id="c", created=1, model="m", include_usage=True)
    tr = CohereStreamTranslator(enc, 1 << 20)
    tr.feed(events(START, text_delta("partial"), end("ERROR", error="the model broke")))
    assert enc.failure is not None and tr.done
    assert enc.usage_data == {"prompt_tokens": 507, "completion_tokens": 10,
                              "total_tokens": 517, "prompt_tokens_details": {"cached_tokens": 448}}


def test_eof_before_message_end_raises_truncated() -> None:
    body = events(START, text_delta("partial"))
    enc = ChunkEncoder(completion_id="c", created=1, model="m", include_usage=True)
    tr = CohereStreamTranslator(enc, 1 << 20)
    tr.feed(body)
    with pytest.raises(StreamTruncated):
        tr.close()


async def test_truncated_stream_through_the_proxy_ends_in_an_error_frame(
        proxy: Any, upstream: Any) -> None:
    upstream.body = TOOL_SSE[: TOOL_SSE.index(b"event: message-end")]
    client = await proxy(provider_config("cohere", upstream.url))
    resp = await client.post("/v1/chat/completions", json=STREAM_REQ)
    chunks = sse_chunks(await resp.read())
    c = collect(chunks)
    assert c.error is not None and c.error["code"] == "upstream_stream_truncated"
    assert not c.done and "[DONE]" not in chunks
    assert c.finish_reason is None  # never a fake stop


async def test_request_translation_on_the_wire(proxy: Any, upstream: Any) -> None:
    upstream.body = TEXT_SSE
    client = await proxy(provider_config("cohere", upstream.url))
    resp = await client.post("/v1/chat/completions", json={
        "model": "command-a-03-2025", "stream": True,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "Weather?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
            {"role": "assistant", "content": None, "reasoning_content": "I will look it up.",
             "tool_calls": [{"id": "w_1", "type": "function",
                             "function": {"name": "weather", "arguments": '{"city":"SF"}'}}]},
            {"role": "tool", "tool_call_id": "w_1", "content": "sunny"},
        ],
        "tools": [{"type": "function", "function": {
            "name": "weather", "description": "Weather", "strict": True,
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        "tool_choice": "required", "max_completion_tokens": 100, "temperature": 0.2,
        "top_p": 0.9, "stop": "END", "seed": 7,
        "response_format": {"type": "json_object"},
        "logit_bias": {"1": 2}, "user": "u1", "parallel_tool_calls": False,
    })
    assert resp.status == 200
    await resp.read()
    [sent] = upstream.requests
    assert sent.path == "/v2/chat"
    assert sent.headers["Authorization"] == "Bearer sk-test-secret"
    assert sent.json() == {
        "model": "command-a-03-2025",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "Weather?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
            {"role": "assistant", "tool_plan": "I will look it up.", "tool_calls": [
                {"id": "w_1", "type": "function",
                 "function": {"name": "weather", "arguments": '{"city":"SF"}'}}]},
            {"role": "tool", "tool_call_id": "w_1", "content": "sunny"},
        ],
        "max_tokens": 100, "temperature": 0.2, "seed": 7, "p": 0.9,
        "stop_sequences": ["END"], "response_format": {"type": "json_object"},
        "tools": [{"type": "function", "function": {
            "name": "weather", "description": "Weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        "strict_tools": True, "tool_choice": "REQUIRED", "stream": True,
    }


def _body(**extra: Any) -> dict[str, Any]:
    return parse_chat_request(orjson.dumps({
        "model": "m", "messages": [{"role": "user", "content": "x"}], **extra})).body


@pytest.mark.parametrize(("stop", "sent"), [
    (["", "END"], ["END"]), ([""], None), ("", None), ([], None), (" ", [" "]), ("END", ["END"]),
])
def test_an_empty_stop_sequence_is_not_sent(stop: Any, sent: list[str] | None) -> None:
    # OpenAI takes "" as a stop sequence that cuts nothing; sent to Cohere it is a sequence
    # that matches anywhere (or one it refuses), so it goes nowhere, as on Ollama and Gemini.
    assert to_cohere(_body(stop=stop), "command-a").get("stop_sequences") == sent


def test_named_tool_choice_sends_only_that_tool_as_required() -> None:
    tools = [{"type": "function", "function": {"name": n}} for n in ("a", "b")]
    out = to_cohere(_body(tools=tools, tool_choice={"type": "function",
                                                    "function": {"name": "b"}}), "m")
    assert out["tools"] == [{"type": "function", "function": {
        "name": "b", "parameters": {"type": "object", "properties": {}}}}]
    assert out["tool_choice"] == "REQUIRED"
    out = to_cohere(_body(tools=tools, tool_choice="none"), "m")
    assert out["tool_choice"] == "NONE" and len(out["tools"]) == 2
    assert "tool_choice" not in to_cohere(_body(tools=tools, tool_choice="auto"), "m")


def test_a_tool_without_parameters_is_sent_with_an_empty_object_schema() -> None:
    # OpenAI: "omitting parameters defines a function with an empty parameter list"; Cohere
    # requires a tool's `parameters` (its API reference, its SDK's ToolV2Function).
    empty = {"type": "object", "properties": {}}
    out = to_cohere(_body(tools=[{"type": "function", "function": {"name": "now"}},
                                 {"type": "function", "function": {"name": "w", "parameters": {
                                     "type": "object", "properties": {"c": {}}}}}]), "m")
    assert out["tools"] == [
        {"type": "function", "function": {"name": "now", "parameters": empty}},
        {"type": "function", "function": {"name": "w", "parameters": {
            "type": "object", "properties": {"c": {}}}}}]


async def test_strict_tool_is_sent_as_strict_tools(proxy: Any, upstream: Any) -> None:
    # OpenAI's `strict: true` guarantees a tool's arguments follow its schema; Cohere's switch
    # for that is the request's `strict_tools`. Dropped, the call could break the client's code.
    upstream.body = TEXT_SSE
    client = await proxy(provider_config("cohere", upstream.url))
    params = {"type": "object", "properties": {"city": {"type": "string"}},
              "required": ["city"], "additionalProperties": False}
    tools = [{"type": "function", "function": {"name": "weather", "parameters": params,
                                               "strict": True}},
             {"type": "function", "function": {"name": "time", "strict": False}}]
    resp = await client.post("/v1/chat/completions", json={**STREAM_REQ, "tools": tools})
    await resp.read()
    [sent] = upstream.requests
    assert sent.json()["strict_tools"] is True
    assert sent.json()["tools"][0] == {"type": "function", "function": {
        "name": "weather", "parameters": params}}


def test_strict_tools_only_for_a_strict_tool_sent_and_the_client_s_own_wins() -> None:
    strict = {"type": "function", "function": {"name": "a", "strict": True}}
    loose = {"type": "function", "function": {"name": "b"}}
    assert "strict_tools" not in to_cohere(_body(tools=[loose]), "m")
    assert "strict_tools" not in to_cohere(_body(tools=[strict, loose], tool_choice={
        "type": "function", "function": {"name": "b"}}), "m")  # only `b` is sent
    assert to_cohere(_body(tools=[strict], strict_tools=False), "m")["strict_tools"] is False


async def test_top_k_is_sent_as_k(proxy: Any, upstream: Any) -> None:
    # `top_k` (extra_body; Anthropic, Gemini and Ollama take it) is Cohere's `k`, as Portkey
    # maps it: dropped, a fallback to Cohere would sample differently without a word.
    upstream.body = TEXT_SSE
    client = await proxy(provider_config("cohere", upstream.url))
    resp = await client.post("/v1/chat/completions", json={**STREAM_REQ, "top_k": 40})
    await resp.read()
    [sent] = upstream.requests
    assert sent.json()["k"] == 40 and "top_k" not in sent.json()
    assert to_cohere(_body(top_k=40, k=5), "m")["k"] == 5  # Cohere's own name wins


def test_tool_choice_none_without_tools_is_not_sent() -> None:
    # Nothing to keep the model from calling; and models before Command R7B refuse the
    # parameter itself (Cohere's reference), so a client that always sends it would fail there.
    assert "tool_choice" not in to_cohere(_body(tool_choice="none"), "m")
    assert "tool_choice" not in to_cohere(_body(tools=[], tool_choice="none"), "m")


def test_tool_turn_text_beside_its_reasoning_goes_as_content() -> None:
    # The reasoning is the turn's tool plan; its text (what the model said before its calls,
    # e.g. a Claude turn replayed) is another thing the model said, and stays as content.
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    turn = {"role": "assistant", "content": "Let me check.", "reasoning_content": "Use f.",
            "tool_calls": [call]}
    [_, sent] = to_cohere(_body(messages=[{"role": "user", "content": "x"}, turn]),
                          "m")["messages"]
    assert sent["tool_plan"] == "Use f." and sent["content"] == "Let me check."
    # Text alone is the plan, as before (not sent twice).
    [_, sent] = to_cohere(_body(messages=[
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [call]}]), "m")["messages"]
    assert sent["tool_plan"] == "Let me check." and "content" not in sent


@pytest.mark.parametrize("fields", [
    {"reasoning": "Use f."},  # OpenRouter's, Groq's and vLLM's name for it
    {"reasoning_details": [{"type": "reasoning.text", "text": "Use f.", "index": 0},
                           {"type": "reasoning.encrypted", "data": "b64"}]},
])
def test_tool_turn_reasoning_under_other_names_is_the_plan(fields: dict[str, Any]) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    turn = {"role": "assistant", "content": "Let me check.", **fields, "tool_calls": [call]}
    [_, sent] = to_cohere(_body(messages=[{"role": "user", "content": "x"}, turn]),
                          "m")["messages"]
    assert sent["tool_plan"] == "Use f." and sent["content"] == "Let me check."


def test_a_zero_penalty_is_not_sent() -> None:
    # Cohere refuses a request with both penalties ("cannot specify both frequency_penalty and
    # presence_penalty", its errors reference); clients (the OpenAI playground's code, UIs)
    # send both as 0, OpenAI's and Cohere's default: no penalty, so nothing to send.
    out = to_cohere(_body(frequency_penalty=0, presence_penalty=0.0), "m")
    assert "frequency_penalty" not in out and "presence_penalty" not in out
    out = to_cohere(_body(frequency_penalty=0, presence_penalty=0.4), "m")
    assert "frequency_penalty" not in out and out["presence_penalty"] == 0.4
    assert to_cohere(_body(frequency_penalty=0.3), "m")["frequency_penalty"] == 0.3


def test_top_p_of_one_is_sent_as_cohere_s_largest_p() -> None:
    # Cohere's `p` is at most 0.99 (a 1 is refused); OpenAI's top_p 1 means no nucleus cut.
    assert to_cohere(_body(top_p=1), "m")["p"] == 0.99
    assert to_cohere(_body(top_p=0.995), "m")["p"] == 0.99
    assert to_cohere(_body(top_p=0.5), "m")["p"] == 0.5


def test_top_p_of_zero_is_sent_as_cohere_s_smallest_p() -> None:
    # OpenAI takes top_p 0 (keep only the likeliest tokens); Cohere's `p` is at least 0.01,
    # and its 400 about `p` names no parameter the client sent.
    assert to_cohere(_body(top_p=0), "m")["p"] == 0.01
    assert to_cohere(_body(top_p=0.001), "m")["p"] == 0.01
    with pytest.raises(InvalidRequest) as info:
        to_cohere(_body(top_p=-0.1), "m")
    assert info.value.param == "top_p" and info.value.code == "decimal_below_min_value"


@pytest.mark.parametrize("name", ["frequency_penalty", "presence_penalty"])
def test_penalties_outside_cohere_s_range_are_brought_into_it(name: str) -> None:
    # OpenAI's penalties go from -2 to 2, Cohere's from 0 to 1 (its API reference): above 1 is
    # Cohere's strongest penalty; below 0 (OpenAI: favour repeats) Cohere has no way to say,
    # so none is sent, as for 0.
    assert to_cohere(_body(**{name: 1.5}), "m")[name] == 1
    assert to_cohere(_body(**{name: 2}), "m")[name] == 1
    assert name not in to_cohere(_body(**{name: -1}), "m")
    assert to_cohere(_body(**{name: 0.7}), "m")[name] == 0.7
    for wrong, code in ((2.5, "decimal_above_max_value"), (-3, "decimal_below_min_value")):
        with pytest.raises(InvalidRequest) as info:  # OpenAI's own 400, naming its parameter
            to_cohere(_body(**{name: wrong}), "m")
        assert info.value.param == name and info.value.code == code


def test_json_schema_and_reasoning_effort() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    out = to_cohere(_body(response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": schema}}, reasoning_effort="low"), "m")
    assert out["response_format"] == {"type": "json_object", "json_schema": schema}
    assert out["thinking"] == {"type": "enabled", "token_budget": 1024}
    assert to_cohere(_body(reasoning_effort="none"), "m")["thinking"] == {"type": "disabled"}
    # OpenAI's max, above xhigh: the largest budget, as xhigh's (31K: Cohere's advice).
    assert to_cohere(_body(reasoning_effort="max"), "m")["thinking"] == {
        "type": "enabled", "token_budget": 31000}


@pytest.mark.parametrize("status", [400, 401, 429, 500])
async def test_error_body_keeps_status_and_message(proxy: Any, upstream: Any,
                                                   status: int) -> None:
    upstream.status = status
    upstream.content_type = "application/json"
    upstream.body = b'{"message":"invalid request: model not found"}'
    client = await proxy(provider_config("cohere", upstream.url))
    resp = await client.post("/v1/chat/completions", json=STREAM_REQ)
    assert resp.status == status
    body = await resp.json()
    assert body["error"]["message"] == "invalid request: model not found"
    assert "sk-test-secret" not in orjson.dumps(body).decode()


async def test_cohere_s_invalid_token_status_is_an_authentication_error(
        proxy: Any, upstream: Any) -> None:
    # Cohere answers a refused key with its own 498, which the openai SDK raised as a bare
    # APIStatusError (no AuthenticationError, no 401 to act on).
    upstream.status = 498
    upstream.content_type = "application/json"
    upstream.body = b'{"id":"x","message":"invalid api token"}'
    client = await proxy(provider_config("cohere", upstream.url))
    resp = await client.post("/v1/chat/completions", json=STREAM_REQ)
    assert resp.status == 401
    error = (await resp.json())["error"]
    assert error["message"] == "invalid api token" and error["type"] == "authentication_error"


NON_STREAM = {
    "id": "f201af17", "finish_reason": "TOOL_CALL",
    "message": {"role": "assistant", "tool_plan": "I will use the weather tool.",
                "tool_calls": [{"id": "weather_1", "type": "function", "function": {
                    "name": "weather", "arguments": '{"location":"San Francisco"}'}}]},
    "usage": {"billed_units": {"input_tokens": 119, "output_tokens": 52},
              "tokens": {"input_tokens": 1549, "output_tokens": 103}, "cached_tokens": 992},
}


async def test_non_stream_response(proxy: Any, upstream: Any) -> None:
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps(NON_STREAM)
    client = await proxy(provider_config("cohere", upstream.url))
    resp = await client.post("/v1/chat/completions", json={
        "model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status == 200
    done = await resp.json()
    assert "stream" not in upstream.requests[0].json()
    msg = done["choices"][0]["message"]
    assert msg["reasoning_content"] == "I will use the weather tool."
    assert msg["tool_calls"] == [{"id": "weather_1", "type": "function", "function": {
        "name": "weather", "arguments": '{"location":"San Francisco"}'}}]
    assert done["choices"][0]["finish_reason"] == "tool_calls"
    assert done["usage"] == {"prompt_tokens": 1549, "completion_tokens": 103,
                             "total_tokens": 1652, "prompt_tokens_details": {"cached_tokens": 992}}


def test_non_stream_null_arguments_of_a_no_argument_tool_are_an_empty_object() -> None:
    # Cohere answers a call of a tool without parameters with `"arguments": "null"` (the AI
    # SDK's recorded answer, which it maps to "{}"); OpenAI's arguments are a JSON object, and
    # a client that parses them into keyword arguments fails on null.
    body = orjson.dumps({**NON_STREAM, "message": {**NON_STREAM["message"], "tool_calls": [
        {"id": "currentTime_1", "type": "function",
         "function": {"name": "currentTime", "arguments": "null"}}]}})
    done = to_completion(body, completion_id="c", created=1, model="m", provider="cohere")
    [call] = done["choices"][0]["message"]["tool_calls"]
    assert call["function"] == {"name": "currentTime", "arguments": "{}"}
    assert done["choices"][0]["finish_reason"] == "tool_calls"


async def test_openai_sdk_streams_the_recorded_tool_calls(proxy: Any, upstream: Any) -> None:
    upstream.body = TOOL_SSE
    client = openai_sdk(await proxy(provider_config("cohere", upstream.url)))
    got = await read_sdk_stream(await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True}))
    calls, finish, usage = got.tool_calls, got.finish, got.usage
    assert calls == {0: ["weather_e8p4pn45zt0t", "weather", '{"location": "San Francisco"}'],
                     1: ["cityAttractions_pyxssbwnq9fq", "cityAttractions",
                         '{"city": "San Francisco"}']}
    assert finish == "tool_calls"
    assert usage is not None and usage.prompt_tokens == 1549
    assert usage.prompt_tokens_details.cached_tokens == 1504


async def test_openai_sdk_non_streaming(proxy: Any, upstream: Any) -> None:
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps({
        "id": "t", "finish_reason": "COMPLETE",
        "message": {"role": "assistant", "content": [{"type": "text", "text": "Paris."}]},
        "usage": {"tokens": {"input_tokens": 5, "output_tokens": 2}}})
    client = openai_sdk(await proxy(provider_config("cohere", upstream.url)))
    done = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}])
    assert done.choices[0].message.content == "Paris."
    assert done.choices[0].finish_reason == "stop"
    assert done.usage.total_tokens == 7


async def test_non_stream_error_finish_is_an_error_status(proxy: Any, upstream: Any) -> None:
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps({"id": "t", "finish_reason": "TIMEOUT",
                                  "message": {"role": "assistant", "content": []}})
    client = await proxy(provider_config("cohere", upstream.url))
    resp = await client.post("/v1/chat/completions", json={
        "model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status == 504
    assert (await resp.json())["error"]["code"] == "timeout"


async def test_non_stream_answer_names_the_model_a_stream_would(proxy: Any,
                                                                upstream: Any) -> None:
    # Cohere's answer names no model: the answer carries the target's model, as a stream's
    # chunks do — not the client's `provider/model` spelling, nor "" when the default was used.
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps({
        "id": "t", "finish_reason": "COMPLETE",
        "message": {"role": "assistant", "content": [{"type": "text", "text": "Paris."}]},
        "usage": {"tokens": {"input_tokens": 5, "output_tokens": 2}}})
    client = await proxy(provider_config("cohere", upstream.url))
    hi = [{"role": "user", "content": "hi"}]
    named = await client.post("/v1/chat/completions",
                              json={"model": "up/command-a", "messages": hi})
    assert (await named.json())["model"] == "command-a"
    default = await client.post("/v1/chat/completions", json={"messages": hi})
    assert (await default.json())["model"] == "m"


PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAA"  # a PNG's first 18 bytes
BMP_B64 = "Qk02AAAAAAAAADYAAAAoAAAA"  # "BM…": a Windows bitmap


def _image(url: str) -> dict[str, Any]:
    return to_cohere({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is it?"},
        {"type": "image_url", "image_url": {"url": url, "detail": "low"}}]}]},
        "command-a-vision-07-2025")["messages"][0]["content"][1]


@pytest.mark.parametrize("url", [
    f"data:image/png;base64,{PNG_B64}",
    f"data:IMAGE/PNG;base64,{PNG_B64}",  # upper case, which data: URLs allow
    f"data:image/png;charset=utf-8;base64,{PNG_B64}",  # a parameter before ;base64
    f"data:image/jpeg;base64,{PNG_B64}",  # mislabelled: the bytes say PNG
    f"data:application/octet-stream;base64,{PNG_B64}",
])
def test_a_data_url_image_goes_in_the_form_cohere_reads(url: str) -> None:
    assert _image(url) == {"type": "image_url", "image_url": {
        "url": f"data:image/png;base64,{PNG_B64}", "detail": "low"}}


@pytest.mark.parametrize("url", [
    f"data:image/bmp;base64,{BMP_B64}",  # Cohere takes png, jpeg, webp and gif
    "data:application/pdf;base64,JVBERi0xLjQK",
    f"data:image/png,{PNG_B64}",  # not base64
    "data:image/png;base64,",
])
def test_a_data_url_cohere_cannot_read_is_a_400_naming_it(url: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        _image(url)
    assert info.value.param == "messages[0].content[1].image_url.url"


def test_an_https_image_goes_as_it_is() -> None:
    url = "https://example.com/chart.bmp?x=1"  # Cohere fetches it and judges its type
    assert _image(url)["image_url"]["url"] == url


def test_text_parts_of_system_assistant_and_tool_messages_are_joined_by_a_line() -> None:
    # Joined with nothing, separate parts ran their words together ("Be brief.Use French.").
    parts = [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use French."}]
    body = {"messages": [
        {"role": "system", "content": parts},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": parts, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": parts},
    ]}
    messages = to_cohere(body, "command-a-03-2025")["messages"]
    assert messages[0]["content"] == messages[3]["content"] == "Be brief.\nUse French."
    assert messages[2]["tool_plan"] == "Be brief.\nUse French."


def test_calls_that_share_an_id_get_distinct_ids_their_results_name() -> None:
    # One turn's calls under one id (servers that number each answer's calls alike): Cohere
    # pairs a result with its call by id, so the two results could not be told apart. The
    # calls after the first of an id get ids of their own; that id's results pair in order.
    calls = [{"id": "call_0", "type": "function", "function": {"name": n, "arguments": "{}"}}
             for n in ("a", "b")]
    messages = [{"role": "user", "content": "weather?"},
                {"role": "assistant", "content": None, "tool_calls": calls},
                {"role": "tool", "tool_call_id": "call_0", "content": "sunny"},
                {"role": "tool", "tool_call_id": "call_0", "content": "rain"}]
    sent = to_cohere({"messages": messages}, "command-a-03-2025")["messages"]
    first, second = (call["id"] for call in sent[1]["tool_calls"])
    assert first == "call_0" and second != first
    assert [m["tool_call_id"] for m in sent[2:]] == [first, second]


def test_thinking_and_tool_plan_are_one_reasoning_in_one_order_streamed_or_not() -> None:
    # A reasoning model thinks first, then plans its calls: streamed and whole give the two
    # in that order, a blank line between them (joined bare, "Hm.I will…" ran together).
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    stream = events(
        START,
        {"type": "content-start", "index": 0,
         "delta": {"message": {"content": {"type": "thinking", "thinking": ""}}}},
        {"type": "content-delta", "index": 0,
         "delta": {"message": {"content": {"thinking": "Hm."}}}},
        {"type": "content-end", "index": 0},
        {"type": "tool-plan-delta", "delta": {"message": {"tool_plan": "I will"}}},
        {"type": "tool-plan-delta", "delta": {"message": {"tool_plan": " call f."}}},
        {"type": "tool-call-start", "index": 0, "delta": {"message": {"tool_calls": call}}},
        {"type": "tool-call-end", "index": 0},
        end("TOOL_CALL"),
    )
    streamed = collect(sse_chunks(translate([stream])))
    whole = to_completion(orjson.dumps({"finish_reason": "TOOL_CALL", "message": {
        "role": "assistant", "tool_plan": "I will call f.",
        "content": [{"type": "thinking", "thinking": "Hm."}], "tool_calls": [call]}}),
        completion_id="x", created=0, model="m", provider="cohere")
    assert streamed.reasoning == "Hm.\n\nI will call f."
    assert whole["choices"][0]["message"]["reasoning_content"] == "Hm.\n\nI will call f."
    # Either alone is as it came.
    plan_only = events(START, {"type": "tool-plan-delta",
                               "delta": {"message": {"tool_plan": "I will call f."}}},
                       {"type": "tool-call-start", "index": 0,
                        "delta": {"message": {"tool_calls": call}}},
                       {"type": "tool-call-end", "index": 0}, end("TOOL_CALL"))
    assert collect(sse_chunks(translate([plan_only]))).reasoning == "I will call f."
    assert collect(sse_chunks(translate([TEXT_SSE]))).reasoning == "Hm."


def test_an_empty_thinking_block_is_no_reasoning_streamed_or_not() -> None:
    # A thinking block with no text (a reasoning model that thought nothing it shows): whole,
    # it gave reasoning_content "" (streamed: none), and a tool plan after it started with a
    # bare blank line on both paths.
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    thinking = {"type": "content-start", "index": 0,
                "delta": {"message": {"content": {"type": "thinking", "thinking": ""}}}}
    for plan in ("", "I will call f."):
        tail = [{"type": "tool-plan-delta", "delta": {"message": {"tool_plan": plan}}},
                {"type": "tool-call-start", "index": 0,
                 "delta": {"message": {"tool_calls": call}}},
                {"type": "tool-call-end", "index": 0}, end("TOOL_CALL")] if plan else [
                text_delta("Hi", 1), end("COMPLETE")]
        streamed = collect(sse_chunks(translate([events(
            START, thinking, {"type": "content-end", "index": 0}, *tail)])))
        message: dict[str, Any] = {"role": "assistant",
                                   "content": [{"type": "thinking", "thinking": ""}]}
        if plan:
            message.update(tool_plan=plan, tool_calls=[call])
        else:
            message["content"].append({"type": "text", "text": "Hi"})
        whole = to_completion(orjson.dumps({
            "finish_reason": "TOOL_CALL" if plan else "COMPLETE", "message": message}),
            completion_id="x", created=0, model="m", provider="cohere")["choices"][0]["message"]
        assert (streamed.reasoning or None) == (whole.get("reasoning_content") or None) == (
            plan or None)
        assert ("reasoning_content" in whole) == bool(plan)


@pytest.mark.parametrize(("effort", "max_tokens", "budget"), [
    ("max", None, 31000), ("xhigh", None, 31000), ("high", None, 16384),
    # Below the client's max, which counts thinking and answer: 1000 left for the answer,
    # or half of a max smaller than twice that.
    ("high", 8000, 7000), ("max", 32000, 31000), ("low", 1500, 750), ("medium", 1, 1),
])
def test_thinking_budget_leaves_room_for_the_answer(effort: str, max_tokens: int | None,
                                                    budget: int) -> None:
    # Cohere's reasoning docs: leave at least 1K tokens for the response (31K at most, under
    # Command A Reasoning's 32,000-token output cap).
    extra = {"max_tokens": max_tokens} if max_tokens else {}
    assert to_cohere(_body(reasoning_effort=effort, **extra), "m")["thinking"] == {
        "type": "enabled", "token_budget": budget}
    if max_tokens:  # (OpenAI's current name is the same cap)
        assert to_cohere(_body(reasoning_effort=effort, max_completion_tokens=max_tokens),
                         "m")["thinking"]["token_budget"] == budget


IMAGE_PART = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}


@pytest.mark.parametrize(("content", "sent"), [
    ("", "(empty message)"),
    ([{"type": "text", "text": ""}], "(empty message)"),
    ([{"type": "text"}, {"type": "text", "text": ""}], "(empty message)"),
    ([{"type": "text", "text": ""}, {"type": "text", "text": "hi"}],
     [{"type": "text", "text": "hi"}]),
    ([{"type": "text", "text": ""}, IMAGE_PART], [IMAGE_PART]),
    (" ", " "),  # (whitespace is text; no Cohere refusal of it is known)
])
def test_an_empty_user_message_or_text_part_is_not_sent_as_it_is(content: Any,
                                                                 sent: Any) -> None:
    # Cohere refuses an empty message with a 400 ("message must not be empty in a turn", its
    # errors reference); the client sent what OpenAI takes ("" is a user turn with nothing
    # said). Empty text parts go (they say nothing), and a user message left with nothing
    # keeps its turn as "(empty message)", as on Anthropic, Bedrock and Gemini: left out, a
    # request could end with the assistant turn, which Cohere refuses.
    body = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hi."},
                         {"role": "user", "content": content}]}
    assert to_cohere(body, "command-a-03-2025")["messages"][2] == {"role": "user",
                                                                   "content": sent}


def test_a_count_past_a_double_is_null_not_a_crash() -> None:
    # A count written 1e400 (valid JSON) is read as inf, which int() refuses: an
    # OverflowError out of the translator failed the answer (a 500, a stream's error) where
    # another provider's count is the client's null. Now it is null here too.
    usage = (b'"usage":{"tokens":{"input_tokens":507,"output_tokens":1e400},'
             b'"cached_tokens":1e400}')
    raw = (events(START, text_delta("Hi")) + b'event: message-end\ndata: {"type":"message-end",'
           b'"delta":{"finish_reason":"COMPLETE",' + usage + b"}}\n\n")
    c = collect(sse_chunks(translate([raw])))
    assert c.content == "Hi" and c.error is None and c.done
    assert c.usage == {"prompt_tokens": 507, "completion_tokens": None, "total_tokens": None,
                       "prompt_tokens_details": {"cached_tokens": 507}}
    body = (b'{"id":"x","finish_reason":"COMPLETE","message":{"role":"assistant","content":'
            b'[{"type":"text","text":"Hi"}]},' + usage + b"}")
    answer = orjson.loads(orjson.dumps(to_completion(body, completion_id="c", created=1,
                                                     model="m", provider="cohere")))
    assert answer["choices"][0]["message"]["content"] == "Hi"
    assert answer["usage"] == c.usage


@pytest.mark.parametrize("content", ["", None, [], [{"type": "text", "text": ""}],
                                     [{"type": "text"}, {"type": "text", "text": ""}]])
@pytest.mark.parametrize("role", ["system", "developer"])
def test_an_empty_system_message_is_left_out(role: str, content: Any) -> None:
    # Cohere refuses an empty message ("message must not be empty in a turn", its errors
    # reference); an instruction that says nothing has nothing to keep, in any place.
    body = {"messages": [{"role": role, "content": content}, {"role": "user", "content": "hi"},
                         {"role": "assistant", "content": "Hi."},
                         {"role": role, "content": content}, {"role": "user", "content": "x"}]}
    assert to_cohere(body, "command-a-03-2025")["messages"] == [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "x"}]


@pytest.mark.parametrize("content", ["", None, [], [{"type": "text", "text": ""}]])
def test_an_empty_assistant_message_without_calls_is_left_out(content: Any) -> None:
    # Cohere refuses an empty message ("message must not be empty in a turn"); a turn that
    # said nothing has nothing to keep. Cohere v2 takes two user messages in a row, and a
    # last one left out leaves the request ending with the user, as Cohere needs.
    body = {"messages": [{"role": "user", "content": "hi"},
                         {"role": "assistant", "content": content},
                         {"role": "user", "content": "x"},
                         {"role": "assistant", "content": content}]}
    assert to_cohere(body, "command-a-03-2025")["messages"] == [
        {"role": "user", "content": "hi"}, {"role": "user", "content": "x"}]


@pytest.mark.parametrize(("content", "sent"), [
    ("", "(empty)"), (None, "(empty)"), ([], "(empty)"),
    ([{"type": "text", "text": ""}, {"type": "text"}], "(empty)"),
    ([{"type": "text", "text": ""}, {"type": "text", "text": "17C"}], "17C"),
])
def test_an_empty_tool_result_is_sent_as_empty_tool_result(content: Any, sent: str) -> None:
    # Cohere refuses an empty message ("message must not be empty in a turn"), and a call must
    # have its result (Command A refuses a call without one): a tool that returned nothing
    # says so, as on Bedrock.
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    body = {"messages": [{"role": "user", "content": "hi"},
                         {"role": "assistant", "content": None, "tool_calls": [call]},
                         {"role": "tool", "tool_call_id": "c1", "content": content}]}
    assert to_cohere(body, "command-a-03-2025")["messages"][2] == {
        "role": "tool", "tool_call_id": "c1", "content": sent}


@pytest.mark.parametrize("messages", [
    [{"role": "system", "content": ""}],
    [{"role": "developer", "content": [{"type": "text", "text": ""}]}],
    [{"role": "assistant", "content": ""}],
    [{"role": "system", "content": None}, {"role": "assistant", "content": None}],
])
def test_a_conversation_left_with_no_message_gets_the_placeholder_user_turn(
        messages: list[dict[str, Any]]) -> None:
    # Every message said nothing and was left out (Cohere refuses an empty one), and
    # `messages: []` went, which Cohere refuses: the client, answered by OpenAI, got a 400.
    # As on Anthropic, Gemini and Bedrock, the request has one user turn asking the model to
    # answer (README "Choices we made").
    assert to_cohere({"messages": messages}, "command-a-03-2025")["messages"] == [
        {"role": "user", "content": "Begin."}]


@pytest.mark.parametrize(("message", "said"), [
    ({"detail": "invalid request: bad field"}, "invalid request: bad field"),
    ({"code": 7}, "the provider reported an error"),
    (["a", "b"], "the provider reported an error"),
    (5, "the provider reported an error"),
])
def test_an_error_event_s_message_that_is_no_string_is_not_its_repr(message: Any,
                                                                     said: str) -> None:
    # An error body sent as an event whose `message` is no string went to the client as
    # Python's str() of it ("{'code': 7}", "['a', 'b']"); now it is read as an error body
    # over HTTP is (providers/base.py `detail_message`), or says there was an error.
    c = collect(sse_chunks(translate([b"data: " + orjson.dumps({"message": message})
                                      + b"\n\n"])))
    assert c.error is not None and c.error["message"] == said and not c.done


def test_a_late_system_message_and_a_final_assistant_message_go_in_place() -> None:
    # A late system message stays where the client put it, and Cohere does not continue a final
    # assistant message (no prefill; answered anew, as OpenAI): both go as sent, in order; no
    # user turn is made up after the assistant's.
    body = {"messages": [{"role": "user", "content": "hi"},
                         {"role": "developer", "content": "Answer in French."},
                         {"role": "user", "content": "Name a colour."},
                         {"role": "assistant", "content": "Rouge"}]}
    assert to_cohere(body, "command-a-03-2025")["messages"] == [
        {"role": "user", "content": "hi"}, {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Rouge"}]
