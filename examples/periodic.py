"""Periodic jobs on a queue: one every fraction of a second, one on a cron rule.

Run it with ``python examples/periodic.py`` (the cron rule needs the
``cron`` extra: ``pip install 'hybrid_queue[cron]'``). The queue runs for
about two seconds of real time, then shuts down, which ends every schedule:

- a heartbeat ``every`` 0.25 s, paused for half a second on the way;
- a slow job ``every`` 0.2 s that takes 0.5 s: with ``overlap=False`` (the
  default) a run is not started while the previous one is unfinished, so
  most of its due times are skipped, not piled up;
- a nightly report on the cron rule ``0 2 * * *`` (02:00 every day) in
  Paris time, which does not come due while the program runs: it prints
  when it would.

Each run is an ordinary task with the id ``(name, n)``; its result is in
the queue's result store like any other.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from zoneinfo import ZoneInfo

from hybrid_queue import HybridQueue, Schedule

PARIS = ZoneInfo("Europe/Paris")
STARTED = time.monotonic()


def heartbeat() -> float:
    """A quick sync job: runs on the queue's thread pool."""
    elapsed = time.monotonic() - STARTED
    print(f"{elapsed:4.2f} s  heartbeat")
    return elapsed


async def slow_job() -> None:
    """A coroutine job that takes longer than its interval: runs on the event loop."""
    await asyncio.sleep(0.5)


def report() -> None:
    """The nightly job (a summary mail, a cleanup...)."""
    print("report")


async def main() -> list[Schedule]:
    """Run the three schedules for about two seconds, shut down, print their counters and return them."""
    q = HybridQueue(workers=4)
    await q.start()
    beat = q.every(0.25, heartbeat, name="heartbeat")
    slow = q.every(0.2, slow_job, name="slow", delay=0)  # the first run at once
    cron = q.cron("0 2 * * *", report, name="report", tz=PARIS)
    # next_run is on the queue's clock (monotonic); next_run_at is the same
    # moment on the wall clock, in UTC. Rounded to the second: the two
    # clocks are read a moment apart, so it may come out a hair early.
    when = cron.next_run_at
    assert when is not None
    print(f"report: next run at {datetime.fromtimestamp(round(when.timestamp()), PARIS):%Y-%m-%d %H:%M %Z}")

    # The sleeps end between two heartbeats, so that the last one has ended
    # when its status is read.
    await asyncio.sleep(1.1)
    beat.pause()  # a run already started goes on; none starts until resume()
    print(f"{time.monotonic() - STARTED:4.2f} s  heartbeat paused")
    await asyncio.sleep(0.5)
    beat.resume()  # from its next due time after now: the paused ones are not made up
    print(f"{time.monotonic() - STARTED:4.2f} s  heartbeat resumed")
    await asyncio.sleep(0.5)

    last = beat.last_task_id
    assert last is not None
    print(f"last heartbeat: task {last}, {q.status(last).value}")

    # Ends every schedule (no run starts from now on) and drains the runs
    # already started; the cron job's next run never comes.
    await q.shutdown()
    for schedule in (beat, slow, cron):
        print(
            f"{schedule.name}: {schedule.runs} runs, {schedule.skipped} skipped, "
            f"{schedule.missed} missed, removed={schedule.removed}"
        )
    return [beat, slow, cron]


if __name__ == "__main__":
    asyncio.run(main())
