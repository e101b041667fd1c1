"""Module-level handlers for durable tasks: found again by import path after a restart."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from hybrid_queue import current_task


def append(path: str, line: str) -> None:
    """Append ``line`` in one write with O_APPEND: lines never interleave, and a kill leaves at most one unwritten."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def record(i: int) -> int:
    """Append ``i`` to the file named by $HQ_RUNS (one line per run), take a moment, return i * i."""
    append(os.environ["HQ_RUNS"], f"{i}\n")
    time.sleep(0.001)
    return i * i


def nothing(i: int) -> None:
    """Return None (a result whose value is None), running nothing."""


async def attempts_seen(i: int) -> int:
    """Append "i attempt" to $HQ_RUNS; a first attempt then waits until it is cut off. Returns the attempt."""
    attempt = current_task().attempt
    append(os.environ["HQ_RUNS"], f"{i} {attempt}\n")
    if attempt == 1:
        await asyncio.sleep(3600)
    return attempt


# The queue the waiting handler below submits to; set by the test that uses it.
QUEUE: Any = None


async def waits_for_a_child(i: int) -> int:
    """Submit ``record(i)`` to QUEUE ahead of what waits, await it, append "after i", return its value plus one."""
    value = await (await QUEUE.submit(record, i, priority=10))
    append(os.environ["HQ_RUNS"], f"after {i}\n")
    return value + 1
