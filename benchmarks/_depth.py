"""The depth group: what submit and dispatch cost per task when D tasks wait in the queue."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from pathlib import Path
from time import perf_counter
from typing import Any

from hybrid_queue import HybridQueue

from ._coroutine import priority_queue_worker
from ._harness import WORKERS, Job, Samples, Settings, Tally, check_equal, median, run_async
from ._plots import LOOP_STYLES, figure, save, title
from ._registry import Group, Mark, SummaryRow, register
from ._report import SELF, Column, mark, table

__all__ = ["GROUP", "KINDS", "depth_jobs", "depth_rows", "repetitions"]

HYBRID = "hybrid_queue"
REFERENCE = "asyncio.PriorityQueue"
KINDS = (HYBRID, REFERENCE)

# Small depths finish in a millisecond or two; each round repeats them until
# about this many tasks ran, so they are not one noisy sample.
_TASKS_PER_SAMPLE = 100_000
_MAX_REPETITIONS = 20

TIMED_SPAN = (
    "D coroutine no-op tasks submitted before start() (submit column), "
    f"then timed from start() until every handle is done ({WORKERS} workers; drain column); "
    "shutdown is not timed"
)


def repetitions(depth: int) -> int:
    """How often one round repeats a run at ``depth``."""
    return max(1, min(_MAX_REPETITIONS, _TASKS_PER_SAMPLE // depth))


async def _hybrid_queue(depth: int) -> tuple[float, float]:
    tally = Tally(depth)
    mark = tally.coroutine()
    queue = HybridQueue(WORKERS)
    submit = queue.submit
    t0 = perf_counter()
    handles = [await submit(mark, i) for i in range(depth)]
    t1 = perf_counter()
    await queue.start()
    for handle in handles:
        await handle
    t2 = perf_counter()
    await queue.shutdown()
    who = f"{HYBRID} at depth {depth}"
    tally.check(who)
    check_equal(who, "stats().completed", queue.stats().completed, depth)
    return t1 - t0, t2 - t1


async def _priority_queue(depth: int) -> tuple[float, float]:
    # The coroutine group's reference, filled before its workers exist.
    tally = Tally(depth)
    mark = tally.coroutine()
    loop = asyncio.get_running_loop()
    queue: asyncio.PriorityQueue[Any] = asyncio.PriorityQueue()
    t0 = perf_counter()
    futures = []
    for i in range(depth):
        future = loop.create_future()
        queue.put_nowait((0, i, mark, i, future))
        futures.append(future)
    t1 = perf_counter()
    tasks = [asyncio.create_task(priority_queue_worker(queue)) for _ in range(WORKERS)]
    for future in futures:
        await future
    t2 = perf_counter()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    tally.check(f"{REFERENCE} at depth {depth}")
    return t1 - t0, t2 - t1


def _run(kind: str, depth: int, loop: str) -> list[tuple[float, float]]:
    one = _hybrid_queue if kind == HYBRID else _priority_queue
    return [run_async(loop, functools.partial(one, depth)) for _ in range(repetitions(depth))]


def depth_jobs(settings: Settings) -> list[Job]:
    """One job per loop kind, contender and depth; a round returns (submit_s, drain_s) per repetition."""
    return [
        Job("depth", loop, f"{kind} @ {depth}", functools.partial(_run, kind, depth, loop))
        for loop in settings.loops
        for depth in settings.depths
        for kind in KINDS
    ]


def depth_rows(
    samples: dict[tuple[str, str, str], list[Any]], loop: str, depths: Sequence[int]
) -> list[dict[str, Any]]:
    """Per contender and depth: median us per task to submit, to drain, and the drain ratio to the smallest depth."""
    rows = []
    for kind in KINDS:
        first_drain = 0.0
        for depth in depths:
            runs = [run for round_runs in samples[("depth", loop, f"{kind} @ {depth}")] for run in round_runs]
            submit_us = median([s for s, _ in runs]) / depth * 1e6
            drain_us = median([d for _, d in runs]) / depth * 1e6
            first_drain = first_drain or drain_us
            rows.append(
                {
                    "name": kind,
                    "depth": depth,
                    "runs": len(runs),
                    "submit_runs_s": [s for s, _ in runs],
                    "drain_runs_s": [d for _, d in runs],
                    "submit_us_per_task": submit_us,
                    "drain_us_per_task": drain_us,
                    "total_us_per_task": submit_us + drain_us,
                    "drain_ratio": drain_us / first_drain,
                }
            )
    return rows


def _drain_ratio(smallest: int, row: dict[str, Any]) -> str:
    return SELF if row["depth"] == smallest else f"{row['drain_ratio']:.2f}x"


def _report(result: dict[str, Any], settings: dict[str, Any]) -> str:
    tables = []
    for loop, rows in result.items():
        smallest = min(r["depth"] for r in rows)
        columns: list[Column] = [
            ("contender", lambda r: r["name"]),
            ("depth", lambda r: f"{r['depth']:,}"),
            ("runs", lambda r: str(r["runs"])),
            ("submit us/task", lambda r: f"{r['submit_us_per_task']:.2f}"),
            ("drain us/task", lambda r: f"{r['drain_us_per_task']:.2f}"),
            ("total us/task", lambda r: f"{r['total_us_per_task']:.2f}"),
        ]
        # A row at the smallest depth would compare its drain time with itself;
        # with one depth (a quick run) that is every row, so the column goes.
        if any(r["depth"] > smallest for r in rows):
            columns.append(("drain vs smallest", functools.partial(_drain_ratio, smallest)))
        tables.append(table(f"== depth group, {loop} loop (medians over all runs)", columns, rows, [TIMED_SPAN]))
    return "\n\n".join(tables)


def _plot(result: dict[str, Any], settings: dict[str, Any], out: Path) -> list[Path]:
    # One colour per contender and phase; the loop kind is the line's style,
    # so that the two loops' lines of one series read as a pair.
    colours = {
        (HYBRID, "drain"): "tab:blue",
        (HYBRID, "submit"): "tab:cyan",
        (REFERENCE, "drain"): "tab:red",
        (REFERENCE, "submit"): "tab:orange",
    }
    fig, ax = figure(size=(10, 5))
    for loop, rows in result.items():
        linestyle, marker = LOOP_STYLES.get(loop, ("--", "x"))
        for kind in KINDS:
            mine = [r for r in rows if r["name"] == kind]
            for phase in ("drain", "submit"):
                ax.plot(
                    [r["depth"] for r in mine],
                    [r[f"{phase}_us_per_task"] for r in mine],
                    color=colours[(kind, phase)],
                    linestyle=linestyle,
                    marker=marker,
                    label=f"{kind} {phase} ({loop})",
                )
    ax.set_xscale("log")
    ax.set_xlabel("tasks queued before start (count, log scale)")
    ax.set_ylabel("microseconds per task (median)")
    title(ax, "Does the cost per task grow with the queue's depth?")
    ax.set_ylim(bottom=0)
    fig.legend(loc="outside right center", fontsize="small")
    return [save(fig, out / "depth.png")]


def _summary(result: dict[str, Any], settings: dict[str, Any]) -> list[SummaryRow]:
    out = []
    for loop, rows in result.items():
        deepest = max(r["depth"] for r in rows)
        ours, theirs = ({r["name"]: r for r in rows if r["depth"] == deepest}[k] for k in KINDS)
        out.append(
            SummaryRow(
                f"submit + drain at depth {deepest:,} ({loop})",
                "us/task",
                ours["total_us_per_task"],
                REFERENCE,
                theirs["total_us_per_task"],
            )
        )
    return out


def _targets(result: dict[str, Any], settings: dict[str, Any]) -> list[Mark]:
    marks = []
    for loop, rows in result.items():
        hq_rows = [r for r in rows if r["name"] == HYBRID]
        first, last = hq_rows[0], hq_rows[-1]
        if first is last:
            continue  # one depth only: the ratio would be a drain time over itself
        ratio = last["drain_us_per_task"] / first["drain_us_per_task"]
        marks.append(
            mark(settings, f"drain cost at depth {last['depth']:,} vs {first['depth']:,} ({loop})", ratio, 2.0, "x")
        )
    return marks


def _sizes(settings: Settings) -> str:
    return f"depths {', '.join(f'{d:,}' for d in settings.depths)}"


def _rows(samples: Samples, settings: Settings) -> dict[str, Any]:
    return {loop: depth_rows(samples, loop, settings.depths) for loop in settings.loops}


GROUP = register(
    Group(
        name="depth",
        order=40,
        question="Does the cost per task grow with the queue's depth?",
        report=_report,
        jobs=depth_jobs,
        rows=_rows,
        plot=_plot,
        summary=_summary,
        targets=_targets,
        sizes=_sizes,
    )
)
