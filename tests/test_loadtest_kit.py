"""The locust kit: its runner reads run times in locust's own forms (`make loadtest`'s
LOADTEST_TIME), so a value locust takes is never a crash before locust starts; its streaming
user counts each failure once and reports the figures loadtests/README.md describes."""

from __future__ import annotations

import importlib.util
import sys
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
    ("30", 30), ("30s", 30), ("2m", 120), ("1m30s", 90), ("1h30m", 5400), ("1.5m", 90)])
def test_run_times_in_locusts_forms(spec: str, seconds: float) -> None:
    assert run._seconds(spec) == seconds


@pytest.mark.parametrize("spec", ["", "abc", "1x", "m"])
def test_what_is_no_run_time_is_said(spec: str) -> None:
    with pytest.raises(ValueError, match="not a run time"):
        run._seconds(spec)


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

    def __init__(self, status: int, body: bytes) -> None:
        self.status_code, self.text, self.body = status, body.decode(), body
        self.result: str | None = None

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


def _run_one_stream(locustfile: Any, response: _Response) -> None:
    user = locustfile.CustomUser()
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
