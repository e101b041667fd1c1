"""The result store: finished tasks' results, expired by age and bounded by count.

A plain data structure: no lock, no timers. Its owner (the scheduler) holds
its lock around every call and arms one timer for ``next_expiry``.
"""

from __future__ import annotations

from collections import OrderedDict
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

    __slots__ = ("_entries", "max_results", "ttl")

    def __init__(self, ttl: float, max_results: int) -> None:
        self.ttl = ttl
        self.max_results = max_results
        # Invariant: expiry times are non-decreasing from front to back.
        self._entries: OrderedDict[Hashable, tuple[float, TaskResult[Any]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, task_id: Hashable) -> bool:
        return task_id in self._entries

    def add(self, result: TaskResult[Any], now: float) -> list[TaskResult[Any]]:
        """Store ``result``; return the older results the size bound evicted.

        Evicted and expired results are returned rather than dropped, so the
        owner can let go of them after releasing its lock: a result's
        ``__del__`` is user code.
        """
        entries = self._entries
        # A reused id (its old result expired but not yet swept) must go to
        # the back, or the expiry order would break.
        entries.pop(result.task_id, None)
        entries[result.task_id] = (now + self.ttl, result)
        if len(entries) <= self.max_results:
            return _NONE
        evicted = []
        while len(entries) > self.max_results:
            evicted.append(entries.popitem(last=False)[1][1])
        return evicted

    def get(self, task_id: Hashable, now: float) -> TaskResult[Any] | None:
        """The stored result, or None if absent or past its expiry."""
        entry = self._entries.get(task_id)
        if entry is None or entry[0] <= now:
            return None
        return entry[1]

    def discard(self, task_id: Hashable) -> TaskResult[Any] | None:
        """Remove one result and return it, or None if it was not there."""
        entry = self._entries.pop(task_id, None)
        return None if entry is None else entry[1]

    def expire(self, now: float) -> list[TaskResult[Any]]:
        """Remove every result whose time is up and return them."""
        entries = self._entries
        expired = []
        while entries:
            task_id, (expires_at, result) = next(iter(entries.items()))
            if expires_at > now:
                break
            del entries[task_id]
            expired.append(result)
        if expired and not entries:
            # Give back the table a large burst grew (dicts never shrink).
            self._entries = OrderedDict()
        return expired

    def next_expiry(self) -> float | None:
        """When the oldest result expires, or None when the store is empty."""
        if not self._entries:
            return None
        return next(iter(self._entries.values()))[0]

    def clear(self) -> None:
        """Drop every result."""
        self._entries.clear()
