"""A service killed with SIGKILL mid-way loses no task: its journal puts them back when it starts again.

Run it with ``python examples/durable_service.py``. It plays the service
twice, each time as a child process of its own, on one journal in a
temporary directory:

1. The first run submits 40 durable tasks. Each ``await q.submit(...)``
   returns once the task's row is committed to the journal: the task is
   acknowledged. While they run, this process kills the service with
   SIGKILL, about a quarter of the way through: no clean-up of any kind.
2. The second run opens the same journal, which puts back every task that
   had not ended, and runs them to the end.

Each run of a task appends a line to a log (its number and its attempt
number, from ``current_task()``) and sleeps a little. From the log this
process counts the tasks acknowledged, the tasks that ran, and those that
ran more than once: those whose end was not on disk at the kill (running
then, or just finished) ran again, with attempt 2. Durable tasks run at
least once, not exactly once. None is lost.

A durable task's handler is found again by its import path after a
restart, so it cannot live in ``__main__``: each child imports this file
as the module ``durable_service``, and the handler is
``durable_service:work``.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from hybrid_queue import HybridQueue, current_task

TASKS = 40
WORKERS = 4
WORK_SECONDS = 0.1  # each task's work: the first run lasts about a second, if not killed
KILL_AFTER = 10  # tasks started when the first run is killed


def append(path: str, line: str) -> None:
    """Append ``line`` in one write with O_APPEND: lines of concurrent writers never interleave."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def work(log: str, n: int) -> int:
    """One task of the service (a sync handler): note the start, with the attempt number; work; return n."""
    append(log, f"{n} {current_task().attempt}\n")
    time.sleep(WORK_SECONDS)
    return n


async def serve(run: str, workdir: Path) -> None:
    """One run of the service, in a child process: ``first`` submits the tasks, ``second`` finishes them."""
    log = str(workdir / "runs.log")
    # The constructor takes the journal for this process and puts back what
    # it holds: nothing on the first run, the unfinished tasks on the second.
    q = HybridQueue(WORKERS, journal=workdir / "tasks.db")
    restored = q.stats().submitted
    async with q:
        if run == "first":
            for n in range(TASKS):
                await q.submit(work, log, n)  # returns once the task is on disk
                print(f"ack {n}", flush=True)
            await asyncio.sleep(60)  # running the tasks, until the parent kills this process
        else:
            print(f"restored {restored}", flush=True)
        # Leaving the block shuts the queue down with wait=True: it drains
        # every task, the restored ones included.
    print(f"completed {q.stats().completed}", flush=True)


def child(run: str, workdir: Path) -> list[str]:
    """The command that runs this file as a child process, for one run of the service."""
    return [sys.executable, __file__, "--child", run, str(workdir)]


def main() -> Counter[int]:
    """Run the service, kill it, run it again; print what the log shows and return the runs per task."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        log = workdir / "runs.log"

        first = subprocess.Popen(child("first", workdir), stdout=subprocess.PIPE, text=True)
        assert first.stdout is not None
        acknowledged: set[int] = set()
        for line in first.stdout:
            acknowledged.add(int(line.split()[1]))
            if len(acknowledged) == TASKS:
                break
        deadline = time.monotonic() + 5
        while not log.exists() or len(log.read_text().splitlines()) < KILL_AFTER:
            if time.monotonic() > deadline:
                first.kill()
                raise RuntimeError("the first run started too few tasks in 5 s")
            time.sleep(0.005)
        first.kill()  # SIGKILL (on Windows, TerminateProcess): the service gets no say
        first.wait()
        first.stdout.close()
        started = len(log.read_text().splitlines())
        print(f"first run: {len(acknowledged)} tasks acknowledged; killed with SIGKILL after {started} had started")

        second = subprocess.run(child("second", workdir), capture_output=True, text=True, timeout=30, check=True)
        restored, completed = (int(line.split()[1]) for line in second.stdout.splitlines())
        print(f"second run: {restored} tasks put back from the journal, {completed} completed")

        runs = [tuple(map(int, line.split())) for line in log.read_text().splitlines()]
    ran = Counter(n for n, _ in runs)
    again = sorted(n for n, times in ran.items() if times > 1)
    attempts = ", ".join(str(a) for a in sorted({attempt for _, attempt in runs if attempt > 1}))
    lost = sorted(acknowledged - set(ran))
    print(f"{len(acknowledged)} acknowledged, {len(ran)} ran, {len(again)} ran more than once, {len(lost)} lost")
    if again:
        print(f"ran again (not ended on disk at the kill): tasks {again}, with attempt {attempts}")
    if lost:
        raise SystemExit(f"lost: {lost}")
    print("none was lost: every acknowledged task ran at least once")
    return ran


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        # This file again, imported under its module name, so that the
        # handler of the durable tasks is durable_service:work (a function
        # of __main__ could not be found by a later process).
        service = importlib.import_module(Path(__file__).stem)
        asyncio.run(service.serve(sys.argv[2], Path(sys.argv[3])))
    else:
        main()
