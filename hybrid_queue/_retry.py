"""The retry policy: how many attempts a task gets and how long it waits between them."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from ._validate import check_delay, check_max_retries

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Capped exponential backoff.

    Attempt ``n`` (counting retries from 0) waits
    ``min(base_delay * 2 ** n, max_delay)`` seconds before it runs again.
    ``jitter`` in ``[0, 1]`` lowers each delay by a random fraction of at most
    ``jitter``, so a delay is never negative and never above ``max_delay``.
    Only exceptions that are instances of ``retry_on`` are retried; any other
    exception fails the task at once.

    Immutable, so one policy may be shared by any number of queues and threads.
    """

    max_retries: int = 3
    base_delay: float = 0.1
    max_delay: float = 30.0
    jitter: float = 0.0
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        check_max_retries(self.max_retries)
        check_delay("base_delay", self.base_delay)
        check_delay("max_delay", self.max_delay)
        if isinstance(self.jitter, bool) or not isinstance(self.jitter, (int, float)):
            raise TypeError(f"jitter must be a fraction between 0 and 1, got {self.jitter!r}")
        if not 0.0 <= self.jitter <= 1.0:  # NaN fails this too
            raise ValueError(f"jitter must be between 0 and 1, got {self.jitter!r}")
        retry_on = self.retry_on
        if isinstance(retry_on, type):
            retry_on = (retry_on,)
        if not isinstance(retry_on, tuple) or not all(
            isinstance(t, type) and issubclass(t, BaseException) for t in retry_on
        ):
            raise TypeError(f"retry_on must be a tuple of exception classes, got {self.retry_on!r}")
        object.__setattr__(self, "retry_on", retry_on)

    def should_retry(self, retry_count: int) -> bool:
        """True while ``retry_count`` (retries already made) is below ``max_retries``."""
        return retry_count < self.max_retries

    def is_retryable(self, error: BaseException) -> bool:
        """True if ``error`` is one of the exception types in ``retry_on``."""
        return isinstance(error, self.retry_on)

    def get_delay(self, retry_count: int) -> float:
        """Seconds to wait before retry number ``retry_count + 1``."""
        # ldexp is exact for any base (subnormal ones too) and overflows
        # cleanly instead of losing the doubling.
        try:
            exponential = math.ldexp(self.base_delay, retry_count)
        except OverflowError:
            exponential = math.inf
        delay = min(exponential, self.max_delay)
        if self.jitter:
            delay *= 1.0 - self.jitter * random.random()
        return delay
