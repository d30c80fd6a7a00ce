"""One table through one pipe: source COPY TO -> OS pipe -> destination COPY FROM.

psycopg2 calls ``write()`` once per row on COPY TO, so the writing end is a C-level
buffered file; the destination reads the pipe in 1 MiB chunks in a thread (psycopg2
releases the GIL inside libpq), and bytes are counted per chunk there, never per row.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from dataclasses import dataclass

from psycopg2 import sql

from pgcopy.plan import CopyTask

CHUNK = 1 << 20  # read size for COPY FROM and write buffer for COPY TO
PIPE_SIZE = 1 << 20  # a deeper pipe lets the source run ahead of a busy destination
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)

TRIGGER_STATE = {
    "O": "ENABLE TRIGGER",
    "D": "DISABLE TRIGGER",
    "R": "ENABLE REPLICA TRIGGER",
    "A": "ENABLE ALWAYS TRIGGER",
}


@dataclass(frozen=True)
class TableResult:
    key: tuple[str, str]
    rows: int = 0
    bytes: int = 0
    seconds: float = 0.0
    error: str | None = None
    side: str | None = None  # 'source' or 'destination' when it failed


class SourceFailed(Exception):
    """Raised into the destination's COPY so it aborts instead of committing a short table."""


class CountingReader:
    """The pipe's reading end; counts bytes per chunk and fails if the source failed."""

    def __init__(self, fd: int):
        self._file = os.fdopen(fd, "rb", buffering=0)
        self.nbytes = 0
        self.source_failed = False

    def read(self, size: int = CHUNK) -> bytes:
        data = self._file.read(size)
        if not data and self.source_failed:
            raise SourceFailed("the source side of the COPY failed")
        self.nbytes += len(data)
        return data

    def close(self) -> None:
        self._file.close()


def _stmt(template: str, task: CopyTask) -> sql.Composed:
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in task.columns)
    return sql.SQL(template).format(table=sql.Identifier(*task.key), cols=cols)


def copy_table(src, dst, task: CopyTask, *, replica: bool, lock_timeout: str, analyze: bool) -> TableResult:
    """Load one table in one destination transaction; raises on any failure (nothing committed)."""
    started = time.monotonic()
    table = sql.Identifier(*task.key)
    dcur = dst.cursor()
    scur = src.cursor()
    dcur.execute("SET LOCAL lock_timeout = %s", (lock_timeout,))
    if replica:
        dcur.execute("SET LOCAL session_replication_role = replica")
    if task.triggers:
        # inside the load transaction, so no failure can leave them disabled
        dcur.execute(sql.SQL("ALTER TABLE ONLY {} DISABLE TRIGGER USER").format(table))
    dcur.execute(sql.SQL("TRUNCATE ONLY {}").format(table))

    if not task.columns:  # a table without columns: nothing to stream
        scur.execute(sql.SQL("SELECT count(*) FROM ONLY {}").format(table))
        src_rows = scur.fetchone()[0]
        dcur.execute(sql.SQL("INSERT INTO {} SELECT FROM generate_series(1, %s)").format(table), (src_rows,))
        dst_rows, nbytes = dcur.rowcount, 0
    else:
        src_rows, dst_rows, nbytes = _stream(scur, dcur, task)
    if src_rows != dst_rows:
        raise RuntimeError(f"row count mismatch: source sent {src_rows}, destination loaded {dst_rows}")
    for trig in task.triggers:
        dcur.execute(
            sql.SQL("ALTER TABLE ONLY {} " + TRIGGER_STATE[trig.enabled] + " {}").format(
                table, sql.Identifier(trig.name)
            )
        )
    dst.commit()
    if analyze:
        dcur.execute(sql.SQL("ANALYZE {}").format(table))
        dst.commit()
    return TableResult(task.key, dst_rows, nbytes, time.monotonic() - started)


def _stream(scur, dcur, task: CopyTask) -> tuple[int, int, int]:
    rfd, wfd = os.pipe()
    try:
        fcntl.fcntl(wfd, F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # keep the default size
    reader = CountingReader(rfd)
    load_error: list[BaseException] = []

    def load() -> None:
        try:
            dcur.copy_expert(
                _stmt("COPY {table} ({cols}) FROM STDIN (FORMAT binary, FREEZE)", task), reader, size=CHUNK
            )
        except BaseException as exc:  # kept and re-raised by the main side
            load_error.append(exc)
        finally:
            reader.close()  # a writer blocked on a full pipe now gets EPIPE

    thread = threading.Thread(target=load, name="copy-from", daemon=True)
    thread.start()
    writer = os.fdopen(wfd, "wb", buffering=CHUNK)
    try:
        scur.copy_expert(_stmt("COPY {table} ({cols}) TO STDOUT (FORMAT binary)", task), writer)
        writer.close()
    except BaseException as exc:
        reader.source_failed = True
        try:
            writer.close()
        except OSError:
            pass
        thread.join()
        if load_error and not isinstance(exc, BrokenPipeError | OSError):
            raise exc
        if load_error:  # the destination failed first: that is the root cause
            raise load_error[0] from None
        raise
    thread.join()
    if load_error:
        raise load_error[0]
    return scur.rowcount, dcur.rowcount, reader.nbytes
