"""The progress bus and the arithmetic on top of it.

Each worker owns one fixed slot of a shared array of doubles and updates it per chunk
(one pipe read of at most 256 KiB, or one batch in row mode), never per row.  Renderers only read it.
Events (table started/finished/failed) and log records travel separately on the
coordinator's result queue.  ``ProgressModel`` turns slots plus finished tables into
totals, a moving-window rate and an ETA; it does no I/O, so it is tested on its own.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

# slot layout
STATE, TASK, BYTES, WIRE, ROWS, STARTED = range(6)
FIELDS = 6
IDLE, COPYING, DONE, FAILED, EXITED = 0.0, 1.0, 2.0, 3.0, 4.0

# the binary COPY stream of a table was ~0.9x its heap+TOAST size when measured
STREAM_PER_TABLE_BYTE = 0.9


class ProgressBus:
    """N slots in shared memory; created by the coordinator, written by workers."""

    def __init__(self, ctx, nworkers: int):
        self.nworkers = nworkers
        self.array = ctx.Array("d", nworkers * FIELDS, lock=False)

    def slot(self, wid: int) -> Slot:
        return Slot(self.array, wid)

    def read(self) -> list[tuple[float, ...]]:
        a = self.array
        return [tuple(a[i * FIELDS : (i + 1) * FIELDS]) for i in range(self.nworkers)]


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
    def add(self, nbytes: int, wire: int, rows: int = 0) -> None: ...
    def end(self, ok: bool, rows: int = 0) -> None: ...
    def exited(self) -> None: ...


@dataclass(frozen=True)
class Expected:
    """What the catalog says a table will stream."""

    bytes: float
    rows: float  # reltuples; < 0 when unknown


@dataclass(frozen=True)
class InFlight:
    task: int
    bytes: float
    rows_est: float  # from the bytes and the table's expected bytes per row
    fraction: float  # of this table, capped below 1 until COPY reports the end
    seconds: float
    rate: float  # bytes/s for this table


@dataclass(frozen=True)
class Snapshot:
    fraction: float
    bytes: float
    rows: float  # finished tables: COPY's counts; in flight: estimated from bytes
    total_bytes: float
    rate: float  # bytes/s over the window
    rows_rate: float
    eta: float | None  # seconds
    tables_done: int
    tables_failed: int
    tables_total: int
    in_flight: list[InFlight]


class ProgressModel:
    """Totals and ETA; feed it finished tables and bus readings."""

    WINDOW = 10.0  # seconds of history for the rate

    def __init__(self, expected: list[Expected], now: float | None = None):
        self.expected = expected
        self.actual: dict[int, tuple[float, float]] = {}  # task -> (bytes, rows) once finished
        self.failed: set[int] = set()
        self.samples: deque[tuple[float, float, float]] = deque()
        self.start = time.monotonic() if now is None else now

    def finished(self, task: int, nbytes: float, rows: float, ok: bool = True) -> None:
        if ok:
            self.actual[task] = (nbytes, rows)
        else:
            self.failed.add(task)

    def _expected_bytes(self, i: int) -> float:
        return max(self.expected[i].bytes, 1.0)

    def snapshot(self, slots: list[tuple[float, ...]], now: float | None = None) -> Snapshot:
        now = time.monotonic() if now is None else now
        flights = []
        for s in slots:
            if s[STATE] != COPYING:
                continue
            i = int(s[TASK])
            if i in self.actual or i in self.failed or i >= len(self.expected):
                continue
            exp = self.expected[i]
            frac = min(s[BYTES] / self._expected_bytes(i), 0.99)
            per_row = exp.bytes / exp.rows if exp.rows > 0 else 0
            rows = s[ROWS] or (s[BYTES] / per_row if per_row else 0.0)
            secs = max(now - s[STARTED], 1e-6)
            flights.append(InFlight(i, s[BYTES], rows, frac, secs, s[BYTES] / secs))
        done_bytes = sum(b for b, _ in self.actual.values())
        done_rows = sum(r for _, r in self.actual.values())
        fl_bytes = sum(f.bytes for f in flights)
        busy = {f.task for f in flights}
        # finished tables count what they really streamed; in flight, at least what was
        # expected; failed tables drop out of the total
        total = done_bytes
        for i in range(len(self.expected)):
            if i in self.actual or i in self.failed:
                continue
            total += self._expected_bytes(i) if i not in busy else 0
        total += sum(max(f.bytes, self._expected_bytes(f.task)) for f in flights)
        moved = done_bytes + fl_bytes
        rows = done_rows + sum(f.rows_est for f in flights)
        self.samples.append((now, moved, rows))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.WINDOW:
            self.samples.popleft()
        t0, b0, r0 = self.samples[0]
        span = now - t0
        rate = (moved - b0) / span if span > 0 else 0.0
        rows_rate = (rows - r0) / span if span > 0 else 0.0
        remaining = max(total - moved, 0.0)
        eta = remaining / rate if rate > 0 else None
        ndone = len(self.actual)
        return Snapshot(
            fraction=min(moved / total, 1.0) if total else 1.0,
            bytes=moved,
            rows=rows,
            total_bytes=total,
            rate=rate,
            rows_rate=rows_rate,
            eta=0.0 if ndone + len(self.failed) == len(self.expected) else eta,
            tables_done=ndone,
            tables_failed=len(self.failed),
            tables_total=len(self.expected),
            in_flight=flights,
        )


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
