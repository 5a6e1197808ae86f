"""OpenAI Chat Completions request → Ollama `/api/chat` request (pure).

Choices (docs/providers/others.md "ollama"):
- system and developer messages stay in place as `system` messages; a message's text parts
  go as one string, a line between each;
- images: `image_url` parts must be `data:` URLs, sent as the message's base64 `images` list
  (Ollama takes no URLs, and the proxy fetches nothing on a client's behalf); one of a type
  neither of Ollama's image decoders reads (IMAGE_TYPES; the bytes' type where they show one,
  else the label's), a PDF or an SVG, is a 400;
- assistant tool calls go back with their arguments as objects; a tool result carries the
  function's name (`tool_name`), looked up from the assistant call it answers, and a turn's
  results go in the order of its calls (they go without call ids: see `_messages`);
- an assistant turn's reasoning (`reasoning_content`, where we stream Ollama's `thinking`, or
  another provider's name for it: `replayed_reasoning`) goes back as its `thinking`:
  Ollama's docs ask for it in the history, and gpt-oss, which reasons before its tool calls,
  otherwise loses why it made them;
- `tool_choice: "none"` sends no tools; a named tool_choice sends only that tool; Ollama has no
  way to force a call, so `"required"` is best effort (documented);
- `response_format` json_object → `format: "json"`, json_schema → `format: <schema>`; a
  client's native `format` (extra_body: "json" or a schema) goes as it is, and wins;
- max tokens, temperature, top_p, stop, seed and the penalties go in `options`, and so do
  Ollama's option names sent at the top level (OPTIONS: num_ctx, num_predict, min_p, ...;
  max_tokens wins over num_predict), and
  `repetition_penalty` (vLLM's name) as `repeat_penalty`; a client's native
  `options` (extra_body) and the provider's configured `options` sit underneath; a
  client's option of a type Ollama does not read (OPTION_TYPES) is a 400 naming it;
- `reasoning_effort` → `think`: "none" → false, any other level → true, since most thinking
  models refuse a level ("think value … is not supported for this model"); gpt-oss models
  (the name contains "gpt-oss") take levels, so they get one ("minimal" and "none" → "low":
  gpt-oss cannot stop reasoning). A client's own `think` wins;
- `logprobs` and `top_logprobs` (0 to 20 in both) go as they are;
- `keep_alive` (extra_body) goes as it is when Ollama reads it (a Go duration string, "5m", or
  a number of seconds), else it is a 400 naming it;
- `truncate` and `shift` (extra_body) go as they are when they are booleans, else a 400 naming
  them;
- parameters in DROPPED are dropped; `n` > 1 is rejected.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from typing import Any

from streamproxy.errors import InvalidRequest
from streamproxy.openai_api.content import (
    OPENAI_ONLY,
    UNMATCHED_PLACE,
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
    tool_call_input,
    with_call_ids,
)

DROPPED = (OPENAI_ONLY - {"logprobs", "top_logprobs"}) | {"user", "parallel_tool_calls"}
# Ollama's switches for a prompt over the context (extra_body): `truncate: false` refuses it
# (a 400, context_length_exceeded) where Ollama cuts the history's start in silence; `shift:
# false` ends the answer at the context's end (`length`) where it slides the context.
SWITCHES = ("truncate", "shift")
# The image types one of Ollama's two decoders reads: its own engine's (Go's image package:
# png, jpeg, webp, bmp, tiff) or llama.cpp's, for the models that engine does not run yet
# (stb_image: png, jpeg, gif, bmp). Which one reads a model's images is Ollama's choice, so a
# type either reads goes on; an SVG, HEIC or AVIF neither does.
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp",
                         "image/x-ms-bmp", "image/tiff"})
THINK_LEVEL = {"none": False, "minimal": "low", "low": "low", "medium": "medium",
               "high": "high", "xhigh": "high", "max": "high"}
LEVELS_MODEL = "gpt-oss"  # models whose `think` takes a level, not only true/false


def to_ollama(body: dict[str, Any], model: str, *, stream: bool,
              defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """`defaults`: the provider's configured `options` (e.g. num_ctx)."""
    if (body.get("n") or 1) > 1:
        raise InvalidRequest("Ollama returns one choice per request; 'n' must be 1.",
                             param="n", code="unsupported_value")
    native = body.get("options") or {}
    if not isinstance(native, dict):
        raise InvalidRequest("'options' must be an object.", param="options",
                             code="invalid_type")
    for name, value in native.items():
        _check_option(str(name), value, f"options.{name}")
    out: dict[str, Any] = {"model": model,
                           "messages": _messages(with_call_ids(body["messages"], "call_")),
                           "stream": stream}
    options = _options(body, {**(defaults or {}), **native})
    if options:
        out["options"] = options
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_object":
        out["format"] = "json"
    elif fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise InvalidRequest("'response_format.json_schema.schema' must be an object.",
                                 param="response_format.json_schema.schema")
        out["format"] = schema
    if body.get("format") is not None:  # Ollama's own (extra_body) wins, as `think` does
        out["format"] = body["format"]
    effort = reasoning_effort(body)  # checked even where a native `think` wins
    if "think" in body:
        out["think"] = body["think"]
    elif effort is not None:
        out["think"] = _think(effort, model)
    if body.get("keep_alive") is not None:
        if not is_duration(body["keep_alive"]):
            raise InvalidRequest("'keep_alive' must be a duration string (e.g. \"5m\") or a "
                                 "number of seconds.", param="keep_alive", code="invalid_type")
        out["keep_alive"] = body["keep_alive"]
    for key in SWITCHES:
        if body.get(key) is not None:
            if not isinstance(body[key], bool):
                raise InvalidRequest(f"'{key}' must be a boolean.", param=key,
                                     code="invalid_type")
            out[key] = body[key]
    if logprobs_asked(body):  # Ollama 0.12.11 and later; older ones ignore both
        out["logprobs"] = True
        if body.get("top_logprobs"):
            out["top_logprobs"] = body["top_logprobs"]
    tools = _tools(body)
    if tools:
        out["tools"] = tools
    return out


# Go's time.ParseDuration, which Ollama reads a keep_alive string with: a unit on every number
# ("300" or "-1" is its 400 "time: missing unit in duration", naming no field), "0" alone aside.
_GO_DURATION = re.compile(r"[-+]?(?:0|(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
                          r"(?:ns|us|\u00b5s|\u03bcs|ms|s|m|h))+)")


def is_duration(value: Any) -> bool:
    """Whether Ollama reads `value` as a keep_alive: a Go duration string or a number of
    seconds (anything else is its 400, "Unsupported type"). A bool is no number to it, but an
    int to Python (and YAML's true/no are bools)."""
    if isinstance(value, str):
        return _GO_DURATION.fullmatch(value) is not None
    return isinstance(value, int | float) and not isinstance(value, bool)


# The types Ollama reads its options as (api/types.go `Options`, `Runner`): one of another type
# fails every request that carries it (`option "num_ctx" must be of type integer`). An integer
# option takes any number (Ollama drops a fraction); a bool is none (JSON's true is no number).
OPTION_TYPES = {
    **dict.fromkeys(("num_keep", "seed", "num_predict", "top_k", "repeat_last_n", "num_ctx",
                     "num_batch", "num_gpu", "main_gpu", "num_thread", "mirostat",
                     "temperature", "top_p", "min_p", "typical_p", "tfs_z", "repeat_penalty",
                     "presence_penalty", "frequency_penalty", "mirostat_tau", "mirostat_eta"),
                    "a number"),
    **dict.fromkeys(("numa", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mmap",
                     "use_mlock", "penalize_newline"), "a boolean"),
    "stop": "a list of strings",
}
# Parameters that go into `options` under the same name: OpenAI's sampling ones, and every one
# of Ollama's option names a client sends at the top level (extra_body, as LiteLLM's
# ollama_chat passes them on; Ollama documents them in `options` only): dropped, a num_ctx left
# Ollama's default context, which cuts a long prompt's start in silence, and a num_predict its
# default length. (`stop` is OpenAI's, a string or a list; max_tokens wins over num_predict.)
OPTIONS = tuple(name for name in OPTION_TYPES if name != "stop")


def option_type_error(name: str, value: Any) -> str | None:
    """What `value` of Ollama's option `name` must be, when Ollama would refuse it; None when it
    reads it (or does not know the name, which it ignores)."""
    kind = OPTION_TYPES.get(name)
    if kind is None or value is None:  # (Ollama skips a null)
        return None
    if kind == "a boolean":
        fits = isinstance(value, bool)
    elif kind == "a number":
        fits = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        fits = isinstance(value, list) and all(isinstance(item, str) for item in value)
    return None if fits else f"must be {kind}"


def _check_option(name: str, value: Any, param: str) -> None:
    # Ollama answers an option of the wrong type with its 500 (`option "num_ctx" must be of
    # type integer`): a server error, retried and fallen back on, for the client's mistake.
    problem = option_type_error(name, value)
    if problem:
        raise InvalidRequest(f"'{param}' {problem}.", param=param, code="invalid_type")


def _options(body: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """`options` (the configured ones under the client's native ones) with the request's
    sampling and length parameters over them."""
    for key in OPTIONS:
        if body.get(key) is not None:
            _check_option(key, body[key], key)
            options[key] = body[key]
    max_tokens = answer_cap(body)
    if max_tokens:
        options["num_predict"] = max_tokens
    if body.get("repetition_penalty") is not None and body.get("repeat_penalty") is None:
        # vLLM's and OpenRouter's name for llama.cpp's multiplicative penalty (1.0: none)
        _check_option("repeat_penalty", body["repetition_penalty"], "repetition_penalty")
        options["repeat_penalty"] = body["repetition_penalty"]
    # Ollama's runner stops at once on an empty sequence (an empty answer): it cuts nothing, so
    # it goes, as on Gemini and Bedrock; a list left empty too, since `stop: []` would replace
    # the model's own stop tokens.
    stop = [sequence for sequence in stop_list(body.get("stop") or []) if sequence]
    if stop:
        options["stop"] = stop
    return options


def _think(effort: str, model: str) -> bool | str:
    level = THINK_LEVEL[effort]
    if LEVELS_MODEL in model.lower():
        # gpt-oss always reasons: `false` sets it no level (it reasons at its default, medium;
        # ollama/ollama#11751) and beside a `format` left its answer empty. Low is its least,
        # as on Bedrock.
        return level or "low"
    return level is not False


def _tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    tools = distinct_tools(body.get("tools") or [])
    choice = body.get("tool_choice")
    if choice == "none":
        return []
    if isinstance(choice, dict):
        name = choice["function"]["name"]
        tools = [t for t in tools if t["function"]["name"] == name]
        if not tools:
            raise InvalidRequest(f"tool_choice names '{name}', which is not in 'tools'.",
                                 param="tool_choice", code="invalid_value")
    return [{"type": "function", "function": {
        k: v for k, v in t["function"].items() if k in ("name", "description", "parameters")
    }} for t in tools]


def _messages(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    # tool call id → (function name, the call's place among its turn's calls) of each call of
    # that id not yet answered, for its result: a turn's calls can share an id (servers that
    # number each answer's calls alike), and their results answer them in order.
    asked: dict[str, list[tuple[str, int]]] = {}
    turn: dict[str, list[tuple[str, int]]] = {}  # those of the latest turn's calls
    places: list[int] = []  # those places, for the tool results that end `out`, in order
    for i, m in enumerate(msgs):
        role = m["role"]
        if role in ("system", "developer"):
            out.append({"role": "system", "content": _text(m.get("content"), i)})
        elif role == "user":
            out.append(_user(m.get("content"), i))
        elif role == "assistant":
            msg: dict[str, Any] = {"role": "assistant", "content": _text(said(m), i)}
            thinking = replayed_reasoning(m)
            if thinking:
                msg["thinking"] = thinking
            calls = []
            first = _calls_asked(out)
            if not first:  # a new turn (not an assistant message after one with calls)
                turn = {}
            for j, call in enumerate(m.get("tool_calls") or []):
                fn = call["function"]
                turn.setdefault(call.get("id") or "", []).append((fn["name"], first + j))
                # An object, which Ollama requires (a non-object JSON value is wrapped).
                arguments = tool_call_input(fn.get("arguments"))
                calls.append({"function": {"name": fn["name"], "arguments": arguments}})
            asked.update(turn)  # an earlier turn's calls of these ids were answered before
            if calls:
                msg["tool_calls"] = calls
            out.append(msg)
        elif role == "tool":
            msg = {"role": "tool", "content": _text(m.get("content"), i)}
            known: tuple[str, int] | None = None
            calls_of_id = asked.get(m["tool_call_id"])
            if calls_of_id:  # its first call not answered yet (the last stays for a repeat)
                known = calls_of_id.pop(0) if len(calls_of_id) > 1 else calls_of_id[0]
            if known:
                msg["tool_name"] = known[0]
            # Calls and results go without ids (a name at most): the model reads a turn's results
            # in order, so one answered out of order (as each finished) goes where its call is.
            if not out or out[-1]["role"] != "tool":
                places = []
            place = known[1] if known else UNMATCHED_PLACE
            at = bisect_right(places, place)
            out.insert(len(out) - len(places) + at, msg)
            places.insert(at, place)
        else:
            raise InvalidRequest("The legacy 'function' role is not supported; use 'tool'.",
                                 param=f"messages[{i}].role", code="unsupported_value")
    return out


def _calls_asked(out: list[dict[str, Any]]) -> int:
    """The calls of the assistant messages that end `out`: one turn's, answered by the tool
    results after them, so a next assistant message's calls take their places after these."""
    count = 0
    for msg in reversed(out):
        if msg["role"] != "assistant":
            break
        count += len(msg.get("tool_calls", ()))
    return count


def _text(content: Any, i: int) -> str:
    # Parts are separate pieces of text (Ollama's own OpenAI endpoint makes each a message): a
    # line between them, as for a user's, so words do not run together.
    return "\n".join(texts(content, f"messages[{i}].content"))


def _user(content: Any, i: int) -> dict[str, Any]:
    if not isinstance(content, list):
        return {"role": "user", "content": content or ""}
    text, images = [], []
    for j, part in enumerate(content):
        kind = part.get("type")
        if kind == "text":
            if part.get("text"):  # an empty part adds no blank line (as `texts` for others)
                text.append(part["text"])
        elif kind == "image_url":
            images.append(_image(part, f"messages[{i}].content[{j}].image_url.url"))
        else:
            raise InvalidRequest(f"Content part type '{kind}' is not supported by Ollama.",
                                 param=f"messages[{i}].content[{j}].type",
                                 code="unsupported_value")
    msg: dict[str, Any] = {"role": "user", "content": "\n".join(text)}
    if images:
        msg["images"] = images
    return msg


def _image(part: dict[str, Any], where: str) -> str:
    url = lower_scheme((part.get("image_url") or {}).get("url"))
    if not isinstance(url, str) or not url.startswith("data:"):
        raise InvalidRequest("Ollama takes images as data: URLs (data:<mime>;base64,<data>).",
                             param=where, code="invalid_value")
    mime, data = parse_data_url(url, where)
    # `images` carries bare base64, so the label goes no further: Ollama would try to decode
    # a PDF or an SVG as an image, and answer its decode error, naming no part. The type is
    # the bytes' where they show one (a label may be generic, application/octet-stream, or
    # wrong), else the label's.
    mime = image_media_type(data, mime)
    if mime not in IMAGE_TYPES:
        raise InvalidRequest(f"Ollama takes png, jpeg, webp, gif, bmp or tiff images, not "
                             f"{mime}.", param=where, code="unsupported_value")
    return data
