"""Faults a handler (or its executor) can inflict on the queue, one test per fault.

Every test checks the same three things besides its own: no task is lost
(every handle and future ends done), the stats identity ``submitted ==
pending + running + retrying + completed + failed + cancelled`` holds, and
shutdown finishes: it is bounded by ``asyncio.timeout`` so a wedge fails the
test instead of hanging it. Each docstring states what the queue does for its
fault; that is the contract the test holds the queue to.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from hybrid_queue import HybridQueue, QueueShutDown, RetryPolicy, TaskStatus

NO_RETRY = RetryPolicy(max_retries=0)
FAST = RetryPolicy(max_retries=1, base_delay=0.001, max_delay=0.002)
HUGE = 50 * 2**20  # 50 MB
# Every blocking wait inside a handler has this bound, so that a test failing
# half-way can never leave a pool thread blocked for good.
SAFETY = 10.0


def assert_identity(q: HybridQueue) -> None:
    s = q.stats()
    assert s.submitted == s.pending + s.running + s.retrying + s.completed + s.failed + s.cancelled, s


def assert_nothing_lost(
    q: HybridQueue, futures: Iterable[asyncio.Future[Any] | concurrent.futures.Future[Any]]
) -> None:
    """Every future is done, and no task is left anywhere but in a terminal count."""
    futures = list(futures)
    assert all(f.done() for f in futures), [f for f in futures if not f.done()]
    s = q.stats()
    assert (s.pending, s.running, s.retrying) == (0, 0, 0), s
    assert s.completed + s.failed + s.cancelled == s.submitted, s
    assert_identity(q)


async def shut_down(q: HybridQueue, bound: float = 5.0, **kwargs: Any) -> None:
    """``q.shutdown(**kwargs)``; a wedge fails the test after ``bound`` seconds."""
    async with asyncio.timeout(bound):
        await q.shutdown(**kwargs)
    assert_identity(q)


async def wait_until(predicate: Callable[[], bool], bound: float = 5.0) -> None:
    """Poll ``predicate`` (a stats check: stats have no event to wait on) for at most ``bound`` seconds."""
    async with asyncio.timeout(bound):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.002)


def queue_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("hybrid_queue")]


# ------------------------------------------------- BaseException from handlers


class _CustomBaseError(BaseException):
    """A BaseException that is neither an Exception nor one of the built-in ones."""


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit, _CustomBaseError])
@pytest.mark.parametrize("kind", ["coroutine", "sync"])
async def test_base_exception_from_handler_fails_task_and_worker_survives(make_queue, kind, exc_type):
    """A handler raising KeyboardInterrupt, SystemExit or a custom BaseException.

    The queue records it as the attempt's failure: the task ends FAILED at
    once (not retried: none of these is in the default ``retry_on``, even
    with retries left), its error is that exception, its handle raises it,
    and the same worker (the same worker coroutine, or the same pool thread)
    goes on to the next task. Nothing reaches the event loop.
    """
    q = await make_queue(1, retry=RetryPolicy(max_retries=2, base_delay=0))
    ran_on = []

    def where() -> object:
        return asyncio.current_task() if kind == "coroutine" else threading.current_thread()

    async def coro_raises():
        ran_on.append(where())
        raise exc_type("from a coroutine handler")

    def sync_raises():
        ran_on.append(where())
        raise exc_type("from a sync handler")

    async def coro_next():
        ran_on.append(where())
        await asyncio.sleep(0)  # would raise if a cancel request leaked into this worker
        return "next"

    def sync_next():
        ran_on.append(where())
        return "next"

    failing = await q.submit(coro_raises if kind == "coroutine" else sync_raises)
    following = await q.submit(coro_next if kind == "coroutine" else sync_next)
    async with asyncio.timeout(5):
        assert await following == "next"
        with pytest.raises(exc_type, match=r"^from a"):
            await failing
    r = await q.get_result(failing.task_id)
    assert r.status is TaskStatus.FAILED
    assert type(r.error) is exc_type and r.retry_count == 0
    assert exc_type.__name__ in r.traceback
    assert ran_on[0] is ran_on[1]
    if kind == "coroutine":
        assert not ran_on[0].done()  # the worker coroutine is alive and parked
    s = q.stats()
    assert (s.failed, s.completed, s.retries, s.busy_workers) == (1, 1, 0, 0)
    assert_nothing_lost(q, [failing, following])
    await shut_down(q)


# ------------------------------------------- coroutines swallowing CancelledError


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


async def test_coroutine_swallowing_cancel_at_shutdown_timeout(make_queue, caplog):
    """A coroutine handler that catches the CancelledError sent by ``shutdown(timeout=...)``.

    When the drain time is up, shutdown cancels everything left: the running
    task ends CANCELLED (its return value discarded), the waiting one is
    cancelled without running, and since the handler does return, its
    worker exits at once: shutdown does not wait out the unwind grace and
    logs no "abandoned" warning.
    """
    q = await make_queue(1)
    started = asyncio.Event()

    async def swallower():
        started.set()
        try:
            await asyncio.sleep(SAFETY)
        except asyncio.CancelledError:
            pass
        return "discarded"

    h = await q.submit(swallower)
    waiting = await q.submit(abs, -1)
    await started.wait()
    t0 = time.monotonic()
    await shut_down(q, timeout=0.05)
    assert time.monotonic() - t0 < 1.0  # nowhere near the default unwind_grace (5 s)
    assert h.cancelled() and waiting.cancelled()
    assert q.stats().cancelled == 2 and q.stats().busy_workers == 0
    assert not queue_tasks()
    assert not [r for r in caplog.records if "abandoned" in r.getMessage()]
    assert_nothing_lost(q, [h, waiting])


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


# ---------------------------------------------------------- handlers that never return


async def test_coroutine_never_returning_fails_by_attempt_timeout(make_queue):
    """A coroutine handler that awaits forever, with ``timeout=``.

    Each attempt is cancelled at its deadline and fails with TimeoutError;
    the task is retried like any failure (one retry here: two attempts) and
    ends FAILED. The worker goes on with the next task.
    """
    q = await make_queue(1, retry=FAST)
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


async def test_never_returning_handlers_at_shutdown_timeout(make_queue):
    """A coroutine handler awaiting forever and a sync one blocked on an Event, at ``shutdown(timeout=...)``.

    When the drain time is up both running tasks are CANCELLED and the
    waiting ones cancelled without running; the coroutine is interrupted,
    the thread is abandoned (its slot stays busy until it returns), and
    shutdown returns without waiting for it: the owned pool is shut down
    without joining it. Once the test releases the thread, the slot frees
    and the thread exits.
    """
    q = await make_queue(2)
    release = threading.Event()
    in_thread = threading.Event()

    async def forever():
        await asyncio.Event().wait()

    def blocked():
        in_thread.set()
        release.wait(SAFETY)
        return "discarded"

    try:
        running = [await q.submit(forever), await q.submit(blocked)]
        waiting = [await q.submit(forever), await q.submit(blocked), await q.submit(abs, 1)]
        await asyncio.to_thread(in_thread.wait, 5)
        t0 = time.monotonic()
        await shut_down(q, timeout=0.05)
        assert time.monotonic() - t0 < 2.0
        assert all(f.cancelled() for f in running + waiting)
        assert q.stats().cancelled == 5
        assert q.stats().busy_workers == 1  # the abandoned thread
        assert_nothing_lost(q, running + waiting)
    finally:
        release.set()
    await wait_until(lambda: q.stats().busy_workers == 0)
    assert_identity(q)


# ------------------------------------------------------- a blocked event loop


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


# ------------------------------------------------ un-picklable and huge results


async def test_unpicklable_results_with_the_default_thread_pool(make_queue):
    """Handlers (both kinds) returning a lambda or a lock, on the default thread pool.

    Nothing is pickled in-process: the handle's value is the very object the
    handler returned.
    """
    q = await make_queue(2)
    lock = threading.Lock()

    def lam():
        return 1

    def sync_lock():
        return lock

    def sync_lambda():
        return lam

    async def coro_lock():
        return lock

    async def coro_lambda():
        return lam

    handles = [await q.submit(fn) for fn in (sync_lock, sync_lambda, coro_lock, coro_lambda)]
    async with asyncio.timeout(5):
        assert await asyncio.gather(*handles) == [lock, lam, lock, lam]
    assert all(r is o for r, o in zip([h.result() for h in handles], [lock, lam, lock, lam], strict=True))
    assert_nothing_lost(q, handles)
    await shut_down(q)


class _Holder:
    """Holds a huge value; a weakref to it tells when the value was released."""

    def __init__(self, size: int) -> None:
        self.data = bytes(size)


@pytest.mark.parametrize("kind", ["sync", "coroutine"])
async def test_huge_result_released_once_its_result_expires(make_queue, kind):
    """A handler returning 50 MB (inside an object we hold a weakref to), on the default thread pool.

    It just works, and once the caller dropped the handle and the result
    expired (``result_ttl``), the queue keeps no reference to it: README,
    point 7. The test runs one more task of the other kind meanwhile, so that
    only the queue's idle state can hold the value.
    """
    q = await make_queue(1, result_ttl=0.05)
    refs: list[weakref.ref[_Holder]] = []

    def sync_huge():
        holder = _Holder(HUGE)
        refs.append(weakref.ref(holder))
        return holder

    async def coro_huge():
        return sync_huge()

    h = await q.submit(sync_huge if kind == "sync" else coro_huge)
    async with asyncio.timeout(5):
        assert len((await h).data) == HUGE
    tid = h.task_id
    del h
    other_kind = abs if kind == "coroutine" else asyncio.sleep
    async with asyncio.timeout(5):
        await (await q.submit(other_kind, 0))
    await wait_until(lambda: q.stats().results_stored == 0)
    with pytest.raises(KeyError):
        q.status(tid)
    gc.collect()
    assert refs[0]() is None, "the 50 MB value is still referenced after its result expired"
    assert_identity(q)
    await shut_down(q)


def _returns_lambda():
    return lambda: 1


def _returns_lock():
    return threading.Lock()


def _returns_bytes(size):
    return bytes(size)


def _square(x):
    return x * x


async def test_process_pool_unpicklable_result_fails_that_task_only(make_queue):
    """Sync handlers on a ``ProcessPoolExecutor(1)`` returning a lambda, a lock, and 50 MB.

    A result that cannot be pickled back fails its task (FAILED) with the
    pool's pickling error; the huge result crosses and is returned whole;
    the pool and the queue go on with the next task.
    """
    with concurrent.futures.ProcessPoolExecutor(1) as pool:
        q = await make_queue(1, executor=pool, retry=NO_RETRY)
        bad = [await q.submit(_returns_lambda), await q.submit(_returns_lock)]
        huge = await q.submit(_returns_bytes, HUGE)
        fine = await q.submit(_square, 7)
        async with asyncio.timeout(20):
            for h in bad:
                with pytest.raises(Exception, match="pickle"):
                    await h
            assert len(await huge) == HUGE
            assert await fine == 49
        for h in bad:
            r = await q.get_result(h.task_id)
            assert r.status is TaskStatus.FAILED and "pickle" in str(r.error)
        s = q.stats()
        assert (s.failed, s.completed, s.busy_workers) == (2, 2, 0)
        assert_nothing_lost(q, [*bad, huge, fine])
        await shut_down(q, bound=10.0)


# ---------------------------------------------------------- results with __del__


async def _flush(q: HybridQueue) -> None:
    """Run one sync task to its end on a one-worker queue, then yield once.

    Afterwards neither the pool thread (its earlier chain has returned) nor
    the step that awaited a handle (it has yielded) holds a finished task:
    the queue's own structures are the only holders left.
    """
    async with asyncio.timeout(5):
        await (await q.submit(abs, -1))
    await asyncio.sleep(0)


class _RaisesOnDel:
    def __init__(self, tag: str) -> None:
        self.tag = tag

    def __del__(self) -> None:
        raise RuntimeError(f"raised in __del__ of {self.tag}")


async def test_result_raising_in_del_does_not_crash_the_queue(make_queue, monkeypatch):
    """A handler whose result object raises inside ``__del__``.

    The exception cannot propagate from a finalizer: Python reports it to
    ``sys.unraisablehook`` ("Exception ignored in ..."), once per object,
    wherever the queue drops the result (here: by ``forget``, and by the
    expiry timer on the loop). The queue is unharmed: the expiry timer keeps
    running and later tasks run.
    """
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)

    def messages() -> set[str]:
        assert all(u.exc_type is RuntimeError for u in unraisable), unraisable
        return {str(u.exc_value) for u in unraisable}

    q = await make_queue(1, result_ttl=0.1)
    expiring = await q.submit(_RaisesOnDel, "expiring")
    forgotten = await q.submit(_RaisesOnDel, "forgotten")
    async with asyncio.timeout(5):
        await expiring
        await forgotten
    forgotten_id = forgotten.task_id
    del expiring, forgotten
    await _flush(q)
    assert q.forget(forgotten_id)
    assert "raised in __del__ of forgotten" in messages()
    await wait_until(lambda: q.stats().results_stored == 0)
    gc.collect()
    assert messages() == {"raised in __del__ of forgotten", "raised in __del__ of expiring"}
    # Still alive: more tasks run and their results expire too.
    later = [await q.submit(_RaisesOnDel, f"later {i}") for i in range(3)] + [await q.submit(abs, -2)]
    async with asyncio.timeout(5):
        await asyncio.wait(later)
    assert later[-1].result() == 2
    del later
    await wait_until(lambda: q.stats().results_stored == 0)
    gc.collect()
    assert len(unraisable) == 5
    assert {f"raised in __del__ of later {i}" for i in range(3)} <= messages()
    s = q.stats()
    assert (s.completed, s.results_expired) == (7, 6)
    assert_identity(q)
    await shut_down(q)


class _ProbesQueueOnDel:
    """On finalization, calls the queue (``probe``) from another thread, as a finalizer might."""

    def __init__(self, probe: Callable[[], object], record: list[tuple[threading.Thread, bool]]) -> None:
        self.probe = probe
        self.record = record

    def __del__(self) -> None:
        # From a helper thread, so that a finalizer run under the queue's
        # lock shows up as a blocked call instead of deadlocking the test.
        t = threading.Thread(target=self.probe, name="finalizer-probe")
        t.start()
        t.join(1.0)
        self.record.append((t, not t.is_alive()))


@pytest.mark.parametrize("released_by", ["expiry", "forget", "eviction", "handler_arguments"])
async def test_objects_are_finalized_outside_the_queue_lock(make_queue, released_by):
    """A result or argument whose ``__del__`` uses the queue (here ``q.stats()``).

    The queue runs no user code under its lock (STYLE, section 2), and a
    finalizer is user code: when the queue lets go of a result (expiry,
    ``forget``, eviction by ``max_results``) or of a handler's arguments
    (when the task ends), the last reference must be dropped after the lock
    is released. Otherwise such a ``__del__`` that calls the queue on the
    same thread deadlocks it for good.
    """
    record: list[tuple[threading.Thread, bool]] = []
    q = await make_queue(
        1, result_ttl=0.2 if released_by == "expiry" else 300.0, max_results=1 if released_by == "eviction" else 10
    )

    def returns_probe():
        return _ProbesQueueOnDel(q.stats, record)

    gate = threading.Event()

    def takes_argument(arg):
        gate.wait(SAFETY)  # until the test holds no reference to the argument any more

    try:
        if released_by == "handler_arguments":
            h = await q.submit(takes_argument, _ProbesQueueOnDel(q.stats, record))
            await asyncio.sleep(0)
            gate.set()
            async with asyncio.timeout(5):
                await h
        else:
            h = await q.submit(returns_probe)
            async with asyncio.timeout(5):
                await h
            tid = h.task_id
            del h
            await _flush(q)  # with max_results=1, this evicts the result
            if released_by == "forget":
                assert q.forget(tid)
        await wait_until(lambda: bool(record))
        ((thread, returned),) = record
        assert returned, f"q.stats() blocked inside a finalizer run by the queue ({released_by}): the lock was held"
    finally:
        gate.set()
        for thread, _ in record:
            thread.join(SAFETY)
    assert_identity(q)
    await shut_down(q)


# ------------------------------------------------- an executor shut down under us


async def test_user_executor_shut_down_under_the_queue(make_queue):
    """A ThreadPoolExecutor passed in, shut down by its owner while the queue still uses it.

    Sync tasks submitted afterwards fail at once (FAILED, not retried: the
    pool will not come back) with a RuntimeError that names the executor
    and says not to shut it down; coroutine tasks are unaffected; nothing is
    lost, the queue's own shutdown finishes, and it never touches the pool.
    """
    with concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="user-pool") as pool:
        q = await make_queue(2, executor=pool, retry=RetryPolicy(max_retries=3, base_delay=0))
        async with asyncio.timeout(5):
            assert await (await q.submit(abs, -1)) == 1
        pool.shutdown(wait=True)

        async def coro(i):
            return i

        refused = [await q.submit(abs, -i) for i in range(3)]
        fine = [await q.submit(coro, i) for i in range(3)]
        from_thread = await asyncio.to_thread(q.submit_blocking, abs, -9)
        async with asyncio.timeout(5):
            assert await asyncio.gather(*fine) == [0, 1, 2]
            for h in refused:
                with pytest.raises(RuntimeError, match=r"executor refused task .*do not shut down an executor"):
                    await h
            with pytest.raises(RuntimeError, match="executor refused"):
                await asyncio.wrap_future(from_thread)
        for h in refused:
            r = await q.get_result(h.task_id)
            assert r.status is TaskStatus.FAILED and r.retry_count == 0
        s = q.stats()
        assert (s.completed, s.failed, s.retries, s.busy_workers) == (4, 4, 0, 0)
        assert_nothing_lost(q, [*refused, *fine, from_thread])
        await shut_down(q)


async def test_user_executor_shut_down_with_cancel_futures_loses_no_task(make_queue):
    """A user pool shut down with ``cancel_futures=True`` while a claimed task waits inside it.

    With ``workers=2`` and a one-thread pool, the second sync task is handed
    to the pool and waits in the pool's own queue; the owner's
    ``shutdown(cancel_futures=True)`` cancels that work item. The queue must
    not lose the task: it ends FAILED with an error naming the executor (as
    a refused one does), its worker slot is freed, and the queue's shutdown
    finishes.
    """
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="user-pool") as pool:
        q = await make_queue(2, executor=pool, retry=NO_RETRY)
        entered = threading.Event()
        release = threading.Event()

        def occupies_the_thread():
            entered.set()
            release.wait(SAFETY)
            return "first"

        try:
            first = await q.submit(occupies_the_thread)
            second = await q.submit(abs, -2)  # claimed, queued inside the pool behind `first`
            await asyncio.to_thread(entered.wait, 5)
            assert q.stats().running == 2
            pool.shutdown(wait=False, cancel_futures=True)
            release.set()
            async with asyncio.timeout(5):
                assert await first == "first"
            await asyncio.wait({second}, timeout=1.0)
            assert second.done(), f"task lost inside the cancelled pool: {q.stats()}"
            with pytest.raises(RuntimeError, match="executor"):
                second.result()
            await wait_until(lambda: q.stats().busy_workers == 0, bound=1.0)
            assert_nothing_lost(q, [first, second])
            await shut_down(q, bound=2.0)
        finally:
            release.set()
            await q.shutdown(wait=False)


# --------------------------------------------------- handlers using their own queue


async def test_coroutine_handler_submits_more_tasks(make_queue):
    """A coroutine handler that submits children with ``await q.submit`` (and awaits some).

    Submitting from inside a handler is ordinary use: children of both
    kinds run on the other worker, the parent gets their values, children
    nobody awaits complete too, and every submission is counted once.
    """
    q = await make_queue(2)
    unawaited = []

    async def child(i):
        await asyncio.sleep(0)
        return i

    def sync_child(i):
        return 10 * i

    async def parent(n):
        kids = [await q.submit(child, i) for i in range(n)] + [await q.submit(sync_child, i) for i in range(n)]
        unawaited.extend([await q.submit(child, -1), await q.submit(sync_child, -1)])
        return sum(await asyncio.gather(*kids))

    h = await q.submit(parent, 5)
    async with asyncio.timeout(5):
        assert await h == sum(range(5)) * 11
        assert await asyncio.gather(*unawaited) == [-1, -10]
    s = q.stats()
    assert (s.submitted, s.completed) == (13, 13)
    assert_nothing_lost(q, [h, *unawaited])
    await shut_down(q)


async def test_sync_handler_submits_more_tasks(make_queue):
    """A sync handler that submits children with ``q.submit_blocking`` and waits on their futures.

    From a pool thread, ``submit_blocking`` is the right call; with a free
    worker for the children, the parent gets their values. Coroutine
    children are carried over to the loop; all are counted once.
    """
    q = await make_queue(2)

    async def coro_child(i):
        return i

    def sync_child(i):
        return 10 * i

    def parent(n):
        futures = [q.submit_blocking(coro_child, i) for i in range(n)]
        futures += [q.submit_blocking(sync_child, i) for i in range(n)]
        return sum(f.result(timeout=SAFETY) for f in futures)

    h = await q.submit(parent, 5)
    async with asyncio.timeout(5):
        assert await h == sum(range(5)) * 11
    s = q.stats()
    assert (s.submitted, s.completed) == (11, 11)
    assert_nothing_lost(q, [h])
    await shut_down(q)


@pytest.mark.parametrize("kind", ["coroutine", "sync"])
async def test_handler_submitting_while_the_queue_drains(make_queue, kind):
    """A handler that submits another task after ``shutdown()`` began draining.

    The queue accepts nothing once shutdown began, from handlers too: the
    submit raises QueueShutDown inside the handler, the handler's task fails
    with it (it is an Exception, so it would be retried: no retries here),
    and the drain finishes.
    """
    q = await make_queue(1, retry=NO_RETRY)
    draining = threading.Event()

    async def coro_parent():
        await asyncio.to_thread(draining.wait, SAFETY)
        await q.submit(abs, 1)

    def sync_parent():
        draining.wait(SAFETY)
        q.submit_blocking(abs, 1)

    h = await q.submit(coro_parent if kind == "coroutine" else sync_parent)
    await asyncio.sleep(0.01)
    shutting = asyncio.create_task(shut_down(q))
    await asyncio.sleep(0.01)
    draining.set()
    await shutting
    with pytest.raises(QueueShutDown):
        h.result()
    s = q.stats()
    assert (s.submitted, s.failed) == (1, 1)
    assert_nothing_lost(q, [h])


async def test_coroutine_handler_awaiting_its_own_handle_times_out(make_queue):
    """A coroutine handler that awaits its own handle, with ``timeout=``.

    It cannot finish before it finishes, so it waits until its deadline,
    and that attempt fails with TimeoutError like any other: the task ends
    FAILED, not CANCELLED (nobody cancelled it), and the worker goes on.
    """
    q = await make_queue(1, retry=NO_RETRY)
    own: dict[str, asyncio.Future[Any]] = {}

    async def waits_on_itself():
        return await own["handle"]

    # submit() does not yield to the loop, so the handle is in place before the handler runs.
    h = own["handle"] = await q.submit(waits_on_itself, timeout=0.05)
    nxt = await q.submit(abs, -4)
    async with asyncio.timeout(5):
        await asyncio.wait({h})
        assert await nxt == 4
    r = await q.get_result(h.task_id)
    assert (r.status, type(r.error)) == (TaskStatus.FAILED, TimeoutError), r
    assert not h.cancelled() and isinstance(h.exception(), TimeoutError)
    await wait_until(lambda: q.stats().busy_workers == 0)
    assert_nothing_lost(q, [h, nxt])
    await shut_down(q)


async def test_coroutine_handler_awaiting_its_own_handle_ends_by_cancel_task(make_queue):
    """A coroutine handler that awaits its own handle, without a timeout.

    It would wait for ever; ``cancel_task`` ends it like any running
    coroutine: CANCELLED, the handler interrupted, the worker free for the
    next task. (It submitted nothing, so its wait lends no slot: see
    tests/test_nesting.py.)
    """
    q = await make_queue(1)
    own: dict[str, asyncio.Future[Any]] = {}
    started = asyncio.Event()

    async def waits_on_itself():
        started.set()
        return await own["handle"]

    h = own["handle"] = await q.submit(waits_on_itself)
    nxt = await q.submit(abs, -5)
    await started.wait()
    await asyncio.sleep(0.01)
    assert not h.done() and not nxt.done()
    assert q.cancel_task(h.task_id)
    async with asyncio.timeout(5):
        assert await nxt == 5
    assert h.cancelled() and q.status(h.task_id) is TaskStatus.CANCELLED
    await wait_until(lambda: q.stats().busy_workers == 0)
    assert_nothing_lost(q, [h, nxt])
    await shut_down(q)


async def test_sync_handler_waiting_for_a_task_it_submitted_with_one_worker(make_queue):
    """A sync handler calling ``q.submit_blocking(...).result()`` with ``workers=1`` does not deadlock.

    The parent lends its slot while it waits, so the child runs in it; the
    parent takes a slot back before it goes on (see tests/test_nesting.py
    for the rule in full).
    """
    q = await make_queue(1, retry=NO_RETRY)
    children: list[concurrent.futures.Future[Any]] = []

    def parent():
        child = q.submit_blocking(abs, -6)
        children.append(child)
        return child.result(timeout=SAFETY)

    h = await q.submit(parent)
    async with asyncio.timeout(5):
        assert await h == 6
    (child,) = children
    assert child.result() == 6
    await wait_until(lambda: q.stats().busy_workers == 0)
    assert_nothing_lost(q, [h, child])
