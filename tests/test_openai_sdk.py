"""The official `openai` SDK as a real client, through the proxy on its embedded default."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from streamproxy.providers.mock.server import mock_text
from tests.helpers import openai_sdk

USER = [{"role": "user", "content": "Hello there"}]


@pytest.mark.parametrize("model", ["mock/fast:tokens=40", "mock-openai/fast:tokens=40"])
async def test_streams_text_with_usage(default_proxy: Any, model: str) -> None:
    client = openai_sdk(await default_proxy(), "sk-client")
    stream = await client.chat.completions.create(
        model=model, messages=USER, stream=True, stream_options={"include_usage": True})
    text, finish, usage, ids = "", None, None, set()
    async for chunk in stream:
        ids.add(chunk.id)
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert text == mock_text(40)
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens == 40
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert len(ids) == 1


async def test_streams_parallel_tool_calls(default_proxy: Any) -> None:
    client = openai_sdk(await default_proxy(), "sk-client")
    stream = await client.chat.completions.create(model="mock/tools", messages=USER,
                                                  stream=True)
    calls: dict[int, dict[str, str]] = {}
    finish = None
    async for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for tc in choice.delta.tool_calls or []:
                call = calls.setdefault(tc.index, {"id": "", "name": "", "args": ""})
                call["id"] = tc.id or call["id"]
                call["name"] = (tc.function.name if tc.function else None) or call["name"]
                call["args"] += (tc.function.arguments if tc.function else None) or ""
    assert finish == "tool_calls"
    assert sorted(calls) == [0, 1]
    assert {c["id"] for c in calls.values()} == {"toolu_mock_0", "toolu_mock_1"}
    for call in calls.values():
        assert call["name"] == "get_weather"
        assert call["args"] == '{"city": "Paris", "unit": "c"}'


async def test_non_streaming_text_and_tool_call(default_proxy: Any) -> None:
    client = openai_sdk(await default_proxy(), "sk-client")
    done = await client.chat.completions.create(model="mock/tool", messages=USER)
    assert done.object == "chat.completion"
    assert done.choices[0].message.content == mock_text(10)
    assert done.choices[0].finish_reason == "tool_calls"
    [call] = done.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    assert call.function.arguments == '{"city":"Paris","unit":"c"}'
    assert done.usage.completion_tokens == 20


async def test_mid_stream_error_raises_in_the_sdk(default_proxy: Any) -> None:
    client = openai_sdk(await default_proxy(), "sk-client")
    stream = await client.chat.completions.create(model="mock/error:tps=500", messages=USER,
                                                  stream=True)
    text = ""
    with pytest.raises(openai.APIError, match="Overloaded"):
        async for chunk in stream:
            text += chunk.choices[0].delta.content or "" if chunk.choices else ""
    assert text == mock_text(5)  # what arrived before the error was real


async def test_error_before_the_stream_is_an_http_error(default_proxy: Any) -> None:
    client = openai_sdk(await default_proxy(), "sk-client")
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(model="mock/fast:status=429", messages=USER,
                                             stream=True)
    assert info.value.status_code == 429
    assert "mock error status 429" in str(info.value)


async def test_request_id_is_the_trace_id(default_proxy: Any) -> None:
    # The SDK reads `x-request-id` as `_request_id` / `request_id`, on answers and errors.
    client = openai_sdk(await default_proxy(), "sk-client")
    raw = await client.chat.completions.with_raw_response.create(model="mock/fast:tokens=3",
                                                                 messages=USER)
    assert raw.request_id == raw.headers["x-portkey-trace-id"]
    assert raw.parse()._request_id == raw.request_id
    async with client.chat.completions.with_streaming_response.create(
            model="mock/fast:tokens=3", messages=USER, stream=True) as streamed:
        assert streamed.request_id == streamed.headers["x-portkey-trace-id"]
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(model="mock/fast:status=429", messages=USER,
                                             extra_headers={"x-portkey-trace-id": "trace-7"})
    assert info.value.request_id == "trace-7"


async def test_models_list_and_retrieve(default_proxy: Any) -> None:
    client = openai_sdk(await default_proxy(), "sk-client")
    listed = [m.id async for m in client.models.list()]
    assert "mock/fast" in listed
    model = await client.models.retrieve("mock/fast")  # sent as /v1/models/mock%2Ffast
    assert (model.id, model.object, model.owned_by) == ("mock/fast", "model", "mock")
    # As a chat request names it: with `@`, or bare (the default provider's, here mock's).
    for named in ("@mock/fast", "fast"):
        model = await client.models.retrieve(named)
        assert (model.id, model.owned_by) == (named, "mock")
    with pytest.raises(openai.NotFoundError) as info:
        await client.models.retrieve("mock/nope")
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("nope")
    assert info.value.type == "invalid_request_error"


async def test_models_retrieve_reads_a_bare_model_as_the_provider_header_routes_it(
        default_proxy: Any) -> None:
    """With `x-portkey-provider` (the portkey-ai SDK's `provider`, sent on every call), a chat
    request's bare model is that provider's, not the default provider's: `models.retrieve`
    names it the same way, so what a chat request would be served is found, and what the
    provider does not list is not reported as the default provider's."""
    client = openai_sdk(await default_proxy(), "sk-client")
    for header, named, owner in (("@openai", "gpt-4o-mini", "openai"),
                                 ("mock-openai", "tool", "mock-openai"),
                                 ("mock-openai", "mock-openai/tool", "mock-openai"),
                                 ("mock-openai", "@mock-openai/tool", "mock-openai")):
        model = await client.models.retrieve(named, extra_headers={"x-portkey-provider": header})
        assert (model.id, model.owned_by) == (named, owner)
    with pytest.raises(openai.NotFoundError):  # mock's alone: a chat would ask mock-openai
        await client.models.retrieve("paced", extra_headers={"x-portkey-provider": "mock-openai"})


async def test_a_message_without_content_is_openais_400(default_proxy: Any) -> None:
    client = openai_sdk(await default_proxy(), "sk-client")
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="mock/fast", messages=[{"role": "user"}])
    assert info.value.param == "messages[0].content"
    assert info.value.code == "missing_required_parameter"


async def test_models_retrieve_reads_a_bare_model_as_a_virtual_key_routes_it(proxy: Any) -> None:
    """x-portkey-virtual-key (the portkey-ai SDK's `virtual_key`), or x-portkey-provider
    `@key`, picks the provider a chat request goes to (before x-portkey-provider's name):
    `models.retrieve` names a bare model by that provider too, as does `@key/model`."""
    from tests.helpers import make_config
    config = make_config({"mock": {"type": "mock", "default_model": "fast", "models": ["paced"]},
                          "mock-openai": {"type": "mock", "wire": "openai",
                                          "default_model": "fast", "models": ["tool"]}},
                         default="mock", virtual_keys={"team": {"provider": "mock-openai",
                                                                "api_key": "sk-team"}})
    client = openai_sdk(await proxy(config), "sk-client")
    for headers, named in (({"x-portkey-virtual-key": "team"}, "tool"),
                           ({"x-portkey-virtual-key": "team"}, "@team/tool"),
                           ({"x-portkey-virtual-key": "team"}, "mock-openai/tool"),
                           ({"x-portkey-virtual-key": "team",
                             "x-portkey-provider": "mock"}, "tool"),  # (the key wins)
                           ({"x-portkey-provider": "@team"}, "tool"),
                           ({}, "@team/tool")):
        model = await client.models.retrieve(named, extra_headers=headers)
        assert (model.id, model.owned_by) == (named, "mock-openai"), headers
    for headers in ({"x-portkey-virtual-key": "team"}, {"x-portkey-provider": "@team"}):
        with pytest.raises(openai.NotFoundError):  # mock's alone: a chat would ask mock-openai
            await client.models.retrieve("paced", extra_headers=headers)


async def test_models_retrieve_reads_a_model_as_the_config_routes_it(proxy: Any) -> None:
    """x-portkey-config (the portkey-ai SDK's `config`) and `default_config` pick the provider
    a chat request goes to: `models.retrieve` names the model by the provider the config's
    targets send it to, not by the default provider, with no upstream call."""
    from tests.helpers import make_config
    providers = {"mock": {"type": "mock", "default_model": "fast", "models": ["paced"]},
                 "mock-openai": {"type": "mock", "wire": "openai", "default_model": "fast",
                                 "models": ["tool"]}}
    config = make_config(providers, default="mock",
                         configs={"to-openai": {"provider": "mock-openai"},
                                  "both": {"strategy": {"mode": "fallback"},
                                           "targets": [{"provider": "mock-openai"},
                                                       {"provider": "mock"}]}},
                         virtual_keys={"team": {"provider": "mock-openai",
                                                "api_key": "sk-team"}})
    client = openai_sdk(await proxy(config), "sk-client")
    for config_header, named, owner in (('{"provider": "mock-openai"}', "tool", "mock-openai"),
                                        ('{"provider": "mock-openai"}', "fast", "mock-openai"),
                                        ('{"virtual_key": "team"}', "tool", "mock-openai"),
                                        ("to-openai", "tool", "mock-openai"),
                                        ("both", "paced", "mock")):  # (its fallback's)
        model = await client.models.retrieve(
            named, extra_headers={"x-portkey-config": config_header})
        assert (model.id, model.owned_by) == (named, owner), config_header
    with pytest.raises(openai.NotFoundError):  # mock's alone: a chat would ask mock-openai
        await client.models.retrieve("paced", extra_headers={"x-portkey-config": "to-openai"})
    for bad in ({"x-portkey-config": "{bad"}, {"x-portkey-virtual-key": "nope"}):
        with pytest.raises(openai.BadRequestError):  # the chat's 400, not the default's model
            await client.models.retrieve("fast", extra_headers=bad)
    default = make_config(providers, default="mock",
                          configs={"to-openai": {"provider": "mock-openai"}},
                          default_config="to-openai")
    client = openai_sdk(await proxy(default), "sk-client")
    assert (await client.models.retrieve("tool")).owned_by == "mock-openai"
    with pytest.raises(openai.NotFoundError):  # a bare model goes to mock-openai, not mock
        await client.models.retrieve("paced")
    assert (await client.models.retrieve("mock/paced")).owned_by == "mock"  # (explicit)


async def test_models_list_narrows_to_the_provider_the_headers_route_to(proxy: Any) -> None:
    """With x-portkey-provider, a virtual key or a config naming its providers (the portkey-ai
    SDK's `provider`, `virtual_key`, `config`, sent on every call), a chat request goes to
    that provider whatever the model: Portkey's list is then that provider's. Another
    provider's `mock/paced` listed there would be sent to mock-openai as the model's name."""
    from tests.helpers import make_config
    config = make_config({"mock": {"type": "mock", "default_model": "fast", "models": ["paced"]},
                          "mock-openai": {"type": "mock", "wire": "openai",
                                          "default_model": "fast", "models": ["tool"]}},
                         default="mock", configs={"smart": {"provider": "mock"}},
                         routes={"smart": "smart"},
                         virtual_keys={"team": {"provider": "mock-openai",
                                                "api_key": "sk-team"}})
    client = openai_sdk(await proxy(config), "sk-client")
    everything = [m.id async for m in client.models.list()]
    assert everything == ["mock/fast", "mock/paced", "mock-openai/fast", "mock-openai/tool",
                          "smart"]
    for headers in ({"x-portkey-provider": "mock-openai"}, {"x-portkey-provider": "@team"},
                    {"x-portkey-virtual-key": "team"}):
        listed = [m.id async for m in client.models.list(extra_headers=headers)]
        assert listed == ["mock-openai/fast", "mock-openai/tool", "smart"], headers  # (a route
        # alias runs its own config, whatever the headers name)
    for config_header in ('{"provider": "mock-openai"}', '{"virtual_key": "team"}'):
        listed = [m.id async for m in client.models.list(
            extra_headers={"x-portkey-config": config_header})]
        assert listed == ["mock-openai/fast", "mock-openai/tool"]  # (no alias: the config runs)
    listed = [m.id async for m in client.models.list(  # a target naming no provider: any
        extra_headers={"x-portkey-config": '{"retry": {"attempts": 2}}'})]
    assert listed == everything[:-1]
