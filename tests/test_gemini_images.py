"""Gemini's image models answer with images: `inlineData` image parts reach the client as
OpenRouter's `images` (LiteLLM emits the same) — `message.images` whole, `delta.images`
streamed — and `modalities` asking for images becomes Gemini's `responseModalities`;
translating providers that cannot draw answer a 400 naming `modalities`.

The streams follow Google's image-generation guide: a text part, then an `inlineData` part
(`mimeType: image/png`, base64 `data`), text and images interleaved, the image's tokens in
`candidatesTokensDetails` (IMAGE, 1290 for a 1024px image); Gemini 3 Pro Image adds thought
text, thought images (drafts) and a `thoughtSignature` on its final image. Framed as Gemini
writes `alt=sse` (its separators, CRLF), so the plain text chunks take the fast path and the
splice, and split at random byte boundaries, through an image's base64 too.
"""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamproxy.cache.service import STATUS_HEADER
from streamproxy.openai_api.chunks import ChunkEncoder
from streamproxy.providers.gemini.response import to_completion
from streamproxy.providers.gemini.stream import GeminiStreamTranslator
from tests.conftest import provider_config
from tests.helpers import (
    DecodingEncoder,
    assert_finish_last,
    collect,
    make_config,
    openai_sdk,
    random_splits,
    relay_pieces,
    sse_chunks,
)
from tests.test_cache import cache_header, drained
from tests.test_storage import _pass_through_stream, stored

USER = [{"role": "user", "content": "Create a picture of a nano banana dish."}]
MODEL = "gemini-2.5-flash-image"
# Base64 image data as Gemini sends it: a PNG's bytes, a few KB so that reads cut through it.
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + random.Random(1).randbytes(4000)).decode()
PNG_2 = base64.b64encode(b"\x89PNG\r\n\x1a\n" + random.Random(2).randbytes(3000)).decode()
URL = f"data:image/png;base64,{PNG}"
URL_2 = f"data:image/png;base64,{PNG_2}"
PROMPT = {"promptTokenCount": 11, "promptTokensDetails": [{"modality": "TEXT",
                                                           "tokenCount": 11}]}
FINAL_USAGE = {**PROMPT, "candidatesTokenCount": 2598, "totalTokenCount": 2609,
               "candidatesTokensDetails": [{"modality": "TEXT", "tokenCount": 18},
                                           {"modality": "IMAGE", "tokenCount": 2580}]}


def element(parts: list[dict[str, Any]], *, finish: str | None = None,
            usage: dict[str, Any] | None = None, model: str = MODEL) -> dict[str, Any]:
    """A stream chunk in Gemini's own key order (a plain text one takes the fast path)."""
    candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
    if finish:
        candidate["finishReason"] = finish
    candidate["index"] = 0
    return {"candidates": [candidate], "usageMetadata": usage or {**PROMPT, "totalTokenCount": 11},
            "modelVersion": model, "responseId": "aT9Ab-7xLqSmz7IP0o2m8Aw"}


def image(data: str, **extra: Any) -> dict[str, Any]:
    return {"inlineData": {"mimeType": "image/png", "data": data}, **extra}


# Text and images interleaved (the guide's "recipe" prompt), the finish on the last text.
INTERLEAVED = [
    element([{"text": "Here is a nano banana dish, "}]),
    element([{"text": "plated in a fancy restaurant:"}]),
    element([image(PNG)]),
    element([{"text": "And its dessert:"}]),
    element([image(PNG_2)]),
    element([{"text": " Enjoy!"}], finish="STOP", usage=FINAL_USAGE),
]
INTERLEAVED_TEXT = ("Here is a nano banana dish, plated in a fancy restaurant:And its dessert:"
                    " Enjoy!")
# Gemini 3 Pro Image (includeThoughts): thought text, a thought image (a draft, not the
# answer), then the final image alone, signed.
PRO = "gemini-3-pro-image-preview"
PRO_IMAGE = [
    element([{"text": "Composing the plate.", "thought": True}], model=PRO),
    element([image(PNG_2, thought=True)], model=PRO),
    element([image(PNG, thoughtSignature="c2lnbmVkLWltYWdl")], finish="STOP",
            usage={**PROMPT, "candidatesTokenCount": 1120, "thoughtsTokenCount": 200,
                   "totalTokenCount": 1331}, model=PRO),
]


def google_sse(elements: list[Any]) -> bytes:
    return b"".join(b"data: " + json.dumps(e, separators=(",", ": ")).encode() + b"\r\n\r\n"
                    for e in elements)


def translate(pieces: list[bytes], encoder: type[ChunkEncoder] = ChunkEncoder) -> bytes:
    enc = encoder(completion_id="chatcmpl-t", created=1, model="m", include_usage=True)
    return relay_pieces(enc, GeminiStreamTranslator(enc, 1 << 20), pieces)


def images_of(chunks: list[Any]) -> list[str]:
    """The streamed images' URLs, checking each is one whole entry numbered in order."""
    urls: list[str] = []
    for chunk in chunks:
        if chunk == "[DONE]" or not chunk.get("choices"):
            continue
        for entry in chunk["choices"][0]["delta"].get("images") or []:
            assert entry == {"type": "image_url", "image_url": {"url": entry["image_url"]["url"]},
                             "index": len(urls)}
            urls.append(entry["image_url"]["url"])
    return urls


def readings(body: bytes) -> list[list[bytes]]:
    rng = random.Random(len(body))
    return [[body], *(random_splits(body, rng, max_piece=rng.choice([7, 300, 2500]))
                      for _ in range(25))]


# -- the stream -----------------------------------------------------------------------------

@pytest.mark.parametrize("encoder", [ChunkEncoder, DecodingEncoder])
def test_interleaved_text_and_images_whole_and_at_random_splits(
        encoder: type[ChunkEncoder]) -> None:
    for pieces in readings(google_sse(INTERLEAVED)):
        chunks = sse_chunks(translate(pieces, encoder))
        assert_finish_last(chunks)
        c = collect(chunks)
        assert c.error is None and c.done and c.roles == 1
        assert c.content == INTERLEAVED_TEXT
        assert images_of(chunks) == [URL, URL_2]
        assert c.finish_reason == "stop"
        assert c.usage is not None and (c.usage["prompt_tokens"], c.usage["completion_tokens"],
                                        c.usage["total_tokens"]) == (11, 2598, 2609)


def test_an_image_is_one_chunk_in_its_place_among_the_text() -> None:
    chunks = sse_chunks(translate([google_sse(INTERLEAVED)]))
    deltas = [ch["choices"][0]["delta"] for ch in chunks if ch != "[DONE]" and ch["choices"]]
    assert [next(iter(d)) for d in deltas[1:-1]] == [
        "content", "content", "images", "content", "images", "content"]
    assert deltas[3] == {"images": [{"type": "image_url", "image_url": {"url": URL},
                                     "index": 0}]}


def test_an_image_only_answer_has_null_content_and_drops_thought_images() -> None:
    for pieces in readings(google_sse(PRO_IMAGE)):
        chunks = sse_chunks(translate(pieces))
        assert_finish_last(chunks)
        c = collect(chunks)
        assert chunks[0]["choices"][0]["delta"]["content"] is None  # no text: content null
        assert c.content == "" and c.reasoning == "Composing the plate."
        assert images_of(chunks) == [URL]  # the draft (thought: true) is not the answer
        assert c.thinking_blocks == [{"type": "thought_signature",
                                      "signature": "c2lnbmVkLWltYWdl"}]
        assert c.finish_reason == "stop" and c.done
        assert c.usage["completion_tokens"] == 1320


def test_inline_data_that_is_no_image_is_still_dropped() -> None:
    body = google_sse([element([{"text": "Hi"}, {"inlineData": {"mimeType": "audio/wav",
                                                                "data": "UklGRg=="}},
                                image("")], finish="STOP")])
    chunks = sse_chunks(translate([body]))
    assert images_of(chunks) == [] and collect(chunks).content == "Hi"


@pytest.mark.parametrize("blob", [
    {"mimeType": "image/svg+xml,<svg onload=alert(1)>", "data": "AAAA"},
    {"mimeType": "image/png;charset=x,<b>", "data": "AAAA"},
    {"mimeType": "image/png", "data": 5}, {"mimeType": 5, "data": "AAAA"}])
def test_an_image_part_that_is_not_one_is_dropped(blob: dict[str, Any]) -> None:
    # The media type became the client's data: URL as written: a comma in it made the URL's
    # data the upstream's own (a script-bearing SVG), a number was a protocol error.
    body = google_sse([element([{"text": "Hi"}, {"inlineData": blob}], finish="STOP")])
    chunks = sse_chunks(translate([body]))
    c = collect(chunks)
    assert images_of(chunks) == [] and c.content == "Hi" and c.error is None and c.done


# -- the whole answer -----------------------------------------------------------------------

def whole(elements: list[dict[str, Any]]) -> dict[str, Any]:
    """The non-streamed answer of a stream: its parts in one candidate, the last usage."""
    answer = orjson.loads(orjson.dumps(elements[-1]))
    answer["candidates"][0]["content"]["parts"] = [
        part for e in elements for part in e["candidates"][0]["content"]["parts"]]
    return answer


def test_the_non_streamed_message_carries_images_and_its_text() -> None:
    answer = to_completion(orjson.dumps(whole(INTERLEAVED)), completion_id="c", created=1,
                           model="m")
    message = answer["choices"][0]["message"]
    assert message["content"] == INTERLEAVED_TEXT
    assert message["images"] == [
        {"type": "image_url", "image_url": {"url": URL}, "index": 0},
        {"type": "image_url", "image_url": {"url": URL_2}, "index": 1}]
    assert answer["choices"][0]["finish_reason"] == "stop"
    only = to_completion(orjson.dumps(whole(PRO_IMAGE)), completion_id="c", created=1,
                         model="m")["choices"][0]["message"]
    assert only["content"] is None
    assert [i["image_url"]["url"] for i in only["images"]] == [URL]
    text = to_completion(orjson.dumps(element([{"text": "Hi"}], finish="STOP")),
                         completion_id="c", created=1, model="m")["choices"][0]["message"]
    assert "images" not in text  # an answer without images has no such field


# -- through the proxy, with the openai SDK --------------------------------------------------

@pytest.mark.parametrize(("modalities", "sent"), [
    (["text", "image"], ["TEXT", "IMAGE"]), (["image", "text"], ["TEXT", "IMAGE"]),
    (["image"], ["IMAGE"])])
async def test_the_sdk_streams_the_images_gemini_was_asked_for(
        proxy: Any, upstream: Any, modalities: list[str], sent: list[str]) -> None:
    upstream.pieces = random_splits(google_sse(INTERLEAVED), random.Random(3), max_piece=900)
    api = openai_sdk(await proxy(provider_config("gemini", upstream.url)))
    async with api:
        stream = await api.chat.completions.create(
            model=MODEL, messages=USER, stream=True, modalities=modalities,  # type: ignore[arg-type]
            stream_options={"include_usage": True})
        text, urls, usage = "", [], None
        async for chunk in stream:
            usage = chunk.usage or usage
            for choice in chunk.choices:
                text += choice.delta.content or ""
                urls += [i["image_url"]["url"]
                         for i in (choice.delta.model_extra or {}).get("images") or []]
    assert text == INTERLEAVED_TEXT and urls == [URL, URL_2]
    assert usage is not None and usage.completion_tokens == 2598
    assert upstream.requests[0].json()["generationConfig"] == {"responseModalities": sent}


async def test_the_sdk_reads_the_images_of_a_non_streamed_answer(proxy: Any,
                                                                 upstream: Any) -> None:
    upstream.content_type, upstream.body = "application/json", orjson.dumps(whole(INTERLEAVED))
    api = openai_sdk(await proxy(provider_config("vertex", upstream.url, project="p",
                                                 location="global")))
    async with api:
        resp = await api.chat.completions.create(model=MODEL, messages=USER,
                                                 modalities=["text", "image"])  # type: ignore[list-item]
        message = resp.choices[0].message
        assert message.content == INTERLEAVED_TEXT
        assert [i["image_url"]["url"] for i in message.model_extra["images"]] == [URL, URL_2]
        # The SDK's stream helper merges `delta.images` entries by their index.
        upstream.content_type, upstream.body = "text/event-stream", google_sse(PRO_IMAGE)
        async with api.chat.completions.stream(model=MODEL, messages=USER) as stream:
            final = await stream.get_final_completion()
    assert final.choices[0].message.content is None
    assert [i["image_url"]["url"] for i in final.choices[0].message.model_extra["images"]] == [
        URL]
    sent = upstream.requests[0].json()
    assert sent["generationConfig"] == {"responseModalities": ["TEXT", "IMAGE"]}
    assert "responseModalities" not in upstream.requests[1].json().get("generationConfig", {})


async def test_text_modalities_alone_are_not_sent(proxy: Any, upstream: Any) -> None:
    upstream.body = google_sse([element([{"text": "Hi"}], finish="STOP")])
    client = await proxy(provider_config("gemini", upstream.url))
    resp = await client.post("/v1/chat/completions", json={
        "model": "gemini-2.5-flash", "messages": USER, "stream": True, "modalities": ["text"]})
    assert resp.status == 200
    await resp.read()
    assert "generationConfig" not in upstream.requests[0].json()


@pytest.mark.parametrize(("kind", "model", "settings"), [
    ("anthropic", "m", {}), ("bedrock", "m", {"region": "us-east-1"}), ("cohere", "m", {}),
    ("ollama", "m", {}), ("mistral", "m", {}),
    # Vertex's Claude models speak Anthropic's format: no images either.
    ("vertex", "claude-sonnet-4-5@20250929", {"project": "p", "location": "global"}),
])
async def test_providers_that_cannot_draw_refuse_image_modalities(
        proxy: Any, upstream: Any, kind: str, model: str, settings: dict[str, Any]) -> None:
    # Dropped, the client would get a text answer to a request for a picture and not know it.
    client = await proxy(provider_config(kind, upstream.url, **settings))
    for modalities in (["text", "image"], ["image"]):
        resp = await client.post("/v1/chat/completions", json={
            "model": model, "messages": USER, "modalities": modalities})
        assert resp.status == 400
        err = (await resp.json())["error"]
        assert (err["code"], err["param"]) == ("unsupported_value", "modalities")
        assert "provider 'up'" in err["message"] and "images" in err["message"]
    assert upstream.requests == []


async def test_gemini_still_refuses_an_audio_answer(proxy: Any, upstream: Any) -> None:
    client = await proxy(provider_config("gemini", upstream.url))
    resp = await client.post("/v1/chat/completions", json={
        "model": MODEL, "messages": USER, "modalities": ["text", "image", "audio"]})
    assert resp.status == 400 and (await resp.json())["error"]["param"] == "modalities"
    assert upstream.requests == []


async def test_a_pass_through_type_forwards_modalities_as_written(proxy: Any,
                                                                  upstream: Any) -> None:
    upstream.body = _pass_through_stream({"role": "assistant", "content": "Hi"})
    client = await proxy(provider_config("openai", upstream.url))
    resp = await client.post("/v1/chat/completions", json={
        "model": "m", "messages": USER, "stream": True, "modalities": ["image", "text"]})
    assert resp.status == 200
    await resp.read()
    assert upstream.requests[0].json()["modalities"] == ["image", "text"]


# -- what the proxy keeps: stored completions and the cache ----------------------------------

def storing(upstream_url: str, tmp_path: Path) -> Any:
    return make_config({"up": {"type": "gemini", "base_url": upstream_url, "api_key": "k",
                               "default_model": MODEL}}, default="up",
                       storage={"path": str(tmp_path / "s.sqlite3")})


@pytest.mark.parametrize("stream", [True, False])
async def test_a_stored_completion_keeps_the_images(proxy: Any, upstream: Any,
                                                    tmp_path: Path, stream: bool) -> None:
    if stream:
        upstream.pieces = random_splits(google_sse(INTERLEAVED), random.Random(4), max_piece=700)
    else:
        upstream.content_type = "application/json"
        upstream.body = orjson.dumps(whole(INTERLEAVED))
    api = openai_sdk(await proxy(storing(upstream.url, tmp_path)), "sk-client")
    async with api:
        if stream:
            answer = await api.chat.completions.create(model=MODEL, messages=USER, store=True,
                                                       stream=True)
            [cid] = {chunk.id async for chunk in answer}
        else:
            cid = (await api.chat.completions.create(model=MODEL, messages=USER,
                                                     store=True)).id
        message = (await stored(api, cid)).choices[0].message
    assert message.content == INTERLEAVED_TEXT
    assert message.model_extra["images"] == [
        {"type": "image_url", "image_url": {"url": URL}, "index": 0},
        {"type": "image_url", "image_url": {"url": URL_2}, "index": 1}]


async def test_a_streamed_answer_with_images_is_never_cached(proxy: Any, upstream: Any) -> None:
    # A replay has no image deltas: it would answer the text alone.
    upstream.body = google_sse(INTERLEAVED)
    client = await proxy(provider_config("gemini", upstream.url))
    request = {"model": MODEL, "messages": USER, "stream": True}
    for _ in range(2):
        resp = await client.post("/v1/chat/completions", json=request, headers=cache_header())
        assert images_of(sse_chunks(await resp.read())) == [URL, URL_2]
        assert resp.headers[STATUS_HEADER] == "MISS"
        await drained(client)
    assert len(upstream.requests) == 2


async def test_a_non_streamed_answer_with_images_answers_non_streamed_hits_only(
        proxy: Any, upstream: Any) -> None:
    upstream.content_type, upstream.body = "application/json", orjson.dumps(whole(INTERLEAVED))
    client = await proxy(provider_config("gemini", upstream.url))
    request = {"model": MODEL, "messages": USER}
    miss = await client.post("/v1/chat/completions", json=request, headers=cache_header())
    first = (await miss.json())["choices"][0]["message"]
    await drained(client)
    hit = await client.post("/v1/chat/completions", json=request, headers=cache_header())
    assert (miss.headers[STATUS_HEADER], hit.headers[STATUS_HEADER]) == ("MISS", "HIT")
    assert (await hit.json())["choices"][0]["message"] == first
    assert [i["image_url"]["url"] for i in first["images"]] == [URL, URL_2]
    upstream.content_type, upstream.body = "text/event-stream", google_sse(INTERLEAVED)
    streamed = await client.post("/v1/chat/completions", json={**request, "stream": True},
                                 headers=cache_header())
    assert streamed.headers[STATUS_HEADER] == "MISS"  # no image deltas to replay from it
    assert images_of(sse_chunks(await streamed.read())) == [URL, URL_2]
    assert len(upstream.requests) == 2


async def test_a_pass_through_streams_images_are_stored_and_not_cached(
        proxy: Any, upstream: Any, tmp_path: Path) -> None:
    # An OpenAI-compatible upstream that draws (OpenRouter) streams `delta.images` itself: the
    # client got them as they came, and the capture keeps them.
    entry = {"type": "image_url", "image_url": {"url": URL}}
    upstream.body = _pass_through_stream({"role": "assistant", "content": "Here:"},
                                         {"images": [entry]})
    client = await proxy(make_config(
        {"oa": {"type": "openai", "base_url": upstream.url, "api_key": "sk-x",
                "default_model": "gpt"}}, default="oa",
        storage={"path": str(tmp_path / "s.sqlite3")}))
    async with openai_sdk(client, "sk-client") as api:
        answer = await api.chat.completions.create(model="gpt", messages=USER, store=True,
                                                   stream=True, extra_headers=cache_header())
        [cid] = {chunk.id async for chunk in answer}
        message = (await stored(api, cid)).choices[0].message
    assert message.content == "Here:" and message.model_extra["images"] == [entry]
    await drained(client)
    again = await client.post("/v1/chat/completions", headers=cache_header(), json={
        "model": "gpt", "messages": USER, "stream": True})
    assert again.headers[STATUS_HEADER] == "MISS"  # a replay would have no images
    await again.read()
    assert len(upstream.requests) == 2
