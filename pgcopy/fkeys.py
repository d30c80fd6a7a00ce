"""Dropping foreign keys before the load and putting them back after it.

Re-creation is ``ADD CONSTRAINT … NOT VALID`` (quick, one short lock) in batched
transactions, then ``VALIDATE CONSTRAINT`` on a few reused connections in parallel; the
FKs of one table are validated one after another (two VALIDATEs on one table wait on each
other's lock).  Before PostgreSQL 18 an FK on a partitioned table cannot be NOT VALID, so
those are added validated in one step.

An FK is restored only when it exists with exactly the journal's definition, validity and
comment; one that is present but NOT VALID while the journal says it was valid is
validated, so a crash can never downgrade an FK for good.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import psycopg2
from psycopg2 import sql

from pgcopy import catalog, failpoints
from pgcopy.catalog import ForeignKey, qualname
from pgcopy.connections import Session, connect, error_line

# Each FK dropped or added takes about six lock-table entries in its transaction; the
# server's lock table holds max_locks_per_transaction (64 by default) per connection slot.
# A batch uses at most half of one slot's share, so pgcopy never crowds out other sessions.
LOCKS_PER_FK = 6

Settled = Callable[[ForeignKey, float], None]  # an FK and the seconds its validation took


@dataclass(frozen=True)
class RestoreTarget:
    """Where and how FKs are put back: the destination, the run's session, how many
    validations at once, and what the progress display hears."""

    dsn: str
    lock_timeout: str
    session: Session
    parallel: int = 2
    quick: frozenset = frozenset()  # (table, name) of FKs between small tables (see _add_missing)
    on_settled: Settled | None = None  # (fk, seconds) once nothing more will be done to it


def batch_size(conn) -> int:
    """FKs per transaction for this server's lock budget."""
    return max(1, catalog.locks_per_transaction(conn) // 2 // LOCKS_PER_FK)


@dataclass
class RestoreOutcome:
    restored: list[ForeignKey] = field(default_factory=list)  # exactly as journaled
    not_valid: list[tuple[ForeignKey, str]] = field(default_factory=list)  # validation failed
    missing: list[tuple[ForeignKey, str]] = field(default_factory=list)  # could not be re-created

    @property
    def present(self) -> bool:
        """Every FK exists again (some perhaps NOT VALID)."""
        return not self.missing

    @property
    def complete(self) -> bool:
        """Every FK exists exactly as journaled: only then may the journal go."""
        return not self.missing and not self.not_valid


def _alter(fk: ForeignKey, action: str) -> sql.Composed:
    return sql.SQL("ALTER TABLE {} " + action).format(sql.Identifier(*fk.table), sql.Identifier(fk.name))


def session_setup(cur, lock_timeout: str) -> None:
    # pg_catalog only: pg_get_constraintdef then qualifies every user object, so the
    # definitions we store and compare do not depend on anyone's search_path.
    cur.execute("SET search_path = pg_catalog")
    cur.execute("SET lock_timeout = %s", (lock_timeout,))


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def drop_all(conn, fkeys: list[ForeignKey], lock_timeout: str) -> None:
    """Drop in batched transactions (the journal, written first, holds all of them)."""
    size = batch_size(conn)
    cur = conn.cursor()
    for batch in _batches(fkeys, size):
        cur.execute("SET LOCAL lock_timeout = %s", (lock_timeout,))
        for fk in batch:
            cur.execute(_alter(fk, "DROP CONSTRAINT IF EXISTS {}"))
        conn.commit()


def _present(conn, fkeys: list[ForeignKey]) -> dict[tuple, ForeignKey]:
    """The FKs now on the referencing tables of ``fkeys`` (not the whole catalog)."""
    cur = conn.cursor()
    tables = {fk.table for fk in fkeys}
    out = {(fk.table, fk.name): fk for fk in catalog.read_foreign_keys(cur, tables)}
    conn.commit()
    return out


def _partitioned(conn, fkeys: list[ForeignKey]) -> set[tuple]:
    """FKs touching a partitioned table on either side.

    Before PostgreSQL 18 such an FK cannot be NOT VALID on the referencing side, and on
    the referenced side VALIDATE leaves the per-partition clones marked NOT VALID (seen on
    15), so these are added validated in one step."""
    cur = conn.cursor()
    cur.execute(
        """SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind = 'p'"""
    )
    parts = {tuple(r) for r in cur.fetchall()}
    conn.rollback()
    return {(fk.table, fk.name) for fk in fkeys if fk.table in parts or fk.ref_table in parts}


def _add(cur, fk: ForeignKey, validated_now: bool) -> None:
    add = _alter(fk, "ADD CONSTRAINT {} ") + fk.ddl()
    cur.execute(add if validated_now else add + sql.SQL(" NOT VALID"))
    if fk.comment is not None:
        cur.execute(
            sql.SQL("COMMENT ON CONSTRAINT {} ON {} IS %s").format(
                sql.Identifier(fk.name), sql.Identifier(*fk.table)
            ),
            (fk.comment,),
        )


def _add_missing(
    conn,
    fkeys: list[ForeignKey],
    out: RestoreOutcome,
    quick: frozenset = frozenset(),
    timings: dict | None = None,
) -> list[ForeignKey]:
    """Re-create absent FKs; return those to validate (absent or present NOT VALID).

    An FK in ``quick`` (both its tables small) is added validated in one statement: on
    tiny tables a separate VALIDATE and its commit cost more than the check itself, and
    holding both tables' locks for that check is brief.  If its rows do not hold, it is
    added NOT VALID instead, and VALIDATE reports why.  ``timings`` gets the seconds of
    each FK added validated, for the ETA."""
    present = _present(conn, fkeys)
    partitioned = _partitioned(conn, fkeys)
    to_add, to_validate = [], []
    for fk in fkeys:
        now = present.get((fk.table, fk.name))
        if now is None:
            to_add.append(fk)
        elif now.definition != fk.definition:
            out.missing.append((fk, f"another constraint of that name exists: {now.definition}"))
        elif fk.validated and not now.validated:
            to_validate.append(fk)
    cur = conn.cursor()
    for batch in _batches(to_add, batch_size(conn)):
        for fk in batch:
            key = (fk.table, fk.name)
            one_step = fk.validated and (key in partitioned or key in quick)
            t0 = time.monotonic()
            cur.execute("SAVEPOINT pgcopy_fk")
            try:
                try:
                    _add(cur, fk, validated_now=one_step)
                except psycopg2.errors.ForeignKeyViolation:
                    if key in partitioned:
                        raise
                    cur.execute("ROLLBACK TO SAVEPOINT pgcopy_fk")
                    one_step = False
                    _add(cur, fk, validated_now=False)
                if one_step:
                    failpoints.hit("during-validate")  # a validating ADD executed, not committed
                cur.execute("RELEASE SAVEPOINT pgcopy_fk")
            except Exception as exc:
                cur.execute("ROLLBACK TO SAVEPOINT pgcopy_fk")
                out.missing.append((fk, error_line(exc)))
                continue
            if fk.validated and not one_step:
                to_validate.append(fk)
            elif one_step and timings is not None:
                timings[key] = time.monotonic() - t0
        conn.commit()
    return to_validate


class _Validator:
    """VALIDATE on reused connections, one per thread; FKs of one table in order."""

    def __init__(self, target: RestoreTarget):
        self.dsn, self.session, self.lock_timeout = target.dsn, target.session, target.lock_timeout
        self.on_settled = target.on_settled
        self._local = threading.local()
        self._conns: list = []
        self._lock = threading.Lock()

    def _conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.dsn, "destination", self.session)
            session_setup(conn.cursor(), self.lock_timeout)
            conn.commit()
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def group(self, fks: list[ForeignKey]) -> list[tuple[ForeignKey, str | None]]:
        out = []
        for fk in fks:
            try:
                conn = self._conn()
            except Exception as exc:
                out.append((fk, str(exc)))
                continue
            t0 = time.monotonic()
            try:
                conn.cursor().execute(_alter(fk, "VALIDATE CONSTRAINT {}"))
                failpoints.hit("during-validate")
                conn.commit()
                out.append((fk, None))
            except Exception as exc:
                conn.rollback()
                out.append((fk, error_line(exc)))
            if self.on_settled is not None:
                self.on_settled(fk, time.monotonic() - t0)
        return out

    def cancel(self) -> None:
        with self._lock:
            for conn in self._conns:
                try:
                    conn.cancel()
                except Exception:
                    pass

    def close(self) -> None:
        for conn in self._conns:
            try:
                conn.close()
            except Exception:
                pass


def _validate(target: RestoreTarget, fkeys: list[ForeignKey]) -> dict[tuple, str]:
    groups: dict[tuple, list[ForeignKey]] = {}
    for fk in fkeys:
        groups.setdefault(fk.table, []).append(fk)
    failed: dict[tuple, str] = {}
    if not groups:
        return failed
    v = _Validator(target)
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(target.parallel, len(groups)))) as pool:
            try:
                for results in pool.map(v.group, groups.values()):
                    for fk, err in results:
                        if err:
                            failed[(fk.table, fk.name)] = err
            except KeyboardInterrupt:  # abandon: stop the server work before leaving
                v.cancel()
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    finally:
        v.close()
    return failed


def restore_all(target: RestoreTarget, fkeys: list[ForeignKey]) -> RestoreOutcome:
    """Put every FK of ``fkeys`` back exactly as recorded, then check what is there."""
    dsn, lock_timeout, session, on_settled = (
        target.dsn,
        target.lock_timeout,
        target.session,
        target.on_settled,
    )
    out = RestoreOutcome()
    timings: dict = {}
    conn = connect(dsn, "destination", session)
    try:
        session_setup(conn.cursor(), lock_timeout)
        conn.commit()
        to_validate = _add_missing(conn, fkeys, out, target.quick, timings)
    finally:
        conn.close()
    failpoints.hit("after-add")
    if on_settled is not None:
        pending = {(fk.table, fk.name) for fk in to_validate}
        for fk in fkeys:
            if (fk.table, fk.name) not in pending:
                on_settled(fk, timings.get((fk.table, fk.name), 0.0))
    failed = _validate(target, to_validate)

    conn = connect(dsn, "destination", session)
    try:
        session_setup(conn.cursor(), lock_timeout)
        present = _present(conn, fkeys)
    finally:
        conn.close()
    missing_keys = {(fk.table, fk.name) for fk, _ in out.missing}
    for fk in fkeys:
        key = (fk.table, fk.name)
        now = present.get(key)
        if key in missing_keys:
            continue
        if now is None or now.definition != fk.definition:
            why = "not found after re-creation" if now is None else f"definition differs: {now.definition}"
            out.missing.append((fk, why))
        elif fk.validated and not now.validated:
            out.not_valid.append((fk, failed.get(key, "left NOT VALID")))
        elif now.comment != fk.comment:
            out.missing.append((fk, "its comment differs from the journal's"))
        else:
            out.restored.append(fk)
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
