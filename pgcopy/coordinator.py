"""Runs the load phase: worker processes, a task queue, a result queue.

    coordinator ──items (one table, or a batch of small ones; then one None per worker)──▶ worker 1..N
         ▲                                                         │
         └──────── results ("start"/"done"/"failed"/"log"/"exit") ─┘

Tasks are queued largest first.  The coordinator waits on the result queue and on the
workers' sentinels: a worker that dies without saying "exit" loses only its table in
flight (its destination transaction is rolled back by the server), and when every worker
is gone the tables never started are reported as not copied.

A stop (Ctrl-C, SIGTERM, SIGHUP, q) sets an event the workers check before taking a
table, cancels the run's statements on the destination server (a COPY, an index build),
terminates the workers, and waits until their backends are gone, so nothing of the run
still holds a lock when the foreign keys are restored.  Workers die with the coordinator
(PR_SET_PDEATHSIG), so a killed coordinator leaves no worker committing tables.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from pgcopy.progress import ProgressBus
from pgcopy.stream import TableResult
from pgcopy.task import CopyTask
from pgcopy.worker import WorkerSpec, worker_main


class Backends(Protocol):
    """The run's own sessions on the destination server."""

    def cancel(self) -> None: ...
    def wait_gone(self) -> None: ...


class Reporter:
    """What the load phase tells the outside world; the progress UI will extend it."""

    def table_started(self, key) -> None: ...
    def table_done(self, result: TableResult) -> None: ...
    def table_failed(self, result: TableResult) -> None: ...
    def log(self, level: str, text: str) -> None: ...


@dataclass
class LoadOutcome:
    done: list[TableResult] = field(default_factory=list)
    failed: list[TableResult] = field(default_factory=list)
    rolled_back: list[tuple[str, str]] = field(default_factory=list)  # in flight at a stop
    not_started: list[tuple[str, str]] = field(default_factory=list)
    stopped: bool = False
    cancelled: set[tuple[str, str]] = field(default_factory=set)  # failed after the stop
    worker_usage: list[dict] = field(default_factory=list)  # per worker that exited cleanly


def spawn_context():
    return mp.get_context("spawn")  # why spawn: see pgcopy.worker


def workers_for(parallel: int, tasks: list) -> int:
    return max(1, min(parallel, len(tasks)))


@dataclass
class Workers:
    """Worker processes waiting for their work (see :func:`start_workers`)."""

    procs: dict  # worker id -> process
    task_q: object
    result_q: object
    stop_event: object
    closed: bool = False

    def close(self) -> None:
        """Stop the workers that are still waiting (run_load never ran, or has ended)."""
        if self.closed:
            return
        self.closed = True
        self.stop_event.set()
        for _ in self.procs:
            self.task_q.put(None)
        for p in self.procs.values():
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
        self.task_q.cancel_join_thread()
        self.result_q.cancel_join_thread()


def start_workers(spec: WorkerSpec, ntasks: int, nworkers: int, bus: ProgressBus | None = None) -> Workers:
    """Start the workers before their work exists: their start (a fresh interpreter and
    its imports, ~0.2 s) then overlaps the FK drop.  They take nothing until
    :func:`run_load` queues the tables, and connect when they take their first."""
    ctx = spawn_context()
    stop_event = ctx.Event()
    task_q = ctx.Queue()
    # Bounded, yet a put can never block: a run sends at most one start and one result per
    # table and one exit per worker, so a slow coordinator or terminal never stalls a worker.
    result_q = ctx.Queue(maxsize=2 * ntasks + nworkers + 16)
    procs = {
        wid: ctx.Process(
            target=worker_main,
            args=(wid, spec, task_q, result_q, bus.array if bus else None, stop_event, os.getpid()),
            name=f"pgcopy-worker-{wid}",
            daemon=True,
        )
        for wid in range(nworkers)
    }
    for p in procs.values():
        p.start()
    return Workers(procs, task_q, result_q, stop_event)


def run_load(
    workers: Workers,
    tasks: list[CopyTask],
    reporter: Reporter,
    stop_requested: Callable[[], bool],
    backends: Backends | None = None,
    all_reading: Callable[[], None] | None = None,
    batches: list[list[int]] | None = None,
) -> LoadOutcome:
    """Load every task on ``workers`` (closed on return); ``batches`` groups task indices
    loaded in one transaction (see ``plan.batches``; default: one table each).
    ``all_reading`` is called once every table has begun its source read (or failed),
    when the run's snapshot is no longer needed."""
    procs, task_q, result_q, stop_event = workers.procs, workers.task_q, workers.result_q, workers.stop_event
    items = batches if batches is not None else [[i] for i in range(len(tasks))]
    if not stop_requested():
        for item in items:
            task_q.put([(i, tasks[i]) for i in item])
    for _ in procs:
        task_q.put(None)

    out = LoadOutcome()
    in_flight: dict[int, list[tuple[str, str]]] = {}  # worker -> its tables started, not finished
    finished: set[tuple[str, str]] = set()
    alive = set(procs)
    begun: set[tuple[str, str]] = set()  # tables whose source read has started (or that failed)
    try:
        while alive:
            if stop_requested():
                out.stopped = True
                break
            try:
                kind, wid, payload = result_q.get(timeout=0.2)
            except queue.Empty:
                for wid in list(alive):
                    if not procs[wid].is_alive():
                        _drain(result_q, out, in_flight, finished, alive, reporter)
                        if wid in alive:  # died without saying goodbye
                            alive.discard(wid)
                            for key in in_flight.pop(wid, []):
                                res = TableResult(key, error=f"worker died (exit code {procs[wid].exitcode})")
                                out.failed.append(res)
                                finished.add(key)
                                reporter.table_failed(res)
                continue
            _handle(kind, wid, payload, out, in_flight, finished, alive, reporter)
            if kind in ("start", "failed") and all_reading is not None:
                begun.add(payload if kind == "start" else payload.key)
                if len(begun) == len(tasks):
                    all_reading()
                    all_reading = None
    finally:
        aborting = out.stopped or bool(alive)
        if aborting:
            stop_event.set()
            if backends is not None:
                backends.cancel()  # the server stops the statements; the workers roll back
            deadline = time.monotonic() + 3
            for p in procs.values():
                p.join(timeout=max(0.0, deadline - time.monotonic()))
            for p in procs.values():
                if p.is_alive():
                    p.terminate()
        for p in procs.values():
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
        _drain(result_q, out, in_flight, finished, set(), reporter)
        if backends is not None and aborting:
            backends.wait_gone()
        if out.stopped:  # tables failed by the cancel were rolled back, not broken
            out.rolled_back = sorted({*_keys(in_flight), *out.cancelled})
            out.failed = [r for r in out.failed if r.key not in out.cancelled]
        else:
            out.rolled_back = sorted(_keys(in_flight))
        finished |= set(out.rolled_back)
        out.not_started = [t.key for t in tasks if t.key not in finished]
        workers.close()
    return out


def _keys(in_flight: dict[int, list]) -> set:
    return {key for keys in in_flight.values() for key in keys}


def _settled(in_flight: dict[int, list], wid: int, key) -> None:
    if key in in_flight.get(wid, ()):
        in_flight[wid].remove(key)


def _handle(kind, wid, payload, out: LoadOutcome, in_flight, finished, alive, reporter: Reporter) -> None:
    if kind == "start":
        in_flight.setdefault(wid, []).append(payload)
        reporter.table_started(payload)
    elif kind == "failed" and out.stopped:
        _settled(in_flight, wid, payload.key)
        finished.add(payload.key)
        out.cancelled.add(payload.key)
    elif kind in ("done", "failed"):
        _settled(in_flight, wid, payload.key)
        finished.add(payload.key)
        (out.done if kind == "done" else out.failed).append(payload)
        (reporter.table_done if kind == "done" else reporter.table_failed)(payload)
    elif kind == "log":
        reporter.log(*payload)
    elif kind == "exit":
        alive.discard(wid)
        if payload:
            out.worker_usage.append(payload)
    else:
        reporter.log("WARN", f"unknown message {kind!r} from worker {wid}")


def _drain(result_q, out, in_flight, finished, alive, reporter) -> None:
    while True:
        try:
            kind, wid, payload = result_q.get_nowait()
        except (queue.Empty, OSError, ValueError):
            return
        _handle(kind, wid, payload, out, in_flight, finished, alive, reporter)
