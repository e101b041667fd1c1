"""Smoke: the queue runs a coroutine and a sync handler, from async code and from a sync program."""

from hybrid_queue import HybridQueue


async def test_coroutine_and_sync_handlers_run(make_queue):
    q = await make_queue(2)

    async def double(x):
        return 2 * x

    assert await (await q.submit(double, 21)) == 42
    assert await (await q.submit(abs, -3)) == 3


def test_sync_program_with_background_loop():
    with HybridQueue(2) as q:
        assert q.submit_blocking(pow, 2, 10).result(timeout=10) == 1024
