"""A provider URL's user info (`https://user:pass@llm.internal/v1`, a self-hosted server behind
HTTP Basic auth): both upstream clients send it as `Authorization: Basic …`, as curl does,
unless the request carries an Authorization of its own (the provider's key, a `headers:`
entry), which wins. The user info is never sent otherwise: not in the Host header, the request
target or a CONNECT; and the upstream's echo of it is masked (`UpstreamRequest.credentials`).
"""

from __future__ import annotations

import base64
from urllib.parse import unquote


def split_userinfo(url: str) -> tuple[str, str | None]:
    """`url` without its user info, and the `Basic …` value it stands for (None: it has none).
    Only the authority counts: an `@` in the path (Vertex's `claude-…@20250514`) is none."""
    start = url.find("://")
    if start < 0:
        return url, None
    start += 3
    end = len(url)
    for stop in "/?#":
        at = url.find(stop, start, end)
        if at >= 0:
            end = at
    at = url.rfind("@", start, end)  # (urlsplit's reading: the host follows the last @)
    if at < 0:
        return url, None
    user, _, password = url[start:at].partition(":")
    # RFC 7617: user-id ":" password, percent-decoded, as UTF-8 (the charset it recommends).
    pair = f"{unquote(user)}:{unquote(password)}".encode()
    return url[:start] + url[at + 1:], "Basic " + base64.b64encode(pair).decode("ascii")


def userinfo_secrets(url: str) -> tuple[str, ...]:
    """What of `url`'s user info an upstream's error could echo: the Basic token and the
    password (percent-decoded); () for a URL without user info."""
    _, basic = split_userinfo(url)
    if basic is None:
        return ()
    token = basic.removeprefix("Basic ")
    password = base64.b64decode(token).decode(errors="replace").partition(":")[2]
    return (token, password) if password else (token,)


def has_authorization(headers: dict[str, str]) -> bool:
    """Whether `headers` hold an Authorization (of any case: SigV4's is capitalized)."""
    return any(name.lower() == "authorization" for name in headers)
