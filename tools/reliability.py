"""Run the reliability suites and write RELIABILITY.md from what they counted.

Usage: ``python tools/reliability.py [--slow] [--out RELIABILITY.md]`` (``make reliability``).
Every figure in the table comes from this run: pytest's own counts of the
cases that passed, and the totals the tests add to the ``figures`` fixture.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUITES = {
    "model": "tests/test_model.py",
    "stress": "tests/test_stress.py",
    "faults": "tests/test_faults.py",
    "races": "tests/test_races.py",
    "bad_input": "tests/test_bad_input.py",
    "core": "tests/test_core.py",
    "hardening": "tests/test_hardening.py",
    "lifecycle": "tests/test_lifecycle.py",
    "interrupt": "tests/test_interrupt.py",
    "memory": "tests/test_memory.py",
    "pool": "tests/test_pool.py",
    "nesting": "tests/test_nesting.py",
}


def _run(slow: bool, workdir: Path) -> tuple[int, dict[str, dict[str, int]], dict[str, int]]:
    figures = workdir / "figures.json"
    junit = workdir / "junit.xml"
    env = dict(os.environ, HQ_FIGURES=str(figures))
    marker = "slow or not slow" if slow else "not slow"
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", marker, f"--junitxml={junit}", *SUITES.values()]
    code = subprocess.call(cmd, cwd=ROOT, env=env)
    counts: dict[str, dict[str, int]] = {name: {"passed": 0, "failed": 0, "skipped": 0} for name in SUITES}
    by_file = {Path(path).stem: name for name, path in SUITES.items()}
    for case in ET.parse(junit).getroot().iter("testcase"):
        module = case.get("classname", "").split(".")[-1]
        name = by_file.get(module)
        if name is None:
            continue
        if case.find("failure") is not None or case.find("error") is not None:
            counts[name]["failed"] += 1
        elif case.find("skipped") is not None:
            counts[name]["skipped"] += 1
        else:
            counts[name]["passed"] += 1
    totals = json.loads(figures.read_text()) if figures.exists() else {}
    return code, counts, totals


def _table(counts: dict[str, dict[str, int]], totals: dict[str, int]) -> list[str]:
    def f(name: str) -> str:
        return f"{totals.get(name, 0):,}"

    rows = [
        ("Model-based runs (Hypothesis state machine)", f("model_runs"), "test_model.py"),
        ("Tasks the model submitted", f("model_tasks"), "test_model.py"),
        ("Invariant checks made (each after a step)", f("model_invariant_checks"), "test_model.py"),
        ("Tasks pushed through the stress test", f("stress_tasks"), "test_stress.py"),
        ("Cancels that succeeded in the stress test", f("stress_cancels"), "test_stress.py"),
        ("Fault-injection cases passed", f"{counts['faults']['passed']:,}", "test_faults.py"),
        ("Race and re-entrancy cases passed", f"{counts['races']['passed']:,}", "test_races.py"),
        (
            "Bad-input cases passed (each also checks state unchanged)",
            f"{counts['bad_input']['passed']:,}",
            "test_bad_input.py",
        ),
        (
            "Shutdown, signal, fork and dead-loop cases passed",
            f"{counts['lifecycle']['passed']:,}",
            "test_lifecycle.py",
        ),
        (
            "Hardening cases passed (ids, listeners, programming errors, stopping sync handlers)",
            f"{counts['hardening']['passed']:,}",
            "test_hardening.py",
        ),
        ("Interrupt cases passed", f"{counts['interrupt']['passed']:,}", "test_interrupt.py"),
        ("Interrupts raced against the handler's return", f("interrupt_race_rounds"), "test_interrupt.py"),
        (
            "Memory and result-budget cases passed",
            f"{counts['memory']['passed']:,}",
            "test_memory.py",
        ),
        ("Owned thread pool cases passed", f"{counts['pool']['passed']:,}", "test_pool.py"),
        (
            "Child-task cases passed (handlers waiting for tasks of their own queue)",
            f"{counts['nesting']['passed']:,}",
            "test_nesting.py",
        ),
        ("Tests checked for leaked threads", f("tests_checked_for_leaked_threads"), "conftest.py"),
        ("Tests checked for leaked asyncio tasks", f("tests_checked_for_leaked_asyncio_tasks"), "conftest.py"),
        (
            "Tests checked for leaked timers (asyncio loop only: uvloop hides its timers)",
            f("tests_checked_for_leaked_timers"),
            "conftest.py",
        ),
        (
            "Traced bytes left after 10,000 tasks and their TTL",
            f("tracemalloc_bytes_left_after_10000_tasks"),
            "test_core.py",
        ),
        ("Tasks lost (future never resolved)", f("lost_tasks"), "test_stress.py"),
        ("Tasks whose handler ran to completion twice", f("tasks_run_twice"), "test_stress.py"),
        ("Futures not resolved exactly once", f("unresolved_futures"), "test_stress.py"),
    ]
    lines = ["| what | count | where |", "| --- | ---: | --- |"]
    lines += [f"| {a} | {b} | `{c}` |" for a, b, c in rows]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", action="store_true", help="include the long variants (make soak)")
    parser.add_argument("--out", type=Path, default=ROOT / "RELIABILITY.md")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        code, counts, totals = _run(args.slow, Path(tmp))
    failed = sum(c["failed"] for c in counts.values())
    command = "make reliability" + (" SLOW=1" if args.slow else "")
    text = [
        "# Reliability",
        "",
        f"Made by `{command}` on {datetime.date.today().isoformat()} ({platform.python_implementation()} "
        f"{platform.python_version()}, {os.cpu_count()} cores, {platform.machine()}); "
        f"{'every case passed' if failed == 0 and code == 0 else f'{failed} case(s) FAILED'}.",
        "",
        *_table(counts, totals),
        "",
        "The counts of lost, doubled and unresolved tasks are what the tests measured before asserting",
        "that they are zero. Which suites ran, and what each checks:",
        "",
        "- `test_model.py`: a Hypothesis state machine drives a real queue (submit from the loop and",
        "  from threads, cancel, query, wait, shut down) and checks the stats identity, forward-only",
        "  statuses, exactly-once resolution and priority order after every step.",
        "- `test_stress.py`: 16 threads and the loop submit and cancel at once; every task is",
        "  accounted for and the counters equal the test's own tally.",
        "- `test_faults.py`: handlers that raise BaseException, swallow cancellation, never return,",
        "  block the loop, return huge or unpicklable values, or use the queue themselves; executors",
        "  shut down or broken under the queue.",
        "- `test_races.py`: re-entrancy (user code calling back into the queue) and the races found",
        "  in review.",
        "- `test_bad_input.py`: a table of bad calls, each raising a specific error at the call site",
        "  and leaving stats and statuses unchanged.",
        "- `test_lifecycle.py`: shutdown that starts no new attempt, `shutdown_blocking` from many",
        "  threads at once, signal handlers that interrupt the queue, a loop that ended without",
        "  shutdown, a dropped queue, a forked child, a process exiting past a stuck handler.",
        "- `test_hardening.py`: ids hashed under the lock, listeners removed while called, the bridge",
        "  on a closed loop, programming errors not retried, sync handlers stopped by a cooperative",
        "  check or an interrupt, results kept or not.",
        "- `test_interrupt.py`: the interrupt raised in the handler or not at all, never after it returned.",
        "- `test_memory.py`: memory given back after a cancelled burst; the byte budget of results.",
        "- `test_pool.py`: the queue's own thread pool, and how it lets the process exit.",
        "- `test_nesting.py`: handlers waiting for tasks of their own queue (chains 100 deep on one",
        "  worker, fan-outs of 1,000, from async and sync handlers) never deadlock, and at most",
        "  `workers` handlers are at work at once.",
        "",
    ]
    args.out.write_text("\n".join(text))
    print(f"wrote {args.out}")
    return code


if __name__ == "__main__":
    sys.exit(main())
