"""Failures and retries: a failed attempt is retried with capped exponential backoff, or fails the task.

- A task that always fails runs ``1 + max_retries`` attempts, then ends
  FAILED with its last error; one that fails twice then succeeds ends
  COMPLETED with ``retry_count == 2``.
- Delays double from ``base_delay`` up to ``max_delay`` (jitter only ever
  lowers one); a task waiting for its retry holds no worker.
- Only errors in ``retry_on`` are retried; a call that cannot bind its
  arguments, a BaseException and an unpicklable call fail at once.
- The worker survives every failure, and failures nobody awaited make no noise.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import itertools
import logging
import math
import threading
from types import SimpleNamespace
from unittest import mock

import pytest
from _helpers import FAST, assert_nothing_lost, deterministic, shut_down
from conftest import wait_until
from hypothesis import given
from hypothesis import strategies as st

import hybrid_queue._retry as retry_module
from hybrid_queue import CallError, RetryPolicy, TaskStatus
from hybrid_queue.testing import FakeClock


async def test_handler_exception_recorded_and_worker_survives(make_queue):
    q = await make_queue(1, retry=RetryPolicy(max_retries=0))

    class Custom(BaseException):
        pass

    async def boom():
        raise Custom("not an Exception")

    def sync_boom():
        raise KeyboardInterrupt

    h1 = await q.submit(boom)
    h2 = await q.submit(sync_boom)
    h3 = await q.submit(abs, -9)
    assert await h3 == 9
    r1 = await q.get_result(h1.task_id)
    r2 = await q.get_result(h2.task_id)
    assert isinstance(r1.error, Custom) and "Custom: not an Exception" in r1.traceback
    assert isinstance(r2.error, KeyboardInterrupt)


@pytest.mark.parametrize("max_retries", [0, 1, 3])
@pytest.mark.parametrize("kind", ["coroutine", "sync"])
async def test_always_failing_task_runs_one_plus_max_retries_attempts(make_queue, max_retries, kind):
    q = await make_queue(2, retry=FAST)
    attempts = 0

    def sync_fail():
        nonlocal attempts
        attempts += 1
        raise ValueError(f"attempt {attempts}")

    async def coro_fail():
        return sync_fail()

    h = await q.submit(coro_fail if kind == "coroutine" else sync_fail, max_retries=max_retries)
    with pytest.raises(ValueError, match=rf"^attempt {max_retries + 1}$"):
        await h
    assert attempts == 1 + max_retries
    r = await q.get_result(h.task_id)
    assert r.status is TaskStatus.FAILED and not r.success
    assert r.retry_count == max_retries
    assert isinstance(r.error, ValueError)
    assert "ValueError: attempt" in r.traceback
    assert q.stats().retries == max_retries


async def test_fails_twice_then_succeeds(make_queue):
    q = await make_queue(1, retry=FAST)
    attempts = 0

    def flaky():
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise OSError("transient")
        return "ok"

    h = await q.submit(flaky)
    assert await h == "ok"
    r = await q.get_result(h.task_id)
    assert (r.status, r.retry_count, r.success) == (TaskStatus.COMPLETED, 2, True)


async def test_retry_delays_follow_capped_exponential_backoff(make_queue):
    policy = RetryPolicy(max_retries=4, base_delay=10.0, max_delay=30.0)
    clock = FakeClock()
    q = await make_queue(1, retry=policy, clock=clock)
    times = []

    async def fail():
        times.append(clock.time())
        raise ValueError("no")

    h = await q.submit(fail)
    await clock.sleep(1000)
    with pytest.raises(ValueError):
        await h
    # On the fake clock the delays are exact.
    assert [b - a for a, b in itertools.pairwise(times)] == [10.0, 20.0, 30.0, 30.0]


async def test_task_waiting_for_retry_holds_no_worker(make_queue):
    clock = FakeClock()
    q = await make_queue(1, retry=RetryPolicy(max_retries=1, base_delay=60.0), clock=clock)
    seen = []

    async def flaky():
        seen.append("flaky")
        if len(seen) == 1:
            raise ValueError("once")

    async def other():
        seen.append(("other", q.status(first.task_id)))

    first = await q.submit(flaky)
    await clock.sleep(0)  # the first attempt fails; its retry waits 60 s
    second = await q.submit(other)
    await second
    assert seen[1] == ("other", TaskStatus.RETRY_WAIT)
    await clock.sleep(60)
    await first
    assert seen == ["flaky", ("other", TaskStatus.RETRY_WAIT), "flaky"]


async def test_exception_outside_retry_on_fails_at_once(make_queue):
    q = await make_queue(1, retry=RetryPolicy(max_retries=5, base_delay=0, retry_on=(ValueError,)))
    attempts = 0

    async def fail():
        nonlocal attempts
        attempts += 1
        raise KeyError("not retryable")

    with pytest.raises(KeyError):
        await (await q.submit(fail))
    assert attempts == 1


@pytest.mark.hardening
async def test_a_call_that_cannot_bind_its_arguments_fails_at_once_without_retry(make_queue):
    q = await make_queue(2, retry=RetryPolicy(max_retries=3, base_delay=30.0))

    async def fetch(url: str) -> str:
        return url

    def parse(text: str) -> str:
        return text

    for handler in (fetch, parse):
        missing = await q.submit(handler)  # type: ignore[call-arg]
        misspelt = await q.submit(handler, "x", prority=3)
        with pytest.raises(CallError, match=r"cannot be called with the arguments .*; not retried") as caught:
            await missing
        assert isinstance(caught.value, TypeError)
        with pytest.raises(CallError, match=r"did you mean the queue's option priority=, not the handler keyword"):
            await misspelt
        for h in (missing, misspelt):
            assert (await q.get_result(h.task_id)).retry_count == 0
    assert q.stats().retries == 0


@pytest.mark.hardening
async def test_a_type_error_raised_inside_the_handler_is_still_retried(make_queue):
    clock = FakeClock()
    q = await make_queue(1, clock=clock, retry=RetryPolicy(max_retries=1, base_delay=1.0))
    calls: list[int] = []

    def flaky() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise TypeError("from inside the handler")
        return 7

    h = await q.submit(flaky)
    await clock.sleep(5)
    assert await h == 7
    assert (await q.get_result(h.task_id)).retry_count == 1


async def test_unawaited_failures_make_no_noise(make_queue):
    loop = asyncio.get_running_loop()
    reported = []
    loop.set_exception_handler(lambda _loop, ctx: reported.append(ctx))
    try:
        q = await make_queue(2, retry=RetryPolicy(max_retries=0))

        async def fail():
            raise ValueError("nobody awaits me")

        for _ in range(5):
            await q.submit(fail)
            q.submit_nowait(fail)
        await wait_until(lambda: q.stats().failed == 10)
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert reported == []


# ------------------------------------------------------ the retry policy


@pytest.mark.unit
def test_retry_policy_defaults_are_valid():
    policy = RetryPolicy()
    assert policy.max_retries == 3
    assert policy.retry_on == (Exception,)


@pytest.mark.unit
def test_retry_policy_is_frozen():
    policy = RetryPolicy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.max_retries = 5  # type: ignore[misc]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("max_retries", "retry_count", "expected"),
    [
        (3, 0, True),
        (3, 2, True),
        (3, 3, False),
        (3, 4, False),
        (0, 0, False),
        (1, 0, True),
        (1, 1, False),
    ],
    ids=lambda v: repr(v),
)
def test_retry_policy_should_retry_boundary(max_retries, retry_count, expected):
    assert RetryPolicy(max_retries=max_retries).should_retry(retry_count) is expected


@pytest.mark.unit
def test_retry_policy_retry_on_single_class_is_normalised_and_used():
    policy = RetryPolicy(retry_on=OSError)
    assert policy.retry_on == (OSError,)
    assert policy.is_retryable(ConnectionError())
    assert not policy.is_retryable(ValueError())


@pytest.mark.unit
@pytest.mark.parametrize(
    ("base_delay", "max_delay"),
    [(0.1, 30.0), (0.001, 0.004), (1.0, 1000.0), (0.0, 5.0), (0.3, 0.3), (7.0, 2.0)],
    ids=lambda v: repr(v),
)
def test_retry_policy_get_delay_is_capped_doubling_exactly(base_delay, max_delay):
    policy = RetryPolicy(base_delay=base_delay, max_delay=max_delay)
    for n in range(11):
        assert policy.get_delay(n) == min(base_delay * 2**n, max_delay), n


@pytest.mark.unit
@pytest.mark.parametrize("n", [11, 64, 1000, 1023, 1024, 1075, 10**6, 2**64, 10**100])
def test_retry_policy_get_delay_huge_retry_count_is_max_delay_without_overflow(n):
    policy = RetryPolicy(base_delay=0.1, max_delay=30.0)
    assert policy.get_delay(n) == 30.0
    assert RetryPolicy(base_delay=1e300, max_delay=30.0).get_delay(n) == 30.0
    assert RetryPolicy(base_delay=0.0, max_delay=30.0).get_delay(n) == 0.0


@pytest.mark.unit
def test_retry_policy_get_delay_huge_retry_count_reaches_max_delay_for_a_tiny_base_delay():
    # 1e-300 * 2**1005 is about 343 s, so the documented min(base * 2**n, max)
    # is max_delay; capping the exponent at 1000 gives about 10.7 s instead.
    policy = RetryPolicy(base_delay=1e-300, max_delay=30.0)
    assert policy.get_delay(1005) == 30.0
    assert policy.get_delay(10**6) == 30.0


def capped_doubling(base_delay: float, max_delay: float, n: int) -> float:
    """min(base_delay * 2**n, max_delay), exactly, for any n (no float overflow)."""
    try:
        return min(math.ldexp(base_delay, n), max_delay)
    except OverflowError:
        return max_delay


delays = st.floats(min_value=0.0, max_value=1e4, allow_nan=False, allow_infinity=False)


@pytest.mark.unit
@deterministic
@given(base_delay=delays, max_delay=delays, n=st.integers(min_value=0, max_value=1000))
def test_retry_policy_get_delay_without_jitter_matches_the_formula(base_delay, max_delay, n):
    policy = RetryPolicy(base_delay=base_delay, max_delay=max_delay)
    assert policy.get_delay(n) == capped_doubling(base_delay, max_delay, n)


@pytest.mark.unit
@deterministic
@given(
    base_delay=delays,
    max_delay=delays,
    jitter=st.floats(min_value=0.0, max_value=1.0),
    n=st.integers(min_value=0, max_value=2000),
    draw=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
)
def test_retry_policy_jitter_only_lowers_a_delay(base_delay, max_delay, jitter, n, draw):
    # random.random() is replaced by a drawn value in [0, 1), so the worst
    # cases (0 and just under 1) are tried on purpose, not by luck.
    policy = RetryPolicy(base_delay=base_delay, max_delay=max_delay, jitter=jitter)
    full = RetryPolicy(base_delay=base_delay, max_delay=max_delay).get_delay(n)
    with mock.patch.object(retry_module, "random", SimpleNamespace(random=lambda: draw)):
        delay = policy.get_delay(n)
    assert 0.0 <= delay <= full <= max_delay
    assert delay >= full * (1.0 - jitter) - 1e-12 * full


@pytest.mark.unit
@deterministic
@given(
    base_delay=delays,
    max_delay=delays,
    jitter=st.floats(min_value=0.0, max_value=1.0),
    n=st.integers(min_value=0, max_value=2000),
)
def test_retry_policy_jitter_with_the_real_random_stays_in_bounds(base_delay, max_delay, jitter, n):
    policy = RetryPolicy(base_delay=base_delay, max_delay=max_delay, jitter=jitter)
    full = RetryPolicy(base_delay=base_delay, max_delay=max_delay).get_delay(n)
    for _ in range(20):
        assert 0.0 <= policy.get_delay(n) <= full <= max_delay


# ------------------------------------------------------------ edge cases


class _CustomBaseError(BaseException):
    """A BaseException that is neither an Exception nor one of the built-in ones."""


@pytest.mark.faults
@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit, _CustomBaseError])
@pytest.mark.parametrize("kind", ["coroutine", "sync"])
async def test_base_exception_from_handler_fails_task_and_worker_survives(make_queue, kind, exc_type):
    """A handler raising KeyboardInterrupt, SystemExit or a custom BaseException.

    The queue records it as the attempt's failure: the task ends FAILED at
    once (not retried: none of these is in the default ``retry_on``, even
    with retries left), its error is that exception, its handle raises it,
    and the same worker (the same worker coroutine, or the same pool thread)
    goes on to the next task. Nothing reaches the event loop.
    """
    q = await make_queue(1, retry=RetryPolicy(max_retries=2, base_delay=0))
    ran_on = []

    def where() -> object:
        return asyncio.current_task() if kind == "coroutine" else threading.current_thread()

    async def coro_raises():
        ran_on.append(where())
        raise exc_type("from a coroutine handler")

    def sync_raises():
        ran_on.append(where())
        raise exc_type("from a sync handler")

    async def coro_next():
        ran_on.append(where())
        await asyncio.sleep(0)  # would raise if a cancel request leaked into this worker
        return "next"

    def sync_next():
        ran_on.append(where())
        return "next"

    failing = await q.submit(coro_raises if kind == "coroutine" else sync_raises)
    following = await q.submit(coro_next if kind == "coroutine" else sync_next)
    async with asyncio.timeout(5):
        assert await following == "next"
        with pytest.raises(exc_type, match=r"^from a"):
            await failing
    r = await q.get_result(failing.task_id)
    assert r.status is TaskStatus.FAILED
    assert type(r.error) is exc_type and r.retry_count == 0
    assert exc_type.__name__ in r.traceback
    assert ran_on[0] is ran_on[1]
    if kind == "coroutine":
        assert not ran_on[0].done()  # the worker coroutine is alive and parked
    s = q.stats()
    assert (s.failed, s.completed, s.retries, s.busy_workers) == (1, 1, 0, 0)
    assert_nothing_lost(q, [failing, following])
    await shut_down(q)


@pytest.mark.races
async def test_sync_handler_raising_stop_iteration_settles_its_handle(make_queue):
    q = await make_queue(1, retry=RetryPolicy(max_retries=0))
    h = await q.submit(next, iter(()))
    with pytest.raises(RuntimeError, match="StopIteration") as info:
        await asyncio.wait_for(h, 5)
    assert isinstance(info.value.__cause__, StopIteration)
    r = await q.get_result(h.task_id)
    assert r.status is TaskStatus.FAILED and isinstance(r.error, StopIteration)


@pytest.mark.races
async def test_log_filter_calling_the_queue_during_a_retry_does_not_deadlock(make_queue):
    q = await make_queue(1, retry=RetryPolicy(max_retries=1, base_delay=0.001))
    seen = []

    class AddsStats(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            seen.append(q.stats().retrying)  # takes the scheduler lock
            return True

    log_filter = AddsStats()
    logger = logging.getLogger("hybrid_queue")
    logger.addFilter(log_filter)
    try:

        def flaky():
            raise ValueError("boom")

        h = await q.submit(flaky)
        async with asyncio.timeout(5):
            with pytest.raises(ValueError):
                await h
    finally:
        logger.removeFilter(log_filter)
    assert seen  # the filter ran (retry warning and final failure), outside the lock
