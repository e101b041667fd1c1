"""Synchronous unit tests of the pure pieces: the heap, the result store, the
retry policy, the stats snapshot and the exception hierarchy.

No event loop and no threads here; time is passed in as explicit ``now`` values.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections import deque
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hybrid_queue._retry as retry_module
from hybrid_queue import (
    DuplicateTaskError,
    QueueError,
    QueueFull,
    QueueShutDown,
    QueueStats,
    RetryPolicy,
    TaskResult,
    TaskStatus,
    UnknownTaskError,
)
from hybrid_queue import _heap as heap_module
from hybrid_queue._heap import PriorityHeap
from hybrid_queue._store import ResultStore

# Same examples on every run: a failure reproduces, and CI never flakes on a new draw.
deterministic = settings(derandomize=True, database=None, deadline=None)


# ---------------------------------------------------------------- PriorityHeap


def pop_all(heap: PriorityHeap[str]) -> list[str]:
    out = []
    while len(heap):
        out.append(heap.pop())
    return out


def test_heap_pops_higher_priority_first():
    h: PriorityHeap[str] = PriorityHeap()
    for priority, item in [(1, "low"), (10, "high"), (-5, "negative"), (5, "mid")]:
        h.push(priority, item)
    assert pop_all(h) == ["high", "mid", "low", "negative"]


def test_heap_is_fifo_within_a_priority():
    h: PriorityHeap[str] = PriorityHeap()
    for i in range(20):
        h.push(i % 2, f"p{i % 2}-{i}")
    assert pop_all(h) == [f"p1-{i}" for i in range(1, 20, 2)] + [f"p0-{i}" for i in range(0, 20, 2)]


def test_heap_never_compares_items():
    class Incomparable:
        def __lt__(self, other: object) -> bool:
            raise AssertionError("items must not be compared")

    h: PriorityHeap[Incomparable] = PriorityHeap()
    items = [Incomparable() for _ in range(5)]
    for item in items:
        h.push(3, item)
    assert [h.pop() for _ in items] == items


def test_heap_remove_is_lazy_and_skipped_on_pop():
    h: PriorityHeap[str] = PriorityHeap()
    tickets = {item: h.push(priority, item) for priority, item in [(9, "top"), (5, "a"), (5, "b"), (1, "c")]}
    h.remove(tickets["top"])  # the head
    h.remove(tickets["b"])  # the middle
    assert len(h) == 2
    assert h.pop() == "a"
    assert len(h) == 1
    assert h.pop() == "c"
    assert len(h) == 0


def test_heap_pop_on_empty_raises_index_error():
    h: PriorityHeap[str] = PriorityHeap()
    with pytest.raises(IndexError):
        h.pop()


def test_heap_pop_when_only_removed_entries_remain_raises_index_error():
    h: PriorityHeap[str] = PriorityHeap()
    h.remove(h.push(1, "x"))
    h.remove(h.push(2, "y"))
    assert len(h) == 0
    with pytest.raises(IndexError):
        h.pop()
    assert len(h) == 0
    h.push(0, "z")  # still usable afterwards
    assert h.pop() == "z"


def test_heap_compaction_keeps_order_and_len_and_bounds_memory():
    h: PriorityHeap[str] = PriorityHeap()
    total = 4 * heap_module._COMPACT_FLOOR
    tickets = [h.push(i % 3, f"{i % 3}:{i}") for i in range(total)]
    keep = set(range(0, total, 4))
    for i, ticket in enumerate(tickets):
        if i not in keep:
            h.remove(ticket)
    assert len(h) == len(keep)
    # Removed entries outnumbered live ones past the floor: the list was rebuilt.
    assert len(h._keys) < total
    expected = sorted(keep, key=lambda i: (-(i % 3), i))
    assert pop_all(h) == [f"{i % 3}:{i}" for i in expected]


def test_heap_gives_back_its_table_once_empty():
    h: PriorityHeap[int] = PriorityHeap()
    empty_size = sys.getsizeof(h._items)
    for i in range(10_000):
        h.push(i % 5, i)
    assert sys.getsizeof(h._items) > empty_size
    while h.take() is not None:
        pass
    assert sys.getsizeof(h._items) == empty_size
    assert h._keys == []


def test_heap_gives_back_its_table_when_the_last_entry_is_removed():
    # A cancelled burst: no pop comes to sweep the removed keys.
    h: PriorityHeap[int] = PriorityHeap()
    empty_size = sys.getsizeof(h._items)
    tickets = [h.push(i % 5, i) for i in range(10_000)]
    for ticket in tickets:
        h.remove(ticket)
    assert len(h) == 0
    assert sys.getsizeof(h._items) == empty_size
    assert h._keys == []
    assert h.take() is None
    h.push(0, 1)  # still usable afterwards
    assert h.pop() == 1


def test_heap_compaction_shrinks_the_table_too():
    h: PriorityHeap[int] = PriorityHeap()
    tickets = [h.push(0, i) for i in range(10_000)]
    peak = sys.getsizeof(h._items)
    for ticket in tickets[:-10]:
        h.remove(ticket)
    assert len(h) == 10
    assert sys.getsizeof(h._items) < peak / 10
    assert len(h._keys) <= 2 * (10 + heap_module._COMPACT_FLOOR)
    assert [h.pop() for _ in range(10)] == list(range(9_990, 10_000))
    assert len(h) == 0


def test_heap_drain_returns_live_items_in_order_and_empties():
    h: PriorityHeap[str] = PriorityHeap()
    h.push(1, "a")
    gone = h.push(7, "gone")
    h.push(7, "b")
    h.push(1, "c")
    h.remove(gone)
    assert h.drain() == ["b", "a", "c"]
    assert len(h) == 0
    assert h.drain() == []
    with pytest.raises(IndexError):
        h.pop()


heap_ops = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(-3, 3)),
        st.tuples(st.just("pop"), st.just(0)),
        # Index into the live entries, taken modulo their number.
        st.tuples(st.just("remove"), st.integers(0, 10_000)),
    ),
    max_size=300,
)


@pytest.mark.parametrize("compact_floor", [heap_module._COMPACT_FLOOR, 0], ids=["default-floor", "compact-often"])
@deterministic
@given(ops=heap_ops)
def test_heap_matches_a_sorted_list_model(compact_floor, ops):
    # The model: live (priority, seq, ticket) triples; the next pop is the
    # highest priority, then the lowest sequence number.
    with mock.patch.object(heap_module, "_COMPACT_FLOOR", compact_floor):
        h: PriorityHeap[int] = PriorityHeap()
        model: list[tuple[int, int, int]] = []
        for seq, (op, arg) in enumerate(ops):
            if op == "push":
                model.append((arg, seq, h.push(arg, seq)))
            elif op == "pop":
                if not model:
                    with pytest.raises(IndexError):
                        h.pop()
                else:
                    best = min(model, key=lambda e: (-e[0], e[1]))
                    model.remove(best)
                    assert h.pop() == best[1]
            elif model:
                victim = model.pop(arg % len(model))
                h.remove(victim[2])
            assert len(h) == len(model)
        assert h.drain() == [seq for _, seq, _ in sorted(model, key=lambda e: (-e[0], e[1]))]
        assert len(h) == 0


# ----------------------------------------------------------------- ResultStore


def done(task_id: str) -> TaskResult[str]:
    return TaskResult(task_id, TaskStatus.COMPLETED, result=f"value of {task_id}")


def test_store_keeps_a_result_until_its_ttl_and_not_at_it():
    store = ResultStore(ttl=10.0, max_results=100)
    result = done("a")
    assert store.add(result, now=100.0) == []
    assert store.get("a", now=100.0) is result
    assert store.get("a", now=109.999) is result
    assert store.get("a", now=110.0) is None  # expiry is inclusive
    assert store.get("a", now=1e9) is None


def test_store_get_does_not_extend_life():
    store = ResultStore(ttl=10.0, max_results=100)
    store.add(done("a"), now=0.0)
    for now in (1.0, 5.0, 9.0):
        assert store.get("a", now=now) is not None
    assert store.get("a", now=10.0) is None


def test_store_get_of_an_unknown_id_is_none():
    store = ResultStore(ttl=10.0, max_results=100)
    assert store.get("never", now=0.0) is None
    assert "never" not in store


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


def test_store_next_expiry_of_an_empty_store_is_none():
    assert ResultStore(ttl=1.0, max_results=1).next_expiry() is None


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


def test_store_clear():
    store = ResultStore(ttl=10.0, max_results=10)
    store.add(done("a"), now=0.0)
    store.clear()
    assert len(store) == 0
    assert store.next_expiry() is None


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


def test_store_size_bound_evicts_the_oldest_after_an_id_is_reused():
    store = ResultStore(ttl=10.0, max_results=2)
    store.add(done("a"), now=0.0)
    store.add(done("b"), now=1.0)
    store.add(done("a"), now=12.0)  # a's first result expired at 10.0
    assert [r.task_id for r in store.add(done("c"), now=13.0)] == ["b"]
    assert "b" not in store
    assert "a" in store and "c" in store


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


def test_store_get_compares_no_ids_but_through_its_dict():
    store = ResultStore(ttl=10.0, max_results=10)
    store.add(TaskResult("other", TaskStatus.COMPLETED), now=0.0)
    picky = TaskResult(PickyId("p"), TaskStatus.COMPLETED)
    store.add(picky, now=5.0)
    # "other" is due and not swept: the lookup must not compare it with the picky id.
    assert store.get(picky.task_id, now=12.0) is picky


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


# ----------------------------------------------------------------- RetryPolicy


def test_retry_policy_defaults_are_valid():
    policy = RetryPolicy()
    assert policy.max_retries == 3
    assert policy.retry_on == (Exception,)


def test_retry_policy_is_frozen():
    policy = RetryPolicy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.max_retries = 5  # type: ignore[misc]


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


def test_retry_policy_retry_on_single_class_is_normalised_and_used():
    policy = RetryPolicy(retry_on=OSError)
    assert policy.retry_on == (OSError,)
    assert policy.is_retryable(ConnectionError())
    assert not policy.is_retryable(ValueError())


@pytest.mark.parametrize(
    ("base_delay", "max_delay"),
    [(0.1, 30.0), (0.001, 0.004), (1.0, 1000.0), (0.0, 5.0), (0.3, 0.3), (7.0, 2.0)],
    ids=lambda v: repr(v),
)
def test_retry_policy_get_delay_is_capped_doubling_exactly(base_delay, max_delay):
    policy = RetryPolicy(base_delay=base_delay, max_delay=max_delay)
    for n in range(11):
        assert policy.get_delay(n) == min(base_delay * 2**n, max_delay), n


@pytest.mark.parametrize("n", [11, 64, 1000, 1023, 1024, 1075, 10**6, 2**64, 10**100])
def test_retry_policy_get_delay_huge_retry_count_is_max_delay_without_overflow(n):
    policy = RetryPolicy(base_delay=0.1, max_delay=30.0)
    assert policy.get_delay(n) == 30.0
    assert RetryPolicy(base_delay=1e300, max_delay=30.0).get_delay(n) == 30.0
    assert RetryPolicy(base_delay=0.0, max_delay=30.0).get_delay(n) == 0.0


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


@deterministic
@given(base_delay=delays, max_delay=delays, n=st.integers(min_value=0, max_value=1000))
def test_retry_policy_get_delay_without_jitter_matches_the_formula(base_delay, max_delay, n):
    policy = RetryPolicy(base_delay=base_delay, max_delay=max_delay)
    assert policy.get_delay(n) == capped_doubling(base_delay, max_delay, n)


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


# ------------------------------------------------------------------ QueueStats


def test_queue_stats_as_dict_has_every_counter_and_queue_size():
    fields = [f.name for f in dataclasses.fields(QueueStats)]
    values = {name: i + 1 for i, name in enumerate(fields)}  # all distinct
    stats = QueueStats(**values)
    d = stats.as_dict()
    assert d == {**values, "queue_size": values["pending"]}
    assert stats.queue_size == stats.pending
    assert all(type(v) is int for v in d.values())


def test_queue_stats_as_dict_is_a_fresh_copy():
    stats = QueueStats(*range(len(dataclasses.fields(QueueStats))))
    d = stats.as_dict()
    d["pending"] = 999
    assert stats.pending != 999
    assert stats.as_dict() is not d


def test_queue_stats_is_frozen_and_compares_by_value():
    n = len(dataclasses.fields(QueueStats))
    stats = QueueStats(*range(n))
    assert stats == QueueStats(*range(n))
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.pending = 1  # type: ignore[misc]


# ------------------------------------------------------------------ exceptions


def test_unknown_task_error_str_is_the_plain_message():
    message = "no task with id 'x': it was never submitted"
    error = UnknownTaskError(message)
    assert str(error) == message  # not KeyError's quoted repr
    assert str(UnknownTaskError()) == ""


def test_unknown_task_error_is_a_key_error_and_a_queue_error():
    error = UnknownTaskError("no task with id 'x'")
    assert isinstance(error, KeyError)
    assert isinstance(error, QueueError)
    with pytest.raises(KeyError):
        raise error


@pytest.mark.parametrize(
    ("exc_type", "builtin"),
    [(QueueShutDown, RuntimeError), (DuplicateTaskError, ValueError), (UnknownTaskError, KeyError)],
    ids=lambda v: v.__name__,
)
def test_each_error_is_a_queue_error_and_its_natural_builtin(exc_type, builtin):
    assert issubclass(exc_type, QueueError)
    assert issubclass(exc_type, builtin)


def test_queue_full_is_a_queue_error():
    assert issubclass(QueueFull, QueueError)
