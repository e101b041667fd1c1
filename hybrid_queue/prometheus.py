"""Prometheus metrics for a HybridQueue: its statistics, read at scrape time, and a task duration histogram.

Needs ``prometheus_client`` (``pip install hybrid_queue[prometheus]``); the
rest of hybrid_queue never imports it. ::

    from hybrid_queue.prometheus import export_metrics

    metrics = export_metrics(queue, name="images")  # into prometheus_client.REGISTRY
    ...
    metrics.close()

Every metric carries a ``queue`` label (the ``name`` given), so several
queues can share one registry. With the default namespace the series are:

- counters ``hybrid_queue_tasks_{submitted,completed,failed,cancelled}_total``,
  ``hybrid_queue_task_retries_total`` and
  ``hybrid_queue_results_{expired,evicted}_total``;
- gauges ``hybrid_queue_tasks_{scheduled,pending,running,retrying}``,
  ``hybrid_queue_workers``, ``hybrid_queue_workers_busy`` and
  ``hybrid_queue_results_stored``;
- the histogram ``hybrid_queue_task_duration_seconds``, labelled
  ``status="completed"`` or ``"failed"``: first attempt's start to the end,
  retry delays included (as ``TaskResult.duration_ms``);
- with ``keys=True``, per key (label ``key``: a str key as it is, another
  as ``type:repr``, e.g. ``int:1``): gauges
  ``hybrid_queue_key_tasks_{waiting,running}`` and
  ``hybrid_queue_key_paused_seconds`` (time left of a ``pause_key``), for
  the keys the queue keeps state for (those with work, a pause or a bucket
  refilling). Off by default: a crawl of a million hosts would be a
  million series.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Hashable, Iterable, Iterator, Sequence
from types import TracebackType

from prometheus_client import REGISTRY, CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ._events import EventKind, TaskEvent
from ._queue import HybridQueue
from ._stats import KeyStats

__all__ = ["QueueMetrics", "export_metrics"]

# (QueueStats field, metric name after the namespace, help text)
_COUNTERS = (
    ("submitted", "tasks_submitted", "Tasks accepted by the queue."),
    ("completed", "tasks_completed", "Tasks whose handler returned a value."),
    ("failed", "tasks_failed", "Tasks that failed: out of retries, or an error not retried."),
    ("cancelled", "tasks_cancelled", "Tasks cancelled before they finished."),
    ("retries", "task_retries", "Retries scheduled, over all tasks."),
    ("results_expired", "results_expired", "Stored results dropped when their result_ttl passed."),
    ("results_evicted", "results_evicted", "Stored results dropped to keep at most max_results."),
)
_GAUGES = (
    ("scheduled", "tasks_scheduled", "Tasks submitted with a delay whose time has not come (they hold no worker)."),
    ("pending", "tasks_pending", "Tasks waiting for a worker, or for their key's turn or limit."),
    ("running", "tasks_running", "Tasks whose handler is running."),
    ("retrying", "tasks_retrying", "Tasks waiting out a retry delay (they hold no worker)."),
    ("workers", "workers", "How many handlers may run at once."),
    ("busy_workers", "workers_busy", "Worker slots in use, abandoned sync handlers still returning included."),
    ("results_stored", "results_stored", "Results in the result store."),
)
# (KeyStats field, metric name after the namespace, help text)
_KEY_GAUGES = (
    ("waiting", "key_tasks_waiting", "Tasks of the key waiting to start."),
    ("running", "key_tasks_running", "Worker slots held by tasks of the key."),
    ("paused_for", "key_paused_seconds", "Seconds left of the key's pause (pause_key); 0 when not paused."),
)
_OBSERVED = {EventKind.COMPLETED: "completed", EventKind.FAILED: "failed"}


class _Collector:
    """Every exported queue of one namespace in one registry.

    One collector per (registry, namespace), not one per queue: a registry
    refuses two collectors that produce the same metric names.
    """

    def __init__(self, namespace: str, buckets: tuple[float, ...]) -> None:
        self.namespace = namespace
        self.buckets = buckets
        self.lock = threading.Lock()
        self.queues: dict[str, HybridQueue] = {}
        self.with_keys: set[str] = set()  # names of the queues exported with keys=True
        # Not registered itself: collect() yields it with the rest.
        self.durations = Histogram(
            "task_duration_seconds",
            "Task duration from its first attempt's start to its end, retry delays included.",
            ["queue", "status"],
            namespace=namespace,
            buckets=buckets,
            registry=None,
        )

    def describe(self) -> Iterable[Metric]:
        # Lets the registry check for name clashes without reading any stats.
        return self._families((), ())

    def collect(self) -> Iterable[Metric]:
        with self.lock:
            queues = list(self.queues.items())
            with_keys = set(self.with_keys)
        # stats() is a consistent snapshot; take it outside our lock.
        snapshots = [(name, q.stats().as_dict()) for name, q in queues]
        keys = [(name, q.key_stats()) for name, q in queues if name in with_keys]
        return self._families(snapshots, keys)

    def _families(
        self,
        snapshots: Sequence[tuple[str, dict[str, int]]],
        keys: Sequence[tuple[str, dict[Hashable, KeyStats]]],
    ) -> Iterator[Metric]:
        prefix = f"{self.namespace}_" if self.namespace else ""
        for field, name, text in _COUNTERS:
            counter = CounterMetricFamily(prefix + name, text, labels=["queue"])
            for queue, stats in snapshots:
                counter.add_metric([queue], stats[field])
            yield counter
        for field, name, text in _GAUGES:
            gauge = GaugeMetricFamily(prefix + name, text, labels=["queue"])
            for queue, stats in snapshots:
                gauge.add_metric([queue], stats[field])
            yield gauge
        for field, name, text in _KEY_GAUGES:
            gauge = GaugeMetricFamily(prefix + name, text, labels=["queue", "key"])
            for queue, by_key in keys:
                for key, key_stats in by_key.items():
                    gauge.add_metric([queue, _key_label(key)], getattr(key_stats, field))
            yield gauge
        yield from self.durations.collect()


# Collectors by registry, then namespace. Weak: a registry that is dropped
# takes its collectors with it.
_collectors: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, _Collector]] = weakref.WeakKeyDictionary()
_collectors_lock = threading.Lock()


class QueueMetrics:
    """The metrics of one queue in one registry, as made by :func:`export_metrics`.

    ``close()`` (or leaving a ``with`` block) stops them: the queue's series
    leave the registry and the duration listener leaves the queue.
    """

    def __init__(self, queue: HybridQueue, name: str, registry: CollectorRegistry, collector: _Collector) -> None:
        self.queue = queue
        self.name = name
        self.registry = registry
        self._collector = collector
        self._closed = False
        self._lock = threading.Lock()
        durations = collector.durations
        # Made now so both series are exported, at zero, before the first task ends.
        self._children = {kind: durations.labels(name, status) for kind, status in _OBSERVED.items()}
        # One bound method, kept, so remove_listener gets the very object added.
        self._listener = self._on_event

    def _on_event(self, event: TaskEvent) -> None:
        # On the queue's loop thread; Histogram.observe is thread-safe
        # against a scrape in another thread.
        child = self._children.get(event.kind)
        if child is not None and event.duration_ms is not None:
            child.observe(event.duration_ms / 1000.0)

    def close(self) -> None:
        """Remove this queue's series from the registry and stop listening to it. Idempotent; any thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.queue.remove_listener(self._listener)
        collector = self._collector
        with _collectors_lock:
            with collector.lock:
                del collector.queues[self.name]
                collector.with_keys.discard(self.name)
                empty = not collector.queues
            for status in _OBSERVED.values():
                collector.durations.remove(self.name, status)
            if empty:
                self.registry.unregister(collector)
                by_namespace = _collectors.get(self.registry)
                if by_namespace is not None:
                    by_namespace.pop(collector.namespace, None)

    def __enter__(self) -> QueueMetrics:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<QueueMetrics {self._collector.namespace}{{queue={self.name!r}}} {state}>"


def export_metrics(
    queue: HybridQueue,
    *,
    registry: CollectorRegistry | None = None,
    namespace: str = "hybrid_queue",
    name: str = "default",
    buckets: Sequence[float] = Histogram.DEFAULT_BUCKETS,
    keys: bool = False,
) -> QueueMetrics:
    """Export ``queue``'s statistics and task durations to ``registry`` (default: prometheus_client's).

    The counters and gauges are read from ``queue.stats()`` at each scrape,
    so they cost nothing between scrapes. The duration histogram (seconds,
    ``buckets``) is fed by a listener on the queue's events. Every series
    has the label ``queue=name``; queues sharing a registry and a namespace
    need distinct names (and the same ``buckets``), else ValueError.
    ``keys=True`` adds the per-key gauges (see the module docstring).
    Returns a :class:`QueueMetrics`; its ``close()`` undoes this.

    Any thread, before or after the queue starts.
    """
    if not isinstance(queue, HybridQueue):
        raise TypeError(f"queue must be a HybridQueue, got {queue!r}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str (the queue label's value), got {name!r}")
    if not isinstance(namespace, str):
        raise TypeError(f"namespace must be a str, got {namespace!r}")
    if keys is not True and keys is not False:
        raise TypeError(f"keys must be True or False, got {keys!r}")
    registry = REGISTRY if registry is None else registry
    bounds = tuple(float(b) for b in buckets)
    with _collectors_lock:
        by_namespace = _collectors.setdefault(registry, {})
        collector = by_namespace.get(namespace)
        if collector is None:
            collector = _Collector(namespace, bounds)
            # Raises if another collector already has these metric names.
            registry.register(collector)
            by_namespace[namespace] = collector
        elif collector.buckets != bounds:
            raise ValueError(
                f"buckets must match those of the queues already exported to namespace {namespace!r}: "
                f"{collector.buckets!r}, got {bounds!r}"
            )
        with collector.lock:
            if name in collector.queues:
                raise ValueError(
                    f"a queue named {name!r} already exports metrics to this registry under namespace "
                    f"{namespace!r}; pass another name= (or close() its QueueMetrics first)"
                )
            collector.queues[name] = queue
            if keys:
                collector.with_keys.add(name)
        metrics = QueueMetrics(queue, name, registry, collector)
    queue.add_listener(metrics._listener)
    return metrics


def _key_label(key: Hashable) -> str:
    # A str key as it is; any other with its type, so that 1 and "1" stay two series.
    return key if isinstance(key, str) else f"{type(key).__name__}:{key!r}"
