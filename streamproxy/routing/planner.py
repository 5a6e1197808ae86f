"""The planner (pure): (config tree, request, seeded RNG, breaker states) → ordered attempts.

Load-balance choices are drawn and conditions evaluated here, once, so the plan is a flat
list of leaf attempts in the order they may be tried. Fallback structure survives as each
attempt's `groups` — its chain of enclosing fallback groups (id, child position, trigger
codes) — which is all `next_after` needs to find where a failure moves to:

    fallback(fallback(A, B; on 429), C)      A fails with 500 → the inner group does not act
                                              on 500, so it fails as a whole → C (not B).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streamproxy.errors import InvalidRequest
from streamproxy.routing.breaker import CircuitBreakers
from streamproxy.routing.conditions import CLIENT_REGEX_TEXT_MAX, matches
from streamproxy.routing.portkey_config import BreakerSpec, ConfigNode, RetrySpec
from streamproxy.routing.target import Target

NO_RETRY = RetrySpec()
Group = tuple[int, int, frozenset[int] | None]  # (group id, child position, trigger codes)


# Not frozen, though nothing changes one: a frozen dataclass's __init__ sets each field through
# object.__setattr__ (~3x the cost), and every request builds at least one.
@dataclass(slots=True)
class Attempt:
    target: Target
    path: str  # where the leaf sits in the config, e.g. "config.targets[1]"
    retry: RetrySpec = NO_RETRY
    breaker: BreakerSpec | None = None
    groups: tuple[Group, ...] = ()
    cache: dict[str, Any] | None = None  # the leaf's `cache`, or its nearest parent's
    # A conditional that matched nothing and has no default: the request fails with this 400
    # when the plan reaches it (as in Portkey), not when an earlier fallback target answers.
    refusal: InvalidRequest | None = None
    # Its place in the plan as configured, before open breakers' targets (and a proxy key's
    # disallowed ones) were left out: the log's target_index, the same whatever their state.
    position: int = 0

    @property
    def breaker_key(self) -> str:
        t = self.target
        key = f"{t.provider.name}|{t.model or ''}|{t.provider.endpoint}"
        # (two keys of one provider: one rate-limited or revoked opened the other's breaker,
        # and with both open the breakers were bypassed)
        return f"{key}|{t.key_id}" if t.key_id else key


@dataclass(slots=True)
class Plan:
    attempts: list[Attempt]
    # Upstream requests the whole plan may send, retries and fallbacks together (None: as
    # many as its attempts ask): the executor stops there (Gateway.plan sets it).
    max_tries: int | None = None

    def next_after(self, index: int, status: int,
                   skipped: frozenset[int] = frozenset()) -> int | None:
        """The attempt to try after `index` failed with `status`, or None: the request fails.
        `skipped`: attempts left out, as if the plan had not had them (a breaker's trial
        under way, found when the attempt was reached)."""
        groups = self.attempts[index].groups
        for depth in range(len(groups) - 1, -1, -1):
            gid, position, codes = groups[depth]
            if codes is not None and status not in codes:
                continue  # this group does not act on the status: it fails as a whole
            for j in range(index + 1, len(self.attempts)):
                other = self.attempts[j].groups
                if (len(other) > depth and other[depth][0] == gid
                        and other[depth][1] > position and j not in skipped):
                    return j
        return None


def single(target: Target, retry: RetrySpec = NO_RETRY,
           cache: dict[str, Any] | None = None) -> Plan:
    return Plan([Attempt(target, "config", retry, cache=cache)])


Resolve = Callable[[ConfigNode], Target]


@dataclass(slots=True)
class _Walk:
    resolve: Resolve
    rng: random.Random
    breakers: CircuitBreakers
    metadata: dict[str, Any]
    params: dict[str, Any]
    path: str
    targets: dict[str, Target]
    usable: Callable[[Target], bool] | None = None
    next_group: int = 0

    def attempts(self, node: ConfigNode, groups: tuple[Group, ...],
                 cache: dict[str, Any] | None = None) -> list[Attempt]:
        cache = node.cache if node.cache is not None else cache  # inherited, as in Portkey
        if node.is_leaf:
            return [Attempt(self.targets[node.path], node.path, node.retry, node.breaker,
                            groups, cache)]
        if node.mode == "fallback":
            gid = self.next_group
            self.next_group += 1
            return [a for i, child in enumerate(node.targets) for a in self.attempts(
                child, (*groups, (gid, i, node.on_status_codes)), cache)]
        try:
            chosen = self.choose(node)
        except InvalidRequest as e:  # (a conditional without a match)
            return [Attempt(self.targets[node.leaves()[0].path], node.path, groups=groups,
                            refusal=e)]
        return self.attempts(chosen, groups, cache)

    def choose(self, node: ConfigNode) -> ConfigNode:
        if node.mode == "single":
            return node.targets[0]
        if node.mode == "conditional":
            return self.condition(node)
        weighted = [c for c in node.targets if c.weight > 0]
        if self.usable is not None:  # (a proxy key's providers: a draw of another was a 403
            # while a target it may use could answer; none usable: the draw, then the 403)
            weighted = [c for c in weighted if self.any_usable(c)] or weighted
        healthy = [c for c in weighted if not self.all_open(c)]
        candidates = healthy or weighted
        point = self.rng.random() * sum(c.weight for c in candidates)
        for child in candidates:
            point -= child.weight
            if point < 0:
                return child
        return candidates[-1]

    def condition(self, node: ConfigNode) -> ConfigNode:
        return condition(node, self.metadata, self.params, self.path)

    def any_usable(self, node: ConfigNode) -> bool:
        assert self.usable is not None
        return any(self.usable(self.targets[leaf.path]) for leaf in self.live_leaves(node))

    def all_open(self, node: ConfigNode) -> bool:
        return all(self.breakers.is_open(_key(self.targets[leaf.path]), leaf.breaker)
                   for leaf in self.live_leaves(node))

    def live_leaves(self, node: ConfigNode) -> list[ConfigNode]:
        """The leaves this request may reach under `node`: a conditional's pick's only (its
        other targets, healthy or usable, made a draw of it look fine when its pick was
        open or refused); all of them when it matches nothing (its 400 if drawn)."""
        if node.is_leaf:
            return [node]
        if node.mode == "conditional":
            try:
                return self.live_leaves(self.condition(node))
            except InvalidRequest:
                return node.leaves()
        return [leaf for child in node.targets for leaf in self.live_leaves(child)]


def _key(target: Target) -> str:
    return Attempt(target, "").breaker_key


def condition(node: ConfigNode, metadata: dict[str, Any], params: dict[str, Any],
              path: str) -> ConfigNode:
    """The target a conditional strategy picks for a request (its 400 when none matches and
    it has no default)."""
    by_name: dict[str, ConfigNode] = {}
    for child in node.targets:  # a repeated name means its first target (Portkey's findIndex)
        if child.name:
            by_name.setdefault(child.name, child)
    for cond in node.conditions:
        if matches(cond.query, metadata, params, path,
                   CLIENT_REGEX_TEXT_MAX if cond.client else None):
            return by_name[cond.then]
    if node.default is None:
        raise InvalidRequest(f"No condition of '{node.path}' matched the request and the "
                             "strategy has no default.", param=f"{node.path}.strategy",
                             code="no_condition_matched")
    return by_name[node.default]


def reachable_leaves(node: ConfigNode, metadata: dict[str, Any] | None = None,
                     params: dict[str, Any] | None = None, path: str = "") -> list[ConfigNode]:
    """The targets some plan of `node` may run, in its order: not a load balance's `weight: 0`
    ones, nor a `single`'s after its first (_Walk.choose draws neither); a conditional's pick
    for `metadata` and `params`, all its targets without `params` (the request decides). A
    conditional matching nothing runs nothing: its 400 when it comes first, as in `plan` (in a
    load balance, only when every drawable target's plan starts with such a 400)."""

    def walk(n: ConfigNode) -> list[ConfigNode | InvalidRequest]:
        if n.is_leaf:
            return [n]
        if n.mode == "conditional" and params is not None:
            try:
                children = [condition(n, metadata or {}, params, path)]
            except InvalidRequest as e:
                return [e]
        elif n.mode == "single":
            children = list(n.targets[:1])
        elif n.mode == "loadbalance":
            # One child is drawn: one refusing first fails only the draws of it, so it serves
            # nothing beside a sibling that answers (the first's 400 when every one refuses).
            drawn = [walk(c) for c in n.targets if c.weight > 0]
            served = [f for f in drawn if not isinstance(f[0], InvalidRequest)] or drawn[:1]
            return [found for f in served for found in f]
        else:
            children = list(n.targets)
        return [found for child in children for found in walk(child)]

    found = walk(node)
    if found and isinstance(found[0], InvalidRequest):
        raise found[0]
    return [leaf for leaf in found if isinstance(leaf, ConfigNode)]


def plan(root: ConfigNode, resolve: Resolve, *, rng: random.Random,
         breakers: CircuitBreakers, metadata: dict[str, Any] | None = None,
         params: dict[str, Any] | None = None, path: str = "",
         usable: Callable[[Target], bool] | None = None) -> Plan:
    """`path`: the request's, for conditions on `url.pathname`. `usable`: the targets a
    load balance may draw (the others only when none is)."""
    # Every leaf is resolved up front, so a bad target is a 400 whatever the draw.
    targets = {leaf.path: resolve(leaf) for leaf in root.leaves()}
    walk = _Walk(resolve, rng, breakers, metadata or {}, params or {}, path, targets, usable)
    attempts = walk.attempts(root, ())
    for position, attempt in enumerate(attempts):
        attempt.position = position
    closed = [a for a in attempts if a.refusal is not None or a.breaker is None
              or not breakers.is_open(a.breaker_key, a.breaker)]
    if any(a.refusal is None for a in closed):
        attempts = closed
    if attempts[0].refusal is not None:
        raise attempts[0].refusal
    return Plan(attempts)
