"""PNG plots of the results, drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # the backend must be chosen before pyplot is imported

__all__ = ["plot_all"]

MIB = 1024 * 1024
# Every file this module writes; all are removed before a run draws its own.
_NAMES = ("coroutine.png", "sync.png", "workers.png", "depth.png", "latency.png", "soak.png", "scale_out.png")


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _throughput(results: dict[str, Any], out: Path) -> list[Path]:
    paths = []
    for group, by_loop in results.get("throughput", {}).items():
        if group == "workers":
            continue
        loops = list(by_loop)
        names = [row["name"] for row in by_loop[loops[0]]]
        fig, ax = plt.subplots(figsize=(10, 0.5 * len(names) * len(loops) + 1.5))
        height = 0.8 / len(loops)
        for k, loop in enumerate(loops):
            values = [row["us_per_task"] for row in by_loop[loop]]
            ax.barh([i + k * height for i in range(len(names))], values, height=height, label=loop)
        ax.set_yticks([i + height * (len(loops) - 1) / 2 for i in range(len(names))], names)
        ax.invert_yaxis()
        ax.set_xlabel("microseconds per task (median; lower is better)")
        ax.set_title(f"{group} group: {by_loop[loops[0]][0]['n']:,} tasks per round")
        ax.legend()
        paths.append(_save(fig, out / f"{group}.png"))
    return paths


def _workers(results: dict[str, Any], out: Path) -> list[Path]:
    by_loop = results.get("throughput", {}).get("workers")
    if not by_loop:
        return []
    counts = results["settings"]["worker_counts"]
    fig, ax = plt.subplots(figsize=(8, 5))
    for loop, rows in by_loop.items():
        for kind in ("hybrid_queue", "asyncio.PriorityQueue"):
            mine = [r for r in rows if r["name"].startswith(kind)]
            ax.plot(counts, [r["tasks_per_s"] for r in mine], marker="o", label=f"{kind} ({loop})")
    ax.set_xscale("log")
    ax.set_xlabel("workers")
    ax.set_ylabel("tasks per second (median)")
    ax.set_title("coroutine no-op throughput against worker count")
    ax.set_ylim(bottom=0)
    ax.legend()
    return [_save(fig, out / "workers.png")]


def _depth(results: dict[str, Any], out: Path) -> list[Path]:
    by_loop = results.get("depth")
    if not by_loop:
        return []
    fig, ax = plt.subplots(figsize=(8, 5))
    for loop, rows in by_loop.items():
        for kind in sorted({r["name"] for r in rows}):
            mine = [r for r in rows if r["name"] == kind]
            depths = [r["depth"] for r in mine]
            ax.plot(depths, [r["drain_us_per_task"] for r in mine], marker="o", label=f"{kind} drain ({loop})")
            ax.plot(
                depths,
                [r["submit_us_per_task"] for r in mine],
                marker="x",
                linestyle="--",
                label=f"{kind} submit ({loop})",
            )
    ax.set_xscale("log")
    ax.set_xlabel("tasks queued before start")
    ax.set_ylabel("microseconds per task (median)")
    ax.set_title("cost per task against queue depth")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize="small")
    return [_save(fig, out / "depth.png")]


def _latency(results: dict[str, Any], out: Path) -> list[Path]:
    by_loop = results.get("latency")
    if not by_loop:
        return []
    fig, ax = plt.subplots(figsize=(8, 5))
    for loop, rows in by_loop.items():
        for row in rows:
            values = sorted(row["latencies_ms"])
            ax.step(
                values,
                [(i + 1) / len(values) for i in range(len(values))],
                where="post",
                label=f"{row['name']} ({loop})",
            )
    ax.axvline(2.0, color="grey", linestyle=":", label="2 ms target (p99)")
    ax.set_xlabel("submit to handler start, ms")
    ax.set_ylabel("fraction of probes")
    ax.set_title("start latency of an urgent task, all workers busy")
    ax.legend(fontsize="small")
    return [_save(fig, out / "latency.png")]


def _soak(results: dict[str, Any], out: Path) -> list[Path]:
    soak = results.get("soak")
    if not soak:
        return []
    # Not sharing x: the RSS pass runs more soaks than the tracemalloc pass.
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7))
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
    top.set_ylabel("RSS, MiB")
    top.set_xlabel("tasks done")
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
    bottom.set_ylabel("traced, MiB")
    bottom.set_xlabel("tasks done (one soak)")
    bottom.legend(fontsize="small")
    top.set_title(
        f"soak: {soak['tasks']:,} tasks each, {rss['soaks']} soaks for RSS, 1 under tracemalloc; "
        f"result_ttl {soak['result_ttl']} s ({soak['loop']})"
    )
    return [_save(fig, out / "soak.png")]


def _scale_out(results: dict[str, Any], out: Path) -> list[Path]:
    scale = results.get("scale_out")
    if not scale:
        return []
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.5))
    rows = scale["throughput"]
    left.barh([r["name"] for r in rows], [r["tasks_per_s"] for r in rows], color="tab:blue")
    left.invert_yaxis()
    left.set_xlabel("tasks per second (median; higher is better)")
    left.set_title(f"{scale['cpu_tasks']} CPU-bound tasks of ~{scale['handler_ms']:g} ms, {scale['workers']} workers")
    rows = scale["overhead"]
    right.barh([r["name"] for r in rows], [r["us_per_task"] for r in rows], color="tab:orange")
    right.invert_yaxis()
    right.set_xlabel("microseconds per task (median; lower is better)")
    right.set_title(f"Dask: {scale['overhead_tasks']:,} no-op tasks")
    return [_save(fig, out / "scale_out.png")]


def plot_all(results: dict[str, Any], out: Path) -> list[Path]:
    """Draw a PNG for every group that ran; return their paths."""
    for stale in _NAMES:
        # A run of fewer groups must not leave an older run's plots looking current.
        (out / stale).unlink(missing_ok=True)
    paths: list[Path] = []
    for draw in (_throughput, _workers, _depth, _latency, _soak, _scale_out):
        paths += draw(results, out)
    return paths
