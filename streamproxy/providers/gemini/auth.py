"""Vertex AI bearer tokens fetched off the event loop: the only I/O of this package.

`TokenSource` caches one OAuth2 access token and refreshes it in a daemon thread
(providers/threads.py: a hung fetch never holds up a shutdown); a subclass says how one token
is fetched (a blocking `_fetch`). `CommandToken` runs `token_command` (an argv list, without a
shell), e.g. `[gcloud, auth, print-access-token]`, and reuses its output for `refresh` seconds;
`credentials.GoogleToken` refreshes Google credentials (a key file or Application Default
Credentials) and follows the token's own expiry.

Requests never wait for a refresh while a token is cached and unexpired: a stale token is
served while one background run replaces it. A request waits only when there is no usable
token (first use, a token past its expiry, or after the upstream answered 401 and the token
was dropped), and all such requests share that one run.
"""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import time
from collections.abc import Callable

from streamproxy.errors import CredentialsUnavailable
from streamproxy.providers.threads import in_daemon_thread

log = logging.getLogger("streamproxy.providers.vertex")

COMMAND_TIMEOUT = 30.0  # seconds one run may take before it is killed
FAILURE_BACKOFF = 5.0  # seconds before a failed fetch is tried again
# A token with a known lifetime is refreshed this long before it expires (or halfway through
# a shorter life), so the background run has time to finish, and to fail and retry.
EXPIRY_MARGIN = 300.0


class TokenUnavailable(CredentialsUnavailable):
    """No Vertex access token could be had (a failed fetch, or one past its deadline)."""


# A fetched token and how many seconds it stays valid (None: unknown, reuse it `refresh` s).
Fetched = tuple[str, float | None]

# What `Authorization: Bearer …` can carry: visible ASCII, no space (RFC 6750's b64token is a
# subset). A CR, LF or other control character there would fail every request until expiry.
_SENDABLE_TOKEN = re.compile(r"[!-~]+")


def is_sendable_token(token: object) -> bool:
    return isinstance(token, str) and _SENDABLE_TOKEN.fullmatch(token) is not None


class TokenSource:
    def __init__(self, refresh: float, *, provider: str, deadline: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._refresh = refresh
        self._provider = provider
        self._deadline = deadline  # None: `_fetch` bounds itself
        self._clock = clock
        self._token: str | None = None
        self._worker: asyncio.Future[str] | None = None  # the fetch's thread, until it ends
        self._stale_at = 0.0  # clock time after which the next request starts a refresh
        self._expires_at = float("inf")  # clock time after which the token is not served
        self._running: asyncio.Future[str] | None = None
        self._failure: TokenUnavailable | None = None
        self._failed_at = float("-inf")
        self.runs = 0  # how many fetches ran (for tests and logs)

    @property
    def cached(self) -> str | None:
        return self._token

    @property
    def headers(self) -> dict[str, str]:
        """Headers that go with the token (besides `Authorization`)."""
        return {}

    def invalidate(self, rejected: str) -> None:
        """The upstream rejected a token: unless a refresh replaced it already, fetch a new one
        before the next request."""
        if rejected == self._token:
            self._token = None

    async def get(self) -> str:
        now = self._clock()
        token = self._token
        if token is not None and now >= self._expires_at:
            token = self._token = None  # a background refresh failed until it expired
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
            self._failed_at = self._clock()
            self._stale_at = self._failed_at + FAILURE_BACKOFF  # keep a stale token a while

    async def _run(self) -> str:
        # A thread cannot be stopped: a fetch past its deadline goes on, and the next run
        # waits for it again rather than starting a second thread beside it (one per timeout).
        if self._worker is None or self._worker.done():
            self._worker = asyncio.ensure_future(self._fetch_and_keep())
        worker = self._worker
        try:
            return await asyncio.wait_for(asyncio.shield(worker), self._deadline)
        except TokenUnavailable:
            raise
        except Exception as e:
            if not worker.done():  # wait_for's own timeout (a TimeoutError the fetch raised
                # is a failure like any other)
                raise self._fail(f"the token fetch took more than {self._deadline:g}s") \
                    from None
            # Anything else (the thread not started, a library's own error) is a failed fetch
            # too: a 502, and the same back-off, not a 500 and a new fetch for each request.
            # Its type only, to the client: its text may quote a secret.
            log.warning("provider %r: the token fetch failed: %s: %s", self._provider,
                        type(e).__name__, str(e)[:300])
            raise self._fail(f"the token fetch failed ({type(e).__name__})") from None

    async def _fetch_and_keep(self) -> str:
        """One fetch; its token is kept even if it came after the requests gave up on it."""
        self.runs += 1
        # A thread: the fetch blocks (a child process, or google-auth's HTTP calls).
        token, lifetime = await in_daemon_thread(self._fetch, f"token-{self._provider}")
        now = self._clock()
        self._token = token
        if lifetime is None:
            self._stale_at, self._expires_at = now + self._refresh, float("inf")
        else:
            self._stale_at = now + max(lifetime - EXPIRY_MARGIN, lifetime / 2)
            self._expires_at = now + lifetime
        self._failure = None
        return token

    def _fetch(self) -> Fetched:
        """One token, blocking (run in a thread of its own); raises TokenUnavailable."""
        raise NotImplementedError

    def _fail(self, message: str) -> TokenUnavailable:
        return TokenUnavailable(f"provider '{self._provider}': {message}")


class CommandToken(TokenSource):
    def __init__(self, argv: list[str], refresh: float, *, provider: str,
                 timeout: float = COMMAND_TIMEOUT) -> None:
        super().__init__(refresh, provider=provider)
        self._argv = argv
        self._timeout = timeout

    def _fetch(self) -> Fetched:
        # subprocess.run in a thread rather than asyncio's subprocess API: cancelling
        # the latter while it spawns hangs the stdlib loop (CPython 3.11) at shutdown, and the
        # thread is off the event loop all the same. The timeout kills the child.
        proc = self._spawn()
        name = self._argv[0]
        if proc.returncode != 0:
            tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
            log.warning("token_command %r exited with status %s: %s", name, proc.returncode,
                        tail[0][:300])
            raise self._fail(f"token_command '{name}' exited with status {proc.returncode}")
        token = proc.stdout.decode(errors="replace").strip()
        if not is_sendable_token(token):
            raise self._fail(f"token_command '{name}' did not print a single token")
        return token, None

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
