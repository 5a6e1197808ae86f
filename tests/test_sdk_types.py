"""Every object the proxy answers with validates against the openai SDK's own types, strictly.

The SDK builds its objects leniently (`construct`): a missing required field or a wrong JSON
type goes unnoticed until a client reads it. Here each object is validated with the SDK's
pydantic model in strict mode (`model_validate(obj, strict=True)`: every required field
present, at every depth, each of its declared type, no coercion) — each provider's recorded
answers streamed chunk by chunk and whole, the stored completions' endpoints, the models list
and error bodies.

One deliberate difference: the SDK types a stored message as `ChatCompletionStoreMessage`,
whose `role` is "assistant" only, where OpenAI's messages endpoint (and ours) lists the
request's messages, the user's among them; their role is checked against the request's.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from openai.types import Model
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionDeleted,
    ChatCompletionStoreMessage,
)
from openai.types.shared import ErrorObject

from streamproxy.errors import ProxyError, StreamTruncated, UpstreamStatusError
from streamproxy.openai_api.chunks import error_frame
from tests.helpers import sse_chunks
from tests.test_chaos import WIRES, _streamed, chaos_config

USER = [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "hi"},
                                     {"type": "image_url",
                                      "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]


def valid(cls: Any, obj: Any) -> None:
    cls.model_validate(obj, strict=True)


def valid_error(body: Any) -> None:
    assert list(body) == ["error"]
    valid(ErrorObject, body["error"])


@pytest.fixture
async def wires(aiohttp_server: Any) -> str:
    """Each provider of the chaos test's wires at `/{provider}`: its recorded answer (the
    `x-answer` header picks which), streamed or whole as the request asks."""

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        provider = request.path.split("/")[1]
        wire = WIRES[provider]
        if not _streamed(provider, request.path, body):
            return web.Response(body=wire.non_stream, content_type="application/json")
        events = wire.streams[int(request.headers.get("x-answer", "0"))]
        return web.Response(body=b"".join(events), content_type=wire.content_type)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


ANSWERS = [(provider, i, stream) for provider, wire in WIRES.items()
           for i in range(len(wire.streams)) for stream in (True, False)]


@pytest.mark.parametrize(("provider", "answer", "stream"), ANSWERS)
async def test_answers_and_their_stored_copies_are_the_sdk_s_types(
        proxy: Any, wires: str, provider: str, answer: int, stream: bool) -> None:
    client = await proxy(chaos_config(wires))
    body: dict[str, Any] = {"model": f"{provider}/m", "messages": USER, "stream": stream,
                            "store": True, "metadata": {"k": "v"}, "temperature": 0.5}
    if stream:
        body["stream_options"] = {"include_usage": True}
    resp = await client.post("/v1/chat/completions", json=body,
                             headers={"x-answer": str(answer)})
    assert resp.status == 200
    if stream:
        chunks = sse_chunks(await resp.read())
        assert chunks.pop() == "[DONE]"
        for chunk in chunks:
            valid(ChatCompletionChunk, chunk)
        completion_id = chunks[0]["id"]
    else:
        whole = await resp.json()
        valid(ChatCompletion, whole)
        completion_id = whole["id"]

    page: dict[str, Any] = {"data": []}
    for _ in range(200):  # (the write is batched on a background thread)
        page = await (await client.get("/v1/chat/completions")).json()
        if page["data"]:
            break
        await asyncio.sleep(0.01)
    assert [item["id"] for item in page["data"]] == [completion_id]
    valid(ChatCompletion, page["data"][0])
    valid(ChatCompletion, await (await client.get(
        f"/v1/chat/completions/{completion_id}")).json())
    messages = await (await client.get(f"/v1/chat/completions/{completion_id}/messages")).json()
    assert [m["role"] for m in messages["data"]] == ["system", "user"]
    for message in messages["data"]:
        valid(ChatCompletionStoreMessage, {**message, "role": "assistant"})  # (see above)
    updated = await client.post(f"/v1/chat/completions/{completion_id}",
                                json={"metadata": {"k": "w"}})
    valid(ChatCompletion, await updated.json())
    deleted = await client.delete(f"/v1/chat/completions/{completion_id}")
    valid(ChatCompletionDeleted, await deleted.json())


async def test_models_and_error_bodies_are_the_sdk_s_types(proxy: Any, wires: str) -> None:
    client = await proxy(chaos_config(wires))
    models = await (await client.get("/v1/models")).json()
    assert models["object"] == "list" and models["data"]
    for model in models["data"]:
        valid(Model, model)
    valid(Model, await (await client.get(f"/v1/models/{models['data'][0]['id']}")).json())

    refused = [
        await client.get("/v1/models/nobody/m"),
        await client.get("/v1/chat/completions/chatcmpl-none"),
        await client.delete("/v1/chat/completions/chatcmpl-none"),
        await client.get("/v1/chat/completions?limit=0"),
        await client.post("/v1/chat/completions", data=b"{"),
        await client.post("/v1/chat/completions", json={"model": "openai/m"}),
        await client.post("/v1/chat/completions", json={"model": "nobody/m", "messages": USER}),
        await client.put("/v1/chat/completions"),
        await client.get("/v1/nothing"),
    ]
    for resp in refused:
        assert resp.status >= 400
        valid_error(await resp.json())


@pytest.mark.parametrize("err", [
    StreamTruncated("the upstream closed the stream before its end"),
    UpstreamStatusError(529, "Overloaded", provider="anthropic", code="overloaded_error"),
    UpstreamStatusError(400, "bad", provider="azure", fields={
        "type": None, "code": "content_filter", "param": "prompt",
        "innererror": {"code": "ResponsibleAIPolicyViolation"}}),
])
def test_a_mid_stream_error_frame_is_the_sdk_s_error_type(err: ProxyError) -> None:
    [frame] = sse_chunks(error_frame(err))
    assert list(frame) == ["error"]
    if frame["error"]["type"] is None:  # an OpenAI-compatible upstream's own null, kept
        frame["error"]["type"] = err.error_type
    valid(ErrorObject, frame["error"])
