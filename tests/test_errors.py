"""Bad input and upstream failures: OpenAI-shaped errors with the right status, before the
stream; one error frame and no [DONE] after it has started."""

from __future__ import annotations

import logging
import socket
from typing import Any

import openai
import orjson
import pytest

from streamproxy import errors
from streamproxy.errors import RateLimited
from streamproxy.server import header_limits
from streamproxy.server.drain import shutdown_error
from streamproxy.server.errors import (
    body_too_large,
    error_headers,
    internal_error,
    invalid_trace_id,
    undecodable_body,
)
from tests.conftest import provider_config
from tests.helpers import collect, make_config, sse_chunks

USER = [{"role": "user", "content": "hi"}]


def assert_openai_error(body: dict[str, Any]) -> dict[str, Any]:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


@pytest.mark.parametrize(("payload", "param", "fragment"), [
    (b"{not json", None, "parse the JSON"),
    (b"[1, 2]", None, "JSON object"),
    (b'{"model": "mock/fast"}', "messages", "Missing required parameter"),
    (b'{"messages": []}', "messages", "at least one"),
    (b'{"messages": "hi"}', "messages", "expected an array"),
    (b'{"messages": [{"role": "wizard", "content": "x"}]}', "messages[0].role", "role"),
    (b'{"messages": [{"role": "user", "content": 5}]}', "messages[0].content", "content"),
    (b'{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "stream", "boolean"),
    (b'{"messages": [{"role": "user", "content": "x"}], "stream": true, '
     b'"stream_options": {"include_usage": "yes"}}', "stream_options.include_usage", "boolean"),
    (b'{"messages": [{"role": "user", "content": "x"}], "stream_options": {}}',
     "stream_options", "only allowed when 'stream' is enabled"),
    (b'{"messages": [{"role": "user", "content": "x"}], "stream": false, '
     b'"stream_options": {"include_usage": true}}', "stream_options", "only allowed"),
    (b'{"messages": [{"role": "user", "content": "x"}], "store": "yes"}', "store", "boolean"),
    (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', "max_tokens",
     "integer below minimum value. Expected a value >= 1, but got 0 instead."),
    (b'{"messages": [{"role": "tool", "content": "x"}]}', "messages[0].tool_call_id", "tool_call"),
    # As OpenAI: each role but an assistant with calls (or audio) needs its content.
    (b'{"messages": [{"role": "user"}]}', "messages[0].content", "Missing required parameter"),
    (b'{"messages": [{"role": "system"}, {"role": "user", "content": "x"}]}',
     "messages[0].content", "Missing required parameter"),
    (b'{"messages": [{"role": "developer"}, {"role": "user", "content": "x"}]}',
     "messages[0].content", "Missing required parameter"),
    (b'{"messages": [{"role": "user", "content": "x"}, {"role": "assistant"}]}',
     "messages[1].content", "Missing required parameter"),
    (b'{"messages": [{"role": "tool", "tool_call_id": "c"}]}', "messages[0].content",
     "Missing required parameter"),
    (b'{"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}',
     "tools[0].function.name", "required"),
])
async def test_invalid_requests_are_400(default_proxy: Any, payload: bytes, param: str | None,
                                        fragment: str) -> None:
    client = await default_proxy()
    resp = await client.post("/v1/chat/completions", data=payload,
                             headers={"content-type": "application/json"})
    assert resp.status == 400
    err = assert_openai_error(await resp.json())
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param
    assert fragment in err["message"]


async def test_unknown_provider_lists_the_configured_ones(default_proxy: Any) -> None:
    client = await default_proxy()
    for headers, model in (({"x-portkey-provider": "nope"}, "x"), ({}, "@nope/x")):
        resp = await client.post("/v1/chat/completions", headers=headers,
                                 json={"model": model, "messages": USER})
        assert resp.status == 400
        err = assert_openai_error(await resp.json())
        assert err["code"] == "unknown_provider"
        assert "mock, mock-openai, openai, anthropic" in err["message"]


async def test_body_over_the_limit_is_413(proxy: Any) -> None:
    config = make_config({"mock": {"type": "mock", "default_model": "fast"}}, default="mock",
                         server={"max_body_bytes": 1000})
    client = await proxy(config)
    big = [{"role": "user", "content": "x" * 2000}]
    resp = await client.post("/v1/chat/completions", json={"messages": big})
    assert resp.status == 413
    assert assert_openai_error(await resp.json())["code"] == "request_too_large"


async def test_unknown_path_and_method_are_openai_shaped(default_proxy: Any) -> None:
    client = await default_proxy()
    resp = await client.get("/v1/nothing")
    assert resp.status == 404
    assert_openai_error(await resp.json())
    resp = await client.put("/v1/models")
    assert resp.status == 405
    assert_openai_error(await resp.json())


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("PUT", "/v1/chat/completions", "GET, HEAD, POST"),
    ("OPTIONS", "/v1/chat/completions", "GET, HEAD, POST"),
    ("DELETE", "/v1/models", "GET, HEAD"),
])
async def test_a_405_lists_the_allowed_methods(default_proxy: Any, method: str, path: str,
                                               allowed: str) -> None:
    client = await default_proxy()
    resp = await client.request(method, path)
    assert resp.status == 405
    assert resp.headers["allow"] == allowed  # RFC 9110 §15.5.6: a 405 MUST send Allow
    assert assert_openai_error(await resp.json())["code"] == "method_not_allowed"


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(("status", "etype"), [(429, "rate_limit_error"), (500, "api_error"),
                                               (401, "authentication_error")])
async def test_upstream_error_status_and_message_are_carried_over(
        proxy: Any, upstream: Any, status: int, etype: str, stream: bool) -> None:
    upstream.status = status
    upstream.content_type = "application/json"
    upstream.body = (b'{"type":"error","error":{"type":"some_error",'
                     b'"message":"upstream says no"}}')
    client = await proxy(provider_config("anthropic", upstream.url))
    resp = await client.post("/v1/chat/completions", json={"messages": USER, "stream": stream})
    assert resp.status == status
    err = assert_openai_error(await resp.json())
    assert err["message"] == "upstream says no"
    assert err["type"] == etype


@pytest.mark.parametrize(("kind", "body", "message", "code", "status"), [
    # OpenAI's code names its status (model_not_found: 404, as OpenAI answers it)
    ("openai", b'{"error":{"message":"The model `gpt-9` does not exist","type":'
               b'"invalid_request_error","param":null,"code":"model_not_found"}}',
     "The model `gpt-9` does not exist", "model_not_found", 404),
    # Anthropic's error type names its status (529 overloaded), as in an error event
    ("anthropic", b'{"type":"error","error":{"type":"overloaded_error","message":'
                  b'"Overloaded"}}\n', "Overloaded", "overloaded_error", 529),
])
async def test_a_stream_answered_with_a_json_error_body_keeps_its_message(
        proxy: Any, upstream: Any, kind: str, body: bytes, message: str, code: str,
        status: int) -> None:
    """An upstream that answers a stream request 200 with one JSON error object, not events
    (as some OpenAI-compatible servers and relays do): the client gets the provider's error,
    as it does for the same answer to a non-streamed request, not a cut stream's."""
    upstream.content_type = "application/json"
    upstream.body = body
    client = await proxy(provider_config(kind, upstream.url))
    resp = await client.post("/v1/chat/completions", json={"messages": USER, "stream": True})
    assert resp.status == status
    err = assert_openai_error(await resp.json())
    assert (err["message"], err["code"]) == (message, code)


@pytest.mark.parametrize("kind", ["vllm", "mistral"])
async def test_a_stream_answered_with_a_bare_error_object_is_that_error(
        proxy: Any, upstream: Any, kind: str) -> None:
    """vLLM's (and Mistral's) error object itself, `object: "error"` with its `param`, as the
    200 body of a stream request: its 400, as for a non-streamed request, not a 502 stream
    "closed before it was complete" (a client error retried and fallen back as a 5xx)."""
    upstream.content_type = "application/json"
    upstream.body = (b'{"object":"error","message":"temperature must be at most 2",'
                     b'"type":"BadRequestError","param":null,"code":400}')
    client = await proxy(provider_config(kind, upstream.url))
    resp = await client.post("/v1/chat/completions", json={"messages": USER, "stream": True})
    assert resp.status == 400
    err = (await resp.json())["error"]
    assert (err["message"], err["type"]) == ("temperature must be at most 2", "BadRequestError")


OPENROUTER_ERROR = b'{"error":{"message":"Rate limit exceeded","code":429}}'
GOOGLE_ERROR = (b'[{"error":{"code":429,"message":"Rate limit exceeded",'
                b'"status":"RESOURCE_EXHAUSTED"}}]')


@pytest.mark.parametrize(("kind", "body", "stream"), [
    ("openai", OPENROUTER_ERROR, False), ("openai", OPENROUTER_ERROR, True),
    ("gemini", GOOGLE_ERROR, True)])
async def test_a_200_json_error_naming_its_status_answers_with_it(
        proxy: Any, upstream: Any, kind: str, body: bytes, stream: bool) -> None:
    """The status an error object in a 200 answer names (OpenRouter's numeric `code`,
    Google's) is the client's, and what retries and fallbacks act on: a streamed request's
    as a non-streamed one's, and as the same object sent as an error event."""
    upstream.content_type = "application/json"
    upstream.body = body
    client = await proxy(provider_config(kind, upstream.url))
    resp = await client.post("/v1/chat/completions", json={"messages": USER, "stream": stream})
    assert resp.status == 429
    assert assert_openai_error(await resp.json())["message"] == "Rate limit exceeded"


async def test_a_200_json_error_naming_no_status_is_a_502(proxy: Any, upstream: Any) -> None:
    upstream.content_type = "application/json"
    upstream.body = b'{"error":"quota exhausted"}'
    client = await proxy(provider_config("gemini", upstream.url))
    resp = await client.post("/v1/chat/completions", json={"messages": USER, "stream": True})
    assert resp.status == 502
    assert assert_openai_error(await resp.json())["message"] == "quota exhausted"


ANTHROPIC_ERROR = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
BEDROCK_ERROR = b'{"message":"Too many requests, please wait before trying again."}'


@pytest.mark.parametrize(("kind", "body", "status", "message"), [
    ("anthropic", ANTHROPIC_ERROR, 529, "Overloaded"),  # the status its type names
    ("gemini", GOOGLE_ERROR, 429, "Rate limit exceeded"),
    ("cohere", b'{"message":"invalid api token"}', 502, "invalid api token"),
    ("bedrock", BEDROCK_ERROR, 502, "Too many requests, please wait before trying again.")])
async def test_a_non_streamed_200_json_error_keeps_the_providers_message(
        proxy: Any, upstream: Any, kind: str, body: bytes, status: int, message: str) -> None:
    """A 200 carrying one JSON error object in place of a non-streamed answer (as relays
    answer) is the provider's error, as the same body to a stream request is: not "malformed
    message"."""
    upstream.content_type = "application/json"
    upstream.body = body
    extra = {"region": "us-east-1"} if kind == "bedrock" else {}
    client = await proxy(provider_config(kind, upstream.url, **extra))
    resp = await client.post("/v1/chat/completions", json={"messages": USER})
    assert resp.status == status
    assert assert_openai_error(await resp.json())["message"] == message


async def test_a_bedrock_stream_answered_200_with_a_json_error_keeps_its_message(
        proxy: Any, upstream: Any) -> None:
    """Bedrock streams binary events: a JSON error in their place broke the framing first
    ("event-stream prelude CRC mismatch"), where the body's own message belongs."""
    upstream.content_type = "application/json"
    upstream.body = BEDROCK_ERROR
    client = await proxy(provider_config("bedrock", upstream.url, region="us-east-1"))
    resp = await client.post("/v1/chat/completions", json={"messages": USER, "stream": True})
    assert resp.status == 502
    err = assert_openai_error(await resp.json())
    assert err["message"] == "Too many requests, please wait before trying again."


async def test_a_listed_error_keeps_its_message(proxy: Any, upstream: Any) -> None:
    """Cloudflare's API (Workers AI's OpenAI-compatible endpoint, AI Gateway) lists errors."""
    upstream.status = 503
    upstream.content_type = "application/json"
    upstream.body = (b'{"result":null,"success":false,"errors":[{"code":7009,'
                     b'"message":"Upstream service unavailable"}],"messages":[]}')
    client = await proxy(provider_config("openai", upstream.url))
    resp = await client.post("/v1/chat/completions", json={"messages": USER, "stream": True})
    assert resp.status == 503
    err = assert_openai_error(await resp.json())
    assert (err["message"], err["code"]) == ("Upstream service unavailable", "7009")


async def test_an_openai_compatible_error_keeps_its_own_fields(proxy: Any,
                                                               upstream: Any) -> None:
    """OpenAI's own `type` and a `code` of null go to the client as they came (ours would
    say rate_limit_error, and copy the type into the code); a numeric `code` is a string."""
    upstream.status = 429
    upstream.content_type = "application/json"
    upstream.body = (b'{"error":{"message":"You exceeded your current quota","type":'
                     b'"insufficient_quota","param":null,"code":null,"doc":"https://x"}}')
    client = await proxy(provider_config("openai", upstream.url))
    resp = await client.post("/v1/chat/completions", json={"messages": USER})
    assert resp.status == 429
    assert (await resp.json())["error"] == {
        "message": "You exceeded your current quota", "type": "insufficient_quota",
        "param": None, "code": None, "doc": "https://x"}


@pytest.mark.parametrize(("code", "expected"), [
    (True, None), (False, None), (429, "429"), (1.5, "1.5"), ("quota", "quota")])
@pytest.mark.parametrize("where", ["HTTP error", "error event"])
async def test_an_upstream_code_reaches_the_client_as_a_string_or_null(
        code: Any, expected: str | None, where: str, proxy: Any, upstream: Any) -> None:
    # OpenAI's shape: `code` is a string or null. A number stays readable; a boolean names
    # nothing, and the openai SDK's `APIError.code` would hold "True".
    error = orjson.dumps({"error": {"message": "refused", "code": code}})
    if where == "HTTP error":
        upstream.status, upstream.content_type, upstream.body = 400, "application/json", error
    else:
        upstream.body = b"data: " + error + b"\n\n"
    client = await proxy(provider_config("openai", upstream.url))
    resp = await client.post("/v1/chat/completions", json={"messages": USER, "stream": True})
    assert resp.status >= 400
    assert (await resp.json())["error"]["code"] == expected


async def test_a_key_echoed_in_a_kept_field_is_masked(proxy: Any, upstream: Any) -> None:
    upstream.status = 401
    upstream.content_type = "application/json"
    upstream.body = (b'{"error":{"message":"Incorrect API key provided: sk-test-secret",'
                     b'"code":"invalid_api_key","innererror":{"detail":["key sk-test-secret"]}}}')
    client = await proxy(provider_config("azure", upstream.url, api_version="2024-10-21"))
    resp = await client.post("/v1/chat/completions", json={"messages": USER})
    assert resp.status == 401
    body = await resp.read()
    assert b"sk-test-secret" not in body
    assert orjson.loads(body)["error"]["innererror"] == {"detail": ["key \u2026"]}


@pytest.mark.parametrize("where", ["mid-stream", "first event", "non-streamed 200"])
async def test_a_key_echoed_in_an_error_inside_a_200_is_masked(where: str, proxy: Any,
                                                              upstream: Any) -> None:
    # OpenRouter-style: the error comes after the 200 (an event, or the body of a 200).
    error = (b'{"error":{"message":"bad key sk-test-secret","code":401,'
             b'"metadata":{"raw":"sk-test-secret refused"}}}')
    first = (b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
             b'"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\n')
    if where == "non-streamed 200":
        upstream.content_type = "application/json"
    upstream.body = {"mid-stream": first + b"data: " + error + b"\n\n",
                     "first event": b"data: " + error + b"\n\n",
                     "non-streamed 200": error}[where]
    client = await proxy(provider_config("openai", upstream.url))
    resp = await client.post("/v1/chat/completions", json={
        "messages": USER, "stream": where != "non-streamed 200"})
    body = await resp.read()
    assert b"sk-test-secret" not in body
    assert b"refused" in body and b"\xe2\x80\xa6" in body  # (the kept field, masked)


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(("kind", "error"), [
    ("anthropic", b'{"type":"error","error":{"type":"authentication_error","message":"no",'
                  b'"code":"bad key sk-test-secret","param":"sk-test-secret"}}'),
    ("openai", b'{"error":{"message":"no","code":"bad key sk-test-secret",'
               b'"param":"sk-test-secret"}}'),
    # (an object was sent as its Python repr, unmasked)
    ("openai", b'{"error":{"message":"no","code":{"key":"sk-test-secret"}}}'),
], ids=["anthropic", "openai", "openai-object-code"])
async def test_a_key_echoed_in_an_errors_code_or_param_is_masked(
        kind: str, error: bytes, stream: bool, proxy: Any, upstream: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    upstream.status = 401
    upstream.content_type = "application/json"
    upstream.body = error
    client = await proxy(provider_config(kind, upstream.url))
    resp = await client.post("/v1/chat/completions", json={"messages": USER, "stream": stream})
    assert resp.status == 401
    body = await resp.read()
    assert b"sk-test-secret" not in body and b"'key'" not in body
    assert "sk-test-secret" not in caplog.text  # the access log's error_code


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("key", ["x", "1", "-", "EMPTY", "ollama"])
async def test_a_placeholder_key_leaves_the_errors_words_alone(
        key: str, stream: bool, proxy: Any, upstream: Any) -> None:
    # A local server (vLLM, Ollama, llama.cpp) ignores the key, and the openai SDK insists on
    # one: `api_key="x"`, forwarded as the client's own, was masked inside every word that held
    # its letters ("ma…_tokens"), the `param` the client's code reads included.
    upstream.status, upstream.content_type = 400, "application/json"
    upstream.body = (b'{"error":{"message":"max-tokens is too large: 10000. This model supports '
                     b'at most 4096 completion tokens (EMPTY context, ollama-style)",'
                     b'"type":"invalid_request_error","param":"max_tokens","code":null}}')
    client = await proxy(make_config({"local": {"type": "openai", "base_url": upstream.url,
                                                "default_model": "m"}}, default="local"))
    resp = await client.post("/v1/chat/completions", json={"messages": USER, "stream": stream},
                             headers={"authorization": f"Bearer {key}"})
    assert upstream.requests[0].headers["Authorization"] == f"Bearer {key}"
    assert resp.status == 400
    assert (await resp.json())["error"] == orjson.loads(upstream.body)["error"]


@pytest.mark.parametrize("where", ["first event", "non-streamed 200"])
@pytest.mark.parametrize(("error", "message"), [
    (b'"rate limited"', "rate limited"),
    (b'{"message":{"reason":"x"},"code":"c"}', "the provider reported an error"),
    (b'{"message":' + b"[" * 300 + b"]" * 300 + b"}", "the provider reported an error"),
    (b"[" * 1000 + b"]" * 1000, "the provider reported an error"),
], ids=["text", "object", "nested message", "nested error"])
async def test_an_error_in_a_200_whose_message_is_no_text_says_so(
        where: str, error: bytes, message: str, proxy: Any, upstream: Any) -> None:
    # An object went out as the message; one nested too deep was a 500.
    if where == "first event":
        upstream.body = b'data: {"error":' + error + b"}\n\n"
    else:
        upstream.content_type = "application/json"
        upstream.body = b'{"error":' + error + b"}"
    client = await proxy(provider_config("openai", upstream.url))
    resp = await client.post("/v1/chat/completions", json={
        "messages": USER, "stream": where == "first event"})
    assert resp.status == 502
    assert (await resp.json())["error"]["message"] == message


@pytest.mark.parametrize("depth", [300, 1000])  # orjson writes 254 levels; masking recursed
@pytest.mark.parametrize("where", ["HTTP error", "first event", "non-streamed 200"])
async def test_an_error_field_nested_too_deep_is_left_out(where: str, depth: int, proxy: Any,
                                                          upstream: Any) -> None:
    # It made the error's answer a 500 (an HTTP error, a 200 body) or cut the stream.
    deep = b"[" * depth + b"]" * depth
    error = (b'{"error":{"message":"upstream says no","code":"c","deep":' + deep +
             b',"innererror":{"content_filter_result":{"hate":{"filtered":true}}}}}')
    if where != "first event":
        upstream.content_type = "application/json"
    upstream.status = 400 if where == "HTTP error" else 200
    upstream.body = b"data: " + error + b"\n\n" if where == "first event" else error
    client = await proxy(provider_config("openai", upstream.url))
    resp = await client.post("/v1/chat/completions", json={
        "messages": USER, "stream": where == "first event"})
    assert resp.status == (400 if where == "HTTP error" else 502)
    err = (await resp.json())["error"]
    assert (err["message"], err["code"]) == ("upstream says no", "c")
    assert "deep" not in err and err["innererror"]["content_filter_result"]["hate"]


async def test_unreachable_upstream_is_502(proxy: Any) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = await proxy(provider_config("anthropic", f"http://127.0.0.1:{port}"))
    resp = await client.post("/v1/chat/completions", json={"messages": USER, "stream": True})
    assert resp.status == 502
    err = assert_openai_error(await resp.json())
    assert err["code"] == "upstream_unreachable"
    assert "sk-test-secret" not in err["message"]


@pytest.mark.parametrize("stream", [True, False])
async def test_upstream_first_token_timeout_is_504(proxy: Any, upstream: Any,
                                                   stream: bool) -> None:
    upstream.delay_before_headers = 5
    client = await proxy(provider_config("anthropic", upstream.url,
                                         timeouts={"first_token": 0.3}))
    resp = await client.post("/v1/chat/completions", json={"messages": USER, "stream": stream})
    assert resp.status == 504
    err = assert_openai_error(await resp.json())
    assert err["code"] == "upstream_timeout"
    assert "first-token" in err["message"]


START = (b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","model":"m",'
         b'"usage":{"input_tokens":3,"output_tokens":1}}}\n\n'
         b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
         b'"content_block":{"type":"text","text":""}}\n\n'
         b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
         b'"delta":{"type":"text_delta","text":"partial"}}\n\n')


async def mid_stream(proxy: Any, upstream: Any, **provider: Any) -> Any:
    upstream.piece_delay = 0.1  # the first piece commits the stream before the failure
    client = await proxy(provider_config("anthropic", upstream.url, **provider))
    resp = await client.post("/v1/chat/completions", json={"messages": USER, "stream": True})
    assert resp.status == 200
    return collect(sse_chunks(await resp.read()))


async def test_upstream_closing_mid_stream_ends_with_an_error_frame(proxy: Any,
                                                                   upstream: Any) -> None:
    upstream.pieces = [START]  # then the body ends: no message_stop
    c = await mid_stream(proxy, upstream)
    assert c.content == "partial"
    assert c.error is not None and c.error["code"] == "upstream_stream_truncated"
    assert not c.done and c.finish_reason is None  # never a fake stop


async def test_a_pass_through_upstream_that_closes_after_its_finish_ends_normally(
        proxy: Any, upstream: Any) -> None:
    """No `data: [DONE]` (some OpenAI-compatible servers): the finish chunk already said the
    answer is complete, so the client gets its usage and `[DONE]`, not an error."""
    envelope = b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
    upstream.pieces = [
        envelope + b'"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\n',
        envelope + b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
        + envelope + b'"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,'
        b'"total_tokens":4}}\n\n']
    upstream.piece_delay = 0.1
    client = await proxy(provider_config("openai", upstream.url))
    resp = await client.post("/v1/chat/completions", json={
        "messages": USER, "stream": True, "stream_options": {"include_usage": True}})
    c = collect(sse_chunks(await resp.read()))
    assert c.content == "Hi" and c.finish_reason == "stop"
    assert c.error is None and c.done
    assert c.usage is not None and c.usage["total_tokens"] == 4


async def test_malformed_event_mid_stream_ends_with_an_error_frame(proxy: Any,
                                                                  upstream: Any) -> None:
    upstream.pieces = [START, b"event: content_block_delta\ndata: {not json}\n\n"]
    c = await mid_stream(proxy, upstream)
    assert c.error is not None and c.error["code"] == "upstream_protocol_error"
    assert not c.done


async def test_idle_timeout_mid_stream_ends_with_an_error_frame(proxy: Any,
                                                                upstream: Any) -> None:
    upstream.pieces = [START]
    upstream.hold_open = True
    c = await mid_stream(proxy, upstream, timeouts={"idle": 0.3})
    assert c.content == "partial"
    assert c.error is not None and c.error["code"] == "upstream_timeout"
    assert "idle" in c.error["message"]
    assert not c.done


async def test_anthropic_error_event_mid_stream(proxy: Any, upstream: Any) -> None:
    upstream.pieces = [START, b'event: error\ndata: {"type":"error","error":'
                              b'{"type":"overloaded_error","message":"Overloaded"}}\n\n']
    c = await mid_stream(proxy, upstream)
    assert c.content == "partial"
    assert c.error == {"message": "Overloaded", "type": "api_error", "param": None,
                       "code": "overloaded_error"}
    assert not c.done and c.finish_reason is None


async def test_error_before_any_output_is_an_http_error_not_a_stream(proxy: Any,
                                                                     upstream: Any) -> None:
    upstream.body = (b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
                     b'"message":"Overloaded"}}\n\n')
    client = await proxy(provider_config("anthropic", upstream.url))
    resp = await client.post("/v1/chat/completions", json={"messages": USER, "stream": True})
    assert resp.status == 529
    assert assert_openai_error(await resp.json())["message"] == "Overloaded"


@pytest.mark.parametrize(("etype", "status", "tries"), [("billing_error", 402, 1),
                                                        ("timeout_error", 504, 2)])
async def test_an_error_event_before_any_output_keeps_anthropics_status(
        proxy: Any, upstream: Any, etype: str, status: int, tries: int) -> None:
    """Anthropic's documented types keep their status (its errors page), so the default retry
    codes act on a timeout and not on a billing error (a 502 would be retried)."""
    upstream.body = (b'event: error\ndata: {"type":"error","error":{"type":"' + etype.encode()
                     + b'","message":"no"}}\n\n')
    client = await proxy(provider_config("anthropic", upstream.url))
    resp = await client.post("/v1/chat/completions", json={"messages": USER, "stream": True},
                             headers={"x-portkey-config": '{"retry": {"attempts": 1}}'})
    assert resp.status == status
    assert assert_openai_error(await resp.json())["code"] == etype
    assert len(upstream.requests) == tries


@pytest.mark.parametrize("stream", [True, False])
async def test_an_upstream_redirect_is_an_error_naming_it(proxy: Any, upstream: Any,
                                                          stream: bool) -> None:
    upstream.status = 307  # e.g. http:// for an https:// API; the key is not sent on
    upstream.content_type = "application/json"
    upstream.extra_headers = {"location": "https://api.example.com/v1/messages?token=t"}
    client = await proxy(provider_config("anthropic", upstream.url))
    resp = await client.post("/v1/chat/completions", json={"messages": USER, "stream": stream})
    assert resp.status == 502
    err = assert_openai_error(await resp.json())
    assert err["code"] == "upstream_redirect"
    assert "307" in err["message"] and "https://api.example.com" in err["message"]
    assert "token" not in err["message"]
    assert len(upstream.requests) == 1


@pytest.mark.parametrize("location", ["http://a:99999/", "http://[bad", "//x"])
async def test_a_redirect_to_a_malformed_location_is_still_an_upstream_redirect(
        proxy: Any, upstream: Any, location: str) -> None:
    """yarl refuses these: a 500 internal_error, which no fallback acts on."""
    upstream.status = 302
    upstream.content_type = "application/json"
    upstream.extra_headers = {"location": location}
    client = await proxy(provider_config("anthropic", upstream.url))
    resp = await client.post("/v1/chat/completions", json={"messages": USER, "stream": True})
    assert resp.status == 502
    err = assert_openai_error(await resp.json())
    assert err["code"] == "upstream_redirect" and "a redirect, which" in err["message"]


@pytest.mark.parametrize("value", ["nan", "inf", "1e400"])
@pytest.mark.parametrize("header", ["retry-after", "retry-after-ms"])
async def test_a_retry_after_that_is_no_number_of_seconds_is_ignored(
        proxy: Any, upstream: Any, header: str, value: str) -> None:
    upstream.status = 429
    upstream.content_type = "application/json"
    upstream.extra_headers = {header: value}
    client = await proxy(provider_config("anthropic", upstream.url))
    resp = await client.post("/v1/chat/completions", json={"messages": USER, "stream": True})
    assert resp.status == 429 and "retry-after" not in resp.headers
    assert_openai_error(await resp.json())


@pytest.mark.parametrize(("wait", "seconds", "ms"), [(0.25, "1", "250"), (1.4, "2", "1400"),
                                                     (3, "3", "3000"), (0.007, "1", "7"),
                                                     (0.0004, "1", "1"), (6e-14, "1", "1")])
def test_retry_after_is_never_early_and_keeps_milliseconds(wait: float, seconds: str,
                                                           ms: str) -> None:
    headers = error_headers(RateLimited("slow down", retry_after=wait), {})
    assert (headers["retry-after"], headers["retry-after-ms"]) == (seconds, ms)


@pytest.mark.parametrize("header", ["retry-after", "retry-after-ms"])
async def test_an_absurdly_long_retry_after_is_told_as_a_day(proxy: Any, upstream: Any,
                                                            header: str) -> None:
    # Finite, but a thousand times it is not: retry-after-ms overflowed (an empty reply).
    upstream.status = 429
    upstream.content_type = "application/json"
    upstream.extra_headers = {header: "1e306"}
    client = await proxy(provider_config("anthropic", upstream.url))
    resp = await client.post("/v1/chat/completions", json={"messages": USER, "stream": True})
    assert resp.status == 429
    assert (resp.headers["retry-after"], resp.headers["retry-after-ms"]) == ("86400",
                                                                            "86400000")
    assert_openai_error(await resp.json())


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/v1/models", 200), ("GET", "/v1/models/mock/fast", 200), ("GET", "/healthz", 200),
    ("GET", "/metrics", 200), ("GET", "/nope", 404), ("PUT", "/v1/models", 405),
    ("GET", "/v1/chat/completions/chatcmpl-none", 404)])
async def test_every_route_answers_with_a_request_id(default_proxy: Any, method: str, path: str,
                                                     status: int) -> None:
    """As OpenAI's answers all carry one (the SDKs' `_request_id`): the client's trace id when
    it sent one, else a new one, also as x-portkey-trace-id."""
    client = await default_proxy()
    resp = await client.request(method, path)
    assert resp.status == status
    assert resp.headers["x-request-id"] == resp.headers["x-portkey-trace-id"]
    assert len(resp.headers["x-request-id"]) == 32
    resp = await client.request(method, path, headers={"x-portkey-trace-id": "trace-9"})
    assert (resp.headers["x-request-id"], resp.headers["x-portkey-trace-id"]) == (
        "trace-9", "trace-9")


async def test_a_chat_request_refused_by_proxy_auth_has_a_request_id(proxy: Any) -> None:
    client = await proxy(make_config({"mock": {"type": "mock", "default_model": "fast"}},
                                     default="mock", auth={"keys": [{"name": "a",
                                                                     "key": "proxy-key-0123"}]}))
    resp = await client.post("/v1/chat/completions", json={"messages": USER})
    assert resp.status == 401
    assert resp.headers["x-request-id"] == resp.headers["x-portkey-trace-id"]


SENT_TOKEN = "ya29.SECRET-token-0123456789abcdef"


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(("kind", "options", "env"), [
    ("vertex", {"project": "p", "location": "us-east5", "token_env": "SP_TEST_TOKEN"},
     {"SP_TEST_TOKEN": SENT_TOKEN}),  # an access token, not the target's key
    ("bedrock", {"region": "us-east-1"}, {"AWS_BEARER_TOKEN_BEDROCK": SENT_TOKEN}),
    ("bedrock", {"region": "us-east-1", "aws_access_key_id": "AKIAEXAMPLEEXAMPLE",
                 "aws_secret_access_key": "s" * 40, "aws_session_token": SENT_TOKEN}, {}),
], ids=["vertex-token", "bedrock-bearer-env", "aws-session-token"])
async def test_a_credential_other_than_the_key_echoed_in_an_error_is_masked(
        kind: str, options: dict[str, Any], env: dict[str, str], stream: bool, proxy: Any,
        upstream: Any, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # An upstream (or a relay before it) that echoes its request's headers in its error: only
    # the target's api_key was masked, and these went to the client and the access log.
    caplog.set_level(logging.INFO)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    upstream.status, upstream.content_type = 403, "application/json"
    upstream.body = orjson.dumps({
        "error": {"code": 403, "message": f"denied, headers: Bearer {SENT_TOKEN}",
                  "status": f"x-amz-security-token={SENT_TOKEN}"},
        "message": f"denied, headers: Bearer {SENT_TOKEN}"})
    client = await proxy(make_config({"up": {"type": kind, "base_url": upstream.url,
                                             "default_model": "m", **options}}, default="up"))
    resp = await client.post("/v1/chat/completions", json={"messages": USER, "stream": stream})
    assert resp.status == 403
    body = await resp.read()
    assert SENT_TOKEN in str(upstream.requests[0].headers)  # (it was sent)
    assert SENT_TOKEN.encode() not in body and b"denied, headers: Bearer \xe2\x80\xa6" in body
    assert SENT_TOKEN not in caplog.text


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(("name", "value"), [
    ("cf-aig-authorization", f"Bearer {SENT_TOKEN}"),  # Cloudflare AI Gateway's
    ("helicone-auth", f"Bearer {SENT_TOKEN}"),
    ("x-portkey-api-key", SENT_TOKEN),  # Portkey's, with streamproxy in front of it
    ("ocp-apim-subscription-key", SENT_TOKEN),  # Azure API Management's
])
async def test_a_configured_auth_header_echoed_in_an_error_is_masked(
        name: str, value: str, stream: bool, proxy: Any, upstream: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    # A gateway or API manager before the provider authenticates by a header of its own,
    # which the operator sets in `headers:`: only the five provider headers were masked, and
    # an upstream that echoes its request's headers showed the gateway's key to the client.
    caplog.set_level(logging.DEBUG)
    upstream.status, upstream.content_type = 401, "application/json"
    upstream.body = orjson.dumps({"error": {"message": f"refused: {name}: {value}",
                                            "code": "invalid_api_key"}})
    client = await proxy(make_config({"up": {"type": "openai", "base_url": upstream.url,
                                             "api_key": "sk-provider-key-0123456789",
                                             "headers": {name: value},
                                             "default_model": "m"}}, default="up"))
    resp = await client.post("/v1/chat/completions", json={"messages": USER, "stream": stream})
    assert resp.status == 401
    body = await resp.read()
    assert upstream.requests[0].headers[name] == value  # (it was sent)
    assert SENT_TOKEN.encode() not in body and b"refused: " + name.encode() in body
    assert SENT_TOKEN not in caplog.text


def test_a_header_that_is_no_credential_is_not_masked() -> None:
    from streamproxy.providers.base import UpstreamRequest

    sent = UpstreamRequest("https://u", b"", {
        "anthropic-beta": "prompt-caching-2024-07-31", "http-referer": "https://app.example",
        "x-title": "My App", "openai-organization": "org-123456789",
        "x-custom-token": "tok-123456789", "authorization": "Bearer sk-0123456789"})
    assert sent.credentials(None) == ("tok-123456789", "sk-0123456789")


def test_a_masked_errors_own_text_holds_no_key() -> None:
    # mask() rewrote `message` but not args[0], which str() and repr() print: a traceback
    # that shows the error (a chained one's, asyncio's "exception was never retrieved") or a
    # log line formatting it wrote the key out.
    from streamproxy.errors import UpstreamStatusError

    err = UpstreamStatusError(401, f"Incorrect API key provided: {SENT_TOKEN}")
    err.mask(SENT_TOKEN)
    assert err.message == "Incorrect API key provided: …cdef"
    assert SENT_TOKEN not in str(err) and SENT_TOKEN not in repr(err)


# Well-formed JSON of the wrong shape, one per translator: (provider config, stream bytes, the
# field the message should name or None). The client reads the message: Python's text for the
# exception the translator met ("KeyError('delta')", "'int' object is not subscriptable") says
# nothing a user can act on.
_WRONG_SHAPES = {
    "anthropic-missing": ("anthropic", b'event: content_block_delta\ndata: {"type":'
                          b'"content_block_delta","index":0}\n\n', "delta"),
    "anthropic-type": ("anthropic", b'event: content_block_delta\ndata: {"type":'
                       b'"content_block_delta","index":0,"delta":5}\n\n', None),
    "anthropic-list": ("anthropic", b'event: message_delta\ndata: {"type":"message_delta",'
                       b'"delta":{},"usage":[1]}\n\n', None),
    "cohere": ("cohere", b'event: content-delta\ndata: {"type":"content-delta","index":0,'
               b'"delta":"x"}\n\n', None),
    "gemini": ("gemini", b'data: {"candidates":[{"content":{"parts":5}}]}\n\n', None),
    "ollama": ("ollama", b'{"model":"m","message":5,"done":false}\n', None),
    # A value of the right JSON type that does not convert: Python's ValueError, which escaped
    # the translators as a 500 internal_error (a bug's answer, logged with a traceback).
    "anthropic-usage": ("anthropic", b'event: message_start\ndata: {"type":"message_start",'
                        b'"message":{"model":"m","usage":"s"}}\n\n', None),
    "cohere-usage": ("cohere", b'event: message-end\ndata: {"type":"message-end","delta":{'
                     b'"finish_reason":"COMPLETE","usage":{"tokens":{"input_tokens":"s"}}}}\n\n',
                     None),
}


@pytest.mark.parametrize("case", list(_WRONG_SHAPES))
def test_a_wrong_shaped_event_is_a_protocol_error_without_pythons_words(case: str) -> None:
    from streamproxy.errors import StreamDecodeError
    from streamproxy.openai_api.chunks import ChunkEncoder
    from streamproxy.openai_api.request import parse_chat_request
    from streamproxy.server.app import build_providers
    kind, stream, field = _WRONG_SHAPES[case]
    provider = build_providers(provider_config(kind, "http://u"))["up"]
    req = parse_chat_request(orjson.dumps({"model": "m", "stream": True, "messages": [
        {"role": "user", "content": "hi"}]}))
    out = ChunkEncoder(completion_id="c", created=1, model="m", include_usage=False)
    with pytest.raises(StreamDecodeError) as caught:
        provider.stream_translator(req, out).feed(stream)
    message = caught.value.message
    assert caught.value.status == 502 and caught.value.code == "upstream_protocol_error"
    assert message.startswith("the upstream sent a malformed")
    for python in ("Error(", "object", "subscriptable", "NoneType", "indices", "'int'"):
        assert python not in message, message
    if field is not None:
        assert f"'{field}'" in message


def test_a_wrong_shaped_bedrock_event_is_a_protocol_error_without_pythons_words() -> None:
    from streamproxy.errors import StreamDecodeError
    from streamproxy.openai_api.chunks import ChunkEncoder
    from streamproxy.providers.bedrock.stream import BedrockStreamTranslator
    from tests.eventstream_frames import event
    out = ChunkEncoder(completion_id="c", created=1, model="m", include_usage=False)
    with pytest.raises(StreamDecodeError) as caught:
        BedrockStreamTranslator(out, 1 << 20).feed(event("contentBlockStart", {
            "contentBlockIndex": 0, "start": {"toolUse": "x"}}))
    assert caught.value.message == ("the upstream sent a malformed 'contentBlockStart' event "
                                    "(a field of the wrong type)")


# -- every 4xx the proxy answers itself, as OpenAI shapes it and the openai SDK reads it ----------

_KEY, _LIMITED, _MOCK_ONLY = ("proxy-key-main-0123456789", "proxy-key-limited-0123456789",
                              "proxy-key-mock-only-0123456789")
_USER = [{"role": "user", "content": "hi"}]
_BIG = [{"role": "user", "content": "x" * 3000}]
# OpenAI's error type for each status the proxy answers with (its API reference's table).
_OPENAI_TYPE = {400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "not_found_error", 405: "invalid_request_error",
                413: "invalid_request_error", 429: "rate_limit_error"}
# Where OpenAI itself departs from that table: its model_not_found 404 is invalid_request_error.
_AS_OPENAI = {"unknown-model": "invalid_request_error"}


def _own_errors_config() -> Any:
    return make_config({
        "mock": {"type": "mock", "default_model": "fast"},
        "llama": {"type": "ollama", "base_url": "http://127.0.0.1:9", "default_model": "m"},
    }, default="mock", server={"max_body_bytes": 2000}, virtual_keys={
        "vk-main": {"provider": "mock", "api_key": "sk-vk-secret"}}, auth={"keys": [
            {"name": "main", "key": _KEY},
            {"name": "limited", "key": _LIMITED,
             "rate_limit": {"requests_per_minute": 1, "burst": 1}},
            {"name": "mock-only", "key": _MOCK_ONLY, "allowed_providers": ["mock"]}]})


def _chat(**kw: Any) -> Any:
    return lambda sdk: sdk.chat.completions.create(**{"messages": _USER, **kw})


_OWN_ERRORS: dict[str, tuple[str, Any, int, str | None, type[Exception]]] = {
    # name: (proxy key, the SDK's call, status, param, the SDK's exception)
    "unknown-provider": (_KEY, _chat(model="@nope/x"), 400, "model", openai.BadRequestError),
    "bad-config-header": (_KEY, _chat(model="fast", extra_headers={
        "x-portkey-config": "{not json"}), 400, "x-portkey-config", openai.BadRequestError),
    "unknown-virtual-key": (_KEY, _chat(model="fast", extra_headers={
        "x-portkey-virtual-key": "vk-nope"}), 400, "x-portkey-virtual-key",
        openai.BadRequestError),
    "unsupported-parameter": (_KEY, _chat(model="llama/m", n=2), 400, "n",
                              openai.BadRequestError),
    "invalid-parameter": (_KEY, _chat(model="fast", max_tokens=0), 400, "max_tokens",
                          openai.BadRequestError),
    "invalid-key": ("proxy-key-wrong-0123456789", _chat(model="fast"), 401, None,
                    openai.AuthenticationError),
    "provider-not-allowed": (_MOCK_ONLY, _chat(model="llama/m"), 403, None,
                             openai.PermissionDeniedError),
    "unknown-model": (_KEY, lambda sdk: sdk.models.retrieve("no-such-model"), 404, None,
                      openai.NotFoundError),
    "unknown-path": (_KEY, lambda sdk: sdk.get("/no-such-path", cast_to=object), 404, None,
                     openai.NotFoundError),
    "method-not-allowed": (_KEY, lambda sdk: sdk.delete("/models", cast_to=object), 405, None,
                           openai.APIStatusError),
    "body-too-large": (_KEY, _chat(model="fast", messages=_BIG), 413, None,
                       openai.APIStatusError),
    "rate-limited": (_LIMITED, _chat(model="fast"), 429, None, openai.RateLimitError),
}


@pytest.mark.parametrize("case", list(_OWN_ERRORS))
async def test_the_proxys_own_4xx_are_openai_shaped(proxy: Any, case: str) -> None:
    key, call, status, param, exc = _OWN_ERRORS[case]
    client = await proxy(_own_errors_config())
    sdk = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key=key, max_retries=0)
    if case == "rate-limited":  # its one request a minute
        await _chat(model="fast")(sdk)
    with pytest.raises(exc) as caught:
        await call(sdk)
    err = caught.value
    assert isinstance(err, openai.APIStatusError) and err.status_code == status
    body = err.response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert body["error"]["type"] == _AS_OPENAI.get(case, _OPENAI_TYPE[status]), body
    assert body["error"]["param"] == param, body
    assert err.request_id  # x-request-id, as on every OpenAI answer


@pytest.mark.parametrize(("payload", "content_type"), [
    (b"{not json", "application/json"), (b"[]", "application/json"),
    (b"messages=hi", "application/x-www-form-urlencoded")])
async def test_a_body_the_sdk_cannot_send_is_an_openai_shaped_400(
        proxy: Any, payload: bytes, content_type: str) -> None:
    client = await proxy(_own_errors_config())
    resp = await client.post("/v1/chat/completions", data=payload, headers={
        "content-type": content_type, "authorization": f"Bearer {_KEY}"})
    assert resp.status == 400
    assert assert_openai_error(await resp.json())["type"] == "invalid_request_error"


def test_a_non_streamed_answer_with_a_count_that_is_no_number_is_a_protocol_error() -> None:
    # Cohere's count "s": int() raised a ValueError, which escaped as a 500 internal_error.
    from streamproxy.errors import UpstreamProtocolError
    from streamproxy.providers.cohere.response import to_completion
    body = orjson.dumps({"id": "x", "finish_reason": "COMPLETE", "message": {
        "role": "assistant", "content": [{"type": "text", "text": "hi"}]},
        "usage": {"tokens": {"input_tokens": "s", "output_tokens": 1}}})
    with pytest.raises(UpstreamProtocolError) as caught:
        to_completion(body, completion_id="c", created=1, model="m", provider="co")
    assert (caught.value.status, caught.value.code) == (502, "upstream_protocol_error")


@pytest.mark.parametrize(("kind", "stream"), [
    ("anthropic", b'event: error\ndata: {"type":"error","error":{"type":5,"message":["no"]}}\n\n'),
    ("anthropic", b'event: error\ndata: {"type":"error","error":{"type":"x",'
                  b'"message":{"a":1}}}\n\n'),
    ("ollama", b'{"error":{"message":5,"code":"x"}}\n'),
    ("ollama", b'{"error":{"message":["no"]}}\n'),
], ids=["anthropic-list", "anthropic-object", "ollama-number", "ollama-list"])
def test_an_error_events_message_is_always_text(kind: str, stream: bytes) -> None:
    # OpenAI's error.message is a string: a provider's number, list or object went on as it
    # came, as the HTTP error's message or the error frame's (and a number as the code).
    from streamproxy.openai_api.chunks import ChunkEncoder
    from streamproxy.openai_api.request import parse_chat_request
    from streamproxy.server.app import build_providers
    provider = build_providers(provider_config(kind, "http://u"))["up"]
    req = parse_chat_request(orjson.dumps({"model": "m", "stream": True, "messages": [
        {"role": "user", "content": "hi"}]}))
    out = ChunkEncoder(completion_id="c", created=1, model="m", include_usage=False)
    translator = provider.stream_translator(req, out)
    translator.feed(stream)
    error = collect(sse_chunks(out.take())).error
    assert translator.done and error is not None
    assert error["message"] == "the provider reported an error mid-stream"
    assert error["code"] is None or isinstance(error["code"], str)


def _error_classes(cls: type[errors.ProxyError]) -> list[type[errors.ProxyError]]:
    return [cls] + [c for sub in cls.__subclasses__() for c in _error_classes(sub)]


def test_every_errors_type_agrees_with_its_status_class() -> None:
    """OpenAI's SDKs read the status: a 5xx is a server's error and retried. The 501 for an
    unsupported Transfer-Encoding had type invalid_request_error (a 4xx's), and no
    `x-should-retry: false`: a client read its own mistake as one to retry."""
    made = [cls("m") for cls in _error_classes(errors.ProxyError)
            if cls is not errors.UpstreamStatusError]
    made += [header_limits.too_large("x"), header_limits.target_too_long(1),
             header_limits.unsupported_coding("gzip, chunked"), internal_error(),
             body_too_large(1), undecodable_body(), invalid_trace_id(), shutdown_error()]
    made += [errors.UpstreamStatusError(status, "m") for status in (400, 409, 422, 500, 529)]
    for err in made:
        assert (err.status >= 500) == (err.error_type == "api_error"), (err.status, err)
    refused = header_limits.unsupported_coding("gzip, chunked")
    assert (refused.status, refused.should_retry) == (501, False)
    assert error_headers(refused, {})["x-should-retry"] == "false"


async def test_a_streams_rate_limit_event_tells_the_client_its_wait(
        proxy: Any, upstream: Any) -> None:
    """OpenRouter answers 200, then its provider's 429 as the first event, the wait in the
    error's metadata: the client's 429 says it (retry-after), as an HTTP 429's would."""
    upstream.body = (b": OPENROUTER PROCESSING\n\ndata: {\"error\":{\"message\":\"Provider "
                     b"returned error\",\"code\":429,\"metadata\":{\"provider_name\":\"Venice\","
                     b"\"retry_after_seconds\":17,\"headers\":{\"Retry-After\":\"17\"}}}}\n\n")
    client = await proxy(provider_config("openrouter", upstream.url))
    resp = await client.post("/v1/chat/completions", json={"messages": USER, "stream": True})
    assert resp.status == 429
    assert (resp.headers.get("retry-after"), resp.headers.get("retry-after-ms")) == (
        "17", "17000")
    assert (await resp.json())["error"]["metadata"]["provider_name"] == "Venice"
