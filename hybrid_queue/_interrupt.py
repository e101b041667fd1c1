"""Interrupting a sync handler in its worker thread, for a task that was cancelled or timed out (opt-in).

The thread running the handler is sent :class:`TaskInterrupted` with
``PyThreadState_SetAsyncExc`` (CPython only; Dramatiq's time limits work the
same way). CPython raises such an exception only between two bytecode
instructions of that thread, which limits what can be interrupted:

- C code and blocking calls (``time.sleep``, socket reads, waits on locks,
  a long ``sorted``) are not stopped: the exception is raised when they
  return to Python bytecode, if they ever do;
- the handler's ``finally`` blocks and ``with`` exits run as for any
  exception, and an ``except TaskInterrupted`` (or a bare ``except``) in the
  handler can catch it and carry on;
- an interrupt that arrives while the handler is inside its own ``except``
  or ``finally`` block is raised there, in the middle of that clean-up;
- CPython itself may skip the handler's ``except``, ``finally`` or ``with``
  exit when the exception comes at the back edge of a loop that ends the
  block (CPython issues 108214 and 139622): seen on 3.13.0 for a ``while``
  loop, in every trial; the exception still leaves fn and call() returns it.

What this module guarantees is the other side: the exception is raised in
the handler or not at all, never in the worker's code after the handler has
returned. Calls must not nest on one thread (the inner call's bookkeeping
would consume the outer one's interrupt), and ``call()`` belongs on a worker
thread, not the main thread, where ``KeyboardInterrupt`` may arrive as well.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

__all__ = ["Interruptible", "TaskInterrupted", "arm", "shielded"]

P = ParamSpec("P")
R = TypeVar("R")

# A prototype of our own rather than ``ctypes.pythonapi.PyThreadState_SetAsyncExc``,
# whose argtypes are shared with whatever else in the process sets them.
# PYFUNCTYPE keeps the GIL during the call, as this C function requires.
_set_async_exc = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.py_object)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi)
)
_NULL = ctypes.py_object()  # passed as the exception: cancel the one pending, if any

# The states of an Interruptible, each a transition made under its lock.
_NEW = "new"  # call() not entered yet
_EARLY = "early"  # interrupted before call() began: call() will not run fn
_RUNNING = "running"  # call() is running fn (or its own code around fn)
_DEFERRED = "deferred"  # as _RUNNING, interrupted while shielded: sent when the last shield lifts
_INTERRUPTED = "interrupted"  # as _RUNNING, and TaskInterrupted was sent: pending, or raised already
_DONE = "done"  # call() has finished its bookkeeping: nothing pending, nothing more will be sent

# Per thread: the Interruptible whose call() runs there now, for shielded().
_local = threading.local()
# True once some queue interrupts its sync handlers: until then shielded()
# costs its callers one global read.
_armed = False


def arm() -> None:
    """Make shielded() methods check for an interruptible call on their thread; for good."""
    global _armed
    _armed = True


def shielded(method: Callable[P, R]) -> Callable[P, R]:
    """Wrap a queue method so that an interrupt never lands inside it.

    A handler that calls the queue (submit_blocking, cancel_task, stats)
    while its own task is cancelled would otherwise receive TaskInterrupted
    in the middle of the scheduler's bookkeeping, perhaps with its lock
    held. Inside the method the interrupt is deferred; it is raised as the
    method returns to the handler.
    """

    @functools.wraps(method)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        if _armed:
            running: Interruptible | None = getattr(_local, "current", None)
            if running is not None:
                running._shield()
                try:
                    return method(*args, **kwargs)
                finally:
                    running._unshield()
        return method(*args, **kwargs)

    return guarded


class TaskInterrupted(BaseException):
    """Raised inside an interruptible sync handler whose task was cancelled or timed out.

    A ``BaseException``, like ``KeyboardInterrupt`` and ``asyncio.CancelledError``,
    so that a handler's ``except Exception`` does not swallow it.
    """


class Interruptible:
    """One call of a sync handler in the calling thread, which any other thread may interrupt once."""

    __slots__ = ("_lock", "_shields", "_state", "_thread_id")

    def __init__(self) -> None:
        """Made on the thread that will run :meth:`call`."""
        # Guards _state. Invariant: a TaskInterrupted from this object can be
        # pending for the thread only in _INTERRUPTED, and interrupt() sends
        # only one, entering that state and sending in one critical section.
        # _leave() disposes of whatever is pending and enters _DONE in one
        # critical section. So no send can follow the disposal: once _leave()
        # has run, nothing is pending and nothing more will be sent.
        # A shield (the thread inside a queue method) defers a send to its
        # lifting, made on the thread itself, under the same lock.
        self._lock = threading.Lock()
        self._state = _NEW
        self._shields = 0
        self._thread_id = threading.get_ident()

    def call(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any] | None
    ) -> tuple[bool, Any, BaseException | None]:
        """Run ``fn(*args, **kwargs)`` on this thread, the one that made the object; only once.

        Returns ``(True, value, None)``, or ``(False, None, exc)`` for any
        ``BaseException`` that fn raised, TaskInterrupted included. When call()
        returns (or raises), no TaskInterrupted from this object is pending for
        the thread, nor can one be raised later. Raises RuntimeError when called
        a second time or from another thread.
        """
        if self._state not in (_NEW, _EARLY) or threading.get_ident() != self._thread_id:
            raise RuntimeError("Interruptible.call() runs once, on the thread that made the object")
        outcome: tuple[bool, Any, BaseException | None] | None = None
        _local.current = self
        try:
            try:
                # One hold: an interrupt before it is kept (_EARLY: fn never
                # runs), one after it finds _RUNNING.
                with self._lock:
                    early = self._state is _EARLY
                    self._state = _DONE if early else _RUNNING
                if early:
                    outcome = (False, None, TaskInterrupted())
                else:
                    # From here on, the one TaskInterrupted may be raised at
                    # any instruction until _leave() has run: in fn, as
                    # intended, but also in the lines around fn, which the
                    # outer handler covers.
                    value = fn(*args, **kwargs) if kwargs else fn(*args)
                    outcome = (True, value, None)
            except BaseException as exc:
                outcome = (False, None, exc)
            finally:
                self._leave()
        except BaseException as late:
            # Raised after fn ended (or before it began), before _leave() could
            # dispose of it. Ours is raised at most once, so it cannot recur
            # while this handler finishes the bookkeeping. fn's own outcome, if
            # it has one, wins. Anything else (KeyboardInterrupt) propagates,
            # once the bookkeeping is done.
            self._leave()
            if not isinstance(late, TaskInterrupted):
                raise
            if outcome is None:
                outcome = (False, None, late)
        assert outcome is not None  # set on every path that gets here
        try:
            return outcome
        finally:
            # A failure's traceback keeps this frame; without this local it
            # does not lead back to the failure (no reference cycle).
            del outcome

    def _leave(self) -> None:
        # Idempotent: call() runs it again if TaskInterrupted cut it short.
        with self._lock:
            if self._state is _INTERRUPTED:
                # Whether or not ours is still pending, replace it with a fresh
                # one and let that be raised here, as the C call returns. A
                # plain cancel (NULL) would leave the interpreter's "something
                # is pending" flag set with nothing to raise: on CPython 3.11
                # any later call of a Python function under sys.settrace or
                # sys.setprofile (a debugger, coverage, cProfile) then loops
                # forever. Raising one resets the flag.
                try:
                    _set_async_exc(self._thread_id, TaskInterrupted)
                    _set_async_exc(self._thread_id, _NULL)  # reached only if not raised at once (3.11-3.13 do)
                except TaskInterrupted:
                    pass
            self._state = _DONE
        _local.current = None

    def _shield(self) -> None:
        # This object's thread, entering a queue method.
        with self._lock:
            self._shields += 1

    def _unshield(self) -> None:
        # This object's thread, leaving a queue method: a deferred interrupt
        # is sent now, to this very thread, and raised as the call returns.
        with self._lock:
            self._shields -= 1
            if self._shields == 0 and self._state is _DEFERRED:
                self._state = _INTERRUPTED
                _set_async_exc(self._thread_id, TaskInterrupted)

    def interrupt(self) -> bool:
        """Raise TaskInterrupted in the thread of :meth:`call` if fn is still running there.

        Returns True if sent: at most once per object, and only while call() is
        running (False before and after). Call from any thread other than the
        one in call(); it takes a lock briefly and never waits for fn.
        """
        with self._lock:
            if self._state is _NEW:
                self._state = _EARLY  # call() will not run fn
                return True
            if self._state is not _RUNNING:
                return False
            if self._shields:
                self._state = _DEFERRED  # sent when the thread leaves the queue's code
                return True
            # The state changes before the send: if this thread is itself
            # interrupted right after the send, _leave() still disposes of it.
            self._state = _INTERRUPTED
            found = _set_async_exc(self._thread_id, TaskInterrupted)
            if found > 1:
                # The C API's rule for "more than one thread": undo, then fail.
                _set_async_exc(self._thread_id, _NULL)
                raise SystemError(f"PyThreadState_SetAsyncExc found {found} threads with id {self._thread_id}")
            # 0 would mean the thread is gone, impossible while call() runs.
            return bool(found == 1)

    cancel = interrupt  # stands where the scheduler keeps what to cancel to stop an attempt

    @property
    def thread_id(self) -> int:
        """The identifier of the thread that runs (or will run) :meth:`call`."""
        return self._thread_id
