"""Durable tasks: the scheduler of a queue with a journal, and what a durable task must be.

``JournaledScheduler`` is the scheduler with a journal (see ``_journal``): each
state change of a durable task is handed to the journal's writer in the
critical section that makes it, so the journal sees them in the scheduler's
order, and a queue without a journal pays nothing (it has a plain
``Scheduler``). A durable task's handler is named by its import path and its
arguments are pickled at submit, before anything changes.

The guarantee is at least once: a task acknowledged to its submitter (its
row committed) runs to an end, here or after a restart; a task that was
running when the process died runs again, with the next attempt number.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Hashable
from itertools import count
from typing import Any

from ._errors import CallError
from ._journal import NO_DUE, Spec, SQLiteJournal, StoredResult, dump_id, dump_spec
from ._scheduler import Scheduler
from ._state import CANCELLED, RUNNING
from ._store import ResultStore
from ._task import Record, Task, TaskResult, TaskStatus
from ._validate import is_coroutine_function

__all__ = ["JournaledScheduler", "JournaledStore", "handler_path", "pickled_spec", "resolve"]

_new_tuple = tuple.__new__  # a NamedTuple without its Python-level __new__
# Ids are generated this many ahead of what the journal has reserved.
_ID_BLOCK = 1024
# Each status's value, looked up: an Enum's .value is a Python-level property.
_VALUE = {status: status.value for status in TaskStatus}
Row = tuple[str, bytearray]  # a durable task's handler path and pickled spec, as _queue makes them
Staged = tuple[Row, Callable[[BaseException | None], object] | None]


def handler_path(fn: Callable[..., Any]) -> str:
    """``module:qualname`` of a module-level function or class; TypeError for anything else."""
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if inspect.ismethod(fn) or not (inspect.isfunction(fn) or isinstance(fn, type)) or not module or not qualname:
        raise TypeError(
            f"a durable task's handler must be a module-level function (found again by its import path after a "
            f"restart), got {fn!r}; use a function defined at the top of a module, or submit with durable=False"
        )
    if "<locals>" in qualname or "<lambda>" in qualname or module == "__main__":
        raise TypeError(
            f"a durable task's handler must be importable after a restart, got {module}.{qualname} (a lambda, a "
            "nested function or one of __main__); move it to the top of an importable module, or durable=False"
        )
    if resolve(f"{module}:{qualname}") is not fn:
        raise TypeError(f"{module}.{qualname} does not name {fn!r} when imported; durable tasks need the real name")
    return f"{module}:{qualname}"


def resolve(path: str) -> Any:
    """The object at ``module:qualname``; ImportError or AttributeError if it is not there."""
    module, _, qualname = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def pickled_spec(spec: Spec) -> bytearray:
    """A durable task's arguments and options as stored (see ``dump_spec``); TypeError naming what would not pickle."""
    try:
        return dump_spec(spec)
    except Exception as exc:
        raise TypeError(
            f"a durable task's arguments must pickle (they are written to the journal, with its key), but they do "
            f"not: {exc!r}"
        ) from None


def _failing(message: str) -> Callable[..., Any]:
    # The handler of a journaled task that cannot run any more: its attempt fails with this.
    def handler(*args: Any, **kwargs: Any) -> Any:
        raise CallError(message)

    return handler


class JournaledStore(ResultStore):
    """A ``ResultStore`` that drops a durable task's result from the journal too, when it drops it.

    Expired, evicted or forgotten, a result leaves the journal with the
    store, so the journal holds no more results than the store (and stops
    growing with the tasks that ever ran). Under the scheduler's lock, as
    every ``ResultStore`` method.
    """

    __slots__ = ("durable", "journal")

    def __init__(self, journal: SQLiteJournal, ttl: float, max_results: int, **kwargs: Any) -> None:
        super().__init__(ttl, max_results, **kwargs)
        self.journal = journal
        # Ids of the stored results that are in the journal, each with its key there.
        self.durable: dict[Hashable, int | bytes] = {}

    def discard(self, task_id: Hashable) -> TaskResult[Any] | None:
        result = super().discard(task_id)
        if result is not None and self.durable:
            self._forget(task_id)
        return result

    def clear(self) -> None:
        for key in self.durable.values():
            self.journal.forget(key)
        self.durable = {}
        super().clear()

    def _pop_front(self) -> TaskResult[Any] | None:
        result = super()._pop_front()
        if result is not None and self.durable:
            self._forget(result.task_id)
        return result

    def _forget(self, task_id: Hashable) -> None:
        key = self.durable.pop(task_id, None)
        if key is not None:
            self.journal.forget(key)


class JournaledScheduler(Scheduler):
    """A ``Scheduler`` that writes what happens to durable tasks to a journal. See the module docstring."""

    def __init__(self, journal: SQLiteJournal, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.journal = journal
        # Set by a submit just before add(): the row of a durable task and its
        # acknowledgement, taken by _accept_locked under the lock.
        self._staged: dict[Record, Staged] = {}
        # Ids of the durable tasks that are live (so that their end is
        # written), each with its key in the journal (made once).
        self._durable: dict[Hashable, int | bytes] = {}
        # Shutting down: cancelling a durable task keeps its row, so that it
        # runs after the next start (a graceful restart loses nothing either).
        self._keeping = False
        self._id_end = 0
        self._bounded_reruns = journal.bounded_reruns
        self._ttl = self._store.ttl
        if not isinstance(self._store, JournaledStore) or self._store.journal is not journal:
            raise TypeError("a JournaledScheduler needs a JournaledStore of its journal")
        self._results: JournaledStore = self._store  # the same, typed as it is here

    # ------------------------------------------------------------------ recovery

    def restore(self) -> int:
        """Take the journal, and put its tasks and results back; before start(). Returns the tasks restored."""
        recovered = self.journal.open(_ID_BLOCK)
        # Handlers are imported before the lock is taken: an import runs user code.
        handlers: dict[str, tuple[Callable[..., Any], bool]] = {}
        for row in recovered.tasks:
            if row.handler not in handlers:
                try:
                    fn = resolve(row.handler)
                except (ImportError, AttributeError) as exc:
                    fn = _failing(f"the handler {row.handler} of a journaled task cannot be imported any more: {exc!r}")
                handlers[row.handler] = (fn, is_coroutine_function(fn))
        now, wall = self.clock(), self.wall()
        store = self._store
        with self.lock:
            self._auto_ids = count(recovered.next_id)
            self._id_end = recovered.next_id + _ID_BLOCK
            # Oldest first, each stored as if it came that much before now:
            # the store keeps its expiry order, and each result its ttl left.
            for stored in sorted(recovered.results, key=lambda r: r.expires):
                left = stored.expires - wall
                if left <= 0:
                    self.journal.forget(dump_id(stored.task_id))
                    continue
                status = TaskStatus(stored.status)
                ok = status is TaskStatus.COMPLETED
                error = None if ok or not isinstance(stored.outcome, BaseException) else stored.outcome
                result = TaskResult(
                    stored.task_id, status, stored.outcome if ok else None, error, stored.retries, stored.duration_ms
                )
                self._results.durable[stored.task_id] = dump_id(stored.task_id)  # before add(): it may evict this one
                self._dropped.extend(store.add(result, now - (self._ttl - left)))
            for row in recovered.tasks:
                fn, is_coro = handlers[row.handler]
                if row.unreadable is not None:
                    why = f"the arguments of a journaled task cannot be read any more: {row.unreadable!r}"
                    fn, is_coro = _failing(why), False
                task = Task(
                    row.task_id, fn, row.args, row.kwargs, is_coro, row.priority, row.max_retries, row.timeout,
                    row.keep, row.key,
                )  # fmt: skip
                # Attempts made before the process ended count: the next is the one after.
                task._attempt = row.attempts
                task._retry_count = row.retries
                if row.attempts:
                    task._started_at = now  # durations run from here: the first start's time is gone
                due = None if row.due is None or row.due <= wall else now + (row.due - wall)
                if task._key is not None:
                    self._use_keys_locked(now)
                self._durable[row.task_id] = dump_id(row.task_id)
                self._accept_locked(task, None, due)
            dropped = self._take_dropped_locked()
        del dropped
        return len(recovered.tasks)

    def stage(self, task: Record, row: Row, ack: Callable[[BaseException | None], object] | None) -> None:
        """Give the row of durable ``task`` (handler path, spec) for add() to journal. Any thread, before add()."""
        self._staged[task] = (row, ack)

    def unstage(self, task: Record) -> None:
        """add() refused ``task``: forget its row. Any thread."""
        self._staged.pop(task, None)

    def add_durable(
        self,
        task: Record,
        loop: Any,
        block: bool,
        due: float | None,
        row: Row,
        ack: Callable[[BaseException | None], object] | None,
    ) -> None:
        """``add()`` a durable task with its journal row (see ``stage``); raises as add() does, row forgotten."""
        self._staged[task] = (row, ack)  # stage(), without its call: once per durable task
        try:
            self.add(task, loop, block, due)
        except BaseException:
            self.unstage(task)
            raise

    def barrier(self, done: Callable[[BaseException | None], object]) -> None:
        """Call ``done(error)`` once everything journaled before is on disk. Any thread."""
        self.journal.barrier(done)

    def hold_slot(self) -> None:
        # finish() kept the slot of a task whose end it journaled (bounded_reruns):
        # it goes where a freed slot goes once that end is on disk, or once
        # the journal failed (every waiter hears of it: see SQLiteJournal._fail).
        self.journal.barrier(self._slot_written)

    def _slot_written(self, error: BaseException | None) -> None:  # the writer thread, or inline if failed
        self.at_loop.soon(self._pass_written_slot)

    def _pass_written_slot(self) -> None:  # loop thread
        with self.lock:
            passed = self._pass_slots_locked(1)
        self._after_pass(passed)

    # ------------------------------------------------------- the journaled changes

    def _accept_locked(self, task: Record, loop: Any, due: float | None = None) -> None:
        super()._accept_locked(task, loop, due)
        staged = self._staged.pop(task, None) if self._staged else None
        if staged is None:
            return
        (handler, spec), ack = staged
        task_id = task._id
        if type(task_id) is int and task_id >= self._id_end - _ID_BLOCK // 2:
            # Reserved ahead, so the reservation is on disk before an id past it is.
            self._id_end += _ID_BLOCK
            self.journal.reserve_ids(self._id_end)
        key = self._durable[task_id] = dump_id(task_id)
        wall_due = NO_DUE if due is None else self.wall() + (due - self.clock())
        self.journal.add((key, handler, spec, wall_due, 0, 0), ack)  # the columns of _journal.TASK_COLUMNS

    def _begin_locked(self, task: Record, now: float | None = None) -> int:
        attempt = super()._begin_locked(task, now)
        if self._durable and (key := self._durable.get(task._id)) is not None:
            self.journal.state(key, attempt, NO_DUE, task._retry_count)
        return attempt

    def _fail_locked(self, task: Record, error: BaseException, now: float) -> float:
        delay = super()._fail_locked(task, error, now)
        if delay >= 0 and (key := self._durable.get(task._id)) is not None:
            self.journal.state(key, task._attempt, self.wall() + delay, task._retry_count)
        return delay

    def _terminal_locked(
        self, task: Record, status: TaskStatus, value: Any, error: BaseException | None, now: float
    ) -> TaskResult[Any]:
        running = task._status is RUNNING  # its handler holds a slot, which finish() frees
        result = super()._terminal_locked(task, status, value, error, now)
        task_id = task._id
        key = self._durable.pop(task_id, None) if self._durable else None
        if key is not None:
            if status is CANCELLED and self._keeping:
                return result  # shutting down: the row stays, and runs after the next start
            if running and self._bounded_reruns:
                self._ends_to_write.add(task)  # finish() keeps its slot until this end is on disk
            kept = None
            if task._keep and self._ttl > 0:
                outcome = value if status is TaskStatus.COMPLETED else error
                expires = self.wall() + self._ttl
                kept = _new_tuple(
                    StoredResult,
                    (task_id, _VALUE[status], outcome, result.retry_count, result.duration_ms, expires),
                )
            self.journal.end(key, kept)
            if kept is not None:
                self._results.durable[task_id] = key
        return result

    def stop_accepting(self) -> bool:
        with self.lock:
            self._keeping = True
        return super().stop_accepting()
