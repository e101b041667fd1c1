"""The latency group: how soon a priority-10 task starts while a backlog waits and every worker is busy."""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from time import perf_counter
from typing import Any

from hybrid_queue import HybridQueue

from ._harness import WORKERS, CheckFailed, Job, Samples, Settings, Tally, percentile, run_async
from ._plots import LOOP_STYLES, figure, save, title
from ._registry import Group, Mark, SummaryRow, register
from ._report import Column, mark, table

__all__ = ["GROUP", "KINDS", "latency_jobs", "latency_rows"]

HYBRID = "hybrid_queue"
REFERENCE = "asyncio.PriorityQueue"
KINDS = (HYBRID, REFERENCE)

BUSY_SECONDS = 0.001
URGENT = 10
# Polls (of 0.2 ms) a probe may wait for "all workers busy, backlog waiting"
# to hold before the round gives up on it.
_PREMISE_POLLS = 500

METHOD = (
    f"{WORKERS} workers busy with `await asyncio.sleep({BUSY_SECONDS})` tasks of priority 0 and a backlog "
    f"waiting; each probe is a priority-{URGENT} coroutine task, timed from just before `submit` to the "
    "first line of its handler; probes follow one another after a random 0-1 ms pause, slept in a thread "
    "so that the probe's phase is independent of the loop's timer beat"
)


class _Busy:
    """Priority-0 work that keeps the workers occupied, and counts how many run right now."""

    def __init__(self) -> None:
        self.running = 0

    async def __call__(self) -> None:
        self.running += 1
        try:
            await asyncio.sleep(BUSY_SECONDS)
        finally:
            self.running -= 1


async def _probe_loop(
    probes: int,
    seed: int,
    waiting: Callable[[], int],
    busy: _Busy,
    top_up: Callable[[], Awaitable[None]],
    submit_probe: Callable[[int], Awaitable[asyncio.Future[Any]]],
    starts: list[float],
) -> list[float]:
    # Shared by both contenders: wait until every worker is busy and tasks
    # wait, then submit one urgent probe and wait for it to finish.
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    latencies = []
    await asyncio.sleep(0.005)
    for k in range(probes):
        # The pause is slept in a thread, not with asyncio.sleep: the loop's
        # timers fire on a coarse (about 1 ms) beat, and a probe woken by a
        # timer would wake together with the busy tasks' timers, always at
        # the same phase of their beat. A thread wakes the loop at any time.
        await loop.run_in_executor(None, time.sleep, rng.uniform(0.0, 0.001))
        await top_up()
        for _ in range(_PREMISE_POLLS):
            if busy.running == WORKERS and waiting() > 0:
                break
            await asyncio.sleep(0.0002)
        else:
            raise CheckFailed(f"latency probe {k}: never saw all {WORKERS} workers busy with a backlog waiting")
        t0 = perf_counter()
        await (await submit_probe(k))
        latencies.append(starts[k] - t0)
    return latencies


async def _hybrid_queue(probes: int, backlog: int, seed: int) -> list[float]:
    tally = Tally(probes)
    starts = [0.0] * probes
    busy = _Busy()

    async def probe(k: int) -> None:
        starts[k] = perf_counter()
        tally.hits[k] += 1

    queue = HybridQueue(WORKERS)
    for _ in range(backlog):
        await queue.submit(busy)
    await queue.start()

    async def top_up() -> None:
        if queue.stats().pending < backlog // 2:
            for _ in range(backlog // 2):
                await queue.submit(busy)

    async def submit_probe(k: int) -> asyncio.Future[Any]:
        return await queue.submit(probe, k, priority=URGENT)

    try:
        latencies = await _probe_loop(probes, seed, lambda: queue.stats().pending, busy, top_up, submit_probe, starts)
    finally:
        await queue.shutdown(cancel_pending=True)
    tally.check(f"{HYBRID} latency probes")
    return latencies


async def _priority_queue(probes: int, backlog: int, seed: int) -> list[float]:
    tally = Tally(probes)
    starts = [0.0] * probes
    busy = _Busy()
    loop = asyncio.get_running_loop()
    queue: asyncio.PriorityQueue[tuple[int, int, Any, tuple[Any, ...], asyncio.Future[Any]]] = asyncio.PriorityQueue()
    seq = 0

    async def probe(k: int) -> None:
        starts[k] = perf_counter()
        tally.hits[k] += 1

    def put(priority: int, fn: Any, *args: Any) -> asyncio.Future[Any]:
        nonlocal seq
        future = loop.create_future()
        queue.put_nowait((-priority, seq, fn, args, future))  # a min-heap: negate to run high first
        seq += 1
        return future

    async def worker() -> None:
        while True:
            _, _, fn, args, future = await queue.get()
            try:
                future.set_result(await fn(*args))
            except Exception as exc:
                future.set_exception(exc)

    for _ in range(backlog):
        put(0, busy)
    tasks = [asyncio.create_task(worker()) for _ in range(WORKERS)]

    async def top_up() -> None:
        if queue.qsize() < backlog // 2:
            for _ in range(backlog // 2):
                put(0, busy)

    async def submit_probe(k: int) -> asyncio.Future[Any]:
        return put(URGENT, probe, k)

    try:
        latencies = await _probe_loop(probes, seed, queue.qsize, busy, top_up, submit_probe, starts)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    tally.check(f"{REFERENCE} latency probes")
    return latencies


_CONTENDERS = {HYBRID: _hybrid_queue, REFERENCE: _priority_queue}


class _Rounds:
    """One contender's rounds: each call runs the next round, seeded with its round number.

    The seed fixes the sequence of pauses between probes, so round r of every
    contender sees the same pauses.
    """

    def __init__(
        self, one: Callable[[int, int, int], Coroutine[Any, Any, list[float]]], loop: str, settings: Settings
    ) -> None:
        self._one = one
        self._loop = loop
        # The probes spread over the rounds, the first rounds taking one more when they do not divide.
        share, extra = divmod(settings.probes, settings.rounds)
        self._probes = [share + (r < extra) for r in range(settings.rounds)]
        self._backlog = settings.backlog
        self._round = 0

    def __call__(self) -> list[float]:
        r, self._round = self._round, self._round + 1
        return run_async(self._loop, functools.partial(self._one, self._probes[r], self._backlog, r))


def latency_jobs(settings: Settings) -> list[Job]:
    """One job per loop kind and contender; each round runs its share of the probes."""
    return [
        Job("latency", loop, kind, _Rounds(_CONTENDERS[kind], loop, settings))
        for loop in settings.loops
        for kind in KINDS
    ]


def latency_rows(samples: dict[tuple[str, str, str], list[Any]], loop: str) -> list[dict[str, Any]]:
    """Per contender: the probes of every round pooled, as percentiles in milliseconds."""
    rows = []
    for kind in KINDS:
        latencies = [x for round_ in samples[("latency", loop, kind)] for x in round_]
        rows.append(
            {
                "name": kind,
                "probes": len(latencies),
                "p50_ms": percentile(latencies, 50) * 1e3,
                "p90_ms": percentile(latencies, 90) * 1e3,
                "p99_ms": percentile(latencies, 99) * 1e3,
                "max_ms": max(latencies) * 1e3,
                "latencies_ms": [x * 1e3 for x in latencies],
            }
        )
    return rows


def _report(result: dict[str, Any], settings: dict[str, Any]) -> str:
    columns: list[Column] = [
        ("contender", lambda r: r["name"]),
        ("probes", lambda r: str(r["probes"])),
        ("p50 ms", lambda r: f"{r['p50_ms']:.3f}"),
        ("p90 ms", lambda r: f"{r['p90_ms']:.3f}"),
        ("p99 ms", lambda r: f"{r['p99_ms']:.3f}"),
        ("max ms", lambda r: f"{r['max_ms']:.3f}"),
    ]
    return "\n\n".join(
        table(f"== latency group, {loop} loop: start latency of a priority-{URGENT} task", columns, rows, [METHOD])
        for loop, rows in result.items()
    )


def _plot(result: dict[str, Any], settings: dict[str, Any], out: Path) -> list[Path]:
    fig, ax = figure(size=(8, 5))
    colours = {HYBRID: "tab:blue", REFERENCE: "tab:red"}
    for loop, rows in result.items():
        linestyle, _ = LOOP_STYLES.get(loop, ("--", "x"))
        for row in rows:
            values = sorted(row["latencies_ms"])
            ax.step(
                values,
                [(i + 1) / len(values) for i in range(len(values))],
                where="post",
                color=colours.get(row["name"]),
                linestyle=linestyle,
                label=f"{row['name']} ({loop})",
            )
    ax.axvline(2.0, color="grey", linestyle=":", label="2 ms target (p99)")
    ax.set_xlabel("submit to handler start (ms)")
    ax.set_ylabel("fraction of probes (cumulative, 0 to 1)")
    title(ax, f"How soon does a priority-{URGENT} task start while all {WORKERS} workers are busy?")
    ax.legend(fontsize="small")
    return [save(fig, out / "latency.png")]


def _summary(result: dict[str, Any], settings: dict[str, Any]) -> list[SummaryRow]:
    out = []
    for loop, rows in result.items():
        by_kind = {r["name"]: r for r in rows}
        out.append(
            SummaryRow(
                f"priority-{URGENT} start latency p99 ({loop})",
                "ms",
                by_kind[HYBRID]["p99_ms"],
                REFERENCE,
                by_kind[REFERENCE]["p99_ms"],
            )
        )
    return out


def _targets(result: dict[str, Any], settings: dict[str, Any]) -> list[Mark]:
    return [
        mark(settings, f"priority-{URGENT} start latency p99 ({loop})", row["p99_ms"], 2.0, "ms")
        for loop, rows in result.items()
        for row in rows
        if row["name"] == HYBRID
    ]


def _sizes(settings: Settings) -> str:
    return f"{settings.probes} latency probes per contender and loop, backlog {settings.backlog:,}"


def _rows(samples: Samples, settings: Settings) -> dict[str, Any]:
    return {loop: latency_rows(samples, loop) for loop in settings.loops}


GROUP = register(
    Group(
        name="latency",
        order=50,
        question=f"How soon does a priority-{URGENT} task start while every worker is busy?",
        report=_report,
        jobs=latency_jobs,
        rows=_rows,
        plot=_plot,
        summary=_summary,
        targets=_targets,
        sizes=_sizes,
    )
)
