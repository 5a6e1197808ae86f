"""A real, throwaway `redis-server` for tests: its own port, no persistence, bounded start-up,
killed at teardown. A missing binary is a test failure with instructions, never a skip. And a
fake one (`FakeRedis`) that counts the connections a client opens."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

MISSING = ("redis-server is not installed, and the Redis cache tests need a real one. "
           "`make test` installs it when run as root (apt-get); otherwise install it yourself, "
           "e.g. `sudo apt-get install -y redis-server`.")
START_TIMEOUT = 10.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """Start redis-server on a free loopback port; yield its URL."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail(MISSING, pytrace=False)
    port = _free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--daemonize", "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers_ping(port):
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                pytest.fail(f"redis-server exited at start-up: {err.strip()}", pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail(f"redis-server did not answer within {START_TIMEOUT:g}s",
                            pytrace=False)
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stderr:
            proc.stderr.close()


class FakeRedis:
    """A RESP2 server on loopback that answers every GET with `value` after `delay` seconds
    (None: never) and counts its connections, to see what a client's pool opens. HELLO is
    refused, as by a Redis before 6, so that redis-py speaks RESP2."""

    def __init__(self, value: bytes, delay: float | None, *, every: float = 0) -> None:
        """`every`: seconds before each answer to any other command too (a slow Redis)."""
        self.value, self.delay, self.every = value, delay, every
        self.live = self.peak = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.live += 1
        self.peak = max(self.peak, self.live)
        self._writers.add(writer)
        try:
            while (line := await reader.readline()).startswith(b"*"):
                args = [(await reader.readline(), await reader.readline())[1].strip()
                        for _ in range(int(line[1:]))]
                command = args[0].upper()
                await asyncio.sleep(self.every)
                if command == b"GET":
                    if self.delay is None:
                        await asyncio.Event().wait()
                    await asyncio.sleep(self.delay)
                    writer.write(b"$%d\r\n%s\r\n" % (len(self.value), self.value))
                else:
                    writer.write(b"-ERR unknown command\r\n" if command == b"HELLO"
                                 else b"+OK\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.live -= 1
            self._writers.discard(writer)
            writer.close()
