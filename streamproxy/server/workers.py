"""Serving processes: one worker, or a prefork master supervising N of them.

A **worker** is one asyncio process serving the app. It listens on its own socket; with
several workers every one binds the same port with `SO_REUSEPORT` and the kernel spreads new
connections across them. On SIGTERM (or SIGINT when it runs alone) it drains (server/drain.py):
stops accepting, `/healthz` answers 503, running requests get `server.shutdown_grace` seconds,
then the rest end with an OpenAI error. SIGQUIT drains with no grace. A worker running alone
(no master) reloads on SIGHUP in place: the new config's app accepts on the same listening
sockets, then the old app drains.

The **master** (`--workers N`, N > 1) forks the workers before any event loop exists and only
supervises them; it never serves. It has no asyncio loop either: signal handlers set flags and
wake a `select()` through a self-pipe.

- A worker that dies is replaced, after a backoff that doubles while it keeps dying young.
- SIGHUP re-reads the config file and starts a new generation of workers next to the old
  ones; once every new worker listens, the old ones drain. A config that does not load, or
  new workers that do not come up, are reported and the old workers keep serving.
- SIGTERM / SIGINT: every worker drains, the master exits 0 when they are gone. A second
  signal ends the streams at once (SIGQUIT to the workers); SIGKILL after grace + 10 s.
- A master that dies (kill -9) takes its workers with it: each gets SIGTERM from the kernel
  (Linux's parent-death signal) and drains, instead of serving on unsupervised.

`SO_REUSEPORT` caveat: connections still waiting in a draining worker's accept queue are reset
when it closes its socket (Linux ≥ 5.14 can migrate them: sysctl net.ipv4.tcp_migrate_req=1).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import itertools
import logging
import os
import resource
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiohttp import web

from streamproxy.config import Config, ConfigError, load_config
from streamproxy.server.heap import keep_heap_cushion
from streamproxy.server.shared_breakers import SharedBreakerTable
from streamproxy.server.shared_memory import Shared, inherit
from streamproxy.server.shared_rate import SharedBuckets

log = logging.getLogger("streamproxy.workers")

READY_TIMEOUT = 30.0  # seconds a new worker has to start listening
BACKOFF_START, BACKOFF_MAX = 0.5, 30.0
YOUNG = 10.0  # a worker that dies younger than this counts as crash-looping
KILL_AFTER = 10.0  # seconds past the grace period before a stuck worker is killed
PROMETHEUS_ENV = "PROMETHEUS_MULTIPROC_DIR"
BACKLOG = 2048  # listen(2) queue: benchmarks open thousands of connections at once
GC_THRESHOLD = 10_000  # net container allocations between young collections (CPython: 700)
_PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies

# Called in the master with the pid of every worker that exits (e.g. metrics cleanup).
CHILD_EXIT_HOOKS: list[Callable[[int], None]] = []


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


def raise_fd_limit() -> None:
    """Every stream holds two sockets; take the whole fd allowance the system grants."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run(config_path: str | None, config: Config, host: str, port: int,
        workers: int | None = None) -> int:
    """Serve until stopped; returns the process exit status."""
    raise_fd_limit()
    workers = default_workers() if workers is None else workers
    if workers <= 1:
        return run_worker(config, host, port, config_path=config_path)
    if port == 0:
        print("streamproxy: --workers > 1 needs a fixed --port (each worker binds it)",
              file=sys.stderr)
        return 2
    try:
        _check_port_free(host, port)
    except OSError as e:
        print(f"streamproxy: cannot listen on {host}:{port}: {e.strerror or e}", file=sys.stderr)
        return 1
    return Master(config_path, config, host, port, workers).run()


def _check_port_free(host: str, port: int) -> None:
    """The workers bind with SO_REUSEPORT, which another instance's workers would share
    without a word: two configs answering on one port. A bind without it fails while anyone
    listens there (TIME_WAIT aside: SO_REUSEADDR)."""
    for family, kind, proto, _, address in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)


# -- a worker -------------------------------------------------------------------------------------

def run_worker(config: Config, host: str, port: int, *, reuse_port: bool = False,
               ready_fd: int | None = None, supervised: bool = False,
               config_path: str | None = None) -> int:
    try:
        asyncio.run(_serve(config, host, port, reuse_port, ready_fd, supervised, config_path))
    except KeyboardInterrupt:
        pass
    except OSError as e:
        print(f"streamproxy: cannot listen on {host}:{port}: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


@dataclass(slots=True)
class _Generation:
    """One config's app, serving on the process's listening sockets."""
    app: web.Application
    runner: web.AppRunner
    sites: list[web.BaseSite]


async def _start_generation(config: Config, listeners: list[socket.socket]) -> _Generation:
    from streamproxy.server.app import create_app, http_limits
    from streamproxy.server.front import make_runner

    app = create_app(config)
    runner = make_runner(app, handler_cancellation=True, access_log=None,
                         shutdown_timeout=5.0, **http_limits(config))
    await runner.setup()
    sites: list[web.BaseSite] = []
    try:
        for sock in listeners:  # a copy each: stopping a site closes the socket it was given
            site = web.SockSite(runner, sock.dup(), backlog=BACKLOG)
            await site.start()
            sites.append(site)
    except BaseException:
        await runner.cleanup()
        raise
    return _Generation(app, runner, sites)


async def _serve(config: Config, host: str, port: int, reuse_port: bool, ready_fd: int | None,
                 supervised: bool, config_path: str | None) -> None:
    from streamproxy.server.app import STATE

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    grace = [config.server.shutdown_grace]
    listeners = _listen(host, port, reuse_port)
    try:
        current = await _start_generation(config, listeners)
    except BaseException:
        _close_all(listeners)
        raise
    retiring: dict[asyncio.Task[None], _Generation] = {}  # apps draining after a reload
    reloading: list[asyncio.Task[None]] = []

    def quit_now() -> None:
        grace[0] = 0.0
        stop.set()
        for generation in (current, *retiring.values()):
            drain = generation.app[STATE].drain
            if drain.draining:
                drain.abort_all()

    def reload() -> None:
        if reloading:
            log.warning("SIGHUP ignored: a reload is already in progress")
        elif not stop.is_set():
            reloading.append(loop.create_task(_reload()))

    async def _reload() -> None:
        nonlocal current
        try:
            new_config = _reloaded_config(config_path, config)
            if new_config is None:
                return
            try:
                new = await _start_generation(new_config, listeners)
            except Exception:
                log.exception("reload failed: the new config's app did not start; the old "
                              "one keeps serving")
                return
            old, current = current, new
            grace[0] = new_config.server.shutdown_grace
            log.info("SIGHUP: reloaded %s; the previous app drains", new_config.source)
            task = loop.create_task(_retire(old))
            retiring[task] = old
            task.add_done_callback(retiring.pop)
        finally:
            reloading.clear()

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGQUIT, quit_now)
    if supervised:  # the master relays Ctrl-C as SIGTERM, and reloads by new workers
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    else:  # alone, it reloads in place: the next app beside this one, then this one drains
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, reload)
    _tune_gc()
    keep_heap_cushion()
    try:
        if ready_fd is not None:
            os.write(ready_fd, b"1")
            os.close(ready_fd)
        log.info("streamproxy worker %d listening on %s (config: %s)", os.getpid(),
                 ", ".join(site.name for site in current.sites), config.source)
        await stop.wait()
        for task in list(reloading):
            await task  # a reload under way ends first: the app it started is the one drained
        await drain_and_stop(current.app, current.sites, grace)
        if retiring:
            await asyncio.gather(*retiring)
    finally:
        await current.runner.cleanup()
        _close_all(listeners)


def _reloaded_config(path: str | None, running: Config) -> Config | None:
    """The config file read again, or None (logged) when it does not load; what a reload
    cannot change (the listening address, logging: set up once, at start) is said."""
    try:
        config = load_config(path)
    except ConfigError as e:
        log.error("reload failed: config error: %s; the running config keeps serving", e)
        return None
    fixed = [f"server.{k}" for k in ("host", "port", "log_level")
             if getattr(config.server, k) != getattr(running.server, k)]
    if fixed:
        log.warning("reload: %s changed; that takes a restart (the running value stays)",
                    ", ".join(fixed))
    return config


async def _retire(old: _Generation) -> None:
    """A reloaded-away app: stop accepting (the next one accepts on the same sockets, so no
    connection waiting there is lost), let its requests finish, release it."""
    from streamproxy.server.app import STATE

    try:
        await drain_and_stop(old.app, old.sites, [old.app[STATE].config.server.shutdown_grace])
    finally:
        await old.runner.cleanup()


def _close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


def _listen(host: str, port: int, reuse_port: bool) -> list[socket.socket]:
    """The process's listening sockets, one per address `host` resolves to (as asyncio's
    create_server binds them); every generation of the app accepts on them."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:  # as asyncio: each family binds its own socket
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except BaseException:
        _close_all(socks)
        raise
    return socks


def _tune_gc() -> None:
    """What the app built at start-up lives until exit: freeze it out of the collector's scans.
    Streams allocate short-lived dicts by the million (parsed events), which would run a
    young-generation collection every 700 allocations; a larger threshold runs it less often,
    and each collection only scans what the requests in flight hold."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)


async def drain_and_stop(app: web.Application, sites: Sequence[web.BaseSite],
                         grace: list[float]) -> None:
    """Stop accepting, give running requests the grace period, then end the rest."""
    from streamproxy.server.app import STATE

    drain = app[STATE].drain
    drain.start()
    for site in sites:
        await site.stop()
    log.info("worker %d draining: %d request(s) running, grace %gs", os.getpid(), drain.active,
             grace[0])
    if not await drain.wait_idle(grace[0]):
        ended = drain.abort_all()
        log.warning("worker %d: grace period over, ended %d request(s) with an error",
                    os.getpid(), ended)
        await drain.wait_idle(5.0)


# -- the master -----------------------------------------------------------------------------------

@dataclass(slots=True)
class Worker:
    pid: int
    slot: int
    generation: int
    started: float
    ready_fd: int | None  # read end of the pipe the worker writes to once it listens
    ready: bool = False
    stopping: bool = False


class Master:
    def __init__(self, config_path: str | None, config: Config, host: str, port: int,
                 count: int) -> None:
        self.path, self.config = config_path, config
        self.host, self.port, self.count = host, port, count
        self.workers: dict[int, Worker] = {}
        self.generation = 0  # the one serving
        # The config as the file said at start: what a reload cannot change (host, port, log
        # level; --port/--host may override) is compared with it.
        self._started_with = config
        self._generations = itertools.count(1)  # each reload's own, never reused
        self.booting = True  # until the first generation listens: a failure is fatal
        self.reload: tuple[int, Config, float] | None = None  # (generation, config, deadline)
        self.restarts: dict[int, float] = {}  # slot → when to start it again
        self.failures: dict[int, int] = {}  # slot → consecutive young deaths
        self.stopping: float | None = None  # when the stop began
        self.exit_status = 0
        self._signals: list[int] = []
        self._wake: tuple[int, int] | None = None
        self._metrics_dir: str | None = None
        self._rate_buckets: dict[int, SharedBuckets] = {}  # generation → its shared buckets
        self._breakers = SharedBreakerTable()  # one for the master's life (reloads too)

    # -- main loop --------------------------------------------------------------------------------
    def run(self) -> int:
        if PROMETHEUS_ENV not in os.environ:  # per-worker sample files, aggregated on scrape
            self._metrics_dir = tempfile.mkdtemp(prefix="streamproxy-metrics-")
            os.environ[PROMETHEUS_ENV] = self._metrics_dir
        wake_r, wake_w = self._wake = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, self._on_signal)
        log.info("streamproxy master %d: %d workers on http://%s:%d (config: %s)", os.getpid(),
                 self.count, self.host, self.port, self.config.source)
        try:
            for slot in range(self.count):
                self._spawn(slot, self.generation, self.config)
            while self.workers or (self.stopping is None and self.restarts):
                self._wait(wake_r)
                self._handle_signals()
                self._reap()
                self._check_ready()
                self._tick()
        finally:
            signal.set_wakeup_fd(-1)
            os.close(wake_r)
            os.close(wake_w)
            if self._metrics_dir:
                shutil.rmtree(self._metrics_dir, ignore_errors=True)
        return self.exit_status

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    def _wait(self, wake_r: int) -> None:
        fds = [wake_r] + [w.ready_fd for w in self.workers.values() if w.ready_fd is not None]
        timeout = 1.0
        if self.restarts:
            timeout = max(0.0, min(timeout, min(self.restarts.values()) - time.monotonic()))
        try:
            readable, _, _ = select.select(fds, [], [], timeout)
        except InterruptedError:  # pragma: no cover - PEP 475 retries select
            return
        if wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 512)

    def _handle_signals(self) -> None:
        signals, self._signals = self._signals, []
        for sig in signals:
            if sig in (signal.SIGTERM, signal.SIGINT):
                self._stop()
            elif sig == signal.SIGHUP and self.stopping is None:
                self._start_reload()

    # -- workers ----------------------------------------------------------------------------------
    def _spawn(self, slot: int, generation: int, config: Config) -> None:
        self._share_state(generation, config)
        ready_r, ready_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        master = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            status = 1
            try:
                os.close(ready_r)
                self._become_worker()
                _stop_with(master)
                status = run_worker(config, self.host, self.port, reuse_port=True,
                                    ready_fd=ready_w, supervised=True)
            except ConfigError as e:
                print(f"streamproxy: config error: {e}", file=sys.stderr)
                status = 2
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
        os.close(ready_w)
        os.set_blocking(ready_r, False)
        self.workers[pid] = Worker(pid, slot, generation, time.monotonic(), ready_r)
        log.info("started worker %d (slot %d, generation %d)", pid, slot, generation)

    def _share_state(self, generation: int, config: Config) -> None:
        """What the next worker shares with the others: the circuit breakers' table, and its
        generation's rate-limit buckets, made once and inherited by each of its workers (a
        replaced worker included); those of ended generations are let go."""
        buckets = self._rate_buckets.get(generation)
        if buckets is None:
            live = {w.generation for w in self.workers.values()}
            self._rate_buckets = {g: b for g, b in self._rate_buckets.items() if g in live}
            buckets = self._rate_buckets[generation] = SharedBuckets.for_config(config)
        inherit(Shared(buckets, self._breakers))

    def _become_worker(self) -> None:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        fds = [w.ready_fd for w in self.workers.values() if w.ready_fd is not None]
        for fd in [*fds, *(self._wake or ())]:  # the master's pipes are not the worker's
            os.close(fd)

    def _check_ready(self) -> None:
        for w in self.workers.values():
            if w.ready_fd is None:
                continue
            try:
                data = os.read(w.ready_fd, 1)
            except BlockingIOError:
                continue
            os.close(w.ready_fd)  # a byte: listening; EOF: it exited before (reaped apart)
            w.ready_fd = None
            w.ready = bool(data)
        if self.booting and all(w.ready for w in self.workers.values()) and self.workers:
            self.booting = False
            log.info("all %d workers listening", len(self.workers))

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            if worker.ready_fd is not None:
                # Its ready byte may be waiting unread: then it had been listening, and its
                # death is a crash to restart, not a failed start-up.
                with contextlib.suppress(BlockingIOError):
                    worker.ready = worker.ready or bool(os.read(worker.ready_fd, 1))
                os.close(worker.ready_fd)
                worker.ready_fd = None
            for hook in CHILD_EXIT_HOOKS:
                with contextlib.suppress(Exception):
                    hook(pid)
            _mark_metrics_dead(pid)
            self._worker_exited(worker, status)

    def _worker_exited(self, w: Worker, status: int) -> None:
        how = (f"signal {signal.Signals(-os.waitstatus_to_exitcode(status)).name}"
               if os.WIFSIGNALED(status) else f"status {os.waitstatus_to_exitcode(status)}")
        if w.stopping or self.stopping is not None:
            log.info("worker %d exited (%s)", w.pid, how)
            return
        if self.booting and not w.ready:
            log.error("worker %d failed to start (%s); stopping", w.pid, how)
            self.exit_status = os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1
            self.exit_status = self.exit_status or 1
            self._stop()
            return
        if self.reload is not None and w.generation == self.reload[0]:
            log.error("reload failed: new worker %d exited (%s); the old workers keep serving",
                      w.pid, how)
            self._abandon_reload()
            return
        if w.generation != self.generation:
            return
        young = time.monotonic() - w.started < YOUNG
        failures = self.failures.get(w.slot, 0) + 1 if young else 0
        self.failures[w.slot] = failures
        delay = min(BACKOFF_MAX, BACKOFF_START * 2 ** max(0, failures - 1)) if young else 0.0
        log.warning("worker %d died (%s); restarting slot %d in %.1fs", w.pid, how, w.slot, delay)
        self.restarts[w.slot] = time.monotonic() + delay

    def _tick(self) -> None:
        now = time.monotonic()
        if self.stopping is None:
            for slot, when in list(self.restarts.items()):
                if when <= now:
                    del self.restarts[slot]
                    self._spawn(slot, self.generation, self.config)
        if self.reload is not None:
            generation, config, deadline = self.reload
            new = [w for w in self.workers.values() if w.generation == generation]
            if new and all(w.ready for w in new) and len(new) == self.count:
                old = [w for w in self.workers.values() if w.generation != generation]
                self.generation, self.config, self.reload = generation, config, None
                self.restarts.clear()
                for w in old:
                    self._signal(w, signal.SIGTERM)
                log.info("reloaded: generation %d serving, %d old workers draining",
                         generation, len(old))
            elif now > deadline:
                log.error("reload failed: new workers did not listen within %gs; the old "
                          "workers keep serving", READY_TIMEOUT)
                self._abandon_reload()
        if (self.stopping is not None
                and now - self.stopping > self.config.server.shutdown_grace + KILL_AFTER):
            for w in self.workers.values():
                self._signal(w, signal.SIGKILL)

    # -- reload and stop --------------------------------------------------------------------------
    def _start_reload(self) -> None:
        if self.reload is not None:
            log.warning("SIGHUP ignored: a reload is already in progress")
            return
        config = _reloaded_config(self.path, self._started_with)
        if config is None:
            return
        generation = next(self._generations)  # (a failed reload's state is not inherited)
        self.reload = (generation, config, time.monotonic() + READY_TIMEOUT)
        log.info("SIGHUP: reloading %s (generation %d)", config.source, generation)
        for slot in range(self.count):
            self._spawn(slot, generation, config)

    def _abandon_reload(self) -> None:
        assert self.reload is not None
        generation = self.reload[0]
        self.reload = None
        self._rate_buckets.pop(generation, None)
        for w in self.workers.values():
            if w.generation == generation:
                self._signal(w, signal.SIGTERM)

    def _stop(self) -> None:
        if self.stopping is not None:  # a second signal: end the streams now
            for w in self.workers.values():
                self._signal(w, signal.SIGQUIT)
            return
        self.stopping = time.monotonic()
        self.restarts.clear()
        log.info("stopping: %d workers draining", len(self.workers))
        for w in self.workers.values():
            self._signal(w, signal.SIGTERM)

    def _signal(self, w: Worker, sig: int) -> None:
        w.stopping = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(w.pid, sig)


def _stop_with(master: int) -> None:
    """A worker whose master dies (kill -9) must not serve on unsupervised, sharing the port
    with whatever starts next: Linux sends it SIGTERM then (PR_SET_PDEATHSIG), and it drains
    and exits as on a stop. A master already gone before that was set is caught here."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != master:
        os.kill(os.getpid(), signal.SIGTERM)


def _mark_metrics_dead(pid: int) -> None:
    """prometheus-client's multi-process mode keeps a dead worker's live gauges otherwise, and
    its counter and histogram files, one set per worker ever started, for good."""
    if os.environ.get(PROMETHEUS_ENV):
        try:
            from streamproxy.observe.metrics import retire_process
            retire_process(pid)
        except Exception:
            log.exception("metrics: worker %d's files were not retired", pid)

