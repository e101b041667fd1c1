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

# Removed keys stay in the list until they reach the top or until they
# outnumber the live ones by this factor (and this floor): then the list is
# rebuilt, so memory stays proportional to what is really queued.
_COMPACT_FACTOR = 1
_COMPACT_FLOOR = 64

# Keys order by priority, then by arrival: key = -priority * 2**64 + seq.
# One int sorts as the tuple (-priority, seq) would, for any int priority,
# while fewer than 2**64 items have been pushed.
_SEQ_BITS = 64


class PriorityHeap(Generic[T]):
    """Max-priority heap with stable FIFO order inside one priority; items must not be None.

    The list holds only int keys, each naming one push; ``_items`` maps the
    key of every live entry to its item. Ints compare in C without calling
    back into Python, are not tracked by the garbage collector (a tuple per
    entry would be, and a deep queue would make every collection walk it),
    and two entries never compare their items. ``remove`` is O(1): the key
    leaves ``_items`` and is skipped when it surfaces in the list.
    """

    __slots__ = ("_items", "_keys", "_seq")

    def __init__(self) -> None:
        self._keys: list[int] = []
        self._items: dict[int, T] = {}
        self._seq = count()

    def __len__(self) -> int:
        """Number of live (not removed) entries."""
        return len(self._items)

    def push(self, priority: int, item: T) -> int:
        """Add ``item``; return the ticket that ``remove`` takes."""
        key = (-priority << _SEQ_BITS) + next(self._seq)
        heapq.heappush(self._keys, key)
        self._items[key] = item
        return key

    def pop(self) -> T:
        """Remove and return the live item of highest priority, oldest first.

        Raises ``IndexError`` when no live entry is left.
        """
        item = self.take()
        if item is None:
            raise IndexError("pop from an empty PriorityHeap")
        return item

    def take(self) -> T | None:
        """As ``pop``, but None when no live entry is left: one call where ``len`` and ``pop`` take two."""
        keys = self._keys
        items = self._items
        while keys:
            item = items.pop(heapq.heappop(keys), None)
            if item is not None:
                if not items:
                    # A dict never shrinks its table; an empty one is free to
                    # replace, so a burst leaves no memory behind. Any keys
                    # left are stale.
                    self._items = {}
                    self._keys = []
                return item
        return None

    def first(self) -> int | None:
        """The priority of the live item ``take`` would return next, or None when none is left."""
        keys = self._keys
        items = self._items
        while keys:
            key = keys[0]
            if key in items:
                # key = -priority * 2**64 + seq, with 0 <= seq < 2**64.
                return -(key >> _SEQ_BITS)
            heapq.heappop(keys)
        return None

    def remove(self, ticket: int) -> None:
        """Drop the entry with ``ticket``; it must be live in this heap.

        O(1) amortized. Memory follows: the list and the table are rebuilt
        to the live size once removed keys outnumber live ones, and given
        back whole when the last live entry goes, with no pop needed.
        """
        items = self._items
        del items[ticket]
        live = len(items)
        if not live:
            # As in take(): replaced, not cleared, so the table a burst grew
            # goes too (and clear() would do no better for the list).
            self._items = {}
            self._keys = []
            return
        stale = len(self._keys) - live
        if stale > _COMPACT_FLOOR and stale > _COMPACT_FACTOR * live:
            self._compact()

    def drain(self) -> list[T]:
        """Remove and return every live item, highest priority first."""
        items = [self._items[key] for key in sorted(self._items)]
        self._keys.clear()
        self._items.clear()
        return items

    def drain_ranked(self) -> list[tuple[int, T]]:
        """As ``drain``, each item with the priority it was pushed with."""
        ranked = [(-(key >> _SEQ_BITS), self._items[key]) for key in sorted(self._items)]
        self._keys.clear()
        self._items.clear()
        return ranked

    def _compact(self) -> None:
        # The live keys in ascending order already form a valid heap. The
        # table is copied too: a dict never shrinks its own, and a copy of
        # one with deleted entries is sized for the live ones. Both are
        # O(live) and follow more than `live` removals: O(1) per removal.
        self._keys = sorted(self._items)
        self._items = dict(self._items)
