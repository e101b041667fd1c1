"""Throughput groups: contenders that each run N tasks per round, reduced to us/task and a ratio.

:func:`throughput_group` makes the :class:`Group` of such a set of
contenders: its jobs, rows per loop kind, tables, ratio plot and A/B rows.
"""

from __future__ import annotations

import functools
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._harness import Job, Samples, Settings, median
from ._plots import figure, ratio_bars, save, title
from ._registry import Group, Mark, SummaryRow
from ._report import SELF, Column, table

__all__ = [
    "OURS",
    "TIMED_SPAN",
    "Contender",
    "by_name",
    "throughput_group",
    "throughput_jobs",
    "throughput_row",
    "throughput_rows",
    "throughput_table",
]

# What the timed span of every throughput contender covers, printed under the tables.
TIMED_SPAN = (
    "timed per round: create the queue/pool/scheduler, start it, submit all N tasks, "
    "wait for all of them, shut it down (threads joined); the exactly-once check is not timed"
)
# Row names of our own contenders start with this: the rows an A/B run compares.
OURS = "hybrid_queue"


@dataclass(frozen=True, slots=True)
class Contender:
    """One way to run N no-op tasks.

    ``run(n, loop)`` performs one round on a new event loop of kind ``loop``
    and returns the seconds it took; it raises CheckFailed when some task did
    not run exactly once. ``versus`` names the reference row its ratio is
    taken against; ``None`` marks a reference row itself.
    """

    name: str
    run: Callable[[int, str], float]
    versus: str | None = None
    note: str = ""


def throughput_jobs(group: str, contenders: Sequence[Contender], settings: Settings, n: int) -> list[Job]:
    """One job per contender and loop kind, each running ``n`` tasks per round."""
    return [Job(group, loop, c.name, functools.partial(c.run, n, loop)) for loop in settings.loops for c in contenders]


def throughput_rows(
    group: str, contenders: Sequence[Contender], samples: Samples, loop: str, n: int
) -> list[dict[str, Any]]:
    """The table rows of one group under one loop kind: medians, us per task, tasks/s, ratios."""
    medians = {c.name: median(samples[(group, loop, c.name)]) for c in contenders}
    return [
        throughput_row(c.name, samples[(group, loop, c.name)], n, c.versus, c.note, medians[c.versus or c.name])
        for c in contenders
    ]


def throughput_row(
    name: str, seconds: list[float], n: int, versus: str | None, note: str, reference_median: float
) -> dict[str, Any]:
    """One table row: ``seconds`` per round for ``n`` tasks, against the median of the row ``versus``

    (None: this row is the reference).
    """
    med = median(seconds)
    return {
        "name": name,
        "reference": versus is None,
        "versus": versus or name,
        "note": note,
        "n": n,
        "rounds_s": seconds,
        "checked_rounds": len(seconds),
        "median_s": med,
        "us_per_task": med / n * 1e6,
        "tasks_per_s": n / med,
        "spread_pct": (max(seconds) - min(seconds)) / med * 100,
        "ratio": med / reference_median,
    }


def by_name(rows: Sequence[dict[str, Any]], name: str) -> dict[str, Any]:
    """The row called ``name``; raises KeyError."""
    for row in rows:
        if row["name"] == name:
            return row
    raise KeyError(name)


def throughput_table(title: str, rows: Sequence[dict[str, Any]]) -> str:
    """The table of one group under one loop kind; references get letters, so a ratio says which it is against."""
    letters = iter(string.ascii_uppercase)
    tags = {row["name"]: next(letters) for row in rows if row["reference"]}
    columns: list[Column] = [
        ("contender", lambda r: r["name"] + (f" [ref {tags[r['name']]}]" if r["reference"] else "")),
        ("us/task", lambda r: f"{r['us_per_task']:.2f}"),
        ("tasks/s", lambda r: f"{r['tasks_per_s']:,.0f}"),
        ("ratio", lambda r: SELF if r["reference"] else f"{r['ratio']:.2f}x {tags[r['versus']]}"),
        ("spread", lambda r: f"{r['spread_pct']:.0f}%"),
        ("note", lambda r: r["note"]),
    ]
    notes = [
        "ratio: median time over the median time of the reference row named by the letter (lower is faster); "
        f"{SELF} on a reference row",
        "spread: (slowest round - fastest round) / median",
        TIMED_SPAN,
    ]
    return table(title, columns, rows, notes)


def _report(name: str, result: dict[str, Any], settings: dict[str, Any]) -> str:
    return "\n\n".join(
        throughput_table(
            f"== {name} group, {loop} loop: {rows[0]['n']:,} tasks per round, median of {settings['rounds']} rounds",
            rows,
        )
        for loop, rows in result.items()
    )


def _ratio_plot(name: str, question: str, result: dict[str, Any], settings: dict[str, Any], out: Path) -> list[Path]:
    loops = list(result)
    first = result[loops[0]]
    # With two references (the sync group), each bar says which one it is against.
    several = sum(row["reference"] for row in first) > 1
    labels = [
        row["name"] + (" (reference)" if row["reference"] else f"\nvs {row['versus']}" if several else "")
        for row in first
    ]
    fig, ax = figure(size=(10, 1.5 + (0.75 if several else 0.5) * len(labels) * max(1, len(loops) * 0.8)))
    ratio_bars(
        ax,
        labels,
        {loop: [row["ratio"] for row in result[loop]] for loop in loops},
        {loop: [f"{row['us_per_task']:.2f} us/task" for row in result[loop]] for loop in loops},
        xlabel="time per task over the reference's (x; lower is faster)",
    )
    title(ax, f"{question}\n{first[0]['n']:,} tasks per round, median of {settings['rounds']} rounds")
    return [save(fig, out / f"{name}.png")]


def throughput_group(
    name: str,
    order: int,
    question: str,
    contenders: Callable[[Settings], Sequence[Contender]],
    *,
    summary: Callable[[Any, dict[str, Any]], list[SummaryRow]] | None = None,
    targets: Callable[[Any, dict[str, Any]], list[Mark]] | None = None,
    plot: Callable[[Any, dict[str, Any], Path], list[Path]] | None = None,
    in_default: bool = True,
) -> Group:
    """The Group of a set of throughput contenders (``contenders(settings)``); its result is ``{loop: rows}``.

    The A/B rows are its contenders whose names start with ``hybrid_queue``.
    """

    def jobs(settings: Settings) -> list[Job]:
        return throughput_jobs(name, contenders(settings), settings, settings.n)

    def ab_jobs(settings: Settings) -> list[Job]:
        return [job for job in jobs(settings) if job.name.startswith(OURS)]

    def rows(samples: Samples, settings: Settings) -> dict[str, Any]:
        cs = contenders(settings)
        return {loop: throughput_rows(name, cs, samples, loop, settings.n) for loop in settings.loops}

    return Group(
        name=name,
        order=order,
        question=question,
        report=functools.partial(_report, name),
        in_default=in_default,
        jobs=jobs,
        rows=rows,
        plot=plot or functools.partial(_ratio_plot, name, question),
        summary=summary,
        targets=targets,
        ab_jobs=ab_jobs,
    )
