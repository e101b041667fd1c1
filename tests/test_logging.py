"""Logging: quiet for routine work, retries at INFO, one WARNING per failed task, lifecycle at DEBUG, no print."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest

from hybrid_queue import RetryPolicy
from hybrid_queue.testing import FakeClock


async def test_routine_work_logs_nothing_at_info(make_queue, caplog, capsys):
    caplog.set_level(logging.INFO, logger="hybrid_queue")
    q = await make_queue(2)
    handles = [await q.submit(abs, -i) for i in range(20)]
    for h in handles:
        await h
    await q.shutdown()
    assert caplog.records == []
    assert capsys.readouterr() == ("", "")


async def test_retries_at_info_and_only_the_final_failure_at_warning(make_queue, caplog, capsys):
    caplog.set_level(logging.DEBUG, logger="hybrid_queue")
    clock = FakeClock()
    q = await make_queue(1, clock=clock, retry=RetryPolicy(max_retries=2, base_delay=5.0))

    async def fail():
        raise ConnectionError("refused")

    h = await q.submit(fail, task_id="job-7")
    await clock.sleep(60)
    with pytest.raises(ConnectionError):
        await h
    logged = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
    assert logged == [
        ("INFO", "task 'job-7' attempt 1 failed with ConnectionError('refused'); retry 1 of 2 in 5.000 s"),
        ("INFO", "task 'job-7' attempt 2 failed with ConnectionError('refused'); retry 2 of 2 in 10.000 s"),
        ("WARNING", "task 'job-7' failed after 3 attempt(s): ConnectionError('refused')"),
    ]
    assert capsys.readouterr() == ("", "")


def test_an_unconfigured_program_prints_nothing_to_stderr():
    # Without a handler of the library's own, logging.lastResort would print
    # every WARNING of an unconfigured program to stderr.
    program = textwrap.dedent(
        """
        from hybrid_queue import HybridQueue, RetryPolicy

        def fail():
            raise ConnectionError("refused")

        with HybridQueue(2, retry=RetryPolicy(max_retries=1, base_delay=0.0)) as q:
            futures = [q.submit_blocking(fail) for _ in range(5)]
            for f in futures:
                try:
                    f.result()
                except ConnectionError:
                    pass
        print("done")
        """
    )
    run = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True)
    assert (run.stdout, run.stderr) == ("done\n", "")


async def test_lifecycle_is_logged_at_debug(make_queue, caplog):
    caplog.set_level(logging.DEBUG, logger="hybrid_queue")
    q = await make_queue(3)
    await q.shutdown()
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert debug[0] == "queue started with 3 workers"
    assert debug[-1] == "queue stopped"
    assert all(r.levelno == logging.DEBUG for r in caplog.records)
