"""The scheduler's lock: how a thread takes it without convoys, how the main thread takes it, and the fork hook.

Two mechanisms that belong to the lock rather than to the state it guards:

- ``YieldingLock.guard()``: the acquisition for the hot paths (a task's
  submit and finish), which yields the GIL to the holder instead of
  blocking on the lock (see ``_yield_until`` for why), and which on the
  main thread leaves no gap for a signal handler's exception between the
  acquisition and the ``with`` that releases it.
- ``disown_in_forked_child(owner)``: after ``os.fork()``, the child has only
  the forking thread; every owner registered here is told so (its lock may
  have been held by a thread that is gone, and its loop and threads are
  the parent's).

Nothing here takes a lock of its own.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Protocol

__all__ = ["YieldingLock", "disown_in_forked_child"]

# How often a thread that finds the scheduler lock held yields the GIL
# before it stops waiting that way (see _yield_until); none on a build that
# runs without a GIL, where yielding does not let the holder run.
_YIELDS = 100 if getattr(sys, "_is_gil_enabled", lambda: True)() else 0
# The thread that runs signal handlers, which takes the lock only with
# ``with`` (see YieldingLock.guard).
_MAIN_THREAD = threading.main_thread().ident


def _note_main_thread() -> None:
    # In a child forked from another thread, that thread is the main one.
    global _MAIN_THREAD
    _MAIN_THREAD = threading.main_thread().ident


class _Owner(Protocol):
    def disown_after_fork(self) -> None: ...


# Every owner that asked to hear of a fork (a scheduler that started).
_OWNERS: weakref.WeakSet[_Owner] = weakref.WeakSet()


def disown_in_forked_child(owner: _Owner) -> None:
    """Call ``owner.disown_after_fork()`` in the child of every later ``os.fork()``. Any thread."""
    _OWNERS.add(owner)


def _after_fork_in_child() -> None:
    _note_main_thread()
    for owner in list(_OWNERS):
        owner.disown_after_fork()


if hasattr(os, "register_at_fork"):  # runs after threading's own hook, which names the new main thread
    os.register_at_fork(after_in_child=_after_fork_in_child)


class YieldingLock:
    """A ``threading.Lock`` and the way the hot paths take it. Any thread.

    ``lock`` is the plain lock, for ``with lock`` and for a Condition;
    ``guard()`` returns what to enter for the same lock taken the yielding
    way.
    """

    __slots__ = ("_held", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._held = _Held(self.lock)

    def guard(self) -> threading.Lock | _Held:
        """What to enter, in a ``with``, to hold ``lock`` (see ``_yield_until``)."""
        lock = self.lock
        if threading.get_ident() != _MAIN_THREAD:
            if not lock.acquire(False):
                _acquire_yielding(lock)
            return self._held  # taken: the ``with`` only releases it
        # The main thread runs the signal handlers: a KeyboardInterrupt
        # raised between a hand-made acquire and the ``with`` would leave the
        # lock held for good, and ``with lock`` leaves no such gap. So it
        # only waits for the lock to be free, and the ``with`` takes it.
        if lock.locked():
            _yield_until(lambda: not lock.locked())
        return lock


def _yield_until(ready: Callable[[], bool]) -> bool:
    # Yields the GIL until ready() (the lock taken, or free); False when it
    # gave up after _YIELDS tries (the holder is descheduled, or there is no
    # GIL to wait for), and the caller blocks instead.
    #
    # Why not block on the lock at once: its holder never blocks while it
    # holds it, it runs Python or waits for the GIL. A thread that blocked
    # on the lock would be woken by the holder's release, take the lock on
    # the other core before the holder comes back for it, and then wait for
    # the GIL, which the holder keeps until its own next acquisition blocks
    # in turn. From then on two busy threads (the loop submitting, a pool
    # thread finishing) trade the lock through the kernel at every
    # acquisition: 6 to 10 us of system time per task in the sync
    # benchmarks, against about 1 us without.
    for _ in range(_YIELDS):
        time.sleep(0)  # releases the GIL, even for no time
        if ready():
            return True
    return False


def _acquire_yielding(lock: threading.Lock) -> None:
    # Take the held lock without blocking on it while yielding can work.
    if not _yield_until(lambda: lock.acquire(False)):
        lock.acquire()


class _Held:
    """The context of a lock its thread already holds: ``with`` releases it, and takes nothing."""

    __slots__ = ("_lock",)

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc_info: object) -> None:
        self._lock.release()
