"""Run the test suite and write RELIABILITY.md from what it counted, kind by kind.

Usage: ``python tools/reliability.py [--slow] [--out RELIABILITY.md]`` (``make reliability``).
Tests are grouped by concept, one file each; their kind (faults, races,
lifecycle, ...) is a pytest marker. Every figure in the table comes from
this run: the outcomes of each marker's tests, which tests/conftest.py
counts, and the totals the tests add to the ``figures`` fixture; both are
written to the JSON file named by HQ_FIGURES.
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
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# The markers the table counts, and what each marks (the list of "which
# suites ran"). Every one is registered in pyproject.toml.
MARKERS = {
    "model": "a Hypothesis state machine drives a real queue (submit from the loop and from threads, cancel, "
    "query, wait, shut down) and checks the stats identity, forward-only statuses, exactly-once resolution "
    "and priority order after every step.",
    "stress": "16 threads and the loop submit and cancel at once; every task is accounted for and the counters "
    "equal the test's own tally.",
    "faults": "handlers that raise BaseException, swallow cancellation, never return, block the loop, return "
    "huge or unpicklable values, or use the queue themselves; executors shut down or broken under the queue.",
    "races": "re-entrancy (user code calling back into the queue) and races, each named after what went wrong.",
    "bad_input": "a table of bad calls, each raising a specific error at the call site and leaving stats and "
    "statuses unchanged.",
    "lifecycle": "shutdown that starts no new attempt, `shutdown_blocking` from many threads at once, signal "
    "handlers that interrupt the queue, a loop that ended without shutdown, a dropped queue, a forked child, "
    "a process exiting past a stuck handler.",
    "hardening": "ids hashed under the lock, listeners removed while called, the bridge on a closed loop, "
    "programming errors not retried, sync handlers stopped by a cooperative check or an interrupt, results "
    "kept or not.",
    "interrupt": "the interrupt raised in the handler or not at all, never after it returned.",
    "memory": "memory given back after a cancelled burst; the byte budget of results.",
    "pool": "the queue's own thread pool, and how it lets the process exit.",
    "nesting": "handlers waiting for tasks of their own queue (chains 100 deep on one worker, fan-outs of "
    "1,000, from async and sync handlers) never deadlock, and at most `workers` handlers are at work at once.",
    "durable": "a process with a journal killed with SIGKILL at random moments and restarted: every acknowledged "
    "task ran at least once and has one result; with bounded_reruns=True, at most `workers` tasks ran again after "
    "each kill (without it, re-runs are counted); a second process is refused; a full disk refuses durable submits.",
    "timing": "tasks due later start at their time and never before; schedules across DST changes, misfires and "
    "overlaps; no key exceeds its concurrency or rate or starts while paused (a Hypothesis property over 10,000 "
    "keys); turns across keys; the order under aging, on the fake clock.",
    "unit": "the pure pieces (heap, result store, retry policy, stats, errors) against explicit `now` values "
    "and list models, without a loop or threads.",
}
NO_COUNTS = {"passed": 0, "failed": 0, "skipped": 0, "files": []}


def _run(slow: bool, workdir: Path) -> tuple[int, dict[str, dict[str, Any]], dict[str, int]]:
    """Run the whole suite once; return pytest's exit code, the outcomes by marker, and the figures."""
    figures = workdir / "figures.json"
    env = dict(os.environ, HQ_FIGURES=str(figures))
    marker = "slow or not slow" if slow else "not slow"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", marker]
    code = subprocess.call(cmd, cwd=ROOT, env=env)
    report = json.loads(figures.read_text()) if figures.exists() else {}
    return code, report.get("markers", {}), report.get("figures", {})


def _table(counts: dict[str, dict[str, Any]], totals: dict[str, int]) -> list[str]:
    def f(name: str) -> str:
        return f"{totals.get(name, 0):,}"

    def passed(marker: str) -> str:
        return f"{counts.get(marker, NO_COUNTS)['passed']:,}"

    def m(marker: str) -> str:
        return f"-m {marker}"

    rows = [
        ("Model-based runs (Hypothesis state machine)", f("model_runs"), "test_model.py"),
        ("Tasks the model submitted", f("model_tasks"), "test_model.py"),
        ("Invariant checks made (each after a step)", f("model_invariant_checks"), "test_model.py"),
        ("Tasks pushed through the stress test", f("stress_tasks"), "test_stress.py"),
        ("Cancels that succeeded in the stress test", f("stress_cancels"), "test_stress.py"),
        ("Fault-injection cases passed", passed("faults"), m("faults")),
        ("Race and re-entrancy cases passed", passed("races"), m("races")),
        ("Bad-input cases passed (each also checks state unchanged)", passed("bad_input"), m("bad_input")),
        ("Shutdown, signal, fork and dead-loop cases passed", passed("lifecycle"), m("lifecycle")),
        (
            "Hardening cases passed (ids, listeners, programming errors, stopping sync handlers)",
            passed("hardening"),
            m("hardening"),
        ),
        ("Interrupt cases passed", passed("interrupt"), m("interrupt")),
        ("Interrupts raced against the handler's return", f("interrupt_race_rounds"), "test_threads.py"),
        ("Kills (SIGKILL) of a process with a journal, then restarts", f("durable_kills"), "test_durable.py"),
        (
            "Re-runs after those kills (counted; see bounded_reruns below for a bound)",
            f("durable_reruns"),
            "test_durable.py",
        ),
        ("Most re-runs after one kill (workers: 4)", f("durable_most_reruns_of_a_kill"), "test_durable.py"),
        ("Kills with bounded_reruns=True", f("durable_bounded_kills"), "test_durable.py"),
        (
            "Most re-runs after one kill with bounded_reruns=True (checked: at most workers, 4)",
            f("durable_bounded_most_reruns_of_a_kill"),
            "test_durable.py",
        ),
        ("Memory and result-budget cases passed", passed("memory"), m("memory")),
        ("Owned thread pool cases passed", passed("pool"), m("pool")),
        (
            "Child-task cases passed (handlers waiting for tasks of their own queue)",
            passed("nesting"),
            m("nesting"),
        ),
        ("Durable-task cases passed (journal, restarts, kills)", passed("durable"), m("durable")),
        (
            "Time and fairness cases passed (delayed and periodic tasks, key limits and turns, aging)",
            passed("timing"),
            m("timing"),
        ),
        ("Unit cases passed (heap, result store, retry policy, stats, errors)", passed("unit"), m("unit")),
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
            "test_results.py",
        ),
        ("Tasks lost (future never resolved)", f("lost_tasks"), "test_stress.py"),
        ("Tasks whose handler ran to completion twice", f("tasks_run_twice"), "test_stress.py"),
        ("Futures not resolved exactly once", f("unresolved_futures"), "test_stress.py"),
    ]
    lines = ["| what | count | where |", "| --- | ---: | --- |"]
    lines += [f"| {a} | {b} | `{c}` |" for a, b, c in rows]
    return lines


def _suites(counts: dict[str, dict[str, Any]]) -> list[str]:
    """One bullet per marker: what it checks, and the files its tests are in (by concept)."""
    lines = []
    for marker, what in MARKERS.items():
        files = ", ".join(f"`{Path(path).name}`" for path in counts.get(marker, NO_COUNTS)["files"])
        bullet = f"- `{marker}` ({files or 'no test ran'}): {what}"
        lines += textwrap.wrap(bullet, width=100, subsequent_indent="  ", break_on_hyphens=False)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", action="store_true", help="include the long variants (make soak)")
    parser.add_argument("--out", type=Path, default=ROOT / "RELIABILITY.md")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        code, counts, totals = _run(args.slow, Path(tmp))
    everything = counts.get("all", NO_COUNTS)
    failed = everything["failed"]
    command = "make reliability" + (" SLOW=1" if args.slow else "")
    if failed == 0 and code == 0:
        verdict = f"all {everything['passed']:,} cases of the suite passed ({everything['skipped']:,} skipped)"
    else:
        verdict = f"{failed} case(s) FAILED"
    text = [
        "# Reliability",
        "",
        f"Made by `{command}` on {datetime.date.today().isoformat()} ({platform.python_implementation()} "
        f"{platform.python_version()}, {os.cpu_count()} cores, {platform.machine()}); {verdict}.",
        "",
        *_table(counts, totals),
        "",
        "The counts of lost, doubled and unresolved tasks are what the tests measured before asserting",
        "that they are zero. Tests are grouped by concept, one file each (`test_priority.py`,",
        "`test_cancellation.py`, `test_shutdown.py`, ...); what kind of test each is, is a pytest marker,",
        "and the counts above are by marker (`pytest -m faults` runs the fault-injection cases).",
        "Which markers ran, the files their tests are in, and what each checks:",
        "",
        *_suites(counts),
        "",
    ]
    args.out.write_text("\n".join(text))
    print(f"wrote {args.out}")
    return code


if __name__ == "__main__":
    sys.exit(main())
