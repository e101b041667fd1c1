"""Sync handlers on executors that run them elsewhere: process pools (stdlib and loky) and a Dask cluster.

Handlers are module-level functions, so that they pickle by reference.
Handlers that must wait (to be cancelled, to outlive a timeout) wait for a
gate file in ``tmp_path`` that the test creates when it is done with them:
orderings are forced by files and futures, never by sleeping. Killed
workers are real: the handler ends its own process with ``os._exit``.

Pools and the cluster are made once per module and shared; a test that
breaks a pool makes its own. The process pool tests come first in the file,
so that their processes are forked before the Dask cluster's threads exist.

The executor decides what the queue can do, not the event loop: these tests
run on the default asyncio loop only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from conftest import wait_until

from hybrid_queue import HybridQueue, RetryPolicy, TaskStatus

distributed = pytest.importorskip("distributed", reason="the Dask tests need the `dask` extra")
loky = pytest.importorskip("loky", reason="the loky tests need loky (the `test` extra)")

from hybrid_queue.dask import DaskExecutor, dask_executor  # noqa: E402  (after the importorskip)

ONE_LOOP = pytest.mark.asyncio(loop_factories=["asyncio"])
T = TypeVar("T")
FAST = RetryPolicy(max_retries=3, base_delay=0.001, max_delay=0.004)
# Bound on any one wait for a process, a worker or a gate: generous, as
# restarting a Dask worker takes a fraction of a second on a loaded machine.
BOUND = 30.0


# ------------------------------------------------------------------ handlers


def double(x: int) -> int:
    return 2 * x


def describe(x: int, *, key: str = "", priority: int = 0, retries: int = 0, pure: bool = True) -> str:
    # Keyword names that Client.submit would take as its own options.
    return f"{x} key={key} priority={priority} retries={retries} pure={pure}"


def note(path: str, text: str) -> int:
    """Append a line to ``path``; return how many lines it has now."""
    with open(path, "a", encoding="utf-8") as out:
        out.write(text + "\n")
    with open(path, encoding="utf-8") as lines:
        return sum(1 for _ in lines)


def fail_until(path: str, failures: int) -> int:
    """Fail the first ``failures`` calls (counted in ``path``), then return the call's number."""
    calls = note(path, "call")
    if calls <= failures:
        raise ValueError(f"call {calls} fails on purpose")
    return calls


def wait_for(gate: str, path: str = "") -> str:
    """Block until the file ``gate`` exists (at most BOUND seconds); note the start in ``path``."""
    if path:
        note(path, "started")
    deadline = time.monotonic() + BOUND
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {gate} never opened")
        time.sleep(0.005)
    return "released"


def make_lock() -> threading.Lock:
    return threading.Lock()  # cannot be pickled


def exit_process() -> None:
    os._exit(1)


def exit_first_time(marker: str) -> str:
    """End this process on the first call (recorded by creating ``marker``); succeed on the next."""
    if not os.path.exists(marker):
        Path(marker).touch()
        os._exit(1)
    return "recovered"


UNPICKLABLE = {
    "handler": lambda: (lambda: 1, ()),  # a lambda cannot be pickled by reference
    "argument": lambda: (double, (threading.Lock(),)),
    "result": lambda: (make_lock, ()),
}


def causes(error: BaseException | None) -> list[BaseException]:
    """``error`` and the chain of exceptions it was raised from or during."""
    chain = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def open_gate(gate: Path) -> None:
    gate.touch()


def lines(path: str) -> list[str]:
    """The lines of a file that handlers wrote (small; read on the test's loop)."""
    return Path(path).read_text(encoding="utf-8").splitlines()


# ---------------------------------------------------------- process pools


@pytest.fixture(scope="module")
def process_pool() -> Iterator[concurrent.futures.ProcessPoolExecutor]:
    """Two worker processes, shared by the tests that do not break them."""
    pool = concurrent.futures.ProcessPoolExecutor(2)
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


@ONE_LOOP
async def test_process_pool_runs_handlers_with_args_and_kwargs(make_queue, process_pool):
    q = await make_queue(2, executor=process_pool)
    handles = [await q.submit(double, i) for i in range(6)]
    handles.append(await q.submit(describe, 7, key="k", priority=5))  # priority: the queue's own option
    results = await asyncio.gather(*handles)
    assert results[:6] == [0, 2, 4, 6, 8, 10]
    assert results[6] == "7 key=k priority=0 retries=0 pure=True"
    assert q.stats().completed == 7


@ONE_LOOP
async def test_process_pool_retries_a_failing_handler(make_queue, process_pool, tmp_path):
    q = await make_queue(2, executor=process_pool, retry=FAST)
    calls = str(tmp_path / "calls")
    handle = await q.submit(fail_until, calls, 2)
    assert await handle == 3
    result = await q.get_result(handle.task_id)
    assert result.status is TaskStatus.COMPLETED and result.retry_count == 2


@ONE_LOOP
@pytest.mark.parametrize("what", list(UNPICKLABLE))
async def test_process_pool_unpicklable_task_fails_and_the_queue_goes_on(make_queue, process_pool, what):
    q = await make_queue(1, executor=process_pool, retry=FAST)
    fn, args = UNPICKLABLE[what]()
    bad = await q.submit(fn, *args)
    result = await q.get_result(bad.task_id)
    assert result.status is TaskStatus.FAILED
    assert any("pickle" in str(e) for e in causes(result.error)), result.error
    # The one worker slot is free again: the next task runs.
    assert await (await q.submit(double, 4)) == 8


@ONE_LOOP
@pytest.mark.parametrize("what", list(UNPICKLABLE))
async def test_process_pool_unpicklable_task_is_not_retried(make_queue, process_pool, what):
    q = await make_queue(1, executor=process_pool, retry=FAST)
    fn, args = UNPICKLABLE[what]()
    result = await q.get_result((await q.submit(fn, *args)).task_id)
    assert result.status is TaskStatus.FAILED
    assert result.retry_count == 0
    assert "picklable" in str(result.error)


@ONE_LOOP
async def test_process_pool_cancel_pending_and_running_tasks(make_queue, process_pool, tmp_path):
    gate, ran = tmp_path / "gate", str(tmp_path / "ran")
    q = await make_queue(1, executor=process_pool)
    try:
        running = await q.submit(wait_for, str(gate), ran)
        waiting = [await q.submit(note, ran, f"pending {i}") for i in range(3)]
        await wait_until(lambda: os.path.exists(ran), BOUND)  # the first one started in its process
        for handle in waiting:
            assert q.cancel_task(handle.task_id)
            assert q.status(handle.task_id) is TaskStatus.CANCELLED
        # A running handler in another process cannot be interrupted: the
        # task ends CANCELLED at once, its slot stays busy until it returns.
        assert q.cancel_task(running.task_id)
        assert running.cancelled()
        assert q.stats().busy_workers == 1
        after = await q.submit(double, 5)
    finally:
        open_gate(gate)
    assert await after == 10
    assert lines(ran) == ["started"]  # no cancelled task ever ran
    assert q.stats().cancelled == 4


@ONE_LOOP
async def test_process_pool_timeout_fails_the_attempt_and_the_slot_waits(make_queue, process_pool, tmp_path):
    gate = tmp_path / "gate"
    q = await make_queue(1, executor=process_pool)
    try:
        handle = await q.submit(wait_for, str(gate), max_retries=0, timeout=0.2)
        result = await q.get_result(handle.task_id)
        # The gate was still shut: only the timeout can have ended it.
        assert result.status is TaskStatus.FAILED
        assert isinstance(result.error, TimeoutError)
        assert q.stats().busy_workers == 1  # its process still runs it
    finally:
        open_gate(gate)
    await wait_until(lambda: q.stats().busy_workers == 0, BOUND)
    assert await (await q.submit(double, 1)) == 2


@ONE_LOOP
async def test_broken_process_pool_fails_tasks_in_flight_and_the_queue_goes_on(make_queue):
    pool = concurrent.futures.ProcessPoolExecutor(1)
    try:
        q = await make_queue(2, executor=pool, retry=FAST)
        killer = await q.submit(exit_process)
        result = await q.get_result(killer.task_id)
        assert result.status is TaskStatus.FAILED
        assert any(isinstance(e, concurrent.futures.BrokenExecutor) for e in causes(result.error)), result.error
        # The pool is the caller's: the queue never replaces it. Later tasks
        # fail at once with the pool's error instead of hanging.
        later = await q.get_result((await q.submit(double, 2)).task_id)
        assert later.status is TaskStatus.FAILED
        assert any(isinstance(e, concurrent.futures.BrokenExecutor) for e in causes(later.error)), later.error
        await q.shutdown()
    finally:
        pool.shutdown(wait=True)


@ONE_LOOP
async def test_broken_process_pool_is_not_retried(make_queue):
    pool = concurrent.futures.ProcessPoolExecutor(1)
    try:
        q = await make_queue(1, executor=pool, retry=FAST)
        result = await q.get_result((await q.submit(exit_process)).task_id)
        assert result.status is TaskStatus.FAILED
        assert result.retry_count == 0
        assert "broke" in str(result.error)
    finally:
        pool.shutdown(wait=True)


class PoolFactory:
    """Makes two-process pools for a queue that owns its executor, and remembers each."""

    def __init__(self) -> None:
        self.made: list[concurrent.futures.ProcessPoolExecutor] = []

    def __call__(self) -> concurrent.futures.ProcessPoolExecutor:
        pool = concurrent.futures.ProcessPoolExecutor(2)
        self.made.append(pool)
        return pool


@ONE_LOOP
async def test_owned_process_pool_is_replaced_when_it_breaks(make_queue):
    factory = PoolFactory()
    try:
        q = await make_queue(2, executor=factory, retry=FAST)
        killed = await q.get_result((await q.submit(exit_process)).task_id)
        assert killed.status is TaskStatus.FAILED and killed.retry_count == 0
        assert "broke" in str(killed.error)
        assert await asyncio.gather(*[await q.submit(double, i) for i in range(4)]) == [0, 2, 4, 6]
        assert len(factory.made) == 2
        await q.shutdown()
        for pool in factory.made:  # an owned pool is shut down with the queue
            with pytest.raises(RuntimeError):
                pool.submit(double, 1)
    finally:
        for pool in factory.made:
            pool.shutdown(wait=True)


class UnpicklableError(Exception):
    """Pickles, but cannot be rebuilt: its __init__ takes two arguments and passes one on."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(a)


def return_unrebuildable() -> UnpicklableError:
    return UnpicklableError(1, 2)


@ONE_LOOP
async def test_result_that_cannot_be_unpickled_fails_only_its_task(make_queue, process_pool):
    # Unpickled by the pool's manager thread, such a result would break the
    # whole pool and every task in flight with it.
    q = await make_queue(2, executor=process_pool, retry=FAST)
    bad = await q.get_result((await q.submit(return_unrebuildable)).task_id)
    assert bad.status is TaskStatus.FAILED and bad.retry_count == 0
    assert "cannot be pickled and unpickled" in " ".join(str(e) for e in causes(bad.error))
    assert await (await q.submit(double, 21)) == 42  # the pool still works


class ThreadPoolFactory:
    """Makes thread pools; the first one breaks, as a pool whose thread initializer fails does."""

    def __init__(self) -> None:
        self.made: list[concurrent.futures.ThreadPoolExecutor] = []

    def __call__(self) -> concurrent.futures.ThreadPoolExecutor:
        initializer = _failing_initializer if not self.made else None
        pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="hybrid_queue-test", initializer=initializer)
        self.made.append(pool)
        return pool


def _failing_initializer() -> None:
    raise OSError("the worker thread could not set up")


async def test_owned_thread_pool_is_replaced_when_it_breaks(make_queue):
    factory = ThreadPoolFactory()
    q = await make_queue(2, executor=factory, retry=FAST)
    broken = await q.get_result((await q.submit(abs, -1)).task_id)
    assert broken.status is TaskStatus.FAILED and broken.retry_count == 0
    assert "broke" in str(broken.error)
    await wait_until(lambda: len(factory.made) == 2)
    assert await asyncio.gather(*[await q.submit(abs, -i) for i in range(4)]) == [0, 1, 2, 3]
    await q.shutdown()
    assert all(pool._shutdown for pool in factory.made)


def _refuse() -> concurrent.futures.Executor:
    raise OSError("no executor today")


def test_failed_start_background_leaves_a_queue_that_shuts_down():
    q = HybridQueue(1, executor=_refuse)
    future = q.submit_blocking(abs, -1)
    with pytest.raises(OSError, match="no executor today"):
        q.start_background()
    q.shutdown_blocking()  # settles what was submitted, on a loop of its own
    assert future.cancelled()


def test_no_replacement_once_the_queue_has_taken_its_executor():
    made: list[concurrent.futures.Executor] = []

    def factory() -> concurrent.futures.Executor:
        made.append(concurrent.futures.ThreadPoolExecutor(1))
        return made[-1]

    q = HybridQueue(1, executor=factory)
    runner = q._runner
    runner.open()
    first = runner.take_executor()  # what shutdown does
    assert first is made[0]
    assert runner._replace(first) is None  # a late report of a break makes nothing new
    assert len(made) == 1
    first.shutdown()


# -------------------------------------------------------------------- loky


@pytest.fixture(scope="module")
def loky_pool() -> Iterator[concurrent.futures.Executor]:
    pool = loky.ProcessPoolExecutor(2)
    yield pool
    pool.shutdown(wait=True)


@ONE_LOOP
async def test_loky_runs_handlers_and_cloudpickles_lambdas(make_queue, loky_pool):
    q = await make_queue(2, executor=loky_pool)
    handles = [await q.submit(double, i) for i in range(4)]
    handles.append(await q.submit(lambda x: x + 1, 41))  # loky pickles functions by value
    assert await asyncio.gather(*handles) == [0, 2, 4, 6, 42]


@ONE_LOOP
async def test_loky_killed_worker_fails_the_task(make_queue):
    pool = loky.ProcessPoolExecutor(1)
    try:
        q = await make_queue(1, executor=pool, retry=RetryPolicy(max_retries=0))
        result = await q.get_result((await q.submit(exit_process)).task_id)
        assert result.status is TaskStatus.FAILED
        assert any(isinstance(e, concurrent.futures.BrokenExecutor) for e in causes(result.error)), result.error
    finally:
        pool.shutdown(wait=True)


# -------------------------------------------------------------------- Dask

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
    # key, retries and pure are Client.submit options: they must reach the handler instead.
    handles.append(await q.submit(describe, 7, key="k", retries=2, pure=False))
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


# -------------------------------------------------------------- dask_executor


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


def refuse_to_unpickle() -> None:
    raise ValueError("this argument cannot be unpickled here")


class Unloadable:
    """Pickles, but raises where it is unpickled."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (refuse_to_unpickle, ())


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
