"""Dask: ``DaskExecutor`` runs sync handlers on a Dask cluster, and the queue's rules hold there too.

- Handlers run with their keyword arguments, every identical submission
  runs (Dask would otherwise merge them by key), and failures are retried.
- What cannot be pickled fails its own task, without retry. A worker killed
  mid-task is rerun by Dask; a task that kills every worker fails with
  ``KilledWorker``, and the queue does not retry it.
- Cancels and timeouts release the slot at once; the executor refuses work
  after shutdown, cancels what is unfinished, and checks its options.

The cluster is made once per module (this file runs after the process pool
tests, so that their processes are forked before the cluster's threads
exist). Handlers are module-level functions, so that they pickle by
reference; handlers that must wait do so on a gate file the test creates.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from _helpers import (
    BOUND,
    FAST,
    ONE_LOOP,
    UNPICKLABLE,
    causes,
    describe,
    double,
    exit_process,
    fail_until,
    lines,
    make_lock,
    note,
    open_gate,
    wait_for,
)
from conftest import wait_until

from hybrid_queue import HybridQueue, RetryPolicy, TaskStatus

distributed = pytest.importorskip("distributed", reason="the Dask tests need the `dask` extra")

from hybrid_queue.dask import DaskExecutor, dask_executor  # noqa: E402  (after the importorskip)

# A worker that dies while running a task counts against the task; past this
# many deaths Dask fails it with KilledWorker. Fixed here (the default is 3)
# so that the tests do not depend on the installed default, and low so that
# a handler that always kills its worker fails fast.
ALLOWED_FAILURES = 1


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Any]:
    """A real local cluster: 2 worker processes of one thread each, on the loopback interface only."""
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES}):
        cluster = distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            host="127.0.0.1",
            # Without a dashboard the scheduler still serves /health and
            # /metrics, by default on port 8787: bind it to the loopback on
            # a free port instead, so that a busy 8787 is no warning (an
            # error here) and nothing listens beyond this machine.
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        )
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


@pytest.fixture
def dask_pool(dask_client) -> Iterator[DaskExecutor]:
    executor = dask_executor(dask_client)
    yield executor
    executor.shutdown(wait=False, cancel_futures=True)


@ONE_LOOP
async def test_dask_runs_handlers_and_keeps_their_keyword_arguments(make_queue, dask_pool):
    q = await make_queue(2, executor=dask_pool)
    handles = [await q.submit(double, i) for i in range(6)]
    # key, retries and pure are Client.submit options: they must reach the handler instead
    # (key is the queue's own option too: bound with partial, as its docstring says).
    handles.append(await q.submit(functools.partial(describe, key="k"), 7, retries=2, pure=False))
    results = await asyncio.gather(*handles)
    assert results == [0, 2, 4, 6, 8, 10, "7 key=k priority=0 retries=2 pure=False"]


@ONE_LOOP
async def test_dask_runs_every_identical_submission(make_queue, dask_pool, tmp_path):
    path = str(tmp_path / "calls")
    # One at a time, so each call's count of the lines is exact (two Dask
    # workers appending at once could both count the same total).
    q = await make_queue(1, executor=dask_pool)
    # Same function, same arguments: one task each all the same.
    handles = [await q.submit(note, path, "call") for _ in range(4)]
    assert await asyncio.gather(*handles) == [1, 2, 3, 4]
    assert lines(path) == ["call"] * 4


@ONE_LOOP
async def test_dask_client_executor_runs_every_identical_submission(make_queue, dask_client, tmp_path):
    path = str(tmp_path / "calls")
    q = await make_queue(4, executor=dask_client.get_executor())
    handles = [await q.submit(note, path, "call") for _ in range(4)]
    await asyncio.gather(*handles)
    assert lines(path) == ["call"] * 4


@ONE_LOOP
async def test_dask_retries_a_failing_handler(make_queue, dask_pool, tmp_path):
    q = await make_queue(2, executor=dask_pool, retry=FAST)
    handle = await q.submit(fail_until, str(tmp_path / "calls"), 2)
    assert await handle == 3
    assert (await q.get_result(handle.task_id)).retry_count == 2


@ONE_LOOP
@pytest.mark.parametrize("what", ["argument", "result"])
async def test_dask_unpicklable_task_fails_and_the_queue_goes_on(make_queue, dask_pool, what):
    q = await make_queue(1, executor=dask_pool, retry=FAST)
    fn, args = UNPICKLABLE[what]()
    result = await q.get_result((await q.submit(fn, *args)).task_id)
    assert result.status is TaskStatus.FAILED
    assert "picklable" in str(result.error), result.error
    assert await (await q.submit(double, 4)) == 8


@ONE_LOOP
async def test_dask_unpicklable_result_is_not_retried(make_queue, dask_pool):
    q = await make_queue(1, executor=dask_pool, retry=FAST)
    result = await q.get_result((await q.submit(make_lock)).task_id)
    assert result.status is TaskStatus.FAILED
    assert result.retry_count == 0


def exit_first_time(marker: str) -> str:
    """End this process on the first call (recorded by creating ``marker``); succeed on the next."""
    if not os.path.exists(marker):
        Path(marker).touch()
        os._exit(1)
    return "recovered"


@ONE_LOOP
async def test_dask_worker_killed_mid_task_is_rerun_by_dask(make_queue, dask_pool, tmp_path):
    q = await make_queue(2, executor=dask_pool, retry=RetryPolicy(max_retries=0))
    handle = await q.submit(exit_first_time, str(tmp_path / "marker"))
    result = await q.get_result(handle.task_id, timeout=BOUND)
    # Dask ran it again on another (or the restarted) worker; the queue saw one attempt.
    assert result.status is TaskStatus.COMPLETED, result
    assert result.result == "recovered" and result.retry_count == 0
    assert await (await q.submit(double, 3)) == 6


@ONE_LOOP
async def test_dask_task_that_kills_every_worker_fails_with_killed_worker(make_queue, dask_pool):
    q = await make_queue(1, executor=dask_pool, retry=RetryPolicy(max_retries=0))
    result = await q.get_result((await q.submit(exit_process)).task_id, timeout=BOUND)
    assert result.status is TaskStatus.FAILED
    assert any(isinstance(e, distributed.KilledWorker) for e in causes(result.error)), result.error
    assert await (await q.submit(double, 3)) == 6


@ONE_LOOP
async def test_dask_killed_worker_is_not_retried_by_the_queue(make_queue, dask_pool):
    q = await make_queue(1, executor=dask_pool, retry=RetryPolicy(max_retries=1, base_delay=0.001))
    result = await q.get_result((await q.submit(exit_process)).task_id, timeout=BOUND)
    assert result.status is TaskStatus.FAILED
    assert result.retry_count == 0


@ONE_LOOP
async def test_dask_cancel_pending_and_running_tasks(make_queue, dask_pool, tmp_path):
    gate, ran = tmp_path / "gate", str(tmp_path / "ran")
    q = await make_queue(1, executor=dask_pool)
    try:
        running = await q.submit(wait_for, str(gate), ran)
        waiting = [await q.submit(note, ran, f"pending {i}") for i in range(3)]
        await wait_until(lambda: os.path.exists(ran), BOUND)
        for handle in waiting:
            assert q.cancel_task(handle.task_id)
        # Cancelling releases the Dask task: the slot is free at once (the
        # gate is still shut), while the worker's thread runs the handler to
        # its end, unobserved. Dask may give that worker new tasks meanwhile;
        # they wait for its thread, so the gate opens before the next task.
        assert q.cancel_task(running.task_id)
        await wait_until(lambda: q.stats().busy_workers == 0, BOUND)
    finally:
        open_gate(gate)
    assert await (await q.submit(double, 5)) == 10
    assert lines(ran) == ["started"]
    assert q.stats().cancelled == 4


@ONE_LOOP
async def test_dask_timeout_fails_the_attempt(make_queue, dask_pool, tmp_path):
    gate = tmp_path / "gate"
    q = await make_queue(1, executor=dask_pool)
    try:
        handle = await q.submit(wait_for, str(gate), max_retries=0, timeout=0.2)
        result = await q.get_result(handle.task_id)
        assert result.status is TaskStatus.FAILED
        assert isinstance(result.error, TimeoutError)
    finally:
        open_gate(gate)
    await wait_until(lambda: q.stats().busy_workers == 0, BOUND)


@ONE_LOOP
async def test_dask_timeout_releases_the_slot_at_once(make_queue, dask_pool, tmp_path):
    gate = tmp_path / "gate"
    q = await make_queue(1, executor=dask_pool)
    try:
        handle = await q.submit(wait_for, str(gate), max_retries=0, timeout=0.2)
        await q.get_result(handle.task_id)
        # The gate is still shut, so only a released Dask task frees the slot.
        await wait_until(lambda: q.stats().busy_workers == 0, 2.0)
    finally:
        open_gate(gate)


def test_dask_from_sync_code_with_submit_blocking(dask_pool):
    # A sync program: the queue on its own loop thread, futures from plain threads.
    with HybridQueue(2, executor=dask_pool) as q:
        futures = [q.submit_blocking(double, i) for i in range(4)]
        assert [f.result(timeout=BOUND) for f in futures] == [0, 2, 4, 6]


def test_dask_executor_uses_the_default_client(dask_client):
    executor = dask_executor()
    assert executor.client is dask_client
    assert executor.submit(describe, 1, priority=3).result(timeout=BOUND) == "1 key= priority=3 retries=0 pure=True"
    executor.shutdown()


def test_dask_executor_passes_its_options_to_every_task(dask_client):
    workers = sorted(dask_client.scheduler_info()["workers"])
    executor = dask_executor(dask_client, workers=workers[:1])
    pids = {executor.submit(os.getpid).result(timeout=BOUND) for _ in range(4)}
    executor.shutdown()
    assert len(pids) == 1


def test_dask_executor_rejects_unknown_options_and_arguments(dask_client):
    with pytest.raises(TypeError, match=r"^dask_executor\(\) got unsupported option\(s\) key, pure, retries; "):
        dask_executor(dask_client, pure=True, key="k", retries=2)
    with pytest.raises(TypeError, match=r"^dask_executor\(\) takes a distributed.Client, "):
        dask_executor(42)


def test_dask_executor_refuses_work_after_shutdown(dask_client):
    executor = dask_executor(dask_client)
    executor.shutdown()
    executor.shutdown()  # idempotent
    with pytest.raises(RuntimeError, match=r"^cannot submit to a DaskExecutor after shutdown\(\)"):
        executor.submit(double, 1)


def test_dask_executor_shutdown_cancel_futures_releases_unfinished_tasks(dask_client, tmp_path):
    gate = tmp_path / "gate"
    executor = dask_executor(dask_client)
    try:
        futures = [executor.submit(wait_for, str(gate)) for _ in range(3)]
        executor.shutdown(wait=True, cancel_futures=True)
        assert all(f.cancelled() for f in futures)
    finally:
        open_gate(gate)


def test_dask_executor_cancel_before_the_task_ends(dask_client, tmp_path):
    gate = tmp_path / "gate"
    executor = dask_executor(dask_client)
    try:
        future = executor.submit(wait_for, str(gate))
        assert future.cancel()  # the future stays PENDING while its task runs
        with pytest.raises(concurrent.futures.CancelledError):
            future.result(timeout=BOUND)
    finally:
        open_gate(gate)
        executor.shutdown()


def test_dask_executor_unpicklable_call_raises_at_submit(dask_client):
    executor = dask_executor(dask_client)
    try:
        with pytest.raises(
            TypeError, match=r"^could not send double and its arguments to the Dask cluster .*picklable"
        ):
            executor.submit(double, make_lock())
        assert executor.submit(double, 2).result(timeout=BOUND) == 4
    finally:
        executor.shutdown()


def refuse_to_unpickle() -> None:
    raise ValueError("this argument cannot be unpickled here")


class Unloadable:
    """Pickles, but raises where it is unpickled."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (refuse_to_unpickle, ())


T = TypeVar("T")


def on_client_loop(client: Any, fn: Callable[[], T]) -> T:
    """Run ``fn`` in one callback on the client's event loop and return its value."""
    done: concurrent.futures.Future[T] = concurrent.futures.Future()

    def call() -> None:
        try:
            done.set_result(fn())
        except BaseException as exc:
            done.set_exception(exc)

    client.loop.add_callback(call)
    return done.result(timeout=BOUND)


def test_dask_executor_call_that_cannot_be_unpickled_fails_alone_in_its_batch(dask_client):
    # Submitted in one callback on the client's loop, the three calls are
    # sent by one _send(), as one graph; the one whose argument cannot be
    # unpickled must fail alone, not take the graph down with it.
    executor = dask_executor(dask_client)
    try:
        futures = on_client_loop(
            dask_client,
            lambda: [executor.submit(double, 1), executor.submit(double, Unloadable()), executor.submit(double, 3)],
        )
        assert futures[0].result(timeout=BOUND) == 2
        assert futures[2].result(timeout=BOUND) == 6
        error = futures[1].exception(timeout=BOUND)
        assert "cannot be unpickled here" in repr(error), error
    finally:
        executor.shutdown()


def test_dask_executor_allow_other_workers_needs_workers(dask_client):
    with pytest.raises(ValueError, match=r"^dask_executor\(allow_other_workers=True\) needs workers="):
        dask_executor(dask_client, allow_other_workers=True)


def test_dask_executor_call_cancelled_before_it_is_sent_never_runs(dask_client, tmp_path):
    path = str(tmp_path / "calls")
    executor = dask_executor(dask_client)
    try:

        def submit_and_cancel() -> concurrent.futures.Future[int]:
            future = executor.submit(note, path, "call")
            assert future.cancel()  # before the _send() queued behind this callback
            return future

        future = on_client_loop(dask_client, submit_and_cancel)
        # Notified as cancelled, so wait() counts it as done.
        done, _ = concurrent.futures.wait([future], timeout=BOUND)
        assert done == {future}
        assert executor.submit(double, 5).result(timeout=BOUND) == 10
        assert not os.path.exists(path)
    finally:
        executor.shutdown()
