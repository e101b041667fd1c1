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
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["MARKER", "RESULTS", "on_page_markdown", "render"]

MARKER = "<!-- bench-tables -->"
# Relative to the docs directory.
RESULTS = Path("data") / "bench.json"

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


def _registry() -> dict[str, Any]:
    # The groups of benchmarks/ (a package beside this folder, not installed).
    root = Path(__file__).resolve().parent.parent
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from benchmarks._registry import groups

    return groups()


def group_section(name: str, result: Any, settings: dict[str, Any]) -> str:
    """The section of one group: a heading, its question, and its tables as the run printed them.

    The tables are the group's own report (its module in benchmarks/), so
    the page and ``make bench`` show the same columns. Raises LayoutError
    for a group the benchmarks no longer have.
    """
    group = _registry().get(name)
    if group is None:
        raise LayoutError(f"the results file holds the group {name!r}, which benchmarks/ does not register")
    return f"### {name}\n\n*{group.question}*\n\n```text\n{group.report(result, settings).strip()}\n```"


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
