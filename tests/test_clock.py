"""The fake clock: retry delays, attempt timeouts and the result ttl on time a test controls."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from hybrid_queue import HybridQueue, RetryPolicy, TaskStatus, UnknownTaskError
from hybrid_queue.testing import FakeClock


async def test_fails_twice_then_succeeds_after_backoff_in_fake_time(make_queue):
    clock = FakeClock()
    q = await make_queue(1, clock=clock, retry=RetryPolicy(max_retries=3, base_delay=30.0, max_delay=600.0))
    starts = []

    async def flaky():
        starts.append(clock.time())
        if len(starts) < 3:
            raise OSError("transient")
        return "ok"

    h = await q.submit(flaky)
    await clock.sleep(0)
    assert q.status(h.task_id) is TaskStatus.RETRY_WAIT
    await clock.sleep(29)
    assert starts == [0.0] and not h.done()
    await clock.sleep(61)  # the retries at 30 s and 30 + 60 s
    assert await h == "ok"
    assert starts == [0.0, 30.0, 90.0]
    assert (await q.get_result(h.task_id)).retry_count == 2


@pytest.mark.parametrize("kind", ["coroutine", "sync"])
async def test_backoff_delays_are_exact_on_a_fake_clock(make_queue, kind):
    clock = FakeClock(start=1000.0)
    q = await make_queue(1, clock=clock, retry=RetryPolicy(max_retries=5, base_delay=1.0, max_delay=5.0))
    starts = []

    def fail_sync():
        starts.append(clock.time())
        raise ValueError("no")

    async def fail():
        fail_sync()

    h = await q.submit(fail if kind == "coroutine" else fail_sync)
    await clock.sleep(3600)
    with pytest.raises(ValueError):
        await h
    assert [b - a for a, b in itertools.pairwise(starts)] == [1.0, 2.0, 4.0, 5.0, 5.0]


async def test_result_expires_after_an_hour_of_fake_time(make_queue):
    clock = FakeClock()
    q = await make_queue(2, clock=clock, result_ttl=3600.0)
    h = await q.submit(abs, -7)
    assert await h == 7
    await clock.sleep(3599)
    assert (await q.get_result(h.task_id)).result == 7
    await clock.sleep(1)
    assert q.stats().results_expired == 1
    with pytest.raises(UnknownTaskError):
        q.status(h.task_id)


async def test_attempt_timeout_runs_on_the_fake_clock(make_queue):
    clock = FakeClock()
    q = await make_queue(1, clock=clock, retry=RetryPolicy(max_retries=0))
    started = asyncio.Event()

    async def hang():
        started.set()
        await asyncio.Event().wait()

    h = await q.submit(hang, timeout=10.0)
    await started.wait()
    # sleep() would wait for the running handler; advance() moves time under it.
    clock.advance(9.5)
    assert q.status(h.task_id) is TaskStatus.RUNNING
    clock.advance(0.5)
    with pytest.raises(TimeoutError, match=r"exceeded its timeout of 10\.0 s"):
        await h


async def test_advance_fires_due_timers_in_deadline_order():
    clock = FakeClock()
    fired = []
    clock.call_later(2.0, fired.append, "b")
    clock.call_later(1.0, fired.append, "a")
    clock.call_later(1.0, fired.append, "a2")  # same deadline: arming order
    cancelled = clock.call_later(1.5, fired.append, "never")
    cancelled.cancel()
    clock.call_later(9.0, fired.append, "late")
    assert clock.pending_timers == 4
    assert clock.advance(2.0) == 3
    assert fired == ["a", "a2", "b"]
    assert clock.time() == 2.0
    assert clock.next_deadline() == 9.0


async def test_timer_armed_by_a_timer_fires_within_the_same_advance():
    clock = FakeClock()
    seen = []

    def first():
        seen.append(("first", clock.time()))
        clock.call_later(1.0, lambda: seen.append(("second", clock.time())))

    clock.call_later(1.0, first)
    clock.advance(5.0)
    assert seen == [("first", 1.0), ("second", 2.0)]
    assert clock.time() == 5.0


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "1", True])
def test_advance_rejects_bad_durations(bad):
    clock = FakeClock()
    with pytest.raises(ValueError, match="seconds must be a finite number >= 0"):
        clock.advance(bad)


async def test_sleep_gives_up_on_a_queue_that_never_goes_quiet(make_queue):
    clock = FakeClock()
    q = await make_queue(1, clock=clock)
    release = asyncio.Event()

    async def stuck():
        await release.wait()

    h = await q.submit(stuck)
    with pytest.raises(TimeoutError, match="still busy"):
        await clock.sleep(1.0, settle_timeout=0.05)
    release.set()
    await h


def test_clock_without_the_protocol_is_refused():
    with pytest.raises(TypeError, match=r"clock must have time\(\) and call_later"):
        HybridQueue(clock=object())  # type: ignore[arg-type]


async def test_unstarted_queue_does_not_hold_up_sleep():
    clock = FakeClock()
    q = HybridQueue(1, clock=clock)
    h = await q.submit(abs, -1)
    await clock.sleep(5)  # nothing runs before start(); nothing to wait for
    await q.start()
    assert await h == 1
    await q.shutdown()


async def test_expiry_armed_just_before_sleep_is_not_skipped(make_queue):
    # The expiry chain starts with a callback posted to the loop when the
    # first result is stored; sleep() must wait for it to arm its timer.
    clock = FakeClock()
    q = await make_queue(1, clock=clock, result_ttl=3600.0)
    assert await (await q.submit(abs, -1)) == 1
    await clock.sleep(3600)
    assert q.stats().results_expired == 1


async def test_advance_from_another_thread_is_refused(make_queue):
    clock = FakeClock()
    await make_queue(1, clock=clock)
    with pytest.raises(RuntimeError, match="must run on the event loop thread"):
        await asyncio.to_thread(clock.advance, 1.0)
    assert clock.time() == 0.0
