"""Stress: 16 threads and four coroutines on the loop submit and cancel at once.

Every task has a plan drawn up front from one seeded generator: which kind
of handler, whether it fails (retryably or not, how often), whether it
sleeps a little, its priority and its max_retries. The test keeps its own
thread-safe tallies (handler starts and returns, future resolutions,
submissions, cancels that succeeded) and at the end checks them against the
plans and against ``q.stats()``: nothing lost, nothing run twice, every
future resolved exactly once, every counter exact.

Which tasks get cancelled, and when, depends on the threads; what each
outcome must be given that does not: a task ends CANCELLED exactly when one
cancel of ours succeeded, and otherwise exactly as its plan says.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable
from typing import Any

import pytest

from hybrid_queue import HybridQueue, QueueStats, RetryPolicy

pytestmark = pytest.mark.stress

THREADS = 16
LOOP_SUBMITTERS = 4
WORKERS = 8
SEED = 20_241_129
SLEEP = 0.001  # seconds a sleeping handler sleeps (5% of tasks): a window for cancels to hit it running
BOUND = 120.0  # seconds the end of the run may take before it counts as a hang; never a measurement
P_CANCEL_RECENT = 0.05  # after each submit: cancel one of the submitter's last 32 tasks
P_CANCEL_ANY = 0.03  # ... or any task submitted so far, by anyone
P_CANCEL_STARTED = 0.03  # ... or one whose handler started lately: likely running or retrying now
YIELD_EVERY = 16  # a coroutine submitter yields to the loop this often (await submit need not yield)

COMPLETED, FAILED, CANCELLED = 1, 2, 3
NAMES = {0: "unresolved", COMPLETED: "completed", FAILED: "failed", CANCELLED: "cancelled"}


class Transient(Exception):
    """A failure the queue retries."""


class Fatal(Exception):
    """A failure outside ``retry_on``: the task fails at once."""


class Plan:
    """What each task does, drawn up front from one seeded generator."""

    def __init__(self, n: int, seed: int) -> None:
        rng = random.Random(seed)
        self.n = n
        self.coroutine = bytearray(n)
        self.fail_times = bytearray(n)  # attempts that raise Transient before one succeeds
        self.fatal = bytearray(n)  # the first attempt raises Fatal
        self.sleep = bytearray(n)
        self.max_retries = bytearray(n)
        self.priority = array("b", bytes(n))
        for i in range(n):
            self.coroutine[i] = rng.random() < 0.5
            self.max_retries[i] = rng.randrange(3)
            self.priority[i] = rng.randrange(-2, 3)
            self.sleep[i] = rng.random() < 0.05
            r = rng.random()
            if r < 0.08:
                self.fail_times[i] = 1
            elif r < 0.12:
                self.fail_times[i] = 2
            elif r < 0.16:
                self.fail_times[i] = 9  # more than any max_retries: always fails
            elif r < 0.20:
                self.fatal[i] = 1

    def expected(self, i: int) -> tuple[int, int]:
        """(outcome, attempts) of task ``i`` if nothing cancels it."""
        if self.fatal[i]:
            return FAILED, 1
        if self.fail_times[i] <= self.max_retries[i]:
            return COMPLETED, self.fail_times[i] + 1
        return FAILED, self.max_retries[i] + 1


class Stress:
    """The handlers, the submitters and the tallies of one run."""

    def __init__(self, q: HybridQueue, plan: Plan, thread_share: int, loop_share: int) -> None:
        n = plan.n
        assert THREADS * thread_share + LOOP_SUBMITTERS * loop_share == n
        self.q = q
        self.plan = plan
        self.thread_share = thread_share
        self.loop_share = loop_share
        # Bound once: the queue recognises a handler it saw last time by identity.
        self.sync_handler: Callable[[int], tuple[int, int]] = self._sync_handler
        self.coroutine_handler: Callable[[int], Any] = self._coroutine_handler
        self.task_ids: list[Any] = [None] * n  # written once per index, by its submitter
        # The tallies, all under one lock (per-index increments are not atomic in Python).
        self.lock = threading.Lock()
        self.starts = [0] * n
        self.returns = [0] * n
        self.resolutions = [0] * n
        self.outcome = bytearray(n)
        self.cancel_wins = [0] * n
        self.wrong_values: list[tuple[int, Any]] = []
        # Tasks whose handler started lately; deque appends are atomic, and a
        # full deque never gets shorter, so any thread may index into it.
        self.started_lately: deque[int] = deque(maxlen=64)
        self.resolved = 0
        self.all_resolved = threading.Event()
        # One slot per submitter, each written only by its own submitter.
        self.submitted_by = [0] * (THREADS + LOOP_SUBMITTERS)
        self.errors: list[BaseException] = []

    # ----------------------------------------------------------------- handlers

    def _begin(self, i: int) -> int:
        self.started_lately.append(i)
        with self.lock:
            self.starts[i] += 1
            return self.starts[i]

    def _end(self, i: int, attempt: int) -> tuple[int, int]:
        if self.plan.fatal[i]:
            raise Fatal(i)
        if attempt <= self.plan.fail_times[i]:
            raise Transient(i)
        with self.lock:
            self.returns[i] += 1
        return (i, attempt)

    def _sync_handler(self, i: int) -> tuple[int, int]:
        attempt = self._begin(i)
        if self.plan.sleep[i]:
            time.sleep(SLEEP)
        return self._end(i, attempt)

    async def _coroutine_handler(self, i: int) -> tuple[int, int]:
        attempt = self._begin(i)
        if self.plan.sleep[i]:
            await asyncio.sleep(SLEEP)
        return self._end(i, attempt)

    def _resolved(self, i: int, future: Any) -> None:
        # Done callback of a TaskFuture (any thread) or a TaskHandle (the loop).
        value: Any = None
        if future.cancelled():
            code, good = CANCELLED, True
        elif (value := future.exception()) is not None:
            code = FAILED
            good = type(value) is (Fatal if self.plan.fatal[i] else Transient) and value.args == (i,)
        else:
            code, value = COMPLETED, future.result()
            good = value == (i, self.plan.fail_times[i] + 1)
        with self.lock:
            self.resolutions[i] += 1
            self.outcome[i] = code
            self.resolved += 1
            if self.resolved == self.plan.n:
                self.all_resolved.set()
            if not good:
                self.wrong_values.append((i, value))

    # --------------------------------------------------------------- submitters

    def _cancel(self, j: int) -> None:
        task_id = self.task_ids[j]
        if task_id is not None and self.q.cancel_task(task_id):
            self._cancel_won(j)

    def _cancel_started(self, rng: random.Random) -> None:
        started = self.started_lately
        if started:
            self._cancel(started[rng.randrange(len(started))])

    def _cancel_won(self, j: int) -> None:
        with self.lock:
            self.cancel_wins[j] += 1

    def _handler(self, i: int) -> Callable[..., Any]:
        return self.coroutine_handler if self.plan.coroutine[i] else self.sync_handler

    def thread_submitter(self, t: int) -> None:
        try:
            rng = random.Random(SEED + 1 + t)
            plan, q = self.plan, self.q
            recent: deque[int] = deque(maxlen=32)
            first = t * self.thread_share
            for i in range(first, first + self.thread_share):
                future = q.submit_blocking(
                    self._handler(i), i, priority=plan.priority[i], max_retries=plan.max_retries[i]
                )
                self.task_ids[i] = future.task_id
                self.submitted_by[t] += 1
                future.add_done_callback(functools.partial(self._resolved, i))
                recent.append(i)
                r = rng.random()
                if r < P_CANCEL_RECENT:
                    self._cancel(recent[rng.randrange(len(recent))])
                elif r < P_CANCEL_RECENT + P_CANCEL_ANY:
                    self._cancel(rng.randrange(i + 1))
                elif r < P_CANCEL_RECENT + P_CANCEL_ANY + P_CANCEL_STARTED:
                    self._cancel_started(rng)
        except BaseException as exc:  # reported by the test, not lost in a thread
            self.errors.append(exc)

    async def loop_submitter(self, k: int) -> None:
        rng = random.Random(SEED + 1 + THREADS + k)
        plan, q = self.plan, self.q
        recent: deque[tuple[int, Any]] = deque(maxlen=32)
        first = THREADS * self.thread_share + k * self.loop_share
        for n, i in enumerate(range(first, first + self.loop_share)):
            handle = await q.submit(self._handler(i), i, priority=plan.priority[i], max_retries=plan.max_retries[i])
            self.task_ids[i] = handle.task_id
            self.submitted_by[THREADS + k] += 1
            handle.add_done_callback(functools.partial(self._resolved, i))
            recent.append((i, handle))
            r = rng.random()
            if r < P_CANCEL_RECENT:
                j, h = recent[rng.randrange(len(recent))]
                if h.cancel():  # the handle's cancel is the queue's: True only if the task was cancelled now
                    self._cancel_won(j)
            elif r < P_CANCEL_RECENT + P_CANCEL_ANY:
                self._cancel(rng.randrange(i + 1))
            elif r < P_CANCEL_RECENT + P_CANCEL_ANY + P_CANCEL_STARTED:
                self._cancel_started(rng)
            if n % YIELD_EVERY == 0:
                await asyncio.sleep(0)

    # ------------------------------------------------------------------- checks

    def problems(self, s: QueueStats) -> list[str]:
        """Everything that disagrees with the plans or the counters; empty when all is well."""
        plan = self.plan
        n = plan.n
        found: dict[str, list[int]] = {}

        def bad(what: str, i: int) -> None:
            found.setdefault(what, []).append(i)

        tally = {COMPLETED: 0, FAILED: 0, CANCELLED: 0}
        retries_low = retries_high = 0
        for i in range(n):
            outcome, starts, returns = self.outcome[i], self.starts[i], self.returns[i]
            if self.resolutions[i] != 1:
                bad(f"future resolved {self.resolutions[i]} times (0: lost)", i)
            if self.cancel_wins[i] > 1:
                bad("cancel succeeded more than once", i)
            want, attempts = plan.expected(i)
            if starts > plan.max_retries[i] + 1:
                bad("more attempts than 1 + max_retries", i)
            if returns > 1:
                bad("handler ran to completion twice", i)
            if outcome == CANCELLED:
                tally[CANCELLED] += 1
                if self.cancel_wins[i] != 1:
                    bad("cancelled, though no cancel of ours succeeded", i)
                if starts > attempts:
                    bad("cancelled task ran more attempts than its plan has", i)
                # The attempt under way when it was cancelled may or may not have had its retry scheduled.
                retries_low += max(starts - 1, 0)
                retries_high += 0 if plan.fatal[i] else min(starts, plan.max_retries[i])
            elif outcome:
                tally[outcome] += 1
                if self.cancel_wins[i]:
                    bad(f"a cancel of ours succeeded, yet the task ended {NAMES[outcome]}", i)
                if outcome != want:
                    bad(f"ended {NAMES[outcome]}, planned {NAMES[want]}", i)
                if starts != attempts:
                    bad("attempts differ from the plan", i)
                if returns != (outcome == COMPLETED):
                    bad("completed task did not run its successful attempt exactly once", i)
                retries_low += attempts - 1
                retries_high += attempts - 1

        report = [f"{what}: {len(ids)} tasks, e.g. {ids[:10]}" for what, ids in found.items()]
        if self.wrong_values:
            report.append(f"wrong results or errors: {self.wrong_values[:10]}")
        submitted = sum(self.submitted_by)
        wins = sum(self.cancel_wins)
        want_stats = (n, tally[COMPLETED], tally[FAILED], tally[CANCELLED], 0, 0, 0, 0)
        got_stats = (s.submitted, s.completed, s.failed, s.cancelled, s.pending, s.running, s.retrying, s.busy_workers)
        if submitted != n or wins != tally[CANCELLED] or got_stats != want_stats:
            report.append(
                f"tallies: submitted {submitted}, cancels won {wins}, outcomes {tally}; "
                f"stats (submitted, completed, failed, cancelled, pending, running, retrying, busy) "
                f"{got_stats}, expected {want_stats}"
            )
        if not retries_low <= s.retries <= retries_high:
            report.append(f"stats.retries {s.retries} outside [{retries_low}, {retries_high}]")
        return report


async def run_stress(make_queue: Callable[..., Any], n: int, max_queue_size: int) -> Stress:
    thread_share = loop_share = n // (THREADS + LOOP_SUBMITTERS)
    plan = Plan(n, SEED)
    retry = RetryPolicy(max_retries=0, base_delay=0, max_delay=0, retry_on=(Transient,))
    q = await make_queue(WORKERS, retry=retry, max_queue_size=max_queue_size)
    stress = Stress(q, plan, thread_share, loop_share)
    # Daemons: a thread stuck in the queue must fail this test, not hang the interpreter's exit.
    threads = [
        threading.Thread(target=stress.thread_submitter, args=(t,), name=f"stress-submitter-{t}", daemon=True)
        for t in range(THREADS)
    ]
    watching = threading.Event()
    bad_snapshots: list[QueueStats] = []

    def watch() -> None:
        # Every snapshot, taken at any moment, must add up.
        while not watching.is_set():
            s = q.stats()
            if s.submitted != s.pending + s.running + s.retrying + s.completed + s.failed + s.cancelled or not (
                s.running <= s.busy_workers <= s.workers
            ):
                bad_snapshots.append(s)
            time.sleep(0.001)

    def join() -> None:
        for thread in threads:
            thread.join(BOUND)

    watcher = threading.Thread(target=watch, name="stress-watcher", daemon=True)
    watcher.start()
    try:
        for thread in threads:
            thread.start()
        try:
            await asyncio.gather(*(stress.loop_submitter(k) for k in range(LOOP_SUBMITTERS)))
        finally:
            await asyncio.to_thread(join)
        assert not [t.name for t in threads if t.is_alive()], "a submitting thread hung"
        assert not stress.errors, stress.errors
        if not await asyncio.to_thread(stress.all_resolved.wait, BOUND):
            lost = [i for i in range(n) if not stress.resolutions[i]]
            states = {i: q.status(stress.task_ids[i]) for i in lost[:10]}
            pytest.fail(f"{len(lost)} futures never resolved (lost tasks), e.g. {states}; stats {q.stats()}")
    finally:
        watching.set()
        watcher.join()
    assert not bad_snapshots, f"{len(bad_snapshots)} inconsistent stats snapshots, e.g. {bad_snapshots[:3]}"
    await q.shutdown()  # nothing is left: this drains nothing and frees everything
    problems = stress.problems(q.stats())
    assert not problems, "\n".join(problems)
    return stress


def record(figures: Any, stress: Stress) -> None:
    """Add what the run did to the session's figures (for the reliability report)."""
    figures.add("stress_tasks", stress.plan.n)
    figures.add("stress_cancels", sum(stress.cancel_wins))
    # Measured, not assumed (the test has asserted each is zero by now).
    figures.add("lost_tasks", sum(1 for r in stress.resolutions if r == 0))
    figures.add("unresolved_futures", sum(1 for r in stress.resolutions if r != 1))
    figures.add("tasks_run_twice", sum(1 for r in stress.returns if r > 1))
    figures.add(
        "stress_tasks_cancelled_after_their_handler_started",
        sum(1 for i, wins in enumerate(stress.cancel_wins) if wins and stress.starts[i]),
    )


@pytest.fixture
def quiet_retries(caplog: pytest.LogCaptureFixture) -> None:
    # Tens of thousands of planned failures would each log a WARNING.
    caplog.set_level(logging.ERROR, logger="hybrid_queue")


# Unbounded, the submitters race far ahead of the workers and most cancels
# meet waiting tasks; bounded, every submitter waits for room (threads on the
# queue's condition, coroutines on the loop), the backlog stays small, and
# cancels meet running and retrying tasks far more often.
QUEUE_SIZES = pytest.mark.parametrize("max_queue_size", [0, 256], ids=["unbounded", "bounded"])


@QUEUE_SIZES
@pytest.mark.timeout(180)
async def test_threads_and_loop_submit_and_cancel_100_000_tasks(
    make_queue: Callable[..., Any], quiet_retries: None, figures: Any, max_queue_size: int
) -> None:
    record(figures, await run_stress(make_queue, 100_000, max_queue_size))


@QUEUE_SIZES
@pytest.mark.slow
@pytest.mark.timeout(3600)
async def test_threads_and_loop_submit_and_cancel_1_000_000_tasks(
    make_queue: Callable[..., Any], quiet_retries: None, figures: Any, max_queue_size: int
) -> None:
    record(figures, await run_stress(make_queue, 1_000_000, max_queue_size))
