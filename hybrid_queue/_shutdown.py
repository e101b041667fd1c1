"""A queue's start and shutdown, on its loop, from other threads, from signal handlers, and when dropped.

The methods of ``HybridQueue`` that move its lifecycle (see ``_lifecycle``
for the states): ``start``, ``shutdown``, ``async with``;
``start_background``, ``shutdown_blocking``, ``with``; ``request_shutdown``
for signal handlers; and the finalizer of a queue dropped while running.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import sys
import threading
import warnings
from types import TracebackType
from typing import TYPE_CHECKING, Self

from ._background import LoopThread
from ._events import Listeners
from ._executors import shut
from ._interrupt import shielded
from ._lifecycle import Lifecycle
from ._lock import YieldingLock
from ._pool import WorkerPool
from ._scheduler import Scheduler
from ._task import TaskStatus
from ._validate import check_timeout

if TYPE_CHECKING:
    from ._stats import QueueStats
    from ._workers import Runner

__all__ = ["QueueLifetime"]

logger = logging.getLogger("hybrid_queue")

# Where the scheduler's lock is taken: a frame of that module on the stack
# of the thread that calls shutdown_blocking, while the lock is held, means
# it re-entered the queue (a signal handler that interrupted submit_blocking
# or stats, say), perhaps holding the lock itself.
# (The scheduler's code spans the modules of its parts.)
_SCHEDULER_GLOBALS = frozenset(
    id(vars(sys.modules[cls.__module__])) for cls in Scheduler.__mro__ if cls.__module__.startswith(__package__)
) | {id(vars(sys.modules[YieldingLock.__module__])), id(vars(sys.modules[Listeners.__module__]))}
_REENTRY_PROBE = 0.5  # seconds


class QueueLifetime:
    """Starting and shutting down a ``HybridQueue`` (its base; see the module docstring)."""

    # Set by HybridQueue.__init__.
    _sched: Scheduler
    _runner: Runner
    # The one shutdown, once begun (loop thread only).
    _closing: asyncio.Task[None] | None
    _background: LoopThread | None
    _unwind_grace: float
    # Serializes shutdown_blocking callers: the first one shuts down and
    # stops the background loop; the others find it stopped. Reentrant,
    # for a signal handler that interrupts a shutdown_blocking call.
    _blocking_shutdown: threading.RLock
    # Loop thread only: shutdowns asked for by request_shutdown.
    _requests: set[asyncio.Task[None]]

    if TYPE_CHECKING:

        @property
        def workers(self) -> int: ...

        def stats(self) -> QueueStats: ...

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sched.bind(loop)

    async def start(self) -> None:
        """Start running tasks on the current event loop; tasks already submitted start now.

        Idempotent on the same loop. Raises RuntimeError on another loop, or
        after shutdown (a queue does not restart; make a new one). Coroutine
        handlers run in copies of the context (``contextvars``) of the first
        call.
        """
        loop = asyncio.get_running_loop()
        state = self._sched.life.state
        if state is Lifecycle.NEW:
            # An owned executor is made first: a factory that raises leaves
            # the queue as it was, new and bound to no loop.
            self._runner.executors.open()
            # Coroutine handlers run in copies of this context (contextvars).
            self._runner.context = contextvars.copy_context()
        self._bind(loop)
        if state is Lifecycle.RUNNING:
            return
        if state is not Lifecycle.NEW:
            raise RuntimeError("this HybridQueue was shut down and cannot restart; make a new HybridQueue")
        logger.debug("queue started with %d workers", self.workers)
        self._sched.start()

    async def shutdown(self, wait: bool = True, cancel_pending: bool = False, timeout: float | None = None) -> None:
        """Stop accepting tasks, settle every outstanding one, and release all resources.

        - ``wait=True``: tasks already submitted run to their end (retries
          included); ``cancel_pending=True`` cancels those still waiting for a
          worker or a retry, and lets only the running ones finish.
        - ``timeout``: after this many seconds of waiting, whatever is left is
          cancelled.
        - ``wait=False``: everything unfinished is cancelled at once.
        - Either way, tasks scheduled for later (``delay``, ``not_before``)
          are cancelled and every ``Schedule`` ends.

        Every handle and future is resolved when this returns. A running sync
        handler cannot be interrupted: a cancelled one is abandoned and its
        thread finishes on its own. An owned executor is shut down; worker
        coroutines and timers are cancelled and awaited. Stored results stay
        readable. Idempotent: a second call applies its stronger options
        (``cancel_pending``, ``wait=False``) and waits for the first to end.
        """
        timeout = check_timeout("timeout", timeout)
        loop = asyncio.get_running_loop()
        self._bind(loop)
        never_started = self._sched.life.state is Lifecycle.NEW
        self._sched.stop_accepting()
        # What is scheduled for later does not hold shutdown until its time:
        # cancelled, as the schedules end.
        self._cancel(TaskStatus.SCHEDULED)
        if not wait or cancel_pending or never_started:
            # No new attempt either: a running task that fails now ends
            # FAILED, instead of a retry that would be cancelled at once.
            self._sched.stop_retrying()
            # A queue that never started cannot drain: nothing would run.
            self._cancel(TaskStatus.PENDING, TaskStatus.RETRY_WAIT)
        if not wait:
            self._cancel()
        if self._closing is None:
            self._closing = loop.create_task(self._close(wait, timeout, never_started), name="hybrid_queue-shutdown")
        # Shielded: a caller that stops waiting (a timeout around this await)
        # does not abandon the clean-up half-way, and every call waits for
        # the same one.
        await asyncio.shield(self._closing)

    async def _close(self, wait: bool, timeout: float | None, never_started: bool) -> None:
        if never_started:
            self._sched.close()
            await self._runner.executors.shut_down(wait)
            self._sched.flush_events()
            self._close_journal()
            return
        logger.debug("queue shutting down (wait=%s, timeout=%s)", wait, timeout)
        try:
            if wait:
                try:
                    async with asyncio.timeout(timeout):
                        await self._sched.wait_idle()
                except TimeoutError:
                    logger.debug("shutdown timeout of %s s reached; cancelling what is left", timeout)
                    self._sched.stop_retrying()
                    self._cancel()
            if not await self._runner.close(self._unwind_grace):
                logger.warning(
                    "a coroutine handler ignored cancellation for %s s (unwind_grace); abandoned it",
                    self._unwind_grace,
                )
            idle = self._sched.stats().busy_workers == 0
            self._sched.close()
            await self._runner.executors.shut_down(wait and idle)
        finally:
            self._sched.mark_stopped()
            # Listeners hear the last events before shutdown returns.
            self._sched.flush_events()
            self._close_journal()
            logger.debug("queue stopped")

    def _close_journal(self) -> None:
        # Everything the scheduler handed the journal is written, then the file is let go.
        journal = getattr(self._sched, "journal", None)
        if journal is not None:
            journal.close()

    def _cancel(self, *states: TaskStatus) -> None:
        self._sched.cancel_where(*states)

    @property
    def _executor(self) -> concurrent.futures.Executor | None:
        # The executor in use now (an owned one may have been replaced).
        return self._runner.executor

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # On an error, do not drain the backlog: cancel what waits, finish what runs.
        await self.shutdown(wait=True, cancel_pending=exc_type is not None)

    def start_background(self) -> None:
        """Run the queue on an event loop of its own, in a daemon thread.

        For sync programs. Call from any thread that is not running this
        queue's loop; stop with ``shutdown_blocking``.
        """
        if self._sched.life.state is not Lifecycle.NEW or self._sched.loop is not None:
            raise RuntimeError(
                "start_background() needs a queue that was never started or used from an event loop; "
                "make a new HybridQueue"
            )
        background = LoopThread()
        background.start()
        try:
            background.run(self.start())
        except BaseException:
            background.stop()
            raise
        self._background = background

    @shielded
    def shutdown_blocking(self, wait: bool = True, cancel_pending: bool = False, timeout: float | None = None) -> None:
        """``shutdown`` for sync code: block the calling thread until it is done.

        Call from any thread but the queue's loop thread (there, ``await
        shutdown()``). Stops the background loop of ``start_background``.
        Several threads may call it at once: each returns once the one
        shutdown is done.

        If the queue's loop has ended without a shutdown (``asyncio.run``
        returned), what the queue owns is released here: every unfinished
        task is cancelled (their futures settled) and the owned pool shut
        down. In a forked child of the process that started the queue it
        returns at once: nothing of the parent's is the child's to stop.

        Not from a signal handler (use ``request_shutdown``): one that
        interrupted this thread inside the queue raises RuntimeError here
        instead of waiting for a lock that its own thread holds.
        """
        timeout = check_timeout("timeout", timeout)
        if self._sched.forked:
            return
        _refuse_reentry("shutdown_blocking", self._sched.lock)
        loop = self._sched.loop
        if threading.get_ident() == self._sched.loop_thread and loop is not None and not loop.is_closed():
            raise RuntimeError(
                "shutdown_blocking() was called on the queue's event loop thread; use `await queue.shutdown()`"
            )
        with self._blocking_shutdown:
            try:
                if self._sched.life.state is Lifecycle.STOPPED:  # idempotent; the loop it ran on may be gone
                    return
                if loop is None:
                    # Never bound to a loop: only submit_blocking tasks can be
                    # here; settle them on a loop of our own.
                    self._background = LoopThread()
                    self._background.start()
                    loop = self._background.loop
                elif loop.is_closed() or not loop.is_running():
                    self._release_without_loop(wait)
                    return
                shutdown = self.shutdown(wait, cancel_pending, timeout)
                try:
                    asyncio.run_coroutine_threadsafe(shutdown, loop).result()
                except RuntimeError:
                    shutdown.close()  # the loop closed meanwhile: it never ran
                    self._release_without_loop(wait)
            finally:
                # Even if the queue was shut down by other means, stop our loop.
                if self._background is not None:
                    self._background.stop()
                    self._sched.at_loop.unbind_thread()

    def _release_without_loop(self, wait: bool) -> None:
        # The loop ended without a shutdown: nothing runs there any more, so
        # this thread settles what is left. Handles of coroutine callers
        # belong to the dead loop and stay as they are; futures of
        # submit_blocking callers are settled (cancelled).
        self._sched.stop_accepting()
        self._sched.stop_retrying()
        self._cancel()
        executor = self._runner.executors.take()
        if executor is not None:
            shut(executor, wait=wait)
        self._close_journal()
        self._sched.mark_stopped()
        logger.debug("queue stopped after its event loop ended")

    def request_shutdown(self, wait: bool = True, cancel_pending: bool = False, timeout: float | None = None) -> bool:
        """Ask the queue to shut down, and return at once; safe in a signal handler.

        Schedules ``shutdown(wait, cancel_pending, timeout)`` on the queue's
        loop and returns True, or returns False when the queue has no loop
        that could run it (never started, or its loop is closed). It takes
        no lock and never blocks, so a handler of SIGINT or SIGTERM may call
        it whatever the interrupted thread was doing; submits are refused
        from the moment the shutdown begins on the loop. Then wait for the
        end with ``shutdown_blocking()`` (it waits for the same shutdown) or
        ``await shutdown()``. Any thread, signal handlers included.
        """
        timeout = check_timeout("timeout", timeout)
        loop = self._sched.loop
        if loop is None or self._sched.forked:
            return False
        try:
            # No lock taken here: call_soon_threadsafe appends to the loop's
            # queue of callbacks and writes a byte to wake it.
            loop.call_soon_threadsafe(self._begin_requested_shutdown, wait, cancel_pending, timeout)
        except RuntimeError:  # the loop is closed
            return False
        return True

    def _begin_requested_shutdown(self, wait: bool, cancel_pending: bool, timeout: float | None) -> None:
        # Loop thread. Kept until done: a task nobody references may vanish.
        task = asyncio.ensure_future(self.shutdown(wait, cancel_pending, timeout))
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)

    def __del__(self) -> None:
        # Like an unclosed event loop: let go of the threads the queue owns,
        # then warn (last: under -W error the warning raises). No lock is
        # taken here, not even a pool's: a collection can run this on a
        # thread that holds one.
        sched = getattr(self, "_sched", None)
        if sched is None or sched.life.state in (Lifecycle.NEW, Lifecycle.ORPHANED):
            return
        background = self._background
        running = sched.life.state is Lifecycle.RUNNING
        executor = self._runner.executors.abandon() if running else None
        loop = background.loop if background is not None else self._sched.loop
        if isinstance(executor, WorkerPool):
            executor.abandon()  # lock-free: its threads end after what is queued
            executor = None
        try:
            if loop is None or loop.is_closed():
                raise RuntimeError("loop closed")
            if executor is not None:
                loop.call_soon_threadsafe(shut, executor, False)
            if background is not None:
                loop.call_soon_threadsafe(loop.stop)  # the loop thread cleans up and ends
        except RuntimeError:
            if executor is not None:  # another kind of pool: shut down from a thread of its own
                threading.Thread(target=shut, args=(executor, False), name="hybrid_queue-join", daemon=True).start()
        if running:
            warnings.warn(
                f"unclosed HybridQueue with {self._sched.workers} workers was dropped while running; "
                "call shutdown() or shutdown_blocking(), or use `async with` / `with`",
                ResourceWarning,
                source=self,
                stacklevel=2,
            )

    def __enter__(self) -> Self:
        self.start_background()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown_blocking(wait=True, cancel_pending=exc_type is not None)


def _refuse_reentry(method: str, scheduler_lock: threading.Lock) -> None:
    # A signal handler runs on top of the frames it interrupted: if one of
    # them is the scheduler's, this thread may hold its lock, and blocking
    # until the shutdown takes it would never end.
    frame = sys._getframe(2)
    while frame is not None:
        if id(frame.f_globals) in _SCHEDULER_GLOBALS:
            # Inside the scheduler, perhaps holding its lock: the lock says
            # not who holds it, but the scheduler holds it only for short
            # bookkeeping, so one that cannot be taken within a while is
            # this thread's own.
            if scheduler_lock.acquire(timeout=_REENTRY_PROBE):
                scheduler_lock.release()
                return
            raise RuntimeError(
                f"{method}() was called while this thread is inside the queue (a signal handler that "
                "interrupted submit_blocking() or stats()?), where blocking would deadlock; from signal "
                "handlers call queue.request_shutdown(), which returns at once"
            )
        frame = frame.f_back  # type: ignore[assignment]
