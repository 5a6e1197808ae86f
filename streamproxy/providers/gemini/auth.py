"""Vertex AI bearer tokens from a command (`token_command`): the only I/O of this package.

The command (an argv list, run without a shell, in a worker thread) prints an OAuth2 access
token, e.g. `[gcloud, auth, print-access-token]`. Its output is cached for `refresh` seconds.
Requests never wait for a refresh while a token is cached: a stale token is served while one
background run replaces it. A request waits only when there is no token at all (first use, or
after the upstream answered 401 and the token was dropped), and all such requests share that
one run.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time

from streamproxy.errors import ProxyError

log = logging.getLogger("streamproxy.providers.vertex")

COMMAND_TIMEOUT = 30.0  # seconds one run may take before it is killed
FAILURE_BACKOFF = 5.0  # seconds before a failed command is run again


class TokenUnavailable(ProxyError):
    status = 502
    code = "upstream_credentials_unavailable"


class CommandToken:
    def __init__(self, argv: list[str], refresh: float, *, provider: str,
                 timeout: float = COMMAND_TIMEOUT) -> None:
        self._argv = argv
        self._refresh = refresh
        self._timeout = timeout
        self._provider = provider
        self._token: str | None = None
        self._stale_at = 0.0  # monotonic time after which the next request starts a refresh
        self._running: asyncio.Future[str] | None = None
        self._failure: TokenUnavailable | None = None
        self._failed_at = float("-inf")
        self.runs = 0  # how many times the command ran (for tests and logs)

    @property
    def cached(self) -> str | None:
        return self._token

    def invalidate(self) -> None:
        """The upstream rejected the token: fetch a new one before the next request."""
        self._token = None

    async def get(self) -> str:
        now = time.monotonic()
        token = self._token
        if token is not None and now < self._stale_at:
            return token
        if self._running is None:
            if token is None and self._failure is not None \
                    and now - self._failed_at < FAILURE_BACKOFF:
                raise TokenUnavailable(self._failure.message)
            self._running = asyncio.ensure_future(self._run())
            self._running.add_done_callback(self._finished)
        if token is not None:
            return token  # stale while it is being refreshed
        # shield: a waiting request that is cancelled must not cancel the shared run.
        return await asyncio.shield(self._running)

    def _finished(self, task: asyncio.Future[str]) -> None:
        self._running = None
        if task.cancelled():
            return
        err = task.exception()
        if err is not None:  # retrieved here, so a run nobody awaited never warns
            self._failure = err if isinstance(err, TokenUnavailable) else None
            self._failed_at = time.monotonic()
            self._stale_at = self._failed_at + FAILURE_BACKOFF  # keep a stale token a while

    async def _run(self) -> str:
        self.runs += 1
        # subprocess.run in a worker thread rather than asyncio's subprocess API: cancelling
        # the latter while it spawns hangs the stdlib loop (CPython 3.11) at shutdown, and the
        # thread is off the event loop all the same. The timeout kills the child.
        proc = await asyncio.to_thread(self._spawn)
        name = self._argv[0]
        if proc.returncode != 0:
            tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
            log.warning("token_command %r exited with status %s: %s", name, proc.returncode,
                        tail[0][:300])
            raise self._fail(f"token_command '{name}' exited with status {proc.returncode}")
        token = proc.stdout.decode(errors="replace").strip()
        if not token or any(c.isspace() for c in token):
            raise self._fail(f"token_command '{name}' did not print a single token")
        self._token = token
        self._stale_at = time.monotonic() + self._refresh
        self._failure = None
        return token

    def _spawn(self) -> subprocess.CompletedProcess[bytes]:
        name = self._argv[0]
        try:
            return subprocess.run(self._argv, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=self._timeout, check=False)
        except subprocess.TimeoutExpired:
            raise self._fail(f"token_command '{name}' took more than "
                             f"{self._timeout:g}s") from None
        except OSError as e:
            raise self._fail(f"could not run token_command '{name}': {e.strerror}") from None

    def _fail(self, message: str) -> TokenUnavailable:
        return TokenUnavailable(f"provider '{self._provider}': {message}")
