"""`Expect: 100-continue` (curl sends it for a body over 1 KB, many HTTP libraries for large
uploads): a refusal that needs no body is the answer in place of `100 Continue` (RFC 9110
§10.1.1), so the client never uploads a body only to be refused; a request that is served
gets `100 Continue` once nothing but its body can refuse it. On both fronts (the lean one hands
a request with Expect to aiohttp)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from streamproxy.server.front import FRONT_ENV
from tests.helpers import make_config

USER = [{"role": "user", "content": "hi"}]
KEY = b"sk-proxy-key"
BODY = orjson.dumps({"model": "fast:tokens=1", "messages": USER, "pad": "x" * 2000})


def config(**server: Any) -> Any:
    return make_config(
        {"mock": {"type": "mock", "default_model": "fast"}}, default="mock", server=server,
        auth={"keys": [{"name": "team", "key": KEY.decode(),
                        "rate_limit": {"requests_per_minute": 0.001, "burst": 1}}]})


async def head_of(reader: asyncio.StreamReader) -> tuple[bytes, dict[bytes, bytes]]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head[:-4].split(b"\r\n")
    return lines[0], dict(line.lower().split(b": ", 1) for line in lines[1:])


# name: (the head's extra lines, the status, the error's code)
REFUSALS = {
    "no key": (b"", 401, "invalid_api_key"),
    "wrong key": (b"Authorization: Bearer sk-wrong\r\n", 401, "invalid_api_key"),
    "rate limited": (b"Authorization: Bearer %b\r\n" % KEY, 429, "rate_limit_exceeded"),
    "too many headers": (b"x-portkey-api-key: %b\r\n" % KEY
                         + b"".join(b"x-h%d: 1\r\n" % i for i in range(12)), 431,
                         "request_header_fields_too_large"),
    "transfer coding": (b"x-portkey-api-key: %b\r\nTransfer-Encoding: gzip, chunked\r\n" % KEY,
                        501, "unsupported_transfer_coding"),
}


@pytest.mark.parametrize("name", list(REFUSALS))
@pytest.mark.parametrize("path", [b"/v1/chat/completions", b"/v1/chat/completions/chatcmpl-x"])
@pytest.mark.parametrize("front_kind", ["lean", "aiohttp"])
async def test_a_refusal_that_needs_no_body_is_answered_instead_of_100_continue(
        proxy: Any, monkeypatch: Any, front_kind: str, path: bytes, name: str) -> None:
    """aiohttp runs a route's Expect handler before the middlewares: the client got
    `100 Continue`, uploaded its whole body (a 20 MB image), then the 401, 429, 431 or 501.
    The refusal comes first now, and the connection closes (the body is never read)."""
    monkeypatch.setenv(FRONT_ENV, front_kind)
    client = await proxy(config(max_headers=12))
    if name == "rate limited":  # the key's one token taken
        taken = await client.post("/v1/chat/completions", data=BODY,
                                  headers={"x-portkey-api-key": KEY.decode()})
        assert taken.status == 200
    extra, status, code = REFUSALS[name]
    framing = b"" if b"Transfer-Encoding" in extra else b"Content-Length: %d\r\n" % len(BODY)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(b"POST %b HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n%b%b\r\n"
                     % (path, framing, extra))
        status_line, fields = await head_of(reader)
        assert status_line.startswith(b"HTTP/1.1 %d " % status), status_line
        assert fields[b"connection"] == b"close"
        body = await asyncio.wait_for(reader.readexactly(int(fields[b"content-length"])), 5)
        assert orjson.loads(body)["error"]["code"] == code
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed: no body awaited
    finally:
        writer.close()


@pytest.mark.parametrize("in_authorization", [False, True])
@pytest.mark.parametrize("front_kind", ["lean", "aiohttp"])
async def test_a_request_that_passes_gets_100_continue_then_its_answer(
        proxy: Any, monkeypatch: Any, front_kind: str, in_authorization: bool) -> None:
    """`100 Continue` once the key is known good (in `Authorization`, the request the
    handler sees is a copy, which must still send it)."""
    monkeypatch.setenv(FRONT_ENV, front_kind)
    client = await proxy(config())
    key = (b"Authorization: Bearer %b" if in_authorization else b"x-portkey-api-key: %b") % KEY
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue"
                     b"\r\n%b\r\nContent-Length: %d\r\n\r\n" % (key, len(BODY)))
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == (
            b"HTTP/1.1 100 Continue\r\n\r\n")
        writer.write(BODY)
        status_line, fields = await head_of(reader)
        assert status_line.startswith(b"HTTP/1.1 200 ")
        answer = orjson.loads(await reader.readexactly(int(fields[b"content-length"])))
        assert answer["object"] == "chat.completion"
    finally:
        writer.close()
