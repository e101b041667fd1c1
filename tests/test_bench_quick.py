"""The benchmark suite runs end to end in quick mode; its exactly-once checks pass and fail loudly.

Also the A/B mode (against HEAD, on tiny sizes), the comparison of two saved
runs, and the group registry. Timings are never asserted, nor judged in the
output: at these sizes they mean nothing. Skipped when the `bench` extra
(uvloop, aiojobs, psutil, matplotlib, tqdm) is not installed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
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
from benchmarks._cli import main, run, settings_for  # noqa: E402
from benchmarks._compare import REGRESSION, ratio_rows  # noqa: E402
from benchmarks._harness import Job, Tally  # noqa: E402
from benchmarks._registry import Group, SummaryRow, groups  # noqa: E402

# What every results file must say about where it was measured.
_ENVIRONMENT = ("cpu", "cpus", "platform", "python", "loops", "hybrid_queue", "versions", "source")


def _assert_environment(meta: dict[str, Any], loops: list[str]) -> None:
    for field in _ENVIRONMENT:
        assert field in meta, field
    assert meta["cpu"] and meta["cpus"] >= 1
    assert meta["loops"] == loops
    assert set(meta["versions"]) == {"uvloop", "aiojobs", "distributed"}
    assert set(meta["source"]) >= {"commit", "dirty", "hybrid_queue_modified"}


@pytest.mark.timeout(120)
def test_quick_run_checks_every_contender_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--quick", "--loop", "asyncio", "--no-progress", "--out", str(tmp_path)]) == 0

    results = json.loads((tmp_path / "results.json").read_text())
    # --quick runs every registered group, the full run's list included.
    assert results["settings"]["groups"] == list(groups())
    assert results["settings"]["loops"] == ["asyncio"]
    _assert_environment(results["meta"], ["asyncio"])
    found = results["groups"]
    # Each throughput contender ran its one round and passed the exactly-once check.
    for group in ("coroutine", "sync", "workers"):
        rows = found[group]["asyncio"]
        assert rows, group
        assert all(row["checked_rounds"] == 1 for row in rows), group
    assert {row["depth"] for row in found["depth"]["asyncio"]} == set(results["settings"]["depths"])
    assert all(row["probes"] == results["settings"]["probes"] for row in found["latency"]["asyncio"])
    assert len(found["footprint"]["rows"]) == 3
    assert found["soak"]["tasks"] == results["settings"]["soak_tasks"]
    # The RSS pass read memory after the first soak and after each further one.
    soaks = 1 + results["settings"]["soak_repeats"]
    assert len(found["soak"]["rss_pass"]["soaks_rss_delta"]) == soaks
    assert len(found["soak"]["rss_pass"]["soaks_blocks_delta"]) == soaks
    assert found["soak"]["rss_pass"]["samples"][-1][0] == soaks * results["settings"]["soak_tasks"]
    assert len(found["scale_out"]["throughput"]) == 3 and len(found["scale_out"]["overhead"]) == 3
    assert results["targets"], "no target was evaluated"
    for png in ("coroutine", "sync", "workers", "depth", "latency", "footprint", "soak", "scale_out", "dask_overhead"):
        assert (tmp_path / f"{png}.png").stat().st_size > 0, png
    out = capsys.readouterr().out
    assert "== targets" in out
    _assert_no_verdicts(out, results["targets"])
    _assert_no_self_comparison(out, results["targets"])
    _assert_summary(out, results["summary"])


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


def _assert_summary(out: str, summary: list[dict[str, Any]]) -> None:
    # The summary closes the tables: every path against each peer, with a ratio and a side.
    assert "== summary" in out
    block = out[out.index("== summary") :]
    paths = {row["path"] for row in summary}
    for path in (
        "coroutine handlers, await submit (asyncio)",
        "sync handlers, await submit (asyncio)",
        "submit_blocking from 8 threads (asyncio)",
    ):
        assert path in paths, path
        assert path in block, path
    for row in summary:
        assert row["peer"] in block
        assert row["ours"] > 0 and row["theirs"] > 0
    sides = re.findall(r"\d\.\d\dx  (ahead|behind|level)$", block, re.MULTILINE)
    assert len(sides) == len(summary)


@pytest.mark.timeout(60)
def test_default_and_full_runs_choose_their_sizes() -> None:
    registry = groups()
    default = [g.name for g in registry.values() if g.in_default]
    assert "scale_out" not in default and {"coroutine", "sync", "soak"} <= set(default)
    main_run = settings_for("default", default)
    full = settings_for("full", list(registry))
    assert main_run.loops == ("asyncio",) and full.loops == ("asyncio", "uvloop")
    assert main_run.soak_tasks < full.soak_tasks == 1_000_000
    assert max(full.depths) == 1_000_000 and main_run.n < full.n


def _git_head_has_the_package() -> bool:
    if shutil.which("git") is None:
        return False
    done = subprocess.run(
        ["git", "-C", str(_ROOT), "cat-file", "-e", "HEAD:hybrid_queue/__init__.py"],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


@pytest.mark.timeout(90)
@pytest.mark.skipif(not _git_head_has_the_package(), reason="needs a git checkout whose HEAD has hybrid_queue/")
def test_ab_against_head_reports_a_ratio_and_spread_per_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = set(Path(tempfile.gettempdir()).glob("hybrid_queue-ab-*"))
    status = main(["--ab", "HEAD", "--n", "300", "--rounds", "2", "--no-progress", "--out", str(tmp_path)])
    # Two rounds are too few for a verdict, so no regression: 0, unless a run failed (2).
    assert status == 0

    result = json.loads((tmp_path / "ab.json").read_text())
    assert result["kind"] == "ab"
    _assert_environment(result["meta"], ["asyncio"])
    ab = result["meta"]["ab"]
    assert re.fullmatch(r"[0-9a-f]{40}", ab["commit"])
    # Each side imported hybrid_queue from its own tree: the checkout, and REV's temporary copy.
    assert Path(ab["new"]["hybrid_queue_file"]).resolve() == _ROOT / "hybrid_queue" / "__init__.py"
    old_file = Path(ab["old"]["hybrid_queue_file"])
    assert old_file.parent.parent.name.startswith("hybrid_queue-ab-")
    assert not old_file.exists(), "the temporary tree was not removed"
    assert set(Path(tempfile.gettempdir()).glob("hybrid_queue-ab-*")) == before
    # Our rows only: the coroutine and sync paths, submit_blocking among them.
    names = {(row["group"], row["name"]) for row in result["rows"]}
    assert ("coroutine", "hybrid_queue: await submit, await each") in names
    assert ("sync", "hybrid_queue: await submit(sync), await each") in names
    assert ("sync", "hybrid_queue: submit_blocking from 8 threads") in names
    assert all(name.startswith("hybrid_queue") for _, name in names)
    for row in result["rows"]:
        assert row["q1"] <= row["ratio"] <= row["q3"]
        assert row["old_us_per_task"] > 0 and row["new_us_per_task"] > 0
    assert all(len(v) == 2 for side in result["samples"].values() for v in side.values())
    out = capsys.readouterr().out
    assert "new/old" in out and "IQR" in out
    assert len(re.findall(r"\d\.\d{3}x  \d\.\d{3}-\d\.\d{3}", out)) == len(result["rows"])

    # --compare with the one A/B file prints its table again.
    assert main(["--compare", str(tmp_path / "ab.json")]) == 0
    again = capsys.readouterr().out
    assert again.count("hybrid_queue: await submit, await each") == 1


@pytest.mark.timeout(60)
def test_compare_prints_the_ratio_table_of_two_saved_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for side in ("a", "b"):
        args = ["--quick", "--only", "coroutine,sync", "--loop", "asyncio", "--no-progress"]
        assert main([*args, "--out", str(tmp_path / side)]) == 0
    capsys.readouterr()

    # One round each: too few for a verdict, so the status says only that both files were read.
    assert main(["--compare", str(tmp_path / "a" / "results.json"), str(tmp_path / "b" / "results.json")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("A (old): ") and "\nB (new): " in out
    saved = json.loads((tmp_path / "a" / "results.json").read_text())
    # Every row of both groups, peers too, has a ratio and an interquartile range.
    for group in ("coroutine", "sync"):
        for row in saved["groups"][group]["asyncio"]:
            line = next(x for x in out.splitlines() if x.startswith(f"{group} (asyncio): {row['name']} "))
            assert re.search(r"\d\.\d{3}x  \d\.\d{3}-\d\.\d{3}", line), line


def test_ratio_rows_flag_a_slowdown_over_the_budget_only_when_most_rounds_agree() -> None:
    key = ("g", "asyncio", "row")

    def verdict(old: list[float], new: list[float]) -> str:
        (row,) = ratio_rows({key: (1, old)}, {key: (1, new)}, 0.03, paired=True)
        return str(row["verdict"])

    assert verdict([1.0] * 5, [1.10] * 5) == REGRESSION
    assert verdict([1.0] * 5, [1.01] * 5) == "within budget"
    assert verdict([1.0] * 5, [0.90] * 5) == "faster"
    # Two rounds of five slower by 50 %: the median is over budget, the lower quartile is not.
    assert verdict([1.0] * 5, [0.99, 0.98, 1.5, 1.5, 1.5]) == "slower? (noisy: more --rounds)"
    # Too few rounds for a firm verdict, however clear they look.
    assert verdict([1.0] * 4, [1.10] * 4) == "slower? (fewer than 5 rounds)"
    # Per task: a run of twice the tasks in twice the time is the same speed.
    (row,) = ratio_rows({key: (100, [1.0, 1.0])}, {key: (200, [2.0, 2.0])}, 0.03, paired=False)
    assert row["ratio"] == 1.0


@pytest.mark.timeout(30)
def test_a_registered_group_runs_reports_and_summarises_without_other_wiring() -> None:
    # What a new group module provides; the runner needs nothing else.
    def jobs(settings: Any) -> list[Job]:
        return [Job("extra", loop, "ours", lambda: 0.5) for loop in settings.loops]

    group = Group(
        name="extra",
        order=999,
        question="Does a group plug in?",
        report=lambda result, settings: f"== extra group: {result}",
        jobs=jobs,
        rows=lambda samples, settings: {"rounds": samples[("extra", "asyncio", "ours")]},
        summary=lambda result, settings: [SummaryRow("extra path", "s", 1.0, "peer", 2.0)],
    )
    settings = settings_for("quick", ["extra"], rounds=2, progress=False)
    results = run(settings, {"extra": group})
    assert results["groups"] == {"extra": {"rounds": [0.5, 0.5]}}
    assert results["summary"] == [
        {"path": "extra path", "unit": "s", "ours": 1.0, "peer": "peer", "theirs": 2.0, "lower_is_better": True}
    ]


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
