"""The locust kit's runner reads run times in locust's own forms (`make loadtest`'s
LOADTEST_TIME), so a value locust takes is never a crash before locust starts."""

from __future__ import annotations

import importlib.util
from pathlib import Path

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
