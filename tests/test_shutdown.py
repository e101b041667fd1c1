"""Shutdown: how a queue ends, from every place a program may end it.

- ``shutdown()`` drains by default; ``cancel_pending`` resolves every future;
  ``timeout`` drains then cancels the rest; ``wait=False`` cancels everything.
  Starting and shutting down are idempotent.
- A shutdown that cancels pending work starts no new attempt: a running task
  that fails meanwhile ends FAILED after one attempt. Handlers that swallow
  the cancellation or never return do not hold it up past its timeout.
- ``shutdown_blocking`` from many threads at once returns in each of them,
  and wakes threads blocked on a full queue.
- Signal handlers: ``request_shutdown`` returns at once; ``shutdown_blocking``
  from a handler that interrupted the queue with its lock held raises instead
  of deadlocking (the interruption is forced by a clock that raises the signal).
- A queue whose loop ended without shutdown, a started queue dropped without
  one, and a queue inherited by a forked child are all released or refused.
- ``unwind_grace`` is validated, and a sync handler abandoned by shutdown does
  not keep the process from exiting.

Handlers are gated with Events and futures; time that matters runs on a
FakeClock. BOUND is a liveness limit only: it is reached when something is
broken, and no assertion depends on how fast anything is.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import operator
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _helpers import (
    FAST,
    NO_RETRY,
    SAFETY,
    assert_identity,
    assert_nothing_lost,
    assert_stats_identity,
    queue_tasks,
    shut_down,
)
from conftest import wait_until

from hybrid_queue import HybridQueue, QueueShutDown, RetryPolicy, TaskFuture, TaskStatus
from hybrid_queue import _lock as lock_module
from hybrid_queue._bridge import LoopBridge
from hybrid_queue.testing import FakeClock


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
    assert_stats_identity(s)


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
    assert_stats_identity(q.stats())
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
    assert_stats_identity(q.stats())
    assert q.stats().cancelled == 1


def test_submit_blocking_before_start_then_shutdown_without_start_cancels():
    q = HybridQueue(1)
    f = q.submit_blocking(abs, -1)
    q.shutdown_blocking()
    assert f.cancelled()
    assert_stats_identity(q.stats())


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


@pytest.mark.races
def test_shutdown_blocking_twice_is_a_no_op():
    with HybridQueue(1) as q:
        assert q.submit_blocking(abs, -1).result(5) == 1
    q.shutdown_blocking()  # the context manager already did; the loop is gone


BOUND = 10.0  # seconds a wait may take before the test fails: reached only when something is broken


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class FailsWhenReleased:
    """A handler (coroutine or sync) that reports each attempt's start, waits to be released, then fails.

    Make it on the loop thread; ``release()`` there too.
    """

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.attempts = 0
        self.started = self.loop.create_future()  # set when the first attempt runs
        self._async_release = asyncio.Event()
        self._sync_release = threading.Event()

    def handler(self, kind: str) -> Callable[[], Any]:
        return self._coroutine if kind == "coroutine" else self._sync

    def release(self) -> None:
        self._async_release.set()
        self._sync_release.set()

    def _begin(self) -> None:
        # One attempt at a time (one worker): no lock needed for the count.
        self.attempts += 1
        self.loop.call_soon_threadsafe(_set_once, self.started)

    async def _coroutine(self) -> None:
        self._begin()
        await self._async_release.wait()
        raise ValueError("attempt failed")

    def _sync(self) -> None:
        self._begin()
        if not self._sync_release.wait(BOUND):
            raise AssertionError("the handler was never released")
        raise ValueError("attempt failed")


# A retry waits on a FakeClock that no test moves: a shutdown that waited for
# one would never end, so returning within BOUND shows that none was armed.
STILL_CLOCK_RETRY = RetryPolicy(base_delay=1.0)


def _assert_failed_once(q: HybridQueue, handler: FailsWhenReleased) -> None:
    assert handler.attempts == 1
    stats = q.stats()
    assert (stats.failed, stats.retries, stats.retrying) == (1, 0, 0)


def noop() -> None:
    pass


@pytest.mark.lifecycle
@pytest.mark.parametrize("kind", ["coroutine", "sync"])
async def test_shutdown_cancelling_pending_starts_no_new_attempt(make_queue: Any, kind: str) -> None:
    q = await make_queue(workers=1, retry=STILL_CLOCK_RETRY, clock=FakeClock())
    handler = FailsWhenReleased()
    handle = await q.submit(handler.handler(kind), max_retries=3)
    await asyncio.wait_for(handler.started, BOUND)

    shutdown = asyncio.create_task(q.shutdown(cancel_pending=True))
    await asyncio.sleep(0)  # the shutdown task runs up to its first wait
    with pytest.raises(QueueShutDown):
        q.submit_nowait(noop)  # so it has begun
    handler.release()  # the attempt fails while the shutdown is in progress

    await asyncio.wait_for(shutdown, BOUND)  # returns once the handler ended: no retry to wait for
    with pytest.raises(ValueError, match=r"^attempt failed$"):
        await handle
    assert q.status(handle.task_id) is TaskStatus.FAILED
    _assert_failed_once(q, handler)


@pytest.mark.lifecycle
@pytest.mark.parametrize("kind", ["coroutine", "sync"])
async def test_async_with_left_by_an_exception_starts_no_new_attempt(kind: str) -> None:
    q = HybridQueue(workers=1, retry=STILL_CLOCK_RETRY, clock=FakeClock())
    handler = FailsWhenReleased()
    refused: list[bool] = []

    def release_once_shutting_down() -> None:
        try:
            q.submit_nowait(noop)
        except QueueShutDown:
            refused.append(True)
        handler.release()

    try:
        async with asyncio.timeout(BOUND):
            with pytest.raises(LookupError, match=r"^leaving the block$"):
                async with q:
                    handle = await q.submit(handler.handler(kind), max_retries=3)
                    await handler.started
                    # Runs once __aexit__ has begun the shutdown and waits for its end.
                    asyncio.get_running_loop().call_soon(release_once_shutting_down)
                    raise LookupError("leaving the block")
    finally:
        await q.shutdown(wait=False)  # no-op unless the block's shutdown failed
    assert refused == [True]
    with pytest.raises(ValueError, match=r"^attempt failed$"):
        await handle
    _assert_failed_once(q, handler)


@pytest.mark.faults
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


@pytest.mark.faults
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


@pytest.mark.faults
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


@pytest.mark.races
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


# -------------------------------------- from threads and signal handlers


ROUNDS = 30


THREADS = 8


def shut_down_from_threads_at_once(q: HybridQueue) -> list[BaseException]:
    """Call ``q.shutdown_blocking()`` in THREADS threads released together; return what they raised."""
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            barrier.wait(BOUND)
            q.shutdown_blocking()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call, name=f"shutdown-caller-{i}") for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(BOUND)
    assert not any(t.is_alive() for t in threads), "a shutdown_blocking call never returned"
    return errors


@pytest.mark.lifecycle
def test_shutdown_blocking_from_many_threads_at_once_returns_in_every_thread() -> None:
    for round_ in range(ROUNDS):
        q = HybridQueue(workers=2)
        q.start_background()
        future = q.submit_blocking(operator.add, round_, 1)
        assert shut_down_from_threads_at_once(q) == [], f"round {round_}"
        assert future.result(timeout=0) == round_ + 1


@pytest.mark.lifecycle
def test_request_shutdown_returns_at_once_and_the_queue_shuts_down() -> None:
    q = HybridQueue(workers=1)
    q.start_background()
    started, gate = threading.Event(), threading.Event()

    def hold() -> str:
        started.set()
        gate.wait(BOUND)
        return "held"

    try:
        running = q.submit_blocking(hold)
        assert started.wait(BOUND)
        waiting = q.submit_blocking(noop)
        assert q.request_shutdown(cancel_pending=True) is True
        # The loop begins the shutdown on its own: the waiting task is cancelled.
        with pytest.raises(concurrent.futures.CancelledError):
            waiting.result(timeout=BOUND)
        with pytest.raises(QueueShutDown, match="shutting down"):
            q.submit_blocking(noop)
        gate.set()
        q.shutdown_blocking()  # waits for that same shutdown
        assert running.result(timeout=0) == "held"
        with pytest.raises(QueueShutDown):
            q.submit_blocking(noop)
        assert q.request_shutdown() is False  # its loop is closed now
    finally:
        gate.set()
        q.shutdown_blocking(wait=False)


@pytest.mark.lifecycle
def test_request_shutdown_on_a_queue_never_started_returns_false() -> None:
    assert HybridQueue().request_shutdown() is False


class SignallingClock(FakeClock):
    """A FakeClock whose time(), once armed, raises SIGUSR1 in the arming thread the next time it is read.

    The queue reads its clock while holding its lock, so the signal handler
    runs on top of the queue's frames with the lock held: what a real signal
    arriving at that moment would do, made to happen every time.
    """

    def __init__(self) -> None:
        super().__init__()
        self._armed_in: int | None = None

    def arm(self) -> None:
        self._armed_in = threading.get_ident()

    def time(self) -> float:
        if self._armed_in == threading.get_ident():
            self._armed_in = None
            signal.raise_signal(signal.SIGUSR1)  # its Python handler runs before this returns
        return super().time()


@contextlib.contextmanager
def on_sigusr1(action: Callable[[], object]) -> Iterator[list[object]]:
    """Run ``action`` in a SIGUSR1 handler; yields what it returned or raised, one entry per signal."""
    outcomes: list[object] = []

    def handler(signum: int, frame: object) -> None:
        try:
            outcomes.append(action())
        except Exception as exc:
            outcomes.append(exc)

    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        yield outcomes
    finally:
        signal.signal(signal.SIGUSR1, previous)


# Calls that read the clock with the scheduler's lock held: a lookup of a
# finished task's result, and a submit with a task_id (checked against stored results).
ENTRY_POINTS: dict[str, Callable[[HybridQueue], object]] = {
    "status": lambda q: q.status("finished"),
    "submit_blocking": lambda q: q.submit_blocking(noop, task_id="new"),
}


HANDLER_CALLS: dict[str, Callable[[HybridQueue], object]] = {
    "shutdown_blocking": lambda q: q.shutdown_blocking(wait=False),
    "request_shutdown": lambda q: q.request_shutdown(cancel_pending=True),
}


def interrupted_queue_report(entry: str, call: str) -> list[str]:
    """Interrupt ``entry`` with the queue's lock held by a SIGUSR1 handler making ``call``; say what followed.

    Runs in a fresh interpreter (see run_interrupted_queue): a handler that
    deadlocks there holds the lock that the loop thread waits for, and a
    timeout cannot free the process it happens in.
    """
    clock = SignallingClock()
    q = HybridQueue(workers=1, clock=clock)
    q.start_background()
    q.submit_blocking(noop, task_id="finished").result(timeout=BOUND)
    with on_sigusr1(lambda: HANDLER_CALLS[call](q)) as outcomes:
        clock.arm()
        ENTRY_POINTS[entry](q)
    report = [f"{type(o).__name__}: {o}" if isinstance(o, BaseException) else repr(o) for o in outcomes]
    q.shutdown_blocking()
    report.append("shutdown_blocking returned")
    try:
        q.submit_blocking(noop)
    except QueueShutDown:
        report.append("submit refused")
    return report


ROOT = Path(__file__).resolve().parents[1]


def run_python(program: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``program`` in a fresh interpreter that imports hybrid_queue from this tree."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def run_interrupted_queue(entry: str, call: str) -> list[str]:
    program = (
        f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
        "from test_shutdown import interrupted_queue_report\n"
        f"print('\\n'.join(interrupted_queue_report({entry!r}, {call!r})))\n"
    )
    done = run_python(program, timeout=BOUND)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.mark.lifecycle
@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs SIGUSR1")
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_request_shutdown_in_a_signal_handler_that_interrupted_the_queue_shuts_it_down(entry: str) -> None:
    assert run_interrupted_queue(entry, "request_shutdown") == ["True", "shutdown_blocking returned", "submit refused"]


@pytest.mark.lifecycle
@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs SIGUSR1")
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_shutdown_blocking_in_a_signal_handler_that_interrupted_the_queue_raises(entry: str) -> None:
    refusal, *rest = run_interrupted_queue(entry, "shutdown_blocking")
    assert refusal.startswith("RuntimeError: shutdown_blocking() was called while this thread is inside the queue")
    assert "call queue.request_shutdown()" in refusal
    assert rest == ["shutdown_blocking returned", "submit refused"]


# ----------------- loops that end, queues that are dropped, forks, exits


@pytest.mark.races
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


@pytest.mark.hardening
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


@pytest.mark.lifecycle
def test_shutdown_blocking_after_the_loop_ended_releases_the_pool_and_settles_futures() -> None:
    clock = FakeClock()
    q = HybridQueue(workers=2, retry=STILL_CLOCK_RETRY, clock=clock)

    def fail() -> None:
        raise ValueError("attempt failed")

    async def main() -> TaskFuture[None]:
        await q.start()
        future = await asyncio.to_thread(lambda: q.submit_blocking(fail, max_retries=3))
        await clock.sleep(0)  # the first attempt ran in the pool; its retry waits on the clock
        return future

    future = asyncio.run(main())  # returns without shutting the queue down
    assert q.status(future.task_id) is TaskStatus.RETRY_WAIT
    q.shutdown_blocking()  # the pool's threads end: no_leaked_threads checks
    assert future.cancelled()
    assert q.stats().cancelled == 1
    with pytest.raises(QueueShutDown):
        q.submit_blocking(noop)


@pytest.mark.lifecycle
def test_background_queue_dropped_while_running_warns_and_its_threads_end() -> None:
    q = HybridQueue(workers=2)
    q.start_background()
    future = q.submit_blocking(operator.add, 1, 2)
    assert future.result(timeout=BOUND) == 3  # the pool has a thread
    # The future holds the queue, and the pool thread holds the task (and so
    # the future) until it has reported the result: wait until both let go.
    released = threading.Event()
    weakref.finalize(future, released.set)
    del future
    assert released.wait(BOUND)
    with pytest.warns(ResourceWarning, match=r"^unclosed HybridQueue"):
        del q
        gc.collect()


@pytest.mark.lifecycle
async def test_queue_dropped_while_its_loop_runs_warns_and_its_threads_end() -> None:
    q = HybridQueue(workers=2)
    await q.start()
    handle = await q.submit(operator.add, 1, 2)
    assert await handle == 3  # the pool has a thread
    # As above: the handle holds the queue until the pool thread lets go of it.
    loop = asyncio.get_running_loop()
    released = loop.create_future()
    weakref.finalize(handle, loop.call_soon_threadsafe, _set_once, released)
    del handle
    await asyncio.wait_for(released, BOUND)
    with pytest.warns(ResourceWarning, match=r"^unclosed HybridQueue"):
        del q
        gc.collect()
    await asyncio.sleep(0)  # the loop runs the pool's shutdown, posted by the drop


@pytest.mark.hardening
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


def _in_child(q: HybridQueue) -> str:
    # What the forked child sees of its parent's queue, as one line.
    try:
        q.submit_blocking(noop)
    except QueueShutDown as exc:
        submitted = "refused (forked child)" if "forked child" in str(exc) else f"refused: {exc}"
    else:
        submitted = "accepted"
    q.shutdown_blocking()
    return f"{submitted}; shutdown_blocking returned"


def _wait_for_child(pid: int, bound: float) -> int | None:
    # Its exit code, or None if it was still running after ``bound`` seconds (then killed).
    deadline = time.monotonic() + bound
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
        time.sleep(0.01)


@pytest.mark.lifecycle
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_refuses_the_parents_queue_at_once() -> None:
    q = HybridQueue(workers=2)
    q.start_background()
    try:
        assert q.submit_blocking(operator.add, 1, 2).result(timeout=BOUND) == 3
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns into the test run
            code = 1
            try:
                os.close(read_end)
                os.write(write_end, _in_child(q).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        exit_code = _wait_for_child(pid, BOUND)
        with os.fdopen(read_end, "rb") as pipe:
            report = pipe.read().decode()
    finally:
        q.shutdown_blocking()
    assert (exit_code, report) == (0, "refused (forked child); shutdown_blocking returned")


@pytest.mark.races
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_child_forked_from_another_thread_knows_its_main_thread():
    # That thread is the child's main thread, and runs its signal handlers:
    # it must take the scheduler lock the main thread's way.
    def fork_and_report(result: list[int]) -> None:
        pid = os.fork()
        if pid == 0:  # the child: one thread, this one
            ok = lock_module._MAIN_THREAD == threading.main_thread().ident == threading.get_ident()
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        result.append(os.waitstatus_to_exitcode(status))

    result: list[int] = []
    forker = threading.Thread(target=fork_and_report, args=(result,))
    forker.start()
    forker.join(30)
    assert result == [0]
    assert lock_module._MAIN_THREAD == threading.main_thread().ident  # the parent's is unchanged


@pytest.mark.lifecycle
@pytest.mark.parametrize("grace", [-1.0, -0.001, float("nan")])
def test_unwind_grace_below_zero_is_refused(grace: float) -> None:
    with pytest.raises(ValueError, match=r"^unwind_grace must be >= 0 seconds, got "):
        HybridQueue(unwind_grace=grace)


ABANDONED_HANDLER_PROGRAM = textwrap.dedent(
    """
    import threading

    from hybrid_queue import HybridQueue

    q = HybridQueue(workers=1)
    q.start_background()
    started = threading.Event()

    def block_forever():
        started.set()
        threading.Event().wait()

    future = q.submit_blocking(block_forever)
    assert started.wait(10)
    q.shutdown_blocking(timeout=0.2)
    assert future.cancelled()
    print("shutdown returned")
    """
)


@pytest.mark.lifecycle
def test_process_exits_after_shutdown_abandons_a_blocked_sync_handler() -> None:
    done = run_python(ABANDONED_HANDLER_PROGRAM, timeout=60)
    assert (done.returncode, done.stdout) == (0, "shutdown returned\n"), done.stderr
