"""`streamproxy serve --workers 2` as a real process tree: the master forks two SO_REUSEPORT
workers, replaces one that is killed, reloads on SIGHUP (and keeps the old workers when the new
config is bad), and drains on SIGTERM. Every wait is bounded; the tree is always killed."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers import collect, sse_chunks

CONFIG = """
server:
  shutdown_grace: {grace}
providers:
  mock:
    type: mock
    default_model: fast
    models: [{models}]
default_provider: mock
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Tree:
    def __init__(self, config: Path, port: int, workers: int = 2) -> None:
        self.config, self.port = config, port
        self.url = f"http://127.0.0.1:{port}"
        self.log = config.with_suffix(".log")
        # The metrics directory is the test's: a master killed with SIGKILL cannot remove
        # the one it would make in /tmp.
        metrics = config.parent / "metrics"
        metrics.mkdir(exist_ok=True)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streamproxy", "serve", "--config", str(config),
                 "--port", str(port), "--workers", str(workers)],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics)})

    def workers(self) -> set[int]:
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            return {int(p) for p in path.read_text().split()}
        except OSError:
            return set()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def serve_refused(config: Path, port: int, workers: str, metrics: Path,
                  timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`streamproxy serve` run to its end, which a test expects to come at start. The timeout
    only bounds a hang: a start takes ~0.6 s of CPU, which a loaded 2-core machine gave over
    40 s (a refused second instance, beside two busy loops per core)."""
    return subprocess.run(
        [sys.executable, "-m", "streamproxy", "serve", "--config", str(config),
         "--port", str(port), "--workers", workers],
        capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics)})


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, config_text: str, workers: int) -> AsyncIterator[Tree]:
    """A tree serving `config_text` with every worker listening; killed at the end."""
    config = tmp_path / "proxy.yaml"
    config.write_text(config_text)
    t = Tree(config, _free_port(), workers=workers)
    try:
        await ready(t, workers)
        yield t
    finally:
        t.kill()


async def ready(t: Tree, workers: int) -> None:
    try:
        await until(lambda: healthy(t.url), "listening")
    except AssertionError as e:  # say why: the server's own words
        raise AssertionError(f"{e}; the server wrote:\n{t.output()[-2000:]}") from None
    # Healthy is not enough: until the master has read both workers' ready signals, a
    # worker that dies counts as a failed start-up (which stops the server by design).
    await until(lambda: workers == 1 or "all 2 workers listening" in t.output(),
                "the master's ready log")


async def until(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    # (the default only bounds a hang: a loaded 2-core machine took over 20 s to start two
    # workers; a test that asserts how soon something happens passes its own timeout)
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def healthy(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as s, s.get(url + "/healthz") as r:
            return r.status == 200
    except aiohttp.ClientError:
        return False


async def stream_ok(url: str, model: str = "mock/fast:tokens=20") -> bool:
    """A fresh connection (so the kernel may pick either worker) and a whole stream."""
    async with aiohttp.ClientSession() as s, s.post(url + "/v1/chat/completions", json={
            "model": model, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}) as r:
        c = collect(sse_chunks(await r.read()))
    return r.status == 200 and c.done and c.finish_reason == "stop"


@contextlib.asynccontextmanager
async def running(tmp_path: Path, template: str = CONFIG) -> AsyncIterator[Tree]:
    async with serving(tmp_path, template.format(grace=0.5, models="fast"), 2) as t:
        yield t


@pytest.fixture
async def tree(tmp_path: Path) -> AsyncIterator[Tree]:
    async with running(tmp_path) as t:
        yield t


@pytest.fixture(scope="module")
def shared_tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tree]:
    """`tree`, started once for the tests that leave it as they found it (requests, and a
    second instance that must refuse to start): a start is seconds of a loaded machine's CPU.
    Tests that signal, kill or reload a tree have their own."""
    config = tmp_path_factory.mktemp("shared-tree") / "proxy.yaml"
    config.write_text(CONFIG.format(grace=0.5, models="fast"))
    t = Tree(config, _free_port())
    try:
        asyncio.run(ready(t, 2))
        yield t
    finally:
        t.kill()


async def test_requests_succeed_and_a_killed_worker_is_replaced(tree: Tree) -> None:
    for _ in range(6):
        assert await stream_ok(tree.url)
    before = tree.workers()
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    replaced = await until(lambda: (w := tree.workers()) and victim not in w and len(w) == 2
                           and w, "the killed worker to be replaced")
    assert len(replaced - before) == 1
    await until(lambda: healthy(tree.url), "health after the restart")
    results = await asyncio.gather(*(stream_ok(tree.url) for _ in range(8)))
    assert all(results)
    assert "died (signal SIGKILL); restarting slot" in tree.output()


async def test_workers_drain_and_exit_when_their_master_is_killed(tree: Tree) -> None:
    workers = tree.workers()
    os.kill(tree.proc.pid, signal.SIGKILL)
    tree.proc.wait(5)

    def alive() -> set[int]:
        return {pid for pid in workers if Path(f"/proc/{pid}").exists()
                and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"}

    await until(lambda: not alive(), "the orphaned workers to exit", timeout=10)
    assert not await healthy(tree.url)


async def _served_count(url: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
        text = await r.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("streamproxy_requests_total{"))


async def _counted(url: str, n: int) -> bool:
    return await _served_count(url) >= n


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_second_instance_on_the_same_port_refuses_to_start(shared_tree: Tree,
                                                                   workers: str) -> None:
    # SO_REUSEPORT would let its workers share the port with the running ones, unnoticed.
    # Given the same metrics directory, it must leave the running instance's files alone
    # (serve clears a previous run's from it: only once the port is its own).
    tree = shared_tree
    before = await _served_count(tree.url)  # (every earlier test's requests counted)
    assert await stream_ok(tree.url)
    proc = serve_refused(tree.config, tree.port, workers, tree.config.parent / "metrics")
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{tree.port}" in proc.stderr
    assert await stream_ok(tree.url)
    # A worker counts a request after its last byte is written: /metrics (maybe on the other
    # worker) can come before that. Two more is reached unless the count of one was lost.
    await until(lambda: _counted(tree.url, before + 2), "both requests counted")
    assert await _served_count(tree.url) == before + 2


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_second_instance_given_the_same_metrics_directory_refuses_to_start(
        shared_tree: Tree, workers: str) -> None:
    # On another port, it cleared the running instance's sample files at start (its counters
    # fell back to zero, its live gauges were lost), then both added into each other's
    # scrapes. The directory is the running instance's for its life: the second one says so.
    tree = shared_tree
    before = await _served_count(tree.url)  # (every earlier test's requests counted)
    assert await stream_ok(tree.url)
    metrics = tree.config.parent / "metrics"
    proc = serve_refused(tree.config, _free_port(), workers, metrics, 30)
    assert proc.returncode == 2, proc.stderr
    assert (f"PROMETHEUS_MULTIPROC_DIR: {str(metrics)!r} is in use by another streamproxy "
            f"(pid {tree.proc.pid})") in proc.stderr
    assert await stream_ok(tree.url)
    # (waited for as above; a lost count stays below it)
    await until(lambda: _counted(tree.url, before + 2), "both requests counted")
    assert await _served_count(tree.url) == before + 2


async def test_sighup_reloads_and_a_bad_config_keeps_the_old_workers(tree: Tree) -> None:
    old = tree.workers()
    tree.config.write_text("providers: [this is not: valid")
    tree.proc.send_signal(signal.SIGHUP)
    await until(lambda: "reload failed" in tree.output(), "the reload error in the log")
    assert tree.workers() == old and await stream_ok(tree.url)

    tree.config.write_text(CONFIG.format(grace=0.5, models="fast, newmodel").replace(
        "server:\n", "server:\n  host: localhost\n"))  # (the address is the master's: kept,
    tree.proc.send_signal(signal.SIGHUP)                # and said)
    new = await until(lambda: (w := tree.workers()) and not (w & old) and len(w) == 2 and w,
                      "a new generation of workers")
    assert new.isdisjoint(old)
    assert "server.host changed; that takes a restart" in tree.output()

    async def models() -> list[str]:
        async with aiohttp.ClientSession() as s, s.get(tree.url + "/v1/models") as r:
            return [m["id"] for m in (await r.json())["data"]]

    assert "mock/newmodel" in await models()
    assert await stream_ok(tree.url)


async def test_a_reload_with_a_bad_section_is_one_line_and_forks_no_worker(
        tree: Tree) -> None:
    """A section checked as the app is built: each new worker reported it and died, then
    the master said the reload failed; now the master finds it, as for the file's own keys."""
    old = tree.workers()
    tree.config.write_text(CONFIG.format(grace=0.5, models="fast") + "auth: {keys: [{name: a}]}\n")
    tree.proc.send_signal(signal.SIGHUP)
    await until(lambda: "reload failed" in tree.output(), "the reload error in the log")
    assert (f"reload failed: config error: {tree.config}: auth.keys[0]: give exactly one of "
            "`key` or `key_env`; the running config keeps serving") in tree.output()
    assert tree.output().count("config error") == 1 and "generation 1" not in tree.output()
    assert tree.proc.poll() is None and tree.workers() == old and await stream_ok(tree.url)


async def test_a_reload_with_a_list_where_a_name_goes_keeps_the_old_workers(
        tree: Tree) -> None:
    """`default_provider: [mock]` made the parser raise a TypeError, not a config error: on
    SIGHUP it escaped the master, which died and took the instance down with it."""
    old = tree.workers()
    tree.config.write_text(CONFIG.format(grace=0.5, models="fast").replace(
        "default_provider: mock", "default_provider: [mock]"))
    tree.proc.send_signal(signal.SIGHUP)
    await until(lambda: "reload failed" in tree.output(), "the reload error in the log")
    assert "default_provider: ['mock'] is not a configured provider" in tree.output()
    assert tree.proc.poll() is None and tree.workers() == old and await stream_ok(tree.url)


async def test_a_reload_of_a_file_that_is_not_utf8_keeps_the_old_workers(tree: Tree) -> None:
    """Its UnicodeDecodeError was no config error: it escaped the master on SIGHUP."""
    old = tree.workers()
    tree.config.write_bytes(CONFIG.format(grace=0.5, models="fast").encode()
                            + "# café\n".encode("latin-1"))
    tree.proc.send_signal(signal.SIGHUP)
    await until(lambda: "reload failed" in tree.output(), "the reload error in the log")
    assert (f"reload failed: config error: {tree.config}: line 10: not UTF-8 text; the running "
            "config keeps serving") in tree.output()
    assert "Traceback" not in tree.output()
    assert tree.proc.poll() is None and tree.workers() == old and await stream_ok(tree.url)


async def test_a_single_process_reloads_in_place_and_its_streams_finish(
        tmp_path: Path) -> None:
    """--workers 1 (the default on a one-CPU machine) has no master: SIGHUP starts the new
    config's app beside the old one, on the same listening socket, and the old one drains."""
    config = tmp_path / "proxy.yaml"
    config.write_text(CONFIG.format(grace=30, models="fast"))
    t = Tree(config, _free_port(), workers=1)
    try:
        await until(lambda: healthy(t.url), "the process listening")
        async with aiohttp.ClientSession() as s, s.post(t.url + "/v1/chat/completions", json={
                "model": "mock/tokens=30,tps=30", "stream": True,
                "messages": [{"role": "user", "content": "hi"}]}) as r:
            first = await r.content.readany()
            config.write_text("providers: [this is not: valid")
            t.proc.send_signal(signal.SIGHUP)
            await until(lambda: "reload failed" in t.output(), "the reload error in the log")
            config.write_text(CONFIG.format(grace=30, models="fast, newmodel"))
            t.proc.send_signal(signal.SIGHUP)
            await until(lambda: "SIGHUP: reloaded" in t.output(), "the reload in the log")

            async def models() -> list[str]:
                async with s.get(t.url + "/v1/models") as m:  # a new connection: the new app
                    return [x["id"] for x in (await m.json())["data"]]

            assert "mock/newmodel" in await models()
            assert await stream_ok(t.url)
            c = collect(sse_chunks(first + await asyncio.wait_for(r.read(), 10)))
        assert c.done and c.finish_reason == "stop" and c.error is None  # the old app's stream
        assert c.content and t.workers() == set()  # one process throughout
        t.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(t.proc.wait, 10) == 0
    finally:
        t.kill()


def test_port_0_without_workers_serves_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve --port 0` (the help's "0 for any free one") refused on any machine of more than
    one CPU: "--workers > 1 needs a fixed --port", though no --workers was given. Without
    one, any free port is one process; `--port 0 --workers 2` is still refused."""
    from streamproxy.config import load_config
    from streamproxy.server import workers

    served: list[int] = []
    monkeypatch.setattr(workers, "default_workers", lambda: 4)
    monkeypatch.setattr(workers, "raise_fd_limit", lambda: None)
    monkeypatch.setattr(workers, "run_worker", lambda config, host, port, **_: served.append(port)
                        or 0)
    assert workers.run(None, load_config(None), "127.0.0.1", 0) == 0 and served == [0]
    assert workers.run(None, load_config(None), "127.0.0.1", 0, 2) == 2 and served == [0]


# Sections checked as the app is built: auth, storage, a config's gateway settings, logging.
APP_SECTION_ERRORS = [
    ("auth: {keys: [{name: a}]}\n", "auth.keys[0]: give exactly one of `key` or `key_env`"),
    ("storage: {path: /nonexistent-dir/x.sqlite3}\n",
     "storage.path: directory /nonexistent-dir does not exist"),
    ("routes: {smart: nowhere}\n", "routes.smart: 'nowhere' is not under configs"),
    ("cache: {backend: memcached}\n", "cache.backend"),
]


@pytest.mark.parametrize(("section", "reason"), APP_SECTION_ERRORS)
def test_workers_report_a_bad_section_once_and_start_none(tmp_path: Path, section: str,
                                                           reason: str) -> None:
    """Each forked worker found the mistake as it built its app, so it was printed once per
    worker (one per CPU by default), lines interleaved, then the master's 'failed to start'.
    The master checks every section before it forks: one line, exit status 2."""
    config = tmp_path / "proxy.yaml"
    config.write_text(CONFIG.format(grace=1, models="fast") + section)
    proc = serve_refused(config, _free_port(), "3", tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"streamproxy: config error: {config}: {reason}"), proc.stderr
    assert proc.stderr.count("config error") == 1, proc.stderr
    assert "failed to start" not in proc.stderr and "started worker" not in proc.stderr


async def test_a_single_process_says_why_a_reload_failed_in_one_line(tmp_path: Path) -> None:
    """A mistake in a section checked as the app is built (auth here) was logged with the
    traceback of the app's construction; as a start-up error, it is file, key and reason."""
    config = tmp_path / "proxy.yaml"
    config.write_text(CONFIG.format(grace=1, models="fast"))
    t = Tree(config, _free_port(), workers=1)
    try:
        await until(lambda: healthy(t.url), "the process listening")
        config.write_text(CONFIG.format(grace=1, models="fast") + "auth: {keys: [{name: a}]}\n")
        t.proc.send_signal(signal.SIGHUP)
        await until(lambda: "reload failed" in t.output(), "the reload error in the log")
        assert (f"reload failed: config error: {config}: auth.keys[0]: give exactly one of "
                "`key` or `key_env`; the running config keeps serving") in t.output()
        assert "Traceback" not in t.output() and await stream_ok(t.url)
    finally:
        t.kill()


async def test_sigterm_drains_then_exits_zero(tree: Tree) -> None:
    async with aiohttp.ClientSession() as s, s.post(tree.url + "/v1/chat/completions", json={
            "model": "mock/tokens=400,tps=40", "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}) as r:
        first = await r.content.readany()
        t0 = time.monotonic()
        tree.proc.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(r.read(), 10)
    c = collect(sse_chunks(first + rest))
    assert c.error is not None and c.error["code"] == "shutting_down"  # grace 0.5 s < 10 s
    status = await asyncio.to_thread(tree.proc.wait, 10)
    assert status == 0
    assert time.monotonic() - t0 < 8.0
    assert not await healthy(tree.url)


async def _refused(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 1)
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:  # queued as the socket closed: the next try is refused
        return False
    writer.close()  # a listening socket completes the handshake even when nobody accepts
    return False


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_refuses_new_connections_while_streams_finish(tmp_path: Path,
                                                                      workers: int) -> None:
    """The sites accept on copies of the process's listening sockets: closing only the copy
    left the socket listening through the whole drain, its queue filling with connections
    nobody accepted (they hung, then were reset). With a master reloading, new connections
    the kernel gave a draining old worker hung the same way."""
    async with serving(tmp_path, CONFIG.format(grace=30, models="fast"), workers) as t:
        async with aiohttp.ClientSession() as s, s.post(t.url + "/v1/chat/completions", json={
                "model": "mock/tokens=30,tps=10", "stream": True,
                "messages": [{"role": "user", "content": "hi"}]}) as r:
            first = await r.content.readany()
            t.proc.send_signal(signal.SIGTERM)
            await until(lambda: _refused(t.url), "new connections refused", timeout=2)
            # Refused while the stream was still on (3 s of it, refusal within 2 s): not
            # because the drain had already ended.
            assert not r.content.is_eof()
            rest = await asyncio.wait_for(r.read(), 15)
        c = collect(sse_chunks(first + rest))
        assert c.done and c.finish_reason == "stop" and c.error is None
        assert await asyncio.to_thread(t.proc.wait, 10) == 0


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_reload_does_not_say_a_restart_would_change_what_the_command_line_sets(
        tmp_path: Path, workers: int) -> None:
    """--port overrides server.port: a reload whose file changed it warned that the change
    takes a restart, but a restart with the same command line listens where it does now."""
    async with serving(tmp_path, CONFIG.format(grace=0.5, models="fast"), workers) as t:
        t.config.write_text(CONFIG.format(grace=0.5, models="fast").replace(
            "server:\n", "server:\n  host: localhost\n  port: 1\n"))
        t.proc.send_signal(signal.SIGHUP)
        await until(lambda: "SIGHUP: reload" in t.output(), "the reload in the log")
        assert "reload: server.host changed; that takes a restart" in t.output()  # (no --host)
        assert "server.port" not in t.output()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_second_signal_to_a_single_process_ends_its_streams_at_once(
        tmp_path: Path, sig: signal.Signals) -> None:
    """As a second signal to the master does: a single process (no master to relay it as
    SIGQUIT) ignored it, and a second Ctrl-C left the operator waiting the whole grace."""
    async with serving(tmp_path, CONFIG.format(grace=30, models="fast"), 1) as t:
        async with aiohttp.ClientSession() as s, s.post(t.url + "/v1/chat/completions", json={
                "model": "mock/tokens=400,tps=40", "stream": True,
                "messages": [{"role": "user", "content": "hi"}]}) as r:
            first = await r.content.readany()
            t.proc.send_signal(sig)
            await until(lambda: "draining" in t.output(), "the drain to start")
            t.proc.send_signal(sig)
            rest = await asyncio.wait_for(r.read(), 5)
        c = collect(sse_chunks(first + rest))
        assert c.error is not None and c.error["code"] == "shutting_down"
        assert await asyncio.to_thread(t.proc.wait, 5) == 0


RATE_LIMITED = CONFIG + """
auth:
  keys:
    - name: team
      key: sk-proxy-team
      rate_limit: {{requests_per_minute: 1, burst: 4}}
"""


async def test_a_keys_rate_limit_is_shared_by_the_workers(tmp_path: Path) -> None:
    """24 requests, each on a fresh connection so the kernel spreads them over both workers:
    the key's burst of 4 is the instance's (per-worker buckets would grant up to 8)."""
    async with running(tmp_path, RATE_LIMITED) as t:
        statuses = []
        for _ in range(24):
            async with aiohttp.ClientSession() as s, s.get(
                    t.url + "/v1/models",
                    headers={"authorization": "Bearer sk-proxy-team"}) as r:
                statuses.append(r.status)
    assert statuses.count(200) == 4 and statuses.count(429) == 20, statuses


async def test_a_reload_after_a_failed_one_still_shares_the_rate_limit(tree: Tree) -> None:
    """A reload that fails in the workers (a key whose key_env is unset) left shared buckets
    for its generation number; the next reload reused the number and the buckets, which knew
    none of its keys, so each worker kept its own (a review saw six 200s for a burst of 3)."""
    broken = RATE_LIMITED + """    - name: other
      key_env: STREAMPROXY_TEST_UNSET_KEY
"""
    tree.config.write_text(broken.format(grace=0.5, models="fast"))
    tree.proc.send_signal(signal.SIGHUP)
    await until(lambda: "old workers keep serving" in tree.output()
                or "reload failed" in tree.output(), "the failed reload")
    tree.config.write_text(RATE_LIMITED.format(grace=0.5, models="fast"))
    old = tree.workers()
    tree.proc.send_signal(signal.SIGHUP)
    await until(lambda: (w := tree.workers()) and not (w & old) and len(w) == 2,
                "a new generation of workers")
    await until(lambda: "reloaded: generation" in tree.output(), "the reload to finish")
    statuses = []
    for _ in range(16):
        async with aiohttp.ClientSession() as s, s.get(
                tree.url + "/v1/models", headers={"authorization": "Bearer sk-proxy-team"}) as r:
            statuses.append(r.status)
    assert statuses.count(200) == 4, statuses


@pytest.mark.parametrize("workers", [2, 1])
async def test_a_reload_is_no_fresh_burst_for_a_key_at_its_limit(tmp_path: Path,
                                                                  workers: int) -> None:
    """A reload (a master's new generation, or one process in place) gave every key a full
    bucket: a client at its limit got its burst again after each SIGHUP. Its rate_limit
    unchanged, the key's spent tokens stay spent."""
    async def statuses(url: str, n: int) -> list[int]:
        got = []
        for _ in range(n):
            async with aiohttp.ClientSession() as s, s.get(
                    url + "/v1/models", headers={"authorization": "Bearer sk-proxy-team"}) as r:
                got.append(r.status)
        return got

    async with serving(tmp_path, RATE_LIMITED.format(grace=0.5, models="fast"), workers) as t:
        assert (await statuses(t.url, 6)).count(200) == 4
        t.proc.send_signal(signal.SIGHUP)
        await until(lambda: "reloaded" in t.output(), "the reload to finish")
        assert await statuses(t.url, 6) == [429] * 6, t.output()


BREAKER = """
providers:
  mock:
    type: mock
    default_model: fast
  down:
    type: anthropic
    base_url: DOWN_URL
    api_key: sk-down
    default_model: m
default_provider: mock
"""


async def test_the_workers_share_circuit_breakers(tmp_path: Path, upstream: Any) -> None:
    """A fallback whose first target answers 503, its breaker tripping after 2 failures: on
    fresh connections spread over both workers, only the first 2 requests try it (per-worker
    breakers would let each worker try it twice)."""
    upstream.status, upstream.content_type = 503, "application/json"
    upstream.body = json.dumps({"type": "error", "error": {
        "type": "overloaded_error", "message": "Overloaded"}}).encode()
    config = json.dumps({
        "strategy": {"mode": "fallback",
                     "cb_config": {"failure_threshold": 2, "cooldown_interval": 600_000}},
        "targets": [{"provider": "down"},
                    {"provider": "mock", "override_params": {"model": "fast:tokens=2"}}]})
    template = BREAKER.replace("DOWN_URL", upstream.url)
    async with running(tmp_path, template) as t:
        tried = []
        for _ in range(12):
            async with aiohttp.ClientSession() as s, s.post(
                    t.url + "/v1/chat/completions", headers={"x-portkey-config": config},
                    json={"messages": [{"role": "user", "content": "hi"}]}) as r:
                assert r.status == 200, await r.text()
                tried.append(len(upstream.requests))  # `down`'s requests so far
    assert tried == [1, 2] + [2] * 10, tried


async def test_a_single_process_reload_keeps_the_circuit_breakers(tmp_path: Path,
                                                                  upstream: Any) -> None:
    """As a master's reload does (the workers' shared table outlives it): a single process
    reloading in place built new, closed breakers, so a target known to be down was tried
    again by the next requests, while the circuit gauge still said it was open."""
    upstream.status, upstream.content_type = 503, "application/json"
    upstream.body = json.dumps({"type": "error", "error": {
        "type": "overloaded_error", "message": "Overloaded"}}).encode()
    config = json.dumps({
        "strategy": {"mode": "fallback",
                     "cb_config": {"failure_threshold": 2, "cooldown_interval": 600_000}},
        "targets": [{"provider": "down"},
                    {"provider": "mock", "override_params": {"model": "fast:tokens=2"}}]})

    async def ask(url: str) -> None:
        async with aiohttp.ClientSession() as s, s.post(
                url + "/v1/chat/completions", headers={"x-portkey-config": config},
                json={"messages": [{"role": "user", "content": "hi"}]}) as r:
            assert r.status == 200, await r.text()

    async with serving(tmp_path, BREAKER.replace("DOWN_URL", upstream.url), 1) as t:
        for _ in range(3):
            await ask(t.url)
        assert len(upstream.requests) == 2  # open after its second failure
        t.proc.send_signal(signal.SIGHUP)
        await until(lambda: "SIGHUP: reloaded" in t.output(), "the reload in the log")
        for _ in range(3):
            await ask(t.url)
        assert len(upstream.requests) == 2, t.output()


def test_a_reload_that_fails_for_any_reason_says_why_in_one_line(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Whatever the parser raises (a bug of ours, not a config error) must not end the master
    that called it: the running config stays, and the log says why."""
    from streamproxy.server import workers

    def broken(path: object) -> None:
        raise TypeError("unhashable type: 'list'")

    monkeypatch.setattr(workers, "load_config", broken)
    running: Any = object()  # (not looked at when the file does not load)
    with caplog.at_level("ERROR", logger="streamproxy.workers"):
        assert workers.reloaded_config("proxy.yaml", running) is None
    assert caplog.messages == ["reload failed: TypeError: unhashable type: 'list'; the running "
                               "config keeps serving"]


def test_a_reload_whose_workers_cannot_be_forked_keeps_the_old_ones(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A fork or pipe refused (process or file limits) raised out of the master's SIGHUP
    handling: the master died, and its workers with it."""
    import errno

    from streamproxy.config import load_config
    from streamproxy.server import master as master_module

    path = tmp_path / "proxy.yaml"
    path.write_text(CONFIG.format(grace=1, models="fast"))
    m = master_module.Master(str(path), load_config(path), "127.0.0.1", 44811, count=2)
    pipes = _open_pipes()

    def refused() -> int:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(master_module.os, "fork", refused)
    with caplog.at_level("ERROR", logger="streamproxy.workers"):
        m._start_reload()
    assert m.reload is None and m.generation == 0 and not m.workers
    assert ("reload failed: cannot start a new worker: Resource temporarily unavailable; the "
            "old workers keep serving") in caplog.messages
    assert _open_pipes() == pipes  # the ready pipe is not left open


def test_a_bad_reload_while_the_first_workers_start_keeps_them(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A SIGHUP before every first worker listened, to a config whose workers fail (an auth
    key's variable unset): the failed new worker counted as a failed start-up, and the master
    stopped the whole server (exit status 2) instead of keeping the config it was starting."""
    from streamproxy.server import master as master_module

    m = _master(tmp_path, grace=1)
    assert m.booting
    with hung_processes(1) as [booting]:
        now = time.monotonic()
        m.workers[booting.pid] = master_module.Worker(booting.pid, 0, 0, now, None)
        m.reload = (1, m.config, now + master_module.READY_TIMEOUT)
        failed = master_module.Worker(2**22 + 1, 0, 1, now, None)  # (exited: no process)
        with caplog.at_level("ERROR", logger="streamproxy.workers"):
            m._worker_exited(failed, 2 << 8)  # (a wait status: exit status 2)
        assert m.stopping is None and m.exit_status == 0 and m.reload is None
        assert booting.poll() is None and not m.workers[booting.pid].stopping
        assert any(msg.startswith("reload failed: new worker") for msg in caplog.messages)


def _open_pipes() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # (the listing's own fd is gone by now)
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:")
    return count


def test_a_worker_that_cannot_be_replaced_now_is_tried_again_later(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A fork or pipe refused while replacing a dead worker raised out of the master's loop:
    the master died, and the workers still serving with it (their parent-death signal)."""
    import errno

    from streamproxy.config import load_config
    from streamproxy.server import master as master_module

    path = tmp_path / "proxy.yaml"
    path.write_text(CONFIG.format(grace=1, models="fast"))
    m = master_module.Master(str(path), load_config(path), "127.0.0.1", 44811, count=2)
    m.booting = False
    m.restarts[1] = time.monotonic()  # slot 1's worker died

    def refused() -> int:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(master_module.os, "fork", refused)
    with caplog.at_level("WARNING", logger="streamproxy.workers"):
        m._tick()
        assert list(m.restarts) == [1] and m.restarts[1] > time.monotonic()  # later
        m.restarts[1] = time.monotonic()
        m._tick()
    assert [f"cannot start a worker for slot 1: Resource temporarily unavailable; trying "
            f"again in {delay}s" for delay in ("0.5", "1.0")] == caplog.messages


def test_a_worker_dying_young_for_hours_is_still_restarted(tmp_path: Path) -> None:
    """The back-off doubled 0.5 s with the count of failures in a row: the 1,025th (about
    8.5 hours of a crash loop at the 30 s cap) overflowed a float and ended the master."""
    from streamproxy.config import load_config
    from streamproxy.server import master as master_module

    path = tmp_path / "proxy.yaml"
    path.write_text(CONFIG.format(grace=1, models="fast"))
    m = master_module.Master(str(path), load_config(path), "127.0.0.1", 44811, count=2)
    m.booting = False
    m.failures[0] = 5000
    dead = master_module.Worker(pid=1, slot=0, generation=0, started=time.monotonic(),
                                ready_fd=None, ready=True)
    m._worker_exited(dead, signal.SIGKILL)  # (a wait status: killed by SIGKILL)
    assert m.restarts[0] - time.monotonic() == pytest.approx(master_module.BACKOFF_MAX, abs=1)


@contextlib.contextmanager
def hung_processes(count: int) -> Any:
    """Stand-ins for workers that hang: each ignores SIGTERM and SIGUSR2 (the master's words
    to drain) and sleeps (60 s at most)."""
    procs = [subprocess.Popen(
        [sys.executable, "-c", "import signal, time; [signal.signal(s, signal.SIG_IGN) for s "
         "in (signal.SIGTERM, signal.SIGUSR2)]; print(flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE) for _ in range(count)]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline()  # both are ignored by now
        yield procs
    finally:
        for p in procs:
            p.kill()
            p.wait(5)


def _master(tmp_path: Path, grace: float) -> Any:
    from streamproxy.config import load_config
    from streamproxy.server import master as master_module

    path = tmp_path / "proxy.yaml"
    path.write_text(CONFIG.format(grace=grace, models="fast"))
    return master_module.Master(str(path), load_config(path), "127.0.0.1", 44811, count=2)


@pytest.mark.parametrize("booting", [False, True])
def test_a_worker_that_never_listens_is_killed(tmp_path: Path, booting: bool) -> None:
    """A worker that hung before it listened (a replacement, or one at start-up) was waited
    for forever: only a reload's new workers had the 30 s limit."""
    from streamproxy.server import master as master_module

    m = _master(tmp_path, grace=1)
    m.booting = booting
    with hung_processes(1) as [proc]:
        late = time.monotonic() - master_module.READY_TIMEOUT - 1
        hung = m.workers[proc.pid] = master_module.Worker(proc.pid, 1, 0, late, None)
        m._tick()
        assert proc.wait(5) == -signal.SIGKILL
        m.workers.pop(proc.pid)
        m._worker_exited(hung, signal.SIGKILL)
    if booting:  # a failed start-up, as a worker that exits before it listens
        assert m.stopping is not None and m.exit_status == 1
    else:  # replaced, after the back-off of a worker that keeps failing
        assert m.restarts[1] - time.monotonic() == pytest.approx(master_module.BACKOFF_START,
                                                                 abs=0.2)


def test_an_old_worker_that_never_finishes_draining_after_a_reload_is_killed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kill timer ran only during a stop: an old worker that hung while draining after a
    reload stayed for good."""
    from streamproxy.server import master as master_module

    monkeypatch.setattr(master_module, "KILL_AFTER", 0.2)
    m = _master(tmp_path, grace=0.1)
    m.booting = False
    with hung_processes(3) as (old, *new):
        now = time.monotonic()
        m.workers[old.pid] = master_module.Worker(old.pid, 0, 0, now, None, ready=True)
        for slot, p in enumerate(new):
            m.workers[p.pid] = master_module.Worker(p.pid, slot, 1, now, None, ready=True)
        m.reload = (1, m.config, now + master_module.READY_TIMEOUT)
        m._tick()  # every new worker listens: the old one is told to drain
        assert m.generation == 1 and m.workers[old.pid].stopping
        time.sleep(0.1)
        m._tick()  # within grace + KILL_AFTER: left to drain
        assert old.poll() is None
        time.sleep(0.3)
        m._tick()
        assert old.wait(5) == -signal.SIGKILL
        assert all(p.poll() is None for p in new)


DELAYED = CONFIG.replace("server:\n", "server:\n  drain_delay: {delay}\n")
DRAINING = re.compile(r"worker \d+ draining: ")  # (once its drain delay is over)


async def _health(url: str, session: aiohttp.ClientSession | None = None) -> tuple[int, Any]:
    """/healthz on `session`'s kept-alive connection, or on a fresh one."""
    async with contextlib.AsyncExitStack() as stack:
        s = session or await stack.enter_async_context(aiohttp.ClientSession())
        async with s.get(url + "/healthz") as r:
            return r.status, await r.json()


async def _unhealthy(url: str) -> bool:
    return not await healthy(url)


@pytest.mark.parametrize("workers", [1, 2])
async def test_the_drain_delay_fails_health_at_once_and_serves_on_until_it_ends(
        tmp_path: Path, workers: int) -> None:
    """`server.drain_delay` (Kubernetes: endpoints go after SIGTERM, asynchronously): /healthz
    answers 503 on new and open connections at once, new requests are still served, and only
    when the delay ends do the listeners close. The checks are made within the delay: the
    workers' logs say none has begun to drain (a time bound on them failed on a loaded
    machine; the 503s and the stream still served show that /healthz failed at once)."""
    async with serving(tmp_path, DELAYED.format(delay=3, grace=30, models="fast"), workers) as t:
        async with aiohttp.ClientSession() as kept:
            assert (await _health(t.url, kept))[0] == 200
            t0 = time.monotonic()
            t.proc.send_signal(signal.SIGTERM)
            await until(lambda: _unhealthy(t.url), "/healthz failing", timeout=3)
            for _ in range(4):  # fresh connections: either worker
                assert await _health(t.url) == (503, {"status": "draining"})
            assert await _health(t.url, kept) == (503, {"status": "draining"})
            assert await stream_ok(t.url)
            assert not DRAINING.search(t.output()), "the checks took the whole delay"
        await until(lambda: _refused(t.url), "new connections refused", timeout=30)
        assert time.monotonic() - t0 >= 2.8
        assert DRAINING.search(t.output())
        assert await asyncio.to_thread(t.proc.wait, 10) == 0


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_second_sigterm_skips_the_drain_delay(tmp_path: Path, workers: int) -> None:
    async with serving(tmp_path, DELAYED.format(delay=120, grace=30, models="fast"), workers) as t:
        async with aiohttp.ClientSession() as s, s.post(t.url + "/v1/chat/completions", json={
                "model": "mock/tokens=20,tps=10", "stream": True,
                "messages": [{"role": "user", "content": "hi"}]}) as r:
            first = await r.content.readany()
            t.proc.send_signal(signal.SIGTERM)
            await until(lambda: _unhealthy(t.url), "/healthz failing", timeout=2)
            t.proc.send_signal(signal.SIGTERM)
            await until(lambda: _refused(t.url), "new connections refused", timeout=3)
            rest = await asyncio.wait_for(r.read(), 10)
        c = collect(sse_chunks(first + rest))  # the drain's grace still holds for it
        assert c.done and c.finish_reason == "stop" and c.error is None
        assert await asyncio.to_thread(t.proc.wait, 10) == 0


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_stray_sigusr1_is_ignored(tmp_path: Path, workers: int) -> None:
    # SIGUSR1 is the master's word to its workers (fail /healthz: drain_delay); sent to the
    # master or a single process (a log-rotation hook's habit), its default action killed it.
    async with serving(tmp_path, DELAYED.format(delay=1, grace=1, models="fast"), workers) as t:
        t.proc.send_signal(signal.SIGUSR1)
        await asyncio.sleep(0.5)
        assert t.proc.poll() is None, t.output()
        assert await _health(t.url) == (200, {"status": "ok"})
        assert await stream_ok(t.url)


def _loop_on_one_connection(url: str, reload: Callable[[], None], reloaded: Callable[[], bool],
                            path: str = "/v1/chat/completions",
                            deadline: float = 120, output: Callable[[], str] = str
                            ) -> list[str]:
    """Chat requests (or GETs of another `path`) back to back on one kept-alive connection, as
    curl, a load-test user or a load balancer's health check sends them (http.client: a new
    connection only after `Connection: close`, no retry); the errors seen. `reload` runs once,
    after the first second; the loop goes on until the old app (or worker) has closed the
    connection after an answer (its drain) and 20 more requests were answered on the next one,
    over 50 in all (`reloaded()` only goes into a failure's message): waits on those events,
    not on a time, which a loaded machine's reload overran (`deadline` only bounds a hang)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    chat = path == "/v1/chat/completions"
    body = json.dumps({"model": "mock/fast", "messages": [{"role": "user", "content": "hi"}]})
    errors: list[str] = []
    served, started = 0, time.monotonic()
    sent_at: int | None = None  # requests served when the reload was asked for
    closed_at: int | None = None  # ... when an answer after it closed the connection
    answers: list[str] = []  # the last few: status, Connection header, whether logged reloaded
    try:
        while not (closed_at is not None and served >= max(closed_at + 20, 51)):
            assert time.monotonic() - started < deadline, (
                f"the reload's drain never closed the connection: {served} served (reload "
                f"asked at {sent_at}), reloaded: {reloaded()}, errors: {errors}; the last "
                f"answers: {answers}; the proxy wrote:\n{output()[-3000:]}")
            if sent_at is None and time.monotonic() - started > 1:
                sent_at = served
                reload()
            try:
                if chat:
                    conn.request("POST", path, body, {"content-type": "application/json"})
                else:
                    conn.request("GET", path)
                answer = conn.getresponse()
                data = answer.read()
                answers = [*answers[-5:], f"#{served} {answer.status} "
                           f"{answer.getheader('connection')} will_close={answer.will_close} "
                           f"reloaded={reloaded()}"]
                if answer.status == 200:
                    served += 1
                else:
                    errors.append(f"{answer.status} {data[:100]!r}")
                # (not "and reloaded()": the master logs its reload after it signals the old
                # workers, which may close this connection before that line is written; the
                # callers wait for the line afterwards)
                if sent_at is not None and closed_at is None and answer.will_close:
                    closed_at = served
            except (OSError, http.client.HTTPException) as e:
                errors.append(repr(e))
                conn.close()
    finally:
        conn.close()
    return errors


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_client_looping_on_one_kept_alive_connection_sees_no_error_across_a_reload(
        tmp_path: Path, workers: int) -> None:
    """The old app answered a request on its kept-alive connection 503 shutting_down (or closed
    it as the request came): an error on every reload for a client that does not retry."""
    async with serving(tmp_path, CONFIG.format(grace=5, models="fast"), workers) as t:
        reloaded = "SIGHUP: reloaded" if workers == 1 else "reloaded: generation"
        errors = await asyncio.to_thread(_loop_on_one_connection, t.url,
                                         lambda: t.proc.send_signal(signal.SIGHUP),
                                         lambda: reloaded in t.output(), output=t.output)
        await until(lambda: reloaded in t.output(), "the reload's log line")
        assert errors == []


@pytest.mark.parametrize("workers", [1, 2])
async def test_healthz_on_a_kept_alive_connection_stays_200_across_a_reload(
        tmp_path: Path, workers: int) -> None:
    """A reload drains the old app (or workers) but the instance stays: a load balancer whose
    health checks reuse a connection (Envoy's do) got 503 draining from the old one, and took
    a healthy instance out on every SIGHUP."""
    async with serving(tmp_path, CONFIG.format(grace=5, models="fast"), workers) as t:
        reloaded = "SIGHUP: reloaded" if workers == 1 else "reloaded: generation"
        errors = await asyncio.to_thread(_loop_on_one_connection, t.url,
                                         lambda: t.proc.send_signal(signal.SIGHUP),
                                         lambda: reloaded in t.output(), "/healthz",
                                         output=t.output)
        await until(lambda: reloaded in t.output(), "the reload's log line")
        assert "draining" in t.output()  # (the old app or workers did drain meanwhile)
        assert errors == []


@pytest.mark.parametrize("listening", [True, False])
def test_a_stop_during_a_reload_cancels_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture,
                                           listening: bool) -> None:
    """SIGTERM while a reload's workers started: the reload stayed pending. New workers that
    said they listened after the stop completed it, and the old workers were told to drain at
    once (SIGUSR2), skipping `drain_delay`; a stop outlasting the reload's 30 s logged that the
    reload failed, as if the config were to blame."""
    from streamproxy.config import load_config
    from streamproxy.server import master as master_module

    path = tmp_path / "proxy.yaml"
    path.write_text(DELAYED.format(delay=60, grace=1, models="fast"))
    m = master_module.Master(str(path), load_config(path), "127.0.0.1", 44811, count=2)
    m.booting = False
    sent: list[tuple[int, int]] = []
    real_kill = os.kill
    monkeypatch.setattr(master_module.os, "kill",
                        lambda pid, sig: (sent.append((pid, sig)), real_kill(pid, sig)))
    with hung_processes(3) as (old, *new), caplog.at_level("INFO", logger="streamproxy.workers"):
        now = time.monotonic()
        m.workers[old.pid] = master_module.Worker(old.pid, 0, 0, now, None, ready=True)
        for slot, p in enumerate(new):
            m.workers[p.pid] = master_module.Worker(p.pid, slot, 1, now, None)
        m.reload = (1, m.config, now + 0.2)
        m._stop()
        assert m.drain_at is not None and (old.pid, signal.SIGUSR1) in sent
        for p in new:  # their ready bytes, read after the stop (or none: still starting)
            m.workers[p.pid].ready = listening
        m._tick()
        time.sleep(0.3)  # past the reload's deadline
        m._tick()
        assert m.generation == 0 and m.reload is None and m.drain_at is not None
        assert not [s for s in sent if s[1] == signal.SIGUSR2]
        assert not [msg for msg in caplog.messages if "reload failed" in msg]


async def test_a_single_process_reload_keeps_its_admission_limit(tmp_path: Path) -> None:
    """`server.max_concurrent_streams` bounds one worker's streams (its memory): after a reload
    in place the new app counted from 0 while the old app's streams ran on in the same
    process, which then served up to twice the limit for as long as they lasted."""
    limited = CONFIG.replace("server:\n", "server:\n  max_concurrent_streams: 2\n")
    async with serving(tmp_path, limited.format(grace=30, models="fast"), 1) as t, \
            aiohttp.ClientSession() as s:
        body = {"model": "mock/tokens=40,tps=10", "stream": True,
                "messages": [{"role": "user", "content": "hi"}]}
        async with s.post(t.url + "/v1/chat/completions", json=body) as a, \
                s.post(t.url + "/v1/chat/completions", json=body) as b:
            assert a.status == b.status == 200
            await a.content.readany()
            await b.content.readany()
            t.proc.send_signal(signal.SIGHUP)
            await until(lambda: "SIGHUP: reloaded" in t.output(), "the reload in the log")
            async with aiohttp.ClientSession() as fresh, fresh.post(  # the new app's
                    t.url + "/v1/chat/completions", json=body) as third:
                assert third.status == 503
                assert (await third.json())["error"]["code"] == "overloaded"
            a.close()
            b.close()
        await until(lambda: stream_ok(t.url, "mock/fast:tokens=2"), "a slot free again",
                    timeout=10)


@pytest.mark.parametrize(("env", "warned"), [("", True), ("warning", False)])
def test_a_reload_says_the_log_level_takes_a_restart_unless_the_environment_sets_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        env: str, warned: bool) -> None:
    """STREAMPROXY_LOG_LEVEL overrides server.log_level: with it set, a restart would not
    change the level either, and the reload said it would take one."""
    from streamproxy.config import load_config
    from streamproxy.server import workers

    config = tmp_path / "proxy.yaml"
    config.write_text(CONFIG.format(grace=1, models="fast"))
    running = load_config(str(config))
    config.write_text(CONFIG.format(grace=1, models="fast").replace(
        "server:\n", "server:\n  log_level: debug\n"))
    monkeypatch.setenv("STREAMPROXY_LOG_LEVEL", env)
    with caplog.at_level("WARNING", logger="streamproxy.workers"):
        assert workers.reloaded_config(str(config), running) is not None
    expected = ["reload: server.log_level changed; that takes a restart (the running value "
                "stays)"] if warned else []
    assert caplog.messages == expected


def test_an_empty_prometheus_multiproc_dir_is_as_unset_for_the_master(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`PROMETHEUS_MULTIPROC_DIR=` (an env file's empty line, a chart's empty value) is unset
    for prometheus-client, but the master made no directory since the name was there: each
    worker served its own counts, and every scrape showed whichever worker answered it."""
    m = _master(tmp_path, grace=1)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")
    seen: list[str] = []
    monkeypatch.setattr(m, "_spawn", lambda slot, generation, config: seen.append(
        os.environ["PROMETHEUS_MULTIPROC_DIR"]))
    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1,
               signal.SIGUSR2)
    saved = {sig: signal.getsignal(sig) for sig in handled}
    try:
        assert m.run() == 0  # (no worker started: it returns at once)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert len(seen) == 2 and seen[0] == seen[1] != ""  # one directory, the workers' both
    assert not os.path.exists(seen[0])  # the master's own: removed at exit


def test_a_metrics_directory_that_is_not_one_is_said_once_at_start(tmp_path: Path) -> None:
    """Each worker found it as it built its metrics: the error once per worker, then the
    master's traceback for each one whose files it could not retire."""
    config = tmp_path / "proxy.yaml"
    config.write_text(CONFIG.format(grace=1, models="fast"))
    missing = tmp_path / "missing"
    proc = serve_refused(config, _free_port(), "2", missing)
    assert proc.returncode == 2
    assert proc.stderr == (f"streamproxy: config error: env PROMETHEUS_MULTIPROC_DIR: "
                           f"'{missing}' is not a directory\n")


SLOW_RELOAD = """
import asyncio, sys
from streamproxy.server import workers

started = workers._start_generation

async def slow(config, listeners, running=None):
    if running is not None:  # a reload's app: built slowly (a big config, a slow disk)
        print("building the reload's app", flush=True)
        await asyncio.sleep(1.0)
    return await started(config, listeners, running)

workers._start_generation = slow
from streamproxy.cli import main
main(["serve", "--config", sys.argv[1], "--port", sys.argv[2], "--workers", "1"])
"""


@contextlib.asynccontextmanager
async def _slow_reloading(config: Path) -> AsyncIterator[tuple[subprocess.Popen[bytes], str,
                                                                Path]]:
    """A single process on `config` whose reloads build their app slowly (SLOW_RELOAD), once
    it listens: the process, its URL and its log; the tree killed at the end."""
    port = _free_port()
    url, log = f"http://127.0.0.1:{port}", config.parent / "out.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", SLOW_RELOAD, str(config), str(port)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        await until(lambda: healthy(url), "listening")
        yield proc, url, log
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


async def test_a_stop_during_a_single_process_reload_keeps_the_new_configs_drain_delay(
        tmp_path: Path) -> None:
    """A SIGTERM while a reload's app was being built decided on the old config's
    drain_delay (0: none), though the reload then completed and the new config's app was the
    one stopped: it drained at once, its 2 s of failing /healthz skipped."""
    config = tmp_path / "proxy.yaml"
    config.write_text(DELAYED.format(delay=0, grace=1, models="fast"))
    async with _slow_reloading(config) as (proc, url, log):
        config.write_text(DELAYED.format(delay=2, grace=1, models="fast"))
        proc.send_signal(signal.SIGHUP)
        await until(lambda: "building the reload's app" in log.read_text(), "the reload")
        proc.send_signal(signal.SIGTERM)
        await until(lambda: "serving 2s more before draining" in log.read_text(),
                    "the new config's drain delay", timeout=5)
        assert await _health(url) == (503, {"status": "draining"})
        assert await stream_ok(url)
        assert await asyncio.to_thread(proc.wait, 10) == 0


async def test_the_master_logs_an_empty_host_as_an_address(tmp_path: Path) -> None:
    # "2 workers on http://:PORT": no URL a user can paste (server.host "", every interface).
    text = CONFIG.format(grace=0.5, models="fast").replace("server:\n", "server:\n  host: ''\n")
    async with serving(tmp_path, text, 2) as t:
        assert f"2 workers on http://0.0.0.0:{t.port} (every interface);" in t.output()


def test_an_empty_host_listens_on_every_interface_with_workers_too() -> None:
    """`server.host: ""` (every interface, as the listening sockets take it) served with one
    process, but --workers N refused to start: "cannot listen on :8787: Name or service not
    known", the free-port probe looking "" up as a name."""
    from streamproxy.server import workers

    port = _free_port()
    workers._check_port_free("", port)  # (raised socket.gaierror)
    # Still the probe: in use, it is refused.
    with socket.create_server(("", port)), pytest.raises(OSError) as refused:
        workers._check_port_free("", port)
    assert not isinstance(refused.value, socket.gaierror)


@pytest.mark.parametrize(("argv", "host", "pinned"), [
    (["--host", ""], "", {"host"}),  # every interface, as `server.host: ""` is
    (["--host", "[::1]"], "::1", {"host"}),
    ([], "10.1.2.3", set()),  # the config's
])
def test_serve_host_from_the_command_line_wins_even_when_empty(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], host: str,
        pinned: set[str]) -> None:
    """`serve --host ""` was ignored (`args.host or config`): with a config naming one host an
    operator could not ask for every interface from the command line (and, not counted as
    set, a reload said a changed server.host "takes a restart" of what the command line
    sets). "" is every interface, as `server.host: ""` is."""
    from streamproxy import cli
    from streamproxy.observe import access_log
    from streamproxy.server import workers

    path = tmp_path / "c.yaml"
    path.write_text(CONFIG.format(grace=0.5, models="fast").replace(
        "server:\n", "server:\n  host: 10.1.2.3\n"))
    served: list[tuple[str, frozenset[str]]] = []
    monkeypatch.setattr(cli, "_install_uvloop", lambda: None)
    monkeypatch.setattr(access_log, "configure_logging", lambda config: None)
    monkeypatch.setattr(workers, "run", lambda path, config, host, port, count, pinned:
                        served.append((host, pinned)) or 0)
    with pytest.raises(SystemExit) as done:
        cli.main(["serve", "--config", str(path), *argv])
    assert done.value.code == 0
    assert served == [(host, frozenset(pinned))]


def test_a_master_whose_every_worker_keeps_failing_gives_up(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """After start-up, workers that all failed (a broken import, a lost permission) were
    restarted for good: the master lived on serving nothing, its exit status never telling a
    supervisor (systemd's Restart=on-failure, a pod's restart) that the instance was down."""
    from streamproxy.server import master as master_module

    m = _master(tmp_path, grace=1)
    m.booting = False
    now = time.monotonic()
    with caplog.at_level("WARNING", logger="streamproxy.workers"):
        for _ in range(master_module.GIVE_UP):
            for slot in (0, 1):
                assert m.stopping is None
                m._worker_exited(master_module.Worker(2**22 + slot, slot, 0, now, None),
                                 1 << 8)  # (a wait status: exit status 1, before it listened)
    assert m.stopping is not None and m.exit_status == 1 and not m.restarts
    assert caplog.messages[-1] == (f"every worker failed {master_module.GIVE_UP} times in a "
                                   "row, the last: status 1; giving up")


def test_a_master_with_a_worker_serving_restarts_the_failing_ones(tmp_path: Path) -> None:
    """One slot failing many times while another serves is still restarted (its back-off
    capped); and a reload's new generation starts its own count."""
    from streamproxy.server import master as master_module

    m = _master(tmp_path, grace=1)
    m.booting = False
    now = time.monotonic()
    with hung_processes(1) as [serving]:
        m.workers[serving.pid] = master_module.Worker(serving.pid, 1, 0, now, None, ready=True)
        m.failures = {0: 50, 1: 50}  # (slot 1's too: its worker failed before this one)
        m._worker_exited(master_module.Worker(2**22, 0, 0, now, None), 1 << 8)
        assert m.stopping is None and 0 in m.restarts
        new = master_module.Worker(2**22 + 1, 0, 1, now, None, ready=True)
        m.workers[new.pid] = new
        m.workers[2**22 + 2] = master_module.Worker(2**22 + 2, 1, 1, now, None, ready=True)
        m.reload = (1, m.config, now + master_module.READY_TIMEOUT)
        m._tick()
        assert m.generation == 1 and m.failures == {}
        m.workers.clear()
    m._worker_exited(new, 1 << 8)
    assert m.stopping is None and m.failures == {0: 1}


@contextlib.contextmanager
def _patched_server(tmp_path: Path, source: str, workers: int, grace: float,
                    args: tuple[str, ...] = ()) -> Iterator[tuple[subprocess.Popen[bytes], Path,
                                                                  int]]:
    """`serve` run by a script that patches the server first (`source`, handed `args` before
    the command line): the process, its log file and its port; the tree killed at the end."""
    script = tmp_path / "patched.py"
    script.write_text(source)
    config = tmp_path / "proxy.yaml"
    config.write_text(CONFIG.format(grace=grace, models="fast"))
    port = _free_port()
    log = tmp_path / "proxy.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(script), *args, "serve", "--config", str(config),
             "--port", str(port), "--workers", str(workers)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    try:
        yield proc, log, port
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


GIVING_UP = """
import os, sys
from streamproxy import cli
from streamproxy.server import master
master.BACKOFF_START, master.GIVE_UP = 0.05, 3
real = master.run_worker
def run_worker(*args, **kwargs):  # a replacement's import fails once the flag file exists
    if os.path.exists(sys.argv[1]):
        raise ImportError("No module named 'broken'")
    return real(*args, **kwargs)
master.run_worker = run_worker
cli.main(sys.argv[2:])
"""


async def test_a_master_gives_up_when_no_worker_can_start_again(tmp_path: Path) -> None:
    """The real process tree: both workers killed, their replacements failing at start; the
    master stops with a non-zero status instead of restarting them for good."""
    flag = tmp_path / "broken"
    with _patched_server(tmp_path, GIVING_UP, 2, 0.5, (str(flag),)) as (proc, log, _):
        await until(lambda: "all 2 workers listening" in log.read_text(), "the workers")
        flag.touch()
        for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():
            os.kill(int(pid), signal.SIGKILL)
        assert await asyncio.to_thread(proc.wait, 30) == 1
        assert "every worker failed 3 times in a row, the last: status 1; giving up" in (
            log.read_text())


HUP_AT_START = """
import os, signal, sys
from streamproxy import cli
from streamproxy.server import workers
claim = workers._claim_metrics_dir
def hup_then_claim():  # a `systemctl reload` while the server is still starting
    os.kill(os.getpid(), signal.SIGHUP)
    return claim()
workers._claim_metrics_dir = hup_then_claim
cli.main(sys.argv[1:])
"""


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_sighup_while_the_server_starts_reloads_once_it_serves(
        tmp_path: Path, workers: int) -> None:
    """A SIGHUP before the process handled it (starting: a reload right after a start) took
    its default action: the server died, without a word, and systemd counts a death by
    SIGHUP as a clean exit (Restart=on-failure does not restart it)."""
    reloaded = "SIGHUP: reloaded" if workers == 1 else "reloaded: generation 1"
    with _patched_server(tmp_path, HUP_AT_START, workers, 0.5) as (proc, log, port):
        await until(lambda: proc.poll() is not None or reloaded in log.read_text(),
                    "the reload")
        assert proc.poll() is None, log.read_text()
        assert await stream_ok(f"http://127.0.0.1:{port}")


def test_a_failed_start_with_a_drain_delay_stops_without_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker failing at start-up stopped the server through the drain delay: the master
    waited it out (up to 300 s), its healthy workers serving meanwhile, before it exited
    non-zero. A start that failed has nobody to hand its traffic over to: it stops at once."""
    from streamproxy.config import load_config
    from streamproxy.server import master as master_module

    path = tmp_path / "proxy.yaml"
    path.write_text(DELAYED.format(delay=60, grace=1, models="fast"))
    m = master_module.Master(str(path), load_config(path), "127.0.0.1", 44811, count=2)
    sent: list[tuple[int, int]] = []
    real_kill = os.kill
    monkeypatch.setattr(master_module.os, "kill",
                        lambda pid, sig: (sent.append((pid, sig)), real_kill(pid, sig)))
    with hung_processes(1) as [listening]:
        now = time.monotonic()
        m.workers[listening.pid] = master_module.Worker(listening.pid, 0, 0, now, None,
                                                        ready=True)
        m._worker_exited(master_module.Worker(2**22, 1, 0, now, None), 2 << 8)
        assert m.stopping is not None and m.exit_status == 2
        assert m.drain_at is None and sent == [(listening.pid, signal.SIGTERM)]


@pytest.mark.parametrize("completes", [True, False])
def test_a_sighup_during_a_reload_reloads_again_after_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        completes: bool) -> None:
    """A second SIGHUP while a reload's workers started was ignored with a warning: a config
    change made between the two signals was not applied until yet another SIGHUP. It is now
    queued (one, however many come) and runs once the reload under way completes or fails."""
    from streamproxy.server import master as master_module

    m = _master(tmp_path, grace=1)
    m.booting = False
    spawned: list[tuple[int, int, Any]] = []
    monkeypatch.setattr(m, "_spawn", lambda slot, gen, config: spawned.append((slot, gen,
                                                                               config)))
    with hung_processes(3) as (old, *new), caplog.at_level("INFO", logger="streamproxy.workers"):
        now = time.monotonic()
        m.workers[old.pid] = master_module.Worker(old.pid, 0, 0, now, None, ready=True)
        for slot, p in enumerate(new):
            m.workers[p.pid] = master_module.Worker(p.pid, slot, 1, now, None, ready=completes)
        m.reload = (next(m._generations), m.config,
                    now if not completes else now + master_module.READY_TIMEOUT)
        (tmp_path / "proxy.yaml").write_text(CONFIG.format(grace=1, models="fast, slow"))
        m._signals = [signal.SIGHUP, signal.SIGHUP]
        m._handle_signals()
        assert m.reload[0] == 1 and not spawned
        time.sleep(0.01)
        m._tick()  # the reload completes (or is past its deadline): the queued one starts
        assert m.generation == (1 if completes else 0)
        assert m.reload is not None and m.reload[0] == 2
        assert [(slot, gen) for slot, gen, _ in spawned] == [(0, 2), (1, 2)]
        assert spawned[0][2].providers["mock"].models == ("fast", "slow")
        m._tick()
        assert len(spawned) == 2  # once, for both signals
        m.workers.clear()


async def test_a_sighup_during_a_single_process_reload_reloads_again_after_it(
        tmp_path: Path) -> None:
    """A single process ignored a SIGHUP that came while a reload's app was being built: an
    edit made between the two signals was not applied until yet another SIGHUP."""
    config = tmp_path / "proxy.yaml"
    config.write_text(CONFIG.format(grace=1, models="fast"))
    async with _slow_reloading(config) as (proc, url, log):
        proc.send_signal(signal.SIGHUP)
        await until(lambda: "building the reload's app" in log.read_text(), "the reload")
        config.write_text(CONFIG.format(grace=1, models="fast, slow"))
        proc.send_signal(signal.SIGHUP)
        proc.send_signal(signal.SIGHUP)
        await until(lambda: log.read_text().count("SIGHUP: reloaded") == 2, "a second reload",
                    timeout=10)

        async def models() -> list[str]:
            async with aiohttp.ClientSession() as s, s.get(url + "/v1/models") as r:
                return [m["id"] for m in (await r.json())["data"]]

        assert "mock/slow" in await models()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 10) == 0
        assert log.read_text().count("SIGHUP: reloaded") == 2  # once, for both signals


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_second_signal_and_a_sighup_during_a_stop_are_logged_once(
        tmp_path: Path, workers: int) -> None:
    """A second SIGTERM (which ends the streams at once) and a SIGHUP (ignored) during a stop
    left no line in the log, the master's or the workers': an operator could not tell why
    streams ended early, nor that the reload was not done."""
    async with serving(tmp_path, CONFIG.format(grace=30, models="fast"), workers) as t:
        async with aiohttp.ClientSession() as s, s.post(t.url + "/v1/chat/completions", json={
                "model": "mock/tokens=400,tps=40", "stream": True,
                "messages": [{"role": "user", "content": "hi"}]}) as r:
            first = await r.content.readany()
            t.proc.send_signal(signal.SIGTERM)
            await until(lambda: "draining: " in t.output(), "the drain to start")
            for sig in (signal.SIGHUP, signal.SIGHUP, signal.SIGTERM, signal.SIGTERM):
                t.proc.send_signal(sig)
            rest = await asyncio.wait_for(r.read(), 5)
        c = collect(sse_chunks(first + rest))
        assert c.error is not None and c.error["code"] == "shutting_down"
        assert await asyncio.to_thread(t.proc.wait, 5) == 0
    out = t.output()
    assert out.count("SIGHUP ignored: stopping") == 1, out
    told = re.findall(r"worker (\d+): told to end its requests at once", out)
    assert told and len(told) == len(set(told)) <= workers, out  # (an idle one may be gone)
    if workers > 1:
        assert out.count("stopping: a second signal: the workers end their requests now") == 1


SLOW_CLEANUP = """
import asyncio, sys
from streamproxy import cli
from streamproxy.server import workers
drained = workers.drain_and_stop
async def slow_drain(*args, **kwargs):  # a worker's own worst case past its grace: requests
    await drained(*args, **kwargs)      # ended that take their whole wait, then connections
    await asyncio.sleep(getattr(workers, "DRAIN_OVERRUN", 10.0) + 0.5)  # (and its clean-up)
workers.drain_and_stop = slow_drain
cli.main(sys.argv[1:])
"""


async def test_a_worker_draining_within_its_own_worst_case_is_not_killed(
        tmp_path: Path) -> None:
    """A worker's drain may take its grace, then 5 s for the requests it ended, then aiohttp's
    5 s shutdown timeout, and its clean-up: the master killed it at grace + 10 s, logging an
    error for a worker that was only draining as designed."""
    with _patched_server(tmp_path, SLOW_CLEANUP, 2, 0.2) as (proc, log, _):
        await until(lambda: "all 2 workers listening" in log.read_text(), "the workers")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
        out = log.read_text()
        assert "killing it" not in out and out.count("exited (status 0)") == 2, out


@pytest.mark.parametrize(("pinned", "warned"), [(frozenset(), True),
                                                (frozenset({"workers"}), False)])
def test_a_reload_says_server_workers_takes_a_restart_unless_the_flag_sets_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, pinned: frozenset[str],
        warned: bool) -> None:
    """The master's worker count is set at start: a reload's new one is not taken."""
    from streamproxy.config import load_config
    from streamproxy.server import workers

    config = tmp_path / "proxy.yaml"
    config.write_text(CONFIG.format(grace=1, models="fast"))
    running = load_config(str(config))
    config.write_text(CONFIG.format(grace=1, models="fast").replace(
        "server:\n", "server:\n  workers: 3\n"))
    with caplog.at_level("WARNING", logger="streamproxy.workers"):
        assert workers.reloaded_config(str(config), running, pinned) is not None
    expected = ["reload: server.workers changed; that takes a restart (the running value "
                "stays)"] if warned else []
    assert caplog.messages == expected


def test_a_worker_killed_by_a_real_time_signal_is_replaced(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A worker's death by a signal the `signal.Signals` enum does not name (SIGRTMIN+1 to
    SIGRTMAX-1, whose default action kills) raised ValueError in the master's loop: the
    master died, and every worker drained with it (their parent-death signal)."""
    from streamproxy.server import master as master_module

    m = _master(tmp_path, grace=1)
    m.booting = False
    long_ago = time.monotonic() - 3600
    rt = signal.SIGRTMIN + 6
    dead = master_module.Worker(2**22, 1, 0, long_ago, None, ready=True)
    with caplog.at_level("WARNING", logger="streamproxy.workers"):
        m._worker_exited(dead, rt)  # (a wait status: killed by that signal)
    assert m.stopping is None and 1 in m.restarts
    assert caplog.messages == [f"worker {2**22} died (signal SIGRTMIN+6); restarting slot 1 "
                               "in 0.0s"]


STOP_AS_WORKERS_FORK = """
import os, signal, sys, time
from streamproxy import cli
from streamproxy.server import master
become = master.Master._become_worker
def late_worker(self):  # a child not run yet (a loaded machine) when its master stops
    deadline = time.monotonic() + 30
    while (not self._signals and signal.SIGTERM not in signal.sigpending()
           and time.monotonic() < deadline):
        time.sleep(0.01)
    become(self)
master.Master._become_worker = late_worker
spawn = master.Master._spawn
def spawn_then_stop(self, slot, generation, config):  # a SIGTERM as the last one is forked
    spawn(self, slot, generation, config)
    if slot == self.count - 1:
        os.kill(os.getpid(), signal.SIGTERM)
master.Master._spawn = spawn_then_stop
cli.main(sys.argv[1:])
"""


async def test_a_stop_that_reaches_a_worker_before_its_handlers_ends_it(
        tmp_path: Path) -> None:
    """The master's SIGTERM to a worker forked a moment before, which had not yet replaced the
    master's signal handlers it inherits, was taken by them (a flag in a master's state the
    worker never reads): the worker started serving as if nothing had come, and the stop
    waited its grace + 15 s to SIGKILL it, the connections it accepted meanwhile reset."""
    with _patched_server(tmp_path, STOP_AS_WORKERS_FORK, 2, 0.5) as (proc, log, _):
        assert await asyncio.to_thread(proc.wait, 60) == 0
        out = log.read_text()
        assert "listening on" not in out and "killing it" not in out, out
        assert out.count("exited (signal SIGTERM)") == 2, out


HUP_TO_A_STARTING_WORKER = """
import os, signal, sys
from streamproxy import cli
from streamproxy.server import master
become = master.Master._become_worker
def hup_while_starting(self):  # a SIGHUP to the process group (`tini -g`, `kill -HUP -PGID`)
    become(self)               # as the workers start
    os.kill(os.getpid(), signal.SIGHUP)
master.Master._become_worker = hup_while_starting
cli.main(sys.argv[1:])
"""


async def test_a_sighup_to_a_worker_while_it_starts_does_not_kill_it(tmp_path: Path) -> None:
    """A worker ignores SIGHUP (its master reloads), but one still starting took the default
    action, death: at start-up that was a failed start, and the whole server stopped with exit
    status 1 (a reload's new workers: a failed reload). It is held until the worker ignores
    it, as the master holds it until it can reload."""
    with _patched_server(tmp_path, HUP_TO_A_STARTING_WORKER, 2, 0.5) as (proc, log, port):
        await until(lambda: proc.poll() is not None or "all 2 workers listening" in
                    log.read_text(), "the workers")
        assert proc.poll() is None, log.read_text()
        assert await stream_ok(f"http://127.0.0.1:{port}")


FORK_REFUSED_AT_START = """
import errno, os, sys
from streamproxy import cli
from streamproxy.server import master
real, calls = os.fork, []
def fork():  # the second worker's fork refused (a process limit)
    calls.append(1)
    if len(calls) == 2:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
    return real()
master.os.fork = fork
cli.main(sys.argv[1:])
"""


async def test_a_worker_that_cannot_be_forked_at_start_stops_the_server_in_one_line(
        tmp_path: Path) -> None:
    """A fork or pipe refused while the first workers started escaped the master: a traceback,
    the metrics directory removed under the worker already forked (which then failed on it)."""
    with _patched_server(tmp_path, FORK_REFUSED_AT_START, 2, 0.5) as (proc, log, _):
        assert await asyncio.to_thread(proc.wait, 60) == 1
        out = log.read_text()
    assert ("cannot start a worker for slot 1: Resource temporarily unavailable; stopping"
            in out), out
    assert "Traceback" not in out and "config error" not in out, out
    assert re.search(r"worker \d+ exited", out), out  # the one forked was waited for


async def test_sigquit_to_the_master_is_a_fast_stop(tmp_path: Path) -> None:
    """The master did not handle SIGQUIT (a STOPSIGNAL some images and runtimes send): it
    died of it, dumping core, its workers left to drain their whole grace through the
    parent-death signal with nobody to wait for them. As gunicorn's and a single process's:
    no drain delay, streams ended now, exit status 0."""
    config = DELAYED.format(delay=20, grace=30, models="fast")
    async with serving(tmp_path, config, 2) as t:
        async with aiohttp.ClientSession() as s, s.post(t.url + "/v1/chat/completions", json={
                "model": "mock/tokens=400,tps=40", "stream": True,
                "messages": [{"role": "user", "content": "hi"}]}) as r:
            first = await r.content.readany()
            t.proc.send_signal(signal.SIGQUIT)
            rest = await asyncio.wait_for(r.read(), 20)  # (grace and delay: 30 s and 20 s)
        c = collect(sse_chunks(first + rest))
        assert c.error is not None and c.error["code"] == "shutting_down"
        assert await asyncio.to_thread(t.proc.wait, 20) == 0
        out = t.output()
    assert "stopping: SIGQUIT: the workers end their requests now" in out, out
    assert out.count("exited (signal") + out.count("exited (status 0)") == 2, out


@pytest.mark.parametrize("case", ["stopping", "restarting"])
def test_all_workers_listening_is_said_only_when_every_slot_listens(
        tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture) -> None:
    """The master said "all 1 workers listening" (of 2) when the workers left listened: during
    a stop, the other having exited before it listened; at start-up, the other slot's worker
    dead (after it listened) and waiting to be restarted."""
    from streamproxy.server import master as master_module

    m = _master(tmp_path, grace=1)
    now = time.monotonic()
    m.workers[2**22] = master_module.Worker(2**22, 0, 0, now, None, ready=True)
    if case == "stopping":
        m.stopping = now
    else:
        m.restarts[1] = now + 0.5
    with caplog.at_level("INFO", logger="streamproxy.workers"):
        m._check_ready()
        assert not any("listening" in msg for msg in caplog.messages), caplog.messages
        if case == "restarting":  # its replacement listens: now all do
            del m.restarts[1]
            m.workers[2**22 + 1] = master_module.Worker(2**22 + 1, 1, 0, now, None, ready=True)
            m._check_ready()
            assert caplog.messages == ["all 2 workers listening"] and not m.booting
