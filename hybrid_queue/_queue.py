"""HybridQueue: the public face of the scheduler and its workers: construction, submits, results, listeners.

Starting and shutting down are in its base, ``_shutdown.QueueLifetime``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import logging
import os
import threading
import weakref
from collections.abc import Callable, Coroutine, Hashable, Iterable, Sized
from datetime import datetime
from typing import Any, TypeVar, TypeVarTuple, overload

from ._background import LoopThread
from ._clock import Clock
from ._durable import JournaledScheduler, JournaledStore, handler_path, pickled_spec
from ._errors import QueueFull
from ._events import TaskEvent
from ._interrupt import arm, shielded
from ._journal import JournalError, SQLiteJournal
from ._nesting import current_holder
from ._pool import WorkerPool
from ._retry import RetryPolicy
from ._scheduler import Scheduler
from ._scheduling import TimeAndKeys
from ._shutdown import QueueLifetime
from ._stats import QueueStats
from ._store import ResultStore
from ._task import ChildHandle, Task, TaskFuture, TaskHandle, TaskId, TaskResult, TaskStatus, fill_record
from ._validate import (
    MAX_SECONDS,
    check_bool,
    check_int,
    check_key,
    check_max_retries,
    check_moment,
    check_rate,
    check_span,
    check_task_id,
    check_timeout,
    is_coroutine_function,
)
from ._workers import Runner

__all__ = ["HybridQueue"]

T = TypeVar("T")
A = TypeVar("A")
Ts = TypeVarTuple("Ts")

logger = logging.getLogger("hybrid_queue")

_YEAR = 365.25 * 86400


class HybridQueue(QueueLifetime, TimeAndKeys):
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
    system calls are not stopped until they return). ``aging``: seconds of
    waiting worth one step of priority (None: off, the order is by
    priority then submission); with it, no task starts before a waiting
    one of at most ``d`` steps less priority that was submitted ``d *
    aging`` seconds or more before it (``(d + 1) * aging`` between tasks of
    different keys, whose ties go by turns), so a low priority task cannot
    starve under a stream of higher ones. ``journal``: a file (or a
    :class:`SQLiteJournal`) that makes tasks durable: the queue takes it
    for this process at construction (JournalError if another process has
    it) and puts back what it held; see ``submit``'s ``durable``.

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
        aging: float | None = None,
        journal: str | os.PathLike[str] | SQLiteJournal | None = None,
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
        if aging is not None:
            aging = check_rate("aging", aging, low=1e-6, high=MAX_SECONDS, unit=" seconds")
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

        if journal is not None and not isinstance(journal, SQLiteJournal):
            journal = SQLiteJournal(journal)  # raises for a path that is not a str or os.PathLike

        self._policy = retry if retry is not None else RetryPolicy()
        scheduler = Scheduler if journal is None else functools.partial(JournaledScheduler, journal)
        self._sched = scheduler(
            workers=workers,
            max_queue_size=max_queue_size,
            policy=self._policy,
            store=(
                ResultStore(ttl, max_results, max_bytes=max_result_bytes)
                if journal is None
                else JournaledStore(journal, ttl, max_results, max_bytes=max_result_bytes)
            ),
            clock=clock,
            aging=aging,
        )
        if check_bool("interrupt_sync_handlers", interrupt_sync_handlers):
            arm()  # from now on the queue methods a handler may call are shielded
        self._runner = Runner(self._sched, executor, factory, interrupt_sync_handlers)
        self._journaled = journal is not None
        # The last durable handler and its import path (see _durable_path), as _last_kind.
        self._last_path: tuple[weakref.ref[Callable[..., Any]] | None, str] = (None, "")
        if isinstance(self._sched, JournaledScheduler):
            self._journal_sched = self._sched
            # Takes the file for this process (JournalError if another has it) and puts back what it held.
            self._sched.restore()
        # The last handler submitted and whether it is a coroutine function.
        # One attribute, written whole: threads submit concurrently. A weak
        # reference, so the cache never keeps a handler (or what it binds) alive.
        self._last_kind: tuple[weakref.ref[Callable[..., Any]] | None, bool] = (None, False)
        # See QueueLifetime for these.
        self._closing: asyncio.Task[None] | None = None  # the one shutdown, once begun
        self._background: LoopThread | None = None
        self._unwind_grace = grace
        self._blocking_shutdown = threading.RLock()
        self._requests: set[asyncio.Task[None]] = set()
        attach = getattr(clock, "_attach", None)
        if attach is not None:  # a FakeClock: its sleep() waits for this queue to be quiet
            attach(self)

    def __repr__(self) -> str:
        s = self.stats()
        return (
            f"<HybridQueue {self._sched.life.state.value} workers={s.workers} pending={s.pending} "
            f"running={s.running} retrying={s.retrying}>"
        )

    @property
    def workers(self) -> int:
        """How many handlers may run at once."""
        return self._sched.workers

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
        delay: float | None = None,
        not_before: datetime | float | None = None,
        key: Hashable | None = None,
        durable: bool | None = None,
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
        delay: float | None = None,
        not_before: datetime | float | None = None,
        key: Hashable | None = None,
        durable: bool | None = None,
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
        delay: float | None = None,
        not_before: datetime | float | None = None,
        key: Hashable | None = None,
        durable: bool | None = None,
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

        ``delay``: start no sooner than this many seconds from now;
        ``not_before``: no sooner than this moment, a timezone-aware
        ``datetime`` (wall-clock time, as appointments are set) or a time of
        the queue's clock (``queue.time() + seconds``: monotonic, it does not
        move when the system clock is set). Until then the task is
        SCHEDULED: it holds no worker and is outside ``max_queue_size``; then
        it queues by its priority. Shutdown cancels tasks still scheduled.
        ``key``: the task waits for its key's limits and turn (see ``limit``
        and ``pause_key``); keys with waiting tasks take turns within a
        priority, and tasks without a key share one turn. ``durable``: on a
        queue with a journal tasks are durable unless ``durable=False``: the
        handler must be a module-level function and the arguments must
        pickle (TypeError otherwise), and this returns once the task is on
        disk; it then runs at least once, here or after a restart.

        The nine option names are keyword-only and taken by the queue; to
        pass a keyword argument of the same name to the handler, bind it
        first: ``submit(functools.partial(fn, priority=p))``.

        Raises QueueShutDown once shutdown began, DuplicateTaskError for a
        ``task_id`` in use, TypeError/ValueError for bad arguments. Loop thread.
        """
        is_coro, max_retries, timeout = self._check("submit", fn, priority, task_id, max_retries, timeout, keep_result)
        due = None
        if key is not None or delay is not None or not_before is not None:
            due = self._check_when(key, delay, not_before)
        row = None
        if durable is not None or self._journaled:
            row = self._durable_row(fn, args, kwargs, durable, priority, max_retries, timeout, keep_result, key)
        loop = self._caller_loop("submit")
        handle = self._handle(loop, task_id, fn, args, kwargs, is_coro, priority, max_retries, timeout, keep_result)
        if key is not None:
            handle._key = key
        if row is not None:
            return await self._add_durable(handle, loop, due, row)
        while True:
            try:
                self._sched.add(handle, loop, False, due)
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
        delay: float | None = None,
        not_before: datetime | float | None = None,
        key: Hashable | None = None,
        durable: bool | None = None,
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
        delay: float | None = None,
        not_before: datetime | float | None = None,
        key: Hashable | None = None,
        durable: bool | None = None,
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
        delay: float | None = None,
        not_before: datetime | float | None = None,
        key: Hashable | None = None,
        durable: bool | None = None,
        **kwargs: Any,
    ) -> TaskHandle[Any]:
        """As ``submit``, but raise QueueFull instead of waiting for room. Loop thread.

        A durable task is written to the journal soon after, not before this
        returns: ``await sync_journal()`` to know it is on disk.
        """
        is_coro, max_retries, timeout = self._check(
            "submit_nowait", fn, priority, task_id, max_retries, timeout, keep_result
        )
        due = None
        if key is not None or delay is not None or not_before is not None:
            due = self._check_when(key, delay, not_before)
        row = None
        if durable is not None or self._journaled:
            row = self._durable_row(fn, args, kwargs, durable, priority, max_retries, timeout, keep_result, key)
        loop = self._caller_loop("submit_nowait")
        handle = self._handle(loop, task_id, fn, args, kwargs, is_coro, priority, max_retries, timeout, keep_result)
        if key is not None:
            handle._key = key
        if row is not None:
            self._journal_sched.add_durable(handle, loop, False, due, row, None)
            return handle
        self._sched.add(handle, loop, False, due)
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
        durable: bool | None = None,
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
        durable: bool | None = None,
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
        durable: bool | None = None,
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
        durable: bool | None = None,
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
        durable: bool | None = None,
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

        ``durable``: as for ``submit``; the whole batch is on disk when this
        returns.

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
        rows = None
        if durable is not None or self._journaled:
            path = self._durable_path(fn, durable)
            if path is not None:
                options = (priority, max_retries, timeout, keep_result, None)
                rows = [(path, pickled_spec((args, None, *options))) for args in batch]
        handle = self._handle
        # An empty batch still goes to add_many, which refuses a queue that is shutting down.
        handles: list[TaskHandle[Any]] = [
            handle(loop, None, fn, args, None, is_coro, priority, max_retries, timeout, keep_result) for args in batch
        ]
        if rows is not None:
            # Durable: staged for add_many, and on disk before this returns (one barrier for the batch).
            stage = self._journal_sched.stage
            for task, row in zip(handles, rows, strict=True):
                stage(task, row, None)
        try:
            while True:
                try:
                    self._sched.add_many(handles, loop)
                except QueueFull:
                    await self._sched.wait_for_room(loop, n)
                else:
                    break
        except BaseException:
            if rows is not None:
                for task in handles:
                    self._journal_sched.unstage(task)
            raise
        if rows is not None:
            await self.sync_journal()
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
        delay: float | None = None,
        not_before: datetime | float | None = None,
        key: Hashable | None = None,
        durable: bool | None = None,
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
        delay: float | None = None,
        not_before: datetime | float | None = None,
        key: Hashable | None = None,
        durable: bool | None = None,
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
        delay: float | None = None,
        not_before: datetime | float | None = None,
        key: Hashable | None = None,
        durable: bool | None = None,
        **kwargs: Any,
    ) -> TaskFuture[Any]:
        """As ``submit``, for sync code: returns a ``concurrent.futures.Future``.

        Blocks the calling thread while a bounded queue is full. Any thread
        except the queue's loop thread, where blocking would deadlock (there,
        use ``await submit()``); it may be called before the queue starts.
        """
        running = asyncio.events._get_running_loop()
        bound = self._sched.at_loop.loop
        if running is not None and (bound is None or running is bound):
            raise RuntimeError(
                "submit_blocking() was called on the queue's event loop thread, where blocking "
                "would deadlock; use `await queue.submit(...)` there"
            )
        is_coro, max_retries, timeout = self._check(
            "submit_blocking", fn, priority, task_id, max_retries, timeout, keep_result
        )
        due = None
        if key is not None or delay is not None or not_before is not None:
            due = self._check_when(key, delay, not_before)
        row = None
        if durable is not None or self._journaled:
            row = self._durable_row(fn, args, kwargs, durable, priority, max_retries, timeout, keep_result, key)
        task = Task(task_id, fn, args, kwargs or None, is_coro, priority, max_retries, timeout, keep_result, key)
        future: TaskFuture[Any] = TaskFuture(self)
        task._cfuture = future
        if row is None:
            # On the thread of some other event loop, never block it: QueueFull instead.
            self._sched.add(task, None, running is None, due)
            future.task_id = task._id
            return future
        ack: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._journal_sched.add_durable(task, None, running is None, due, row, functools.partial(_settle_ack, ack))
        future.task_id = task._id
        ack.result()  # raises JournalError if the row could not be written
        return future

    def _durable_row(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        durable: bool | None,
        priority: int,
        max_retries: int,
        timeout: float | None,
        keep: bool,
        key: Hashable | None,
    ) -> tuple[str, bytearray] | None:
        # The journal row of a durable task (handler path, pickled spec), or
        # None for a task that is not durable; raises before anything changes.
        path = self._durable_path(fn, durable)
        if path is None:
            return None
        return path, pickled_spec((args, kwargs or None, priority, max_retries, timeout, keep, key))

    def _durable_path(self, fn: Callable[..., Any], durable: bool | None) -> str | None:
        # The import path of a durable task's handler, or None for a task
        # that is not durable; raises before anything changes.
        if durable is not None:
            check_bool("durable", durable)
        if not self._journaled:
            if durable:
                raise ValueError("durable=True needs a queue with a journal: HybridQueue(journal='tasks.db')")
            return None
        if durable is False:
            return None
        failed = self._journal_sched.journal.failed
        if failed is not None:
            raise JournalError(f"the journal can take no more tasks: {failed}; submit with durable=False") from failed
        last_ref, path = self._last_path
        if last_ref is None or last_ref() is not fn:
            path = handler_path(fn)  # imports the module to check the path: once per new handler
            try:
                self._last_path = (weakref.ref(fn), path)
            except TypeError:  # not weakly referenceable: not cached
                pass
        return path

    async def _add_durable(
        self, handle: TaskHandle[Any], loop: asyncio.AbstractEventLoop, due: float | None, row: tuple[str, bytearray]
    ) -> TaskHandle[Any]:
        # submit() of a durable task: returns once its row is on disk.
        ack: asyncio.Future[None] = loop.create_future()

        at_loop = self._sched.at_loop

        def done(error: BaseException | None) -> None:  # the journal's writer thread
            # Through the queue's bridge (bound to this loop by add(), or
            # add() raised): a commit's acknowledgements wake the loop once.
            assert at_loop.bridge is not None
            at_loop.bridge.post(_settle_ack_on_loop, ack, error)

        while True:
            try:
                self._journal_sched.add_durable(handle, loop, False, due, row, done)
            except QueueFull:
                await self._sched.wait_for_room(loop)
            else:
                break
        # Not shielded: a submitter cancelled here cancels only its wait (the
        # task is queued, and its row goes to disk all the same).
        await ack
        return handle

    async def sync_journal(self) -> None:
        """Return once every durable task submitted so far (``submit_nowait`` included) is on disk.

        Raises RuntimeError for a queue without a journal. Loop thread.
        """
        if not self._journaled:
            raise RuntimeError("sync_journal() needs a queue with a journal: HybridQueue(journal='tasks.db')")
        loop = self._caller_loop("sync_journal")
        ack: asyncio.Future[None] = loop.create_future()
        self._journal_sched.barrier(lambda error: loop.call_soon_threadsafe(_settle_ack_on_loop, ack, error))
        await ack

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
        # short branches; the options of time and keys are _check_when's.
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

    def _check_when(
        self, key: Hashable | None, delay: float | None, not_before: datetime | float | None
    ) -> float | None:
        # The checks of key, delay and not_before (after _check's, before
        # anything changes); returns the time of the queue's clock the task
        # is due at, None when that is now or past (it is queued at once).
        due = None
        if delay is not None or not_before is not None:
            if delay is not None and not_before is not None:
                raise TypeError("pass delay= (seconds from now) or not_before= (a moment), not both")
            now = self._sched.clock()
            if delay is not None:
                due = now + check_span("delay", delay)
            elif isinstance(not_before, datetime):
                if not_before.tzinfo is None or not_before.utcoffset() is None:
                    raise ValueError(
                        f"not_before must be a timezone-aware datetime, got the naive {not_before!r}; "
                        "e.g. datetime.now(timezone.utc) + timedelta(minutes=10)"
                    )
                due = now + (not_before.timestamp() - self._sched.wall())
                if due - now > MAX_SECONDS:
                    raise ValueError(f"not_before must be at most ten years ahead, got {not_before!r}")
            else:
                due = check_moment("not_before", not_before)
                if due - now > MAX_SECONDS:
                    raise ValueError(
                        f"not_before={not_before!r} is {(due - now) / _YEAR:.0f} years ahead on the queue's clock; "
                        "a float not_before is a time of queue.time() (monotonic), not of time.time(): "
                        "pass a timezone-aware datetime for a wall-clock moment, or delay= seconds"
                    )
            if due <= now:
                due = None
        if key is not None:
            check_key(key)
            if not self._sched._keyed:
                # Every check passed: the heap holds lanes before this task
                # is accepted (see Lanes.use_keys).
                self._sched.use_keys()
        return due

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
        holder = current_holder()
        handle: TaskHandle[Any]
        if holder is None or holder.sched is not self._sched:
            handle = TaskHandle(loop=loop)
        else:
            handle = ChildHandle(loop=loop)
        fill_record(handle, task_id, fn, args, kwargs or None, is_coro, priority, max_retries, timeout, keep_result)
        handle._queue_ref = self
        return handle

    def _clock_view(self) -> tuple[int | None, bool]:
        """For ``hybrid_queue.testing.FakeClock``: the loop's thread, and whether the queue is quiet.

        Quiet: nothing runs or waits to run and every retry and expiry waits
        on an armed timer (see ``Scheduler.quiet``); a queue that does not
        run tasks (not started, or stopped) is quiet. Any thread.
        """
        sched = self._sched
        return sched.loop_thread, not sched.life.claims or sched.quiet()

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


def _settle_ack(ack: concurrent.futures.Future[None], error: BaseException | None) -> None:
    if error is None:
        ack.set_result(None)
    else:
        ack.set_exception(error)


def _settle_ack_on_loop(ack: asyncio.Future[None], error: BaseException | None) -> None:
    if ack.done():
        return
    if error is None:
        ack.set_result(None)
    else:
        ack.set_exception(error)


def _no_loop(method: str) -> RuntimeError:
    return RuntimeError(
        f"{method}() must be called from a coroutine on the queue's event loop; "
        "from plain threads use submit_blocking()"
    )
