"""An OpenAI-compatible upstream's error object, in a stream's error event, in a 200's body or
in an HTTP error: the status, type and message the client (and retries, fallbacks) get are
the ones the object names, whichever way it came. Shapes as servers send them."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from streamproxy.errors import UpstreamStatusError
from streamproxy.openai_api.request import parse_chat_request
from streamproxy.providers.openai_compat import error_object
from streamproxy.providers.registry import PROVIDER_TYPES
from tests.test_context_overflow import VLLM_MESSAGE, provider, streamed_error

USER = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(("code", "status"), [("400", 400), ("429", 429), ("503", 503)])
def test_a_status_named_as_a_numeric_string_is_that_status(code: str, status: int) -> None:
    # LiteLLM's proxy sends its `code` as a string ("429"), as do some OpenRouter relays
    err = error_object({"message": "m", "type": None, "param": None, "code": code}, "up")
    assert err.status == status


def test_an_overflow_named_400_as_a_string_is_context_length_exceeded() -> None:
    up = provider(PROVIDER_TYPES["openai"], "openai")
    frame = streamed_error(up, orjson.dumps({"error": {
        "message": VLLM_MESSAGE, "type": None, "param": None, "code": "400"}}))
    assert (frame["type"], frame["code"]) == ("invalid_request_error", "context_length_exceeded")


@pytest.mark.parametrize("code", ["content_filter", "4000", "1113", "٤٠٠", "²00", ""])
def test_a_code_that_names_no_status_leaves_the_default(code: Any) -> None:
    assert error_object({"message": "m", "code": code}, "up").status == 502


@pytest.mark.parametrize(("error", "status"), [
    ({"type": "invalid_request_error", "code": None}, 400),
    ({"type": "invalid_request_error", "code": "context_length_exceeded"}, 400),
    ({"type": "authentication_error"}, 401),
    ({"type": "invalid_request_error", "code": "invalid_api_key"}, 401),
    ({"type": "permission_error"}, 403),
    ({"type": "not_found_error"}, 404),
    ({"type": "invalid_request_error", "code": "model_not_found"}, 404),
    ({"type": "rate_limit_error"}, 429),
    ({"type": "tokens", "code": "rate_limit_exceeded"}, 429),  # OpenAI's rate limits
    ({"type": "server_error", "code": None}, 500),
    ({"type": "server_error", "code": "overloaded"}, 503),
    ({"type": "overloaded_error"}, 529),  # Anthropic's, which some relays pass on as is
    # a numeric status wins over the names
    ({"type": "invalid_request_error", "code": 429}, 429),
    ({"type": "invalid_request_error", "status": 413}, 413),
    # a name not known leaves the default
    ({"type": "BadRequestError", "code": "weird"}, 502),
])
def test_an_error_named_only_by_openais_type_or_code_has_its_status(error: dict[str, Any],
                                                                    status: int) -> None:
    # before the first byte the status decides retries and fallbacks: a client error taken
    # for a 502 was retried as a server error
    assert error_object({"message": "m", **error}, "up").status == status


def test_a_200s_invalid_request_error_is_a_400_with_the_providers_fields() -> None:
    up = provider(PROVIDER_TYPES["openai"], "openai")
    err = up.answered_error(orjson.dumps({"error": {
        "message": "Invalid value for 'temperature'", "type": "invalid_request_error",
        "param": "temperature", "code": None}}))
    assert err.status == 400
    assert err.to_dict() == {"error": {"message": "Invalid value for 'temperature'",
                                       "type": "invalid_request_error",
                                       "param": "temperature", "code": None}}


VLLM_ERROR = {"object": "error", "message": "[{'type': 'missing', 'loc': ('body', 'messages')}]",
              "type": "BadRequestError", "param": None, "code": 400}


def test_a_200_carrying_vllms_bare_error_object_is_that_error() -> None:
    # vLLM-style servers (and Mistral) send the error object itself, not under `error`: it was
    # forwarded to the client as if it were a completion
    up = provider(PROVIDER_TYPES["vllm"], "vllm")
    req = parse_chat_request(orjson.dumps({"model": "m", "messages": USER}))
    with pytest.raises(UpstreamStatusError) as caught:
        up.translate_response(orjson.dumps(VLLM_ERROR), req, completion_id="c", created=1)
    assert caught.value.status == 400
    assert caught.value.to_dict() == {"error": {"message": VLLM_ERROR["message"],
                                                "type": "BadRequestError", "param": None,
                                                "code": "400"}}


def test_a_stream_request_answered_with_vllms_bare_error_object_has_its_status() -> None:
    # (a stream request answered 200 with one JSON body: routing/executor.py `_json_error`)
    err = provider(PROVIDER_TYPES["openai"], "openai").answered_error(orjson.dumps(VLLM_ERROR))
    assert (err.status, err.message) == (400, VLLM_ERROR["message"])


def test_a_completion_whose_object_is_not_error_is_no_error() -> None:
    up = provider(PROVIDER_TYPES["openai"], "openai")
    req = parse_chat_request(orjson.dumps({"model": "m", "messages": USER}))
    body = orjson.dumps({"object": "chat.completion", "choices": [{"index": 0, "message": {
        "role": "assistant", "content": '"error"'}, "finish_reason": "stop"}]})
    assert up.translate_response(body, req, completion_id="c", created=1) == body


@pytest.mark.parametrize("body", [
    {"detail": {"message": "Model 'x' is not served here"}},  # FastAPI's HTTPException(detail=…)
    {"detail": {"msg": "Model 'x' is not served here"}},
    {"error": {"detail": "Model 'x' is not served here"}},
    {"error": {"detail": {"message": "Model 'x' is not served here"}}},
])
def test_an_error_whose_message_is_under_detail_keeps_it(body: dict[str, Any]) -> None:
    up = provider(PROVIDER_TYPES["openai"], "openai")
    err = up.parse_error(404, orjson.dumps(body))
    assert (err.status, err.message) == (404, "Model 'x' is not served here")


@pytest.mark.parametrize("body", [
    {"detail": [{"loc": ["body", "model"], "msg": "Field required", "type": "missing"}]},
    {"message": {"detail": [{"loc": ["body", "model"], "msg": "Field required"}]}},
])
def test_a_validation_errors_detail_still_names_the_field(body: dict[str, Any]) -> None:
    err = provider(PROVIDER_TYPES["openai"], "openai").parse_error(422, orjson.dumps(body))
    assert err.message == "body.model: Field required"


def test_a_streamed_error_whose_message_is_under_detail_keeps_it() -> None:
    up = provider(PROVIDER_TYPES["openai"], "openai")
    frame = streamed_error(up, orjson.dumps({"error": {"detail": "Engine died", "code": 500}}))
    assert frame["message"] == "Engine died"


# OpenAI's errors as its HTTP answers carry them, with their status
OPENAI_ERRORS = [
    (400, {"message": "Invalid value", "type": "invalid_request_error", "param": "n",
           "code": None}),
    (401, {"message": "Incorrect API key provided", "type": "invalid_request_error",
           "param": None, "code": "invalid_api_key"}),
    (404, {"message": "The model `gpt-9` does not exist", "type": "invalid_request_error",
           "param": None, "code": "model_not_found"}),
    (429, {"message": "Rate limit reached", "type": "tokens", "param": None,
           "code": "rate_limit_exceeded"}),
    (429, {"message": "You exceeded your current quota", "type": "insufficient_quota",
           "param": None, "code": "insufficient_quota"}),
    (429, {"message": "Your credit balance is too low", "type": "insufficient_quota",
           "param": None, "code": "credit_balance_exhausted"}),
    (500, {"message": "The server had an error", "type": "server_error", "param": None,
           "code": None}),
]


@pytest.mark.parametrize(("status", "error"), OPENAI_ERRORS)
def test_an_error_object_in_a_stream_or_a_200_is_the_same_error_as_its_http_answer(
        status: int, error: dict[str, Any]) -> None:
    """Before the first byte, an error event (or a 200's error object) decides retries,
    fallbacks and the client's answer as the same error answered over HTTP does: the same
    status, body and `x-should-retry` (a used-up quota is not retried either way)."""
    up = provider(PROVIDER_TYPES["openai"], "openai")
    body = orjson.dumps({"error": error})
    http, event = up.parse_error(status, body), up.answered_error(body)
    assert (event.status, event.should_retry, event.to_dict()) == (
        http.status, http.should_retry, http.to_dict())


@pytest.mark.parametrize(("kind", "error"), [
    ("vllm", {"object": "error", "message": "bad", "type": "BadRequestError", "param": None,
              "code": 400}),
    ("mistral", {"object": "error", "message": "Invalid model: x", "type": "invalid_model",
                 "param": None, "code": "1500"}),
])
def test_a_bare_error_object_answered_over_http_keeps_its_fields_as_in_a_stream(
        kind: str, error: dict[str, Any]) -> None:
    # the client got the provider's own `type` from the stream's error event but ours from
    # the same object as an HTTP 400's body
    up = provider(PROVIDER_TYPES[kind], kind)
    assert up.parse_error(400, orjson.dumps(error)).to_dict()["error"] == streamed_error(
        up, orjson.dumps(error))


# OpenRouter's 429 when its provider is rate-limited (it may answer 200 first, so it also
# comes as a stream's error event or a 200's body, where no HTTP header carries the wait):
# the wait is in the error object's metadata.
OPENROUTER_RATE_LIMITED = {"message": "Provider returned error", "code": 429, "metadata": {
    "raw": "meta-llama/llama-3.3-70b-instruct:free is temporarily rate-limited upstream. "
           "Please retry shortly.", "provider_name": "Venice", "is_byok": False,
    "retry_after_seconds": 17, "retry_after_seconds_raw": 16.007,
    "headers": {"Retry-After": "17"}}}


@pytest.mark.parametrize("metadata", [
    OPENROUTER_RATE_LIMITED["metadata"],
    {"retry_after_seconds": 16.007},
    {"headers": {"Retry-After": "16.007"}},
    {"headers": {"retry-after": "16.007"}},
])
def test_a_wait_an_error_object_names_is_the_errors_wait(metadata: dict[str, Any]) -> None:
    # Without it a config's retry came back at once (and was refused again) and the client
    # got no retry-after; the same object answered as an HTTP 429 is read alike.
    error = {**OPENROUTER_RATE_LIMITED, "metadata": metadata}
    up = provider(PROVIDER_TYPES["openrouter"], "openrouter")
    event = error_object(error, "openrouter")
    http = up.parse_error(429, orjson.dumps({"error": error}))
    assert (event.status, http.status) == (429, 429)
    assert round(event.retry_after or 0) == round(http.retry_after or 0) == 16


@pytest.mark.parametrize("metadata", [
    {}, {"retry_after_seconds": -1}, {"retry_after_seconds": "soon"},
    {"retry_after_seconds": True}, {"headers": {"Retry-After": "Wed, 21 Oct 2015"}},
    {"headers": ["Retry-After"]}, "17",
])
def test_an_error_object_naming_no_readable_wait_has_none(metadata: Any) -> None:
    error = {**OPENROUTER_RATE_LIMITED, "metadata": metadata}
    assert error_object(error, "openrouter").retry_after is None


def openrouter_daily_limit(reset_ms: Any, **headers: str) -> dict[str, Any]:
    """OpenRouter's own 429 for a used-up free-model allowance: its reset as epoch milliseconds
    in `metadata.headers` (Gitlawb/openclaude#936)."""
    return {"message": "Rate limit exceeded: free-models-per-day. Add 10 credits to unlock "
                       "1000 free model requests per day", "code": 429,
            "metadata": {"headers": {"X-RateLimit-Limit": "50", "X-RateLimit-Remaining": "0",
                                     "X-RateLimit-Reset": reset_ms, **headers},
                         "provider_name": None}}


def test_openrouters_rate_limit_reset_is_the_errors_wait() -> None:
    # it named no wait: a config's retry came back at once (refused again until the reset),
    # and the client got no retry-after to wait on
    up = provider(PROVIDER_TYPES["openrouter"], "openrouter")
    error = openrouter_daily_limit(str(int((time.time() + 600) * 1000)))
    for err in (error_object(error, "openrouter"),
                up.parse_error(429, orjson.dumps({"error": error}))):
        assert err.status == 429
        assert err.retry_after is not None and 590 < err.retry_after <= 600


def test_a_retry_after_beside_the_reset_wins_and_a_past_reset_is_no_wait() -> None:
    future = str(int((time.time() + 600) * 1000))
    waited = error_object(openrouter_daily_limit(future, **{"Retry-After": "7"}), "openrouter")
    assert waited.retry_after == 7
    past = error_object(openrouter_daily_limit(str(int(time.time() * 1000) - 5000)), "up")
    assert past.retry_after == 0
    for garbled in ("soon", True, None, "nan", -1):
        assert error_object(openrouter_daily_limit(garbled), "up").retry_after is None


# Mistral's error objects name their HTTP status in `raw_status_code` (their `code` is
# Mistral's own number, their type its own name)
MISTRAL_ERRORS = [
    ({"object": "error", "message": "Rate limit exceeded", "type": "rate_limited",
      "param": None, "code": "1300", "raw_status_code": 429}, 429),
    ({"object": "error", "message": "This model is not available in your subscription tier",
      "type": "tier_not_allowed", "param": None, "code": "1910", "raw_status_code": 403}, 403),
    ({"object": "error", "message": "Invalid model: x", "type": "invalid_model", "param": None,
      "code": "1500", "raw_status_code": 400}, 400),
]


@pytest.mark.parametrize(("error", "status"), MISTRAL_ERRORS)
def test_a_status_named_in_raw_status_code_is_that_status(error: dict[str, Any],
                                                          status: int) -> None:
    # as an error event or a 200's body it was a 502: a rate limit retried at once as a server
    # error (and a fallback on 429 not taken), a refused request retried in vain
    up = provider(PROVIDER_TYPES["mistral"], "mistral")
    assert error_object(error, "mistral").status == status
    assert up.answered_error(orjson.dumps(error)).status == status


# Mistral's rate limits as its API has sent them without `raw_status_code`: the status only in
# their `type` (cline/cline#9085: "rate_limited", code "1300"; "service_tier_capacity_exceeded",
# code "3505"), as an error event or a stream request's 200 body
@pytest.mark.parametrize("error", [
    {"object": "error", "message": "Rate limit exceeded", "type": "rate_limited",
     "param": None, "code": "1300"},
    {"object": "error", "message": "Service tier capacity exceeded for this model.",
     "type": "service_tier_capacity_exceeded", "param": None, "code": "3505"},
])
def test_mistrals_rate_limit_types_are_a_429(error: dict[str, Any]) -> None:
    # it was a 502: retried at once as a server error, a fallback on 429 not taken, and the
    # openai SDK's RateLimitError never raised
    up = provider(PROVIDER_TYPES["mistral"], "mistral")
    assert error_object(error, "mistral").status == 429
    assert up.answered_error(orjson.dumps(error)).status == 429
    assert up.answered_error(orjson.dumps(error)).to_dict()["error"]["type"] == error["type"]
