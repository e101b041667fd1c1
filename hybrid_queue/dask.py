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
- **Fewer round trips.** The calls submitted in one turn of the client's
  event loop reach the scheduler as one graph, and the results of tasks that
  finished together come back in one request to the scheduler, as
  ``Client.gather`` would fetch them; Dask's own executor sends each call
  and fetches each result on its own. When a result cannot be fetched (its
  worker died, and Dask computes it again), the others of its batch are
  fetched one by one, so they do not wait for it.
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
        # Orders submit() against shutdown() and guards what both threads
        # touch. Invariant: _send_posted is True exactly while a _send() is
        # queued on the client's event loop, and that _send() takes every
        # call in _outbox, so none is left behind.
        self._lock = threading.Lock()
        self._shutdown = False
        self._outbox: list[tuple[_Call | RemoteCall, concurrent.futures.Future[Any]]] = []
        self._send_posted = False
        # Futures of calls not finished yet, for shutdown(); weak, so that a
        # finished call is not kept alive by the executor.
        self._live: weakref.WeakSet[concurrent.futures.Future[Any]] = weakref.WeakSet()
        # The client's event loop thread only: tasks that finished since the
        # last fetch, whose results one round trip to the scheduler fetches;
        # and the coroutines that wait for tasks, kept from the collector.
        self._finished: list[tuple[distributed.Future[Any], concurrent.futures.Future[Any]]] = []
        self._fetch_posted = False
        self._waiting: set[asyncio.Task[None]] = set()

    @property
    def client(self) -> distributed.Client:
        """The Dask client that tasks are submitted through."""
        return self._client

    def __repr__(self) -> str:
        return f"<DaskExecutor {self._client!r}{' shut down' if self._shutdown else ''}>"

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        """Run ``fn(*args, **kwargs)`` as a new Dask task; return a ``concurrent.futures.Future`` of it.

        The calls submitted in one turn of the client's event loop reach the
        scheduler together, as one graph. A call that cannot be serialized
        fails its own future with a TypeError saying so.

        Cancelling the future releases the Dask task: one still waiting for
        a worker never runs; one already running cannot be interrupted, it
        runs to its end on its worker and its result is dropped.

        Raises RuntimeError after ``shutdown`` or once the client is closed.
        Any thread.
        """
        # The queue's own calls carry their arguments and check their
        # results themselves; anything else is wrapped to do both.
        call: _Call | RemoteCall
        call = fn if isinstance(fn, RemoteCall) and not (args or kwargs) else _Call(fn, args, kwargs)
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit to a DaskExecutor after shutdown(); make a new one")
            if self._client.status == "closed":
                # Its event loop would drop the call without a word.
                raise RuntimeError(f"cannot submit to a DaskExecutor whose client is closed ({self._client!r})")
            self._outbox.append((call, future))
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

    def _on_client_loop(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        loop = self._client.loop
        assert loop is not None, "a Client has its event loop from the start"
        loop.add_callback(fn, *args, **kwargs)

    # ---------------------------------------------- on the client's event loop

    def _send(self) -> None:
        with self._lock:
            batch, self._outbox = self._outbox, []
            self._send_posted = False
        sending = []
        for call, future in batch:
            if future.cancelled():
                # Cancelled before it was sent: it never runs. Notified, or
                # concurrent.futures.wait() would not count it as done.
                future.set_running_or_notify_cancel()
            else:
                sending.append((call, future))
        batch = sending
        if not batch:
            return
        client, options = self._client, self._options
        calls = [call for call, _ in batch]
        try:
            # One graph for the batch: one message, and one update of the
            # scheduler's state, where Client.submit would make one each.
            tasks: list[distributed.Future[Any] | None] = list(
                client.map(_run, calls, key=[_key(call) for call in calls], pure=False, **options)
            )
        except Exception:
            # Some call could not be serialized: one by one, so that only
            # those fail. Under new keys: the failed map's are still taken
            # until its futures are released, and Client.submit would answer
            # with one of those, for a task never sent.
            tasks = []
            for call, future in batch:
                try:
                    task = client.submit(_run, call, key=_key(call, "alone"), pure=False, **options)
                except Exception as exc:
                    task = None
                    _settle(future, exception=_unsendable(call, exc))
                tasks.append(task)
        for task, (_, future) in zip(tasks, batch, strict=True):
            if task is not None:
                future.add_done_callback(functools.partial(self._cancelled, task=task))
                waiting = asyncio.ensure_future(self._wait(task, future))
                self._waiting.add(waiting)
                waiting.add_done_callback(self._waiting.discard)

    async def _wait(self, task: distributed.Future[Any], future: concurrent.futures.Future[Any]) -> None:
        # Dask's own concurrent.futures face waits the same way; there is no
        # public awaitable for "done" that does not also fetch the result.
        state = task._state
        assert state is not None, "a Future has its state until it is released, and we hold it"
        await state.wait()  # type: ignore[no-untyped-call]
        if task.status != "finished":
            await self._fetch_one(task, future)
            return
        self._finished.append((task, future))
        if not self._fetch_posted:
            # After the wake-ups queued now: the tasks that finished in the
            # same message from the scheduler share the fetch.
            self._fetch_posted = True
            asyncio.get_running_loop().call_soon(self._fetch_finished)

    def _fetch_finished(self) -> None:
        self._fetch_posted = False
        batch, self._finished = self._finished, []
        fetching = asyncio.ensure_future(self._fetch(batch))
        self._waiting.add(fetching)
        fetching.add_done_callback(self._waiting.discard)

    async def _fetch(self, batch: list[tuple[distributed.Future[Any], concurrent.futures.Future[Any]]]) -> None:
        # One round trip for every result of the batch, as Client.gather
        # does, where fetching each on its own would make one each.
        try:
            scheduler = self._client.scheduler
            assert scheduler is not None, "a connected Client has its scheduler"
            response = await scheduler.gather(keys=[task.key for task, _ in batch])
        except Exception:  # the scheduler is gone, or the connection: each task finds out on its own
            response = None
        if response is not None and response.get("status") == "OK":
            data = response["data"]
            for task, future in batch:
                _settle(future, result=data[task.key])
            return
        # A result was lost with its worker, and Dask computes it again: each
        # on its own, so that the others need not wait for that one.
        await asyncio.gather(*(self._fetch_one(task, future) for task, future in batch))

    async def _fetch_one(self, task: distributed.Future[Any], future: concurrent.futures.Future[Any]) -> None:
        outcome = await task._result(raiseit=False)  # type: ignore[no-untyped-call]
        status = task.status
        if status == "finished":
            _settle(future, result=outcome)
        elif status == "cancelled":
            future.cancel()
            _settle(future)
        else:
            _, error, traceback = outcome
            _settle(future, exception=error.with_traceback(traceback))

    def _cancelled(self, future: concurrent.futures.Future[Any], task: distributed.Future[Any]) -> None:
        # Done callback, in the thread that finished or cancelled the future.
        if not future.cancelled():
            return
        # Wakes concurrent.futures.wait() on it, which counts a cancelled
        # future as done only once it is notified.
        future.set_running_or_notify_cancel()
        if task.status != "cancelled":
            # Not Future.cancel(), which blocks its caller for a round trip.
            self._on_client_loop(self._client.cancel, [task], asynchronous=True)


def _settle(
    future: concurrent.futures.Future[Any], *, result: Any = None, exception: BaseException | None = None
) -> None:
    # Cancellation may have won the race from another thread; then _cancelled
    # has notified the future's waiters.
    try:
        if future.cancelled():
            return
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)
    except concurrent.futures.InvalidStateError:
        pass


def _unsendable(call: _Call | RemoteCall, exc: Exception) -> Exception:
    error: Exception
    if isinstance(exc, TypeError):  # distributed's way of saying "could not serialize"
        error = TypeError(
            f"could not send {call.__name__} and its arguments to the Dask cluster ({exc}); the handler, "
            "its arguments and keyword arguments must be picklable (or cloudpicklable)"
        )
    else:  # the client closed meanwhile, say
        error = RuntimeError(f"could not send {call.__name__} to the Dask cluster ({exc!r})")
    error.__cause__ = exc
    return error


def _key(call: _Call | RemoteCall, suffix: str = "") -> str:
    # Dask names a task after its key's prefix: the handler's name.
    return f"{call.__name__}-{call.token}{'-' if suffix else ''}{suffix}"


def _run(call: _Call | RemoteCall) -> Any:
    """What every task runs, on a Dask worker: the call it carries."""
    return call()


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
