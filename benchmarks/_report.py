"""Text output shared by the groups: tables, target marks, the closing summary, and the JSON file."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._registry import Group, Mark, SummaryRow

__all__ = [
    "KIB",
    "LEVEL",
    "MIB",
    "SELF",
    "Column",
    "mark",
    "print_results",
    "summary_text",
    "table",
    "write_json",
]

KIB = 1024
MIB = 1024 * 1024

Column = tuple[str, Callable[[dict[str, Any]], str]]

# Printed once above the tables of a --quick run, whose targets get no verdict.
QUICK_NOTE = "quick run: sizes too small for verdicts; the targets show their values only"
# The ratio cell of a reference row: its ratio would be its own figure over itself.
SELF = "-"
# In the summary, a ratio this close to 1 is "level": closer than a quiet
# machine's round-to-round noise, so neither side is ahead.
LEVEL = 0.03


def table(
    title: str,
    columns: Sequence[Column],
    rows: Sequence[dict[str, Any]],
    notes: Sequence[str] = (),
    *,
    left: Sequence[int] = (0,),
) -> str:
    """A text table: a title line, a header, one line per row, then the notes indented.

    The columns numbered in ``left`` (names) are left-aligned, the others (figures) right-aligned.
    """
    cells = [[fmt(row) for _, fmt in columns] for row in rows]
    widths = [max(len(header), *(len(line[k]) for line in cells)) for k, (header, _) in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        parts = [v.ljust(w) if k in left else v.rjust(w) for k, (v, w) in enumerate(zip(values, widths, strict=True))]
        return "  ".join(parts).rstrip()

    out = [title, line([h for h, _ in columns]), line(["-" * w for w in widths])]
    out += [line(c) for c in cells]
    out += [f"  {note}" for note in notes]
    return "\n".join(out)


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


def mark(settings: dict[str, Any], name: str, value: float, limit: float, unit: str, *, at_least: bool = False) -> Mark:
    """The target ``name``: ``value`` against ``limit`` (at most, or ``at_least``); no verdict in a quick run."""
    met = None if settings["quick"] else (value >= limit if at_least else value <= limit)
    rule = f"{'>=' if at_least else '<='} {_shown(limit, unit).lstrip('+')}"
    return Mark(name, value, _shown(value, unit), rule, met)


def _figure(value: float, unit: str) -> str:
    digits = 2 if value < 100 else 0
    return f"{value:,.{digits}f} {unit}"


def summary_text(rows: Sequence[SummaryRow], title: str) -> str:
    """The closing summary: for each of our paths, our figure, each peer's, the ratio, ahead or behind."""
    if not rows:
        return ""

    def verdict(row: SummaryRow) -> str:
        ratio = row.ratio
        if abs(ratio - 1.0) <= LEVEL:
            return "level"
        return "ahead" if (ratio < 1.0) == row.lower_is_better else "behind"

    shown = []
    previous = None
    for row in rows:
        shown.append(
            {
                # The path is written once for the peers that follow it.
                "path": "" if row.path == previous else row.path,
                "ours": "" if row.path == previous else _figure(row.ours, row.unit),
                "peer": row.peer,
                "theirs": _figure(row.theirs, row.unit),
                "ratio": f"{row.ratio:.2f}x",
                "verdict": verdict(row),
            }
        )
        previous = row.path
    columns: list[Column] = [
        ("path (ours)", lambda r: r["path"]),
        ("ours", lambda r: r["ours"]),
        ("peer", lambda r: r["peer"]),
        ("peer's", lambda r: r["theirs"]),
        ("ours/peer", lambda r: r["ratio"]),
        ("", lambda r: r["verdict"]),
    ]
    notes = [
        "ours/peer: our figure over the peer's; ahead: better for hybrid_queue (less time or memory, more "
        f"throughput); level: within {LEVEL:.0%}",
    ]
    return table(title, columns, shown, notes, left=(0, 2, 5))


def print_results(results: dict[str, Any], registry: dict[str, Group]) -> None:
    """Print the environment, every group's report, the targets, and last the summary."""
    from ._env import describe

    settings = results["settings"]
    print(describe(results["meta"]))
    if settings["quick"]:
        print(QUICK_NOTE)
    for name, result in results["groups"].items():
        print()
        print(registry[name].report(result, settings))
    print()
    print("== targets (values only)" if settings["quick"] else "== targets (marks, not assertions)")
    width = max((len(m["target"]) for m in results["targets"]), default=0)
    for m in results["targets"]:
        line = f"{m['target'].ljust(width)}  {m['shown']:>12}  (target {m['rule']})"
        print(line if m["met"] is None else f"{'pass' if m['met'] else 'MISS'}  {line}")
    rows = [SummaryRow(**row) for row in results["summary"]]
    if rows:
        print()
        kind = "full run" if settings["full"] else "quick run" if settings["quick"] else "default run"
        print(summary_text(rows, f"== summary ({kind}; medians of {settings['rounds']} round(s))"))


def write_json(results: dict[str, Any], out: Path, name: str = "results.json") -> Path:
    """Write ``results`` to ``out/name``; return the path."""
    path = out / name
    path.write_text(json.dumps(results, indent=1) + "\n")
    return path
