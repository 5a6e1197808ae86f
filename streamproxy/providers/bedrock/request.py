"""OpenAI Chat Completions request → Bedrock Converse request (pure). provider-streams.md §5.1.

Choices (docs/providers/bedrock.md):
- system/developer messages → `system: [{text}]`, in order; a request with no other message,
  or whose conversation starts with the assistant, gets a PLACEHOLDER_USER_TEXT user turn
  first (Converse rejects a conversation that does not start with a user message), and one
  whose system messages follow the final assistant turn gets one last, as on Anthropic (and,
  in a later request, one between them and the assistant message that answered them);
- consecutive tool results become one user message of `toolResult` blocks, placed before any
  other user content; consecutive messages of one role are merged (Converse wants alternation);
- empty and whitespace-only text is left out in every role (Converse refuses it), and a final
  assistant turn (a prefill) loses its trailing whitespace (Claude refuses it), as on Anthropic;
  a user message left with nothing that answers an assistant turn is BLANK_USER_TEXT, as on
  Anthropic (its turn stays: the request never becomes a prefill);
- tool-call ids Converse cannot take are mapped alike in call and result, as on Anthropic
  (`tool_use_id`);
- images are `data:` URLs (→ `image.source.bytes`, base64 as the JSON protocol carries blobs) or
  `s3://` URIs (→ `s3Location`); http(s) image URLs are refused: the proxy fetches nothing;
  files are `data:` URLs too (an OpenAI `file_id` is a 400 naming it), their format by their
  label, else by their filename's extension (a generic label: application/octet-stream);
- a function's `strict: true` → the toolSpec's `strict`, its parameters as `claude_schema`
  makes them, for the models that take structured outputs (AWS lists the same models for strict
  tool use); the others refuse it, so they get the tool as a non-strict one, as on Anthropic;
- `parallel_tool_calls: false` → Claude's `disable_parallel_tool_use`, in its own `tool_choice`
  in `additionalModelRequestFields` (`_one_call_at_a_time`); dropped for other models;
- `tool_choice`: auto → `{auto}`, required → `{any}`, a named function → `{tool}`. Converse has
  no "none": the tools are left out instead — unless the conversation already holds toolUse /
  toolResult blocks, where Bedrock requires a `toolConfig`, so the tools stay and "none" is not
  enforced. A conversation with tool blocks and no `tools` gets name-only tool specs;
- `reasoning_effort` minimal/low/medium/high/xhigh/max → `additionalModelRequestFields.thinking`
  with a budget of 1024/1024/4096/16384/24576/27904 tokens for Claude models (`anthropic.claude` in
  the model id; not the Claudes before 3.7 Sonnet: `cannot_think`), kept below the client's
  max and refused beside a temperature other than 1, a
  top_k or a top_p below 0.95, as on Anthropic (anthropic/thinking.py) — for the Claudes that
  take no budget (Opus 4.7 on: anthropic/thinking.py) `thinking: {type: adaptive}` and
  `output_config.effort` low/low/medium/high/xhigh/max instead (xhigh: max on the Claudes
  without it), the same refusals kept; for Nova 2
  (`amazon.nova-2-`) → `additionalModelRequestFields.reasoningConfig` and for gpt-oss
  (`openai.gpt-oss`) → `….reasoning_effort`, the nearest of the low/medium/high both take
  (REASONING_LEVELS; Nova 2's high beside a max, a temperature or a top_p is a 400);
  dropped for other models;
- assistant `thinking_blocks` (as we stream them; or Portkey's forms, see `signed_thinking`)
  go back as `reasoningContent` blocks; one without its signature (or a redacted one without
  data) is left out, and so is reasoning that ends an assistant turn, and for Claude the
  final turn's reasoning when the request does not think (as on Anthropic);
- a content part's or a tool's `cache_control` (Anthropic's prompt-caching breakpoint, as
  Portkey passes it) → a `cachePoint` block after the block made from it (after the tool's
  spec; after the whole `toolResult`, whose content cannot hold one); a message's own
  (LiteLLM's form, e.g. beside string content) → one after the last block made from it; the
  request's own (Anthropic's automatic caching, which Converse lacks) → one after the last
  block of the conversation, where Anthropic puts that breakpoint (where a part's own point is
  already, a message's or the request's 1h makes it 1h, not a second one); past the 4 Bedrock takes,
  the earliest turns' are dropped first (`_fit_cache_points`, as on Anthropic);
- `input_audio` → an `audio` block (AUDIO_FORMATS: OpenAI's wav and mp3, and Converse's own);
- a user turn with documents and no text gets a DOCUMENT_ONLY_TEXT block (Converse requires
  text beside documents);
- a tool result with no text (or only blank text) is sent as EMPTY_TOOL_RESULT: Converse
  rejects blank text blocks and an empty `content`; its images and files go in it as image and
  document blocks, as a user message's;
- a whitespace-only stop sequence is a 400 for Claude, as on Anthropic; other models get no
  empty one (Converse refuses it);
- a `temperature` above 1 and within OpenAI's 2 is sent as 1, as on Anthropic: Converse's
  `inferenceConfig.temperature` runs from 0 to 1 for every model;
- `top_p` 1 (no nucleus cut) is not sent for Claude, which refuses it beside `temperature`,
  nor a `temperature` of 1 (Claude's default) beside a `topP` that is sent, nor another
  `topP` beside a `temperature` for the Claudes that refuse both (`takes_one_sampler`);
  the Claudes that refuse sampling at all (Opus 4.7 on) get no `temperature`, `top_p` or
  `top_k`, as on Anthropic;
- `response_format` json_schema → Converse structured outputs (`outputConfig.textFormat`, the
  schema in Claude's subset as Anthropic's `claude_schema` makes it, sent as a JSON string) for
  the models NATIVE_SCHEMA_MODELS names, or for any model with STRUCTURED_OUTPUTS "native";
  otherwise, and for json_object (Converse has no schema-less JSON mode), a system instruction
  (not enforced), which leads the first user turn instead for the models NO_SYSTEM_MODELS names;
  beside a prefill (a final assistant turn) structured outputs are a 400, as on Anthropic
  (`refuse_prefill`);
- `top_k` (no OpenAI parameter, but the extra_body name Anthropic, Gemini, Cohere and Ollama
  take) → `additionalModelRequestFields.top_k` for Claude, `….inferenceConfig.topK` for Nova
  (where AWS documents each); dropped for other models, whose fields differ or lack one (a
  client's own value in `additionalModelRequestFields` wins);
- Converse-native fields a client may pass (openai SDK `extra_body`) are forwarded: PASSTHROUGH;
- `metadata` → `requestMetadata`, the entries that fit its pattern (others left out); a
  client's own `requestMetadata` wins;
- `service_tier` flex / priority (or fast) / default → `serviceTier.type` (SERVICE_TIERS); auto
  and scale send none; a client's own `serviceTier` wins;
- the provider option `anthropic_beta` (Claude's betas, as the `anthropic` type sends in its
  `anthropic-beta` header) → `additionalModelRequestFields.anthropic_beta`, a list, for Claude
  models only; a client's own list there is sent as given;
- tool names Converse refuses (a dot, a space, a slash, over 64 characters) renamed, the model's
  calls mapped back (names.py);
- the rules chosen by model id read the name anywhere in it (profile ids, ARNs); AWS's default
  Claude prompt router, which names no version, as the Claudes it routes between (PROMPT_ROUTERS);
- OpenAI parameters in DROPPED are dropped; `n` > 1 is rejected.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from streamproxy.errors import InvalidRequest
from streamproxy.openai_api.content import (
    BLANK_USER_TEXT,
    OPENAI_ONLY,
    PLACEHOLDER_USER_TEXT,
    base64_text,
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
from streamproxy.providers.anthropic.request import (
    LONGEST_TTL,
    claude_schema,
    claude_stop_sequences,
    drop_final_turn_thinking,
    drop_trailing_thinking,
    ends_with_system,
    excess_breakpoints,
    json_instruction,
    refuse_prefill,
    response_schema,
    shorter_before_longer,
    thinks,
    tool_cache_control,
    trim_prefill,
)
from streamproxy.providers.anthropic.thinking import (
    adaptive_effort,
    cannot_think,
    claude_temperature,
    fit_thinking,
    takes_adaptive_thinking_only,
    takes_no_sampling,
    takes_one_sampler,
)
from streamproxy.providers.bedrock.names import converse_renames, rename

DEFAULT_MAX_TOKENS = 4096  # the answer's allowance beside a thinking budget
# OpenAI parameters with no Converse equivalent: dropped, never forwarded.
# (`parallel_tool_calls` is Claude's alone, below; other models have no such setting.)
DROPPED = (OPENAI_ONLY - {"metadata", "service_tier"}) | {"frequency_penalty",
                                                          "presence_penalty", "seed", "user"}
# Converse request fields a client may set itself, forwarded as given: every one of Converse's
# that to_converse does not make (serviceTier's flex / priority, a projectIdentifier: dropped,
# they left the request on the standard tier and the default project).
PASSTHROUGH = ("additionalModelRequestFields", "additionalModelResponseFieldPaths",
               "guardrailConfig", "performanceConfig", "projectIdentifier", "promptVariables",
               "requestMetadata", "serviceTier")
# OpenAI's service_tier → Converse's serviceTier type, for the tiers both have ("fast" is
# OpenAI's new name for priority). auto and scale (OpenAI's reserved capacity; Bedrock's
# reserved tier needs a reservation arranged with AWS) send none: Bedrock's standard tier.
SERVICE_TIERS = {"flex": "flex", "priority": "priority", "fast": "priority",
                 "default": "default"}
IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg",
                 "image/gif": "gif", "image/webp": "webp"}
IMAGE_EXTENSIONS = {"png": "png", "jpg": "jpeg", "jpeg": "jpeg", "gif": "gif", "webp": "webp"}
DOCUMENT_FORMATS = {
    "application/pdf": "pdf", "text/csv": "csv", "application/msword": "doc",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.ms-excel": "xls",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
    "text/html": "html", "text/plain": "txt", "text/markdown": "md",
}
# What Converse's requestMetadata takes (botocore's model): 16 entries, keys of 1 to 256 and
# values of up to 256 of these characters (\s as Java reads it: ASCII whitespace).
_METADATA_TEXT = re.compile(r"[A-Za-z0-9 \t\n\x0b\f\r:_@$#=/+,.-]{0,256}")
METADATA_MAX = 16
# `input_audio.format`s Converse's audio block takes (its AudioFormat): OpenAI's wav and mp3
# first, then Converse's own. Which models hear them is Bedrock's to say (its 400).
AUDIO_FORMATS = ("wav", "mp3", "opus", "aac", "flac", "mp4", "ogg", "mkv", "mka", "x-aac", "m4a",
                 "mpeg", "mpga", "pcm", "webm")
# A document's format by its file name's extension, for a label that names none of the above
# (application/octet-stream, what many upload paths give a file; text/x-markdown).
DOCUMENT_EXTENSIONS = frozenset(DOCUMENT_FORMATS.values())
# What a tool result that returned nothing says (Converse needs one non-blank block): plain text
# every model reads as "the tool ran and returned nothing".
EMPTY_TOOL_RESULT = "(empty)"
# The text of a user turn that holds only documents (Converse needs a text block beside them):
# it says what the turn is, and asks nothing of the model.
DOCUMENT_ONLY_TEXT = "(attached document)"
# The models AWS lists as taking Converse structured outputs (`outputConfig.textFormat`), as
# they appear in foundation-model and inference-profile ids. A model without them answers 400
# (not every Claude has them: Opus 4.7 does not), so the others get the instruction unless the
# operator says otherwise (STRUCTURED_OUTPUTS). AWS also lists select open-weight models by
# family, not by id: those are opted in with `structured_outputs: native`.
NATIVE_SCHEMA_MODELS = ("anthropic.claude-haiku-4-5", "anthropic.claude-sonnet-4-5",
                        "anthropic.claude-sonnet-4-6", "anthropic.claude-opus-4-5",
                        "anthropic.claude-opus-4-6")
# The models whose Converse refuses a system prompt (AWS's feature table: Titan Text, Mistral 7B
# Instruct, Mixtral 8x7B), as they appear in model ids: the JSON instruction the proxy adds
# leads their first user turn instead. A client's own system message goes as sent.
NO_SYSTEM_MODELS = ("amazon.titan-text", "mistral.mistral-7b-instruct",
                    "mistral.mixtral-8x7b-instruct")
# The provider option `structured_outputs`: native for the models above (auto), for every
# model (native), or never (instruction).
STRUCTURED_OUTPUTS = ("auto", "native", "instruction")
# reasoning_effort → the level Nova 2 (`reasoningConfig.maxReasoningEffort`) and gpt-oss (its
# own `reasoning_effort`) take: low, medium or high, the nearest one. Nova 2 reasons only when
# asked, so "none" sends nothing; gpt-oss always reasons, so "none" is its least, as Gemini 3's.
REASONING_LEVELS = {"none": "low", "minimal": "low", "low": "low", "medium": "medium",
                    "high": "high", "xhigh": "high", "max": "high"}
# What Nova 2 refuses beside its high reasoning effort (AWS: they must be unset there).
UNSET_FOR_HIGH_EFFORT = {"max_completion_tokens": "a maximum of output tokens",
                         "max_tokens": "a maximum of output tokens",
                         "temperature": "a temperature", "top_p": "a top_p"}
# Converse document names allow letters, digits, whitespace, hyphens, parentheses, brackets.
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9\s\-()\[\]]+")
NAME_MAX = 200  # Converse's longest document name


# AWS's default prompt routers whose ids name no model version, as their ARNs end
# (`…:default-prompt-router/anthropic.claude:1`) → one of the models each routes between, the
# id the rules chosen by model id read: unversioned, a Claude was the newest (adaptive thinking,
# no sampling), where this router serves Claude 3 Haiku and 3.5 Sonnet (neither thinks; both
# take temperature and top_p together). (Llama's and Nova's routers: no rule tells them apart.)
PROMPT_ROUTERS = {"default-prompt-router/anthropic.claude:1":
                  "anthropic.claude-3-5-sonnet-20240620-v1:0"}


def routed_model(model: str) -> str:
    """`model`, or for a default prompt router the model its rules are those of."""
    if "default-prompt-router/" in model:
        for router, routed in PROMPT_ROUTERS.items():
            if model.endswith(router):
                return routed
    return model


def is_claude(model: str) -> bool:
    return "anthropic.claude" in model


def is_nova(model: str) -> bool:
    return "amazon.nova" in model


def is_nova_2(model: str) -> bool:
    return "amazon.nova-2-" in model


def is_gpt_oss(model: str) -> bool:
    return "openai.gpt-oss" in model


def takes_native_schema(model: str, structured_outputs: str = "auto") -> bool:
    if structured_outputs == "auto":
        return any(name in model for name in NATIVE_SCHEMA_MODELS)
    return structured_outputs == "native"


class _StructuredOutputs:
    """Whether the model takes Converse structured outputs (and strict tools), asked when a
    request needs to know: a plain chat request does not scan the model list."""

    __slots__ = ("_mode", "_model")

    def __init__(self, model: str, mode: str) -> None:
        self._model, self._mode = model, mode

    def __bool__(self) -> bool:
        return takes_native_schema(self._model, self._mode)


def to_converse(body: dict[str, Any], model: str, structured_outputs: str = "auto",
                anthropic_betas: list[str] | None = None) -> dict[str, Any]:
    if (body.get("n") or 1) > 1:
        raise InvalidRequest("Bedrock returns one choice per request; 'n' must be 1.",
                             param="n", code="unsupported_value")
    logprobs_asked(body)  # dropped, but a request OpenAI refuses is refused here too
    model = routed_model(model)  # (the URL keeps the router's own id)
    system, messages, tool_names = _messages(with_call_ids(body["messages"], "tooluse_"))
    messages = drop_trailing_thinking(messages, _is_reasoning)
    if not messages or messages[0]["role"] != "user":  # Converse starts with a user turn
        messages.insert(0, {"role": "user", "content": [{"text": PLACEHOLDER_USER_TEXT}]})
    if ends_with_system(body["messages"], messages):  # answered anew, as on Anthropic
        messages.append({"role": "user", "content": [{"text": PLACEHOLDER_USER_TEXT}]})
    names: set[str] = set()  # the documents' names so far, folded
    for message in messages:
        _caption_documents(message, names)
    trim_prefill(messages[-1])
    _marked(messages[-1]["content"], body)  # automatic caching: after the last block
    out: dict[str, Any] = {"messages": messages}
    for key in PASSTHROUGH:
        if body.get(key) is not None:
            out[key] = body[key]
    if body.get("metadata") and "requestMetadata" not in out:  # (a client's own wins)
        metadata = _request_metadata(body["metadata"])
        if metadata:
            out["requestMetadata"] = metadata
    tier = SERVICE_TIERS.get(body.get("service_tier"))  # (a client's own serviceTier wins)
    if tier is not None and "serviceTier" not in out:
        out["serviceTier"] = {"type": tier}
    if anthropic_betas and is_claude(model):
        _add_betas(out, anthropic_betas)
    if body.get("top_k") is not None:
        _add_top_k(out, body["top_k"], model)
    _add_reasoning_level(out, body, model)
    inference = _inference_config(body, model, out)
    if inference:
        out["inferenceConfig"] = inference
    if is_claude(model) and not thinks(_model_fields(out).get("thinking")):
        drop_final_turn_thinking(messages, _is_reasoning, _is_tool_result)
    instructions: list[dict[str, Any]] = []
    native = _StructuredOutputs(model, structured_outputs)
    text_format = _response_format(body, instructions, native)
    if text_format:
        refuse_prefill(messages[-1])  # as on Anthropic: the grammar starts the answer afresh
        out["outputConfig"] = {"textFormat": text_format}
    if any(name in model for name in NO_SYSTEM_MODELS):
        messages[0]["content"][:0] = instructions  # messages[0] is a user turn (see above)
    else:
        system.extend(instructions)
    if system:
        out["system"] = system
    tool_config = _tool_config(body, tool_names, native)
    if tool_config:
        out["toolConfig"] = tool_config
        if body.get("parallel_tool_calls") is False and is_claude(model):
            _one_call_at_a_time(out, tool_config, body.get("tool_choice"))
    _fit_cache_points(out)
    refused = converse_renames(body)  # (names Converse refuses: names.py)
    if refused:
        rename(out, refused)
    return out


def _fit_cache_points(out: dict[str, Any]) -> None:
    """Drops the cachePoints past the 4 Bedrock takes (Claude's 400 "A maximum of 4 blocks with
    cache_control may be provided"), as fit_breakpoints does on Anthropic, and sends a 5m one
    before a 1h one as 1h, as it does too (Converse takes ttls non-increasing). (The request's own
    automatic caching is already the last turn's point here.)"""
    lists = [out.get("toolConfig", {}).get("tools", []), out.get("system", [])]
    stable = [b for blocks in lists for b in blocks if "cachePoint" in b]
    turns = [b for m in out["messages"] for b in m["content"] if "cachePoint" in b]
    dropped = {id(b) for b in excess_breakpoints(stable, turns, False)}
    if dropped:
        for blocks in (*lists, *(m["content"] for m in out["messages"])):
            blocks[:] = [b for b in blocks if id(b) not in dropped]
    points = [b["cachePoint"] for b in (*stable, *turns) if id(b) not in dropped]
    for i in shorter_before_longer([point.get("ttl") for point in points]):
        points[i]["ttl"] = LONGEST_TTL  # (as on Anthropic; each point is made per request)


def _request_metadata(metadata: dict[str, Any]) -> dict[str, str]:
    """OpenAI's `metadata` as Converse's requestMetadata: the entries that fit its pattern (the
    first METADATA_MAX). One that does not (an emoji, a quote, over 256 characters) is left out,
    not a 400: metadata tags the request for the logs, it never changed an answer."""
    fitting = {key: value for key, value in metadata.items()
               if key and isinstance(value, str) and _METADATA_TEXT.fullmatch(key)
               and _METADATA_TEXT.fullmatch(value)}
    return dict(list(fitting.items())[:METADATA_MAX])


def _one_call_at_a_time(out: dict[str, Any], tool_config: dict[str, Any], choice: Any) -> None:
    """`parallel_tool_calls: false` as Claude's `disable_parallel_tool_use`, which Converse takes
    in Claude's own `tool_choice` (additionalModelRequestFields), merged with the toolConfig's:
    beside a `toolChoice` Bedrock takes the type from it (a type here too is its 400, "conflicts
    with the existing field toolConfig.toolChoice"); without one Claude's needs its type ("missing
    field `type`"), `auto`, the default. Not beside "none" (no calls), nor a client's own."""
    fields = _model_fields(out)
    if choice == "none" or "tool_choice" in fields:
        return
    claude_choice: dict[str, Any] = {"disable_parallel_tool_use": True}
    if "toolChoice" not in tool_config:
        claude_choice = {"type": "auto", **claude_choice}
    out["additionalModelRequestFields"] = {**fields, "tool_choice": claude_choice}


def _model_fields(out: dict[str, Any]) -> dict[str, Any]:
    """The `additionalModelRequestFields` a client passed (none when not an object): what the
    proxy adds there never replaces a field of theirs, and goes in a new dict."""
    fields = out.get("additionalModelRequestFields")
    return fields if isinstance(fields, dict) else {}


def _add_betas(out: dict[str, Any], betas: list[str]) -> None:
    """Claude's betas where Converse takes them, unless the client's own fields name some."""
    fields = _model_fields(out)
    if "anthropic_beta" not in fields:
        out["additionalModelRequestFields"] = {**fields, "anthropic_beta": betas}


def _add_top_k(out: dict[str, Any], top_k: Any, model: str) -> None:
    """`top_k` where the model's own fields take it (Converse's inferenceConfig has none), so a
    Claude with thinking refuses it as on Anthropic; unless the client's fields name one."""
    fields = _model_fields(out)
    if is_claude(model) and "top_k" not in fields and not takes_no_sampling(model):
        out["additionalModelRequestFields"] = {**fields, "top_k": top_k}
    elif is_nova(model):
        nova = fields.get("inferenceConfig")
        nova = nova if isinstance(nova, dict) else {}
        if "topK" not in nova:
            out["additionalModelRequestFields"] = {**fields,
                                                   "inferenceConfig": {**nova, "topK": top_k}}


def _add_reasoning_level(out: dict[str, Any], body: dict[str, Any], model: str) -> None:
    """`reasoning_effort` as the level Nova 2 and gpt-oss take in their own fields (Claude's
    thinking is made in _inference_config), unless the client's fields name one."""
    effort = reasoning_effort(body)
    fields = _model_fields(out)
    if effort is None or (effort == "none" and is_nova_2(model)):
        return  # Nova 2 reasons only when asked
    level = REASONING_LEVELS[effort]
    if is_nova_2(model) and "reasoningConfig" not in fields:
        if level == "high":
            _refuse_beside_high_effort(body, effort)
        out["additionalModelRequestFields"] = {
            **fields, "reasoningConfig": {"type": "enabled", "maxReasoningEffort": level}}
    elif is_gpt_oss(model) and "reasoning_effort" not in fields:
        out["additionalModelRequestFields"] = {**fields, "reasoning_effort": level}


def _refuse_beside_high_effort(body: dict[str, Any], effort: str) -> None:
    """Nova 2 refuses `maxTokens`, `temperature` and `topP` beside its high reasoning effort:
    a 400 naming the parameter, since only the client knows which of the two it would rather
    give up (any value: Nova's defaults are not 1, so none is a no-op to drop)."""
    for param, what in UNSET_FOR_HIGH_EFFORT.items():
        if body.get(param) is not None:
            raise InvalidRequest(
                f"reasoning_effort '{effort}' is Amazon Nova 2's high reasoning effort, which "
                f"it refuses beside {what}: leave out '{param}', or use reasoning_effort "
                "'medium'.", param=param, code="invalid_value")


def _inference_config(body: dict[str, Any], model: str, out: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    fields = _model_fields(out)
    effort = reasoning_effort(body)  # checked for every model, as OpenAI would
    effort = effort if is_claude(model) and not cannot_think(model) else None
    adaptive = effort is not None and takes_adaptive_thinking_only(model)
    thinking, max_tokens = fit_thinking(body, fields.get("thinking"), effort, DEFAULT_MAX_TOKENS,
                                        fields.get("top_k"), adaptive)
    if thinking is not None and "thinking" not in fields:
        added = {"thinking": thinking}
        output_config = adaptive_effort(thinking, effort, fields.get("output_config"), model)
        if output_config is not None:  # adaptive thinking's depth: Claude's effort
            added["output_config"] = output_config
        out["additionalModelRequestFields"] = {**fields, **added}
    if max_tokens:
        config["maxTokens"] = max_tokens
    # The Claudes that refuse any sampling (Opus 4.7 on) get none, as on Anthropic.
    sampling = not (is_claude(model) and takes_no_sampling(model))
    if body.get("temperature") is not None and sampling:
        # Converse's temperature runs to 1 for every model (its API reference; Claude's top on
        # Anthropic too), OpenAI's to 2: one between goes as 1, as on Anthropic.
        config["temperature"] = claude_temperature(body["temperature"])
    # A top_p of 1 (no nucleus cut) is left out for Claude, which refuses it beside temperature
    # on newer models; other models' default may be lower, so they get it as sent.
    if (body.get("top_p") is not None and sampling
            and not (body["top_p"] == 1 and is_claude(model))):
        config["topP"] = body["top_p"]
        if config.get("temperature") == 1 and is_claude(model):
            del config["temperature"]  # (Claude's default, refused beside topP the same way)
        elif "temperature" in config and is_claude(model) and takes_one_sampler(model):
            del config["topP"]  # (the pair's refusal: the temperature is kept, as on Anthropic)
    # Converse refuses an empty sequence (length 1 at least); it cuts nothing, so it goes.
    stop = body.get("stop") or []
    sequences = (claude_stop_sequences(stop) if is_claude(model)
                 else [sequence for sequence in stop_list(stop) if sequence])
    if sequences:
        config["stopSequences"] = sequences
    return config


def _response_format(body: dict[str, Any], instructions: list[dict[str, Any]],
                     native: _StructuredOutputs) -> dict[str, Any] | None:
    """The `outputConfig.textFormat` for a json_schema answer when the model takes one (None
    otherwise); else the instruction that asks for JSON, appended to `instructions`."""
    fmt = body.get("response_format") or {}
    if fmt.get("type") not in ("json_schema", "json_object"):
        return None
    schema = response_schema(fmt)
    if schema is not None and native:
        return _text_format(fmt["json_schema"], schema)
    instructions.append({"text": json_instruction(schema)})
    return None


def _text_format(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """Converse's json_schema output format. Its `schema` is a string (JsonSchemaDefinition),
    in the subset Claude takes, as on Anthropic (claude_schema)."""
    definition = {"schema": orjson.dumps(claude_schema(schema)).decode()}
    for key in ("name", "description"):
        if isinstance(spec.get(key), str) and spec[key]:
            definition[key] = spec[key]
    return {"type": "json_schema", "structure": {"jsonSchema": definition}}


def _tool_config(body: dict[str, Any], history_tools: list[str],
                 native: _StructuredOutputs) -> dict[str, Any] | None:
    tools = distinct_tools(body.get("tools") or [])
    choice = body.get("tool_choice")
    if choice == "none" and not history_tools:
        return None  # Converse has no "none": offering no tools is the equivalent
    specs = [block for t in tools for block in (_tool_spec(t["function"], native),
                                                 *_cache_point(tool_cache_control(t)))]
    if not specs:
        # Bedrock rejects toolUse / toolResult blocks without a toolConfig.
        specs = [{"toolSpec": {"name": name, "inputSchema": {"json": {"type": "object"}}}}
                 for name in dict.fromkeys(history_tools)]
    if not specs:
        return None
    config: dict[str, Any] = {"tools": specs}
    if choice == "auto":
        config["toolChoice"] = {"auto": {}}
    elif choice == "required":
        config["toolChoice"] = {"any": {}}
    elif isinstance(choice, dict):
        config["toolChoice"] = {"tool": {"name": choice["function"]["name"]}}
    return config


def _tool_spec(fn: dict[str, Any], native: _StructuredOutputs) -> dict[str, Any]:
    schema = fn.get("parameters") or {"type": "object", "properties": {}}
    # A model without structured outputs refuses strict tools too (Claude Sonnet 4: "does not
    # support strict tools"): it gets the tool as a non-strict one, its inputs unenforced.
    strict = fn.get("strict") is True and bool(native)
    # Strict tool inputs take the schema subset structured outputs take, as on Anthropic.
    spec: dict[str, Any] = {"name": fn["name"],
                            "inputSchema": {"json": claude_schema(schema) if strict else schema}}
    if fn.get("description"):
        spec["description"] = fn["description"]
    if strict:  # Converse's structured tool inputs, as OpenAI's strict
        spec["strict"] = True
    return {"toolSpec": spec}


def _messages(msgs: list[dict[str, Any]]
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    tool_names: list[str] = []  # tools the history uses, for a toolConfig when none is given
    blank: dict[str, Any] | None = None  # the last BLANK_USER_TEXT block put in
    late_system = False  # a system message came after the last turn, an assistant one
    for i, m in enumerate(msgs):
        role = m["role"]
        if role in ("system", "developer"):
            system.extend(_marked(_text_blocks(m.get("content"), f"messages[{i}].content"), m))
            late_system = late_system or (bool(out) and out[-1]["role"] == "assistant")
            continue
        if role == "user":
            blocks = _user_blocks(m.get("content"), i)
        elif role == "assistant":
            blocks = _assistant_blocks(m, i, tool_names)
        elif role == "tool":
            blocks = _tool_result(m, i)
        else:  # legacy "function" role: no tool_call_id to pair it with
            raise InvalidRequest("The legacy 'function' role is not supported; use 'tool'.",
                                 param=f"messages[{i}].role", code="unsupported_value")
        if not blocks:  # Converse rejects a message without content
            if role != "user" or not out or out[-1]["role"] != "assistant":
                continue  # nothing vanishes: a user turn is there, or no turn yet
            blank = {"text": BLANK_USER_TEXT}  # (the turn stays, as on Anthropic)
            blocks = [blank]
        _marked(blocks, m)
        role_out = "assistant" if role == "assistant" else "user"
        if (late_system and role_out == "assistant" and out[-1]["role"] == "assistant"
                and not all(_is_reasoning(b) for b in blocks)):
            # As on Anthropic: an assistant message after [assistant, system] answered the
            # request that ended there, with a PLACEHOLDER_USER_TEXT turn (ends_with_system):
            # replayed with it, not merged into the turn before (reasoning not first: a 400).
            out.append({"role": "user", "content": [{"text": PLACEHOLDER_USER_TEXT}]})
        late_system = False
        if out and out[-1]["role"] == role_out:
            prev = out[-1]["content"]
            if stood_in_for_blank(prev, blank):  # the turn has its user message now
                prev.clear()
            prev.extend(blocks)
            if role == "tool":
                out[-1]["content"] = _tool_results_first(prev)
        else:
            out.append({"role": role_out, "content": blocks})
    return system, out, tool_names


def _caption_documents(message: dict[str, Any], names: set[str]) -> None:
    """Give a user turn with documents and no text a DOCUMENT_ONLY_TEXT block: Converse refuses
    one ("A text block must be included when using documents"), where OpenAI takes a file
    alone. Run on merged turns, so text from a neighbouring message counts. Each document (a
    tool result's too) also gets a name no earlier one in the request has (`names`, updated)."""
    blocks = message["content"]
    if message["role"] != "user":
        return
    for block in blocks:  # (a tool result's documents count too: its captions are its own)
        if "toolResult" in block:
            _unique_names(block["toolResult"]["content"], names)
    if any("document" in b for b in blocks):
        _unique_names(blocks, names)
        if not any("text" in b for b in blocks):
            blocks.append({"text": DOCUMENT_ONLY_TEXT})


def _unique_names(blocks: list[dict[str, Any]], names: set[str]) -> None:
    """Converse refuses a request whose documents share a name ("Messages can't contain
    duplicate document names"): a file attached again later in the conversation, or
    report.pdf beside report.docx. The first keeps its name (so a conversation's earlier turns
    stay as they were sent), a later one gets "-2", "-3"…; compared regardless of case, which
    costs a needless suffix at worst. A name over NAME_MAX, which Converse refuses too, is cut."""
    for block in blocks:
        document = block.get("document")
        if document is None:
            continue
        name = base = document["name"][:NAME_MAX].rstrip() or "-"
        n = 1
        while name.casefold() in names:
            n += 1
            suffix = f"-{n}"
            name = base[:NAME_MAX - len(suffix)] + suffix
        names.add(name.casefold())
        document["name"] = name


def _tool_results_first(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A user turn's blocks with its tool results first (they must lead the turn that follows a
    toolUse turn), in order; a cachePoint stays after the block it follows."""
    results: list[dict[str, Any]] = []
    others: list[dict[str, Any]] = []
    into = others
    for block in blocks:
        if "cachePoint" not in block:
            into = results if "toolResult" in block else others
        into.append(block)
    return results + others


def _text_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    # Converse rejects blank text blocks (see is_blank): they are left out.
    if isinstance(content, list):
        return [block for part in text_parts(content, where) if not is_blank(part["text"])
                for block in ({"text": part["text"]}, *_cache_point(part.get("cache_control")))]
    return [{"text": t} for t in texts(content, where) if not is_blank(t)]


def _cache_point(control: Any) -> list[dict[str, Any]]:
    """The cachePoint block that stands for a part's or a tool's `cache_control` (none without
    one); its `ttl` (5m, 1h) is Converse's too."""
    if control is None:
        return []
    point = {"type": "default"}
    if isinstance(control, dict) and control.get("ttl"):
        point["ttl"] = control["ttl"]
    return [{"cachePoint": point}]


def _marked(blocks: list[dict[str, Any]], message: dict[str, Any]) -> list[dict[str, Any]]:
    """`blocks` and the cachePoint of the message they were made from (its `cache_control`,
    LiteLLM's form, the only one a string content can carry) after the last, which caches the
    prompt through the message's end; none when a part's own point is already there (that one
    takes the longer lifetime of the two: the client asked that prefix cached an hour), nor
    after reasoning, as on Anthropic (a thinking block holds no marker): reasoning that ends
    a turn is left out (drop_trailing_thinking), which a point after it hid."""
    control = message.get("cache_control")
    if not blocks or _is_reasoning(blocks[-1]):
        return blocks
    if "cachePoint" not in blocks[-1]:
        blocks.extend(_cache_point(control))
    elif isinstance(control, dict) and control.get("ttl") == LONGEST_TTL:
        blocks[-1]["cachePoint"]["ttl"] = LONGEST_TTL  # (made per request: never the client's)
    return blocks


def _user_blocks(content: Any, i: int) -> list[dict[str, Any]]:
    if not isinstance(content, list):
        return _text_blocks(content, f"messages[{i}].content")
    blocks = []
    for j, part in enumerate(content):
        kind = part.get("type")
        where = f"messages[{i}].content[{j}]"
        if kind == "text":
            if is_blank(part.get("text")):
                continue  # Converse rejects blank text (see _text_blocks)
            blocks.append({"text": part["text"]})
        elif kind == "image_url":
            url = (part.get("image_url") or {}).get("url")
            blocks.append({"image": _image(url, f"{where}.image_url.url")})
        elif kind == "file":
            blocks.append({"document": _document(part.get("file") or {}, f"{where}.file", i, j)})
        elif kind == "input_audio":
            blocks.append({"audio": _audio(part.get("input_audio") or {}, f"{where}.input_audio")})
        else:
            raise InvalidRequest(f"Content part type '{kind}' is not supported by Bedrock.",
                                 param=f"{where}.type", code="unsupported_value")
        blocks.extend(_cache_point(part.get("cache_control")))
    return blocks


def _image(url: Any, where: str) -> dict[str, Any]:
    url = lower_scheme(url)
    if isinstance(url, str) and url.startswith("data:"):
        media_type, data = parse_data_url(url, where)
        fmt = IMAGE_FORMATS.get(image_media_type(data, media_type))  # the bytes' (checked)
        if fmt is None:
            raise InvalidRequest(f"Bedrock takes png, jpeg, gif or webp images, not {media_type}.",
                                 param=where, code="unsupported_value")
        return {"format": fmt, "source": {"bytes": data}}
    if isinstance(url, str) and url.startswith("s3://"):
        fmt = IMAGE_EXTENSIONS.get(url.rsplit(".", 1)[-1].lower())
        if fmt is None:
            raise InvalidRequest("An s3:// image URI must end in .png, .jpg, .jpeg, .gif or "
                                 ".webp.", param=where, code="invalid_value")
        return {"format": fmt, "source": {"s3Location": {"uri": url}}}
    raise InvalidRequest("Bedrock takes images as data: URLs or s3:// URIs; the proxy does not "
                         "fetch http(s) URLs.", param=where, code="invalid_value")


def _audio(audio: dict[str, Any], where: str) -> dict[str, Any]:
    """An `input_audio` part as Converse's audio block, or a 400 naming the field Converse
    would refuse (its own 400 names none)."""
    data, fmt = audio.get("data"), audio.get("format")
    if not isinstance(data, str) or not isinstance(fmt, str):
        raise InvalidRequest("'input_audio' needs 'data' (base64) and 'format'.", param=where,
                             code="invalid_value")
    if fmt.lower() not in AUDIO_FORMATS:
        supported = ", ".join(f"'{f}'" for f in AUDIO_FORMATS)
        raise InvalidRequest(f"Invalid value: {fmt!r}. Supported values are: {supported}.",
                             param=f"{where}.format", code="invalid_value")
    return {"format": fmt.lower(), "source": {"bytes": base64_text(data, f"{where}.data")}}


def _document(file: dict[str, Any], where: str, i: int, j: int) -> dict[str, Any]:
    data = lower_scheme(file_data(file, where, "Bedrock"))
    if not isinstance(data, str) or not data.startswith("data:"):
        raise InvalidRequest("Bedrock takes files as file_data data: URLs.",
                             param=f"{where}.file_data", code="invalid_value")
    # "": no type given (data:;base64,), whose default, text/plain, a known extension beats
    media_type, payload = parse_data_url(data, f"{where}.file_data", default="")
    media_type = file_media_type(payload, media_type)  # a PDF's bytes say so, whatever its label
    stem, *extension = str(file.get("filename") or "").rsplit(".", 1)
    fmt = DOCUMENT_FORMATS.get(media_type)
    if fmt is None and extension and extension[0].lower() in DOCUMENT_EXTENSIONS:
        fmt = extension[0].lower()
    if fmt is None and not media_type:
        fmt = "txt"  # RFC 2397's text/plain
    if fmt is None:
        raise InvalidRequest(f"Bedrock does not take documents of type {media_type}.",
                             param=f"{where}.file_data", code="unsupported_value")
    name = " ".join(_NAME_UNSAFE.sub("-", stem).split()) or f"document-{i}-{j}"
    return {"format": fmt, "name": name, "source": {"bytes": payload}}


def _assistant_blocks(m: dict[str, Any], i: int, tool_names: list[str]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for tb in signed_thinking(m):  # signed reasoning first, as Claude requires
        if not isinstance(tb, dict):
            continue
        if tb.get("type") == "thinking" and tb.get("signature"):
            blocks.append({"reasoningContent": {"reasoningText": {
                "text": tb.get("thinking") or "", "signature": tb["signature"]}}})
        elif tb.get("type") == "redacted_thinking" and tb.get("data"):
            blocks.append({"reasoningContent": {"redactedContent": tb["data"]}})
    blocks.extend(_text_blocks(said(m), f"messages[{i}].content"))
    for j, call in enumerate(m.get("tool_calls") or []):
        fn = call["function"]
        parsed = tool_call_input(fn.get("arguments"))
        tool_names.append(fn["name"])
        call_id = tool_use_id(call.get("id") or f"tooluse_{i}_{j}")
        blocks.append({"toolUse": {"toolUseId": call_id,
                                   "name": fn["name"], "input": parsed}})
    return blocks


def _is_reasoning(block: dict[str, Any]) -> bool:
    return "reasoningContent" in block


def _is_tool_result(block: dict[str, Any]) -> bool:
    return "toolResult" in block


def _tool_result(m: dict[str, Any], i: int) -> list[dict[str, Any]]:
    """A tool message's toolResult, and the cachePoint of its parts' `cache_control` after it
    (its content cannot hold one). Image and file parts (a computer-use agent's screenshot, an
    MCP tool's image) go as the image and document blocks toolResult takes, as in a user
    message; documents with no text beside them get DOCUMENT_ONLY_TEXT, as there."""
    content = m.get("content")
    if isinstance(content, list) and any(p.get("type") in ("image_url", "file")
                                         for p in content):
        blocks = [b for b in _user_blocks(content, i) if "cachePoint" not in b]
        if any("document" in b for b in blocks) and not any("text" in b for b in blocks):
            blocks.append({"text": DOCUMENT_ONLY_TEXT})
    else:
        blocks = [{"text": t} for t in texts(content, f"messages[{i}].content")
                  if not is_blank(t)]
    result = {"toolResult": {"toolUseId": tool_use_id(m["tool_call_id"]),
                             "content": blocks or [{"text": EMPTY_TOOL_RESULT}]}}
    parts = content if isinstance(content, list) else []
    controls = [p["cache_control"] for p in parts if p.get("cache_control") is not None]
    return [result, *_cache_point(controls[-1] if controls else None)]
