"""A prompt Gemini's filters blocked (`promptFeedback.blockReason`, no candidates): a 200 with
`finish_reason: content_filter`, as a filtered answer is, whose message says why in OpenAI's
place for it — `refusal`, the block reason and Vertex's `blockReasonMessage` — with `content`
null, as OpenAI's refusals have it; streamed (as the openai SDK joins it) and not alike."""

from __future__ import annotations

import orjson
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from streamproxy.openai_api.chunks import RecordingChunkEncoder
from streamproxy.openai_api.completion import CompletionBuilder, TeeSink
from streamproxy.providers.gemini.response import to_completion
from streamproxy.providers.gemini.stream import GeminiStreamTranslator
from tests.helpers import sse_chunks

ENVELOPE = {"completion_id": "chatcmpl-b", "created": 1, "model": "m"}
USAGE = {"promptTokenCount": 7, "totalTokenCount": 7}
BLOCKED = {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT",
                              "blockReasonMessage": "The prompt is prohibited content."},
           "usageMetadata": USAGE}
REFUSAL = "The prompt was blocked (PROHIBITED_CONTENT): The prompt is prohibited content."


def streamed(answer: dict[str, object]) -> tuple[dict[str, object], dict[str, object]]:
    """What the openai SDK's stream helper joins of the client's stream, and the stored
    answer (store: true) of the same stream."""
    encoder = RecordingChunkEncoder(include_usage=True, **ENVELOPE)
    builder = CompletionBuilder()
    translator = GeminiStreamTranslator(TeeSink(encoder, builder), 1 << 20)
    translator.feed(b"data: %b\r\n\r\n" % orjson.dumps(answer))
    translator.close()
    state = ChatCompletionStreamState()
    for chunk in sse_chunks(encoder.take()):
        if chunk != "[DONE]":
            state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    [choice] = state.current_completion_snapshot.model_dump()["choices"]
    return choice, builder.completion(**ENVELOPE)["choices"][0]


def test_a_blocked_prompt_says_why_in_refusal() -> None:
    for choice in (*streamed(BLOCKED), to_completion(orjson.dumps(BLOCKED), **ENVELOPE)
                   ["choices"][0]):
        assert choice["finish_reason"] == "content_filter"
        message = choice["message"]
        assert (message["content"], message["refusal"]) == (None, REFUSAL)


def test_a_blocked_prompt_without_a_message_names_its_reason() -> None:
    answer = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": USAGE}
    whole = to_completion(orjson.dumps(answer), **ENVELOPE)["choices"][0]
    for choice in (*streamed(answer), whole):
        assert choice["message"]["refusal"] == "The prompt was blocked (SAFETY)."
        assert choice["finish_reason"] == "content_filter"
