"""Sync handlers on a Dask cluster: ``HybridQueue(executor=dask_executor(client))``.

Needs ``distributed`` (``pip install hybrid_queue[dask]``); the rest of
hybrid_queue never imports it. ::

    from distributed import Client
    from hybrid_queue import HybridQueue
    from hybrid_queue.dask import dask_executor

    client = Client("tcp://scheduler:8786")
    async with HybridQueue(workers=16, executor=dask_executor(client)) as q:
        handle = await q.submit(crunch, chunk)   # runs on some Dask worker

What ``client.get_executor()`` alone would get wrong, and this executor does not:

- **Every submission runs.** Dask names a task after its function and
  arguments unless told ``pure=False``, so two identical submissions would
  become one task that runs once. Here every submission is its own task.
- **Handler keyword arguments stay the handler's.** ``Client.submit`` takes
  ``key=``, ``priority=``, ``retries=``, ``workers=`` and more for itself; here
  they reach the handler.
- **A result that cannot be sent back fails its task.** Dask keeps a result
  on the worker until someone fetches it, and one that cannot be serialized
  then is never delivered: the task would hang. Here the worker serializes
  the result once as soon as the handler returns, and a failure ends the task
  with a TypeError saying so. (That costs one extra serialization per result.)

The handler, its arguments and its result must be serializable by Dask
(pickle, or cloudpickle for lambdas and local functions), and hybrid_queue
must be importable on the workers: it is pure Python without dependencies
(``pip install hybrid_queue`` there, or ``client.upload_file``).

A worker that dies while it runs a task is Dask's to handle: the scheduler
runs the task again elsewhere, up to its ``distributed.scheduler.allowed-failures``
setting (3 by default), then fails it with ``distributed.KilledWorker``.
"""

from __future__ import annotations

import concurrent.futures
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import distributed
from dask.utils import funcname
from distributed.protocol.serialize import serialize

from ._remote import RemoteCall

__all__ = ["DaskExecutor", "dask_executor"]

T = TypeVar("T")

# What DaskExecutor passes on to Client.submit for every task. Others are
# its own (pure, key: every submission is a new task), meaningless for one
# call (actor, fifo_timeout), or the queue's to decide: retries (the queue's
# RetryPolicy retries a failed handler; Dask's allowed-failures setting, a
# task whose worker died).
SUBMIT_OPTIONS = frozenset({"workers", "resources", "allow_other_workers", "priority"})


class DaskExecutor(concurrent.futures.Executor):
    """A ``concurrent.futures.Executor`` that runs each call as its own task on a Dask cluster.

    Make one with :func:`dask_executor`. ``submit`` may be called from any
    thread, including an event loop's (it does not wait for the cluster);
    ``shutdown`` from any thread but the client's own event loop thread.
    """

    def __init__(self, client: distributed.Client, *, owns_client: bool, options: Mapping[str, Any]) -> None:
        self._client = client
        self._owns_client = owns_client
        self._options = dict(options)
        # Dask's own executor does the bookkeeping of each call: its future
        # stays PENDING until the task ends, so cancel() works as long as the
        # task does and releases the task, and each result is fetched on the
        # client's event loop, so a result that Dask must recompute (its
        # worker died) holds up no other. pure=False: see the module.
        self._inner = client.get_executor(pure=False)  # type: ignore[no-untyped-call]
        # Futures of calls not finished yet, for shutdown(); weak, so that a
        # finished call is not kept alive by the executor.
        self._live: weakref.WeakSet[concurrent.futures.Future[Any]] = weakref.WeakSet()
        self._lock = threading.Lock()  # orders submit() against shutdown()
        self._shutdown = False

    @property
    def client(self) -> distributed.Client:
        """The Dask client that tasks are submitted through."""
        return self._client

    def __repr__(self) -> str:
        return f"<DaskExecutor {self._client!r}{' shut down' if self._shutdown else ''}>"

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        """Run ``fn(*args, **kwargs)`` as a new Dask task; return a ``concurrent.futures.Future`` of it.

        Cancelling the future releases the Dask task: one still waiting for
        a worker never runs; one already running cannot be interrupted, it
        runs to its end on its worker and its result is dropped.

        Raises RuntimeError after ``shutdown``, and TypeError when the
        handler or its arguments cannot be serialized. Any thread.
        """
        # The queue's own calls carry their keyword arguments and check their
        # results themselves; anything else is wrapped to do both.
        call: Callable[..., Any] = fn if isinstance(fn, RemoteCall) and not kwargs else _Call(fn, kwargs)
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit to a DaskExecutor after shutdown(); make a new one")
            try:
                future: concurrent.futures.Future[T] = self._inner.submit(call, *args, **self._options)
            except TypeError as exc:  # distributed's way of saying "could not serialize"
                raise TypeError(
                    f"could not send {call.__name__} and its arguments to the Dask cluster ({exc}); the handler, "
                    "its arguments and keyword arguments must be picklable (or cloudpicklable)"
                ) from exc
            self._live.add(future)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse further submits; then, as ``concurrent.futures`` executors do:

        ``cancel_futures=True`` cancels every task not finished (from the
        client, Dask cannot tell a task that waits for a worker from one that
        runs, so both are released; a running one ends on its worker
        unobserved); ``wait=True`` blocks until every task submitted has
        finished or was cancelled. A client that :func:`dask_executor`
        connected itself is closed. Idempotent. Any thread but the client's
        event loop thread.
        """
        with self._lock:
            first = not self._shutdown
            self._shutdown = True
            live = [f for f in self._live if not f.done()]
        if cancel_futures:
            for future in live:
                future.cancel()
        if wait and live:
            concurrent.futures.wait(live)
        if first and self._owns_client:
            self._client.close()  # type: ignore[no-untyped-call]


def dask_executor(client_or_address: distributed.Client | str | None = None, **submit_options: Any) -> DaskExecutor:
    """An executor for ``HybridQueue(executor=...)`` that runs sync handlers on a Dask cluster.

    ``client_or_address``: a ``distributed.Client`` (used as it is, never
    closed here); a scheduler address such as ``"tcp://10.0.0.5:8786"`` (a
    new client connects to it now, blocking, and is closed by the executor's
    ``shutdown``); or None for the current default client (the one made last
    in this process).

    ``submit_options`` go to every ``Client.submit``: ``workers``,
    ``resources``, ``allow_other_workers`` and ``priority`` (Dask's, among
    the cluster's tasks; the queue's priority decides what is submitted
    first). Retries are the queue's (its ``RetryPolicy``), not Dask's.

    Raises TypeError for another option, ValueError when there is no default
    client. Call it from a thread that is not running an event loop when it
    has to connect (an address); otherwise from any thread.
    """
    unknown = sorted(set(submit_options) - SUBMIT_OPTIONS)
    if unknown:
        raise TypeError(
            f"dask_executor() got unsupported option(s) {', '.join(unknown)}; "
            f"it passes only {', '.join(sorted(SUBMIT_OPTIONS))} to Client.submit"
        )
    if isinstance(client_or_address, distributed.Client):
        return DaskExecutor(client_or_address, owns_client=False, options=submit_options)
    if isinstance(client_or_address, str):
        return DaskExecutor(
            distributed.Client(client_or_address),  # type: ignore[no-untyped-call]
            owns_client=True,
            options=submit_options,
        )
    if client_or_address is None:
        try:
            client = distributed.default_client()  # type: ignore[no-untyped-call]
        except ValueError:
            raise ValueError(
                "dask_executor() found no Dask client in this process; pass a distributed.Client or a scheduler address"
            ) from None
        return DaskExecutor(client, owns_client=False, options=submit_options)
    raise TypeError(
        f"dask_executor() takes a distributed.Client, a scheduler address or None, got {client_or_address!r}"
    )


class _Call:
    """What a Dask task runs: the handler with its keyword arguments bound, and its result checked.

    Keyword arguments travel inside, so that none of them is taken by
    ``Client.submit`` as an option of its own. Pickled by reference: the
    workers import it from hybrid_queue.dask.
    """

    __slots__ = ("__name__", "fn", "kwargs")

    def __init__(self, fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
        self.fn = fn
        self.kwargs = kwargs
        # Dask names tasks after ``__name__``: keep the handler's, for its dashboard and logs.
        self.__name__ = funcname(fn)

    def __call__(self, *args: Any) -> Any:
        # On the Dask worker.
        value = self.fn(*args, **self.kwargs)
        try:
            # Dask would only find out when the client fetches the result,
            # and then never deliver it: find out now, and fail the task.
            serialize(value, on_error="raise")
        except Exception as exc:
            raise TypeError(
                f"the result of {self.__name__} could not be serialized to send it back from the Dask "
                f"worker ({type(value).__qualname__}: {exc}); return a picklable value"
            ) from None
        return value
