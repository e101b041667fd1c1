"""The environment a run measured: machine, Python, loop kinds, versions, and the code's git revision."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hybrid_queue

__all__ = ["PEERS", "ROOT", "cpu_model", "describe", "environment", "git"]

# The checkout the benchmark code sits in (benchmarks/ beside hybrid_queue/).
ROOT = Path(__file__).resolve().parent.parent
# Distributions whose versions a result depends on: the peers measured, and the loop.
PEERS = ("uvloop", "aiojobs", "distributed")


def git(*args: str, root: Path = ROOT) -> str | None:
    """The stripped output of a read-only git command in ``root``, or None if git fails.

    --no-optional-locks keeps ``status`` from touching the index, so it never
    collides with someone else's git command in the same checkout.
    """
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


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo on Linux, else what the platform module knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _source() -> dict[str, Any]:
    # Which code was measured: the commit, and whether the checkout (and
    # hybrid_queue/ in it) differs from it.
    changed = git("status", "--porcelain")
    changed_lib = git("status", "--porcelain", "--", "hybrid_queue")
    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty": None if changed is None else bool(changed),
        "hybrid_queue_modified": None if changed_lib is None else bool(changed_lib),
        "hybrid_queue_file": hybrid_queue.__file__,
    }


def environment(loops: Sequence[str]) -> dict[str, Any]:
    """Everything a result depends on besides the code's own sizes, JSON-ready."""
    return {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "loops": list(loops),
        "hybrid_queue": hybrid_queue.__version__,
        "versions": {dist: _version(dist) for dist in PEERS},
        "source": _source(),
    }


def describe(meta: dict[str, Any]) -> str:
    """The environment as one line, for the top of a report; fields a results file lacks are left out.

    Files written before the environment was recorded in full lack some.
    """
    source = meta.get("source", {})
    commit = (source.get("commit") or "unknown commit")[:12]
    if source.get("hybrid_queue_modified"):
        commit += " with uncommitted changes to hybrid_queue/"
    elif source.get("dirty"):
        commit += " (hybrid_queue/ as committed; other files changed)"
    versions = meta.get("versions") or {d: meta[d] for d in PEERS if d in meta}
    where = ", ".join(
        part
        for part in (
            f"{meta.get('python_implementation', 'Python')} {meta.get('python', '?')}",
            f"{meta.get('cpu', 'unknown CPU')} x {meta.get('cpus', '?')} CPUs",
            meta.get("platform", ""),
        )
        if part
    )
    loops = f"; loops: {', '.join(meta['loops'])}" if "loops" in meta else ""
    peers = "; " + ", ".join(f"{dist} {v}" for dist, v in versions.items()) if versions else ""
    return f"hybrid_queue {meta.get('hybrid_queue', '?')} ({commit}) on {where}{loops}{peers}"
