"""Admission: a new task enters the heap, or is refused before anything changes; submitters wait for room.

Part of ``Scheduler`` (see ``_state``): every method takes the scheduler's
one lock, or is called with it held (``_locked``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from ._errors import refusal
from ._events import EventKind
from ._lifecycle import Lifecycle
from ._state import NOTHING, SCHEDULED, SchedulerState
from ._task import Record

__all__ = ["Admission"]


class Admission(SchedulerState):
    """Accepting tasks into the heap: ``add``, ``add_many``, the wait for room, and the end of accepting."""

    def add(
        self,
        task: Record,
        loop: asyncio.AbstractEventLoop | None = None,
        block: bool = False,
        due: float | None = None,
    ) -> None:
        """Accept ``task`` into the heap, or raise without changing anything.

        Raises QueueShutDown, DuplicateTaskError, or QueueFull (when the heap
        is at ``max_queue_size`` and ``block`` is false; with ``block`` the
        calling thread waits for room, so never pass it on a loop thread).
        ``loop``: the caller's running loop, which its handle belongs to; the
        queue binds to it if it has no loop yet. ``due``: a time of the
        queue's clock before which the task must not start (SCHEDULED until
        then, outside the bound of ``max_queue_size``).
        """
        refused = ""
        with self._guard():
            while True:
                bound = self.at_loop.loop
                if not self.life.accepts or (bound is not None and bound.is_closed()):
                    refused = "closed"
                    break
                task_id = task._id
                if task_id is not None and (task_id in self._live or self._stored_locked(task_id)):
                    refused = "duplicate"
                    break
                if not self.max_queue_size or due is not None or self._pending_locked() < self.max_queue_size:
                    break
                if not block:
                    refused = "full"
                    break
                self._thread_putters += 1
                try:
                    self._room.wait()
                finally:
                    self._thread_putters -= 1
            if refused:
                claimed = NOTHING
            else:
                self._accept_locked(task, loop, due)
                claimed = self._claim_locked() if self._free and self.life.claims else NOTHING
            dropped = self._take_dropped_locked() if self._dropped else None
        del dropped
        if refused:  # raised after the lock: a message's repr() is user code
            raise refusal(refused, task._id, self.max_queue_size, self.forked, self.life.accepts)
        if claimed:
            self.launch(claimed)

    def add_many(self, tasks: Sequence[Record], loop: asyncio.AbstractEventLoop) -> None:
        """Accept every task of ``tasks`` in one hold of the lock, or none of them.

        The tasks come without ids (submit_many gives none); each is given a new one. Raises
        QueueShutDown, or QueueFull when they do not all fit below
        ``max_queue_size`` now (retries re-entering a full queue can leave no
        room even for one); never blocks. ``loop`` as for ``add``.
        """
        refused = ""
        with self.lock:
            bound = self.at_loop.loop
            if not self.life.accepts or (bound is not None and bound.is_closed()):
                refused = "closed"
            elif tasks and self.max_queue_size and self._pending_locked() + len(tasks) > self.max_queue_size:
                refused = "full"
            else:
                for task in tasks:
                    self._accept_locked(task, loop)
            claimed = self._claim_locked() if not refused and self._free and self.life.claims else NOTHING
        if refused:
            raise refusal(refused, None, self.max_queue_size, self.forked, self.life.accepts, len(tasks))
        if claimed:
            self.launch(claimed)

    def _accept_locked(self, task: Record, loop: asyncio.AbstractEventLoop | None, due: float | None = None) -> None:
        # Into the heap (or its lane, or the timer heap until ``due``) and
        # the live index; the caller claims free slots after.
        task_id = task._id
        if loop is not self.at_loop.loop:
            self._bind_locked(loop)
        if task_id is None:
            task_id = next(self._auto_ids)
            # Generated ids are new ints; only an id chosen by a caller,
            # and not a str, can equal one still in use.
            while self._chosen_ids and (task_id in self._live or task_id in self._store):
                task_id = next(self._auto_ids)
            task._id = task_id
        else:
            if type(task_id) is not str:
                self._chosen_ids = True
            if task_id in self._store:  # an old result of this id, expired but not yet swept
                self._expired += 1
                self._dropped.append(self._store.discard(task_id))
                if self._listeners.callbacks:
                    self._emit_locked(EventKind.EXPIRED, task_id, 0, self.clock())
        self._live[task_id] = task
        self._submitted += 1
        if self._listeners.callbacks:
            self._emit_locked(EventKind.SUBMITTED, task_id, 0, self.clock())
        if due is None and self._plain:  # no key in use, no aging: see Lanes.use_keys
            task._ticket = self._heap.push(task._priority, task)
        elif due is not None:
            task._status = SCHEDULED
            self._scheduled += 1
            task._ticket = self._at_locked(task, due)
        else:
            self._enqueue_locked(task, self.clock())

    async def wait_for_room(self, loop: asyncio.AbstractEventLoop, room: int = 1) -> None:
        """Return once the heap has ``room`` places below its bound, or the queue stopped accepting.

        On ``loop``, the caller's, which the queue binds to if it has none.
        """
        with self.lock:
            if not self.life.accepts or self._pending_locked() + room <= self.max_queue_size:
                return
            self._bind_locked(loop)  # the wake-up comes through the bound loop
            waiter = loop.create_future()
            self._loop_putters.append(waiter)
        try:
            await waiter
        finally:
            with self.lock:
                if waiter in self._loop_putters:
                    self._loop_putters.remove(waiter)

    def _room_freed_locked(self, n: int) -> None:
        if self._thread_putters:
            self._room.notify(n)
        if self._loop_putters:
            self.at_loop.soon(self._wake_loop_putters)

    def _wake_loop_putters(self) -> None:
        with self.lock:
            putters, self._loop_putters = self._loop_putters, []
        for waiter in putters:
            if not waiter.done():
                waiter.set_result(None)

    def stop_accepting(self) -> bool:
        """Refuse further submits, end every schedule and wake every blocked submitter; False if already stopped."""
        with self.lock:
            if not self.life.accepts:
                return False
            self.life.move(Lifecycle.DRAINING)
            for schedule in self._schedules.values():
                if schedule._ticket is not None:
                    self._due.remove(schedule._ticket)
                    schedule._ticket = None
                schedule._removed = True
                schedule._paused = False
            self._schedules.clear()
            self._room.notify_all()
            if self._loop_putters:
                self.at_loop.soon(self._wake_loop_putters)
            return True
