"""The scale_out group: CPU-bound sync handlers on threads, processes and a Dask cluster, and the queue's cost on Dask.

Two tables:

- **throughput**: the same batch of pure-Python, CPU-bound handlers (about
  50 ms each; the GIL lets only one thread run them at a time) through a
  2-worker queue on its default thread pool, on a 2-process
  ``ProcessPoolExecutor`` and on a 2-worker Dask ``LocalCluster``. The ratio
  is the speed-up over the thread pool.
- **overhead**: many no-op tasks on the same cluster, through the queue with
  :func:`hybrid_queue.dask.dask_executor`, against ``Client.submit`` for each
  then one ``gather``, and against Dask's own ``ClientExecutor``.

The process pool and the cluster are made once per run, before the first
round and outside the timed spans (starting a cluster takes about a second);
each round still makes and shuts down its queue. The group runs under the
first loop kind only: the executors do the work, not the loop.
"""

from __future__ import annotations

import concurrent.futures
import os
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any

from hybrid_queue import HybridQueue

from ._harness import CheckFailed, Job, Samples, Settings, check_equal, median, run_async
from ._plots import figure, ratio_bars, save, title
from ._registry import Group, Mark, SummaryRow, register
from ._report import SELF, Column, mark, table
from ._throughput import by_name, throughput_row

__all__ = [
    "GROUP",
    "OVERHEAD_REFERENCE",
    "OVERHEAD_TARGET",
    "PROCESSES",
    "THREADS",
    "close",
    "scale_out_jobs",
    "scale_out_results",
]

WORKERS = 2  # queue slots, pool processes and Dask workers alike: the machine the figures come from has 2 cores

THREADS = f"hybrid_queue, default thread pool ({WORKERS} threads)"
PROCESSES = f"hybrid_queue, ProcessPoolExecutor({WORKERS})"
DASK = f"hybrid_queue, dask_executor ({WORKERS}-worker LocalCluster)"
OVERHEAD_REFERENCE = "Client.submit(pure=False) each, then gather"
CLIENT_EXECUTOR = "client.get_executor(pure=False).submit each, then wait"
OVERHEAD_TARGET = "hybrid_queue + dask_executor: await submit, await each"


@dataclass(frozen=True, slots=True)
class Sizes:
    """What one round runs; resolved from --quick, independent of --n."""

    cpu_tasks: int
    handler_ms: float
    overhead_tasks: int
    overhead_workers: int  # queue slots in the overhead rounds: tasks in flight at the cluster


FULL = Sizes(cpu_tasks=40, handler_ms=50.0, overhead_tasks=2_000, overhead_workers=256)
QUICK = Sizes(cpu_tasks=6, handler_ms=2.0, overhead_tasks=40, overhead_workers=16)

METHOD = (
    "timed per round: make the queue, start it, submit every task, await each, shut the queue down; "
    "the process pool and the cluster are made once, before the first round, and warmed up; "
    "the overhead reference times Client.submit of every task and one gather"
)


# ------------------------------------------------------------------ handlers
# Module-level, so that they pickle by reference into the pool's processes
# and the cluster's workers.


def spin(index: int, iterations: int) -> tuple[int, int]:
    """Pure-Python CPU work holding the GIL throughout; returns ``(index, checksum)``."""
    total = 0
    for i in range(iterations):
        total = (total + i * i) % 1_000_003
    return index, total


def noop(index: int) -> int:
    return index


def _calibrate(milliseconds: float) -> int:
    # Iterations of spin() that take about ``milliseconds`` here, from the
    # fastest of a few timings of a probe (the least disturbed one).
    probe = 200_000
    fastest = float("inf")
    for _ in range(3):
        started = perf_counter()
        spin(0, probe)
        fastest = min(fastest, perf_counter() - started)
    return max(1_000, int(probe * milliseconds / 1e3 / fastest))


# ------------------------------------------------------------------ resources


class _Resources:
    """The process pool and the Dask cluster of the run, made on first use and closed by ``close()``."""

    def __init__(self) -> None:
        self.pool: concurrent.futures.ProcessPoolExecutor | None = None
        # distributed's objects, typed loosely: it is imported only when the group runs.
        self.cluster: Any = None
        self.client: Any = None
        self.executor: Any = None

    def process_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        if self.pool is None:
            # Made (and its processes started) before the cluster's threads
            # exist, so that the processes are forked from a quiet parent.
            self.pool = concurrent.futures.ProcessPoolExecutor(WORKERS)
            list(self.pool.map(noop, range(4 * WORKERS)))
        return self.pool

    def dask(self) -> tuple[Any, Any]:
        if self.client is None:
            self.process_pool()
            import distributed

            from hybrid_queue.dask import dask_executor

            self.cluster = distributed.LocalCluster(  # type: ignore[no-untyped-call]
                n_workers=WORKERS,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                host="127.0.0.1",
                # The scheduler's /health and /metrics: loopback, any free port.
                scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            )
            self.client = distributed.Client(self.cluster)  # type: ignore[no-untyped-call]
            self.executor = dask_executor(self.client)
            self.client.gather([self.client.submit(noop, i, pure=False) for i in range(4 * WORKERS)])
        return self.client, self.executor

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True)
        if self.client is not None:
            self.client.close()
            self.cluster.close()
        if self.pool is not None:
            self.pool.shutdown(wait=True)
        self.pool = self.cluster = self.client = self.executor = None


_RESOURCES = _Resources()


def close() -> None:
    """Shut down the process pool and the cluster of this run, if they were made."""
    _RESOURCES.close()


# --------------------------------------------------------------------- rounds


def _check_results(who: str, results: list[tuple[int, int]], n: int, iterations: int) -> None:
    expected = spin(0, iterations)[1]
    indices = sorted(index for index, _ in results)
    check_equal(who, "task indices returned", indices, list(range(n)))
    wrong = sum(1 for _, checksum in results if checksum != expected)
    if wrong:
        raise CheckFailed(f"{who}: {wrong} of {n} tasks returned a wrong checksum")


async def _cpu_round(who: str, executor: concurrent.futures.Executor | None, n: int, iterations: int) -> float:
    started = perf_counter()
    queue = HybridQueue(WORKERS, executor=executor)
    await queue.start()
    handles = [await queue.submit(spin, i, iterations) for i in range(n)]
    results = [await handle for handle in handles]
    await queue.shutdown()
    elapsed = perf_counter() - started
    _check_results(who, results, n, iterations)
    check_equal(who, "stats().completed", queue.stats().completed, n)
    return elapsed


async def _queue_overhead_round(executor: concurrent.futures.Executor, n: int, workers: int) -> float:
    started = perf_counter()
    queue = HybridQueue(workers, executor=executor)
    await queue.start()
    handles = [await queue.submit(noop, i) for i in range(n)]
    results = [await handle for handle in handles]
    await queue.shutdown()
    elapsed = perf_counter() - started
    check_equal(OVERHEAD_TARGET, "results", results, list(range(n)))
    return elapsed


def _client_submit_round(client: Any, n: int) -> float:
    started = perf_counter()
    futures = [client.submit(noop, i, pure=False) for i in range(n)]
    results = client.gather(futures)
    elapsed = perf_counter() - started
    check_equal(OVERHEAD_REFERENCE, "results", results, list(range(n)))
    return elapsed


def _client_executor_round(client: Any, n: int) -> float:
    started = perf_counter()
    executor = client.get_executor(pure=False)
    futures = [executor.submit(noop, i) for i in range(n)]
    concurrent.futures.wait(futures)
    elapsed = perf_counter() - started
    check_equal(CLIENT_EXECUTOR, "results", [f.result() for f in futures], list(range(n)))
    return elapsed


def scale_out_jobs(settings: Settings) -> list[Job]:
    """One job per row; the first round of any of them makes the pool and the cluster."""
    sizes = QUICK if settings.quick else FULL
    loop = settings.loops[0]
    iterations = _calibrate(sizes.handler_ms)
    n, m = sizes.cpu_tasks, sizes.overhead_tasks

    def threads() -> float:
        return run_async(loop, lambda: _cpu_round(THREADS, None, n, iterations))

    def processes() -> float:
        pool = _RESOURCES.process_pool()
        return run_async(loop, lambda: _cpu_round(PROCESSES, pool, n, iterations))

    def dask() -> float:
        _, executor = _RESOURCES.dask()
        return run_async(loop, lambda: _cpu_round(DASK, executor, n, iterations))

    def queue_overhead() -> float:
        _, executor = _RESOURCES.dask()
        return run_async(loop, lambda: _queue_overhead_round(executor, m, sizes.overhead_workers))

    def client_submit() -> float:
        client, _ = _RESOURCES.dask()
        return _client_submit_round(client, m)

    def client_executor() -> float:
        client, _ = _RESOURCES.dask()
        return _client_executor_round(client, m)

    _ITERATIONS[settings.quick] = iterations
    return [
        Job("scale_out", loop, THREADS, threads),
        Job("scale_out", loop, PROCESSES, processes),
        Job("scale_out", loop, DASK, dask),
        Job("scale_out", loop, OVERHEAD_REFERENCE, client_submit),
        Job("scale_out", loop, CLIENT_EXECUTOR, client_executor),
        Job("scale_out", loop, OVERHEAD_TARGET, queue_overhead),
    ]


# spin() iterations chosen by the last scale_out_jobs(), keyed by quick mode, for the results.
_ITERATIONS: dict[bool, int] = {}


def scale_out_results(samples: Samples, settings: Settings) -> dict[str, Any]:
    """The group's two tables (rows as the throughput groups have them) and what they ran."""
    sizes = QUICK if settings.quick else FULL
    loop = settings.loops[0]

    def seconds(name: str) -> list[float]:
        return list(samples[("scale_out", loop, name)])

    n, m = sizes.cpu_tasks, sizes.overhead_tasks
    base = median(seconds(THREADS))
    throughput = [
        throughput_row(THREADS, seconds(THREADS), n, None, "the GIL runs one handler at a time", base),
        throughput_row(PROCESSES, seconds(PROCESSES), n, THREADS, "pool made once, passed in", base),
        throughput_row(DASK, seconds(DASK), n, THREADS, "cluster made once; 1 thread per worker", base),
    ]
    ref = median(seconds(OVERHEAD_REFERENCE))
    overhead = [
        throughput_row(
            OVERHEAD_REFERENCE, seconds(OVERHEAD_REFERENCE), m, None, "no queue: all submitted, then gathered", ref
        ),
        throughput_row(
            CLIENT_EXECUTOR, seconds(CLIENT_EXECUTOR), m, OVERHEAD_REFERENCE, "Dask's concurrent.futures face", ref
        ),
        throughput_row(
            OVERHEAD_TARGET,
            seconds(OVERHEAD_TARGET),
            m,
            OVERHEAD_REFERENCE,
            f"workers={sizes.overhead_workers}: that many tasks in flight",
            ref,
        ),
    ]
    return {
        "loop": loop,
        "workers": WORKERS,
        "cpus": os.cpu_count(),
        "handler_ms": sizes.handler_ms,
        "spin_iterations": _ITERATIONS.get(settings.quick),
        "cpu_tasks": n,
        "overhead_tasks": m,
        "overhead_workers": sizes.overhead_workers,
        "method": METHOD,
        "throughput": throughput,
        "overhead": overhead,
    }


def _report(scale: dict[str, Any], settings: dict[str, Any]) -> str:
    rounds = settings["rounds"]
    throughput_columns: list[Column] = [
        ("contender", lambda r: r["name"] + (" [ref]" if r["reference"] else "")),
        ("ms/task", lambda r: f"{r['us_per_task'] / 1e3:.2f}"),
        ("tasks/s", lambda r: f"{r['tasks_per_s']:.1f}"),
        ("speed-up", lambda r: SELF if r["reference"] else f"{1 / r['ratio']:.2f}x"),
        ("spread", lambda r: f"{r['spread_pct']:.0f}%"),
        ("note", lambda r: r["note"]),
    ]
    overhead_columns: list[Column] = [
        ("contender", lambda r: r["name"] + (" [ref]" if r["reference"] else "")),
        ("us/task", lambda r: f"{r['us_per_task']:.1f}"),
        ("tasks/s", lambda r: f"{r['tasks_per_s']:,.0f}"),
        ("ratio", lambda r: SELF if r["reference"] else f"{r['ratio']:.2f}x"),
        ("spread", lambda r: f"{r['spread_pct']:.0f}%"),
        ("note", lambda r: r["note"]),
    ]
    return "\n\n".join(
        [
            table(
                f"== scale_out group, {scale['loop']} loop: {scale['cpu_tasks']} CPU-bound tasks of about "
                f"{scale['handler_ms']:g} ms ({scale['spin_iterations']:,} iterations) per round, "
                f"{scale['workers']} workers, median of {rounds} rounds, {scale['cpus']} CPUs",
                throughput_columns,
                scale["throughput"],
                ["speed-up: the reference's median time over this row's (higher is faster)", scale["method"]],
            ),
            table(
                f"== scale_out group, {scale['loop']} loop: Dask per-task overhead, {scale['overhead_tasks']:,} "
                f"no-op tasks per round, median of {rounds} rounds",
                overhead_columns,
                scale["overhead"],
                ["ratio: median time over the reference's (lower is faster)"],
            ),
        ]
    )


def _plot(scale: dict[str, Any], settings: dict[str, Any], out: Path) -> list[Path]:
    # Two questions, two figures: how much faster do CPU-bound handlers run
    # off the GIL, and what does the queue add to Dask's own cost per task.
    paths = []
    rows = scale["throughput"]
    fig, ax = figure(size=(9, 3.2))
    ratio_bars(
        ax,
        [r["name"] + (" (reference)" if r["reference"] else "") for r in rows],
        {scale["loop"]: [1 / r["ratio"] for r in rows]},
        {scale["loop"]: [f"{r['us_per_task'] / 1e3:.1f} ms/task" for r in rows]},
        xlabel="speed-up over the default thread pool (x; higher is faster)",
    )
    title(
        ax,
        f"How much faster do CPU-bound handlers run on processes or Dask? "
        f"{scale['cpu_tasks']} tasks of ~{scale['handler_ms']:g} ms, {scale['workers']} workers",
    )
    paths.append(save(fig, out / "scale_out.png"))
    rows = scale["overhead"]
    fig, ax = figure(size=(9, 3.2))
    ratio_bars(
        ax,
        [r["name"] + (" (reference)" if r["reference"] else "") for r in rows],
        {scale["loop"]: [r["ratio"] for r in rows]},
        {scale["loop"]: [f"{r['us_per_task']:,.0f} us/task" for r in rows]},
        xlabel="time per task over Client.submit's (x; lower is faster)",
    )
    title(ax, f"What does the queue add to Dask's cost per task? {scale['overhead_tasks']:,} no-op tasks per round")
    paths.append(save(fig, out / "dask_overhead.png"))
    return paths


def _summary(scale: dict[str, Any], settings: dict[str, Any]) -> list[SummaryRow]:
    ours = by_name(scale["overhead"], OVERHEAD_TARGET)["us_per_task"]
    return [
        SummaryRow(
            f"no-op tasks on Dask, await submit ({scale['loop']})",
            "us/task",
            ours,
            peer,
            by_name(scale["overhead"], peer)["us_per_task"],
        )
        for peer in (OVERHEAD_REFERENCE, CLIENT_EXECUTOR)
    ]


def _targets(scale: dict[str, Any], settings: dict[str, Any]) -> list[Mark]:
    workers, loop = scale["workers"], scale["loop"]
    speedup = 1 / by_name(scale["throughput"], PROCESSES)["ratio"]
    overhead = by_name(scale["overhead"], OVERHEAD_TARGET)["ratio"]
    return [
        mark(
            settings,
            f"CPU-bound throughput, {workers} processes vs {workers} threads ({loop})",
            speedup,
            1.6,
            "x",
            at_least=True,
        ),
        mark(settings, f"per-task cost on Dask, queue vs Client.submit ({loop})", overhead, 1.2, "x"),
    ]


def _sizes(settings: Settings) -> str:
    sizes = QUICK if settings.quick else FULL
    return (
        f"scale-out: {sizes.cpu_tasks} CPU-bound tasks of about {sizes.handler_ms:g} ms and "
        f"{sizes.overhead_tasks:,} no-op Dask tasks per round (first loop kind only)"
    )


GROUP = register(
    Group(
        name="scale_out",
        order=80,
        question="How much faster do CPU-bound handlers run off the GIL, and what does the queue cost on Dask?",
        report=_report,
        # A Dask cluster and 40 tasks of 50 ms per contender and round: the full run only.
        in_default=False,
        jobs=scale_out_jobs,
        rows=scale_out_results,
        plot=_plot,
        summary=_summary,
        targets=_targets,
        sizes=_sizes,
        close=close,
    )
)
