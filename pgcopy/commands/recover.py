"""`pgcopy recover`: put back the foreign keys an interrupted copy left dropped."""

from __future__ import annotations

from pgcopy import fkeys as fkmod
from pgcopy.catalog import database_identity
from pgcopy.connections import connect, describe
from pgcopy.errors import EXIT_OK, EXIT_PARTIAL, PgcopyError
from pgcopy.journal import Journal
from pgcopy.log import Logger
from pgcopy.options import default_state_dir


def _from_source(source: str, wanted) -> dict:
    """Definitions as the source has them (the schemas are identical), keyed like the journal."""
    from pgcopy.catalog import read_foreign_keys

    conn = connect(source, "source", readonly=True)
    try:
        cur = conn.cursor()
        cur.execute("SET search_path = pg_catalog")
        return {(fk.table, fk.name): fk for fk in read_foreign_keys(cur) if (fk.table, fk.name) in wanted}
    finally:
        conn.close()


def recover(dest: str, source: str | None, state_dir: str | None, lock_timeout: str, log: Logger) -> int:
    conn = connect(dest, "destination")
    try:
        cur = conn.cursor()
        identity = database_identity(cur)
    finally:
        conn.close()
    journal = Journal(state_dir or default_state_dir(), identity)
    if not journal.exists():
        log.done(f"nothing to recover for {describe(dest)} (no journal at {journal.path})")
        return EXIT_OK
    fks = journal.read()
    if source:
        # prefer the journal; the source fills in only definitions the journal cannot give
        src_defs = _from_source(source, {(fk.table, fk.name) for fk in fks if not fk.definition})
        fks = [src_defs.get((fk.table, fk.name), fk) for fk in fks]
    log.info(f"restoring {len(fks)} foreign keys recorded in {journal.path}")
    outcome = fkmod.restore_all(dest, fks, 2, lock_timeout)
    for fk in outcome.restored:
        log.done(f"foreign key {fkmod.describe(fk)} is in place")
    for fk, err in outcome.not_valid:
        log.error(f"foreign key {fkmod.describe(fk)} is left NOT VALID: {err}")
    for fk, err in outcome.missing:
        log.error(f"foreign key {fkmod.describe(fk)} could not be re-created: {err}")
    if not outcome.complete:
        raise PgcopyError(
            f"{len(outcome.missing)} foreign keys could not be restored; the journal {journal.path} is kept"
        )
    journal.remove()
    return EXIT_PARTIAL if outcome.not_valid else EXIT_OK
