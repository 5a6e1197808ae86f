"""`serve`'s default worker count: the CPUs the process may use, a cgroup's CPU quota (a
container's limit) included, read from fake cgroup trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamproxy.server import cpus, workers


def _tree(tmp_path: Path, self_cgroup: str, files: dict[str, str]) -> tuple[str, str]:
    root = tmp_path / "cgroup"
    root.mkdir()
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    proc = tmp_path / "self_cgroup"
    proc.write_text(self_cgroup)
    return str(root), str(proc)


@pytest.mark.parametrize(("self_cgroup", "files", "limit"), [
    # cgroup v2 in a container (its own namespace): Kubernetes' limits.cpu: 1500m
    ("0::/\n", {"cpu.max": "150000 100000\n"}, 1.5),
    ("0::/\n", {"cpu.max": "max 100000\n"}, None),
    # v2 without a namespace: the limit is the service's parent's (a systemd slice)
    ("0::/pods.slice/app.service\n", {"pods.slice/cpu.max": "50000 100000\n",
                                      "pods.slice/app.service/cpu.max": "max 100000\n"}, 0.5),
    # v1 (older Docker, Kubernetes nodes): the container's own cgroup mounted as the root,
    # while /proc/self/cgroup names the host's path
    ("4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n",
     {"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
    ("3:cpu,cpuacct:/\n", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"},
     None),
    ("garbage\n", {"cpu.max": "nonsense\n"}, None),
])
def test_the_cgroup_cpu_limit_is_read(tmp_path: Path, self_cgroup: str, files: dict[str, str],
                                      limit: float | None) -> None:
    assert cpus.cgroup_cpu_limit(*_tree(tmp_path, self_cgroup, files)) == limit


def test_no_cgroups_no_limit(tmp_path: Path) -> None:
    assert cpus.cgroup_cpu_limit(str(tmp_path), str(tmp_path / "absent")) is None


def test_a_containers_cpu_limit_caps_the_default_worker_count(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sidecar limited to half a CPU on a many-CPU node forked a worker per node CPU (~40 MB
    each): one process now, as on a one-CPU machine; 1.5 CPUs is 2 workers (rounded up)."""
    monkeypatch.setattr(cpus, "affinity_cpus", lambda: 64)
    root, proc = _tree(tmp_path, "0::/\n", {"cpu.max": "50000 100000\n"})
    monkeypatch.setattr(cpus, "CGROUP_ROOT", root)
    monkeypatch.setattr(cpus, "SELF_CGROUP", proc)
    assert workers.default_workers() == 1
    (Path(root) / "cpu.max").write_text("150000 100000\n")
    assert workers.default_workers() == 2
    (Path(root) / "cpu.max").write_text("max 100000\n")
    assert workers.default_workers() == 64
