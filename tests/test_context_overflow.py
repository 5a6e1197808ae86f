"""A prompt longer than the model's context: every provider's own refusal of it reaches the
client as OpenAI's — 400, type `invalid_request_error`, param `messages`, code
`context_length_exceeded` — with the provider's message, from an HTTP error, an error event
in a stream, or an error object a 200 carried. Shapes as the providers send them."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streamproxy.errors import UpstreamStatusError
from streamproxy.providers.anthropic import AnthropicProvider
from streamproxy.providers.anthropic.stream import stream_error
from streamproxy.providers.bedrock import BedrockProvider
from streamproxy.providers.bedrock.stream import aws_error
from streamproxy.providers.cohere import CohereProvider
from streamproxy.providers.gemini import GeminiProvider, VertexProvider
from streamproxy.providers.gemini.errors import error_from_object
from streamproxy.providers.gemini.vertex_anthropic import VertexClaudeProvider
from tests.conftest import provider_config


def provider(cls: type[Any], kind: str, **extra: Any) -> Any:
    return cls(provider_config(kind, "http://127.0.0.1:9", **extra).providers["up"])


def assert_overflow(err: UpstreamStatusError, message: str) -> None:
    assert err.status == 400
    assert err.to_dict() == {"error": {"message": message, "type": "invalid_request_error",
                                       "param": "messages", "code": "context_length_exceeded"}}


ANTHROPIC_MESSAGES = ["prompt is too long: 208656 tokens > 200000 maximum",
                      "input length and `max_tokens` exceed context limit: 188240 + 21333 > "
                      "200000, decrease input length or `max_tokens` and try again"]


def anthropic_body(message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": "invalid_request_error",
                                                    "message": message},
                         "request_id": "req_011CWAgPbMohjStFaYrkLZCm"})


@pytest.mark.parametrize("message", ANTHROPIC_MESSAGES)
def test_anthropics_prompt_too_long(message: str) -> None:
    up = provider(AnthropicProvider, "anthropic")
    assert_overflow(up.parse_error(400, anthropic_body(message)), message)
    assert_overflow(up.answered_error(anthropic_body(message)), message)  # in a 200
    assert_overflow(stream_error({"type": "invalid_request_error", "message": message}, "up"),
                    message)  # an error event


def test_vertex_claudes_prompt_too_long() -> None:
    up = VertexClaudeProvider(provider(VertexProvider, "vertex", project="p",
                                       location="us-east5"))
    message = ANTHROPIC_MESSAGES[0]
    assert_overflow(up.parse_error(400, anthropic_body(message)), message)
    assert_overflow(up.answered_error(anthropic_body(message)), message)


GEMINI_MESSAGE = "The input token count (1200293) exceeds the maximum number of tokens allowed " \
                 "(1048576)."
GEMINI_ERROR = {"code": 400, "message": GEMINI_MESSAGE, "status": "INVALID_ARGUMENT"}


def test_geminis_input_token_count_exceeded() -> None:
    up = provider(GeminiProvider, "gemini")
    listed = [{"error": {**GEMINI_ERROR, "errors": [{"message": GEMINI_MESSAGE,
                                                     "domain": "global",
                                                     "reason": "badRequest"}]}}]
    assert_overflow(up.parse_error(400, orjson.dumps(listed)), GEMINI_MESSAGE)
    assert_overflow(up.parse_error(400, orjson.dumps({"error": GEMINI_ERROR})), GEMINI_MESSAGE)
    assert_overflow(up.answered_error(orjson.dumps({"error": GEMINI_ERROR})), GEMINI_MESSAGE)
    assert_overflow(error_from_object(GEMINI_ERROR, 0, "up"), GEMINI_MESSAGE)  # in a stream


@pytest.mark.parametrize("message", [
    "Input is too long for requested model.",
    "The model returned the following errors: Input is too long for requested model.",
    "The model returned the following errors: prompt is too long: 200049 tokens > 200000 "
    "maximum",
    "Too many input tokens. Max input tokens: 8192, request input token count: 9000"])
def test_bedrocks_input_too_long(message: str) -> None:
    up = provider(BedrockProvider, "bedrock", region="us-east-1")
    body = orjson.dumps({"message": message})
    err = up.error_from_response(400, body, {"x-amzn-errortype": "ValidationException:http://"
                                                                 "internal.amazon.com/coral/"})
    assert_overflow(err, message)
    assert_overflow(aws_error("validationException", message, "up"), message)  # an exception


def test_coheres_too_many_tokens() -> None:
    message = ("too many tokens: size limit exceeded by 11326 tokens. Try using shorter or "
               "fewer inputs, or setting prompt_truncation='AUTO'.")
    up = provider(CohereProvider, "cohere")
    assert_overflow(up.parse_error(400, orjson.dumps({"message": message})), message)


@pytest.mark.parametrize(("kind", "cls", "extra", "status", "body"), [
    # A refusal of another kind keeps its own code, and a 413 (bytes, not tokens) its status.
    ("anthropic", AnthropicProvider, {}, 400, anthropic_body("max_tokens: 10000 > 4096, which "
                                                             "is the maximum allowed")),
    ("anthropic", AnthropicProvider, {}, 413, orjson.dumps(
        {"type": "error", "error": {"type": "request_too_large",
                                    "message": "Request exceeds the maximum size"}})),
    ("gemini", GeminiProvider, {}, 400, orjson.dumps(
        {"error": {"code": 400, "message": "Request contains an invalid argument.",
                   "status": "INVALID_ARGUMENT"}})),
    ("bedrock", BedrockProvider, {"region": "us-east-1"}, 400, b'{"message": "Malformed input '
                                                                b'request, please reformat"}'),
])
def test_other_refusals_are_left_alone(kind: str, cls: type[Any], extra: dict[str, Any],
                                       status: int, body: bytes) -> None:
    err = provider(cls, kind, **extra).parse_error(status, body)
    assert err.status == status and err.code != "context_length_exceeded"
    assert err.param is None
