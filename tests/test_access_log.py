"""The JSON access log: one line per request, the documented fields, no secret anywhere in any
log, bodies only when the operator opts in."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from streamproxy.config import ConfigError
from streamproxy.observe.access_log import (
    ACCESS_LOGGER,
    AccessLog,
    ParserErrorFilter,
    access_entry,
    configure_logging,
    log_level,
    parse_logging,
    timestamp,
)
from streamproxy.record import RequestRecord
from streamproxy.server import front
from tests.conftest import provider_config
from tests.helpers import collect, make_config, metric_value, sse_chunks

FIELDS = {"ts", "trace_id", "auth_key", "provider", "model", "status", "stream", "ttft_ms",
          "first_chunk_ms", "duration_ms", "prompt_tokens", "completion_tokens",
          "cached_tokens", "tokens_partial", "finish_reason",
          "attempts", "target_index", "option", "fallbacks", "client_disconnected", "error_type",
          "error_code", "upstream_errors", "bytes_in", "bytes_out", "chunks", "max_gap_ms",
          "cache_status", "upstream_request_id", "cache_write_tokens", "reasoning_tokens"}
USER = [{"role": "user", "content": "a fairly private question"}]


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [orjson.loads(r.getMessage()) for r in caplog.records if r.name == ACCESS_LOGGER.name]


def mock_config(**sections: Any) -> Any:
    return make_config({"mock": {"type": "mock", "default_model": "fast"}}, default="mock",
                       **sections)


async def test_one_line_per_request_with_the_documented_fields(
        proxy: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    client = await proxy(mock_config())
    body = await (await client.post("/v1/chat/completions", headers={
        "x-portkey-trace-id": "trace-stream-1", "x-portkey-metadata": '{"team": "blue"}'}, json={
        "model": "fast:tokens=7", "stream": True, "messages": USER})).read()
    assert collect(sse_chunks(body)).done
    await (await client.post("/v1/chat/completions", json={
        "model": "fast:tokens=3", "messages": USER})).read()
    await (await client.post("/v1/chat/completions", data=b"[]")).read()
    await (await client.get("/healthz")).read()

    streamed, plain, bad = access_lines(caplog)
    assert streamed.pop("metadata") == {"team": "blue"}  # only when the client sent some
    for line in (streamed, plain, bad):
        assert set(line) == FIELDS
        assert line["ts"].endswith("Z")
    assert streamed["trace_id"] == "trace-stream-1"
    assert (streamed["provider"], streamed["model"], streamed["status"]) == ("mock",
                                                                           "fast:tokens=7", 200)
    assert streamed["stream"] is True and streamed["finish_reason"] == "stop"
    assert streamed["completion_tokens"] == 7 and streamed["prompt_tokens"] >= 1
    assert streamed["tokens_partial"] is False
    assert streamed["ttft_ms"] >= 0 and streamed["duration_ms"] >= streamed["ttft_ms"]
    assert streamed["attempts"] == 1 and streamed["target_index"] == 0
    assert streamed["option"] == "config"
    assert streamed["fallbacks"] == 0 and streamed["client_disconnected"] is False
    assert streamed["bytes_out"] == len(body) and streamed["bytes_in"] > 0
    assert plain["stream"] is False and plain["ttft_ms"] is None
    assert plain["completion_tokens"] == 3
    assert (bad["status"], bad["error_type"], bad["error_code"]) == (400,
                                                                     "invalid_request_error",
                                                                     "invalid_json")
    assert "request_body" not in streamed  # not opted in


@pytest.mark.parametrize("model", ["paced:error_after=3", "paced:truncate_after=3"])
async def test_a_stream_that_fails_logs_the_tokens_the_provider_had_reported(
        proxy: Any, caplog: pytest.LogCaptureFixture, model: str) -> None:
    """Anthropic reports the prompt's tokens in message_start, and bills them whatever follows:
    a stream that then fails still logs (and counts) them, marked as partial — with the
    completion tokens its client got, not message_start's `output_tokens: 1`."""
    caplog.set_level(logging.INFO)
    client = await proxy(mock_config())
    lbl = {"provider": "mock", "model": model, "type": "input"}
    out_lbl = {**lbl, "type": "output"}
    before = metric_value("streamproxy_tokens_total", lbl)
    before_out = metric_value("streamproxy_tokens_total", out_lbl)
    for m in ("fast:tokens=3", model):
        body = await (await client.post("/v1/chat/completions", json={
            "model": m, "stream": True, "messages": USER})).read()
    assert collect(sse_chunks(body)).error is not None
    complete, failed = access_lines(caplog)
    assert failed["error_type"] is not None and failed["finish_reason"] is None
    assert failed["prompt_tokens"] == complete["prompt_tokens"] >= 1
    # Three one-word deltas went out, as the complete stream's three tokens (message_start
    # said 1, and no message_delta came): the estimate, docs/operations.md
    assert failed["completion_tokens"] == complete["completion_tokens"] == 3
    assert failed["tokens_partial"] is True
    assert (metric_value("streamproxy_tokens_total", lbl)
            == before + failed["prompt_tokens"])
    assert metric_value("streamproxy_tokens_total", out_lbl) == before_out + 3


async def test_tokens_are_the_answering_attempts_even_when_one_failed_before_the_commit(
        proxy: Any, caplog: pytest.LogCaptureFixture) -> None:
    """`fast` sends the whole stream in one write: its error event comes in the first read,
    before the commit point, so the attempt fails as an HTTP error (529) and a fallback may
    serve. The record's tokens are the attempt whose outcome is the answer's: that one's
    reported prompt when it is the last, never a failed earlier attempt's (README)."""
    caplog.set_level(logging.INFO)
    client = await proxy(make_config({"mock": {"type": "mock", "default_model": "fast"},
                                      "mock2": {"type": "mock", "default_model": "fast"}},
                                     default="mock"))
    failing = {"provider": "mock", "override_params": {"model": "fast:error_after=3"}}

    async def call(*then: dict[str, Any]) -> int:
        config = {"strategy": {"mode": "fallback"}, "targets": [failing, *then]}
        resp = await client.post("/v1/chat/completions", headers={
            "x-portkey-config": orjson.dumps(config).decode()}, json={
            "stream": True, "messages": USER})
        await resp.read()
        return resp.status

    assert await call() == 529
    assert await call({"provider": "mock2", "override_params": {"model": "fast:tokens=2"}}) == 200
    assert await call({"provider": "mock2", "override_params": {"model": "fast:status=503"}}) \
        == 503
    failed, served, failed_twice = access_lines(caplog)
    assert failed["prompt_tokens"] >= 1 and failed["completion_tokens"] == 1
    assert failed["tokens_partial"] is True and failed["error_code"] == "overloaded_error"
    assert (served["completion_tokens"], served["tokens_partial"]) == (2, False)
    assert served["prompt_tokens"] == failed["prompt_tokens"]  # mock2's own count, not a sum
    assert failed_twice["fallbacks"] == 1
    assert (failed_twice["prompt_tokens"], failed_twice["tokens_partial"]) == (None, False)


async def test_a_client_that_leaves_mid_stream_logs_the_tokens_reported_so_far(
        proxy: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    client = await proxy(mock_config())
    resp = await client.post("/v1/chat/completions", json={
        "model": "slow", "stream": True, "messages": USER})
    await resp.content.readany()  # the first delta, then gone
    resp.close()
    for _ in range(200):  # bounded: the handler's cancellation lands within a few loop turns
        if access_lines(caplog):
            break
        await asyncio.sleep(0.01)
    [line] = access_lines(caplog)
    assert line["client_disconnected"] is True and line["status"] == 200
    assert line["prompt_tokens"] >= 1 and line["tokens_partial"] is True


async def test_a_kept_alive_stream_logs_every_byte_it_sent(
        proxy: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Keep-alive comments commit a 200: what follows them, an answer or the error frame of
    a stream that never opened, is counted with them (the error frame was counted as 0)."""
    caplog.set_level(logging.INFO)
    client = await proxy(mock_config(server={"keepalive_interval": 0.1}))
    sent = "streamproxy_response_body_bytes_total"
    before = metric_value(sent, {"provider": "mock"})
    bodies = []
    for model in ("fast:stall_ms=350,status=500", "fast:stall_ms=350,tokens=2"):
        resp = await client.post("/v1/chat/completions", json={
            "model": model, "stream": True, "messages": USER})
        bodies.append(await resp.read())
        assert resp.status == 200 and bodies[-1].startswith(b": keep-alive\n\n")
    failed, answered = access_lines(caplog)
    assert failed["error_code"] == "api_error"
    assert failed["bytes_out"] == len(bodies[0])
    assert answered["finish_reason"] == "stop"
    assert answered["bytes_out"] == len(bodies[1])
    assert metric_value(sent, {"provider": "mock"}) \
        == before + len(bodies[0]) + len(bodies[1])


async def test_a_refused_body_still_logs_its_stream_flag_and_metadata(
        proxy: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    client = await proxy(mock_config())
    before = metric_value("streamproxy_requests_total", {
        "provider": "", "model": "", "status": "400", "stream": "true"})
    resp = await client.post("/v1/chat/completions", headers={
        "x-portkey-metadata": '{"team": "blue"}'}, json={
        "model": "fast", "stream": True, "n": 0, "messages": USER})
    assert resp.status == 400
    answer = await resp.read()
    await client.post("/v1/chat/completions", data=b"{nope")
    refused, unparsed = access_lines(caplog)
    assert (refused["status"], refused["stream"]) == (400, True)
    assert refused["bytes_out"] == len(answer)  # the error's JSON body is what was sent
    assert refused["metadata"] == {"team": "blue"}
    assert unparsed["stream"] is None  # (unknown: the test below)
    assert metric_value("streamproxy_requests_total", {
        "provider": "", "model": "", "status": "400", "stream": "true"}) == before + 1


@pytest.mark.parametrize("front_kind", front.FRONTS)
async def test_a_body_refused_as_too_large_still_logs_its_metadata(
        proxy: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
        front_kind: str) -> None:
    # Only a body refused by validation carried it: a 413's line (refused before the body
    # was parsed) had none, though the docs promise it whenever the client sent it.
    monkeypatch.setenv(front.FRONT_ENV, front_kind)
    caplog.set_level(logging.INFO)
    client = await proxy(mock_config(server={"max_body_bytes": 2000}))
    resp = await client.post("/v1/chat/completions", headers={
        "x-portkey-metadata": '{"team": "blue"}'}, json={
        "model": "fast", "messages": [{"role": "user", "content": "x" * 5000}]})
    assert resp.status == 413
    await resp.read()
    [line] = access_lines(caplog)
    assert (line["status"], line["metadata"]) == (413, {"team": "blue"})


@pytest.mark.parametrize("body", [b"{nope", b"[]", b'"stream"', b""])
@pytest.mark.parametrize("front_kind", front.FRONTS)
async def test_a_body_that_is_no_json_object_logs_an_unknown_stream_flag(
        proxy: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
        front_kind: str, body: bytes) -> None:
    """Whether its client asked to stream is unknown: it was logged `stream: false` and
    counted stream="false" (a dashboard's non-streamed error rate took it in); null and "",
    as for a request refused before its body was read."""
    monkeypatch.setenv(front.FRONT_ENV, front_kind)
    caplog.set_level(logging.INFO)
    client = await proxy(mock_config())
    labels = {"provider": "", "model": "", "status": "400"}

    def counts() -> dict[str, float]:
        return {s: metric_value("streamproxy_requests_total", {**labels, "stream": s})
                for s in ("", "false")}

    before = counts()
    resp = await client.post("/v1/chat/completions", data=body,
                             headers={"content-type": "application/json"})
    assert resp.status == 400
    (line,) = access_lines(caplog)
    assert (line["stream"], line["provider"]) == (None, None)
    assert counts() == {"": before[""] + 1, "false": before["false"]}


async def test_a_chat_request_over_the_header_limits_is_logged_and_counted(
        proxy: Any, caplog: pytest.LogCaptureFixture) -> None:
    """The 431 of the header limits is a chat request's answer, logged and counted as a 413
    is (it had neither a line nor a count); another route's 431 is not a chat request."""
    caplog.set_level(logging.INFO)
    client = await proxy(mock_config(server={"max_headers": 20}))
    labels = {"provider": "", "model": "", "status": "431", "stream": ""}
    before = metric_value("streamproxy_requests_total", labels)
    headers = {f"x-extra-{i}": "1" for i in range(30)}
    resp = await client.post("/v1/chat/completions", headers={
        **headers, "x-portkey-trace-id": "trace-431"}, json={"messages": USER})
    answer = await resp.read()
    assert resp.status == 431
    assert (await client.get("/v1/models", headers=headers)).status == 431
    [line] = access_lines(caplog)
    assert (line["status"], line["trace_id"]) == (431, "trace-431")
    assert line["error_code"] == "request_header_fields_too_large"
    assert line["bytes_out"] == len(answer)
    assert resp.headers["x-request-id"] == "trace-431"
    assert metric_value("streamproxy_requests_total", labels) == before + 1


async def test_bodies_only_when_opted_in(proxy: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    client = await proxy(mock_config(logging={"log_bodies": True}))
    await (await client.post("/v1/chat/completions", data=b'{\n "model": "fast:tokens=2",\n'
                             b' "messages": [{"role": "user", "content": "hi"}]\n}')).read()
    await (await client.post("/v1/chat/completions", data=b"{broken")).read()
    good, broken = access_lines(caplog)
    assert good["request_body"] == {"model": "fast:tokens=2",
                                    "messages": [{"role": "user", "content": "hi"}]}
    assert broken["request_body"] == "{broken"
    assert all("\n" not in r.getMessage() for r in caplog.records)


async def test_access_log_can_be_switched_off(proxy: Any,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    client = await proxy(mock_config(logging={"access_log": False}))
    await (await client.post("/v1/chat/completions", json={"model": "fast:tokens=1",
                                                           "messages": USER})).read()
    assert access_lines(caplog) == []


async def test_no_secret_in_any_log_metric_or_response(
        proxy: Any, upstream: Any, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys of every origin — configured provider key, proxy keys, the client's own provider
    key, a wrong proxy key — never reach a log line, /metrics or an error message."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("SECRET_PROXY_KEY_ENV", "proxy-SECRET-from-env-0001")
    secrets = ["sk-upstream-SECRET-0002", "proxy-SECRET-inline-0003", "sk-client-SECRET-0004",
               "proxy-WRONG-SECRET-0005", "proxy-SECRET-from-env-0001"]
    upstream.status = 401
    upstream.content_type = "application/json"
    upstream.body = b'{"error": {"message": "bad key", "type": "invalid_request_error"}}'
    config = make_config({
        "keyed": {"type": "openai", "base_url": upstream.url, "api_key": secrets[0],
                  "default_model": "m"},
        "clientkey": {"type": "openai", "base_url": upstream.url, "default_model": "m"},
        "mock": {"type": "mock", "default_model": "fast"},
    }, default="mock", auth={"keys": [
        {"name": "inline", "key": secrets[1]},
        {"name": "from-env", "key_env": "SECRET_PROXY_KEY_ENV"}]},
        logging={"access_log": True})
    client = await proxy(config)
    bodies = []

    async def call(headers: dict[str, str], **json: Any) -> None:
        resp = await client.post("/v1/chat/completions", headers=headers,
                                 json={"messages": USER, **json})
        bodies.append(await resp.read())

    await call({"authorization": f"Bearer {secrets[1]}"}, model="mock/fast:tokens=3",
               stream=True)
    await call({"x-portkey-api-key": secrets[4], "authorization": f"Bearer {secrets[2]}"},
               model="clientkey/m")
    await call({"authorization": f"Bearer {secrets[1]}"}, model="keyed/m", stream=True)
    await call({"authorization": f"Bearer {secrets[3]}"}, model="mock/fast")
    await call({"x-portkey-api-key": secrets[3]}, model="mock/fast")
    metrics_text = await (await client.get(
        "/metrics", headers={"authorization": f"Bearer {secrets[1]}"})).text()

    # The requests did reach the upstream with the right keys...
    sent = [{k.lower(): v for k, v in r.headers.items()}.get("authorization")
            for r in upstream.requests]
    assert sent == [f"Bearer {secrets[2]}", f"Bearer {secrets[0]}"]
    # ...and no key appears anywhere we write.
    lines = access_lines(caplog)
    assert len(lines) == 5
    assert {line["auth_key"] for line in lines} == {"inline", "from-env", None}
    everything = "\n".join([r.getMessage() for r in caplog.records]
                           + [caplog.text, metrics_text] + [b.decode() for b in bodies])
    for secret in secrets:
        assert secret not in everything
        assert secret[-8:] not in everything


@pytest.mark.parametrize("stream", [True, False])
async def test_a_key_the_upstream_echoes_in_its_error_is_masked(proxy: Any, upstream: Any,
                                                                stream: bool) -> None:
    secret = "sk-upstream-SECRET-0002-abcdef"
    upstream.status = 401
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps({"error": {
        "message": f"Incorrect API key provided: Bearer {secret}.", "type": "invalid_request_error",
        "code": "invalid_api_key"}})
    client = await proxy(make_config({"keyed": {
        "type": "openai", "base_url": upstream.url, "api_key": secret, "default_model": "m"}},
        default="keyed"))
    resp = await client.post("/v1/chat/completions", json={"messages": USER, "stream": stream})
    error = (await resp.json())["error"]
    assert resp.status == 401 and secret not in error["message"]
    assert error["message"] == "Incorrect API key provided: Bearer …cdef."


def test_entry_of_a_rejected_request_is_complete() -> None:
    r = RequestRecord(trace_id="t", status=401, error_type="authentication_error",
                      error_code="invalid_api_key")
    r.finished = r.started
    entry = access_entry(r, now=0.0)
    assert set(entry) == FIELDS
    assert entry["ts"] == "1970-01-01T00:00:00.000Z"
    assert entry["provider"] is None and entry["duration_ms"] == 0.0


async def test_a_clients_huge_model_name_does_not_make_a_huge_line(
        proxy: Any, caplog: pytest.LogCaptureFixture) -> None:
    """The model is the client's (the body's), as long as the body may be: a 200,000-character
    name made a 200 KB access line per request (and, past the pipe's 4 KiB, lines several
    workers write to one stdout interleave). Cut as the metrics' label is, its digest kept:
    two such names stay apart; a real model id is logged whole."""
    caplog.set_level(logging.INFO)
    client = await proxy(mock_config())
    for model in ("fast" + "x" * 200_000, "fast" + "x" * 199_999 + "y", "fast:tokens=2"):
        resp = await client.post("/v1/chat/completions", json={"model": model,
                                                              "messages": USER})
        assert resp.status == 200
        await resp.read()
    raw = [r.getMessage() for r in caplog.records if r.name == ACCESS_LOGGER.name]
    assert all(len(line) < 2000 for line in raw)
    first, second, plain = access_lines(caplog)
    assert first["model"].startswith("fastxxx") and first["model"] != second["model"]
    assert plain["model"] == "fast:tokens=2"


def test_logging_section_is_validated() -> None:
    assert parse_logging(mock_config()).log_bodies is False
    assert parse_logging(mock_config(logging={"log_bodies": True})).log_bodies is True
    for bad, key in (({"log_bodies": "yes"}, "logging.log_bodies"),
                     ({"level": "debug"}, "logging.level"), ([1], "logging")):
        with pytest.raises(ConfigError) as e:
            parse_logging(mock_config(logging=bad))
        assert e.value.key == key


def test_log_level_from_config_or_env(monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config({"mock": {"type": "mock"}}, server={"log_level": "warning"})
    monkeypatch.delenv("STREAMPROXY_LOG_LEVEL", raising=False)
    assert log_level(config) == "warning"
    monkeypatch.setenv("STREAMPROXY_LOG_LEVEL", "DEBUG")
    assert log_level(config) == "debug"
    monkeypatch.setenv("STREAMPROXY_LOG_LEVEL", "loud")
    with pytest.raises(ConfigError, match="STREAMPROXY_LOG_LEVEL"):
        log_level(config)


def test_configure_logging_sends_access_lines_to_stdout_whatever_the_level(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("STREAMPROXY_LOG_LEVEL", "error")
    saved = (ACCESS_LOGGER.handlers[:], ACCESS_LOGGER.propagate, ACCESS_LOGGER.level)
    root = logging.getLogger()
    root_saved = (root.handlers[:], root.level)
    try:
        root.handlers[:] = []
        configure_logging(mock_config())
        assert root.level == logging.ERROR
        ACCESS_LOGGER.info('{"trace_id":"x"}')
        logging.getLogger("streamproxy.test").info("hidden at level error")
        out, err = capsys.readouterr()
        assert out.strip() == '{"trace_id":"x"}'
        assert "hidden" not in err
    finally:
        ACCESS_LOGGER.handlers[:], ACCESS_LOGGER.propagate, _ = saved
        ACCESS_LOGGER.setLevel(saved[2])
        root.handlers[:] = root_saved[0]
        root.setLevel(root_saved[1])


def test_a_refused_oversized_header_is_logged_without_its_content() -> None:
    from aiohttp.http_exceptions import LineTooLong

    try:
        raise LineTooLong(b"Bearer sk-SECRET-in-a-huge-header", "8190")
    except LineTooLong as e:
        exc_info = (type(e), e, e.__traceback__)
    record = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1,
                               "Error handling request", (), exc_info)
    assert ParserErrorFilter().filter(record)
    text = logging.Formatter().format(record)
    assert "SECRET" not in text and "LineTooLong" in text and "400" in text


def test_under_serve_access_lines_skip_the_log_record_unless_something_else_listens(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    saved = (ACCESS_LOGGER.handlers[:], ACCESS_LOGGER.propagate, ACCESS_LOGGER.level)
    root = logging.getLogger()
    root_saved = (root.handlers[:], root.level)
    seen: list[str] = []

    def remember(record: logging.LogRecord) -> bool:
        seen.append(record.getMessage())
        return True

    try:
        root.handlers[:] = []
        configure_logging(mock_config())
        with monkeypatch.context() as m:  # the direct path never builds a LogRecord
            m.setattr(ACCESS_LOGGER, "makeRecord", lambda *a, **k: pytest.fail("LogRecord"))
            AccessLog()(RequestRecord(trace_id="direct-1", status=200))
        ACCESS_LOGGER.addFilter(remember)  # someone listens: the line goes through logging
        AccessLog()(RequestRecord(trace_id="filtered-2", status=200))
        ACCESS_LOGGER.removeFilter(remember)
        lines = [orjson.loads(x) for x in capsys.readouterr().out.splitlines()]
        assert [x["trace_id"] for x in lines] == ["direct-1", "filtered-2"]
        assert lines[0].keys() == lines[1].keys() and lines[0]["status"] == 200
        assert len(seen) == 1 and orjson.loads(seen[0])["trace_id"] == "filtered-2"
    finally:
        ACCESS_LOGGER.handlers[:], ACCESS_LOGGER.propagate, _ = saved
        ACCESS_LOGGER.setLevel(saved[2])
        root.handlers[:] = root_saved[0]
        root.setLevel(root_saved[1])


@settings(max_examples=2000, deadline=None)
@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
@example(1561545594.1459997)  # rounds up to the next millisecond, as datetime does
@example(1700000000.9999996)  # rounds up to the next second
def test_timestamp_is_datetimes_isoformat(now: float) -> None:
    expected = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")
    assert timestamp(now) == expected.replace("+00:00", "Z")


def test_a_line_is_written_whole_to_a_stream_that_takes_part_of_each_write() -> None:
    # An unbuffered stdout (python -u, PYTHONUNBUFFERED) may write only part of a large line.
    from streamproxy.observe.access_log import _write_all

    class Trickle:
        def __init__(self) -> None:
            self.got = b""

        def write(self, data: memoryview) -> int:
            taken = bytes(data[:1000])
            self.got += taken
            return len(taken)

    out = Trickle()
    line = b'{"request_body":"' + b"x" * 300_000 + b'"}\n'
    _write_all(out, line)
    assert out.got == line


async def test_a_non_streamed_pass_through_answer_logs_its_finish_reason(
        proxy: Any, caplog: pytest.LogCaptureFixture) -> None:
    # The pass-through forwards the upstream's body as is; the log still reads its finish
    # reason, as it does for a translated answer and for a stream.
    caplog.set_level(logging.INFO)
    client = await proxy(make_config({"mock": {"type": "mock", "wire": "openai",
                                               "default_model": "fast"}}, default="mock"))
    for model in ("fast:tokens=3", "fast:tool_calls=1"):
        await (await client.post("/v1/chat/completions", json={
            "model": model, "messages": USER})).read()
    assert [line["finish_reason"] for line in access_lines(caplog)] == ["stop", "tool_calls"]


# A non-streamed answer whose finish means it failed (each provider's spelling, 11 + 4 tokens).
FAILED_ANSWERS = {
    "gemini": {"candidates": [{"index": 0, "finishReason": "MALFORMED_FUNCTION_CALL"}],
               "usageMetadata": {"promptTokenCount": 11, "candidatesTokenCount": 4,
                                 "totalTokenCount": 15}},
    "bedrock": {"output": {"message": {"role": "assistant", "content": []}},
                "stopReason": "malformed_model_output",
                "usage": {"inputTokens": 11, "outputTokens": 4, "totalTokens": 15}},
    "cohere": {"id": "t", "finish_reason": "ERROR", "message": {"role": "assistant",
                                                                "content": []},
               "usage": {"tokens": {"input_tokens": 11, "output_tokens": 4}}},
    "mistral": {"id": "x", "object": "chat.completion", "created": 1, "model": "m",
                "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15},
                "choices": [{"index": 0, "finish_reason": "error",
                             "message": {"role": "assistant", "content": ""}}]},
}


@pytest.mark.parametrize("kind", sorted(FAILED_ANSWERS))
async def test_a_non_streamed_answer_made_an_error_still_logs_its_tokens(
        kind: str, proxy: Any, upstream: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps(FAILED_ANSWERS[kind])
    extra = {"region": "us-east-1"} if kind == "bedrock" else {}
    client = await proxy(provider_config(kind, upstream.url, **extra))
    resp = await client.post("/v1/chat/completions", json={"model": "m", "messages": USER})
    assert resp.status >= 500 and (await resp.json())["error"]["code"]
    line = access_lines(caplog)[-1]
    assert (line["status"], line["prompt_tokens"], line["completion_tokens"]) == (
        resp.status, 11, 4)



# An answer that says "Hi" with no usage at all (Anthropic- and Gemini-compatible servers,
# a Cohere-compatible one): each provider's non-streamed shape, and Gemini's stream.
UNCOUNTED_ANSWERS = {
    "anthropic": {"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
                  "content": [{"type": "text", "text": "Hi"}], "stop_reason": "end_turn"},
    "gemini": {"candidates": [{"index": 0, "finishReason": "STOP", "content": {
        "role": "model", "parts": [{"text": "Hi"}]}}]},
    "cohere": {"id": "t", "finish_reason": "COMPLETE", "message": {
        "role": "assistant", "content": [{"type": "text", "text": "Hi"}]}},
}
NO_TOKENS = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


@pytest.mark.parametrize("kind", sorted(UNCOUNTED_ANSWERS))
async def test_an_answer_without_usage_gives_the_client_zeros_and_logs_none(
        kind: str, proxy: Any, upstream: Any, caplog: pytest.LogCaptureFixture) -> None:
    # OpenAI's non-streamed completion always has usage (clients read usage.total_tokens);
    # the log says the provider reported none (null), not 0.
    caplog.set_level(logging.INFO)
    upstream.content_type = "application/json"
    upstream.body = orjson.dumps(UNCOUNTED_ANSWERS[kind])
    client = await proxy(provider_config(kind, upstream.url))
    resp = await client.post("/v1/chat/completions", json={"model": "m", "messages": USER})
    body = await resp.json()
    assert body["choices"][0]["message"]["content"] == "Hi"
    assert body["usage"] == NO_TOKENS
    line = access_lines(caplog)[-1]
    assert (line["prompt_tokens"], line["completion_tokens"]) == (None, None)


async def test_a_stream_without_usage_gives_its_usage_chunk_zeros_and_logs_none(
        proxy: Any, upstream: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    upstream.body = b"data: " + orjson.dumps(UNCOUNTED_ANSWERS["gemini"]) + b"\r\n\r\n"
    client = await proxy(provider_config("gemini", upstream.url))
    resp = await client.post("/v1/chat/completions", json={
        "model": "m", "messages": USER, "stream": True,
        "stream_options": {"include_usage": True}})
    c = collect(sse_chunks(await resp.read()))
    assert c.content == "Hi" and c.done
    assert c.usage == NO_TOKENS
    line = access_lines(caplog)[-1]
    assert (line["prompt_tokens"], line["completion_tokens"]) == (None, None)

async def test_a_client_gone_as_its_whole_answer_is_written_is_logged_disconnected(
        proxy: Any, caplog: pytest.LogCaptureFixture, monkeypatch: Any) -> None:
    """The lean front: the client's reset comes in the loop turn the upstream's answer does
    (the transport is closing, its connection_lost not yet run): the reply cannot be written.
    It was logged as a 200 sent in full, unlike a stream's client that leaves."""
    from streamproxy.routing.executor import Executor
    from streamproxy.server import front

    monkeypatch.setenv(front.FRONT_ENV, "lean")
    caplog.set_level(logging.INFO)
    client = await proxy(mock_config())
    complete = Executor.complete

    async def complete_as_the_client_resets(self: Any, *args: Any) -> bytes:
        body = await complete(self, *args)
        for conn in client.server.runner.server.connections:
            conn.transport.abort()  # the reset, read by the loop: connection_lost comes next
        return body

    monkeypatch.setattr(Executor, "complete", complete_as_the_client_resets)
    with pytest.raises(Exception):  # noqa: B017 (the client sees its connection reset)
        await client.post("/v1/chat/completions", json={"model": "fast", "messages": USER})
    for _ in range(200):  # bounded
        if access_lines(caplog):
            break
        await asyncio.sleep(0.01)
    [line] = access_lines(caplog)
    assert (line["status"], line["client_disconnected"]) == (200, True)


@pytest.mark.parametrize("written", ["a comment", "the error frame"])
async def test_a_client_gone_as_a_kept_alive_stream_writes_is_logged_disconnected(
        written: str, proxy: Any, caplog: pytest.LogCaptureFixture, monkeypatch: Any) -> None:
    """Keep-alive comments committed the stream; the client's reset is read as the next
    comment, or the error frame of the upstream's failure, is about to be written (the
    transport is closing, its connection_lost, which cancels the handler, a loop turn away).
    It was an unhandled error: a 500 and a traceback, where a relayed stream's client that
    leaves is logged disconnected."""
    from streamproxy.server import front

    monkeypatch.setenv(front.FRONT_ENV, "lean")
    caplog.set_level(logging.INFO)
    client = await proxy(mock_config(server={"keepalive_interval": 0.05}))
    write, writes = front.LeanEvents.write, []

    async def write_as_the_client_resets(self: Any, data: bytes) -> None:
        writes.append(data)
        if (written == "a comment" and len(writes) == 2) or data.startswith(b"data: {"):
            for conn in client.server.runner.server.connections:
                conn.transport.abort()  # the reset, read by the loop: connection_lost next
        await write(self, data)

    monkeypatch.setattr(front.LeanEvents, "write", write_as_the_client_resets)
    with contextlib.suppress(Exception):  # the client sees its connection reset
        resp = await client.post("/v1/chat/completions", json={
            "model": "fast:status=503,stall_ms=200", "stream": True, "messages": USER})
        await resp.read()
    for _ in range(200):  # bounded
        if access_lines(caplog):
            break
        await asyncio.sleep(0.01)
    [line] = access_lines(caplog)
    assert (line["status"], line["client_disconnected"]) == (200, True)
    assert not [r for r in caplog.records if r.name == "streamproxy.server"]


async def test_a_request_refused_before_it_was_sent_upstream_counts_no_attempt(
        proxy: Any, access_log: Any) -> None:
    """`attempts` is the upstream requests sent: a target that refuses the request itself (a
    provider that takes function tools only, given a custom tool) sends none. Each such
    target counted one, so the line of a request that never left the proxy read 1 (2 after a
    fallback to a second such target)."""
    client = await proxy(make_config({"mock": {"type": "mock", "default_model": "fast"},
                                      "mock2": {"type": "mock", "default_model": "fast"}},
                                     default="mock"))
    body = {"model": "fast", "stream": True, "messages": USER,
            "tools": [{"type": "custom", "custom": {"name": "grep"}}]}
    resp = await client.post("/v1/chat/completions", json=body)
    assert resp.status == 400
    line = access_log()[-1]
    assert (line["provider"], line["error_code"], line["attempts"]) == ("mock",
                                                                        "unsupported_value", 0)
    config = {"strategy": {"mode": "fallback"},
              "targets": [{"provider": "mock"}, {"provider": "mock2"}]}
    resp = await client.post("/v1/chat/completions", json=body,
                             headers={"x-portkey-config": orjson.dumps(config).decode()})
    assert resp.status == 400
    line = access_log()[-1]
    assert (line["provider"], line["fallbacks"], line["attempts"]) == ("mock2", 1, 0)


async def test_a_gemini_stream_that_ends_with_a_failed_finish_logs_its_final_tokens(
        proxy: Any, upstream: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A failed finish (MALFORMED_FUNCTION_CALL, after text was sent) ends the stream with an
    error frame, but its chunk carries the answer's last usage snapshot: the count it cost,
    final, not one taken before a failure (docs/operations.md, `tokens_partial`)."""
    caplog.set_level(logging.INFO)

    def element(candidate: dict[str, Any], output: int) -> bytes:
        return b"data: " + orjson.dumps({"candidates": [candidate], "usageMetadata": {
            "promptTokenCount": 11, "candidatesTokenCount": output,
            "totalTokenCount": 11 + output}}) + b"\r\n\r\n"

    text = {"index": 0, "content": {"role": "model", "parts": [{"text": "Let me call it"}]}}
    upstream.pieces = [element(text, 3),
                       element({"index": 0, "finishReason": "MALFORMED_FUNCTION_CALL"}, 9)]
    upstream.piece_delay = 0.05  # the text is committed first: the failure is the stream's
    client = await proxy(provider_config("gemini", upstream.url))
    resp = await client.post("/v1/chat/completions", json={"model": "m", "stream": True,
                                                           "messages": USER})
    c = collect(sse_chunks(await resp.read()))
    assert resp.status == 200 and c.error is not None and c.error["code"] == \
        "malformed_function_call"
    line = access_lines(caplog)[-1]
    assert (line["error_code"], line["prompt_tokens"], line["completion_tokens"],
            line["tokens_partial"]) == ("malformed_function_call", 11, 9, False)


@pytest.mark.parametrize("kind", ["openai", "vllm"])
async def test_a_pass_through_stream_with_running_usage_that_fails_logs_it_partial(
        kind: str, proxy: Any, upstream: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A server that puts usage on every chunk (vLLM's `continuous_usage_stats`, asked by the
    client or not) and then fails: the last count came before the failure, a running one,
    not the answer's final count. A stream that ends after its finish keeps its last count
    as final."""
    caplog.set_level(logging.INFO)

    def event(delta: dict[str, Any], output: int, finish: str | None = None) -> bytes:
        return b"data: " + orjson.dumps({
            "id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            "usage": {"prompt_tokens": 5, "completion_tokens": output,
                      "total_tokens": 5 + output}}) + b"\n\n"

    head = event({"role": "assistant", "content": "Hel"}, 1) + event({"content": "lo"}, 2)
    failure = b'data: {"error": {"message": "The model crashed", "code": 500}}\n\n'
    client = await proxy(provider_config(kind, upstream.url))
    body = {"model": "m", "stream": True, "messages": USER,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    for tail in (failure, event({}, 3, "stop") + b"data: [DONE]\n\n"):
        upstream.pieces, upstream.piece_delay = [head, tail], 0.05  # (committed, then the tail)
        c = collect(sse_chunks(await (await client.post("/v1/chat/completions",
                                                         json=body)).read()))
        assert c.content == "Hello"
    failed, complete = access_lines(caplog)
    assert failed["error_code"] is not None and failed["completion_tokens"] == 2
    assert failed["tokens_partial"] is True
    assert (complete["error_code"], complete["completion_tokens"],
            complete["tokens_partial"]) == (None, 3, False)


async def test_a_pass_through_stream_whose_finish_failed_logs_its_final_usage(
        proxy: Any, upstream: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Mistral's finish_reason "error" ends the stream with an error frame; the usage on its
    finish chunk is the answer's final count."""
    caplog.set_level(logging.INFO)
    text = (b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
            b'"choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},'
            b'"finish_reason":null}]}\n\n')
    failed = (b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
              b'"choices":[{"index":0,"delta":{"content":""},"finish_reason":"error"}],'
              b'"usage":{"prompt_tokens":5,"completion_tokens":4,"total_tokens":9}}\n\n')
    upstream.pieces, upstream.piece_delay = [text, failed], 0.05
    client = await proxy(provider_config("mistral", upstream.url))
    c = collect(sse_chunks(await (await client.post("/v1/chat/completions", json={
        "model": "m", "stream": True, "messages": USER})).read()))
    assert c.content == "Hi" and c.error is not None
    line = access_lines(caplog)[-1]
    assert (line["completion_tokens"], line["tokens_partial"]) == (4, False)


@pytest.mark.parametrize("stream", [True, False])
async def test_metadata_nested_past_the_json_depth_is_refused_and_still_logged(
        proxy: Any, caplog: pytest.LogCaptureFixture, stream: bool) -> None:
    # Was accepted (the body's depth limit never read the header), and orjson cannot write
    # it back (255 levels at most): the request's access-log line was lost, with an error
    # and a traceback in its place, for any client that sent one.
    caplog.set_level(logging.INFO)
    client = await proxy(mock_config())
    deep = '{"team": ' + "[" * 300 + "]" * 300 + "}"
    resp = await client.post("/v1/chat/completions", headers={
        "x-portkey-trace-id": "trace-deep", "x-portkey-metadata": deep},
        json={"model": "fast:tokens=2", "stream": stream, "messages": USER})
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == "x-portkey-metadata"
    [line] = access_lines(caplog)
    assert (line["trace_id"], line["status"]) == ("trace-deep", 400)
    within = '{"team": ' + "[" * 8 + "]" * 8 + "}"  # (as deep as the body may be: served)
    resp = await client.post("/v1/chat/completions", headers={"x-portkey-metadata": within},
                             json={"model": "fast:tokens=2", "messages": USER})
    assert resp.status == 200
    assert access_lines(caplog)[-1]["metadata"] == orjson.loads(within)


def test_a_body_nested_past_what_orjson_writes_is_logged_as_sent() -> None:
    # Refused (json_too_deep) but read back by orjson (1024 levels), which cannot write it
    # (255): the line of exactly that hostile request was lost, an error in its place.
    deep = b'{"messages": ' + b"[" * 300 + b"]" * 300 + b"}"
    r = RequestRecord(trace_id="t-deep", status=400, error_type="invalid_request_error",
                      error_code="json_too_deep", request_body=deep)
    r.finished = r.started
    lines: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger("test.access.deep")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(Capture())
    AccessLog(logger)(r)
    [line] = [orjson.loads(s) for s in lines]
    assert (line["trace_id"], line["error_code"]) == ("t-deep", "json_too_deep")
    assert line["request_body"] == deep.decode()
