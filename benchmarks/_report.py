"""Tables on stdout, the target marks, and the JSON file."""

from __future__ import annotations

import json
import string
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import _coroutine, _depth, _latency, _scale_out, _scaling, _sync

__all__ = ["print_results", "targets", "write_json"]

KIB = 1024
MIB = 1024 * 1024

Column = tuple[str, Callable[[dict[str, Any]], str]]

# Printed once above the tables of a --quick run, whose targets get no verdict.
QUICK_NOTE = "quick run: sizes too small for verdicts; the targets show their values only"
# The ratio cell of a reference row: its ratio would be its own figure over itself.
SELF = "-"


def _table(title: str, columns: Sequence[Column], rows: Sequence[dict[str, Any]], notes: Sequence[str] = ()) -> str:
    cells = [[fmt(row) for _, fmt in columns] for row in rows]
    widths = [max(len(header), *(len(line[k]) for line in cells)) for k, (header, _) in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        # The first column (names) is left-aligned, the figures right-aligned.
        parts = [values[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(values[1:], widths[1:], strict=True)]
        return "  ".join(parts).rstrip()

    out = [title, line([h for h, _ in columns]), line(["-" * w for w in widths])]
    out += [line(c) for c in cells]
    out += [f"  {note}" for note in notes]
    return "\n".join(out)


def _throughput_table(group: str, loop: str, rows: Sequence[dict[str, Any]], rounds: int) -> str:
    # References get letters, so a ratio says which reference it is against: "1.23x A".
    letters = iter(string.ascii_uppercase)
    tags = {row["name"]: next(letters) for row in rows if row["reference"]}
    n = rows[0]["n"]
    columns: list[Column] = [
        ("contender", lambda r: r["name"] + (f" [ref {tags[r['name']]}]" if r["reference"] else "")),
        ("us/task", lambda r: f"{r['us_per_task']:.2f}"),
        ("tasks/s", lambda r: f"{r['tasks_per_s']:,.0f}"),
        ("ratio", lambda r: SELF if r["reference"] else f"{r['ratio']:.2f}x {tags[r['versus']]}"),
        ("spread", lambda r: f"{r['spread_pct']:.0f}%"),
        ("note", lambda r: r["note"]),
    ]
    title = f"== {group} group, {loop} loop: {n:,} tasks per round, median of {rounds} rounds"
    notes = [
        "ratio: median time over the median time of the reference row named by the letter (lower is faster); "
        f"{SELF} on a reference row",
        "spread: (slowest round - fastest round) / median",
    ]
    return _table(title, columns, rows, notes)


def _depth_table(loop: str, rows: Sequence[dict[str, Any]]) -> str:
    smallest = min(r["depth"] for r in rows)
    columns: list[Column] = [
        ("contender", lambda r: r["name"]),
        ("depth", lambda r: f"{r['depth']:,}"),
        ("runs", lambda r: str(r["runs"])),
        ("submit us/task", lambda r: f"{r['submit_us_per_task']:.2f}"),
        ("drain us/task", lambda r: f"{r['drain_us_per_task']:.2f}"),
        ("total us/task", lambda r: f"{r['total_us_per_task']:.2f}"),
    ]
    # A row at the smallest depth would compare its drain time with itself;
    # with one depth (a quick run) that is every row, so the column goes.
    if any(r["depth"] > smallest for r in rows):
        columns.append(("drain vs smallest", lambda r: SELF if r["depth"] == smallest else f"{r['drain_ratio']:.2f}x"))
    return _table(f"== depth group, {loop} loop (medians over all runs)", columns, rows, [_depth.TIMED_SPAN])


def _latency_table(loop: str, rows: Sequence[dict[str, Any]]) -> str:
    columns: list[Column] = [
        ("contender", lambda r: r["name"]),
        ("probes", lambda r: str(r["probes"])),
        ("p50 ms", lambda r: f"{r['p50_ms']:.3f}"),
        ("p90 ms", lambda r: f"{r['p90_ms']:.3f}"),
        ("p99 ms", lambda r: f"{r['p99_ms']:.3f}"),
        ("max ms", lambda r: f"{r['max_ms']:.3f}"),
    ]
    return _table(
        f"== latency group, {loop} loop: start latency of a priority-{_latency.URGENT} task",
        columns,
        rows,
        [_latency.METHOD],
    )


def _footprint_table(rows: Sequence[dict[str, Any]], method: str) -> str:
    columns: list[Column] = [
        ("contender", lambda r: r["name"]),
        ("depth", lambda r: f"{r['depth']:,}"),
        ("bytes/task", lambda r: f"{r['bytes_per_task']:.0f}"),
        ("cancel+shutdown s (traced)", lambda r: f"{r['cancel_shutdown_s']:.2f}"),
    ]
    return _table("== footprint group: memory per queued task", columns, rows, [method])


def _soak_text(soak: dict[str, Any]) -> str:
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


def _scale_out_text(scale: dict[str, Any], rounds: int) -> str:
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
            _table(
                f"== scale_out group, {scale['loop']} loop: {scale['cpu_tasks']} CPU-bound tasks of about "
                f"{scale['handler_ms']:g} ms ({scale['spin_iterations']:,} iterations) per round, "
                f"{scale['workers']} workers, median of {rounds} rounds, {scale['cpus']} CPUs",
                throughput_columns,
                scale["throughput"],
                ["speed-up: the reference's median time over this row's (higher is faster)", scale["method"]],
            ),
            _table(
                f"== scale_out group, {scale['loop']} loop: Dask per-task overhead, {scale['overhead_tasks']:,} "
                f"no-op tasks per round, median of {rounds} rounds",
                overhead_columns,
                scale["overhead"],
                ["ratio: median time over the reference's (lower is faster)"],
            ),
        ]
    )


# ----------------------------------------------------------------------- targets


def _row(rows: Sequence[dict[str, Any]], name: str, **match: Any) -> dict[str, Any]:
    for row in rows:
        if row["name"] == name and all(row[k] == v for k, v in match.items()):
            return row
    raise KeyError(name)


def _shown(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "ms":
        return f"{value:.3f} ms"
    if unit == "B":
        return f"{value:.0f} B"
    if unit == "KiB":
        return f"{value / KIB:+.1f} KiB"
    return f"{value / MIB:+.2f} MiB"


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target whose group ran: what it asks, the value measured, and whether it was met.

    ``met`` is None in a quick run: its sizes are too small for a verdict.
    """
    marks: list[dict[str, Any]] = []
    quick = results["settings"]["quick"]

    def mark(name: str, value: float, limit: float, unit: str, *, at_least: bool = False) -> None:
        met = None if quick else (value >= limit if at_least else value <= limit)
        rule = f"{'>=' if at_least else '<='} {_shown(limit, unit).lstrip('+')}"
        marks.append({"target": name, "value": value, "shown": _shown(value, unit), "rule": rule, "met": met})

    throughput = results.get("throughput", {})
    for loop, rows in throughput.get("coroutine", {}).items():
        ratio = _row(rows, _coroutine.TARGET_ROW)["ratio"]
        mark(f"coroutine path ({loop}): hybrid_queue vs PriorityQueue reference", ratio, 1.0, "x")
    for loop, rows in throughput.get("sync", {}).items():
        hq = _row(rows, _sync.TARGET_ROW)
        mark(f"sync path ({loop}): hybrid_queue vs TPE.submit", hq["ratio"], 1.25, "x")
        faster = _row(rows, _sync.RUN_IN_EXECUTOR)["median_s"] / hq["median_s"]
        mark(f"sync path ({loop}): hybrid_queue faster than run_in_executor", faster, 3.0, "x", at_least=True)
        blocking = _row(rows, _sync.TARGET_BLOCKING)["ratio"]
        mark(f"submit_blocking from 8 threads ({loop}) vs TPE.submit from 8 threads", blocking, 1.25, "x")
    for loop, rows in results.get("depth", {}).items():
        hq_rows = [r for r in rows if r["name"] == _depth.HYBRID]
        first, last = hq_rows[0], hq_rows[-1]
        if first is last:
            continue  # one depth only: the ratio would be a drain time over itself
        ratio = last["drain_us_per_task"] / first["drain_us_per_task"]
        mark(f"drain cost at depth {last['depth']:,} vs {first['depth']:,} ({loop})", ratio, 2.0, "x")
    for loop, rows in results.get("latency", {}).items():
        p99 = _row(rows, _latency.HYBRID)["p99_ms"]
        mark(f"priority-{_latency.URGENT} start latency p99 ({loop})", p99, 2.0, "ms")
    counts = results["settings"]["worker_counts"]
    for loop, rows in throughput.get("workers", {}).items():
        few = _row(rows, _scaling.hybrid_queue_name(counts[0]))["tasks_per_s"]
        many = _row(rows, _scaling.hybrid_queue_name(counts[-1]))["tasks_per_s"]
        mark(f"throughput with {counts[-1]:,} workers vs {counts[0]} ({loop})", many / few, 0.8, "x", at_least=True)
    if "footprint" in results:
        row = _row(results["footprint"], "hybrid_queue: await submit")
        mark(f"bytes per queued task at depth {row['depth']:,}", row["bytes_per_task"], 600, "B")
    if "soak" in results:
        soak = results["soak"]
        mark("soak: tracemalloc after TTL minus baseline", soak["traced_delta"], 64 * KIB, "KiB")
        mark("soak: RSS after TTL minus baseline", soak["rss_delta"], 16 * MIB, "MiB")
    if "scale_out" in results:
        scale = results["scale_out"]
        workers, loop = scale["workers"], scale["loop"]
        speedup = 1 / _row(scale["throughput"], _scale_out.PROCESSES)["ratio"]
        name = f"CPU-bound throughput, {workers} processes vs {workers} threads ({loop})"
        mark(name, speedup, 1.6, "x", at_least=True)
        overhead = _row(scale["overhead"], _scale_out.OVERHEAD_TARGET)["ratio"]
        mark(f"per-task cost on Dask, queue vs Client.submit ({loop})", overhead, 1.2, "x")
    return marks


# ------------------------------------------------------------------------ output


def print_results(results: dict[str, Any]) -> None:
    """Print every table that ran, then the target marks."""
    settings = results["settings"]
    meta = results["meta"]
    source = meta["source"]
    commit = (source["commit"] or "unknown commit")[:12]
    if source["hybrid_queue_modified"]:
        commit += " with uncommitted changes to hybrid_queue/"
    print(
        f"hybrid_queue {meta['hybrid_queue']} ({commit}) on Python {meta['python']}, {meta['cpus']} CPUs, "
        f"{meta['platform']}; uvloop {meta['uvloop']}, aiojobs {meta['aiojobs']}"
    )
    if settings["quick"]:
        print(QUICK_NOTE)
    print(f"throughput groups: {meta['timed_span']}")
    for group, by_loop in results.get("throughput", {}).items():
        for loop, rows in by_loop.items():
            print()
            print(_throughput_table(group, loop, rows, settings["rounds"]))
    for loop, rows in results.get("depth", {}).items():
        print()
        print(_depth_table(loop, rows))
    for loop, rows in results.get("latency", {}).items():
        print()
        print(_latency_table(loop, rows))
    if "footprint" in results:
        print()
        print(_footprint_table(results["footprint"], results["meta"]["footprint_method"]))
    if "soak" in results:
        print()
        print(_soak_text(results["soak"]))
    if "scale_out" in results:
        print()
        print(_scale_out_text(results["scale_out"], settings["rounds"]))
    print()
    print("== targets (values only)" if settings["quick"] else "== targets (marks, not assertions)")
    width = max((len(m["target"]) for m in results["targets"]), default=0)
    for m in results["targets"]:
        line = f"{m['target'].ljust(width)}  {m['shown']:>12}  (target {m['rule']})"
        print(line if m["met"] is None else f"{'pass' if m['met'] else 'MISS'}  {line}")


def write_json(results: dict[str, Any], out: Path) -> Path:
    """Write ``results`` to ``out/results.json``; return the path."""
    path = out / "results.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    return path
