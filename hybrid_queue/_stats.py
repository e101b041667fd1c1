"""The statistics snapshot."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import asdict, dataclass

__all__ = ["KeyStats", "QueueStats"]


@dataclass(frozen=True, slots=True)
class QueueStats:
    """A consistent snapshot of a queue's counters, taken under its lock.

    Every snapshot satisfies ``submitted == scheduled + pending + running +
    retrying + completed + failed + cancelled``.

    - ``submitted``: tasks accepted since the queue was made.
    - ``scheduled``: tasks submitted with ``delay`` or ``not_before`` whose
      time has not come; they hold no worker and do not count toward
      ``max_queue_size``.
    - ``pending``: tasks waiting for a worker, or for their key's turn or
      limit (``queue_size`` is the same number).
    - ``running``: tasks whose handler is running now, including handlers
      that wait for a task of their own queue (they lend their slot meanwhile).
    - ``retrying``: tasks waiting out a retry delay; they hold no worker.
    - ``completed``, ``failed``, ``cancelled``: tasks that ended that way.
    - ``retries``: retry attempts scheduled, over all tasks.
    - ``workers``: how many handlers may run at once.
    - ``busy_workers``: worker slots in use, at most ``workers``. It can
      exceed ``running`` while an abandoned sync handler (cancelled or timed
      out) is still returning, or while a slot waits for its task's end to
      be on disk (``SQLiteJournal(bounded_reruns=True)``), and be below it
      while handlers wait for tasks of their own queue.
    - ``results_stored``: results in the result store now.
    - ``results_expired``, ``results_evicted``: results dropped by their ttl,
      and to make room under the ``max_results`` or ``max_result_bytes`` bound.
    """

    submitted: int
    scheduled: int
    pending: int
    running: int
    retrying: int
    completed: int
    failed: int
    cancelled: int
    retries: int
    workers: int
    busy_workers: int
    results_stored: int
    results_expired: int
    results_evicted: int

    @property
    def queue_size(self) -> int:
        """Tasks waiting for a worker; the same as ``pending``."""
        return self.pending

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict, ``queue_size`` included."""
        d = asdict(self)
        d["queue_size"] = self.pending
        return d


@dataclass(frozen=True, slots=True)
class KeyStats:
    """A snapshot of one key's state (see ``HybridQueue.key_stats``), taken under the queue's lock.

    - ``key``: the key.
    - ``waiting``: its tasks waiting to start (pending).
    - ``running``: worker slots its tasks hold now (at most ``concurrency``).
    - ``paused_for``: seconds left of a ``pause_key``; 0.0 when not paused.
    - ``tokens``: starts its rate allows at once now (the token bucket),
      None without a rate.
    - ``concurrency``, ``rate``, ``burst``: its limit (each None when not set).
    """

    key: Hashable
    waiting: int
    running: int
    paused_for: float
    tokens: float | None
    concurrency: int | None
    rate: float | None
    burst: int | None
