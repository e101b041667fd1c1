"""The sync group: N no-op sync tasks on 8 threads, from async code and from plain threads."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from collections.abc import Sequence
from time import perf_counter
from typing import Any

from hybrid_queue import HybridQueue

from ._coroutine import on_loop
from ._harness import WORKERS, CheckFailed, Tally, check_equal, loop_policy, run_in_threads, slices
from ._registry import Mark, SummaryRow, register
from ._report import mark
from ._throughput import Contender, by_name, throughput_group

__all__ = ["CONTENDERS", "GROUP", "REFERENCE", "REFERENCE_THREADS", "TARGET_BLOCKING", "TARGET_ROW"]

REFERENCE = f"ThreadPoolExecutor({WORKERS}).submit + wait"
REFERENCE_THREADS = f"ThreadPoolExecutor.submit from {WORKERS} threads"
RUN_IN_EXECUTOR = "loop.run_in_executor + gather"
TARGET_ROW = "hybrid_queue: await submit(sync), await each"
TARGET_BLOCKING = f"hybrid_queue: submit_blocking from {WORKERS} threads"


def _check_done(who: str, futures: Sequence[concurrent.futures.Future[Any]]) -> None:
    failed = sum(1 for f in futures if not f.done() or f.cancelled() or f.exception() is not None)
    if failed:
        raise CheckFailed(f"{who}: {failed} of {len(futures)} futures did not complete with a result")


def _executor_round(n: int, loop: str) -> float:
    # No event loop at all: the plain sync reference, the same under either loop kind.
    tally = Tally(n)
    mark = tally.function()
    started = perf_counter()
    pool = concurrent.futures.ThreadPoolExecutor(WORKERS)
    futures = [pool.submit(mark, i) for i in range(n)]
    concurrent.futures.wait(futures)
    pool.shutdown(wait=True)
    elapsed = perf_counter() - started
    _check_done(REFERENCE, futures)
    tally.check(REFERENCE)
    return elapsed


def _executor_threads_round(n: int, loop: str) -> float:
    # The second reference: 8 plain threads share one pool, N/8 submits each.
    tally = Tally(n)
    mark = tally.function()
    started = perf_counter()
    pool = concurrent.futures.ThreadPoolExecutor(WORKERS)

    def submitter(part: range) -> list[concurrent.futures.Future[None]]:
        submit = pool.submit
        return [submit(mark, i) for i in part]

    parts = run_in_threads([functools.partial(submitter, part) for part in slices(n, WORKERS)])
    futures = [f for part in parts for f in part]
    concurrent.futures.wait(futures)
    pool.shutdown(wait=True)
    elapsed = perf_counter() - started
    _check_done(REFERENCE_THREADS, futures)
    tally.check(REFERENCE_THREADS)
    return elapsed


async def _run_in_executor_round(n: int) -> float:
    tally = Tally(n)
    mark = tally.function()
    started = perf_counter()
    loop = asyncio.get_running_loop()
    pool = concurrent.futures.ThreadPoolExecutor(WORKERS)
    await asyncio.gather(*[loop.run_in_executor(pool, mark, i) for i in range(n)])
    pool.shutdown(wait=True)  # every task is done: this only joins idle threads
    elapsed = perf_counter() - started
    tally.check(RUN_IN_EXECUTOR)
    return elapsed


async def _hybrid_queue_round(n: int) -> float:
    # Sync handlers submitted from async code; the queue owns its 8-thread pool.
    tally = Tally(n)
    mark = tally.function()
    started = perf_counter()
    queue = HybridQueue(WORKERS)
    await queue.start()
    submit = queue.submit
    handles = [await submit(mark, i) for i in range(n)]
    for handle in handles:
        await handle
    await queue.shutdown()
    elapsed = perf_counter() - started
    tally.check(TARGET_ROW)
    check_equal(TARGET_ROW, "stats().completed", queue.stats().completed, n)
    return elapsed


def _submit_blocking_round(n: int, loop: str) -> float:
    # A sync program: start_background() runs the queue on a loop of its own
    # (of kind ``loop``), 8 plain threads call submit_blocking, N/8 each.
    _check_background_loop(loop)
    tally = Tally(n)
    mark = tally.function()
    started = perf_counter()
    queue = HybridQueue(WORKERS)
    with loop_policy(loop):
        queue.start_background()

    def submitter(part: range) -> list[concurrent.futures.Future[None]]:
        submit_blocking = queue.submit_blocking
        return [submit_blocking(mark, i) for i in part]

    parts = run_in_threads([functools.partial(submitter, part) for part in slices(n, WORKERS)])
    futures = [f for part in parts for f in part]
    concurrent.futures.wait(futures)
    queue.shutdown_blocking()
    elapsed = perf_counter() - started
    _check_done(TARGET_BLOCKING, futures)
    tally.check(TARGET_BLOCKING)
    check_equal(TARGET_BLOCKING, "stats().completed", queue.stats().completed, n)
    return elapsed


@functools.cache
def _check_background_loop(loop: str) -> None:
    # Once per loop kind, untimed: prove start_background() really ran on that kind of loop.
    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    queue = HybridQueue(1)
    with loop_policy(loop):
        queue.start_background()
    try:
        module = queue.submit_blocking(loop_module).result(timeout=10)
    finally:
        queue.shutdown_blocking()
    if (loop == "uvloop") != module.startswith("uvloop"):
        raise CheckFailed(f"start_background() under the {loop} policy ran on a loop from {module}")


CONTENDERS = (
    Contender(REFERENCE, _executor_round, None, "no event loop"),
    Contender(RUN_IN_EXECUTOR, on_loop(_run_in_executor_round), REFERENCE, f"ThreadPoolExecutor({WORKERS})"),
    Contender(TARGET_ROW, on_loop(_hybrid_queue_round), REFERENCE, "the target row"),
    Contender(REFERENCE_THREADS, _executor_threads_round, None, "no event loop; second reference"),
    Contender(TARGET_BLOCKING, _submit_blocking_round, REFERENCE_THREADS, "start_background() + shutdown_blocking()"),
)


def _summary(result: dict[str, Any], settings: dict[str, Any]) -> list[SummaryRow]:
    out = []
    for loop, rows in result.items():
        for path, ours, peers in (
            ("sync handlers, await submit", TARGET_ROW, (REFERENCE, RUN_IN_EXECUTOR)),
            (f"submit_blocking from {WORKERS} threads", TARGET_BLOCKING, (REFERENCE_THREADS,)),
        ):
            mine = by_name(rows, ours)["us_per_task"]
            out += [
                SummaryRow(f"{path} ({loop})", "us/task", mine, peer, by_name(rows, peer)["us_per_task"])
                for peer in peers
            ]
    return out


def _targets(result: dict[str, Any], settings: dict[str, Any]) -> list[Mark]:
    marks = []
    for loop, rows in result.items():
        hq = by_name(rows, TARGET_ROW)
        marks.append(mark(settings, f"sync path ({loop}): hybrid_queue vs TPE.submit", hq["ratio"], 1.25, "x"))
        faster = by_name(rows, RUN_IN_EXECUTOR)["median_s"] / hq["median_s"]
        marks.append(
            mark(
                settings,
                f"sync path ({loop}): hybrid_queue faster than run_in_executor",
                faster,
                3.0,
                "x",
                at_least=True,
            )
        )
        blocking = by_name(rows, TARGET_BLOCKING)["ratio"]
        marks.append(
            mark(
                settings,
                f"submit_blocking from {WORKERS} threads ({loop}) vs TPE.submit from {WORKERS} threads",
                blocking,
                1.25,
                "x",
            )
        )
    return marks


GROUP = register(
    throughput_group(
        "sync",
        20,
        f"How long does a no-op sync task take on {WORKERS} threads, against concurrent.futures?",
        lambda settings: CONTENDERS,
        summary=_summary,
        targets=_targets,
    )
)
