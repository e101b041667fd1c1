"""The queue's semantics, one group per promise: priority, concurrency, retries,
cancellation, timeouts, stats, memory, futures and edge cases."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import itertools
import threading
import weakref

import pytest
from conftest import wait_until

from hybrid_queue import (
    HybridQueue,
    QueueFull,
    QueueShutDown,
    RetryPolicy,
    TaskHandle,
    TaskStatus,
    UnknownTaskError,
)
from hybrid_queue.testing import FakeClock

FAST = RetryPolicy(max_retries=3, base_delay=0.001, max_delay=0.004)


def assert_identity(s):
    assert s.submitted == s.pending + s.running + s.retrying + s.completed + s.failed + s.cancelled, s


# ------------------------------------------------------------------ priority


@pytest.mark.parametrize("kind", ["coroutine", "sync"])
async def test_higher_priority_first_fifo_within_priority(make_queue, kind):
    q = await make_queue(1, start=False)
    ran = []

    async def coro_handler(tag):
        ran.append(tag)

    def sync_handler(tag):
        ran.append(tag)

    handler = coro_handler if kind == "coroutine" else sync_handler
    priorities = [1, 5, 3, 5, 2]
    handles = [await q.submit(handler, (p, i), priority=p) for i, p in enumerate(priorities)]
    await q.start()
    await asyncio.gather(*handles)
    assert ran == [(5, 1), (5, 3), (3, 2), (2, 4), (1, 0)]


async def test_coroutine_and_sync_tasks_share_one_priority_order(make_queue):
    q = await make_queue(1, start=False)
    ran = []

    async def coro(tag):
        ran.append(tag)

    def sync(tag):
        ran.append(tag)

    handles = [
        await q.submit(sync, "s0", priority=0),
        await q.submit(coro, "c9", priority=9),
        await q.submit(sync, "s9", priority=9),
        await q.submit(coro, "c5", priority=5),
    ]
    await q.start()
    await asyncio.gather(*handles)
    assert ran == ["c9", "s9", "c5", "s0"]


async def test_retried_task_goes_behind_its_priority_peers(make_queue):
    q = await make_queue(1, retry=RetryPolicy(max_retries=1, base_delay=0), start=False)
    ran = []

    async def flaky(tag):
        ran.append(tag)
        if ran.count(tag) == 1 and tag == "a":
            raise ValueError("first attempt fails")

    handles = [await q.submit(flaky, tag) for tag in "abc"]
    await q.start()
    await asyncio.gather(*handles)
    assert ran == ["a", "b", "c", "a"]


# --------------------------------------------------------------- concurrency


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


# ------------------------------------------------------------------- retries


@pytest.mark.parametrize("max_retries", [0, 1, 3])
@pytest.mark.parametrize("kind", ["coroutine", "sync"])
async def test_always_failing_task_runs_one_plus_max_retries_attempts(make_queue, max_retries, kind):
    q = await make_queue(2, retry=FAST)
    attempts = 0

    def sync_fail():
        nonlocal attempts
        attempts += 1
        raise ValueError(f"attempt {attempts}")

    async def coro_fail():
        return sync_fail()

    h = await q.submit(coro_fail if kind == "coroutine" else sync_fail, max_retries=max_retries)
    with pytest.raises(ValueError, match=rf"^attempt {max_retries + 1}$"):
        await h
    assert attempts == 1 + max_retries
    r = await q.get_result(h.task_id)
    assert r.status is TaskStatus.FAILED and not r.success
    assert r.retry_count == max_retries
    assert isinstance(r.error, ValueError)
    assert "ValueError: attempt" in r.traceback
    assert q.stats().retries == max_retries


async def test_retry_delays_follow_capped_exponential_backoff(make_queue):
    policy = RetryPolicy(max_retries=4, base_delay=10.0, max_delay=30.0)
    clock = FakeClock()
    q = await make_queue(1, retry=policy, clock=clock)
    times = []

    async def fail():
        times.append(clock.time())
        raise ValueError("no")

    h = await q.submit(fail)
    await clock.sleep(1000)
    with pytest.raises(ValueError):
        await h
    # On the fake clock the delays are exact.
    assert [b - a for a, b in itertools.pairwise(times)] == [10.0, 20.0, 30.0, 30.0]


async def test_task_waiting_for_retry_holds_no_worker(make_queue):
    clock = FakeClock()
    q = await make_queue(1, retry=RetryPolicy(max_retries=1, base_delay=60.0), clock=clock)
    seen = []

    async def flaky():
        seen.append("flaky")
        if len(seen) == 1:
            raise ValueError("once")

    async def other():
        seen.append(("other", q.status(first.task_id)))

    first = await q.submit(flaky)
    await clock.sleep(0)  # the first attempt fails; its retry waits 60 s
    second = await q.submit(other)
    await second
    assert seen[1] == ("other", TaskStatus.RETRY_WAIT)
    await clock.sleep(60)
    await first
    assert seen == ["flaky", ("other", TaskStatus.RETRY_WAIT), "flaky"]


async def test_exception_outside_retry_on_fails_at_once(make_queue):
    q = await make_queue(1, retry=RetryPolicy(max_retries=5, base_delay=0, retry_on=(ValueError,)))
    attempts = 0

    async def fail():
        nonlocal attempts
        attempts += 1
        raise KeyError("not retryable")

    with pytest.raises(KeyError):
        await (await q.submit(fail))
    assert attempts == 1


async def test_fails_twice_then_succeeds(make_queue):
    q = await make_queue(1, retry=FAST)
    attempts = 0

    def flaky():
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise OSError("transient")
        return "ok"

    h = await q.submit(flaky)
    assert await h == "ok"
    r = await q.get_result(h.task_id)
    assert (r.status, r.retry_count, r.success) == (TaskStatus.COMPLETED, 2, True)


# -------------------------------------------------------------- cancellation


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
    assert_identity(s)


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
    assert_identity(s)


# ------------------------------------------------------------------ timeouts


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


# --------------------------------------------------------------------- stats


def test_stats_identity_holds_in_every_snapshot_under_load():
    with HybridQueue(4, retry=FAST) as q:
        stop = threading.Event()
        bad = []

        def watch():
            while not stop.is_set():
                s = q.stats()
                if s.submitted != s.pending + s.running + s.retrying + s.completed + s.failed + s.cancelled:
                    bad.append(s)

        def sometimes_fails(i):
            if i % 5 == 0:
                raise ValueError(i)
            return i

        watcher = threading.Thread(target=watch)
        watcher.start()
        futures = [q.submit_blocking(sometimes_fails, i, max_retries=1) for i in range(2000)]
        for i in range(0, 2000, 7):
            q.cancel_task(futures[i].task_id)
        concurrent.futures.wait(futures, timeout=30)
        stop.set()
        watcher.join()
        final = q.stats()
    assert not bad
    assert_identity(final)
    assert final.pending == final.running == final.retrying == 0


# -------------------------------------------------------------------- memory


async def test_finished_task_leaves_every_structure_but_the_store(make_queue):
    q = await make_queue(2)
    h = await q.submit(abs, -1)
    await h
    sched = q._sched
    assert not sched._live and not len(sched._heap)
    assert q.stats().results_stored == 1
    assert q.forget(h.task_id) is True
    assert q.forget(h.task_id) is False
    with pytest.raises(UnknownTaskError):
        q.status(h.task_id)


async def test_results_expire_by_ttl_without_anyone_reading(make_queue):
    clock = FakeClock()
    q = await make_queue(2, result_ttl=20.0, clock=clock)
    handles = [await q.submit(abs, -i) for i in range(10)]
    await asyncio.gather(*handles)
    assert q.stats().results_stored == 10
    await clock.sleep(19.9)
    assert q.stats().results_stored == 10
    await clock.sleep(0.1)
    assert q.stats().results_stored == 0
    assert q.stats().results_expired == 10
    with pytest.raises(UnknownTaskError, match=r"never submitted, or its result expired"):
        await q.get_result(handles[0].task_id)


async def test_max_results_evicts_oldest(make_queue):
    q = await make_queue(1, max_results=3)
    handles = [await q.submit(abs, -i) for i in range(5)]
    await asyncio.gather(*handles)
    s = q.stats()
    assert (s.results_stored, s.results_evicted) == (3, 2)
    with pytest.raises(UnknownTaskError):
        q.status(handles[0].task_id)
    assert (await q.get_result(handles[4].task_id)).result == 4


@pytest.mark.parametrize("kind", ["coroutine", "sync"])
async def test_failed_handle_is_freed_as_soon_as_it_is_dropped(make_queue, kind):
    # The stored result keeps the error, and the error its traceback's
    # frames (and theirs, through f_back): none of them may keep the handle,
    # which would then sit in a cycle (handle -> error -> frame -> handle).
    q = await make_queue(2)

    async def coro_fail():
        raise ValueError("boom")

    def sync_fail():
        raise ValueError("boom")

    h = await q.submit(coro_fail if kind == "coroutine" else sync_fail, max_retries=0)
    await asyncio.wait([h])
    assert isinstance(h.exception(), ValueError)
    stored = await q.get_result(h.task_id)
    ref = weakref.ref(h)
    gc.disable()
    try:
        del h
        # A pool thread may still be returning from the call that ran it.
        await wait_until(lambda: ref() is None)
    finally:
        gc.enable()
    assert isinstance(stored.error, ValueError)


async def test_traced_memory_returns_to_baseline_after_10000_tasks(make_queue, figures):
    import tracemalloc

    q = await make_queue(8, result_ttl=0.05)

    async def noop(i):
        return i

    async def run_batch():
        handles = [await q.submit(noop, i) for i in range(10_000)]
        # One by one, not gather(): uvloop may keep a spent callback handle
        # whose arguments hold gather's outer future, and with it every child,
        # for a while after the batch; that is the loop's memory, not the queue's.
        for handle in handles:
            await handle
        del handles, handle
        await wait_until(lambda: not q.stats().results_stored, bound=10)

    await run_batch()  # warm every cache and free-list once
    gc.collect()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        await run_batch()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - baseline < 64 * 1024, f"{after - baseline} bytes left after 10,000 tasks"
    figures.add("tracemalloc_bytes_left_after_10000_tasks", after - baseline)


async def test_shutdown_cancels_internal_tasks_and_owned_executor():
    q = HybridQueue(3, retry=RetryPolicy(max_retries=2, base_delay=30))

    async def fail():
        raise ValueError("retry later")

    await q.start()
    await q.submit(fail)
    handles = [await q.submit(asyncio.sleep, 0) for _ in range(5)]
    await asyncio.gather(*handles)
    await q.shutdown(cancel_pending=True)
    assert q._executor._shutdown
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("hybrid_queue")]
    assert_identity(q.stats())
    assert q.stats().cancelled == 1


async def test_executor_passed_in_is_not_shut_down():
    with concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="user") as pool:
        async with HybridQueue(2, executor=pool) as q:
            assert await (await q.submit(abs, -5)) == 5
        assert pool.submit(abs, -1).result() == 1


# ------------------------------------------------------------------- futures


async def test_unawaited_failures_make_no_noise(make_queue):
    loop = asyncio.get_running_loop()
    reported = []
    loop.set_exception_handler(lambda _loop, ctx: reported.append(ctx))
    try:
        q = await make_queue(2, retry=RetryPolicy(max_retries=0))

        async def fail():
            raise ValueError("nobody awaits me")

        for _ in range(5):
            await q.submit(fail)
            q.submit_nowait(fail)
        await wait_until(lambda: q.stats().failed == 10)
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert reported == []


async def test_handle_is_a_future_for_gather_wait_and_wait_for(make_queue):
    q = await make_queue(2)
    h = await q.submit(abs, -3)
    assert isinstance(h, asyncio.Future) and isinstance(h, TaskHandle)
    done, _ = await asyncio.wait([h])
    assert done == {h} and h.result() == 3

    async def slow():
        await asyncio.sleep(10)

    s = await q.submit(slow)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(s, 0.01)
    # wait_for cancels what it waited on: the task is cancelled in the queue.
    assert q.status(s.task_id) is TaskStatus.CANCELLED


async def test_get_result_waits_then_times_out(make_queue):
    q = await make_queue(1)
    gate = asyncio.Event()

    async def gated():
        await gate.wait()
        return "done"

    h = await q.submit(gated, task_id="job-1")
    with pytest.raises(TimeoutError, match=r"^task 'job-1' did not finish within 0\.01 s$"):
        await q.get_result("job-1", timeout=0.01)
    waiter = asyncio.create_task(q.get_result("job-1"))
    await asyncio.sleep(0)
    gate.set()
    r = await waiter
    assert (r.task_id, r.result, r.success) == ("job-1", "done", True)
    assert h.done()
    assert q._sched._live == {}


# ------------------------------------------------------------ batch submit


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


def test_task_handle_id_is_read_only():
    async def main():
        async with HybridQueue(1) as q:
            h = await q.submit(asyncio.sleep, 0)
            with pytest.raises(AttributeError):
                h.task_id = "mine"
            await h

    asyncio.run(main())


async def test_submit_many_leaves_errors_of_the_iterables_alone(make_queue):
    q = await make_queue(1)
    with pytest.raises(ValueError, match=r"^invalid literal for int\(\)"):
        await q.submit_many(abs, (int(s) for s in ["1", "x"]))
    consumed = []
    gen = (consumed.append(i) or i for i in range(3))
    with pytest.raises(TypeError, match=r"^the handler must be callable"):
        await q.submit_many(42, gen)
    assert consumed == []  # refused before the batch was read
    assert q.stats().submitted == 0


async def test_submit_many_returns_handles_in_order_and_keeps_priority_order(make_queue):
    q = await make_queue(1, start=False)
    ran = []

    async def coro(tag):
        ran.append(tag)
        return tag

    def add(x, y):
        ran.append(x + y)
        return x + y

    low = await q.submit(coro, "low", priority=-1)
    batch = await q.submit_many(coro, ["a", "b", "c"], priority=5)
    sums = await q.submit_many(add, [1, 2], [10, 20])
    assert len({h.task_id for h in (*batch, *sums, low)}) == 6
    assert [q.status(h.task_id) for h in batch] == [TaskStatus.PENDING] * 3
    await q.start()
    assert await asyncio.gather(*batch) == ["a", "b", "c"]
    assert await asyncio.gather(*sums) == [11, 22]
    await low
    assert ran == ["a", "b", "c", 11, 22, "low"]
    s = q.stats()
    assert (s.submitted, s.completed) == (6, 6)
    assert (await q.get_result(batch[1].task_id)).result == "b"


async def test_submit_many_enters_a_bounded_queue_whole_or_waits(make_queue):
    q = await make_queue(1, max_queue_size=4, start=False)
    await q.submit(abs, -1)
    await q.submit(abs, -2)
    with pytest.raises(QueueFull, match=r"^a batch of 3 tasks does not fit"):
        loop = asyncio.get_running_loop()
        q._sched.add_many([q._handle(loop, None, abs, (i,), None, False, 0, 0, None) for i in range(3)], loop)
    batch = asyncio.create_task(q.submit_many(abs, [-3, -4, -5]))
    for _ in range(5):
        await asyncio.sleep(0)
    # Room for two, not three: none of the batch went in.
    assert not batch.done()
    assert q.stats().submitted == 2
    await q.start()
    handles = await batch
    assert await asyncio.gather(*handles) == [3, 4, 5]
    assert q.stats().completed == 5


async def test_submit_many_of_nothing_is_an_empty_list(make_queue):
    q = await make_queue(1)
    assert await q.submit_many(abs, []) == []
    assert q.stats().submitted == 0


# ---------------------------------------------------------- bounded queue


async def test_submit_waits_for_room_and_submit_nowait_raises(make_queue):
    q = await make_queue(1, max_queue_size=2, start=False)
    await q.submit(abs, 1)
    await q.submit(abs, 2)
    with pytest.raises(QueueFull):
        q.submit_nowait(abs, 3)
    blocked = asyncio.create_task(q.submit(abs, 3))
    await asyncio.sleep(0.01)
    assert not blocked.done()
    await q.start()
    h = await asyncio.wait_for(blocked, 5)
    assert await h == 3


def test_submit_blocking_waits_for_room():
    q = HybridQueue(1, max_queue_size=1)
    q.submit_blocking(abs, 1)  # fills the queue before it starts
    result = []
    t = threading.Thread(target=lambda: result.append(q.submit_blocking(abs, -2)))
    t.start()
    t.join(0.05)
    assert t.is_alive()
    q.start_background()
    t.join(10)
    assert result[0].result(10) == 2
    q.shutdown_blocking()


def test_shutdown_wakes_threads_blocked_on_a_full_queue():
    q = HybridQueue(1, max_queue_size=1)
    q.submit_blocking(abs, 1)
    errors = []

    def blocked():
        try:
            q.submit_blocking(abs, 2)
        except QueueShutDown as exc:
            errors.append(exc)

    t = threading.Thread(target=blocked)
    t.start()
    t.join(0.05)
    q.shutdown_blocking()
    t.join(10)
    assert len(errors) == 1


# ---------------------------------------------------------------- shutdown


async def test_start_and_shutdown_empty_queue_is_idempotent():
    q = HybridQueue()
    await q.start()
    await q.start()
    await q.shutdown()
    await q.shutdown()
    with pytest.raises(QueueShutDown):
        await q.submit(abs, 1)


async def test_shutdown_drains_by_default(make_queue):
    q = await make_queue(2, retry=FAST)
    attempts = 0

    async def flaky(i):
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(0.001)
        if i == 0 and attempts < 3:
            raise ValueError("retry me")
        return i

    handles = [await q.submit(flaky, i) for i in range(20)]
    await q.shutdown()
    assert all(h.done() and not h.cancelled() for h in handles)
    assert [h.result() for h in handles] == list(range(20))


async def test_shutdown_cancel_pending_resolves_every_future():
    q = HybridQueue(2)
    await q.start()
    gate = asyncio.Event()

    async def gated():
        await gate.wait()
        return "ran"

    handles = [await q.submit(gated) for _ in range(10)]
    await asyncio.sleep(0.01)
    shutting = asyncio.create_task(q.shutdown(cancel_pending=True))
    await asyncio.sleep(0.01)
    gate.set()
    await shutting
    assert all(h.done() for h in handles)
    assert sum(not h.cancelled() for h in handles) == 2
    s = q.stats()
    assert (s.completed, s.cancelled) == (2, 8)
    assert_identity(s)


async def test_shutdown_timeout_drains_then_cancels_the_rest(caplog):
    q = HybridQueue(1)
    await q.start()

    async def quick():
        return 1

    async def forever():
        await asyncio.Event().wait()

    first = await q.submit(quick)
    stuck = await q.submit(forever)
    never = await q.submit(quick)
    await q.shutdown(timeout=0.05)
    assert first.result() == 1
    assert stuck.cancelled() and never.cancelled()
    assert_identity(q.stats())
    # The cancelled handler unwound at once; shutdown did not wait out its grace.
    assert not [r for r in caplog.records if "abandoned" in r.getMessage()]


async def test_shutdown_without_wait_cancels_everything(caplog):
    q = HybridQueue(1)
    await q.start()
    started = asyncio.Event()

    async def forever():
        started.set()
        await asyncio.Event().wait()

    a = await q.submit(forever)
    b = await q.submit(forever)
    await started.wait()
    await q.shutdown(wait=False)
    assert a.cancelled() and b.cancelled()
    assert not [r for r in caplog.records if "abandoned" in r.getMessage()]


def test_sync_program_context_manager():
    with HybridQueue(3) as q:
        futures = [q.submit_blocking(pow, i, 2, priority=i) for i in range(50)]
        assert [f.result(10) for f in futures] == [i * i for i in range(50)]
    with pytest.raises(QueueShutDown):
        q.submit_blocking(abs, 1)


def test_submit_blocking_before_start_then_shutdown_without_start_cancels():
    q = HybridQueue(1)
    f = q.submit_blocking(abs, -1)
    q.shutdown_blocking()
    assert f.cancelled()
    assert_identity(q.stats())


def test_keyword_argument_named_like_an_option_via_partial():
    import functools

    def handler(*, priority):
        return priority

    with HybridQueue(1) as q:
        f = q.submit_blocking(functools.partial(handler, priority="handler's"), priority=5)
        assert f.result(10) == "handler's"


async def test_handler_exception_recorded_and_worker_survives(make_queue):
    q = await make_queue(1, retry=RetryPolicy(max_retries=0))

    class Custom(BaseException):
        pass

    async def boom():
        raise Custom("not an Exception")

    def sync_boom():
        raise KeyboardInterrupt

    h1 = await q.submit(boom)
    h2 = await q.submit(sync_boom)
    h3 = await q.submit(abs, -9)
    assert await h3 == 9
    r1 = await q.get_result(h1.task_id)
    r2 = await q.get_result(h2.task_id)
    assert isinstance(r1.error, Custom) and "Custom: not an Exception" in r1.traceback
    assert isinstance(r2.error, KeyboardInterrupt)


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
    assert_identity(s)


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
    assert_identity(q.stats())
    assert q.stats().busy_workers == 0
    assert await (await q.submit(abs, -2)) == 2


def _square(x):
    return x * x


def _fail_once(path):
    import os

    if not os.path.exists(path):
        open(path, "w").close()
        raise OSError("first attempt fails")
    return "second attempt"


async def test_process_pool_executor_runs_sync_handlers(tmp_path):
    with concurrent.futures.ProcessPoolExecutor(2) as pool:
        async with HybridQueue(2, executor=pool, retry=FAST) as q:
            handles = [await q.submit(_square, i, priority=i % 3) for i in range(20)]
            assert sorted(await asyncio.gather(*handles)) == sorted(i * i for i in range(20))
            h = await q.submit(_fail_once, str(tmp_path / "marker"))
            assert await h == "second attempt"
            assert (await q.get_result(h.task_id)).retry_count == 1
            bad = await q.submit(lambda: 1, max_retries=0)  # lambdas do not pickle
            with pytest.raises(Exception, match="pickle"):
                await bad


async def test_generated_ids_skip_ids_chosen_by_callers(make_queue):
    q = await make_queue(1, start=False)
    mine = await q.submit(abs, 1, task_id=2)
    also_mine = await q.submit(abs, 1, task_id=3.0)  # equal to the int 3
    generated = [(await q.submit(abs, 1)).task_id for _ in range(3)]
    assert generated == [1, 4, 5]
    assert {mine.task_id, also_mine.task_id}.isdisjoint(generated)


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


def test_submit_from_a_second_loop_on_the_queue_loop_thread_is_refused():
    # The queue's loop is not running; another loop runs on the same thread.
    # Only the loop that is running may be taken for the caller's.
    first = asyncio.new_event_loop()
    q = HybridQueue(1)
    first.run_until_complete(q.start())

    async def from_second_loop():
        with pytest.raises(RuntimeError, match=r"^this HybridQueue is bound to another event loop"):
            await q.submit(asyncio.sleep, 0)
        with pytest.raises(RuntimeError, match=r"^this HybridQueue is bound to another event loop"):
            await q.submit_many(asyncio.sleep, [0])

    try:
        asyncio.run(from_second_loop())
        assert q.stats().submitted == 0
    finally:
        first.run_until_complete(q.shutdown())
        first.close()
