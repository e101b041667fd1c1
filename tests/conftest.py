"""Shared fixtures: queues that always shut down, a leak check on every test, and two event loops.

Every async test runs twice, on the default asyncio loop and on uvloop (ids
``[asyncio]`` and ``[uvloop]``). Tests that make their own loops in threads
(``asyncio.run``, ``new_event_loop``) get the default loop there, as before.

Tests are grouped by concept, one file each; the kind of a test (faults,
races, lifecycle, ...) is a marker registered in pyproject.toml. With
HQ_FIGURES set, the pytest session also counts the outcomes of each
marker's tests for the reliability report. Helpers that more than one file
uses are in ``_helpers.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import uvloop

from hybrid_queue import HybridQueue

# _helpers holds assertions that several test files share: rewrite them as
# pytest rewrites the tests' own, so that a failure shows the values.
pytest.register_assert_rewrite("_helpers")

# The loops every async test runs on. A test that needs one loop's internals
# narrows the list with ``@pytest.mark.asyncio(loop_factories=["asyncio"])``.
LOOP_FACTORIES: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """Parametrize every async test over LOOP_FACTORIES (pytest-asyncio's hook)."""
    return LOOP_FACTORIES


class Figures:
    """Counts that the reliability report quotes (tasks pushed, examples run, ...).

    Tests add to it; with HQ_FIGURES=path set, the session writes the totals
    there as JSON (``make reliability`` does, then renders RELIABILITY.md).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.totals: dict[str, int] = {}

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self.totals[name] = self.totals.get(name, 0) + amount

    def most(self, name: str, value: int) -> None:
        """Keep the largest ``value`` seen under ``name`` (a worst case, where ``add`` keeps a sum)."""
        with self._lock:
            self.totals[name] = max(self.totals.get(name, value), value)


_FIGURES = Figures()


@pytest.fixture(scope="session")
def figures() -> Figures:
    """The session's Figures."""
    return _FIGURES


async def wait_until(predicate: Callable[[], bool], bound: float = 5.0) -> None:
    """Poll ``predicate`` for at most ``bound`` seconds.

    For states nothing can be awaited on (stats, statuses, result expiry);
    a test that can wait on an Event or a future does that instead.
    """
    async with asyncio.timeout(bound):
        while not predicate():  # noqa: ASYNC110 - no event exists for these states
            await asyncio.sleep(0.002)


def _queue_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("hybrid_queue")}


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail the test that leaves a queue thread (pool, loop, joiner) running."""
    before = _queue_threads()
    yield
    # Threads of a pool shut down with wait=False exit on their own, promptly.
    deadline = time.monotonic() + 5.0
    leaked = _queue_threads() - before
    while leaked and time.monotonic() < deadline:
        time.sleep(0.01)
        leaked = {t for t in leaked if t.is_alive()}
    assert not leaked, f"threads left running: {sorted(t.name for t in leaked)}"
    _FIGURES.add("tests_checked_for_leaked_threads")


@pytest.fixture
async def make_queue() -> AsyncIterator[Callable[..., Any]]:
    """Factory of started queues; each is shut down (pending work cancelled) at teardown.

    Also checks that the test left no asyncio task of the queue behind.
    """
    made: list[HybridQueue] = []

    async def make(*args: Any, start: bool = True, **kwargs: Any) -> HybridQueue:
        q = HybridQueue(*args, **kwargs)
        made.append(q)
        if start:
            await q.start()
        return q

    yield make
    for q in made:
        await q.shutdown(wait=False)
    leftover = [t for t in asyncio.all_tasks() if t.get_name().startswith("hybrid_queue")]
    assert not leftover, f"queue tasks left behind: {leftover}"
    _FIGURES.add("tests_checked_for_leaked_asyncio_tasks")
    # Timers (retry, timeout, result expiry) armed by a queue and still live.
    # The default loop exposes its timer heap; other loops are not inspected.
    scheduled = getattr(asyncio.get_running_loop(), "_scheduled", None)
    if scheduled is not None:
        timers = [h for h in scheduled if not h.cancelled() and _is_queue_callback(h)]
        assert not timers, f"queue timers left armed: {timers}"
        _FIGURES.add("tests_checked_for_leaked_timers")


def _is_queue_callback(handle: asyncio.TimerHandle) -> bool:
    owner = getattr(handle._callback, "__self__", None)
    return type(owner).__module__.startswith("hybrid_queue")


# Outcome of each test that ran ("passed", "failed" or "skipped"), and the
# markers registered in pyproject.toml that it carries. A failure in any
# phase (setup, call, teardown) fails the test; a skip in setup or call
# skips it; otherwise it passed when its call did.
_OUTCOMES: dict[str, str] = {}
_MARKERS: dict[str, list[str]] = {}


def _registered_markers(config: pytest.Config) -> set[str]:
    return {line.split(":", 1)[0].strip() for line in config.getini("markers")}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    registered = _registered_markers(config)
    for item in items:
        _MARKERS[item.nodeid] = sorted({mark.name for mark in item.iter_markers()} & registered)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.failed:
        _OUTCOMES[report.nodeid] = "failed"
    elif report.nodeid in _OUTCOMES:
        return
    elif report.skipped:
        _OUTCOMES[report.nodeid] = "skipped"
    elif report.when == "call":
        _OUTCOMES[report.nodeid] = "passed"


def outcomes_by_marker() -> dict[str, dict[str, Any]]:
    """For each registered marker, and for "all" tests: how many passed, failed and were skipped, and in which files."""
    counts: dict[str, dict[str, Any]] = {}
    for nodeid, outcome in _OUTCOMES.items():
        path = nodeid.split("::", 1)[0]
        for name in ["all", *_MARKERS.get(nodeid, [])]:
            row = counts.setdefault(name, {"passed": 0, "failed": 0, "skipped": 0, "files": []})
            row[outcome] += 1
            if path not in row["files"]:
                row["files"].append(path)
    return counts


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With HQ_FIGURES=path set, write the figures and the outcomes by marker there as JSON."""
    path = os.environ.get("HQ_FIGURES")
    if path:
        report = {"figures": _FIGURES.totals, "markers": outcomes_by_marker()}
        with open(path, "w", encoding="utf-8") as out:
            json.dump(report, out, indent=2, sort_keys=True)
