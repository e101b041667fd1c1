"""Due times: tasks scheduled for later, periodic schedules and held keys, on one timer.

Everything that waits for a moment of the queue's clock (a task submitted
with ``delay`` or ``not_before``, the next run of a ``Schedule``, a key held
by its rate or a pause) is an entry of one heap ordered by due time, and one
timer on the loop is armed for the earliest: an idle queue with 100,000
scheduled tasks wakes once per due time, not once per task. A cancelled
entry leaves the heap at once (O(1), see ``PriorityHeap.remove``); the timer
armed for it fires, finds nothing due and sleeps again.

Part of ``Scheduler`` (see ``_state``): every method takes the scheduler's
one lock, or is called with it held (``_locked``).
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any

from ._errors import refusal
from ._events import EventKind
from ._lanes import Lane, Lanes
from ._periodic import Schedule
from ._state import NOTHING, PENDING
from ._task import Task

__all__ = ["Delays"]

logger = logging.getLogger("hybrid_queue")

# Due times are kept as integer nanoseconds (the heap's keys are ints), and
# an entry counts as due up to this many nanoseconds early: a timer armed
# for `due - now` seconds reads the clock at `due` give or take a rounding,
# and must not find its own entry a hair in the future forever.
_EARLY_NS = 1_000


_RETRY_EARLY = 0.001


def _ns(seconds: float) -> int:
    return math.ceil(seconds * 1e9)


class Delays(Lanes):
    """The timer heap and its one timer (see the module docstring)."""

    def _at_locked(self, item: Any, when: float) -> int:
        # Put ``item`` in the timer heap for ``when``; returns its ticket.
        ticket = self._due.push(-_ns(when), item)
        if when < self._due_at:
            self._rearm_locked()
        return ticket

    def _rearm_locked(self) -> None:
        # The earliest due time may be earlier than the timer: arm it again,
        # on the loop (timers are loop-only). Before start() nothing is armed:
        # start() arms the timer for what was scheduled before it.
        if not self.life.claims or self.at_loop.loop is None:
            return
        if threading.get_ident() == self.at_loop.thread:
            self._arm_due_locked()
        elif not self._due_posted:
            self._due_posted = True
            self.at_loop.soon(self._arm_due)

    def _arm_due(self) -> None:
        with self.lock:
            self._due_posted = False
            self._arm_due_locked()

    def _arm_due_locked(self, at_least: float = 0.0) -> None:
        # Loop thread. One timer, for the earliest entry of the heap, at
        # least ``at_least`` seconds from now.
        first = self._due.first()
        due = math.inf if first is None or not self.life.claims else -first / 1e9
        if due == self._due_at and self._due_timer is not None:
            return
        if self._due_timer is not None:
            self._due_timer.cancel()
            self._due_timer = None
        self._due_at = due
        if due < math.inf:
            delay = max(due - self.clock(), at_least)
            if delay > 0.0:
                self._due_timer = self.at_loop.later(delay, self._on_due)
            else:
                # Already due (the queue started late): now, not at the next
                # move of a fake clock. No timer meanwhile: quiet() waits for it.
                self.at_loop.soon(self._on_due)

    def _on_due(self) -> None:
        # Loop thread: the timer fired. Everything due moves on; then the
        # timer sleeps until the next entry.
        with self.lock:
            if self._due_timer is not None:
                self._due_timer.cancel()  # this one, fired, or one armed since a call posted by _arm_due_locked
                self._due_timer = None
            self._due_at = math.inf
            now = self.clock()
            horizon = -(_ns(now) + _EARLY_NS)
            due: list[Any] = []
            # Collected first: what they schedule (a lane held again, a
            # schedule's next run) waits for the next timer, even if due now.
            while (first := self._due.first()) is not None and first >= horizon:
                due.append(self._due.take())
            for item in due:
                kind = item.__class__
                if kind is Lane:
                    self._lane_woken_locked(item, now)
                elif kind is Schedule:
                    self._fire_locked(item, now)
                else:
                    item._status = PENDING
                    self._scheduled -= 1
                    if self._plain:
                        item._ticket = self._heap.push(item._priority, item)
                    else:
                        self._enqueue_locked(item, now)
            # Fired with nothing due: a loop whose timers are whole
            # milliseconds (uvloop) fires up to one early, and runs a
            # timer of under half of one at once. Armed again for the
            # rest, it would spin until the due time: the next try is a
            # millisecond away at least (late by less than that, never early).
            self._arm_due_locked(0.0 if due else _RETRY_EARLY)
            claimed = self._claim_locked() if self._free else NOTHING
            dropped = self._take_dropped_locked()
        del dropped
        if claimed:
            self.launch(claimed)

    # ----------------------------------------------------------- schedules

    def add_schedule(self, schedule: Schedule) -> None:
        """Start ``schedule``: its first run is due at ``schedule.next_run``. Any thread.

        Raises QueueShutDown once shutdown began, ValueError for a name in use.
        """
        with self.lock:
            if not self.life.accepts:
                refused = "closed"
            elif schedule.name in self._schedules:
                refused = "name"
            else:
                refused = ""
                self._schedules[schedule.name] = schedule
                schedule._ticket = self._at_locked(schedule, schedule._due)
        if refused == "name":
            raise ValueError(
                f"a schedule named {schedule.name!r} exists on this queue; pass another name=, or remove() that one"
            )
        if refused:
            raise refusal(refused, None, self.max_queue_size, self.forked, self.life.accepts)

    def pause_schedule(self, schedule: Schedule) -> bool:
        """Stop ``schedule``'s runs until ``resume_schedule``; False if it was paused or removed. Any thread."""
        with self.lock:
            if schedule._ticket is None or self._schedules.get(schedule.name) is not schedule:
                return False
            self._due.remove(schedule._ticket)
            schedule._ticket = None
            schedule._paused = True
            return True

    def resume_schedule(self, schedule: Schedule) -> bool:
        """Start ``schedule``'s runs again from its next due time after now; False if not paused. Any thread."""
        now = self.clock()
        with self.lock:
            if not schedule._paused or self._schedules.get(schedule.name) is not schedule:
                return False
            schedule._paused = False
            schedule._due = schedule._rule.next_after(now, self.wall() - now)
            schedule._ticket = self._at_locked(schedule, schedule._due)
            return True

    def remove_schedule(self, schedule: Schedule) -> bool:
        """End ``schedule``: no run starts from now on (one running goes on); False if removed already. Any thread."""
        with self.lock:
            if self._schedules.get(schedule.name) is not schedule:
                return False
            del self._schedules[schedule.name]
            if schedule._ticket is not None:
                self._due.remove(schedule._ticket)
                schedule._ticket = None
            schedule._paused = False
            schedule._removed = True
            return True

    def schedules(self) -> list[Schedule]:
        """The schedules in force (paused ones included), in the order they were added. Any thread."""
        with self.lock:
            return list(self._schedules.values())

    def _fire_locked(self, schedule: Schedule, now: float) -> None:
        # Its due time came: start the runs due (see Schedule for the
        # misfire rules), then wait for the next one.
        schedule._ticket = None
        if not self.life.accepts:
            return  # shutting down: schedules end with the queue
        occurrences, extra, next_due = schedule._rule.due_between(schedule._due, now, self.wall() - now)
        # More than one occurrence came due while the loop could not look (a
        # blocked loop, a suspended process): all but the latest are
        # coalesced into one run, or each tried in turn.
        if schedule.coalesce:
            extra += len(occurrences) - 1
            occurrences = occurrences[-1:]
        schedule.missed += extra
        for due in occurrences:
            late = now - due
            # Within a millisecond is on time: a timer fires a little late always,
            # and up to one late on a loop whose timers count whole milliseconds.
            if schedule.misfire_grace is not None and late > schedule.misfire_grace + _RETRY_EARLY:
                schedule.missed += 1
                continue
            last = schedule._last
            if not schedule.overlap and last is not None and not last._status.is_terminal:
                schedule.skipped += 1
                continue
            self._start_run_locked(schedule, now)
        schedule._due = next_due
        schedule._ticket = self._at_locked(schedule, next_due)

    def _start_run_locked(self, schedule: Schedule, now: float) -> None:
        schedule.runs += 1
        # Ids number the runs; one taken (a task of the caller's, the stored
        # result of an earlier schedule of this name) is passed over.
        schedule._seq += 1
        task_id: Any = (schedule.name, schedule._seq)
        while task_id in self._live or self._stored_locked(task_id):
            schedule._seq += 1
            task_id = (schedule.name, schedule._seq)
        task = Task(
            task_id,
            schedule._fn,
            schedule._args,
            schedule._kwargs,
            schedule._is_coro,
            schedule.priority,
            schedule._max_retries,
            schedule._timeout,
            schedule._keep,
            schedule.key,
        )
        schedule._last = task
        if task_id in self._store:  # an old result of this id, expired but not yet swept
            self._expired += 1
            self._dropped.append(self._store.discard(task_id))
        self._live[task_id] = task
        self._submitted += 1
        if self._listeners.callbacks:
            self._emit_locked(EventKind.SUBMITTED, task_id, 0, now)
        if self._plain:
            task._ticket = self._heap.push(task._priority, task)
        else:
            self._enqueue_locked(task, now)
