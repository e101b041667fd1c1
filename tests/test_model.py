"""A model of the queue, driven by Hypothesis.

``QueueMachine`` submits coroutine and sync handlers (that succeed, fail a few
times, always fail, or block on a gate the test holds), cancels them, queries
them, opens gates, waits for quiescence and shuts the queue down, against a
real HybridQueue on a background loop. After every step it checks what must
hold whatever the threads did meanwhile; at quiescence and after shutdown it
checks every task's outcome against what its plan says, and the counters
against the model's own tally.

What the model can know for certain, it asserts exactly. The key to
"certainly": a gated handler that has started and whose gate is closed holds
its worker slot (a sync one even after it is cancelled). When such handlers
hold every slot, nothing else can start, so a task seen PENDING or RETRY_WAIT
then stays waiting until the test itself opens a gate or cancels a
coroutine occupant.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from hybrid_queue import HybridQueue, QueueShutDown, RetryPolicy, TaskFuture, TaskResult, TaskStatus

pytestmark = pytest.mark.model

# How long any wait may take before the test calls it a hang. Never a
# measurement: a correct queue finishes each wait in milliseconds.
BOUND = 10.0
ALWAYS = 99  # fail_times of a handler that never succeeds
MAX_TASKS = 12
WAITING = (TaskStatus.PENDING, TaskStatus.RETRY_WAIT)
OUTCOME_OF = {TaskStatus.COMPLETED: "completed", TaskStatus.FAILED: "failed", TaskStatus.CANCELLED: "cancelled"}
SHUTDOWN_MODES: dict[str, dict[str, Any]] = {
    "drain": {},
    "cancel_pending": {"cancel_pending": True},
    "timeout": {"timeout": 0.005},
    "now": {"wait": False},
}


class Transient(Exception):
    """What a planned failing attempt raises."""


class Gate:
    """Holds a handler of either kind until the test releases it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread_event = threading.Event()
        # Created off the loop: an asyncio.Event binds to a loop at its first wait.
        self._loop_event = asyncio.Event()
        self.released = False

    def release(self) -> None:
        """Open the gate for good. Test thread, while the loop runs."""
        if not self.released:
            self.released = True
            self._thread_event.set()
            self._loop.call_soon_threadsafe(self._loop_event.set)

    def wait_thread(self) -> None:
        # Bounded so that a failed test cannot strand a pool thread for ever.
        self._thread_event.wait(3 * BOUND)

    async def wait_loop(self) -> None:
        await self._loop_event.wait()


class Probe:
    """One submitted task: its plan, its future, and what its handler did."""

    def __init__(
        self, key: int, kind: str, api: str, fail_times: int, max_retries: int, priority: int, gate: Gate | None
    ) -> None:
        self.key = key
        self.kind = kind
        self.api = api
        self.fail_times = fail_times
        self.max_retries = max_retries
        self.priority = priority
        self.gate = gate
        self.task_id: Any = None
        self.future: Any = None  # a TaskFuture (api "blocking") or a TaskHandle (api "async")
        # Written by the handler (pool thread or loop) and the done callback.
        self._lock = threading.Lock()
        self._starts = 0
        self._returns = 0
        self._resolutions: list[tuple[str, Any]] = []
        # Model state, test thread only.
        self.cancel_won = False  # a cancel call of ours reported the task cancelled
        self.frozen_starts: int | None = None  # cancelled while certainly waiting: starts stay at this
        self.must_cancel = False  # shutdown must cancel it
        self.must_not_cancel = False  # nothing may cancel it (we did not, and the queue drains it)
        self.no_new_attempts = False  # a shutdown that cancels began: a failure is final
        self.last_key: tuple[int, int] = (0, -1)
        self.terminal: TaskStatus | None = None

    def __repr__(self) -> str:
        return (
            f"<Probe {self.key} id={self.task_id!r} {self.kind}/{self.api} fail_times={self.fail_times} "
            f"max_retries={self.max_retries} gate={self.gate is not None} starts={self._starts} "
            f"returns={self._returns} resolutions={self._resolutions}>"
        )

    # -------------------------------------------------------------- the handler

    def handler(self) -> Callable[[], Any]:
        def begin() -> int:
            with self._lock:
                self._starts += 1
                return self._starts

        def end(attempt: int) -> tuple[int, int]:
            if attempt <= self.fail_times:
                raise Transient(f"{self.key} attempt {attempt}")
            with self._lock:
                self._returns += 1
            return (self.key, attempt)

        gate = self.gate
        if self.kind == "coroutine":

            async def coroutine_handler() -> tuple[int, int]:
                attempt = begin()
                if gate is not None:
                    await gate.wait_loop()
                return end(attempt)

            return coroutine_handler

        def sync_handler() -> tuple[int, int]:
            attempt = begin()
            if gate is not None:
                gate.wait_thread()
            return end(attempt)

        return sync_handler

    def on_done(self, future: Any) -> None:
        """Done callback: record the outcome the future resolved to."""
        outcome: tuple[str, Any]
        if future.cancelled():
            outcome = ("cancelled", None)
        elif future.exception() is not None:
            outcome = ("failed", future.exception())
        else:
            outcome = ("completed", future.result())
        with self._lock:
            self._resolutions.append(outcome)

    # ------------------------------------------------------------ observations

    def counts(self) -> tuple[int, int]:
        """(handler starts, handler returns) so far."""
        with self._lock:
            return self._starts, self._returns

    def resolutions(self) -> list[tuple[str, Any]]:
        with self._lock:
            return list(self._resolutions)

    def expected(self) -> tuple[str, int]:
        """The outcome and number of attempts the plan leads to, if nothing cancels the task.

        Once a shutdown that cancels began, no new attempt starts: the task
        ends with the outcome of the last attempt that started.
        """
        if self.no_new_attempts:
            starts, _ = self.counts()
            return ("completed" if starts > self.fail_times else "failed"), starts
        if self.fail_times <= self.max_retries:
            return "completed", self.fail_times + 1
        return "failed", self.max_retries + 1

    def occupies_slot(self) -> bool:
        """True while this task certainly holds a worker slot: started, and stuck at a closed gate.

        A cancelled coroutine handler gives its slot back as soon as it
        unwinds; a cancelled sync one keeps it until the handler returns.
        """
        if self.gate is None or self.gate.released:
            return False
        if self.kind == "coroutine" and self.cancel_won:
            return False
        return self.counts()[0] >= 1


def progress_key(state: TaskStatus, attempt: int) -> tuple[int, int]:
    """An order on (state, attempt) in which a task only ever moves up.

    PENDING (attempt 0) < RUNNING 1 < RETRY_WAIT 1 < PENDING 1 < RUNNING 2 ...
    < any terminal state.
    """
    if state.is_terminal:
        return (1 << 30, 0)
    phase = {TaskStatus.RUNNING: 0, TaskStatus.RETRY_WAIT: 1, TaskStatus.PENDING: 2}[state]
    return (attempt, phase)


def live_snapshot(q: HybridQueue) -> dict[Any, tuple[TaskStatus, int]]:
    """(state, attempt) of every live task, read in one critical section of the scheduler's lock.

    The public status() gives the state alone; with the attempt number read
    consistently beside it, "only moves forward" becomes checkable across
    retries (a task may go from RUNNING back to PENDING, but only for a
    later attempt).
    """
    sched = q._sched
    with sched.lock:
        return {tid: (task._status, task._attempt) for tid, task in sched._live.items()}


class QueueMachine(RuleBasedStateMachine):
    """A real HybridQueue on a background loop, and the model's view of every task in it."""

    # What the runs of this process did, for the session's figures.
    examples_run = 0
    tasks_submitted = 0
    invariant_checks = 0

    def __init__(self) -> None:
        super().__init__()
        QueueMachine.examples_run += 1
        self.q: HybridQueue | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.workers = 0
        self.probes: list[Probe] = []
        self.shutdown_mode: str | None = None
        self.last_stats: dict[str, int] = {}

    # ----------------------------------------------------------------- helpers

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(BOUND)

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        async def call() -> Any:
            return fn(*args)

        return self._run(call())

    def _flush(self) -> None:
        # Done callbacks of asyncio futures run one loop step after the future is set.
        async def steps() -> None:
            for _ in range(3):
                await asyncio.sleep(0)

        self._run(steps())

    def _occupants(self) -> list[Probe]:
        return [p for p in self.probes if p.occupies_slot()]

    def _saturated(self) -> bool:
        return len(self._occupants()) == self.workers

    def _release_all(self) -> None:
        for p in self.probes:
            if p.gate is not None:
                p.gate.release()

    def _wait_all_resolved(self) -> None:
        cfutures = [p.future for p in self.probes if p.api == "blocking"]
        handles = [p.future for p in self.probes if p.api == "async"]
        if cfutures:
            concurrent.futures.wait(cfutures, timeout=BOUND)
        if handles:
            self._run(asyncio.wait(handles, timeout=BOUND))
        self._flush()
        unresolved = [p for p in self.probes if not p.resolutions()]
        assert not unresolved, f"futures never resolved (lost tasks): {unresolved}"

    def _wait_slots_free(self) -> None:
        # A cancelled sync handler may still be returning after its future
        # resolved; its slot comes back when it does.
        assert self.q is not None
        deadline = time.monotonic() + BOUND
        while self.q.stats().busy_workers and time.monotonic() < deadline:
            time.sleep(0.0005)
        assert self.q.stats().busy_workers == 0, f"a worker slot was never given back: {self.q.stats()}"

    def _check_settled(self, p: Probe) -> TaskResult[Any]:
        """Every check on a task that has ended; returns its stored result."""
        assert self.q is not None
        resolutions = p.resolutions()
        assert len(resolutions) == 1, f"future resolved {len(resolutions)} times: {p}"
        outcome, value = resolutions[0]
        r: TaskResult[Any] = self._run(self.q.get_result(p.task_id, timeout=BOUND))
        assert OUTCOME_OF[r.status] == outcome, f"future says {outcome}, the store says {r.status}: {p}"
        assert self.q.status(p.task_id) is r.status
        starts, returns = p.counts()
        assert r.retry_count <= p.max_retries, p
        assert starts <= 1 + p.max_retries, f"more attempts than 1 + max_retries: {p}"
        if outcome == "cancelled":
            assert isinstance(r.error, asyncio.CancelledError), r
            # The attempt in progress when it was cancelled may or may not have started its handler.
            assert starts in (r.retry_count, r.retry_count + 1), (r, p)
            assert returns <= 1, p
            assert not p.must_not_cancel, f"cancelled, though nothing should have cancelled it: {p}"
            if p.frozen_starts is not None:
                assert starts == p.frozen_starts == r.retry_count, f"started after it was cancelled waiting: {p}"
        else:
            assert not p.cancel_won, f"a cancel of ours succeeded, yet the task ended {outcome}: {p}"
            assert not p.must_cancel, f"shutdown should have cancelled it, yet it ended {outcome}: {p}"
            want, attempts = p.expected()
            assert outcome == want, (r, p)
            assert starts == attempts == r.retry_count + 1, (r, p)
            if outcome == "completed":
                assert value == r.result == (p.key, attempts), (r, p)
                assert returns == 1, f"a completed task must run its successful attempt exactly once: {p}"
            else:
                assert r.error is value and isinstance(value, Transient), (r, p)
                assert str(value) == f"{p.key} attempt {attempts}", (r, p)
                assert returns == 0, p
        return r

    def _check_all_settled(self) -> None:
        """At quiescence or after shutdown: every task ended as planned; counters equal the tally."""
        assert self.q is not None
        results = [self._check_settled(p) for p in self.probes]
        tally = Counter(p.resolutions()[0][0] for p in self.probes)
        s = self.q.stats()
        assert (s.submitted, s.completed, s.failed, s.cancelled) == (
            len(self.probes),
            tally["completed"],
            tally["failed"],
            tally["cancelled"],
        ), (s, tally)
        assert (s.pending, s.running, s.retrying) == (0, 0, 0), s
        assert s.retries == sum(r.retry_count for r in results), s

    # ----------------------------------------------------------------- rules

    @initialize(
        workers=st.sampled_from([1, 1, 2, 3]),
        base_delay=st.sampled_from([0.0, 0.001]),
        final_shutdown=st.sampled_from(sorted(SHUTDOWN_MODES)),
    )
    def start(self, workers: int, base_delay: float, final_shutdown: str) -> None:
        # The policy's max_retries is overridden by every submit.
        retry = RetryPolicy(max_retries=0, base_delay=base_delay, max_delay=0.002)
        self.q = HybridQueue(workers, retry=retry, result_ttl=3600.0)
        self.q.start_background()
        self.loop = self.q._sched.loop
        self.workers = workers
        # Shutdown ends the machine (in teardown), so every example runs all its steps first.
        self.final_shutdown = final_shutdown

    @precondition(lambda self: len(self.probes) < MAX_TASKS)
    @rule(
        kind=st.sampled_from(["coroutine", "sync"]),
        api=st.sampled_from(["blocking", "async"]),
        fail_times=st.sampled_from([0, 0, 1, 2, ALWAYS]),
        max_retries=st.integers(0, 2),
        priority=st.integers(-2, 2),
    )
    def submit(self, kind: str, api: str, fail_times: int, max_retries: int, priority: int) -> None:
        self._submit(kind, api, fail_times, max_retries, priority, gated=False)

    @precondition(lambda self: len(self.probes) < MAX_TASKS)
    @rule(
        kind=st.sampled_from(["coroutine", "sync"]),
        api=st.sampled_from(["blocking", "async"]),
        fail_times=st.sampled_from([0, 0, 1, ALWAYS]),
        max_retries=st.integers(0, 2),
        priority=st.integers(-2, 2),
    )
    def submit_gated(self, kind: str, api: str, fail_times: int, max_retries: int, priority: int) -> None:
        self._submit(kind, api, fail_times, max_retries, priority, gated=True)

    def _submit(self, kind: str, api: str, fail_times: int, max_retries: int, priority: int, gated: bool) -> None:
        assert self.q is not None and self.loop is not None
        p = Probe(len(self.probes), kind, api, fail_times, max_retries, priority, Gate(self.loop) if gated else None)
        q = self.q
        handler = p.handler()
        if api == "blocking":

            def submit() -> Any:
                future = q.submit_blocking(handler, priority=priority, max_retries=max_retries)
                future.add_done_callback(p.on_done)
                return future
        else:

            def submit() -> Any:
                async def on_loop() -> Any:
                    handle = await q.submit(handler, priority=priority, max_retries=max_retries)
                    handle.add_done_callback(p.on_done)
                    return handle

                return self._run(on_loop())

        if self.shutdown_mode is not None:
            with pytest.raises(QueueShutDown):
                submit()
            return
        p.future = submit()
        p.task_id = p.future.task_id
        self.probes.append(p)
        QueueMachine.tasks_submitted += 1

    @precondition(lambda self: self.probes)
    @rule(data=st.data(), via=st.sampled_from(["cancel_task", "future"]))
    def cancel(self, data: st.DataObject, via: str) -> None:
        assert self.q is not None
        p = data.draw(st.sampled_from(self.probes), label="task")
        # Read "certainly waiting" before the call: only our own steps could
        # free a slot, and none runs until the call returns.
        waiting = self._saturated() and self.q.status(p.task_id) in WAITING
        starts_before = p.counts()[0]
        if via == "cancel_task":
            cancelled = self.q.cancel_task(p.task_id)
        elif p.api == "blocking":
            cancelled = p.future.cancel()  # True also if it already was cancelled
        else:
            cancelled = self._call(p.future.cancel)
        status = self.q.status(p.task_id)
        if cancelled:
            assert status is TaskStatus.CANCELLED, f"cancel reported success, yet the task is {status}: {p}"
            p.cancel_won = True
        else:
            assert status.is_terminal, f"cancel refused a task that is {status}: {p}"
        event(f"cancel: {'certainly waiting' if waiting else status.value if cancelled else 'refused'}")
        if waiting:
            assert cancelled, f"a waiting task could not be cancelled: {p}"
            assert p.counts()[0] == starts_before
            p.frozen_starts = starts_before

    @precondition(lambda self: any(p.gate is not None and not p.gate.released for p in self.probes))
    @rule(data=st.data())
    def release_gate(self, data: st.DataObject) -> None:
        closed = [p for p in self.probes if p.gate is not None and not p.gate.released]
        p = data.draw(st.sampled_from(closed), label="gate of")
        assert p.gate is not None
        p.gate.release()

    @precondition(lambda self: self.probes)
    @rule(data=st.data())
    def query(self, data: st.DataObject) -> None:
        assert self.q is not None
        p = data.draw(st.sampled_from(self.probes), label="task")
        resolutions = p.resolutions()  # read before the status: a future resolves after its task ends
        status = self.q.status(p.task_id)
        if resolutions:
            assert status.is_terminal and OUTCOME_OF[status] == resolutions[0][0], (status, p)
        if status.is_terminal:
            r = self._run(self.q.get_result(p.task_id, timeout=BOUND))
            assert r.status is status and r.task_id == p.task_id, (r, p)

    @rule()
    def wait_quiescent(self) -> None:
        """Open every gate and wait until every task ended and every slot is free."""
        # Before shutdown nothing cancels a task but us: each of the others ends as planned.
        for p in self.probes:
            p.must_not_cancel = not p.cancel_won
        self._release_all()
        self._wait_all_resolved()
        self._wait_slots_free()
        self._check_all_settled()

    def _shutdown(self, mode: str) -> None:
        q = self.q
        assert q is not None
        occupants = self._occupants()
        saturated = len(occupants) == self.workers
        waiting = [p for p in self.probes if saturated and q.status(p.task_id) in WAITING]
        if mode == "drain":
            for p in self.probes:
                p.must_not_cancel = not p.cancel_won
            self._release_all()
        elif mode == "cancel_pending":
            for p in waiting:
                p.must_cancel = True
            for p in occupants:
                # It runs on: what its current (first) attempt does stands.
                if not p.cancel_won and p.fail_times == 0:
                    p.must_not_cancel = True
        else:  # "timeout" and "now": the gates stay closed, so neither kind can end by itself
            for p in [*waiting, *occupants]:
                if not p.cancel_won:
                    p.must_cancel = True

        async def begin() -> asyncio.Task[None]:
            task = asyncio.ensure_future(q.shutdown(**SHUTDOWN_MODES[mode]))
            # One step: the shutdown task runs before this coroutine resumes,
            # up to its first real wait; by then it stopped accepting and
            # cancelled whatever its mode cancels at once.
            await asyncio.sleep(0)
            return task

        async def end(task: asyncio.Task[None]) -> None:
            await task

        if mode != "drain":
            for p in self.probes:
                p.no_new_attempts = True
        event(f"shutdown {mode}: {len(waiting)} certainly waiting, {len(occupants)} occupants")
        shutting = self._run(begin())
        self.shutdown_mode = mode
        if mode == "cancel_pending":
            self._release_all()  # what runs must be able to finish
        self._run(end(shutting))
        # Abandoned sync handlers (timeout, now) can return now.
        self._release_all()
        # Shutdown's promise: every handle and future is resolved when it returns.
        self._flush()
        unresolved = [p for p in self.probes if not p.resolutions()]
        assert not unresolved, f"futures unresolved after shutdown({mode}): {unresolved}"
        for p in self.probes:
            assert p.future.done(), p

    # ------------------------------------------------------------- invariants

    @invariant()
    def stats_identity_and_monotone_counters(self) -> None:
        QueueMachine.invariant_checks += 1
        if self.q is None:
            return
        resolved = Counter(r[0][0] for p in self.probes if (r := p.resolutions()))
        s = self.q.stats()
        assert s.submitted == s.pending + s.running + s.retrying + s.completed + s.failed + s.cancelled, s
        assert s.submitted == len(self.probes), s
        # A running task holds a slot; a slot may outlive its task (an abandoned sync handler).
        assert s.running <= s.busy_workers <= self.workers, s
        # Futures resolve after their task ends: never more resolved than ended.
        assert resolved["completed"] <= s.completed and resolved["failed"] <= s.failed, (resolved, s)
        assert resolved["cancelled"] <= s.cancelled, (resolved, s)
        now = {k: getattr(s, k) for k in ("submitted", "completed", "failed", "cancelled", "retries")}
        for k, v in self.last_stats.items():
            assert now[k] >= v, f"{k} went down from {v} to {now[k]}"
        self.last_stats = now

    @invariant()
    def status_only_moves_forward(self) -> None:
        QueueMachine.invariant_checks += 1
        if self.q is None:
            return
        live = live_snapshot(self.q)
        for p in self.probes:
            if p.task_id in live:
                state, attempt = live[p.task_id]
                assert not state.is_terminal, (state, p)
                assert p.terminal is None, f"ended {p.terminal}, yet live again as {state}: {p}"
                key = progress_key(state, attempt)
            else:
                status = self.q.status(p.task_id)
                assert status.is_terminal, (status, p)
                assert p.terminal in (None, status), f"terminal status changed from {p.terminal} to {status}: {p}"
                p.terminal = status
                key = progress_key(status, 0)
            assert key >= p.last_key, f"status moved back from {p.last_key} to {key}: {p}"
            p.last_key = key

    @invariant()
    def futures_attempts_and_slots(self) -> None:
        QueueMachine.invariant_checks += 1
        if self.q is None:
            return
        for p in self.probes:
            resolutions = p.resolutions()
            assert len(resolutions) <= 1, f"future resolved more than once: {p}"
            if resolutions:
                assert p.future.done(), p
            starts, returns = p.counts()
            assert starts <= 1 + p.max_retries, f"more attempts than 1 + max_retries: {p}"
            assert returns <= 1, f"handler ran to completion twice: {p}"
            if p.frozen_starts is not None:
                assert starts == p.frozen_starts, f"cancelled while waiting, yet its handler started: {p}"
        # Exactly `workers` at once: more occupants than slots would be a broken limit.
        assert len(self._occupants()) <= self.workers, self._occupants()

    def teardown(self) -> None:
        q = self.q
        if q is None:
            return
        try:
            self._shutdown(self.final_shutdown)
            self._wait_slots_free()
            self._check_all_settled()
            # A queue that shut down refuses new work from either side, and has nothing left to cancel.
            for api in ("blocking", "async"):
                self._submit("sync", api, 0, 0, 0, gated=False)
            assert not any(q.cancel_task(p.task_id) for p in self.probes)
        finally:
            self._release_all()
            q.shutdown_blocking(wait=False)  # idempotent; stops the background loop


MODEL_SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def run_model(figures: Any, **kwargs: Any) -> None:
    examples, tasks = QueueMachine.examples_run, QueueMachine.tasks_submitted
    checks = QueueMachine.invariant_checks
    try:
        run_state_machine_as_test(QueueMachine, settings=settings(MODEL_SETTINGS, **kwargs))
    finally:
        figures.add("model_runs", QueueMachine.examples_run - examples)
        figures.add("model_tasks", QueueMachine.tasks_submitted - tasks)
        figures.add("model_invariant_checks", QueueMachine.invariant_checks - checks)


def test_queue_model(figures: Any) -> None:
    run_model(figures, max_examples=200, stateful_step_count=20)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_queue_model_soak(figures: Any) -> None:
    run_model(figures, max_examples=5000, stateful_step_count=50)


# ------------------------------------------------------------ priority order


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, 3), st.sampled_from(["coroutine", "sync"])), max_size=30))
def test_one_worker_runs_by_priority_then_submission_order(plan: list[tuple[int, str]]) -> None:
    ran: list[int] = []  # one worker: handlers run one at a time, so plain appends are safe

    def sync_handler(i: int) -> None:
        ran.append(i)

    async def coroutine_handler(i: int) -> None:
        ran.append(i)

    q = HybridQueue(1)
    try:
        futures = [
            q.submit_blocking(coroutine_handler if kind == "coroutine" else sync_handler, i, priority=priority)
            for i, (priority, kind) in enumerate(plan)
        ]
        q.start_background()
        _, not_done = concurrent.futures.wait(futures, timeout=BOUND)
        assert not not_done
    finally:
        q.shutdown_blocking()
    assert ran == sorted(range(len(plan)), key=lambda i: (-plan[i][0], i))


# ------------------------------------------------------- races the model found


def test_future_cancel_between_a_task_ending_and_its_future_settling_returns_false() -> None:
    """TaskFuture.cancel() must not succeed on a task that has already ended.

    The model found it: a task goes terminal under the scheduler's lock, and
    its concurrent future is settled a moment later, after the lock. A
    cancel() in between must leave the future to its real outcome and return
    False, or the future says "cancelled" while status(), get_result() and
    stats() say FAILED (or COMPLETED). The window is made certain here: the
    queue logs a final failure (a WARNING on its logger) inside it, so a
    logging handler runs exactly there, in the delivering thread.
    """
    q = HybridQueue(1, retry=RetryPolicy(max_retries=0))
    futures: list[TaskFuture[Any]] = []
    returned: list[bool] = []

    class CancelInsideTheWindow(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if futures and not returned:
                returned.append(futures[0].cancel())

    def fail() -> None:
        raise Transient("final failure")

    logger = logging.getLogger("hybrid_queue")
    handler = CancelInsideTheWindow(logging.WARNING)
    logger.addHandler(handler)
    try:
        futures.append(q.submit_blocking(fail))  # before start: it cannot fail before it is in the list
        q.start_background()
        _, not_done = concurrent.futures.wait(futures, timeout=BOUND)
        assert not not_done
        status = q.status(futures[0].task_id)
    finally:
        logger.removeHandler(handler)
        q.shutdown_blocking()
    assert status is TaskStatus.FAILED
    assert q.stats().failed == 1 and q.stats().cancelled == 0
    assert returned == [False], "cancel() reported success on a task that had already failed"
    assert not futures[0].cancelled()
    assert isinstance(futures[0].exception(0), Transient)


def test_shutdown_blocking_stops_the_background_loop_after_a_shutdown_awaited_on_it() -> None:
    """The model's teardown does this: await shutdown() on the background loop, then shutdown_blocking().

    The second call has nothing left to shut down, but it is the only public
    way to stop the loop thread that start_background() made, and its
    contract is to stop it.
    """
    before = set(threading.enumerate())
    q = HybridQueue(1)
    q.start_background()
    (loop_thread,) = [t for t in set(threading.enumerate()) - before if t.name.startswith("hybrid_queue")]

    async def running_loop() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    loop = q.submit_blocking(running_loop).result(BOUND)
    asyncio.run_coroutine_threadsafe(q.shutdown(), loop).result(BOUND)
    q.shutdown_blocking()
    assert not loop_thread.is_alive(), "shutdown_blocking() left the background loop running"
