"""What the queue asks of a clock: the time, and timers on the queue's loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["Clock", "TimerHandle"]


class TimerHandle(Protocol):
    """A timer that can be called off (``asyncio.TimerHandle`` is one)."""

    def cancel(self) -> None:
        """Stop the timer; its callback will not run. Harmless once it has run."""


class Clock(Protocol):
    """A source of time for retry delays, per-attempt timeouts and the result ttl.

    The queue reads ``time()`` from any thread and calls ``call_later`` only on
    its loop thread; the callbacks must run on that thread too. Both are
    called with the queue's internal lock held: they must be quick and must
    not call back into the queue (the loop's clock and ``FakeClock`` are).
    ``hybrid_queue.testing.FakeClock`` is one whose time moves only when a test
    says so.
    """

    def time(self) -> float:
        """The current time in seconds; never goes backwards."""

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        """Run ``callback(*args)`` once ``delay`` seconds have passed on this clock."""
