"""The soak group: memory while a long stream of tasks with results runs, and after their TTL."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import sys
import tracemalloc
from array import array
from time import perf_counter
from typing import Any

import psutil  # type: ignore[import-untyped]  # no stubs in the bench extra

from hybrid_queue import HybridQueue

from ._harness import WORKERS, CheckFailed, Settings, Tally, check_equal, progress_bar, run_async

__all__ = ["METHOD", "soak"]

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
    "tracemalloc. The target uses the plain RSS reading; the one after glibc's malloc_trim(0) is "
    "diagnostic only. The RSS pass then runs {tasks:,} more tasks the same way {repeats} more time(s) on "
    "the same queue (from the trimmed heap), reading RSS and sys.getallocatedblocks() after each TTL: "
    "memory that grows from soak to soak is a leak; memory that stays level is what the allocators keep"
)


def _read(process: psutil.Process, collect: bool) -> tuple[int, int | None]:
    if collect:
        gc.collect()
    traced = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else None
    return process.memory_info().rss, traced


def _malloc_trim() -> bool:
    # glibc keeps freed heap memory mapped; malloc_trim(0) hands it back. Used
    # only for a second, diagnostic reading: it tells memory the allocator
    # holds apart from memory the program holds.
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        trim = None
    if trim is None:
        return False
    trim(0)
    return True


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


async def _pass(settings: Settings, trace: bool) -> dict[str, Any]:
    tasks, chunk, ttl = settings.soak_tasks, settings.soak_chunk, settings.result_ttl
    # Only the RSS pass repeats: a leak shows in RSS, and tracemalloc's
    # reading after one soak already accounts for every Python object.
    soaks = 1 if trace else 1 + settings.soak_repeats
    warm = min(chunk, 1000)
    # Soak s runs tasks s * tasks .. (s + 1) * tasks - 1; the warm-up takes
    # the indices after the last soak's. Every index is one task.
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
    # The samples live in arrays made before the baseline: a Python object
    # kept per sample would pin a pymalloc arena of the soak's garbage each,
    # and the RSS that stays after the TTL would be the benchmark's own.
    chunks = range(0, tasks, chunk)
    done, rss, traced = (array("q", bytes(8 * (soaks * len(chunks) + 1))) for _ in range(3))
    # RSS and Python's live memory blocks after each soak's TTL; [0]: the baseline.
    settled_rss, blocks = (array("q", bytes(8 * (soaks + 1))) for _ in range(2))
    # Made before the baseline too: making a tqdm bar imports modules and
    # starts a monitor thread, whose memory would count as the soak's.
    bar = progress_bar(soaks * tasks, "soak (tracemalloc)" if trace else "soak (RSS)", settings.progress)
    base_rss, base_traced = _read(process, collect=True)
    rss[0], traced[0] = base_rss, base_traced or 0
    settled_rss[0], blocks[0] = base_rss, sys.getallocatedblocks()
    sample = 0
    with bar:
        for s in range(soaks):
            started = perf_counter()
            for c, first in enumerate(chunks):
                indices = range(s * tasks + first, s * tasks + min(first + chunk, tasks))
                await run_chunk(echo if c % 2 == 0 else echo_sync, indices)
                sample += 1
                done[sample] = indices.stop
                rss[sample], traced[sample] = _read(process, collect=False)[0], _read_traced()
                bar.update(len(indices))
            elapsed = perf_counter() - started
            waited = await _until_expired(queue, ttl)
            settled_rss[s + 1], after_traced = _read(process, collect=True)
            blocks[s + 1] = sys.getallocatedblocks()
            if s == 0:
                # The target's readings. The further soaks start from the
                # heap as the trim leaves it.
                run_s, waited_s, after_rss = elapsed, waited, settled_rss[1]
                trimmed_rss = process.memory_info().rss if _malloc_trim() else None
    stats = queue.stats()
    await queue.shutdown()
    tally.check("soak")
    check_equal("soak", "stats().completed", stats.completed, soaks * tasks + 2 * warm)
    check_equal("soak", "stats().retries", stats.retries, 0)
    result: dict[str, Any] = {
        "tracemalloc": trace,
        "run_s": run_s,
        "waited_for_expiry_s": waited_s,
        "results_stored_after": stats.results_stored,
        "results_expired": stats.results_expired,
        "results_evicted": stats.results_evicted,
        "baseline_rss": base_rss,
        "peak_rss": max(rss[: len(chunks) + 1]),
        "after_rss": after_rss,
        "after_rss_malloc_trim": trimmed_rss,
        # One entry per soak (the first is the target's), after its TTL:
        # RSS and live blocks minus the baseline's.
        "soaks_rss_delta": [r - base_rss for r in settled_rss[1:]],
        "soaks_blocks_delta": [b - blocks[0] for b in blocks[1:]],
        "samples": [(d, r, t if trace else None) for d, r, t in zip(done, rss, traced, strict=True)],
    }
    if trace:
        result.update(
            baseline_traced=base_traced,
            peak_traced=max(traced),
            after_traced=after_traced,
        )
    return result


def soak(settings: Settings, loop: str) -> dict[str, Any]:
    """Both passes of the soak on loops of kind ``loop``; sizes, samples and before/after readings."""
    gc.collect()
    rss_pass = run_async(loop, lambda: _pass(settings, trace=False))
    gc.collect()
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        traced_pass = run_async(loop, lambda: _pass(settings, trace=True))
    finally:
        if not was_tracing:
            tracemalloc.stop()
    warm = min(settings.soak_chunk, 1000)
    return {
        "loop": loop,
        "tasks": settings.soak_tasks,
        "chunk": settings.soak_chunk,
        "result_ttl": settings.result_ttl,
        "repeats": settings.soak_repeats,
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
