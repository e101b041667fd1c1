"""A task's record (the handle async callers await, or a Task for sync callers), its states and its result."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import enum
import functools
import traceback as _traceback
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, Self, TypeAlias, TypeVar

from ._nesting import add_waiting_callback, current_holder, remove_waiting_callback, thread_slot, wait_lending

if TYPE_CHECKING:
    from ._clock import TimerHandle
    from ._interrupt import Interruptible
    from ._queue import HybridQueue

__all__ = ["ChildHandle", "TaskFuture", "TaskHandle", "TaskId", "TaskResult", "TaskStatus"]

T = TypeVar("T")

TaskId: TypeAlias = "str | int | float | bytes | uuid.UUID | tuple[TaskId | None, ...]"
"""What a task id may be: types whose hashing and comparison run no user code (ids are looked up
under the queue's lock). Generated ids are ints."""


class TaskStatus(enum.Enum):
    """Where a task is in its life.

    ``PENDING -> RUNNING -> COMPLETED | FAILED | CANCELLED``, with
    ``RUNNING -> RETRY_WAIT -> PENDING`` for each retry, ``SCHEDULED ->
    PENDING`` at the due time of a task submitted with ``delay`` or
    ``not_before``, and ``CANCELLED`` reachable from every state that is not
    terminal. A terminal state never changes again.
    """

    SCHEDULED = "scheduled"
    PENDING = "pending"
    RUNNING = "running"
    RETRY_WAIT = "retry_wait"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True for COMPLETED, FAILED and CANCELLED."""
        return self in _TERMINAL


_TERMINAL = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})


class TaskResult(NamedTuple, Generic[T]):
    """The outcome of a finished task, as kept in the result store. Immutable.

    ``error`` is the final exception object (its ``__traceback__`` intact),
    ``None`` on success; for a cancelled task it is a ``CancelledError``.
    ``traceback`` formats the failure on demand. ``retry_count`` is the
    number of retries made (attempts minus one). ``duration_ms`` runs from
    the first attempt's start to the end; it is 0.0 for a task cancelled
    before it ever ran.
    """

    task_id: TaskId
    status: TaskStatus
    result: T | None = None
    error: BaseException | None = None
    retry_count: int = 0
    duration_ms: float = 0.0

    @property
    def traceback(self) -> str | None:
        """The failure's formatted traceback, or None when the task did not fail."""
        if self.status is not TaskStatus.FAILED or self.error is None:
            return None
        return "".join(_traceback.format_exception(self.error))

    @property
    def success(self) -> bool:
        """True when the handler returned a value (status COMPLETED)."""
        return self.status is TaskStatus.COMPLETED


# The fields of a task's record, on Task and on TaskHandle alike.
_RECORD_FIELDS = (
    "_args",
    "_attempt",
    "_cfuture",
    "_fn",
    "_is_coro",
    "_keep",
    "_key",
    "_kwargs",
    "_lender",
    "_max_retries",
    "_priority",
    "_retry_count",
    "_runner",
    "_started_at",
    "_status",
    "_ticket",
    "_timeout",
    "_timer",
    "_waiters",
    "_id",
)


class _RecordFields:
    """The types of a record's fields, for both kinds of record (Task, TaskHandle); no state of its own."""

    __slots__ = ()

    _id: Any
    _fn: Callable[..., Any] | None
    _args: tuple[Any, ...]
    _kwargs: dict[str, Any] | None
    _is_coro: bool
    _keep: bool
    # The key whose limits and turn the task waits for (see _lanes); None: no key.
    _key: Any
    # A handler waiting for this task, which its slot goes to when it ends (see Scheduler.lend).
    _lender: Any
    _priority: int
    _max_retries: int
    _timeout: float | None
    _status: TaskStatus
    _retry_count: int
    _attempt: int
    _ticket: int
    _started_at: float
    _cfuture: TaskFuture[Any] | None
    _waiters: list[asyncio.Future[TaskResult[Any]]] | None
    _runner: asyncio.Task[Any] | concurrent.futures.Future[Any] | Interruptible | None
    _timer: TimerHandle | None


class TaskHandle(asyncio.Future[T], _RecordFields):
    """What ``await queue.submit(...)`` returns: an ``asyncio.Future`` of the handler's value.

    ``await handle`` returns the handler's value, raises its final exception,
    or raises ``CancelledError`` if the task was cancelled. Because it is a
    real future, ``asyncio.gather``, ``asyncio.wait`` and ``asyncio.wait_for``
    take it as it is. ``cancel()`` cancels the task in the queue, wherever it
    is (see ``HybridQueue.cancel_task``).

    Loop thread only, like every asyncio future.
    """

    # The handle of a task submitted from async code is also the scheduler's
    # record of it (one object per task, not two): the record's fields,
    # private, beside the queue it belongs to. See Task for what they mean.
    # Not _cfuture: a handle is never a sync caller's future's record (see
    # Scheduler.deliver). One slot fewer keeps the object in the allocator's
    # size class it had before the record gained _key, which the coroutine
    # path measured at 2 to 3 % of its time per task.
    __slots__ = (*(f for f in _RECORD_FIELDS if f != "_cfuture"), "_queue_ref")

    # No __init__ of its own: made by ``TaskHandle(loop=loop)`` (the C
    # initializer, no Python frame), then filled by ``fill_record`` and given
    # ``_queue_ref`` by the queue before anyone else sees it.
    _queue_ref: HybridQueue

    @property
    def task_id(self) -> TaskId:
        """The task's id in its queue (generated, or the ``task_id`` given to submit). Read-only."""
        task_id: TaskId = self._id
        return task_id

    def cancel(self, msg: Any | None = None) -> bool:
        """Cancel the task; True if it was still unfinished.

        A pending or retry-waiting task leaves the queue at once; a running
        coroutine handler is cancelled; a running sync handler is abandoned
        (its thread finishes, its result is discarded).
        """
        if self.done():
            return False
        # This very task: its id may belong to a newer one once this one's
        # result is gone, while this handle is still being settled.
        return self._queue_ref._cancel_record(self)

    def _settle(self, result: TaskResult[T]) -> None:
        # Called on the loop thread, once, when the task is terminal.
        if result.status is TaskStatus.COMPLETED:
            self.set_result(result.result)  # type: ignore[arg-type]
        elif result.status is TaskStatus.CANCELLED:
            asyncio.Future.cancel(self)
        else:
            error = result.error
            assert error is not None
            if isinstance(error, StopIteration):
                # A future cannot carry StopIteration (it would end the
                # awaiting generator); wrap it as Python 3.12 does.
                wrapped = RuntimeError(f"the handler raised {error!r}")
                wrapped.__cause__ = error
                error = wrapped
            self.set_exception(error)
            # Retrieved or not, the failure is recorded elsewhere; no GC warning.
            self._log_traceback = False

    def __repr__(self) -> str:
        return f"<TaskHandle task_id={self.task_id!r} {self._state.lower()}>"


class ChildHandle(TaskHandle[T]):
    """The handle of a task submitted from inside a handler: one whose waits lend the waiting handler's slot.

    Only handles made there need the check, so that awaiting a handle
    anywhere else costs what awaiting an ``asyncio.Future`` does. Loop
    thread only.
    """

    __slots__ = ()

    def add_done_callback(self, fn: Callable[[Self], object], /, *, context: contextvars.Context | None = None) -> None:
        """As ``asyncio.Future.add_done_callback``. Loop thread.

        Added by a handler of the same queue that waits (``await``,
        ``asyncio.gather``, ``asyncio.wait``), it lends the handler's worker
        slot until the handler goes on (see the module ``_nesting``).
        """
        holder = current_holder()
        if holder is not None and (wait := add_waiting_callback(self, holder, fn, context)) is not None:
            fn = wait
        _add_done_callback(self, fn, context=context)

    def remove_done_callback(self, fn: Callable[[Self], object], /) -> int:
        """As ``asyncio.Future.remove_done_callback``. Loop thread."""
        removed = asyncio.Future.remove_done_callback(self, fn)
        # Only callbacks really removed (not already run or scheduled) end their waits.
        if removed and (holder := current_holder()) is not None and holder.loan is not None:
            remove_waiting_callback(self, holder, fn)
        return removed


_add_done_callback = asyncio.Future.add_done_callback
_FINISHED = concurrent.futures._base.FINISHED


class TaskFuture(concurrent.futures.Future[T]):
    """What ``queue.submit_blocking(...)`` returns: a ``concurrent.futures.Future``.

    ``result()`` returns the handler's value or raises its final exception;
    ``task_id`` names the task in the queue. ``cancel()`` cancels the task in
    the queue wherever it is, and a future that ends cancelled is seen as done
    by ``concurrent.futures.wait`` and ``as_completed``.

    Safe from any thread.
    """

    def __init__(self, queue: HybridQueue) -> None:
        super().__init__()
        # Set by submit_blocking before it returns the future.
        self.task_id: TaskId = None  # type: ignore[assignment]
        self._queue_ref = queue

    def result(self, timeout: float | None = None) -> T:
        """As ``concurrent.futures.Future.result``. Any thread.

        Called by a sync handler of the same queue, it lends the handler's
        worker slot while it waits, so that the task it waits for can run
        whatever ``workers`` is.
        """
        if self._state == _FINISHED and self._exception is None:
            # A finished future never changes again: no lock to read it.
            return self._result  # type: ignore[return-value]
        slot = thread_slot()
        if slot is None or slot[0] is None:  # not in a sync handler: nothing to lend
            return super().result(timeout)
        return wait_lending(self._queue_ref, functools.partial(super().result, timeout), slot, self.task_id)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """As ``concurrent.futures.Future.exception``, lending the slot as ``result`` does. Any thread."""
        slot = thread_slot()
        if slot is None or slot[0] is None or self._state == _FINISHED:
            return super().exception(timeout)
        return wait_lending(self._queue_ref, functools.partial(super().exception, timeout), slot, self.task_id)

    def running(self) -> bool:
        """True while an attempt of the task runs (not while it waits for a worker or a retry). Any thread."""
        if self.done() or self.task_id is None:
            return False
        try:
            return self._queue_ref.status(self.task_id) is TaskStatus.RUNNING
        except KeyError:  # its result is gone already
            return False

    def cancel(self) -> bool:
        """Cancel the task; True if the future is (now) cancelled, False if it finished otherwise."""
        if not self.done():
            # On success the queue settles this future (as cancelled) before
            # cancel_task returns; on failure the task has ended some other
            # way and its outcome is on its way here: do not overrule it.
            self._queue_ref.cancel_task(self.task_id)
        return self.cancelled()

    def _settle(self, result: TaskResult[T]) -> None:
        # Any thread, no queue lock held, once. The caller may cancel through
        # the queue concurrently; the queue decides, and this mirrors it.
        try:
            if result.status is TaskStatus.COMPLETED:
                self.set_result(result.result)  # type: ignore[arg-type]
            elif result.status is TaskStatus.FAILED:
                assert result.error is not None
                self.set_exception(result.error)
            elif super().cancel():
                # A plain cancel() leaves the state CANCELLED, which wait()
                # and as_completed() do not count as done: executors move it on
                # when the work item is dequeued. No work item will, so move it
                # here, under the future's own (reentrant) lock.
                with self._condition:
                    if self._state == concurrent.futures._base.CANCELLED:
                        self.set_running_or_notify_cancel()
        except concurrent.futures.InvalidStateError:
            pass


class Task(_RecordFields):
    """The scheduler's record of one task submitted from sync code (its handle is a TaskFuture). Private.

    A task submitted from async code has its TaskHandle as its record; both
    carry the same fields, and the scheduler treats them alike. Fields are
    read and written only under the scheduler's lock, except: those that
    never change once the task is accepted (``_id``, ``_is_coro``,
    ``_timeout``); those owned by whoever holds the task's worker slot; and
    ``_fn``, ``_args``, ``_kwargs``, set at creation and cleared by
    ``Scheduler.deliver`` once the task is terminal (a reader that finds
    ``_fn`` None does not start the handler).
    """

    __slots__ = _RECORD_FIELDS

    def __init__(
        self,
        task_id: Any,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
        is_coro: bool,
        priority: int,
        max_retries: int,
        timeout: float | None,
        keep_result: bool = True,
        key: Any = None,
    ) -> None:
        fill_record(self, task_id, fn, args, kwargs, is_coro, priority, max_retries, timeout, keep_result)
        self._key = key
        self._cfuture = None

    @property
    def task_id(self) -> Any:
        """The task's id (None until the queue accepts it and generates one)."""
        return self._id


Record = Task | TaskHandle[Any]
"""What the scheduler keeps per live task: a Task, or the TaskHandle that is its own record."""


def fill_record(
    record: Record,
    task_id: Any,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any] | None,
    is_coro: bool,
    priority: int,
    max_retries: int,
    timeout: float | None,
    keep_result: bool = True,
) -> None:
    """Set every field of a new record: a PENDING task that has not run, without a key (set after, if any)."""
    record._id = task_id
    record._fn = fn
    record._args = args
    record._kwargs = kwargs
    record._is_coro = is_coro
    record._priority = priority
    record._max_retries = max_retries
    record._timeout = timeout
    # False: the result goes to the handle, future and get_result waiters
    # only, never into the result store.
    record._keep = keep_result
    record._key = None
    record._lender = None
    record._status = TaskStatus.PENDING
    record._retry_count = 0
    # Bumped at each start; a late completion of an abandoned attempt (a
    # timed-out or cancelled sync handler) carries an old number and is dropped.
    record._attempt = 0
    record._ticket = -1
    record._started_at = 0.0
    record._waiters = None
    # The asyncio task awaiting a coroutine handler, or the executor's
    # future of a sync one; set by the slot holder, used to interrupt it.
    record._runner = None
    record._timer = None
