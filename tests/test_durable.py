"""Durable tasks: a journaled queue survives a restart and SIGKILL, at least once, with clear errors for bad input."""

from __future__ import annotations

import asyncio
import functools
import random
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import _durable_handlers
import pytest
from _durable_handlers import append, attempts_seen, nothing, record, waits_for_a_child
from conftest import Figures, wait_until

from hybrid_queue import HybridQueue, SQLiteJournal, TaskStatus, _journal
from hybrid_queue._journal import JournalError, dump_id
from hybrid_queue.testing import FakeClock

pytestmark = pytest.mark.durable

CHILD = Path(__file__).parent / "_durable_child.py"
WORKERS = 4  # the child's


@pytest.fixture
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The file $HQ_RUNS names, where the handlers of _durable_handlers append what ran."""
    path = tmp_path / "runs"
    monkeypatch.setenv("HQ_RUNS", str(path))
    return path


def square(x: int) -> int:
    return x * x


async def test_results_and_pending_tasks_survive_a_restart(tmp_path, runs):
    path = tmp_path / "tasks.db"
    q = HybridQueue(2, journal=path)
    await q.start()
    done = [await q.submit(record, i) for i in range(3)]
    assert [await h for h in done] == [0, 1, 4]
    later = await q.submit(record, 7, delay=3600)
    await q.shutdown()  # a durable task scheduled for later is kept, not lost

    again = HybridQueue(2, journal=path)
    assert again.status(later.task_id) is TaskStatus.SCHEDULED
    await again.start()
    assert (await again.get_result(done[1].task_id)).result == 1
    fresh = await again.submit(record, 8)
    assert fresh.task_id not in {h.task_id for h in done}  # generated ids stay unique across restarts
    assert await fresh == 64
    await again.shutdown()


async def test_a_second_queue_on_the_same_journal_is_refused(tmp_path):
    path = tmp_path / "tasks.db"
    q = HybridQueue(1, journal=path)
    try:
        code = (
            "from hybrid_queue import HybridQueue\n"
            f"try:\n    HybridQueue(1, journal={str(path)!r})\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
        )
        run = functools.partial(subprocess.run, capture_output=True, text=True, timeout=60)
        out = (await asyncio.to_thread(run, [sys.executable, "-c", code])).stdout
        assert out.startswith("JournalError") and "is in use by another process" in out
    finally:
        await q.shutdown()


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("fn", "args", "match"),
    [
        (lambda: 1, (), r"^a durable task's handler must be importable after a restart"),
        (functools.partial(square, 2), (), r"^a durable task's handler must be a module-level function"),
        (square, (threading.Lock(),), r"^a durable task's arguments must pickle"),
    ],
    ids=["lambda", "partial", "unpicklable-argument"],
)
async def test_a_durable_task_that_could_not_run_after_a_restart_is_refused(tmp_path, fn, args, match):
    q = HybridQueue(1, journal=tmp_path / "tasks.db")
    await q.start()
    try:
        with pytest.raises(TypeError, match=match):
            await q.submit(fn, *args)
        assert q.stats().submitted == 0
        # Not durable: as any task.
        assert await (await q.submit(square, 3, durable=False)) == 9
    finally:
        await q.shutdown()


@pytest.mark.bad_input
async def test_durable_true_without_a_journal_is_refused(make_queue):
    q = await make_queue(1)
    with pytest.raises(ValueError, match=r"^durable=True needs a queue with a journal"):
        await q.submit(square, 1, durable=True)
    assert q.stats().submitted == 0


def test_a_file_that_is_not_a_journal_is_refused(tmp_path):
    path = tmp_path / "notes.db"
    path.write_bytes(b"plain text, not SQLite" * 50)
    with pytest.raises(JournalError, match=r"is not a hybrid_queue journal, or it is corrupt"):
        HybridQueue(1, journal=path)


def crash_campaign(
    tmp_path: Path, figures: Figures, kills: int, total: int, seed: int, bounded: bool = False
) -> dict[str, int]:
    # Returns its figures, and adds them to the reliability report's.
    rng = random.Random(seed)
    journal, acks, runs = tmp_path / "tasks.db", tmp_path / "acks", tmp_path / "runs"
    args = [sys.executable, str(CHILD), str(journal), str(acks), str(runs), str(total)]
    if bounded:
        args.append("--bounded")
    for _ in range(kills):
        child = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 0.9))
        child.kill()  # SIGKILL: no clean-up of any kind
        child.wait()
        append(str(runs), "kill\n")  # the child is gone: what ran before this line ran before this kill
    final = subprocess.run([*args, "--finish"], capture_output=True, text=True, timeout=300)
    assert final.stdout.strip() == "DONE", final.stderr[-2000:]

    acked = {int(x) for x in acks.read_text().split()}
    lives = runs.read_text().split("kill\n")  # what each process ran, the last one's (--finish) at the end
    ran = Counter(int(x) for life in lives for x in life.split())
    conn = sqlite3.connect(journal)
    stored = dict(conn.execute("SELECT task_id, status FROM results").fetchall())
    left = conn.execute("SELECT count(*) FROM tasks").fetchone()[0]
    conn.close()
    assert acked == set(range(total))
    missing = [i for i in acked if ran[i] == 0]
    assert not missing, missing[:20]  # every acknowledged task ran at least once
    assert all(stored.get(dump_id(f"t{i}")) == "completed" for i in acked)  # one result row each (the key)
    assert left == 0
    reruns = sum(n - 1 for n in ran.values())
    # A kill's re-runs: tasks that ran in the process it killed and ran again later.
    last_life: dict[int, int] = {}
    per_kill = [0] * kills
    for n, life in enumerate(lives):
        for i in {int(x) for x in life.split()}:
            if i in last_life:
                per_kill[last_life[i]] += 1
            last_life[i] = n
    assert sum(per_kill) <= reruns
    # Without bounded_reruns, the tasks whose end waited for the next commit
    # run again too: how many depends on how long commits take (on a loaded
    # machine, more), so they are counted and reported, not bounded here.
    if bounded:  # only the tasks running at a kill run again
        assert max(per_kill) <= WORKERS, per_kill
        figures.add("durable_bounded_kills", kills)
        figures.most("durable_bounded_most_reruns_of_a_kill", max(per_kill))
    else:
        figures.add("durable_kills", kills)
        figures.add("durable_reruns", reruns)
        figures.most("durable_most_reruns_of_a_kill", max(per_kill))
    return {"kills": kills, "tasks": total, "reruns": reruns, "most_reruns_of_a_kill": max(per_kill)}


@pytest.mark.timeout(240)
def test_crash_campaign_short(tmp_path, figures):
    crash_campaign(tmp_path, figures, kills=8, total=2_000, seed=1)


@pytest.mark.timeout(240)
def test_crash_campaign_with_bounded_reruns(tmp_path, figures):
    crash_campaign(tmp_path, figures, kills=8, total=2_000, seed=3, bounded=True)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_crash_campaign_200_kills_bounded(tmp_path, figures):
    crash_campaign(tmp_path, figures, kills=200, total=10_000, seed=4, bounded=True)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_crash_campaign_200_kills(tmp_path, figures):
    crash_campaign(tmp_path, figures, kills=200, total=10_000, seed=2)


async def test_a_full_disk_refuses_durable_submits_and_the_queue_goes_on(tmp_path, runs):
    journal = SQLiteJournal(tmp_path / "tasks.db")
    q = HybridQueue(2, journal=journal)
    await q.start()
    assert await (await q.submit(record, 1)) == 1
    conn = journal._conn
    assert conn is not None
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count={pages}")  # SQLite's own "database or disk is full"
    with pytest.raises(JournalError, match=r"writing the journal .* failed \(disk full\?\)"):
        await q.submit(record, "x" * 100_000)  # its row does not fit
    with pytest.raises(JournalError, match=r"^the journal can take no more tasks"):
        await q.submit(record, 3)
    assert await (await q.submit(record, 4, durable=False)) == 16
    await asyncio.wait_for(q.shutdown(), 10)
    assert q.stats().busy_workers == 0


async def test_a_durable_batch_is_on_disk_when_submit_many_returns(tmp_path, runs):
    path = tmp_path / "tasks.db"
    q = HybridQueue(1, journal=path)  # never started: the batch waits in the journal
    handles = await q.submit_many(record, range(5))
    assert len(handles) == 5
    await q.shutdown()  # keeps them

    again = HybridQueue(2, journal=path)
    assert again.stats().pending == 5
    await again.start()
    results = [await again.get_result(h.task_id) for h in handles]
    assert [r.result for r in results] == [0, 1, 4, 9, 16]
    await again.shutdown()
    other = HybridQueue(1, journal=tmp_path / "other.db")
    with pytest.raises(TypeError, match=r"^a durable task's handler must be importable after a restart"):
        await other.submit_many(lambda x: x, [1])
    assert other.stats().submitted == 0
    await other.shutdown()


async def test_results_leave_the_journal_with_the_store(tmp_path, runs):
    # Expired, evicted or forgotten: the journal holds no more results than the store.
    clock = FakeClock()
    path = tmp_path / "tasks.db"
    q = HybridQueue(2, journal=path, max_results=3, result_ttl=60.0, clock=clock)
    await q.start()
    handles = [await q.submit(record, i) for i in range(5)]
    await asyncio.gather(*handles)
    assert q.forget(handles[4].task_id) is True
    await q.sync_journal()
    await q.shutdown()
    again = HybridQueue(2, journal=path, result_ttl=60.0, clock=clock)
    kept = set(again._sched._store._results)  # what the journal gave back
    assert kept == {handles[2].task_id, handles[3].task_id}  # 0 and 1 evicted, 4 forgotten
    await again.start()
    await clock.sleep(61)  # past the ttl: both expire, here and in the journal
    assert again.stats().results_stored == 0
    await again.sync_journal()
    await again.shutdown()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM results").fetchone()[0] == 0
    conn.close()


async def test_generated_ids_are_stored_as_integers(tmp_path, runs):
    path = tmp_path / "tasks.db"
    q = HybridQueue(1, journal=path)  # never started: the rows stay
    await q.submit(record, 1)
    await q.submit(record, 2, task_id="invoice:7")
    await q.shutdown()
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT typeof(task_id) FROM tasks ORDER BY seq").fetchall()
    conn.close()
    assert rows == [("integer",), ("blob",)]


def column_types(path: Path) -> tuple[list[tuple[object, ...]], dict[object, str]]:
    conn = sqlite3.connect(path)
    tasks = conn.execute("SELECT task_id, typeof(spec), typeof(due), attempts FROM tasks ORDER BY seq").fetchall()
    results = dict(conn.execute("SELECT task_id, typeof(outcome) FROM results").fetchall())
    conn.close()
    return tasks, results


async def test_an_absent_due_time_or_value_is_stored_as_null(tmp_path, runs):
    # The writer binds them as values its statements turn back into NULL (see _journal.NO_DUE).
    path = tmp_path / "tasks.db"
    q = HybridQueue(2, journal=path)  # never started: the rows are inserted, and stay
    cut = await q.submit(attempts_seen, 1)
    later = await q.submit(record, 2, delay=3600)
    await q.shutdown()
    assert column_types(path)[0] == [(cut.task_id, "blob", "null", 0), (later.task_id, "blob", "real", 0)]

    again = HybridQueue(2, journal=path)
    await again.start()
    await wait_until(runs.exists)
    await again.sync_journal()  # the start: an update of the row written before
    none = await again.submit(nothing, 3)
    assert await none is None
    await again.sync_journal()
    await again.shutdown(wait=False)  # cuts the first off: its row stays
    tasks, results = column_types(path)
    assert tasks == [(cut.task_id, "blob", "null", 1), (later.task_id, "blob", "real", 0)]
    assert results == {none.task_id: "null"}


async def test_a_submitter_cancelled_while_its_row_is_written_leaves_the_task_queued(tmp_path, runs):
    path = tmp_path / "tasks.db"
    q = HybridQueue(1, journal=path)
    await q.start()
    submitting = asyncio.create_task(q.submit(record, 5))
    await asyncio.sleep(0)  # queued; waiting for its row to be committed
    assert q.stats().submitted == 1
    submitting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await submitting
    await q.shutdown()  # drains: the task runs all the same
    assert (tmp_path / "runs").read_text() == "5\n"
    assert q.stats().completed == 1


async def test_a_coroutine_handler_cut_off_mid_run_runs_again_with_the_next_attempt(tmp_path, runs):
    path = tmp_path / "tasks.db"
    q = HybridQueue(1, journal=path)
    await q.start()
    h = await q.submit(attempts_seen, 7)
    await wait_until(runs.exists)
    await q.sync_journal()  # its start is on disk, as it is soon after a start before a crash
    await q.shutdown(wait=False)  # cut off mid-run: a durable task's row stays, its attempt counted

    again = HybridQueue(1, journal=path)
    await again.start()
    await again.shutdown()  # runs what the journal gave back
    assert runs.read_text() == "7 1\n7 2\n"
    assert (await again.get_result(h.task_id)).result == 2


@pytest.mark.parametrize("bounded", [True, False])
async def test_bounded_reruns_keeps_a_slot_until_its_task_s_end_is_on_disk(tmp_path, monkeypatch, bounded, runs):
    q = HybridQueue(1, journal=SQLiteJournal(tmp_path / "tasks.db", bounded_reruns=bounded))
    journal = q._journal_sched.journal
    written: list[Callable[[BaseException | None], object]] = []
    monkeypatch.setattr(journal, "barrier", written.append)  # what waits for the disk, held here
    await q.start()
    first, second = await q.submit(record, 1), await q.submit(record, 2)
    assert await first == 1
    if not bounded:
        assert await second == 4 and written == []
        await q.shutdown()
        return
    await asyncio.sleep(0.05)  # time enough for the slot to go on, were it free
    assert q.status(second.task_id) is TaskStatus.PENDING
    assert q.stats().busy_workers == 1 and len(written) == 1
    written.pop()(None)  # the first task's end is on disk: its slot goes to the second
    assert await second == 4
    await wait_until(lambda: len(written) == 1)
    written.pop()(None)
    await q.shutdown()  # waits for the slot too
    assert q.stats().busy_workers == 0


async def test_bounded_reruns_lets_a_handler_wait_for_its_own_task(tmp_path, monkeypatch, runs):
    monkeypatch.setattr(_durable_handlers, "QUEUE", None)
    q = HybridQueue(1, journal=SQLiteJournal(tmp_path / "tasks.db", bounded_reruns=True))
    _durable_handlers.QUEUE = q
    await q.start()
    handles = [await q.submit(waits_for_a_child, i) for i in range(3)]
    assert [await h for h in handles] == [1, 2, 5]
    await q.shutdown()
    assert q.stats().busy_workers == 0 and q.stats().completed == 6


async def test_bounded_reruns_gives_a_slot_back_when_the_journal_fails(tmp_path, monkeypatch, runs):
    q = HybridQueue(1, journal=SQLiteJournal(tmp_path / "tasks.db", bounded_reruns=True))
    await q.start()
    writing, fail = threading.Event(), threading.Event()
    real_write = _journal._Batch.write

    def write(batch: _journal._Batch, statements: object) -> None:
        if batch.results:  # the batch with the first task's end
            writing.set()
            assert fail.wait(10)
            raise sqlite3.OperationalError("database or disk is full")
        real_write(batch, statements)

    monkeypatch.setattr(_journal._Batch, "write", write)
    first = await q.submit(record, 1)
    second = q.submit_nowait(record, 2, durable=False)
    assert await first == 1
    await asyncio.to_thread(writing.wait, 10)  # the end is being written; the slot waits for it
    assert q.stats().busy_workers == 1 and q.status(second.task_id) is TaskStatus.PENDING
    fail.set()  # the slot comes back with the error
    assert await asyncio.wait_for(second, 10) == 4
    await asyncio.wait_for(q.shutdown(), 10)
    assert q.stats().busy_workers == 0


async def test_bounded_reruns_lets_the_next_task_of_a_key_start_in_a_free_slot(tmp_path, monkeypatch, runs):
    q = HybridQueue(2, journal=SQLiteJournal(tmp_path / "tasks.db", bounded_reruns=True))
    q.limit("k", concurrency=1)
    written: list[Callable[[BaseException | None], object]] = []
    monkeypatch.setattr(q._journal_sched.journal, "barrier", written.append)
    await q.start()
    first, second = await q.submit(record, 1, key="k"), await q.submit(record, 2, key="k")
    assert await first == 1
    assert await asyncio.wait_for(second, 10) == 4  # in the other slot, while the first one's waits
    assert len(written) >= 1
    for done in written:
        done(None)
    await q.shutdown()
    assert q.stats().busy_workers == 0


async def test_bounded_reruns_keeps_the_slot_for_a_handler_waiting_for_its_task(tmp_path, monkeypatch, runs):
    monkeypatch.setattr(_durable_handlers, "QUEUE", None)
    q = HybridQueue(1, journal=SQLiteJournal(tmp_path / "tasks.db", bounded_reruns=True))
    _durable_handlers.QUEUE = q
    parent = await q.submit(waits_for_a_child, 3)  # before start: both wait in the heap
    other = await q.submit(record, 7)
    await q.start()
    assert await parent == 10 and await other == 49
    await q.shutdown()
    # The child's slot went back to the parent waiting for it, ahead of the heap.
    assert runs.read_text() == "3\nafter 3\n7\n"


def test_bounded_reruns_must_be_a_bool(tmp_path):
    with pytest.raises(TypeError, match="bounded_reruns must be True or False, got 'yes'"):
        SQLiteJournal(tmp_path / "tasks.db", bounded_reruns="yes")  # type: ignore[arg-type]


async def test_a_task_whose_arguments_cannot_be_read_back_fails_alone(tmp_path, runs):
    path = tmp_path / "tasks.db"
    q = HybridQueue(1, journal=path)
    bad = await q.submit(record, 1)
    good = await q.submit(record, 2)
    await q.shutdown()
    conn = sqlite3.connect(path)
    # A pickle naming a class that is gone, as after a rename.
    conn.execute("UPDATE tasks SET spec = ? WHERE task_id = ?", (b"\x80\x05cno_such_module\nGone\n)\x81.", bad.task_id))
    conn.commit()
    conn.close()

    again = HybridQueue(1, journal=path)
    await again.start()
    await again.shutdown()
    failed = await again.get_result(bad.task_id)
    assert failed.status is TaskStatus.FAILED
    assert "the arguments of a journaled task cannot be read any more" in str(failed.error)
    assert (await again.get_result(good.task_id)).result == 4
