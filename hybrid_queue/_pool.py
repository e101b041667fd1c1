"""The queue's thread pool for sync handlers: a ThreadPoolExecutor that lets the process exit once shut down.

``concurrent.futures.ThreadPoolExecutor`` joins every thread it ever started
when the interpreter exits (its exit hook runs before the non-daemon threads
are joined), whether or not the pool was shut down. A sync handler that is
stuck for good (blocked on a lock, a socket, an Event nobody sets) therefore
hangs the process at exit even after ``HybridQueue.shutdown(timeout=...)``
gave up on it and shut the pool down with ``wait=False``.

Invariant: at exit, a pool that nobody shut down is shut down with
``wait=True`` (its queued and running calls finish first, as with
ThreadPoolExecutor); a pool that its owner shut down is not joined, and its
threads end with the interpreter.

How: the threads are daemon threads, which the interpreter does not join, and
one ``atexit`` hook joins the pools still in ``_LIVE``. A pool leaves
``_LIVE`` when it is shut down (or collected). ``atexit`` hooks run after the
non-daemon threads were joined, so the hook also sees work that those threads
submitted on their way out. Once the hook has started, ``submit`` refuses new
calls on every pool, as ThreadPoolExecutor does once its own hook has run.

The cost of the choice is the one daemon threads always have: when the
interpreter finalizes, a call still running in a pool that was shut down with
``wait=False`` is stopped where it is (no ``finally``, no further output), and
calls still queued there never run. That is what ``wait=False`` asks for
here; ``wait=True``, or no shutdown at all, runs everything.

Threads hold the work queue and the idle tokens, never the pool: a pool that
is collected without shutdown is finalized as ThreadPoolExecutor is, by a
``None`` put on its queue, and its idle threads exit.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import logging
import os
import queue
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, ParamSpec, TypeAlias, TypeVar

__all__ = ["WorkerPool"]

P = ParamSpec("P")
T = TypeVar("T")

# A call to make, or None: the pool is gone or shut down, so the thread that
# takes it puts it back (for the next thread) and exits.
_Call: TypeAlias = tuple[concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]
_Item: TypeAlias = _Call | None

# The pools never shut down, for the exit hook. _registry_lock must be held
# while mutating _LIVE or _exiting, and is never held with a pool's lock.
_registry_lock = threading.Lock()
_LIVE: weakref.WeakSet[WorkerPool] = weakref.WeakSet()
_exiting = False


def _join_at_exit() -> None:
    """Shut down, waiting, every pool that was never shut down (the atexit hook)."""
    global _exiting
    with _registry_lock:
        _exiting = True
        pools = list(_LIVE)
    for pool in pools:
        pool.shutdown(wait=True)


atexit.register(_join_at_exit)


def _new_registry_lock() -> None:
    # A thread of the parent may have held the lock when it forked; in the
    # child nobody would ever release it. The parent's pools are not the
    # child's to join at exit (their threads, and maybe their locks, stayed
    # in the parent).
    global _registry_lock
    _registry_lock = threading.Lock()
    _LIVE.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_registry_lock)


def _work(work_queue: queue.SimpleQueue[_Item], idle: deque[None]) -> None:
    """A worker thread's loop: make calls until a ``None`` comes."""
    get = work_queue.get
    ready = idle.append
    try:
        while True:
            item = get()
            if item is None:
                work_queue.put(None)
                return
            future, fn, args, kwargs = item
            del item
            # Claim before run: a future cancelled while queued is not called.
            # The thread counts as idle once the call has returned, before the
            # future's waiters and callbacks hear of it, so a caller that saw
            # the result and submits again finds this thread instead of
            # starting another (ThreadPoolExecutor counts it after, so a
            # submit/result loop there may start all its threads). The price:
            # a call submitted meanwhile waits for this future's callbacks.
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # as ThreadPoolExecutor: SystemExit too goes into the future
                    ready(None)
                    future.set_exception(exc)
                else:
                    ready(None)
                    future.set_result(result)
                    del result
            else:
                ready(None)
            # An idle thread must not keep the last call's arguments or
            # future alive until the next call comes.
            del future, fn, args, kwargs
    except BaseException:
        # Only reached if the future's state was set from outside (an
        # InvalidStateError); the stdlib's worker dies the same way. The
        # thread is lost, not the pool.
        logging.getLogger("hybrid_queue").critical("Exception in worker", exc_info=True)


class WorkerPool(concurrent.futures.Executor):
    """A thread pool with ThreadPoolExecutor's contract, whose threads do not hold up exit once it is shut down.

    Threads are started lazily, one per ``submit`` that finds no idle thread,
    up to ``max_workers``, named ``f"{thread_name_prefix}_{i}"``; they are
    daemon threads (see the module docstring). Every method may be called
    from any thread.
    """

    def __init__(self, max_workers: int, thread_name_prefix: str = "hybrid_queue") -> None:
        if max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        self._max_workers = max_workers
        self._prefix = thread_name_prefix
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._put = self._queue.put
        # One token per call finished and not yet matched by a submit: the
        # number of threads that are, or are about to be, idle. Threads only
        # append; only submit pops, under _lock, so a token seen is there.
        self._idle: deque[None] = deque()
        # Must be held while reading or setting _shutdown with a put on
        # _queue, and while starting threads: a submit either raises or puts
        # its call ahead of shutdown's None, so every accepted call runs or
        # is cancelled.
        self._lock = threading.Lock()
        self._shutdown = False
        self._threads: list[threading.Thread] = []
        # Not a weakref.ref kept on the pool: that one would be garbage with
        # the pool if the pool were in a cycle, and its callback never called.
        weakref.finalize(self, self._queue.put, None).atexit = False
        with _registry_lock:
            _LIVE.add(self)

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> concurrent.futures.Future[T]:
        """Schedule ``fn(*args, **kwargs)``; return its future. Any thread.

        Raises RuntimeError after ``shutdown`` or once the interpreter's exit
        hook has started.
        """
        with self._lock:
            if _exiting:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future: concurrent.futures.Future[T] = concurrent.futures.Future()
            self._put((future, fn, args, kwargs))
            if self._idle:
                self._idle.pop()
            elif len(self._threads) < self._max_workers:
                self._start_thread()
        return future

    def allow_blocked(self, change: int) -> None:
        """Allow ``change`` more threads (or, negative, take that back). Any thread.

        For a call of this pool that blocks until work it submitted is done:
        its thread counts as busy, so one more starts for that work (now,
        if the limit allows). Threads started meanwhile stay, idle, once the
        limit is lowered.
        """
        with self._lock:
            self._max_workers += change
            # Started now rather than on the next submit: a thread that
            # finished a call and took a queued one may have left an idle
            # token behind it, and a submit that trusted that token would
            # leave the blocked caller's work queued with no thread.
            if change > 0 and not self._shutdown and len(self._threads) < self._max_workers:
                self._start_thread()

    def _start_thread(self) -> None:
        # Under _lock. The thread gets the queue and the idle tokens, not the pool.
        thread = threading.Thread(
            target=_work,
            args=(self._queue, self._idle),
            name=f"{self._prefix}_{len(self._threads)}",
            daemon=True,
        )
        thread.start()
        self._threads.append(thread)

    def abandon(self) -> None:
        """Refuse new calls and let the threads exit once the queued calls are done, taking no lock.

        For a finalizer, which may run on a thread that holds this pool's
        lock or the registry's. The pool stays registered, so the exit hook
        still joins its threads, which by then have ended. Any thread.
        """
        self._shutdown = True  # one store; nobody submits to a pool whose owner is gone
        self._put(None)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new calls and let the threads exit once the queued calls are done. Any thread; idempotent.

        With ``cancel_futures``, calls not started yet are cancelled instead.
        With ``wait``, return once every thread has exited (so never call it
        with ``wait=True`` from a call running in this pool). Once shut down,
        the pool is not joined at exit.
        """
        dropped: list[concurrent.futures.Future[Any]] = []
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                while True:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:
                        dropped.append(item[0])
            # Wakes one idle thread, which passes it on before it exits.
            self._put(None)
        with _registry_lock:
            _LIVE.discard(self)
        # Cancelling runs done-callbacks: user code, so not under _lock.
        for future in dropped:
            future.cancel()
        if wait:
            for thread in self._threads:
                thread.join()
