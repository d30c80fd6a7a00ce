"""The worker process: one source and one destination connection, renewed as it goes.

Each worker is a fresh interpreter (see pgcopy.channel): it inherits no open psycopg2
connections, sockets or locked mutexes from the coordinator (fork would copy the
coordinator's live libpq sockets), and costs ~0.1 s per worker, once per run.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

import psycopg2

from pgcopy import channel, failpoints
from pgcopy.batch import copy_batch
from pgcopy.catalog import lock_holders, qualname
from pgcopy.connections import Session, connect, error_line, reconnect, session_relations
from pgcopy.progress import NullSlot, Slot, attach
from pgcopy.stream import StreamSpec, TableResult, analyze, copy_table


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs; picklable."""

    source: str
    dest: str
    snapshot: str | None
    stream: StreamSpec
    session: Session


@dataclass(frozen=True)
class WorkerStart:
    """The first message to a worker."""

    wid: int
    spec: WorkerSpec


# Messages to the coordinator are plain tuples: (kind, worker_id, payload)
#   ("ready", wid, None) ("start", wid, key) ("done", wid, TableResult)
#   ("failed", wid, TableResult) ("log", wid, (level, text)) ("exit", wid, usage dict)


def _open(spec: WorkerSpec):
    src = connect(spec.source, "source", spec.session, readonly=True)
    try:
        src.set_session(isolation_level="REPEATABLE READ", readonly=True)
        dst = connect(spec.dest, "destination", spec.session)
    except BaseException:
        src.close()
        raise
    return src, dst


def _begin_read(src, snapshot: str | None, lock_timeout: str) -> None:
    """One short source transaction per table, in the run's snapshot: a worker never
    accumulates locks on the source (one AccessShareLock at a time).  A table locked on
    the source (an ALTER, a LOCK TABLE) fails after ``lock_timeout`` with the sessions
    that hold it, as on the destination, instead of holding the worker indefinitely."""
    src.rollback()
    if snapshot:  # one round trip for both
        src.cursor().execute(
            "SET TRANSACTION SNAPSHOT %s; SET LOCAL lock_timeout = %s", (snapshot, lock_timeout)
        )
    else:
        src.cursor().execute("SET LOCAL lock_timeout = %s", (lock_timeout,))


# Freed COPY chunks (256 kB) go straight back to the OS.  glibc otherwise raises its mmap
# threshold after the first such chunk is freed, then keeps up to twice that much freed
# memory per arena: a worker grew by 10 MB on a 4M-row table (benchmarks/run.py), and by
# nothing with the threshold fixed.  Setting it, even to the default, fixes it; from the
# environment (glibc reads it at start), a worker needs no ctypes for mallopt.  Other
# allocators ignore it.
MMAP_THRESHOLD = 128 * 1024
ENVIRONMENT = {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}


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


def main() -> None:
    """The worker process (started by pgcopy.coordinator; argv: bus fd or -1, bus length)."""
    sock, argv = channel.child_start()
    start = channel.first_message(sock)
    if start is None:
        return  # the coordinator is gone already
    bus_fd, bus_len = (int(a) for a in argv)
    if bus_fd >= 0:
        os.set_inheritable(bus_fd, False)
    slot = Slot(attach(bus_fd, bus_len), start.wid) if bus_fd >= 0 else NullSlot()
    line = channel.Line(sock, start.wid)
    w = Worker(start.wid, start.spec, line, slot)
    while (item := line.next_item()) is not None:  # one table, or a batch of small ones
        w.run(item)
    w.finish()


class Worker:
    """One source and one destination connection, reopened after a failure and after
    SESSION_RELATIONS relations."""

    def __init__(self, wid: int, spec: WorkerSpec, line: channel.Line, slot):
        self.wid, self.spec, self.line, self.slot = wid, spec, line, slot
        self.src = self.dst = None
        self.pending: list = []  # loaded tables not yet analyzed
        self.pending_locks = 0  # the destination relations they hold (table, TOAST, indexes)
        self.opened = 0  # relations loaded on these sessions: each server caches them all
        self.session_relations = session_relations()
        self.renewed = False  # the sessions were closed to be renewed: reopen them patiently

    def put(self, kind: str, payload) -> None:
        self.line.put(kind, payload)

    def run(self, item: list) -> None:
        if self.opened >= self.session_relations:
            self._renew()
        self.opened += sum(task.relations for _, task in item)
        self._run(item)

    def _renew(self) -> None:
        """New sessions on both sides, so that neither server's backend grows with the
        table count (see SESSION_RELATIONS); what is pending ANALYZE goes first."""
        if self.pending:
            self._analyze()
        self._reset()
        self.renewed = True

    def _connect(self):
        """Both sessions; after a renewal, waiting for the slots it gave back if another
        client took them (connections.reconnect)."""
        if not self.renewed:
            return _open(self.spec)
        self.renewed = False
        return reconnect(lambda: _open(self.spec), self.line.stopped)

    def _run(self, item: list) -> None:
        try:
            if self.src is None:
                self.src, self.dst = self._connect()
            _begin_read(self.src, self.spec.snapshot, self.spec.stream.lock_timeout)
        except Exception as exc:
            self._reset()
            for index, task in item:
                self.put("failed", (index, TableResult(task.key, error=error_line(exc))))
            return
        # only now: the coordinator may release the snapshot once every table has started
        for index, _ in item:
            self.put("start", index)
        if len(item) == 1:
            self._one(*item[0])
        else:
            self._batch(item)

    def _one(self, index: int, task) -> None:
        self.slot.begin(index)
        try:
            res = copy_table(self.src, self.dst, task, self.spec.stream, self.slot)
        except Exception as exc:
            msg, side = error_line(exc), _side(exc, self.src, self.dst)
            self._reset()  # the connections may be mid-COPY: start clean for the next table
            if isinstance(exc, psycopg2.errors.LockNotAvailable):
                # after closing: still one connection per side
                msg += _lock_holders(self.spec, task.key, side)
            self.slot.end(False)
            self.put("failed", (index, TableResult(task.key, error=msg, side=side)))
            return
        self._end_read()
        self.slot.end(True, res.rows)
        self.put("done", (index, res))
        self._committed([task], big=task.est_bytes >= ANALYZE_ALONE_BYTES)

    def _batch(self, item: list) -> None:
        tasks = dict(item)
        reported: set[int] = set()
        committed: list = []

        def report(index: int, res: TableResult) -> None:
            reported.add(index)
            self.slot.begin(index)
            self.slot.end(res.error is None, res.rows)
            self.put("done" if res.error is None else "failed", (index, res))
            if res.error is None:
                committed.append(tasks[index])

        try:
            copy_batch(
                self.src,
                self.dst,
                item,
                self.spec.stream,
                self.slot,
                self.line.stopped,
                report,
                lambda key: _lock_holders(self.spec, key, "source"),
            )
        except Exception as exc:  # a connection broke outside a table's load
            self._reset()
            self.slot.end(False)
            for index, task in item:
                if index not in reported:
                    self.put("failed", (index, TableResult(task.key, error=error_line(exc))))
            return
        self._end_read()
        if committed:
            self._committed(committed, big=False)

    def _committed(self, tasks: list, big: bool) -> None:
        failpoints.hit("after-commit", in_worker=True)
        if not self.spec.stream.analyze or self.line.stopped():
            return
        budget = self.spec.stream.lock_budget
        # one ANALYZE transaction locks every table it analyzes, and their indexes, to its
        # commit: tables join it while they fit the lock budget (a load batch always does)
        if self.pending and self.pending_locks + sum(t.relations for t in tasks) > budget:
            self._analyze()
        self.pending += [t.key for t in tasks]
        self.pending_locks += sum(t.relations for t in tasks)
        if big or self.pending_locks >= budget or len(self.pending) >= ANALYZE_BATCH:
            self._analyze()

    def _analyze(self) -> None:
        self.dst = _analyze(self.spec, self.dst, self.pending, self.line)
        self.pending_locks = 0

    def _end_read(self) -> None:
        """End the source transaction (the tables are committed whatever happens here);
        a broken connection on either side is reopened for the next item."""
        try:
            self.src.rollback()
        except psycopg2.Error:
            self._reset()
            return
        if self.dst.closed:
            self._reset()

    def _reset(self) -> None:
        _close(*(c for c in (self.src, self.dst) if c is not None))
        self.src = self.dst = None
        self.opened = 0

    def finish(self) -> None:
        if self.pending and not self.line.stopped():
            self._analyze()
        self._reset()
        self.slot.exited()
        self.put("exit", usage())


# ANALYZE runs after the commits, a few tables per transaction: thousands of tiny tables
# then cost one commit per batch or so, and its locks stay inside the lock budget.
ANALYZE_BATCH = 20
ANALYZE_ALONE_BYTES = 8 << 20  # a bigger table is analyzed (with what is pending) at once


def _analyze(spec: WorkerSpec, dst, pending: list, line: channel.Line):
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
        line.put("log", ("WARN", f"loaded, but ANALYZE failed for {names}: {error_line(exc)}"))
    return dst


def usage() -> dict:
    """This process's measured peak RSS and CPU seconds."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"maxrss_kb": _peak_rss_kb() or ru.ru_maxrss, "cpu_seconds": ru.ru_utime + ru.ru_stime}


def _peak_rss_kb() -> int:
    """This program's peak RSS (VmHWM), 0 where /proc has none.  Not getrusage's ru_maxrss:
    Linux carries the forking process's high-water mark through fork and exec into it, so
    every worker reported the coordinator's RSS (66 MB at 10,000 tables, for 24)."""
    try:
        with open("/proc/self/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("VmHWM:")), 0)
    except OSError:
        return 0


def _lock_holders(spec: WorkerSpec, key, side: str | None = "destination") -> str:
    """Name the sessions that hold a lock on the table on ``side``, for the lock_timeout
    message (on a connection of its own: the worker's may be mid-transaction)."""
    try:
        if side == "source":
            conn = connect(spec.source, "source", spec.session, readonly=True)
        else:
            conn = connect(spec.dest, "destination", spec.session)
        try:
            return lock_holders(conn, key)
        finally:
            conn.close()
    except Exception:
        return ""
