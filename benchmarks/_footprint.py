"""The footprint group: bytes of memory per task waiting in the queue, measured with tracemalloc."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from time import perf_counter
from typing import Any

from hybrid_queue import HybridQueue

from ._harness import WORKERS, CheckFailed, Settings, check_equal, run_async
from ._plots import figure, save, title
from ._registry import Group, Mark, SummaryRow, Tick, register
from ._report import Column, mark, table

__all__ = ["GROUP", "METHOD", "footprint_rows"]

HYBRID = "hybrid_queue: await submit"
BLOCKING = "hybrid_queue: submit_blocking"
REFERENCE = "asyncio.PriorityQueue entry + future"

METHOD = (
    "tracemalloc: traced bytes after submitting D no-op tasks (no arguments) to a queue that was "
    "never started, minus the bytes before, divided by D; the queue object and the list that holds "
    "the handles are made before the first reading, the handle of each task counts; then "
    "shutdown(cancel_pending=True), timed (still under tracemalloc, several times slower than without) and checked"
)


@contextlib.contextmanager
def _tracing() -> Iterator[None]:
    # Leaves tracemalloc as it found it (a caller may run under -X tracemalloc).
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        yield
    finally:
        if not was_tracing:
            tracemalloc.stop()


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def _noop() -> None:
    return None


def _noop_sync() -> None:
    return None


async def _hybrid_queue(depth: int) -> dict[str, Any]:
    who = HYBRID
    queue = HybridQueue(WORKERS)
    handles: list[Any] = [None] * depth
    submit = queue.submit
    before = _traced()
    for i in range(depth):
        handles[i] = await submit(_noop)
    after = _traced()
    started = perf_counter()
    await queue.shutdown(cancel_pending=True)
    shutdown_s = perf_counter() - started
    check_equal(who, "handles cancelled", sum(1 for h in handles if h.cancelled()), depth)
    check_equal(who, "stats().cancelled", queue.stats().cancelled, depth)
    return {"name": who, "bytes_per_task": (after - before) / depth, "cancel_shutdown_s": shutdown_s}


def _hybrid_queue_blocking(depth: int) -> dict[str, Any]:
    # submit_blocking may be called before the queue runs on any loop; each
    # task's handle is then a concurrent.futures.Future (with its own lock).
    who = BLOCKING
    queue = HybridQueue(WORKERS)
    futures: list[Any] = [None] * depth
    submit_blocking = queue.submit_blocking
    before = _traced()
    for i in range(depth):
        futures[i] = submit_blocking(_noop_sync)
    after = _traced()
    started = perf_counter()
    queue.shutdown_blocking(cancel_pending=True)
    shutdown_s = perf_counter() - started
    check_equal(who, "futures cancelled", sum(1 for f in futures if f.cancelled()), depth)
    return {"name": who, "bytes_per_task": (after - before) / depth, "cancel_shutdown_s": shutdown_s}


async def _priority_queue(depth: int) -> dict[str, Any]:
    # The coroutine group's reference: one (priority, seq, fn, future) tuple and one future per task.
    who = REFERENCE
    loop = asyncio.get_running_loop()
    queue: asyncio.PriorityQueue[tuple[int, int, Any, asyncio.Future[None]]] = asyncio.PriorityQueue()
    futures: list[Any] = [None] * depth
    before = _traced()
    for i in range(depth):
        future = loop.create_future()
        queue.put_nowait((0, i, _noop, future))
        futures[i] = future
    after = _traced()
    started = perf_counter()
    while not queue.empty():
        queue.get_nowait()[3].cancel()
    shutdown_s = perf_counter() - started
    check_equal(who, "futures cancelled", sum(1 for f in futures if f.cancelled()), depth)
    return {"name": who, "bytes_per_task": (after - before) / depth, "cancel_shutdown_s": shutdown_s}


def footprint_rows(depth: int, loop: str) -> list[dict[str, Any]]:
    """Bytes per queued task for hybrid_queue (both submit paths) and the reference, at ``depth``."""
    rows = []
    with _tracing():
        rows.append(run_async(loop, lambda: _hybrid_queue(depth)))
        gc.collect()
        rows.append(_hybrid_queue_blocking(depth))
        gc.collect()
        rows.append(run_async(loop, lambda: _priority_queue(depth)))
    for row in rows:
        if row["bytes_per_task"] <= 0:
            raise CheckFailed(
                f"{row['name']}: measured {row['bytes_per_task']} bytes per task; tracemalloc saw nothing"
            )
        row["depth"] = depth
    return rows


def _once(settings: Settings, tick: Tick) -> dict[str, Any]:
    # One loop kind is enough: the bytes are the queue's, not the loop's.
    return {
        "loop": settings.loops[0],
        "method": METHOD,
        "rows": footprint_rows(settings.footprint_depth, settings.loops[0]),
    }


def _report(result: dict[str, Any], settings: dict[str, Any]) -> str:
    columns: list[Column] = [
        ("contender", lambda r: r["name"]),
        ("depth", lambda r: f"{r['depth']:,}"),
        ("bytes/task", lambda r: f"{r['bytes_per_task']:.0f}"),
        ("cancel+shutdown s (traced)", lambda r: f"{r['cancel_shutdown_s']:.2f}"),
    ]
    return table(
        f"== footprint group, {result['loop']} loop: memory per queued task",
        columns,
        result["rows"],
        [result["method"]],
    )


def _plot(result: dict[str, Any], settings: dict[str, Any], out: Path) -> list[Path]:
    rows = result["rows"]
    fig, ax = figure(size=(8, 3))
    bars = ax.barh([r["name"] for r in rows], [r["bytes_per_task"] for r in rows], color="tab:purple")
    ax.bar_label(bars, labels=[f"{r['bytes_per_task']:,.0f} B" for r in rows], padding=3, fontsize="small")
    ax.axvline(600, color="grey", linestyle=":", label="600 B target (await submit)")
    ax.invert_yaxis()
    ax.set_xlim(0, max(r["bytes_per_task"] for r in rows) * 1.25)
    ax.set_xlabel("bytes per queued task (tracemalloc), handle included")
    title(ax, f"How much memory does a waiting task take? (depth {rows[0]['depth']:,})")
    ax.legend(fontsize="small", loc="lower right")
    return [save(fig, out / "footprint.png")]


def _summary(result: dict[str, Any], settings: dict[str, Any]) -> list[SummaryRow]:
    rows = {r["name"]: r for r in result["rows"]}
    return [
        SummaryRow(
            f"memory per queued task, {path} ({result['loop']})",
            "B",
            rows[ours]["bytes_per_task"],
            REFERENCE,
            rows[REFERENCE]["bytes_per_task"],
        )
        for path, ours in (("await submit", HYBRID), ("submit_blocking", BLOCKING))
    ]


def _targets(result: dict[str, Any], settings: dict[str, Any]) -> list[Mark]:
    row = next(r for r in result["rows"] if r["name"] == HYBRID)
    return [mark(settings, f"bytes per queued task at depth {row['depth']:,}", row["bytes_per_task"], 600, "B")]


GROUP = register(
    Group(
        name="footprint",
        order=70,
        question="How much memory does a waiting task take?",
        report=_report,
        once=_once,
        # Three fills of the queue and a cancel of each, under tracemalloc.
        estimate=lambda settings: settings.footprint_depth * 3 * 15e-6,
        plot=_plot,
        summary=_summary,
        targets=_targets,
        sizes=lambda settings: f"footprint at depth {settings.footprint_depth:,}",
    )
)
