"""Both upstream clients (`server.upstream_client`: native, aiohttp) against raw upstreams on
loopback: a response's edges give the proxy's client the same answer whichever one is used."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import zlib
from typing import Any

import pytest

from streamproxy.config import parse_config
from streamproxy.upstream.client import CLIENT_ENV
from tests.helpers import collect, sse_chunks
from tests.test_http11 import FIRST_EVENTS, native_anthropic_config, raw_server, read_request

KINDS = ["native", "aiohttp"]
STREAM_BODY = FIRST_EVENTS + (
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
    b'"usage":{"output_tokens":1}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
JSON_BODY = (b'{"id":"msg_1","type":"message","role":"assistant","model":"m","content":'
             b'[{"type":"text","text":"Hi"}],"stop_reason":"end_turn",'
             b'"usage":{"input_tokens":1,"output_tokens":1}}')


async def ask(proxy: Any, url: str, stream: bool) -> tuple[int, str | None, dict[str, Any] | None]:
    """(status, the answer's text, its error) of one chat request through the proxy."""
    client = await proxy(native_anthropic_config(url.rstrip("/")))
    async with asyncio.timeout(10):
        resp = await client.post("/v1/chat/completions", json={
            "model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
        if resp.status != 200:
            return resp.status, None, (await resp.json())["error"]
        if stream:
            got = collect(sse_chunks(await resp.read()))
            return resp.status, got.content, got.error
        answer = await resp.json()
        return resp.status, answer["choices"][0]["message"]["content"], None


def answering(head: bytes, body: bytes, asked: list[int] | None = None) -> Any:
    """A raw upstream handler: reads the request, writes `head` + `body`, closes; counts each
    connection in `asked`, if given."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if asked is not None:
            asked.append(1)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await read_request(reader)
            writer.write(head + body)
            await writer.drain()
        writer.close()
    return handle


async def protocol_error(proxy: Any, head: bytes, body: bytes, stream: bool) -> dict[str, Any]:
    """The error of a request whose upstream answers `head` + `body`, which a client must
    refuse: a 502 `upstream_protocol_error` naming the provider."""
    server, url = await raw_server(answering(head, body))
    status, _, error = await ask(proxy, url, stream)
    server.close()
    assert status == 502 and error is not None
    assert error["code"] == "upstream_protocol_error"
    assert error["message"].startswith("bad response from provider 'up': ")
    return error


# -- Content-Encoding ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("fields", [
    [b"gzip"], [b"x-gzip"], [b"identity, gzip"], [b"gzip", b"identity"],
    [b"identity", b"gzip"], [b"deflate"]])
async def test_content_codings_both_clients_decode(
        proxy: Any, kind: str, stream: bool, fields: list[bytes],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 9110 8.4: Content-Encoding lines are one list, x-gzip is gzip. aiohttp's client
    read one line only (its C parser the last, its Python one the first), no list and no
    x-gzip: the body went on compressed and the client got a 502 'not JSON' or a truncated
    stream, where the native client decoded it."""
    monkeypatch.setenv(CLIENT_ENV, kind)
    body = STREAM_BODY if stream else JSON_BODY
    packed = zlib.compress(body) if fields == [b"deflate"] else gzip.compress(body)
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: "
            + (b"text/event-stream" if stream else b"application/json") + b"\r\n"
            + b"".join(b"Content-Encoding: " + f + b"\r\n" for f in fields)
            + b"Content-Length: %d\r\n\r\n" % len(packed))
    server, url = await raw_server(answering(head, packed))
    status, text, error = await ask(proxy, url, stream)
    server.close()
    assert (status, text, error) == (200, "Hi", None)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("coding", [b"gzip, gzip", b"br", b"zstd", b"compress"])
async def test_content_codings_neither_client_decodes_are_refused(
        proxy: Any, kind: str, stream: bool, coding: bytes,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two layers, or a coding zlib does not decode: a protocol error saying so, from both
    (aiohttp's client passed on what it did not know, read as a body that is not JSON)."""
    monkeypatch.setenv(CLIENT_ENV, kind)
    packed = gzip.compress(gzip.compress(STREAM_BODY if stream else JSON_BODY))
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Encoding: " + coding + b"\r\nContent-Length: %d\r\n\r\n" % len(packed))
    await protocol_error(proxy, head, packed, stream)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(("coding", "named"), [(b"br", "br"), (b"zstd", "zstd"),
                                               (b"gzip, gzip", "gzip, gzip"),
                                               (b"x-\x7fodd", "?")])
async def test_a_content_coding_neither_client_decodes_is_final_but_falls_back(
        proxy: Any, kind: str, stream: bool, coding: bytes, named: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The upstream codes every answer so: it was a generic 'MalformedResponse' 502 that the
    config's retry on 502 (and the SDKs') sent again, generated and paid for again, to be
    refused alike. Now it names the coding, says x-should-retry: false and is not retried;
    another target may still answer."""
    monkeypatch.setenv(CLIENT_ENV, kind)
    packed = gzip.compress(STREAM_BODY if stream else JSON_BODY)
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Encoding: " + coding + b"\r\nContent-Length: %d\r\n\r\n" % len(packed))
    asked: list[int] = []
    server, url = await raw_server(answering(head, packed, asked))
    client = await proxy(parse_config({
        "providers": {"up": {"type": "anthropic", "base_url": url.rstrip("/"),
                             "api_key": "sk-test-secret", "default_model": "m"},
                      "mock": {"type": "mock", "default_model": "fast"}},
        "default_provider": "up"}, "<t>"))
    retried = {"provider": "up", "retry": {"attempts": 2, "on_status_codes": [502]}}
    body = {"stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    async with asyncio.timeout(10):
        resp = await client.post("/v1/chat/completions", json=body,
                                 headers={"x-portkey-config": json.dumps(retried)})
        assert resp.status == 502 and resp.headers["x-should-retry"] == "false"
        assert (await resp.json())["error"]["message"] == (
            f"bad response from provider 'up': unsupported Content-Encoding {named!r}")
        assert len(asked) == 1
        resp = await client.post("/v1/chat/completions", json=body, headers={
            "x-portkey-config": json.dumps({"strategy": {"mode": "fallback"},
                                            "targets": [retried, {"provider": "mock"}]})})
        assert resp.status == 200 and resp.headers["x-portkey-provider"] == "mock"
        await resp.read()
    server.close()
    assert len(asked) == 2


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("coding", [b"br", b"zstd"])
async def test_an_errors_status_survives_a_body_neither_client_decodes(
        proxy: Any, kind: str, stream: bool, coding: bytes,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A 429 whose body is in a coding not decoded was refused at its head: the client got a
    final 502 (x-should-retry: false) in place of the upstream's 429 and its Retry-After, and
    a config's retry on 429 never ran. Its status and head stand; the message says the body
    could not be read."""
    monkeypatch.setenv(CLIENT_ENV, kind)
    body = b"\x8b\x05\x80 not json"
    head = (b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
            b"retry-after-ms: 20\r\nanthropic-ratelimit-requests-remaining: 0\r\n"
            b"Content-Encoding: " + coding + b"\r\nContent-Length: %d\r\n\r\n" % len(body))
    asked: list[int] = []
    server, url = await raw_server(answering(head, body, asked))
    client = await proxy(native_anthropic_config(url.rstrip("/")))
    retried = {"retry": {"attempts": 1, "on_status_codes": [429]}}
    async with asyncio.timeout(10):
        resp = await client.post("/v1/chat/completions", json={
            "model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]},
            headers={"x-portkey-config": json.dumps(retried)})
        assert resp.status == 429 and "x-should-retry" not in resp.headers
        assert resp.headers["retry-after-ms"] == "20"
        assert resp.headers["anthropic-ratelimit-requests-remaining"] == "0"
        assert resp.headers["x-portkey-retry-attempt-count"] == "-1"
        assert (await resp.json())["error"]["message"] == (
            "provider 'up' returned HTTP 429 (its body could not be read: "
            f"unsupported Content-Encoding {coding.decode()!r})")
    server.close()
    assert len(asked) == 2


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("framing", [
    b"Content-Encoding: gzip\r\nContent-Length: 20\r\n\r\n\x1f\x8b\x08\x00 not gzip at all",
    b"Content-Length: 400\r\n\r\n{\"error\": {\"message\": \"cut"], ids=["not gzip", "cut"])
async def test_an_errors_status_survives_a_body_cut_or_malformed(
        proxy: Any, kind: str, stream: bool, framing: bytes,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A 429 whose body was cut or malformed (a gzip that is not) was a 502
    upstream_protocol_error or a truncated stream: the upstream's status and Retry-After
    lost, a config's retry on 429 not run. The status and head stand, as for a body that
    stalls; the message says the body could not be read."""
    monkeypatch.setenv(CLIENT_ENV, kind)
    head = (b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
            b"retry-after: 3\r\n")
    server, url = await raw_server(answering(head, framing))
    status, _, error = await ask(proxy, url, stream)
    server.close()
    assert status == 429 and error is not None
    assert error["message"] == ("provider 'up' returned HTTP 429 (its body could not be read: "
                                "it was cut short or malformed)")


# -- Transfer-Encoding -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("coding", [b"gzip, chunked", b"gzip", b"chunked, gzip"])
async def test_a_transfer_coding_besides_chunked_is_refused_by_both_clients(
        proxy: Any, kind: str, stream: bool, coding: bytes,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 9112 6.1: gzip as a transfer coding is a layer of the body. aiohttp's client read
    'gzip, chunked' as chunked and 'gzip' as until close, passing the body on compressed: a
    truncated stream or a 'malformed message', where the native client names the coding."""
    monkeypatch.setenv(CLIENT_ENV, kind)
    packed = gzip.compress(STREAM_BODY if stream else JSON_BODY)
    framed = (b"%x\r\n%s\r\n0\r\n\r\n" % (len(packed), packed)
              if coding.endswith(b"chunked") else packed)
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: " + coding + b"\r\n\r\n")
    server, url = await raw_server(answering(head, framed))
    status, _, error = await ask(proxy, url, stream)
    server.close()
    assert status == 502 and error is not None
    assert error == {"code": "upstream_protocol_error", "type": "api_error", "param": None,
                     "message": "bad response from provider 'up': "
                                "unsupported Transfer-Encoding 'gzip'"}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stream", [True, False])
async def test_a_transfer_coding_besides_chunked_is_not_retried(
        proxy: Any, kind: str, stream: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The upstream frames every answer so: a retry (the config's on 502, or the SDKs' of a
    5xx) sent the request again, generated and paid for again, to be refused alike."""
    monkeypatch.setenv(CLIENT_ENV, kind)
    packed = gzip.compress(STREAM_BODY if stream else JSON_BODY)
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: gzip, chunked\r\n\r\n")
    framed = b"%x\r\n%s\r\n0\r\n\r\n" % (len(packed), packed)
    asked: list[int] = []
    server, url = await raw_server(answering(head, framed, asked))
    client = await proxy(native_anthropic_config(url.rstrip("/")))
    async with asyncio.timeout(10):
        resp = await client.post("/v1/chat/completions", headers={
            "x-portkey-config": '{"retry": {"attempts": 2, "on_status_codes": [502]}}'},
            json={"model": "m", "stream": stream, "messages": [{"role": "user",
                                                                  "content": "hi"}]})
        assert resp.status == 502 and resp.headers["x-should-retry"] == "false"
        assert (await resp.json())["error"]["code"] == "upstream_protocol_error"
    server.close()
    assert len(asked) == 1


# -- header fields ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("value", [b"a\x00b", b"a\rb"], ids=["NUL", "CR"])
async def test_nul_or_cr_in_a_header_value_is_refused_by_both_clients(
        proxy: Any, kind: str, stream: bool, value: bytes,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 9110 5.5: a field value holding NUL or CR MUST be rejected or each replaced by SP.
    aiohttp's client rejects it; the native client kept it, a 200 with the NUL in the header
    the proxy may pass on (passed_headers)."""
    monkeypatch.setenv(CLIENT_ENV, kind)
    body = STREAM_BODY if stream else JSON_BODY
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Request-Id: " + value
            + b"\r\nContent-Length: %d\r\n\r\n" % len(body))
    await protocol_error(proxy, head, body, stream)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("value", [b"a\x01b", b"a\x7fb"], ids=["SOH", "DEL"])
async def test_other_controls_in_a_header_value_are_kept_by_both_clients(
        proxy: Any, kind: str, value: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 9110 5.5: other CTLs are invalid too, but a recipient MAY retain them for
    robustness: both clients do, and the answer is served."""
    monkeypatch.setenv(CLIENT_ENV, kind)
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Other: " + value
            + b"\r\nContent-Length: %d\r\n\r\n" % len(JSON_BODY))
    server, url = await raw_server(answering(head, JSON_BODY))
    assert await ask(proxy, url, False) == (200, "Hi", None)
    server.close()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("field", [
    b"Content-Length : %d", b"Connection : keep-alive", b"Upgrade : h2c", b"X-Request-Id : 1",
    b"Content-Type\t: application/json"], ids=lambda f: f.split(b":")[0].decode())
async def test_whitespace_before_a_colon_is_refused_by_both_clients_for_every_header(
        proxy: Any, kind: str, stream: bool, field: bytes,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 9112 5.1: no whitespace between a field's name and its colon (it has split
    requests and responses before). h11 (the openai SDK's httpx), Go and the native client
    refuse such a line, whatever its name. aiohttp's parser refused most, but took
    'Content-Length :', 'Transfer-Encoding :', 'Connection :', 'Upgrade :' and
    'Proxy-Connection :' (a header named 'Content-Length ' that its framing still read): a
    200 where the native client answered 502. Both now refuse every one."""
    monkeypatch.setenv(CLIENT_ENV, kind)
    body = STREAM_BODY if stream else JSON_BODY
    line = field % len(body) if b"%d" in field else field
    length = b"" if field.startswith(b"Content-Length") else b"Content-Length: %d\r\n" % len(body)
    head = b"HTTP/1.1 200 OK\r\n" + line + b"\r\n" + length + b"\r\n"
    await protocol_error(proxy, head, body, stream)


# -- trailers and framing -------------------------------------------------------------------------

def chunked(body: bytes, trailers: bytes) -> tuple[bytes, bytes]:
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    return head, b"%x\r\n%s\r\n0\r\n%s\r\n" % (len(body), body, trailers)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("trailers", [b"X-Usage: 1\r\n folded\r\nX-Empty:\r\n", b""],
                         ids=["fields", "none"])
async def test_trailer_fields_are_taken_by_both_clients(
        proxy: Any, kind: str, stream: bool, trailers: bytes,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CLIENT_ENV, kind)
    server, url = await raw_server(answering(*chunked(STREAM_BODY if stream else JSON_BODY,
                                                      trailers)))
    assert await ask(proxy, url, stream) == (200, "Hi", None)
    server.close()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("trailers", [b"not a trailer\r\n", b"X-Usage: 1\r\n: no name\r\n"],
                         ids=["no-colon", "no-name"])
async def test_a_malformed_trailer_line_is_refused_by_both_clients(
        proxy: Any, kind: str, stream: bool, trailers: bytes,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 9112 7.1.2: the trailer section is field lines. aiohttp's client (and h11) refuse
    a line that is none; the native client skipped any line up to the empty one, a 200 where
    aiohttp's answered 502: what came after the last chunk is not what its framing says.
    (A trailer's value is not read by either: a NUL in one passes on both, the trailers being
    dropped.)"""
    monkeypatch.setenv(CLIENT_ENV, kind)
    server, url = await raw_server(answering(*chunked(STREAM_BODY if stream else JSON_BODY,
                                                      trailers)))
    status, _, error = await ask(proxy, url, stream)
    server.close()
    assert status == 502 and error is not None
    assert error["code"] == "upstream_protocol_error"
    assert error["message"].startswith("bad response from provider 'up': ")


# -- statuses without an answer --------------------------------------------------------------------

NO_ANSWERS = {
    b"101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade":
        "provider 'up' answered HTTP 101 Switching Protocols, an upgrade the request never "
        "asked for",
    b"204 No Content": "provider 'up' answered HTTP 204 No Content: a success without the "
                       "answer",
    b"304 Not Modified": "provider 'up' answered HTTP 304 Not Modified to a request that was "
                         "not conditional",
    b"304 Not Modified\r\nContent-Length: 120": "provider 'up' answered HTTP 304 Not Modified to "
                                                "a request that was not conditional",
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("status_line", list(NO_ANSWERS), ids=lambda s: s[:3].decode())
async def test_a_status_without_an_answer_is_one_clear_error_on_both_clients(
        proxy: Any, kind: str, stream: bool, status_line: bytes,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A 304 was called 'a redirect … check the provider's base_url' (it is Not Modified, and
    we never send a conditional request); a 204 was a 'truncated stream' or 'a malformed
    message' (an empty body that is not JSON); a 101 a MalformedResponse on the native client
    and a truncated stream or malformed message on aiohttp's. Each now says what came, alike on
    both clients."""
    monkeypatch.setenv(CLIENT_ENV, kind)
    server, url = await raw_server(answering(b"HTTP/1.1 " + status_line + b"\r\n\r\n", b""))
    status, _, error = await ask(proxy, url, stream)
    server.close()
    assert status == 502
    assert error == {"code": "upstream_protocol_error", "type": "api_error", "param": None,
                     "message": NO_ANSWERS[status_line]}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("code", [101, 204, 304])
async def test_a_status_without_an_answer_says_do_not_retry(
        proxy: Any, kind: str, code: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """x-should-retry: false, which the openai SDKs obey over the 502 (each try would get the
    same), as an upstream redirect says."""
    monkeypatch.setenv(CLIENT_ENV, kind)
    head = b"HTTP/1.1 %d Status\r\nConnection: close\r\n\r\n" % code
    server, url = await raw_server(answering(head, b""))
    client = await proxy(native_anthropic_config(url.rstrip("/")))
    async with asyncio.timeout(10):
        resp = await client.post("/v1/chat/completions", json={
            "model": "m", "messages": [{"role": "user", "content": "hi"}]})
    server.close()
    assert resp.status == 502 and resp.headers["x-should-retry"] == "false"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("status_line", [b"204 No Content", b"304 Not Modified"])
@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_a_204_or_304_with_a_body_is_a_malformed_response_on_both_clients(
        proxy: Any, kind: str, stream: bool, status_line: bytes, framing: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 9112 6.3: a 204 or 304 ends at its head; the bytes of a body after it are no
    response. aiohttp's client refuses them (read as a next status line); the native client
    took the status and dropped them, an answer that said "HTTP 204 No Content" where the
    upstream sent content. Both now answer the same protocol error."""
    monkeypatch.setenv(CLIENT_ENV, kind)
    body = STREAM_BODY if stream else JSON_BODY
    if framing == "length":
        head = b"HTTP/1.1 %s\r\nContent-Length: %d\r\n\r\n" % (status_line, len(body))
    else:
        head = b"HTTP/1.1 %s\r\nTransfer-Encoding: chunked\r\n\r\n" % status_line
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    await protocol_error(proxy, head, body, stream)


# -- framing both clients may read differently -----------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("framing", ["length-and-chunked", "same-length-twice"])
async def test_framing_the_rfc_lets_either_client_refuse_and_native_reuse_rules(
        proxy: Any, kind: str, framing: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A documented difference, both within the RFC. Content-Length with Transfer-Encoding
    (RFC 9112 6.3: the coding wins, and it "ought to be handled as an error"), and one
    Content-Length sent twice alike (RFC 9110 8.6: a recipient MAY reject it, or read it as
    one): aiohttp's client refuses both, a 502; the native client serves them, the first
    by its chunks and never on a reused connection (it may be a response split), the second
    as one length on a kept one, which is unambiguous."""
    monkeypatch.setenv(CLIENT_ENV, kind)
    connections = 0
    if framing == "length-and-chunked":
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        answer = head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(JSON_BODY), JSON_BODY)
    else:
        length = b"Content-Length: %d\r\n" % len(JSON_BODY)
        answer = b"HTTP/1.1 200 OK\r\n" + length + length + b"\r\n" + JSON_BODY

    async def keep_answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            for _ in range(3):
                await read_request(reader)
                writer.write(answer)
                await writer.drain()
        writer.close()

    server, url = await raw_server(keep_answering)
    client = await proxy(native_anthropic_config(url.rstrip("/")))  # one pool for both
    statuses = []
    async with asyncio.timeout(10):
        for _ in range(2):
            resp = await client.post("/v1/chat/completions", json={
                "model": "m", "messages": [{"role": "user", "content": "hi"}]})
            got = await resp.json()
            statuses.append(resp.status)
    server.close()
    if kind == "aiohttp":
        assert statuses == [502, 502]
        assert got["error"]["code"] == "upstream_protocol_error"
    else:
        assert statuses == [200, 200] and got["choices"][0]["message"]["content"] == "Hi"
        assert connections == (2 if framing == "length-and-chunked" else 1)
