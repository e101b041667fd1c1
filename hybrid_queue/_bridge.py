"""The one crossing from worker threads to the event loop, batched.

``loop.call_soon_threadsafe`` costs a lock, a deque append and a write to the
loop's self-pipe. Calls posted while a drain is already scheduled ride on that
drain instead, so a burst of completions from executor threads wakes the loop
once, not once per task.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["LoopBridge"]


class LoopBridge:
    """Runs callables on one event loop, posted from any thread, in posting order."""

    __slots__ = ("_calls", "_lock", "_loop", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # Guards _calls and _scheduled. Invariant: while _calls is non-empty,
        # _scheduled is True and a drain is queued on the loop. The append and
        # the decision to wake the loop happen under one hold, or a call could
        # land just after a drain swapped the list and never run.
        self._lock = threading.Lock()
        self._calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self._scheduled = False

    def post(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Run ``fn(*args)`` on the loop soon. Any thread.

        Returns False if the loop is closed, in which case ``fn`` never runs.
        """
        with self._lock:
            self._calls.append((fn, args))
            if self._scheduled:
                return True
            self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # loop closed: nothing can run there any more
            with self._lock:
                self._calls.clear()
                self._scheduled = False
            return False
        return True

    def _drain(self) -> None:
        with self._lock:
            calls = self._calls
            self._calls = []
            self._scheduled = False
        for fn, args in calls:
            # One failing call must not drop the rest of the batch.
            try:
                fn(*args)
            except Exception as exc:
                self._loop.call_exception_handler(
                    {"message": f"hybrid_queue: error in {fn!r} posted to the loop", "exception": exc}
                )
