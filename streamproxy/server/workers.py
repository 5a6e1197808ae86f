"""Serving processes: `run` serves as one worker, or as a prefork master (server/master.py)
supervising N of them.

A **worker** is one asyncio process serving the app. It listens on its own socket; with
several workers every one binds the same port with `SO_REUSEPORT` and the kernel spreads new
connections across them. On SIGTERM (or SIGINT when it runs alone) it drains (server/drain.py):
stops accepting, closes kept-alive connections between requests (after DRAIN_LINGER idle) and
the others after their next answer (served, with `Connection: close`), `/healthz` answers 503,
running requests get `server.shutdown_grace` seconds, then the rest end with an OpenAI error.
SIGQUIT drains with no grace, and so does a second SIGTERM or SIGINT to a worker running alone
(no master). Alone, it also reloads on SIGHUP in place: the new config's app accepts on the
same listening sockets, then the old app drains. A reload's drain leaves `/healthz` at 200
(the instance stays; a health check on a kept-alive connection must not take it out): under
a master, SIGUSR2 is that drain, the master's to a reload's old workers.

`server.drain_delay` puts a pause before the drain: `/healthz` answers 503 at once, requests
are still served for that many seconds (a Kubernetes Service removes the endpoint meanwhile),
then the drain above. Alone, the worker keeps that time itself (a second SIGTERM ends it);
under a master, the master does (SIGUSR1 to the workers, then SIGTERM): a reload's old workers
get SIGTERM only, and drain at once as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import resource
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from streamproxy.config import Config, ConfigError, load_config, shown_address
from streamproxy.server.cpus import default_workers
from streamproxy.server.drain import Drain
from streamproxy.server.heap import keep_heap_cushion

log = logging.getLogger("streamproxy.workers")

BACKLOG = 2048  # listen(2) queue: benchmarks open thousands of connections at once
GC_THRESHOLD = 10_000  # net container allocations between young collections (CPython: 700)
CLOSING_POLL = 0.05  # seconds between a drain's looks at the connections left open
# A drain's worst case past its grace, which the master's kill deadline must exceed: the
# requests the grace's end aborted have ABORTED_WAIT to go, the connections still open then
# aiohttp's SHUTDOWN_TIMEOUT before the app's clean-up runs.
ABORTED_WAIT = 5.0
SHUTDOWN_TIMEOUT = 5.0
DRAIN_OVERRUN = ABORTED_WAIT + SHUTDOWN_TIMEOUT


def raise_fd_limit() -> None:
    """Every stream holds two sockets; take the whole fd allowance the system grants."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run(config_path: str | None, config: Config, host: str, port: int,
        workers: int | None = None, pinned: frozenset[str] = frozenset()) -> int:
    """Serve until stopped; returns the process exit status. `pinned`: the server keys the
    command line sets (host, port), whatever the file says."""
    raise_fd_limit()
    if workers is None:  # (any free port: one process, as N workers would each bind their own)
        workers = 1 if port == 0 else default_workers()
    if workers > 1:
        from streamproxy.server.app import check_sections

        check_sections(config)  # (a ConfigError: the CLI reports it once, not once per worker)
        if port == 0:
            print("streamproxy: --workers (server.workers) > 1 needs a fixed --port (each "
                  "worker binds it)", file=sys.stderr)
            return 2
    if port != 0:  # (a second instance, refused here, must not clear the first's metrics)
        try:
            _check_port_free(host, port)
        except OSError as e:
            print(f"streamproxy: cannot listen on {shown_address(host, port)}: "
                  f"{e.strerror or e}", file=sys.stderr)
            return 1
    claim = _claim_metrics_dir()
    try:
        if workers <= 1:
            return run_worker(config, host, port, config_path=config_path, pinned=pinned)
        from streamproxy.server.master import Master  # (it imports run_worker from here)

        return Master(config_path, config, host, port, workers, pinned).run()
    finally:
        if claim is not None:
            os.close(claim)


def _claim_metrics_dir() -> int | None:
    """An operator's PROMETHEUS_MULTIPROC_DIR, made this run's (the master's own is new): no
    other instance's, and cleared of a previous run's files, which it outlives. Returns the
    descriptor that holds it (inherited by the workers)."""
    from streamproxy.observe.metrics import claim_directory, clear_previous_run, multiprocess_dir

    path = multiprocess_dir()
    if path is None:
        return None
    claim = claim_directory(path)
    try:
        removed = clear_previous_run(path)
    except BaseException:
        os.close(claim)
        raise
    if removed:
        log.info("metrics: removed %d file(s) of a previous run from %s", removed, path)
    return claim


def _check_port_free(host: str, port: int) -> None:
    """The workers bind with SO_REUSEPORT, which another instance's workers would share
    without a word: two configs answering on one port. A bind without it fails while anyone
    listens there (TIME_WAIT aside: SO_REUSEADDR)."""
    for family, kind, proto, _, address in socket.getaddrinfo(  # ("": every interface)
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)


# -- a worker -------------------------------------------------------------------------------------

def run_worker(config: Config, host: str, port: int, *, reuse_port: bool = False,
               ready_fd: int | None = None, supervised: bool = False,
               config_path: str | None = None, pinned: frozenset[str] = frozenset()) -> int:
    try:
        asyncio.run(_serve(config, host, port, reuse_port, ready_fd, supervised, config_path,
                           pinned))
    except KeyboardInterrupt:
        pass
    except OSError as e:
        print(f"streamproxy: cannot listen on {shown_address(host, port)}: {e.strerror or e}",
              file=sys.stderr)
        return 1
    return 0


@dataclass(slots=True)
class _Generation:
    """One config's app, serving on the process's listening sockets."""
    app: web.Application
    runner: web.AppRunner
    sites: list[web.BaseSite]


async def _start_generation(config: Config, listeners: list[socket.socket],
                            running: web.Application | None = None) -> _Generation:
    """`running`: the app a reload in place follows (its breakers, admission count and rate
    limits' buckets)."""
    from streamproxy.server.admission import ADMISSION
    from streamproxy.server.app import create_app, http_limits
    from streamproxy.server.auth import AUTH
    from streamproxy.server.front import make_runner
    from streamproxy.server.state import STATE

    app = (create_app(config) if running is None else
           create_app(config, running[STATE].breakers, running[ADMISSION], running.get(AUTH)))
    runner = make_runner(app, handler_cancellation=True, access_log=None,
                         shutdown_timeout=SHUTDOWN_TIMEOUT, **http_limits(config))
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
                 supervised: bool, config_path: str | None, pinned: frozenset[str]) -> None:
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
    queued = [False]  # a SIGHUP during a reload: another one once it is over

    skip_delay = asyncio.Event()  # set: no drain delay (left) to skip, a signal quits

    said: set[str] = set()  # a stop's lines, logged once however many signals come

    def say_once(line: str) -> None:
        if line not in said:
            said.add(line)
            log.warning(line)

    def quit_now() -> None:
        say_once(f"worker {os.getpid()}: told to end its requests at once")
        grace[0] = 0.0
        skip_delay.set()
        stop.set()
        for generation in (current, *retiring.values()):
            drain = generation.app[STATE].drain
            if drain.draining:
                drain.abort_all()

    def reload() -> None:
        if stop.is_set():
            say_once("SIGHUP ignored: stopping")
            return
        if reloading:  # (the file may have changed since this one read it)
            if not queued[0]:
                log.info("SIGHUP: a reload is in progress; reloading again once it is over")
            queued[0] = True
        else:
            reloading.append(loop.create_task(_reload()))

    async def _reload() -> None:
        nonlocal current
        try:
            new_config = reloaded_config(config_path, config, pinned)
            if new_config is None:
                return
            try:
                new = await _start_generation(new_config, listeners, current.app)
            except ConfigError as e:  # a section checked as the app is built (auth, ...)
                log.error("reload failed: config error: %s; the running config keeps serving", e)
                return
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
            if queued[0]:
                queued[0] = False
                reload()

    def stop_then_quit() -> None:
        """Alone, a second SIGTERM or Ctrl-C ends the drain delay if one runs, else the
        streams at once, as the master's does (a supervised worker's second SIGTERM may be its
        master's death: it drains on)."""
        if not stop.is_set():
            stop.set()
            # (a reload under way completes first: its config's delay is the one to keep)
            if not reloading and not current.app[STATE].config.server.drain_delay:
                skip_delay.set()
        elif not skip_delay.is_set():
            skip_delay.set()
        else:
            quit_now()

    leaving = [True]  # the instance stops (/healthz fails), or a reload hands over: it stays

    def hand_over() -> None:
        leaving[0] = False
        stop.set()

    def leave() -> None:  # (after a hand-over too: the master is stopping, or dead)
        current.app[STATE].drain.announce()
        stop.set()

    loop.add_signal_handler(signal.SIGQUIT, quit_now)
    if supervised:  # the master relays Ctrl-C as SIGTERM, and reloads by new workers
        loop.add_signal_handler(signal.SIGTERM, leave)
        loop.add_signal_handler(signal.SIGUSR1, lambda: current.app[STATE].drain.announce())
        loop.add_signal_handler(signal.SIGUSR2, hand_over)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    else:  # alone, it reloads in place: the next app beside this one, then this one drains
        loop.add_signal_handler(signal.SIGTERM, stop_then_quit)
        loop.add_signal_handler(signal.SIGINT, stop_then_quit)
        loop.add_signal_handler(signal.SIGHUP, reload)
        for sig in (signal.SIGUSR1, signal.SIGUSR2):  # a master's words: their default kills
            signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # (held since the start: cli)
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
        if not supervised:
            for old in retiring.values():  # (a reload's old app, healthy so far: we stop)
                old.app[STATE].drain.announce()
            await drain_delay(current.app, skip_delay)
        skip_delay.set()
        # The sites accept on copies of these sockets: each listens until every copy is
        # closed, queueing connections nobody will accept (with workers, the kernel keeps
        # handing this one its share). Closed here, stopping the sites refuses new ones.
        _close_all(listeners)
        await drain_and_stop(current.runner, grace, leaving[0])
        if retiring:
            await asyncio.gather(*retiring)
    finally:
        await current.runner.cleanup()
        _close_all(listeners)


def reloaded_config(path: str | None, running: Config, pinned: frozenset[str] = frozenset()
                    ) -> Config | None:
    """The config file read again, or None (logged) when it does not load; what a reload
    cannot change (the listening address, logging: set up once, at start) is said, unless the
    command line sets it (`pinned`): a restart would not change it either."""
    from streamproxy.observe.access_log import log_level
    from streamproxy.server.app import check_sections

    try:
        config = load_config(path)
        check_sections(config)  # (the master's new workers would each report it, and die)
    except ConfigError as e:
        log.error("reload failed: config error: %s; the running config keeps serving", e)
        return None
    except Exception as e:  # a parser's bug must not end the master, which serves on
        log.error("reload failed: %s: %s; the running config keeps serving",
                  type(e).__name__, e)
        return None
    fixed = [f"server.{k}" for k in ("host", "port", "workers")
             if k not in pinned and getattr(config.server, k) != getattr(running.server, k)]
    if log_level(config) != log_level(running):  # (STREAMPROXY_LOG_LEVEL wins over both)
        fixed.append("server.log_level")
    if fixed:
        log.warning("reload: %s changed; that takes a restart (the running value stays)",
                    ", ".join(fixed))
    return config


async def _retire(old: _Generation) -> None:
    """A reloaded-away app: stop accepting (the next one accepts on the same sockets, so no
    connection waiting there is lost), let its requests finish, release it."""
    from streamproxy.server.app import STATE

    try:
        await drain_and_stop(old.runner, [old.app[STATE].config.server.shutdown_grace],
                             leaving=False)
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


async def drain_delay(app: web.Application, cut_short: asyncio.Event) -> None:
    """`server.drain_delay`: `/healthz` fails while requests are still served, so that load
    balancers stop sending here before the listeners close (a second signal cuts it short)."""
    from streamproxy.server.app import STATE

    delay = app[STATE].config.server.drain_delay
    if delay <= 0 or cut_short.is_set():
        return
    app[STATE].drain.announce()
    log.info("worker %d: /healthz fails; serving %gs more before draining", os.getpid(), delay)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(cut_short.wait(), delay)


async def drain_and_stop(runner: web.AppRunner, grace: list[float], leaving: bool = True
                         ) -> None:
    """Stop accepting, close the idle connections, give running requests (and those still
    arriving on open connections) the grace period, then end the rest. `leaving`: the instance
    stops (`/healthz` fails), rather than a reload's new app or workers taking over."""
    from streamproxy.server.app import STATE

    drain = runner.app[STATE].drain
    drain.start(leaving)
    for site in runner.sites:
        await site.stop()
    server = runner.server
    server.wind_down()  # type: ignore[union-attr]
    log.info("worker %d draining: %d request(s) running, grace %gs", os.getpid(), drain.active,
             grace[0])
    if not await _wait_served(drain, server, grace):
        ended = drain.abort_all()
        log.warning("worker %d: grace period over, ended %d request(s) with an error",
                    os.getpid(), ended)
        await drain.wait_idle(ABORTED_WAIT)
    drain.closing = True  # the runner's cleanup comes next


async def _wait_served(drain: Drain, server: Any, grace: list[float]) -> bool:
    """Wait, at most the grace period, until no request runs and every connection has closed
    (each after its last answer, or idle: server.reading.DRAIN_LINGER): a request a connection
    was reading, or that came as the drain began, is served too. False if requests still run
    when the time is out (connections still open then are closed by the runner's cleanup)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace[0]
    while await drain.wait_idle(deadline - loop.time()):
        if not server.open_connections() or drain.aborted:
            return True
        if loop.time() >= deadline:
            # The grace is over with connections still open: a request they bring from now on
            # gets 503 (served, it would outlive the grace; the cleanup may come much later,
            # after a reload's old app has drained too).
            drain.abort_all()  # (nothing runs: it ends no request)
            return True
        await asyncio.sleep(CLOSING_POLL)
    return False
