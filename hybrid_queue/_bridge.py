"""The queue's event loop: binding to it, and the one way to run something there.

``LoopBinding`` is the vocabulary every other module uses: ``now_or_soon``
(inline on the loop thread, else soon), ``soon`` (never inline: from under
the scheduler's lock, or behind the current callback) and ``later`` (a
timer, on the queue's clock when it has one). Calls from other threads go
through ``LoopBridge``, the one crossing, batched; the one hot path that
knows it is off the loop thread (a pool thread handing a result over)
posts to ``LoopBinding.bridge`` itself: on that path each Python call
counts, since it is where the thread also contends for the GIL.

``loop.call_soon_threadsafe`` costs a lock, a deque append and a write to the
loop's self-pipe. Calls posted while a drain is already scheduled ride on that
drain instead, so a burst of completions from executor threads wakes the loop
once, not once per task.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._clock import Clock, TimerHandle

__all__ = ["LoopBinding", "LoopBridge"]

# The context the queue's own callbacks run in: not the context of whatever
# called soon() or later() (a handler, say), which a timer would otherwise
# keep, with every value in it (a handler's task record, and its result),
# for as long as it waits. Callbacks on the loop run one at a time, so one
# context serves them all.
_NEUTRAL = contextvars.Context()


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


class LoopBinding:
    """The loop a queue is bound to, and how to run something there. No lock of its own.

    ``bind_locked`` is called with the scheduler's lock held, once; ``loop``
    never changes after it, so every reader may read it without the lock.
    The rest may be called from any thread (``later``: the loop thread).
    """

    __slots__ = ("_timers", "bridge", "loop", "thread")

    def __init__(self, timers: Clock | None) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        # The loop's thread while the loop runs; None before, and once it stopped for good.
        self.thread: int | None = None
        # The crossing from other threads; None until bound.
        self.bridge: LoopBridge | None = None
        self._timers = timers

    def bind_locked(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to ``loop``, whose thread is the caller's. Raises RuntimeError if bound to another."""
        if self.loop is not None:
            raise RuntimeError(
                "this HybridQueue is bound to another event loop; use it only from the loop it was "
                "started on (from other threads, use submit_blocking())"
            )
        self.loop = loop
        self.thread = threading.get_ident()
        self.bridge = LoopBridge(loop)

    def unbind_thread(self) -> None:
        """Forget the loop thread once the loop stopped for good."""
        self.thread = None

    def now_or_soon(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Run ``fn(*args)`` on the loop: now if this is the loop thread, else soon. Any thread.

        False if it can never run: no loop yet, or the loop is closed.
        """
        if threading.get_ident() == self.thread:
            if self.loop is not None and self.loop.is_closed():
                return False
            fn(*args)
            return True
        return self.bridge is not None and self.bridge.post(fn, *args)

    def soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop soon, never inline. Any thread, the scheduler's lock held or not.

        Under the lock, ``fn`` (which may take it) must not run inline even
        on the loop thread: it goes behind the current callback instead.
        """
        if threading.get_ident() == self.thread:
            assert self.loop is not None
            if not self.loop.is_closed():
                self.loop.call_soon(fn, *args, context=_NEUTRAL)
        elif self.bridge is not None:
            self.bridge.post(fn, *args)

    def later(self, delay: float, fn: Callable[..., Any], *args: Any) -> TimerHandle:
        """Call ``fn(*args)`` after ``delay`` seconds. Loop thread. On the queue's clock when it has its own."""
        if self._timers is not None:
            return self._timers.call_later(delay, fn, *args)
        assert self.loop is not None
        return self.loop.call_later(delay, fn, *args, context=_NEUTRAL)
