"""An upstream's odd answer on the store path (storage/service.py `_stored`): a pass-through
answer is the upstream's, its `created`, `model`, `id` and `usage` of any JSON type. None of
them may raise there (the client had its 200, and the completion was silently not stored); the
row's columns take the proxy's own values where the upstream's cannot be stored."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streamproxy._json import loads_lenient
from streamproxy.record import RequestRecord
from streamproxy.storage.base import StoredCompletion
from streamproxy.storage.config import StorageConfig
from streamproxy.storage.service import StoredCompletions, StoreTicket
from streamproxy.storage.sqlite import _row

OURS = 1_700_000_123  # the proxy's `created`: when it sent the request


class _Kept:
    def __init__(self) -> None:
        self.items: list[StoredCompletion] = []

    def add(self, item: StoredCompletion) -> bool:
        self.items.append(item)
        return True


def _store(body: bytes) -> tuple[StoredCompletion | None, dict[str, Any]]:
    kept = _Kept()
    service = StoredCompletions(StorageConfig(path=":memory:"), store=kept)  # type: ignore[arg-type]
    record = RequestRecord("t", provider="oa", passthrough=True, model="gpt")
    record.created = OURS
    record.response = loads_lenient(body)  # as the executor parses a pass-through body
    record.pending = {"store": StoreTicket("", {"model": "gpt", "messages": []}, {}, "gpt")}
    service.observe(record)
    assert len(kept.items) <= 1
    return (kept.items[0] if kept.items else None), record.response


def _answer(**fields: bytes) -> bytes:
    given = {"id": b'"chatcmpl-1"', "created": b"1700000000", "model": b'"gpt"',
             "usage": b'{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}', **fields}
    return (b'{"object":"chat.completion",' + b",".join(
        b'"' + k.encode() + b'":' + v for k, v in given.items())
        + b',"choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},'
        b'"finish_reason":"stop"}]}')


@pytest.mark.parametrize("created", [b"1e400", b"-1e400", b'"1700000000"', b'"soon"',
                                     b"1700000000.5", b"null", b"true", b"[]", b"{}",
                                     b"18446744073709551615"])
def test_an_odd_created_is_stored_with_ours(created: bytes) -> None:
    # `int(answer["created"])` raised on 1e400 (inf) and "soon", made 0 of null and 1 of true,
    # and let 2**64-1 through to SQLite, which refused the row: each completion not stored.
    item, answer = _store(_answer(created=created))
    assert item is not None and item.created == OURS
    assert item.response is answer  # the answer itself is kept as the client got it


def test_a_valid_created_is_the_upstreams() -> None:
    item, _ = _store(_answer(created=b"1700000000"))
    assert item is not None and item.created == 1_700_000_000


@pytest.mark.parametrize("model", [b"1e400", b"7", b'{"name":"gpt"}', b'["gpt"]', b"true",
                                   b"null", b'""'])
def test_an_odd_model_is_stored_under_the_routed_one(model: bytes) -> None:
    # str() of the upstream's model made the row's `model` (which the list's `model` filter
    # matches) "inf", "{'name': 'gpt'}" or "True": the model the request was routed to now.
    item, answer = _store(_answer(model=model))
    assert item is not None and item.model == "gpt"
    assert item.response is answer


@pytest.mark.parametrize("usage", [b"1e400", b'"many"', b"[1,2]", b"7", b"true",
                                   b'{"prompt_tokens":1e400,"completion_tokens":"2",'
                                   b'"total_tokens":null}',
                                   b'{"prompt_tokens":{"n":1},"completion_tokens":[],'
                                   b'"total_tokens":-1e400}'])
def test_odd_usage_counts_are_stored_as_they_came(usage: bytes) -> None:
    item, answer = _store(_answer(usage=usage))
    assert item is not None and item.response is answer
    assert _row(item)[7] == orjson.dumps(answer).decode()  # a row SQLite takes

