"""Google Gemini: AI Studio (`type: gemini`) and Vertex AI (`type: vertex`).

Both take the same request body and answer with the same stream (`alt=sse`, CRLF framing, no
`[DONE]`), so they share every translation; they differ in URL and authentication only.
Vertex also serves Claude, in Anthropic's format (`vertex_anthropic.py`).
"""

from __future__ import annotations

import copy
import os
import re
import shlex
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from streamproxy.config import (
    REGION,
    ConfigError,
    ProviderConfig,
    check_env_name,
    positive_seconds,
    refuse_null_word,
    shown_env,
    unset_or_empty,
)
from streamproxy.errors import InvalidRequest, UpstreamStatusError
from streamproxy.openai_api.chunks import ChunkSink
from streamproxy.providers.anthropic.options import check_option_values
from streamproxy.providers.base import Provider, StreamTranslator, UpstreamRequest
from streamproxy.providers.gemini import credentials
from streamproxy.providers.gemini.auth import (
    CommandToken,
    TokenSource,
    TokenUnavailable,
    is_sendable_token,
)
from streamproxy.providers.gemini.errors import google_error
from streamproxy.providers.gemini.names import client_names
from streamproxy.providers.gemini.request import DROPPED, asks_search, to_gemini
from streamproxy.providers.gemini.response import to_completion
from streamproxy.providers.gemini.stream import GeminiStreamTranslator, answer_events
from streamproxy.providers.gemini.vertex_anthropic import VertexClaudeProvider, is_claude

if TYPE_CHECKING:
    from streamproxy.openai_api.request import ChatRequest
    from streamproxy.routing.target import Target
    from streamproxy.upstream.egress import EgressProxies

# A model name (or a resource path such as `tunedModels/x`) goes into the URL path: allow only
# plain segments, so a client cannot steer the request to another Google endpoint.
_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*(?:/[A-Za-z0-9][A-Za-z0-9._@-]*)*")
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# A project id, or a domain-scoped one (`example.com:my-project`, Google's name for projects
# of a Workspace domain). ':' is a plain character in a path segment; no '/', '?', '#' or '%'.
_PROJECT = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9.-]*:)?[A-Za-z0-9][A-Za-z0-9._-]*")
# A resource's full name, as the console and google-genai give a tuned model's endpoint.
_RESOURCE = re.compile(r"projects/([^/]+)/locations/([^/]+)/(.+)")
DEFAULT_TOKEN_REFRESH = 300.0
# Where a Vertex token comes from, besides the provider key: one of these at most.
TOKEN_OPTIONS = ("token_command", "token_env", "credentials_file", "credentials")
# How every Google Cloud API key begins (an OAuth access token never does: `ya29.`).
API_KEY_PREFIX = "AIza"
# Vertex's multi-region locations, served from regional endpoints of their own (the hosts
# google-genai's client builds for them).
MULTI_REGIONS = ("us", "eu")
# Portkey's Vertex names a model `<publisher>.<id>`; Google's own, `google.gemini-2.5-pro`, is
# the id after the prefix (Claude's `anthropic.` is vertex_anthropic.py's).
GOOGLE_PREFIX = "google."
# Its other prefixes name models it calls through APIs this provider does not speak (Llama's
# and a deployed model's OpenAI-compatible chat/completions, Mistral's rawPredict): a 400
# saying so, rather than sending them to Google's publisher as Gemini models (Vertex's 404).
UNSERVED_PREFIXES = {"meta.": "a Meta model", "mistralai.": "a Mistral model",
                     "endpoints.": "a deployed endpoint's model"}


class GeminiProvider(Provider):
    type_name: ClassVar[str] = "gemini"
    default_base_url: ClassVar[str | None] = "https://generativelanguage.googleapis.com"
    api_path: ClassVar[str] = "/{api_version}/models/…"  # (model_url)
    # (/openai: the OpenAI-compatible root, which type openai takes)
    base_url_endings: ClassVar[tuple[str, ...]] = ("/v1", "/v1beta", "/v1alpha", "/openai",
                                                   "/models")
    option_keys: ClassVar[frozenset[str]] = frozenset({"api_version"})
    dropped_params: ClassVar[frozenset[str]] = DROPPED
    # Image models (gemini-2.5-flash-image, gemini-3-pro-image-preview) answer with images.
    answer_modalities: ClassVar[frozenset[str]] = frozenset({"text", "image"})
    searches_web: ClassVar[bool] = True  # web_search_options → Google Search grounding
    default_api_version: ClassVar[str] = "v1beta"
    brand: ClassVar[str] = "Gemini"  # as a refusal names the service
    file_mime_required: ClassVar[bool] = False  # fileData.mimeType (see to_gemini)

    @classmethod
    def check_options(cls, options: dict[str, Any], source: str, where: str) -> None:
        super().check_options(options, source, where)
        version = options.get("api_version")
        if version is not None and not (isinstance(version, str) and _SEGMENT.fullmatch(version)):
            raise ConfigError(source, f"{where}.api_version", "must be a version like v1beta")

    @property
    def api_version(self) -> str:
        return self.cfg.options.get("api_version") or self.default_api_version

    def model_url(self, model: str) -> str:
        path = model if "/" in model else f"models/{model}"
        return f"{self.base_url}/{self.api_version}/{path}"

    def checked_model(self, target: Target) -> str:
        """The target's model, or a 400 for a name that cannot go in the URL's path."""
        model = self.model_for(target)
        if not _MODEL.fullmatch(model):
            raise InvalidRequest(f"'{model}' is not a valid {self.brand} model name.",
                                 param="model", code="invalid_value")
        return model

    def auth_headers(self, target: Target) -> dict[str, str]:
        return {"x-goog-api-key": target.api_key} if target.api_key else {}

    def build_request(self, req: ChatRequest, target: Target) -> UpstreamRequest:
        model = self.checked_model(target)
        body = to_gemini(target.apply_overrides(req.body), model,
                         mime_required=self.file_mime_required)
        method = "streamGenerateContent?alt=sse" if req.stream else "generateContent"
        headers = {"content-type": "application/json", **self.cfg.headers, **target.headers,
                   **self.auth_headers(target)}
        return UpstreamRequest(f"{self.model_url(model)}:{method}", orjson.dumps(body), headers)

    def stream_translator(self, req: ChatRequest, out: ChunkSink) -> StreamTranslator:
        return GeminiStreamTranslator(out, self.max_event_bytes, self.name,
                                      logprobs=bool(req.body.get("logprobs")),
                                      grounded=asks_search(req.body),
                                      names=client_names(req.body))

    def translate_response(self, body: bytes, req: ChatRequest, *, completion_id: str,
                           created: int, model: str = "") -> dict[str, Any]:
        return to_completion(body, completion_id=completion_id, created=created,
                             model=model, provider=self.name,
                             logprobs=bool(req.body.get("logprobs")),
                             names=client_names(req.body))

    def parse_error(self, status: int, body: bytes) -> UpstreamStatusError:
        return google_error(status, body, self.name)

    def answered_error(self, body: bytes) -> UpstreamStatusError:
        return google_error(0, body, self.name)  # (0: Google's numeric `code` is the status)

    def events_of_answer(self, body: bytes) -> bytes | None:
        return answer_events(body)


class VertexProvider(GeminiProvider):
    """Vertex AI. The bearer token is a config target's or virtual key's own key, else from one
    of `token_command`, `token_env`, `credentials_file` or `credentials: adc`, else the
    provider key (`api_key` / `api_key_env`, or the client's own `Authorization: Bearer` key
    when none is configured).

    Without a project it is express mode: the key is a Google Cloud API key, sent as
    `x-goog-api-key` to the global host, whose paths name no project or location."""

    type_name: ClassVar[str] = "vertex"
    default_base_url: ClassVar[str | None] = None  # derived from `location`
    api_path: ClassVar[str] = "/{api_version}/projects/…"  # (model_url)
    base_url_endings: ClassVar[tuple[str, ...]] = ("/v1", "/v1beta1")
    option_keys: ClassVar[frozenset[str]] = frozenset({
        "api_version", "project", "location", *TOKEN_OPTIONS, "token_refresh", "anthropic_beta"})
    target_options: ClassVar[dict[str, str]] = {"vertex_region": "location",
                                                "anthropic_beta": "anthropic_beta"}
    answering_options: ClassVar[frozenset[str]] = frozenset({"anthropic_beta"})  # (Claude's)
    default_api_version: ClassVar[str] = "v1"
    brand: ClassVar[str] = "Vertex"
    file_mime_required: ClassVar[bool] = True  # Vertex's FileData: "Required"

    def __init__(self, cfg: ProviderConfig, **kw: Any) -> None:
        super().__init__(cfg, **kw)
        opts = cfg.options
        self.project: str | None = opts.get("project")  # None: express mode
        self.location: str | None = opts.get("location")
        self._token_env: str | None = opts.get("token_env")
        self.token_source: TokenSource | None = _token_source(opts, self.name)

    @classmethod
    def check_options(cls, options: dict[str, Any], source: str, where: str) -> None:
        super().check_options(options, source, where)
        project = options.get("project")
        if type(project) is int:  # a project number, as YAML reads it unquoted (the API takes it)
            options["project"] = str(project)
        for key in ("project", "location"):  # (`None`: read as the region "none", a host)
            refuse_null_word(options.get(key), source, f"{where}.{key}")
        if isinstance(options.get("location"), str):  # Vertex's regions are lower case
            options["location"] = options["location"].lower()
        express = options.get("project") is None and options.get("location") is None
        for key in () if express else ("project", "location"):  # (express: check_entry)
            value = options.get(key)
            # (a location is also part of the host name: no '.')
            pattern = _PROJECT if key == "project" else REGION
            if not (isinstance(value, str) and pattern.fullmatch(value)):
                raise ConfigError(source, f"{where}.{key}",
                                  "is required for type vertex (a Google Cloud "
                                  + ("project id" if key == "project" else "region, or global")
                                  + ")")
        given = [key for key in TOKEN_OPTIONS if options.get(key) is not None]
        if len(given) > 1:
            raise ConfigError(source, f"{where}.{given[1]}",
                              f"set one of {', '.join(TOKEN_OPTIONS)}, not {given[0]} and "
                              f"{given[1]}")
        problem = _token_option_problem(options)
        if problem:
            raise ConfigError(source, f"{where}.{problem[0]}", problem[1])
        # (`${TOKEN}` or the token itself named a variable never set: every request failed)
        check_env_name(options.get("token_env"), source, f"{where}.token_env")
        if options.get("token_refresh") is not None:
            positive_seconds(options["token_refresh"], source, f"{where}.token_refresh")
        check_option_values(options, source, where)

    @classmethod
    def check_entry(cls, entry: dict[str, Any], source: str, where: str) -> None:
        if entry.get("project") is not None:
            return
        # Express mode: an API key is its only credential (an OAuth token needs a project).
        token = next((key for key in TOKEN_OPTIONS if entry.get(key) is not None), None)
        if token is not None or not (entry.get("api_key") or entry.get("api_key_env")):
            raise ConfigError(source, f"{where}.project", "is required for type vertex (a "
                              "Google Cloud project id" + (f", with {token}" if token else "")
                              + "); without one, for Vertex AI express mode, give an api_key "
                              "(a Google Cloud API key) alone")

    @property
    def express(self) -> bool:
        return self.project is None

    @property
    def base_url(self) -> str:
        if self.cfg.base_url:
            return self.cfg.base_url
        if self.express or self.location == "global":
            return "https://aiplatform.googleapis.com"
        if self.location in MULTI_REGIONS:  # `us-aiplatform.…` does not exist
            return f"https://aiplatform.{self.location}.rep.googleapis.com"
        return f"https://{self.location}-aiplatform.googleapis.com"

    @property
    def endpoint(self) -> str:
        return super().endpoint if self.express else f"{super().endpoint}#{self.location}"

    def with_options(self, options: dict[str, str]) -> VertexProvider:
        clone = super().with_options(options)
        assert isinstance(clone, VertexProvider)
        if not self.express:  # (express mode has one global endpoint: no region to choose)
            location = options.get("location")  # the same token; lower case, as configured
            clone.location = location.lower() if location is not None else self.location
        return clone

    def checked_model(self, target: Target) -> str:
        model = super().checked_model(target)
        full = _RESOURCE.fullmatch(model)
        if self.express and (full or _is_claude(model)):
            raise InvalidRequest(
                f"'{model}' cannot be reached in Vertex AI express mode (provider "
                f"'{self.name}' has an API key and no project): "
                + ("a resource name needs the project's credentials." if full else
                   "Claude on Vertex takes no API key."), param="model", code="unsupported_value")
        if full:  # the path after the location; only the provider's: its credentials may
            # reach other projects, which a request does not choose
            if (full[1], full[2]) != (self.project, self.location):
                raise InvalidRequest(
                    f"'{model}' is not in provider '{self.name}''s project and location: give "
                    "the model's path after the location (e.g. 'endpoints/<id>').",
                    param="model", code="invalid_value")
            model = full[3]
        for prefix, what in UNSERVED_PREFIXES.items():
            if model.startswith(prefix):
                raise InvalidRequest(
                    f"'{model}' names {what} (Portkey's '{prefix}' prefix), which Vertex serves "
                    f"through another API: provider '{self.name}' sends Vertex's Gemini and "
                    "Claude models only (a tuned Gemini endpoint is 'endpoints/<id>').",
                    param="model", code="unsupported_value")
        return model.removeprefix(GOOGLE_PREFIX)

    def model_url(self, model: str) -> str:
        path = model if "/" in model else f"publishers/google/models/{model}"
        if self.express:
            return f"{self.base_url}/{self.api_version}/{path}"
        return (f"{self.base_url}/{self.api_version}/projects/{self.project}"
                f"/locations/{self.location}/{path}")

    def auth_summary(self) -> str | None:
        opts = self.cfg.options
        for key in TOKEN_OPTIONS:
            value = opts.get(key)
            if value is not None:
                if key == "token_command":  # its name only: an argument may be a secret
                    value = shlex.split(value)[0] if isinstance(value, str) else value[0]
                elif key == "token_env":  # (not the token itself, written for its name)
                    value = shown_env(value)
                return f"{key}={value}"
        return None

    def use_egress(self, egress: EgressProxies) -> None:
        if isinstance(self.token_source, credentials.GoogleToken):
            self.token_source.egress = egress

    def with_own_key(self) -> VertexProvider:
        # A config target's or virtual key's own key is its access token (auth_headers, as a
        # provider key is), over the provider's token source, as a target's key wins over a
        # provider's on every type: no token is fetched for it, no quota project goes with it,
        # and Vertex's 401 for it does not drop the provider's token (`rejected`).
        clone = copy.copy(self)
        clone.token_source, clone._token_env = None, None
        return clone

    async def prepare(self, target: Target) -> None:
        if self.token_source is not None:
            await self.token_source.get()  # waits only without a usable token (auth.py)

    def auth_headers(self, target: Target) -> dict[str, str]:
        token: str | None
        if self.token_source is not None:
            token = self.token_source.cached
            if token is None:  # prepare() was not awaited, or the token was just dropped
                raise TokenUnavailable(f"provider '{self.name}': no access token yet")
            return {"authorization": f"Bearer {token}", **self.token_source.headers}
        if self._token_env:
            token = (os.environ.get(self._token_env) or "").strip()  # (a file's newline)
            if not token:
                raise TokenUnavailable(f"provider '{self.name}': the environment variable "
                                       f"{shown_env(self._token_env)} "
                                       f"{unset_or_empty(self._token_env)}")
            if not is_sendable_token(token):  # as the other sources' tokens: a line break
                # in it failed the request as an internal error, a non-ASCII one at Vertex
                raise TokenUnavailable(f"provider '{self.name}': the environment variable "
                                       f"{shown_env(self._token_env)} does not hold a single "
                                       "token")
        else:
            token = target.api_key
            if self.express or (token and token.startswith(API_KEY_PREFIX)):
                # a Google Cloud API key, not an OAuth token (as a Bearer: Vertex's 401); with
                # a project (a key bound to a service account) it goes to the project's path
                return super().auth_headers(target)
        return {"authorization": f"Bearer {token}"} if token else {}

    def for_model(self, model: str | None) -> Provider:
        # (express mode: Gemini's view, whose checked_model refuses Claude)
        return VertexClaudeProvider(self) if model and _is_claude(model) \
            and not self.express else self

    def answering_option_values(self, target: Target) -> dict[str, Any]:
        # Claude's betas are sent to Claude alone (vertex_anthropic.py): Gemini's answers do
        # not depend on them.
        model = self.answering_model(target)
        if model and _is_claude(model):
            return super().answering_option_values(target)
        return {}

    def rejected(self, status: int, sent: UpstreamRequest) -> None:
        """After a 401 the token it carried is not used again: the next request waits for a
        new one. Only that token: a 401 that comes after a refresh replaced it leaves the new
        one (dropping it cost one more fetch per late 401)."""
        if status == 401 and self.token_source is not None:
            self.token_source.invalidate(
                sent.headers.get("authorization", "").removeprefix("Bearer "))


def _is_claude(model: str) -> bool:
    # A full resource name is Claude's when its path after the location is (its project and
    # location are checked where the URL is built: checked_model).
    full = _RESOURCE.fullmatch(model)
    return is_claude(full[3] if full else model)


def _token_option_problem(options: dict[str, Any]) -> tuple[str, str] | None:
    """(key, reason) for the first unusable token option; a credentials file is read here, so
    a missing or broken one stops the proxy at startup (and `check-config`)."""
    command = options.get("token_command")
    if command is not None and not (
            (isinstance(command, str) and shlex.split(command))
            or (isinstance(command, list) and command
                and all(isinstance(a, str) for a in command))):
        return "token_command", "must be a command line or a non-empty list of arguments"
    if options.get("token_env") is not None and not (
            isinstance(options["token_env"], str) and options["token_env"]):
        # ("" counted as the token option given, then as none: the provider key went instead)
        return "token_env", "must be an environment variable name"
    path = options.get("credentials_file")
    if path is not None:
        if not (isinstance(path, str) and path):
            return "credentials_file", "must be the path of a Google credentials JSON file"
        problem = credentials.check_file(path)
        return ("credentials_file", problem) if problem else None
    mode = options.get("credentials")
    if mode is not None:
        if mode != credentials.ADC:
            return "credentials", (f"must be {credentials.ADC} (Application Default "
                                   "Credentials); a key file goes in credentials_file")
        # ADC is found at first use (it may ask the metadata server); its explicit file can
        # be checked now.
        # (as google-auth opens it: a `~` there is not expanded)
        path = os.environ.get(credentials.ADC_FILE_ENV)
        problem = credentials.check_file(path, expand=False) if path else None
        if problem:
            return "credentials", f"{credentials.ADC_FILE_ENV}: {problem}"
    return None


def _token_source(opts: dict[str, Any], provider: str) -> TokenSource | None:
    refresh = float(opts.get("token_refresh") or DEFAULT_TOKEN_REFRESH)
    command = opts.get("token_command")
    if command:
        argv = shlex.split(command) if isinstance(command, str) else list(command)
        return CommandToken(argv, refresh, provider=provider)
    if opts.get("credentials_file") or opts.get("credentials") == credentials.ADC:
        return credentials.GoogleToken(opts.get("credentials_file"), refresh, provider=provider)
    return None
