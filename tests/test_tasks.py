"""Tasks: what a handler may be, the handle a submit returns, task ids, bounded queues, stats and errors.

- A handler is a coroutine function or any other callable (a class with an
  async ``__call__`` is a sync handler); an async generator function is
  refused at submit, and a sync handler that returns a coroutine fails.
- The handle is an asyncio future (``gather``, ``wait``, ``wait_for``); its
  ``task_id`` is read-only. Ids are chosen by callers or generated, never
  both the same; an id is hashed outside the queue's lock.
- ``submit_many`` returns handles in order and enters a bounded queue whole
  or waits; ``submit`` waits for room, ``submit_nowait`` raises ``QueueFull``.
- ``QueueStats`` is a frozen value whose counters always add up:
  ``submitted == pending + running + retrying + completed + failed + cancelled``.
- Every error is a ``QueueError`` and the builtin error it resembles.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import threading
import uuid

import pytest
from _helpers import FAST, assert_stats_identity

from hybrid_queue import (
    CallError,
    DuplicateTaskError,
    HybridQueue,
    QueueError,
    QueueFull,
    QueueShutDown,
    QueueStats,
    RetryPolicy,
    TaskHandle,
    TaskStatus,
    UnknownTaskError,
)


async def test_handle_is_a_future_for_gather_wait_and_wait_for(make_queue):
    q = await make_queue(2)
    h = await q.submit(abs, -3)
    assert isinstance(h, asyncio.Future) and isinstance(h, TaskHandle)
    done, _ = await asyncio.wait([h])
    assert done == {h} and h.result() == 3

    async def slow():
        await asyncio.sleep(10)

    s = await q.submit(slow)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(s, 0.01)
    # wait_for cancels what it waited on: the task is cancelled in the queue.
    assert q.status(s.task_id) is TaskStatus.CANCELLED


def test_task_handle_id_is_read_only():
    async def main():
        async with HybridQueue(1) as q:
            h = await q.submit(asyncio.sleep, 0)
            with pytest.raises(AttributeError):
                h.task_id = "mine"
            await h

    asyncio.run(main())


def test_keyword_argument_named_like_an_option_via_partial():
    import functools

    def handler(*, priority):
        return priority

    with HybridQueue(1) as q:
        f = q.submit_blocking(functools.partial(handler, priority="handler's"), priority=5)
        assert f.result(10) == "handler's"


@pytest.mark.races
async def test_class_with_async_call_is_a_sync_handler(make_queue):
    class AsyncCallable:
        async def __call__(self) -> int:
            return 1

    q = await make_queue(1)
    instance = await (await q.submit(AsyncCallable))
    assert isinstance(instance, AsyncCallable)
    assert await (await q.submit(instance)) == 1  # an instance with async __call__ is a coroutine handler


@pytest.mark.hardening
async def test_an_async_generator_function_is_refused_at_submit(make_queue):
    q = await make_queue(1)

    async def agen():  # type: ignore[no-untyped-def]
        yield 1

    with pytest.raises(TypeError, match=r"^submit\(\) got an async generator function"):
        await q.submit(agen)
    assert q.stats().submitted == 0


@pytest.mark.hardening
async def test_a_sync_handler_returning_a_coroutine_or_async_generator_fails_at_once(make_queue):
    q = await make_queue(1, retry=RetryPolicy(max_retries=3, base_delay=30.0))

    async def coro() -> int:
        return 1

    async def agen():  # type: ignore[no-untyped-def]
        yield 1

    for wrong in (lambda: coro(), lambda: agen()):
        h = await q.submit(wrong)
        with pytest.raises(CallError, match="submit the async function itself"):
            await h
    assert q.stats().retries == 0


# -------------------------------------------------------------- task ids


async def test_generated_ids_skip_ids_chosen_by_callers(make_queue):
    q = await make_queue(1, start=False)
    mine = await q.submit(abs, 1, task_id=2)
    also_mine = await q.submit(abs, 1, task_id=3.0)  # equal to the int 3
    generated = [(await q.submit(abs, 1)).task_id for _ in range(3)]
    assert generated == [1, 4, 5]
    assert {mine.task_id, also_mine.task_id}.isdisjoint(generated)


@pytest.mark.hardening
async def test_plain_ids_of_every_allowed_kind_are_accepted(make_queue):
    q = await make_queue(2)
    ids = ["a", 7, 2.5, b"raw", uuid.UUID(int=5), ("tenant", 3, None, ("nested", b"x"))]
    handles = [await q.submit(abs, -1, task_id=task_id) for task_id in ids]
    assert await asyncio.gather(*handles) == [1] * len(ids)
    assert [h.task_id for h in handles] == ids


class CallsBack:
    """An id whose hashing calls back into the queue, as a careless __hash__ might."""

    def __init__(self, queue: HybridQueue) -> None:
        self.queue = queue
        self.hashed = 0

    def __hash__(self) -> int:
        self.hashed += 1
        self.queue.stats()  # takes the queue's lock: a deadlock if it is held
        return 1


@pytest.mark.hardening
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


# ---------------------------------------- submit_many and bounded queues


async def test_submit_many_returns_handles_in_order_and_keeps_priority_order(make_queue):
    q = await make_queue(1, start=False)
    ran = []

    async def coro(tag):
        ran.append(tag)
        return tag

    def add(x, y):
        ran.append(x + y)
        return x + y

    low = await q.submit(coro, "low", priority=-1)
    batch = await q.submit_many(coro, ["a", "b", "c"], priority=5)
    sums = await q.submit_many(add, [1, 2], [10, 20])
    assert len({h.task_id for h in (*batch, *sums, low)}) == 6
    assert [q.status(h.task_id) for h in batch] == [TaskStatus.PENDING] * 3
    await q.start()
    assert await asyncio.gather(*batch) == ["a", "b", "c"]
    assert await asyncio.gather(*sums) == [11, 22]
    await low
    assert ran == ["a", "b", "c", 11, 22, "low"]
    s = q.stats()
    assert (s.submitted, s.completed) == (6, 6)
    assert (await q.get_result(batch[1].task_id)).result == "b"


async def test_submit_many_of_nothing_is_an_empty_list(make_queue):
    q = await make_queue(1)
    assert await q.submit_many(abs, []) == []
    assert q.stats().submitted == 0


async def test_submit_many_leaves_errors_of_the_iterables_alone(make_queue):
    q = await make_queue(1)
    with pytest.raises(ValueError, match=r"^invalid literal for int\(\)"):
        await q.submit_many(abs, (int(s) for s in ["1", "x"]))
    consumed = []
    gen = (consumed.append(i) or i for i in range(3))
    with pytest.raises(TypeError, match=r"^the handler must be callable"):
        await q.submit_many(42, gen)
    assert consumed == []  # refused before the batch was read
    assert q.stats().submitted == 0


async def test_submit_waits_for_room_and_submit_nowait_raises(make_queue):
    q = await make_queue(1, max_queue_size=2, start=False)
    await q.submit(abs, 1)
    await q.submit(abs, 2)
    with pytest.raises(QueueFull):
        q.submit_nowait(abs, 3)
    blocked = asyncio.create_task(q.submit(abs, 3))
    await asyncio.sleep(0.01)
    assert not blocked.done()
    await q.start()
    h = await asyncio.wait_for(blocked, 5)
    assert await h == 3


async def test_submit_many_enters_a_bounded_queue_whole_or_waits(make_queue):
    q = await make_queue(1, max_queue_size=4, start=False)
    await q.submit(abs, -1)
    await q.submit(abs, -2)
    with pytest.raises(QueueFull, match=r"^a batch of 3 tasks does not fit"):
        loop = asyncio.get_running_loop()
        q._sched.add_many([q._handle(loop, None, abs, (i,), None, False, 0, 0, None) for i in range(3)], loop)
    batch = asyncio.create_task(q.submit_many(abs, [-3, -4, -5]))
    for _ in range(5):
        await asyncio.sleep(0)
    # Room for two, not three: none of the batch went in.
    assert not batch.done()
    assert q.stats().submitted == 2
    await q.start()
    handles = await batch
    assert await asyncio.gather(*handles) == [3, 4, 5]
    assert q.stats().completed == 5


def test_submit_from_a_second_loop_on_the_queue_loop_thread_is_refused():
    # The queue's loop is not running; another loop runs on the same thread.
    # Only the loop that is running may be taken for the caller's.
    first = asyncio.new_event_loop()
    q = HybridQueue(1)
    first.run_until_complete(q.start())

    async def from_second_loop():
        with pytest.raises(RuntimeError, match=r"^this HybridQueue is bound to another event loop"):
            await q.submit(asyncio.sleep, 0)
        with pytest.raises(RuntimeError, match=r"^this HybridQueue is bound to another event loop"):
            await q.submit_many(asyncio.sleep, [0])

    try:
        asyncio.run(from_second_loop())
        assert q.stats().submitted == 0
    finally:
        first.run_until_complete(q.shutdown())
        first.close()


# ------------------------------------------------------ stats and errors


@pytest.mark.unit
def test_queue_stats_as_dict_has_every_counter_and_queue_size():
    fields = [f.name for f in dataclasses.fields(QueueStats)]
    values = {name: i + 1 for i, name in enumerate(fields)}  # all distinct
    stats = QueueStats(**values)
    d = stats.as_dict()
    assert d == {**values, "queue_size": values["pending"]}
    assert stats.queue_size == stats.pending
    assert all(type(v) is int for v in d.values())


@pytest.mark.unit
def test_queue_stats_as_dict_is_a_fresh_copy():
    stats = QueueStats(*range(len(dataclasses.fields(QueueStats))))
    d = stats.as_dict()
    d["pending"] = 999
    assert stats.pending != 999
    assert stats.as_dict() is not d


@pytest.mark.unit
def test_queue_stats_is_frozen_and_compares_by_value():
    n = len(dataclasses.fields(QueueStats))
    stats = QueueStats(*range(n))
    assert stats == QueueStats(*range(n))
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.pending = 1  # type: ignore[misc]


def test_stats_identity_holds_in_every_snapshot_under_load():
    with HybridQueue(4, retry=FAST) as q:
        stop = threading.Event()
        bad = []

        def watch():
            while not stop.is_set():
                s = q.stats()
                if s.submitted != s.pending + s.running + s.retrying + s.completed + s.failed + s.cancelled:
                    bad.append(s)

        def sometimes_fails(i):
            if i % 5 == 0:
                raise ValueError(i)
            return i

        watcher = threading.Thread(target=watch)
        watcher.start()
        futures = [q.submit_blocking(sometimes_fails, i, max_retries=1) for i in range(2000)]
        for i in range(0, 2000, 7):
            q.cancel_task(futures[i].task_id)
        concurrent.futures.wait(futures, timeout=30)
        stop.set()
        watcher.join()
        final = q.stats()
    assert not bad
    assert_stats_identity(final)
    assert final.pending == final.running == final.retrying == 0


@pytest.mark.unit
def test_unknown_task_error_str_is_the_plain_message():
    message = "no task with id 'x': it was never submitted"
    error = UnknownTaskError(message)
    assert str(error) == message  # not KeyError's quoted repr
    assert str(UnknownTaskError()) == ""


@pytest.mark.unit
def test_unknown_task_error_is_a_key_error_and_a_queue_error():
    error = UnknownTaskError("no task with id 'x'")
    assert isinstance(error, KeyError)
    assert isinstance(error, QueueError)
    with pytest.raises(KeyError):
        raise error


@pytest.mark.unit
@pytest.mark.parametrize(
    ("exc_type", "builtin"),
    [(QueueShutDown, RuntimeError), (DuplicateTaskError, ValueError), (UnknownTaskError, KeyError)],
    ids=lambda v: v.__name__,
)
def test_each_error_is_a_queue_error_and_its_natural_builtin(exc_type, builtin):
    assert issubclass(exc_type, QueueError)
    assert issubclass(exc_type, builtin)


@pytest.mark.unit
def test_queue_full_is_a_queue_error():
    assert issubclass(QueueFull, QueueError)
