"""The groups of the suite: each group module registers one :class:`Group`; the runner iterates them.

A new group is one new module in this package that calls :func:`register`
at import time; :func:`groups` imports every module of the package, so
nothing else needs to name it.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._harness import Job, Samples, Settings

__all__ = ["Group", "Mark", "SummaryRow", "groups", "register"]

# Passed to a group's ``once`` step: call it with the fraction of the step done, to move the progress bar.
Tick = Callable[[float], None]


@dataclass(frozen=True, slots=True)
class SummaryRow:
    """One line of the closing summary: our figure on a path against one peer's.

    ``ratio`` is ours over theirs; with ``lower_is_better`` (times, bytes) a
    ratio under 1 is ahead, otherwise (throughput, speed-up) over 1 is.
    """

    path: str
    unit: str
    ours: float
    peer: str
    theirs: float
    lower_is_better: bool = True

    @property
    def ratio(self) -> float:
        """Our figure over the peer's."""
        return self.ours / self.theirs


@dataclass(frozen=True, slots=True)
class Mark:
    """A target: what it asks, the value measured, and whether it was met (None: no verdict in a quick run)."""

    target: str
    value: float
    shown: str
    rule: str
    met: bool | None

    def as_dict(self) -> dict[str, Any]:
        """The mark as JSON-ready values."""
        return {"target": self.target, "value": self.value, "shown": self.shown, "rule": self.rule, "met": self.met}


@dataclass(frozen=True, slots=True)
class Group:
    """What the runner needs of one group; every callable but the name and the report is optional.

    - ``once(settings, tick)`` runs before the rounds, a single time (the
      memory groups: they want a fresh process); ``estimate(settings)`` is its
      rough cost in seconds, for the first ETA.
    - ``jobs(settings)`` are the group's contenders, run in rounds interleaved
      with every other group's; ``rows(samples, settings)`` reduces their
      samples.
    - Whatever ``once`` or ``rows`` returns is the group's result, saved
      under its name in results.json and passed to ``report``, ``plot``,
      ``summary`` and ``targets`` (with the settings as saved).
    - ``ab_jobs(settings)``: the rows an A/B run compares (only our own
      paths, each sample a number of seconds); None keeps the group out of
      A/B runs.
    - ``in_default``: part of ``make bench``; otherwise of ``--full`` (or ``--only``) alone.
    """

    name: str
    order: int  # position in the run and in the output
    question: str  # what the group answers, one line
    report: Callable[[Any, dict[str, Any]], str]
    in_default: bool = True
    once: Callable[[Settings, Tick], Any] | None = None
    estimate: Callable[[Settings], float] | None = None
    jobs: Callable[[Settings], list[Job]] | None = None
    rows: Callable[[Samples, Settings], Any] | None = None
    plot: Callable[[Any, dict[str, Any], Path], list[Path]] | None = None
    summary: Callable[[Any, dict[str, Any]], list[SummaryRow]] | None = None
    targets: Callable[[Any, dict[str, Any]], list[Mark]] | None = None
    ab_jobs: Callable[[Settings], list[Job]] | None = None
    sizes: Callable[[Settings], str] | None = None  # the group's part of the sizes line
    close: Callable[[], None] | None = None  # frees what the jobs made (pools, clusters), after the rounds


_GROUPS: dict[str, Group] = {}


def register(group: Group) -> Group:
    """Add ``group`` to the suite; called by each group module at import. Raises ValueError on a duplicate name."""
    if group.name in _GROUPS and _GROUPS[group.name] is not group:
        raise ValueError(f"group names must be unique, got {group.name!r} twice")
    _GROUPS[group.name] = group
    return group


def groups() -> dict[str, Group]:
    """Every registered group by name, in run order; imports the package's modules first."""
    package = __name__.rpartition(".")[0]
    here = Path(__file__).resolve().parent
    for module in pkgutil.iter_modules([str(here)]):
        # The interrupt benchmark is a command of its own, not a group.
        if module.name.startswith("_") and module.name not in ("__main__", "_interrupt"):
            importlib.import_module(f"{package}.{module.name}")
    return dict(sorted(_GROUPS.items(), key=lambda item: item[1].order))
