"""What every group shares: settings, event loops, the exactly-once check, and round-robin rounds."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import statistics
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm  # type: ignore[import-untyped]  # no stubs in the bench extra

__all__ = [
    "LOOP_NAMES",
    "WORKERS",
    "CheckFailed",
    "Job",
    "Progress",
    "Samples",
    "Settings",
    "Tally",
    "check_equal",
    "interleave",
    "loop_factory",
    "loop_policy",
    "median",
    "percentile",
    "progress_bar",
    "run_async",
    "run_in_threads",
    "slices",
]

T = TypeVar("T")
LoopFactory = Callable[[], asyncio.AbstractEventLoop]

# Every contender runs its tasks through this many workers (threads or coroutines).
WORKERS = 8

LOOP_NAMES = ("asyncio", "uvloop")


class CheckFailed(AssertionError):
    """Raised when a contender ran some task never or more than once, or got a wrong result."""


@dataclass(frozen=True, slots=True)
class Settings:
    """The sizes of one benchmark run, resolved from the command line; printed and saved with the results."""

    n: int  # tasks per round in the throughput groups
    rounds: int
    loops: tuple[str, ...]
    groups: tuple[str, ...]
    out: Path
    progress: bool
    quick: bool
    full: bool  # the full run (make bench-full): every group, both loops, the 10^6 soaks
    depths: tuple[int, ...]  # queue depths of the depth group
    footprint_depth: int  # tasks queued to measure bytes per task
    soak_tasks: int
    soak_chunk: int  # tasks submitted, then awaited, between two memory samples
    result_ttl: float  # result_ttl of the soak's queue, seconds
    soak_repeats: int  # further soaks after the first, in the RSS pass only
    probes: int  # latency probes per contender and loop, over all rounds
    backlog: int  # priority-0 tasks waiting while the latency probes run
    worker_counts: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready values."""
        d = {name: getattr(self, name) for name in self.__slots__}
        d["out"] = str(self.out)
        return d


class Tally:
    """Counts how often each task ran, to prove every one of ``n`` ran exactly once.

    Handlers get their task's index and bump its slot. Each index is given to
    exactly one task, so one slot is only ever touched by one thread at a time
    and needs no lock. Counting per task (not one total) catches a task that
    ran twice hiding a task that never ran.
    """

    __slots__ = ("hits", "n")

    def __init__(self, n: int) -> None:
        self.n = n
        self.hits = bytearray(n)

    def coroutine(self) -> Callable[[int], Coroutine[Any, Any, None]]:
        """A no-op coroutine function that only records its run."""
        hits = self.hits

        async def mark(i: int) -> None:
            hits[i] += 1

        return mark

    def function(self) -> Callable[[int], None]:
        """A no-op sync function that only records its run."""
        hits = self.hits

        def mark_sync(i: int) -> None:
            hits[i] += 1

        return mark_sync

    def check(self, who: str) -> None:
        """Raise CheckFailed unless every task ran exactly once."""
        once = self.hits.count(1)
        if once == self.n:
            return
        never = self.hits.count(0)
        raise CheckFailed(f"{who}: of {self.n} tasks, {never} never ran and {self.n - once - never} ran more than once")


def check_equal(who: str, what: str, got: object, expected: object) -> None:
    """Raise CheckFailed naming ``what`` unless ``got == expected``."""
    if got != expected:
        raise CheckFailed(f"{who}: {what} is {got!r}, expected {expected!r}")


# ------------------------------------------------------------------ event loops


def loop_factory(name: str) -> LoopFactory:
    """A callable making a new event loop of the kind ``name`` ("asyncio" or "uvloop")."""
    if name == "asyncio":
        # Named explicitly so that an event loop policy set elsewhere cannot change it.
        return asyncio.SelectorEventLoop
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    raise ValueError(f"loop must be one of {LOOP_NAMES}, got {name!r}")


@contextlib.contextmanager
def loop_policy(name: str) -> Iterator[None]:
    """Make ``asyncio.new_event_loop()`` return loops of kind ``name`` inside the block.

    For code that makes its own loop, such as ``HybridQueue.start_background``.
    Main thread only; the previous policy is restored on exit.
    """
    if name == "uvloop":
        import uvloop

        policy: asyncio.AbstractEventLoopPolicy = uvloop.EventLoopPolicy()
    else:
        policy = asyncio.DefaultEventLoopPolicy()
    previous = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(policy)
    try:
        yield
    finally:
        asyncio.set_event_loop_policy(previous)


def run_async(loop: str, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main()`` to its end on a new event loop of kind ``loop``, then close that loop."""
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        return runner.run(main())


# ---------------------------------------------------------------------- threads


def slices(n: int, parts: int) -> list[range]:
    """``range(n)`` cut into ``parts`` contiguous slices whose lengths differ by at most one."""
    bounds = [n * k // parts for k in range(parts + 1)]
    return [range(bounds[k], bounds[k + 1]) for k in range(parts)]


def run_in_threads(targets: Sequence[Callable[[], T]]) -> list[T]:
    """Run each target in a thread of its own, all at once; return their results in order.

    Re-raises the first exception a target raised, after every thread ended.
    """
    results: list[Any] = [None] * len(targets)
    errors: list[BaseException] = []

    def call(k: int) -> None:
        try:
            results[k] = targets[k]()
        except BaseException as exc:  # handed to the caller below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(k,), name=f"bench-submitter-{k}") for k in range(len(targets))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


# ----------------------------------------------------------------------- rounds


@dataclass(frozen=True, slots=True)
class Job:
    """One contender in one configuration; ``run()`` performs one round and returns its sample."""

    group: str
    loop: str
    name: str
    run: Callable[[], Any]

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.group, self.loop, self.name)


Samples = dict[tuple[str, str, str], list[Any]]


def interleave(jobs: Sequence[Job], rounds: int, progress: Progress | None = None) -> Samples:
    """Run round 1 of every job, then round 2 of every job, and so on; return the samples per job.

    A full collection runs before each job, so no job pays for the garbage of
    the one before it. Exceptions (CheckFailed above all) propagate at once.
    ``progress``, if given, must have been told the rounds with ``plan_rounds``.
    """
    samples: Samples = {job.key: [] for job in jobs}
    for r in range(rounds):
        for job in jobs:
            if progress is not None:
                progress.begin(f"round {r + 1}/{rounds} {job.group}/{job.loop}: {job.name}")
            gc.collect()
            started = time.perf_counter()
            samples[job.key].append(job.run())
            if progress is not None:
                progress.end_round_step(job.key, time.perf_counter() - started)
    return samples


# Seconds between two redraws of the bar from a once-step's ticks.
_REDRAW_INTERVAL = 0.5


class Progress:
    """One progress bar for a whole run, whose ETA comes from the steps measured so far.

    The rounds are alike (each runs every job once, in the same order), so
    from the end of round 1 on, the time left is known closely: each job's
    remaining rounds at its mean time so far. Before that, a job not yet
    measured counts as the mean of the jobs measured, and the steps that run
    once as their group's own estimate. Counting finished steps instead (as a
    plain bar does) gives a wrong ETA: the jobs differ in cost by 100 times.
    """

    def __init__(self, enabled: bool) -> None:
        self._started = time.perf_counter()
        self._once: dict[str, float] = {}  # steps that run once: estimate, seconds
        self._jobs: list[tuple[str, str, str]] = []
        self._rounds = 0
        self._measured: dict[tuple[str, str, str], list[float]] = {}
        self._step_started = self._started
        self._step_estimate = 0.0
        self._fraction = 0.0  # of the current once-step, from its tick
        self._drawn = 0.0  # when the bar was last redrawn
        self._bar = tqdm(
            total=100,
            file=sys.stderr,
            disable=not enabled,
            dynamic_ncols=True,
            leave=False,
            bar_format="{percentage:3.0f}%|{bar}| {elapsed}{postfix}",
        )

    def plan_once(self, name: str, estimate: float) -> None:
        """Count a step that runs once, of about ``estimate`` seconds."""
        self._once[name] = estimate

    def plan_rounds(self, jobs: Sequence[Job], rounds: int) -> None:
        """Count ``rounds`` rounds of ``jobs``."""
        self._jobs = [job.key for job in jobs]
        self._rounds = rounds

    def begin(self, label: str) -> None:
        """Show that the step ``label`` started."""
        self._step_started = time.perf_counter()
        self._fraction = 0.0
        self._show(label)

    def once(self, name: str) -> Callable[[float], None]:
        """Start the once-step ``name``; returns its tick, to call with the fraction done."""
        # Counted from here on as the current step, by its fraction done.
        self._step_estimate = self._once.pop(name, 0.0)
        self.begin(name)

        def tick(fraction: float) -> None:
            self._fraction = fraction
            # A few redraws a second: a tick comes after every chunk of a
            # soak, hundreds of times, and each redraw is a line in a log.
            now = time.perf_counter()
            if now - self._drawn >= _REDRAW_INTERVAL:
                self._show(name)

        return tick

    def end_once(self) -> None:
        """The current once-step ended."""
        self._step_estimate = 0.0
        self._fraction = 0.0

    def end_round_step(self, key: tuple[str, str, str], seconds: float) -> None:
        """One round of job ``key`` took ``seconds``."""
        self._measured.setdefault(key, []).append(seconds)

    def close(self) -> None:
        """Remove the bar."""
        self._bar.close()

    def remaining(self) -> float:
        """Seconds the planned steps still need, by the estimate above."""
        means = {key: statistics.fmean(v) for key, v in self._measured.items()}
        unknown = statistics.fmean(means.values()) if means else 1.0
        rounds_left = sum(
            means.get(key, unknown) * (self._rounds - len(self._measured.get(key, ()))) for key in self._jobs
        )
        current = self._step_estimate * (1.0 - self._fraction)
        return rounds_left + sum(self._once.values()) + current

    def _show(self, label: str) -> None:
        self._drawn = time.perf_counter()
        elapsed = self._drawn - self._started
        left = max(0.0, self.remaining())
        self._bar.n = min(100.0, 100.0 * elapsed / (elapsed + left)) if elapsed + left > 0 else 0.0
        minutes, seconds = divmod(round(left), 60)
        self._bar.set_postfix_str(f"ETA {minutes}:{seconds:02d}  {label}"[:90], refresh=False)
        self._bar.refresh()


def progress_bar(total: int, desc: str, enabled: bool) -> tqdm:
    """A progress bar on stderr, or a silent stand-in when ``enabled`` is false."""
    return tqdm(total=total, desc=desc, file=sys.stderr, disable=not enabled, dynamic_ncols=True, leave=False)


# ------------------------------------------------------------------- statistics


def median(values: Sequence[float]) -> float:
    """The median of ``values``."""
    return statistics.median(values)


def percentile(values: Sequence[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile (0 < p <= 100) of ``values``."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]
