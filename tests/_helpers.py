"""What more than one test file uses: the stats identity, shutdown bounded in time, retry policies, and
module-level handlers for executors that run them in another process.

Handlers that cross to another process are defined here, at module level, so
that they pickle by reference (``_helpers.double``) for process pools, loky
and Dask alike.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from hybrid_queue import HybridQueue, QueueStats, RetryPolicy

# Same examples on every run: a failure reproduces, and CI never flakes on a new draw.
deterministic = settings(derandomize=True, database=None, deadline=None)

FAST = RetryPolicy(max_retries=3, base_delay=0.001, max_delay=0.004)
NO_RETRY = RetryPolicy(max_retries=0)
HUGE = 50 * 2**20  # 50 MB
# Every blocking wait inside a handler has this bound, so that a test failing
# half-way can never leave a pool thread blocked for good.
SAFETY = 10.0
# Bound on any one wait for a thread, a process, a worker or a gate: generous,
# as restarting a Dask worker takes a fraction of a second on a loaded machine.
BOUND = 30.0
# The executor decides what the queue can do, not the event loop: tests of
# executors in other processes run on the default asyncio loop only.
ONE_LOOP = pytest.mark.asyncio(loop_factories=["asyncio"])


def assert_stats_identity(s: QueueStats) -> None:
    assert s.submitted == s.scheduled + s.pending + s.running + s.retrying + s.completed + s.failed + s.cancelled, s


def assert_identity(q: HybridQueue) -> None:
    assert_stats_identity(q.stats())


def assert_nothing_lost(
    q: HybridQueue, futures: Iterable[asyncio.Future[Any] | concurrent.futures.Future[Any]]
) -> None:
    """Every future is done, and no task is left anywhere but in a terminal count."""
    futures = list(futures)
    assert all(f.done() for f in futures), [f for f in futures if not f.done()]
    s = q.stats()
    assert (s.scheduled, s.pending, s.running, s.retrying) == (0, 0, 0, 0), s
    assert s.completed + s.failed + s.cancelled == s.submitted, s
    assert_identity(q)


async def shut_down(q: HybridQueue, bound: float = 5.0, **kwargs: Any) -> None:
    """``q.shutdown(**kwargs)``; a wedge fails the test after ``bound`` seconds."""
    async with asyncio.timeout(bound):
        await q.shutdown(**kwargs)
    assert_identity(q)


def queue_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("hybrid_queue")]


# ------------------------------------------------- handlers for other processes


def double(x: int) -> int:
    return 2 * x


def describe(x: int, *, key: str = "", priority: int = 0, retries: int = 0, pure: bool = True) -> str:
    # Keyword names that Client.submit would take as its own options.
    return f"{x} key={key} priority={priority} retries={retries} pure={pure}"


def note(path: str, text: str) -> int:
    """Append a line to ``path``; return how many lines it has now."""
    with open(path, "a", encoding="utf-8") as out:
        out.write(text + "\n")
    with open(path, encoding="utf-8") as lines:
        return sum(1 for _ in lines)


def fail_until(path: str, failures: int) -> int:
    """Fail the first ``failures`` calls (counted in ``path``), then return the call's number."""
    calls = note(path, "call")
    if calls <= failures:
        raise ValueError(f"call {calls} fails on purpose")
    return calls


def wait_for(gate: str, path: str = "") -> str:
    """Block until the file ``gate`` exists (at most BOUND seconds); note the start in ``path``."""
    if path:
        note(path, "started")
    deadline = time.monotonic() + BOUND
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {gate} never opened")
        time.sleep(0.005)
    return "released"


def make_lock() -> threading.Lock:
    return threading.Lock()  # cannot be pickled


def exit_process() -> None:
    os._exit(1)


UNPICKLABLE = {
    "handler": lambda: (lambda: 1, ()),  # a lambda cannot be pickled by reference
    "argument": lambda: (double, (threading.Lock(),)),
    "result": lambda: (make_lock, ()),
}


def causes(error: BaseException | None) -> list[BaseException]:
    """``error`` and the chain of exceptions it was raised from or during."""
    chain = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def open_gate(gate: Path) -> None:
    gate.touch()


def lines(path: str) -> list[str]:
    """The lines of a file that handlers wrote (small; read on the test's loop)."""
    return Path(path).read_text(encoding="utf-8").splitlines()
