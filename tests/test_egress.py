"""Egress proxies: which upstreams go through one (pure), and both upstream clients through a
real forward proxy on loopback — absolute-form for http upstreams, a CONNECT tunnel with TLS
inside for https ones."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import ssl
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from streamproxy.config import ConfigError
from streamproxy.upstream.client import CLIENT_ENV
from streamproxy.upstream.egress import EgressProxies, egress_from_setting, parse_proxy_url
from tests.helpers import FakeUpstream, collect, fixture_bytes, make_config, sse_chunks

STREAM = fixture_bytes("anthropic/sdk-python_tool_use_response.sse")
HOST = "api.example.test"  # never resolved: only the proxy is connected to
SECRET = "pr0xy-s3cret"


# -- which upstreams go through a proxy (pure) ---------------------------------------------------

def _server(**server: Any) -> Any:
    return make_config({"up": {"type": "anthropic", "base_url": "https://a.example"}}, "up",
                       server=server)


def test_environment_proxies_per_scheme_with_no_proxy() -> None:
    e = EgressProxies.from_environment({
        "HTTPS_PROXY": "http://proxy.corp:3128", "http_proxy": "proxy.corp:8080",
        "NO_PROXY": ".internal.example, 10.0.0.0/8, api.x.com:8443, [fd00::1]"})
    assert e.route("https", "api.openai.com", 443) == parse_proxy_url("http://proxy.corp:3128")
    assert e.route("http", "api.openai.com", 80) == parse_proxy_url("http://proxy.corp:8080")
    assert e.route("https", "internal.example", 443) is None
    assert e.route("https", "a.b.internal.example", 443) is None
    assert e.route("https", "notinternal.example", 443) is not None
    assert e.route("https", "10.200.3.4", 443) is None
    assert e.route("https", "11.0.0.1", 443) is not None
    assert e.route("https", "api.x.com", 8443) is None
    assert e.route("https", "api.x.com", 443) is not None
    assert e.route("https", "fd00::1", 443) is None


def test_lowercase_variable_wins_and_star_bypasses_everything() -> None:
    e = EgressProxies.from_environment({"https_proxy": "http://low:1", "HTTPS_PROXY": "http://up:2"})
    assert e.route("https", "h.example", 443) == parse_proxy_url("http://low:1")
    assert EgressProxies.from_environment({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "*"}).route(
        "https", "h.example", 443) is None
    assert EgressProxies.from_environment({}).route("https", "h.example", 443) is None


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.9.9.9", "::1", "LocalHost"])
def test_loopback_upstreams_never_use_a_proxy(host: str) -> None:
    e = EgressProxies.from_environment({"HTTPS_PROXY": "http://p:1", "HTTP_PROXY": "http://p:1"})
    assert e.route("https", host, 443) is None and e.route("http", host, 80) is None


def test_proxy_credentials_become_a_basic_header_and_are_never_shown() -> None:
    route = parse_proxy_url(f"http://alice:{SECRET.replace('-', '%2D')}@proxy.corp:3128")
    assert route.authorization == "Basic " + base64.b64encode(
        f"alice:{SECRET}".encode()).decode()
    assert route.url == "http://proxy.corp:3128"
    assert SECRET not in repr(route) and "alice" not in repr(route)


@pytest.mark.parametrize("bad", ["https://proxy.corp:3128", "socks5://p:1", "http://p:port",
                                 "http://:3128"])
def test_unsupported_proxy_urls_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_proxy_url(bad)
    with pytest.raises(ConfigError, match="upstream_proxy"):
        _server(upstream_proxy=bad)


# Each a typo that named another proxy: `http:/proxy.corp:3128` (one slash) and
# `http//proxy.corp:3128` were read as bare `host:port`s, a proxy at host `http` port 80; a
# space in the host or port 0 (read as 80) passed too. Every request then failed to connect.
@pytest.mark.parametrize("bad", ["http:/proxy.corp:3128", "http//proxy.corp:3128",
                                 "http://proxy corp:3128", "http://proxy.corp:0",
                                 "http://proxy%2ecorp:3128"])
def test_a_malformed_proxy_url_is_a_config_error_not_another_proxy(bad: str,
                                                                   monkeypatch: Any) -> None:
    from streamproxy.server.app import create_app

    with pytest.raises(ValueError):
        parse_proxy_url(bad)
    with pytest.raises(ConfigError, match=r"upstream_proxy\.url"):
        _server(upstream_proxy=bad)
    monkeypatch.setenv("HTTPS_PROXY", bad)
    with pytest.raises(ConfigError, match=r"HTTP\(S\)_PROXY"):
        create_app(_server())


@pytest.mark.parametrize(("url", "host", "port"), [
    ("proxy.corp:3128/", "proxy.corp", 3128), ("http://proxy.corp:3128/", "proxy.corp", 3128),
    ("http://[fd00::5]:3128", "fd00::5", 3128), ("http://Proxy_1.corp", "proxy_1.corp", 80),
    ("10.1.2.3:8080", "10.1.2.3", 8080)])
def test_well_formed_proxy_urls_are_read(url: str, host: str, port: int) -> None:
    route = parse_proxy_url(url)
    assert (route.host, route.port) == (host, port)


# A password pasted raw, not percent-encoded: urlsplit's ValueError quotes it — the part
# between brackets (read as an IPv6 host), or the whole user:password@host when a character
# normalises to a delimiter — and that text was the config error on stderr and in the log.
@pytest.mark.parametrize("password", [f"Xy[{SECRET}]zz", f"{SECRET}\uff0fzz"],
                         ids=["brackets", "nfkc"])
def test_a_malformed_proxy_url_is_refused_without_quoting_its_password(
        password: str, monkeypatch: Any) -> None:
    from streamproxy.server.app import create_app

    url = f"http://alice:{password}@proxy.corp:3128"
    with pytest.raises(ValueError) as raised:
        parse_proxy_url(url)
    assert SECRET not in str(raised.value)
    with pytest.raises(ConfigError) as config_error:
        _server(upstream_proxy=url)
    assert "upstream_proxy.url" in str(config_error.value)
    assert SECRET not in str(config_error.value)
    monkeypatch.setenv("HTTPS_PROXY", url)
    with pytest.raises(ConfigError) as env_error:
        create_app(_server())
    assert "HTTP(S)_PROXY" in str(env_error.value) and SECRET not in str(env_error.value)


def test_config_setting() -> None:
    cfg = _server(upstream_proxy={"url": "http://p:3128", "no_proxy": ["internal.example"]})
    e = egress_from_setting(cfg.server.upstream_proxy, {"HTTPS_PROXY": "http://ignored:1"})
    assert e.route("https", "api.openai.com", 443) == parse_proxy_url("http://p:3128")
    assert e.route("http", "api.openai.com", 80) == parse_proxy_url("http://p:3128")
    assert e.route("https", "x.internal.example", 443) is None
    none = _server(upstream_proxy="none").server.upstream_proxy
    assert egress_from_setting(none, {"HTTPS_PROXY": "http://p:1"}).route(
        "https", "api.openai.com", 443) is None
    assert _server().server.upstream_proxy == "env"
    with pytest.raises(ConfigError, match="no_proxy"):
        _server(upstream_proxy={"url": "http://p:1", "no_proxy": 3})


@pytest.mark.parametrize(("value", "keyword"), [("None", "none"), ("NONE", "none"),
                                                ("Env", "env"), (" env ", "env")])
def test_the_keywords_in_any_case_are_not_a_proxy_host(value: str, keyword: str) -> None:
    """`upstream_proxy: None` (YAML's null is `null` or `~`: this is the string) was read as a
    bare host: a proxy at `none:80` for every upstream, each request a 502."""
    setting = _server(upstream_proxy=value).server.upstream_proxy
    assert setting == keyword
    environ = {"HTTPS_PROXY": "http://p:1"}
    assert (egress_from_setting(setting, environ).route("https", "api.openai.com", 443)
            == (None if keyword == "none" else parse_proxy_url("http://p:1")))


@pytest.mark.parametrize("url", [3, 12.5, None, True, ["http://p:1"]])
def test_a_proxy_url_that_is_no_string_is_refused(url: object) -> None:
    """Read as its text it passed check-config: `{url: 3}` a proxy at host 3, `{url: null}`
    one at host None, each request's connection then failing."""
    with pytest.raises(ConfigError, match=r"upstream_proxy\.url: must be a string"):
        _server(upstream_proxy={"url": url})


# -- through a real forward proxy ----------------------------------------------------------------

class ForwardProxy:
    """A forward proxy on loopback that sends everything to one `destination`: a CONNECT is
    answered `connect_status` and (on 200) spliced to it; any other request is passed on as
    it came (absolute-form). Every request head it receives is kept."""

    def __init__(self, destination: tuple[str, int], connect_status: int = 200,
                 established: bytes = b"HTTP/1.1 200 Connection established\r\n\r\n") -> None:
        self.destination = destination
        self.connect_status = connect_status
        self.established = established  # the answer to a CONNECT it carries out
        self.heads: list[bytes] = []
        self.port = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.heads.append(head)
            connect = head.startswith(b"CONNECT ")
            if connect and self.connect_status != 200:
                writer.write(b"HTTP/1.1 %d Nope\r\nContent-Length: 0\r\n\r\n"
                             % self.connect_status)
                await writer.drain()
                return
            up_reader, up_writer = await asyncio.open_connection(*self.destination)
            if connect:
                writer.write(self.established)
            else:
                up_writer.write(head)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # (cancelled by stop(): asyncio's server would log a cancelled handler)
        finally:
            writer.close()
            self._tasks.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: Any) -> tuple[Path, Path]:
    """A self-signed certificate for HOST (openssl, as on any Debian machine)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={HOST}",
                    "-addext", f"subjectAltName=DNS:{HOST}"],
                   check=True, capture_output=True)
    return cert, key


@contextlib.asynccontextmanager
async def serve_fake(fake: FakeUpstream, tls: ssl.SSLContext | None = None) -> Any:
    runner = web.AppRunner(fake.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


@pytest.fixture(params=["native", "aiohttp"])
def client_kind(request: Any, monkeypatch: Any) -> str:
    monkeypatch.setenv(CLIENT_ENV, request.param)
    return str(request.param)


def _config(base_url: str, proxy_port: int) -> Any:
    return make_config(
        {"up": {"type": "anthropic", "base_url": base_url, "api_key": "sk-ant-upstream",
                "default_model": "m"}}, default="up",
        server={"upstream_proxy": {"url": f"http://alice:{SECRET}@127.0.0.1:{proxy_port}"}})


async def _stream(client: Any) -> Any:
    resp = await client.post("/v1/chat/completions", json={
        "model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    return resp.status, await resp.read()


def _basic() -> bytes:
    return b"Proxy-Authorization: Basic " + base64.b64encode(f"alice:{SECRET}".encode())


async def test_https_upstream_through_a_connect_tunnel(proxy: Any, client_kind: str,
                                                       certificate: tuple[Path, Path],
                                                       monkeypatch: Any) -> None:
    cert, key = certificate
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the clients trust the test's certificate
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    fake = FakeUpstream()
    fake.body = STREAM
    async with serve_fake(fake, tls) as port:
        forward = ForwardProxy(("127.0.0.1", port))
        await forward.start()
        try:
            client = await proxy(_config(f"https://{HOST}", forward.port))
            for _ in range(2):  # the second request reuses the tunnelled connection
                status, body = await _stream(client)
                assert status == 200
                chunks = collect(sse_chunks(body))
                assert chunks.done and chunks.tool_calls
            await client.close()
        finally:
            await forward.stop()
    assert len(forward.heads) == 1
    head = forward.heads[0]
    assert head.startswith(f"CONNECT {HOST}:443 HTTP/1.1\r\n".encode())
    assert _basic() in head
    assert b"sk-ant-upstream" not in head  # the provider key travels inside the TLS only
    assert [r.headers["Host"] for r in fake.requests] == [HOST, HOST]
    assert all("Proxy-Authorization" not in r.headers for r in fake.requests)
    assert fake.requests[0].headers["x-api-key"] == "sk-ant-upstream"


@pytest.mark.parametrize("established", [
    b"HTTP/1.1 200 Connection established\n\n", b"HTTP/1.0 200 OK\r\nProxy-Agent: p\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 Connection established\r\n\r\n",
    b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
    b"HTTP/1.1 200 OK\r\n\r\n"])
async def test_a_tunnel_answered_in_any_form_http_allows_is_used(
        proxy: Any, client_kind: str, certificate: tuple[Path, Path], monkeypatch: Any,
        established: bytes) -> None:
    """A proxy's CONNECT answer whose lines end with a bare LF: aiohttp's client takes it
    (RFC 9112 2.2), the native one waited for CRLF CRLF until the connect timeout. Interim 1xx
    answers before the 200 (RFC 9110 15.2: a client takes any number of them): the native
    client refused the tunnel ("answered 100"), a 502."""
    cert, key = certificate
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    fake = FakeUpstream()
    fake.body = STREAM
    async with serve_fake(fake, tls) as port:
        forward = ForwardProxy(("127.0.0.1", port), established=established)
        await forward.start()
        try:
            client = await proxy(make_config(
                {"up": {"type": "anthropic", "base_url": f"https://{HOST}", "api_key": "k",
                        "default_model": "m", "timeouts": {"connect": 2}}}, default="up",
                server={"upstream_proxy": {"url": f"http://127.0.0.1:{forward.port}"}}))
            status, body = await _stream(client)
            await client.close()
        finally:
            await forward.stop()
    assert status == 200 and collect(sse_chunks(body)).done


async def test_http_upstream_through_the_proxy_in_absolute_form(proxy: Any, client_kind: str,
                                                                upstream: FakeUpstream) -> None:
    upstream.body = STREAM
    port = int(upstream.url.rsplit(":", 1)[1])
    forward = ForwardProxy(("127.0.0.1", port))
    await forward.start()
    try:
        client = await proxy(_config("http://api.example.test:8080", forward.port))
        status, body = await _stream(client)
        await client.close()
    finally:
        await forward.stop()
    assert status == 200 and collect(sse_chunks(body)).done
    head = forward.heads[0]
    assert head.startswith(b"POST http://api.example.test:8080/v1/messages HTTP/1.1\r\n")
    assert _basic() in head
    assert upstream.requests[0].headers["Host"] == "api.example.test:8080"


async def test_loopback_upstreams_bypass_the_environment_proxy(
        proxy: Any, client_kind: str, upstream: FakeUpstream, monkeypatch: Any) -> None:
    upstream.body = STREAM
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    client = await proxy(make_config({"up": {"type": "anthropic", "base_url": upstream.url,
                                             "api_key": "k", "default_model": "m"}}, "up"))
    status, body = await _stream(client)
    assert status == 200 and collect(sse_chunks(body)).done


def test_a_malformed_environment_proxy_is_a_config_error(monkeypatch: Any) -> None:
    from streamproxy.server.app import create_app

    monkeypatch.setenv("HTTPS_PROXY", "socks5://p:1")
    with pytest.raises(ConfigError, match="only http://"):
        create_app(_server())
    assert os.environ["HTTPS_PROXY"] == "socks5://p:1"


# -- why an upstream could not be reached is logged for the operator ----------------------------

def _unreachable_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "streamproxy.upstream" and r.levelname == "WARNING"]


async def test_an_upstream_certificate_not_trusted_is_logged_with_its_reason(
        proxy: Any, client_kind: str, certificate: tuple[Path, Path],
        caplog: pytest.LogCaptureFixture) -> None:
    # An internal CA not in the trust store: the client's 502 says only "could not reach
    # provider 'up': ConnectFailed" and nothing was logged, so nothing told the operator that
    # the certificate was the cause (and that SSL_CERT_FILE is the remedy).
    cert, key = certificate
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    fake = FakeUpstream()
    async with serve_fake(fake, tls) as port:
        client = await proxy(make_config(
            {"up": {"type": "anthropic", "base_url": f"https://127.0.0.1:{port}",
                    "api_key": "k", "default_model": "m"}}, default="up"))
        for _ in range(2):
            status, body = await _stream(client)
            assert status == 502
            assert orjson.loads(body)["error"]["code"] == "upstream_unreachable"
        await client.close()
    assert not fake.requests
    (warning,) = _unreachable_warnings(caplog)  # once a minute per provider, not per request
    assert "'up'" in warning and "CERTIFICATE_VERIFY_FAILED" in warning
    # ...and the host it was (a target's or client's Azure resource or custom host is not the
    # provider's configured one): the native client's said no host, aiohttp's did.
    assert f"127.0.0.1:{port}" in warning


async def test_a_refused_tunnel_is_a_502_logged_with_the_proxy_and_its_answer_not_its_credentials(
        proxy: Any, client_kind: str, caplog: pytest.LogCaptureFixture) -> None:
    forward = ForwardProxy(("127.0.0.1", 9), connect_status=407)
    await forward.start()
    try:
        client = await proxy(_config(f"https://{HOST}", forward.port))
        status, body = await _stream(client)
        await client.close()
    finally:
        await forward.stop()
    assert status == 502
    assert orjson.loads(body)["error"]["code"] == "upstream_unreachable"
    assert SECRET.encode() not in body and b"alice" not in body
    # The client is told only that the provider was unreachable: no proxy, no credentials.
    message = orjson.loads(body)["error"]["message"]
    assert message.startswith("could not reach provider 'up': ")
    assert SECRET not in message and "alice" not in message and "127.0.0.1" not in message
    (warning,) = _unreachable_warnings(caplog)
    assert "407" in warning and f"127.0.0.1:{forward.port}" in warning
    assert SECRET not in warning and "alice" not in warning
    assert "ConnectFailed" not in warning  # (the native client's cause, not its wrapper)


async def test_a_proxy_refusing_an_http_upstreams_request_is_a_502_not_its_407(
        proxy: Any, client_kind: str, caplog: pytest.LogCaptureFixture) -> None:
    """An http upstream's request goes to the proxy itself, whose 407 was taken for the
    provider's answer: the client got HTTP 407 Proxy Authentication Required — from a
    gateway it reaches directly — and the operator no warning. A refused CONNECT's 502."""
    heads: list[bytes] = []

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                     b"Proxy-Authenticate: Basic realm=corp\r\nContent-Length: 2\r\n\r\nno")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = await proxy(_config("http://api.example.test:8080", port))
        status, body = await _stream(client)
        await client.close()
    finally:
        server.close()
    assert heads and heads[0].startswith(b"POST http://api.example.test:8080/")
    assert status == 502
    error = orjson.loads(body)["error"]
    assert error["code"] == "upstream_unreachable"
    assert error["message"].startswith("could not reach provider 'up': ")
    assert SECRET not in error["message"] and "127.0.0.1" not in error["message"]
    (warning,) = _unreachable_warnings(caplog)
    assert f"the egress proxy 127.0.0.1:{port} answered 407" in warning
    assert SECRET not in warning and "alice" not in warning


async def _native_connect_failure(proxy_port: int) -> BaseException:
    """The native client's ConnectFailed for a request to HOST through the egress proxy on
    `proxy_port` (with credentials: alice and SECRET)."""
    from streamproxy.upstream.http11 import ConnectFailed, HTTP11Client

    client = HTTP11Client(egress=egress_from_setting(
        {"url": f"http://alice:{SECRET}@127.0.0.1:{proxy_port}"}, {}))
    try:
        with pytest.raises(ConnectFailed) as info:
            await client.send("POST", f"https://{HOST}/v1/messages", b"{}", {},
                              connect_timeout=10)
    finally:
        await client.close()
    return info.value


@pytest.mark.parametrize("status", [407, 502])
async def test_a_refused_tunnel_says_its_cause_once(status: int) -> None:
    # The native client's ConnectFailed for the proxy's answer, raised inside the connect,
    # was caught as an OSError and wrapped again: its text read "ConnectFailed: the egress
    # proxy …" (a traceback's line "ConnectFailed: ConnectFailed: …"), and so did the
    # diagnostics log's warning.
    import traceback

    forward = ForwardProxy(("127.0.0.1", 9), connect_status=status)
    await forward.start()
    try:
        failure = await _native_connect_failure(forward.port)
    finally:
        await forward.stop()
    cause = f"the egress proxy 127.0.0.1:{forward.port} answered {status} to CONNECT {HOST}:443"
    assert str(failure) == cause
    shown = "".join(traceback.format_exception(failure))
    assert shown.endswith(f"streamproxy.upstream.http11.ConnectFailed: {cause}\n")
    assert "direct cause" not in shown  # (the same cause, chained to itself)
    assert SECRET not in shown and "alice" not in shown


async def test_bytes_after_a_tunnels_200_are_named_as_the_cause() -> None:
    # Nothing may follow the 200 (the upstream speaks only after our TLS hello): the tunnel
    # is refused, but the operator's log said "answered 200 to CONNECT", a success.
    with socket_listening() as port:
        forward = ForwardProxy(("127.0.0.1", port), established=(
            b"HTTP/1.1 200 Connection established\r\n\r\nhello"))
        await forward.start()
        try:
            failure = await _native_connect_failure(forward.port)
        finally:
            await forward.stop()
    assert str(failure) == (f"the egress proxy 127.0.0.1:{forward.port} sent bytes after its "
                            f"200 answer to CONNECT {HOST}:443")


async def test_a_tunnel_closed_after_its_200_says_so() -> None:
    # A proxy that grants the tunnel and then drops it (its own connection to the upstream
    # failed; a TLS-inspecting proxy's policy on the name in our hello): asyncio's TLS
    # handshake fails with a ConnectionResetError of no text, and the operator's warning
    # ended "… via the egress proxy p:3128: " with no cause.
    async def grant_then_close(reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(grant_then_close, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        failure = await _native_connect_failure(port)
    finally:
        server.close()
    said = str(failure)
    assert said.startswith(f"ConnectionResetError connecting to {HOST}:443 via the egress "
                           f"proxy 127.0.0.1:{port}: ")
    assert said.endswith(": the connection was closed")


@contextlib.contextmanager
def socket_listening() -> Any:
    """A port on loopback that accepts connections (and never answers)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


async def test_a_proxy_that_cannot_be_reached_is_named_with_the_upstream() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        failure = await _native_connect_failure(port)
    said = str(failure)
    assert said.startswith(f"ConnectionRefusedError connecting to {HOST}:443 via the egress "
                           f"proxy 127.0.0.1:{port}: ")
    assert SECRET not in said and "alice" not in said


@pytest.mark.parametrize(("no_proxy", "host"), [
    ("internal.example.", "vllm.internal.example"),  # an entry written as a rooted FQDN
    ("internal.example", "vllm.internal.example."),  # a base_url whose host is one
    (".internal.example.", "internal.example."),
])
def test_no_proxy_ignores_a_trailing_dot_as_curl_does(no_proxy: str, host: str) -> None:
    """`vllm.internal.example.` is the same host as without its dot: a NO_PROXY entry or an
    upstream host written so went through the proxy (which could not reach an internal host)."""
    e = EgressProxies.from_environment({"HTTPS_PROXY": "http://p:1", "NO_PROXY": no_proxy})
    assert e.route("https", host, 443) is None
    assert e.route("https", "other.example.", 443) is not None


@pytest.mark.parametrize("no_proxy", ["a.example b.example", "a.example\tb.example",
                                      " a.example ,  b.example "])
def test_no_proxy_entries_may_be_separated_by_whitespace_as_curl_reads_them(
        no_proxy: str) -> None:
    """`NO_PROXY="a.example b.example"` was one entry, `a.example b.example`, that no host
    matched: both went through the proxy (curl reads whitespace as a separator too)."""
    e = EgressProxies.from_environment({"HTTPS_PROXY": "http://p:1", "NO_PROXY": no_proxy})
    assert e.route("https", "a.example", 443) is None
    assert e.route("https", "api.b.example", 443) is None
    assert e.route("https", "c.example", 443) is not None


@pytest.mark.parametrize("host", ["localhost.", "LOCALHOST.", "::ffff:127.0.0.1",
                                  "::ffff:7f00:2"])
def test_a_rooted_localhost_and_ipv4_mapped_loopback_never_use_a_proxy(host: str) -> None:
    """`localhost.` and `::ffff:127.0.0.1` are loopback as much as `localhost` and
    127.0.0.1: a local vLLM so addressed was sent to the egress proxy, which cannot reach it."""
    e = EgressProxies.from_environment({"HTTPS_PROXY": "http://p:1", "HTTP_PROXY": "http://p:1"})
    assert e.route("https", host, 443) is None and e.route("http", host, 80) is None


def test_an_ipv4_block_covers_the_ipv4_mapped_form_of_its_addresses() -> None:
    e = EgressProxies.from_environment({"HTTPS_PROXY": "http://p:1",
                                        "NO_PROXY": "10.0.0.0/8,192.0.2.7:8443"})
    assert e.route("https", "::ffff:10.1.2.3", 443) is None
    assert e.route("https", "::ffff:192.0.2.7", 8443) is None
    assert e.route("https", "::ffff:192.0.2.7", 443) is not None
    assert e.route("https", "::ffff:11.1.2.3", 443) is not None
    # ...and an entry written in the mapped form covers both forms
    e = EgressProxies.from_environment({"HTTPS_PROXY": "http://p:1",
                                        "NO_PROXY": "::ffff:10.0.0.0/104,[::ffff:192.0.2.9]"})
    assert e.route("https", "10.9.9.9", 443) is None
    assert e.route("https", "::ffff:10.9.9.9", 443) is None
    assert e.route("https", "192.0.2.9", 443) is None
    assert e.route("https", "192.0.2.10", 443) is not None


@pytest.mark.parametrize("entry", ["10.0.0.0/33", "::1/200", "[fd00::1/129]", "10.0.0.0/8x",
                                   "http://internal.example", "vllm.internal:99999",
                                   "vllm.internal:port", "a b/c", "vllm..internal",
                                   ".internal..example", "*.a..b:8000"])
def test_an_invalid_no_proxy_entry_in_the_config_is_a_config_error(entry: str) -> None:
    """Kept as a host name no upstream host can be, it silently covered nothing: the hosts
    the operator meant to reach directly went through the proxy. (`vllm..internal`, a typo's
    empty label, is no host's name either.)"""
    with pytest.raises(ConfigError, match=r"upstream_proxy\.no_proxy: .*not a host"):
        _server(upstream_proxy={"url": "http://p:1", "no_proxy": [entry]})
    with pytest.raises(ConfigError, match=r"upstream_proxy\.no_proxy"):
        _server(upstream_proxy={"url": "http://p:1", "no_proxy": f"a.example,{entry}"})


@pytest.mark.parametrize("entry", ["*", ".internal.example", "*.internal.example",
                                   "internal.example.", "10.0.0.0/8", "[fd00::/8]",
                                   "[fd00::1]:8443", "fd00::1", "vllm.internal:8000",
                                   "192.0.2.1:80", "a.example b.example", "  "])
def test_valid_no_proxy_entries_in_the_config_are_taken(entry: str) -> None:
    _server(upstream_proxy={"url": "http://p:1", "no_proxy": [entry]})


def test_all_proxy_is_used_for_a_scheme_without_its_own_variable_as_curl_and_requests_do() -> None:
    """ALL_PROXY alone (the one variable some hosts set) was not read: every upstream went
    direct, while curl and requests on the same host went through the proxy."""
    e = EgressProxies.from_environment({"ALL_PROXY": "http://all:1", "NO_PROXY": "in.example"})
    assert e.route("https", "h.example", 443) == parse_proxy_url("http://all:1")
    assert e.route("http", "h.example", 80) == parse_proxy_url("http://all:1")
    assert e.route("https", "in.example", 443) is None
    e = EgressProxies.from_environment({"all_proxy": "http://low:1", "ALL_PROXY": "http://up:2",
                                        "HTTPS_PROXY": "http://tls:3"})
    assert e.route("https", "h.example", 443) == parse_proxy_url("http://tls:3")
    assert e.route("http", "h.example", 80) == parse_proxy_url("http://low:1")
    # a scheme's own variable wins: an ALL_PROXY no scheme uses is not read at all
    assert EgressProxies.from_environment({"ALL_PROXY": "socks5://s:1", "HTTP_PROXY": "http://p:1",
                                           "HTTPS_PROXY": "http://p:1"}).https is not None


def test_an_all_proxy_that_is_no_http_proxy_is_a_config_error_naming_it(monkeypatch: Any) -> None:
    from streamproxy.server.app import create_app

    for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ALL_PROXY", "socks5h://s:1080")
    with pytest.raises(ConfigError, match=r"^environment: ALL_PROXY: only http://"):
        create_app(_server())
    create_app(_server(upstream_proxy="none"))  # the way to leave it to other programs
