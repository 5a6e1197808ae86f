"""A prompt longer than the model's context: every provider's own refusal of it reaches the
client as OpenAI's — 400, type `invalid_request_error`, param `messages`, code
`context_length_exceeded` — with the provider's message, from an HTTP error, an error event
in a stream, or an error object a 200 carried. Shapes as the providers send them."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streamproxy.errors import UpstreamStatusError
from streamproxy.openai_api.chunks import ChunkEncoder
from streamproxy.openai_api.request import parse_chat_request
from streamproxy.providers.anthropic import AnthropicProvider
from streamproxy.providers.anthropic.stream import stream_error
from streamproxy.providers.bedrock import BedrockProvider
from streamproxy.providers.bedrock.stream import aws_error
from streamproxy.providers.cohere import CohereProvider
from streamproxy.providers.gemini import GeminiProvider, VertexProvider
from streamproxy.providers.gemini.errors import error_from_object
from streamproxy.providers.gemini.vertex_anthropic import VertexClaudeProvider
from streamproxy.providers.ollama import OllamaProvider
from streamproxy.providers.presets import DeepSeekProvider
from streamproxy.providers.registry import PROVIDER_TYPES
from tests.conftest import provider_config
from tests.helpers import collect, relay_pieces, sse_chunks


def provider(cls: type[Any], kind: str, **extra: Any) -> Any:
    return cls(provider_config(kind, "http://127.0.0.1:9", **extra).providers["up"])


def assert_overflow(err: UpstreamStatusError, message: str, **kept: Any) -> None:
    """`kept`: the provider's own fields besides OpenAI's, which the client gets too."""
    assert err.status == 400
    assert err.to_dict() == {"error": {"message": message, "type": "invalid_request_error",
                                       "param": "messages", "code": "context_length_exceeded",
                                       **kept}}


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


# Vertex's other wording of it (Gemini models, 400 INVALID_ARGUMENT), as it answers today.
VERTEX_MESSAGE = ("Unable to submit request because the input token count is 1251952 but model "
                  "only supports up to 1048576. Reduce the input token count and try again. You "
                  "can also use the CountTokens API to calculate prompt token count and billable "
                  "characters. Learn more: https://cloud.google.com/vertex-ai/generative-ai/docs/"
                  "learn/models")


def test_vertexs_input_token_count_over_what_the_model_supports() -> None:
    error = {"code": 400, "message": VERTEX_MESSAGE, "status": "INVALID_ARGUMENT"}
    up = provider(VertexProvider, "vertex", project="p", location="us-central1")
    assert_overflow(up.parse_error(400, orjson.dumps({"error": error})), VERTEX_MESSAGE)
    assert_overflow(up.parse_error(400, orjson.dumps([{"error": error}])), VERTEX_MESSAGE)
    assert_overflow(error_from_object(error, 0, "up"), VERTEX_MESSAGE)  # in a stream


@pytest.mark.parametrize("message", [
    "Input is too long for requested model.",
    "The model returned the following errors: Input is too long for requested model.",
    "The model returned the following errors: prompt is too long: 200049 tokens > 200000 "
    "maximum",
    "Too many input tokens. Max input tokens: 8192, request input token count: 9000",
    # Claude's refusal of a prompt that leaves no room for its max_tokens (OpenAI's own
    # overflow counts the completion too), and Amazon Nova's words.
    "The model returned the following errors: input length and `max_tokens` exceed context "
    "limit: 142422 + 64000 > 204658, decrease input length or `max_tokens` and try again",
    "Input Tokens Exceeded: Number of input tokens exceeds maximum length",
    # OpenAI's words, from the models Bedrock serves behind an OpenAI-style engine (Llama 4,
    # GLM, MiniMax): they were a plain 400 no client or fallback could tell from another.
    "This model's maximum context length is 1048576 tokens. Please reduce the length of the "
    "prompt.",
    "Mantle streaming error for requestId 1f2e: \"This model's maximum context length is 202752 "
    "tokens. However, you requested 65536 output tokens and your prompt contains at least "
    "137217 input tokens, for a total of at least 202753 tokens. Please reduce the length of "
    "the input prompt or the number of requested output tokens.\""])
def test_bedrocks_input_too_long(message: str) -> None:
    up = provider(BedrockProvider, "bedrock", region="us-east-1")
    body = orjson.dumps({"message": message})
    err = up.error_from_response(400, body, {"x-amzn-errortype": "ValidationException:http://"
                                                                 "internal.amazon.com/coral/"})
    assert_overflow(err, message)
    assert_overflow(aws_error("validationException", message, "up"), message)  # an exception


@pytest.mark.parametrize("original", [400, None])
@pytest.mark.parametrize("said", [
    "Input is too long for requested model.",
    "prompt is too long: 200049 tokens > 200000 maximum"])
def test_bedrocks_input_too_long_as_a_model_stream_error(original: Any, said: str) -> None:
    # A prompt over the context refused by the model once the stream had begun comes as a
    # modelStreamErrorException quoting the model (`originalMessage`): it kept its own code,
    # and without a status of the model's the 500 a retry or a breaker counts, so a client
    # (or a fallback on context_length_exceeded) could not tell it from a failed stream.
    message = f"Model Stream Error: {said}"
    assert_overflow(aws_error("modelStreamErrorException", message, "up", original), message)


@pytest.mark.parametrize(("original", "said"), [
    (None, "The model stream failed."),  # (another failure keeps its 500)
    (429, "Too many input tokens per minute, please wait"),  # a rate limit, whatever it says
    (500, "Input is too long for requested model."),  # (the model's own status wins)
])
def test_a_model_stream_error_of_another_kind_keeps_its_status_and_code(original: Any,
                                                                         said: str) -> None:
    err = aws_error("modelStreamErrorException", f"Model Stream Error: {said}", "up", original)
    assert (err.status, err.code) == (original or 500, "modelStreamErrorException")


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


def openai_error_body(message: str, *, code: Any, param: Any = None,
                      etype: str = "invalid_request_error") -> bytes:
    return orjson.dumps({"error": {"message": message, "type": etype, "param": param,
                                   "code": code}})


DEEPSEEK_MESSAGE = ("This model's maximum context length is 131072 tokens. However, you "
                    "requested 141980 tokens (133980 in the messages, 8000 in the completion). "
                    "Please reduce the length of the messages or completion.")
MISTRAL_MESSAGE = "Prompt contains 300000 tokens, too large for model with 131072 maximum " \
                  "context length"
VLLM_MESSAGE = ("This model's maximum context length is 16384 tokens. However, you requested "
                "19591 tokens (9591 in the messages, 10000 in the completion). Please reduce "
                "the length of the messages or completion.")
VLLM_ENGINE_MESSAGE = "The decoder prompt (length 40123) is longer than the maximum model " \
                      "length of 32768. Make sure that `max_model_len` is no smaller than the " \
                      "number of text tokens."
XAI_MESSAGE = "This model's maximum prompt length is 131072 but the request contains 136973 " \
              "tokens."
MOONSHOT_MESSAGE = "Invalid request: Your request exceeded model token limit: 262144 " \
                   "(requested: 300000)"
LM_STUDIO_MESSAGE = "The number of tokens to keep from the initial prompt is greater than the " \
                    "context length."
LLAMA_CPP_MESSAGE = "request (4476 tokens) exceeds the available context size (4096 tokens)"
TOGETHER_MESSAGE = "The input (516368 tokens) is longer than the model's context length " \
                   "(262144 tokens)."


@pytest.mark.parametrize(("kind", "extra", "body", "message"), [
    # DeepSeek's code is its type again (or null), its param null
    ("deepseek", {}, openai_error_body(DEEPSEEK_MESSAGE, code="invalid_request_error"),
     DEEPSEEK_MESSAGE),
    ("deepseek", {}, openai_error_body(DEEPSEEK_MESSAGE, code=None), DEEPSEEK_MESSAGE),
    # Mistral's (docs.mistral.ai known limitations), with an image count too
    ("mistral", {}, orjson.dumps({"object": "error", "message": MISTRAL_MESSAGE,
                                  "type": "invalid_request_error", "param": None,
                                  "code": None}), MISTRAL_MESSAGE),
    ("mistral", {}, openai_error_body(MISTRAL_MESSAGE.replace(" tokens,", " tokens and 0 "
                                                              "images"), code=None),
     MISTRAL_MESSAGE.replace(" tokens,", " tokens and 0 images")),
    # vLLM's, also behind a plain `type: openai`: the error object is the whole body
    ("vllm", {}, orjson.dumps({"object": "error", "message": VLLM_MESSAGE,
                               "type": "BadRequestError", "param": None, "code": 400}),
     VLLM_MESSAGE),
    ("openai", {}, orjson.dumps({"object": "error", "message": VLLM_MESSAGE,
                                 "type": "BadRequestError", "param": None, "code": 400}),
     VLLM_MESSAGE),
    ("together", {}, openai_error_body(TOGETHER_MESSAGE, code=None), TOGETHER_MESSAGE),
    # llama.cpp's server (tools/server: `exceed_context_size_error`), as it words it now and
    # as older builds did, behind `type: openai`
    ("openai", {}, orjson.dumps({"error": {
        "code": 400, "message": LLAMA_CPP_MESSAGE, "type": "exceed_context_size_error",
        "n_prompt_tokens": 4476, "n_ctx": 4096}}), LLAMA_CPP_MESSAGE),
    ("openai", {}, orjson.dumps({"error": {
        "code": 400, "message": "the request exceeds the available context size, try "
                                "increasing it", "type": "exceed_context_size_error"}}),
     "the request exceeds the available context size, try increasing it"),
    # xAI's, its error a string beside a code that is words (cline/cline#3120)
    ("xai", {}, orjson.dumps({"code": "Client specified an invalid argument",
                              "error": XAI_MESSAGE}), XAI_MESSAGE),
    # Moonshot's (Kimi)
    ("moonshot", {}, openai_error_body(MOONSHOT_MESSAGE, code=None), MOONSHOT_MESSAGE),
    # LM Studio's, behind `type: openai`
    ("openai", {}, orjson.dumps({"error": LM_STUDIO_MESSAGE}), LM_STUDIO_MESSAGE),
    # vLLM's engine, for a prompt its API server let through
    ("vllm", {}, orjson.dumps({"error": {"message": VLLM_ENGINE_MESSAGE,
                                         "type": "BadRequestError", "param": None,
                                         "code": 400}}), VLLM_ENGINE_MESSAGE),
    ("openrouter", {}, openai_error_body(
        "This endpoint's maximum context length is 200000 tokens. However, you requested "
        "about 231077 tokens (231077 of text input). Please reduce the length of either one, "
        "or use the \"middle-out\" transform to compress your prompt automatically.", code=400),
     "This endpoint's maximum context length is 200000 tokens. However, you requested about "
     "231077 tokens (231077 of text input). Please reduce the length of either one, or use "
     "the \"middle-out\" transform to compress your prompt automatically."),
])
def test_openai_compatible_overflows(kind: str, extra: dict[str, Any], body: bytes,
                                     message: str) -> None:
    up = provider(PROVIDER_TYPES[kind], kind, **extra)
    error = orjson.loads(body).get("error")
    assert_overflow(up.parse_error(400, body), message, **{
        k: v for k, v in (error.items() if isinstance(error, dict) else ())
        if k not in ("message", "type", "param", "code")})


OLLAMA_MESSAGES = [
    "prompt too long; exceeded max context length by 4096 tokens",
    # its runner's refusal when the request asks for no truncation (`truncate: false`)
    "the input length exceeds the context length",
    # its server's, a prompt over the loaded context (num_ctx)
    "the prompt is longer than the context length currently available to the model; shorten "
    "the prompt, adjust the context length in settings, or use a model with a longer context "
    "length",
    # llama.cpp's engine behind it, its error object passed on as the message's text
    '{"error":{"code":400,"message":"request (9000 tokens) exceeds the available context size '
    '(8192 tokens), try increasing it","type":"exceed_context_size_error","n_prompt_tokens":'
    '9000,"n_ctx":8192}}',
]


@pytest.mark.parametrize("message", OLLAMA_MESSAGES)
def test_ollamas_prompt_too_long(message: str) -> None:
    up = provider(OllamaProvider, "ollama")
    assert_overflow(up.parse_error(400, orjson.dumps({"error": message})), message)


@pytest.mark.parametrize("message", OLLAMA_MESSAGES)
def test_ollamas_prompt_too_long_as_an_error_line(message: str) -> None:
    # Ollama's stream ends with `{"error": …}` when the refusal comes after its 200
    up = provider(OllamaProvider, "ollama")
    enc = ChunkEncoder(completion_id="chatcmpl-t", created=1, model="m", include_usage=False)
    req = parse_chat_request(orjson.dumps({"model": "m", "stream": True, "messages": [
        {"role": "user", "content": "hi"}]}))
    error = collect(sse_chunks(relay_pieces(enc, up.stream_translator(req, enc), [
        orjson.dumps({"error": message}) + b"\n"]))).error
    assert error == {"message": message, "type": "invalid_request_error", "param": "messages",
                     "code": "context_length_exceeded"}


def test_another_ollama_error_line_is_no_overflow() -> None:
    up = provider(OllamaProvider, "ollama")
    enc = ChunkEncoder(completion_id="chatcmpl-t", created=1, model="m", include_usage=False)
    req = parse_chat_request(orjson.dumps({"model": "m", "stream": True, "messages": [
        {"role": "user", "content": "hi"}]}))
    error = collect(sse_chunks(relay_pieces(enc, up.stream_translator(req, enc), [
        b'{"error": "model runner has unexpectedly stopped"}\n']))).error
    assert error is not None and error.get("code") != "context_length_exceeded"


def test_an_openai_compatible_refusal_of_another_kind_keeps_its_fields() -> None:
    body = openai_error_body("Invalid max_tokens value, the valid range of max_tokens is "
                             "[1, 8192]", code="invalid_request_error")
    err = provider(DeepSeekProvider, "deepseek").parse_error(400, body)
    assert err.to_dict()["error"]["code"] == "invalid_request_error"
    assert err.to_dict()["error"]["param"] is None


OPENROUTER_MESSAGE = ("This endpoint's maximum context length is 200000 tokens. However, you "
                      "requested about 231077 tokens (231077 of text input).")


def streamed_error(up: Any, event: bytes) -> dict[str, Any]:
    """The error frame the client gets for an upstream stream of this one event."""
    enc = ChunkEncoder(completion_id="chatcmpl-t", created=1, model="m", include_usage=False)
    req = parse_chat_request(orjson.dumps({"model": "m", "stream": True, "messages": [
        {"role": "user", "content": "hi"}]}))
    error = collect(sse_chunks(relay_pieces(enc, up.stream_translator(req, enc),
                                            [b"data: " + event + b"\n\n"]))).error
    assert error is not None
    return error


@pytest.mark.parametrize(("kind", "error"), [
    # OpenRouter answers 200 before its provider does: the provider's refusal comes as an
    # error event, or as the 200's body, with the status in `code` (its errors page)
    ("openrouter", {"code": 400, "message": OPENROUTER_MESSAGE}),
    ("openai", {"code": 400, "message": OPENROUTER_MESSAGE}),
    # vLLM's engine refuses the prompt once its stream has begun: an error event (or, from
    # older servers, the error object itself), with its status as `code`
    ("vllm", {"message": VLLM_MESSAGE, "type": "BadRequestError", "param": None, "code": 400}),
    ("vllm", {"object": "error", "message": VLLM_MESSAGE, "type": "BadRequestError",
              "param": None, "code": 400}),
])
def test_an_openai_compatible_overflow_in_a_stream_or_a_200(kind: str,
                                                            error: dict[str, Any]) -> None:
    up = provider(PROVIDER_TYPES[kind], kind)
    message = error["message"]
    if "object" not in error:
        assert_overflow(up.answered_error(orjson.dumps({"error": error})), message)
    body = orjson.dumps(error if "object" in error else {"error": error})
    frame = streamed_error(up, body)
    assert {k: frame[k] for k in ("message", "type", "param", "code")} == {
        "message": message, "type": "invalid_request_error", "param": "messages",
        "code": "context_length_exceeded"}


def test_a_streamed_error_of_another_kind_keeps_its_code() -> None:
    up = provider(PROVIDER_TYPES["openrouter"], "openrouter")
    frame = streamed_error(up, orjson.dumps({"error": {"code": 502,
                                                       "message": "Provider returned error"}}))
    assert frame["code"] == "502" and frame["param"] is None


def test_coheres_too_many_tokens_as_an_error_event_or_in_a_200() -> None:
    # Cohere's refusal sent after a 200 (its error body as an SSE event, or as a stream
    # request's one JSON body) was a 502 with no code: a client that trims its history on
    # context_length_exceeded (and a fallback on 400s) never knew.
    message = ("too many tokens: size limit exceeded by 11326 tokens. Try using shorter or "
               "fewer inputs, or setting prompt_truncation='AUTO'.")
    up = provider(CohereProvider, "cohere")
    assert_overflow(up.answered_error(orjson.dumps({"message": message})), message)
    enc = ChunkEncoder(completion_id="chatcmpl-t", created=1, model="m", include_usage=False)
    req = parse_chat_request(orjson.dumps({"model": "m", "stream": True, "messages": [
        {"role": "user", "content": "hi"}]}))
    out = relay_pieces(enc, up.stream_translator(req, enc), [
        b"data: " + orjson.dumps({"message": message}) + b"\n\n"])
    assert collect(sse_chunks(out)).error == {
        "message": message, "type": "invalid_request_error", "param": "messages",
        "code": "context_length_exceeded"}
    # Another error event keeps the 502 it had.
    enc = ChunkEncoder(completion_id="chatcmpl-t", created=1, model="m", include_usage=False)
    out = relay_pieces(enc, up.stream_translator(req, enc),
                       [b'data: {"message": "internal server error"}\n\n'])
    error = collect(sse_chunks(out)).error
    assert error is not None and error.get("code") != "context_length_exceeded"


def test_coheres_max_tokens_over_the_output_cap_is_no_overflow() -> None:
    # Cohere's refusal of a max_tokens over the model's output cap opens with the same "too
    # many tokens" (its errors reference), and was context_length_exceeded: a client that
    # trims its history on that code trimmed it and was refused again, for ever.
    message = ("too many tokens: max tokens must be less than or equal to 4096, the maximum "
               "output for this model - received 8192.")
    up = provider(CohereProvider, "cohere")
    for err in (up.parse_error(400, orjson.dumps({"message": message})),
                up.answered_error(orjson.dumps({"message": message}))):
        assert err.status == 400 and err.message == message
        assert err.code != "context_length_exceeded" and err.param is None
