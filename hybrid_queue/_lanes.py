"""Keys: per-key concurrency and rate limits, pauses, and round-robin turns across keys.

A task submitted with ``key=`` waits in its key's lane: a small priority heap
of its own. Once any key is in use the scheduler's heap holds lanes instead
of tasks (tasks without a key share the lane of ``None``, which has no
limits): a lane is in the heap while it has a waiting task and may start one
now, at the priority of its best task. Taking a lane from the heap starts its
best task and puts the lane back behind every other lane of the same
priority, so keys with work take turns, and a key with 100,000 waiting tasks
cannot starve one with 10. A lane held back by its limit is out of the heap:
it waits for one of its running tasks to end (concurrency), or for its due
time in the scheduler's timer heap (rate, pause), holding no worker and
blocking no other key.

Part of ``Scheduler`` (see ``_state``): every method takes the scheduler's
one lock, or is called with it held (``_locked``).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Hashable

from ._heap import PriorityHeap
from ._state import NOTHING, SchedulerState
from ._stats import KeyStats
from ._task import Record

__all__ = ["Lane", "Lanes", "Limit"]

# A bucket this close to a whole token (or to full) counts as holding it:
# refilling by float products must not turn an exact due time into one a
# hair early, to be looked at again and again at the same moment.
_TOKEN_SLACK = 1e-9
# The shortest wait a lane is woken after: a wake due at once (a rounding
# away) would come back within the same instant of a fake clock, forever.
_MIN_WAIT = 1e-5


class Limit:
    """What a key may do: at most ``concurrency`` tasks at once, ``rate`` starts per second with a ``burst``."""

    __slots__ = ("burst", "concurrency", "rate")

    def __init__(self, concurrency: int | None, rate: float | None, burst: int) -> None:
        self.concurrency = concurrency
        self.rate = rate
        self.burst = burst

    def __repr__(self) -> str:
        return f"Limit(concurrency={self.concurrency}, rate={self.rate}, burst={self.burst})"


class Lane:
    """One key's waiting tasks and the state of its limits. A plain structure, under the scheduler's lock."""

    __slots__ = (
        "heap",
        "key",
        "limit",
        "paused_until",
        "rank",
        "running",
        "stamp",
        "ticket",
        "tokens",
        "wake",
        "woken",
    )

    def __init__(self, key: Hashable, limit: Limit | None, now: float) -> None:
        self.key = key
        self.heap: PriorityHeap[Record] = PriorityHeap()
        self.limit = limit
        # Slots held by tasks of this key: from claim to the holder's finish().
        self.running = 0
        # The token bucket, refilled lazily: ``tokens`` as of ``stamp``; starts full.
        self.tokens = float(limit.burst) if limit is not None and limit.rate else 0.0
        self.stamp = now
        self.paused_until = -math.inf
        # Its entry in the scheduler's heap (None: not there), at priority ``rank``.
        self.ticket: int | None = None
        self.rank = 0
        # Its entry in the timer heap (None: none), due at ``woken``.
        self.wake: int | None = None
        self.woken = math.inf

    def refill(self, now: float) -> None:
        """Bring the bucket up to ``now``."""
        limit = self.limit
        if limit is not None and limit.rate and now > self.stamp:
            self.tokens = min(float(limit.burst), self.tokens + (now - self.stamp) * limit.rate)
        self.stamp = max(self.stamp, now)

    def held_for(self, now: float) -> float:
        """0.0 if the lane may start a task now; else seconds until it may (inf: until one of its tasks ends)."""
        wait = self.paused_until - now
        limit = self.limit
        if limit is None:
            return max(wait, 0.0)
        if limit.concurrency is not None and self.running >= limit.concurrency:
            return math.inf
        if limit.rate:
            self.refill(now)
            if self.tokens < 1.0 - _TOKEN_SLACK:
                wait = max(wait, (1.0 - self.tokens) / limit.rate)
        return max(wait, 0.0)

    def settled_for(self, now: float) -> float:
        """Seconds until an idle lane is as a new one would be (bucket full, pause over): then it may go."""
        wait = self.paused_until - now
        limit = self.limit
        if limit is not None and limit.rate:
            self.refill(now)
            if self.tokens < limit.burst - _TOKEN_SLACK:
                wait = max(wait, (limit.burst - self.tokens) / limit.rate)
        return max(wait, 0.0)


class Lanes(SchedulerState):
    """Keys: lanes, limits, pauses, and the turn of each key (see the module docstring)."""

    # ------------------------------------------------------------ entering

    def _enqueue_locked(self, task: Record, now: float) -> None:
        # Every way into the waiting state but the plain one (no key ever
        # used, no aging), which _accept_locked and _requeue inline.
        priority = task._priority
        if self._aging:
            # Static keys for a rising priority: waiting `aging` seconds is
            # worth one step, so ordering by priority - ceil(entered/aging)
            # now is ordering by priority + steps waited at any later time.
            priority -= math.ceil(now / self._aging)
        if not self._keyed:
            if task._key is None:
                task._ticket = self._heap.push(priority, task)
                return
            self._use_keys_locked(now)
        lane = self._lanes.get(task._key)
        if lane is None:
            lane = self._lanes[task._key] = Lane(task._key, self._limit_for(task._key), now)
        task._ticket = lane.heap.push(priority, task)
        self._waiting += 1
        if lane.ticket is None:
            self._lane_ready_locked(lane, now)
        elif priority > lane.rank:
            # Its best task is better than the one it queued with.
            self._heap.remove(lane.ticket)
            lane.rank = priority
            lane.ticket = self._heap.push(priority, lane)

    def use_keys(self) -> None:
        """Make the heap hold lanes from now on; called before the first task with a key is accepted. Any thread.

        The plain path (admission, retries, due times) puts tasks straight in
        the heap while ``_plain``; a task with a key must find it false.
        """
        now = self.clock()
        with self.lock:
            self._use_keys_locked(now)

    def _use_keys_locked(self, now: float) -> None:
        # From now on the heap holds lanes. Tasks already waiting move into
        # the lane of None in their order: O(n), once in a queue's life.
        if self._keyed:
            return
        self._keyed = True
        self._plain = False
        waiting = self._heap.drain_ranked()
        self._waiting = len(waiting)
        if not waiting:
            return
        lane = self._lanes[None] = Lane(None, None, now)
        for rank, task in waiting:
            # Best first, each with the rank it had (aged, if aging is on):
            # pushed again in that order, they keep their order.
            task._ticket = lane.heap.push(rank, task)
        self._lane_ready_locked(lane, now)

    # ----------------------------------------------------------- turns

    def _lane_take_locked(self, lane: Lane, now: float) -> Record:
        # The heap gave ``lane`` a slot: its best task starts; the lane goes
        # back behind the other lanes of its priority, if it may start more.
        lane.ticket = None
        task = lane.heap.take()
        assert task is not None, "a lane is in the heap only while it has a waiting task"
        self._waiting -= 1
        if lane.key is not None:  # tasks without a key report to no lane when they end (finish())
            lane.running += 1
        limit = lane.limit
        if limit is not None and limit.rate:
            lane.refill(now)
            lane.tokens -= 1.0
        self._lane_ready_locked(lane, now)
        return task

    def _lane_done_locked(self, task: Record, now: float) -> None:
        # The holder of a slot of this key's task reports back (finish()).
        lane = self._lanes[task._key]
        lane.running -= 1
        if lane.ticket is None:
            self._lane_ready_locked(lane, now)

    def _lane_ready_locked(self, lane: Lane, now: float) -> None:
        # Puts a lane that is out of the heap where it belongs: in the heap
        # if it has a task that may start now; waiting for its due time if
        # its rate or a pause holds it; waiting for a running task to end;
        # or, idle and settled, forgotten (a crawl of a million hosts keeps
        # only the lanes that have something to remember).
        if lane.heap:
            wait = lane.held_for(now)
            if wait == 0.0:
                rank = lane.heap.first()
                assert rank is not None
                lane.rank = rank
                lane.ticket = self._heap.push(rank, lane)
            elif wait < math.inf:
                self._wake_lane_locked(lane, now + max(wait, _MIN_WAIT))
            return
        if lane.running:
            return
        wait = lane.settled_for(now)
        if wait > 0.0:
            self._wake_lane_locked(lane, now + max(wait, _MIN_WAIT))
            return
        if lane.wake is not None:
            self._due.remove(lane.wake)
            lane.wake = None
        if self._lanes.get(lane.key) is lane:
            # A limit of its own stays in _exact_limits, found again with the key.
            del self._lanes[lane.key]

    def _wake_lane_locked(self, lane: Lane, when: float) -> None:
        if lane.wake is not None:
            if lane.woken <= when:
                return  # an earlier wake looks again then
            self._due.remove(lane.wake)
        lane.woken = when
        lane.wake = self._at_locked(lane, when)

    def _lane_woken_locked(self, lane: Lane, now: float) -> None:
        # Its due time came (see _delays): look again.
        lane.wake = None
        lane.woken = math.inf
        if lane.ticket is None:
            self._lane_ready_locked(lane, now)

    def _lane_remove_locked(self, task: Record, now: float) -> None:
        # A waiting task of a lane is cancelled.
        lane = self._lanes[task._key]
        lane.heap.remove(task._ticket)
        self._waiting -= 1
        if lane.ticket is None:
            self._lane_ready_locked(lane, now)
            return
        rank = lane.heap.first()
        if rank != lane.rank:
            self._heap.remove(lane.ticket)
            lane.ticket = None
            self._lane_ready_locked(lane, now)

    # ----------------------------------------------------------- limits

    def _limit_for(self, key: Hashable) -> Limit | None:
        limit = self._exact_limits.get(key)
        if limit is not None or key is None:
            return limit
        if type(key) is str:
            for pattern, pattern_limit in self._pattern_limits:
                if fnmatch.fnmatchcase(key, pattern):
                    return pattern_limit
        return None

    def set_limit(self, key: Hashable, pattern: str | None, limit: Limit | None) -> None:
        """Set (or, with None, clear) the limit of ``key``, or of every str key matching ``pattern``. Any thread."""
        now = self.clock()
        with self.lock:
            self._use_keys_locked(now)
            if pattern is None:
                if limit is None:
                    self._exact_limits.pop(key, None)
                else:
                    self._exact_limits[key] = limit
            else:
                # Set again, a pattern keeps its place in the order they are tried.
                patterns = [p for p, _ in self._pattern_limits]
                if pattern in patterns:
                    at = patterns.index(pattern)
                    if limit is None:
                        del self._pattern_limits[at]
                    else:
                        self._pattern_limits[at] = (pattern, limit)
                elif limit is not None:
                    self._pattern_limits.append((pattern, limit))
            for lane in list(self._lanes.values()):
                new = self._limit_for(lane.key)
                if new is lane.limit:
                    continue
                lane.refill(now)
                old_burst = lane.limit.burst if lane.limit is not None and lane.limit.rate else None
                lane.limit = new
                if new is not None and new.rate:
                    lane.tokens = float(new.burst) if old_burst is None else min(lane.tokens, float(new.burst))
                    lane.stamp = now
                self._recheck_lane_locked(lane, now)
            claimed = self._claim_locked() if self._free else NOTHING
        if claimed:
            self.launch(claimed)

    def pause_key(self, key: Hashable, seconds: float) -> None:
        """Start no task of ``key`` for ``seconds`` (or longer, if already paused longer). Any thread."""
        now = self.clock()
        with self.lock:
            self._use_keys_locked(now)
            lane = self._lanes.get(key)
            if lane is None:
                lane = self._lanes[key] = Lane(key, self._limit_for(key), now)
            lane.paused_until = max(lane.paused_until, now + seconds)
            self._recheck_lane_locked(lane, now)

    def resume_key(self, key: Hashable) -> bool:
        """End a pause of ``key`` now; False if it was not paused. Any thread."""
        now = self.clock()
        with self.lock:
            lane = self._lanes.get(key)
            if lane is None or lane.paused_until <= now:
                return False
            lane.paused_until = -math.inf
            self._recheck_lane_locked(lane, now)
            claimed = self._claim_locked() if self._free else NOTHING
        if claimed:
            self.launch(claimed)
        return True

    def _recheck_lane_locked(self, lane: Lane, now: float) -> None:
        # Its limit or pause changed: out of the heap, and back where it now belongs.
        if lane.ticket is not None:
            self._heap.remove(lane.ticket)
            lane.ticket = None
        self._lane_ready_locked(lane, now)

    def key_stats(self, key: Hashable) -> KeyStats:
        """A snapshot of one key: waiting, running, paused, its limit and tokens. Any thread."""
        now = self.clock()
        with self.lock:
            lane = self._lanes.get(key)
            limit = self._limit_for(key) if lane is None else lane.limit
            return _key_stats(key, lane, limit, now)

    def all_key_stats(self) -> dict[Hashable, KeyStats]:
        """A snapshot of every key the queue keeps state for (work, a pause, a bucket refilling). Any thread."""
        now = self.clock()
        with self.lock:
            # Not the lane of None: tasks without a key have no limits, and
            # report to no lane when they end.
            return {key: _key_stats(key, lane, lane.limit, now) for key, lane in self._lanes.items() if key is not None}


def _key_stats(key: Hashable, lane: Lane | None, limit: Limit | None, now: float) -> KeyStats:
    tokens: float | None = None
    if lane is None:
        if limit is not None and limit.rate:
            tokens = float(limit.burst)
        return KeyStats(key, 0, 0, 0.0, tokens, *_limits(limit))
    if limit is not None and limit.rate:
        lane.refill(now)
        tokens = lane.tokens
    return KeyStats(key, len(lane.heap), lane.running, max(lane.paused_until - now, 0.0), tokens, *_limits(limit))


def _limits(limit: Limit | None) -> tuple[int | None, float | None, int | None]:
    if limit is None:
        return None, None, None
    return limit.concurrency, limit.rate, limit.burst if limit.rate else None
