"""An OpenAI-compatible upstream's error object, in a stream's error event, in a 200's body or
in an HTTP error: the status, type and message the client (and retries, fallbacks) get are
the ones the object names, whichever way it came. Shapes as servers send them."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streamproxy.providers.openai_compat import error_object
from streamproxy.providers.registry import PROVIDER_TYPES
from tests.test_context_overflow import VLLM_MESSAGE, provider, streamed_error


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
