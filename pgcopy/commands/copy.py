"""`pgcopy copy`: the phases in order.  No SQL beyond what glues the phases together.

STEP 1 connect and identify both databases      STEP 5 load the tables in parallel
STEP 2 finish an interrupted run (journal)      STEP 6 restore and validate the FKs
STEP 3 export the source snapshot, plan         STEP 7 sequences, matviews
STEP 4 confirm, journal and drop the FKs        STEP 8 report
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import fields

from psycopg2 import sql

from pgcopy import fkeys as fkmod
from pgcopy import fmt
from pgcopy.catalog import database_identity, qualname
from pgcopy.connections import connect, describe, error_line
from pgcopy.coordinator import run_load, spawn_context, workers_for
from pgcopy.errors import (
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    Cancelled,
    PgcopyError,
    PreflightError,
)
from pgcopy.journal import Journal
from pgcopy.log import Logger
from pgcopy.options import CopyOptions
from pgcopy.plan import Plan, build_plan
from pgcopy.progress import ProgressBus
from pgcopy.report import RunReport
from pgcopy.stream import StreamSpec
from pgcopy.ui import make_view
from pgcopy.ui.base import LogReporter
from pgcopy.worker import WorkerSpec


class StopFlag:
    """Signal handlers only record the signal; the load loop polls it.

    A second signal raises KeyboardInterrupt, which abandons the restore phase."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, object] = {}

    def _handler(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handler)

    def uninstall(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def request(self, signum: int) -> None:
        """A stop asked for from inside (the interactive view's q)."""
        if self.signum is None:
            self.signum = signum

    def __call__(self) -> bool:
        return self.signum is not None


def _restore_journal(
    journal: Journal, dest: str, parallel: int, lock_timeout: str, log: Logger
) -> fkmod.RestoreOutcome:
    fks = journal.read()
    log.warn(
        f"found the journal of an interrupted run ({journal.path}): restoring {len(fks)} foreign keys first"
    )
    outcome = fkmod.restore_all(dest, fks, parallel, lock_timeout)
    fkmod.log_outcome(outcome, log)
    if outcome.complete:
        journal.remove()
    return outcome


def _print_plan(plan: Plan, snapshot: str | None, opts: CopyOptions) -> None:
    p = print
    if opts.batch_size:
        how = f"row mode, batches of {opts.batch_size} rows"
    else:
        how = "COPY pipe" + (f", {opts.codec.name} level {opts.codec.level}" if opts.codec else "")
    p(f"Plan: {len(plan.tasks)} tables, largest first, {min(opts.parallel, len(plan.tasks))} workers, {how}")
    for t in plan.tasks:
        trig = f", {len(t.triggers)} triggers held off" if t.triggers else ""
        trig += f", {len(t.indexes)} indexes rebuilt after the load" if t.indexes else ""
        form = "rows as text" if opts.batch_size else f"{t.format} ({t.format_reason})"
        p(
            f"  {t.qualname:<40} {fmt.estimate(t.est_rows):>10} rows  {fmt.size(t.est_bytes):>10}  {form}{trig}"
        )
    p(f"Foreign keys to drop and restore: {len(plan.fkeys)}")
    for fk in plan.fkeys:
        p(f"  {fkmod.describe(fk)}{'' if fk.validated else ' (NOT VALID, stays so)'}")
    p(f"Sequences to set from the source: {len(plan.sequences)}")
    for s in plan.sequences:
        p(f"  {qualname(s.key)}")
    p(f"Materialized views to refresh: {len(plan.matviews)}")
    for m in plan.matviews:
        p(f"  {qualname(m)}")
    p(
        f"session_replication_role = replica: {'available' if plan.replica else 'not available (not needed: FKs are dropped)'}"
    )
    p(f"Source snapshot: {'exportable' if snapshot else 'not used (--no-snapshot)'}")


# Tables up to this size are counted exactly for the prompt; larger ones show the
# planner's estimate, marked with "~", so the prompt never takes minutes.
EXACT_COUNT_BYTES = 64 << 20


def _rows_for_prompt(cur, key, size: int, estimate: float) -> str:
    if size > EXACT_COUNT_BYTES:
        return fmt.estimate(estimate)
    cur.execute(sql.SQL("SELECT count(*) FROM ONLY {}").format(sql.Identifier(*key)))
    return f"{cur.fetchone()[0]:,}"


def _confirm(plan: Plan, dest: str, scur, dcur) -> None:
    err = sys.stderr
    err.write("\nWARNING: this will OVERWRITE data in the destination database\n")
    err.write(f"  Destination: {describe(dest)}\n")
    err.write(f"  Tables to overwrite: {len(plan.tasks)} (~ marks a planner estimate)\n")
    for t in plan.tasks[:40]:
        now = _rows_for_prompt(dcur, t.key, t.dest_est_bytes, t.dest_est_rows)
        new = _rows_for_prompt(scur, t.key, t.est_bytes, t.est_rows)
        err.write(f"    {t.qualname}: {now} rows now, {new} from the source\n")
    if len(plan.tasks) > 40:
        err.write(f"    ... and {len(plan.tasks) - 40} more\n")
    err.write("Type 'yes' to proceed: ")
    err.flush()
    try:
        answer = input()
    except EOFError:
        answer = ""
    if answer.strip().lower() != "yes":
        raise Cancelled("cancelled at the confirmation prompt; nothing was changed")


def copy(opts: CopyOptions, log: Logger) -> int:
    if not (opts.dry_run or opts.yes) and not sys.stdin.isatty():
        raise PreflightError(
            [
                "stdin is not a terminal, so the confirmation cannot be asked: pass --yes (or --skip-backup) to proceed, or --dry-run"
            ]
        )
    report = RunReport(options=public_options(opts), warnings=log.warnings)
    try:
        report.exit_code = _connect_and_copy(opts, report, log)
        return report.exit_code
    except PgcopyError as exc:
        report.exit_code, report.error = exc.exit_code, str(exc)
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


def _connect_and_copy(opts: CopyOptions, report: RunReport, log: Logger) -> int:
    log.info(f"STEP 1: connecting to source {describe(opts.source)} and destination {describe(opts.dest)}")
    src = connect(opts.source, "source", readonly=True)
    try:
        dst = connect(opts.dest, "destination", readonly=opts.dry_run)
    except BaseException:
        src.close()
        raise
    try:
        return _copy(opts, src, dst, report, log)
    finally:
        src.close()
        dst.close()


def _copy(opts: CopyOptions, src, dst, report: RunReport, log: Logger) -> int:
    src.set_session(isolation_level="REPEATABLE READ", readonly=True)
    scur, dcur = src.cursor(), dst.cursor()
    fkmod.session_setup(dcur, opts.lock_timeout)
    dst.commit()
    snapshot = None
    if opts.snapshot:
        try:
            scur.execute("SELECT pg_export_snapshot()")
            snapshot = scur.fetchone()[0]
        except Exception as exc:
            raise PreflightError(
                [
                    f"the source cannot export a snapshot ({error_line(exc)}); a pooler in transaction mode cannot share one: connect directly, or pass --no-snapshot to read each table at a different moment"
                ]
            ) from None
    scur.execute("SET search_path = pg_catalog")
    src_id, dst_id = database_identity(scur), database_identity(dcur)
    dst.commit()
    if src_id[:2] == dst_id[:2]:
        raise PreflightError(
            [
                f"source and destination are the same database ({describe(opts.dest)}, system {dst_id[0]}, oid {dst_id[1]})"
            ]
        )

    journal = Journal(opts.state_dir, dst_id)
    if journal.exists():
        log.info("STEP 2: finishing an interrupted run")
        if opts.dry_run:
            log.warn(
                f"an interrupted run left dropped foreign keys ({journal.path}); a real run restores them first"
            )
        elif not _restore_journal(journal, opts.dest, opts.parallel, opts.lock_timeout, log).complete:
            raise PgcopyError(
                f"foreign keys from an interrupted run could not all be restored; fix the errors above and run pgcopy recover (journal {journal.path})"
            )

    log.info("STEP 3: reading catalogs and checking the destination")
    plan = build_plan(scur, dcur, opts.include, opts.exclude, log, opts.format, opts.index_rebuild_bytes)
    dst.commit()
    if opts.dry_run:
        _print_plan(plan, snapshot if opts.snapshot else None, opts)
        log.done("dry run: nothing was changed")
        return EXIT_OK

    # sequences are not transactional: read them now, right after the snapshot was taken
    seq_values = {}
    for seq in plan.sequences:
        scur.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(sql.Identifier(*seq.key)))
        seq_values[seq.key] = scur.fetchone()

    if not opts.yes:
        _confirm(plan, opts.dest, scur, dcur)
        dst.commit()
    report.tables_total, report.replica_mode = len(plan.tasks), plan.replica
    started = time.monotonic()
    stop = StopFlag()
    stop.install()
    try:
        return _run(opts, plan, journal, snapshot, seq_values, dst, report, stop, started, log)
    finally:
        stop.uninstall()


def _run(
    opts: CopyOptions,
    plan: Plan,
    journal: Journal,
    snapshot,
    seq_values,
    dst,
    report: RunReport,
    stop: StopFlag,
    started: float,
    log: Logger,
) -> int:
    bus = ProgressBus(spawn_context(), workers_for(opts.parallel, plan.tasks))
    view = make_view(
        opts.output, log, plan.tasks, bus, lambda: stop.request(signal.SIGINT), opts.progress_interval
    )
    if os.environ.get("PGCOPY_BENCH_NO_BUS"):
        # measurement switch for benchmarks/run.py: the same run without bus and display
        bus, view = None, LogReporter(log)
    view.start()
    try:
        code = _phases(opts, plan, journal, snapshot, seq_values, dst, report, stop, started, log, view, bus)
    except KeyboardInterrupt:  # a second Ctrl-C: stop trying to put things back
        view.stop()
        log.error(
            f"abandoned: foreign keys may still be dropped; run pgcopy recover --dest ... (journal {journal.path})"
        )
        report.seconds = time.monotonic() - started
        code = EXIT_SIGINT
    finally:
        view.stop()
    print(report.box())
    for w in report.warnings:
        print(f"warning: {w}")
    return code


def _phases(opts, plan, journal, snapshot, seq_values, dst, report, stop, started, log, view, bus) -> int:
    view.phase("dropping foreign keys")
    report.mark("drop foreign keys")
    log.info(f"STEP 4: recording {len(plan.fkeys)} foreign keys in {journal.path} and dropping them")
    journal.write(plan.fkeys, describe(opts.dest))
    fkmod.drop_all(dst, plan.fkeys, opts.lock_timeout)
    report.fkeys_dropped = [fkmod.describe(fk) for fk in plan.fkeys]
    report.triggers_held = sum(len(t.triggers) for t in plan.tasks)

    view.phase(None)
    report.mark("load")
    log.info(
        f"STEP 5: loading {len(plan.tasks)} tables with {workers_for(opts.parallel, plan.tasks)} workers"
        + (" (session_replication_role = replica)" if plan.replica else "")
    )
    stream = StreamSpec(opts.codec, opts.batch_size, plan.replica, opts.lock_timeout, opts.analyze)
    spec = WorkerSpec(opts.source, opts.dest, snapshot, stream)
    outcome = run_load(spec, plan.tasks, opts.parallel, view, stop, bus)
    report.add_load(outcome, plan.tasks, opts.codec)
    if outcome.stopped:
        log.warn(
            f"stopping: {len(outcome.rolled_back)} tables in flight rolled back, {len(outcome.not_started)} "
            "not started; restoring foreign keys (press Ctrl-C again to abandon)"
        )

    view.phase("restoring and validating foreign keys")
    report.mark("restore foreign keys")
    try:
        log.info(f"STEP 6: restoring {len(plan.fkeys)} foreign keys")
        restored = fkmod.restore_all(opts.dest, plan.fkeys, opts.parallel, opts.lock_timeout)
    except KeyboardInterrupt:
        log.error(f"foreign key restore abandoned: run `pgcopy recover --dest ...` (journal {journal.path})")
        return EXIT_SIGINT
    fkmod.log_outcome(restored, log)
    report.fkeys_restored = [fkmod.describe(fk) for fk in restored.restored]
    report.fkeys_not_valid = [fkmod.describe(fk) for fk, _ in restored.not_valid]
    report.fkeys_missing = [fkmod.describe(fk) for fk, _ in restored.missing]
    if restored.complete:
        journal.remove()
    else:
        log.error(
            f"some foreign keys are still missing; the journal {journal.path} is kept: fix the cause and run pgcopy recover"
        )

    if not outcome.stopped:
        view.phase("setting sequences, refreshing materialized views")
        report.mark("sequences and matviews")
        log.info("STEP 7: sequences and materialized views")
        done_keys = {r.key for r in outcome.done}
        report.sequences_set = _set_sequences(dst, plan, seq_values, done_keys, log)
        if opts.refresh_matviews and outcome.done:
            report.matviews_refreshed = _refresh_matviews(dst, plan, log)
    report.mark(None)
    report.seconds = time.monotonic() - started
    if report.phases:
        log.info("phases: " + ", ".join(f"{k} {v:.1f}s" for k, v in report.phases.items()))

    for name, err in report.tables_failed:
        log.error(f"table {name} was not copied: {err}")
    if report.tables_not_copied:
        log.warn(f"not copied (kept their old rows): {', '.join(report.tables_not_copied)}")
    if outcome.stopped:
        return EXIT_SIGTERM if stop.signum == signal.SIGTERM else EXIT_SIGINT
    if not restored.complete:
        return 1
    if report.tables_failed or report.tables_not_copied or report.fkeys_not_valid:
        return EXIT_PARTIAL
    return EXIT_OK


def _set_sequences(dst, plan: Plan, values, done_keys, log: Logger) -> list[str]:
    cur = dst.cursor()
    done = []
    for seq in plan.sequences:
        owner = seq.owner_table
        if (
            owner is not None
            and owner not in done_keys
            and not any(owner in plan.ancestors.get(k, ()) for k in done_keys)
        ):
            continue  # its table failed: keep the destination's sequence in step with its old rows
        last_value, is_called = values[seq.key]
        try:
            cur.execute("SELECT setval(%s::regclass, %s, %s)", (qualname(seq.key), last_value, is_called))
            dst.commit()
            done.append(qualname(seq.key))
        except Exception as exc:
            dst.rollback()
            log.warn(f"sequence {qualname(seq.key)} not set: {error_line(exc)}")
    return done


def _refresh_matviews(dst, plan: Plan, log: Logger) -> list[str]:
    cur = dst.cursor()
    done = []
    for mv in plan.matviews:
        try:
            cur.execute(sql.SQL("REFRESH MATERIALIZED VIEW {}").format(sql.Identifier(*mv)))
            dst.commit()
            done.append(qualname(mv))
        except Exception as exc:
            dst.rollback()
            log.warn(f"materialized view {qualname(mv)} not refreshed: {error_line(exc)}")
    return done
