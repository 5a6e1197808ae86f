"""Gemini's `citationMetadata` reaches the client as OpenAI's `url_citation` annotations —
`message.annotations` whole, `delta.annotations` streamed — each source once, in both of the
list's names (Vertex's `citations`, the Gemini API reference's `citationSources`)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.conftest import provider_config
from tests.helpers import openai_sdk, unnumbered

USER = [{"role": "user", "content": "Write the quicksort of the textbook."}]
SOURCE = {"startIndex": 12, "endIndex": 240, "uri": "https://github.com/ex/sort",
          "license": "mit"}
BOOK = {"startIndex": 3, "endIndex": 40, "title": "Algorithms"}  # no uri: no url_citation
CITATION = {"type": "url_citation", "url_citation": {
    "url": "https://github.com/ex/sort", "title": "", "start_index": 12, "end_index": 240}}
USAGE = {"promptTokenCount": 8, "candidatesTokenCount": 60, "totalTokenCount": 68}


def chunk(text: str, *, key: str = "citations", cited: bool = False,
          finish: str | None = None) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}}
    if cited:  # Gemini repeats the sources on the chunks after the cited text
        candidate["citationMetadata"] = {key: [SOURCE, BOOK]}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], "usageMetadata": USAGE}


def google_sse(chunks: list[dict[str, Any]]) -> bytes:
    return b"".join(b"data: " + orjson.dumps(c) + b"\r\n\r\n" for c in chunks)


@pytest.mark.parametrize("key", ["citations", "citationSources"])
async def test_the_sdk_streams_each_citation_once(proxy: Any, upstream: Any, key: str) -> None:
    upstream.body = google_sse([chunk("def quicksort"), chunk("(a):", key=key, cited=True),
                                chunk(" ...", key=key, cited=True, finish="STOP")])
    api = openai_sdk(await proxy(provider_config("gemini", upstream.url)))
    async with api:
        stream = await api.chat.completions.create(model="gemini-2.5-flash", messages=USER,
                                                   stream=True)
        text, annotations, finish = "", [], None
        async for part in stream:
            delta = part.choices[0].delta
            text += delta.content or ""
            annotations += (delta.model_extra or {}).get("annotations") or []
            finish = part.choices[0].finish_reason or finish
    assert (text, unnumbered(annotations), finish) == ("def quicksort(a): ...", [CITATION],
                                                    "stop")


async def test_the_sdk_reads_the_citations_of_a_non_streamed_answer(proxy: Any,
                                                                    upstream: Any) -> None:
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps(chunk("def quicksort(a): ...", cited=True, finish="STOP"))
    api = openai_sdk(await proxy(provider_config("vertex", upstream.url, project="p",
                                                 location="global")))
    async with api:
        resp = await api.chat.completions.create(model="gemini-2.5-flash", messages=USER)
    message = resp.choices[0].message
    assert message.content == "def quicksort(a): ..."
    assert [a.model_dump() for a in message.annotations or []] == [CITATION]


async def test_an_answer_without_sources_has_no_annotations(proxy: Any, upstream: Any) -> None:
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps(chunk("Hi", finish="STOP"))
    client = await proxy(provider_config("gemini", upstream.url))
    resp = await client.post("/v1/chat/completions", json={"model": "gemini-2.5-flash",
                                                            "messages": USER})
    assert "annotations" not in (await resp.json())["choices"][0]["message"]
