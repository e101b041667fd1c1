"""Behaviours that trials of the queue as a new user would run it found missing, one test or more each.

Shutdown and lifecycle under signals, threads, forks and closed loops;
handlers that can be stopped; child tasks; programming errors; state that
must not outlive what it describes.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest
from conftest import wait_until

from hybrid_queue import (
    CallError,
    HybridQueue,
    RetryPolicy,
    TaskEvent,
    TaskInterrupted,
    UnknownTaskError,
    current_task,
)
from hybrid_queue._bridge import LoopBridge
from hybrid_queue.testing import FakeClock

# ------------------------------------------------------------------ task ids


class CallsBack:
    """An id whose hashing calls back into the queue, as a careless __hash__ might."""

    def __init__(self, queue: HybridQueue) -> None:
        self.queue = queue
        self.hashed = 0

    def __hash__(self) -> int:
        self.hashed += 1
        self.queue.stats()  # takes the queue's lock: a deadlock if it is held
        return 1


async def test_an_id_whose_hash_calls_the_queue_is_refused_and_never_hashed_under_the_lock(make_queue):
    q = await make_queue(1)
    bad = CallsBack(q)
    with pytest.raises(TypeError, match=r"^task_id must be a str, int, float, bytes, uuid\.UUID or a tuple"):
        await q.submit(abs, 1, task_id=bad)  # type: ignore[arg-type]
    # Lookups with such an id find nothing, without hashing it under the lock.
    with pytest.raises(UnknownTaskError):
        q.status(bad)  # type: ignore[arg-type]
    with pytest.raises(UnknownTaskError):
        await q.get_result(bad)  # type: ignore[arg-type]
    assert q.cancel_task(bad) is False  # type: ignore[arg-type]
    assert q.forget(bad) is False  # type: ignore[arg-type]
    assert bad.hashed == 0


async def test_plain_ids_of_every_allowed_kind_are_accepted(make_queue):
    q = await make_queue(2)
    ids = ["a", 7, 2.5, b"raw", uuid.UUID(int=5), ("tenant", 3, None, ("nested", b"x"))]
    handles = [await q.submit(abs, -1, task_id=task_id) for task_id in ids]
    assert await asyncio.gather(*handles) == [1] * len(ids)
    assert [h.task_id for h in handles] == ids


# ------------------------------------------------------------------ listeners


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


# --------------------------------------------------------------------- bridge


def test_a_post_after_the_loop_closed_with_a_drain_scheduled_is_refused():
    loop = asyncio.new_event_loop()
    bridge = LoopBridge(loop)
    ran: list[int] = []
    assert bridge.post(ran.append, 1) is True  # schedules a drain
    loop.close()  # before the drain could run
    # The flag that says "a drain is coming" must not make this look accepted.
    assert bridge.post(ran.append, 2) is False
    assert bridge.post(ran.append, 3) is False
    assert ran == []


# ------------------------------------------------------- programming errors


async def test_a_call_that_cannot_bind_its_arguments_fails_at_once_without_retry(make_queue):
    q = await make_queue(2, retry=RetryPolicy(max_retries=3, base_delay=30.0))

    async def fetch(url: str) -> str:
        return url

    def parse(text: str) -> str:
        return text

    for handler in (fetch, parse):
        missing = await q.submit(handler)  # type: ignore[call-arg]
        misspelt = await q.submit(handler, "x", prority=3)
        with pytest.raises(CallError, match=r"cannot be called with the arguments .*; not retried") as caught:
            await missing
        assert isinstance(caught.value, TypeError)
        with pytest.raises(CallError, match=r"did you mean the queue's option priority=, not the handler keyword"):
            await misspelt
        for h in (missing, misspelt):
            assert (await q.get_result(h.task_id)).retry_count == 0
    assert q.stats().retries == 0


async def test_a_type_error_raised_inside_the_handler_is_still_retried(make_queue):
    clock = FakeClock()
    q = await make_queue(1, clock=clock, retry=RetryPolicy(max_retries=1, base_delay=1.0))
    calls: list[int] = []

    def flaky() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise TypeError("from inside the handler")
        return 7

    h = await q.submit(flaky)
    await clock.sleep(5)
    assert await h == 7
    assert (await q.get_result(h.task_id)).retry_count == 1


async def test_a_sync_handler_returning_a_coroutine_or_async_generator_fails_at_once(make_queue):
    q = await make_queue(1, retry=RetryPolicy(max_retries=3, base_delay=30.0))

    async def coro() -> int:
        return 1

    async def agen():  # type: ignore[no-untyped-def]
        yield 1

    for wrong in (lambda: coro(), lambda: agen()):
        h = await q.submit(wrong)
        with pytest.raises(CallError, match="submit the async function itself"):
            await h
    assert q.stats().retries == 0


async def test_an_async_generator_function_is_refused_at_submit(make_queue):
    q = await make_queue(1)

    async def agen():  # type: ignore[no-untyped-def]
        yield 1

    with pytest.raises(TypeError, match=r"^submit\(\) got an async generator function"):
        await q.submit(agen)
    assert q.stats().submitted == 0


# ------------------------------------------------------------ TaskFuture


def test_task_future_running_is_true_while_the_task_runs():
    started, release = threading.Event(), threading.Event()

    def work() -> int:
        started.set()
        release.wait(10)
        return 1

    with HybridQueue(1) as q:
        first = q.submit_blocking(work)
        second = q.submit_blocking(abs, -2)
        started.wait(10)
        assert first.running() and not second.running()
        release.set()
        assert first.result(10) == 1 and second.result(10) == 2
        assert not first.running()


# ------------------------------------------------------------ results kept


async def test_keep_result_false_hands_the_outcome_to_the_handle_only(make_queue):
    q = await make_queue(1)
    h = await q.submit(abs, -3, keep_result=False)
    assert await h == 3
    assert q.stats().results_stored == 0
    with pytest.raises(UnknownTaskError):
        q.status(h.task_id)
    with pytest.raises(TypeError, match="keep_result must be True or False"):
        await q.submit(abs, 1, keep_result=1)  # type: ignore[arg-type]


async def test_large_results_are_bounded_by_bytes(make_queue):
    q = await make_queue(1, max_result_bytes=1_000_000)
    handles = [await q.submit(bytes, 100_000) for _ in range(30)]
    await asyncio.gather(*handles)
    s = q.stats()
    assert s.results_stored < 10 and s.results_evicted == 30 - s.results_stored


# ------------------------------------------------- stopping sync handlers


def spin_until_cancelled() -> str:
    task = current_task()
    while not task.cancelled:
        pass
    return "saw it"


async def test_a_sync_handler_sees_its_cancellation_through_current_task(make_queue):
    q = await make_queue(1)
    h = await q.submit(spin_until_cancelled)
    await wait_until(lambda: q.stats().running == 1)
    h.cancel()
    await wait_until(lambda: q.stats().busy_workers == 0)  # it saw it, returned, and gave its slot back
    assert h.cancelled()


async def test_a_sync_handler_sees_its_timeout_through_current_task(make_queue):
    q = await make_queue(1, retry=RetryPolicy(max_retries=0))
    seen: list[int] = []

    def spin() -> None:
        task = current_task()
        while not task.cancelled:
            pass
        seen.append(task.attempt)
        task.raise_if_cancelled()

    h = await q.submit(spin, timeout=0.05)
    with pytest.raises(TimeoutError):
        await h
    await wait_until(lambda: q.stats().busy_workers == 0)
    assert seen == [1]


def test_current_task_outside_a_handler_is_an_error():
    with pytest.raises(RuntimeError, match="outside a sync handler"):
        current_task()


async def test_an_interruptible_sync_handler_is_stopped_and_frees_its_slot(make_queue):
    q = await make_queue(1, interrupt_sync_handlers=True)
    unwound: list[str] = []

    def busy() -> None:
        try:
            while True:
                pass
        finally:
            unwound.append("finally ran")

    h = await q.submit(busy)
    waiting = await q.submit(abs, -5)
    await wait_until(lambda: q.stats().running == 1)
    h.cancel()
    assert await waiting == 5  # the slot came back: busy() was interrupted
    assert unwound == ["finally ran"]


async def test_an_interruptible_sync_handler_is_stopped_by_its_timeout(make_queue):
    q = await make_queue(1, interrupt_sync_handlers=True, retry=RetryPolicy(max_retries=0))

    def busy() -> None:
        while True:
            pass

    h = await q.submit(busy, timeout=0.05)
    with pytest.raises(TimeoutError):
        await h
    await wait_until(lambda: q.stats().busy_workers == 0)


def test_an_interrupt_never_lands_inside_the_queue_methods_a_handler_calls():
    # The interrupt of a handler comes just as the handler's submit_blocking
    # has taken the scheduler's lock by hand (a profile hook picks that
    # instant): raised there, it would leave the lock held for good. It is
    # held back until the call has done its work, and raised as it returns.
    import sys

    with HybridQueue(2, interrupt_sync_handlers=True) as q:

        def parent() -> None:
            me = q._sched._live["parent"]

            def hook(frame, event, arg):  # type: ignore[no-untyped-def]
                if (
                    event == "c_return"
                    and frame.f_code.co_name == "_guard"
                    and getattr(arg, "__name__", "") == "acquire"
                ):
                    sys.setprofile(None)
                    me._runner.interrupt()  # as a cancel from another thread would, at this very instant

            sys.setprofile(hook)
            try:
                q.submit_blocking(abs, -1, task_id="child")
            finally:
                sys.setprofile(None)

        future = q.submit_blocking(parent, task_id="parent")
        with pytest.raises(TaskInterrupted):
            future.result(10)
        assert not q._sched.lock.locked()
        # The child was accepted whole, and runs.
        assert asyncio.run_coroutine_threadsafe(q.get_result("child", timeout=10), q._sched.loop).result(10).result == 1
        s = q.stats()
        assert s.submitted == s.completed + s.failed + s.cancelled == 2


def test_the_pool_lets_go_of_its_threads_without_a_lock_for_a_finalizer():
    from hybrid_queue import _pool

    pool = _pool.WorkerPool(2, thread_name_prefix="hybrid_queue-abandon")
    assert pool.submit(abs, -1).result(10) == 1
    # A collection may run a dropped queue's finalizer on a thread that
    # holds the registry's lock (or the pool's): abandon() takes neither.
    with _pool._registry_lock, pool._lock:
        pool.abandon()
    with pytest.raises(RuntimeError):
        pool.submit(abs, -1)
    # The no_leaked_threads fixture checks that its threads end.


def test_a_dropped_queue_lets_go_of_its_threads_even_when_its_warning_raises(monkeypatch):
    import gc
    import sys
    import warnings

    caught: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: caught.append(u.exc_value))
    q = HybridQueue(2)
    q.start_background()
    assert q.submit_blocking(abs, -1).result(10) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        del q
        gc.collect()
    assert [type(e) for e in caught] == [ResourceWarning]
    # The no_leaked_threads fixture checks that the loop and pool threads end.


def test_a_late_thread_of_an_ended_attempt_does_not_take_over_the_next_attempts_interrupt(monkeypatch):
    # Attempt 1 times out before its pool thread reaches the handler (held
    # back here until attempt 2 runs); arriving late, that thread must not
    # publish its own runner over attempt 2's, or attempt 2's timeout
    # would interrupt the stale one and let attempt 2 run on.
    import hybrid_queue._workers as workers

    second_started, stop = threading.Event(), threading.Event()
    interrupted: list[int] = []
    original = workers._call_sync

    def late_first(claim, interruptible, current):  # type: ignore[no-untyped-def]
        if claim[1] == 1:
            second_started.wait(10)
        return original(claim, interruptible, current)

    monkeypatch.setattr(workers, "_call_sync", late_first)

    def spin() -> None:
        second_started.set()
        try:
            while not stop.is_set():
                pass
        except TaskInterrupted:
            interrupted.append(current_task().attempt)
            raise

    retry = RetryPolicy(max_retries=1, base_delay=0.0, retry_on=(TimeoutError,))
    with HybridQueue(2, interrupt_sync_handlers=True, retry=retry) as q:
        try:
            future = q.submit_blocking(spin, timeout=0.1)
            with pytest.raises(TimeoutError):
                future.result(10)
            deadline = time.monotonic() + 10
            while q.stats().busy_workers and time.monotonic() < deadline:
                time.sleep(0.01)
            assert interrupted == [2]
        finally:
            stop.set()
