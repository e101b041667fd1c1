"""The methods of ``HybridQueue`` for time and keys: periodic schedules, key limits and pauses, the clock.

The mechanisms are the scheduler's (``_delays``, ``_lanes``, ``_periodic``);
here, their public face: argument checks, raised at the call before anything
changes, and the docstrings.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Callable, Hashable
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any, overload

from ._lanes import Limit
from ._periodic import Cron, Every, Schedule
from ._stats import KeyStats
from ._validate import MAX_SECONDS, check_bool, check_int, check_key, check_rate, check_span, check_timeout

if TYPE_CHECKING:
    from ._scheduler import Scheduler
    from ._task import TaskId

__all__ = ["TimeAndKeys"]


class TimeAndKeys:
    """``HybridQueue``'s periodic schedules, key limits and clock (its base; see the module docstring)."""

    _sched: Scheduler

    if TYPE_CHECKING:

        def _check(
            self,
            method: str,
            fn: Callable[..., Any],
            priority: int,
            task_id: TaskId | None,
            max_retries: int | None,
            timeout: float | None,
            keep_result: bool = True,
        ) -> tuple[bool, int, float | None]: ...

    def time(self) -> float:
        """The queue's clock, in seconds: ``time.monotonic()``, or the ``clock`` given to the queue. Any thread.

        A float ``not_before`` and ``Schedule.next_run`` are on this clock:
        ``submit(fn, not_before=queue.time() + 60)`` is ``delay=60``.
        """
        return self._sched.clock()

    # ---------------------------------------------------------------- schedules

    def every(
        self,
        interval: float,
        fn: Callable[..., Any],
        /,
        *args: Any,
        name: str | None = None,
        delay: float | None = None,
        priority: int = 0,
        key: Hashable | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        keep_result: bool = True,
        misfire_grace: float | None = None,
        coalesce: bool = True,
        overlap: bool = False,
        **kwargs: Any,
    ) -> Schedule:
        """Run ``fn(*args, **kwargs)`` every ``interval`` seconds; return its :class:`Schedule`.

        The first run is due ``delay`` seconds from now (default:
        ``interval``), the next ones at fixed steps of ``interval`` from it,
        however long each run takes. Each run is a task with this call's
        options (``priority``, ``key``, ``max_retries``, ``timeout``,
        ``keep_result``) and the id ``(name, n)``; ``name`` defaults to the
        handler's qualified name and must be unique among the queue's
        schedules. ``misfire_grace``, ``coalesce`` and ``overlap``: see
        :class:`Schedule`.

        Works before ``start()`` (runs fall due from the call on) and stops
        at shutdown. Raises QueueShutDown once shutdown began,
        TypeError/ValueError for bad arguments. Any thread.
        """
        seconds = check_rate("interval", interval, low=1e-6, high=MAX_SECONDS, unit=" seconds")
        first = seconds if delay is None else check_span("delay", delay)
        return self._schedule("every", Every(seconds, first), fn, args, kwargs, name, priority, key,
                              max_retries, timeout, keep_result, misfire_grace, coalesce, overlap)  # fmt: skip

    def cron(
        self,
        expr: str,
        fn: Callable[..., Any],
        /,
        *args: Any,
        tz: tzinfo | str = "UTC",
        name: str | None = None,
        priority: int = 0,
        key: Hashable | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        keep_result: bool = True,
        misfire_grace: float | None = None,
        coalesce: bool = True,
        overlap: bool = False,
        **kwargs: Any,
    ) -> Schedule:
        """Run ``fn(*args, **kwargs)`` at the times of the cron expression ``expr``; return its :class:`Schedule`.

        ``expr`` has five fields (minute, hour, day of month, month, day of
        week), read by ``cronsim`` (``pip install hybrid_queue[cron]``), in the
        time zone ``tz`` (a ``tzinfo`` or an IANA name; UTC by default). Across
        a DST change the runs are those cronsim gives: a rule of a fixed hour
        whose time is skipped runs at the first valid time after it, and once
        when its time is repeated; a rule of every hour loses the skipped
        hour's run and runs twice in the repeated hour. Wall time is the queue
        clock's (``FakeClock`` keeps one for tests). The other options are
        those of ``every``. Any thread.
        """
        zone = _zone(tz)
        check_cron(expr)
        return self._schedule("cron", Cron(expr, zone), fn, args, kwargs, name, priority, key,
                              max_retries, timeout, keep_result, misfire_grace, coalesce, overlap)  # fmt: skip

    def _schedule(
        self,
        method: str,
        rule: Every | Cron,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        name: str | None,
        priority: int,
        key: Hashable | None,
        max_retries: int | None,
        timeout: float | None,
        keep_result: bool,
        misfire_grace: float | None,
        coalesce: bool,
        overlap: bool,
    ) -> Schedule:
        is_coro, retries, per_attempt = self._check(method, fn, priority, None, max_retries, timeout, keep_result)
        if key is not None:
            check_key(key)
        if name is None:
            name = getattr(fn, "__qualname__", None) or repr(fn)
        elif type(name) is not str or not name:
            raise TypeError(f"name must be a non-empty str, got {name!r}")
        grace = check_timeout("misfire_grace", misfire_grace, positive=True)
        schedule = Schedule(
            self._sched, rule, name, fn, args, kwargs or None, is_coro,
            priority=priority, key=key, max_retries=retries, timeout=per_attempt, keep_result=keep_result,
            misfire_grace=grace, coalesce=check_bool("coalesce", coalesce), overlap=check_bool("overlap", overlap),
        )  # fmt: skip
        if key is not None:
            self._sched.use_keys()  # its runs enter the heap with a key
        self._sched.add_schedule(schedule)
        return schedule

    def schedules(self) -> list[Schedule]:
        """The queue's schedules in force (paused ones included), oldest first. Any thread."""
        return self._sched.schedules()

    # --------------------------------------------------------------------- keys

    def limit(
        self,
        key: Hashable | None = None,
        /,
        *,
        pattern: str | None = None,
        concurrency: int | None = None,
        rate: float | None = None,
        burst: int = 1,
    ) -> None:
        """Limit the tasks of ``key`` (or of each str key matching the glob ``pattern``); no limit given: clear.

        ``concurrency``: at most this many of its tasks run at once.
        ``rate``: at most ``rate`` starts per second, with bursts of up to
        ``burst`` (a token bucket holding ``burst`` tokens, refilled at
        ``rate`` per second, one per start, retries included): in any window
        of ``w`` seconds at most ``burst + rate * w`` start. A task over its
        key's limit waits without holding a worker or blocking other keys.

        A pattern's limit applies to each matching key on its own (``"*"``
        limits every str key). A key's own limit comes first, then the
        patterns in the order they were set. Changing a limit applies at
        once, to the tasks waiting too; a pattern set again keeps its place.
        Any thread.
        """
        if (key is None) == (pattern is None):
            raise TypeError("limit() takes a key, or pattern= (a glob such as '*.example.com'), not both or neither")
        if key is not None:
            check_key(key)
        elif type(pattern) is not str or not pattern:
            raise TypeError(f"pattern must be a non-empty str (a glob such as '*.example.com'), got {pattern!r}")
        if concurrency is not None:
            check_int("concurrency", concurrency, minimum=1)
        if rate is not None:
            rate = check_rate("rate", rate, low=1 / MAX_SECONDS, unit=" starts per second")
        check_int("burst", burst, minimum=1)
        if burst != 1 and rate is None:
            raise ValueError(f"burst={burst} needs a rate= (burst is the size of the rate's token bucket)")
        new = None if concurrency is None and rate is None else Limit(concurrency, rate, burst)
        self._sched.set_limit(key, pattern, new)

    def pause_key(self, key: Hashable, seconds: float) -> None:
        """Start no task of ``key`` for ``seconds`` (a server answered 429); tasks of other keys go on.

        Its running tasks go on; its waiting ones wait, holding no worker. A
        pause that already lasts longer is kept. End it early with
        ``resume_key``. Any thread, handlers included.
        """
        check_key(key)
        wait = check_span("seconds", seconds)
        self._sched.pause_key(key, wait)

    def resume_key(self, key: Hashable) -> bool:
        """End a pause of ``key`` now; False if it was not paused. Any thread."""
        check_key(key)
        return self._sched.resume_key(key)

    @overload
    def key_stats(self) -> dict[Hashable, KeyStats]: ...

    @overload
    def key_stats(self, key: Hashable) -> KeyStats: ...

    def key_stats(self, key: Hashable | None = None) -> KeyStats | dict[Hashable, KeyStats]:
        """A snapshot of ``key``, or (no key) of every key the queue keeps state for. Any thread.

        Keys are forgotten once idle (nothing waiting or running, no pause,
        a full bucket), so the dict holds the keys that matter now.
        """
        if key is None:
            return self._sched.all_key_stats()
        check_key(key)
        return self._sched.key_stats(key)


def _zone(tz: tzinfo | str) -> tzinfo:
    if isinstance(tz, tzinfo):
        return tz
    if type(tz) is not str:
        raise TypeError(f"tz must be a tzinfo or an IANA time zone name such as 'Europe/Paris', got {tz!r}")
    try:
        return zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"tz {tz!r} is not a time zone this system knows; use an IANA name such as 'Europe/Paris'"
        ) from None


def check_cron(expr: object) -> None:
    """A cron expression cronsim accepts; ImportError with the fix when cronsim is missing."""
    if type(expr) is not str:
        raise TypeError(f"expr must be a cron expression str such as '0 2 * * *', got {expr!r}")
    try:
        from cronsim import CronSim, CronSimError
    except ImportError:
        raise ImportError("cron() needs the cronsim package: pip install 'hybrid_queue[cron]'") from None

    try:
        CronSim(expr, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        raise ValueError(f"expr {expr!r} is not a valid cron expression: {exc}") from None
