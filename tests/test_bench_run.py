"""The bench's own arithmetic and bookkeeping (bench/run.py): what it reports must be what it
measured."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bench import loadgen, procs, run
from bench.procs import Proc, free_port


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


def test_slow_stream_targets_are_not_held_when_fewer_streams_were_open_at_once() -> None:
    def slow(open_at_once: int) -> dict[str, Any]:
        return {"scenario": "slow-10k",
                "proxied": _run(concurrency=10_000, streams_open_at_once=open_at_once,
                                rss_per_stream_kb=20.0),
                "direct": _run(concurrency=10_000, streams_open_at_once=10_000)}

    full = _by_target([slow(10_000)])
    assert full["slow streams: errors"]["held"] is True
    assert full["slow streams: RSS per stream"]["held"] is True
    # The ramp ran out of time: 4,000 streams had not started when the RSS was read.
    short = _by_target([slow(6_000)])
    assert short["slow streams: errors"]["held"] is False
    assert short["slow streams: RSS per stream"]["held"] is False
    assert short["slow streams: errors"]["streams_not_open_at_once"] == 4_000


def test_an_unmeasured_target_stays_unmeasured() -> None:
    check = _by_target([])["peak RSS at 128 streams"]
    assert check["held"] is None
    assert check["scenario_errors"] == 0


class _Stalling(asyncio.Protocol):
    """Answers every request with a stream that starts and never ends."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        _open.append(self)

    def data_received(self, data: bytes) -> None:
        self.transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"  # type: ignore[attr-defined]
                             b"10\r\ndata: {\"a\": 1}\n\n\r\n")

    def connection_lost(self, exc: Exception | None) -> None:
        _open.remove(self)


_open: list[_Stalling] = []


async def _all_closed() -> bool:
    """Whether every connection to a _Stalling server is closed, within 0.2 s."""
    for _ in range(20):
        if not _open:
            return True
        await asyncio.sleep(0.01)
    return not _open


@contextlib.asynccontextmanager
async def _serving(protocol: Callable[[], asyncio.Protocol]) -> AsyncIterator[loadgen.Target]:
    """A loopback server speaking `protocol`, as the load generator's target."""
    server = await asyncio.get_running_loop().create_server(protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield loadgen.Target("127.0.0.1", port, "/", b"{}", b"\n\n", b'"a"', b"[DONE]", 1)
    finally:
        server.close()


async def test_a_stream_that_never_ends_is_a_failed_stream_and_its_user_is_stopped() -> None:
    async with _serving(_Stalling) as target:
        stats = loadgen.Stats(measuring=True)
        users = [asyncio.create_task(loadgen.user(target, stats, time.perf_counter() + 0.1))]
        await asyncio.sleep(0.2)
        await asyncio.wait_for(loadgen.finish(users, stats, 0.2), 2)
        assert stats.errors_total == 1
        assert "still open" in stats.error_samples[0]
        assert users[0].done()
        assert await _all_closed()  # the server sees the connection closed


def _this_process() -> Proc:
    """This process in the place of a server under test: /proc figures that exist."""
    return Proc("self", SimpleNamespace(pid=os.getpid()), Path(os.devnull))  # type: ignore[arg-type]


async def test_slow_streams_count_each_refused_connection_once() -> None:
    target = loadgen.Target("127.0.0.1", free_port(), "/", b"{}", b"\n\n", b'"a"', b"[DONE]")
    held = await asyncio.wait_for(run.hold(target, 3, _this_process(), 2, []), 10)
    assert held["errors"] == 3
    assert held["streams_ok"] == 0


async def test_slow_streams_that_never_end_are_failed_streams(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run, "STALL", 0.2)
    async with _serving(_Stalling) as target:
        held = await asyncio.wait_for(run.hold(target, 2, _this_process(), 3, []), 10)
    assert held["errors"] == 2
    assert held["streams_open_at_once"] == 2
    assert held["streams_ok"] == 0


class _Cutting(asyncio.Protocol):
    """Answers every request with a first token, then closes the connection: a cut stream."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"  # type: ignore[attr-defined]
                             b"10\r\ndata: {\"a\": 1}\n\n\r\n")
        self.transport.close()  # type: ignore[attr-defined]


async def test_slow_streams_already_cut_are_not_counted_as_open_at_once() -> None:
    async with _serving(_Cutting) as target:
        held = await asyncio.wait_for(run.hold(target, 3, _this_process(), 3, []), 10)
    assert held["errors"] == 3
    # Every stream had its first token, and every one had ended when the RSS was read.
    assert held["streams_open_at_once"] == 0


class _Sink:
    """A transport that takes the request and nothing else."""

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


def _chunked(*events: bytes) -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events)
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body + b"0\r\n\r\n"


async def test_a_read_that_ends_inside_a_chunk_size_lines_crlf_is_not_a_failed_stream() -> None:
    events = [b'data: {"a": 1}\n\n', b'data: {"b": 2}\n\n', b"data: [DONE]\n\n"]
    wire = _chunked(*events)
    # Every split point, the one between a size line's CR and LF included (a TCP read ends
    # wherever the socket buffer did).
    for cut in range(1, len(wire)):
        stats = loadgen.Stats(measuring=True)
        target = loadgen.Target("127.0.0.1", 1, "/", b"{}", b"\n\n", b'"a"', b"[DONE]", 3)
        conn = loadgen.StreamConnection(target, stats)
        conn.connection_made(_Sink())  # type: ignore[arg-type]
        once = asyncio.create_task(conn.run_once())
        await asyncio.sleep(0)
        conn.data_received(wire[:cut])
        conn.data_received(wire[cut:])
        assert await asyncio.wait_for(once, 1), (cut, stats.error_samples)
        assert stats.events == 3 and stats.ttft, cut


@pytest.mark.parametrize("sep", [b"\n\n", b"\r\n\r\n"])
async def test_a_marker_or_separator_spread_over_three_reads_is_still_seen(sep: bytes) -> None:
    events = [b'data: {"delta":{"content":"hi"}}' + sep, b'data: {"b": 2}' + sep,
              b"data: [DONE]" + sep]
    wire = _chunked(*events)
    body_at = wire.index(b"\r\n\r\n") + 4
    # Reads of a few bytes in the middle of an event: the first token's marker, or a
    # separator, then spans three reads.
    for a in range(body_at, len(wire) - 1):
        for b in range(a + 1, min(a + 8, len(wire))):
            stats = loadgen.Stats(measuring=True)
            target = loadgen.Target("127.0.0.1", 1, "/", b"{}", sep, b'"delta":{"content":"',
                                    b"[DONE]", 3)
            conn = loadgen.StreamConnection(target, stats)
            conn.connection_made(_Sink())  # type: ignore[arg-type]
            once = asyncio.create_task(conn.run_once())
            await asyncio.sleep(0)
            for piece in (wire[:a], wire[a:b], wire[b:]):
                conn.data_received(piece)
            assert await asyncio.wait_for(once, 1), (a, b, stats.error_samples)
            assert stats.events == 3 and len(stats.ttft) == 1, (a, b)


def _env() -> run.Env:
    proc = _this_process()
    return run.Env(run.Plan(quick=True), Path(os.devnull), None, None, proc, 0, proc, 0,
                   set())


async def test_a_crashing_scenario_fails_alone_and_the_others_still_run(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def throughput(env: run.Env, conc: int) -> None:
        if conc == 1:
            raise RuntimeError("proxy exited with 1:\nTraceback ...")
        run.record(env, f"anthropic-c{conc}", "", _run(
            concurrency=conc, streams_per_s=1.0, events_per_s=1.0, server_cpu_us_per_event=1.0,
            server_cpu_pct=50.0, harness_cpu_pct=50.0, ttft_p50_ms=1.0, ttft_p99_ms=1.0,
            duration_p50_ms=1.0, peak_rss_mb=50.0), None)

    monkeypatch.setattr(run, "throughput", throughput)
    env = _env()
    await run.run(env, {"anthropic-c1", "anthropic-c128"})
    rows = {r["scenario"]: r for r in env.results}
    assert rows["anthropic-c1"]["failed"] == "RuntimeError: proxy exited with 1:"
    assert "failed" not in rows["anthropic-c128"]
    assert _by_target(env.results)["peak RSS at 128 streams"]["held"] is True


async def test_a_scenario_that_crashes_after_recording_misses_its_targets(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def throughput(env: run.Env, conc: int) -> None:
        run.record(env, f"anthropic-c{conc}", "", _run(
            concurrency=conc, streams_per_s=1.0, events_per_s=1.0, server_cpu_us_per_event=1.0,
            server_cpu_pct=50.0, harness_cpu_pct=50.0, ttft_p50_ms=1.0, ttft_p99_ms=1.0,
            duration_p50_ms=1.0, peak_rss_mb=50.0), None)
        raise FileNotFoundError("/proc/123/stat")  # the proxy died after its row was written

    monkeypatch.setattr(run, "throughput", throughput)
    env = _env()
    await run.run(env, {"anthropic-c128"})
    assert len(env.results) == 1
    check = _by_target(env.results)["peak RSS at 128 streams"]
    assert check["held"] is False
    assert check["scenario_failed"] == "FileNotFoundError: /proc/123/stat"


async def test_a_server_gone_mid_window_stops_the_scenarios_users() -> None:
    async with _serving(_Stalling) as target:
        calls = 0

        def cpu() -> float:  # the first read works; by the window's end /proc/PID is gone
            nonlocal calls
            calls += 1
            if calls > 1:
                raise FileNotFoundError("/proc/123/stat")
            return 0.0

        gone = SimpleNamespace(cpu=cpu, kernel_cpu=lambda: 0.0, syscalls=lambda: None,
                               reset_peak=lambda: None)
        plan = SimpleNamespace(warmup=0.05)
        before = asyncio.all_tasks()
        with pytest.raises(FileNotFoundError):
            await asyncio.wait_for(run.measure(target, 2, plan, gone, [], 0.05), 5)  # type: ignore[arg-type]
        assert not (asyncio.all_tasks() - before - {asyncio.current_task()})
        assert await _all_closed()  # the stalled streams' connections are closed


def test_workers_scaling_without_a_cost_or_a_split_is_unmeasured_not_a_crash() -> None:
    assert run.scalings(4.0, 4.0, [0.5, 0.5]) == (2.0, 2.0)
    assert run.scalings(4.0, 4.0, [0.75, 0.25]) == (2.0, pytest.approx(4 / 3))
    # No CPU tick in the two-worker window, or no events at all: no scaling either way.
    assert run.scalings(4.0, 0.0, [0.5, 0.5]) == (None, None)
    assert run.scalings(None, 4.0, [0.5, 0.5]) == (None, None)
    # No connection counted on either worker: the open-loop figure has no split to use.
    assert run.scalings(4.0, 4.0, [0.0, 0.0]) == (2.0, None)


@pytest.mark.parametrize("two", [(0.0, [0.5, 0.5], 0), (4.0, [0.0, 0.0], 0),
                                 (None, [0.0, 0.0], 128)])
async def test_a_two_worker_run_with_no_cost_or_no_split_is_recorded_not_a_crash(
        monkeypatch: pytest.MonkeyPatch, two: tuple[float | None, list[float], int]) -> None:
    async def worker_cost(env: run.Env, count: int, cores_each: list[set[int]],
                          ) -> tuple[float | None, list[float], int]:
        return (4.0, [1.0], 0) if count == 1 else two

    monkeypatch.setattr(run, "worker_cost", worker_cost)
    env = _env()
    env.proxy_core = env.harness_core = os.sched_getaffinity(0)
    await run.workers_scaling(env)
    (row,) = env.results
    assert row["workers"]["us_per_event_two_workers"] == two[0]
    assert row["workers"]["scaling_open_loop"] is None


@pytest.mark.parametrize("n", [2, 4, 6, 8, 101, 200])
def test_percentiles_have_one_definition_whatever_the_samples_size(n: int) -> None:
    values = [float(i) for i in range(n, 0, -1)]  # unsorted on purpose
    # p50 is the median (the mean of the two middle values of an even-sized sample) ...
    assert run.pct(values, 50) == pytest.approx(statistics.median(values) * 1000)
    # ... and every percentile interpolates between its two nearest ranks, as numpy's default.
    for q in (0, 1, 25, 90, 99, 100):
        expected = statistics.quantiles(values, n=100, method="inclusive")[q - 1] if 0 < q < 100 \
            else (min(values) if q == 0 else max(values))
        assert run.pct(values, q) == pytest.approx(expected * 1000)


def test_a_percentile_of_one_sample_or_none() -> None:
    assert run.pct([0.002], 99) == pytest.approx(2.0)
    assert run.pct([], 50) is None


def test_a_process_listening_on_a_port_is_seen_and_one_only_connected_to_it_is_not() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
        assert not procs.listening(os.getpid(), port)  # bound, not yet listening
        server.listen()
        assert procs.listening(os.getpid(), port)
        other = free_port()
        assert not procs.listening(os.getpid(), other)
        with socket.create_connection(("127.0.0.1", port)):  # a client of it is no listener
            assert not procs.listening(os.getpid(), other)


async def test_two_workers_are_not_measured_before_both_listen(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The first worker listens (the master's port answers), the second never does: the run
    must not send its 128 keep-alive connections all to the first and call that two workers."""
    first = socket.socket()
    first.bind(("127.0.0.1", 0))
    first.listen()
    port = first.getsockname()[1]
    second = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    master = Proc("master", second, Path(os.devnull))  # stopped by worker_cost's finally
    monkeypatch.setattr(run, "start_proxy", lambda *a, **k: (master, port))

    async def worker_pids(pid: int, count: int) -> list[int]:
        return [os.getpid(), second.pid]

    monkeypatch.setattr(run, "worker_pids", worker_pids)
    monkeypatch.setattr(run, "WORKERS_LISTEN", 0.3, raising=False)
    monkeypatch.setattr(run, "STALL", 0.5)
    env = _env()
    cores_now = os.sched_getaffinity(0)
    try:
        with pytest.raises(RuntimeError, match=f"{second.pid}.* not listening"):
            await asyncio.wait_for(run.worker_cost(env, 2, [cores_now, cores_now]), 20)
    finally:
        first.close()
        os.sched_setaffinity(0, cores_now)
        second.kill()
        second.wait(5)


async def test_slow_streams_of_a_server_gone_mid_run_do_not_outlive_the_scenario() -> None:
    async with _serving(_Stalling) as target:
        reads = 0

        def rss_kb() -> int:  # the idle RSS is read; by the plateau /proc/PID is gone
            nonlocal reads
            reads += 1
            if reads > 1:
                raise FileNotFoundError("/proc/123/status")
            return 1000

        gone = SimpleNamespace(rss_kb=rss_kb, cpu=lambda: 0.0, pid=os.getpid())
        before = asyncio.all_tasks()
        with pytest.raises(FileNotFoundError):
            await asyncio.wait_for(run.hold(target, 3, gone, 3, []), 10)  # type: ignore[arg-type]
        assert not (asyncio.all_tasks() - before - {asyncio.current_task()})
        assert await _all_closed()  # the stalled streams' connections are closed


def _paced_row(env: run.Env) -> None:
    """paced-c16's measured row: proxied and direct, both within the targets."""
    figures = dict(concurrency=16, streams_per_s=1.0, events_per_s=1.0,
                   server_cpu_us_per_event=1.0, server_cpu_pct=50.0, harness_cpu_pct=50.0,
                   duration_p50_ms=1.0, peak_rss_mb=50.0)
    run.record(env, "paced-c16", "", _run(ttft_p50_ms=1.2, ttft_p99_ms=2.5, **figures),
               _run(ttft_p50_ms=1.0, ttft_p99_ms=1.5, **figures))


async def _pair_records_paced(env: run.Env, *args: Any, **kwargs: Any) -> None:
    _paced_row(env)


async def test_a_crashing_floor_line_marks_only_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    def start(name: str, *args: Any, **kwargs: Any) -> Proc:
        raise RuntimeError(f"{name} exited with 1:\nTraceback ...")

    monkeypatch.setattr(run, "pair", _pair_records_paced)
    monkeypatch.setattr(run, "start", start)
    env = _env()
    await run.run(env, {"paced-c16"})
    (row,) = env.results
    assert "failed" not in row
    assert row["floor_failed"] == "RuntimeError: forwarder exited with 1:"
    checks = _by_target(env.results)
    assert checks["added TTFT p50 (paced, c16)"]["held"] is True
    assert checks["added TTFT p99 (paced, c16)"]["held"] is True
    assert "scenario_failed" not in checks["added TTFT p50 (paced, c16)"]


async def test_a_crashing_awake_line_marks_only_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    async def measure(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return _run(ttft_p50_ms=1.1, ttft_p99_ms=1.6)

    async def paced_awake(env: run.Env, row: dict[str, Any]) -> None:
        raise FileNotFoundError("/proc/123/stat")  # its proxy died mid-run

    monkeypatch.setattr(run, "pair", _pair_records_paced)
    monkeypatch.setattr(run, "start", lambda *a, **k: SimpleNamespace(stop=lambda: None))
    monkeypatch.setattr(run, "measure", measure)
    monkeypatch.setattr(run, "paced_awake", paced_awake)
    env = _env()
    env.proxy_core = os.sched_getaffinity(0)
    await run.run(env, {"paced-c16"})
    (row,) = env.results
    assert "failed" not in row
    assert row["floor"]["ttft_p50_ms"] == 1.1
    assert row["awake_failed"] == "FileNotFoundError: /proc/123/stat"
    assert _by_target(env.results)["added TTFT p50 (paced, c16)"]["held"] is True


@pytest.mark.parametrize("kind", ["gemini", "bedrock"])
async def test_a_translated_scenarios_proxy_that_does_not_start_is_failed_not_skipped(
        monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    def start_proxy(*args: Any, **kwargs: Any) -> tuple[Proc, int]:
        raise RuntimeError("proxy exited with 1:\nconfig error: ...")

    monkeypatch.setattr(run, "start_proxy", start_proxy)
    env = _env()
    env.types = {kind}
    await run.run(env, {f"{kind}-c32"})
    (row,) = env.results
    assert row["failed"] == "RuntimeError: proxy exited with 1:"
    assert "skipped" not in row["note"]


def _main_without_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """main() without pinning this process, calibrating or replacing the event loop policy."""
    monkeypatch.setattr(run, "cores", lambda: (None, None))
    monkeypatch.setattr(run, "calibrate", lambda core: None)
    monkeypatch.setattr(run, "_install_loop", lambda: None)


def _main_exits(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, args: list[str],
                start: Any, scenarios: Any = None) -> tuple[Any, dict[str, Any]]:
    """main(`args`) with `start` (and `scenarios` as `run.run`), off the machine: its exit
    status and the JSON it wrote."""
    _main_without_machine(monkeypatch)
    monkeypatch.setattr(run, "start", start)
    if scenarios is not None:
        monkeypatch.setattr(run, "run", scenarios)
    out = tmp_path / "latest.json"
    with pytest.raises(SystemExit) as exit_:
        run.main(["--quick", *args, "--out", str(out)])
    return exit_.value.code, json.loads(out.read_text())


def test_a_mock_that_does_not_start_still_writes_the_json_and_exits_non_zero(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def start(name: str, *args: Any, **kwargs: Any) -> Proc:
        raise RuntimeError(f"{name} exited with 1:\nTraceback ...")

    code, written = _main_exits(monkeypatch, tmp_path, ["--only", "anthropic-c1"], start)
    assert code not in (0, None)
    assert written["aborted"] == "RuntimeError: mock exited with 1:"
    assert written["scenarios"] == []
    assert {c["held"] for c in written["targets"]} == {None}


def test_an_interrupted_bench_writes_what_it_measured_and_exits_non_zero(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    stopped: list[str] = []

    def start(name: str, *args: Any, **kwargs: Any) -> Any:
        return SimpleNamespace(pid=os.getpid(), stop=lambda: stopped.append(name))

    async def interrupted(env: run.Env, only: set[str]) -> None:
        run.record(env, "anthropic-c128", "", _run(
            concurrency=128, streams_per_s=1.0, events_per_s=1.0, server_cpu_us_per_event=1.0,
            server_cpu_pct=50.0, harness_cpu_pct=50.0, ttft_p50_ms=1.0, ttft_p99_ms=1.0,
            duration_p50_ms=1.0, peak_rss_mb=50.0), None)
        raise KeyboardInterrupt  # Ctrl-C in the next scenario

    code, written = _main_exits(monkeypatch, tmp_path, [], start, interrupted)
    assert code not in (0, None)
    assert written["aborted"].startswith("KeyboardInterrupt")
    assert [r["scenario"] for r in written["scenarios"]] == ["anthropic-c128"]
    held = {c["target"]: c["held"] for c in written["targets"]}
    assert held["peak RSS at 128 streams"] is True
    assert sorted(stopped) == ["mock", "upstream"]


@pytest.mark.parametrize("share,held", [([0.55, 0.45], True), ([0.75, 0.25], True),
                                        ([0.95, 0.05], False), ([1.0, 0.0], False)])
async def test_workers_scaling_of_a_lopsided_split_does_not_hold_its_target(
        monkeypatch: pytest.MonkeyPatch, share: list[float], held: bool) -> None:
    async def worker_cost(env: run.Env, count: int, cores_each: list[set[int]],
                          ) -> tuple[float | None, list[float], int]:
        return (4.0, [1.0], 0) if count == 1 else (4.2, share, 0)

    monkeypatch.setattr(run, "worker_cost", worker_cost)
    env = _env()
    env.proxy_core = env.harness_core = os.sched_getaffinity(0)
    await run.workers_scaling(env)
    (row,) = env.results
    assert row["workers"]["scaling"] == pytest.approx(2 * 4.0 / 4.2)  # still reported
    check = _by_target(env.results)["2 workers vs 1 (projected, one core each)"]
    assert check["held"] is held
    assert ("invalid" in check) is not held
    if not held:
        assert f"{min(share):.0%}" in check["invalid"]


def test_a_failed_scenario_still_writes_the_json_and_exits_non_zero(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    async def crashing(env: run.Env, only: set[str]) -> None:
        run.failed(env, "anthropic-c1", RuntimeError("proxy exited with 1:\nTraceback ..."))

    code, written = _main_exits(
        monkeypatch, tmp_path, ["--only", "anthropic-c1"],
        lambda name, *a, **kw: SimpleNamespace(pid=os.getpid(), stop=lambda: None), crashing)
    assert code == 1
    assert written["scenarios"][0]["failed"] == "RuntimeError: proxy exited with 1:"
    assert written["aborted"] is None


def test_a_missed_target_is_no_failure_of_the_bench(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    async def heavy(env: run.Env, only: set[str]) -> None:
        run.record(env, "anthropic-c128", "", _run(
            concurrency=128, streams_per_s=1.0, events_per_s=1.0, server_cpu_us_per_event=1.0,
            server_cpu_pct=50.0, harness_cpu_pct=50.0, ttft_p50_ms=1.0, ttft_p99_ms=1.0,
            duration_p50_ms=1.0, peak_rss_mb=500.0), None)

    _main_without_machine(monkeypatch)
    monkeypatch.setattr(run, "start", lambda name, *a, **kw: SimpleNamespace(
        pid=os.getpid(), stop=lambda: None))
    monkeypatch.setattr(run, "run", heavy)
    out = tmp_path / "latest.json"
    run.main(["--quick", "--only", "anthropic-c128", "--out", str(out)])  # returns: exit 0
    held = {c["target"]: c["held"] for c in json.loads(out.read_text())["targets"]}
    assert held["peak RSS at 128 streams"] is False


def test_a_ctrl_c_while_the_servers_stop_still_writes_the_json(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    stopped: list[str] = []

    def stop(name: str) -> None:
        stopped.append(name)
        if name == "upstream":  # the second Ctrl-C lands while the clean-up waits on it
            raise KeyboardInterrupt

    def start(name: str, *args: Any, **kwargs: Any) -> Any:
        return SimpleNamespace(pid=os.getpid(), stop=lambda: stop(name))

    async def interrupted(env: run.Env, only: set[str]) -> None:
        raise KeyboardInterrupt

    code, written = _main_exits(monkeypatch, tmp_path, [], start, interrupted)
    assert code == 130
    assert written["aborted"].startswith("KeyboardInterrupt")
    assert sorted(stopped) == ["mock", "upstream"]
