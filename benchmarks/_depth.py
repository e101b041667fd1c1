"""The depth group: what submit and dispatch cost per task when D tasks wait in the queue."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from time import perf_counter
from typing import Any

from hybrid_queue import HybridQueue

from ._coroutine import priority_queue_worker
from ._harness import WORKERS, Job, Settings, Tally, check_equal, median, run_async

__all__ = ["KINDS", "depth_jobs", "depth_rows", "repetitions"]

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
