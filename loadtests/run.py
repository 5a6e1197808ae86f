"""`make loadtest`: the proxy on its embedded default (in-process mock, no keys), a bounded
headless locust run against it, locust's percentile tables, then everything stopped.

Environment: LOADTEST_USERS (default 20), LOADTEST_TIME (default 30s), LOADTEST_PORT
(default a free port), and the SP_* variables of loadtests/locustfile.py (e.g.
SP_SCENARIOS=translated). Exit status: locust's (1 when any request or stream failed).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The proxy is on loopback: an http_proxy in the environment must not carry the health check.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proxy: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proxy.poll() is not None:
            raise SystemExit(f"the proxy exited with status {proxy.returncode}")
        try:
            with DIRECT.open(url + "/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the proxy did not answer {url}/healthz within {timeout:g}s")


def main() -> int:
    users = str(_whole("LOADTEST_USERS", "20", 1, None, "a whole number of users (1 or more)"))
    run_time = os.environ.get("LOADTEST_TIME", "30s").strip()
    try:
        seconds = _seconds(run_time)  # before the proxy starts: locust would refuse it after
        if not seconds:  # locust runs on until stopped; the runner killed it, tables unprinted
            raise ValueError(f"{run_time!r} is locust's no limit: a bounded run needs 1s or more")
    except ValueError as e:
        raise SystemExit(f"LOADTEST_TIME: {e}") from None
    port = _whole("LOADTEST_PORT", "", 1, 65535, "a port (1-65535)") or free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.NamedTemporaryFile(prefix="streamproxy-loadtest-", suffix=".log",
                                     delete=False) as log:
        proxy = subprocess.Popen(
            [sys.executable, "-m", "streamproxy", "serve", "--port", str(port)],
            stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL)
    try:
        wait_healthy(url, proxy)
        print(f"proxy on {url} (embedded default config; its log: {log.name})", flush=True)
        locust = [sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py"),
                  "--headless", "--only-summary", "--host", url, "-u", users, "-r", users,
                  "-t", run_time, "--stop-timeout", "5", "--loglevel", "WARNING"]
        print(" ".join(locust[1:]), flush=True)
        try:
            return subprocess.run(locust, timeout=seconds + 60).returncode
        except subprocess.TimeoutExpired:
            print("locust did not finish in time", file=sys.stderr)
            return 1
    finally:
        proxy.send_signal(signal.SIGTERM)
        try:
            proxy.wait(15)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait(5)


def _whole(name: str, default: str, low: int, high: int | None, what: str) -> int:
    """A whole-number setting, refused in one line before the proxy starts: locust refused a
    bad user count only once the proxy was up, and int() a bad port with a traceback. Unset
    (or empty) is `default`; an empty default is 0."""
    spec = os.environ.get(name, "").strip() or default
    if not spec:
        return 0
    try:
        value = int(spec)
    except ValueError:
        value = low - 1
    if value < low or (high is not None and value > high):
        raise SystemExit(f"{name}: not {what}: {os.environ[name]!r}")
    return value


def _seconds(spec: str) -> int:
    """Locust's run-time forms, as its parse_timespan reads them: `30`, `30s`, `2m`, `1h30m`,
    `1m30s` — whole numbers, and a bare number only alone (`1h30` is refused)."""
    if spec.isdigit():
        return int(spec)
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", spec)
    if not spec or parts is None:
        raise ValueError(f"not a run time: {spec!r} (e.g. 30s, 2m, 1m30s)")
    hours, minutes, seconds = (int(p) if p else 0 for p in parts.groups())
    return hours * 3600 + minutes * 60 + seconds


if __name__ == "__main__":
    sys.exit(main())
