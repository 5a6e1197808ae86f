"""Bedrock authentication: a Bedrock API key (`Authorization: Bearer`) or AWS SigV4.

Which one, in order (docs/providers/bedrock.md):
0. a config target's or virtual key's own key → Bearer (`TargetKey`, by `with_own_key`);
1. the provider's `api_key` / `api_key_env` → Bearer;
2. `aws_access_key_id` + `aws_secret_access_key` (+ `aws_session_token`), each also as `*_env`
   naming an environment variable → SigV4 with those static keys;
3. `profile` → SigV4 with that profile of the AWS config files (botocore resolves it: static
   keys, assume-role, SSO, credential_process);
4. the `AWS_BEARER_TOKEN_BEDROCK` environment variable → Bearer;
5. botocore's default credential chain (environment, config files, container, instance role)
   → SigV4; when it finds nothing, the client's own key (if it sent one) → Bearer.

botocore (~8 MB, 0.1 s to import) is imported only when SigV4 is used: a proxy with no
Bedrock provider, or one on an API key, never loads it. Signing is pure CPU and happens in
`build_request`. Credentials are resolved once per provider
and cached; botocore's refreshable credentials renew themselves. Both the first lookup and a
renewal do I/O (instance metadata, STS, SSO, a `credential_process`): the provider's async
`prepare()` runs them in a daemon thread when `needs_io()` says so, so `build_request` finds them
ready; the requests that need them meanwhile wait for that one run. botocore's own HTTP calls
(STS for a role or web identity, SSO) take the egress proxy the upstream requests take. The signed
headers are those the request carries (content-type, configured extras) plus `Host`, which
aiohttp sets to the same value.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

from streamproxy.config import (
    ConfigError,
    ProviderConfig,
    check_env_name,
    check_provider_key,
    check_secret,
    secret_from_env,
    shown_env,
    unset_or_empty,
)
from streamproxy.errors import AuthenticationFailed, CredentialsUnavailable
from streamproxy.providers.threads import in_daemon_thread

if TYPE_CHECKING:
    from streamproxy.upstream.egress import EgressProxies

BEARER_ENV = "AWS_BEARER_TOKEN_BEDROCK"
SIGNING_SERVICE = "bedrock"
KEY_OPTIONS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")
OPTION_KEYS = frozenset({"region", "profile", *KEY_OPTIONS, *(f"{k}_env" for k in KEY_OPTIONS)})
_RETRY_CHAIN_AFTER = 60.0  # seconds before looking for credentials again after finding none
# How long a request waits for a lookup (Vertex's token fetch has the same bound): a hung one
# (botocore gives a credential_process no timeout) otherwise held every request until its own
# first-token timeout, 600 s by default, before a fallback could run.
LOOKUP_DEADLINE = 30.0

# botocore logs at DEBUG what carries credentials: the canonical request (`auth`: the session
# token), and for its own calls (STS for a role or web identity, SSO) each request with its
# signed headers and body (`endpoint`: a web identity token, an SSO access token) and each
# answer's body (`parsers`: the new secret key and session token). Keep them out of our logs
# even when the proxy runs at debug level.
for _name in ("botocore.auth", "botocore.endpoint", "botocore.parsers"):
    logging.getLogger(_name).setLevel(logging.INFO)


def check_options(options: dict[str, Any], source: str, where: str) -> None:
    for key, value in options.items():
        if key in OPTION_KEYS and value is not None and not isinstance(value, str):
            raise ConfigError(source, f"{where}.{key}", "must be a string")
        if key in OPTION_KEYS and isinstance(value, str) and not value.strip():
            # (an unset template variable: read as not given, the default credential chain,
            # the host's role or ~/.aws, signed in place of the keys meant; fail closed)
            raise ConfigError(source, f"{where}.{key}", "is empty: give it, or leave it out")
        if key.endswith("_env"):
            check_env_name(value, source, f"{where}.{key}")
    for key in KEY_OPTIONS:
        if options.get(key) and options.get(f"{key}_env"):
            raise ConfigError(source, f"{where}.{key}", f"give {key} or {key}_env, not both")
    keys = static_keys(options)
    for key, value in zip(KEY_OPTIONS, keys, strict=True):
        env = options.get(f"{key}_env")
        if env and value is None:  # (a missing export: as an empty option, fail closed)
            raise ConfigError(source, f"{where}.{key}_env",
                              f"environment variable {shown_env(env)} {unset_or_empty(env)}")
    for key, value in zip(KEY_OPTIONS, keys, strict=True):  # (signed with: AWS's 403)
        field = f"{where}.{key if options.get(key) else f'{key}_env'}"
        # (a line break inside: in x-amz-security-token or Authorization, a 500 per request)
        check_secret(value, source, field)
        check_provider_key(value, source, field)
    if bool(keys[0]) != bool(keys[1]):
        raise ConfigError(source, f"{where}.aws_access_key_id",
                          "aws_access_key_id and aws_secret_access_key go together (set or "
                          "named by *_env); one of them is missing")
    if keys[2] and not keys[0]:  # (else dropped: the chain or profile signs without it)
        field = "aws_session_token" if options.get("aws_session_token") else \
            "aws_session_token_env"
        raise ConfigError(source, f"{where}.{field}", "aws_session_token goes with "
                          "aws_access_key_id and aws_secret_access_key, which are not given")
    if keys[0] and options.get("profile"):
        raise ConfigError(source, f"{where}.profile", "give static keys or a profile, not both")


def static_keys(options: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(access key id, secret, session token) from the options or the variables they name,
    without the whitespace around them (a file's newline, a paste's space): SigV4 signs with
    it, and AWS's 403 says only that the signature does not match."""
    values = []
    for key in KEY_OPTIONS:
        value = options.get(key)
        if not value and options.get(f"{key}_env"):
            value = os.environ.get(options[f"{key}_env"])
        values.append(value.strip() if isinstance(value, str) and value.strip() else None)
    return values[0], values[1], values[2]


def resolve_region(options: dict[str, Any]) -> str | None:
    region = (options.get("region") or os.environ.get("AWS_REGION")
              or os.environ.get("AWS_DEFAULT_REGION"))
    if not region:
        import botocore.session
        from botocore.exceptions import BotoCoreError

        # The profile's: the option's, else AWS_PROFILE's or `default` (whose credentials the
        # default chain signs with), as the AWS CLI and boto3 read it.
        try:
            region = botocore.session.Session(profile=options.get("profile")) \
                .get_config_variable("region")
        except BotoCoreError:  # an unknown profile: reported when credentials are loaded
            region = None
    return region or None


class BedrockAuth:
    def __init__(self, cfg: ProviderConfig, region: str) -> None:
        options = cfg.options
        self.region = region
        self._provider = cfg.name
        self._bearer = cfg.api_key
        access_key, secret, token = static_keys(options)
        self._profile: str | None = options.get("profile")
        self._credentials: Any = None  # botocore (Refreshable)Credentials once resolved
        self._looked_at: float | None = None  # when the chain last came back empty
        self._lock = threading.Lock()  # one chain lookup at a time
        self._loading_run: asyncio.Future[None] | None = None  # `load()`'s thread, until it ends
        # `server.upstream_proxy`, as the upstream clients follow it (server/app.py sets it);
        # None: botocore's own choice (the environment's proxies).
        self.egress: EgressProxies | None = None
        # How requests authenticate, for check-config (names only); None: the configured key.
        self.summary: str | None = None
        if not self._bearer and access_key and secret:
            from botocore.credentials import Credentials

            self._credentials = Credentials(access_key, secret, token)
            self.summary = "sigv4 (static keys)"
        elif not self._bearer and self._profile:
            self.summary = f"sigv4 (profile {self._profile})"
        elif not self._bearer:
            # Checked as `api_key_env`'s value is (a line break: a 500 per request as the
            # header was written; a smart quote: AWS's 403), naming the variable, not the value.
            where = f"providers.{cfg.name} (environment variable {BEARER_ENV})"
            self._bearer = secret_from_env(BEARER_ENV, "config", where)
            check_provider_key(self._bearer, "config", where)
            self.summary = (f"bearer ({BEARER_ENV})" if self._bearer else
                            "sigv4 (the AWS credential chain; without credentials, the client's "
                            "key)")

    @property
    def mode(self) -> str:
        return "bearer" if self._bearer else "sigv4"

    def __repr__(self) -> str:  # never print a key
        return f"BedrockAuth(provider={self._provider!r}, mode={self.mode!r})"

    def sign(self, url: str, body: bytes, headers: dict[str, str], client_key: str | None,
             region: str | None = None) -> dict[str, str]:
        """The headers to send: `headers` plus the authentication for this exact url and body
        (signed for `region`: a config target's `aws_region`, else the provider's)."""
        if self._bearer:
            return {**headers, "authorization": f"Bearer {self._bearer}"}
        credentials = self._resolve()
        if credentials is None:
            if client_key:
                return {**headers, "authorization": f"Bearer {client_key}"}
            raise AuthenticationFailed(
                f"provider '{self._provider}' found no AWS credentials (options, profile, "
                f"{BEARER_ENV}, or the AWS credential chain) and the client sent no key")
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        with self._loading():  # no I/O here once prepare() has run
            frozen = credentials.get_frozen_credentials()
        request = AWSRequest(method="POST", url=url, data=body, headers=headers)
        SigV4Auth(frozen, SIGNING_SERVICE, region or self.region).add_auth(request)
        return dict(request.headers.items())

    def needs_io(self) -> bool:
        """Whether signing would first have to look credentials up or renew them: network or
        file I/O (instance metadata, STS, SSO), which `load()` does off the event loop."""
        if self._bearer:
            return False
        credentials = self._credentials
        if credentials is None:
            return not self._recently_empty()
        refresh_needed = getattr(credentials, "refresh_needed", None)  # refreshable ones only
        return refresh_needed is not None and refresh_needed()

    async def load_off_loop(self) -> None:
        """`load()` in a daemon thread, one run at a time. Not `asyncio.to_thread`: a lookup
        that hangs (botocore gives a `credential_process` no timeout, an STS or SSO call its
        own) held up the shutdown, which joins that executor, and each request that gave up
        left a thread of it waiting on the lock, until the executor had none for others."""
        if self._loading_run is None or self._loading_run.done():
            self._loading_run = asyncio.ensure_future(
                in_daemon_thread(self.load, f"aws-credentials-{self._provider}"))
            self._loading_run.add_done_callback(_retrieve)
        # shield: a request that gives up (its deadline, its client) must not end the run.
        try:
            await asyncio.wait_for(asyncio.shield(self._loading_run), LOOKUP_DEADLINE)
        except TimeoutError:
            raise CredentialsUnavailable(
                f"provider '{self._provider}': the AWS credential lookup took more than "
                f"{LOOKUP_DEADLINE:g}s") from None

    def load(self) -> None:
        """Resolve, or renew, the credentials now (blocking; run in a thread)."""
        credentials = self._resolve()
        if credentials is not None:
            with self._loading():
                credentials.get_frozen_credentials()  # renews when inside the expiry window

    def _recently_empty(self) -> bool:
        return (self._looked_at is not None
                and time.monotonic() - self._looked_at < _RETRY_CHAIN_AFTER)

    def _resolve(self) -> Any:
        with self._lock:
            if self._credentials is not None or self._recently_empty():
                return self._credentials
            with self._loading():
                import botocore.session

                session = botocore.session.Session(profile=self._profile)
                if self.egress is not None:  # (the credential providers' client factory)
                    session.create_client = partial(_routed_client, session.create_client,
                                                    self.egress)
                self._credentials = session.get_credentials()
            if self._credentials is None:
                self._looked_at = time.monotonic()
            return self._credentials

    @contextmanager
    def _loading(self) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (BotoCoreError, ClientError) as e:  # e.g. an unknown profile, a failed renewal
            # The gateway's credentials, not the client's key: a 502 as a lookup past its
            # deadline, not a 401 `invalid_api_key`. The type only: botocore's may name ARNs.
            raise CredentialsUnavailable(
                f"provider '{self._provider}': AWS credentials could not be loaded "
                f"({type(e).__name__})") from None


class TargetKey:
    """The auth of a provider serving a target with a key of its own (`with_own_key`): that
    key as a Bedrock API key, whatever credentials the provider holds; nothing looked up."""

    mode = "bearer"
    summary = None
    egress: EgressProxies | None = None  # (unused: no call of its own)

    def __init__(self, provider: str) -> None:
        self._provider = provider

    def needs_io(self) -> bool:
        return False

    async def load_off_loop(self) -> None:
        """Nothing to load (`needs_io`)."""

    def sign(self, url: str, body: bytes, headers: dict[str, str], client_key: str | None,
             region: str | None = None) -> dict[str, str]:
        if not client_key:  # (the gateway gives such a target its key: never empty)
            raise AuthenticationFailed(f"provider '{self._provider}': the target has no key")
        return {**headers, "authorization": f"Bearer {client_key}"}


def _retrieve(run: asyncio.Future[None]) -> None:
    """A failed run's error, read so that one nobody still awaits is not reported as lost
    (the next request runs the lookup again)."""
    if not run.cancelled():
        run.exception()


def _routed_client(create: Callable[..., Any], egress: EgressProxies, service_name: str,
                   *args: Any, config: Any = None, **kwargs: Any) -> Any:
    """A botocore client (STS, SSO: a credential provider's) whose calls take `egress`'s
    route to its endpoint; botocore would follow the environment's proxies. The endpoint is
    known only once a client is made: the first one, which sends nothing, tells it (this runs
    when credentials are fetched or renewed, not per request)."""
    from botocore.config import Config

    endpoint = create(service_name, *args, config=config, **kwargs).meta.endpoint_url
    routed = Config(proxies=egress.requests_proxies(endpoint))
    return create(service_name, *args, config=routed if config is None else config.merge(routed),
                  **kwargs)
