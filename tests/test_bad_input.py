"""Bad calls: each raises one specific exception with a message that states the
rule, and leaves the queue exactly as it was.

One table per entry point: the constructor, RetryPolicy, and the queue's
methods (each run against a queue in a named state). The queue table checks
``stats()`` before and after, that no task with the attempted id appeared,
and that a queue that was running still runs tasks afterwards.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest

from hybrid_queue import (
    DuplicateTaskError,
    HybridQueue,
    KeyStats,
    QueueFull,
    QueueShutDown,
    RetryPolicy,
    TaskStatus,
    UnknownTaskError,
)

pytestmark = pytest.mark.bad_input


class OwnHash:
    """An id type whose hashing is user code: it could call back into the queue under its lock."""

    def __hash__(self) -> int:
        return 7


async def noop(value: Any = None) -> Any:
    return value


# ----------------------------------------------------------------- constructor


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        pytest.param({"workers": 0}, ValueError, r"^workers must be >= 1, got 0$", id="workers=0"),
        pytest.param({"workers": -1}, ValueError, r"^workers must be >= 1, got -1$", id="workers=-1"),
        pytest.param({"workers": 1.5}, TypeError, r"^workers must be an int, got 1\.5$", id="workers=1.5"),
        pytest.param({"workers": True}, TypeError, r"^workers must be an int, got True$", id="workers=True"),
        pytest.param({"workers": "4"}, TypeError, r"^workers must be an int, got '4'$", id="workers='4'"),
        pytest.param(
            {"max_queue_size": -1}, ValueError, r"^max_queue_size must be >= 0, got -1$", id="max_queue_size=-1"
        ),
        pytest.param({"max_results": 0}, ValueError, r"^max_results must be >= 1, got 0$", id="max_results=0"),
        pytest.param({"result_ttl": -1}, ValueError, r"^result_ttl must be >= 0 seconds, got -1$", id="result_ttl=-1"),
        pytest.param(
            {"result_ttl": math.nan}, ValueError, r"^result_ttl must be >= 0 seconds, got nan$", id="result_ttl=nan"
        ),
        pytest.param(
            {"result_ttl": "x"}, TypeError, r"^result_ttl must be a number of seconds, got 'x'$", id="result_ttl='x'"
        ),
        pytest.param({"retry": "x"}, TypeError, r"^retry must be a RetryPolicy or None, got 'x'$", id="retry='x'"),
        pytest.param({"aging": 0}, ValueError, r"^aging must be a positive, finite number, got 0$", id="aging=0"),
        pytest.param(
            {"aging": math.inf}, ValueError, r"^aging must be a positive, finite number, got inf$", id="aging=inf"
        ),
        pytest.param({"aging": "1"}, TypeError, r"^aging must be a positive number, got '1'$", id="aging='1'"),
        pytest.param(
            {"aging": 1e-300}, ValueError, r"^aging must be at least 1e-06 seconds, got 1e-300$", id="aging=1e-300"
        ),
        pytest.param(
            {"executor": object()},
            TypeError,
            r"^executor must be a concurrent\.futures\.Executor \(yours: never replaced or shut down\), a function",
            id="executor=object()",
        ),
    ],
)
def test_constructor_rejects(kwargs, exc, match):
    threads = threading.active_count()
    with pytest.raises(exc, match=match):
        HybridQueue(**kwargs)
    assert threading.active_count() == threads


# ----------------------------------------------------------------- RetryPolicy


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        pytest.param({"max_retries": -1}, ValueError, r"^max_retries must be >= 0, got -1", id="max_retries=-1"),
        pytest.param(
            {"max_retries": 1.5}, TypeError, r"^max_retries must be an int >= 0, got 1\.5$", id="max_retries=1.5"
        ),
        pytest.param(
            {"base_delay": math.nan},
            ValueError,
            r"^base_delay must be a finite number >= 0, got nan$",
            id="base_delay=nan",
        ),
        pytest.param(
            {"base_delay": -1}, ValueError, r"^base_delay must be a finite number >= 0, got -1$", id="base_delay=-1"
        ),
        pytest.param(
            {"max_delay": math.inf},
            ValueError,
            r"^max_delay must be a finite number >= 0, got inf$",
            id="max_delay=inf",
        ),
        pytest.param({"jitter": 2}, ValueError, r"^jitter must be between 0 and 1, got 2$", id="jitter=2"),
        pytest.param(
            {"retry_on": (int,)},
            TypeError,
            r"^retry_on must be a tuple of exception classes, got \(<class 'int'>,\)$",
            id="retry_on=(int,)",
        ),
    ],
)
def test_retry_policy_rejects(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        RetryPolicy(**kwargs)


# ----------------------------------------------------------------- the queue


async def idle_queue(make_queue: Callable[..., Any]) -> HybridQueue:
    """Started, with one stored result ("done")."""
    q = await make_queue(2)
    assert await (await q.submit(noop, "result", task_id="done")) == "result"
    return q


async def full_queue(make_queue: Callable[..., Any]) -> HybridQueue:
    """Never started (so nothing drains), bounded to 2, holding "held-1" and "held-2"."""
    q = await make_queue(1, max_queue_size=2, start=False)
    q.submit_nowait(noop, task_id="held-1")
    q.submit_nowait(noop, task_id="held-2")
    return q


async def stopped_queue(make_queue: Callable[..., Any]) -> HybridQueue:
    """Shut down after one task ("done") completed."""
    q = await idle_queue(make_queue)
    await q.shutdown()
    return q


SETUPS = {"idle": idle_queue, "full": full_queue, "stopped": stopped_queue}


@dataclass(frozen=True)
class Bad:
    """One bad call: ``call(q)`` must raise ``exc`` with a message matching ``match``."""

    id: str
    call: Callable[[HybridQueue], Awaitable[Any]]
    exc: type[BaseException]
    match: str
    setup: str = "idle"
    # The task_id the call tried to use; it must not become known.
    new_id: Any = "new"


def call_sync(fn: Callable[[HybridQueue], Any]) -> Callable[[HybridQueue], Awaitable[Any]]:
    """A bad call of a sync method, made on the loop thread."""

    async def call(q: HybridQueue) -> Any:
        return fn(q)

    return call


def in_thread(fn: Callable[[HybridQueue], Any]) -> Callable[[HybridQueue], Awaitable[Any]]:
    """A bad call made from a plain thread with no event loop."""

    async def call(q: HybridQueue) -> Any:
        return await asyncio.to_thread(fn, q)

    return call


def on_other_loop(coro_fn: Callable[[HybridQueue], Awaitable[Any]]) -> Callable[[HybridQueue], Awaitable[Any]]:
    """A bad call awaited on a second event loop, in another thread."""

    async def call(q: HybridQueue) -> Any:
        async def body() -> Any:
            return await coro_fn(q)

        return await asyncio.to_thread(asyncio.run, body())

    return call


async def submit_coroutine_object(q: HybridQueue) -> Any:
    coro = noop(1)
    try:
        return await q.submit(coro)  # type: ignore[arg-type]
    finally:
        coro.close()  # never awaited on purpose; closing it keeps the warning away


def submit_nowait_coroutine_object(q: HybridQueue) -> Any:
    coro = noop(1)
    try:
        return q.submit_nowait(coro)  # type: ignore[arg-type]
    finally:
        coro.close()


def submit_blocking_coroutine_object(q: HybridQueue) -> Any:
    coro = noop(1)
    try:
        return q.submit_blocking(coro)  # type: ignore[arg-type]
    finally:
        coro.close()


async def submit_many_coroutine_object(q: HybridQueue) -> Any:
    coro = noop(1)
    try:
        return await q.submit_many(coro, [1])  # type: ignore[call-overload]
    finally:
        coro.close()


PRIORITY = r"^priority must be an int \(higher runs first\), got "
TIMEOUT = r"^timeout must be > 0 seconds or None, got "
DUPLICATE = r"^task_id '{}' is already in use by a live task or a stored result"
SHUT_DOWN = r"^the queue has begun shutting down and accepts no new tasks"
DELAY = r"^delay must be a finite number >= 0, got "
KEY = r"^key must be a str, int, float, bytes, uuid\.UUID or a tuple of those \(keys are hashed .*got "
RATE = r"^rate must be a positive, finite number, got "
OTHER_LOOP = r"^this HybridQueue is bound to another event loop"
UNKNOWN = r"^no task with id 'nope': it was never submitted"

CASES = [
    # --- the handler
    Bad(
        "submit-non-callable",
        lambda q: q.submit(42, task_id="new"),
        TypeError,
        r"^the handler must be callable, got 42$",
    ),
    Bad(
        "submit-coroutine-object",
        submit_coroutine_object,
        TypeError,
        r"^submit\(\) got a coroutine object; pass the async function",
    ),
    Bad(
        "submit_nowait-coroutine-object",
        call_sync(submit_nowait_coroutine_object),
        TypeError,
        r"^submit_nowait\(\) got a coroutine object; pass the async function",
    ),
    Bad(
        "submit_blocking-coroutine-object",
        in_thread(submit_blocking_coroutine_object),
        TypeError,
        r"^submit_blocking\(\) got a coroutine object; pass the async function",
    ),
    # --- options
    Bad("priority='high'", lambda q: q.submit(noop, priority="high", task_id="new"), TypeError, PRIORITY + "'high'$"),
    Bad("priority=1.5", lambda q: q.submit(noop, priority=1.5, task_id="new"), TypeError, PRIORITY + r"1\.5$"),
    Bad("priority=None", lambda q: q.submit(noop, priority=None, task_id="new"), TypeError, PRIORITY + "None$"),
    Bad(
        "submit_blocking-priority='high'",
        in_thread(lambda q: q.submit_blocking(noop, priority="high", task_id="new")),
        TypeError,
        PRIORITY + "'high'$",
    ),
    Bad(
        "max_retries=-1",
        lambda q: q.submit(noop, max_retries=-1, task_id="new"),
        ValueError,
        r"^max_retries must be >= 0, got -1",
    ),
    Bad(
        "max_retries='3'",
        lambda q: q.submit(noop, max_retries="3", task_id="new"),
        TypeError,
        r"^max_retries must be an int >= 0, got '3'$",
    ),
    Bad("timeout=-1", lambda q: q.submit(noop, timeout=-1, task_id="new"), ValueError, TIMEOUT + "-1$"),
    Bad("timeout=nan", lambda q: q.submit(noop, timeout=math.nan, task_id="new"), ValueError, TIMEOUT + "nan$"),
    Bad("timeout=0", lambda q: q.submit(noop, timeout=0, task_id="new"), ValueError, TIMEOUT + "0$"),
    Bad(
        "timeout='x'",
        lambda q: q.submit(noop, timeout="x", task_id="new"),
        TypeError,
        r"^timeout must be a number of seconds or None, got 'x'$",
    ),
    Bad(
        "task_id=''",
        lambda q: q.submit(noop, task_id=""),
        ValueError,
        r"^task_id must not be empty",
        new_id="",
    ),
    Bad(
        "task_id=[]",
        lambda q: q.submit(noop, task_id=[]),
        TypeError,
        r"^task_id must be a str, int, float, bytes, uuid.UUID or a tuple of those .*, got list \[\]; "
        r"use str\(your_id\) or a tuple of its fields$",
        new_id=None,
    ),
    Bad(
        "task_id=object-with-its-own-hash",
        lambda q: q.submit(noop, task_id=OwnHash()),
        TypeError,
        r"^task_id must be a str, int, float, bytes, uuid.UUID or a tuple of those \(ids are hashed under the "
        r"queue's lock, where the __hash__/__eq__ of other types could call back into it\), got OwnHash ",
        new_id=None,
    ),
    Bad(
        "task_id=tuple-holding-an-object",
        lambda q: q.submit(noop, task_id=("tenant", OwnHash())),
        TypeError,
        r"^task_id must be a str, int, float, bytes, uuid.UUID or a tuple of those .*, got tuple ",
        new_id=None,
    ),
    # --- duplicate ids
    Bad(
        "duplicate-of-stored-result",
        lambda q: q.submit(noop, task_id="done"),
        DuplicateTaskError,
        DUPLICATE.format("done"),
        new_id=None,
    ),
    Bad(
        "submit_blocking-duplicate-of-stored-result",
        in_thread(lambda q: q.submit_blocking(noop, task_id="done")),
        DuplicateTaskError,
        DUPLICATE.format("done"),
        new_id=None,
    ),
    Bad(
        "duplicate-of-live-task",
        call_sync(lambda q: q.submit_nowait(noop, task_id="held-1")),
        DuplicateTaskError,
        DUPLICATE.format("held-1"),
        setup="full",
        new_id=None,
    ),
    # --- the wrong thread or loop
    Bad(
        "submit_blocking-on-the-loop-thread",
        call_sync(lambda q: q.submit_blocking(noop, task_id="new")),
        RuntimeError,
        r"^submit_blocking\(\) was called on the queue's event loop thread, where blocking would deadlock",
    ),
    Bad(
        "submit_nowait-from-a-plain-thread",
        in_thread(lambda q: q.submit_nowait(noop, task_id="new")),
        RuntimeError,
        r"^submit_nowait\(\) must be called from a coroutine on the queue's event loop; "
        r"from plain threads use submit_blocking\(\)$",
    ),
    Bad("submit-from-another-loop", on_other_loop(lambda q: q.submit(noop, task_id="new")), RuntimeError, OTHER_LOOP),
    Bad("get_result-from-another-loop", on_other_loop(lambda q: q.get_result("done")), RuntimeError, OTHER_LOOP),
    Bad("shutdown-from-another-loop", on_other_loop(lambda q: q.shutdown()), RuntimeError, OTHER_LOOP),
    Bad("start-from-another-loop", on_other_loop(lambda q: q.start()), RuntimeError, OTHER_LOOP),
    # --- unknown ids and bad waits
    Bad("get_result-unknown-id", lambda q: q.get_result("nope"), UnknownTaskError, UNKNOWN),
    Bad("status-unknown-id", call_sync(lambda q: q.status("nope")), UnknownTaskError, UNKNOWN),
    Bad(
        "get_result-timeout=-1",
        lambda q: q.get_result("done", timeout=-1),
        ValueError,
        r"^timeout must be >= 0 seconds or None, got -1$",
    ),
    Bad(
        "shutdown-timeout=-1",
        lambda q: q.shutdown(timeout=-1),
        ValueError,
        r"^timeout must be >= 0 seconds or None, got -1$",
    ),
    # --- a full queue
    Bad(
        "submit_nowait-on-a-full-queue",
        call_sync(lambda q: q.submit_nowait(noop, task_id="new")),
        QueueFull,
        r"^the queue holds its maximum of 2 pending tasks",
        setup="full",
    ),
    # --- batches
    Bad(
        "submit_many-without-iterables",
        lambda q: q.submit_many(noop),
        TypeError,
        r"^submit_many\(\) needs one iterable of arguments per parameter of the handler",
    ),
    Bad(
        "submit_many-unequal-lengths",
        lambda q: q.submit_many(noop, [1, 2], [3]),
        ValueError,
        r"^submit_many\(\) got iterables of different lengths \(2, 1\)",
    ),
    Bad(
        "submit_many-priority='high'",
        lambda q: q.submit_many(noop, [1, 2], priority="high"),
        TypeError,
        PRIORITY + "'high'$",
    ),
    Bad(
        "submit_many-coroutine-object",
        submit_many_coroutine_object,
        TypeError,
        r"^submit_many\(\) got a coroutine object; pass the async function",
    ),
    Bad(
        "submit_many-larger-than-the-bound",
        lambda q: q.submit_many(noop, range(3)),
        ValueError,
        r"^a batch of 3 tasks can never fit in a queue of max_queue_size=2",
        setup="full",
    ),
    Bad(
        "submit_many-from-another-loop",
        in_thread(lambda q: asyncio.run(q.submit_many(noop, [1]))),
        RuntimeError,
        OTHER_LOOP,
    ),
    Bad("submit_many-after-shutdown", lambda q: q.submit_many(noop, [1]), QueueShutDown, SHUT_DOWN, setup="stopped"),
    Bad(
        "submit_many-empty-after-shutdown", lambda q: q.submit_many(noop, []), QueueShutDown, SHUT_DOWN, setup="stopped"
    ),
    # --- time: delay and not_before
    Bad("delay-negative", lambda q: q.submit(noop, task_id="new", delay=-1), ValueError, DELAY + r"-1$"),
    Bad("delay-nan", lambda q: q.submit(noop, task_id="new", delay=math.nan), ValueError, DELAY + r"nan$"),
    Bad("delay-inf", call_sync(lambda q: q.submit_nowait(noop, task_id="new", delay=math.inf)), ValueError, DELAY),
    Bad(
        "delay-str",
        in_thread(lambda q: q.submit_blocking(noop, task_id="new", delay="5")),
        TypeError,
        r"^delay must be a number of seconds, got '5'$",
    ),
    Bad(
        "delay-and-not_before",
        lambda q: q.submit(noop, task_id="new", delay=1, not_before=q.time() + 1),
        TypeError,
        r"^pass delay= \(seconds from now\) or not_before= \(a moment\), not both$",
    ),
    Bad(
        "not_before-naive",
        lambda q: q.submit(noop, task_id="new", not_before=datetime(2030, 1, 1)),
        ValueError,
        r"^not_before must be a timezone-aware datetime, got the naive ",
    ),
    Bad(
        "not_before-str",
        lambda q: q.submit(noop, task_id="new", not_before="tomorrow"),
        TypeError,
        r"^not_before must be a timezone-aware datetime or a time of the queue's clock",
    ),
    Bad(
        "not_before-nan",
        lambda q: q.submit(noop, task_id="new", not_before=math.nan),
        ValueError,
        r"^not_before must be a finite time of the queue's clock, got nan$",
    ),
    Bad(
        "not_before-wall-float",
        lambda q: q.submit(noop, task_id="new", not_before=time.time() + 60),
        ValueError,
        r"^not_before=.* years ahead on the queue's clock; a float not_before is a time of queue\.time\(\)",
    ),
    # --- keys and limits
    Bad("key-list", lambda q: q.submit(noop, task_id="new", key=["a"]), TypeError, KEY + r"list \['a'\]"),
    Bad("key-own-hash", lambda q: q.submit(noop, task_id="new", key=OwnHash()), TypeError, KEY + r"OwnHash"),
    Bad(
        "key-nan",
        in_thread(lambda q: q.submit_blocking(noop, task_id="new", key=math.nan)),
        ValueError,
        r"^key must equal itself to be found again, got nan$",
    ),
    Bad(
        "limit-concurrency-0",
        call_sync(lambda q: q.limit("h", concurrency=0)),
        ValueError,
        r"^concurrency must be >= 1, got 0$",
    ),
    Bad("limit-rate-0", call_sync(lambda q: q.limit("h", rate=0)), ValueError, RATE + r"0$"),
    Bad("limit-rate-negative", call_sync(lambda q: q.limit("h", rate=-2.5)), ValueError, RATE + r"-2\.5$"),
    Bad("limit-rate-nan", call_sync(lambda q: q.limit("h", rate=math.nan)), ValueError, RATE + r"nan$"),
    Bad("limit-rate-inf", call_sync(lambda q: q.limit("h", rate=math.inf)), ValueError, RATE + r"inf$"),
    Bad(
        "limit-rate-str",
        call_sync(lambda q: q.limit("h", rate="10/s")),
        TypeError,
        r"^rate must be a positive number, got '10/s'$",
    ),
    Bad(
        "limit-burst-0", call_sync(lambda q: q.limit("h", rate=1, burst=0)), ValueError, r"^burst must be >= 1, got 0$"
    ),
    Bad(
        "limit-burst-without-rate",
        call_sync(lambda q: q.limit("h", concurrency=2, burst=5)),
        ValueError,
        r"^burst=5 needs a rate= ",
    ),
    Bad(
        "limit-key-and-pattern",
        call_sync(lambda q: q.limit("h", pattern="*.h", rate=1)),
        TypeError,
        r"^limit\(\) takes a key, or pattern= ",
    ),
    Bad("limit-neither", call_sync(lambda q: q.limit(rate=1)), TypeError, r"^limit\(\) takes a key, or pattern= "),
    Bad("limit-key-dict", call_sync(lambda q: q.limit({"h": 1}, rate=1)), TypeError, KEY + r"dict"),
    Bad(
        "pause_key-negative",
        call_sync(lambda q: q.pause_key("h", -1)),
        ValueError,
        r"^seconds must be a finite number >= 0, got -1$",
    ),
    Bad(
        "pause_key-nan",
        call_sync(lambda q: q.pause_key("h", math.nan)),
        ValueError,
        r"^seconds must be a finite number >= 0, got nan$",
    ),
    Bad("pause_key-key-set", call_sync(lambda q: q.pause_key({"h"}, 1)), TypeError, KEY + r"set"),
    Bad(
        "cron-bad-expression",
        call_sync(lambda q: q.cron("61 * * * *", noop)),
        ValueError,
        r"^expr '61 \* \* \* \*' is not a valid cron expression: ",
    ),
    Bad(
        "every-nan",
        call_sync(lambda q: q.every(math.nan, noop)),
        ValueError,
        r"^interval must be a positive, finite number, got nan$",
    ),
    # --- after shutdown
    Bad("submit-after-shutdown", lambda q: q.submit(noop, task_id="new"), QueueShutDown, SHUT_DOWN, setup="stopped"),
    Bad(
        "submit_nowait-after-shutdown",
        call_sync(lambda q: q.submit_nowait(noop, task_id="new")),
        QueueShutDown,
        SHUT_DOWN,
        setup="stopped",
    ),
    Bad(
        "submit_blocking-after-shutdown",
        in_thread(lambda q: q.submit_blocking(noop, task_id="new")),
        QueueShutDown,
        SHUT_DOWN,
        setup="stopped",
    ),
    Bad(
        "restart-after-shutdown",
        lambda q: q.start(),
        RuntimeError,
        r"^this HybridQueue was shut down and cannot restart",
        setup="stopped",
    ),
    Bad(
        "start_background-after-shutdown",
        call_sync(lambda q: q.start_background()),
        RuntimeError,
        r"^start_background\(\) needs a queue that was never started",
        setup="stopped",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_bad_call_raises_and_changes_nothing(make_queue, case):
    q = await SETUPS[case.setup](make_queue)
    before = q.stats()
    statuses = {tid: q.status(tid) for tid in ("done", "held-1", "held-2") if _known(q, tid)}
    keys, schedules = q.key_stats(), q.schedules()

    with pytest.raises(case.exc, match=case.match):
        await case.call(q)

    assert q.stats() == before
    assert (q.key_stats(), q.schedules()) == (keys, schedules)
    assert q.key_stats("h") == KeyStats("h", 0, 0, 0.0, None, None, None, None)
    assert {tid: q.status(tid) for tid in statuses} == statuses
    if case.new_id is not None:
        with pytest.raises(UnknownTaskError):
            q.status(case.new_id)
    if case.setup == "idle":
        # Still bound to this loop, still accepting, still running tasks.
        assert await (await q.submit(noop, "after")) == "after"
        assert q.stats().completed == before.completed + 1


def _known(q: HybridQueue, task_id: str) -> bool:
    try:
        q.status(task_id)
    except UnknownTaskError:
        return False
    return True


def test_the_queue_table_covers_at_least_25_calls_with_unique_ids():
    assert len(CASES) >= 25
    assert len({c.id for c in CASES}) == len(CASES)


# ------------------------------------------- bad calls before the queue is bound


async def test_submit_blocking_from_a_coroutine_before_start_refuses_instead_of_blocking_the_loop(make_queue):
    # The queue has no loop thread yet, so the loop-thread check cannot see
    # that this call comes from a running event loop; on a full queue it then
    # blocks the whole loop until another thread makes room.
    q = await make_queue(1, max_queue_size=1, start=False)
    await asyncio.to_thread(q.submit_blocking, noop, task_id="held")
    before = q.stats()
    # Safety net, so a regression fails in a moment instead of hanging: make
    # room from another thread. It never fires when the call raises at once.
    rescue = threading.Timer(0.2, q.cancel_task, args=("held",))
    rescue.start()
    try:
        with pytest.raises(RuntimeError, match=r"^submit_blocking\(\) was called on .*event loop"):
            q.submit_blocking(noop, task_id="new")
    finally:
        rescue.cancel()
        rescue.join()
    assert q.stats() == before
    assert q.status("held") is TaskStatus.PENDING


async def test_rejected_submit_from_a_passing_loop_does_not_bind_the_queue():
    # A submit that raises must leave nothing behind, the loop binding
    # included: otherwise one failed call inside a short-lived asyncio.run()
    # ties the queue for good to a loop that no longer exists.
    q = HybridQueue(1, max_queue_size=1)
    held = await asyncio.to_thread(q.submit_blocking, noop, task_id="held")
    before = q.stats()

    async def rejected() -> None:
        q.submit_nowait(noop, task_id="new")

    with pytest.raises(QueueFull):
        await asyncio.to_thread(asyncio.run, rejected())
    assert q.stats() == before

    # Only shut down a queue that started: one bound to the dead loop cannot
    # be, and holds no thread (its pool never ran anything).
    await q.start()
    try:
        assert await asyncio.wrap_future(held) is None
    finally:
        await q.shutdown(wait=False)


async def test_rejected_get_result_from_a_passing_loop_does_not_bind_the_queue():
    q = HybridQueue(1)
    with pytest.raises(UnknownTaskError):
        await asyncio.to_thread(asyncio.run, q.get_result("nope"))
    await q.start()
    await q.shutdown()
