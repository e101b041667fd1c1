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

# The kinds of operations the writer folds (see _Batch), compared by identity.
_ADD = "add"  # (key, *the rest of a tasks row): a new task
_STATE = "state"  # (key, attempts, due, retries): an attempt started, or a retry is due
_END = "end"  # (key, result or None): the task's row goes; its result, if any, is stored
_FORGET = "forget"  # key: a stored result goes
_RESERVE = "reserve"  # end: generated ids up to it may be in use
_BARRIER = "barrier"  # nothing to write: its waiter wants what came before on disk

# 1: ids pickled; 2: an int id (64 bits) stored as itself (see dump_id). Each
# version an older journal is migrated from has its step in _MIGRATIONS.
SCHEMA_VERSION = 2
Done = Callable[[BaseException | None], object]
_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
_PICKLE = 5  # fixed, so that one id always pickles to the same key
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
TASK_COLUMNS = "task_id, handler, spec, due, attempts, retries"
# What the writer binds, it binds as an int, float, str or bytearray where it
# can: the sqlite3 module binds those directly, but passes None and bytes
# through its adaptation protocol first (measured: 0.8 and 1.1 us a value,
# against 0.2 to 0.3). So blobs are bytearrays, and a NULL goes as a value
# its statement turns back into NULL (nullif): NO_DUE for a due time, an
# empty blob (which no pickle is) for a result's None. The key of an id that
# is not an int stays bytes: keys are hashed, in the scheduler and in _Batch.
NO_DUE = 0.0
_NO_OUTCOME = bytearray()

_META = "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID"
# Version 2. A task's options and arguments are one pickled ``spec`` (see
# task_row): each column is a parameter the writer binds, at a cost per
# task. seq: submission order, for recovery.
_TASKS = """
CREATE TABLE tasks (
    seq INTEGER PRIMARY KEY,
    task_id NOT NULL UNIQUE,
    handler TEXT NOT NULL,
    spec BLOB NOT NULL,
    due REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0
)
"""
_RESULTS = """
CREATE TABLE results (
    task_id PRIMARY KEY,
    status TEXT NOT NULL,
    outcome BLOB,
    retries INTEGER NOT NULL,
    duration_ms REAL NOT NULL,
    expires REAL NOT NULL
) WITHOUT ROWID
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
    unreadable: BaseException | None = None  # why args and kwargs could not be read back (they are then empty)


class StoredResult(NamedTuple):
    """A result read back from the journal at recovery; ``outcome`` is the value, or the error."""

    task_id: Any
    status: str  # a TaskStatus's value
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


def dump_id(task_id: Any) -> int | bytes:
    """The key a task id is stored under: an int of 64 bits as itself (generated ids are), anything else pickled."""
    if type(task_id) is int and _INT64_MIN <= task_id <= _INT64_MAX:
        return task_id
    return pickle.dumps(task_id, _PICKLE)


def load_id(key: int | bytes) -> Any:
    """The task id stored under ``key`` (see dump_id)."""
    return key if isinstance(key, int) else pickle.loads(key)


# A task's spec: (args, kwargs, priority, max_retries, timeout, keep_result, key).
Spec = tuple[tuple[Any, ...], dict[str, Any] | None, int, int, float | None, bool, Any]


def dump_spec(spec: Spec) -> bytearray:
    """A task's ``spec`` column: what it is called with and its options, in one pickle (a bytearray: see NO_DUE)."""
    return bytearray(pickle.dumps(spec, _PICKLE))


def task_row(task: StoredTask) -> tuple[Any, ...]:
    """``task`` as the columns of its row, in the order ``SQLiteJournal.add`` takes (``TASK_COLUMNS``)."""
    spec = dump_spec((task.args, task.kwargs, task.priority, task.max_retries, task.timeout, task.keep, task.key))
    return (dump_id(task.task_id), task.handler, spec, task.due, task.attempts, task.retries)


class SQLiteJournal:
    """A journal file for ``HybridQueue(journal=...)``: durable tasks and their results in SQLite, WAL mode.

    ``synchronous``: SQLite's setting, ``"NORMAL"`` (the default: a crash of
    the process loses nothing committed) or ``"FULL"`` (a power loss loses
    nothing committed either, at the cost of an fsync per commit).
    ``bounded_reruns``: a worker slot stays busy after its durable task ends
    until that end is on disk, so that a crash runs again at most the tasks
    that were running (``workers``, and handlers waiting for tasks of their
    own queue), not also those whose end was waiting for the next commit;
    it costs each slot a commit round trip per task.
    Pass a path to the queue for the defaults, or this object for other
    settings. The queue opens it; its methods are the queue's. Any thread.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, synchronous: str = "NORMAL", bounded_reruns: bool = False
    ) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike naming the journal file, got {path!r}")
        if not isinstance(synchronous, str) or synchronous.upper() not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {', '.join(_SYNCHRONOUS)}, got {synchronous!r}")
        if not isinstance(bounded_reruns, bool):
            raise TypeError(f"bounded_reruns must be True or False, got {bounded_reruns!r}")
        self.path = os.fspath(path)
        self.synchronous = synchronous.upper()
        self.bounded_reruns = bounded_reruns
        self._conn: sqlite3.Connection | None = None
        # The writer's queue: (kind, payload, waiter) in the order they were
        # put; guarded by _cond's lock. ``_closing`` ends the thread once empty.
        self._cond = threading.Condition(threading.Lock())
        self._ops: deque[tuple[str, Any, Done | None]] = deque()
        self._closing = False
        self._idle = False  # the writer sleeps, or is about to: see _put
        # The error that stopped the writer (a full disk, say), or None; set once, under _cond.
        self.failed: BaseException | None = None
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
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(_META)
            version = _meta(conn, "schema_version")
            if version is None:
                # A new journal. In a database that has tables of these
                # names already (another program's), this fails: refused.
                conn.execute(_TASKS)
                conn.execute(_RESULTS)
                conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
            elif version > SCHEMA_VERSION:
                raise JournalError(
                    f"the journal {self.path!r} has schema version {version}, newer than this hybrid_queue "
                    f"reads ({SCHEMA_VERSION}); upgrade hybrid_queue, or use another file"
                )
            elif version < SCHEMA_VERSION:
                # In the transaction that reads the journal: a crash in the
                # middle leaves it as it was, at its old version.
                for step in range(version, SCHEMA_VERSION):
                    _MIGRATIONS[step](conn)
                conn.execute("UPDATE meta SET value = ? WHERE name = 'schema_version'", (SCHEMA_VERSION,))
                logger.info("migrated the journal %r from schema version %d to %d", self.path, version, SCHEMA_VERSION)
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

    def add(self, row: tuple[Any, ...], done: Done | None = None) -> None:
        """Journal a new task, ``row`` its columns (see ``task_row``); ``done(error)`` once on disk or not. Any thread.

        Here and below, a task is named by its key (``dump_id`` of its id).
        """
        self._put(_ADD, row, done)

    def state(self, key: int | bytes, attempts: int, due: float, retries: int) -> None:
        """Journal a task's progress: attempts started, and the wall time a retry is due (NO_DUE: none is). Any thread.

        Recovery counts the attempts as made: a task that was running runs
        again as the next attempt.
        """
        self._put(_STATE, (key, attempts, due, retries), None)

    def end(self, key: int | bytes, result: StoredResult | None) -> None:
        """Journal the end of a task: its row goes, its result (if kept) is stored. Any thread.

        The result is pickled by the writer thread: a value's ``__reduce__``
        is user code, and this may be called under the scheduler's lock.
        """
        self._put(_END, (key, result), None)

    def forget(self, key: int | bytes) -> None:
        """Drop a stored result (expired, evicted or forgotten). Any thread."""
        self._put(_FORGET, key, None)

    def barrier(self, done: Done) -> None:
        """Call ``done(error)`` once every operation put before this one is on disk. Any thread."""
        self._put(_BARRIER, None, done)

    def reserve_ids(self, end: int) -> None:
        """Record that generated ids up to ``end`` may be in use. Any thread."""
        self._put(_RESERVE, end, None)

    def _put(self, kind: str, payload: Any, done: Done | None) -> None:
        if done is None and self.failed is None and not self._closing:
            # Without the lock: a deque's append is atomic, and the writer
            # takes items one by one (see _run). It is woken only when it
            # sleeps: under the lock, it sets _idle before each look at the
            # deque, and clears it only once it found something there. So an
            # append that finds _idle clear is seen by the writer's next
            # look; one that finds it set takes the lock, and the
            # first such clears it and wakes the writer (later ones do not:
            # it is awake, or about to be, and takes them). One that lands
            # after a failure or close is never written, which is all a
            # failed or closed journal does (it has no waiter: see _fail).
            self._ops.append((kind, payload, None))
            if self._idle:
                with self._cond:
                    if self._idle:  # once per sleep, not once per append until the writer runs
                        self._idle = False
                        self._cond.notify()
            return
        with self._cond:
            if self.failed is not None or self._closing or self._conn is None:
                error = self.failed or JournalError(f"the journal {self.path!r} is closed")
            else:
                self._ops.append((kind, payload, done))
                self._idle = False
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
        statements = _Statements(conn)
        while True:
            with self._cond:
                while True:
                    self._idle = True  # before the look: see _put
                    if ops or self._closing:
                        break
                    self._cond.wait()
                self._idle = False
                if not ops:
                    return
            # One by one, and only what is there now: _put appends without the lock.
            batch = [ops.popleft() for _ in range(len(ops))]
            error: BaseException | None = None
            try:
                folded = _Batch(batch)
                conn.execute("BEGIN IMMEDIATE")
                folded.write(statements)
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
                batch += self._fail(error)
            for _, _, done in batch:
                if done is not None:
                    try:
                        done(error)
                    except Exception:  # a waiter's loop closed, say: the writer goes on for the others
                        logger.exception("a journal waiter of %r failed", self.path)
            if error is not None:
                return

    def _fail(self, error: BaseException) -> list[tuple[str, Any, Done | None]]:
        # Writer thread: no more writes. Returns what was put meanwhile, for
        # its waiters to hear of the error too: from now on a put with a
        # waiter sees ``failed`` under the lock and answers it itself.
        with self._cond:
            self.failed = error
            left = list(self._ops)
            self._ops.clear()
        return left

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


class _Batch:
    """One batch of operations folded to what it leaves: one row written per task, whatever happened to it.

    A task added and ended within the batch (the common case under load)
    writes only its result; one that started, failed and started again
    writes its last state. Folding also makes each kind of write one run,
    so that it goes to SQLite as a few statements of many rows (see
    _Statements): the writer thread gives up the GIL at every statement,
    and a loop thread busy with handlers may keep it for a switch interval
    (5 ms) each time, so a statement per row would be a convoy.
    """

    __slots__ = ("added", "forgotten", "gone", "reserve", "results", "states")

    def __init__(self, batch: list[tuple[str, Any, Done | None]]) -> None:
        added: dict[Any, list[Any]] = {}  # rows of tasks added in this batch and still live, in order
        gone: list[Any] = []  # rows written by an earlier batch whose task ended
        states: dict[Any, tuple[Any, ...]] = {}  # the last state of rows written by an earlier batch
        results: dict[Any, StoredResult] = {}
        forgotten: dict[Any, None] = {}
        reserve = 0
        for kind, payload, _ in batch:
            if kind is _STATE:
                key = payload[0]
                row = added.get(key)
                if row is None:
                    states[key] = payload
                else:
                    row[4], row[3], row[5] = payload[1], payload[2], payload[3]
            elif kind is _ADD:
                added[payload[0]] = list(payload)
            elif kind is _END:
                key, result = payload
                if added.pop(key, None) is None:
                    gone.append(key)
                    states.pop(key, None)
                if result is not None:
                    results[key] = result
                    forgotten.pop(key, None)
            elif kind is _FORGET:
                results.pop(payload, None)
                forgotten[payload] = None
            elif kind is _RESERVE:
                reserve = max(reserve, payload)
        self.added, self.gone, self.states = added, gone, states
        self.results, self.forgotten, self.reserve = results, forgotten, reserve

    def write(self, statements: _Statements) -> None:
        """Write what the batch leaves, in the transaction the caller opened. Writer thread."""
        # Deletes first: an id that ended may have been added again since.
        statements.run(_DELETE_TASKS, [(key,) for key in self.gone])
        statements.run(_INSERT_TASKS, self.added.values())
        statements.run(_UPDATE_TASKS, self.states.values())
        statements.run(_DELETE_RESULTS, [(key,) for key in self.forgotten])
        statements.run(_INSERT_RESULTS, [_result_row(key, result) for key, result in self.results.items()])
        if self.reserve:
            statements.conn.execute("UPDATE meta SET value = max(value, ?) WHERE name = 'next_id'", (self.reserve,))


# Each statement as (text before the rows, one row's placeholders, text after the rows, columns per row).
_Statement = tuple[str, str, str, int]
_INSERT_TASKS: _Statement = (f"INSERT INTO tasks ({TASK_COLUMNS}) VALUES ", "(?, ?, ?, nullif(?, 0.0), ?, ?)", "", 6)
_UPDATE_TASKS: _Statement = (
    "UPDATE tasks SET attempts = v.column2, due = nullif(v.column3, 0.0), retries = v.column4 FROM (VALUES ",
    "(?, ?, ?, ?)", ") AS v WHERE tasks.task_id = v.column1", 4,
)  # fmt: skip
_DELETE_TASKS: _Statement = ("DELETE FROM tasks WHERE task_id IN (", "?", ")", 1)
_DELETE_RESULTS: _Statement = ("DELETE FROM results WHERE task_id IN (", "?", ")", 1)
_INSERT_RESULTS: _Statement = ("INSERT OR REPLACE INTO results VALUES ", "(?, ?, nullif(?, x''), ?, ?, ?)", "", 6)
# Rows per statement: a run is cut greedily into these sizes, so that a few
# statement texts (each prepared once) serve every length. Padding the rest
# up to one size instead (rows of NULLs that change nothing) was measured
# slower: binding the padding costs more than the statements it saves.
_SIZES = (256, 64, 16, 4, 1)


class _Statements:
    """The writer's statements of many rows: texts made once per size, runs cut into those sizes."""

    __slots__ = ("_texts", "conn")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._texts: dict[tuple[_Statement, int], str] = {}

    def run(self, statement: _Statement, rows: Any) -> None:
        """Execute ``statement`` for ``rows`` (an iterable of tuples), in few statements, in order. Writer thread."""
        params = [value for row in rows for value in row]
        width = statement[3]
        start, n = 0, len(params)
        for size in _SIZES:
            step = size * width
            while n - start >= step:
                text = self._texts.get((statement, size))
                if text is None:
                    head, one, tail, _ = statement
                    text = self._texts[(statement, size)] = head + ", ".join([one] * size) + tail
                self.conn.execute(text, params[start : start + step])
                start += step


def _meta(conn: sqlite3.Connection, name: str) -> int | None:
    row = conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
    return None if row is None else int(row[0])


def _from_version_1(conn: sqlite3.Connection) -> None:
    # 1 -> 2: ids that are ints of 64 bits, pickled in version 1, are
    # stored as themselves; a task's arguments (column ``call``) and options
    # (a column each) become its spec.
    conn.execute("ALTER TABLE tasks RENAME TO tasks_1")
    conn.execute(_TASKS)
    rows = []
    old = "SELECT seq, task_id, handler, call, priority, max_retries, timeout, keep, key, due, attempts, retries"
    for seq, task_id, handler, call, priority, max_retries, timeout, keep, key, due, attempts, retries in conn.execute(
        old + " FROM tasks_1 ORDER BY seq"
    ):
        try:
            args, kwargs = pickle.loads(call)
            key = None if key is None else pickle.loads(key)
        except Exception as exc:  # kept, to fail when it runs: see _read_tasks
            args, kwargs, key = (_Unreadable(repr(exc)),), None, None
        spec = dump_spec((args, kwargs, priority, max_retries, timeout, bool(keep), key))
        rows.append((seq, dump_id(pickle.loads(task_id)), handler, spec, due, attempts, retries))
    conn.executemany(f"INSERT INTO tasks (seq, {TASK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    conn.execute("DROP TABLE tasks_1")
    ids = [(dump_id(pickle.loads(key)), key) for (key,) in conn.execute("SELECT task_id FROM results")]
    conn.executemany("UPDATE results SET task_id = ? WHERE task_id = ?", [(new, old) for new, old in ids if new != old])


# Version N -> N + 1, each in the transaction that opens the journal.
_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _from_version_1}


class _Unreadable(NamedTuple):
    # Stands for the arguments of a version 1 row that could not be read when
    # it was migrated: the task fails as one unreadable now would.
    reason: str


def _read_tasks(conn: sqlite3.Connection) -> list[StoredTask]:
    tasks: list[StoredTask] = []
    rows = conn.execute(f"SELECT {TASK_COLUMNS} FROM tasks ORDER BY seq")
    loads = pickle.loads
    append = tasks.append
    for task_id, handler, spec, due, attempts, retries in rows:
        task_id = load_id(task_id)
        unreadable: BaseException | None = None
        try:
            args, kwargs, priority, max_retries, timeout, keep, key = loads(spec)
            if args and type(args[0]) is _Unreadable:
                unreadable = pickle.UnpicklingError(args[0].reason)
        except Exception as exc:
            # A class renamed or gone since: the task fails when it runs,
            # with this error, instead of keeping the journal from opening.
            unreadable = exc
            args, kwargs, priority, max_retries, timeout, keep, key = (), None, 0, 0, None, True, None
        # tuple.__new__ directly: the NamedTuple's own __new__ is a Python frame.
        append(
            _new_tuple(
                StoredTask,
                (task_id, handler, args, kwargs, priority, max_retries, timeout, keep, key, due, attempts, retries,
                 unreadable),
            )
        )  # fmt: skip
    return tasks


def _read_results(conn: sqlite3.Connection) -> list[StoredResult]:
    rows = conn.execute("SELECT task_id, status, outcome, retries, duration_ms, expires FROM results")
    return [
        StoredResult(load_id(task_id), status, None if outcome is None else pickle.loads(outcome), r, d, e)
        for task_id, status, outcome, r, d, e in rows
    ]


def _result_row(key: int | bytes, result: StoredResult) -> tuple[Any, ...]:
    if result.outcome is None:
        return (key, result.status, _NO_OUTCOME, result.retries, result.duration_ms, result.expires)
    try:
        outcome = bytearray(pickle.dumps(result.outcome, _PICKLE))
    except Exception as exc:  # an unpicklable value or error: kept as its description
        error = RuntimeError(f"the outcome did not pickle ({exc!r}): {result.outcome!r}")
        outcome = bytearray(pickle.dumps(error, _PICKLE))
    return (key, result.status, outcome, result.retries, result.duration_ms, result.expires)
