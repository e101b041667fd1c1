"""Child tasks: a handler waiting for tasks of its own queue never deadlocks, and at most ``workers`` work.

A handler that waits for a task of its queue (``await handle``,
``asyncio.gather``, ``asyncio.wait``, or ``future.result()`` in a sync
handler) lends its worker slot while it waits, and takes one back before it
goes on. The rule checked throughout: at most ``workers`` handlers are at
work (between their waits) at any moment, and when everything has ended
every slot is free again. Handlers may submit tasks from the loop or from
their threads, and a handler that awaits its own handle is ended by its
timeout or by a cancel.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any

import pytest
from _helpers import NO_RETRY, SAFETY, assert_nothing_lost, shut_down
from conftest import wait_until

from hybrid_queue import HybridQueue, TaskStatus

pytestmark = pytest.mark.timeout(30)


class AtWork:
    """Counts handlers at work (not waiting for a task of the queue), and the most seen at once. Any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.most = 0

    def enter(self) -> None:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def leave(self) -> None:
        with self._lock:
            self.now -= 1


async def settled(q: HybridQueue) -> None:
    """Wait until no task is live, then check that every slot came back."""
    await q._sched.wait_idle()
    stats = q.stats()
    assert stats.busy_workers == 0 and stats.running == 0 and stats.pending == 0, stats
    assert q._sched._free == q.workers
    assert not q._sched._reclaimers


# ------------------------------------------------------------ coroutine handlers


@pytest.mark.nesting
async def test_four_handlers_awaiting_their_children_on_two_workers_all_finish(make_queue):
    q = await make_queue(workers=2)

    async def child(n: int) -> int:
        await asyncio.sleep(0.001)
        return n * 10

    async def parent(n: int) -> int:
        return await (await q.submit(child, n))

    handles = [await q.submit(parent, n) for n in range(4)]
    assert await asyncio.wait_for(asyncio.gather(*handles), 10) == [0, 10, 20, 30]
    await settled(q)


@pytest.mark.nesting
async def test_a_chain_100_deep_runs_on_one_worker(make_queue):
    q = await make_queue(workers=1)
    at_work = AtWork()

    async def link(n: int) -> int:
        at_work.enter()
        await asyncio.sleep(0)  # at work across a suspension: the slot stays held
        at_work.leave()
        if n == 0:
            return 0
        below = await q.submit(link, n - 1)
        value = await below
        at_work.enter()
        await asyncio.sleep(0)
        at_work.leave()
        return value + 1

    assert await asyncio.wait_for(await q.submit(link, 100), 20) == 100
    assert at_work.most == 1
    assert q.stats().completed == 101
    await settled(q)


@pytest.mark.nesting
async def test_a_fan_out_of_1000_children_gathered_by_one_handler(make_queue):
    q = await make_queue(workers=2)
    at_work = AtWork()

    async def child(n: int) -> int:
        at_work.enter()
        await asyncio.sleep(0)
        at_work.leave()
        return n

    async def parent(n: int) -> int:
        at_work.enter()
        handles = [await q.submit(child, i) for i in range(n)]
        at_work.leave()
        values = await asyncio.gather(*handles)
        at_work.enter()
        await asyncio.sleep(0)
        at_work.leave()
        return sum(values)

    assert await asyncio.wait_for(await q.submit(parent, 1000), 20) == sum(range(1000))
    assert at_work.most <= 2
    assert q.stats().completed == 1001
    await settled(q)


@pytest.mark.nesting
async def test_children_from_submit_many_and_submit_nowait_lend_too(make_queue):
    q = await make_queue(workers=1)

    async def child(n: int) -> int:
        return n

    async def parent() -> int:
        many = await q.submit_many(child, range(5))
        one = q.submit_nowait(child, 5)
        return sum(await asyncio.gather(*many, one))

    assert await asyncio.wait_for(await q.submit(parent), 10) == 15
    await settled(q)


@pytest.mark.nesting
async def test_a_handle_submitted_outside_every_handler_lends_nothing(make_queue):
    # Awaited by a handler, it is not that handler's child: the handler
    # keeps its slot (as it would for any future), and the task waits for it.
    q = await make_queue(workers=1)
    outside: list[Any] = []
    gate = asyncio.Event()
    busy_while_waiting: list[int] = []

    async def parent() -> int:
        await gate.wait()
        busy_while_waiting.append(q.stats().busy_workers)
        return await asyncio.wait_for(asyncio.shield(outside[0]), 0.05)

    handle = await q.submit(parent, max_retries=0)
    outside.append(await q.submit(abs, -1))  # waits: the parent holds the one slot
    gate.set()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(handle, 10)
    assert busy_while_waiting == [1]
    assert await asyncio.wait_for(outside[0], 10) == 1  # ran once the parent let go
    await settled(q)


@pytest.mark.nesting
async def test_a_task_group_of_waits_lends_the_slot(make_queue):
    # Each wait runs in a task of its own, made by the handler: its context
    # is the handler's, so it lends the handler's slot.
    q = await make_queue(workers=1)

    async def child(n: int) -> int:
        await asyncio.sleep(0)
        return n

    async def parent() -> list[int]:
        async def fetch(n: int) -> int:
            return await (await q.submit(child, n))

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(fetch(n)) for n in range(20)]
        return [t.result() for t in tasks]

    assert await asyncio.wait_for(await q.submit(parent), 10) == list(range(20))
    await settled(q)


@pytest.mark.nesting
async def test_at_most_workers_handlers_at_work_in_a_random_tree(make_queue):
    # Every handler is at work between its waits; waits nest three deep
    # with fan-outs of 0 to 4, on 3 workers.
    q = await make_queue(workers=3)
    at_work = AtWork()

    async def node(depth: int, seed: int) -> int:
        at_work.enter()
        await asyncio.sleep(0)
        at_work.leave()
        fan = 0 if depth == 0 else seed % 5
        handles = [await q.submit(node, depth - 1, seed * 7 + i + 1) for i in range(fan)]
        below = sum(await asyncio.gather(*handles)) if handles else 0
        at_work.enter()
        await asyncio.sleep(0)
        at_work.leave()
        return below + 1

    roots = [await q.submit(node, 3, seed) for seed in range(8)]
    sizes = await asyncio.wait_for(asyncio.gather(*roots), 20)
    assert q.stats().completed == sum(sizes)
    assert at_work.most <= 3
    await settled(q)


@pytest.mark.nesting
async def test_a_child_of_the_other_kind_runs_in_the_lent_slot(make_queue):
    q = await make_queue(workers=1)

    def sync_child(n: int) -> int:
        return n + 1

    async def async_child(n: int) -> int:
        return n + 2

    async def coroutine_parent() -> int:
        return await (await q.submit(sync_child, 1))

    def sync_parent() -> int:
        return q.submit_blocking(async_child, 1).result(timeout=10)

    assert await asyncio.wait_for(await q.submit(coroutine_parent), 10) == 2
    assert await asyncio.wait_for(await q.submit(sync_parent), 10) == 3
    await settled(q)


@pytest.mark.nesting
async def test_wait_first_completed_returns_and_the_slot_comes_back(make_queue):
    # asyncio.wait removes its callback from the children not done: the
    # handler is running again, and takes back the first slot free.
    q = await make_queue(workers=1)
    release = asyncio.Event()

    async def quick() -> str:
        return "quick"

    async def slow() -> str:
        await release.wait()
        return "slow"

    async def parent() -> str:
        first = await q.submit(quick)
        second = await q.submit(slow)
        done, _ = await asyncio.wait({first, second}, return_when=asyncio.FIRST_COMPLETED)
        return next(iter(done)).result()

    handle = await q.submit(parent)
    while not handle.done():
        # The slow child holds the one slot until released: the parent
        # resumed without one, and gets it once the child ends.
        await asyncio.sleep(0.01)
        release.set()
    assert await handle == "quick"
    await settled(q)


@pytest.mark.nesting
async def test_a_parent_cancelled_while_it_waits_gets_its_slot_back_and_ends(make_queue):
    q = await make_queue(workers=1)
    started = asyncio.Event()

    async def child() -> None:
        started.set()
        await asyncio.Event().wait()

    async def parent() -> None:
        await (await q.submit(child))

    handle = await q.submit(parent)
    await asyncio.wait_for(started.wait(), 10)
    handle.cancel()
    with pytest.raises(asyncio.CancelledError):
        await handle
    # Cancelling the waiting parent cancels the child it awaited, as asyncio does.
    await settled(q)
    assert q.stats().cancelled == 2


@pytest.mark.nesting
async def test_a_parent_that_times_out_while_it_waits_ends_and_its_child_runs_on(make_queue):
    q = await make_queue(workers=1)
    release = asyncio.Event()

    async def child() -> str:
        await release.wait()
        return "child"

    children: list[Any] = []

    async def parent() -> None:
        children.append(await q.submit(child))
        await asyncio.shield(children[0])

    handle = await q.submit(parent, timeout=0.05, max_retries=0)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(handle, 10)
    release.set()
    assert await asyncio.wait_for(children[0], 10) == "child"
    await settled(q)


@pytest.mark.nesting
async def test_a_handler_that_ends_while_a_task_it_made_still_waits(make_queue):
    # The handler returns while a task it started still waits for a child:
    # the attempt is reported without the lent slot, which is passed on.
    q = await make_queue(workers=1)
    release = asyncio.Event()
    background: list[asyncio.Task[Any]] = []

    async def child() -> str:
        await release.wait()
        return "child"

    async def parent() -> str:
        handle = await q.submit(child)
        background.append(asyncio.create_task(asyncio.wait_for(handle, 10)))
        await asyncio.sleep(0.01)  # the background task is waiting by now
        return "parent"

    assert await asyncio.wait_for(await q.submit(parent), 10) == "parent"
    release.set()
    assert await background[0] == "child"
    await settled(q)


@pytest.mark.nesting
async def test_gather_that_raises_the_first_failure_leaves_the_slots_whole(make_queue):
    q = await make_queue(workers=2)
    release = asyncio.Event()

    async def fails() -> None:
        raise ValueError("boom")

    async def waits() -> str:
        await release.wait()
        return "late"

    async def parent() -> None:
        await asyncio.gather(await q.submit(fails, max_retries=0), await q.submit(waits))

    handle = await q.submit(parent, max_retries=0)
    with pytest.raises(ValueError, match="boom"):
        await asyncio.wait_for(handle, 10)
    release.set()
    await settled(q)
    assert q.stats().completed == 1 and q.stats().failed == 2, q.stats()


@pytest.mark.nesting
async def test_awaiting_a_task_of_another_queue_lends_nothing(make_queue):
    first = await make_queue(workers=1)
    other = await make_queue(workers=1)
    seen: list[int] = []

    async def child() -> int:
        seen.append(first.stats().busy_workers)
        return 1

    async def parent() -> int:
        return await (await other.submit(child))

    assert await asyncio.wait_for(await first.submit(parent), 10) == 1
    assert seen == [1]  # the parent kept its slot in its own queue
    await settled(first)
    await settled(other)


# ------------------------------------------------------------------ sync handlers


@pytest.mark.nesting
async def test_a_sync_chain_100_deep_runs_on_one_worker(make_queue):
    q = await make_queue(workers=1)
    at_work = AtWork()

    def link(n: int) -> int:
        if n == 0:
            return 0
        future = q.submit_blocking(link, n - 1)
        value: int = future.result(timeout=20)
        at_work.enter()
        at_work.leave()
        return value + 1

    assert await asyncio.wait_for(await q.submit(link, 100), 30) == 100
    assert at_work.most == 1
    await settled(q)


@pytest.mark.nesting
async def test_a_sync_fan_out_of_1000_children(make_queue):
    q = await make_queue(workers=2)
    at_work = AtWork()

    def child(n: int) -> int:
        at_work.enter()
        at_work.leave()
        return n

    def parent(n: int) -> int:
        futures = [q.submit_blocking(child, i) for i in range(n)]
        return sum(f.result(timeout=20) for f in futures)

    assert await asyncio.wait_for(await q.submit(parent, 1000), 30) == sum(range(1000))
    assert at_work.most <= 2
    await settled(q)


@pytest.mark.nesting
async def test_sync_parents_on_two_workers_waiting_with_exception(make_queue):
    q = await make_queue(workers=2)

    def child(n: int) -> int:
        if n % 2:
            raise ValueError(n)
        return n

    def parent(n: int) -> str:
        error = q.submit_blocking(child, n, max_retries=0).exception(timeout=10)
        return type(error).__name__

    handles = [await q.submit(parent, n) for n in range(4)]
    assert await asyncio.wait_for(asyncio.gather(*handles), 10) == ["NoneType", "ValueError"] * 2
    await settled(q)


@pytest.mark.nesting
async def test_a_sync_parent_whose_wait_times_out_waits_for_a_slot_before_it_goes_on(make_queue):
    # Its child holds the one slot: the parent, done waiting, cannot go on
    # until the child ends and the slot comes back to it.
    q = await make_queue(workers=1)
    release = threading.Event()
    went_on: list[bool] = []

    def child() -> str:
        release.wait(10)
        return "child"

    def parent() -> str:
        with pytest.raises(concurrent.futures.TimeoutError):
            q.submit_blocking(child).result(timeout=0.05)
        went_on.append(release.is_set())
        return "parent"

    handle = await q.submit(parent)
    await wait_until(lambda: bool(q._sched._reclaimers))
    release.set()
    assert await asyncio.wait_for(handle, 10) == "parent"
    assert went_on == [True]
    await settled(q)
    assert q.stats().completed == 2


@pytest.mark.nesting
def test_a_future_waited_for_outside_any_handler_lends_nothing():
    q = HybridQueue(workers=1)
    q.start_background()
    try:
        future = q.submit_blocking(lambda: 5)
        assert future.result(timeout=10) == 5
        assert q.status(future.task_id) is TaskStatus.COMPLETED
        assert q.stats().busy_workers == 0
    finally:
        q.shutdown_blocking()


@pytest.mark.nesting
async def test_the_queues_own_pool_grows_only_by_the_threads_that_wait(make_queue):
    q = await make_queue(workers=1)

    def link(n: int) -> int:
        return 0 if n == 0 else 1 + q.submit_blocking(link, n - 1).result(timeout=10)

    assert await asyncio.wait_for(await q.submit(link, 5), 10) == 5
    pool = q._runner.executor
    # One thread per waiting link, and the one that ran the last: six.
    assert len(pool._threads) == 6  # type: ignore[union-attr]
    assert pool._max_workers == 1  # type: ignore[union-attr]
    await settled(q)


# ------------------------------------------------------ handlers that submit tasks
@pytest.mark.faults
async def test_coroutine_handler_submits_more_tasks(make_queue):
    """A coroutine handler that submits children with ``await q.submit`` (and awaits some).

    Submitting from inside a handler is ordinary use: children of both
    kinds run on the other worker, the parent gets their values, children
    nobody awaits complete too, and every submission is counted once.
    """
    q = await make_queue(2)
    unawaited = []

    async def child(i):
        await asyncio.sleep(0)
        return i

    def sync_child(i):
        return 10 * i

    async def parent(n):
        kids = [await q.submit(child, i) for i in range(n)] + [await q.submit(sync_child, i) for i in range(n)]
        unawaited.extend([await q.submit(child, -1), await q.submit(sync_child, -1)])
        return sum(await asyncio.gather(*kids))

    h = await q.submit(parent, 5)
    async with asyncio.timeout(5):
        assert await h == sum(range(5)) * 11
        assert await asyncio.gather(*unawaited) == [-1, -10]
    s = q.stats()
    assert (s.submitted, s.completed) == (13, 13)
    assert_nothing_lost(q, [h, *unawaited])
    await shut_down(q)


@pytest.mark.faults
async def test_sync_handler_submits_more_tasks(make_queue):
    """A sync handler that submits children with ``q.submit_blocking`` and waits on their futures.

    From a pool thread, ``submit_blocking`` is the right call; with a free
    worker for the children, the parent gets their values. Coroutine
    children are carried over to the loop; all are counted once.
    """
    q = await make_queue(2)

    async def coro_child(i):
        return i

    def sync_child(i):
        return 10 * i

    def parent(n):
        futures = [q.submit_blocking(coro_child, i) for i in range(n)]
        futures += [q.submit_blocking(sync_child, i) for i in range(n)]
        return sum(f.result(timeout=SAFETY) for f in futures)

    h = await q.submit(parent, 5)
    async with asyncio.timeout(5):
        assert await h == sum(range(5)) * 11
    s = q.stats()
    assert (s.submitted, s.completed) == (11, 11)
    assert_nothing_lost(q, [h])
    await shut_down(q)


@pytest.mark.faults
async def test_sync_handler_waiting_for_a_task_it_submitted_with_one_worker(make_queue):
    """A sync handler calling ``q.submit_blocking(...).result()`` with ``workers=1`` does not deadlock.

    The parent lends its slot while it waits, so the child runs in it; the
    parent takes a slot back before it goes on (the tests above state the
    rule in full).
    """
    q = await make_queue(1, retry=NO_RETRY)
    children: list[concurrent.futures.Future[Any]] = []

    def parent():
        child = q.submit_blocking(abs, -6)
        children.append(child)
        return child.result(timeout=SAFETY)

    h = await q.submit(parent)
    async with asyncio.timeout(5):
        assert await h == 6
    (child,) = children
    assert child.result() == 6
    await wait_until(lambda: q.stats().busy_workers == 0)
    assert_nothing_lost(q, [h, child])


@pytest.mark.faults
async def test_coroutine_handler_awaiting_its_own_handle_times_out(make_queue):
    """A coroutine handler that awaits its own handle, with ``timeout=``.

    It cannot finish before it finishes, so it waits until its deadline,
    and that attempt fails with TimeoutError like any other: the task ends
    FAILED, not CANCELLED (nobody cancelled it), and the worker goes on.
    """
    q = await make_queue(1, retry=NO_RETRY)
    own: dict[str, asyncio.Future[Any]] = {}

    async def waits_on_itself():
        return await own["handle"]

    # submit() does not yield to the loop, so the handle is in place before the handler runs.
    h = own["handle"] = await q.submit(waits_on_itself, timeout=0.05)
    nxt = await q.submit(abs, -4)
    async with asyncio.timeout(5):
        await asyncio.wait({h})
        assert await nxt == 4
    r = await q.get_result(h.task_id)
    assert (r.status, type(r.error)) == (TaskStatus.FAILED, TimeoutError), r
    assert not h.cancelled() and isinstance(h.exception(), TimeoutError)
    await wait_until(lambda: q.stats().busy_workers == 0)
    assert_nothing_lost(q, [h, nxt])
    await shut_down(q)


@pytest.mark.faults
async def test_coroutine_handler_awaiting_its_own_handle_ends_by_cancel_task(make_queue):
    """A coroutine handler that awaits its own handle, without a timeout.

    It would wait for ever; ``cancel_task`` ends it like any running
    coroutine: CANCELLED, the handler interrupted, the worker free for the
    next task. (It submitted nothing, so its wait lends no slot: see
    test_a_handle_submitted_outside_every_handler_lends_nothing.)
    """
    q = await make_queue(1)
    own: dict[str, asyncio.Future[Any]] = {}
    started = asyncio.Event()

    async def waits_on_itself():
        started.set()
        return await own["handle"]

    h = own["handle"] = await q.submit(waits_on_itself)
    nxt = await q.submit(abs, -5)
    await started.wait()
    await asyncio.sleep(0.01)
    assert not h.done() and not nxt.done()
    assert q.cancel_task(h.task_id)
    async with asyncio.timeout(5):
        assert await nxt == 5
    assert h.cancelled() and q.status(h.task_id) is TaskStatus.CANCELLED
    await wait_until(lambda: q.stats().busy_workers == 0)
    assert_nothing_lost(q, [h, nxt])
    await shut_down(q)


# ---------------------------------------------- the slot back, in order and in context


async def test_a_parent_goes_on_in_its_childs_slot_before_the_next_task_in_the_heap(make_queue):
    q = await make_queue(workers=1)
    order: list[str] = []

    async def child() -> None:
        order.append("child")

    async def other() -> None:
        order.append("other")

    async def parent() -> None:
        done = await q.submit(child, priority=10)
        await q.submit(other, priority=0)  # waits in the heap behind the child
        await done
        order.append("parent goes on")

    await asyncio.wait_for(await q.submit(parent, priority=10), 10)
    await settled(q)
    assert order == ["child", "parent goes on", "other"]


async def test_a_sync_parent_goes_on_in_its_childs_slot_before_the_next_task_in_the_heap(make_queue):
    q = await make_queue(workers=1)
    order: list[str] = []

    def parent() -> None:
        done = q.submit_blocking(order.append, "child", priority=10)
        q.submit_blocking(order.append, "other", priority=0)
        done.result(timeout=10)
        order.append("parent goes on")

    await asyncio.wait_for(await q.submit(parent, priority=10), 10)
    await settled(q)
    assert order == ["child", "parent goes on", "other"]


async def test_a_resumption_held_back_for_a_slot_runs_in_the_handlers_own_context(make_queue):
    # The child times out, but its thread keeps the one slot: the parent's
    # resumption waits for it, then runs in the parent's context, where its
    # next wait lends as the first did.
    import contextvars

    q = await make_queue(workers=1, retry=NO_RETRY)
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    release = threading.Event()

    def stuck() -> str:
        release.wait(10)
        return "late"

    async def quick() -> str:
        return "quick"

    async def parent() -> tuple[str, str]:
        var.set("the parent's")
        with pytest.raises(TimeoutError):
            await (await q.submit(stuck, timeout=0.05))
        seen = var.get()
        return seen, await (await q.submit(quick))

    handle = await q.submit(parent)
    await wait_until(lambda: bool(q._sched._reclaimers))  # the parent waits for the stuck slot
    release.set()
    assert await asyncio.wait_for(handle, 10) == ("the parent's", "quick")
    await settled(q)


async def test_a_wait_that_times_out_goes_on_without_waiting_for_the_childs_slot(make_queue):
    # The sync child cannot be stopped and keeps the one slot; the parent's
    # own timeout on the wait ends the wait at once, and the parent ends
    # while the child still runs.
    q = await make_queue(workers=1, retry=NO_RETRY)
    release = threading.Event()

    def stuck() -> str:
        release.wait(10)
        return "late"

    async def parent() -> str:
        child = await q.submit(stuck)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(child, 0.05)
        return "parent"

    try:
        assert await asyncio.wait_for(await q.submit(parent), 10) == "parent"
        # The child was cancelled with the wait; its thread still holds the slot.
        assert q.stats().busy_workers == 1
    finally:
        release.set()
    await settled(q)


async def test_an_interrupt_that_lands_as_the_slot_is_lent_still_gets_the_slot_back(make_queue, monkeypatch):
    # interrupt_sync_handlers: the child cancels its waiting parent while
    # the parent is still lending (made slow here); the interrupt, held back
    # there, is raised as the lend returns, and the slot still comes back.
    import time

    from hybrid_queue._scheduler import Scheduler

    lend = Scheduler.lend

    def slow_lend(self: Scheduler, *args: Any) -> Any:
        lent = lend(self, *args)
        time.sleep(0.02)
        return lent

    monkeypatch.setattr(Scheduler, "lend", slow_lend)
    for trial in range(5):
        q = await make_queue(workers=1, interrupt_sync_handlers=True, retry=NO_RETRY)

        def child(parent_id: str, q: HybridQueue = q) -> int:
            q.cancel_task(parent_id)
            return 1

        def parent(parent_id: str, q: HybridQueue = q) -> int:
            return q.submit_blocking(child, parent_id).result(timeout=10)

        handle = await q.submit(parent, f"p{trial}", task_id=f"p{trial}")
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(handle, 10)
        await settled(q)


async def test_the_last_task_ending_while_its_parents_slot_is_out_wakes_a_draining_shutdown(make_queue):
    # The parent goes on at gather's first failure and ends while the wait
    # for its sync child still counts; the child ends around the same time.
    # Whichever ends last, shutdown(wait=True) sees the queue idle.
    import time

    q = await make_queue(workers=2, retry=NO_RETRY)
    first: list[Any] = []

    async def fails() -> None:
        await asyncio.sleep(0.01)
        raise ValueError("first failure")

    def slow() -> int:
        time.sleep(0.03)
        return 2

    async def parent() -> None:
        first.append(await q.submit(fails))
        await asyncio.gather(first[0], await q.submit(slow))

    async def busy_loop() -> None:
        await wait_until(lambda: bool(first) and first[0].done())
        time.sleep(0.05)  # noqa: ASYNC251 - the loop is held while the sync child ends on its thread

    blocker = asyncio.create_task(busy_loop())
    await q.submit(parent)
    await wait_until(lambda: bool(first))
    await asyncio.wait_for(q.shutdown(), 10)
    await blocker
    assert q.stats().running == 0 and q._sched._free == q.workers


async def test_coroutine_handlers_see_the_context_the_queue_was_started_in(make_queue):
    import contextvars

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    var.set("at start")
    q = await make_queue(workers=2)
    var.set("later, in the submitter")

    async def read() -> str:
        return var.get()

    async def parent() -> list[str]:
        return [var.get(), await (await q.submit(read))]

    assert await asyncio.wait_for(await q.submit(parent), 10) == ["at start", "at start"]
