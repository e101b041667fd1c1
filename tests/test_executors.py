"""Executors: where sync handlers run, and who shuts the executor down.

- By default the queue owns a ``WorkerPool``: ThreadPoolExecutor's contract,
  threads started only when none is idle, and a process that exits once the
  pool is shut down (or past a stuck call). An owned executor that breaks is
  replaced; the user's executor is never shut down by the queue.
- An executor that refuses a call, breaks, or is shut down under the queue
  fails the tasks it held and frees their slots: no task is lost.
- Process pools (stdlib and loky) run module-level handlers with their
  arguments, retries, cancels and timeouts; what cannot be pickled fails
  its own task only, without retry. test_executors_dask.py has Dask.

Handlers that run in another process are module-level functions, so that
they pickle by reference (those test_executors_dask.py uses too are in
_helpers.py). Handlers that must wait (to be cancelled, to outlive a
timeout) wait for a gate file in ``tmp_path`` that the test creates when it
is done with them: orderings are forced by files, futures, Events and
Barriers, never by sleeping. Killed workers are real: the handler ends
its own process with ``os._exit``. The process pool tests run on the default
asyncio loop only: the executor decides what the queue can do, not the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import gc
import os
import subprocess
import sys
import textwrap
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from _helpers import (
    BOUND,
    FAST,
    HUGE,
    NO_RETRY,
    ONE_LOOP,
    SAFETY,
    UNPICKLABLE,
    assert_identity,
    assert_nothing_lost,
    causes,
    describe,
    double,
    exit_process,
    fail_until,
    lines,
    note,
    open_gate,
    shut_down,
    wait_for,
)
from conftest import wait_until

from hybrid_queue import HybridQueue, RetryPolicy, TaskStatus
from hybrid_queue._pool import WorkerPool

# distributed, once imported, makes every exception class that exists then
# picklable by value (tblib's pickling support), which would let
# UnpicklableError below be rebuilt. Import it (when the Dask extra is
# installed) before this module defines its classes, so that the result of
# test_result_that_cannot_be_unpickled_fails_only_its_task does not depend
# on which test file imported Dask first.
try:
    import distributed  # noqa: F401
except ImportError:
    pass

# ------------------------------------------------ the queue's own pool

PREFIX = "hybrid_queue_pooltest"  # the conftest leak check covers "hybrid_queue*" threads


def blocker(started: threading.Event, gate: threading.Event) -> Callable[[], str]:
    def call() -> str:
        started.set()
        gate.wait()
        return "released"

    return call


class Pools:
    """Makes pools and gates; at teardown opens every gate, then shuts every pool down."""

    def __init__(self) -> None:
        self.made: list[WorkerPool] = []
        self.gates: list[threading.Event] = []

    def new(self, max_workers: int) -> WorkerPool:
        pool = WorkerPool(max_workers, thread_name_prefix=PREFIX)
        self.made.append(pool)
        return pool

    def gate(self) -> threading.Event:
        event = threading.Event()
        self.gates.append(event)
        return event

    def occupy(self, pool: WorkerPool) -> tuple[threading.Event, concurrent.futures.Future[str]]:
        """Hold one thread of ``pool`` in a call until the returned gate opens; the call's future."""
        gate = self.gate()
        started = threading.Event()
        running = pool.submit(blocker(started, gate))
        started.wait()
        return gate, running

    def close(self) -> None:
        for event in self.gates:
            event.set()
        for pool in self.made:
            pool.shutdown(wait=True)


@pytest.fixture
def pools() -> Iterator[Pools]:
    made = Pools()
    yield made
    made.close()


@pytest.mark.pool
def test_results_and_exceptions_go_into_the_futures(pools: Pools) -> None:
    pool = pools.new(2)

    def fail() -> None:
        raise ValueError("boom")

    assert pool.submit(divmod, 7, 2).result() == (3, 1)
    assert pool.submit(dict, a=1).result() == {"a": 1}
    with pytest.raises(ValueError, match=r"^boom$"):
        pool.submit(fail).result()
    assert list(pool.map(abs, [-1, -2, 3])) == [1, 2, 3]


def pool_threads() -> list[threading.Thread]:
    return sorted((t for t in threading.enumerate() if t.name.startswith(PREFIX + "_")), key=lambda t: t.name)


@pytest.mark.pool
@pytest.mark.parametrize("exc_type", [SystemExit, KeyboardInterrupt])
def test_base_exceptions_go_into_the_future_and_the_thread_lives_on(
    pools: Pools, exc_type: type[BaseException]
) -> None:
    # As ThreadPoolExecutor in 3.11: _WorkItem.run catches BaseException.
    pool = pools.new(1)

    def escape() -> None:
        raise exc_type("out")

    future = pool.submit(escape)
    assert isinstance(future.exception(), exc_type)
    assert pool.submit(threading.get_ident).result() == pool_threads()[0].ident
    assert len(pool_threads()) == 1


@pytest.mark.pool
def test_an_idle_thread_is_reused_instead_of_starting_another(pools: Pools) -> None:
    pool = pools.new(4)
    idents = {pool.submit(threading.get_ident).result() for _ in range(20)}
    assert len(idents) == 1
    assert [t.name for t in pool_threads()] == [f"{PREFIX}_0"]


@pytest.mark.pool
def test_threads_start_when_none_is_idle_up_to_max_workers(pools: Pools) -> None:
    pool = pools.new(3)
    gate = pools.gate()
    # Three calls run at once: each waits for the other two.
    together = threading.Barrier(3)

    def meet() -> int:
        together.wait()
        return threading.get_ident()

    futures = [pool.submit(meet) for _ in range(3)]
    idents = {f.result() for f in futures}
    assert len(idents) == 3
    # All three busy again, and more calls queued: no fourth thread.
    started = [threading.Event() for _ in range(3)]
    held = [pool.submit(blocker(s, gate)) for s in started]
    for s in started:
        s.wait()
    queued = [pool.submit(threading.get_ident) for _ in range(5)]
    assert [t.name for t in pool_threads()] == [f"{PREFIX}_{i}" for i in range(3)]
    assert not any(f.done() for f in queued)
    gate.set()
    assert {f.result() for f in held} == {"released"}
    assert {f.result() for f in queued} <= idents


@pytest.mark.pool
def test_threads_are_daemon_and_named_with_the_prefix(pools: Pools) -> None:
    pool = pools.new(2)
    gate, _ = pools.occupy(pool)
    pool.submit(gate.wait)
    threads = pool_threads()
    assert [t.name for t in threads] == [f"{PREFIX}_0", f"{PREFIX}_1"]
    assert all(t.daemon for t in threads)


@pytest.mark.pool
def test_default_prefix_is_hybrid_queue() -> None:
    pool = WorkerPool(1)
    try:
        name = pool.submit(lambda: threading.current_thread().name).result()
    finally:
        pool.shutdown(wait=True)
    assert name == "hybrid_queue_0"


@pytest.mark.pool
def test_max_workers_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"^max_workers must be greater than 0$"):
        WorkerPool(0)


@pytest.mark.pool
def test_a_future_cancelled_before_it_started_is_never_called(pools: Pools) -> None:
    pool = pools.new(1)
    calls: list[int] = []
    gate, first = pools.occupy(pool)
    second = pool.submit(calls.append, 2)
    third = pool.submit(calls.append, 3)
    assert second.cancel()
    assert not first.cancel()  # running
    gate.set()
    third.result()
    assert calls == [3]
    assert second.cancelled()


@pytest.mark.pool
def test_shutdown_wait_returns_after_every_call_and_thread_ended(pools: Pools) -> None:
    pool = pools.new(2)
    gate, running = pools.occupy(pool)
    queued = pool.submit(lambda: "queued")
    # Opened from another thread while shutdown waits below.
    opener = threading.Thread(target=gate.set)
    opener.start()
    pool.shutdown(wait=True)
    opener.join()
    assert running.result(timeout=0) == "released"
    assert queued.result(timeout=0) == "queued"
    assert not any(t.is_alive() for t in pool_threads())


@pytest.mark.pool
def test_shutdown_without_wait_still_runs_the_queued_calls(pools: Pools) -> None:
    pool = pools.new(1)
    gate, _ = pools.occupy(pool)
    queued = pool.submit(lambda: "ran")
    pool.shutdown(wait=False)
    gate.set()
    assert queued.result() == "ran"


@pytest.mark.pool
def test_shutdown_cancel_futures_cancels_the_queued_calls_only(pools: Pools) -> None:
    pool = pools.new(1)
    gate, running = pools.occupy(pool)
    queued = [pool.submit(lambda: "ran") for _ in range(3)]
    cancelled_from: list[concurrent.futures.Future[str]] = []
    queued[0].add_done_callback(cancelled_from.append)
    pool.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in queued)
    assert cancelled_from == [queued[0]]
    assert not running.done()
    gate.set()
    pool.shutdown(wait=True)  # idempotent, and waits this time
    assert running.result(timeout=0) == "released"


@pytest.mark.pool
def test_submit_after_shutdown_raises_the_stdlib_error(pools: Pools) -> None:
    pool = pools.new(1)
    pool.shutdown()
    pool.shutdown()
    with pytest.raises(RuntimeError, match=r"^cannot schedule new futures after shutdown$"):
        pool.submit(print)


@pytest.mark.pool
def test_context_manager_shuts_down_and_waits() -> None:
    with WorkerPool(2, thread_name_prefix=PREFIX) as pool:
        future = pool.submit(sum, [1, 2])
    assert future.result(timeout=0) == 3
    assert not any(t.is_alive() for t in pool_threads())


@pytest.mark.pool
def test_submit_racing_shutdown_either_raises_or_runs(pools: Pools) -> None:
    # The shutdown flag is checked under the lock that covers the put, so no
    # accepted call is stranded behind shutdown's wake-up.
    pool = pools.new(2)
    go = threading.Barrier(5)
    accepted: list[concurrent.futures.Future[int]] = []
    refused = 0
    count = threading.Lock()

    def submitter() -> None:
        nonlocal refused
        go.wait()
        for i in range(200):
            try:
                future = pool.submit(abs, -i)
            except RuntimeError:
                with count:
                    refused += 1
            else:
                accepted.append(future)

    threads = [threading.Thread(target=submitter) for _ in range(4)]
    for t in threads:
        t.start()
    go.wait()
    pool.shutdown(wait=True)
    for t in threads:
        t.join()
    assert len(accepted) + refused == 800
    assert all(f.done() and not f.cancelled() for f in accepted)


@pytest.mark.pool
def test_a_collected_pool_lets_its_idle_threads_exit() -> None:
    pool = WorkerPool(2, thread_name_prefix=PREFIX)
    together = threading.Barrier(2)
    for f in [pool.submit(together.wait) for _ in range(2)]:
        f.result()
    threads = pool_threads()
    assert len(threads) == 2
    ref = weakref.ref(pool)
    del pool, f
    # The threads do not hold the pool: it is gone without a collection.
    assert ref() is None
    for t in threads:
        t.join(BOUND)
    assert not any(t.is_alive() for t in threads)


@pytest.mark.pool
def test_a_collected_pool_in_a_cycle_lets_its_threads_exit() -> None:
    pool: Any = WorkerPool(1, thread_name_prefix=PREFIX)
    pool.submit(int).result()
    pool.itself = pool
    (thread,) = pool_threads()
    del pool
    gc.collect()
    thread.join(BOUND)
    assert not thread.is_alive()


def run_program(body: str, *, import_pool: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``body`` in a child interpreter (after importing WorkerPool, unless told not to)."""
    program = textwrap.dedent(body)
    if import_pool:
        program = "import threading\nfrom hybrid_queue._pool import WorkerPool\n" + program
    return subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)


@pytest.mark.pool
def test_process_exits_though_a_pool_shut_down_without_wait_has_a_stuck_call() -> None:
    # ThreadPoolExecutor in this program hangs: its exit hook joins the thread.
    done = run_program(
        """
        stuck = threading.Event()
        started = threading.Event()
        pool = WorkerPool(2)
        pool.submit(lambda: (started.set(), stuck.wait()))
        started.wait()
        pool.shutdown(wait=False)
        print("main done", flush=True)
        """
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "main done\n", "")


@pytest.mark.pool
def test_at_exit_a_pool_never_shut_down_finishes_its_calls() -> None:
    # The gate opens in an atexit hook registered after the pool module's
    # (so it runs first): the calls are still waiting when the program ends.
    done = run_program(
        """
        import atexit
        gate = threading.Event()
        atexit.register(gate.set)
        pool = WorkerPool(1)
        pool.submit(lambda: (gate.wait(), print("first", flush=True)))
        pool.submit(print, "second", flush=True)
        print("main done", flush=True)
        """
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "main done\nfirst\nsecond\n", "")


@pytest.mark.pool
def test_after_the_exit_hook_submit_is_refused() -> None:
    # Hooks run last-registered first: this one, registered before the pool
    # module is imported, runs after the pool module's hook.
    done = run_program(
        """
        import atexit

        def late():
            try:
                pool.submit(print, "ran")
            except RuntimeError as exc:
                print(exc, flush=True)

        atexit.register(late)
        from hybrid_queue._pool import WorkerPool
        pool = WorkerPool(1)
        """,
        import_pool=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        "cannot schedule new futures after interpreter shutdown\n",
        "",
    )


# -------------------------------------------- the queue and its executor


async def test_executor_passed_in_is_not_shut_down():
    with concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="user") as pool:
        async with HybridQueue(2, executor=pool) as q:
            assert await (await q.submit(abs, -5)) == 5
        assert pool.submit(abs, -1).result() == 1


def _failing_initializer() -> None:
    raise OSError("the worker thread could not set up")


class ThreadPoolFactory:
    """Makes thread pools; the first one breaks, as a pool whose thread initializer fails does."""

    def __init__(self) -> None:
        self.made: list[concurrent.futures.ThreadPoolExecutor] = []

    def __call__(self) -> concurrent.futures.ThreadPoolExecutor:
        initializer = _failing_initializer if not self.made else None
        pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="hybrid_queue-test", initializer=initializer)
        self.made.append(pool)
        return pool


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
    executors = q._runner.executors
    executors.open()
    first = executors.take()  # what shutdown does
    assert first is made[0]
    assert executors.replace(first) is None  # a late report of a break makes nothing new
    assert len(made) == 1
    first.shutdown()


@pytest.mark.hardening
def test_the_pool_lets_go_of_its_threads_without_a_lock_for_a_finalizer():
    from hybrid_queue import _pool

    pool = _pool.WorkerPool(2, thread_name_prefix="hybrid_queue-abandon")
    assert pool.submit(abs, -1).result(10) == 1
    # A collection may run a dropped queue's finalizer on a thread that
    # holds the registry's lock (or the pool's): abandon() takes neither.
    with _pool._registry_lock, pool._lock:
        pool.abandon()
    with pytest.raises(RuntimeError):
        pool.submit(abs, -1)
    # The no_leaked_threads fixture checks that its threads end.


class _RejectsKeywords(concurrent.futures.ThreadPoolExecutor):
    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        raise ValueError("this executor takes no keyword arguments")


@pytest.mark.races
async def test_executor_raising_on_submit_fails_the_task_and_frees_the_slot(make_queue):
    with _RejectsKeywords(1) as pool:
        q = await make_queue(1, executor=pool)
        h = await q.submit(abs, -1)
        with pytest.raises(RuntimeError, match="refused"):
            await asyncio.wait_for(h, 5)
        assert q.stats().busy_workers == 0
        assert await (await q.submit(asyncio.sleep, 0, "coroutines still run")) == "coroutines still run"


@pytest.mark.races
async def test_broken_pool_fails_the_task_and_frees_the_slot(make_queue):
    def broken_initializer():
        raise OSError("no device")

    with concurrent.futures.ThreadPoolExecutor(1, initializer=broken_initializer) as pool:
        q = await make_queue(1, executor=pool)
        h = await q.submit(abs, -1)
        with pytest.raises(RuntimeError, match="broke"):
            await asyncio.wait_for(h, 5)
        await wait_until(lambda: q.stats().busy_workers == 0)
        assert_identity(q)


@pytest.mark.faults
async def test_user_executor_shut_down_under_the_queue(make_queue):
    """A ThreadPoolExecutor passed in, shut down by its owner while the queue still uses it.

    Sync tasks submitted afterwards fail at once (FAILED, not retried: the
    pool will not come back) with a RuntimeError that names the executor
    and says not to shut it down; coroutine tasks are unaffected; nothing is
    lost, the queue's own shutdown finishes, and it never touches the pool.
    """
    with concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="user-pool") as pool:
        q = await make_queue(2, executor=pool, retry=RetryPolicy(max_retries=3, base_delay=0))
        async with asyncio.timeout(5):
            assert await (await q.submit(abs, -1)) == 1
        pool.shutdown(wait=True)

        async def coro(i):
            return i

        refused = [await q.submit(abs, -i) for i in range(3)]
        fine = [await q.submit(coro, i) for i in range(3)]
        from_thread = await asyncio.to_thread(q.submit_blocking, abs, -9)
        async with asyncio.timeout(5):
            assert await asyncio.gather(*fine) == [0, 1, 2]
            for h in refused:
                with pytest.raises(RuntimeError, match=r"executor refused task .*do not shut down an executor"):
                    await h
            with pytest.raises(RuntimeError, match="executor refused"):
                await asyncio.wrap_future(from_thread)
        for h in refused:
            r = await q.get_result(h.task_id)
            assert r.status is TaskStatus.FAILED and r.retry_count == 0
        s = q.stats()
        assert (s.completed, s.failed, s.retries, s.busy_workers) == (4, 4, 0, 0)
        assert_nothing_lost(q, [*refused, *fine, from_thread])
        await shut_down(q)


@pytest.mark.faults
async def test_user_executor_shut_down_with_cancel_futures_loses_no_task(make_queue):
    """A user pool shut down with ``cancel_futures=True`` while a claimed task waits inside it.

    With ``workers=2`` and a one-thread pool, the second sync task is handed
    to the pool and waits in the pool's own queue; the owner's
    ``shutdown(cancel_futures=True)`` cancels that work item. The queue must
    not lose the task: it ends FAILED with an error naming the executor (as
    a refused one does), its worker slot is freed, and the queue's shutdown
    finishes.
    """
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="user-pool") as pool:
        q = await make_queue(2, executor=pool, retry=NO_RETRY)
        entered = threading.Event()
        release = threading.Event()

        def occupies_the_thread():
            entered.set()
            release.wait(SAFETY)
            return "first"

        try:
            first = await q.submit(occupies_the_thread)
            second = await q.submit(abs, -2)  # claimed, queued inside the pool behind `first`
            await asyncio.to_thread(entered.wait, 5)
            assert q.stats().running == 2
            pool.shutdown(wait=False, cancel_futures=True)
            release.set()
            async with asyncio.timeout(5):
                assert await first == "first"
            await asyncio.wait({second}, timeout=1.0)
            assert second.done(), f"task lost inside the cancelled pool: {q.stats()}"
            with pytest.raises(RuntimeError, match="executor"):
                second.result()
            await wait_until(lambda: q.stats().busy_workers == 0, bound=1.0)
            assert_nothing_lost(q, [first, second])
            await shut_down(q, bound=2.0)
        finally:
            release.set()
            await q.shutdown(wait=False)


@pytest.mark.races
async def test_pool_shut_down_with_cancel_futures_while_the_heap_is_not_empty_does_not_deadlock(make_queue):
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="user-pool") as pool:
        q = await make_queue(2, executor=pool, retry=RetryPolicy(max_retries=0))
        entered = threading.Event()
        release = threading.Event()

        def occupies():
            entered.set()
            release.wait(10)
            return "first"

        first = await q.submit(occupies)
        queued = await q.submit(abs, -1)  # claimed, waits inside the pool
        waiting = await q.submit(abs, -2)  # waits in the heap
        await asyncio.to_thread(entered.wait, 5)
        # Cancelling the queued chain runs our callback inside pool.shutdown();
        # starting the next task from there would take the pool's lock again.
        await asyncio.wait_for(asyncio.to_thread(pool.shutdown, wait=False, cancel_futures=True), 5)
        release.set()
        assert await asyncio.wait_for(first, 5) == "first"
        for h in (queued, waiting):
            with pytest.raises(RuntimeError, match="executor"):
                await asyncio.wait_for(h, 5)
        await wait_until(lambda: q.stats().busy_workers == 0)
        assert_identity(q)


# --------------------------------------------------------- process pools


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
    # priority and key: the queue's own options; key reaches the handler bound with partial.
    handles.append(await q.submit(functools.partial(describe, key="k"), 7, priority=5))
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


def _returns_bytes(size):
    return bytes(size)


def _returns_lambda():
    return lambda: 1


def _returns_lock():
    return threading.Lock()


def _square(x):
    return x * x


@pytest.mark.faults
async def test_process_pool_unpicklable_result_fails_that_task_only(make_queue):
    """Sync handlers on a ``ProcessPoolExecutor(1)`` returning a lambda, a lock, and 50 MB.

    A result that cannot be pickled back fails its task (FAILED) with the
    pool's pickling error; the huge result crosses and is returned whole;
    the pool and the queue go on with the next task.
    """
    with concurrent.futures.ProcessPoolExecutor(1) as pool:
        q = await make_queue(1, executor=pool, retry=NO_RETRY)
        bad = [await q.submit(_returns_lambda), await q.submit(_returns_lock)]
        huge = await q.submit(_returns_bytes, HUGE)
        fine = await q.submit(_square, 7)
        async with asyncio.timeout(20):
            for h in bad:
                with pytest.raises(Exception, match="pickle"):
                    await h
            assert len(await huge) == HUGE
            assert await fine == 49
        for h in bad:
            r = await q.get_result(h.task_id)
            assert r.status is TaskStatus.FAILED and "pickle" in str(r.error)
        s = q.stats()
        assert (s.failed, s.completed, s.busy_workers) == (2, 2, 0)
        assert_nothing_lost(q, [*bad, huge, fine])
        await shut_down(q, bound=10.0)


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


# ------------------------------------------------------------------ loky


def import_loky() -> Any:
    """The loky module; skips the test that asks for it when loky (of the `test` extra) is missing."""
    return pytest.importorskip("loky", reason="the loky tests need loky (the `test` extra)")


@pytest.fixture(scope="module")
def loky_pool() -> Iterator[concurrent.futures.Executor]:
    pool = import_loky().ProcessPoolExecutor(2)
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
    pool = import_loky().ProcessPoolExecutor(1)
    try:
        q = await make_queue(1, executor=pool, retry=RetryPolicy(max_retries=0))
        result = await q.get_result((await q.submit(exit_process)).task_id)
        assert result.status is TaskStatus.FAILED
        assert any(isinstance(e, concurrent.futures.BrokenExecutor) for e in causes(result.error)), result.error
    finally:
        pool.shutdown(wait=True)
