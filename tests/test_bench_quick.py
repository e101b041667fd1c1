"""The benchmark suite runs end to end in quick mode; its exactly-once checks pass and fail loudly.

Timings are never asserted, nor judged in the output: in quick mode they mean
nothing. Skipped when the `bench` extra (uvloop, aiojobs, psutil, matplotlib,
tqdm) is not installed.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

for _name in ("aiojobs", "matplotlib", "psutil", "tqdm", "uvloop"):
    pytest.importorskip(_name, reason="the benchmarks need the `bench` extra: pip install -e '.[bench]'")

# `benchmarks` is a top-level package beside `hybrid_queue`, not installed:
# make it importable however pytest was started.
_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from benchmarks import CheckFailed  # noqa: E402
from benchmarks.__main__ import GROUPS, main  # noqa: E402
from benchmarks._harness import Tally  # noqa: E402


@pytest.mark.timeout(120)
def test_quick_run_checks_every_contender_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--quick", "--loop", "asyncio", "--no-progress", "--out", str(tmp_path)]) == 0

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["settings"]["groups"] == list(GROUPS)
    assert results["settings"]["loops"] == ["asyncio"]
    # Each throughput contender ran its one round and passed the exactly-once check.
    for group in ("coroutine", "sync", "workers"):
        rows = results["throughput"][group]["asyncio"]
        assert rows, group
        assert all(row["checked_rounds"] == 1 for row in rows), group
    assert {row["depth"] for row in results["depth"]["asyncio"]} == set(results["settings"]["depths"])
    assert all(row["probes"] == results["settings"]["probes"] for row in results["latency"]["asyncio"])
    assert len(results["footprint"]) == 3
    assert results["soak"]["tasks"] == results["settings"]["soak_tasks"]
    # The RSS pass read memory after the first soak and after each further one.
    soaks = 1 + results["settings"]["soak_repeats"]
    assert len(results["soak"]["rss_pass"]["soaks_rss_delta"]) == soaks
    assert len(results["soak"]["rss_pass"]["soaks_blocks_delta"]) == soaks
    assert results["soak"]["rss_pass"]["samples"][-1][0] == soaks * results["settings"]["soak_tasks"]
    assert results["targets"], "no target was evaluated"
    for png in ("coroutine", "sync", "workers", "depth", "latency", "soak"):
        assert (tmp_path / f"{png}.png").stat().st_size > 0, png
    out = capsys.readouterr().out
    assert "== targets" in out
    _assert_no_verdicts(out, results["targets"])
    _assert_no_self_comparison(out, results["targets"])


_RATIO = re.compile(r"\d\.\d\dx")


def _assert_no_verdicts(out: str, marks: list[dict[str, Any]]) -> None:
    # Quick timings mean nothing: no target is judged, in the output or the JSON.
    assert out.count("quick run: sizes too small for verdicts") == 1
    verdicts = re.findall(r"^(?:pass|MISS)\b.*$", out, re.MULTILINE)
    assert not verdicts, verdicts
    assert "MISS" not in out
    assert [m for m in marks if m["met"] is not None] == []


def _assert_no_self_comparison(out: str, marks: list[dict[str, Any]]) -> None:
    # A reference row shows no ratio (it would be its own figure over itself).
    refs = [line for line in out.splitlines() if "[ref" in line and _RATIO.search(line)]
    assert not refs, refs
    # The quick run has one queue depth: no drain ratio of a depth against itself.
    depth_tables = [block for block in out.split("\n\n") if block.startswith("== depth group")]
    assert depth_tables
    assert not [block for block in depth_tables if _RATIO.search(block)], depth_tables
    same = [m["target"] for m in marks if re.search(r"\b([\d,]+) vs \1\b", m["target"])]
    assert not same, same


def test_tally_fails_loudly_on_a_lost_and_a_doubled_task() -> None:
    tally = Tally(3)
    tally.hits[0] = 2  # task 0 ran twice, task 1 once, task 2 never: the total is still 3
    tally.hits[1] = 1
    with pytest.raises(CheckFailed, match=r"^who: of 3 tasks, 1 never ran and 1 ran more than once$"):
        tally.check("who")


def test_tally_passes_when_every_task_ran_once() -> None:
    tally = Tally(2)
    tally.hits[0] = tally.hits[1] = 1
    tally.check("who")
