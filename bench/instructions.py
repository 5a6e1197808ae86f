"""User-space instructions per request, counted by valgrind's callgrind: the one per-request
cost figure that does not move with this VM's drift (it has no hardware counters for `perf
stat`, and its timings wander by 10-20 % within minutes). Kernel time is not counted.

The proxy runs under callgrind with the mock upstream beside it (not under valgrind); after a
warm-up the counters are zeroed, N sequential requests are sent on one keep-alive connection,
and the dump's total divided by N is the figure. Compare two commits, or a config change
(`--config-json '{"logging": {"access_log": false}}'`), by running it on each.

    python -m bench.instructions                       # 300 one-token streamed requests
    python -m bench.instructions --model mock/fast     # 200-delta streams
    python -m bench.instructions -n 100 --body-json '{"stream": false}'

Needs `valgrind` (apt-get install valgrind); about 20 s per 300 requests.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.procs import free_port

_END = b"0\r\n\r\n"  # the last chunk of a chunked response


def _wait_port(port: int, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"nothing listens on port {port} after {seconds:.0f} s")


def _request(body: bytes) -> bytes:
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)) + body


def _drive(port: int, request: bytes, n: int, streamed: bool) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        for _ in range(n):
            s.sendall(request)
            buf = b""
            while True:
                data = s.recv(65536)
                if not data:
                    raise SystemExit("the proxy closed the connection")
                buf += data
                if streamed and buf.endswith(_END):
                    break
                if not streamed and b"\r\n\r\n" in buf:
                    head, _, rest = buf.partition(b"\r\n\r\n")
                    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length:")), 0)
                    if len(rest) >= length:
                        break
            if b" 200 " not in buf[:16]:
                raise SystemExit(f"not a 200: {buf[:200]!r}")


def _total_instructions(dump: Path) -> int:
    for line in dump.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise SystemExit(f"no totals in {dump}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=300, help="measured requests (default 300)")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--model", default="mock/tokens=1")
    ap.add_argument("--body-json", default="{}", help="extra request body fields")
    ap.add_argument("--config-json", default="{}", help="extra top-level config sections")
    args = ap.parse_args(argv)
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install valgrind")
    body = {"model": args.model, "stream": True,
            "messages": [{"role": "user", "content": "Say hello."}], **json.loads(args.body_json)}
    streamed = bool(body.get("stream"))
    with tempfile.TemporaryDirectory(prefix="streamproxy-instr-") as tmp:
        mock_port, proxy_port = free_port(), free_port()
        mock = subprocess.Popen([sys.executable, "-m", "streamproxy", "mock", "--port",
                                 str(mock_port)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        config = Path(tmp, "config.json")
        config.write_text(json.dumps({
            "server": {"log_level": "warning"}, "default_provider": "mock",
            "providers": {"mock": {"type": "mock", "base_url": f"http://127.0.0.1:{mock_port}",
                                   "default_model": "fast"}},
            **json.loads(args.config_json)}))
        out = Path(tmp, "callgrind.out")
        proxy = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
             "-m", "streamproxy", "serve", "--config", str(config), "--port", str(proxy_port),
             "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_port(mock_port, 30)
            _wait_port(proxy_port, 300)  # the interpreter starts ~50x slower under valgrind
            request = _request(json.dumps(body).encode())
            _drive(proxy_port, request, args.warmup, streamed)
            subprocess.run(["callgrind_control", "-z", str(proxy.pid)], check=True,
                           capture_output=True)
            _drive(proxy_port, request, args.n, streamed)
            subprocess.run(["callgrind_control", "-d", str(proxy.pid)], check=True,
                           capture_output=True)
        finally:
            proxy.terminate()
            mock.terminate()
            proxy.wait(60)
            mock.wait(10)
        dumps = sorted(Path(tmp).glob("callgrind.out.*"), key=lambda p: p.stat().st_mtime)
        if not dumps:
            raise SystemExit("callgrind wrote no dump")
        per_request = _total_instructions(dumps[0]) / args.n
    print(f"{per_request / 1000:.1f}k instructions per request "
          f"({args.n} requests, model {args.model}, streamed={streamed})")


if __name__ == "__main__":
    main()
