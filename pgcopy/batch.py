"""Small tables, several per destination transaction.

A small table costs more in per-table overhead (a commit, round trips, a thread and a
pipe) than in data; thousands of them would take most of a run.  A worker takes a batch of
them (see ``plan.batches``):

1. reads every table of the batch from the source, in one transaction that imports the
   run's snapshot, each into a spool (memory, disk past ``SPOOL_MEMORY``); a savepoint per
   table keeps one unreadable table from failing the others;
2. loads them all in one destination transaction and commits once;
3. if a table fails there, rolls back and loads the batch again without it, so every table
   still ends fully old or fully new and one bad table costs the others nothing.

The source transaction stays open until the batch commits, for ``--verify``'s digests.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace

import psycopg2
from psycopg2 import sql

from pgcopy import failpoints
from pgcopy.catalog import lock_holders
from pgcopy.connections import error_line
from pgcopy.stream import (
    CHUNK,
    Completion,
    StreamSpec,
    TableResult,
    begin_load,
    check_counts,
    complete_table,
    copy_empty_rows,
    copy_from,
    copy_to,
    empty_table,
    read_sequences,
    setval,
)
from pgcopy.task import CopyTask

SPOOL_MEMORY = 512 << 10  # per table; more spills to a temp file, so a batch stays small in memory


class Spool:
    """A table's rows in memory up to ``limit`` bytes, then in an unlinked temporary file:
    tempfile.SpooledTemporaryFile's job, without importing tempfile (with random, shutil,
    bz2 and lzma: 0.8 MB of RSS in every worker, measured) until a table spills."""

    def __init__(self, limit: int = SPOOL_MEMORY):
        self._file: io.BytesIO | io.BufferedRandom = io.BytesIO()
        self._limit: int | None = limit

    def write(self, data) -> int:
        n = self._file.write(data)
        if self._limit is not None and self._file.tell() > self._limit:
            import tempfile

            spilled = tempfile.TemporaryFile()
            spilled.write(self._file.getbuffer())
            self._file, self._limit = spilled, None
        return n

    def read(self, size: int = -1) -> bytes:
        return self._file.read(size)

    def tell(self) -> int:
        return self._file.tell()

    def seek(self, pos: int) -> None:
        self._file.seek(pos)

    @property
    def spilled(self) -> bool:
        return self._limit is None

    def close(self) -> None:
        self._file.close()


@dataclass
class Spooled:
    """One small table's rows, read from the source and waiting for their COPY FROM."""

    index: int
    task: CopyTask
    data: Spool | None  # None for a table without columns
    rows: int
    nbytes: int
    read_seconds: float


Report = Callable[[int, TableResult], None]  # called as soon as a table's outcome is final
Holders = Callable[[tuple[str, str]], str]  # "; held by pid N (...)" for a table's lock, or ""


def read_batch(
    src, items: list[tuple[int, CopyTask]], slot, report: Report, holders: Holders = lambda key: ""
) -> list[Spooled]:
    """Every table's rows from the source transaction already begun on ``src``; a table
    whose lock wait timed out is reported with ``holders(key)`` appended."""
    cur = src.cursor()
    spooled: list[Spooled] = []
    # each table's COPY goes behind a savepoint of its own, set in the same round trip
    # (the previous one released); a table that fails rolls back to it, and it stays
    cur.execute("SAVEPOINT pgcopy_read")
    renew = sql.SQL("RELEASE SAVEPOINT pgcopy_read; SAVEPOINT pgcopy_read; ")
    for index, task in items:
        slot.begin(index)
        t0 = time.monotonic()
        data = Spool() if task.columns else None
        try:
            if data is not None:
                cur.copy_expert(renew + copy_to(task), data, size=CHUNK)
                rows, nbytes = cur.rowcount, data.tell()
                data.seek(0)
            else:
                rows, nbytes = 0, 0
        except psycopg2.Error as exc:
            if data is not None:
                data.close()
            cur.execute("ROLLBACK TO SAVEPOINT pgcopy_read")
            error = error_line(exc)
            if isinstance(exc, psycopg2.errors.LockNotAvailable):
                error += holders(task.key)
            report(index, TableResult(task.key, error=error, side="source"))
            continue
        slot.add(nbytes, nbytes)
        spooled.append(Spooled(index, task, data, rows, nbytes, time.monotonic() - t0))
    return spooled


class TableFailed(Exception):
    """``index`` is the table that failed, None when a statement for several tables did
    (the group is then loaded again one statement per table, to find which)."""

    def __init__(self, index: int | None, cause: BaseException):
        super().__init__(str(cause))
        self.index, self.cause = index, cause


def _plain(task: CopyTask, spec: StreamSpec) -> bool:
    """Nothing to do around its rows but emptying the table and setting its sequences: a
    batch does those for all such tables in one statement each (one round trip instead of
    two per table, which is what thousands of tiny tables cost)."""
    return bool(task.columns) and not (task.triggers or task.checks or task.indexes or spec.verify)


def _empty_all(dcur, plain: list[Spooled]) -> None:
    """The tables are locked already (``_lock_free``); TRUNCATE where DELETE would not do."""
    dcur.execute(
        sql.SQL("; ").join(
            [
                sql.SQL("DELETE FROM ONLY " if s.task.clear == "delete" else "TRUNCATE ONLY ")
                + sql.Identifier(*s.task.key)
                for s in plain
            ]
        )
    )


def _commit_setting_sequences(src, dst, dcur, plain: list[Spooled]) -> None:
    """Set the plain tables' sequences (read from the source just now) and commit, in one
    message: the server runs its statements back to back, so a client that dies or a stop
    cannot come between the setvals and the COMMIT.  ``setval`` is not transactional, and
    ``ALTER SEQUENCE ... RESTART`` (which makes it so) gives each sequence a new relation file: 0.3 ms each,
    half of the load's time at 1,000 tiny tables (benchmarks/many_tables.py).  Deferred
    constraints were checked at each statement's end (``begin_load``), so the COMMIT has
    nothing left to fail on after the setvals.  The trailing BEGIN leaves the server in the
    transaction psycopg2 believes is open; the commit() after it ends that empty one (no
    WAL, no flush)."""
    keys = [k for s in plain for k in s.task.sequences]
    if not keys:
        dst.commit()
        return
    with _failing(dst, None):
        seqs = read_sequences(src.cursor(), keys)
        setvals = sql.SQL(", ").join(setval(seq) for seq in seqs)
        dcur.execute(
            sql.SQL("SELECT ") + setvals + sql.SQL("; COMMIT; BEGIN"),
            [v for seq in seqs for v in (seq.last_value, seq.is_called)],
        )
    dst.commit()


def _rollback(dst) -> None:
    if not dst.closed:
        try:
            dst.rollback()
        except psycopg2.Error:
            pass  # the connection is gone; copy_batch sees it closed


@contextmanager
def _failing(dst, index: int | None):
    """Any error inside rolls the batch back and is raised as TableFailed(index)."""
    try:
        yield
    except Exception as exc:
        _rollback(dst)
        raise TableFailed(index, exc) from exc


def _lock_nowait(keys: list) -> sql.Composed:
    tables = sql.SQL(", ").join([sql.Identifier(*k) for k in keys])
    return (
        sql.SQL("SAVEPOINT pgcopy_lock; LOCK TABLE ONLY ")
        + tables
        + sql.SQL(" IN ACCESS EXCLUSIVE MODE NOWAIT")
    )


def _lock_free(dcur, spooled: list[Spooled]) -> tuple[list[Spooled], list[Spooled]]:
    """Lock the batch's tables without waiting: (locked, busy).  A busy table is loaded on
    its own afterwards, so a lock held elsewhere never keeps the others locked (and their
    readers waiting) for a lock timeout, nor makes them roll back with it at a stop."""
    try:  # the usual case, in one round trip: nobody else holds any of them
        dcur.execute(_lock_nowait([s.task.key for s in spooled]))
        return spooled, []
    except psycopg2.errors.LockNotAvailable:
        dcur.execute("ROLLBACK TO SAVEPOINT pgcopy_lock")
    locked, busy = [], []
    for s in spooled:
        try:
            dcur.execute(_lock_nowait([s.task.key]))
            locked.append(s)
        except psycopg2.errors.LockNotAvailable:
            dcur.execute("ROLLBACK TO SAVEPOINT pgcopy_lock")
            busy.append(s)
    return locked, busy


def _load(
    src, dst, spooled: list[Spooled], spec: StreamSpec, slot, wait: bool, together: bool = True
) -> tuple[list, list[Spooled]]:
    """One destination transaction for the tables; returns (results, busy tables left
    out); raises TableFailed (rolled back).  Without ``wait`` busy tables are left out.
    With ``together``, plain tables are emptied, and their sequences set, all at once."""
    scur, dcur = src.cursor(), dst.cursor()
    out = []
    busy: list[Spooled] = []
    plain: list[Spooled] = []
    with _failing(dst, spooled[0].index):
        begin_load(dcur, spec)
        if not wait:
            spooled, busy = _lock_free(dcur, spooled)
            plain = [s for s in spooled if together and _plain(s.task, spec)]
    together_done = {s.index for s in plain}
    if plain:
        with _failing(dst, None):
            _empty_all(dcur, plain)
    for s in spooled:
        t0 = time.monotonic()
        slot.begin(s.index)  # the display shows the table being loaded (or waiting for its lock)
        slot.add(s.nbytes, s.nbytes)
        with _failing(dst, s.index):
            rebuilt = False if s.index in together_done else empty_table(dcur, s.task)
            if s.data is None:
                src_rows, dst_rows = copy_empty_rows(scur, dcur, s.task)
            else:
                s.data.seek(0)
                failpoints.hit("mid-copy", in_worker=True)
                dcur.copy_expert(copy_from(s.task), s.data, size=CHUNK)
                src_rows, dst_rows = s.rows, dcur.rowcount
            check_counts(src_rows, dst_rows)
            done = (
                Completion()
                if s.index in together_done
                else complete_table(scur, dcur, s.task, spec, rebuilt)
            )
        seconds = s.read_seconds + time.monotonic() - t0
        result = TableResult(
            s.task.key,
            dst_rows,
            s.nbytes,
            s.nbytes,
            seconds,
            s.task.format,
            verified=done.verified,
            verify_seconds=done.verify_seconds,
            batched=True,
        )
        out.append((s.index, result))
    _commit_setting_sequences(src, dst, dcur, plain)
    return out, busy


def copy_batch(
    src,
    dst,
    items: list[tuple[int, CopyTask]],
    spec: StreamSpec,
    slot,
    stopped: Callable[[], bool],
    report: Report,
    holders: Holders = lambda key: "",
) -> None:
    """Load a batch of small tables; every table's result, done or failed, goes to
    ``report`` right after its commit or failure.  The source transaction must already be
    begun (with the run's snapshot) on ``src``."""
    spooled = read_batch(src, items, slot, report, holders)
    try:
        busy = _load_until_done(src, dst, spooled, spec, slot, stopped, report, wait=False)
        for s in busy:  # alone, waiting for its lock like any big table
            _load_until_done(src, dst, [s], spec, slot, stopped, report, wait=True)
    finally:
        for s in spooled:
            if s.data is not None:
                s.data.close()


def _load_until_done(
    src, dst, group: list[Spooled], spec, slot, stopped, report: Report, wait: bool
) -> list[Spooled]:
    """Load ``group`` in one transaction, leaving out each table that fails and trying
    again; reports every table's result and returns the busy ones left out."""
    group = list(group)
    together = True
    while group:
        try:
            done, busy = _load(src, dst, group, spec, slot, wait, together)
        except TableFailed as exc:
            if stopped() or dst.closed or src.closed:
                # a stop cancelled it, or a connection is gone: the whole group rolled back
                for s in group:
                    report(s.index, _failed(s.task, exc.cause, src))
                return []
            if exc.index is None:  # a statement for several tables: find which one
                together = False
                continue
            bad = next(s for s in group if s.index == exc.index)
            res = _failed(bad.task, exc.cause, src)
            if isinstance(exc.cause, psycopg2.errors.LockNotAvailable):
                res = replace(res, error=res.error + lock_holders(dst, bad.task.key))
            report(bad.index, res)
            group.remove(bad)
            continue
        for index, res in done:
            report(index, res)
        return busy
    return []


def _failed(task: CopyTask, exc: BaseException, src) -> TableResult:
    conn = getattr(getattr(exc, "cursor", None), "connection", None)
    return TableResult(task.key, error=error_line(exc), side="source" if conn is src else "destination")
