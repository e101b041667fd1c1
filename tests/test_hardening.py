"""Behaviours that trials of the queue as a new user would run it found missing, one test or more each.

Shutdown and lifecycle under signals, threads, forks and closed loops;
handlers that can be stopped; child tasks; programming errors; state that
must not outlive what it describes.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from hybrid_queue import HybridQueue, TaskEvent, UnknownTaskError
from hybrid_queue._bridge import LoopBridge

# ------------------------------------------------------------------ task ids


class CallsBack:
    """An id whose hashing calls back into the queue, as a careless __hash__ might."""

    def __init__(self, queue: HybridQueue) -> None:
        self.queue = queue
        self.hashed = 0

    def __hash__(self) -> int:
        self.hashed += 1
        self.queue.stats()  # takes the queue's lock: a deadlock if it is held
        return 1


async def test_an_id_whose_hash_calls_the_queue_is_refused_and_never_hashed_under_the_lock(make_queue):
    q = await make_queue(1)
    bad = CallsBack(q)
    with pytest.raises(TypeError, match=r"^task_id must be a str, int, float, bytes, uuid\.UUID or a tuple"):
        await q.submit(abs, 1, task_id=bad)  # type: ignore[arg-type]
    # Lookups with such an id find nothing, without hashing it under the lock.
    with pytest.raises(UnknownTaskError):
        q.status(bad)  # type: ignore[arg-type]
    with pytest.raises(UnknownTaskError):
        await q.get_result(bad)  # type: ignore[arg-type]
    assert q.cancel_task(bad) is False  # type: ignore[arg-type]
    assert q.forget(bad) is False  # type: ignore[arg-type]
    assert bad.hashed == 0


async def test_plain_ids_of_every_allowed_kind_are_accepted(make_queue):
    q = await make_queue(2)
    ids = ["a", 7, 2.5, b"raw", uuid.UUID(int=5), ("tenant", 3, None, ("nested", b"x"))]
    handles = [await q.submit(abs, -1, task_id=task_id) for task_id in ids]
    assert await asyncio.gather(*handles) == [1] * len(ids)
    assert [h.task_id for h in handles] == ids


# ------------------------------------------------------------------ listeners


async def test_a_one_shot_listener_that_removes_itself_is_called_exactly_once(make_queue):
    q = await make_queue(1)
    calls: list[TaskEvent] = []

    def once(event: TaskEvent) -> None:
        calls.append(event)
        q.remove_listener(once)

    q.add_listener(once)
    # Many events in one batch: SUBMITTED and STARTED of several tasks at least.
    handles = [await q.submit(abs, -i) for i in range(5)]
    await asyncio.gather(*handles)
    await q.shutdown()
    assert len(calls) == 1


async def test_a_listener_removed_by_another_is_not_called_for_the_rest_of_the_batch(make_queue):
    q = await make_queue(1)
    second: list[TaskEvent] = []

    def first(event: TaskEvent) -> None:
        q.remove_listener(second.append)

    q.add_listener(first)
    q.add_listener(second.append)
    handles = [await q.submit(abs, -i) for i in range(5)]
    await asyncio.gather(*handles)
    await q.shutdown()
    assert second == []


# --------------------------------------------------------------------- bridge


def test_a_post_after_the_loop_closed_with_a_drain_scheduled_is_refused():
    loop = asyncio.new_event_loop()
    bridge = LoopBridge(loop)
    ran: list[int] = []
    assert bridge.post(ran.append, 1) is True  # schedules a drain
    loop.close()  # before the drain could run
    # The flag that says "a drain is coming" must not make this look accepted.
    assert bridge.post(ran.append, 2) is False
    assert bridge.post(ran.append, 3) is False
    assert ran == []
