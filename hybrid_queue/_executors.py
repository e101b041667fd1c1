"""Executor ownership: the caller's executor, or one the queue makes, replaces when it breaks, and shuts down.

A queue given an executor uses it as it is: never replaced, never shut down
(its owner does that). A queue given a factory (a function of no arguments,
``WorkerPool`` for the default thread pool) owns what it makes: made at
``start()``, replaced once however many of its futures report it broken,
and shut down with the queue.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
from collections.abc import Callable

__all__ = ["Executors", "shut"]


class Executors:
    """Where a queue's sync handlers go. Any thread.

    ``current`` is one attribute, written whole: readers on other threads
    take the executor once and derive everything from that one object.
    """

    __slots__ = ("_closed", "_factory", "_replacing", "current")

    def __init__(
        self,
        executor: concurrent.futures.Executor | None,
        factory: Callable[[], concurrent.futures.Executor] | None,
    ) -> None:
        # Exactly one of the two is given.
        self._factory = factory
        self.current: concurrent.futures.Executor | None = executor
        # Guards ``current`` against two replacements of one broken executor,
        # and against a replacement once the queue has taken its executor to
        # shut it down (``_closed``).
        self._replacing = threading.Lock()
        self._closed = False

    @property
    def owned(self) -> bool:
        """True when the queue makes (and shuts down) its executors."""
        return self._factory is not None

    def open(self) -> None:
        """Make the owned executor, if the queue owns one and has none yet. Before the first claim."""
        if self._factory is not None and self.current is None:
            self.current = _made(self._factory)

    def replace(self, broken: concurrent.futures.Executor) -> concurrent.futures.Executor | None:
        """The executor to use instead of ``broken``: a new one if the queue owns it; None if it is the caller's.

        Once however many of its futures report the breakage; None too once
        the queue is shutting its executor down.
        """
        if self._factory is None:
            return None
        with self._replacing:
            if self._closed:
                return None  # the queue is shutting down: nothing to replace it for
            if self.current is broken:
                self.current = _made(self._factory)
                shut(broken, wait=False)
            return self.current

    def abandon(self) -> concurrent.futures.Executor | None:
        """As ``take``, taking no lock: for a finalizer, which may run where the lock is held."""
        self._closed = True
        return self.current if self._factory is not None else None

    def take(self) -> concurrent.futures.Executor | None:
        """The owned executor, for the queue to shut down (None if the caller's); none is made or replaced after."""
        with self._replacing:
            return self.abandon()

    async def shut_down(self, wait: bool) -> None:
        """Shut the owned executor down, off the loop; with ``wait``, return once it has. Loop thread."""
        executor = self.take()
        if executor is None:  # the caller's, or never made
            return
        # Off the loop: joining a pool's threads blocks, and so may cancelling
        # (a Dask client talks to its scheduler, and closes).
        loop = asyncio.get_running_loop()
        joined: asyncio.Future[None] = loop.create_future()

        def join() -> None:
            shut(executor, wait=wait)
            try:
                loop.call_soon_threadsafe(_resolve, joined)
            except RuntimeError:  # wait=False, and the loop has closed since: nobody waits
                pass

        threading.Thread(target=join, name="hybrid_queue-join", daemon=True).start()
        if wait:
            await joined


def shut(executor: concurrent.futures.Executor, wait: bool) -> None:
    """Shut down an owned executor; cancel what it has not started unless waiting for it. Any thread."""
    parameters = inspect.signature(executor.shutdown).parameters
    if "cancel_futures" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        executor.shutdown(wait=wait, cancel_futures=not wait)
    else:  # an executor older than cancel_futures (Dask's ClientExecutor)
        executor.shutdown(wait=wait)


def _made(factory: Callable[[], concurrent.futures.Executor]) -> concurrent.futures.Executor:
    executor = factory()
    if not isinstance(executor, concurrent.futures.Executor):
        raise TypeError(
            f"the executor factory {factory!r} returned {executor!r}, not a concurrent.futures.Executor; "
            "executor= takes an Executor, or a function of no arguments that returns a new one"
        )
    return executor


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
