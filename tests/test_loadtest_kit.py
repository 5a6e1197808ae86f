"""The locust kit: its runner reads run times in locust's own forms (`make loadtest`'s
LOADTEST_TIME), so a value locust takes is never a crash before locust starts; its streaming
user counts each failure once and reports the figures loadtests/README.md describes."""

from __future__ import annotations

import http.server
import importlib.util
import json
import re
import sys
import threading
import types
from pathlib import Path
from typing import Any

import pytest

_spec = importlib.util.spec_from_file_location(
    "loadtest_run", Path(__file__).parent.parent / "loadtests" / "run.py")
assert _spec is not None and _spec.loader is not None
run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run)


@pytest.mark.parametrize(("spec", "seconds"), [
    ("30", 30), ("30s", 30), ("2m", 120), ("1m30s", 90), ("1h30m", 5400), ("1h20m30s", 4830)])
def test_run_times_in_locusts_forms(spec: str, seconds: float) -> None:
    assert run._seconds(spec) == seconds


# Locust refuses fractions and a bare number after a unit ("Invalid time span format").
@pytest.mark.parametrize("spec", ["", "abc", "1x", "m", "1.5m", "1h30", "30 s"])
def test_what_is_no_run_time_is_said(spec: str) -> None:
    with pytest.raises(ValueError, match="not a run time"):
        run._seconds(spec)


def test_a_bad_run_time_stops_the_runner_before_the_proxy_starts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOADTEST_TIME", "1.5m")
    monkeypatch.setattr(run.subprocess, "Popen", lambda *a, **kw: pytest.fail("proxy started"))
    with pytest.raises(SystemExit, match="LOADTEST_TIME: not a run time"):
        run.main()


# Locust reads a run time of 0 as none: the run went on until the runner killed locust a
# minute later ("locust did not finish in time"), without its tables.
@pytest.mark.parametrize("spec", ["0", "0s", "0h0m"])
def test_a_run_time_of_zero_stops_the_runner_before_the_proxy_starts(
        monkeypatch: pytest.MonkeyPatch, spec: str) -> None:
    monkeypatch.setenv("LOADTEST_TIME", spec)
    monkeypatch.setattr(run.subprocess, "Popen", lambda *a, **kw: pytest.fail("proxy started"))
    with pytest.raises(SystemExit, match=r"^LOADTEST_TIME: .*no limit"):
        run.main()


# Locust refuses these only once the proxy is up (`-u abc`: an argparse error, `-u 0`: a
# spawn rate that "must be > 0"), and int() refused a bad port with a traceback.
@pytest.mark.parametrize(("name", "value"), [
    ("LOADTEST_USERS", "abc"), ("LOADTEST_USERS", "0"), ("LOADTEST_USERS", "-3"),
    ("LOADTEST_USERS", "1.5"), ("LOADTEST_PORT", "abc"), ("LOADTEST_PORT", "0"),
    ("LOADTEST_PORT", "70000")])
def test_a_bad_user_count_or_port_stops_the_runner_before_the_proxy_starts(
        monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    monkeypatch.setattr(run.subprocess, "Popen", lambda *a, **kw: pytest.fail("proxy started"))
    with pytest.raises(SystemExit, match=f"^{name}: not .*{re.escape(repr(value))}$"):
        run.main()


def test_a_good_user_count_and_port_reach_the_proxy_and_locust(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOADTEST_USERS", " 7 ")
    monkeypatch.setenv("LOADTEST_PORT", "50577")
    started: list[list[str]] = []

    class Stop(Exception):
        pass

    def popen(args: list[str], **kw: Any) -> Any:
        started.append(args)
        raise Stop

    monkeypatch.setattr(run.subprocess, "Popen", popen)
    with pytest.raises(Stop):
        run.main()
    assert started[0][-2:] == ["--port", "50577"]


def test_the_health_check_goes_direct_whatever_http_proxy_says(
        monkeypatch: pytest.MonkeyPatch) -> None:
    class Healthy(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Healthy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # nothing listens there
    try:
        running = types.SimpleNamespace(poll=lambda: None)
        run.wait_healthy(f"http://127.0.0.1:{server.server_port}", running, timeout=3)
    finally:
        server.shutdown()
        server.server_close()


# -- the locustfile's figures -------------------------------------------------------------------
# Importing locust monkey-patches the whole process (gevent's patch_all), and it is not a test
# dependency: the locustfile is loaded against a stand-in for the four names it imports.

class _Events:
    def __init__(self) -> None:
        self.fired: list[dict[str, Any]] = []
        self.request = self

    def fire(self, **kw: Any) -> None:
        self.fired.append(kw)


def _load_locustfile(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, _Events]:
    events = _Events()
    stand_in = types.ModuleType("locust")
    stand_in.HttpUser = type("HttpUser", (), {})  # type: ignore[attr-defined]
    stand_in.constant = lambda seconds: seconds  # type: ignore[attr-defined]
    stand_in.task = lambda f: f  # type: ignore[attr-defined]
    stand_in.events = events  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "locust", stand_in)
    spec = importlib.util.spec_from_file_location(
        "loadtest_locustfile", Path(__file__).parent.parent / "loadtests" / "locustfile.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, events


class _Response:
    """What the streaming user reads of locust's catch_response context manager."""

    def __init__(self, status: int, body: bytes, error: Exception | None = None,
                 content_type: str = "text/event-stream") -> None:
        self.status_code, self.text, self.body, self.error = status, body.decode(), body, error
        self.headers = {"content-type": content_type}
        self.result: str | None = None
        self.raw = types.SimpleNamespace(chunked=True)  # urllib3's response, as the proxy frames

    def __enter__(self) -> _Response:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def failure(self, why: str) -> None:
        self.result = f"failure: {why}"

    def success(self) -> None:
        self.result = "success"

    def iter_content(self, chunk_size: int | None) -> list[bytes]:
        return [self.body]

    def close(self) -> None:
        pass


class _Stats:
    """locust's RequestStats as far as the user logs to it directly: entry by entry, so that
    the samples stay out of the Aggregated row (locust's `total`)."""

    def __init__(self) -> None:
        self.logged: list[tuple[str, str, float]] = []

    def get(self, name: str, method: str) -> Any:
        def log(response_time: float, content_length: int) -> None:
            self.logged.append((method, name, response_time))

        return types.SimpleNamespace(log=log)


def _user(locustfile: Any, stats: _Stats | None = None) -> Any:
    user = locustfile.CustomUser()
    user.environment = types.SimpleNamespace(stats=stats or _Stats())
    return user


def _run_one_stream(locustfile: Any, response: _Response) -> None:
    user = _user(locustfile)
    user.client = types.SimpleNamespace(post=lambda *a, **kw: response)
    user.body, user.headers = "{}", {}
    user.stream()


def test_a_refused_request_is_one_failure_on_its_post_row(
        monkeypatch: pytest.MonkeyPatch) -> None:
    locustfile, events = _load_locustfile(monkeypatch)
    response = _Response(429, b'{"error": {"message": "slow down"}}')
    _run_one_stream(locustfile, response)
    assert response.result is not None and response.result.startswith("failure: HTTP 429")
    assert events.fired == []  # no `stream` row failure (nor sample) on top of it


def _sse(*chunks: dict[str, Any] | str) -> list[bytes]:
    return [b"data: " + (c.encode() if isinstance(c, str) else json.dumps(c).encode()) + b"\n\n"
            for c in chunks]


def _content(text: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text}}]}


def _usage(completion: int, **details: int) -> dict[str, Any]:
    usage: dict[str, Any] = {"prompt_tokens": 5, "completion_tokens": completion}
    if details:
        usage["completion_tokens_details"] = details
    return {"choices": [], "usage": usage}


def _figures(monkeypatch: pytest.MonkeyPatch, timed: list[tuple[float, bytes]],
             ended: float) -> dict[str, list[float]]:
    """The samples one stream reports, by row: events fed at the given seconds after send."""
    locustfile, events = _load_locustfile(monkeypatch)
    reader = locustfile.StreamReader(0.0)
    for at, data in timed:
        reader.feed(data, at)
    stats = _Stats()
    _user(locustfile, stats).report("s", reader, ended)
    rows: dict[str, list[float]] = {}
    for sample in events.fired:
        rows.setdefault(sample["name"].removeprefix("s "), []).append(sample["response_time"])
    for method, name, value in stats.logged:
        assert method == "STREAM"
        rows.setdefault(name.removeprefix("s "), []).append(value)
    return rows


def test_one_token_chunks_at_a_known_pace(monkeypatch: pytest.MonkeyPatch) -> None:
    role = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    stream = _sse(role, *(_content(w) for w in "abcde"), _usage(5), "[DONE]")
    timed = [(0.05, stream[0]), *((0.2 + 0.1 * i, d) for i, d in enumerate(stream[1:6])),
             (0.65, stream[6] + stream[7])]
    rows = _figures(monkeypatch, timed, 0.7)
    assert rows["TTFT"] == [pytest.approx(200)]  # the first content, not the role chunk
    assert rows["inter-token"] == [pytest.approx(100)] * 4
    assert rows["stream"] == [pytest.approx(700)]
    assert rows["tokens/s"] == [pytest.approx(10)]  # 4 tokens in the 0.4 s after the first


def test_tokens_per_second_with_several_tokens_a_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    # Gemini and Bedrock send several tokens a chunk: three of four each, 0.2 s apart. The
    # first chunk's four arrived when the clock started: 8 tokens in 0.4 s.
    stream = _sse(*(_content("four tokens here .") for _ in range(3)), _usage(12), "[DONE]")
    timed = [(0.1, stream[0]), (0.3, stream[1]), (0.5, stream[2] + stream[3] + stream[4])]
    assert _figures(monkeypatch, timed, 0.5)["tokens/s"] == [pytest.approx(20)]


def test_tokens_per_second_without_the_reasoning_kept_hidden(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # o-series/gpt-5 and Gemini's thinking: 100 reasoning tokens in completion_tokens, generated
    # before the first visible one; 3 visible tokens 0.2 s apart are 2 in 0.4 s.
    stream = _sse(*(_content(w) for w in "abc"), _usage(103, reasoning_tokens=100), "[DONE]")
    timed = [(1.0, stream[0]), (1.2, stream[1]), (1.4, stream[2] + stream[3] + stream[4])]
    assert _figures(monkeypatch, timed, 1.4)["tokens/s"] == [pytest.approx(5)]


def test_tokens_per_second_with_the_reasoning_streamed(monkeypatch: pytest.MonkeyPatch) -> None:
    thought = {"choices": [{"index": 0, "delta": {"reasoning_content": "hmm"}}]}
    stream = _sse(thought, thought, _content("a"), _usage(3, reasoning_tokens=2), "[DONE]")
    timed = [(0.1, stream[0]), (0.2, stream[1]), (0.3, stream[2] + stream[3] + stream[4])]
    assert _figures(monkeypatch, timed, 0.3)["tokens/s"] == [pytest.approx(10)]


def test_reasoning_under_its_pass_through_name_is_content(monkeypatch: pytest.MonkeyPatch) -> None:
    # OpenRouter, Groq and vLLM stream `delta.reasoning`; the proxy passes it through as is.
    thought = {"choices": [{"index": 0, "delta": {"reasoning": "hmm"}}]}
    stream = _sse(thought, thought, _content("a"), _usage(3, reasoning_tokens=2), "[DONE]")
    timed = [(0.1, stream[0]), (0.2, stream[1]), (0.3, stream[2] + stream[3] + stream[4])]
    rows = _figures(monkeypatch, timed, 0.3)
    assert rows["TTFT"] == [pytest.approx(100)]
    assert rows["tokens/s"] == [pytest.approx(10)]


def test_a_refusal_is_content_not_a_failed_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    locustfile, events = _load_locustfile(monkeypatch)
    refusal = {"choices": [{"index": 0, "delta": {"refusal": "I can't help with that."}}]}
    _run_one_stream(locustfile, _Response(200, b"".join(_sse(refusal, "[DONE]"))))
    (stream,) = [e for e in events.fired if e["name"] == "custom stream"]
    assert stream["exception"] is None


def test_no_response_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    locustfile, _ = _load_locustfile(monkeypatch)
    cause = ConnectionError("certificate verify failed: self-signed certificate")
    response = _Response(0, b"", error=cause)  # locust's answer when the request itself failed
    _run_one_stream(locustfile, response)
    assert response.result is not None and "certificate verify failed" in response.result


def test_an_internal_ca_for_an_https_host(monkeypatch: pytest.MonkeyPatch) -> None:
    # Locust's HttpUser sets trust_env = False: REQUESTS_CA_BUNDLE never reaches its client.
    locustfile, _ = _load_locustfile(monkeypatch)
    monkeypatch.setenv("SP_CA_BUNDLE", "/etc/ssl/internal-ca.pem")
    user = locustfile.CustomUser()
    user.client = types.SimpleNamespace(verify=True, base_url="http://127.0.0.1:8787")
    user.on_start()
    assert user.client.verify == "/etc/ssl/internal-ca.pem"


class _PausingServer(http.server.BaseHTTPRequestHandler):
    """A chunked event stream of `parts()`, pausing at a None until released (bounded)."""
    protocol_version = "HTTP/1.1"
    release = threading.Event()

    def parts(self) -> tuple[bytes | None, ...]:
        raise NotImplementedError

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for part in self.parts():
            if part is None:
                self.release.wait(10)
                continue
            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.flush()

    def log_message(self, *args: Any) -> None:
        pass


class _StallingServer(_PausingServer):
    """200 and the first chunk, then nothing until released (bounded), then the end."""
    release = threading.Event()

    def parts(self) -> tuple[bytes | None, ...]:
        first, rest = _sse(_content("a"))[0], b"".join(_sse(_content("b"), "[DONE]"))
        return (first, None, rest, b"")


class _RequestsClient:
    """Locust's HttpSession, as far as the streaming user uses it: requests underneath, the
    keyword arguments it is given (`timeout` among them) passed on, locust's own dropped."""

    def __init__(self, base: str) -> None:
        self.base = base

    def post(self, path: str, *, name: str, catch_response: bool, **kw: Any) -> Any:
        import requests

        resp = requests.post(self.base + path, **kw)
        resp.__class__ = type("Caught", (type(resp),), {
            "success": lambda self: None, "failure": lambda self, why: None})
        return resp


def _stream_once(locustfile: Any, handler: type[http.server.BaseHTTPRequestHandler],
                 release: threading.Event) -> None:
    """One streaming user's request against `handler` on a loopback port; `release` set at
    the end (whatever the handler waits on), then the server stopped."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        user = _user(locustfile)
        user.client = _RequestsClient(f"http://127.0.0.1:{server.server_port}")
        user.body, user.headers = "{}", {}
        user.stream()
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def test_a_stream_that_stalls_is_a_failure_not_a_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    # A hung proxy or upstream: without a client timeout the user waits on it for ever, and
    # the run reports nothing at all — no failure, exit status 0.
    monkeypatch.setenv("SP_TIMEOUT", "0.5")
    locustfile, events = _load_locustfile(monkeypatch)
    _stream_once(locustfile, _StallingServer, _StallingServer.release)
    (stream,) = [e for e in events.fired if e["name"] == "custom stream"]
    assert "timed out" in str(stream["exception"])


def test_a_timeout_that_is_no_number_is_said(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SP_TIMEOUT", "10m")
    with pytest.raises(SystemExit, match="SP_TIMEOUT"):
        _load_locustfile(monkeypatch)


# Locust groups failures by their text: OpenAI's rate-limit message holds the counts and the
# wait of that moment, and one row per failure would bury how many 429s the run had.
_RATE_LIMITED = ("Rate limit reached for gpt-4o-mini in organization org-x on tokens per min "
                 "(TPM): Limit 200000, Used {used}, Requested {asked}. Please try again in {wait}.")


def test_refusals_that_differ_only_in_numbers_are_one_failure_row(
        monkeypatch: pytest.MonkeyPatch) -> None:
    locustfile, _ = _load_locustfile(monkeypatch)
    results = set()
    for used, asked, wait in ((199826, 374, "60ms"), (199990, 1200, "1.92s")):
        error = {"error": {"message": _RATE_LIMITED.format(used=used, asked=asked, wait=wait),
                           "type": "requests", "code": "rate_limit_exceeded"}}
        response = _Response(429, json.dumps(error).encode())
        _run_one_stream(locustfile, response)
        results.add(response.result)
    (result,) = results
    assert result is not None and result.startswith("failure: HTTP 429")
    assert "gpt-4o-mini" in result  # a model's name is no count


def test_error_frames_that_differ_only_in_numbers_are_one_failure_row(
        monkeypatch: pytest.MonkeyPatch) -> None:
    locustfile, events = _load_locustfile(monkeypatch)
    for used in (199826, 199990):
        error = {"error": {"message": _RATE_LIMITED.format(used=used, asked=9, wait="2s")}}
        _run_one_stream(locustfile, _Response(200, b"".join(_sse(_content("a"), error))))
    failures = {str(e["exception"]) for e in events.fired if e["name"] == "custom stream"}
    assert len(failures) == 1 and "error frame: Rate limit reached" in failures.pop()


def test_an_inline_portkey_config_object_is_sent_as_its_json(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Portkey's x-portkey-config is a config's JSON text; written as an object inside
    # SP_HEADERS, every request failed before it was sent (requests takes only str headers).
    config = {"strategy": {"mode": "fallback"}, "targets": [{"provider": "mock"}]}
    monkeypatch.setenv("SP_HEADERS", json.dumps({"x-portkey-config": config,
                                                 "x-portkey-provider": "mock"}))
    locustfile, _ = _load_locustfile(monkeypatch)
    user = locustfile.CustomUser()
    user.client = types.SimpleNamespace(verify=True, base_url="http://127.0.0.1:8787")
    user.on_start()
    assert json.loads(user.headers["x-portkey-config"]) == config
    assert user.headers["x-portkey-provider"] == "mock"


def test_the_answer_cap_is_sent_as_max_completion_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    # OpenAI's reasoning models (o-series, gpt-5) refuse `max_tokens` with a 400 ("Use
    # 'max_completion_tokens' instead"); every translator of the proxy reads either name.
    monkeypatch.setenv("SP_MAX_TOKENS", "64")
    locustfile, _ = _load_locustfile(monkeypatch)
    user = locustfile.PassthroughUser()
    user.client = types.SimpleNamespace(verify=True, base_url="http://127.0.0.1:8787")
    user.on_start()
    body = json.loads(user.body)
    assert body["max_completion_tokens"] == 64 and "max_tokens" not in body


@pytest.mark.parametrize("value", ['{"x-portkey-provider": "mock"', "x-portkey-provider: mock",
                                   '["x-portkey-provider", "mock"]'])
def test_headers_that_are_no_json_object_stop_the_run_at_start(
        monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    # Read per user in on_start, a bad SP_HEADERS printed a traceback for each user and the
    # run went on with none streaming: it is said once, before any user starts.
    monkeypatch.setenv("SP_HEADERS", value)
    with pytest.raises(SystemExit, match=r"SP_HEADERS: .*JSON object"):
        _load_locustfile(monkeypatch)


@pytest.mark.parametrize(("name", "value"), [("SP_MAX_TOKENS", "256k"), ("SP_MAX_TOKENS", "1.5"),
                                             ("SP_WAIT", "1s")])
def test_numbers_that_are_no_numbers_stop_the_run_at_start(
        monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    # SP_MAX_TOKENS was read per user in on_start: a traceback for each user, nothing streamed.
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit, match=name):
        _load_locustfile(monkeypatch)


def test_an_error_frame_whose_error_is_a_string_is_named_by_its_text(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Hugging Face TGI's mid-stream error, passed through: `error` is the message itself.
    locustfile, events = _load_locustfile(monkeypatch)
    error = {"error": "Request failed during generation: Server error: out of memory",
             "error_type": "generation"}
    _run_one_stream(locustfile, _Response(200, b"".join(_sse(_content("a"), error))))
    (stream,) = [e for e in events.fired if e["name"] == "custom stream"]
    assert str(stream["exception"]) == (
        "error frame: Request failed during generation: Server error: out of memory")


def test_a_chunk_with_a_null_error_is_no_failed_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    # The openai SDK raises only for a truthy `error`: a null one is a healthy chunk.
    locustfile, events = _load_locustfile(monkeypatch)
    chunk = {**_content("a"), "error": None}
    _run_one_stream(locustfile, _Response(200, b"".join(_sse(chunk, chunk, "[DONE]"))))
    (stream,) = [e for e in events.fired if e["name"] == "custom stream"]
    assert stream["exception"] is None
    assert [e["name"] for e in events.fired].count("custom inter-token") == 1


# OpenAI's server error names the failed request: its ID differs every time (hex before
# 2024, `req_…` since; Anthropic's `req_011C…` ids are base 62, a Realtime session `sess_…`).
_SERVER_ERROR = ("The server had an error while processing your request. Sorry about that! You "
                 "can retry your request, or contact us through our help center at "
                 "help.openai.com if the error persists. (Please include the request ID {id} in "
                 "your message.)")


@pytest.mark.parametrize("ids", [
    ("req_1332ed8a813a4caaa2f0f3c55a6a68cb", "req_9f0c1e2d3b4a59687766554433221100"),
    ("fb94b183e8b7bc5aca22fa62981cc107", "0a5f3e7c0a0c5e4e9d7e2e4a1b5c8d9e"),
    ("req_011CSHoEeqs5C35K2UUqR7Fy", "req_011CSHpQ4mXn7Vb2sT9wLk3J"),
    ("7c3733ea-69ee-4cff-8904-d9ad1b210e78", "0b1e2d3c-4a5b-4c6d-8e7f-a0b1c2d3e4f5")])
def test_error_frames_that_differ_only_in_a_request_id_are_one_failure_row(
        monkeypatch: pytest.MonkeyPatch, ids: tuple[str, str]) -> None:
    locustfile, events = _load_locustfile(monkeypatch)
    for request_id in ids:
        error = {"error": {"message": _SERVER_ERROR.format(id=request_id),
                           "type": "server_error", "param": None, "code": None}}
        _run_one_stream(locustfile, _Response(200, b"".join(_sse(_content("a"), error))))
    failures = {str(e["exception"]) for e in events.fired if e["name"] == "custom stream"}
    assert len(failures) == 1
    assert "help.openai.com" in failures.pop()  # the words kept


class _CloseDelimitedServer(http.server.BaseHTTPRequestHandler):
    """An SSE answer with no chunked framing (HTTP/1.0: the body ends when the connection
    closes), as a server or a proxy in front of one may send: the first event, then the rest
    once the client has read it (or after 10 s)."""
    protocol_version = "HTTP/1.0"
    first_read = threading.Event()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        self.wfile.write(_sse(_content("a"))[0])
        self.wfile.flush()
        self.first_read.wait(10)
        self.wfile.write(b"".join(_sse(_content("b"), "[DONE]")))

    def log_message(self, *args: Any) -> None:
        pass


def test_a_stream_without_chunked_framing_is_read_as_it_arrives(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # requests' iter_content(chunk_size=None) reads such a body to its end in one piece: the
    # first token "arrived" when the stream ended, and every inter-token gap was 0.
    locustfile, events = _load_locustfile(monkeypatch)
    reads: list[bytes] = []
    feed = locustfile.StreamReader.feed

    def reading(self: Any, data: bytes, now: float) -> None:
        reads.append(data)
        _CloseDelimitedServer.first_read.set()
        feed(self, data, now)

    monkeypatch.setattr(locustfile.StreamReader, "feed", reading)
    _stream_once(locustfile, _CloseDelimitedServer, _CloseDelimitedServer.first_read)
    assert reads[0] == _sse(_content("a"))[0]
    (stream,) = [e for e in events.fired if e["name"] == "custom stream"]
    assert stream["exception"] is None


class _CutErrorResponse(_Response):
    """A 502 whose body the connection reset cut: requests raises as the body is read."""

    @property  # type: ignore[override]
    def text(self) -> str:
        import requests

        raise requests.exceptions.ChunkedEncodingError(
            "('Connection broken: ConnectionResetError(104, 'Connection reset by peer')')")

    @text.setter
    def text(self, value: str) -> None:
        pass


def test_an_error_body_cut_by_a_reset_is_a_failure_on_its_post_row(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Read for the failure's text, the cut body raised out of locust's response context: the
    # POST row counted nothing and a `stream` failure was named after requests' exception.
    locustfile, events = _load_locustfile(monkeypatch)
    response = _CutErrorResponse(502, b"")
    _run_one_stream(locustfile, response)
    assert response.result is not None and response.result.startswith("failure: HTTP 502")
    assert "ChunkedEncodingError" in response.result and "#" in response.result
    assert events.fired == []


def _completion(request_id: str, text: str) -> bytes:
    """A whole chat.completion: what an upstream that ignores `stream: true` answers."""
    return json.dumps({
        "id": f"chatcmpl-{request_id}", "object": "chat.completion", "created": 1741570283,
        "model": "gpt-4o-mini-2024-07-18", "choices": [{
            "index": 0, "message": {"role": "assistant", "content": text},
            "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}}).encode()


def test_a_whole_completion_instead_of_a_stream_says_what_came(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # It was 'stream ended without [DONE]', as for a cut stream: nothing said a JSON answer came.
    locustfile, events = _load_locustfile(monkeypatch)
    for request_id, text in (("B9MHDbslfWZ2x7QeLkPq1", "Load tests find limits."),
                             ("C1aTq7ZpYw3vN0sKdE8jR", "They measure a system.")):
        body = _completion(request_id, text)
        _run_one_stream(locustfile, _Response(200, body, content_type="application/json"))
    failures = {str(e["exception"]) for e in events.fired if e["name"] == "custom stream"}
    assert len(failures) == 1  # one row, whatever the completion's id and text
    failure = failures.pop()
    assert "not an event stream" in failure and "application/json" in failure
    assert "chat.completion" in failure and "choices" in failure


def test_an_error_answered_as_json_with_a_200_is_named_by_its_message(
        monkeypatch: pytest.MonkeyPatch) -> None:
    locustfile, events = _load_locustfile(monkeypatch)
    body = json.dumps({"error": {"message": "model gpt-9 does not exist", "code": 404}}).encode()
    _run_one_stream(locustfile, _Response(200, body, content_type="application/json"))
    (stream,) = [e for e in events.fired if e["name"] == "custom stream"]
    assert str(stream["exception"]) == (
        "not an event stream (application/json): error: model gpt-9 does not exist")


def test_a_page_instead_of_a_stream_is_named_by_its_start(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A front proxy's login or maintenance page, answered with a 200.
    locustfile, events = _load_locustfile(monkeypatch)
    page = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head>\n\n<body>" + b"x" * 500
    _run_one_stream(locustfile, _Response(200, page, content_type="text/html; charset=utf-8"))
    (stream,) = [e for e in events.fired if e["name"] == "custom stream"]
    failure = str(stream["exception"])
    assert failure.startswith("not an event stream (text/html; charset=utf-8): "
                              "<!DOCTYPE html> <html><head><title>Sign in")
    assert len(failure) < 300


def test_tokens_per_second_stay_out_of_the_aggregated_row(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Locust's Aggregated row sums every sample of events.request: tokens/s in it were read as
    # milliseconds, moving its average and percentiles (and the web UI's response-time chart).
    locustfile, events = _load_locustfile(monkeypatch)
    reader = locustfile.StreamReader(0.0)
    for at, data in zip((0.1, 0.2, 0.3), _sse(*(_content(w) for w in "ab"), "[DONE]"), strict=True):
        reader.feed(data, at)
    stats = _Stats()
    _user(locustfile, stats).report("s", reader, 0.3)
    assert "s tokens/s" not in [e["name"] for e in events.fired]
    assert stats.logged == [("STREAM", "s tokens/s", pytest.approx(10))]
    assert "s inter-token" in [e["name"] for e in events.fired]  # milliseconds are aggregated


@pytest.mark.parametrize(("host", "url"), [
    ("http://127.0.0.1:8787", "http://127.0.0.1:8787/v1/chat/completions"),
    ("http://127.0.0.1:8787/", "http://127.0.0.1:8787/v1/chat/completions"),
    ("http://127.0.0.1:8787/v1", "http://127.0.0.1:8787/v1/chat/completions"),
    ("https://proxy.internal/v1/", "https://proxy.internal/v1/chat/completions"),
    ("https://gw.internal/llm", "https://gw.internal/llm/v1/chat/completions")])
def test_a_host_written_as_a_clients_base_url_reaches_the_chat_endpoint(
        monkeypatch: pytest.MonkeyPatch, host: str, url: str) -> None:
    # README's clients use base_url="http://127.0.0.1:8787/v1"; given to --host as is (or with
    # a trailing slash), locust appended the path: every request a 404 on /v1/v1/… or //v1/….
    locustfile, _ = _load_locustfile(monkeypatch)
    user = locustfile.CustomUser()
    user.client = types.SimpleNamespace(verify=True, base_url=host)
    user.on_start()
    posted: list[str] = []

    def post(path: str, **kw: Any) -> _Response:
        # Locust's HttpSession: an absolute URL as it is, a path after the host as given.
        posted.append(path if path.startswith(("http://", "https://")) else host + path)
        return _Response(200, b"".join(_sse(_content("a"), "[DONE]")))

    user.client.post = post
    user.environment = types.SimpleNamespace(stats=_Stats())
    user.stream()
    assert posted == [url]


class _CutStreamResponse(_Response):
    """Two content chunks, 0.1 s apart, then the connection reset mid-stream."""

    def iter_content(self, chunk_size: int | None) -> Any:
        import requests

        yield from _sse(_content("a"), _content("b"))
        raise requests.exceptions.ChunkedEncodingError(
            "('Connection broken: IncompleteRead(0 bytes read, 2 more expected)')")


def test_a_stream_cut_mid_way_reports_what_arrived_like_an_error_frame(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Cut (a load balancer's idle timeout, a restart), the stream's first token and gaps were
    # dropped while an error frame's were kept: TTFT counted fewer streams than the client saw.
    locustfile, events = _load_locustfile(monkeypatch)
    clock = iter((0.0, 0.2, 0.3, 0.4))
    monkeypatch.setattr(locustfile.time, "perf_counter", lambda: next(clock))
    _run_one_stream(locustfile, _CutStreamResponse(200, b""))
    rows = {e["name"]: e for e in events.fired}
    assert "ChunkedEncodingError" in str(rows["custom stream"]["exception"])
    assert rows["custom stream"]["response_time"] == pytest.approx(400)
    assert rows["custom TTFT"]["response_time"] == pytest.approx(200)
    assert rows["custom inter-token"]["response_time"] == pytest.approx(100)


def test_an_answer_with_no_content_says_how_it_finished(monkeypatch: pytest.MonkeyPatch) -> None:
    # gpt-5 or an o-series model given a low SP_MAX_TOKENS can spend it all reasoning, unseen:
    # a 200, [DONE], no text. The failure said only "no content token", every stream alike.
    locustfile, events = _load_locustfile(monkeypatch)
    role = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    ended = {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
    stream = _sse(role, ended, _usage(256, reasoning_tokens=256), "[DONE]")
    _run_one_stream(locustfile, _Response(200, b"".join(stream)))
    (failed,) = [e for e in events.fired if e["name"] == "custom stream"]
    assert str(failed["exception"]) == (
        "no content token (finish_reason length, hidden reasoning only)")


class _HeldOpenServer(_PausingServer):
    """A whole stream to [DONE], then the body held open until released (bounded): a server or
    a front proxy that ends the chunked body late, or only with the connection."""
    release = threading.Event()

    def parts(self) -> tuple[bytes | None, ...]:
        return (*_sse(_content("a"), _content("b"), "[DONE]"), None, b"")


def test_a_stream_ends_at_done_however_long_the_body_stays_open(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The openai SDK stops reading at [DONE] and closes the response. The user read on until
    # the body ended: its `stream` time held the wait, and a body held open past SP_TIMEOUT
    # made a whole, healthy stream a "timed out" failure.
    monkeypatch.setenv("SP_TIMEOUT", "1")
    locustfile, events = _load_locustfile(monkeypatch)
    _stream_once(locustfile, _HeldOpenServer, _HeldOpenServer.release)
    (stream,) = [e for e in events.fired if e["name"] == "custom stream"]
    assert stream["exception"] is None
    assert [e["name"] for e in events.fired].count("custom inter-token") == 1


@pytest.mark.parametrize("newline", [b"\r", b"\n", b"\r\n"])
def test_events_split_at_any_of_the_three_line_endings(
        monkeypatch: pytest.MonkeyPatch, newline: bytes) -> None:
    # The SSE spec ends a line with CR, LF or CRLF, and the openai SDK reads all three: a
    # stream whose lines end in a bare CR was one unsplit event, "ended without [DONE]".
    locustfile, _ = _load_locustfile(monkeypatch)
    first, second, done = (e.replace(b"\n", newline)
                           for e in _sse(_content("a"), _content("b"), "[DONE]"))
    reader = locustfile.StreamReader(0.0)
    for at, byte in enumerate(first + second + done):  # a byte a read: CRLF cut in two too
        reader.feed(bytes([byte]), at)
    # An event is read when its blank line is: the gap is the second event's length in reads.
    assert reader.done and reader.chunks == 2 and reader.gaps == [len(second)]


def test_a_null_header_is_not_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    # A null (a template's unset value) was sent as the text "null": `x-portkey-config: null`
    # is a config named "null", and every request a 400. Requests reads a None header as none.
    monkeypatch.setenv("SP_HEADERS", json.dumps({"x-portkey-config": None,
                                                 "x-portkey-provider": "mock"}))
    locustfile, _ = _load_locustfile(monkeypatch)
    user = locustfile.CustomUser()
    user.client = types.SimpleNamespace(verify=True, base_url="http://127.0.0.1:8787")
    user.on_start()
    assert "x-portkey-config" not in user.headers
    assert user.headers["x-portkey-provider"] == "mock"


@pytest.mark.parametrize(("usage", "tokens"), [((_usage(7),), 7), ((), 2)])
def test_the_stream_rows_size_is_its_completion_tokens(
        monkeypatch: pytest.MonkeyPatch, usage: tuple[dict[str, Any], ...], tokens: int) -> None:
    # As loadtests/README.md says: usage's completion_tokens, or the content chunks without it.
    locustfile, events = _load_locustfile(monkeypatch)
    _run_one_stream(locustfile, _Response(200, b"".join(
        _sse(_content("a"), _content("b"), *usage, "[DONE]"))))
    (stream,) = [e for e in events.fired if e["name"] == "custom stream"]
    assert stream["response_length"] == tokens


@pytest.mark.parametrize("done", ["[DONE] ", "[DONE]\t", "[DONE]  "])
def test_done_with_trailing_text_ends_the_stream_as_the_sdk_reads_it(
        monkeypatch: pytest.MonkeyPatch, done: str) -> None:
    # The openai SDK ends a stream at any data that starts with [DONE]: `data: [DONE] ` (a
    # server's trailing space) was read as JSON, and a healthy stream a JSONDecodeError failure.
    locustfile, events = _load_locustfile(monkeypatch)
    body = b"".join(_sse(_content("a"), _content("b"), _usage(2)))
    _run_one_stream(locustfile, _Response(200, body + b"data: " + done.encode() + b"\n\n"))
    (stream,) = [e for e in events.fired if e["name"] == "custom stream"]
    assert stream["exception"] is None
    assert stream["response_length"] == 2
