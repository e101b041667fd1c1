"""Exceptions raised by hybrid_queue.

Every exception shares the base :class:`QueueError`, and each also derives from
the built-in exception a caller would naturally catch for that mistake, so
``except KeyError`` around a lookup or ``except ValueError`` around a submit
keeps working.
"""

from __future__ import annotations

__all__ = [
    "CallError",
    "DuplicateTaskError",
    "QueueError",
    "QueueFull",
    "QueueShutDown",
    "UnknownTaskError",
]


class QueueError(Exception):
    """Base class of every exception hybrid_queue raises on purpose."""


class QueueShutDown(QueueError, RuntimeError):
    """Raised when a task is submitted after the queue's shutdown began."""


class QueueFull(QueueError):
    """Raised by ``submit_nowait`` when a bounded queue has no room."""


class DuplicateTaskError(QueueError, ValueError):
    """Raised when a ``task_id`` is still live or still has a stored result."""


class CallError(QueueError, TypeError):
    """Raised (as a task's failure) when its handler cannot be called as it was submitted; never retried.

    The arguments do not bind to the handler's parameters (a missing or
    unexpected argument, a misspelt option such as ``prority=3`` that reached
    the handler as a keyword), or a sync handler returned a coroutine or an
    async generator. The original error, if any, is its ``__cause__``.
    """


class UnknownTaskError(QueueError, KeyError):
    """Raised when a task id was never submitted or its result was evicted."""

    # KeyError.__str__ shows the repr of its argument; keep the message readable.
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
