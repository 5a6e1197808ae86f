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
import tempfile
from pathlib import Path

from bench.procs import free_port, start

_END = b"0\r\n\r\n"  # the last chunk of a chunked response


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
    ap.add_argument("--keep", type=Path, help="copy the callgrind dump here (callgrind_annotate)")
    args = ap.parse_args(argv)
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install valgrind")
    body = {"model": args.model, "stream": True,
            "messages": [{"role": "user", "content": "Say hello."}], **json.loads(args.body_json)}
    streamed = bool(body.get("stream"))
    with tempfile.TemporaryDirectory(prefix="streamproxy-instr-") as tmp:
        logdir = Path(tmp)
        mock_port, proxy_port = free_port(), free_port()
        mock = start("mock", ["-m", "streamproxy", "mock", "--port", str(mock_port)],
                     pin=None, logdir=logdir, port=mock_port)
        config = logdir / "config.json"
        config.write_text(json.dumps({
            "server": {"log_level": "warning"}, "default_provider": "mock",
            "providers": {"mock": {"type": "mock", "base_url": f"http://127.0.0.1:{mock_port}",
                                   "default_model": "fast"}},
            **json.loads(args.config_json)}))
        out = logdir / "callgrind.out"
        try:
            # The interpreter starts ~50x slower under valgrind.
            proxy = start("proxy", ["-m", "streamproxy", "serve", "--config", str(config),
                                    "--port", str(proxy_port), "--workers", "1"],
                          pin=None, logdir=logdir, port=proxy_port, timeout=300,
                          wrapper=("valgrind", "--tool=callgrind",
                                   f"--callgrind-out-file={out}"))
            try:
                request = _request(json.dumps(body).encode())
                _drive(proxy_port, request, args.warmup, streamed)
                subprocess.run(["callgrind_control", "-z", str(proxy.pid)], check=True,
                               capture_output=True)
                _drive(proxy_port, request, args.n, streamed)
                subprocess.run(["callgrind_control", "-d", str(proxy.pid)], check=True,
                               capture_output=True)
            finally:
                proxy.stop(60)
        finally:
            mock.stop()
        dumps = sorted(logdir.glob("callgrind.out.*"), key=lambda p: p.stat().st_mtime)
        if not dumps:
            raise SystemExit("callgrind wrote no dump")
        per_request = _total_instructions(dumps[0]) / args.n
        if args.keep:
            shutil.copyfile(dumps[0], args.keep)
    print(f"{per_request / 1000:.1f}k instructions per request "
          f"({args.n} requests, model {args.model}, streamed={streamed})")


if __name__ == "__main__":
    main()
