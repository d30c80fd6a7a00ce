"""Dropping foreign keys before the load and putting them back after it.

Re-creation is ``ADD CONSTRAINT … NOT VALID`` (quick, one short lock) followed by
``VALIDATE CONSTRAINT`` on N connections in parallel.  Before PostgreSQL 18 an FK on a
partitioned table cannot be NOT VALID, so those are added validated in one step.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from psycopg2 import sql

from pgcopy import catalog
from pgcopy.catalog import ForeignKey, qualname
from pgcopy.connections import connect, error_line


@dataclass
class RestoreOutcome:
    restored: list[ForeignKey] = field(default_factory=list)  # present with the journal's validity
    not_valid: list[tuple[ForeignKey, str]] = field(default_factory=list)  # validation failed
    missing: list[tuple[ForeignKey, str]] = field(default_factory=list)  # could not be re-created

    @property
    def complete(self) -> bool:
        """Every FK exists again (some perhaps NOT VALID, which is reported)."""
        return not self.missing


def _alter(fk: ForeignKey, action: str) -> sql.Composed:
    return sql.SQL("ALTER TABLE {} " + action).format(sql.Identifier(*fk.table), sql.Identifier(fk.name))


def session_setup(cur, lock_timeout: str) -> None:
    # pg_catalog only: pg_get_constraintdef then qualifies every user object, so the
    # definitions we store and replay do not depend on anyone's search_path.
    cur.execute("SET search_path = pg_catalog")
    cur.execute("SET lock_timeout = %s", (lock_timeout,))


def drop_all(conn, fkeys: list[ForeignKey], lock_timeout: str) -> None:
    """Drop in one transaction: all of them or none."""
    cur = conn.cursor()
    cur.execute("SET LOCAL lock_timeout = %s", (lock_timeout,))
    for fk in fkeys:
        cur.execute(_alter(fk, "DROP CONSTRAINT IF EXISTS {}"))
    conn.commit()


def _present(conn) -> dict[tuple, ForeignKey]:
    cur = conn.cursor()
    out = {(fk.table, fk.name): fk for fk in catalog.read_foreign_keys(cur)}
    conn.commit()
    return out


def _partitioned(conn, fk: ForeignKey) -> bool:
    """Does the FK touch a partitioned table on either side?

    Before PostgreSQL 18 such an FK cannot be NOT VALID on the referencing side, and on
    the referenced side VALIDATE leaves the per-partition clones marked NOT VALID
    (seen on 15), so these are added validated in one step."""
    cur = conn.cursor()
    cur.execute(
        "SELECT bool_or(relkind = 'p') FROM pg_class WHERE oid IN (%s::regclass, %s::regclass)",
        (qualname(fk.table), qualname(fk.ref_table)),
    )
    row = cur.fetchone()
    conn.rollback()
    return bool(row and row[0])


def restore_all(dsn: str, fkeys: list[ForeignKey], parallel: int, lock_timeout: str) -> RestoreOutcome:
    """Re-create every FK in ``fkeys`` that is not there, then validate in parallel."""
    out = RestoreOutcome()
    conn = connect(dsn, "destination")
    try:
        session_setup(conn.cursor(), lock_timeout)
        conn.commit()
        present = _present(conn)
        to_validate: list[ForeignKey] = []
        for fk in fkeys:
            if (fk.table, fk.name) in present:
                continue
            cur = conn.cursor()
            try:
                add = _alter(fk, "ADD CONSTRAINT {} ") + sql.SQL(fk.definition)
                if fk.validated and _partitioned(conn, fk):
                    cur.execute(add)
                else:
                    cur.execute(add + sql.SQL(" NOT VALID"))
                    if fk.validated:
                        to_validate.append(fk)
                conn.commit()
            except Exception as exc:
                conn.rollback()
                out.missing.append((fk, error_line(exc)))
    finally:
        conn.close()

    def validate(fk: ForeignKey) -> tuple[ForeignKey, str | None]:
        c = connect(dsn, "destination")
        try:
            session_setup(c.cursor(), lock_timeout)
            c.cursor().execute(_alter(fk, "VALIDATE CONSTRAINT {}"))
            c.commit()
            return fk, None
        except Exception as exc:
            return fk, error_line(exc)
        finally:
            c.close()

    failed: dict[tuple, str] = {}
    if to_validate:
        with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
            for fk, err in pool.map(validate, to_validate):
                if err:
                    failed[(fk.table, fk.name)] = err

    # check what is there now against what was asked for
    conn = connect(dsn, "destination")
    try:
        session_setup(conn.cursor(), lock_timeout)
        present = _present(conn)
    finally:
        conn.close()
    missing_keys = {(fk.table, fk.name) for fk, _ in out.missing}
    for fk in fkeys:
        key = (fk.table, fk.name)
        now = present.get(key)
        if key in missing_keys:
            continue
        if now is None or now.definition != fk.definition:
            out.missing.append(
                (
                    fk,
                    "not found after re-creation" if now is None else f"definition differs: {now.definition}",
                )
            )
        elif now.validated == fk.validated:
            out.restored.append(fk)
        else:
            out.not_valid.append((fk, failed.get(key, "left NOT VALID")))
    return out


def describe(fk: ForeignKey) -> str:
    return f"{fk.name} on {qualname(fk.table)} -> {qualname(fk.ref_table)}"


def log_outcome(outcome: RestoreOutcome, log) -> None:
    """The log lines for a restore, shared by copy and recover."""
    if outcome.restored:
        log.done(f"{len(outcome.restored)} foreign keys present with their original definition and validity")
    for fk, err in outcome.not_valid:
        log.error(f"foreign key {describe(fk)} could not be validated and is left NOT VALID: {err}")
    for fk, err in outcome.missing:
        log.error(f"foreign key {describe(fk)} could not be re-created: {err}")
