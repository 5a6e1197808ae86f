"""Reading OpenAI message content, shared by the request translators (pure)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import Any

import orjson

from streamproxy._json import loads_fragments, loads_repaired
from streamproxy.errors import InvalidRequest
from streamproxy.openai_api.request import check_depth

# The user turn sent to providers that need one (Anthropic, Gemini, Bedrock) when a request has
# none — only system/developer messages, which OpenAI answers: the system text stays the system
# prompt, and this asks the model to act on it (README "Choices we made").
PLACEHOLDER_USER_TEXT = "Begin."
# The text of a user message with nothing a provider takes (empty, null, or whitespace where
# Anthropic and Converse refuse it) that answers an assistant turn. Left out, the turn would
# vanish: a request ending with it would end with the assistant turn, which Claude continues
# (a prefill) instead of answering, and assistant turns around it would merge. It says what
# the client sent (README "Choices we made").
BLANK_USER_TEXT = "(empty message)"


def stood_in_for_blank(turn: list[dict[str, Any]], blank: dict[str, Any] | None) -> bool:
    """`turn` holds only `blank`, the BLANK_USER_TEXT block a translator put there: a user
    message that follows it gives the turn its content, and the stand-in goes (it kept a turn
    that no longer needs it)."""
    return blank is not None and len(turn) == 1 and turn[0] is blank


# An assistant's content parts that hold no text for the model: the thinking Portkey's clients
# send back there (read by `signed_thinking`, for Claude). A `refusal` part is text (below).
NOT_TEXT_PARTS = frozenset({"thinking", "redacted_thinking"})
THINKING_TYPES = frozenset({"thinking", "redacted_thinking"})


def texts(content: Any, where: str) -> list[str]:
    """The non-empty texts of a content field that may hold only text: a string, or an array
    of `text` and `refusal` parts (NOT_TEXT_PARTS are skipped; any other part is a 400 naming
    it)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content] if content else []
    return [part["text"] for part in text_parts(content, where)]


def text_parts(content: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """The `text` parts with text of an array that may hold only text, as `texts` reads it
    (for a translator that carries a part's other keys, such as `cache_control`). A `refusal`
    part comes as a text part of its words: what the assistant said, as OpenAI's model reads
    it; left out, a replayed turn that refused vanished and the model never knew it had."""
    out = []
    for j, part in enumerate(content):
        kind = part.get("type")
        if kind == "text":
            if part.get("text"):
                out.append(part)
        elif kind == "refusal":
            if isinstance(part.get("refusal"), str) and part["refusal"]:
                out.append({**part, "type": "text", "text": part["refusal"]})
        elif kind not in NOT_TEXT_PARTS:
            raise InvalidRequest(f"Content part type '{kind}' is not allowed here.",
                                 param=f"{where}[{j}].type", code="unsupported_value")
    return out


def said(m: dict[str, Any]) -> Any:
    """An assistant message's content as its text is read: `content`, or, where that is empty
    (null, "", []), its `refusal`. The openai SDK's message object of a refused answer has
    `content: null` and the words in `refusal`, and clients append it to the history as it
    came: read as content, the turn is not lost."""
    content, refusal = m.get("content"), m.get("refusal")
    if not content and isinstance(refusal, str) and refusal:
        return refusal
    return content


def signed_thinking(m: dict[str, Any]) -> list[Any]:
    """An assistant turn's thinking blocks, as clients send them back: `thinking_blocks` (as we
    answer them, and LiteLLM), else Portkey's forms — its answers' `content_blocks`, or
    `thinking` / `redacted_thinking` parts in `content` (Portkey's multi-turn docs) —, else
    a Claude's thinking in OpenRouter's `reasoning_details`. The first field that holds any is
    used, so a block is never sent twice. Claude wants them back with the tool calls of a turn
    that thought."""
    for field in ("thinking_blocks", "content_blocks", "content"):
        source = m.get(field)
        if isinstance(source, list):
            blocks = [b for b in source if isinstance(b, dict) and b.get("type") in THINKING_TYPES]
            if blocks:
                return blocks
    return _claude_details(m.get("reasoning_details"))


# OpenRouter's `format` of the reasoning_details a Claude wrote (served by Anthropic, Bedrock or
# Vertex, whose signatures hold on each other); another model's signature Claude cannot check.
_CLAUDE_FORMAT = "anthropic-claude-v1"


def _claude_details(details: Any) -> list[dict[str, Any]]:
    """A Claude's entries of OpenRouter's `reasoning_details` as its thinking blocks:
    `reasoning.text` (its `signature` beside) → thinking, `reasoning.encrypted` →
    redacted_thinking. Consecutive text entries of one `index` are one block, as a stream's
    deltas give it (the signature on the last)."""
    blocks: list[dict[str, Any]] = []
    claudes: list[bool] = []  # per block: a Claude's (an entry of it said so)
    index: Any = None  # the last text block's index
    for detail in details if isinstance(details, list) else ():
        if not isinstance(detail, dict):
            continue
        kind, claude = detail.get("type"), detail.get("format") == _CLAUDE_FORMAT
        if kind == "reasoning.text":
            if index is not None and detail.get("index") == index:
                claudes[-1] = claudes[-1] or claude
            else:
                blocks.append({"type": "thinking", "thinking": "", "signature": ""})
                claudes.append(claude)
            text, signature = detail.get("text"), detail.get("signature")
            if isinstance(text, str):
                blocks[-1]["thinking"] += text
            if isinstance(signature, str) and signature:
                blocks[-1]["signature"] = signature
            index = detail.get("index")
            continue
        index = None
        if kind == "reasoning.encrypted" and claude and isinstance(detail.get("data"), str):
            blocks.append({"type": "redacted_thinking", "data": detail["data"]})
            claudes.append(True)
    return [block for block, claude in zip(blocks, claudes, strict=True) if claude]


# OpenRouter's `reasoning_details` entries that hold readable text, and the key of their text.
_REASONING_DETAIL_TEXT = {"reasoning.text": "text", "reasoning.summary": "summary"}


def replayed_reasoning(m: dict[str, Any]) -> str:
    """The reasoning text of an assistant turn sent back, under any name an OpenAI-compatible
    answer gives it: `reasoning_content` (DeepSeek's, and ours), else `reasoning` (OpenRouter's,
    Groq's, vLLM's), else the text and summaries in OpenRouter's `reasoning_details` (encrypted
    entries have none). "" when there is none: a loop begun on another provider keeps its
    reasoning wherever it goes."""
    for key in ("reasoning_content", "reasoning"):
        text = m.get(key)
        if isinstance(text, str) and text:
            return text
    details = m.get("reasoning_details")
    if not isinstance(details, list):
        return ""
    parts = []
    for detail in details:
        kind = detail.get("type") if isinstance(detail, dict) else None
        field = _REASONING_DETAIL_TEXT.get(kind) if isinstance(kind, str) else None
        if field is not None and isinstance(detail.get(field), str):
            parts.append(detail[field])
    return "".join(parts)


def answer_cap(body: dict[str, Any]) -> Any:
    """The client's cap on the answer's tokens: `max_completion_tokens` (OpenAI's current
    name), else `max_tokens`; None (or 0) without one."""
    return body.get("max_completion_tokens") or body.get("max_tokens")


def stop_list(stop: str | list[str]) -> list[str]:
    """`stop` as a list: OpenAI takes one string or several."""
    return [stop] if isinstance(stop, str) else stop


def is_blank(text: str | None) -> bool:
    """Empty or whitespace only: Anthropic and Bedrock Converse answer such a text block with
    a 400 ("text content blocks must contain non-whitespace text"), so they leave it out."""
    return not text or text.isspace()


# The ASCII whitespace a data: URL's base64 may hold (WHATWG's forgiving-base64 skips it).
_BASE64_SPACE = ("\n", " ", "\r", "\t", "\f")


def lower_scheme(url: Any) -> Any:
    """`url` with its scheme lower-cased, anything else as it is. Schemes are case-insensitive
    (RFC 3986 §3.1): `DATA:…` and `HTTPS://…` are what the client meant, and the translators'
    checks (and the providers) read them lower-cased. Only such a URL is copied."""
    if not isinstance(url, str):
        return url
    colon = url.find(":", 0, 16)  # (a scheme is short; a data: URL's whole text is not read)
    if colon > 0 and not url[:colon].islower():
        return url[:colon].lower() + url[colon:]
    return url


def parse_data_url(url: str, where: str, default: str = "text/plain") -> tuple[str, str]:
    """`data:<mime>;base64,<data>` → (lower-cased mime, the base64 text without whitespace).
    Encoders break lines in base64 (MIME's every 76 characters, Android's Base64.DEFAULT),
    clients put a space after the comma, and data: URL readers skip both; the providers'
    base64 fields are strict (Anthropic: "invalid base64 data"), so it goes on without.
    A URL without a mime (`data:;base64,…`, what uploads of a file of no known type make) has
    RFC 2397's default, text/plain: the translators read an image's or a PDF's type from its
    bytes anyway (image_media_type, file_media_type). A translator that can tell a file's type
    by its name passes `default=""`, to know the type was left out, not given."""
    head, _, data = url.partition(",")
    head = head.lower()  # (the scheme and `;base64` are case-insensitive)
    mime = head[5:].split(";")[0].strip() or default
    if not head.startswith("data:") or ";base64" not in head or not data:
        raise InvalidRequest("A data: URL must look like data:<mime>;base64,<data>.",
                             param=where, code="invalid_value")
    return mime, base64_text(data, where)


# The base64 alphabet and its padding: what is left of a valid base64 text without them is "".
_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


def base64_text(data: str, where: str) -> str:
    """Base64 text as the providers' strict base64 fields take it, or a 400 naming `where`:
    sent on, bad base64 got the provider's 400, which names no part. As WHATWG's
    forgiving-base64 (data: URL readers), whitespace is left out and missing padding added.
    Checked without decoding (a translate over the bytes, faster than a decode or a regex)."""
    if any(space in data for space in _BASE64_SPACE):  # (a scan; a split copies megabytes)
        data = "".join(data.split())
    pad = data.find("=")
    if (not data or not data.isascii() or data.encode().translate(None, _BASE64_ALPHABET)
            or (pad >= 0 and (len(data) % 4 or pad < len(data) - 2 or data[-1] != "="))
            or len(data) % 4 == 1):
        raise InvalidRequest(f"Invalid '{where}': its data is not valid base64.", param=where,
                             code="invalid_value")
    return data + "=" * (-len(data) % 4)  # (a copy only for the unpadded)


# The first bytes of the image types Anthropic and Bedrock take, and the WebP mark at 8.
_IMAGE_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"),
                     (b"GIF87a", "image/gif"), (b"GIF89a", "image/gif"))


def image_type(data: str) -> str | None:
    """The type of a base64 image read from its first bytes: png, jpeg, gif or webp, else None.
    Anthropic (and Bedrock) refuse an image whose declared type is not what its bytes are
    ("…specified using the image/jpeg media type, but the image appears to be a image/png
    image"), where OpenAI reads a PNG labelled image/jpeg; clients do send such labels."""
    try:
        head = base64.b64decode(data[:16])  # 12 bytes: enough for WebP's RIFF….WEBP
    except (binascii.Error, ValueError):
        return None
    for signature, mime in _IMAGE_SIGNATURES:
        if head.startswith(signature):
            return mime
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def image_media_type(data: str, label: str) -> str:
    """A base64 image's type for a provider: the one its bytes show (`image_type`), else its
    label, with the common misspelling `image/jpg` read as image/jpeg."""
    return image_type(data) or ("image/jpeg" if label == "image/jpg" else label)


def file_media_type(data: str, label: str) -> str:
    """A base64 file's type for a provider: application/pdf when its bytes begin as a PDF's
    (its label may be generic, application/octet-stream, which no provider takes as a
    document), else as `image_media_type` reads it."""
    try:
        if base64.b64decode(data[:8]).startswith(b"%PDF-"):
            return "application/pdf"
    except (binascii.Error, ValueError):
        pass
    return image_media_type(data, label)


def file_data(file: dict[str, Any], where: str, provider: str) -> Any:
    """A `file` part's `file_data`. A `file_id` names a file in OpenAI's Files API, which
    `provider` cannot read: a 400 naming it, rather than one about a missing `file_data`."""
    if file.get("file_data") is None and file.get("file_id") is not None:
        raise InvalidRequest(f"{provider} cannot read OpenAI file ids; send the file as "
                             "'file_data' (a data: URL).", param=f"{where}.file_id",
                             code="unsupported_value")
    return file.get("file_data")


# The key under which a tool call's `arguments` that are not JSON (a call cut off at
# max_tokens, a model's malformed output) go to providers that take an object: OpenAI takes
# any string there, so such a history is answered, and the model still reads what it wrote.
RAW_ARGUMENTS = "raw_arguments"


# JSON a client sends in a string (a tool call's arguments, a tool result Gemini takes as an
# object) is parsed and sent a few levels into the upstream body, out of the request depth
# limit's reach: deeper than orjson writes (255 levels) it was a 500. Deeper than this, a 400.
EMBEDDED_JSON_DEPTH = 200


def loads_embedded(text: str, what: str) -> Any:
    """orjson.loads(text), refused (json_too_deep) past EMBEDDED_JSON_DEPTH; `what` names it.
    A lone UTF-16 half's escape (a JavaScript client's string cut inside an emoji) is read
    as U+FFFD, as in the body: orjson refuses it, and the JSON went on as text."""
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        parsed = loads_repaired(text.encode(errors="surrogatepass"))  # (else still refused)
    # Each level opens a bracket: with no more brackets than the limit, no walk is needed.
    if text.count("{") + text.count("[") > EMBEDDED_JSON_DEPTH:
        check_depth(parsed, EMBEDDED_JSON_DEPTH, what)
    return parsed


def tool_call_input(arguments: Any) -> dict[str, Any]:
    """An assistant tool call's `arguments` (a JSON string; "" means no arguments) → the
    object providers take as input. `null` means none too: Cohere and clients that serialise
    a missing value write it for a tool without parameters (wrapped, the model would read an
    argument it never passed). Another non-object JSON value is wrapped as {"value": …}, text
    that is not JSON as {RAW_ARGUMENTS: text}."""
    if not arguments:
        return {}
    try:
        parsed = loads_embedded(arguments, "The JSON of a tool call's arguments") \
            if isinstance(arguments, str) else arguments
    except orjson.JSONDecodeError:
        # An exponent past a double's (1e400) is JSON orjson refuses, and an answer's call
        # passes it on as written: it goes back as the object the model wrote, not as text.
        parsed = loads_fragments(arguments)
        if parsed is None:
            return {RAW_ARGUMENTS: arguments}
        if arguments.count("{") + arguments.count("[") > EMBEDDED_JSON_DEPTH:
            check_depth(parsed, EMBEDDED_JSON_DEPTH, "The JSON of a tool call's arguments")
        return parsed if isinstance(parsed, dict) else {"value": parsed}
    if parsed is None:
        return {}
    if isinstance(arguments, str):  # numbers orjson read otherwise go back as written
        exact = loads_fragments(arguments)
        if exact is not None:
            parsed = exact
    return parsed if isinstance(parsed, dict) else {"value": parsed}


# The place among its turn's calls of a tool result that matches none by id: after them all
# (for the providers that put a turn's results in the order of its calls: Gemini, Ollama).
UNMATCHED_PLACE = 1 << 30


def distinct_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The function tools without a repeat of one (the same name and definition), which OpenAI
    takes (an agent that merged two tool sets) and Claude, Gemini and Converse refuse ("Tool
    names must be unique"). Tools of one name that differ all go: the provider judges them."""
    if len({t["function"]["name"] for t in tools}) == len(tools):
        return tools  # (the usual: names alone tell, nothing compared or copied)
    seen: dict[str, list[dict[str, Any]]] = {}
    kept = []
    for tool in tools:
        alike = seen.setdefault(tool["function"]["name"], [])
        if tool not in alike:
            alike.append(tool)
            kept.append(tool)
    return kept


def with_call_ids(msgs: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    """`msgs` with each assistant tool call of `id: ""` named `<prefix><i>_<j>` (message i,
    call j), and each tool result of `tool_call_id: ""` after it naming the first such call of
    the latest assistant turn that no result named yet: a client that replays calls without
    ids (some proxies in front of Gemini send `""`) answers them without ids, in order, and a
    provider pairs a call and its result by id (Anthropic and Bedrock refuse a call left
    unanswered, Gemini needs the call's name). A call whose id an earlier call of its turn
    has (servers that number each answer's calls alike) is named so too, and that id's
    results name its calls in order (the last again for any more). So is one whose id an
    earlier turn's call has (those servers' `call_0` in every answer), since Anthropic refuses
    a request whose tool_use ids repeat: the turn's results of that id name it. `msgs` itself
    when every call has an id of its own."""
    out = msgs
    unnamed: list[str] = []  # the latest assistant turn's calls of no id, not yet answered
    shared: dict[str, list[str]] = {}  # the latest turn's repeated ids → their calls' ids
    turn: set[str] = set()  # the ids of the latest turn's calls (its assistant messages')
    earlier: set[str] = set()  # those of the turns before it
    for i, m in enumerate(msgs):
        role = m.get("role")
        if role == "assistant":
            if not i or msgs[i - 1].get("role") != "assistant":  # (not a turn's next message)
                unnamed, shared = [], {}
                earlier |= turn
                turn = set()
            calls = m.get("tool_calls")
            if not calls:
                continue
            ids = [call.get("id") for call in calls]
            if all(ids) and len(set(ids)) == len(ids) and turn.isdisjoint(ids) \
                    and earlier.isdisjoint(ids):
                turn.update(ids)
                continue
            named = []
            for j, call in enumerate(calls):
                call_id = call.get("id")
                if not call_id:
                    call = {**call, "id": f"{prefix}{i}_{j}"}
                    unnamed.append(call["id"])
                elif call_id in earlier:  # (the turn's results of that id name this call)
                    call = {**call, "id": f"{prefix}{i}_{j}"}
                    shared.setdefault(call_id, []).append(call["id"])
                elif call_id in turn or call_id in ids[:j]:
                    call = {**call, "id": f"{prefix}{i}_{j}"}
                    shared.setdefault(call_id, [call_id]).append(call["id"])
                named.append(call)
            turn.update(ids)
            turn.update(call["id"] for call in named)
            m = {**m, "tool_calls": named}
        elif role == "tool" and m.get("tool_call_id") == "" and unnamed:
            m = {**m, "tool_call_id": unnamed.pop(0)}
        elif role == "tool" and m.get("tool_call_id") in shared:
            calls_of_id = shared[m["tool_call_id"]]
            m = {**m, "tool_call_id": calls_of_id.pop(0) if len(calls_of_id) > 1
                 else calls_of_id[0]}
        else:
            continue
        if out is msgs:
            out = list(msgs)
        out[i] = m
    return out


# Anthropic's tool_use ids and Bedrock's toolUseIds: 1 to 64 of these (a 400 otherwise).
_TOOL_USE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NOT_IN_TOOL_USE_ID = re.compile(r"[^A-Za-z0-9_-]")


def tool_use_id(call_id: str) -> str:
    """A tool call's id as Anthropic and Bedrock take it. Ids from other providers may not fit
    (Kimi's `functions.get_weather:0`, long ids): those keep their legible part and gain 16 hex
    digits of their SHA-256, so a call and its result map alike, in this request and every
    later one, and two ids never merge."""
    if _TOOL_USE_ID.fullmatch(call_id):
        return call_id
    digest = hashlib.sha256(call_id.encode()).hexdigest()[:16]
    return f"{_NOT_IN_TOOL_USE_ID.sub('_', call_id)[:47]}_{digest}"


# OpenAI's reasoning_effort values (the openai SDK's `ReasoningEffort`), max the top, above
# xhigh. OpenAI answers another with a 400, and so does every provider that translates it:
# ignoring one would answer without the reasoning the client asked for.
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")


def reasoning_effort(body: dict[str, Any]) -> str | None:
    """The request's `reasoning_effort` (None without one), or a 400 for a value outside
    REASONING_EFFORTS, worded as OpenAI's."""
    effort = body.get("reasoning_effort")
    if effort is None or effort in REASONING_EFFORTS:
        return effort
    supported = ", ".join(f"'{e}'" for e in REASONING_EFFORTS)
    raise InvalidRequest(f"Invalid value for 'reasoning_effort': {effort!r}. Supported values "
                         f"are: {supported}.", param="reasoning_effort", code="invalid_value")


def logprobs_asked(body: dict[str, Any]) -> bool:
    """Whether the request asks for logprobs, or a 400 for a `top_logprobs` without
    `logprobs: true`, worded as OpenAI's. Every translating provider checks it, whether it maps
    logprobs or drops them, so one request is valid or not whichever answers it."""
    asked = bool(body.get("logprobs"))
    if not asked and body.get("top_logprobs") is not None:
        raise InvalidRequest("The 'top_logprobs' parameter is only allowed when 'logprobs' is "
                             "enabled.", param="top_logprobs")
    return asked


# OpenAI request fields that translated providers lack: every translating provider drops
# them (the README's "common" list), but Gemini/Vertex and Ollama map `logprobs` and
# `top_logprobs`. `store` and `stream_options.include_usage` are honoured by the proxy itself.
OPENAI_ONLY = frozenset({
    "audio", "function_call", "functions", "logit_bias", "logprobs", "metadata", "modalities",
    "prediction", "prompt_cache_key", "prompt_cache_retention", "safety_identifier",
    "service_tier", "store",
    "stream_options", "top_logprobs", "verbosity", "web_search_options",
})
