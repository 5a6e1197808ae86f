"""Vertex AI tokens from Google credentials: `credentials_file` or `credentials: adc`.

google-auth does the work rather than code of our own: it reads every kind of credentials
file (a service-account key, gcloud's `authorized_user`, `external_account` for workload
identity federation, an impersonated service account), finds Application Default Credentials
(GOOGLE_APPLICATION_CREDENTIALS, gcloud's own file, the GCE/GKE metadata server), signs the
service account's JWT grant and refreshes. It is imported here only, and this module only by a
provider that uses it, so a proxy without one never pays for it.

Its refresh blocks (`requests`), so `GoogleToken` runs it through `TokenSource`'s worker
thread; the credentials are loaded there too, on first use, since finding ADC or reading an
`external_account` file may go to the network. The config check (`check_file`) reads a file
without any network call, so a missing or broken file is a config error at startup.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import os
import re
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from streamproxy.providers.gemini.auth import Fetched, TokenSource, is_sendable_token
from streamproxy.upstream.egress import NO_PROXIES, EgressProxies

log = logging.getLogger("streamproxy.providers.vertex")

ADC = "adc"  # the `credentials` option's value: Application Default Credentials
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)  # what Vertex AI asks for
ADC_FILE_ENV = "GOOGLE_APPLICATION_CREDENTIALS"
# Seconds google-auth waits for each call to the token endpoint (its own default: 120 s).
CALL_TIMEOUT = 30.0
# Seconds requests wait for one whole fetch: CALL_TIMEOUT bounds each read only, and an answer
# trickling a byte at a time never ends it.
FETCH_DEADLINE = 30.0
# Loading these may call Google (an STS exchange to find the project): left to first use.
_NETWORK_TYPES = ("external_account", "external_account_authorized_user")
_OAUTH_CODE = re.compile(r"[a-z_]{1,40}")  # RFC 6749 §5.2: invalid_grant, invalid_client, …
# What no credentials file's path holds: a control character or a header (a PEM's), or a name
# longer than any file system's (255 bytes).
_NOT_A_PATH = re.compile(r"[\x00-\x1f\x7f]|-----BEGIN|[^/]{256}")


def check_file(path: str, *, expand: bool = True) -> str | None:
    """Why a credentials file cannot be used (None: it can), without any network call.
    Never quotes the file's content: it holds a private key or a refresh token. `expand`:
    whether a `~` in it is the user's home, as GoogleToken reads `credentials_file`."""
    if path.lstrip().startswith("{"):  # the content itself, from a secret store's variable:
        # quoted as a path, it put the private key in the config error
        return ("is JSON (a credentials file's content?), not a file's path: write it to a "
                "file and give that file's path (the value is not shown)")
    if _NOT_A_PATH.search(path) or _is_base64_json(path):  # the content encoded (quoted, it
        # put the private key in "cannot read <it>: File name too long")
        return ("is not a file's path (a credentials file's content, encoded?): write it to a "
                "file and give that file's path (the value is not shown)")
    try:
        with open(os.path.expanduser(path) if expand else path, encoding="utf-8") as f:
            info = json.load(f)
    except OSError as e:
        return f"cannot read {path}: {e.strerror}"
    except ValueError:
        return f"{path} is not a JSON file"
    if not isinstance(info, dict) or not isinstance(info.get("type"), str):
        return (f"{path} is not a Google credentials file (no \"type\"; expected a "
                "service-account key or a file gcloud wrote)")
    if info["type"] in _NETWORK_TYPES:
        return None
    from google.auth import exceptions

    try:
        _quietly(lambda auth: auth.load_credentials_from_dict(info, scopes=SCOPES))
    except (exceptions.GoogleAuthError, ValueError) as e:
        cause = e.__cause__ or e  # google-auth wraps the reason: "Failed to load … from dict"
        if isinstance(cause, exceptions.MalformedError):  # names missing fields, not values
            return f"{path}: {str(cause)[:200]}"
        return f"{path} is not a usable {info['type']} credentials file (its private key " \
               "cannot be read, or a field is malformed)"
    return None


def _is_base64_json(value: str) -> bool:
    """Whether `value` is base64 (or base64url) of a JSON object: how CI and secret stores
    keep a key file in one variable. (A path that happens to be base64 decodes to no JSON.)"""
    text = value.strip()
    try:
        decoded = base64.b64decode(text.translate(_URLSAFE) + "=" * (-len(text) % 4),
                                   validate=True)
        return isinstance(json.loads(decoded), dict)
    except ValueError:  # (binascii.Error, a JSONDecodeError, not UTF-8)
        return False


_URLSAFE = str.maketrans("-_", "+/")


def _quietly(load: Callable[[Any], tuple[Any, str | None]]) -> Any:
    """`load(google.auth)`'s credentials."""
    import google.auth

    # google-auth warns (DeprecationWarning) that its generic loaders must not be given
    # credentials from an untrusted source; ours come from the operator's own config.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        credentials, _project = load(google.auth)
    return credentials


class GoogleToken(TokenSource):
    """A token from a credentials file (`path`), or from ADC when `path` is None. It is
    refreshed before the expiry Google gives it; `refresh` is only for a token without one."""

    def __init__(self, path: str | None, refresh: float, *, provider: str,
                 deadline: float | None = None, **kw: Any) -> None:
        # FETCH_DEADLINE read here, not as a default, so a test can shorten it for a proxy.
        super().__init__(refresh, provider=provider, deadline=deadline or FETCH_DEADLINE, **kw)
        self._path = os.path.expanduser(path) if path else None
        self._credentials: Any = None
        self._request: Any = None
        self.quota_project: str | None = None
        # `server.upstream_proxy`, as the upstream clients follow it (server/app.py sets it).
        self.egress: EgressProxies = NO_PROXIES

    @property
    def headers(self) -> dict[str, str]:
        # The project billed for the call, as google-auth's own `apply()` sends it: gcloud's
        # user credentials name one (`gcloud auth application-default set-quota-project`).
        return {"x-goog-user-project": self.quota_project} if self.quota_project else {}

    def _fetch(self) -> Fetched:
        from google.auth import exceptions

        try:
            credentials = self._credentials or self._load()
            credentials.refresh(self._request)
        except exceptions.RefreshError as e:
            log.warning("provider %r: Google credentials refresh failed: %s", self._provider,
                        _refresh_failure(e))
            raise self._fail(f"Google refused to refresh the credentials{_oauth_error(e)}") \
                from None
        except exceptions.TransportError as e:
            log.warning("provider %r: Google token endpoint unreachable: %s", self._provider,
                        str(e)[:300])
            raise self._fail("could not reach Google's token endpoint") from None
        except exceptions.DefaultCredentialsError as e:  # where it looked
            where = _where_it_looked(e)
            cause = e.__cause__ or (e.args[1] if len(e.args) > 1 else None)
            log.warning("provider %r: Google credentials not loaded: %s%s", self._provider,
                        where, f" ({type(cause).__name__})" if cause is not None else "")
            raise self._fail(where) from None
        except Exception as e:  # a malformed token answer, a broken external_account file
            log.warning("provider %r: Google credentials failed: %r", self._provider, e)
            raise self._fail(f"Google credentials failed ({type(e).__name__})") from None
        token = credentials.token
        if not token:
            raise self._fail("Google's token endpoint answered no access token")
        if not is_sendable_token(token):  # never cached: it would fail every request
            raise self._fail("Google's token endpoint answered a malformed access token")
        expiry = credentials.expiry  # naive UTC, google-auth's convention
        lifetime = None if expiry is None else \
            (expiry - datetime.now(UTC).replace(tzinfo=None)).total_seconds()
        return token, lifetime

    def _load(self) -> Any:
        from google.auth.transport.requests import Request

        self._request = _TimedRequest(Request(), CALL_TIMEOUT, self.egress)
        if self._path is None:
            credentials = _quietly(lambda auth: auth.default(scopes=SCOPES,
                                                             request=self._request))
        else:
            path = self._path
            credentials = _quietly(lambda auth: auth.load_credentials_from_file(
                path, scopes=SCOPES, request=self._request))
        self.quota_project = getattr(credentials, "quota_project_id", None)
        self._credentials = credentials
        return credentials


class _TimedRequest:
    """google-auth's requests transport with a bounded wait (its default is 120 s for each
    call to the token endpoint, and the first requests wait for that call), going through the
    egress proxy the upstream requests take (requests would follow the environment's) — but
    for the metadata server, always asked directly."""

    def __init__(self, request: Any, timeout: float, egress: EgressProxies) -> None:
        self._request = request
        self._timeout = timeout
        self._egress = egress

    def __call__(self, url: str, method: str = "GET", body: Any = None,
                 headers: Any = None, timeout: float | None = None, **kwargs: Any) -> Any:
        egress = NO_PROXIES if _is_metadata_server(url, headers) else self._egress
        kwargs["proxies"] = egress.requests_proxies(url)
        return self._request(url, method, body, headers, timeout or self._timeout, **kwargs)


def _is_metadata_server(url: str, headers: Any) -> bool:
    """Whether a call goes to a metadata server: GCE / GKE / Cloud Run's (google-auth sends
    it `Metadata-Flavor: Google`, whatever its host is named), or AWS's or Azure's at their
    link-local address (an `external_account`'s source). It answers this machine's own
    identity: a proxy either cannot reach it or answers with the proxy's machine's."""
    if headers and any(str(name).lower() == "metadata-flavor" for name in headers):
        return True
    try:
        return ipaddress.ip_address(urlsplit(url).hostname or "").is_link_local
    except ValueError:
        return False


def _where_it_looked(e: Exception) -> str:
    """The first line of google-auth's own message, without the error it wraps: a malformed
    field's value is quoted there (a private_key given as a list: "['-----BEGIN…'] could
    not be converted to bytes")."""
    message = e.args[0] if e.args and isinstance(e.args[0], str) else type(e).__name__
    return message.split("\n")[0][:300]


def _refresh_failure(e: Exception) -> str:
    """For the log, what a refused refresh says: the OAuth error and its description, else
    google-auth's own message. Never the token endpoint's answer, which google-auth attaches
    (args[1]; one it could not use may hold an id_token, or an access token) and, when it has
    no `error`, makes the message of (it may echo the grant's assertion)."""
    details = e.args[1] if len(e.args) > 1 else None
    message = str(e.args[0]) if e.args else ""
    if isinstance(details, dict):
        code, description = details.get("error"), details.get("error_description")
        if isinstance(code, str) and _OAUTH_CODE.fullmatch(code):
            return f"{code}: {description}"[:300] if isinstance(description, str) else code
        if message == json.dumps(details):  # google-auth's fallback for an answer without one
            return "an answer without an OAuth error code"
    return message.split("\n")[0][:300] or type(e).__name__


def _oauth_error(e: Exception) -> str:
    """The OAuth error code of a refused refresh (`invalid_grant`, …), never its description:
    an error description may echo what was sent."""
    details = e.args[1] if len(e.args) > 1 else None
    code = details.get("error") if isinstance(details, dict) else None
    return f" ({code})" if isinstance(code, str) and _OAUTH_CODE.fullmatch(code) else ""
