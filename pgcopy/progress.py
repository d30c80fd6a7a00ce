"""The progress bus and the arithmetic on top of it.

Each worker owns one fixed slot of a shared array of doubles and updates it per chunk
(one pipe read of at most 256 KiB, or one batch in row mode), never per row.  Renderers only read it.
Events (table started/finished/failed) and log records travel separately on the
coordinator's result queue.  ``ProgressModel`` turns slots plus finished tables into
totals, a moving-window rate and an ETA; it does no I/O, so it is tested on its own.
"""

from __future__ import annotations

import math
import mmap
import os
import time
from array import array
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# slot layout
STATE, TASK, BYTES, WIRE, ROWS, STARTED, INDEXING_SINCE = range(7)
FIELDS = 7
IDLE, COPYING, DONE, FAILED, EXITED, INDEXING = 0.0, 1.0, 2.0, 3.0, 4.0, 5.0
# a table, as ProgressModel counts it
PENDING, LOADED, LOST = 0, 1, 2

# the binary COPY stream of a table was ~0.9x its heap+TOAST size when measured
STREAM_PER_TABLE_BYTE = 0.9

# Until the run has measured its own (see Rate), the work after the rows is estimated at
# these speeds per connection, measured on the benchmark machine (2 cores, fsync on):
INDEX_BYTES_PER_S = 40e6  # CREATE INDEX, per byte of the index built (source's index size)
FK_BYTES_PER_S = 150e6  # VALIDATE CONSTRAINT, per byte of the referencing table
FK_FIXED_S = 0.003  # per FK: the statements, their locks and commits
# A table's load is estimated as a fixed cost (its statements, commit, ANALYZE; thousands of
# tiny tables are all fixed cost) plus its stream at STREAM_BYTES_PER_S, on one worker.
# Only the proportions matter: the ETA divides by the rate the run measures.
TABLE_FIXED_S = 0.005
STREAM_BYTES_PER_S = 60e6


class ProgressBus:
    """N slots in shared memory; created by the coordinator, written by workers.

    The memory is an anonymous file (memfd) that each worker maps from the descriptor it
    inherits (``fd``, ``length`` doubles): it needs no name, so no process killed at any
    point leaves it behind."""

    def __init__(self, nworkers: int):
        self.nworkers = nworkers
        self.length = nworkers * FIELDS
        if hasattr(os, "memfd_create"):
            self.fd = os.memfd_create("pgcopy-progress", os.MFD_CLOEXEC)
        else:  # not Linux: an unlinked temporary file
            import tempfile

            self._file = tempfile.TemporaryFile()
            self.fd = self._file.fileno()
        os.ftruncate(self.fd, self.length * 8)
        self.array = attach(self.fd, self.length)

    def slot(self, wid: int) -> Slot:
        return Slot(self.array, wid)

    def read(self) -> list[tuple[float, ...]]:
        a = self.array
        return [tuple(a[i * FIELDS : (i + 1) * FIELDS]) for i in range(self.nworkers)]


def attach(fd: int, length: int) -> memoryview:
    """``length`` shared doubles, zeroed when created, mapped from ``fd``."""
    return memoryview(mmap.mmap(fd, length * 8)).cast("d")


class Slot:
    """One worker's view: plain stores of doubles, no locks (one writer per slot)."""

    def __init__(self, array, wid: int):
        self._a = array
        self._base = wid * FIELDS

    def begin(self, task_index: int) -> None:
        a, b = self._a, self._base
        a[b + BYTES] = a[b + WIRE] = a[b + ROWS] = 0.0
        a[b + TASK] = float(task_index)
        a[b + STARTED] = time.monotonic()  # CLOCK_MONOTONIC: comparable across processes
        a[b + STATE] = COPYING

    def indexing(self) -> None:
        """The rows are in; the table's indexes are being rebuilt."""
        self._a[self._base + INDEXING_SINCE] = time.monotonic()
        self._a[self._base + STATE] = INDEXING

    def add(self, nbytes: int, wire: int, rows: int = 0) -> None:
        a, b = self._a, self._base
        a[b + BYTES] += nbytes
        a[b + WIRE] += wire
        if rows:
            a[b + ROWS] += rows

    def end(self, ok: bool, rows: int = 0) -> None:
        self._a[self._base + ROWS] = float(rows)
        self._a[self._base + STATE] = DONE if ok else FAILED

    def exited(self) -> None:
        self._a[self._base + STATE] = EXITED


class NullSlot:
    """For code paths without a bus (a stream run on its own)."""

    def begin(self, task_index: int) -> None: ...
    def indexing(self) -> None: ...
    def add(self, nbytes: int, wire: int, rows: int = 0) -> None: ...
    def end(self, ok: bool, rows: int = 0) -> None: ...
    def exited(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Expected:
    """What the catalog says a table will stream."""

    bytes: float
    rows: float  # reltuples; < 0 when unknown
    index_bytes: float = 0.0  # indexes rebuilt in the load transaction


@dataclass(frozen=True, slots=True)
class InFlight:
    """One table being loaded, as the display shows it."""

    task: int
    bytes: float
    rows_est: float  # from the bytes and the table's expected bytes per row
    fraction: float  # of this table, capped below 1 until COPY reports the end
    seconds: float
    rate: float  # bytes/s for this table
    indexing: bool = False  # the rows are in, the indexes are being rebuilt


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The whole run's progress at one moment, for the display."""

    fraction: float  # of the whole run's estimated work (rows, index rebuilds, FK validation)
    bytes: float
    rows: float  # finished tables: COPY's counts; in flight: estimated from bytes
    total_bytes: float
    rate: float  # bytes/s over the window
    rows_rate: float
    eta: float | None  # seconds, to the end of FK validation
    tables_done: int
    tables_failed: int
    tables_total: int
    in_flight: list[InFlight]
    fks_done: int = 0
    fks_total: int = 0
    post_seconds: float = 0.0  # of the ETA: index rebuilds and FK validation still to do


class Rate:
    """Bytes per second of one kind of work on one connection: a default until the run
    has measured some of its own, then what was measured."""

    def __init__(self, default: float):
        self.default = default
        self.bytes = 0.0
        self.seconds = 0.0

    def add(self, nbytes: float, seconds: float) -> None:
        if nbytes > 0 and seconds > 0:
            self.bytes += nbytes
            self.seconds += seconds

    @property
    def value(self) -> float:
        return self.bytes / self.seconds if self.seconds >= 0.05 else self.default


class ProgressModel:
    """Totals and ETA; feed it finished tables, validated FKs and bus readings.

    Work is counted in estimated seconds: the rows at the measured stream rate, index
    rebuilds and FK validations at their own rates (see Rate) over the connections that
    do them.  The ETA is the sum, so it only reaches 0:00 when the last FK is validated.

    Per table and per FK it keeps flat arrays, not objects: at 10,000 tables and FKs,
    dicts and sets of them held 4 MB through the load."""

    WINDOW = 10.0  # seconds of history for the rate

    def __init__(
        self,
        expected: Iterable[Expected],  # read once: a generator keeps no list of them
        fk_bytes: Sequence[float] | None = None,
        workers: int = 1,
        fk_workers: int = 1,
        now: float | None = None,
        table_fixed_s: float = TABLE_FIXED_S,
        fk_serial: Iterable[int] = (),
    ):
        self.table_fixed_s = table_fixed_s
        # estimates (reltuples is a float4 in the catalog): single precision, 4 bytes each
        self.exp_bytes, self.exp_rows, self.exp_index = array("f"), array("f"), array("f")
        for e in expected:
            self.exp_bytes.append(e.bytes)
            self.exp_rows.append(e.rows)
            self.exp_index.append(e.index_bytes)
        self.ntasks = len(self.exp_bytes)
        self.fk_bytes = array("f", fk_bytes or ())
        self.fk_serial = bytearray(len(self.fk_bytes))  # 1: restored on one connection (added validated)
        for i in fk_serial:
            self.fk_serial[i] = 1
        self.workers, self.fk_workers = max(workers, 1), max(fk_workers, 1)
        self.state = bytearray(self.ntasks)  # per task: PENDING, LOADED or LOST
        self.ndone = self.nfailed = 0
        self.fk_settled = bytearray(len(self.fk_bytes))
        self.fks_done = 0
        # Running totals, kept as tables and FKs settle: a snapshot reads only the tables in
        # flight (summing every table's at each tick took 70 ms at 80,000 tables, five
        # times a second, under the lock the coordinator takes for each finished table).
        # Bytes are whole numbers, summed exactly in doubles.
        self.done_bytes = self.done_rows = self.work_loaded = 0.0  # COPY's counts, once loaded
        self.pending_bytes = sum(map(self._expected_bytes, range(self.ntasks)))
        self.pending_work = sum(self._work(self._expected_bytes(i)) for i in range(self.ntasks))
        self.index_all = math.fsum(self.exp_index)
        self.index_pending = self.index_all
        self.fk_all = math.fsum(map(self._fk_share, range(len(self.fk_bytes))))
        self.fk_pending = self.fk_all
        self.index_rate = Rate(INDEX_BYTES_PER_S)
        # FKs: measured seconds against the estimate for the same FKs, corrects the rest
        self.fk_measured = self.fk_estimated = 0.0
        self.samples: deque[tuple[float, float, float, float]] = deque()  # (when, bytes, rows, work)
        self.start = time.monotonic() if now is None else now

    def spill_into(self, spill) -> None:
        """Its per-table and per-FK arrays moved into the run's file (a pgcopy.spill.Spill)."""
        from pgcopy.spill import spilled

        for name in ("exp_bytes", "exp_rows", "exp_index", "fk_bytes", "fk_serial", "state", "fk_settled"):
            setattr(self, name, spilled(spill, getattr(self, name)))

    def finished(
        self, task: int, nbytes: float, rows: float, ok: bool = True, index_seconds: float = 0.0
    ) -> None:
        if self.state[task] != PENDING:
            return
        expected = self._expected_bytes(task)
        self.pending_bytes -= expected
        self.pending_work -= self._work(expected)
        self.index_pending -= self.exp_index[task]
        if ok:
            self.state[task] = LOADED
            self.done_bytes += nbytes
            self.done_rows += rows
            self.work_loaded += self._work(nbytes)
            self.ndone += 1
            self.index_rate.add(self.exp_index[task], index_seconds)
        else:
            self.state[task] = LOST
            self.nfailed += 1

    def settled(self, task: int) -> bool:
        """Loaded or failed."""
        return self.state[task] != PENDING

    def fk_done(self, i: int, seconds: float) -> None:
        """FK ``i`` is settled (validated, failed, or already as it was)."""
        if not self.fk_settled[i]:
            self.fk_settled[i] = 1
            self.fks_done += 1
            self.fk_pending -= self._fk_share(i)
            if seconds > 0:  # 0: nothing was done to it, or it was not timed
                self.fk_measured += seconds
                self.fk_estimated += self._fk_estimate(i)

    def _expected_bytes(self, i: int) -> float:
        return max(self.exp_bytes[i], 1.0)

    def _work(self, nbytes: float) -> float:
        """A table's load in estimated seconds of one worker."""
        return self.table_fixed_s + nbytes / STREAM_BYTES_PER_S

    def _fk_estimate(self, i: int) -> float:
        return FK_FIXED_S + self.fk_bytes[i] / FK_BYTES_PER_S

    @property
    def fk_factor(self) -> float:
        """Measured over estimated, once enough FKs were timed; 1 until then."""
        return self.fk_measured / self.fk_estimated if self.fk_estimated >= 0.05 else 1.0

    def _fk_share(self, i: int) -> float:
        """FK ``i``'s estimated seconds of the run: those restored in parallel share the
        FK connections."""
        return self._fk_estimate(i) / (1 if self.fk_serial[i] else self.fk_workers)

    def _index_seconds(self, nbytes: float) -> float:
        return nbytes / self.index_rate.value / self.workers

    def snapshot(self, slots: list[tuple[float, ...]], now: float | None = None) -> Snapshot:
        now = time.monotonic() if now is None else now
        flights = []
        index_spent = 0.0  # seconds already spent on the rebuilds in flight
        for s in slots:
            if s[STATE] not in (COPYING, INDEXING):
                continue
            i = int(s[TASK])
            if i >= self.ntasks or self.state[i] != PENDING:
                continue
            exp_bytes, exp_rows = self.exp_bytes[i], self.exp_rows[i]
            indexing = s[STATE] == INDEXING
            frac = 0.99 if indexing else min(s[BYTES] / self._expected_bytes(i), 0.99)
            per_row = exp_bytes / exp_rows if exp_rows > 0 else 0
            rows = s[ROWS] or (s[BYTES] / per_row if per_row else 0.0)
            secs = max(now - s[STARTED], 1e-6)
            if indexing:
                index_spent += min(
                    max(now - s[INDEXING_SINCE], 0.0), self.exp_index[i] / self.index_rate.value
                )
            flights.append(InFlight(i, s[BYTES], rows, frac, secs, s[BYTES] / secs, indexing))
        done_bytes, done_rows = self.done_bytes, self.done_rows
        fl_bytes = sum(f.bytes for f in flights)
        # finished tables count what they really streamed; in flight, at least what was
        # expected; failed tables drop out of the total
        total, work_total = done_bytes + self.pending_bytes, self.work_loaded + self.pending_work
        for i in {f.task for f in flights}:  # counted below as in flight
            total -= self._expected_bytes(i)
            work_total -= self._work(self._expected_bytes(i))
        work_done = self.work_loaded
        for f in flights:
            size = max(f.bytes, self._expected_bytes(f.task))
            total += size
            work_total += self._work(size)
            work_done += self._work(size) * f.fraction
        moved = done_bytes + fl_bytes
        rows = done_rows + sum(f.rows_est for f in flights)
        self.samples.append((now, moved, rows, work_done))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.WINDOW:
            self.samples.popleft()
        t0, b0, r0, w0 = self.samples[0]
        span = now - t0
        rate = (moved - b0) / span if span > 0 else 0.0
        rows_rate = (rows - r0) / span if span > 0 else 0.0
        work_rate = (work_done - w0) / span if span > 0 else 0.0  # worker-seconds of load per second
        ndone = self.ndone
        all_loaded = ndone + self.nfailed == self.ntasks

        # the work after the rows, in seconds
        index_total = self._index_seconds(self.index_all)
        index_left = self._index_seconds(max(self.index_pending, 0.0))
        index_left = max(index_left - index_spent / self.workers, 0.0)
        fk_total = self.fk_factor * self.fk_all
        fk_left = self.fk_factor * max(self.fk_pending, 0.0) if self.fks_done < len(self.fk_bytes) else 0.0
        post_left = index_left + fk_left

        if all_loaded:
            rows_left: float | None = 0.0
        else:
            rows_left = max(work_total - work_done, 0.0) / work_rate if work_rate > 0 else None
        eta = None if rows_left is None else rows_left + post_left
        # the rows' share of the whole, in seconds at the run's average pace so far
        elapsed = now - self.start
        pace = work_done / elapsed if work_done > 0 and elapsed > 0 else float(self.workers)
        whole = work_total / pace + index_total + fk_total
        done = work_done / pace + (index_total - index_left) + (fk_total - fk_left)
        return Snapshot(
            fraction=min(done / whole, 1.0) if whole > 0 else 1.0,
            bytes=moved,
            rows=rows,
            total_bytes=total,
            rate=rate,
            rows_rate=rows_rate,
            eta=eta,
            tables_done=ndone,
            tables_failed=self.nfailed,
            tables_total=self.ntasks,
            in_flight=flights,
            fks_done=self.fks_done,
            fks_total=len(self.fk_bytes),
            post_seconds=post_left,
        )


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
