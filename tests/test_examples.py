"""The examples under examples/ run, and do what their docstrings say.

The script examples run as programs, as a reader would run them; the FastAPI
one is driven through FastAPI's TestClient, which runs the app's lifespan.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from fastapi.testclient import TestClient

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_python(*args: str) -> str:
    """Run this interpreter with ``args`` from the project's root; return its stdout. Fails on any stderr output."""
    done = subprocess.run(
        [sys.executable, *args],
        cwd=EXAMPLES.parent,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout


def run_example(name: str) -> str:
    """Run examples/<name> as a program; return its stdout. Fails on any stderr output."""
    return run_python(str(EXAMPLES / name))


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs: pydantic resolves the models' annotations
    # through sys.modules.
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_fan_out_summarises_every_call():
    out = run_example("fan_out.py")
    calls = re.search(r"^(\d+) calls: (\d+) completed, (\d+) failed$", out, re.MULTILINE)
    assert calls, out
    total, completed, failed = map(int, calls.groups())
    assert completed + failed == total == 200
    retries = re.search(r"^(\d+) calls needed a retry, (\d+) retries in all", out, re.MULTILINE)
    assert retries, out
    retried, all_retries = map(int, retries.groups())
    # Seeded: some calls are retried, and a retried call retries at least once.
    assert 0 < retried <= all_retries


def test_threaded_completes_every_submission():
    out = run_example("threaded.py")
    assert "4 threads submitted 100 tasks: 100 completed, 0 failed" in out
    assert "100 distinct digests" in out


def test_crawler_fetches_every_page_and_pauses_the_throttled_host():
    out = run_example("crawler.py")
    assert "docs.example.com: 12/12 pages, 12 requests, 0 x 429" in out
    assert "shop.example.com: 12/12 pages, 13 requests, 1 x 429" in out
    assert "archive.example.org: 6/6 pages, 6 requests, 0 x 429" in out
    assert re.search(r"^30 pages in [\d.]+ s; retries: 1$", out, re.MULTILINE), out


def test_periodic_runs_its_schedules_and_ends_them_at_shutdown():
    out = run_example("periodic.py")
    runs = dict(re.findall(r"^(\w+): (\d+) runs, \d+ skipped, \d+ missed, removed=True$", out, re.MULTILINE))
    assert set(runs) == {"heartbeat", "slow", "report"}, out
    assert int(runs["heartbeat"]) >= 4 and int(runs["slow"]) >= 2, out
    assert "report: next run at " in out


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = load_example("fastapi_app").app
    # Entering the client runs the lifespan: the queue starts, and stops on exit.
    with TestClient(app) as client:
        yield client
    sys.modules.pop("fastapi_app", None)


def poll_until_finished(client: TestClient, job_id: int, bound: float = 10.0) -> dict[str, object]:
    deadline = time.monotonic() + bound
    while True:
        response = client.get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        body: dict[str, object] = response.json()
        if body["status"] in ("completed", "failed", "cancelled"):
            return body
        assert time.monotonic() < deadline, f"job {job_id} still {body['status']} after {bound} s"
        time.sleep(0.01)


def test_fastapi_job_runs_and_reports_its_result(client):
    response = client.post("/jobs", json={"limit": 100_000, "priority": 3})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert poll_until_finished(client, job_id) == {
        "id": job_id,
        "status": "completed",
        "result": 9592,  # primes below 100,000
        "error": None,
    }


def test_fastapi_jobs_get_distinct_ids(client):
    ids = [client.post("/jobs", json={"limit": n}).json()["id"] for n in (10, 100, 1000)]
    assert len(set(ids)) == 3
    assert [poll_until_finished(client, i)["result"] for i in ids] == [4, 25, 168]


def test_fastapi_unknown_job_is_404(client):
    response = client.get("/jobs/12345")
    assert response.status_code == 404
    assert response.json() == {"detail": "no job 12345"}


def test_fastapi_rejects_a_bad_request(client):
    assert client.post("/jobs", json={"limit": -1}).status_code == 422


README = EXAMPLES.parent / "README.md"


def quick_start(title: str) -> str:
    """The Python block under the README heading ``## Quick start: <title>``."""
    text = README.read_text(encoding="utf-8")
    found = re.search(rf"^## Quick start: {title}\n.*?^```python\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)
    assert found, f"README.md has no Python block under '## Quick start: {title}'"
    return found.group(1)


def run_source(source: str) -> str:
    """Run ``source`` as a program; return its stdout. Fails on any stderr output."""
    return run_python("-c", source)


def test_readme_async_quick_start_runs():
    out = run_source(quick_start("async"))
    first, second = out.splitlines()
    # len("https://example.org/a") and sum(b"payload") % 255
    assert first == f"{len('https://example.org/a')} {sum(b'payload') % 255}"
    assert second.startswith("TaskStatus.COMPLETED {'submitted': 2,")


def test_readme_sync_quick_start_runs():
    assert run_source(quick_start("sync")) == "['a.png', 'b.png']\n"


def test_readme_keys_quick_start_runs():
    assert run_source(quick_start("keys")) == "[200, 200, 200, 200, 200, 200] 1\n"


def test_readme_periodic_quick_start_runs():
    lines = run_source(quick_start("periodic")).splitlines()
    runs = int(lines[-1].removesuffix(" runs"))
    assert runs == lines.count("tick") >= 1


def test_durable_service_loses_no_task_to_a_kill():
    out = run_example("durable_service.py")
    summary = re.search(r"^(\d+) acknowledged, (\d+) ran, (\d+) ran more than once, (\d+) lost$", out, re.MULTILINE)
    assert summary, out
    acknowledged, ran, _, lost = map(int, summary.groups())
    assert acknowledged == ran == 40 and lost == 0, out
    # Killed mid-way: the second run finished what the first left.
    restored = re.search(r"^second run: (\d+) tasks put back from the journal, (\d+) completed$", out, re.MULTILINE)
    assert restored, out
    assert 0 < int(restored[1]) == int(restored[2]) < 40, out
    assert out.endswith("none was lost: every acknowledged task ran at least once\n")
