"""The journal: durable tasks and their results in one SQLite file (WAL), written by one thread with group commit.

The storage half of durable tasks (``_durable`` is the scheduler's). One
writer thread owns the connection; callers hand it operations
(``add``, ``start``, ``retry``, ``end``) in the order the scheduler made
them, and each batch the thread finds waiting is one transaction: a burst of
submits pays one commit, not one per task. A waiter given with an operation
is resolved once the transaction holding it is on disk (``synchronous=
NORMAL`` in WAL mode: a process crash loses nothing committed; a power loss
may lose the last commits, ``FULL`` not even those).

One writer per file: the connection takes SQLite's exclusive lock when it
opens the journal and keeps it until it closes, so a second process gets a
clear error instead of running the same tasks twice.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from ._errors import QueueError

__all__ = ["JournalError", "Recovered", "SQLiteJournal", "StoredResult", "StoredTask"]

logger = logging.getLogger("hybrid_queue")
_new_tuple = tuple.__new__

# The statements of a task's row; the writer compares them by identity.
_ADD = (
    "INSERT INTO tasks (task_id, handler, call, priority, max_retries, timeout, keep, key, due, attempts, "
    "retries) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_START = "UPDATE tasks SET attempts = ? WHERE task_id = ?"
_RETRY = "UPDATE tasks SET due = ?, retries = ? WHERE task_id = ?"
_END = "DELETE FROM tasks WHERE task_id = ?"
_ROW_OPS = frozenset({_ADD, _START, _RETRY, _END})

SCHEMA_VERSION = 1
# An operation's parameters, or a function that makes them in the writer thread.
Params = tuple[Any, ...] | Callable[[], tuple[Any, ...]]
_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
_PICKLE = 5  # fixed, so that one id always pickles to the same key

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY,
    task_id BLOB NOT NULL UNIQUE,
    handler TEXT NOT NULL,
    call BLOB NOT NULL,
    priority INTEGER NOT NULL,
    max_retries INTEGER NOT NULL,
    timeout REAL,
    keep INTEGER NOT NULL,
    key BLOB,
    due REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS results (
    task_id BLOB PRIMARY KEY,
    status TEXT NOT NULL,
    outcome BLOB,
    retries INTEGER NOT NULL,
    duration_ms REAL NOT NULL,
    expires REAL NOT NULL
) WITHOUT ROWID;
"""


class JournalError(QueueError, RuntimeError):
    """Raised when a journal cannot be opened or written: in use by another process, corrupt, newer, or disk full."""


class StoredTask(NamedTuple):
    """A task as the journal keeps it (a tuple: 100,000 are read back in one recovery)."""

    task_id: Any
    handler: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any] | None
    priority: int
    max_retries: int
    timeout: float | None
    keep: bool
    key: Any
    due: float | None  # wall-clock seconds since the epoch; None: at once
    attempts: int  # attempts started before the process ended
    retries: int


class StoredResult(NamedTuple):
    """A result read back from the journal at recovery; ``outcome`` is the value, or the error."""

    task_id: Any
    status: str
    outcome: Any
    retries: int
    duration_ms: float
    expires: float  # wall-clock seconds since the epoch


@dataclass(frozen=True, slots=True)
class Recovered:
    """What a journal held when it was opened: tasks in submission order, results not yet expired."""

    tasks: list[StoredTask]
    results: list[StoredResult]
    next_id: int  # the first generated id no earlier run of this journal can have given


def dump_id(task_id: Any) -> bytes:
    """The key a task id is stored under."""
    return pickle.dumps(task_id, _PICKLE)


class SQLiteJournal:
    """A journal file for ``HybridQueue(journal=...)``: durable tasks and their results in SQLite, WAL mode.

    ``synchronous``: SQLite's setting, ``"NORMAL"`` (the default: a crash of
    the process loses nothing committed) or ``"FULL"`` (a power loss loses
    nothing committed either, at the cost of an fsync per commit). Pass a
    path to the queue for the default, or this object for another setting.
    The queue opens it; its methods are the queue's. Any thread.
    """

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "NORMAL") -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike naming the journal file, got {path!r}")
        if not isinstance(synchronous, str) or synchronous.upper() not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {', '.join(_SYNCHRONOUS)}, got {synchronous!r}")
        self.path = os.fspath(path)
        self.synchronous = synchronous.upper()
        self._conn: sqlite3.Connection | None = None
        # The writer's queue: (sql, parameters, waiter) in the order they were
        # put; guarded by _cond's lock. ``_closing`` ends the thread once empty.
        self._cond = threading.Condition(threading.Lock())
        self._ops: deque[tuple[str, Params, Callable[[BaseException | None], object] | None]] = deque()
        self._closing = False
        self._idle = False  # the writer sleeps, or is about to: see _put
        self._failed: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.commits = 0  # transactions committed, for tests and benchmarks

    # ------------------------------------------------------------------ opening

    def open(self, id_block: int = 1024) -> Recovered:
        """Take the journal for this process, create or check its schema, and read what it holds.

        Raises JournalError if another process holds it, if the file is not
        a journal (or is corrupt), or if a newer hybrid_queue wrote it.
        ``id_block``: generated ids are reserved this many at a time.
        """
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=0.0)
        except sqlite3.Error as exc:
            raise JournalError(f"cannot open the journal {self.path!r}: {exc}") from exc
        try:
            # Exclusive before the first access: the lock taken by the first
            # write below is held until close, and no other process may read.
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise JournalError(f"the journal {self.path!r} cannot use WAL mode (got {mode!r})")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
            conn.execute("BEGIN IMMEDIATE")
            version = _meta(conn, "schema_version")
            if version is None:
                conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
            elif version > SCHEMA_VERSION:
                raise JournalError(
                    f"the journal {self.path!r} has schema version {version}, newer than this hybrid_queue "
                    f"reads ({SCHEMA_VERSION}); upgrade hybrid_queue, or use another file"
                )
            start = _meta(conn, "next_id") or 1
            conn.execute(
                "INSERT INTO meta VALUES ('next_id', ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                (start + id_block,),
            )
            recovered = Recovered(_read_tasks(conn), _read_results(conn), start)
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            conn.close()
            if "locked" in str(exc) or "busy" in str(exc):
                raise JournalError(
                    f"the journal {self.path!r} is in use by another process; one journal has one writer: "
                    "give each process its own file"
                ) from exc
            raise JournalError(f"cannot open the journal {self.path!r}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise JournalError(f"{self.path!r} is not a hybrid_queue journal, or it is corrupt: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._id_end = start + id_block
        self._id_block = id_block
        self._thread = threading.Thread(target=self._run, name="hybrid_queue-journal", daemon=True)
        self._thread.start()
        return recovered

    # ------------------------------------------------------------------ writing

    def add(
        self,
        task: StoredTask,
        done: Callable[[BaseException | None], object] | None = None,
        call: bytes | None = None,
        key: bytes | None = None,
    ) -> None:
        """Journal a new task; ``done(error)`` once it is on disk (error None) or could not be. Any thread.

        ``call``: its arguments already pickled (by the submitter, outside
        the scheduler's lock); else ``task.args`` and ``task.kwargs`` are.
        """
        self._put(
            _ADD,
            (
                key or dump_id(task.task_id),
                task.handler,
                call if call is not None else pickle.dumps((task.args, task.kwargs), _PICKLE),
                task.priority,
                task.max_retries,
                task.timeout,
                int(task.keep),
                None if task.key is None else pickle.dumps(task.key, _PICKLE),
                task.due,
                task.attempts,
                task.retries,
            ),
            done,
        )

    def start(self, task_id: Any, attempt: int, key: bytes | None = None) -> None:
        """Journal that ``attempt`` of the task started (recovery counts it as made). Any thread."""
        self._put(_START, (attempt, key or dump_id(task_id)), None)

    def retry(self, task_id: Any, due: float, retries: int, key: bytes | None = None) -> None:
        """Journal a retry due at wall time ``due``. Any thread."""
        self._put(_RETRY, (due, retries, key or dump_id(task_id)), None)

    def end(self, task_id: Any, result: StoredResult | None, key: bytes | None = None) -> None:
        """Journal the end of a task: its row goes, its result (if kept) is stored. Any thread.

        ``key`` (here and in ``start``, ``retry``): the task's ``dump_id``, if the caller kept it.
        """
        key = key or dump_id(task_id)
        self._put(_END, (key,), None)
        if result is not None:
            # Pickled by the writer thread: a value's __reduce__ is user code,
            # and this may be called under the scheduler's lock.
            self._put(
                "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?)",
                functools.partial(_result_row, key, result),
                None,
            )

    def forget(self, task_id: Any) -> None:
        """Drop a stored result (expired, evicted or forgotten). Any thread."""
        self._put("DELETE FROM results WHERE task_id = ?", (dump_id(task_id),), None)

    @property
    def failed(self) -> BaseException | None:
        """The error that stopped the writer (a full disk, say), or None. Any thread."""
        return self._failed

    def barrier(self, done: Callable[[BaseException | None], object]) -> None:
        """Call ``done(error)`` once every operation put before this one is on disk. Any thread."""
        self._put("", (), done)

    def reserve_ids(self, end: int) -> None:
        """Record that generated ids up to ``end`` may be in use. Any thread."""
        self._put("UPDATE meta SET value = max(value, ?) WHERE name = 'next_id'", (end,), None)

    def _put(self, sql: str, params: Params, done: Callable[[BaseException | None], object] | None) -> None:
        if done is None and self._failed is None and not self._closing:
            # Without the lock: a deque's append is atomic, and the writer
            # takes items one by one (see _run). It is woken only when it
            # sleeps: it sets _idle, under the lock, before it looks at the
            # deque a last time and waits, so an append it did not see finds
            # _idle set and wakes it. One that lands after a failure or close
            # is never written, which is all a failed or closed journal does.
            self._ops.append((sql, params, None))
            if self._idle:
                with self._cond:
                    self._cond.notify()
            return
        with self._cond:
            if self._failed is not None or self._closing or self._conn is None:
                error = self._failed or JournalError(f"the journal {self.path!r} is closed")
            else:
                self._ops.append((sql, params, done))
                self._cond.notify()
                return
        # Never raised here: this runs under the scheduler's lock, in the
        # middle of a change. A journal that failed writes no more; the
        # queue goes on in memory, and durable submits are refused (failed).
        if done is not None:
            done(error)

    def _run(self) -> None:
        # The writer thread: every operation waiting now is one transaction.
        conn = self._conn
        assert conn is not None
        ops = self._ops
        while True:
            with self._cond:
                self._idle = True
                while not ops and not self._closing:
                    self._cond.wait()
                self._idle = False
                if not ops:
                    return
            # One by one, and only what is there now: _put appends without the lock.
            batch = [ops.popleft() for _ in range(len(ops))]
            error: BaseException | None = None
            try:
                conn.execute("BEGIN IMMEDIATE")
                # Runs of one statement go to executemany: one call into
                # SQLite for a burst of submits, not one per task.
                run: list[tuple[Any, ...]] = []
                last = ""
                passing = _passing(batch)
                for sql, params, _ in batch:
                    if passing and sql in _ROW_OPS and params[-1 if sql is not _ADD else 0] in passing:  # type: ignore[index]
                        continue
                    if sql != last:
                        if run:
                            conn.executemany(last, run)
                        run, last = [], sql
                    if sql:  # "" is a barrier: nothing to write
                        run.append(params() if callable(params) else params)
                if run:
                    conn.executemany(last, run)
                conn.execute("COMMIT")
                self.commits += 1
            except sqlite3.Error as exc:
                logger.error(
                    "writing the journal %r failed; durable submits are refused from now on: %r", self.path, exc
                )
                error = JournalError(f"writing the journal {self.path!r} failed (disk full?): {exc}")
                error.__cause__ = exc
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                with self._cond:
                    self._failed = error
            for _, _, done in batch:
                if done is not None:
                    done(error)
            if error is not None:
                return

    def close(self) -> None:
        """Write what waits, stop the writer and release the file (and its lock). Any thread; idempotent."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _passing(batch: list[tuple[str, Params, Any]]) -> set[bytes]:
    # Tasks added and ended within one batch (the common case under load):
    # their row would be inserted, updated and deleted in one transaction,
    # so it is not written at all; only their result is. Keys seen once each
    # way only (an id added again after its end keeps its writes).
    added: dict[Any, int] = {}
    ended: dict[Any, int] = {}
    for sql, params, _ in batch:
        if sql is _ADD:
            key = params[0]  # type: ignore[index]
            added[key] = added.get(key, 0) + 1
        elif sql is _END:
            key = params[0]  # type: ignore[index]
            ended[key] = ended.get(key, 0) + 1
    if not ended:
        return set()
    return {key for key, n in ended.items() if n == 1 and added.get(key) == 1}


def _meta(conn: sqlite3.Connection, name: str) -> int | None:
    row = conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
    return None if row is None else int(row[0])


def _read_tasks(conn: sqlite3.Connection) -> list[StoredTask]:
    tasks: list[StoredTask] = []
    rows = conn.execute(
        "SELECT task_id, handler, call, priority, max_retries, timeout, keep, key, due, attempts, retries "
        "FROM tasks ORDER BY seq"
    )
    loads = pickle.loads
    append = tasks.append
    for task_id, handler, call, priority, max_retries, timeout, keep, key, due, attempts, retries in rows:
        args, kwargs = loads(call)
        # tuple.__new__ directly: the NamedTuple's own __new__ is a Python frame.
        append(
            _new_tuple(
                StoredTask,
                (
                    loads(task_id),
                    handler,
                    args,
                    kwargs,
                    priority,
                    max_retries,
                    timeout,
                    bool(keep),
                    None if key is None else loads(key),
                    due,
                    attempts,
                    retries,
                ),
            )
        )
    return tasks


def _read_results(conn: sqlite3.Connection) -> list[StoredResult]:
    rows = conn.execute("SELECT task_id, status, outcome, retries, duration_ms, expires FROM results")
    return [
        StoredResult(pickle.loads(task_id), status, None if outcome is None else pickle.loads(outcome), r, d, e)
        for task_id, status, outcome, r, d, e in rows
    ]


def _result_row(key: bytes, result: StoredResult) -> tuple[Any, ...]:
    try:
        outcome = pickle.dumps(result.outcome, _PICKLE)
    except Exception as exc:  # an unpicklable value or error: kept as its description
        outcome = pickle.dumps(RuntimeError(f"the outcome did not pickle ({exc!r}): {result.outcome!r}"), _PICKLE)
    return (key, result.status, outcome, result.retries, result.duration_ms, result.expires)
