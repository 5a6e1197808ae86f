"""JSON and text edge cases end to end: request bodies that are valid but unusual, provider
answers cut anywhere, and the SSE frames written back."""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from streamproxy.openai_api.request import parse_chat_request
from tests.conftest import provider_config
from tests.helpers import fixture_bytes, jsonl_to_sse

# Text with UTF-16 halves in it, alone or paired, as a JavaScript string cut at a code unit has.
_HALVES = st.sampled_from(["\ud83d", "\ude00", "\udbff", "\udc00", "\ud800", "\udfff"])
_TEXT = st.lists(_HALVES | st.sampled_from(["\\", "\\u", "ud800", "é", "😀", '"', "a"]),
                 max_size=8).map("".join)


def _as_a_server_reads_it(text: str) -> str:
    """Pairs joined, each half alone replaced by U+FFFD (as a UTF-16 decoder does)."""
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


@given(_TEXT)
def test_a_lone_surrogate_escape_is_read_as_u_fffd(text: str) -> None:
    """JSON.stringify (openai-node, the Vercel AI SDK) and Python's json.dumps write a lone
    UTF-16 half as a `\\ud83d` escape, valid JSON that OpenAI accepts; orjson refuses it."""
    raw = json.dumps({"model": "m", "messages": [{"role": "user", "content": text}]}).encode()
    req = parse_chat_request(raw)
    assert req.body["messages"][0]["content"] == _as_a_server_reads_it(text)
    assert orjson.loads(req.raw) == req.body  # what is forwarded says the same


async def test_a_lone_surrogate_reaches_a_translated_provider(proxy: Any, upstream: Any) -> None:
    upstream.body = jsonl_to_sse(fixture_bytes("anthropic/vercel-ai_anthropic-text.chunks.jsonl"))
    client = await proxy(provider_config("anthropic", upstream.url))
    resp = await client.post("/v1/chat/completions", data=(
        b'{"model": "m", "stream": true, "messages": [{"role": "user", "content": '
        b'"cut \\ud83d"}]}'), headers={"content-type": "application/json"})
    assert resp.status == 200, await resp.text()
    [sent] = upstream.requests
    assert sent.json()["messages"][0]["content"] in ("cut \ufffd",
                                                     [{"type": "text", "text": "cut \ufffd"}])
