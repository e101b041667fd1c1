"""The result store: finished tasks' results, expired by age and bounded by count.

A plain data structure: no lock, no timers. Its owner (the scheduler) holds
its lock around every call and arms one timer for ``next_expiry``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import Any

from ._task import TaskResult

__all__ = ["ResultStore"]

_NONE: list[Any] = []  # shared "nothing evicted"; never mutated


class ResultStore:
    """Results keyed by task id, oldest first.

    Every result lives ``ttl`` seconds from the moment it is stored. Because
    the ttl is one number for the whole store, insertion order is also expiry
    order, so expiring is popping from the front, and the ``max_results``
    bound evicts the result closest to expiry. Reading a result does not
    extend its life.
    """

    __slots__ = ("_ids", "_results", "_stale", "_stale_slots", "_times", "max_results", "ttl")

    def __init__(self, ttl: float, max_results: int) -> None:
        self.ttl = ttl
        self.max_results = max_results
        self._results: dict[Hashable, TaskResult[Any]] = {}
        # One slot per add(), oldest first: the id and its expiry time, in two
        # deques so that storing a result makes no object of its own (this
        # runs once per task). Invariants:
        # - times are non-decreasing from front to back;
        # - a slot is live when it is the last slot of its id and the id has
        #   a result; any other slot is stale (its result was discarded, or
        #   its id was stored again), and _stale[id] counts the stale slots
        #   of id, which all come before its live slot;
        # - _stale_slots is the sum of _stale; a slot going stale while
        #   stale slots outnumber results compacts the deques, so they hold
        #   about twice the results at most however many are discarded.
        # Slots go stale rather than being removed, because removing one from
        # the middle of a deque costs as much as the deque is long.
        self._ids: deque[Hashable] = deque()
        self._times: deque[float] = deque()
        self._stale: dict[Hashable, int] = {}
        self._stale_slots = 0

    def __len__(self) -> int:
        return len(self._results)

    def __contains__(self, task_id: Hashable) -> bool:
        return task_id in self._results

    def add(self, result: TaskResult[Any], now: float) -> list[TaskResult[Any]]:
        """Store ``result``; return the older results the size bound evicted.

        Evicted and expired results are returned rather than dropped, so the
        owner can let go of them after releasing its lock: a result's
        ``__del__`` is user code.
        """
        task_id = result.task_id
        results = self._results
        if task_id in results:
            # A reused id (its old result expired but not yet swept): the old
            # slot goes stale and the new one at the back sets its expiry.
            self._go_stale(task_id)
        results[task_id] = result
        self._ids.append(task_id)
        self._times.append(now + self.ttl)
        if len(results) <= self.max_results:
            return _NONE
        evicted = []
        while len(results) > self.max_results:
            oldest = self._pop_front()
            if oldest is not None:
                evicted.append(oldest)
        return evicted

    def get(self, task_id: Hashable, now: float) -> TaskResult[Any] | None:
        """The stored result, or None if absent or past its expiry."""
        result = self._results.get(task_id)
        times = self._times
        if result is None or times[0] > now:
            return result
        # Some result is due and not swept yet: this one, if its live slot is
        # among the due ones, that is, if they hold more slots of its id
        # than it has stale ones.
        due = 0
        for slot_id, expires_at in zip(self._ids, times, strict=True):
            if expires_at > now:
                break
            if slot_id is task_id or slot_id == task_id:
                due += 1
        return None if due > self._stale.get(task_id, 0) else result

    def discard(self, task_id: Hashable) -> TaskResult[Any] | None:
        """Remove one result and return it, or None if it was not there."""
        result = self._results.pop(task_id, None)
        if result is not None:
            self._go_stale(task_id)
        return result

    def expire(self, now: float) -> list[TaskResult[Any]]:
        """Remove every result whose time is up and return them."""
        times = self._times
        expired = []
        while times and times[0] <= now:
            result = self._pop_front()
            if result is not None:
                expired.append(result)
        if expired and not self._results:
            # Give back the tables a large burst grew (dicts never shrink);
            # any slot left is stale.
            self.clear()
        return expired

    def next_expiry(self) -> float | None:
        """When the oldest result expires, or None when the store is empty."""
        ids, stale = self._ids, self._stale
        # Stale slots at the front would only wake the owner early, for nothing.
        while ids and ids[0] in stale:
            self._pop_front()
        return self._times[0] if ids else None

    def clear(self) -> None:
        """Drop every result."""
        self._results = {}
        self._ids = deque()
        self._times = deque()
        self._stale = {}
        self._stale_slots = 0

    def _pop_front(self) -> TaskResult[Any] | None:
        # Remove the oldest slot: its result if the slot was live, else None.
        task_id = self._ids.popleft()
        self._times.popleft()
        stale = self._stale.get(task_id)
        if not stale:
            return self._results.pop(task_id)
        if stale == 1:
            del self._stale[task_id]
        else:
            self._stale[task_id] = stale - 1
        self._stale_slots -= 1
        return None

    def _go_stale(self, task_id: Hashable) -> None:
        # The last slot of task_id no longer holds a result.
        self._stale[task_id] = self._stale.get(task_id, 0) + 1
        self._stale_slots += 1
        if self._stale_slots > len(self._results):
            self._compact()

    def _compact(self) -> None:
        # Drop every stale slot: O(slots), at most twice the results, and
        # done only once stale slots outnumber them, so O(1) per call that
        # made a slot stale.
        stale = self._stale
        ids: deque[Hashable] = deque()
        times: deque[float] = deque()
        for task_id, expires_at in zip(self._ids, self._times, strict=True):
            count = stale.get(task_id)
            if count:
                if count == 1:
                    del stale[task_id]
                else:
                    stale[task_id] = count - 1
                continue
            ids.append(task_id)
            times.append(expires_at)
        self._ids, self._times = ids, times
        self._stale_slots = 0
