"""Which upstream requests leave through an egress (forward) proxy, and how to reach it.

`server.upstream_proxy` (config.py): `env` (the default) reads `HTTPS_PROXY` / `HTTP_PROXY`
(`ALL_PROXY` for a scheme without its own) / `NO_PROXY` (either case; the lowercase wins, as
in curl), `none` never uses one, or a mapping `{url, no_proxy}` names one proxy for every
scheme. Like Go's net/http, loopback upstreams
(`localhost`, 127.0.0.0/8, ::1: the embedded mock, a local vLLM or Ollama) never go through a
proxy. Only `http://` proxies: an https upstream is reached through a CONNECT tunnel, an http
one with its absolute URL as the request target.

A proxy URL's user info becomes a `Proxy-Authorization: Basic` header; it is never shown
(`ProxyRoute.__repr__`, error messages name only the proxy's host and port).
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


@dataclass(frozen=True, slots=True)
class ProxyRoute:
    host: str
    port: int
    authorization: str | None = field(default=None, repr=False)  # "Basic …"

    @property
    def url(self) -> str:
        """The proxy's URL without credentials (for aiohttp's `proxy=`)."""
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{shown}:{self.port}"

    def __repr__(self) -> str:
        return f"ProxyRoute({self.host}:{self.port})"

    def url_with_credentials(self) -> str:
        """The proxy's URL with its user info back in it, for a client that takes them only
        so (requests, under google-auth). Never logged."""
        if self.authorization is None:
            return self.url
        pair = base64.b64decode(self.authorization.removeprefix("Basic ")).decode()
        user, _, password = pair.partition(":")
        return self.url.replace("://", f"://{quote(user, safe='')}:{quote(password, safe='')}@",
                                1)


def parse_proxy_url(value: str) -> ProxyRoute:
    """`http://[user:pass@]host[:port]` (a bare `host:port` is read as http://, like curl)."""
    text = value.strip()
    bare = "://" not in text
    if bare:
        text = "http://" + text
    try:
        parts = urlsplit(text)
    except ValueError:  # (not its text: it quotes the user info, a bracketed part or all)
        raise ValueError("the proxy URL is malformed (a password's special characters must "
                         "be percent-encoded)") from None
    if parts.scheme.lower() != "http":
        raise ValueError(f"only http:// egress proxies are supported, not {parts.scheme}://")
    # A bare `host:port` with a path is a mistyped scheme (`http:/p:3128`, `http//p:3128`), not
    # a proxy at host `http`. (Neither message quotes the URL: a raw password may be in it.)
    if bare and parts.path not in ("", "/"):
        raise ValueError("the proxy URL is malformed (expected http://host:port)")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the proxy URL's port is not a number") from None
    if port == 0:
        raise ValueError("the proxy URL's port must be 1-65535")
    if not parts.hostname:
        raise ValueError("the proxy URL has no host")
    if not _is_host(parts.hostname):
        raise ValueError("the proxy URL's host is not a host name or IP address")
    authorization = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    return ProxyRoute(parts.hostname, port or 80, authorization)


def _is_host(host: str) -> bool:
    """A DNS name (letters, digits, `.`, `-`, `_`; an IDN's letters) or an IP address: not one
    with a space or a `%` escape, which no resolver would find."""
    if all(c.isalnum() or c in "._-" for c in host):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class _Bypass:
    """A `NO_PROXY` list: `*`, host names (each also matching its subdomains; a leading dot
    is allowed), IP addresses and CIDR blocks, each optionally with `:port`. A trailing dot
    (a rooted name, `vllm.internal.`) is ignored, in an entry and in the host, as curl does.
    Entries are separated by commas or whitespace (curl's rule: `a.com b.com` is two)."""

    def __init__(self, entries: list[str]) -> None:
        self.everything = False
        self.names: list[tuple[str, int | None]] = []
        self.networks: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int | None]] = []
        for entry in (e.lower() for raw in entries for e in raw.split()):
            if entry == "*":
                self.everything = True
                continue
            entry, port = _split_port(entry)
            try:
                network = ipaddress.ip_network(entry.strip("[]"), strict=False)
            except ValueError:
                self.names.append((entry.lstrip("*").lstrip(".").rstrip("."), port))
                continue
            mapped = network.network_address.ipv4_mapped if network.version == 6 else None
            if mapped is not None and network.prefixlen >= 96:  # (matched as IPv4: _address)
                network = ipaddress.IPv4Network((mapped, network.prefixlen - 96))
            self.networks.append((network, port))

    def covers(self, host: str, port: int) -> bool:
        if self.everything:
            return True
        address = _address(host)
        if address is not None:
            return any(address in net and p in (None, port) for net, p in self.networks)
        host = host.rstrip(".")
        return any((host == name or host.endswith("." + name)) and p in (None, port)
                   for name, p in self.names)


def _split_port(entry: str) -> tuple[str, int | None]:
    """`host:port` / `[v6]:port` → (host, port); a bare IPv6 address or CIDR keeps its colons."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    head, sep, tail = entry.rpartition(":")
    if sep and tail.isdigit() and ":" not in head:
        return head, int(tail)
    return entry, None


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """`host`'s IP address, or None for a name. An IPv4-mapped IPv6 address
    (`::ffff:10.1.2.3`) is its IPv4 one: the same host, which IPv4 entries and 127/8 cover."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def check_no_proxy(entries: list[str]) -> None:
    """Raise ValueError for the first entry `_Bypass` would keep as a host name no host can
    have (`10.0.0.0/33`, `http://h`, `h:99999`, `a..b`): it would silently cover nothing. (The
    environment's are not checked: curl skips such an entry, and so does `_Bypass`.)"""
    for raw in entries:
        for token in raw.split():
            if token == "*":
                continue
            entry, port = _split_port(token)
            try:
                ipaddress.ip_network(entry.strip("[]"), strict=False)
                valid = True
            except ValueError:
                name = entry.lstrip("*").lstrip(".").rstrip(".")
                # (an empty label, `vllm..internal`: no resolvable host has one)
                valid = (bool(name) and ":" not in name and ".." not in name
                         and _is_host(name))
            if not valid or (port is not None and not 0 < port < 65536):
                raise ValueError(f"{token!r} is not a host, domain, IP address or CIDR block "
                                 "(optionally with :port)")


def is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") in _LOOPBACK_NAMES:  # (`localhost.`: the same name, rooted)
        return True
    address = _address(host)
    return address is not None and address.is_loopback


class ProxyVariableError(ValueError):
    """A malformed proxy variable of the environment, and which (for the config error)."""

    def __init__(self, variable: str, reason: str) -> None:
        super().__init__(reason)
        self.variable = variable


class EgressProxies:
    """Per upstream (scheme, host, port): the proxy to go through, or None."""

    def __init__(self, http: ProxyRoute | None = None, https: ProxyRoute | None = None,
                 no_proxy: list[str] | None = None) -> None:
        self.http, self.https = http, https
        self.no_proxy = tuple(e.strip() for e in no_proxy or [] if e.strip())  # (as given)
        self._bypass = _Bypass(no_proxy or [])

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> EgressProxies:
        def read(name: str) -> str:
            return environ.get(name.lower()) or environ.get(name.upper()) or ""

        http, https = read("http_proxy"), read("https_proxy")
        # ALL_PROXY for a scheme without its own, as curl and requests read it (Go's net/http
        # does not); one no scheme falls back to is not read (a socks5 one for other programs).
        everything = read("all_proxy") if not (http and https) else ""
        try:
            fallback = parse_proxy_url(everything) if everything else None
        except ValueError as e:
            raise ProxyVariableError("ALL_PROXY", str(e)) from None
        return cls(parse_proxy_url(http) if http else fallback,
                   parse_proxy_url(https) if https else fallback,
                   read("no_proxy").split(","))

    def requests_proxies(self, url: str) -> dict[str, str | None]:
        """requests' `proxies=` for `url`: its route, and None for every other key, which
        stops requests from adding the environment's proxies (`server.upstream_proxy: none`
        or a `{url}` must hold for it too) while it still reads its CA bundle there."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        route = self.route(scheme, parts.hostname or "",
                           parts.port or (443 if scheme == "https" else 80))
        return {"http": None, "https": None, "all": None,
                scheme: route.url_with_credentials() if route else None}

    def route(self, scheme: str, host: str, port: int) -> ProxyRoute | None:
        proxy = self.https if scheme == "https" else self.http
        if proxy is None or is_loopback(host) or self._bypass.covers(host.lower(), port):
            return None
        return proxy


NO_PROXIES = EgressProxies()


def egress_from_setting(setting: str | dict[str, object],
                        environ: Mapping[str, str]) -> EgressProxies:
    """The proxies `server.upstream_proxy` names (validated by config.py)."""
    if setting == "none":
        return NO_PROXIES
    if setting == "env":
        return EgressProxies.from_environment(environ)
    assert isinstance(setting, dict)
    route = parse_proxy_url(str(setting["url"]))
    no_proxy = setting.get("no_proxy") or []
    assert isinstance(no_proxy, list)
    return EgressProxies(route, route, [str(e) for e in no_proxy])
