"""Prometheus metrics, fed once per request from its `RequestRecord` (an observer), never per
chunk. The relay only keeps counters it has anyway (bytes, chunks, reads, the largest gap
between reads); this module turns them into samples when the request ends.

Multi-process: with `PROMETHEUS_MULTIPROC_DIR` set, prometheus-client writes every sample to
per-process files in that directory and `/metrics` in any worker serves the aggregate of all
of them. The value class is chosen when a metric child is created, so metrics are built lazily
(first `create_app` in the worker) after the master has set the variable; see operations.md.
A worker that exits leaves counter and histogram files that must keep counting: the master
adds them into one `<type>_retired.db` each (`retire_process`) and removes them, so reloads and
replaced workers do not grow the directory (and each scrape's work) for the master's life.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.mmap_dict import MmapedDict

from streamproxy.config import ConfigError
from streamproxy.record import RequestRecord, cache_write_tokens

log = logging.getLogger("streamproxy.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Files of exited workers are added into these (`counter_retired.db`, …); not a pid: never live.
_RETIRED = "retired"
_KEPT_TYPES = ("counter", "histogram", "summary")  # samples that outlive their process
# Gauges whose latest value outlives its process (the circuit breakers': their states are in
# the table the workers share, and an open one is not reported again until it changes).
_LATEST_GAUGES = "gauge_mostrecent"
_LOCK_FILE = ".retire.lock"  # not *.db: the collector's glob never reads it
_INSTANCE_LOCK = ".instance.lock"  # held by the instance the directory is for (its pid in it)
# Clients choose model names: past this many distinct ones per process, the rest are "other",
# so a client cannot grow the series count (and Prometheus' memory) without bound.
MAX_MODEL_LABELS = 100
MAX_LABEL_CHARS = 100
# Breaker keys hold the target's model, which a client's x-portkey-config chooses (and its
# cb_config, the rules): past this many distinct (target, rules) per process, further ones are
# not exported (their breakers still work). As many again for the breakers clients' inline
# configs made: one cap for both, and a client's 100 cooldowns hid the operator's breakers.
MAX_CIRCUIT_LABELS = 100
CIRCUIT_STATES = {"closed": 0, "half_open": 1, "half-open": 1, "open": 2}
# A URL's user info, to the host part's last @ (as urlsplit reads it), '|' included: the breaker
# key's separator may be in a password. (From a '://' in a client's model, the endpoint's '//'
# ends a match before it crosses into the endpoint.)
_USERINFO = re.compile(r"://[^/?#]*@")
# prometheus-client's sample files (`counter_<pid>.db`, `gauge_livesum_<pid>.db`, …) and the
# retired ones: what a previous run leaves, and nothing an operator may keep beside them.
# The cooldown in a breaker's cb_config label (breaker.py's rules_label), in ms.
_COOLDOWN = re.compile(r"(?:^|,)cooldown_interval=(\d+(?:\.\d+)?)(?:,|$)")
_SAMPLE_FILE = re.compile(r"(?:counter|histogram|summary|gauge_[a-z]+)_(?:\d+|retired)\.db")

# From the proxy's own sub-millisecond answers (a local model, the mock) to the default
# first_token timeout (600 s): neither end falls in a catch-all bucket.
TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3,
                5, 7.5, 10, 15, 20, 30, 60, 120, 300, 600)
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200)
# Up to the default idle timeout (300 s): a stream it cut has that final gap, which past
# the last bound every quantile would read as that bound.
GAP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120,
               300)


def bounded_label(value: str, limit: int = MAX_LABEL_CHARS) -> str:
    """`value`, or past `limit` characters its start and a digest of the whole (`~` and 8 hex
    digits): two long values that share their first characters (one target's rules differing
    in their status codes, Vertex model paths) stay apart series. A stable hash, not hash():
    every worker must give one breaker's or model's value the same label."""
    if len(value) <= limit:
        return value
    digest = hashlib.blake2b(value.encode(errors="replace"), digest_size=4).hexdigest()
    return f"{value[:limit - 9]}~{digest}"


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


class Metrics:
    """Every streamproxy_ metric, registered once per process."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        pm = ("provider", "model")
        self.requests = Counter("streamproxy_requests", "Chat requests by final HTTP status.",
                                [*pm, "status", "stream"], registry=r)
        self.active_streams = Gauge("streamproxy_active_streams",
                                    "Chat requests in flight (streamed or not), per the "
                                    "admission limit.", registry=r,
                                    multiprocess_mode="livesum")
        self.ttft = Histogram("streamproxy_time_to_first_token_seconds",
                              "Streams: request received to first token sent (not a "
                              "role chunk alone; not a response-cache hit's).", pm,
                              buckets=TTFT_BUCKETS, registry=r)
        self.duration = Histogram("streamproxy_request_duration_seconds",
                                  "Request received to response complete (stream=true: the "
                                  "stream duration; not a response-cache hit's), by final "
                                  "HTTP status.",
                                  # (status: an outage's fast errors pulled the answers'
                                  # quantiles down, as if the provider were faster)
                                  [*pm, "stream", "status"],
                                  buckets=DURATION_BUCKETS, registry=r)
        self.gap_max = Histogram("streamproxy_stream_max_gap_seconds",
                                 "Per stream: the longest gap between two upstream reads from "
                                 "the first token on.", pm, buckets=GAP_BUCKETS, registry=r)
        self.gap_mean = Histogram("streamproxy_stream_mean_gap_seconds",
                                  "Per stream: the mean gap between upstream reads from the "
                                  "first token on.", pm, buckets=GAP_BUCKETS, registry=r)
        self.tokens = Counter("streamproxy_tokens", "Tokens reported by providers; cached is "
                              "the part of input served from the provider's prompt cache, "
                              "cache_write the part written to it, reasoning the part of "
                              "output the model thought.", [*pm, "type"], registry=r)
        self.upstream_errors = Counter("streamproxy_upstream_errors",
                                       "Upstream failures by kind, retried or final.",
                                       ["provider", "kind"], registry=r)
        self.retries = Counter("streamproxy_retries",
                               "Upstream attempts that repeated a target after a failure.",
                               ["provider"], registry=r)
        self.fallbacks = Counter("streamproxy_fallbacks",
                                 "Moves to another planned target after a failure, by the "
                                 "failed target's provider.",
                                 ["provider"], registry=r)
        self.disconnects = Counter("streamproxy_client_disconnects",
                                   "Requests whose client went away before the end.",
                                   ["provider"], registry=r)
        self.rejected = Counter("streamproxy_rejected_requests",
                                "Requests refused before routing.", ["reason"], registry=r)
        self.circuit = Gauge("streamproxy_circuit_breaker_state",
                             "0 closed, 1 half-open, 2 open (workers share the breakers: the "
                             "latest change any of them made).",
                             ["target", "cb_config"], registry=r,
                             # not live*: the breakers outlive the worker that reported one
                             # (retire_process keeps its latest changes)
                             multiprocess_mode="mostrecent")
        self.cache_requests = Counter("streamproxy_cache_requests",
                                      "Response cache lookups by x-portkey-cache-status: HIT, "
                                      "MISS or REFRESH.", ["status"], registry=r)
        # The unit last, as Prometheus names them (they were streamproxy_bytes_in/_out).
        self.bytes_in = Counter("streamproxy_request_body_bytes",
                                "Request body bytes from clients.", ["provider"], registry=r)
        self.bytes_out = Counter("streamproxy_response_body_bytes",
                                 "Response body bytes sent to clients.", ["provider"],
                                 registry=r)
        self._models: set[str] = set()
        self._configured_models: set[str] = set()  # outside the cap: see keep_models
        self._circuit_targets: set[tuple[str, str]] = set()  # (target, rules)
        self._client_circuit_targets: set[tuple[str, str]] = set()  # (clients' configs made)
        # (open exported breakers)
        self._half_open_timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._children: dict[tuple[Any, ...], Any] = {}
        self._series: dict[tuple[str, str, str, str], _Series] = {}

    def keep_models(self, models: Iterable[str]) -> None:
        """The configured models (those /v1/models lists) keep their own label whatever
        clients named first: they do not count against the cap, so cannot be crowded out."""
        self._configured_models.update(bounded_label(m) for m in models if m)
        self._models -= self._configured_models

    def seed_models(self, models: Iterable[str]) -> None:
        """Client models other workers (live, or gone: a reload's predecessors) already
        export: reusing them adds no series, and they count against this worker's cap, or each
        reload and replaced worker would add MAX_MODEL_LABELS more for the master's life."""
        self._models.update(m for m in models if m and m != "other")
        self._models -= self._configured_models

    def model_label(self, model: str | None) -> str:
        if not model:
            return ""
        if len(model) > MAX_LABEL_CHARS:
            model = bounded_label(model)
        if model not in self._models and model not in self._configured_models:
            if len(self._models) >= MAX_MODEL_LABELS:
                return "other"
            self._models.add(model)
        return model

    def circuit_state(self, target: str, value: int, half_open_after: float | None = None,
                      rules: str = "", client: bool = False) -> None:
        """`half_open_after`: an open breaker turns half-open then, by time alone; a timer
        shows it (in the worker that saw it open: the most recent change, for the others).
        `rules`: the breaker's cb_config (one target's breakers under other rules are apart);
        `client`: a client's inline config made it (capped apart from the operator's)."""
        breaker = (target, rules)
        if breaker not in self._circuit_targets and breaker not in self._client_circuit_targets:
            kept = self._client_circuit_targets if client else self._circuit_targets
            if len(kept) >= MAX_CIRCUIT_LABELS:
                return
            kept.add(breaker)
        self.circuit.labels(target, rules).set(value)
        timer = self._half_open_timers.pop(breaker, None)
        if timer is not None:
            timer.cancel()
        if half_open_after is not None:
            with contextlib.suppress(RuntimeError):  # (no loop: nothing to show it on)
                self._half_open_timers[breaker] = asyncio.get_running_loop().call_later(
                    half_open_after, self._half_opened, breaker)

    def seed_half_open(self, opened: Iterable[tuple[tuple[str, str], float]]) -> None:
        """Breakers other workers (live, or gone: a reload's predecessors) last reported open,
        with when (wall clock) their cooldown ends: this worker shows them half-open then, as
        their timer did in the worker that saw them open, which may have exited (the gauge
        said open for good, until a request reached the target)."""
        with contextlib.suppress(RuntimeError):  # (no loop: nothing to show it on)
            loop = asyncio.get_running_loop()
            for breaker, at in opened:
                if breaker not in self._half_open_timers:
                    self._half_open_timers[breaker] = loop.call_later(
                        max(0.0, at - time.time()), self._half_opened, breaker)

    def _half_opened(self, breaker: tuple[str, str]) -> None:
        del self._half_open_timers[breaker]
        self.circuit.labels(*breaker).set(CIRCUIT_STATES["half_open"])

    def observe(self, r: RequestRecord) -> None:
        """The observer: every sample of one request, at its end."""
        try:
            self._observe(r)
        except Exception:  # an observer must never break the response it observes
            log.exception("metrics observer failed")

    def _observe(self, r: RequestRecord) -> None:
        provider = r.provider or ""
        model = self.model_label(r.model)
        # (unknown, refused before its body was read: "", as an unknown provider is)
        stream = "true" if r.stream else "" if r.stream is None else "false"
        status = str(r.status)
        series = self._series.get((provider, model, status, stream))
        if series is None:
            series = self._series[(provider, model, status, stream)] = _Series(
                self, provider, model, status, stream)
        series.requests(1)
        # A response-cache hit asked no provider: its millisecond answer, its tokens are not
        # the provider's (in its histograms, hits pulled the provider's latency down).
        asked = r.cache_status != "HIT"
        if r.duration is not None and asked:
            series.duration.observe(r.duration)
        if r.stream and r.ttft is not None and asked:
            series.ttft.observe(r.ttft)
        if r.gap_max is not None and r.gap_mean is not None:  # (a cut stream's: no read)
            series.gap_max.observe(r.gap_max)
            series.gap_mean.observe(r.gap_mean)
        if isinstance(r.usage, dict) and asked:
            self._tokens(series, r.usage)
        if r.bytes_in:
            series.bytes_in(r.bytes_in)
        if r.bytes_out:
            series.bytes_out(r.bytes_out)
        # The rare facts, through prometheus-client's own API.
        c = self._child
        for where, kind in r.upstream_errors or ():
            c(self.upstream_errors, where, kind).inc()
        for retried in r.retried or ():  # the retried target's provider, not the last one
            c(self.retries, retried).inc()
        for left in r.fell_back or ():  # the failed target's provider, as for retries
            c(self.fallbacks, left).inc()
        if r.client_disconnected:
            c(self.disconnects, provider).inc()
        if r.cache_status is not None and r.cache_status != "DISABLED":
            c(self.cache_requests, r.cache_status).inc()

    def _child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, memoised: prometheus-client's own lookup takes a lock and
        validates the labels on every call, several times the cost of the sample itself. Every
        label is bounded (configured names, capped models, statuses, kinds), so is this."""
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    @staticmethod
    def _tokens(series: _Series, usage: dict[str, Any]) -> None:
        details = usage.get("prompt_tokens_details")
        output = usage.get("completion_tokens_details")
        # (cache writes and reasoning are billed apart: above the input price, as output)
        counts = ((series.input_tokens, usage.get("prompt_tokens")),
                  (series.output_tokens, usage.get("completion_tokens")),
                  (series.cached_tokens,
                   details.get("cached_tokens") if isinstance(details, dict) else 0),
                  (series.cache_write_tokens, cache_write_tokens(usage, details)),
                  (series.reasoning_tokens,
                   output.get("reasoning_tokens") if isinstance(output, dict) else 0))
        for inc, n in counts:
            # Pass-through usage is the provider's JSON: count only plausible integers.
            if isinstance(n, int) and not isinstance(n, bool) and n > 0:
                inc(n)


class _Series:
    """Every sample one kind of request (provider, model, status, stream) feeds, resolved once:
    the children's value objects themselves. Going through prometheus-client's wrappers
    (`Counter.inc`, `Histogram.observe`) re-checks the labels and walks the buckets in Python
    on every call: ~3/4 of the observer's cost per request. Labels are validated here, once,
    by `labels()`; tests/test_metrics.py reads every series back through the registry."""

    __slots__ = ("bytes_in", "bytes_out", "cache_write_tokens", "cached_tokens", "duration",
                 "gap_max", "gap_mean", "input_tokens", "output_tokens", "reasoning_tokens",
                 "requests", "ttft")

    def __init__(self, m: Metrics, provider: str, model: str, status: str, stream: str) -> None:
        pm = (provider, model)
        self.requests = _inc(m._child(m.requests, *pm, status, stream))
        self.duration = _Histogram(m._child(m.duration, *pm, stream, status))
        self.ttft = _Histogram(m._child(m.ttft, *pm))
        self.gap_max = _Histogram(m._child(m.gap_max, *pm))
        self.gap_mean = _Histogram(m._child(m.gap_mean, *pm))
        self.input_tokens = _inc(m._child(m.tokens, *pm, "input"))
        self.output_tokens = _inc(m._child(m.tokens, *pm, "output"))
        self.cached_tokens = _inc(m._child(m.tokens, *pm, "cached"))
        self.cache_write_tokens = _inc(m._child(m.tokens, *pm, "cache_write"))
        self.reasoning_tokens = _inc(m._child(m.tokens, *pm, "reasoning"))
        self.bytes_in = _inc(m._child(m.bytes_in, provider))
        self.bytes_out = _inc(m._child(m.bytes_out, provider))


def _inc(counter_child: Any) -> Callable[[float], None]:
    return counter_child._value.inc  # type: ignore[no-any-return]


class _Histogram:
    """A histogram child's observe: the bucket found by bisection (prometheus-client's
    `observe` picks the first bound >= the value; so does bisect_left)."""

    __slots__ = ("_bounds", "_buckets", "_sum")

    def __init__(self, child: Any) -> None:
        self._sum = child._sum.inc
        self._bounds = tuple(child._upper_bounds)
        self._buckets = tuple(b.inc for b in child._buckets)

    def observe(self, value: float) -> None:
        self._sum(value)
        self._buckets[bisect_left(self._bounds, value)](1)


_metrics: Metrics | None = None


def metrics() -> Metrics:
    """The process's metrics, created on first use (after the master set the multiprocess
    directory, whatever imported prometheus_client earlier)."""
    global _metrics
    if _metrics is None:
        path = multiprocess_dir()
        if path is not None:
            _check_directory(path)
            values.ValueClass = values.get_value_class()
        disable_created_metrics()  # `_created` series would double the series count
        _metrics = Metrics(REGISTRY)
        if path is not None:
            _metrics.seed_models(_exported_models(path))
            _metrics.seed_half_open(_open_breakers(path))
    return _metrics


def _check_directory(path: str) -> None:
    if not os.path.isdir(path):
        raise ConfigError(f"env {MULTIPROC_ENV}", "", f"{path!r} is not a directory")


def _exported_models(path: str) -> set[str]:
    """The `model` labels of streamproxy_requests_total in the directory's counter files
    (live workers' and the retired one); read once, as a worker's metrics are made."""
    models: set[str] = set()
    with _directory_lock(path, fcntl.LOCK_SH):  # (not half-way through a retirement)
        for name in os.listdir(path):
            if not (name.startswith("counter_") and name.endswith(".db")):
                continue
            try:
                entries = MmapedDict.read_all_values_from_file(os.path.join(path, name))
                for key, _, _, _ in entries:
                    metric, _, labels, _ = json.loads(key)
                    if metric == "streamproxy_requests" and isinstance(labels, dict):
                        models.add(str(labels.get("model") or ""))
            except Exception:  # (gone, half-written, corrupt: not seeded; a start never fails)
                continue
    return models


def _open_breakers(path: str) -> list[tuple[tuple[str, str], float]]:
    """The breakers whose latest state in the directory's circuit gauge files (live workers'
    and the retired one) is open, each with when its cooldown ends (the time it was set,
    plus its cb_config's cooldown_interval); read once, as a worker's metrics are made."""
    latest: dict[tuple[str, str], tuple[float, float]] = {}  # (value, set at)
    with _directory_lock(path, fcntl.LOCK_SH):  # (not half-way through a retirement)
        for name in os.listdir(path):
            if not (name.startswith(f"{_LATEST_GAUGES}_") and name.endswith(".db")):
                continue
            try:
                for key, value, at, _ in MmapedDict.read_all_values_from_file(
                        os.path.join(path, name)):
                    metric, _, labels, _ = json.loads(key)
                    if metric != "streamproxy_circuit_breaker_state":
                        continue
                    breaker = (str(labels["target"]), str(labels["cb_config"]))
                    if at >= latest.get(breaker, (0.0, -1.0))[1]:
                        latest[breaker] = (value, at)
            except Exception:  # (gone, half-written, corrupt: not seeded; a start never fails)
                continue
    opened = []
    for breaker, (value, at) in latest.items():
        cooldown = _COOLDOWN.search(breaker[1])
        if value == CIRCUIT_STATES["open"] and cooldown is not None:
            opened.append((breaker, at + float(cooldown.group(1)) / 1000))
    return opened


def set_circuit_state(target_key: str, state: str, half_open_after: float | None = None,
                      rules: str = "", client: bool = False) -> None:
    """For the circuit breakers (routing/): `state` is closed, half_open or open; an open one
    turns half-open after `half_open_after` seconds; `rules` its cb_config (breaker.py's
    rules_label); `client`: a client's inline config made it."""
    try:
        value = CIRCUIT_STATES[state]
    except KeyError:
        raise ValueError(f"unknown circuit state {state!r}") from None
    # A breaker key may hold a base URL: never expose credentials written into one.
    target = bounded_label(_USERINFO.sub("://", target_key))
    metrics().circuit_state(target, value, half_open_after, bounded_label(rules), client)


def render() -> bytes:
    """The exposition text: this process's registry, or every worker's files aggregated."""
    path = multiprocess_dir()
    if path is not None:
        registry = CollectorRegistry()  # per scrape, as prometheus-client recommends
        multiprocess.MultiProcessCollector(registry)
        with _directory_lock(path, fcntl.LOCK_SH):  # never half-way through a retirement
            return generate_latest(registry)
    return generate_latest(REGISTRY)


def claim_directory(path: str) -> int:
    """At start: the directory for this instance alone, for its life — the descriptor returned
    holds an exclusive flock, which the kernel lets go when the last process holding it (the
    master, its forked workers) exits, however it ends. A second instance given the same
    directory would clear the first's files at start, and each would scrape the other's
    samples as its own: it is refused (a ConfigError naming the holder)."""
    _check_directory(path)
    try:
        fd = os.open(os.path.join(path, _INSTANCE_LOCK), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:  # (read-only, not ours: every worker would fail to write there)
        raise ConfigError(f"env {MULTIPROC_ENV}", "", f"{path!r}: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 20, 0).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        raise ConfigError(f"env {MULTIPROC_ENV}", "", f"{path!r} is in use by another "
                          f"streamproxy (pid {holder}); give each instance its own "
                          "directory") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def clear_previous_run(path: str) -> int:
    """At start, before any process writes there: the sample files a previous run left in an
    operator's persistent directory (prometheus-client reads every file in it: its counters
    would start where that run's ended, its killed workers' gauges count on). Returns how many
    were removed. Not a directory: a ConfigError, said once before any worker starts."""
    _check_directory(path)
    removed = 0
    try:
        with _directory_lock(path, fcntl.LOCK_EX):
            for name in os.listdir(path):
                if _SAMPLE_FILE.fullmatch(name):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(path, name))
                        removed += 1
    except OSError as e:  # (read-only, not ours: every worker would fail to write there)
        raise ConfigError(f"env {MULTIPROC_ENV}", "", f"{path!r}: {e.strerror or e}") from None
    return removed


def retire_process(pid: int) -> None:
    """The master's, when a worker exits: its live gauges go, its breaker gauge's latest
    changes are kept in the `retired` file (later ones win), and its counters and histograms
    are added into the `retired` files and removed (summed, they stay in every total). Under
    the directory's lock, so a scrape sees them in one place or the other, never both or
    neither (and never a file listed then gone)."""
    path = multiprocess_dir()
    if path is None:
        return
    with _directory_lock(path, fcntl.LOCK_EX):
        multiprocess.mark_process_dead(pid, path)
        for kind in _KEPT_TYPES:
            dead = os.path.join(path, f"{kind}_{pid}.db")
            if os.path.exists(dead):
                _add_into(os.path.join(path, f"{kind}_{_RETIRED}.db"), dead)
                os.unlink(dead)
        dead = os.path.join(path, f"{_LATEST_GAUGES}_{pid}.db")
        if os.path.exists(dead):
            _add_into(os.path.join(path, f"{_LATEST_GAUGES}_{_RETIRED}.db"), dead, latest=True)
            os.unlink(dead)


def _add_into(into: str, dead: str, latest: bool = False) -> None:
    """`dead`'s samples added into `into`'s; `latest`: the later of the two kept instead."""
    retired = MmapedDict(into)
    try:
        for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(dead):
            kept, kept_at = retired.read_value(key)
            if not latest:
                retired.write_value(key, kept + value, timestamp)
            elif timestamp >= kept_at:
                retired.write_value(key, value, timestamp)
    finally:
        retired.close()


@contextlib.contextmanager
def _directory_lock(path: str, how: int) -> Iterator[None]:
    fd = os.open(os.path.join(path, _LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, how)
        yield
    finally:
        os.close(fd)


async def metrics_handler(request: web.Request) -> web.Response:
    # Rendering reads every series (and, multi-process, every worker's files): off the loop.
    body = await asyncio.to_thread(render)
    return web.Response(body=body, headers={"content-type": CONTENT_TYPE_LATEST})
