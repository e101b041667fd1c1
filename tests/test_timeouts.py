"""Timeouts: an attempt that runs past its timeout fails with ``TimeoutError``, and the failure may be retried.

- A coroutine attempt is cancelled at its timeout, even one that swallows
  the cancellation or never returns.
- A sync attempt's thread cannot be stopped: the task fails at the timeout
  and the thread is abandoned (the slot waits for it). test_threads.py has
  sync handlers that notice their timeout and stop.
- A timed-out attempt that is slow to unwind still gets its retry.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from _helpers import FAST, NO_RETRY, SAFETY, assert_nothing_lost, shut_down
from conftest import wait_until

from hybrid_queue import RetryPolicy, TaskStatus


async def test_coroutine_attempt_timeout_is_a_retried_failure(make_queue):
    q = await make_queue(1, retry=FAST)
    attempts = 0

    async def hang():
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(10)

    h = await q.submit(hang, timeout=0.01, max_retries=2)
    with pytest.raises(TimeoutError):
        await h
    assert attempts == 3
    r = await q.get_result(h.task_id)
    assert r.retry_count == 2 and isinstance(r.error, TimeoutError)


async def test_sync_attempt_timeout_fails_task_and_abandons_thread(make_queue):
    q = await make_queue(2, retry=FAST)
    release = threading.Event()

    def stuck():
        release.wait(10)
        return "too late"

    h = await q.submit(stuck, timeout=0.01, max_retries=0)
    with pytest.raises(TimeoutError, match="exceeded its timeout"):
        await h
    assert q.stats().busy_workers == 1  # the abandoned thread still holds its slot
    release.set()
    await q.shutdown()
    r = await q.get_result(h.task_id)
    assert r.status is TaskStatus.FAILED
    assert q.stats().busy_workers == 0


RETRY_ONCE = RetryPolicy(max_retries=1, base_delay=0.001, max_delay=0.002)


@pytest.mark.faults
async def test_coroutine_never_returning_fails_by_attempt_timeout(make_queue):
    """A coroutine handler that awaits forever, with ``timeout=``.

    Each attempt is cancelled at its deadline and fails with TimeoutError;
    the task is retried like any failure (one retry here: two attempts) and
    ends FAILED. The worker goes on with the next task.
    """
    q = await make_queue(1, retry=RETRY_ONCE)
    attempts = 0

    async def forever():
        nonlocal attempts
        attempts += 1
        await asyncio.Event().wait()

    h = await q.submit(forever, timeout=0.02)
    nxt = await q.submit(abs, -3)
    async with asyncio.timeout(5):
        with pytest.raises(TimeoutError):
            await h
        assert await nxt == 3
    r = await q.get_result(h.task_id)
    assert (r.status, r.retry_count, attempts) == (TaskStatus.FAILED, 1, 2)
    assert isinstance(r.error, TimeoutError)
    await wait_until(lambda: q.stats().busy_workers == 0)
    assert_nothing_lost(q, [h, nxt])
    await shut_down(q)


@pytest.mark.faults
async def test_sync_never_returning_fails_by_attempt_timeout(make_queue):
    """A sync handler blocked on an Event, with ``timeout=``.

    The thread cannot be interrupted: at the deadline the attempt fails with
    TimeoutError (its message names the timeout), the task ends FAILED, and the abandoned thread keeps its worker slot
    (``busy_workers``) until the handler returns; its late result is
    discarded. The other worker keeps running tasks meanwhile, and shutdown
    finishes once the handler is released.
    """
    q = await make_queue(2, retry=NO_RETRY)
    release = threading.Event()

    def blocked():
        release.wait(SAFETY)
        return "too late"

    try:
        h = await q.submit(blocked, timeout=0.02)
        async with asyncio.timeout(5):
            with pytest.raises(TimeoutError, match=r"exceeded its timeout of 0\.02 s"):
                await h
        s = q.stats()
        assert (s.failed, s.running, s.busy_workers) == (1, 0, 1)
        others = [await q.submit(abs, -i) for i in range(5)]
        async with asyncio.timeout(5):
            assert await asyncio.gather(*others) == list(range(5))
    finally:
        release.set()
    await wait_until(lambda: q.stats().busy_workers == 0)
    r = await q.get_result(h.task_id)
    assert r.status is TaskStatus.FAILED and r.result is None
    assert_nothing_lost(q, [h, *others])
    await shut_down(q)


@pytest.mark.faults
@pytest.mark.parametrize("then", ["returns", "keeps_running"])
async def test_coroutine_swallowing_its_attempt_timeout_still_times_out(make_queue, then):
    """A coroutine handler that catches the CancelledError of its own attempt timeout.

    ``timeout=`` bounds each attempt (README, point 5), so the deadline
    decides, not the handler: the attempt fails with TimeoutError at the
    deadline (and is retried like any failure; here there are no retries),
    exactly as for a sync handler that cannot be interrupted. Whatever the
    handler returns after swallowing the cancel is discarded; a handler that
    keeps running holds its slot until it returns, then the worker goes on.
    """
    q = await make_queue(1, retry=NO_RETRY)
    swallowed = asyncio.Event()
    gate = asyncio.Event()

    async def swallower():
        try:
            await asyncio.sleep(SAFETY)
        except asyncio.CancelledError:
            swallowed.set()
        if then == "keeps_running":
            await gate.wait()
        return "after the deadline"

    async def following():
        return "next"

    h = await q.submit(swallower, timeout=0.05)
    nxt = await q.submit(following)
    try:
        async with asyncio.timeout(5):
            await swallowed.wait()
        await asyncio.wait({h}, timeout=1.0)
        assert h.done(), "the attempt outlived its timeout: the handler swallowed the cancel and the task kept RUNNING"
        assert not h.cancelled()
        assert isinstance(h.exception(), TimeoutError)
    finally:
        gate.set()
    async with asyncio.timeout(5):
        assert await nxt == "next"
    r = await q.get_result(h.task_id)
    assert r.status is TaskStatus.FAILED and isinstance(r.error, TimeoutError) and r.result is None
    await wait_until(lambda: q.stats().busy_workers == 0)
    assert_nothing_lost(q, [h, nxt])
    await shut_down(q)


@pytest.mark.races
async def test_slow_unwinding_timed_out_attempt_does_not_disarm_its_retry(make_queue):
    q = await make_queue(2, retry=RetryPolicy(max_retries=1, base_delay=0.0))
    attempts = 0

    async def hangs_and_cleans_up_slowly():
        nonlocal attempts
        attempts += 1
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)  # asynchronous clean-up, longer than one loop step
            raise

    h = await q.submit(hangs_and_cleans_up_slowly, timeout=0.05)
    async with asyncio.timeout(5):
        with pytest.raises(TimeoutError):
            await h
    assert attempts == 2
    # Both attempts were cancelled at their deadlines and have unwound.
    await wait_until(lambda: q.stats().busy_workers == 0)
    workers = [t for t in asyncio.all_tasks() if t.get_name() == "hybrid_queue-worker"]
    assert all(t.cancelling() == 0 for t in workers)
