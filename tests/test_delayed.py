"""Delayed tasks: ``delay=`` and ``not_before=``, the SCHEDULED state, and the one timer they share."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from _helpers import FAST, assert_identity, assert_nothing_lost

from hybrid_queue import EventKind, TaskStatus
from hybrid_queue.testing import FakeClock

pytestmark = pytest.mark.timing


async def test_a_delayed_task_is_scheduled_holds_no_worker_and_starts_at_its_due_time(make_queue):
    clock = FakeClock(start=100.0)
    q = await make_queue(1, clock=clock)
    starts = []

    async def job():
        starts.append(clock.time())
        return "done"

    h = await q.submit(job, delay=30)
    assert q.status(h.task_id) is TaskStatus.SCHEDULED
    s = q.stats()
    assert (s.scheduled, s.pending, s.running, s.busy_workers) == (1, 0, 0, 0)
    assert_identity(q)
    # The worker is free for other work meanwhile.
    assert await (await q.submit(job)) == "done"
    assert starts == [100.0]
    await clock.sleep(29.9)
    assert not h.done() and q.status(h.task_id) is TaskStatus.SCHEDULED
    await clock.sleep(0.1)
    assert await h == "done"
    assert starts == [100.0, 130.0]
    assert_nothing_lost(q, [h])


async def test_tasks_due_together_start_by_priority_then_submission(make_queue):
    clock = FakeClock()
    q = await make_queue(1, clock=clock)
    order = []

    async def job(name):
        order.append(name)

    handles = [
        await q.submit(job, "low", delay=5, priority=0),
        await q.submit(job, "high", delay=5, priority=9),
        await q.submit(job, "low-2", delay=5, priority=0),
        await q.submit(job, "early", delay=1, priority=-5),
    ]
    await clock.sleep(5)
    await asyncio.gather(*handles)
    assert order == ["early", "high", "low", "low-2"]


async def test_a_due_task_queues_behind_tasks_already_waiting_at_its_priority(make_queue):
    clock = FakeClock()
    q = await make_queue(1, clock=clock)
    order = []
    gate = asyncio.Event()

    async def blocker():
        await gate.wait()

    async def job(name):
        order.append(name)

    held = await q.submit(blocker, priority=99)
    await asyncio.sleep(0)
    delayed = await q.submit(job, "delayed", delay=1)
    before = await q.submit(job, "before")
    clock.advance(1)  # the worker is busy: sleep() would wait for it
    assert q.status(delayed.task_id) is TaskStatus.PENDING
    after = await q.submit(job, "after")
    gate.set()
    await asyncio.gather(held, delayed, before, after)
    assert order == ["before", "delayed", "after"]


async def test_a_task_due_before_start_waits_scheduled_until_start(make_queue):
    clock = FakeClock()
    q = await make_queue(1, clock=clock, start=False)

    async def job():
        return clock.time()

    h = await q.submit(job, delay=1)
    await clock.sleep(5)
    assert q.status(h.task_id) is TaskStatus.SCHEDULED  # no timer runs before start()
    await q.start()
    assert await h == 5.0


async def test_many_scheduled_tasks_share_one_timer_armed_for_the_earliest(make_queue):
    clock = FakeClock()
    q = await make_queue(4, clock=clock)

    async def job(i):
        return i

    handles = [await q.submit(job, i, delay=10.0 + (i * 7919) % 1000) for i in range(1000)]
    assert q.stats().scheduled == 1000
    assert clock.pending_timers == 1
    assert clock.next_deadline() == 10.0
    # One earlier than every other re-arms the one timer.
    early = await q.submit(job, -1, delay=2.5)
    assert clock.pending_timers == 1
    assert clock.next_deadline() == 2.5
    await clock.sleep(2.5)
    assert await early == -1
    assert clock.pending_timers == 2  # the due timer, and the expiry of early's result
    await clock.sleep(1010)
    assert [await h for h in handles] == list(range(1000))
    assert_nothing_lost(q, handles)


async def test_an_idle_queue_wakes_only_at_due_times(make_queue):
    clock = FakeClock()
    q = await make_queue(2, clock=clock, result_ttl=0)
    wakes = 0
    arm = clock.call_later

    def counting(delay, callback, *args):
        def fire(*a):
            nonlocal wakes
            wakes += 1
            callback(*a)

        return arm(delay, fire, *args)

    clock.call_later = counting  # type: ignore[method-assign]

    async def job():
        pass

    # 300 tasks at 3 distinct due times: three wakes, not 300.
    handles = [await q.submit(job, delay=float(1 + i % 3)) for i in range(300)]
    await clock.sleep(10)
    await asyncio.gather(*handles)
    assert wakes == 3


async def test_not_before_a_datetime_is_wall_clock_time(make_queue):
    start = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    clock = FakeClock(start=5.0, wall=start)
    q = await make_queue(1, clock=clock)
    starts = []

    async def job():
        starts.append(clock.time())

    h = await q.submit(job, not_before=start + timedelta(minutes=10))
    assert q.status(h.task_id) is TaskStatus.SCHEDULED
    await clock.sleep(600)
    await h
    assert starts == [605.0]


async def test_not_before_a_float_is_on_the_queue_clock(make_queue):
    clock = FakeClock(start=1000.0)
    q = await make_queue(1, clock=clock)
    assert q.time() == 1000.0
    starts = []

    async def job():
        starts.append(clock.time())

    h = await q.submit(job, not_before=q.time() + 42)
    await clock.sleep(42)
    await h
    assert starts == [1042.0]


@pytest.mark.parametrize(
    "when",
    [{"delay": 0}, {"not_before": 999.0}, {"not_before": datetime(2000, 1, 1, tzinfo=UTC)}],
    ids=["delay=0", "float-past", "datetime-past"],
)
async def test_a_task_due_now_or_past_is_queued_at_once(make_queue, when):
    clock = FakeClock(start=1000.0, wall=datetime(2026, 1, 1, tzinfo=UTC))
    q = await make_queue(1, clock=clock, start=False)

    async def job():
        return 1

    h = await q.submit(job, **when)
    assert q.status(h.task_id) is TaskStatus.PENDING
    assert q.stats().scheduled == 0
    await q.start()
    assert await h == 1


async def test_cancelling_a_scheduled_task_removes_it_and_it_never_runs(make_queue):
    clock = FakeClock()
    q = await make_queue(1, clock=clock)
    ran = []

    async def job():
        ran.append(1)

    h = await q.submit(job, delay=10)
    keep = await q.submit(job, delay=20)
    assert h.cancel()
    assert q.status(h.task_id) is TaskStatus.CANCELLED
    s = q.stats()
    assert (s.scheduled, s.cancelled) == (1, 1)
    with pytest.raises(asyncio.CancelledError):
        await h
    await clock.sleep(15)
    assert ran == []
    await clock.sleep(5)
    await keep
    assert ran == [1]
    assert_nothing_lost(q, [h, keep])


async def test_cancel_task_by_id_from_a_thread_while_scheduled(make_queue):
    clock = FakeClock()
    q = await make_queue(1, clock=clock)

    async def job():
        return 1

    h = await q.submit(job, delay=10)
    assert await asyncio.to_thread(q.cancel_task, h.task_id)
    assert h.cancelled()
    assert_identity(q)


async def test_submit_blocking_with_a_delay_from_a_thread(make_queue):
    clock = FakeClock()
    q = await make_queue(1, clock=clock)

    def work(x):
        return (x, threading.current_thread().name)

    future = await asyncio.to_thread(q.submit_blocking, work, 3, delay=60)
    assert q.status(future.task_id) is TaskStatus.SCHEDULED
    assert not future.running()
    await clock.sleep(59)
    assert not future.done()
    await clock.sleep(1)
    value, _ = await asyncio.wrap_future(future)
    assert value == 3


async def test_tasks_scheduled_before_start_are_timed_from_their_submit(make_queue):
    clock = FakeClock()
    q = await make_queue(1, clock=clock, start=False)
    starts = []

    async def job(name):
        starts.append((name, clock.time()))

    soon = await q.submit(job, "soon", delay=5)
    late = await q.submit(job, "late", delay=50)
    assert clock.pending_timers == 0  # nothing armed before start
    clock.advance(10)  # "soon" is overdue by the time the queue starts
    await q.start()
    await soon
    assert starts == [("soon", 10.0)]
    await clock.sleep(40)
    await late
    assert starts == [("soon", 10.0), ("late", 50.0)]


async def test_shutdown_cancels_scheduled_tasks_at_once(make_queue):
    clock = FakeClock()
    q = await make_queue(1, clock=clock)

    async def job():
        return 1

    scheduled = [await q.submit(job, delay=3600 * (i + 1)) for i in range(3)]
    now = await q.submit(job)
    await asyncio.wait_for(q.shutdown(), 10)  # does not wait for the due times
    assert await now == 1
    assert all(h.cancelled() for h in scheduled)
    assert_nothing_lost(q, [*scheduled, now])
    assert q.stats().cancelled == 3


async def test_scheduled_tasks_are_outside_max_queue_size(make_queue):
    clock = FakeClock()
    q = await make_queue(1, clock=clock, max_queue_size=1)
    gate = asyncio.Event()

    async def blocker():
        await gate.wait()

    async def job():
        return 1

    held = q.submit_nowait(blocker)
    await asyncio.sleep(0)
    waiting = q.submit_nowait(job)
    # Full for tasks waiting for a worker, not for tasks due later.
    later = q.submit_nowait(job, delay=5)
    assert (q.stats().scheduled, q.stats().pending) == (1, 1)
    clock.advance(5)
    # Due while full: it enters anyway (as a retry does), over the bound.
    assert q.stats().pending == 2
    gate.set()
    assert await asyncio.gather(held, waiting, later) == [None, 1, 1]


async def test_a_delayed_task_retries_as_any_task(make_queue):
    clock = FakeClock()
    q = await make_queue(1, clock=clock, retry=FAST)
    attempts = []

    async def flaky():
        attempts.append(clock.time())
        if len(attempts) < 3:
            raise OSError("transient")
        return "ok"

    h = await q.submit(flaky, delay=10)
    await clock.sleep(11)
    assert await h == "ok"
    assert attempts[0] == 10.0 and len(attempts) == 3


async def test_events_of_a_delayed_task(make_queue):
    clock = FakeClock()
    q = await make_queue(1, clock=clock)
    events = []
    q.add_listener(events.append)

    async def job():
        return 1

    h = await q.submit(job, delay=7)
    await clock.sleep(7)
    await h
    await asyncio.sleep(0)
    kinds = [(e.kind, e.time) for e in events if e.task_id == h.task_id]
    assert kinds == [(EventKind.SUBMITTED, 0.0), (EventKind.STARTED, 7.0), (EventKind.COMPLETED, 7.0)]


async def test_on_the_real_clock_a_delayed_task_never_starts_early(make_queue):
    q = await make_queue(2)
    starts = {}

    async def job(i):
        starts[i] = time.monotonic()

    due = {}
    handles = []
    for i, delay in enumerate([0.05, 0.01, 0.03, 0.02, 0.04]):
        due[i] = time.monotonic() + delay
        handles.append(await q.submit(job, i, delay=delay))
    await asyncio.wait_for(asyncio.gather(*handles), 10)
    assert all(starts[i] >= due[i] for i in due), {i: starts[i] - due[i] for i in due}
    assert_nothing_lost(q, handles)
