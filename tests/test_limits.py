"""Admission control and input limits: each a clear 4xx/503 in OpenAI's error shape (header
limits too, beyond aiohttp's parser backstop); the SSE decoder's cap bounds what an upstream can
make us buffer."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproxy.decode.sse import SSEDecoder
from streamproxy.errors import BufferOverflow, InvalidRequest
from streamproxy.openai_api.request import MAX_FALLBACK_MODELS, Limits, parse_chat_request
from streamproxy.server.admission import ADMISSION
from streamproxy.server.app import create_app, http_limits
from streamproxy.server.front import FRONT_ENV
from tests.conftest import ProxyTestServer
from tests.helpers import collect, make_config, sse_chunks

USER = [{"role": "user", "content": "hi"}]


def mock_config(**server: Any) -> Any:
    return make_config({"mock": {"type": "mock", "default_model": "fast"}}, default="mock",
                       server=server)


def error_of(body: bytes) -> dict[str, Any]:
    obj = orjson.loads(body)
    assert set(obj) == {"error"} and set(obj["error"]) == {"message", "type", "param", "code"}
    return obj["error"]


async def test_admission_refuses_beyond_the_limit_with_503(proxy: Any) -> None:
    client = await proxy(mock_config(max_concurrent_streams=2))
    admission = client.server.app[ADMISSION]
    slow = {"model": "fast:tokens=100,tps=20", "stream": True, "messages": USER}
    held = [await client.post("/v1/chat/completions", json=slow) for _ in range(2)]
    for resp in held:
        assert resp.status == 200
        await resp.content.readany()  # streaming
    assert admission.active == 2
    refused = await client.post("/v1/chat/completions", json=slow)
    assert refused.status == 503
    assert refused.headers["retry-after"] == "1"
    err = error_of(await refused.read())
    assert (err["type"], err["code"]) == ("api_error", "overloaded")
    # What must keep answering when full does.
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/v1/models")).status == 200
    assert (await client.get("/metrics")).status == 200
    for resp in held:
        resp.close()  # client disconnects free the slots
    for _ in range(200):
        if admission.active == 0:
            break
        await asyncio.sleep(0.01)
    assert admission.active == 0
    resp = await client.post("/v1/chat/completions", json={**slow, "model": "fast:tokens=2"})
    assert resp.status == 200
    assert collect(sse_chunks(await resp.read())).done


STALLED_UPLOADS = [
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b'5\r\n{"mod',
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
    b'{"mod',
]


@pytest.mark.parametrize("front_kind", ["lean", "aiohttp"])
async def test_uploads_still_arriving_hold_no_admission_slot(proxy: Any, monkeypatch: Any,
                                                             front_kind: str) -> None:
    monkeypatch.setenv(FRONT_ENV, front_kind)
    client = await proxy(mock_config(max_concurrent_streams=2))
    stalled = [await asyncio.open_connection(client.host, client.port)
               for _ in range(2 * len(STALLED_UPLOADS))]
    try:
        for (_, writer), upload in zip(stalled, STALLED_UPLOADS * 2, strict=True):
            writer.write(upload)
            await writer.drain()
        await asyncio.sleep(0.1)  # their heads are read, their handlers wait for the body
        assert client.server.app[ADMISSION].active == 0
        resp = await client.post("/v1/chat/completions",
                                 json={"model": "fast:tokens=2", "messages": USER})
        assert resp.status == 200, await resp.text()
    finally:
        for _, writer in stalled:
            writer.close()


@pytest.mark.parametrize("front_kind", ["lean", "aiohttp"])
async def test_expect_100_continue_over_the_limit_is_413_at_once(
        proxy: Any, monkeypatch: Any, front_kind: str) -> None:
    """The client is told before it sends the body (RFC 9110 §10.1.1), not after; on the
    stored completion's update route too, which sent `100 Continue`."""
    monkeypatch.setenv(FRONT_ENV, front_kind)
    client = await proxy(mock_config(max_body_bytes=2000))
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n")
    for path in (b"/v1/chat/completions/chatcmpl-x", b"/v1/chat/completions"):
        reader, writer = await asyncio.open_connection(client.host, client.port)
        try:
            writer.write(head.replace(b"/v1/chat/completions", path, 1) % 2001)
            answer = await asyncio.wait_for(reader.read(4096), 5)
            assert answer.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in answer
            assert b"Connection: close" in answer
            assert error_of(answer.split(b"\r\n\r\n", 1)[1])["code"] == "request_too_large"
        finally:
            writer.close()
    # Within the limit: 100 Continue, then the answer.
    body = orjson.dumps({"model": "fast:tokens=1", "messages": USER})
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(head % len(body))
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == (
            b"HTTP/1.1 100 Continue\r\n\r\n")
        writer.write(body)
        status_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
        assert status_line.startswith(b"HTTP/1.1 200")
    finally:
        writer.close()


async def _openai_417(reader: asyncio.StreamReader) -> dict[str, Any]:
    """The error of an OpenAI-shaped 417 that closes the connection, read from `reader`."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    fields = dict(line.lower().split(b": ", 1) for line in head[:-4].split(b"\r\n")[1:])
    assert head.startswith(b"HTTP/1.1 417 ") and fields[b"connection"] == b"close"
    assert fields[b"content-type"] == b"application/json" and b"x-request-id" in fields
    error = error_of(await reader.readexactly(int(fields[b"content-length"])))
    assert (error["type"], error["code"]) == ("invalid_request_error", "expectation_failed")
    return error


@pytest.mark.parametrize("expect", [b"something-else", b"100-continue, x", b"\xe9"])
@pytest.mark.parametrize("path", [b"/v1/chat/completions", b"/v1/chat/completions/chatcmpl-x"])
@pytest.mark.parametrize("front_kind", ["lean", "aiohttp"])
async def test_an_expectation_other_than_100_continue_is_an_openai_417(
        proxy: Any, monkeypatch: Any, front_kind: str, path: bytes, expect: bytes) -> None:
    """aiohttp answered it with a plain-text 417 ('Unknown Expect: ...'), without a request id,
    which the SDKs cannot read as an error: it is OpenAI's shape, as every other refusal, and
    its body, not read, closes the connection (RFC 9110 §10.1.1 allows the 417). The stored
    completion's update route too (a 500 for a value not UTF-8, there also)."""
    monkeypatch.setenv(FRONT_ENV, front_kind)
    client = await proxy(mock_config())
    body = orjson.dumps({"model": "fast:tokens=1", "messages": USER})
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(b"POST %b HTTP/1.1\r\nHost: x\r\nExpect: %b\r\n"
                     b"Content-Length: %d\r\n\r\n" % (path, expect, len(body)))
        error = await _openai_417(reader)
        assert error["message"].startswith("Expect: 100-continue is the only")
    finally:
        writer.close()


async def test_body_over_the_limit_is_413(proxy: Any) -> None:
    client = await proxy(mock_config(max_body_bytes=2000))
    big = orjson.dumps({"messages": [{"role": "user", "content": "x" * 5000}]})
    resp = await client.post("/v1/chat/completions", data=big)
    assert resp.status == 413
    err = error_of(await resp.read())
    assert (err["type"], err["code"]) == ("invalid_request_error", "request_too_large")
    assert "2000" in err["message"]
    resp = await client.post("/v1/chat/completions",
                             json={"model": "fast:tokens=1", "messages": USER})
    assert resp.status == 200


@pytest.mark.parametrize(("body", "code", "param"), [
    ({"messages": USER * 6}, "array_above_max_length", "messages"),
    ({"messages": USER, "tools": [{"type": "function", "function": {"name": f"f{i}"}}
                                  for i in range(4)]}, "array_above_max_length", "tools"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "x",
                                                 "n": [[[[[[[[[1]]]]]]]]]}]}]},
     "json_too_deep", None),
])
async def test_counts_and_depth_are_400(proxy: Any, body: dict[str, Any], code: str,
                                        param: str | None) -> None:
    client = await proxy(mock_config(max_messages=5, max_tools=3, max_json_depth=8))
    resp = await client.post("/v1/chat/completions", json=body)
    assert resp.status == 400
    err = error_of(await resp.read())
    assert (err["type"], err["code"], err["param"]) == ("invalid_request_error", code, param)


# Nested JSON, with brackets inside strings (which the shortcut counts as if they nested).
NESTED = st.recursive(st.text("[]{}a", max_size=3) | st.integers(0, 9),
                      lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text("[{a", max_size=2), inner, max_size=3),
                      max_leaves=24)


def depth(value: Any) -> int:
    """Levels of containers: 1 for `{}`, 2 for `[{}]`."""
    if isinstance(value, dict):
        value = list(value.values())
    elif not isinstance(value, list):
        return 0
    return 1 + max(map(depth, value), default=0)


@settings(max_examples=500, deadline=None)
@given(NESTED, st.integers(1, 9))
def test_the_depth_limit_with_or_without_the_walk(value: Any, limit: int) -> None:
    """A body with no more brackets than the limit is not walked: whatever the nesting and the
    brackets in strings, what is refused as too deep is what is deeper than the limit."""
    body = {"messages": [{"role": "user", "content": "hi"}], "x": value}
    try:
        parse_chat_request(orjson.dumps(body), Limits(max_json_depth=limit))
        too_deep = False
    except InvalidRequest as e:
        assert e.code == "json_too_deep"
        too_deep = True
    assert too_deep == (depth(body) > limit)


async def test_nesting_beyond_the_json_parser_is_400(default_proxy: Any) -> None:
    client = await default_proxy()
    resp = await client.post("/v1/chat/completions", data=b"[" * 5000 + b"]" * 5000)
    assert resp.status == 400
    assert error_of(await resp.read())["code"] == "invalid_json"


async def raw_request(port: int, head: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        return await asyncio.wait_for(reader.read(4096), 10)
    finally:
        writer.close()


async def test_header_limits_come_from_the_config() -> None:
    config = mock_config(max_header_bytes=1024, max_headers=20)
    server = ProxyTestServer(create_app(config))
    await server.start_server(**http_limits(config))  # as serve() passes them to its runner
    try:
        port = server.port
        assert port is not None
        ok = await raw_request(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nx-a: "
                               + b"a" * 900 + b"\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200")
        long_field = await raw_request(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nx-a: "
                                       + b"sk-secret" * 170 + b"\r\n\r\n")
        assert long_field.startswith(b"HTTP/1.1 431")
        error = orjson.loads(long_field.split(b"\r\n\r\n", 1)[1])["error"]
        assert error["code"] == "request_header_fields_too_large"
        assert "x-a" in error["message"] and b"sk-secret" not in long_field
        many = b"".join(b"x-h%d: 1\r\n" % i for i in range(40))
        too_many = await raw_request(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many
                                     + b"\r\n")
        assert too_many.startswith(b"HTTP/1.1 431") and b"41 headers" in too_many  # + Host
        long_url = await raw_request(port, b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: x"
                                     b"\r\n\r\n")
        assert long_url.startswith(b"HTTP/1.1 414")  # (URI Too Long: 431 before, wrongly)
        # Far beyond the limit aiohttp's parser refuses first (the backstop), alike.
        huge = await raw_request(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nx-a: "
                                 + b"a" * 5000 + b"\r\n\r\n")
        assert huge.startswith(b"HTTP/1.1 431")
    finally:
        await server.close()


LIMITED = {"max_header_bytes": 1024, "max_headers": 20}
# name: (a head over aiohttp's backstop, four times the limit, its status, its message's end)
BEYOND_BACKSTOP = {
    "field": (b"x-a: " + b"sk-secret" * 600, 431, "a header field is over 1024 bytes."),
    "target": (b"", 414, "it is over 1024 bytes."),
    "headers": (b"".join(b"x-h%d: 1\r\n" % i for i in range(100))[:-2], 431,
                "over 80 headers, the limit is 20."),
}


@pytest.mark.parametrize("name", list(BEYOND_BACKSTOP))
@pytest.mark.parametrize("path", [b"/v1/chat/completions", b"/healthz"])
@pytest.mark.parametrize("front_kind", ["lean", "aiohttp"])
async def test_a_head_beyond_the_backstop_gets_the_status_of_what_is_too_long(
        monkeypatch: Any, front_kind: str, path: bytes, name: str) -> None:
    """A field, the target or the header count over four times its limit was refused by
    aiohttp's parser with a 400 `malformed_request`, where a smaller excess gets 431 (414 for
    the target): the same status and code now, whatever the excess, and the connection closes
    (the rest of the head is not read)."""
    monkeypatch.setenv(FRONT_ENV, front_kind)
    config = mock_config(**LIMITED)
    server = ProxyTestServer(create_app(config))
    await server.start_server(**http_limits(config))  # as serve() passes them to its runner
    try:
        field, status, message = BEYOND_BACKSTOP[name]
        target = path + (b"?q=" + b"a" * 5000 if name == "target" else b"")
        head = b"POST %b HTTP/1.1\r\nHost: x\r\n%b\r\nContent-Length: 2\r\n\r\n{}" % (
            target, field + b"\r\n" if field else b"")
        assert server.port is not None
        answer = await raw_request(server.port, head)
        assert answer.startswith(b"HTTP/1.1 %d " % status)
        assert b"\r\nconnection: close\r\n" in answer.lower()
        error = error_of(answer.split(b"\r\n\r\n", 1)[1])
        assert error["code"] == ("uri_too_long" if status == 414
                                 else "request_header_fields_too_large")
        assert error["message"].endswith(message) and "sk-secret" not in error["message"]
    finally:
        await server.close()


ANTHROPIC_START = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","type":"message",'
    b'"role":"assistant","model":"m","content":[],"usage":{"input_tokens":1,"output_tokens":1}}}'
    b'\n\nevent: content_block_start\ndata: {"type":"content_block_start","index":0,'
    b'"content_block":{"type":"text","text":""}}\n\n'
)


async def test_an_endless_upstream_event_is_an_error_frame_not_memory(
        proxy: Any, upstream: Any) -> None:
    cap = 64 * 1024
    upstream.pieces = [ANTHROPIC_START] + [b"data: " + b"x" * 16384] * 64  # 1 MiB, no newline
    upstream.hold_open = True
    client = await proxy(_anthropic(upstream.url, cap))
    resp = await client.post("/v1/chat/completions",
                             json={"model": "m", "stream": True, "messages": USER})
    assert resp.status == 200
    body = await asyncio.wait_for(resp.read(), 10)
    c = collect(sse_chunks(body))
    assert c.error is not None and c.error["code"] == "upstream_protocol_error"
    assert str(cap) in c.error["message"]
    assert not c.done and c.finish_reason is None
    await asyncio.wait_for(upstream.closed.wait(), 10)  # the upstream connection was dropped


async def test_an_endless_first_event_is_a_502_before_the_stream(proxy: Any,
                                                                 upstream: Any) -> None:
    upstream.pieces = [b"data: " + b"x" * 16384] * 64
    upstream.hold_open = True
    client = await proxy(_anthropic(upstream.url, 64 * 1024))
    resp = await client.post("/v1/chat/completions",
                             json={"model": "m", "stream": True, "messages": USER})
    assert resp.status == 502
    assert error_of(await resp.read())["code"] == "upstream_protocol_error"


def _anthropic(url: str, max_event_bytes: int) -> Any:
    return make_config({"up": {"type": "anthropic", "base_url": url, "api_key": "k",
                               "default_model": "m"}}, default="up",
                       server={"max_event_bytes": max_event_bytes})


def test_sse_decoder_never_holds_more_than_its_cap_plus_one_read() -> None:
    cap, piece = 64 * 1024, 4096
    decoder = SSEDecoder(cap)
    fed = 0
    with pytest.raises(BufferOverflow):
        decoder.feed(b"data: ")
        for _ in range(10_000):
            decoder.feed(b"y" * piece)
            fed += piece
    assert cap - piece <= fed <= cap + piece



def test_fallback_models_are_capped_as_messages_and_tools_are() -> None:
    # Each fallback model is a config target, checked and resolved before the first upstream
    # request, on the event loop: a 700 kB body of 100,000 models held a worker (every
    # stream it relays) for seconds, and could make as many upstream requests.
    def parse(**extra: Any) -> Any:
        return parse_chat_request(orjson.dumps({"messages": USER, "model": "a/b", **extra}))

    assert len(parse(fallback_models=["a/c"] * MAX_FALLBACK_MODELS).fallback_models) == (
        MAX_FALLBACK_MODELS)
    for models in (MAX_FALLBACK_MODELS + 1, 100_000):
        with pytest.raises(InvalidRequest) as info:
            parse(fallback_models=["a/c"] * models)
        assert (info.value.param, info.value.code) == ("fallback_models",
                                                       "array_above_max_length")
    # The models tried are what counts: fallback_config.max_fallbacks keeps the first N.
    capped = parse(fallback_models=["a/c"] * 1000, fallback_config={"max_fallbacks": 3})
    assert capped.fallback_models == ["a/c"] * 3


@pytest.mark.parametrize("value", ["", {}, 0, False, "a/b", {"a": "b"}, 1, True, [1], [None]])
def test_fallback_models_of_another_type_is_openais_invalid_type(value: Any) -> None:
    # A falsy value of the wrong type ("", {}, 0, false) was read as no fallbacks: the
    # request ran with none, where the client had meant some (or sent the wrong field).
    with pytest.raises(InvalidRequest) as info:
        parse_chat_request(orjson.dumps({"messages": USER, "model": "a/b",
                                         "fallback_models": value}))
    assert (info.value.param, info.value.code) == ("fallback_models", "invalid_type")


def test_fallback_models_null_or_empty_is_none() -> None:
    for value in (None, []):
        req = parse_chat_request(orjson.dumps({"messages": USER, "model": "a/b",
                                               "fallback_models": value}))
        assert req.fallback_models == []


@pytest.mark.parametrize(("models", "param"), [([""], "fallback_models[0]"),
                                                (["a/c", ""], "fallback_models[1]")])
def test_an_empty_fallback_model_is_a_400_naming_it(models: list[str], param: str) -> None:
    # An empty name became a fallback target with no model, which takes the request's own:
    # the primary was tried again where the client had named another model (or a typo).
    with pytest.raises(InvalidRequest) as info:
        parse_chat_request(orjson.dumps({"messages": USER, "model": "a/b",
                                         "fallback_models": models}))
    assert (info.value.param, info.value.code) == (param, "invalid_value")


@pytest.mark.parametrize("name", ["oa/gpt-4o ", " groq/y", "gpt-4o\n", "oa/ gpt-4o",
                                  "oa /gpt-4o", "\u00a0gpt-4o", "gpt\x00-4o", "gpt-4o\r\nx: 1",
                                  "gpt\x7f4o", "\t"])
@pytest.mark.parametrize("where", ["model", "fallback_models[1]"])
def test_a_model_name_with_edge_whitespace_or_a_control_character_is_a_400(
        name: str, where: str) -> None:
    # Sent as written, `oa/gpt-4o ` asked the provider for `gpt-4o ` (its model-not-found),
    # and ` groq/y` went to the default provider as the model ` groq/y`: a 400 naming the
    # field, before any routing, where the name is wrong.
    info = _refused_model_name(name, where)
    assert repr(name)[1:-1][:20] in info.message  # (escaped: a log line stays one line)


@pytest.mark.parametrize("name", ["oa/", "@oa/", "nope/", "meta-llama/", "/", ""])
@pytest.mark.parametrize("where", ["model", "fallback_models[1]"])
def test_a_model_name_with_nothing_after_its_prefix_or_empty_is_a_400(name: str,
                                                                      where: str) -> None:
    # `oa/` (a prefix, no model) and "" were served by the provider's default_model, in
    # `model` and in `fallback_models` alike: an answer from a model the client never named.
    _refused_model_name(name, where)


def _refused_model_name(name: str, where: str) -> InvalidRequest:
    """The 400 for `name` as the model or as the second fallback model, naming `where`."""
    body: dict[str, Any] = {"messages": USER, "model": "a/b"}
    if where == "model":
        body["model"] = name
    else:
        body["fallback_models"] = ["a/c", name]
    with pytest.raises(InvalidRequest) as info:
        parse_chat_request(orjson.dumps(body))
    assert (info.value.param, info.value.code) == (where, "invalid_value")
    return info.value


def test_no_model_or_portkeys_default_still_means_the_default_model() -> None:
    for body in ({}, {"model": None}, {"model": "portkey-default"}):
        assert parse_chat_request(orjson.dumps({"messages": USER, **body})).model is None


@pytest.mark.parametrize("name", ["gpt-4o", "meta-llama/Llama-3.1-8B-Instruct", "@cf/meta/x",
                                  "my deployment", "qwen2.5:7b", "ft:gpt-4o:org::id", "模型"])
def test_model_names_without_edge_whitespace_or_control_characters_pass(name: str) -> None:
    req = parse_chat_request(orjson.dumps({"messages": USER, "model": name,
                                           "fallback_models": [name]}))
    assert req.model == name and req.fallback_models == [name]


def _nested_schema(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def test_max_json_depth_is_capped_where_every_translation_still_serialises() -> None:
    """Raised past what orjson writes (255 levels), a body the limit let in failed when the
    upstream body was serialised (a 500; deeper, gemini_schema's RecursionError): the setting
    is capped, and a body as deep as the cap allows reaches every provider's wire form."""
    from streamproxy.config import MAX_JSON_DEPTH, ConfigError
    from streamproxy.providers.anthropic.request import to_anthropic
    from streamproxy.providers.bedrock.request import to_converse
    from streamproxy.providers.cohere.request import to_cohere
    from streamproxy.providers.gemini.request import to_gemini
    from streamproxy.providers.ollama.request import to_ollama

    with pytest.raises(ConfigError, match="max_json_depth"):
        mock_config(max_json_depth=MAX_JSON_DEPTH + 1)
    assert mock_config(max_json_depth=MAX_JSON_DEPTH).server.max_json_depth == MAX_JSON_DEPTH
    limits = Limits(max_json_depth=MAX_JSON_DEPTH)
    levels = (MAX_JSON_DEPTH - 6) // 2  # the deepest schema the limit lets in as a tool's
    schema = _nested_schema(levels)
    body = {"model": "m", "messages": USER,
            "tools": [{"type": "function", "function": {"name": "f", "parameters": schema,
                                                         "strict": True}}],
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "p", "schema": schema, "strict": True}}}
    req = parse_chat_request(orjson.dumps(body), limits)
    with pytest.raises(InvalidRequest):  # (one level more is refused)
        parse_chat_request(orjson.dumps({**body, "tools": [{"type": "function", "function": {
            "name": "f", "parameters": _nested_schema(levels + 1)}}]}), limits)
    for upstream in (to_gemini(req.body, "gemini-2.5-flash"),
                     to_anthropic(req.body, "claude-sonnet-4-5"),
                     to_converse(req.body, "anthropic.claude-sonnet-4-5-20250929-v1:0"),
                     to_cohere(req.body, "command-a-03-2025"),
                     to_ollama(req.body, "llama3", stream=True),
                     req.body):
        assert orjson.loads(orjson.dumps(upstream))


@pytest.mark.parametrize("where", ["arguments", "result"])
def test_json_nested_inside_a_string_too_deep_to_send_is_a_400(where: str) -> None:
    """A tool call's arguments (and a tool result, which Gemini takes as an object) are JSON in
    a string: parsed, they went into the upstream body past the request's depth limit, and
    deeper than orjson writes they were a 500 (TypeError) on every translated provider."""
    from streamproxy.providers.anthropic.request import to_anthropic
    from streamproxy.providers.bedrock.request import to_converse
    from streamproxy.providers.gemini.request import to_gemini
    from streamproxy.providers.ollama.request import to_ollama

    deep = '{"a":' * 300 + "1" + "}" * 300
    args, result = (deep, "{}") if where == "arguments" else ("{}", deep)
    body = {"model": "m", "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                              "function": {"name": "f", "arguments": args}}]},
        {"role": "tool", "tool_call_id": "c1", "content": result}]}
    req = parse_chat_request(orjson.dumps(body))
    translators = [lambda b: to_gemini(b, "gemini-2.5-flash")]
    if where == "arguments":  # (the others send a tool result as text)
        translators += [lambda b: to_anthropic(b, "claude-sonnet-4-5"),
                        lambda b: to_converse(b, "anthropic.claude-sonnet-4-5-20250929-v1:0"),
                        lambda b: to_ollama(b, "llama3", stream=True)]
    for translate in translators:
        with pytest.raises(InvalidRequest) as info:
            orjson.dumps(translate(req.body))
        assert info.value.code == "json_too_deep"
    shallow = '{"a":' * 150 + "1" + "}" * 150  # (as deep as it may be: sent as before)
    body["messages"][1]["tool_calls"][0]["function"]["arguments"] = shallow
    body["messages"][2]["content"] = shallow
    req = parse_chat_request(orjson.dumps(body))
    for translate in translators:
        assert orjson.loads(orjson.dumps(translate(req.body)))


@pytest.mark.parametrize("auth", [False, True])
@pytest.mark.parametrize("target", [b"api.openai.com:443", b"/v1/chat/completions"])
@pytest.mark.parametrize("front_kind", ["lean", "aiohttp"])
async def test_connect_is_a_501_that_closes_the_connection(
        proxy: Any, monkeypatch: Any, front_kind: str, target: bytes, auth: bool) -> None:
    """A client given the proxy as its HTTPS proxy sends CONNECT: it got 404 'Unknown path:
    CONNECT ' (aiohttp reads no path in it), or with auth a 401 for a key it has no way to send
    there, and the connection stayed open, every later byte taken for the tunnel. It is told
    CONNECT is not served (501, not to be retried), and the connection closes."""
    monkeypatch.setenv(FRONT_ENV, front_kind)
    sections = {"auth": {"keys": [{"name": "a", "key": "sk-proxy"}]}} if auth else {}
    client = await proxy(make_config({"mock": {"type": "mock", "default_model": "fast"}},
                                     default="mock", **sections))
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(b"CONNECT %b HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n" % target)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        fields = dict(line.lower().split(b": ", 1) for line in head[:-4].split(b"\r\n")[1:])
        assert head.startswith(b"HTTP/1.1 501 ") and fields[b"connection"] == b"close"
        assert fields[b"x-should-retry"] == b"false" and b"x-request-id" in fields
        error = error_of(await reader.readexactly(int(fields[b"content-length"])))
        assert error["code"] == "method_not_supported"
        assert error["message"].startswith("CONNECT is not supported")
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # no request: the tunnel's
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()


@pytest.mark.parametrize("front_kind", ["lean", "aiohttp"])
async def test_the_proxy_fixture_has_the_parser_limits_serve_gives(
        proxy: Any, monkeypatch: Any, front_kind: str) -> None:
    """The fixture ran aiohttp's default parser limits (8190 bytes for the target and a field
    alike), not the backstop `serve()` gives its runner: the suite tested a server no one runs
    (a target over the limit got 431 there, 414 in production)."""
    monkeypatch.setenv(FRONT_ENV, front_kind)
    client = await proxy(mock_config())
    assert client.server.port is not None
    long_target = await raw_request(client.server.port, b"GET /v1/models?q=" + b"a" * 9000
                                    + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert long_target.startswith(b"HTTP/1.1 414 ")
    assert error_of(long_target.split(b"\r\n\r\n", 1)[1])["code"] == "uri_too_long"


@pytest.mark.parametrize("expect", [b"something-else", b"\xe9"])
@pytest.mark.parametrize("route", [b"GET /v1/models", b"GET /v1/models/fast", b"GET /healthz",
                                   b"GET /metrics", b"GET /v1/chat/completions",
                                   b"GET /v1/chat/completions/chatcmpl-x",
                                   b"DELETE /v1/chat/completions/chatcmpl-x",
                                   b"GET /v1/chat/completions/chatcmpl-x/messages"])
@pytest.mark.parametrize("front_kind", ["lean", "aiohttp"])
async def test_every_route_answers_an_unknown_expectation_with_an_openai_417(
        proxy: Any, monkeypatch: Any, front_kind: str, route: bytes, expect: bytes) -> None:
    """The routes besides chat kept aiohttp's Expect handler: a plain-text 417 without a request
    id (kept alive), or a 500 for a value that is not UTF-8."""
    monkeypatch.setenv(FRONT_ENV, front_kind)
    client = await proxy(mock_config())
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(b"%b HTTP/1.1\r\nHost: x\r\nExpect: %b\r\n\r\n" % (route, expect))
        await _openai_417(reader)
    finally:
        writer.close()
