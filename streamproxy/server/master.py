"""The prefork master (`--workers N`, N > 1): it forks N workers (server/workers.py) and
only supervises them; it never serves.

It forks them before any event loop exists, and has no asyncio loop either: signal handlers
set flags and wake a `select()` through a self-pipe.

- A worker that dies is replaced, after a backoff that doubles while it keeps dying young
  (or before it listens). Once every slot has failed GIVE_UP times in a row with none
  serving, the master gives up: it stops, exit status 1, for its supervisor to act on.
- SIGHUP re-reads the config file and starts a new generation of workers next to the old
  ones; once every new worker listens, the old ones drain (SIGUSR2: as on SIGTERM, but their
  `/healthz` stays 200, the instance serving on). A config that does not load, or new workers
  that do not come up, are reported and the old workers keep serving.
  A SIGHUP during a reload is queued: one more reload once it is over (nginx, gunicorn).
- SIGTERM / SIGINT: every worker drains (a reload's new ones too: the reload is abandoned),
  the master exits 0 when they are gone. A second signal ends the streams at once (SIGQUIT to
  the workers). With `server.drain_delay`, the master first tells the workers that listen to
  fail `/healthz` and serve on (SIGUSR1), and only after the delay to drain (SIGTERM); a
  second signal then ends the delay. The stop's SIGTERM is for the master alone: a worker
  sent one too drains at once (systemd: KillMode=mixed, docs/operations.md).
- SIGQUIT: a fast stop (gunicorn's, not nginx's): no drain delay, the workers sent SIGQUIT at
  once (their grace skipped).
- A fork or pipe refused as the first workers start: exit status 1, said in one line (later:
  a replacement is tried again after its back-off, a reload is abandoned).
- No worker is waited for forever: one that does not listen within 30 s of its start (at
  start-up, a replacement, a reload's) or is still there its grace + 15 s after it was told to
  drain (on a stop, or as an old worker after a reload) gets SIGKILL.
- A stop signalled to a worker forked a moment before, which still has the master's handlers,
  reaches it: SIGTERM and SIGINT are held across the fork until it has set its own. SIGHUP
  stays held until the worker ignores it: one to the process group does not kill it starting.
- A master that dies (kill -9) takes its workers with it: each gets SIGTERM from the kernel
  (Linux's parent-death signal) and drains, instead of serving on unsupervised.

`SO_REUSEPORT` caveat: connections still waiting in a draining worker's accept queue are reset
when it closes its socket (Linux ≥ 5.14 can migrate them: sysctl net.ipv4.tcp_migrate_req=1).
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import os
import select
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from streamproxy.config import Config, ConfigError, shown_address
from streamproxy.server.shared_breakers import SharedBreakerTable
from streamproxy.server.shared_memory import Shared, inherit
from streamproxy.server.shared_rate import SharedBuckets
from streamproxy.server.workers import DRAIN_OVERRUN, reloaded_config, run_worker

# The name the master's lines had before it had a module of its own.
log = logging.getLogger("streamproxy.workers")

READY_TIMEOUT = 30.0  # seconds a worker has to start listening
BACKOFF_START, BACKOFF_MAX = 0.5, 30.0
YOUNG = 10.0  # a worker that dies younger than this counts as crash-looping
GIVE_UP = 10  # failures in a row of every slot (~2.5 min of back-off) that end the master
# Seconds past its grace before a worker told to drain is killed: its drain's own worst case,
# and 5 s for its clean-up handlers and exit (a kill at about that worst case ended slow but
# sound drains with SIGKILL).
KILL_AFTER = DRAIN_OVERRUN + 5.0
PROMETHEUS_ENV = "PROMETHEUS_MULTIPROC_DIR"
_PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies
_HELD_AT_FORK = {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP}

# Called in the master with the pid of every worker that exits (e.g. metrics cleanup).
CHILD_EXIT_HOOKS: list[Callable[[int], None]] = []


@dataclass(slots=True)
class Worker:
    pid: int
    slot: int
    generation: int
    started: float
    ready_fd: int | None  # read end of the pipe the worker writes to once it listens
    grace: float = 0.0  # its config's shutdown_grace
    ready: bool = False
    stopping: bool = False
    kill_at: float | None = None  # once told to stop: when it is killed if still there
    killed: bool = False


class Master:
    def __init__(self, config_path: str | None, config: Config, host: str, port: int,
                 count: int, pinned: frozenset[str] = frozenset()) -> None:
        self.path, self.config = config_path, config
        self.host, self.port, self.count = host, port, count
        self.pinned = pinned  # the server keys the command line sets (host, port)
        self.workers: dict[int, Worker] = {}
        self.generation = 0  # the one serving
        # The config as the file said at start: what a reload cannot change (host, port, log
        # level; --port/--host may override) is compared with it.
        self._started_with = config
        self._generations = itertools.count(1)  # each reload's own, never reused
        self.booting = True  # until the first generation listens: a failure is fatal
        self.reload: tuple[int, Config, float] | None = None  # (generation, config, deadline)
        self.reload_queued = False  # a SIGHUP during a reload: another one once it is over
        self.restarts: dict[int, float] = {}  # slot → when to start it again
        self.failures: dict[int, int] = {}  # slot → consecutive young deaths
        self.stopping: float | None = None  # when the stop began
        self.drain_at: float | None = None  # a stop's drain delay: when the workers drain
        self._said: set[str] = set()  # a stop's lines logged once, however many signals come
        self.exit_status = 0
        self._signals: list[int] = []
        self._wake: tuple[int, int] | None = None
        self._metrics_dir: str | None = None
        self._rate_buckets: dict[int, SharedBuckets] = {}  # generation → its shared buckets
        self._breakers = SharedBreakerTable()  # one for the master's life (reloads too)

    # -- main loop --------------------------------------------------------------------------------
    def run(self) -> int:
        # Per-worker sample files, aggregated on scrape. (Set empty, it is unset for
        # prometheus-client: each worker would count alone, a scrape showing one's.)
        if not os.environ.get(PROMETHEUS_ENV):
            self._metrics_dir = tempfile.mkdtemp(prefix="streamproxy-metrics-")
            os.environ[PROMETHEUS_ENV] = self._metrics_dir
        wake_r, wake_w = self._wake = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, self._on_signal)
        # The master's word to its workers (fail /healthz), whose default would kill a master
        # sent it; a worker inherits this until it listens and handles it.
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # (its word to a reload's old workers)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # (held since the start)
        log.info("streamproxy master %d: %d workers on http://%s; config: %s", os.getpid(),
                 self.count, shown_address(self.host, self.port), self.config.source)
        try:
            for slot in range(self.count):
                try:
                    self._spawn(slot, self.generation, self.config)
                except OSError as e:  # fork or pipe refused (process or file limits): a
                    # failed start, said in a line; those already forked stop with the master
                    log.error("cannot start a worker for slot %d: %s; stopping", slot,
                              e.strerror or e)
                    self.exit_status = 1
                    self._stop(delay=False)
                    break
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
        if self.drain_at is not None:
            timeout = max(0.0, min(timeout, self.drain_at - time.monotonic()))
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
            elif sig == signal.SIGQUIT:
                self._quit()
            elif sig == signal.SIGHUP and self.stopping is None:
                self._start_reload()
            elif sig == signal.SIGHUP:
                self._say_once("SIGHUP ignored: stopping")

    # -- workers ----------------------------------------------------------------------------------
    def _spawn(self, slot: int, generation: int, config: Config) -> None:
        self._share_state(generation, config)
        ready_r, ready_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        master = os.getpid()
        # Held across the fork: until the child has its own handlers, the master's would take
        # a stop signalled to it (a flag the worker never reads) and it would serve on.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_AT_FORK)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.close(ready_r)
            os.close(ready_w)
            raise
        if pid == 0:  # the worker
            status = 1
            try:
                os.close(ready_r)
                self._become_worker()
                # A stop sent meanwhile ends it now; a SIGHUP (to the process group) stays
                # held until the worker ignores it (server/workers.py), as the master's was.
                signal.pthread_sigmask(signal.SIG_SETMASK, mask | {signal.SIGHUP})
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
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(ready_w)
        os.set_blocking(ready_r, False)
        self.workers[pid] = Worker(pid, slot, generation, time.monotonic(), ready_r,
                                   config.server.shutdown_grace)
        log.info("started worker %d (slot %d, generation %d)", pid, slot, generation)

    def _share_state(self, generation: int, config: Config) -> None:
        """What the next worker shares with the others: the circuit breakers' table, and its
        generation's rate-limit buckets, made once and inherited by each of its workers (a
        replaced worker included); those of ended generations are let go. A reload's keys
        whose rate_limit is unchanged keep the serving generation's state (shared_rate.py)."""
        buckets = self._rate_buckets.get(generation)
        if buckets is None:
            serving = self._rate_buckets.get(self.generation)
            live = {w.generation for w in self.workers.values()}
            self._rate_buckets = {g: b for g, b in self._rate_buckets.items() if g in live}
            buckets = self._rate_buckets[generation] = SharedBuckets.for_config(config, serving)
        inherit(Shared(buckets, self._breakers))

    def _become_worker(self) -> None:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGCHLD):
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
        # The whole serving generation: not while a slot waits to be restarted, nor once a
        # stop has begun (the workers left then, all listening, may be fewer than the count).
        if self.booting and self.stopping is None:
            serving = [w for w in self.workers.values() if w.generation == self.generation]
            if len(serving) == self.count and all(w.ready for w in serving):
                self.booting = False
                log.info("all %d workers listening", self.count)

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
        how = (f"signal {_signal_name(os.WTERMSIG(status))}" if os.WIFSIGNALED(status)
               else f"status {os.waitstatus_to_exitcode(status)}")
        if w.stopping or self.stopping is not None:
            log.info("worker %d exited (%s)", w.pid, how)
            return
        # (a reload's worker first: a SIGHUP while the first workers start may fail alone)
        if self.reload is not None and w.generation == self.reload[0]:
            log.error("reload failed: new worker %d exited (%s); the old workers keep serving",
                      w.pid, how)
            self._abandon_reload()
            return
        if self.booting and not w.ready:
            log.error("worker %d failed to start (%s); stopping", w.pid, how)
            self.exit_status = os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1
            self.exit_status = self.exit_status or 1
            self._stop(delay=False)  # (a failed start hands no traffic over: no drain delay)
            return
        if w.generation != self.generation:
            return
        if not w.ready or time.monotonic() - w.started < YOUNG:
            delay = self._backoff(w.slot)
            if self._hopeless():
                log.error("every worker failed %d times in a row, the last: %s; giving up",
                          GIVE_UP, how)
                self.exit_status = 1
                self._stop(delay=False)  # (none of them serves)
                return
        else:
            self.failures[w.slot], delay = 0, 0.0
        log.warning("worker %d died (%s); restarting slot %d in %.1fs", w.pid, how, w.slot, delay)
        self.restarts[w.slot] = time.monotonic() + delay

    def _hopeless(self) -> bool:
        """Every slot keeps failing and none serves: restarting them for good would leave a
        master up with nothing listening, which its supervisor would never restart."""
        return (self.reload is None
                and all(self.failures.get(s, 0) >= GIVE_UP for s in range(self.count))
                and not any(w.ready and w.generation == self.generation
                            for w in self.workers.values()))

    def _backoff(self, slot: int) -> float:
        """One more failure in a row for `slot`: seconds until its next start."""
        failures = self.failures[slot] = self.failures.get(slot, 0) + 1
        doublings = min(failures - 1, 32)  # (unbounded, the 1,025th overflows a float)
        return min(BACKOFF_MAX, BACKOFF_START * 2 ** doublings)

    def _restart(self, slot: int) -> None:
        try:
            self._spawn(slot, self.generation, self.config)
        except OSError as e:  # fork or pipe refused (process or file limits): the master and
            delay = self._backoff(slot)  # the workers still serving carry on; try again later
            log.error("cannot start a worker for slot %d: %s; trying again in %.1fs", slot,
                      e.strerror or e, delay)
            self.restarts[slot] = time.monotonic() + delay

    def _tick(self) -> None:
        now = time.monotonic()
        if self.drain_at is not None and now >= self.drain_at:
            self._drain_all()
        if self.stopping is None:
            for slot, when in list(self.restarts.items()):
                if when <= now:
                    del self.restarts[slot]
                    self._restart(slot)
        if self.reload is not None:
            generation, config, deadline = self.reload
            new = [w for w in self.workers.values() if w.generation == generation]
            if new and all(w.ready for w in new) and len(new) == self.count:
                old = [w for w in self.workers.values() if w.generation != generation]
                self.generation, self.config, self.reload = generation, config, None
                self.restarts.clear()
                self.failures.clear()  # (the new config's workers: a count of their own)
                for w in old:
                    self._hand_over(w)
                log.info("reloaded: generation %d serving, %d old workers draining",
                         generation, len(old))
            elif now > deadline:
                log.error("reload failed: new workers did not listen within %gs; the old "
                          "workers keep serving", READY_TIMEOUT)
                self._abandon_reload()
        if self.reload_queued and self.reload is None:
            self.reload_queued = False
            self._start_reload()
        self._kill_hung(now)

    def _kill_hung(self, now: float) -> None:
        """A worker that hangs before it listens, or while it drains (a blocked loop, a thread
        its asyncio.run joins), must not stay for good: a replacement's slot would never serve
        again, an old generation would hold its connections and memory."""
        for w in self.workers.values():
            why = None if w.killed else _overdue(w, now)
            if why:  # (a death before it listened is then a failed start-up, or a crash)
                log.error("worker %d %s; killing it", w.pid, why)
                w.killed = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGKILL)

    # -- reload and stop --------------------------------------------------------------------------
    def _start_reload(self) -> None:
        if self.reload is not None:  # (the file may have changed since this one read it)
            if not self.reload_queued:
                log.info("SIGHUP: a reload is in progress; reloading again once it is over")
            self.reload_queued = True
            return
        config = reloaded_config(self.path, self._started_with, self.pinned)
        if config is None:
            return
        generation = next(self._generations)  # (a failed reload's state is not inherited)
        self.reload = (generation, config, time.monotonic() + READY_TIMEOUT)
        log.info("SIGHUP: reloading %s (generation %d)", config.source, generation)
        try:
            for slot in range(self.count):
                self._spawn(slot, generation, config)
        except OSError as e:  # fork or pipe refused (process or file limits): the old serve
            log.error("reload failed: cannot start a new worker: %s; the old workers keep "
                      "serving", e.strerror or e)
            self._abandon_reload()

    def _abandon_reload(self) -> None:
        assert self.reload is not None
        generation = self.reload[0]
        self.reload = None
        self._rate_buckets.pop(generation, None)
        for w in self.workers.values():
            if w.generation == generation:
                self._hand_over(w)

    def _hand_over(self, w: Worker) -> None:
        """`w` drains while other workers serve on (a reload): its `/healthz` stays 200, or a
        load balancer checking on a kept-alive connection would take the instance out.
        SIGUSR2 says so; one not listening yet has no handler for it, and nothing to drain."""
        self._signal(w, signal.SIGUSR2 if w.ready else signal.SIGTERM)

    def _stop(self, delay: bool = True) -> None:
        """`delay`: keep `server.drain_delay` first (a stop, not a failed start)."""
        if self.drain_at is not None:  # a second signal during the drain delay: drain now
            self._drain_all()
            return
        if self.stopping is not None:  # a second signal: end the streams now
            self._say_once("stopping: a second signal: the workers end their requests now")
            for w in self.workers.values():
                self._signal(w, signal.SIGQUIT)
            return
        self.stopping = time.monotonic()
        self.restarts.clear()
        self.reload_queued = False
        if self.reload is not None:  # its workers stop with the rest: one listening late must
            # not complete it (the old ones would drain at once, drain_delay or not)
            log.info("stopping: the reload to generation %d is abandoned", self.reload[0])
            self.reload = None
        seconds = self.config.server.drain_delay if delay else 0.0
        if seconds <= 0:
            self._drain_all()
            return
        self.drain_at = self.stopping + seconds
        log.info("stopping: /healthz fails; %d workers serve %gs more, then drain",
                 len(self.workers), seconds)
        for w in self.workers.values():
            if w.ready:  # (its SIGUSR1 handler is set before it says so)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGUSR1)
            else:  # not serving yet: nothing to wait for
                self._signal(w, signal.SIGTERM)

    def _quit(self) -> None:
        """SIGQUIT: a fast stop, as gunicorn's (and a single process's, and each worker's): no
        drain delay, no grace. (nginx's graceful SIGQUIT is streamproxy's SIGTERM.)"""
        if self.stopping is None:
            self._stop(delay=False)
        self.drain_at = None
        self._say_once("stopping: SIGQUIT: the workers end their requests now")
        for w in self.workers.values():
            self._signal(w, signal.SIGQUIT)

    def _say_once(self, line: str) -> None:
        if line not in self._said:
            self._said.add(line)
            log.warning(line)

    def _drain_all(self) -> None:
        self.drain_at = None
        log.info("stopping: %d workers draining", len(self.workers))
        for w in self.workers.values():
            self._signal(w, signal.SIGTERM)

    def _signal(self, w: Worker, sig: int) -> None:
        w.stopping = True
        if w.kill_at is None:
            w.kill_at = time.monotonic() + w.grace + KILL_AFTER
        with contextlib.suppress(ProcessLookupError):
            os.kill(w.pid, sig)


def _signal_name(signum: int) -> str:
    """SIGKILL, or SIGRTMIN+6: the enum names no real-time signal between the two ends (its
    ValueError ended the master when one killed a worker)."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        if signal.SIGRTMIN < signum < signal.SIGRTMAX:
            return f"SIGRTMIN+{signum - signal.SIGRTMIN}"
        return str(signum)


def _overdue(w: Worker, now: float) -> str | None:
    """Why `w` is to be killed now, if it is."""
    if w.kill_at is not None:
        return (f"still running {w.grace + KILL_AFTER:g}s after it was told to stop"
                if now >= w.kill_at else None)
    if not w.ready and now - w.started >= READY_TIMEOUT:
        return f"did not listen within {READY_TIMEOUT:g}s"
    return None


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
