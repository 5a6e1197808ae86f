"""Claude on Vertex AI (`providers/gemini/vertex_anthropic.py`): a `type: vertex` provider
sends `claude-*` models to `publishers/anthropic/models/{model}:streamRawPredict` /
`:rawPredict` with Anthropic's body (no `model`, `anthropic_version: vertex-2023-10-16`), and
the recorded Anthropic streams (tests/fixtures/anthropic, from ../shared/fixtures) replayed by
a fake Vertex upstream at random splits give exactly the results tests/test_golden_core.py
lists for them through `type: anthropic`."""

from __future__ import annotations

import random
import sys
from typing import Any

import orjson
import pytest

from streamproxy.errors import InvalidRequest
from streamproxy.openai_api.request import parse_chat_request
from streamproxy.routing.target import Target
from streamproxy.server.app import build_providers
from tests.helpers import collect, make_config, random_splits, sse_chunks
from tests.test_golden_core import GOLDEN, check

CLAUDE = "claude-sonnet-4-5@20250929"
BASE = "/v1/projects/my-proj/locations/us-east5"
USER = [{"role": "user", "content": "hi"}]
ANTHROPIC_GOLDEN = [name for name, golden in GOLDEN.items() if golden.kind == "anthropic"]
ANTHROPIC_STREAM = GOLDEN[ANTHROPIC_GOLDEN[0]].body


def vertex(url: str, **extra: Any) -> Any:
    return make_config({"v": {"type": "vertex", "base_url": url, "project": "my-proj",
                              "location": "us-east5", "api_key": "ya29.configured",
                              **extra}}, default="v")


def headers(received: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in received.headers.items()}


@pytest.mark.parametrize("name", ANTHROPIC_GOLDEN)
@pytest.mark.parametrize("eol", ["lf", "crlf"])
async def test_recorded_anthropic_streams_through_a_fake_vertex_at_random_splits(
        name: str, eol: str, proxy: Any, upstream: Any) -> None:
    golden = GOLDEN[name]
    body = golden.body if eol == "lf" else golden.body.replace(b"\n", b"\r\n")
    client = await proxy(vertex(upstream.url))
    rng = random.Random(name + eol)
    for _ in range(3):
        upstream.pieces = random_splits(body, rng, max_piece=rng.choice([7, 40]))
        resp = await client.post("/v1/chat/completions", json={
            "model": CLAUDE, "stream": True, "stream_options": {"include_usage": True},
            "messages": USER})
        assert resp.status == 200
        check(golden, await resp.read())
    assert {r.path for r in upstream.requests} == {
        f"{BASE}/publishers/anthropic/models/{CLAUDE}:streamRawPredict"}


async def test_the_request_on_the_wire(proxy: Any, upstream: Any) -> None:
    upstream.body = GOLDEN["anthropic-text"].body
    client = await proxy(vertex(upstream.url, headers={"x-extra": "1"}))
    resp = await client.post("/v1/chat/completions", json={
        "model": f"v/{CLAUDE}", "stream": True, "max_tokens": 2000, "seed": 7, "stop": "END",
        "reasoning_effort": "low",
        "messages": [{"role": "system", "content": "Be brief."}, *USER]})
    assert resp.status == 200
    await resp.read()
    [sent] = upstream.requests
    assert sent.path == f"{BASE}/publishers/anthropic/models/{CLAUDE}:streamRawPredict"
    assert sent.json() == {  # Anthropic's body, `model` moved to the URL
        "anthropic_version": "vertex-2023-10-16",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "system": [{"type": "text", "text": "Be brief."}],
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "max_tokens": 2000, "stop_sequences": ["END"], "stream": True}
    sent_headers = headers(sent)
    assert sent_headers["authorization"] == "Bearer ya29.configured"  # Vertex's auth
    assert sent_headers["x-extra"] == "1"
    assert "x-api-key" not in sent_headers and "anthropic-version" not in sent_headers


async def test_non_streamed_answer_from_raw_predict(proxy: Any, upstream: Any) -> None:
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps({
        "id": "msg_vrtx_01", "type": "message", "role": "assistant", "model": CLAUDE,
        "content": [{"type": "text", "text": "Hello"},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                     "input": {"city": "Paris"}}],
        "stop_reason": "tool_use", "usage": {"input_tokens": 10, "output_tokens": 5}})
    client = await proxy(vertex(upstream.url, default_model=CLAUDE))
    resp = await client.post("/v1/chat/completions", json={"messages": USER})
    answer = await resp.json()
    assert resp.status == 200, answer
    message = answer["choices"][0]["message"]
    assert message["content"] == "Hello"
    assert message["tool_calls"][0]["function"] == {"name": "get_weather",
                                                    "arguments": '{"city":"Paris"}'}
    assert answer["choices"][0]["finish_reason"] == "tool_calls"
    assert answer["usage"]["prompt_tokens"] == 10
    [sent] = upstream.requests  # the default model chose Claude too
    assert sent.path == f"{BASE}/publishers/anthropic/models/{CLAUDE}:rawPredict"
    assert "stream" not in sent.json() and "model" not in sent.json()


async def test_claudes_betas_go_in_the_body_for_claude_alone(proxy: Any,
                                                            upstream: Any) -> None:
    # The portkey-ai SDK's `anthropic_beta` (x-portkey-anthropic-beta), a config target's and
    # the provider's own were ignored on Vertex: rawPredict takes them in the body's
    # `anthropic_beta`, a list. A Gemini model on the same provider must not get them.
    upstream.body = ANTHROPIC_STREAM
    client = await proxy(vertex(upstream.url, anthropic_beta="b-provider"))

    async def sent(model: str, headers: dict[str, str]) -> Any:
        resp = await client.post("/v1/chat/completions", headers=headers, json={
            "model": model, "stream": True, "messages": USER})
        await resp.read()
        return upstream.requests[-1]

    sdk = {"x-portkey-anthropic-beta": "context-1m-2025-08-07,interleaved-thinking-2025-05-14"}
    claude = await sent(CLAUDE, sdk)
    assert claude.json()["anthropic_beta"] == ["context-1m-2025-08-07",
                                               "interleaved-thinking-2025-05-14"]
    assert claude.json()["anthropic_version"] == "vertex-2023-10-16"
    assert "anthropic-beta" not in headers(claude)  # Vertex refuses some betas there
    assert (await sent(CLAUDE, {})).json()["anthropic_beta"] == ["b-provider"]
    config = {"x-portkey-config": orjson.dumps({"provider": "v",
                                                "anthropic_beta": "b-target"}).decode()}
    assert (await sent(CLAUDE, {**sdk, **config})).json()["anthropic_beta"] == ["b-target"]
    # Vertex's version stays its own whatever the SDK's says.
    versioned = await sent(CLAUDE, {"x-portkey-anthropic-version": "2023-06-01"})
    assert versioned.json()["anthropic_version"] == "vertex-2023-10-16"
    gemini = await sent("gemini-2.5-flash", sdk)
    assert gemini.path.endswith(":streamGenerateContent?alt=sse")
    assert "anthropic_beta" not in gemini.json()


SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


@pytest.mark.parametrize(("model", "native"), [
    ("claude-sonnet-4-6", True), ("claude-opus-4-6", True), ("claude-opus-4-7", True),
    ("publishers/anthropic/models/claude-opus-4-7", True), ("claude-sonnet-5", True),
    ("claude-sonnet-4-5@20250929", False), ("claude-haiku-4-5@20251001", False),
    ("claude-opus-4-5@20251101", False), ("claude-opus-4-1@20250805", False),
    ("claude-sonnet-4@20250514", False), ("claude-3-7-sonnet@20250219", False),
    ("publishers/anthropic/models/claude-sonnet-4-5@20250929", False)])
async def test_a_json_schema_is_structured_output_where_vertex_has_it(
        proxy: Any, upstream: Any, model: str, native: bool) -> None:
    """Anthropic lists fewer Claudes with structured outputs on Vertex (none of the 4.5s),
    which refuses `output_config.format` for the others ("Extra inputs are not permitted"):
    those get the schema as an instruction; a model it does not know is sent them."""
    upstream.body = ANTHROPIC_STREAM
    client = await proxy(vertex(upstream.url))
    resp = await client.post("/v1/chat/completions", json={
        "model": model, "stream": True, "messages": USER,
        "response_format": {"type": "json_schema", "json_schema": {"name": "s",
                                                                   "schema": SCHEMA}}})
    assert resp.status == 200
    await resp.read()
    sent = upstream.requests[-1].json()
    assert ("output_config" in sent) is native
    assert ("system" in sent) is not native
    if not native:
        assert sent["system"][0]["text"].endswith(orjson.dumps(SCHEMA).decode())


def build(model: str, **options: Any) -> Any:
    provider = build_providers(vertex("https://vertex.test"))["v"]
    if options:
        provider = provider.with_options(options)
    target = Target(provider, model).served()
    req = parse_chat_request(orjson.dumps({"model": model, "stream": True, "messages": USER}))
    return target.provider.build_request(req, target)


def test_which_models_are_claude() -> None:
    assert build(CLAUDE).url.endswith(f"/publishers/anthropic/models/{CLAUDE}:streamRawPredict")
    path = f"publishers/anthropic/models/{CLAUDE}"
    assert build(path).url == f"https://vertex.test{BASE}/{path}:streamRawPredict"
    for gemini in ("gemini-2.5-flash", "publishers/google/models/claude-like",
                   "endpoints/1234", "anthropic-claude"):
        assert build(gemini).url.endswith(":streamGenerateContent?alt=sse"), gemini


def test_portkeys_anthropic_dot_names_reach_claude() -> None:
    # Portkey's Vertex names a partner model by its publisher: `anthropic.claude-…` (its docs'
    # "prepend anthropic. to the model name"). Such a name went to Google's publisher as a
    # Gemini model (a 404 from Vertex); it is Claude's id, the publisher's prefix left out —
    # also where the id decides the request (no structured outputs for the 4.5s on Vertex).
    sent = build(f"anthropic.{CLAUDE}")
    assert sent.url == (f"https://vertex.test{BASE}/publishers/anthropic/models/"
                        f"{CLAUDE}:streamRawPredict")
    provider = build_providers(vertex("https://vertex.test"))["v"]
    target = Target(provider, f"anthropic.{CLAUDE}").served()
    req = parse_chat_request(orjson.dumps({
        "model": f"anthropic.{CLAUDE}", "messages": USER,
        "response_format": {"type": "json_schema", "json_schema": {"name": "s",
                                                                   "schema": SCHEMA}}}))
    body = orjson.loads(target.provider.build_request(req, target).body)
    assert "output_config" not in body and "model" not in body
    assert body["anthropic_version"] == "vertex-2023-10-16"


def test_a_targets_vertex_region_reaches_claude() -> None:
    url = build(CLAUDE, location="europe-west1").url
    assert url.startswith("https://vertex.test/v1/projects/my-proj/locations/europe-west1/"
                          "publishers/anthropic/")


def test_a_model_name_cannot_leave_the_model_path() -> None:
    from streamproxy.errors import InvalidRequest

    with pytest.raises(InvalidRequest):
        build("claude-x/../../other:rawPredict?x=")


def test_a_bad_model_name_is_refused_alike_for_claude_and_gemini() -> None:
    from streamproxy.errors import InvalidRequest

    for model in ("claude-x/../other", "gemini-x/../other"):
        with pytest.raises(InvalidRequest) as caught:
            build(model)
        assert str(caught.value) == f"'{model}' is not a valid Vertex model name."
        assert (caught.value.param, caught.value.code) == ("model", "invalid_value")


@pytest.mark.parametrize(("status", "body", "code"), [
    (529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
     "overloaded_error"),
    (429, {"error": {"code": 429, "message": "Quota exceeded for aiplatform.googleapis.com",
                     "status": "RESOURCE_EXHAUSTED"}}, "RESOURCE_EXHAUSTED"),
])
async def test_claudes_and_vertexs_errors_keep_their_codes(status: int, body: Any, code: str,
                                                          proxy: Any, upstream: Any) -> None:
    upstream.status, upstream.content_type = status, "application/json"
    upstream.body = orjson.dumps(body)
    client = await proxy(vertex(upstream.url))
    resp = await client.post("/v1/chat/completions", json={"model": CLAUDE, "messages": USER})
    assert resp.status == status
    err = (await resp.json())["error"]
    assert err["code"] == code
    assert err["message"] == (body["error"]["message"])


async def test_a_401_drops_the_token_for_claude_too(proxy: Any, upstream: Any,
                                                   tmp_path: Any) -> None:
    counter = tmp_path / "runs"
    script = ("import pathlib, sys; p = pathlib.Path(sys.argv[1]); "
              "n = int(p.read_text()) + 1 if p.exists() else 1; p.write_text(str(n)); "
              "print(f'ya29.token-{n}')")
    client = await proxy(vertex(upstream.url, token_command=[sys.executable, "-c", script,
                                                             str(counter)]))
    upstream.status, upstream.content_type = 401, "application/json"
    upstream.body = orjson.dumps({"error": {"code": 401, "message": "Request had invalid "
                                            "authentication credentials.",
                                            "status": "UNAUTHENTICATED"}})
    resp = await client.post("/v1/chat/completions", json={"model": CLAUDE, "messages": USER})
    assert resp.status == 401
    upstream.status, upstream.content_type = 200, "text/event-stream"
    upstream.body = GOLDEN["anthropic-text"].body
    resp = await client.post("/v1/chat/completions", json={"model": CLAUDE, "stream": True,
                                                           "messages": USER})
    assert collect(sse_chunks(await resp.read())).done
    assert [headers(r)["authorization"] for r in upstream.requests] == [
        "Bearer ya29.token-1", "Bearer ya29.token-2"]


@pytest.mark.parametrize("value", [5, "b1\r\nx-evil: 1", ["b1", 3]])
def test_a_providers_betas_that_cannot_be_sent_are_a_config_error(value: Any) -> None:
    from streamproxy.config import ConfigError

    with pytest.raises(ConfigError) as info:
        vertex("https://vertex.test", anthropic_beta=value)
    assert info.value.key == "providers.v.anthropic_beta"


def test_an_image_by_url_is_a_400_naming_it_before_vertex_is_asked() -> None:
    """Claude on Vertex takes no URL image sources (Vertex answers one with a 400 naming
    `image.source.base64.data`, "URL sources are not supported"), which the Anthropic API
    takes: the image goes as a data: URL there, and the proxy fetches nothing. So, as on
    Bedrock, an http(s) image is a 400 naming its part, before anything is sent."""
    provider = build_providers(vertex("https://vertex.test"))["v"]
    target = Target(provider, CLAUDE).served()
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    req = parse_chat_request(orjson.dumps({"model": CLAUDE, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "What is it?"}, image]}]}))
    with pytest.raises(InvalidRequest) as caught:
        target.provider.build_request(req, target)
    assert caught.value.param == "messages[0].content[1].image_url.url"
    assert "data: URL" in str(caught.value) and caught.value.code == "unsupported_value"
    inline = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    req = parse_chat_request(orjson.dumps({"model": CLAUDE, "messages": [
        {"role": "user", "content": [inline]}]}))
    sent = orjson.loads(target.provider.build_request(req, target).body)
    assert sent["messages"][0]["content"][0]["source"]["type"] == "base64"


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(("body", "status", "code"), [
    ({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, 529,
     "overloaded_error"),
    ({"type": "error", "error": {"type": "rate_limit_error", "message": "Slow down"}}, 429,
     "rate_limit_error"),
    ({"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED"}}, 429,
     "RESOURCE_EXHAUSTED"),
    ([{"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED"}}],
     429, "RESOURCE_EXHAUSTED"),
], ids=["claude-overloaded", "claude-rate-limit", "vertex-quota", "vertex-quota-listed"])
async def test_an_error_inside_a_200_has_the_status_it_names(
        body: Any, status: int, code: str, stream: bool, proxy: Any, upstream: Any) -> None:
    # Claude's error names its status by its type, Vertex's by its code, as when each comes
    # with its status (above): each was a 502 api_error, which retry and fallback codes
    # listing 429 or 529 did not act on.
    upstream.content_type = "text/event-stream" if stream else "application/json"
    upstream.body = orjson.dumps(body)
    client = await proxy(vertex(upstream.url))
    resp = await client.post("/v1/chat/completions", json={"model": CLAUDE, "messages": USER,
                                                           "stream": stream})
    assert resp.status == status
    err = (await resp.json())["error"]
    assert (err["code"], err["type"]) == (code, "rate_limit_error" if status == 429
                                          else "api_error")


TARGET_TOKEN = "ya29.target-own-token"  # a config target's or virtual key's access token


@pytest.mark.parametrize("provider_auth", ["api_key", "token_env", "token_command"])
@pytest.mark.parametrize("model", [CLAUDE, "gemini-2.5-flash"])
@pytest.mark.parametrize("how", [
    {"x-portkey-config": orjson.dumps({"provider": "v", "api_key": TARGET_TOKEN}).decode()},
    {"x-portkey-config": "named"},
    {"x-portkey-virtual-key": "vk"},
    {"x-portkey-provider": "@vk"},
])
async def test_a_target_s_own_token_wins_over_the_provider_s(
        provider_auth: str, model: str, how: dict[str, str], proxy: Any, upstream: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # As on every provider type (Bedrock's too), the key a config target or virtual key
    # names is the one sent, as the Vertex access token: the provider's token (its source's,
    # or its api_key) went instead, so a virtual key silently used the operator's account.
    monkeypatch.setenv("SP_TEST_VERTEX_TOKEN", "ya29.operator-env")
    auth: dict[str, Any] = {
        "api_key": {},
        "token_env": {"token_env": "SP_TEST_VERTEX_TOKEN"},
        # a command that fails: the target's token needs none, and waits for none
        "token_command": {"token_command": [sys.executable, "-c", "import sys; sys.exit(3)"]},
    }[provider_auth]
    config = make_config(
        {"v": {"type": "vertex", "base_url": upstream.url, "project": "my-proj",
               "location": "us-east5", **({"api_key": "ya29.configured"}
                                          if provider_auth == "api_key" else {}), **auth}},
        default="v", virtual_keys={"vk": {"provider": "v", "api_key": TARGET_TOKEN}},
        configs={"named": {"provider": "v", "api_key": TARGET_TOKEN}})
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps(
        {"id": "msg_1", "type": "message", "role": "assistant", "model": CLAUDE,
         "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
         "usage": {"input_tokens": 1, "output_tokens": 1}} if model == CLAUDE else
        {"candidates": [{"content": {"role": "model", "parts": [{"text": "ok"}]},
                         "finishReason": "STOP"}]})
    client = await proxy(config)
    resp = await client.post("/v1/chat/completions", headers=how,
                             json={"model": model, "messages": USER})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["choices"][0]["message"]["content"] == "ok"
    assert headers(upstream.requests[0])["authorization"] == f"Bearer {TARGET_TOKEN}"


def test_a_claude_model_s_full_resource_name_reaches_claude() -> None:
    # The console's (and google-genai's) full name of a model, `projects/…/locations/…/…`, is
    # its path after the location: for Claude's, that path is Claude's. It went to Gemini's
    # `streamGenerateContent` with Gemini's body, which Claude's endpoint does not serve.
    full = f"projects/my-proj/locations/us-east5/publishers/anthropic/models/{CLAUDE}"
    sent = build(full)
    assert sent.url == (f"https://vertex.test{BASE}/publishers/anthropic/models/"
                        f"{CLAUDE}:streamRawPredict")
    body = orjson.loads(sent.body)
    assert body["anthropic_version"] == "vertex-2023-10-16" and "messages" in body
    provider = build_providers(vertex("https://vertex.test", anthropic_beta="b1"))["v"]
    assert provider.answering_option_values(Target(provider, full)) == \
        provider.answering_option_values(Target(provider, CLAUDE)) != {}
    with pytest.raises(InvalidRequest) as caught:  # another project's: refused as for Gemini
        build(full.replace("my-proj", "other-proj"))
    assert "project and location" in str(caught.value)


@pytest.mark.parametrize("model", [CLAUDE, "gemini-2.5-flash"])
async def test_a_401_on_a_target_s_own_token_keeps_the_provider_s(
        model: str, proxy: Any, upstream: Any, tmp_path: Any) -> None:
    # Vertex's 401 drops the token that was refused; a target's own token refused is not the
    # provider's: dropping that made every other request wait for a new one, and any client
    # sending a bad key in x-portkey-config made the provider fetch a token per request.
    counter = tmp_path / "runs"
    script = ("import pathlib, sys; p = pathlib.Path(sys.argv[1]); "
              "n = int(p.read_text()) + 1 if p.exists() else 1; p.write_text(str(n)); "
              "print(f'ya29.token-{n}')")
    client = await proxy(vertex(upstream.url, token_command=[sys.executable, "-c", script,
                                                             str(counter)], token_refresh=3600))
    refused = orjson.dumps({"error": {"code": 401, "message": "Request had invalid "
                                      "authentication credentials.", "status": "UNAUTHENTICATED"}})
    own = {"x-portkey-config": orjson.dumps({"provider": "v", "api_key": "ya29.bad"}).decode()}
    for _ in range(2):
        upstream.status, upstream.content_type, upstream.body = 200, "application/json", (
            orjson.dumps({"candidates": [{"content": {"role": "model", "parts": [{"text": "ok"}]},
                                          "finishReason": "STOP"}]}))
        if model == CLAUDE:
            upstream.body = orjson.dumps({
                "id": "msg_1", "type": "message", "role": "assistant", "model": CLAUDE,
                "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
                "usage": {"input_tokens": 1, "output_tokens": 1}})
        resp = await client.post("/v1/chat/completions", json={"model": model, "messages": USER})
        assert resp.status == 200
        upstream.status, upstream.body = 401, refused
        resp = await client.post("/v1/chat/completions", headers=own,
                                 json={"model": model, "messages": USER})
        assert resp.status == 401
    assert [headers(r)["authorization"] for r in upstream.requests] == [
        "Bearer ya29.token-1", "Bearer ya29.bad"] * 2
    assert counter.read_text() == "1"


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
     529, "overloaded_error"),
    ([{"error": {"code": 429, "message": "Quota exceeded for aiplatform.googleapis.com",
                 "status": "RESOURCE_EXHAUSTED"}}], 429, "RESOURCE_EXHAUSTED"),
    ({"error": {"code": 403, "message": "Permission 'aiplatform.endpoints.predict' denied",
                "status": "PERMISSION_DENIED"}}, 403, "PERMISSION_DENIED"),
])
async def test_a_stream_answered_with_one_error_object_keeps_its_status(
        body: Any, status: int, code: str, proxy: Any, upstream: Any) -> None:
    # A stream request answered 200 with one JSON error instead of events: the status the
    # error names, as the same object gets through `type: anthropic` (its type's status) and
    # Gemini on Vertex (Google's `code`) — it was a 502 for Claude on Vertex, which
    # retry and fallback codes listing 429 or 529 did not act on.
    upstream.content_type, upstream.body = "application/json", orjson.dumps(body)
    client = await proxy(vertex(upstream.url))
    resp = await client.post("/v1/chat/completions", json={"model": CLAUDE, "stream": True,
                                                           "messages": USER})
    assert resp.status == status
    err = (await resp.json())["error"]
    assert err["code"] == code and err["message"] == (
        body[0] if isinstance(body, list) else body)["error"]["message"]


VERTEX_QUOTA = (b'data: {"error": {"code": 429, "message": "Quota exceeded for '
                b'aiplatform.googleapis.com", "status": "RESOURCE_EXHAUSTED", "details": [{"@type":'
                b' "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}]}}\n\n')


async def test_vertexs_error_event_in_claudes_stream_is_vertexs_error(proxy: Any,
                                                                       upstream: Any) -> None:
    """Vertex's own error (Google's shape, no `type`) as an event of streamRawPredict's stream
    was a 502 "malformed None event (KeyError('type'))": it is Google's error, status and wait."""
    upstream.body = VERTEX_QUOTA
    client = await proxy(vertex(upstream.url))
    resp = await client.post("/v1/chat/completions", json={
        "model": CLAUDE, "stream": True, "messages": USER},
        headers={"x-portkey-config": '{"retry": {"attempts": 0}}'})
    assert resp.status == 429
    assert resp.headers["retry-after"] == "7"
    assert (await resp.json())["error"] == {
        "message": "Quota exceeded for aiplatform.googleapis.com", "type": "rate_limit_error",
        "param": None, "code": "RESOURCE_EXHAUSTED"}


def test_vertexs_error_event_mid_stream_is_an_error_frame_of_its_own() -> None:
    from streamproxy.openai_api.chunks import ChunkEncoder
    provider = build_providers(vertex("http://v"))["v"].for_model(CLAUDE)
    req = parse_chat_request(orjson.dumps({"model": CLAUDE, "stream": True, "messages": USER}))
    out = ChunkEncoder(completion_id="c", created=1, model="m", include_usage=False)
    translator = provider.stream_translator(req, out)
    start = ANTHROPIC_STREAM[:ANTHROPIC_STREAM.index(b"event: content_block_stop")]
    translator.feed(start + VERTEX_QUOTA)
    c = collect(sse_chunks(out.take()))
    assert translator.done and c.content and not c.done
    assert c.error == {"message": "Quota exceeded for aiplatform.googleapis.com",
                       "type": "rate_limit_error", "param": None, "code": "RESOURCE_EXHAUSTED"}


def test_a_domain_scoped_project_is_a_project() -> None:
    # (`example.com:my-project` was refused as "is required for type vertex")
    from streamproxy.config import ConfigError

    config = make_config({"v": {"type": "vertex", "project": "example.com:my-project",
                                "location": "us-central1", "api_key": "ya29.k"}}, default="v")
    provider = build_providers(config)["v"]
    for model, path in (("gemini-2.5-flash", "google/models/gemini-2.5-flash:generate"),
                        (CLAUDE, f"anthropic/models/{CLAUDE}:rawPredict")):
        target = Target(provider, model).served()
        req = parse_chat_request(orjson.dumps({"model": model, "messages": USER}))
        assert target.provider.build_request(req, target).url == (
            "https://us-central1-aiplatform.googleapis.com/v1/projects/example.com:my-project/"
            f"locations/us-central1/publishers/{path}" + ("Content" if "gemini" in model else ""))
    for bad in ("example.com:my/x", "a:b:c", ":p", "x.com:", "p?x", "p#x", "a%2Fb", "x.com:../p"):
        with pytest.raises(ConfigError, match="project"):
            make_config({"v": {"type": "vertex", "project": bad, "location": "us-central1",
                               "api_key": "ya29.k"}}, default="v")


def test_an_upper_case_location_is_addressed_in_lower_case() -> None:
    # (`US-CENTRAL1` went into the host and the path as written)
    config = make_config({"v": {"type": "vertex", "project": "p", "location": "US-CENTRAL1",
                                "api_key": "ya29.k"}}, default="v")
    provider = build_providers(config)["v"]
    for options, location in (({}, "us-central1"), ({"location": "Europe-West1"}, "europe-west1")):
        chosen = provider.with_options(options) if options else provider
        for model in ("gemini-2.5-flash", CLAUDE):
            target = Target(chosen, model).served()
            req = parse_chat_request(orjson.dumps({"model": model, "messages": USER}))
            assert target.provider.build_request(req, target).url.startswith(
                f"https://{location}-aiplatform.googleapis.com/v1/projects/p/"
                f"locations/{location}/publishers/")


async def test_a_stream_answered_with_a_whole_message_is_streamed(proxy: Any,
                                                                  upstream: Any) -> None:
    # streamRawPredict answered with rawPredict's whole Message (a relay that ignores the
    # stream): streamed as `type: anthropic` streams it, not a 502 upstream_stream_truncated.
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps({
        "id": "msg_1", "type": "message", "role": "assistant", "model": CLAUDE,
        "content": [{"type": "text", "text": "Hi!"},
                    {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"n": 1}}],
        "stop_reason": "tool_use", "usage": {"input_tokens": 3, "output_tokens": 2}})
    client = await proxy(vertex(upstream.url))
    resp = await client.post("/v1/chat/completions", json={
        "model": CLAUDE, "stream": True, "stream_options": {"include_usage": True},
        "messages": USER})
    assert resp.status == 200
    got = collect(sse_chunks(await resp.read()))
    assert got.done and got.content == "Hi!" and got.finish_reason == "tool_calls"
    assert [(t["id"], t["name"], t["arguments"]) for t in got.tool_calls] == [
        ("toolu_1", "f", '{"n":1}')]
    assert got.usage is not None and got.usage["total_tokens"] == 5


@pytest.mark.parametrize("answered", [False, True], ids=["http-400", "inside-a-200"])
def test_claudes_error_quoting_a_cut_emoji_is_still_claudes(answered: bool) -> None:
    # Claude's error whose message quotes the client's text cut inside an emoji (a lone
    # surrogate escape, valid JSON orjson refuses) was read as Google's: its type and the
    # context overflow it names were lost (code null), where `type: anthropic` reads it.
    provider = build_providers(vertex("http://v"))["v"].for_model(CLAUDE)
    body = (b'{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too '
            b'long: 210000 tokens > 200000 maximum (\\ud83d"}}')
    err = provider.answered_error(body) if answered else provider.parse_error(400, body)
    assert (err.status, err.code) == (400, "context_length_exceeded")


@pytest.mark.parametrize(("extra", "param"), [
    ({"web_search_options": {}}, "web_search_options"),
    ({"modalities": ["text", "image"]}, "modalities"),
])
async def test_a_refusal_for_claude_names_claude_not_the_vertex_provider(
        proxy: Any, upstream: Any, extra: dict[str, Any], param: str) -> None:
    # The same Vertex provider searches with Google and answers with images for its Gemini
    # models: Claude's refusal said the provider did neither, and that web search "needs an
    # OpenAI-type or Gemini provider", the type the client was using.
    client = await proxy(vertex(upstream.url))
    resp = await client.post("/v1/chat/completions", json={
        "model": CLAUDE, "messages": USER, **extra})
    assert resp.status == 400
    err = (await resp.json())["error"]
    assert (err["param"], err["code"]) == (param, "unsupported_value")
    assert err["message"].startswith("Claude on provider 'v' does not ")
    assert "Gemini provider" not in err["message"]
    assert upstream.requests == []
