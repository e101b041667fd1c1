"""The durable group: what a journal costs per task, against two SQLite task queues, and how fast a restart recovers.

One step run once, on SQLite files in a temporary directory (removed after);
METHOD says how. Throughput: the same N no-op tasks through hybrid_queue
without and with ``journal=`` (by ``submit_nowait`` and by ``await submit``),
huey's ``SqliteHuey`` and persist-queue's ``SQLiteAckQueue``. Recovery: from
``HybridQueue(journal=...)`` on 100,000 pending durable tasks (2,000 in a
quick run) to the first handler's start. The handlers are module-level
functions of this module: a durable task's handler is stored by its import path.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import shutil
import sqlite3
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any

from hybrid_queue import HybridQueue, SQLiteJournal

from ._harness import WORKERS, Settings, Tally, check_equal, run_async, slices
from ._plots import figure, save, title
from ._registry import Group, Mark, SummaryRow, Tick, register
from ._report import SELF, Column, mark, table

__all__ = ["GROUP", "METHOD", "noop", "noop_sync"]

NOWAIT, NOWAIT_DURABLE = "hybrid_queue: submit_nowait", "hybrid_queue: submit_nowait + sync_journal, journal="
NOWAIT_BOUNDED = "hybrid_queue: submit_nowait + sync_journal, journal=SQLiteJournal(bounded_reruns=True)"
AWAIT, AWAIT_DURABLE = "hybrid_queue: await submit", "hybrid_queue: await submit, journal="
SUBMITTERS = 100  # coroutines awaiting submit side by side, in the group-commit rows
SIDE, SIDE_DURABLE = (
    f"hybrid_queue: await submit, {SUBMITTERS} submitters",
    f"hybrid_queue: await submit, {SUBMITTERS} submitters, journal=",
)
HUEY = "huey: SqliteHuey enqueue, dequeue + execute"
PERSIST = "persist-queue: SQLiteAckQueue put, get + ack"
PEERS = (HUEY, PERSIST)
# Each durable row, its row without a journal, and its path's name.
PAIRS = (
    (NOWAIT_DURABLE, NOWAIT, "submit_nowait + sync_journal"),
    (SIDE_DURABLE, SIDE, f"await submit, {SUBMITTERS} submitters"),
    (AWAIT_DURABLE, AWAIT, "await submit"),
)
# Each durable row and its row without a journal: PAIRS's, and the option's (no target: it trades speed).
BASE = {**{durable: memory for durable, memory, _ in PAIRS}, NOWAIT_BOUNDED: NOWAIT}
COST = 3.0  # target: a durable task's time over the same path's without a journal, at most
LEAD = 10.0  # target: durable tasks/s over each peer's, at least
RECOVERY_S = 1.0  # target: seconds from the queue's construction to the first handler's start

METHOD = {
    "throughput": f"N no-op tasks (one int argument) per round and contender, timed from the queue's creation on a new "
    "file to its shutdown (file closed); rounds interleaved, gc.collect() before each, medians. hybrid_queue: "
    f"{WORKERS} workers, coroutine handlers, default keep_result (with a journal, each result is written too), "
    "then each handle awaited in turn; submit_nowait rows: every task submitted, then (journal=) one "
    "sync_journal(); await submit rows: each submit returns once the task's row is committed (with a journal), "
    f"one after the other, or from {SUBMITTERS} coroutines side by side (each a slice of the tasks; their "
    "submits share commits); bounded_reruns=True: each worker slot stays busy until its task's end is "
    "committed (no target: the option trades throughput for fewer re-runs after a crash). "
    "The peers in one thread as their own consumers do, each call committed before it returns: huey "
    "(@huey.task() then one call per task to enqueue; then huey.dequeue() + huey.execute() until empty; dequeue "
    "deletes the row in the transaction that reads it, huey's ack; None results are not stored) and "
    "persist-queue (put(i); then get(raw=True), the handler, ack(id=)); both set to synchronous=NORMAL in WAL "
    "mode, as the journal (their defaults leave SQLite's FULL: an fsync per commit). Checked: every task ran "
    "once, and no task row is left in the journal",
    "recovery": "a journal filled by submit_nowait of M durable tasks to a queue never started, sync_journal(), "
    "shutdown() (which keeps them), then copied once per round; timed from HybridQueue(WORKERS, journal=copy) to "
    "the first line of the first handler, after await start(); then every task drained by shutdown() and checked "
    "to have run once (the file is in the OS page cache, as right after it was written)",
}


@dataclass(frozen=True, slots=True)
class _Sizes:
    n: int  # tasks per round and contender
    rounds: int
    recover: int  # pending tasks in the recovered journal
    recover_rounds: int


def _sizes(settings: Settings) -> _Sizes:
    if settings.quick:
        return _Sizes(settings.n, 1, 2_000, 1)
    # The peers take about 0.2 ms per task: make bench keeps the group to about 20 s.
    if not settings.full:
        return _Sizes(min(settings.n, 5_000), min(settings.rounds, 3), 100_000, 1)
    return _Sizes(min(settings.n, 10_000), settings.rounds, 100_000, 3)


class _Record(Tally):
    """What the handlers record: each task's runs, and when the first handler started."""

    __slots__ = ("first",)

    def reset(self, n: int) -> _Record:
        """Start over for ``n`` tasks; returns itself."""
        super().__init__(n)
        self.first = 0.0
        return self


_record = _Record(0)


def noop_sync(i: int) -> None:
    """The peers' handler: records that task ``i`` ran."""
    record = _record
    record.hits[i] += 1
    if not record.first:
        record.first = perf_counter()


async def noop(i: int) -> None:
    """hybrid_queue's handler: as ``noop_sync``, as a coroutine."""
    noop_sync(i)


def _left_in_journal(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("SELECT count(*) FROM tasks").fetchone()[0])


async def _hybrid(n: int, path: Path | None, how: str, bounded: bool = False) -> float:
    record = _record.reset(n)
    started = perf_counter()
    journal = SQLiteJournal(path, bounded_reruns=True) if bounded and path is not None else path
    queue = HybridQueue(WORKERS, journal=journal)
    await queue.start()
    submit = queue.submit
    if how == "nowait":
        submit_nowait = queue.submit_nowait
        handles = [submit_nowait(noop, i) for i in range(n)]
        if path is not None:
            await queue.sync_journal()
    elif how == "await":
        handles = [await submit(noop, i) for i in range(n)]
    else:

        async def submitter(part: range) -> list[Any]:
            return [await submit(noop, i) for i in part]

        parts = await asyncio.gather(*(submitter(part) for part in slices(n, SUBMITTERS)))
        handles = [handle for part in parts for handle in part]
    for handle in handles:
        await handle
    await queue.shutdown()
    elapsed = perf_counter() - started
    who = f"durable group, {how}, journal={path is not None}, bounded_reruns={bounded}"
    record.check(who)
    check_equal(who, "stats().completed", queue.stats().completed, n)
    if path is not None:
        check_equal(who, "task rows left in the journal", _left_in_journal(path), 0)
    return elapsed


def _huey(n: int, path: Path) -> float:
    from huey import SqliteHuey  # type: ignore[import-untyped]  # no stubs

    record = _record.reset(n)
    started = perf_counter()
    huey = SqliteHuey(filename=str(path))
    huey.storage.conn.execute("PRAGMA synchronous=NORMAL")
    task = huey.task()(noop_sync)
    for i in range(n):
        task(i)
    while (message := huey.dequeue()) is not None:
        huey.execute(message)
    huey.storage.close()
    elapsed = perf_counter() - started
    record.check(HUEY)
    return elapsed


def _persist(n: int, path: Path) -> float:
    from persistqueue import SQLiteAckQueue

    record = _record.reset(n)
    started = perf_counter()
    queue = SQLiteAckQueue(str(path))
    queue._conn.execute("PRAGMA synchronous=NORMAL")  # its one connection (multithreading=False); no option for it
    for i in range(n):
        queue.put(i)
    for _ in range(n):
        item = queue.get(block=False, raw=True)
        noop_sync(item["data"])
        queue.ack(id=item["pqid"])
    acked = queue.acked_count()
    queue.close()
    elapsed = perf_counter() - started
    record.check(PERSIST)
    check_equal(PERSIST, "acked_count()", acked, n)
    return elapsed


def _throughput(sizes: _Sizes, loop: str, root: Path, tick: Tick) -> list[dict[str, Any]]:
    names = (NOWAIT, NOWAIT_DURABLE, NOWAIT_BOUNDED, SIDE, SIDE_DURABLE, AWAIT, AWAIT_DURABLE, HUEY, PERSIST)
    how = {NOWAIT: "nowait", NOWAIT_DURABLE: "nowait", NOWAIT_BOUNDED: "nowait", SIDE: "side", SIDE_DURABLE: "side"}
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(sizes.rounds):
        for k, name in enumerate(names):
            where = root / f"round-{r}-{k}"
            where.mkdir()
            gc.collect()
            if name in PEERS:
                peer, file = (_huey, "huey.db") if name == HUEY else (_persist, "persist-queue")
                samples[name].append(peer(sizes.n, where / file))
            else:
                path = where / "journal.db" if "journal=" in name else None
                run = functools.partial(_hybrid, sizes.n, path, how.get(name, "await"), name == NOWAIT_BOUNDED)
                samples[name].append(run_async(loop, run))
            shutil.rmtree(where)
        tick(0.7 * (r + 1) / sizes.rounds)
    us = {name: statistics.median(values) / sizes.n * 1e6 for name, values in samples.items()}
    return [{"name": name, "tasks": sizes.n, "us_per_task": us[name], "tasks_per_s": 1e6 / us[name],
             "spread": (max(samples[name]) - min(samples[name])) / statistics.median(samples[name]),
             "over_memory": us[name] / us[BASE[name]] if name in BASE else None,
             "over_peers": {p: us[p] / us[name] for p in PEERS} if "journal=" in name else None}
            for name in names]  # fmt: skip


async def _fill(path: Path, m: int) -> float:
    started = perf_counter()
    queue = HybridQueue(WORKERS, journal=path)
    submit_nowait = queue.submit_nowait
    for i in range(m):
        submit_nowait(noop, i)
    await queue.sync_journal()
    await queue.shutdown()  # never started: the tasks stay in the journal
    return perf_counter() - started


async def _recover(path: Path, m: int) -> dict[str, Any]:
    who = "durable group, recovery"
    record = _record.reset(m)
    started = perf_counter()
    queue = HybridQueue(WORKERS, journal=path)
    built = perf_counter()
    check_equal(who, "stats().pending after the journal was read", queue.stats().pending, m)
    await queue.start()
    await queue.shutdown()  # drains every task
    ended = perf_counter()
    record.check(who)
    check_equal(who, "task rows left in the journal", _left_in_journal(path), 0)
    return {"construct_s": built - started, "first_start_s": record.first - started, "all_ran_s": ended - started}


def _recovery(sizes: _Sizes, loop: str, root: Path, tick: Tick) -> dict[str, Any]:
    source = root / "filled.db"
    fill_s = run_async(loop, functools.partial(_fill, source, sizes.recover))
    size = source.stat().st_size
    rounds = []
    for r in range(sizes.recover_rounds):
        copy = root / f"recover-{r}.db"
        shutil.copyfile(source, copy)
        gc.collect()
        rounds.append(run_async(loop, functools.partial(_recover, copy, sizes.recover)))
        tick(0.7 + 0.3 * (r + 1) / sizes.recover_rounds)
    row = {key: statistics.median(x[key] for x in rounds) for key in rounds[0]}
    return {"tasks": sizes.recover, "rounds": sizes.recover_rounds, "journal_mib": size / 2**20, "fill_s": fill_s,
            **row}  # fmt: skip


def _once(settings: Settings, tick: Tick) -> dict[str, Any]:
    sizes, loop = _sizes(settings), settings.loops[0]
    with tempfile.TemporaryDirectory(prefix="hybrid_queue-durable-") as tmp:
        root = Path(tmp)
        return {"loop": loop, "rounds": sizes.rounds, "method": METHOD, "directory": str(root.parent),
                "throughput": _throughput(sizes, loop, root, tick),
                "recovery": _recovery(sizes, loop, root, tick)}  # fmt: skip


def _estimate(settings: Settings) -> float:
    s = _sizes(settings)
    return s.n * s.rounds * 800e-6 + s.recover * (35e-6 + s.recover_rounds * 30e-6)


def _col(header: str, key: str, spec: str) -> Column:
    return (header, lambda row: format(row[key], spec))


def _ratio(row: dict[str, Any], peer: str | None = None) -> str:
    value = row["over_memory"] if peer is None else row["over_peers"] and row["over_peers"][peer]
    return SELF if value is None else f"{value:.2f}x"


def _report(result: dict[str, Any], settings: dict[str, Any]) -> str:
    r, rec = result["rounds"], result["recovery"]
    columns: list[Column] = [
        ("contender", lambda row: row["name"] + (" [ref]" if row["name"] in PEERS else "")),
        _col("tasks", "tasks", ","), _col("us/task", "us_per_task", ".2f"), _col("tasks/s", "tasks_per_s", ",.0f"),
        _col("spread", "spread", ".0%"), ("time over no journal", _ratio),
        *((f"tasks/s over {p.split(':')[0]}", functools.partial(_ratio, peer=p)) for p in PEERS),
    ]  # fmt: skip
    recovery = [_col("pending tasks", "tasks", ","), _col("journal MiB", "journal_mib", ".1f"),
                _col("fill s", "fill_s", ".2f"), _col("constructed s", "construct_s", ".3f"),
                _col("first handler start s", "first_start_s", ".3f"),
                _col("all ran s", "all_ran_s", ".2f")]  # fmt: skip
    notes = [
        f"targets: time over no journal <= {COST:g}x; durable tasks/s over each peer's >= {LEAD:g}x. spread: "
        f"(max - min) / median of the rounds. Files in a temporary directory in {result['directory']}"
    ]
    rounds = [f"median of {k} rounds" if k > 1 else "1 round" for k in (r, rec["rounds"])]
    return "\n\n".join([
        table(f"== durable group, throughput ({result['loop']}, {rounds[0]})", columns, result["throughput"],
              [result["method"]["throughput"], *notes]),
        table(f"== durable group, recovery ({result['loop']}, {rounds[1]})", recovery, [rec],
              [result["method"]["recovery"], f"target: first handler start <= {RECOVERY_S:g} s after the "
               "construction began (fill: making the journal, not timed against a target)"], left=()),
    ])  # fmt: skip


def _plot(result: dict[str, Any], settings: dict[str, Any], out: Path) -> list[Path]:
    rows = result["throughput"]
    fig, ax = figure(size=(9, 4))
    colours = [("tab:green" if r["name"] in PEERS else "tab:blue" if r["over_memory"] else "tab:grey") for r in rows]
    bars = ax.barh([r["name"] for r in rows], [r["tasks_per_s"] for r in rows], color=colours)
    ax.bar_label(bars, labels=[f"{r['tasks_per_s']:,.0f}/s" for r in rows], padding=3, fontsize="small")
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(min(r["tasks_per_s"] for r in rows) / 2, max(r["tasks_per_s"] for r in rows) * 4)
    ax.set_xlabel("no-op tasks per second (log scale; more is better)")
    title(ax, f"What does durability cost? {rows[0]['tasks']:,} tasks per round; blue: hybrid_queue with journal=")
    return [save(fig, out / "durable.png")]


def _summary(result: dict[str, Any], settings: dict[str, Any]) -> list[SummaryRow]:
    us = {r["name"]: r["us_per_task"] for r in result["throughput"]}
    return [
        SummaryRow(f"durable tasks, {path} ({result['loop']})", "us", us[name], peer.split(":")[0], us[peer])
        for name, _, path in PAIRS
        for peer in PEERS
    ]


def _targets(result: dict[str, Any], settings: dict[str, Any]) -> list[Mark]:
    rows = {r["name"]: r for r in result["throughput"]}
    marks = []
    for durable, _, path in PAIRS:
        row = rows[durable]
        marks.append(mark(settings, f"durable time over no journal, {path}", row["over_memory"], COST, "x"))
        marks += [mark(settings, f"durable tasks/s over {p.split(':')[0]}'s, {path}", row["over_peers"][p], LEAD,
                       "x", at_least=True) for p in PEERS]  # fmt: skip
    rec = result["recovery"]
    first, verdict = rec["first_start_s"], None if settings["quick"] else rec["first_start_s"] <= RECOVERY_S
    what = f"first handler start after recovering {rec['tasks']:,} pending tasks"  # in seconds: no unit of mark()
    return [*marks, Mark(what, first, f"{first:.3f} s", f"<= {RECOVERY_S:g} s", verdict)]


def _sizes_line(settings: Settings) -> str:
    s = _sizes(settings)
    return f"durable: {s.n:,} tasks x {s.rounds} rounds per contender, {s.recover:,} recovered x {s.recover_rounds}"


GROUP = register(
    Group(
        name="durable",
        order=78,
        question="What does a journal cost per task, against SQLite task queues, and how fast does a restart recover?",
        report=_report,
        once=_once,
        estimate=_estimate,
        plot=_plot,
        summary=_summary,
        targets=_targets,
        sizes=_sizes_line,
    )
)
