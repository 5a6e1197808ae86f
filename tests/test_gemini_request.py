"""OpenAI request → Gemini request (pure), the Vertex token helper, and the config checks."""

from __future__ import annotations

import asyncio
import copy
import datetime
import sys
from typing import Any, Literal

import openai
import orjson
import pytest
from pydantic import BaseModel, Field

from streamproxy.config import ConfigError
from streamproxy.errors import InvalidRequest
from streamproxy.providers.gemini.auth import CommandToken, Fetched, TokenSource, TokenUnavailable
from streamproxy.providers.gemini.request import DROPPED, to_gemini
from tests.helpers import calls_of_every_name, late_system_loop, make_config

SIG = "EosJCogJAb4+9vvm/sig=="


def translate(messages: list[dict[str, Any]], model: str = "gemini-3-flash-preview",
              **params: Any) -> dict[str, Any]:
    return to_gemini({"model": model, "messages": messages, **params}, model)


def test_roles_system_and_merging() -> None:
    out = translate([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "a"},
        {"role": "developer", "content": [{"type": "text", "text": "Use metric."}]},
        {"role": "user", "content": [{"type": "text", "text": "b"}]},
        {"role": "assistant", "content": "c"},
        {"role": "assistant", "content": None},
        {"role": "user", "content": "d"},
    ])
    assert out["systemInstruction"] == {"parts": [{"text": "Be brief."}, {"text": "Use metric."}]}
    assert out["contents"] == [
        {"role": "user", "parts": [{"text": "a"}, {"text": "b"}]},
        {"role": "model", "parts": [{"text": "c"}]},
        {"role": "user", "parts": [{"text": "d"}]},
    ]
    assert "generationConfig" not in out and "tools" not in out


def test_a_system_only_request_gets_a_placeholder_user_turn() -> None:
    # OpenAI answers system-only requests; Gemini rejects "contents": [].
    out = translate([{"role": "system", "content": "Write a haiku."},
                     {"role": "developer", "content": "About the sea."}])
    assert out["systemInstruction"] == {"parts": [{"text": "Write a haiku."},
                                                  {"text": "About the sea."}]}
    assert out["contents"] == [{"role": "user", "parts": [{"text": "Begin."}]}]


@pytest.mark.parametrize("model", ["gemma-3-27b-it", "gemma-3n-e4b-it", "models/gemma-3-4b-it"])
def test_gemma_gets_its_instructions_in_the_first_user_turn(model: str) -> None:
    # Gemma 1 to 3 have no system role: the Gemini API answers any systemInstruction with a
    # 400 "Developer instruction is not enabled for models/gemma-3-27b-it".
    out = translate([{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "a"},
                     {"role": "developer", "content": "Use metric."},
                     {"role": "assistant", "content": "b"},
                     {"role": "user", "content": "c"}], model=model)
    assert "systemInstruction" not in out
    assert out["contents"] == [
        {"role": "user", "parts": [{"text": "Be brief."}, {"text": "Use metric."},
                                   {"text": "a"}]},
        {"role": "model", "parts": [{"text": "b"}]},
        {"role": "user", "parts": [{"text": "c"}]},
    ]
    # with no user turn first, or none at all, the instructions are one of their own
    out = translate([{"role": "system", "content": "Be brief."},
                     {"role": "assistant", "content": "b"},
                     {"role": "user", "content": "c"}], model=model)
    assert out["contents"][0] == {"role": "user", "parts": [{"text": "Be brief."}]}
    out = translate([{"role": "system", "content": "Write a haiku."}], model=model)
    assert out["contents"] == [{"role": "user", "parts": [{"text": "Write a haiku."}]}]


@pytest.mark.parametrize("model", ["gemini-2.5-flash", "gemma-4-31b-it"])
def test_models_with_a_system_role_keep_system_instruction(model: str) -> None:
    out = translate([{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "a"}], model=model)
    assert out["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert out["contents"] == [{"role": "user", "parts": [{"text": "a"}]}]


def test_a_conversation_that_starts_with_the_assistant_gets_a_user_turn_first() -> None:
    # A greeting first, or a history cut before its first user message: Gemini refuses
    # contents that open with a model turn ("Please ensure that multiturn requests alternate
    # between user and model"; a function call must follow a user turn).
    out = translate([{"role": "system", "content": "Be brief."},
                     {"role": "assistant", "content": "Hi! How can I help?"},
                     {"role": "user", "content": "a"}])
    assert out["contents"] == [
        {"role": "user", "parts": [{"text": "Begin."}]},
        {"role": "model", "parts": [{"text": "Hi! How can I help?"}]},
        {"role": "user", "parts": [{"text": "a"}]},
    ]
    out = translate([tool_turn("c1"), {"role": "tool", "tool_call_id": "c1", "content": "1"}],
                    model="gemini-2.5-flash")
    assert [c["role"] for c in out["contents"]] == ["user", "model", "user"]
    assert out["contents"][0] == {"role": "user", "parts": [{"text": "Begin."}]}
    assert "functionCall" in out["contents"][1]["parts"][0]


@pytest.mark.parametrize("model", ["gemini-3.6-flash", "gemini-2.5-pro",
                                   "publishers/google/models/gemini-3-flash-preview",
                                   "gemma-3-27b-it"])
@pytest.mark.parametrize("late", ["system", "developer"])
def test_system_messages_after_the_last_assistant_turn_ask_for_a_new_answer(
        model: str, late: str) -> None:
    # An agent framework's late instruction: OpenAI answers it anew. With its text hoisted
    # into systemInstruction (or the first user turn, for Gemma) the request ended with the
    # model turn: a prefill the client never sent, which Gemini 2.5 continued and Gemini 3.6
    # Flash and later refuse ("Requests ending with a model turn are not supported").
    out = translate([{"role": "user", "content": "Hi"},
                     {"role": "assistant", "content": "Hello! How can I help?"},
                     {"role": late, "content": "Now summarise the chat in French."}],
                    model=model)
    assert out["contents"][-2] == {"role": "model",
                                   "parts": [{"text": "Hello! How can I help?"}]}
    assert out["contents"][-1] == {"role": "user", "parts": [{"text": "Begin."}]}
    # a final assistant message the client sends itself is still its prefill, as it is
    out = translate([{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Hi"},
                     {"role": "assistant", "content": "Hello"}], model=model)
    assert out["contents"][-1] == {"role": "model", "parts": [{"text": "Hello"}]}


@pytest.mark.parametrize("model", ["gemini-3-flash-preview", "gemma-3-27b-it"])
def test_an_assistant_turn_after_a_late_system_message_is_not_merged_into_the_one_before(
        model: str) -> None:
    """As on Anthropic and Bedrock: an agent's late instruction ([user, assistant, system]) is
    answered after a `Begin.` turn; its answer, sent back in the next step of the loop (a
    signed call), was merged into the model turn before the system message, so Gemini read a
    history it never had: its call and signature as part of the turn it had answered before.
    It is replayed as it was asked, after the same placeholder turn."""
    messages = late_system_loop({**tool_turn("c1"), "thinking_blocks": [
        {"type": "thought_signature", "signature": SIG, "tool_call_id": "c1"}]}, "c1")
    asked = translate(messages[:3], model=model)
    out = translate(messages, model=model)
    assert out["contents"][:3] == asked["contents"]
    assert [c["role"] for c in out["contents"]] == ["user", "model", "user", "model", "user"]
    assert out["contents"][3]["parts"][0]["thoughtSignature"] == SIG
    # Beside a user turn, none.
    out = translate([*messages[:3], {"role": "user", "content": "Hm?"}, *messages[3:]],
                    model=model)
    assert "Begin." not in str(out["contents"])


def tool_turn(call_id: str, **extra: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": call_id, "type": "function", **extra,
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}


def test_tool_round_trip_with_signature_in_thinking_blocks() -> None:
    assistant = tool_turn("c9bjmkfz")
    assistant["thinking_blocks"] = [
        {"type": "thought_signature", "signature": SIG, "tool_call_id": "c9bjmkfz"},
        {"type": "thinking", "thinking": "from another provider", "signature": "x"}]
    out = translate([
        {"role": "user", "content": "Weather?"},
        assistant,
        {"role": "tool", "tool_call_id": "c9bjmkfz", "content": "sunny"},
    ])
    assert out["contents"][1:] == [
        {"role": "model", "parts": [{
            "functionCall": {"name": "get_weather", "args": {"city": "Paris"}, "id": "c9bjmkfz"},
            "thoughtSignature": SIG}]},
        {"role": "user", "parts": [{"functionResponse": {
            "name": "get_weather", "response": {"output": "sunny"}, "id": "c9bjmkfz"}}]},
    ]


def test_signature_from_google_extra_content_and_from_a_litellm_id_suffix() -> None:
    google = tool_turn("g1", extra_content={"google": {"thought_signature": SIG}})
    litellm = tool_turn(f"g2__thought__{SIG}")
    out = translate([{"role": "user", "content": "x"}, google,
                     {"role": "tool", "tool_call_id": "g1", "content": "{}"},
                     litellm,
                     {"role": "tool", "tool_call_id": f"g2__thought__{SIG}", "content": "1"}])
    first, second = out["contents"][1], out["contents"][3]
    assert first["parts"][0]["thoughtSignature"] == SIG
    assert first["parts"][0]["functionCall"]["id"] == "g1"
    assert second["parts"][0] == {"functionCall": {"name": "get_weather",
                                                   "args": {"city": "Paris"}, "id": "g2"},
                                  "thoughtSignature": SIG}
    assert out["contents"][4]["parts"][0]["functionResponse"]["id"] == "g2"


@pytest.mark.parametrize("model", ["gemini-3-flash-preview", "gemini-2.5-flash"])
def test_portkeys_signature_on_the_calls_function_goes_back(model: str) -> None:
    # Portkey answers a Gemini call's signature as `tool_calls[].function.thought_signature`
    # and reads it back from there: a tool loop begun on Portkey (or a client built for it)
    # lost it here — Gemini 3 got the skip value and went on without the reasoning it had
    # signed, Gemini 2.5 got no signature at all. Parallel calls: only the first carries one.
    turn = tool_turn("c1")
    turn["tool_calls"][0]["function"]["thought_signature"] = SIG
    turn["tool_calls"].append({"id": "c2", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city": "Rome"}'}})
    out = translate([{"role": "user", "content": "x"}, turn,
                     {"role": "tool", "tool_call_id": "c1", "content": "1"},
                     {"role": "tool", "tool_call_id": "c2", "content": "2"}], model)
    assert [part.get("thoughtSignature") for part in out["contents"][1]["parts"]] == [SIG, None]


@pytest.mark.parametrize("model", ["gemini-3-flash-preview", "gemini-3.1-pro-preview",
                                   "publishers/google/models/gemini-3-pro-preview"])
def test_gemini_3_calls_replayed_without_a_signature_skip_its_check(model: str) -> None:
    # A client that kept only the OpenAI fields of its tool calls (most frameworks): Gemini 3
    # answers "Function call is missing a thought_signature" unless the call carries Google's
    # skip value. Only the first call of a step is checked (parallel calls carry one).
    parallel = tool_turn("c1")
    parallel["tool_calls"].append({**parallel["tool_calls"][0], "id": "c2"})
    signed = tool_turn("c3")
    signed["thinking_blocks"] = [{"type": "thought_signature", "signature": SIG,
                                  "tool_call_id": "c3"}]
    out = translate([{"role": "user", "content": "x"}, parallel,
                     {"role": "tool", "tool_call_id": "c1", "content": "1"},
                     {"role": "tool", "tool_call_id": "c2", "content": "2"},
                     signed, {"role": "tool", "tool_call_id": "c3", "content": "3"},
                     {"role": "assistant", "content": "Done."}], model=model)
    first, second, answer = (c["parts"] for c in out["contents"] if c["role"] == "model")
    assert [part.get("thoughtSignature") for part in first] == [
        "skip_thought_signature_validator", None]
    assert second[0]["thoughtSignature"] == SIG  # a real one is never replaced
    assert answer == [{"text": "Done."}]


@pytest.mark.parametrize("model", ["gemini-2.5-flash", "gemini-2.0-flash", "gemma-3-27b-it"])
def test_older_models_get_no_skip_value(model: str) -> None:
    out = translate([{"role": "user", "content": "x"}, tool_turn("c1"),
                     {"role": "tool", "tool_call_id": "c1", "content": "1"}], model=model)
    assert "thoughtSignature" not in out["contents"][1]["parts"][0]


def test_generated_ids_are_not_sent_upstream_and_results_are_wrapped() -> None:
    out = translate([
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_0123456789abcdef01234567", "type": "function",
             "function": {"name": "a", "arguments": ""}},
            {"id": "call_2", "type": "function", "function": {"name": "b", "arguments": "[1]"}}]},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "42"}]},
        {"role": "tool", "tool_call_id": "call_0123456789abcdef01234567",
         "content": ' {"temp": 21}'},
        {"role": "user", "content": "thanks"},
    ])
    model, results, text = out["contents"][1:]
    assert model["parts"] == [
        {"text": "Checking."},
        {"functionCall": {"name": "a", "args": {}},
         "thoughtSignature": "skip_thought_signature_validator"},  # Gemini 3: none came back
        {"functionCall": {"name": "b", "args": {"value": [1]}}},
    ]
    # Both results in one user content, in the order of their calls (no id to pair them by);
    # the user's text in a content of its own (Vertex refuses a content mixing function
    # responses with text).
    assert results == {"role": "user", "parts": [
        {"functionResponse": {"name": "a", "response": {"temp": 21}}},
        {"functionResponse": {"name": "b", "response": {"output": "42"}}},
    ]}
    assert text == {"role": "user", "parts": [{"text": "thanks"}]}


def test_function_responses_never_share_a_content_with_user_parts() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    out = translate([
        {"role": "user", "content": "x"},
        tool_turn("g1"),
        {"role": "tool", "tool_call_id": "g1", "content": "sunny"},
        {"role": "user", "content": [{"type": "text", "text": "and this?"}, image]},
        {"role": "user", "content": "also"},
        {"role": "tool", "tool_call_id": "late", "name": "f", "content": "1"},
    ])
    assert [[next(iter(p)) for p in c["parts"]] for c in out["contents"]] == [
        ["text"], ["functionCall"], ["functionResponse"], ["text", "inlineData", "text"],
        ["functionResponse"]]
    assert {c["role"] for c in out["contents"][2:]} == {"user"}


def test_text_signature_goes_back_on_the_text_part() -> None:
    out = translate([{"role": "user", "content": "x"},
                     {"role": "assistant", "content": "Hi",
                      "thinking_blocks": [{"type": "thought_signature", "signature": SIG}]},
                     {"role": "user", "content": "y"}])
    assert out["contents"][1]["parts"] == [{"text": "Hi", "thoughtSignature": SIG}]


def test_googles_message_level_signature_goes_back_on_the_text_part() -> None:
    # Gemini's OpenAI-compatible endpoint signs a text answer on the message itself
    # (`extra_content.google.thought_signature`, its delta's in a stream), as it signs a call
    # on the call: a conversation begun there (an `openai` provider on its /openai root, a
    # fallback to this one) came back with it and lost it.
    out = translate([{"role": "user", "content": "x"},
                     {"role": "assistant", "content": "Hi",
                      "extra_content": {"google": {"thought_signature": SIG}}},
                     {"role": "user", "content": "y"}])
    assert out["contents"][1]["parts"] == [{"text": "Hi", "thoughtSignature": SIG}]


def test_a_turns_signature_without_a_text_part_goes_back_on_its_first_call() -> None:
    # Gemini may sign a call turn on a part of its own (a trailing empty text part) rather
    # than on the call: streamed, that is an entry without tool_call_id, and the turn has no
    # text for it to go back on. It was dropped: Gemini 3 got the skip value (its reasoning
    # lost), Gemini 2.5 no signature at all.
    for model in ("gemini-3-flash-preview", "gemini-2.5-flash"):
        turn = {**tool_turn("c9bjmkfz"),
                "thinking_blocks": [{"type": "thought_signature", "signature": SIG}]}
        out = translate([{"role": "user", "content": "x"}, turn,
                         {"role": "tool", "tool_call_id": "c9bjmkfz", "content": "sunny"}],
                        model)
        assert out["contents"][1]["parts"] == [
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"},
                              "id": "c9bjmkfz"}, "thoughtSignature": SIG}]


def test_a_calls_own_signature_wins_over_the_turns() -> None:
    turn = {**tool_turn("c9bjmkfz"), "thinking_blocks": [
        {"type": "thought_signature", "signature": "turn=="},
        {"type": "thought_signature", "signature": SIG, "tool_call_id": "c9bjmkfz"}]}
    out = translate([{"role": "user", "content": "x"}, turn,
                     {"role": "tool", "tool_call_id": "c9bjmkfz", "content": "sunny"}])
    assert [p["thoughtSignature"] for p in out["contents"][1]["parts"]] == [SIG]



def test_claude_thinking_parts_in_an_assistant_content_are_left_out() -> None:
    # A conversation that moves on from Claude (a fallback) with its thinking sent back as
    # content parts, as Portkey's clients do: Gemini takes the text, not Claude's thinking.
    out = translate([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "Greet back.", "signature": "sig=="},
        {"type": "text", "text": "Hello!"}]}, {"role": "user", "content": "Bye"}])
    assert out["contents"][1] == {"role": "model", "parts": [{"text": "Hello!"}]}


def test_function_responses_go_in_the_order_of_their_calls() -> None:
    # Parallel calls with ids Gemini never sees (OpenAI's, or ours for calls Gemini sent without
    # one), answered in another order (as each finished): Gemini pairs responses with calls by
    # position, so Rome's rain would be read as Paris's weather.
    def call(call_id: str, city: str) -> dict[str, Any]:
        return {"id": call_id, "type": "function",
                "function": {"name": "get_weather", "arguments": f'{{"city": "{city}"}}'}}
    out = translate([
        {"role": "user", "content": "Weather in Paris, Rome and Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            call("call_p", "Paris"), call("call_r", "Rome"), call("call_o", "Oslo")]},
        {"role": "tool", "tool_call_id": "call_r", "content": "rain"},
        {"role": "tool", "tool_call_id": "other", "name": "get_weather", "content": "?"},
        {"role": "tool", "tool_call_id": "call_o", "content": "snow"},
        {"role": "tool", "tool_call_id": "call_p", "content": "sun"},
        {"role": "user", "content": "Thanks"},
    ])
    outputs = [part["functionResponse"]["response"]["output"]
               for part in out["contents"][2]["parts"]]
    assert outputs == ["sun", "rain", "snow", "?"]  # one matching no call by id goes last
    assert out["contents"][3] == {"role": "user", "parts": [{"text": "Thanks"}]}


def test_function_responses_follow_calls_of_merged_assistant_messages() -> None:
    # Two assistant messages in a row merge into one model content: its calls are one turn's,
    # and a response answering the second message's call goes after the first's.
    def call(call_id: str, city: str) -> dict[str, Any]:
        return {"id": call_id, "type": "function",
                "function": {"name": "get_weather", "arguments": f'{{"city": "{city}"}}'}}
    out = translate([
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "Paris first.", "tool_calls": [call("call_p", "Paris")]},
        {"role": "assistant", "content": None, "tool_calls": [call("call_r", "Rome")]},
        {"role": "tool", "tool_call_id": "call_r", "content": "rain"},
        {"role": "tool", "tool_call_id": "call_p", "content": "sun"},
    ])
    asked = [part["functionCall"]["args"]["city"] for part in out["contents"][1]["parts"]
             if "functionCall" in part]
    outputs = [part["functionResponse"]["response"]["output"]
               for part in out["contents"][2]["parts"]]
    assert asked == ["Paris", "Rome"] and outputs == ["sun", "rain"]


def test_unknown_tool_call_id_is_a_400_unless_the_message_names_the_function() -> None:
    with pytest.raises(InvalidRequest) as info:
        translate([{"role": "user", "content": "x"},
                   {"role": "tool", "tool_call_id": "nope", "content": "1"}])
    assert info.value.param == "messages[1].tool_call_id"
    out = translate([{"role": "user", "content": "x"},
                     {"role": "tool", "tool_call_id": "nope", "name": "f", "content": "1"}])
    assert out["contents"][1]["parts"][0]["functionResponse"]["name"] == "f"


def test_tool_arguments_that_are_not_json_go_as_raw_text() -> None:
    # A call cut off at max_tokens, replayed: OpenAI takes any string as arguments.
    turn = tool_turn("g1")
    turn["tool_calls"][0]["function"]["arguments"] = "{not json"
    out = translate([{"role": "user", "content": "x"}, turn])
    assert out["contents"][1]["parts"][0]["functionCall"]["args"] == {
        "raw_arguments": "{not json"}


def test_images_audio_and_files() -> None:
    out = translate([{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.webp?size=2"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/render"}},
        {"type": "image_url", "image_url": {"url": "gs://bucket/dog.png"}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=",
                                  "filename": "a.pdf"}},
    ]}])
    assert out["contents"][0]["parts"] == [
        {"text": "What is this?"},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
        {"fileData": {"mimeType": "image/webp", "fileUri": "https://example.com/cat.webp?size=2"}},
        {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/render"}},
        {"fileData": {"mimeType": "image/png", "fileUri": "gs://bucket/dog.png"}},
        {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}},
    ]


@pytest.mark.parametrize("url", ["ftp://x/y.png", "data:image/png,raw", "not a url", None])
def test_bad_image_urls_are_a_400(url: Any) -> None:
    with pytest.raises(InvalidRequest) as info:
        translate([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}])
    assert info.value.param == "messages[0].content[0].image_url.url"


@pytest.mark.parametrize(("choice", "config"), [
    ("auto", {"mode": "AUTO"}),
    ("none", {"mode": "NONE"}),
    ("required", {"mode": "ANY"}),
    ({"type": "function", "function": {"name": "f"}},
     {"mode": "ANY", "allowedFunctionNames": ["f"]}),
])
def test_tool_choice(choice: Any, config: dict[str, Any]) -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    out = translate([{"role": "user", "content": "x"}], tools=tools, tool_choice=choice)
    assert out["tools"] == [{"functionDeclarations": [{"name": "f"}]}]
    assert out["toolConfig"] == {"functionCallingConfig": config}


@pytest.mark.parametrize("name", ["google_search", "googleSearch"])
def test_a_named_choice_of_google_search_calls_no_function(name: str) -> None:
    # Portkey's search tool, named as OpenAI names the tool that must be used, beside functions:
    # allowedFunctionNames [name] named no declared function (Gemini's 400), and ANY would force
    # a function call. Search is no function call: the functions are ruled out, search stays.
    tools = [{"type": "function", "function": {"name": "f"}},
             {"type": "function", "function": {"name": name}}]
    out = translate([{"role": "user", "content": "x"}], tools=tools,
                    tool_choice={"type": "function", "function": {"name": name}})
    assert out["tools"] == [{"functionDeclarations": [{"name": "f"}]}, {"googleSearch": {}}]
    assert out["toolConfig"] == {"functionCallingConfig": {"mode": "NONE"}}


def test_generation_config_and_json_schema() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}},
              "additionalProperties": False}
    out = translate([{"role": "user", "content": "x"}], model="gemini-2.0-flash",
                    max_completion_tokens=50, max_tokens=9,
                    stop=["a", "b"], seed=3, presence_penalty=0.5, frequency_penalty=0.1,
                    top_k=40, response_format={"type": "json_schema", "json_schema": {
                        "name": "s", "schema": schema, "strict": True}})
    assert out["generationConfig"] == {
        "maxOutputTokens": 50, "topK": 40, "presencePenalty": 0.5, "frequencyPenalty": 0.1,
        "seed": 3, "stopSequences": ["a", "b"], "responseMimeType": "application/json",
        "responseJsonSchema": schema}


@pytest.mark.parametrize(("model", "penalties", "sent"), [
    # 1.5 (002) and 2.0 take penalties; 2.5 and later answer any with a 400 ("Penalty is not
    # enabled for models/gemini-2.5-flash"): dropped there, as a parameter the model can't take.
    ("gemini-2.0-flash", {"presence_penalty": 0.5, "frequency_penalty": -0.1},
     {"presencePenalty": 0.5, "frequencyPenalty": -0.1}),
    ("gemini-1.5-pro-002", {"frequency_penalty": 1}, {"frequencyPenalty": 1}),
    ("gemini-2.5-flash", {"presence_penalty": 0.5, "frequency_penalty": 0.1}, {}),
    ("gemini-3-pro-preview", {"presence_penalty": 0.5}, {}),
    ("gemini-3.1-flash-lite", {"frequency_penalty": 2}, {}),
    ("gemini-flash-latest", {"frequency_penalty": 0.3}, {}),
    # A 0 is no penalty (both APIs' default), what frameworks send for one they don't set: never
    # sent, whatever the model.
    ("gemini-2.0-flash", {"presence_penalty": 0, "frequency_penalty": 0.0}, {}),
    ("gemini-2.5-pro", {"presence_penalty": 0, "frequency_penalty": 0}, {}),
    # Names that are no Gemini release (tuned models, endpoints, Gemma) keep them: Google's
    # answer says whether the model takes them.
    ("tunedModels/mine", {"presence_penalty": 0.5}, {"presencePenalty": 0.5}),
])
def test_penalties_go_only_to_models_that_take_them(model: str, penalties: dict[str, Any],
                                                      sent: dict[str, Any]) -> None:
    out = translate([{"role": "user", "content": "x"}], model=model, **penalties)
    assert out.get("generationConfig", {}) == sent


def test_n_above_one_is_a_400() -> None:
    with pytest.raises(InvalidRequest) as info:
        translate([{"role": "user", "content": "x"}], n=2)
    assert info.value.param == "n" and info.value.status == 400


def test_dropped_parameters_never_reach_gemini() -> None:
    params = {name: 1 for name in DROPPED}
    out = translate([{"role": "user", "content": "x"}], **params)
    assert set(out) == {"contents"}


@pytest.mark.parametrize(("model", "effort", "thinking"), [
    ("gemini-2.5-flash", "none", {"thinkingBudget": 0}),
    # 2.5 Pro cannot turn thinking off (a budget of 0 is its 400): the least it takes, 128.
    ("gemini-2.5-pro", "none", {"thinkingBudget": 128}),
    ("gemini-2.5-pro-preview-06-05", "none", {"thinkingBudget": 128}),
    ("gemini-2.5-pro", "high", {"thinkingBudget": 24576, "includeThoughts": True}),
    ("gemini-3-pro-preview", "low", {"thinkingLevel": "low", "includeThoughts": True}),
    # Gemini 3 Flash takes minimal; the 3.x Pro models do not ("Thinking level MINIMAL is not
    # supported for this model", their 400) and cannot turn thinking off: the least, low.
    ("gemini-3-flash-preview", "none", {"thinkingLevel": "minimal"}),
    ("gemini-3-flash-preview", "minimal", {"thinkingLevel": "minimal", "includeThoughts": True}),
    ("gemini-3.1-pro-preview", "none", {"thinkingLevel": "low"}),
    ("gemini-3-pro-preview", "minimal", {"thinkingLevel": "low", "includeThoughts": True}),
    ("gemini-pro-latest", "none", {"thinkingLevel": "low"}),
    # OpenAI's xhigh: the most each generation takes (2.5 Flash's budget tops out at 24576).
    ("gemini-2.5-flash", "xhigh", {"thinkingBudget": 24576, "includeThoughts": True}),
    ("gemini-3-pro-preview", "xhigh", {"thinkingLevel": "high", "includeThoughts": True}),
    # OpenAI's max, above xhigh: the top of each as well.
    ("gemini-2.5-flash", "max", {"thinkingBudget": 24576, "includeThoughts": True}),
    ("gemini-3-pro-preview", "max", {"thinkingLevel": "high", "includeThoughts": True}),
    ("gemini-3.1-pro-preview", "max", {"thinkingLevel": "high", "includeThoughts": True}),
])
def test_reasoning_effort(model: str, effort: str, thinking: dict[str, Any]) -> None:
    out = translate([{"role": "user", "content": "x"}], model=model, reasoning_effort=effort)
    assert out["generationConfig"] == {"thinkingConfig": thinking}


@pytest.mark.parametrize(("model", "effort", "thinking"), [
    ("gemini-robotics-er-1.5-preview", "none", {"thinkingBudget": 0}),
    ("gemini-robotics-er-1.5-preview", "medium", {"thinkingBudget": 8192,
                                                  "includeThoughts": True}),
    ("publishers/google/models/gemini-robotics-er-1.5-preview", "low",
     {"thinkingBudget": 1024, "includeThoughts": True}),
    # ER 1.6 (on Gemini 3 Flash) and ER 2 (on 3.5 Flash) take a level, as their base models
    ("gemini-robotics-er-1.6-preview", "high", {"thinkingLevel": "high",
                                                "includeThoughts": True}),
    ("gemini-robotics-er-2-preview", "low", {"thinkingLevel": "low", "includeThoughts": True}),
])
def test_models_built_on_gemini_2_take_a_budget(model: str, effort: str,
                                                 thinking: dict[str, Any]) -> None:
    # Gemini Robotics-ER 1.5 is built on Gemini 2.5 and takes a thinking budget (Google's
    # robotics docs set thinking_budget); a thinkingLevel is a 2.5 model's 400.
    out = translate([{"role": "user", "content": "x"}], model=model, reasoning_effort=effort)
    assert out["generationConfig"] == {"thinkingConfig": thinking}


@pytest.mark.parametrize(("model", "level"), [
    ("gemini-3-pro-preview", "high"), ("publishers/google/models/gemini-3-pro-preview", "high"),
    ("gemini-3-pro-preview-11-2025", "high"),
    # the models that have a medium level keep it
    ("gemini-3.1-pro-preview", "medium"), ("gemini-3-flash-preview", "medium")])
def test_gemini_3_pro_takes_low_or_high(model: str, level: str) -> None:
    # Gemini 3 Pro has two levels, low and high (Google's thinking docs); a medium is its 400
    # ("reasoning_effort medium" fails where low and high work).
    out = translate([{"role": "user", "content": "x"}], model=model, reasoning_effort="medium")
    assert out["generationConfig"]["thinkingConfig"] == {"thinkingLevel": level,
                                                         "includeThoughts": True}


@pytest.mark.parametrize("model", [
    "gemini-3.7-flash", "gemini-3.8-flash", "publishers/google/models/gemini-3.8-flash",
    "gemini-4-hydrogen", "gemini-4-neon", "gemini-4-carbon", "gemini-3.1-pro-preview",
    "gemini-flash-latest"])
@pytest.mark.parametrize("effort", ["none", "minimal"])
def test_models_without_the_minimal_level_get_low(model: str, effort: str) -> None:
    # Gemini 3.7 and 3.8 Flash take low, medium and high; the Gemini 4 models no minimal
    # either: "minimal" (what none and minimal ask for) is their 400, as for the 3.x Pro
    # models. So only the models known to take it get it (an alias may name any of them).
    out = translate([{"role": "user", "content": "x"}], model=model, reasoning_effort=effort)
    assert out["generationConfig"]["thinkingConfig"]["thinkingLevel"] == "low"


@pytest.mark.parametrize("model", [
    "gemini-3-flash-preview", "gemini-3.5-flash", "gemini-3.6-flash", "gemini-3.5-flash-lite",
    "gemini-3.1-flash-lite", "publishers/google/models/gemini-3.6-flash",
    "gemini-flash-lite-latest"])
def test_models_with_the_minimal_level_keep_it(model: str) -> None:
    out = translate([{"role": "user", "content": "x"}], model=model, reasoning_effort="none")
    assert out["generationConfig"]["thinkingConfig"] == {"thinkingLevel": "minimal"}


@pytest.mark.parametrize("effort", ["xhigh", "max"])  # (max: their top level too)
@pytest.mark.parametrize(("model", "level"), [
    ("gemini-4-hydrogen", "xhigh"), ("gemini-4-neon", "xhigh"),
    ("publishers/google/models/gemini-4-neon", "xhigh"),
    # the others top out at high (xhigh is Gemini 4 Carbon's 400)
    ("gemini-4-carbon", "high"), ("gemini-3.8-flash", "high"), ("gemini-3.1-pro-preview", "high")])
def test_xhigh_reaches_the_models_that_take_it(model: str, level: str, effort: str) -> None:
    # Gemini 4 Hydrogen and Neon have an xhigh level of their own, deeper than high.
    out = translate([{"role": "user", "content": "x"}], model=model, reasoning_effort=effort)
    assert out["generationConfig"]["thinkingConfig"] == {"thinkingLevel": level,
                                                         "includeThoughts": True}


@pytest.mark.parametrize("model", ["gemini-2.0-flash", "gemini-2.0-flash-lite-001",
                                   "gemini-1.5-pro-002", "gemma-3-27b-it", "gemma-3n-e4b-it",
                                   "models/gemma-2-9b-it", "gemini-2.5-flash-image",
                                   "publishers/google/models/gemini-2.5-flash-image",
                                   "gemini-2.5-flash-image-preview"])
@pytest.mark.parametrize("effort", ["none", "low", "high"])
def test_reasoning_effort_is_dropped_for_models_that_cannot_think(model: str,
                                                                   effort: str) -> None:
    # They answer any thinkingConfig with a 400 ("Thinking is not enabled for
    # models/gemini-2.0-flash"; the image model Gemini 2.5 Flash Image, Nano Banana, alike);
    # a client's own thinking_config still goes as given.
    out = translate([{"role": "user", "content": "x"}], model=model, reasoning_effort=effort)
    assert "generationConfig" not in out
    out = translate([{"role": "user", "content": "x"}], model=model, reasoning_effort=effort,
                    thinking_config={"thinkingBudget": 0})
    assert out["generationConfig"] == {"thinkingConfig": {"thinkingBudget": 0}}


@pytest.mark.parametrize("model", [
    "gemma-4-31b-it", "gemini-3.1-flash-image-preview", "gemini-3.1-flash-image",
    "gemini-3.1-flash-lite-image", "publishers/google/models/gemini-3.1-flash-image"])
@pytest.mark.parametrize(("effort", "level"), [
    ("none", "minimal"), ("minimal", "minimal"), ("low", "minimal"), ("medium", "high"),
    ("high", "high"), ("xhigh", "high"), ("max", "high")])
def test_two_level_models_take_minimal_or_high(model: str, effort: str, level: str) -> None:
    # Gemma 4 and the Nano Banana 2 image models (Gemini 3.1 Flash Image and Flash-Lite Image)
    # take a thinking level, minimal or high alone (low and medium are their 400).
    out = translate([{"role": "user", "content": "x"}], model=model, reasoning_effort=effort)
    assert out["generationConfig"]["thinkingConfig"]["thinkingLevel"] == level


def test_native_passthrough() -> None:
    out = translate([{"role": "user", "content": "x"}], reasoning_effort="high",
                    thinking_config={"thinkingBudget": 128},
                    safety_settings=[{"category": "HARM_CATEGORY_HATE_SPEECH",
                                      "threshold": "BLOCK_NONE"}],
                    cached_content="cachedContents/abc")
    assert out["generationConfig"] == {"thinkingConfig": {"thinkingBudget": 128}}
    assert out["safetySettings"][0]["threshold"] == "BLOCK_NONE"
    assert out["cachedContent"] == "cachedContents/abc"


# -- provider URLs and config ---------------------------------------------------------------

def provider(kind: str, **extra: Any) -> Any:
    from streamproxy.server.app import build_providers

    return build_providers(make_config({"g": {"type": kind, **extra}}))["g"]


def test_default_urls() -> None:
    gemini = provider("gemini")
    assert gemini.model_url("gemini-2.5-flash") == \
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash"
    assert gemini.model_url("tunedModels/mine") == \
        "https://generativelanguage.googleapis.com/v1beta/tunedModels/mine"
    vertex = provider("vertex", project="proj", location="europe-west4")
    assert vertex.model_url("gemini-2.5-pro") == (
        "https://europe-west4-aiplatform.googleapis.com/v1/projects/proj/locations/"
        "europe-west4/publishers/google/models/gemini-2.5-pro")
    glob = provider("vertex", project="proj", location="global")
    assert glob.model_url("m").startswith(
        "https://aiplatform.googleapis.com/v1/projects/proj/locations/global/")
    # Multi-regions have hosts of their own (google-genai's `_api_client.py` builds
    # `aiplatform.us.rep.googleapis.com`; `eu-aiplatform.googleapis.com` is not a host).
    for region in ("us", "eu"):
        multi = provider("vertex", project="proj", location=region)
        assert multi.model_url("m").startswith(
            f"https://aiplatform.{region}.rep.googleapis.com/v1/projects/proj/locations/{region}/")


def test_a_project_number_written_unquoted_is_the_project() -> None:
    vertex = provider("vertex", project=123456789012, location="us-central1")  # YAML: an int
    assert "/projects/123456789012/locations/us-central1/" in vertex.model_url("m")


def vertex_request(model: str) -> Any:
    from streamproxy.openai_api.request import parse_chat_request
    from streamproxy.routing.target import Target

    vertex = provider("vertex", project="proj", location="us-central1", api_key="ya29.k")
    target = Target(vertex, model).served()
    req = parse_chat_request(orjson.dumps({
        "model": model, "stream": True,
        "messages": [{"role": "user", "content": "x"}]}))
    return target.provider.build_request(req, target)


def test_portkeys_google_dot_names_reach_gemini() -> None:
    # Portkey's Vertex names a model by its publisher, `google.gemini-2.5-pro` as
    # `anthropic.claude-…`; such a name went to Google's publisher as the model
    # `google.gemini-2.5-pro` (Vertex's 404). It is Gemini's id after the prefix.
    sent = vertex_request("google.gemini-2.5-pro")
    assert sent.url == ("https://us-central1-aiplatform.googleapis.com/v1/projects/proj/"
                        "locations/us-central1/publishers/google/models/gemini-2.5-pro"
                        ":streamGenerateContent?alt=sse")


def express_request(model: str, stream: bool = True, **extra: Any) -> Any:
    from streamproxy.openai_api.request import parse_chat_request
    from streamproxy.routing.target import Target

    vertex = provider("vertex", api_key="AIzaSy-express", **extra)
    target = Target(vertex, model, api_key="AIzaSy-express").served()
    req = parse_chat_request(orjson.dumps({
        "model": model, "stream": stream,
        "messages": [{"role": "user", "content": "x"}]}))
    return target.provider.build_request(req, target)


def test_express_mode_an_api_key_without_a_project() -> None:
    # Vertex AI express mode: a Google Cloud API key, sent as x-goog-api-key, on the global
    # host without a project or location. Such a config was refused (project required), and
    # the key given with a project went as a Bearer token (Vertex's 401).
    sent = express_request("gemini-2.5-flash")
    assert sent.url == ("https://aiplatform.googleapis.com/v1/publishers/google/models/"
                        "gemini-2.5-flash:streamGenerateContent?alt=sse")
    assert sent.headers["x-goog-api-key"] == "AIzaSy-express"
    assert "authorization" not in {k.lower() for k in sent.headers}
    sent = express_request("google.gemini-2.5-pro", stream=False, api_version="v1beta1")
    assert sent.url == ("https://aiplatform.googleapis.com/v1beta1/publishers/google/models/"
                        "gemini-2.5-pro:generateContent")


@pytest.mark.parametrize("configured", [True, False])
def test_an_api_key_with_a_project_goes_as_x_goog_api_key(configured: bool) -> None:
    # A Google Cloud API key (`AIza…`, one bound to a service account) with a project went as
    # `Authorization: Bearer`, which Vertex answers with a 401 (a bearer is an OAuth token);
    # Vertex takes it as x-goog-api-key on the project's regional endpoint. Configured or the
    # client's own (the provider has no key), as a provider key is sent either way.
    from streamproxy.openai_api.request import parse_chat_request
    from streamproxy.routing.target import Target

    key = "AIzaSyA-project-bound-key_0123456789abc"
    vertex = provider("vertex", project="proj", location="us-central1",
                      **({"api_key": key} if configured else {}))
    req = parse_chat_request(orjson.dumps({"model": "gemini-2.5-flash", "stream": True,
                                           "messages": [{"role": "user", "content": "x"}]}))
    sent = vertex.build_request(req, Target(vertex, "gemini-2.5-flash", api_key=key))
    assert sent.url == ("https://us-central1-aiplatform.googleapis.com/v1/projects/proj/"
                        "locations/us-central1/publishers/google/models/gemini-2.5-flash"
                        ":streamGenerateContent?alt=sse")
    assert sent.headers["x-goog-api-key"] == key
    assert "authorization" not in {k.lower() for k in sent.headers}
    # An OAuth access token still goes as the bearer.
    sent = vertex.build_request(req, Target(vertex, "gemini-2.5-flash", api_key="ya29.tok"))
    assert sent.headers["authorization"] == "Bearer ya29.tok"
    assert "x-goog-api-key" not in sent.headers


def test_express_mode_refuses_what_needs_a_project() -> None:
    # Claude's rawPredict takes no API key; a full resource name names a project.
    for model in ("claude-sonnet-4-5", "projects/p/locations/us-central1/endpoints/1"):
        with pytest.raises(InvalidRequest) as caught:
            express_request(model)
        assert "express mode" in caught.value.message


def test_a_tuned_endpoints_full_resource_name_is_its_path() -> None:
    # The console and google-genai name a tuned model's endpoint
    # `projects/<p>/locations/<l>/endpoints/<id>`; it was put after the provider's own project
    # and location (`…/locations/us-central1/projects/proj/locations/…`: Vertex's 404).
    sent = vertex_request("projects/proj/locations/us-central1/endpoints/1234567890")
    assert sent.url == ("https://us-central1-aiplatform.googleapis.com/v1/projects/proj/"
                        "locations/us-central1/endpoints/1234567890"
                        ":streamGenerateContent?alt=sse")
    # Another project's or location's is refused, never sent with the gateway's credentials.
    for other in ("projects/other/locations/us-central1/endpoints/1",
                  "projects/proj/locations/europe-west4/endpoints/1"):
        with pytest.raises(InvalidRequest) as caught:
            vertex_request(other)
        assert (caught.value.param, caught.value.code) == ("model", "invalid_value")
        assert "endpoints/<id>" in str(caught.value)


@pytest.mark.parametrize("model", ["meta.llama-3.3-70b-instruct-maas",
                                   "mistralai.mistral-small-2503", "endpoints.1234567890"])
def test_portkeys_partner_and_endpoint_names_are_a_clear_400(model: str) -> None:
    # Portkey sends these to APIs a vertex provider does not speak (Vertex's OpenAI-compatible
    # chat/completions, Mistral's rawPredict). They went to Google's publisher as Gemini models
    # named `meta.llama-…`: Vertex's 404 "Publisher Model … not found" — or, in a fallback,
    # one wasted call — for a model that is there.
    with pytest.raises(InvalidRequest) as caught:
        vertex_request(model)
    assert (caught.value.status, caught.value.param, caught.value.code) == \
        (400, "model", "unsupported_value")
    assert f"'{model}'" in str(caught.value)
    assert "Gemini and Claude" in str(caught.value)


@pytest.mark.parametrize("model", ["../files", "models/../x", "a b", "m:generateContent?x=1",
                                   "/abs"])
def test_model_names_cannot_leave_the_model_path(model: str) -> None:
    from streamproxy.openai_api.request import parse_chat_request
    from streamproxy.routing.target import Target

    gemini = provider("gemini")
    req = parse_chat_request(b'{"messages":[{"role":"user","content":"x"}]}')
    with pytest.raises(InvalidRequest):
        gemini.build_request(req, Target(gemini, model))


@pytest.mark.parametrize(("extra", "key"), [
    ({"location": "us-central1"}, "project"),
    ({}, "project"),  # no project and no API key (express mode)
    ({"location": "us-central1", "api_key": "AIza"}, "project"),
    ({"api_key": "AIza", "token_env": "A"}, "project"),
    ({"project": "p"}, "location"),
    ({"project": "p/../x", "location": "l"}, "project"),
    ({"project": "p", "location": "us-central1.evil"}, "location"),  # (a host name's part)
    ({"project": "p", "location": "us_central1"}, "location"),
    ({"project": "p", "location": "l", "token_env": "A", "token_command": "x"}, "token_env"),
    ({"project": "p", "location": "l", "token_command": []}, "token_command"),
    ({"project": "p", "location": "l", "token_env": "${VERTEX_TOKEN}"}, "token_env"),
    ({"project": "p", "location": "l", "token_env": "os.environ/VERTEX_TOKEN"}, "token_env"),
    ({"project": "p", "location": "l", "token_env": "ya29.a0-the-token-itself"}, "token_env"),
    ({"project": "p", "location": "l", "token_env": ""}, "token_env"),
    ({"project": "p", "location": "l", "token_refresh": 0}, "token_refresh"),
    ({"project": "p", "location": "l", "token_refresh": float("nan")}, "token_refresh"),
    ({"project": "p", "location": "l", "colour": "red"}, "colour"),
])
def test_vertex_config_errors(extra: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_config({"v": {"type": "vertex", **extra}})
    assert info.value.key == f"providers.v.{key}"


def test_gemini_rejects_vertex_options() -> None:
    with pytest.raises(ConfigError):
        make_config({"g": {"type": "gemini", "project": "p"}})


# -- the token command helper ---------------------------------------------------------------

def printer(tmp_path: Any) -> list[str]:
    counter = tmp_path / "n"
    script = ("import pathlib, sys; p = pathlib.Path(sys.argv[1]); "
              "n = int(p.read_text()) + 1 if p.exists() else 1; p.write_text(str(n)); "
              "print(f'tok-{n}')")
    return [sys.executable, "-c", script, str(counter)]


async def test_concurrent_first_requests_share_one_run(tmp_path: Any) -> None:
    source = CommandToken(printer(tmp_path), 3600, provider="v")
    tokens = await asyncio.gather(*(source.get() for _ in range(5)))
    assert tokens == ["tok-1"] * 5 and source.runs == 1
    assert await source.get() == "tok-1" and source.runs == 1


async def test_a_stale_token_is_served_while_one_refresh_runs(tmp_path: Any) -> None:
    source = CommandToken(printer(tmp_path), 3600, provider="v")
    assert await source.get() == "tok-1"
    source._stale_at = 0.0  # as if the refresh interval had passed
    assert await source.get() == "tok-1"  # no wait: the old token, a refresh in background
    running = source._running
    assert running is not None
    assert await source.get() == "tok-1" and source._running is running  # one refresh only
    assert await running == "tok-2" and source.runs == 2
    assert await source.get() == "tok-2"


async def test_a_failing_command_backs_off(tmp_path: Any) -> None:
    source = CommandToken([sys.executable, "-c", "import sys; sys.exit(1)"], 60, provider="v")
    with pytest.raises(TokenUnavailable, match="exited with status 1"):
        await source.get()
    with pytest.raises(TokenUnavailable, match="exited with status 1"):
        await source.get()
    assert source.runs == 1  # the second request did not run it again right away


class Raising(TokenSource):
    """A fetch that fails with whatever it is given (google-auth's, requests', the thread's)."""

    def __init__(self, error: BaseException, **kw: Any) -> None:
        super().__init__(60, provider="v", **kw)
        self.error = error
        self.fetches = 0

    def _fetch(self) -> Fetched:
        self.fetches += 1
        raise self.error


@pytest.mark.parametrize("error", [RuntimeError("can't start new thread"),
                                   ValueError("embedded null byte"),
                                   TimeoutError("timed out reading ya29.secret")])
async def test_any_failed_fetch_is_a_502_that_backs_off(error: Exception) -> None:
    # Was: the exception itself (a 500 internal_error), and no back-off: every request
    # started a fetch of its own.
    source = Raising(error)
    for _ in range(3):
        with pytest.raises(TokenUnavailable) as info:
            await source.get()
        assert info.value.status == 502
        assert info.value.message == f"provider 'v': the token fetch failed " \
                                     f"({type(error).__name__})"
    assert source.fetches == 1 and source.runs == 1


async def test_a_fetch_that_raises_timeouterror_under_a_deadline_is_not_called_slow() -> None:
    source = Raising(TimeoutError(), deadline=30.0)
    with pytest.raises(TokenUnavailable, match=r"failed \(TimeoutError\)"):
        await source.get()


@pytest.mark.parametrize("printed", ["tok en", "tok\x00en", "t\u00f6ken", ""])
async def test_a_command_that_prints_no_sendable_token_is_a_502(printed: str) -> None:
    source = CommandToken([sys.executable, "-c", f"print({printed!r})"], 60, provider="v")
    with pytest.raises(TokenUnavailable, match="did not print a single token"):
        await source.get()
    assert source.cached is None


async def test_missing_command_and_timeout(tmp_path: Any) -> None:
    missing = CommandToken([str(tmp_path / "no-such-command")], 60, provider="v")
    with pytest.raises(TokenUnavailable, match="could not run"):
        await missing.get()
    slow = CommandToken([sys.executable, "-c", "import time; time.sleep(30)"], 60,
                        provider="v", timeout=0.5)
    with pytest.raises(TokenUnavailable, match="took more than"):
        await slow.get()


def test_image_jpg_is_sent_as_image_jpeg() -> None:
    # Gemini: "Unsupported MIME type: image/jpg" (a 400); clients often write it.
    out = translate([{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/jpg;base64,/9j/"}}]}])
    assert out["contents"][0]["parts"] == [{"inlineData": {"mimeType": "image/jpeg",
                                                           "data": "/9j/"}}]


def test_a_file_id_that_is_no_url_is_a_400_naming_it() -> None:
    # (a Files API or gs:// URI in file_id is sent as fileData; OpenAI's ids are not URLs)
    with pytest.raises(InvalidRequest) as info:
        translate([{"role": "user", "content": [
            {"type": "file", "file": {"file_id": "file-abc123"}}]}])
    assert info.value.param == "messages[0].content[0].file.file_id"


@pytest.mark.parametrize(("stop", "sent"), [
    ([""], None), ("", None), (["END", ""], ["END"]), ("\n", ["\n"]), ([], None)])
def test_empty_stop_sequences_are_left_out(stop: Any, sent: Any) -> None:
    # OpenAI takes `stop: [""]`; an empty sequence cuts nothing, and Vertex refuses an empty
    # stopSequences list ("supported range is from 1 (inclusive) to 17 (exclusive)").
    config = translate([{"role": "user", "content": "x"}], stop=stop).get("generationConfig", {})
    assert config.get("stopSequences") == sent


# Google: responseJsonSchema / parametersJsonSchema read `$defs` and `$ref`, and "if $ref is set
# on a sub-schema, no other properties, except for those starting as a $, may be set".
PERSON = {  # pydantic 2's model_json_schema() of a model with a described and a recursive field
    "$defs": {"Address": {"properties": {"city": {"type": "string"}}, "type": "object"},
              "Node": {"properties": {"children": {"items": {"$ref": "#/$defs/Node"},
                                                   "type": "array"}}, "type": "object"}},
    "properties": {"home": {"$ref": "#/$defs/Address", "description": "Where they live"},
                   "tree": {"$ref": "#/$defs/Node"}},
    "required": ["home"], "type": "object"}
PERSON_FOR_GEMINI = {
    **PERSON,
    "properties": {"home": {"description": "Where they live",
                            "anyOf": [{"$ref": "#/$defs/Address"}]},
                   "tree": {"$ref": "#/$defs/Node"}}}
# pydantic 1 and zod-to-json-schema: Draft 7's `definitions`, and older pydantic 2's allOf.
DRAFT_7 = {"definitions": {"Address": {"type": "object"}}, "type": "object",
           "properties": {"home": {"allOf": [{"$ref": "#/definitions/Address"}],
                                   "description": "d"},
                          "definitions": {"$ref": "#/definitions/Address"},
                          "other": {"$ref": "#/properties/definitions"}}}
DRAFT_7_FOR_GEMINI = {"$defs": {"Address": {"type": "object"}}, "type": "object",
                      "properties": {"home": {"anyOf": [{"$ref": "#/$defs/Address"}],
                                              "description": "d"},
                                     "definitions": {"$ref": "#/$defs/Address"},
                                     "other": {"$ref": "#/properties/definitions"}}}


@pytest.mark.parametrize(("schema", "sent"), [(PERSON, PERSON_FOR_GEMINI),
                                              (DRAFT_7, DRAFT_7_FOR_GEMINI)])
def test_schemas_reach_gemini_in_the_form_it_reads(schema: dict[str, Any],
                                                   sent: dict[str, Any]) -> None:
    given = copy.deepcopy(schema)
    out = translate([{"role": "user", "content": "x"}],
                    response_format={"type": "json_schema",
                                     "json_schema": {"name": "p", "schema": schema}},
                    tools=[{"type": "function", "function": {"name": "f", "parameters": schema}}])
    assert out["generationConfig"]["responseJsonSchema"] == sent
    assert out["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"] == sent
    assert schema == given  # the client's body is left as it came (a fallback may read it)


@pytest.mark.parametrize("defs", [5, [], "x", None])
@pytest.mark.parametrize("first", ["$defs", "definitions"])
def test_definitions_beside_a_defs_that_is_no_object_stay_where_they_are(defs: Any,
                                                                       first: str) -> None:
    """`definitions` merge into `$defs` only when that is an object: beside another value it
    stays as written (Gemini's 400 then says what is wrong), where the merge unpacked the
    value, a TypeError (500)."""
    pair = {"$defs": defs, "definitions": {"A": {"type": "object"}}}
    schema = {key: pair[key] for key in (first, *(set(pair) - {first}))}
    out = translate([{"role": "user", "content": "x"}], response_format={
        "type": "json_schema", "json_schema": {"name": "p", "schema": schema}})
    assert out["generationConfig"]["responseJsonSchema"] == schema


# pydantic 2's schema of a discriminated union (Literal tags; pydantic < 2.9 writes them with no
# type) and zod's z.literal: `const`, which Gemini's schema fields do not read (ignored: any tag
# would do). A one-member enum says the same in the words Gemini reads.
PET = {"$defs": {"Cat": {"properties": {"kind": {"const": "cat", "type": "string"},
                                        "lives": {"const": 9, "type": "integer"}},
                         "type": "object"},
                 "Dog": {"properties": {"kind": {"const": "dog"}, "weight": {"const": 1.5}}}},
       "properties": {"pet": {"anyOf": [{"$ref": "#/$defs/Cat"}, {"$ref": "#/$defs/Dog"}]},
                      "const": {"type": "string"}}}  # a property named const stays one
PET_FOR_GEMINI = {
    "$defs": {"Cat": {"properties": {"kind": {"enum": ["cat"], "type": "string"},
                                     "lives": {"enum": [9], "type": "integer"}},
                      "type": "object"},
              "Dog": {"properties": {"kind": {"enum": ["dog"], "type": "string"},
                                     "weight": {"enum": [1.5], "type": "number"}}}},
    "properties": {"pet": {"anyOf": [{"$ref": "#/$defs/Cat"}, {"$ref": "#/$defs/Dog"}]},
                   "const": {"type": "string"}}}


def test_const_reaches_gemini_as_a_one_member_enum() -> None:
    given = copy.deepcopy(PET)
    out = translate([{"role": "user", "content": "x"}],
                    response_format={"type": "json_schema",
                                     "json_schema": {"name": "p", "schema": PET}},
                    tools=[{"type": "function", "function": {"name": "f", "parameters": PET}}])
    assert out["generationConfig"]["responseJsonSchema"] == PET_FOR_GEMINI
    assert out["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"] == PET_FOR_GEMINI
    assert given == PET  # the client's body is left as it came


@pytest.mark.parametrize("schema", [
    {"const": True}, {"const": None}, {"const": {"a": 1}}, {"const": [1]},
    {"const": "a", "enum": ["a", "b"]},  # an enum beside it is left as written
    {"const": "a", "type": "integer"},  # (a contradiction: Gemini's to judge)
])
def test_other_consts_stay_as_written(schema: dict[str, Any]) -> None:
    out = translate([{"role": "user", "content": "x"}], response_format={
        "type": "json_schema", "json_schema": {"name": "p", "schema": schema}})
    assert out["generationConfig"]["responseJsonSchema"] == schema


FILES_URI = "https://generativelanguage.googleapis.com/v1beta/files/abc-123"


@pytest.mark.parametrize("file", [
    {"file_id": FILES_URI},  # a Files API upload, as its `uri`
    {"file_data": "https://www.youtube.com/watch?v=9hE5-98ZeCg"},  # Gemini's video docs
])
def test_a_file_uri_of_unknown_type_goes_without_mime_on_gemini(file: dict[str, Any]) -> None:
    # The Gemini API takes fileData without mimeType (it knows an upload's type, and reads
    # YouTube URLs so); Vertex requires one, so there it stays a 400 naming the part.
    messages = [{"role": "user", "content": [{"type": "file", "file": file}]}]
    out = translate(messages)
    assert out["contents"][0]["parts"] == [{"fileData": {"fileUri": next(iter(file.values()))}}]
    field = next(iter(file))
    with pytest.raises(InvalidRequest) as info:
        to_gemini({"messages": messages}, "gemini-2.5-flash", mime_required=True)
    assert info.value.param == f"messages[0].content[0].file.{field}"


def test_vertex_requires_a_file_mime_type_and_gemini_does_not() -> None:
    import orjson

    from streamproxy.openai_api.request import parse_chat_request
    from streamproxy.routing.target import Target

    req = parse_chat_request(orjson.dumps({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "file", "file": {"file_id": FILES_URI}}]}]}))
    gemini = provider("gemini")
    sent = orjson.loads(gemini.build_request(req, Target(gemini, "m", api_key="k")).body)
    assert sent["contents"][0]["parts"] == [{"fileData": {"fileUri": FILES_URI}}]
    vertex = provider("vertex", project="p", location="us-central1")
    with pytest.raises(InvalidRequest, match="MIME type"):
        vertex.build_request(req, Target(vertex, "m", api_key="k"))


PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAA"  # a PNG's first 18 bytes


@pytest.mark.parametrize(("kind", "part"), [
    ("image_url", {"type": "image_url", "image_url": {"url": "data:image/bmp;base64,Qk02AAAA"}}),
    ("image_url", {"type": "image_url", "image_url": {"url": "data:image/gif;base64,R0lGODlh"}}),
    ("file", {"type": "file", "file": {"file_data": "data:image/tiff;base64,SUkqAA=="}}),
])
def test_an_image_type_gemini_does_not_take_is_a_400_naming_the_part(
        kind: str, part: dict[str, Any]) -> None:
    # Gemini takes png, jpeg, webp, heic and heif images ("Unsupported MIME type" otherwise)
    with pytest.raises(InvalidRequest) as info:
        translate([{"role": "user", "content": [{"type": "text", "text": "x"}, part]}])
    field = "image_url.url" if kind == "image_url" else "file.file_data"
    assert info.value.param == f"messages[0].content[1].{field}"


@pytest.mark.parametrize("url", [
    f"data:application/octet-stream;base64,{PNG_B64}",  # a generic label Gemini refuses
    f"data:image/bmp;base64,{PNG_B64}",  # a wrong label: the bytes say PNG
    f"data:IMAGE/PNG;charset=utf-8;base64,{PNG_B64}",
])
def test_an_image_goes_as_the_type_its_bytes_are(url: str) -> None:
    out = translate([{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}]}])
    assert out["contents"][0]["parts"] == [{"inlineData": {"mimeType": "image/png",
                                                           "data": PNG_B64}}]


def test_a_pdf_or_video_in_image_url_still_goes() -> None:
    # LiteLLM's convention for Gemini: any inline media in image_url, which Gemini reads.
    out = translate([{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:application/pdf;base64,JVBERi0x"}},
        {"type": "image_url", "image_url": {"url": "data:video/mp4;base64,AAAAGGZ0eXA="}},
        {"type": "image_url", "image_url": {"url": "data:image/heic;base64,AAAAGGZ0eXA="}}]}])
    assert [p["inlineData"]["mimeType"] for p in out["contents"][0]["parts"]] == [
        "application/pdf", "video/mp4", "image/heic"]


def test_openrouters_gemini_signatures_in_reasoning_details_go_back() -> None:
    # OpenRouter answers a Gemini's thought signature as a `reasoning_details` entry of format
    # `google-gemini-v1` named by its call's id, and says to send the entries back: a loop
    # begun there that fell back to Gemini lost it (Gemini 3 went on unchecked, without the
    # reasoning it signed). Another model's entries are not Gemini's signatures.
    assistant = tool_turn("tool_0_get_weather_Xy1")
    assistant["reasoning_details"] = [
        {"type": "reasoning.text", "text": "Weather.", "format": "google-gemini-v1", "index": 0},
        {"type": "reasoning.encrypted", "data": "claude", "id": "tool_0_get_weather_Xy1",
         "format": "anthropic-claude-v1", "index": 1},
        {"type": "reasoning.encrypted", "data": SIG, "id": "tool_0_get_weather_Xy1",
         "format": "google-gemini-v1", "index": 2}]
    out = translate([{"role": "user", "content": "Weather?"}, assistant,
                     {"role": "tool", "tool_call_id": "tool_0_get_weather_Xy1",
                      "content": "sunny"}], model="gemini-3-flash-preview")
    assert out["contents"][1]["parts"] == [{
        "functionCall": {"name": "get_weather", "args": {"city": "Paris"},
                         "id": "tool_0_get_weather_Xy1"},
        "thoughtSignature": SIG}]


@pytest.mark.parametrize("name", ["cat.gif", "cat.bmp", "logo.svg", "scan.TIFF"])
def test_an_image_url_of_a_type_gemini_refuses_is_a_400_naming_it(name: str) -> None:
    """An http(s) image whose extension names a type Gemini refuses (gif, bmp, svg, tiff) went
    as fileData of that type, which Gemini answers with its 400 "Unsupported MIME type", where
    the same image as a data: URL is the proxy's 400 naming the part."""
    with pytest.raises(InvalidRequest) as info:
        to_gemini({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": f"https://example.com/{name}?v=1"}}]}]},
                  "gemini-2.5-flash")
    assert info.value.param == "messages[0].content[1].image_url.url"
    assert "png, jpeg, webp" in str(info.value)


def test_an_openai_file_id_is_named_as_one_gemini_cannot_read() -> None:
    # as Anthropic's and Bedrock's 400 say it; the generic "Expected a data: URL" did not
    with pytest.raises(InvalidRequest) as info:
        to_gemini({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "file", "file": {"file_id": "file-abc123"}}]}]}, "gemini-2.5-flash")
    assert "cannot read OpenAI file ids" in str(info.value)
    assert info.value.param == "messages[0].content[0].file.file_id"


@pytest.mark.parametrize("fmt", ["m4a", "pcm16", "audio/wav", "", "webm"])
def test_an_input_audio_format_gemini_cannot_read_is_a_400_naming_it(fmt: str) -> None:
    """`input_audio.format` went as `audio/<format>` whatever it was (`audio/m4a`,
    `audio/audio/wav`), and the client got Gemini's 400, which names no field; OpenAI's names
    `format`. Gemini's formats are OpenAI's wav and mp3, and aiff, aac, ogg and flac."""
    with pytest.raises(InvalidRequest) as info:
        to_gemini({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": fmt}}]}]},
                  "gemini-2.5-flash")
    assert info.value.param == "messages[0].content[0].input_audio.format"
    assert "'wav'" in str(info.value)


@pytest.mark.parametrize(("fmt", "mime"), [("wav", "audio/wav"), ("MP3", "audio/mp3"),
                                           ("flac", "audio/flac"), ("ogg", "audio/ogg")])
def test_an_input_audio_format_gemini_reads_goes_as_its_type(fmt: str, mime: str) -> None:
    out = to_gemini({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": fmt}}]}]},
                    "gemini-2.5-flash")
    assert out["contents"][0]["parts"] == [{"inlineData": {"mimeType": mime, "data": "UklGRg=="}}]


def test_input_audio_base64_is_checked_as_a_data_url_s() -> None:
    """`input_audio.data` went to Gemini as sent: MIME-wrapped base64 (line breaks) reached
    its strict base64 field, and base64 that is not got Gemini's 400 naming no part."""
    wrapped = "UklG\nRg=="
    out = to_gemini({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": wrapped, "format": "wav"}}]}]},
                    "gemini-2.5-flash")
    assert out["contents"][0]["parts"][0]["inlineData"]["data"] == "UklGRg=="
    with pytest.raises(InvalidRequest) as info:
        to_gemini({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "%%%", "format": "wav"}}]}]},
                  "gemini-2.5-flash")
    assert info.value.param == "messages[0].content[0].input_audio.data"


# Google: Gemini's schema `enum` holds "strings and numbers"; a null among them (pydantic's
# Literal["a", None], zod's z.union of z.literal(null), schemars' Option of an enum) goes as
# the null branch of an anyOf beside the enum of the others: the same values, in Gemini's words.
class _Tagged(BaseModel):
    tag: Literal["a", "b", None]
    count: Literal[1, 2, None] = None


def test_a_null_in_an_enum_reaches_gemini_as_a_null_branch() -> None:
    tool = openai.pydantic_function_tool(_Tagged)  # the SDK's strict schema, as parse() sends
    schema = tool["function"]["parameters"]
    given = copy.deepcopy(schema)
    out = translate([{"role": "user", "content": "x"}],
                    response_format={"type": "json_schema",
                                     "json_schema": {"name": "p", "schema": schema}},
                    tools=[tool])
    sent = out["generationConfig"]["responseJsonSchema"]["properties"]
    assert sent["tag"] == {"title": "Tag", "anyOf": [{"enum": ["a", "b"], "type": "string"},
                                                      {"type": "null"}]}
    assert sent["count"] == {"title": "Count", "anyOf": [{"enum": [1, 2], "type": "integer"},
                                                          {"type": "null"}]}
    tool = out["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"]["properties"]
    assert tool == sent
    assert schema == given  # the client's body is left as it came


@pytest.mark.parametrize(("schema", "sent"), [
    # zod-to-json-schema's union of literals: the type list's "null" goes with the null branch
    ({"type": ["string", "null"], "enum": ["a", None], "description": "d"},
     {"description": "d", "anyOf": [{"enum": ["a"], "type": "string"}, {"type": "null"}]}),
    ({"type": ["string", "integer", "null"], "enum": ["a", 1, None]},
     {"anyOf": [{"enum": ["a", 1], "type": ["string", "integer"]}, {"type": "null"}]}),
    ({"enum": [1.5, 2, None]}, {"anyOf": [{"enum": [1.5, 2], "type": "number"},
                                          {"type": "null"}]}),
    ({"enum": ["a", 1, None]}, {"anyOf": [{"enum": ["a", 1]}, {"type": "null"}]}),
    ({"enum": [None]}, {"type": "null"}),
])
def test_null_leaves_an_enum_for_a_branch_of_its_own(schema: dict[str, Any],
                                                      sent: dict[str, Any]) -> None:
    out = translate([{"role": "user", "content": "x"}], response_format={
        "type": "json_schema", "json_schema": {"name": "p", "schema": schema}})
    assert out["generationConfig"]["responseJsonSchema"] == sent


@pytest.mark.parametrize("schema", [
    {"enum": ["a", None], "anyOf": [{"type": "string"}, {"type": "null"}]},  # an anyOf already
    {"enum": ["a", "b"], "type": "string"},  # no null: as written
    {"enum": ["a", None], "type": "string"},  # (a contradiction: Gemini's to judge)
])
def test_other_enums_stay_as_written(schema: dict[str, Any]) -> None:
    out = translate([{"role": "user", "content": "x"}], response_format={
        "type": "json_schema", "json_schema": {"name": "p", "schema": schema}})
    assert out["generationConfig"]["responseJsonSchema"] == schema


class _Invoice(BaseModel):
    total: float


class _Described(BaseModel):
    """An invoice."""
    total: float


@pytest.mark.parametrize(("model", "description"), [
    (_Invoice, "The invoice's total, in euros"),
    (_Described, "The invoice's total, in euros\n\nAn invoice."),  # the schema's own kept too
])
def test_the_json_schema_description_reaches_gemini(model: type[BaseModel],
                                                    description: str) -> None:
    # OpenAI: json_schema.description is "used by the model to determine how to respond in the
    # format"; Gemini has no field of its own for it, and reads the schema's description.
    schema = openai.pydantic_function_tool(model)["function"]["parameters"]
    given = copy.deepcopy(schema)
    out = translate([{"role": "user", "content": "x"}], response_format={
        "type": "json_schema", "json_schema": {
            "name": "invoice", "description": "The invoice's total, in euros", "schema": schema}})
    sent = out["generationConfig"]["responseJsonSchema"]
    assert sent == {**schema, "description": description}
    assert schema == given  # the client's body is left as it came


def test_the_json_schema_description_beside_a_root_ref_keeps_the_ref_alone() -> None:
    # zod-to-json-schema with a name (and pydantic 2's recursive model) write the root as a
    # `$ref` into its definitions; Gemini refuses a `$ref` with a non-$ keyword beside it, so
    # the format's description, put beside the root `$ref`, made a valid request a 400.
    schema = {"$schema": "http://json-schema.org/draft-07/schema#",
              "$ref": "#/definitions/Answer",
              "definitions": {"Answer": {"type": "object", "properties": {
                  "a": {"type": "string"}}, "required": ["a"]}}}
    given = copy.deepcopy(schema)
    out = translate([{"role": "user", "content": "x"}], response_format={
        "type": "json_schema", "json_schema": {
            "name": "answer", "description": "The answer", "schema": schema}})
    assert out["generationConfig"]["responseJsonSchema"] == {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$defs": {"Answer": given["definitions"]["Answer"]},
        "description": "The answer", "anyOf": [{"$ref": "#/$defs/Answer"}]}
    assert schema == given


# Draft 7's tuple (pydantic 1's Tuple[int, str], zod-to-json-schema's z.tuple): `items` a list,
# `additionalItems` the rest. Gemini reads 2020-12's words for it: `prefixItems`, and `items`
# for the rest.
@pytest.mark.parametrize(("schema", "sent"), [
    ({"type": "array", "items": [{"type": "integer"}, {"const": "a"}], "minItems": 2,
      "maxItems": 2},
     {"type": "array", "prefixItems": [{"type": "integer"}, {"enum": ["a"], "type": "string"}],
      "minItems": 2, "maxItems": 2}),
    ({"type": "array", "items": [{"type": "integer"}], "additionalItems": {"type": "string"}},
     {"type": "array", "prefixItems": [{"type": "integer"}], "items": {"type": "string"}}),
    ({"type": "array", "items": [{"type": "integer"}], "additionalItems": False},
     {"type": "array", "prefixItems": [{"type": "integer"}], "maxItems": 1}),
    ({"type": "array", "items": [{"type": "integer"}], "additionalItems": True},
     {"type": "array", "prefixItems": [{"type": "integer"}]}),
])
def test_a_draft_7_tuple_reaches_gemini_as_prefix_items(schema: dict[str, Any],
                                                        sent: dict[str, Any]) -> None:
    given = copy.deepcopy(schema)
    wrapped = {"type": "object", "properties": {"pair": schema}}
    out = translate([{"role": "user", "content": "x"}],
                    response_format={"type": "json_schema",
                                     "json_schema": {"name": "p", "schema": wrapped}},
                    tools=[{"type": "function", "function": {"name": "f", "parameters": wrapped}}])
    assert out["generationConfig"]["responseJsonSchema"]["properties"]["pair"] == sent
    tool = out["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"]
    assert tool["properties"]["pair"] == sent
    assert schema == given


@pytest.mark.parametrize("schema", [
    {"type": "array", "items": {"type": "string"}, "additionalItems": False},  # (ignored there)
    {"type": "array", "prefixItems": [{"type": "string"}], "items": [{"type": "string"}]},
    {"type": "object", "properties": {"items": {"type": "string"}}},  # a property named items
])
def test_other_items_stay_as_written(schema: dict[str, Any]) -> None:
    out = translate([{"role": "user", "content": "x"}], response_format={
        "type": "json_schema", "json_schema": {"name": "p", "schema": schema}})
    assert out["generationConfig"]["responseJsonSchema"] == schema


# A discriminator's mapping maps tags to references: data, not a schema. Walked as one, a tag
# named like a keyword was rewritten (`const` became an enum, `$ref` beside others an anyOf).
def test_a_discriminator_mapping_is_left_as_written() -> None:
    mapping = {"const": "#/$defs/C", "$ref": "#/$defs/R", "plain": "#/$defs/P"}
    schema = {"oneOf": [{"$ref": "#/$defs/C"}, {"$ref": "#/$defs/R"}, {"$ref": "#/$defs/P"}],
              "discriminator": {"propertyName": "kind", "mapping": mapping},
              "$defs": {name: {"type": "object"} for name in ("C", "R", "P")}}
    out = translate([{"role": "user", "content": "x"}], response_format={
        "type": "json_schema", "json_schema": {"name": "p", "schema": schema}})
    assert out["generationConfig"]["responseJsonSchema"]["discriminator"] == {
        "propertyName": "kind", "mapping": mapping}


# Google: cyclic references "may only be used within non-required properties. (Nullable
# properties are not sufficient.)" OpenAI's strict schema (what parse() and pydantic_function_tool
# send) lists every property as required, an Optional one as required-and-nullable: a recursive
# model was a 400 on Gemini. Left out of `required`, such a property may be omitted, which the
# client's model reads as its default (None).
class _Node(BaseModel):
    name: str
    child: _Node | None = None  # nullable, on the cycle: may be left out
    children: list[_Node]  # on the cycle too, but not nullable: stays required
    partner: _Partner | None = None  # a cycle through another model


class _Partner(BaseModel):
    node: _Node | None = None
    note: str | None = None  # nullable, on no cycle: stays required


class _Tree(BaseModel):
    root: _Node
    parent: _Node | None = None  # into the cycle, not on it: stays required


def test_a_nullable_property_on_a_cycle_is_sent_as_not_required() -> None:
    schema = openai.lib._pydantic.to_strict_json_schema(_Tree)
    given = copy.deepcopy(schema)
    out = translate([{"role": "user", "content": "x"}],
                    response_format={"type": "json_schema",
                                     "json_schema": {"name": "t", "schema": schema}},
                    tools=[openai.pydantic_function_tool(_Tree, name="f")])
    sent = out["generationConfig"]["responseJsonSchema"]
    assert sent["$defs"]["_Node"]["required"] == ["name", "children"]
    assert sent["$defs"]["_Partner"]["required"] == ["note"]
    assert sent["required"] == ["root", "parent"]
    assert out["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"] == sent
    assert schema == given  # the client's body is left as it came
    # what Gemini may now write fits the client's model
    assert _Tree.model_validate_json(
        '{"root": {"name": "a", "children": [{"name": "b", "children": []}],'
        ' "partner": {"note": null}}, "parent": null}').root.children[0].child is None


def test_a_schema_without_a_cycle_keeps_its_required_properties() -> None:
    schema = {"type": "object", "required": ["a", "b"],
              "properties": {"a": {"anyOf": [{"$ref": "#/$defs/A"}, {"type": "null"}]},
                             "b": {"type": ["string", "null"]}},
              "$defs": {"A": {"type": "object", "required": ["x"],
                              "properties": {"x": {"type": ["integer", "null"]}}}}}
    out = translate([{"role": "user", "content": "x"}], response_format={
        "type": "json_schema", "json_schema": {"name": "p", "schema": schema}})
    assert out["generationConfig"]["responseJsonSchema"] == schema


# Google lists what responseJsonSchema / parametersJsonSchema read: of the value constraints,
# minimum, maximum, minItems, maxItems, and format (date-time, date, time for strings). Others
# (pydantic's Field(min_length=…, pattern=…, gt=…, multiple_of=…), set's uniqueItems) are not
# read: they go into the description, which the model reads, as on Claude.
class _Sized(BaseModel):
    code: str = Field(min_length=2, max_length=8, pattern="^[A-Z]+$", description="A code.")
    count: int = Field(gt=0, multiple_of=5, le=100)
    tags: set[str] = Field(min_length=1)
    when: datetime.date
    mail: str = Field(json_schema_extra={"format": "email"})


def test_constraints_gemini_does_not_read_go_into_the_description() -> None:
    schema = _Sized.model_json_schema()
    given = copy.deepcopy(schema)
    out = translate([{"role": "user", "content": "x"}],
                    response_format={"type": "json_schema",
                                     "json_schema": {"name": "s", "schema": schema}},
                    tools=[{"type": "function", "function": {"name": "f", "parameters": schema}}])
    sent = out["generationConfig"]["responseJsonSchema"]["properties"]
    assert sent["code"] == {"title": "Code", "type": "string", "description":
                            'A code.\nConstraints: maxLength 8, minLength 2, pattern "^[A-Z]+$".'}
    assert sent["count"] == {"title": "Count", "type": "integer", "maximum": 100,
                             "description": "Constraints: exclusiveMinimum 0, multipleOf 5."}
    assert sent["tags"] == {"title": "Tags", "type": "array", "items": {"type": "string"},
                            "minItems": 1, "description": "Constraints: uniqueItems true."}
    assert sent["when"] == {"title": "When", "type": "string", "format": "date"}
    assert sent["mail"] == {"title": "Mail", "type": "string",
                            "description": 'Constraints: format "email".'}
    tool = out["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"]["properties"]
    assert tool == sent
    assert schema == given  # the client's body is left as it came


@pytest.mark.parametrize("value", [None, "ya29.a b"])
def test_a_token_env_holding_a_key_is_not_echoed_to_the_client(
        value: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    # A key pasted where token_env's name goes (letters and digits alone: it passes as a
    # name) was echoed in the 502's message, to every client, where check-config hides it.
    from streamproxy.routing.target import Target

    key = "Zq8VwR3kLm2Np7Xt5Yb1Hc4Jd6Fg9Ks0Ae3Wr8Ty"
    if value is None:
        monkeypatch.delenv(key, raising=False)
    else:
        monkeypatch.setenv(key, value)
    vertex = provider("vertex", project="proj", location="us-central1", token_env=key)
    with pytest.raises(TokenUnavailable) as info:
        vertex.auth_headers(Target(vertex, "gemini-2.5-flash"))
    assert key not in info.value.message and "not shown" in info.value.message
    assert key not in vertex.auth_summary()  # (check-config's line)


@pytest.mark.parametrize("extra", [{"extra_content": "x"}, {"extra_content": {"google": "x"}},
                                   {"extra_content": {"google": {"thought_signature": 7}}},
                                   {"function_signature": 7}])
def test_a_malformed_replayed_signature_field_is_no_signature(extra: dict[str, Any]) -> None:
    # A string where Google's `extra_content` object goes raised AttributeError: a 500 for a
    # field the client may fill with anything; a non-string signature went to Gemini, whose
    # 400 named no field of the client's. Either is read as no signature (Gemini 3: the skip).
    turn = tool_turn("c1", **{k: v for k, v in extra.items() if k != "function_signature"})
    if "function_signature" in extra:
        turn["tool_calls"][0]["function"]["thought_signature"] = extra["function_signature"]
    out = translate([{"role": "user", "content": "x"}, turn,
                     {"role": "tool", "tool_call_id": "c1", "content": "1"}])
    assert out["contents"][1]["parts"][0]["thoughtSignature"] != 7
    assert isinstance(out["contents"][1]["parts"][0]["thoughtSignature"], str)


# Keywords Gemini does not know are annotations: their values are data, not schemas (OpenAPI's
# `example`, FastAPI's `json_schema_extra`, `x-…` extensions, `dependentRequired`'s names).
SEARCH_TOOL = {"type": "object",
               "properties": {"pattern": {"type": "string"}, "format": {"type": "string"}},
               "dependentRequired": {"pattern": ["format"], "format": ["pattern"]},
               "example": {"pattern": "^a", "format": "csv", "const": "x"},
               "x-ui": {"format": "textarea", "maxLength": 3, "enum": [None, "a"]}}


def test_annotations_reach_gemini_as_written() -> None:
    # Their values were read as schemas: a key named format, pattern or const (a property's
    # name, an example's field) was moved into a "Constraints: …" description or made an
    # enum, so `dependentRequired` lost its names and the example changed.
    out = translate([{"role": "user", "content": "x"}],
                    response_format={"type": "json_schema",
                                     "json_schema": {"name": "s", "schema": SEARCH_TOOL}},
                    tools=[{"type": "function",
                            "function": {"name": "f", "parameters": SEARCH_TOOL}}])
    assert out["generationConfig"]["responseJsonSchema"] == SEARCH_TOOL
    assert out["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"] == SEARCH_TOOL


# Names OpenAI (or another provider) takes that Gemini refuses ("Invalid function name. Must
# start with a letter or an underscore…, with a maximum length of 64"): a digit first, an MCP
# tool's space or slash, over 64 characters.
REFUSED_NAMES = ["1password_lookup", "-flag", "github/search issues", "mcp__" + "x" * 70]
_GEMINI_NAME = r"[A-Za-z_][A-Za-z0-9_.:-]{0,63}"


@pytest.mark.parametrize("names", [
    [*REFUSED_NAMES, "_1password_lookup", "plain"],  # (a rename must not take the last two)
    # Two refused names that read alike once their other characters are `_` (as MCP servers
    # name one tool with a slash, another with a space): two renames, not one name twice.
    ["github/search issues", "github search issues", "9a", "9 a", "a:b", "plain"],
])
def test_function_names_gemini_refuses_go_renamed_and_come_back_as_declared(
        names: list[str]) -> None:
    import re

    from streamproxy.openai_api.chunks import ChunkEncoder
    from streamproxy.openai_api.request import parse_chat_request
    from streamproxy.routing.target import Target

    body = calls_of_every_name(names, "gemini-2.5-flash")
    gemini = provider("gemini")
    target = Target(gemini, "gemini-2.5-flash", api_key="k")
    req = parse_chat_request(orjson.dumps(body))
    sent = orjson.loads(gemini.build_request(req, target).body)
    declared = [d["name"] for d in sent["tools"][0]["functionDeclarations"]]
    assert all(re.fullmatch(_GEMINI_NAME, name) for name in declared)
    assert len(set(declared)) == len(names) and declared[-2:] == names[-2:]
    called = [p["functionCall"]["name"] for p in sent["contents"][1]["parts"]]
    answered = [p["functionResponse"]["name"] for p in sent["contents"][2]["parts"]]
    assert called == answered == declared
    allowed = sent["toolConfig"]["functionCallingConfig"]["allowedFunctionNames"]
    assert allowed == declared[:1]
    # Gemini's calls, by the names it was sent, reach the client by the names it declared.
    answer = {"candidates": [{"content": {"role": "model", "parts": [
        {"functionCall": {"name": name, "args": {}}} for name in declared]},
        "finishReason": "STOP"}]}
    done = gemini.translate_response(orjson.dumps(answer), req, completion_id="c", created=1)
    assert [c["function"]["name"] for c in done["choices"][0]["message"]["tool_calls"]] == names
    enc = ChunkEncoder(completion_id="c", created=1, model="m", include_usage=False)
    translator = gemini.stream_translator(req, enc)
    translator.feed(b"data: " + orjson.dumps(answer) + b"\r\n\r\n")
    frames = [orjson.loads(line[6:]) for line in enc.take().split(b"\n")
              if line.startswith(b"data: {")]
    streamed = [call["function"]["name"] for frame in frames
                for call in frame["choices"][0]["delta"].get("tool_calls") or ()]
    assert streamed == names


# zod's z.intersection / .and() of two objects: a multi-member allOf, which Gemini's schema
# fields do not read (the model saw none of the members' properties).
INTERSECTION = {"description": "A person.", "allOf": [
    {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"],
     "additionalProperties": False},
    {"type": "object", "properties": {"age": {"type": "integer", "multipleOf": 1}},
     "required": ["age"], "additionalProperties": False, "description": "Aged."}]}
INTERSECTION_FOR_GEMINI = {
    "description": "A person.\nAged.", "type": "object",
    "properties": {"name": {"type": "string"},
                   "age": {"type": "integer", "description": "Constraints: multipleOf 1."}},
    "required": ["name", "age"], "additionalProperties": False}


def test_an_intersection_of_objects_reaches_gemini_as_one_object() -> None:
    given = copy.deepcopy(INTERSECTION)
    out = translate([{"role": "user", "content": "x"}],
                    response_format={"type": "json_schema",
                                     "json_schema": {"name": "p", "schema": INTERSECTION}},
                    tools=[{"type": "function",
                            "function": {"name": "f", "parameters": INTERSECTION}}])
    assert out["generationConfig"]["responseJsonSchema"] == INTERSECTION_FOR_GEMINI
    tool = out["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"]
    assert tool == INTERSECTION_FOR_GEMINI
    assert given == INTERSECTION  # the client's body is left as it came


@pytest.mark.parametrize("schema", [
    {"allOf": [{"$ref": "#/$defs/A"}, {"properties": {"b": {"type": "string"}}}],
     "$defs": {"A": {"type": "object"}}},  # (a reference is never inlined)
    {"allOf": [{"properties": {"a": {"type": "string"}}},
               {"properties": {"a": {"type": "integer"}}}]},  # one property, two schemas
    {"allOf": [{"type": "object"}, {"minimum": 1}]},  # not an object's keywords alone
    {"allOf": [{"type": "object"}, {"type": "object"}], "anyOf": [{"type": "object"}]},
])
def test_other_all_ofs_stay_as_written(schema: dict[str, Any]) -> None:
    out = translate([{"role": "user", "content": "x"}], response_format={
        "type": "json_schema", "json_schema": {"name": "p", "schema": schema}})
    assert out["generationConfig"]["responseJsonSchema"] == schema


JSON_FORMATS = [{"type": "json_object"},
                {"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "object"}}}]


@pytest.mark.parametrize("fmt", JSON_FORMATS)
@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "f"}}])
def test_a_forced_call_leaves_the_json_format_out_where_gemini_2_refuses_both(
        fmt: dict[str, Any], choice: Any) -> None:
    # Gemini 2.x answers function calling beside a JSON response type with a 400 ("Function
    # calling with a response mime type: 'application/json' is unsupported"). A call the
    # client forces is the whole answer: no text, so no format to hold it to.
    tools = [{"type": "function", "function": {"name": "f"}}]
    for model in ("gemini-2.5-flash", "gemini-2.0-flash"):
        out = translate([{"role": "user", "content": "x"}], model, tools=tools,
                        tool_choice=choice, response_format=fmt, temperature=0)
        assert out["generationConfig"] == {"temperature": 0}
        assert out["toolConfig"]["functionCallingConfig"]["mode"] == "ANY"
    out = translate([{"role": "user", "content": "x"}], "gemini-2.5-flash", tools=tools,
                    tool_choice=choice, response_format=fmt)
    assert "generationConfig" not in out
    # Gemini 3 takes both, and without a forced call a text answer may come: kept.
    for model, kept in (("gemini-3-flash-preview", choice), ("gemini-2.5-flash", "auto"),
                        ("gemini-2.5-flash", "none")):
        out = translate([{"role": "user", "content": "x"}], model, tools=tools,
                        tool_choice=kept, response_format=fmt)
        assert out["generationConfig"]["responseMimeType"] == "application/json"
