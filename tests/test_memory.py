"""Memory given back: a cancelled burst leaves nothing behind, and the result store's byte budget.

The queue test measures with tracemalloc through the public API only; the
store tests call the ResultStore directly, with explicit ``now`` values.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import tracemalloc
from typing import Any

import pytest
from conftest import wait_until

from hybrid_queue import TaskResult, TaskStatus
from hybrid_queue._store import ResultStore, shallow_size
from hybrid_queue.testing import FakeClock

KIB = 1024
BURST = 200_000
TTL = 60.0


async def _noop(i: int) -> int:
    return i


async def _cancelled_burst_leftover(make_queue: Any, *, holder_finishes: bool) -> int:
    """Bytes still traced after BURST pending tasks are cancelled and their results expire.

    The one worker is held by a handler that waits for the test, so none of
    the burst is ever dispatched: no pop sweeps the heap. With
    ``holder_finishes`` the handler returns once the burst is cancelled, and
    finds the heap empty; else it is still running when memory is measured.
    A small burst first warms caches and free-lists; it is too small to grow
    a table much.
    """
    clock = FakeClock()
    q = await make_queue(1, result_ttl=TTL, max_results=BURST, clock=clock)

    async def burst(n: int) -> int:
        started, release = asyncio.Event(), asyncio.Event()

        async def hold() -> None:
            started.set()
            await release.wait()

        holder = await q.submit(hold)
        await started.wait()
        ids = [handle.task_id for handle in await q.submit_many(_noop, range(n))]
        assert q.stats().pending == n
        for task_id in ids:
            assert q.cancel_task(task_id)
        del ids
        if holder_finishes:
            release.set()
            await holder
            await clock.sleep(TTL + 1)
        else:
            # sleep() would wait for the busy worker: fire the expiry timer
            # (armed on the loop, behind the cancelling code) by hand.
            await wait_until(lambda: clock.next_deadline() is not None)
            clock.advance(TTL + 1)
        assert q.stats().pending == 0
        assert q.stats().results_stored == 0
        gc.collect()
        leftover = tracemalloc.get_traced_memory()[0]
        release.set()
        await holder
        await clock.sleep(TTL + 1)
        return leftover

    tracemalloc.start()
    try:
        await burst(1_000)
        gc.collect()
        baseline = tracemalloc.get_traced_memory()[0]
        after = await burst(BURST)
    finally:
        tracemalloc.stop()
    stats = q.stats()
    assert (stats.cancelled, stats.completed, stats.results_stored) == (BURST + 1_000, 2, 0)
    return after - baseline


@pytest.mark.timeout(60)
async def test_cancelled_burst_of_pending_tasks_gives_its_memory_back_with_none_dispatched(make_queue):
    leftover = await _cancelled_burst_leftover(make_queue, holder_finishes=True)
    assert abs(leftover) < 64 * KIB, f"{leftover} bytes left after {BURST} pending tasks were cancelled"


@pytest.mark.asyncio(loop_factories=["asyncio"])
@pytest.mark.timeout(60)
async def test_cancelled_burst_of_pending_tasks_gives_its_memory_back_while_a_task_runs(make_queue):
    leftover = await _cancelled_burst_leftover(make_queue, holder_finishes=False)
    assert abs(leftover) < 64 * KIB, f"{leftover} bytes left after {BURST} pending tasks were cancelled"


# ------------------------------------------------------------ byte budget


def sized(task_id: Any, value: object) -> TaskResult[object]:
    return TaskResult(task_id, TaskStatus.COMPLETED, result=value)


def payload(n: int) -> bytes:
    """A result whose shallow size is exactly ``n`` bytes."""
    data = b"x" * (n - sys.getsizeof(b""))
    assert sys.getsizeof(data) == n
    return data


def test_store_byte_bound_evicts_the_oldest_until_the_new_result_fits():
    store = ResultStore(ttl=100.0, max_results=100, max_bytes=1_000, min_counted=0)
    results = [sized(f"r{i}", payload(300)) for i in range(5)]
    evicted = [store.add(result, now=float(i)) for i, result in enumerate(results)]
    assert evicted == [[], [], [], [results[0]], [results[1]]]
    assert [tid for tid in ("r0", "r1", "r2", "r3", "r4") if tid in store] == ["r2", "r3", "r4"]
    assert store.nbytes == 900
    # One larger result evicts as many of the oldest as it needs, and no more.
    big = sized("big", payload(650))
    assert store.add(big, now=5.0) == [results[2], results[3]]
    assert store.nbytes == 950
    assert store.next_expiry() == 104.0  # r4's, now the oldest


def test_store_byte_bound_at_exactly_the_budget_evicts_nothing():
    store = ResultStore(ttl=100.0, max_results=100, max_bytes=600, min_counted=0)
    assert store.add(sized("a", payload(300)), now=0.0) == []
    assert store.add(sized("b", payload(300)), now=0.0) == []
    assert store.nbytes == 600 and len(store) == 2


def test_store_result_larger_than_the_whole_budget_is_stored_alone():
    store = ResultStore(ttl=100.0, max_results=100, max_bytes=1_000, min_counted=0)
    older = [sized(f"r{i}", payload(200)) for i in range(3)]
    for result in older:
        store.add(result, now=0.0)
    huge = sized("huge", payload(5_000))
    assert store.add(huge, now=1.0) == older
    assert store.get("huge", now=1.0) is huge
    assert len(store) == 1 and store.nbytes == 5_000
    # The next result, however small, takes the total over: the huge one goes.
    small = sized("small", payload(100))
    assert store.add(small, now=2.0) == [huge]
    assert store.nbytes == 100


def test_store_count_and_byte_bounds_both_hold():
    store = ResultStore(ttl=100.0, max_results=2, max_bytes=10_000, min_counted=0)
    a, b, c = (sized(tid, payload(100)) for tid in "abc")
    store.add(a, now=0.0)
    store.add(b, now=0.0)
    assert store.add(c, now=0.0) == [a]  # the count bound, well under the bytes
    assert store.nbytes == 200


def test_store_without_a_byte_bound_counts_nothing_and_evicts_by_count_only():
    store = ResultStore(ttl=100.0, max_results=2)
    assert store.max_bytes is None
    evicted = [store.add(sized(i, payload(1_000_000)), now=0.0) for i in range(3)]
    assert [[r.task_id for r in e] for e in evicted] == [[], [], [0]]
    assert store.nbytes == 0  # no budget, no sizing: nothing to keep a total for


def test_store_total_follows_expire_discard_eviction_and_clear():
    store = ResultStore(ttl=10.0, max_results=4, max_bytes=10_000, min_counted=0)
    for i in range(6):  # two evicted by the count bound
        store.add(sized(f"r{i}", payload(100 + i)), now=float(i))
    assert store.nbytes == sum(100 + i for i in range(2, 6))
    assert store.discard("r3") is not None
    assert store.discard("r3") is None  # twice: subtracted once
    assert store.nbytes == 102 + 104 + 105
    assert [r.task_id for r in store.expire(now=14.0)] == ["r2", "r4"]
    assert store.nbytes == 105
    store.clear()
    assert store.nbytes == 0
    store.add(sized("again", payload(64)), now=20.0)
    assert store.nbytes == 64
    assert store.expire(now=1e9) != []
    assert store.nbytes == 0 and len(store) == 0


def test_store_total_survives_compaction_of_stale_slots():
    store = ResultStore(ttl=1e9, max_results=10_000, max_bytes=10**9, min_counted=0)
    for i in range(1_000):
        store.add(sized(i, payload(50)), now=0.0)
        if i % 4:
            store.discard(i)  # compacts again and again
    assert len(store) == 250
    assert store.nbytes == 250 * 50


def test_store_counts_a_result_at_its_size_when_stored():
    # A mutable result may grow after it is stored; dropping it subtracts
    # what was added, so the total never drifts.
    store = ResultStore(ttl=10.0, max_results=10, max_bytes=10**6, min_counted=0)
    grows: list[int] = []
    store.add(sized("a", grows), now=0.0)
    stored_size = store.nbytes
    assert stored_size == [].__sizeof__()
    grows.extend(range(1_000))
    assert store.nbytes == stored_size
    store.discard("a")
    assert store.nbytes == 0


def test_store_re_adding_an_id_replaces_its_size():
    store = ResultStore(ttl=10.0, max_results=10, max_bytes=10_000, min_counted=0)
    store.add(sized("a", payload(500)), now=0.0)
    store.add(sized("a", payload(200)), now=12.0)  # the first expired, not yet swept
    assert store.nbytes == 200
    store.expire(now=100.0)
    assert store.nbytes == 0


def test_store_size_is_shallow():
    items = [payload(10_000) for _ in range(10)]
    assert shallow_size(items) == items.__sizeof__() < 1_000  # the list's pointers, not the items
    assert shallow_size(payload(10_000)) == sys.getsizeof(payload(10_000)) == 10_000
    assert shallow_size(None) == sys.getsizeof(None)
    # sys.getsizeof adds the garbage collector's header on containers; the estimate does not.
    assert 0 <= sys.getsizeof(items) - shallow_size(items) <= 32


def test_store_size_calls_no_sizeof_written_in_python():
    # The store runs under its owner's lock, where user code must not run.
    class Sizer:
        def __sizeof__(self) -> int:
            raise AssertionError("user __sizeof__ called")

    class Bytes(bytes):
        def __sizeof__(self) -> int:
            raise AssertionError("user __sizeof__ called")

    assert shallow_size(Sizer()) == object.__sizeof__(Sizer())
    assert shallow_size(Bytes(b"x" * 100)) == object.__sizeof__(Bytes(b"x" * 100))
    store = ResultStore(ttl=10.0, max_results=10, max_bytes=100, min_counted=0)
    assert store.add(sized("a", Sizer()), now=0.0) == []
    assert store.nbytes == object.__sizeof__(Sizer())


def test_store_size_of_a_subclass_without_its_own_sizeof_is_its_base_size():
    class Payload(bytes):
        pass

    value = Payload(b"x" * 1_000)
    assert shallow_size(value) == bytes.__sizeof__(value) >= 1_000
