"""Bedrock ConverseStream: the recorded stream translates exactly (fixtures/README.md) at random
splits, pure and through the proxy; exception frames and truncation end in an error frame; the
request a fake Bedrock receives is the right Converse body, signed with SigV4 (verified here by
an independent implementation of the algorithm) or carrying a Bedrock API key; the openai SDK
works end to end. Streams not in the recordings are built with tests/eventstream_frames.py."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import random
import re
import struct
import threading
import time
import zlib
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import quote

import botocore.session
import orjson
import pydantic
import pytest
from aiohttp import web
from botocore.credentials import RefreshableCredentials
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproxy.config import ConfigError, parse_config
from streamproxy.errors import AuthenticationFailed, InvalidRequest, ProxyError
from streamproxy.openai_api.chunks import ChunkEncoder
from streamproxy.openai_api.request import parse_chat_request
from streamproxy.providers.bedrock import BedrockProvider
from streamproxy.providers.bedrock import auth as bedrock_auth
from streamproxy.providers.bedrock.request import (
    DROPPED,
    PASSTHROUGH,
    STRUCTURED_OUTPUTS,
    to_converse,
)
from streamproxy.providers.bedrock.response import to_completion
from streamproxy.providers.bedrock.stream import BedrockStreamTranslator
from streamproxy.routing.target import Target
from tests.eventstream_frames import encode_frame, event, exception, split_frames
from tests.helpers import (
    DecodingEncoder,
    Received,
    assert_finish_last,
    assert_splice_matches_decoding,
    calls_of_every_name,
    collect,
    count_spliced_reads,
    every_turn_marked,
    fixture_bytes,
    late_system_loop,
    make_config,
    openai_sdk,
    random_splits,
    relay_pieces,
    sse_chunks,
    thinking_call,
)
from tests.test_egress import ForwardProxy

RECORDING = fixture_bytes("bedrock/pydantic-ai_bedrock_model_iter_stream.converse-stream.bin")
EXCEPTION = fixture_bytes("bedrock/vercel-ai_model-stream-error-exception.eventstream.bin")
CONTENT = ("<thinking> To find the temperature of the capital of France, I first need to "
           "determine the capital of France. Then, I can use the temperature tool to get the "
           "current temperature in that city. </thinking>\n")
EVENTSTREAM = "application/vnd.amazon.eventstream"
MODEL = "amazon.nova-micro-v1:0"
AKID, SECRET = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
TOKEN = "FwoGZXIvYXdzEXAMPLE"
CHAT = "/v1/chat/completions"


def bedrock_config(url: str, **extra: Any) -> Any:
    provider = {"type": "bedrock", "base_url": url, "region": "us-west-2",
                "aws_access_key_id": AKID, "aws_secret_access_key": SECRET,
                "default_model": MODEL, **extra}
    return make_config({"aws": {k: v for k, v in provider.items() if v is not None}},
                       default="aws")


def translate(pieces: list[bytes], include_usage: bool = True,
              encoder: type[ChunkEncoder] = ChunkEncoder) -> bytes:
    enc = encoder(completion_id="chatcmpl-t", created=1, model="m", include_usage=include_usage)
    tr = BedrockStreamTranslator(enc, 1 << 20)
    return relay_pieces(enc, tr, pieces)


def check_recording(out: bytes) -> None:
    chunks = sse_chunks(out)
    assert_finish_last(chunks)
    c = collect(chunks)
    assert c.error is None and c.done
    assert len(c.ids) == 1 and c.roles == 1
    assert c.content == CONTENT
    assert c.tool_calls == [{"id": "tooluse_QjQX34XORLu0wJVplWWHGQ", "name": "get_capital",
                             "arguments": '{"country":"France"}'}]
    assert c.finish_reason == "tool_calls"
    assert c.usage is not None
    assert (c.usage["prompt_tokens"], c.usage["completion_tokens"],
            c.usage["total_tokens"]) == (489, 59, 548)


# -- the stream, pure -------------------------------------------------------------------------

def test_recording_whole_byte_by_byte_and_at_random_splits() -> None:
    check_recording(translate([RECORDING]))
    check_recording(translate([RECORDING[i : i + 1] for i in range(len(RECORDING))]))
    rng = random.Random(7)
    for _ in range(40):
        check_recording(translate(random_splits(RECORDING, rng, rng.choice([5, 64, 700]))))



# -- runs of text deltas, spliced (providers/splice.py) -----------------------------------------

def text_delta(text: str, style: int = 0) -> bytes:
    payload = {"contentBlockIndex": 0, "delta": {"text": text}, "p": "abcXYZ09"}
    if style == 1:  # \u escapes for everything outside ASCII
        return encode_frame(DELTA_HEADERS, json.dumps(payload, separators=(",", ":")).encode())
    if style == 2:  # without the padding key
        del payload["p"]
    return event("contentBlockDelta", payload)


DELTA_HEADERS = {":event-type": "contentBlockDelta", ":content-type": "application/json",
                 ":message-type": "event"}
START, END = event("messageStart", {"role": "assistant"}), (
    event("contentBlockStop", {"contentBlockIndex": 0})
    + event("messageStop", {"stopReason": "end_turn"})
    + event("metadata", {"usage": {"inputTokens": 3, "outputTokens": 9, "totalTokens": 12}}))
OTHER_FRAMES = st.sampled_from([
    event("contentBlockDelta", {"contentBlockIndex": 1,
                                "delta": {"reasoningContent": {"text": "hm"}}, "p": "ab"}),
    event("contentBlockStart", {"contentBlockIndex": 2, "start": {
        "toolUse": {"toolUseId": "t1", "name": "f"}}}),
    event("contentBlockDelta", {"contentBlockIndex": 2, "delta": {"toolUse": {"input": "{}"}}}),
    encode_frame(DELTA_HEADERS, b'{"contentBlockIndex":0,"delta":{"text":"a","x":1}}'),
    encode_frame({":event-type": "contentBlockDelta", ":message-type": "event"},
                 b'{"contentBlockIndex":0,"delta":{"text":"other headers"}}'),
])
TEXTS = st.one_of(st.text(max_size=12), st.text(alphabet='\\"/\n\x00\x7f é🙂ab', max_size=8))


@st.composite
def bedrock_reads(draw: st.DrawFn) -> list[bytes]:
    frames = [START] + [
        draw(OTHER_FRAMES) if draw(st.integers(0, 6)) == 0
        else text_delta(draw(TEXTS), draw(st.sampled_from([0, 0, 0, 1, 2])))
        for _ in range(draw(st.integers(1, 30)))] + [END]
    reads: list[bytes] = []
    for frame in frames:  # mostly reads of many frames (the splice needs 512 bytes), some cut
        way = draw(st.integers(0, 7))
        if way == 0:
            cut = draw(st.integers(1, len(frame) - 1))
            reads += [frame[:cut], frame[cut:]]
        elif way == 1 or not reads:
            reads.append(frame)
        else:
            reads[-1] += frame
    return reads


def _bedrock(encoder: ChunkEncoder) -> BedrockStreamTranslator:
    return BedrockStreamTranslator(encoder, 1 << 20)


@settings(max_examples=300, deadline=None)
@given(bedrock_reads())
def test_spliced_text_deltas_write_what_the_decoder_path_writes(reads: list[bytes]) -> None:
    assert_splice_matches_decoding(_bedrock, reads)


def test_a_whole_body_is_spliced_past_its_first_delta(monkeypatch: pytest.MonkeyPatch) -> None:
    spliced = count_spliced_reads(monkeypatch)
    deltas = [text_delta(t) for t in ("Hel", "lo", ' "w"', "", "é", "a/b")]
    body = START + b"".join(deltas) + text_delta("x\u00e9", 1) + text_delta("z", 2) + END
    out = translate([body])
    assert out == translate([body], encoder=DecodingEncoder)
    # The first delta tells its headers; an empty text and a \\u escape end runs.
    assert spliced == [2, 2, 1]
    assert collect(sse_chunks(out)).content == 'Hello "w"éa/bxéz'
    spliced.clear()
    assert translate(split_frames(body)) == out
    assert spliced == []  # a frame a read (a paced stream): frame by frame


def test_reads_that_cut_frames_are_spliced_past_the_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    body = START + b"".join(text_delta(f"word{i}") for i in range(60)) + END
    reads = [body[i : i + 700] for i in range(0, len(body), 700)]
    spliced = count_spliced_reads(monkeypatch)
    out = translate(reads)
    assert out == translate(reads, encoder=DecodingEncoder)
    # Each read splices the whole deltas it holds, but for the first delta (which tells the
    # headers) and the ones the reads cut (each finished by the decoder in the next read).
    assert len(spliced) == len(reads) - 1 and sum(spliced) >= 60 - 1 - len(reads)


def test_a_delta_index_that_is_no_json_number_fails_as_on_the_decoder_path() -> None:
    frames = [START] + [text_delta(t) for t in "abcdefgh"] + [END]
    frames[5] = encode_frame(DELTA_HEADERS, b'{"contentBlockIndex":01,"delta":{"text":"e"}}')
    out = translate([b"".join(frames)])
    assert out == translate(frames, encoder=DecodingEncoder)
    c = collect(sse_chunks(out))
    assert c.content == "abcd" and c.error is not None


@pytest.mark.parametrize("damage", ["prelude-crc", "message-crc", "text-not-utf8"])
def test_a_damaged_frame_in_a_run_fails_as_on_the_decoder_path(damage: str) -> None:
    frames = [START] + [text_delta(t) for t in "abcdefgh"] + [END]
    bad = bytearray(frames[5])
    if damage == "prelude-crc":
        bad[9] ^= 1
    elif damage == "message-crc":
        bad[-1] ^= 1
    else:
        bad = bytearray(encode_frame(DELTA_HEADERS, b'{"contentBlockIndex":0,"delta":'
                                                    b'{"text":"\xff"},"p":"a"}'))
    frames[5] = bytes(bad)
    out = translate([b"".join(frames)])
    # What the frames before it carried still goes out, as when each frame is its own read.
    assert out == translate(frames, encoder=DecodingEncoder)
    c = collect(sse_chunks(out))
    assert c.content == "abcd" and c.error is not None and c.error["code"] == (
        "upstream_protocol_error")

@pytest.mark.parametrize("damage", ["prelude-crc", "message-crc", "lengths"])
@pytest.mark.parametrize("encoder", [ChunkEncoder, DecodingEncoder])
def test_the_frames_before_a_damaged_one_reach_the_client_whatever_the_reads(
        damage: str, encoder: type[ChunkEncoder]) -> None:
    # In a read below the splice's 512 bytes (or to a sink that takes no literals) the decoder
    # alone reads the frames: those before the damaged one must still go out, as they do when
    # each frame is its own read.
    frames = [START] + [text_delta(t) for t in "abcdefgh"] + [END]
    bad = bytearray(frames[5])
    if damage == "prelude-crc":
        bad[9] ^= 1
    elif damage == "message-crc":
        bad[-1] ^= 1
    else:  # a valid prelude CRC over lengths that cannot be
        lengths = struct.pack(">II", 8, 0)
        bad[:12] = lengths + struct.pack(">I", zlib.crc32(lengths))
    frames[5] = bytes(bad)
    for size in range(1, len(frames) + 1):
        reads = [b"".join(frames[i : i + size]) for i in range(0, len(frames), size)]
        c = collect(sse_chunks(translate(reads, encoder=encoder)))
        assert c.content == "abcd", (size, c.content)
        assert c.error is not None and c.error["code"] == "upstream_protocol_error"
        assert c.finish_reason is None and not c.done


def test_exception_frame_is_one_error_frame_with_its_status_type() -> None:
    chunks = sse_chunks(translate([EXCEPTION]))
    assert chunks == [{"error": {"message": "Model Stream Error: The model stream failed.",
                                 "type": "api_error", "param": None,
                                 "code": "modelStreamErrorException"}}]


def stream_error(payload: dict[str, Any]) -> bytes:
    return encode_frame({":message-type": "exception",
                         ":exception-type": "modelStreamErrorException"}, orjson.dumps(payload))


@pytest.mark.parametrize(("payload", "message"), [
    # The model's own words follow AWS's generic ones: they say what went wrong.
    ({"message": "Model Stream Error", "originalMessage": "Input is too long for requested "
      "model."}, "Model Stream Error: Input is too long for requested model."),
    ({"originalMessage": "Overloaded"}, "Overloaded"),  # (no message of AWS's own)
    ({"message": "Overloaded", "originalMessage": "Overloaded"}, "Overloaded"),  # said once
    ({"message": "Model Stream Error", "originalMessage": ""}, "Model Stream Error"),
    ({"message": "Model Stream Error", "originalMessage": 7}, "Model Stream Error"),
])
def test_model_stream_error_carries_the_model_s_original_message(payload: dict[str, Any],
                                                                  message: str) -> None:
    frame = stream_error(payload)
    c = collect(sse_chunks(translate([event("messageStart", {}) + frame])))
    assert c.error is not None and c.error["message"] == message


def test_model_stream_error_s_original_message_is_masked_of_the_key() -> None:
    key = "ABSKQmVkcm9ja0FQSUtleS1leGFtcGxlMTIzNDU2Nzg5"
    frame = stream_error({"message": "Model Stream Error",
                          "originalMessage": f"invalid key {key} for model"})
    enc = ChunkEncoder(completion_id="chatcmpl-t", created=1, model="m", include_usage=True)
    enc.secrets = (key,)  # as the executor sets them: the credentials sent upstream
    tr = BedrockStreamTranslator(enc, 1 << 20)
    out = relay_pieces(enc, tr, [event("messageStart", {}) + frame])
    c = collect(sse_chunks(out))
    assert key.encode() not in out
    assert c.error is not None and c.error["message"] == (
        f"Model Stream Error: invalid key …{key[-4:]} for model")


class StatusEncoder(ChunkEncoder):
    """Keeps the status of the error it is given (an error frame carries none)."""

    statuses: list[int] = []

    def error(self, err: Any) -> None:
        StatusEncoder.statuses.append(err.status)
        super().error(err)


@pytest.mark.parametrize(("original", "status", "error_type"), [
    (429, 429, "rate_limit_error"), (400, 400, "invalid_request_error"),
    (503, 503, "api_error"),
    # A status that is no error, or no number, leaves the exception's own.
    (200, 500, "api_error"), ("429", 500, "api_error"), (None, 500, "api_error"),
])
def test_model_stream_error_takes_the_model_s_original_status(original: Any, status: int,
                                                               error_type: str) -> None:
    # AWS's ModelStreamErrorException carries the status the model answered with: a 429 is a
    # rate limit a client backs off from, not a server error.
    frame = encode_frame({":message-type": "exception",
                          ":exception-type": "modelStreamErrorException"},
                         orjson.dumps({"message": "Model Stream Error",
                                       "originalStatusCode": original,
                                       "originalMessage": "Too many requests"}))
    StatusEncoder.statuses = []
    c = collect(sse_chunks(translate([event("messageStart", {}) + frame],
                                     encoder=StatusEncoder)))
    assert c.error == {"message": "Model Stream Error: Too many requests", "type": error_type,
                       "param": None, "code": "modelStreamErrorException"}
    assert StatusEncoder.statuses == [status]


@pytest.mark.parametrize(("kind", "error_type"), [
    ("throttlingException", "rate_limit_error"),
    ("validationException", "invalid_request_error"),
    ("serviceUnavailableException", "api_error"),
])
def test_exception_after_content_ends_without_finish_or_done(kind: str, error_type: str) -> None:
    frames = split_frames(RECORDING)
    c = collect(sse_chunks(translate([b"".join(frames[:6]) + exception(kind, "nope")])))
    assert c.content == "<thinking> To find the"
    assert c.error == {"message": "nope", "type": error_type, "param": None, "code": kind}
    assert c.finish_reason is None and not c.done


def test_protocol_error_frames_and_unknown_exceptions() -> None:
    start = event("messageStart", {})
    error = encode_frame({":message-type": "error", ":error-code": "InternalFailure",
                          ":error-message": "boom"}, b"")
    c = collect(sse_chunks(translate([start + error])))
    assert c.error == {"message": "boom", "type": "api_error", "param": None,
                       "code": "InternalFailure"}
    odd = encode_frame({":message-type": "exception", ":exception-type": "newException"},
                       b"not json")
    c = collect(sse_chunks(translate([start + odd])))
    assert c.error is not None and c.error["code"] == "newException" and not c.done


def test_truncation_anywhere_is_an_error_never_a_stop() -> None:
    rng = random.Random(3)
    for _ in range(30):
        cut = rng.randrange(1, len(RECORDING))
        c = collect(sse_chunks(translate([RECORDING[:cut]])))
        assert c.error is not None and c.error["code"] == "upstream_stream_truncated"
        assert not c.done and c.finish_reason in (None, "tool_calls")


def test_message_stop_without_metadata_is_reported_as_truncated() -> None:
    frames = split_frames(RECORDING)
    c = collect(sse_chunks(translate([b"".join(frames[:-1])])))
    assert c.finish_reason == "tool_calls" and c.tool_calls  # the answer itself arrived
    assert c.error is not None and "metadata" in c.error["message"] and not c.done


def test_dispatch_is_on_headers_not_on_payload_keys() -> None:
    body = b"".join([
        event("messageStart", {"role": "assistant"}),
        # A messageStop whose payload also has usage and delta keys: only its stop reason counts.
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "hi"},
                                    "usage": {"inputTokens": 999}}),
        event("messageStop", {"stopReason": "max_tokens", "delta": {"text": "no"},
                              "usage": {"inputTokens": 999}}),
        event("someFutureEvent", {"delta": {"text": "no"}}),
        event("metadata", {"usage": {"inputTokens": 3, "outputTokens": 2, "totalTokens": 5}}),
    ])
    c = collect(sse_chunks(translate([body])))
    assert c.content == "hi" and c.finish_reason == "length" and c.done
    assert c.usage["prompt_tokens"] == 3


def test_unknown_message_type_is_a_decode_error() -> None:
    frame = encode_frame({":message-type": "surprise"}, b"{}")
    c = collect(sse_chunks(translate([event("messageStart", {}) + frame])))
    assert c.error is not None and c.error["code"] == "upstream_protocol_error"


@pytest.mark.parametrize("payload", [
    {"delta": {"text": "x"}}, {"contentBlockIndex": 0, "delta": "x"}, {"contentBlockIndex": 0},
    {"contentBlockIndex": 0, "delta": None}, [1, 2],
])
def test_a_malformed_delta_after_the_first_text_delta_is_a_decode_error(payload: Any) -> None:
    # From the second text delta on, deltas take the translator's inline path: the same
    # checks must hold there as in the general dispatch.
    text = {"contentBlockIndex": 0, "delta": {"text": "a"}}
    body = b"".join([event("messageStart", {}), event("contentBlockDelta", text),
                     event("contentBlockDelta", text), event("contentBlockDelta", payload)])
    c = collect(sse_chunks(translate([body])))
    assert c.content == "aa"
    assert c.error is not None and c.error["code"] == "upstream_protocol_error" and not c.done


def test_other_deltas_with_the_text_deltas_headers_still_map() -> None:
    body = b"".join([
        event("messageStart", {}),
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "a"}}),
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": ""}}),
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "b"}}),
        event("contentBlockDelta", {"contentBlockIndex": 1,
                                    "delta": {"reasoningContent": {"text": "hmm"}}}),
        event("contentBlockStart", {"contentBlockIndex": 2,
                                    "start": {"toolUse": {"toolUseId": "t1", "name": "f"}}}),
        event("contentBlockDelta", {"contentBlockIndex": 2,
                                    "delta": {"toolUse": {"input": '{"x": 1}'}}}),
        event("messageStop", {"stopReason": "tool_use"}),
        event("metadata", {"usage": {"inputTokens": 3, "outputTokens": 2}}),
    ])
    c = collect(sse_chunks(translate([body])))
    assert c.content == "ab" and c.reasoning == "hmm" and c.done
    assert c.tool_calls == [{"id": "t1", "name": "f", "arguments": '{"x": 1}'}]


def test_tool_indices_are_ordinals_and_argless_tools_get_empty_object() -> None:
    body = b"".join([
        event("messageStart", {"role": "assistant"}),
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Two."}}),
        event("contentBlockStop", {"contentBlockIndex": 0}),
        event("contentBlockStart", {"contentBlockIndex": 1, "start": {
            "toolUse": {"toolUseId": "t1", "name": "now"}}}),
        event("contentBlockStop", {"contentBlockIndex": 1}),
        event("contentBlockStart", {"contentBlockIndex": 2, "start": {
            "toolUse": {"toolUseId": "t2", "name": "add"}}}),
        event("contentBlockDelta", {"contentBlockIndex": 2,
                                    "delta": {"toolUse": {"input": '{"a"'}}}),
        event("contentBlockDelta", {"contentBlockIndex": 2,
                                    "delta": {"toolUse": {"input": ":1}"}}}),
        event("contentBlockStop", {"contentBlockIndex": 2}),
        event("messageStop", {"stopReason": "tool_use"}),
        event("metadata", {"usage": {"inputTokens": 10, "outputTokens": 5,
                                     "cacheReadInputTokens": 100, "cacheWriteInputTokens": 7}}),
    ])
    c = collect(sse_chunks(translate([body])))
    assert [(t["id"], t["name"]) for t in c.tool_calls] == [("t1", "now"), ("t2", "add")]
    assert c.args(0) == {} and c.args(1) == {"a": 1}
    assert c.finish_reason == "tool_calls"
    assert c.usage == {"prompt_tokens": 117, "completion_tokens": 5, "total_tokens": 122,
                       "prompt_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 7},
                       "cache_read_input_tokens": 100, "cache_creation_input_tokens": 7}


@pytest.mark.parametrize(("reason", "finish"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"),
    ("tool_use", "stop"), ("guardrail_intervened", "content_filter"),
    ("content_filtered", "content_filter"),
])
def test_stop_reasons(reason: str, finish: str) -> None:
    # (no tool call in this answer: a `tool_use` without one is a stop, see below)
    body = event("messageStart", {}) + event("messageStop", {"stopReason": reason}) + \
        event("metadata", {"usage": {"inputTokens": 1, "outputTokens": 1}})
    assert collect(sse_chunks(translate([body]))).finish_reason == finish


@pytest.mark.parametrize("reason", ["end_turn", "stop_sequence", None])
def test_a_turn_with_tool_calls_finishes_with_tool_calls_whatever_stop_it_names(
        reason: str | None) -> None:
    """Some Converse models end a turn that called tools with `end_turn` (AWS's own Strands
    SDK overrides it to tool_use for that reason): the client's agent loop, which runs the
    calls when finish_reason is `tool_calls`, took the turn for a final answer."""
    stop = {"stopReason": reason} if reason else {}
    body = b"".join([
        event("messageStart", {"role": "assistant"}),
        event("contentBlockStart", {"contentBlockIndex": 0, "start": {
            "toolUse": {"toolUseId": "t1", "name": "now"}}}),
        event("contentBlockStop", {"contentBlockIndex": 0}),
        event("messageStop", stop),
        event("metadata", {"usage": {"inputTokens": 1, "outputTokens": 2}})])
    c = collect(sse_chunks(translate([body])))
    assert c.tool_calls == [{"id": "t1", "name": "now", "arguments": "{}"}]
    assert c.finish_reason == "tool_calls"
    provider = BedrockProvider(parse_config({"providers": {"b": {
        "type": "bedrock", "region": "us-east-1", "api_key": "k"}}}, "<t>").providers["b"])
    answer = orjson.dumps({"output": {"message": {"role": "assistant", "content": [
        {"toolUse": {"toolUseId": "t1", "name": "now", "input": {}}}]}}, **stop,
        "usage": {"inputTokens": 1, "outputTokens": 2}})
    completion = provider.translate_response(answer, parse_chat_request(
        b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'),
        completion_id="c", created=1)
    assert completion["choices"][0]["finish_reason"] == "tool_calls"


def test_a_tool_use_stop_without_a_tool_call_is_stop() -> None:
    # Bedrock may end a text-only answer with `tool_use` (strands-rl/strands-env#252): OpenAI
    # never says tool_calls without calls, and a client that runs `message.tool_calls` on that
    # finish (OpenAI's own examples) failed on its null.
    body = b"".join([
        event("messageStart", {"role": "assistant"}),
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Done."}}),
        event("contentBlockStop", {"contentBlockIndex": 0}),
        event("messageStop", {"stopReason": "tool_use"}),
        event("metadata", {"usage": {"inputTokens": 1, "outputTokens": 1}})])
    c = collect(sse_chunks(translate([body])))
    assert (c.content, c.tool_calls, c.finish_reason) == ("Done.", [], "stop")
    provider = BedrockProvider(parse_config({"providers": {"b": {
        "type": "bedrock", "region": "us-east-1", "api_key": "k"}}}, "<t>").providers["b"])
    answer = orjson.dumps({"output": {"message": {"role": "assistant", "content": [
        {"text": "Done."}]}}, "stopReason": "tool_use",
        "usage": {"inputTokens": 1, "outputTokens": 1}})
    whole = provider.translate_response(answer, parse_chat_request(
        b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'),
        completion_id="c", created=1)
    assert isinstance(whole, dict) and whole["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("reason", ["malformed_tool_use", "malformed_model_output"])
def test_stop_reasons_that_mean_no_usable_answer_are_errors(reason: str) -> None:
    # A tool call's input cut or invalid: never a clean finish around partial arguments.
    body = b"".join([
        event("messageStart", {"role": "assistant"}),
        event("contentBlockStart", {"contentBlockIndex": 0, "start": {
            "toolUse": {"toolUseId": "t1", "name": "a"}}}),
        event("contentBlockDelta", {"contentBlockIndex": 0,
                                    "delta": {"toolUse": {"input": '{"x": '}}}),
        event("contentBlockStop", {"contentBlockIndex": 0}),
        event("messageStop", {"stopReason": reason}),
        event("metadata", {"usage": {"inputTokens": 1, "outputTokens": 2}})])
    c = collect(sse_chunks(translate([body])))
    assert c.finish_reason is None and not c.done
    assert c.error is not None and c.error["code"] == reason
    provider = BedrockProvider(parse_config({"providers": {"b": {
        "type": "bedrock", "region": "us-east-1", "api_key": "k"}}}, "<t>").providers["b"])
    answer = orjson.dumps({"output": {"message": {"role": "assistant", "content": [
        {"toolUse": {"toolUseId": "t1", "name": "a", "input": {}}}]}}, "stopReason": reason,
        "usage": {"inputTokens": 1, "outputTokens": 2}})
    with pytest.raises(ProxyError) as failed:
        provider.translate_response(answer, parse_chat_request(
            b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'),
            completion_id="c", created=1)
    assert failed.value.status == 502 and failed.value.code == reason



def failed_recording(reason: str = "malformed_tool_use") -> bytes:
    """The recording with its messageStop's reason a failed one, metadata (489/59) after it."""
    frames = split_frames(RECORDING)
    stop = next(i for i, f in enumerate(frames) if b"messageStop" in f)
    return b"".join([*frames[:stop], event("messageStop", {"stopReason": reason}),
                     *frames[stop + 1:]])


def test_a_failed_stop_keeps_the_metadatas_usage_at_any_split() -> None:
    # The error leaves at messageStop; the metadata after it still gives the answer's usage
    # (access log, metrics), and nothing more reaches the client.
    body = failed_recording()
    rng = random.Random(17)
    splits = [[body], [body[i : i + 1] for i in range(len(body))]] + [
        random_splits(body, rng, rng.choice([5, 64, 700])) for _ in range(40)]
    for pieces in splits:
        enc = ChunkEncoder(completion_id="c", created=1, model="m", include_usage=True)
        tr = BedrockStreamTranslator(enc, 1 << 20)
        out = relay_pieces(enc, tr, pieces)
        c = collect(sse_chunks(out))
        assert c.content == CONTENT and c.finish_reason is None and not c.done
        assert c.error is not None and c.error["code"] == "malformed_tool_use"
        assert out.endswith(b"\n\n") and out.rindex(b"data: ") == out.index(b'data: {"error"')
        assert tr.done and enc.usage_data is not None
        assert (enc.usage_data["prompt_tokens"], enc.usage_data["completion_tokens"]) == (489, 59)


def test_after_a_failed_stop_only_the_metadata_is_read() -> None:
    stray = text_delta("late") + event("contentBlockStart", {"contentBlockIndex": 3, "start": {
        "toolUse": {"toolUseId": "t9", "name": "late"}}})
    body = b"".join([START, text_delta("Hi"), event("messageStop", {
        "stopReason": "malformed_model_output"}), stray, event("metadata", {"usage": {
            "inputTokens": 11, "outputTokens": 4}}), text_delta("after the end")])
    for pieces in ([body], [body[i : i + 1] for i in range(len(body))]):
        enc = ChunkEncoder(completion_id="c", created=1, model="m", include_usage=True)
        tr = BedrockStreamTranslator(enc, 1 << 20)
        c = collect(sse_chunks(relay_pieces(enc, tr, pieces)))
        assert c.content == "Hi" and not c.tool_calls
        assert c.error is not None and c.error["code"] == "malformed_model_output"
        assert enc.usage_data is not None and enc.usage_data["prompt_tokens"] == 11
    # An exception instead of the metadata ends it too; the first error stands.
    enc = ChunkEncoder(completion_id="c", created=1, model="m", include_usage=True)
    tr = BedrockStreamTranslator(enc, 1 << 20)
    c = collect(sse_chunks(relay_pieces(enc, tr, [
        START, event("messageStop", {"stopReason": "malformed_model_output"}),
        exception("throttlingException", "slow down")])))
    assert tr.done and c.error is not None and c.error["code"] == "malformed_model_output"


THINKING = [
    event("messageStart", {"role": "assistant"}),
    event("contentBlockDelta", {"contentBlockIndex": 0,
                                "delta": {"reasoningContent": {"text": "Paris is "}}}),
    event("contentBlockDelta", {"contentBlockIndex": 0,
                                "delta": {"reasoningContent": {"text": "the capital."}}}),
    event("contentBlockDelta", {"contentBlockIndex": 0,
                                "delta": {"reasoningContent": {"signature": "SIG=="}}}),
    event("contentBlockStop", {"contentBlockIndex": 0}),
    event("contentBlockDelta", {"contentBlockIndex": 1,
                                "delta": {"reasoningContent": {"redactedContent": "UkVE"}}}),
    event("contentBlockDelta", {"contentBlockIndex": 2, "delta": {"text": "Paris."}}),
    event("messageStop", {"stopReason": "end_turn"}),
    event("metadata", {"usage": {"inputTokens": 4, "outputTokens": 9}}),
]


def test_reasoning_and_its_signature_come_out_for_the_next_turn() -> None:
    c = collect(sse_chunks(translate([b"".join(THINKING)])))
    assert c.reasoning == "Paris is the capital." and c.content == "Paris."
    assert c.thinking_blocks == [
        {"type": "thinking", "thinking": "Paris is the capital.", "signature": "SIG=="},
        {"type": "redacted_thinking", "data": "UkVE"},
    ]
    # ... and go back to Bedrock as reasoningContent blocks, first in the assistant turn.
    sent = to_converse({"messages": [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": c.content, "thinking_blocks": c.thinking_blocks},
        {"role": "user", "content": "Thanks"}]}, "us.anthropic.claude-sonnet-4-20250514-v1:0")
    assert sent["messages"][1]["content"] == [
        {"reasoningContent": {"reasoningText": {"text": "Paris is the capital.",
                                                "signature": "SIG=="}}},
        {"reasoningContent": {"redactedContent": "UkVE"}},
        {"text": "Paris."},
    ]



def test_thinking_left_out_is_no_reasoning_streamed_or_not() -> None:
    # Claude's thinking with display "omitted" (Opus 4.7's default): a reasoning block with no
    # text and its signature. The whole answer said `reasoning_content: ""`, the stream none.
    omitted = {"type": "thinking", "thinking": "", "signature": "SIG=="}
    chunks = sse_chunks(translate([b"".join([
        event("messageStart", {"role": "assistant"}),
        event("contentBlockDelta", {"contentBlockIndex": 0,
                                    "delta": {"reasoningContent": {"text": ""}}}),
        event("contentBlockDelta", {"contentBlockIndex": 0,
                                    "delta": {"reasoningContent": {"signature": "SIG=="}}}),
        event("contentBlockStop", {"contentBlockIndex": 0}),
        event("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"text": "Paris."}}),
        event("messageStop", {"stopReason": "end_turn"}),
        event("metadata", {"usage": {"inputTokens": 4, "outputTokens": 9}})])]))
    assert not any("reasoning_content" in c["choices"][0]["delta"]
                   for c in chunks if c != "[DONE]" and c["choices"])
    assert collect(chunks).thinking_blocks == [omitted]
    msg = bedrock_completion([
        {"reasoningContent": {"reasoningText": {"text": "", "signature": "SIG=="}}},
        {"text": "Paris."}])["choices"][0]["message"]
    assert "reasoning_content" not in msg
    assert msg["thinking_blocks"] == [omitted] and msg["content"] == "Paris."


def bedrock_completion(blocks: list[dict[str, Any]], stop: str = "end_turn") -> dict[str, Any]:
    return to_completion(orjson.dumps({"output": {"message": {"role": "assistant",
                                                             "content": blocks}},
                                       "stopReason": stop}),
                         completion_id="c", created=1, model="m")


def test_thinking_parts_of_the_content_go_back_as_reasoning() -> None:
    # Portkey's form: the signed thinking among the assistant's content parts.
    sent = to_converse({"messages": [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "Paris is the capital.", "signature": "SIG=="},
            {"type": "redacted_thinking", "data": "UkVE"}, {"type": "text", "text": "Paris."}]},
        {"role": "user", "content": "Thanks"}]}, "us.anthropic.claude-sonnet-4-20250514-v1:0")
    assert sent["messages"][1]["content"] == [
        {"reasoningContent": {"reasoningText": {"text": "Paris is the capital.",
                                                "signature": "SIG=="}}},
        {"reasoningContent": {"redactedContent": "UkVE"}},
        {"text": "Paris."},
    ]


# -- the request, pure ------------------------------------------------------------------------

PNG = "data:image/png;base64,iVBORw0KGgo="
TOOLS = [{"type": "function", "function": {
    "name": "get_capital", "description": "Capital of a country",
    "parameters": {"type": "object", "properties": {"country": {"type": "string"}}}}}]


def conversation() -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
        {"role": "user", "content": [{"type": "text", "text": "Capitals?"},
                                     {"type": "image_url", "image_url": {"url": PNG}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "tu1", "type": "function",
             "function": {"name": "get_capital", "arguments": '{"country":"France"}'}},
            {"id": "tu2", "type": "function",
             "function": {"name": "get_capital", "arguments": '{"country":"Peru"}'}}]},
        {"role": "tool", "tool_call_id": "tu1", "content": "Paris"},
        {"role": "tool", "tool_call_id": "tu2", "content": [{"type": "text", "text": "Lima"}]},
        {"role": "user", "content": "And the temperature?"},
    ]


def test_full_request_translation() -> None:
    body = {"model": "x", "messages": conversation(), "tools": TOOLS, "tool_choice": "required",
            "max_tokens": 300, "temperature": 0.2, "top_p": 0.9, "stop": "END",
            "seed": 1, "user": "u", "logprobs": True, "parallel_tool_calls": False,
            "guardrailConfig": {"guardrailIdentifier": "g", "guardrailVersion": "1"}}
    assert to_converse(body, MODEL) == {
        "system": [{"text": "Be brief."}, {"text": "Use tools."}],
        "messages": [
            {"role": "user", "content": [
                {"text": "Capitals?"},
                {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}}]},
            {"role": "assistant", "content": [
                {"toolUse": {"toolUseId": "tu1", "name": "get_capital",
                             "input": {"country": "France"}}},
                {"toolUse": {"toolUseId": "tu2", "name": "get_capital",
                             "input": {"country": "Peru"}}}]},
            {"role": "user", "content": [  # both results, then the text, in one user turn
                {"toolResult": {"toolUseId": "tu1", "content": [{"text": "Paris"}]}},
                {"toolResult": {"toolUseId": "tu2", "content": [{"text": "Lima"}]}},
                {"text": "And the temperature?"}]},
        ],
        "inferenceConfig": {"maxTokens": 300, "temperature": 0.2, "topP": 0.9,
                            "stopSequences": ["END"]},
        "toolConfig": {"tools": [{"toolSpec": {
            "name": "get_capital", "description": "Capital of a country",
            "inputSchema": {"json": TOOLS[0]["function"]["parameters"]}}}],
            "toolChoice": {"any": {}}},
        "guardrailConfig": {"guardrailIdentifier": "g", "guardrailVersion": "1"},
    }
    assert {"seed", "user", "logprobs"} <= DROPPED  # (parallel_tool_calls: Claude's alone)


# Tool names clients send that Converse refuses (its ToolName: 1 to 64 of [a-zA-Z0-9_-]; any
# other is a 400 for the whole request): an MCP tool's dot, slash or space, over 64 characters,
# and two that read alike once their other characters are `_`.
REFUSED_TOOL_NAMES = ["github.create_issue", "fs/read file", "mcp__" + "x" * 70, "a.b", "a/b"]


def test_tool_names_converse_refuses_go_renamed_and_come_back_as_declared() -> None:
    names = [*REFUSED_TOOL_NAMES, "github_create_issue", "plain"]  # (a rename takes neither)
    body = calls_of_every_name(names, "m")
    provider = BedrockProvider(parse_config({"providers": {"b": {
        "type": "bedrock", "region": "us-east-1", "api_key": "k"}}}, "<t>").providers["b"])
    req = parse_chat_request(orjson.dumps(body))
    sent = orjson.loads(provider.build_request(req, Target(provider, MODEL)).body)
    declared = [t["toolSpec"]["name"] for t in sent["toolConfig"]["tools"]]
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name) for name in declared)
    assert len(set(declared)) == len(names) and declared[-2:] == names[-2:]
    called = [b["toolUse"]["name"] for b in sent["messages"][1]["content"]]
    assert called == declared
    assert sent["toolConfig"]["toolChoice"] == {"tool": {"name": declared[0]}}
    # A history whose tools are not offered gets its name-only specs by the same names.
    bare = to_converse({**body, "tools": None, "tool_choice": None}, MODEL)
    assert [t["toolSpec"]["name"] for t in bare["toolConfig"]["tools"]] == declared
    # The model's calls, by the names Converse was sent, reach the client by the client's names.
    answer = {"output": {"message": {"role": "assistant", "content": [
        {"toolUse": {"toolUseId": f"t{i}", "name": name, "input": {}}}
        for i, name in enumerate(declared)]}}, "stopReason": "tool_use"}
    done = provider.translate_response(orjson.dumps(answer), req, completion_id="c", created=1)
    assert [c["function"]["name"] for c in done["choices"][0]["message"]["tool_calls"]] == names
    enc = ChunkEncoder(completion_id="c", created=1, model="m", include_usage=False)
    translator = provider.stream_translator(req, enc)
    stream = b"".join([event("messageStart", {"role": "assistant"}), *(
        event("contentBlockStart", {"contentBlockIndex": i, "start": {
            "toolUse": {"toolUseId": f"t{i}", "name": name}}}) for i, name in enumerate(declared)),
        event("messageStop", {"stopReason": "tool_use"})])
    c = collect(sse_chunks(relay_pieces(enc, translator, [stream])))
    assert [t["name"] for t in c.tool_calls] == names


# The Converse request fields to_converse makes itself (modelId travels in the URL's path).
BUILT_FIELDS = {"modelId", "messages", "system", "inferenceConfig", "toolConfig", "outputConfig"}


def test_every_converse_native_field_is_forwarded() -> None:
    """A field of Converse's own that a client passes (extra_body) reaches Bedrock: serviceTier
    (flex / priority) and projectIdentifier were dropped, so the request ran on the standard
    tier and the default project, billed as such, with no word to the client."""
    given = {"serviceTier": {"type": "flex"}, "projectIdentifier": "proj-1",
             "requestMetadata": {"team": "a"}}
    body = {"model": "x", "messages": [{"role": "user", "content": "Hi"}], **given}
    out = to_converse(body, MODEL)
    assert {key: out.get(key) for key in given} == given
    shapes = botocore.session.get_session().get_service_model("bedrock-runtime")
    # Every field we build or forward is one of Converse's (a misspelt name would be dropped
    # by Bedrock's validation as an unknown field). Not the other way round: a field botocore
    # adds later must not turn a fresh install's test run red; docs/providers/bedrock.md lists
    # what goes through.
    for operation in ("Converse", "ConverseStream"):
        fields = set(shapes.operation_model(operation).input_shape.members)
        assert BUILT_FIELDS | set(PASSTHROUGH) <= fields, operation


@pytest.mark.parametrize(("choice", "expected"), [
    ("auto", {"auto": {}}), ("required", {"any": {}}),
    ({"type": "function", "function": {"name": "get_capital"}}, {"tool": {"name": "get_capital"}}),
    (None, None),
])
def test_tool_choice(choice: Any, expected: Any) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "tools": TOOLS}
    if choice is not None:
        body["tool_choice"] = choice
    config = to_converse(body, MODEL)["toolConfig"]
    assert config.get("toolChoice") == expected


def test_tool_choice_none_drops_tools_unless_the_history_needs_a_tool_config() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "tools": TOOLS,
            "tool_choice": "none"}
    assert "toolConfig" not in to_converse(body, MODEL)
    body["messages"] = conversation()
    config = to_converse(body, MODEL)["toolConfig"]
    assert config == {"tools": [{"toolSpec": {
        "name": "get_capital", "description": "Capital of a country",
        "inputSchema": {"json": TOOLS[0]["function"]["parameters"]}}}]}


@pytest.mark.parametrize(("choice", "sent"), [
    # No toolChoice: Claude's tool_choice needs its type (Bedrock: "missing field `type`").
    (None, {"type": "auto", "disable_parallel_tool_use": True}),
    # Beside a toolChoice Bedrock takes the type from it; one here too is a 400 ("The additional
    # field tool_choice/type conflicts with the existing field toolConfig.toolChoice").
    ("auto", {"disable_parallel_tool_use": True}),
    ("required", {"disable_parallel_tool_use": True}),
    ({"type": "function", "function": {"name": "get_capital"}},
     {"disable_parallel_tool_use": True}),
])
def test_parallel_tool_calls_false_is_claude_s_disable_parallel_tool_use(choice: Any,
                                                                          sent: Any) -> None:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], "tools": TOOLS,
                            "parallel_tool_calls": False}
    if choice is not None:
        body["tool_choice"] = choice
    out = to_converse(body, "us.anthropic.claude-sonnet-4-5-20250929-v1:0")
    assert out["additionalModelRequestFields"] == {"tool_choice": sent}
    assert "toolConfig" in out


@pytest.mark.parametrize(("body", "model"), [
    ({"tools": TOOLS, "parallel_tool_calls": False}, MODEL),  # not Claude: no such field
    ({"tools": TOOLS, "parallel_tool_calls": True}, "anthropic.claude-3-5-haiku-20241022-v1:0"),
    ({"tools": TOOLS}, "anthropic.claude-3-5-haiku-20241022-v1:0"),
    # No tools offered (none given, or "none" with none in the history): nothing to call, and a
    # tool_choice without a toolConfig is Bedrock's 400.
    ({"parallel_tool_calls": False}, "anthropic.claude-3-5-haiku-20241022-v1:0"),
    ({"tools": TOOLS, "tool_choice": "none", "parallel_tool_calls": False},
     "anthropic.claude-3-5-haiku-20241022-v1:0"),
])
def test_parallel_tool_calls_adds_nothing_else(body: dict[str, Any], model: str) -> None:
    out = to_converse({"messages": [{"role": "user", "content": "hi"}], **body}, model)
    assert "additionalModelRequestFields" not in out


def test_a_client_s_own_tool_choice_field_is_sent_as_given() -> None:
    own = {"type": "any", "disable_parallel_tool_use": False}
    body = {"messages": [{"role": "user", "content": "hi"}], "tools": TOOLS,
            "parallel_tool_calls": False,
            "additionalModelRequestFields": {"tool_choice": own, "top_k": 5}}
    out = to_converse(body, "anthropic.claude-3-5-haiku-20241022-v1:0")
    assert out["additionalModelRequestFields"] == {"tool_choice": own, "top_k": 5}


def test_tool_use_ids_bedrock_refuses_are_mapped_alike_in_call_and_result() -> None:
    # Converse takes toolUseIds of 1-64 [A-Za-z0-9_-] (a ValidationException otherwise).
    messages = conversation()
    ids = {"tu1": "functions.get_capital:0", "tu2": "call_" + "x" * 70}
    for m in messages:
        for call in m.get("tool_calls") or []:
            call["id"] = ids[call["id"]]
        if m["role"] == "tool":
            m["tool_call_id"] = ids[m["tool_call_id"]]
    _, assistant, results = to_converse({"messages": messages}, MODEL)["messages"]
    sent = [block["toolUse"]["toolUseId"] for block in assistant["content"]]
    assert [block["toolResult"]["toolUseId"] for block in results["content"][:2]] == sent
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,64}", call_id) for call_id in sent)


def test_cache_control_becomes_a_cache_point_after_its_block() -> None:
    # Anthropic's prompt-caching breakpoint, as Portkey passes it, is Converse's cachePoint
    # block, placed after the block (or tool spec, or whole toolResult) it marks.
    ephemeral = {"type": "ephemeral"}
    point = {"cachePoint": {"type": "default"}}
    messages = conversation()
    messages[0]["content"] = [{"type": "text", "text": "Be brief.",
                               "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    messages[2]["content"][0]["cache_control"] = ephemeral  # the user's text
    messages[4]["content"] = [{"type": "text", "text": "Paris", "cache_control": ephemeral}]
    body = to_converse({"messages": messages, "tools": [{**TOOLS[0], "cache_control": ephemeral}]},
                       MODEL)
    assert body["system"][:2] == [{"text": "Be brief."},
                                  {"cachePoint": {"type": "default", "ttl": "1h"}}]
    user, _, results = body["messages"]
    assert user["content"][:2] == [{"text": "Capitals?"}, point]
    assert results["content"] == [  # the results still lead the turn, each point in its place
        {"toolResult": {"toolUseId": "tu1", "content": [{"text": "Paris"}]}}, point,
        {"toolResult": {"toolUseId": "tu2", "content": [{"text": "Lima"}]}},
        {"text": "And the temperature?"}]
    # (the tools come first: before the system's 1h point, the tool's goes as 1h, as Converse
    # takes ttls only non-increasing; test_a_5m_cache_point_before_a_1h_one_is_sent_as_1h_…)
    assert body["toolConfig"]["tools"][1] == {"cachePoint": {"type": "default", "ttl": "1h"}}
    assert "cachePoint" not in str(to_converse({"messages": conversation()}, MODEL))


def test_a_tool_s_cache_control_inside_its_function_becomes_a_cache_point() -> None:
    # LiteLLM's place for a tool's breakpoint (`tools[].function.cache_control`) was ignored.
    tool = {"type": "function",
            "function": {**TOOLS[0]["function"], "cache_control": {"type": "ephemeral"}}}
    body = to_converse({"messages": conversation(), "tools": [tool]}, MODEL)
    assert body["toolConfig"]["tools"][1] == {"cachePoint": {"type": "default"}}


def _points_after(body: dict[str, Any]) -> list[str]:
    """The text (or tool name) of each block a cachePoint follows, in prefix order."""
    lists = [body.get("toolConfig", {}).get("tools", []), body.get("system", []),
             *(m["content"] for m in body["messages"])]
    return [str(b.get("text") or b.get("toolSpec", {}).get("name")) for blocks in lists
            for b, after in pairwise(blocks) if "cachePoint" in after]


def test_more_cache_points_than_bedrock_takes_keep_the_stable_prefix_and_the_latest() -> None:
    # Bedrock takes 4 cachePoints in a request, and for Claude answers a 5th with a 400 ("A
    # maximum of 4 blocks with cache_control may be provided"): as on Anthropic, the earliest
    # turns' are dropped first, then the earliest tools' and system's, the last turn's last.
    mark = {"type": "ephemeral"}
    turns = every_turn_marked(mark)
    body = to_converse({"messages": turns, "tools": [{**TOOLS[0], "cache_control": mark}]},
                       CLAUDE)
    assert _points_after(body) == ["get_capital", "Rules.", "q3", "last"]
    # The request's own (automatic caching) is the last turn's; within 4 nothing moves.
    body = to_converse({"messages": turns[-3:], "cache_control": mark}, CLAUDE)
    assert _points_after(body) == ["q3", "last"]
    tools = [{"type": "function", "function": {"name": f"t{n}"}, "cache_control": mark}
             for n in range(6)]
    body = to_converse({"messages": turns[-1:], "tools": tools}, CLAUDE)
    assert _points_after(body) == ["t3", "t4", "t5", "last"]


def test_a_message_s_cache_control_becomes_a_cache_point_after_its_last_block() -> None:
    # LiteLLM's form: a breakpoint on the message itself, the only place a string content can
    # carry one. Dropped, the prompt was never cached and every request paid full price.
    ephemeral = {"type": "ephemeral"}
    point = {"cachePoint": {"type": "default"}}
    messages = conversation()
    messages[0]["cache_control"] = {"type": "ephemeral", "ttl": "1h"}  # "Be brief."
    messages[3]["cache_control"] = ephemeral  # the assistant's tool calls (4: all Bedrock takes)
    messages[4]["cache_control"] = ephemeral  # a tool result with string content
    messages[5]["content"] = [{"type": "text", "text": "Lima", "cache_control": ephemeral}]
    messages[5]["cache_control"] = ephemeral  # its part's own point is there already
    body = to_converse({"messages": messages}, MODEL)
    assert body["system"][:2] == [{"text": "Be brief."},
                                  {"cachePoint": {"type": "default", "ttl": "1h"}}]
    user, assistant, results = body["messages"]
    assert point not in user["content"]
    assert assistant["content"][-1] == point and "toolUse" in assistant["content"][-2]
    assert results["content"] == [
        {"toolResult": {"toolUseId": "tu1", "content": [{"text": "Paris"}]}}, point,
        {"toolResult": {"toolUseId": "tu2", "content": [{"text": "Lima"}]}}, point,
        {"text": "And the temperature?"}]


def test_a_request_s_cache_control_becomes_a_cache_point_after_the_last_block() -> None:
    # Anthropic's automatic caching (a top-level cache_control) has no Converse field: the
    # cachePoint goes where Anthropic puts that breakpoint, after the last block; dropped, the
    # conversation was never cached and every turn paid full price.
    hour = {"type": "ephemeral", "ttl": "1h"}
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello "}]
    body = to_converse({"messages": messages, "cache_control": hour}, MODEL)
    assert body["messages"][-1]["content"] == [  # the prefill still loses its whitespace
        {"text": "Hello"}, {"cachePoint": {"type": "default", "ttl": "1h"}}]
    assert "cache_control" not in body and body["messages"][0]["content"] == [{"text": "Hi"}]
    messages[-1]["content"] = [{"type": "text", "text": "Hello", "cache_control": hour}]
    body = to_converse({"messages": messages, "cache_control": hour}, MODEL)
    assert body["messages"][-1]["content"] == [  # one point, not two
        {"text": "Hello"}, {"cachePoint": {"type": "default", "ttl": "1h"}}]
    assert "cachePoint" not in str(to_converse({"messages": messages[:1]}, MODEL))


@pytest.mark.parametrize("own", [{"type": "ephemeral"}, {"type": "ephemeral", "ttl": "5m"}])
def test_a_1h_marker_on_a_block_with_its_own_5m_point_makes_that_point_1h(own: Any) -> None:
    # The request's (automatic caching) or the message's own 1h marker, where the last part
    # already has its point: no second point is added, and that one was sent 5m, so the hour
    # the client asked for was silently lost. The longer wins on that point.
    hour = {"type": "ephemeral", "ttl": "1h"}
    point = {"cachePoint": {"type": "default", "ttl": "1h"}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "doc",
                                              "cache_control": own}]}]
    body = to_converse({"messages": messages, "cache_control": hour}, CLAUDE)
    assert body["messages"][-1]["content"] == [{"text": "doc"}, point]
    body = to_converse({"messages": [{**messages[0], "cache_control": hour}]}, CLAUDE)
    assert body["messages"][-1]["content"] == [{"text": "doc"}, point]
    assert own == {"type": "ephemeral", **({"ttl": "5m"} if "ttl" in own else {})}  # (kept)
    # a shorter marker leaves the part's own 1h as it is
    messages[0]["content"][0]["cache_control"] = hour
    body = to_converse({"messages": messages, "cache_control": own}, CLAUDE)
    assert body["messages"][-1]["content"] == [{"text": "doc"}, point]


@pytest.mark.parametrize("content", ["\n\n", [{"type": "text", "text": " "}]])
def test_whitespace_only_text_is_left_out(content: Any) -> None:
    # Converse rejects blank text blocks; Claude may answer "\n\n" before a tool call, and
    # that text comes back in the next turn's history.
    messages = conversation()
    messages[3]["content"] = content
    messages.append({"role": "assistant", "content": "It is 20 degrees."})
    messages.append({"role": "user", "content": content})
    _, assistant, *_, answer, last = to_converse({"messages": messages}, MODEL)["messages"]
    assert [next(iter(block)) for block in assistant["content"]] == ["toolUse", "toolUse"]
    assert answer == {"role": "assistant", "content": [{"text": "It is 20 degrees."}]}
    # The blank user message still ends the request: no prefill of the answer.
    assert last == {"role": "user", "content": [{"text": "(empty message)"}]}


@pytest.mark.parametrize("model", [MODEL, "us.anthropic.claude-sonnet-4-20250514-v1:0"])
# (a null is OpenAI's 400 before any translator: test_request_params)
@pytest.mark.parametrize("content", ["  ", "", [{"type": "text", "text": ""}],
                                     [{"type": "text", "text": "\n"}]])
async def test_a_blank_user_message_keeps_its_turn(proxy: Any, upstream: Any, model: str,
                                                   content: Any) -> None:
    # Left out, the request would end with the assistant turn, which Claude continues (a
    # prefill) instead of answering; in the middle, the assistant turns around it would merge.
    upstream.content_type = EVENTSTREAM
    upstream.body = RECORDING
    client = await proxy(bedrock_config(upstream.url, default_model=model))
    resp = await stream_request(client, model=None, messages=[
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": content}, {"role": "assistant", "content": "still there?"},
        {"role": "user", "content": content}])
    assert resp.status == 200
    await resp.read()
    blank = {"role": "user", "content": [{"text": "(empty message)"}]}
    assert upstream.requests[0].json()["messages"] == [
        {"role": "user", "content": [{"text": "hi"}]},
        {"role": "assistant", "content": [{"text": "hello"}]}, blank,
        {"role": "assistant", "content": [{"text": "still there?"}]}, blank]


def test_history_with_tool_blocks_but_no_tools_gets_name_only_specs() -> None:
    config = to_converse({"messages": conversation()}, MODEL)["toolConfig"]
    assert config == {"tools": [{"toolSpec": {"name": "get_capital",
                                              "inputSchema": {"json": {"type": "object"}}}}]}


def test_claude_thinking_from_effort_with_a_forced_tool_is_a_400() -> None:
    body = {"messages": conversation(), "tools": TOOLS, "reasoning_effort": "low",
            "tool_choice": "required"}
    with pytest.raises(InvalidRequest) as caught:
        to_converse(body, "us.anthropic.claude-3-7-sonnet-20250219-v1:0")
    assert caught.value.param == "tool_choice"
    assert to_converse(body, MODEL)["toolConfig"]["toolChoice"] == {"any": {}}  # (no thinking)


def test_claude_thinking_from_effort_skips_a_tool_loop_that_came_back_without_it() -> None:
    # Claude refuses thinking when the tool loop's assistant turn lost its reasoning (an
    # OpenAI client keeps none): that step goes without; with the blocks back it thinks.
    claude = "us.anthropic.claude-sonnet-4-20250514-v1:0"
    body = {"messages": conversation(), "tools": TOOLS, "reasoning_effort": "low"}
    assert "additionalModelRequestFields" not in to_converse(body, claude)
    body["messages"][3]["thinking_blocks"] = [
        {"type": "thinking", "thinking": "Two calls.", "signature": "SIG=="}]
    assert to_converse(body, claude)["additionalModelRequestFields"] == {
        "thinking": {"type": "enabled", "budget_tokens": 1024}}


def test_claude_thinking_from_effort_goes_on_through_a_tool_loop_s_later_steps() -> None:
    # Claude thinks at its turn's start only: the loop's second call comes without thinking,
    # and the first call's, sent back, keeps the next step thinking (without it, Claude
    # refuses the thinking block of a turn with thinking disabled).
    claude = "us.anthropic.claude-sonnet-4-20250514-v1:0"
    messages = [*conversation(), {"role": "assistant", "content": None, "tool_calls": [
        {"id": "tu3", "type": "function", "function": {"name": "get_capital",
                                                       "arguments": '{"country":"Chad"}'}}]},
        {"role": "tool", "tool_call_id": "tu3", "content": "N'Djamena"}]
    messages[3]["thinking_blocks"] = [
        {"type": "thinking", "thinking": "Two calls.", "signature": "SIG=="}]
    out = to_converse({"messages": messages, "tools": TOOLS, "reasoning_effort": "low"}, claude)
    assert out["additionalModelRequestFields"] == {
        "thinking": {"type": "enabled", "budget_tokens": 1024}}
    assert "reasoningContent" in out["messages"][1]["content"][0]


def test_claude_thinking_from_effort_skips_a_prefill_without_it() -> None:
    # A final assistant turn Claude continues, without thinking to start it: refused with
    # thinking on, as on Anthropic.
    claude = "us.anthropic.claude-sonnet-4-20250514-v1:0"
    body = {"messages": [{"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Well,"}], "reasoning_effort": "low"}
    assert "additionalModelRequestFields" not in to_converse(body, claude)


def test_reasoning_effort_is_claude_thinking_and_dropped_elsewhere() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "reasoning_effort": "medium"}
    claude = to_converse(body, "us.anthropic.claude-3-7-sonnet-20250219-v1:0")
    assert claude["additionalModelRequestFields"] == {
        "thinking": {"type": "enabled", "budget_tokens": 4096}}
    assert claude["inferenceConfig"] == {"maxTokens": 4096 + 4096}
    nova = to_converse(body, MODEL)
    assert "additionalModelRequestFields" not in nova and "inferenceConfig" not in nova


@pytest.mark.parametrize("model", ["anthropic.claude-3-5-sonnet-20241022-v2:0",
                                   "us.anthropic.claude-3-haiku-20240307-v1:0",
                                   "anthropic.claude-v2:1", "anthropic.claude-instant-v1"])
def test_reasoning_effort_is_dropped_for_claudes_that_cannot_think(model: str) -> None:
    # Claude before 3.7 Sonnet has no extended thinking (Converse's 400), as for Nova 1.
    body = {"messages": [{"role": "user", "content": "hi"}], "reasoning_effort": "medium"}
    out = to_converse(body, model)
    assert "additionalModelRequestFields" not in out and "inferenceConfig" not in out


CLAUDE_ROUTER = "arn:aws:bedrock:us-east-1:123456789012:default-prompt-router/anthropic.claude:1"


def test_the_default_claude_prompt_router_is_read_as_the_claudes_it_routes_between() -> None:
    # AWS's Claude prompt router routes between Claude 3 Haiku and Claude 3.5 Sonnet; its id
    # names no Claude version, which the Claude rules read as the newest Claude: the client's
    # temperature and top_p were left out without a word, and reasoning_effort sent adaptive
    # thinking, which neither Claude takes (Bedrock's 400).
    body = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0.3, "top_p": 0.5,
            "top_k": 5}
    out = to_converse(body, CLAUDE_ROUTER)
    assert out["inferenceConfig"] == {"temperature": 0.3, "topP": 0.5}
    assert out["additionalModelRequestFields"] == {"top_k": 5}
    thinking = to_converse({**body, "reasoning_effort": "medium"}, CLAUDE_ROUTER)
    assert "thinking" not in thinking["additionalModelRequestFields"]
    with pytest.raises(InvalidRequest):  # (still a Claude: no whitespace-only stop sequence)
        to_converse({**body, "stop": ["\n"]}, CLAUDE_ROUTER)


@pytest.mark.parametrize("content", ["", " \n", None, [], [{"type": "text", "text": ""}],
                                     [{"type": "text", "text": " "}, {"type": "text", "text": ""}]])
def test_an_empty_tool_result_is_a_placeholder_text_never_a_blank_block(content: Any) -> None:
    # Converse rejects blank text blocks and an empty toolResult content.
    messages = conversation()[2:5]
    messages[2] = {"role": "tool", "tool_call_id": "tu1", "content": content}
    results = to_converse({"messages": messages}, MODEL)["messages"][2]["content"]
    assert results == [{"toolResult": {"toolUseId": "tu1", "content": [{"text": "(empty)"}]}}]


def test_blank_parts_of_a_tool_result_are_left_out() -> None:
    messages = conversation()[2:5]
    messages[2] = {"role": "tool", "tool_call_id": "tu1", "content": [
        {"type": "text", "text": "\n"}, {"type": "text", "text": "Paris"}]}
    [result] = to_converse({"messages": messages}, MODEL)["messages"][2]["content"]
    assert result["toolResult"]["content"] == [{"text": "Paris"}]


def test_a_system_only_request_gets_a_placeholder_user_turn() -> None:
    # OpenAI answers system-only requests; Converse rejects "messages": [].
    out = to_converse({"messages": [{"role": "system", "content": "Write a haiku."}]}, MODEL)
    assert out["system"] == [{"text": "Write a haiku."}]
    assert out["messages"] == [{"role": "user", "content": [{"text": "Begin."}]}]


def test_a_conversation_that_starts_with_the_assistant_gets_a_user_turn_first() -> None:
    # Converse: "A conversation must start with a user message."
    out = to_converse({"messages": [{"role": "system", "content": "Be brief."},
                                    {"role": "assistant", "content": "Hello."},
                                    {"role": "user", "content": "Hi"}]}, MODEL)
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user"]
    assert out["messages"][0]["content"] == [{"text": "Begin."}]


CLAUDE = "us.anthropic.claude-sonnet-4-20250514-v1:0"
CLAUDE_4_5 = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"  # (has Converse structured outputs)


def test_an_assistant_turn_after_a_late_system_message_is_not_merged_into_the_one_before(
        ) -> None:
    """As on Anthropic: an agent's late instruction ([user, assistant, system]) is answered
    after a `Begin.` turn; its answer, sent back in the next step of the loop, was merged into
    the assistant turn before the system message: not what the model was sent, and with its
    reasoning after that turn's text Claude refuses the request (an assistant turn must start
    with its reasoning). It is replayed as it was asked, after the same placeholder turn."""
    messages = late_system_loop(thinking_call("tooluse_1"), "tooluse_1")
    tools = [{"type": "function", "function": {"name": "book"}}]
    asked = to_converse({"messages": messages[:3], "tools": tools, "reasoning_effort": "low"},
                        CLAUDE)
    out = to_converse({"messages": messages, "tools": tools, "reasoning_effort": "low"},
                      CLAUDE)
    assert out["messages"][:3] == asked["messages"]
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user", "assistant",
                                                    "user"]
    assert [next(iter(b)) for b in out["messages"][3]["content"]] == ["reasoningContent",
                                                                      "toolUse"]
    # Beside a user turn, or before an assistant message of reasoning alone (left out), none.
    for later in ([{"role": "user", "content": "Hm?"}, messages[3]],
                  [{"role": "assistant", "content": None, "thinking_blocks": [
                      {"type": "thinking", "thinking": "t", "signature": "s"}]}]):
        out = to_converse({"messages": [*messages[:3], *later], "tools": tools}, CLAUDE)
        assert "Begin." not in str(out["messages"])


def test_claude_gets_no_top_p_of_one_beside_temperature() -> None:
    """As on Anthropic: newer Claude models refuse temperature with top_p, and a top_p of 1
    is no nucleus cut. Other models keep it (their default top_p may be lower)."""
    body = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0.7, "top_p": 1}
    assert to_converse(body, CLAUDE)["inferenceConfig"] == {"temperature": 0.7}
    assert to_converse(body, MODEL)["inferenceConfig"] == {"temperature": 0.7, "topP": 1}
    assert to_converse({**body, "top_p": 0.9}, CLAUDE)["inferenceConfig"]["topP"] == 0.9


def test_claude_gets_no_temperature_of_one_beside_top_p() -> None:
    """As on Anthropic: a temperature of 1 (or above, sent as 1) is Claude's default, which
    newer Claudes refuse beside a top_p ("cannot both be specified"): the top_p goes alone.
    Other models keep it (1 is not every model's default)."""
    body = {"messages": [{"role": "user", "content": "hi"}], "temperature": 1, "top_p": 0.9}
    assert to_converse(body, CLAUDE_4_5)["inferenceConfig"] == {"topP": 0.9}
    assert to_converse({**body, "temperature": 1.5}, CLAUDE_4_5)["inferenceConfig"] == {
        "topP": 0.9}
    thinking = to_converse({**body, "top_p": 0.95, "reasoning_effort": "low"}, CLAUDE_4_5)
    assert thinking["inferenceConfig"] == {"maxTokens": 5120, "topP": 0.95}
    assert to_converse(body, MODEL)["inferenceConfig"] == {"temperature": 1, "topP": 0.9}
    assert to_converse({**body, "top_p": 1}, CLAUDE_4_5)["inferenceConfig"] == {
        "temperature": 1}


def test_claude_gets_a_temperature_above_1_as_1() -> None:
    """As on Anthropic: Claude's temperature runs to 1, OpenAI's to 2 (Converse answers Claude
    1.5 with a 400), so one between is Claude's top; also beside thinking, which takes 1."""
    body = {"messages": [{"role": "user", "content": "hi"}], "temperature": 1.5}
    assert to_converse(body, CLAUDE)["inferenceConfig"] == {"temperature": 1}
    thinking = to_converse({**body, "reasoning_effort": "low"}, CLAUDE)
    assert thinking["inferenceConfig"]["temperature"] == 1
    assert to_converse({**body, "temperature": 0.3}, CLAUDE)["inferenceConfig"] == {
        "temperature": 0.3}


@pytest.mark.parametrize("model", [MODEL, "us.meta.llama3-3-70b-instruct-v1:0",
                                   "mistral.mistral-large-2407-v1:0", "openai.gpt-oss-120b-1:0",
                                   "us.deepseek.r1-v1:0", "amazon.titan-text-premier-v1:0"])
def test_every_model_gets_a_temperature_above_1_as_1(model: str) -> None:
    """Converse's inferenceConfig.temperature runs from 0 to 1 whatever the model (its API
    reference; 'Value '1.5' at 'inferenceConfig.temperature' failed to satisfy constraint'),
    so OpenAI's 1.5 was a 400 on Nova, Llama, Mistral and the rest, as it was on Claude."""
    body = {"messages": [{"role": "user", "content": "hi"}], "temperature": 1.5}
    assert to_converse(body, model)["inferenceConfig"] == {"temperature": 1}
    assert to_converse({**body, "temperature": 0.3}, model)["inferenceConfig"] == {
        "temperature": 0.3}
    # One OpenAI refuses too goes as sent, for the provider's 400.
    assert to_converse({**body, "temperature": 2.5}, model)["inferenceConfig"] == {
        "temperature": 2.5}


@pytest.mark.parametrize(("body", "budget", "max_tokens"), [
    ({"reasoning_effort": "high", "max_completion_tokens": 5000}, 4999, 5000),
    ({"reasoning_effort": "low", "max_tokens": 1025}, 1024, 1025),
    ({"reasoning_effort": "high"}, 16384, 16384 + 4096),
    ({"reasoning_effort": "xhigh"}, 24576, 24576 + 4096),
    ({"reasoning_effort": "max"}, 32000 - 4096, 32000),
    ({"reasoning_effort": "minimal"}, 1024, 1024 + 4096),
    ({"additionalModelRequestFields": {"thinking": {"type": "enabled", "budget_tokens": 10000},
                                       "top_k": 5}}, 10000, 10000 + 4096),
])
def test_claude_thinking_budget_stays_below_max_tokens(body: dict[str, Any], budget: int,
                                                       max_tokens: int) -> None:
    out = to_converse({"messages": [{"role": "user", "content": "hi"}], **body}, CLAUDE)
    assert out["additionalModelRequestFields"]["thinking"] == {"type": "enabled",
                                                               "budget_tokens": budget}
    assert out["inferenceConfig"] == {"maxTokens": max_tokens}


def test_claude_max_too_small_for_thinking_is_a_400() -> None:
    with pytest.raises(InvalidRequest) as caught:
        to_converse({"messages": [{"role": "user", "content": "hi"}],
                     "reasoning_effort": "high", "max_completion_tokens": 1000}, CLAUDE)
    assert caught.value.param == "max_completion_tokens"
    # Other models take no thinking budget: their max is not checked against one.
    nova = to_converse({"messages": [{"role": "user", "content": "hi"}],
                        "reasoning_effort": "high", "max_completion_tokens": 1000}, MODEL)
    assert nova["inferenceConfig"] == {"maxTokens": 1000}


@pytest.mark.parametrize(("body", "param"), [
    ({"temperature": 0.5}, "temperature"),
    ({"top_p": 0.5}, "top_p"),
    ({"additionalModelRequestFields": {"top_k": 5}}, "top_k"),
])
def test_claude_thinking_from_effort_beside_sampling_it_refuses_is_a_400(
        body: dict[str, Any], param: str) -> None:
    request = {"messages": [{"role": "user", "content": "hi"}], "reasoning_effort": "low", **body}
    with pytest.raises(InvalidRequest) as caught:
        to_converse(request, CLAUDE)
    assert caught.value.param == param
    to_converse(request, MODEL)  # other models get no thinking, so nothing is refused


def test_top_k_goes_where_claude_and_nova_take_it_and_is_dropped_elsewhere() -> None:
    """The extra_body `top_k` Anthropic, Gemini, Cohere and Ollama take was dropped on Bedrock
    for every model: Converse has no field for it, Claude takes it as an additional field and
    Nova in its own inferenceConfig there."""
    body = {"messages": [{"role": "user", "content": "hi"}], "top_k": 5}
    assert to_converse(body, CLAUDE)["additionalModelRequestFields"] == {"top_k": 5}
    assert to_converse(body, "us.amazon.nova-2-lite-v1:0")["additionalModelRequestFields"] == {
        "inferenceConfig": {"topK": 5}}
    assert "additionalModelRequestFields" not in to_converse(
        body, "meta.llama3-3-70b-instruct-v1:0")
    # A client's own fields win.
    own = {**body, "additionalModelRequestFields": {"top_k": 9}}
    assert to_converse(own, CLAUDE)["additionalModelRequestFields"] == {"top_k": 9}
    own = {**body, "additionalModelRequestFields": {"inferenceConfig": {"topK": 9}}}
    assert to_converse(own, MODEL)["additionalModelRequestFields"] == {
        "inferenceConfig": {"topK": 9}}
    # As on Anthropic, Claude's thinking beside a top_k is a 400 naming it.
    with pytest.raises(InvalidRequest) as caught:
        to_converse({**body, "reasoning_effort": "low"}, CLAUDE)
    assert caught.value.param == "top_k"


NOVA_2 = "us.amazon.nova-2-lite-v1:0"
GPT_OSS = "openai.gpt-oss-120b-1:0"


@pytest.mark.parametrize(("effort", "nova", "gpt_oss"), [
    ("none", None, "low"),  # Nova 2 reasons only when asked; gpt-oss always does
    ("minimal", "low", "low"),
    ("low", "low", "low"),
    ("medium", "medium", "medium"),
    ("high", "high", "high"),
    ("xhigh", "high", "high"),
    ("max", "high", "high"),  # OpenAI's max: the top level both take
])
def test_reasoning_effort_is_nova_2_and_gpt_oss_reasoning_levels(
        effort: str, nova: str | None, gpt_oss: str) -> None:
    """AWS documents reasoning settings in additionalModelRequestFields for Nova 2
    (reasoningConfig) and gpt-oss (OpenAI's reasoning_effort), as LiteLLM maps them; both take
    low / medium / high. They were dropped."""
    body = {"messages": [{"role": "user", "content": "hi"}], "reasoning_effort": effort}
    fields = to_converse(body, NOVA_2).get("additionalModelRequestFields")
    assert fields == (nova and {"reasoningConfig": {"type": "enabled",
                                                    "maxReasoningEffort": nova}})
    for model in (GPT_OSS, "us.openai.gpt-oss-20b-1:0"):
        assert to_converse(body, model)["additionalModelRequestFields"] == {
            "reasoning_effort": gpt_oss}


def test_nova_2_and_gpt_oss_reasoning_keeps_a_clients_own_and_other_models_drop_it() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "reasoning_effort": "high",
            "top_k": 5, "max_tokens": 300}
    own = {"reasoningConfig": {"type": "enabled", "maxReasoningEffort": "low"}}
    out = to_converse({**body, "additionalModelRequestFields": own}, NOVA_2)
    assert out["additionalModelRequestFields"] == {**own, "inferenceConfig": {"topK": 5}}
    out = to_converse({**body, "additionalModelRequestFields": {"reasoning_effort": "low"}},
                      GPT_OSS)
    assert out["additionalModelRequestFields"] == {"reasoning_effort": "low"}
    # Nova 1, DeepSeek-R1 (always reasons, no setting), Llama: documented drop.
    for model in (MODEL, "us.deepseek.r1-v1:0", "meta.llama3-3-70b-instruct-v1:0"):
        assert "reasoning_effort" not in str(to_converse(body, model))
        assert "reasoningConfig" not in str(to_converse(body, model))


@pytest.mark.parametrize(("effort", "param", "value", "sent"), [
    ("high", "max_tokens", 500, "maxTokens"),
    ("xhigh", "max_completion_tokens", 500, "maxTokens"),
    ("high", "temperature", 0, "temperature"), ("xhigh", "temperature", 0.7, "temperature"),
    ("high", "top_p", 1, "topP")])
def test_nova_2_high_reasoning_beside_a_max_or_sampling_is_a_400(
        effort: str, param: str, value: float, sent: str) -> None:
    # Nova 2 refuses maxTokens, temperature and topP with maxReasoningEffort high (AWS: they
    # must be unset); only the client knows which to drop.
    body = {"messages": [{"role": "user", "content": "hi"}], "reasoning_effort": effort,
            param: value}
    with pytest.raises(InvalidRequest) as caught:
        to_converse(body, NOVA_2)
    assert caught.value.param == param and effort in str(caught.value)
    medium = to_converse({**body, "reasoning_effort": "medium"}, NOVA_2)
    assert medium["inferenceConfig"] == {sent: value}


def test_claude_refuses_a_whitespace_only_stop_sequence() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "stop": ["END", "\n"]}
    with pytest.raises(InvalidRequest) as caught:
        to_converse(body, CLAUDE)
    assert caught.value.param == "stop"
    assert to_converse(body, MODEL)["inferenceConfig"] == {"stopSequences": ["END", "\n"]}


def test_claude_gets_no_empty_stop_sequence_either() -> None:
    # "" cuts nothing: left out, as for the other models, where it was a 400 for Claude alone.
    body = {"messages": [{"role": "user", "content": "hi"}], "stop": ["", "END"]}
    assert to_converse(body, CLAUDE)["inferenceConfig"] == {"stopSequences": ["END"]}
    assert "inferenceConfig" not in to_converse({**body, "stop": [""]}, CLAUDE)


def test_other_models_get_no_empty_stop_sequence() -> None:
    # Converse refuses one (stopSequences members are 1 character at least); OpenAI takes it.
    body = {"messages": [{"role": "user", "content": "hi"}], "stop": ["END", ""]}
    assert to_converse(body, MODEL)["inferenceConfig"] == {"stopSequences": ["END"]}
    assert "inferenceConfig" not in to_converse({**body, "stop": [""]}, MODEL)


def test_a_user_turn_with_documents_gets_text_beside_them() -> None:
    """Converse: "A text block must be included when using documents." Text anywhere in the
    merged user turn counts; a turn that has some gets none added."""
    pdf = {"type": "file", "file": {"filename": "a.pdf",
                                    "file_data": "data:application/pdf;base64,JVBERi0="}}
    alone = to_converse({"messages": [{"role": "user", "content": [pdf]}]}, CLAUDE)
    assert alone["messages"][0]["content"][-1] == {"text": "(attached document)"}
    merged = to_converse({"messages": [{"role": "user", "content": [pdf]},
                                       {"role": "user", "content": "Summarise it."}]}, CLAUDE)
    assert [list(b) for b in merged["messages"][0]["content"]] == [["document"], ["text"]]
    assert merged["messages"][0]["content"][1] == {"text": "Summarise it."}


def test_a_strict_function_is_a_strict_tool_spec() -> None:
    schema = {"type": "object", "properties": {}, "additionalProperties": False}
    body = {"messages": [{"role": "user", "content": "hi"}], "tools": [
        {"type": "function", "function": {"name": "f", "parameters": schema, "strict": True}},
        {"type": "function", "function": {"name": "g", "parameters": schema}}]}
    specs = [t["toolSpec"] for t in to_converse(body, CLAUDE_4_5)["toolConfig"]["tools"]]
    assert specs[0] == {"name": "f", "inputSchema": {"json": schema}, "strict": True}
    assert "strict" not in specs[1]


def test_documents_json_mode_and_rejections() -> None:
    pdf = {"type": "file", "file": {"filename": "Q3 report (final).pdf",
                                    "file_data": "data:application/pdf;base64,JVBERi0="}}
    out = to_converse({"messages": [{"role": "user", "content": [pdf]}],
                       "response_format": {"type": "json_object"}}, MODEL)
    assert out["messages"][0]["content"] == [{"document": {
        "format": "pdf", "name": "Q3 report (final)", "source": {"bytes": "JVBERi0="}}},
        {"text": "(attached document)"}]
    assert "JSON" in out["system"][0]["text"]
    s3 = to_converse({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "s3://bucket/cat.JPG"}}]}]}, MODEL)
    assert s3["messages"][0]["content"] == [{"image": {
        "format": "jpeg", "source": {"s3Location": {"uri": "s3://bucket/cat.JPG"}}}}]
    for bad in ({"messages": [{"role": "user", "content": "x"}], "n": 2},
                {"messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": "https://x/cat.png"}}]}]},
                {"messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/bmp;base64,AA"}}]}]}):
        with pytest.raises(InvalidRequest):
            to_converse(bad, MODEL)


@pytest.mark.parametrize(("label", "filename", "fmt"), [
    ("application/octet-stream", "Minutes 2024.docx", "docx"),  # a generic label
    ("binary/octet-stream", "budget.XLSX", "xlsx"),
    ("text/x-markdown", "notes.md", "md"),  # a label Converse has no format for
    ("application/zip", "old.doc", "doc"),
    ("text/plain", "table.csv", "txt"),  # a label Converse knows wins
])
def test_a_document_a_label_does_not_tell_goes_by_its_file_extension(
        label: str, filename: str, fmt: str) -> None:
    """A Word, Excel or Markdown file a client labels generically (application/octet-stream,
    what many upload paths give a file they do not know) was a 400, "Bedrock does not take
    documents of type application/octet-stream", though Converse takes the format."""
    part = {"type": "file", "file": {"filename": filename,
                                     "file_data": f"data:{label};base64,UEsDBAo="}}
    out = to_converse({"messages": [{"role": "user", "content": [part]}]}, MODEL)
    assert out["messages"][0]["content"][0]["document"]["format"] == fmt


@pytest.mark.parametrize(("label", "filename"), [
    ("application/octet-stream", "data.json"), ("application/octet-stream", "no-extension"),
    ("application/json", "data.json"), ("application/octet-stream", None)])
def test_a_document_neither_label_nor_extension_tells_is_a_400(
        label: str, filename: str | None) -> None:
    part = {"type": "file", "file": {"filename": filename,
                                     "file_data": f"data:{label};base64,UEsDBAo="}}
    with pytest.raises(InvalidRequest, match="does not take documents"):
        to_converse({"messages": [{"role": "user", "content": [part]}]}, MODEL)

PERSON = {"type": "object", "properties": {
    "name": {"type": "string"},
    "pets": {"type": "array", "items": {"type": "object", "properties": {
        "kind": {"type": "string", "enum": ["cat", "dog"]}}}}},
    "required": ["name", "pets"]}
CLOSED_PERSON = {"type": "object", "properties": {
    "name": {"type": "string"},
    "pets": {"type": "array", "items": {"type": "object", "properties": {
        "kind": {"type": "string", "enum": ["cat", "dog"]}}, "additionalProperties": False}}},
    "required": ["name", "pets"], "additionalProperties": False}


def json_schema_body(**spec: Any) -> dict[str, Any]:
    return {"messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "Ann, who has a cat."}],
            "response_format": {"type": "json_schema",
                                "json_schema": {"schema": PERSON, **spec}}}


@pytest.mark.parametrize("model", ["anthropic.claude-sonnet-4-5-20250929-v1:0",
                                   "us.anthropic.claude-haiku-4-5-20251001-v1:0",
                                   "global.anthropic.claude-opus-4-5-20251101-v1:0",
                                   "anthropic.claude-opus-4-6-v1",
                                   "eu.anthropic.claude-sonnet-4-6"])
def test_a_json_schema_is_converse_structured_output_for_the_models_aws_lists(model: str) -> None:
    out = to_converse(json_schema_body(name="person", description="Who and their pets",
                                       strict=True), model)
    assert out["outputConfig"] == {"textFormat": {"type": "json_schema", "structure": {
        "jsonSchema": {"schema": orjson.dumps(CLOSED_PERSON).decode(), "name": "person",
                       "description": "Who and their pets"}}}}
    assert out["system"] == [{"text": "Be brief."}]  # no instruction beside the constraint
    bare = to_converse(json_schema_body(), model)["outputConfig"]["textFormat"]
    assert bare["structure"]["jsonSchema"].keys() == {"schema"}


@pytest.mark.parametrize("model", [MODEL, "us.anthropic.claude-sonnet-4-20250514-v1:0",
                                   "us.anthropic.claude-opus-4-7",
                                   "arn:aws:bedrock:us-east-1:123456789012:"
                                   "application-inference-profile/abc"])
def test_other_models_get_the_schema_as_an_instruction_unless_told_native(model: str) -> None:
    out = to_converse(json_schema_body(), model)
    assert "outputConfig" not in out
    assert out["system"][1]["text"].endswith(orjson.dumps(PERSON).decode())
    native = to_converse(json_schema_body(), model, "native")
    assert native["outputConfig"]["textFormat"]["structure"]["jsonSchema"]["schema"] == \
        orjson.dumps(CLOSED_PERSON).decode()
    assert native["system"] == [{"text": "Be brief."}]
    claude = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
    assert "outputConfig" not in to_converse(json_schema_body(), claude, "instruction")


def converse_answer(text: str) -> bytes:
    return orjson.dumps({
        "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
        "stopReason": "end_turn", "usage": {"inputTokens": 5, "outputTokens": 5,
                                            "totalTokens": 10}})


@pytest.mark.parametrize(("model", "mode"), [
    ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "auto"), (MODEL, "native")])
async def test_structured_outputs_beside_a_prefill_are_a_400_naming_messages(
        proxy: Any, upstream: Any, model: str, mode: str) -> None:
    """Structured outputs cannot continue a final assistant turn (Anthropic documents the two
    as incompatible; the grammar starts the answer afresh): a clear 400 as on Anthropic, not
    Bedrock's, nor broken JSON for a client that prepends its prefill. A model that gets the
    instruction keeps its prefill."""
    upstream.content_type = "application/json"
    upstream.body = converse_answer('"Ann"}')
    body = {"model": model, "response_format": json_schema_body()["response_format"],
            "messages": [{"role": "user", "content": "Ann"},
                         {"role": "assistant", "content": '{"name": '}]}
    client = await proxy(bedrock_config(upstream.url, default_model=model,
                                        structured_outputs=mode))
    resp = await client.post(CHAT, json=body)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["param"] == "messages" and "prefill" in error["message"]
    assert not upstream.requests
    resp = await client.post(CHAT, json={**body, "model": "us.anthropic.claude-sonnet-4-20250514"
                                                          "-v1:0"})
    assert resp.status == 200 if mode == "auto" else 400
    if mode == "auto":
        [received] = upstream.requests
        assert received.json()["messages"][-1] == {"role": "assistant",
                                                   "content": [{"text": '{"name":'}]}


@pytest.mark.parametrize(("model", "mode", "strict"), [
    ("us.anthropic.claude-sonnet-4-20250514-v1:0", "auto", False),
    ("anthropic.claude-3-7-sonnet-20250219-v1:0", "auto", False),
    ("us.anthropic.claude-opus-4-1-20250805-v1:0", "auto", False),
    (MODEL, "auto", False), ("meta.llama3-3-70b-instruct-v1:0", "auto", False),
    ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "auto", True),
    ("global.anthropic.claude-opus-4-6-v1", "auto", True),
    ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "instruction", False),
    ("qwen.qwen3-32b-v1:0", "native", True)])
async def test_a_strict_tool_is_strict_only_where_the_model_takes_structured_outputs(
        proxy: Any, upstream: Any, model: str, mode: str, strict: bool) -> None:
    """Strict tool use is Converse structured outputs for tool inputs: AWS lists the same
    models for both, and the others refuse it (as Claude Sonnet 4 does on Anthropic: "does not
    support strict tools"). They get the tool as a non-strict one, its parameters as written."""
    upstream.content_type = "application/json"
    upstream.body = converse_answer("Sunny.")
    params = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 9}}}
    client = await proxy(bedrock_config(upstream.url, default_model=model,
                                        structured_outputs=mode))
    resp = await client.post(CHAT, json={
        "model": model, "messages": [{"role": "user", "content": "Weather in Rome?"}],
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": params,
                                                    "strict": True}}]})
    assert resp.status == 200
    [spec] = upstream.requests[0].json()["toolConfig"]["tools"]
    assert ("strict" in spec["toolSpec"]) is strict
    assert (spec["toolSpec"]["inputSchema"]["json"] == params) is not strict


def test_json_object_stays_an_instruction_on_every_model() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_object"}}
    for mode in STRUCTURED_OUTPUTS:
        out = to_converse(body, "anthropic.claude-sonnet-4-5-20250929-v1:0", mode)
        assert "outputConfig" not in out and "JSON" in out["system"][0]["text"]


@pytest.mark.parametrize("model", ["amazon.titan-text-express-v1",
                                   "amazon.titan-text-premier-v1:0",
                                   "mistral.mistral-7b-instruct-v0:2",
                                   "mistral.mixtral-8x7b-instruct-v0:1"])
def test_the_json_instruction_leads_the_first_user_turn_where_converse_takes_no_system(
        model: str) -> None:
    """Titan Text, Mistral 7B Instruct and Mixtral 8x7B take no system prompt (AWS's Converse
    feature table; Bedrock answers 400 "doesn't support system messages"), so the instruction
    the proxy adds went to `system` and failed a request that had no system message."""
    body = {"messages": [{"role": "user", "content": "Ann, who has a cat."},
                         {"role": "assistant", "content": "Noted."},
                         {"role": "user", "content": "As JSON."}],
            "response_format": {"type": "json_object"}}
    out = to_converse(body, model)
    assert "system" not in out
    first, *rest = out["messages"][0]["content"]
    assert "JSON" in first["text"] and rest == [{"text": "Ann, who has a cat."}]
    assert out["messages"][2]["content"] == [{"text": "As JSON."}]
    schema = to_converse(json_schema_body(), model)
    assert schema["system"] == [{"text": "Be brief."}]  # the client's own, as sent
    assert schema["messages"][0]["content"][0]["text"].endswith(orjson.dumps(PERSON).decode())
    assert "system" not in to_converse({"messages": [{"role": "user", "content": "hi"}]}, model)


# -- auth and configuration ---------------------------------------------------------------------

def verify_sigv4(received: Received, secret: str, region: str) -> dict[str, str]:
    """Recompute the SigV4 signature of what the fake upstream received, from the spec (not
    botocore): the canonical URI is the path as it came over the wire, URI-encoded once more,
    as AWS does for every service but S3."""
    h = {k.lower(): v for k, v in received.headers.items()}
    m = re.fullmatch(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
                     r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})", h["authorization"])
    assert m, h["authorization"]
    akid, date, reg, service, signed, signature = m.groups()
    assert (reg, service) == (region, "bedrock")
    assert h["x-amz-date"].startswith(date)
    names = signed.split(";")
    assert "host" in names and "x-amz-date" in names and "content-type" in names
    path, _, query = received.path.partition("?")
    canonical = "\n".join([
        "POST", quote(path, safe="/~"), query,
        "".join(f"{n}:{' '.join(h[n].split())}\n" for n in names), signed,
        hashlib.sha256(received.body).hexdigest()])
    scope = f"{date}/{region}/bedrock/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", h["x-amz-date"], scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + secret).encode()
    for part in (date, region, "bedrock", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    assert hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest() == signature
    return {"akid": akid, **h}


async def stream_request(client: Any, **body: Any) -> Any:
    return await client.post(CHAT, json={
        "model": MODEL, "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "What is the temperature of the capital?"}],
        **body})


async def test_through_the_proxy_signed_with_sigv4(proxy: Any, upstream: Any) -> None:
    upstream.content_type = EVENTSTREAM
    upstream.pieces = random_splits(RECORDING, random.Random(11), max_piece=300)
    client = await proxy(bedrock_config(upstream.url, aws_session_token=TOKEN))
    resp = await stream_request(client, tools=TOOLS, tool_choice="auto", max_tokens=64)
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    check_recording(await resp.read())
    [received] = upstream.requests
    assert received.path == "/model/amazon.nova-micro-v1:0/converse-stream"
    headers = verify_sigv4(received, SECRET, "us-west-2")
    assert headers["akid"] == AKID
    assert headers["x-amz-security-token"] == TOKEN
    assert "x-amz-security-token" in headers["authorization"]  # signed too
    sent = received.json()
    assert sent["inferenceConfig"] == {"maxTokens": 64}
    assert sent["toolConfig"]["toolChoice"] == {"auto": {}}
    assert "model" not in sent and "stream" not in sent


async def test_arn_model_ids_are_encoded_and_signed_as_sent(proxy: Any, upstream: Any) -> None:
    arn = "arn:aws:bedrock:us-west-2:123456789012:inference-profile/us.amazon.nova-micro-v1:0"
    upstream.content_type = EVENTSTREAM
    upstream.body = RECORDING
    client = await proxy(bedrock_config(upstream.url, default_model=arn))
    resp = await stream_request(client, model=None)
    check_recording(await resp.read())
    [received] = upstream.requests
    assert received.path == ("/model/arn:aws:bedrock:us-west-2:123456789012:inference-profile"
                             "%2Fus.amazon.nova-micro-v1:0/converse-stream")
    verify_sigv4(received, SECRET, "us-west-2")


async def test_forwarded_client_headers_are_signed_as_sent(proxy: Any, upstream: Any) -> None:
    """Every signed header reaches AWS as signed: a forwarded accept-encoding (which the
    upstream client replaces with identity) is not forwarded, so it is not signed either."""
    upstream.content_type = EVENTSTREAM
    upstream.body = RECORDING
    client = await proxy(bedrock_config(upstream.url))
    resp = await client.post(CHAT, json={
        "model": MODEL, "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "Hi"}]},
        headers={"x-portkey-forward-headers": "accept-encoding, x-trace",
                 "accept-encoding": "gzip", "x-trace": "t-1"})
    check_recording(await resp.read())
    headers = verify_sigv4(upstream.requests[0], SECRET, "us-west-2")
    assert headers["x-trace"] == "t-1"


async def test_a_configured_accept_encoding_is_not_signed(proxy: Any, upstream: Any) -> None:
    """The upstream client replaces it with its own after SigV4 signed it: AWS would refuse
    the signature (403)."""
    upstream.content_type = EVENTSTREAM
    upstream.body = RECORDING
    client = await proxy(bedrock_config(upstream.url, headers={"Accept-Encoding": "gzip"}))
    resp = await client.post(CHAT, json={"model": MODEL, "stream": True,
                                         "messages": [{"role": "user", "content": "Hi"}]})
    assert resp.status == 200 and await resp.read()
    verify_sigv4(upstream.requests[0], SECRET, "us-west-2")


async def test_credentials_from_env_variables_named_in_options(
        proxy: Any, upstream: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_AK", "AKIDFROMENV")
    monkeypatch.setenv("MY_SK", "secret-from-env")
    upstream.content_type = EVENTSTREAM
    upstream.body = RECORDING
    client = await proxy(bedrock_config(
        upstream.url, aws_access_key_id=None, aws_secret_access_key=None,
        aws_access_key_id_env="MY_AK", aws_secret_access_key_env="MY_SK", region="eu-west-3"))
    check_recording(await (await stream_request(client)).read())
    assert verify_sigv4(upstream.requests[0], "secret-from-env", "eu-west-3")["akid"] == \
        "AKIDFROMENV"


def hermetic_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No AWS credentials anywhere the default chain looks, and no instance-metadata calls."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_BEARER_TOKEN_BEDROCK",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


async def test_default_chain_from_environment(proxy: Any, upstream: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    hermetic_aws_env(monkeypatch)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDCHAIN")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "chain-secret")
    upstream.content_type = EVENTSTREAM
    upstream.body = RECORDING
    client = await proxy(bedrock_config(upstream.url, aws_access_key_id=None,
                                        aws_secret_access_key=None))
    check_recording(await (await stream_request(client)).read())
    assert verify_sigv4(upstream.requests[0], "chain-secret", "us-west-2")["akid"] == "AKIDCHAIN"


@pytest.mark.parametrize("where", ["api_key", "env"])
async def test_bedrock_api_key_as_bearer(where: str, proxy: Any, upstream: Any,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    hermetic_aws_env(monkeypatch)
    extra: dict[str, Any] = {"aws_access_key_id": None, "aws_secret_access_key": None}
    if where == "api_key":
        extra["api_key"] = "bedrock-api-key-1"
    else:
        monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", "bedrock-api-key-1\n")  # (a file's newline)
    upstream.content_type = EVENTSTREAM
    upstream.body = RECORDING
    client = await proxy(bedrock_config(upstream.url, **extra))
    check_recording(await (await stream_request(client)).read())
    headers = {k.lower(): v for k, v in upstream.requests[0].headers.items()}
    assert headers["authorization"] == "Bearer bedrock-api-key-1"
    assert "x-amz-date" not in headers


async def test_no_credentials_uses_the_client_key_or_fails_401(
        proxy: Any, upstream: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    hermetic_aws_env(monkeypatch)
    upstream.content_type = EVENTSTREAM
    upstream.body = RECORDING
    client = await proxy(bedrock_config(upstream.url, aws_access_key_id=None,
                                        aws_secret_access_key=None))
    resp = await stream_request(client)
    assert resp.status == 401
    assert (await resp.json())["error"]["type"] == "authentication_error"
    resp = await client.post(CHAT, headers={"authorization": "Bearer client-bedrock-key"},
                             json={"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                                   "stream": True})
    check_recording_no_usage(await resp.read())
    assert upstream.requests[0].headers["Authorization"] == "Bearer client-bedrock-key"


TARGET_KEY = "ABSKdGFyZ2V0LWJlZHJvY2sta2V5LTE="  # a config target's or virtual key's


def bedrock_provider(url: str, provider_auth: str) -> dict[str, Any]:
    """A Bedrock provider authenticating with a Bedrock API key (`api_key`), static SigV4 keys
    (`sigv4`), or neither (`env`: AWS_BEARER_TOKEN_BEDROCK, when the test sets it)."""
    provider = {"type": "bedrock", "base_url": url, "region": "us-west-2",
                "default_model": MODEL}
    if provider_auth == "api_key":
        provider["api_key"] = "bedrock-api-key-1"
    elif provider_auth == "sigv4":
        provider.update(aws_access_key_id=AKID, aws_secret_access_key=SECRET)
    return provider


@pytest.mark.parametrize("provider_auth", ["api_key", "env", "sigv4"])
@pytest.mark.parametrize("headers", [
    {"x-portkey-config": orjson.dumps({"provider": "aws", "api_key": TARGET_KEY}).decode()},
    {"x-portkey-config": "named"},
    {"x-portkey-virtual-key": "vk"},
    {"x-portkey-provider": "@vk"},
])
async def test_a_target_s_own_key_wins_over_the_provider_s_credentials(
        provider_auth: str, headers: dict[str, str], proxy: Any, upstream: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # As on every provider type, the key a config target or virtual key names is the one sent
    # (a Bedrock API key), not the provider's own: it was ignored beside one.
    hermetic_aws_env(monkeypatch)
    if provider_auth == "env":
        monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", "bedrock-api-key-1")
    upstream.content_type = EVENTSTREAM
    upstream.body = RECORDING
    client = await proxy(make_config(
        {"aws": bedrock_provider(upstream.url, provider_auth)}, default="aws",
        virtual_keys={"vk": {"provider": "aws", "api_key": TARGET_KEY}},
        configs={"named": {"provider": "aws", "api_key": TARGET_KEY}}))
    resp = await client.post(CHAT, headers=headers, json={
        "model": MODEL, "stream": True, "messages": [{"role": "user", "content": "x"}]})
    check_recording_no_usage(await resp.read())
    sent = {k.lower(): v for k, v in upstream.requests[0].headers.items()}
    assert sent["authorization"] == f"Bearer {TARGET_KEY}"
    assert "x-amz-date" not in sent


@pytest.mark.parametrize("provider_auth", ["api_key", "env", "sigv4"])
async def test_the_client_s_authorization_does_not_replace_the_provider_s_credentials(
        provider_auth: str, proxy: Any, upstream: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    hermetic_aws_env(monkeypatch)
    if provider_auth == "env":
        monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", "bedrock-api-key-1")
    upstream.content_type = EVENTSTREAM
    upstream.body = RECORDING
    client = await proxy(make_config({"aws": bedrock_provider(upstream.url, provider_auth)},
                                     default="aws"))
    for headers in ({"authorization": "Bearer client-bedrock-key"},
                    {"authorization": "Bearer client-bedrock-key",
                     "x-portkey-config": '{"provider": "aws"}'}):
        resp = await client.post(CHAT, headers=headers, json={
            "model": MODEL, "stream": True, "messages": [{"role": "user", "content": "x"}]})
        check_recording_no_usage(await resp.read())
    for request in upstream.requests:
        sent = request.headers["Authorization"]
        assert "client-bedrock-key" not in sent
        assert sent == "Bearer bedrock-api-key-1" if provider_auth != "sigv4" else (
            sent.startswith("AWS4-HMAC-SHA256 "))


def check_recording_no_usage(out: bytes) -> None:
    c = collect(sse_chunks(out))
    assert c.done and c.content == CONTENT and c.usage is None


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="go together"):
        bedrock_config("http://x", aws_secret_access_key=None)
    with pytest.raises(ConfigError, match="unknown key"):
        bedrock_config("http://x", regoin="us-east-1")
    with pytest.raises(ConfigError, match="not both"):
        bedrock_config("http://x", profile="dev")
    with pytest.raises(ConfigError, match="must be one of auto, native, instruction"):
        bedrock_config("http://x", structured_outputs="strict")


@pytest.mark.parametrize("options", [
    {"aws_access_key_id_env": "", "aws_secret_access_key_env": ""},
    {"aws_access_key_id": "", "aws_secret_access_key": ""},
    {"profile": " "},
])
def test_an_empty_credential_option_is_an_error_not_the_default_chain(
        options: dict[str, Any]) -> None:
    """`aws_access_key_id_env: ""` (an unset template variable) was read as not given: the
    default credential chain (the host's role, ~/.aws) signed in place of the keys meant."""
    with pytest.raises(ConfigError, match="is empty") as info:
        parse_config({"providers": {"b": {"type": "bedrock", "region": "us-east-1",
                                          **options}}}, "f.yaml")
    assert info.value.key == f"providers.b.{next(iter(options))}"


@pytest.mark.parametrize("value", ["bedrock-api-key-1\nX-Evil: 1", "bedrock\x7fkey",
                                   "bedrock\u200bkey", "\u201cbedrock-api-key-1\u201d"])
def test_a_bedrock_token_variable_with_a_control_or_non_ascii_character_is_a_config_error(
        value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """AWS_BEARER_TOKEN_BEDROCK was only trimmed: a line break inside it failed every
    request as its header was written (a 500), a smart quote or zero-width space went as UTF-8
    (AWS's 403), where the same in `api_key` or a static key is refused as the config loads."""
    hermetic_aws_env(monkeypatch)
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", value)
    config = bedrock_config("https://h", aws_access_key_id=None, aws_secret_access_key=None)
    with pytest.raises(ConfigError) as info:
        BedrockProvider(config.providers["aws"])
    assert "AWS_BEARER_TOKEN_BEDROCK" in str(info.value)
    assert "bedrock" not in str(info.value).replace("AWS_BEARER_TOKEN_BEDROCK", "").lower()
    # Not read where it is not used: a provider with keys of its own still starts.
    BedrockProvider(bedrock_config("https://h").providers["aws"])
    BedrockProvider(bedrock_config("https://h", api_key="k", aws_access_key_id=None,
                                   aws_secret_access_key=None).providers["aws"])


def test_missing_region_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    hermetic_aws_env(monkeypatch)  # (nor one in ~/.aws/config)
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    with pytest.raises(ConfigError, match="region") as info:
        bedrock_config("http://x", region=None)
    assert info.value.key == "providers.aws.region"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    config = bedrock_config(None, region=None)  # type: ignore[arg-type]
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    with pytest.raises(ConfigError, match="region"):  # checked again when the provider starts
        BedrockProvider(config.providers["aws"])
    monkeypatch.setenv("AWS_REGION", "ap-south-1")
    provider = BedrockProvider(config.providers["aws"])
    assert provider.base_url == "https://bedrock-runtime.ap-south-1.amazonaws.com"


def test_the_region_of_the_profile_the_chain_uses(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Without `region` and `profile`, the default chain signs with AWS_PROFILE's profile (or
    `default`), but only a `profile` option's region was read: a host set up with `aws
    configure` refused to start ("no AWS region ... or one in the profile"), where the AWS CLI
    and boto3 use that profile's region. An explicit region still wins."""
    hermetic_aws_env(monkeypatch)
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    aws_config = tmp_path / "aws-config"
    aws_config.write_text("[default]\nregion = eu-north-1\n[profile dev]\nregion = AP-South-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(aws_config))
    chain = {"aws_access_key_id": None, "aws_secret_access_key": None, "region": None}

    def base_url() -> str:
        return BedrockProvider(bedrock_config(None, **chain).providers["aws"]).base_url  # type: ignore[arg-type]

    assert base_url() == "https://bedrock-runtime.eu-north-1.amazonaws.com"
    monkeypatch.setenv("AWS_PROFILE", "dev")
    assert base_url() == "https://bedrock-runtime.ap-south-1.amazonaws.com"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-2")
    assert base_url() == "https://bedrock-runtime.us-east-2.amazonaws.com"
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.setenv("AWS_PROFILE", "absent")  # (its credentials' lookup reports it)
    with pytest.raises(ConfigError, match="no AWS region"):
        bedrock_config(None, **chain)  # type: ignore[arg-type]


def test_a_region_that_is_not_one_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # ("x.s3" aimed every request at bedrock-runtime.x.s3.amazonaws.com, an S3 bucket's host)
    with pytest.raises(ConfigError, match="AWS region") as info:
        bedrock_config(None, region="x.s3")  # type: ignore[arg-type]
    assert info.value.key == "providers.aws.region"
    monkeypatch.setenv("AWS_REGION", "x.s3/")
    with pytest.raises(ConfigError, match="AWS_REGION") as info:
        bedrock_config(None, region=None)  # type: ignore[arg-type]
    assert info.value.key == "providers.aws.region"


async def test_credential_lookup_and_renewal_happen_in_prepare_not_in_signing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    now = datetime.now(UTC)
    renewals = []

    def renew() -> dict[str, str]:
        renewals.append(1)
        return {"access_key": "AKIDNEW", "secret_key": "new-secret", "token": "t2",
                "expiry_time": (now + timedelta(hours=1)).isoformat()}

    expiring = RefreshableCredentials.create_from_metadata(
        {"access_key": "AKIDOLD", "secret_key": "old", "token": "t1",
         "expiry_time": (now + timedelta(minutes=5)).isoformat()}, renew, "test")
    lookups = []
    monkeypatch.setattr(botocore.session.Session, "get_credentials",
                        lambda self: lookups.append(1) or expiring)
    provider = BedrockProvider(bedrock_config("https://h", aws_access_key_id=None,
                                              aws_secret_access_key=None).providers["aws"])
    target = Target(provider, MODEL)
    assert provider.auth.needs_io()  # nothing looked up yet
    await provider.prepare(target)
    assert lookups == [1] and renewals == [1]  # looked up, and renewed: it expired within 10 min
    assert not provider.auth.needs_io()
    req = parse_chat_request(b'{"model":"m","messages":[{"role":"user","content":"x"}]}')
    headers = provider.build_request(req, target).headers
    assert "Credential=AKIDNEW/" in headers["Authorization"]
    assert headers["X-Amz-Security-Token"] == "t2"
    assert lookups == [1] and renewals == [1]  # signing did no I/O


def test_a_hung_credential_lookup_holds_up_neither_the_shutdown_nor_other_threads(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests give up on a lookup that hangs (a credential_process: botocore gives it no
    timeout); it ran in asyncio.to_thread's executor, which asyncio.run joins at the end (a
    SIGTERM waited for the command, whatever shutdown_grace said), and each request left a
    thread of it there waiting on the lock, until no thread was left for anything else."""
    release = threading.Event()
    lookups = []

    def hang(self: Any) -> None:
        lookups.append(1)
        release.wait(4)

    monkeypatch.setattr(botocore.session.Session, "get_credentials", hang)
    provider = BedrockProvider(bedrock_config("https://h", aws_access_key_id=None,
                                              aws_secret_access_key=None).providers["aws"])
    target = Target(provider, MODEL)

    async def give_up() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(provider.prepare(target), 0.2)

    async def requests_that_give_up() -> None:
        await asyncio.gather(*(give_up() for _ in range(40)))
        assert await asyncio.wait_for(asyncio.to_thread(lambda: "free"), 1) == "free"

    started = time.monotonic()
    try:
        asyncio.run(requests_that_give_up())
        assert time.monotonic() - started < 2
        assert lookups == [1]  # one run, which every request waited for
    finally:
        release.set()


async def test_a_hung_credential_lookup_is_a_502_after_its_deadline(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A request waits for a lookup at most LOOKUP_DEADLINE (Vertex's token fetch has the same
    bound), then gets a 502 its fallback can act on: it waited for its own first-token
    timeout, 600 s by default."""
    release = threading.Event()
    monkeypatch.setattr(botocore.session.Session, "get_credentials",
                        lambda self: release.wait(4))
    monkeypatch.setattr(bedrock_auth, "LOOKUP_DEADLINE", 0.2)
    provider = BedrockProvider(bedrock_config("https://h", aws_access_key_id=None,
                                              aws_secret_access_key=None).providers["aws"])
    try:
        started = time.monotonic()
        with pytest.raises(bedrock_auth.CredentialsUnavailable) as info:
            await asyncio.wait_for(provider.prepare(Target(provider, MODEL)), 3)
        assert info.value.status == 502 and "0.2s" in info.value.message
        assert time.monotonic() - started < 1
    finally:
        release.set()


async def test_a_failed_credential_lookup_is_a_502_not_the_clients_401(
        proxy: Any, upstream: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway's own AWS credentials failing to load (a credential_process that fails,
    STS or SSO unreachable for a renewal) answered 401 `invalid_api_key`: the client was told
    its key was wrong, and a retry or the circuit breaker (5xx) did not act on it. It is the
    502 `upstream_credentials_unavailable` a lookup past its deadline (and Vertex's failed
    token fetch) gets, naming the error's type alone."""
    hermetic_aws_env(monkeypatch)
    aws_config = tmp_path / "aws-config"
    aws_config.write_text("[profile dev]\ncredential_process = false\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(aws_config))
    client = await proxy(bedrock_config(upstream.url, aws_access_key_id=None,
                                        aws_secret_access_key=None, profile="dev"))
    resp = await stream_request(client)
    assert resp.status == 502, await resp.text()
    err = (await resp.json())["error"]
    assert err["code"] == "upstream_credentials_unavailable"
    assert err["message"] == ("provider 'aws': AWS credentials could not be loaded "
                              "(CredentialRetrievalError)")
    assert not upstream.requests


ASSUMED_ROLE = b"""<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
<AssumeRoleResult><Credentials><AccessKeyId>AKIDROLE</AccessKeyId>
<SecretAccessKey>role-secret</SecretAccessKey><SessionToken>role-token</SessionToken>
<Expiration>2099-01-01T00:00:00Z</Expiration></Credentials>
<AssumedRoleUser><AssumedRoleId>AROAEXAMPLE:s</AssumedRoleId>
<Arn>arn:aws:sts::123456789012:assumed-role/r/s</Arn></AssumedRoleUser></AssumeRoleResult>
<ResponseMetadata><RequestId>1</RequestId></ResponseMetadata></AssumeRoleResponse>"""


@pytest.mark.parametrize("credentials", ["", "alice:p%40ss@"])
async def test_sts_is_reached_through_the_upstream_proxy(
        proxy: Any, upstream: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        credentials: str) -> None:
    """botocore's own calls (STS for a profile's role, web identity, SSO) leave as the
    upstream requests do (`server.upstream_proxy`), not as botocore would on its own (the
    environment's proxy, here a dead one): a host that reaches AWS only through its egress
    proxy had no credentials, and answered 401."""
    hermetic_aws_env(monkeypatch)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", "http://sts.example.test")
    aws_config = tmp_path / "aws-config"
    aws_config.write_text("[profile dev]\nrole_arn = arn:aws:iam::123456789012:role/r\n"
                          "source_profile = base\nregion = us-west-2\n[profile base]\n"
                          "aws_access_key_id = AKIDBASE\naws_secret_access_key = base\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(aws_config))
    async def assume_role(request: web.Request) -> web.Response:
        return web.Response(body=ASSUMED_ROLE, content_type="text/xml")

    sts = web.Application()
    sts.router.add_post("/", assume_role)
    runner = web.AppRunner(sts)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    forward = ForwardProxy(("127.0.0.1", runner.addresses[0][1]))
    await forward.start()
    upstream.content_type = EVENTSTREAM
    upstream.body = RECORDING
    config = make_config(
        {"aws": {"type": "bedrock", "base_url": upstream.url, "region": "us-west-2",
                 "profile": "dev", "default_model": MODEL}}, default="aws",
        server={"upstream_proxy": {"url": f"http://{credentials}127.0.0.1:{forward.port}"}})
    try:
        client = await proxy(config)
        resp = await stream_request(client)
        assert resp.status == 200, await resp.text()
    finally:
        await forward.stop()
        await runner.cleanup()
    [head] = forward.heads
    assert head.startswith(b"POST http://sts.example.test/ HTTP/1.1\r\n")
    if credentials:
        assert b"Proxy-Authorization: Basic " + base64.b64encode(b"alice:p@ss") in head
    assert verify_sigv4(upstream.requests[0], "role-secret", "us-west-2")["akid"] == "AKIDROLE"


async def test_an_assumed_roles_credentials_stay_out_of_the_debug_log(
        caplog: pytest.LogCaptureFixture, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """At debug level botocore logged its STS call's signed request and STS's answer, which is
    the new secret key and session token."""
    hermetic_aws_env(monkeypatch)
    aws_config = tmp_path / "aws-config"
    aws_config.write_text("[profile dev]\nrole_arn = arn:aws:iam::123456789012:role/r\n"
                          "source_profile = base\nregion = us-west-2\n[profile base]\n"
                          "aws_access_key_id = AKIDBASE\naws_secret_access_key = base\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(aws_config))

    async def assume_role(request: web.Request) -> web.Response:
        return web.Response(body=ASSUMED_ROLE, content_type="text/xml")

    sts = web.Application()
    sts.router.add_post("/", assume_role)
    runner = web.AppRunner(sts)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", f"http://127.0.0.1:{runner.addresses[0][1]}")
    caplog.set_level(logging.DEBUG)
    provider = BedrockProvider(bedrock_config("https://h", aws_access_key_id=None,
                                              aws_secret_access_key=None, profile="dev")
                               .providers["aws"])
    try:
        await provider.auth.load_off_loop()
    finally:
        await runner.cleanup()
    assert provider.auth._credentials.get_frozen_credentials().token == "role-token"
    assert "AssumeRole" in caplog.text  # botocore's other debug lines are kept
    for secret in ("role-secret", "role-token", "Signature="):
        assert secret not in caplog.text


def test_secrets_stay_out_of_logs_reprs_and_errors(caplog: pytest.LogCaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG)
    provider = BedrockProvider(bedrock_config("https://h", aws_session_token=TOKEN)
                               .providers["aws"])
    req = parse_chat_request(b'{"model":"m","messages":[{"role":"user","content":"x"}]}')
    signed = provider.build_request(req, Target(provider, MODEL))
    assert signed.headers["X-Amz-Security-Token"] == TOKEN
    text = caplog.text + repr(provider.auth) + repr(provider.cfg)
    assert SECRET not in text and TOKEN not in text
    hermetic_aws_env(monkeypatch)
    bare = BedrockProvider(bedrock_config("https://h", aws_access_key_id=None,
                                          aws_secret_access_key=None).providers["aws"])
    with pytest.raises(AuthenticationFailed) as info:
        bare.build_request(req, Target(bare, MODEL))
    assert "no AWS credentials" in str(info.value)


# -- non-stream, errors, and the openai SDK -----------------------------------------------------

CONVERSE_ANSWER = {
    "output": {"message": {"role": "assistant", "content": [
        {"reasoningContent": {"reasoningText": {"text": "Think.", "signature": "S1"}}},
        {"text": "Calling the tool."},
        {"toolUse": {"toolUseId": "tooluse_1", "name": "get_capital",
                     "input": {"country": "France"}}}]}},
    "stopReason": "tool_use",
    "usage": {"inputTokens": 20, "outputTokens": 10, "totalTokens": 30,
              "cacheReadInputTokens": 5},
    "metrics": {"latencyMs": 100},
}


async def test_non_stream_converse(proxy: Any, upstream: Any) -> None:
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps(CONVERSE_ANSWER)
    client = await proxy(bedrock_config(upstream.url))
    resp = await client.post(CHAT, json={"model": MODEL, "messages": [
        {"role": "user", "content": "hi"}]})
    assert resp.status == 200
    out = await resp.json()
    assert upstream.requests[0].path == "/model/amazon.nova-micro-v1:0/converse"
    verify_sigv4(upstream.requests[0], SECRET, "us-west-2")
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Calling the tool."
    assert choice["message"]["reasoning_content"] == "Think."
    assert choice["message"]["thinking_blocks"] == [
        {"type": "thinking", "thinking": "Think.", "signature": "S1"}]
    assert choice["message"]["tool_calls"] == [{
        "id": "tooluse_1", "type": "function",
        "function": {"name": "get_capital", "arguments": '{"country":"France"}'}}]
    assert out["usage"] == {"prompt_tokens": 25, "completion_tokens": 10, "total_tokens": 35,
                            "prompt_tokens_details": {"cached_tokens": 5},
                            "cache_read_input_tokens": 5, "cache_creation_input_tokens": 0}


def test_non_stream_cited_text_is_content() -> None:
    # With document citations on, Converse answers a cited span as a citationsContent block
    # whose text is in its `content` (AWS CitationsContentBlock), not as a text block beside it:
    # the stream sends that text as text deltas, so the answer must hold it too.
    answer = {"output": {"message": {"role": "assistant", "content": [
        {"text": "The grass is "},
        {"citationsContent": {"content": [{"text": "green"}, {"text": " and tall"}],
                              "citations": [{"title": "doc", "location": {
                                  "documentChar": {"documentIndex": 0, "start": 0, "end": 9}},
                                  "sourceContent": [{"text": "grass green"}]}]}},
        {"text": "."}]}},
        "stopReason": "end_turn", "usage": {"inputTokens": 3, "outputTokens": 4}}
    out = to_completion(orjson.dumps(answer), completion_id="c", created=1, model="m")
    assert out["choices"][0]["message"]["content"] == "The grass is green and tall."
    assert out["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(("status", "kind"), [(400, "ValidationException"),
                                              (429, "ThrottlingException"),
                                              (403, "AccessDeniedException")])
async def test_error_bodies_keep_status_and_message(status: int, kind: str, proxy: Any,
                                                    upstream: Any) -> None:
    upstream.status = status
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps({"message": f"{kind} happened"})
    upstream.extra_headers = {"x-amzn-errortype": f"{kind}:http://internal.amazon.com/coral/"}
    client = await proxy(bedrock_config(upstream.url))
    resp = await stream_request(client)
    assert resp.status == status
    error = (await resp.json())["error"]
    assert error["message"] == f"{kind} happened"
    assert error["code"] == kind  # from the x-amzn-errortype header, through the proxy
    provider = BedrockProvider(bedrock_config(upstream.url).providers["aws"])
    err = provider.parse_error(status, upstream.body, f"{kind}:http://internal.amazon.com/")
    assert (err.status, err.code) == (status, kind)
    assert provider.parse_error(500, b"<html>oops</html>").message == \
        "provider 'aws' returned HTTP 500"


# AWS's answer to a signature it computes otherwise (a wrong secret key, a header changed on
# the way): its message quotes the canonical request, every signed header with its value —
# the gateway's session token among them (LiteLLM #14763, Continue #9297 show the text).
SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check "
    "your AWS Secret Access Key and signing method. Consult the service documentation for "
    "details.\n\nThe Canonical String for this request should have been\n'POST\n"
    f"/model/{quote(MODEL, safe='')}/converse-stream\n\ncontent-type:application/json\n"
    "host:bedrock-runtime.us-west-2.amazonaws.com\nx-amz-date:20250921T101604Z\n"
    f"x-amz-security-token:{TOKEN}\n\ncontent-type;host;x-amz-date;x-amz-security-token\n"
    "fea7815fd74adf3ef10f764bcea846ea6a3ffec335c8754302d2e40114f9db3e'\n\nThe String-to-Sign "
    "should have been\n'AWS4-HMAC-SHA256\n20250921T101604Z\n20250921/us-west-2/bedrock/"
    "aws4_request\nd61e31a0afb51765f0b2ee88381d0950cc8a0fc054633f0e163ff85336a4beae'\n")


@pytest.mark.parametrize("stream", [True, False])
async def test_a_signature_mismatch_never_shows_the_session_token(stream: bool, proxy: Any,
                                                                  upstream: Any) -> None:
    upstream.status = 403
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps({"message": SIGNATURE_MISMATCH})
    upstream.extra_headers = {"x-amzn-errortype": "InvalidSignatureException:http://internal."
                                                  "amazon.com/coral/com.amazon.coral.service/"}
    client = await proxy(bedrock_config(upstream.url, aws_session_token=TOKEN))
    resp = await client.post(CHAT, json={"model": MODEL, "stream": stream, "messages": [
        {"role": "user", "content": "hi"}]})
    assert upstream.requests[0].headers["X-Amz-Security-Token"] == TOKEN  # (it was signed)
    assert resp.status == 403
    body = await resp.read()
    assert TOKEN.encode() not in body
    error = orjson.loads(body)["error"]
    assert error["code"] == "InvalidSignatureException"
    assert error["message"] == SIGNATURE_MISMATCH.split("\n")[0]  # what went wrong, and where


async def test_exception_as_first_frame_is_an_error_response(proxy: Any, upstream: Any) -> None:
    upstream.content_type = EVENTSTREAM
    upstream.body = EXCEPTION
    client = await proxy(bedrock_config(upstream.url))
    resp = await stream_request(client)
    assert resp.status == 500  # nothing was committed yet: a plain error response
    assert (await resp.json())["error"]["code"] == "modelStreamErrorException"


async def test_exception_and_truncation_after_commit_through_the_proxy(proxy: Any,
                                                                       upstream: Any) -> None:
    frames = split_frames(RECORDING)
    upstream.content_type = EVENTSTREAM
    client = await proxy(bedrock_config(upstream.url))
    upstream.pieces = [b"".join(frames[:4]), b"".join(frames[4:8]),
                       exception("throttlingException", "slow down")]
    c = collect(sse_chunks(await (await stream_request(client)).read()))
    assert c.content == "<thinking> To find the temperature of"
    assert c.error is not None and c.error["code"] == "throttlingException"
    assert c.finish_reason is None and not c.done
    upstream.pieces = [b"".join(frames[:4]), RECORDING[sum(map(len, frames[:4])):][:777]]
    c = collect(sse_chunks(await (await stream_request(client)).read()))
    assert c.error is not None and c.error["code"] == "upstream_stream_truncated"
    assert c.finish_reason is None and not c.done



def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [orjson.loads(r.getMessage()) for r in caplog.records
            if r.name == "streamproxy.access"]


@pytest.mark.parametrize("upstream_client", ["native", "aiohttp"])  # piped and pulled
async def test_a_failed_stop_falls_back_before_the_commit_and_logs_its_usage_after(
        upstream_client: str, proxy: Any, upstream: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    upstream.content_type = EVENTSTREAM
    client = await proxy(make_config({
        "aws": {"type": "bedrock", "base_url": upstream.url, "region": "us-west-2",
                "aws_access_key_id": AKID, "aws_secret_access_key": SECRET,
                "default_model": MODEL},
        "m": {"type": "mock", "default_model": "fast"}}, default="aws",
        server={"upstream_client": upstream_client}))
    failed = failed_recording()
    stop = failed.index(event("messageStop", {"stopReason": "malformed_tool_use"}))
    # All in one read: nothing reached the client, so the fallback answers.
    upstream.body = failed
    config = {"strategy": {"mode": "fallback"}, "targets": [
        {"provider": "aws"}, {"provider": "m", "override_params": {"model": "fast:tokens=2"}}]}
    resp = await client.post(CHAT, headers={"x-portkey-config": orjson.dumps(config).decode()},
                             json={"model": MODEL, "stream": True,
                                   "messages": [{"role": "user", "content": "hi"}]})
    c = collect(sse_chunks(await resp.read()))
    assert resp.status == 200 and c.error is None and c.done
    assert access_lines(caplog)[-1]["upstream_errors"] == ["aws:status_502"]
    # Committed first (the answer, then its failed stop and metadata a read later):
    # the error frame ends the client's stream, and the log has the answer's tokens.
    upstream.body, upstream.pieces, upstream.piece_delay = b"", [failed[:stop], failed[stop:]], 0.05
    c = collect(sse_chunks(await (await stream_request(client)).read()))
    assert c.content == CONTENT and c.error is not None
    assert c.error["code"] == "malformed_tool_use" and c.usage is None
    line = access_lines(caplog)[-1]
    assert (line["error_code"], line["prompt_tokens"], line["completion_tokens"],
            line["tokens_partial"]) == ("malformed_tool_use", 489, 59, False)


async def test_openai_sdk_streaming_end_to_end(proxy: Any, upstream: Any) -> None:
    upstream.content_type = EVENTSTREAM
    upstream.pieces = random_splits(RECORDING, random.Random(5), max_piece=500)
    client = await proxy(bedrock_config(upstream.url))
    sdk = openai_sdk(client)
    stream = await sdk.chat.completions.create(
        model=MODEL, stream=True, stream_options={"include_usage": True}, tools=TOOLS,
        messages=[{"role": "user", "content": "What is the temperature of the capital?"}])
    content, args, finish, usage, ids = "", "", None, None, set()
    async for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for tc in choice.delta.tool_calls or []:
                assert tc.index == 0
                ids.add(tc.id) if tc.id else None
                args += tc.function.arguments or ""
            finish = choice.finish_reason or finish
    assert content == CONTENT and orjson.loads(args) == {"country": "France"}
    assert ids == {"tooluse_QjQX34XORLu0wJVplWWHGQ"} and finish == "tool_calls"
    assert usage is not None and usage.total_tokens == 548
    await sdk.close()


async def test_openai_sdk_non_streaming_end_to_end(proxy: Any, upstream: Any) -> None:
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps(CONVERSE_ANSWER)
    client = await proxy(bedrock_config(upstream.url))
    sdk = openai_sdk(client)
    answer = await sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], tools=TOOLS)
    message = answer.choices[0].message
    assert message.content == "Calling the tool."
    assert message.tool_calls[0].function.name == "get_capital"
    assert orjson.loads(message.tool_calls[0].function.arguments) == {"country": "France"}
    assert answer.choices[0].finish_reason == "tool_calls" and answer.usage.prompt_tokens == 25
    await sdk.close()


class Person(pydantic.BaseModel):
    name: str
    age: int


@pytest.mark.parametrize("stream", [False, True])
async def test_openai_sdk_parse_with_native_structured_output(stream: bool, proxy: Any,
                                                               upstream: Any) -> None:
    answer = '{"name":"Ann","age":31}'
    if stream:
        upstream.content_type = EVENTSTREAM
        upstream.body = START + text_delta(answer[:9]) + text_delta(answer[9:]) + END
    else:
        upstream.content_type = "application/json"
        upstream.body = orjson.dumps({
            "output": {"message": {"role": "assistant", "content": [{"text": answer}]}},
            "stopReason": "end_turn",
            "usage": {"inputTokens": 20, "outputTokens": 10, "totalTokens": 30}})
    model = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
    client = await proxy(bedrock_config(upstream.url, default_model=model))
    sdk = openai_sdk(client)
    messages = [{"role": "user", "content": "Ann is 31."}]
    if stream:
        async with sdk.chat.completions.stream(model=model, messages=messages,
                                               response_format=Person) as events:
            parsed = (await events.get_final_completion()).choices[0].message.parsed
    else:
        answered = await sdk.chat.completions.parse(model=model, messages=messages,
                                                    response_format=Person)
        parsed = answered.choices[0].message.parsed
    assert parsed == Person(name="Ann", age=31)
    [received] = upstream.requests
    verify_sigv4(received, SECRET, "us-west-2")
    sent = received.json()
    definition = sent["outputConfig"]["textFormat"]["structure"]["jsonSchema"]
    assert sent["outputConfig"]["textFormat"]["type"] == "json_schema"
    assert definition["name"] == "Person"
    assert orjson.loads(definition["schema"]) == {
        **Person.model_json_schema(), "additionalProperties": False}
    assert "system" not in sent
    await sdk.close()


def test_botocore_is_imported_only_when_sigv4_signs() -> None:
    """botocore costs ~8 MB of RSS per worker: a proxy without SigV4 must never load it."""
    import subprocess
    import sys

    script = """
import sys
from streamproxy.config import parse_config
from streamproxy.openai_api.request import parse_chat_request
from streamproxy.routing.target import Target
from streamproxy.server.app import build_providers, create_app

def config(auth):
    return parse_config({"providers": {
        "m": {"type": "mock", "default_model": "fast"},
        "b": {"type": "bedrock", "region": "us-east-1", "default_model": "amazon.nova-micro-v1:0",
              **auth}}, "default_provider": "m"}, "<t>")

create_app(config({"api_key": "br-key"}))
assert "botocore" not in sys.modules, "imported with an API-key Bedrock provider"
provider = build_providers(config({"aws_access_key_id": "AKIDEXAMPLE",
                                   "aws_secret_access_key": "secret"}))["b"]
req = parse_chat_request(b'{"model": "x", "messages": [{"role": "user", "content": "hi"}]}')
signed = provider.build_request(req, Target(provider, "amazon.nova-micro-v1:0"))
assert signed.headers["Authorization"].startswith("AWS4-HMAC-SHA256")
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_whitespace_only_text_is_left_out_in_every_role() -> None:
    # Converse: "The text field in the ContentBlock object at messages.1.content.0 is blank."
    out = to_converse({"messages": [
        {"role": "system", "content": [{"type": "text", "text": "\n"}]},
        {"role": "user", "content": [{"type": "text", "text": " "},
                                     {"type": "text", "text": "Weather?"}]},
        {"role": "assistant", "content": "\n\n", "tool_calls": [
            {"id": "tu1", "type": "function", "function": {"name": "now", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "tu1", "content": "Sun"},
        {"role": "user", "content": " \n"},
    ]}, MODEL)
    assert "system" not in out
    assert out["messages"] == [
        {"role": "user", "content": [{"text": "Weather?"}]},
        {"role": "assistant", "content": [{"toolUse": {"toolUseId": "tu1", "name": "now",
                                                       "input": {}}}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": "tu1",
                                                     "content": [{"text": "Sun"}]}}]},
    ]


def test_a_final_assistant_turn_loses_its_trailing_whitespace() -> None:
    # Claude on Converse: "final assistant content cannot end with trailing whitespace".
    out = to_converse({"messages": [{"role": "user", "content": "Name a colour."},
                                    {"role": "assistant", "content": "The colour is "}]}, MODEL)
    assert out["messages"][-1] == {"role": "assistant", "content": [{"text": "The colour is"}]}


@pytest.mark.parametrize("prefill", [
    {"role": "assistant", "content": "The colour is ", "cache_control": {"type": "ephemeral"}},
    {"role": "assistant", "content": [{"type": "text", "text": "The colour is ",
                                       "cache_control": {"type": "ephemeral"}}]}])
def test_a_cached_final_assistant_turn_loses_its_trailing_whitespace(
        prefill: dict[str, Any]) -> None:
    """A prefill with a prompt-caching marker (LiteLLM's on the message, Portkey's on the part)
    ends in a cachePoint, after its text: that text is trimmed all the same, as on Anthropic
    (where the marker sits on the block itself). Claude on Converse refused it otherwise
    ("final assistant content cannot end with trailing whitespace")."""
    out = to_converse({"messages": [{"role": "user", "content": "Name a colour."}, prefill]},
                      CLAUDE_4_5)
    assert out["messages"][-1] == {"role": "assistant", "content": [
        {"text": "The colour is"}, {"cachePoint": {"type": "default"}}]}


@pytest.mark.parametrize("after", [[], [{"role": "user", "content": "Again?"}]])
def test_a_cached_turn_that_only_thought_is_left_out(after: list[Any]) -> None:
    """As on Anthropic, where a thinking block takes no cache_control: a message's marker
    (LiteLLM's) on a turn that only thought makes no cachePoint after its reasoning, which
    hid the reasoning from being left out, and Claude refused the turn ("The final block in
    an assistant message cannot be `thinking`")."""
    messages = [{"role": "user", "content": "Hi"},
                {"role": "assistant", "content": " ", "cache_control": {"type": "ephemeral"},
                 "thinking_blocks": [{"type": "thinking", "thinking": "Hmm.",
                                      "signature": "sig"}]}, *after]
    for effort in ({}, {"reasoning_effort": "low"}):
        out = to_converse({"messages": messages, **effort}, CLAUDE_4_5)["messages"]
        assert out == [{"role": "user", "content": [{"text": "Hi"},
                                                     *[{"text": "Again?"} for _ in after]]}]
    # A turn with text keeps its marker after the text, its thinking before it.
    messages[1]["content"] = "Hello."
    kept = to_converse({"messages": messages, "reasoning_effort": "low"}, CLAUDE_4_5)
    assert [next(iter(block)) for block in kept["messages"][1]["content"]] == [
        "reasoningContent", "text", "cachePoint"]


def test_an_openai_file_id_is_a_400_naming_it() -> None:
    body = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "Sum it up."},
        {"type": "file", "file": {"file_id": "file-abc123"}}]}]}
    with pytest.raises(InvalidRequest) as caught:
        to_converse(body, MODEL)
    assert caught.value.param == "messages[0].content[1].file.file_id"
    assert "file_data" in str(caught.value)


async def test_claudes_betas_reach_converse_for_claude_alone(proxy: Any, upstream: Any) -> None:
    # The portkey-ai SDK's `anthropic_beta` (x-portkey-anthropic-beta), a config target's and
    # the provider's own were ignored on Bedrock: Converse takes them in
    # additionalModelRequestFields.anthropic_beta, a list. Another model must not get them.
    upstream.content_type = EVENTSTREAM
    upstream.body = RECORDING
    client = await proxy(bedrock_config(upstream.url, anthropic_beta=["b-provider"]))

    async def fields_sent(model: str, headers: dict[str, str],
                          **body: Any) -> dict[str, Any] | None:
        resp = await client.post(CHAT, json={"model": model, "stream": True, "messages": [
            {"role": "user", "content": "Hi"}], **body}, headers=headers)
        await resp.read()
        return upstream.requests[-1].json().get("additionalModelRequestFields")

    sdk = {"x-portkey-anthropic-beta": "context-1m-2025-08-07,interleaved-thinking-2025-05-14"}
    assert await fields_sent(CLAUDE_4_5, sdk) == {"anthropic_beta": [
        "context-1m-2025-08-07", "interleaved-thinking-2025-05-14"]}
    assert await fields_sent(CLAUDE_4_5, {}) == {"anthropic_beta": ["b-provider"]}
    config = {"x-portkey-config": orjson.dumps({"provider": "aws",
                                                "anthropic_beta": "b-target"}).decode()}
    assert await fields_sent(CLAUDE_4_5, {**sdk, **config}) == {"anthropic_beta": ["b-target"]}
    assert await fields_sent(MODEL, sdk) is None
    # A client's own fields keep theirs, and get the betas beside them unless they name some.
    assert await fields_sent(CLAUDE_4_5, sdk, additionalModelRequestFields={"top_k": 5}) == {
        "top_k": 5, "anthropic_beta": ["context-1m-2025-08-07",
                                       "interleaved-thinking-2025-05-14"]}
    assert await fields_sent(CLAUDE_4_5, sdk, additionalModelRequestFields={
        "anthropic_beta": ["own"]}) == {"anthropic_beta": ["own"]}
    # Anthropic's version is the anthropic type's alone: Converse sets Bedrock's own.
    assert await fields_sent(CLAUDE_4_5, {"x-portkey-anthropic-version": "2023-06-01"}) == {
        "anthropic_beta": ["b-provider"]}
    verify_sigv4(upstream.requests[-1], SECRET, "us-west-2")


async def test_top_k_reaches_nova_through_the_proxy(proxy: Any, upstream: Any) -> None:
    upstream.content_type = EVENTSTREAM
    upstream.body = RECORDING
    client = await proxy(bedrock_config(upstream.url))
    resp = await stream_request(client, top_k=20)
    assert resp.status == 200
    await resp.read()
    sent = upstream.requests[-1].json()
    assert sent["additionalModelRequestFields"] == {"inferenceConfig": {"topK": 20}}


async def test_reasoning_effort_reaches_nova_2_through_the_proxy(proxy: Any,
                                                                 upstream: Any) -> None:
    upstream.content_type = EVENTSTREAM
    upstream.body = RECORDING
    client = await proxy(bedrock_config(upstream.url))
    resp = await stream_request(client, model="us.amazon.nova-2-lite-v1:0",
                                reasoning_effort="medium")
    assert resp.status == 200
    await resp.read()
    assert upstream.requests[-1].json()["additionalModelRequestFields"] == {
        "reasoningConfig": {"type": "enabled", "maxReasoningEffort": "medium"}}


@pytest.mark.parametrize("value", [5, "b1\r\nx-evil: 1", ["b1", 3]])
def test_a_providers_betas_that_cannot_be_sent_are_a_config_error(value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        bedrock_config("http://127.0.0.1:1", anthropic_beta=value)
    assert info.value.key == "providers.aws.anthropic_beta"


def test_documents_that_would_share_a_name_get_unique_ones() -> None:
    """Converse refuses a request whose documents share a name ("Messages can't contain
    duplicate document names"): a file attached again later in the conversation, report.pdf
    beside report.docx, or two files without a name... the first keeps its name, the later
    ones get a suffix."""
    def doc(filename: str | None, mime: str = "application/pdf") -> dict[str, Any]:
        file = {"file_data": f"data:{mime};base64,JVBERi0="}
        return {"type": "file", "file": {**file, "filename": filename} if filename else file}

    docx = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
    out = to_converse({"messages": [
        {"role": "user", "content": [doc("report.pdf"), doc("Report.docx", docx),
                                     {"type": "text", "text": "Compare them."}]},
        {"role": "assistant", "content": "They differ."},
        {"role": "user", "content": [doc("report.pdf"), doc("report-2.pdf"),
                                     {"type": "text", "text": "And now?"}]}]}, CLAUDE)
    names = [b["document"]["name"] for m in out["messages"] for b in m["content"]
             if "document" in b]
    assert names[0] == "report"
    assert len({n.lower() for n in names}) == len(names) == 4
    assert all(re.fullmatch(r"[A-Za-z0-9\-()\[\]]+(?: [A-Za-z0-9\-()\[\]]+)*", n) for n in names)
    # Converse refuses a name over 200 characters, too: a long filename is cut, repeats too.
    long = to_converse({"messages": [{"role": "user", "content": [
        doc("x" * 300 + ".pdf"), doc("x" * 300 + ".pdf"),
        {"type": "text", "text": "Read."}]}]}, CLAUDE)["messages"][0]["content"]
    assert [b["document"]["name"] for b in long[:2]] == ["x" * 200, "x" * 198 + "-2"]


@pytest.mark.parametrize("model", ["us.anthropic.claude-opus-4-7",
                                   "global.anthropic.claude-opus-4-7", "anthropic.claude-opus-4-8",
                                   "us.anthropic.claude-fable-5",
                                   "anthropic.claude-mythos-preview"])
@pytest.mark.parametrize(("effort", "level"), [("minimal", "low"), ("low", "low"),
                                               ("medium", "medium"), ("high", "high"),
                                               ("max", "max")])
def test_reasoning_effort_is_adaptive_thinking_on_the_claudes_that_take_no_budget(
        model: str, effort: str, level: str) -> None:
    """Claude Opus 4.7 and every later Claude take adaptive thinking only: a thinking budget
    (`type: enabled`) is a 400 from Bedrock. The effort goes as Claude's own
    `output_config.effort`, and no budget sizes or checks the client's max."""
    body = {"messages": [{"role": "user", "content": "hi"}], "reasoning_effort": effort}
    out = to_converse(body, model)
    assert out["additionalModelRequestFields"] == {"thinking": {"type": "adaptive"},
                                                   "output_config": {"effort": level}}
    assert "inferenceConfig" not in out
    capped = to_converse({**body, "max_completion_tokens": 1000}, model)
    assert capped["inferenceConfig"] == {"maxTokens": 1000}
    assert "additionalModelRequestFields" not in to_converse(
        {**body, "reasoning_effort": "none"}, model)
    own = to_converse({**body, "additionalModelRequestFields": {
        "output_config": {"effort": "low"}}}, model)["additionalModelRequestFields"]
    assert own == {"output_config": {"effort": "low"}, "thinking": {"type": "adaptive"}}
    with pytest.raises(InvalidRequest):  # as with a budget: Claude refuses a forced tool
        to_converse({**body, "tools": [{"type": "function", "function": {"name": "f"}}],
                     "tool_choice": "required"}, model)


@pytest.mark.parametrize(("model", "level"), [
    ("us.anthropic.claude-opus-4-7", "xhigh"), ("anthropic.claude-opus-4-8", "xhigh"),
    ("us.anthropic.claude-fable-5", "xhigh"), ("anthropic.claude-mythos-preview", "max")])
def test_xhigh_is_claudes_own_xhigh_on_bedrock_where_it_has_one(model: str, level: str) -> None:
    # As on Anthropic: Claude's xhigh is below its max, as OpenAI's is; Mythos Preview has none.
    out = to_converse({"messages": [{"role": "user", "content": "hi"}],
                       "reasoning_effort": "xhigh"}, model)
    assert out["additionalModelRequestFields"]["output_config"] == {"effort": level}



def test_an_image_is_sent_in_the_format_its_bytes_are() -> None:
    """Converse refuses an image whose format is not what its bytes are ("The image was
    specified using the image/jpeg media type, but the image appears to be a image/png
    image"); OpenAI reads a PNG labelled image/jpeg. The format is read from the bytes."""
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR and the rest").decode()
    for label in ("image/jpeg", "application/octet-stream"):
        out = to_converse({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": f"data:{label};base64,{png}"}}]}]}, CLAUDE)
        assert out["messages"][0]["content"] == [{"image": {"format": "png",
                                                            "source": {"bytes": png}}}]


@pytest.mark.parametrize("model", ["..", "."])
def test_a_dot_segment_model_is_a_400_not_another_path(model: str) -> None:
    # Percent-encoded, `..` is still a dot segment that yarl (and servers) resolve: the
    # operator's signed request went to https://bedrock-runtime…/converse.
    provider = BedrockProvider(bedrock_config("https://h/prefix").providers["aws"])
    req = parse_chat_request(b'{"model":"m","messages":[{"role":"user","content":"x"}]}')
    with pytest.raises(InvalidRequest) as info:
        provider.build_request(req, Target(provider, model))
    assert info.value.param == "model" and info.value.status == 400


def test_a_model_id_is_one_encoded_path_segment() -> None:
    provider = BedrockProvider(bedrock_config("https://h").providers["aws"])
    req = parse_chat_request(b'{"model":"m","messages":[{"role":"user","content":"x"}]}')
    arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-v1:0"
    url = provider.build_request(req, Target(provider, arn)).url
    assert url == ("https://h/model/arn:aws:bedrock:us-east-1:123456789012:inference-profile"
                   "%2Fus.anthropic.claude-v1:0/converse")
    url = provider.build_request(req, Target(provider, "a/../b?c#d")).url
    assert url == "https://h/model/a%2F..%2Fb%3Fc%23d/converse"


def test_an_upper_case_region_is_signed_and_addressed_in_lower_case(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # (`US-EAST-1` went into the host and the SigV4 scope as written: AWS refuses the signature)
    monkeypatch.delenv("AWS_REGION", raising=False)
    req = parse_chat_request(orjson.dumps({"model": MODEL, "messages": [
        {"role": "user", "content": "hi"}]}))
    for config, option, region in ((None, None, "us-east-1"), (None, "EU-West-3", "eu-west-3"),
                                   ("https://h", None, "us-east-1")):
        provider = BedrockProvider(bedrock_config(config, region="US-EAST-1").providers["aws"])
        if option:
            provider = provider.with_options({"region": option})
        sent = provider.build_request(req, Target(provider, MODEL))
        scope = re.search(r"Credential=\w+/\d+/([^/]+)/bedrock/", sent.headers["Authorization"])
        assert scope is not None and scope[1] == region
        assert sent.url.startswith(config or f"https://bedrock-runtime.{region}.amazonaws.com/")
    monkeypatch.setenv("AWS_REGION", "AP-SOUTH-1")
    provider = BedrockProvider(bedrock_config(None, region=None).providers["aws"])
    assert provider.base_url == "https://bedrock-runtime.ap-south-1.amazonaws.com"


@pytest.mark.parametrize(("tier", "expected"), [
    ("flex", {"type": "flex"}), ("priority", {"type": "priority"}),
    ("fast", {"type": "priority"}), ("default", {"type": "default"}),
    ("auto", None), ("scale", None)])
def test_openai_service_tier_maps_to_converse_service_tier(tier: str, expected: Any) -> None:
    """OpenAI's service_tier was dropped: a client asking for flex (half price) or priority ran
    on Bedrock's standard tier, billed and served as such. Converse's serviceTier takes the
    same tiers; auto and scale (OpenAI's reserved capacity) leave Bedrock's default."""
    body = {"messages": [{"role": "user", "content": "Hi"}], "service_tier": tier}
    assert to_converse(body, MODEL).get("serviceTier") == expected


def test_a_native_service_tier_wins_over_openai_service_tier() -> None:
    body = {"messages": [{"role": "user", "content": "Hi"}], "service_tier": "flex",
            "serviceTier": {"type": "reserved"}}
    assert to_converse(body, MODEL)["serviceTier"] == {"type": "reserved"}


PDF = "data:application/pdf;base64," + base64.b64encode(b"%PDF-1.7 rest").decode()


def test_a_tool_results_images_and_files_go_in_its_tool_result() -> None:
    """A tool that returns a screenshot or a PDF (a computer-use agent, an MCP tool's image) as
    image_url / file parts got the proxy's 400, and the agent's loop stopped, though Converse's
    toolResult takes image and document blocks; its cache point goes after the toolResult."""
    messages = conversation()[2:5]
    messages[2] = {"role": "tool", "tool_call_id": "tu1", "content": [
        {"type": "text", "text": "Screenshot:"},
        {"type": "image_url", "image_url": {"url": PNG}, "cache_control": {"type": "ephemeral"}},
        {"type": "file", "file": {"filename": "page.pdf", "file_data": PDF}}]}
    turn = to_converse({"messages": messages}, MODEL)["messages"][2]["content"]
    assert turn == [{"toolResult": {"toolUseId": "tu1", "content": [
        {"text": "Screenshot:"},
        {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}},
        {"document": {"format": "pdf", "name": "page",
                      "source": {"bytes": PDF.split(",", 1)[1]}}}]}},
        {"cachePoint": {"type": "default"}}]


def test_a_tool_results_documents_get_a_caption_and_names_of_their_own() -> None:
    # Converse wants text beside documents, and no two documents of one name in a request.
    messages = conversation()[2:5]
    messages[0] = {"role": "user", "content": [
        {"type": "text", "text": "Read"},
        {"type": "file", "file": {"filename": "page.pdf", "file_data": PDF}}]}
    messages[2] = {"role": "tool", "tool_call_id": "tu1", "content": [
        {"type": "file", "file": {"filename": "page.pdf", "file_data": PDF}}]}
    turn = to_converse({"messages": messages}, MODEL)["messages"][2]["content"]
    content = turn[0]["toolResult"]["content"]
    assert [b["document"]["name"] for b in content if "document" in b] == ["page-2"]
    assert {"text": "(attached document)"} in content


WAV = base64.b64encode(b"RIFF\x24\0\0\0WAVEfmt ").decode()


@pytest.mark.parametrize("fmt", ["wav", "mp3", "flac", "OGG"])
def test_input_audio_goes_as_a_converse_audio_block(fmt: str) -> None:
    """OpenAI's input_audio part (a voice note, a recording to transcribe) was the proxy's 400
    "not supported by Bedrock", though Converse takes an audio block (wav, mp3, flac, ogg…)."""
    body = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "Transcribe"},
        {"type": "input_audio", "input_audio": {"data": WAV, "format": fmt}}]}]}
    content = to_converse(body, "amazon.nova-2-omni-v1:0")["messages"][0]["content"]
    assert content[1] == {"audio": {"format": fmt.lower(), "source": {"bytes": WAV}}}


@pytest.mark.parametrize(("audio", "param"), [
    ({"data": WAV, "format": "aiff"}, "messages[0].content[0].input_audio.format"),
    ({"format": "wav"}, "messages[0].content[0].input_audio"),
    ({"data": "not base64!", "format": "wav"}, "messages[0].content[0].input_audio.data")])
def test_input_audio_that_converse_cannot_take_is_a_400_naming_it(audio: dict[str, Any],
                                                                  param: str) -> None:
    body = {"messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": audio}]}]}
    with pytest.raises(InvalidRequest) as caught:
        to_converse(body, MODEL)
    assert caught.value.param == param


def test_openai_metadata_goes_as_request_metadata_where_it_fits() -> None:
    """OpenAI's metadata (string key/values a client tags requests with) was dropped, though
    Converse's requestMetadata is its counterpart (it filters the invocation logs). An entry
    outside Converse's pattern (its characters, 256 at most) is left out, not a 400: it never
    changed an answer, and a request that worked must not start failing."""
    metadata = {"team": "search", "user_id": "u@example.com", "trace": "a/b=c+d, e.f",
                "emoji": "\U0001f600", "long": "x" * 257, "quote": 'say "hi"', "empty": ""}
    body = {"messages": [{"role": "user", "content": "Hi"}], "metadata": metadata}
    assert to_converse(body, MODEL)["requestMetadata"] == {
        "team": "search", "user_id": "u@example.com", "trace": "a/b=c+d, e.f", "empty": ""}


def test_a_native_request_metadata_wins_and_nothing_fitting_sends_none() -> None:
    hi = [{"role": "user", "content": "Hi"}]
    out = to_converse({"messages": hi, "metadata": {"a": "1"},
                       "requestMetadata": {"b": "2"}}, MODEL)
    assert out["requestMetadata"] == {"b": "2"}
    assert "requestMetadata" not in to_converse({"messages": hi, "metadata": {"k": "é"}}, MODEL)
    assert "requestMetadata" not in to_converse({"messages": hi, "metadata": {}}, MODEL)


def _answer_with_tier(tier: Any) -> dict[str, Any]:
    answer: dict[str, Any] = {"output": {"message": {"role": "assistant", "content": [
        {"text": "Hi"}]}}, "stopReason": "end_turn", "usage": {"inputTokens": 3, "outputTokens": 1}}
    if tier is not None:
        answer["serviceTier"] = {"type": tier}
    return answer


@pytest.mark.parametrize(("tier", "reported"), [
    ("flex", "flex"), ("priority", "priority"), ("default", "default"),
    ("reserved", "scale"), (None, None)])
def test_the_tier_that_served_an_answer_is_its_service_tier(tier: Any, reported: Any) -> None:
    """Converse says which tier served the answer (`serviceTier`); the completion said none,
    so a client that asked for flex could not tell flex from a fallback to standard.
    Reserved capacity is OpenAI's scale tier; no tier reported, no field."""
    out = to_completion(orjson.dumps(_answer_with_tier(tier)), completion_id="c", created=1,
                        model="m")
    assert out.get("service_tier") == reported
    assert out["choices"][0]["message"]["content"] == "Hi"


def test_a_stream_s_tier_is_on_its_usage_chunk_and_in_the_whole_answer() -> None:
    """The stream's tier comes in its metadata, after the finish: it goes on the usage chunk
    (no per-chunk work) and into a captured answer (store, cache)."""
    from streamproxy.openai_api.chunks import RecordingChunkEncoder
    from streamproxy.openai_api.completion import CompletionBuilder, TeeSink
    body = (event("messageStart", {"role": "assistant"}) + text_delta("Hi")
            + event("messageStop", {"stopReason": "end_turn"})
            + event("metadata", {"usage": {"inputTokens": 3, "outputTokens": 1},
                                 "serviceTier": {"type": "flex"}}))
    chunks = [c for c in sse_chunks(translate([body])) if c != "[DONE]"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["service_tier"] == "flex"
    assert all("service_tier" not in c for c in chunks[:-1])
    assert collect(sse_chunks(translate([body]))).content == "Hi"
    enc = RecordingChunkEncoder(completion_id="c", created=1, model="m", include_usage=False)
    builder = CompletionBuilder()
    tr = BedrockStreamTranslator(TeeSink(enc, builder), 1 << 20)
    tr.feed(body)
    assert tr.done
    assert builder.completion(completion_id="c", created=1, model="m")["service_tier"] == "flex"


def test_inline_static_keys_are_used_without_the_whitespace_around_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """As keys read from the *_env variables are: a pasted key's space or a block scalar's
    newline was signed with, and AWS answered 403 (a signature mismatch) with no hint."""
    config = bedrock_config("http://x", aws_access_key_id=f" {AKID}",
                            aws_secret_access_key=f"{SECRET}\n", aws_session_token=f"{TOKEN} ")
    inline = bedrock_auth.static_keys(config.providers["aws"].options)
    monkeypatch.setenv("MY_AK", f" {AKID}")
    monkeypatch.setenv("MY_SK", f"{SECRET}\n")
    monkeypatch.setenv("MY_ST", f"{TOKEN} ")
    named = bedrock_auth.static_keys({"aws_access_key_id_env": "MY_AK",
                                      "aws_secret_access_key_env": "MY_SK",
                                      "aws_session_token_env": "MY_ST"})
    assert inline == named == (AKID, SECRET, TOKEN)


@pytest.mark.parametrize("key", bedrock_auth.KEY_OPTIONS)
@pytest.mark.parametrize("where", ["inline", "env"])
def test_a_static_key_with_a_control_character_is_a_config_error(
        key: str, where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A line break inside a key (a token wrapped as it was pasted into a secret) reached the
    signed request: in x-amz-security-token or the Authorization header the upstream client
    refused to write it (every request a 500); in the secret, AWS's 403. Refused as the
    config loads, as a provider's api_key is, naming the field and not the key."""
    keys = {"aws_access_key_id": AKID, "aws_secret_access_key": SECRET,
            "aws_session_token": TOKEN}
    bad = f"{keys[key][:8]}\r\n{keys[key][8:]}"
    monkeypatch.setenv("SP_TEST_AWS", bad)
    field = key if where == "inline" else f"{key}_env"
    keys[key] = None  # type: ignore[assignment]
    options = {k: v for k, v in keys.items() if v} | {field: bad if where == "inline"
                                                      else "SP_TEST_AWS"}
    with pytest.raises(ConfigError) as info:
        parse_config({"providers": {"b": {"type": "bedrock", "region": "us-east-1",
                                          **options}}}, "f.yaml")
    assert info.value.key == f"providers.b.{field}" and "control character" in info.value.reason
    assert bad[:8] not in str(info.value)


@pytest.mark.parametrize(("named", "unset"), [
    ({"aws_access_key_id_env": "SP_TEST_AK", "aws_secret_access_key_env": "SP_TEST_SK"},
     "aws_access_key_id_env"),
    ({"aws_access_key_id": AKID, "aws_secret_access_key": SECRET,
      "aws_session_token_env": "SP_TEST_ST"}, "aws_session_token_env"),
])
@pytest.mark.parametrize("value", [None, " "])
def test_a_key_variable_that_is_unset_is_a_config_error_not_the_default_chain(
        named: dict[str, str], unset: str, value: str | None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Both key variables unset (a missing export) passed: the provider signed with whatever
    the default chain found (the host's role, ~/.aws) or sent the client's key as a Bedrock
    key, and check-config said "the AWS credential chain"; a session token's unset variable
    left temporary keys signed without it (AWS's 403 on every request). Only one key of the
    pair unset was refused. Now any named variable that is unset or empty is."""
    for name in ("SP_TEST_AK", "SP_TEST_SK", "SP_TEST_ST"):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match="SP_TEST_") as info:
        parse_config({"providers": {"b": {"type": "bedrock", "region": "us-east-1",
                                          **named}}}, "f.yaml")
    assert info.value.key == f"providers.b.{unset}"
    assert ("is not set" if value is None else "is empty") in info.value.reason


@pytest.mark.parametrize("field", ["aws_session_token", "aws_session_token_env"])
@pytest.mark.parametrize("other", [{}, {"profile": "dev"}])
def test_a_session_token_without_the_keys_is_a_config_error(
        field: str, other: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A session token given without the key pair it belongs to was dropped without a word:
    the profile or the default chain signed with keys of its own, without that token (AWS's
    403 "The security token included in the request is invalid", or other credentials than
    meant)."""
    monkeypatch.setenv("SP_TEST_ST", TOKEN)
    with pytest.raises(ConfigError, match="goes with") as info:
        parse_config({"providers": {"b": {
            "type": "bedrock", "region": "us-east-1", **other,
            field: TOKEN if field == "aws_session_token" else "SP_TEST_ST"}}}, "f.yaml")
    assert info.value.key == f"providers.b.{field}" and TOKEN not in str(info.value)


# -- a tool call's big integers, streamed and not ----------------------------------------------

# An integer past 64 bits (an amount in wei, a 20-digit id): orjson reads it as a float.
BIG_INPUT = ('{"wei":123456789012345678901,"low":-9223372036854775809,'
             '"id":18446744073709551616,"n":5,"x":1.5,"s":"é"}')


def whole_bedrock_arguments(raw_input: str) -> list[str]:
    body = ('{"output":{"message":{"role":"assistant","content":[{"text":"Sending."},'
            '{"toolUse":{"toolUseId":"t1","name":"send","input":' + raw_input + '}},'
            '{"toolUse":{"toolUseId":"t2","name":"other","input":{}}}]}},'
            '"stopReason":"tool_use","usage":{"inputTokens":3,"outputTokens":4}}')
    completion = to_completion(body.encode(), completion_id="c", created=1, model="m")
    return [call["function"]["arguments"]
            for call in completion["choices"][0]["message"]["tool_calls"]]


def test_a_whole_answers_tool_call_keeps_big_integers_as_the_stream_does() -> None:
    # The whole answer's arguments read 1.2345678901234568e+20 where the streamed call (its
    # fragments passed on as written) had 123456789012345678901: another number, no integer.
    streamed = collect(sse_chunks(translate([b"".join([
        event("messageStart", {"role": "assistant"}),
        event("contentBlockStart", {"contentBlockIndex": 0, "start": {
            "toolUse": {"toolUseId": "t1", "name": "send"}}}),
        event("contentBlockDelta", {"contentBlockIndex": 0,
                                    "delta": {"toolUse": {"input": BIG_INPUT}}}),
        event("contentBlockStop", {"contentBlockIndex": 0}),
        event("messageStop", {"stopReason": "tool_use"}),
        event("metadata", {"usage": {"inputTokens": 3, "outputTokens": 4}})])])))
    exact = json.loads(BIG_INPUT)
    whole = whole_bedrock_arguments(BIG_INPUT)
    assert json.loads(whole[0]) == exact == json.loads(streamed.tool_calls[0]["arguments"])
    assert isinstance(json.loads(whole[0])["wei"], int) and whole[1] == "{}"
    # A long digit run that is no number changes nothing.
    assert whole_bedrock_arguments('{"q":"1234567890123456789012","n":2}')[0] == \
        '{"q":"1234567890123456789012","n":2}'


def _capped_delta(cap: int, payload_bytes: int) -> Any:
    """A text delta whose JSON payload is `payload_bytes` long, through a translator built with
    `server.max_event_bytes` = cap."""
    empty = orjson.dumps({"contentBlockIndex": 0, "delta": {"text": ""}})
    text = "x" * (payload_bytes - len(empty))
    body = b"".join([
        event("messageStart", {"role": "assistant"}),
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": text}}),
        event("messageStop", {"stopReason": "end_turn"}),
        event("metadata", {"usage": {"inputTokens": 3, "outputTokens": 2, "totalTokens": 5}}),
    ])
    enc = ChunkEncoder(completion_id="chatcmpl-t", created=1, model="m", include_usage=True)
    return collect(sse_chunks(relay_pieces(enc, BedrockStreamTranslator(enc, cap), [body]))), text


def test_a_frame_of_max_event_bytes_of_payload_is_taken_with_its_headers() -> None:
    # The frame cap was max_event_bytes itself, so a legal 16 MiB payload (AWS's limit, its
    # headers and framing on top) was refused: those must not count against it.
    c, text = _capped_delta(4096, 4096)
    assert c.error is None and c.content == text and c.done
    c, _ = _capped_delta(4096, 4096 + 128 * 1024 + 1)  # over even with AWS's headers allowance
    assert c.error is not None and c.error["code"] == "upstream_protocol_error"


def _server_tool_answer(client_call: bool) -> tuple[bytes, bytes]:
    """A Nova answer that ran a system tool (nova_grounding: its toolUse block says
    `type: server_tool_use`, and Bedrock runs it and gives its result), streamed and whole,
    with one of the client's own calls after it or none."""
    server = {"toolUseId": "s1", "name": "nova_grounding", "type": "server_tool_use"}
    frames = [
        event("messageStart", {"role": "assistant"}),
        event("contentBlockStart", {"contentBlockIndex": 0, "start": {"toolUse": server}}),
        event("contentBlockDelta", {"contentBlockIndex": 0,
                                    "delta": {"toolUse": {"input": '{"query": "paris"}'}}}),
        event("contentBlockStop", {"contentBlockIndex": 0}),
        event("contentBlockStart", {"contentBlockIndex": 1, "start": {"toolResult": {
            "toolUseId": "s1", "type": "nova_grounding_result"}}}),
        event("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolResult": [
            {"text": "18 C"}]}}),
        event("contentBlockStop", {"contentBlockIndex": 1}),
        event("contentBlockDelta", {"contentBlockIndex": 2, "delta": {"text": "It is 18 C."}}),
        event("contentBlockStop", {"contentBlockIndex": 2})]
    blocks: list[Any] = [
        {"toolUse": {**server, "input": {"query": "paris"}}},
        {"toolResult": {"toolUseId": "s1", "type": "nova_grounding_result",
                        "content": [{"text": "18 C"}]}},
        {"text": "It is 18 C."}]
    if client_call:
        frames += [
            event("contentBlockStart", {"contentBlockIndex": 3, "start": {"toolUse": {
                "toolUseId": "t1", "name": "send"}}}),
            event("contentBlockDelta", {"contentBlockIndex": 3,
                                        "delta": {"toolUse": {"input": BIG_INPUT}}}),
            event("contentBlockStop", {"contentBlockIndex": 3})]
        blocks.append({"toolUse": {"toolUseId": "t1", "name": "send", "input": "@INPUT@"}})
    stop = "tool_use" if client_call else "end_turn"
    frames += [event("messageStop", {"stopReason": stop}),
               event("metadata", {"usage": {"inputTokens": 3, "outputTokens": 4}})]
    whole = orjson.dumps({"output": {"message": {"role": "assistant", "content": blocks}},
                          "stopReason": stop, "usage": {"inputTokens": 3, "outputTokens": 4}})
    return b"".join(frames), whole.replace(b'"@INPUT@"', BIG_INPUT.encode())


def test_a_system_tool_the_model_ran_is_no_tool_call_of_the_client_s() -> None:
    # Nova's system tools (nova_grounding) run on Bedrock's side: their toolUse became a
    # client tool call and a `tool_calls` finish, so an agent loop ran a tool it does not
    # have (or answered "unknown tool") instead of showing the answer. As on Anthropic, they
    # are left out, and the client's own calls keep dense indexes.
    for client_call in (False, True):
        stream, whole = _server_tool_answer(client_call)
        streamed = collect(sse_chunks(translate([stream])))
        completion = to_completion(whole, completion_id="c", created=1, model="m")
        choice = completion["choices"][0]
        calls = [{"id": c["id"], "name": c["function"]["name"],
                  "arguments": c["function"]["arguments"]}
                 for c in choice["message"].get("tool_calls") or ()]
        assert streamed.content == choice["message"]["content"] == "It is 18 C."
        if client_call:
            assert [(t["id"], t["name"]) for t in streamed.tool_calls] == [("t1", "send")]
            assert json.loads(streamed.tool_calls[0]["arguments"]) == json.loads(BIG_INPUT)
            assert [(c["id"], c["name"]) for c in calls] == [("t1", "send")]
            # (its big integer exact: the whole answer's exact inputs are the client's calls')
            assert json.loads(calls[0]["arguments"]) == json.loads(BIG_INPUT)
            assert streamed.finish_reason == choice["finish_reason"] == "tool_calls"
        else:
            assert streamed.tool_calls == calls == []
            assert streamed.finish_reason == choice["finish_reason"] == "stop"
