"""How many workers `serve` starts when not told: one per CPU the process may use.

The CPUs it may run on (its affinity) are not all it may use: a container's CPU limit
(Kubernetes' `resources.limits.cpu`, Docker's `--cpus`, systemd's `CPUQuota=`) is a cgroup
quota, which leaves the affinity at every CPU of the node. A sidecar limited to one CPU on a
64-CPU node then forked 64 workers (~40 MB each: OOM-killed under a modest memory limit, and
throttled by the quota anyway). The quota, rounded up, caps the count, as Go's runtime
(GOMAXPROCS, 1.25) and the JVM do.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = "/sys/fs/cgroup"
SELF_CGROUP = "/proc/self/cgroup"


def affinity_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


def default_workers() -> int:
    cpus = affinity_cpus()
    limit = cgroup_cpu_limit(CGROUP_ROOT, SELF_CGROUP)
    return cpus if limit is None else max(1, min(cpus, math.ceil(limit)))


def cgroup_cpu_limit(root: str, self_cgroup: str) -> float | None:
    """The CPUs the process's cgroup and its ancestors' quotas allow (the lowest), or None
    when none sets one (or there are no cgroups to read)."""
    try:
        lines = Path(self_cgroup).read_text().splitlines()
    except OSError:
        return None
    limits: list[float] = []
    for line in lines:
        fields = line.split(":", 2)  # hierarchy-id:controllers:path
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if not controllers:  # cgroup v2 (unified): cpu.max is "max 100000" or "50000 100000"
            limits += filter(None, (_v2(d) for d in _dirs(Path(root), path)))
        elif "cpu" in controllers.split(","):  # cgroup v1's cpu controller
            base = Path(root) / "cpu"
            limits += filter(None, (_v1(d) for d in _dirs(base, path)))
    return min(limits, default=None)


def _dirs(base: Path, path: str) -> list[Path]:
    """The cgroup's directory and its ancestors under the mount `base`. In a container (its
    own cgroup namespace, or a v1 mount of its own cgroup) `path` is "/" or a host path that
    does not exist here: the mount itself is the container's cgroup."""
    parts = [p for p in path.strip("/").split("/") if p and p != ".."]
    dirs = [base.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]
    return [d for d in dirs if d.is_dir()]


def _v2(directory: Path) -> float | None:
    try:
        quota, period = (directory / "cpu.max").read_text().split()[:2]
        return _ratio(quota, period)
    except (OSError, ValueError):
        return None


def _v1(directory: Path) -> float | None:
    try:
        return _ratio((directory / "cpu.cfs_quota_us").read_text().strip(),
                      (directory / "cpu.cfs_period_us").read_text().strip())
    except (OSError, ValueError):
        return None


def _ratio(quota: str, period: str) -> float | None:
    if quota == "max" or int(quota) <= 0 or int(period) <= 0:  # (v1 says -1: no quota)
        return None
    return int(quota) / int(period)
