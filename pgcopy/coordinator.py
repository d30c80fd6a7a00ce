"""Runs the load phase: worker processes pulling items, each on its own line (pgcopy.channel).

    coordinator ──items (one table, or a batch of small ones; None when none is left)──▶ worker 1..N
         ▲                                                         │
         └───── "ready", then "start"/"done"/"failed"/"log", and "exit" at the end ──┘

Items are handed out largest first, one to each worker that says "ready".  The coordinator
waits on the workers' lines: a worker that dies (end-of-file without "exit") loses only
its table in flight (its destination transaction is rolled back by the server), and when
every worker is gone the tables never started are reported as not copied.

A stop (Ctrl-C, SIGTERM, SIGHUP, q) sends STOP, which the workers check before taking a
table, cancels the run's statements on the destination server (a COPY, an index build),
terminates the workers, and waits until their backends are gone, so nothing of the run
still holds a lock when the foreign keys are restored.  Workers die with the coordinator
(PR_SET_PDEATHSIG), so a killed coordinator leaves no worker committing tables.
"""

from __future__ import annotations

import selectors
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from pgcopy import channel
from pgcopy.child import ChildProcess
from pgcopy.packed import Appended
from pgcopy.progress import ProgressBus
from pgcopy.stream import TableResult
from pgcopy.task import CopyTask
from pgcopy.worker import ENVIRONMENT, WorkerSpec, WorkerStart


class Backends(Protocol):
    """The run's own sessions on the destination server."""

    def cancel(self) -> None: ...
    def wait_gone(self) -> None: ...


class Reporter:
    """What the load phase tells the outside world; the progress UI will extend it."""

    # ``position``: the table's in the plan's tasks, as the workers name it (a lookup less)
    def table_started(self, key) -> None: ...
    def table_done(self, result: TableResult, position: int | None = None) -> None: ...
    def table_failed(self, result: TableResult, position: int | None = None) -> None: ...
    def log(self, level: str, text: str) -> None: ...


@dataclass
class LoadOutcome:
    """What the load phase did: results per table, and the tables it did not finish."""

    done: Appended[TableResult] = field(default_factory=Appended)  # packed as it grows
    failed: list[TableResult] = field(default_factory=list)
    rolled_back: list[tuple[str, str]] = field(default_factory=list)  # in flight at a stop
    not_started: list[tuple[str, str]] = field(default_factory=list)
    stopped: bool = False
    cancelled: set[tuple[str, str]] = field(default_factory=set)  # failed after the stop
    worker_usage: list[dict] = field(default_factory=list)  # per worker that exited cleanly


def workers_for(parallel: int, tasks: list) -> int:
    return max(1, min(parallel, len(tasks)))


@dataclass
class Workers:
    """Worker processes waiting for their work (see :func:`start_workers`)."""

    procs: dict[int, ChildProcess]
    closed: bool = False

    def stop(self) -> None:
        for p in self.procs.values():
            p.send(channel.STOP)

    def close(self) -> None:
        """Stop the workers that are still waiting (run_load never ran, or has ended)."""
        if self.closed:
            return
        self.closed = True
        self.stop()
        for p in self.procs.values():
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
            p.close()


def start_workers(spec: WorkerSpec, nworkers: int, bus: ProgressBus | None = None) -> Workers:
    """Start the workers before their work exists: their start (a fresh interpreter and
    its imports, ~0.2 s) then overlaps the FK drop.  They take nothing until
    :func:`run_load` hands out the tables, and connect when they take their first."""
    procs: dict[int, ChildProcess] = {}
    try:
        for wid in range(nworkers):
            args = [str(bus.fd if bus else -1), str(bus.length if bus else 0)]
            procs[wid] = ChildProcess("pgcopy.worker", args, [bus.fd] if bus else [], ENVIRONMENT)
            procs[wid].send(WorkerStart(wid, spec))
    except BaseException:
        Workers(procs).close()
        raise
    return Workers(procs)


def run_load(
    workers: Workers,
    tasks: Sequence[CopyTask],
    reporter: Reporter,
    stop_requested: Callable[[], bool],
    backends: Backends | None = None,
    all_reading: Callable[[], None] | None = None,
    batches: Sequence[list[int]] | None = None,
    keys: Sequence | None = None,
) -> LoadOutcome:
    """Load every task on ``workers`` (closed on return); ``batches`` groups task indices
    loaded in one transaction (see ``plan.batches``; default: one table each).
    ``all_reading`` is called once every table has begun its source read (or failed),
    when the run's snapshot is no longer needed.  ``keys``, each task's key, are the
    key objects the results and reports carry (the run's own, see CopyRun.change)."""
    items = batches if batches is not None else [[i] for i in range(len(tasks))]
    keys = keys if keys is not None else [t.key for t in tasks]
    load = _Load(workers.procs, tasks, keys, reporter, items if not stop_requested() else [], all_reading)
    out = load.out
    try:
        while load.alive:
            if stop_requested():
                out.stopped = True
                break
            load.poll(0.2)
    finally:
        aborting = out.stopped or bool(load.alive)
        load.todo.clear()  # a worker asking now is told there is no more
        if aborting:
            workers.stop()
            if backends is not None:
                backends.cancel()  # the server stops the statements; the workers roll back
            deadline = time.monotonic() + 3
            for p in workers.procs.values():
                p.join(timeout=max(0.0, deadline - time.monotonic()))
            for p in workers.procs.values():
                p.terminate()
        for p in workers.procs.values():
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
        load.drain()
        if backends is not None and aborting:
            backends.wait_gone()
        if out.stopped:  # tables failed by the cancel were rolled back, not broken
            out.rolled_back = sorted({*load.in_flight_keys(), *out.cancelled})
            out.failed = [r for r in out.failed if r.key not in out.cancelled]
        else:
            out.rolled_back = sorted(load.in_flight_keys())
        rolled = set(out.rolled_back)
        out.not_started = [k for i, k in enumerate(keys) if not load.finished[i] and k not in rolled]
        workers.close()
    return out


class _Todo:
    """The items not handed out yet: a place in ``items``, not a queue of them all."""

    def __init__(self, items: Sequence[list[int]]):
        self.items, self.next = items, 0
        self.back: list[list[int]] = []  # handed out to a worker that was gone

    def __bool__(self) -> bool:
        return bool(self.back) or self.next < len(self.items)

    def popleft(self) -> list[int]:
        if self.back:
            return self.back.pop()
        item = self.items[self.next]
        self.next += 1
        return item

    def appendleft(self, item: list[int]) -> None:
        self.back.append(item)

    def clear(self) -> None:
        self.back.clear()
        self.next = len(self.items)


class _Load:
    """The load's bookkeeping: items left, tables in flight per worker, the outcome.

    Workers name a table by its index in ``tasks``; per table it keeps a byte, not a set
    entry (three sets and a dict of 20,000 keys held 4 MB through the load)."""

    def __init__(
        self,
        procs: dict[int, ChildProcess],
        tasks: Sequence[CopyTask],
        keys: list,
        reporter: Reporter,
        items,
        all_reading,
    ):
        self.procs, self.tasks, self.keys, self.reporter = procs, tasks, keys, reporter
        self.todo = _Todo(items)
        self.out = LoadOutcome()
        self.in_flight: dict[int, list[int]] = {}  # worker -> tables started, not finished
        self.finished = bytearray(len(tasks))  # per task: 1 once done, failed or lost
        self.alive = set(procs)
        self.selector = selectors.DefaultSelector()
        for wid, p in procs.items():
            if not p.closed:
                self.selector.register(p.sock, selectors.EVENT_READ, wid)
        self.begun = bytearray(len(tasks))  # per task: 1 once its source read has started (or failed)
        self.nbegun = 0
        self.all_reading = all_reading

    def in_flight_keys(self) -> set:
        return {self.keys[i] for started in self.in_flight.values() for i in started}

    def poll(self, timeout: float) -> None:
        """Handle what the workers have sent, waiting at most ``timeout``."""
        if self.selector.get_map():
            ready = [key.data for key, _ in self.selector.select(timeout)]
        else:  # every line has ended
            ready = []
            time.sleep(timeout)
        received = [(wid, msg) for wid in ready for msg in self.procs[wid].pending()]
        # Work first, then the reports: a worker waits for nothing but its next item while
        # we write its log lines (to a terminal that may be slow).
        received.sort(key=lambda m: m[1][0] != "ready")
        for wid, (kind, _, payload) in received:
            self.handle(wid, kind, payload)
        for wid in ready:
            if self.procs[wid].closed:
                self.selector.unregister(self.procs[wid].sock)
                self.died(wid)
        if not ready:  # a worker may be gone with its line still open elsewhere
            for wid in list(self.alive):
                if not self.procs[wid].is_alive():
                    self.drain_one(wid)
                    self.died(wid)

    def died(self, wid: int) -> None:
        """``wid``'s line ended: without "exit", it died with its tables in flight."""
        if wid not in self.alive:
            return
        self.alive.discard(wid)
        p = self.procs[wid]
        p.join(timeout=2)
        for i in self.in_flight.pop(wid, []):
            res = TableResult(self.keys[i], error=f"worker died (exit code {p.exitcode})")
            self.out.failed.append(res)
            self.finished[i] = 1
            self.reporter.table_failed(res, i)

    def hand_out(self, wid: int) -> None:
        item = self.todo.popleft() if self.todo else None
        msg = None if item is None else [(i, self.tasks[i]) for i in item]
        if not self.procs[wid].send(msg) and item is not None:
            self.todo.appendleft(item)  # gone: its end-of-file is handled next

    def handle(self, wid: int, kind: str, payload) -> None:
        out, reporter = self.out, self.reporter
        index = None
        if kind == "start":
            index = payload
        elif kind in ("done", "failed"):
            # a result arrives as new objects: keep the task's key, one format string, one
            # 0.0 and the byte count once where nothing compressed it (10,000 results held
            # 2.1 MB of copies of keys and formats through the load)
            index, r = payload
            payload = replace(
                r,
                key=self.keys[index],
                format=sys.intern(r.format),
                wire_bytes=r.bytes if r.wire_bytes == r.bytes else r.wire_bytes,
                verify_seconds=r.verify_seconds or 0.0,
                index_seconds=r.index_seconds or 0.0,
            )
        if kind == "ready":
            self.hand_out(wid)
        elif kind == "start":
            self.in_flight.setdefault(wid, []).append(index)
            reporter.table_started(self.keys[index])
        elif kind == "failed" and out.stopped:
            self._settled(wid, index)
            out.cancelled.add(payload.key)
        elif kind in ("done", "failed"):
            self._settled(wid, index)
            (out.done if kind == "done" else out.failed).append(payload)
            (reporter.table_done if kind == "done" else reporter.table_failed)(payload, index)
        elif kind == "log":
            reporter.log(*payload)
        elif kind == "exit":
            self.alive.discard(wid)
            if payload:
                out.worker_usage.append(payload)
        else:
            reporter.log("WARN", f"unknown message {kind!r} from worker {wid}")
        if kind in ("start", "failed") and self.all_reading is not None and not self.begun[index]:
            self.begun[index] = 1
            self.nbegun += 1
            if self.nbegun == len(self.tasks):
                self.all_reading()
                self.all_reading = None

    def _settled(self, wid: int, index: int) -> None:
        if index in self.in_flight.get(wid, ()):
            self.in_flight[wid].remove(index)
        self.finished[index] = 1

    def drain_one(self, wid: int) -> None:
        for kind, _, payload in self.procs[wid].pending():
            self.handle(wid, kind, payload)

    def drain(self) -> None:
        """What the stopped workers sent before they exited (nothing more is handed out)."""
        self.alive.clear()
        self.selector.close()
        for wid in self.procs:
            self.drain_one(wid)
