"""Regression tests for races and re-entrancy found in review, each named after what went wrong."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading

import pytest
from conftest import wait_until

from hybrid_queue import HybridQueue, QueueShutDown, RetryPolicy, TaskStatus
from hybrid_queue import _scheduler as scheduler_module


def assert_identity(q: HybridQueue) -> None:
    s = q.stats()
    assert s.submitted == s.pending + s.running + s.retrying + s.completed + s.failed + s.cancelled, s


async def test_log_filter_calling_the_queue_during_a_retry_does_not_deadlock(make_queue):
    q = await make_queue(1, retry=RetryPolicy(max_retries=1, base_delay=0.001))
    seen = []

    class AddsStats(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            seen.append(q.stats().retrying)  # takes the scheduler lock
            return True

    log_filter = AddsStats()
    logger = logging.getLogger("hybrid_queue")
    logger.addFilter(log_filter)
    try:

        def flaky():
            raise ValueError("boom")

        h = await q.submit(flaky)
        async with asyncio.timeout(5):
            with pytest.raises(ValueError):
                await h
    finally:
        logger.removeFilter(log_filter)
    assert seen  # the filter ran (retry warning and final failure), outside the lock


async def test_pool_shut_down_with_cancel_futures_while_the_heap_is_not_empty_does_not_deadlock(make_queue):
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="user-pool") as pool:
        q = await make_queue(2, executor=pool, retry=RetryPolicy(max_retries=0))
        entered = threading.Event()
        release = threading.Event()

        def occupies():
            entered.set()
            release.wait(10)
            return "first"

        first = await q.submit(occupies)
        queued = await q.submit(abs, -1)  # claimed, waits inside the pool
        waiting = await q.submit(abs, -2)  # waits in the heap
        await asyncio.to_thread(entered.wait, 5)
        # Cancelling the queued chain runs our callback inside pool.shutdown();
        # starting the next task from there would take the pool's lock again.
        await asyncio.wait_for(asyncio.to_thread(pool.shutdown, wait=False, cancel_futures=True), 5)
        release.set()
        assert await asyncio.wait_for(first, 5) == "first"
        for h in (queued, waiting):
            with pytest.raises(RuntimeError, match="executor"):
                await asyncio.wait_for(h, 5)
        await wait_until(lambda: q.stats().busy_workers == 0)
        assert_identity(q)


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


async def test_shutdown_cancelled_by_its_caller_still_completes_and_later_calls_wait_for_it():
    q = HybridQueue(2)
    await q.start()
    release = asyncio.Event()

    async def gated():
        await release.wait()
        return "done"

    handles = [await q.submit(gated) for _ in range(2)]
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.02):
            await q.shutdown()
    release.set()
    await asyncio.wait_for(q.shutdown(), 5)
    assert [h.result() for h in handles] == ["done", "done"]
    assert q._executor._shutdown
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("hybrid_queue")]


async def test_sync_handler_raising_stop_iteration_settles_its_handle(make_queue):
    q = await make_queue(1, retry=RetryPolicy(max_retries=0))
    h = await q.submit(next, iter(()))
    with pytest.raises(RuntimeError, match="StopIteration") as info:
        await asyncio.wait_for(h, 5)
    assert isinstance(info.value.__cause__, StopIteration)
    r = await q.get_result(h.task_id)
    assert r.status is TaskStatus.FAILED and isinstance(r.error, StopIteration)


class _RejectsKeywords(concurrent.futures.ThreadPoolExecutor):
    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        raise ValueError("this executor takes no keyword arguments")


async def test_executor_raising_on_submit_fails_the_task_and_frees_the_slot(make_queue):
    with _RejectsKeywords(1) as pool:
        q = await make_queue(1, executor=pool)
        h = await q.submit(abs, -1)
        with pytest.raises(RuntimeError, match="refused"):
            await asyncio.wait_for(h, 5)
        assert q.stats().busy_workers == 0
        assert await (await q.submit(asyncio.sleep, 0, "coroutines still run")) == "coroutines still run"


async def test_broken_pool_fails_the_task_and_frees_the_slot(make_queue):
    def broken_initializer():
        raise OSError("no device")

    with concurrent.futures.ThreadPoolExecutor(1, initializer=broken_initializer) as pool:
        q = await make_queue(1, executor=pool)
        h = await q.submit(abs, -1)
        with pytest.raises(RuntimeError, match="broke"):
            await asyncio.wait_for(h, 5)
        await wait_until(lambda: q.stats().busy_workers == 0)
        assert_identity(q)


def test_shutdown_blocking_twice_is_a_no_op():
    with HybridQueue(1) as q:
        assert q.submit_blocking(abs, -1).result(5) == 1
    q.shutdown_blocking()  # the context manager already did; the loop is gone


def test_queue_whose_loop_ended_without_shutdown_refuses_new_tasks():
    q = HybridQueue(1)

    async def use_and_forget() -> None:
        await q.start()
        await (await q.submit(asyncio.sleep, 0))

    asyncio.run(use_and_forget())
    with pytest.raises(QueueShutDown, match="event loop is closed"):
        q.submit_blocking(abs, -1)
    assert_identity(q)
    # The loop is gone: shutdown_blocking releases the owned pool itself.
    pool = q._executor
    q.shutdown_blocking()
    assert pool is not None and pool._shutdown  # type: ignore[attr-defined]


async def test_class_with_async_call_is_a_sync_handler(make_queue):
    class AsyncCallable:
        async def __call__(self) -> int:
            return 1

    q = await make_queue(1)
    instance = await (await q.submit(AsyncCallable))
    assert isinstance(instance, AsyncCallable)
    assert await (await q.submit(instance)) == 1  # an instance with async __call__ is a coroutine handler


class _YieldingTime:
    """Stands in for the scheduler module's ``time``: records the GIL yields, runs ``at_yield(n)`` at each."""

    def __init__(self, at_yield):
        self.yielders: list[int] = []  # the thread of each yield
        self._at_yield = at_yield

    @property
    def yields(self) -> int:
        return len(self.yielders)

    def sleep(self, seconds: float) -> None:
        assert seconds == 0
        self.yielders.append(threading.get_ident())
        self._at_yield(self.yields)


def test_thread_finding_the_scheduler_lock_held_yields_until_it_can_take_it_instead_of_blocking(monkeypatch):
    # Blocking on the lock made busy threads trade it through the kernel at
    # every acquisition (a convoy); a thread that finds it held now yields
    # the GIL until the holder has released it.
    lock = threading.Lock()
    lock.acquire()  # the holder

    def holder_releases_at_third_yield(n: int) -> None:
        if n == 3:
            lock.release()

    fake = _YieldingTime(holder_releases_at_third_yield)
    monkeypatch.setattr(scheduler_module, "time", fake)
    scheduler_module._acquire_yielding(lock)
    assert fake.yields == 3
    assert lock.locked()  # the caller's now
    lock.release()


def test_thread_finding_the_scheduler_lock_held_for_long_blocks_after_its_yields(monkeypatch):
    # A holder that does not wait for the GIL (descheduled, say): after
    # _YIELDS tries the thread blocks on the lock.
    monkeypatch.setattr(scheduler_module, "_YIELDS", 2)
    lock = threading.Lock()
    lock.acquire()
    yielded_all = threading.Event()
    fake = _YieldingTime(lambda n: yielded_all.set() if n == 2 else None)
    monkeypatch.setattr(scheduler_module, "time", fake)

    def holder() -> None:
        yielded_all.wait(10)
        lock.release()

    releaser = threading.Thread(target=holder)
    releaser.start()
    scheduler_module._acquire_yielding(lock)  # blocks until holder() releases
    releaser.join(10)
    assert fake.yields == 2
    assert lock.locked()
    lock.release()


def test_main_thread_finding_the_scheduler_lock_held_waits_for_it_and_leaves_the_taking_to_with(monkeypatch):
    # The main thread runs signal handlers: taking the lock by hand, it could
    # be interrupted before the block that releases it. It only waits.
    assert threading.current_thread() is threading.main_thread()
    sched = HybridQueue(1)._sched
    lock = sched.lock
    lock.acquire()
    fake = _YieldingTime(lambda n: lock.release() if n == 2 else None)
    monkeypatch.setattr(scheduler_module, "time", fake)
    guard = sched._guard()
    assert guard is lock  # for the caller's ``with lock``
    assert not lock.locked()
    assert fake.yields == 2


def _release_at_first_yield(lock: threading.Lock) -> tuple[_YieldingTime, list[bool]]:
    released: list[bool] = []

    def at_yield(n: int) -> None:
        if n == 1:
            released.append(True)
            lock.release()

    return _YieldingTime(at_yield), released


def test_submit_blocking_that_finds_the_scheduler_lock_held_yields_instead_of_blocking(monkeypatch):
    q = HybridQueue(1)
    q.start_background()
    lock = q._sched.lock
    fake, released = _release_at_first_yield(lock)
    lock.acquire()  # as if another thread were in the middle of a change
    monkeypatch.setattr(scheduler_module, "time", fake)
    futures: list[concurrent.futures.Future[int]] = []
    submitter = threading.Thread(target=lambda: futures.append(q.submit_blocking(abs, -1)))
    try:
        submitter.start()
        # Blocked on the held lock, it would never get past add().
        submitter.join(10)
        assert not submitter.is_alive()
        assert fake.yielders[0] == submitter.ident
        assert futures[0].result(timeout=10) == 1
    finally:
        if not released:
            lock.release()
        submitter.join(10)
        q.shutdown_blocking()


def test_pool_thread_finishing_a_task_while_the_scheduler_lock_is_held_yields_instead_of_blocking(monkeypatch):
    q = HybridQueue(1)
    q.start_background()
    lock = q._sched.lock
    fake, released = _release_at_first_yield(lock)
    entered, go = threading.Event(), threading.Event()
    pool_thread: list[int] = []

    def handler() -> str:
        pool_thread.append(threading.get_ident())
        entered.set()
        go.wait(10)
        return "done"

    held = False
    try:
        future = q.submit_blocking(handler)
        assert entered.wait(10)
        lock.acquire()  # held while the handler returns and its thread reports
        held = True
        monkeypatch.setattr(scheduler_module, "time", fake)
        go.set()
        # Blocked on the held lock, the pool thread would never settle the future.
        assert future.result(timeout=10) == "done"
        assert fake.yielders[0] == pool_thread[0]
    finally:
        go.set()
        if held and not released:
            lock.release()
        monkeypatch.undo()
        q.shutdown_blocking()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_child_forked_from_another_thread_knows_its_main_thread():
    # That thread is the child's main thread, and runs its signal handlers:
    # it must take the scheduler lock the main thread's way.
    def fork_and_report(result: list[int]) -> None:
        pid = os.fork()
        if pid == 0:  # the child: one thread, this one
            ok = scheduler_module._MAIN_THREAD == threading.main_thread().ident == threading.get_ident()
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        result.append(os.waitstatus_to_exitcode(status))

    result: list[int] = []
    forker = threading.Thread(target=fork_and_report, args=(result,))
    forker.start()
    forker.join(30)
    assert result == [0]
    assert scheduler_module._MAIN_THREAD == threading.main_thread().ident  # the parent's is unchanged
