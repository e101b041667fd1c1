"""The command line of ``python -m benchmarks``: the run, ``--ab REV`` and ``--compare A.json B.json``."""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import _ab, _compare
from ._env import environment
from ._harness import LOOP_NAMES, Progress, Samples, Settings, interleave
from ._registry import Group, groups
from ._report import print_results, write_json

__all__ = ["DEFAULT_OUT", "main", "run", "settings_for"]

DEFAULT_OUT = Path(__file__).resolve().parent / "results"

# The three sizes of a run. The default (make bench) is chosen to end within
# about 4 minutes on a 2-core machine and still give ratios that mean
# something: 50,000 tasks per round (half a second or more per sample, long
# against the loop's and the scheduler's jitter), 5 rounds (a median that one
# disturbed round cannot move), one loop kind (uvloop's ratios have tracked
# asyncio's within a few percent), depths and memory groups at 10^5 (the
# bytes per task and the drain curve are flat from there on), and no
# scale_out (a Dask cluster and 50 ms CPU-bound tasks: a minute and a half on
# its own). --full is every group, both loops, the 10^6 soak and depths.
_N = {"quick": 200, "default": 50_000, "full": 100_000}
_ROUNDS = {"quick": 1, "default": 5, "full": 5}
_BIG = {"quick": 2_000, "default": 100_000, "full": 1_000_000}
# A/B: only our own rows, each side in a fresh process per round.
_AB_N = 50_000
_AB_ROUNDS = 10


def _parse(argv: Sequence[str] | None, names: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="hybrid_queue against asyncio, concurrent.futures, aiojobs and Dask, interleaved round by round. "
        "Default: the main run (about 2 minutes on 2 cores); --full: every group, both loops, 10^6 soaks.",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick",
        action="store_true",
        help="every group at tiny sizes, one round: checks that everything runs (timings mean nothing)",
    )
    size.add_argument(
        "--full",
        action="store_true",
        help="every group (scale_out too), both loop kinds, 100,000 tasks per round, depths and soaks of 10^6",
    )
    parser.add_argument(
        "--n",
        type=int,
        default=None,
        help=f"tasks per round in the throughput groups (default {_N['default']:,}; --full {_N['full']:,}; "
        f"--quick {_N['quick']}; --ab {_AB_N:,})",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help=f"rounds per contender (default {_ROUNDS['default']}; --quick 1; --ab {_AB_ROUNDS} per side)",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="GROUP",
        help=f"run only these groups (repeat, or separate with commas): {', '.join(names)}",
    )
    parser.add_argument(
        "--loop",
        choices=(*LOOP_NAMES, "both"),
        default=None,
        help="event loop kind(s) to run under (default asyncio; --full: both)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"directory for the JSON results and the PNGs (default {DEFAULT_OUT})",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    ab = parser.add_mutually_exclusive_group()
    ab.add_argument(
        "--ab",
        metavar="REV",
        help="A/B: our rows of the chosen groups (default: coroutine and sync) for the working tree against the "
        "git revision REV, interleaved round by round in fresh processes; writes ab.json; exit status 1 on a "
        "regression, 2 if a run failed",
    )
    ab.add_argument(
        "--compare",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="print the ratio table of B.json against A.json (results.json or ab.json files), or of one ab.json; "
        "exit status as --ab",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=3.0,
        metavar="PERCENT",
        help="--ab and --compare: the slowdown a row may show before it counts as a regression (default 3)",
    )
    args = parser.parse_args(argv)
    for name in ("n", "rounds"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be >= 1, got {value}")
    if not 0 <= args.threshold < 100:
        parser.error(f"--threshold must be a percentage from 0 to 100, got {args.threshold}")
    if args.compare is not None and len(args.compare) > 2:
        parser.error(f"--compare takes one A/B file or two result files, got {len(args.compare)}")
    chosen = [g.strip() for item in args.only or () for g in item.split(",") if g.strip()]
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        parser.error(f"unknown group(s) {', '.join(unknown)}; choose from {', '.join(names)}")
    args.chosen = tuple(g for g in names if g in chosen)
    return args


def settings_for(
    mode: str,
    groups: Sequence[str],
    *,
    n: int | None = None,
    rounds: int | None = None,
    loops: Sequence[str] | None = None,
    out: Path = DEFAULT_OUT,
    progress: bool = True,
) -> Settings:
    """The sizes of a run in ``mode`` ("quick", "default" or "full"), with any of them overridden."""
    quick = mode == "quick"
    n = n or _N[mode]
    # --n scales the memory groups too, within the mode's own bound.
    big = min(10 * n, _BIG[mode]) if n != _N[mode] else _BIG[mode]
    big = max(big, 1_000)
    return Settings(
        n=n,
        rounds=rounds or _ROUNDS[mode],
        loops=tuple(loops or (LOOP_NAMES if mode == "full" else LOOP_NAMES[:1])),
        groups=tuple(groups),
        out=out,
        progress=progress,
        quick=quick,
        full=mode == "full",
        depths=tuple(d for d in (10**3, 10**4, 10**5, 10**6) if d <= big),
        footprint_depth=big,
        soak_tasks=big,
        soak_chunk=min(10_000, max(100, big // 100)),
        result_ttl=0.2 if quick else 1.0,
        soak_repeats={"quick": 1, "default": 1, "full": 3}[mode],
        probes=20 if quick else 200,
        backlog=1_000 if quick else 10_000,
        worker_counts=(8, 100, 1_000, 10_000),
    )


def _sizes(settings: Settings, registry: dict[str, Group]) -> str:
    s = settings
    parts = [
        f"groups: {', '.join(s.groups)}",
        f"loops: {', '.join(s.loops)}",
        f"{s.n:,} tasks x {s.rounds} rounds per throughput contender",
    ]
    parts += [size(s) for g in s.groups if (size := registry[g].sizes) is not None]
    return "sizes: " + "; ".join(parts)


def run(settings: Settings, registry: dict[str, Group] | None = None) -> dict[str, Any]:
    """Run every selected group and return the results: environment, settings, each group's, summary, targets.

    Raises CheckFailed when a contender ran some task never or twice.
    """
    registry = registry or groups()
    chosen = [registry[name] for name in settings.groups]
    saved = settings.as_dict()
    results: dict[str, Any] = {
        "kind": "run",
        "meta": environment(settings.loops),
        "settings": saved,
        "groups": {},
    }
    started = time.perf_counter()
    progress = Progress(settings.progress)
    jobs = [job for group in chosen if group.jobs is not None for job in group.jobs(settings)]
    for group in chosen:
        if group.once is not None:
            progress.plan_once(group.name, group.estimate(settings) if group.estimate else 10.0)
    progress.plan_rounds(jobs, settings.rounds)
    found: dict[str, Any] = {}
    try:
        # The groups that run once first, while the process is fresh (the memory groups).
        for group in chosen:
            if group.once is not None:
                found[group.name] = group.once(settings, progress.once(group.name))
                progress.end_once()
        samples: Samples = interleave(jobs, settings.rounds, progress)
    finally:
        progress.close()
        for group in chosen:
            if group.close is not None:
                group.close()  # the process pool and the Dask cluster, if the group made them
    for group in chosen:
        if group.rows is not None:
            found[group.name] = group.rows(samples, settings)
    results["groups"] = {group.name: found[group.name] for group in chosen if group.name in found}
    results["meta"]["seconds"] = time.perf_counter() - started
    summary, marks = [], []
    for group in chosen:
        result = results["groups"].get(group.name)
        if result is None:
            continue
        if group.summary is not None:
            summary += [dataclasses.asdict(row) for row in group.summary(result, saved)]
        if group.targets is not None:
            marks += [m.as_dict() for m in group.targets(result, saved)]
    results["summary"] = summary
    results["targets"] = marks
    return results


def plot_all(results: dict[str, Any], registry: dict[str, Group], out: Path) -> list[Path]:
    """Draw every group's figures; first remove the PNGs of an earlier run, so none looks current."""
    for stale in out.glob("*.png"):
        stale.unlink()
    paths: list[Path] = []
    for name, result in results["groups"].items():
        draw = registry[name].plot
        if draw is not None:
            paths += draw(result, results["settings"], out)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status. A wrong task count raises CheckFailed."""
    registry = groups()
    args = _parse(argv, list(registry))
    if args.compare is not None:
        return _compare.compare(args.compare, args.threshold / 100)
    if args.ab is not None:
        chosen = args.chosen or _ab.AB_GROUPS
        return _ab.run_ab(
            args.ab,
            chosen,
            n=args.n or _AB_N,
            rounds=args.rounds or _AB_ROUNDS,
            loop=args.loop if args.loop in LOOP_NAMES else LOOP_NAMES[0],
            threshold=args.threshold / 100,
            out=args.out,
            progress=not args.no_progress,
        )
    mode = "quick" if args.quick else "full" if args.full else "default"
    # --quick checks that everything runs: every group, as --full.
    chosen = args.chosen or tuple(g.name for g in registry.values() if mode != "default" or g.in_default)
    settings = settings_for(
        mode,
        chosen,
        n=args.n,
        rounds=args.rounds,
        loops=None if args.loop is None else LOOP_NAMES if args.loop == "both" else (args.loop,),
        out=args.out,
        progress=not args.no_progress,
    )
    settings.out.mkdir(parents=True, exist_ok=True)
    print(_sizes(settings, registry), flush=True)
    results = run(settings, registry)
    print_results(results, registry)
    written = [write_json(results, settings.out), *plot_all(results, registry, settings.out)]
    print()
    print(f"took {results['meta']['seconds']:.0f} s; wrote {', '.join(str(p) for p in written)}")
    return 0
