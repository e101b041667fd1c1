"""A FastAPI service that runs jobs on a HybridQueue started in its lifespan.

Run it with ``uvicorn examples.fastapi_app:app`` (from the repository root),
then::

    curl -X POST localhost:8000/jobs -H 'content-type: application/json' -d '{"limit": 100000}'
    curl localhost:8000/jobs/1

POST /jobs queues a job and answers at once with its id; GET /jobs/{id}
reports its status, and its result or error once it has finished. The queue
lives on the server's event loop, so the endpoints are ``async def`` and
await the queue directly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel, Field

from hybrid_queue import HybridQueue, TaskStatus, UnknownTaskError


def count_primes(limit: int) -> int:
    """The job: CPU-bound and blocking, so the queue runs it on its thread pool."""
    if limit < 3:
        return 0
    sieve = bytearray([1]) * limit
    sieve[0:2] = b"\x00\x00"
    for n in range(2, int(limit**0.5) + 1):
        if sieve[n]:
            sieve[n * n :: n] = bytes(len(range(n * n, limit, n)))
    return sum(sieve)


class JobRequest(BaseModel):
    limit: int = Field(gt=0, le=10_000_000, description="count the primes below this number")
    priority: int = Field(default=0, description="higher runs first")


class JobCreated(BaseModel):
    id: int


class JobState(BaseModel):
    id: int
    status: str
    result: int | None = None
    error: str | None = None


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # The queue starts on the server's loop before the first request and
    # stops after the last one.
    queue = HybridQueue(workers=4, result_ttl=600.0)
    await queue.start()
    app.state.queue = queue
    try:
        yield
    finally:
        # Let running and queued jobs finish for up to 10 s, then cancel the rest.
        await queue.shutdown(timeout=10.0)


app = FastAPI(title="hybrid_queue example", lifespan=lifespan)


def get_queue(request: Request) -> HybridQueue:
    queue: HybridQueue = request.app.state.queue
    return queue


Queue = Annotated[HybridQueue, Depends(get_queue)]


@app.post("/jobs", status_code=202)
async def create_job(job: JobRequest, queue: Queue) -> JobCreated:
    # submit returns as soon as the job is queued: the request does not wait
    # for it to run. Ids are generated ints, unless we pass task_id=.
    handle = await queue.submit(count_primes, job.limit, priority=job.priority)
    assert isinstance(handle.task_id, int)  # generated: we passed no task_id
    return JobCreated(id=handle.task_id)


@app.get("/jobs/{job_id}")
async def read_job(job_id: int, queue: Queue) -> JobState:
    try:
        status = queue.status(job_id)
    except UnknownTaskError:
        # Never submitted, or finished more than result_ttl seconds ago.
        raise HTTPException(status_code=404, detail=f"no job {job_id}") from None
    if not status.is_terminal:
        return JobState(id=job_id, status=status.value)
    # The job has finished, so this returns at once from the result store.
    # It could still have expired since status(), hence the same 404.
    try:
        done = await queue.get_result(job_id)
    except UnknownTaskError:
        raise HTTPException(status_code=404, detail=f"no job {job_id}") from None
    if done.status is TaskStatus.COMPLETED:
        return JobState(id=job_id, status=done.status.value, result=done.result)
    return JobState(id=job_id, status=done.status.value, error=repr(done.error))
