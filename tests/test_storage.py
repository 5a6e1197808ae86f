"""Stored completions (`store: true`) through the real `openai` SDK: create (streamed and not,
through the in-process mock and a fake Anthropic upstream), list with filters and pagination,
retrieve, update metadata, delete, list messages — scoped by proxy key — and the SQLite store."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDict

from streamproxy import ids as ids_module
from streamproxy.cache import entry as cached
from streamproxy.config import ConfigError
from streamproxy.errors import ProxyError
from streamproxy.openai_api.completion import CompletionBuilder
from streamproxy.openai_api.request import parse_chat_request
from streamproxy.providers.mock.server import mock_text
from streamproxy.record import RequestRecord
from streamproxy.storage.base import ListQuery, StoredCompletion
from streamproxy.storage.config import StorageConfig, parse_storage_config
from streamproxy.storage.objects import completion_object, parse_page
from streamproxy.storage.service import StoredCompletions, StoreTicket, credential_owner
from streamproxy.storage.sqlite import SQLiteStore
from tests.helpers import fixture_bytes, jsonl_to_sse, make_config, openai_sdk

USER = [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hello"},
                                     {"type": "text", "text": " there"}]}]
ANTHROPIC_TEXT = jsonl_to_sse(fixture_bytes("anthropic/vercel-ai_anthropic-text.chunks.jsonl"))
ANTHROPIC_TEXT_CONTENT = ("Hello! I'm doing well, thank you for asking. How are you doing "
                          "today? Is there anything I can help you with?")
ANTHROPIC_MESSAGE = (b'{"id":"msg_1","type":"message","role":"assistant","model":"claude-x",'
                     b'"content":[{"type":"text","text":"Bonjour"}],"stop_reason":"end_turn",'
                     b'"stop_sequence":null,"usage":{"input_tokens":5,"output_tokens":2}}')


def config(tmp_path: Path, upstream_url: str | None = None, **sections: Any) -> Any:
    providers: dict[str, Any] = {
        "mock": {"type": "mock", "default_model": "fast"},
        "mock-openai": {"type": "mock", "wire": "openai", "default_model": "fast"},
    }
    if upstream_url:
        providers["claude"] = {"type": "anthropic", "base_url": upstream_url,
                               "api_key": "sk-ant-secret", "default_model": "claude-x"}
    sections.setdefault("storage", {"path": str(tmp_path / "store.sqlite3")})
    return make_config(providers, default="mock", **sections)


async def stream_text(api: openai.AsyncOpenAI, **kw: Any) -> tuple[str, str]:
    """(completion id, text) of a streamed create."""
    stream = await api.chat.completions.create(stream=True, **kw)
    ids, text = set(), ""
    async for chunk in stream:
        ids.add(chunk.id)
        for choice in chunk.choices:
            text += choice.delta.content or ""
    [cid] = ids
    return cid, text


async def stored(api: openai.AsyncOpenAI, cid: str) -> Any:
    """The stored completion once written: the write follows the stream's end (bounded wait)."""
    for _ in range(200):
        try:
            return await api.chat.completions.retrieve(cid)
        except openai.NotFoundError:
            await asyncio.sleep(0.025)
    raise AssertionError(f"{cid} was never stored")


async def test_store_list_retrieve_update_delete_with_the_sdk(proxy: Any,
                                                              tmp_path: Path) -> None:
    api = openai_sdk(await proxy(config(tmp_path)), "sk-client")
    a, text_a = await stream_text(api, model="mock/fast:tokens=5", messages=USER, store=True,
                                  metadata={"topic": "a", "run": "1"})
    assert text_a == mock_text(5)
    b = await api.chat.completions.create(model="mock/fast:tokens=7", messages=USER,
                                          store=True, metadata={"topic": "b"})
    c, _ = await stream_text(api, model="mock/fast:tokens=5", messages=USER, store=True,
                             metadata={"topic": "a"})
    await stream_text(api, model="mock/fast:tokens=5", messages=USER)  # not stored
    got = await stored(api, a)
    await stored(api, c)
    assert got.id == a and got.object == "chat.completion"
    assert got.choices[0].message.content == text_a
    assert got.choices[0].finish_reason == "stop"
    assert got.usage is not None and got.usage.completion_tokens == 5
    assert got.metadata == {"topic": "a", "run": "1"}

    page = await api.chat.completions.list()
    assert [x.id for x in page.data] == [a, b.id, c] and page.has_more is False
    assert [x.choices[0].message.content for x in page.data] == [text_a, mock_text(7), text_a]
    page = await api.chat.completions.list(order="desc")
    assert [x.id for x in page.data] == [c, b.id, a]
    page = await api.chat.completions.list(model="mock/fast:tokens=7")
    assert [x.id for x in page.data] == [b.id]
    page = await api.chat.completions.list(metadata={"topic": "a"})
    assert [x.id for x in page.data] == [a, c]
    page = await api.chat.completions.list(metadata={"topic": "a", "run": "1"})
    assert [x.id for x in page.data] == [a]

    first = await api.chat.completions.list(limit=2)
    assert [x.id for x in first.data] == [a, b.id] and first.has_more is True
    assert first.model_extra["first_id"] == a and first.model_extra["last_id"] == b.id
    assert [x.id async for x in api.chat.completions.list(limit=1)] == [a, b.id, c]
    assert [x.id async for x in api.chat.completions.list(limit=1, order="desc")] == [
        c, b.id, a]

    updated = await api.chat.completions.update(b.id, metadata={"topic": "z"})
    assert updated.id == b.id and updated.metadata == {"topic": "z"}
    page = await api.chat.completions.list(metadata={"topic": "z"})
    assert [x.id for x in page.data] == [b.id]

    messages = await api.chat.completions.messages.list(a)
    assert [m.id for m in messages.data] == [f"{a}-0", f"{a}-1"]
    assert messages.data[0].role == "system" and messages.data[0].content == "Be brief."
    assert messages.data[1].content == "Hello there"
    assert [p.text for p in messages.data[1].content_parts] == ["Hello", " there"]
    assert [m.id async for m in api.chat.completions.messages.list(a, limit=1)] == [
        f"{a}-0", f"{a}-1"]
    newest = await api.chat.completions.messages.list(a, order="desc", limit=1)
    assert [m.id for m in newest.data] == [f"{a}-1"] and newest.has_more is True

    deleted = await api.chat.completions.delete(a)
    assert (deleted.id, deleted.deleted, deleted.object) == (a, True, "chat.completion.deleted")
    with pytest.raises(openai.NotFoundError):
        await api.chat.completions.retrieve(a)
    with pytest.raises(openai.NotFoundError):
        await api.chat.completions.delete(a)
    with pytest.raises(openai.NotFoundError):
        await api.chat.completions.messages.list(a)
    assert [x.id for x in (await api.chat.completions.list()).data] == [b.id, c]


async def test_anthropic_upstream_streamed_and_not(proxy: Any, upstream: Any,
                                                   tmp_path: Path) -> None:
    api = openai_sdk(await proxy(config(tmp_path, upstream.url)), "sk-client")
    upstream.body = ANTHROPIC_TEXT
    cid, text = await stream_text(api, model="claude/claude-x", messages=USER, store=True,
                                  metadata={"k": "v"}, temperature=0.5, user="u-1")
    assert text == ANTHROPIC_TEXT_CONTENT
    upstream.content_type, upstream.body = "application/json", ANTHROPIC_MESSAGE
    whole = await api.chat.completions.create(model="claude/claude-x", messages=USER,
                                              store=True)
    for sent in upstream.requests:  # the proxy consumed store and metadata
        assert "store" not in sent.json()
        assert sent.json().get("metadata", {}).get("k") is None
    assert upstream.requests[0].json()["metadata"] == {"user_id": "u-1"}  # from `user`
    got = await stored(api, cid)
    assert got.choices[0].message.content == ANTHROPIC_TEXT_CONTENT
    assert got.usage.total_tokens == 42
    assert got.model_extra["temperature"] == 0.5
    assert got.model_extra["input_user"] == "u-1"
    got = await stored(api, whole.id)
    assert got.choices[0].message.content == "Bonjour"
    assert got.metadata == {}
    page = await api.chat.completions.list(model="claude/claude-x")
    assert [x.id for x in page.data] == [cid, whole.id]


async def test_openai_wire_keeps_the_id_the_client_saw(proxy: Any, tmp_path: Path) -> None:
    api = openai_sdk(await proxy(config(tmp_path)), "sk-client")
    cid, text = await stream_text(api, model="mock-openai/fast:tokens=4", messages=USER,
                                  store=True)
    got = await stored(api, cid)
    assert got.choices[0].message.content == text == mock_text(4)
    whole = await api.chat.completions.create(model="mock-openai/fast:tokens=3",
                                              messages=USER, store=True)
    assert (await stored(api, whole.id)).choices[0].message.content == mock_text(3)


async def test_stored_pass_through_answers_get_our_ids_so_repeated_upstream_ids_do_not_collide(
        proxy: Any, tmp_path: Path) -> None:
    # The mock's OpenAI wire answers every request as "chatcmpl-mock", as a local server may.
    api = openai_sdk(await proxy(config(tmp_path)), "sk-client")
    seen: dict[str, str] = {}
    for tokens in (2, 3):
        cid, text = await stream_text(api, model=f"mock-openai/fast:tokens={tokens}",
                                      messages=USER, store=True)
        seen[cid] = text
        whole = await api.chat.completions.create(model=f"mock-openai/fast:tokens={tokens + 2}",
                                                  messages=USER, store=True)
        seen[whole.id] = whole.choices[0].message.content or ""
    assert len(seen) == 4 and "chatcmpl-mock" not in seen
    for cid, text in seen.items():
        assert (await stored(api, cid)).choices[0].message.content == text
    plain = await api.chat.completions.create(model="mock-openai/fast:tokens=1", messages=USER)
    assert plain.id == "chatcmpl-mock"  # not captured: forwarded byte for byte


async def test_tool_calls_are_stored(proxy: Any, tmp_path: Path) -> None:
    api = openai_sdk(await proxy(config(tmp_path)), "sk-client")
    stream = await api.chat.completions.create(model="mock/tools", messages=USER, stream=True,
                                               store=True)
    cid = ""
    async for chunk in stream:
        cid = chunk.id
    calls = (await stored(api, cid)).choices[0].message.tool_calls
    assert [c.id for c in calls] == ["toolu_mock_0", "toolu_mock_1"]
    assert all(c.function.arguments == '{"city": "Paris", "unit": "c"}' for c in calls)


async def test_a_tool_call_id_before_the_completion_id_is_not_taken_for_it(
        proxy: Any, upstream: Any, tmp_path: Path) -> None:
    # Gemini's OpenAI-compatible endpoint writes `choices` before `id`: a captured stream's
    # first `"id"` is a tool call's. It was given our completion id (the client's call id
    # changed) and the upstream's completion id was kept (stored under it).
    chunk = {"choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [
        {"function": {"arguments": '{"city":"Paris"}', "name": "weather"}, "id": "call_1",
         "type": "function"}]}}], "created": 5, "id": "gem-1", "model": "gemini-x",
             "object": "chat.completion.chunk"}
    finish = {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    upstream.body = b"".join(b"data: %b\n\n" % orjson.dumps(c) for c in (chunk, finish))
    api = openai_sdk(await proxy(make_config(
        {"up": {"type": "openai", "base_url": upstream.url, "api_key": "sk-up"}},
        default="up", storage={"path": str(tmp_path / "s.sqlite3")})), "sk-client")
    tools = [{"type": "function", "function": {"name": "weather"}}]
    stream = await api.chat.completions.create(model="gemini-x", messages=USER, stream=True,
                                               store=True, tools=tools)
    ids, call_ids = set(), []
    async for part in stream:
        ids.add(part.id)
        call_ids += [c.id for c in part.choices[0].delta.tool_calls or []]
    [cid] = ids
    assert cid.startswith("chatcmpl-") and call_ids == ["call_1"]
    got = await stored(api, cid)
    assert [c.id for c in got.choices[0].message.tool_calls or []] == ["call_1"]
    assert got.choices[0].finish_reason == "tool_calls"


async def test_failed_answers_are_not_stored(proxy: Any, tmp_path: Path) -> None:
    client = await proxy(config(tmp_path))
    api = openai_sdk(client, "sk-client")
    with pytest.raises(openai.APIError):
        await stream_text(api, model="mock/error", messages=USER, store=True)
    with pytest.raises(openai.APIStatusError):
        await api.chat.completions.create(model="mock/fast", messages=USER, store=True,
                                          extra_headers={"x-mock-options": "status=500"})
    ok = await api.chat.completions.create(model="mock/fast:tokens=2", messages=USER,
                                           store=True)
    await stored(api, ok.id)  # a later write has landed: the failed ones would be before it
    assert [x.id for x in (await api.chat.completions.list()).data] == [ok.id]


async def test_force_store_and_store_false(proxy: Any, tmp_path: Path) -> None:
    cfg = config(tmp_path, storage={"path": str(tmp_path / "f.sqlite3"), "force_store": True})
    api = openai_sdk(await proxy(cfg), "sk-client")
    cid, _ = await stream_text(api, model="mock/fast:tokens=2", messages=USER)
    assert (await stored(api, cid)).id == cid


async def test_invalid_metadata_is_a_400_before_any_upstream(proxy: Any,
                                                             tmp_path: Path) -> None:
    api = openai_sdk(await proxy(config(tmp_path)), "sk-client")
    with pytest.raises(openai.BadRequestError):
        await api.chat.completions.create(model="mock/fast", messages=USER, store=True,
                                          metadata={"k": 1})  # type: ignore[dict-item]
    with pytest.raises(openai.BadRequestError):
        await api.chat.completions.create(model="mock/fast", messages=USER, store=True,
                                          metadata={f"k{i}": "v" for i in range(17)})
    with pytest.raises(openai.BadRequestError):
        await api.chat.completions.list(limit=101)


async def test_an_update_whose_body_does_not_decode_is_a_400(proxy: Any,
                                                            tmp_path: Path) -> None:
    client = await proxy(config(tmp_path))
    response = await client.post("/v1/chat/completions/chatcmpl-x", data=b"not gzip",
                                 headers={"Content-Encoding": "gzip"})
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "invalid_encoding"


async def test_an_update_body_after_a_utf8_bom_is_read(proxy: Any, tmp_path: Path) -> None:
    """A body file saved with a byte order mark (curl -d @body.json from a Windows editor):
    the chat route reads it (RFC 8259 lets a parser ignore the mark), the metadata update
    answered 400 "Only 'metadata' can be updated" to a body that updates only metadata."""
    client = await proxy(config(tmp_path))
    api = openai_sdk(client, "sk-client")
    done = await api.chat.completions.create(model="mock/fast:tokens=1", messages=USER,
                                             store=True, metadata={"a": "1"})
    await stored(api, done.id)
    response = await client.post(f"/v1/chat/completions/{done.id}",
                                 data=b'\xef\xbb\xbf{"metadata": {"a": "2"}}',
                                 headers={"Authorization": "Bearer sk-client",
                                          "Content-Type": "application/json"})
    assert response.status == 200, await response.text()
    assert (await response.json())["metadata"] == {"a": "2"}
    assert (await api.chat.completions.retrieve(done.id)).metadata == {"a": "2"}


@pytest.mark.parametrize(("body", "message"), [
    (b'{"metadata": {"a": "2"}', "We could not parse the JSON body of your request: "),
    (b"metadata=a", "We could not parse the JSON body of your request: "),
    (b'[{"metadata": {"a": "2"}}]', "The request body must be a JSON object."),
])
async def test_an_update_body_that_is_not_a_json_object_says_so(
        proxy: Any, tmp_path: Path, body: bytes, message: str) -> None:
    """A truncated or form-encoded body was answered "Only 'metadata' can be updated"
    (missing_required_parameter), sending the client after a field it had sent, where the
    chat route answers invalid_json."""
    client = await proxy(config(tmp_path))
    api = openai_sdk(client, "sk-client")
    done = await api.chat.completions.create(model="mock/fast:tokens=1", messages=USER,
                                             store=True, metadata={"a": "1"})
    await stored(api, done.id)
    response = await client.post(f"/v1/chat/completions/{done.id}", data=body,
                                 headers={"Authorization": "Bearer sk-client",
                                          "Content-Type": "application/json"})
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["code"] == "invalid_json" and error["message"].startswith(message)
    assert (await api.chat.completions.retrieve(done.id)).metadata == {"a": "1"}


async def test_an_update_of_anything_but_metadata_is_a_400(proxy: Any,
                                                          tmp_path: Path) -> None:
    # It was ignored: a client believing it had changed the model or the messages got a 200.
    api = openai_sdk(await proxy(config(tmp_path)), "sk-client")
    done = await api.chat.completions.create(model="mock/fast:tokens=1", messages=USER,
                                             store=True, metadata={"a": "1"})
    await stored(api, done.id)
    with pytest.raises(openai.BadRequestError) as refused:
        await api.chat.completions.update(done.id, metadata={"a": "2"},
                                          extra_body={"model": "other"})
    assert refused.value.param == "model" and refused.value.code == "unknown_parameter"
    assert (await api.chat.completions.retrieve(done.id)).metadata == {"a": "1"}


async def test_lists_are_in_time_order_and_survive_deleting_as_they_go(proxy: Any,
                                                                     tmp_path: Path) -> None:
    api = openai_sdk(await proxy(config(tmp_path)), "sk-client")
    # A slow stream that starts first and ends last is still first in time (OpenAI sorts by
    # timestamp, not by when the answer was saved). Its first chunk read: it has begun (a
    # sleep alone let its request reach the proxy with the first fast one's, in one ms).
    slow = await api.chat.completions.create(model="mock/tokens=3,tps=10", messages=USER,
                                             store=True, stream=True)
    first = (await anext(aiter(slow))).id
    await asyncio.sleep(0.01)  # (a later millisecond: ids made in one sort at random)
    fast = [(await api.chat.completions.create(model="mock/fast:tokens=1", messages=USER,
                                               store=True)).id for _ in range(4)]
    async for _ in slow:
        pass
    for cid in [first, *fast]:
        await stored(api, cid)
    page = await api.chat.completions.list(order="asc")
    assert [c.id for c in page.data] == [first, *fast]
    assert [c.id for c in (await api.chat.completions.list(order="desc")).data] == \
        [*reversed(fast), first]
    # The SDK's next page starts after the last item of this one, deleted meanwhile.
    deleted = []
    async for item in api.chat.completions.list(limit=2, order="asc"):
        await api.chat.completions.delete(item.id)
        deleted.append(item.id)
    assert deleted == [first, *fast]
    assert (await api.chat.completions.list()).data == []


async def test_a_slow_non_streamed_answer_is_listed_when_its_request_came(
        proxy: Any, aiohttp_server: Any, tmp_path: Path) -> None:
    # As a stream's: the id (and `created`) were made once the upstream had answered, so a
    # slow non-streamed request was listed after every request that came while it waited.
    arrived, answer = asyncio.Event(), asyncio.Event()

    async def held(request: web.Request) -> web.Response:
        arrived.set()
        await answer.wait()
        return web.Response(body=ANTHROPIC_MESSAGE, content_type="application/json")

    app = web.Application()
    app.router.add_post("/{tail:.*}", held)
    slow_upstream = await aiohttp_server(app)
    api = openai_sdk(await proxy(config(tmp_path, str(slow_upstream.make_url("")).rstrip("/"))),
                     "sk-client")
    slow = asyncio.ensure_future(api.chat.completions.create(
        model="claude/claude-x", messages=USER, store=True))
    await asyncio.wait_for(arrived.wait(), 10)
    await asyncio.sleep(0.01)  # (a later millisecond: ids made in one sort at random)
    fast = [await api.chat.completions.create(model="mock/fast:tokens=1", messages=USER,
                                              store=True) for _ in range(2)]
    answer.set()
    first = await slow
    await stored(api, first.id)
    page = await api.chat.completions.list()
    assert [c.id for c in page.data] == [first.id, *(f.id for f in fast)]
    assert first.created <= fast[0].created


async def test_completions_made_in_one_millisecond_are_listed_in_request_order(
        proxy: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Requests one after another to a fast upstream (or the cache) share a millisecond:
    # they were listed, and auto-paginated, in a random order.
    monkeypatch.setattr(ids_module, "time_ns", lambda: 1_700_000_000_123_456_789)
    monkeypatch.setattr(ids_module, "_last_ordered", 0, raising=False)  # (none made yet)
    api = openai_sdk(await proxy(config(tmp_path)), "sk-client")
    made = []
    for i in range(6):
        if i % 2:
            made.append((await api.chat.completions.create(
                model="mock/fast:tokens=1", messages=USER, store=True)).id)
        else:
            made.append((await stream_text(api, model="mock/fast:tokens=1", messages=USER,
                                           store=True))[0])
    await stored(api, made[-1])
    assert [x.id async for x in api.chat.completions.list(limit=4)] == made
    assert [x.id async for x in api.chat.completions.list(limit=4, order="desc")] == made[::-1]


async def test_each_proxy_key_sees_only_its_own(proxy: Any, tmp_path: Path) -> None:
    client = await proxy(config(tmp_path, auth={"keys": [{"name": "team-a", "key": "ka"},
                                                         {"name": "team-b", "key": "kb"}]}))
    a, b = openai_sdk(client, "ka"), openai_sdk(client, "kb")
    cid, _ = await stream_text(a, model="mock/fast:tokens=2", messages=USER, store=True)
    mine = await b.chat.completions.create(model="mock/fast:tokens=2", messages=USER,
                                           store=True)
    await stored(a, cid)
    await stored(b, mine.id)
    assert [x.id for x in (await a.chat.completions.list()).data] == [cid]
    assert [x.id for x in (await b.chat.completions.list()).data] == [mine.id]
    for call in (b.chat.completions.retrieve(cid), b.chat.completions.delete(cid),
                 b.chat.completions.update(cid, metadata={"x": "y"}),
                 b.chat.completions.messages.list(cid)):
        with pytest.raises(openai.NotFoundError):
            await call
    assert (await a.chat.completions.retrieve(cid)).metadata == {}
    with pytest.raises(openai.AuthenticationError):
        await openai_sdk(client, "nope").chat.completions.list()


def _item(cid: str, owner: str = "", **metadata: str) -> StoredCompletion:
    return StoredCompletion(cid, owner, 1, "m", "p/m", metadata,
                            {"messages": [{"role": "user", "content": "x"}]},
                            {"id": cid, "object": "chat.completion", "choices": []})


async def test_sqlite_store_batches_persists_and_reopens(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sqlite3")
    store = SQLiteStore(path)
    for i in range(600):  # more than one batch; ids in time order, as ours are
        assert store.add(_item(f"c{i:04d}", "o" if i % 2 else "", n=str(i % 3)))
    await store.flush()
    items, more = await store.list("o", ListQuery(limit=100))
    assert len(items) == 100 and more and items[0].id == "c0001"
    items, more = await store.list("o", ListQuery(limit=100, metadata={"n": "0"},
                                                  after="c0291"))
    assert [i.id for i in items] == [f"c{i:04d}" for i in range(297, 600, 6)] and not more
    await store.close()
    reopened = SQLiteStore(path)
    assert (await reopened.get("", "c0000")).request["messages"][0]["content"] == "x"
    assert await reopened.get("o", "c0000") is None
    assert await reopened.delete("", "c0000") and not await reopened.delete("", "c0000")
    await reopened.close()


async def _hold_the_writer(store: SQLiteStore) -> tuple[asyncio.Future[Any], threading.Event]:
    """Keep `store`'s writer thread busy until the event is set: (its job, the event)."""
    entered, release = threading.Event(), threading.Event()

    def block(conn: Any) -> None:
        entered.set()
        release.wait(10)

    busy = asyncio.ensure_future(store._call(block))
    assert await asyncio.to_thread(entered.wait, 10)
    return busy, release


async def test_sqlite_store_drops_writes_beyond_max_pending(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "s.sqlite3"), max_pending=1)
    busy, release = await _hold_the_writer(store)
    assert store.add(_item("kept")) is True
    assert store.add(_item("dropped")) is False and store.dropped == 1
    release.set()
    await busy
    assert await store.get("", "kept") is not None and await store.get("", "dropped") is None
    await store.close()


async def test_an_unopenable_database_is_a_clear_error(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "missing-dir" / "s.sqlite3"))
    with pytest.raises(ProxyError, match="unavailable"):
        await store.get("", "x")
    assert store.add(_item("x"))  # accepted, then logged and dropped by the writer
    await store.close()


async def test_an_unopenable_database_is_a_retryable_503(tmp_path: Path) -> None:
    """A database that does not open is a backend that is down, not a failed request: it was
    a 500 `storage_error`, which the SDKs' retry policies treat as the server's own fault."""
    store = SQLiteStore(str(tmp_path / "missing-dir" / "s.sqlite3"))
    with pytest.raises(ProxyError) as info:
        await store.list("", ListQuery())
    assert (info.value.status, info.value.error_type, info.value.code) == (
        503, "api_error", "service_unavailable")
    assert info.value.should_retry is not False
    await store.close()


async def test_another_workers_write_lock_at_open_does_not_disable_storage(
        tmp_path: Path) -> None:
    """Two workers starting on a new file: while one held a write lock, the other's switch to
    WAL failed at once ("database is locked", no busy wait) and that worker's storage stayed
    off until a restart: every `store: true` answer dropped, every list a 500."""
    path = str(tmp_path / "s.sqlite3")
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    threading.Timer(0.3, other.execute, ("COMMIT",)).start()
    store = SQLiteStore(path)
    assert store.add(_item("kept"))
    await store.flush()
    assert (await store.get("", "kept")) is not None
    await store.close()
    other.close()


async def test_a_database_that_opens_later_is_used_then(tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """A failed open was final for the process: a directory made or a permission fixed
    afterwards left storage off until a restart. Tried again on each job, it is logged at
    most once a minute."""
    directory = tmp_path / "later"
    store = SQLiteStore(str(directory / "s.sqlite3"))
    for _ in range(3):
        with pytest.raises(ProxyError, match="unavailable"):
            await store.get("", "x")
    assert sum("cannot open the storage database" in r.getMessage()
               for r in caplog.records) == 1
    directory.mkdir()
    assert store.add(_item("x"))
    await store.flush()
    assert (await store.get("", "x")) is not None
    await store.close()


async def test_a_full_disk_is_logged_once_a_minute(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Every batch failing (a full disk) logged an error each 50 ms."""
    store = SQLiteStore(str(tmp_path / "s.sqlite3"))
    await store.flush()
    # The file may not grow by a page: SQLite's "database or disk is full"
    await store._call(lambda conn: conn.execute(
        "PRAGMA max_page_count = " + str(conn.execute("PRAGMA page_count").fetchone()[0])))
    for i in range(3):
        item = _item(f"c{i}")
        item.request["messages"][0]["content"] = "x" * 20_000  # more than the free pages
        assert store.add(item)
        await store.flush()
    assert await store.get("", "c0") is None
    errors = [r.getMessage() for r in caplog.records if "could not store" in r.getMessage()]
    assert len(errors) == 1 and "full" in errors[0], errors
    await store.close()


def test_storage_config_is_validated(tmp_path: Path) -> None:
    assert parse_storage_config(config(tmp_path, storage={})).path == "./streamproxy.sqlite3"
    for bad in ({"path": 3}, {"force_store": "yes"}, {"nope": 1}, {"backend": "postgres"},
                {"max_pending": 0}, "x"):
        with pytest.raises(ConfigError, match="storage"):
            parse_storage_config(config(tmp_path, storage=bad))


def test_a_storage_path_in_a_missing_directory_is_a_config_error(tmp_path: Path) -> None:
    """The file is made on the first store: a missing directory showed only then, as a logged
    error, with every `store: true` answer served and never stored."""
    missing = tmp_path / "missing-dir"
    with pytest.raises(ConfigError, match=f"storage.path: directory {missing} does not exist"):
        parse_storage_config(config(tmp_path, storage={"path": str(missing / "s.sqlite3")}))
    assert parse_storage_config(config(tmp_path, storage={"path": ":memory:"})).path == ":memory:"


async def test_openai_upstream_gets_neither_store_nor_metadata(proxy: Any, upstream: Any,
                                                               tmp_path: Path) -> None:
    upstream.body = fixture_bytes("openai/pydantic-ai_run_stream_sync.response1.sse")
    cfg = make_config({"oa": {"type": "openai", "base_url": upstream.url, "api_key": "sk-x",
                              "default_model": "gpt"}}, default="oa",
                      storage={"path": str(tmp_path / "s.sqlite3")})
    api = openai_sdk(await proxy(cfg), "sk-client")
    cid, text = await stream_text(api, model="gpt", messages=USER, store=True,
                                  metadata={"k": "v"})
    sent = upstream.requests[0].json()
    assert "store" not in sent and "metadata" not in sent
    got = await stored(api, cid)  # the id is the upstream's: what the client saw
    assert got.choices[0].message.content == text == "The capital of the UK is London."
    await stream_text(api, model="gpt", messages=USER, store=False)
    assert "store" not in upstream.requests[1].json()


def test_consuming_store_leaves_the_clients_bytes_unencoded() -> None:
    # Only a pass-through forwards `raw`, and it encodes a stripped body itself (the test
    # above): the decision before routing encodes nothing.
    service = StoredCompletions(StorageConfig(path=":memory:"), store=_NoStore())
    for extra in ({"store": True, "metadata": {"k": "v"}}, {"store": False}):
        raw = orjson.dumps({"model": "m", "messages": USER, **extra})
        req = parse_chat_request(raw)
        record = RequestRecord("t")
        service.before_upstream(_Request(), req, record)  # type: ignore[arg-type]
        assert req.raw is raw and req.stripped
        assert "store" not in req.body and "metadata" not in req.body
        assert record.capture is extra["store"]
        if record.capture:  # the stored request keeps the metadata; only `store` goes
            assert record.pending == {"store": StoreTicket(
                "", {"model": "m", "messages": USER, "metadata": {"k": "v"}}, {"k": "v"}, "m")}


class _Request(dict[Any, Any]):
    """A request without credentials (auth off): the anonymous owner, ""."""

    headers: dict[str, str] = {}


class _NoStore:
    def add(self, item: StoredCompletion) -> bool:
        raise AssertionError("nothing is stored before routing")


async def test_a_streamed_answers_logprobs_are_stored(proxy: Any, upstream: Any,
                                                      tmp_path: Path) -> None:
    def chunk(delta: dict[str, Any], token: str | None) -> bytes:
        logprobs = None if token is None else {"content": [
            {"token": token, "logprob": -0.25, "bytes": list(token.encode()),
             "top_logprobs": []}], "refusal": None}
        return b"data: " + orjson.dumps({
            "id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": "gpt",
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs,
                         "finish_reason": None if delta else "stop"}]}) + b"\n\n"

    upstream.body = b"".join([chunk({"role": "assistant", "content": ""}, None),
                              chunk({"content": "Hi"}, "Hi"), chunk({"content": "!"}, "!"),
                              chunk({}, None), b"data: [DONE]\n\n"])
    cfg = make_config({"oa": {"type": "openai", "base_url": upstream.url, "api_key": "sk-x",
                              "default_model": "gpt"}}, default="oa",
                      storage={"path": str(tmp_path / "s.sqlite3")})
    api = openai_sdk(await proxy(cfg), "sk-client")
    cid, text = await stream_text(api, model="gpt", messages=USER, store=True, logprobs=True)
    got = await stored(api, cid)
    assert got.choices[0].message.content == text == "Hi!"
    assert [t.token for t in got.choices[0].logprobs.content] == ["Hi", "!"]
    assert got.choices[0].logprobs.refusal is None


def test_a_captured_pass_through_answer_keeps_the_upstreams_fingerprint_and_tier() -> None:
    builder = CompletionBuilder()
    for chunk in ({"id": "c", "system_fingerprint": "fp_1", "service_tier": "default",
                   "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}]},
                  {"id": "c", "system_fingerprint": "fp_1", "service_tier": "default",
                   "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}):
        builder.raw_chunk(orjson.dumps(chunk))
    got = builder.completion(completion_id="chatcmpl-x", created=1, model="m")
    assert (got["system_fingerprint"], got["service_tier"]) == ("fp_1", "default")
    assert got["choices"][0]["message"]["content"] == "Hi"


def _pass_through_stream(*deltas: dict[str, Any], finish: str = "stop") -> bytes:
    """An OpenAI upstream's stream: one chunk per delta (choice 0), the finish chunk, [DONE]."""
    def chunk(delta: dict[str, Any], reason: str | None = None) -> bytes:
        return b"data: " + orjson.dumps({
            "id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": "gpt",
            "choices": [{"index": 0, "delta": delta, "logprobs": None,
                         "finish_reason": reason}]}) + b"\n\n"

    return b"".join([*map(chunk, deltas), chunk({}, finish), b"data: [DONE]\n\n"])


async def _pass_through_api(proxy: Any, upstream: Any, tmp_path: Path) -> openai.AsyncOpenAI:
    cfg = make_config({"oa": {"type": "openai", "base_url": upstream.url, "api_key": "sk-x",
                              "default_model": "gpt"}}, default="oa",
                      storage={"path": str(tmp_path / "s.sqlite3")})
    return openai_sdk(await proxy(cfg), "sk-client")


async def test_a_streamed_answers_annotations_are_stored(proxy: Any, upstream: Any,
                                                         tmp_path: Path) -> None:
    # A search model's citations come in one delta of their own, after the text.
    citation = {"type": "url_citation", "url_citation": {
        "url": "https://example.com/", "title": "Example", "start_index": 0, "end_index": 2}}
    upstream.body = _pass_through_stream({"role": "assistant", "content": "Hi"},
                                         {"annotations": [citation]})
    api = await _pass_through_api(proxy, upstream, tmp_path)
    cid, _ = await stream_text(api, model="gpt", messages=USER, store=True)
    message = (await stored(api, cid)).choices[0].message
    assert message.content == "Hi"
    assert [a.model_dump() for a in message.annotations or []] == [citation]


async def test_a_streamed_answers_top_level_citations_are_stored(proxy: Any, upstream: Any,
                                                                tmp_path: Path) -> None:
    # Perplexity's `citations` and `search_results` (xAI's `citations`) ride on the chunks'
    # top level, as on its non-streamed answer's: the stored answer keeps them there.
    sources = {"citations": ["https://example.com/"],
               "search_results": [{"title": "Example", "url": "https://example.com/"}]}
    upstream.body = b"".join(
        b"data: " + orjson.dumps({"id": "up", "object": "chat.completion.chunk", "created": 1,
                                  "model": "sonar", **sources, "choices": [choice]}) + b"\n\n"
        for choice in ({"index": 0, "delta": {"role": "assistant", "content": "Hi [1]"}},
                       {"index": 0, "delta": {}, "finish_reason": "stop"})) + b"data: [DONE]\n\n"
    api = await _pass_through_api(proxy, upstream, tmp_path)
    cid, _ = await stream_text(api, model="gpt", messages=USER, store=True)
    got = (await stored(api, cid)).model_extra
    assert (got["citations"], got["search_results"]) == (sources["citations"],
                                                         sources["search_results"])


async def test_a_streamed_answers_audio_is_stored(proxy: Any, upstream: Any,
                                                  tmp_path: Path) -> None:
    # `modalities: ["text", "audio"]`: the id first, the transcript and base64 data in pieces,
    # the expiry last — stored joined, as a non-streamed answer's `message.audio`.
    upstream.body = _pass_through_stream(
        {"role": "assistant", "audio": {"id": "audio_1", "transcript": "Hel"}},
        {"audio": {"transcript": "lo"}}, {"audio": {"data": "UklG"}},
        {"audio": {"data": "RiQ="}}, {"audio": {"expires_at": 1700000000}})
    api = await _pass_through_api(proxy, upstream, tmp_path)
    cid, _ = await stream_text(api, model="gpt", messages=USER, store=True,
                               modalities=["text", "audio"])
    audio = (await stored(api, cid)).choices[0].message.audio
    assert audio is not None
    assert (audio.id, audio.transcript, audio.data, audio.expires_at) == (
        "audio_1", "Hello", "UklGRiQ=", 1700000000)


async def test_a_streamed_answers_legacy_function_call_is_stored(proxy: Any, upstream: Any,
                                                                tmp_path: Path) -> None:
    # The deprecated `functions`, which OpenAI-type upstreams still answer: the call comes as
    # `delta.function_call`, its name first and its arguments in pieces, content null.
    upstream.body = _pass_through_stream(
        {"role": "assistant", "content": None,
         "function_call": {"name": "get_weather", "arguments": ""}},
        {"function_call": {"arguments": '{"city":'}}, {"function_call": {"arguments": '"Paris"}'}},
        finish="function_call")
    api = await _pass_through_api(proxy, upstream, tmp_path)
    cid, _ = await stream_text(api, model="gpt", messages=USER, store=True,
                               functions=[{"name": "get_weather", "parameters": {}}])
    got = (await stored(api, cid)).choices[0]
    assert got.finish_reason == "function_call" and got.message.content is None
    assert got.message.function_call is not None
    assert (got.message.function_call.name, got.message.function_call.arguments) == (
        "get_weather", '{"city":"Paris"}')


async def test_a_streamed_answers_reasoning_is_stored_under_the_name_the_client_read(
        proxy: Any, upstream: Any, tmp_path: Path) -> None:
    # OpenRouter, Groq and vLLM stream `reasoning` (DeepSeek `reasoning_content`); the client
    # read it, and a non-streamed answer is stored, under the upstream's name.
    api = await _pass_through_api(proxy, upstream, tmp_path)
    for key in ("reasoning", "reasoning_content"):
        upstream.body = _pass_through_stream({"role": "assistant", key: "Think"},
                                             {key: "ing."}, {"content": "Done"})
        cid, _ = await stream_text(api, model="gpt", messages=USER, store=True)
        message = (await stored(api, cid)).choices[0].message
        assert message.content == "Done"
        assert message.model_extra == {key: "Thinking."}


async def test_a_streamed_answers_reasoning_details_are_stored_joined(
        proxy: Any, upstream: Any, tmp_path: Path) -> None:
    # OpenRouter streams `reasoning_details` in pieces, each entry's text in parts under its
    # `index`, its signature on a later piece; a tool loop sends the whole list back, as the
    # non-streamed answer's `message.reasoning_details` has it.
    fmt = "anthropic-claude-v1"
    upstream.body = _pass_through_stream(
        {"role": "assistant", "reasoning": "Think", "reasoning_details": [
            {"type": "reasoning.text", "text": "Think", "format": fmt, "index": 0}]},
        {"reasoning": "ing.", "reasoning_details": [
            {"type": "reasoning.text", "text": "ing.", "format": fmt, "index": 0}]},
        {"reasoning_details": [{"type": "reasoning.text", "signature": "c2ln", "format": fmt,
                                "index": 0}]},
        {"reasoning_details": [{"type": "reasoning.encrypted", "data": "ZW5j", "format": fmt,
                                "index": 1}]},
        {"content": "Done"})
    api = await _pass_through_api(proxy, upstream, tmp_path)
    cid, _ = await stream_text(api, model="gpt", messages=USER, store=True)
    message = (await stored(api, cid)).choices[0].message
    assert message.content == "Done" and message.model_extra["reasoning"] == "Thinking."
    assert message.model_extra["reasoning_details"] == [
        {"type": "reasoning.text", "text": "Thinking.", "format": fmt, "index": 0,
         "signature": "c2ln"},
        {"type": "reasoning.encrypted", "data": "ZW5j", "format": fmt, "index": 1}]


async def test_a_streamed_tool_calls_thought_signature_is_stored(
        proxy: Any, upstream: Any, tmp_path: Path) -> None:
    # Gemini's OpenAI endpoint signs a thinking model's call in its `extra_content`, which the
    # next turn must send back (Gemini 3 refuses an unsigned call): stored on the call, as
    # its non-streamed answer has it.
    signed = {"google": {"thought_signature": "c2lnbmVk"}}
    upstream.body = _pass_through_stream(
        {"role": "assistant", "content": None, "tool_calls": [
            {"index": 0, "id": "call_1", "type": "function", "extra_content": signed,
             "function": {"name": "get_weather", "arguments": '{"city":'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
        {"tool_calls": [{"index": 1, "id": "call_2", "type": "function",
                         "function": {"name": "get_time", "arguments": "{}"}}]},
        finish="tool_calls")
    api = await _pass_through_api(proxy, upstream, tmp_path)
    cid, _ = await stream_text(api, model="gpt", messages=USER, store=True)
    calls = (await stored(api, cid)).choices[0].message.tool_calls or []
    assert [(c.id, c.function.arguments, c.model_extra) for c in calls] == [
        ("call_1", '{"city":"Paris"}', {"extra_content": signed}), ("call_2", "{}", {})]


async def test_a_streamed_answer_with_several_choices_is_stored_whole(
        proxy: Any, upstream: Any, tmp_path: Path) -> None:
    def chunk(*choices: dict[str, Any], **extra: Any) -> bytes:
        return b"data: " + orjson.dumps({
            "id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": "gpt",
            "choices": list(choices), **extra}) + b"\n\n"

    def choice(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}

    usage = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    upstream.body = b"".join([
        chunk(choice(0, {"role": "assistant", "content": "Yes"}),
              choice(1, {"role": "assistant", "content": "N"})),
        chunk(choice(1, {"content": "o"}), choice(0, {}, "stop")),
        chunk(choice(1, {}, "length")), chunk(usage=usage), b"data: [DONE]\n\n"])
    api = await _pass_through_api(proxy, upstream, tmp_path)
    stream = await api.chat.completions.create(model="gpt", messages=USER, store=True, n=2,
                                               stream=True)
    [cid] = {c.id async for c in stream}
    got = await stored(api, cid)
    assert [(c.index, c.message.content, c.finish_reason) for c in got.choices] == [
        (0, "Yes", "stop"), (1, "No", "length")]
    assert got.usage is not None and got.usage.total_tokens == 7


async def test_a_tool_call_with_an_empty_id_is_stored(proxy: Any, upstream: Any,
                                                      tmp_path: Path) -> None:
    # Some proxies in front of Gemini send `"id": ""` and no index: the client got both calls
    # (indexed by the proxy); the capture started a call on a non-empty id only and lost them.
    calls = [{"id": "", "type": "function", "function": {"name": name, "arguments": args}}
             for name, args in (("f", '{"a":1}'), ("g", '{"b":2}'))]
    upstream.body = _pass_through_stream({"role": "assistant", "tool_calls": calls})
    api = await _pass_through_api(proxy, upstream, tmp_path)
    tools = [{"type": "function", "function": {"name": name}} for name in ("f", "g")]
    async with api.chat.completions.stream(model="gpt", messages=USER, store=True,
                                           tools=tools) as stream:  # type: ignore[arg-type]
        final = await stream.get_final_completion()
    got = (await stored(api, final.id)).choices[0]
    assert [(c.id, c.function.name, c.function.arguments) for c in got.message.tool_calls or []
            ] == [("", "f", '{"a":1}'), ("", "g", '{"b":2}')] == [
        (c.id, c.function.name, c.function.arguments)
        for c in final.choices[0].message.tool_calls or []]
    assert got.finish_reason == "tool_calls"


def test_an_indexed_tool_call_with_an_empty_id_is_captured_and_continued() -> None:
    builder = CompletionBuilder()
    for call in ({"index": 0, "id": "", "type": "function",
                  "function": {"name": "f", "arguments": ""}},
                 {"index": 0, "function": {"arguments": '{"a":'}},
                 {"index": 0, "id": "", "function": {"name": "f", "arguments": "1}"}},
                 {"index": 1, "function": {"arguments": "{}"}}):  # never started: not a call
        builder.raw_chunk(orjson.dumps({"choices": [{"index": 0, "delta": {
            "tool_calls": [call]}}]}))
    call = {"id": "", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    assert builder.message()["tool_calls"] == [call]
    hit = cached.completion_from(cached.from_builder(builder), completion_id="c", created=1,
                                 model="m")  # the cache keeps it too
    assert hit["choices"][0]["message"]["tool_calls"] == [call]


async def test_a_non_streamed_pass_through_answer_without_an_id_is_stored(
        proxy: Any, upstream: Any, tmp_path: Path) -> None:
    # An OpenAI-compatible server that leaves `id` out: the capture kept no id, so nothing was
    # stored and the client had no id to retrieve it by. It now gets ours, as a stream does.
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps({"object": "chat.completion", "created": 3, "model": "gpt",
                                  "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                      "role": "assistant", "content": "Hi"}}]})
    api = await _pass_through_api(proxy, upstream, tmp_path)
    whole = await api.chat.completions.create(model="gpt", messages=USER, store=True)
    assert whole.id.startswith("chatcmpl-")
    got = await stored(api, whole.id)
    assert got.choices[0].message.content == "Hi" and got.created == 3
    plain = await api.chat.completions.create(model="gpt", messages=USER)
    assert plain.id is None  # not captured: forwarded as it came


async def test_a_streamed_pass_through_answer_without_ids_gets_ours(
        proxy: Any, upstream: Any, tmp_path: Path) -> None:
    # A server whose chunks carry no `id`: the answer was stored under ours, which the client
    # never saw. Captured, each chunk gets it (an empty delta and the usage chunk too).
    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return b"data: " + orjson.dumps({"object": "chat.completion.chunk", "choices": choices,
                                         **extra}) + b"\n\n"

    usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    upstream.body = b"".join([
        chunk([{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}]),
        chunk([{"index": 0, "delta": {"content": " you"}}]), b"data: {}\n\n",
        chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]), chunk([], usage=usage),
        b"data: [DONE]\n\n"])
    api = await _pass_through_api(proxy, upstream, tmp_path)
    stream = await api.chat.completions.create(model="gpt", messages=USER, store=True,
                                               stream=True, stream_options={"include_usage": True})
    [cid] = {c.id async for c in stream}
    assert cid.startswith("chatcmpl-")
    got = await stored(api, cid)
    assert got.choices[0].message.content == "Hi you" and got.usage.total_tokens == 4
    stream = await api.chat.completions.create(model="gpt", messages=USER, stream=True)
    assert {c.id async for c in stream} == {None}  # not captured: forwarded as it came


async def test_without_auth_each_client_key_sees_only_its_own(proxy: Any, tmp_path: Path,
                                                               access_log: Any) -> None:
    # Clients that bring their own provider key (a sidecar, a shared gateway without
    # `auth:`) are scoped by it, as OpenAI scopes stored completions by key.
    client = await proxy(config(tmp_path))
    a, a_again, b = (openai_sdk(client, "sk-client-a"), openai_sdk(client, "sk-client-a"),
                     openai_sdk(client, "sk-client-b"))
    cid, _ = await stream_text(a, model="mock/fast:tokens=2", messages=USER, store=True)
    theirs = await b.chat.completions.create(model="mock/fast:tokens=2", messages=USER,
                                             store=True)
    await stored(a, cid)
    await stored(b, theirs.id)
    assert [x.id for x in (await a_again.chat.completions.list()).data] == [cid]
    assert [x.id for x in (await b.chat.completions.list()).data] == [theirs.id]
    for call in (b.chat.completions.retrieve(cid), b.chat.completions.delete(cid),
                 b.chat.completions.update(cid, metadata={"x": "y"}),
                 b.chat.completions.messages.list(cid)):
        with pytest.raises(openai.NotFoundError):
            await call
    assert (await a_again.chat.completions.retrieve(cid)).metadata == {}
    assert [m.id for m in (await a.chat.completions.messages.list(cid)).data] == [
        f"{cid}-0", f"{cid}-1"]
    # A request with no credential at all has its own scope: it sees neither.
    resp = await client.get("/v1/chat/completions")
    assert resp.status == 200 and (await resp.json())["data"] == []
    assert (await client.get(f"/v1/chat/completions/{cid}")).status == 404
    # The same key by another header (x-api-key) is the same client.
    resp = await client.get(f"/v1/chat/completions/{cid}", headers={"x-api-key": "sk-client-a"})
    assert resp.status == 200
    # Neither the key nor its hash shows in the access log or the metrics; the database
    # holds the hash only.
    owner = credential_owner({"authorization": "Bearer sk-client-a"})
    seen = orjson.dumps(access_log()).decode() + await (await client.get("/metrics")).text()
    assert "sk-client" not in seen and owner[4:] not in seen
    database = b"".join(f.read_bytes() for f in tmp_path.glob("store.sqlite3*"))
    assert owner.encode() in database and b"sk-client" not in database
    assert (await a.chat.completions.delete(cid)).deleted
    assert (await b.chat.completions.retrieve(theirs.id)).id == theirs.id


async def test_portkey_sdk_clients_without_a_provider_key_are_scoped_by_their_api_key(
        proxy: Any, tmp_path: Path) -> None:
    # The portkey-ai SDK sends its `api_key` as x-portkey-api-key and, with no provider key
    # given, the same placeholder Bearer for everyone.
    client = await proxy(config(tmp_path))
    headers = [{"authorization": "Bearer OPENAI_API_KEY", "x-portkey-api-key": key}
               for key in ("pk-a", "pk-b")]
    resp = await client.post("/v1/chat/completions", headers=headers[0], json={
        "model": "mock/fast:tokens=2", "messages": USER, "store": True})
    cid = (await resp.json())["id"]
    await stored(openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="x",
                                    default_headers=headers[0], max_retries=0), cid)
    assert (await client.get(f"/v1/chat/completions/{cid}", headers=headers[1])).status == 404
    assert (await client.get(f"/v1/chat/completions/{cid}", headers=headers[0])).status == 200


def test_a_stored_completions_owner_is_a_hash_of_the_clients_credentials() -> None:
    key = "sk-proj-abcdef0123456789"
    owner = credential_owner({"authorization": f"Bearer {key}"})
    assert owner.startswith("key:") and key not in owner and key[3:] not in owner
    assert owner[4:] != hashlib.sha256(key.encode()).hexdigest()  # not auth's digest of it
    assert credential_owner(CIMultiDict({"Authorization": f"bearer {key} "})) == owner
    assert credential_owner({"x-api-key": key}) == owner == credential_owner({"api-key": key})
    assert credential_owner({"authorization": "Bearer sk-other"}) != owner
    assert credential_owner({"authorization": f"Bearer {key}",
                             "x-portkey-api-key": "pk"}) not in ("", owner)
    assert credential_owner({"x-portkey-api-key": "pk"}) not in ("", owner)
    assert credential_owner({}) == "" == credential_owner({"authorization": "Basic abc"})


async def test_rows_stored_before_keep_their_scope(proxy: Any, tmp_path: Path) -> None:
    # Stored before owners were hashed: without auth, owner "" — the scope every client
    # shared, now the anonymous one; with auth, the key's name, as now.
    path = tmp_path / "store.sqlite3"
    store = SQLiteStore(str(path))
    store.add(_item("chatcmpl-shared"))
    store.add(_item("chatcmpl-team", "team-a"))
    await store.close()
    client = await proxy(config(tmp_path))
    assert (await client.get("/v1/chat/completions/chatcmpl-shared")).status == 200
    keyed = {"authorization": "Bearer sk-client"}
    assert (await client.get("/v1/chat/completions/chatcmpl-shared", headers=keyed)).status == 404
    authed = await proxy(config(tmp_path, auth={"keys": [{"name": "team-a", "key": "ka"}]}))
    resp = await authed.get("/v1/chat/completions", headers={"authorization": "Bearer ka"})
    assert [x["id"] for x in (await resp.json())["data"]] == ["chatcmpl-team"]


async def test_with_auth_the_proxy_key_is_the_scope_whatever_provider_key_comes_with_it(
        proxy: Any, tmp_path: Path) -> None:
    client = await proxy(config(tmp_path, auth={"keys": [{"name": "team-a", "key": "ka"}]}))
    first = {"x-portkey-api-key": "ka", "authorization": "Bearer sk-one"}
    resp = await client.post("/v1/chat/completions", headers=first, json={
        "model": "mock/fast:tokens=2", "messages": USER, "store": True})
    cid = (await resp.json())["id"]
    await stored(openai_sdk(client, "ka"), cid)
    other = {"x-portkey-api-key": "ka", "authorization": "Bearer sk-two"}
    assert (await client.get(f"/v1/chat/completions/{cid}", headers=other)).status == 200


async def test_the_model_filter_finds_every_name_of_a_model(proxy: Any, tmp_path: Path) -> None:
    """`provider/model`, `@provider/model` and (the default provider's) the bare model name
    one model, as `/v1/models/{model}` reads them: a filter by any finds what each created."""
    api = openai_sdk(await proxy(config(tmp_path)), "sk-client")
    ids = []
    for named in ("mock/fast:tokens=2", "@mock/fast:tokens=2", "fast:tokens=2"):
        done = await api.chat.completions.create(model=named, messages=USER, store=True)
        ids.append(done.id)
    other = await api.chat.completions.create(model="mock-openai/slow:tokens=2", messages=USER,
                                              store=True)
    await stored(api, other.id)
    for named in ("mock/fast:tokens=2", "@mock/fast:tokens=2", "fast:tokens=2"):
        page = await api.chat.completions.list(model=named)
        assert [x.id for x in page.data] == ids, named
    page = await api.chat.completions.list(model="@mock-openai/slow:tokens=2")
    assert [x.id for x in page.data] == [other.id]


async def test_an_inline_configs_api_key_scopes_what_it_stores(proxy: Any,
                                                               tmp_path: Path) -> None:
    # The portkey-ai SDK's `config={"provider": …, "api_key": …}` brings the client's key in
    # x-portkey-config (on every call, lists and retrieves too): it is the client's
    # credential, as a Bearer key is. Before, such completions landed in the anonymous scope,
    # readable by any request without a key and by every other inline key.
    client = await proxy(config(tmp_path))

    def inline(key: str) -> dict[str, str]:
        return {"x-portkey-config": orjson.dumps({"provider": "mock-openai",
                                                  "api_key": key}).decode()}

    resp = await client.post("/v1/chat/completions", headers=inline("sk-inline-a"), json={
        "model": "fast:tokens=2", "messages": USER, "store": True})
    cid = (await resp.json())["id"]
    for _ in range(200):  # the write follows the answer (bounded wait)
        resp = await client.get(f"/v1/chat/completions/{cid}", headers=inline("sk-inline-a"))
        if resp.status == 200:
            break
        await asyncio.sleep(0.025)
    assert resp.status == 200
    for other in ({}, inline("sk-inline-b")):
        assert (await client.get(f"/v1/chat/completions/{cid}", headers=other)).status == 404
        resp = await client.get("/v1/chat/completions", headers=other)
        assert (await resp.json())["data"] == []
    # a key under a fallback's targets counts as well; a named config's (the operator's) not
    fallback = {"strategy": {"mode": "fallback"},
                "targets": [{"provider": "mock-openai", "api_key": "sk-inline-a"}]}
    assert credential_owner({"x-portkey-config": orjson.dumps(fallback).decode()}) \
        == credential_owner(inline("sk-inline-a")) not in ("", credential_owner(
            inline("sk-inline-b")))
    assert credential_owner({"x-portkey-config": "prod"}) == ""
    assert credential_owner({"x-portkey-config": "{not json"}) == ""


async def test_an_inline_configs_camel_case_api_key_scopes_what_it_stores(
        proxy: Any, tmp_path: Path) -> None:
    # The config reader takes Portkey's camelCase `apiKey` (a JavaScript client's) as the
    # target's key, but the owner read only `api_key`: completions stored with an inline
    # `apiKey` went to the anonymous scope, readable by any request without a key and by
    # every other client whose inline key was written that way.
    client = await proxy(config(tmp_path))

    def inline(key: str) -> dict[str, str]:
        return {"x-portkey-config": orjson.dumps({"provider": "mock-openai",
                                                  "apiKey": key}).decode()}

    resp = await client.post("/v1/chat/completions", headers=inline("sk-camel-a"), json={
        "model": "fast:tokens=2", "messages": USER, "store": True})
    cid = (await resp.json())["id"]
    for _ in range(200):  # the write follows the answer (bounded wait)
        resp = await client.get(f"/v1/chat/completions/{cid}", headers=inline("sk-camel-a"))
        if resp.status == 200:
            break
        await asyncio.sleep(0.025)
    assert resp.status == 200
    for other in ({}, inline("sk-camel-b")):
        assert (await client.get(f"/v1/chat/completions/{cid}", headers=other)).status == 404
        resp = await client.get("/v1/chat/completions", headers=other)
        assert (await resp.json())["data"] == []
    # one key, whichever way it is written (and in a fallback's targets), is one owner
    snake = {"x-portkey-config": orjson.dumps({"provider": "mock-openai",
                                               "api_key": "sk-camel-a"}).decode()}
    fallback = {"strategy": {"mode": "fallback"},
                "targets": [{"provider": "mock-openai", "apiKey": "sk-camel-a"}]}
    assert credential_owner(inline("sk-camel-a")) == credential_owner(snake) == \
        credential_owner({"x-portkey-config": orjson.dumps(fallback).decode()})


async def test_the_model_filter_knows_a_model_by_the_provider_its_header_named(
        proxy: Any, tmp_path: Path) -> None:
    # `model: "fast"` with `x-portkey-provider: mock-openai` is mock-openai's `fast`: listed
    # under that provider's names, not under the default provider's `fast`.
    api = openai_sdk(await proxy(config(tmp_path)), "sk-client")
    done = await api.chat.completions.create(
        model="fast:tokens=2", messages=USER, store=True,
        extra_headers={"x-portkey-provider": "mock-openai"})
    await stored(api, done.id)
    for named in ("mock-openai/fast:tokens=2", "@mock-openai/fast:tokens=2"):
        assert [x.id for x in (await api.chat.completions.list(model=named)).data] == [done.id]
    for named in ("mock/fast:tokens=2", "@mock/fast:tokens=2"):
        assert (await api.chat.completions.list(model=named)).data == []
    # what the request sent is kept as it was sent
    assert (await api.chat.completions.retrieve(done.id)).model == "fast:tokens=2"


async def test_a_list_after_a_cursor_that_names_no_completion_is_a_400(proxy: Any,
                                                                      tmp_path: Path) -> None:
    # As messages.list answers an unknown `after`: before, the list answered an empty page
    # (asc: "no more", the rest silently lost) or everything from the newest (desc).
    api = openai_sdk(await proxy(config(tmp_path)), "sk-client")
    ids = [(await api.chat.completions.create(model="mock/fast:tokens=1", messages=USER,
                                              store=True)).id for _ in range(3)]
    await stored(api, ids[-1])
    for order in ("asc", "desc"):
        for after in ("nope", "chatcmpl-zzz", ids[0].upper()):
            with pytest.raises(openai.BadRequestError) as caught:
                await api.chat.completions.list(after=after, order=order)  # type: ignore[arg-type]
            assert caught.value.param == "after" and after in caught.value.message
        with pytest.raises(openai.BadRequestError):
            await api.chat.completions.messages.list(ids[0], after="nope", order=order)
    # a completion deleted since its page was read is still a position (list-and-delete)
    await api.chat.completions.delete(ids[1])
    page = await api.chat.completions.list(after=ids[1])
    assert [x.id for x in page.data] == [ids[2]]
    page = await api.chat.completions.list(after=ids[1], order="desc")
    assert [x.id for x in page.data] == [ids[0]]


async def test_the_model_filter_knows_a_model_by_the_provider_its_virtual_key_named(
        proxy: Any, tmp_path: Path) -> None:
    # x-portkey-virtual-key picks the provider as x-portkey-provider does (and before it):
    # `model: "fast"` with a key of mock-openai's is mock-openai's `fast`.
    keys = {"team": {"provider": "mock-openai", "api_key": "sk-team"}}
    api = openai_sdk(await proxy(config(tmp_path, virtual_keys=keys)), "sk-client")
    done = [await api.chat.completions.create(model="fast:tokens=2", messages=USER, store=True,
                                              extra_headers=headers)
            for headers in ({"x-portkey-virtual-key": "team"}, {"x-portkey-provider": "@team"})]
    await stored(api, done[-1].id)
    await stored(api, done[0].id)
    ids = sorted(d.id for d in done)
    for named in ("mock-openai/fast:tokens=2", "@mock-openai/fast:tokens=2"):
        page = await api.chat.completions.list(model=named)
        assert sorted(x.id for x in page.data) == ids, named
    for named in ("mock/fast:tokens=2", "@mock/fast:tokens=2"):
        assert (await api.chat.completions.list(model=named)).data == [], named


async def test_the_model_filter_resolves_a_virtual_keys_prefix_as_the_chat_route_does(
        proxy: Any, tmp_path: Path) -> None:
    # `@team/fast` sends `fast` to the key's provider, and is stored under that provider's
    # name; the filter read `@team/` as no provider's prefix (the default's model
    # `@team/fast`), so the name the completion was created with did not find it.
    keys = {"team": {"provider": "mock-openai", "api_key": "sk-team"}}
    api = openai_sdk(await proxy(config(tmp_path, virtual_keys=keys)), "sk-client")
    done = await api.chat.completions.create(model="@team/fast:tokens=2", messages=USER,
                                             store=True)
    await stored(api, done.id)
    page = await api.chat.completions.list(model="@team/fast:tokens=2")
    assert [x.id for x in page.data] == [done.id]
    assert (await api.chat.completions.list(model="@team/slow")).data == []


async def test_a_database_file_deleted_while_running_is_made_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Deleting the file (an operator's cleanup, a volume swapped) left the open connection
    writing to the deleted inode, unannounced: every completion stored from then on was gone
    at the next restart. The file is looked at (at most once a minute: here each job) and
    opened again, with a warning."""
    import streamproxy.storage.sqlite as sqlite_module

    monkeypatch.setattr(sqlite_module, "_FILE_CHECK_EVERY", 0.0)
    path = tmp_path / "s.sqlite3"
    store = SQLiteStore(str(path))
    assert store.add(_item("before"))
    await store.flush()
    for name in ("s.sqlite3", "s.sqlite3-wal", "s.sqlite3-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    assert store.add(_item("after"))
    await store.flush()
    assert (await store.get("", "after")) is not None
    await store.close()
    assert path.exists()
    reopened = SQLiteStore(str(path))
    assert (await reopened.get("", "after")) is not None
    await reopened.close()
    assert any("was deleted or replaced" in r.getMessage() for r in caplog.records)


async def test_a_write_that_fails_unexpectedly_does_not_stop_the_writer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A batch failing with what `_write` did not expect (a MemoryError, a bug) killed the
    writer thread: every later list/retrieve waited for ever on its future, and every later
    `store: true` answer piled up until max_pending dropped them all."""
    import streamproxy.storage.sqlite as sqlite_store

    store = SQLiteStore(str(tmp_path / "s.sqlite3"))
    real_row, failures = sqlite_store._row, iter([MemoryError()])

    def row(item: StoredCompletion) -> tuple[Any, ...]:
        for error in failures:
            raise error
        return real_row(item)

    monkeypatch.setattr(sqlite_store, "_row", row)
    assert store.add(_item("lost"))
    store._send_batch()
    # the database is opened again and used: the failed batch is lost, nothing else
    assert await asyncio.wait_for(store.get("", "lost"), 10) is None
    assert store.add(_item("kept"))
    await asyncio.wait_for(store.flush(), 10)
    assert await asyncio.wait_for(store.get("", "kept"), 10) is not None
    assert store._sent == store._written  # the lost batch is not a backlog for ever
    assert sum("storage writer failed" in r.getMessage() for r in caplog.records) == 1
    await asyncio.wait_for(store.close(), 10)


async def test_a_completion_sqlite_cannot_encode_does_not_stop_the_writer(
        tmp_path: Path) -> None:
    """A row SQLite cannot take (a lone surrogate: UnicodeEncodeError, a ValueError `_write`
    did not catch) killed the writer thread, and every later read hung."""
    store = SQLiteStore(str(tmp_path / "s.sqlite3"))
    bad = _item("bad")
    bad.request_model = "mock/\udcff"
    assert store.add(bad)
    await asyncio.wait_for(store.flush(), 10)
    assert store.add(_item("kept"))
    await asyncio.wait_for(store.flush(), 10)
    assert await asyncio.wait_for(store.get("", "kept"), 10) is not None
    await asyncio.wait_for(store.close(), 10)


async def test_a_read_arriving_while_the_store_closes_is_answered(tmp_path: Path) -> None:
    """A read sent after close() had queued the writer's stop (a request still running during
    shutdown or a reload) went in behind the stop: the thread ended without it, and its
    request waited for ever."""
    store = SQLiteStore(str(tmp_path / "s.sqlite3"))
    assert store.add(_item("kept"))
    busy, release = await _hold_the_writer(store)
    closing = asyncio.ensure_future(store.close())
    await asyncio.sleep(0)  # close() has queued the stop
    late = asyncio.ensure_future(store.get("", "kept"))
    await asyncio.sleep(0)
    release.set()
    await asyncio.wait_for(busy, 10)
    await asyncio.wait_for(closing, 10)
    assert (await asyncio.wait_for(late, 10)) is not None
    await asyncio.wait_for(store.close(), 10)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_reads_are_answered_after_the_writer_thread_died(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer thread that ended anyway (an exception no handler takes, here SystemExit) left
    the reads queued behind its job waiting for ever, and every later read too: the thread
    was never started again. A read now fails with the storage-down 503 after a bound, and
    the next one starts a new thread."""
    import streamproxy.storage.sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "_CALL_TIMEOUT", 0.5)
    store = SQLiteStore(str(tmp_path / "s.sqlite3"))
    assert store.add(_item("kept"))
    entered, release = threading.Event(), threading.Event()

    def die(conn: Any) -> None:
        entered.set()
        release.wait(10)
        raise SystemExit

    monkeypatch.setattr(store, "_answer", lambda conn, fn, *rest: fn(conn))
    dying = asyncio.ensure_future(store._call(die))
    assert await asyncio.to_thread(entered.wait, 10)
    monkeypatch.undo()  # (the timeout too: the next reads have the real bound)
    monkeypatch.setattr(sqlite_store, "_CALL_TIMEOUT", 0.5)
    queued = asyncio.ensure_future(store.get("", "kept"))
    await asyncio.sleep(0)
    release.set()
    for call in (dying, queued):
        with pytest.raises(ProxyError) as info:
            await asyncio.wait_for(call, 10)
        assert (info.value.status, info.value.code) == (503, "service_unavailable")
    assert await asyncio.wait_for(store.get("", "kept"), 10) is not None
    await asyncio.wait_for(store.close(), 10)


async def test_a_write_locked_past_the_busy_timeout_is_tried_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process holding the write lock past SQLite's busy timeout (an operator's
    clean-up DELETE on a large file) cost the whole batch — up to 256 clients' completions —
    at the first "database is locked". The batch is tried again (bounded)."""
    import streamproxy.storage.sqlite as sqlite_store

    path = str(tmp_path / "s.sqlite3")
    monkeypatch.setattr(sqlite_store, "_BUSY_TIMEOUT", 0.05)
    store = SQLiteStore(path)
    await store.flush()
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    real_insert, locked = sqlite_store._insert_batch, []

    def insert_batch(conn: sqlite3.Connection, batch: list[StoredCompletion]) -> None:
        try:
            real_insert(conn, batch)
        except sqlite3.OperationalError as e:
            locked.append(str(e))
            other.execute("COMMIT")  # the other process's write ends after the busy timeout
            raise

    monkeypatch.setattr(sqlite_store, "_insert_batch", insert_batch)
    assert store.add(_item("kept"))
    await asyncio.wait_for(store.flush(), 10)
    assert locked == ["database is locked"]
    assert await asyncio.wait_for(store.get("", "kept"), 10) is not None
    await asyncio.wait_for(store.close(), 10)
    other.close()


async def test_writes_a_stuck_writer_leaves_at_shutdown_are_counted_in_a_log(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """close() waited a bounded time for the thread, then returned in silence: the process
    exited with completions still queued, lost without a word to the operator."""
    import streamproxy.storage.sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "_CLOSE_WAIT", 0.05)
    store = SQLiteStore(str(tmp_path / "s.sqlite3"))
    entered, release = threading.Event(), threading.Event()

    def block(conn: Any) -> None:  # a writer stuck (a disk that does not answer)
        entered.set()
        release.wait(10)

    busy = asyncio.ensure_future(store._call(block))
    assert await asyncio.to_thread(entered.wait, 10)
    assert store.add(_item("a")) and store.add(_item("b"))
    await asyncio.wait_for(store.close(), 10)
    lost = [r.getMessage() for r in caplog.records if "may be lost" in r.getMessage()]
    assert len(lost) == 1 and "2 stored completions" in lost[0], lost
    release.set()
    await asyncio.wait_for(busy, 10)


async def test_every_completion_a_failing_disk_lost_is_counted_in_a_log(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The once-a-minute error counted only the completions lost up to it: those lost after it
    were told at the next failure a minute on — never, when the disk came back (or no more
    came) before then. An operator read "could not store 1 completions" for many more."""
    import streamproxy.storage.sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "_LOG_EVERY", 0.05)
    store = SQLiteStore(str(tmp_path / "s.sqlite3"))
    await store.flush()
    real_insert, failures = sqlite_store._insert_batch, [sqlite3.OperationalError("disk I/O")] * 3

    def insert_batch(conn: sqlite3.Connection, batch: list[StoredCompletion]) -> None:
        if failures:
            raise failures.pop()
        real_insert(conn, batch)

    monkeypatch.setattr(sqlite_store, "_insert_batch", insert_batch)
    for i in range(3):
        assert store.add(_item(f"lost{i}"))
        store._send_batch()
    assert store.add(_item("kept"))
    await asyncio.wait_for(store.flush(), 10)

    def counted() -> int:
        return sum(int(r.getMessage().split()[3]) for r in caplog.records
                   if r.getMessage().startswith("could not store"))

    for _ in range(200):  # (bounded: the count is told within the log interval)
        if counted() == 3:
            break
        await asyncio.sleep(0.025)
    assert counted() == 3, [r.getMessage() for r in caplog.records]
    assert await asyncio.wait_for(store.get("", "kept"), 10) is not None
    await asyncio.wait_for(store.close(), 10)


async def test_every_stall_that_drops_completions_is_logged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Drops beyond max_pending were logged at the 1st and each 1000th only: a second stall
    (an hour later, 50 completions dropped) said nothing at all. Now once a log interval, with
    the count since the last; the request itself is never affected (add only returns False)."""
    import streamproxy.storage.sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "_LOG_EVERY", 0.0)  # every drop its own interval
    store = SQLiteStore(str(tmp_path / "s.sqlite3"), max_pending=1)
    busy, release = await _hold_the_writer(store)
    assert store.add(_item("kept"))
    assert store.add(_item("d1")) is False and store.add(_item("d2")) is False
    warnings = [r.getMessage() for r in caplog.records if "storage is behind" in r.getMessage()]
    assert len(warnings) == 2 and store.dropped == 2, warnings
    release.set()
    await asyncio.wait_for(busy, 10)
    await asyncio.wait_for(store.close(), 10)


def _lost_in_logs(caplog: pytest.LogCaptureFixture) -> int:
    """The completions the once-a-minute "could not store N completions" errors counted."""
    return sum(int(r.getMessage().split()[3]) for r in caplog.records
               if r.getMessage().startswith("could not store"))


async def _until_lost_logged(caplog: pytest.LogCaptureFixture, count: int) -> None:
    for _ in range(200):  # (bounded: the count is told within the log interval)
        if _lost_in_logs(caplog) >= count:
            break
        await asyncio.sleep(0.025)
    assert _lost_in_logs(caplog) == count, [r.getMessage() for r in caplog.records]


async def test_completions_lost_while_the_database_does_not_open_are_counted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A batch written while the file did not open (its directory gone, a permission) was
    dropped uncounted: the operator read "cannot open" once a minute, never how many
    completions were gone."""
    import streamproxy.storage.sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "_LOG_EVERY", 0.05)
    store = SQLiteStore(str(tmp_path / "missing-dir" / "s.sqlite3"))
    assert store.add(_item("a")) and store.add(_item("b"))
    store._send_batch()
    assert store.add(_item("c"))
    with pytest.raises(ProxyError):
        await asyncio.wait_for(store.flush(), 10)
    await _until_lost_logged(caplog, 3)
    await asyncio.wait_for(store.close(), 10)


async def test_an_update_or_delete_the_database_refuses_is_a_retryable_503(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A metadata update or a delete that SQLite refused (another process's write lock past
    the busy wait) was a 500 `storage_error` — the request's own failure, to the SDKs — where
    a read of a database that is down is a 503 `service_unavailable`. Both are now the 503,
    and the row is untouched."""
    import streamproxy.storage.sqlite as sqlite_store

    path = str(tmp_path / "s.sqlite3")
    monkeypatch.setattr(sqlite_store, "_BUSY_TIMEOUT", 0.05)
    store = SQLiteStore(path)
    assert store.add(_item("kept", tag="a"))
    await asyncio.wait_for(store.flush(), 10)
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    for call in (store.update_metadata("", "kept", {"tag": "b"}), store.delete("", "kept")):
        with pytest.raises(ProxyError) as info:
            await asyncio.wait_for(call, 10)
        assert (info.value.status, info.value.error_type, info.value.code) == (
            503, "api_error", "service_unavailable")
        assert "locked" in info.value.message
    other.execute("COMMIT")
    other.close()
    item = await asyncio.wait_for(store.get("", "kept"), 10)
    assert item is not None and item.metadata == {"tag": "a"}
    await asyncio.wait_for(store.close(), 10)


async def test_a_row_sqlite_refuses_loses_only_itself_not_its_batch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A batch is one transaction: one completion SQLite would not take (a `created` past 64
    bits: OverflowError; a lone surrogate: UnicodeEncodeError) failed it, and every other
    completion written with it — up to 255 other clients' — was lost too. The batch is now
    written row by row after such a failure: only the bad rows are lost, and counted."""
    import streamproxy.storage.sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "_LOG_EVERY", 0.05)
    store = SQLiteStore(str(tmp_path / "s.sqlite3"))
    await asyncio.wait_for(store.flush(), 10)
    too_big, unencodable = _item("too-big"), _item("unencodable")
    too_big.created = 2**70
    unencodable.request_model = "mock/\udcff"
    for item in (_item("a"), too_big, _item("b"), unencodable, _item("c")):
        assert store.add(item)  # (one batch: nothing sent in between)
    await asyncio.wait_for(store.flush(), 10)
    for cid in ("a", "b", "c"):
        assert await asyncio.wait_for(store.get("", cid), 10) is not None, cid
    for cid in ("too-big", "unencodable"):
        assert await asyncio.wait_for(store.get("", cid), 10) is None, cid
    await _until_lost_logged(caplog, 2)
    await asyncio.wait_for(store.close(), 10)


async def test_a_completion_added_after_close_starts_no_writer_and_is_counted(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A completion whose request ended after close() (a stream still running at shutdown or
    a reload) started a new writer thread that nothing would stop: a thread and an open
    database left behind by each such store. It is now refused, and counted in a warning."""
    store = SQLiteStore(str(tmp_path / "s.sqlite3"))
    assert store.add(_item("kept"))
    await asyncio.wait_for(store.close(), 10)
    assert store.add(_item("late")) is False
    store._send_batch()  # (what the batch timer would do)
    with pytest.raises(ProxyError) as info:  # (a read, likewise: a 503, no thread)
        await asyncio.wait_for(store.get("", "kept"), 10)
    assert (info.value.status, info.value.code) == (503, "service_unavailable")
    assert store._thread is None and store.dropped == 1
    assert any("storage is closed" in r.getMessage() for r in caplog.records)
    reopened = SQLiteStore(str(tmp_path / "s.sqlite3"))
    assert await asyncio.wait_for(reopened.get("", "kept"), 10) is not None
    assert await asyncio.wait_for(reopened.get("", "late"), 10) is None
    await asyncio.wait_for(reopened.close(), 10)


# A Gemini-compatible answer that reports no usage (translated), streamed and not.
_GEMINI_HI = {"candidates": [{"index": 0, "finishReason": "STOP", "content": {
    "role": "model", "parts": [{"text": "Hi"}]}}]}


@pytest.mark.parametrize("cache", [False, True])
async def test_a_translated_answer_without_usage_is_stored_with_zeros_streamed_or_not(
        proxy: Any, upstream: Any, tmp_path: Path, cache: bool) -> None:
    """The client of a translated answer whose provider reported no usage gets zeros (the
    executor's fill; OpenAI's completion always has usage): the one stored from a non-streamed
    answer had them, the one stored from a stream (or from a streamed cache hit) had no `usage`
    — `retrieve(...).usage.total_tokens` failed for one and not the other."""
    api = openai_sdk(await proxy(make_config(
        {"gem": {"type": "gemini", "base_url": upstream.url, "api_key": "k",
                 "default_model": "gemini-x"}}, default="gem",
        storage={"path": str(tmp_path / "s.sqlite3")})), "sk-client")
    cached_too = {"x-portkey-config": '{"cache": {"mode": "simple"}}'} if cache else None
    upstream.content_type, upstream.body = "application/json", orjson.dumps(_GEMINI_HI)
    whole = await api.chat.completions.create(model="gem/gemini-x", messages=USER, store=True)
    assert whole.usage is not None and whole.usage.total_tokens == 0
    upstream.content_type = "text/event-stream"
    upstream.body = b"data: " + orjson.dumps(_GEMINI_HI) + b"\r\n\r\n"
    ids = []
    for _ in range(2 if cache else 1):  # (with a cache: the fill, then the hit)
        cid, text = await stream_text(api, model="gem/gemini-x", messages=USER, store=True,
                                      stream_options={"include_usage": True},
                                      extra_headers=cached_too)
        assert text == "Hi"
        ids.append(cid)
    for cid in (whole.id, *ids):
        got = await stored(api, cid)
        assert got.choices[0].message.content == "Hi"
        assert got.usage is not None
        assert (got.usage.prompt_tokens, got.usage.completion_tokens,
                got.usage.total_tokens) == (0, 0, 0)


async def test_a_pass_through_stream_without_usage_is_stored_as_it_came(
        proxy: Any, upstream: Any, tmp_path: Path) -> None:
    # (forwarded as it came, streamed or not: no zeros its upstream never sent)
    api = await _pass_through_api(proxy, upstream, tmp_path)
    upstream.body = _pass_through_stream({"role": "assistant", "content": "Hi"})
    cid, _ = await stream_text(api, model="oa/gpt", messages=USER, store=True)
    got = await stored(api, cid)
    assert got.choices[0].message.content == "Hi" and got.usage is None


async def test_the_zero_usage_chunk_a_pass_through_client_asked_for_is_not_stored(
        proxy: Any, upstream: Any, tmp_path: Path) -> None:
    # (the client's, in the stream's one id; the stored answer stays as the upstream gave it)
    api = await _pass_through_api(proxy, upstream, tmp_path)
    upstream.body = _pass_through_stream({"role": "assistant", "content": "Hi"})
    cid, _ = await stream_text(api, model="oa/gpt", messages=USER, store=True,
                               stream_options={"include_usage": True})
    got = await stored(api, cid)
    assert got.choices[0].message.content == "Hi" and got.usage is None


async def test_a_damaged_database_is_a_retryable_503_with_a_clear_log(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A database whose pages are garbage (a bad disk, a copy cut short) opens — its first
    page is intact — then fails each query with "database disk image is malformed", a
    `sqlite3.DatabaseError` that is not an OperationalError: every read, update and delete
    was a 500 `storage_error` with a traceback, where a database that does not open (or is
    locked) is the 503 of a backend that is down."""
    path = tmp_path / "s.sqlite3"
    store = SQLiteStore(str(path))
    for i in range(20):
        assert store.add(_item(f"c{i}", note="x" * 400))
    await asyncio.wait_for(store.flush(), 10)
    await asyncio.wait_for(store.close(), 10)  # (checkpointed: the rows are in the file)
    with path.open("r+b") as f:  # every page but the first (the schema)
        f.seek(4096)
        f.write(b"\xde\xad" * ((path.stat().st_size - 4096) // 2))
    store = SQLiteStore(str(path))
    caplog.set_level("WARNING", logger="streamproxy.storage")
    for call in (store.get("", "c1"), store.list("", ListQuery()),
                 store.update_metadata("", "c1", {"k": "v"}), store.delete("", "c1")):
        with pytest.raises(ProxyError) as info:
            await asyncio.wait_for(call, 10)
        assert (info.value.status, info.value.error_type, info.value.code) == (
            503, "api_error", "service_unavailable")
        assert "malformed" in info.value.message
    told = [r for r in caplog.records if r.name == "streamproxy.storage"]
    assert told and all(r.exc_info is None for r in told)  # said, not a traceback each
    assert str(path) in told[0].getMessage() and "malformed" in told[0].getMessage()
    await asyncio.wait_for(store.close(), 10)


@pytest.mark.parametrize("raw", ["1_0", " 5", "5 ", "+5", "٣", "5.0", "0x5", ""])
def test_a_list_limit_other_than_ascii_digits_is_a_400_naming_limit(raw: str) -> None:
    """OpenAI answers 400 to `limit=1_0`; Python's int() read it (and `+5`, ` 5`, Arabic-Indic
    digits) as a page size the client never wrote."""
    with pytest.raises(ProxyError) as err:
        parse_page({"limit": raw})
    assert err.value.status == 400 and err.value.param == "limit"


def test_a_list_limit_of_ascii_digits_is_read() -> None:
    assert parse_page({"limit": "7"})[1] == 7
    assert parse_page({"limit": "007"})[1] == 7
    assert parse_page({})[1] == 20


@pytest.mark.parametrize("stream", [False, True])
async def test_a_completion_a_fallback_answered_is_listed_under_each_model(
        proxy: Any, upstream: Any, tmp_path: Path, stream: bool) -> None:
    # README: listed under the model the client asked for and the one that answered, each by
    # any name a request gives it. A fallback's answer was found by its bare `claude-x` but
    # not by `claude/claude-x`, the name the client gave it in fallback_models (under which
    # the same answer, asked for directly, is listed).
    api = openai_sdk(await proxy(config(tmp_path, upstream.url)), "sk-client")
    if stream:
        upstream.body = ANTHROPIC_TEXT
    else:
        upstream.content_type, upstream.body = "application/json", ANTHROPIC_MESSAGE
    kw: dict[str, Any] = {"model": "mock/fast:status=503", "messages": USER, "store": True,
                          "extra_body": {"fallback_models": ["claude/claude-x"]}}
    cid = (await stream_text(api, **kw))[0] if stream else (
        await api.chat.completions.create(**kw)).id
    await stored(api, cid)
    for name in ("claude/claude-x", "@claude/claude-x", "mock/fast:status=503"):
        assert [x.id for x in (await api.chat.completions.list(model=name)).data] == [cid]
    assert (await api.chat.completions.list(model="mock-openai/claude-x")).data == []


async def test_a_database_made_before_answered_model_is_read_and_written(tmp_path: Path) -> None:
    # CREATE TABLE IF NOT EXISTS keeps an older table as it was: its rows are read, and new
    # ones (with the answering target's name) written, once the column is added.
    path = str(tmp_path / "old.sqlite3")
    old = sqlite3.connect(path)
    old.executescript("""CREATE TABLE stored_completions (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, owner TEXT NOT NULL, id TEXT NOT NULL,
        created INTEGER NOT NULL, model TEXT NOT NULL, request_model TEXT,
        metadata TEXT NOT NULL, request TEXT NOT NULL, response TEXT NOT NULL,
        UNIQUE (owner, id));
        INSERT INTO stored_completions (owner, id, created, model, request_model, metadata,
            request, response) VALUES ('', 'c0', 1, 'm', 'p/m', '{}', '{}', '{"id": "c0"}');""")
    old.close()
    store = SQLiteStore(path)
    new = _item("c1")
    new.answered_model = "q/m"
    assert store.add(new)
    await store.flush()
    assert (await store.get("", "c0")).answered_model is None
    items, _ = await store.list("", ListQuery(model="q/m", model_names=("q/m",)))
    assert [i.id for i in items] == ["c1"]
    await store.close()


async def test_a_pass_through_answer_with_an_odd_created_is_stored_with_ours(
        proxy: Any, upstream: Any, tmp_path: Path) -> None:
    # `"created": 1e400` (read as inf) made `int()` raise on the store path: the client had its
    # 200, the completion was never stored, and an error was logged. Its row takes ours.
    upstream.content_type = "application/json"
    upstream.body = (b'{"id":"x","object":"chat.completion","created":1e400,"model":"gpt",'
                     b'"choices":[{"index":0,"finish_reason":"stop","message":{'
                     b'"role":"assistant","content":"Hi"}}]}')
    api = await _pass_through_api(proxy, upstream, tmp_path)
    before = int(time.time())
    whole = await api.chat.completions.create(model="gpt", messages=USER, store=True)
    after = time.time()
    got = await stored(api, whole.id)
    assert got.choices[0].message.content == "Hi"
    [(created,)] = sqlite3.connect(tmp_path / "s.sqlite3").execute(
        "SELECT created FROM stored_completions").fetchall()
    assert before <= created <= after  # ours: when the request was sent


async def test_a_pass_through_answer_too_deep_to_encode_is_answered_with_store(
        proxy: Any, upstream: Any, tmp_path: Path) -> None:
    # A field nested 300 deep (orjson reads 1024 levels, writes 254): the captured answer's
    # re-encoding under our id raised, and `store: true` turned the upstream's 200 into a 500.
    # The client now gets the answer as it came; it is not stored (no row could hold it).
    upstream.content_type = "application/json"
    upstream.body = (b'{"id":"x","object":"chat.completion","created":1,"model":"gpt",'
                     b'"choices":[{"index":0,"finish_reason":"stop","message":{'
                     b'"role":"assistant","content":"Hi"}}],"deep":' + b"[" * 300
                     + b"]" * 300 + b"}")
    api = await _pass_through_api(proxy, upstream, tmp_path)
    whole = await api.chat.completions.with_raw_response.create(model="gpt", messages=USER,
                                                                store=True)
    assert whole.http_response.content == upstream.body
    assert whole.parse().choices[0].message.content == "Hi"


def test_an_inline_configs_api_key_is_one_owner_with_or_without_the_spaces_routing_strips(
        ) -> None:
    # The config sends `api_key` upstream stripped (a pasted key's space, a file's line end):
    # the owner is that key's, as the provider sees it, not one per spelling.
    def owner(key: str) -> str:
        return credential_owner({"x-portkey-config": orjson.dumps(
            {"provider": "openai", "api_key": key}).decode()})

    assert owner(" sk-abc\n") == owner("sk-abc") == owner("sk-abc\t") != ""
    assert owner("sk-abd") != owner("sk-abc")


def test_force_store_leaves_the_metadata_of_a_request_that_did_not_ask_to_be_stored() -> None:
    # The operator's force_store must not change what a client that never sent `store: true`
    # gets: its metadata (Bedrock's requestMetadata takes 17 keys' first 16, skips a number)
    # is forwarded as without it, never a 400 for OpenAI's limits; stored only when it keeps
    # to them.
    service = StoredCompletions(StorageConfig(path=":memory:", force_store=True),
                                store=_NoStore())
    many = {f"k{i}": "v" for i in range(17)}
    for metadata, kept in (({"n": 1}, {}), (many, {}), ({"team": "a"}, {"team": "a"})):
        for extra in ({}, {"store": False}):
            req = parse_chat_request(orjson.dumps(
                {"model": "m", "messages": USER, "metadata": metadata, **extra}))
            record = RequestRecord("t")
            service.before_upstream(_Request(), req, record)  # type: ignore[arg-type]
            assert req.body["metadata"] == metadata and "store" not in req.body
            assert record.capture and record.pending is not None
            assert record.pending["store"].metadata == kept
    # Asked for, the metadata is the proxy's: checked, and not forwarded.
    req = parse_chat_request(orjson.dumps({"model": "m", "messages": USER, "store": True,
                                           "metadata": {"n": 1}}))
    with pytest.raises(ProxyError):
        service.before_upstream(_Request(), req, RequestRecord("t"))  # type: ignore[arg-type]


async def test_a_retrieved_completion_names_the_tier_that_served_it_not_the_one_asked(
        proxy: Any, tmp_path: Path) -> None:
    # `service_tier` on a chat.completion is the tier that served it: a translated answer
    # names none (the provider told none), and retrieved it is the answer the client got.
    api = openai_sdk(await proxy(config(tmp_path)), "sk-client")
    done = await api.chat.completions.create(model="mock/fast:tokens=2", messages=USER,
                                             store=True, service_tier="flex")
    got = await stored(api, done.id)
    assert done.service_tier is None
    assert got.service_tier is None
    item = StoredCompletion("c", "", 1, "m", None, {}, {"service_tier": "auto",
                                                        "temperature": 0.5},
                            {"id": "c", "service_tier": "default"})
    assert completion_object(item)["service_tier"] == "default"
    item.response = {"id": "c"}
    out = completion_object(item)
    assert "service_tier" not in out and out["temperature"] == 0.5


def _typed_parts_stream() -> bytes:
    """A Mistral reasoning model's stream: content as typed parts, its thinking in pieces."""
    def think(text: str) -> dict[str, Any]:
        return {"type": "thinking", "thinking": [{"type": "text", "text": text}]}

    return _pass_through_stream({"role": "assistant", "content": [think("Two plus")]},
                                {"content": [think(" two.")]},
                                {"content": [{"type": "text", "text": "It is "}]},
                                {"content": [{"type": "text", "text": "4"}]})


def test_a_typed_parts_stream_is_captured_with_its_parts_joined() -> None:
    builder = CompletionBuilder()
    for data in _typed_parts_stream().split(b"\n\n"):
        if data.startswith(b"data: {"):
            builder.raw_chunk(data[6:])
    builder.end()
    got = builder.completion(completion_id="c", created=1, model="m")
    assert got["choices"][0]["message"]["content"] == [
        {"type": "thinking", "thinking": [{"type": "text", "text": "Two plus two."}]},
        {"type": "text", "text": "It is 4"}]
    # A plain string among the parts continues their text, as the client joined it.
    builder.raw_chunk(orjson.dumps({"choices": [{"index": 0, "delta": {"content": "!"}}]}))
    assert builder.message()["content"][1] == {"type": "text", "text": "It is 4!"}


async def test_a_streamed_answer_of_typed_parts_is_stored_with_its_thinking(
        proxy: Any, upstream: Any, tmp_path: Path) -> None:
    # As Mistral's whole answer has it (a list of parts, its thinking first): stored as the
    # text alone, the thinking the client read was lost from the stored completion.
    upstream.body = _typed_parts_stream()
    api = await _pass_through_api(proxy, upstream, tmp_path)
    stream = await api.chat.completions.create(model="gpt", messages=USER, store=True,
                                               stream=True)
    cid = ""
    async for chunk in stream:
        cid = chunk.id
    got = await stored(api, cid)
    assert got.choices[0].message.content == [
        {"type": "thinking", "thinking": [{"type": "text", "text": "Two plus two."}]},
        {"type": "text", "text": "It is 4"}]
