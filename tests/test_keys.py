"""Keys: per-key concurrency and rate limits, pauses, round-robin turns across keys, and key stats.

Time-driven tests run on a FakeClock with handlers that hold their slot for
a stretch of fake time (``hold``), moved from deadline to deadline by
``drive``: ``FakeClock.sleep`` waits for a quiet queue, which a queue whose
handlers are running never is.
"""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest
import uvloop
from _helpers import FAST, assert_identity, assert_nothing_lost, deterministic
from hypothesis import given, settings
from hypothesis import strategies as st

from hybrid_queue import HybridQueue, KeyStats, TaskStatus
from hybrid_queue.testing import FakeClock

pytestmark = pytest.mark.timing


class Recorder:
    """Handlers that record, per key, the fake time each starts and how many of the key run at once."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.starts: dict[Any, list[float]] = defaultdict(list)
        self.order: list[Any] = []
        self.now_running: dict[Any, int] = defaultdict(int)
        self.most_running: dict[Any, int] = defaultdict(int)

    async def hold(self, key: Any, seconds: float = 0.0) -> Any:
        self.starts[key].append(self.clock.time())
        self.order.append(key)
        self.now_running[key] += 1
        self.most_running[key] = max(self.most_running[key], self.now_running[key])
        try:
            if seconds:
                done = asyncio.get_running_loop().create_future()
                self.clock.call_later(seconds, lambda: done.done() or done.set_result(None))
                await done
        finally:
            self.now_running[key] -= 1
        return key


async def settle() -> None:
    for _ in range(30):
        await asyncio.sleep(0)


async def drive(clock: FakeClock, done: Callable[[], bool], horizon: float = 10_000.0) -> None:
    """Move fake time from deadline to deadline, letting the loop run in between, until ``done()``."""
    end = clock.time() + horizon
    await settle()
    while not done():
        deadline = clock.next_deadline()
        assert deadline is not None and deadline <= end, "nothing left to wait for, and not done"
        clock.advance(max(deadline - clock.time(), 0.0))
        await settle()


# ------------------------------------------------------------------ fairness


async def test_a_key_with_ten_tasks_is_not_starved_by_one_with_ten_thousand(make_queue):
    q = await make_queue(1, start=False, result_ttl=0)
    order = []

    async def job(key):
        order.append(key)

    handles = [await q.submit(job, "a", key="a") for _ in range(10_000)]
    handles += [await q.submit(job, "b", key="b") for _ in range(10)]
    await q.start()
    await asyncio.gather(*handles)
    assert order[:20].count("b") == 10, order[:20]
    assert_nothing_lost(q, handles)


async def test_keys_take_turns_within_a_priority_and_priority_comes_first(make_queue):
    q = await make_queue(1, start=False)
    order = []

    async def job(name):
        order.append(name)

    handles = [await q.submit(job, f"a{i}", key="a") for i in range(3)]
    handles += [await q.submit(job, f"b{i}", key="b") for i in range(3)]
    handles += [await q.submit(job, f"c{i}", key="c") for i in range(2)]
    handles.append(await q.submit(job, "urgent", key="c", priority=5))
    handles.append(await q.submit(job, "plain"))  # no key: the turn of None
    await q.start()
    await asyncio.gather(*handles)
    # c's urgent task was its turn: c goes behind the keys waiting then.
    assert order == ["urgent", "a0", "b0", "plain", "c0", "a1", "b1", "c1", "a2", "b2"]


async def test_tasks_waiting_when_the_first_key_appears_keep_their_order_in_the_turn_of_none(make_queue):
    q = await make_queue(1, start=False)
    order = []

    async def job(name):
        order.append(name)

    handles = [await q.submit(job, name, priority=p) for name, p in [("x", 0), ("y", 2), ("z", 0)]]
    handles.append(await q.submit(job, "k", key="k"))
    await q.start()
    await asyncio.gather(*handles)
    # They share the turn of None (by priority, then submission), which alternates with k's.
    assert order == ["y", "k", "x", "z"]


# -------------------------------------------------------------- concurrency


async def test_a_key_runs_at_most_its_concurrency_and_other_keys_are_not_held(make_queue):
    q = await make_queue(4)
    q.limit("slow.example", concurrency=2)
    gates = {"slow.example": asyncio.Event(), "fast.example": asyncio.Event()}
    running: dict[str, int] = defaultdict(int)
    most: dict[str, int] = defaultdict(int)

    async def fetch(host):
        running[host] += 1
        most[host] = max(most[host], running[host])
        await gates[host].wait()
        running[host] -= 1

    slow = [await q.submit(fetch, "slow.example", key="slow.example") for _ in range(6)]
    fast = [await q.submit(fetch, "fast.example", key="fast.example") for _ in range(2)]
    await settle()
    assert running == {"slow.example": 2, "fast.example": 2}
    stats = q.key_stats("slow.example")
    assert (stats.waiting, stats.running, stats.concurrency) == (4, 2, 2)
    # The slow key's waiting tasks hold no worker: two of four are in use by it.
    assert q.stats().busy_workers == 4 and q.stats().pending == 4
    gates["fast.example"].set()
    await asyncio.gather(*fast)
    gates["slow.example"].set()
    await asyncio.gather(*slow)
    assert most == {"slow.example": 2, "fast.example": 2}
    assert_nothing_lost(q, slow + fast)


async def test_sync_handlers_respect_the_key_limit_too(make_queue):
    q = await make_queue(4)
    q.limit("db", concurrency=1)
    import threading

    lock = threading.Lock()
    state = {"now": 0, "most": 0}

    def query(i):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        import time

        time.sleep(0.002)
        with lock:
            state["now"] -= 1
        return i

    futures = [await asyncio.to_thread(q.submit_blocking, query, i, key="db") for i in range(8)]
    assert [await asyncio.wrap_future(f) for f in futures] == list(range(8))
    assert state["most"] == 1


async def test_a_retried_task_waits_for_its_key_again(make_queue):
    clock = FakeClock()
    q = await make_queue(2, clock=clock, retry=FAST)
    q.limit("k", concurrency=1)
    attempts = []

    async def flaky(i):
        attempts.append(i)
        if attempts.count(i) == 1:
            raise OSError("transient")
        return i

    handles = [await q.submit(flaky, i, key="k") for i in range(3)]
    await clock.sleep(1)
    assert [await h for h in handles] == [0, 1, 2]
    assert sorted(attempts) == [0, 0, 1, 1, 2, 2]


# ------------------------------------------------------------------- rates


@pytest.mark.parametrize(("burst", "expected"), [(1, [0.0, 0.5, 1.0, 1.5, 2.0]), (3, [0.0, 0.0, 0.0, 0.5, 1.0])])
async def test_a_rate_is_a_token_bucket_on_the_queue_clock(make_queue, burst, expected):
    clock = FakeClock()
    q = await make_queue(4, clock=clock)
    q.limit("api", rate=2.0, burst=burst)
    rec = Recorder(clock)
    handles = [await q.submit(rec.hold, "api", key="api") for _ in range(5)]
    await clock.sleep(3)
    await asyncio.gather(*handles)
    assert rec.starts["api"] == expected


async def test_a_pattern_limits_each_matching_key_on_its_own_and_a_key_limit_comes_first(make_queue):
    clock = FakeClock()
    q = await make_queue(8, clock=clock)
    q.limit(pattern="*.example.com", rate=1.0)
    q.limit(pattern="*", rate=0.5)  # set later: only for keys the first pattern does not match
    q.limit("vip.example.com", rate=4.0, burst=2)
    rec = Recorder(clock)
    handles = []
    for host in ["a.example.com", "b.example.com", "vip.example.com", "other.org"]:
        handles += [await q.submit(rec.hold, host, key=host) for _ in range(3)]
    await clock.sleep(10)
    await asyncio.gather(*handles)
    assert rec.starts["a.example.com"] == [0.0, 1.0, 2.0]
    assert rec.starts["b.example.com"] == [0.0, 1.0, 2.0]
    assert rec.starts["vip.example.com"] == [0.0, 0.0, 0.25]
    assert rec.starts["other.org"] == [0.0, 2.0, 4.0]


async def test_clearing_a_limit_releases_what_waits_at_once(make_queue):
    clock = FakeClock()
    q = await make_queue(4, clock=clock)
    q.limit("k", rate=0.001)
    rec = Recorder(clock)
    handles = [await q.submit(rec.hold, "k", key="k") for _ in range(3)]
    await clock.sleep(1)
    assert len(rec.starts["k"]) == 1
    q.limit("k")  # no limit given: cleared
    await clock.sleep(0)
    await asyncio.gather(*handles)
    assert rec.starts["k"] == [0.0, 1.0, 1.0]


# ------------------------------------------------------------------ pauses


async def test_a_paused_key_starts_nothing_until_its_pause_ends_and_others_run(make_queue):
    clock = FakeClock()
    q = await make_queue(2, clock=clock)
    rec = Recorder(clock)
    q.pause_key("busy.example", 30)
    assert q.key_stats("busy.example").paused_for == 30.0
    paused = [await q.submit(rec.hold, "busy.example", key="busy.example") for _ in range(3)]
    other = [await q.submit(rec.hold, "ok.example", key="ok.example") for _ in range(3)]
    await clock.sleep(29.5)
    assert rec.starts["busy.example"] == [] and len(rec.starts["ok.example"]) == 3
    assert q.status(paused[0].task_id) is TaskStatus.PENDING
    await clock.sleep(0.5)
    await asyncio.gather(*paused, *other)
    assert rec.starts["busy.example"] == [30.0, 30.0, 30.0]


async def test_a_shorter_pause_keeps_the_longer_and_resume_key_ends_it(make_queue):
    clock = FakeClock()
    q = await make_queue(2, clock=clock)
    rec = Recorder(clock)
    q.pause_key("k", 60)
    q.pause_key("k", 5)
    assert q.key_stats("k").paused_for == 60.0
    h = await q.submit(rec.hold, "k", key="k")
    await clock.sleep(10)
    assert rec.starts["k"] == []
    assert q.resume_key("k") is True
    assert q.resume_key("k") is False
    await clock.sleep(0)
    await h
    assert rec.starts["k"] == [10.0]


async def test_a_handler_pauses_its_key_on_a_429_and_is_retried_after_the_pause(make_queue):
    clock = FakeClock()
    q = await make_queue(2, clock=clock, retry=FAST)
    starts = []

    class TooManyRequests(Exception):
        pass

    async def fetch(url):
        starts.append(clock.time())
        if len(starts) == 1:
            q.pause_key("api.example.com", 120)  # Retry-After: 120
            raise TooManyRequests(url)
        return "200 OK"

    h = await q.submit(fetch, "/items", key="api.example.com")
    await clock.sleep(119)
    assert len(starts) == 1 and not h.done()
    await clock.sleep(1)
    assert await h == "200 OK"
    assert starts == [0.0, 120.0]


# ---------------------------------------------------------- cancel, stats


async def test_cancelling_waiting_tasks_of_a_key_keeps_counts_exact(make_queue):
    q = await make_queue(1, start=False)
    order = []

    async def job(name):
        order.append(name)

    a = [await q.submit(job, f"a{i}", key="a") for i in range(3)]
    b = [await q.submit(job, f"b{i}", key="b") for i in range(2)]
    assert a[0].cancel() and b[0].cancel() and b[1].cancel()
    assert q.key_stats("a").waiting == 2 and q.key_stats("b").waiting == 0
    assert_identity(q)
    await q.start()
    await asyncio.gather(*a[1:])
    assert order == ["a1", "a2"]
    assert_nothing_lost(q, a + b)


async def test_idle_keys_are_forgotten_once_nothing_is_left_to_remember(make_queue):
    clock = FakeClock()
    q = await make_queue(2, clock=clock)
    q.limit(pattern="*", rate=1.0, burst=2)
    rec = Recorder(clock)
    handles = [await q.submit(rec.hold, f"host{i}", key=f"host{i}") for i in range(100)]
    await clock.sleep(0)
    await asyncio.gather(*handles)
    assert len(q.key_stats()) == 100  # buckets still refilling
    assert q.key_stats("host7") == KeyStats("host7", 0, 0, 0.0, 1.0, None, 1.0, 2)
    await clock.sleep(1)
    assert q.key_stats() == {}
    assert q.key_stats("host7").tokens == 2.0  # a forgotten key starts again with a full bucket


async def test_a_delayed_task_with_a_key_waits_for_its_time_then_for_its_key(make_queue):
    clock = FakeClock()
    q = await make_queue(2, clock=clock)
    q.limit("k", rate=1.0)
    rec = Recorder(clock)
    first = await q.submit(rec.hold, "k", key="k")
    later = await q.submit(rec.hold, "k", key="k", delay=0.25)
    await clock.sleep(2)
    await asyncio.gather(first, later)
    assert rec.starts["k"] == [0.0, 1.0]


# --------------------------------------------------------- the property


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@settings(parent=deterministic, max_examples=100)
@given(data=st.data())
def test_no_key_ever_exceeds_its_concurrency_or_rate_or_starts_while_paused(loop, data):
    """10,000 keys with random limits; tasks of random durations; random pauses: every start checked."""
    keys = [f"k{i}" for i in range(10_000)]
    default = data.draw(st.tuples(st.integers(1, 3), st.floats(0.5, 20.0), st.integers(1, 3)), label="k* limit")
    own = data.draw(
        st.dictionaries(
            st.sampled_from(keys),
            st.tuples(st.none() | st.integers(1, 3), st.none() | st.floats(0.2, 50.0), st.integers(1, 4)),
            max_size=20,
        ),
        label="own limits",
    )
    used = data.draw(st.lists(st.sampled_from(keys), min_size=1, max_size=12, unique=True), label="keys used")
    tasks = data.draw(
        st.lists(st.tuples(st.sampled_from(used), st.sampled_from([0.0, 0.1, 0.7, 2.0])), min_size=1, max_size=120),
        label="tasks",
    )
    pauses = data.draw(
        st.lists(st.tuples(st.sampled_from(used), st.floats(0.0, 5.0), st.floats(0.1, 4.0)), max_size=4),
        label="pauses",
    )
    workers = data.draw(st.integers(1, 6), label="workers")
    limits: dict[str, tuple[int | None, float | None, int]] = {}

    async def scenario() -> tuple[Recorder, list[tuple[str, int, float]]]:
        clock = FakeClock()
        q = HybridQueue(workers, clock=clock, result_ttl=0)
        q.limit(pattern="k*", concurrency=default[0], rate=default[1], burst=default[2])
        for key, (concurrency, rate, burst) in own.items():
            if concurrency is None and rate is None:
                continue
            q.limit(key, concurrency=concurrency, rate=rate, burst=burst if rate is not None else 1)
        for key in used:
            stats = q.key_stats(key)
            assert stats.concurrency is not None or stats.rate is not None
            limits[key] = (stats.concurrency, stats.rate, stats.burst or 1)
        rec = Recorder(clock)
        windows: list[tuple[str, int, float]] = []

        def pause(key: str, seconds: float) -> None:
            # The starts of the key after this one must wait for the end of the pause.
            windows.append((key, len(rec.starts[key]), clock.time() + seconds))
            q.pause_key(key, seconds)

        await q.start()
        for key, at, seconds in pauses:
            clock.call_later(at, pause, key, seconds)
        handles = [await q.submit(rec.hold, key, seconds, key=key) for key, seconds in tasks]
        await drive(clock, lambda: all(h.done() for h in handles))
        assert [h.result() for h in handles] == [key for key, _ in tasks]
        await q.shutdown()
        assert_nothing_lost(q, handles)
        return rec, windows

    factory = asyncio.new_event_loop if loop == "asyncio" else uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        rec, windows = runner.run(scenario())

    for key, starts in rec.starts.items():
        concurrency, rate, burst = limits[key]
        if concurrency is not None:
            assert rec.most_running[key] <= concurrency, (key, limits[key])
        if rate is not None:
            # Any window [starts[i], starts[j]] holds j - i + 1 starts: at most burst + rate * width.
            for i in range(len(starts)):
                for j in range(i, len(starts)):
                    allowed = burst + rate * (starts[j] - starts[i])
                    assert j - i + 1 <= allowed + 1e-6, (key, limits[key], starts)
    for key, before, end in windows:
        assert all(t >= end - 1e-9 for t in rec.starts[key][before:]), (key, before, end, rec.starts[key])
    assert not math.isnan(sum(t for s in rec.starts.values() for t in s))


# ------------------------------------------------ keys and child tasks


async def test_a_key_task_freed_by_a_finished_child_starts_while_its_parent_still_waits(make_queue):
    # The parent (no key) waits for C1 of key A; C1 ends and keeps its slot for
    # the parent, which goes on waiting for C2: C2, of key A, must start in
    # the slot left free, not once the parent ends.
    q = await make_queue(2)
    q.limit("A", concurrency=1)
    started: dict[str, float] = {}
    go = asyncio.Event()

    async def child(name):
        started[name] = asyncio.get_running_loop().time()
        if name == "C2":
            go.set()

    async def parent():
        c1 = await q.submit(child, "C1", key="A")
        c2 = await q.submit(child, "C2", key="A")
        await c1
        await asyncio.wait_for(go.wait(), 10)  # C2 must start while this handler is still running
        await c2
        return "ok"

    assert await asyncio.wait_for(await q.submit(parent), 20) == "ok"
    assert set(started) == {"C1", "C2"}


async def test_the_first_key_keeps_the_rank_aging_gave_waiting_tasks(make_queue):
    clock = FakeClock()
    q = await make_queue(1, clock=clock, aging=10.0, start=False)
    order = []

    async def job(name):
        order.append(name)

    old = await q.submit(job, "old p0")
    clock.advance(100)
    q.pause_key("some-host", 1)  # the first use of a key: the heap becomes lanes
    new = await q.submit(job, "new p1", priority=1)
    await q.start()
    await asyncio.gather(old, new)
    assert order == ["old p0", "new p1"]


async def test_prometheus_keys_of_equal_text_and_other_types_stay_apart(make_queue):
    from prometheus_client import CollectorRegistry

    from hybrid_queue.prometheus import export_metrics

    registry = CollectorRegistry()
    q = await make_queue(1)
    export_metrics(q, registry=registry, name="q", keys=True)
    q.pause_key(1, 5)
    q.pause_key("1", 5)
    names = {
        sample.labels["key"]
        for metric in registry.collect()
        for sample in metric.samples
        if sample.name == "hybrid_queue_key_paused_seconds"
    }
    assert names == {"1", "int:1"}
