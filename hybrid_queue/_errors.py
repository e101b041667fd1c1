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
    """Raised for a task id the queue does not know: never submitted, or its result is gone.

    Gone: expired (``result_ttl``), evicted (``max_results``,
    ``max_result_bytes``) or dropped by ``forget``.
    """

    # KeyError.__str__ shows the repr of its argument; keep the message readable.
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# ------------------------------------------------------- messages the queue refuses with


def refusal(
    why: str, task_id: object, max_queue_size: int, forked: bool, accepting: bool, batch: int = 1
) -> QueueError:
    """The error for a refused submit: ``why`` is "closed", "duplicate" or "full". Built after the lock.

    ``forked``: the queue is a forked child's copy; ``accepting``: it was not
    shut down (so "closed" means its loop ended without shutdown).
    """
    if why == "closed":
        if forked:
            return QueueShutDown(
                "this HybridQueue was started in the parent process and cannot run tasks in a forked "
                "child (its event loop and threads are the parent's); make a new HybridQueue in the child"
            )
        if accepting:
            return QueueShutDown(
                "the queue's event loop is closed (it ended without shutdown()); submit to a new queue"
            )
        return QueueShutDown("the queue has begun shutting down and accepts no new tasks; submit to a new queue")
    if why == "duplicate":
        return DuplicateTaskError(
            f"task_id {task_id!r} is already in use by a live task or a stored "
            "result; pass a new task_id, or forget() the old result first"
        )
    n = max_queue_size
    if batch > 1:
        return QueueFull(
            f"a batch of {batch} tasks does not fit in the queue's room for {n} pending tasks now; "
            "await submit_many() on the queue's loop to wait for room, or raise max_queue_size"
        )
    return QueueFull(
        f"the queue holds its maximum of {n} pending task{'s' if n != 1 else ''}; "
        "await submit() on the queue's loop, or submit_blocking() from a thread "
        "without an event loop, to wait for room, or raise max_queue_size"
    )


def unknown_task(task_id: object) -> UnknownTaskError:
    """The error for an id the queue does not know (never submitted, or its result is gone)."""
    return UnknownTaskError(
        f"no task with id {task_id!r}: it was never submitted, or its result expired or "
        "was evicted (raise result_ttl or max_results to keep results longer)"
    )
