"""Periodic tasks: a ``Schedule`` and the rules that say when its runs are due (``every``, ``cron``).

A schedule is an entry of the scheduler's timer heap (see ``_delays``). When
it comes due, it starts a run (an ordinary task, with the schedule's options,
id ``(name, n)``) and waits for its next due time. Times are kept on the
queue's clock (monotonic); a cron rule works in wall-clock time in its time
zone, through ``cronsim`` (the ``cron`` extra), and maps each occurrence to
the queue's clock when it computes it, so a DST change is the cron
library's to get right, and a run is never started twice for one occurrence.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ._scheduler import Scheduler
    from ._task import Record

__all__ = ["Cron", "Every", "Rule", "Schedule"]

# More missed occurrences than this (a process suspended for a day under a
# schedule of every second) are counted, not listed.
_MAX_LISTED = 1024


class Rule(Protocol):
    """When a schedule's runs are due, on the queue's clock; ``offset`` is wall time minus that clock."""

    def first(self, now: float, offset: float) -> float:
        """The due time of the first run."""

    def due_between(self, due: float, now: float, offset: float) -> tuple[list[float], int, float]:
        """The occurrences from ``due`` (which came) to ``now``: the latest ones, how many more, the next after now."""

    def next_after(self, now: float, offset: float) -> float:
        """The first occurrence after ``now`` (a schedule resumed)."""


class Every:
    """Runs every ``interval`` seconds: at ``start + k * interval``, with ``start`` the first due time."""

    __slots__ = ("_anchor", "delay", "interval")

    def __init__(self, interval: float, delay: float) -> None:
        self.interval = interval
        self.delay = delay
        self._anchor = 0.0

    def first(self, now: float, offset: float) -> float:
        self._anchor = now + self.delay
        return self._anchor

    def due_between(self, due: float, now: float, offset: float) -> tuple[list[float], int, float]:
        n = max(math.floor((now - due) / self.interval), 0) + 1
        listed = min(n, _MAX_LISTED)
        occurrences = [due + i * self.interval for i in range(n - listed, n)]
        return occurrences, n - listed, due + n * self.interval

    def next_after(self, now: float, offset: float) -> float:
        k = math.floor((now - self._anchor) / self.interval) + 1
        return self._anchor + max(k, 0) * self.interval

    def __repr__(self) -> str:
        return f"every {self.interval:g} s"


class Cron:
    """Runs at the occurrences of a cron expression in the time zone ``tz`` (via ``cronsim``)."""

    __slots__ = ("_iter", "_wall", "expr", "tz")

    def __init__(self, expr: str, tz: tzinfo) -> None:
        self.expr = expr
        self.tz = tz
        self._iter: Any = None
        self._wall: datetime | None = None

    def _start(self, wall: float) -> float:
        from cronsim import CronSim  # checked importable by check_cron

        # Strictly after ``wall``; the iterator is kept, so that a repeated
        # hour after a DST change (fold=1) is not mistaken for the first.
        self._iter = CronSim(self.expr, datetime.fromtimestamp(wall, self.tz))
        self._wall = next(self._iter)
        return self._wall.timestamp()

    def first(self, now: float, offset: float) -> float:
        return self._start(now + offset) - offset

    def due_between(self, due: float, now: float, offset: float) -> tuple[list[float], int, float]:
        occurrences = [due]
        while len(occurrences) < _MAX_LISTED:
            self._wall = next(self._iter)
            at = self._wall.timestamp() - offset
            if at > now:
                return occurrences, 0, at
            occurrences.append(at)
        # A jump over more occurrences than that (the wall clock set ahead
        # by a year under a rule of every minute): not walked one by one
        # under the scheduler's lock. The rest count as one.
        return occurrences, 1, self._start(now + offset) - offset

    def next_after(self, now: float, offset: float) -> float:
        return self._start(now + offset) - offset

    def __repr__(self) -> str:
        return f"cron {self.expr!r} in {self.tz}"


class Schedule:
    """A periodic task of a queue, made by ``HybridQueue.every`` or ``HybridQueue.cron``.

    Each run is an ordinary task (results, retries, timeouts, events), with
    the id ``(name, n)``: ``n`` numbers the runs, passing over an id still
    known to the queue (so it may run ahead of ``runs``). When a due time comes:

    - occurrences missed meanwhile (the loop was blocked, the process
      suspended) are merged into one run with
      ``coalesce=True`` (the default), or each tried in turn;
    - a run more than ``misfire_grace`` seconds late is not started (None:
      any lateness is fine) and counts in ``missed``;
    - with ``overlap=False`` (the default), a run is not started while the
      previous one is still pending or running, and counts in ``skipped``.

    ``runs``, ``missed`` and ``skipped`` count since the schedule was made.
    Its methods may be called from any thread.
    """

    def __init__(
        self,
        sched: Scheduler,
        rule: Every | Cron,
        name: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
        is_coro: bool,
        *,
        priority: int,
        key: Any,
        max_retries: int,
        timeout: float | None,
        keep_result: bool,
        misfire_grace: float | None,
        coalesce: bool,
        overlap: bool,
    ) -> None:
        self.name = name
        """Its name, unique among the queue's schedules: the first half of each run's id."""
        self.priority = priority
        """The priority of its runs."""
        self.key = key
        """The key of its runs (see ``HybridQueue.limit``), or None."""
        self.misfire_grace = misfire_grace
        """Seconds a run may start late; None: any lateness."""
        self.coalesce = coalesce
        """Whether occurrences missed together make one run."""
        self.overlap = overlap
        """Whether a run may start while the previous one is still pending or running."""
        self.runs = 0
        """Runs started."""
        self._seq = 0  # the number of the last run's id (see last_task_id)
        self.missed = 0
        """Occurrences that started no run: coalesced into another, or later than ``misfire_grace``."""
        self.skipped = 0
        """Occurrences that started no run because the previous run was still pending or running."""
        # What the scheduler reads and writes under its lock.
        self._sched = sched
        self._rule = rule
        self._fn = fn
        self._args = args
        self._kwargs = kwargs
        self._is_coro = is_coro
        self._max_retries = max_retries
        self._timeout = timeout
        self._keep = keep_result
        self._ticket: int | None = None
        self._paused = False
        self._removed = False
        self._last: Record | None = None
        now = sched.clock()
        self._due = rule.first(now, sched.wall() - now)

    @property
    def next_run(self) -> float | None:
        """When the next run is due, on the queue's clock (see ``HybridQueue.time``); None if paused or removed."""
        return None if self._paused or self._removed else self._due

    @property
    def next_run_at(self) -> datetime | None:
        """When the next run is due, as a UTC ``datetime`` of the queue's wall clock; None if paused or removed."""
        due = self.next_run
        if due is None:
            return None
        now = self._sched.clock()
        return datetime.fromtimestamp(due + (self._sched.wall() - now), UTC)

    @property
    def paused(self) -> bool:
        """True between ``pause()`` and ``resume()``."""
        return self._paused

    @property
    def removed(self) -> bool:
        """True once ``remove()`` was called (or the queue shut down)."""
        return self._removed

    @property
    def last_task_id(self) -> tuple[str, int] | None:
        """The id of the latest run, for ``get_result`` or ``status``; None before the first."""
        last = self._last
        return None if last is None else last._id

    def pause(self) -> bool:
        """Start no run until ``resume()``; a run already started goes on. False if already paused or removed."""
        return self._sched.pause_schedule(self)

    def resume(self) -> bool:
        """Start runs again, from the first due time after now (what fell due meanwhile is not made up).

        False if not paused.
        """
        return self._sched.resume_schedule(self)

    def remove(self) -> bool:
        """End the schedule for good; a run already started goes on. False if already removed."""
        return self._sched.remove_schedule(self)

    def __repr__(self) -> str:
        state = "removed" if self._removed else "paused" if self._paused else f"next at {self._due:.3f}"
        return f"<Schedule {self.name!r} {self._rule!r}, {state}, runs={self.runs}>"
