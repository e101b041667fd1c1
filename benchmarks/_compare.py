"""Ratio tables of two sets of samples: the statistics, the verdicts and the ``--compare`` mode.

A row's ratio is new time over old time per task (above 1: the new side is
slower): the median of the ratios, with their interquartile range as the
spread, both from the statistics module. The samples of an A/B run are
paired (each pair of rounds ran back to back), so the ratios are taken round
by round; the rounds of two separate runs are not, so every new sample is
divided by every old one.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._env import describe
from ._harness import LOOP_NAMES
from ._report import Column, table

__all__ = [
    "EXIT_FAILED",
    "EXIT_REGRESSION",
    "MIN_ROUNDS",
    "REGRESSION",
    "Key",
    "compare",
    "key_of",
    "print_ab",
    "ratio_rows",
    "ratio_table",
    "status",
    "timed_rows",
]

REGRESSION = "REGRESSION"
# Fewer rounds than this per side give no firm verdict: with two or three,
# one disturbed round decides the quartiles.
MIN_ROUNDS = 5
# Exit statuses of --ab and --compare.
EXIT_REGRESSION = 1
EXIT_FAILED = 2

Key = tuple[str, str, str]


def ratio_rows(
    old: dict[Key, tuple[int, list[float]]],
    new: dict[Key, tuple[int, list[float]]],
    threshold: float,
    *,
    paired: bool,
) -> list[dict[str, Any]]:
    """One row per key in both runs: per-task times, the median ratio new/old, its quartiles, a verdict.

    ``old`` and ``new`` map a row's key to ``(tasks per round, seconds per
    round)``. ``paired``: sample i of both ran back to back, so the ratios
    are taken round by round; otherwise every new sample over every old one.
    """
    rows = []
    for key in [k for k in old if k in new]:
        (n_old, s_old), (n_new, s_new) = old[key], new[key]
        t_old, t_new = [s / n_old for s in s_old], [s / n_new for s in s_new]
        if paired:
            ratios = [b / a for a, b in zip(t_old, t_new, strict=True)]
        else:
            ratios = [b / a for a in t_old for b in t_new]
        ratio = statistics.median(ratios)
        # "inclusive": quartiles within the observed ratios, which suits a few rounds.
        q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else (ratio,) * 3
        rows.append(
            {
                "group": key[0],
                "loop": key[1],
                "name": key[2],
                "old_us_per_task": statistics.median(t_old) * 1e6,
                "new_us_per_task": statistics.median(t_new) * 1e6,
                "ratio": ratio,
                "q1": q1,
                "q3": q3,
                "verdict": _verdict(ratio, q1, q3, threshold, min(len(s_old), len(s_new))),
            }
        )
    return rows


def _verdict(ratio: float, q1: float, q3: float, threshold: float, rounds: int) -> str:
    # Over the budget counts as a regression only when three rounds in four
    # were slower (the lower quartile above 1): one disturbed round on a
    # shared machine must not fail a change, nor hide a real slowdown.
    firm = rounds >= MIN_ROUNDS
    if ratio > 1 + threshold:
        if not firm:
            return f"slower? (fewer than {MIN_ROUNDS} rounds)"
        return REGRESSION if q1 > 1 else "slower? (noisy: more --rounds)"
    if ratio < 1 - threshold:
        if not firm:
            return f"faster? (fewer than {MIN_ROUNDS} rounds)"
        return "faster" if q3 < 1 else "faster? (noisy)"
    return "within budget"


def ratio_table(title: str, rows: Sequence[dict[str, Any]], threshold: float, paired: bool) -> str:
    """The A/B table: one line per row, then how to read it."""
    columns: list[Column] = [
        ("row", lambda r: f"{r['group']} ({r['loop']}): {r['name']}"),
        ("old us/task", lambda r: f"{r['old_us_per_task']:.2f}"),
        ("new us/task", lambda r: f"{r['new_us_per_task']:.2f}"),
        ("new/old", lambda r: f"{r['ratio']:.3f}x"),
        ("IQR", lambda r: f"{r['q1']:.3f}-{r['q3']:.3f}"),
        ("verdict", lambda r: r["verdict"]),
    ]
    how = "per round (the rounds ran back to back)" if paired else "of every new sample over every old one"
    notes = [
        f"new/old: time per task of the new side over the old side's, the median of the ratios {how}; "
        "above 1.000x the new side is slower",
        "IQR: the interquartile range of those ratios (half of them fall inside)",
        f"{REGRESSION}: median above {1 + threshold:.3f}x (budget {threshold:.1%}, --threshold), the lower "
        f"quartile above 1, and at least {MIN_ROUNDS} rounds per side; exit status 1",
    ]
    return table(title, columns, rows, notes)


def key_of(text: str) -> Key:
    """The row key ``(group, loop, name)`` of its ``group|loop|name`` form in an A/B file."""
    group, loop, name = text.split("|", 2)
    return group, loop, name


def status(rows: Sequence[dict[str, Any]], errors: dict[str, str]) -> int:
    """The exit status: EXIT_FAILED if a run failed, else EXIT_REGRESSION if a row regressed, else 0."""
    if errors:
        return EXIT_FAILED
    return EXIT_REGRESSION if any(r["verdict"] == REGRESSION for r in rows) else 0


def timed_rows(results: dict[str, Any]) -> dict[Key, tuple[int, list[float]]]:
    """The rows of a saved run that have seconds per round: ``{(group, loop, name): (n, seconds)}``.

    From an A/B file, its new side.
    """
    if results.get("kind") == "ab":
        n = results["settings"]["n"]
        return {key_of(k): (n, v) for k, v in results["samples"]["new"].items()}
    found: dict[Key, tuple[int, list[float]]] = {}
    # Files written before the group registry kept the throughput groups
    # under "throughput" and scale_out at the top level.
    by_group = results.get("groups") or {**results.get("throughput", {}), "scale_out": results.get("scale_out")}
    for group, result in by_group.items():
        if not isinstance(result, dict):
            continue
        for field, rows in result.items():
            if isinstance(rows, list) and rows and isinstance(rows[0], dict) and "rounds_s" in rows[0]:
                # A throughput group keys its rows by loop; scale_out by table, with its loop beside.
                loop = field if field in LOOP_NAMES else str(result.get("loop"))
                found.update({(group, loop, row["name"]): (row["n"], row["rounds_s"]) for row in rows})
    return found


def compare(paths: Sequence[Path], threshold: float) -> int:
    """``--compare``: the ratio table of B against A (or of one A/B file); returns the exit status."""
    loaded = [json.loads(path.read_text()) for path in paths]
    if len(loaded) == 1:
        if loaded[0].get("kind") != "ab":
            print("--compare with one file needs an A/B result (ab.json)", file=sys.stderr)
            return EXIT_FAILED
        print_ab(loaded[0])
        return status(loaded[0]["rows"], loaded[0]["errors"])
    a, b = loaded
    for label, path, results in (("A (old)", paths[0], a), ("B (new)", paths[1], b)):
        print(f"{label}: {path}: {describe(results['meta'])}")
    old, new = timed_rows(a), timed_rows(b)
    rows = ratio_rows(old, new, threshold, paired=False)
    sizes = {(old[k][0], new[k][0]) for k in old if k in new and old[k][0] != new[k][0]}
    if sizes:
        # Per task the figures compare, but each round's fixed costs (making
        # and shutting down a queue) weigh more in the smaller rounds.
        shown = ", ".join(f"{x:,} and {y:,}" for x, y in sorted(sizes))
        print(f"note: the runs differ in tasks per round ({shown}): fixed costs per round weigh differently")
    if not rows:
        print("--compare: the two runs have no row in common", file=sys.stderr)
        return EXIT_FAILED
    print(ratio_table("== B against A, row by row", rows, threshold, paired=False))
    return status(rows, {})


def print_ab(result: dict[str, Any]) -> None:
    """Print a saved A/B result: where each side's hybrid_queue came from, then its ratio table."""
    ab, settings = result["meta"]["ab"], result["settings"]
    print(describe(result["meta"]))
    print(f"new: {ab['new']['label']}, hybrid_queue from {ab['new'].get('hybrid_queue_file')}")
    print(f"old: {ab['old']['label']}, hybrid_queue from {ab['old'].get('hybrid_queue_file')} (a temporary copy)")
    title = (
        f"== A/B, {settings['loop']} loop: {settings['n']:,} tasks per row and round, "
        f"{settings['rounds']} rounds per side"
    )
    print(ratio_table(title, result["rows"], settings["threshold"], paired=True))
    for where, error in result["errors"].items():
        print(f"FAILED {where}: {error}")
