"""Throughput groups: contenders that each run N tasks per round, reduced to us/task and a ratio."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ._harness import Job, Settings, median

__all__ = ["Contender", "throughput_jobs", "throughput_row", "throughput_rows"]

# What the timed span of every throughput contender covers, printed above the tables.
TIMED_SPAN = (
    "timed per round: create the queue/pool/scheduler, start it, submit all N tasks, "
    "wait for all of them, shut it down (threads joined); the exactly-once check is not timed"
)


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
    group: str,
    contenders: Sequence[Contender],
    samples: dict[tuple[str, str, str], list[Any]],
    loop: str,
    n: int,
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
