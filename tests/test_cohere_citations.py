"""Cohere's RAG citations (a client's `documents`, or its tools' outputs) reach the client as
OpenAI's `url_citation` annotations when their source carries a `url`: `delta.annotations`
streamed at each `citation-start`, `message.annotations` whole. A source without one (Cohere's
own examples: a title and a snippet) has no OpenAI place and is left out, as are citations of
the tool plan or of thinking, whose offsets are not into `content`.

The stream is the one Cohere's "RAG Streaming" and "RAG Citations" guides show (v2: the penguin
documents, `citation-start` carrying one citation object, `citation-end`), with a `url` in the
client's document data, which Cohere echoes in the source's `document`."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from streamproxy.openai_api.chunks import ChunkEncoder
from streamproxy.providers.cohere.response import to_completion
from streamproxy.providers.cohere.stream import CohereStreamTranslator
from tests.conftest import provider_config
from tests.helpers import (
    collect,
    jsonl_to_sse,
    openai_sdk,
    random_splits,
    sse_chunks,
    unnumbered,
)

TEXT = "The tallest penguins are the Emperor penguins. They only live in Antarctica."
TALL = {"id": "doc:0", "title": "Tall penguins", "snippet": "Emperor penguins are the tallest.",
        "url": "https://example.org/tall"}
HABITATS = {"id": "doc:1", "snippet": "Emperor penguins only live in Antarctica.",
            "url": "https://example.org/habitats"}  # no title: ""
BOOK = {"id": "doc:2", "title": "Penguins of the world", "snippet": "…"}  # no url: left out


def citation(start: int, end: int, *docs: dict[str, Any], kind: str = "TEXT_CONTENT",
             tool: bool = False) -> dict[str, Any]:
    source = "tool_output" if tool else "document"
    return {"start": start, "end": end, "text": TEXT[start:end], "type": kind,
            "sources": [{"type": "tool" if tool else "document", "id": d["id"], source: d}
                        for d in docs]}


CITATIONS = [citation(29, 46, TALL, BOOK), citation(65, 76, HABITATS),
             citation(0, 4, TALL, kind="PLAN"), citation(5, 12, TALL, tool=True)]
ANNOTATIONS = [
    {"type": "url_citation", "url_citation": {"url": "https://example.org/tall",
                                              "title": "Tall penguins",
                                              "start_index": 29, "end_index": 46}},
    {"type": "url_citation", "url_citation": {"url": "https://example.org/habitats",
                                              "title": "", "start_index": 65,
                                              "end_index": 76}},
    {"type": "url_citation", "url_citation": {"url": "https://example.org/tall",
                                              "title": "Tall penguins",
                                              "start_index": 5, "end_index": 12}},
]
USAGE = {"billed_units": {"input_tokens": 20, "output_tokens": 16},
         "tokens": {"input_tokens": 900, "output_tokens": 16}}


def rag_stream() -> bytes:
    events: list[dict[str, Any]] = [
        {"id": "d93f", "type": "message-start", "delta": {"message": {
            "role": "assistant", "content": [], "tool_plan": "", "tool_calls": [],
            "citations": []}}},
        {"type": "content-start", "index": 0,
         "delta": {"message": {"content": {"text": "", "type": "text"}}}}]
    events += [{"type": "content-delta", "index": 0,
                "delta": {"message": {"content": {"text": TEXT[i : i + 9]}}}}
               for i in range(0, len(TEXT), 9)]
    for i, cited in enumerate(CITATIONS):
        events.append({"type": "citation-start", "index": i,
                       "delta": {"message": {"citations": cited}}})
        events.append({"type": "citation-end", "index": i})
    events += [{"type": "content-end", "index": 0},
               {"type": "message-end", "delta": {"finish_reason": "COMPLETE", "usage": USAGE}}]
    return jsonl_to_sse(b"\n".join(orjson.dumps(e) for e in events))


RAG_SSE = rag_stream()


def translate(pieces: list[bytes]) -> list[Any]:
    enc = ChunkEncoder(completion_id="chatcmpl-t", created=1, model="m", include_usage=True)
    tr = CohereStreamTranslator(enc, 1 << 20)
    out = b""
    for piece in pieces:
        tr.feed(piece)
        out += enc.take()
    tr.close()
    return sse_chunks(out + enc.take())


def streamed_annotations(chunks: list[Any]) -> list[Any]:
    return unnumbered([a for c in chunks if c != "[DONE]" and c["choices"]
                       for a in c["choices"][0]["delta"].get("annotations") or ()])


def test_citations_stream_as_url_citations_at_random_splits() -> None:
    rng = random.Random(144)
    for pieces in [[RAG_SSE]] + [random_splits(RAG_SSE, rng, rng.choice([1, 7, 80]))
                                 for _ in range(40)]:
        chunks = translate(pieces)
        c = collect(chunks)
        assert (c.content, c.finish_reason, c.done) == (TEXT, "stop", True)
        assert streamed_annotations(chunks) == ANNOTATIONS


def test_two_sources_with_one_url_make_one_annotation() -> None:
    twice = citation(29, 46, TALL, {**TALL, "id": "doc:3"})  # the same page given twice
    body = jsonl_to_sse(orjson.dumps({"type": "citation-start", "index": 0,
                                      "delta": {"message": {"citations": twice}}}))
    tail = RAG_SSE[RAG_SSE.index(b"event: content-end"):]
    assert streamed_annotations(translate([RAG_SSE[: RAG_SSE.index(b"event: citation-start")],
                                           body, tail])) == ANNOTATIONS[:1]


def test_a_non_streamed_answer_has_its_citations_in_message_annotations() -> None:
    body = orjson.dumps({"id": "d93f", "finish_reason": "COMPLETE", "usage": USAGE,
                         "message": {"role": "assistant",
                                     "content": [{"type": "text", "text": TEXT}],
                                     "citations": CITATIONS}})
    resp = to_completion(body, completion_id="c", created=1, model="m", provider="cohere")
    message = resp["choices"][0]["message"]
    assert (message["content"], message["annotations"]) == (TEXT, ANNOTATIONS)


def test_an_answer_citing_no_url_has_no_annotations() -> None:
    body = orjson.dumps({"finish_reason": "COMPLETE", "message": {
        "role": "assistant", "content": [{"type": "text", "text": TEXT}],
        "citations": [citation(29, 46, BOOK)]}})
    resp = to_completion(body, completion_id="c", created=1, model="m", provider="cohere")
    assert "annotations" not in resp["choices"][0]["message"]


@pytest.mark.parametrize("stream", [True, False])
async def test_the_sdk_reads_the_annotations(proxy: Any, upstream: Any, stream: bool) -> None:
    if stream:
        upstream.pieces = random_splits(RAG_SSE, random.Random(7), max_piece=50)
    else:
        upstream.content_type = "application/json"
        upstream.body = orjson.dumps({"finish_reason": "COMPLETE", "message": {
            "role": "assistant", "content": [{"type": "text", "text": TEXT}],
            "citations": CITATIONS}})
    api = openai_sdk(await proxy(provider_config("cohere", upstream.url)))
    documents = [{"data": {k: v for k, v in d.items() if k != "id"}}
                 for d in (TALL, HABITATS, BOOK)]
    async with api:
        kwargs: dict[str, Any] = {"model": "command-a-03-2025", "extra_body": {
            "documents": documents},
            "messages": [{"role": "user", "content": "Where do the tallest penguins live?"}]}
        if stream:
            text, annotations = "", []
            async for part in await api.chat.completions.create(stream=True, **kwargs):
                delta = part.choices[0].delta
                text += delta.content or ""
                annotations += (delta.model_extra or {}).get("annotations") or []
            annotations = unnumbered(annotations)
        else:
            message = (await api.chat.completions.create(**kwargs)).choices[0].message
            text = message.content or ""
            annotations = [a.model_dump() for a in message.annotations or []]
    assert (text, annotations) == (TEXT, ANNOTATIONS)
    assert orjson.loads(upstream.requests[-1].body)["documents"] == documents
