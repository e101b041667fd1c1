"""Checked by ``mypy --strict`` in ``make test``, never run.

Calls that must type-check are written plainly and their results pinned with
``assert_type``. Calls that must be rejected carry ``# type: ignore[code]``:
strict mode warns about an unused ignore, so a wrong call that mypy started
to accept fails the check.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable
from datetime import datetime
from typing import assert_type

from hybrid_queue import HybridQueue, KeyStats, Schedule, TaskFuture, TaskHandle, TaskId


async def fetch(url: str, retries: int = 0) -> bytes:
    return url.encode() * (retries + 1)


def parse(raw: bytes, *, strict: bool = False) -> int:
    return len(raw)


async def main(queue: HybridQueue) -> None:
    # Right calls: the handle or future carries the handler's return type.
    assert_type(await queue.submit(fetch, "https://example.org"), TaskHandle[bytes])
    assert_type(await queue.submit(fetch, "u", 3, priority=5, timeout=2.0), TaskHandle[bytes])
    assert_type(await queue.submit(parse, b"x", strict=True), TaskHandle[int])
    assert_type(queue.submit_nowait(parse, b"x", task_id="job-1", max_retries=0), TaskHandle[int])
    assert_type(queue.submit_blocking(fetch, "u"), TaskFuture[bytes])
    assert_type(queue.submit_blocking(parse, b"x"), TaskFuture[int])
    assert_type(await (await queue.submit(fetch, "u")), bytes)
    assert_type(queue.submit_blocking(parse, b"x").result(), int)
    assert_type(await queue.submit(functools.partial(parse, b"x")), TaskHandle[int])

    # Ids: a narrow type, not Any; ids whose hashing is user code are rejected.
    assert_type((await queue.submit(fetch, "u", task_id=("tenant", 3))).task_id, TaskId)
    assert_type(queue.submit_blocking(parse, b"x").task_id, TaskId)
    queue.status(["not", "hashable"])  # type: ignore[arg-type]
    await queue.submit(fetch, "u", task_id=object())  # type: ignore[call-overload]

    assert_type(await queue.submit_many(fetch, ["a", "b"]), list[TaskHandle[bytes]])
    assert_type(await queue.submit_many(parse, [b"x"], priority=2), list[TaskHandle[int]])
    assert_type(await queue.submit_many(fetch, ["a"], [1]), list[TaskHandle[bytes]])

    # Time and keys: the same handle types; a schedule, key stats.
    assert_type(await queue.submit(fetch, "u", delay=1.5, key="example.org"), TaskHandle[bytes])
    assert_type(queue.submit_blocking(parse, b"x", not_before=queue.time() + 60), TaskFuture[int])
    assert_type(queue.every(60, parse, b"x"), Schedule)
    assert_type(queue.cron("0 2 * * *", fetch, "u", tz="Europe/Paris").next_run_at, datetime | None)
    assert_type(queue.key_stats("example.org"), KeyStats)
    assert_type(queue.key_stats(), dict[Hashable, KeyStats])
    queue.limit("example.org", concurrency="4")  # type: ignore[arg-type]
    assert_type(await queue.submit(fetch, "u", durable=False), TaskHandle[bytes])
    await queue.submit(fetch, "u", durable="yes")  # type: ignore[call-overload]

    # Wrong calls: argument types, argument counts, option types.
    await queue.submit_many(fetch, [1, 2])  # type: ignore[arg-type]
    await queue.submit_many(parse, [b"x"], task_id="one")  # type: ignore[call-overload]
    await queue.submit(fetch, 42)  # type: ignore[arg-type]
    await queue.submit(fetch)  # type: ignore[call-arg, arg-type]
    await queue.submit(fetch, "u", 1, 2)  # type: ignore[call-arg, arg-type]
    queue.submit_nowait(parse, "not bytes")  # type: ignore[arg-type]
    queue.submit_blocking(parse, b"x", priority="high")  # type: ignore[call-overload]
    await queue.submit(fetch, "u", timeout="soon")  # type: ignore[call-overload]
    handle: TaskHandle[str] = await queue.submit(fetch, "u")  # type: ignore[arg-type]
    del handle
