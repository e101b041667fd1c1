"""The coroutine group: N no-op coroutine tasks through 8 workers, the ways an asyncio user would."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from time import perf_counter
from typing import Any

import aiojobs

from hybrid_queue import HybridQueue

from ._harness import WORKERS, Tally, check_equal, run_async
from ._registry import Mark, SummaryRow, register
from ._report import mark
from ._throughput import OURS, Contender, by_name, throughput_group

__all__ = [
    "CONTENDERS",
    "GROUP",
    "REFERENCE",
    "TARGET_ROW",
    "hybrid_queue_round",
    "on_loop",
    "priority_queue_round",
    "priority_queue_worker",
]

REFERENCE = f"asyncio.PriorityQueue + {WORKERS} workers"
TARGET_ROW = "hybrid_queue: await submit, await each"

# What the reference queues: (priority, seq, handler, its argument, the task's future).
_Entry = tuple[int, int, Callable[[int], Awaitable[object]], int, asyncio.Future[object]]


async def priority_queue_worker(queue: asyncio.PriorityQueue[_Entry]) -> None:
    """One worker of the reference: run each entry's handler and settle its future, until cancelled."""
    while True:
        _, _, fn, arg, future = await queue.get()
        try:
            future.set_result(await fn(arg))
        except Exception as exc:
            future.set_exception(exc)


async def priority_queue_round(n: int, workers: int) -> float:
    """The reference: a hand-rolled priority queue feeding ``workers`` worker coroutines.

    Written as a competent user would: ``(priority, seq, fn, arg, future)``
    tuples (``seq`` keeps equal priorities FIFO and stops the tuples from
    ever comparing functions), ``put_nowait`` on the unbounded queue, one
    future per task, and the workers cancelled at the end.
    """
    tally = Tally(n)
    mark = tally.coroutine()
    started = perf_counter()
    loop = asyncio.get_running_loop()
    queue: asyncio.PriorityQueue[_Entry] = asyncio.PriorityQueue()
    tasks = [asyncio.create_task(priority_queue_worker(queue)) for _ in range(workers)]
    futures = []
    for i in range(n):
        future = loop.create_future()
        queue.put_nowait((0, i, mark, i, future))
        futures.append(future)
    for future in futures:
        await future
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    elapsed = perf_counter() - started
    tally.check(REFERENCE)
    return elapsed


async def hybrid_queue_round(
    n: int, workers: int, *, wait: str = "each", nowait: bool = False, batch: bool = False
) -> float:
    """hybrid_queue with coroutine handlers: submit all N, then wait for every handle.

    ``wait="each"`` awaits the handles one by one, ``"gather"`` passes them
    all to ``asyncio.gather`` (a TaskHandle is a Future, so gather wraps
    nothing in a Task). ``nowait`` submits with ``submit_nowait``, ``batch``
    with one ``submit_many``.
    """
    tally = Tally(n)
    mark = tally.coroutine()
    started = perf_counter()
    queue = HybridQueue(workers)
    await queue.start()
    if batch:
        handles = await queue.submit_many(mark, range(n))
    elif nowait:
        submit_nowait = queue.submit_nowait
        handles = [submit_nowait(mark, i) for i in range(n)]
    else:
        submit = queue.submit
        handles = [await submit(mark, i) for i in range(n)]
    if wait == "gather":
        await asyncio.gather(*handles)
    else:
        for handle in handles:
            await handle
    await queue.shutdown()
    elapsed = perf_counter() - started
    who = f"hybrid_queue ({workers} workers, wait={wait}, nowait={nowait}, batch={batch})"
    tally.check(who)
    check_equal(who, "stats().completed", queue.stats().completed, n)
    return elapsed


async def _gather_round(n: int) -> float:
    # No queue and no limit: one Task per coroutine, all at once.
    tally = Tally(n)
    mark = tally.coroutine()
    started = perf_counter()
    await asyncio.gather(*[mark(i) for i in range(n)])
    elapsed = perf_counter() - started
    tally.check("asyncio.gather")
    return elapsed


async def _aiojobs_round(n: int) -> float:
    # wait_timeout=None: wait_and_close() must wait for every job, not give
    # up silently after its default 60 s. pending_limit stays at its default
    # (10,000), so spawn() waits for room past that, as it would for a user.
    tally = Tally(n)
    mark = tally.coroutine()
    started = perf_counter()
    scheduler = aiojobs.Scheduler(limit=WORKERS, wait_timeout=None)
    for i in range(n):
        await scheduler.spawn(mark(i))
    await scheduler.wait_and_close()
    elapsed = perf_counter() - started
    tally.check("aiojobs")
    return elapsed


def on_loop(make_round: Callable[[int], Coroutine[Any, Any, float]]) -> Callable[[int, str], float]:
    """Adapt an async round, ``make_round(n)``, to the Contender signature ``run(n, loop)``."""

    def run(n: int, loop: str) -> float:
        return run_async(loop, lambda: make_round(n))

    return run


CONTENDERS = (
    Contender(
        "asyncio.gather, one Task each",
        on_loop(_gather_round),
        REFERENCE,
        "no queue and no worker limit: every coroutine wrapped in its own Task",
    ),
    Contender(REFERENCE, on_loop(lambda n: priority_queue_round(n, WORKERS)), None, "put_nowait + one future per task"),
    Contender(
        f"aiojobs.Scheduler(limit={WORKERS})",
        on_loop(_aiojobs_round),
        REFERENCE,
        "await spawn() each, then wait_and_close()",
    ),
    Contender(TARGET_ROW, on_loop(lambda n: hybrid_queue_round(n, WORKERS)), REFERENCE, "the target row"),
    Contender(
        "hybrid_queue: await submit, gather",
        on_loop(lambda n: hybrid_queue_round(n, WORKERS, wait="gather")),
        REFERENCE,
        "asyncio.gather(*handles)",
    ),
    Contender(
        "hybrid_queue: submit_nowait, await each",
        on_loop(lambda n: hybrid_queue_round(n, WORKERS, nowait=True)),
        REFERENCE,
        "the like-for-like of put_nowait",
    ),
    Contender(
        "hybrid_queue: submit_many, await each",
        on_loop(lambda n: hybrid_queue_round(n, WORKERS, batch=True)),
        REFERENCE,
        "one batch of N",
    ),
)


def peer_rows(path: str, result: dict[str, Any], ours: str) -> list[SummaryRow]:
    """Summary rows of the row ``ours`` against every row of another library, per loop kind, in us/task."""
    return [
        SummaryRow(f"{path} ({loop})", "us/task", by_name(rows, ours)["us_per_task"], row["name"], row["us_per_task"])
        for loop, rows in result.items()
        for row in rows
        if not row["name"].startswith(OURS)
    ]


def _summary(result: dict[str, Any], settings: dict[str, Any]) -> list[SummaryRow]:
    return peer_rows("coroutine handlers, await submit", result, TARGET_ROW)


def _targets(result: dict[str, Any], settings: dict[str, Any]) -> list[Mark]:
    return [
        mark(settings, f"coroutine path ({loop}): hybrid_queue vs PriorityQueue reference", row["ratio"], 1.0, "x")
        for loop, rows in result.items()
        for row in [by_name(rows, TARGET_ROW)]
    ]


GROUP = register(
    throughput_group(
        "coroutine",
        10,
        f"How long does a no-op coroutine task take through {WORKERS} workers, against {REFERENCE}?",
        lambda settings: CONTENDERS,
        summary=_summary,
        targets=_targets,
    )
)
