"""Lifecycle: how a queue shuts down, from every place a program may end it.

- A shutdown that cancels pending work starts no new attempt: a running task
  that fails meanwhile ends FAILED after one attempt.
- ``shutdown_blocking`` from many threads at once returns in each of them.
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

from hybrid_queue import HybridQueue, QueueShutDown, RetryPolicy, TaskFuture, TaskStatus
from hybrid_queue.testing import FakeClock

BOUND = 10.0  # seconds a wait may take before the test fails: reached only when something is broken
ROOT = Path(__file__).resolve().parents[1]


def noop() -> None:
    pass


def run_python(program: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``program`` in a fresh interpreter that imports hybrid_queue from this tree."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


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


# ------------------------------------------------ shutdown starts no new attempt

# A retry waits on a FakeClock that no test moves: a shutdown that waited for
# one would never end, so returning within BOUND shows that none was armed.
STILL_CLOCK_RETRY = RetryPolicy(base_delay=1.0)


def _assert_failed_once(q: HybridQueue, handler: FailsWhenReleased) -> None:
    assert handler.attempts == 1
    stats = q.stats()
    assert (stats.failed, stats.retries, stats.retrying) == (1, 0, 0)


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


# ---------------------------------------------- shutdown_blocking from threads

THREADS = 8
ROUNDS = 30


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


def test_shutdown_blocking_from_many_threads_at_once_returns_in_every_thread() -> None:
    for round_ in range(ROUNDS):
        q = HybridQueue(workers=2)
        q.start_background()
        future = q.submit_blocking(operator.add, round_, 1)
        assert shut_down_from_threads_at_once(q) == [], f"round {round_}"
        assert future.result(timeout=0) == round_ + 1


# ------------------------------------------------------------------- signals


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


def run_interrupted_queue(entry: str, call: str) -> list[str]:
    program = (
        f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
        "from test_lifecycle import interrupted_queue_report\n"
        f"print('\\n'.join(interrupted_queue_report({entry!r}, {call!r})))\n"
    )
    done = run_python(program, timeout=BOUND)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs SIGUSR1")
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_shutdown_blocking_in_a_signal_handler_that_interrupted_the_queue_raises(entry: str) -> None:
    refusal, *rest = run_interrupted_queue(entry, "shutdown_blocking")
    assert refusal.startswith("RuntimeError: shutdown_blocking() was called while this thread is inside the queue")
    assert "call queue.request_shutdown()" in refusal
    assert rest == ["shutdown_blocking returned", "submit refused"]


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs SIGUSR1")
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_request_shutdown_in_a_signal_handler_that_interrupted_the_queue_shuts_it_down(entry: str) -> None:
    assert run_interrupted_queue(entry, "request_shutdown") == ["True", "shutdown_blocking returned", "submit refused"]


# ------------------------------------------------------ queues left unclosed


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


# ---------------------------------------------------------------------- fork


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


# -------------------------------------------------------------- unwind_grace


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


def test_process_exits_after_shutdown_abandons_a_blocked_sync_handler() -> None:
    done = run_python(ABANDONED_HANDLER_PROGRAM, timeout=60)
    assert (done.returncode, done.stdout) == (0, "shutdown returned\n"), done.stderr
