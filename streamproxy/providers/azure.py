"""Azure OpenAI (`type: azure`): the OpenAI pass-through with Azure's URL, auth and chunks.

URL: `{endpoint}/openai/deployments/{deployment}/chat/completions?api-version={api_version}`,
where endpoint is `https://{resource}.openai.azure.com` or the configured `base_url` (a
trailing `/openai` is tolerated), and the deployment is the `deployment` option or else the
request's model name; a `base_url` ending in `/openai/v1` (or `api_version: v1`) is Azure's
v1 API instead:
`{base_url}/chat/completions`, the deployment as the body's `model`, api_version optional
(an undated one only: a dated one is not sent there); a `base_url` ending in `/models` is Azure
AI Foundry's model-inference endpoint: `{base_url}/chat/completions?api-version=…`, the
deployment as the body's `model`. A
Portkey config target's `resource_name` / `deployment_id` / `api_version` (the portkey-ai
SDK's `x-portkey-azure-*` headers) set those per request. Auth:
the `api-key` header, or `Authorization: Bearer` when `auth: entra` says the key is a
Microsoft Entra ID token (the provider's own key: any other goes by its shape) or the key
is one (a JWT, such as a client's own token).

Azure's stream differs from OpenAI's in two ways that break naive clients
(provider-streams.md §8), both normalised here:
- the first chunk can be `{"id": "", "model": "", "choices": [], "prompt_filter_results": …}`:
  no delta and no usage, so the pass-through already drops it (openai_compat.py);
- with the asynchronous content filter, chunks arrive whose choice has no `delta` (only
  `content_filter_results` / offsets, often with an empty id and model). An all-clear one
  without a finish_reason carries nothing a client can use and is dropped; one with a
  finish_reason or a verdict (`filtered` or `detected`, a severity above safe: a block caught
  after the model's `stop` comes only so) gets `delta: {}` so `choices[0].delta` exists, as
  in every OpenAI chunk, and the stream's id,
  created and model where it left them empty (the proxy's, before any delta chunk: then
  every chunk after it takes the proxy's too, so one stream has one id).
"""

from __future__ import annotations

import copy
import re
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qs, quote, unquote, urlsplit

import orjson

from streamproxy._json import loads_lenient
from streamproxy.config import ConfigError, refuse_reference
from streamproxy.decode.sse import SSEEvent
from streamproxy.errors import InvalidRequest, UpstreamStatusError
from streamproxy.openai_api.chunks import ChunkSink
from streamproxy.providers.base import kept_fields, path_segment
from streamproxy.providers.openai_compat import OpenAIProvider, PassthroughTranslator, load_chunk

if TYPE_CHECKING:
    from streamproxy.routing.target import Target

AUTH_MODES = ("api-key", "entra")
# The first api-version that takes `stream_options` (earlier ones answer it with a 400).
STREAM_USAGE_SINCE = "2024-09-01"
# The first that takes `max_completion_tokens` (2024-09-01-preview, which brought o1): earlier
# ones answer "Unrecognized request argument supplied: max_completion_tokens", a 400.
COMPLETION_CAP_SINCE = "2024-09-01"
# Azure's v1 API: OpenAI's paths under {endpoint}/openai/v1, the deployment as the body's
# `model`, no dated api-version (a base_url ending so selects it, or api_version V1).
V1_PATH = "/openai/v1"
V1 = "v1"  # as LiteLLM (and Azure's docs) name that API: a path, never sent as api-version
# Azure AI Foundry's model-inference endpoint, https://{resource}.services.ai.azure.com/models:
# `{base_url}/chat/completions?api-version=…` (a dated one: 2024-05-01-preview), the deployment
# as the body's `model`, the same keys and chunks (a base_url ending so selects it).
MODELS_PATH = "/models"
_DATED = re.compile(r"\d{4}-\d{2}-\d{2}")
# A deployment's own URL (the portal's "Target URI"), which this type builds from the endpoint:
# as a base_url, every request went to …/deployments/{d}/openai/deployments/{model}/…, a 404.
_DEPLOYMENT_URL = re.compile(r"/openai/deployments(?:/([^/?#]+))?", re.IGNORECASE)
# An Azure resource's name: the first label of its host, {resource}.openai.azure.com.
_RESOURCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
# A Microsoft Entra ID token (a JWT: base64url header `{"…`, payload, signature), which Azure
# takes only as `Authorization: Bearer` (as `api-key`, a 401); Azure's keys are hex or
# alphanumeric, never dotted. So a client's own token works without `auth: entra`.
_JWT = re.compile(r"eyJ[\w-]*\.[\w-]+\.[\w-]*", re.ASCII)
# An async-filter annotation that reports something: a block (`filtered`), an annotate-only
# filter's hit (`detected`), a severity above safe. A block caught after the model's `stop`
# comes only so, with no `content_filter` finish: dropped, the client never learnt of it.
_VERDICT = re.compile(rb'"(?:filtered|detected)": ?true|"severity": ?"(?!safe")')
_BLOCKED = re.compile(rb'"filtered": ?true')
# The envelope fields an async-filter chunk leaves empty.
_ENVELOPE_KEYS = ("id", "created", "model")
FILTERED = "content_filter"


def filtered_answer_error(status: int, body: bytes, provider: str) -> UpstreamStatusError | None:
    """The error of an HTTP error whose body is no error object but a chat completion the
    filter cut (Azure AI Foundry's models answer a refusal so: a 400, a choice finished
    `content_filter`, the filter's word in its `content_filter_results.error`), or None. Read
    as any other body it was "returned HTTP 400" with no code: nothing said the filter
    refused, nor why."""
    try:
        answer = loads_lenient(body)
    except orjson.JSONDecodeError:
        return None
    choices = answer.get("choices") if isinstance(answer, dict) else None
    for choice in choices if isinstance(choices, list) else ():
        if isinstance(choice, dict) and choice.get("finish_reason") == FILTERED:
            results = choice.get("content_filter_results")
            said = results.get("error") if isinstance(results, dict) else None
            message = said.get("message") if isinstance(said, dict) else None
            fields = kept_fields({"content_filter_results": results}) if results else None
            return UpstreamStatusError(
                status, message if isinstance(message, str) and message else
                "The response was filtered by the provider's content management policy.",
                provider=provider, code=FILTERED, fields=fields)
    return None


def _deployment_url_said(url: str, found: re.Match[str]) -> str:
    """What to write instead of a deployment's URL as base_url: its endpoint (no user info:
    the error is printed), deployment and api-version (when the URL holds them)."""
    try:
        parts = urlsplit(url)
        endpoint = f"{parts.scheme}://{parts.hostname or ''}" + (
            f":{parts.port}" if parts.port else "")
        version = parse_qs(parts.query).get("api-version", [""])[0]
    except ValueError:  # (a bad port: _check_base_url's to say)
        endpoint, version = "https://{resource}.openai.azure.com", ""
    resource = endpoint.removeprefix("https://").removesuffix(".openai.azure.com")
    name = unquote(found[1]) if found[1] else "<the deployment's name>"
    return (
        "is a deployment's URL (the portal's Target URI), but type azure builds "
        "/openai/deployments/{deployment}/chat/completions?api-version=... itself: write "
        f"base_url: {endpoint}"
        + (f" (or resource: {resource})" if _RESOURCE.fullmatch(resource) else "")
        + f", deployment: {name}" + (f", api_version: {version}" if version else ""))


class AzureTranslator(PassthroughTranslator):
    run_stop = None  # every event is looked at (for a "delta")

    def __init__(self, out: ChunkSink, max_event_bytes: int, **passthrough: Any) -> None:
        super().__init__(out, max_event_bytes, **passthrough)
        self._envelope: dict[str, Any] | None = None  # the stream's id, created, model
        # Whether delta chunks are parsed: the first (for the envelope), and every one once
        # the stream took the proxy's envelope (`_stamped`); never else, so not per chunk.
        self._parse_deltas = True
        # Whether the stream carries the proxy's envelope (an async-filter finish came before
        # any delta chunk): Azure's own id on the chunks after it made two ids in one stream.
        self._stamped = False

    def on_event(self, event: SSEEvent) -> None:
        data = event.data
        # Cheap test first: every OpenAI chunk with a choice has a "delta" key.
        if b'"delta"' in data:
            if self._parse_deltas:
                chunk = load_chunk(data)
                if not self._stamped:  # the first delta chunk: one parse per stream
                    self._envelope = {key: chunk[key] for key in _ENVELOPE_KEYS
                                      if chunk.get(key)}
                    self._parse_deltas = False
                else:
                    self._restamp(chunk)
                    return
            super().on_event(event)
            return
        if data[:6] == b"[DONE]" or not data.strip():
            super().on_event(event)  # the end, or a relay's empty keep-alive (skipped there)
            return
        chunk = load_chunk(data)
        choices = chunk.get("choices")
        if not choices or not isinstance(choices[0], dict) or "delta" in choices[0]:
            if self._stamped and chunk.get("usage"):  # (the rest is dropped or an error)
                self._restamp(chunk)
            else:
                super().on_event(event)  # the preamble, the usage chunk, an error…
            return
        choice = choices[0]
        blocked = False
        if not choice.get("finish_reason"):
            if _VERDICT.search(data) is None:
                return  # an all-clear annotation: nothing a client can use
            blocked = _BLOCKED.search(data) is not None
        choice["delta"] = {}
        # Before any delta chunk (the filter cut the answer at its start) the stream's own
        # envelope is the proxy's: Azure's here is empty, and a client saw `id: ""`.
        if self._envelope is None:
            self._envelope = self.out.envelope()
            self._stamped = self._parse_deltas = True
        if self._stamped:
            self._restamp(chunk, blocked)
            return
        for key, value in self._envelope.items():
            if not chunk.get(key):
                chunk[key] = value
        self._forward(chunk, blocked)

    def _restamp(self, chunk: dict[str, Any], blocked: bool = False) -> None:
        """Forward `chunk` with the proxy's envelope, which the stream took (`_stamped`)."""
        chunk.update(self._envelope or ())
        self._forward(chunk, blocked)

    def _forward(self, chunk: dict[str, Any], blocked: bool) -> None:
        if not chunk.get("object"):
            chunk["object"] = "chat.completion.chunk"
        if blocked:
            # A block's verdict (no finish in it): the client's chunk says it as Azure did,
            # while the answer's finish, for the logs and the cache (which never keeps a cut
            # answer: a replay would give the blocked answer clean), is the filter's.
            self.out.raw(orjson.dumps(chunk), FILTERED)
            return
        self.on_chunk(chunk, orjson.dumps(chunk))


class AzureOpenAIProvider(OpenAIProvider):
    type_name: ClassVar[str] = "azure"
    default_base_url: ClassVar[str | None] = None
    option_keys: ClassVar[frozenset[str]] = frozenset(
        {"resource", "deployment", "api_version", "auth"})
    # Portkey's Azure settings: a config target's fields, or the portkey-ai SDK's headers.
    target_options: ClassVar[dict[str, str]] = {
        "resource_name": "resource", "deployment_id": "deployment", "api_version": "api_version"}
    tenant_option: ClassVar[str | None] = "resource_name"
    translator_type = AzureTranslator

    @classmethod
    def check_options(cls, options: dict[str, Any], source: str, where: str) -> None:
        super().check_options(options, source, where)
        for key in ("resource", "deployment", "api_version"):
            if key in options and (not isinstance(options[key], str) or not options[key]):
                raise ConfigError(source, f"{where}.{key}", "must be a non-empty string")
        # (sent as written, URL-encoded into the path or the query: a 404 for every request)
        refuse_reference(options.get("deployment"), source, f"{where}.deployment",
                         "the deployment's name")
        refuse_reference(options.get("api_version"), source, f"{where}.api_version",
                         "the API version (e.g. 2024-10-21)")
        resource = options.get("resource")
        if resource is not None and not _RESOURCE.fullmatch(resource):
            # a host or URL here built https://myres.openai.azure.com.openai.azure.com
            raise ConfigError(source, f"{where}.resource", (
                "must be the resource's name alone (myres, for https://myres.openai.azure.com), "
                "not a host or URL: an endpoint elsewhere goes in base_url"))
        if options.get("auth", "api-key") not in AUTH_MODES:
            raise ConfigError(source, f"{where}.auth", f"must be one of {', '.join(AUTH_MODES)}")

    @classmethod
    def check_entry(cls, entry: dict[str, Any], source: str, where: str) -> None:
        if not entry.get("resource") and not entry.get("base_url"):
            raise ConfigError(source, f"{where}.resource",
                              "required for type azure (or a base_url for the endpoint)")
        base_url = entry.get("base_url")
        base = base_url.rstrip("/") if isinstance(base_url, str) else ""
        if found := _DEPLOYMENT_URL.search(base):
            raise ConfigError(source, f"{where}.base_url", _deployment_url_said(base, found))
        models = base.endswith(MODELS_PATH)
        if not entry.get("api_version") and not base.endswith(V1_PATH):
            raise ConfigError(source, f"{where}.api_version", "required for type azure (e.g. "
                              f"{'2024-05-01-preview' if models else '2024-10-21'})")
        if models and entry.get("api_version") == V1:
            raise ConfigError(source, f"{where}.api_version", (
                "v1 is the /openai/v1 API: the /models endpoint takes a dated one (e.g. "
                "2024-05-01-preview); for v1, a base_url ending in /openai/v1"))

    @property
    def asks_stream_usage(self) -> bool:  # type: ignore[override]
        """Whether streamed requests ask for usage: not on an api-version older than
        STREAM_USAGE_SINCE (2024-06-01 and 2024-02-01 are still common), which would refuse
        every stream; those streams carry no usage (a client's own `stream_options`, sent
        as written, gets that 400)."""
        return not self._api_version_before(STREAM_USAGE_SINCE)

    def _api_version_before(self, since: str) -> bool:
        """Whether the request goes with a dated api-version older than `since` (v1 sends none:
        `chat_url`)."""
        version = self.cfg.options.get("api_version") or ""
        return not self.v1 and bool(_DATED.match(version)) and version[:10] < since

    def adapt_body(self, body: dict[str, Any], model: str = "") -> dict[str, Any]:
        # The openai SDK's users and LangChain now send `max_completion_tokens`, which an older
        # api-version refuses; those reach no reasoning model, so `max_tokens` is the same cap.
        if "max_completion_tokens" in body and self._api_version_before(COMPLETION_CAP_SINCE):
            body = dict(body)
            cap = body.pop("max_completion_tokens")
            if cap is not None:  # (the current name wins over a `max_tokens` beside it)
                body["max_tokens"] = cap
        return body

    @property
    def v1(self) -> bool:
        """Whether the endpoint is Azure's v1 surface: a `base_url` ending in /openai/v1, or
        `api_version: v1` (the provider's, a target's or the portkey-ai SDK's header)."""
        base = self.cfg.base_url
        if base is None:
            return self.cfg.options.get("api_version") == V1
        return base.endswith(V1_PATH) or (
            self.cfg.options.get("api_version") == V1 and not self.models)

    @property
    def models(self) -> bool:
        """Whether the endpoint is Azure AI Foundry's model-inference one (`base_url` ending in
        /models), which takes the deployment as the body's `model`."""
        base = self.cfg.base_url
        return base is not None and base.endswith(MODELS_PATH)

    def parse_error(self, status: int, body: bytes) -> UpstreamStatusError:
        err = super().parse_error(status, body)
        if err.fields is None and b'"content_filter"' in body:  # (no error object)
            return filtered_answer_error(status, body, self.name) or err
        return err

    def refused_option(self) -> tuple[str, str] | None:
        # (the provider's own is a config error: `check_entry`; a target's or the SDK's
        # header went as `?api-version=v1`, which Azure refuses)
        if self.models and self.cfg.options.get("api_version") == V1:
            return "api_version", (
                "v1 is the /openai/v1 API, but the endpoint is Azure AI Foundry's /models "
                "one, which takes a dated api-version (e.g. 2024-05-01-preview)")
        return None

    @property
    def base_url(self) -> str:
        if self.cfg.base_url:
            return self.cfg.base_url.removesuffix("/openai")
        return f"https://{self.cfg.options['resource']}.openai.azure.com"

    @property
    def endpoint(self) -> str:
        return self.base_url  # two resources fail apart (a target may name its own)

    @property
    def answering_server(self) -> str | None:
        return self.base_url  # a resource (a target may name its own) runs its own deployments

    def model_for(self, target: Target) -> str:
        # The deployment names the model: a request with none (the portkey-ai SDK's
        # `portkey-default`) goes to it, with no default_model needed; on the v1 surface and
        # the /models endpoint it is the body's `model` (the deployments URL names it instead).
        deployment = self.cfg.options.get("deployment")
        if deployment and (self.v1 or self.models
                           or not (target.model or self.cfg.default_model)):
            return str(deployment)
        return super().model_for(target)

    def answering_model(self, target: Target) -> str | None:
        return self.cfg.options.get("deployment") or super().answering_model(target)

    def chat_url(self, model: str) -> str:
        version = self.cfg.options.get("api_version")
        if self.v1:  # OpenAI's path; an api-version only when one is set (`preview`), never a
            # dated one: v1 has none and refuses one ("API version not supported"), while a
            # provider's, a target's or the portkey-ai SDK's header may well name one
            undated = version and version != V1 and not _DATED.match(version)
            query = f"?api-version={quote(version)}" if undated else ""
            base = self.cfg.base_url or ""
            if not base.endswith(V1_PATH):  # (`api_version: v1`: the endpoint's v1 path)
                base = self.base_url + V1_PATH
            return f"{base}/chat/completions{query}"
        if not version:  # a v1 provider's custom host that is not v1: Azure refuses an
            # empty api-version, so the client is told what to send (and what the host is)
            host = ("Azure AI Foundry's /models endpoint, which needs a dated one (e.g. "
                    "2024-05-01-preview)" if self.models else
                    "Azure's deployments API, which needs one")
            raise InvalidRequest(
                f"Provider '{self.name}' has no api_version, and the custom host (not "
                f"/openai/v1) is {host}: send x-portkey-azure-api-version (or a config "
                "target's api_version), or a custom host ending in /openai/v1.",
                param="api_version", code="missing_required_parameter")
        if self.models:  # the body names the deployment (`model_for`)
            return f"{self.cfg.base_url}/chat/completions?api-version={quote(version)}"
        deployment = self.cfg.options.get("deployment") or model
        return (f"{self.base_url}/openai/deployments/{path_segment(deployment, 'deployment')}"
                f"/chat/completions?api-version={quote(version)}")

    def with_own_key(self) -> AzureOpenAIProvider:
        # `auth: entra` says what the provider's key is. A config target's or virtual key's
        # own key goes by its shape: `api-key`, or the bearer for an Entra token (a JWT,
        # always); an Azure key sent as a bearer was Azure's 401.
        if self.cfg.options.get("auth") != "entra":
            return self
        clone = copy.copy(self)
        clone.cfg = replace(self.cfg, options={k: v for k, v in self.cfg.options.items()
                                               if k != "auth"})
        return clone

    def auth_headers(self, api_key: str | None) -> dict[str, str]:
        if not api_key:
            return {}
        # `auth: entra` is about the provider's own key: a client's key (forwarded when the
        # provider holds none) goes by its shape, as a target's own does (`with_own_key`).
        entra = self.cfg.options.get("auth") == "entra" and api_key == self.cfg.api_key
        if entra or _JWT.fullmatch(api_key):
            return {"authorization": f"Bearer {api_key}"}
        return {"api-key": api_key}
