"""A provider base_url with user info (`https://user:pass@llm.internal/v1`, a self-hosted
server behind HTTP Basic auth): both upstream clients send it as Basic auth, unless the request
has an Authorization of its own; the user info goes nowhere else, and an echo of it is masked."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from typing import Any

import pytest

from streamproxy.config import parse_config
from streamproxy.providers.base import UpstreamRequest
from streamproxy.upstream.client import CLIENT_ENV
from streamproxy.upstream.userinfo import split_userinfo, userinfo_secrets
from tests.test_http11 import raw_server

KINDS = ["native", "aiohttp"]
PASSWORD = "s3cret:pass@word"  # (percent-encoded in the URL)
BASIC = "Basic " + base64.b64encode(f"ops@corp:{PASSWORD}".encode()).decode()
ANSWER = json.dumps({"id": "c1", "object": "chat.completion", "created": 1, "model": "m",
                     "choices": [{"index": 0, "finish_reason": "stop", "message": {
                         "role": "assistant", "content": "Hi"}}]}).encode()


def test_split_userinfo() -> None:
    assert split_userinfo("https://h.example/v1") == ("https://h.example/v1", None)
    # An @ past the authority is no user info (Vertex's model versions)
    url = "https://h/v1/models/claude@2025:rawPredict?a=b@c"
    assert split_userinfo(url) == (url, None)
    assert split_userinfo("https://ops%40corp:s3cret%3Apass%40word@h:8443/v1") == (
        "https://h:8443/v1", BASIC)
    assert split_userinfo("http://user@h")[1] == "Basic " + base64.b64encode(b"user:").decode()
    assert userinfo_secrets("https://ops%40corp:s3cret%3Apass%40word@h/v1") == (
        BASIC.removeprefix("Basic "), PASSWORD)


def test_credentials_hold_the_user_info() -> None:
    req = UpstreamRequest("https://ops%40corp:s3cret%3Apass%40word@h/v1/chat/completions", b"")
    assert req.credentials(None) == (BASIC.removeprefix("Basic "), PASSWORD)
    assert UpstreamRequest("https://h/v1/m@1", b"").credentials(None) == ()


async def exchange(proxy: Any, api_key: str | None,
                   refuse: bool = False) -> tuple[list[bytes], int, Any]:
    """The upstream's request head and the proxy's answer, for an upstream that wants BASIC
    (and answers any other Authorization, or every one if `refuse`, with a 401 echoing it, as
    some servers do)."""
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            heads.append(head)
            auth = [line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                    if line.lower().startswith(b"authorization:")]
            if auth == [BASIC.encode()] and not refuse:
                status, body = b"200 OK", ANSWER
            else:
                body = json.dumps({"error": {"message": f"bad credentials: {auth!r}"}}).encode()
                status = b"401 Unauthorized"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()
        writer.close()

    server, url = await raw_server(handle)
    base = url.replace("http://", "http://ops%40corp:s3cret%3Apass%40word@") + "v1"
    entry: dict[str, Any] = {"type": "openai", "base_url": base, "default_model": "m"}
    if api_key:
        entry["api_key"] = api_key
    client = await proxy(parse_config({"providers": {"up": entry}, "default_provider": "up"},
                                      "<t>"))
    async with asyncio.timeout(10):
        resp = await client.post("/v1/chat/completions", json={
            "model": "m", "messages": [{"role": "user", "content": "hi"}]})
        answer = await resp.json()
    server.close()
    return heads, resp.status, answer


@pytest.mark.parametrize("kind", KINDS)
async def test_user_info_is_sent_as_basic_auth_by_both_clients(
        proxy: Any, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The native client sent no Authorization (the server's 401); aiohttp's sent Basic."""
    monkeypatch.setenv(CLIENT_ENV, kind)
    heads, status, answer = await exchange(proxy, None)
    assert status == 200, answer
    assert answer["choices"][0]["message"]["content"] == "Hi"
    head = heads[0].decode()
    assert head.startswith("POST /v1/chat/completions HTTP/1.1\r\n")
    assert "ops" not in head.replace(BASIC, "") and "s3cret" not in head  # (Host, target)


@pytest.mark.parametrize("kind", KINDS)
async def test_the_providers_own_authorization_wins_and_an_echo_of_it_is_masked(
        proxy: Any, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With an api_key the provider's Bearer goes, as curl's -H beats the URL's user info:
    aiohttp's client refused the request (a ValueError: the client's 500) where the native
    one sent the Bearer. The upstream's 401 echoing it is masked."""
    monkeypatch.setenv(CLIENT_ENV, kind)
    heads, status, answer = await exchange(proxy, "sk-operator-key-0123456789")
    assert status == 401, answer
    assert b"Bearer sk-operator-key-0123456789" in heads[0] and b"Basic" not in heads[0]
    assert "sk-operator-key-0123456789" not in answer["error"]["message"]


@pytest.mark.parametrize("kind", KINDS)
async def test_an_upstream_echoing_the_basic_auth_has_it_masked(
        proxy: Any, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CLIENT_ENV, kind)
    heads, status, answer = await exchange(proxy, None, refuse=True)
    assert status == 401 and BASIC.encode() in heads[0]
    message = answer["error"]["message"]
    assert message.startswith("bad credentials: [b'Basic ")
    assert BASIC.removeprefix("Basic ") not in message
