"""Events: every state change of every task, for listeners that must not poll."""

from __future__ import annotations

import enum
from typing import Any, NamedTuple

__all__ = ["EventKind", "TaskEvent"]


class EventKind(enum.Enum):
    """What happened to a task.

    ``SUBMITTED`` (accepted into the queue), ``STARTED`` (an attempt began),
    ``RETRY_SCHEDULED`` (an attempt failed and another comes after ``delay``),
    the three ends ``COMPLETED``, ``FAILED`` and ``CANCELLED``, and the two
    ways a stored result goes: ``EXPIRED`` (its ttl passed) and ``EVICTED``
    (``max_results`` made room for a newer one).
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
