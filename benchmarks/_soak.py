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


async def _pass(settings: Settings, trace: bool) -> dict[str, Any]:
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
    # Made before the baseline too: making a tqdm bar imports modules and
    # starts a monitor thread, whose memory would count as the soak's.
    bar = progress_bar(soaks * tasks, "soak (tracemalloc)" if trace else "soak (RSS)", settings.progress)
    _settle(process, settled_rss, settled_traced, settled_blocks, 0)
    rss[0], traced[0] = settled_rss[0], settled_traced[0]
    with bar:
        for s in range(soaks):
            started = perf_counter()
            for c, first in enumerate(chunks):
                indices = range(s * tasks + first, s * tasks + min(first + chunk, tasks))
                await run_chunk(echo if c % 2 == 0 else echo_sync, indices)
                k = s * len(chunks) + c + 1
                done[k] = indices.stop
                rss[k], traced[k] = process.memory_info().rss, _read_traced()
                bar.update(len(indices))
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
