"""OpenAI Chat Completions request → Gemini `GenerateContentRequest` (pure).
provider-streams.md §4.2; choices documented in docs/providers/gemini.md.

- system/developer messages are joined, in order, into `systemInstruction` (for Gemma 1 to 3,
  which refuse one, they open the first user turn); a request with no other message, or whose
  conversation starts with the assistant, gets a PLACEHOLDER_USER_TEXT user turn first (Gemini
  refuses contents that open with a model turn), and one whose system messages follow the
  final assistant turn gets one last (`_ends_with_system`: answered anew, not continued), and
  so, in a later request, does one between them and the assistant message that answered them;
- a user message with no text (empty, null, only empty parts: Gemini refuses an empty text
  part) that answers a model turn is BLANK_USER_TEXT, so the request still ends with the user;
  whitespace-only text, which Gemini takes, goes as it is;
- consecutive messages of one role are merged into one `content` (Gemini wants alternating
  turns, and all function responses of a turn in one content), except that function responses
  and user text or media never share one (see `_holds_results`);
- a tool result's function name is looked up from the assistant `tool_calls` that asked for it;
  a result that is not a JSON object is wrapped as `{"output": …}` (the key Google documents);
- a turn's function responses go in the order of the calls they answer, whatever order the
  client sent them in (see `_contents`);
- thought signatures come back from the client in the accepted forms (see `_signatures`
  and `_model_parts`) and are put back on the part they were received with; for Gemini 3 a
  function call that comes back without one gets Google's SKIP_SIGNATURE_CHECK value;
- ids we generated for Gemini calls that had none (`call_…`) are never sent upstream;
- penalties only to the models that take them (`_takes_penalties`), and never a 0;
- `logprobs` → `responseLogprobs`, `top_logprobs` → `logprobs` (the count: both 0 to 20);
- `modalities` with `image` → `responseModalities` (image models answer with images);
- `web_search_options`, and a function tool named `google_search` / `googleSearch`, →
  the `googleSearch` tool (LiteLLM's and Portkey's mappings): Google Search grounding;
- JSON Schemas (`response_format`, tool parameters) in the form Gemini reads (schema.py);
- function names Gemini refuses (a digit first, a space, over 64 characters) renamed (names.py);
- a JSON `response_format` is left out beside a forced call for Gemini 1.x and 2.x (which refuse
  the two together);
- parameters in DROPPED are dropped; `n` > 1 is rejected.
"""

from __future__ import annotations

import mimetypes
import re
from bisect import bisect_right
from typing import Any

import orjson

from streamproxy.errors import InvalidRequest
from streamproxy.openai_api.content import (
    BLANK_USER_TEXT,
    OPENAI_ONLY,
    PLACEHOLDER_USER_TEXT,
    UNMATCHED_PLACE,
    answer_cap,
    base64_text,
    distinct_tools,
    file_media_type,
    loads_embedded,
    logprobs_asked,
    lower_scheme,
    parse_data_url,
    reasoning_effort,
    said,
    stood_in_for_blank,
    stop_list,
    texts,
    tool_call_input,
    with_call_ids,
)
from streamproxy.providers.gemini.names import declared, rename
from streamproxy.providers.gemini.schema import gemini_schema

# OpenAI parameters with no Gemini equivalent: dropped, never forwarded.
DROPPED = ((OPENAI_ONLY - {"logprobs", "top_logprobs", "modalities", "web_search_options"})
           | {"user", "parallel_tool_calls"})
# Gemini-native settings a client may pass (openai SDK `extra_body`), forwarded as given.
PASSTHROUGH_TOP = {"safety_settings": "safetySettings", "cached_content": "cachedContent"}
# The tool-call id suffix LiteLLM uses to carry a signature; accepted on the way in.
LITELLM_SIGNATURE_SEP = "__thought__"
SIGNATURE_BLOCK = "thought_signature"  # `thinking_blocks[].type` we emit and read back
GENERATED_ID_PREFIX = "call_"  # ids the proxy made up for calls Gemini sent without one
# The value Google documents for a function call whose signature is not known (a client that
# kept only the OpenAI fields, a history from another model): Gemini 3 then skips its check
# rather than answer the turn with a 400 ("Function call is missing a thought_signature").
SKIP_SIGNATURE_CHECK = "skip_thought_signature_validator"
# Function tool names that ask for Gemini's Google Search tool (grounding the answer in search
# results, with the sources in `groundingMetadata`) rather than declare a function; Portkey's.
GOOGLE_SEARCH_NAMES = frozenset({"google_search", "googleSearch"})
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")  # a URL's start (RFC 3986); an id has none
# `input_audio.format`s Gemini reads (audio/<format>; Google's audio docs): OpenAI's wav and
# mp3 first, then Gemini's own.
AUDIO_FORMATS = ("wav", "mp3", "aiff", "aac", "ogg", "flac")
DEFAULT_IMAGE_MIME = "image/jpeg"  # for an image URL whose extension names no type
# The image types Gemini reads (Google's image-understanding docs; an image/gif, bmp, tiff… is
# its 400 "Unsupported MIME type"). Other media (audio, video, PDF, text) go as labelled, in
# image_url too, LiteLLM's convention for Gemini.
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/heic", "image/heif"})
# reasoning_effort → Gemini 2.x thinking budget / Gemini 3 thinking level. high, xhigh and max
# get the most each takes (2.5 Flash's budget tops out at 24576, a level at high but on
# TAKES_XHIGH).
THINKING_BUDGET = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576,
                   "xhigh": 24576, "max": 24576}
# Gemini 2.5 Pro cannot turn thinking off: its budget goes from 128 (Google's thinking docs;
# a 0 is its 400), so "none" asks for the least it takes.
PRO_MIN_BUDGET = 128
# Gemma 1 to 3 have no system role: the Gemini API answers a systemInstruction with a 400
# ("Developer instruction is not enabled for models/gemma-3-27b-it"), so their instructions
# open the first user turn, where Gemma's own docs put them.
NO_SYSTEM_ROLE = re.compile(r"(?:^|/)gemma-[1-3](?![0-9])")
# The Gemini releases that take presencePenalty / frequencyPenalty: 1.5 (its 002 versions) and
# 2.0 (Google's "New in 002" cookbook); see _takes_penalties.
TAKES_PENALTIES = re.compile(r"gemini-(?:1\.|2\.0)")
PENALTIES = (("presence_penalty", "presencePenalty"), ("frequency_penalty", "frequencyPenalty"))
# Models that do not think and answer any thinkingConfig with a 400 ("Thinking is not enabled
# for models/gemini-2.0-flash"): Gemini 1.x and 2.0, the image model Gemini 2.5 Flash Image
# (Google's model page: thinking not supported), Gemma 1 to 3. reasoning_effort is dropped for
# them, as a parameter a model can't take.
NO_THINKING = re.compile(r"gemini-(?:1\.|2\.0|2\.5-flash-image)|(?:^|/)gemma-[1-3](?![0-9])")
# The models that take a thinking budget: Gemini 2.x and the models built on 2.5 whose names
# do not say so, Gemini Robotics-ER 1.5 (Google's robotics docs set its thinking_budget; a
# thinkingLevel is a 2.5 model's 400). Robotics-ER 1.6 and 2 are built on Gemini 3 Flash and
# 3.5 Flash, and take a level as those do.
TAKES_BUDGET = re.compile(r"gemini-(?:2|robotics-er-1\.5(?![0-9]))")
# Gemini 1.x and 2.x answer function calling beside a JSON response type with a 400 ("Function
# calling with a response mime type: 'application/json' is unsupported", with any mode but
# NONE); Gemini 3 takes both (Google's structured-output docs).
CALLS_WITHOUT_JSON = re.compile(r"gemini-[12]\.")
# Gemma 4 and the Nano Banana 2 image models (Gemini 3.1 Flash Image, 3.1 Flash-Lite Image)
# take a level, minimal or high alone (low and medium are their 400).
TWO_LEVELS = re.compile(r"gemma-|gemini-3\.1-flash(?:-lite)?-image")
MINIMAL_OR_HIGH = {"none": "minimal", "minimal": "minimal", "low": "minimal", "medium": "high",
                   "high": "high", "xhigh": "high", "max": "high"}
THINKING_LEVEL = {"none": "minimal", "minimal": "minimal", "low": "low", "medium": "medium",
                  "high": "high", "xhigh": "high", "max": "high"}
# The models that take the "minimal" level: Gemini 3 Flash, 3.5 and 3.6 Flash, the Flash-Lites
# (TWO_LEVELS models aside). The others refuse it ("Thinking level MINIMAL is not
# supported for this model"): the 3.x Pro models, 3.7 and 3.8 Flash and the Gemini 4 models
# (Google's thinking-level table), so an allow-list: a model not named here (an alias such as
# gemini-flash-latest, a newer release) gets low, the least every level model takes.
TAKES_MINIMAL = re.compile(r"gemini-3(?:\.[1-6])?-flash|flash-lite")
MIN_LEVEL = "low"
# Gemini 3 Pro has two levels, low and high (Google's thinking-level table): its medium is a
# 400, so medium asks for high, as on the TWO_LEVELS models. 3.1 Pro has a medium of its own.
LOW_OR_HIGH = re.compile(r"gemini-3-pro(?!-image)")
# Gemini 4 Hydrogen and Neon have a level above high, xhigh (OpenAI's xhigh, and their top for
# OpenAI's max); the other level models top out at high, and Gemini 4 Carbon answers xhigh
# with a 400.
TAKES_XHIGH = re.compile(r"gemini-4-(?:hydrogen|neon)")


def to_gemini(body: dict[str, Any], model: str, *, mime_required: bool = False) -> dict[str, Any]:
    """`mime_required`: a file URL's `fileData` must name its MIME type (Vertex). The Gemini
    API's is optional: it knows a Files API upload's type, and reads YouTube URLs without one."""
    if (body.get("n") or 1) > 1:
        raise InvalidRequest("Gemini returns one choice per request here; 'n' must be 1.",
                             param="n", code="unsupported_value")
    system, contents = _contents(with_call_ids(body["messages"], GENERATED_ID_PREFIX),
                                mime_required)
    if system and NO_SYSTEM_ROLE.search(model):
        _open_first_user_turn(system, contents)
        system = []
    if not contents or contents[0]["role"] != "user":  # Gemini's contents open with the user
        contents.insert(0, {"role": "user", "parts": [{"text": PLACEHOLDER_USER_TEXT}]})
    if _ends_with_system(body["messages"], contents):
        contents.append({"role": "user", "parts": [{"text": PLACEHOLDER_USER_TEXT}]})
    if _checks_signatures(model):
        _sign_unsigned_calls(contents)
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": system}
    config = _generation_config(body, model)
    if config:
        out["generationConfig"] = config
    _tools(body, out)
    _forced_call_unformatted(out, model)
    for key, native in PASSTHROUGH_TOP.items():
        if body.get(key) is not None:
            out[native] = body[key]
    rename(out, declared(body))  # (names Gemini refuses: names.py)
    return out


def _generation_config(body: dict[str, Any], model: str) -> dict[str, Any]:
    config: dict[str, Any] = {}
    max_tokens = answer_cap(body)
    if max_tokens:
        config["maxOutputTokens"] = max_tokens
    for key, native in (("temperature", "temperature"), ("top_p", "topP"), ("top_k", "topK"),
                        ("seed", "seed")):
        if body.get(key) is not None:
            config[native] = body[key]
    if _takes_penalties(model):
        for key, native in PENALTIES:
            if body.get(key):  # a 0 is no penalty: left out
                config[native] = body[key]
    if body.get("n") == 1:
        config["candidateCount"] = 1
    # An empty sequence cuts nothing: it is left out (as for Converse), and so is a list left
    # empty, which Vertex refuses ("supported range is from 1 (inclusive) to 17").
    stop = [sequence for sequence in stop_list(body.get("stop") or []) if sequence]
    if stop:
        config["stopSequences"] = stop
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_object":
        config["responseMimeType"] = "application/json"
    elif fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema") or {}
        schema = spec.get("schema")
        if not isinstance(schema, dict):
            raise InvalidRequest("'response_format.json_schema.schema' must be an object.",
                                 param="response_format.json_schema.schema")
        config["responseMimeType"] = "application/json"
        # described first: beside a root `$ref` (zod-to-json-schema's named schema) the
        # description must go the way gemini_schema puts any non-$ keyword there
        config["responseJsonSchema"] = gemini_schema(_described(schema, spec.get("description")))
    modalities = _response_modalities(body)
    if modalities:
        config["responseModalities"] = modalities
    if logprobs_asked(body):
        config["responseLogprobs"] = True
        if body.get("top_logprobs"):  # 0 is left out: Vertex takes 1 to 20
            config["logprobs"] = body["top_logprobs"]
    thinking = _thinking(body, model)
    if thinking is not None:
        config["thinkingConfig"] = thinking
    return config


def _described(schema: dict[str, Any], description: Any) -> dict[str, Any]:
    """The format's `description` (what the answer is for: OpenAI's model reads it) has no
    Gemini field of its own: it opens the schema's description, which Gemini reads."""
    if not isinstance(description, str) or not description:
        return schema
    own = schema.get("description")
    if isinstance(own, str) and own:
        description = f"{description}\n\n{own}"
    return {**schema, "description": description}  # (a copy: the client's schema stays)


def _takes_penalties(model: str) -> bool:
    """Gemini 2.5 and later answer any penalty with a 400 ("Penalty is not enabled for this
    model"): for them the two are dropped, as a parameter a model can't take. A name that is
    no Gemini release (a tuned model, an endpoint, Gemma) keeps them, for Google to judge."""
    return "gemini-" not in model or TAKES_PENALTIES.search(model) is not None


def _response_modalities(body: dict[str, Any]) -> list[str] | None:
    """OpenAI-style `modalities` asking for images (OpenRouter's convention for image models)
    → Gemini's `responseModalities`: `["text", "image"]` → TEXT and IMAGE, `["image"]` → IMAGE
    alone. Text alone is Gemini's default and is not sent (image models may refuse it); audio
    never gets here (the executor refuses it: answer_changing_refusal)."""
    modalities = body.get("modalities")
    if not isinstance(modalities, list) or "image" not in modalities:
        return None
    return ["TEXT", "IMAGE"] if "text" in modalities else ["IMAGE"]


def _thinking(body: dict[str, Any], model: str) -> dict[str, Any] | None:
    effort = reasoning_effort(body)  # checked even where a native thinking_config wins
    if body.get("thinking_config") is not None:  # native, wins over reasoning_effort
        return body["thinking_config"]
    if effort is None or NO_THINKING.search(model):
        return None
    # Gemini 2.x takes a token budget; Gemini 3 and Gemma 4 a level (both together are a 400).
    config: dict[str, Any]
    if TWO_LEVELS.search(model):
        config = {"thinkingLevel": MINIMAL_OR_HIGH[effort]}
    elif TAKES_BUDGET.search(model):
        budget = THINKING_BUDGET[effort]
        if budget == 0 and "gemini-2.5-pro" in model:
            budget = PRO_MIN_BUDGET
        config = {"thinkingBudget": budget}
    else:
        level = THINKING_LEVEL[effort]
        if level == "minimal" and TAKES_MINIMAL.search(model) is None:
            level = MIN_LEVEL
        elif effort in ("xhigh", "max") and TAKES_XHIGH.search(model):
            level = "xhigh"
        elif level == "medium" and LOW_OR_HIGH.search(model):
            level = "high"
        config = {"thinkingLevel": level}
    if effort != "none":
        config["includeThoughts"] = True  # thought summaries → reasoning_content
    return config


def _tools(body: dict[str, Any], out: dict[str, Any]) -> None:
    declarations = []
    search = None
    for tool in distinct_tools(body.get("tools") or []):
        fn = tool["function"]
        if fn["name"] in GOOGLE_SEARCH_NAMES:
            search = _google_search(fn)
        else:
            declarations.append(_declaration(fn))
    options = body.get("web_search_options")
    if options is not None:
        if not isinstance(options, dict):
            raise InvalidRequest("'web_search_options' must be an object.",
                                 param="web_search_options")
        if search is None:
            search = {}  # (Google takes neither its search_context_size nor its user_location)
    tools: list[dict[str, Any]] = []
    if declarations:
        tools.append({"functionDeclarations": declarations})
    if search is not None:
        tools.append({"googleSearch": search})
    if tools:
        out["tools"] = tools
    choice = body.get("tool_choice")
    mode: dict[str, Any] | None = None
    if choice == "auto":
        mode = {"mode": "AUTO"}
    elif choice == "none":
        mode = {"mode": "NONE"}
    elif choice == "required":
        mode = {"mode": "ANY"}
    elif isinstance(choice, dict) and choice["function"]["name"] in GOOGLE_SEARCH_NAMES:
        # the search tool must be the one used: it is no function call (allowedFunctionNames
        # would name no declaration, and ANY force a call), so no function is called
        mode = {"mode": "NONE"}
    elif isinstance(choice, dict):
        mode = {"mode": "ANY", "allowedFunctionNames": [choice["function"]["name"]]}
    if mode is not None and declarations:  # (it rules function calls; a search is none)
        out["toolConfig"] = {"functionCallingConfig": mode}


def _forced_call_unformatted(out: dict[str, Any], model: str) -> None:
    """No JSON response type beside a forced function call (mode ANY) to the models that refuse
    the two together (CALLS_WITHOUT_JSON): the calls are the whole answer, there is no text to
    hold to the format, so it goes unsaid rather than make the request a 400."""
    config = out.get("generationConfig")
    mode = out.get("toolConfig", {}).get("functionCallingConfig", {}).get("mode")
    if config is None or mode != "ANY" or not CALLS_WITHOUT_JSON.search(model):
        return
    config.pop("responseMimeType", None)
    config.pop("responseJsonSchema", None)
    if not config:
        del out["generationConfig"]


def asks_search(body: dict[str, Any]) -> bool:
    """Whether the request goes with Google Search (`_tools`): its answer may be grounded."""
    return body.get("web_search_options") is not None or any(
        isinstance(tool, dict) and (tool.get("function") or {}).get("name") in GOOGLE_SEARCH_NAMES
        for tool in body.get("tools") or ())


def _google_search(fn: dict[str, Any]) -> dict[str, Any]:
    """A function tool naming Google Search → Gemini's `googleSearch` tool; its `parameters`
    may carry the tool's `timeRangeFilter` (Portkey's convention)."""
    window = (fn.get("parameters") or {}).get("timeRangeFilter")
    return {} if window is None else {"timeRangeFilter": window}


def _declaration(fn: dict[str, Any]) -> dict[str, Any]:
    decl: dict[str, Any] = {"name": fn["name"]}
    if fn.get("description"):
        decl["description"] = fn["description"]
    if fn.get("parameters"):
        # Full JSON Schema (`parameters` is an OpenAPI subset that rejects additionalProperties).
        decl["parametersJsonSchema"] = gemini_schema(fn["parameters"])
    return decl


# -- messages -------------------------------------------------------------------------------

def _contents(msgs: list[dict[str, Any]],
              mime_required: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    # tool_call_id → (name, Gemini's id or None, the call's place among its turn's calls)
    calls: dict[str, tuple[str, str | None, int]] = {}
    places: list[int] = []  # those places, for the responses in the last content, in order
    blank: dict[str, Any] | None = None  # the last BLANK_USER_TEXT part put in
    late_system = False  # a system message came after the last content, a model one
    for i, m in enumerate(msgs):
        role = m["role"]
        if role in ("system", "developer"):
            system.extend(_text_parts(m.get("content"), f"messages[{i}].content"))
            late_system = late_system or (bool(contents) and contents[-1]["role"] == "model")
            continue
        # An assistant message after [assistant, system] answered the request that ended
        # there, which had a PLACEHOLDER_USER_TEXT turn (_ends_with_system): replayed with it,
        # not merged into the model turn before, as on Anthropic and Bedrock.
        replay = late_system and role == "assistant" and contents[-1]["role"] == "model"
        if role == "user":
            parts, role_out = _user_parts(m.get("content"), i, mime_required), "user"
        elif role == "assistant":
            first = 0 if replay else _calls_joined(contents)  # (its turn's calls, none before)
            parts, role_out = _model_parts(m, i, calls, first), "model"
        elif role == "tool":
            response, place = _function_response(m, i, calls)
            parts, role_out = [response], "user"
        else:  # legacy "function" role: no tool_call_id to pair it with
            raise InvalidRequest("The legacy 'function' role is not supported; use 'tool'.",
                                 param=f"messages[{i}].role", code="unsupported_value")
        if not parts:  # Gemini refuses an empty text part, and a content without parts
            if role != "user" or not contents or contents[-1]["role"] != "model":
                continue  # nothing vanishes: a user content is there, or none yet
            blank = {"text": BLANK_USER_TEXT}  # (the turn stays, as on Anthropic)
            parts = [blank]
        if replay:
            contents.append({"role": "user", "parts": [{"text": PLACEHOLDER_USER_TEXT}]})
        late_system = False
        if contents and contents[-1]["role"] == role_out \
                and _holds_results(contents[-1]) == (role == "tool"):
            if role == "tool":
                # Gemini pairs responses with calls by position when they carry no id (ours,
                # OpenAI's: never sent), so one answered out of order would be read as another
                # call's result: each goes where its call is.
                at = bisect_right(places, place)
                places.insert(at, place)
                contents[-1]["parts"].insert(at, response)
            else:
                if stood_in_for_blank(contents[-1]["parts"], blank):  # its user message now
                    contents[-1]["parts"].clear()
                contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role_out, "parts": parts})
            places = [place] if role == "tool" else []
    return system, contents


def _ends_with_system(msgs: list[dict[str, Any]], contents: list[dict[str, Any]]) -> bool:
    """Whether system/developer messages (hoisted out of `contents`) follow what is now the
    final model turn. OpenAI answers them anew; sent as it is, the request would be a prefill
    the client never sent, which Gemini 2.5 continues and Gemini 3.6 Flash and later refuse
    ("Requests ending with a model turn are not supported"): it gets a PLACEHOLDER_USER_TEXT
    turn, as on Anthropic and Bedrock."""
    return contents[-1]["role"] == "model" and msgs[-1].get("role") in ("system", "developer")


def _open_first_user_turn(system: list[dict[str, Any]], contents: list[dict[str, Any]]) -> None:
    """The system parts put at the start of the first content, a user turn of their own when
    that is not one (a model turn, or none: they are then the whole request)."""
    first = contents[0] if contents else None
    if first is not None and first["role"] == "user" and not _holds_results(first):
        first["parts"][:0] = system
    else:
        contents.insert(0, {"role": "user", "parts": system})


def _calls_joined(contents: list[dict[str, Any]]) -> int:
    """The function calls of the model content an assistant message would join (consecutive
    ones merge into one turn): its own calls' places come after them."""
    if contents and contents[-1]["role"] == "model":
        return sum("functionCall" in part for part in contents[-1]["parts"])
    return 0


def _holds_results(content: dict[str, Any]) -> bool:
    """Whether a content carries function responses. Such a content holds nothing else:
    Vertex (and newer Gemini models) refuse one mixing them with text or media ("Requests
    ending with a model turn are not supported"), so user text after tool results goes in a
    user content of its own (Gemini takes consecutive user contents)."""
    return "functionResponse" in content["parts"][0]


def _text_parts(content: Any, where: str) -> list[dict[str, Any]]:
    return [{"text": t} for t in texts(content, where)]


def _user_parts(content: Any, i: int, mime_required: bool) -> list[dict[str, Any]]:
    if not isinstance(content, list):
        return _text_parts(content, f"messages[{i}].content")
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type")
        where = f"messages[{i}].content[{j}]"
        if kind == "text":
            if part.get("text"):
                parts.append({"text": part["text"]})
        elif kind == "image_url":
            url = (part.get("image_url") or {}).get("url")
            parts.append(_media(url, f"{where}.image_url.url", DEFAULT_IMAGE_MIME))
        elif kind == "input_audio":
            audio = part.get("input_audio") or {}
            if not isinstance(audio.get("data"), str) or not isinstance(audio.get("format"), str):
                raise InvalidRequest("'input_audio' needs 'data' (base64) and 'format'.",
                                     param=f"{where}.input_audio", code="invalid_value")
            parts.append({"inlineData": {"mimeType": _audio_type(audio["format"], where),
                                         "data": base64_text(audio["data"],
                                                             f"{where}.input_audio.data")}})
        elif kind == "file":
            file = part.get("file") or {}
            # file_id: a Files API or gs:// URI (Google reads those; OpenAI's ids it cannot)
            field = "file_id" if file.get("file_id") and not file.get("file_data") else "file_data"
            if field == "file_id" and not _SCHEME.match(str(file[field])):  # (no URL)
                raise InvalidRequest("Gemini cannot read OpenAI file ids; send the file as "
                                     "'file_data' (a data: URL), or a Files API or gs:// URI "
                                     "as 'file_id'.", param=f"{where}.file.file_id",
                                     code="unsupported_value")
            parts.append(_media(file.get(field), f"{where}.file.{field}",
                                None if mime_required else "", file.get("filename")))
        else:
            raise InvalidRequest(f"Content part type '{kind}' is not supported by Gemini.",
                                 param=f"{where}.type", code="unsupported_value")
    return parts


def _media(url: Any, where: str, default_mime: str | None,
           filename: str | None = None) -> dict[str, Any]:
    """A data: URL → `inlineData`; an http(s) or gs:// URL → `fileData` (Google fetches it;
    the translator does no I/O), its MIME type guessed from the file extension, else
    `default_mime`: None is a 400, "" leaves the type out (for Google to tell)."""
    url = lower_scheme(url)
    if isinstance(url, str) and url.startswith("data:"):
        mime, data = parse_data_url(url, where, default="")  # "": no type given
        # an image's or a PDF's bytes tell its type: a label may be generic
        # (application/octet-stream, which Gemini refuses) or wrong
        mime = file_media_type(data, mime) or _named_media(filename) or "text/plain"
        mime = _image_checked(mime, where)
        return {"inlineData": {"mimeType": mime, "data": data}}
    if isinstance(url, str) and url.startswith(("http://", "https://", "gs://")):
        path = url.split("?", 1)[0].split("#", 1)[0]
        mime = mimetypes.guess_type(filename or path, strict=False)[0] or default_mime
        if mime is None:
            raise InvalidRequest("Cannot tell this file's MIME type from its name; send it as "
                                 "a data: URL.", param=where, code="invalid_value")
        mime = _image_checked(mime, where)  # (a .gif went on, and Gemini refused image/gif)
        return {"fileData": {"mimeType": mime, "fileUri": url} if mime else {"fileUri": url}}
    raise InvalidRequest("Expected a data: URL or an http(s)/gs:// URL.", param=where,
                         code="invalid_value")


def _named_media(filename: str | None) -> str | None:
    """The media type a file's name tells, for a data: URL that gives none: audio, video, an
    image or text, what Gemini reads inline; RFC 2397's default, text/plain, would have it
    read a recording's bytes as text. Other types (a .docx) it refuses: still text."""
    mime = mimetypes.guess_type(filename, strict=False)[0] if isinstance(filename, str) else None
    return mime if mime and mime.startswith(("audio/", "video/", "image/", "text/")) else None


def _audio_type(fmt: str, where: str) -> str:
    """An `input_audio.format` as its MIME type, or a 400 naming it, worded as OpenAI's, for
    one Gemini does not read (it would answer its own 400, which names no field)."""
    if fmt.lower() not in AUDIO_FORMATS:
        supported = ", ".join(f"'{f}'" for f in AUDIO_FORMATS)
        raise InvalidRequest(f"Invalid value: {fmt!r}. Supported values are: {supported}.",
                             param=f"{where}.input_audio.format", code="invalid_value")
    return f"audio/{fmt.lower()}"


def _image_checked(mime: str, where: str) -> str:
    """`mime`, or a 400 naming `where` for an image type Gemini refuses."""
    if mime.startswith("image/") and mime not in IMAGE_TYPES:
        raise InvalidRequest(f"Gemini takes png, jpeg, webp, heic or heif images, not {mime}.",
                             param=where, code="unsupported_value")
    return mime


def split_call_id(call_id: str) -> tuple[str, str | None]:
    """`<id>__thought__<signature>` (LiteLLM's encoding) → (id, signature)."""
    base, sep, signature = call_id.partition(LITELLM_SIGNATURE_SEP)
    return (base, signature or None) if sep else (call_id, None)


def _upstream_id(call_id: str) -> str | None:
    """The id to send Gemini: its own ids go back, ids we (or OpenAI) made up do not."""
    return None if call_id.startswith(GENERATED_ID_PREFIX) else call_id


# OpenRouter's `format` of the reasoning_details a Gemini wrote.
_GEMINI_DETAILS = "google-gemini-v1"


def _signatures(m: dict[str, Any]) -> tuple[dict[str, str], str | None]:
    """Signatures the client sent back with an assistant message: our `thinking_blocks`
    entries `{"type": "thought_signature", "signature", "tool_call_id"?}`, else the message's
    `extra_content.google.thought_signature` (Gemini's OpenAI endpoint: the text's) and
    OpenRouter's `reasoning_details` entries of a Gemini's (`reasoning.encrypted`, the
    signature as `data`, its call's id as `id`). Returns (tool_call_id → signature, the
    signature of the text part)."""
    by_call: dict[str, str] = {}
    text_signature = None
    for block in m.get("thinking_blocks") or []:
        if not isinstance(block, dict) or block.get("type") != SIGNATURE_BLOCK:
            continue
        signature = block.get("signature")
        if not isinstance(signature, str) or not signature:
            continue
        call_id = block.get("tool_call_id")
        if isinstance(call_id, str) and call_id:
            by_call[call_id] = signature
        elif text_signature is None:
            text_signature = signature
    if text_signature is None:  # Gemini's OpenAI endpoint signs a text answer on its message
        text_signature = _text_at(m, "extra_content", "google", "thought_signature")
    details = m.get("reasoning_details")
    for detail in details if isinstance(details, list) else ():
        if (isinstance(detail, dict) and detail.get("type") == "reasoning.encrypted"
                and detail.get("format") == _GEMINI_DETAILS
                and isinstance(detail.get("id"), str) and isinstance(detail.get("data"), str)
                and detail["data"]):
            by_call.setdefault(detail["id"], detail["data"])
    return by_call, text_signature


def _text_at(obj: Any, *keys: str) -> str | None:
    """The non-empty string at `keys` in nested objects a client filled (any shape), else
    None: a string where an object goes was a 500, a number went to Gemini as a signature."""
    for key in keys:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj if isinstance(obj, str) and obj else None


def _model_parts(m: dict[str, Any], i: int, calls: dict[str, tuple[str, str | None, int]],
                 first: int) -> list[dict[str, Any]]:
    """An assistant message's parts; its calls noted in `calls`, placed from `first` among
    their turn's."""
    by_call, text_signature = _signatures(m)
    parts = _text_parts(said(m), f"messages[{i}].content")
    if parts and text_signature:
        parts[0]["thoughtSignature"] = text_signature
        text_signature = None
    for j, call in enumerate(m.get("tool_calls") or []):
        fn = call["function"]
        call_id = call.get("id") or ""
        base_id, signature = split_call_id(call_id)
        signature = (by_call.get(call_id) or by_call.get(base_id) or signature
                     or _text_at(call, "extra_content", "google", "thought_signature")
                     or _text_at(fn, "thought_signature"))  # (Portkey's)
        upstream_id = _upstream_id(base_id) if base_id else None
        if call_id:
            calls[call_id] = calls[base_id] = (fn["name"], upstream_id, first + j)
        function_call: dict[str, Any] = {"name": fn["name"],
                                         "args": tool_call_input(fn.get("arguments"))}
        if upstream_id:
            function_call["id"] = upstream_id
        part: dict[str, Any] = {"functionCall": function_call}
        if signature:
            part["thoughtSignature"] = signature
        parts.append(part)
    if text_signature:
        # A call turn Gemini signed on a part of its own (a trailing empty text part), not on
        # a call, and with no text to put it back on: it goes on the first call, where Gemini
        # reads a step's signature (else Gemini 3 would get SKIP_SIGNATURE_CHECK, the
        # reasoning lost). A call that came back signed keeps its own.
        calls = [part for part in parts if "functionCall" in part]
        if calls and not any("thoughtSignature" in part for part in calls):
            calls[0]["thoughtSignature"] = text_signature
    return parts


def _checks_signatures(model: str) -> bool:
    """Gemini 3 and later refuse a function call without its signature; 2.x take one."""
    return "gemini-" in model and "gemini-1" not in model and "gemini-2" not in model


def _sign_unsigned_calls(contents: list[dict[str, Any]]) -> None:
    """Gemini checks the first function call of each model step (of parallel calls only the
    first carries a signature): one that came back with none gets SKIP_SIGNATURE_CHECK."""
    for content in contents:
        if content["role"] != "model":
            continue
        calls = [part for part in content["parts"] if "functionCall" in part]
        if calls and not any("thoughtSignature" in part for part in calls):
            calls[0]["thoughtSignature"] = SKIP_SIGNATURE_CHECK


def _function_response(m: dict[str, Any], i: int, calls: dict[str, tuple[str, str | None, int]]
                       ) -> tuple[dict[str, Any], int]:
    """The `functionResponse` part of a tool message, and the place of the call it answers
    among its turn's calls (after them all for a result that matches none by id)."""
    call_id = m["tool_call_id"]
    known = calls.get(call_id) or calls.get(split_call_id(call_id)[0])
    name = known[0] if known else m.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(
            f"messages[{i}].tool_call_id '{split_call_id(call_id)[0]}' matches no earlier "
            "assistant tool call, so the function name Gemini needs is unknown.",
            param=f"messages[{i}].tool_call_id", code="invalid_value")
    response: dict[str, Any] = {"name": name, "response": _result(m.get("content"), i)}
    if known and known[1]:
        response["id"] = known[1]
    return {"functionResponse": response}, known[2] if known else UNMATCHED_PLACE


def _result(content: Any, i: int) -> dict[str, Any]:
    if isinstance(content, list):  # a line between parts (as Cohere's, Ollama's): joined with
        # nothing, an MCP tool's content items ran together
        content = "\n".join(p["text"] for p in _text_parts(content, f"messages[{i}].content"))
    text = content or ""
    if text.lstrip()[:1] == "{":
        try:
            parsed = loads_embedded(text, f"The JSON of messages[{i}].content")
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            return parsed
    return {"output": text}
