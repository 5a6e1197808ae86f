"""Azure-shaped clients: the `AzureOpenAI` SDK pointed at the proxy calls
`POST /openai/deployments/{deployment}/chat/completions?api-version=…` with its key in
`api-key` (as LiteLLM's proxy serves them): the deployment is the model, `api-key` the proxy
key when auth is on (the client's provider key, forwarded as ever, when it is off)."""

from __future__ import annotations

from typing import Any

import openai
import orjson
import pytest

from tests.helpers import make_config, read_sdk_stream

VERSION = "2024-10-21"
PROXY_KEY = "proxy-key-team-a-0123456789"
USER = [{"role": "user", "content": "hi"}]
COMPLETION = orjson.dumps({
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
STREAM = b"".join(b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in [
    {"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
     "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"},
                  "finish_reason": None}]},
    {"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
     "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]},
    {"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
     "choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}},
]) + b"data: [DONE]\n\n"


def config(url: str, front: str, auth: bool, provider_key: bool = True) -> Any:
    up: dict[str, Any] = {"type": "openai", "base_url": url, "default_model": "m"}
    if provider_key:
        up["api_key"] = "sk-upstream"
    sections: dict[str, Any] = {"server": {"front": front}}
    if auth:
        sections["auth"] = {"keys": [{"name": "team-a", "key": PROXY_KEY}]}
    return make_config({"up": up}, default="up", **sections)


def azure_sdk(client: Any, key: str, **extra: Any) -> openai.AsyncAzureOpenAI:
    return openai.AsyncAzureOpenAI(azure_endpoint=str(client.make_url("")).rstrip("/"),
                                   api_key=key, api_version=VERSION, max_retries=0, **extra)


@pytest.mark.parametrize("front", ["lean", "aiohttp"])
@pytest.mark.parametrize("auth", [True, False], ids=["auth", "open"])
async def test_the_azure_openai_sdk_is_served_with_its_deployment_as_the_model(
        proxy: Any, upstream: Any, front: str, auth: bool) -> None:
    # The SDK's path was a 404: no route, whatever the config.
    client = await proxy(config(upstream.url, front, auth))
    sdk = azure_sdk(client, PROXY_KEY if auth else "sk-client")
    upstream.body = STREAM
    got = await read_sdk_stream(await sdk.chat.completions.create(
        model="gpt4o-prod", messages=USER, stream=True, stream_options={"include_usage": True}))
    assert (got.text, got.finish, got.usage.total_tokens) == ("Hello", "stop", 4)
    upstream.body, upstream.content_type = COMPLETION, "application/json"
    # A client built for one deployment: the path names it, whatever the body's model says
    # (Azure serves the path's).
    fixed = azure_sdk(client, PROXY_KEY if auth else "sk-client", azure_deployment="my-dep")
    answer = await fixed.chat.completions.create(model="gpt-4o", messages=USER)
    assert answer.choices[0].message.content == "ok"
    streamed, plain = upstream.requests
    assert streamed.path == plain.path == "/chat/completions"  # (the provider's own path)
    assert streamed.json()["model"] == "gpt4o-prod" and plain.json()["model"] == "my-dep"
    for sent in (streamed, plain):  # the provider's key, never the client's api-key
        assert sent.headers["Authorization"] == "Bearer sk-upstream"
        assert "api-key" not in {k.lower() for k in sent.headers}


async def test_a_wrong_api_key_is_the_proxys_401(proxy: Any, upstream: Any,
                                                access_log: Any) -> None:
    client = await proxy(config(upstream.url, "lean", auth=True))
    with pytest.raises(openai.AuthenticationError):
        await azure_sdk(client, "wrong").chat.completions.create(model="d", messages=USER)
    assert upstream.requests == []
    [line] = access_log()  # a chat request refused, logged as one
    assert line["status"] == 401


async def test_without_auth_the_api_key_is_the_clients_provider_key(
        proxy: Any, upstream: Any) -> None:
    upstream.body, upstream.content_type = COMPLETION, "application/json"
    client = await proxy(config(upstream.url, "lean", auth=False, provider_key=False))
    await azure_sdk(client, "sk-client").chat.completions.create(model="d", messages=USER)
    [sent] = upstream.requests
    assert sent.headers["Authorization"] == "Bearer sk-client"


@pytest.mark.parametrize("front", ["lean", "aiohttp"])
async def test_the_log_has_the_body_the_client_sent_not_the_one_routed(
        proxy: Any, upstream: Any, access_log: Any, front: str) -> None:
    """The deployment replaces the body's model before routing; the access log's `bytes_in`
    (and the request-bytes counter) and its `request_body` are the client's all the same: they
    were the rewritten body's, re-encoded with the deployment in it."""
    upstream.body, upstream.content_type = COMPLETION, "application/json"
    cfg = make_config({"up": {"type": "openai", "base_url": upstream.url, "api_key": "sk-up",
                              "default_model": "m"}}, default="up", server={"front": front},
                      logging={"log_bodies": True})
    sent = b'{\n  "model": "gpt-4o",\n  "messages": [{"role": "user", "content": "hi"}]\n}'
    resp = await (await proxy(cfg)).post(
        f"/openai/deployments/my-dep/chat/completions?api-version={VERSION}", data=sent,
        headers={"content-type": "application/json", "api-key": "sk-client"})
    assert resp.status == 200
    assert upstream.requests[0].json()["model"] == "my-dep"  # (routed as the deployment)
    [line] = access_log()
    assert line["model"] == "my-dep"
    assert line["bytes_in"] == len(sent)
    assert line["request_body"] == orjson.loads(sent)


@pytest.mark.parametrize("front", ["lean", "aiohttp"])
@pytest.mark.parametrize("auth", [True, False], ids=["auth", "open"])
async def test_a_deployment_naming_its_provider_is_routed_there(
        proxy: Any, upstream: Any, access_log: Any, front: str, auth: bool) -> None:
    # A client built for one deployment (`azure_deployment`, as LangChain's AzureChatOpenAI
    # is) puts it in its base URL as it is: `other/gpt-4o` (the proxy's `provider/model`, an
    # `@provider/model`) arrives with its slash (the SDK quotes only a per-call model's). The
    # route's segment took none: a 404, or with auth a 401 "missing proxy key" (its api-key
    # unread off the route).
    upstream.body, upstream.content_type = COMPLETION, "application/json"
    cfg = config(upstream.url, front, auth)
    client = await proxy(make_config(
        {"up": {"type": "openai", "base_url": upstream.url, "default_model": "m"},
         "other": {"type": "openai", "base_url": upstream.url, "api_key": "sk-other",
                   "default_model": "m"}}, default="up", **cfg.sections))
    for deployment in ("other/gpt-4o", "@other/gpt-4o"):
        sdk = azure_sdk(client, PROXY_KEY if auth else "sk-client", azure_deployment=deployment)
        answer = await sdk.chat.completions.create(model="ignored", messages=USER)
        assert answer.choices[0].message.content == "ok"
    assert [r.json()["model"] for r in upstream.requests] == ["gpt-4o", "gpt-4o"]
    assert {r.headers["Authorization"] for r in upstream.requests} == {"Bearer sk-other"}
    assert [(line["provider"], line["status"]) for line in access_log()] == [("other", 200)] * 2


async def test_the_azure_paths_not_served_are_a_404_to_the_sdk_with_its_key(
        proxy: Any, upstream: Any) -> None:
    # Embeddings or legacy completions through the same AzureOpenAI client: their api-key was
    # read on the chat route alone, so with auth on they were a 401 "Missing proxy API key"
    # and its client went looking for a key problem. A 404 says the path is not served.
    client = await proxy(config(upstream.url, "lean", auth=True))
    sdk = azure_sdk(client, PROXY_KEY)
    with pytest.raises(openai.NotFoundError, match="Unknown path"):
        await sdk.embeddings.create(model="d", input="hi")
    with pytest.raises(openai.NotFoundError, match="Unknown path"):
        await sdk.completions.create(model="d", prompt="hi")
    with pytest.raises(openai.AuthenticationError):  # (a wrong key is still refused first)
        await azure_sdk(client, "wrong").embeddings.create(model="d", input="hi")
    assert upstream.requests == []


@pytest.mark.parametrize("other", ["authorization", "x-portkey-api-key"])
async def test_the_proxy_key_in_api_key_and_another_header_is_never_forwarded(
        proxy: Any, upstream: Any, other: str) -> None:
    # The key presented the usual way too (a client given it as api_key and in its default
    # headers): api-key was left as the client's provider key, so the proxy key went to the
    # provider as its Authorization bearer.
    upstream.body, upstream.content_type = COMPLETION, "application/json"
    client = await proxy(config(upstream.url, "lean", auth=True, provider_key=False))
    value = f"Bearer {PROXY_KEY}" if other == "authorization" else PROXY_KEY
    resp = await client.post(f"/openai/deployments/d/chat/completions?api-version={VERSION}",
                             json={"messages": USER},
                             headers={"api-key": PROXY_KEY, other: value})
    assert resp.status == 200
    [sent] = upstream.requests  # (with no key: the provider's to refuse)
    assert not any(PROXY_KEY in v for v in sent.headers.values())


@pytest.mark.parametrize("body", [
    b"\xef\xbb\xbf" + orjson.dumps({"model": "other-model", "messages": USER}),
    b'{"model": "other-model", "messages": [{"role": "user", "content": "cut \\ud83d"}]}',
], ids=["bom", "lone-surrogate"])
async def test_a_body_read_after_repair_still_gets_the_deployment_as_its_model(
        proxy: Any, upstream: Any, body: bytes) -> None:
    # A body orjson refuses but the chat route reads (a leading BOM; a lone surrogate escape,
    # a JavaScript client's text cut inside an emoji) kept its own model: the deployment the
    # path named was ignored, the request routed by the body's model instead.
    upstream.body, upstream.content_type = COMPLETION, "application/json"
    client = await proxy(config(upstream.url, "lean", auth=False))
    resp = await client.post(f"/openai/deployments/my-dep/chat/completions?api-version={VERSION}",
                             data=body, headers={"content-type": "application/json"})
    assert resp.status == 200
    [sent] = upstream.requests
    assert sent.json()["model"] == "my-dep"


@pytest.mark.parametrize("front", ["lean", "aiohttp"])
async def test_a_missing_key_on_the_azure_paths_names_the_api_key_header(
        proxy: Any, upstream: Any, front: str) -> None:
    # The 401 named `Authorization` and `x-portkey-api-key` alone: an AzureOpenAI client,
    # whose key goes in `api-key` (read there), was told to send a header its SDK never sets.
    client = await proxy(config(upstream.url, front, auth=True))
    for path in (f"/openai/deployments/d/chat/completions?api-version={VERSION}",
                 f"/openai/deployments/d/embeddings?api-version={VERSION}"):
        resp = await client.post(path, json={"messages": USER, "input": "hi"})
        assert resp.status == 401, path
        message = (await resp.json())["error"]["message"]
        assert message.startswith("Missing proxy API key") and "`api-key: <key>`" in message
    resp = await client.post("/v1/chat/completions", json={"messages": USER})
    assert resp.status == 401 and "`api-key: <key>`" not in (await resp.json())["error"]["message"]
    assert upstream.requests == []


async def test_the_azure_route_is_the_chat_routes_path_to_conditions_and_no_other_call_is_served(
        proxy: Any, upstream: Any, tmp_path: Any) -> None:
    # Documented: a config's `url.pathname` is `/v1/chat/completions` on this route too (the
    # same chat, so a config written for the chat route routes it alike); the SDK's stored
    # completions and models calls are a 404 (served on /v1/... only).
    upstream.body, upstream.content_type = COMPLETION, "application/json"
    client = await proxy(make_config(
        {"up": {"type": "openai", "base_url": upstream.url, "api_key": "sk-up",
                "default_model": "m"},
         "other": {"type": "openai", "base_url": upstream.url, "api_key": "sk-other",
                   "default_model": "m"}}, default="up", server={"front": "lean"},
        storage={"path": str(tmp_path / "s.sqlite3")}))
    config = {"strategy": {"mode": "conditional", "default": "up", "conditions": [
        {"query": {"url.pathname": "/v1/chat/completions"}, "then": "other"}]},
        "targets": [{"name": "up", "provider": "up"}, {"name": "other", "provider": "other"}]}
    sdk = azure_sdk(client, "sk-client",
                    default_headers={"x-portkey-config": orjson.dumps(config).decode()})
    answer = await sdk.chat.completions.create(model="d", messages=USER, store=True)
    assert answer.choices[0].message.content == "ok"
    assert [r.headers["Authorization"] for r in upstream.requests] == ["Bearer sk-other"]
    with pytest.raises(openai.NotFoundError, match="Unknown path: GET /openai/chat/"):
        await sdk.chat.completions.retrieve(answer.id)
    with pytest.raises(openai.NotFoundError, match="Unknown path: GET /openai/models"):
        await sdk.models.list()


def v1_sdk(client: Any, key: str, **extra: Any) -> openai.AsyncOpenAI:
    """The plain openai client as Azure's v1 API is called: `base_url` `{endpoint}/openai/v1`."""
    return openai.AsyncOpenAI(base_url=str(client.make_url("/openai/v1")), api_key=key,
                              max_retries=0, **extra)


@pytest.mark.parametrize("front", ["lean", "aiohttp"])
@pytest.mark.parametrize("auth", [True, False], ids=["auth", "open"])
async def test_azure_v1_api_clients_are_served_as_the_chat(
        proxy: Any, upstream: Any, access_log: Any, front: str, auth: bool) -> None:
    # A client of Azure's v1 API (the plain openai client, base_url `…/openai/v1`, the model in
    # the body) moved to the proxy by its host alone: `POST /openai/v1/chat/completions` was
    # a 404 `unknown_url` (with auth on, whatever key it sent).
    client = await proxy(config(upstream.url, front, auth))
    key = PROXY_KEY if auth else "sk-client"
    upstream.body = STREAM
    got = await read_sdk_stream(await v1_sdk(client, key).chat.completions.create(
        model="gpt4o-prod", messages=USER, stream=True, stream_options={"include_usage": True}))
    assert (got.text, got.finish, got.usage.total_tokens) == ("Hello", "stop", 4)
    # Its key in Azure's `api-key` header (as Azure's v1 API takes it too), and the preview's
    # `api-version=preview` query: read as on the other /openai/ paths, not at all.
    upstream.body, upstream.content_type = COMPLETION, "application/json"
    resp = await client.post("/openai/v1/chat/completions?api-version=preview",
                             json={"model": "gpt-4o", "messages": USER},
                             headers={"api-key": key})
    assert resp.status == 200 and (await resp.json())["choices"][0]["message"]["content"] == "ok"
    streamed, plain = upstream.requests
    assert streamed.path == plain.path == "/chat/completions"
    assert [streamed.json()["model"], plain.json()["model"]] == ["gpt4o-prod", "gpt-4o"]
    for sent in (streamed, plain):  # the provider's key, never the client's
        assert sent.headers["Authorization"] == "Bearer sk-upstream"
        assert "api-key" not in {k.lower() for k in sent.headers}
    assert [(line["model"], line["status"]) for line in access_log()] == [
        ("gpt4o-prod", 200), ("gpt-4o", 200)]


async def test_azure_v1_api_refusals_are_logged_as_the_chats(
        proxy: Any, upstream: Any, access_log: Any) -> None:
    # A refused chat on that path is a chat request's log line, as on the other chat routes;
    # its missing key's 401 names `api-key`, the header Azure's clients know.
    client = await proxy(config(upstream.url, "aiohttp", auth=True))
    with pytest.raises(openai.AuthenticationError):
        await v1_sdk(client, "wrong").chat.completions.create(model="d", messages=USER)
    resp = await client.post("/openai/v1/chat/completions", json={"messages": USER})
    assert resp.status == 401 and "`api-key: <key>`" in (await resp.json())["error"]["message"]
    assert [line["status"] for line in access_log()] == [401, 401]
    with pytest.raises(openai.NotFoundError, match="Unknown path: GET /openai/v1/models"):
        await v1_sdk(client, PROXY_KEY).models.list()  # (documented: the chat alone)
    assert upstream.requests == []
