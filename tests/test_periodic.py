"""Periodic schedules (``every``, ``cron``, ``Schedule``): when runs fall due, and what each run is.

- every(): the first run after ``delay``, then fixed steps of ``interval``; runs are ordinary tasks with id
  ``(name, n)`` and the schedule's priority, key, retries and timeout.
- Misfires (missed occurrences coalesced or tried in turn, ``misfire_grace``), ``overlap``, pause, resume,
  remove and shutdown; cron in a time zone across both DST changes, as cronsim computes it.
- Bad calls raise at the call and leave ``q.schedules()`` as it was.

All on a FakeClock: ``clock.sleep(s)`` lets the runs of ``s`` seconds happen, ``clock.advance(s)`` moves time
under a running handler. A schedule is made late by starting its queue after the clock moved.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from datetime import UTC, date, datetime, timedelta, timezone
from datetime import time as clock_time
from zoneinfo import ZoneInfo

import pytest
from _helpers import NO_RETRY, assert_identity, shut_down
from conftest import wait_until
from cronsim import CronSim

from hybrid_queue import EventKind, QueueShutDown, RetryPolicy, TaskStatus
from hybrid_queue.testing import FakeClock

NY = ZoneInfo("America/New_York")

pytestmark = pytest.mark.timing


async def noop() -> None:
    pass


def add(a: int, b: int = 0) -> int:
    return a + b


async def add_async(a: int, b: int = 0) -> int:
    return a + b


class Ticks:
    """A handler that notes the queue clock (or the wall clock) at each start."""

    def __init__(self, clock: FakeClock, wall: bool = False) -> None:
        self.clock = clock
        self.wall = wall
        self.starts: list[float] = []

    async def tick(self) -> None:
        self.starts.append(self.clock.wall_time() if self.wall else self.clock.time())


class Gate:
    """A coroutine handler that notes its starts, then waits until ``release`` is set."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.starts: list[float] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self) -> str:
        self.starts.append(self.clock.time())
        self.started.set()
        await self.release.wait()
        return "done"


def cron_walls(expr: str, start: datetime, end: float) -> list[float]:
    """The occurrences cronsim gives for ``expr`` strictly after ``start``, up to the timestamp ``end``."""
    return [at.timestamp() for at in itertools.takewhile(lambda at: at.timestamp() <= end, CronSim(expr, start))]


# ------------------------------------------------------------------- every()


@pytest.mark.parametrize(("delay", "expected"), [(None, [10, 20, 30]), (0, [0, 10, 20, 30]), (3, [3, 13, 23, 33])])
async def test_first_run_after_delay_then_every_interval(make_queue, delay, expected):
    clock = FakeClock()
    q = await make_queue(1, clock=clock)
    t = Ticks(clock)
    s = q.every(10, t.tick, delay=delay)
    assert s.next_run == (10.0 if delay is None else float(delay))
    await clock.sleep(35)
    assert t.starts == expected
    assert (s.runs, s.missed, s.skipped) == (len(expected), 0, 0)
    assert s.next_run == expected[-1] + 10


async def test_steps_stay_fixed_however_long_a_run_takes(make_queue):
    clock = FakeClock()
    q = await make_queue(1, clock=clock)
    gate = Gate(clock)
    q.every(10, gate, name="slow", delay=3)
    clock.advance(3)
    await gate.started.wait()
    clock.advance(9)  # the run lasts 9 s of fake time
    gate.release.set()
    assert (await q.get_result(("slow", 1))).result == "done"
    await clock.sleep(11)
    assert gate.starts == [3.0, 13.0, 23.0]  # not 3 + 9 + 10


@pytest.mark.parametrize("fn", [add, add_async], ids=["sync", "coroutine"])
async def test_run_ids_are_name_and_number_and_results_are_kept(make_queue, fn):
    clock = FakeClock()
    q = await make_queue(2, clock=clock)
    s = q.every(5, fn, 2, name="adder", b=3)
    assert s.last_task_id is None
    await clock.sleep(15)
    assert s.runs == 3 and s.last_task_id == ("adder", 3)
    for n in (1, 2, 3):
        result = await q.get_result(("adder", n))
        assert (result.status, result.result) == (TaskStatus.COMPLETED, 5)
    assert (await q.get_result(s.last_task_id)).task_id == ("adder", 3)
    assert q.every(5, fn).name == fn.__qualname__  # the default name


async def test_runs_counts_the_runs_of_this_schedule_when_ids_are_taken(make_queue):
    clock = FakeClock()
    q = await make_queue(1, clock=clock)
    await q.submit(noop, task_id=("t", 1))  # a task of the user's holds run 1's id
    first = q.every(10, noop, name="t")
    await clock.sleep(10)
    assert first.last_task_id == ("t", 2)  # the next free id
    assert first.remove() is True
    again = q.every(10, noop, name="t")  # results of ("t", 1) and ("t", 2) are kept
    await clock.sleep(10)
    assert again.last_task_id == ("t", 3)
    assert (first.runs, again.runs) == (1, 1)  # each started one run since it was made


async def test_runs_take_the_schedules_priority(make_queue):
    clock = FakeClock()
    q = await make_queue(1, clock=clock)
    order = []
    q.every(10, order.append, "low", name="low")
    q.every(10, order.append, "high", name="high", priority=5)
    await clock.sleep(10)
    assert order == ["high", "low"]


async def test_runs_wait_for_their_key(make_queue):
    clock = FakeClock()
    q = await make_queue(2, clock=clock)
    t = Ticks(clock)
    q.pause_key("host", 25)
    s = q.every(10, t.tick, name="t", key="host")
    await clock.sleep(10)
    assert q.key_stats("host").waiting == 1 and q.status(("t", 1)) is TaskStatus.PENDING
    await clock.sleep(20)
    assert t.starts == [25.0, 30.0]
    assert s.skipped == 1  # at 20, run 1 still waited for its key


async def test_failing_run_is_retried_by_its_max_retries_with_events(make_queue):
    clock = FakeClock()
    q = await make_queue(1, clock=clock, retry=RetryPolicy(max_retries=5, base_delay=1.0, max_delay=1.0))
    events = []
    q.add_listener(events.append)
    calls = []

    async def flaky():
        calls.append(clock.time())
        raise OSError("down")

    s = q.every(100, flaky, name="flaky", max_retries=2)
    await clock.sleep(105)
    assert calls == [100.0, 101.0, 102.0]
    result = await q.get_result(s.last_task_id)
    assert (result.status, result.retry_count, type(result.error)) == (TaskStatus.FAILED, 2, OSError)
    await wait_until(lambda: any(e.kind is EventKind.FAILED for e in events))
    seen = " ".join(f"{e.kind.value}/{e.attempt}" for e in events if e.task_id == ("flaky", 1))
    assert seen == "submitted/0 started/1 retry_scheduled/1 started/2 retry_scheduled/2 started/3 failed/3"


async def test_run_over_its_timeout_fails(make_queue):
    clock = FakeClock()
    q = await make_queue(1, clock=clock, retry=NO_RETRY)
    gate = Gate(clock)
    q.every(10, gate, name="hang", timeout=2.0)
    clock.advance(10)
    await gate.started.wait()
    clock.advance(2)
    result = await q.get_result(("hang", 1))
    assert result.status is TaskStatus.FAILED and isinstance(result.error, TimeoutError)


# ------------------------------------------------------ misfires and overlap


@pytest.mark.parametrize(
    ("coalesce", "overlap", "starts", "missed", "skipped"),
    [
        (True, False, [35.0], 2, 0),  # 10, 20, 30 merged into one run
        (False, True, [35.0, 35.0, 35.0], 0, 0),  # each tried, each started
        (False, False, [35.0], 0, 2),  # each tried; the first is still live
    ],
)
async def test_missed_occurrences_coalesce_or_run_each(make_queue, coalesce, overlap, starts, missed, skipped):
    clock = FakeClock()
    q = await make_queue(1, clock=clock, start=False)
    t = Ticks(clock)
    s = q.every(10, t.tick, name="t", coalesce=coalesce, overlap=overlap)
    clock.advance(35)  # nothing runs before start(): the queue comes late
    await q.start()
    await clock.sleep(0)
    assert t.starts == starts
    assert (s.runs, s.missed, s.skipped) == (len(starts), missed, skipped)
    assert s.next_run == 40.0
    await clock.sleep(5)
    assert t.starts == [*starts, 40.0]
    assert_identity(q)


async def test_missed_cron_occurrences_coalesce_into_one_run(make_queue):
    start = datetime(2026, 1, 1, tzinfo=UTC)
    clock = FakeClock(wall=start)
    q = await make_queue(1, clock=clock, start=False)
    t = Ticks(clock, wall=True)
    s = q.cron("0 * * * *", t.tick)
    clock.advance(3.5 * 3600)  # 01:00, 02:00 and 03:00 pass before start()
    await q.start()
    await clock.sleep(0)
    assert (s.runs, s.missed) == (1, 2)
    assert t.starts == pytest.approx([start.timestamp() + 3.5 * 3600], abs=1e-3)
    assert s.next_run == pytest.approx(4 * 3600.0, abs=1e-3)


@pytest.mark.parametrize(
    ("grace", "coalesce", "runs", "missed"),
    [
        (None, True, 1, 2),
        (5.0, True, 1, 2),  # 5 s late: just in time
        (4.9, True, 0, 3),
        (10.0, False, 1, 2),  # 25 and 15 s late: missed; 5 s late: runs
    ],
)
async def test_run_later_than_misfire_grace_is_not_started(make_queue, grace, coalesce, runs, missed):
    clock = FakeClock()
    q = await make_queue(1, clock=clock, start=False)
    t = Ticks(clock)
    s = q.every(10, t.tick, name="t", misfire_grace=grace, coalesce=coalesce)
    clock.advance(35)
    await q.start()
    await clock.sleep(0)
    assert (s.runs, s.missed, len(t.starts)) == (runs, missed, runs)
    await clock.sleep(5)  # the next run is on time
    assert s.runs == runs + 1 and t.starts[-1] == 40.0


@pytest.mark.parametrize("overlap", [False, True])
async def test_run_is_not_started_while_the_previous_one_runs_unless_overlap(make_queue, overlap):
    clock = FakeClock()
    q = await make_queue(2, clock=clock)
    gate = Gate(clock)
    s = q.every(10, gate, name="g", overlap=overlap)
    clock.advance(10)
    await gate.started.wait()
    clock.advance(10)  # run 1 still runs at 20
    if overlap:
        await wait_until(lambda: len(gate.starts) == 2)
        assert (s.runs, s.skipped) == (2, 0)
    else:
        assert (s.runs, s.skipped, q.stats().submitted) == (1, 1, 1)
    gate.release.set()
    for n in range(1, s.runs + 1):
        assert (await q.get_result(("g", n))).result == "done"
    await clock.sleep(10)
    assert gate.starts == ([10.0, 20.0, 30.0] if overlap else [10.0, 30.0])


# --------------------------------------------------- pause, resume, remove


async def test_resume_starts_from_the_next_occurrence_without_making_up(make_queue):
    clock = FakeClock()
    q = await make_queue(1, clock=clock)
    t = Ticks(clock)
    s = q.every(10, t.tick, name="t")
    await clock.sleep(15)
    assert s.pause() is True and s.pause() is False
    assert s.paused and s.next_run is None and q.schedules() == [s]
    await clock.sleep(22)
    assert t.starts == [10.0]
    assert s.resume() is True and s.resume() is False
    assert not s.paused and s.next_run == 40.0
    await clock.sleep(13)
    assert t.starts == [10.0, 40.0, 50.0]
    assert (s.runs, s.missed, s.skipped) == (3, 0, 0)


async def test_removed_schedule_never_runs_again_and_its_running_run_goes_on(make_queue):
    clock = FakeClock()
    q = await make_queue(1, clock=clock)
    gate = Gate(clock)
    s = q.every(10, gate, name="g")
    clock.advance(10)
    await gate.started.wait()
    assert s.remove() is True and s.remove() is False
    assert s.removed and s.next_run is None and q.schedules() == []
    assert s.pause() is False and s.resume() is False
    gate.release.set()
    assert (await q.get_result(("g", 1))).status is TaskStatus.COMPLETED
    await clock.sleep(100)
    assert gate.starts == [10.0] and s.runs == 1


async def test_schedules_lists_those_in_force_in_order_added(make_queue):
    clock = FakeClock(wall=datetime(2026, 1, 1, tzinfo=UTC))
    q = await make_queue(1, clock=clock)
    a = q.every(10, noop, name="a")
    b = q.cron("0 * * * *", noop, name="b")
    c = q.every(5, noop, name="c")
    assert q.schedules() == [a, b, c]
    assert b.pause() is True
    assert q.schedules() == [a, b, c]  # paused ones included
    assert b.remove() is True
    assert q.schedules() == [a, c] and b.removed and not b.paused
    d = q.every(1, noop, name="b")  # a removed schedule's name is free again
    assert q.schedules() == [a, c, d]


async def test_shutdown_ends_every_schedule(make_queue):
    clock = FakeClock()
    q = await make_queue(2, clock=clock)
    t = Ticks(clock)
    gate = Gate(clock)
    a = q.every(10, t.tick, name="a")
    paused = q.every(10, t.tick, name="paused")
    assert paused.pause() is True
    g = q.every(25, gate, name="g")
    await clock.sleep(20)
    clock.advance(5)  # g's first run starts at 25 and holds on
    await gate.started.wait()
    stopping = asyncio.create_task(q.shutdown())
    await wait_until(lambda: q.schedules() == [])
    assert all(s.removed and s.next_run is None for s in (a, paused, g))
    assert a.pause() is False and paused.resume() is False and g.remove() is False
    clock.advance(100)  # no run falls due any more
    gate.release.set()
    await stopping
    assert (await q.get_result(("g", 1))).result == "done"
    assert t.starts == [10.0, 20.0] and gate.starts == [25.0]
    assert q.stats().submitted == 3
    assert_identity(q)


# ---------------------------------------------------------------------- cron


async def test_daily_cron_runs_once_a_day_across_spring_forward(make_queue):
    start = datetime(2026, 3, 6, 12, tzinfo=NY)
    clock = FakeClock(wall=start)
    q = await make_queue(1, clock=clock)
    t = Ticks(clock, wall=True)
    q.cron("30 2 * * *", t.tick, tz="America/New_York")
    await clock.sleep(4 * 86400)
    assert t.starts == pytest.approx(cron_walls("30 2 * * *", start, clock.wall_time()), abs=1e-3)
    local = [datetime.fromtimestamp(round(w), NY) for w in t.starts]
    assert [d.date() for d in local] == [date(2026, 3, day) for day in (7, 8, 9, 10)]
    assert [d.time() for d in local] == [clock_time(2, 30), clock_time(3, 0), clock_time(2, 30), clock_time(2, 30)]


async def test_hourly_cron_runs_25_times_on_the_fall_back_day(make_queue):
    start = datetime(2026, 10, 31, 12, tzinfo=NY)
    clock = FakeClock(wall=start)
    q = await make_queue(1, clock=clock)
    t = Ticks(clock, wall=True)
    s = q.cron("0 * * * *", t.tick, tz=NY)
    await clock.sleep(2 * 86400)
    assert t.starts == pytest.approx(cron_walls("0 * * * *", start, clock.wall_time()), abs=1e-3)
    walls = [round(w) for w in t.starts]
    assert len(set(walls)) == len(walls) == s.runs  # never twice for one occurrence
    assert sum(datetime.fromtimestamp(w, NY).date() == date(2026, 11, 1) for w in walls) == 25
    assert set(range(walls[0], walls[-1] + 1, 3600)) == set(walls)  # every hour, none skipped


async def test_cron_resumed_within_the_repeated_hour_runs_its_second_occurrence_once(make_queue):
    first_one = datetime(2026, 11, 1, 1, tzinfo=NY).timestamp()  # 01:00 EDT; 01:00 EST is an hour later
    clock = FakeClock(wall=first_one - 1800)
    q = await make_queue(1, clock=clock)
    t = Ticks(clock, wall=True)
    s = q.cron("0 * * * *", t.tick, tz=NY)
    await clock.sleep(3600)  # 01:30 EDT
    assert s.pause() is True and s.resume() is True
    assert s.next_run + (clock.wall_time() - clock.time()) == pytest.approx(first_one + 3600, abs=1e-3)
    await clock.sleep(3600)  # 01:30 EST
    assert s.pause() is True and s.resume() is True
    assert s.next_run + (clock.wall_time() - clock.time()) == pytest.approx(first_one + 7200, abs=1e-3)
    await clock.sleep(3600)
    assert [round(w - first_one) for w in t.starts] == [0, 3600, 7200]


async def test_cron_in_utc_by_default_and_tz_as_a_name_or_a_tzinfo(make_queue):
    start = datetime(2026, 1, 1, tzinfo=UTC)  # 09:00 in Tokyo
    clock = FakeClock(wall=start)
    q = await make_queue(1, clock=clock)
    t = Ticks(clock, wall=True)
    assert q.cron("*/15 * * * *", t.tick).next_run == pytest.approx(900.0, abs=1e-3)
    zones = ["Asia/Tokyo", ZoneInfo("Asia/Tokyo"), timezone(timedelta(hours=9))]
    runs = [q.cron("0 9 * * *", noop, tz=tz, name=f"tokyo{i}").next_run for i, tz in enumerate(zones)]
    assert runs == pytest.approx([86400.0] * 3, abs=1e-3)
    await clock.sleep(3600)
    assert t.starts == pytest.approx([start.timestamp() + 900 * k for k in (1, 2, 3, 4)], abs=1e-3)


# ----------------------------------------------------------------- bad input


BAD_CALLS = [
    ("every", (0, noop), {}, ValueError, r"^interval must be a positive, finite number, got 0$"),
    ("every", (-1, noop), {}, ValueError, r"^interval must be a positive, finite number, got -1$"),
    ("every", (math.nan, noop), {}, ValueError, r"^interval must be a positive, finite number, got nan$"),
    ("every", (math.inf, noop), {}, ValueError, r"^interval must be a positive, finite number, got inf$"),
    ("every", ("5", noop), {}, TypeError, r"^interval must be a positive number, got '5'$"),
    ("every", (5, noop), {"delay": -1}, ValueError, r"^delay must be a finite number >= 0, got -1$"),
    ("every", (5, noop), {"name": "keep"}, ValueError, r"^a schedule named 'keep' exists on this queue; "),
    ("every", (5, noop), {"misfire_grace": -1}, ValueError, r"^misfire_grace must be > 0 seconds or None, got -1$"),
    ("every", (5, noop), {"misfire_grace": 0}, ValueError, r"^misfire_grace must be > 0 seconds or None, got 0$"),
    ("every", (1e300, noop), {}, ValueError, r"^interval must be at most 3\.15576e\+08 seconds \(ten years\)"),
    ("every", (5, noop), {"coalesce": 1}, TypeError, r"^coalesce must be True or False, got 1$"),
    ("every", (5, noop), {"name": ""}, TypeError, r"^name must be a non-empty str, got ''$"),
    ("every", (5, noop), {"overlap": "no"}, TypeError, r"^overlap must be True or False, got 'no'$"),
    ("cron", ("61 * * * *", noop), {}, ValueError, r"^expr '61 \* \* \* \*' is not a valid cron expression: "),
    ("cron", ("not cron", noop), {}, ValueError, r"^expr 'not cron' is not a valid cron expression: "),
    ("cron", ("0 * * * *", noop), {"tz": "Mars/Olympus"}, ValueError, r"^tz 'Mars/Olympus' is not a time zone "),
    ("cron", ("0 * * * *", noop), {"tz": 5}, TypeError, r"^tz must be a tzinfo or an IANA time zone name"),
    ("cron", ("0 * * * *", noop), {"name": "keep"}, ValueError, r"^a schedule named 'keep' exists on this queue; "),
]


def call_id(method: str, args: tuple[object, ...], kwargs: dict[str, object]) -> str:
    return f"{method}:{args[0]!r}" + "".join(f",{k}={v!r}" for k, v in kwargs.items())


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("method", "args", "kwargs", "exc", "match"),
    [pytest.param(*call, id=call_id(*call[:3])) for call in BAD_CALLS],
)
async def test_bad_schedule_is_refused_and_changes_nothing(make_queue, method, args, kwargs, exc, match):
    clock = FakeClock()
    q = await make_queue(1, clock=clock)
    keep = q.every(10, noop, name="keep")
    stats = q.stats()
    with pytest.raises(exc, match=match):
        getattr(q, method)(*args, **kwargs)
    assert q.schedules() == [keep] and q.stats() == stats
    await clock.sleep(10)
    assert keep.runs == 1  # the queue still runs its schedule


@pytest.mark.bad_input
async def test_every_after_shutdown_is_refused(make_queue):
    q = await make_queue(1, clock=FakeClock())
    await shut_down(q)
    with pytest.raises(QueueShutDown, match=r"^the queue has begun shutting down and accepts no new tasks"):
        q.every(10, noop, name="late")
    assert q.schedules() == []


async def test_a_small_misfire_grace_still_runs_on_a_real_loop(make_queue):
    # A timer always fires a little late (up to a millisecond on uvloop): that is on time.
    q = await make_queue(1)
    ran = asyncio.Event()

    async def job():
        ran.set()

    s = q.every(0.01, job, misfire_grace=1e-6)
    await asyncio.wait_for(ran.wait(), 10)
    s.remove()
    assert s.runs >= 1


async def test_a_cron_schedule_after_a_long_wall_clock_jump_does_not_walk_every_occurrence(make_queue):
    clock = FakeClock(wall=datetime(2026, 1, 1, tzinfo=UTC))
    q = await make_queue(1, clock=clock)

    async def job():
        pass

    s = q.cron("* * * * *", job)
    clock._wall_offset += 365 * 86400  # the system clock set a year ahead
    await clock.sleep(60)
    # 525,600 occurrences were missed: the first 1,024 are counted, the rest as one.
    assert (s.runs, s.missed) == (1, 1024)
    assert s.next_run == 120.0
