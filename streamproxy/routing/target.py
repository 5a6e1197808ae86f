"""A `Target`: one concrete way to serve a request — a provider, a model, a key, overrides."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from streamproxy.config import Timeouts

if TYPE_CHECKING:
    from streamproxy.providers.base import Provider


_TOKEN_CAPS = (("max_tokens", "max_completion_tokens"), ("max_completion_tokens", "max_tokens"))
# The keys of a `reasoning` object (OpenRouter's) that say how much to reason, as the request's
# `reasoning_effort` does: one or the other, or its 400.
_REASONING_AMOUNT = ("effort", "max_tokens")


def _says_amount(reasoning: Any) -> bool:
    return isinstance(reasoning, dict) and any(k in reasoning for k in _REASONING_AMOUNT)


def override_reasoning(merged: dict[str, Any], overrides: dict[str, Any]) -> None:
    """How much to reason has two names, `reasoning_effort` and the `reasoning` object's
    effort or budget: the override's replaces the request's under the other (OpenRouter
    refuses the two when they differ), in place. The object's other keys (`exclude`) stay."""
    if "reasoning_effort" in overrides and "reasoning" not in overrides:
        reasoning = merged.get("reasoning")
        if _says_amount(reasoning):
            rest = {k: v for k, v in reasoning.items() if k not in _REASONING_AMOUNT}
            if rest:
                merged["reasoning"] = rest
            else:
                del merged["reasoning"]
    elif _says_amount(overrides.get("reasoning")) and "reasoning_effort" not in overrides:
        merged.pop("reasoning_effort", None)


@dataclass(slots=True)
class Target:
    provider: Provider
    model: str | None  # the upstream model name (prefix stripped); None = provider default
    # The resolved secret: configured key, else the client's. A config target's or virtual
    # key's own key wins over credentials a provider holds besides a key (Bedrock's SigV4,
    # Vertex's token source) through `provider`: the gateway gives it `Provider.with_own_key()`.
    api_key: str | None = None
    # Which of the operator's keys it is, when a config chose one (a virtual key's name, a
    # digest of a target's api_key): its breaker's, as two keys of one provider fail apart.
    key_id: str = ""
    override_params: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # extra upstream headers
    timeouts: Timeouts = field(default_factory=Timeouts)
    # The secrets its latest request carried upstream (`UpstreamRequest.credentials`): masked
    # in the errors that echo them.
    secrets: tuple[str, ...] = ()

    def apply_overrides(self, body: dict[str, Any]) -> dict[str, Any]:
        """The body with this target's `override_params` on top (a new dict only if needed)."""
        overrides = self.override_params
        if not overrides:
            return body
        merged = {**body, **overrides}
        for name, other in _TOKEN_CAPS:
            if name in overrides and other not in overrides:
                # The answer's cap has two names: the override's replaces the request's under
                # the other (both are OpenAI's 400; the translators read one of them first).
                merged.pop(other, None)
        override_reasoning(merged, overrides)
        if "stream_options" in overrides and merged.get("stream") is not True:
            # A config's stream_options is for the streams it serves: beside a non-streamed
            # request OpenAI refuses it (a 400), as the request's own checks do.
            del merged["stream_options"]
        return merged

    def served(self) -> Target:
        """This target with the provider that serves its model (`Provider.for_model`): itself
        but where one endpoint speaks two formats."""
        provider = self.provider.for_model(self.model or self.provider.cfg.default_model)
        return self if provider is self.provider else replace(self, provider=provider)

    def __repr__(self) -> str:  # never print a key
        return f"Target(provider={self.provider.name!r}, model={self.model!r})"
