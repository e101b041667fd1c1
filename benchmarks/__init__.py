"""The benchmark suite of hybrid_queue: ``python -m benchmarks --help``.

Every contender of the throughput groups runs in one process, round by round
(round 1 of every contender, then round 2 of every contender, ...), so that
drift of the machine hits all of them alike. Each round builds its queue or
pool afresh and checks that every task ran exactly once; a contender that
gets a wrong count stops the run with :class:`CheckFailed`.

Tables go to stdout, ending with a summary of our figure against each
peer's, a progress bar with an ETA to stderr, and the same figures as JSON
(with the environment: CPU, Python, loop kinds, versions, git revision) and
PNG plots to ``benchmarks/results/`` (or ``--out DIR``).

``--ab REV`` measures our own rows for the working tree and a git revision
in alternating fresh processes; ``--compare A.json B.json`` prints the same
ratio table from two saved runs (see ``benchmarks._ab``). Each group is one
module that registers a ``Group`` (see ``benchmarks._registry``).
"""

from ._harness import CheckFailed as CheckFailed

__all__ = ("CheckFailed",)
