"""Concurrency: at most ``workers`` handlers at work at once, coroutine and sync alike, and no slot ever lost.

- ``workers`` bounds coroutine handlers, sync handlers and both kinds mixed.
- Handlers that never suspend run one after another on one worker.
- A task submitted before ``start`` waits for it.
- A worker cancelled from outside (before its first step, while running a
  handler, or parked waiting for work) settles what it had claimed and frees
  its slot; claims waiting for a worker are settled by shutdown.
- A coroutine that blocks the event loop stalls coroutines only: sync tasks go
  on in their threads. An idle queue schedules nothing.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from _helpers import SAFETY, assert_nothing_lost, assert_stats_identity, shut_down
from conftest import wait_until

from hybrid_queue import TaskStatus


@pytest.mark.parametrize("workers", [1, 3, 8])
async def test_coroutine_workers_run_exactly_n_at_once(make_queue, workers):
    q = await make_queue(workers)
    running = 0
    peak = 0
    all_in = asyncio.Event()
    release = asyncio.Event()

    async def handler():
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == workers:
            all_in.set()
        await release.wait()
        running -= 1

    handles = [await q.submit(handler) for _ in range(workers * 3)]
    # If fewer than N could run, all_in never fires and the timeout fails the test.
    async with asyncio.timeout(10):
        await all_in.wait()
    for _ in range(5):
        await asyncio.sleep(0)
    assert running == workers
    assert q.stats().running == workers
    assert q.stats().pending == workers * 2
    release.set()
    await asyncio.gather(*handles)
    assert peak == workers


async def test_sync_workers_run_exactly_n_at_once(make_queue):
    workers = 4
    q = await make_queue(workers)
    barrier = threading.Barrier(workers, timeout=10)
    lock = threading.Lock()
    running = peak = 0

    def handler():
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        barrier.wait()  # breaks (and fails the task) if only N-1 run together
        with lock:
            running -= 1

    handles = [await q.submit(handler, max_retries=0) for _ in range(workers * 4)]
    await asyncio.gather(*handles)
    assert peak == workers


async def test_mixed_kinds_share_the_worker_limit(make_queue):
    q = await make_queue(3)
    release_threads = threading.Event()
    release_loop = asyncio.Event()

    async def coro():
        await release_loop.wait()

    def sync():
        release_threads.wait(10)

    handles = [await q.submit(coro), await q.submit(sync), await q.submit(coro)]
    extra = [await q.submit(sync), await q.submit(coro)]
    for _ in range(20):
        await asyncio.sleep(0.001)
    s = q.stats()
    assert (s.running, s.pending, s.busy_workers) == (3, 2, 3)
    release_threads.set()
    release_loop.set()
    await asyncio.gather(*handles, *extra)
    assert q.stats().completed == 5


async def test_thousand_workers(make_queue):
    q = await make_queue(1000)
    gate = asyncio.Event()
    started = 0

    async def handler(i):
        nonlocal started
        started += 1
        if started == 1000:
            gate.set()
        await gate.wait()
        return i

    handles = [await q.submit(handler, i) for i in range(1000)]
    assert await asyncio.gather(*handles) == list(range(1000))


async def test_handlers_that_never_suspend_run_on_one_worker(make_queue):
    # 1,000 free slots, yet no handler ever waits: a worker is made only for
    # claims that find every worker suspended, so one worker runs them all.
    q = await make_queue(1000)
    runners = set()

    async def handler(i):
        runners.add(asyncio.current_task())
        return i

    handles = [await q.submit(handler, i) for i in range(5000)]
    assert await asyncio.gather(*handles) == list(range(5000))
    assert len(runners) == 1
    assert q.stats().busy_workers == 0


async def test_submit_before_start_waits_until_start(make_queue):
    q = await make_queue(2, start=False)
    ran = []

    async def handler():
        ran.append(1)

    h = await q.submit(handler)
    await asyncio.sleep(0.01)
    assert ran == [] and q.status(h.task_id) is TaskStatus.PENDING
    await q.start()
    await h
    assert ran == [1]


# Reads the default event loop's timer heap and ready queue; uvloop has neither.
@pytest.mark.asyncio(loop_factories=["asyncio"])
async def test_idle_queue_schedules_nothing(make_queue):
    loop = asyncio.get_running_loop()
    q = await make_queue(4, result_ttl=0.01)
    handles = [await q.submit(asyncio.sleep, 0) for _ in range(20)]
    handles += [await q.submit(abs, -i) for i in range(20)]
    await asyncio.gather(*handles)
    await wait_until(lambda: not q.stats().results_stored)
    for _ in range(3):
        await asyncio.sleep(0)
    # Nothing wakes an idle queue: no timer (the expiry chain stopped with the
    # last result), no callback queued, every worker parked on a future.
    assert [h for h in loop._scheduled if not h.cancelled()] == []
    assert len(loop._ready) == 0
    workers = [t for t in asyncio.all_tasks() if t.get_name() == "hybrid_queue-worker"]
    assert workers and all(not t.done() for t in workers)


@pytest.mark.faults
async def test_coroutine_blocking_the_event_loop(make_queue):
    """Coroutine handlers that call ``time.sleep(0.05)`` (blocking the loop) among other tasks.

    Nothing is lost or miscounted: the loop is only slow. Every other
    coroutine and sync task completes with its own value, and the counts
    add up.
    """
    q = await make_queue(4)

    async def blocks_loop(i):
        time.sleep(0.05)  # noqa: ASYNC251 - the fault under test
        return ("blocker", i)

    async def coro(i):
        await asyncio.sleep(0)
        return ("coro", i)

    def sync(i):
        return ("sync", i)

    handles = []
    for i in range(5):
        handles.append(await q.submit(blocks_loop, i))
        handles += [await q.submit(coro, i), await q.submit(sync, i)]
    handles += [await q.submit(sync, i) for i in range(5, 25)]
    async with asyncio.timeout(10):
        results = await asyncio.gather(*handles)
    assert sorted(results) == sorted(
        [("blocker", i) for i in range(5)] + [("coro", i) for i in range(5)] + [("sync", i) for i in range(25)]
    )
    s = q.stats()
    assert (s.submitted, s.completed, s.failed, s.cancelled, s.busy_workers) == (35, 35, 0, 0, 0)
    assert_nothing_lost(q, handles)
    await shut_down(q)


@pytest.mark.faults
async def test_sync_tasks_run_while_a_coroutine_blocks_the_loop(make_queue):
    """A coroutine handler that blocks the loop until 20 sync tasks have run.

    A pool thread that finishes a sync handler takes the next sync task from
    the heap itself, and reports completions without waiting for the loop,
    so a stream of sync tasks keeps running while the loop is blocked. (If
    it needed the loop, the blocker would wait out its 5 s bound and return
    False.) The sync handles resolve once the loop is free again.
    """
    q = await make_queue(2)
    loop_blocked = threading.Event()
    all_ran = threading.Event()
    ran = []

    async def blocks_loop_until_sync_tasks_ran():
        loop_blocked.set()
        return all_ran.wait(5.0)  # blocks the loop on purpose

    def sync(i):
        loop_blocked.wait(SAFETY)  # none starts before the loop is blocked
        ran.append(i)
        if len(ran) == 20:
            all_ran.set()
        return i

    blocker = await q.submit(blocks_loop_until_sync_tasks_ran)
    handles = [await q.submit(sync, i) for i in range(20)]
    async with asyncio.timeout(10):
        assert await blocker is True
        assert await asyncio.gather(*handles) == list(range(20))
    assert ran == list(range(20))
    assert q.stats().completed == 21
    assert_nothing_lost(q, [blocker, *handles])
    await shut_down(q)


async def test_claims_waiting_for_a_worker_are_settled_by_shutdown(make_queue):
    # The claims are made at submit; no worker has run yet when shutdown
    # cancels them, and each slot must still come back.
    q = await make_queue(4)
    ran = []

    async def handler(i):
        ran.append(i)

    handles = [q.submit_nowait(handler, i) for i in range(4)]
    assert q.stats().running == 4
    await q.shutdown(wait=False)
    assert ran == []
    assert all(h.cancelled() for h in handles)
    s = q.stats()
    assert (s.cancelled, s.busy_workers, s.running) == (4, 0, 0)


async def test_worker_cancelled_before_its_first_step_settles_its_claim(make_queue):
    # Code that cancels every task (or a loop closing) can cancel a worker
    # that was made for a claim but has not run yet: the claim must not be lost.
    q = await make_queue(8)

    async def nap():
        await asyncio.sleep(0.001)

    handles = [q.submit_nowait(nap) for _ in range(8)]
    await asyncio.sleep(0)  # the first worker is made now, its first step still queued
    workers = [t for t in asyncio.all_tasks() if t.get_name() == "hybrid_queue-worker"]
    assert len(workers) == 1
    workers[0].cancel()
    await asyncio.wait_for(q.shutdown(), 10)
    assert all(h.done() for h in handles)
    s = q.stats()
    assert (s.busy_workers, s.running, s.cancelled, s.completed) == (0, 0, 1, 7)


async def test_worker_cancelled_from_outside_settles_its_task_and_frees_the_slot(make_queue):
    q = await make_queue(1)
    started = asyncio.Event()

    async def forever():
        started.set()
        await asyncio.Event().wait()

    h = await q.submit(forever)
    nxt = await q.submit(abs, -4)
    await started.wait()
    (worker,) = [t for t in asyncio.all_tasks() if t.get_name() == "hybrid_queue-worker"]
    worker.cancel()  # as asyncio.run does to every task when its main coroutine ends
    with pytest.raises(asyncio.CancelledError):
        await worker
    assert h.cancelled()
    assert await nxt == 4
    s = q.stats()
    assert (s.cancelled, s.completed, s.busy_workers) == (1, 1, 0)
    assert_stats_identity(s)


async def test_parked_worker_cancelled_from_outside_loses_no_claim(make_queue):
    q = await make_queue(1)
    await (await q.submit(asyncio.sleep, 0))
    await asyncio.sleep(0)
    (worker,) = [t for t in asyncio.all_tasks() if t.get_name() == "hybrid_queue-worker"]
    # Hand the parked worker a claim and cancel it in the same loop iteration.
    h = await q.submit(asyncio.sleep, 0)
    worker.cancel()
    with pytest.raises(asyncio.CancelledError):
        await worker
    assert h.cancelled() or h.done()
    assert_stats_identity(q.stats())
    assert q.stats().busy_workers == 0
    assert await (await q.submit(abs, -2)) == 2
