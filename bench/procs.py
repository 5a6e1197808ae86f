"""Processes under test: start, pin to a core, wait until they listen, read /proc, stop."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_fd_limit() -> int:
    """Soft fd limit up to the hard one; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def cores() -> tuple[set[int] | None, set[int] | None]:
    """(proxy cores, harness cores): one core each when there are two or more."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return None, None
    return {available[0]}, {available[1]}


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (and its reaped children, which it has none of)."""
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process: its user-space and its kernel time."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / _TICK, int(fields[12]) / _TICK


def syscalls(pid: int) -> tuple[int, int] | None:
    """(read, write) system calls a process has made so far; None where /proc hides them."""
    try:
        io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
        return int(io["syscr"]), int(io["syscw"])
    except (OSError, KeyError, ValueError):
        return None


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def listening(pid: int, port: int) -> bool:
    """Whether the process holds a socket listening on `port` (its fds' socket inodes against
    the LISTEN rows of its network namespace's TCP tables)."""
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):  # closed meanwhile
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    for table in ("tcp", "tcp6"):
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()  # sl local_address rem_address st ... inode (the 10th)
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port and f[9] in inodes:
                return True
    return False


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def kernel_cpu(self) -> float:
        return cpu_split(self.pid)[1]

    def syscalls(self) -> tuple[int, int] | None:
        return syscalls(self.pid)

    def rss_kb(self) -> int:
        return status_kb(self.pid, "VmRSS")

    def peak_rss_kb(self) -> int:
        return status_kb(self.pid, "VmHWM")

    def reset_peak(self) -> None:
        """Restart VmHWM from the current RSS (Linux clear_refs 5); harmless if refused."""
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode


def start(name: str, args: list[str], *, pin: set[int] | None, logdir: Path,
          port: int, timeout: float = 20.0, wrapper: tuple[str, ...] = ()) -> Proc:
    """Start `python args...` (under `wrapper`, e.g. valgrind, when given), pinned to `pin`,
    and wait until it accepts on `port`."""
    log = logdir / f"{name}.log"
    out = log.open("wb")
    popen = subprocess.Popen([*wrapper, sys.executable, *args], stdout=out,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
    out.close()
    proc = Proc(name, popen, log)
    if pin:
        os.sched_setaffinity(popen.pid, pin)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"{name} exited with {popen.returncode}:\n{proc.tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.stop()
    raise RuntimeError(f"{name} did not listen on port {port} within {timeout:g}s:\n{proc.tail()}")
