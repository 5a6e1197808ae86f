"""The lean HTTP/1.1 front (server/front.py), over raw sockets: what it serves itself, what it
hands to aiohttp, and HTTP/1.1 connection behaviour (keep-alive, pipelining, close, idle)."""

from __future__ import annotations

import asyncio
import builtins
import gzip
import threading
import zlib
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproxy.config import load_config, parse_config
from streamproxy.server import front
from streamproxy.server.errors import MAX_TRACE_ID_CHARS
from tests.helpers import header_lines

BODY = orjson.dumps({"model": "mock/tokens=2", "stream": True,
                     "messages": [{"role": "user", "content": "hi"}]})


def chat_request(body: bytes = BODY, extra: bytes = b"") -> bytes:
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n%b\r\n"
            % (len(body), extra)) + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response: status, headers (lower-cased names), body (de-chunked)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head[:-4].decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
        return status, headers, body
    return status, headers, await reader.readexactly(int(headers.get("content-length", 0)))


@pytest.fixture
def served(monkeypatch: Any) -> list[object]:
    """The requests the lean front answered itself (the `Server` header no longer tells: both
    fronts name the proxy alike)."""
    served: list[object] = []
    serve = front.Front.serve

    async def counting(self: front.Front, ex: front.LeanExchange,
                       admitted: front.Admitted = None) -> None:
        served.append(ex)
        await serve(self, ex, admitted)

    monkeypatch.setattr(front.Front, "serve", counting)
    return served


@pytest.fixture
async def lean(default_proxy: Any, monkeypatch: Any, served: list[object]) -> Any:
    """The embedded default (in-process mock) on the lean front; `served` counts the requests
    the front answered itself."""
    monkeypatch.delenv(front.FRONT_ENV, raising=False)
    client = await default_proxy()
    client.served = served
    return client


async def connect(client: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(client.host, client.port)


async def test_keep_alive_serves_requests_one_after_another(lean: Any) -> None:
    reader, writer = await connect(lean)
    for _ in range(3):
        writer.write(chat_request())
        status, headers, body = await read_response(reader)
        assert status == 200 and headers["content-type"].startswith("text/event-stream")
        assert body.endswith(b"data: [DONE]\n\n") and b'"content":"Hello"' in body
        assert "date" in headers and headers["x-portkey-provider"] == "mock"
    assert len(lean.served) == 3
    writer.close()


@pytest.mark.parametrize("model", ["mock/tokens=3,tps=500", "mock/tokens=3"])
async def test_the_last_frames_and_the_body_end_leave_in_one_write(lean: Any, monkeypatch: Any,
                                                                    model: str) -> None:
    # Paced: the read that ends the stream writes [DONE] and the end together. Unpaced, the
    # whole stream is there before the commit: head, frames and end are one write.
    writes: list[bytes] = []
    write = front.Connection.write

    def recording(self: front.Connection, data: bytes) -> None:
        writes.append(data)
        write(self, data)

    monkeypatch.setattr(front.Connection, "write", recording)
    reader, writer = await connect(lean)
    body = orjson.dumps({"model": model, "stream": True,
                         "messages": [{"role": "user", "content": "hi"}]})
    for _ in range(2):  # the connection is reusable afterwards
        writes.clear()
        writer.write(chat_request(body))
        status, _, answer = await read_response(reader)
        assert status == 200 and answer.endswith(b"data: [DONE]\n\n")
        assert writes[-1].endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
        assert b"0\r\n\r\n" not in b"".join(writes[:-1])
        assert (len(writes) == 1) == ("tps" not in model)
    writer.close()


async def test_pipelined_requests_are_answered_in_order(lean: Any) -> None:
    reader, writer = await connect(lean)
    small = orjson.dumps({"model": "mock/tokens=1", "messages": [{"role": "user", "content": "a"}]})
    writer.write(chat_request() + chat_request(small) + chat_request())
    answers = [await read_response(reader) for _ in range(3)]
    assert [a[0] for a in answers] == [200, 200, 200]
    assert answers[0][1]["content-type"].startswith("text/event-stream")
    assert orjson.loads(answers[1][2])["object"] == "chat.completion"
    assert answers[2][2].endswith(b"data: [DONE]\n\n")
    writer.close()


async def test_a_request_arriving_byte_by_byte(lean: Any) -> None:
    reader, writer = await connect(lean)
    for byte in chat_request():
        writer.write(bytes([byte]))
        await writer.drain()
    status, _, body = await read_response(reader)
    assert status == 200 and body.endswith(b"data: [DONE]\n\n")
    assert len(lean.served) == 1
    writer.close()


async def test_connection_close_is_honoured(lean: Any) -> None:
    reader, writer = await connect(lean)
    writer.write(chat_request(extra=b"Connection: close\r\n"))
    status, headers, _ = await read_response(reader)
    assert status == 200 and headers["connection"] == "close"
    assert await asyncio.wait_for(reader.read(), 5) == b""  # the proxy closed it
    writer.close()


async def test_other_routes_go_to_aiohttp_on_the_same_connection(lean: Any) -> None:
    reader, writer = await connect(lean)
    writer.write(chat_request())
    assert (await read_response(reader))[0] == 200
    writer.write(b"GET /v1/models HTTP/1.1\r\nHost: t\r\n\r\n")
    status, _, body = await read_response(reader)
    assert status == 200  # (aiohttp's: `lean.served` below; both fronts name themselves alike)
    assert any(m["id"].startswith("mock/") for m in orjson.loads(body)["data"])
    writer.write(chat_request())  # aiohttp owns the connection now, and serves chat too
    status, _, body = await read_response(reader)
    assert status == 200 and body.endswith(b"data: [DONE]\n\n")
    assert len(lean.served) == 1
    writer.close()


@pytest.mark.parametrize("request_bytes", [
    b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
    chat_request().replace(b"HTTP/1.1", b"HTTP/1.0", 1),
    chat_request().replace(b"POST /v1/chat/completions", b"POST /v1/chat/completions?x=1", 1),
    (b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"%x\r\n%b\r\n0\r\n\r\n" % (len(BODY), BODY)),
    chat_request(extra=b"X-Trace: \xff\xfe\r\n"),  # not UTF-8
], ids=["healthz", "http1.0", "query", "chunked-body", "latin1-header"])
async def test_what_the_front_does_not_serve_aiohttp_answers(lean: Any,
                                                             request_bytes: bytes) -> None:
    reader, writer = await connect(lean)
    writer.write(request_bytes)
    status, _, body = await read_response(reader)
    assert status == 200, body
    assert lean.served == []
    writer.close()


@pytest.mark.parametrize("end", [b"\n\r\n", b"\r\n\r\x0c\n", b"\r\n\x0c\r\n", b"\r\n\r\xc3\n",
                                 b"\r\n", b"\r\n \r\n", b"\r\n\t\r\n"])
async def test_a_head_that_cannot_end_is_400_byte_by_byte(lean: Any, end: bytes) -> None:
    """A head whose end is not CRLF CRLF (nor LF LF), or that misses its empty line (the body
    right after the last field, or a blank-looking line of whitespace): aiohttp's parser
    answers 400 at the bad line; the lean front, finding no end, waited for the head timeout
    (a minute) and answered 408. It hands such a head over as it arrives, whole or a byte at
    a time."""
    reader, writer = await connect(lean)
    for byte in chat_request().replace(b"\r\n\r\n", end, 1):
        writer.write(bytes([byte]))
        await writer.drain()
    head = await asyncio.wait_for(reader.read(), 10)  # (the 400 closes the connection)
    assert head.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request")
    assert lean.served == []
    writer.close()


@pytest.mark.parametrize("control", [b"\x01", b"\x08", b"\x0b", b"\x1b", b"\x7f"])
async def test_a_control_byte_in_a_header_value_is_400(lean: Any, control: bytes) -> None:
    """A control byte other than HTAB is invalid in a field value (RFC 9110 §5.5): aiohttp's
    parser answers 400, and so does the lean front, by handing the head over — it served it."""
    reader, writer = await connect(lean)
    writer.write(chat_request(extra=b"X-Trace: a" + control + b"b\r\n"))
    head = await asyncio.wait_for(reader.read(), 10)  # (the 400 closes the connection)
    assert head.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request")
    assert lean.served == []
    writer.close()


@pytest.mark.parametrize("hosts", [b"", b"Host: t\r\nHost: u\r\n", b"Host: t\r\nhost: t\r\n"],
                         ids=["none", "two", "the-same-twice"])
async def test_a_request_without_exactly_one_host_is_400(lean: Any, hosts: bytes) -> None:
    """RFC 9112 §3.2: an HTTP/1.1 request with no Host, or more than one, is answered 400 —
    aiohttp's answer, where the front served it."""
    reader, writer = await connect(lean)
    writer.write(chat_request().replace(b"Host: t\r\n", hosts, 1))
    head = await asyncio.wait_for(reader.read(), 10)  # (the 400 closes the connection)
    assert head.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request") and b"'Host'" in head
    assert lean.served == []
    writer.close()


@pytest.mark.parametrize("digits", [b"0" * 4990 + b"%d" % len(BODY), b"9" * 5000],
                         ids=["zero-padded", "huge"])
async def test_a_content_length_of_thousands_of_digits_is_answered(lean: Any,
                                                                    digits: bytes) -> None:
    """int() refuses over 4,300 digits: such a head goes to aiohttp, which answers it, where
    the front's ValueError dropped the connection unanswered."""
    reader, writer = await connect(lean)
    writer.write(chat_request().replace(b"Content-Length: %d" % len(BODY),
                                        b"Content-Length: " + digits))
    if digits.startswith(b"0"):
        status = (await read_response(reader))[0]
        assert status == 200
    else:
        head = await asyncio.wait_for(reader.read(), 10)
        assert head.startswith(b"HTTP/1.") and b" 400 " in head.split(b"\r\n", 1)[0]
    assert lean.served == []
    writer.close()


@pytest.mark.parametrize("encoding, encode", [("gzip", gzip.compress),
                                               ("deflate", zlib.compress)])
@pytest.mark.parametrize("front_kind", ["lean", "aiohttp"])
async def test_an_encoded_body_is_decoded(proxy: Any, monkeypatch: Any, front_kind: str,
                                          encoding: str, encode: Any) -> None:
    """Content-Encoding: the lean front hands the request to aiohttp, which decodes it."""
    monkeypatch.setenv(front.FRONT_ENV, front_kind)
    client = await proxy(load_config(None))
    reader, writer = await connect(client)
    writer.write(chat_request(encode(BODY), extra=b"Content-Encoding: %b\r\n"
                              % encoding.encode()))
    status, _, body = await read_response(reader)
    assert status == 200, body
    assert body.endswith(b"data: [DONE]\n\n")
    writer.close()


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize("front_kind", ["lean", "aiohttp"])
async def test_a_body_that_does_not_decode_is_400(proxy: Any, monkeypatch: Any, front_kind: str,
                                                  encoding: str) -> None:
    """The client's mistake, in OpenAI's shape: it was an unhandled error's 500."""
    monkeypatch.setenv(front.FRONT_ENV, front_kind)
    client = await proxy(load_config(None))
    reader, writer = await connect(client)
    writer.write(chat_request(b"\x1f\x8b not " + BODY, extra=b"Content-Encoding: %b\r\n"
                              % encoding.encode()))
    status, _, body = await read_response(reader)
    assert status == 400 and orjson.loads(body)["error"]["code"] == "invalid_encoding"
    writer.close()


@pytest.mark.parametrize("front_kind", ["lean", "aiohttp"])
async def test_a_decompression_bomb_is_413_on_its_decoded_size(proxy: Any, monkeypatch: Any,
                                                               front_kind: str) -> None:
    monkeypatch.setenv(front.FRONT_ENV, front_kind)
    config = parse_config({"server": {"max_body_bytes": 100_000}, "default_provider": "mock",
                           "providers": {"mock": {"type": "mock"}}}, "<test>")
    client = await proxy(config)
    bomb = gzip.compress(b'{"messages": "' + b" " * 50_000_000 + b'"}')
    assert len(bomb) < 100_000
    reader, writer = await connect(client)
    writer.write(chat_request(bomb, extra=b"Content-Encoding: gzip\r\n"))
    status, _, body = await read_response(reader)
    assert status == 413 and orjson.loads(body)["error"]["code"] == "request_too_large"
    writer.close()


@pytest.mark.parametrize(("server", "request_bytes", "status", "code"), [
    ({"max_body_bytes": 1000},
     chat_request(orjson.dumps({"messages": [{"role": "user", "content": "x" * 2000}]})),
     413, "request_too_large"),
    ({"max_header_bytes": 200}, chat_request(extra=b"X-Long: " + b"a" * 300 + b"\r\n"),
     431, "request_header_fields_too_large"),
    # 200 bytes as sent, 201 as "name: value", which the limit measures
    ({"max_header_bytes": 200}, chat_request(extra=b"X-Long:" + b"a" * 193 + b"\r\n"),
     431, "request_header_fields_too_large"),
], ids=["body", "header", "header-without-a-space"])
async def test_over_a_limit_aiohttp_answers_in_openai_shape(
        proxy: Any, served: list[object], server: dict[str, int], request_bytes: bytes,
        status: int, code: str) -> None:
    config = parse_config({"server": server, "default_provider": "mock",
                           "providers": {"mock": {"type": "mock"}}}, "<test>")
    client = await proxy(config)
    reader, writer = await connect(client)
    writer.write(request_bytes)
    got, _, body = await read_response(reader)
    assert got == status and served == []
    assert orjson.loads(body)["error"]["code"] == code
    writer.close()


async def test_errors_are_openai_shaped_and_keep_the_connection(lean: Any) -> None:
    reader, writer = await connect(lean)
    writer.write(chat_request(b"{not json"))
    status, headers, body = await read_response(reader)
    assert status == 400 and headers["content-type"].startswith("application/json")
    assert set(orjson.loads(body)["error"]) == {"message", "type", "param", "code"}
    writer.write(chat_request())
    assert (await read_response(reader))[0] == 200
    assert len(lean.served) == 2
    writer.close()


@pytest.mark.parametrize("front_kind", ["lean", "aiohttp"])
async def test_json_answers_are_typed_alike_on_both_fronts(proxy: Any, monkeypatch: Any,
                                                           front_kind: str) -> None:
    """The lean front typed its JSON answers `application/json; charset=utf-8`, aiohttp's
    (the same route's, and every refusal the lean front hands it) `application/json`."""
    monkeypatch.setenv(front.FRONT_ENV, front_kind)
    client = await proxy(load_config(None))
    reader, writer = await connect(client)
    plain = orjson.dumps({**orjson.loads(BODY), "stream": False})
    for body, status in ((plain, 200), (b"{not json", 400),
                         (orjson.dumps({"messages": []}), 400)):
        writer.write(chat_request(body))
        got, headers, _ = await read_response(reader)
        assert (got, headers["content-type"]) == (status, "application/json")
    writer.close()


async def test_an_error_answer_that_fails_is_logged_and_the_connection_closed(
        lean: Any, monkeypatch: Any, caplog: pytest.LogCaptureFixture) -> None:
    async def broken(self: front.LeanExchange, err: Any) -> None:
        raise RuntimeError("the error reply broke")

    monkeypatch.setattr(front.LeanExchange, "fail", broken)
    reader, writer = await connect(lean)
    writer.write(chat_request(b"{not json"))
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, not left hanging
    assert "could not answer POST /v1/chat/completions" in caplog.text
    assert "the error reply broke" in caplog.text
    writer.close()


async def test_an_idle_connection_closes_after_the_keep_alive_timeout(
        lean: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(front, "KEEPALIVE_TIMEOUT", 0.2)
    reader, writer = await connect(lean)
    writer.write(chat_request())
    assert (await read_response(reader))[0] == 200
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_the_aiohttp_front_is_still_selectable(default_proxy: Any, monkeypatch: Any,
                                                     served: list[object]) -> None:
    monkeypatch.setenv(front.FRONT_ENV, "aiohttp")
    client = await default_proxy()
    reader, writer = await connect(client)
    writer.write(chat_request())
    status, _, body = await read_response(reader)
    assert status == 200 and served == []
    assert body.endswith(b"data: [DONE]\n\n")
    writer.close()
    assert load_config(None).server.front == "lean"


def test_the_front_setting_is_validated() -> None:
    from streamproxy.config import ConfigError

    mock = {"mock": {"type": "mock"}}
    config = parse_config({"server": {"front": "aiohttp"}, "providers": mock}, "<t>")
    assert config.server.front == "aiohttp"
    with pytest.raises(ConfigError, match=r"server\.front: must be one of aiohttp, lean"):
        parse_config({"server": {"front": "nginx"}, "providers": mock}, "<t>")


def bare_front(max_headers: int, max_field: int, max_body: int) -> front.Front:
    """A Front for `parse_head` alone, which reads only its limits."""
    f = front.Front.__new__(front.Front)
    f.max_headers, f.max_field, f.max_body = max_headers, max_field, max_body
    return f


@settings(max_examples=1500, deadline=None)
@given(st.just(front.CHAT_LINE) | st.sampled_from([front.CHAT_LINE + b" ", b"GET / HTTP/1.1"]),
       st.sampled_from([b"\r\nHost: t", b""]), header_lines(),
       st.sampled_from([b"\r\nContent-Length: 5", b"\r\ncontent-length:\t12", b""]),
       st.integers(0, 12) | st.just(128), st.integers(10, 200) | st.just(8190),
       st.integers(0, 20) | st.just(1000))
def test_the_one_pass_head_reading_agrees_with_the_line_by_line_rules(
        first: bytes, host: bytes, lines: bytes, length: bytes, max_headers: int,
        max_field: int, max_body: int) -> None:
    """`parse_head` reads a head of plain lines in one pass: whatever the head and the limits,
    it gives what reading it line by line does (the same headers in order, or the hand-off)."""
    head = first + host + lines + length
    f = bare_front(max_headers, max_field, max_body)

    def seen(parsed: tuple[Any, int, bool] | None) -> object:
        return parsed if parsed is None else (list(parsed[0].items()), *parsed[1:])

    assert seen(f.parse_head(head)) == seen(f.parse_head_exactly(head))


def test_plain_heads_are_read_in_one_pass(monkeypatch: Any) -> None:
    """The usual head does not need the line-by-line reading."""
    monkeypatch.setattr(front.Front, "parse_head_exactly", None)
    f = bare_front(128, 8190, 1000)
    headers, length, close = f.parse_head(
        front.CHAT_LINE + b"\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\n"
        b"Content-Length: 123\r\nAuthorization: Bearer sk-xyz\r\nConnection: keep-alive")
    assert length == 123 and not close and headers["content-type"] == "application/json"


@pytest.mark.parametrize("first, last", [(b"close", b"keep-alive"), (b"keep-alive", b"close")])
def test_a_close_in_any_connection_header_closes(first: bytes, last: bytes) -> None:
    """Repeated Connection headers are one list: `close` in any of them closes, on both the
    one-pass and the line-by-line reading."""
    head = (front.CHAT_LINE + b"\r\nHost: t\r\nConnection: " + first
            + b"\r\nContent-Length: 2\r\nConnection: " + last)
    f = bare_front(128, 8190, 1000)
    for parse in (f.parse_head, f.parse_head_exactly):
        parsed = parse(head)
        assert parsed is not None and parsed[2] is True


@pytest.mark.parametrize("value, closes", [
    (b"closed", False), (b"keep-alive, x-close", False), (b"close x", False), (b"close;", False),
    (b"Close", True), (b"keep-alive,\tclose ", True), (b"x-close, close", True)])
def test_only_a_close_token_closes(value: bytes, closes: bool) -> None:
    """As aiohttp's parser reads a Connection list: a token that merely contains `close` is
    another option (the lean front closed after `Connection: closed`, aiohttp kept it open)."""
    head = front.CHAT_LINE + b"\r\nHost: t\r\nContent-Length: 2\r\nConnection: " + value
    f = bare_front(128, 8190, 1000)
    for parse in (f.parse_head, f.parse_head_exactly):
        parsed = parse(head)
        assert parsed is not None and parsed[2] is closes


@pytest.mark.parametrize("front_kind", ["lean", "aiohttp"])
async def test_a_connection_option_naming_close_keeps_the_connection(
        proxy: Any, monkeypatch: Any, front_kind: str) -> None:
    monkeypatch.setenv(front.FRONT_ENV, front_kind)
    client = await proxy(load_config(None))
    reader, writer = await connect(client)
    writer.write(chat_request(extra=b"Connection: keep-alive, x-close-notify\r\n"))
    status, headers, _ = await read_response(reader)
    assert status == 200 and "connection" not in headers
    writer.write(chat_request())
    assert (await read_response(reader))[0] == 200
    writer.close()


async def serve_in_turn(reader: Any, writer: Any, count: int) -> None:
    """`count` keep-alive requests on one connection, each answered 200 before the next."""
    for _ in range(count):
        writer.write(chat_request())
        status, _, _ = await read_response(reader)
        assert status == 200


async def test_a_served_request_runs_no_import_statement(lean: Any, monkeypatch: Any) -> None:
    # An `import` inside a function runs on every call (~7k instructions even when the module
    # is loaded): none belongs on the per-request path.
    reader, writer = await connect(lean)
    writer.write(chat_request())
    await read_response(reader)  # (a first request may load what it lazily needs)
    imported: list[str] = []
    real_import = builtins.__import__
    loop_thread = threading.get_ident()

    def recording(name: str, *args: Any, **kwargs: Any) -> Any:
        # (the loop's thread only: a daemon thread an earlier test left, a credentials lookup
        # or a storage writer, may import while these requests are served)
        if threading.get_ident() == loop_thread:
            imported.append(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", recording)
    await serve_in_turn(reader, writer, 2)
    monkeypatch.undo()
    assert imported == []
    writer.close()


async def test_keep_alive_requests_arm_no_timer_of_their_own(lean: Any, monkeypatch: Any) -> None:
    # The connection's one timer (keep-alive, read timeouts) stays armed while a request is
    # served and only checks the time when it fires: a request neither cancels nor re-arms it.
    reader, writer = await connect(lean)
    writer.write(chat_request())
    await read_response(reader)
    loop = asyncio.get_running_loop()
    armed: list[float] = []
    call_at = loop.call_at

    def recording(when: float, callback: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(callback, "__func__", None) is front.Connection._check_timeouts:
            armed.append(when)
        return call_at(when, callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", recording)
    await serve_in_turn(reader, writer, 3)
    monkeypatch.undo()
    assert armed == []
    writer.close()


@pytest.mark.parametrize("front_kind", ["lean", "aiohttp"])
async def test_an_over_long_request_target_is_414(proxy: Any, monkeypatch: Any,
                                                  front_kind: str) -> None:
    """RFC 9110 §15.5.15: a target longer than the server will read is 414 URI Too Long; it
    was answered 431, the status of over-large header fields, which the target is not."""
    monkeypatch.setenv(front.FRONT_ENV, front_kind)
    config = parse_config({"server": {"max_header_bytes": 200}, "default_provider": "mock",
                           "providers": {"mock": {"type": "mock"}}}, "<test>")
    client = await proxy(config)
    reader, writer = await connect(client)
    writer.write(chat_request().replace(b"/v1/chat/completions",
                                        b"/v1/chat/completions?x=" + b"a" * 300, 1))
    status, headers, body = await read_response(reader)
    assert status == 414 and headers["content-type"] == "application/json"
    assert orjson.loads(body)["error"]["code"] == "uri_too_long"
    writer.write(chat_request())  # (the head was read whole: the connection stays)
    assert (await read_response(reader))[0] == 200
    writer.close()


@pytest.mark.parametrize("codings", [b"gzip, chunked", b"deflate,chunked",
                                     b"x-custom;p=1, chunked"])
@pytest.mark.parametrize("front_kind", ["lean", "aiohttp"])
async def test_a_transfer_coding_besides_chunked_is_501(proxy: Any, monkeypatch: Any,
                                                        front_kind: str, codings: bytes) -> None:
    """RFC 9112 §6.1: a transfer coding the server does not understand is 501. aiohttp
    de-chunks the body and passes the rest of the codings' bytes on as the body: a gzipped
    body was answered 400 invalid_json, as if the client had sent bad JSON. A 501's type is a
    server error's, as its status says (it was invalid_request_error), and it says
    `x-should-retry: false`: the SDKs retry a 5xx, and this one would come again alike."""
    monkeypatch.setenv(front.FRONT_ENV, front_kind)
    client = await proxy(load_config(None))
    reader, writer = await connect(client)
    zipped = gzip.compress(BODY)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: %b\r\n"
                 b"Content-Type: application/json\r\n\r\n%x\r\n%b\r\n0\r\n\r\n"
                 % (codings, len(zipped), zipped))
    status, headers, body = await read_response(reader)
    assert status == 501 and headers["content-type"] == "application/json"
    error = orjson.loads(body)["error"]
    assert error["code"] == "unsupported_transfer_coding" and error["param"] is None
    assert error["type"] == "api_error" and headers["x-should-retry"] == "false"
    writer.write(chat_request())  # (the chunked framing is understood: the connection stays)
    assert (await read_response(reader))[0] == 200
    writer.close()


@pytest.mark.parametrize("trace", [b"caf\xe9", b"\xff\xfe"])
@pytest.mark.parametrize("front_kind", ["lean", "aiohttp"])
async def test_a_trace_id_that_is_not_utf8_is_refused(proxy: Any, monkeypatch: Any,
                                                      front_kind: str, trace: bytes,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """aiohttp writes header values as UTF-8 and drops what is not text: a trace id of
    latin-1 bytes (what requests and Node send for 'café') came back as 'caf', or empty, and
    the access log had a third spelling ('caf?'); the id the client chose to find its
    request by matched neither. The bytes cannot be echoed as they came, so the request is
    refused, 400, before anything is spent; its answer and its log line share a new id."""
    monkeypatch.setenv(front.FRONT_ENV, front_kind)
    client = await proxy(load_config(None))
    reader, writer = await connect(client)
    caplog.set_level("INFO", "streamproxy.access")
    writer.write(chat_request(extra=b"x-portkey-trace-id: " + trace + b"\r\n"))
    status, headers, body = await read_response(reader)
    assert status == 400 and orjson.loads(body)["error"]["code"] == "invalid_trace_id"
    trace_id = headers["x-portkey-trace-id"]
    assert len(trace_id) == 32 and headers["x-request-id"] == trace_id
    line = orjson.loads(next(r.getMessage() for r in caplog.records
                             if r.name == "streamproxy.access"))
    assert line["trace_id"] == trace_id and line["status"] == 400
    writer.write(b"GET /v1/models HTTP/1.1\r\nHost: t\r\nx-portkey-trace-id: " + trace
                 + b"\r\n\r\n")  # (another route's answer has the header too)
    status, headers, _ = await read_response(reader)
    assert status == 400 and len(headers["x-portkey-trace-id"]) == 32
    writer.write(chat_request(extra="x-portkey-trace-id: café\r\n".encode()))  # UTF-8: echoed
    status, headers, _ = await read_response(reader)
    assert status == 200 and headers["x-portkey-trace-id"] == "café"
    writer.close()


@pytest.mark.parametrize("first", [chat_request(orjson.dumps({**orjson.loads(BODY),
                                                              "stream": False})),
                                   b"GET /v1/models HTTP/1.1\r\nHost: t\r\n\r\n"],
                         ids=["chat", "models"])
@pytest.mark.parametrize("junk", [b"\x00\x01junk\r\n\r\n", b"hello world\r\n\r\n"])
@pytest.mark.parametrize("front_kind", ["lean", "aiohttp"])
async def test_junk_after_a_whole_request_is_answered_after_it(
        proxy: Any, monkeypatch: Any, front_kind: str, first: bytes, junk: bytes) -> None:
    """Bytes that are no request, arriving with a whole one before them: that one is
    answered, then the junk is 400 and the connection closes. aiohttp's parser, failing on
    the junk, dropped the requests it had parsed from the same read: the client got only the
    400 (on the lean front too, for a request it had handed over)."""
    monkeypatch.setenv(front.FRONT_ENV, front_kind)
    client = await proxy(load_config(None))
    reader, writer = await connect(client)
    writer.write(first + first + junk)  # (two: pipelined requests before the junk too)
    for _ in range(2):
        status, _, body = await read_response(reader)
        assert status == 200 and orjson.loads(body)["object"] in ("list", "chat.completion")
    rest = await asyncio.wait_for(reader.read(), 10)  # (the 400 closes the connection)
    assert rest.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request")
    writer.close()


@pytest.mark.parametrize("length", [2000, 8000])
@pytest.mark.parametrize("front_kind", ["lean", "aiohttp"])
async def test_a_trace_id_too_long_to_echo_is_refused(proxy: Any, monkeypatch: Any,
                                                      front_kind: str, length: int,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """The trace id is echoed twice (x-portkey-trace-id, x-request-id): one near the 8 KB
    field limit made a response head over 16 KB, which Node's HTTP client (its default
    limit) fails to read, so the client saw a parse error, not its answer. One over
    MAX_TRACE_ID_CHARS is refused, 400 naming the header, with a new id, as one that is not
    UTF-8 is; one at the limit is echoed."""
    monkeypatch.setenv(front.FRONT_ENV, front_kind)
    client = await proxy(load_config(None))
    reader, writer = await connect(client)
    caplog.set_level("INFO", "streamproxy.access")
    writer.write(chat_request(extra=b"x-portkey-trace-id: " + b"t" * length + b"\r\n"))
    status, headers, body = await read_response(reader)
    error = orjson.loads(body)["error"]
    assert status == 400 and error["code"] == "invalid_trace_id", (status, body[:200])
    assert error["param"] == "x-portkey-trace-id"
    trace_id = headers["x-portkey-trace-id"]
    assert len(trace_id) == 32 and headers["x-request-id"] == trace_id
    line = orjson.loads(next(r.getMessage() for r in caplog.records
                             if r.name == "streamproxy.access"))
    assert line["trace_id"] == trace_id and line["status"] == 400
    writer.write(b"GET /v1/models HTTP/1.1\r\nHost: t\r\nx-portkey-trace-id: " + b"t" * length
                 + b"\r\n\r\n")  # (another route's answer is not made too long either)
    status, headers, _ = await read_response(reader)
    assert status == 400 and len(headers["x-portkey-trace-id"]) == 32
    most = "t" * MAX_TRACE_ID_CHARS
    writer.write(chat_request(extra=f"x-portkey-trace-id: {most}\r\n".encode()))
    status, headers, _ = await read_response(reader)
    assert status == 200 and headers["x-portkey-trace-id"] == headers["x-request-id"] == most
    writer.close()
