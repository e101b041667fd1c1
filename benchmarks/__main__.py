"""``python -m benchmarks``: run the groups, print the tables, write JSON and PNGs."""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hybrid_queue

from . import _coroutine, _depth, _footprint, _latency, _scale_out, _scaling, _soak, _sync
from ._harness import LOOP_NAMES, Settings, interleave
from ._plots import plot_all
from ._report import print_results, targets, write_json
from ._throughput import TIMED_SPAN, throughput_jobs, throughput_rows

__all__ = ["main"]

GROUPS = ("coroutine", "sync", "workers", "depth", "latency", "footprint", "soak", "scale_out")
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
QUICK_N = 200


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="hybrid_queue against asyncio, concurrent.futures and aiojobs, interleaved round by round.",
    )
    parser.add_argument(
        "--n",
        type=int,
        default=None,
        help="tasks per round in the throughput groups (default 100000; --quick: 200); "
        "the soak, the footprint and the largest depth use 10 x n, at most 1,000,000",
    )
    parser.add_argument("--rounds", type=int, default=None, help="rounds per contender (default 5; --quick: 1)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes and one round, to check that everything runs (timings mean nothing)",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="GROUP",
        help=f"run only these groups (repeat, or separate with commas): {', '.join(GROUPS)}",
    )
    parser.add_argument(
        "--loop", choices=(*LOOP_NAMES, "both"), default="both", help="event loop kind(s) to run under (default both)"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"directory for results.json and the PNGs (default {DEFAULT_OUT})"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    args = parser.parse_args(argv)
    for name in ("n", "rounds"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be >= 1, got {value}")
    groups = [g.strip() for item in args.only or [",".join(GROUPS)] for g in item.split(",") if g.strip()]
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        parser.error(f"unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    args.groups = tuple(g for g in GROUPS if g in groups)
    return args


def _settings(args: argparse.Namespace) -> Settings:
    quick = args.quick
    n = args.n or (QUICK_N if quick else 100_000)
    big = min(10 * n, 1_000_000)
    soak_chunk = min(10_000, max(100, big // 100))
    return Settings(
        n=n,
        rounds=args.rounds or (1 if quick else 5),
        loops=LOOP_NAMES if args.loop == "both" else (args.loop,),
        groups=args.groups,
        out=args.out,
        progress=not args.no_progress,
        quick=quick,
        depths=tuple(d for d in (10**3, 10**4, 10**5, 10**6) if d <= max(big, 10**3)),
        footprint_depth=big,
        soak_tasks=big,
        soak_chunk=soak_chunk,
        result_ttl=0.2 if quick else 1.0,
        soak_repeats=1 if quick else 3,
        probes=20 if quick else 200,
        backlog=1_000 if quick else 10_000,
        worker_counts=(8, 100, 1_000, 10_000),
    )


def _source() -> dict[str, Any]:
    # Which code was measured: the commit, and whether hybrid_queue/ differs
    # from it. Read-only git calls; --no-optional-locks keeps `status` from
    # touching the index, so it never collides with someone else's git command.
    root = Path(hybrid_queue.__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "--no-optional-locks", "-C", str(root), *args],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    changed = git("status", "--porcelain", "--", "hybrid_queue")
    return {"commit": git("rev-parse", "HEAD"), "hybrid_queue_modified": None if changed is None else bool(changed)}


def _meta(settings: Settings) -> dict[str, Any]:
    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "hybrid_queue": hybrid_queue.__version__,
        "source": _source(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "uvloop": version("uvloop"),
        "aiojobs": version("aiojobs"),
        "distributed": version("distributed"),
        "timed_span": TIMED_SPAN,
        "footprint_method": _footprint.METHOD,
        "quick": settings.quick,
    }


def _sizes(settings: Settings) -> str:
    s = settings
    parts = [
        f"groups: {', '.join(s.groups)}",
        f"loops: {', '.join(s.loops)}",
        f"{s.n:,} tasks x {s.rounds} rounds per throughput contender",
    ]
    if "depth" in s.groups:
        parts.append(f"depths {', '.join(f'{d:,}' for d in s.depths)}")
    if "latency" in s.groups:
        parts.append(f"{s.probes} latency probes per contender and loop, backlog {s.backlog:,}")
    if "footprint" in s.groups:
        parts.append(f"footprint at depth {s.footprint_depth:,}")
    if "soak" in s.groups:
        parts.append(
            f"soak of {s.soak_tasks:,} tasks (chunks of {s.soak_chunk:,}, result_ttl {s.result_ttl} s), "
            f"then {s.soak_repeats} more for RSS"
        )
    if "scale_out" in s.groups:
        sizes = _scale_out.QUICK if s.quick else _scale_out.FULL
        parts.append(
            f"scale-out: {sizes.cpu_tasks} CPU-bound tasks of about {sizes.handler_ms:g} ms and "
            f"{sizes.overhead_tasks:,} no-op Dask tasks per round (first loop kind only)"
        )
    return "sizes: " + "; ".join(parts)


def run(settings: Settings) -> dict[str, Any]:
    """Run every selected group and return the results, targets included. Raises CheckFailed."""
    results: dict[str, Any] = {"meta": _meta(settings), "settings": settings.as_dict()}
    started = time.perf_counter()
    groups = settings.groups
    first_loop = settings.loops[0]
    # The memory groups first, while the process is fresh; one loop kind is enough for them.
    if "soak" in groups:
        results["soak"] = _soak.soak(settings, first_loop)
    if "footprint" in groups:
        results["footprint"] = _footprint.footprint_rows(settings.footprint_depth, first_loop)

    throughput = {
        "coroutine": _coroutine.CONTENDERS,
        "sync": _sync.CONTENDERS,
        "workers": _scaling.contenders(settings.worker_counts),
    }
    jobs = [job for g, cs in throughput.items() if g in groups for job in throughput_jobs(g, cs, settings, settings.n)]
    if "depth" in groups:
        jobs += _depth.depth_jobs(settings)
    if "latency" in groups:
        jobs += _latency.latency_jobs(settings)
    if "scale_out" in groups:
        jobs += _scale_out.scale_out_jobs(settings)
    try:
        samples = interleave(jobs, settings.rounds, settings.progress)
    finally:
        _scale_out.close()  # the process pool and the Dask cluster, if the group made them

    by_group = {
        g: {loop: throughput_rows(g, cs, samples, loop, settings.n) for loop in settings.loops}
        for g, cs in throughput.items()
        if g in groups
    }
    if by_group:
        results["throughput"] = by_group
    if "depth" in groups:
        results["depth"] = {loop: _depth.depth_rows(samples, loop, settings.depths) for loop in settings.loops}
    if "latency" in groups:
        results["latency"] = {loop: _latency.latency_rows(samples, loop) for loop in settings.loops}
    if "scale_out" in groups:
        results["scale_out"] = _scale_out.scale_out_results(samples, settings)
    results["meta"]["seconds"] = time.perf_counter() - started
    results["targets"] = targets(results)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status. A wrong task count raises CheckFailed."""
    settings = _settings(_parse(argv))
    settings.out.mkdir(parents=True, exist_ok=True)
    print(_sizes(settings), flush=True)
    results = run(settings)
    print_results(results)
    written = [write_json(results, settings.out), *plot_all(results, settings.out)]
    print()
    print(f"took {results['meta']['seconds']:.0f} s; wrote {', '.join(str(p) for p in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
