"""Gemini's code execution parts (`executableCode`, `codeExecutionResult`: an answer to a
request whose `cached_content` holds the `codeExecution` tool) reach the client as fenced
blocks of its `content`, the way OpenAI-compatible gateways render them, streamed or not,
never dropped."""

from __future__ import annotations

from typing import Any

import orjson

from streamproxy.providers.gemini.response import to_completion
from tests.helpers import sse_chunks
from tests.test_gemini import google_sse, translate


def candidate_chunk(parts: list[dict[str, Any]], finish: str | None = None) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate],
            "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 40}}


CODE = {"executableCode": {"language": "PYTHON", "code": "print(sum(range(101)))\n"}}
RESULT = {"codeExecutionResult": {"outcome": "OUTCOME_OK", "output": "5050\n"}}
PARTS = [{"text": "Let me add them up."}, CODE, RESULT, {"text": "The sum is 5050."}]
CONTENT = ("Let me add them up.\n```python\nprint(sum(range(101)))\n```\n"
           "\n```output\n5050\n```\nThe sum is 5050.")


def streamed_content(out: bytes) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in sse_chunks(out)
                   if c != "[DONE]" and c["choices"])


def test_a_stream_gives_the_code_and_its_output_as_content() -> None:
    body = google_sse([candidate_chunk(PARTS[:1]), candidate_chunk([CODE]),
                       candidate_chunk([RESULT]), candidate_chunk(PARTS[3:], "STOP")])
    assert streamed_content(translate([body])) == CONTENT


def test_a_non_streamed_answer_gives_them_in_its_content() -> None:
    body = orjson.dumps(candidate_chunk(PARTS, "STOP"))
    message = to_completion(body, completion_id="c", created=1, model="m")["choices"][0]
    assert (message["message"]["content"], message["finish_reason"]) == (CONTENT, "stop")


def test_a_failed_run_gives_its_error_output_and_code_without_a_newline_its_own() -> None:
    parts = [{"executableCode": {"language": "PYTHON", "code": "1/0"}},
             {"codeExecutionResult": {"outcome": "OUTCOME_FAILED",
                                      "output": "ZeroDivisionError: division by zero"}}]
    body = orjson.dumps(candidate_chunk(parts, "STOP"))
    message = to_completion(body, completion_id="c", created=1, model="m")["choices"][0]
    assert message["message"]["content"] == (
        "\n```python\n1/0\n```\n\n```output\nZeroDivisionError: division by zero\n```\n")
