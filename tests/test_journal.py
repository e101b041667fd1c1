"""The journal: group commit, one writer, recovery, migration from older layouts, clear errors."""

from __future__ import annotations

import functools
import pickle
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from hybrid_queue import _journal
from hybrid_queue._journal import JournalError, SQLiteJournal, StoredResult, StoredTask, dump_id, task_row

pytestmark = pytest.mark.unit


def task(i: int) -> StoredTask:
    return StoredTask(("t", i), "tests._helpers:double", (i,), None, 0, 3, None, True, None, None, 0, 0)


def test_tasks_and_results_survive_a_reopen_and_ids_are_reserved(tmp_path):
    path = tmp_path / "tasks.db"
    journal = SQLiteJournal(path)
    assert journal.open(id_block=100).next_id == 1
    acked = threading.Semaphore(0)
    for i in range(10):
        journal.add(task_row(task(i)), lambda error: acked.release())
    for i in range(4):
        journal.end(dump_id(("t", i)), StoredResult(("t", i), "completed", i * 2, 0, 1.5, time.time() + 60))
    for _ in range(10):
        assert acked.acquire(timeout=10)
    journal.close()

    again = SQLiteJournal(path)
    recovered = again.open(id_block=100)
    again.close()
    assert [t.task_id for t in recovered.tasks] == [("t", i) for i in range(4, 10)]
    assert recovered.tasks[0].args == (4,)
    assert sorted((r.task_id, r.outcome) for r in recovered.results) == [(("t", i), i * 2) for i in range(4)]
    assert recovered.next_id == 101


def test_a_second_process_gets_a_clear_error(tmp_path):
    path = tmp_path / "tasks.db"
    journal = SQLiteJournal(path)
    journal.open()
    try:
        code = (
            "from hybrid_queue._journal import SQLiteJournal, JournalError\n"
            f"try:\n    SQLiteJournal({str(path)!r}).open()\nexcept JournalError as e:\n    print(e)\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30).stdout
        assert "is in use by another process" in out
    finally:
        journal.close()


def test_a_file_that_is_not_a_journal_is_refused(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(JournalError, match=r"is not a hybrid_queue journal, or it is corrupt"):
        SQLiteJournal(path).open()
    assert path.read_bytes() == b"not a database" * 100


def test_a_newer_schema_is_refused(tmp_path):
    import sqlite3

    path = tmp_path / "tasks.db"
    journal = SQLiteJournal(path)
    journal.open()
    journal.close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = 99 WHERE name = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(JournalError, match=r"has schema version 99, newer than this hybrid_queue reads"):
        SQLiteJournal(path).open()


def test_bursts_share_transactions(tmp_path):
    journal = SQLiteJournal(tmp_path / "tasks.db")
    journal.open()
    done = threading.Semaphore(0)
    for i in range(2000):
        journal.add(task_row(task(i)), lambda error: done.release())
    for _ in range(2000):
        assert done.acquire(timeout=10)
    journal.close()
    assert journal.commits < 2000


# Version 1's layout, as hybrid_queue 0.x wrote it: ids and options in columns of their own.
_VERSION_1 = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE tasks (
    seq INTEGER PRIMARY KEY, task_id BLOB NOT NULL UNIQUE, handler TEXT NOT NULL, call BLOB NOT NULL,
    priority INTEGER NOT NULL, max_retries INTEGER NOT NULL, timeout REAL, keep INTEGER NOT NULL, key BLOB,
    due REAL, attempts INTEGER NOT NULL DEFAULT 0, retries INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE results (
    task_id BLOB PRIMARY KEY, status TEXT NOT NULL, outcome BLOB, retries INTEGER NOT NULL,
    duration_ms REAL NOT NULL, expires REAL NOT NULL
) WITHOUT ROWID;
INSERT INTO meta VALUES ('schema_version', 1), ('next_id', 40);
"""


def test_a_version_1_journal_is_migrated_when_opened(tmp_path):
    path = tmp_path / "tasks.db"
    conn = sqlite3.connect(path)
    conn.executescript(_VERSION_1)
    p = functools.partial(pickle.dumps, protocol=5)
    rows = [
        (p(7), "tests._helpers:double", p(((7,), None)), 2, 3, 1.5, 1, None, None, 1, 0),
        (p("s"), "tests._helpers:double", p(((8,), {"k": 1})), 0, 0, None, 0, p("tenant"), 9e9, 0, 0),
        (p(9), "tests._helpers:double", b"\x80\x05cno_such_module\nGone\n)\x81.", 0, 0, None, 1, None, None, 0, 0),
    ]
    conn.executemany("INSERT INTO tasks (task_id, handler, call, priority, max_retries, timeout, keep, key, due, "
                     "attempts, retries) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)  # fmt: skip
    conn.execute("INSERT INTO results VALUES (?, 'completed', ?, 0, 1.0, ?)", (p(3), p(6), time.time() + 60))
    conn.commit()
    conn.close()

    journal = SQLiteJournal(path)
    recovered = journal.open()
    journal.close()
    seven, s, nine = recovered.tasks
    assert seven == StoredTask(7, "tests._helpers:double", (7,), None, 2, 3, 1.5, True, None, None, 1, 0)
    assert (s.task_id, s.args, s.kwargs, s.keep, s.key, s.due) == ("s", (8,), {"k": 1}, False, "tenant", 9e9)
    assert nine.task_id == 9 and "no_such_module" in repr(nine.unreadable)
    assert [(r.task_id, r.outcome) for r in recovered.results] == [(3, 6)]
    assert recovered.next_id == 40
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone() == (2,)
    assert conn.execute("SELECT typeof(task_id) FROM tasks ORDER BY seq").fetchall() == [
        ("integer",), ("blob",), ("integer",)
    ]  # fmt: skip
    assert conn.execute("SELECT typeof(task_id) FROM results").fetchall() == [("integer",)]
    conn.close()


def test_a_batch_folds_to_the_last_state_of_each_task(tmp_path):
    # Added and ended in one batch: only the result; started twice: the last state; re-added after its end: there.
    path = tmp_path / "tasks.db"
    journal = SQLiteJournal(path)
    journal.open()
    journal.add(task_row(task(0)))
    journal.barrier(lambda error: None)
    written = threading.Event()
    # One extend: the writer takes all of it or none, so this is one batch.
    journal._ops.extend([
        ("state", (dump_id(("t", 0)), 1, None, 0), None),
        ("state", (dump_id(("t", 0)), 2, 123.0, 1), None),
        ("add", task_row(task(1)), None),
        ("state", (dump_id(("t", 1)), 1, None, 0), None),
        ("end", (dump_id(("t", 1)), StoredResult(("t", 1), "completed", 2, 0, 1.0, time.time() + 60)), None),
        ("add", task_row(task(1)), None),
    ])  # fmt: skip
    journal._put("barrier", None, lambda error: written.set())
    assert written.wait(10)
    journal.close()
    again = SQLiteJournal(path)
    recovered = again.open()
    again.close()
    assert [(t.task_id, t.attempts, t.due, t.retries) for t in recovered.tasks] == [
        (("t", 0), 2, 123.0, 1), (("t", 1), 0, None, 0)
    ]  # fmt: skip
    assert [(r.task_id, r.outcome) for r in recovered.results] == [(("t", 1), 2)]


def test_a_failing_waiter_does_not_stop_the_writer(tmp_path):
    # A waiter whose loop closed raises; the writer goes on with the others.
    journal = SQLiteJournal(tmp_path / "tasks.db")
    journal.open()

    def closed(error: BaseException | None) -> None:
        raise RuntimeError("Event loop is closed")

    journal.add(task_row(task(0)), closed)
    acked = threading.Event()
    journal.add(task_row(task(1)), lambda error: acked.set())
    assert acked.wait(10)
    assert journal.failed is None
    journal.close()


def test_a_failed_write_answers_the_waiters_put_while_it_was_written(tmp_path, monkeypatch):
    journal = SQLiteJournal(tmp_path / "tasks.db")
    journal.open()
    writing, fail = threading.Event(), threading.Event()

    def write(batch: object, statements: object) -> None:
        writing.set()
        assert fail.wait(10)
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(_journal._Batch, "write", write)
    journal.add(task_row(task(1)))  # no waiter: the writer takes it and blocks in write()
    assert writing.wait(10)
    answers: list[BaseException | None] = []
    journal.barrier(answers.append)  # behind the batch that is failing
    journal.add(task_row(task(2)), answers.append)
    fail.set()
    deadline = time.monotonic() + 10
    while len(answers) < 2 and time.monotonic() < deadline:
        time.sleep(0.001)
    journal.close()
    assert len(answers) == 2 and all(isinstance(a, JournalError) for a in answers)
    assert isinstance(journal.failed, JournalError)
