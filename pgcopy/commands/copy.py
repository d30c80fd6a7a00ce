"""`pgcopy copy`: one :class:`CopyRun`, one method per phase, in order.

STEP 1 connect, identify, take the run lock       STEP 5 load the tables in parallel
STEP 2 finish an interrupted run (journal)        STEP 6 restore and validate the FKs
STEP 3 export the source snapshot, preflight      STEP 7 sequences, matviews
STEP 4 confirm, journal and drop the FKs          STEP 8 report

What is undone on each way out, in one place (:meth:`CopyRun.execute`): once STEP 4 has
dropped foreign keys, every exit path — success, table failures, a stop by signal — goes
through STEP 6 and STEP 7 before returning; a second Ctrl-C abandons STEP 6 and leaves
the journal for ``pgcopy recover``.  A kill -9 leaves the journal too, and the run lock
dies with the coordinator's connection.
"""

from __future__ import annotations

import fnmatch
import itertools
import os
import signal
import sys
import time
from array import array
from collections.abc import Container
from dataclasses import dataclass, fields, replace

import psycopg2
from psycopg2 import sql

from pgcopy import failpoints, fmt, runlock, sequences
from pgcopy import fkeys as fkmod
from pgcopy.catalog import (
    SIZE_LOCK_WAIT,
    ForeignKey,
    database_identity,
    locks_per_transaction,
    qualname,
)
from pgcopy.connections import (
    Session,
    common_encoding,
    connect,
    connect_asking,
    describe,
    describe_conn,
    error_line,
    make_durable,
    settled,
)
from pgcopy.coordinator import LoadOutcome, Workers, run_load, start_workers, workers_for
from pgcopy.errors import (
    EXIT_OK,
    EXIT_PARTIAL,
    Cancelled,
    PgcopyError,
    PreflightError,
)
from pgcopy.fkearly import EarlyRestorer
from pgcopy.journal import Journal
from pgcopy.keys import KeyIndex, KeySet, TaskKeys
from pgcopy.log import Logger, safe_write
from pgcopy.options import CopyOptions
from pgcopy.packed import Appended, Chunked
from pgcopy.plan import Batches, Plan, PlanInputs
from pgcopy.plan import batches as plan_batches
from pgcopy.planner import PlanRequest, plan_apart
from pgcopy.preflight import Problems
from pgcopy.progress import ProgressBus
from pgcopy.report import RunReport
from pgcopy.spill import Spill, give_back, spilled, unmap_big_frees, unspilled
from pgcopy.stopping import RunBackends, StopFlag, Tee
from pgcopy.stream import StreamSpec
from pgcopy.task import SMALL_BYTES
from pgcopy.ui import make_view
from pgcopy.ui.base import LogReporter
from pgcopy.worker import WorkerSpec


class Stopped(Exception):
    """A stop came before the load: no table is loaded, the FKs dropped go back."""


@dataclass(frozen=True)
class LoadSetup:
    """What the workers are started with, and the items they will load."""

    spec: WorkerSpec
    batches: Batches  # task indices loaded together (plan.batches)


@dataclass
class LoadedSizes:
    """Each loaded table's size on the source, by its position in the plan, and each
    partitioned parent's (its leaves'): no dict of every table's key (see CopyRun.change)."""

    index: KeyIndex  # the run's: loaded table -> position
    sizes: array  # per position
    parents: dict  # partitioned parent -> its loaded leaves' size

    def get(self, key) -> int | None:
        i = self.index.get(key)
        return self.sizes[i] if i is not None else self.parents.get(key)

    def spill_into(self, spill: Spill) -> None:
        """Its arrays moved into the run's file (pgcopy.spill)."""
        self.index.spill_into(spill)
        self.sizes = spilled(spill, self.sizes)

    def in_memory(self) -> None:
        self.index.in_memory()
        self.sizes = unspilled(self.sizes)

    def __getitem__(self, key) -> int:
        size = self.get(key)
        return 0 if size is None else size


def loaded_sizes(plan: Plan, index: KeyIndex) -> LoadedSizes:
    sizes = array("q", (t.data_bytes for t in plan.tasks))
    parents: dict = {}
    for leaf, ups in plan.ancestors.items():
        for parent in ups:
            parents[parent] = parents.get(parent, 0) + sizes[leaf]
    return LoadedSizes(index, sizes, parents)


def fk_sizes(plan: Plan, sizes: LoadedSizes) -> array:
    """Per FK of the plan, the referencing table's size: what its validation scans, for the ETA."""
    return array("f", (sizes[fk.table] for fk in plan.fkeys))  # an estimate: single precision


@dataclass(frozen=True)
class SmallTables:
    """Loaded tables (and partitioned parents) that are small: an FK between two of them
    is added validated in one statement (see fkeys.between).  Asked of the sizes: no set
    of keys (a set of 20,000 small ones held 2 MB through the load)."""

    sizes: LoadedSizes

    def __contains__(self, key) -> bool:
        size = self.sizes.get(key)
        return size is not None and size <= SMALL_BYTES


def _print_plan(plan: Plan, snapshot: str | None, opts: CopyOptions, stream) -> None:
    def p(text: str) -> None:
        safe_write(stream, text + "\n")

    if opts.batch_size:
        how = f"row mode, batches of {opts.batch_size} rows"
    else:
        how = "COPY pipe" + (f", {opts.codec.name} level {opts.codec.level}" if opts.codec else "")
    p(f"Plan: {len(plan.tasks)} tables, largest first, {min(opts.parallel, len(plan.tasks))} workers, {how}")
    for t in plan.tasks:
        trig = f", {len(t.triggers)} triggers held off" if t.triggers else ""
        trig += f", {len(t.indexes)} indexes rebuilt after the load" if t.indexes else ""
        trig += f", {len(t.checks)} NOT VALID checks set aside" if t.checks else ""
        form = "rows as text" if opts.batch_size else f"{t.format} ({t.format_reason})"
        p(
            f"  {t.qualname:<40} {fmt.estimate(t.est_rows):>10} rows  {fmt.size(t.est_bytes):>10}  {form}{trig}"
        )
    p(f"Foreign keys to drop and restore: {len(plan.fkeys)}")
    for fk in plan.fkeys:
        p(f"  {fkmod.describe(fk)}{'' if fk.validated else ' (NOT VALID, stays so)'}")
    seqs = plan.sequences.open().sequences
    p(f"Sequences to set from the source: {len(seqs)}")
    for s in seqs:
        p(f"  {qualname(s.key)}")
    p(f"Materialized views to refresh: {len(plan.matviews)}")
    for m in plan.matviews:
        p(f"  {qualname(m)}")
    p(f"Source snapshot: {'exportable' if snapshot else 'not used (--no-snapshot)'}")
    if plan.large_objects:
        p(f"Large objects on the source: {plan.large_objects} (not copied)")


# Tables up to this size are counted exactly for the prompt; larger ones show the
# planner's estimate, marked with "~", so the prompt never takes minutes.
EXACT_COUNT_BYTES = 64 << 20


def _rows_for_prompt(cur, key, size: int, estimate: float) -> str:
    if size > EXACT_COUNT_BYTES:
        return fmt.estimate(estimate)
    try:  # a table locked elsewhere is not waited for here (its load will wait for it)
        cur.execute(
            sql.SQL("SET LOCAL lock_timeout = %s; SELECT count(*) FROM ONLY {}").format(sql.Identifier(*key)),
            (SIZE_LOCK_WAIT,),
        )
        n = cur.fetchone()[0]
    except psycopg2.errors.LockNotAvailable:
        cur.connection.rollback()
        return f"{fmt.estimate(estimate)} (locked elsewhere)"
    cur.connection.commit()  # one table's lock at a time
    return f"{n:,}"


def copy(opts: CopyOptions, log: Logger) -> int:
    if not (opts.dry_run or opts.yes) and not sys.stdin.isatty():
        raise PreflightError(
            [
                "stdin is not a terminal, so the confirmation cannot be asked: pass --yes (or --skip-backup) to proceed, or --dry-run"
            ]
        )
    unmap_big_frees()
    report = RunReport(options=public_options(opts), warnings=log.warnings)
    try:
        report.exit_code = CopyRun(opts, report, log).execute()
        return report.exit_code
    except PgcopyError as exc:
        report.exit_code, report.error = exc.exit_code, str(exc)
        report.problems = list(getattr(exc, "problems", []))
        raise
    finally:
        if opts.report_file:
            report.write(opts.report_file)


def public_options(opts: CopyOptions) -> dict:
    """The options for the report: connections described, passwords never included."""
    d = {f.name: getattr(opts, f.name) for f in fields(opts)}
    d["source"], d["dest"] = describe(opts.source), describe(opts.dest)
    d["state_dir"] = str(opts.state_dir) if opts.state_dir else None
    d["codec"] = f"{opts.codec.name}:{opts.codec.level}" if opts.codec else None
    d["include"], d["exclude"] = list(opts.include), list(opts.exclude)
    return d


class CopyRun:
    """Owns the connections, the run lock, the journal, the stop flag and the report."""

    def __init__(self, opts: CopyOptions, report: RunReport, log: Logger):
        self.opts, self.report, self.log = opts, report, log
        self.session = Session.new()
        self.src = self.dst = None
        self.journal: Journal | None = None
        self.carried: dict[tuple, ForeignKey] = {}  # original FK states from an interrupted run
        self.journal_restored = 0  # FKs of an interrupted run put back before the prompt
        self.snapshot: str | None = None
        self.dropped = False  # every FK of the plan was dropped
        self.stop = StopFlag()
        self.spill: Spill | None = None  # the run's file of per-table arrays, from change()
        # the plan and statistics for humans; stderr when stdout carries the JSON report
        self.human = sys.stderr if opts.report_file == "-" else sys.stdout

    # --- the whole run -------------------------------------------------------------

    def execute(self) -> int:
        try:
            self.connect()
            self.identify()
            self.finish_interrupted()
            plan = self.snapshot_and_plan()
            if self.opts.dry_run:
                self.report.set_plan(plan, self.snapshot is not None, list(Problems.ORDER))
                self.report.large_objects = plan.large_objects
                _print_plan(plan, self.snapshot, self.opts, self.human)
                self.log.done("dry run: nothing was changed")
                return EXIT_OK
            if not self.opts.yes:
                self.confirm(plan)
            return self.change(plan)
        finally:
            for conn in (self.src, self.dst):
                if conn is not None:
                    conn.close()

    def change(self, plan: Plan) -> int:
        """Everything that changes the destination, with the stop flag installed."""
        self.report.tables_total = len(plan.tasks)
        self.report.large_objects = plan.large_objects
        started = time.monotonic()
        # what the run keeps per table and FK goes into a file for the load (pgcopy.spill);
        # made first, so that a state directory refusing it stops the run before any change
        spill = self.spill = Spill(str(self.journal.dir))  # made 0700 by journal.check
        self.stop.install()
        bus = ProgressBus(workers_for(self.opts.parallel, plan.tasks))
        # each loaded table's position in the plan: the one per-table index of the run (the
        # display's, the load's and the FK restores'), 12 bytes a table (pgcopy.keys)
        index = (
            plan.index if plan.index is not None and plan.index.usable() else KeyIndex(TaskKeys(plan.tasks))
        )
        sizes = loaded_sizes(plan, index)
        small = SmallTables(sizes)  # one for the display, the early and the final restore
        view = make_view(
            self.opts.output,
            self.log,
            plan.tasks,
            bus,
            lambda: self.stop.request(signal.SIGINT),
            self.opts.progress_interval,
            plan.fkeys,
            fk_sizes(plan, sizes),
            small,
            index,
        )
        if os.environ.get("PGCOPY_BENCH_NO_BUS"):
            # measurement switch for benchmarks/run.py: the same run without bus and display
            bus, view = None, LogReporter(self.log)
        view.start()
        try:
            code = self.phases(plan, view, bus, small, index)
        except KeyboardInterrupt:  # a second Ctrl-C: stop trying to put things back
            view.stop()
            self.log.error(
                f"abandoned: foreign keys may still be dropped; run pgcopy recover --dest ... (journal {self.journal.path})"
            )
            code = self.stop.exit_code
        finally:
            view.stop()
            self.stop.uninstall()
            self.report.seconds = time.monotonic() - started
            spill.close()
        safe_write(self.human, self.report.box() + "\n")
        for w in self.report.warnings:
            safe_write(self.human, f"warning: {w}\n")
        return code

    def phases(self, plan: Plan, view, bus, small: SmallTables, index: KeyIndex) -> int:
        """Once anything may have been dropped, every way out restores it first."""
        outcome, error = LoadOutcome(stopped=True), None
        load = self.load_setup(plan)
        workers = start_workers(load.spec, workers_for(self.opts.parallel, load.batches), bus)
        try:
            self.drop_fkeys(plan, view)
            outcome = self.load(plan, view, load, workers, small, index)
        except Stopped as exc:
            self.log.warn(f"{exc}: putting back those dropped")
            outcome = LoadOutcome(stopped=True, not_started=[t.key for t in plan.tasks])
        except Exception as exc:  # a fatal error in the coordinator: stop, put things back
            error = exc
            self.log.error(f"stopping after an error: {error_line(exc)}")
        finally:
            workers.close()  # idle ones, when the drop failed or a stop came before the load
        restored = self.restore_fkeys(plan.fkeys, view, small)
        self.sequences_and_matviews(plan, outcome, view, index)
        try:
            # restore_all flushed the workers' and FK sessions' asynchronous commits (see
            # pgcopy.connections) unless it failed; our own session commits synchronously
            make_durable(self.dst, self.session)
        except psycopg2.Error:
            if error is None:
                raise
        if error is not None:
            raise error
        return self.finish(outcome, restored)

    # --- STEP 1 --------------------------------------------------------------------

    def connect(self) -> None:
        o = self.opts
        self.src, source = connect_asking(o.source, "source", self.session)
        self.dst, dest = connect_asking(o.dest, "destination", self.session, readonly=o.dry_run)
        # a typed password reaches the workers, and what these connections showed
        self.opts = replace(o, source=settled(source, self.src), dest=settled(dest, self.dst))
        self.report.options["source"] = describe_conn(self.src)
        self.report.options["dest"] = describe_conn(self.dst)
        enc = common_encoding(self.src, self.dst)
        self.session = self.session.with_encoding(enc).with_sessions_checked()
        if not o.dry_run:
            self.session = self.session.with_async_commit(self.dst)
        for conn in (self.src, self.dst):
            conn.set_client_encoding(enc)
        self.log.info(
            f"STEP 1: connected to source {describe_conn(self.src)} and destination {describe_conn(self.dst)}"
            f" (client_encoding {enc})"
        )

    def identify(self) -> None:
        """Refuse a copy onto itself (not a clone of it), a standby, or a busy destination."""
        dcur = self.dst.cursor()
        dcur.execute(
            """SELECT count(*) FROM pg_stat_activity
                WHERE application_name = %s AND pid <> pg_backend_pid()
                  AND datid = (SELECT oid FROM pg_database WHERE datname = current_database())""",
            (self.session.app_name,),
        )
        if dcur.fetchone()[0]:
            # our source session is visible from the destination's own database: the same one
            raise PreflightError(
                [f"source and destination are the same database ({describe_conn(self.dst)})"]
            )
        self.check_dest_allowed(dcur)
        dcur.execute("SELECT pg_is_in_recovery()")
        if dcur.fetchone()[0]:
            raise PreflightError(
                [f"the destination {describe_conn(self.dst)} is a read-only standby (in recovery)"]
            )
        self.dst.commit()
        self.check_connections()
        runlock.acquire(self.dst, describe_conn(self.dst))
        dst_id = database_identity(dcur)
        self.dst.commit()
        self.journal = Journal(self.opts.state_dir, dst_id, describe_conn(self.dst))
        self.journal.check()
        for other in self.journal.siblings():
            self.log.warn(
                f"{other} is the journal of a database with this identity reached under another "
                "name (or a clone of it); if it is this one, run pgcopy recover with that name"
            )

    def check_dest_allowed(self, dcur) -> None:
        """The guard for scheduled runs: the destination's live host must match dest_allow."""
        if not self.opts.dest_allow:
            return
        dcur.execute("SELECT host(inet_server_addr())")
        addr = dcur.fetchone()[0]
        self.dst.commit()
        names = {self.dst.info.host, addr} - {None}
        if not any(fnmatch.fnmatchcase(n, p) for n in names for p in self.opts.dest_allow):
            raise PreflightError(
                [
                    f"destination host {' / '.join(sorted(names))} ({describe_conn(self.dst)}) is not in dest_allow "
                    f"({', '.join(self.opts.dest_allow)}): refusing to overwrite it"
                ]
            )

    def check_connections(self) -> None:
        """--parallel against what each server has free: each worker holds one session per
        side, plus the coordinator's catalog session and the early FK restore's."""
        p = self.opts.parallel
        problems = []
        for conn, side, need in (
            (self.src, "source", p + 1),
            (self.dst, "destination", p + 1 + max(1, p // 2)),
        ):
            cur = conn.cursor()
            cur.execute(
                """SELECT current_setting('max_connections')::int
                          - current_setting('superuser_reserved_connections')::int,
                          (SELECT count(*) FROM pg_stat_activity WHERE datid IS NOT NULL)"""
            )
            limit, used = cur.fetchone()
            conn.commit()
            if limit - used < need:
                problems.append(
                    f"the {side} has {max(0, limit - used)} free connections ({limit} allowed, {used} in use); "
                    f"--parallel {p} needs {need} more: lower --parallel"
                )
        if problems:
            raise PreflightError(problems)

    # --- STEP 2 --------------------------------------------------------------------

    def finish_interrupted(self) -> None:
        """We hold the run lock, so a journal here belongs to a run that is gone."""
        journal = self.journal
        if not journal.exists():
            return
        fks = journal.read()
        self.carried = {(fk.table, fk.name): fk for fk in fks}
        self.log.info("STEP 2: finishing an interrupted run")
        if self.opts.dry_run:
            self.log.warn(
                f"an interrupted run ({journal.owner()}) left {len(fks)} dropped foreign keys "
                f"({journal.path}); a real run restores them first"
            )
            return
        self.log.warn(
            f"found the journal of an interrupted run ({journal.owner()}, {journal.path}): "
            f"restoring {len(fks)} foreign keys first"
        )
        outcome = fkmod.restore_all(self.fk_target(), fks)
        fkmod.log_outcome(outcome, self.log)
        self.journal_restored = len(outcome.restored) + len(outcome.not_valid)
        if outcome.complete:
            journal.remove()
            self.carried = {}
            return
        # Left NOT VALID, or missing because an FK on a partitioned table cannot be NOT
        # VALID while its tables are mid-way: this run reloads them. The journal keeps
        # their original state, and this run's plan takes it from there, never from the
        # catalog; STEP 6 puts them back (or reports them, keeping the journal).
        waiting = [fk for fk, _ in outcome.not_valid] + [fk for fk, _ in outcome.missing]
        self.carried = {(fk.table, fk.name): fk for fk in waiting}
        self.log.warn(
            f"{len(waiting)} of them wait for this run to reload their tables; "
            "the journal keeps their original state"
        )

    # --- STEP 3 --------------------------------------------------------------------

    def snapshot_and_plan(self) -> Plan:
        """The coordinator's first source session only exports the snapshot (it holds no
        lock); the catalogs are read in a forked process on sessions of its own, the
        source's importing the snapshot (pgcopy.planner), sizes and sequences a few tables
        per transaction, so no pgcopy transaction nears the lock budget."""
        self.src.set_session(isolation_level="REPEATABLE READ", readonly=True)
        if self.opts.snapshot:
            try:
                cur = self.src.cursor()
                cur.execute("SELECT pg_export_snapshot()")
                self.snapshot = cur.fetchone()[0]
            except Exception as exc:
                raise PreflightError(
                    [
                        f"the source cannot export a snapshot ({error_line(exc)}): connect to the server directly, or pass --no-snapshot to read each table at a different moment"
                    ]
                ) from None
        self.log.info("STEP 3: reading catalogs and checking the destination")
        o = self.opts
        inputs = PlanInputs(o.include, o.exclude, o.format, o.index_rebuild_bytes)
        request = PlanRequest(
            o.source, o.dest, self.session, self.snapshot, o.lock_timeout, inputs, o.dry_run
        )
        plan = plan_apart(request, self.log)
        # our own sessions, as the planning's were: catalog names unqualified nowhere, and
        # the destination's waits bounded by --lock-timeout
        dcur = self.dst.cursor()
        fkmod.session_setup(dcur, o.lock_timeout)
        self.dst.commit()
        # an interrupted run's journal holds the original state of the FKs it dropped
        if self.carried:
            fks = [self.carried.get((fk.table, fk.name), fk) for fk in plan.fkeys]
            planned = {(fk.table, fk.name) for fk in fks}
            plan.fkeys = Chunked(fks + [fk for key, fk in self.carried.items() if key not in planned])
        if plan.large_objects:
            self.log.warn(f"the source has {plan.large_objects} large objects; pgcopy does not copy them")
        return plan

    # --- STEP 4 --------------------------------------------------------------------

    def confirm(self, plan: Plan) -> None:
        # the source's row counts on a session of their own: the exporting one stays idle
        counts = connect(self.opts.source, "source", self.session, readonly=True)
        try:
            counts.cursor().execute("SET search_path = pg_catalog")
            counts.commit()
            self.ask(plan, counts.cursor(), self.dst.cursor())
        finally:
            counts.close()

    def ask(self, plan: Plan, scur, dcur) -> None:
        err = sys.stderr
        err.write("\nWARNING: this will OVERWRITE data in the destination database\n")
        err.write(f"  Destination: {describe_conn(self.dst)}\n")
        err.write(f"  Tables to overwrite: {len(plan.tasks)} (~ marks a planner estimate)\n")
        for t in plan.tasks[:40]:
            now = _rows_for_prompt(dcur, t.key, t.dest_est_bytes, t.dest_est_rows)
            new = _rows_for_prompt(scur, t.key, t.est_bytes, t.est_rows)
            err.write(f"    {t.qualname}: {now} rows now, {new} from the source\n")
        if len(plan.tasks) > 40:
            err.write(f"    ... and {len(plan.tasks) - 40} more\n")
        if plan.large_objects:
            err.write(f"  Large objects on the source: {plan.large_objects} (not copied)\n")
        if self.journal_restored:
            err.write(
                f"  Already done: {self.journal_restored} foreign keys an interrupted run had dropped were restored\n"
            )
        err.write("Type 'yes' to proceed: ")
        err.flush()
        self.dst.commit()
        try:
            answer = input()
        except EOFError:
            answer = ""
        if answer.strip().lower() != "yes":
            if self.journal_restored:
                raise Cancelled(
                    f"cancelled at the confirmation prompt; the only change made was restoring the "
                    f"{self.journal_restored} foreign keys an interrupted run had dropped"
                )
            raise Cancelled("cancelled at the confirmation prompt; nothing was changed")

    def drop_fkeys(self, plan: Plan, view) -> None:
        view.phase("dropping foreign keys")
        self.report.mark("drop foreign keys")
        self.log.info(
            f"STEP 4: recording {len(plan.fkeys)} foreign keys in {self.journal.path} and dropping them"
        )
        if plan.fkeys:
            self.journal.write(plan.fkeys, describe_conn(self.dst), self.session.app_name)
        failpoints.hit("after-journal")
        try:
            fkmod.drop_all(self.fk_target(), plan.fkeys, self.stop)
        except Exception as exc:
            if self.stop():  # a statement the stop cancelled
                raise Stopped(f"stopped while dropping foreign keys ({error_line(exc)})") from exc
            raise
        if self.stop():
            raise Stopped("stopped while dropping foreign keys")
        failpoints.hit("after-drop")
        self.dropped = True  # the report lists them after the load (a list of 20,000 strings is 2 MB)
        self.report.triggers_held = sum(len(t.triggers) for t in plan.tasks)

    # --- STEP 5 --------------------------------------------------------------------

    def load_setup(self, plan: Plan) -> LoadSetup:
        """What the workers are started with, before the FK drop (see start_workers)."""
        o = self.opts
        # a batch of small tables holds their locks to its commit: half a session's share
        lock_budget = locks_per_transaction(self.dst) // 2
        batches = plan_batches(plan.tasks, lock_budget, bool(o.batch_size or o.codec))
        to_utf8 = self.src.get_parameter_status("server_encoding") != self.dst.get_parameter_status(
            "server_encoding"
        )
        stream = StreamSpec(o.codec, o.batch_size, o.lock_timeout, o.analyze, o.verify, to_utf8, lock_budget)
        return LoadSetup(WorkerSpec(o.source, o.dest, self.snapshot, stream, self.session), batches)

    def spill_for_load(self, *holders) -> None:
        """What the run keeps per table and FK moved into its file for the load, when the
        lookups that build it are done (pgcopy.spill)."""
        for holder in holders:
            holder.spill_into(self.spill)
        give_back()  # the arrays' memory goes back to the system
        self.log.debug(f"per-table arrays and the packed plan: {self.spill.size:,} bytes in a temporary file")

    def load(
        self, plan: Plan, view, setup: LoadSetup, workers: Workers, small: SmallTables, index: KeyIndex
    ) -> LoadOutcome:
        view.phase(None)
        self.report.mark("load")
        o, batches = self.opts, setup.batches
        grouped = sum(len(b) for b in batches if len(b) > 1)
        self.log.info(
            f"STEP 5: loading {len(plan.tasks)} tables with {len(workers.procs)} workers"
            + (f" ({grouped} small tables in {sum(len(b) > 1 for b in batches)} batches)" if grouped else "")
        )
        # FKs whose tables have all loaded are restored while the others still load
        target = self.fk_target(small=small, on_settled=view.fk_settled)
        early = EarlyRestorer(
            replace(target, parallel=max(1, o.parallel // 2)), plan.fkeys, plan.ancestors, index, self.log
        )
        self.spill_for_load(plan, small.sizes, view, early, batches)
        backends = RunBackends(self.dst, self.session, early.request_stop, early.stop)
        early.start()
        try:
            outcome = run_load(
                workers,
                plan.tasks,
                Tee(view, early),
                self.stop,
                backends,
                self.release_source,
                batches,
                TaskKeys(plan.tasks),
            )
        finally:
            early.stop()
            # the workers are gone: the lookups by key that follow (each FK's tables, each
            # result's position) read the index and sizes from memory again
            small.sizes.in_memory()
        if early.restored:
            self.log.info(f"{early.restored} foreign keys were restored and validated during the load")
        self.report.add_load(outcome, plan.tasks, o.codec, index)
        if outcome.stopped:
            self.log.warn(
                f"stopping: {len(outcome.rolled_back)} tables in flight rolled back, {len(outcome.not_started)} "
                "not started; restoring foreign keys (press Ctrl-C again to abandon)"
            )
        return outcome

    def release_source(self) -> None:
        """Every table has begun reading: end the exporting transaction, so the source's
        xmin is held only by the reads still in flight."""
        if self.snapshot is not None:
            self.src.rollback()
            self.snapshot = None
            self.log.debug("source snapshot released: every table has started reading")

    # --- STEP 6 --------------------------------------------------------------------

    def fk_target(self, **kw) -> fkmod.RestoreTarget:
        """FKs are dropped before the workers connect and restored after they have gone,
        and the early restore's sessions are closed by then: those phases use the
        workers' and the early restore's share of the destination connections
        (check_connections counted them).  More sessions than cores still help: each
        waits on its round trips between the server's work (1,071 FKs restored in
        367-397 ms on 2 sessions, 326-357 on 3).  A server out of slots all the same
        leaves the phase on the sessions it has (fkeys.NoSession)."""
        o = self.opts
        parallel = o.parallel + max(1, o.parallel // 2)
        return fkmod.RestoreTarget(o.dest, o.lock_timeout, self.session, parallel, **kw)

    def restore_fkeys(
        self, fkeys: list[ForeignKey], view, small: Container = frozenset()
    ) -> fkmod.RestoreOutcome:
        view.phase("restoring and validating foreign keys")
        self.report.mark("restore foreign keys")
        self.log.info(f"STEP 6: restoring {len(fkeys)} foreign keys")
        restored = fkmod.restore_all(self.fk_target(small=small, on_settled=view.fk_settled), fkeys)
        fkmod.log_outcome(restored, self.log)
        if self.dropped:
            self.report.fkeys_dropped = Appended(fkmod.describe(fk) for fk in fkeys)
        self.report.fkeys_restored = Appended(fkmod.describe(fk) for fk in restored.restored)
        self.report.fkeys_not_valid = Appended(fkmod.describe(fk) for fk, _ in restored.not_valid)
        self.report.fkeys_missing = Appended(fkmod.describe(fk) for fk, _ in restored.missing)
        if restored.complete:
            self.journal.remove()
        else:
            self.log.error(
                f"some foreign keys are not as they were; the journal {self.journal.path} keeps their "
                "original state: fix the cause and run pgcopy recover (or copy again)"
            )
        return restored

    # --- STEP 7 --------------------------------------------------------------------

    def sequences_and_matviews(self, plan: Plan, outcome: LoadOutcome, view, index: KeyIndex) -> None:
        """Sequences of every committed table, also after failures and stops."""
        view.phase("setting sequences, refreshing materialized views")
        self.report.mark("sequences and matviews")
        self.log.info("STEP 7: sequences and materialized views")
        done_keys = KeySet(r.key for r in outcome.done)
        # partitioned parents with a loaded leaf, once: asked per sequence whose table was
        # not loaded, a stop after half of 40,000 tables took 20,000 x 20,000 steps
        loaded_parents = {a for r in outcome.done for a in plan.ancestors[index[r.key]]}
        in_load = (qualname(k) for t in plan.tasks if t.key in done_keys for k in t.sequences)
        others = sequences.set_others(self.dst, plan, done_keys, loaded_parents, self.log)
        self.report.sequences_set = Appended(itertools.chain(in_load, others))
        if self.stop():
            self.log.warn("stopping: materialized views not refreshed")
        elif self.opts.refresh_matviews and outcome.done:
            self.report.matviews_refreshed = _refresh_matviews(self.dst, plan, self.log, self.stop)

    # --- STEP 8 --------------------------------------------------------------------

    def finish(self, outcome: LoadOutcome, restored: fkmod.RestoreOutcome) -> int:
        report = self.report
        report.mark(None)
        self.log.info("STEP 8: report")
        if report.phases:
            self.log.info("phases: " + ", ".join(f"{k} {v:.1f}s" for k, v in report.phases.items()))
        for name, err in report.tables_failed:
            self.log.error(f"table {name} was not copied: {err}")
        if report.tables_not_copied:
            self.log.warn(f"not copied (kept their old rows): {', '.join(report.tables_not_copied)}")
        if self.stop():
            return self.stop.exit_code
        if not restored.present:
            return 1
        if report.tables_failed or report.tables_not_copied or report.fkeys_not_valid:
            return EXIT_PARTIAL
        return EXIT_OK


def _refresh_matviews(dst, plan: Plan, log: Logger, stop) -> list[str]:
    cur = dst.cursor()
    done = []
    for mv in plan.matviews:
        if stop():
            log.warn("stopping: remaining materialized views not refreshed")
            break
        try:
            cur.execute(sql.SQL("REFRESH MATERIALIZED VIEW {}").format(sql.Identifier(*mv)))
            failpoints.hit("during-matviews")
            dst.commit()
            done.append(qualname(mv))
        except failpoints.FailpointError:
            raise
        except Exception as exc:
            dst.rollback()
            log.warn(f"materialized view {qualname(mv)} not refreshed: {error_line(exc)}")
    return done
