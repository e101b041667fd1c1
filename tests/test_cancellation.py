"""Cancellation: a cancelled task ends CANCELLED, never runs again, and its worker goes on.

- A pending task, or one waiting for its retry, leaves at once and never runs.
- A running coroutine handler is cancelled; a running sync handler's thread
  cannot be stopped from outside, so its result is discarded (see
  test_threads.py for handlers that stop themselves).
- The handle's ``concurrent.futures`` side is done too, for ``wait`` and
  ``as_completed``.
- A handler that swallows the cancellation, raises ``CancelledError`` itself
  or hangs after it does not break its worker.
- Cancels racing submits from many threads keep the stats exact, and a
  cancelled burst gives its memory back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import threading
import tracemalloc
from typing import Any

import pytest
from _helpers import FAST, SAFETY, assert_nothing_lost, assert_stats_identity, queue_tasks, shut_down
from conftest import wait_until

from hybrid_queue import HybridQueue, RetryPolicy, TaskStatus
from hybrid_queue.testing import FakeClock


async def test_cancel_pending_task_leaves_at_once_and_never_runs(make_queue):
    q = await make_queue(1, start=False)
    ran = []

    async def handler(tag):
        ran.append(tag)

    a = await q.submit(handler, "a")
    b = await q.submit(handler, "b")
    assert q.cancel_task(b.task_id) is True
    assert b.cancelled() and q.status(b.task_id) is TaskStatus.CANCELLED
    s = q.stats()
    assert (s.pending, s.cancelled) == (1, 1)
    assert q.cancel_task(b.task_id) is False
    await q.start()
    await a
    await asyncio.sleep(0.01)
    assert ran == ["a"]
    r = await q.get_result(b.task_id)
    assert r.status is TaskStatus.CANCELLED and isinstance(r.error, asyncio.CancelledError)


async def test_cancel_running_coroutine_cancels_handler_and_worker_goes_on(make_queue):
    q = await make_queue(1)
    started = asyncio.Event()
    saw_cancel = []

    async def forever():
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            saw_cancel.append(True)
            raise

    async def after():
        return "next"

    h = await q.submit(forever)
    nxt = await q.submit(after)
    await started.wait()
    assert h.cancel() is True
    with pytest.raises(asyncio.CancelledError):
        await h
    assert await nxt == "next"
    assert saw_cancel == [True]
    assert q.status(h.task_id) is TaskStatus.CANCELLED
    s = q.stats()
    assert (s.cancelled, s.completed, s.running, s.busy_workers) == (1, 1, 0, 0)


async def test_cancel_task_waiting_for_retry(make_queue):
    q = await make_queue(1, retry=RetryPolicy(max_retries=3, base_delay=30))
    attempts = 0

    async def fail():
        nonlocal attempts
        attempts += 1
        raise ValueError("x")

    h = await q.submit(fail)
    await wait_until(lambda: q.status(h.task_id) is TaskStatus.RETRY_WAIT)
    assert q.stats().retrying == 1
    assert q.cancel_task(h.task_id)
    assert h.cancelled()
    s = q.stats()
    assert (s.retrying, s.cancelled, attempts) == (0, 1, 1)
    assert_stats_identity(s)


async def test_cancel_running_sync_handler_discards_its_result(make_queue):
    q = await make_queue(1)
    entered = threading.Event()
    release = threading.Event()

    def slow():
        entered.set()
        release.wait(10)
        return "late"

    def after():
        return "next"

    h = await q.submit(slow)
    nxt = await q.submit(after)
    await asyncio.to_thread(entered.wait, 10)
    assert q.cancel_task(h.task_id)
    assert h.cancelled()
    s = q.stats()
    # The handler still occupies its slot until it returns.
    assert (s.running, s.cancelled, s.busy_workers, s.pending) == (0, 1, 1, 1)
    release.set()
    assert await nxt == "next"
    assert (await q.get_result(h.task_id)).status is TaskStatus.CANCELLED
    assert q.stats().completed == 1


def test_cancelled_concurrent_future_is_done_for_wait_and_as_completed():
    with HybridQueue(1) as q:
        release = threading.Event()
        first = q.submit_blocking(release.wait, 10)
        pending = q.submit_blocking(pow, 2, 2)
        assert pending.cancel()
        done, not_done = concurrent.futures.wait([pending], timeout=5)
        assert done == {pending} and not not_done
        assert list(concurrent.futures.as_completed([pending], timeout=5)) == [pending]
        assert q.status(pending.task_id) is TaskStatus.CANCELLED
        # Cancelling through the queue resolves the future the same way.
        assert q.cancel_task(first.task_id)
        done, _ = concurrent.futures.wait([first], timeout=5)
        assert done == {first} and first.cancelled()
        release.set()


async def test_handler_that_swallows_cancellation_does_not_break_the_worker(make_queue):
    q = await make_queue(1)
    started = asyncio.Event()

    async def stubborn():
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "ignored the cancel"

    async def after():
        await asyncio.sleep(0)  # must not be hit by a leftover cancel request
        return "next"

    h = await q.submit(stubborn)
    nxt = await q.submit(after)
    await started.wait()
    q.cancel_task(h.task_id)
    assert await nxt == "next"
    assert (await q.get_result(h.task_id)).status is TaskStatus.CANCELLED


async def test_handler_raising_cancelled_error_itself_does_not_kill_worker(make_queue):
    q = await make_queue(1, retry=FAST)

    async def raises_cancelled():
        raise asyncio.CancelledError()

    async def after():
        return 7

    h = await q.submit(raises_cancelled)
    nxt = await q.submit(after)
    assert await nxt == 7
    assert h.cancelled()
    assert (await q.get_result(h.task_id)).status is TaskStatus.CANCELLED


@pytest.mark.faults
@pytest.mark.parametrize("then", ["returns", "keeps_running"])
async def test_coroutine_swallowing_cancel_task(make_queue, then):
    """A coroutine handler that catches the CancelledError of ``cancel_task``.

    Cancellation is decided by the queue, not negotiated with the handler:
    the task is CANCELLED and its handle cancelled the moment
    ``cancel_task`` returns, whatever the handler does next. Its later return
    value is discarded. A handler that keeps running holds its worker slot
    (``busy_workers``) until it returns, as a cancelled sync handler does;
    then the worker goes on, with no cancel request left over to hit the
    next task.
    """
    q = await make_queue(1)
    started = asyncio.Event()
    gate = asyncio.Event()
    swallowed = []

    async def swallower():
        started.set()
        try:
            await asyncio.sleep(SAFETY)
        except asyncio.CancelledError:
            swallowed.append(True)
        if then == "keeps_running":
            await gate.wait()
        return "discarded"

    async def following():
        await asyncio.sleep(0)
        return "next"

    h = await q.submit(swallower)
    nxt = await q.submit(following)
    await started.wait()
    assert q.cancel_task(h.task_id) is True
    assert h.cancelled() and q.status(h.task_id) is TaskStatus.CANCELLED
    if then == "keeps_running":
        await wait_until(lambda: bool(swallowed))
        s = q.stats()
        assert (s.running, s.pending, s.cancelled, s.busy_workers) == (0, 1, 1, 1)
        assert not nxt.done()
        gate.set()
    async with asyncio.timeout(5):
        assert await nxt == "next"
    assert swallowed == [True]
    r = await q.get_result(h.task_id)
    assert r.status is TaskStatus.CANCELLED and r.result is None
    assert q.stats().busy_workers == 0
    assert_nothing_lost(q, [h, nxt])
    await shut_down(q)


@pytest.mark.faults
@pytest.mark.parametrize("how", ["cancel_task_then_shutdown_timeout", "shutdown_timeout", "shutdown_nowait"])
async def test_coroutine_swallowing_cancel_then_hanging(make_queue, monkeypatch, caplog, how):
    """A coroutine handler that swallows one CancelledError and then awaits forever.

    The task is CANCELLED when the queue cancels it (by ``cancel_task`` or by
    shutdown); the handler keeps its worker slot, so a task waiting behind
    it cannot start. ``shutdown(timeout=...)`` and ``shutdown(wait=False)``
    cancel what is left, give the stuck worker ``unwind_grace`` seconds,
    then cancel the worker itself, log a WARNING that it abandoned the
    handler, and return. The second cancel ends this handler, so the worker
    is gone and the slot free right after. (A plain ``shutdown()`` would
    drain, i.e. wait for the slot, for ever: give it a timeout.)
    """
    q = await make_queue(1, unwind_grace=0.1)
    started = asyncio.Event()
    swallowed = []

    async def stubborn():
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            swallowed.append(True)
        await asyncio.Event().wait()  # until cancelled a second time

    h = await q.submit(stubborn)
    waiting = await q.submit(abs, -1)
    await started.wait()
    if how == "cancel_task_then_shutdown_timeout":
        assert q.cancel_task(h.task_id)
        assert h.cancelled()
        await wait_until(lambda: bool(swallowed))
        s = q.stats()
        assert (s.pending, s.running, s.cancelled, s.busy_workers) == (1, 0, 1, 1)
    with caplog.at_level(logging.WARNING, logger="hybrid_queue"):
        if how == "shutdown_nowait":
            await shut_down(q, bound=3.0, wait=False)
        else:
            await shut_down(q, bound=3.0, timeout=0.05)
    assert swallowed == [True]
    assert h.cancelled() and waiting.cancelled()
    assert [r for r in caplog.records if "ignored cancellation" in r.getMessage()]
    await wait_until(lambda: not queue_tasks() and q.stats().busy_workers == 0)
    assert q.stats().cancelled == 2
    assert_nothing_lost(q, [h, waiting])


def test_rapid_submit_cancel_from_threads_keeps_stats_exact():
    n_threads, per_thread = 8, 300
    with HybridQueue(4, retry=FAST) as q:
        cancelled_by_me = [0] * n_threads

        def hammer(k):
            futures = []
            for i in range(per_thread):
                f = q.submit_blocking(abs, -i, priority=i % 3)
                futures.append(f)
                if i % 2 and q.cancel_task(f.task_id):
                    cancelled_by_me[k] += 1
            return futures

        with concurrent.futures.ThreadPoolExecutor(n_threads) as pool:
            all_futures = [f for fs in pool.map(hammer, range(n_threads)) for f in fs]
        concurrent.futures.wait(all_futures, timeout=30)
        assert all(f.done() for f in all_futures)
        s = q.stats()
    total = n_threads * per_thread
    assert s.submitted == total
    assert s.cancelled == sum(cancelled_by_me) == sum(f.cancelled() for f in all_futures)
    assert s.completed == total - s.cancelled
    assert s.failed == s.pending == s.running == s.retrying == 0
    assert_stats_identity(s)


BURST = 200_000


KIB = 1024


TTL = 60.0


async def _noop(i: int) -> int:
    return i


async def _cancelled_burst_leftover(make_queue: Any, *, holder_finishes: bool) -> int:
    """Bytes still traced after BURST pending tasks are cancelled and their results expire.

    The one worker is held by a handler that waits for the test, so none of
    the burst is ever dispatched: no pop sweeps the heap. With
    ``holder_finishes`` the handler returns once the burst is cancelled, and
    finds the heap empty; else it is still running when memory is measured.
    A small burst first warms caches and free-lists; it is too small to grow
    a table much.
    """
    clock = FakeClock()
    q = await make_queue(1, result_ttl=TTL, max_results=BURST, clock=clock)

    async def burst(n: int) -> int:
        started, release = asyncio.Event(), asyncio.Event()

        async def hold() -> None:
            started.set()
            await release.wait()

        holder = await q.submit(hold)
        await started.wait()
        ids = [handle.task_id for handle in await q.submit_many(_noop, range(n))]
        assert q.stats().pending == n
        for task_id in ids:
            assert q.cancel_task(task_id)
        del ids
        if holder_finishes:
            release.set()
            await holder
            await clock.sleep(TTL + 1)
        else:
            # sleep() would wait for the busy worker: fire the expiry timer
            # (armed on the loop, behind the cancelling code) by hand.
            await wait_until(lambda: clock.next_deadline() is not None)
            clock.advance(TTL + 1)
        assert q.stats().pending == 0
        assert q.stats().results_stored == 0
        gc.collect()
        leftover = tracemalloc.get_traced_memory()[0]
        release.set()
        await holder
        await clock.sleep(TTL + 1)
        return leftover

    tracemalloc.start()
    try:
        await burst(1_000)
        gc.collect()
        baseline = tracemalloc.get_traced_memory()[0]
        after = await burst(BURST)
    finally:
        tracemalloc.stop()
    stats = q.stats()
    assert (stats.cancelled, stats.completed, stats.results_stored) == (BURST + 1_000, 2, 0)
    return after - baseline


@pytest.mark.memory
@pytest.mark.timeout(60)
async def test_cancelled_burst_of_pending_tasks_gives_its_memory_back_with_none_dispatched(make_queue):
    leftover = await _cancelled_burst_leftover(make_queue, holder_finishes=True)
    assert abs(leftover) < 64 * KIB, f"{leftover} bytes left after {BURST} pending tasks were cancelled"


@pytest.mark.memory
@pytest.mark.asyncio(loop_factories=["asyncio"])
@pytest.mark.timeout(60)
async def test_cancelled_burst_of_pending_tasks_gives_its_memory_back_while_a_task_runs(make_queue):
    leftover = await _cancelled_burst_leftover(make_queue, holder_finishes=False)
    assert abs(leftover) < 64 * KIB, f"{leftover} bytes left after {BURST} pending tasks were cancelled"
