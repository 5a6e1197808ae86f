"""Claude's extended-thinking budget against `max_tokens` (pure), shared by the Anthropic and
the Bedrock (Claude) requests.

Anthropic requires 1024 <= `thinking.budget_tokens` < `max_tokens` (provider-streams.md §3.2).
OpenAI's `max_completion_tokens` counts reasoning tokens too, so a client's max is the cap on
thinking and answer together: it is kept, and the budget made from `reasoning_effort` is capped
below it — or, when that would leave less than 1024, the request is a 400 saying what to change.
Without a client max, `max_tokens` makes room for the budget plus the default answer allowance.
A `thinking` object the client passed itself is sent as given. Thinking from
`reasoning_effort` with a tool_choice that forces a tool is a 400 (Claude refuses the pair), and
so is it beside sampling Claude refuses with thinking: a `temperature` other than 1, any `top_k`,
a `top_p` below 0.95 (Anthropic's extended-thinking docs; OpenAI's reasoning models answer a
temperature other than 1 with a 400 too) — but not on the Claudes that take no sampling at all
(`takes_no_sampling`), whose callers leave it out. They are refused, not dropped: the client
asked for both, and only it knows which one matters.
A request that continues a tool loop whose assistant turn came back without its signed
thinking (an OpenAI client keeps none; a loop begun on another provider has none), or that
ends with such an assistant turn (a prefill), gets no thinking from `reasoning_effort`: Claude
refuses thinking there ("a final assistant message must start with a thinking block";
Anthropic's advice: disable thinking), where OpenAI asks for no reasoning back. The turn is
Claude's: every step of the loop since the user's message, of which only the first thinks.
The next user turn thinks again.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from streamproxy.errors import InvalidRequest
from streamproxy.openai_api.content import signed_thinking

MIN_BUDGET = 1024
# xhigh is more than high; max (OpenAI's top) the most that, with the default answer allowance
# (4096) beside it, fits every thinking Claude's output cap (Opus 4 / 4.1: 32000 tokens).
# minimal is still some reasoning (on OpenAI, and as Gemini and Cohere take it): Claude's
# smallest budget, as low.
EFFORT_BUDGET = {"minimal": MIN_BUDGET, "low": MIN_BUDGET, "medium": 4096, "high": 16384,
                 "xhigh": 24576, "max": 32000 - 4096}
MIN_TOP_P = 0.95  # the lowest top_p Claude takes with thinking on
# The Claudes that take a thinking budget (`thinking.type: enabled`), by their names on any
# platform (`claude-opus-4-1-…`, `anthropic.claude-3-…`, `claude-opus-4@…`): 2, 3.x, 4, 4.1,
# 4.5 and 4.6 (4.6 takes adaptive thinking too). Opus 4.7, Mythos and the Claude 5 family take
# adaptive thinking alone and answer a budget with a 400 (Anthropic's and AWS's "Adaptive
# thinking"): the earlier ones are a closed set, so a newer Claude gets adaptive thinking.
_BUDGET_CLAUDES = re.compile(r"claude-(?:[123]|v\d|instant|(?:sonnet|opus)-4(?!\d|-[3-9])"
                             r"|(?:sonnet|opus|haiku)-4-[56])")
# The Claudes without extended thinking, which answer any `thinking` with a 400: those before
# Claude 3.7 Sonnet (Anthropic's extended-thinking docs list 3.7 Sonnet and Claude 4 on), i.e.
# Claude 1, 2 and Instant (`anthropic.claude-v2`), 3 (Opus, Sonnet, Haiku) and 3.5 (Sonnet,
# Haiku). reasoning_effort is dropped for them, as Gemini and Bedrock drop it for the models
# that do not reason; a closed set, so a Claude not named here thinks.
_UNTHINKING_CLAUDES = re.compile(r"claude-(?:[12](?!\d)|instant|v\d|3-(?:opus|sonnet|haiku"
                                 r"|5(?!\d)))")
# The Claudes that take `temperature` and `top_p` together, by their names on any platform:
# 1, 2, Instant, 3.x, and Sonnet 4 and Opus 4 (`claude-opus-4-20250514`, `claude-opus-4-0`).
# Opus 4.1, the 4.5 and 4.6 models answer the pair with a 400 ("`temperature` and `top_p`
# cannot both be specified for this model"; Anthropic's Claude 4.5 migration guide), and the
# later ones take no sampling (takes_no_sampling): a closed set, so a newer Claude takes one.
_BOTH_SAMPLERS_CLAUDES = re.compile(r"claude-(?:[123]|v\d|instant|(?:sonnet|opus)-4"
                                    r"(?!\d|-[1-9](?!\d)))")
# reasoning_effort → adaptive thinking's `output_config.effort`. max, OpenAI's top, is Claude's
# top (max), which every adaptive Claude takes; xhigh is Claude's own xhigh, between high and
# max as OpenAI's is, on the Claudes that have it (TAKES_XHIGH), and max on the others.
ADAPTIVE_EFFORT = {"minimal": "low", "low": "low", "medium": "medium", "high": "high",
                   "xhigh": "max", "max": "max"}
# The Claudes with an xhigh effort (Anthropic's effort docs): Opus 4.7 and 4.8, and the
# Claude 5 Opus, Sonnet, Mythos and Fable. An allow-list: Mythos Preview has max but no
# xhigh (its 400), and a Claude not named here keeps max, which every adaptive Claude takes.
TAKES_XHIGH = re.compile(r"claude-(?:opus-4-[78]|(?:opus|sonnet|mythos|fable)-5)(?!\d)")
# A dot between version digits (`claude-sonnet-4.5`, `anthropic/claude-3.7-sonnet`: OpenRouter's
# and some Anthropic-compatible services' spelling); Anthropic, Vertex and Bedrock write a hyphen.
_DOTTED_VERSION = re.compile(r"(?<=\d)\.(?=\d)")
# A Claude 4 or later named version first, as Claude 3.x was (`claude-4-sonnet`,
# `claude-4-5-sonnet`: Snowflake Cortex's, DeepInfra's and some clients' names), where
# Anthropic, Vertex and Bedrock write the family first (`claude-sonnet-4-5`).
_VERSION_FIRST = re.compile(r"claude-([4-9]|[1-9]\d)(-\d)?-(opus|sonnet|haiku)(?![a-z])")


@functools.lru_cache(maxsize=256)  # (a request's classifiers ask of one model a few times)
def hyphenated(model: str) -> str:
    """`model` with its version written as Anthropic writes it, for the classifiers: read as
    written, `claude-sonnet-4.5` or `claude-4-sonnet` was a Claude newer than every one they
    name."""
    if "." in model:
        model = _DOTTED_VERSION.sub("-", model)
    return _VERSION_FIRST.sub(r"claude-\3-\1\2", model)


def takes_adaptive_thinking_only(model: str) -> bool:
    """Whether `model` is a Claude that refuses a thinking budget (adaptive thinking only)."""
    return "claude" in model and _BUDGET_CLAUDES.search(hyphenated(model)) is None


def cannot_think(model: str) -> bool:
    """Whether `model` is a Claude with no extended thinking (_UNTHINKING_CLAUDES)."""
    return "claude" in model and _UNTHINKING_CLAUDES.search(hyphenated(model)) is not None


def takes_no_sampling(model: str) -> bool:
    """Whether `model` is a Claude that answers any `temperature`, `top_p` or `top_k` with a 400
    ("`temperature` is deprecated for this model"): the same Claudes as take adaptive thinking
    alone (Opus 4.7 on). Their callers leave the three out, as parameters a model cannot take."""
    return takes_adaptive_thinking_only(model)


def takes_one_sampler(model: str) -> bool:
    """Whether `model` is a Claude that refuses `temperature` beside `top_p` (not in
    _BOTH_SAMPLERS_CLAUDES). Its callers keep the temperature and leave out the top_p, as
    gateways do: the parameter OpenAI's docs and chat UIs tune, which a preset or a fallback
    from GPT sends beside a top_p it never meant as the one choice."""
    return "claude" in model and _BOTH_SAMPLERS_CLAUDES.search(hyphenated(model)) is None


def claude_temperature(temperature: Any) -> Any:
    """`temperature` as Claude takes it: one above Claude's top (1) but within OpenAI's (2) is
    1, the most random Claude samples, where Anthropic and Converse answer it with a 400
    ("temperature: range: 0..1") and a fallback from an OpenAI model would fail on it (Portkey
    clamps it alike). Scaled instead, the 0.7 a client tuned for Claude would change. One
    outside OpenAI's range goes as sent, for the provider's 400, as OpenAI's would be."""
    if isinstance(temperature, int | float) and 1 < temperature <= 2:
        return 1
    return temperature


def adaptive_effort(thinking: Any, effort: str | None, output_config: Any,
                    model: str) -> dict[str, Any] | None:
    """The `output_config` to send beside adaptive thinking made from `effort`: the client's
    own with Claude's effort added (its own effort wins), or None when nothing changes."""
    if not (isinstance(thinking, dict) and thinking.get("type") == "adaptive"
            and effort in ADAPTIVE_EFFORT):
        return None
    own = output_config if isinstance(output_config, dict) else {}
    if "effort" in own:
        return None
    level = ADAPTIVE_EFFORT[effort]
    if effort == "xhigh" and TAKES_XHIGH.search(hyphenated(model)):
        level = "xhigh"
    return {**own, "effort": level}


def fit_thinking(body: dict[str, Any], native: Any, effort: str | None, answer_allowance: int,
                 top_k: Any = None, adaptive: bool = False) -> tuple[Any, int | None]:
    """(the `thinking` to send or None, the `max_tokens` to send or None). `native` is the
    client's own thinking object, which wins over `effort` (one of REASONING_EFFORTS, as
    `content.reasoning_effort` checked it, or None); `max_tokens` is None only when the
    client set none and there is no budget to make room for. `top_k` is the one the request
    will carry (Anthropic's own parameter, wherever the provider takes it). `adaptive`: the
    model takes adaptive thinking alone (no budget; its effort is the caller's to send)."""
    max_tokens, param = _client_max_tokens(body)
    thinking = native
    if thinking is None and effort in EFFORT_BUDGET:  # (none: no thinking)
        if _forces_a_tool(body.get("tool_choice")):
            # Claude refuses the pair ("Thinking may not be enabled when tool_choice forces
            # tool use"): said here, naming what to change, rather than as the upstream's 400.
            raise InvalidRequest(
                f"reasoning_effort '{effort}' turns on Claude's extended thinking, which cannot "
                "be combined with a tool_choice that forces a tool ('required' or a named "
                "function): use tool_choice 'auto', or leave out reasoning_effort.",
                param="tool_choice", code="invalid_value")
        if not adaptive:  # (the adaptive-only Claudes are sent no sampling: takes_no_sampling)
            _refuse_sampling(effort, body.get("temperature"), body.get("top_p"), top_k)
        budget = None if adaptive else _effort_budget(effort, max_tokens, param)
        # (checked above all the same: whether a request is valid does not depend on its history)
        if not _loop_without_thinking(body["messages"]):
            thinking = ({"type": "adaptive"} if budget is None
                        else {"type": "enabled", "budget_tokens": budget})
    budget = thinking.get("budget_tokens") if isinstance(thinking, dict) else None
    if max_tokens is None and isinstance(budget, int) and budget > 0:
        max_tokens = budget + answer_allowance
    return thinking, max_tokens


def adaptive_room(thinking: Any, effort: str | None, answer_allowance: int) -> int | None:
    """The `max_tokens` for adaptive thinking when the client set none and the API needs one
    (Anthropic, Claude on Vertex; None for other thinking): the room a budget Claude gets for
    the same effort (EFFORT_BUDGET; high, Claude's default effort, when none says) plus the
    answer's. Adaptive thinking counts against max_tokens too, and at high effort it alone
    took a bare DEFAULT_MAX_TOKENS: the answer stopped at `length` with no text."""
    if isinstance(thinking, dict) and thinking.get("type") == "adaptive":
        return EFFORT_BUDGET.get(effort or "high", EFFORT_BUDGET["high"]) + answer_allowance
    return None


def _effort_budget(effort: str, max_tokens: int | None, param: str) -> int:
    budget = EFFORT_BUDGET[effort]
    if max_tokens is None:
        return budget
    budget = min(budget, max_tokens - 1)
    if budget < MIN_BUDGET:
        raise InvalidRequest(
            f"reasoning_effort '{effort}' needs a thinking budget of at least {MIN_BUDGET} "
            f"tokens below '{param}', which is {max_tokens} and counts thinking and answer "
            f"together: set '{param}' to at least {MIN_BUDGET + 1} (more leaves room for the "
            "answer), or leave out reasoning_effort.", param=param, code="invalid_value")
    return budget


def _refuse_sampling(effort: str, temperature: Any, top_p: Any, top_k: Any) -> None:
    """A 400 naming the first sampling parameter Claude refuses beside thinking, rather than
    the upstream's ("temperature may only be set to 1 when thinking is enabled")."""
    temperature = claude_temperature(temperature)  # (what Claude would be sent)
    if temperature is not None and temperature != 1:
        param, value, fix = "temperature", temperature, "leave out temperature (or set it to 1)"
    elif top_k is not None:
        param, value, fix = "top_k", top_k, "leave out top_k"
    elif top_p is not None and top_p < MIN_TOP_P:
        param, value, fix = "top_p", top_p, f"leave out top_p (or set it from {MIN_TOP_P} to 1)"
    else:
        return
    raise InvalidRequest(
        f"reasoning_effort '{effort}' turns on Claude's extended thinking, which does not take "
        f"{param} {value}: {fix}, or leave out reasoning_effort.", param=param,
        code="unsupported_value")


def _loop_without_thinking(messages: list[dict[str, Any]]) -> bool:
    """Whether the request continues Claude's turn and no assistant message of that turn came
    back with signed thinking. It continues the turn when it answers the last assistant
    message's tool results (a tool message after it), or when that message is the last (a
    prefill, which Claude continues). The
    turn goes back to the user message that began it: Claude thinks at a turn's start, not
    after each tool result, so a tool loop's later steps carry no thinking of their own, and
    thinking turned off there meets the first step's ("When thinking is disabled, an
    `assistant` message in the final position cannot contain `thinking`"). A user message
    after tool results shares their user turn (messages of a role merge), so it begins none."""
    answers_tools = False
    last = len(messages) - 1
    while last >= 0 and messages[last].get("role") != "assistant":
        answers_tools = answers_tools or messages[last].get("role") == "tool"
        last -= 1
    # (system messages after it make it no prefill either: request.ends_with_system)
    prefill = last == len(messages) - 1
    if last < 0 or not (answers_tools or prefill):
        return False
    after_user = False  # a user message came after this one, not after tool results
    for m in reversed(messages[:last + 1]):
        role = m.get("role")
        if role == "assistant":
            if after_user:
                return True  # that user message began the turn
            if any(_signed(block) for block in signed_thinking(m)):
                return False
        elif role == "tool":
            after_user = False
        elif role == "user":
            after_user = True
    return True


def _signed(block: dict[str, Any]) -> bool:
    return bool(block.get("signature") if block["type"] == "thinking" else block.get("data"))


def _forces_a_tool(choice: Any) -> bool:
    return choice == "required" or isinstance(choice, dict)


def _client_max_tokens(body: dict[str, Any]) -> tuple[int | None, str]:
    """The client's cap on output tokens (None: it set none), and the parameter that set it."""
    for param in ("max_completion_tokens", "max_tokens"):
        if body.get(param):
            return body[param], param
    return None, "max_completion_tokens"
