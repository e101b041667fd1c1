"""Interrupt latency: from the interrupt to TaskInterrupted raised in a pure-Python handler.

``python -m benchmarks._interrupt [--trials 1000] [--competing 0 1] [--via primitive|queue|both]``

Two measurements (``--via``, default both), 1,000 trials per row each:

- ``primitive``: a worker thread runs a pure-Python loop inside
  ``Interruptible.call()``; this thread waits until the loop has begun, pauses
  a random 0-1 ms (so that the interrupt falls at any phase of the GIL's
  switching), records ``t0`` and calls ``interrupt()``, then waits; the
  handler records ``t1`` as it catches the exception.
- ``queue``: the same through the public API. One
  ``HybridQueue(1, interrupt_sync_handlers=True)`` started with
  ``start_background()`` serves all trials of a row; the handler, submitted
  with ``submit_blocking``, sets an Event once inside its loop and records
  ``t1`` in ``except TaskInterrupted`` before re-raising; this thread waits
  for the Event, pauses as above, records ``t0`` and calls ``future.cancel()``.
  The next trial's task is submitted before that cancel and waits in the
  queue, so the second figure is ``t0`` to the moment its handler starts: the
  worker slot freed and reused, recorded by the handler itself (polling
  ``stats().busy_workers`` from this thread would contend for the GIL or add
  the poll interval).

With ``--competing N``, N more threads run a pure-Python loop all the while,
contending for the GIL. The target is 99.9 % of trials within 50 ms.
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from time import perf_counter, sleep

from hybrid_queue import HybridQueue, TaskInterrupted
from hybrid_queue._interrupt import Interruptible

__all__ = ["Latencies", "main", "measure", "measure_queue"]

TARGET = 0.050  # seconds
TARGET_PER_MILLE = 999  # of the trials, within TARGET
WARM_UP = 10  # trials run before the measured ones, not counted
_GIVE_UP = 5.0  # seconds a trial waits for the handler to start, or for the interrupt to arrive


@dataclass(frozen=True, slots=True)
class Latencies:
    """The seconds from the interrupt to the exception in the handler, and to a second event, one per trial.

    The second event: call() returning (``measure``), or the next queued
    task's handler starting on the freed worker slot (``measure_queue``).
    """

    competing: int
    raised: list[float]
    after: list[float]


class _Trial:
    """One call() of a spinning handler in the worker thread, and the times it records."""

    def __init__(self) -> None:
        self.job: Interruptible | None = None
        self.inside = threading.Event()
        self.done = threading.Event()
        self.stop = False  # set only if the interrupt never comes, or the run is abandoned
        self.raised_at = self.returned_at = 0.0

    def run(self) -> None:  # on the worker thread
        self.job = Interruptible()
        self.job.call(_spin, (self,), None)
        self.returned_at = perf_counter()
        self.done.set()


def _spin(trial: _Trial | _QueueTrial) -> None:
    # The interrupted handler: a pure-Python loop that records when the
    # interrupt reached it.
    trial.inside.set()
    try:
        while not trial.stop:
            pass
    except TaskInterrupted:
        trial.raised_at = perf_counter()
        raise


def _worker(trials: list[_Trial], ready: threading.Semaphore) -> None:
    for trial in trials:
        ready.acquire()
        trial.run()


def _busy(stop: threading.Event) -> None:
    while not stop.is_set():
        for _ in range(1_000):
            pass


def measure(trials: int, competing: int, seed: int = 14) -> Latencies:
    """Run WARM_UP + ``trials`` trials with ``competing`` busy threads; return the measured ones."""
    rng = random.Random(seed)
    planned = [_Trial() for _ in range(WARM_UP + trials)]
    ready = threading.Semaphore(0)
    stop_busy = threading.Event()
    busy = [threading.Thread(target=_busy, args=(stop_busy,), daemon=True) for _ in range(competing)]
    worker = threading.Thread(target=_worker, args=(planned, ready), daemon=True)
    raised: list[float] = []
    after: list[float] = []
    for thread in [*busy, worker]:
        thread.start()
    try:
        for k, trial in enumerate(planned):
            ready.release()
            if not trial.inside.wait(_GIVE_UP):
                raise RuntimeError(f"trial {k}: the handler did not start within {_GIVE_UP} s")
            sleep(rng.uniform(0.0, 0.001))
            assert trial.job is not None
            t0 = perf_counter()
            sent = trial.job.interrupt()
            if not trial.done.wait(_GIVE_UP):
                trial.stop = True
                trial.done.wait()
            if not (sent and trial.raised_at):
                raise RuntimeError(f"trial {k}: interrupt() returned {sent}; no TaskInterrupted within {_GIVE_UP} s")
            if k >= WARM_UP:
                raised.append(trial.raised_at - t0)
                after.append(trial.returned_at - t0)
    finally:
        # After a failure, the remaining trials end as soon as they start.
        for trial in planned:
            trial.stop = True
        ready.release(len(planned))
        stop_busy.set()
        for thread in [*busy, worker]:
            thread.join()
    return Latencies(competing, raised, after)


class _QueueTrial:
    """One task on the queue's worker thread, and the times its handler records."""

    def __init__(self) -> None:
        self.inside = threading.Event()
        self.stop = False  # set only if the interrupt never comes, or the run is abandoned
        self.started_at = self.raised_at = 0.0


def _spin_task(trial: _QueueTrial) -> None:  # the handler, on the queue's worker thread
    trial.started_at = perf_counter()
    _spin(trial)


def measure_queue(trials: int, competing: int, seed: int = 14) -> Latencies:
    """As ``measure``, through ``HybridQueue(1, interrupt_sync_handlers=True)`` and ``future.cancel()``."""
    rng = random.Random(seed)
    # One more than measured: the task that starts once the last measured one is interrupted.
    planned = [_QueueTrial() for _ in range(WARM_UP + trials + 1)]
    stop_busy = threading.Event()
    busy = [threading.Thread(target=_busy, args=(stop_busy,), daemon=True) for _ in range(competing)]
    raised: list[float] = []
    after: list[float] = []
    for thread in busy:
        thread.start()
    queue = HybridQueue(1, interrupt_sync_handlers=True)
    try:
        queue.start_background()
        future = queue.submit_blocking(_spin_task, planned[0], keep_result=False)
        for k, (trial, following) in enumerate(itertools.pairwise(planned)):
            if not trial.inside.wait(_GIVE_UP):
                raise RuntimeError(f"trial {k}: the handler did not start within {_GIVE_UP} s")
            # Waits behind this trial's task; starts as soon as the slot is free.
            queued = queue.submit_blocking(_spin_task, following, keep_result=False)
            sleep(rng.uniform(0.0, 0.001))
            t0 = perf_counter()
            cancelled = future.cancel()
            if not following.inside.wait(_GIVE_UP):
                trial.stop = True
                following.inside.wait(_GIVE_UP)
            if not (cancelled and trial.raised_at and following.started_at):
                raise RuntimeError(
                    f"trial {k}: future.cancel() returned {cancelled}; no TaskInterrupted, or the next task "
                    f"did not start, within {_GIVE_UP} s"
                )
            if k >= WARM_UP:
                raised.append(trial.raised_at - t0)
                after.append(following.started_at - t0)
            future = queued
    finally:
        # Whatever runs or waits ends as soon as it starts.
        for trial in planned:
            trial.stop = True
        queue.shutdown_blocking(wait=True, cancel_pending=True)
        stop_busy.set()
        for thread in busy:
            thread.join()
    return Latencies(competing, raised, after)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def _rank(ordered: Sequence[float], per_mille: int) -> float:
    # Nearest rank, in integers: 99.9 / 100 * 1000 in floats is 999.0000000000001.
    return ordered[max(1, -(-per_mille * len(ordered) // 1000)) - 1]


def within_target(result: Latencies) -> int:
    """How many trials saw the exception within TARGET."""
    return sum(1 for v in result.raised if v <= TARGET)


def met(result: Latencies) -> bool:
    """Whether at least TARGET_PER_MILLE per mille of the trials were within TARGET."""
    return within_target(result) * 1000 >= TARGET_PER_MILLE * len(result.raised)


def print_table(
    results: Sequence[Latencies],
    title: str = "interrupt() -> TaskInterrupted raised in a pure-Python handler on a worker thread",
    after: str = "call() back",
    label: str = "",
) -> None:
    """Print one row per number of competing threads, and whether each met the target."""
    header = [
        "competing",
        "trials",
        "median",
        "p99",
        "p99.9",
        "max",
        f"<= {TARGET * 1e3:.0f} ms",
        f"{after}, median",
        f"{after}, max",
    ]
    rows = [header]
    for r in results:
        ordered = sorted(r.raised)
        n = len(ordered)
        rows.append(
            [
                str(r.competing),
                str(n),
                _ms(statistics.median(ordered)),
                _ms(_rank(ordered, 990)),
                _ms(_rank(ordered, 999)),
                _ms(ordered[-1]),
                f"{within_target(r)}/{n}",
                _ms(statistics.median(r.after)),
                _ms(max(r.after)),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    print(title)
    for row in rows:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
    for r in results:
        verdict = "met" if met(r) else "NOT met"
        print(
            f"{label}competing={r.competing}: target of {TARGET_PER_MILLE / 10:g} % within {TARGET * 1e3:.0f} ms "
            f"{verdict}"
        )


def main(argv: Sequence[str] | None = None) -> None:
    """Measure and print the interrupt latency."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks._interrupt", description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1_000, help="measured trials per row (default 1000)")
    parser.add_argument(
        "--competing",
        type=int,
        nargs="+",
        default=[0, 1],
        help="rows: how many busy Python threads contend for the GIL meanwhile (default: 0 1)",
    )
    parser.add_argument(
        "--via",
        choices=("primitive", "queue", "both"),
        default="both",
        help="what to measure: Interruptible directly, future.cancel() on a HybridQueue, or both (default)",
    )
    args = parser.parse_args(argv)
    if args.trials < 1 or any(n < 0 for n in args.competing):
        parser.error("--trials must be >= 1 and --competing >= 0")
    print(f"Python {sys.version.split()[0]}, switch interval {sys.getswitchinterval() * 1e3:g} ms")
    if args.via in ("primitive", "both"):
        print_table([measure(args.trials, n) for n in args.competing])
    if args.via == "both":
        print()
    if args.via in ("queue", "both"):
        print_table(
            [measure_queue(args.trials, n) for n in args.competing],
            "future.cancel() -> TaskInterrupted raised in a pure-Python handler on HybridQueue(1, "
            "interrupt_sync_handlers=True)",
            "next task started",
            "queue: ",
        )


if __name__ == "__main__":
    main()
