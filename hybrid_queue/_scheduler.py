"""The scheduler: all of a queue's mutable state, under one lock.

Every state change of every task happens here, as one method that checks the
state it starts from. Methods take the lock only for O(log n) bookkeeping and
do the work that follows a change (resolving futures, arming timers, starting
handlers) after releasing it: no user code, no await and no executor call ever
runs under the lock.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import sys
import threading
import time
import types
import weakref
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from itertools import count
from typing import Any

from ._bridge import LoopBridge
from ._clock import Clock, TimerHandle
from ._errors import CallError, DuplicateTaskError, QueueFull, QueueShutDown, UnknownTaskError
from ._events import EventKind, TaskEvent
from ._heap import PriorityHeap
from ._interrupt import Interruptible
from ._retry import RetryPolicy
from ._stats import QueueStats
from ._store import ResultStore
from ._task import Record, TaskHandle, TaskResult, TaskStatus
from ._validate import is_plain_id

__all__ = ["Scheduler"]

logger = logging.getLogger("hybrid_queue")

PENDING = TaskStatus.PENDING
RUNNING = TaskStatus.RUNNING
RETRY_WAIT = TaskStatus.RETRY_WAIT
COMPLETED = TaskStatus.COMPLETED
FAILED = TaskStatus.FAILED
CANCELLED = TaskStatus.CANCELLED

Claimed = list[tuple[Record, int]]
_new_tuple = tuple.__new__
_CANCELLED_ERRORS = (asyncio.CancelledError, concurrent.futures.CancelledError)
_NOTHING: Claimed = []
_EVENT_OF = {COMPLETED: EventKind.COMPLETED, FAILED: EventKind.FAILED, CANCELLED: EventKind.CANCELLED}


# How often a thread that finds the scheduler lock held yields the GIL
# before it stops waiting that way (see _yield_until); none on a build that
# runs without a GIL, where yielding does not let the holder run.
_YIELDS = 100 if getattr(sys, "_is_gil_enabled", lambda: True)() else 0
# The thread that runs signal handlers, which takes the lock only with
# ``with`` (see Scheduler._guard).
_MAIN_THREAD = threading.main_thread().ident


def _note_main_thread() -> None:
    # In a child forked from another thread, that thread is the main one.
    global _MAIN_THREAD
    _MAIN_THREAD = threading.main_thread().ident


# Every scheduler that ever started; a forked child disowns them (see
# Scheduler._disown_after_fork).
_STARTED: weakref.WeakSet[Scheduler] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    _note_main_thread()
    for scheduler in list(_STARTED):
        scheduler._disown_after_fork()


if hasattr(os, "register_at_fork"):  # runs after threading's own hook, which names the new main thread
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Scheduler:
    """Owner of the heap, the live-task index, the result store and the counters.

    Thread-safe: every public method may be called from any thread, except
    those documented as loop-only.
    """

    def __init__(
        self,
        *,
        workers: int,
        max_queue_size: int,
        policy: RetryPolicy,
        store: ResultStore,
        clock: Clock | None = None,
    ) -> None:
        self.policy = policy
        self.workers = workers
        # Time for timestamps, read on any thread; timers (retry, timeout,
        # expiry) on the loop's own clock unless another clock was given.
        self.clock: Callable[[], float] = time.monotonic if clock is None else clock.time
        self._timers: Clock | None = clock
        self.max_queue_size = max_queue_size
        # Set by the queue before the first claim; called with no lock held.
        self.launch: Callable[[Claimed], None] = _unbound_launch

        # The one lock. Invariants, true whenever it is free:
        # - a live task is in exactly one place: the heap (PENDING), a worker
        #   slot (RUNNING) or a retry timer (RETRY_WAIT); _live maps the id of
        #   every live task, and only live tasks, to its record;
        # - submitted == len(_heap) + _running + _retrying + _completed
        #   + _failed + _cancelled;
        # - _free + (slots held by workers) == workers, where a slot is held
        #   from the claim of a task until its holder reports back through
        #   finish(), even if the task was cancelled or timed out meanwhile,
        #   except while its handler waits for a task of this queue: then the
        #   slot is lent (see lend()) and held by whoever it went to;
        # - _reclaimers is empty unless _free == 0: a freed slot goes to the
        #   first handler waiting to take its slot back before the heap;
        # - a terminal task is in no structure but the result store.
        # add() and finish(), which take it once per task from the loop and
        # from pool or submitting threads alike, take it through _guard();
        # everywhere else a plain ``with self.lock``.
        self.lock = threading.Lock()
        self._held = _Held(self.lock)
        self._heap: PriorityHeap[Record] = PriorityHeap()
        self._live: dict[Hashable, Record] = {}
        self._cancels = 0  # tasks cancelled since _live was last copied (see _shrink_live_locked)
        self._store = store
        self._free = workers
        # Grants for handlers that lent their slot and want one back (see
        # reclaim()): each is called once, with no lock held, from any thread.
        self._reclaimers: deque[Callable[[], object]] = deque()
        self._started = False
        self._accepting = True
        # False once shutdown cancels what waits: a failure then ends its task.
        self._retry_allowed = True
        # Set in a forked child: the loop and threads this state belongs to
        # are in the parent, so nothing here can run any more.
        self._forked = False
        self._auto_ids = count(1)
        self._chosen_ids = False  # a caller has used a task_id that is not a str
        self._submitted = self._running = self._retrying = 0
        self._completed = self._failed = self._cancelled = self._retries = 0
        self._expired = self._evicted = 0
        # Loop thread only: the task whose handler interrupt() is cancelling.
        self._interrupting: Record | None = None
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
        # Listeners, replaced whole (never mutated) so a reader needs no
        # lock; events wait in _events, in the order of the changes, until
        # one posted _flush_events hands them over on the loop.
        self._listeners: tuple[Callable[[TaskEvent], object], ...] = ()
        self._events: list[TaskEvent] = []
        self._events_posted = False

        # Bound once, by bind(), before any claim; read-only afterwards.
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread: int | None = None
        self._bridge: LoopBridge | None = None

    def _guard(self) -> threading.Lock | _Held:
        # What add() and finish() take the lock with, in a ``with``; see
        # _yield_until for why a thread yields the GIL rather than block on
        # the lock.
        lock = self.lock
        if threading.get_ident() != _MAIN_THREAD:
            if not lock.acquire(False):
                _acquire_yielding(lock)
            return self._held  # taken: the ``with`` only releases it
        # The main thread runs the signal handlers: a KeyboardInterrupt
        # raised between a hand-made acquire and the ``with`` would leave the
        # lock held for good, and ``with lock`` leaves no such gap. So it
        # only waits for the lock to be free, and the ``with`` takes it.
        if lock.locked():
            _yield_until(lambda: not lock.locked())
        return lock

    # ------------------------------------------------------------------ loop

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach the event loop that owns handles, timers and coroutine handlers.

        Called on that loop's thread. Raises RuntimeError for another loop.
        """
        if self.loop is loop:  # set once, never changed: no lock needed to see it
            return
        with self.lock:
            self._bind_locked(loop)

    def _bind_locked(self, loop: asyncio.AbstractEventLoop | None) -> None:
        # Binding happens only in a call that goes on to succeed (under the
        # same hold as its change), so a refused call never ties the queue
        # to a passing loop.
        if loop is None or self.loop is loop:
            return
        if self.loop is not None:
            raise RuntimeError(
                "this HybridQueue is bound to another event loop; use it only from the loop it was "
                "started on (from other threads, use submit_blocking())"
            )
        self.loop = loop
        self.loop_thread = threading.get_ident()
        self._bridge = LoopBridge(loop)
        if self._events and not self._events_posted:  # events from before there was a loop
            self._events_posted = True
            loop.call_soon(self.flush_events)

    def unbind_thread(self) -> None:
        """Forget the loop thread once the loop stopped for good."""
        self.loop_thread = None

    def on_loop(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Run ``fn(*args)`` on the loop: now if this is the loop thread, else soon.

        False if it can never run: no loop yet, or the loop is closed.
        """
        if threading.get_ident() == self.loop_thread:
            if self.loop is not None and self.loop.is_closed():
                return False
            fn(*args)
            return True
        return self._bridge is not None and self._bridge.post(fn, *args)

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop soon, never inline. Any thread, no lock held."""
        if threading.get_ident() == self.loop_thread:
            assert self.loop is not None
            if not self.loop.is_closed():
                self.loop.call_soon(fn, *args)
        elif self._bridge is not None:
            self._bridge.post(fn, *args)

    def _defer_locked(self, fn: Callable[..., Any], *args: Any) -> None:
        # Under the lock, fn (which takes the lock) must not run inline even
        # on the loop thread: queue it behind the current callback instead.
        self.post(fn, *args)

    def _call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> TimerHandle:
        # Loop thread. On the queue's clock when it has its own, else the loop's.
        if self._timers is not None:
            return self._timers.call_later(delay, fn, *args)
        assert self.loop is not None
        return self.loop.call_later(delay, fn, *args)

    # ------------------------------------------------------------------- events

    def add_listener(self, listener: Callable[[TaskEvent], object]) -> None:
        """Call ``listener(event)`` on the loop thread for every event from now on."""
        with self.lock:
            self._listeners = (*self._listeners, listener)

    def remove_listener(self, listener: Callable[[TaskEvent], object]) -> bool:
        """Stop calling ``listener`` (the first registration of that very object); False if absent."""
        # By identity: ``==`` on a listener is user code, which must not run
        # under the lock (a bound method compares equal to a fresh one of
        # the same object and function, and is found by identity of both).
        dropped: list[TaskEvent] = []
        with self.lock:
            listeners = list(self._listeners)
            for i, registered in enumerate(listeners):
                if registered is listener or _same_method(registered, listener):
                    del listeners[i]
                    break
            else:
                return False
            self._listeners = tuple(listeners)
            if not listeners:  # nobody left to hand them to; dropped after the lock
                dropped, self._events = self._events, []
        del dropped
        return True

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
        # Callers check self._listeners first: with none, an event costs nothing.
        if self.loop is not None and self.loop.is_closed():
            return  # no flush can ever run: keep nothing
        self._events.append(_new_tuple(TaskEvent, (kind, task_id, attempt, now, duration_ms, error, delay)))
        if not self._events_posted and self.loop is not None:
            # One flush per burst of events, like the bridge's drains.
            self._events_posted = True
            self._defer_locked(self.flush_events)

    def flush_events(self) -> None:
        """Hand every waiting event to the listeners, in order. Loop thread, no lock held.

        A listener that raises is logged and the others still run: an
        observer never breaks the queue.
        """
        with self.lock:
            events, self._events = self._events, []
            self._events_posted = False
        for event in events:
            # Read anew for every event, and checked again before each call
            # once it changed: a listener removed by another listener (or by
            # itself) is not called again, not even for the rest of a batch.
            listeners = self._listeners
            for listener in listeners:
                if self._listeners is not listeners and not any(x is listener for x in self._listeners):
                    continue
                try:
                    listener(event)
                except Exception:
                    logger.exception("event listener %r raised on %r; it stays registered", listener, event)

    # ------------------------------------------------------------- submitting

    def add(self, task: Record, loop: asyncio.AbstractEventLoop | None = None, block: bool = False) -> None:
        """Accept ``task`` into the heap, or raise without changing anything.

        Raises QueueShutDown, DuplicateTaskError, or QueueFull (when the heap
        is at ``max_queue_size`` and ``block`` is false; with ``block`` the
        calling thread waits for room, so never pass it on a loop thread).
        ``loop``: the caller's running loop, which its handle belongs to; the
        queue binds to it if it has no loop yet.
        """
        refused = ""
        with self._guard():
            while True:
                if not self._accepting or (self.loop is not None and self.loop.is_closed()):
                    refused = "closed"
                    break
                task_id = task._id
                if task_id is not None and (task_id in self._live or self._stored_locked(task_id)):
                    refused = "duplicate"
                    break
                if not self.max_queue_size or len(self._heap) < self.max_queue_size:
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
                claimed = _NOTHING
            else:
                self._accept_locked(task, loop)
                claimed = self._claim_locked() if self._free and self._started else _NOTHING
            dropped = self._take_dropped_locked() if self._dropped else None
        del dropped
        if refused:  # raised after the lock: a message's repr() is user code
            raise self._refusal(refused, task._id)
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
            if not self._accepting or (self.loop is not None and self.loop.is_closed()):
                refused = "closed"
            elif tasks and self.max_queue_size and len(self._heap) + len(tasks) > self.max_queue_size:
                refused = "full"
            else:
                for task in tasks:
                    self._accept_locked(task, loop)
            claimed = self._claim_locked() if not refused and self._free and self._started else _NOTHING
        if refused:
            raise self._refusal(refused, None, len(tasks))
        if claimed:
            self.launch(claimed)

    def _refusal(self, why: str, task_id: Hashable, batch: int = 1) -> Exception:
        if why == "closed":
            if self._forked:
                return QueueShutDown(
                    "this HybridQueue was started in the parent process and cannot run tasks in a forked "
                    "child (its event loop and threads are the parent's); make a new HybridQueue in the child"
                )
            if self._accepting:
                return QueueShutDown(
                    "the queue's event loop is closed (it ended without shutdown()); submit to a new queue"
                )
            return QueueShutDown("the queue has begun shutting down and accepts no new tasks; submit to a new queue")
        if why == "duplicate":
            return DuplicateTaskError(
                f"task_id {task_id!r} is already in use by a live task or a stored "
                "result; pass a new task_id, or forget() the old result first"
            )
        n = self.max_queue_size
        if batch > 1:
            return QueueFull(
                f"a batch of {batch} tasks does not fit in the queue's room for {n} pending tasks now; "
                "await submit_many() on the queue's loop to wait for room, or raise max_queue_size"
            )
        return QueueFull(
            f"the queue holds its maximum of {n} pending task{'s' if n != 1 else ''}; "
            "await submit() on the queue's loop, or submit_blocking() from a thread "
            "without an event loop, to wait for room, or raise max_queue_size"
        )

    def _accept_locked(self, task: Record, loop: asyncio.AbstractEventLoop | None) -> None:
        # Into the heap and the live index; the caller claims free slots after.
        task_id = task._id
        if loop is not self.loop:
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
                if self._listeners:
                    self._emit_locked(EventKind.EXPIRED, task_id, 0, self.clock())
        task._ticket = self._heap.push(task._priority, task)
        self._live[task_id] = task
        self._submitted += 1
        if self._listeners:
            self._emit_locked(EventKind.SUBMITTED, task_id, 0, self.clock())

    async def wait_for_room(self, loop: asyncio.AbstractEventLoop, room: int = 1) -> None:
        """Return once the heap has ``room`` places below its bound, or the queue stopped accepting.

        On ``loop``, the caller's, which the queue binds to if it has none.
        """
        with self.lock:
            if not self._accepting or len(self._heap) + room <= self.max_queue_size:
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
            self._defer_locked(self._wake_loop_putters)

    def _wake_loop_putters(self) -> None:
        with self.lock:
            putters, self._loop_putters = self._loop_putters, []
        for waiter in putters:
            if not waiter.done():
                waiter.set_result(None)

    # --------------------------------------------------------------- claiming

    def start(self) -> None:
        """Begin dispatching: claim a slot for each waiting task, up to ``workers``."""
        _STARTED.add(self)
        with self.lock:
            self._started = True
            claimed = self._claim_locked()
            arm = self._arm_expiry_locked()
        if arm:
            self.on_loop(self._expire)
        if claimed:
            self.launch(claimed)

    def _claim_locked(self) -> Claimed:
        # Pops tasks into free slots. The caller launches what it returns.
        if not self._started:
            return _NOTHING
        claimed: Claimed = []
        take = self._heap.take
        while self._free and (task := take()) is not None:
            self._free -= 1
            claimed.append((task, self._begin_locked(task)))
        if claimed and self.max_queue_size:
            self._room_freed_locked(len(claimed))
        return claimed

    def _begin_locked(self, task: Record, now: float | None = None) -> int:
        task._status = RUNNING
        self._running += 1
        task._attempt += 1
        if task._attempt == 1:
            task._started_at = now = self.clock() if now is None else now
        if self._listeners:
            self._emit_locked(EventKind.STARTED, task._id, task._attempt, self.clock() if now is None else now)
        return task._attempt

    # ---------------------------------------------------------------- finishing

    def finish(
        self,
        task: Record,
        attempt: int,
        ok: bool,
        value: Any,
        error: BaseException | None,
        on_loop: bool = False,
        *,
        retry: bool = True,
        hand_over: bool = True,
        held: bool = True,
    ) -> tuple[Record, int] | None:
        """Report the end of ``attempt`` by the holder of its slot. Any thread.

        Settles the task (completed, failed, or waiting for a retry) unless
        the attempt was abandoned meanwhile (cancelled, timed out), in which
        case the outcome is dropped. Then the slot goes to the next task in
        the heap, which is returned for the caller to run or hand on, or is
        freed when there is none. ``on_loop``: the caller knows it runs on
        the loop thread, so results are handed over without a thread check.
        ``hand_over=False``: the caller cannot start work where it is (an
        executor's callback, maybe under that executor's own lock), so the
        slot is freed and a claim is posted to the loop instead.
        ``held=False``: the handler ended while its slot was lent (see
        ``lend``); whoever holds that slot now frees it.
        """
        now = self.clock()
        result = None
        delay = -1.0
        timer = None
        grant: Callable[[], object] | None
        wake = more = False
        with self._guard():
            if task._attempt == attempt and task._status is RUNNING:
                self._running -= 1
                timer, task._timer = task._timer, None
                if ok:
                    result = self._terminal_locked(task, COMPLETED, value, None, now)
                elif isinstance(error, _CANCELLED_ERRORS):
                    # The handler (or its executor) reported cancellation itself.
                    result = self._terminal_locked(task, CANCELLED, None, error, now)
                else:
                    assert error is not None
                    delay = self._fail_locked(task, error, now) if retry else -1.0
                    if delay < 0:
                        result = self._terminal_locked(task, FAILED, None, error, now)
            if not held:
                grant = nxt = None
            elif self._reclaimers:
                # A handler that lent its slot to wait for a task of this
                # queue goes on before anything new starts: it takes this slot.
                grant = self._reclaimers.popleft()
                nxt = None
            else:
                grant = None
                nxt = self._heap.take() if hand_over and self._started else None
                if nxt is not None:
                    nxt_attempt = self._begin_locked(nxt, now)
                    if self.max_queue_size:
                        self._room_freed_locked(1)
                else:
                    self._free += 1
                    more = self._started and bool(self._heap)
                    wake = bool(self._idle_waiters) and not self._live and self._free == self.workers
            dropped = self._take_dropped_locked() if self._dropped else None
        del dropped  # after the lock: see _take_dropped_locked
        if grant is not None:
            grant()
        if timer is not None:
            self.on_loop(timer.cancel)
        if result is not None:
            self.deliver(task, result, on_loop)
        elif delay >= 0:
            _log_retry(task, error, delay)
            self.on_loop(self._arm_retry, task, attempt, delay)
        if more:
            self.post(self._claim_more)
        if wake:
            # After deliver(): shutdown must not return before the last result is handed over.
            self.on_loop(self._wake_idle)
        return None if nxt is None else (nxt, nxt_attempt)

    # ---------------------------------------------------------------- lending

    def lend(self) -> None:
        """The caller's handler, which holds a slot, starts waiting for a task of this queue: lend its slot.

        The slot goes where a freed one would (a handler taking its own back,
        else the next task in the heap), so a handler that waits for a task
        it submitted cannot hold up that task, whatever ``workers`` is. The
        caller takes a slot back with ``reclaim`` before its handler goes on.
        Any thread, no lock held.
        """
        wake = False
        with self.lock:
            if self._reclaimers:
                grant: Callable[[], object] | None = self._reclaimers.popleft()
                claimed = _NOTHING
            else:
                grant = None
                self._free += 1
                claimed = self._claim_locked()
                # A slot passed on after its handler ended may be the last one.
                wake = bool(self._idle_waiters) and not self._live and self._free == self.workers
        if grant is not None:
            grant()
        elif claimed:
            self.launch(claimed)
        if wake:
            self.on_loop(self._wake_idle)

    def reclaim(self, grant: Callable[[], object]) -> bool:
        """Take back a slot for a handler that lent its own: True if it has one now.

        Otherwise the handler waits: ``grant()`` is called (once, from
        whichever thread frees a slot, with no lock held) when the slot is
        its, ahead of any task in the heap. Any thread, no lock held.
        """
        with self.lock:
            if self._free:
                self._free -= 1
                return True
            self._reclaimers.append(grant)
            return False

    def _claim_more(self) -> None:
        # Loop thread: fill slots that a hand_over=False finish freed.
        with self.lock:
            claimed = self._claim_locked()
        if claimed:
            self.launch(claimed)

    def arm_timeout(self, task: Record, attempt: int, callback: Callable[[Record, int], None]) -> None:
        """Call ``callback(task, attempt)`` after ``task._timeout`` unless the attempt ends first. Loop only."""
        assert self.loop is not None and task._timeout is not None
        with self.lock:
            if task._status is RUNNING and task._attempt == attempt:
                task._timer = self._call_later(task._timeout, callback, task, attempt)

    def expire_attempt(self, task: Record, attempt: int, error: BaseException) -> None:
        """Fail a running attempt that outlived its timeout, keeping its slot held.

        The handler (a sync one that cannot be interrupted) keeps its slot
        until it returns; its late outcome is then dropped by ``finish``.
        """
        now = self.clock()
        result = None
        delay = -1.0
        with self.lock:
            if task._attempt != attempt or task._status is not RUNNING:
                return
            task._timer = None
            self._running -= 1
            delay = self._fail_locked(task, error, now)
            if delay < 0:
                result = self._terminal_locked(task, FAILED, None, error, now)
            dropped = self._take_dropped_locked()
        del dropped
        if result is not None:
            self.deliver(task, result)
        else:
            _log_retry(task, error, delay)
            self.on_loop(self._arm_retry, task, attempt, delay)

    def _fail_locked(self, task: Record, error: BaseException, now: float) -> float:
        # Returns the retry delay, or -1.0 when the failure is final. The
        # caller logs the retry after releasing the lock (logging runs
        # handlers and filters: user code).
        if (
            task._retry_count >= task._max_retries
            or not self._retry_allowed
            or type(error) is CallError  # the same call would fail the same way
            or not self.policy.is_retryable(error)
        ):
            return -1.0
        delay = self.policy.get_delay(task._retry_count)
        task._retry_count += 1
        task._status = RETRY_WAIT
        self._retrying += 1
        self._retries += 1
        if self._listeners:
            self._emit_locked(EventKind.RETRY_SCHEDULED, task._id, task._attempt, now, error=error, delay=delay)
        return delay

    def _arm_retry(self, task: Record, attempt: int, delay: float) -> None:
        # Loop thread. The timer is set under the lock so cancel() sees it.
        with self.lock:
            if task._status is RETRY_WAIT and task._attempt == attempt:
                task._timer = self._call_later(delay, self._requeue, task)

    def _requeue(self, task: Record) -> None:
        # Loop thread: the retry delay is over.
        with self.lock:
            if task._status is not RETRY_WAIT:
                return
            task._timer = None
            task._status = PENDING
            self._retrying -= 1
            task._ticket = self._heap.push(task._priority, task)
            claimed = self._claim_locked() if self._free else _NOTHING
        if claimed:
            self.launch(claimed)

    def _terminal_locked(
        self, task: Record, status: TaskStatus, value: Any, error: BaseException | None, now: float
    ) -> TaskResult[Any]:
        task._status = status
        if status is COMPLETED:
            self._completed += 1
        elif status is FAILED:
            self._failed += 1
        else:
            self._cancelled += 1
        del self._live[task._id]
        if not self._live:
            # A dict never shrinks its table; an empty one is free to replace,
            # so a burst of tasks leaves no memory behind once it is over.
            self._live = {}
        duration = (now - task._started_at) * 1000.0 if task._attempt else 0.0
        # tuple.__new__ directly: the NamedTuple's own __new__ is a Python
        # frame, and this line runs once per task.
        result: TaskResult[Any] = _new_tuple(TaskResult, (task._id, status, value, error, task._retry_count, duration))
        if self._listeners:
            kind = _EVENT_OF[status]
            self._emit_locked(kind, task._id, task._attempt, now, duration, error)
        evicted = self._store.add(result, now) if task._keep else None
        if evicted:
            self._evicted += len(evicted)
            self._dropped.extend(evicted)
            if self._listeners:
                for old in evicted:
                    self._emit_locked(EventKind.EVICTED, old.task_id, 0, now)
        if not self._expiry_armed and self._arm_expiry_locked():
            self._defer_locked(self._expire)
        return result

    def _take_dropped_locked(self) -> list[Any] | None:
        # What the critical section let go of, for the caller to drop after
        # releasing the lock: finalizers (__del__) are user code, and one
        # that calls back into the queue must not find the lock held.
        if not self._dropped:
            return None
        dropped = self._dropped
        self._dropped = self._store.released = []
        return dropped

    def deliver(self, task: Record, result: TaskResult[Any], on_loop: bool = False) -> None:
        """Hand a terminal result to whoever waits for it. No lock held; any thread.

        Afterwards the record holds nothing of the caller's: handler,
        arguments and future are released here, outside the lock (a
        finalizer is user code; see _take_dropped_locked). A slot holder
        copied what it needed before it started.
        """
        task._fn = None
        task._args = ()
        task._kwargs = None
        # A task submitted from async code is its own handle.
        handle = task if isinstance(task, TaskHandle) else None
        cfuture, task._cfuture = task._cfuture, None
        try:
            if result.status is FAILED:
                logger.warning("task %r failed after %d attempt(s): %r", task._id, task._attempt, result.error)
        except Exception:  # a broken log filter or handler must not strand the result
            pass
        if cfuture is not None:
            cfuture._settle(result)
        if task._waiters is None:
            if handle is None:
                return
            if on_loop and result.status is COMPLETED:
                # The common case, without two more frames: a worker on the
                # loop finished a task that only its handle waits for.
                if not handle.done():
                    handle.set_result(result.result)
                return
        if on_loop or threading.get_ident() == self.loop_thread:
            self._settle_on_loop(task, handle, result)
        elif self._bridge is not None:
            self._bridge.post(self._settle_on_loop, task, handle, result)

    def _settle_on_loop(self, task: Record, handle: TaskHandle[Any] | None, result: TaskResult[Any]) -> None:
        try:
            if handle is not None and not handle.done():
                handle._settle(result)
        finally:
            # Waiters are added only while the task is live, under the lock;
            # it is terminal now, so a None here stays None.
            if task._waiters is not None:
                with self.lock:
                    waiters, task._waiters = task._waiters, None
                for waiter in waiters or ():
                    if not waiter.done():
                        waiter.set_result(result)

    # -------------------------------------------------------------- cancelling

    def cancel(self, task_id: Hashable, *, record: Record | None = None) -> bool:
        """Cancel a live task wherever it is; False if unknown or already finished.

        ``record``: cancel only if the live task with this id is that record
        (an id may be reused once the old result is gone).
        """
        if not is_plain_id(task_id):  # never accepted, and not to be hashed under the lock
            return False
        now = self.clock()
        with self.lock:
            task = self._live.get(task_id)
            if task is None or (record is not None and task is not record):
                return False
            if task is self._interrupting and threading.get_ident() == self.loop_thread:
                return False  # the echo of interrupt() through the task's own handle
            cancelled = [self._cancel_locked(task, now)]
            self._cancels += 1
            self._shrink_live_locked()
            wake = bool(self._idle_waiters) and not self._live and self._free == self.workers
            dropped = self._take_dropped_locked()
        del dropped
        self._after_cancel(cancelled, wake)
        return True

    def cancel_where(self, *states: TaskStatus) -> int:
        """Cancel every live task in one of ``states`` (all if none), in one hold of the lock.

        One hold, so that no task can move on (a pending one start, say)
        between being chosen and being cancelled. Returns how many.
        """
        now = self.clock()
        with self.lock:
            chosen = [t for t in self._live.values() if not states or t._status in states]
            cancelled = [self._cancel_locked(t, now) for t in chosen]
            self._cancels += len(cancelled)
            self._shrink_live_locked()
            wake = bool(self._idle_waiters) and not self._live and self._free == self.workers
            dropped = self._take_dropped_locked()
        del dropped
        self._after_cancel(cancelled, wake)
        return len(cancelled)

    def _cancel_locked(
        self, task: Record, now: float
    ) -> tuple[Record, TaskStatus, int, TimerHandle | None, TaskResult[Any]]:
        state = task._status
        if state is PENDING:
            self._heap.remove(task._ticket)
            if self.max_queue_size:
                self._room_freed_locked(1)
        elif state is RETRY_WAIT:
            self._retrying -= 1
        else:
            self._running -= 1
        # A retry timer, or the timeout of a running attempt.
        timer, task._timer = task._timer, None
        result = self._terminal_locked(task, CANCELLED, None, asyncio.CancelledError(), now)
        return task, state, task._attempt, timer, result

    def _shrink_live_locked(self) -> None:
        # A dict never shrinks its table. Once more tasks were cancelled
        # since the last copy than twice those live, a copy sized for the
        # live ones replaces it (O(1) amortized), so a cancelled burst leaves
        # no memory behind even while other tasks run. Counted on the cancel
        # paths only: finishing tasks one by one costs nothing here, and
        # _terminal_locked replaces the dict when it empties.
        if self._cancels > 64 and self._cancels > 2 * len(self._live):
            self._live = dict(self._live)
            self._cancels = 0

    def _after_cancel(
        self,
        cancelled: list[tuple[Record, TaskStatus, int, TimerHandle | None, TaskResult[Any]]],
        wake: bool,
    ) -> None:
        for task, state, attempt, timer, result in cancelled:
            if timer is not None:
                self.on_loop(timer.cancel)
            if state is RUNNING:
                runner = task._runner
                if type(runner) is Interruptible and runner.thread_id != threading.get_ident():
                    # A sync handler that can be interrupted from any thread:
                    # at once, not a loop step (and a GIL hand-over) later. A
                    # stale one (an earlier attempt's) refuses, as it is done.
                    runner.interrupt()
                else:
                    self.on_loop(self.interrupt, task, attempt)
            self.deliver(task, result)
        if wake:
            self.on_loop(self._wake_idle)

    def publish_runner(self, task: Record, attempt: int, runner: Any) -> bool:
        """Make ``runner`` what interrupt() cancels for ``attempt``; False if that attempt already ended.

        Under the lock, so that a cancel or timeout either ends the attempt
        before (and the handler never starts) or finds the runner after.
        """
        with self.lock:
            if task._status is not RUNNING or task._attempt != attempt:
                return False
            task._runner = runner
            return True

    def interrupt(self, task: Record, attempt: int) -> None:
        """Cancel the handler running ``attempt`` of ``task``, if it still is. Loop only."""
        # For a coroutine, ``runner`` is set and cleared on this thread only,
        # by the worker around its await of the handler, so it is current
        # here. For another executor's future it may be cleared meanwhile by
        # the completion callback; cancelling a finished future is harmless.
        runner = task._runner
        if runner is not None and task._attempt == attempt:
            # Cleared first: the worker reads ``runner is None`` as "this
            # CancelledError is the queue's, not the loop's".
            task._runner = None
            # Cancelling an asyncio task cancels the future it awaits; if the
            # handler awaits its own handle, that must not cancel the task.
            self._interrupting = task
            try:
                runner.cancel()
            finally:
                self._interrupting = None

    # ------------------------------------------------------------- shutting down

    def stop_accepting(self) -> bool:
        """Refuse further submits and wake every blocked submitter; False if already stopped."""
        with self.lock:
            if not self._accepting:
                return False
            self._accepting = False
            self._room.notify_all()
            if self._loop_putters:
                self._defer_locked(self._wake_loop_putters)
            return True

    def stop_retrying(self) -> None:
        """From now on a failed attempt ends its task (FAILED) instead of scheduling a retry."""
        with self.lock:
            self._retry_allowed = False

    def _disown_after_fork(self) -> None:
        # In a forked child, where only the forking thread exists: the lock
        # may have been held by a thread that is gone, so it is replaced
        # (nothing else runs yet), and every submit is refused from now on.
        self.lock = threading.Lock()
        self._held = _Held(self.lock)
        self._room = threading.Condition(self.lock)
        self._accepting = False
        self._forked = True

    @property
    def forked(self) -> bool:
        """True in a forked child of the process that started this scheduler."""
        return self._forked

    async def wait_idle(self) -> None:
        """Return once no task is live and every slot is free. Loop only."""
        assert self.loop is not None
        with self.lock:
            if not self._live and self._free == self.workers:
                return
            waiter = self.loop.create_future()
            self._idle_waiters.append(waiter)
        await waiter

    def _wake_idle(self) -> None:
        with self.lock:
            if self._live or self._free != self.workers:
                return
            waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def close(self) -> None:
        """Stop the expiry timer. Loop only; the stored results stay readable."""
        with self.lock:
            timer, self._expiry_timer = self._expiry_timer, None
            self._expiry_armed = False
            # Stop the timer chain: _expire re-arms only while _started is true.
            self._started = False
            idle = self._idle_waiters
            self._idle_waiters = []
        if timer is not None:
            timer.cancel()
        for waiter in idle:
            waiter.cancel()

    # ------------------------------------------------------------------ results

    def _stored_locked(self, task_id: Hashable) -> bool:
        return self._store.get(task_id, self.clock()) is not None

    def _arm_expiry_locked(self) -> bool:
        # True when the caller must run _expire on the loop to start the chain.
        if self._expiry_armed or not self._started or not len(self._store):
            return False
        self._expiry_armed = True
        return True

    def _expire(self) -> None:
        # Loop thread: drop what is due and sleep until the next result is.
        with self.lock:
            now = self.clock()
            expired = self._store.expire(now)
            self._expired += len(expired)
            if self._listeners:
                for old in expired:
                    self._emit_locked(EventKind.EXPIRED, old.task_id, 0, now)
            due = self._store.next_expiry()
            # Dropped after the lock (see _take_dropped_locked).
            dropped = (expired, self._take_dropped_locked())
            if due is None or not self._started:
                self._expiry_armed = False
                self._expiry_timer = None
            else:
                self._expiry_timer = self._call_later(max(due - now, 0.0), self._expire)
        del dropped

    def status(self, task_id: Hashable) -> TaskStatus:
        """The task's current status; raises UnknownTaskError if not known."""
        if not is_plain_id(task_id):  # never accepted, and not to be hashed under the lock
            raise _unknown(task_id)
        with self.lock:
            task = self._live.get(task_id)
            if task is not None:
                return task._status
            result = self._store.get(task_id, self.clock())
        if result is None:
            raise _unknown(task_id)
        return result.status

    def result_or_waiter(
        self, task_id: Hashable, loop: asyncio.AbstractEventLoop
    ) -> TaskResult[Any] | asyncio.Future[TaskResult[Any]]:
        """The stored result, or a future on ``loop`` (the caller's) that the result will resolve."""
        if not is_plain_id(task_id):  # never accepted, and not to be hashed under the lock
            raise _unknown(task_id)
        with self.lock:
            if self.loop is not None:
                self._bind_locked(loop)  # raises on a loop that is not the queue's
            task = self._live.get(task_id)
            if task is None:
                result = self._store.get(task_id, self.clock())
                if result is None:
                    raise _unknown(task_id)
                return result
            self._bind_locked(loop)  # waiting needs the loop that results are delivered on
            waiter: asyncio.Future[TaskResult[Any]] = loop.create_future()
            if task._waiters is None:
                task._waiters = []
            task._waiters.append(waiter)
            return waiter

    def drop_waiter(self, task_id: Hashable, waiter: asyncio.Future[Any]) -> None:
        """Forget a get_result waiter that gave up (timeout or cancellation)."""
        with self.lock:
            task = self._live.get(task_id)
            if task is not None and task._waiters and waiter in task._waiters:
                task._waiters.remove(waiter)

    def forget(self, task_id: Hashable) -> bool:
        """Drop a stored result; False if there was none."""
        if not is_plain_id(task_id):  # never accepted, and not to be hashed under the lock
            return False
        with self.lock:
            dropped = self._store.discard(task_id)
            released = self._take_dropped_locked()
        del released
        return dropped is not None  # its last reference goes here, after the lock

    def quiet(self) -> bool:
        """True when nothing runs or waits to run, and every retry and expiry waits on an armed timer.

        What a fake clock waits for before it moves time on: until then, work
        in flight may still arm a timer (a failure in a pool thread posts its
        retry to the loop) that the move must not skip.
        """
        with self.lock:
            if self._heap or self._free != self.workers:
                return False
            if self._expiry_armed and self._expiry_timer is None:
                return False  # the first _expire of a chain is on its way to the loop
            return all(t._timer is not None for t in self._live.values() if t._status is RETRY_WAIT)

    def stats(self) -> QueueStats:
        """A snapshot of every counter, taken atomically."""
        with self.lock:
            return QueueStats(
                submitted=self._submitted,
                pending=len(self._heap),
                running=self._running,
                retrying=self._retrying,
                completed=self._completed,
                failed=self._failed,
                cancelled=self._cancelled,
                retries=self._retries,
                workers=self.workers,
                busy_workers=self.workers - self._free,
                results_stored=len(self._store),
                results_expired=self._expired,
                results_evicted=self._evicted,
            )


def _yield_until(ready: Callable[[], bool]) -> bool:
    # Yields the GIL until ready() (the lock taken, or free); False when it
    # gave up after _YIELDS tries (the holder is descheduled, or there is no
    # GIL to wait for), and the caller blocks instead.
    #
    # Why not block on the lock at once: its holder never blocks while it
    # holds it, it runs Python or waits for the GIL. A thread that blocked
    # on the lock would be woken by the holder's release, take the lock on
    # the other core before the holder comes back for it, and then wait for
    # the GIL, which the holder keeps until its own next acquisition blocks
    # in turn. From then on two busy threads (the loop submitting, a pool
    # thread finishing) trade the lock through the kernel at every
    # acquisition: 6 to 10 us of system time per task in the sync
    # benchmarks, against about 1 us without.
    for _ in range(_YIELDS):
        time.sleep(0)  # releases the GIL, even for no time
        if ready():
            return True
    return False


def _acquire_yielding(lock: threading.Lock) -> None:
    # Take the held lock without blocking on it while yielding can work.
    if not _yield_until(lambda: lock.acquire(False)):
        lock.acquire()


class _Held:
    """The context of a lock its thread already holds: ``with`` releases it, and takes nothing."""

    __slots__ = ("_lock",)

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc_info: object) -> None:
        self._lock.release()


def _log_retry(task: Record, error: BaseException | None, delay: float) -> None:
    # INFO, not WARNING: a retried attempt is the policy working, not a
    # problem yet; only the final failure is (see deliver).
    logger.info(
        "task %r attempt %d failed with %r; retry %d of %d in %.3f s",
        task._id,
        task._attempt,
        error,
        task._retry_count,
        task._max_retries,
        delay,
    )


def _unknown(task_id: Hashable) -> UnknownTaskError:
    return UnknownTaskError(
        f"no task with id {task_id!r}: it was never submitted, or its result expired or "
        "was evicted (raise result_ttl or max_results to keep results longer)"
    )


def _same_method(a: object, b: object) -> bool:
    # Bound methods are made anew at each attribute access: equal when both
    # their object and their function are the same (compared by identity).
    # A builtin's bound method (``events.append``) has no __func__: the
    # same when its object is, and its name (a str) equal.
    self_a, self_b = getattr(a, "__self__", None), getattr(b, "__self__", None)
    if self_a is None or self_a is not self_b:
        return False
    if type(a) is type(b) is types.BuiltinMethodType:
        return a.__name__ == b.__name__
    return getattr(a, "__func__", None) is getattr(b, "__func__", None) is not None


def _unbound_launch(claimed: Claimed) -> None:
    raise AssertionError("Scheduler.launch was not set before tasks were claimed")
