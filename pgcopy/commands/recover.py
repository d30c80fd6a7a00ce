"""`pgcopy recover`: put back the foreign keys an interrupted copy left dropped."""

from __future__ import annotations

from pgcopy import fkeys as fkmod
from pgcopy.catalog import ForeignKey, database_identity, read_foreign_keys
from pgcopy.connections import connect, describe
from pgcopy.errors import EXIT_OK, EXIT_PARTIAL, PgcopyError
from pgcopy.journal import Journal
from pgcopy.log import Logger
from pgcopy.options import default_state_dir


def _fkeys(dsn: str, role: str) -> list[ForeignKey]:
    conn = connect(dsn, role, readonly=True)
    try:
        cur = conn.cursor()
        cur.execute("SET search_path = pg_catalog")  # the same spelling the journal uses
        return read_foreign_keys(cur)
    finally:
        conn.close()


def recover(dest: str, source: str | None, state_dir: str | None, lock_timeout: str, log: Logger) -> int:
    conn = connect(dest, "destination")
    try:
        identity = database_identity(conn.cursor())
    finally:
        conn.close()
    journal = Journal(state_dir or default_state_dir(), identity)
    fks = journal.read() if journal.exists() else []
    if source:
        # the schemas are identical: any FK the source has and the destination lacks was
        # dropped by an interrupted run, even one whose journal is lost
        present = {(fk.table, fk.name) for fk in _fkeys(dest, "destination")}
        known = {(fk.table, fk.name) for fk in fks}
        extra = [fk for fk in _fkeys(source, "source") if (fk.table, fk.name) not in present | known]
        if extra:
            log.warn(
                f"{len(extra)} foreign keys exist on the source but not on the destination; re-creating them"
            )
        fks += extra
    if not fks:
        log.done(f"nothing to recover for {describe(dest)} (no journal at {journal.path})")
        return EXIT_OK
    log.info(
        f"restoring {len(fks)} foreign keys" + (f" recorded in {journal.path}" if journal.exists() else "")
    )
    outcome = fkmod.restore_all(dest, fks, 2, lock_timeout)
    fkmod.log_outcome(outcome, log)
    if not outcome.complete:
        raise PgcopyError(
            f"{len(outcome.missing)} foreign keys could not be restored; the journal {journal.path} is kept"
        )
    journal.remove()
    return EXIT_PARTIAL if outcome.not_valid else EXIT_OK
