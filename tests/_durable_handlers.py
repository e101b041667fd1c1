"""Module-level handlers for durable tasks: found again by import path after a restart."""

from __future__ import annotations

import os
import time


def record(i: int) -> int:
    """Append ``i`` to the file named by $HQ_RUNS (one line per run), take a moment, return i * i."""
    fd = os.open(os.environ["HQ_RUNS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{i}\n".encode())
    finally:
        os.close(fd)
    time.sleep(0.001)
    return i * i
