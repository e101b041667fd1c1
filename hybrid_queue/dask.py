"""Sync handlers on a Dask cluster: ``HybridQueue(executor=dask_executor(client))``.

Needs ``distributed`` (``pip install hybrid_queue[dask]``); the rest of
hybrid_queue never imports it. ::

    from distributed import Client
    from hybrid_queue import HybridQueue
    from hybrid_queue.dask import dask_executor

    client = Client("tcp://scheduler:8786")
    async with HybridQueue(workers=16, executor=dask_executor(client)) as q:
        handle = await q.submit(crunch, chunk)   # runs on some Dask worker

What this executor does that ``client.get_executor()`` does not:

- **Every submission runs.** Dask names a task after its function and
  arguments unless told ``pure=False``, so two identical submissions would
  become one task that runs once. Here every submission is its own task.
- **Handler keyword arguments stay the handler's.** ``Client.submit`` takes
  ``key=``, ``priority=``, ``retries=``, ``workers=`` and more for itself; here
  they reach the handler.
- **Calls reach the scheduler in batches.** The calls submitted in one turn
  of the client's event loop are sent as one graph, which the scheduler
  takes in one update of its state, where it would make one per call. Each
  call is pickled on its own as it is submitted, so one that cannot be
  pickled fails its own ``submit``, and the scheduler never unpickles a
  handler or its arguments (one it could not unpickle would fail the whole
  graph it came in).
- **A result that cannot be sent back fails its task.** Dask keeps a result
  on the worker until someone fetches it, and one that cannot be serialized
  then is never delivered: the task would hang. Here the worker serializes
  the result once as soon as the handler returns, and a failure ends the task
  with a TypeError saying so. (That costs one extra serialization per result.)

Results are fetched one task at a time, through the client, which merges the
fetches that overlap into one request.

The handler, its arguments and its result must be serializable by Dask
(pickle, or cloudpickle for lambdas and local functions), and hybrid_queue
must be importable on the workers and the scheduler: it is pure Python
without dependencies (``pip install hybrid_queue`` there).

A worker that dies while it runs a task is Dask's to handle: the scheduler
runs the task again elsewhere, up to its ``distributed.scheduler.allowed-failures``
setting (3 by default), then fails it with ``distributed.KilledWorker``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
import uuid
import weakref
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import distributed
from dask.utils import funcname
from distributed.protocol.pickle import dumps, loads
from distributed.protocol.serialize import serialize

from ._remote import RemoteCall

__all__ = ["DaskExecutor", "dask_executor"]

T = TypeVar("T")

# What DaskExecutor passes on to Client.map for every task. Others are its
# own (pure, key: every submission is a new task), meaningless for one call
# (actor, fifo_timeout, batch_size), or the queue's to decide: retries (the
# queue's RetryPolicy retries a failed handler; Dask's allowed-failures
# setting, a task whose worker died).
SUBMIT_OPTIONS = frozenset({"workers", "resources", "allow_other_workers", "priority"})

# Client states in which a graph sent reaches the scheduler (Dask buffers it
# while connecting). In any other, it would be dropped without a word.
_SENDING = frozenset({"newly-created", "connecting", "running"})


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
        # Orders submit() against shutdown() and guards the outbox, which
        # any thread fills and the client's event loop empties. Invariant:
        # _send_posted is True exactly while a _send() is queued on that
        # loop, and that _send() takes every call in _outbox. (A loop that
        # has stopped for good drops what is queued on it: see submit().)
        self._lock = threading.Lock()
        self._shutdown = False
        self._outbox: list[tuple[str, bytes, concurrent.futures.Future[Any]]] = []
        self._send_posted = False
        # Futures of calls not finished yet, for shutdown(); weak, so that a
        # finished call is not kept alive by the executor.
        self._live: weakref.WeakSet[concurrent.futures.Future[Any]] = weakref.WeakSet()
        # The client's event loop only: the coroutines that wait for tasks,
        # kept from the collector until they end.
        self._waiting: set[asyncio.Task[None]] = set()

    @property
    def client(self) -> distributed.Client:
        """The Dask client that tasks are submitted through."""
        return self._client

    def __repr__(self) -> str:
        return f"<DaskExecutor {self._client!r}{' shut down' if self._shutdown else ''}>"

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        """Run ``fn(*args, **kwargs)`` as a new Dask task; return a ``concurrent.futures.Future`` of it.

        The call is pickled here; the calls submitted in one turn of the
        client's event loop reach the scheduler together, as one graph.

        Cancelling the future releases the Dask task: one the scheduler has
        not yet given to a worker never runs; one already running cannot be
        interrupted, it runs to its end on its worker and its result is
        dropped.

        Raises TypeError when the handler or its arguments cannot be
        pickled, RuntimeError after ``shutdown`` or once the client is
        closed. Any thread.
        """
        # The queue's own calls carry their arguments and check their
        # results themselves; anything else is wrapped to do both.
        call: _Call | RemoteCall
        call = fn if isinstance(fn, RemoteCall) and not (args or kwargs) else _Call(fn, args, kwargs)
        try:
            payload = dumps(call)  # type: ignore[no-untyped-call]
        except Exception as exc:
            raise TypeError(
                f"could not send {call.__name__} and its arguments to the Dask cluster ({exc!r}); the handler, "
                "its arguments and keyword arguments must be picklable (or cloudpicklable)"
            ) from exc
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit to a DaskExecutor after shutdown(); make a new one")
            if self._client.status not in _SENDING:
                # Its event loop may be gone, and with it any call queued there.
                raise RuntimeError(f"cannot submit to a DaskExecutor whose client is closed ({self._client!r})")
            self._outbox.append((f"{call.__name__}-{call.token}", payload, future))
            self._live.add(future)
            post = not self._send_posted
            self._send_posted = True
        if post:
            self._on_client_loop(self._send)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse further submits; then, as ``concurrent.futures`` executors do:

        ``cancel_futures=True`` cancels every task not finished (from the
        client, Dask cannot tell a task that waits for a worker from one that
        runs, so both are released; a running one ends on its worker
        unobserved); ``wait=True`` blocks until every task submitted has
        finished or was cancelled. A client that :func:`dask_executor`
        connected itself is closed then, which cancels whatever is still
        unfinished (with ``wait=False``). Idempotent. Any thread but the
        client's event loop thread.
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

    def _on_client_loop(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        loop = self._client.loop
        assert loop is not None, "a Client has its event loop from the start"
        loop.add_callback(fn, *args, **kwargs)

    # ---------------------------------------------- on the client's event loop

    def _send(self) -> None:
        with self._lock:
            batch, self._outbox = self._outbox, []
            self._send_posted = False
        keys, payloads, futures = [], [], []
        for key, payload, future in batch:
            if future.cancelled():
                # Cancelled before it was sent: it never runs. Notified, or
                # concurrent.futures.wait() would not count it as done.
                future.set_running_or_notify_cancel()
            else:
                keys.append(key)
                payloads.append(payload)
                futures.append(future)
        if not futures:
            return
        client = self._client
        if client.status not in _SENDING:
            # Closing: a graph sent now would be dropped, and its futures
            # would never end.
            for future in futures:
                _settle(future, exception=RuntimeError(f"the Dask client closed before the call was sent ({client!r})"))
            return
        try:
            # The payloads are bytes: nothing here can fail to serialize.
            tasks: list[distributed.Future[Any]] = client.map(_run, payloads, key=keys, pure=False, **self._options)
        except Exception as exc:  # an option Dask refuses, say
            for future in futures:
                _settle(future, exception=RuntimeError(f"Dask refused the call ({exc!r})"))
            return
        for task, future in zip(tasks, futures, strict=True):
            # The future's done callbacks are kept as long as the future is;
            # the task is reached through a holder emptied once the future is
            # settled, so that a future kept by its caller does not keep the
            # task's result on the cluster.
            holder = [task]
            future.add_done_callback(functools.partial(self._cancelled, holder=holder))
            waiting = asyncio.ensure_future(self._wait(task, future, holder))
            self._waiting.add(waiting)
            waiting.add_done_callback(self._waiting.discard)

    async def _wait(
        self, task: distributed.Future[Any], future: concurrent.futures.Future[Any], holder: list[Any]
    ) -> None:
        # As Dask's own executor waits: for the task to end, then for its
        # result, through the client's gather (which merges the fetches of
        # tasks that end together, and waits for a result lost with its
        # worker to be computed again).
        try:
            outcome = await task._result(raiseit=False)  # type: ignore[no-untyped-call]
            status = task.status
        except BaseException as exc:  # the connection failed, or the loop is closing
            holder.clear()
            _settle(future, exception=RuntimeError(f"lost track of Dask task {task.key!r} ({exc!r})"))
            if not isinstance(exc, Exception):
                raise
            return
        holder.clear()
        if status == "finished":
            _settle(future, result=outcome)
        elif status == "cancelled":
            future.cancel()  # _cancelled notifies its waiters
        else:
            _, error, traceback = outcome
            _settle(future, exception=error.with_traceback(traceback))

    # ----------------------------------------------------------- any thread

    def _cancelled(self, future: concurrent.futures.Future[Any], holder: list[Any]) -> None:
        # Done callback, in the thread that settled or cancelled the future.
        if not future.cancelled():
            return
        # Wakes concurrent.futures.wait() on it, which counts a cancelled
        # future as done only once it is notified.
        future.set_running_or_notify_cancel()
        try:
            task = holder.pop()
        except IndexError:  # the task ended first
            return
        if task.status != "cancelled":
            # Not Future.cancel(), which blocks its caller for a round trip.
            self._on_client_loop(self._client.cancel, [task], asynchronous=True)


def _settle(
    future: concurrent.futures.Future[Any], *, result: Any = None, exception: BaseException | None = None
) -> None:
    # Cancellation may have won the race from another thread; then
    # _cancelled has notified the future's waiters.
    try:
        if future.cancelled():
            return
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)
    except concurrent.futures.InvalidStateError:
        pass


def _run(payload: bytes) -> Any:
    """What every task runs, on a Dask worker: the call pickled in ``payload``."""
    call: _Call | RemoteCall = loads(payload)  # type: ignore[no-untyped-call]
    return call()


def dask_executor(client_or_address: distributed.Client | str | None = None, **submit_options: Any) -> DaskExecutor:
    """An executor for ``HybridQueue(executor=...)`` that runs sync handlers on a Dask cluster.

    ``client_or_address``: a ``distributed.Client`` (used as it is, never
    closed here); a scheduler address such as ``"tcp://10.0.0.5:8786"`` (a
    new client connects to it now, blocking, and is closed by the executor's
    ``shutdown``); or None for the current default client (the one made last
    in this process).

    ``submit_options`` go to ``Client.map`` for every task: ``workers``,
    ``resources``, ``allow_other_workers`` and ``priority`` (Dask's, among
    the cluster's tasks; the queue's priority decides what is submitted
    first). Retries are the queue's (its ``RetryPolicy``), not Dask's.

    Raises TypeError for another option, ValueError for
    ``allow_other_workers`` without ``workers`` and when there is no default
    client; a value that Dask refuses fails each task with Dask's error.
    Call it from a thread that is not running an event loop when it has to
    connect (an address); otherwise from any thread.
    """
    unknown = sorted(set(submit_options) - SUBMIT_OPTIONS)
    if unknown:
        raise TypeError(
            f"dask_executor() got unsupported option(s) {', '.join(unknown)}; "
            f"it passes only {', '.join(sorted(SUBMIT_OPTIONS))} to Dask"
        )
    if submit_options.get("allow_other_workers") and submit_options.get("workers") is None:
        # Dask's rule, checked here rather than failing every task.
        raise ValueError("dask_executor(allow_other_workers=True) needs workers=: the workers to prefer")
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
    """A call submitted to DaskExecutor by anyone but the queue: the handler, its arguments, its result checked.

    Keyword arguments travel inside, so that none of them is taken by
    ``Client.map`` as an option of its own. Pickled by reference: the
    workers import it from hybrid_queue.dask.
    """

    __slots__ = ("__name__", "args", "fn", "kwargs", "token")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        # Dask names tasks after their keys: keep the handler's name, for its dashboard and logs.
        self.__name__ = funcname(fn)
        self.token = uuid.uuid4().hex

    def __call__(self) -> Any:
        # On the Dask worker.
        value = self.fn(*self.args, **self.kwargs)
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
