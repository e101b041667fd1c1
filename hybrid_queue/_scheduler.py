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
import math
import threading
from collections.abc import Callable, Hashable
from typing import Any

from ._admission import Admission
from ._clock import TimerHandle
from ._delays import Delays
from ._errors import CallError
from ._events import EventKind
from ._interrupt import Interruptible
from ._lifecycle import Lifecycle
from ._lock import YieldingLock, disown_in_forked_child
from ._queries import Queries
from ._state import (
    CANCELLED,
    COMPLETED,
    FAILED,
    NOTHING,
    PENDING,
    RETRY_WAIT,
    RUNNING,
    SCHEDULED,
    Claimed,
)
from ._task import Record, TaskHandle, TaskResult, TaskStatus
from ._validate import is_plain_id

__all__ = ["Claimed", "Scheduler"]

logger = logging.getLogger("hybrid_queue")

_CANCELLED_ERRORS = (asyncio.CancelledError, concurrent.futures.CancelledError)
_new_tuple = tuple.__new__
_EVENT_OF = {COMPLETED: EventKind.COMPLETED, FAILED: EventKind.FAILED, CANCELLED: EventKind.CANCELLED}


class Scheduler(Admission, Queries, Delays):
    """Owner of the heap, the live-task index, the result store and the counters.

    The fields and the lock's invariant are in ``_state``; admission, reads,
    keys (``_lanes``) and due times (``_delays``) in their own modules; here,
    the task state machine: claim, finish, lending, retries, timeouts,
    cancellation, shutdown and expiry.

    Thread-safe: every public method may be called from any thread, except
    those documented as loop-only.
    """

    # --------------------------------------------------------------- claiming

    def start(self) -> None:
        """Begin dispatching: claim a slot for each waiting task, up to ``workers``."""
        disown_in_forked_child(self)
        with self.lock:
            self.life.move(Lifecycle.RUNNING)
            claimed = self._claim_locked()
            arm = self._arm_expiry_locked()
            if self._due:
                self._rearm_locked()
        if arm:
            self.at_loop.now_or_soon(self._expire)
        if claimed:
            self.launch(claimed)

    def _claim_locked(self) -> Claimed:
        # Pops tasks into free slots. The caller launches what it returns.
        if not self.life.claims:
            return NOTHING
        claimed: Claimed = []
        take = self._heap.take
        keyed = self._keyed  # then the heap holds lanes (see _lanes)
        while self._free and (task := take()) is not None:
            if keyed:
                task = self._lane_take_locked(task, self.clock())
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
        if self._listeners.callbacks:
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
        wake = more = hold = False
        with self._guard():
            if task._key is not None:
                # Before the slot moves on: it may go to this key's next task.
                self._lane_done_locked(task, now)
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
            # bounded_reruns: the task leaves the set of ends to write here,
            # whichever way its slot goes (kept for the disk unless it is lent
            # or a handler waiting for this task takes it).
            owed = task in self._ends_to_write if self._ends_to_write else False
            if owed:
                self._ends_to_write.discard(task)
            if not held:
                grant = nxt = None
                wake = bool(self._idle_waiters) and not self._live and self._free == self.workers
                # The key of this task may let a task of it start in a free slot now.
                more = self._keyed and self.life.claims and self._free > 0 and bool(self._heap)
            elif result is not None and (lender := task._lender) is not None:
                # A handler waits for this task: it goes on in this slot,
                # ahead of the heap (it takes it back with reclaim). Even with
                # bounded_reruns: it was running already.
                task._lender = None
                lender.reserved += 1
                grant = nxt = None
                more = self._keyed and self.life.claims and self._free > 0 and bool(self._heap)
            elif owed:
                # A journal with bounded_reruns: the slot stays busy until
                # the task's end is on disk, then goes where a freed one goes
                # (see JournaledScheduler.hold_slot).
                grant = nxt = None
                hold = True
                # The task's key may let its next task start in a free slot now.
                more = self._keyed and self.life.claims and self._free > 0 and bool(self._heap)
            elif self._reclaimers:
                # A handler that lent its slot to wait for a task of this
                # queue goes on before anything new starts: it takes this slot.
                grant = self._reclaimers.popleft()
                nxt = None
            else:
                grant = None
                nxt = self._heap.take() if hand_over and self.life.claims else None
                if nxt is not None:
                    if self._keyed:
                        nxt = self._lane_take_locked(nxt, now)
                    nxt_attempt = self._begin_locked(nxt, now)
                    if self.max_queue_size:
                        self._room_freed_locked(1)
                else:
                    self._free += 1
                    more = self.life.claims and bool(self._heap)
                    wake = bool(self._idle_waiters) and not self._live and self._free == self.workers
            dropped = self._take_dropped_locked() if self._dropped else None
        del dropped  # after the lock: see _take_dropped_locked
        if grant is not None:
            grant()
        elif hold:
            self.hold_slot()
        if timer is not None:
            self.at_loop.now_or_soon(timer.cancel)
        if result is not None:
            self.deliver(task, result, on_loop)
        elif delay >= 0:
            _log_retry(task, error, delay)
            self.at_loop.now_or_soon(self._arm_retry, task, attempt, delay)
        if more:
            self.at_loop.soon(self._claim_more)
        if wake:
            # After deliver(): shutdown must not return before the last result is handed over.
            self.at_loop.now_or_soon(self._wake_idle)
        return None if nxt is None else (nxt, nxt_attempt)

    def hold_slot(self) -> None:
        """Keep the slot finish() kept until what is journaled is on disk; only a journaled scheduler does."""
        raise NotImplementedError("only a JournaledScheduler keeps slots for its journal")

    # ---------------------------------------------------------------- lending
    # A handler that waits for a task of this queue lends its slot, and takes
    # one back before it goes on (see _nesting). A ``lender`` is the object
    # of that waiting handler (a _Loan, or a sync thread's _ThreadLoan): its
    # ``reserved`` counts slots that children it waits for kept for it as
    # they ended (finish), read and written under the lock only.

    def lend(self, lender: Any = None, task_id: Any = None) -> Record | None:
        """The caller's handler, which holds a slot, starts waiting: lend its slot. Any thread, no lock held.

        The slot goes where a freed one would (a handler taking its own back,
        else the next task in the heap), so a handler that waits for a task
        it submitted cannot hold up that task, whatever ``workers`` is. The
        caller takes a slot back with ``reclaim`` before its handler goes on.
        With ``task_id``, the live task of that id keeps its slot for
        ``lender`` when it ends; it is returned (None if it is not live).
        """
        with self.lock:
            child = None
            if task_id is not None:
                child = self._live.get(task_id)
                if child is not None:
                    child._lender = lender
            passed = self._pass_slots_locked(1)
        self._after_pass(passed)
        return child

    def reclaim(self, grant: Callable[[], object], lender: Any) -> bool:
        """Take back a slot for ``lender``'s handler, which lent its own: True if it has one now.

        A slot a child kept for it comes first; otherwise the handler waits:
        ``grant()`` is called (once, from whichever thread frees a slot, with
        no lock held) when the slot is its, ahead of any task in the heap.
        Any thread, no lock held.
        """
        passed = None
        with self.lock:
            if lender.reserved:
                extra, lender.reserved = lender.reserved - 1, 0
                passed = self._pass_slots_locked(extra) if extra else None
                got = True
            elif self._free:
                self._free -= 1
                got = True
            else:
                self._reclaimers.append(grant)
                got = False
        if passed is not None:
            self._after_pass(passed)
        return got

    def pass_reserved(self, lender: Any) -> None:
        """Pass on the slots children kept for ``lender``, which still waits for others. Any thread."""
        with self.lock:
            n, lender.reserved = lender.reserved, 0
            passed = self._pass_slots_locked(n)
        self._after_pass(passed)

    def unreserve(self, child: Record, lender: Any) -> None:
        """``lender`` no longer waits for ``child``: its slot, when it ends, is not kept for it. Any thread."""
        with self.lock:
            if child._lender is lender:
                child._lender = None

    def disown_loan(self, lender: Any, children: list[Record]) -> None:
        """``lender``'s handler ended while waits of its tasks go on: nothing is kept for it any more. Any thread."""
        with self.lock:
            for child in children:
                if child._lender is lender:
                    child._lender = None
            n, lender.reserved = lender.reserved, 0
            passed = self._pass_slots_locked(n)
        self._after_pass(passed)

    def _pass_slots_locked(self, n: int) -> tuple[list[Callable[[], object]], Claimed, bool]:
        # n slots go where freed ones go: handlers taking theirs back first,
        # then the heap. Returns what to do after the lock.
        grants: list[Callable[[], object]] = []
        for _ in range(n):
            if self._reclaimers:
                grants.append(self._reclaimers.popleft())
            else:
                self._free += 1
        claimed = self._claim_locked() if n else NOTHING
        # A slot passed on after its handler ended may be the last one.
        wake = bool(self._idle_waiters) and not self._live and self._free == self.workers
        return grants, claimed, wake

    def _after_pass(self, passed: tuple[list[Callable[[], object]], Claimed, bool]) -> None:
        grants, claimed, wake = passed
        for grant in grants:
            grant()
        if claimed:
            self.launch(claimed)
        if wake:
            self.at_loop.now_or_soon(self._wake_idle)

    def _claim_more(self) -> None:
        # Loop thread: fill slots that a hand_over=False finish freed.
        with self.lock:
            claimed = self._claim_locked()
        if claimed:
            self.launch(claimed)

    def arm_timeout(self, task: Record, attempt: int, callback: Callable[[Record, int], None]) -> None:
        """Call ``callback(task, attempt)`` after ``task._timeout`` unless the attempt ends first. Loop only."""
        assert self.at_loop.loop is not None and task._timeout is not None
        with self.lock:
            if task._status is RUNNING and task._attempt == attempt:
                task._timer = self.at_loop.later(task._timeout, callback, task, attempt)

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
            self.at_loop.now_or_soon(self._arm_retry, task, attempt, delay)

    def _fail_locked(self, task: Record, error: BaseException, now: float) -> float:
        # Returns the retry delay, or -1.0 when the failure is final. The
        # caller logs the retry after releasing the lock (logging runs
        # handlers and filters: user code).
        if (
            task._retry_count >= task._max_retries
            or not self.life.retries
            or type(error) is CallError  # the same call would fail the same way
            or not self.policy.is_retryable(error)
        ):
            return -1.0
        delay = self.policy.get_delay(task._retry_count)
        task._retry_count += 1
        task._status = RETRY_WAIT
        self._retrying += 1
        self._retries += 1
        if self._listeners.callbacks:
            self._emit_locked(EventKind.RETRY_SCHEDULED, task._id, task._attempt, now, error=error, delay=delay)
        return delay

    def _arm_retry(self, task: Record, attempt: int, delay: float) -> None:
        # Loop thread. The timer is set under the lock so cancel() sees it.
        with self.lock:
            if task._status is RETRY_WAIT and task._attempt == attempt:
                task._timer = self.at_loop.later(delay, self._requeue, task)

    def _requeue(self, task: Record) -> None:
        # Loop thread: the retry delay is over.
        with self.lock:
            if task._status is not RETRY_WAIT:
                return
            task._timer = None
            task._status = PENDING
            self._retrying -= 1
            if self._plain:
                task._ticket = self._heap.push(task._priority, task)
            else:
                self._enqueue_locked(task, self.clock())
            claimed = self._claim_locked() if self._free else NOTHING
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
        if self._listeners.callbacks:
            kind = _EVENT_OF[status]
            self._emit_locked(kind, task._id, task._attempt, now, duration, error)
        evicted = self._store.add(result, now) if task._keep else None
        if evicted:
            self._evicted += len(evicted)
            self._dropped.extend(evicted)
            if self._listeners.callbacks:
                for old in evicted:
                    self._emit_locked(EventKind.EVICTED, old.task_id, 0, now)
        if not self._expiry_armed and self._arm_expiry_locked():
            self.at_loop.soon(self._expire)
        return result

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
        # A task submitted from async code is its own handle; only the record
        # of one submitted from sync code has a future (see TaskHandle).
        handle = task if isinstance(task, TaskHandle) else None
        cfuture = None
        if handle is None:
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
        if on_loop or threading.get_ident() == self.at_loop.thread:
            self._settle_on_loop(task, handle, result)
        elif (bridge := self.at_loop.bridge) is not None:
            bridge.post(self._settle_on_loop, task, handle, result)

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
            if task is self._interrupting and threading.get_ident() == self.at_loop.thread:
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
            if self._keyed:
                self._lane_remove_locked(task, now)
            else:
                self._heap.remove(task._ticket)
            if self.max_queue_size:
                self._room_freed_locked(1)
        elif state is SCHEDULED:
            self._due.remove(task._ticket)
            self._scheduled -= 1
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
                self.at_loop.now_or_soon(timer.cancel)
            if state is RUNNING:
                runner = task._runner
                if type(runner) is Interruptible and runner.thread_id != threading.get_ident():
                    # A sync handler that can be interrupted from any thread:
                    # at once, not a loop step (and a GIL hand-over) later. A
                    # stale one (an earlier attempt's) refuses, as it is done.
                    runner.interrupt()
                else:
                    self.at_loop.now_or_soon(self.interrupt, task, attempt)
            self.deliver(task, result)
        if wake:
            self.at_loop.now_or_soon(self._wake_idle)

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

    def stop_retrying(self) -> None:
        """From now on a failed attempt ends its task (FAILED) instead of scheduling a retry. After stop_accepting."""
        with self.lock:
            if self.life.state is Lifecycle.DRAINING:
                self.life.move(Lifecycle.CANCELLING)

    def disown_after_fork(self) -> None:
        """In a forked child (see ``_lock``): refuse everything from now on."""
        # Only the forking thread exists: the lock may have been held by a
        # thread that is gone, so it is replaced (nothing else runs yet).
        self._locking = YieldingLock()
        self.lock = self._locking.lock
        self._guard = self._locking.guard
        self._room = threading.Condition(self.lock)
        if self.life.state is not Lifecycle.ORPHANED:
            self.life.move(Lifecycle.ORPHANED)

    def mark_stopped(self) -> None:
        """The queue is shut down (or its loop ended without it): nothing runs any more. Any thread; idempotent."""
        with self.lock:
            self._stopped_locked()

    def _stopped_locked(self) -> None:
        if self.life.state in (Lifecycle.DRAINING, Lifecycle.CANCELLING):
            self.life.move(Lifecycle.STOPPED)

    async def wait_idle(self) -> None:
        """Return once no task is live and every slot is free. Loop only."""
        assert self.at_loop.loop is not None
        with self.lock:
            if not self._live and self._free == self.workers:
                return
            waiter = self.at_loop.loop.create_future()
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
            due_timer, self._due_timer = self._due_timer, None
            self._due_at = math.inf
            # Stop the timer chain: _expire re-arms only while the queue claims.
            self._stopped_locked()
            idle = self._idle_waiters
            self._idle_waiters = []
        if timer is not None:
            timer.cancel()
        if due_timer is not None:
            due_timer.cancel()
        for waiter in idle:
            waiter.cancel()

    # ---------------------------------------------------------------- expiry

    def _arm_expiry_locked(self) -> bool:
        # True when the caller must run _expire on the loop to start the chain.
        if self._expiry_armed or not self.life.claims or not len(self._store):
            return False
        self._expiry_armed = True
        return True

    def _expire(self) -> None:
        # Loop thread: drop what is due and sleep until the next result is.
        with self.lock:
            now = self.clock()
            expired = self._store.expire(now)
            self._expired += len(expired)
            if self._listeners.callbacks:
                for old in expired:
                    self._emit_locked(EventKind.EXPIRED, old.task_id, 0, now)
            due = self._store.next_expiry()
            # Dropped after the lock (see _take_dropped_locked).
            dropped = (expired, self._take_dropped_locked())
            if due is None or not self.life.claims:
                self._expiry_armed = False
                self._expiry_timer = None
            else:
                self._expiry_timer = self.at_loop.later(max(due - now, 0.0), self._expire)
        del dropped


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
