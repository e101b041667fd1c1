"""Crawl a few simulated sites politely: per-host limits, a 429 that pauses its host, retries.

Run it with ``python examples/crawler.py``. There is no network: each fetch
sleeps for a made-up latency, and one host answers 429 Too Many Requests to
one request, with a Retry-After of half a second. Every task carries its
host as its key, so the queue keeps each host within its limit (so many
requests at once, so many starts a second), lets hosts take turns, and
holds a host that asked for a pause while the others go on. The handler
raises on the 429, so the queue retries that page once the pause is over.
It ends with a line per host, from ``key_stats`` and the results.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from urllib.parse import urlsplit

from hybrid_queue import HybridQueue, KeyStats, RetryPolicy, TaskHandle, TaskStatus

# Pages per host, and each host's simulated latency in seconds.
SITES = {
    "docs.example.com": (12, 0.02),
    "shop.example.com": (12, 0.03),
    "archive.example.org": (6, 0.05),
}
THROTTLED = "https://shop.example.com/page/3"  # answers 429 the first time
RETRY_AFTER = 0.5


class TooManyRequests(Exception):
    """The server answered 429; the host is paused for ``retry_after`` seconds."""

    def __init__(self, url: str, retry_after: float) -> None:
        super().__init__(f"429 Too Many Requests from {url}, retry after {retry_after} s")
        self.retry_after = retry_after


class FakeWeb:
    """Stands in for an HTTP client: a latency per host, and one 429."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.throttled: Counter[str] = Counter()
        self._answered_429: set[str] = set()

    async def get(self, url: str) -> tuple[int, float, bytes]:
        """Return (status, Retry-After, body) for ``url``."""
        host = urlsplit(url).hostname or ""
        self.requests[host] += 1
        await asyncio.sleep(SITES[host][1])
        if url == THROTTLED and url not in self._answered_429:
            self._answered_429.add(url)
            self.throttled[host] += 1
            return 429, RETRY_AFTER, b""
        return 200, 0.0, f"<html>{url}</html>".encode()


async def fetch(q: HybridQueue, web: FakeWeb, host: str, url: str) -> int:
    """Fetch one page; on a 429, pause its host and raise, so the queue retries the page."""
    status, retry_after, body = await web.get(url)
    if status == 429:
        # From now on no task of this host starts for retry_after seconds;
        # its running requests finish, and the other hosts go on.
        q.pause_key(host, retry_after)
        raise TooManyRequests(url, retry_after)
    return len(body)


async def main() -> dict[str, KeyStats]:
    """Crawl every page of SITES; print a line per host and return their key stats."""
    web = FakeWeb()
    # Retry 429s and dropped connections, a few times; any other exception
    # (a bug in fetch) fails its page at once. The retry of a 429 waits for
    # its backoff and for its host's pause, whichever ends later.
    retry = RetryPolicy(max_retries=3, base_delay=0.05, retry_on=(TooManyRequests, ConnectionError))
    started = time.monotonic()
    async with HybridQueue(workers=16, retry=retry) as q:
        # Each host of example.com on its own: 2 requests at once, 10 starts
        # a second, no burst. The archive is slower: 1 at once, 4 a second.
        # A key's own limit comes before any pattern.
        q.limit(pattern="*.example.com", concurrency=2, rate=10)
        q.limit("archive.example.org", concurrency=1, rate=4)

        handles: list[tuple[str, TaskHandle[int]]] = []
        for host, (pages, _) in SITES.items():
            for i in range(1, pages + 1):
                url = f"https://{host}/page/{i}"
                handles.append((host, await q.submit(fetch, q, web, host, url, key=host)))

        # Mid-crawl: the hosts the queue keeps state for (work waiting or
        # running, a pause, a bucket refilling), the 429'd one paused.
        await asyncio.sleep(0.3)
        for key, now in sorted(q.key_stats().items(), key=lambda item: str(item[0])):
            paused = f", paused {now.paused_for:.2f} s more" if now.paused_for else ""
            print(f"after 0.3 s  {key}: {now.waiting} waiting, {now.running} running{paused}")

        # return_exceptions: a page out of retries must not hide the others.
        await asyncio.gather(*(h for _, h in handles), return_exceptions=True)
        elapsed = time.monotonic() - started
        fetched: Counter[str] = Counter()
        for host, handle in handles:
            if (await q.get_result(handle.task_id)).status is TaskStatus.COMPLETED:
                fetched[host] += 1

        by_host: dict[str, KeyStats] = {}
        for host in SITES:
            # The host is idle now. The queue keeps a key only while it has
            # work, a pause or a bucket refilling; for a key it has
            # forgotten, the snapshot is that of a new key, with its limit.
            by_host[host] = q.key_stats(host)
        retries = q.stats().retries

    for host, stats in by_host.items():
        print(
            f"{host}: {fetched[host]}/{SITES[host][0]} pages, {web.requests[host]} requests, "
            f"{web.throttled[host]} x 429; limit {stats.concurrency} at once, {stats.rate:g}/s"
        )
    print(f"{sum(fetched.values())} pages in {elapsed:.1f} s; retries: {retries}")
    return by_host


if __name__ == "__main__":
    asyncio.run(main())
