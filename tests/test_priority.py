"""Priority: the higher priority runs first, and tasks of one priority run in the order they were submitted.

- One order for coroutine and sync handlers alike.
- A task that fails and is retried goes behind the tasks of its priority
  that were waiting before it came back.
- Beneath the queue, ``PriorityHeap`` keeps that order without ever comparing
  the items it holds; removal is lazy, and the heap compacts and gives its
  memory back once removed entries dominate.
"""

from __future__ import annotations

import asyncio
import sys
from unittest import mock

import pytest
from _helpers import deterministic
from hypothesis import given
from hypothesis import strategies as st

from hybrid_queue import RetryPolicy
from hybrid_queue import _heap as heap_module
from hybrid_queue._heap import PriorityHeap


@pytest.mark.parametrize("kind", ["coroutine", "sync"])
async def test_higher_priority_first_fifo_within_priority(make_queue, kind):
    q = await make_queue(1, start=False)
    ran = []

    async def coro_handler(tag):
        ran.append(tag)

    def sync_handler(tag):
        ran.append(tag)

    handler = coro_handler if kind == "coroutine" else sync_handler
    priorities = [1, 5, 3, 5, 2]
    handles = [await q.submit(handler, (p, i), priority=p) for i, p in enumerate(priorities)]
    await q.start()
    await asyncio.gather(*handles)
    assert ran == [(5, 1), (5, 3), (3, 2), (2, 4), (1, 0)]


async def test_coroutine_and_sync_tasks_share_one_priority_order(make_queue):
    q = await make_queue(1, start=False)
    ran = []

    async def coro(tag):
        ran.append(tag)

    def sync(tag):
        ran.append(tag)

    handles = [
        await q.submit(sync, "s0", priority=0),
        await q.submit(coro, "c9", priority=9),
        await q.submit(sync, "s9", priority=9),
        await q.submit(coro, "c5", priority=5),
    ]
    await q.start()
    await asyncio.gather(*handles)
    assert ran == ["c9", "s9", "c5", "s0"]


async def test_retried_task_goes_behind_its_priority_peers(make_queue):
    q = await make_queue(1, retry=RetryPolicy(max_retries=1, base_delay=0), start=False)
    ran = []

    async def flaky(tag):
        ran.append(tag)
        if ran.count(tag) == 1 and tag == "a":
            raise ValueError("first attempt fails")

    handles = [await q.submit(flaky, tag) for tag in "abc"]
    await q.start()
    await asyncio.gather(*handles)
    assert ran == ["a", "b", "c", "a"]


# -------------------------------------------------------------- the heap


def pop_all(heap: PriorityHeap[str]) -> list[str]:
    out = []
    while len(heap):
        out.append(heap.pop())
    return out


@pytest.mark.unit
def test_heap_pops_higher_priority_first():
    h: PriorityHeap[str] = PriorityHeap()
    for priority, item in [(1, "low"), (10, "high"), (-5, "negative"), (5, "mid")]:
        h.push(priority, item)
    assert pop_all(h) == ["high", "mid", "low", "negative"]


@pytest.mark.unit
def test_heap_is_fifo_within_a_priority():
    h: PriorityHeap[str] = PriorityHeap()
    for i in range(20):
        h.push(i % 2, f"p{i % 2}-{i}")
    assert pop_all(h) == [f"p1-{i}" for i in range(1, 20, 2)] + [f"p0-{i}" for i in range(0, 20, 2)]


@pytest.mark.unit
def test_heap_never_compares_items():
    class Incomparable:
        def __lt__(self, other: object) -> bool:
            raise AssertionError("items must not be compared")

    h: PriorityHeap[Incomparable] = PriorityHeap()
    items = [Incomparable() for _ in range(5)]
    for item in items:
        h.push(3, item)
    assert [h.pop() for _ in items] == items


@pytest.mark.unit
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


@pytest.mark.unit
def test_heap_pop_on_empty_raises_index_error():
    h: PriorityHeap[str] = PriorityHeap()
    with pytest.raises(IndexError):
        h.pop()


@pytest.mark.unit
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


@pytest.mark.unit
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


@pytest.mark.unit
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


@pytest.mark.unit
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


@pytest.mark.unit
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


@pytest.mark.unit
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


@pytest.mark.unit
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
