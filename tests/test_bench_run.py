"""The bench's own arithmetic and bookkeeping (bench/run.py): what it reports must be what it
measured."""

from __future__ import annotations

from typing import Any

from bench import run


def _run(**figures: Any) -> dict[str, Any]:
    return {"errors": 0, **figures}


def _by_target(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["target"]: c for c in run.targets(results)}


def test_a_target_met_by_a_scenario_whose_streams_failed_is_not_held() -> None:
    clean = {"scenario": "anthropic-c128", "proxied": _run(peak_rss_mb=50.0),
             "direct": _run()}
    failing = {**clean, "direct": _run(errors=3)}
    assert _by_target([clean])["peak RSS at 128 streams"]["held"] is True
    check = _by_target([failing])["peak RSS at 128 streams"]
    assert check["held"] is False
    assert check["scenario_errors"] == 3


def test_failed_rounds_and_workers_count_as_the_scenarios_errors() -> None:
    results = [
        {"scenario": "workers-2", "proxied": None, "direct": None,
         "workers": {"scaling": 1.9, "errors": 2}},
        {"scenario": "translators-c32", "proxied": None, "direct": None,
         "translators": {"ratio_to_anthropic": {"gemini": 1.1, "bedrock": 1.2}, "errors": 1}},
    ]
    checks = _by_target(results)
    assert checks["2 workers vs 1 (projected, one core each)"]["held"] is False
    assert checks["gemini CPU per event vs anthropic (c32, interleaved)"]["held"] is False


def test_an_unmeasured_target_stays_unmeasured() -> None:
    check = _by_target([])["peak RSS at 128 streams"]
    assert check["held"] is None
    assert check["scenario_errors"] == 0
