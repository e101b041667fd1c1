"""Events: every state change of every task, and the listeners that hear them without polling."""

from __future__ import annotations

import enum
import logging
import types
from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = ["EventKind", "Listeners", "TaskEvent"]

logger = logging.getLogger("hybrid_queue")


class EventKind(enum.Enum):
    """What happened to a task.

    ``SUBMITTED`` (accepted into the queue), ``STARTED`` (an attempt began),
    ``RETRY_SCHEDULED`` (an attempt failed and another comes after ``delay``),
    the three ends ``COMPLETED``, ``FAILED`` and ``CANCELLED``, and the two
    ways a stored result goes: ``EXPIRED`` (its ttl passed) and ``EVICTED``
    (``max_results`` or ``max_result_bytes`` made room for a newer one).
    """

    SUBMITTED = "submitted"
    STARTED = "started"
    RETRY_SCHEDULED = "retry_scheduled"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    EVICTED = "evicted"


class TaskEvent(NamedTuple):
    """One state change of one task. Immutable.

    - ``attempt``: the attempt the event belongs to, counting from 1; 0 for
      a task that never started, and for ``SUBMITTED``, ``EXPIRED`` and
      ``EVICTED``.
    - ``time``: the queue's clock (``time.monotonic`` unless the queue was
      given another clock) when the change happened.
    - ``duration_ms``: for ``COMPLETED``, ``FAILED`` and ``CANCELLED``, as
      ``TaskResult.duration_ms``; otherwise None.
    - ``error``: the attempt's exception for ``RETRY_SCHEDULED`` and
      ``FAILED``, the ``CancelledError`` for ``CANCELLED``; otherwise None.
    - ``delay``: for ``RETRY_SCHEDULED``, seconds until the retry is queued.
    """

    kind: EventKind
    task_id: Any
    attempt: int
    time: float
    duration_ms: float | None = None
    error: BaseException | None = None
    delay: float | None = None


class Listeners:
    """A queue's listeners and the events waiting for them. No lock of its own.

    The ``_locked`` methods are called with the scheduler's lock held;
    ``dispatch`` on the loop thread with no lock held. ``callbacks`` is
    replaced whole, never mutated, so that a reader needs no lock; events
    wait in ``pending``, in the order of the changes, until one posted
    flush hands them over (``posted``: that flush is on its way).
    """

    __slots__ = ("callbacks", "pending", "posted")

    def __init__(self) -> None:
        self.callbacks: tuple[Callable[[TaskEvent], object], ...] = ()
        self.pending: list[TaskEvent] = []
        self.posted = False

    def add_locked(self, listener: Callable[[TaskEvent], object]) -> None:
        self.callbacks = (*self.callbacks, listener)

    def remove_locked(self, listener: Callable[[TaskEvent], object]) -> tuple[bool, list[TaskEvent]]:
        """Remove the first registration of ``listener``; return whether found, and events now unheard."""
        # By identity: ``==`` on a listener is user code, which must not run
        # under the lock (a bound method compares equal to a fresh one of
        # the same object and function, and is found by identity of both).
        listeners = list(self.callbacks)
        for i, registered in enumerate(listeners):
            if registered is listener or _same_method(registered, listener):
                del listeners[i]
                break
        else:
            return False, []
        self.callbacks = tuple(listeners)
        dropped: list[TaskEvent] = []
        if not listeners:  # nobody left to hand them to; the caller drops them after the lock
            dropped, self.pending = self.pending, []
        return True, dropped

    def append_locked(self, event: TaskEvent) -> bool:
        """Keep ``event`` for the next flush; True if the caller must post that flush."""
        self.pending.append(event)
        if self.posted:
            return False
        # One flush per burst of events, like the bridge's drains.
        self.posted = True
        return True

    def take_locked(self) -> list[TaskEvent]:
        """The events waiting, in order; the next one appended needs a new flush."""
        events, self.pending = self.pending, []
        self.posted = False
        return events

    def dispatch(self, events: list[TaskEvent]) -> None:
        """Call the listeners with ``events``. Loop thread, no lock held.

        A listener that raises is logged and the others still run: an
        observer never breaks the queue.
        """
        for event in events:
            # Read anew for every event, and checked again before each call
            # once it changed: a listener removed by another listener (or by
            # itself) is not called again, not even for the rest of a batch.
            listeners = self.callbacks
            for listener in listeners:
                if self.callbacks is not listeners and not any(x is listener for x in self.callbacks):
                    continue
                try:
                    listener(event)
                except Exception:
                    logger.exception("event listener %r raised on %r; it stays registered", listener, event)


def _same_method(a: object, b: object) -> bool:
    # Bound methods are made anew at each attribute access: equal when both
    # their object and their function are the same (compared by identity).
    # A builtin's bound method (``events.append``) has no __func__: the
    # same when its object is, and its name (a str) equal.
    self_a, self_b = getattr(a, "__self__", None), getattr(b, "__self__", None)
    if self_a is None or self_a is not self_b:
        return False
    if type(a) is type(b) is types.BuiltinMethodType:
        return a.__name__ == b.__name__
    return getattr(a, "__func__", None) is getattr(b, "__func__", None) is not None
