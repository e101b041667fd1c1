"""Calls sent to an executor in other processes or on other machines, and what comes back.

A thread pool runs the queue's own chain of sync tasks (see _workers). Any
other executor (a process pool, loky, a Dask cluster) is given a RemoteCall,
which runs the handler where the executor runs it and returns the outcome as
a value. So an exception on that executor's future is the executor's own (a
call or result that could not be pickled, a worker that died) and is never
retried, while the handler's exceptions come back as values and are retried
as the policy says.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import itertools
import pickle
import traceback
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._task import Record

__all__ = ["Raised", "RemoteCall", "RemoteTraceback", "Returned", "executor_failure", "refusal_advice"]


class RemoteCall:
    """What the queue submits to an executor that is not a thread pool: the handler and its arguments.

    Run where the executor runs it (another process, another machine), it
    returns the handler's outcome as a value, :class:`Returned` or
    :class:`Raised`, so that the only exceptions its future can carry are
    the executor's own: a call or result that could not be pickled, a
    worker that died. Those are not retried; a handler's exception is.

    ``__name__`` is the handler's, so that Dask names its tasks after the
    handler; ``__dask_tokenize__`` gives every submission a token of its
    own, so that Dask never merges two identical submissions into one task
    (whatever ``pure`` says), and never hashes the arguments to find one.
    """

    __slots__ = ("__name__", "args", "fn", "kwargs", "token")

    _serial = itertools.count()
    _process = uuid.uuid4().hex  # with the serial: unique across processes and runs

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)
        self.token = f"{self._process}-{next(self._serial)}"

    def __dask_tokenize__(self) -> str:
        return self.token

    def __call__(self) -> Returned | Raised:
        try:
            value = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:  # the task's failure, carried back as a value
            return Raised(exc)
        if inspect.iscoroutine(value):
            value.close()
            return Raised(
                TypeError(
                    f"the sync handler {self.__name__} returned a coroutine; "
                    "submit the async function itself so it runs on the event loop"
                )
            )
        # Raises, when the value cannot be sent back: the executor's future
        # then fails, which the queue reports and does not retry.
        return Returned.packed(value)


class Returned:
    """A handler's return value, back from an executor.

    Made by ``packed``, where the handler ran: the value is pickled there
    once and unpickled once to check it, so that a value that pickles but
    cannot be rebuilt (an exception whose ``__init__`` takes arguments it does
    not pass on, say), or does not pickle at all, fails its own task at once.
    Found later, where the executor sends or unpickles it, it would break a
    whole ProcessPoolExecutor, or leave a Dask task that never delivers.
    """

    __slots__ = ("_data", "value")

    def __init__(self, value: Any, data: bytes | None = None) -> None:
        self.value = value
        self._data = data

    @classmethod
    def packed(cls, value: Any) -> Returned:
        """The outcome for ``value``, checked; raises TypeError when it cannot make the trip back."""
        try:
            data = _round_trip(value)
        except Exception as exc:
            raise TypeError(
                f"the handler's result ({type(value).__qualname__}) cannot be pickled and unpickled to send "
                f"it back ({exc!r}); return a value that survives a pickle round trip"
            ) from None
        return cls(value, data)

    def __reduce__(self) -> tuple[Any, ...]:
        data = self._data if self._data is not None else pickle.dumps(self.value, pickle.HIGHEST_PROTOCOL)
        return (_rebuild_returned, (data,))


class Raised:
    """A handler's exception, back from an executor, with its traceback as text.

    Pickled with a round trip tried first: an exception that pickles but
    cannot be rebuilt (an ``__init__`` with arguments it does not pass to
    ``Exception``) would otherwise fail where the executor unpickles it,
    which breaks a whole ProcessPoolExecutor. It is replaced by a
    RuntimeError naming it.
    """

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __reduce__(self) -> tuple[Any, ...]:
        error = self.error
        text = "".join(traceback.format_exception(error))
        try:
            data = _round_trip(error)
        except Exception as exc:
            unsendable = f"the handler raised {error!r}, which cannot be pickled to send it back ({exc!r})"
            data = pickle.dumps(RuntimeError(unsendable), pickle.HIGHEST_PROTOCOL)
        return (_rebuild_raised, (data, text))


class RemoteTraceback(Exception):
    """The traceback of a handler's exception, as text, from where it ran."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _round_trip(obj: Any) -> bytes:
    # ``obj`` pickled, once the bytes are known to unpickle here: what the
    # other side will do with them, where a failure costs more.
    data = pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    pickle.loads(data)
    return data


def _rebuild_returned(data: bytes) -> Returned:
    return Returned(pickle.loads(data))


def _rebuild_raised(data: bytes, text: str) -> Raised:
    error: BaseException = pickle.loads(data)
    error.__cause__ = RemoteTraceback(f"\n{text}")
    return Raised(error)


def executor_failure(task: Record, failure: BaseException) -> Exception:
    kind = type(failure)
    if isinstance(failure, concurrent.futures.BrokenExecutor):
        return RuntimeError(
            f"the executor broke while it ran task {task._id!r} ({failure!r}): a worker process died "
            "(killed, out of memory, or the handler ended it); the task is not retried. A pool the queue "
            "owns is replaced; one you passed in stays broken: replace it, or pass a factory of pools"
        )
    if kind.__name__ == "KilledWorker" and kind.__module__.startswith("distributed"):
        return RuntimeError(
            f"Dask gave up on task {task._id!r}: the workers that ran it died ({failure}); "
            "raise distributed.scheduler.allowed-failures to let Dask try it on more workers"
        )
    return RuntimeError(
        f"task {task._id!r} could not be sent to its executor or its result sent back ({failure!r}); "
        "handlers, their arguments and their results must be picklable for an executor in other processes"
    )


def refusal_advice(exc: BaseException) -> str:
    if isinstance(exc, concurrent.futures.BrokenExecutor):
        return "the executor is broken: pass a working one, or a factory of executors that the queue replaces"
    if isinstance(exc, (TypeError, pickle.PicklingError, AttributeError)):
        return "handlers and their arguments must be picklable for this executor"
    return "do not shut down an executor while a HybridQueue still uses it"
