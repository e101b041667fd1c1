"""Handlers that wait for tasks of their own queue: the waiting handler lends its worker slot.

Without this, ``workers`` handlers that each wait for a task they submitted
hold every slot while those tasks wait in the heap for one: a deadlock,
whatever ``workers`` is. A fork-join pool meets the same problem, and its
waiting worker helps. Here a waiting handler lends its slot: the slot goes
where a freed one would (the next task in the heap). When the task it waits
for ends, that task's slot is kept for it (``record._lender``, see
``Scheduler.finish``); a wait that ended some other way takes the first
slot freed; either way ahead of any task in the heap (``Scheduler.lend``
and ``Scheduler.reclaim``).

The rule this keeps: at most ``workers`` handlers hold a slot, and a handler
that is not waiting for a task of its queue holds one. A handler that waits
is still RUNNING, so ``stats().running`` may exceed ``busy_workers``.

How a wait is seen:

- coroutine handlers: each worker coroutine puts its ``Holder`` in a
  ContextVar once, so the tasks a handler creates (``asyncio.gather``'s,
  a TaskGroup's) see it too. A task submitted in such a context gets a
  ``ChildHandle``, whose ``add_done_callback``, called in such a context
  while the worker runs a handler, counts one wait of the holder's
  current ``_Loan``: the first wait lends the slot; the callback is wrapped,
  and the wrapper that ends the last wait takes a slot back before it calls
  the callback that resumes the handler (or holds the call back, to run in
  its own context, until a slot is free). A callback removed before it ran
  (``asyncio.wait`` that returned early, a timeout, ``shield``), or one
  whose handle was cancelled, ends its wait at once: the handler goes on,
  and takes back the first slot that is free.
- sync handlers: ``TaskFuture.result()`` and ``exception()`` on a worker
  thread of the same queue lend the slot for the blocking wait; the queue's
  own pool may start one more thread meanwhile, so that a sync task that
  gets the slot has a thread to run on.

Where the rule bends, and why: a handler that goes on before the tasks it
waited for have all ended (``gather`` that raised the first failure,
``asyncio.wait(..., FIRST_COMPLETED)``, a cancelled or timed-out wait) runs
beside the task its slot went to until a slot is free again, so that it can
unwind without waiting for a stuck child; and a task a handler started
that waits while its worker runs that handler or a later one counts as
that handler waiting (telling them apart costs a ContextVar switch per
task).
"""

from __future__ import annotations

import contextvars
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ._interrupt import shielded
from ._pool import WorkerPool

if TYPE_CHECKING:
    import asyncio

    from ._queue import HybridQueue
    from ._scheduler import Scheduler
    from ._task import ChildHandle, Record

__all__ = [
    "Holder",
    "add_waiting_callback",
    "remove_waiting_callback",
    "running_slot",
    "settle_loan",
    "thread_slot",
    "wait_lending",
]

T = TypeVar("T")


class Holder:
    """A worker coroutine's slot, as its handlers' waits see it. Loop thread only.

    ``running``: the claim ``(record, attempt)`` whose handler the worker
    runs now (holding its slot, or having lent it); None while the worker
    is parked without one. ``loan``: the lending in progress, from a
    handler's first wait until its slot is back. ``worker``: a weak
    reference to the worker's asyncio task, which the handlers it runs are
    awaited in (tasks they create are not it, and see no ``running`` claim
    of theirs); weak, as the task's context holds this Holder.
    """

    __slots__ = ("loan", "running", "sched", "worker")

    def __init__(self, sched: Scheduler, worker: asyncio.Task[None]) -> None:
        self.sched = sched
        self.worker = weakref.ref(worker)
        self.running: tuple[Record, int] | None = None
        self.loan: _Loan | None = None


# The Holder of the worker coroutine whose context this is, if any.
_HOLDER: contextvars.ContextVar[Holder | None] = contextvars.ContextVar("hybrid_queue_holder", default=None)
current_holder = _HOLDER.get
install_holder = _HOLDER.set


class _Loan:
    """One lending of a holder's slot: from the first wait of its handler until the slot is back. Loop thread.

    ``out``: the slot is lent (or a grant for it is on its way);
    ``reclaiming``: a grant is parked with the scheduler; ``orphan``: the
    handler ended while its slot was out, so a slot that comes back is
    passed on (the handler's attempt was reported without one).
    ``reserved``: slots that children this loan waits for gave it as they
    ended (see ``Scheduler.finish``); read and written under the
    scheduler's lock only.
    """

    __slots__ = ("deferred", "holder", "orphan", "out", "reclaiming", "reserved", "waits")

    def __init__(self, holder: Holder) -> None:
        self.holder = holder
        # Identity-hashed (see _Wait), so discard() is O(1) for a fan-out.
        self.waits: set[_Wait] = set()
        self.out = False
        self.reclaiming = False
        self.orphan = False
        self.reserved = 0
        # Callbacks that ended the last wait while no slot was free: they
        # resume the handler, so they run once a slot is back, each in the
        # context it was added in.
        self.deferred: list[tuple[Callable[[Any], object], Any, contextvars.Context]] = []

    def begin(self, wait: _Wait) -> None:
        self.waits.add(wait)
        if not self.out:
            self.out = True
            self.holder.sched.lend()

    def end(self, wait: _Wait, fn: Callable[[Any], object] | None, fut: Any) -> None:
        """A wait ends: its callback runs now (``fn(fut)``), or it was removed (``fn`` None)."""
        self.waits.discard(wait)
        sched = self.holder.sched
        if self.orphan or not self.out:
            if fn is not None:
                fn(fut)
            return
        if fn is not None and fut.cancelled():
            # Cancelled (the waiter's own cancellation, a timeout, shutdown):
            # the handler must be able to unwind now, not once some other
            # handler ends; it goes on, and its slot comes back when free.
            self.end(wait, None, None)
            fn(fut)
            return
        if fn is None:
            sched.unreserve(wait.handle, self)
        if self.waits:
            # Still waiting for others: a slot this child kept for us goes on.
            if self.reserved:
                sched.pass_reserved(self)
            if fn is not None:
                fn(fut)
            return
        if self.reclaiming:
            if fn is not None:
                self.deferred.append((fn, fut, wait.context))
            return
        if sched.reclaim(self._grant, self):
            self.out = False
            if self.holder.loan is self:
                self.holder.loan = None
            if fn is not None:
                fn(fut)  # this callback runs in its own context already
            return
        self.reclaiming = True
        if fn is not None:
            self.deferred.append((fn, fut, wait.context))

    def _grant(self) -> None:
        # Any thread, no lock held: a slot is this loan's now.
        self.holder.sched.at_loop.soon(self._back)

    def _back(self) -> None:
        # Loop thread: the slot is back with the handler.
        self.reclaiming = False
        self.out = False
        sched = self.holder.sched
        if self.orphan:
            # The attempt was reported without this slot: pass it on.
            sched.lend()
        elif self.waits:
            # The handler (or a task it made) began waiting again meanwhile.
            self.out = True
            sched.lend()
        elif self.holder.loan is self:
            self.holder.loan = None
        deferred, self.deferred = self.deferred, []
        loop = sched.at_loop.loop
        assert loop is not None
        for fn, fut, context in deferred:
            # In the context the callback was added in (a task's wakeup runs
            # the task's step in the current context), as asyncio would.
            loop.call_soon(fn, fut, context=context)


class _Wait:
    """A done-callback of a ChildHandle added in a waiting handler's context: one wait of its loan.

    Compares equal to the callback it wraps, so that ``remove_done_callback``
    with the original finds it; hashes by identity.
    """

    __slots__ = ("context", "fn", "handle", "loan")

    def __init__(
        self, fn: Callable[[Any], object], loan: _Loan, handle: ChildHandle[Any], context: contextvars.Context
    ) -> None:
        self.fn = fn
        self.loan = loan
        self.handle = handle
        self.context = context

    def __call__(self, fut: Any) -> None:
        self.loan.end(self, self.fn, fut)

    def __eq__(self, other: object) -> bool:
        return other is self or self.fn == other

    __hash__ = object.__hash__


def add_waiting_callback(
    handle: ChildHandle[Any], holder: Holder, fn: Callable[[Any], object], context: contextvars.Context | None
) -> _Wait | None:
    """The wrapper to register instead of ``fn`` if this callback is a wait that lends; else None. Loop thread.

    Only while the worker runs a handler (a task left behind by a handler
    that returned lends nothing while the worker is parked; while it runs
    another handler, its waits count as that handler's: telling them apart
    would cost every coroutine task a context switch).
    """
    running = holder.running
    if running is None or handle.done():
        return None
    loan = holder.loan
    if loan is None or loan.orphan:
        loan = holder.loan = _Loan(holder)
    wait = _Wait(fn, loan, handle, contextvars.copy_context() if context is None else context)
    loan.begin(wait)
    # Its slot, when it ends, is kept for this loan ahead of the heap.
    handle._lender = loan
    return wait


def remove_waiting_callback(handle: ChildHandle[Any], holder: Holder, fn: Callable[[Any], object]) -> None:
    """End the waits on ``handle`` whose callback is ``fn``, removed before it ran. Loop thread."""
    loan = holder.loan
    if loan is None:
        return
    for wait in [w for w in loan.waits if w.handle is handle and w.fn == fn]:
        loan.end(wait, None, None)


def settle_loan(holder: Holder) -> bool:
    """The worker's handler ended: True if the worker holds its slot, False if the slot is out on loan.

    Loop thread, after the handler returned and before the attempt is
    reported. Waits still counted (tasks the handler made, still waiting)
    go on without lending; a slot that comes back later is passed on.
    """
    loan = holder.loan
    holder.loan = None
    if loan is None or not loan.out:
        return True
    # Whoever holds the lent slot frees it; a grant already parked for it
    # is passed on when it comes (see _Loan._back), and so is any slot a
    # child kept for it.
    loan.orphan = True
    holder.sched.disown_loan(loan, [w.handle for w in loan.waits])
    return False


# ---------------------------------------------------------------- sync handlers


class _Running(threading.local):
    """Per worker thread, ``slot``: a list of two items, the (record, attempt)
    whose sync handler runs there now (or None), and the scheduler of the
    queue whose chain of tasks the thread runs; None in a thread that never
    ran a handler.

    The worker sets the first item around each call (a list store: cheaper
    than a thread-local attribute, once per task) and the second once per
    chain; the handler reads them (current_task(), and a wait that lends
    the slot). The class attribute answers threads that never set it, with
    no AttributeError raised and caught on each look (a ``getattr`` default
    would cost one).
    """

    slot: list[Any] | None = None


_running = _Running()


def running_slot() -> list[Any]:
    """The calling thread's slot: ``[claim or None, scheduler or None]``. Worker threads."""
    slot = _running.slot
    if slot is None:
        slot = _running.slot = [None, None]
    return slot


def thread_slot() -> list[Any] | None:
    """The calling thread's slot if it ever ran a sync handler, else None. Any thread."""
    return _running.slot


class _ThreadLoan:
    """The lending of a sync handler's slot while its thread waits for one task. ``reserved`` as for _Loan."""

    __slots__ = ("reserved",)

    def __init__(self) -> None:
        self.reserved = 0


def wait_lending(queue: HybridQueue, wait: Callable[[], T], slot: list[Any] | None, task_id: Any) -> T:
    """Run ``wait()``, a blocking wait for task ``task_id`` of ``queue``, lending the calling handler's slot meanwhile.

    ``slot`` is the calling thread's running slot (see ``running_slot``): a
    worker thread of this queue in a sync handler lends; any other caller
    just waits. The slot is back before this returns or raises.
    """
    sched = queue._sched
    if slot is None or slot[0] is None or slot[1] is not sched:
        return wait()
    executor = queue._runner.executor
    pool = executor if isinstance(executor, WorkerPool) else None
    loan = _ThreadLoan()
    # [lent, the child's record]: set inside the shielded lend, so that an
    # interrupt raised as its shield lifts still finds the slot to reclaim.
    state: list[Any] = [False, None]
    try:
        _lend_thread(sched, pool, loan, task_id, state)
        return wait()
    finally:
        if state[0]:
            _reclaim_thread(sched, pool, loan, state[1])


@shielded
def _lend_thread(sched: Scheduler, pool: WorkerPool | None, loan: _ThreadLoan, task_id: Any, state: list[Any]) -> None:
    # The thread blocks with its slot lent: a sync task given that slot
    # needs a thread of its own, which the queue's pool may start for it.
    if pool is not None:
        pool.allow_blocked(1)
    state[1] = sched.lend(loan, task_id)
    state[0] = True


@shielded
def _reclaim_thread(sched: Scheduler, pool: WorkerPool | None, loan: _ThreadLoan, child: Record | None) -> None:
    # Shielded: an interrupt landing between the grant and the return would
    # leave the handler running on a slot nobody counts as its.
    if child is not None:
        sched.unreserve(child, loan)
    granted = threading.Event()
    if not sched.reclaim(granted.set, loan):
        granted.wait()
    if pool is not None:
        pool.allow_blocked(-1)
