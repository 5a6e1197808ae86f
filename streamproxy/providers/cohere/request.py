"""OpenAI Chat Completions request → Cohere v2 `/v2/chat` request (pure).

Choices (docs/providers/others.md "cohere"):
- system and developer messages stay in place as `system` messages (an empty one is left
  out: Cohere refuses an empty message); a conversation left with no message at all is one
  PLACEHOLDER_USER_TEXT user turn (Cohere refuses an empty `messages`);
- user content parts: text (an empty part left out; a message with nothing said goes as
  BLANK_USER_TEXT: Cohere refuses an empty message), and `image_url` (data: or http(s) URLs,
  for vision models); a data: URL goes as `data:<type>;base64,<data>`, its type read from
  the image's first bytes when they show one (else its label, lower-cased), and must be one
  Cohere takes (IMAGE_TYPES); an http(s) URL goes as it is (Cohere fetches it);
- an assistant turn with nothing said and no tool calls is left out (Cohere refuses an empty
  message; it takes two user turns in a row);
- an assistant turn with tool calls sends its reasoning (`reasoning_content`, where we stream
  Cohere's tool plan, or another provider's name for it: `replayed_reasoning`), or failing
  that its text, back as `tool_plan` (text beside that reasoning stays `content`), the calls
  in v2 shape (arguments stay a JSON string); tool results are `tool` messages with
  `tool_call_id` and string content (EMPTY_TOOL_RESULT for one with nothing in it);
- a function without `parameters` (OpenAI: no arguments) gets an empty object schema, as
  Cohere requires one;
- a function's `strict: true` → `strict_tools: true` (Cohere's switch covers every tool sent);
- tool_choice "required" → "REQUIRED", "none" → "NONE" (beside tools only), "auto" → omitted;
  a named tool_choice (Cohere has none) → "REQUIRED" with only that tool sent, which forces
  exactly that call;
- max tokens, temperature, top_p → p, stop → stop_sequences (an empty one left out), seed
  and the penalties map 1:1 (a penalty of 0, the default, is not sent: Cohere refuses the
  two together),
  except that a top_p within OpenAI's range (0 to 1) but outside Cohere's (its API reference:
  "min value of 0.01, max value of 0.99") goes as the nearest `p` Cohere takes (P_MIN, P_MAX;
  OpenAI's default 1 is no nucleus cut), and a penalty within OpenAI's (-2 to 2) but outside
  Cohere's (0 to 1) as the nearest it takes (a negative one, which favours repeats, as none);
  a value outside OpenAI's range is OpenAI's 400;
- `top_k` (no OpenAI parameter, but the extra_body name Anthropic, Gemini and Ollama take) → `k`;
- response_format json_object → {"type": "json_object"}, json_schema → the same with
  `json_schema: <schema>`;
- reasoning_effort → `thinking` ("none" → disabled, otherwise enabled with a token budget,
  31K at most and leaving the answer ANSWER_ROOM below the client's max: `_budget`);
- Cohere-native parameters in PASSTHROUGH may come from the client (openai SDK `extra_body`);
- `logprobs` → `logprobs` (`top_logprobs` is dropped: Cohere gives no top candidates);
- parameters in DROPPED are dropped; `n` > 1 is rejected.
"""

from __future__ import annotations

from typing import Any

import orjson

from streamproxy.errors import InvalidRequest
from streamproxy.openai_api.content import (
    BLANK_USER_TEXT,
    OPENAI_ONLY,
    PLACEHOLDER_USER_TEXT,
    answer_cap,
    distinct_tools,
    image_media_type,
    logprobs_asked,
    lower_scheme,
    parse_data_url,
    reasoning_effort,
    replayed_reasoning,
    said,
    stop_list,
    texts,
    with_call_ids,
)
from streamproxy.openai_api.request import in_openai_range

# top_logprobs too: Cohere's logprobs have no top candidates (the tokens come without them).
DROPPED = (OPENAI_ONLY - {"logprobs"}) | {"user", "parallel_tool_calls"}
PASSTHROUGH = ("k", "safety_mode", "documents", "citation_options", "strict_tools", "thinking")
SAME_NAME = ("temperature", "seed")
# Cohere refuses both in one request ("cannot specify both frequency_penalty and
# presence_penalty", its errors reference); a 0 is both APIs' default (no penalty), which
# clients often send for each, so only a non-zero one goes.
PENALTIES = ("frequency_penalty", "presence_penalty")
# Cohere refuses a `p` outside these; OpenAI's top_p goes from 0 to 1 (its default).
P_MIN, P_MAX = 0.01, 0.99
PENALTY_MAX = 1  # Cohere's penalties go from 0 to 1; OpenAI's from -2 to 2
# The image types Cohere's vision models take (its image-inputs docs: PNG, JPEG, WebP, GIF);
# a data: URL goes with the type as Cohere spells it (`image_media_type`).
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"})
# What a tool result that returned nothing says: Cohere refuses an empty message, and a call
# must keep its result (Command A refuses a call without one). As on Bedrock.
EMPTY_TOOL_RESULT = "(empty)"
# Cohere's reasoning docs: leave at least 1K tokens of the output for the answer ("to reason
# until the maximum limit, we recommend 31K": Command A Reasoning's output cap is 32,000).
ANSWER_ROOM = 1000
THINKING_BUDGET = {"minimal": 512, "low": 1024, "medium": 4096, "high": 16384,
                   "xhigh": 32000 - ANSWER_ROOM, "max": 32000 - ANSWER_ROOM}


def to_cohere(body: dict[str, Any], model: str) -> dict[str, Any]:
    if (body.get("n") or 1) > 1:
        raise InvalidRequest("Cohere returns one choice per request; 'n' must be 1.",
                             param="n", code="unsupported_value")
    out: dict[str, Any] = {"model": model,
                           "messages": _messages(with_call_ids(body["messages"], "call_"))}
    if logprobs_asked(body):
        out["logprobs"] = True
    max_tokens = answer_cap(body)
    if max_tokens:
        out["max_tokens"] = max_tokens
    for key in SAME_NAME:
        if body.get(key) is not None:
            out[key] = body[key]
    for key in PENALTIES:
        if body.get(key):
            penalty = min(in_openai_range(body[key], -2, 2, key), PENALTY_MAX)
            if penalty > 0:  # (a negative one has no Cohere equivalent: no penalty)
                out[key] = penalty
    if body.get("top_p") is not None:
        out["p"] = _p(body["top_p"])
    if body.get("top_k") is not None:  # extra_body's common name (a native `k` wins, below)
        out["k"] = body["top_k"]
    # An empty sequence cuts nothing in OpenAI's terms; Cohere would match it at once (or
    # refuse it), so it is left out, and a list left empty is not sent (as on Ollama, Gemini).
    stop = [sequence for sequence in stop_list(body.get("stop") or []) if sequence]
    if stop:
        out["stop_sequences"] = stop
    _response_format(body, out)
    effort = reasoning_effort(body)
    if effort == "none":
        out["thinking"] = {"type": "disabled"}
    elif effort in THINKING_BUDGET:
        out["thinking"] = {"type": "enabled",
                           "token_budget": _budget(THINKING_BUDGET[effort], max_tokens)}
    for key in PASSTHROUGH:
        if body.get(key) is not None:
            out[key] = body[key]
    _tools(body, out)
    if body.get("stream"):
        out["stream"] = True
    return out


def _budget(budget: int, max_tokens: int | None) -> int:
    """The effort's thinking budget, below the client's max (which counts thinking and answer
    alike): ANSWER_ROOM left for the answer, or half of a max under twice that; a positive
    number, as Cohere requires. A budget above it left no answer, or none at all."""
    if not max_tokens:
        return budget
    return max(min(budget, max_tokens - min(ANSWER_ROOM, max_tokens // 2)), 1)


def _p(top_p: float) -> float:
    """OpenAI's top_p as Cohere's `p`: from 0 to 1 (OpenAI's default, no nucleus cut) it goes
    within P_MIN..P_MAX; outside it is OpenAI's 400, not a valid request clamped unnoticed."""
    return min(max(in_openai_range(top_p, 0, 1, "top_p"), P_MIN), P_MAX)


def _response_format(body: dict[str, Any], out: dict[str, Any]) -> None:
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_object":
        out["response_format"] = {"type": "json_object"}
    elif fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise InvalidRequest("'response_format.json_schema.schema' must be an object.",
                                 param="response_format.json_schema.schema")
        out["response_format"] = {"type": "json_object", "json_schema": schema}


def _tools(body: dict[str, Any], out: dict[str, Any]) -> None:
    tools = distinct_tools(body.get("tools") or [])
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        name = choice["function"]["name"]
        tools = [t for t in tools if t["function"]["name"] == name]
        if not tools:
            raise InvalidRequest(f"tool_choice names '{name}', which is not in 'tools'.",
                                 param="tool_choice", code="invalid_value")
        choice = "required"
    if tools:
        out["tools"] = [{"type": "function", "function": _function(t["function"])}
                        for t in tools]
        if any(t["function"].get("strict") is True for t in tools):
            # Cohere's switch is per request: one strict tool makes all sent tools strict
            # (schema-following arguments are what a strict tool's caller relies on).
            out.setdefault("strict_tools", True)
    # Only beside tools: without, there is nothing to force or forbid, and models before
    # Command R7B refuse `tool_choice` itself (Cohere's reference).
    if choice == "required" and tools:
        out["tool_choice"] = "REQUIRED"
    elif choice == "none" and tools:
        out["tool_choice"] = "NONE"


def _function(fn: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in fn.items() if k in ("name", "description")}
    # Cohere requires `parameters`; OpenAI's function without them takes no arguments.
    out["parameters"] = fn.get("parameters") or {"type": "object", "properties": {}}
    return out


def _messages(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, m in enumerate(msgs):
        role = m["role"]
        if role in ("system", "developer"):
            text = _text(m.get("content"), i)
            if text:  # (Cohere refuses an empty message; an empty instruction says nothing)
                out.append({"role": "system", "content": text})
        elif role == "user":
            out.append({"role": "user", "content": _user(m.get("content"), i)})
        elif role == "assistant":
            turn = _assistant(m, i)
            if turn:
                out.append(turn)
        elif role == "tool":
            out.append({"role": "tool", "tool_call_id": m["tool_call_id"],
                        "content": _text(m.get("content"), i) or EMPTY_TOOL_RESULT})
        else:
            raise InvalidRequest("The legacy 'function' role is not supported; use 'tool'.",
                                 param=f"messages[{i}].role", code="unsupported_value")
    # Every message said nothing and was left out: Cohere refuses `messages: []`, where
    # OpenAI answers; one user turn asks for the answer, as on Anthropic, Gemini, Bedrock.
    return out or [{"role": "user", "content": PLACEHOLDER_USER_TEXT}]


def _assistant(m: dict[str, Any], i: int) -> dict[str, Any] | None:
    """The assistant turn as Cohere takes it; None for one that said nothing and made no call:
    Cohere refuses an empty message, and takes the user turns around it in a row."""
    text = _text(said(m), i)
    calls = m.get("tool_calls") or []
    if not calls:
        return {"role": "assistant", "content": text} if text else None
    msg: dict[str, Any] = {"role": "assistant", "tool_calls": [{
        "id": call.get("id") or f"call_{i}_{j}",
        "type": "function",
        "function": {"name": call["function"]["name"],
                     "arguments": _arguments(call["function"].get("arguments"))},
    } for j, call in enumerate(calls)]}
    plan = replayed_reasoning(m)
    if plan:
        msg["tool_plan"] = plan
        if text:  # said beside the plan (a turn from another model): still said
            msg["content"] = text
    elif text:
        msg["tool_plan"] = text
    return msg


def _arguments(args: Any) -> str:
    if isinstance(args, str):
        return args or "{}"
    return orjson.dumps(args if args is not None else {}).decode()


def _text(content: Any, i: int) -> str:
    # A line between parts, as Ollama's: joined with nothing, their words ran together.
    return "\n".join(texts(content, f"messages[{i}].content"))


def _user(content: Any, i: int) -> Any:
    """A user message's content; with nothing said ("", only empty text parts), BLANK_USER_TEXT:
    Cohere refuses an empty message ("message must not be empty in a turn", its errors
    reference), and left out, the turn could leave the assistant's last, which it refuses too."""
    if not isinstance(content, list):
        return content or BLANK_USER_TEXT
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type")
        if kind == "text":
            if part.get("text"):  # (an empty one says nothing)
                parts.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            image = part.get("image_url") or {}
            sent = {k: v for k, v in image.items() if k in ("url", "detail")}
            sent["url"] = _image_url(image.get("url"),
                                     f"messages[{i}].content[{j}].image_url.url")
            parts.append({"type": "image_url", "image_url": sent})
        else:
            raise InvalidRequest(f"Content part type '{kind}' is not supported by Cohere.",
                                 param=f"messages[{i}].content[{j}].type",
                                 code="unsupported_value")
    return parts or BLANK_USER_TEXT


def _image_url(url: Any, where: str) -> str:
    """An image's URL as Cohere reads it: an http(s) URL as it is; a data: URL rebuilt as
    `data:<type>;base64,<data>` (it reads no upper-case type nor parameters such as
    `;charset=`), or a 400 naming `where` for one it cannot read."""
    url = lower_scheme(url)
    if isinstance(url, str) and url.startswith(("http://", "https://")):
        return url
    if not isinstance(url, str) or not url.startswith("data:"):
        raise InvalidRequest("Expected a data: URL or an http(s) URL.", param=where,
                             code="invalid_value")
    mime, data = parse_data_url(url, where)
    mime = image_media_type(data, mime)  # the bytes' type: a label may be wrong or generic
    if mime not in IMAGE_TYPES:
        raise InvalidRequest(f"Cohere takes png, jpeg, webp or gif images, not {mime}.",
                             param=where, code="unsupported_value")
    return f"data:{mime};base64,{data}"
