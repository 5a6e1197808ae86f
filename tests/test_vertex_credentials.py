"""Vertex AI tokens from Google credentials (`credentials_file`, `credentials: adc`): a real
service-account key (an RSA key made here) whose `token_uri` is a fake token endpoint on
loopback, so google-auth signs and posts a real JWT grant; the token must reach a fake Vertex
upstream, be refreshed before it expires (never on a request's path but the first), once for
many requests, and a refused refresh must be a clear error that quotes no secret."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import orjson
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from streamproxy.cli import main
from streamproxy.config import ConfigError
from streamproxy.providers.gemini.auth import FAILURE_BACKOFF, TokenUnavailable
from streamproxy.providers.gemini.credentials import GoogleToken
from tests.helpers import Clock, collect, make_config, sse_chunks
from tests.test_egress import ForwardProxy

USER = [{"role": "user", "content": "hi"}]
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"  # the JWT's audience, wherever sent
EMAIL = "proxy@my-proj.iam.gserviceaccount.com"
ANSWER = (b'data: {"candidates": [{"content": {"role": "model", "parts": [{"text": "ok"}]}, '
          b'"finishReason": "STOP"}]}\r\n\r\n')


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def write_key_file(path: Path, key: rsa.RSAPrivateKey, token_uri: str, **changes: Any) -> str:
    info = {"type": "service_account", "project_id": "my-proj", "private_key_id": "kid-1",
            "private_key": pem(key), "client_email": EMAIL, "client_id": "1234",
            "token_uri": token_uri, **changes}
    path.write_text(json.dumps({k: v for k, v in info.items() if v is not None}))
    return str(path)


class TokenEndpoint:
    """A scripted OAuth2 token endpoint: hands out `ya29.token-<n>` for `expires_in` s."""

    def __init__(self) -> None:
        self.grants: list[dict[str, str]] = []
        self.status = 200
        self.answer: dict[str, Any] | None = None  # None: a fresh token
        self.expires_in = 3600
        self.delay = 0.0
        self.held: asyncio.Event | None = None  # set: the answer trickles until it is set
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/token", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        form = parse_qs((await request.read()).decode())
        self.grants.append({k: v[0] for k, v in form.items()})
        await asyncio.sleep(self.delay)
        answer = self.answer or {"access_token": f"ya29.token-{len(self.grants)}",
                                 "expires_in": self.expires_in, "token_type": "Bearer"}
        if self.held is None:
            return web.json_response(answer, status=self.status)
        return await self.trickle(request, orjson.dumps(answer), self.held)

    async def trickle(self, request: web.Request, answer: bytes,
                      held: asyncio.Event) -> web.StreamResponse:
        """A space every 50 ms (at most 5 s) until `held` is set, then the answer: each read
        is quick, so a bound on each read never ends the fetch."""
        resp = web.StreamResponse(status=self.status,
                                  headers={"content-type": "application/json"})
        await resp.prepare(request)
        for _ in range(100):
            if held.is_set():
                break
            await resp.write(b" ")
            await asyncio.sleep(0.05)
        await resp.write(answer)
        await resp.write_eof()
        return resp


@pytest.fixture
async def token_endpoint(aiohttp_server: Any) -> TokenEndpoint:
    endpoint = TokenEndpoint()
    server = await aiohttp_server(endpoint.app())
    endpoint.url = str(server.make_url("/token"))
    return endpoint


@pytest.fixture
def key_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey, token_endpoint: TokenEndpoint) -> str:
    return write_key_file(tmp_path / "sa.json", rsa_key, token_endpoint.url)


def vertex(url: str, **auth: Any) -> Any:
    return make_config({"v": {"type": "vertex", "base_url": url, "project": "my-proj",
                              "location": "us-central1", "default_model": "gemini-2.5-flash",
                              **auth}}, default="v")


async def ask(client: Any, stream: bool = True) -> Any:
    return await client.post("/v1/chat/completions", json={"stream": stream,
                                                           "messages": USER})


def bearer(received: Any) -> str:
    return {k.lower(): v for k, v in received.headers.items()}["authorization"]


def b64url(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def check_jwt_grant(grant: dict[str, str], key: rsa.RSAPrivateKey) -> None:
    """RFC 7523: a JWT signed RS256 by the service account's key, for Google's token
    endpoint (google-auth's audience, whatever `token_uri` says)."""
    assert grant["grant_type"] == JWT_GRANT
    header, claims, signature = grant["assertion"].split(".")
    key.public_key().verify(b64url(signature), f"{header}.{claims}".encode(),
                            padding.PKCS1v15(), hashes.SHA256())  # raises if not ours
    assert json.loads(b64url(header)) == {"alg": "RS256", "typ": "JWT", "kid": "kid-1"}
    payload = json.loads(b64url(claims))
    assert payload["iss"] == EMAIL and payload["aud"] == GOOGLE_TOKEN_URI
    assert payload["scope"] == CLOUD_PLATFORM
    assert payload["exp"] - payload["iat"] == 3600


async def test_a_service_account_key_signs_a_grant_and_its_token_reaches_vertex(
        proxy: Any, upstream: Any, token_endpoint: TokenEndpoint, key_file: str,
        rsa_key: rsa.RSAPrivateKey) -> None:
    upstream.body = ANSWER
    client = await proxy(vertex(upstream.url, credentials_file=key_file))
    for stream in (True, False, True):
        if not stream:
            upstream.content_type = "application/json"
            upstream.body = ANSWER[len(b"data: "):-4]
        resp = await ask(client, stream)
        assert resp.status == 200, await resp.text()
        if stream:
            assert collect(sse_chunks(await resp.read())).content == "ok"
        upstream.content_type, upstream.body = "text/event-stream", ANSWER
    [grant] = token_endpoint.grants  # one token for all three requests
    check_jwt_grant(grant, rsa_key)
    assert [bearer(r) for r in upstream.requests] == ["Bearer ya29.token-1"] * 3
    assert upstream.requests[0].path.startswith("/v1/projects/my-proj/locations/us-central1/")


async def test_concurrent_first_requests_wait_for_one_grant(
        proxy: Any, upstream: Any, token_endpoint: TokenEndpoint, key_file: str) -> None:
    upstream.body = ANSWER
    token_endpoint.delay = 0.2  # all of them arrive while the grant is in flight
    client = await proxy(vertex(upstream.url, credentials_file=key_file))
    answers = await asyncio.gather(*(ask(client) for _ in range(6)))
    assert [a.status for a in answers] == [200] * 6
    assert len(token_endpoint.grants) == 1
    assert {bearer(r) for r in upstream.requests} == {"Bearer ya29.token-1"}


async def test_refreshed_in_the_background_before_it_expires(
        token_endpoint: TokenEndpoint, key_file: str) -> None:
    clock = Clock(1000.0)
    source = GoogleToken(key_file, 300, provider="v", clock=clock)
    assert await source.get() == "ya29.token-1"
    clock.now += 3600 - 300 - 1  # still more than EXPIRY_MARGIN before the expiry
    assert await source.get() == "ya29.token-1" and len(token_endpoint.grants) == 1
    clock.now += 2  # inside the margin: the old token, and one refresh behind it
    token_endpoint.delay = 0.1
    tokens = await asyncio.gather(*(source.get() for _ in range(5)))
    assert tokens == ["ya29.token-1"] * 5  # nobody waited
    running = source._running
    assert running is not None and await running == "ya29.token-2"
    assert len(token_endpoint.grants) == 2
    assert await source.get() == "ya29.token-2"


async def test_the_tokens_own_lifetime_sets_the_refresh_not_token_refresh(
        token_endpoint: TokenEndpoint, key_file: str) -> None:
    clock = Clock()
    token_endpoint.expires_in = 120  # short-lived: refreshed halfway, however long refresh is
    source = GoogleToken(key_file, 3600, provider="v", clock=clock)
    await source.get()
    clock.now += 59
    await source.get()
    assert source._running is None
    clock.now += 2
    await source.get()
    assert source._running is not None and await source._running == "ya29.token-2"


async def test_a_token_past_its_expiry_is_never_served(token_endpoint: TokenEndpoint,
                                                       key_file: str) -> None:
    clock = Clock()
    source = GoogleToken(key_file, 300, provider="v", clock=clock)
    await source.get()
    token_endpoint.status, token_endpoint.answer = 400, {"error": "invalid_grant"}
    clock.now = 3400  # stale: served while the refresh fails in the background
    assert await source.get() == "ya29.token-1"
    assert source._running is not None
    with pytest.raises(TokenUnavailable):
        await source._running
    clock.now = 3601  # expired: the request waits for a fetch, which fails
    with pytest.raises(TokenUnavailable, match="invalid_grant"):
        await source.get()


async def test_a_trickling_token_endpoint_is_cut_at_the_deadline_by_one_fetch_only(
        token_endpoint: TokenEndpoint, key_file: str) -> None:
    """Each read of the answer is quick, so only a deadline on the whole fetch ends the wait;
    its thread cannot be stopped, so later requests wait for that same fetch (never a thread
    more per timeout), and the token it brings in the end is kept."""
    clock = Clock()
    token_endpoint.held = asyncio.Event()
    source = GoogleToken(key_file, 300, provider="v", clock=clock, deadline=0.3)
    try:
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(TokenUnavailable, match=r"took more than 0\.3s"):
                await source.get()
            assert time.monotonic() - started < 2
            clock.now += FAILURE_BACKOFF  # the next request tries again
        assert len(token_endpoint.grants) == 1 and source.runs == 1
    finally:
        token_endpoint.held.set()
    worker = source._worker
    assert worker is not None and await worker == "ya29.token-1"
    assert await source.get() == "ya29.token-1" and source.runs == 1


async def test_a_trickling_token_endpoint_is_a_502_not_a_wait_for_the_first_token(
        proxy: Any, upstream: Any, token_endpoint: TokenEndpoint, key_file: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("streamproxy.providers.gemini.credentials.FETCH_DEADLINE", 0.3)
    token_endpoint.held = asyncio.Event()
    upstream.body = ANSWER
    client = await proxy(vertex(upstream.url, credentials_file=key_file))
    try:
        resp = await asyncio.wait_for(ask(client), 3)
    finally:
        token_endpoint.held.set()
    assert resp.status == 502
    err = (await resp.json())["error"]
    assert err["code"] == "upstream_credentials_unavailable"
    assert err["message"] == "provider 'v': the token fetch took more than 0.3s"
    assert not upstream.requests
    for _ in range(40):  # the late token, once it lands, serves the next requests
        resp = await ask(client)
        await resp.read()
        if resp.status == 200:
            break
        await asyncio.sleep(0.05)
    assert [bearer(r) for r in upstream.requests] == ["Bearer ya29.token-1"]
    assert len(token_endpoint.grants) == 1


@pytest.mark.parametrize("token", ["ya29.a\r\nx-injected: 1", "ya29.a b", "ya29.\x00",
                                   "ya29.é", ["ya29.a"], 42])
async def test_an_access_token_that_cannot_be_sent_is_a_502_and_not_kept(
        proxy: Any, upstream: Any, token_endpoint: TokenEndpoint, key_file: str,
        token: Any) -> None:
    token_endpoint.answer = {"access_token": token, "expires_in": 3600}
    client = await proxy(vertex(upstream.url, credentials_file=key_file))
    resp = await ask(client, stream=False)
    assert resp.status == 502
    err = (await resp.json())["error"]
    assert err == {**err, "code": "upstream_credentials_unavailable",
                   "message": "provider 'v': Google's token endpoint answered a malformed "
                              "access token"}
    assert not upstream.requests


async def test_a_malformed_access_token_is_not_cached(token_endpoint: TokenEndpoint,
                                                      key_file: str) -> None:
    clock = Clock()
    token_endpoint.answer = {"access_token": "ya29.a\r\nb", "expires_in": 3600}
    source = GoogleToken(key_file, 300, provider="v", clock=clock)
    with pytest.raises(TokenUnavailable, match="malformed"):
        await source.get()
    assert source.cached is None
    token_endpoint.answer = None
    clock.now += FAILURE_BACKOFF
    assert await source.get() == "ya29.token-2"


async def test_no_application_default_credentials_is_a_clear_error(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))  # no gcloud file
    for name in ("GCE_METADATA_HOST", "GCE_METADATA_IP"):  # no metadata server either
        monkeypatch.setenv(name, "127.0.0.1:9")
    with pytest.raises(TokenUnavailable, match="default credentials were not found"):
        await GoogleToken(None, 300, provider="v").get()


async def test_a_broken_adc_file_found_at_first_use_is_a_502_that_quotes_no_secret(
        proxy: Any, upstream: Any, tmp_path: Path, rsa_key: rsa.RSAPrivateKey,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """gcloud's ADC file is not checked at startup: google-auth's error about it wraps one
    that quotes the malformed field (here the private key, given as a list of its lines)."""
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))
    write_key_file(tmp_path / "application_default_credentials.json", rsa_key,
                   GOOGLE_TOKEN_URI, private_key=pem(rsa_key).splitlines())
    client = await proxy(vertex(upstream.url, credentials="adc"))
    resp = await ask(client, stream=False)
    assert resp.status == 502
    text = await resp.text()
    err = json.loads(text)["error"]
    assert err["code"] == "upstream_credentials_unavailable"
    assert err["message"].startswith("provider 'v': Failed to load service account "
                                     "credentials from ")
    assert pem(rsa_key).splitlines()[1] not in text
    assert "application_default_credentials.json" in caplog.text  # which file, for the log
    assert "PRIVATE KEY" not in caplog.text and "PRIVATE KEY" not in text
    assert not upstream.requests


async def test_a_refused_refresh_is_a_502_that_quotes_no_secret(
        proxy: Any, upstream: Any, token_endpoint: TokenEndpoint, key_file: str,
        rsa_key: rsa.RSAPrivateKey, caplog: pytest.LogCaptureFixture) -> None:
    token_endpoint.status = 400
    token_endpoint.answer = {"error": "invalid_grant",
                             "error_description": "Invalid JWT Signature. SECRET-ECHO"}
    client = await proxy(vertex(upstream.url, credentials_file=key_file))
    resp = await ask(client, stream=False)
    assert resp.status == 502
    text = await resp.text()
    err = json.loads(text)["error"]
    assert err["code"] == "upstream_credentials_unavailable"
    assert err["message"] == "provider 'v': Google refused to refresh the credentials " \
                             "(invalid_grant)"
    assert "SECRET" not in text and token_endpoint.grants[0]["assertion"] not in text
    assert pem(rsa_key).splitlines()[1] not in text
    assert "Invalid JWT Signature" in caplog.text  # the operator's log has the description
    assert not upstream.requests


@pytest.mark.parametrize(("status", "answer", "logged"), [
    # A 200 google-auth cannot use (no access token): it attaches the whole answer.
    (200, {"id_token": "eyJ.ID-TOKEN-SECRET", "token_type": "Bearer"},
     "No access token in response."),
    # A refusal without an OAuth `error`: the whole answer becomes google-auth's message.
    (400, {"message": "bad grant", "assertion": "eyJ.ASSERTION-SECRET"},
     "an answer without an OAuth error code"),
])
async def test_a_failed_refresh_logs_no_part_of_the_token_endpoints_answer(
        token_endpoint: TokenEndpoint, key_file: str, caplog: pytest.LogCaptureFixture,
        status: int, answer: dict[str, Any], logged: str) -> None:
    token_endpoint.status, token_endpoint.answer = status, answer
    with pytest.raises(TokenUnavailable, match=r"Google refused to refresh the credentials$"):
        await GoogleToken(key_file, 300, provider="v").get()
    assert logged in caplog.text
    assert "SECRET" not in caplog.text


async def test_an_impersonation_answer_google_auth_cannot_read_is_not_logged(
        aiohttp_server: Any, token_endpoint: TokenEndpoint, key_file: str, tmp_path: Path,
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """IAM's token for the impersonated account, with an expiry google-auth does not parse
    (fractional seconds): google-auth attaches the raw answer, access token and all."""
    async def generate(request: web.Request) -> web.Response:
        return web.json_response({"accessToken": "ya29.IMPERSONATED-SECRET",
                                  "expireTime": "2099-01-01T00:00:00.5Z"})

    iam = web.Application()
    iam.router.add_post("/{name}", generate)
    server = await aiohttp_server(iam)
    monkeypatch.setattr("google.auth.iam._IAM_ENDPOINT", f"{server.make_url('/')}{{}}")
    path = tmp_path / "impersonated.json"
    source = json.loads(Path(key_file).read_text())
    path.write_text(json.dumps({
        "type": "impersonated_service_account", "source_credentials": source,
        "service_account_impersonation_url": "https://iamcredentials.googleapis.com/v1/"
        "projects/-/serviceAccounts/target@my-proj.iam.gserviceaccount.com:generateAccessToken"}))
    with pytest.raises(TokenUnavailable, match="Google refused to refresh"):
        await GoogleToken(str(path), 300, provider="v").get()
    assert "Unable to acquire impersonated credentials" in caplog.text
    assert "SECRET" not in caplog.text


async def test_an_unreachable_token_endpoint_is_a_502(proxy: Any, upstream: Any,
                                                      tmp_path: Path,
                                                      rsa_key: rsa.RSAPrivateKey) -> None:
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{closed.getsockname()[1]}/token"
        path = write_key_file(tmp_path / "sa.json", rsa_key, uri)
        client = await proxy(vertex(upstream.url, credentials_file=path))
        resp = await ask(client)
    assert resp.status == 502
    err = (await resp.json())["error"]
    assert err["message"] == "provider 'v': could not reach Google's token endpoint"
    assert not upstream.requests


@pytest.mark.parametrize("credentials", ["", "alice:p%40ss@"])
async def test_the_token_endpoint_is_reached_through_the_upstream_proxy(
        proxy: Any, upstream: Any, token_endpoint: TokenEndpoint, tmp_path: Path,
        rsa_key: rsa.RSAPrivateKey, credentials: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """google-auth's calls leave as the upstream requests do (`server.upstream_proxy`), not as
    requests would on its own (the environment's proxy, here a dead one): a host that can only
    reach Google through its egress proxy got a 502 "could not reach Google's token endpoint"."""
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    port = int(token_endpoint.url.rsplit(":", 1)[1].split("/")[0])
    forward = ForwardProxy(("127.0.0.1", port))
    await forward.start()
    key = write_key_file(tmp_path / "sa.json", rsa_key, "http://oauth.example.test/token")
    upstream.body = ANSWER
    config = make_config(
        {"v": {"type": "vertex", "base_url": upstream.url, "project": "my-proj",
               "location": "us-central1", "default_model": "gemini-2.5-flash",
               "credentials_file": key}}, default="v",
        server={"upstream_proxy": {"url": f"http://{credentials}127.0.0.1:{forward.port}"}})
    try:
        client = await proxy(config)
        resp = await ask(client)
        assert resp.status == 200, await resp.text()
    finally:
        await forward.stop()
    [head] = forward.heads
    assert head.startswith(b"POST http://oauth.example.test/token HTTP/1.1\r\n")
    if credentials:
        assert b"Proxy-Authorization: Basic " + base64.b64encode(b"alice:p@ss") in head
    assert bearer(upstream.requests[0]) == "Bearer ya29.token-1"


async def test_a_401_drops_the_token_and_the_next_request_gets_a_new_one(
        proxy: Any, upstream: Any, token_endpoint: TokenEndpoint, key_file: str) -> None:
    client = await proxy(vertex(upstream.url, credentials_file=key_file))
    upstream.status, upstream.content_type = 401, "application/json"
    upstream.body = orjson.dumps({"error": {"code": 401, "message": "Request had invalid "
                                            "authentication credentials.",
                                            "status": "UNAUTHENTICATED"}})
    resp = await ask(client)
    assert resp.status == 401
    upstream.status, upstream.content_type, upstream.body = 200, "text/event-stream", ANSWER
    resp = await ask(client)
    assert resp.status == 200
    await resp.read()
    assert [bearer(r) for r in upstream.requests] == ["Bearer ya29.token-1",
                                                      "Bearer ya29.token-2"]


async def test_adc_from_google_application_credentials(
        proxy: Any, upstream: Any, token_endpoint: TokenEndpoint, key_file: str,
        monkeypatch: pytest.MonkeyPatch, rsa_key: rsa.RSAPrivateKey) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", key_file)
    upstream.body = ANSWER
    client = await proxy(vertex(upstream.url, credentials="adc"))
    resp = await ask(client)
    assert resp.status == 200
    await resp.read()
    check_jwt_grant(token_endpoint.grants[0], rsa_key)
    assert bearer(upstream.requests[0]) == "Bearer ya29.token-1"


async def test_gcloud_user_credentials_and_their_quota_project(
        proxy: Any, upstream: Any, token_endpoint: TokenEndpoint, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """gcloud's `application_default_credentials.json`: a refresh-token grant, and the quota
    project it names goes along as google-auth's own clients send it."""
    # google-auth sends user credentials to Google's endpoint whatever the file says.
    monkeypatch.setattr("google.oauth2.credentials._GOOGLE_OAUTH2_TOKEN_ENDPOINT",
                        token_endpoint.url)
    path = tmp_path / "adc.json"
    path.write_text(json.dumps({"type": "authorized_user", "client_id": "cid.apps",
                                "client_secret": "d-SECRET", "refresh_token": "1//r-SECRET",
                                "quota_project_id": "billing-proj",
                                "token_uri": token_endpoint.url}))
    upstream.body = ANSWER
    client = await proxy(vertex(upstream.url, credentials_file=str(path)))
    resp = await ask(client)
    assert resp.status == 200
    await resp.read()
    [grant] = token_endpoint.grants
    assert grant["grant_type"] == "refresh_token" and grant["refresh_token"] == "1//r-SECRET"
    sent = {k.lower(): v for k, v in upstream.requests[0].headers.items()}
    assert sent["authorization"] == "Bearer ya29.token-1"
    assert sent["x-goog-user-project"] == "billing-proj"


# -- configuration --------------------------------------------------------------------------

@pytest.mark.parametrize(("auth", "key"), [
    ({"credentials": "yes"}, "credentials"),
    ({"credentials_file": ""}, "credentials_file"),
    ({"credentials_file": 3}, "credentials_file"),
    ({"token_command": "gcloud", "credentials": "adc"}, "credentials"),
    ({"token_env": "T", "credentials_file": "/x.json"}, "credentials_file"),
])
def test_config_errors(auth: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        vertex("http://127.0.0.1:1", **auth)
    assert info.value.key == f"providers.v.{key}"


def broken_files(key: rsa.RSAPrivateKey) -> Iterator[tuple[str, str | None, str]]:
    """(name, content or None for a missing file, what the error says)."""
    yield "missing.json", None, "cannot read FILE: No such file or directory"
    yield "notes.txt", "SECRET not json", "FILE is not a JSON file"
    yield "other.json", '{"private_key": "SECRET"}', "FILE is not a Google credentials file"
    good = json.loads(json.dumps({"type": "service_account", "private_key": pem(key),
                                  "private_key_id": "k", "token_uri": "http://x/token"}))
    yield "no-email.json", json.dumps(good), "missing fields client_email"
    good["client_email"] = EMAIL
    good["private_key"] = "-----BEGIN PRIVATE KEY-----\nSECRET\n-----END PRIVATE KEY-----\n"
    yield "bad-key.json", json.dumps(good), "its private key cannot be read"


def test_check_config_names_a_missing_or_broken_credentials_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], rsa_key: rsa.RSAPrivateKey) -> None:
    for name, content, reason in broken_files(rsa_key):
        path = tmp_path / name
        if content is not None:
            path.write_text(content)
        config = tmp_path / "proxy.yaml"
        config.write_text(f"providers:\n  v: {{type: vertex, project: p, location: global, "
                          f"credentials_file: {path}}}\n")
        with pytest.raises(SystemExit) as exit_:
            main(["check-config", str(config)])
        err = capsys.readouterr().err
        assert exit_.value.code == 2
        err = err.replace(str(path), "FILE")
        assert err.startswith(f"{config}: providers.v.credentials_file: "), err
        assert reason in err
        assert "SECRET" not in err and "MII" not in err


def test_check_config_reports_the_token_source(tmp_path: Path, rsa_key: rsa.RSAPrivateKey,
                                               capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_key_file(tmp_path / "sa.json", rsa_key, "http://127.0.0.1:1/token")
    config = tmp_path / "proxy.yaml"
    config.write_text(f"providers:\n"
                      f"  sa: {{type: vertex, project: p, location: global, "
                      f"credentials_file: {path}}}\n"
                      f"  adc: {{type: vertex, project: p, location: global, credentials: adc}}\n"
                      f"  cmd: {{type: vertex, project: p, location: global, "
                      f"token_command: [gcloud, auth, print-access-token]}}\n")
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    main(["check-config", str(config)])
    out = capsys.readouterr().out
    assert f"auth=credentials_file={path} " in out
    assert "auth=credentials=adc " in out and "auth=token_command=gcloud " in out
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "gone.json"))
    with pytest.raises(SystemExit):
        main(["check-config", str(config)])
    err = capsys.readouterr().err
    assert "providers.adc.credentials: GOOGLE_APPLICATION_CREDENTIALS: cannot read" in err


def test_google_auth_is_imported_only_by_a_provider_that_uses_it(tmp_path: Path,
                                                                 rsa_key: Any) -> None:
    path = write_key_file(tmp_path / "sa.json", rsa_key, "http://127.0.0.1:1/token")
    script = f"""
import sys
from streamproxy.config import parse_config
from streamproxy.server.app import create_app

def config(auth):
    return parse_config({{"providers": {{
        "v": {{"type": "vertex", "project": "p", "location": "global", **auth}}}}}}, "<t>")

create_app(config({{"token_env": "VERTEX_TOKEN"}}))
create_app(config({{"token_command": "gcloud auth print-access-token"}}))
assert "google.auth" not in sys.modules, "imported without Google credentials"
create_app(config({{"credentials_file": {path!r}}}))
assert "google.auth" in sys.modules
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]



class MetadataServer:
    """google-auth's transport, answering as the GCE / GKE metadata server does, and noting
    the `proxies=` each call was sent with."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str | None]]] = []

    def __call__(self, url: str, method: str = "GET", body: Any = None, headers: Any = None,
                 timeout: float | None = None, **kwargs: Any) -> Any:
        self.calls.append((url, kwargs["proxies"]))
        answer: Any = {"access_token": "ya29.from-metadata", "expires_in": 3599,
                       "token_type": "Bearer"} if "/token" in url else \
            {"email": EMAIL, "scopes": [CLOUD_PLATFORM], "aliases": ["default"]}
        return type("Response", (), {"status": 200, "data": orjson.dumps(answer), "headers": {
            "content-type": "application/json", "metadata-flavor": "Google"}})()


@pytest.mark.parametrize("setting", [{"url": "http://proxy.corp.example:3128"}, "env"])
def test_the_metadata_server_is_asked_directly_never_through_the_egress_proxy(
        setting: Any) -> None:
    """The metadata server answers this machine's (node's, pod's) own identity at a link-local
    address: through `server.upstream_proxy` it is not reached (a 502 for every request), or a
    proxy on Google Cloud answers with its own machine's token. Google's hosts still go
    through the proxy."""
    from google.auth import compute_engine

    from streamproxy.providers.gemini.credentials import _TimedRequest
    from streamproxy.upstream.egress import egress_from_setting

    egress = egress_from_setting(setting, {"HTTP_PROXY": "http://proxy.corp.example:3128",
                                           "HTTPS_PROXY": "http://proxy.corp.example:3128"})
    metadata = MetadataServer()
    request = _TimedRequest(metadata, 30.0, egress)
    credentials = compute_engine.Credentials(scopes=[CLOUD_PLATFORM])
    credentials.refresh(request)
    assert credentials.token == "ya29.from-metadata"
    assert metadata.calls and all(proxies["http"] is None and proxies["https"] is None
                                  for _url, proxies in metadata.calls), metadata.calls
    request("http://169.254.169.254/latest/api/token", "PUT")  # (AWS's, for federation)
    assert metadata.calls[-1][1]["http"] is None
    request("https://oauth2.googleapis.com/token", "POST")
    assert metadata.calls[-1][1]["https"] == "http://proxy.corp.example:3128"


@pytest.mark.parametrize("indent", [None, 2])  # (one line, or pasted as a YAML block)
def test_a_keys_json_given_for_its_path_is_refused_without_quoting_it(
        tmp_path: Path, rsa_key: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch,
        indent: int | None) -> None:
    """The key's JSON itself in `credentials_file` or GOOGLE_APPLICATION_CREDENTIALS (a secret
    store's or CI's variable holding the file's content) is no path: the config error said
    "cannot read <path>: File name too long", the path being the private key, into the
    startup log."""
    write_key_file(tmp_path / "sa.json", rsa_key, "http://127.0.0.1:1/token")
    content = json.dumps(json.loads((tmp_path / "sa.json").read_text()), indent=indent)
    private = pem(rsa_key).splitlines()[1]
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    with pytest.raises(ConfigError) as info:
        vertex("http://127.0.0.1:1", credentials_file=content)
    assert info.value.key == "providers.v.credentials_file"
    assert private not in str(info.value) and "kid-1" not in str(info.value)
    assert "not a file's path" in str(info.value), info.value
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", content)
    with pytest.raises(ConfigError) as info:
        vertex("http://127.0.0.1:1", credentials="adc")
    assert info.value.key == "providers.v.credentials"
    assert private not in str(info.value) and "kid-1" not in str(info.value)
    assert "GOOGLE_APPLICATION_CREDENTIALS: " in str(info.value)


@pytest.mark.parametrize("encoding", ["base64", "pem"])
def test_a_keys_encoded_content_given_for_its_path_is_refused_without_quoting_it(
        tmp_path: Path, rsa_key: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch,
        encoding: str) -> None:
    """Not JSON but the key file base64-encoded (how CI and secret stores keep it in one
    variable), or the private key's PEM pasted: no file has such a name, and the config error
    "cannot read <path>: File name too long" (or "No such file") printed it, private key and
    all, to the startup log."""
    write_key_file(tmp_path / "sa.json", rsa_key, "http://127.0.0.1:1/token")
    raw = (tmp_path / "sa.json").read_bytes()
    content = base64.b64encode(raw).decode() if encoding == "base64" else pem(rsa_key)
    secret = content[len(content) // 2:][:40]  # (the private key is most of either)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    with pytest.raises(ConfigError) as info:
        vertex("http://127.0.0.1:1", credentials_file=content)
    assert info.value.key == "providers.v.credentials_file"
    assert secret not in str(info.value) and "not a file's path" in str(info.value), info.value
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", content)
    with pytest.raises(ConfigError) as info:
        vertex("http://127.0.0.1:1", credentials="adc")
    assert info.value.key == "providers.v.credentials"
    assert secret not in str(info.value) and "not a file's path" in str(info.value), info.value


async def test_a_tilde_in_google_application_credentials_is_refused_as_google_auth_reads_it(
        proxy: Any, upstream: Any, token_endpoint: TokenEndpoint, key_file: str,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """google-auth opens GOOGLE_APPLICATION_CREDENTIALS as written (`~` is a shell's to
    expand: a systemd unit's or an env file's is not): the startup check expanded it and
    passed, then every request was a 502 "File ~/sa.json was not found"."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "~/sa.json")
    assert Path(key_file) == tmp_path / "sa.json"
    with pytest.raises(ConfigError) as info:
        vertex(upstream.url, credentials="adc")
    assert info.value.key == "providers.v.credentials"
    assert "GOOGLE_APPLICATION_CREDENTIALS: cannot read ~/sa.json" in str(info.value)
    # `credentials_file` is ours to read, so its `~` is expanded, at startup and at use.
    upstream.body = ANSWER
    client = await proxy(vertex(upstream.url, credentials_file="~/sa.json"))
    resp = await ask(client)
    assert resp.status == 200, await resp.text()
    assert bearer(upstream.requests[0]) == "Bearer ya29.token-1"
