"""One table through one pipe: source COPY TO -> [codec] -> OS pipe -> destination COPY FROM.

psycopg2 calls ``write()`` once per row on COPY TO, so the writing end is a C-level
buffered file; the destination reads the pipe in chunks of up to 256 KiB in a thread (psycopg2
releases the GIL inside libpq), and bytes are counted per chunk there, never per row.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from dataclasses import dataclass

import psycopg2
from psycopg2 import sql

from pgcopy import digest, failpoints
from pgcopy.catalog import regclass_literal
from pgcopy.codec import Codec, DecompressingReader, open_writer
from pgcopy.progress import NullSlot
from pgcopy.records import by_position
from pgcopy.task import CopyTask, SequenceValue

CHUNK = 1 << 18  # read size for COPY FROM and write buffer for COPY TO
PIPE_SIZE = 1 << 20  # a deeper pipe lets the source run ahead of a busy destination
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)

TRIGGER_STATE = {
    "O": "ENABLE TRIGGER",
    "D": "DISABLE TRIGGER",
    "R": "ENABLE REPLICA TRIGGER",
    "A": "ENABLE ALWAYS TRIGGER",
}


@dataclass(frozen=True)
class StreamSpec:
    """How every table of the run is moved."""

    codec: Codec | None = None
    batch_size: int | None = None  # row mode when set
    lock_timeout: str = "30s"
    analyze: bool = True
    verify: bool = False  # compare digests before the commit (see pgcopy.digest)
    to_utf8: bool = False  # the servers' encodings differ: digest UTF8 bytes
    lock_budget: int = 32  # lock entries one destination transaction may take (see plan.batches)


@by_position
@dataclass(frozen=True, slots=True)
class TableResult:
    """What one table's load did, measured (COPY's own counts), or why it failed."""

    key: tuple[str, str]
    rows: int = 0
    bytes: int = 0  # COPY data (or text values in row mode) as produced by the source
    wire_bytes: int = 0  # what went through the pipe, after the codec
    seconds: float = 0.0
    format: str = ""
    error: str | None = None
    side: str | None = None  # 'source' or 'destination' when it failed
    verified: bool = False
    verify_seconds: float = 0.0
    index_seconds: float = 0.0  # rebuilding the indexes dropped for the load
    batched: bool = False  # loaded with other small tables in one transaction (pgcopy.batch)


class SourceFailed(Exception):
    """Raised into the destination's COPY so it aborts instead of committing a short table."""


class CountingReader:
    """The pipe's reading end; counts bytes per chunk and fails if the source failed."""

    def __init__(self, fd: int, codec: Codec | None, slot):
        self._file = os.fdopen(fd, "rb", buffering=0)
        self._slot = slot
        self._decode = DecompressingReader(self._file.read, codec) if codec else None
        self.nbytes = 0  # decompressed
        self.wire_bytes = 0  # as read from the pipe
        self.source_failed = False

    def read(self, size: int = CHUNK) -> bytes:
        if self._decode is None:
            data = self._file.read(size)
            consumed = len(data)
        else:
            data, consumed = self._decode(size)
        self.wire_bytes += consumed
        self._slot.add(len(data), consumed)  # per chunk: the progress bus
        if self.nbytes == 0 and data:
            failpoints.hit("mid-copy", in_worker=True)
        if not data and self.source_failed:
            raise SourceFailed("the source side of the COPY failed")
        self.nbytes += len(data)
        return data

    def close(self) -> None:
        self._file.close()


# The statements made for every table are put together with ``+`` (sql.Composed), not
# SQL.format: format parses its template each call, which made composing a tiny table's
# statements a large part of a worker's CPU (29 against 14 us for its COPYs).


def copy_to(task: CopyTask) -> sql.Composed:
    """COPY TO with the table's explicit column list (the same as :func:`copy_from`'s)."""
    return _copy_head(task) + sql.SQL(f") TO STDOUT (FORMAT {task.format})")


def copy_from(task: CopyTask) -> sql.Composed:
    """COPY FROM; FREEZE needs the table truncated in this transaction, so a table emptied
    by DELETE goes without."""
    freeze = ", FREEZE" if task.clear == "truncate" else ""
    return _copy_head(task) + sql.SQL(f") FROM STDIN (FORMAT {task.format}{freeze})")


def _copy_head(task: CopyTask) -> sql.Composed:
    cols = sql.SQL(", ").join([sql.Identifier(c) for c in task.columns])
    return sql.SQL("COPY ") + sql.Identifier(*task.key) + sql.SQL(" (") + cols


def begin_load(dcur, spec: StreamSpec) -> None:
    """Settings for a destination load transaction (one table, or a batch of small ones).

    Deferrable constraints (a DEFERRABLE unique key) are checked at the end of each
    statement, not at the commit: a table that breaks one fails at its own COPY, so a
    batch leaves it out like any failing table, and nothing is left to fail at the commit
    (see batch._commit_setting_sequences)."""
    dcur.execute("SET LOCAL lock_timeout = %s; SET CONSTRAINTS ALL IMMEDIATE", (spec.lock_timeout,))


def empty_table(dcur, task: CopyTask) -> bool:
    """Hold off triggers, empty the table, set aside NOT VALID CHECKs, and drop the indexes
    to rebuild; True when they were dropped.  Everything here is undone by a rollback."""
    table = sql.Identifier(*task.key)
    if task.triggers:
        # inside the load transaction, so no failure can leave them disabled
        dcur.execute(sql.SQL("ALTER TABLE ONLY {} DISABLE TRIGGER USER").format(table))
    if task.clear == "delete":
        # the same lock TRUNCATE takes: nobody sees or writes the table until the commit
        dcur.execute(
            sql.SQL("LOCK TABLE ONLY {0} IN ACCESS EXCLUSIVE MODE; DELETE FROM ONLY {0}").format(table)
        )
    else:
        dcur.execute(sql.SQL("TRUNCATE ONLY {}").format(table))
    for chk in task.checks:
        # COPY would test the new rows against a NOT VALID CHECK the old rows may violate
        dcur.execute(
            sql.SQL("ALTER TABLE ONLY {} DROP CONSTRAINT {}").format(table, sql.Identifier(chk.name))
        )
    return _drop_indexes(dcur, task) if task.indexes else False


@dataclass(frozen=True)
class Completion:
    """What was done after a table's rows were in: digest check, index rebuild."""

    verified: bool = False
    verify_seconds: float = 0.0
    index_seconds: float = 0.0


def complete_table(scur, dcur, task: CopyTask, spec: StreamSpec, rebuilt: bool) -> Completion:
    """After the rows: indexes, checks, sequences, the digest check, trigger states."""
    table = sql.Identifier(*task.key)
    t0 = time.monotonic()
    if rebuilt:
        _create_indexes(dcur, task)
    index_seconds = time.monotonic() - t0 if rebuilt else 0.0
    _add_checks(dcur, task)
    set_sequences(scur, dcur, task)
    verified, verify_seconds = _verify(scur, dcur, task, spec) if spec.verify else (False, 0.0)
    for trig in task.triggers:
        dcur.execute(
            sql.SQL("ALTER TABLE ONLY {} " + TRIGGER_STATE[trig.enabled] + " {}").format(
                table, sql.Identifier(trig.name)
            )
        )
    return Completion(verified, verify_seconds, index_seconds)


def check_counts(src_rows: int, dst_rows: int) -> None:
    if src_rows != dst_rows:
        raise RuntimeError(f"row count mismatch: source sent {src_rows}, destination loaded {dst_rows}")


def copy_empty_rows(scur, dcur, task: CopyTask) -> tuple[int, int]:
    """A table without columns: nothing to stream, only a row count."""
    table = sql.Identifier(*task.key)
    scur.execute(sql.SQL("SELECT count(*) FROM ONLY {}").format(table))
    src_rows = scur.fetchone()[0]
    dcur.execute(sql.SQL("INSERT INTO {} SELECT FROM generate_series(1, %s)").format(table), (src_rows,))
    return src_rows, dcur.rowcount


def copy_table(src, dst, task: CopyTask, spec: StreamSpec, slot=None) -> TableResult:
    """Load one table in one destination transaction; raises on any failure (nothing committed)."""
    started = time.monotonic()
    dcur = dst.cursor()
    scur = src.cursor()
    begin_load(dcur, spec)
    rebuilt = empty_table(dcur, task)
    fmt = task.format
    slot = slot or NullSlot()
    if not task.columns:
        src_rows, dst_rows = copy_empty_rows(scur, dcur, task)
        nbytes = wire = 0
    elif spec.batch_size:
        from pgcopy.rowmode import copy_rows

        src_rows, dst_rows, nbytes = copy_rows(src, dcur, task, spec.batch_size, slot)
        wire, fmt = nbytes, "rows"
    else:
        src_rows, dst_rows, nbytes, wire = _stream(scur, dcur, task, spec.codec, slot)
    check_counts(src_rows, dst_rows)
    if rebuilt:
        slot.indexing()
    done = complete_table(scur, dcur, task, spec, rebuilt)
    dst.commit()
    return TableResult(
        task.key,
        dst_rows,
        nbytes,
        wire,
        time.monotonic() - started,
        fmt,
        verified=done.verified,
        verify_seconds=done.verify_seconds,
        index_seconds=done.index_seconds,
    )


class VerifyMismatch(Exception):
    """The loaded rows differ from the snapshot's: the load transaction rolls back."""


def _verify(scur, dcur, task: CopyTask, spec: StreamSpec) -> tuple[bool, float]:
    """Before the commit, so a mismatch leaves the table fully old: the source in the run's
    snapshot (this worker's read transaction), the destination as about to be committed."""
    t0 = time.monotonic()
    s, d = digest.both(scur, dcur, task.key, task.columns, spec.to_utf8)
    if s != d:
        raise VerifyMismatch(f"verification failed: source {s}, destination {d}")
    return True, time.monotonic() - t0


def _add_checks(dcur, task: CopyTask) -> None:
    table = sql.Identifier(*task.key)
    for chk in task.checks:
        dcur.execute(
            sql.SQL("ALTER TABLE ONLY {} ADD CONSTRAINT {} ").format(table, sql.Identifier(chk.name))
            + sql.SQL(chk.definition)  # pg_get_constraintdef: 'CHECK (...) NOT VALID'
        )
        if chk.comment is not None:
            dcur.execute(
                sql.SQL("COMMENT ON CONSTRAINT {} ON {} IS %s").format(sql.Identifier(chk.name), table),
                (chk.comment,),
            )


def setval(seq) -> sql.Composed:
    """``setval(seq, %s, %s)``; its parameters are ``seq.last_value, seq.is_called``."""
    return sql.SQL("setval(") + sql.Literal(regclass_literal(seq.key)) + sql.SQL(", %s, %s)")


def read_sequences(scur, keys) -> list[SequenceValue]:
    """The sequences' states on the source, in one statement.  A worker reads its tables'
    sequences in their read transaction right before the load commits: later than the
    snapshot, so never behind the rows copied (ids drawn before it are at most this), and
    without the coordinator reading them all before the load.  Behind a savepoint, so a
    failure leaves the read transaction usable (the caller's table fails)."""
    keys = list(keys)
    if not keys:
        return []
    query = sql.SQL(" UNION ALL ").join(
        [
            sql.SQL(f"SELECT {j}::int, last_value, is_called FROM ") + sql.Identifier(*k)
            for j, k in enumerate(keys)
        ]
    )
    try:
        scur.execute(sql.SQL("SAVEPOINT pgcopy_seq; ") + query)
    except psycopg2.Error:
        scur.execute("ROLLBACK TO SAVEPOINT pgcopy_seq")
        raise
    return [SequenceValue(keys[j], last, called) for j, last, called in sorted(scur.fetchall())]


def sequence_statements(values: list[SequenceValue]) -> tuple[sql.Composed, list]:
    """The statements (and parameters) that set the table's own sequences in its load
    transaction: setval alone is not transactional, but after ALTER SEQUENCE ... RESTART
    (which gives the sequence a new relfilenode in this transaction) it is, so rows and
    sequence commit or vanish together."""
    stmts, params = [], []
    for seq in values:
        stmts.append(sql.SQL("ALTER SEQUENCE {} RESTART").format(sql.Identifier(*seq.key)))
        stmts.append(sql.SQL("SELECT ") + setval(seq))
        params += [seq.last_value, seq.is_called]
    return sql.SQL("; ").join(stmts), params


def set_sequences(scur, dcur, task: CopyTask) -> None:
    if task.sequences:
        dcur.execute(*sequence_statements(read_sequences(scur, task.sequences)))  # one round trip


def analyze(dst, keys, lock_timeout: str) -> None:
    """After the commits, so the tables are done whatever happens here; several small
    tables in one transaction (one commit instead of one per table)."""
    cur = dst.cursor()
    cur.execute("SET LOCAL lock_timeout = %s", (lock_timeout,))
    cur.execute(sql.SQL("ANALYZE ") + sql.SQL(", ").join([sql.Identifier(*k) for k in keys]))
    dst.commit()


def _drop_indexes(dcur, task: CopyTask) -> bool:
    """Drop the table's indexes inside the load transaction; False leaves them in place.

    A savepoint makes a failed drop (something unexpected depends on an index) harmless;
    releasing it returns to the transaction that truncated, which COPY FREEZE requires."""
    table = sql.Identifier(*task.key)
    dcur.execute("SAVEPOINT pgcopy_indexes")
    try:
        for idx in task.indexes:
            if idx.constraint:
                dcur.execute(
                    sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(table, sql.Identifier(idx.constraint))
                )
            else:
                dcur.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(task.key[0], idx.name)))
    except psycopg2.Error:
        dcur.execute("ROLLBACK TO SAVEPOINT pgcopy_indexes")
        dcur.execute("RELEASE SAVEPOINT pgcopy_indexes")
        return False
    dcur.execute("RELEASE SAVEPOINT pgcopy_indexes")
    return True


def _create_indexes(dcur, task: CopyTask) -> None:
    """Re-create every index exactly as it was: definition, constraint, comment, CLUSTER
    and REPLICA IDENTITY marks.  A failure fails the table, which keeps its old rows."""
    table = sql.Identifier(*task.key)
    for idx in task.indexes:
        index = sql.Identifier(task.key[0], idx.name)
        if idx.constraint:
            dcur.execute(
                sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} ").format(table, sql.Identifier(idx.constraint))
                + sql.SQL(idx.condef)
            )
            if idx.con_comment is not None:
                dcur.execute(
                    sql.SQL("COMMENT ON CONSTRAINT {} ON {} IS %s").format(
                        sql.Identifier(idx.constraint), table
                    ),
                    (idx.con_comment,),
                )
        else:
            dcur.execute(sql.SQL(idx.indexdef))
        if idx.comment is not None:
            dcur.execute(sql.SQL("COMMENT ON INDEX {} IS %s").format(index), (idx.comment,))
        if idx.clustered:
            dcur.execute(sql.SQL("ALTER TABLE {} CLUSTER ON {}").format(table, sql.Identifier(idx.name)))
        if idx.replident:
            dcur.execute(
                sql.SQL("ALTER TABLE {} REPLICA IDENTITY USING INDEX {}").format(
                    table, sql.Identifier(idx.name)
                )
            )


def _stream(scur, dcur, task: CopyTask, codec: Codec | None, slot) -> tuple[int, int, int, int]:
    rfd, wfd = os.pipe()
    try:
        fcntl.fcntl(wfd, F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # keep the default size
    reader = CountingReader(rfd, codec, slot)
    load_error: list[BaseException] = []
    statement_to, statement_from = copy_to(task), copy_from(task)

    def load() -> None:
        try:
            dcur.copy_expert(statement_from, reader, size=CHUNK)
        except BaseException as exc:  # kept and re-raised by the main side
            load_error.append(exc)
        finally:
            reader.close()  # a writer blocked on a full pipe now gets EPIPE

    thread = threading.Thread(target=load, name="copy-from", daemon=True)
    thread.start()
    writer = open_writer(wfd, codec, CHUNK)
    try:
        scur.copy_expert(statement_to, writer)
        writer.close()
    except BaseException as exc:
        reader.source_failed = True
        try:
            writer.close()
        except OSError:
            pass
        thread.join()
        if load_error and isinstance(exc, OSError):
            raise load_error[0] from None  # the destination failed first: the root cause
        raise
    thread.join()
    if load_error:
        raise load_error[0]
    return scur.rowcount, dcur.rowcount, reader.nbytes, reader.wire_bytes
