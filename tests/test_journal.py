"""The journal component (not yet wired into the queue): group commit, one writer, recovery, clear errors."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from hybrid_queue._journal import JournalError, SQLiteJournal, StoredResult, StoredTask

pytestmark = pytest.mark.unit


def task(i: int) -> StoredTask:
    return StoredTask(("t", i), "tests._helpers:double", (i,), None, 0, 3, None, True, None, None, 0, 0)


def test_tasks_and_results_survive_a_reopen_and_ids_are_reserved(tmp_path):
    path = tmp_path / "tasks.db"
    journal = SQLiteJournal(path)
    assert journal.open(id_block=100).next_id == 1
    acked = threading.Semaphore(0)
    for i in range(10):
        journal.add(task(i), lambda error: acked.release())
    for i in range(4):
        journal.end(("t", i), StoredResult(("t", i), "completed", i * 2, 0, 1.5, time.time() + 60))
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
        journal.add(task(i), lambda error: done.release())
    for _ in range(2000):
        assert done.acquire(timeout=10)
    journal.close()
    assert journal.commits < 2000
