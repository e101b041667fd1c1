"""A/B runs: our rows measured for the working tree and for a git revision, round by round.

``python -m benchmarks --ab REV`` extracts ``hybrid_queue/`` as it is at REV
(``git archive``, read-only for the repository) into a temporary directory,
then runs rounds in fresh child processes, the two sides alternating (new,
old, old, new, ...) so that drift of the machine hits both alike. Each child
imports ``hybrid_queue`` from its side's tree (PYTHONPATH, with ``-P`` so the
current directory cannot shadow it, and ahead of the venv's editable
install), checks that it did, runs a small untimed warm-up and then one
round of every A/B row, and prints its samples as JSON. The benchmark code is
always the working tree's, so both sides are measured by the same code.

The ratios, their spread and the verdicts are ``benchmarks._compare``'s.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ._compare import EXIT_FAILED, Key, key_of, print_ab, ratio_rows, status
from ._env import ROOT, environment, git
from ._harness import Settings, progress_bar
from ._report import write_json

__all__ = ["AB_GROUPS", "run_ab"]

# The groups an A/B run measures unless told otherwise: the coroutine path,
# the sync path through the thread pool, and submit_blocking from threads.
AB_GROUPS = ("coroutine", "sync")


# ------------------------------------------------------------------- children


@dataclass(frozen=True, slots=True)
class _Side:
    name: str  # "new" or "old"
    label: str
    tree: Path  # the directory that holds the hybrid_queue/ this side must import


def _child(side: _Side, spec: dict[str, Any]) -> dict[str, Any]:
    # The side's tree first, then the working tree for the benchmark code;
    # PYTHONPATH comes before site-packages, so before the editable install.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(dict.fromkeys([str(side.tree), str(ROOT)])))
    spec = dict(spec, tree=str(side.tree), root=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-P", "-m", "benchmarks._ab", json.dumps(spec)],
        env=env,
        cwd=side.tree,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the {side.name} side's child failed ({done.returncode}):\n{done.stderr.strip()}")
    child: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return child


def _child_main(spec: dict[str, Any]) -> int:
    # Runs in the child: check what was imported, warm up, run one round of every A/B row.
    import benchmarks
    import hybrid_queue

    from ._registry import groups

    got = Path(hybrid_queue.__file__).resolve().parent.parent
    if got != Path(spec["tree"]).resolve():
        print(f"hybrid_queue came from {got}, expected {spec['tree']}", file=sys.stderr)
        return 3
    bench = Path(benchmarks.__file__).resolve().parent.parent
    if bench != Path(spec["root"]).resolve():
        print(f"the benchmark code came from {bench}, expected {spec['root']}", file=sys.stderr)
        return 3
    registry = groups()
    settings = _ab_settings(spec["groups"], spec["n"], spec["loop"])
    warm = replace(settings, n=max(100, settings.n // 10))
    samples: dict[str, float] = {}
    errors: dict[str, str] = {}
    for name in settings.groups:
        make = registry[name].ab_jobs
        assert make is not None  # checked by the parent
        for job in make(warm):
            try:
                job.run()
            except Exception:  # the timed run below reports it
                break
        for job in make(settings):
            try:
                samples["|".join(job.key)] = job.run()
            except Exception as exc:  # an old revision may lack what the row uses: reported per row
                errors["|".join(job.key)] = f"{type(exc).__name__}: {exc}"
    result = {
        "hybrid_queue_file": hybrid_queue.__file__,
        "hybrid_queue": hybrid_queue.__version__,
        "samples": samples,
        "errors": errors,
    }
    print(json.dumps(result))
    return 0


def _ab_settings(groups: Sequence[str], n: int, loop: str) -> Settings:
    # Only the throughput fields matter to A/B rows; the rest are the quick sizes.
    return Settings(
        n=n,
        rounds=1,
        loops=(loop,),
        groups=tuple(groups),
        out=Path(),
        progress=False,
        quick=False,
        full=False,
        depths=(1000,),
        footprint_depth=1000,
        soak_tasks=1000,
        soak_chunk=100,
        result_ttl=0.2,
        soak_repeats=0,
        probes=10,
        backlog=100,
        worker_counts=(8, 100, 1_000, 10_000),
    )


def _extract(commit: str, into: Path) -> None:
    # git archive only reads the repository: no worktree entry to clean up,
    # nothing that could collide with another git command in this checkout.
    done = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit, "--", "hybrid_queue"],
        capture_output=True,
        check=True,
        timeout=60,
    )
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as archive:
        archive.extractall(into, filter="data")


# ----------------------------------------------------------------- the modes


def run_ab(
    rev: str,
    groups: Sequence[str],
    *,
    n: int,
    rounds: int,
    loop: str,
    threshold: float,
    out: Path,
    progress: bool,
) -> int:
    """Run the A/B of the working tree against ``rev``; print the table, write ab.json; return the exit status."""
    from ._registry import groups as registry

    commit = git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if not commit:
        print(f"--ab: {rev!r} is not a commit of the repository at {ROOT}", file=sys.stderr)
        return EXIT_FAILED
    known = registry()
    unfit = [g for g in groups if known[g].ab_jobs is None]
    if unfit:
        print(f"--ab: group(s) {', '.join(unfit)} have no A/B rows", file=sys.stderr)
        return EXIT_FAILED
    try:
        return _measure_ab(
            rev, commit, groups, n=n, rounds=rounds, loop=loop, threshold=threshold, out=out, progress=progress
        )
    except (subprocess.CalledProcessError, RuntimeError) as exc:
        detail = exc.stderr.decode(errors="replace").strip() if isinstance(exc, subprocess.CalledProcessError) else ""
        print(f"--ab: {exc}" + (f"\n{detail}" if detail else ""), file=sys.stderr)
        return EXIT_FAILED


def _measure_ab(
    rev: str,
    commit: str,
    groups: Sequence[str],
    *,
    n: int,
    rounds: int,
    loop: str,
    threshold: float,
    out: Path,
    progress: bool,
) -> int:
    env = environment([loop])
    spec = {"groups": list(groups), "n": n, "loop": loop}
    samples: dict[str, dict[str, list[float]]] = {"new": {}, "old": {}}
    errors: dict[str, str] = {}
    children: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="hybrid_queue-ab-") as tmp:
        _extract(commit, Path(tmp))
        new_label = "working tree" + (" (with uncommitted changes)" if env["source"]["hybrid_queue_modified"] else "")
        sides = {"new": _Side("new", new_label, ROOT), "old": _Side("old", f"{rev} ({commit[:12]})", Path(tmp))}
        print(
            f"A/B: {sides['new'].label} against {sides['old'].label}; groups {', '.join(groups)}; "
            f"{loop} loop; {n:,} tasks per row and round; {rounds} rounds, each side in a fresh process"
        )
        with progress_bar(2 * rounds, "A/B rounds", progress) as bar:
            for r in range(rounds):
                # Alternate which side goes first, so neither always runs in the other's wake.
                for name in ("new", "old") if r % 2 == 0 else ("old", "new"):
                    child = _child(sides[name], spec)
                    children[name] = {k: child[k] for k in ("hybrid_queue_file", "hybrid_queue")}
                    for key, seconds in child["samples"].items():
                        samples[name].setdefault(key, []).append(seconds)
                    errors.update({f"{name}: {k}": v for k, v in child["errors"].items()})
                    bar.update(1)
    complete = [k for k in samples["new"] if len(samples["new"][k]) == rounds == len(samples["old"].get(k, ()))]

    def timed(name: str) -> dict[Key, tuple[int, list[float]]]:
        return {key_of(k): (n, samples[name][k]) for k in complete}

    rows = ratio_rows(timed("old"), timed("new"), threshold, paired=True)
    result = {
        "kind": "ab",
        "meta": {
            **env,
            "ab": {
                "rev": rev,
                "commit": commit,
                "new": {"label": sides["new"].label, **children.get("new", {})},
                "old": {"label": sides["old"].label, **children.get("old", {})},
            },
        },
        "settings": {"groups": list(groups), "n": n, "rounds": rounds, "loop": loop, "threshold": threshold},
        "samples": samples,
        "errors": errors,
        "rows": rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    path = write_json(result, out, "ab.json")
    print_ab(result)
    print(f"wrote {path}")
    return status(rows, errors)


if __name__ == "__main__":
    sys.exit(_child_main(json.loads(sys.argv[1])))
