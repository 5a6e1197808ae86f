"""OpenAI Chat Completions request → Anthropic Messages request (pure).

Choices (README "Anthropic"):
- every system/developer message is joined, in order, into the top-level `system`; a request
  with no other message gets a PLACEHOLDER_USER_TEXT user turn (Anthropic needs one), and so
  does one whose system messages follow the final assistant turn (`ends_with_system`: it is
  answered anew, not continued as a prefill), and so, in a later request, does one between
  those system messages and the assistant message that answered them (as it was asked);
- consecutive tool results become one user message of `tool_result` blocks (a tool message's
  image and file parts as the image and document blocks a tool_result takes); consecutive
  messages of one role are merged, since Anthropic wants alternating turns;
- empty and whitespace-only text is left out (a tool result of none has no `content`), and a
  final assistant turn (a prefill) loses its trailing whitespace: Anthropic refuses both; a
  user message left with nothing that answers an assistant turn is BLANK_USER_TEXT, so the
  turn stays (and the request never becomes a prefill);
- tool-call ids Anthropic cannot take (other providers', e.g. Kimi's `functions.f:0`) are
  mapped alike in call and result (`tool_use_id`); tool names Claude refuses (MCP's
  `github.create_issue`) are renamed alike in tool, tool_use and tool_choice, and Claude's
  calls mapped back (names.py);
- `max_tokens` defaults to DEFAULT_MAX_TOKENS (Anthropic requires one);
- `reasoning_effort` minimal/low/medium/high/xhigh/max → a thinking budget of
  1024/1024/4096/16384/24576/27904 tokens (none: no thinking), dropped for the Claudes that cannot
  think (`cannot_think`: before 3.7 Sonnet), kept below the client's max; beside
  a temperature other than 1, a top_k or a top_p below 0.95 it is a 400 (see `thinking.py`);
  the Claudes that take no budget (Opus 4.7 on) get `thinking: {type: adaptive}` and
  `output_config.effort` low/low/medium/high/xhigh/max instead (xhigh: max on the Claudes
  without it, `TAKES_XHIGH`), and adaptive thinking without the
  client's max the same room as the effort's budget would have (`adaptive_room`);
- `response_format` json_schema → `output_config.format` (structured outputs), in the subset
  Claude takes (`claude_schema`: objects closed, the constraints it refuses described), unless
  the model is one WITHOUT_STRUCTURED_OUTPUTS names (Vertex: VERTEX_WITHOUT_STRUCTURED_OUTPUTS):
  then, and for json_object, a system instruction (`json_instruction`); beside a prefill (a
  final assistant turn) structured outputs are a 400 (`refuse_prefill`);
- assistant `thinking_blocks` (as we stream them; or Portkey's `content_blocks` or thinking
  parts in `content`, see `signed_thinking`) are sent back as thinking blocks; one without
  its signature (or a redacted one without data) is left out, as Anthropic refuses it, and
  so is thinking that ends an assistant turn (`drop_trailing_thinking`), and the final
  turn's thinking when the request does not think (`drop_final_turn_thinking`);
- a function's `strict: true` → the tool's `strict` (Anthropic's strict tool use), its
  parameters in the subset Claude takes there too (`claude_schema`); not for the models
  without structured outputs, which refuse it: the tool goes as a non-strict one;
- a content part's or a tool's `cache_control` (prompt caching, as Portkey passes it; a tool's
  also inside its `function`, LiteLLM's place: `tool_cache_control`) is kept on the block made
  from it; a message's own (LiteLLM's form, e.g. beside string content) goes
  on the last block made from the message; the request's own (automatic caching) is sent as
  given (PASSTHROUGH); past the MAX_BREAKPOINTS Anthropic takes, the earliest turns' are
  dropped (`fit_breakpoints`), and a 5m one before a 1h one goes as 1h (Anthropic takes
  longer lifetimes first: `shorter_before_longer`);
- images: png, jpeg (`image/jpg` too), gif, webp; an http(s) one → a URL source, but a 400 where
  the platform takes none (`url_images` False: Claude on Vertex, which answers one with a 400
  naming `image.source.base64.data`); `file` parts: a PDF → a base64 document, a
  `text/*` file → a plain-text document (Anthropic's base64 documents take only PDF); other
  types are a 400 naming the type, and so is an OpenAI `file_id`;
- a whitespace-only stop sequence is a 400 (Claude refuses one);
- a `temperature` above Claude's 1 and within OpenAI's 2 is sent as 1 (`claude_temperature`);
- `top_p` 1 (no nucleus cut) is not sent: newer Claude models refuse it beside `temperature`;
  nor, beside a `top_p` that is sent, a `temperature` of 1 (Claude's default), for the same;
  any other pair goes as `temperature` alone to the Claudes that refuse both
  (`takes_one_sampler`: Opus 4.1, the 4.5 and 4.6 models), both to the older ones;
  the Claudes that refuse sampling at all (Opus 4.7 on: `takes_no_sampling`) get no
  `temperature`, `top_p` or `top_k`;
- `safety_identifier` (else `user`) → `metadata.user_id`, Anthropic's end-user id (its
  SHA-256 when longer than Anthropic takes, or an email address, which it refuses);
- parameters in DROPPED are dropped; `n` > 1 is rejected (one answer per request).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable
from typing import Any

import orjson

from streamproxy.errors import InvalidRequest
from streamproxy.openai_api.content import (
    BLANK_USER_TEXT,
    OPENAI_ONLY,
    PLACEHOLDER_USER_TEXT,
    THINKING_TYPES,
    distinct_tools,
    file_data,
    file_media_type,
    image_media_type,
    is_blank,
    logprobs_asked,
    lower_scheme,
    parse_data_url,
    reasoning_effort,
    said,
    signed_thinking,
    stood_in_for_blank,
    stop_list,
    text_parts,
    texts,
    tool_call_input,
    tool_use_id,
    with_call_ids,
)
from streamproxy.providers.anthropic.names import claude_renames, rename
from streamproxy.providers.anthropic.thinking import (
    adaptive_effort,
    adaptive_room,
    cannot_think,
    claude_temperature,
    fit_thinking,
    hyphenated,
    takes_adaptive_thinking_only,
    takes_no_sampling,
    takes_one_sampler,
)

DEFAULT_MAX_TOKENS = 4096
USER_ID_MAX = 256  # the longest metadata.user_id Anthropic documents
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")  # (an id Anthropic refuses: end_user_id)
# OpenAI parameters with no Anthropic equivalent: dropped, never forwarded.
DROPPED = (OPENAI_ONLY - {"safety_identifier"}) | {"frequency_penalty", "presence_penalty", "seed"}
# The image types Anthropic takes (`image_media_type` reads a misspelt image/jpg as jpeg).
TITLE_MAX = 500  # a document title's longest in Anthropic's API schema
IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
# Anthropic-native parameters a client may pass through (e.g. openai SDK `extra_body`):
# `cache_control` is automatic prompt caching (the breakpoint on the last cacheable block);
# `thinking` too, which also sizes `max_tokens` (fit_thinking).
PASSTHROUGH = ("top_k", "cache_control")
# The most cache_control breakpoints Anthropic takes in a request, the request's own (automatic
# caching) among them; a 5th is its 400 (on Vertex too).
MAX_BREAKPOINTS = 4
LONGEST_TTL = "1h"  # the longer of the cache lifetimes Anthropic takes (5m, the default)
SAMPLING = ("temperature", "top_p", "top_k")  # what takes_no_sampling Claudes refuse
# JSON Schema keywords whose value maps names to subschemas, and those that hold data, not a
# schema (closed_objects walks the first and leaves the second as written; a discriminator's
# mapping maps tags, any names, to references).
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions",
                          "dependentSchemas"})
_SCHEMA_DATA = frozenset({"enum", "const", "default", "examples", "discriminator"})
# Value constraints Claude's structured outputs refuse with a 400 ("For 'integer' type, property
# 'minimum' is not supported"), which OpenAI's json_schema takes (pydantic's Field(ge=…,
# max_length=…) writes them): claude_schema moves them into the description, as Anthropic's SDKs
# do, so the model still reads them. minItems is refused above 1, a format outside
# CLAUDE_FORMATS at all.
_UNSUPPORTED_CONSTRAINTS = frozenset({"minimum", "maximum", "exclusiveMinimum",
                                      "exclusiveMaximum", "multipleOf", "minLength", "maxLength",
                                      "maxItems", "uniqueItems", "minProperties",
                                      "maxProperties"})
CLAUDE_FORMATS = frozenset({"date-time", "time", "date", "duration", "email", "hostname", "uri",
                            "ipv4", "ipv6", "uuid"})
# The Claude models without structured outputs, which refuse `output_config.format` with a 400,
# as their ids on Anthropic and Vertex hold them (`claude-opus-4-1-20250805`,
# `claude-sonnet-4@20250514`): Claude 3, Claude 4 (Sonnet 4, Opus 4) and Opus 4.1, which Anthropic
# leaves out of the models it lists. They get the schema as an instruction; a model not named
# (a newer one) is taken to have them. Bedrock's Converse lists its own (NATIVE_SCHEMA_MODELS).
WITHOUT_STRUCTURED_OUTPUTS = ("claude-3-", "claude-sonnet-4-0", "claude-sonnet-4-2025",
                              "claude-sonnet-4@", "claude-opus-4-0", "claude-opus-4-2025",
                              "claude-opus-4@", "claude-opus-4-1")
# On Vertex, Anthropic lists fewer: the 4.5 models lack them there too.
VERTEX_WITHOUT_STRUCTURED_OUTPUTS = (*WITHOUT_STRUCTURED_OUTPUTS, "claude-sonnet-4-5",
                                     "claude-opus-4-5", "claude-haiku-4-5")


def to_anthropic(body: dict[str, Any], model: str,
                 without_structured_outputs: tuple[str, ...] = WITHOUT_STRUCTURED_OUTPUTS,
                 url_images: bool = True) -> dict[str, Any]:
    if (body.get("n") or 1) > 1:
        raise InvalidRequest("Anthropic returns one choice per request; 'n' must be 1.",
                             param="n", code="unsupported_value")
    logprobs_asked(body)  # dropped, but a request OpenAI refuses is refused here too
    system, messages = _messages(with_call_ids(body["messages"], "toolu_"), url_images)
    messages = drop_trailing_thinking(messages, _is_thinking)
    if not messages or ends_with_system(body["messages"], messages):
        messages.append({"role": "user", "content": [{"type": "text",
                                                      "text": PLACEHOLDER_USER_TEXT}]})
    trim_prefill(messages[-1])
    out: dict[str, Any] = {"model": model, "messages": messages}
    effort = reasoning_effort(body)  # checked for every model, as OpenAI would
    if effort is not None and cannot_think(model):
        effort = None  # (a Claude before 3.7 Sonnet: a thinking budget is its 400)
    thinking, max_tokens = fit_thinking(body, body.get("thinking"), effort, DEFAULT_MAX_TOKENS,
                                        body.get("top_k"),
                                        effort is not None and takes_adaptive_thinking_only(model))
    if thinking is not None:
        out["thinking"] = thinking
        output_config = adaptive_effort(thinking, effort, None, model)
        if output_config is not None:  # adaptive thinking's depth: Claude's effort
            out["output_config"] = output_config
    if not thinks(thinking):
        drop_final_turn_thinking(messages, _is_thinking, _is_tool_result)
    out["max_tokens"] = (max_tokens or adaptive_room(thinking, effort, DEFAULT_MAX_TOKENS)
                         or DEFAULT_MAX_TOKENS)
    for key in ("temperature", "top_p", *PASSTHROUGH):
        if body.get(key) is not None:
            out[key] = body[key]
    if "temperature" in out:
        out["temperature"] = claude_temperature(out["temperature"])
    if any(key in out for key in SAMPLING) and takes_no_sampling(model):
        for key in SAMPLING:  # (frameworks send a default temperature: a 400 on these)
            out.pop(key, None)
    if out.get("top_p") == 1:
        # No nucleus cut, as with none; newer Claude models refuse top_p beside temperature,
        # and frameworks send OpenAI's default 1 with one.
        del out["top_p"]
    elif "top_p" in out and out.get("temperature") == 1:
        del out["temperature"]  # (Claude's default: the same refusal, the other way round)
    elif "top_p" in out and "temperature" in out and takes_one_sampler(model):
        del out["top_p"]  # (two real choices: the temperature, as gateways keep)
    stop = claude_stop_sequences(body.get("stop") or [])
    if stop:
        out["stop_sequences"] = stop
    user_id = end_user_id(body)
    if user_id:
        out["metadata"] = {"user_id": user_id}
    # (asked only of a request that wants JSON or offers tools)
    native = _StructuredOutputs(model, without_structured_outputs)
    output_format = _output_format(body, system, native)
    if output_format:
        refuse_prefill(messages[-1])
        out["output_config"] = {**out.get("output_config", {}), "format": output_format}
    if system:
        out["system"] = system
    _tools(body, out, native)
    refused = claude_renames(body)  # (names Claude refuses: names.py)
    if refused:
        rename(out, refused)
    fit_breakpoints(out)
    if body.get("stream"):
        out["stream"] = True
    return out


class _StructuredOutputs:
    """Whether the model takes structured outputs (and strict tools), asked when a request
    needs to know: a plain chat request does not scan the model lists."""

    __slots__ = ("_model", "_without")

    def __init__(self, model: str, without: tuple[str, ...]) -> None:
        # An id that ends at its version (`anthropic/claude-sonnet-4`, OpenRouter's, with no
        # date) reads as one a Vertex date follows (`claude-sonnet-4@…`), which the lists
        # name: `claude-sonnet-4` alone is Claude 4, not a newer Claude.
        self._model, self._without = hyphenated(model) + "@", without

    def __bool__(self) -> bool:
        return not any(name in self._model for name in self._without)


def _output_format(body: dict[str, Any], system: list[dict[str, Any]],
                   native: _StructuredOutputs) -> dict[str, Any] | None:
    """The `output_config.format` for a json_schema answer when the model takes one (None
    otherwise); else the instruction that asks for JSON, appended to `system`."""
    fmt = body.get("response_format")
    if not fmt or fmt.get("type") not in ("json_schema", "json_object"):
        return None
    schema = response_schema(fmt)
    if schema is not None and native:
        return {"type": "json_schema", "schema": claude_schema(schema)}
    system.append({"type": "text", "text": json_instruction(schema)})
    return None


def response_schema(fmt: dict[str, Any]) -> dict[str, Any] | None:
    """A json_schema response_format's schema (None for json_object), or a 400."""
    if fmt.get("type") != "json_schema":
        return None
    schema = (fmt.get("json_schema") or {}).get("schema")
    if not isinstance(schema, dict):
        raise InvalidRequest("'response_format.json_schema.schema' must be an object.",
                             param="response_format.json_schema.schema")
    return schema


def json_instruction(schema: dict[str, Any] | None) -> str:
    """The instruction that asks for JSON where nothing enforces it (json_object, or a schema a
    model cannot take natively; on Anthropic, Vertex and Bedrock alike). The schema goes as the
    client wrote it: the model reads every constraint, the openai SDK's `parse()` checks them."""
    text = "Respond with a single valid JSON object and nothing else"
    if schema is None:
        return text + "."
    return f"{text}, matching this JSON Schema: {orjson.dumps(schema).decode()}"


def refuse_prefill(last: dict[str, Any]) -> None:
    """A 400 for a conversation that ends with an assistant turn (a prefill) beside structured
    outputs: Anthropic documents the two as incompatible (so on Bedrock, where any model's
    schema grammar starts the answer afresh, not from the prefill). Dropping the prefill instead
    would answer something else than asked: a client that prepends its prefill (`{`) to the
    answer would get broken JSON."""
    if last["role"] == "assistant":
        raise InvalidRequest(
            "Structured outputs (response_format json_schema) cannot continue a "
            "final assistant message (a prefill): end 'messages' with a user turn, or ask "
            "for json_object.", param="messages", code="unsupported_value")


def end_user_id(body: dict[str, Any]) -> Any:
    """The end user's opaque id for Anthropic's abuse detection (`metadata.user_id`): OpenAI's
    `safety_identifier`, which replaces `user` for that purpose (newer SDKs and frameworks send
    it instead), else `user`. One longer than Anthropic takes (a 400 past USER_ID_MAX, where
    OpenAI takes any) goes as its SHA-256: still one id per user, and the opaque hash
    Anthropic asks for, where a cut could merge two users. So does an email address, which
    apps send as `user` and OpenAI takes, but Anthropic answers with a 400 ("user_id appears
    to contain an email address")."""
    user_id = body.get("safety_identifier") or body.get("user")
    if isinstance(user_id, str) and (len(user_id) > USER_ID_MAX or _EMAIL.search(user_id)):
        return hashlib.sha256(user_id.encode()).hexdigest()
    return user_id


def claude_stop_sequences(stop: str | list[str]) -> list[str]:
    """`stop` as a list without its empty sequences (they cut nothing, and Claude refuses
    them: left out, as for every other provider), or a 400 for a whitespace-only one ("\n"),
    which Claude refuses too ("each stop sequence must contain non-whitespace"; on Bedrock
    too). That one is refused, not dropped: without it the answer would run past where the
    client wants it cut."""
    sequences = [sequence for sequence in stop_list(stop) if sequence]
    for sequence in sequences:
        if is_blank(sequence):
            raise InvalidRequest(f"Claude takes no stop sequence that is only whitespace "
                                 f"({sequence!r}); leave it out of 'stop'.", param="stop",
                                 code="unsupported_value")
    return sequences


def claude_schema(schema: Any) -> Any:
    """A copy of a JSON Schema in the subset Claude's structured outputs take (on Anthropic and
    Bedrock alike):
    - every object schema that does not say otherwise has `additionalProperties: false`:
      Anthropic refuses one without it ("must be explicitly set to false"), where OpenAI's
      non-strict json_schema takes one; an explicit value is kept (Anthropic's own 400 then
      says what is wrong);
    - the constraints it refuses (_UNSUPPORTED_CONSTRAINTS, a minItems above 1, a format
      outside CLAUDE_FORMATS) are moved into the schema's description."""
    if isinstance(schema, list):
        return [claude_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    moved = {}
    for key, value in schema.items():
        if key in _SCHEMA_DATA:
            out[key] = value
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: claude_schema(s) for name, s in value.items()}
        elif _refused_constraint(key, value):
            moved[key] = value
        else:
            out[key] = claude_schema(value)
    kind = schema.get("type")
    is_object = kind == "object" or (isinstance(kind, list) and "object" in kind)
    if is_object and "additionalProperties" not in schema:
        out["additionalProperties"] = False
    if moved:
        said = ", ".join(f"{key} {orjson.dumps(value).decode()}" for key, value in moved.items())
        described = out.get("description")
        note = f"Constraints: {said}."
        out["description"] = f"{described}\n{note}" if isinstance(described, str) else note
    return out


def _refused_constraint(key: str, value: Any) -> bool:
    if key == "minItems":
        return value not in (0, 1)
    if key == "format":  # (an object or array format cannot be looked up in the set)
        return not (isinstance(value, str) and value in CLAUDE_FORMATS)
    return key in _UNSUPPORTED_CONSTRAINTS


def _tools(body: dict[str, Any], out: dict[str, Any], native: _StructuredOutputs) -> None:
    tools = distinct_tools(body.get("tools") or [])
    if tools:
        out["tools"] = [_tool(t, bool(native)) for t in tools]
    choice = body.get("tool_choice")
    mapped: dict[str, Any] | None = None
    if choice == "auto":
        mapped = {"type": "auto"}
    elif choice == "none":
        mapped = {"type": "none"}
    elif choice == "required":
        mapped = {"type": "any"}
    elif isinstance(choice, dict):
        mapped = {"type": "tool", "name": choice["function"]["name"]}
    if body.get("parallel_tool_calls") is False and tools:
        mapped = mapped or {"type": "auto"}
        if mapped["type"] != "none":
            mapped["disable_parallel_tool_use"] = True
    # Only beside the tools it chooses among, as on Gemini and Converse: without tools Claude
    # calls none anyway ("none" holds), and a tool_choice alone risks Anthropic's 400.
    if mapped is not None and tools:
        out["tool_choice"] = mapped


def tool_cache_control(tool: dict[str, Any]) -> Any:
    """A tool's prompt-caching breakpoint: beside its `function` (Portkey's place) or inside it
    (LiteLLM's), the former first; None without one. (On Bedrock too, as a cachePoint.)"""
    control = tool.get("cache_control")
    return control if control is not None else (tool.get("function") or {}).get("cache_control")


def fit_breakpoints(out: dict[str, Any]) -> None:
    """Drops the breakpoints past MAX_BREAKPOINTS (Anthropic's 400 "A maximum of 4 blocks with
    cache_control may be provided"), which a client that marks every turn (LiteLLM's message
    form) or every tool sends, and OpenAI ignores: the earliest turns' go first, as the tools'
    and system's cache the prefix other conversations share, and the latest turns' the most
    of this one; then the earliest tools' and system's (a later one caches their prefix too),
    the last turn's last of all. A breakpoint decides what is cached, never the answer, so
    the request is not refused."""
    automatic = "cache_control" in out
    stable = [b for b in (*out.get("tools", ()), *out.get("system", ())) if "cache_control" in b]
    turns = [b for m in out["messages"] for b in _with_nested(m["content"])
             if "cache_control" in b]
    if len(stable) + len(turns) + automatic < 2:
        return  # (one breakpoint or none, as most requests: nothing to drop or to order)
    for block in excess_breakpoints(stable, turns, automatic):
        del block["cache_control"]
    kept = [b for b in (*stable, *turns) if "cache_control" in b]
    if automatic:  # (automatic caching: the last breakpoint)
        kept.append(out)
    controls = [b["cache_control"] for b in kept]
    # (a marker that is no object is Anthropic's 400 to give, never raised here)
    for i in shorter_before_longer([c.get("ttl") if isinstance(c, dict) else False
                                    for c in controls]):
        kept[i]["cache_control"] = {**controls[i], "ttl": LONGEST_TTL}  # (a copy: the client's)


def excess_breakpoints(stable: list[Any], turns: list[Any], automatic: bool) -> list[Any]:
    """Of the breakpoints in the tools and system (`stable`) and in the turns, in the prompt's
    order, those to drop to keep MAX_BREAKPOINTS (the request's own one among them when
    `automatic`), in the order fit_breakpoints gives (on Bedrock too, as cachePoints)."""
    excess = len(stable) + len(turns) + automatic - MAX_BREAKPOINTS
    return (turns[:-1] + stable + turns[-1:])[:max(excess, 0)]


def shorter_before_longer(ttls: list[Any]) -> list[int]:
    """Of the breakpoints' `ttl`s in the prompt's order (None: none, 5m), the indexes of the 5m
    ones before a LONGEST_TTL one, to send as LONGEST_TTL: Anthropic takes mixed lifetimes
    only longest first ("a 1-hour cache entry must appear before any 5-minute cache entries",
    its 400 otherwise; so Converse's cachePoints), and clients mark a prompt a framework
    caches (no ttl) and a document an hour. The 1h breakpoint caches the prefix before it
    for an hour, billed as 1h writes up to it anyway: raised, the earlier ones cost no more,
    and every breakpoint stays. (Dropping the 1h would cut a lifetime the client paid for.)"""
    last = max((i for i, ttl in enumerate(ttls) if ttl == LONGEST_TTL), default=-1)
    return [i for i in range(last) if ttls[i] in (None, "5m")]


def _with_nested(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`blocks` with a tool_result's own blocks before it, in the prompt's order."""
    out = []
    for block in blocks:
        if block.get("type") == "tool_result" and isinstance(block.get("content"), list):
            out.extend(block["content"])
        out.append(block)
    return out


def _tool(t: dict[str, Any], native: bool) -> dict[str, Any]:
    fn = t["function"]
    schema = fn.get("parameters") or {"type": "object", "properties": {}}
    # A model without structured outputs refuses strict tools too ("does not support strict
    # tools"): it gets the tool as a non-strict one, its inputs unenforced.
    strict = fn.get("strict") is True and native
    # Strict tool use takes the schema subset structured outputs take (claude_schema).
    tool = {"name": fn["name"], "input_schema": claude_schema(schema) if strict else schema}
    if fn.get("description"):
        tool["description"] = fn["description"]
    if strict:  # strict tool use: inputs that match the schema, as on OpenAI
        tool["strict"] = True
    control = tool_cache_control(t)
    if control is not None:
        tool["cache_control"] = control
    return tool


def _messages(msgs: list[dict[str, Any]], url_images: bool
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    blank: dict[str, Any] | None = None  # the last BLANK_USER_TEXT block put in
    late_system = False  # a system message came after the last turn, an assistant one
    for i, m in enumerate(msgs):
        role = m["role"]
        if role in ("system", "developer"):
            system.extend(_marked(_text_blocks(m.get("content"), f"messages[{i}].content"), m))
            late_system = late_system or (bool(out) and out[-1]["role"] == "assistant")
            continue
        if role == "user":
            blocks = _user_blocks(m.get("content"), i, url_images)
            role_out = "user"
        elif role == "assistant":
            blocks = _assistant_blocks(m, i)
            role_out = "assistant"
        elif role == "tool":
            blocks = [_tool_result(m, i, url_images)]
            role_out = "user"
        else:  # legacy "function" role: no tool_call_id to pair it with
            raise InvalidRequest("The legacy 'function' role is not supported; use 'tool'.",
                                 param=f"messages[{i}].role", code="unsupported_value")
        if not blocks:
            if role != "user" or not out or out[-1]["role"] != "assistant":
                continue  # nothing vanishes: a user turn is there, or no turn yet
            blank = {"type": "text", "text": BLANK_USER_TEXT}
            blocks = [blank]
        _marked(blocks, m)
        if (late_system and role_out == "assistant" and out[-1]["role"] == "assistant"
                and not all(_is_thinking(b) for b in blocks)):
            # An assistant message after [assistant, system] answered the request that ended
            # there, which had a PLACEHOLDER_USER_TEXT turn (ends_with_system): replayed with
            # it, not merged into the turn before (where its thinking, not first, is a 400).
            out.append({"role": "user", "content": [{"type": "text",
                                                     "text": PLACEHOLDER_USER_TEXT}]})
        late_system = False
        if out and out[-1]["role"] == role_out:
            # Tool results must lead the user turn that follows a tool_use turn.
            prev = out[-1]["content"]
            if stood_in_for_blank(prev, blank):  # the turn has its user message now
                out[-1]["content"] = blocks
            elif role == "tool" and prev and prev[-1].get("type") != "tool_result":
                out[-1]["content"] = [b for b in prev if b.get("type") == "tool_result"] + \
                    blocks + [b for b in prev if b.get("type") != "tool_result"]
            else:
                prev.extend(blocks)
        else:
            out.append({"role": role_out, "content": blocks})
    return system, out


def drop_trailing_thinking(messages: list[dict[str, Any]],
                           is_thinking: Callable[[dict[str, Any]], bool]
                           ) -> list[dict[str, Any]]:
    """`messages` without thinking at the end of an assistant turn, which Claude refuses ("The
    final block in an assistant message cannot be `thinking`"; on Bedrock too) and clients
    send back for a turn that only thought (cut off while thinking, or its text blank). That
    thinking led to nothing the history keeps: it is dropped, and a turn left empty with it;
    the turns around one merge, as consecutive turns of a role do."""
    kept: list[dict[str, Any]] = []
    for message in messages:
        blocks = message["content"]
        if message["role"] == "assistant":
            while blocks and is_thinking(blocks[-1]):
                blocks.pop()
            if not blocks:
                continue
        if kept and kept[-1]["role"] == message["role"]:
            kept[-1]["content"].extend(blocks)
        else:
            kept.append(message)
    return kept


def drop_final_turn_thinking(messages: list[dict[str, Any]],
                             is_thinking: Callable[[dict[str, Any]], bool],
                             is_tool_result: Callable[[dict[str, Any]], bool]) -> None:
    """Leaves out the thinking of Claude's final turn (its assistant messages since the user
    message that began it; tool results continue a turn) for a request that does not think:
    Claude refuses it there ("When thinking is disabled, an `assistant` message in the final
    position cannot contain `thinking`"; on Bedrock too), where OpenAI answers a loop or a
    prefill continued without reasoning_effort. Claude would not read it anyway, as it does
    not an earlier turn's, which is sent as it came. (drop_trailing_thinking has run: no
    message is left empty.)"""
    for message in reversed(messages):
        blocks = message["content"]
        if message["role"] == "assistant":
            message["content"] = [block for block in blocks if not is_thinking(block)]
        elif not any(is_tool_result(block) for block in blocks):
            return


def _is_thinking(block: dict[str, Any]) -> bool:
    return block.get("type") in THINKING_TYPES


def _is_tool_result(block: dict[str, Any]) -> bool:
    return block.get("type") == "tool_result"


def thinks(thinking: Any) -> bool:
    """Whether a request's `thinking` (Anthropic's object, as sent) turns thinking on."""
    return isinstance(thinking, dict) and thinking.get("type") != "disabled"


def ends_with_system(msgs: list[dict[str, Any]], turns: list[dict[str, Any]]) -> bool:
    """Whether the request ends with system/developer messages (hoisted into the system prompt)
    after what is now the final assistant turn. OpenAI answers such a request anew, as the
    system message asks; sent as it is, Claude would continue that turn as a prefill (and Claude
    4.6 and later refuse one with a 400 naming a prefill the client never sent), so it gets a
    PLACEHOLDER_USER_TEXT turn, as a request of system messages alone does."""
    return turns[-1]["role"] == "assistant" and msgs[-1].get("role") in ("system", "developer")


def trim_prefill(last: dict[str, Any]) -> None:
    """A final assistant turn is the start of Claude's answer (a prefill), which Claude refuses
    when it ends in whitespace ("final assistant content cannot end with trailing whitespace";
    on Bedrock too); OpenAI takes such a turn as it is. Anthropic's text blocks and Converse's
    both hold their text in `text`, and no other block has one. Converse's `cachePoint` (a
    prompt-caching marker) follows the block it caches: the text before it is what ends the
    turn."""
    if last["role"] != "assistant":
        return
    for block in reversed(last["content"]):
        if "cachePoint" not in block:
            if "text" in block:
                block["text"] = block["text"].rstrip()
            return


def _text_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    # Anthropic refuses a text block without non-whitespace text (see is_blank); Claude's
    # own "\n\n" before a tool call comes back so in the next turn's history.
    if isinstance(content, list):
        return [_cached({"type": "text", "text": part["text"]}, part)
                for part in text_parts(content, where) if not is_blank(part["text"])]
    return [{"type": "text", "text": t} for t in texts(content, where) if not is_blank(t)]


def _cached(block: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
    """`block` with the `cache_control` of the part or tool it was made from: the client's
    prompt-caching breakpoint, which Anthropic takes on the same block."""
    if source.get("cache_control") is not None:
        block["cache_control"] = source["cache_control"]
    return block


def _marked(blocks: list[dict[str, Any]], message: dict[str, Any]) -> list[dict[str, Any]]:
    """`blocks` with the `cache_control` of the message they were made from (LiteLLM's form, the
    only one a string content can carry) on the last: a breakpoint there caches the prompt
    through the message's end. A part's own marker there is kept, with the longer lifetime of
    the two (the client asked that prefix cached an hour); a thinking block, which cannot hold
    one, is left alone."""
    control = message.get("cache_control")
    if control is not None and blocks and blocks[-1].get("type") not in THINKING_TYPES:
        own = blocks[-1].setdefault("cache_control", control)
        if (isinstance(control, dict) and control.get("ttl") == LONGEST_TTL
                and isinstance(own, dict) and own.get("ttl") in (None, "5m")):
            blocks[-1]["cache_control"] = {**own, "ttl": LONGEST_TTL}  # (a copy: the client's)
    return blocks


def _user_blocks(content: Any, i: int, url_images: bool) -> list[dict[str, Any]]:
    if not isinstance(content, list):
        return _text_blocks(content, f"messages[{i}].content")
    blocks = []
    for j, part in enumerate(content):
        kind = part.get("type")
        where = f"messages[{i}].content[{j}]"
        if kind == "text":
            if not is_blank(part.get("text")):
                blocks.append(_cached({"type": "text", "text": part["text"]}, part))
        elif kind == "image_url":
            url = (part.get("image_url") or {}).get("url")
            source = _image_source(url, f"{where}.image_url.url", url_images)
            blocks.append(_cached({"type": "image", "source": source}, part))
        elif kind == "file":
            file = part.get("file") or {}
            data = file_data(file, f"{where}.file", "Anthropic")
            document = {"type": "document",
                        "source": _document_source(data, f"{where}.file.file_data")}
            filename = file.get("filename")
            if isinstance(filename, str) and filename:
                # Claude reads the title (and cites by it): the name the user knows the file by
                document["title"] = filename[:TITLE_MAX]
            blocks.append(_cached(document, part))
        else:
            raise InvalidRequest(f"Content part type '{kind}' is not supported by Anthropic.",
                                 param=f"{where}.type", code="unsupported_value")
    return blocks


def _image_source(url: Any, where: str, url_images: bool) -> dict[str, Any]:
    url = lower_scheme(url)
    if isinstance(url, str) and url.startswith("data:"):
        media_type, data = parse_data_url(url, where)
        media_type = image_media_type(data, media_type)  # the bytes' type: Anthropic checks
        if media_type not in IMAGE_MEDIA_TYPES:
            raise InvalidRequest(f"Anthropic takes png, jpeg, gif or webp images, not "
                                 f"{media_type}.", param=where, code="unsupported_value")
        return {"type": "base64", "media_type": media_type, "data": data}
    if isinstance(url, str) and url.startswith(("http://", "https://")):
        if not url_images:  # (Claude on Vertex: "URL sources are not supported")
            raise InvalidRequest("Claude on this provider takes images as data: URLs (base64), "
                                 "not http(s) URLs, and the proxy fetches none.", param=where,
                                 code="unsupported_value")
        return {"type": "url", "url": url}
    raise InvalidRequest("Expected a data: URL or an http(s) URL.", param=where,
                         code="invalid_value")


def _document_source(url: Any, where: str) -> dict[str, Any]:
    url = lower_scheme(url)
    if not isinstance(url, str) or not url.startswith("data:"):
        raise InvalidRequest("Expected a data: URL.", param=where, code="invalid_value")
    media_type, data = parse_data_url(url, where)
    media_type = file_media_type(data, media_type)  # a PDF's bytes say so, whatever its label
    if media_type == "application/pdf":
        return {"type": "base64", "media_type": media_type, "data": data}
    if media_type.startswith("text/"):  # Anthropic's text source is text/plain, not base64
        return {"type": "text", "media_type": "text/plain", "data": _utf8_text(data, where)}
    raise InvalidRequest(f"Anthropic takes PDF and text files as documents, not {media_type}.",
                         param=where, code="unsupported_value")


def _utf8_text(data: str, where: str) -> str:
    try:
        return base64.b64decode(data, validate=True).decode("utf-8")
    except ValueError:  # bad base64 (binascii.Error), non-ASCII in it, or not UTF-8
        raise InvalidRequest("A text file must be UTF-8 text, base64-encoded in its data: URL.",
                             param=where, code="invalid_value") from None


def _assistant_blocks(m: dict[str, Any], i: int) -> list[dict[str, Any]]:
    blocks = [block for tb in signed_thinking(m) for block in _thinking_block(tb)]
    blocks.extend(_text_blocks(said(m), f"messages[{i}].content"))
    for j, call in enumerate(m.get("tool_calls") or []):
        fn = call["function"]
        call_id = tool_use_id(call.get("id") or f"toolu_{i}_{j}")
        blocks.append({"type": "tool_use", "id": call_id, "name": fn["name"],
                       "input": tool_call_input(fn.get("arguments"))})
    return blocks


def _thinking_block(tb: Any) -> list[dict[str, Any]]:
    """A thinking block sent back as Anthropic takes it, or none: Anthropic refuses a thinking
    block without its signature ("thinking.signature: Field required") and fields it does not
    know, and an unsigned one (another provider's reasoning) cannot be verified anyway, so it
    is left out, as on Bedrock."""
    if not isinstance(tb, dict):
        return []
    if tb.get("type") == "thinking" and tb.get("signature"):
        return [{"type": "thinking", "thinking": tb.get("thinking") or "",
                 "signature": tb["signature"]}]
    if tb.get("type") == "redacted_thinking" and tb.get("data"):
        return [{"type": "redacted_thinking", "data": tb["data"]}]
    return []


def _tool_result(m: dict[str, Any], i: int, url_images: bool) -> dict[str, Any]:
    """A tool message's result. One without text (a command that printed nothing, or only
    "\n") goes without `content`, which Anthropic's tool_result may leave out: a blank string
    there is a text block Claude refuses (see is_blank), and the tool loop could not go on.
    Image and file parts (a computer-use agent's screenshot, an MCP tool's image) go as the
    image and document blocks Anthropic's tool_result takes, as in a user message."""
    content = m.get("content")
    result: dict[str, Any] = {"type": "tool_result",
                              "tool_use_id": tool_use_id(m["tool_call_id"])}
    if isinstance(content, list):
        media = any(part.get("type") in ("image_url", "file") for part in content)
        blocks = (_user_blocks(content, i, url_images) if media
                  else _text_blocks(content, f"messages[{i}].content"))
        if blocks:
            result["content"] = blocks
    elif not is_blank(content):
        result["content"] = content
    return result
