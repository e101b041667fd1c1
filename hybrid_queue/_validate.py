"""Argument checks shared by the queue and the retry policy.

Each raises TypeError for a value of the wrong type and ValueError for a value
out of range, with a message naming the parameter, the rule and the value.
"""

from __future__ import annotations

import inspect
import math
import uuid
from collections.abc import Callable
from typing import Any

__all__ = [
    "check_bool",
    "check_delay",
    "check_int",
    "check_key",
    "check_max_retries",
    "check_moment",
    "check_rate",
    "check_span",
    "check_task_id",
    "check_timeout",
    "is_coroutine_function",
    "is_plain_id",
]

# Task ids are looked up under the scheduler's lock, where no code of the
# caller's may run; hashing and comparing these types runs none (UUID's are
# the standard library's, on its int).
_PLAIN_ID_TYPES = frozenset({str, int, float, bytes, bool, uuid.UUID})


def check_int(name: str, value: object, *, minimum: int) -> int:
    """An int (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return value


def check_bool(name: str, value: object) -> bool:
    """True or False, and nothing that merely converts to one."""
    if value is not True and value is not False:
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_max_retries(value: object, name: str = "max_retries") -> int:
    """A retry count: an int >= 0."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= 0, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}; use 0 for a single attempt")
    return value


def _seconds(name: str, value: object, suffix: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds{suffix}, got {value!r}")
    return float(value)


def check_delay(name: str, value: object) -> float:
    """A finite number of seconds >= 0 (retry delays, jitter)."""
    seconds = _seconds(name, value, "")
    if math.isnan(seconds) or seconds < 0 or math.isinf(seconds):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return seconds


def check_timeout(name: str, value: object, *, positive: bool = False, optional: bool = True) -> float | None:
    """A number of seconds >= 0 (> 0 with ``positive``), or None when ``optional``; infinity allowed."""
    if value is None and optional:
        return None
    suffix = " or None" if optional else ""
    seconds = _seconds(name, value, suffix)
    if math.isnan(seconds) or seconds < 0 or (positive and seconds == 0):
        rule = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be {rule} seconds{suffix}, got {value!r}")
    return seconds


def is_coroutine_function(fn: Callable[..., Any]) -> bool:
    """True for an async def function, a partial of one, or an object whose __call__ is one."""
    if inspect.iscoroutinefunction(fn):
        return True
    if isinstance(fn, type):
        return False  # calling a class makes an instance, whatever its __call__ is
    call = getattr(fn, "__call__", None)  # noqa: B004 - an instance with an async __call__
    return call is not None and not inspect.isfunction(fn) and inspect.iscoroutinefunction(call)


def is_plain_id(value: object) -> bool:
    """True for a task id whose hashing and comparison run no user code (see check_task_id)."""
    kind = type(value)
    if kind in _PLAIN_ID_TYPES:
        return True
    return kind is tuple and all(item is None or is_plain_id(item) for item in value)  # type: ignore[attr-defined]


def check_task_id(value: object) -> None:
    """A task id chosen by the caller: a str, int, float, bytes, bool, UUID, or a tuple of those, not empty."""
    if type(value) is not str and not is_plain_id(value):
        raise TypeError(
            "task_id must be a str, int, float, bytes, uuid.UUID or a tuple of those (ids are hashed under the "
            f"queue's lock, where the __hash__/__eq__ of other types could call back into it), got "
            f"{type(value).__qualname__} {value!r}; use str(your_id) or a tuple of its fields"
        )
    if value == "":
        raise ValueError("task_id must not be empty; pass a non-empty id, or None for a generated one")
    if value != value:
        raise ValueError(f"task_id must equal itself to be found again, got {value!r}")


def check_moment(name: str, value: object) -> float:
    """A finite time of the queue's clock (a float ``not_before``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{name} must be a timezone-aware datetime or a time of the queue's clock (queue.time() + seconds), "
            f"got {value!r}"
        )
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite time of the queue's clock, got {value!r}")
    return float(value)


def check_rate(name: str, value: object, *, low: float = 0.0, high: float = math.inf, unit: str = "") -> float:
    """A positive, finite number (a rate, an interval), and within [``low``, ``high``] when given."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a positive number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive, finite number, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be at least {low:g}{unit}, got {value!r}")
    if value > high:
        raise ValueError(f"{name} must be at most {high:g}{unit} (ten years), got {value!r}")
    return float(value)


# The longest span of time the queue schedules on its clock: ten years, far
# past any real use, and well within what its due times (integer
# nanoseconds) and a loop's timers hold.
MAX_SECONDS = 10 * 365.25 * 86400


def check_span(name: str, value: object) -> float:
    """A finite number of seconds >= 0, at most ten years (a delay or pause the queue times)."""
    seconds = check_delay(name, value)
    if seconds > MAX_SECONDS:
        raise ValueError(f"{name} must be at most ten years ({MAX_SECONDS:.0f} s), got {value!r}")
    return seconds


def check_key(value: object, name: str = "key") -> None:
    """A key: a str, int, float, bytes, bool, UUID or a tuple of those, that equals itself."""
    if not is_plain_id(value):
        raise TypeError(
            f"{name} must be a str, int, float, bytes, uuid.UUID or a tuple of those (keys are hashed under the "
            f"queue's lock, where the __hash__/__eq__ of other types could call back into it), got "
            f"{type(value).__qualname__} {value!r}; use str(your_key), e.g. a host name"
        )
    if value != value:
        raise ValueError(f"{name} must equal itself to be found again, got {value!r}")
