"""Fan out many simulated I/O calls with priorities and retries, then summarise.

Run it with ``python examples/fan_out.py``. Each call sleeps for a short
random latency, and calls to a flaky endpoint fail now and then with a
transient error, which the queue retries with exponential backoff. The
randomness is seeded per call, so every run has the same outcome (only the
timings vary).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter

from hybrid_queue import HybridQueue, RetryPolicy, TaskStatus


class TransientError(Exception):
    """A failure worth retrying (a dropped connection, a 503, ...)."""


async def fetch(rng: random.Random, name: str, flaky: bool) -> str:
    """Pretend to call a remote service: wait a little, and sometimes fail."""
    await asyncio.sleep(rng.uniform(0.001, 0.01))
    if flaky and rng.random() < 0.5:
        raise TransientError(f"{name}: connection reset")
    return f"{name}: ok"


async def main(calls: int = 200, seed: int = 7) -> Counter[TaskStatus]:
    """Run ``calls`` fetches through one queue; print and return how many ended in each status."""
    # Retry only the transient error, quickly: after 1, 2, 4 and 8 ms. Any
    # other exception (a bug in fetch) fails its task at once.
    retry = RetryPolicy(max_retries=4, base_delay=0.001, max_delay=0.05, retry_on=(TransientError,))

    async with HybridQueue(workers=16, retry=retry) as q:
        handles = []
        for i in range(calls):
            # One generator per call, so its draws do not depend on the order
            # in which the calls happen to interleave: the run is repeatable.
            rng = random.Random(f"{seed}:{i}")
            # Calls a user is waiting for go first; background refreshes after.
            priority = 10 if i % 10 == 0 else 0
            handles.append(await q.submit(fetch, rng, f"call-{i}", i % 4 == 0, priority=priority))

        # Handles are asyncio futures. return_exceptions=True keeps one call
        # that ran out of retries from hiding the outcome of the others.
        outcomes = await asyncio.gather(*handles, return_exceptions=True)
        failed = sum(isinstance(o, BaseException) for o in outcomes)

        # The result store has more than the value: each task's status, how
        # many retries it needed and how long it took.
        results = [await q.get_result(h.task_id) for h in handles]
        by_status = Counter(r.status for r in results)
        retried = sum(1 for r in results if r.retry_count)
        slowest = max(r.duration_ms for r in results)
        total_retries = q.stats().retries

    print(f"{calls} calls: {by_status[TaskStatus.COMPLETED]} completed, {failed} failed")
    print(f"{retried} calls needed a retry, {total_retries} retries in all; slowest call {slowest:.0f} ms")
    return by_status


if __name__ == "__main__":
    # The queue logs every retry and every final failure at WARNING on the
    # "hybrid_queue" logger. A service sends those to its logs; this demo
    # keeps its output to the summary.
    logging.basicConfig(level=logging.INFO)
    logging.getLogger("hybrid_queue").setLevel(logging.ERROR)
    asyncio.run(main())
