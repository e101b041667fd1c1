"""The benchmark page's tables, made from a benchmark results file, so that no figure is typed by hand.

Used two ways:

- as an MkDocs hook (``hooks:`` in mkdocs.yml): on every page whose Markdown
  holds the line ``<!-- bench-tables -->``, that line is replaced with the
  tables made from ``docs/data/bench.json`` (a copy of the
  ``benchmarks/results/results.json`` that ``make bench`` writes);
- as a script, to see the Markdown: ``python tools/bench_tables.py [RESULTS.json]``.

Each group's layout follows the text tables that ``python -m benchmarks``
prints (benchmarks/_report.py and the group modules). A group of the
throughput shape (``{loop: [rows]}``, each row with ``us_per_task`` and
``ratio``) gets a table even if it is not known here; a group of another
shape fails the build (``mkdocs build --strict``) until it is given a layout.
"""

from __future__ import annotations

import datetime
import json
import string
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["MARKER", "RESULTS", "on_page_markdown", "render"]

MARKER = "<!-- bench-tables -->"
# Relative to the docs directory.
RESULTS = Path("data") / "bench.json"

KIB = 1024
MIB = 1024 * 1024

# What each group answers: the questions the groups ask in benchmarks/.
QUESTIONS = {
    "coroutine": "How long does a no-op coroutine task take through 8 workers?",
    "sync": "How long does a no-op sync task take on 8 threads, against concurrent.futures?",
    "workers": "Does throughput hold up as the worker count grows from 8 to 10,000?",
    "depth": "Does the cost per task grow with the queue's depth?",
    "latency": "How soon does a priority-10 task start while every worker is busy?",
    "soak": "Does memory come back once results expire?",
    "footprint": "How much memory does a waiting task take?",
    "scale_out": "How much faster do CPU-bound handlers run off the GIL, and what does the queue cost on Dask?",
}


Row = dict[str, Any]
Column = tuple[str, Callable[[Row], str]]


class LayoutError(ValueError):
    """Raised when a results file holds a group this module has no layout for."""


def table(columns: Sequence[Column], rows: Sequence[Row], right: Sequence[int] = ()) -> str:
    """A Markdown table; the columns numbered in ``right`` (figures) are right-aligned."""
    rule = ["---:" if k in right else "---" for k in range(len(columns))]
    lines = ["| " + " | ".join(header for header, _ in columns) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(_cell(fmt(row)) for _, fmt in columns) + " |" for row in rows]
    return "\n".join(lines)


def pairs_table(headers: tuple[str, str], pairs: Sequence[tuple[str, str]], right: Sequence[int] = ()) -> str:
    """A table of two columns, one line per (name, value) pair."""
    columns: list[Column] = [(headers[0], lambda r: str(r["name"])), (headers[1], lambda r: str(r["value"]))]
    return table(columns, [{"name": name, "value": value} for name, value in pairs], right)


def _cell(text: str) -> str:
    # A cell is one line of Markdown: a pipe would end it, an asterisk might start an emphasis.
    return text.replace("|", "\\|").replace("*", "\\*")


def _sentence(text: str) -> str:
    return text if text.endswith(".") else text + "."


# ------------------------------------------------------------------ the run


def run_description(results: dict[str, Any]) -> str:
    """Which run the tables come from: when, which code, on what machine, with which sizes."""
    meta, settings = results["meta"], results["settings"]
    started = datetime.datetime.fromisoformat(meta["started"])
    source = meta.get("source") or {}
    commit = source.get("commit") or "unknown"
    if source.get("hybrid_queue_modified"):
        code = f"commit `{commit[:7]}`, with uncommitted changes to `hybrid_queue/`"
    elif source.get("dirty"):
        code = f"commit `{commit[:7]}` (`hybrid_queue/` as committed; other files changed)"
    else:
        code = f"commit `{commit[:7]}`"
    kind = "`make bench-full`" if settings["full"] else "a quick pass" if settings["quick"] else "`make bench`"
    peers = ", ".join(f"{name} {version}" for name, version in meta["versions"].items())
    rows = [
        ("run", f"{kind}, started {started:%Y-%m-%d %H:%M} UTC, {meta['seconds']:.0f} s of benchmarks"),
        ("code", f"hybrid_queue {meta['hybrid_queue']}, {code}"),
        ("machine", f"{meta['cpu']}, {meta['cpus']} CPUs, {meta['platform']}"),
        ("Python", f"{meta['python_implementation']} {meta['python']}; loops: {', '.join(meta['loops'])}"),
        ("peers", peers),
        (
            "sizes",
            f"{settings['n']:,} tasks per round, median of {settings['rounds']} rounds; "
            f"groups: {', '.join(settings['groups'])}",
        ),
    ]
    return "\n".join(f"- {name}: {value}" for name, value in rows)


# ------------------------------------------------------------------ groups


def throughput_tables(name: str, result: dict[str, Any], settings: dict[str, Any]) -> str:
    """One table per loop kind, then what the columns mean."""
    parts = [
        f"{loop} loop, {rows[0]['n']:,} tasks per round, median of {settings['rounds']} rounds:\n\n"
        + _throughput_table(rows)
        for loop, rows in result.items()
    ]
    parts.append(
        "ratio: the row's median time over the median time of the reference row named by the letter "
        "(under 1.00x: faster). spread: (slowest round - fastest round) / median. Timed per round: create "
        "the queue, pool or scheduler, start it, submit every task, wait for all of them, shut it down; "
        "the check that each task ran exactly once is not timed."
    )
    return "\n\n".join(parts)


def _throughput_table(rows: Sequence[Row]) -> str:
    # Each reference row gets a letter, which the ratios of the rows measured against it name.
    tags = dict(zip((r["name"] for r in rows if r["reference"]), string.ascii_uppercase, strict=False))
    columns: list[Column] = [
        ("contender", lambda r: r["name"] + (f" (reference {tags[r['name']]})" if r["reference"] else "")),
        ("us/task", lambda r: f"{r['us_per_task']:.2f}"),
        ("tasks/s", lambda r: f"{r['tasks_per_s']:,.0f}"),
        ("ratio", lambda r: "-" if r["reference"] else f"{r['ratio']:.2f}x {tags[r['versus']]}"),
        ("spread", lambda r: f"{r['spread_pct']:.0f} %"),
        ("note", lambda r: r["note"]),
    ]
    return table(columns, rows, right=(1, 2, 3, 4))


def depth_tables(result: dict[str, Any], settings: dict[str, Any]) -> str:
    parts = [f"{loop} loop, medians over all runs:\n\n" + _depth_table(rows) for loop, rows in result.items()]
    parts.append(
        "Each run queues `depth` tasks before the queue starts (submit), then starts it and waits for "
        "them all (drain). The last column is the drain cost per task over the same contender's at the "
        "smallest depth."
    )
    return "\n\n".join(parts)


def _depth_table(rows: Sequence[Row]) -> str:
    smallest = min(r["depth"] for r in rows)
    columns: list[Column] = [
        ("contender", lambda r: r["name"]),
        ("depth", lambda r: f"{r['depth']:,}"),
        ("runs", lambda r: str(r["runs"])),
        ("submit us/task", lambda r: f"{r['submit_us_per_task']:.2f}"),
        ("drain us/task", lambda r: f"{r['drain_us_per_task']:.2f}"),
        ("total us/task", lambda r: f"{r['total_us_per_task']:.2f}"),
        (f"drain vs depth {smallest:,}", lambda r: "-" if r["depth"] == smallest else f"{r['drain_ratio']:.2f}x"),
    ]
    return table(columns, rows, right=(1, 2, 3, 4, 5, 6))


def latency_tables(result: dict[str, Any], settings: dict[str, Any]) -> str:
    columns: list[Column] = [
        ("contender", lambda r: r["name"]),
        ("probes", lambda r: str(r["probes"])),
        ("p50 ms", lambda r: f"{r['p50_ms']:.3f}"),
        ("p90 ms", lambda r: f"{r['p90_ms']:.3f}"),
        ("p99 ms", lambda r: f"{r['p99_ms']:.3f}"),
        ("max ms", lambda r: f"{r['max_ms']:.3f}"),
    ]
    parts = [f"{loop} loop:\n\n" + table(columns, rows, right=(1, 2, 3, 4, 5)) for loop, rows in result.items()]
    parts.append(
        f"Every worker is busy with a task that sleeps, and a backlog of {settings['backlog']:,} tasks waits; "
        "each probe is a priority-10 coroutine task, timed from just before its submit to the first line "
        "of its handler."
    )
    return "\n\n".join(parts)


def soak_tables(soak: dict[str, Any], settings: dict[str, Any]) -> str:
    rss, traced = soak["rss_pass"], soak["traced_pass"]
    rows = [
        ("RSS at the baseline", f"{rss['baseline_rss'] / MIB:.1f} MiB"),
        ("RSS at the peak", f"{rss['peak_rss'] / MIB:.1f} MiB"),
        ("RSS after the TTL (the target's reading)", f"{soak['rss_delta'] / MIB:+.2f} MiB over the baseline"),
        (
            f"RSS after the TTL of each of {rss['soaks']} soaks on the same queue",
            ", ".join(f"{d / MIB:+.1f}" for d in rss["soaks_rss_delta"]) + " MiB",
        ),
        (
            "Python's live memory blocks after each soak's TTL",
            ", ".join(f"{d:+,}" for d in rss["soaks_blocks_delta"])
            + f" (one object kept per task would add {soak['tasks']:,} per soak)",
        ),
        (
            "RSS after the last TTL and glibc's `malloc_trim(0)`",
            "n/a (no glibc)"
            if rss["after_last_rss_malloc_trim"] is None
            else f"{rss['after_last_rss_malloc_trim'] / MIB:.1f} MiB (diagnostic: memory the allocator kept)",
        ),
        ("traced memory (tracemalloc) at the baseline", f"{traced['baseline_traced'] / MIB:.2f} MiB"),
        ("traced memory at the peak", f"{traced['peak_traced'] / MIB:.2f} MiB"),
        ("traced memory after the TTL", f"{soak['traced_delta'] / KIB:+.1f} KiB over the baseline"),
        (
            "results still stored after the TTL",
            f"{rss['results_stored_after']} (RSS pass), {traced['results_stored_after']} (tracemalloc pass)",
        ),
    ]
    head = f"{soak['loop']} loop, {soak['tasks']:,} tasks per soak, `result_ttl` {soak['result_ttl']:g} s:"
    return f"{head}\n\n{pairs_table(('measure', 'value'), rows, right=(1,))}\n\nHow: {_sentence(soak['method'])}"


def footprint_tables(result: dict[str, Any], settings: dict[str, Any]) -> str:
    columns: list[Column] = [
        ("contender", lambda r: r["name"]),
        ("depth", lambda r: f"{r['depth']:,}"),
        ("bytes/task", lambda r: f"{r['bytes_per_task']:,.0f}"),
        ("cancel + shutdown s (traced)", lambda r: f"{r['cancel_shutdown_s']:.2f}"),
    ]
    rows = table(columns, result["rows"], right=(1, 2, 3))
    return f"{result['loop']} loop:\n\n{rows}\n\nHow: {_sentence(result['method'])}"


def scale_out_tables(scale: dict[str, Any], settings: dict[str, Any]) -> str:
    speed: list[Column] = [
        ("contender", lambda r: r["name"] + (" (reference)" if r["reference"] else "")),
        ("ms/task", lambda r: f"{r['us_per_task'] / 1e3:.2f}"),
        ("tasks/s", lambda r: f"{r['tasks_per_s']:.1f}"),
        ("speed-up", lambda r: "-" if r["reference"] else f"{1 / r['ratio']:.2f}x"),
        ("spread", lambda r: f"{r['spread_pct']:.0f} %"),
        ("note", lambda r: r["note"]),
    ]
    overhead: list[Column] = [
        ("contender", lambda r: r["name"] + (" (reference)" if r["reference"] else "")),
        ("us/task", lambda r: f"{r['us_per_task']:,.1f}"),
        ("tasks/s", lambda r: f"{r['tasks_per_s']:,.0f}"),
        ("ratio", lambda r: "-" if r["reference"] else f"{r['ratio']:.2f}x"),
        ("spread", lambda r: f"{r['spread_pct']:.0f} %"),
        ("note", lambda r: r["note"]),
    ]
    return "\n\n".join(
        [
            f"{scale['loop']} loop, {scale['cpu_tasks']} CPU-bound tasks of about {scale['handler_ms']:g} ms per "
            f"round, {scale['workers']} workers, {scale['cpus']} CPUs (speed-up: the reference's median time "
            "over the row's):",
            table(speed, scale["throughput"], right=(1, 2, 3, 4)),
            f"Dask's cost per task, {scale['overhead_tasks']:,} no-op tasks per round (ratio: the row's median "
            "time over the reference's):",
            table(overhead, scale["overhead"], right=(1, 2, 3, 4)),
            "How: " + _sentence(scale["method"]),
        ]
    )


LAYOUTS: dict[str, Callable[[Any, dict[str, Any]], str]] = {
    "depth": depth_tables,
    "latency": latency_tables,
    "soak": soak_tables,
    "footprint": footprint_tables,
    "scale_out": scale_out_tables,
}


def _throughput_shaped(result: Any) -> bool:
    return (
        isinstance(result, dict)
        and bool(result)
        and all(
            isinstance(rows, list) and rows and all("us_per_task" in r and "ratio" in r for r in rows)
            for rows in result.values()
        )
    )


def group_section(name: str, result: Any, settings: dict[str, Any]) -> str:
    """The section of one group: a heading, its question, its tables. Raises LayoutError for an unknown shape."""
    layout = LAYOUTS.get(name)
    if layout is not None:
        body = layout(result, settings)
    elif _throughput_shaped(result):
        body = throughput_tables(name, result, settings)
    else:
        raise LayoutError(
            f"no table layout for the benchmark group {name!r}; give it one in tools/bench_tables.py (LAYOUTS)"
        )
    question = QUESTIONS.get(name)
    return f"### {name}\n\n" + (f"*{question}*\n\n" if question else "") + body


# ---------------------------------------------------------- targets, summary


def targets_table(marks: Sequence[Row]) -> str:
    def verdict(m: Row) -> str:
        return "no verdict" if m["met"] is None else "met" if m["met"] else "**missed**"

    columns: list[Column] = [
        ("target", lambda m: m["target"]),
        ("value", lambda m: m["shown"]),
        ("rule", lambda m: m["rule"]),
        ("", verdict),
    ]
    return table(columns, marks, right=(1,))


def _figure(value: float, unit: str) -> str:
    return f"{value:,.{2 if value < 100 else 0}f} {unit}"


def summary_table(rows: Sequence[Row]) -> str:
    def verdict(r: Row) -> str:
        ratio = r["ours"] / r["theirs"]
        if abs(ratio - 1.0) <= 0.03:
            return "level"
        return "ahead" if (ratio < 1.0) == r["lower_is_better"] else "behind"

    columns: list[Column] = [
        ("path (ours)", lambda r: r["path"]),
        ("ours", lambda r: _figure(r["ours"], r["unit"])),
        ("peer", lambda r: r["peer"]),
        ("peer's", lambda r: _figure(r["theirs"], r["unit"])),
        ("ours/peer", lambda r: f"{r['ours'] / r['theirs']:.2f}x"),
        ("", verdict),
    ]
    return (
        table(columns, rows, right=(1, 3, 4))
        + "\n\nours/peer: our figure over the peer's. ahead: better for hybrid_queue (less time or memory, "
        "more throughput); level: within 3 %."
    )


# ------------------------------------------------------------------ the page


def render(results: dict[str, Any]) -> str:
    """The Markdown of the whole generated part: the run, each group, the targets, the summary."""
    if results.get("kind") != "run":
        raise LayoutError(f"expected the results of a benchmark run (kind 'run'), got kind {results.get('kind')!r}")
    settings = results["settings"]
    parts = ["## The run", run_description(results), "## Results by group"]
    parts += [group_section(name, result, settings) for name, result in results["groups"].items()]
    if results["targets"]:
        parts += ["## Targets", "Marks the run sets itself, not assertions:", targets_table(results["targets"])]
    if results["summary"]:
        parts += ["## Summary", summary_table(results["summary"])]
    return "\n\n".join(parts) + "\n"


def on_page_markdown(markdown: str, *, page: Any, config: Any, files: Any) -> str | None:
    """MkDocs hook: replace the marker line with the tables made from docs/data/bench.json."""
    if MARKER not in markdown:
        return None
    # Imported here: the module also runs as a script, where MkDocs is not needed.
    from mkdocs.exceptions import PluginError

    path = Path(config["docs_dir"]) / RESULTS
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
        tables = render(results)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PluginError(f"{page.file.src_uri}: cannot make the benchmark tables from {path}: {exc!r}") from exc
    return markdown.replace(MARKER, tables)


def main(argv: Sequence[str]) -> int:
    path = Path(argv[0]) if argv else Path(__file__).resolve().parent.parent / "docs" / RESULTS
    sys.stdout.write(render(json.loads(path.read_text(encoding="utf-8"))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
