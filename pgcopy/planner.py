"""STEP 3's catalog reads and planning, in a forked process that hands back the plan.

Reading the catalogs takes more memory than the plan they yield, even a chunk of tables at
a time (pgcopy.plan): rows, the chunks' objects, the sorts' lists.  In the coordinator that
memory stayed (when both catalogs were read whole, at 10,000 tables it grew by 25-31 MB,
of which the plan was 15), because CPython's allocator gives an arena back only once
nothing in it is alive, and the plan's objects sit among the freed rows; it then held that
through the load, next to the workers.  So the reading runs
in a child forked for it, on sessions of its own (in the run's snapshot, as the
coordinator's catalog session did), and streams back the pickled plan over a socket pair,
its tasks and FKs packed (pgcopy.packed.Chunked): the coordinator unpickles a few objects and
compressed bytes as they arrive, and the child's memory is gone with it.

The child dies with the coordinator (PR_SET_PDEATHSIG where the kernel has it), ignores
Ctrl-C (the coordinator, interrupted, kills it), and leaves the coordinator's connections
alone: it opens its own and exits without running any cleanup of the parent's objects.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import psycopg2

from pgcopy import failpoints, sequences
from pgcopy import fkeys as fkmod
from pgcopy.catalog import intern_names, read_sizes
from pgcopy.child import death_signal
from pgcopy.connections import Renewing, Session, connect, error_line
from pgcopy.errors import PgcopyError
from pgcopy.log import Logger
from pgcopy.plan import Plan, PlanInputs, build_plan


@dataclass(frozen=True)
class PlanRequest:
    """What the planning needs from the run: where to read, in which snapshot."""

    source: str
    dest: str
    session: Session
    snapshot: str | None
    lock_timeout: str
    inputs: PlanInputs
    readonly_dest: bool = False  # a dry run


def read_plan(req: PlanRequest, log: Logger) -> Plan:
    """Sizes in short transactions on both servers at once, then both catalogs (the
    source's in the run's snapshot) and the plan, on sessions opened for it (one source,
    two destination: the FKs are read beside the tables); then the
    values of the sequences set after the load (pgcopy.sequences), unless a dry run."""
    # measuring the sizes opens every table: on sessions renewed as they go, the last of
    # which then reads the catalog (no server session caches every table)
    sides: list[Renewing] = []
    try:
        sides.append(Renewing(lambda: connect(req.source, "source", req.session)))
        sides.append(
            Renewing(lambda: connect(req.dest, "destination", req.session, readonly=req.readonly_dest))
        )
        # the destination's second: for the FKs, read beside the tables
        fk_conn = connect(req.dest, "destination", req.session, readonly=req.readonly_dest)
    except BaseException:
        for side in sides:
            side.conn.close()
        raise
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(read_sizes, sides[0].conn, sides[0].using)
            dst_sizes = read_sizes(sides[1].conn, sides[1].using)
            src_sizes = pending.result()
        dst = sides[1].conn
        for conn in (dst, fk_conn):
            intern_names(conn)
        scur, dcur = _source_cursor(sides[0].conn, req.snapshot), dst.cursor()
        fkmod.session_setup(dcur, req.lock_timeout)
        fk_cur = fk_conn.cursor()
        fkmod.session_setup(fk_cur, req.lock_timeout)

        def source_for(tables: int):
            # the catalog reads cache each table's rows too; a new session reads in the
            # same snapshot (without one, every chunk must read at the same moment)
            nonlocal scur
            before = sides[0].conn
            if sides[0].using(tables) is not before:
                scur = _source_cursor(sides[0].conn, req.snapshot)
            return scur

        plan = build_plan(
            scur, dcur, req.inputs, log, src_sizes, dst_sizes, fk_cur, source_for if req.snapshot else None
        )  # packed as it reads
        src = sides[0].conn
        for conn in (src, dst, fk_conn):
            conn.commit()
        if not req.readonly_dest:  # a dry run sets no sequence
            plan = sequences.settle(plan, src, req.lock_timeout)
        return plan
    finally:
        for conn in (*(side.conn for side in sides), fk_conn):
            conn.close()


def _source_cursor(conn, snapshot: str | None):
    """A cursor for the source's catalog reads, in the run's snapshot."""
    intern_names(conn)
    conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
    cur = conn.cursor()
    if snapshot:
        cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot,))
    cur.execute("SET search_path = pg_catalog")
    return cur


def plan_apart(req: PlanRequest, log: Logger) -> Plan:
    """:func:`read_plan` in a forked child; in this process where fork is missing or
    other threads run (a child forked then could find a lock of theirs held forever)."""
    if not hasattr(os, "fork") or threading.active_count() > 1:
        return read_plan(req, log)
    for stream in (sys.stdout, sys.stderr):  # nothing buffered for the child to write again
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    parent = os.getpid()
    ours, theirs = socket.socketpair()  # one pickle back, streamed (see _child)
    pid = os.fork()
    if pid == 0:
        ours.close()
        _child(req, log, theirs, parent)  # never returns
    theirs.close()
    try:
        with ours.makefile("rb") as stream:  # objects made as the pickle arrives, no copy of it
            kind, value, warnings = pickle.load(stream)
    except (EOFError, OSError, pickle.UnpicklingError, ValueError):  # cut short: the child died
        raise PgcopyError(
            "the process reading the catalogs ended without a plan; nothing was changed"
        ) from None
    finally:
        ours.close()
        _reap(pid)
    log.warnings.extend(warnings)  # the child printed them; the report lists them
    if kind == "error":
        raise value
    return value


def _child(req: PlanRequest, log: Logger, sock: socket.socket, parent: int) -> None:
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        arm = death_signal()
        if arm is not None:
            arm()
        if os.getppid() != parent:  # the coordinator died before the guard was set
            os._exit(1)
        before = len(log.warnings)
        try:
            plan = read_plan(req, log)
            failpoints.hit("during-planning", in_worker=True)
            payload = ("plan", plan, log.warnings[before:])
        except BaseException as exc:  # noqa: BLE001 - every failure goes to the coordinator
            payload = ("error", _portable(exc), log.warnings[before:])
        # written as it is pickled: the whole pickle (7 MB at 160,000 tables) was held
        # beside the plan, and received whole beside the objects made from it
        with sock.makefile("wb") as stream:
            pickle.dump(payload, stream, pickle.HIGHEST_PROTOCOL)
    except BaseException:
        code = 1
    finally:
        os._exit(code)  # no cleanup: the parent's connections and files are the parent's


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives a pickle round trip, else a PgcopyError with its line."""
    if not isinstance(exc, (PgcopyError, psycopg2.Error)):
        traceback.print_exc()  # a bug: where it happened, as it would show without the fork
    try:
        return pickle.loads(pickle.dumps(exc))
    except Exception:
        return PgcopyError(f"reading the catalogs failed: {error_line(exc)}")


def _reap(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)  # gone already, or interrupted: either way, gone now
    except ProcessLookupError:
        pass
    os.waitpid(pid, 0)
