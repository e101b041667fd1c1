"""Events and logging: every state change reaches listeners, in order, on the loop thread; logs stay quiet.

- Listeners see submit, start, retry, completion, failure, cancel and expiry,
  on the loop thread even for work from threads, and the events from before
  the loop ran once it does. A failing listener is logged and breaks nothing;
  a listener removed while listeners are called is not called again.
- Logging: quiet for routine work, retries at INFO, one WARNING per failed
  task, lifecycle at DEBUG, and nothing printed.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
import threading

import pytest

from hybrid_queue import EventKind, HybridQueue, RetryPolicy, TaskEvent
from hybrid_queue.testing import FakeClock

K = EventKind


class Recorder:
    """A listener that keeps every event and the thread it was called on."""

    def __init__(self) -> None:
        self.events: list[TaskEvent] = []
        self.threads: set[int] = set()

    def __call__(self, event: TaskEvent) -> None:
        self.events.append(event)
        self.threads.add(threading.get_ident())

    def of(self, task_id):
        return [(e.kind, e.attempt) for e in self.events if e.task_id == task_id]


async def test_a_task_that_completes(make_queue):
    clock = FakeClock(start=5.0)
    q = await make_queue(1, clock=clock)
    seen = Recorder()
    q.add_listener(seen)
    h = await q.submit(abs, -3)
    await h
    await q.shutdown()
    assert seen.of(h.task_id) == [(K.SUBMITTED, 0), (K.STARTED, 1), (K.COMPLETED, 1)]
    done = seen.events[-1]
    assert (done.time, done.duration_ms, done.error, done.delay) == (5.0, 0.0, None, None)
    assert seen.threads == {threading.get_ident()}


async def test_retries_then_success_then_expiry(make_queue):
    clock = FakeClock()
    q = await make_queue(1, clock=clock, result_ttl=60.0, retry=RetryPolicy(max_retries=2, base_delay=10.0))
    seen = Recorder()
    q.add_listener(seen)
    attempts = 0

    async def flaky():
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise OSError(f"transient {attempts}")
        return "ok"

    h = await q.submit(flaky)
    await clock.sleep(30)
    assert await h == "ok"
    await clock.sleep(60)
    await q.shutdown()
    assert seen.of(h.task_id) == [
        (K.SUBMITTED, 0),
        (K.STARTED, 1),
        (K.RETRY_SCHEDULED, 1),
        (K.STARTED, 2),
        (K.RETRY_SCHEDULED, 2),
        (K.STARTED, 3),
        (K.COMPLETED, 3),
        (K.EXPIRED, 0),
    ]
    retries = [e for e in seen.events if e.kind is K.RETRY_SCHEDULED]
    assert [(e.delay, str(e.error), e.time) for e in retries] == [
        (10.0, "transient 1", 0.0),
        (20.0, "transient 2", 10.0),
    ]
    completed = next(e for e in seen.events if e.kind is K.COMPLETED)
    assert (completed.time, completed.duration_ms) == (30.0, 30_000.0)
    assert next(e for e in seen.events if e.kind is K.EXPIRED).time == 90.0


async def test_final_failure_carries_the_error(make_queue):
    q = await make_queue(1, retry=RetryPolicy(max_retries=0))
    seen = Recorder()
    q.add_listener(seen)
    boom = ValueError("boom")

    def fail():
        raise boom

    h = await q.submit(fail)
    with pytest.raises(ValueError):
        await h
    await q.shutdown()
    failed = [e for e in seen.events if e.kind is K.FAILED]
    assert len(failed) == 1 and failed[0].error is boom and failed[0].attempt == 1


async def test_cancelled_pending_and_running(make_queue):
    q = await make_queue(1)
    seen = Recorder()
    q.add_listener(seen)
    started = asyncio.Event()

    async def hang():
        started.set()
        await asyncio.Event().wait()

    running = await q.submit(hang)
    waiting = await q.submit(hang)
    await started.wait()
    assert q.cancel_task(waiting.task_id)
    assert q.cancel_task(running.task_id)
    await q.shutdown()
    assert seen.of(waiting.task_id) == [(K.SUBMITTED, 0), (K.CANCELLED, 0)]
    assert seen.of(running.task_id) == [(K.SUBMITTED, 0), (K.STARTED, 1), (K.CANCELLED, 1)]
    assert all(isinstance(e.error, asyncio.CancelledError) for e in seen.events if e.kind is K.CANCELLED)


async def test_eviction_is_an_event(make_queue):
    q = await make_queue(1, max_results=1)
    seen = Recorder()
    q.add_listener(seen)
    first = await q.submit(abs, -1)
    second = await q.submit(abs, -2)
    await asyncio.gather(first, second)
    await q.shutdown()
    assert (K.EVICTED, 0) in seen.of(first.task_id)
    assert (K.EVICTED, 0) not in seen.of(second.task_id)


def test_listeners_run_on_the_loop_thread_for_work_from_threads():
    seen = Recorder()
    with HybridQueue(4) as q:
        q.add_listener(seen)
        loop_thread = q._sched.loop_thread

        def submit_some(base: int) -> None:
            for i in range(50):
                q.submit_blocking(abs, -(base + i)).result(timeout=10)

        threads = [threading.Thread(target=submit_some, args=(k * 100,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert seen.threads == {loop_thread}
    kinds = [e.kind for e in seen.events]
    assert kinds.count(K.SUBMITTED) == kinds.count(K.STARTED) == kinds.count(K.COMPLETED) == 200
    # Each task's own events arrive in the order they happened.
    by_task: dict[object, list[EventKind]] = {}
    for e in seen.events:
        by_task.setdefault(e.task_id, []).append(e.kind)
    assert all(v == [K.SUBMITTED, K.STARTED, K.COMPLETED] for v in by_task.values())


async def test_events_from_before_the_loop_arrive_once_it_runs():
    seen = Recorder()
    q = HybridQueue(1)
    q.add_listener(seen)
    future = await asyncio.to_thread(q.submit_blocking, abs, -4)  # no loop bound yet
    assert seen.events == []
    await q.start()
    await asyncio.wrap_future(future)
    await q.shutdown()
    assert [e.kind for e in seen.events] == [K.SUBMITTED, K.STARTED, K.COMPLETED]


async def test_a_failing_listener_is_logged_and_breaks_nothing(make_queue, caplog):
    q = await make_queue(2)
    seen = Recorder()

    def broken(event: TaskEvent) -> None:
        raise RuntimeError("listener bug")

    q.add_listener(broken)
    q.add_listener(seen)
    with caplog.at_level(logging.ERROR, logger="hybrid_queue"):
        handles = [await q.submit(abs, -i) for i in range(5)]
        assert await asyncio.gather(*handles) == [0, 1, 2, 3, 4]
        await q.shutdown()
    assert len(seen.events) == 15
    logged = [r for r in caplog.records if "event listener" in r.getMessage()]
    assert len(logged) == 15 and "listener bug" in logged[0].exc_text


async def test_remove_listener_and_bad_listeners(make_queue):
    q = await make_queue(1)
    seen = Recorder()
    q.add_listener(seen)
    q.remove_listener(seen)
    await (await q.submit(abs, -1))
    await q.shutdown()
    assert seen.events == []
    with pytest.raises(ValueError, match="is not a listener of this queue"):
        q.remove_listener(seen)
    with pytest.raises(TypeError, match="listener must be callable"):
        q.add_listener("print")  # type: ignore[arg-type]


async def test_no_listener_means_no_events_are_kept(make_queue):
    q = await make_queue(1)
    await asyncio.gather(*[await q.submit(abs, -i) for i in range(100)])
    assert q._sched._listeners.pending == []


async def test_a_bound_method_listener_is_removed_by_a_fresh_bound_method(make_queue):
    q = await make_queue(1)
    seen = Recorder()
    q.add_listener(seen.__call__)
    q.remove_listener(seen.__call__)  # a new bound-method object, same object and function
    await (await q.submit(abs, -1))
    await q.shutdown()
    assert seen.events == []


@pytest.mark.hardening
async def test_a_one_shot_listener_that_removes_itself_is_called_exactly_once(make_queue):
    q = await make_queue(1)
    calls: list[TaskEvent] = []

    def once(event: TaskEvent) -> None:
        calls.append(event)
        q.remove_listener(once)

    q.add_listener(once)
    # Many events in one batch: SUBMITTED and STARTED of several tasks at least.
    handles = [await q.submit(abs, -i) for i in range(5)]
    await asyncio.gather(*handles)
    await q.shutdown()
    assert len(calls) == 1


@pytest.mark.hardening
async def test_a_listener_removed_by_another_is_not_called_for_the_rest_of_the_batch(make_queue):
    q = await make_queue(1)
    second: list[TaskEvent] = []

    def first(event: TaskEvent) -> None:
        q.remove_listener(second.append)

    q.add_listener(first)
    q.add_listener(second.append)
    handles = [await q.submit(abs, -i) for i in range(5)]
    await asyncio.gather(*handles)
    await q.shutdown()
    assert second == []


# --------------------------------------------------------------- logging


async def test_routine_work_logs_nothing_at_info(make_queue, caplog, capsys):
    caplog.set_level(logging.INFO, logger="hybrid_queue")
    q = await make_queue(2)
    handles = [await q.submit(abs, -i) for i in range(20)]
    for h in handles:
        await h
    await q.shutdown()
    assert caplog.records == []
    assert capsys.readouterr() == ("", "")


async def test_retries_at_info_and_only_the_final_failure_at_warning(make_queue, caplog, capsys):
    caplog.set_level(logging.DEBUG, logger="hybrid_queue")
    clock = FakeClock()
    q = await make_queue(1, clock=clock, retry=RetryPolicy(max_retries=2, base_delay=5.0))

    async def fail():
        raise ConnectionError("refused")

    h = await q.submit(fail, task_id="job-7")
    await clock.sleep(60)
    with pytest.raises(ConnectionError):
        await h
    logged = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
    assert logged == [
        ("INFO", "task 'job-7' attempt 1 failed with ConnectionError('refused'); retry 1 of 2 in 5.000 s"),
        ("INFO", "task 'job-7' attempt 2 failed with ConnectionError('refused'); retry 2 of 2 in 10.000 s"),
        ("WARNING", "task 'job-7' failed after 3 attempt(s): ConnectionError('refused')"),
    ]
    assert capsys.readouterr() == ("", "")


def test_an_unconfigured_program_prints_nothing_to_stderr():
    # Without a handler of the library's own, logging.lastResort would print
    # every WARNING of an unconfigured program to stderr.
    program = textwrap.dedent(
        """
        from hybrid_queue import HybridQueue, RetryPolicy

        def fail():
            raise ConnectionError("refused")

        with HybridQueue(2, retry=RetryPolicy(max_retries=1, base_delay=0.0)) as q:
            futures = [q.submit_blocking(fail) for _ in range(5)]
            for f in futures:
                try:
                    f.result()
                except ConnectionError:
                    pass
        print("done")
        """
    )
    run = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True)
    assert (run.stdout, run.stderr) == ("done\n", "")


async def test_lifecycle_is_logged_at_debug(make_queue, caplog):
    caplog.set_level(logging.DEBUG, logger="hybrid_queue")
    q = await make_queue(3)
    await q.shutdown()
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert debug[0] == "queue started with 3 workers"
    assert debug[-1] == "queue stopped"
    assert all(r.levelno == logging.DEBUG for r in caplog.records)
