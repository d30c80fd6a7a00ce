"""The worker process: one source and one destination connection for its whole life.

The coordinator starts workers with the *spawn* method: a fresh interpreter inherits no
open psycopg2 connections, sockets or locked mutexes from the coordinator (fork would copy
the coordinator's live libpq sockets), and costs ~0.1 s per worker, once per run.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import threading
import time
from dataclasses import dataclass

import psycopg2

from pgcopy import failpoints
from pgcopy.catalog import qualname
from pgcopy.connections import Session, connect, error_line
from pgcopy.progress import NullSlot, Slot
from pgcopy.stream import StreamSpec, TableResult, analyze, copy_table


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs; picklable."""

    source: str
    dest: str
    snapshot: str | None
    stream: StreamSpec
    session: Session


# Messages on the result queue are plain tuples: (kind, worker_id, payload)
#   ("start", wid, key) ("done", wid, TableResult) ("failed", wid, TableResult)
#   ("log", wid, (level, text)) ("exit", wid, usage dict)


def _open(spec: WorkerSpec):
    src = connect(spec.source, "source", spec.session, readonly=True)
    src.set_session(isolation_level="REPEATABLE READ", readonly=True)
    dst = connect(spec.dest, "destination", spec.session)
    return src, dst


def _begin_read(src, snapshot: str | None) -> None:
    """One short source transaction per table, in the run's snapshot: a worker never
    accumulates locks on the source (one AccessShareLock at a time)."""
    src.rollback()
    if snapshot:
        src.cursor().execute("SET TRANSACTION SNAPSHOT %s", (snapshot,))


PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Never outlive the coordinator: the kernel sends SIGKILL when our parent exits
    (Linux); elsewhere a thread watches the parent's pid."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl")
    except (OSError, AttributeError):

        def watch() -> None:
            while os.getppid() == parent_pid:
                time.sleep(0.5)
            os._exit(1)

        threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _close(*conns) -> None:
    for conn in conns:
        try:
            conn.close()
        except Exception:
            pass


def _side(exc: BaseException, src, dst) -> str | None:
    cursor = getattr(exc, "cursor", None)
    conn = getattr(cursor, "connection", None)
    return "source" if conn is src else "destination" if conn is dst else None


def worker_main(wid: int, spec: WorkerSpec, tasks, results, bus_array, stop, parent_pid: int) -> None:
    # The coordinator owns Ctrl-C and hangups: it cancels our statements, then stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    die_with_parent(parent_pid)
    slot = Slot(bus_array, wid) if bus_array is not None else NullSlot()
    src = dst = None
    pending: list = []  # loaded tables not yet analyzed
    while not stop.is_set():
        item = tasks.get()
        if item is None or stop.is_set():
            break
        index, task = item
        slot.begin(index)
        try:
            if src is None:
                src, dst = _open(spec)
            _begin_read(src, spec.snapshot)
            # only now: the coordinator may release the snapshot once every table has started
            results.put(("start", wid, task.key))
            res = copy_table(src, dst, task, spec.stream, slot)
            src.rollback()
            slot.end(True, res.rows)
            results.put(("done", wid, res))
        except Exception as exc:
            msg, side = error_line(exc), _side(exc, src, dst)
            # the connections may be mid-COPY: start clean for the next table
            _close(*(c for c in (src, dst) if c is not None))
            src = dst = None
            if isinstance(exc, psycopg2.errors.LockNotAvailable):
                msg += _lock_holders(spec, task.key)  # after closing: still one connection per side
            slot.end(False)
            results.put(("failed", wid, TableResult(task.key, error=msg, side=side)))
            continue
        failpoints.hit("after-commit", in_worker=True)
        if spec.stream.analyze and not stop.is_set():
            pending.append(task.key)
            if len(pending) >= ANALYZE_BATCH or task.est_bytes >= ANALYZE_ALONE_BYTES:
                dst = _analyze(spec, dst, pending, results, wid)
    if pending and not stop.is_set():
        dst = _analyze(spec, dst, pending, results, wid)
    _close(*(c for c in (src, dst) if c is not None))
    slot.exited()
    results.put(("exit", wid, usage()))


# ANALYZE runs after the commits, a few tables per transaction: thousands of tiny tables
# then cost one commit per batch, and a batch's locks stay well inside the lock budget.
ANALYZE_BATCH = 20
ANALYZE_ALONE_BYTES = 8 << 20  # a bigger table is analyzed (with what is pending) at once


def _analyze(spec: WorkerSpec, dst, pending: list, results, wid: int):
    """ANALYZE the pending tables; a failure is a warning (the tables are loaded)."""
    keys = list(pending)
    pending.clear()
    try:
        if dst is None:  # closed after another table failed
            dst = connect(spec.dest, "destination", spec.session)
        analyze(dst, keys, spec.stream.lock_timeout)
    except Exception as exc:
        if dst is not None:
            dst.rollback()
        names = ", ".join(qualname(k) for k in keys)
        results.put(("log", wid, ("WARN", f"loaded, but ANALYZE failed for {names}: {error_line(exc)}")))
    return dst


def usage() -> dict:
    """This process's measured peak RSS and CPU seconds."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"maxrss_kb": ru.ru_maxrss, "cpu_seconds": ru.ru_utime + ru.ru_stime}


def _lock_holders(spec: WorkerSpec, key) -> str:
    """Name the sessions that hold a lock on the table, for the lock_timeout message."""
    try:
        conn = connect(spec.dest, "destination", spec.session)
        try:
            cur = conn.cursor()
            cur.execute(
                """SELECT DISTINCT a.pid, a.usename, a.application_name, a.state
                     FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                    WHERE l.relation = (quote_ident(%s) || '.' || quote_ident(%s))::regclass
                      AND l.granted AND a.pid <> pg_backend_pid()""",
                key,
            )
            holders = [f"pid {p} ({u}, {app or '-'}, {st})" for p, u, app, st in cur.fetchall()]
        finally:
            conn.close()
    except Exception:
        return ""
    return f"; held by {', '.join(holders)}" if holders else ""
