"""Google Search grounding on Gemini and Vertex, as clients ask for it: `web_search_options`
(LiteLLM's mapping) and a function tool named `google_search` / `googleSearch` (Portkey's) go
as Gemini's `googleSearch` tool, and the answer's `groundingMetadata` reaches the client as
OpenAI's `url_citation` annotations, each once, streamed or not."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from streamproxy.openai_api.chunks import ChunkEncoder
from streamproxy.providers.gemini.response import to_completion
from streamproxy.providers.gemini.stream import GeminiStreamTranslator
from tests.conftest import provider_config
from tests.helpers import openai_sdk, random_splits, relay_pieces, sse_chunks, unnumbered
from tests.test_gemini import FINISH, google_sse, text_chunk, translate, translate_counting

USER = [{"role": "user", "content": "Who won the euro 2024?"}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {}}}}
DECLARED = {"functionDeclarations": [{"name": "get_weather", "parametersJsonSchema": {
    "type": "object", "properties": {}}}]}


def sent_tools(upstream: Any) -> dict[str, Any]:
    [sent] = upstream.requests
    body = sent.json()
    return {key: body[key] for key in ("tools", "toolConfig") if key in body}


@pytest.mark.parametrize("kind", ["gemini", "vertex"])
@pytest.mark.parametrize(("extra", "expected"), [
    ({"web_search_options": {}}, {"tools": [{"googleSearch": {}}]}),
    # Google takes neither of OpenAI's search settings: the search is asked for all the same.
    ({"web_search_options": {"search_context_size": "high", "user_location": {
        "type": "approximate", "approximate": {"country": "ES"}}}},
     {"tools": [{"googleSearch": {}}]}),
    ({"tools": [{"type": "function", "function": {"name": "google_search"}}]},
     {"tools": [{"googleSearch": {}}]}),
    ({"tools": [{"type": "function", "function": {"name": "googleSearch", "parameters": {
        "timeRangeFilter": {"startTime": "2024-06-01T00:00:00Z",
                            "endTime": "2024-07-31T00:00:00Z"}}}}]},
     {"tools": [{"googleSearch": {"timeRangeFilter": {
         "startTime": "2024-06-01T00:00:00Z", "endTime": "2024-07-31T00:00:00Z"}}}]}),
    # Beside functions: the function calling config rules the functions alone.
    ({"tools": [WEATHER, {"type": "function", "function": {"name": "google_search"}}],
      "tool_choice": "auto"},
     {"tools": [DECLARED, {"googleSearch": {}}],
      "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}}}),
    ({"tools": [WEATHER], "web_search_options": {}},
     {"tools": [DECLARED, {"googleSearch": {}}]}),
    # Both forms at once: one search tool.
    ({"tools": [{"type": "function", "function": {"name": "google_search"}}],
      "tool_choice": "auto", "web_search_options": {}},
     {"tools": [{"googleSearch": {}}]}),
])
async def test_the_body_gemini_receives(proxy: Any, upstream: Any, kind: str,
                                        extra: dict[str, Any],
                                        expected: dict[str, Any]) -> None:
    upstream.body = google_sse([FINISH])
    settings = {"project": "p", "location": "global"} if kind == "vertex" else {}
    client = await proxy(provider_config(kind, upstream.url, **settings))
    resp = await client.post("/v1/chat/completions", json={
        "model": "gemini-2.5-flash", "stream": True, "messages": USER, **extra})
    assert resp.status == 200, await resp.text()
    await resp.read()
    assert sent_tools(upstream) == expected


async def test_web_search_options_that_are_not_an_object_are_a_400(proxy: Any,
                                                                   upstream: Any) -> None:
    client = await proxy(provider_config("gemini", upstream.url))
    resp = await client.post("/v1/chat/completions", json={
        "model": "gemini-2.5-flash", "messages": USER, "web_search_options": "on"})
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == "web_search_options"
    assert upstream.requests == []


async def test_claude_on_vertex_still_refuses_web_search_options(proxy: Any,
                                                                 upstream: Any) -> None:
    client = await proxy(provider_config("vertex", upstream.url, project="p",
                                         location="global"))
    resp = await client.post("/v1/chat/completions", json={
        "model": "claude-sonnet-4-5@20250929", "messages": USER, "web_search_options": {}})
    assert resp.status == 400
    err = (await resp.json())["error"]
    assert (err["code"], err["param"]) == ("unsupported_value", "web_search_options")
    assert upstream.requests == []


# The answer, in the form Google's grounding guide shows: the text in plain chunks, then a
# last chunk with the finish reason and `groundingMetadata` (web sources, and the segments of
# the text each supports; a support may cite two, two supports one).
ANSWER = ["Spain won Euro 2024, ", "beating England 2-1 in the final. ",
          "It is Spain's fourth European title."]
EURO = {"uri": "https://vertexaisearch.cloud.google.com/grounding-api-redirect/AAA",
        "title": "uefa.com"}
NEWS = {"uri": "https://vertexaisearch.cloud.google.com/grounding-api-redirect/BBB",
        "title": "aljazeera.com"}
GROUNDING = {
    "webSearchQueries": ["euro 2024 winner"],
    "searchEntryPoint": {"renderedContent": "<style>.container {}</style>"},
    "groundingChunks": [{"web": EURO}, {"web": NEWS},
                        {"retrievedContext": {"uri": "gs://b/doc", "title": "doc"}}],
    "groundingSupports": [
        {"segment": {"endIndex": 55, "text": "Spain won Euro 2024, beating England 2-1 in "
                                             "the final."},
         "groundingChunkIndices": [0, 1], "confidenceScores": [0.9, 0.8]},
        {"segment": {"startIndex": 56, "endIndex": 92,
                     "text": "It is Spain's fourth European title."},
         "groundingChunkIndices": [0, 2, 7]},  # not a web page, no such chunk: left out
    ],
}
ANNOTATIONS = [
    {"type": "url_citation", "url_citation": {"url": EURO["uri"], "title": "uefa.com",
                                              "start_index": 0, "end_index": 55}},
    {"type": "url_citation", "url_citation": {"url": NEWS["uri"], "title": "aljazeera.com",
                                              "start_index": 0, "end_index": 55}},
    {"type": "url_citation", "url_citation": {"url": EURO["uri"], "title": "uefa.com",
                                              "start_index": 56, "end_index": 92}},
]


def grounded(chunk: dict[str, Any]) -> dict[str, Any]:
    chunk = orjson.loads(orjson.dumps(chunk))
    chunk["candidates"][0]["groundingMetadata"] = GROUNDING
    return chunk


# Gemini may repeat the metadata on a chunk before the last: each annotation still comes once.
GROUNDED_STREAM = google_sse([*map(text_chunk, ANSWER[:2]), grounded(text_chunk(ANSWER[2])),
                              grounded(FINISH)])


def annotations_and_text(out: bytes) -> tuple[list[Any], str, list[str]]:
    annotations, text, finishes = [], "", []
    for chunk in sse_chunks(out):
        if chunk == "[DONE]":
            continue
        for choice in chunk["choices"]:
            annotations += choice["delta"].get("annotations") or []
            text += choice["delta"].get("content") or ""
            finishes += [choice["finish_reason"]] if choice["finish_reason"] else []
    return unnumbered(annotations), text, finishes


def test_a_grounded_stream_at_random_splits_annotates_each_source_once() -> None:
    reference = translate([GROUNDED_STREAM])
    assert annotations_and_text(reference) == (ANNOTATIONS, "".join(ANSWER), ["stop"])
    rng = random.Random(146)
    for _ in range(30):
        pieces = random_splits(GROUNDED_STREAM, rng, max_piece=rng.choice([3, 40, 400]))
        assert translate(pieces) == reference


def test_only_the_grounded_chunks_take_the_full_parse() -> None:
    # The plain text chunks keep the fast path: the two grounded ones (and the first) do not.
    out, parsed = translate_counting([GROUNDED_STREAM])
    assert annotations_and_text(out)[0] == ANNOTATIONS
    assert parsed == 3


async def sdk_text_and_annotations(proxy: Any, upstream: Any) -> tuple[str, list[Any]]:
    """A grounded stream read through the openai SDK: its text and its annotations."""
    api = openai_sdk(await proxy(provider_config("gemini", upstream.url)))
    async with api:
        stream = await api.chat.completions.create(
            model="gemini-2.5-flash", messages=USER, stream=True, web_search_options={})
        text, annotations = "", []
        async for part in stream:
            delta = part.choices[0].delta
            text += delta.content or ""
            annotations += (delta.model_extra or {}).get("annotations") or []
    return text, annotations


async def test_the_sdk_streams_the_annotations(proxy: Any, upstream: Any) -> None:
    upstream.pieces = random_splits(GROUNDED_STREAM, random.Random(7), max_piece=60)
    text, annotations = await sdk_text_and_annotations(proxy, upstream)
    assert (text, unnumbered(annotations)) == ("".join(ANSWER), ANNOTATIONS)
    assert sent_tools(upstream) == {"tools": [{"googleSearch": {}}]}


@pytest.mark.parametrize("kind", ["gemini", "vertex"])
async def test_the_sdk_reads_message_annotations(proxy: Any, upstream: Any, kind: str) -> None:
    upstream.content_type = "application/json"
    answer = grounded(FINISH)
    answer["candidates"][0]["content"]["parts"] = [{"text": "".join(ANSWER)}]
    upstream.body = orjson.dumps(answer)
    settings = {"project": "p", "location": "global"} if kind == "vertex" else {}
    api = openai_sdk(await proxy(provider_config(kind, upstream.url, **settings)))
    async with api:
        resp = await api.chat.completions.create(
            model="gemini-2.5-flash", messages=USER,
            tools=[{"type": "function", "function": {"name": "google_search"}}])
    message = resp.choices[0].message
    assert message.content == "".join(ANSWER)
    assert [a.model_dump() for a in message.annotations or []] == ANNOTATIONS
    assert sent_tools(upstream) == {"tools": [{"googleSearch": {}}]}


# Gemini counts a segment's `startIndex` / `endIndex` in UTF-8 bytes of the answer's text
# (Google's reference: "measured in bytes"); OpenAI's `start_index` / `end_index` index its
# characters, as Python's `content[start:end]` does. Accents, CJK and emoji (2, 3, 4 bytes)
# before and inside the cited spans.
WIDE = ["España ganó la Euro 2024 🏆, ", "venciendo a Inglaterra 2-1. ", "西班牙第四次夺冠。"]
WIDE_SPANS = ["España ganó la Euro 2024 🏆", "venciendo a Inglaterra 2-1.", "西班牙第四次夺冠"]


def byte_span(text: str, part: str) -> dict[str, Any]:
    start = text.encode().index(part.encode())
    return {"startIndex": start, "endIndex": start + len(part.encode()), "text": part}


def wide_grounding() -> dict[str, Any]:
    text = "".join(WIDE)
    return {"groundingChunks": [{"web": EURO}, {"web": NEWS}], "groundingSupports": [
        {"segment": byte_span(text, span), "groundingChunkIndices": [i % 2]}
        for i, span in enumerate(WIDE_SPANS)]}


def cited_spans(annotations: list[Any], text: str) -> list[str]:
    return [text[a["url_citation"]["start_index"]:a["url_citation"]["end_index"]]
            for a in annotations]


def translate_grounded(pieces: list[bytes]) -> bytes:
    enc = ChunkEncoder(completion_id="chatcmpl-t", created=1, model="m", include_usage=True)
    return relay_pieces(enc, GeminiStreamTranslator(enc, 1 << 20, grounded=True), pieces)


def test_streamed_offsets_count_characters_of_non_ascii_text() -> None:
    last = text_chunk(WIDE[2])
    last["candidates"][0]["groundingMetadata"] = wide_grounding()
    stream = google_sse([*map(text_chunk, WIDE[:2]), last, FINISH])
    rng = random.Random(148)
    for pieces in [[stream], *(random_splits(stream, rng, max_piece=rng.choice([5, 200]))
                               for _ in range(20))]:
        annotations, text, _ = annotations_and_text(translate_grounded(pieces))
        assert text == "".join(WIDE)
        assert cited_spans(annotations, text) == WIDE_SPANS


def test_spliced_runs_count_characters_too() -> None:
    # A read of a kilobyte or more has its plain text chunks spliced, never decoded: their
    # text still counts.
    filler = ["Ñandú ", "über ", "日本 ", "🙂 "] * 6
    last = text_chunk(WIDE[2])
    text = "".join(filler) + "".join(WIDE)
    last["candidates"][0]["groundingMetadata"] = {
        "groundingChunks": [{"web": EURO}],
        "groundingSupports": [{"segment": byte_span(text, s), "groundingChunkIndices": [0]}
                              for s in WIDE_SPANS]}
    stream = google_sse([*map(text_chunk, filler + WIDE[:2]), last, FINISH])
    assert len(stream) > 4096
    annotations, said, _ = annotations_and_text(translate_grounded([stream]))
    assert said == text
    assert cited_spans(annotations, said) == WIDE_SPANS


def test_a_non_streamed_answer_counts_characters() -> None:
    answer = orjson.loads(orjson.dumps(FINISH))
    answer["candidates"][0]["content"]["parts"] = [{"text": "".join(WIDE)}]
    answer["candidates"][0]["groundingMetadata"] = wide_grounding()
    completion = to_completion(orjson.dumps(answer), completion_id="c", created=1, model="m")
    message = completion["choices"][0]["message"]
    assert cited_spans(message["annotations"], message["content"]) == WIDE_SPANS


async def test_the_sdk_gets_character_offsets(proxy: Any, upstream: Any) -> None:
    last = text_chunk(WIDE[2])
    last["candidates"][0]["groundingMetadata"] = wide_grounding()
    upstream.pieces = random_splits(google_sse([*map(text_chunk, WIDE[:2]), last, FINISH]),
                                    random.Random(8), max_piece=60)
    text, annotations = await sdk_text_and_annotations(proxy, upstream)
    assert cited_spans(annotations, text) == WIDE_SPANS


def test_streamed_grounding_chunks_accumulate() -> None:
    # Streamed, a chunk's `groundingChunks` holds only the sources not sent before, and
    # `groundingChunkIndices` index all of them, in order (Google's reference: "the client's
    # responsibility to accumulate the grounding chunks from all responses").
    text = "".join(ANSWER)
    spans = [("Spain won Euro 2024, ", [0]), ("beating England 2-1 in the final.", [1]),
             ("It is Spain's fourth European title.", [0, 1])]
    supports = [{"segment": byte_span(text, s), "groundingChunkIndices": i} for s, i in spans]
    second, last = text_chunk(ANSWER[1]), orjson.loads(orjson.dumps(FINISH))
    second["candidates"][0]["groundingMetadata"] = {
        "groundingChunks": [{"web": EURO}], "groundingSupports": supports[:1]}
    last["candidates"][0]["groundingMetadata"] = {
        "groundingChunks": [{"web": NEWS}], "groundingSupports": supports[1:]}
    stream = google_sse([text_chunk(ANSWER[0]), second, text_chunk(ANSWER[2]), last])
    annotations, said, _ = annotations_and_text(translate_grounded([stream]))
    assert said == text
    assert [(a["url_citation"]["url"], span) for a, span in zip(
        annotations, cited_spans(annotations, said), strict=True)] == [
        (EURO["uri"], spans[0][0]), (NEWS["uri"], spans[1][0]),
        (EURO["uri"], spans[2][0]), (NEWS["uri"], spans[2][0])]
