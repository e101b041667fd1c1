"""hybrid_queue.prometheus: the queue's stats at scrape time, and the duration histogram."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from hybrid_queue import RetryPolicy
from hybrid_queue.prometheus import export_metrics
from hybrid_queue.testing import FakeClock

FAST_RETRY = RetryPolicy(max_retries=2, base_delay=0.001, max_delay=0.001)


def sample(registry: CollectorRegistry, name: str, queue: str = "default", **labels: str) -> float | None:
    return registry.get_sample_value(name, {"queue": queue, **labels})


class Flaky:
    """Fails its first ``failures`` calls, then returns "ok"."""

    def __init__(self, failures: int) -> None:
        self.failures = failures

    def __call__(self) -> str:
        if self.failures:
            self.failures -= 1
            raise OSError("transient")
        return "ok"


async def run_mixed_workload(q) -> None:
    """Two successes, one success after one retry, one failure after two retries, one cancel."""
    ok = [await q.submit(abs, -1), await q.submit(asyncio.sleep, 0)]
    flaky = await q.submit(Flaky(1))
    doomed = await q.submit(Flaky(10))
    gate = asyncio.Event()
    blocked = await q.submit(gate.wait)
    await asyncio.gather(*ok, flaky)
    with pytest.raises(OSError):
        await doomed
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked


async def test_counters_follow_the_stats(make_queue):
    registry = CollectorRegistry()
    q = await make_queue(2, retry=FAST_RETRY, max_results=3)
    metrics = export_metrics(q, registry=registry)
    await run_mixed_workload(q)
    stats = q.stats()
    expected = {
        "hybrid_queue_tasks_submitted_total": 5,
        "hybrid_queue_tasks_completed_total": 3,
        "hybrid_queue_tasks_failed_total": 1,
        "hybrid_queue_tasks_cancelled_total": 1,
        "hybrid_queue_task_retries_total": 3,
        "hybrid_queue_results_evicted_total": 2,  # 5 results, at most 3 kept
        "hybrid_queue_results_expired_total": 0,
    }
    assert {name: sample(registry, name) for name in expected} == expected
    assert stats.retries == 3 and stats.results_evicted == 2
    assert sample(registry, "hybrid_queue_results_stored") == 3
    assert sample(registry, "hybrid_queue_workers") == 2
    metrics.close()


async def test_gauges_are_read_at_scrape_time(make_queue):
    registry = CollectorRegistry()
    q = await make_queue(2)
    export_metrics(q, registry=registry, name="busy")
    gate = asyncio.Event()
    started = asyncio.Semaphore(0)

    async def hold() -> None:
        started.release()
        await gate.wait()

    handles = [await q.submit(hold) for _ in range(3)]
    for _ in range(2):
        await started.acquire()
    assert sample(registry, "hybrid_queue_tasks_running", "busy") == 2
    assert sample(registry, "hybrid_queue_tasks_pending", "busy") == 1
    assert sample(registry, "hybrid_queue_workers_busy", "busy") == 2
    gate.set()
    await asyncio.gather(*handles)
    assert sample(registry, "hybrid_queue_tasks_running", "busy") == 0
    assert sample(registry, "hybrid_queue_tasks_pending", "busy") == 0
    assert sample(registry, "hybrid_queue_tasks_completed_total", "busy") == 3


async def test_duration_histogram_counts_completed_and_failed_tasks(make_queue):
    registry = CollectorRegistry()
    q = await make_queue(2, retry=FAST_RETRY)
    export_metrics(q, registry=registry)
    # Both series exist, at zero, before any task ends.
    assert sample(registry, "hybrid_queue_task_duration_seconds_count", status="completed") == 0
    assert sample(registry, "hybrid_queue_task_duration_seconds_count", status="failed") == 0
    await run_mixed_workload(q)
    # Events reach listeners at the latest before shutdown returns.
    await q.shutdown()
    name = "hybrid_queue_task_duration_seconds"
    assert sample(registry, f"{name}_count", status="completed") == 3
    assert sample(registry, f"{name}_count", status="failed") == 1
    assert sample(registry, f"{name}_sum", status="failed") > 0
    assert sample(registry, f"{name}_bucket", status="completed", le="+Inf") == 3
    # A cancelled task is counted, but not timed.
    assert sample(registry, "hybrid_queue_tasks_cancelled_total") == 1


async def test_close_unregisters_and_stops_listening(make_queue):
    registry = CollectorRegistry()
    q = await make_queue(1)
    with export_metrics(q, registry=registry, namespace="jobs") as metrics:
        await (await q.submit(abs, 1))
        assert b"jobs_tasks_completed_total" in generate_latest(registry)
    assert b"jobs_" not in generate_latest(registry)
    metrics.close()  # idempotent
    # The listener is gone: the queue goes on without it.
    await (await q.submit(abs, 1))
    with pytest.raises(ValueError, match="not a listener"):
        q.remove_listener(metrics._listener)
    # The same name may be exported again once closed.
    again = export_metrics(q, registry=registry, namespace="jobs")
    assert sample(registry, "jobs_tasks_completed_total") == 2
    again.close()


async def test_queues_share_a_registry_under_distinct_names(make_queue):
    registry = CollectorRegistry()
    fast, slow = await make_queue(1), await make_queue(1)
    first = export_metrics(fast, registry=registry, name="fast")
    second = export_metrics(slow, registry=registry, name="slow")
    await (await fast.submit(abs, 1))
    assert sample(registry, "hybrid_queue_tasks_completed_total", "fast") == 1
    assert sample(registry, "hybrid_queue_tasks_completed_total", "slow") == 0
    with pytest.raises(ValueError, match=r"^a queue named 'fast' already exports metrics"):
        export_metrics(slow, registry=registry, name="fast")
    with pytest.raises(ValueError, match=r"^buckets must match"):
        export_metrics(slow, registry=registry, name="other", buckets=(1.0, 2.0))
    first.close()
    assert sample(registry, "hybrid_queue_tasks_completed_total", "fast") is None
    assert sample(registry, "hybrid_queue_tasks_completed_total", "slow") == 0
    second.close()
    assert b"hybrid_queue_" not in generate_latest(registry)


def test_bad_arguments_are_refused():
    with pytest.raises(TypeError, match=r"^queue must be a HybridQueue"):
        export_metrics(object())  # type: ignore[arg-type]


def test_the_core_never_imports_prometheus_client():
    code = "import sys, hybrid_queue; assert 'prometheus_client' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


async def test_scheduled_tasks_and_per_key_gauges(make_queue):
    registry = CollectorRegistry()
    clock = FakeClock()
    q = await make_queue(1, clock=clock)
    export_metrics(q, registry=registry, name="crawl", keys=True)
    plain = CollectorRegistry()
    export_metrics(q, registry=plain, name="crawl")

    async def job():
        pass

    scheduled = [await q.submit(job, delay=60) for _ in range(2)]
    q.limit("slow.example", concurrency=1)
    q.pause_key("slow.example", 30)
    waiting = [await q.submit(job, key="slow.example") for _ in range(3)]
    assert sample(registry, "hybrid_queue_tasks_scheduled", "crawl") == 2
    assert sample(registry, "hybrid_queue_tasks_pending", "crawl") == 3
    key = {"key": "slow.example"}
    assert sample(registry, "hybrid_queue_key_tasks_waiting", "crawl", **key) == 3
    assert sample(registry, "hybrid_queue_key_tasks_running", "crawl", **key) == 0
    assert sample(registry, "hybrid_queue_key_paused_seconds", "crawl", **key) == 30.0
    # Without keys=True: no series per key (a crawl of many hosts would be many series).
    assert sample(plain, "hybrid_queue_key_tasks_waiting", "crawl", **key) is None
    assert sample(plain, "hybrid_queue_tasks_scheduled", "crawl") == 2
    await clock.sleep(60)
    await asyncio.gather(*scheduled, *waiting)
    assert sample(registry, "hybrid_queue_tasks_scheduled", "crawl") == 0
    assert sample(registry, "hybrid_queue_key_tasks_waiting", "crawl", **key) is None  # an idle key is forgotten
