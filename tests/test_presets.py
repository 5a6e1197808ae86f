"""OpenAI-compatible presets (`type: groq`, `mistral`, `deepseek`, `together`, `fireworks`,
`openrouter`, `xai`, `moonshot`, `cerebras`, `deepinfra`, `vllm`): default URLs and auth, each
handled quirk, and the `openai` SDK end to end for every type.

The quirky streams are built from the documented/reported shapes in provider-streams.md §8
(Groq `x_groq.usage`, xAI usage on the second-to-last chunk then an empty-choices chunk —
BerriAI/litellm#17136, Mistral usage on the finish chunk and its 422 on `stream_options`,
OpenRouter keep-alive comments and `data: {"error": …}`, vLLM `choices: null`, DeepSeek
`reasoning_content` and `insufficient_system_resource`, Together `eos`, vLLM `abort` —
vllm-project/vllm#57082).
"""

from __future__ import annotations

import random
import re
from typing import Any

import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionMessage

from streamproxy.config import ConfigError
from streamproxy.errors import InvalidRequest, UpstreamStatusError
from streamproxy.openai_api.chunks import ChunkEncoder
from streamproxy.openai_api.request import parse_chat_request
from streamproxy.providers.presets import mistral_tool_call_id
from streamproxy.providers.registry import PROVIDER_TYPES
from streamproxy.routing.target import Target
from tests.conftest import provider_config
from tests.helpers import (
    DecodingEncoder,
    assert_finish_last,
    collect,
    fixture_bytes,
    make_config,
    random_splits,
    relay_pieces,
    sse_chunks,
)

DEFAULT_URLS = {
    "groq": "https://api.groq.com/openai/v1",
    "mistral": "https://api.mistral.ai/v1",
    "deepseek": "https://api.deepseek.com",
    "together": "https://api.together.xyz/v1",
    "fireworks": "https://api.fireworks.ai/inference/v1",
    "openrouter": "https://openrouter.ai/api/v1",
    "xai": "https://api.x.ai/v1",
    "moonshot": "https://api.moonshot.ai/v1",
    # inference-docs.cerebras.ai/resources/openai: "change the baseURL to
    # https://api.cerebras.ai/v1", the key as the OpenAI client's
    "cerebras": "https://api.cerebras.ai/v1",
    # deepinfra.com/docs/advanced/openai_api: "The api_base is https://api.deepinfra.com/v1/openai"
    "deepinfra": "https://api.deepinfra.com/v1/openai",
}
PRESETS = [*DEFAULT_URLS, "vllm"]
USAGE = {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}
HI = [{"role": "user", "content": "hi"}]


def chunk(choices: list[dict[str, Any]] | None, **extra: Any) -> dict[str, Any]:
    return {"id": "gen-1", "object": "chat.completion.chunk", "created": 1700000000,
            "model": "up-model", "choices": choices, **extra}


def choice(finish: str | None = None, **delta: Any) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}


def sse(*items: dict[str, Any] | bytes, done: bool = True) -> bytes:
    out = b"".join(i if isinstance(i, bytes) else b"data: " + orjson.dumps(i) + b"\n\n"
                   for i in items)
    return out + (b"data: [DONE]\n\n" if done else b"")


HEAD = (chunk([choice(role="assistant", content="")]), chunk([choice(content="Hello")]),
        chunk([choice(content=" world")]))


def build(kind: str, **extra: Any) -> tuple[Any, Any]:
    config = make_config({"p": {"type": kind, "api_key": "k", **extra}})
    provider = PROVIDER_TYPES[kind](config.providers["p"])
    return provider, Target(provider, "some-model", api_key="k")


def request(**body: Any) -> Any:
    return parse_chat_request(orjson.dumps({"model": "some-model", "messages": HI, **body}))


@pytest.mark.parametrize("kind", DEFAULT_URLS)
def test_default_url_and_bearer_auth(kind: str) -> None:
    provider, target = build(kind)
    up = provider.build_request(request(), target)
    assert up.url == DEFAULT_URLS[kind] + "/chat/completions"
    assert up.headers["authorization"] == "Bearer k"
    assert provider.passthrough


def test_vllm_requires_base_url_and_takes_no_key() -> None:
    with pytest.raises(ConfigError) as info:
        make_config({"local": {"type": "vllm"}})
    assert info.value.key == "providers.local.base_url"
    config = make_config({"local": {"type": "vllm", "base_url": "http://127.0.0.1:8000/v1"}})
    provider = PROVIDER_TYPES["vllm"](config.providers["local"])
    up = provider.build_request(request(), Target(provider, "m"))
    assert up.url == "http://127.0.0.1:8000/v1/chat/completions"
    assert "authorization" not in up.headers


def test_presets_take_no_openai_only_options() -> None:
    with pytest.raises(ConfigError) as info:
        make_config({"g": {"type": "groq", "organization": "org-1"}})
    assert info.value.key == "providers.g.organization"


async def stream(proxy: Any, upstream: Any, kind: str, body: bytes, *,
                 usage: bool = True, **req: Any) -> list[Any]:
    upstream.pieces = random_splits(body, random.Random(kind), max_piece=23)
    client = await proxy(provider_config(kind, upstream.url))
    payload: dict[str, Any] = {"model": "m", "stream": True, "messages": HI, **req}
    if usage:
        payload["stream_options"] = {"include_usage": True}
    resp = await client.post("/v1/chat/completions", json=payload)
    assert resp.status == 200
    return sse_chunks(await resp.read())


def usage_chunks(chunks: list[Any]) -> list[Any]:
    return [c for c in chunks if isinstance(c, dict) and c.get("usage")]


# -- usage where OpenAI would not put it ------------------------------------------------------
XAI = sse(*HEAD, chunk([choice("stop")], usage=USAGE), chunk([]))  # usage, then empty choices
MISTRAL = sse(*HEAD, chunk([choice("stop", content="")], usage=USAGE))
GROQ = sse(*HEAD, chunk([choice("stop")], x_groq={"id": "req_1", "usage": {
    **USAGE, "queue_time": 0.01, "total_time": 0.2}}))


@pytest.mark.parametrize(("kind", "body"), [("xai", XAI), ("mistral", MISTRAL), ("groq", GROQ)])
async def test_usage_is_moved_to_one_usage_chunk_before_done(proxy: Any, upstream: Any,
                                                             kind: str, body: bytes) -> None:
    chunks = await stream(proxy, upstream, kind, body)
    c = collect(chunks)
    assert c.content == "Hello world" and c.finish_reason == "stop" and c.done
    [only] = usage_chunks(chunks)
    assert only["choices"] == [] and only["id"] == "gen-1"
    assert {k: only["usage"][k] for k in USAGE} == USAGE
    assert chunks[-2] is only  # right before [DONE]


@pytest.mark.parametrize("kind", ["openrouter", "xai", "mistral", "groq"])
def test_a_usage_chunk_we_build_carries_the_upstream_chunks_fields(kind: str) -> None:
    """The usage chunk built from usage that rode on the finish chunk had only the id, created,
    model and system_fingerprint: the `service_tier` (and OpenRouter's `provider`) every other
    chunk carried was gone from the stream's last chunk, where OpenAI's usage chunk has it."""
    provider, _ = build(kind)
    fields = {"system_fingerprint": "fp_1", "service_tier": "default", "provider": "OpenAI"}
    body = sse(chunk([choice(role="assistant", content="Hi")], **fields),
               chunk([choice("stop")], usage=USAGE, **fields))
    enc = ChunkEncoder(completion_id="chatcmpl-t", created=1, model="m", include_usage=False)
    req = request(stream=True, stream_options={"include_usage": True})
    chunks = sse_chunks(relay_pieces(enc, provider.stream_translator(req, enc), [body]))
    [only] = usage_chunks(chunks)
    assert only["choices"] == [] and {k: only.get(k) for k in fields} == fields
    assert only["usage"] == USAGE and chunks[-1] == "[DONE]"


@pytest.mark.parametrize(("kind", "body"), [("xai", XAI), ("mistral", MISTRAL), ("groq", GROQ)])
async def test_no_usage_chunk_when_the_client_did_not_ask(proxy: Any, upstream: Any,
                                                          kind: str, body: bytes) -> None:
    chunks = await stream(proxy, upstream, kind, body, usage=False)
    c = collect(chunks)
    assert c.done and c.usage is None and usage_chunks(chunks) == []


async def test_groq_usage_is_not_duplicated_when_a_usage_chunk_also_comes(
        proxy: Any, upstream: Any) -> None:
    body = sse(*HEAD, chunk([choice("stop")], x_groq={"id": "r", "usage": USAGE}),
               chunk([], usage=USAGE, x_groq={"id": "r", "usage": USAGE}))
    chunks = await stream(proxy, upstream, "groq", body)
    assert len(usage_chunks(chunks)) == 1 and collect(chunks).usage == USAGE


async def test_vllm_usage_chunk_with_null_choices(proxy: Any, upstream: Any) -> None:
    body = sse(*HEAD, chunk([choice("stop")]), chunk(None, usage=USAGE))
    chunks = await stream(proxy, upstream, "vllm", body)
    c = collect(chunks)
    assert c.usage == USAGE and c.done
    assert usage_chunks(chunks)[0]["choices"] == []



# vLLM's (and SGLang's) `stream_options.continuous_usage_stats`: the running usage on every
# chunk, then the usage chunk. A client that asked for it got it on no chunk but the last.
RUNNING = [{"prompt_tokens": 11, "completion_tokens": n, "total_tokens": 11 + n}
           for n in (1, 2, 3)]
CONTINUOUS = sse(chunk([choice(role="assistant", content="")], usage=RUNNING[0]),
                 chunk([choice(content="Hello")], usage=RUNNING[1]),
                 chunk([choice("stop", content=" world")], usage=RUNNING[2]),
                 chunk([], usage=RUNNING[2]))


@pytest.mark.parametrize("continuous", [True, False])
def test_vllm_running_usage_stays_on_every_chunk_when_the_client_asked(continuous: bool) -> None:
    provider, _ = build("vllm", base_url="http://127.0.0.1:8000/v1")
    enc = ChunkEncoder(completion_id="chatcmpl-t", created=1, model="m", include_usage=False)
    req = request(stream=True, stream_options={"include_usage": True,
                                               "continuous_usage_stats": continuous})
    chunks = sse_chunks(relay_pieces(enc, provider.stream_translator(req, enc), [CONTINUOUS]))
    c = collect(chunks)
    assert c.content == "Hello world" and c.usage == RUNNING[2] and c.done
    running = [x.get("usage") for x in chunks[:-2]]
    assert running == (RUNNING if continuous else [None] * 3)
    assert enc.usage_data == RUNNING[2]  # the last count, not a sum

# -- finish reasons ---------------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "upstream_reason", "reason"), [
    ("together", "eos", "stop"), ("mistral", "model_length", "length"),
    ("fireworks", "length", "length"),
])
async def test_finish_reasons_are_mapped(proxy: Any, upstream: Any, kind: str,
                                         upstream_reason: str, reason: str) -> None:
    body = sse(*HEAD, chunk([choice(upstream_reason)]), chunk([], usage=USAGE))
    c = collect(await stream(proxy, upstream, kind, body))
    assert c.finish_reason == reason and c.done and c.usage == USAGE


@pytest.mark.parametrize(("kind", "upstream_reason", "status"), [
    ("deepseek", "insufficient_system_resource", 503), ("openrouter", "error", 502),
    ("mistral", "error", 502), ("vllm", "abort", 503),
])
async def test_failure_finishes_become_error_frames(proxy: Any, upstream: Any, kind: str,
                                                    upstream_reason: str, status: int) -> None:
    body = sse(*HEAD, chunk([choice(upstream_reason)]), chunk([], usage=USAGE))
    chunks = await stream(proxy, upstream, kind, body)
    c = collect(chunks)
    assert c.content == "Hello world"
    assert c.error is not None and c.error["code"] == upstream_reason
    assert c.finish_reason is None and not c.done and "[DONE]" not in chunks


# Groq says why it stopped a stream early in the chunk's `x_groq.error` ("An error string
# indicating why a stream was stopped early": its API's ChatCompletionChunk, as groq-sdk types
# it), then ends the stream. It went out as an ordinary chunk, or was dropped with the empty
# choices it came with, and `[DONE]` followed: the client took a cut answer for a whole one.
@pytest.mark.parametrize("choices", [[], [choice()]])
def test_groq_stream_stopped_early_is_an_error_frame(choices: list[Any]) -> None:
    provider, _ = build("groq")
    enc = ChunkEncoder(completion_id="chatcmpl-t", created=1, model="m", include_usage=False)
    body = sse(*HEAD, chunk(choices, x_groq={"id": "req_1", "error": "over capacity"}))
    chunks = sse_chunks(relay_pieces(enc, provider.stream_translator(request(stream=True), enc),
                                     random_splits(body, random.Random(7), max_piece=23)))
    c = collect(chunks)
    assert c.content == "Hello world" and c.finish_reason is None
    assert c.error is not None and c.error["message"] == "over capacity"
    assert not c.done and "[DONE]" not in chunks


def _second(finish: str, **delta: Any) -> dict[str, Any]:
    return {**choice(finish, **delta), "index": 1}


@pytest.mark.parametrize(("kind", "upstream_reason", "reason"), [
    ("together", "eos", "stop"), ("mistral", "model_length", "length"),
])
async def test_every_choice_of_a_chunk_has_its_finish_reason_mapped(
        proxy: Any, upstream: Any, kind: str, upstream_reason: str, reason: str) -> None:
    """With `n: 2` a server may finish both choices in one chunk: only the first was looked
    at, so the second's reason went out unmapped (a non-streamed answer maps every choice)."""
    body = sse(*HEAD, chunk([choice(upstream_reason), _second(upstream_reason)]),
               chunk([], usage=USAGE))
    chunks = await stream(proxy, upstream, kind, body, n=2)
    finishes = [c["finish_reason"] for ch in chunks if isinstance(ch, dict)
                for c in ch.get("choices") or () if c.get("finish_reason")]
    assert finishes == [reason, reason] and collect(chunks).done


@pytest.mark.parametrize(("kind", "upstream_reason"), [
    ("deepseek", "insufficient_system_resource"), ("mistral", "error"),
])
async def test_a_failed_finish_of_a_second_choice_is_an_error_frame(
        proxy: Any, upstream: Any, kind: str, upstream_reason: str) -> None:
    body = sse(*HEAD, chunk([choice(content="!"), _second(upstream_reason)]),
               chunk([choice("stop")]), chunk([], usage=USAGE))
    c = collect(await stream(proxy, upstream, kind, body, n=2))
    assert c.error is not None and c.error["code"] == upstream_reason and not c.done


def _answer(reason: str, content: Any = "Hello world") -> bytes:
    return orjson.dumps({"id": "x", "object": "chat.completion", "created": 1, "model": "m",
                         "usage": USAGE, "choices": [{"index": 0, "finish_reason": reason,
                                                      "message": {"role": "assistant",
                                                                  "content": content}}]})


@pytest.mark.parametrize(("kind", "upstream_reason", "reason"), [
    ("together", "eos", "stop"), ("mistral", "model_length", "length"),
    ("fireworks", "length", "length"),
])
async def test_non_streamed_finish_reasons_are_mapped_as_streamed_ones(
        proxy: Any, upstream: Any, kind: str, upstream_reason: str, reason: str) -> None:
    upstream.content_type = "application/json"
    upstream.body = _answer(upstream_reason)
    client = await proxy(provider_config(kind, upstream.url))
    resp = await client.post("/v1/chat/completions", json={"model": "m", "messages": HI})
    answer = await resp.json()
    assert resp.status == 200 and answer["choices"][0]["finish_reason"] == reason
    assert answer["choices"][0]["message"]["content"] == "Hello world"


@pytest.mark.parametrize(("kind", "upstream_reason", "status"), [
    ("deepseek", "insufficient_system_resource", 503), ("openrouter", "error", 502),
    ("mistral", "error", 502), ("vllm", "abort", 503),
])
async def test_non_streamed_failure_finishes_are_errors(proxy: Any, upstream: Any, kind: str,
                                                        upstream_reason: str,
                                                        status: int) -> None:
    upstream.content_type = "application/json"
    upstream.body = _answer(upstream_reason)
    client = await proxy(provider_config(kind, upstream.url))
    resp = await client.post("/v1/chat/completions", json={"model": "m", "messages": HI})
    assert resp.status == status
    assert (await resp.json())["error"]["code"] == upstream_reason


def test_mistral_non_streamed_list_content_and_finish_reason_are_both_mapped() -> None:
    provider, _ = build("mistral")
    body = _answer("model_length", [{"type": "text", "text": "Hi"}])
    answer = orjson.loads(provider.translate_response(body, request(), completion_id="c",
                                                      created=1))
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["choices"][0]["message"]["content"] == "Hi"



def test_mistral_200_error_quoting_list_content_is_that_error() -> None:
    # A 200 carrying Mistral's validation error (a relay's), which quotes the message it
    # refused, list content and all: the list-content path skipped the error check, and the
    # client got the error object as its completion (a 200 no SDK can read).
    provider, _ = build("mistral")
    body = orjson.dumps({"object": "error", "message": {"detail": [{
        "type": "extra_forbidden", "loc": ["body", "messages", 0, "content", 0, "cache"],
        "msg": "Extra inputs are not permitted",
        "input": {"role": "user", "content": [{"type": "text", "text": "hi"}]}}]},
        "type": "invalid_request_message_error", "param": None, "code": None})
    with pytest.raises(UpstreamStatusError) as caught:
        provider.translate_response(body, request(), completion_id="c", created=1)
    assert "Extra inputs are not permitted" in caught.value.message

# -- OpenRouter ---------------------------------------------------------------------------------
async def test_openrouter_keepalives_and_mid_stream_error(proxy: Any, upstream: Any) -> None:
    body = sse(b": OPENROUTER PROCESSING\n\n", HEAD[0], b": OPENROUTER PROCESSING\n\n",
               HEAD[1], chunk([choice("error", content="")], error={
                   "code": 502, "message": "Provider disconnected unexpectedly"}), done=False)
    chunks = await stream(proxy, upstream, "openrouter", body)
    c = collect(chunks)
    assert c.content == "Hello"
    assert c.error == {"message": "Provider disconnected unexpectedly", "type": "api_error",
                       "param": None, "code": "502"}
    assert "[DONE]" not in chunks


async def test_openrouter_mid_stream_error_keeps_its_metadata(proxy: Any,
                                                              upstream: Any) -> None:
    """OpenRouter's error `metadata` names the provider that failed (its errors page)."""
    metadata = {"provider_name": "Anthropic", "raw": "overloaded"}
    body = sse(HEAD[0], HEAD[1], chunk([choice("error", content="")], error={
        "code": 502, "message": "Provider returned error", "metadata": metadata}), done=False)
    c = collect(await stream(proxy, upstream, "openrouter", body))
    assert c.error == {"message": "Provider returned error", "type": "api_error",
                       "param": None, "code": "502", "metadata": metadata}


# OpenRouter's schema gives a choice an `error` of its own (`StreamingChoice` and
# `NonStreamingChoice`: `error?: ErrorResponse`, `{code, message, metadata?}`) beside its
# finish `error`: what failed, which the client gets rather than the finish named.
CHOICE_ERROR = {"code": 429, "message": "Provider returned error",
                "metadata": {"provider_name": "Together", "raw": "rate limited"}}


def test_openrouter_choice_error_is_the_streamed_error() -> None:
    provider, _ = build("openrouter")
    enc = ChunkEncoder(completion_id="chatcmpl-t", created=1, model="m", include_usage=False)
    failed = {**choice("error", content=""), "native_finish_reason": "error",
              "error": CHOICE_ERROR}
    out = relay_pieces(enc, provider.stream_translator(request(stream=True), enc),
                       [sse(HEAD[0], HEAD[1], chunk([failed]), done=False)])
    c = collect(sse_chunks(out))
    assert c.content == "Hello" and not c.done
    assert c.error == {"message": "Provider returned error", "type": "rate_limit_error",
                       "param": None, "code": "429", "metadata": CHOICE_ERROR["metadata"]}


def test_openrouter_non_streamed_choice_error_is_the_answers_error() -> None:
    provider, _ = build("openrouter")
    answer = orjson.loads(_answer("error", ""))
    answer["choices"][0]["error"] = CHOICE_ERROR
    with pytest.raises(UpstreamStatusError) as caught:
        provider.translate_response(orjson.dumps(answer), request(), completion_id="c",
                                    created=1)
    assert caught.value.status == 429 and caught.value.usage == USAGE
    assert caught.value.to_dict()["error"] == {
        "message": "Provider returned error", "type": "rate_limit_error", "param": None,
        "code": "429", "metadata": CHOICE_ERROR["metadata"]}


# OpenRouter's usage rides on a chunk of its own after the finish chunk, whose choice says
# nothing (`delta: {"role": "assistant", "content": ""}`, finish null) — as recorded by its
# clients (speakeasy-api/gram#921, a Venice and a Parasail stream quoted in other projects).
OPENROUTER_TAIL = sse(HEAD[0], HEAD[1], chunk([{**choice("stop", role="assistant", content=""),
                                                "native_finish_reason": "stop"}]),
                      chunk([{**choice(None, role="assistant", content=""),
                              "native_finish_reason": None}], usage={**USAGE, "cost": 0.0001}))


# Its usage may also ride on a second finish chunk (the finish repeated, the content empty),
# as in a stream an OpenRouter client's tests quote from OpenRouter's docs.
OPENROUTER_FINISH_TWICE = sse(HEAD[0], chunk([{**choice("stop", content="Hello"),
                                               "native_finish_reason": "stop"}]),
                              chunk([{**choice("stop", content=""),
                                      "native_finish_reason": "stop"}],
                                    usage={**USAGE, "cost": 0.0004}))


@pytest.mark.parametrize("usage", [True, False])
@pytest.mark.parametrize(("body", "cost"), [(OPENROUTER_TAIL, 0.0001),
                                            (OPENROUTER_FINISH_TWICE, 0.0004)],
                         ids=["after-the-finish", "on-a-repeated-finish"])
async def test_openrouter_usage_leaves_nothing_after_the_finish(
        proxy: Any, upstream: Any, usage: bool, body: bytes, cost: float) -> None:
    """Its usage moved to a usage chunk, the chunk it rode on went on without it: a choice
    after the finish chunk, which OpenAI never sends (and, usage not asked for, a chunk of
    nothing), or the repeated finish as a second finish of the same choice (OpenAI finishes a
    choice once)."""
    chunks = await stream(proxy, upstream, "openrouter", body, usage=usage)
    assert_finish_last(chunks)
    c = collect(chunks)
    assert c.content == "Hello" and c.finish_reason == "stop" and c.done
    assert c.usage == ({**USAGE, "cost": cost} if usage else None)
    assert len(usage_chunks(chunks)) == usage


def _relayed(kind: str, body: bytes, pieces: list[bytes], encoder: type, **req: Any) -> bytes:
    provider, _ = build(kind)
    enc = encoder(completion_id="chatcmpl-t", created=1, model="m", include_usage=False)
    tr = provider.stream_translator(request(stream=True, **req), enc)
    return relay_pieces(enc, tr, pieces)


@pytest.mark.parametrize("kind", ["openrouter", "together"])
def test_a_role_repeated_on_every_delta_reaches_the_client_once(kind: str) -> None:
    """Fast path and decoder alike, at any split: the first delta keeps the role, the others
    lose it, and a text that speaks of it (escaped in JSON) is left whole."""
    text = 'say "role":"assistant", then'
    deltas = [{"role": "assistant", "content": t} for t in ("", "Hi", text, "!", "")]
    if kind == "together":
        deltas = [{"token_id": 30, **d, "tool_calls": None} for d in deltas]
    body = sse(*(chunk([choice("stop" if i == 4 else None, **d)]) for i, d in enumerate(deltas)))
    rng = random.Random(3)
    outs = set()
    for encoder in (ChunkEncoder, DecodingEncoder):
        for pieces in [[body], *(random_splits(body, rng, max_piece=50) for _ in range(10))]:
            outs.add(_relayed(kind, body, pieces, encoder))
    [out] = outs
    chunks = sse_chunks(out)
    assert [c["choices"][0]["delta"].get("role") for c in chunks[:-1]] == [
        "assistant", None, None, None, None]
    assert collect(chunks).content == "Hi" + text + "!"
    # with n > 1 each choice's first delta has it: left as it came
    assert _relayed(kind, body, [body], ChunkEncoder, n=2) == body


@pytest.mark.parametrize("kind", ["openrouter", "openai"])
async def test_a_non_streamed_200_carrying_an_error_is_that_error(proxy: Any, upstream: Any,
                                                                   kind: str) -> None:
    """OpenRouter answers 200 once the model has started, with a later failure as the body
    (its errors page): the client gets the error's status, which retries and fallbacks act on."""
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps({"error": {"code": 502, "message": "Provider returned error",
                                            "metadata": {"provider_name": "x"}}})
    client = await proxy(provider_config(kind, upstream.url))
    resp = await client.post("/v1/chat/completions", json={"model": "m", "messages": HI})
    assert resp.status == 502
    assert (await resp.json())["error"]["message"] == "Provider returned error"
    provider, _ = build(kind)
    answer = _answer("stop", 'say "error"')  # the word in a completion: an answer still
    assert provider.translate_response(answer, request(), completion_id="c",
                                       created=1) == answer


# -- DeepSeek --------------------------------------------------------------------------------
async def test_deepseek_reasoning_content_passes_through_unchanged(proxy: Any,
                                                                   upstream: Any) -> None:
    thinking = chunk([choice(content=None, reasoning_content="Think.")])
    upstream.body = sse(chunk([choice(role="assistant", content=None, reasoning_content="")]),
                        thinking, chunk([choice(content="Done.", reasoning_content=None)]),
                        chunk([choice("stop", content="")]), chunk([], usage=USAGE))
    client = await proxy(provider_config("deepseek", upstream.url))
    resp = await client.post("/v1/chat/completions", json={
        "model": "deepseek-reasoner", "stream": True, "messages": HI,
        "stream_options": {"include_usage": True}})
    out = await resp.read()
    assert b"data: " + orjson.dumps(thinking) + b"\n\n" in out  # forwarded byte for byte
    c = collect(sse_chunks(out))
    assert (c.reasoning, c.content, c.finish_reason, c.usage) == ("Think.", "Done.", "stop",
                                                                  USAGE)


# DeepSeek refuses the developer role: "Failed to deserialize the JSON body into the target type:
# messages[0].role: unknown variant `developer`, expected one of `system`, `user`, `assistant`,
# `tool`" (earendil-works/pi#1048, eclipse-theia/theia#15144).
async def test_deepseek_developer_messages_go_as_system(proxy: Any, upstream: Any) -> None:
    messages = [{"role": "developer", "content": "Be brief."}, *HI]
    chunks = await stream(proxy, upstream, "deepseek", MISTRAL, messages=messages)
    assert collect(chunks).content == "Hello world"
    sent = upstream.requests[0].json()["messages"]
    assert sent == [{"role": "system", "content": "Be brief."}, *HI]


# DeepSeek documents only `max_tokens` and silently ignores `max_completion_tokens` — the cap
# the openai SDK sends: "max_completion_tokens: 5 -> 76 output tokens, finish=stop (limit
# ignored); max_tokens: 5 -> 5 output tokens, finish=length" (earendil-works/pi#8018; Portkey's
# DeepSeek config maps it to max_tokens alike).
async def test_deepseek_gets_max_completion_tokens_as_max_tokens(proxy: Any,
                                                                 upstream: Any) -> None:
    await stream(proxy, upstream, "deepseek", MISTRAL, max_completion_tokens=5)
    sent = upstream.requests[0].json()
    assert sent["max_tokens"] == 5 and "max_completion_tokens" not in sent


@pytest.mark.parametrize(("given", "sent"), [
    ({"max_completion_tokens": 5, "max_tokens": 9}, {"max_tokens": 5}),
    ({"max_completion_tokens": None, "max_tokens": 9}, {"max_tokens": 9}),
    ({"max_completion_tokens": None}, {}),
])
def test_deepseek_max_completion_tokens_wins_over_max_tokens(given: dict[str, Any],
                                                             sent: dict[str, Any]) -> None:
    provider, _ = build("deepseek")
    body = {"model": "m", "messages": HI, **given}
    assert provider.adapt_body(body) == {"model": "m", "messages": HI, **sent}
    assert body == {"model": "m", "messages": HI, **given}  # the client's body is left as is


def test_deepseek_body_without_a_developer_message_is_not_rebuilt() -> None:
    provider, _ = build("deepseek")
    body = {"model": "m", "messages": [{"role": "system", "content": "s"}, *HI]}
    assert provider.adapt_body(body) is body


# DeepSeek's thinking mode (its default on V4; deepseek-reasoner) refuses an assistant turn with
# tool calls sent back without its reasoning: "Missing `reasoning_content` field in the assistant
# message at message index 2" (continuedev/continue#9831, deepseek-ai/DeepSeek-V3#1053), and V4
# Pro refuses it empty too (NousResearch/hermes-agent#17341, HKUDS/nanobot#946) — a loop begun
# on another provider, or a client that keeps only content and tool calls, failed on its second
# step. Reasoning under another name is that reasoning; with none, a blank stand-in.
CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


@pytest.mark.parametrize(("fields", "sent"), [
    ({}, " "),
    ({"reasoning_content": ""}, " "),
    ({"reasoning_content": None}, " "),
    ({"reasoning": "Use f."}, "Use f."),  # OpenRouter's, Groq's, vLLM's name
    ({"reasoning_details": [{"type": "reasoning.text", "text": "Use f.", "index": 0}]}, "Use f."),
    ({"reasoning_content": "Mine.", "reasoning": "Other."}, "Mine."),
])
def test_deepseek_tool_turn_always_carries_reasoning_content(fields: dict[str, Any],
                                                             sent: str) -> None:
    provider, _ = build("deepseek")
    turn = {"role": "assistant", "content": None, "tool_calls": [CALL], **fields}
    messages = [*HI, turn, {"role": "tool", "tool_call_id": "c1", "content": "ok"}]
    body = {"model": "deepseek-reasoner", "messages": messages}
    out = provider.adapt_body(body)["messages"]
    assert out[1] == {**turn, "reasoning_content": sent}
    assert out[0] == HI[0] and out[2] == messages[2]
    assert body["messages"][1] == turn  # the client's body is left as is


def test_deepseek_turn_without_tool_calls_is_left_as_is() -> None:
    # Outside a tool loop DeepSeek ignores the reasoning of earlier turns (its thinking-mode
    # guide): nothing is added.
    provider, _ = build("deepseek")
    body = {"model": "m", "messages": [*HI, {"role": "assistant", "content": "Hello"},
                                       {"role": "assistant", "content": "x", "tool_calls": []},
                                       {"role": "user", "content": "again"}]}
    assert provider.adapt_body(body) is body


async def test_deepseek_gets_reasoning_back_on_a_loop_begun_elsewhere(proxy: Any,
                                                                      upstream: Any) -> None:
    turn = {"role": "assistant", "content": "Checking.", "reasoning": "Need f.",
            "tool_calls": [CALL]}
    messages = [*HI, turn, {"role": "tool", "tool_call_id": "c1", "content": "ok"}]
    await stream(proxy, upstream, "deepseek", MISTRAL, messages=messages)
    assert upstream.requests[0].json()["messages"][1]["reasoning_content"] == "Need f."


# Groq: "The following fields are currently not supported and will result in a 400 error …:
# logprobs, logit_bias, top_logprobs, messages[].name" (console.groq.com/docs/openai); and
# "'messages.1' : for 'role:assistant' the following must be satisfied[('messages.1' : property
# 'reasoning_content' is unsupported)]" (janhq/jan#8136).
async def test_groq_request_drops_what_groq_refuses(proxy: Any, upstream: Any) -> None:
    messages = [{"role": "system", "content": "s", "name": "rules"},
                {"role": "user", "content": "hi", "name": "ann"},
                {"role": "assistant", "content": "Hello", "reasoning_content": "Greet."},
                {"role": "user", "content": "again"}]
    await stream(proxy, upstream, "groq", GROQ, messages=messages, logprobs=True,
                 top_logprobs=2, logit_bias={"50256": -100}, temperature=0.5)
    sent = upstream.requests[0].json()
    assert sent["messages"] == [{"role": "system", "content": "s"},
                                {"role": "user", "content": "hi"},
                                {"role": "assistant", "content": "Hello"},
                                {"role": "user", "content": "again"}]
    assert sent["temperature"] == 0.5
    assert not {"logprobs", "top_logprobs", "logit_bias"} & sent.keys()


# Groq: "'messages.2' : for 'role:assistant' the following must be satisfied[('messages.2' :
# property 'annotations' is unsupported)]", likewise 'refusal' — what the openai SDK sends back
# when a client appends the answer's message object (the gateway's own answers carry
# `refusal: null`), so the second turn of a tool loop failed.
async def test_groq_drops_the_answer_only_fields_of_an_appended_message(proxy: Any,
                                                                        upstream: Any) -> None:
    upstream.body = GROQ
    test_client = await proxy(provider_config("groq", upstream.url))
    client = openai.AsyncOpenAI(base_url=str(test_client.make_url("/v1")), api_key="x",
                                max_retries=0)
    answer = ChatCompletionMessage.model_validate({
        "role": "assistant", "content": "Hello", "refusal": None, "annotations": [],
        "audio": None})
    out = await client.chat.completions.create(model="m", stream=True, messages=[
        *HI, answer, {"role": "user", "content": "again"}])
    async for _ in out:
        pass
    assert upstream.requests[0].json()["messages"] == [
        *HI, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "again"}]


async def test_groq_drops_the_gateways_own_fields_of_an_answer_sent_back(proxy: Any,
                                                                         upstream: Any) -> None:
    """An answer the gateway translated (Claude's or Gemini's thinking, a Gemini image model's
    pictures) carries `thinking_blocks` and `images`, which a client sends back with the
    message; Groq refuses any message key it does not know with a 400, so a conversation that
    falls back or is balanced from Anthropic or Gemini to Groq failed there."""
    answer = {"role": "assistant", "content": "Hello", "reasoning_content": "Greet.",
              "thinking_blocks": [{"type": "thinking", "thinking": "Greet.",
                                   "signature": "c2ln"}],
              "images": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"},
                          "index": 0}]}
    await stream(proxy, upstream, "groq", GROQ, messages=[*HI, answer,
                                                          {"role": "user", "content": "again"}])
    assert upstream.requests[0].json()["messages"] == [
        *HI, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "again"}]


# xAI: 400 {"code": "Client specified an invalid argument", "error": "Only messages of role
# 'user' can have a name."} (BerriAI/litellm#9720, microsoft/autogen#4715).
async def test_xai_keeps_name_on_user_messages_only(proxy: Any, upstream: Any) -> None:
    messages = [{"role": "system", "content": "Example.", "name": "example_user"},
                {"role": "user", "content": "hi", "name": "ann"},
                {"role": "assistant", "content": "Hello", "name": "bot"},
                {"role": "user", "content": "again"}]
    await stream(proxy, upstream, "xai", XAI, messages=messages)
    assert upstream.requests[0].json()["messages"] == [
        {"role": "system", "content": "Example."}, {"role": "user", "content": "hi", "name": "ann"},
        {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "again"}]


# xAI counts reasoning tokens beside completion_tokens, in total_tokens only (docs.x.ai
# "consumption and rate limits"; Vertex AI's Grok page: completion 50, reasoning 124, prompt 663,
# total 837); OpenAI's completion_tokens include them (vercel/ai#12425, langchain#34603).
XAI_USAGE = {"prompt_tokens": 663, "completion_tokens": 50, "total_tokens": 837,
             "completion_tokens_details": {"reasoning_tokens": 124}}
OPENAI_USAGE = {**XAI_USAGE, "completion_tokens": 174}


@pytest.mark.parametrize("body", [
    sse(*HEAD, chunk([choice("stop")], usage=XAI_USAGE), chunk([])),  # on the finish chunk
    sse(*HEAD, chunk([choice("stop")]), chunk([], usage=XAI_USAGE)),  # a usage chunk
])
async def test_xai_reasoning_tokens_count_as_completion_tokens(proxy: Any, upstream: Any,
                                                               body: bytes,
                                                               access_log: Any) -> None:
    """As they were, a client (and the access log) counted the answer's output without its
    reasoning: a grok reasoning model's cost came out a third, or a tenth, of the bill."""
    c = collect(await stream(proxy, upstream, "xai", body))
    assert c.usage == OPENAI_USAGE and c.done
    assert access_log()[-1]["completion_tokens"] == 174
    # already counted as OpenAI counts them: left alone
    c = collect(await stream(proxy, upstream, "xai", body.replace(b'"completion_tokens":50',
                                                                  b'"completion_tokens":174')))
    assert c.usage == OPENAI_USAGE


def test_xai_non_streamed_reasoning_tokens_count_as_completion_tokens() -> None:
    provider, _ = build("xai")
    answer = orjson.loads(_answer("stop"))
    body = orjson.dumps({**answer, "usage": XAI_USAGE})
    out = orjson.loads(provider.translate_response(body, request(), completion_id="c", created=1))
    assert out == {**answer, "usage": OPENAI_USAGE}


# -- Mistral request -------------------------------------------------------------------------
TOOLS = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
         for n in ("a", "b")]


async def test_mistral_request_on_the_wire(proxy: Any, upstream: Any) -> None:
    call = {"id": "c1a2B3d4E", "type": "function", "function": {"name": "a", "arguments": "{}"}}
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "hi", "name": "ann"},
        {"role": "assistant", "content": None, "refusal": None, "tool_calls": [call],
         "reasoning_content": "r"},
        {"role": "tool", "tool_call_id": "c1a2B3d4E", "content": "ok"},
    ]
    await stream(proxy, upstream, "mistral", MISTRAL, tools=TOOLS, tool_choice="required",
                 max_completion_tokens=64, seed=5, user="u1", logprobs=True,
                 parallel_tool_calls=False, temperature=0.3, messages=messages)
    [sent] = upstream.requests
    assert sent.path == "/chat/completions"
    assert sent.headers["Authorization"] == "Bearer sk-test-secret"
    assert sent.json() == {
        "model": "m", "stream": True, "tools": TOOLS, "tool_choice": "any", "max_tokens": 64,
        "random_seed": 5, "parallel_tool_calls": False, "temperature": 0.3,
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "hi"},
                     {"role": "assistant", "content": None, "tool_calls": [call]},
                     {"role": "tool", "content": "ok", "tool_call_id": "c1a2B3d4E"}]}


async def test_mistral_gets_no_prompt_cache_parameters(proxy: Any, upstream: Any) -> None:
    # OpenAI's prompt-caching parameters (openai SDK arguments): Mistral has neither and
    # refuses a field it does not know (422 extra_forbidden), so a request that set one failed.
    await stream(proxy, upstream, "mistral", MISTRAL, prompt_cache_key="user-1",
                 prompt_cache_retention="24h", messages=[{"role": "user", "content": "hi"}])
    assert upstream.requests[0].json() == {
        "model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


def tool_history(call_id: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": call_id, "type": "function",
                 "function": {"name": "a", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": call_id, "content": "sunny"}]


def sent_ids(body: dict[str, Any]) -> tuple[str, str]:
    _, assistant, tool = body["messages"]
    return assistant["tool_calls"][0]["id"], tool["tool_call_id"]


@pytest.mark.parametrize("call_id", [
    "call_abc123XYZ", "toolu_01A09q90qw90lq917835lq9", "call_0123456789abcdef01234567",
    "c1", "abc-12345", "abcdefghij"])
def test_mistral_tool_call_ids_become_nine_alphanumerics(call_id: str) -> None:
    # Mistral: "Tool call id … must be a-z, A-Z, 0-9, with a length of 9" — ids from another
    # provider (e.g. after a fallback) are mapped; a call and its result to the same id.
    provider, _ = build("mistral")
    body = {"model": "m", "messages": tool_history(call_id)}
    call, result = sent_ids(provider.adapt_body(body))
    assert call == result and re.fullmatch(r"[A-Za-z0-9]{9}", call)
    # The same id maps alike in the conversation's next request; other ids do not collide.
    assert sent_ids(provider.adapt_body({"model": "m", "messages": tool_history(call_id)})) == \
        (call, call)
    assert sent_ids(provider.adapt_body({"model": "m",
                                         "messages": tool_history(call_id + "x")}))[0] != call
    # The client's body (reused by a fallback to another target) is left as it was.
    assert sent_ids(body) == (call_id, call_id)


def test_mistral_own_ids_are_kept() -> None:
    provider, _ = build("mistral")
    assert sent_ids(provider.adapt_body({"model": "m",
                                         "messages": tool_history("D681PevKs")})) == \
        ("D681PevKs", "D681PevKs")


def test_mistral_calls_without_ids_get_distinct_ids_their_results_name() -> None:
    # A client replaying two calls of one turn with `id: ""` (some proxies in front of Gemini
    # send them so) answers them without ids, in order. Both calls got the id of "" (one id
    # twice in a turn), so Mistral could not tell which result answers which call.
    provider, _ = build("mistral")
    calls = [{"id": "", "type": "function", "function": {"name": n, "arguments": "{}"}}
             for n in ("a", "b")]
    body = {"model": "m", "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "", "content": "sunny"},
        {"role": "tool", "tool_call_id": "", "content": "rain"}]}
    sent = provider.adapt_body(body)["messages"]
    first, second = (call["id"] for call in sent[1]["tool_calls"])
    assert first != second
    assert all(re.fullmatch(r"[A-Za-z0-9]{9}", i) for i in (first, second))
    assert [m["tool_call_id"] for m in sent[2:]] == [first, second]
    # The conversation's next request maps them alike; the client's body is left as it was.
    assert provider.adapt_body(body)["messages"] == sent
    assert body["messages"][1]["tool_calls"] == calls


def test_mistral_calls_that_share_an_id_get_distinct_ids_their_results_name() -> None:
    # A turn whose calls share an id (servers that number each answer's calls alike, a client
    # that copied one): both went under one id, and their results too, so Mistral could not
    # tell which result answers which call. The calls after the first of an id get ids of
    # their own, and that id's results pair with its calls in order, as results of `id: ""`.
    provider, _ = build("mistral")
    calls = [{"id": "call_0", "type": "function", "function": {"name": n, "arguments": "{}"}}
             for n in ("a", "b")]
    body = {"model": "m", "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_0", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_0", "content": "rain"}]}
    sent = provider.adapt_body(body)["messages"]
    first, second = (call["id"] for call in sent[1]["tool_calls"])
    assert first != second and first == mistral_tool_call_id("call_0")
    assert [m["tool_call_id"] for m in sent[2:]] == [first, second]
    assert provider.adapt_body(body)["messages"] == sent  # alike in the next request
    assert body["messages"][1]["tool_calls"] == calls  # the client's body is left as it was


def test_mistral_named_tool_choice_is_any_with_only_that_tool() -> None:
    provider, target = build("mistral")
    up = provider.build_request(request(tools=TOOLS, tool_choice={
        "type": "function", "function": {"name": "b"}}), target)
    body = orjson.loads(up.body)
    assert body["tool_choice"] == "any" and body["tools"] == [TOOLS[1]]
    assert "stream_options" not in body


def test_mistral_gets_no_null_seed() -> None:
    # Mistral has no `seed` and refuses the field whatever its value (422 extra_forbidden,
    # "loc": ["body", "seed"]); a client sending `"seed": null` (no seed) got that 422.
    provider, target = build("mistral")
    sent = orjson.loads(provider.build_request(request(seed=None, temperature=0.2),
                                               target).body)
    assert "seed" not in sent and "random_seed" not in sent and sent["temperature"] == 0.2
    sent = orjson.loads(provider.build_request(request(seed=7), target).body)
    assert "seed" not in sent and sent["random_seed"] == 7


@pytest.mark.parametrize(("effort", "sent"), [
    ("none", "none"), ("minimal", "none"), ("low", "high"), ("medium", "high"),
    ("high", "high"), ("xhigh", "high"), ("max", "high")])
def test_mistral_reasoning_effort_is_one_of_the_two_it_takes(effort: str, sent: str) -> None:
    """Mistral takes reasoning_effort "none" or "high" only (its docs and API schema); OpenAI's
    "low", "medium", "xhigh" went as they came, and Mistral refused a valid request."""
    provider, target = build("mistral")
    up = provider.build_request(request(reasoning_effort=effort), target)
    assert orjson.loads(up.body)["reasoning_effort"] == sent


def test_mistral_refuses_a_reasoning_effort_openai_does_not_know_as_openai_does() -> None:
    provider, target = build("mistral")
    with pytest.raises(InvalidRequest) as caught:
        provider.build_request(request(reasoning_effort="ultra"), target)
    assert (caught.value.param, caught.value.code) == ("reasoning_effort", "invalid_value")


def test_other_presets_ask_for_stream_usage() -> None:
    provider, target = build("xai")
    body = orjson.loads(provider.build_request(request(stream=True), target).body)
    assert body["stream_options"] == {"include_usage": True}


# -- the openai SDK, every preset ------------------------------------------------------------
@pytest.mark.parametrize("kind", PRESETS)
async def test_openai_sdk_streams_through_every_preset(proxy: Any, upstream: Any,
                                                       kind: str) -> None:
    upstream.body = fixture_bytes("openai/pydantic-ai_run_stream_sync.response1.sse")
    test_client = await proxy(provider_config(kind, upstream.url))
    client = openai.AsyncOpenAI(base_url=str(test_client.make_url("/v1")), api_key="x",
                                max_retries=0)
    out = await client.chat.completions.create(model="m", messages=HI, stream=True,
                                               stream_options={"include_usage": True})
    text, finish, usage = "", None, None
    async for c in out:
        usage = c.usage or usage
        for ch in c.choices:
            text += ch.delta.content or ""
            finish = ch.finish_reason or finish
    assert (text, finish) == ("The capital of the UK is London.", "stop")
    assert usage is not None and usage.total_tokens == 87
    assert upstream.requests[0].path == "/chat/completions"


# -- Mistral reasoning: content as a list of typed chunks ------------------------------------
def thinking(text: str) -> dict[str, Any]:
    return {"type": "thinking", "thinking": [{"type": "text", "text": text}]}


# As Magistral and Mistral Small 4 with reasoning_effort stream them (docs.mistral.ai,
# "Adjustable reasoning"): thinking chunks, then text chunks, usage on the finish chunk.
MISTRAL_THINKING = sse(
    chunk([choice(role="assistant", content="")]),
    chunk([choice(content=[thinking("The user")])]),
    chunk([choice(content=[thinking(" says hi.")])]),
    chunk([choice(content=[{"type": "text", "text": "Hello"}])]),
    chunk([choice(content=" world")]),
    chunk([choice("stop", content=[{"type": "text", "text": "!"}])], usage=USAGE))


async def test_mistral_thinking_chunks_become_reasoning_content(proxy: Any,
                                                                upstream: Any) -> None:
    chunks = await stream(proxy, upstream, "mistral", MISTRAL_THINKING, reasoning_effort="high")
    assert upstream.requests[0].json()["reasoning_effort"] == "high"  # forwarded, not dropped
    deltas = [c["choices"][0]["delta"] for c in chunks if isinstance(c, dict) and c["choices"]]
    assert all(d.get("content") is None or isinstance(d["content"], str) for d in deltas)
    c = collect(chunks)
    assert c.reasoning == "The user says hi."
    assert c.content == "Hello world!"
    assert c.finish_reason == "stop" and c.usage == USAGE and c.done


async def test_mistral_thinking_through_the_openai_sdk(proxy: Any, upstream: Any) -> None:
    upstream.body = MISTRAL_THINKING
    client = await proxy(provider_config("mistral", upstream.url))
    sdk = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="x",
                             http_client=None)
    text, reasoning = [], []
    async with sdk:
        async for part in await sdk.chat.completions.create(
                model="m", messages=HI, stream=True, reasoning_effort="high"):
            if part.choices:
                delta = part.choices[0].delta
                text.append(delta.content or "")
                reasoning.append(getattr(delta, "reasoning_content", None) or "")
    assert "".join(text) == "Hello world!" and "".join(reasoning) == "The user says hi."


async def test_mistral_non_streamed_thinking(proxy: Any, upstream: Any) -> None:
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps({
        "id": "x", "object": "chat.completion", "created": 1, "model": "m", "usage": USAGE,
        "choices": [{"index": 0, "finish_reason": "stop", "message": {
            "role": "assistant", "tool_calls": None,
            "content": [thinking("Hmm."), {"type": "text", "text": "Hi!"}]}}]})
    client = await proxy(provider_config("mistral", upstream.url))
    resp = await client.post("/v1/chat/completions", json={"model": "m", "messages": HI})
    message = (await resp.json())["choices"][0]["message"]
    assert message["content"] == "Hi!" and message["reasoning_content"] == "Hmm."


@pytest.mark.parametrize(("calls", "content"), [(None, ""), ([{
    "id": "abcDEF123", "type": "function", "function": {"name": "f", "arguments": "{}"}}], None)])
def test_mistral_non_streamed_answer_of_thinking_only(calls: Any, content: str | None) -> None:
    # A reasoning model cut by max_tokens while it thought: its list holds thinking alone. Its
    # stream gave the client `content: ""` (the role chunk's), as OpenAI's reasoning models
    # answer; the whole answer must say the same, not null (null only beside tool calls).
    provider, _ = build("mistral")
    body = orjson.dumps({"id": "x", "object": "chat.completion", "created": 1, "model": "m",
                         "usage": USAGE, "choices": [{
                             "index": 0, "finish_reason": "tool_calls" if calls else "length",
                             "message": {"role": "assistant", "tool_calls": calls,
                                         "content": [thinking("Hmm.")]}}]})
    answer = orjson.loads(provider.translate_response(body, request(), completion_id="c",
                                                      created=1))
    message = answer["choices"][0]["message"]
    assert message["content"] == content and message["reasoning_content"] == "Hmm."


def test_mistral_plain_answers_are_forwarded_byte_for_byte() -> None:
    provider, _ = build("mistral")
    body = orjson.dumps({"choices": [{"message": {"role": "assistant", "content": "Hi"}}]})
    assert provider.translate_response(body, request(), completion_id="c", created=1) is body


# Mistral's 422 bodies as Mistral sends them (Gage-Technologies/mistral-go#3,
# partITech/php-mistral#76); the last is FastAPI's own shape, also seen from Mistral
# (Gitlawb/openclaude#739).
_REFUSED = [{"type": "extra_forbidden", "loc": ["body", "messages", 0, "user", "name"],
             "msg": "Extra inputs are not permitted", "input": ""}]


@pytest.mark.parametrize("body", [
    {"object": "error", "message": {"detail": _REFUSED}, "type": "invalid_request_error",
     "param": None, "code": None},
    {"object": "Error", "message": _REFUSED, "type": "invalid_request_error", "code": 3001},
    {"detail": _REFUSED},
])
async def test_mistral_validation_errors_keep_what_was_refused(proxy: Any, upstream: Any,
                                                                body: dict[str, Any]) -> None:
    upstream.status = 422
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps(body)
    client = await proxy(provider_config("mistral", upstream.url))
    resp = await client.post("/v1/chat/completions", json={"model": "m", "messages": HI})
    assert resp.status == 422
    error = (await resp.json())["error"]
    assert error["message"] == "body.messages.0.user.name: Extra inputs are not permitted"
    assert error["type"] == "invalid_request_error"


# -- llama.cpp's `error:` lines ---------------------------------------------------------------
# llama.cpp's server (2024-25 builds) writes a failure met while streaming as an `error:` line,
# not `data:`, and then `data: [DONE]` (tools/server: `server_sent_event(sink, "error", …)`).
LLAMA_CPP_ERROR = (b'error: {"code":400,"message":"the request exceeds the available context '
                   b'size, try increasing it","type":"exceed_context_size_error"}\n\n'
                   b"data: [DONE]\n\n")


@pytest.mark.parametrize("kind", ["openai", "vllm"])
async def test_a_llama_cpp_error_line_mid_stream_is_an_error(proxy: Any, upstream: Any,
                                                             kind: str) -> None:
    chunks = await stream(proxy, upstream, kind, sse(*HEAD, done=False) + LLAMA_CPP_ERROR)
    c = collect(chunks)
    assert c.content == "Hello world"
    assert c.error is not None and "exceeds the available context size" in c.error["message"]
    # (a prompt over the context: OpenAI's type and code for it, not llama.cpp's own)
    assert c.error["type"] == "invalid_request_error"
    assert c.error["code"] == "context_length_exceeded"
    assert not c.done and "[DONE]" not in chunks


@pytest.mark.parametrize("kind", ["openai", "vllm"])
async def test_a_llama_cpp_error_line_before_any_output_is_an_http_error(
        proxy: Any, upstream: Any, kind: str) -> None:
    upstream.body = LLAMA_CPP_ERROR
    client = await proxy(provider_config(kind, upstream.url))
    resp = await client.post("/v1/chat/completions",
                             json={"model": "m", "stream": True, "messages": HI})
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["message"].startswith("the request exceeds the available context size")


# Groq's schema takes an assistant `reasoning` only on its reasoning models ("messages[2].
# reasoning: reasoning is not supported with this model" on kimi-k2-instruct, Llama:
# vercel/ai#8057) and no `reasoning_details` at all (OpenRouter's; Groq refuses any message key
# it does not know) — a conversation begun on OpenRouter, or balanced to Groq, failed there.
def groq_sent(model: str, turn: dict[str, Any]) -> dict[str, Any]:
    provider, _ = build("groq")
    messages = [*HI, turn, {"role": "user", "content": "again"}]
    up = provider.build_request(request(messages=messages), Target(provider, model,
                                                                   api_key="k"))
    return orjson.loads(up.body)["messages"][1]


DETAILS = [{"type": "reasoning.text", "text": "Greet.", "format": "unknown", "index": 0}]


@pytest.mark.parametrize("model", ["llama-3.3-70b-versatile", "moonshotai/kimi-k2-instruct-0905",
                                   "meta-llama/llama-4-scout-17b-16e-instruct"])
def test_groq_non_reasoning_models_get_no_reasoning_back(model: str) -> None:
    turn = {"role": "assistant", "content": "Hello", "reasoning": "Greet.",
            "reasoning_details": DETAILS}
    assert groq_sent(model, turn) == {"role": "assistant", "content": "Hello"}


@pytest.mark.parametrize("model", ["openai/gpt-oss-120b", "openai/gpt-oss-20b", "qwen/qwen3-32b"])
def test_groq_reasoning_models_keep_reasoning_but_not_openrouters_details(model: str) -> None:
    turn = {"role": "assistant", "content": "Hello", "reasoning": "Greet.",
            "reasoning_details": DETAILS}
    assert groq_sent(model, turn) == {"role": "assistant", "content": "Hello",
                                      "reasoning": "Greet."}


# Moonshot (Kimi): "thinking is enabled but reasoning_content is missing in assistant tool call
# message at index 2", a 400 (bytedance/deer-flow#3043, continuedev/continue#11711) — the rule
# DeepSeek's thinking mode has, for kimi-k2-thinking and K2.5 on (thinking by default).
@pytest.mark.parametrize(("fields", "sent"), [
    ({}, " "),
    ({"reasoning_content": ""}, " "),
    ({"reasoning_details": [{"type": "reasoning.text", "text": "Use f.", "index": 0}]}, "Use f."),
    ({"reasoning_content": "Mine."}, "Mine."),
])
def test_moonshot_tool_turn_always_carries_reasoning_content(fields: dict[str, Any],
                                                             sent: str) -> None:
    provider, _ = build("moonshot")
    turn = {"role": "assistant", "content": None, "tool_calls": [CALL], **fields}
    messages = [*HI, turn, {"role": "tool", "tool_call_id": "c1", "content": "ok"}]
    up = provider.build_request(request(messages=messages),
                                Target(provider, "kimi-k2.5", api_key="k"))
    assert orjson.loads(up.body)["messages"][1] == {**turn, "reasoning_content": sent}


# Moonshot puts a stream's usage in the finish chunk's choice (`choices[0].usage`), where no
# OpenAI client reads it (higress-group/higress#1568, earendil-works/pi#2017).
MOONSHOT = sse(*HEAD, chunk([{**choice("stop"), "usage": USAGE}]))


async def test_moonshot_usage_in_the_choice_becomes_a_usage_chunk(proxy: Any,
                                                                  upstream: Any) -> None:
    chunks = await stream(proxy, upstream, "moonshot", MOONSHOT)
    c = collect(chunks)
    assert c.content == "Hello world" and c.finish_reason == "stop" and c.done
    [only] = usage_chunks(chunks)
    assert only["choices"] == [] and only["usage"] == USAGE and chunks[-2] is only
    assert all("usage" not in ch for x in chunks if isinstance(x, dict)
               for ch in x.get("choices") or ())
    assert usage_chunks(await stream(proxy, upstream, "moonshot", MOONSHOT, usage=False)) == []


# Moonshot counts the prompt's cache hits at the top of its usage (`usage.cached_tokens`,
# platform.kimi.ai/docs/api/chat), within `prompt_tokens`: OpenAI clients, the access log and
# the cached-tokens metric read `prompt_tokens_details.cached_tokens`, and found none.
KIMI_USAGE = {**USAGE, "cached_tokens": 8}
KIMI_OPENAI_USAGE = {**KIMI_USAGE, "prompt_tokens_details": {"cached_tokens": 8}}


@pytest.mark.parametrize("body", [
    sse(*HEAD, chunk([{**choice("stop"), "usage": KIMI_USAGE}])),  # in the finish choice
    sse(*HEAD, chunk([choice("stop")]), chunk([], usage=KIMI_USAGE)),  # a usage chunk
])
@pytest.mark.parametrize("asked", [True, False])
def test_moonshot_cached_tokens_are_openai_s_cached_tokens(body: bytes, asked: bool) -> None:
    provider, _ = build("moonshot")
    enc = ChunkEncoder(completion_id="chatcmpl-t", created=1, model="m", include_usage=False)
    req = request(stream=True, stream_options={"include_usage": asked})
    chunks = sse_chunks(relay_pieces(enc, provider.stream_translator(req, enc), [body]))
    assert collect(chunks).usage == (KIMI_OPENAI_USAGE if asked else None)
    assert enc.usage_data == KIMI_OPENAI_USAGE  # what the log, metrics and store read


def test_moonshot_non_streamed_cached_tokens_are_openai_s_cached_tokens() -> None:
    provider, _ = build("moonshot")
    answer = orjson.loads(_answer("stop"))
    body = orjson.dumps({**answer, "usage": KIMI_USAGE})
    out = orjson.loads(provider.translate_response(body, request(), completion_id="c", created=1))
    assert out == {**answer, "usage": KIMI_OPENAI_USAGE}
    # a count already where OpenAI puts it is left as it came
    given = {**KIMI_USAGE, "prompt_tokens_details": {"cached_tokens": 8, "audio_tokens": 0}}
    body = orjson.dumps({**answer, "usage": given})
    assert provider.translate_response(body, request(), completion_id="c", created=1) == body


# Groq's assistant message takes the thinking back as `reasoning` on its reasoning models (its
# SDK's ChatCompletionAssistantMessageParam; console.groq.com/docs/reasoning). A turn that
# carries it under another name — DeepSeek's and our translated answers' `reasoning_content`,
# OpenRouter's `reasoning_details` — lost it: those keys are a 400 at Groq and are dropped, so
# a gpt-oss tool loop begun elsewhere (or balanced to Groq) went on without its reasoning.
@pytest.mark.parametrize("fields", [
    {"reasoning_content": "Use f."},
    {"reasoning_details": [{"type": "reasoning.text", "text": "Use f.", "index": 0}]},
    {"reasoning_content": "Use f.", "reasoning_details": DETAILS},
])
@pytest.mark.parametrize("model", ["openai/gpt-oss-120b", "qwen/qwen3-32b"])
def test_groq_reasoning_models_get_other_names_reasoning_as_reasoning(
        model: str, fields: dict[str, Any]) -> None:
    turn = {"role": "assistant", "content": None, "tool_calls": [CALL], **fields}
    assert groq_sent(model, turn) == {"role": "assistant", "content": None,
                                      "tool_calls": [CALL], "reasoning": "Use f."}


def test_groq_keeps_its_own_reasoning_and_gives_none_to_models_that_do_not_reason() -> None:
    turn = {"role": "assistant", "content": "Hi", "reasoning": "Mine.",
            "reasoning_content": "Other."}
    assert groq_sent("openai/gpt-oss-20b", turn)["reasoning"] == "Mine."
    assert "reasoning" not in groq_sent("llama-3.3-70b-versatile", turn)
    plain = {"role": "assistant", "content": "Hi"}
    assert groq_sent("openai/gpt-oss-20b", plain) == plain


# xAI's grok-4 models refuse the penalties whatever their value ("Model grok-4.5 does not
# support parameter presencePenalty.", a 400, also for 0: open-webui/open-webui#21266,
# QuantumNous/new-api#6081), and chat UIs send both as 0 when the user set none — every request
# from them failed. A 0 is no penalty, so it is not sent; another value still goes, and xAI's
# 400 names it.
def xai_sent(**params: Any) -> dict[str, Any]:
    provider, _ = build("xai")
    up = provider.build_request(request(**params), Target(provider, "grok-4.5", api_key="k"))
    return orjson.loads(up.body)


def test_xai_does_not_send_zero_penalties() -> None:
    sent = xai_sent(presence_penalty=0, frequency_penalty=0.0, temperature=0.7)
    assert "presence_penalty" not in sent and "frequency_penalty" not in sent
    assert sent["temperature"] == 0.7
    sent = xai_sent(presence_penalty=0.5, frequency_penalty=0)
    assert sent["presence_penalty"] == 0.5 and "frequency_penalty" not in sent


# Kimi K2.5 on fix their sampling (platform.kimi.ai, "Model Parameter Reference": temperature,
# top_p 0.95, n and the penalties "cannot be modified"): "invalid top_p: only 0.95 is allowed
# for this model", a 400, also for OpenAI's default top_p of 1, which chat UIs send when none
# is set (CherryHQ/cherry-studio#12691). OpenAI's defaults (top_p 1, no cut; temperature 1) are
# not sent to them; another value still goes, and Moonshot's 400 names it.
def moonshot_sent(model: str, **params: Any) -> dict[str, Any]:
    provider, _ = build("moonshot")
    return orjson.loads(provider.build_request(request(**params),
                                               Target(provider, model, api_key="k")).body)


@pytest.mark.parametrize("model", ["kimi-k2.5", "kimi-k2.6", "kimi-k2.5-preview"])
def test_moonshot_fixed_sampling_models_get_no_default_sampling(model: str) -> None:
    sent = moonshot_sent(model, top_p=1, temperature=1.0, max_tokens=9)
    assert "top_p" not in sent and "temperature" not in sent and sent["max_tokens"] == 9
    sent = moonshot_sent(model, top_p=0.5, temperature=0.2)
    assert sent["top_p"] == 0.5 and sent["temperature"] == 0.2


@pytest.mark.parametrize("model", ["kimi-k2-thinking", "kimi-k2-0905-preview", "moonshot-v1-8k"])
def test_moonshot_models_of_free_sampling_get_it_as_sent(model: str) -> None:
    sent = moonshot_sent(model, top_p=1, temperature=1.0)
    assert sent["top_p"] == 1 and sent["temperature"] == 1.0


# DeepSeek counts the prompt's cache hits at the top of its usage (`prompt_cache_hit_tokens`,
# beside `prompt_cache_miss_tokens`, the two summing to `prompt_tokens`: api-docs.deepseek.com,
# "Context Caching"), where no OpenAI client, nor the access log or the cached-tokens metric,
# reads them (mozilla-ai/any-llm#795, NousResearch/hermes-agent#61871).
DEEPSEEK_USAGE = {**USAGE, "prompt_cache_hit_tokens": 8, "prompt_cache_miss_tokens": 3}
DEEPSEEK_OPENAI_USAGE = {**DEEPSEEK_USAGE, "prompt_tokens_details": {"cached_tokens": 8}}


@pytest.mark.parametrize("body", [
    sse(*HEAD, chunk([choice("stop")]), chunk([], usage=DEEPSEEK_USAGE)),  # a usage chunk
    sse(*HEAD, chunk([choice("stop")], usage=DEEPSEEK_USAGE)),  # on the finish chunk
])
@pytest.mark.parametrize("asked", [True, False])
def test_deepseek_cache_hits_are_openai_s_cached_tokens(body: bytes, asked: bool) -> None:
    provider, _ = build("deepseek")
    enc = ChunkEncoder(completion_id="chatcmpl-t", created=1, model="m", include_usage=False)
    req = request(stream=True, stream_options={"include_usage": asked})
    chunks = sse_chunks(relay_pieces(enc, provider.stream_translator(req, enc), [body]))
    assert collect(chunks).usage == (DEEPSEEK_OPENAI_USAGE if asked else None)
    assert enc.usage_data == DEEPSEEK_OPENAI_USAGE  # what the log, metrics and store read


def test_deepseek_non_streamed_cache_hits_are_openai_s_cached_tokens() -> None:
    provider, _ = build("deepseek")
    answer = orjson.loads(_answer("stop"))
    body = orjson.dumps({**answer, "usage": DEEPSEEK_USAGE})
    out = orjson.loads(provider.translate_response(body, request(), completion_id="c", created=1))
    assert out == {**answer, "usage": DEEPSEEK_OPENAI_USAGE}
    # a count already where OpenAI puts it is left as it came
    given = {**DEEPSEEK_USAGE, "prompt_tokens_details": {"cached_tokens": 8}}
    body = orjson.dumps({**answer, "usage": given})
    assert provider.translate_response(body, request(), completion_id="c", created=1) == body


# Groq's reasoning models take their own reasoning_effort values (console.groq.com/docs/
# reasoning): Qwen 3 "none" or "default" ("`reasoning_effort` must be one of `none` or
# `default`", a 400, to OpenAI's levels: earendil-works/pi#1745), gpt-oss low, medium, high.
# OpenAI's levels from a client (the openai SDK's, a chat UI's) failed every request.
def groq_effort_sent(model: str, effort: str) -> Any:
    provider, _ = build("groq")
    req = request(reasoning_effort=effort)
    up = provider.build_request(req, Target(provider, model, api_key="k"))
    return orjson.loads(up.body).get("reasoning_effort")


@pytest.mark.parametrize(("effort", "sent"), [
    ("none", "none"), ("minimal", "default"), ("low", "default"), ("medium", "default"),
    ("high", "default"), ("xhigh", "default"), ("max", "default"), ("default", "default"),
])
@pytest.mark.parametrize("model", ["qwen/qwen3-32b", "qwen/qwen3.6-27b"])
def test_groq_qwen_reasoning_effort_is_one_qwen_takes(model: str, effort: str,
                                                      sent: str) -> None:
    assert groq_effort_sent(model, effort) == sent


@pytest.mark.parametrize(("effort", "sent"), [
    ("none", "low"), ("minimal", "low"), ("low", "low"), ("medium", "medium"),
    ("high", "high"), ("xhigh", "high"), ("max", "high"),
])
def test_groq_gpt_oss_reasoning_effort_is_one_gpt_oss_takes(effort: str, sent: str) -> None:
    assert groq_effort_sent("openai/gpt-oss-120b", effort) == sent


def test_groq_other_models_get_reasoning_effort_as_sent() -> None:
    assert groq_effort_sent("llama-3.3-70b-versatile", "medium") == "medium"
    provider, target = build("groq")
    req = request(max_tokens=5)
    assert provider.build_request(req, target).body == orjson.dumps(
        {**req.body, "model": "some-model"})  # (no reasoning_effort: the body as it came)


# OpenRouter's own way of asking for usage (its usage-accounting docs, and the `extra_body` its
# clients send through the openai SDK): `usage: {"include": true}`, no `stream_options`. The
# stream's usage chunk, with its `cost`, was dropped as unasked for: the client never saw it.
@pytest.mark.parametrize("include", [True, False])
def test_openrouter_usage_include_asks_for_the_usage_chunk(include: bool) -> None:
    out = _relayed("openrouter", OPENROUTER_TAIL, [OPENROUTER_TAIL], ChunkEncoder,
                   usage={"include": include})
    chunks = sse_chunks(out)
    assert collect(chunks).usage == ({**USAGE, "cost": 0.0001} if include else None)
    assert len(usage_chunks(chunks)) == include


# OpenRouter's reasoning effort has two names, `reasoning_effort` and `reasoning.effort` (or a
# budget, `reasoning.max_tokens`, one or the other), and refuses both when they differ. A
# config's override under one name went beside the client's under the other: every such
# request was OpenRouter's 400, the operator's setting never applied.
@pytest.mark.parametrize(("override", "client", "sent"), [
    ({"reasoning_effort": "low"}, {"reasoning": {"effort": "high", "exclude": True}},
     {"reasoning_effort": "low", "reasoning": {"exclude": True}}),
    ({"reasoning_effort": "low"}, {"reasoning": {"max_tokens": 8000}},
     {"reasoning_effort": "low"}),
    ({"reasoning": {"max_tokens": 2000}}, {"reasoning_effort": "high"},
     {"reasoning": {"max_tokens": 2000}}),
    # (an override that sets no effort leaves the client's)
    ({"reasoning": {"exclude": True}}, {"reasoning_effort": "high"},
     {"reasoning": {"exclude": True}, "reasoning_effort": "high"}),
])
def test_an_overrides_reasoning_effort_replaces_the_requests_under_either_name(
        override: dict[str, Any], client: dict[str, Any], sent: dict[str, Any]) -> None:
    provider, _ = build("openrouter")
    target = Target(provider, "anthropic/claude-sonnet-4", api_key="k",
                    override_params=override)
    body = orjson.loads(provider.build_request(request(**client), target).body)
    assert {k: body[k] for k in ("reasoning_effort", "reasoning") if k in body} == sent


def test_a_targets_reasoning_effort_replaces_its_parents_under_either_name() -> None:
    from streamproxy.routing.portkey_config import parse_config
    node = parse_config({"override_params": {"reasoning_effort": "high", "temperature": 0.5},
                         "strategy": {"mode": "single"},
                         "targets": [{"override_params": {"reasoning": {"max_tokens": 900}}}]})
    assert node.leaves()[0].override_params == {"temperature": 0.5,
                                                "reasoning": {"max_tokens": 900}}
