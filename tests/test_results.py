"""Results: each finished task's ``TaskResult`` is kept for ``result_ttl`` seconds, within a count and a byte budget.

- ``get_result`` waits for a task to finish, or times out.
- A finished task leaves every structure of the queue but the result store;
  results expire by their TTL without anyone reading them, and the oldest
  are evicted past ``max_results`` or ``max_result_bytes``.
- ``keep_result=False`` hands the outcome to the handle only.
- Results are released (and finalized outside the queue's lock) once they
  expire; a result whose ``__del__`` raises does not hurt the queue.
- Beneath the queue, ``ResultStore`` is checked against a list model, with
  explicit ``now`` values; sizes are shallow and counted when stored.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import tracemalloc
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

import pytest
from _helpers import HUGE, SAFETY, assert_identity, assert_nothing_lost, deterministic, shut_down
from conftest import wait_until
from hypothesis import given
from hypothesis import strategies as st

from hybrid_queue import HybridQueue, TaskResult, TaskStatus, UnknownTaskError
from hybrid_queue._store import ResultStore, shallow_size
from hybrid_queue.testing import FakeClock


async def test_get_result_waits_then_times_out(make_queue):
    q = await make_queue(1)
    gate = asyncio.Event()

    async def gated():
        await gate.wait()
        return "done"

    h = await q.submit(gated, task_id="job-1")
    with pytest.raises(TimeoutError, match=r"^task 'job-1' did not finish within 0\.01 s$"):
        await q.get_result("job-1", timeout=0.01)
    waiter = asyncio.create_task(q.get_result("job-1"))
    await asyncio.sleep(0)
    gate.set()
    r = await waiter
    assert (r.task_id, r.result, r.success) == ("job-1", "done", True)
    assert h.done()
    assert q._sched._live == {}


async def test_finished_task_leaves_every_structure_but_the_store(make_queue):
    q = await make_queue(2)
    h = await q.submit(abs, -1)
    await h
    sched = q._sched
    assert not sched._live and not len(sched._heap)
    assert q.stats().results_stored == 1
    assert q.forget(h.task_id) is True
    assert q.forget(h.task_id) is False
    with pytest.raises(UnknownTaskError):
        q.status(h.task_id)


async def test_results_expire_by_ttl_without_anyone_reading(make_queue):
    clock = FakeClock()
    q = await make_queue(2, result_ttl=20.0, clock=clock)
    handles = [await q.submit(abs, -i) for i in range(10)]
    await asyncio.gather(*handles)
    assert q.stats().results_stored == 10
    await clock.sleep(19.9)
    assert q.stats().results_stored == 10
    await clock.sleep(0.1)
    assert q.stats().results_stored == 0
    assert q.stats().results_expired == 10
    with pytest.raises(UnknownTaskError, match=r"never submitted, or its result expired"):
        await q.get_result(handles[0].task_id)


async def test_max_results_evicts_oldest(make_queue):
    q = await make_queue(1, max_results=3)
    handles = [await q.submit(abs, -i) for i in range(5)]
    await asyncio.gather(*handles)
    s = q.stats()
    assert (s.results_stored, s.results_evicted) == (3, 2)
    with pytest.raises(UnknownTaskError):
        q.status(handles[0].task_id)
    assert (await q.get_result(handles[4].task_id)).result == 4


@pytest.mark.hardening
async def test_large_results_are_bounded_by_bytes(make_queue):
    q = await make_queue(1, max_result_bytes=1_000_000)
    handles = [await q.submit(bytes, 100_000) for _ in range(30)]
    await asyncio.gather(*handles)
    s = q.stats()
    assert s.results_stored < 10 and s.results_evicted == 30 - s.results_stored


@pytest.mark.hardening
async def test_keep_result_false_hands_the_outcome_to_the_handle_only(make_queue):
    q = await make_queue(1)
    h = await q.submit(abs, -3, keep_result=False)
    assert await h == 3
    assert q.stats().results_stored == 0
    with pytest.raises(UnknownTaskError):
        q.status(h.task_id)
    with pytest.raises(TypeError, match="keep_result must be True or False"):
        await q.submit(abs, 1, keep_result=1)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["coroutine", "sync"])
async def test_failed_handle_is_freed_as_soon_as_it_is_dropped(make_queue, kind):
    # The stored result keeps the error, and the error its traceback's
    # frames (and theirs, through f_back): none of them may keep the handle,
    # which would then sit in a cycle (handle -> error -> frame -> handle).
    q = await make_queue(2)

    async def coro_fail():
        raise ValueError("boom")

    def sync_fail():
        raise ValueError("boom")

    h = await q.submit(coro_fail if kind == "coroutine" else sync_fail, max_retries=0)
    await asyncio.wait([h])
    assert isinstance(h.exception(), ValueError)
    stored = await q.get_result(h.task_id)
    ref = weakref.ref(h)
    gc.disable()
    try:
        del h
        # A pool thread may still be returning from the call that ran it.
        await wait_until(lambda: ref() is None)
    finally:
        gc.enable()
    assert isinstance(stored.error, ValueError)


async def test_traced_memory_returns_to_baseline_after_10000_tasks(make_queue, figures):
    q = await make_queue(8, result_ttl=0.05)

    async def noop(i):
        return i

    async def run_batch():
        handles = [await q.submit(noop, i) for i in range(10_000)]
        # One by one, not gather(): uvloop may keep a spent callback handle
        # whose arguments hold gather's outer future, and with it every child,
        # for a while after the batch; that is the loop's memory, not the queue's.
        for handle in handles:
            await handle
        del handles, handle
        await wait_until(lambda: not q.stats().results_stored, bound=10)

    await run_batch()  # warm every cache and free-list once
    gc.collect()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        await run_batch()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - baseline < 64 * 1024, f"{after - baseline} bytes left after 10,000 tasks"
    figures.add("tracemalloc_bytes_left_after_10000_tasks", after - baseline)


# ------------------------------------------------------ the result store


def done(task_id: str) -> TaskResult[str]:
    return TaskResult(task_id, TaskStatus.COMPLETED, result=f"value of {task_id}")


@pytest.mark.unit
def test_store_keeps_a_result_until_its_ttl_and_not_at_it():
    store = ResultStore(ttl=10.0, max_results=100)
    result = done("a")
    assert store.add(result, now=100.0) == []
    assert store.get("a", now=100.0) is result
    assert store.get("a", now=109.999) is result
    assert store.get("a", now=110.0) is None  # expiry is inclusive
    assert store.get("a", now=1e9) is None


@pytest.mark.unit
def test_store_get_does_not_extend_life():
    store = ResultStore(ttl=10.0, max_results=100)
    store.add(done("a"), now=0.0)
    for now in (1.0, 5.0, 9.0):
        assert store.get("a", now=now) is not None
    assert store.get("a", now=10.0) is None


@pytest.mark.unit
def test_store_get_of_an_unknown_id_is_none():
    store = ResultStore(ttl=10.0, max_results=100)
    assert store.get("never", now=0.0) is None
    assert "never" not in store


@pytest.mark.unit
def test_store_expire_drops_and_returns_only_what_is_due():
    store = ResultStore(ttl=10.0, max_results=100)
    results = [done(f"r{i}") for i in range(4)]
    for result, now in zip(results, [0.0, 1.0, 2.0, 3.0], strict=True):
        store.add(result, now=now)
    assert store.next_expiry() == 10.0
    assert store.expire(now=9.0) == []
    assert store.expire(now=11.0) == results[:2]  # r0 at 10.0, r1 at 11.0 (inclusive)
    assert len(store) == 2
    assert "r0" not in store and "r1" not in store
    assert store.next_expiry() == 12.0
    assert store.expire(now=100.0) == results[2:]
    assert len(store) == 0
    assert store.next_expiry() is None
    assert store.expire(now=200.0) == []


@pytest.mark.unit
def test_store_next_expiry_of_an_empty_store_is_none():
    assert ResultStore(ttl=1.0, max_results=1).next_expiry() is None


@pytest.mark.unit
def test_store_size_bound_evicts_the_oldest():
    store = ResultStore(ttl=1000.0, max_results=3)
    results = [done(f"r{i}") for i in range(5)]
    evicted = [store.add(result, now=float(i)) for i, result in enumerate(results)]
    assert evicted == [[], [], [], [results[0]], [results[1]]]
    assert len(store) == 3
    assert [tid for tid in ("r0", "r1", "r2", "r3", "r4") if tid in store] == ["r2", "r3", "r4"]
    assert store.get("r0", now=5.0) is None
    assert store.get("r4", now=5.0) is not None
    assert store.next_expiry() == 1002.0


@pytest.mark.unit
def test_store_discard():
    store = ResultStore(ttl=10.0, max_results=10)
    a = done("a")
    store.add(a, now=0.0)
    store.add(done("b"), now=1.0)
    assert store.discard("a") is a
    assert store.discard("a") is None
    assert store.discard("never") is None
    assert "a" not in store and len(store) == 1
    assert store.next_expiry() == 11.0


@pytest.mark.unit
def test_store_clear():
    store = ResultStore(ttl=10.0, max_results=10)
    store.add(done("a"), now=0.0)
    store.clear()
    assert len(store) == 0
    assert store.next_expiry() is None


@pytest.mark.unit
def test_store_re_adding_an_expired_id_moves_it_to_the_back():
    # The scheduler lets a task_id be reused once its result has expired
    # (get() says None) even if expire() has not purged it yet; the new
    # result must then expire after the others, not block them.
    store = ResultStore(ttl=10.0, max_results=10)
    store.add(done("a"), now=0.0)
    store.add(done("b"), now=5.0)
    assert store.get("a", now=12.0) is None
    store.add(done("a"), now=12.0)
    assert store.next_expiry() == 15.0  # b's, the earliest
    assert [r.task_id for r in store.expire(now=16.0)] == ["b"]
    assert "b" not in store and "a" in store


@pytest.mark.unit
def test_store_size_bound_evicts_the_oldest_after_an_id_is_reused():
    store = ResultStore(ttl=10.0, max_results=2)
    store.add(done("a"), now=0.0)
    store.add(done("b"), now=1.0)
    store.add(done("a"), now=12.0)  # a's first result expired at 10.0
    assert [r.task_id for r in store.add(done("c"), now=13.0)] == ["b"]
    assert "b" not in store
    assert "a" in store and "c" in store


@pytest.mark.unit
def test_store_discarded_then_re_added_id_expires_by_its_new_time():
    store = ResultStore(ttl=10.0, max_results=10)
    store.add(done("a"), now=0.0)
    store.add(done("b"), now=1.0)
    store.discard("a")
    again = done("a")
    store.add(again, now=5.0)
    assert store.get("a", now=12.0) is again  # the first "a" would have expired at 10.0
    assert [r.task_id for r in store.expire(now=12.0)] == ["b"]
    assert store.next_expiry() == 15.0
    assert store.expire(now=15.0) == [again]


@pytest.mark.unit
def test_store_discards_leave_no_more_slots_than_results():
    # Discarding marks a slot stale instead of searching the deque for it; the
    # stale slots must not pile up when a long TTL keeps them from expiring.
    store = ResultStore(ttl=1e9, max_results=10_000)
    for i in range(5_000):
        store.add(done(f"t{i}"), now=float(i))
        if i % 10:
            store.discard(f"t{i}")
    assert len(store) == 500
    assert len(store._ids) <= 2 * len(store) + 1
    assert [f"t{i}" in store for i in range(0, 5_000, 10)] == [True] * 500


@pytest.mark.unit
def test_store_get_is_exact_when_adds_come_slightly_out_of_order():
    # The scheduler reads the clock before it takes its lock, so two threads
    # finishing together can add in the other order.
    store = ResultStore(ttl=10.0, max_results=10)
    a, b = done("a"), done("b")
    store.add(a, now=0.002)
    store.add(b, now=0.001)
    assert store.get("b", now=10.0015) is None  # b's own time is up
    assert store.get("a", now=10.0015) is a
    assert store.next_expiry() == 10.002
    assert store.expire(now=10.002) == [a, b]


class PickyId:
    """A task id whose ``==`` raises for anything but its own type, as some user classes do."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __hash__(self) -> int:
        return hash(self.name)

    def __eq__(self, other: object) -> bool:
        return self.name == other.name  # type: ignore[attr-defined]


@pytest.mark.unit
def test_store_get_compares_no_ids_but_through_its_dict():
    store = ResultStore(ttl=10.0, max_results=10)
    store.add(TaskResult("other", TaskStatus.COMPLETED), now=0.0)
    picky = TaskResult(PickyId("p"), TaskStatus.COMPLETED)
    store.add(picky, now=5.0)
    # "other" is due and not swept: the lookup must not compare it with the picky id.
    assert store.get(picky.task_id, now=12.0) is picky


@pytest.mark.unit
def test_store_hands_over_the_ids_it_lets_go_of():
    # A forgotten id may have its last reference in a stale slot; its
    # __del__ is user code, so the store hands it to its owner to drop.
    store = ResultStore(ttl=10.0, max_results=10)
    store.add(done("a"), now=0.0)
    store.add(done("b"), now=1.0)
    store.discard("a")
    store.discard("b")  # stale slots outnumber results: compacted
    released = store.released
    assert any(isinstance(part, deque) and list(part) == ["a", "b"] for part in released), released
    assert len(store._ids) == 0


def _store_model_ops() -> st.SearchStrategy[list[tuple[str, Any, float, int]]]:
    # 1, 1.0 and True are one id to a dict, three objects to the store.
    ids = st.sampled_from(["a", "b", "c", 1, 1.0, True])
    step = st.sampled_from([0.0, 0.5, 3.0, 12.0])
    op = st.sampled_from(["add", "discard", "get", "expire", "next_expiry", "clear"])
    # The length of an added result's bytes value.
    length = st.sampled_from([0, 40, 150])
    return st.lists(st.tuples(op, ids, step, length), max_size=80)


@pytest.mark.unit
@deterministic
@given(_store_model_ops(), st.integers(min_value=1, max_value=3), st.sampled_from([None, 100, 300]))
def test_store_matches_a_list_model(ops, max_results, max_bytes):
    # The model: (id, expires_at, result, size) in insertion order, re-adding
    # an id moves it to the back; what the store did before it gave up its
    # OrderedDict of (expires_at, result) entries. The byte bound evicts the
    # oldest while the total is over and another result than the new one is left.
    store = ResultStore(ttl=10.0, max_results=max_results, max_bytes=max_bytes, min_counted=0)
    model: list[tuple[Any, float, TaskResult[Any], int]] = []
    now = 0.0
    for op, task_id, step, length in ops:
        now += step
        if op == "add":
            value = b"x" * length
            result = TaskResult(task_id, TaskStatus.COMPLETED, result=value)
            model = [entry for entry in model if entry[0] != task_id] + [
                (task_id, now + 10.0, result, sys.getsizeof(value))
            ]
            evicted = []
            while len(model) > max_results or (
                max_bytes is not None and sum(entry[3] for entry in model) > max_bytes and len(model) > 1
            ):
                evicted.append(model.pop(0)[2])
            assert store.add(result, now) == evicted
        elif op == "discard":
            found = [entry[2] for entry in model if entry[0] == task_id]
            model = [entry for entry in model if entry[0] != task_id]
            assert store.discard(task_id) is (found[0] if found else None)
        elif op == "get":
            found = [entry[2] for entry in model if entry[0] == task_id and entry[1] > now]
            assert store.get(task_id, now) is (found[0] if found else None)
        elif op == "expire":
            due = [entry[2] for entry in model if entry[1] <= now]
            model = [entry for entry in model if entry[1] > now]
            assert store.expire(now) == due
        elif op == "clear":
            model = []
            store.clear()
        else:
            assert store.next_expiry() == (model[0][1] if model else None)
        # Without a budget nothing is sized, so there is no total to keep.
        assert store.nbytes == (sum(entry[3] for entry in model) if max_bytes is not None else 0)
        assert len(store) == len(model)
        assert all(entry[0] in store for entry in model)
        # Every slot is live or counted stale, and an id's stale slots come before its live one.
        assert store._stale_slots == sum(store._stale.values())
        assert len(store._ids) == len(store._times) == len(store) + store._stale_slots
        assert list(store._times) == sorted(store._times)
        seen: dict[Any, int] = {}
        for slot_id in store._ids:
            seen[slot_id] = seen.get(slot_id, 0) + 1
        assert seen == {tid: store._stale.get(tid, 0) + (tid in store) for tid in seen}
        store.released.clear()


def payload(n: int) -> bytes:
    """A result whose shallow size is exactly ``n`` bytes."""
    data = b"x" * (n - sys.getsizeof(b""))
    assert sys.getsizeof(data) == n
    return data


def sized(task_id: Any, value: object) -> TaskResult[object]:
    return TaskResult(task_id, TaskStatus.COMPLETED, result=value)


@pytest.mark.memory
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


@pytest.mark.memory
def test_store_byte_bound_at_exactly_the_budget_evicts_nothing():
    store = ResultStore(ttl=100.0, max_results=100, max_bytes=600, min_counted=0)
    assert store.add(sized("a", payload(300)), now=0.0) == []
    assert store.add(sized("b", payload(300)), now=0.0) == []
    assert store.nbytes == 600 and len(store) == 2


@pytest.mark.memory
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


@pytest.mark.memory
def test_store_count_and_byte_bounds_both_hold():
    store = ResultStore(ttl=100.0, max_results=2, max_bytes=10_000, min_counted=0)
    a, b, c = (sized(tid, payload(100)) for tid in "abc")
    store.add(a, now=0.0)
    store.add(b, now=0.0)
    assert store.add(c, now=0.0) == [a]  # the count bound, well under the bytes
    assert store.nbytes == 200


@pytest.mark.memory
def test_store_without_a_byte_bound_counts_nothing_and_evicts_by_count_only():
    store = ResultStore(ttl=100.0, max_results=2)
    assert store.max_bytes is None
    evicted = [store.add(sized(i, payload(1_000_000)), now=0.0) for i in range(3)]
    assert [[r.task_id for r in e] for e in evicted] == [[], [], [0]]
    assert store.nbytes == 0  # no budget, no sizing: nothing to keep a total for


@pytest.mark.memory
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


@pytest.mark.memory
def test_store_total_survives_compaction_of_stale_slots():
    store = ResultStore(ttl=1e9, max_results=10_000, max_bytes=10**9, min_counted=0)
    for i in range(1_000):
        store.add(sized(i, payload(50)), now=0.0)
        if i % 4:
            store.discard(i)  # compacts again and again
    assert len(store) == 250
    assert store.nbytes == 250 * 50


@pytest.mark.memory
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


@pytest.mark.memory
def test_store_re_adding_an_id_replaces_its_size():
    store = ResultStore(ttl=10.0, max_results=10, max_bytes=10_000, min_counted=0)
    store.add(sized("a", payload(500)), now=0.0)
    store.add(sized("a", payload(200)), now=12.0)  # the first expired, not yet swept
    assert store.nbytes == 200
    store.expire(now=100.0)
    assert store.nbytes == 0


@pytest.mark.memory
def test_store_size_is_shallow():
    items = [payload(10_000) for _ in range(10)]
    assert shallow_size(items) == items.__sizeof__() < 1_000  # the list's pointers, not the items
    assert shallow_size(payload(10_000)) == sys.getsizeof(payload(10_000)) == 10_000
    assert shallow_size(None) == sys.getsizeof(None)
    # sys.getsizeof adds the garbage collector's header on containers; the estimate does not.
    assert 0 <= sys.getsizeof(items) - shallow_size(items) <= 32


@pytest.mark.memory
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


@pytest.mark.memory
def test_store_size_of_a_subclass_without_its_own_sizeof_is_its_base_size():
    class Payload(bytes):
        pass

    value = Payload(b"x" * 1_000)
    assert shallow_size(value) == bytes.__sizeof__(value) >= 1_000


# ------------------------------------------------------------ edge cases


@pytest.mark.faults
async def test_unpicklable_results_with_the_default_thread_pool(make_queue):
    """Handlers (both kinds) returning a lambda or a lock, on the default thread pool.

    Nothing is pickled in-process: the handle's value is the very object the
    handler returned.
    """
    q = await make_queue(2)
    lock = threading.Lock()

    def lam():
        return 1

    def sync_lock():
        return lock

    def sync_lambda():
        return lam

    async def coro_lock():
        return lock

    async def coro_lambda():
        return lam

    handles = [await q.submit(fn) for fn in (sync_lock, sync_lambda, coro_lock, coro_lambda)]
    async with asyncio.timeout(5):
        assert await asyncio.gather(*handles) == [lock, lam, lock, lam]
    assert all(r is o for r, o in zip([h.result() for h in handles], [lock, lam, lock, lam], strict=True))
    assert_nothing_lost(q, handles)
    await shut_down(q)


class _Holder:
    """Holds a huge value; a weakref to it tells when the value was released."""

    def __init__(self, size: int) -> None:
        self.data = bytes(size)


@pytest.mark.faults
@pytest.mark.parametrize("kind", ["sync", "coroutine"])
async def test_huge_result_released_once_its_result_expires(make_queue, kind):
    """A handler returning 50 MB (inside an object we hold a weakref to), on the default thread pool.

    It just works, and once the caller dropped the handle and the result
    expired (``result_ttl``), the queue keeps no reference to it: README,
    point 7. The test runs one more task of the other kind meanwhile, so that
    only the queue's idle state can hold the value.
    """
    q = await make_queue(1, result_ttl=0.05)
    refs: list[weakref.ref[_Holder]] = []

    def sync_huge():
        holder = _Holder(HUGE)
        refs.append(weakref.ref(holder))
        return holder

    async def coro_huge():
        return sync_huge()

    h = await q.submit(sync_huge if kind == "sync" else coro_huge)
    async with asyncio.timeout(5):
        assert len((await h).data) == HUGE
    tid = h.task_id
    del h
    other_kind = abs if kind == "coroutine" else asyncio.sleep
    async with asyncio.timeout(5):
        await (await q.submit(other_kind, 0))
    await wait_until(lambda: q.stats().results_stored == 0)
    with pytest.raises(KeyError):
        q.status(tid)
    gc.collect()
    assert refs[0]() is None, "the 50 MB value is still referenced after its result expired"
    assert_identity(q)
    await shut_down(q)


class _RaisesOnDel:
    def __init__(self, tag: str) -> None:
        self.tag = tag

    def __del__(self) -> None:
        raise RuntimeError(f"raised in __del__ of {self.tag}")


async def _flush(q: HybridQueue) -> None:
    """Run one sync task to its end on a one-worker queue, then yield once.

    Afterwards neither the pool thread (its earlier chain has returned) nor
    the step that awaited a handle (it has yielded) holds a finished task:
    the queue's own structures are the only holders left.
    """
    async with asyncio.timeout(5):
        await (await q.submit(abs, -1))
    await asyncio.sleep(0)


@pytest.mark.faults
async def test_result_raising_in_del_does_not_crash_the_queue(make_queue, monkeypatch):
    """A handler whose result object raises inside ``__del__``.

    The exception cannot propagate from a finalizer: Python reports it to
    ``sys.unraisablehook`` ("Exception ignored in ..."), once per object,
    wherever the queue drops the result (here: by ``forget``, and by the
    expiry timer on the loop). The queue is unharmed: the expiry timer keeps
    running and later tasks run.
    """
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)

    def messages() -> set[str]:
        assert all(u.exc_type is RuntimeError for u in unraisable), unraisable
        return {str(u.exc_value) for u in unraisable}

    q = await make_queue(1, result_ttl=0.1)
    expiring = await q.submit(_RaisesOnDel, "expiring")
    forgotten = await q.submit(_RaisesOnDel, "forgotten")
    async with asyncio.timeout(5):
        await expiring
        await forgotten
    forgotten_id = forgotten.task_id
    del expiring, forgotten
    await _flush(q)
    assert q.forget(forgotten_id)
    assert "raised in __del__ of forgotten" in messages()
    await wait_until(lambda: q.stats().results_stored == 0)
    gc.collect()
    assert messages() == {"raised in __del__ of forgotten", "raised in __del__ of expiring"}
    # Still alive: more tasks run and their results expire too.
    later = [await q.submit(_RaisesOnDel, f"later {i}") for i in range(3)] + [await q.submit(abs, -2)]
    async with asyncio.timeout(5):
        await asyncio.wait(later)
    assert later[-1].result() == 2
    del later
    await wait_until(lambda: q.stats().results_stored == 0)
    gc.collect()
    assert len(unraisable) == 5
    assert {f"raised in __del__ of later {i}" for i in range(3)} <= messages()
    s = q.stats()
    assert (s.completed, s.results_expired) == (7, 6)
    assert_identity(q)
    await shut_down(q)


class _ProbesQueueOnDel:
    """On finalization, calls the queue (``probe``) from another thread, as a finalizer might."""

    def __init__(self, probe: Callable[[], object], record: list[tuple[threading.Thread, bool]]) -> None:
        self.probe = probe
        self.record = record

    def __del__(self) -> None:
        # From a helper thread, so that a finalizer run under the queue's
        # lock shows up as a blocked call instead of deadlocking the test.
        t = threading.Thread(target=self.probe, name="finalizer-probe")
        t.start()
        t.join(1.0)
        self.record.append((t, not t.is_alive()))


@pytest.mark.faults
@pytest.mark.parametrize("released_by", ["expiry", "forget", "eviction", "handler_arguments"])
async def test_objects_are_finalized_outside_the_queue_lock(make_queue, released_by):
    """A result or argument whose ``__del__`` uses the queue (here ``q.stats()``).

    The queue runs no user code under its lock (STYLE, section 2), and a
    finalizer is user code: when the queue lets go of a result (expiry,
    ``forget``, eviction by ``max_results``) or of a handler's arguments
    (when the task ends), the last reference must be dropped after the lock
    is released. Otherwise such a ``__del__`` that calls the queue on the
    same thread deadlocks it for good.
    """
    record: list[tuple[threading.Thread, bool]] = []
    q = await make_queue(
        1, result_ttl=0.2 if released_by == "expiry" else 300.0, max_results=1 if released_by == "eviction" else 10
    )

    def returns_probe():
        return _ProbesQueueOnDel(q.stats, record)

    gate = threading.Event()

    def takes_argument(arg):
        gate.wait(SAFETY)  # until the test holds no reference to the argument any more

    try:
        if released_by == "handler_arguments":
            h = await q.submit(takes_argument, _ProbesQueueOnDel(q.stats, record))
            await asyncio.sleep(0)
            gate.set()
            async with asyncio.timeout(5):
                await h
        else:
            h = await q.submit(returns_probe)
            async with asyncio.timeout(5):
                await h
            tid = h.task_id
            del h
            await _flush(q)  # with max_results=1, this evicts the result
            if released_by == "forget":
                assert q.forget(tid)
        await wait_until(lambda: bool(record))
        ((thread, returned),) = record
        assert returned, f"q.stats() blocked inside a finalizer run by the queue ({released_by}): the lock was held"
    finally:
        gate.set()
        for thread, _ in record:
            thread.join(SAFETY)
    assert_identity(q)
    await shut_down(q)
