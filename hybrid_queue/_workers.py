"""Running handlers: worker coroutines on the loop, and sync handlers on an executor.

A worker slot, once claimed from the scheduler, moves with the work:

- a worker coroutine on the loop awaits coroutine handlers directly, one
  after another, for as long as the heap hands it coroutine tasks; a new
  worker is made only when a claimed task finds every worker suspended in
  a handler, so handlers that never suspend need one worker, however many
  slots there are;
- with a thread pool, the executor thread that ran a sync handler asks the
  scheduler for the next task itself and runs it too if it is sync, so a
  stream of sync tasks never crosses to the loop at all;
- with any other executor (processes, a cluster), the handler is submitted
  as it is, and the executor's completion callback reports back;
- a task of the other kind is handed across with the slot still claimed.

Only completions that something on the loop waits for (a handle, a
``get_result``) cross to the loop, and those cross in batches.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import difflib
import functools
import threading
import types
from collections import deque
from collections.abc import Callable
from typing import Any

from ._errors import CallError
from ._executors import Executors
from ._interrupt import Interruptible
from ._nesting import Holder, install_holder, running_slot, settle_loan
from ._pool import WorkerPool
from ._remote import Raised, RemoteCall, Returned, executor_failure, refusal_advice
from ._scheduler import Claimed, Scheduler
from ._task import Record, TaskStatus

__all__ = ["Runner"]

RUNNING = TaskStatus.RUNNING

# What a sync handler returns when it should have been submitted as async.
_NOT_RESULTS = frozenset({types.CoroutineType, types.AsyncGeneratorType})

# Executors whose threads run a chain of sync tasks in one submitted call.
_THREAD_POOLS = (concurrent.futures.ThreadPoolExecutor, WorkerPool)

# How long close() waits for workers it had to cancel outright.
_FORCED_UNWIND = 1.0


class _Abandoned(Exception):
    """Placeholder outcome of an attempt that was cancelled or timed out before it started."""


_ABANDONED = _Abandoned()


class Runner:
    """Starts claimed tasks and runs them to the end of each attempt."""

    def __init__(
        self,
        scheduler: Scheduler,
        executor: concurrent.futures.Executor | None,
        factory: Callable[[], concurrent.futures.Executor] | None = None,
        interrupt_sync: bool = False,
    ) -> None:
        self._sched = scheduler
        # Whether a sync handler on a thread pool is interrupted (an exception
        # raised in its thread) when its task is cancelled or times out.
        self.interrupt_sync = interrupt_sync
        # The caller's executor, or the queue's own (see _executors).
        self.executors = Executors(executor, factory)
        # Loop thread only: parked workers (each waits on its future for a
        # claimed task, or None to exit), every worker task alive, and claims
        # that found no parked worker. Those wait in _ready for a worker that
        # finishes its handler, or for _spawn, which makes workers only for
        # claims still waiting once the running workers have yielded: a stream
        # of handlers that never suspend needs one worker, not one per slot.
        self._parked: deque[asyncio.Future[tuple[Record, int] | None]] = deque()
        self._workers: set[asyncio.Task[None]] = set()
        self._unstarted: dict[asyncio.Task[None], tuple[Record, int]] = {}
        self._ready: deque[tuple[Record, int]] = deque()
        self._spawn_posted = False
        self._spawn_burst = 1
        self._closing = False
        # What worker coroutines (and so coroutine handlers) start from: set
        # by the queue's start() to a copy of its caller's context.
        self.context = contextvars.Context()
        # Per-thread queue of starts, so that an executor which completes a
        # future inside submit() cannot recurse once per task.
        self._local = threading.local()
        scheduler.launch = self.launch

    @property
    def executor(self) -> concurrent.futures.Executor | None:
        """The executor sync handlers go to now (None before the owned one is made)."""
        return self.executors.current

    # ------------------------------------------------------------------ starting

    def launch(self, claimed: Claimed) -> None:
        """Start each claimed task on its side. Any thread; no lock held."""
        for task, attempt in claimed:
            self._start(task, attempt)

    def _start(self, task: Record, attempt: int) -> None:
        pending: deque[tuple[Record, int]] | None = getattr(self._local, "pending", None)
        if pending is not None:
            pending.append((task, attempt))
            return
        self._local.pending = pending = deque([(task, attempt)])
        try:
            while pending:
                claim = self._start_one(*pending.popleft())
                if claim is not None:
                    pending.append(claim)
        finally:
            self._local.pending = None

    def _start_one(self, task: Record, attempt: int) -> tuple[Record, int] | None:
        # Returns the next claim when this task could not start: its slot moves on.
        if task._is_coro:
            if self._sched.at_loop.now_or_soon(self._start_coro, task, attempt):
                return None
            error = RuntimeError(
                f"task {task._id!r} could not start: the queue's event loop is closed (it ended without shutdown())"
            )
            return self._sched.finish(task, attempt, False, None, error, retry=False)
        executor = self.executors.current
        assert executor is not None, "Executors.open() was not called before the first claim"
        # Thread pools run a chain of sync tasks in one submitted call; other
        # executors get a RemoteCall, which may have to be pickled.
        inline = isinstance(executor, _THREAD_POOLS)
        # The chain's claim travels in a box that the chain empties as it
        # starts (see _sync_chain for why).
        box = [(task, attempt)]
        try:
            if inline:
                what: Callable[..., Any] = functools.partial(self._sync_chain, box)
            else:
                fn, args, kwargs = task._fn, task._args, task._kwargs
                if fn is None or task._status is not RUNNING or task._attempt != attempt:
                    return self._sched.finish(task, attempt, False, None, _ABANDONED)
                what = RemoteCall(fn, args, kwargs or {})
            try:
                future = executor.submit(what)
            except concurrent.futures.BrokenExecutor:
                # Broke since the last task; an owned one is replaced and
                # this task goes to the new one. The caller's stays broken.
                replacement = self.executors.replace(executor)
                if replacement is None:
                    raise
                executor = replacement
                future = executor.submit(what)
        except Exception as exc:  # shut down, broken, or rejecting these arguments
            error = RuntimeError(f"the executor refused task {task._id!r} ({exc!r}); " + refusal_advice(exc))
            error.__cause__ = exc
            return self._sched.finish(task, attempt, False, None, error, retry=False)
        if task._timeout is not None:
            self._sched.at_loop.now_or_soon(self._sched.arm_timeout, task, attempt, self._timed_out)
        if inline:
            future.add_done_callback(functools.partial(self._chain_done, box, executor))
        else:
            task._runner = future
            future.add_done_callback(functools.partial(self._foreign_done, task, attempt, executor))
        return None

    def _chain_done(
        self,
        box: list[tuple[Record, int]],
        executor: concurrent.futures.Executor,
        chain: concurrent.futures.Future[None],
    ) -> None:
        # Whatever thread the executor completes its futures on, perhaps
        # holding the executor's own lock (shutdown(cancel_futures=True) does):
        # so never start work from here (hand_over=False).
        if not box:
            return  # the chain ran; it reported every task it held
        task, attempt = box.pop()
        if chain.cancelled():
            why = "cancelled it before it ran (shut down with cancel_futures=True?)"
            advice = "do not shut down an executor while a HybridQueue still uses it"
        elif isinstance(chain.exception(), concurrent.futures.BrokenExecutor):
            why = f"broke before running it ({chain.exception()!r})"
            advice = (
                "the queue replaces its own pool"
                if self.executors.owned
                else "a pool you passed in stays broken: replace it, or pass a function that makes pools"
            )
            if self.executors.owned:  # the queue's own pool: the loop replaces it
                self._sched.at_loop.soon(self.executors.replace, executor)
        else:  # failed without running it: cannot happen to a ThreadPoolExecutor
            why, advice = f"failed the call ({chain.exception()!r})", "report this as a bug"
        error = RuntimeError(f"the executor {why}: task {task._id!r} failed; {advice}")
        self._sched.finish(task, attempt, False, None, error, retry=False, hand_over=False)

    def _timed_out(self, task: Record, attempt: int) -> None:
        # Loop thread: an attempt outlived its timeout. A coroutine handler
        # is cancelled; if it unwinds at once, its worker reports the
        # TimeoutError and frees the slot in the same step. A handler that
        # ignores the cancel, or a sync handler (which cannot be interrupted),
        # fails now regardless and is abandoned: its slot stays busy until it
        # really returns, and what it returns is discarded.
        if task._is_coro:
            self._sched.interrupt(task, attempt)
            # Queued behind the worker's wake-up, which cancel() queued first.
            self._sched.at_loop.soon(self._abandon_late, task, attempt)
        else:
            self._abandon_late(task, attempt)
            # Then stop the call where that can be done: on an executor of
            # futures, cancel it (not started yet; a Dask task, released) and
            # the future's callback frees the slot now; on a thread pool with
            # interrupt_sync, raise TaskInterrupted in the handler's thread.
            # Its outcome is dropped: the attempt has already failed. A
            # running process cannot be stopped.
            self._sched.interrupt(task, attempt)

    def _abandon_late(self, task: Record, attempt: int) -> None:
        self._sched.expire_attempt(task, attempt, _timeout_error(task, attempt))

    # ------------------------------------------------------------- sync handlers

    def _sync_chain(self, box: list[tuple[Record, int]]) -> None:
        # Executor thread: run sync tasks while the heap hands us sync tasks.
        # A handler's exception keeps its traceback's frames, and each frame
        # its caller's (f_back): this one, the executor's and the work item
        # that holds this call's arguments. So none of them may keep a task
        # record (often the user's handle) once done with it: the claim
        # comes in a box emptied here, and lives only in ``claim``.
        sched = self._sched
        interruptible = sched if self.interrupt_sync else None
        current = running_slot()  # this thread's, for current_task() and for waits that lend its slot
        current[1] = sched
        claim: tuple[Record, int] | None = box.pop()
        while claim is not None and not claim[0]._is_coro:
            claim = sched.finish(claim[0], claim[1], *_call_sync(claim, interruptible, current))
            if claim is not None and not claim[0]._is_coro and claim[0]._timeout is not None:
                sched.at_loop.now_or_soon(sched.arm_timeout, claim[0], claim[1], self._timed_out)
        if claim is not None:
            self._start(*claim)  # a coroutine task: its slot goes to the loop
            claim = None

    def _foreign_done(
        self,
        task: Record,
        attempt: int,
        executor: concurrent.futures.Executor,
        future: concurrent.futures.Future[Any],
    ) -> None:
        # Whatever thread the executor completes futures on, perhaps under
        # its own lock: report, and let the loop start what comes next.
        if task._runner is future:  # not a later attempt's
            task._runner = None
        error: BaseException | None = None
        retry = True
        ok, value = False, None
        if future.cancelled():
            error = concurrent.futures.CancelledError()
        elif (failure := future.exception()) is None:
            # RemoteCall returns the handler's outcome either way, so the
            # executor itself succeeded; a handler's exception is retried
            # as the policy says.
            outcome = future.result()
            if isinstance(outcome, Returned):
                ok, value = True, outcome.value
            elif isinstance(outcome, Raised):
                error = outcome.error
            else:
                retry = False
                error = TypeError(
                    f"the executor returned {type(outcome).__qualname__} for task {task._id!r} instead of "
                    "running the call it was given; pass an executor that calls what it is submitted"
                )
        else:
            # Only the executor can fail a RemoteCall's future: it could not
            # send the call or its outcome, or its worker died. Not retried:
            # the same task would fail the same way, or kill the next worker.
            retry = False
            error = executor_failure(task, failure)
            error.__cause__ = failure
            if isinstance(failure, concurrent.futures.BrokenExecutor) and self.executors.owned:
                self._sched.at_loop.soon(self.executors.replace, executor)
        self._sched.finish(task, attempt, ok, value, error, retry=retry, hand_over=False)

    # -------------------------------------------------------- coroutine handlers

    def _start_coro(self, task: Record, attempt: int) -> None:
        # Loop thread: give the claim to a parked worker, or leave it ready
        # for the next worker that is free, making one later if none is.
        parked = self._parked
        while parked:
            waiter = parked.popleft()
            if not waiter.done():
                waiter.set_result((task, attempt))
                return
        self._ready.append((task, attempt))
        if not self._spawn_posted:
            self._spawn_posted = True
            self._sched.at_loop.soon(self._spawn)

    def _spawn(self) -> None:
        # Loop thread, queued behind the steps of every worker that was
        # runnable when the claims came: whatever is still ready now found
        # them all suspended in a handler (or there were none). Each round
        # that still finds claims waiting makes twice as many workers as the
        # last, so N handlers that all suspend start within log2(N) rounds.
        self._spawn_posted = False
        ready = self._ready
        if not ready:
            self._spawn_burst = 1
            return
        for _ in range(min(self._spawn_burst, len(ready))):
            self._make_worker(ready.popleft())
        if ready:
            self._spawn_burst *= 2
            self._spawn_posted = True
            self._sched.at_loop.soon(self._spawn)
        else:
            self._spawn_burst = 1

    def _make_worker(self, claim: tuple[Record, int]) -> None:
        assert self._sched.loop is not None
        # In a copy of the context the queue was started in, not of whatever
        # runs now (a handler whose submit claimed the task, whose values
        # the worker would keep for as long as it lives).
        worker = self._sched.loop.create_task(
            self._work(claim), name="hybrid_queue-worker", context=self.context.copy()
        )
        self._workers.add(worker)
        self._unstarted[worker] = claim
        worker.add_done_callback(self._worker_done)

    def _worker_done(self, worker: asyncio.Task[None]) -> None:
        self._workers.discard(worker)
        # Cancelled before its first step (the loop closing, or code that
        # cancels every task), it never took its claim: settle it here.
        claim = self._unstarted.pop(worker, None)
        if claim is not None:
            self._give_up(*claim, asyncio.CancelledError())

    async def _work(self, claim: tuple[Record, int] | None) -> None:
        # Loop thread. A worker holds a slot while it has a claim; without
        # one it parks until _start_coro hands it a claim, or close() None.
        me = asyncio.current_task()
        assert me is not None and self._sched.loop is not None
        del self._unstarted[me]  # the claim is this worker's from now on
        # In this task's own context: its handlers, and the tasks they make,
        # see it when they wait for a task of this queue (see _nesting).
        holder = Holder(self._sched, me)
        install_holder(holder)
        ready = self._ready
        while claim is not None:
            task, attempt = claim
            if task._is_coro:
                holder.running = claim
                claim = await self._run_coro(me, holder, task, attempt)
            else:
                self._start(task, attempt)  # the slot goes with the sync task
                claim = None
            if ready:
                # Claims made before this one wait longest: run them first.
                # Each holds a slot of its own, as this one does.
                if claim is not None:
                    ready.append(claim)
                claim = ready.popleft()
            if claim is not None:
                continue
            # A parked frame must not keep the last task (and its result) alive.
            claim = None
            del task
            if self._closing:
                return
            waiter: asyncio.Future[tuple[Record, int] | None] = self._sched.loop.create_future()
            self._parked.append(waiter)
            # No slot: a task a handler left behind has none to lend. And a
            # parked worker keeps no record (nor its result) alive.
            holder.running = None
            try:
                claim = await waiter
            except asyncio.CancelledError as exc:
                # Cancelled from outside just as a claim arrived: do not lose it.
                if waiter.done() and not waiter.cancelled() and (lost := waiter.result()) is not None:
                    self._give_up(*lost, exc)
                raise

    def _give_up(self, task: Record, attempt: int, exc: BaseException, held: bool = True) -> None:
        # The worker is being cancelled from outside (the loop is closing)
        # while it holds a claim: the task ends CANCELLED, the slot moves on.
        self._sched.cancel(task._id, record=task)
        claim = self._sched.finish(task, attempt, False, None, exc, held=held)
        if claim is not None:
            self.launch([claim])

    async def _run_coro(
        self, me: asyncio.Task[None], holder: Holder, task: Record, attempt: int
    ) -> tuple[Record, int] | None:
        fn, args, kwargs = task._fn, task._args, task._kwargs
        # Unlocked read: cancel() sets the state under the lock before it
        # posts interrupt() to this thread. If we see RUNNING, the interrupt
        # (if any) runs after we set ``runner`` below, and cancels the
        # handler; if not, the handler never starts.
        if fn is None or task._status is not RUNNING or task._attempt != attempt:
            return self._sched.finish(task, attempt, False, None, _ABANDONED)
        ok = False
        value: Any = None
        error: BaseException | None = None
        task._runner = me
        if task._timeout is not None:
            self._sched.arm_timeout(task, attempt, self._timed_out)
        try:
            value = await (fn(*args, **kwargs) if kwargs else fn(*args))
            ok = True
        except asyncio.CancelledError as exc:
            if task._runner is me and me.cancelling():
                # Not our interrupt: the worker itself is being cancelled
                # (the loop is closing). Settle the task and let it end.
                task._runner = None
                self._give_up(task, attempt, exc, holder.loan is None or settle_loan(holder))
                raise
            error = exc  # our interrupt, or the handler's own CancelledError
        except BaseException as exc:  # a worker survives whatever the handler raises
            error = _programming_error(exc, task._id, fn, kwargs)
        # interrupt() clears ``runner`` before it cancels us. If another
        # worker has set it since (the retry of an attempt we were slow to
        # abandon), it is theirs: leave it.
        interrupted = task._runner is not me
        if not interrupted:
            task._runner = None
        if interrupted and task._status is RUNNING and task._attempt == attempt:
            # Interrupted, yet neither cancelled nor expired: the deadline's
            # cancel. Whatever the handler did with it, the attempt timed out.
            ok, value, error = False, None, _timeout_error(task, attempt)
        if holder.loan is None:
            claim = self._sched.finish(task, attempt, ok, value, error, True)  # on_loop, positional: hot
        else:
            # The handler ended with waits of its own still counted (tasks it
            # made, still waiting): the slot may be out on loan.
            claim = self._sched.finish(task, attempt, ok, value, error, True, held=settle_loan(holder))
        # interrupt() cleared ``runner`` and cancelled us once: take that
        # request back so the next handler starts with a clean slate, unless
        # someone else cancelled the worker too.
        if interrupted and me.uncancel():
            if claim is not None:
                self.launch([claim])
            raise asyncio.CancelledError
        # A handler's exception keeps this frame (the f_back of the handler's
        # own): let go of the record (the handle) and the outcome first.
        del task, fn, args, kwargs, value, error
        return claim

    # ---------------------------------------------------------------- shutdown

    async def close(self, grace: float | None) -> bool:
        """End every worker coroutine; True if all ended within ``grace`` seconds. Loop only."""
        self._closing = True  # from now on a worker without a claim exits instead of parking
        while self._parked:
            waiter = self._parked.popleft()
            if not waiter.done():
                waiter.set_result(None)
        # Claims still waiting for a worker get one each now, so that the
        # wait below covers them (each holds a slot until its worker reports).
        while self._ready:
            self._make_worker(self._ready.popleft())
        if not self._workers:
            return True
        _, stuck = await asyncio.wait(set(self._workers), timeout=grace)
        if not stuck:
            return True
        # Cancel the worker itself: its handler gets one more CancelledError.
        # Give them a moment to unwind, so that a handler that does is gone
        # when shutdown returns; one that ignores every cancel cannot be ended.
        for worker in stuck:
            worker.cancel()
        await asyncio.wait(stuck, timeout=_FORCED_UNWIND)
        return False


def _timeout_error(task: Record, attempt: int) -> TimeoutError:
    return TimeoutError(
        f"task {task._id!r} attempt {attempt} exceeded its timeout of {task._timeout} s"
        + ("" if task._is_coro else " (a sync handler is not stopped unless interrupted; its late result is discarded)")
    )


def _call_sync(
    claim: tuple[Record, int], interruptible: Scheduler | None, current: list[Any]
) -> tuple[bool, Any, BaseException | None]:
    task, attempt = claim
    fn, args, kwargs = task._fn, task._args, task._kwargs
    if fn is None:
        return False, None, _ABANDONED
    if interruptible is not None:
        # The state is checked and the runner published under the
        # scheduler's lock: a cancel or timeout after that finds it (and
        # before call() begins, call() then never runs fn); a late thread of
        # an attempt that ended cannot put its own over a newer attempt's.
        call = Interruptible()
        if not interruptible.publish_runner(task, attempt, call):
            return False, None, _ABANDONED
    elif task._status is not RUNNING or task._attempt != attempt:
        # Unlocked read, as in Runner._run_coro: a task cancelled before this
        # point never starts; one cancelled after it is abandoned to finish.
        return False, None, _ABANDONED
    task_id = task._id
    current[0] = claim  # for current_task(); cleared before returning
    del task, claim  # not kept by a failure's traceback, which keeps this frame (see Runner._sync_chain)
    try:
        if interruptible is not None:
            ok, value, error = call.call(fn, args, kwargs)
            if not ok:
                assert error is not None
                return False, None, _programming_error(error, task_id, fn, kwargs)
        else:
            try:
                value = fn(*args, **kwargs) if kwargs else fn(*args)
            except BaseException as exc:  # recorded as the attempt's failure, like concurrent.futures
                return False, None, _programming_error(exc, task_id, fn, kwargs)
    finally:
        current[0] = None
    if type(value) in _NOT_RESULTS:
        if type(value) is types.CoroutineType:
            value.close()  # never run: closing it spares a "never awaited" warning
        return (
            False,
            None,
            CallError(
                f"the sync handler of task {task_id!r} returned {type(value).__name__} object; submit the async "
                "function itself so it runs on the event loop (async generator functions are not handlers)"
            ),
        )
    return True, value, None


def _programming_error(
    error: BaseException, task_id: Any, fn: Callable[..., Any], kwargs: dict[str, Any] | None
) -> BaseException:
    # A TypeError whose traceback holds no frame past the one that made the
    # call was raised by the call itself: the arguments do not bind (or a C
    # function refused them). Retrying cannot help, so it is made final.
    if type(error) is not TypeError or error.__traceback__ is None or error.__traceback__.tb_next is not None:
        return error
    name = getattr(fn, "__qualname__", None) or repr(fn)
    hint = ""
    options = ("priority", "task_id", "max_retries", "timeout", "keep_result")
    for key in kwargs or ():
        close = difflib.get_close_matches(key, options, n=1)
        if close and key not in options:
            hint = f" (did you mean the queue's option {close[0]}=, not the handler keyword {key}=?)"
            break
    final = CallError(
        f"task {task_id!r}: the handler {name} cannot be called with the arguments it was submitted with: "
        f"{error}{hint}; not retried: fix the submit call"
    )
    final.__cause__ = error
    return final
