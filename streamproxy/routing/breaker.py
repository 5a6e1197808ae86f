"""Circuit breakers per target (Portkey 2.x `cb_config`), with an injectable clock.

CLOSED counts requests and failures (a request's tries of the target count once, retries and
all: the executor records their outcome) in a window of one `cooldown_interval` from the
first it counts, then starts again (as Portkey resets its counts when a cooldown ends); it
opens when the window's failures reach `failure_threshold`, or their share reaches
`failure_threshold_percentage` once `minimum_requests` were seen. OPEN targets are skipped
by fallback and load balancing; after `cooldown_interval` the breaker lets one trial request
through (HALF-OPEN, `admit`): its success (a stream's, when it opens) closes it and resets
the counts, its failure opens it for another cooldown; while it is under way the others skip
the target as if it were open. A trial whose outcome never comes (a request cancelled,
refused before it was sent) is `release`d; one never released (a worker that died) is stale
once its tries could no longer be running (`admit`'s `lasts`, at least a cooldown), and
another request is the trial. A trial is named by the `Trial` `admit` returns: a stale one's
late release or outcome leaves a newer trial under way alone (it cleared the newer one's
mark, letting a third request through, or decided the breaker the newer one was testing). If
every target of a plan is open, the plan ignores the breakers (as Portkey does): failing
fast on all of them helps nobody.

A state is a target's under one set of rules (`BreakerSpec`): the configs that give a target
the same cb_config share its breaker, one with other rules (a client's inline
x-portkey-config) keeps its own, as Portkey keeps them per config. Shared whatever the rules,
a client's 1 ms cooldown_interval half-opened the breaker an operator's config held open (its
trial closing it), and its failure_threshold 1 with its own failure_status_codes let one bad
request of its own open it. Listeners (metrics) are told the target's key and its rules
(`rules_label`): told the key alone, the gauge showed whichever breaker changed last.

The states live in this process (`CircuitBreakers`) or, with `--workers N`, in a table all
the workers share (server/shared_breakers.py overrides `_load` / `_save` / `_locked`), so
that a target trips after `failure_threshold` failures on the instance, not per worker.

A target's key names its model, which a client's `x-portkey-config` chooses: the states kept
in a process are capped at `MAX_STATES`, so distinct models cannot grow the map for the life
of the process. A dropped state starts again from closed, so the closed ones go first (the
least recently recorded of them): an open breaker is not recorded while its target is skipped,
and would otherwise be the first dropped. Only when all are open does the oldest open one go.
The states a client's inline config made (`BreakerSpec.client`, until the operator's rules
record one) are capped apart, at half, and never drop an operator's open one: a flood of
distinct client cb_configs, each opened by a bad request of its own, dropped the operator's
open breakers, and its failing targets were tried again at full rate.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Literal

from streamproxy.routing.portkey_config import BreakerSpec

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
MAX_STATES = 4096  # per process, as many as the workers' shared table has slots


@dataclass(slots=True)
class BreakerState:
    requests: int = 0
    failures: int = 0
    opened_at: float | None = None
    # When a half-open breaker's trial under way is stale: its worker died, never recording it.
    trial_until: float | None = None
    client: bool = False  # made by a client's inline config (BreakerSpec.client)
    # When a closed one's counts began: they cover one cooldown_interval, then start again.
    since: float | None = None


@dataclass(frozen=True, slots=True)
class Trial:
    """A half-open breaker's trial, as `admit` let it through: its `trial_until` (each later
    trial's ends later, so it names this one)."""
    until: float


# (key, state, for an open one the seconds until it turns half-open: by time alone, which no
# record reports; its rules, `rules_label`; whether a client's inline config made it)
StateListener = Callable[[str, str, float | None, str, bool], None]


class CircuitBreakers:
    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 max_states: int = MAX_STATES) -> None:
        self._clock = clock
        self._max_states = max_states
        self._max_clients = max_states // 2
        self._states: dict[str, BreakerState] = {}  # least recently recorded first
        # The keys of some of them, in the same order: the operator's closed ones, the
        # clients' closed ones, all the clients'.
        self._closed: dict[str, None] = {}
        self._clients_closed: dict[str, None] = {}
        self._clients: dict[str, None] = {}
        self.listeners: list[StateListener] = []  # on every change; metrics

    def state(self, key: str, spec: BreakerSpec) -> str:
        return self._phase(self._load(key + _rules(spec)), spec)

    def is_open(self, key: str, spec: BreakerSpec | None) -> bool:
        """Skipped by a plan: open, or half-open with its trial under way."""
        if spec is None:
            return False
        st = self._load(key + _rules(spec))
        phase = self._phase(st, spec)
        return phase == OPEN or (phase == HALF_OPEN and self._trying(st))

    def admit(self, key: str, spec: BreakerSpec, lasts: float = 0.0
              ) -> Trial | Literal[False] | None:
        """Before a request's tries of the target: a `Trial` when it is a half-open breaker's
        trial (its outcome must be recorded or released with it), False when another's trial
        is under way (the target is skipped if the plan has another), None otherwise (closed;
        or open, tried when all the plan's targets are). `lasts`: the longest its tries may
        take; the trial is held that long, or a cooldown if longer (a slow one, held for one
        cooldown, let a second trial through while it still waited on the target)."""
        key += _rules(spec)
        if self._phase(self._load(key), spec) != HALF_OPEN:  # (no lock for a closed one)
            return None
        with self._locked():
            st = self._load(key)
            if st is None or self._phase(st, spec) != HALF_OPEN:
                return None
            if self._trying(st):
                return False
            st.trial_until = self._clock() + max(lasts, spec.cooldown_interval)
            self._save(key, st)
        return Trial(st.trial_until)

    def release(self, key: str, spec: BreakerSpec, trial: Trial) -> None:
        """A trial that ended with no outcome: the next request may be the trial (unless
        `trial` went stale and another is the trial now)."""
        key += _rules(spec)
        with self._locked():
            st = self._load(key)
            if st is not None and st.trial_until == trial.until:
                st.trial_until = None
                self._save(key, st)

    def record(self, key: str, spec: BreakerSpec | None, status: int | None,
               trial: Trial | None = None) -> None:
        """One finished attempt: `status` None for success, else the error's HTTP status;
        `trial`: what `admit` returned, if it was the trial."""
        if spec is None:
            return
        failed = status is not None and spec.is_failure(status)
        state_key = key + _rules(spec)
        with self._locked():  # one read-modify-write, whoever else records at the same time
            st = self._load(state_key) or BreakerState(client=spec.client)
            st.client &= spec.client  # (the operator's rules recorded it: the operator's)
            before = self._phase(st, spec)
            if before == HALF_OPEN:
                if self._trying(st) and (trial is None or trial.until != st.trial_until):
                    return  # another's trial is under way: its outcome decides
                st.trial_until = None
                if failed:
                    st.opened_at = self._clock()
                else:
                    st.requests = st.failures = 0
                    st.opened_at = st.since = None
            elif before == CLOSED:
                # (counted for good, stray failures a day apart tripped a failure_threshold,
                # and a long healthy run diluted an outage below any percentage)
                now = self._clock()
                if st.since is None or now - st.since >= spec.cooldown_interval:
                    st.requests = st.failures = 0
                    st.since = now
                st.requests += 1
                st.failures += failed
                if failed and self._trips(st, spec):
                    st.opened_at = self._clock()
            kept = self._save(state_key, st)
            after = self._phase(st, spec)
        if after != before and kept:  # (one not kept: the gauge showed a breaker none has)
            half_open_after = spec.cooldown_interval if after == OPEN else None
            rules = rules_label(spec)
            for listener in self.listeners:
                listener(key, after, half_open_after, rules, st.client)

    def _phase(self, st: BreakerState | None, spec: BreakerSpec) -> str:
        if st is None or st.opened_at is None:
            return CLOSED
        if self._clock() - st.opened_at >= spec.cooldown_interval:
            return HALF_OPEN
        return OPEN

    def _trying(self, st: BreakerState | None) -> bool:
        """A trial under way, not yet stale."""
        return (st is not None and st.trial_until is not None
                and self._clock() < st.trial_until)

    @staticmethod
    def _trips(st: BreakerState, spec: BreakerSpec) -> bool:
        if spec.failure_threshold is not None and st.failures >= spec.failure_threshold:
            return True
        pct = spec.failure_threshold_percentage
        return (pct is not None and st.requests >= spec.minimum_requests
                and 100 * st.failures / st.requests >= pct)

    # Where the states are kept: this process's memory.
    def _load(self, key: str) -> BreakerState | None:
        return self._states.get(key)

    def _save(self, key: str, st: BreakerState) -> bool:
        """False: not kept (a client's, when every state is an operator's open one)."""
        states = self._states
        for keys in (self._closed, self._clients_closed, self._clients):
            keys.pop(key, None)
        if states.pop(key, None) is None:
            if st.client and len(self._clients) >= self._max_clients:
                pools: tuple[dict[str, object], ...] = (self._clients_closed, self._clients)
            elif len(states) >= self._max_states:  # never an operator's open one for a client
                pools = (self._clients_closed, self._closed, self._clients,
                         *(() if st.client else (states,)))
            else:
                pools = ()
            if pools:
                pool = next((p for p in pools if p), None)
                if pool is None:  # all the operator's open breakers: the client's is not kept
                    return False
                dropped = next(iter(pool))
                del states[dropped]
                for keys in (self._closed, self._clients_closed, self._clients):
                    keys.pop(dropped, None)
        states[key] = st
        if st.opened_at is None:
            (self._clients_closed if st.client else self._closed)[key] = None
        if st.client:
            self._clients[key] = None
        return True

    def _locked(self) -> AbstractContextManager[object]:
        return contextlib.nullcontext()


@functools.lru_cache(maxsize=1024)
def _rules(spec: BreakerSpec) -> str:
    """The rules' part of a state's key (a spec's codes sorted: one set, one key)."""
    codes = spec.failure_status_codes
    return (f"#{spec.failure_threshold}/{spec.failure_threshold_percentage}/"
            f"{spec.minimum_requests}/{spec.cooldown_interval!r}/"
            f"{'' if codes is None else ','.join(map(str, sorted(codes)))}")


@functools.lru_cache(maxsize=1024)
def rules_label(spec: BreakerSpec) -> str:
    """The rules as a config gives them (Portkey's names, the cooldown in ms, the fields set):
    the metrics' cb_config label, telling apart one target's breakers under other rules."""
    ms = f"{spec.cooldown_interval * 1000:.3f}".rstrip("0").rstrip(".")
    parts = [f"failure_threshold={spec.failure_threshold}"
             if spec.failure_threshold is not None else "",
             f"failure_threshold_percentage={spec.failure_threshold_percentage:g}"
             if spec.failure_threshold_percentage is not None else "",
             f"minimum_requests={spec.minimum_requests}" if spec.minimum_requests != 1 else "",
             f"cooldown_interval={ms}",
             "failure_status_codes=" + " ".join(map(str, sorted(spec.failure_status_codes)))
             if spec.failure_status_codes is not None else ""]
    return ",".join(p for p in parts if p)
