"""Azure OpenAI (`type: azure`).

No recorded Azure stream is in tests/fixtures, so the streams here are built from Azure's
documented chunk shapes (provider-streams.md §8; Azure OpenAI content-filtering docs): a first
chunk with `choices: []`, empty id/model and `prompt_filter_results`; `content_filter_results`
on each choice; and, in asynchronous filter mode, choices without `delta` that carry only
filter results and offsets.
"""

from __future__ import annotations

import random
from typing import Any

import openai
import orjson
import pytest

from streamproxy.config import ConfigError, load_config
from streamproxy.errors import InvalidRequest
from streamproxy.openai_api.chunks import ChunkEncoder
from streamproxy.openai_api.request import parse_chat_request
from streamproxy.providers.azure import AzureOpenAIProvider, AzureTranslator
from streamproxy.providers.openai_compat import PassthroughTranslator
from streamproxy.routing.target import Target
from streamproxy.server.app import build_providers
from tests.conftest import provider_config
from tests.helpers import (
    collect,
    make_config,
    openai_sdk,
    random_splits,
    read_sdk_stream,
    sse_chunks,
)

VERSION = "2024-10-21"
SAFE = {"hate": {"filtered": False, "severity": "safe"},
        "self_harm": {"filtered": False, "severity": "safe"}}
ENVELOPE = {"created": 1727000000, "id": "chatcmpl-A1", "model": "gpt-4o-2024-08-06",
            "object": "chat.completion.chunk", "system_fingerprint": "fp_1"}
PREAMBLE = {"choices": [], "created": 0, "id": "", "model": "", "object": "",
            "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": SAFE}]}


def choice(delta: dict[str, Any] | None, finish: str | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {"content_filter_results": SAFE, "finish_reason": finish, "index": 0,
                         "logprobs": None}
    if delta is not None:
        c["delta"] = delta
    return c


def sse(*chunks: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


USAGE = {"completion_tokens": 3, "prompt_tokens": 10, "total_tokens": 13}
STREAM = sse(
    PREAMBLE,
    {**ENVELOPE, "choices": [choice({"content": "", "refusal": None, "role": "assistant"})]},
    {**ENVELOPE, "choices": [choice({"content": "Hello"})]},
    {**ENVELOPE, "choices": [choice({"content": " there!"})]},
    {**ENVELOPE, "choices": [choice({}, "stop")]},
    {**ENVELOPE, "choices": [], "usage": USAGE},
)
# Asynchronous filter mode: annotations arrive as choices without a delta (often with an empty
# envelope), and the finish can come that way too.
ANNOTATION = {"choices": [{"content_filter_offsets": {"check_offset": 0, "start_offset": 0,
                                                      "end_offset": 12},
                           "content_filter_results": SAFE, "finish_reason": None, "index": 0}],
              "created": 0, "id": "", "model": "", "object": ""}
ASYNC_STREAM = sse(
    PREAMBLE,
    {**ENVELOPE, "choices": [choice({"content": "", "role": "assistant"})]},
    {**ENVELOPE, "choices": [choice({"content": "Hello"})]},
    ANNOTATION,
    {**ENVELOPE, "choices": [choice(None, "stop")]},
    ANNOTATION,
    {**ENVELOPE, "choices": [], "usage": USAGE},
)
STREAM_REQ = {"model": "m", "stream": True, "stream_options": {"include_usage": True},
              "messages": [{"role": "user", "content": "hi"}]}


def azure_config(url: str, **extra: Any) -> Any:
    return provider_config("azure", url, api_version=VERSION, **extra)


def check(out: bytes, content: str) -> None:
    chunks = sse_chunks(out)
    c = collect(chunks)  # one id, one role, finish once, usage only on a choices:[] chunk
    assert c.error is None and c.done
    assert c.ids == {"chatcmpl-A1"}
    assert c.content == content
    assert c.finish_reason == "stop"
    assert c.usage == USAGE
    for chunk in chunks[:-1]:
        assert chunk["object"] == "chat.completion.chunk"
        assert all("delta" in ch for ch in chunk["choices"])


def test_the_plain_passthrough_already_drops_the_prompt_filter_preamble() -> None:
    enc = ChunkEncoder(completion_id="c", created=1, model="m", include_usage=False)
    tr = PassthroughTranslator(enc, 1 << 20, provider="p", client_wants_usage=True)
    tr.feed(STREAM)
    tr.close()
    check(enc.take(), "Hello there!")


@pytest.mark.parametrize("body", [STREAM, ASYNC_STREAM], ids=["sync-filter", "async-filter"])
async def test_stream_through_the_proxy_at_random_splits(proxy: Any, upstream: Any,
                                                         body: bytes) -> None:
    rng = random.Random(len(body))
    client = await proxy(azure_config(upstream.url))
    for _ in range(3):
        upstream.pieces = random_splits(body, rng, max_piece=rng.choice([5, 50]))
        resp = await client.post("/v1/chat/completions", json=STREAM_REQ)
        assert resp.status == 200
        check(await resp.read(), "Hello there!" if body is STREAM else "Hello")


async def test_async_filter_finish_without_delta_gets_an_empty_delta(proxy: Any,
                                                                    upstream: Any) -> None:
    upstream.body = ASYNC_STREAM
    client = await proxy(azure_config(upstream.url))
    resp = await client.post("/v1/chat/completions", json=STREAM_REQ)
    chunks = sse_chunks(await resp.read())
    [finish] = [c for c in chunks[:-1] if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finish["choices"][0]["delta"] == {}
    assert finish["choices"][0]["content_filter_results"] == SAFE  # kept for who reads it
    assert not any(c["id"] == "" for c in chunks[:-1])  # annotation chunks dropped


@pytest.mark.parametrize("body", [STREAM, ASYNC_STREAM], ids=["sync-filter", "async-filter"])
@pytest.mark.parametrize("keep_alive", [b"data:\n\n", b"data:   \n\n"], ids=["empty", "blank"])
def test_an_empty_data_event_is_a_keep_alive(body: bytes, keep_alive: bytes) -> None:
    # Relays in front of Azure (APIM, proxies) send empty `data:` events as keep-alives; the
    # plain pass-through skips them, Azure's translator parsed them as JSON and failed the
    # stream (a 502, or an error frame mid-stream).
    stream = body.replace(b"data: {", keep_alive + b"data: {")
    enc = ChunkEncoder(completion_id="c", created=1, model="m", include_usage=False)
    tr = AzureTranslator(enc, 1 << 20, provider="p", client_wants_usage=True)
    tr.feed(stream)
    tr.close()
    check(enc.take(), "Hello there!" if body is STREAM else "Hello")


# Asynchronous filter mode when the filter catches the answer: the `content_filter` finish
# comes as an annotation, in an empty envelope (Azure's content-streaming docs).
FILTERED = {**SAFE, "protected_material_text": {"detected": True, "filtered": True}}
ASYNC_FILTERED_STREAM = sse(
    PREAMBLE,
    {**ENVELOPE, "choices": [choice({"content": "", "role": "assistant"})]},
    {**ENVELOPE, "choices": [choice({"content": "Hello"})]},
    {**ANNOTATION, "usage": None,
     "choices": [{**ANNOTATION["choices"][0], "content_filter_results": FILTERED,
                  "finish_reason": "content_filter"}]},
    {**ENVELOPE, "choices": [], "usage": USAGE},
)


async def test_async_filter_finish_in_an_empty_envelope_gets_the_streams_own(
        proxy: Any, upstream: Any) -> None:
    upstream.body = ASYNC_FILTERED_STREAM
    client = openai_sdk(await proxy(azure_config(upstream.url)))
    stream = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
    chunks = [chunk async for chunk in stream]
    assert {(c.id, c.created, c.model) for c in chunks} == {
        ("chatcmpl-A1", ENVELOPE["created"], ENVELOPE["model"])}  # not ("", 0, "")
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    assert chunks[-1].choices[0].content_filter_results == FILTERED  # type: ignore[attr-defined]


@pytest.mark.parametrize("capture", [False, True], ids=["plain", "captured"])
def test_an_async_filter_finish_before_any_delta_gets_the_proxys_envelope(capture: bool) -> None:
    # The filter cut the answer at its start: the `content_filter` finish, in Azure's empty
    # envelope, came before any delta chunk, so no stream envelope was there to fill it and the
    # client got `id: ""`, `created: 0`, `model: ""`. The stream's own is the proxy's.
    from streamproxy.openai_api.chunks import RecordingChunkEncoder
    from streamproxy.openai_api.completion import CompletionBuilder, TeeSink

    finish = {**ANNOTATION, "choices": [{**ANNOTATION["choices"][0], "finish_reason":
                                         "content_filter", "content_filter_results": FILTERED}]}
    encoder = RecordingChunkEncoder(completion_id="chatcmpl-ours", created=7, model="gpt-4o",
                                    include_usage=False)
    builder = CompletionBuilder()
    sink: Any = TeeSink(encoder, builder) if capture else encoder
    translator = AzureTranslator(sink, 1 << 20, provider="az", client_wants_usage=False)
    translator.feed(sse(PREAMBLE, finish))
    translator.close()
    chunks = sse_chunks(encoder.take())
    assert chunks[-1] == "[DONE]"
    [chunk] = chunks[:-1]
    assert (chunk["id"], chunk["created"], chunk["model"]) == ("chatcmpl-ours", 7, "gpt-4o")
    assert chunk["choices"][0]["finish_reason"] == "content_filter"
    assert chunk["choices"][0]["delta"] == {}
    if capture:
        assert (builder.id, builder.created) == ("chatcmpl-ours", 7)


async def test_url_api_key_header_and_body(proxy: Any, upstream: Any) -> None:
    upstream.body = STREAM
    client = await proxy(azure_config(upstream.url))
    resp = await client.post("/v1/chat/completions", json={
        "model": "gpt4o-prod", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    await resp.read()
    [sent] = upstream.requests
    assert sent.path == f"/openai/deployments/gpt4o-prod/chat/completions?api-version={VERSION}"
    assert sent.headers["api-key"] == "sk-test-secret"
    assert "Authorization" not in sent.headers
    assert sent.json() == {"model": "gpt4o-prod", "stream": True,
                           "messages": [{"role": "user", "content": "hi"}],
                           "stream_options": {"include_usage": True}}


@pytest.mark.parametrize(("version", "asked"), [
    ("2024-06-01", False), ("2024-02-15-preview", False), ("2024-08-01-preview", False),
    ("2024-09-01-preview", True), ("2025-04-01-preview", True), ("preview", True)])
async def test_usage_is_asked_only_of_api_versions_that_take_stream_options(
        proxy: Any, upstream: Any, version: str, asked: bool) -> None:
    upstream.body = STREAM
    client = await proxy(provider_config("azure", upstream.url, api_version=version))
    for body in ({"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
                 STREAM_REQ):
        await (await client.post("/v1/chat/completions", json=body)).read()
    plain, wanting = (sent.json() for sent in upstream.requests)
    assert ("stream_options" in plain) is asked
    assert wanting["stream_options"] == {"include_usage": True}  # the client's, always


async def test_deployment_option_and_entra_token(proxy: Any, upstream: Any) -> None:
    upstream.body = STREAM
    client = await proxy(azure_config(upstream.url + "/openai", deployment="my deploy",
                                      auth="entra"))
    resp = await client.post("/v1/chat/completions", json=STREAM_REQ)
    await resp.read()
    [sent] = upstream.requests
    assert sent.path == (f"/openai/deployments/my%20deploy/chat/completions"
                         f"?api-version={VERSION}")
    assert sent.headers["Authorization"] == "Bearer sk-test-secret"
    assert "api-key" not in sent.headers


def test_resource_builds_the_endpoint() -> None:
    config = make_config({"az": {"type": "azure", "resource": "contoso",
                                 "api_version": "2025-01-01-preview", "api_key": "k"}})
    provider = AzureOpenAIProvider(config.providers["az"])
    req = parse_chat_request(b'{"model":"gpt-4o","messages":[{"role":"user","content":"x"}]}')
    up = provider.build_request(req, Target(provider, "gpt-4o", api_key="k"))
    assert up.url == ("https://contoso.openai.azure.com/openai/deployments/gpt-4o/"
                      "chat/completions?api-version=2025-01-01-preview")
    assert up.headers["api-key"] == "k"
    assert up.body == req.raw  # (written from the body: tests/test_duplicate_keys.py)


@pytest.mark.parametrize(("entry", "key"), [
    ({"resource": "r"}, "providers.az.api_version"),
    ({"api_version": VERSION}, "providers.az.resource"),
    ({"resource": "r", "api_version": VERSION, "auth": "oauth"}, "providers.az.auth"),
    ({"resource": "r", "api_version": VERSION, "deployment": 3}, "providers.az.deployment"),
    # a host or URL as resource built https://r.openai.azure.com.openai.azure.com
    ({"resource": "r.openai.azure.com", "api_version": VERSION}, "providers.az.resource"),
    ({"resource": "https://r.openai.azure.com/", "api_version": VERSION},
     "providers.az.resource"),
])
def test_config_errors_name_the_key(entry: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_config({"az": {"type": "azure", **entry}})
    assert info.value.key == key


async def test_truncated_stream_is_an_error_frame(proxy: Any, upstream: Any) -> None:
    cut = STREAM.rindex(b"data: ", 0, STREAM.index(b'"finish_reason":"stop"'))
    upstream.body = STREAM[:cut]
    client = await proxy(azure_config(upstream.url))
    resp = await client.post("/v1/chat/completions", json=STREAM_REQ)
    chunks = sse_chunks(await resp.read())
    c = collect(chunks)
    assert c.content == "Hello there!"
    assert c.error is not None and c.error["code"] == "upstream_stream_truncated"
    assert "[DONE]" not in chunks and c.finish_reason is None


async def test_content_filter_error_body_keeps_status(proxy: Any, upstream: Any) -> None:
    upstream.status = 400
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps({"error": {
        "message": "The response was filtered due to the prompt triggering Azure OpenAI's "
                   "content management policy.", "type": None, "param": "prompt",
        "code": "content_filter", "status": 400}})
    client = await proxy(azure_config(upstream.url))
    resp = await client.post("/v1/chat/completions", json=STREAM_REQ)
    assert resp.status == 400
    err = (await resp.json())["error"]
    assert err["code"] == "content_filter" and "content management policy" in err["message"]


@pytest.mark.parametrize("stream", [True, False])
async def test_a_content_filter_error_keeps_azures_fields(proxy: Any, upstream: Any,
                                                          stream: bool) -> None:
    """Client code written for Azure reads which category was filtered from
    `innererror.content_filter_result`; Azure's `type` is null, as it sent it."""
    inner = {"code": "ResponsibleAIPolicyViolation", "content_filter_result": {
        **SAFE, "sexual": {"filtered": True, "severity": "medium"}}}
    upstream.status = 400
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps({"error": {
        "message": "The response was filtered", "type": None, "param": "prompt",
        "code": "content_filter", "status": 400, "innererror": inner}})
    client = openai_sdk(await proxy(azure_config(upstream.url)))
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="m", messages=[{"role": "user",
                                                                   "content": "hi"}],
                                             stream=stream)
    assert info.value.body == {"message": "The response was filtered", "type": None,
                               "param": "prompt", "code": "content_filter", "status": 400,
                               "innererror": inner}


async def test_a_content_filter_error_event_keeps_its_status(proxy: Any, upstream: Any) -> None:
    """Azure's error object names its status in `status` (`code` is `content_filter`): an
    error event before any output is that 400 (a BadRequestError), not a 502 (retried, and
    an InternalServerError in the SDKs)."""
    upstream.body = b'data: ' + orjson.dumps({"error": {
        "message": "The response was filtered", "type": None, "param": "prompt",
        "code": "content_filter", "status": 400}}) + b"\n\n"
    client = openai_sdk(await proxy(azure_config(upstream.url)))
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="m", messages=[{"role": "user",
                                                                   "content": "hi"}],
                                             stream=True)
    assert info.value.code == "content_filter"


async def test_openai_sdk_streams_through_azure(proxy: Any, upstream: Any) -> None:
    upstream.body = ASYNC_STREAM
    client = openai_sdk(await proxy(azure_config(upstream.url)))
    got = await read_sdk_stream(await client.chat.completions.create(  # naive client code
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True}))
    text, finish, usage = got.text, got.finish, got.usage
    assert (text, finish, usage.total_tokens if usage else None) == ("Hello", "stop", 13)


def test_an_api_version_written_unquoted_in_yaml_is_that_string(tmp_path: Any) -> None:
    # YAML reads `2024-10-21` as a date: the config in docs/providers/others.md (and any
    # written the same way) failed with "api_version: required", or sent a date upstream.
    path = tmp_path / "config.yaml"
    path.write_text("providers:\n"
                    "  az: {type: azure, resource: contoso, api_version: 2024-10-21}\n"
                    "  claude: {type: anthropic, anthropic_version: 2023-06-01,\n"
                    "           headers: {x-since: 2025-01-01}}\n")
    providers = build_providers(load_config(path))
    req = parse_chat_request(b'{"model":"gpt-4o","messages":[{"role":"user","content":"x"}]}')
    azure = providers["az"]
    assert azure.build_request(req, Target(azure, "gpt-4o")).url.endswith(
        "?api-version=2024-10-21")
    claude = providers["claude"]
    headers = claude.build_request(req, Target(claude, "m")).headers
    assert headers["anthropic-version"] == "2023-06-01" and headers["x-since"] == "2025-01-01"


# -- Portkey's Azure settings: config target fields and the portkey-ai SDK's headers ----------

def planned_request(headers: dict[str, str], key: str | None = "k",
                    options: dict[str, str] | None = None, **sections: Any) -> Any:
    """The upstream request the first planned target would send (no sockets); `key`: the
    Azure provider's own (the gateway's), None for none (the client's goes upstream);
    `options`: more of the provider's."""
    from streamproxy.routing.breaker import CircuitBreakers
    from streamproxy.routing.gateway import Gateway, load_settings
    from streamproxy.routing.router import Router

    azure = {"type": "azure", "resource": "contoso", "api_version": VERSION, **(options or {})}
    config = make_config({"az": {**azure, **({"api_key": key} if key else {})},
                          "oa": {"type": "openai", "api_key": "k"}}, default="az", **sections)
    providers = build_providers(config)
    router = Router(providers, config.default_provider, config.server.timeouts)
    gateway = Gateway(router, load_settings(config), CircuitBreakers(), random.Random(0))
    req = parse_chat_request(b'{"model":"gpt-4o","messages":[{"role":"user","content":"x"}]}')
    target = gateway.plan(headers, req, None).attempts[0].target
    return target.provider.build_request(req, target)


def test_the_portkey_sdks_azure_headers_pick_resource_deployment_and_version() -> None:
    from portkey_ai import Portkey

    sdk = Portkey(base_url="http://127.0.0.1:1/v1", api_key="unused",
                  azure_resource_name="fabrikam", azure_deployment_id="gpt-4.1",
                  azure_api_version="2025-01-01-preview").custom_headers
    azure = {k: v for k, v in sdk.items() if k.startswith("x-portkey-azure-")}
    # (the gateway's key goes to another resource only when its host is allowed)
    allowed = {"allowed_custom_hosts": ["fabrikam.openai.azure.com"]}
    assert planned_request(azure, **allowed).url == (
        "https://fabrikam.openai.azure.com/openai/deployments/gpt-4.1/chat/completions"
        "?api-version=2025-01-01-preview")
    assert planned_request({}).url == (  # without them: the provider as configured
        f"https://contoso.openai.azure.com/openai/deployments/gpt-4o/chat/completions"
        f"?api-version={VERSION}")
    # A type that takes none of them (a fallback's other target) goes as configured.
    assert planned_request({"x-portkey-provider": "oa", **azure}).url == (
        "https://api.openai.com/v1/chat/completions")
    # With the client's own key (the provider holds none), any resource.
    sent = planned_request({**azure, "authorization": "Bearer mine"}, key=None)
    assert sent.url.startswith("https://fabrikam.openai.azure.com/")
    assert sent.headers["api-key"] == "mine"


def test_a_config_targets_azure_fields_as_portkey_names_them() -> None:
    config = {"provider": "az", "resource_name": "fabrikam", "deployment_id": "gpt4o-eu",
              "api_version": "2024-06-01"}
    sent = planned_request({"x-portkey-config": orjson.dumps(config).decode()},
                           allowed_custom_hosts=["fabrikam.openai.azure.com"])
    assert sent.url == ("https://fabrikam.openai.azure.com/openai/deployments/gpt4o-eu/"
                        "chat/completions?api-version=2024-06-01")
    with pytest.raises(InvalidRequest) as info:
        planned_request({"x-portkey-config": '{"provider": "oa", "deployment_id": "d"}'})
    assert info.value.param == "config.deployment_id"
    with pytest.raises(InvalidRequest) as info:  # an id, never a host or a path
        planned_request({"x-portkey-azure-resource-name": "evil.example.com/x"})
    assert info.value.param == "x-portkey-azure-resource-name"


# A client's resource is another tenant's host (not a region of the operator's account): the
# gateway's key goes there only when allowed_custom_hosts lists it, as for a custom_host.
OTHER = {"x-portkey-azure-resource-name": "someone-elses"}
VKEYS = {"virtual_keys": {"vk": {"provider": "az", "api_key": "vk-secret"}}}


@pytest.mark.parametrize(("headers", "key", "param"), [
    (OTHER, "k", "x-portkey-azure-resource-name"),  # the provider's key
    ({**OTHER, "authorization": "Bearer mine"}, "k", "x-portkey-azure-resource-name"),
    ({**OTHER, "x-portkey-virtual-key": "vk"}, None, "x-portkey-azure-resource-name"),
    ({"x-portkey-config": '{"virtual_key": "vk", "resource_name": "someone-elses"}'}, None,
     "config.resource_name"),
    ({"x-portkey-config": '{"virtual_key": "vk"}', **OTHER}, None,
     "x-portkey-azure-resource-name"),
    ({"x-portkey-config": "named", **OTHER}, None, "x-portkey-azure-resource-name"),
])
def test_a_client_cannot_send_the_gateways_key_to_another_resource(
        headers: dict[str, str], key: str | None, param: str) -> None:
    named = {"configs": {"named": {"provider": "az", "api_key": "named-secret"}}}
    with pytest.raises(InvalidRequest) as info:
        planned_request(headers, key=key, **VKEYS, **named)
    assert (info.value.param, info.value.code) == (param, "custom_host_not_allowed")
    assert "someone-elses.openai.azure.com" in info.value.message


@pytest.mark.parametrize("headers", [
    {**OTHER, "authorization": "Bearer mine"},  # the client's key: the provider holds none
    {"x-portkey-config": '{"provider": "az", "api_key": "mine", "virtual_key": "vk", '
                         '"resource_name": "someone-elses"}'},  # its inline config's key
])
def test_a_clients_own_key_goes_to_any_resource(headers: dict[str, str]) -> None:
    sent = planned_request(headers, key=None, **VKEYS)
    assert sent.url.startswith("https://someone-elses.openai.azure.com/openai/")
    assert sent.headers["api-key"] == "mine"


# A Microsoft Entra ID access token: a JWT (base64url header, payload, signature).
ENTRA_TOKEN = ("eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9"
               ".eyJhdWQiOiJodHRwczovL2NvZ25pdGl2ZXNlcnZpY2VzLmF6dXJlLmNvbSJ9.c2ln")


@pytest.mark.parametrize("key", [None, ENTRA_TOKEN])  # the client's token, or the provider's
def test_an_entra_token_goes_as_a_bearer_token_in_api_key_mode(key: str | None) -> None:
    # Azure takes an Entra token only as `Authorization: Bearer`; sent as `api-key` it is a
    # 401, so a client authenticating with its own Entra token (the openai SDK's
    # azure_ad_token_provider, through a provider holding no key) could never get through.
    sent = planned_request({"authorization": f"Bearer {ENTRA_TOKEN}"}, key=key)
    assert sent.headers["authorization"] == f"Bearer {ENTRA_TOKEN}"
    assert "api-key" not in sent.headers


def test_an_api_key_still_goes_as_api_key() -> None:
    key = "0123456789abcdef0123456789abcdef"  # Azure's key: 32 hex digits (or 84 characters)
    sent = planned_request({"authorization": f"Bearer {key}"}, key=None)
    assert sent.headers["api-key"] == key and "authorization" not in sent.headers


@pytest.mark.parametrize("headers", [
    {"x-portkey-virtual-key": "vk"},  # the operator's virtual key
    {"x-portkey-config": '{"provider": "az", "api_key": "0123456789abcdef0123456789abcdef"}'},
])
def test_a_targets_own_api_key_goes_as_api_key_from_an_entra_provider(
        headers: dict[str, str]) -> None:
    # `auth: entra` says the provider's own key is a token; a target's own key (a virtual
    # key's, a client's inline config's) was sent as a Bearer token too, so an Azure key
    # there was a 401 on every request. It goes by its shape, as a client's own key does.
    vkeys = {"virtual_keys": {"vk": {"provider": "az",
                                     "api_key": "0123456789abcdef0123456789abcdef"}}}
    sent = planned_request(headers, key=ENTRA_TOKEN, options={"auth": "entra"}, **vkeys)
    assert sent.headers["api-key"] == "0123456789abcdef0123456789abcdef"
    assert "authorization" not in sent.headers
    sent = planned_request({}, key="opaque-token", options={"auth": "entra"}, **vkeys)
    assert sent.headers["authorization"] == "Bearer opaque-token"  # the provider's own


def test_a_clients_own_api_key_goes_as_api_key_to_an_entra_provider_holding_none() -> None:
    # `auth: entra` with no key on the provider (its clients authenticate): a client's own
    # Azure key was sent as a Bearer token, which Azure answers with a 401. It goes by its
    # shape, as a target's own key does; a client's Entra token still goes as the bearer.
    key = "0123456789abcdef0123456789abcdef"
    sent = planned_request({"authorization": f"Bearer {key}"}, key=None,
                           options={"auth": "entra"})
    assert sent.headers["api-key"] == key and "authorization" not in sent.headers
    sent = planned_request({"api-key": key}, key=None, options={"auth": "entra"})
    assert sent.headers["api-key"] == key and "authorization" not in sent.headers
    sent = planned_request({"authorization": f"Bearer {ENTRA_TOKEN}"}, key=None,
                           options={"auth": "entra"})
    assert sent.headers["authorization"] == f"Bearer {ENTRA_TOKEN}"


def test_the_configured_resource_needs_no_allow_list() -> None:
    sent = planned_request({"x-portkey-azure-resource-name": "Contoso"})
    assert sent.url.lower().startswith("https://contoso.openai.azure.com/")  # (DNS: any case)


@pytest.mark.parametrize(("key", "allowed", "refused"), [
    ("k", [], True),
    ("k", ["fabrikam.openai.azure.com"], False),
    (None, [], False),  # (the client's own key goes there)
])
def test_a_named_configs_resource_outside_the_allow_list_is_a_config_error(
        key: str | None, allowed: list[str], refused: bool) -> None:
    from streamproxy.routing.gateway import load_settings

    azure = {"type": "azure", "resource": "contoso", "api_version": VERSION}
    config = make_config({"az": {**azure, **({"api_key": key} if key else {})}},
                         configs={"eu": {"provider": "az", "resource_name": "fabrikam"}},
                         allowed_custom_hosts=allowed)
    if not refused:
        load_settings(config)
        return
    with pytest.raises(ConfigError, match=r"configs\.eu: config\.resource_name: "
                                          r"'fabrikam\.openai\.azure\.com' is not under"):
        load_settings(config)


@pytest.mark.parametrize(("option", "values"), [
    # The deployment picks the model (its URL), not the body's model: two deployments asked
    # the same question shared one cache key, so one's answer was served for the other.
    ("deployment", ("gpt-4o-mini", "gpt-4.1")),
    # A resource (x-portkey-azure-resource-name, a config's resource_name) runs its own
    # deployments: one deployment name on two resources may be two models. The key named
    # the configured base URL alone, which a resource-configured provider has none of.
    ("resource", ("contoso", "fabrikam")),
])
def test_two_deployments_or_resources_are_two_cache_entries(option: str,
                                                            values: tuple[str, str]) -> None:
    from streamproxy.cache.service import _key

    req = parse_chat_request(b'{"model":"gpt","messages":[{"role":"user","content":"x"}]}')
    config = make_config({"az": {"type": "azure", "resource": "contoso", "api_version": VERSION,
                                 "api_key": "k"}})
    azure = build_providers(config)["az"]
    keys = {_key("ns", req, Target(azure.with_options({option: v}), "gpt")) for v in values}
    assert len(keys) == 2


def test_a_captured_tool_call_keeps_its_id_in_azures_key_order() -> None:
    # Azure writes keys in alphabetical order: a tool call's `id` comes before the chunk's, so
    # a captured stream (store: true, a cache fill) gave the call our completion id.
    from streamproxy.openai_api.chunks import RecordingChunkEncoder
    from streamproxy.openai_api.completion import CompletionBuilder, TeeSink

    call = {"function": {"arguments": "", "name": "weather"}, "id": "call_1", "index": 0,
            "type": "function"}
    body = sse(PREAMBLE,
               {"choices": [choice({"role": "assistant", "tool_calls": [call]})], **ENVELOPE},
               {"choices": [choice({"tool_calls": [
                   {"function": {"arguments": "{}"}, "index": 0}]})], **ENVELOPE},
               {"choices": [choice({}, "tool_calls")], **ENVELOPE})
    encoder = RecordingChunkEncoder(completion_id="chatcmpl-ours", created=1, model="m",
                                    include_usage=False)
    builder = CompletionBuilder()
    translator = AzureOpenAIProvider.translator_type(
        TeeSink(encoder, builder), 1 << 20, provider="az", client_wants_usage=False,
        tools_offered=True)
    translator.feed(body)
    c = collect(sse_chunks(encoder.take()))
    assert c.ids == {"chatcmpl-ours"} and [t["id"] for t in c.tool_calls] == ["call_1"]
    assert builder.id == "chatcmpl-ours"
    assert [t["id"] for t in builder.message()["tool_calls"]] == ["call_1"]


@pytest.mark.parametrize(("options", "headers"), [
    ({"deployment": "gpt4o-prod"}, {}),  # the configured deployment
    ({}, {"x-portkey-azure-deployment-id": "gpt4o-prod"}),  # the portkey-ai SDK's
])
async def test_a_request_without_a_model_goes_to_the_deployment(
        proxy: Any, upstream: Any, options: dict[str, str], headers: dict[str, str]) -> None:
    # The deployment names the model: the portkey-ai SDK, given none, sends `portkey-default`
    # (read as no model), and a provider without a default_model answered it with a 400.
    upstream.body = STREAM
    config = make_config({"up": {"type": "azure", "base_url": upstream.url, "api_key": "k",
                                 "api_version": VERSION, **options}}, default="up")
    client = await proxy(config)
    for model in ({}, {"model": "portkey-default"}):
        resp = await client.post("/v1/chat/completions", headers=headers, json={
            **model, "stream": True, "messages": [{"role": "user", "content": "hi"}]})
        assert resp.status == 200, await resp.text()
        got = collect(sse_chunks(await resp.read()))
        assert got.content == "Hello there!" and got.error is None
    assert [sent.path for sent in upstream.requests] == 2 * [
        f"/openai/deployments/gpt4o-prod/chat/completions?api-version={VERSION}"]
    assert {sent.json()["model"] for sent in upstream.requests} == {"gpt4o-prod"}


@pytest.mark.parametrize("version", [{}, {"api_version": "preview"}])
async def test_the_v1_surface_takes_the_deployment_as_model(
        proxy: Any, upstream: Any, version: dict[str, str]) -> None:
    # Azure's v1 API (`{endpoint}/openai/v1/`, the endpoint its portal now shows): OpenAI's
    # paths, the deployment as the body's `model`, no dated api-version. Configured as
    # base_url, it went to /openai/v1/openai/deployments/… (a 404 on every request).
    upstream.body = ASYNC_STREAM  # its quirks are Azure's on either surface
    config = make_config({"up": {"type": "azure", "base_url": upstream.url + "/openai/v1/",
                                 "api_key": "k", "deployment": "gpt4o-prod", **version}},
                         default="up")
    client = await proxy(config)
    resp = await client.post("/v1/chat/completions", json={**STREAM_REQ, "model": "gpt-4o"})
    assert resp.status == 200, await resp.text()
    check(await resp.read(), "Hello")
    [sent] = upstream.requests
    query = "?api-version=preview" if version else ""
    assert sent.path == "/openai/v1/chat/completions" + query
    assert sent.headers["api-key"] == "k"
    assert sent.json()["model"] == "gpt4o-prod"
    assert sent.json()["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("deployment", [{}, {"deployment": "gpt4o-prod"}])
async def test_the_foundry_models_endpoint_takes_the_deployment_as_model(
        proxy: Any, upstream: Any, deployment: dict[str, str]) -> None:
    # Azure AI Foundry's model-inference endpoint (https://{res}.services.ai.azure.com/models):
    # `{base_url}/chat/completions?api-version=…`, the deployment in the body. Configured as
    # base_url, it went to /models/openai/deployments/{model}/… (a 404 on every request).
    upstream.body = ASYNC_STREAM
    config = make_config({"up": {"type": "azure", "base_url": upstream.url + "/models/",
                                 "api_key": "k", "api_version": "2024-05-01-preview",
                                 **deployment}}, default="up")
    client = await proxy(config)
    resp = await client.post("/v1/chat/completions", json={**STREAM_REQ, "model": "gpt-4o"})
    assert resp.status == 200, await resp.text()
    check(await resp.read(), "Hello")
    [sent] = upstream.requests
    assert sent.path == "/models/chat/completions?api-version=2024-05-01-preview"
    assert sent.headers["api-key"] == "k"
    assert sent.json()["model"] == deployment.get("deployment", "gpt-4o")


def test_api_version_v1_on_the_models_endpoint_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="/openai/v1") as info:
        make_config({"az": {"type": "azure", "api_version": "v1",
                            "base_url": "https://r.services.ai.azure.com/models"}})
    assert info.value.key == "providers.az.api_version"


@pytest.mark.parametrize(("entry", "headers"), [
    ({"resource": "contoso", "api_version": "v1"}, {}),  # as LiteLLM writes "the v1 API"
    ({"base_url": "https://contoso.openai.azure.com/openai", "api_version": "v1"}, {}),
    ({"resource": "contoso", "api_version": VERSION}, {"x-portkey-azure-api-version": "v1"}),
])
def test_api_version_v1_selects_the_v1_surface(entry: dict[str, str],
                                               headers: dict[str, str]) -> None:
    # `api_version: v1` went to the deployments URL with `?api-version=v1`, which Azure
    # refuses on every request; it names the v1 API: OpenAI's path, the deployment as `model`.
    from streamproxy.routing.breaker import CircuitBreakers
    from streamproxy.routing.gateway import Gateway, load_settings
    from streamproxy.routing.router import Router

    config = make_config({"az": {"type": "azure", "api_key": "k", "deployment": "gpt4o-prod",
                                 **entry}}, default="az")
    router = Router(build_providers(config), config.default_provider, config.server.timeouts)
    gateway = Gateway(router, load_settings(config), CircuitBreakers(), random.Random(0))
    req = parse_chat_request(b'{"model":"gpt-4o","stream":true,'
                             b'"messages":[{"role":"user","content":"x"}]}')
    target = gateway.plan(headers, req, None).attempts[0].target
    sent = target.provider.build_request(req, target)
    assert sent.url == "https://contoso.openai.azure.com/openai/v1/chat/completions"
    body = orjson.loads(sent.body)
    assert body["model"] == "gpt4o-prod"
    assert body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(("version", "headers"), [
    ({"api_version": "2024-06-01"}, {}),  # the provider's (before stream_options, on classic)
    ({}, {"x-portkey-azure-api-version": VERSION}),  # the portkey-ai SDK's
])
async def test_the_v1_surface_gets_no_dated_api_version(
        proxy: Any, upstream: Any, version: dict[str, str], headers: dict[str, str]) -> None:
    # v1 has no dated api-version and refuses one ("API version not supported"): a provider
    # moved to v1 with its old api_version kept, or a portkey-ai SDK set up for the deployments
    # API, got that 400 on every request; and an old one also cost a stream its usage.
    upstream.body = STREAM
    config = make_config({"up": {"type": "azure", "base_url": upstream.url + "/openai/v1",
                                 "api_key": "k", **version}}, default="up")
    client = await proxy(config)
    resp = await client.post("/v1/chat/completions", headers=headers, json={
        "model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status == 200, await resp.text()
    await resp.read()
    [sent] = upstream.requests
    assert sent.path == "/openai/v1/chat/completions"
    assert sent.json()["stream_options"] == {"include_usage": True}


async def v1_provider_at_a_custom_host(proxy: Any, upstream: Any, host: str
                                       ) -> tuple[Any, dict[str, str], dict[str, Any]]:
    """(the proxy's client, the custom-host header, the error) of a streamed request with no
    api-version to a v1 Azure provider (which needs none) sent to `host` instead."""
    upstream.body = STREAM
    config = make_config({"up": {"type": "azure", "base_url": upstream.url + "/openai/v1",
                                 "api_key": "k"}}, default="up",
                         allowed_custom_hosts=[upstream.url.split("://")[1]])
    client = await proxy(config)
    custom = {"x-portkey-custom-host": host}
    resp = await client.post("/v1/chat/completions", json=STREAM_REQ, headers=custom)
    assert resp.status == 400, await resp.text()
    return client, custom, (await resp.json())["error"]


async def test_a_deployments_custom_host_without_an_api_version_is_a_400(
        proxy: Any, upstream: Any) -> None:
    # A v1 provider needs no api_version, but a custom host that is not v1 is Azure's
    # deployments API, which does: the request went with an empty `?api-version=`, which Azure
    # refuses (the client saw Azure's error, not what to send). Given one, it goes.
    client, custom, err = await v1_provider_at_a_custom_host(proxy, upstream, upstream.url)
    assert (err["param"], err["code"]) == ("api_version", "missing_required_parameter")
    assert "x-portkey-azure-api-version" in err["message"]
    assert upstream.requests == []
    resp = await client.post("/v1/chat/completions", json=STREAM_REQ, headers={
        **custom, "x-portkey-azure-api-version": VERSION})
    check(await resp.read(), "Hello there!")
    [sent] = upstream.requests
    assert sent.path == f"/openai/deployments/m/chat/completions?api-version={VERSION}"


@pytest.mark.parametrize(("headers", "param"), [
    ({"x-portkey-azure-resource-name": "fabrikam.openai.azure.com"},
     "x-portkey-azure-resource-name"),
    ({"x-portkey-config": '{"resource_name": "https://fabrikam.openai.azure.com"}'},
     "config.resource_name"),
])
def test_a_resource_name_given_as_a_host_is_a_400(headers: dict[str, str], param: str) -> None:
    # It went to https://fabrikam.openai.azure.com.openai.azure.com (a DNS failure, a 502).
    with pytest.raises(InvalidRequest) as info:
        planned_request({**headers, "authorization": "Bearer mine"}, key=None)
    assert info.value.param == param
    assert "not a host" in info.value.message


@pytest.mark.parametrize("capture", [False, True], ids=["plain", "captured"])
def test_a_stream_stamped_with_the_proxys_envelope_keeps_it_to_the_end(capture: bool) -> None:
    # An early async-filter finish takes the proxy's id (above); Azure's usage chunk after it
    # (and, with n > 1, another choice's deltas) carried Azure's own: two ids in one stream,
    # where the openai SDK's stream helpers and store/cache read the first.
    from streamproxy.openai_api.chunks import RecordingChunkEncoder
    from streamproxy.openai_api.completion import CompletionBuilder, TeeSink

    finish = {**ANNOTATION, "choices": [{**ANNOTATION["choices"][0], "finish_reason":
                                         "content_filter", "content_filter_results": FILTERED}]}
    other = {**ENVELOPE, "choices": [{**choice({"content": "Hi"}), "index": 1}]}
    other_finish = {**ENVELOPE, "choices": [{**choice({}, "stop"), "index": 1}]}
    encoder = RecordingChunkEncoder(completion_id="chatcmpl-ours", created=7, model="gpt-4o",
                                    include_usage=False)
    builder = CompletionBuilder()
    sink: Any = TeeSink(encoder, builder) if capture else encoder
    translator = AzureTranslator(sink, 1 << 20, provider="az", client_wants_usage=True,
                                 choices=2)
    translator.feed(sse(PREAMBLE, finish, other, other_finish,
                        {**ENVELOPE, "choices": [], "usage": USAGE}))
    translator.close()
    chunks = sse_chunks(encoder.take())
    assert chunks[-1] == "[DONE]"
    assert [c["choices"][0]["index"] for c in chunks[:-2]] == [0, 1, 1]
    assert chunks[-2]["usage"] == USAGE
    assert {(c["id"], c["created"], c["model"]) for c in chunks[:-1]} == {
        ("chatcmpl-ours", 7, "gpt-4o")}
    assert chunks[1]["choices"][0]["delta"] == {"content": "Hi"}


MODELS = {"base_url": "https://r.services.ai.azure.com/models",
          "api_version": "2024-05-01-preview"}


@pytest.mark.parametrize(("headers", "param"), [
    ({"x-portkey-azure-api-version": "v1"}, "x-portkey-azure-api-version"),  # portkey-ai SDK
    ({"x-portkey-config": '{"provider": "az", "api_version": "v1"}'}, "config.api_version"),
    ({"x-portkey-config": '{"provider": "az", "api_version": "v1"}',  # the target's wins
      "x-portkey-azure-api-version": "2024-05-01-preview"}, "config.api_version"),
])
def test_api_version_v1_for_one_request_to_the_models_endpoint_is_a_400(
        headers: dict[str, str], param: str) -> None:
    # The provider's own `api_version: v1` there is a config error; given per request it went
    # as `?api-version=v1`, which Azure refuses on every request (the client saw Azure's 400).
    with pytest.raises(InvalidRequest) as info:
        planned_request(headers, options=MODELS)
    assert (info.value.param, info.value.code) == (param, "invalid_value")
    assert param in info.value.message and "/models" in info.value.message
    assert "2024-05-01-preview" in info.value.message
    # A dated one goes as it did.
    assert planned_request({"x-portkey-azure-api-version": "2025-05-01-preview"},
                           options=MODELS).url == (
        "https://r.services.ai.azure.com/models/chat/completions"
        "?api-version=2025-05-01-preview")


async def test_a_models_custom_host_without_an_api_version_is_a_400_saying_so(
        proxy: Any, upstream: Any) -> None:
    # A v1 provider (no api_version) reached at a custom host ending in /models: the 400 said
    # the host was Azure's deployments API and offered an /openai/v1 host, not what /models
    # needs (a dated api-version, 2024-05-01-preview). Given one, it goes.
    client, custom, err = await v1_provider_at_a_custom_host(proxy, upstream,
                                                             upstream.url + "/models")
    assert (err["param"], err["code"]) == ("api_version", "missing_required_parameter")
    assert "/models" in err["message"] and "2024-05-01-preview" in err["message"]
    assert "x-portkey-azure-api-version" in err["message"]
    assert "deployments" not in err["message"]
    assert upstream.requests == []
    resp = await client.post("/v1/chat/completions", json=STREAM_REQ, headers={
        **custom, "x-portkey-azure-api-version": "2024-05-01-preview"})
    check(await resp.read(), "Hello there!")
    [sent] = upstream.requests
    assert sent.path == "/models/chat/completions?api-version=2024-05-01-preview"


@pytest.mark.parametrize("model", ["..", "."])
def test_a_dot_segment_deployment_is_a_400_not_another_path(model: str) -> None:
    # A request's model names the deployment: `..` went to /openai/chat/completions
    config = make_config({"az": {"type": "azure", "resource": "contoso",
                                 "api_version": "2025-01-01-preview", "api_key": "k"}})
    provider = AzureOpenAIProvider(config.providers["az"])
    req = parse_chat_request(b'{"model":"m","messages":[{"role":"user","content":"x"}]}')
    with pytest.raises(InvalidRequest) as info:
        provider.build_request(req, Target(provider, model, api_key="k"))
    assert info.value.param == "model" and info.value.status == 400


# Azure (AI Foundry's models, e.g. DeepSeek's) can refuse with a 400 whose body is no error
# object but a chat completion cut by the filter: its choice's finish_reason content_filter
# and the filter's word under content_filter_results.error.
FILTERED_400 = {
    "id": "chatcmpl-802d5a", "model": "", "object": "chat.completion", "created": 1789466192,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": ""},
                 "finish_reason": "content_filter",
                 "content_filter_results": {"error": {
                     "code": "content_filter",
                     "message": "Response content blocked by label 'Jailbreak'."}}}],
    "usage": {"prompt_tokens": 55, "total_tokens": 55}, "prompt_filter_results": None}


@pytest.mark.parametrize("stream", [True, False])
async def test_a_400_that_is_a_filtered_completion_is_a_content_filter_error(
        proxy: Any, upstream: Any, stream: bool) -> None:
    # The client got "provider 'up' returned HTTP 400" with no code: nothing said the filter
    # refused, nor which label, as Azure's body did.
    upstream.status = 400
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps(FILTERED_400)
    client = openai_sdk(await proxy(azure_config(upstream.url)))
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="m", messages=[{"role": "user",
                                                                   "content": "hi"}],
                                             stream=stream)
    assert info.value.code == "content_filter"
    assert info.value.message.endswith("Response content blocked by label 'Jailbreak'.")
    body = info.value.body
    assert isinstance(body, dict)
    assert body["content_filter_results"] == FILTERED_400["choices"][0][  # type: ignore[index]
        "content_filter_results"]


@pytest.mark.parametrize(("version", "renamed"), [
    ("2024-06-01", True), ("2024-02-15-preview", True), ("2024-08-01-preview", True),
    ("2024-09-01-preview", False), ("2024-10-21", False), ("2025-04-01-preview", False),
    ("v1", False)])
def test_max_completion_tokens_goes_as_max_tokens_to_api_versions_before_it(
        version: str, renamed: bool) -> None:
    # An api-version before 2024-09-01-preview (the one that brought o1) answers
    # `max_completion_tokens`, which the openai SDK's users and LangChain now send, with
    # "Unrecognized request argument supplied" (a 400 on every request); those versions reach
    # no reasoning model, so `max_tokens` is the same cap.
    config = make_config({"az": {"type": "azure", "resource": "contoso", "api_key": "k",
                                 "api_version": version}})
    provider = AzureOpenAIProvider(config.providers["az"])
    req = parse_chat_request(b'{"model":"gpt-4o","max_completion_tokens":100,'
                             b'"messages":[{"role":"user","content":"x"}]}')
    body = orjson.loads(provider.build_request(req, Target(provider, "gpt-4o",
                                                           api_key="k")).body)
    if renamed:
        assert body["max_tokens"] == 100 and "max_completion_tokens" not in body
    else:
        assert body["max_completion_tokens"] == 100 and "max_tokens" not in body


# Asynchronous filter mode, as recorded from Azure: a block caught after the model's `stop` is
# no finish, only an annotation whose verdict says `filtered: true` (then usage, `[DONE]`); an
# annotate-only filter reports `detected: true` so. All-clear annotations stay dropped.
BLOCKED = {"custom_blocklists": [{"filtered": True, "id": "words"}]}
DETECTED = {**SAFE, "protected_material_code": {"detected": True, "filtered": False}}


@pytest.mark.parametrize("verdict", [BLOCKED, DETECTED], ids=["filtered", "detected"])
def test_an_async_filter_verdict_after_the_finish_reaches_the_client(
        verdict: dict[str, Any]) -> None:
    # The verdict was dropped with the all-clear annotations: the client got a clean answer
    # ending `stop` and no sign that Azure's filter had blocked (or flagged) it.
    report = {**ANNOTATION, "choices": [{**ANNOTATION["choices"][0],
                                         "content_filter_results": verdict}]}
    enc = ChunkEncoder(completion_id="c", created=1, model="m", include_usage=False)
    tr = AzureTranslator(enc, 1 << 20, provider="p", client_wants_usage=True)
    tr.feed(sse(PREAMBLE,
                {**ENVELOPE, "choices": [choice({"content": "", "role": "assistant"})]},
                {**ENVELOPE, "choices": [choice({"content": "Hello"})]},
                ANNOTATION, {**ENVELOPE, "choices": [choice({}, "stop")]}, ANNOTATION, report,
                {**ENVELOPE, "choices": [], "usage": USAGE}))
    tr.close()
    chunks = sse_chunks(enc.take())
    c = collect(chunks)  # one id, finish once
    assert (c.content, c.finish_reason, c.usage, c.ids) == ("Hello", "stop", USAGE,
                                                           {"chatcmpl-A1"})
    [reported] = [chunk for chunk in chunks[:-1] if chunk["choices"]
                  and chunk["choices"][0].get("content_filter_results") == verdict]
    assert reported["choices"][0]["delta"] == {}
    assert reported["choices"][0]["finish_reason"] is None
    assert (reported["object"], reported["model"]) == ("chat.completion.chunk",
                                                      ENVELOPE["model"])
    assert chunks.index(reported) == len(chunks) - 3  # after the finish, before the usage
    assert sum(1 for chunk in chunks[:-1] if chunk["choices"]) == 4  # the all-clear dropped


async def test_an_answer_blocked_after_its_finish_is_not_cached(proxy: Any,
                                                                upstream: Any) -> None:
    # The block's verdict came after the `stop` (above): the answer was recorded as a `stop`
    # and cached, so every identical request within max_age got the blocked answer replayed
    # clean, with no verdict and Azure never asked. A `content_filter` finish is never kept.
    from tests.test_cache import STATUS, cache_header, drained

    report = {**ANNOTATION, "choices": [{**ANNOTATION["choices"][0],
                                         "content_filter_results": BLOCKED}]}
    answer = choice({"content": "Hello", "role": "assistant"})
    upstream.body = sse(PREAMBLE, {**ENVELOPE, "choices": [answer]},
                        {**ENVELOPE, "choices": [choice({}, "stop")]}, report,
                        {**ENVELOPE, "choices": [], "usage": USAGE})
    client = await proxy(azure_config(upstream.url))
    statuses = []
    for _ in range(2):
        resp = await client.post("/v1/chat/completions", json=STREAM_REQ,
                                 headers=cache_header())
        chunks = sse_chunks(await resp.read())
        assert any(c["choices"][0].get("content_filter_results") == BLOCKED
                   for c in chunks[:-1] if c["choices"])
        statuses.append(resp.headers[STATUS])
        await drained(client)
    assert statuses == ["MISS", "MISS"] and len(upstream.requests) == 2





@pytest.mark.parametrize("mode", ["default", "async", "async-at-start"])
@pytest.mark.parametrize("wants", [True, False], ids=["include_usage", "no-usage-asked"])
def test_a_filtered_stream_without_azures_usage_chunk_still_gives_the_asked_usage(
        mode: str, wants: bool) -> None:
    # Azure ends a `content_filter` finish straight with `[DONE]`, no usage chunk: a client
    # that asked for `include_usage` got none (the openai SDK's `chunk.usage` never came), where
    # every other stream gives the usage chunk, zeros when the provider reported none.
    start = [{**ENVELOPE, "choices": [choice({"content": "", "role": "assistant"})]},
             {**ENVELOPE, "choices": [choice({"content": "Hel"})]}]
    if mode == "default":
        body = [PREAMBLE, *start, {**ENVELOPE, "choices": [choice({}, "content_filter")]}]
    else:
        finish = {**ANNOTATION, "choices": [{**ANNOTATION["choices"][0], "finish_reason":
                                             "content_filter", "content_filter_results":
                                             FILTERED}]}
        body = [PREAMBLE, *([] if mode == "async-at-start" else start), finish]
    enc = ChunkEncoder(completion_id="chatcmpl-ours", created=7, model="gpt-4o",
                       include_usage=False)  # (as the executor makes a pass-through's)
    tr = AzureTranslator(enc, 1 << 20, provider="p", client_wants_usage=wants)
    tr.feed(sse(*body))
    tr.close()
    chunks = sse_chunks(enc.take())
    c = collect(chunks)  # one id, finish once, usage only on a choices:[] chunk, last
    assert c.done and c.finish_reason == "content_filter"
    assert c.ids == {"chatcmpl-ours" if mode == "async-at-start" else "chatcmpl-A1"}
    if wants:
        assert chunks[-2]["choices"] == [] and chunks[-2]["object"] == "chat.completion.chunk"
        assert c.usage == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        assert chunks[-2]["created"] == chunks[0]["created"]
    else:
        assert c.usage is None and all(chunk["choices"] for chunk in chunks[:-1])
    assert enc.usage_data is None  # (the log's: not reported)


def test_azures_own_usage_chunk_is_not_doubled_by_zeros() -> None:
    enc = ChunkEncoder(completion_id="c", created=1, model="m", include_usage=False)
    tr = AzureTranslator(enc, 1 << 20, provider="p", client_wants_usage=True)
    tr.feed(ASYNC_STREAM)
    tr.close()
    chunks = sse_chunks(enc.take())
    assert [chunk["usage"] for chunk in chunks[:-1] if chunk.get("usage")] == [USAGE]


@pytest.mark.parametrize(("base_url", "deployment", "version"), [
    ("https://r.openai.azure.com/openai/deployments/gpt4o", "gpt4o", None),
    ("https://r.openai.azure.com/openai/deployments/gpt4o/", "gpt4o", None),
    ("https://r.openai.azure.com/openai/deployments/gpt4o/chat/completions", "gpt4o", None),
    ("https://r.openai.azure.com/openai/deployments/gpt4o/chat/completions"
     "?api-version=2025-01-01-preview", "gpt4o", "2025-01-01-preview"),
    ("https://R.openai.azure.com/OpenAI/Deployments/my%20dep", "my dep", None),
    ("https://r.openai.azure.com/openai/deployments", None, None),
])
def test_a_deployments_url_as_base_url_is_a_config_error_saying_what_to_write(
        base_url: str, deployment: str | None, version: str | None) -> None:
    # The portal's "Target URI" pasted as base_url, its /chat/completions?… cut off (as the
    # error for those said to): accepted, every request went to
    # …/openai/deployments/gpt4o/openai/deployments/{model}/chat/completions, Azure's 404.
    with pytest.raises(ConfigError) as info:
        make_config({"az": {"type": "azure", "base_url": base_url, "api_version": VERSION}})
    assert info.value.key == "providers.az.base_url"
    said = str(info.value)
    assert "base_url: https://r.openai.azure.com" in said.lower()
    assert "resource: r" in said.lower()
    assert (f"deployment: {deployment}" if deployment else "deployment: <") in said
    assert f"api_version: {version}" in said if version else "api_version" not in said
