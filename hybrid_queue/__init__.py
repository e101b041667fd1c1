"""hybrid_queue: one in-process priority task queue for coroutine and sync handlers.

Async code awaits handles from ``await queue.submit(...)``; sync code, in any
thread, calls ``queue.submit_blocking(...)`` and gets a
``concurrent.futures.Future``. Both feed one priority heap.
"""

import logging as _logging

from ._clock import Clock as Clock
from ._context import TaskContext as TaskContext
from ._context import current_task as current_task
from ._errors import CallError as CallError
from ._errors import DuplicateTaskError as DuplicateTaskError
from ._errors import QueueError as QueueError
from ._errors import QueueFull as QueueFull
from ._errors import QueueShutDown as QueueShutDown
from ._errors import UnknownTaskError as UnknownTaskError
from ._events import EventKind as EventKind
from ._events import TaskEvent as TaskEvent
from ._interrupt import TaskInterrupted as TaskInterrupted
from ._journal import JournalError as JournalError
from ._journal import SQLiteJournal as SQLiteJournal
from ._periodic import Schedule as Schedule
from ._queue import HybridQueue as HybridQueue
from ._retry import RetryPolicy as RetryPolicy
from ._stats import KeyStats as KeyStats
from ._stats import QueueStats as QueueStats
from ._task import TaskFuture as TaskFuture
from ._task import TaskHandle as TaskHandle
from ._task import TaskId as TaskId
from ._task import TaskResult as TaskResult
from ._task import TaskStatus as TaskStatus

__version__ = "0.1.0"

# As the logging HOWTO advises libraries: records go nowhere until the
# program configures logging, instead of to logging.lastResort's stderr.
_logging.getLogger("hybrid_queue").addHandler(_logging.NullHandler())

__all__ = (
    "CallError",
    "Clock",
    "DuplicateTaskError",
    "EventKind",
    "HybridQueue",
    "JournalError",
    "KeyStats",
    "QueueError",
    "QueueFull",
    "QueueShutDown",
    "QueueStats",
    "RetryPolicy",
    "SQLiteJournal",
    "Schedule",
    "TaskContext",
    "TaskEvent",
    "TaskFuture",
    "TaskHandle",
    "TaskId",
    "TaskInterrupted",
    "TaskResult",
    "TaskStatus",
    "UnknownTaskError",
    "__version__",
    "current_task",
)
