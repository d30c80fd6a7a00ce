"""`pgcopy recover`: put back the foreign keys an interrupted copy left dropped.

Holds the destination's run lock like `copy`, so it never races a live run.  The journal
is removed only when every FK it records exists exactly as recorded (definition,
validity, comment); otherwise recover exits non-zero and keeps it.
"""

from __future__ import annotations

from pgcopy import fkeys as fkmod
from pgcopy import runlock
from pgcopy.catalog import ForeignKey, database_identity, read_foreign_keys, read_sizes, read_tables
from pgcopy.connections import Session, connect, connect_asking, describe_conn
from pgcopy.errors import EXIT_OK, EXIT_PARTIAL, PgcopyError
from pgcopy.journal import Journal
from pgcopy.log import Logger
from pgcopy.options import default_state_dir
from pgcopy.task import SMALL_BYTES


def _fkeys(dsn: str, role: str, session: Session) -> list[ForeignKey]:
    conn = connect(dsn, role, session, readonly=True)
    try:
        cur = conn.cursor()
        cur.execute("SET search_path = pg_catalog")  # the same spelling the journal uses
        return read_foreign_keys(cur)
    finally:
        conn.close()


def _small_tables(conn) -> frozenset:
    """The destination's tables small enough that an FK between two of them is added
    validated in one statement, as copy does (fkeys.RestoreTarget.small): otherwise every
    FK is added NOT VALID and validated on its own, 4x the time at 10,000 tiny tables.
    Sizes a few tables per transaction (catalog.read_sizes: a locked table is estimated,
    not waited for; commits ``conn``)."""
    tables = read_tables(conn.cursor(), read_sizes(conn))
    conn.commit()
    return frozenset(t.key for t in tables if t.kind != "partitioned parent" and t.data_bytes <= SMALL_BYTES)


def recover(dest: str, source: str | None, state_dir: str | None, lock_timeout: str, log: Logger) -> int:
    session = Session.new()
    conn, dest = connect_asking(dest, "destination", session)  # holds the run lock until we return
    try:
        where = describe_conn(conn)
        runlock.acquire(conn, where)
        identity = database_identity(conn.cursor())
        conn.commit()
        journal = Journal(state_dir or default_state_dir(), identity, where)
        target = fkmod.RestoreTarget(dest, lock_timeout, session, small=_small_tables(conn))
        return _recover(target, source, journal, where, log)
    finally:
        conn.close()


def _recover(target: fkmod.RestoreTarget, source, journal: Journal, where: str, log: Logger) -> int:
    dest, session = target.dsn, target.session
    fks = journal.read() if journal.exists() else []
    if source:
        # the schemas are identical: any FK the source has and the destination lacks was
        # dropped by an interrupted run, even one whose journal is lost
        present = {(fk.table, fk.name) for fk in _fkeys(dest, "destination", session)}
        known = {(fk.table, fk.name) for fk in fks}
        extra = [fk for fk in _fkeys(source, "source", session) if (fk.table, fk.name) not in present | known]
        if extra:
            log.warn(
                f"{len(extra)} foreign keys exist on the source but not on the destination; re-creating them"
            )
        fks += extra
    if not fks:
        for other in journal.siblings():
            log.warn(
                f"{other} belongs to a database with this identity reached under another name (or a clone)"
            )
        log.done(f"nothing to recover for {where} (no journal at {journal.path})")
        return EXIT_OK
    log.info(
        f"restoring {len(fks)} foreign keys" + (f" recorded in {journal.path}" if journal.exists() else "")
    )
    outcome = fkmod.restore_all(target, fks)
    fkmod.log_outcome(outcome, log)
    if not outcome.present:
        raise PgcopyError(
            f"{len(outcome.missing)} foreign keys could not be restored; the journal {journal.path} is kept"
        )
    if not outcome.complete:
        log.error(
            f"{len(outcome.not_valid)} foreign keys are NOT VALID but were valid: the journal {journal.path} "
            "is kept; fix the rows that violate them (or copy again), then run pgcopy recover"
        )
        return EXIT_PARTIAL
    journal.remove()
    return EXIT_OK
