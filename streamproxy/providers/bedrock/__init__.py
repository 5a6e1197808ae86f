"""AWS Bedrock Converse / ConverseStream (`type: bedrock`).

    POST {base}/model/{url-encoded model id}/converse-stream   (stream: AWS event-stream frames)
    POST {base}/model/{url-encoded model id}/converse          (non-stream: JSON)

`base` defaults to `https://bedrock-runtime.{region}.amazonaws.com`. The URL is normalised the
way aiohttp will send it before it is signed, so the signed path is the path on the wire
(a `:` in a model id travels as `:`, a `/` in an ARN as `%2F`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import orjson
from yarl import URL

from streamproxy._json import loads_lenient
from streamproxy.config import (
    REGION,
    ConfigError,
    ProviderConfig,
    refuse_null_word,
    shown_env,
    unset_or_empty,
)
from streamproxy.errors import UpstreamStatusError
from streamproxy.openai_api.chunks import ChunkSink
from streamproxy.providers.anthropic.options import beta_names, check_option_values
from streamproxy.providers.base import (
    Provider,
    StreamTranslator,
    UpstreamRequest,
    path_segment,
)
from streamproxy.providers.bedrock import auth
from streamproxy.providers.bedrock.names import client_names
from streamproxy.providers.bedrock.request import (
    DROPPED,
    STRUCTURED_OUTPUTS,
    is_claude,
    to_converse,
)
from streamproxy.providers.bedrock.response import to_completion
from streamproxy.providers.bedrock.stream import BedrockStreamTranslator, overflow_checked

if TYPE_CHECKING:
    from streamproxy.openai_api.request import ChatRequest
    from streamproxy.routing.target import Target
    from streamproxy.upstream.egress import EgressProxies


NO_REGION = "no AWS region: set region, AWS_REGION / AWS_DEFAULT_REGION, or one in the profile"
# Where AWS's answer to a signature it computes otherwise goes on to quote the request it
# signed: every signed header with its value, the gateway's session token among them.
_SIGNED_REQUEST_QUOTE = "The Canonical String for this request"


def checked_region(options: dict[str, Any], source: str, where: str) -> str:
    """The provider's AWS region (`auth.resolve_region`), else a ConfigError: none, or one
    that is not a region name, which makes the host (`x.s3`: an S3 bucket's)."""
    # (`None` passed as the region "none": bedrock-runtime.none.amazonaws.com, no such host)
    refuse_null_word(options.get("region"), source, f"{where}.region")
    region = auth.resolve_region(options)
    if not region:
        raise ConfigError(source, f"{where}.region", NO_REGION)
    if not REGION.fullmatch(region):
        given = "" if options.get("region") else " (AWS_REGION / AWS_DEFAULT_REGION or profile)"
        raise ConfigError(source, f"{where}.region", f"{region[:64]!r}{given} is not an AWS "
                          "region: letters, digits and '-' (e.g. us-east-1)")
    return region.lower()  # (SigV4 signs the region as given: AWS refuses `US-EAST-1`'s)


class BedrockProvider(Provider):
    type_name: ClassVar[str] = "bedrock"
    option_keys: ClassVar[frozenset[str]] = auth.OPTION_KEYS | {"structured_outputs",
                                                                "anthropic_beta"}
    target_options: ClassVar[dict[str, str]] = {"aws_region": "region",
                                                "anthropic_beta": "anthropic_beta"}
    answering_options: ClassVar[frozenset[str]] = frozenset({"anthropic_beta"})  # (Claude's)
    dropped_params: ClassVar[frozenset[str]] = DROPPED

    def __init__(self, cfg: ProviderConfig, **kw: Any) -> None:
        super().__init__(cfg, **kw)
        region = checked_region(cfg.options, "config", f"providers.{cfg.name}")
        self.region = region
        self.auth: auth.BedrockAuth | auth.TargetKey = auth.BedrockAuth(cfg, region)

    @classmethod
    def check_options(cls, options: dict[str, Any], source: str, where: str) -> None:
        super().check_options(options, source, where)
        auth.check_options(options, source, where)
        if options.get("structured_outputs", "auto") not in STRUCTURED_OUTPUTS:
            raise ConfigError(source, f"{where}.structured_outputs",
                              f"must be one of {', '.join(STRUCTURED_OUTPUTS)}")
        check_option_values(options, source, where)

    @classmethod
    def check_entry(cls, entry: dict[str, Any], source: str, where: str) -> None:
        checked_region({k: v for k, v in entry.items() if k in cls.option_keys}, source, where)

    def auth_summary(self) -> str | None:
        summary = self.auth.summary
        if summary is not None and self.cfg.api_key_env:  # the operator meant a Bedrock key
            env = self.cfg.api_key_env
            summary += f" (environment variable {shown_env(env)} {unset_or_empty(env)})"
        return summary

    @property
    def base_url(self) -> str:
        return self.cfg.base_url or f"https://bedrock-runtime.{self.region}.amazonaws.com"

    @property
    def endpoint(self) -> str:
        return f"{super().endpoint}#{self.region}"

    def with_options(self, options: dict[str, str]) -> BedrockProvider:
        clone = super().with_options(options)
        assert isinstance(clone, BedrockProvider)
        # the same credentials, signed for it (lower case, as checked_region's)
        clone.region = options.get("region", self.region).lower()
        return clone

    def answering_option_values(self, target: Target) -> dict[str, Any]:
        # Claude's betas are sent to Claude alone (to_converse): another model's answers
        # do not depend on them.
        if is_claude(self.answering_model(target) or ""):
            return super().answering_option_values(target)
        return {}

    def use_egress(self, egress: EgressProxies) -> None:
        self.auth.egress = egress

    def with_own_key(self) -> BedrockProvider:
        # A config target's or virtual key's own key is a Bedrock API key, and wins over the
        # provider's credentials (SigV4, its key, AWS_BEARER_TOKEN_BEDROCK), as a target's key
        # wins over a provider's on every type: none of them is looked up for it.
        clone = copy.copy(self)
        clone.auth = auth.TargetKey(self.name)
        return clone

    async def prepare(self, target: Target) -> None:
        if self.auth.needs_io():  # the first credential lookup, or a renewal: off the loop
            await self.auth.load_off_loop()

    def build_request(self, req: ChatRequest, target: Target) -> UpstreamRequest:
        model = self.model_for(target)
        options = self.cfg.options
        body = orjson.dumps(to_converse(target.apply_overrides(req.body), model,
                                        options.get("structured_outputs", "auto"),
                                        beta_names(options.get("anthropic_beta"))))
        action = "converse-stream" if req.stream else "converse"
        url = str(URL(f"{self.base_url}/model/{path_segment(model)}/{action}"))
        headers = {"content-type": "application/json", **self.cfg.headers, **target.headers}
        return UpstreamRequest(url, body, self.auth.sign(url, body, headers, target.api_key,
                                                         self.region))

    def stream_translator(self, req: ChatRequest, out: ChunkSink) -> StreamTranslator:
        return BedrockStreamTranslator(out, self.max_event_bytes, self.name,
                                       client_names(req.body))

    def translate_response(self, body: bytes, req: ChatRequest, *, completion_id: str,
                           created: int, model: str = "") -> dict[str, Any]:
        return to_completion(body, completion_id=completion_id, created=created,
                             model=model, provider=self.name, names=client_names(req.body))

    def error_from_response(self, status: int, body: bytes,
                            headers: Mapping[str, str]) -> UpstreamStatusError:
        return self.parse_error(status, body, headers.get("x-amzn-errortype"))

    def parse_error(self, status: int, body: bytes,
                    error_type: str | None = None) -> UpstreamStatusError:
        """`{"message": ...}` with the same status. The error's name travels in the
        `x-amzn-errortype` header (`error_type`, when the caller has it; `Name:namespace`) or,
        from some endpoints, a `__type` field; it becomes the OpenAI error `code`. A message
        that quotes the signed request (`_SIGNED_REQUEST_QUOTE`) is cut before the quote."""
        message = None
        try:
            obj = loads_lenient(body) if body else None  # (as generic_error)
        except orjson.JSONDecodeError:
            obj = None  # not echoed: it may be an HTML page from an intermediary
        if isinstance(obj, dict):
            message = obj.get("message") or obj.get("Message")
            error_type = error_type or obj.get("__type")
        if isinstance(message, str) and _SIGNED_REQUEST_QUOTE in message:
            message = message.partition(_SIGNED_REQUEST_QUOTE)[0].rstrip()
        name = error_type.split(":", 1)[0].rsplit("#", 1)[-1] if isinstance(error_type, str) \
            else None
        if not isinstance(message, str) or not message:
            message = f"provider '{self.name}' returned HTTP {status}"
        return overflow_checked(UpstreamStatusError(status, message, provider=self.name,
                                                    code=name or None))
