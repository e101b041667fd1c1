"""The timing group: how late scheduled tasks start, their memory, the timer's wake-ups, turns across keys, limits.

Five measures in one step run once (the lateness wants a fresh process and an
idle loop), each beside a reference where one makes sense; METHOD says how:

- delayed: the lateness of each handler's start after its due time, tasks
  submitted with ``delay=`` due over a few seconds; reference: one
  ``loop.call_later`` per task for the same due times;
- memory: tracemalloc bytes per task scheduled, beside a pending task's;
- wake-ups: timer fires for tasks at 100 distinct due times, against 100
  (at most 2 per due time where the loop's timers fire up to 1 ms early);
- fairness: where the last of 10 tasks of key "b" starts behind 100,000 of
  key "a"; reference: the same tasks without keys (FIFO);
- limits: the throughput of tasks keyed over 1,000 keys, without and with a
  concurrency limit, over the same tasks without a key.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import random
import statistics
import time
import tracemalloc
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybrid_queue import HybridQueue

from ._harness import WORKERS, Settings, Tally, check_equal, percentile, run_async
from ._plots import LOOP_STYLES, figure, save, title
from ._registry import Group, Mark, SummaryRow, Tick, register
from ._report import SELF, Column, mark, table

__all__ = ["GROUP", "METHOD"]

HYBRID = "hybrid_queue: submit(delay=)"
REFERENCE = "loop.call_later per task"
LATENESS_MS = 2.0  # target: p99 of the lateness
BYTES = 600  # target: bytes per scheduled task
LAST_B = 20  # target: start position of the last "b" task
# Target: timer fires per due time. Once at it; on a loop whose timers count
# whole milliseconds (uvloop) a timer may fire up to one early, and the queue
# tries again 1 ms later: two. Never one per task.
WAKES = 2.0
B_TASKS = 10
KEYS = 1_000
NO_KEY = "hybrid_queue: no key"
_QUANTILES = 200  # the lateness is saved as this many steps of its distribution, for the plot

METHOD = {
    "delayed": "each task submitted with delay= (its due time: time.monotonic() just before submit, plus the delay), "
    "due times uniform at random over the span, the first due once every task is submitted; a worker per task, "
    "no-op coroutine handlers, the loop otherwise idle; lateness: time.monotonic() at the handler's first line "
    "minus the due time. Reference: the same due times, one loop.call_later per task whose callback starts the "
    "handler as a Task",
    "memory": "tracemalloc: traced bytes after submitting N no-op tasks (handles kept) to a queue never started, "
    "minus the bytes before, over N; scheduled: submit(delay=3600), pending: submit() (as the footprint group)",
    "wakeups": "tasks spread evenly over the distinct due times (not_before= a time of the queue's clock, so tasks "
    "of one due time share it exactly); the queue's clock is time.monotonic() and loop.call_later, wrapped to count "
    "the timers the queue arms and those that fire (idle: fired, moved no task). Reference: one "
    "loop.call_later per task",
    "fairness": 'one worker; every task of key "a" submitted, then those of key "b", to a queue not started, then '
    "started; no-op coroutine handlers; position: 1-based, in the order the handlers started. Reference: the same "
    "tasks without keys",
    "limits": f"no-op coroutine tasks, {WORKERS} workers, await submit of each then await each handle, timed from "
    f"the queue's creation to its shutdown; keys: task i has key i % {KEYS:,} (str); limit: "
    'queue.limit(pattern="*", concurrency=1) (each key its own copy); rounds interleaved, medians',
}


@dataclass(frozen=True, slots=True)
class _Sizes:
    delayed: int  # tasks of the lateness run, per contender and loop
    span: float  # seconds their due times spread over
    wake_tasks: int
    wake_times: int  # distinct due times among them
    wake_span: float
    fair: int  # waiting tasks of key "a"
    memory: int
    throughput: int  # tasks per round of the limits rows
    rounds: int


def _sizes(settings: Settings) -> _Sizes:
    if settings.quick:
        return _Sizes(2_000, 0.2, 1_000, 20, 0.2, 2_000, settings.footprint_depth, settings.n, 1)
    # make bench: the lateness run at the density of the full run's (about 33 tasks per ms) for a third of the
    # time, and shorter limits rounds, so that the group takes about 20 s.
    if not settings.full:
        return _Sizes(33_000, 1.0, 10_000, 100, 1.0, 100_000, settings.footprint_depth, min(settings.n, 30_000), 3)
    return _Sizes(100_000, 3.0, 10_000, 100, 1.0, 100_000, settings.footprint_depth, settings.n, settings.rounds)


class _Starts:
    """Each task's due time and handler start, on time.monotonic; ``done`` is set when every handler has started."""

    def __init__(self, n: int) -> None:
        self.tally = Tally(n)
        self.due = [0.0] * n
        self.started = [0.0] * n
        self.left = n
        self.done = asyncio.get_running_loop().create_future()

    def handler(self) -> Callable[[int], Coroutine[Any, Any, None]]:
        started, hits, monotonic = self.started, self.tally.hits, time.monotonic

        async def note(i: int) -> None:
            started[i] = monotonic()
            hits[i] += 1
            self.left -= 1
            if not self.left:
                self.done.set_result(None)

        return note

    def lateness(self, who: str) -> list[float]:
        self.tally.check(who)
        return [s - d for s, d in zip(self.started, self.due, strict=True)]


def _lead(n: int) -> float:
    # Seconds from the first submit to the first due time: long enough for all
    # n submits (about 8 us each), so that the loop is idle when tasks fall due.
    return 0.2 + n * 12e-6


def _starter(handler: Callable[[int], Coroutine[Any, Any, None]]) -> Callable[[int], None]:
    # The reference's timer callback: start the handler as a Task, kept until it ends.
    loop, tasks = asyncio.get_running_loop(), set[asyncio.Task[None]]()

    def begin(i: int) -> None:
        task = loop.create_task(handler(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    return begin


async def _delayed(offsets: list[float], reference: bool) -> tuple[list[float], float]:
    n, loop, monotonic = len(offsets), asyncio.get_running_loop(), time.monotonic
    starts = _Starts(n)
    handler, due = starts.handler(), starts.due
    begin = _starter(handler)
    queue = None if reference else HybridQueue(n)  # a worker per task: a due task never waits for one
    if queue is not None:
        await queue.start()
    first = monotonic() + _lead(n)
    for i, offset in enumerate(offsets):
        now = monotonic()
        due[i] = first + offset
        if queue is None:
            loop.call_later(first + offset - now, begin, i)
        else:
            await queue.submit(handler, i, delay=first + offset - now)
    margin = first - monotonic()
    await starts.done
    if queue is not None:
        await queue.shutdown()
    return starts.lateness(REFERENCE if reference else HYBRID), margin


def _delayed_rows(sizes: _Sizes, loop: str) -> list[dict[str, Any]]:
    rng = random.Random(7)
    offsets = [rng.uniform(0.0, sizes.span) for _ in range(sizes.delayed)]
    rows = []
    for name, reference in ((HYBRID, False), (REFERENCE, True)):
        gc.collect()
        lateness, margin = run_async(loop, functools.partial(_delayed, offsets, reference))
        ms = sorted(x * 1e3 for x in lateness)
        steps = [ms[min(len(ms) - 1, len(ms) * k // _QUANTILES)] for k in range(_QUANTILES + 1)]
        rows.append({"name": name, "loop": loop, "tasks": len(ms), "span_s": sizes.span, "margin_s": margin,
                     "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99), "max_ms": ms[-1], "min_ms": ms[0],
                     "quantiles_ms": steps})  # fmt: skip
    return rows


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def _noop() -> None:
    return None


async def _bytes_per_task(n: int, delay: float | None) -> dict[str, Any]:
    who = "scheduled: submit(delay=3600)" if delay else "pending: submit()"
    queue = HybridQueue(WORKERS)
    handles: list[Any] = [None] * n
    submit = queue.submit
    # Tracing the submits only (not the shutdown, several times slower under it); left on if it was on.
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        before = _traced()
        for i in range(n):
            handles[i] = await submit(_noop, delay=delay)
        after = _traced()
    finally:
        if not was_tracing:
            tracemalloc.stop()
    check_equal(who, "stats().scheduled", queue.stats().scheduled, n if delay else 0)
    await queue.shutdown(cancel_pending=True)
    check_equal(who, "handles cancelled", sum(1 for h in handles if h.cancelled()), n)
    return {"name": who, "tasks": n, "bytes_per_task": (after - before) / n}


class _CountingClock:
    """What the queue uses without a clock (time.monotonic, the loop's timers), counting the timers."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.queue: HybridQueue | None = None
        self.armed = self.fired = self.idle = 0

    def time(self) -> float:
        return time.monotonic()

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> asyncio.TimerHandle:
        self.armed += 1
        return self._loop.call_later(delay, self._fire, callback, args)

    def _fire(self, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fired += 1
        if self.queue is None:  # the reference's: each starts its task
            callback(*args)
            return
        before = self.queue.stats().scheduled
        callback(*args)
        self.idle += self.queue.stats().scheduled == before


async def _wakeups(sizes: _Sizes, reference: bool, loop_name: str) -> dict[str, Any]:
    n, times, loop = sizes.wake_tasks, sizes.wake_times, asyncio.get_running_loop()
    starts = _Starts(n)
    handler = starts.handler()
    first = time.monotonic() + _lead(n)
    due = [first + sizes.wake_span * k / times for k in range(times)]
    clock = _CountingClock(loop)
    if reference:  # its timers counted by the same clock
        begin = _starter(handler)
        for i in range(n):
            clock.call_later(due[i % times] - clock.time(), begin, i)
        await starts.done
    else:
        clock.queue = queue = HybridQueue(WORKERS, clock=clock)
        await queue.start()
        for i in range(n):
            await queue.submit(handler, i, not_before=due[i % times])
        await starts.done
        await queue.shutdown()
    starts.tally.check(REFERENCE if reference else HYBRID)
    name = REFERENCE if reference else "hybrid_queue: submit(not_before=)"
    return {"name": name, "loop": loop_name, "tasks": n, "due_times": times, "armed": clock.armed, "fired": clock.fired,
            "idle": clock.idle, "per_due_time": clock.fired / times}  # fmt: skip


async def _fairness(a: int, keyed: bool) -> dict[str, Any]:
    tally = Tally(a + B_TASKS)
    hits = tally.hits
    positions: list[int] = []
    count = 0

    async def note(i: int) -> None:
        nonlocal count
        count += 1
        hits[i] += 1
        if i >= a:
            positions.append(count)

    queue = HybridQueue(1)
    submit = queue.submit
    handles = [await submit(note, i, key="a" if keyed else None) for i in range(a)]
    handles += [await submit(note, a + j, key="b" if keyed else None) for j in range(B_TASKS)]
    await queue.start()
    for handle in handles:
        await handle
    await queue.shutdown()
    who = 'keys "a" and "b"' if keyed else "no keys (FIFO)"
    tally.check(who)
    return {"name": who, "reference": not keyed, "a": a, "b": B_TASKS, "first_b": positions[0], "last_b": positions[-1]}


async def _throughput_round(n: int, keys: list[str] | None, limited: bool) -> float:
    tally = Tally(n)
    note = tally.coroutine()
    started = time.perf_counter()
    queue = HybridQueue(WORKERS)
    if limited:
        queue.limit(pattern="*", concurrency=1)
    await queue.start()
    submit = queue.submit
    handles = [await submit(note, i, key=None if keys is None else keys[i % KEYS]) for i in range(n)]
    for handle in handles:
        await handle
    await queue.shutdown()
    elapsed = time.perf_counter() - started
    tally.check(f"limits round (keys={keys is not None}, limited={limited})")
    check_equal("limits round", "stats().completed", queue.stats().completed, n)
    return elapsed


def _limits_rows(sizes: _Sizes, loop: str) -> list[dict[str, Any]]:
    keys = [f"k{k}" for k in range(KEYS)]
    variants = {
        NO_KEY: (None, False),
        f"hybrid_queue: {KEYS:,} keys, no limit": (keys, False),
        f"hybrid_queue: {KEYS:,} keys, concurrency=1 each": (keys, True),
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(sizes.rounds):
        for name, (ks, limited) in variants.items():
            gc.collect()
            samples[name].append(run_async(loop, functools.partial(_throughput_round, sizes.throughput, ks, limited)))
    base = statistics.median(samples[NO_KEY])
    rows = []
    for name, values in samples.items():
        seconds = statistics.median(values)
        rows.append({"name": name, "reference": name == NO_KEY, "tasks": sizes.throughput,
                     "us_per_task": seconds / sizes.throughput * 1e6, "tasks_per_s": sizes.throughput / seconds,
                     "throughput_ratio": base / seconds})  # fmt: skip
    return rows


def _once(settings: Settings, tick: Tick) -> dict[str, Any]:
    sizes, loop = _sizes(settings), settings.loops[0]
    result: dict[str, Any] = {"loop": loop, "rounds": sizes.rounds, "method": METHOD, "delayed": [], "wakeups": []}
    for k, each in enumerate(settings.loops):  # both depend on the loop's timers: on every loop
        result["delayed"] += _delayed_rows(sizes, each)
        result["wakeups"] += [run_async(each, functools.partial(_wakeups, sizes, r, each)) for r in (False, True)]
        tick(0.5 * (k + 1) / len(settings.loops))
    result["memory"] = [run_async(loop, functools.partial(_bytes_per_task, sizes.memory, d)) for d in (3600.0, None)]
    tick(0.6)
    result["fairness"] = [run_async(loop, functools.partial(_fairness, sizes.fair, k)) for k in (True, False)]
    tick(0.8)
    result["limits"] = _limits_rows(sizes, loop)
    return result


def _estimate(settings: Settings) -> float:
    s = _sizes(settings)
    delayed = 2 * len(settings.loops) * (s.span + _lead(s.delayed) + 0.2)
    wakeups = 2 * len(settings.loops) * (s.wake_span + _lead(s.wake_tasks))
    return delayed + wakeups + s.memory * 60e-6 + s.fair * 26e-6 + s.throughput * 3 * s.rounds * 13e-6


def _name(row: dict[str, Any]) -> str:
    return str(row["name"]) + (" [ref]" if row.get("reference") or row["name"] == REFERENCE else "")


def _col(header: str, key: str, spec: str = ",") -> Column:
    return (header, lambda r: format(r[key], spec))


_TABLES: list[tuple[str, str, list[Column], str]] = [
    ("delayed", "how late a scheduled task starts",
     [("contender", _name), _col("loop", "loop", ""), _col("tasks", "tasks"), _col("due over s", "span_s", "g"),
      *(_col(f"{q} ms", f"{q}_ms", ".3f") for q in ("p50", "p99", "max", "min")),
      _col("idle margin s", "margin_s", ".2f")],
     f"target: p99 <= {LATENESS_MS:g} ms. idle margin: seconds from the last submit to the first due time "
     "(negative: tasks fell due while submits ran)"),
    ("memory", "memory per scheduled task",
     [("contender", _name), _col("tasks", "tasks"), _col("bytes/task", "bytes_per_task", ".0f")],
     f"target: scheduled <= {BYTES} B"),
    ("wakeups", "wake-ups of an idle queue",
     [("contender", _name), _col("loop", "loop", ""), _col("tasks", "tasks"), _col("due times", "due_times"),
      _col("timers armed", "armed"), _col("fired", "fired"), _col("fired idle", "idle"),
      _col("fired per due time", "per_due_time", ".2f")],
     f"target: fired per due time <= {WAKES:.2f} (at the due time, plus one early fire on a loop whose timers "
     "count whole milliseconds; not one per task)"),
    ("fairness", "turns across keys",
     [("contender", _name), _col('"a" tasks', "a"), _col('"b" tasks', "b"), _col('first "b" at', "first_b"),
      _col('last "b" at', "last_b")],
     f'target: with keys, the last "b" at position {LAST_B} or before'),
    ("limits", "the cost of keys and limits",
     [("contender", _name), _col("tasks", "tasks"), _col("us/task", "us_per_task", ".2f"),
      _col("tasks/s", "tasks_per_s", ",.0f"),
      ("throughput ratio", lambda r: SELF if r["reference"] else f"{r['throughput_ratio']:.2f}x")],
     "throughput ratio: tasks/s over the [ref] row's (below 1: slower); no target"),
]  # fmt: skip


def _report(result: dict[str, Any], settings: dict[str, Any]) -> str:
    tables = []
    for part, what, columns, note in _TABLES:
        loops = ", ".join(dict.fromkeys(r.get("loop", result["loop"]) for r in result[part]))
        r = result["rounds"]
        rounds = "" if part != "limits" else f", median of {r} rounds" if r > 1 else ", 1 round"
        tables.append(
            table(f"== timing group, {what} ({loops}{rounds})", columns, result[part], [result["method"][part], note])
        )
    return "\n\n".join(tables)


def _plot(result: dict[str, Any], settings: dict[str, Any], out: Path) -> list[Path]:
    fig, ax = figure(size=(8, 5))
    colours = {HYBRID: "tab:blue", REFERENCE: "tab:red"}
    rows, fractions = result["delayed"], [k / _QUANTILES for k in range(_QUANTILES + 1)]
    for row in rows:
        style, _ = LOOP_STYLES.get(row["loop"], ("--", "x"))
        label = f"{row['name']} ({row['loop']})"
        ax.step(row["quantiles_ms"], fractions, where="post", color=colours[row["name"]], linestyle=style, label=label)
    ax.axvline(LATENESS_MS, color="grey", linestyle=":", label=f"{LATENESS_MS:g} ms target (p99)")
    ax.set_xlim(min(0.0, *(r["min_ms"] for r in rows)), max(2 * LATENESS_MS, 1.5 * max(r["p99_ms"] for r in rows)))
    ax.set_xlabel("handler start minus due time (ms; a longer tail is cut at the right edge)")
    ax.set_ylabel("fraction of tasks (cumulative, 0 to 1)")
    title(ax, f"How late does a scheduled task start? {rows[0]['tasks']:,} tasks due over {rows[0]['span_s']:g} s")
    ax.legend(fontsize="small")
    return [save(fig, out / "timing.png")]


def _summary(result: dict[str, Any], settings: dict[str, Any]) -> list[SummaryRow]:
    pairs = zip(result["delayed"][::2], result["delayed"][1::2], strict=True)  # per loop: ours, the reference
    rows = [
        SummaryRow(f"scheduled task start lateness p99 ({o['loop']})", "ms", o["p99_ms"], REFERENCE, t["p99_ms"])
        for o, t in pairs
    ]
    for o, t in zip(result["wakeups"][::2], result["wakeups"][1::2], strict=True):
        path = f"timers fired, {o['tasks']:,} tasks at {o['due_times']} due times ({o['loop']})"
        rows.append(SummaryRow(path, "timers", o["fired"], REFERENCE, t["fired"]))
    return rows


def _targets(result: dict[str, Any], settings: dict[str, Any]) -> list[Mark]:
    marks = [
        mark(settings, f"scheduled task start lateness p99 ({r['loop']})", r["p99_ms"], LATENESS_MS, "ms")
        for r in result["delayed"]
        if r["name"] == HYBRID
    ]
    marks += [
        mark(settings, f"timer fires per due time, {r['tasks']:,} tasks ({r['loop']})", r["per_due_time"], WAKES, "x")
        for r in result["wakeups"][::2]
    ]
    memory, fair = result["memory"][0], result["fairness"][0]
    marks.append(
        mark(settings, f"bytes per scheduled task at {memory['tasks']:,}", memory["bytes_per_task"], BYTES, "B")
    )
    # A position, which mark() has no unit for.
    last, verdict = fair["last_b"], None if settings["quick"] else fair["last_b"] <= LAST_B
    what = f'start position of the last "b" task behind {fair["a"]:,} "a"'
    return [*marks, Mark(what, last, f"{last:,}", f"<= {LAST_B}", verdict)]


def _sizes_line(settings: Settings) -> str:
    s = _sizes(settings)
    return (
        f"timing: {s.delayed:,} tasks due over {s.span:g} s, {s.wake_tasks:,} at {s.wake_times} due times, "
        f'{s.fair:,} of key "a", {s.throughput:,} tasks x {s.rounds} rounds per limits row'
    )


GROUP = register(
    Group(
        name="timing",
        order=75,
        question="How late do scheduled tasks start, what do they cost, and do keys take fair turns?",
        report=_report,
        once=_once,
        estimate=_estimate,
        plot=_plot,
        summary=_summary,
        targets=_targets,
        sizes=_sizes_line,
    )
)
