"""The one crossing from worker threads to the event loop, batched.

``loop.call_soon_threadsafe`` costs a lock, a deque append and a write to the
loop's self-pipe. Calls posted while a drain is already scheduled ride on that
drain instead, so a burst of completions from executor threads wakes the loop
once, not once per task.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["LoopBridge"]


class LoopBridge:
    """Runs callables on one event loop, posted from any thread, in posting order.

    No lock: ``deque.append`` and ``popleft`` are atomic, and the protocol
    below cannot lose a call. ``post`` appends, then schedules a drain if none
    is scheduled; ``_drain`` clears the flag, then pops what is there. A
    poster that saw the flag set appended before the drain cleared it, so
    that drain pops its call; a poster that saw it clear schedules a drain of
    its own. At worst two posters both schedule one, and the second finds
    nothing: an extra wake-up, never a lost call.
    """

    __slots__ = ("_calls", "_is_closed", "_loop", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._is_closed = loop.is_closed  # bound once: read on every post that finds a drain scheduled
        self._calls: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._scheduled = False

    def post(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Run ``fn(*args)`` on the loop soon. Any thread.

        Returns False if the loop is closed, in which case ``fn`` never runs.
        """
        self._calls.append((fn, args))
        if self._scheduled:
            if not self._is_closed():
                return True
            # The loop closed with a drain scheduled that will never run:
            # answer as call_soon_threadsafe would, rather than queue calls
            # behind it for good.
            self._calls.clear()
            return False
        self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # loop closed: nothing can run there any more
            self._calls.clear()
            self._scheduled = False
            return False
        return True

    def _drain(self) -> None:
        self._scheduled = False
        calls = self._calls
        # Only what is here now: calls posted from here on scheduled their
        # own drain, and a steady stream must not hold the loop forever.
        for _ in range(len(calls)):
            fn, args = calls.popleft()
            # One failing call must not drop the rest of the batch.
            try:
                fn(*args)
            except Exception as exc:
                self._loop.call_exception_handler(
                    {"message": f"hybrid_queue: error in {fn!r} posted to the loop", "exception": exc}
                )
