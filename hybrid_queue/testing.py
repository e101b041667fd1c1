"""Helpers for testing code that uses a HybridQueue: a clock that moves only when told.

::

    clock = FakeClock()
    async with HybridQueue(clock=clock, retry=RetryPolicy(base_delay=30.0)) as queue:
        handle = await queue.submit(flaky)  # fails twice, then succeeds
        await clock.sleep(120)  # runs both retries at once, in real milliseconds
        assert await handle == "ok"
        await clock.sleep(3600)  # long past the result ttl
        assert queue.stats().results_expired == 1
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import threading
import time
import weakref
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._queue import HybridQueue

__all__ = ["FakeClock"]


class _FakeTimer:
    __slots__ = ("args", "callback", "cancelled", "due")

    def __init__(self, due: float, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.due = due
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """A clock for a HybridQueue whose time moves only by ``advance`` or ``sleep``.

    Pass it as ``HybridQueue(clock=...)``: retry delays, per-attempt timeouts,
    the result ttl, delayed and periodic tasks and key rates then all run on
    it (``wall``: the wall-clock time at ``start``, for cron rules and
    ``not_before`` datetimes), so a test of "fails twice, then
    succeeds after backoff" or "the result expires after an hour" takes
    milliseconds. Handlers that sleep with asyncio or ``time.sleep`` still
    sleep for real.

    ``time()`` may be read from any thread. ``advance``, ``sleep`` and the
    timers they fire run on the thread of the queue's event loop, as the
    queue's own timers must.
    """

    def __init__(self, start: float = 0.0, *, wall: datetime | float = 0.0) -> None:
        self._lock = threading.Lock()  # guards _now, _timers, _queues
        self._now = float(start)
        # Wall-clock time moves with the fake time: ``wall`` at ``start``.
        if isinstance(wall, datetime):
            if wall.tzinfo is None or wall.utcoffset() is None:
                raise ValueError(f"wall must be a timezone-aware datetime or seconds since the epoch, got {wall!r}")
            wall = wall.timestamp()
        self._wall_offset = float(wall) - self._now
        self._timers: list[tuple[float, int, _FakeTimer]] = []
        self._order = itertools.count()  # equal deadlines fire in arming order
        # Weak: a clock kept by a test fixture must not keep its queues alive.
        self._queues: weakref.WeakSet[HybridQueue] = weakref.WeakSet()

    def time(self) -> float:
        """The fake time in seconds. Any thread."""
        return self._now

    def wall_time(self) -> float:
        """The fake wall-clock time, in seconds since the epoch (``wall`` at ``start``). Any thread.

        What a ``not_before`` datetime and a ``cron`` schedule of a queue on
        this clock are measured against.
        """
        return self._now + self._wall_offset

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> _FakeTimer:
        """Arm a timer ``delay`` fake seconds from now. The queue calls this on its loop thread."""
        with self._lock:
            timer = _FakeTimer(self._now + max(delay, 0.0), callback, args)
            heapq.heappush(self._timers, (timer.due, next(self._order), timer))
        return timer

    @property
    def pending_timers(self) -> int:
        """How many timers are armed and not cancelled."""
        with self._lock:
            return sum(1 for _, _, t in self._timers if not t.cancelled)

    def next_deadline(self) -> float | None:
        """When the next armed timer fires, or None when none is armed."""
        with self._lock:
            self._drop_cancelled_locked()
            return self._timers[0][0] if self._timers else None

    def advance(self, seconds: float) -> int:
        """Move time forward and fire, in deadline order, every timer that comes due; return how many.

        Each timer fires with the clock reading its own deadline, so a retry
        armed by an earlier timer fires too if it falls inside the window.
        Runs the timers' callbacks in the calling thread, which must be the
        queue's loop thread. What they start (a retried coroutine handler, say)
        runs only when the loop next gets control: ``await sleep()`` instead
        of ``advance()`` waits for that.
        """
        target = self._target(seconds)
        fired = 0
        while self._fire_next(target):
            fired += 1
        self._now = max(self._now, target)
        return fired

    async def sleep(self, seconds: float, *, settle_timeout: float = 10.0) -> None:
        """Let ``seconds`` of fake time pass while the queue does what falls due in them.

        Before each timer fires, and at the end, waits until every queue using
        this clock is quiet: no task waiting for a worker, no worker busy, and
        every retry's timer armed.
        So a retry that the window's first timer starts, fails and re-arms
        inside the window fires too, as in real time. On the queue's loop.

        A handler waiting for something other than the clock keeps the
        queue busy, so time does not move under it; to test its timeout, move
        time with ``advance()`` while it runs. Raises TimeoutError if a queue
        stays busy for ``settle_timeout`` real seconds.
        """
        target = self._target(seconds)
        while True:
            await self._settle(settle_timeout)
            if not self._fire_next(target):
                break
        self._now = max(self._now, target)
        await self._settle(settle_timeout)

    # ------------------------------------------------------------------ private

    def _attach(self, queue: HybridQueue) -> None:
        # Called by the queue given this clock, so sleep() knows what to wait for.
        with self._lock:
            self._queues.add(queue)

    def _target(self, seconds: float) -> float:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds < math.inf:
            raise ValueError(f"seconds must be a finite number >= 0, got {seconds!r}")
        # The timers' callbacks are the queue's, and loop-only.
        with self._lock:
            queues = list(self._queues)
        here = threading.get_ident()
        for queue in queues:
            thread, _ = queue._clock_view()
            if thread is not None and thread != here:
                raise RuntimeError(
                    "FakeClock.advance() and sleep() must run on the event loop thread of the queues using "
                    "the clock (in a test coroutine); from another thread, use "
                    "asyncio.run_coroutine_threadsafe(clock.sleep(...), loop)"
                )
        return self._now + seconds

    def _drop_cancelled_locked(self) -> None:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)

    def _fire_next(self, target: float) -> bool:
        with self._lock:
            self._drop_cancelled_locked()
            if not self._timers or self._timers[0][0] > target:
                return False
            due, _, timer = heapq.heappop(self._timers)
            self._now = max(self._now, due)
        # Outside the lock: the callback may arm timers of its own.
        timer.callback(*timer.args)
        return True

    async def _settle(self, settle_timeout: float) -> None:
        deadline = time.monotonic() + settle_timeout
        spins = 0
        while not self._quiet():
            spins += 1
            if spins < 20:
                await asyncio.sleep(0)  # work on the loop moves in a few steps
            elif time.monotonic() < deadline:
                await asyncio.sleep(0.001)  # a sync handler in a thread: real time
            else:
                raise TimeoutError(
                    f"a queue on this FakeClock was still busy after {settle_timeout} s of real time; "
                    "to move time under a running handler (to reach its timeout), use advance()"
                )

    def _quiet(self) -> bool:
        with self._lock:
            queues = list(self._queues)
        return all(queue._clock_view()[1] for queue in queues)
