"""Reporters: what the copy tells the user while it runs.

``LogReporter`` turns events into log lines.  ``LiveView`` adds a renderer thread that
polls the progress bus; the coordinator only hands it events, so a slow or stalled
terminal blocks this thread, never the coordinator or a worker.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass

from pgcopy import fmt
from pgcopy.catalog import qualname
from pgcopy.coordinator import Reporter
from pgcopy.fkeys import between
from pgcopy.keys import KeyIndex, TaskKeys
from pgcopy.log import Logger
from pgcopy.progress import STREAM_PER_TABLE_BYTE, Expected, ProgressBus, ProgressModel, Snapshot, duration
from pgcopy.stream import TableResult
from pgcopy.task import CopyTask


class LogReporter(Reporter):
    def __init__(self, log: Logger):
        self.log_ = log

    def table_started(self, key) -> None:
        self.log_.info(f"Copying table {qualname(key)}")

    def table_done(self, r: TableResult, position: int | None = None) -> None:
        wire = f" ({fmt.size(r.wire_bytes)} compressed)" if r.wire_bytes != r.bytes else ""
        self.log_.done(
            f"Completed {qualname(r.key)}: {r.rows:,} rows, {fmt.size(r.bytes)}{wire} in {r.seconds:.1f}s [{r.format}]"
        )

    def table_failed(self, r: TableResult, position: int | None = None) -> None:
        side = f" ({r.side})" if r.side else ""
        self.log_.error(f"Failed {qualname(r.key)}{side}: {r.error}; the table keeps its old rows")

    def log(self, level: str, text: str) -> None:
        self.log_.emit(level, text)

    def fk_settled(self, i: int, seconds: float) -> None: ...

    # a plain reporter has no display to run, and keeps nothing per table
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def phase(self, text: str) -> None: ...
    def spill_into(self, spill) -> None: ...


def expected_of(task: CopyTask) -> Expected:
    # rebuilt indexes are estimated from the source's: same definitions, same rows
    index_bytes = max(task.est_bytes - task.data_bytes, 0) if task.indexes else 0
    return Expected(task.data_bytes * STREAM_PER_TABLE_BYTE, task.est_rows, index_bytes)


@dataclass(frozen=True)
class FkEstimate:
    """What the ETA needs of the FKs to restore: per FK, the referencing table's size (what
    its validation scans), and the small tables between which FKs are added validated in
    one statement (on one connection, see fkeys.between)."""

    fkeys: Sequence = ()  # the plan's (a packed.Chunked): read once, here, not kept
    sizes: Sequence[float] = ()
    small: Container = frozenset()


class LiveView(LogReporter):
    """A LogReporter with a renderer thread reading the bus ``TICK`` times a second."""

    TICK = 0.2

    def __init__(
        self,
        log: Logger,
        tasks: Sequence[CopyTask],
        bus: ProgressBus,
        request_stop: Callable[[], None],
        fk: FkEstimate | None = None,
        index: KeyIndex | None = None,
    ):
        super().__init__(log)
        self.tasks = tasks
        self.bus = bus
        self.request_stop = request_stop
        # each task's position (shared with the early FK restore: one dict for the run)
        self.index = index if index is not None else KeyIndex(TaskKeys(tasks))
        fk = fk or FkEstimate()
        self.model = ProgressModel(
            (expected_of(t) for t in tasks),
            fk.sizes,
            bus.nworkers,
            bus.nworkers,
            fk_serial=(i for i, f in enumerate(fk.fkeys) if between(f, fk.small)),
        )
        self.lock = threading.Lock()
        self.phase_text: str | None = None
        self.recent: deque[str] = deque(maxlen=200)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def spill_into(self, spill) -> None:
        """Its per-table arrays moved into the run's file (a pgcopy.spill.Spill)."""
        with self.lock:
            self.model.spill_into(spill)
            self.index.spill_into(spill)

    # events from the coordinator thread
    def table_done(self, r: TableResult, position: int | None = None) -> None:
        i = self.index[r.key] if position is None else position
        with self.lock:
            self.model.finished(i, r.bytes, r.rows, index_seconds=r.index_seconds)
        super().table_done(r)

    def table_failed(self, r: TableResult, position: int | None = None) -> None:
        i = self.index[r.key] if position is None else position
        with self.lock:
            self.model.finished(i, 0, 0, ok=False)
        super().table_failed(r)

    def phase(self, text: str) -> None:
        self.phase_text = text

    def fk_settled(self, i: int, seconds: float) -> None:  # from FK restore threads
        """The plan's ``i``-th FK is settled (see fkeys.Settled)."""
        with self.lock:
            self.model.fk_done(i, seconds)

    def phase_label(self, s: Snapshot) -> str:
        """What is running now."""
        if self.phase_text:
            return self.phase_text
        if s.in_flight and all(f.indexing for f in s.in_flight):
            return "rebuilding indexes"
        return "copying rows"

    def snapshot(self) -> Snapshot:
        with self.lock:
            return self.model.snapshot(self.bus.read())

    # the thread
    def start(self) -> None:
        self.setup()
        self._thread = threading.Thread(target=self._run, name="pgcopy-ui", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._stop.is_set():
            return  # already stopped (an interrupted run stops the view early)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.teardown()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # a display problem must never stop the copy
                self.recent.append(f"display error: {exc}")
            self.wait(self.TICK)
        self.tick()

    def wait(self, seconds: float) -> None:
        self._stop.wait(seconds)

    # for subclasses
    def setup(self) -> None: ...
    def tick(self) -> None: ...
    def teardown(self) -> None: ...


def progress_line(s: Snapshot, tasks: Sequence[CopyTask], phase: str) -> str:
    """One line: percent of the run, phase, tables, FKs, rows, MB/s, ETA, tables in flight."""
    # names made for the line: a list of every table's would stay in memory through the load
    flying = (
        ", ".join(tasks[f.task].qualname + (" (indexes)" if f.indexing else "") for f in s.in_flight) or "-"
    )
    return (
        f"{s.fraction * 100:5.1f}% | {phase} | {s.tables_done}/{s.tables_total} tables"
        + (f" ({s.tables_failed} failed)" if s.tables_failed else "")
        + (f" | {s.fks_done}/{s.fks_total} FKs" if s.fks_total else "")
        + f" | {s.rows:,.0f} rows | {s.rate / 1e6:.1f} MB/s | ETA {duration(s.eta)} | in flight: {flying}"
    )
