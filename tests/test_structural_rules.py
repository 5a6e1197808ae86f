"""Every translated request keeps its provider's structural rules: a validator per translating
provider, written from its API docs, for the request the proxy builds (turn order, tool calls
and their results, empty content, where the system prompt goes), run on Hypothesis-generated
valid OpenAI conversations. A provider refuses a request that breaks one with a 400, so a valid
OpenAI request would fail there; the proxy may instead answer a typed 400 naming a message
field. A bounded number of fixed examples (STREAMPROXY_FUZZ_EXAMPLES explores, as in
test_fuzz.py)."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamproxy.errors import InvalidRequest
from streamproxy.openai_api.request import parse_chat_request
from streamproxy.providers.anthropic.request import to_anthropic
from streamproxy.providers.bedrock.request import to_converse
from streamproxy.providers.cohere.request import to_cohere
from streamproxy.providers.gemini.request import to_gemini
from streamproxy.providers.ollama.request import to_ollama

EXPLORE = int(os.environ.get("STREAMPROXY_FUZZ_EXAMPLES", "0"))
PROPERTY = settings(max_examples=EXPLORE or 120, deadline=None, derandomize=not EXPLORE,
                    suppress_health_check=[HealthCheck.too_slow])

PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()


def _blank(text: Any) -> bool:
    return not isinstance(text, str) or not text.strip()


# -- the validators: each raises AssertionError naming the rule a request breaks ---------------

def check_anthropic(req: dict[str, Any]) -> None:
    """Messages API: system only top-level; user/assistant turns alternate (the proxy merges
    consecutive ones); no empty content, no blank text block; tool_result blocks lead the user
    turn right after the assistant turn holding their tool_use ids, and every tool_use is
    answered there; tool_use ids unique; a final assistant turn ends without whitespace."""
    msgs = req["messages"]
    assert msgs, "messages: empty"
    assert all(b.get("type") == "text" and not _blank(b["text"]) for b in req.get("system", []))
    seen: set[str] = set()
    for k, m in enumerate(msgs):
        assert m["role"] in ("user", "assistant"), (k, m["role"])
        assert k == 0 or msgs[k - 1]["role"] != m["role"], (k, "roles do not alternate")
        blocks = m["content"]
        assert blocks, (k, "empty content")
        for b in blocks:
            if b["type"] == "text":
                assert not _blank(b["text"]), (k, "blank text block")
            if b["type"] == "tool_use":
                assert m["role"] == "assistant" and b["id"] not in seen, (k, "repeated id", b)
                seen.add(b["id"])
            if b["type"] == "tool_result":
                assert m["role"] == "user", (k, b)
                content = b.get("content", [])
                for c in [{"text": content}] if isinstance(content, str) else content:
                    assert not _blank(c.get("text", "x")), (k, "blank text in tool_result")
        results = [b["tool_use_id"] for b in blocks if b["type"] == "tool_result"]
        assert [b["type"] for b in blocks[:len(results)]] == ["tool_result"] * len(results), \
            (k, "tool_result blocks do not lead the turn")
        asked = [b["id"] for b in msgs[k - 1]["content"] if b["type"] == "tool_use"] \
            if k and m["role"] == "user" else []
        assert set(results) <= set(asked), (k, "tool_result without its tool_use", results)
        if m["role"] == "assistant" and k + 1 < len(msgs):
            calls = [b["id"] for b in blocks if b["type"] == "tool_use"]
            answered = {b["tool_use_id"] for b in msgs[k + 1]["content"]
                        if b["type"] == "tool_result"}
            assert set(calls) <= answered, (k, "tool_use not answered", calls, answered)
    if msgs[-1]["role"] == "assistant":
        last = msgs[-1]["content"][-1]
        assert last["type"] != "text" or last["text"] == last["text"].rstrip(), "trailing space"


def check_converse(req: dict[str, Any]) -> None:
    """Converse: `system` separate; starts with a user turn; turns alternate; no empty content,
    no blank text; toolResult blocks lead the user turn right after the assistant turn with
    their toolUse ids, every toolUse answered; a toolResult's content not empty; a toolConfig
    whenever tool blocks are present."""
    msgs = req["messages"]
    assert msgs and msgs[0]["role"] == "user", "must start with a user message"
    assert all(not _blank(b.get("text", "x")) for b in req.get("system", []))
    tools = False
    seen: set[str] = set()
    for k, m in enumerate(msgs):
        assert m["role"] in ("user", "assistant"), (k, m["role"])
        assert k == 0 or msgs[k - 1]["role"] != m["role"], (k, "roles do not alternate")
        blocks = [b for b in m["content"] if "cachePoint" not in b]
        assert blocks, (k, "empty content")
        for b in blocks:
            assert not _blank(b.get("text", "x")), (k, "blank text")
            if "toolResult" in b:
                assert m["role"] == "user" and b["toolResult"]["content"], (k, b)
                assert all(not _blank(c.get("text", "x")) for c in b["toolResult"]["content"])
            if "toolUse" in b:
                assert m["role"] == "assistant", (k, b)
                assert b["toolUse"]["toolUseId"] not in seen, (k, "repeated toolUseId", b)
                seen.add(b["toolUse"]["toolUseId"])
            tools = tools or "toolResult" in b or "toolUse" in b
        results = [b["toolResult"]["toolUseId"] for b in blocks if "toolResult" in b]
        assert all("toolResult" in b for b in blocks[:len(results)]), (k, "results not first")
        asked = [b["toolUse"]["toolUseId"] for b in msgs[k - 1]["content"] if "toolUse" in b] \
            if k and m["role"] == "user" else []
        assert set(results) <= set(asked), (k, "toolResult without its toolUse")
        if m["role"] == "assistant" and k + 1 < len(msgs):
            calls = {b["toolUse"]["toolUseId"] for b in blocks if "toolUse" in b}
            answered = {b["toolResult"]["toolUseId"] for b in msgs[k + 1]["content"]
                        if "toolResult" in b}
            assert calls <= answered, (k, "toolUse not answered")
    assert not tools or "toolConfig" in req, "tool blocks without a toolConfig"


def check_gemini(req: dict[str, Any]) -> None:
    """generateContent: contents roles user/model, opening with a user turn; no content
    without parts, no empty text part; functionResponse parts, alone in a user content, answer
    the functionCalls of the model content right before (one each, by name)."""
    contents = req["contents"]
    assert contents and contents[0]["role"] == "user", "must open with a user turn"
    for part in (req.get("systemInstruction") or {}).get("parts", []):
        assert part.get("text"), "empty system part"
    for k, c in enumerate(contents):
        assert c["role"] in ("user", "model"), (k, c["role"])
        assert c["parts"], (k, "no parts")
        for p in c["parts"]:
            assert p, (k, "empty part")
            assert "text" not in p or p["text"], (k, "empty text part")
        responses = [p["functionResponse"] for p in c["parts"] if "functionResponse" in p]
        if not responses:
            continue
        assert c["role"] == "user" and len(responses) == len(c["parts"]), (k, "mixed")
        assert k and contents[k - 1]["role"] == "model", (k, "responses without calls")
        calls = [p["functionCall"] for p in contents[k - 1]["parts"] if "functionCall" in p]
        assert [r["name"] for r in responses] == [f["name"] for f in calls], (k, "unmatched")
    for k, c in enumerate(contents[:-1]):
        calls = [p for p in c["parts"] if "functionCall" in p]
        if calls:
            after = contents[k + 1]["parts"]
            assert len([p for p in after if "functionResponse" in p]) == len(calls), \
                (k, "calls not answered")


def check_cohere(req: dict[str, Any]) -> None:
    """Cohere v2 chat: roles system/user/assistant/tool; tool messages answer the tool_call ids
    of the assistant message before them, every call answered; an assistant message with
    tool_calls carries no text content (the plan goes in tool_plan)."""
    msgs = req["messages"]
    asked: set[str] = set()
    for k, m in enumerate(msgs):
        assert m["role"] in ("system", "user", "assistant", "tool"), (k, m["role"])
        if m["role"] == "tool":
            assert m["tool_call_id"] in asked, (k, "tool result for no call", m)
            asked.discard(m["tool_call_id"])
            continue
        assert not asked, (k, "tool calls not answered", asked)
        if m["role"] == "assistant" and m.get("tool_calls"):
            asked = {c["id"] for c in m["tool_calls"]}
            assert len(asked) == len(m["tool_calls"]), (k, "repeated ids")
            assert "content" not in m or m.get("tool_plan"), (k, "content beside tool_calls")
    assert not asked, "tool calls not answered"


def check_ollama(req: dict[str, Any]) -> None:
    """Ollama /api/chat: roles system/user/assistant/tool, string content, a tool call's
    arguments an object, tool messages after an assistant message with calls."""
    msgs = req["messages"]
    calls = 0
    for k, m in enumerate(msgs):
        assert m["role"] in ("system", "user", "assistant", "tool"), (k, m["role"])
        assert isinstance(m["content"], str), (k, m)
        for call in m.get("tool_calls", ()):
            assert isinstance(call["function"]["arguments"], dict), (k, call)
        if m["role"] == "assistant":
            calls = len(m.get("tool_calls", ()))
        elif m["role"] == "tool":
            assert calls, (k, "tool result for no call")
            calls -= 1


TRANSLATORS: dict[str, tuple[Callable[[dict[str, Any]], dict[str, Any]],
                             Callable[[dict[str, Any]], None]]] = {
    "anthropic": (lambda b: to_anthropic(b, "claude-sonnet-4-5"), check_anthropic),
    "bedrock": (lambda b: to_converse(b, "anthropic.claude-sonnet-4-5-20250929-v1:0"),
                check_converse),
    "gemini": (lambda b: to_gemini(b, "gemini-2.5-flash"), check_gemini),
    "cohere": (lambda b: to_cohere(b, "command-a-03-2025"), check_cohere),
    "ollama": (lambda b: to_ollama(b, "llama3.2", stream=True), check_ollama),
}

# -- valid OpenAI conversations ----------------------------------------------------------------

_TEXT = st.sampled_from(["", " ", "\n", "hi", "ok "])
_PARTS = st.lists(st.sampled_from([{"type": "text", "text": ""}, {"type": "text", "text": "a"},
                                   {"type": "text", "text": " "}]), min_size=1, max_size=2)
_USER_PARTS = st.lists(st.sampled_from([{"type": "text", "text": ""},
                                        {"type": "text", "text": "b"},
                                        {"type": "image_url", "image_url": {"url": PNG}}]),
                       min_size=1, max_size=3)
_IDS = st.sampled_from(["call_{n}", "toolu_{n}", "functions.f:{n}", ""])


@st.composite
def conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A valid OpenAI message sequence: system/developer anywhere, consecutive messages of a
    role, assistant turns with content, tool calls or both (content null, "" or parts), and
    each assistant's calls answered right after it by tool messages in any order (string or
    array content), with `name` fields now and then."""
    messages: list[dict[str, Any]] = []
    calls = 0
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["system", "developer", "user", "user", "assistant",
                                     "tools", "tools"]))
        m: dict[str, Any]
        if kind in ("system", "developer"):
            m = {"role": kind, "content": draw(st.sampled_from(["be brief", ""]) | _PARTS)}
        elif kind == "user":
            m = {"role": "user", "content": draw(_TEXT | _USER_PARTS)}
        else:
            m = {"role": "assistant", "content": draw(st.none() | _TEXT | _PARTS)}
        if draw(st.integers(0, 4)) == 0 and kind != "tools":
            m["name"] = "alice"
        if kind == "assistant" and m["content"] is None:
            m["content"] = "ok"
        if kind in ("assistant", "tools") and draw(st.integers(0, 3)) == 0:  # Claude's, sent back
            m["thinking_blocks"] = draw(st.sampled_from([
                [{"type": "thinking", "thinking": "hm", "signature": "sig"}],
                [{"type": "redacted_thinking", "data": "x"}], [{"type": "thinking"}]]))
        messages.append(m)
        if kind != "tools":
            continue
        pattern = draw(_IDS)
        # (servers that number each answer's calls from 0 repeat ids from turn to turn)
        first = calls if draw(st.booleans()) else 0
        ids = [pattern.format(n=first + i) for i in range(draw(st.integers(1, 3)))]
        calls += len(ids)
        m["tool_calls"] = [{"id": i, "type": "function", "function": {
            "name": f"f{n % 2}", "arguments": draw(st.sampled_from(["{}", '{"a": 1}', ""]))}}
            for n, i in enumerate(ids)]
        for call_id in draw(st.permutations(ids)):
            messages.append({"role": "tool", "tool_call_id": call_id, "content": draw(
                st.sampled_from(["", "42", " ", '{"a": 1}']) | _PARTS)})
    return messages


def _parsed(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The body as the proxy reads it (a conversation it refuses is not generated)."""
    return parse_chat_request(orjson.dumps({"model": "m", "messages": messages})).body


@PROPERTY
@given(messages=conversations(), provider=st.sampled_from(sorted(TRANSLATORS)))
def test_translated_requests_keep_their_providers_structural_rules(
        messages: list[dict[str, Any]], provider: str) -> None:
    translate, check = TRANSLATORS[provider]
    body = _parsed(messages)
    try:
        out = translate(body)
    except InvalidRequest as e:  # a typed 400 naming the message field at fault
        assert (e.param or "").startswith("messages["), (e.param, e.message)
        return
    check(out)


def _call_0_each_turn() -> list[dict[str, Any]]:
    """A tool loop from a server that numbers each answer's calls from 0 (`call_0` twice)."""
    def turn(name: str, result: str) -> list[dict[str, Any]]:
        return [{"role": "assistant", "content": None, "tool_calls": [{
                    "id": "call_0", "type": "function",
                    "function": {"name": name, "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "call_0", "content": result}]
    return [{"role": "user", "content": "weather, then time"},
            *turn("weather", "sunny"), *turn("time", "noon")]


def test_a_call_id_an_earlier_turn_used_is_sent_once() -> None:
    # Anthropic answered the second `call_0` with a 400 ("`tool_use` ids must be unique").
    body = _parsed(_call_0_each_turn())
    anthropic = to_anthropic(body, "claude-sonnet-4-5")
    check_anthropic(anthropic)
    msgs = anthropic["messages"]
    first, second = (m["content"][0]["id"] for m in msgs[1::2])
    assert first == "call_0" and second != first  # earlier turns stay as sent (prompt cache)
    assert [b["tool_use_id"] for m in msgs[2::2] for b in m["content"]] == [first, second]
    converse = to_converse(body, "anthropic.claude-sonnet-4-5-20250929-v1:0")
    check_converse(converse)
    results = [b["toolResult"] for m in converse["messages"][2::2] for b in m["content"]]
    assert [r["content"][0]["text"] for r in results] == ["sunny", "noon"]
