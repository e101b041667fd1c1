"""The result store: finished tasks' results, expired by age and bounded by count and bytes.

A plain data structure: no lock, no timers. Its owner (the scheduler) holds
its lock around every call and arms one timer for ``next_expiry``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from types import MethodDescriptorType
from typing import Any

from ._task import TaskResult

__all__ = ["ResultStore", "shallow_size"]

_NONE: list[Any] = []  # shared "nothing evicted"; never mutated
_object_sizeof: Callable[[object], int] = object.__sizeof__
# Results of these types are small and of fixed size: never counted, not sized.
_FIXED_SMALL = frozenset({type(None), bool, int, float})


def shallow_size(value: object) -> int:
    """The size in bytes of ``value`` itself: its ``__sizeof__``, if written in C, else its basic size.

    Shallow: a container counts its own size (for a list, its array of
    pointers), not its items'; bytes, str and numpy arrays that own their
    data count it. This is ``sys.getsizeof(value)`` without the garbage
    collector's header on containers, and faster (no bound method is made).
    A ``__sizeof__`` written in Python (pandas objects have one) is not
    called: the store runs under its owner's lock, where user code must not
    run, so such an object counts ``object.__sizeof__(value)``.
    """
    sizeof = type(value).__sizeof__
    # Builtin and C-extension types define __sizeof__ in C: a method descriptor.
    if type(sizeof) is MethodDescriptorType:
        size: int = sizeof(value)
        return size
    return _object_sizeof(value)


class ResultStore:
    """Results keyed by task id, oldest first.

    Every result lives ``ttl`` seconds from the moment it is stored. Because
    the ttl is one number for the whole store, insertion order is also expiry
    order, so expiring is popping from the front, and the ``max_results``
    bound evicts the result closest to expiry. Reading a result does not
    extend its life.

    ``max_bytes`` (None: no bound) bounds the total of the stored results'
    sizes, each estimated once, when stored, by ``shallow_size(result.result)``:
    shallow, so a list of large items counts little more than its pointers;
    a result under ``min_counted`` bytes (1 KiB), or a number or None,
    counts as 0. Past it, the oldest results are evicted as for
    ``max_results``. The
    newest result is always kept: one larger than the whole budget evicts
    every older result and is stored alone, so that its task's result can
    still be read back, as with ``max_results=1``.

    What the store lets go of may run user code (a result's or an id's
    ``__del__``): results come back from the calls that drop them, and what
    may hold the last reference to an id is appended to ``released``, a list
    the owner may replace with its own, to drop after its lock.
    """

    __slots__ = (
        "_expires",
        "_ids",
        "_nbytes",
        "_results",
        "_sizes",
        "_stale",
        "_stale_slots",
        "_times",
        "max_bytes",
        "max_results",
        "min_counted",
        "released",
        "ttl",
    )

    def __init__(self, ttl: float, max_results: int, *, max_bytes: int | None = None, min_counted: int = 1024) -> None:
        self.ttl = ttl
        self.max_results = max_results
        self.max_bytes = max_bytes
        # Results smaller than this count as 0 bytes and are not entered in
        # _sizes: the budget is there for large results, and the many small
        # ones then cost one size lookup each, not a dict entry.
        self.min_counted = min_counted
        # Each stored result, its expiry time and its size as it was stored
        # (a result may grow later; dropping it subtracts what was added), by
        # id. _nbytes is the sum of _sizes, which holds only the results of
        # min_counted bytes or more; _results and _expires share their keys.
        self._results: dict[Hashable, TaskResult[Any]] = {}
        self._expires: dict[Hashable, float] = {}
        self._sizes: dict[Hashable, int] = {}
        self._nbytes = 0
        # One slot per add(), oldest first: the id and a time, in two deques
        # so that storing a result makes no object for the garbage collector
        # to track (this runs once per task). Invariants:
        # - times are non-decreasing from front to back, and a live slot's
        #   time is at least its result's expiry (add() can be given a `now`
        #   a little older than the last: its callers read the clock before
        #   taking the lock);
        # - a slot is live when it is the last slot of its id and the id has
        #   a result; any other slot is stale (its result was discarded, or
        #   its id was stored again), and _stale[id] counts the stale slots
        #   of id, which all come before its live slot;
        # - _stale_slots is the sum of _stale; a slot going stale while
        #   stale slots outnumber results compacts the deques, so they never
        #   hold more than twice the most results held since.
        # Slots go stale rather than being removed, because removing one from
        # the middle of a deque costs as much as the deque is long.
        self._ids: deque[Hashable] = deque()
        self._times: deque[float] = deque()
        self._stale: dict[Hashable, int] = {}
        self._stale_slots = 0
        # Stale ids and replaced deques, perhaps their last references.
        self.released: list[Any] = []

    def __len__(self) -> int:
        return len(self._results)

    def __contains__(self, task_id: Hashable) -> bool:
        return task_id in self._results

    @property
    def nbytes(self) -> int:
        """The total size of the stored results, as estimated when each was stored."""
        return self._nbytes

    def add(
        self,
        result: TaskResult[Any],
        now: float,
        _fixed_small: frozenset[type] = _FIXED_SMALL,
        _in_c: Any = MethodDescriptorType,
    ) -> list[TaskResult[Any]]:
        """Store ``result``; return the older results the count and byte bounds evicted, oldest first.

        Evicted and expired results are returned rather than dropped, so the
        owner can let go of them after releasing its lock: a result's
        ``__del__`` is user code. ``result`` itself is never evicted.
        """
        # Runs once per task: the byte budget costs a number or None one type
        # check, any other result one size lookup (the last two parameters
        # are constants, bound as locals), and a result that counts the rest.
        task_id = result.task_id
        results = self._results
        if task_id in results:
            # A reused id (its old result expired but not yet swept): the old
            # slot goes stale and the new one at the back sets its expiry.
            # The old result is replaced here, not returned: the owner
            # discards it first (see the scheduler's _accept_locked).
            self._go_stale(task_id)
        expires_at = now + self.ttl
        results[task_id] = result
        self._expires[task_id] = expires_at
        times = self._times
        self._ids.append(task_id)
        times.append(expires_at if not times or times[-1] <= expires_at else times[-1])
        evicted = _NONE
        if len(results) > self.max_results:
            evicted = []
            while len(results) > self.max_results:
                oldest = self._pop_front()
                if oldest is not None:
                    evicted.append(oldest)
        value = result.result
        if type(value) in _fixed_small or self.max_bytes is None:
            return evicted
        # shallow_size(value), inlined
        sizeof: Any = type(value).__sizeof__
        size: int = sizeof(value) if type(sizeof) is _in_c else _object_sizeof(value)
        if size < self.min_counted:
            return evicted
        return self._count_bytes(task_id, size, evicted)

    def _count_bytes(self, task_id: Hashable, size: int, evicted: list[TaskResult[Any]]) -> list[TaskResult[Any]]:
        # The just-stored result of task_id counts ``size`` bytes: evict the
        # oldest results (onto ``evicted``) while the total is over the budget.
        max_bytes = self.max_bytes
        assert max_bytes is not None
        self._sizes[task_id] = size
        self._nbytes += size
        if self._nbytes > max_bytes:
            if evicted is _NONE:
                evicted = []
            # The newest result's slot is the last: while another result is
            # left, the front slot is an older one's (or stale).
            while self._nbytes > max_bytes and len(self._results) > 1:
                oldest = self._pop_front()
                if oldest is not None:
                    evicted.append(oldest)
        return evicted

    def get(self, task_id: Hashable, now: float) -> TaskResult[Any] | None:
        """The stored result, or None if absent or past its expiry."""
        result = self._results.get(task_id)
        if result is None or self._expires[task_id] <= now:
            return None
        return result

    def discard(self, task_id: Hashable) -> TaskResult[Any] | None:
        """Remove one result and return it, or None if it was not there."""
        result = self._results.pop(task_id, None)
        if result is not None:
            del self._expires[task_id]
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
        """When the oldest result expires (dropping stale slots at the front), or None when the store is empty."""
        ids, stale = self._ids, self._stale
        # Stale slots at the front would only wake the owner early, for nothing.
        while ids and ids[0] in stale:
            self._pop_front()
        return self._times[0] if ids else None

    def clear(self) -> None:
        """Drop every result."""
        self.released.append(self._ids)
        self._results = {}
        self._expires = {}
        self._sizes = {}
        self._nbytes = 0
        self._ids = deque()
        self._times = deque()
        self._stale = {}
        self._stale_slots = 0

    def _pop_front(self) -> TaskResult[Any] | None:
        # Remove the oldest slot: its result if the slot was live, else None.
        task_id = self._ids.popleft()
        self._times.popleft()
        if task_id not in self._stale:
            del self._expires[task_id]
            if self._sizes:
                self._nbytes -= self._sizes.pop(task_id, 0)
            return self._results.pop(task_id)
        self._one_stale_gone(task_id)
        self._stale_slots -= 1
        self.released.append(task_id)  # perhaps its last reference
        return None

    def _one_stale_gone(self, task_id: Hashable) -> None:
        # One of task_id's stale slots (the oldest) is being dropped.
        count = self._stale[task_id]
        if count == 1:
            del self._stale[task_id]
        else:
            self._stale[task_id] = count - 1

    def _go_stale(self, task_id: Hashable) -> None:
        # The last slot of task_id no longer holds a result (discarded, or
        # replaced by a new one): its counted size, if any, goes too.
        if self._sizes:
            self._nbytes -= self._sizes.pop(task_id, 0)
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
            if task_id in stale:
                self._one_stale_gone(task_id)
                continue
            ids.append(task_id)
            times.append(expires_at)
        self.released.append(self._ids)  # the last references of the stale ids
        self._ids, self._times = ids, times
        self._stale = {}  # empty now; a new one gives back the table it grew to
        self._stale_slots = 0
