"""The embedded backend: one SQLite file, owned by one background thread.

Every operation runs on that thread, in submission order, on its one connection — so there is
no locking and the event loop never touches the disk. Writes are batched on the loop side:
`add` appends to a list, and the list goes to the thread every 50 ms (or at 256 items) as one
job, written in one transaction. Under load that is one thread wake-up and one commit for many
completions, instead of a GIL hand-off and a commit each. A read first sends the writes queued
before it, so it sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

from streamproxy.errors import InvalidRequest, ProxyError
from streamproxy.storage.base import ListQuery, StoredCompletion

log = logging.getLogger("streamproxy.storage")

SCHEMA = """
CREATE TABLE IF NOT EXISTS stored_completions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- insertion order (the list sorts by id: time)
    owner TEXT NOT NULL,
    id TEXT NOT NULL,
    created INTEGER NOT NULL,
    model TEXT NOT NULL,
    request_model TEXT,
    metadata TEXT NOT NULL,
    request TEXT NOT NULL,
    response TEXT NOT NULL,
    answered_model TEXT,
    UNIQUE (owner, id)
);
"""
_COLUMNS = ("id, owner, created, model, request_model, metadata, request, response, "
            "answered_model")
# Columns added since a database could have been made without them.
_ADDED = (("answered_model", "TEXT"),)
_STOP = object()
# The ids we give (routing/executor.py new_completion_id: time-ordered hex).
_OUR_ID = re.compile(r"chatcmpl-[0-9a-f]{24}")
_BATCH_MAX = 256
_BATCH_WINDOW = 0.05  # seconds a write waits for company: fewer, larger transactions
_ROWS_PER_INSERT = 100  # 9 columns each: well under SQLite's 32,766 bound parameters
_OPEN_TRIES = 50  # x 0.1 s: another worker's write holds the lock the journal-mode switch needs
_LOG_EVERY = 60.0  # seconds between two logs of a database that still does not open
_FILE_CHECK_EVERY = 60.0  # seconds between two looks at whether the open file is still the path's
# The most a read waits for the thread: one that ended anyway (an exception no handler takes)
# never answers the jobs queued behind it. Far above any real query (SQLite's busy wait: 5 s).
_CALL_TIMEOUT = 60.0
_CLOSE_WAIT = 30.0  # seconds close() waits for the queued writes (the process exits after)
_BUSY_TIMEOUT = 5.0  # seconds a statement waits for another process's write lock (the default)
# Tries of a batch still locked after that wait (another process's long write: a clean-up
# DELETE): the lock usually ends soon after, and a batch is up to 256 clients' completions.
_WRITE_TRIES = 3
# What one row can fail a write with (SQLite's refusals, an int past 64 bits, a lone surrogate,
# a value orjson cannot encode): the batch is then written row by row, losing only that row.
_ROW_ERRORS = (sqlite3.Error, TypeError, ValueError, OverflowError)


class StorageUnavailable(ProxyError):
    code = "storage_error"


class StorageDown(StorageUnavailable):
    """The database does not open (a missing directory, a permission, a lock): a backend that
    is down, which may come back (the open is tried again on each job), so a retryable 503
    rather than a 500 that reads as this request's failure."""

    status = 503
    code = "service_unavailable"


class SQLiteStore:
    def __init__(self, path: str, *, max_pending: int = 10_000) -> None:
        self.path = path
        self.max_pending = max_pending
        self.dropped = 0
        self._drops = 0  # (loop) dropped since the last warning
        self._drops_logged = -_LOG_EVERY  # (loop) when that warning was last given
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._open_error: Exception | None = None
        self._batch: list[StoredCompletion] = []
        self._timer: asyncio.TimerHandle | None = None
        self._sent = 0  # written by the loop only
        self._written = 0  # written by the thread only
        self._open_logged = -_LOG_EVERY  # (thread) when a failed open was last logged
        self._write_logged = -_LOG_EVERY  # (thread) when a failed write was last logged
        self._failed_logged = -_LOG_EVERY  # (thread) when an unexpected failure was last logged
        self._damaged_logged = -_LOG_EVERY  # (thread) when a damaged file was last logged
        self._unstored = 0  # (thread) completions lost to failed writes since that log
        self._write_error: BaseException | None = None  # (thread) the last write's failure
        self._file_id: tuple[int, int] | None = None  # (thread) the open file's (device, inode)
        self._file_checked = 0.0  # (thread) when that was last compared with the path's
        self._closed = False  # (loop) close() has ended: nothing stops a thread started after

    # -- the loop side ---------------------------------------------------------------------
    def _ensure_started(self) -> None:
        # Lazy: a proxy that never stores anything never creates the file. A thread that
        # ended anyway is replaced: the jobs queued for it are the new one's.
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, args=(self._queue,),
                                            name="streamproxy-sqlite", daemon=True)
            self._thread.start()

    def add(self, item: StoredCompletion) -> bool:
        if self._closed:  # a request ending after shutdown (or a reload): its writer is gone
            self._drop(1, "storage is closed")
            return False
        backlog = self._sent - self._written + len(self._batch)
        if backlog >= self.max_pending:
            self._drop(1)
            return False
        if self._drops:  # a stall's last drops, told once its interval is up
            self._report_drops()
        self._batch.append(item)
        if len(self._batch) >= _BATCH_MAX:
            self._send_batch()
        elif self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(_BATCH_WINDOW,
                                                                    self._send_batch)
            except RuntimeError:  # no loop (a synchronous caller): send at once
                self._send_batch()
        return True

    def _drop(self, count: int, why: str = "storage is behind") -> None:
        self.dropped += count
        self._drops += count
        self._report_drops(why)

    def _report_drops(self, why: str = "storage is behind") -> None:
        # Once a minute, with the count since the last: each stall is told, however small
        # (at the 1st and each 1000th drop only, a later stall of 50 said nothing).
        now = time.monotonic()
        if now - self._drops_logged >= _LOG_EVERY:
            self._drops_logged = now
            log.warning("%s: %d stored completions dropped (%d in all)",
                        why, self._drops, self.dropped)
            self._drops = 0

    def _send_batch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._batch:
            batch, self._batch = self._batch, []
            if self._closed:  # (added during close's last round: no thread is left for it)
                self._drop(len(batch), "storage is closed")
                return
            self._sent += len(batch)
            self._ensure_started()
            self._queue.put(batch)

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._closed:  # (as a late write: a thread started for it would never be stopped)
            raise StorageDown("stored completions are unavailable: the store is closed")
        self._send_batch()  # writes queued before this call land before it runs
        self._ensure_started()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put((fn, args, future, loop))
        try:
            return await asyncio.wait_for(future, _CALL_TIMEOUT)
        except TimeoutError:
            raise StorageDown("stored completions are unavailable: the database did not "
                              f"answer within {_CALL_TIMEOUT:g} s") from None

    async def get(self, owner: str, completion_id: str) -> StoredCompletion | None:
        return await self._call(_get, owner, completion_id)

    async def list(self, owner: str, query: ListQuery) -> tuple[list[StoredCompletion], bool]:
        return await self._call(_list, owner, query)

    async def update_metadata(self, owner: str, completion_id: str,
                              metadata: dict[str, str]) -> StoredCompletion | None:
        return await self._call(_update_metadata, owner, completion_id, metadata)

    async def delete(self, owner: str, completion_id: str) -> bool:
        return await self._call(_delete, owner, completion_id)

    async def flush(self) -> None:
        await self._call(_noop)

    async def close(self) -> None:
        # A job sent while the thread winds down (a request still running at shutdown) must
        # not go in behind the stop, where nothing would ever answer it: it goes to a new
        # queue, and a new thread, which is stopped in turn (rounds bounded).
        for _ in range(3):
            self._send_batch()
            if self._thread is None:
                break
            self._ensure_started()  # (one that ended anyway: its queued writes still land)
            thread, jobs = self._thread, self._queue
            jobs.put(_STOP)  # after every queued write: those still land
            self._thread, self._queue = None, queue.SimpleQueue()
            await asyncio.to_thread(thread.join, _CLOSE_WAIT)
            if thread.is_alive():  # the process ends without them: the operator hears of it
                log.error("storage did not finish writing within %g s at close: %d stored "
                          "completions may be lost", _CLOSE_WAIT, self._sent - self._written)
        # A thread started from here on would outlive the store (a leak at each reload): a
        # later write is refused and counted, as a batch the rounds above did not reach.
        self._closed = True
        self._send_batch()

    # -- the thread side -------------------------------------------------------------------
    def _run(self, jobs: queue.SimpleQueue[Any]) -> None:
        conn = self._open()
        while True:
            if self._unstored:  # a count to tell: at the latest when its minute is up
                wait = max(0.0, self._write_logged + _LOG_EVERY - time.monotonic())
                try:
                    job = jobs.get(timeout=wait)
                except queue.Empty:
                    self._report_unstored()
                    continue
            else:
                job = jobs.get()
            if job is _STOP:
                break
            try:
                conn = self._do(conn, job)
            except Exception as e:  # a thread that dies leaves every later read hung
                conn = self._failed(conn, job, e)
            except BaseException as e:  # ending anyway: the job in hand is answered first
                self._failed(conn, job, e)
                raise
        if self._unstored:  # the last count, at once: the process may be ending
            self._write_logged = -_LOG_EVERY
            self._report_unstored()
        if conn is not None:
            conn.close()

    def _do(self, conn: sqlite3.Connection | None, job: Any) -> sqlite3.Connection | None:
        if conn is None:  # tried again: a lock or a fixed permission must not last forever
            conn = self._open()
        elif time.monotonic() - self._file_checked >= _FILE_CHECK_EVERY:
            conn = self._same_file(conn)
        if isinstance(job, list):
            self._write(conn, job)
            self._written += len(job)
        else:
            self._answer(conn, *job)
        return conn

    def _failed(self, conn: sqlite3.Connection | None, job: Any,
                error: BaseException) -> sqlite3.Connection | None:
        """What no handler expected (a MemoryError, an OSError, a bug): the job fails — a
        batch is counted as lost, a read answered 503 — and the database is opened afresh for
        the next one. Logged at most once a minute."""
        if isinstance(job, list):
            self._written += len(job)  # (not a backlog for ever: `add` would drop everything)
            self._unstored += len(job)
            self._write_error = error
        else:
            _fn, _args, future, loop = job
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, future, None, StorageDown(
                    "stored completions are unavailable: the database failed"))
        now = time.monotonic()
        if now - self._failed_logged >= _LOG_EVERY:
            self._failed_logged = now
            log.error("storage writer failed (%d completions not stored): opening the "
                      "database again", self._unstored, exc_info=error)
            self._unstored = 0
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
        return None

    def _open(self) -> sqlite3.Connection | None:
        try:
            conn = _connect(self.path)
        except (sqlite3.Error, OSError) as e:
            self._open_error = e
            now = time.monotonic()
            if now - self._open_logged >= _LOG_EVERY:
                self._open_logged = now
                log.error("cannot open the storage database %s: %s", self.path, e)
            return None
        self._open_error = None
        self._file_id = _file_id(self.path)
        self._file_checked = time.monotonic()
        return conn

    def _same_file(self, conn: sqlite3.Connection) -> sqlite3.Connection | None:
        """The open connection, or a new one when the file at the path is no longer the one it
        opened (deleted, or replaced): writes went to the deleted inode, unannounced, and were
        gone at the next restart. One stat a minute at most."""
        self._file_checked = time.monotonic()
        if self._file_id is None or _file_id(self.path) == self._file_id:
            return conn
        log.warning("the storage database %s was deleted or replaced while open: opening it "
                    "again (completions stored in the old file since are lost)", self.path)
        conn.close()
        return self._open()

    def _write(self, conn: sqlite3.Connection | None, batch: list[StoredCompletion]) -> None:
        if conn is None:  # (the open error is logged apart: this says how many it cost)
            self._unstored += len(batch)
            self._write_error = self._open_error
            self._report_unstored()
            return
        try:
            for attempt in range(_WRITE_TRIES):
                try:
                    _insert_batch(conn, batch)
                    break
                except sqlite3.OperationalError as e:
                    if not _locked(e) or attempt == _WRITE_TRIES - 1:
                        raise
        except _ROW_ERRORS as e:
            if len(batch) > 1 and not _is_lock(e):
                # The batch is one transaction: one row SQLite refuses (an int past 64 bits, a
                # lone surrogate, a constraint) failed every other client's with it. Row by
                # row, only that one is lost. (Not after a lock: each row would wait it out.)
                self._write_rows(conn, batch)
            else:  # a full disk fails every batch (one each 50 ms): one log a minute says it
                self._unstored += len(batch)
                self._write_error = e
        if self._unstored:
            self._report_unstored()

    def _write_rows(self, conn: sqlite3.Connection, batch: list[StoredCompletion]) -> None:
        for i, item in enumerate(batch):
            try:
                _insert_batch(conn, [item])
            except _ROW_ERRORS as e:
                self._write_error = e
                if _is_lock(e):  # (the rest would wait in turn: they are lost with it)
                    self._unstored += len(batch) - i
                    return
                self._unstored += 1

    def _log_damaged(self, e: BaseException) -> None:
        now = time.monotonic()  # (once a minute: every read fails alike until it is fixed)
        if now - self._damaged_logged >= _LOG_EVERY:
            self._damaged_logged = now
            log.error("the storage database %s is damaged (%s): stored completions are "
                      "unavailable until it is restored or removed", self.path, e)

    def _report_unstored(self) -> None:
        """Log the completions lost since the last such log, at most once a minute. Also after
        a write that succeeds, and when no job comes (`_run`): those lost after one log are
        told, though no later failure comes to tell them."""
        now = time.monotonic()
        if now - self._write_logged >= _LOG_EVERY:
            self._write_logged = now
            log.error("could not store %d completions: %s", self._unstored, self._write_error)
            self._unstored = 0

    def _answer(self, conn: sqlite3.Connection | None, fn: Callable[..., Any],
                args: tuple[Any, ...], future: asyncio.Future[Any],
                loop: asyncio.AbstractEventLoop) -> None:
        result: Any = None
        error: BaseException | None = None
        if conn is None:
            error = StorageDown(f"stored completions are unavailable: {self._open_error}")
        else:
            try:
                result = fn(conn, *args)
            except ProxyError as e:
                error = e
            except sqlite3.OperationalError as e:  # locked past the busy wait, a full disk,
                # a read-only file: the database is unavailable, as when it does not open —
                # the retryable 503 the reads answer, not a 500 (this request's fault)
                log.warning("storage query failed: %s", e)
                error = StorageDown(f"stored completions are unavailable: {e}")
            except Exception as e:  # the thread must survive: every waiter gets an answer
                if _damaged(e):  # a file SQLite cannot read: down until an operator acts
                    self._log_damaged(e)
                    error = StorageDown(f"stored completions are unavailable: {e}")
                else:
                    log.exception("storage query failed")
                    error = StorageUnavailable("the stored completions database failed")
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            loop.call_soon_threadsafe(_resolve, future, result, error)


def _insert_batch(conn: sqlite3.Connection, batch: list[StoredCompletion]) -> None:
    with conn:
        # One multi-row INSERT per slice rather than executemany: sqlite3 releases and
        # retakes the GIL around every statement step, and that ping-pong with the event
        # loop's thread cost more than the writes themselves.
        for start in range(0, len(batch), _ROWS_PER_INSERT):
            rows = [_row(item) for item in batch[start : start + _ROWS_PER_INSERT]]
            conn.execute(_insert(len(rows)), [v for row in rows for v in row])


def _damaged(e: BaseException) -> bool:
    """A database SQLite cannot read ("database disk image is malformed", "file is not a
    database"): a DatabaseError that is not an OperationalError, which a query meets."""
    code = getattr(e, "sqlite_errorcode", None) or 0
    return (isinstance(e, sqlite3.DatabaseError)
            and code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB))


def _is_lock(e: BaseException) -> bool:
    return isinstance(e, sqlite3.OperationalError) and _locked(e)


def _locked(e: sqlite3.OperationalError) -> bool:
    # (an error raised without SQLite's code — not SQLite's own — has none)
    code = getattr(e, "sqlite_errorcode", None) or 0
    return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled, or answered already before its job failed
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _file_id(path: str) -> tuple[int, int] | None:
    if path == ":memory:":
        return None
    try:
        st = os.stat(path)
    except OSError:  # (gone: no file is the one opened)
        return (-1, -1)
    return st.st_dev, st.st_ino


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=_BUSY_TIMEOUT, check_same_thread=False,
                           isolation_level=None)
    try:
        for attempt in range(_OPEN_TRIES):
            try:
                # SQLite answers SQLITE_BUSY here at once, without the busy timeout, while
                # another worker holds a write lock (two workers starting on a new file)
                conn.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as e:
                if e.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or attempt == _OPEN_TRIES - 1:
                    raise
                time.sleep(0.1)  # (the writer thread's: the loop never waits)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(SCHEMA)
        _add_columns(conn)
    except BaseException:
        conn.close()
        raise
    conn.isolation_level = ""  # `with conn:` = one transaction per batch
    return conn


@functools.lru_cache(maxsize=8)
def _insert(rows: int) -> str:
    values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * rows)
    return f"INSERT OR REPLACE INTO stored_completions ({_COLUMNS}) VALUES {values}"


def _add_columns(conn: sqlite3.Connection) -> None:
    """The columns a database made by an earlier version lacks (CREATE IF NOT EXISTS kept its
    table as it was)."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(stored_completions)")}
    for name, kind in _ADDED:
        if name not in have:
            try:
                conn.execute(f"ALTER TABLE stored_completions ADD COLUMN {name} {kind}")
            except sqlite3.OperationalError as e:  # another worker added it first
                if "duplicate column" not in str(e):
                    raise


def _row(item: StoredCompletion) -> tuple[Any, ...]:
    return (item.id, item.owner, item.created, item.model, item.request_model,
            orjson.dumps(item.metadata).decode(), orjson.dumps(item.request).decode(),
            orjson.dumps(item.response).decode(), item.answered_model)


def _item(row: tuple[Any, ...]) -> StoredCompletion:
    cid, owner, created, model, request_model, metadata, request, response, answered = row
    return StoredCompletion(cid, owner, created, model, request_model, orjson.loads(metadata),
                            orjson.loads(request), orjson.loads(response), answered)


def _noop(conn: sqlite3.Connection) -> None:
    return None


def _get(conn: sqlite3.Connection, owner: str, cid: str) -> StoredCompletion | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM stored_completions WHERE owner = ? AND id = ?",
                       (owner, cid)).fetchone()
    return _item(row) if row else None


def _list(conn: sqlite3.Connection, owner: str,
          q: ListQuery) -> tuple[list[StoredCompletion], bool]:
    where, params = ["owner = ?"], [owner]
    if q.model:
        names = q.model_names or (q.model,)
        marks = ", ".join("?" * len(names))
        where.append(f"(model = ? OR request_model IN ({marks}) OR answered_model IN ({marks}))")
        params += [q.model, *names, *names]
    for key, value in q.metadata.items():
        where.append("EXISTS (SELECT 1 FROM json_each(stored_completions.metadata) AS m "
                     "WHERE m.key = ? AND m.value = ?)")
        params += [key, value]
    # Ids begin with the millisecond they were made (ids.time_ordered_hex): sorting by id is
    # OpenAI's "by timestamp", served by the (owner, id) index, and a page's cursor is a
    # position in that order, valid even once its completion is deleted (list-and-delete).
    if q.after:
        if not _OUR_ID.fullmatch(q.after) and conn.execute(
                "SELECT 1 FROM stored_completions WHERE owner = ? AND id = ?",
                (owner, q.after)).fetchone() is None:
            # Not a position in that order: "after" it, an ascending list was empty (the
            # client read "no more") and a descending one everything. (One of our ids is a
            # position even once deleted; another's, an older one's, while it is there.)
            raise InvalidRequest(f"No stored chat completion found with id '{q.after}'.",
                                 param="after", code="invalid_value")
        where.append("id > ?" if q.order == "asc" else "id < ?")
        params.append(q.after)
    direction = "ASC" if q.order == "asc" else "DESC"
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM stored_completions WHERE {' AND '.join(where)} "
        f"ORDER BY id {direction} LIMIT ?", (*params, q.limit + 1)).fetchall()
    return [_item(r) for r in rows[: q.limit]], len(rows) > q.limit


def _update_metadata(conn: sqlite3.Connection, owner: str, cid: str,
                     metadata: dict[str, str]) -> StoredCompletion | None:
    with conn:
        cur = conn.execute("UPDATE stored_completions SET metadata = ? WHERE owner = ? AND id = ?",
                           (orjson.dumps(metadata).decode(), owner, cid))
    return _get(conn, owner, cid) if cur.rowcount else None


def _delete(conn: sqlite3.Connection, owner: str, cid: str) -> bool:
    with conn:
        cur = conn.execute("DELETE FROM stored_completions WHERE owner = ? AND id = ?",
                           (owner, cid))
    return cur.rowcount > 0
