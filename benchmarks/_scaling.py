"""The workers group: coroutine no-op throughput as the worker count grows from 8 to 10,000."""

from __future__ import annotations

import functools
from collections.abc import Sequence

from ._coroutine import hybrid_queue_round, on_loop, priority_queue_round
from ._throughput import Contender

__all__ = ["contenders", "hybrid_queue_name"]


def hybrid_queue_name(workers: int) -> str:
    """The row name of hybrid_queue with ``workers`` workers."""
    return f"hybrid_queue, {workers:,} workers"


def _reference_name(workers: int) -> str:
    return f"asyncio.PriorityQueue, {workers:,} workers"


def contenders(worker_counts: Sequence[int]) -> tuple[Contender, ...]:
    """hybrid_queue and the PriorityQueue reference at each worker count.

    Each kind's row at the smallest count is its reference, so the ratio
    column shows what more workers cost that kind. The reference creates its
    worker coroutines up front; hybrid_queue creates one only for a claimed
    task that finds every worker it has suspended in a handler.
    """
    base = worker_counts[0]
    rows = []
    for w in worker_counts:
        rows.append(
            Contender(
                hybrid_queue_name(w),
                on_loop(functools.partial(hybrid_queue_round, workers=w)),
                None if w == base else hybrid_queue_name(base),
                "await submit, await each",
            )
        )
        rows.append(
            Contender(
                _reference_name(w),
                on_loop(functools.partial(priority_queue_round, workers=w)),
                None if w == base else _reference_name(base),
                "put_nowait + one future per task",
            )
        )
    return tuple(rows)
