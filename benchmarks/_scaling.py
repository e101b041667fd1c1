"""The workers group: coroutine no-op throughput as the worker count grows from 8 to 10,000."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._coroutine import hybrid_queue_round, on_loop, priority_queue_round
from ._plots import LOOP_STYLES, figure, plain_counts, save, title
from ._registry import Mark, SummaryRow, register
from ._report import mark
from ._throughput import Contender, by_name, throughput_group

__all__ = ["GROUP", "contenders", "hybrid_queue_name"]


def hybrid_queue_name(workers: int) -> str:
    """The row name of hybrid_queue with ``workers`` workers."""
    return f"hybrid_queue, {workers:,} workers"


def _reference_name(workers: int) -> str:
    return f"asyncio.PriorityQueue, {workers:,} workers"


def contenders(worker_counts: Sequence[int]) -> tuple[Contender, ...]:
    """hybrid_queue and the PriorityQueue reference at each worker count.

    Each kind's row at the smallest count is its reference, so the ratio
    column shows what more workers cost that kind. The reference creates its
    worker coroutines up front; hybrid_queue creates one only for a claimed
    task that finds every worker it has suspended in a handler.
    """
    base = worker_counts[0]
    rows = []
    for w in worker_counts:
        rows.append(
            Contender(
                hybrid_queue_name(w),
                on_loop(functools.partial(hybrid_queue_round, workers=w)),
                None if w == base else hybrid_queue_name(base),
                "await submit, await each",
            )
        )
        rows.append(
            Contender(
                _reference_name(w),
                on_loop(functools.partial(priority_queue_round, workers=w)),
                None if w == base else _reference_name(base),
                "put_nowait + one future per task",
            )
        )
    return tuple(rows)


def _plot(result: dict[str, Any], settings: dict[str, Any], out: Path) -> list[Path]:
    counts = settings["worker_counts"]
    fig, ax = figure(size=(8, 5))
    for loop, rows in result.items():
        linestyle, marker = LOOP_STYLES.get(loop, ("--", "x"))
        for kind, name, colour in (
            ("hybrid_queue", hybrid_queue_name, "tab:blue"),
            ("asyncio.PriorityQueue", _reference_name, "tab:red"),
        ):
            ax.plot(
                counts,
                [by_name(rows, name(w))["tasks_per_s"] for w in counts],
                color=colour,
                linestyle=linestyle,
                marker=marker,
                label=f"{kind} ({loop})",
            )
    ax.set_xscale("log")
    ax.set_xlabel("workers (count, log scale)")
    ax.set_ylabel("tasks per second (median; higher is better)")
    title(ax, "Does throughput hold up as the worker count grows? (coroutine no-op tasks)")
    ax.set_ylim(bottom=0)
    plain_counts(ax.yaxis)
    ax.legend(fontsize="small")
    return [save(fig, out / "workers.png")]


def _summary(result: dict[str, Any], settings: dict[str, Any]) -> list[SummaryRow]:
    most = settings["worker_counts"][-1]
    return [
        SummaryRow(
            f"coroutine handlers, {most:,} workers ({loop})",
            "tasks/s",
            by_name(rows, hybrid_queue_name(most))["tasks_per_s"],
            _reference_name(most),
            by_name(rows, _reference_name(most))["tasks_per_s"],
            lower_is_better=False,
        )
        for loop, rows in result.items()
    ]


def _targets(result: dict[str, Any], settings: dict[str, Any]) -> list[Mark]:
    counts = settings["worker_counts"]
    marks = []
    for loop, rows in result.items():
        few = by_name(rows, hybrid_queue_name(counts[0]))["tasks_per_s"]
        many = by_name(rows, hybrid_queue_name(counts[-1]))["tasks_per_s"]
        name = f"throughput with {counts[-1]:,} workers vs {counts[0]} ({loop})"
        marks.append(mark(settings, name, many / few, 0.8, "x", at_least=True))
    return marks


GROUP = register(
    throughput_group(
        "workers",
        30,
        "Does throughput hold up as the worker count grows from 8 to 10,000?",
        lambda settings: contenders(settings.worker_counts),
        summary=_summary,
        targets=_targets,
        plot=_plot,
    )
)
