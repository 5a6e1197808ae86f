"""Parse and validate an incoming Chat Completions request body.

Validation is shallow on purpose: enough that every translator can trust the shape it reads
(types of the fields it touches), with a 400 that names the parameter, as OpenAI does. OpenAI's
own numeric ranges are checked too (a translator may drop the field); values a provider may
reject within them (a thinking model's temperature, model names) are left to the provider,
whose message is carried back to the client.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from streamproxy._json import without_lone_surrogates
from streamproxy.errors import InvalidRequest

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# OneLLM's body fields, consumed by the gateway: they never reach a provider.
GATEWAY_FIELDS = frozenset({"fallback_models", "retries", "fallback_config"})
# Each fallback model is a config target, checked and resolved before the first upstream
# request: without a cap a large body of them held the event loop for seconds.
MAX_FALLBACK_MODELS = 50
# A UTF-8 byte order mark: a file saved with one (Windows editors) and sent by `curl -d @f`
# starts with it. RFC 8259 lets a parser ignore it; orjson refuses it.
_BOM = b"\xef\xbb\xbf"
# The model the portkey-ai SDK sends when its caller names none; Portkey's gateway reads it
# as the provider's default model, as a body without `model` is read here.
PORTKEY_DEFAULT_MODEL = "portkey-default"
# What no model's name has: whitespace at an end of it or of a `/` part (` groq/y` went to the
# default provider as that model; `oa/gpt-4o ` asked for `gpt-4o `), or a control character
# (names go into URLs and log lines). Sent as written, the client got a provider's 404.
_BAD_MODEL_NAME = re.compile(r"^\s|\s$|\s/|/\s|[\x00-\x1f\x7f-\x9f]")
_PLAIN_ROLES = ROLES - {"tool"}  # a tool message also needs its tool_call_id
# What an assistant message may say instead of `content` (OpenAI: content is "required unless
# tool_calls or function_call is specified"; a turn that was audio names it by its id).
_SAY_WITHOUT_CONTENT = ("tool_calls", "function_call", "audio")
# Roles whose content OpenAI requires to say something: neither null nor an empty array. An
# assistant's may be null (replayed answers carry it); a tool's, as OpenAI's too, still goes as
# a result without content (a tool that returned nothing: the agent loop goes on).
_SAYS_IN_CONTENT = frozenset({"system", "developer", "user"})


@dataclass(slots=True)
class ChatRequest:
    body: dict[str, Any]  # the client's body minus gateway fields
    raw: bytes  # the client's bytes (a repeated key in them: `body` holds its last value)
    stream: bool
    include_usage: bool
    fallback_models: list[str] = field(default_factory=list)
    retries: int | None = None
    stripped: bool = False  # `raw` still holds fields `body` no longer has (gateway, store)
    # Custom (freeform) tools, calls or an allowed_tools choice: OpenAI-type providers only.
    custom_tools: bool = False

    @property
    def model(self) -> str | None:
        return self.body.get("model")


@dataclass(slots=True, frozen=True)
class Limits:
    max_messages: int = 10_000
    max_tools: int = 512
    max_json_depth: int = 64


def parse_chat_request(raw: bytes, limits: Limits = Limits()) -> ChatRequest:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        body, raw = loads_refused_body(raw, e)
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    # Each level of nesting opens a bracket (one inside a string only adds to the count): a body
    # with no more brackets than the limit is within it, and the walk is most of a small
    # request's parsing.
    if raw.count(b"{") + raw.count(b"[") > limits.max_json_depth:
        check_depth(body, limits.max_json_depth)
    custom_tools = _validate(body, limits)
    stripped = not GATEWAY_FIELDS.isdisjoint(body)
    if body.get("model") == PORTKEY_DEFAULT_MODEL:
        del body["model"]
        stripped = True
    # (null is none, as OpenAI reads null; a falsy "" or {} is the client's mistake, not none)
    fallback = body.pop("fallback_models", None)
    fallback = [] if fallback is None else fallback
    retries = body.pop("retries", None)
    max_fallbacks = _max_fallbacks(body.pop("fallback_config", None))
    if not isinstance(fallback, list) or not all(isinstance(m, str) for m in fallback):
        raise _type_error("fallback_models", "an array of strings")
    if max_fallbacks is not None:
        fallback = fallback[:max_fallbacks]
    if len(fallback) > MAX_FALLBACK_MODELS:
        raise InvalidRequest(f"'fallback_models' has more than {MAX_FALLBACK_MODELS} entries.",
                             param="fallback_models", code="array_above_max_length")
    if isinstance(model := body.get("model"), str):
        _check_model_name(model, "model")
    for i, name in enumerate(fallback):
        _check_model_name(name, f"fallback_models[{i}]")
    if retries is not None and (not _is_int(retries) or not 0 <= retries <= 10):
        # (a number out of range, 10**30 a float to orjson, is a wrong value, not type)
        out = _is_num(retries) and not 0 <= retries <= 10
        raise InvalidRequest("'retries' must be an integer from 0 to 10.", param="retries",
                             code="invalid_value" if out else "invalid_type")
    opts = body.get("stream_options") or {}
    if body.get("stream_options") is not None and body.get("stream") is not True:
        # As OpenAI: options for a stream on a request for one answer are a client's mistake.
        raise InvalidRequest("The 'stream_options' parameter is only allowed when 'stream' is "
                             "enabled.", param="stream_options")
    for option in ("include_usage", "include_obfuscation"):  # (the latter is dropped, or passed)
        if opts.get(option) is not None and not isinstance(opts[option], bool):  # (null: none)
            raise _type_error(f"stream_options.{option}", "a boolean")
    # OpenRouter's own way to ask for the usage chunk, which its clients send instead of
    # stream_options: without it read, the stream's usage (and its `cost`) was dropped as
    # unasked for.
    usage = body.get("usage")
    asked_usage = isinstance(usage, dict) and usage.get("include") is True
    stream = bool(body.get("stream"))
    return ChatRequest(
        body=body,
        raw=raw,
        stream=stream,
        include_usage=bool(opts.get("include_usage")) or (stream and asked_usage),
        fallback_models=fallback,
        retries=retries,
        stripped=stripped,
        custom_tools=custom_tools,
    )


def _check_model_name(name: str, param: str) -> None:
    # Empty or a bare prefix (`oa/`) named no model: the provider's default_model answered (a
    # fallback's "" took the request's model, the primary again). No model (null) is how a
    # request asks for the default.
    if not name:
        raise InvalidRequest(f"'{param}' is an empty model name; leave model out (or null) for "
                             "the provider's default model.", param=param, code="invalid_value")
    if name[-1] == "/":
        raise InvalidRequest(f"Invalid value for '{param}': {name[:64]!r} ends with '/', a "
                             "provider prefix with no model after it (`name/model`); leave model "
                             "out for the provider's default model.", param=param,
                             code="invalid_value")
    if _BAD_MODEL_NAME.search(name):  # (repr: escaped, the message stays one line)
        raise InvalidRequest(f"Invalid value for '{param}': {name[:64]!r} has whitespace at its "
                             "start or end (or beside a '/') or a control character; no model's "
                             "name does.", param=param, code="invalid_value")


def loads_refused_body(raw: bytes, error: orjson.JSONDecodeError) -> tuple[Any, bytes]:
    """A body orjson refused, without a leading BOM and with its lone surrogate escapes (which
    OpenAI accepts) read as U+FFFD, in the body and in the bytes forwarded. (Only a refused
    body is looked at again: one without either costs nothing more.)"""
    fixed = without_lone_surrogates(raw.removeprefix(_BOM))
    if fixed != raw:
        try:
            return orjson.loads(fixed), fixed
        except orjson.JSONDecodeError as e:
            error = e
    reason = str(error)
    try:  # orjson says "surrogates not allowed ... (char 0)" of any bytes that are not UTF-8
        raw.decode()
    except UnicodeDecodeError as e:  # (a latin-1 or UTF-16 body: its client's `charset=`)
        reason = f"it is not UTF-8 (byte {e.start}); JSON is sent as UTF-8 (RFC 8259 §8.1)."
    raise InvalidRequest(f"We could not parse the JSON body of your request: {reason}",
                         code="invalid_json") from None


def _max_fallbacks(config: Any) -> int | None:
    """OneLLM's `fallback_config`: `max_fallbacks` caps how many of `fallback_models` are
    tried after the primary (its FallbackProviderProxy); `log_fallbacks` has nothing to turn
    on (the access log records fallbacks). Its other fields are Python objects."""
    if config is None:
        return None
    if not isinstance(config, dict):
        raise _type_error("fallback_config", "an object")
    for key in config:
        if key not in ("max_fallbacks", "log_fallbacks"):
            raise InvalidRequest(f"'fallback_config.{key}' is not supported here (only "
                                 "max_fallbacks and log_fallbacks).",
                                 param=f"fallback_config.{key}", code="invalid_value")
    limit = config.get("max_fallbacks")
    if limit is not None and (not _is_int(limit) or limit < 0):
        raise InvalidRequest("'fallback_config.max_fallbacks' must be an integer ≥ 0.",
                             param="fallback_config.max_fallbacks", code="invalid_value")
    return limit


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


# OpenAI's integers are int64s (its `seed`'s documented range), with these least values. An
# integer beyond 64 bits is a float to orjson, and answered as out of range, as OpenAI does.
_INT64_MAX = 2**63 - 1
_INT_MINIMUM = {"max_tokens": 1, "max_completion_tokens": 1, "n": 1, "seed": -(2**63),
                "top_logprobs": 0}
# The ones OpenAI's API reference bounds lower, as it refuses them (a provider would take 500
# choices, or refuse them with its own wording; each has its own top_logprobs bound).
_INT_MAXIMUM = {"n": 128, "top_logprobs": 20}


def _out_of_range(param: str, value: float) -> InvalidRequest:
    most = _INT_MAXIMUM.get(param, _INT64_MAX)
    above = value > most
    bound = f"<= {most}" if above else f">= {_INT_MINIMUM[param]}"
    # (a float's digits are no longer the client's: it is not echoed)
    got = f", but got {value} instead" if isinstance(value, int) else ""
    side = "above maximum" if above else "below minimum"
    return InvalidRequest(f"Invalid '{param}': integer {side} value. Expected a value "
                          f"{bound}{got}.", param=param,
                          code=f"integer_{'above_max' if above else 'below_min'}_value")


# OpenAI's ranges of its decimal parameters, which it refuses beyond on every model. Checked
# for every provider, as the integers' are: the translators drop some (penalties on Anthropic,
# Bedrock and most Gemini models; sampling on the Claudes that take none), and a request
# OpenAI refuses was answered there, or refused in another provider's words.
_DECIMAL_RANGE = {"temperature": (0, 2), "top_p": (0, 1), "frequency_penalty": (-2, 2),
                  "presence_penalty": (-2, 2)}


def in_openai_range(value: float, low: float, high: float, param: str) -> float:
    """`value`, or OpenAI's 400 for one outside its range `low`..`high`, naming `param`."""
    if value > high:
        raise InvalidRequest(f"Invalid '{param}': decimal above maximum value. Expected a "
                             f"value <= {high}, but got {value} instead.", param=param,
                             code="decimal_above_max_value")
    if value < low:
        raise InvalidRequest(f"Invalid '{param}': decimal below minimum value. Expected a "
                             f"value >= {low}, but got {value} instead.", param=param,
                             code="decimal_below_min_value")
    return value


def _check_logit_bias(bias: dict[str, Any]) -> None:
    """OpenAI's 400 for a key that is no token id (a word, as clients unaware of tokenizers
    send) or a bias beyond -100..100: every translator drops the field, and answered it."""
    for key, value in bias.items():
        if not (key.isascii() and key.isdigit()):  # ("²" is a digit to str.isdigit)
            raise InvalidRequest(f"Invalid key in 'logit_bias': {key[:64]}. You should only "
                                 "be submitting non-negative integers.", param="logit_bias",
                                 code="invalid_value")
        if not -100 <= value <= 100:
            bound = "<= 100" if value > 100 else ">= -100"
            raise InvalidRequest(f"Invalid value for 'logit_bias' (token {key}): Expected a "
                                 f"value {bound}, but got {value} instead.",
                                 param="logit_bias", code="invalid_value")


def _type_error(param: str, expected: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid type for '{param}': expected {expected}.", param=param,
                          code="invalid_type")


_SCALARS: dict[str, tuple[Any, str]] = {
    "model": (lambda v: isinstance(v, str), "a string"),
    "stream": (lambda v: isinstance(v, bool), "a boolean"),
    "max_tokens": (_is_int, "an integer"),
    "max_completion_tokens": (_is_int, "an integer"),
    "n": (_is_int, "an integer"),
    "temperature": (_is_num, "a number"),
    "top_p": (_is_num, "a number"),
    "user": (lambda v: isinstance(v, str), "a string"),
    # (the translators forward these, or read them as Python would: "yes" as true)
    "seed": (_is_int, "an integer"),
    "frequency_penalty": (_is_num, "a number"),
    "presence_penalty": (_is_num, "a number"),
    "logprobs": (lambda v: isinstance(v, bool), "a boolean"),
    "top_logprobs": (_is_int, "an integer"),
    "safety_identifier": (lambda v: isinstance(v, str), "a string"),
    "stream_options": (lambda v: isinstance(v, dict), "an object"),
    "tools": (lambda v: isinstance(v, list), "an array"),
    "stop": (lambda v: isinstance(v, str) or (isinstance(v, list)
                                              and all(isinstance(s, str) for s in v)),
             "a string or an array of strings"),
    "response_format": (lambda v: isinstance(v, dict), "an object"),
    "parallel_tool_calls": (lambda v: isinstance(v, bool), "a boolean"),
    "metadata": (lambda v: isinstance(v, dict), "an object"),
    "store": (lambda v: isinstance(v, bool), "a boolean"),
    # (answer_changing_refusal looks into the array: a string "audio" went past it, dropped)
    "modalities": (lambda v: isinstance(v, list) and all(isinstance(m, str) for m in v),
                   "an array of strings"),
    # (the translators drop these: unchecked, a request OpenAI refuses got an answer)
    "service_tier": (lambda v: isinstance(v, str), "a string"),
    "prompt_cache_key": (lambda v: isinstance(v, str), "a string"),
    "prompt_cache_retention": (lambda v: isinstance(v, str), "a string"),
    "logit_bias": (lambda v: isinstance(v, dict) and all(map(_is_num, v.values())),
                   "an object of numbers (token ids to biases)"),
    "audio": (lambda v: isinstance(v, dict), "an object"),
    "prediction": (lambda v: isinstance(v, dict), "an object"),
    "web_search_options": (lambda v: isinstance(v, dict), "an object"),
}


TOOL_TYPES = ("function", "custom")  # OpenAI's


def _validate(body: dict[str, Any], limits: Limits) -> bool:
    # Only the fields a body has (a few of the 20) are looked at; when one is wrong, the one
    # named is still the first wrong in `_SCALARS`'s order.
    for name, value in body.items():
        check = _SCALARS.get(name)
        if check is not None and value is not None and not check[0](value):
            _check_scalars(body)
    for name, least in _INT_MINIMUM.items():  # (orjson's ints go up to 2**64 - 1)
        value = body.get(name)
        if value is not None and not least <= value <= _INT_MAXIMUM.get(name, _INT64_MAX):
            raise _out_of_range(name, value)
    for name, (low, high) in _DECIMAL_RANGE.items():
        if body.get(name) is not None:
            in_openai_range(body[name], low, high, name)
    if body.get("logit_bias"):
        _check_logit_bias(body["logit_bias"])
    if "messages" not in body:
        raise InvalidRequest("Missing required parameter: 'messages'.", param="messages",
                             code="missing_required_parameter")
    messages = body["messages"]
    if not isinstance(messages, list):
        raise _type_error("messages", "an array")
    if not messages:
        raise InvalidRequest("'messages' must contain at least one message.", param="messages",
                             code="empty_array")
    if len(messages) > limits.max_messages:
        raise InvalidRequest(f"'messages' has more than {limits.max_messages} entries.",
                             param="messages", code="array_above_max_length")
    custom = False
    for i, m in enumerate(messages):
        # Most messages are a role and a string content, with nothing more to check (orjson's
        # values are of exact types).
        if not (type(m) is dict and len(m) == 2 and type(m.get("content")) is str
                and type(m.get("role")) is str and m["role"] in _PLAIN_ROLES):
            custom = _validate_message(i, m) or custom
    tools = body.get("tools")
    if tools:
        if len(tools) > limits.max_tools:
            raise InvalidRequest(f"'tools' has more than {limits.max_tools} entries.",
                                 param="tools", code="array_above_max_length")
        for i, t in enumerate(tools):
            kind = t.get("type") if isinstance(t, dict) else None
            if kind == "custom":  # (named as a function tool is: a call names it)
                if not is_custom(t):
                    raise InvalidRequest(f"'tools[{i}].custom.name' is required.",
                                         param=f"tools[{i}].custom.name",
                                         code="missing_required_parameter")
                if not t["custom"]["name"]:
                    raise _empty_string(f"tools[{i}].custom.name")
                custom = True
                continue
            if kind is None and isinstance(t, dict):  # (as OpenAI: it went on as a function)
                raise _missing(f"tools[{i}].type")
            if kind is not None and kind not in TOOL_TYPES:  # (translators read it as a function)
                raise InvalidRequest(f"Invalid value: {kind!r}. Supported values are: "
                                     "'function' and 'custom'.", param=f"tools[{i}].type",
                                     code="invalid_value")
            fn = _named_function(t)
            if fn is None:
                raise InvalidRequest(f"'tools[{i}].function.name' is required.",
                                     param=f"tools[{i}].function.name",
                                     code="missing_required_parameter")
            # (as OpenAI: Claude, Gemini and Converse refused it in their words, Ollama answered)
            if not fn["name"]:
                raise _empty_string(f"tools[{i}].function.name")
            _check_fields(fn, f"tools[{i}].function", _FUNCTION_FIELDS)
    fmt = body.get("response_format")
    if fmt is not None:
        _check_fields(fmt, "response_format", _FORMAT_FIELDS)
    tc = body.get("tool_choice")
    if tc is None or tc in ("auto", "none", "required"):
        return custom
    if _named_function(tc) is not None and tc.get("type") in ("function", None):
        if tc.get("type") is None:  # (as OpenAI: the translators read it as a forced call)
            raise _missing("tool_choice.type")
        return custom
    if isinstance(tc, dict) and tc.get("type") == "allowed_tools" and _allowed_names(tc):
        return custom  # (functions only: the translators narrow `tools` to them)
    if is_custom(tc) or (isinstance(tc, dict) and tc.get("type") == "allowed_tools"
                         and isinstance(tc.get("allowed_tools"), dict)):
        return True
    raise InvalidRequest("'tool_choice' must be 'auto', 'none', 'required', "
                         "{'type': 'function', 'function': {'name': ...}}, a custom tool's or "
                         "an allowed_tools choice.", param="tool_choice", code="invalid_value")


def _named_function(entry: Any) -> dict[str, Any] | None:
    """The `function` of a tool, tool call or choice, when it is an object with a name."""
    fn = entry.get("function") if isinstance(entry, dict) else None
    return fn if isinstance(fn, dict) and isinstance(fn.get("name"), str) else None


def is_custom(entry: Any) -> bool:
    """A custom (freeform-input) tool, tool call or named choice: `{"type": "custom",
    "custom": {"name": ...}}`."""
    return (isinstance(entry, dict) and entry.get("type") == "custom"
            and isinstance(entry.get("custom"), dict)
            and isinstance(entry["custom"].get("name"), str))


def offers_custom_tools(fields: dict[str, Any]) -> bool:
    """Whether these (checked) fields offer custom tools or an allowed_tools choice: a
    target's `override_params`, which go on top of a request whose own were looked at."""
    tc = fields.get("tool_choice")
    return (any(is_custom(t) for t in fields.get("tools") or ()) or is_custom(tc)
            or (isinstance(tc, dict) and tc.get("type") == "allowed_tools"))


def custom_tools_refused(provider: str, body: dict[str, Any]) -> InvalidRequest:
    """For a provider that translates the request, and knows function tools only: a clear 400
    rather than a KeyError or a silent drop, naming `tool_choice` when it alone is the cause
    (a custom tool's choice, or allowed_tools naming one, beside function tools)."""
    tc = body.get("tool_choice")
    by_choice = (isinstance(tc, dict) and tc.get("type") in ("custom", "allowed_tools")
                 and not any(is_custom(t) for t in body.get("tools") or ()))
    return InvalidRequest(f"provider '{provider}' takes function tools only: custom tools and "
                          "allowed_tools choices of them need an OpenAI-type provider.",
                          param="tool_choice" if by_choice else "tools",
                          code="unsupported_value")


def _allowed_names(choice: dict[str, Any]) -> set[str] | None:
    """The function names an allowed_tools choice lists, when it is OpenAI's shape with
    function tools only (`mode` auto or required); else None."""
    allowed = choice.get("allowed_tools")
    if not isinstance(allowed, dict) or allowed.get("mode") not in ("auto", "required"):
        return None
    tools = allowed.get("tools")
    if not isinstance(tools, list) or not tools:
        return None
    names = set()
    for t in tools:
        fn = _named_function(t)
        if fn is None or t.get("type") != "function":
            return None
        names.add(fn["name"])
    return names


def narrowed_to_allowed(body: dict[str, Any]) -> dict[str, Any]:
    """The body with an allowed_tools choice of function tools as the translators can take
    it: only the allowed tools sent, with its mode (auto or required) as the tool_choice, so
    the model can call none of the others, as OpenAI holds it; the body itself otherwise."""
    choice = body.get("tool_choice")
    if not isinstance(choice, dict) or choice.get("type") != "allowed_tools":
        return body
    names = _allowed_names(choice)
    if names is None:
        return body
    tools = [t for t in body.get("tools") or ()
             if (fn := _named_function(t)) is not None and fn["name"] in names]
    return {**body, "tools": tools, "tool_choice": choice["allowed_tools"]["mode"]}


TEXT_ONLY = frozenset({"text"})  # the answer_modalities of most translating providers
# `modalities` values beyond text, as a refusal names them.
_ANSWER_KINDS = {"audio": "audio", "image": "images"}


def answer_changing_refusal(subject: str, body: dict[str, Any], answers: frozenset[str],
                            searches_web: bool = False) -> InvalidRequest | None:
    """For a provider that translates the request (as for custom tools), the OpenAI features
    it lacks that change the answer, or None; `subject` names what lacks them
    (`Provider.refusal_subject`: the provider, or its models served in another format).
    Dropped, the client would get another answer than it asked for and not know it.
    `answers`: the modalities the provider can answer in (`Provider.answer_modalities`);
    `searches_web`: whether it maps `web_search_options` (`Provider.searches_web`). A
    tool_choice that forces a call to no tool offered, and a `response_format` of a type
    OpenAI does not know, are refused too, as OpenAI refuses them; so is a `verbosity` or
    `service_tier` OpenAI does not know (dropped, it would go unnoticed)."""
    if body.get("functions"):  # deprecated: the model could call none of them
        return InvalidRequest(f"{subject} does not take the deprecated 'functions' "
                              "(and 'function_call'); send them as 'tools' (and "
                              "'tool_choice').", param="functions", code="unsupported_value")
    modalities = body.get("modalities")
    for kind, noun in _ANSWER_KINDS.items():  # a spoken answer, a generated image
        if isinstance(modalities, list) and kind in modalities and kind not in answers:
            return InvalidRequest(f"{subject} does not answer with {noun}; leave "
                                  f"'{kind}' out of 'modalities'.", param="modalities",
                                  code="unsupported_value")
    if body.get("web_search_options") is not None and not searches_web:  # (a search model's)
        return InvalidRequest(f"{subject} does not search the web; 'web_search_options' "
                              "needs an OpenAI-type provider or a Gemini model.",
                              param="web_search_options", code="unsupported_value")
    return (_forced_call_refusal(body.get("tool_choice"), body.get("tools"))
            or _response_format_refusal(body.get("response_format"))
            or _dropped_value_refusal(body))


def _forced_call_refusal(choice: Any, tools: Any) -> InvalidRequest | None:
    """A 400 for a tool_choice that forces a call to no function the request offers ('required'
    without tools, or a function not among them): the translators send a choice only beside
    its tools (Anthropic, Bedrock, Gemini), so the client would get prose where it forced a
    call. "auto" and "none" without tools hold as they are."""
    named = _named_function(choice)
    if choice != "required" and named is None:
        return None
    offered = {fn["name"] for fn in map(_named_function, tools or ()) if fn is not None}
    if named is None:
        if offered:
            return None
        message = "tool_choice 'required' forces a tool call, but 'tools' offers none."
    elif named["name"] in offered:
        return None
    else:
        message = f"tool_choice names '{named['name']}', which is not in 'tools'."
    return InvalidRequest(message, param="tool_choice", code="invalid_value")


# OpenAI's response_format types, the ones the translators read. Pass-through types forward
# others (Fireworks' `grammar`, vLLM's `structural_tag`) to upstreams that know them.
RESPONSE_FORMAT_TYPES = ("json_object", "json_schema", "text")


def _response_format_refusal(fmt: Any) -> InvalidRequest | None:
    """A 400 worded as OpenAI's for a response_format of no type it knows: a translator would
    answer in prose a client that asked for some format (`{"type": "object"}`, `{}`)."""
    if not isinstance(fmt, dict) or fmt.get("type") in RESPONSE_FORMAT_TYPES:
        return None  # (not an object: _validate's 400 already)
    if fmt.get("type") is None:
        return InvalidRequest("Missing required parameter: 'response_format.type'.",
                              param="response_format.type", code="missing_required_parameter")
    supported = ", ".join(f"'{t}'" for t in RESPONSE_FORMAT_TYPES[:-1])
    return InvalidRequest(f"Invalid value: {fmt['type']!r}. Supported values are: {supported}, "
                          f"and '{RESPONSE_FORMAT_TYPES[-1]}'.", param="response_format.type",
                          code="invalid_value")


# OpenAI's values of fields the translators drop. Checked only where dropped: an
# OpenAI-compatible upstream may know more (OpenRouter's verbosity `max`, Groq's service_tier
# `on_demand`), and judges its own.
VERBOSITIES = ("low", "medium", "high")
# ("fast": priority processing's new name, which OpenAI takes as well as "priority")
SERVICE_TIERS = ("auto", "default", "flex", "scale", "priority", "fast")
_DROPPED_VALUES = {"verbosity": VERBOSITIES, "service_tier": SERVICE_TIERS}


def _dropped_value_refusal(body: dict[str, Any]) -> InvalidRequest | None:
    """OpenAI's 400 for a dropped field's value it does not know (`verbosity: "max"`,
    `service_tier: "turbo"`), as a reasoning_effort it does not know is one on every provider:
    the request is valid or not whichever answers it."""
    for name, values in _DROPPED_VALUES.items():
        value = body.get(name)
        if value is None or (isinstance(value, str) and value in values):
            continue
        supported = ", ".join(f"'{v}'" for v in values[:-1])
        return InvalidRequest(f"Invalid value for '{name}': {value!r}. Supported values are: "
                              f"{supported}, and '{values[-1]}'.", param=name,
                              code="invalid_value")
    return None


def _check_scalars(body: dict[str, Any]) -> None:
    """Raise for the first field of `_SCALARS`, in its order, that has the wrong type."""
    for name, (ok, expected) in _SCALARS.items():
        value = body.get(name)
        if value is not None and not ok(value):
            if (name in _INT_MINIMUM and type(value) is float and value.is_integer()
                    and not -(2**63) < value <= _INT64_MAX):  # an integer beyond 64 bits
                raise _out_of_range(name, value)
            raise _type_error(name, expected)


def _missing(param: str) -> InvalidRequest:
    return InvalidRequest(f"Missing required parameter: '{param}'.", param=param,
                          code="missing_required_parameter")


def _empty_array(param: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid '{param}': empty array. Expected an array with minimum "
                          "length 1, but got an empty array instead.", param=param,
                          code="empty_array")


def _empty_string(param: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid '{param}': empty string. Expected a string with minimum "
                          "length 1, but got an empty string instead.", param=param,
                          code="empty_string")


def _validate_message(i: int, m: Any) -> bool:
    """Raise for what is wrong; True when it holds a custom tool call."""
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise _type_error(where, "an object")
    role = m.get("role")
    if role is None:  # (as OpenAI: null is none)
        raise _missing(f"{where}.role")
    if not isinstance(role, str) or role not in ROLES:  # (a list is not hashable)
        raise InvalidRequest(
            f"Invalid value for '{where}.role': expected one of "
            f"{', '.join(sorted(ROLES))}.", param=f"{where}.role", code="invalid_value")
    content = m.get("content")
    if content is not None and not isinstance(content, str | list):
        raise _type_error(f"{where}.content", "a string or an array of content parts")
    if role in _SAYS_IN_CONTENT and "content" in m and not content and content != "":
        # As OpenAI: a translator went on without the message (a blank turn, or none).
        if content is None:
            raise InvalidRequest("Invalid value for 'content': expected a string, got null.",
                                 param=f"{where}.content", code="invalid_type")
        raise _empty_array(f"{where}.content")
    if isinstance(content, list):
        for j, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise _type_error(f"{where}.content[{j}]", "an object with a 'type'")
            _check_part(part, f"{where}.content[{j}]")
    if "content" not in m and role != "function" and not (
            role == "assistant" and any(m.get(k) is not None for k in _SAY_WITHOUT_CONTENT)):
        # As OpenAI: a message without content is malformed (an assistant's may be its calls
        # or audio alone); it went upstream as a blank turn. An assistant's explicit null stays
        # a blank message, as the translators read it (replayed answers carry it).
        raise _missing(f"{where}.content")
    if role == "tool" and not isinstance(m.get("tool_call_id"), str):
        raise _missing(f"{where}.tool_call_id")
    if m.get("thinking_blocks") is not None and not isinstance(m["thinking_blocks"], list):
        raise _type_error(f"{where}.thinking_blocks", "an array")
    calls = m.get("tool_calls")
    if calls is None:
        return False
    if not isinstance(calls, list):
        raise _type_error(f"{where}.tool_calls", "an array")
    if not calls:  # as OpenAI (without content, it went on as a blank turn)
        raise _empty_array(f"{where}.tool_calls")
    custom = False
    for j, c in enumerate(calls):
        if is_custom(c):
            custom = True
            continue
        if _named_function(c) is None:
            raise _type_error(f"{where}.tool_calls[{j}].function", "an object with a name")
        if not c["function"]["name"]:  # (as OpenAI: it went on as a call of no tool)
            raise _empty_string(f"{where}.tool_calls[{j}].function.name")
        if c.get("id") is None:
            # As OpenAI: the tool message that answers a call names it by this id, and a made-up
            # one would match none (Anthropic's 400 about an unknown tool_use_id).
            raise InvalidRequest(f"Missing required parameter: '{where}.tool_calls[{j}].id'.",
                                 param=f"{where}.tool_calls[{j}].id",
                                 code="missing_required_parameter")
        _check_fields(c, f"{where}.tool_calls[{j}]", _CALL_FIELDS)
    return custom


# The nested fields translators read, with the type they may rely on when present.
_IS_STR = (lambda v: isinstance(v, str), "a string")
_IS_OBJ = (lambda v: isinstance(v, dict), "an object")
_FUNCTION_FIELDS = {"description": _IS_STR, "parameters": _IS_OBJ}
_CALL_FIELDS = {"id": _IS_STR}
_FORMAT_FIELDS = {"type": _IS_STR, "json_schema": _IS_OBJ}
_PART_FIELDS = {  # by content part type; unknown part types are left to the translators
    "text": {"text": _IS_STR},
    "image_url": {"image_url": _IS_OBJ},
    "input_audio": {"input_audio": _IS_OBJ},
    "file": {"file": _IS_OBJ},
}


def _check_fields(obj: dict[str, Any], where: str, fields: dict[str, Any]) -> None:
    for name, (ok, expected) in fields.items():
        value = obj.get(name)
        if value is not None and not ok(value):
            raise _type_error(f"{where}.{name}", expected)


def _check_part(part: dict[str, Any], where: str) -> None:
    fields = _PART_FIELDS.get(part["type"])
    if fields is None:
        return
    for name in fields:
        if part.get(name) is None:
            raise InvalidRequest(f"Missing required parameter: '{where}.{name}'.",
                                 param=f"{where}.{name}", code="missing_required_parameter")
    _check_fields(part, where, fields)
    if part["type"] == "image_url" and not isinstance(part["image_url"].get("url"), str):
        raise _type_error(f"{where}.image_url.url", "a string")


_CONTAINERS = (dict, list)


def check_depth(obj: Any, limit: int, what: str = "The request JSON") -> None:
    """Reject absurdly nested JSON before any recursive translator walks it."""
    level = [obj]  # the containers `depth` levels down, one level at a time
    depth = 1
    while level:
        if depth > limit:
            raise InvalidRequest(f"{what} is nested deeper than {limit} levels.",
                                 code="json_too_deep")
        below = []
        for node in level:
            for v in node.values() if isinstance(node, dict) else node:
                if isinstance(v, _CONTAINERS):
                    below.append(v)
        level = below
        depth += 1
