"""What a handler can ask about the task it runs: its id, its attempt, and whether it was given up on."""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import TYPE_CHECKING

from ._nesting import current_holder, thread_slot
from ._task import TaskId, TaskStatus

if TYPE_CHECKING:
    from ._task import Record

__all__ = ["TaskContext", "current_task"]


class TaskContext:
    """The attempt of a task that the calling handler is running. Read-only.

    Got from :func:`current_task`; valid for the attempt it was got in.
    """

    __slots__ = ("_record", "attempt")

    def __init__(self, record: Record, attempt: int) -> None:
        self._record = record
        self.attempt = attempt
        """The attempt being run, counting from 1."""

    @property
    def task_id(self) -> TaskId:
        """The task's id."""
        task_id: TaskId = self._record._id
        return task_id

    @property
    def cancelled(self) -> bool:
        """True once this attempt was given up on: the task was cancelled or the attempt timed out.

        Its outcome will be discarded, so the handler should stop soon; the
        worker slot stays held until it returns. Any thread.
        """
        record = self._record
        return record._status is not TaskStatus.RUNNING or record._attempt != self.attempt

    def raise_if_cancelled(self) -> None:
        """Raise ``concurrent.futures.CancelledError`` if :attr:`cancelled`; a cooperative check point."""
        if self.cancelled:
            raise concurrent.futures.CancelledError(
                f"task {self.task_id!r} attempt {self.attempt} was cancelled or timed out"
            )

    def __repr__(self) -> str:
        return f"<TaskContext task_id={self.task_id!r} attempt={self.attempt} cancelled={self.cancelled}>"


def current_task() -> TaskContext:
    """The task whose handler is calling: a sync handler on a thread pool, or a coroutine handler.

    A sync handler run by the queue's thread pool (or one passed in) calls
    it from its thread; a coroutine handler from its own body, on the loop
    thread (a task it creates is not the handler: there it raises). A
    coroutine handler learns of cancellation by ``CancelledError``, so
    ``raise_if_cancelled()`` is for sync handlers. Raises RuntimeError
    anywhere else (a process pool's worker, a thread or task that runs no
    handler).
    """
    slot = thread_slot()
    claim = slot[0] if slot is not None else None
    if claim is None:
        # A coroutine handler is awaited in its worker's own asyncio task,
        # whose context holds the worker's Holder (see _nesting).
        holder = current_holder()
        if holder is not None and asyncio.events._get_running_loop() is not None:
            if asyncio.current_task() is holder.worker():
                claim = holder.running
    if claim is None:
        raise RuntimeError(
            "current_task() was called outside a handler of a HybridQueue; call it in a sync handler run on the "
            "queue's thread pool, or in the body of a coroutine handler (not in a task it created)"
        )
    return TaskContext(*claim)
