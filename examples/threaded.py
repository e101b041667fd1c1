"""A plain threaded program feeding one queue from several threads.

Run it with ``python examples/threaded.py``. There is no async code here:
the queue runs its own event loop in a background thread (``with
HybridQueue(...)``, or ``start_background()`` / ``shutdown_blocking()``),
sync handlers run on its thread pool, and any thread may call
``submit_blocking`` to get a ``concurrent.futures.Future``.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import threading

from hybrid_queue import HybridQueue


def digest(data: bytes, rounds: int) -> str:
    """Blocking work (hashing here; file or database I/O in real life)."""
    value = data
    for _ in range(rounds):
        value = hashlib.sha256(value).digest()
    return value.hex()[:12]


def producer(q: HybridQueue, name: str, items: int, out: list[concurrent.futures.Future[str]]) -> None:
    """One of several threads of an existing program, each handing work to the queue."""
    for i in range(items):
        # Urgent work (every fifth item) jumps ahead of the backlog. With a
        # bounded queue (max_queue_size), this call would block the
        # producer while the queue is full: back-pressure for free.
        future = q.submit_blocking(digest, f"{name}/{i}".encode(), 1000, priority=5 if i % 5 == 0 else 0)
        out.append(future)  # list.append is atomic: no lock needed


def main(threads: int = 4, items: int = 25) -> list[str]:
    """Run ``threads`` producers against one queue; print a summary and return the digests."""
    futures: list[concurrent.futures.Future[str]] = []
    # Explicit start/stop, as a long-running program that creates the queue
    # in one place and stops it in another would do. `with HybridQueue(4) as
    # q:` does the same two calls.
    q = HybridQueue(workers=4, max_queue_size=20)
    q.start_background()
    try:
        producers = [
            threading.Thread(target=producer, args=(q, f"producer-{n}", items, futures)) for n in range(threads)
        ]
        for t in producers:
            t.start()
        for t in producers:
            t.join()
        # These are ordinary concurrent.futures futures: result() blocks
        # this thread until the task is done, and the stdlib helpers (wait,
        # as_completed) take them as they are.
        digests = [f.result(timeout=30) for f in futures]
    finally:
        # Waits for everything submitted (wait=True), stops the background
        # loop and joins its thread and the thread pool.
        q.shutdown_blocking()

    stats = q.stats()
    print(f"{threads} threads submitted {stats.submitted} tasks: {stats.completed} completed, {stats.failed} failed")
    print(f"{len(set(digests))} distinct digests")
    return digests


if __name__ == "__main__":
    main()
