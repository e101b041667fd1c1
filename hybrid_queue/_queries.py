"""Reads of the scheduler's state: a task's status, its result or a waiter for it, stats, quiet.

Part of ``Scheduler`` (see ``_state``): every method takes the scheduler's
one lock for a consistent view; none changes a task's state (``forget``
drops a stored result, ``drop_waiter`` a waiter).
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Any

from ._errors import unknown_task
from ._state import RETRY_WAIT, SchedulerState
from ._stats import QueueStats
from ._task import TaskResult, TaskStatus
from ._validate import is_plain_id

__all__ = ["Queries"]


class Queries(SchedulerState):
    """What callers ask the scheduler: status, results, stats, and whether it is quiet."""

    def status(self, task_id: Hashable) -> TaskStatus:
        """The task's current status; raises UnknownTaskError if not known."""
        if not is_plain_id(task_id):  # never accepted, and not to be hashed under the lock
            raise unknown_task(task_id)
        with self.lock:
            task = self._live.get(task_id)
            if task is not None:
                return task._status
            result = self._store.get(task_id, self.clock())
        if result is None:
            raise unknown_task(task_id)
        return result.status

    def result_or_waiter(
        self, task_id: Hashable, loop: asyncio.AbstractEventLoop
    ) -> TaskResult[Any] | asyncio.Future[TaskResult[Any]]:
        """The stored result, or a future on ``loop`` (the caller's) that the result will resolve."""
        if not is_plain_id(task_id):  # never accepted, and not to be hashed under the lock
            raise unknown_task(task_id)
        with self.lock:
            if self.at_loop.loop is not None:
                self._bind_locked(loop)  # raises on a loop that is not the queue's
            task = self._live.get(task_id)
            if task is None:
                result = self._store.get(task_id, self.clock())
                if result is None:
                    raise unknown_task(task_id)
                return result
            self._bind_locked(loop)  # waiting needs the loop that results are delivered on
            waiter: asyncio.Future[TaskResult[Any]] = loop.create_future()
            if task._waiters is None:
                task._waiters = []
            task._waiters.append(waiter)
            return waiter

    def drop_waiter(self, task_id: Hashable, waiter: asyncio.Future[Any]) -> None:
        """Forget a get_result waiter that gave up (timeout or cancellation)."""
        with self.lock:
            task = self._live.get(task_id)
            if task is not None and task._waiters and waiter in task._waiters:
                task._waiters.remove(waiter)

    def forget(self, task_id: Hashable) -> bool:
        """Drop a stored result; False if there was none."""
        if not is_plain_id(task_id):  # never accepted, and not to be hashed under the lock
            return False
        with self.lock:
            dropped = self._store.discard(task_id)
            released = self._take_dropped_locked()
        del released
        return dropped is not None  # its last reference goes here, after the lock

    def quiet(self) -> bool:
        """True when nothing runs or waits to run, and every retry and expiry waits on an armed timer.

        What a fake clock waits for before it moves time on: until then, work
        in flight may still arm a timer (a failure in a pool thread posts its
        retry to the loop) that the move must not skip.
        """
        with self.lock:
            if self._heap or self._free != self.workers:
                return False
            if self._due and (self._due_timer is None or self._due_posted):
                return False  # the timer of what is scheduled is on its way to being armed
            if self._expiry_armed and self._expiry_timer is None:
                return False  # the first _expire of a chain is on its way to the loop
            return all(t._timer is not None for t in self._live.values() if t._status is RETRY_WAIT)

    def stats(self) -> QueueStats:
        """A snapshot of every counter, taken atomically."""
        with self.lock:
            return QueueStats(
                submitted=self._submitted,
                scheduled=self._scheduled,
                pending=self._pending_locked(),
                running=self._running,
                retrying=self._retrying,
                completed=self._completed,
                failed=self._failed,
                cancelled=self._cancelled,
                retries=self._retries,
                workers=self.workers,
                busy_workers=self.workers - self._free,
                results_stored=len(self._store),
                results_expired=self._expired,
                results_evicted=self._evicted,
            )
