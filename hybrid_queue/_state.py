"""The scheduler's state: every field, the one lock and its invariant, and the plumbing every mechanism shares.

The plumbing: the loop binding (``bind``), the listeners and their events,
and what a critical section lets go of. The mechanisms that change the state
are classes over this one, each in its module, combined into ``Scheduler``:
admission of new tasks (``_admission``), reads (``_queries``), and the task
state machine itself (``_scheduler``: claim, finish, retries, timeouts,
cancellation, expiry). None of them has a lock of its own.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from itertools import count
from typing import TYPE_CHECKING, Any

from ._bridge import LoopBinding
from ._clock import Clock, TimerHandle
from ._events import EventKind, Listeners, TaskEvent
from ._heap import PriorityHeap
from ._lifecycle import Lifecycle, LifecycleState
from ._lock import YieldingLock
from ._retry import RetryPolicy
from ._store import ResultStore
from ._task import Record, TaskStatus

if TYPE_CHECKING:
    from ._lanes import Lane, Limit
    from ._periodic import Schedule

__all__ = ["NOTHING", "Claimed", "SchedulerState"]

SCHEDULED = TaskStatus.SCHEDULED
PENDING = TaskStatus.PENDING
RUNNING = TaskStatus.RUNNING
RETRY_WAIT = TaskStatus.RETRY_WAIT
COMPLETED = TaskStatus.COMPLETED
FAILED = TaskStatus.FAILED
CANCELLED = TaskStatus.CANCELLED

Claimed = list[tuple[Record, int]]
"""Tasks given a slot, with the attempt each starts, for ``launch`` to start."""
NOTHING: Claimed = []
_new_tuple = tuple.__new__


class SchedulerState:
    """The fields of a scheduler and the plumbing its mechanisms share. See ``Scheduler``."""

    def __init__(
        self,
        *,
        workers: int,
        max_queue_size: int,
        policy: RetryPolicy,
        store: ResultStore,
        clock: Clock | None = None,
        aging: float | None = None,
    ) -> None:
        self.policy = policy
        self.workers = workers
        # Time for timestamps, read on any thread; timers (retry, timeout,
        # expiry) on the loop's own clock unless another clock was given.
        self.clock: Callable[[], float] = time.monotonic if clock is None else clock.time
        # Wall-clock time (seconds since the epoch), for not_before datetimes
        # and cron rules: the clock's own if it keeps one (FakeClock does).
        self.wall: Callable[[], float] = getattr(clock, "wall_time", time.time)
        self.max_queue_size = max_queue_size
        # Set by the queue before the first claim; called with no lock held.
        self.launch: Callable[[Claimed], None] = _unbound_launch

        # The one lock. Invariants, true whenever it is free:
        # - a live task is in exactly one place: the timer heap _due
        #   (SCHEDULED), the heap or its key's lane (PENDING), a worker slot
        #   (RUNNING) or a retry timer (RETRY_WAIT); _live maps the id of
        #   every live task, and only live tasks, to its record;
        # - submitted == _scheduled + pending + _running + _retrying
        #   + _completed + _failed + _cancelled, where pending is
        #   len(_heap) until a key is used (_keyed), _waiting after;
        # - until _keyed the heap holds tasks; after, it holds lanes (see
        #   _lanes): each lane at most once, and exactly while it has a
        #   waiting task and its limits let it start one now; a lane's
        #   running counts the slots its tasks hold (claim to finish);
        # - _free + (slots held by workers) == workers, where a slot is held
        #   from the claim of a task until its holder reports back through
        #   finish(), even if the task was cancelled or timed out meanwhile,
        #   except while its handler waits for a task of this queue: then the
        #   slot is lent (see lend()) and held by whoever it went to;
        # - _reclaimers is empty unless _free == 0: a freed slot goes to the
        #   first handler waiting to take its slot back before the heap;
        # - the timer on the loop (_due_timer) is armed for the earliest
        #   entry of _due once the queue claims, or a call to arm it is on
        #   its way (_due_posted);
        # - a terminal task is in no structure but the result store.
        # add() and finish(), which take it once per task from the loop and
        # from pool or submitting threads alike, take it through _guard();
        # everywhere else a plain ``with self.lock``.
        self._locking = YieldingLock()
        self.lock = self._locking.lock
        self._guard = self._locking.guard
        # Tasks; lanes instead once a key is used (see _lanes).
        self._heap: PriorityHeap[Any] = PriorityHeap()
        self._live: dict[Hashable, Record] = {}
        self._cancels = 0  # tasks cancelled since _live was last copied (see _shrink_live_locked)
        self._store = store
        self._free = workers
        # Grants for handlers that lent their slot and want one back (see
        # reclaim()): each is called once, with no lock held, from any thread.
        self._reclaimers: deque[Callable[[], object]] = deque()
        # Started, shutting down, stopped (see _lifecycle): moved under the
        # lock; its flags are read without it on the hot paths.
        self.life = LifecycleState()
        self._auto_ids = count(1)
        self._chosen_ids = False  # a caller has used a task_id that is not a str
        self._submitted = self._running = self._retrying = 0
        self._completed = self._failed = self._cancelled = self._retries = 0
        self._expired = self._evicted = 0
        # Due times (see _delays): tasks scheduled for later, schedules, held
        # lanes, in one heap ordered by due time (in ns), and its one timer.
        self._due: PriorityHeap[Any] = PriorityHeap()
        self._scheduled = 0
        self._due_timer: TimerHandle | None = None
        self._due_at = math.inf  # when _due_timer fires; written on the loop thread
        self._due_posted = False
        self._schedules: dict[str, Schedule] = {}
        # Keys (see _lanes). _plain: no key used and no aging, so a task goes
        # straight into the heap at its own priority (the usual case, inlined).
        self._aging = aging
        self._plain = aging is None
        self._keyed = False
        self._lanes: dict[Hashable, Lane] = {}
        self._waiting = 0  # tasks waiting in lanes
        self._exact_limits: dict[Hashable, Limit] = {}
        self._pattern_limits: list[tuple[str, Limit]] = []
        # Loop thread only: the task whose handler interrupt() is cancelling.
        self._interrupting: Record | None = None
        # A journal with bounded_reruns (see _durable): the running tasks
        # whose end _terminal_locked journaled, until the holder of each one's
        # slot reports in finish(), which keeps that slot until the end is on
        # disk (a task cancelled or timed out while its handler runs stays
        # here until the handler returns). Under the lock; empty without one.
        self._ends_to_write: set[Record] = set()
        # Objects released under the lock, to be dropped after it. The result
        # store puts what it lets go of (ids it may hold the last reference
        # to) in the same list.
        self._dropped: list[Any] = []
        store.released = self._dropped
        # Threads blocked in submit_blocking on a full queue wait here.
        self._room = threading.Condition(self.lock)
        self._thread_putters = 0
        # Loop-side waiters (their futures live on the loop; only the counts
        # and the "wake already posted" flags are shared).
        self._loop_putters: list[asyncio.Future[None]] = []
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._expiry_timer: TimerHandle | None = None
        self._expiry_armed = False
        # The listeners and the events waiting for them (see _events).
        self._listeners = Listeners()

        # The loop, bound once, by bind(), before any claim, and the one way
        # to run something there (see _bridge.LoopBinding).
        self.at_loop = LoopBinding(clock)

    # ------------------------------------------------------------------ loop

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach the event loop that owns handles, timers and coroutine handlers.

        Called on that loop's thread. Raises RuntimeError for another loop.
        """
        if self.at_loop.loop is loop:  # set once, never changed: no lock needed to see it
            return
        with self.lock:
            self._bind_locked(loop)

    def _bind_locked(self, loop: asyncio.AbstractEventLoop | None) -> None:
        # Binding happens only in a call that goes on to succeed (under the
        # same hold as its change), so a refused call never ties the queue
        # to a passing loop.
        if loop is None or self.at_loop.loop is loop:
            return
        self.at_loop.bind_locked(loop)
        if self._listeners.pending and not self._listeners.posted:  # events from before there was a loop
            self._listeners.posted = True
            self.at_loop.soon(self.flush_events)

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop this scheduler is bound to, or None before the first binding. Any thread."""
        return self.at_loop.loop

    @property
    def loop_thread(self) -> int | None:
        """The ident of the bound loop's thread; None before binding, or once the loop stopped. Any thread."""
        return self.at_loop.thread

    # ------------------------------------------------------------------- events

    def add_listener(self, listener: Callable[[TaskEvent], object]) -> None:
        """Call ``listener(event)`` on the loop thread for every event from now on."""
        with self.lock:
            self._listeners.add_locked(listener)

    def remove_listener(self, listener: Callable[[TaskEvent], object]) -> bool:
        """Stop calling ``listener`` (the first registration of that very object); False if absent."""
        with self.lock:
            found, dropped = self._listeners.remove_locked(listener)
        del dropped  # events nobody is left to hear, let go after the lock
        return found

    def _emit_locked(
        self,
        kind: EventKind,
        task_id: Any,
        attempt: int,
        now: float,
        duration_ms: float | None = None,
        error: BaseException | None = None,
        delay: float | None = None,
    ) -> None:
        # Callers check self._listeners.callbacks first: with none, an event costs nothing.
        if self.at_loop.loop is not None and self.at_loop.loop.is_closed():
            return  # no flush can ever run: keep nothing
        if self._listeners.append_locked(
            _new_tuple(TaskEvent, (kind, task_id, attempt, now, duration_ms, error, delay))
        ):
            if self.at_loop.loop is not None:
                self.at_loop.soon(self.flush_events)
            else:
                self._listeners.posted = False  # bind() posts the flush once there is a loop

    def flush_events(self) -> None:
        """Hand every waiting event to the listeners, in order. Loop thread, no lock held."""
        with self.lock:
            events = self._listeners.take_locked()
        self._listeners.dispatch(events)

    def _take_dropped_locked(self) -> list[Any] | None:
        # What the critical section let go of, for the caller to drop after
        # releasing the lock: finalizers (__del__) are user code, and one
        # that calls back into the queue must not find the lock held.
        if not self._dropped:
            return None
        dropped = self._dropped
        self._dropped = self._store.released = []
        return dropped

    def _stored_locked(self, task_id: Hashable) -> bool:
        return self._store.get(task_id, self.clock()) is not None

    @property
    def forked(self) -> bool:
        """True in a forked child of the process that started this scheduler."""
        return self.life.state is Lifecycle.ORPHANED

    def _pending_locked(self) -> int:
        # Tasks waiting to start, wherever they wait (see the invariant).
        return self._waiting if self._keyed else len(self._heap)

    if TYPE_CHECKING:  # the state machine's, in Scheduler

        def _claim_locked(self) -> Claimed: ...

        def _at_locked(self, item: Any, when: float) -> int: ...

        def _enqueue_locked(self, task: Record, now: float) -> None: ...


def _unbound_launch(claimed: Claimed) -> None:
    raise AssertionError("Scheduler.launch was not set before tasks were claimed")
