"""A process that submits durable tasks to a journaled queue until it is killed; run by tests/test_durable.py.

    python tests/_durable_child.py JOURNAL ACKS RUNS TOTAL [--finish] [--bounded]

Submits the tasks 0..TOTAL-1 not yet acknowledged (half from the loop, half
from a thread), appending each id to ACKS once its submit returned; the
handler appends its id to RUNS each time it runs. With --finish it waits for
every task to end, shuts down and prints DONE. With --bounded the journal has
bounded_reruns=True.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from pathlib import Path

# The handlers' module beside this file, and the package of this checkout
# (the same one an editable install links to).
sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parent.parent)]

from _durable_handlers import append, record  # noqa: E402

from hybrid_queue import DuplicateTaskError, HybridQueue, SQLiteJournal  # noqa: E402


async def main(journal: str, acks: str, runs: str, total: int, finish: bool, bounded: bool, done: set[str]) -> None:
    os.environ["HQ_RUNS"] = runs
    todo = [i for i in range(total) if str(i) not in done]
    file = SQLiteJournal(journal, bounded_reruns=bounded)
    queue = HybridQueue(4, journal=file, result_ttl=3600, max_results=100_000)
    await queue.start()

    def from_thread(ids: list[int]) -> None:
        for i in ids:
            try:
                queue.submit_blocking(record, i, task_id=f"t{i}")
            except DuplicateTaskError:  # committed before an earlier kill, not acknowledged
                pass
            append(acks, f"{i}\n")

    thread = threading.Thread(target=from_thread, args=(todo[1::2],))
    thread.start()
    for i in todo[0::2]:
        try:
            await queue.submit(record, i, task_id=f"t{i}")
        except DuplicateTaskError:
            pass
        append(acks, f"{i}\n")
    await asyncio.to_thread(thread.join)
    if not finish:
        await asyncio.sleep(3600)  # until killed
    while True:
        s = queue.stats()
        if s.scheduled + s.pending + s.running + s.retrying == 0:
            break
        await asyncio.sleep(0.01)
    await queue.shutdown()
    print("DONE", flush=True)


if __name__ == "__main__":
    journal, acks, runs, total = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    done = set(Path(acks).read_text().split()) if os.path.exists(acks) else set()
    asyncio.run(main(journal, acks, runs, total, "--finish" in sys.argv, "--bounded" in sys.argv, done))
