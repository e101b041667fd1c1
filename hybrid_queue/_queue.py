"""HybridQueue: the public face of the scheduler, its workers and its lifecycle."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import logging
import sys
import threading
import warnings
import weakref
from collections.abc import Callable, Coroutine, Iterable, Sized
from types import TracebackType
from typing import Any, TypeVar, TypeVarTuple, overload

from ._background import LoopThread
from ._clock import Clock
from ._errors import QueueFull
from ._events import TaskEvent
from ._interrupt import arm, shielded
from ._nesting import current_holder
from ._pool import WorkerPool
from ._retry import RetryPolicy
from ._scheduler import Scheduler
from ._stats import QueueStats
from ._store import ResultStore
from ._task import ChildHandle, Task, TaskFuture, TaskHandle, TaskId, TaskResult, TaskStatus, fill_record
from ._validate import check_bool, check_int, check_max_retries, check_task_id, check_timeout, is_coroutine_function
from ._workers import Runner, _shut

__all__ = ["HybridQueue"]

T = TypeVar("T")
A = TypeVar("A")
Ts = TypeVarTuple("Ts")

logger = logging.getLogger("hybrid_queue")

# Where the scheduler's lock is taken: a frame of that module on the stack
# of the thread that calls shutdown_blocking, while the lock is held, means
# it re-entered the queue (a signal handler that interrupted submit_blocking
# or stats, say), perhaps holding the lock itself.
_SCHEDULER_GLOBALS = vars(sys.modules[Scheduler.__module__])
_REENTRY_PROBE = 0.5  # seconds


class HybridQueue:
    """One priority queue for coroutine handlers and sync handlers.

    ``workers`` handlers (of both kinds together) run at once. Higher
    ``priority`` runs first; equal priorities run in submission order.
    Coroutine functions run on the event loop; any other callable runs on
    ``executor`` (a thread pool of ``workers`` threads owned by the queue
    when none is given; an executor passed in is never shut down by the
    queue). Failed attempts are retried by ``retry`` (a :class:`RetryPolicy`,
    3 retries by default). Finished tasks leave a :class:`TaskResult` that
    lives ``result_ttl`` seconds (0: results are handed to their handles and
    futures, never kept), at most ``max_results`` of them and at most
    ``max_result_bytes`` of results (each result's shallow
    ``sys.getsizeof``; None: no bound), oldest evicted first.
    ``max_queue_size`` bounds the tasks waiting for a worker (0:
    unbounded). ``unwind_grace`` is how long shutdown waits for a
    cancelled coroutine handler to unwind before it abandons it (one that
    catches ``CancelledError`` and goes on). With
    ``interrupt_sync_handlers=True``, a sync handler on a thread pool whose
    task is cancelled or times out is interrupted: :class:`TaskInterrupted`
    is raised in its thread (pure-Python code only; C calls and blocking
    system calls are not stopped until they return).

    Construct it in any thread. Unless stated otherwise, ``async`` methods
    must be awaited on the loop the queue runs on, and the other methods are
    safe from any thread.
    """

    def __init__(
        self,
        workers: int = 4,
        *,
        max_queue_size: int = 0,
        retry: RetryPolicy | None = None,
        result_ttl: float = 300.0,
        max_results: int = 10_000,
        max_result_bytes: int | None = 64 * 1024 * 1024,
        executor: concurrent.futures.Executor | Callable[[], concurrent.futures.Executor] | None = None,
        clock: Clock | None = None,
        unwind_grace: float = 5.0,
        interrupt_sync_handlers: bool = False,
    ) -> None:
        check_int("workers", workers, minimum=1)
        check_int("max_queue_size", max_queue_size, minimum=0)
        check_int("max_results", max_results, minimum=1)
        if max_result_bytes is not None:
            check_int("max_result_bytes", max_result_bytes, minimum=1)
        ttl = check_timeout("result_ttl", result_ttl, optional=False)
        assert ttl is not None
        grace = check_timeout("unwind_grace", unwind_grace, optional=False)
        assert grace is not None
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy or None, got {retry!r}")
        factory: Callable[[], concurrent.futures.Executor] | None = None
        if executor is None:
            # The queue's own pool: daemon threads, so a handler abandoned by
            # shutdown(timeout=...) does not hold the process at exit.
            factory = functools.partial(WorkerPool, workers, thread_name_prefix="hybrid_queue")
        elif not isinstance(executor, concurrent.futures.Executor):
            if not callable(executor):
                raise TypeError(
                    "executor must be a concurrent.futures.Executor (yours: never replaced or shut down), a "
                    f"function of no arguments returning one (the queue's: replaced when it breaks), or None, "
                    f"got {executor!r}"
                )
            factory, executor = executor, None

        if clock is not None and not all(callable(getattr(clock, m, None)) for m in ("time", "call_later")):
            raise TypeError(
                f"clock must have time() and call_later(delay, callback, *args) methods "
                f"(hybrid_queue.testing.FakeClock has), got {clock!r}"
            )

        self._policy = retry if retry is not None else RetryPolicy()
        self._sched = Scheduler(
            workers=workers,
            max_queue_size=max_queue_size,
            policy=self._policy,
            store=ResultStore(ttl, max_results, max_bytes=max_result_bytes),
            clock=clock,
        )
        if check_bool("interrupt_sync_handlers", interrupt_sync_handlers):
            arm()  # from now on the queue methods a handler may call are shielded
        self._runner = Runner(self._sched, executor, factory, interrupt_sync_handlers)
        # The last handler submitted and whether it is a coroutine function.
        # One attribute, written whole: threads submit concurrently. A weak
        # reference, so the cache never keeps a handler (or what it binds) alive.
        self._last_kind: tuple[weakref.ref[Callable[..., Any]] | None, bool] = (None, False)
        # Lifecycle, changed only on the loop thread (or before any loop):
        # "new" -> "running" -> "stopping" -> "stopped".
        self._lifecycle = "new"
        self._closing: asyncio.Task[None] | None = None  # the one shutdown, once begun
        self._background: LoopThread | None = None
        self._unwind_grace = grace
        # Serializes shutdown_blocking callers: the first one shuts down and
        # stops the background loop; the others find it stopped. Reentrant,
        # for a signal handler that interrupts a shutdown_blocking call.
        self._blocking_shutdown = threading.RLock()
        # Loop thread only: shutdowns asked for by request_shutdown.
        self._requests: set[asyncio.Task[None]] = set()
        attach = getattr(clock, "_attach", None)
        if attach is not None:  # a FakeClock: its sleep() waits for this queue to be quiet
            attach(self)

    def __repr__(self) -> str:
        s = self.stats()
        return (
            f"<HybridQueue {self._lifecycle} workers={s.workers} pending={s.pending} "
            f"running={s.running} retrying={s.retrying}>"
        )

    @property
    def workers(self) -> int:
        """How many handlers may run at once."""
        return self._sched.workers

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start running tasks on the current event loop; tasks already submitted start now.

        Idempotent on the same loop. Raises RuntimeError on another loop, or
        after shutdown (a queue does not restart; make a new one).
        """
        loop = asyncio.get_running_loop()
        if self._lifecycle == "new":
            # An owned executor is made first: a factory that raises leaves
            # the queue as it was, new and bound to no loop.
            self._runner.open()
        self._bind(loop)
        if self._lifecycle == "running":
            return
        if self._lifecycle != "new":
            raise RuntimeError("this HybridQueue was shut down and cannot restart; make a new HybridQueue")
        self._lifecycle = "running"
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
        self._sched.stop_accepting()
        if not wait or cancel_pending or self._lifecycle == "new":
            # No new attempt either: a running task that fails now ends
            # FAILED, instead of a retry that would be cancelled at once.
            self._sched.stop_retrying()
            # A queue that never started cannot drain: nothing would run.
            self._cancel(TaskStatus.PENDING, TaskStatus.RETRY_WAIT)
        if not wait:
            self._cancel()
        if self._closing is None:
            self._closing = loop.create_task(self._close(wait, timeout), name="hybrid_queue-shutdown")
        # Shielded: a caller that stops waiting (a timeout around this await)
        # does not abandon the clean-up half-way, and every call waits for
        # the same one.
        await asyncio.shield(self._closing)

    async def _close(self, wait: bool, timeout: float | None) -> None:
        if self._lifecycle == "new":
            self._lifecycle = "stopped"
            self._sched.close()
            await self._shutdown_executor(wait)
            self._sched.flush_events()
            return
        self._lifecycle = "stopping"
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
            await self._shutdown_executor(wait and idle)
        finally:
            self._lifecycle = "stopped"
            # Listeners hear the last events before shutdown returns.
            self._sched.flush_events()
            logger.debug("queue stopped")

    def _cancel(self, *states: TaskStatus) -> None:
        self._sched.cancel_where(*states)

    @property
    def _executor(self) -> concurrent.futures.Executor | None:
        # The executor in use now (an owned one may have been replaced).
        return self._runner.executor

    async def _shutdown_executor(self, wait: bool) -> None:
        executor = self._runner.take_executor()
        if executor is None:  # the caller's, or never made
            return
        # Off the loop: joining a pool's threads blocks, and so may cancelling
        # (a Dask client talks to its scheduler, and closes).
        loop = asyncio.get_running_loop()
        joined: asyncio.Future[None] = loop.create_future()

        def join() -> None:
            _shut(executor, wait=wait)
            try:
                loop.call_soon_threadsafe(_resolve, joined)
            except RuntimeError:  # wait=False, and the loop has closed since: nobody waits
                pass

        threading.Thread(target=join, name="hybrid_queue-join", daemon=True).start()
        if wait:
            await joined

    async def __aenter__(self) -> HybridQueue:
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
        if self._lifecycle != "new" or self._sched.loop is not None:
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
                if self._lifecycle == "stopped":  # idempotent; the loop it ran on may be gone
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
                    self._sched.unbind_thread()

    def _release_without_loop(self, wait: bool) -> None:
        # The loop ended without a shutdown: nothing runs there any more, so
        # this thread settles what is left. Handles of coroutine callers
        # belong to the dead loop and stay as they are; futures of
        # submit_blocking callers are settled (cancelled).
        self._sched.stop_accepting()
        self._sched.stop_retrying()
        self._cancel()
        executor = self._runner.take_executor()
        if executor is not None:
            _shut(executor, wait=wait)
        self._lifecycle = "stopped"
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
        if getattr(self, "_lifecycle", "new") == "new" or self._sched.forked:
            return
        background = self._background
        running = self._lifecycle == "running"
        executor = self._runner.abandon_executor() if running else None
        loop = background.loop if background is not None else self._sched.loop
        if isinstance(executor, WorkerPool):
            executor.abandon()  # lock-free: its threads end after what is queued
            executor = None
        try:
            if loop is None or loop.is_closed():
                raise RuntimeError("loop closed")
            if executor is not None:
                loop.call_soon_threadsafe(_shut, executor, False)
            if background is not None:
                loop.call_soon_threadsafe(loop.stop)  # the loop thread cleans up and ends
        except RuntimeError:
            if executor is not None:  # another kind of pool: shut down from a thread of its own
                threading.Thread(target=_shut, args=(executor, False), name="hybrid_queue-join", daemon=True).start()
        if running:
            warnings.warn(
                f"unclosed HybridQueue with {self._sched.workers} workers was dropped while running; "
                "call shutdown() or shutdown_blocking(), or use `async with` / `with`",
                ResourceWarning,
                source=self,
                stacklevel=2,
            )

    def __enter__(self) -> HybridQueue:
        self.start_background()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown_blocking(wait=True, cancel_pending=exc_type is not None)

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sched.bind(loop)

    # ---------------------------------------------------------------- submitting

    @overload
    async def submit(
        self,
        fn: Callable[[*Ts], Coroutine[Any, Any, T]],
        /,
        *args: *Ts,
        priority: int = 0,
        task_id: TaskId | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        keep_result: bool = True,
        **kwargs: Any,
    ) -> TaskHandle[T]: ...

    @overload
    async def submit(
        self,
        fn: Callable[[*Ts], T],
        /,
        *args: *Ts,
        priority: int = 0,
        task_id: TaskId | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        keep_result: bool = True,
        **kwargs: Any,
    ) -> TaskHandle[T]: ...

    # The overloads are what callers are checked against; mypy cannot match
    # their *Ts to this implementation's *args: Any.
    async def submit(  # type: ignore[misc]
        self,
        fn: Callable[..., Any],
        /,
        *args: Any,
        priority: int = 0,
        task_id: TaskId | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        keep_result: bool = True,
        **kwargs: Any,
    ) -> TaskHandle[Any]:
        """Queue ``fn(*args, **kwargs)`` and return its handle; waits for room in a full bounded queue.

        ``priority``: higher runs first. ``task_id``: a str, int, float,
        bytes, UUID or a tuple of those, not "" (default: a new int).
        ``max_retries``: overrides the policy's for this task. ``timeout``:
        seconds allowed per attempt; an attempt that runs longer fails with
        TimeoutError and is retried like any failure. ``keep_result=False``:
        the outcome goes to the handle (and to ``get_result`` calls already
        waiting) but not into the result store, for callers that await the
        handle and never look the task up again.

        The five option names are keyword-only and taken by the queue; to
        pass a keyword argument of the same name to the handler, bind it
        first: ``submit(functools.partial(fn, priority=p))``.

        Raises QueueShutDown once shutdown began, DuplicateTaskError for a
        ``task_id`` in use, TypeError/ValueError for bad arguments. Loop thread.
        """
        is_coro, max_retries, timeout = self._check("submit", fn, priority, task_id, max_retries, timeout, keep_result)
        loop = self._caller_loop("submit")
        handle = self._handle(loop, task_id, fn, args, kwargs, is_coro, priority, max_retries, timeout, keep_result)
        while True:
            try:
                self._sched.add(handle, loop)
            except QueueFull:
                await self._sched.wait_for_room(loop)
            else:
                return handle

    @overload
    def submit_nowait(
        self,
        fn: Callable[[*Ts], Coroutine[Any, Any, T]],
        /,
        *args: *Ts,
        priority: int = 0,
        task_id: TaskId | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        keep_result: bool = True,
        **kwargs: Any,
    ) -> TaskHandle[T]: ...

    @overload
    def submit_nowait(
        self,
        fn: Callable[[*Ts], T],
        /,
        *args: *Ts,
        priority: int = 0,
        task_id: TaskId | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        keep_result: bool = True,
        **kwargs: Any,
    ) -> TaskHandle[T]: ...

    # The overloads are what callers are checked against; mypy cannot match
    # their *Ts to this implementation's *args: Any.
    def submit_nowait(  # type: ignore[misc]
        self,
        fn: Callable[..., Any],
        /,
        *args: Any,
        priority: int = 0,
        task_id: TaskId | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        keep_result: bool = True,
        **kwargs: Any,
    ) -> TaskHandle[Any]:
        """As ``submit``, but raise QueueFull instead of waiting for room. Loop thread."""
        is_coro, max_retries, timeout = self._check(
            "submit_nowait", fn, priority, task_id, max_retries, timeout, keep_result
        )
        loop = self._caller_loop("submit_nowait")
        handle = self._handle(loop, task_id, fn, args, kwargs, is_coro, priority, max_retries, timeout, keep_result)
        self._sched.add(handle, loop)
        return handle

    @overload
    async def submit_many(
        self,
        fn: Callable[[A], Coroutine[Any, Any, T]],
        arguments: Iterable[A],
        /,
        *,
        priority: int = 0,
        max_retries: int | None = None,
        timeout: float | None = None,
        keep_result: bool = True,
    ) -> list[TaskHandle[T]]: ...

    @overload
    async def submit_many(
        self,
        fn: Callable[[A], T],
        arguments: Iterable[A],
        /,
        *,
        priority: int = 0,
        max_retries: int | None = None,
        timeout: float | None = None,
        keep_result: bool = True,
    ) -> list[TaskHandle[T]]: ...

    @overload
    async def submit_many(
        self,
        fn: Callable[..., Coroutine[Any, Any, T]],
        first: Iterable[Any],
        second: Iterable[Any],
        /,
        *more: Iterable[Any],
        priority: int = 0,
        max_retries: int | None = None,
        timeout: float | None = None,
        keep_result: bool = True,
    ) -> list[TaskHandle[T]]: ...

    @overload
    async def submit_many(
        self,
        fn: Callable[..., T],
        first: Iterable[Any],
        second: Iterable[Any],
        /,
        *more: Iterable[Any],
        priority: int = 0,
        max_retries: int | None = None,
        timeout: float | None = None,
        keep_result: bool = True,
    ) -> list[TaskHandle[T]]: ...

    # Typed for one iterable exactly; two or more are checked only for the return type.
    async def submit_many(
        self,
        fn: Callable[..., Any],
        /,
        *iterables: Iterable[Any],
        priority: int = 0,
        max_retries: int | None = None,
        timeout: float | None = None,
        keep_result: bool = True,
    ) -> list[TaskHandle[Any]]:
        """Queue ``fn(*args)`` for every ``args`` in ``zip(*iterables)``; return their handles, in order.

        ``submit_many(fetch, urls)`` is ``[await submit(fetch, url) for url in
        urls]`` made cheaper: the handler and options are checked once and
        the whole batch enters the queue in one step, all of it or none. The
        iterables must have equal lengths. Tasks get generated ids; the
        options apply to every task. In a bounded queue it waits until the
        whole batch fits (single submits may take freed places first), so a
        batch larger than ``max_queue_size`` is a ValueError. Bind handler
        keyword arguments with ``functools.partial``.

        Raises QueueShutDown once shutdown began, TypeError/ValueError for bad
        arguments, before any task is queued. Loop thread.
        """
        if not iterables:
            raise TypeError(
                "submit_many() needs one iterable of arguments per parameter of the handler: "
                "submit_many(fetch, urls), or submit_many(add, xs, ys)"
            )
        # Checked once, as submit() would check one task; every task shares
        # the verdict. Before the iterables are read: a refused call leaves
        # a generator passed in untouched.
        is_coro, max_retries, timeout = self._check(
            "submit_many", fn, priority, None, max_retries, timeout, keep_result
        )
        loop = self._caller_loop("submit_many")
        try:
            batch = list(zip(*iterables, strict=True))
        except ValueError as exc:
            if not str(exc).startswith("zip() argument"):
                raise  # raised by an iterable itself: the caller's own error
            lengths = ", ".join(str(len(it)) if isinstance(it, Sized) else "?" for it in iterables)
            raise ValueError(
                f"submit_many() got iterables of different lengths ({lengths}); pass one argument "
                "per task in each, or use functools.partial for arguments that do not change"
            ) from None
        n, bound = len(batch), self._sched.max_queue_size
        if bound and n > bound:
            raise ValueError(
                f"a batch of {n} tasks can never fit in a queue of max_queue_size={bound}; "
                "submit it in smaller batches, or raise max_queue_size"
            )
        handle = self._handle
        # An empty batch still goes to add_many, which refuses a queue that is shutting down.
        handles: list[TaskHandle[Any]] = [
            handle(loop, None, fn, args, None, is_coro, priority, max_retries, timeout, keep_result) for args in batch
        ]
        while True:
            try:
                self._sched.add_many(handles, loop)
            except QueueFull:
                await self._sched.wait_for_room(loop, n)
            else:
                return handles

    @overload
    def submit_blocking(
        self,
        fn: Callable[[*Ts], Coroutine[Any, Any, T]],
        /,
        *args: *Ts,
        priority: int = 0,
        task_id: TaskId | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        keep_result: bool = True,
        **kwargs: Any,
    ) -> TaskFuture[T]: ...

    @overload
    def submit_blocking(
        self,
        fn: Callable[[*Ts], T],
        /,
        *args: *Ts,
        priority: int = 0,
        task_id: TaskId | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        keep_result: bool = True,
        **kwargs: Any,
    ) -> TaskFuture[T]: ...

    # The overloads are what callers are checked against; mypy cannot match
    # their *Ts to this implementation's *args: Any.
    @shielded  # type: ignore[misc]
    def submit_blocking(
        self,
        fn: Callable[..., Any],
        /,
        *args: Any,
        priority: int = 0,
        task_id: TaskId | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        keep_result: bool = True,
        **kwargs: Any,
    ) -> TaskFuture[Any]:
        """As ``submit``, for sync code: returns a ``concurrent.futures.Future``.

        Blocks the calling thread while a bounded queue is full. Any thread
        except the queue's loop thread, where blocking would deadlock (there,
        use ``await submit()``); it may be called before the queue starts.
        """
        running = asyncio.events._get_running_loop()
        if running is not None and (self._sched.loop is None or running is self._sched.loop):
            raise RuntimeError(
                "submit_blocking() was called on the queue's event loop thread, where blocking "
                "would deadlock; use `await queue.submit(...)` there"
            )
        is_coro, max_retries, timeout = self._check(
            "submit_blocking", fn, priority, task_id, max_retries, timeout, keep_result
        )
        task = Task(task_id, fn, args, kwargs or None, is_coro, priority, max_retries, timeout, keep_result)
        future: TaskFuture[Any] = TaskFuture(self)
        task._cfuture = future
        # On the thread of some other event loop, never block it: QueueFull instead.
        self._sched.add(task, block=running is None)
        future.task_id = task._id
        return future

    def _caller_loop(self, method: str) -> asyncio.AbstractEventLoop:
        # The calling thread's running loop; RuntimeError if it has none.
        loop = asyncio.events._get_running_loop()
        if loop is None:
            raise _no_loop(method)
        return loop

    def _check(
        self,
        method: str,
        fn: Callable[..., Any],
        priority: int,
        task_id: TaskId | None,
        max_retries: int | None,
        timeout: float | None,
        keep_result: bool = True,
    ) -> tuple[bool, int, float | None]:
        # All argument checks, before anything changes; returns whether fn is
        # a coroutine function, and the task's max_retries and timeout. The
        # usual case (same handler as last time, default options) takes the
        # short branches.
        last_ref, last_is_coro = self._last_kind
        if last_ref is not None and last_ref() is fn:
            is_coro = last_is_coro
        else:
            if inspect.iscoroutine(fn):
                raise TypeError(
                    f"{method}() got a coroutine object; pass the async function and its arguments "
                    f"instead: {method}(fetch, url), not {method}(fetch(url))"
                )
            if not callable(fn):
                raise TypeError(f"the handler must be callable, got {fn!r}")
            if inspect.isasyncgenfunction(fn):
                raise TypeError(
                    f"{method}() got an async generator function ({fn!r}), which yields values instead of "
                    "returning one; submit an async function that collects them, e.g. "
                    "`async def all_of(): return [x async for x in gen()]`"
                )
            is_coro = is_coroutine_function(fn)
            # One entry: keeps only the latest handler alive.
            try:
                self._last_kind = (weakref.ref(fn), is_coro)
            except TypeError:  # not weakly referenceable (a builtin): not cached
                self._last_kind = (None, False)
        if type(priority) is not int and (isinstance(priority, bool) or not isinstance(priority, int)):
            raise TypeError(f"priority must be an int (higher runs first), got {priority!r}")
        if task_id is not None:
            check_task_id(task_id)
        if max_retries is None:
            max_retries = self._policy.max_retries
        else:
            check_max_retries(max_retries)
        if timeout is not None:
            timeout = check_timeout("timeout", timeout, positive=True)
        if keep_result is not True:  # the usual value, checked without a call
            check_bool("keep_result", keep_result)
        return is_coro, max_retries, timeout

    def _handle(
        self,
        loop: asyncio.AbstractEventLoop,
        task_id: TaskId | None,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
        is_coro: bool,
        priority: int,
        max_retries: int,
        timeout: float | None,
        keep_result: bool = True,
    ) -> TaskHandle[Any]:
        # A task submitted from async code: its handle is its record. One
        # submitted from inside a handler may be waited for by one: the
        # kind of handle whose waits lend the waiting handler's slot.
        handle: TaskHandle[Any] = (TaskHandle if current_holder() is None else ChildHandle)(loop=loop)
        fill_record(handle, task_id, fn, args, kwargs or None, is_coro, priority, max_retries, timeout, keep_result)
        handle._queue_ref = self
        return handle

    # ------------------------------------------------------------------ results

    async def get_result(self, task_id: TaskId, timeout: float | None = None) -> TaskResult[Any]:
        """Wait for the task to finish and return its result; no polling.

        Raises TimeoutError after ``timeout`` seconds, and UnknownTaskError
        (a KeyError) for an id never submitted or whose result was dropped.
        Loop thread.
        """
        timeout = check_timeout("timeout", timeout)
        loop = asyncio.events._get_running_loop()
        if loop is None:
            raise _no_loop("get_result")
        found = self._sched.result_or_waiter(task_id, loop)
        if isinstance(found, TaskResult):
            return found
        try:
            async with asyncio.timeout(timeout):
                return await found
        except TimeoutError:
            raise TimeoutError(f"task {task_id!r} did not finish within {timeout} s") from None
        finally:
            if not found.done():
                self._sched.drop_waiter(task_id, found)
                found.cancel()

    @shielded
    def status(self, task_id: TaskId) -> TaskStatus:
        """The task's status; UnknownTaskError if never submitted or its result is gone. Any thread."""
        return self._sched.status(task_id)

    @shielded
    def cancel_task(self, task_id: TaskId) -> bool:
        """Cancel a task wherever it is; False if unknown or already finished. Any thread.

        A pending or retry-waiting task leaves the queue at once. A running
        coroutine handler is cancelled (CancelledError inside it). A running
        sync handler cannot be interrupted: the task is CANCELLED and its
        future cancelled at once, its worker slot stays busy until the
        handler returns, and what it returns is discarded.
        """
        return self._sched.cancel(task_id)

    def _cancel_record(self, record: TaskHandle[Any]) -> bool:
        # TaskHandle.cancel(): that very task, not whichever holds its id now.
        return self._sched.cancel(record._id, record=record)

    @shielded
    def forget(self, task_id: TaskId) -> bool:
        """Drop a stored result early; False if there was none. Any thread."""
        return self._sched.forget(task_id)

    @shielded
    def stats(self) -> QueueStats:
        """A consistent snapshot of the counters. Any thread."""
        return self._sched.stats()

    # ------------------------------------------------------------------- events

    @shielded
    def add_listener(self, listener: Callable[[TaskEvent], object]) -> None:
        """Call ``listener(event)`` with a :class:`TaskEvent` for every state change from now on.

        Listeners run on the queue's event loop thread, in the order the
        changes happened, shortly after them (events are handed over in
        batches, at most one loop step late), and before ``shutdown`` returns.
        A listener that raises is logged and stays registered; one that is
        slow delays the loop, so hand heavy work on (to a thread, a queue).
        Register from any thread; the same listener twice is called twice.
        """
        if not callable(listener):
            raise TypeError(f"listener must be callable with one TaskEvent, got {listener!r}")
        self._sched.add_listener(listener)

    @shielded
    def remove_listener(self, listener: Callable[[TaskEvent], object]) -> None:
        """Stop calling ``listener`` (once, if it was added twice). Any thread.

        Raises ValueError if it is not registered.
        """
        if not self._sched.remove_listener(listener):
            raise ValueError(f"{listener!r} is not a listener of this queue; add_listener() it first")


def _refuse_reentry(method: str, scheduler_lock: threading.Lock) -> None:
    # A signal handler runs on top of the frames it interrupted: if one of
    # them is the scheduler's, this thread may hold its lock, and blocking
    # until the shutdown takes it would never end.
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_globals is _SCHEDULER_GLOBALS:
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


def _no_loop(method: str) -> RuntimeError:
    return RuntimeError(
        f"{method}() must be called from a coroutine on the queue's event loop; "
        "from plain threads use submit_blocking()"
    )


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
