"""The two fronts, compared: the same raw requests, byte for byte, to the lean front and to
aiohttp's, and what a client can see of the answers (status, the headers that matter, the body or
the SSE frames, whether the connection stays open) must be the same. The lean front serves only
the chat requests it fully understands and hands every other to aiohttp, so most of these pass
through it to aiohttp; the point is that neither path shows.

Not compared: `Date`, and the `Content-Length` value (the bodies are). Ids, `created` and the
trace id a request did not name are random: compared by shape."""

from __future__ import annotations

import asyncio
import gzip
import re
from typing import Any

import orjson
import pytest
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    BadStatusLine,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    TransferEncodingError,
)

from streamproxy.config import load_config, parse_config
from streamproxy.errors import ProxyError
from streamproxy.server import front
from streamproxy.server.errors import SERVER_NAME, malformed_request

MESSAGES = [{"role": "user", "content": "hi"}]
STREAM = orjson.dumps({"model": "mock/tokens=2", "stream": True, "messages": MESSAGES})
PLAIN = orjson.dumps({"model": "mock/tokens=2", "messages": MESSAGES})
JSON = b"Content-Type: application/json"
SIGNIFICANT = ("server", "content-type", "transfer-encoding", "connection", "allow",
               "www-authenticate", "retry-after", "retry-after-ms", "cache-control", "x-request-id")
PROBE = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"  # sent after the answers: still open?
RANDOM = re.compile(rb"[0-9a-f]{16,}|(?<=\"created\":)\d+")


def request(*headers: bytes, method: bytes = b"POST", path: bytes = b"/v1/chat/completions",
            body: bytes | None = PLAIN, version: bytes = b"1.1") -> bytes:
    """A request with a Host, `headers` and a Content-Length for `body` (none when it is None
    or `headers` frame it otherwise)."""
    fields = b"".join(h + b"\r\n" for h in (b"Host: t", *headers))
    if body is not None and not any(h.lower().startswith((b"transfer-encoding",
                                                          b"content-length")) for h in headers):
        fields += b"Content-Length: %d\r\n" % len(body)
    return b"%b %b HTTP/%b\r\n%b\r\n%b" % (method, path, version, fields, body or b"")


def get(path: bytes, *headers: bytes, method: bytes = b"GET") -> bytes:
    return request(*headers, method=method, path=path, body=None)


def chunked(body: bytes) -> bytes:
    return b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)


# name: (the bytes sent at once, how many answers they get)
CASES: dict[str, tuple[bytes, int]] = {
    "stream": (request(JSON, body=STREAM), 1),
    "plain": (request(JSON), 1),
    "bad json": (request(JSON, body=b"{nope"), 1),
    "invalid request": (request(JSON, body=b"{}"), 1),
    "no content-type": (request(), 1),
    "text/plain": (request(b"Content-Type: text/plain"), 1),
    "405": (request(JSON, method=b"PUT"), 1),
    "404": (get(b"/v1/nope"), 1),
    "HEAD": (get(b"/v1/chat/completions", method=b"HEAD"), 1),
    "OPTIONS": (get(b"/v1/chat/completions", b"Origin: http://a", method=b"OPTIONS"), 1),
    "trailing slash": (request(JSON, path=b"/v1/chat/completions/"), 1),
    "query string": (request(JSON, path=b"/v1/chat/completions?x=1"), 1),
    "percent-encoded": (request(JSON, path=b"/v1/chat/%63ompletions"), 1),
    "HTTP/1.0 stream": (request(JSON, body=STREAM, version=b"1.0"), 1),
    "HTTP/1.0 keep-alive": (request(JSON, b"Connection: keep-alive", version=b"1.0"), 1),
    "Connection: close": (request(JSON, b"Connection: close", body=STREAM), 1),
    "Connection: closed": (request(JSON, b"Connection: closed"), 1),
    "keep-alive after a stream": (request(JSON, body=STREAM) * 2, 2),
    "pipelined": (request(JSON, body=STREAM) + request(JSON, body=b"{") + get(b"/v1/models")
                  + request(JSON), 4),
    "chunked body": (request(JSON, b"Transfer-Encoding: chunked", body=chunked(PLAIN)), 1),
    "gzip body": (request(JSON, b"Content-Encoding: gzip", body=gzip.compress(PLAIN)), 1),
    "100-continue": (request(JSON, b"Expect: 100-continue"), 2),
    "431": (request(JSON, b"X-Big: " + b"a" * 9000), 1),
    "no Host": (request(JSON).replace(b"Host: t\r\n", b""), 1),
    # A bare LF ending the last field, then the empty line's CRLF: no CRLF CRLF, no LF LF.
    "bare LF before the end": (request(JSON).replace(b"\r\n\r\n", b"\n\r\n", 1), 1),
    "no empty line": (request(JSON).replace(b"\r\n\r\n", b"\r\n", 1), 1),
    "trace id": (request(JSON, b"x-portkey-trace-id: t-1", body=STREAM), 1),
    "junk after a request": (request(JSON) + get(b"/v1/models") + b"hello\r\n\r\n", 3),
    "/v1/models": (get(b"/v1/models"), 1),
    "/healthz": (get(b"/healthz"), 1),
    "/metrics HEAD": (get(b"/metrics", method=b"HEAD"), 1),
    "stored list": (get(b"/v1/chat/completions"), 1),
}
AUTH = {"keys": [{"name": "a", "key": "k-a"},
                 {"name": "r", "key": "k-r", "rate_limit": {"requests_per_minute": 1,
                                                            "burst": 1}}]}
AUTH_CASES: dict[str, tuple[bytes, int]] = {
    "401": (request(JSON, body=STREAM), 1),
    "401 invalid": (request(JSON, b"Authorization: Bearer nope"), 1),
    "authorized": (request(JSON, b"Authorization: Bearer k-a", body=STREAM), 1),
    "429": (request(JSON, b"x-portkey-api-key: k-r") * 2, 2),
    "405 without a key": (request(JSON, method=b"PUT"), 1),
}


async def read_answer(reader: asyncio.StreamReader, head_only: bool) -> tuple[Any, ...]:
    """One answer as a client sees it: status, significant headers (random ids by shape),
    the body de-chunked."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head[:-4].decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = sorted((name.strip().lower(), value.strip()) for name, value in
                     (line.split(":", 1) for line in lines[1:]))
    fields = dict(headers)
    # Every answer names the proxy alike, without versions: aiohttp's said
    # `Python/3.11 aiohttp/3.14.5`, the lean front's nothing.
    assert status == 100 or fields.get("server") == SERVER_NAME, (status, fields.get("server"))
    if status == 100 or head_only:
        body = b""
    elif fields.get("transfer-encoding") == "chunked":
        body = b""
        while size := int((await reader.readuntil(b"\r\n"))[:-2], 16):
            body += (await reader.readexactly(size + 2))[:-2]
        await reader.readexactly(2)
    else:
        body = await reader.readexactly(int(fields.get("content-length", 0)))
    # (retry-after-ms is a wait counted down on the clock, as the two fronts' requests came:
    # its presence is compared, not its milliseconds)
    kept = [(name, b"~" if name == "retry-after-ms" else RANDOM.sub(b"~", value.encode()))
            for name, value in headers if name in SIGNIFICANT or name.startswith("x-portkey")]
    return status, kept, RANDOM.sub(b"~", body)


async def answers(client: Any, sent: bytes, count: int, head_only: bool) -> list[Any]:
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(sent)
    got: list[Any] = []
    for _ in range(count):
        got.append(await read_answer(reader, head_only))
    try:  # open still: the probe is answered; closed: nothing more comes
        writer.write(PROBE)
        got.append((await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)).split()[1])
    except (ConnectionError, asyncio.IncompleteReadError):
        got.append("closed")
    writer.close()
    return got


async def both_fronts(proxy: Any, monkeypatch: Any, config: Any) -> list[Any]:
    clients = []
    for kind in front.FRONTS:
        monkeypatch.setenv(front.FRONT_ENV, kind)
        clients.append(await proxy(config))
    return clients


async def compare(clients: list[Any], cases: dict[str, tuple[bytes, int]]) -> None:
    for name, (sent, count) in cases.items():
        head_only = sent.startswith(b"HEAD ")
        lean, aiohttp = [await answers(c, sent, count, head_only) for c in clients]
        assert lean == aiohttp, name


async def test_the_fronts_answer_alike(proxy: Any, monkeypatch: Any) -> None:
    await compare(await both_fronts(proxy, monkeypatch, load_config(None)), CASES)


async def test_the_fronts_authenticate_alike(proxy: Any, monkeypatch: Any) -> None:
    config = parse_config({"auth": AUTH, "default_provider": "mock",
                           "providers": {"mock": {"type": "mock"}}}, "<test>")
    await compare(await both_fronts(proxy, monkeypatch, config), AUTH_CASES)


@pytest.mark.parametrize("name", ["plain", "bad json", "Connection: closed"])
def test_the_cases_are_served_by_the_lean_front_itself(name: str) -> None:
    """The comparisons that matter most are of requests the lean front serves (not hands on)."""
    f = front.Front.__new__(front.Front)
    f.max_headers, f.max_field, f.max_body = 128, 8190, 1 << 20
    sent = CASES[name][0]
    assert f.parse_head(sent[:sent.index(b"\r\n\r\n")]) is not None


KEY = b"sk-secret-0123456789"  # in a malformed line: it must never come back to the client
# name: a request aiohttp's parser refuses (the lean front hands each over), on each route
MALFORMED: dict[str, bytes] = {
    "Content-Length abc": request(JSON, b"Content-Length: abc", body=b""),
    "Content-Length -1": request(JSON, b"Content-Length: -1", body=b""),
    "two Content-Lengths": request(JSON, b"Content-Length: 2", b"Content-Length: 3",
                                   body=b"{}"),
    "bad header name": request(JSON, b"Bad Name: " + KEY),
    "header without a colon": request(JSON, b"Authorization Bearer " + KEY),
    "bad request line": request(JSON).replace(b"HTTP/1.1", b"HTTP/1.1 " + KEY, 1),
    "bad version": request(JSON).replace(b"HTTP/1.1", b"HTTP/9.9", 1),
    "bad method": request(JSON, method=b"P@ST"),
    "bad chunk size": request(JSON, b"Transfer-Encoding: chunked", body=b"zz\r\n{}\r\n0\r\n\r\n"),
    "unknown transfer coding": request(JSON, b"Transfer-Encoding: " + KEY, body=b""),
    "Content-Length and Transfer-Encoding": request(JSON, b"Transfer-Encoding: chunked",
                                                    b"Content-Length: 5", body=b"0\r\n\r\n"),
    "HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "/v1/models Content-Length abc": get(b"/v1/models", b"Content-Length: abc"),
    "/healthz without a colon": get(b"/healthz", b"x-api-key " + KEY),
    "/metrics bad header name": get(b"/metrics", b"Bad Name: x"),
    "/metrics HEAD bad version": get(b"/metrics", method=b"HEAD").replace(b"HTTP/1.1",
                                                                         b"HTTP/9.9"),
}


async def test_the_fronts_refuse_malformed_requests_alike(proxy: Any, monkeypatch: Any) -> None:
    await compare(await both_fronts(proxy, monkeypatch, load_config(None)),
                  {name: (sent, 1) for name, sent in MALFORMED.items()})


@pytest.mark.parametrize("name", list(MALFORMED))
@pytest.mark.parametrize("front_kind", front.FRONTS)
async def test_a_malformed_request_is_an_openai_error(proxy: Any, monkeypatch: Any,
                                                      front_kind: str, name: str) -> None:
    """aiohttp's parser answered these with a plain-text 400 of its own (`400, message: ...`,
    quoting the bad line, a key in it included), which the SDKs cannot read as an error; the
    answer is OpenAI's shape, and the connection still closes (the stream's framing is lost)."""
    monkeypatch.setenv(front.FRONT_ENV, front_kind)
    client = await proxy(load_config(None))
    (status, headers, body), after = await answers(client, MALFORMED[name], 1, False)
    fields = dict(headers)
    assert (status, fields["content-type"], fields["connection"]) == (
        400, b"application/json", b"close")
    assert after == "closed"
    assert fields["x-request-id"] == b"~"  # (a new one: by shape)
    error = orjson.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error", None, "malformed_request")
    assert error["message"].startswith("Malformed HTTP request: ")
    assert KEY.decode() not in error["message"] and "\\x" not in error["message"]


@pytest.mark.parametrize("exc, fault", [
    (LineTooLong(b"/v1/x?key=" + KEY, 8190), "a request line or header field is too long"),
    (BadStatusLine("POST /?key=" + KEY.decode()), "the request line is not valid"),
    (BadHttpMethod("K" + KEY.decode()), "the request method is not valid"),
    (InvalidHeader(b"Authorization Bearer " + KEY), "it cannot be parsed"),
    (InvalidURLError("/?key=" + KEY.decode()), "it cannot be parsed"),
    (TransferEncodingError(KEY.decode()), "it cannot be parsed"),
    (BadHttpMessage("Data after `Connection: close`"), "Data after `Connection: close`"),
])
def test_the_python_parsers_faults_are_named_without_the_bytes(exc: Exception,
                                                                fault: str) -> None:
    """aiohttp's Python parser (AIOHTTP_NO_EXTENSIONS) quotes the request's bytes in its
    messages without llhttp's ':\\n\\n' before them: those are named by their class."""
    message = malformed_request(exc).message
    assert message.startswith(f"Malformed HTTP request: {fault}")
    assert KEY.decode() not in message


CHUNKED_HEAD = request(JSON, b"Transfer-Encoding: chunked", body=b"")
BROKEN_CHUNKS = {"bad chunk size": b"zz\r\n}\r\n0\r\n\r\n",
                 "no CRLF after a chunk": b"1\r\n}X\r\n0\r\n\r\n"}


@pytest.mark.parametrize("path", [b"/v1/chat/completions", b"/v1/chat/completions?x=1"])
@pytest.mark.parametrize("broken", list(BROKEN_CHUNKS))
@pytest.mark.parametrize("front_kind", front.FRONTS)
async def test_a_chunked_body_whose_framing_breaks_is_400_at_once(
        proxy: Any, monkeypatch: Any, front_kind: str, broken: str, path: bytes) -> None:
    """The framing of a chunked body breaking after its head and first chunk came: the parser
    failed, but the handler reading the body was not told, and waited for the rest until the
    body timeout (a 408 a minute later). It is the same 400 as a head the parser refuses, and
    the connection closes, after one answer."""
    monkeypatch.setenv(front.FRONT_ENV, front_kind)
    client = await proxy(load_config(None))
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(CHUNKED_HEAD.replace(b"/v1/chat/completions", path, 1) + chunked(b"{")[:-5])
    await writer.drain()
    await asyncio.sleep(0.05)  # (the head is read, its body awaited: either way, the same)
    writer.write(BROKEN_CHUNKS[broken])
    status, headers, body = await read_answer(reader, False)
    error = orjson.loads(body)["error"]
    assert (status, error["type"], error["code"]) == (400, "invalid_request_error",
                                                       "malformed_request")
    assert dict(headers)["connection"] == b"close"
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, nothing more said
    writer.close()


@pytest.mark.parametrize("version", [b"1.1", b"1.0"])
@pytest.mark.parametrize("name", ["bad header name", "bad request line", "HTTP/2 preface"])
@pytest.mark.parametrize("front_kind", front.FRONTS)
async def test_a_malformed_request_is_answered_in_http_1_1(
        proxy: Any, monkeypatch: Any, front_kind: str, name: str, version: bytes) -> None:
    """aiohttp answers a request its parser refused as if it had come in HTTP/1.0 (its fixed
    error request's version), even to an HTTP/1.1 client. The status line says HTTP/1.1, the
    server's version (RFC 9110 §6.2: the highest it conforms to, major version 1), as nginx
    says it to any request it cannot parse; the connection still closes, said."""
    monkeypatch.setenv(front.FRONT_ENV, front_kind)
    client = await proxy(load_config(None))
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(MALFORMED[name].replace(b"HTTP/1.1\r\n", b"HTTP/%b\r\n" % version, 1))
    answer = await asyncio.wait_for(reader.read(), 10)  # (all of it: the connection closes)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"\r\nconnection: close" in head.lower()
    assert orjson.loads(body)["error"]["code"] == "malformed_request"


@pytest.mark.parametrize("path", [b"/v1/chat/completions", b"/healthz"])
@pytest.mark.parametrize("version", [b"2.0", b"0.9"])
@pytest.mark.parametrize("front_kind", front.FRONTS)
async def test_a_request_in_another_http_version_is_505(
        proxy: Any, monkeypatch: Any, front_kind: str, version: bytes, path: bytes) -> None:
    """aiohttp's parser takes an `HTTP/2.0` or `HTTP/0.9` request line, and the request was
    served with an HTTP/1 answer whose status line said `HTTP/2.0 200 OK` (or `HTTP/0.9`), which
    no client reads as HTTP/1.1. It is 505 (RFC 9110 §15.6.6), in OpenAI's shape, said in
    HTTP/1.1 (§6.2), not worth a retry, and the connection closes (nginx answers it alike)."""
    monkeypatch.setenv(front.FRONT_ENV, front_kind)
    client = await proxy(load_config(None))
    sent = request(JSON, path=path, version=version) + PROBE
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(sent)
    answer = await asyncio.wait_for(reader.read(), 10)  # (all of it: the connection closes)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 505 HTTP Version Not Supported\r\n")
    fields = head.lower()
    assert b"\r\nconnection: close" in fields and b"\r\nx-should-retry: false" in fields
    error = orjson.loads(body)["error"]
    assert (error["type"], error["code"]) == ("api_error", "http_version_not_supported")
    assert b"HTTP/1.1 200" not in answer  # (the probe after it is not served)


@pytest.mark.parametrize("keep_alive", [True, False])
@pytest.mark.parametrize("front_kind", front.FRONTS)
async def test_an_http_1_0_request_with_transfer_encoding_is_400_and_closes(
        proxy: Any, monkeypatch: Any, front_kind: str, keep_alive: bool) -> None:
    """HTTP/1.0 has no Transfer-Encoding: RFC 9112 §6.1 asks a server to treat such a request's
    framing as faulty and to close the connection after it. It was served as a chunked body and,
    with `Connection: keep-alive`, the bytes after it read as the next request — which a server
    in front that frames HTTP/1.0 by Content-Length alone (Go's ignores the header) reads as this
    body: request smuggling. It is a 400 `malformed_request`, as nginx answers, and the
    connection closes, the request after it unread."""
    monkeypatch.setenv(front.FRONT_ENV, front_kind)
    client = await proxy(load_config(None))
    sent = request(JSON, *([b"Connection: keep-alive"] if keep_alive else []),
                   b"Transfer-Encoding: chunked", body=chunked(PLAIN), version=b"1.0")
    got = await answers(client, sent, 1, False)
    (status, headers, body), after = got
    error = orjson.loads(body)["error"]
    assert (status, error["type"], error["code"]) == (400, "invalid_request_error",
                                                       "malformed_request")
    assert "HTTP/1.0" in error["message"]
    # (an HTTP/1.0 answer without `Connection: keep-alive` says the connection closes)
    assert dict(headers).get("connection", b"close") == b"close" and after == "closed"


# name: a header the gateway reads whose value is not UTF-8 (a Latin-1 é): (status, code)
UNDECODABLE_HEADERS = {b"x-portkey-provider": (400, "unknown_provider"),
                       b"x-portkey-config": (400, None),
                       b"x-portkey-virtual-key": (400, None),
                       b"x-portkey-custom-host": (400, None)}


@pytest.mark.parametrize("name", list(UNDECODABLE_HEADERS))
@pytest.mark.parametrize("front_kind", front.FRONTS)
async def test_a_refusal_quoting_a_header_that_is_not_utf8_is_that_refusal(
        proxy: Any, monkeypatch: Any, caplog: Any, front_kind: str, name: bytes) -> None:
    """aiohttp keeps a header's bytes that are not UTF-8 as lone surrogates (the lean front
    hands such a head to it), and the 400 that quotes the value (`Unknown provider 'caf…'`)
    could not be serialised: the client got a 500 `internal_error` (which the SDKs retry) and
    the log a traceback. It is the 400, the bad byte shown as U+FFFD."""
    monkeypatch.setenv(front.FRONT_ENV, front_kind)
    client = await proxy(load_config(None))
    (status, _, body), _ = await answers(client, request(JSON, name + b": caf\xe9"), 1, False)
    error = orjson.loads(body)["error"]
    assert (status, error["type"]) == (400, "invalid_request_error")
    code = UNDECODABLE_HEADERS[name][1]
    assert code is None or error["code"] == code
    assert "caf\ufffd" in error["message"]
    assert not [r for r in caplog.records if r.exc_info]


def test_an_errors_body_shows_lone_surrogates_as_replacement_characters() -> None:
    err = ProxyError("Unknown provider 'caf\udce9' (\ud800)", param="x-\udce9", status=400)
    assert orjson.loads(err.body())["error"] | {"type": None} == {
        "message": "Unknown provider 'caf\ufffd' (\ufffd)", "type": None, "param": "x-\ufffd",
        "code": None}


@pytest.mark.parametrize("front_kind", front.FRONTS)
async def test_a_404_names_the_path_as_sent(proxy: Any, monkeypatch: Any,
                                           front_kind: str) -> None:
    """A path whose slash came percent-encoded (a client that quoted its whole path) is not the
    chat route, but the 404 named it decoded: 'Unknown path: POST /v1/chat/completions', the
    very path the client meant, which says the route does not exist. It names the path as
    sent (never the query, which may hold a key)."""
    monkeypatch.setenv(front.FRONT_ENV, front_kind)
    client = await proxy(load_config(None))
    sent = request(JSON, path=b"/v1%2Fchat/completions?key=" + KEY)
    (status, _, body), _ = await answers(client, sent, 1, False)
    error = orjson.loads(body)["error"]
    assert (status, error["code"]) == (404, "unknown_url")
    assert error["message"] == "Unknown path: POST /v1%2Fchat/completions"
