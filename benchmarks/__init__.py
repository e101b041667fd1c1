"""The benchmark suite of hybrid_queue: ``python -m benchmarks --help``.

Every contender of the throughput groups runs in one process, round by round
(round 1 of every contender, then round 2 of every contender, ...), so that
drift of the machine hits all of them alike. Each round builds its queue or
pool afresh and checks that every task ran exactly once; a contender that
gets a wrong count stops the run with :class:`CheckFailed`.

Tables go to stdout, a progress bar to stderr, and the same figures as JSON
and PNG plots to ``benchmarks/results/`` (or ``--out DIR``).
"""

from ._harness import CheckFailed as CheckFailed

__all__ = ("CheckFailed",)
