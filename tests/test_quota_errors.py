"""An exhausted quota or credit balance (billing, not a rate): OpenAI's 429 `insufficient_quota`
— which the client gets with `x-should-retry: false`, and a config's `retry` does not repeat
(it comes again until someone pays; a fallback still runs) — whichever provider said it."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streamproxy.errors import UpstreamStatusError
from streamproxy.providers.anthropic.stream import stream_error
from streamproxy.providers.bedrock.stream import aws_error
from streamproxy.providers.registry import PROVIDER_TYPES
from tests.conftest import provider_config
from tests.test_context_overflow import streamed_error


def provider(kind: str, **extra: Any) -> Any:
    cfg = provider_config(kind, "http://127.0.0.1:9", **extra).providers["up"]
    return PROVIDER_TYPES[kind](cfg)


OPENAI_QUOTA = {"message": "You exceeded your current quota, please check your plan and "
                           "billing details.", "type": "insufficient_quota", "param": None,
                "code": "insufficient_quota"}


@pytest.mark.parametrize("error", [OPENAI_QUOTA, {**OPENAI_QUOTA, "code": None}])
@pytest.mark.parametrize("kind", ["openai", "azure", "openrouter", "deepseek"])
def test_an_openai_compatible_insufficient_quota_is_not_retried(kind: str,
                                                                error: dict[str, Any]) -> None:
    extra = {"resource": "r", "api_version": "2024-10-21"} if kind == "azure" else {}
    err = provider(kind, **extra).parse_error(429, orjson.dumps({"error": error}))
    assert err.status == 429 and err.code == "insufficient_quota"
    assert err.should_retry is False
    assert err.to_dict()["error"] == {**error}  # its own fields, as they came


@pytest.mark.parametrize("code", ["credit_balance_exhausted", "organization_spend_limit_exceeded",
                                  "project_spend_limit_exceeded",
                                  "organization_usage_limit_exceeded"])
@pytest.mark.parametrize("kind", ["openai", "azure"])
def test_openais_billing_codes_under_type_insufficient_quota_are_not_retried(kind: str,
                                                                             code: str) -> None:
    # OpenAI names the cause in `code` and keeps `insufficient_quota` as the type: the client
    # (the SDK's two retries) and a config's retry sent it again, to the same 429.
    extra = {"resource": "r", "api_version": "2024-10-21"} if kind == "azure" else {}
    error = {**OPENAI_QUOTA, "code": code}
    err = provider(kind, **extra).parse_error(429, orjson.dumps({"error": error}))
    assert err.status == 429 and err.should_retry is False
    assert err.to_dict()["error"] == error  # its own fields, as they came


def test_a_rate_limit_is_still_retried() -> None:
    body = orjson.dumps({"error": {"message": "Rate limit reached for gpt-4o", "type":
                                   "requests", "param": None, "code": "rate_limit_exceeded"}})
    err: UpstreamStatusError = provider("openai").parse_error(429, body)
    assert err.status == 429 and err.should_retry is None


ANTHROPIC_CREDIT = ("Your credit balance is too low to access the Anthropic API. Please go to "
                    "Plans & Billing to upgrade or purchase credits.")


def test_anthropics_credit_balance_too_low_is_openais_insufficient_quota() -> None:
    # Anthropic says it with a 400 invalid_request_error, as if the request were wrong: a
    # client (or a fallback on 429) could not tell it from its own mistake.
    body = orjson.dumps({"type": "error", "error": {"type": "invalid_request_error",
                                                    "message": ANTHROPIC_CREDIT},
                         "request_id": "req_011CbrFTcXhtiMzr3s6EocF7"})
    up = provider("anthropic")
    error = {"message": ANTHROPIC_CREDIT, "type": "insufficient_quota", "param": None,
             "code": "insufficient_quota"}
    event = {"type": "invalid_request_error", "message": ANTHROPIC_CREDIT}
    # over HTTP, in a 200's body, as an error event (before the first byte: the relay answers
    # with this error's status; after it: the error frame)
    for err in (up.parse_error(400, body), up.answered_error(body), stream_error(event, "up")):
        assert err.status == 429 and err.should_retry is False
        assert err.to_dict() == {"error": error}
    assert streamed_error(up, body) == error


@pytest.mark.parametrize("message", [
    "You have reached your specified API usage limits. You will regain access on 2026-04-01 "
    "at 00:00 UTC.",
    "You have reached your specified workspace API usage limits. You will regain access on "
    "2026-04-01 at 00:00 UTC."])
def test_anthropics_spend_limit_reached_is_openais_insufficient_quota(message: str) -> None:
    # Anthropic's 400 invalid_request_error for an organization's or workspace's spend limit:
    # the client read its own request as wrong, and a fallback on 429 never ran.
    body = orjson.dumps({"type": "error", "error": {"type": "invalid_request_error",
                                                    "message": message},
                         "request_id": "req_011CYwZjVSiJTexyaHTWcaqh"})
    up = provider("anthropic")
    error = {"message": message, "type": "insufficient_quota", "param": None,
             "code": "insufficient_quota"}
    event = {"type": "invalid_request_error", "message": message}
    for err in (up.parse_error(400, body), up.answered_error(body), stream_error(event, "up")):
        assert err.status == 429 and err.should_retry is False
        assert err.to_dict() == {"error": error}
    assert streamed_error(up, body) == error  # the error frame of an error event


def test_anthropics_other_400s_stay_400s() -> None:
    body = orjson.dumps({"type": "error", "error": {"type": "invalid_request_error",
                                                    "message": "max_tokens: 10000 > 4096"}})
    err = provider("anthropic").parse_error(400, body)
    assert err.status == 400 and err.code == "invalid_request_error"
    assert err.should_retry is None


# Gemini's 429 RESOURCE_EXHAUSTED names the quotas it hit (QuotaFailure); a requests- or
# tokens-per-day one resets at midnight Pacific (ai.google.dev/gemini-api/docs/rate-limits),
# yet Google still sends a RetryInfo of seconds (that of the per-minute quota listed with it).
def gemini_429(*quota_ids: str, delay: str = "27s") -> bytes:
    return orjson.dumps({"error": {
        "code": 429, "message": "You exceeded your current quota, please check your plan and "
        "billing details.", "status": "RESOURCE_EXHAUSTED",
        "details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
            {"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_"
                            "requests", "quotaId": quota_id,
             "quotaDimensions": {"location": "global", "model": "gemini-2.5-flash"}}
            for quota_id in quota_ids]},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}]}})


PER_DAY = "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
PER_MINUTE = "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"


@pytest.mark.parametrize("quotas", [(PER_DAY,), (PER_MINUTE, PER_DAY),
                                    ("GenerateContentInputTokensPerModelPerDay-FreeTier",)])
def test_geminis_per_day_quota_is_insufficient_quota_not_a_wait_of_seconds(
        quotas: tuple[str, ...]) -> None:
    # The client (and a config's retry) waited the 27 s and retried, twice with the openai
    # SDK, for the same 429 until midnight Pacific.
    up = provider("gemini")
    for err in (up.parse_error(429, gemini_429(*quotas)),
                up.answered_error(gemini_429(*quotas))):
        assert err.status == 429 and err.should_retry is False
        assert err.code == err.error_type == "insufficient_quota"
        assert err.retry_after is None
        assert err.message.startswith("You exceeded your current quota")


def test_geminis_per_minute_quota_is_still_a_rate_limit_with_its_wait() -> None:
    err = provider("gemini").parse_error(429, gemini_429(PER_MINUTE))
    assert err.status == 429 and err.should_retry is None and err.retry_after == 27.0
    assert (err.error_type, err.code) == ("rate_limit_error", "RESOURCE_EXHAUSTED")


async def test_a_gemini_per_day_quota_reaches_the_client_as_not_retried(proxy: Any,
                                                                        upstream: Any) -> None:
    upstream.status = 429
    upstream.content_type = "application/json"
    upstream.body = gemini_429(PER_MINUTE, PER_DAY, delay="0.2s")
    client = await proxy(provider_config("gemini", upstream.url))
    config = orjson.dumps({"retry": {"attempts": 2}}).decode()
    resp = await client.post("/v1/chat/completions", headers={"x-portkey-config": config},
                             json={"model": "m", "stream": True,
                                   "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status == 429 and len(upstream.requests) == 1  # not retried by the config
    assert resp.headers["x-should-retry"] == "false" and "retry-after" not in resp.headers
    assert (await resp.json())["error"]["code"] == "insufficient_quota"


# Bedrock's daily token quota (an account's "tokens per day" for a model) comes as a 429
# ThrottlingException like a per-minute one, but lifts only when the day turns.
BEDROCK_PER_DAY = "Too many tokens per day, please wait before trying again."


def test_bedrocks_tokens_per_day_is_insufficient_quota_not_a_rate_limit() -> None:
    # The client (the openai SDK's two retries) and a config's retry sent it again with
    # backoff, for the same 429 until the next day.
    up = provider("bedrock", region="us-east-1")
    http = up.error_from_response(429, orjson.dumps({"message": BEDROCK_PER_DAY}),
                                  {"x-amzn-errortype": "ThrottlingException:http://"
                                                       "internal.amazon.com/coral/"})
    for err in (http, aws_error("throttlingException", BEDROCK_PER_DAY, "up")):
        assert err.status == 429 and err.should_retry is False
        assert err.code == err.error_type == "insufficient_quota"
        assert err.message == BEDROCK_PER_DAY


@pytest.mark.parametrize("message", ["Too many tokens, please wait before trying again.",
                                     "Too many requests, please wait before trying again."])
def test_bedrocks_per_minute_throttling_is_still_a_rate_limit(message: str) -> None:
    up = provider("bedrock", region="us-east-1")
    http = up.error_from_response(429, orjson.dumps({"message": message}),
                                  {"x-amzn-errortype": "ThrottlingException"})
    for err in (http, aws_error("throttlingException", message, "up")):
        assert err.status == 429 and err.should_retry is None
        assert err.code in ("ThrottlingException", "throttlingException")


# Cohere's trial key is capped at 1,000 calls a month (docs.cohere.com rate limits), besides
# its per-minute limit; both are a 429 worded alike but for the period.
COHERE_PER_MONTH = ("You are using a Trial key, which is limited to 1000 API calls / month. You "
                    "can continue to use the Trial key for free or upgrade to a Production key "
                    "with higher rate limits at 'https://dashboard.cohere.com/api-keys'.")


def test_cohere_trial_keys_monthly_limit_is_insufficient_quota() -> None:
    # Retried with backoff by the client and a config's retry, for the same 429 until the
    # month turned.
    up = provider("cohere")
    err = up.parse_error(429, orjson.dumps({"id": "3f1c", "message": COHERE_PER_MONTH}))
    assert err.status == 429 and err.should_retry is False
    assert err.code == err.error_type == "insufficient_quota"
    assert err.message == COHERE_PER_MONTH


def test_cohere_trial_keys_per_minute_limit_is_still_a_rate_limit() -> None:
    message = "You are using a Trial key, which is limited to 20 API calls / minute."
    err = provider("cohere").parse_error(429, orjson.dumps({"id": "3f1c", "message": message}))
    assert err.status == 429 and err.should_retry is None and err.code != "insufficient_quota"


def test_a_gemini_quota_of_zero_is_insufficient_quota_not_a_wait_of_seconds() -> None:
    # A model the key's tier has no quota for (a free-tier key asking for a paid-only model):
    # a per-minute quota whose limit is 0 ("…, limit: 0"), with a RetryInfo of seconds. The
    # client (and a config's retry) waited and retried, for the same 429 every time.
    body = orjson.dumps({"error": {
        "code": 429, "status": "RESOURCE_EXHAUSTED", "message": "You exceeded your current "
        "quota. * Quota exceeded for metric: generativelanguage.googleapis.com/generate_content"
        "_free_tier_input_token_count, limit: 0, model: gemini-2.5-pro",
        "details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
            {"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_input"
                            "_token_count", "quotaId": "GenerateContentInputTokensPerModelPer"
                            "Minute-FreeTier", "quotaValue": "0",
             "quotaDimensions": {"location": "global", "model": "gemini-2.5-pro"}}]},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "41s"}]}})
    up = provider("gemini")
    for err in (up.parse_error(429, body), up.answered_error(body)):
        assert err.status == 429 and err.should_retry is False
        assert err.code == err.error_type == "insufficient_quota"
        assert err.retry_after is None


def test_a_gemini_per_minute_quota_with_a_limit_is_still_a_rate_limit() -> None:
    body = orjson.loads(gemini_429(PER_MINUTE))
    body["error"]["details"][0]["violations"][0]["quotaValue"] = "10"
    err = provider("gemini").parse_error(429, orjson.dumps(body))
    assert err.status == 429 and err.should_retry is None and err.retry_after == 27.0


# AWS: "Your request exceeds the service quota for your account. You can view your quotas at
# Viewing service quotas. You can resubmit your request later." (Converse's HTTP 400)
BEDROCK_SERVICE_QUOTA = ("Your request exceeds the service quota for your account. You can "
                         "view your quotas at Viewing service quotas. You can resubmit your "
                         "request later.")


def test_bedrocks_service_quota_exceeded_is_insufficient_quota_not_a_bad_request() -> None:
    # An account's quota, not a mistake in the request: it went out as a 400
    # invalid_request_error (the openai SDK's BadRequestError), which a fallback on 429
    # (`on_status_codes: [429, ...]`) did not act on, though another account or region answers.
    up = provider("bedrock", region="us-east-1")
    body = orjson.dumps({"message": BEDROCK_SERVICE_QUOTA})
    header = {"x-amzn-errortype": "ServiceQuotaExceededException:http://internal.amazon.com/"
                                  "coral/com.amazon.bedrock/"}
    for err in (up.error_from_response(400, body, header),
                up.parse_error(400, orjson.dumps({"__type": "ServiceQuotaExceededException",
                                                  "message": BEDROCK_SERVICE_QUOTA})),
                aws_error("serviceQuotaExceededException", BEDROCK_SERVICE_QUOTA, "up")):
        assert err.status == 429 and err.should_retry is False
        assert err.code == err.error_type == "insufficient_quota"
        assert err.message == BEDROCK_SERVICE_QUOTA
