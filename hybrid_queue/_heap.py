"""The priority heap: higher priority first, FIFO within a priority, lazy removal.

A plain data structure: no lock, no asyncio. Its owner (the scheduler) holds
its lock around every call.
"""

from __future__ import annotations

import heapq
from itertools import count
from typing import Generic, TypeVar

__all__ = ["PriorityHeap"]

T = TypeVar("T")

# Removed entries stay in the list until they reach the top or until they
# outnumber the live ones by this factor (and this floor): then the list is
# rebuilt, so memory stays proportional to what is really queued.
_COMPACT_FACTOR = 1
_COMPACT_FLOOR = 64


class PriorityHeap(Generic[T]):
    """Max-priority heap with stable FIFO order inside one priority.

    Entries are ``(-priority, ticket, item)`` tuples; tickets come from one
    counter, so two entries never compare their items. ``remove`` is O(1):
    the ticket is marked and the entry skipped when it surfaces.
    """

    __slots__ = ("_entries", "_removed", "_tickets")

    def __init__(self) -> None:
        self._entries: list[tuple[int, int, T]] = []
        self._removed: set[int] = set()
        self._tickets = count()

    def __len__(self) -> int:
        """Number of live (not removed) entries."""
        return len(self._entries) - len(self._removed)

    def push(self, priority: int, item: T) -> int:
        """Add ``item``; return the ticket that ``remove`` takes."""
        ticket = next(self._tickets)
        heapq.heappush(self._entries, (-priority, ticket, item))
        return ticket

    def pop(self) -> T:
        """Remove and return the live item of highest priority, oldest first.

        Raises ``IndexError`` when no live entry is left.
        """
        entries = self._entries
        removed = self._removed
        while True:
            _, ticket, item = heapq.heappop(entries)
            if removed and ticket in removed:
                removed.discard(ticket)
                continue
            return item

    def remove(self, ticket: int) -> None:
        """Drop the entry with ``ticket``; it must be live in this heap."""
        self._removed.add(ticket)
        removed = len(self._removed)
        if removed > _COMPACT_FLOOR and removed > _COMPACT_FACTOR * (len(self._entries) - removed):
            self._compact()

    def drain(self) -> list[T]:
        """Remove and return every live item, highest priority first."""
        items = []
        while len(self):
            items.append(self.pop())
        self._entries.clear()
        self._removed.clear()
        return items

    def _compact(self) -> None:
        removed = self._removed
        self._entries = [e for e in self._entries if e[1] not in removed]
        heapq.heapify(self._entries)
        removed.clear()
