"""Proxy authentication: optional keys that clients must present, each with a name, the
providers it may use and a request rate (token bucket; shared by the workers, see
server/shared_rate.py).

    auth:
      keys:
        - name: team-a
          key_env: TEAM_A_PROXY_KEY      # or `key: ...` inline
          allowed_providers: [openai]    # optional; absent = every provider
          rate_limit: {requests_per_minute: 600, burst: 50}   # optional

A client presents a key as `x-portkey-api-key: <key>` or `Authorization: Bearer <key>` (an
empty or placeholder `x-portkey-api-key` is no key: see `presented_key`). With the
`x-portkey-api-key` header, `Authorization` stays the client's provider key (Portkey's
convention) unless it holds the same key; when the proxy key came in `Authorization`, that
header is removed from the request before routing, so it is never forwarded to a provider as a
provider key.

Comparison hashes the presented key and compares it with every configured key's hash using
`hmac.compare_digest`, without stopping at a match: the time taken does not depend on which key
matched, how many characters matched, or the key lengths.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web
from multidict import CIMultiDict

from streamproxy.config import Config, ConfigError, required_secret, unknown_key
from streamproxy.errors import AuthenticationFailed, InvalidRequest, PermissionDenied, RateLimited
from streamproxy.routing.target import Target
from streamproxy.server.observing import AUTH_KEY, observe_rejection
from streamproxy.server.shared_rate import SharedBuckets, carried, take_token

if TYPE_CHECKING:
    from streamproxy.server.exchange import Exchange

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]

PROXY_KEY_HEADER = "x-portkey-api-key"
OPEN_PATHS = frozenset({"/healthz"})  # load balancers probe without a key
# Paths whose clients send their key in a header of their own: the AzureOpenAI SDK's `api-key`
# on Azure's `/openai/…` (LiteLLM's proxy reads it there too). Read as a bearer is, so it is
# removed before routing. By prefix, not the chat route alone: the SDK's embeddings call must
# reach its 404 (unread, its key was a "missing key" 401, a key problem to look for).
KEY_HEADERS = {"/openai/": "api-key"}
# What clients send when given no key (lower-cased): the portkey SDK's `Bearer OPENAI_API_KEY`,
# a JS template of an unset key (`Bearer undefined`, `null`), Python's f"Bearer {None}".
# Told as missing, not "invalid": the caller forgot the key, it did not mistype one.
PLACEHOLDER_KEYS = frozenset({"openai_api_key", "undefined", "null", "none"})
_KEY_WAYS = ("`Authorization: Bearer <key>`", "`x-portkey-api-key: <key>`")
_KEY_FIELDS = {"name", "key", "key_env", "allowed_providers", "rate_limit"}


class TokenBucket:
    """`burst` requests at once, refilled at `per_minute` / 60 per second. With workers, its
    state is the generation's shared slot (server/shared_rate.py), not these fields."""

    __slots__ = ("burst", "per_minute", "rate", "shared", "stamp", "tokens")

    def __init__(self, per_minute: float, burst: int) -> None:
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.burst = burst
        self.tokens = float(burst)
        self.stamp: float | None = None
        self.shared: tuple[SharedBuckets, int] | None = None

    def take(self, now: float) -> float | None:
        """Take one token: None when granted, else the seconds until one is available."""
        if self.shared is not None:
            buckets, slot = self.shared
            return buckets.take(slot, self.burst, self.rate, now)
        self.tokens, self.stamp, wait = take_token(self.tokens, self.stamp, self.burst,
                                                   self.rate, now)
        return wait


@dataclass(slots=True, eq=False)
class ProxyKey:
    name: str
    digest: bytes  # sha256 of the key; the key itself is not kept
    allowed_providers: frozenset[str] | None = None  # None = every provider
    bucket: TokenBucket | None = None

    def __repr__(self) -> str:
        return f"ProxyKey(name={self.name!r})"


@dataclass(slots=True)
class Auth:
    keys: tuple[ProxyKey, ...]

    def identify(self, presented: str) -> ProxyKey | None:
        digest = _digest(presented)
        found = None
        for key in self.keys:  # every key, no early exit
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found


def share_buckets(auth: Auth, shared: SharedBuckets | None) -> None:
    """With workers: each rate-limited key takes its tokens from the generation's shared
    buckets, so its rate is the instance's and not each worker's."""
    if shared is None:
        return
    for key in auth.keys:
        slot = shared.slots.get(key.name)
        if key.bucket is not None and slot is not None:
            key.bucket.shared = (shared, slot)


def keep_buckets(auth: Auth, running: Auth | None, now: float | None = None) -> None:
    """A single process reloading in place: a key whose rate_limit the new config keeps takes
    its tokens from the running app's bucket (a reload is no fresh burst, and the old app
    still draining is no second budget); one whose rate_limit it changes starts with the
    tokens left there at `now` (at most its new burst), as a master's new workers do
    (shared_rate.py)."""
    before = {k.name: k.bucket for k in running.keys} if running is not None else {}
    for key in auth.keys:
        old, new = before.get(key.name), key.bucket
        if new is None or old is None:
            continue
        if (old.per_minute, old.burst) == (new.per_minute, new.burst):
            key.bucket = old
        elif old.stamp is not None:  # (never used: the new one starts full)
            new.tokens, new.stamp = carried(old.tokens, old.stamp, (old.per_minute, old.burst),
                                            new.burst, time.monotonic() if now is None else now)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


# -- config ---------------------------------------------------------------------------------

def parse_auth(config: Config) -> Auth | None:
    """The `auth:` section, or None when absent (no proxy authentication)."""
    raw = config.sections.get("auth")
    if raw is None:
        return None
    src = config.source
    if not isinstance(raw, dict) or set(raw) - {"keys"}:
        raise ConfigError(src, "auth", "must be a mapping with one key, `keys`")
    entries = raw.get("keys")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(src, "auth.keys", "must be a non-empty list (remove the auth "
                                            "section to turn proxy authentication off)")
    keys, names, digests = [], set(), set()
    for i, entry in enumerate(entries):
        key = _parse_key(entry, f"auth.keys[{i}]", config)
        if key.name in names:
            raise ConfigError(src, f"auth.keys[{i}].name", f"duplicate name {key.name!r}")
        if key.digest in digests:
            raise ConfigError(src, f"auth.keys[{i}]", "the same key is configured twice")
        names.add(key.name)
        digests.add(key.digest)
        keys.append(key)
    return Auth(tuple(keys))


def _parse_key(entry: Any, where: str, config: Config) -> ProxyKey:
    src = config.source
    if not isinstance(entry, dict):
        raise ConfigError(src, where, "must be a mapping")
    for k in entry:
        if k not in _KEY_FIELDS:
            raise ConfigError(src, f"{where}.{k}", unknown_key(k, _KEY_FIELDS))
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(src, f"{where}.name", "a non-empty string is required")
    secret = required_secret(entry, src, where, "key", "key_env")
    if secret.lower() in PLACEHOLDER_KEYS:  # (`key: None` is YAML's string, not its null;
        # a template's unset variable) what a client given no key sends: it would let it in
        field = "key" if "key" in entry else "key_env"
        raise ConfigError(src, f"{where}.{field}", f"`{secret}` is the placeholder a client "
                          "given no key sends, not a key")
    return ProxyKey(name=name, digest=_digest(secret),
                    allowed_providers=_parse_allowed(entry.get("allowed_providers"),
                                                     f"{where}.allowed_providers", config),
                    bucket=_parse_rate(entry.get("rate_limit"), f"{where}.rate_limit", src))


def _parse_allowed(raw: Any, where: str, config: Config) -> frozenset[str] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw or not all(isinstance(p, str) for p in raw):
        raise ConfigError(config.source, where, "must be a non-empty list of provider names")
    for name in raw:
        if name not in config.providers:
            raise ConfigError(config.source, where,
                              f"{name!r} is not a configured provider "
                              f"(configured: {', '.join(config.providers)})")
    return frozenset(raw)


def _parse_rate(raw: Any, where: str, source: str) -> TokenBucket | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - {"requests_per_minute", "burst"}:
        raise ConfigError(source, where, "must be a mapping of requests_per_minute and burst")
    rpm = raw.get("requests_per_minute")
    # (finite: YAML's .nan would refill a bucket at once, its .inf leave no default burst)
    if isinstance(rpm, bool) or not isinstance(rpm, int | float) or not 0 < rpm < math.inf:
        raise ConfigError(source, f"{where}.requests_per_minute", "must be a positive number")
    burst = raw.get("burst", max(1, math.ceil(rpm)))
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
        raise ConfigError(source, f"{where}.burst", "must be a positive integer")
    return TokenBucket(float(rpm), burst)


# -- the middleware and the provider check --------------------------------------------------

def presented_key(headers: Any) -> tuple[str | None, bool]:
    """(the proxy key the client presented, whether it came in `Authorization`).
    `x-portkey-api-key` first, as Portkey reads it; but an empty or placeholder one (the
    portkey SDK given no api_key sends "", a JS template "undefined") is no key, and a key in
    `Authorization` is the one presented. Both placeholders: the header's, told as missing.
    The same key in both (an SDK given it as api_key too) counts as in `Authorization`, so
    that header is removed rather than forwarded as the provider key."""
    key = (headers.get(PROXY_KEY_HEADER) or "").strip()
    auth = headers.get("authorization", "")
    bearer = auth[7:].strip() if auth[:7].lower() == "bearer " else None
    if key and key.lower() not in PLACEHOLDER_KEYS:
        return key, bearer == key
    if bearer is not None and (bearer or not key):
        return bearer or None, True
    return key or None, False


def _is_open(request: web.Request) -> bool:
    resource = request.match_info.route.resource
    return resource is not None and resource.canonical in OPEN_PATHS


def identify_client(auth: Auth, request: web.Request | Exchange) -> tuple[ProxyKey, bool]:
    """The proxy key the request presents, and whether it came in `Authorization`. A missing
    or unknown key (401) or one over its rate (429) is counted, logged and raised."""
    presented, in_authorization = presented_key(request.headers)
    key = auth.identify(presented) if presented else None
    if key is None:
        err = AuthenticationFailed(_refusal(presented, _key_header(getattr(request, "path", ""))))
        observe_rejection(request, err, "unauthenticated")
        raise err
    if key.bucket is not None:
        wait = key.bucket.take(time.monotonic())
        if wait is not None:
            err = RateLimited(f"Rate limit of {key.bucket.per_minute:g} requests per minute "
                              f"reached for proxy key '{key.name}'.",
                              retry_after=wait)  # (its answer rounds retry-after up)
            observe_rejection(request, err, "rate_limited", key.name)
            raise err
    return key, in_authorization


def _refusal(presented: str | None, key_header: str | None = None) -> str:
    """The 401's message. Only a known placeholder is quoted: a wrong key may be a real one.
    `key_header`: the path's own (`KEY_HEADERS`), named too: an AzureOpenAI client told of the
    other two alone was sent to a header its SDK never sets."""
    if presented and presented.lower() not in PLACEHOLDER_KEYS:
        return "Invalid proxy API key."
    ways = (*_KEY_WAYS, f"`{key_header}: <key>`") if key_header else _KEY_WAYS
    missing = f"Missing proxy API key: send {', '.join(ways[:-1])} or {ways[-1]}"
    if not presented:
        return missing + "."
    return f"{missing} (`{presented}` is a placeholder a client sends when given no key)."


def _key_header(path: str) -> str | None:
    """The header of its own that a client of `path` sends its key in (`KEY_HEADERS`)."""
    return next((h for prefix, h in KEY_HEADERS.items() if path.startswith(prefix)), None)


AUTH = web.AppKey("streamproxy_auth", Auth)  # absent when auth is off


def auth_middleware(auth: Auth) -> Middleware:
    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if _is_open(request):
            return await handler(request)
        seen = _key_header_as_bearer(request)
        key, in_authorization = identify_client(auth, seen)
        request[AUTH_KEY] = key
        if in_authorization:
            clone = _without_authorization(request, seen.headers)
        elif seen is not request:  # (the proxy key in x-portkey-api-key and in api-key)
            clone = _clone(request, seen.headers)
        else:
            return await handler(request)
        try:
            return await handler(clone)
        finally:
            # aiohttp prepares the returned response with the original request: what handlers
            # noted on the clone (e.g. for on_response_prepare signals) must be there too.
            request.update(clone)

    return authenticate


def without_authorization(headers: Mapping[str, str]) -> CIMultiDict[str]:
    """The headers minus the one that carried the proxy key, so that routing never takes it
    for the client's provider key."""
    rest = CIMultiDict(headers)
    del rest["authorization"]
    return rest


def _without_authorization(request: web.Request,
                           headers: Mapping[str, str] | None = None) -> web.Request:
    """`request` with `headers` (its own by default) minus the one that carried the key."""
    return _clone(request, without_authorization(headers or request.headers))


def _clone(request: web.Request, headers: Mapping[str, str]) -> web.Request:
    try:
        return request.clone(headers=headers)  # type: ignore[return-value]
    except UnicodeEncodeError:  # aiohttp re-encodes headers as UTF-8 when cloning
        raise InvalidRequest("Request headers must be valid UTF-8.",
                             code="invalid_header") from None


def _key_header_as_bearer(request: web.Request) -> web.Request:
    """On a path whose clients send their key in a header of their own (`KEY_HEADERS`), a
    request presenting none the usual way, with its key moved to `Authorization: Bearer`; else
    `request`. (Unread, the AzureOpenAI SDK's `api-key` was a 401 for every request.) Holding
    the key presented the usual way, it is removed too: left, it was the client's provider
    key, and the proxy key went to the provider."""
    name = _key_header(request.path)
    key = request.headers.get(name, "").strip() if name else ""
    presented = presented_key(request.headers)[0] if key else None
    if not key or (presented and presented != key):
        return request
    headers = CIMultiDict(request.headers)
    del headers[name]  # type: ignore[arg-type]
    if not presented:
        headers["authorization"] = f"Bearer {key}"
    return _clone(request, headers)


def allowed_targets(request: web.Request | Exchange, targets: list[Target]) -> list[Target]:
    """The planned targets this request's proxy key may use (`targets` itself without auth or
    without `allowed_providers`); 403 when none is left."""
    key: ProxyKey | None = request.get(AUTH_KEY)
    if key is None or key.allowed_providers is None:
        return targets
    allowed = [t for t in targets if t.provider.name in key.allowed_providers]
    if not allowed:
        # Every planned target's provider (all refused here): naming the first alone left the
        # operator to find a fallback's others by one 403 each.
        denied = sorted({t.provider.name for t in targets}) or ["?"]
        named = ", ".join(f"'{name}'" for name in denied)
        raise PermissionDenied(f"The proxy key '{key.name}' may not use "
                               f"provider{'s' if len(denied) > 1 else ''} {named}.",
                               code="provider_not_allowed")
    return allowed


def describe(auth: Auth | None) -> str:
    """One line for check-config: key names and limits, never the keys."""
    if auth is None:
        return "auth: off (no proxy keys: any client may use the proxy)"
    parts = []
    for key in auth.keys:
        extra = []
        if key.allowed_providers is not None:
            extra.append("providers=" + ",".join(sorted(key.allowed_providers)))
        if key.bucket is not None:
            extra.append(f"rate={key.bucket.per_minute:g}/min burst={key.bucket.burst}")
        parts.append(key.name + (f" ({' '.join(extra)})" if extra else ""))
    return f"auth: on, {len(auth.keys)} key(s): " + "; ".join(parts)
