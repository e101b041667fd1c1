"""The soak group: memory while a long stream of tasks with results runs, and after their TTL."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import sys
import tracemalloc
from array import array
from collections.abc import Callable
from pathlib import Path
from time import perf_counter
from typing import Any

import psutil  # type: ignore[import-untyped]  # no stubs in the bench extra

from hybrid_queue import HybridQueue

from ._harness import WORKERS, CheckFailed, Settings, Tally, check_equal, run_async
from ._plots import figure, plain_counts, save, title
from ._registry import Group, Mark, Tick, register
from ._report import KIB, MIB, mark

__all__ = ["GROUP", "METHOD", "soak"]

# After the last task, how long past the TTL to wait for the store to empty
# before measuring anyway (and reporting the results still stored).
_EXPIRY_GRACE = 5.0

METHOD = (
    "one started queue ({workers} workers, result_ttl={ttl} s, max_results={tasks:,} so only the TTL "
    "drops results); a warm-up of {warm:,} tasks of each kind, then the TTL passes and the baseline "
    "is read; then {tasks:,} tasks in chunks of {chunk:,} (coroutine and sync handlers alternating "
    "by chunk, each returning its argument; submit a chunk, await its handles, check the values, "
    "read memory); then wait until the store is empty, collect garbage and read again, the queue "
    "still running. Two passes: RSS without tracemalloc (its own tables would swell RSS), then "
    "tracemalloc. The RSS pass then runs {repeats} further soak(s) of {tasks:,} tasks on the same "
    "queue, reading RSS and sys.getallocatedblocks() after each TTL (one object kept per task would "
    "add {tasks:,} blocks per soak), and last reads RSS once more after glibc's malloc_trim(0), a "
    "diagnostic of the memory the allocator keeps. The target uses the first soak's plain RSS reading"
)


def _find_malloc_trim() -> Callable[[int], int] | None:
    # glibc keeps freed heap memory mapped; malloc_trim(0) hands it back. Used
    # only for a diagnostic reading after the last soak: it tells memory the
    # allocator holds apart from memory the program holds. Looked up before
    # the baseline: the lookup leaves objects alive (ctypes' and re's caches).
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def _read_traced() -> int:
    return tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0


async def _until_expired(queue: HybridQueue, ttl: float) -> float:
    # The expiry timer drops results; poll the public stats until it has.
    started = perf_counter()
    deadline = started + ttl + _EXPIRY_GRACE
    # The queue has no event for "store empty": poll its public stats.
    while queue.stats().results_stored and perf_counter() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    return perf_counter() - started


async def _pass(settings: Settings, trace: bool, tick: Callable[[int], None]) -> dict[str, Any]:
    tasks, chunk, ttl = settings.soak_tasks, settings.soak_chunk, settings.result_ttl
    # Only the RSS pass repeats: under tracemalloc a soak takes about four
    # times as long, and one soak's reading already counts every Python
    # object left behind.
    soaks = 1 if trace else 1 + settings.soak_repeats
    warm = min(chunk, 1000)
    # Soak s runs indices s * tasks up to (s + 1) * tasks, the warm-up the
    # ones after: every task has its own slot in the tally, and a chunk's
    # last index + 1 is the number of tasks done since the baseline.
    tally = Tally(soaks * tasks + 2 * warm)
    hits = tally.hits

    async def echo(i: int) -> int:
        hits[i] += 1
        return i

    def echo_sync(i: int) -> int:
        hits[i] += 1
        return i

    async def run_chunk(fn: Any, indices: range) -> None:
        submit = queue.submit
        handles = [await submit(fn, i) for i in indices]
        values = [await h for h in handles]
        if values != list(indices):
            raise CheckFailed(f"soak: a chunk of {len(indices)} tasks returned wrong values")

    process = psutil.Process()
    queue = HybridQueue(WORKERS, result_ttl=ttl, max_results=tasks)
    await queue.start()
    await run_chunk(echo, range(soaks * tasks, soaks * tasks + warm))
    await run_chunk(echo_sync, range(soaks * tasks + warm, soaks * tasks + 2 * warm))
    await _until_expired(queue, ttl)
    # Everything read from here on goes into arrays made before the
    # baseline: a Python object kept per reading would pin a pymalloc arena
    # of the soak's garbage each, and the RSS that stays after the TTL would
    # be the benchmark's own.
    chunks = range(0, tasks, chunk)
    done, rss, traced = (array("q", bytes(8 * (soaks * len(chunks) + 1))) for _ in range(3))
    # After each soak's TTL, and [0] at the baseline: RSS, traced bytes,
    # Python's live memory blocks.
    settled_rss, settled_traced, settled_blocks = (array("q", bytes(8 * (soaks + 1))) for _ in range(3))
    # Each soak's time for its tasks, and its wait for the store to empty, s.
    run_s, wait_s = (array("d", bytes(8 * soaks)) for _ in range(2))
    trim = _find_malloc_trim()
    # The run's progress bar was made before this baseline: making a tqdm
    # bar imports modules and starts a monitor thread, whose memory would
    # count as the soak's. A tick only formats a line and drops it.
    _settle(process, settled_rss, settled_traced, settled_blocks, 0)
    rss[0], traced[0] = settled_rss[0], settled_traced[0]
    for s in range(soaks):
        started = perf_counter()
        for c, first in enumerate(chunks):
            indices = range(s * tasks + first, s * tasks + min(first + chunk, tasks))
            await run_chunk(echo if c % 2 == 0 else echo_sync, indices)
            k = s * len(chunks) + c + 1
            done[k] = indices.stop
            rss[k], traced[k] = process.memory_info().rss, _read_traced()
            tick(len(indices))
        run_s[s] = perf_counter() - started
        wait_s[s] = await _until_expired(queue, ttl)
        _settle(process, settled_rss, settled_traced, settled_blocks, s + 1)
    trimmed_rss = None
    if trim is not None:
        trim(0)
        trimmed_rss = process.memory_info().rss
    stats = queue.stats()
    await queue.shutdown()
    tally.check("soak")
    check_equal("soak", "stats().completed", stats.completed, soaks * tasks + 2 * warm)
    check_equal("soak", "stats().retries", stats.retries, 0)
    base_rss = settled_rss[0]
    result: dict[str, Any] = {
        "tracemalloc": trace,
        "soaks": soaks,
        "run_s": run_s[0],
        "waited_for_expiry_s": wait_s[0],
        # These three after the last soak.
        "results_stored_after": stats.results_stored,
        "results_expired": stats.results_expired,
        "results_evicted": stats.results_evicted,
        "baseline_rss": base_rss,
        "peak_rss": max(rss[: len(chunks) + 1]),
        "after_rss": settled_rss[1],
        "after_last_rss_malloc_trim": trimmed_rss,
        "samples": [(d, r, t if trace else None) for d, r, t in zip(done, rss, traced, strict=True)],
    }
    if trace:
        result.update(
            baseline_traced=settled_traced[0],
            peak_traced=max(traced),
            after_traced=settled_traced[1],
        )
    else:
        # One entry per soak, the first being the target's: after its TTL,
        # minus the baseline.
        result.update(
            soaks_rss_delta=[r - base_rss for r in settled_rss[1:]],
            soaks_blocks_delta=[b - settled_blocks[0] for b in settled_blocks[1:]],
        )
    return result


def _settle(process: psutil.Process, rss: array[int], traced: array[int], blocks: array[int], k: int) -> None:
    # The readings once a soak's results are gone: after a full collection,
    # so that garbage in cycles does not count.
    gc.collect()
    rss[k], traced[k], blocks[k] = process.memory_info().rss, _read_traced(), sys.getallocatedblocks()


# Under tracemalloc a task costs about this many times as much as without.
_TRACED_COST = 4


def soak(settings: Settings, loop: str, tick: Tick = lambda fraction: None) -> dict[str, Any]:
    """Both passes of the soak on loops of kind ``loop``; sizes, samples and before/after readings.

    ``tick`` is called with the fraction of the work done, after every chunk.
    """
    # The work in task-costs: the RSS pass's soaks, then one soak under tracemalloc.
    total = (1 + settings.soak_repeats + _TRACED_COST) * settings.soak_tasks
    done = [0]

    def counted(weight: int) -> Callable[[int], None]:
        def add(tasks: int) -> None:
            done[0] += weight * tasks
            tick(done[0] / total)

        return add

    gc.collect()
    rss_pass = run_async(loop, lambda: _pass(settings, trace=False, tick=counted(1)))
    gc.collect()
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        traced_pass = run_async(loop, lambda: _pass(settings, trace=True, tick=counted(_TRACED_COST)))
    finally:
        if not was_tracing:
            tracemalloc.stop()
    warm = min(settings.soak_chunk, 1000)
    return {
        "loop": loop,
        "tasks": settings.soak_tasks,
        "chunk": settings.soak_chunk,
        "result_ttl": settings.result_ttl,
        "method": METHOD.format(
            workers=WORKERS,
            ttl=settings.result_ttl,
            tasks=settings.soak_tasks,
            warm=warm,
            chunk=settings.soak_chunk,
            repeats=settings.soak_repeats,
        ),
        "rss_pass": rss_pass,
        "traced_pass": traced_pass,
        "rss_delta": rss_pass["after_rss"] - rss_pass["baseline_rss"],
        "traced_delta": traced_pass["after_traced"] - traced_pass["baseline_traced"],
    }


def _report(soak: dict[str, Any], settings: dict[str, Any]) -> str:
    rss, traced = soak["rss_pass"], soak["traced_pass"]
    return "\n".join(
        [
            f"== soak group, {soak['loop']} loop: {soak['tasks']:,} tasks, result_ttl {soak['result_ttl']} s",
            f"RSS pass:         baseline {rss['baseline_rss'] / MIB:8.1f} MiB, peak {rss['peak_rss'] / MIB:8.1f} MiB, "
            f"after TTL {rss['after_rss'] / MIB:8.1f} MiB (delta {soak['rss_delta'] / MIB:+.2f} MiB); "
            f"{rss['run_s']:.1f} s for the tasks, {rss['waited_for_expiry_s']:.1f} s until the store emptied",
            f"                  after the TTL of each of {rss['soaks']} soaks (the first is the target's): RSS "
            + ", ".join(f"{d / MIB:+.1f}" for d in rss["soaks_rss_delta"])
            + " MiB; Python's live memory blocks "
            + ", ".join(f"{d:+,}" for d in rss["soaks_blocks_delta"])
            + f" (one object kept per task would add {soak['tasks']:,} per soak); "
            f"{rss['results_stored_after']} results still stored after the last",
            "                  after the last TTL and glibc malloc_trim(0): "
            + (
                f"{rss['after_last_rss_malloc_trim'] / MIB:.1f} MiB (diagnostic: memory the allocator kept)"
                if rss["after_last_rss_malloc_trim"] is not None
                else "n/a (no glibc)"
            ),
            f"tracemalloc pass: baseline {traced['baseline_traced'] / MIB:8.2f} MiB, peak "
            f"{traced['peak_traced'] / MIB:8.2f} MiB, after TTL {traced['after_traced'] / MIB:8.2f} MiB "
            f"(delta {soak['traced_delta'] / KIB:+.1f} KiB); {traced['run_s']:.1f} s for the tasks, "
            f"{traced['results_stored_after']} results still stored",
            f"  {soak['method']}",
        ]
    )


def _plot(soak: dict[str, Any], settings: dict[str, Any], out: Path) -> list[Path]:
    # Not sharing x: the RSS pass runs more soaks than the tracemalloc pass.
    fig, (top, bottom) = figure(2, 1, size=(8, 7))
    rss = soak["rss_pass"]
    # The RSS pass runs several soaks: one line per soak, not joined across
    # the wait for the TTL, and a dot for what stayed after each TTL.
    samples, per_soak = rss["samples"], (len(rss["samples"]) - 1) // rss["soaks"]
    for i in range(rss["soaks"]):
        # Soak i's samples, the first soak's from the baseline.
        part = samples[i * per_soak + (i > 0) : (i + 1) * per_soak + 1]
        top.plot(
            [s[0] for s in part],
            [s[1] / MIB for s in part],
            color="tab:blue",
            label="RSS during the soaks" if i == 0 else None,
        )
    ends = [(i + 1) * soak["tasks"] for i in range(rss["soaks"])]
    settled = [(rss["baseline_rss"] + d) / MIB for d in rss["soaks_rss_delta"]]
    top.plot(ends, settled, "o", color="green", label="RSS after each soak's TTL (first: the target's)")
    top.axhline(rss["baseline_rss"] / MIB, color="grey", linestyle=":", label="baseline")
    top.set_ylabel("RSS (MiB)")
    top.set_xlabel("tasks done (count)")
    plain_counts(top.xaxis)
    top.legend(fontsize="small")
    traced = soak["traced_pass"]
    bottom.plot(
        [s[0] for s in traced["samples"]],
        [s[2] / MIB for s in traced["samples"]],
        color="tab:orange",
        label="tracemalloc during the run",
    )
    bottom.axhline(traced["after_traced"] / MIB, color="green", linestyle="--", label="after the TTL")
    bottom.axhline(traced["baseline_traced"] / MIB, color="grey", linestyle=":", label="baseline")
    bottom.set_ylabel("traced memory (MiB)")
    bottom.set_xlabel("tasks done, one soak (count)")
    plain_counts(bottom.xaxis)
    bottom.legend(fontsize="small")
    title(
        top,
        f"Does memory come back once results expire? {soak['tasks']:,} tasks per soak, "
        f"result_ttl {soak['result_ttl']} s ({soak['loop']})",
    )
    return [save(fig, out / "soak.png")]


def _targets(soak: dict[str, Any], settings: dict[str, Any]) -> list[Mark]:
    return [
        mark(settings, "soak: tracemalloc after TTL minus baseline", soak["traced_delta"], 64 * KIB, "KiB"),
        mark(settings, "soak: RSS after TTL minus baseline", soak["rss_delta"], 16 * MIB, "MiB"),
    ]


def _sizes(settings: Settings) -> str:
    return (
        f"soak of {settings.soak_tasks:,} tasks (chunks of {settings.soak_chunk:,}, result_ttl "
        f"{settings.result_ttl} s), then {settings.soak_repeats} more for RSS"
    )


def _estimate(settings: Settings) -> float:
    # About 30 us per task of work (half coroutine, half sync handlers), plus the TTL waits.
    work = (1 + settings.soak_repeats + _TRACED_COST) * settings.soak_tasks * 30e-6
    return work + (3 + settings.soak_repeats) * settings.result_ttl


GROUP = register(
    Group(
        name="soak",
        order=60,
        question="Does memory come back once results expire?",
        report=_report,
        # One loop kind is enough: the memory is the queue's.
        once=lambda settings, tick: soak(settings, settings.loops[0], tick),
        estimate=_estimate,
        plot=_plot,
        targets=_targets,
        sizes=_sizes,
    )
)
