"""Priority aging (opt-in): a waiting task's priority rises one step per ``aging`` seconds.

The bound under test: no task starts before a waiting task of at most ``d``
steps less priority that was submitted ``d * aging`` seconds or more before
it. With aging off, the order is priority, then submission, exactly.
"""

from __future__ import annotations

import asyncio
import math

import pytest
import uvloop
from _helpers import deterministic
from hypothesis import given, settings
from hypothesis import strategies as st

from hybrid_queue import HybridQueue
from hybrid_queue.testing import FakeClock

pytestmark = pytest.mark.timing


async def test_without_aging_an_old_low_task_waits_for_every_higher_one(make_queue):
    clock = FakeClock()
    q = await make_queue(1, clock=clock, start=False)
    order = []

    async def job(name):
        order.append(name)

    handles = [await q.submit(job, "low", priority=0)]
    for i in range(5):
        clock.advance(100)
        handles.append(await q.submit(job, f"high{i}", priority=3))
    await q.start()
    await asyncio.gather(*handles)
    assert order == ["high0", "high1", "high2", "high3", "high4", "low"]


async def test_with_aging_a_low_task_goes_before_higher_ones_submitted_long_enough_after_it(make_queue):
    clock = FakeClock()
    q = await make_queue(1, clock=clock, aging=10.0, start=False)
    order = []

    async def job(name):
        order.append(name)

    handles = [await q.submit(job, "low", priority=0)]
    # Three steps apart: "low" goes before every priority-3 task submitted 30 s or more after it
    # (and, steps counting whole intervals of the clock, before one submitted at 29 s too).
    for at in (5, 10, 29, 30, 31, 60):
        clock.advance(at - clock.time())
        handles.append(await q.submit(job, f"high@{at}", priority=3))
    await q.start()
    await asyncio.gather(*handles)
    assert order == ["high@5", "high@10", "low", "high@29", "high@30", "high@31", "high@60"]


async def test_a_low_task_starts_within_the_bound_under_a_saturating_stream(make_queue):
    # One worker; every handler takes 1 s of fake time; a new priority-5 task
    # arrives every second, so the queue is never idle and always has a
    # priority-5 task waiting. Without aging the priority-0 task would wait
    # for ever; with aging=2.0 it starts within 2 * 5 s, plus one handler.
    clock = FakeClock()
    q = await make_queue(1, clock=clock, aging=2.0)
    starts: dict[str, float] = {}

    async def job(name):
        starts[name] = clock.time()
        done = asyncio.get_running_loop().create_future()
        clock.call_later(1.0, done.set_result, None)
        await done

    handles = [await q.submit(job, "high-0", priority=5), await q.submit(job, "high-1", priority=5)]
    handles.append(await q.submit(job, "low", priority=0))
    submitted_low = clock.time()
    for i in range(2, 40):
        for _ in range(20):
            await asyncio.sleep(0)
        clock.advance(1.0)
        handles.append(await q.submit(job, f"high-{i}", priority=5))
    for _ in range(60):
        for _ in range(20):
            await asyncio.sleep(0)
        if all(h.done() for h in handles):
            break
        clock.advance(1.0)
    await asyncio.gather(*handles)
    assert "low" in starts
    assert starts["low"] - submitted_low <= 2.0 * 5 + 1.0, starts


async def test_aging_orders_tasks_that_came_due_by_their_due_time(make_queue):
    clock = FakeClock()
    q = await make_queue(1, clock=clock, aging=1.0, start=False)
    order = []

    async def job(name):
        order.append(name)

    late = await q.submit(job, "due@50 p0", priority=0, delay=50)
    early = await q.submit(job, "due@10 p0", priority=0, delay=10)
    await q.start()
    gate = asyncio.Event()

    async def blocker():
        await gate.wait()

    held = await q.submit(blocker, priority=100)
    await asyncio.sleep(0)
    clock.advance(60)  # both due while the worker is busy
    high = await q.submit(job, "now p45", priority=45)
    gate.set()
    await asyncio.gather(late, early, held, high)
    # Entered at 10, at 50 and at 60: the one due at 10 has aged 50 steps, more than the 45 of "now p45".
    assert order == ["due@10 p0", "now p45", "due@50 p0"]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("aging", [None, 1.0, 4.0])
@settings(parent=deterministic, max_examples=60)
@given(plan=st.lists(st.tuples(st.integers(-3, 6), st.integers(0, 9)), min_size=1, max_size=25))
def test_start_order_is_priority_plus_steps_waited(loop, aging, plan):
    """Tasks (priority, seconds after the previous) submitted to a stopped queue, then run on one worker."""

    async def scenario() -> list[int]:
        clock = FakeClock(start=3.5)
        q = HybridQueue(1, clock=clock, aging=aging)
        order: list[int] = []

        async def job(i: int) -> None:
            order.append(i)

        handles = []
        entered = []
        for i, (priority, gap) in enumerate(plan):
            clock.advance(gap)
            entered.append(clock.time())
            handles.append(await q.submit(job, i, priority=priority))
        await q.start()
        await asyncio.gather(*handles)
        await q.shutdown()
        return order

    factory = asyncio.new_event_loop if loop == "asyncio" else uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        order = runner.run(scenario())
    entered = [3.5 + sum(gap for _, gap in plan[: i + 1]) for i in range(len(plan))]

    def rank(i: int) -> tuple[int, int]:
        priority = plan[i][0]
        steps = 0 if aging is None else math.ceil(entered[i] / aging)
        return (-(priority - steps), i)

    assert order == sorted(range(len(plan)), key=rank)
    if aging is not None:
        # The bound, checked directly on the order.
        position = {task: n for n, task in enumerate(order)}
        for a in range(len(plan)):
            for b in range(len(plan)):
                d = plan[b][0] - plan[a][0]
                if d >= 0 and entered[b] - entered[a] >= d * aging and a < b:
                    assert position[a] < position[b], (a, b, plan)
