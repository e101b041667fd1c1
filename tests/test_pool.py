"""WorkerPool: ThreadPoolExecutor's contract, and a process that exits once the pool is shut down.

Orderings are forced with Events and Barriers, never by sleeping. Every pool
and gate comes from the ``pools`` fixture, which opens the gates and then
shuts the pools down (waiting) at teardown, so no thread outlives its test.
The exit behaviour is checked in child interpreters.
"""

from __future__ import annotations

import concurrent.futures
import gc
import subprocess
import sys
import textwrap
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hybrid_queue._pool import WorkerPool

PREFIX = "hybrid_queue_pooltest"  # the conftest leak check covers "hybrid_queue*" threads
BOUND = 30.0  # how long a join may take before the test fails instead of hanging


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


def pool_threads() -> list[threading.Thread]:
    return sorted((t for t in threading.enumerate() if t.name.startswith(PREFIX + "_")), key=lambda t: t.name)


def blocker(started: threading.Event, gate: threading.Event) -> Callable[[], str]:
    def call() -> str:
        started.set()
        gate.wait()
        return "released"

    return call


def test_results_and_exceptions_go_into_the_futures(pools: Pools) -> None:
    pool = pools.new(2)

    def fail() -> None:
        raise ValueError("boom")

    assert pool.submit(divmod, 7, 2).result() == (3, 1)
    assert pool.submit(dict, a=1).result() == {"a": 1}
    with pytest.raises(ValueError, match=r"^boom$"):
        pool.submit(fail).result()
    assert list(pool.map(abs, [-1, -2, 3])) == [1, 2, 3]


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


def test_an_idle_thread_is_reused_instead_of_starting_another(pools: Pools) -> None:
    pool = pools.new(4)
    idents = {pool.submit(threading.get_ident).result() for _ in range(20)}
    assert len(idents) == 1
    assert [t.name for t in pool_threads()] == [f"{PREFIX}_0"]


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


def test_threads_are_daemon_and_named_with_the_prefix(pools: Pools) -> None:
    pool = pools.new(2)
    gate, _ = pools.occupy(pool)
    pool.submit(gate.wait)
    threads = pool_threads()
    assert [t.name for t in threads] == [f"{PREFIX}_0", f"{PREFIX}_1"]
    assert all(t.daemon for t in threads)


def test_default_prefix_is_hybrid_queue() -> None:
    pool = WorkerPool(1)
    try:
        name = pool.submit(lambda: threading.current_thread().name).result()
    finally:
        pool.shutdown(wait=True)
    assert name == "hybrid_queue_0"


def test_max_workers_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"^max_workers must be greater than 0$"):
        WorkerPool(0)


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


def test_shutdown_without_wait_still_runs_the_queued_calls(pools: Pools) -> None:
    pool = pools.new(1)
    gate, _ = pools.occupy(pool)
    queued = pool.submit(lambda: "ran")
    pool.shutdown(wait=False)
    gate.set()
    assert queued.result() == "ran"


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


def test_submit_after_shutdown_raises_the_stdlib_error(pools: Pools) -> None:
    pool = pools.new(1)
    pool.shutdown()
    pool.shutdown()
    with pytest.raises(RuntimeError, match=r"^cannot schedule new futures after shutdown$"):
        pool.submit(print)


def test_context_manager_shuts_down_and_waits() -> None:
    with WorkerPool(2, thread_name_prefix=PREFIX) as pool:
        future = pool.submit(sum, [1, 2])
    assert future.result(timeout=0) == 3
    assert not any(t.is_alive() for t in pool_threads())


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
