"""A queue's lifecycle: one state, with checked transitions, and what each state allows.

::

    NEW ──start()──> RUNNING ──shutdown()──> DRAINING ──cancel──> CANCELLING ──> STOPPED
     └──────────────shutdown()──────────────────┘                     (DRAINING ──> STOPPED too)
    any state ──os.fork(), in the child──> ORPHANED

The state is owned by the scheduler and changed under its lock (the
``move`` calls); the three flags derived from it (``claims``, ``accepts``,
``retries``) are plain attributes, read without the lock on the hot paths,
and written only by ``move``, so they can never disagree with the state.
"""

from __future__ import annotations

import enum

__all__ = ["Lifecycle", "LifecycleState"]


class Lifecycle(enum.Enum):
    """Where a queue is in its life."""

    NEW = "new"
    """Made, not started: submits are accepted and wait in the heap."""
    RUNNING = "running"
    """Started: tasks are claimed and run."""
    DRAINING = "draining"
    """Shutting down: no submit is accepted; what is queued still runs, retries included."""
    CANCELLING = "cancelling"
    """Shutting down and cancelling: nothing new starts, a failure ends its task without retry."""
    STOPPED = "stopped"
    """Shut down: nothing runs any more; stored results stay readable."""
    ORPHANED = "orphaned"
    """A forked child's copy of a started queue: its loop and threads are the parent's; refuses everything."""


_ALLOWED: dict[Lifecycle, frozenset[Lifecycle]] = {
    Lifecycle.NEW: frozenset({Lifecycle.RUNNING, Lifecycle.DRAINING, Lifecycle.ORPHANED}),
    Lifecycle.RUNNING: frozenset({Lifecycle.DRAINING, Lifecycle.ORPHANED}),
    Lifecycle.DRAINING: frozenset({Lifecycle.CANCELLING, Lifecycle.STOPPED, Lifecycle.ORPHANED}),
    Lifecycle.CANCELLING: frozenset({Lifecycle.STOPPED, Lifecycle.ORPHANED}),
    Lifecycle.STOPPED: frozenset({Lifecycle.ORPHANED}),
    Lifecycle.ORPHANED: frozenset(),
}

_CLAIMS = frozenset({Lifecycle.RUNNING, Lifecycle.DRAINING, Lifecycle.CANCELLING})
_ACCEPTS = frozenset({Lifecycle.NEW, Lifecycle.RUNNING})
_RETRIES = frozenset({Lifecycle.NEW, Lifecycle.RUNNING, Lifecycle.DRAINING})


class LifecycleState:
    """The one lifecycle state of a queue, and the flags derived from it. See the module docstring.

    ``claims``: free slots take tasks from the heap; ``accepts``: a submit is
    accepted; ``retries``: a failed attempt may be retried.
    """

    __slots__ = ("accepts", "claims", "retries", "state")

    def __init__(self) -> None:
        self.state = Lifecycle.NEW
        self.claims = False
        self.accepts = True
        self.retries = True

    def move(self, to: Lifecycle) -> None:
        """Go to ``to``. Under the owner's lock. Raises RuntimeError for a transition the diagram has not."""
        if to not in _ALLOWED[self.state]:
            raise RuntimeError(f"a queue cannot go from {self.state.value} to {to.value}")
        self.state = to
        self.claims = to in _CLAIMS
        self.accepts = to in _ACCEPTS
        self.retries = to in _RETRIES
