"""Dropping foreign keys before the load and putting them back after it.

Drops and re-creations (``ADD CONSTRAINT … NOT VALID``, or validated at once between small
tables) run in transactions of a few FKs, within the server's lock budget, on a few reused
sessions in parallel; each such transaction first locks its tables in one global order, so
the sessions cannot deadlock on each other.  Then ``VALIDATE CONSTRAINT`` runs on the same
sessions in parallel; the FKs of one table are validated one after another (two VALIDATEs
on one table wait on each other's lock).  Before PostgreSQL 18 an FK on a partitioned
table cannot be NOT VALID, so those are added validated in one step.

An FK is restored only when it exists with exactly the journal's definition, validity and
comment; one that is present but NOT VALID while the journal says it was valid is
validated, so a crash can never downgrade an FK for good.
"""

from __future__ import annotations

import threading
import time
from array import array
from collections.abc import Callable, Container, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from pgcopy import catalog, failpoints
from pgcopy.catalog import ForeignKey, qualname
from pgcopy.connections import Session, connect, error_line, make_durable, reconnect, session_relations
from pgcopy.errors import PgcopyError
from pgcopy.packed import Appended

# Each FK dropped or added takes about six lock-table entries in its transaction; the
# server's lock table holds max_locks_per_transaction (64 by default) per connection slot.
# A batch uses at most half of one slot's share, so pgcopy never crowds out other sessions.
LOCKS_PER_FK = 6

# an FK's position in the list given to restore_all, and the seconds its validation took
# (a position, so the display keeps no FK objects: the plan holds them packed)
Settled = Callable[[int, float], None]
_Heard = Callable[[ForeignKey, float], None]  # the same, inside: the FK object


@dataclass(frozen=True)
class RestoreTarget:
    """Where and how FKs are put back: the destination, the run's session, how many
    validations at once, and what the progress display hears."""

    dsn: str
    lock_timeout: str
    session: Session
    parallel: int = 2
    small: Container = frozenset()  # loaded tables small enough for "quick" FKs (see _add_missing)
    on_settled: Settled | None = None  # (position, seconds) once nothing more will be done to it


def between(fk: ForeignKey, tables: Container) -> bool:
    """Are both of the FK's tables in ``tables``?"""
    return fk.table in tables and fk.ref_table in tables


def batch_size(conn) -> int:
    """FKs per transaction for this server's lock budget."""
    return max(1, catalog.locks_per_transaction(conn) // 2 // LOCKS_PER_FK)


@dataclass
class RestoreOutcome:
    """Each FK after a restore: exactly as journaled, left NOT VALID, or missing."""

    # exactly as journaled; packed as it grows (40,000 FKs as objects held 22 MB)
    restored: Appended[ForeignKey] = field(default_factory=Appended)
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
    """``ALTER TABLE <its table> <action> <its name>``: composed with ``+``, as every
    statement made per FK (SQL.format parses its template at each call)."""
    return (
        sql.SQL("ALTER TABLE ") + sql.Identifier(*fk.table) + sql.SQL(f" {action} ") + sql.Identifier(fk.name)
    )


def session_setup(cur, lock_timeout: str) -> None:
    # pg_catalog only: pg_get_constraintdef then qualifies every user object, so the
    # definitions we store and compare do not depend on anyone's search_path.
    cur.execute("SET search_path = pg_catalog")
    cur.execute("SET lock_timeout = %s", (lock_timeout,))


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


class NoSession(Exception):
    """A further session could not be opened while others are: the work goes on on those."""


class Sessions:
    """Destination sessions shared by a restore's threads: one is made only when none is
    idle, so there are never more than run at once, and they are reused across phases (and,
    for the early restorer, across restores).  Once ``stopping()`` is true, no new batch or
    VALIDATE starts: the restore returns with what it finished.  With ``interrupt``, the
    statements then running are cancelled too (a drop waiting for a lock ends at the stop,
    not at its lock timeout)."""

    def __init__(
        self, target: RestoreTarget, stopping: Callable[[], bool] = lambda: False, interrupt: bool = False
    ):
        self.target, self.stopping, self.interrupt = target, stopping, interrupt
        self._idle: list = []
        self._all: list = []
        self._opened: dict[int, int] = {}  # per session (its id): relations opened on it
        self._limit = session_relations()
        self._retired = 0  # sessions closed to be renewed
        self._lock = threading.Lock()

    @contextmanager
    def session(self, fkeys: int = 0) -> Iterator:
        """An idle session, or a new one; ``fkeys``: how many FKs the caller will handle
        on it.  A session that has handled enough is closed when given back, so that the
        server's caches do not grow with the FK count (see SESSION_RELATIONS)."""
        with self._lock:
            conn = self._idle.pop() if self._idle else None
            others = bool(self._all)
        if conn is None:
            try:
                conn = connect(self.target.dsn, "destination", self.target.session)
            except (PgcopyError, psycopg2.OperationalError):
                if others:  # a server short of connection slots: the sessions open will do
                    raise NoSession() from None
                if not self._retired:
                    raise
                # none open, and one was renewed (closed first): another client may hold
                # the slot it gave back for a moment
                conn = reconnect(
                    lambda: connect(self.target.dsn, "destination", self.target.session), self.stopping
                )
            with self._lock:
                self._all.append(conn)
            session_setup(conn.cursor(), self.target.lock_timeout)
            conn.commit()
        try:
            yield conn
        finally:
            try:
                if not conn.closed and conn.status != psycopg2.extensions.STATUS_READY:
                    conn.rollback()
            except psycopg2.Error:
                pass
            # each FK opens its two tables (and the catalog rows that name them)
            self._opened[id(conn)] = self._opened.get(id(conn), 0) + 2 * fkeys
            if self._opened[id(conn)] >= self._limit:
                self._retire(conn)
            elif not conn.closed:  # a broken session is never handed out again
                with self._lock:
                    self._idle.append(conn)

    def _retire(self, conn) -> None:
        with self._lock:
            self._all.remove(conn)
            del self._opened[id(conn)]
            self._retired += 1
        try:
            conn.close()
        except Exception:
            pass

    def cancel(self) -> None:
        """Stop the statements in progress (Ctrl-C while waiting on the threads)."""
        with self._lock:
            for conn in self._all:
                try:
                    conn.cancel()
                except Exception:
                    pass

    def close(self) -> None:
        for conn in self._all:
            try:
                conn.close()
            except Exception:
                pass


def _each(sessions: Sessions, items: list, fn: Callable) -> list:
    """``fn(conn, item)`` for every item (a list of FKs, or of their positions) on up to
    ``parallel`` sessions at once; the results in order.  After an error no item starts;
    the first is raised once the items in progress have ended.

    Threads take the items one at a time: a pool's future per item (20,000 FKs dropped
    in 8,000 batches made 8,000 futures, 6 MB) would cost memory by the item count."""
    n = max(1, min(sessions.target.parallel, len(items)))

    def call(item):
        with sessions.session(len(item)) as conn:
            return fn(conn, item)

    if n == 1 and not sessions.interrupt:
        return [call(item) for item in items]
    results: list = [None] * len(items)
    errors: list[BaseException] = []
    taken = iter(range(len(items)))
    given_back: list[int] = []  # taken by a thread that could not open a session
    lock = threading.Lock()

    def run() -> None:
        while not errors:
            with lock:
                i = given_back.pop() if given_back else next(taken, None)
            if i is None:
                return
            try:
                results[i] = call(items[i])
            except NoSession:
                with lock:
                    given_back.append(i)
                return  # one thread fewer
            except BaseException as exc:  # noqa: BLE001 - raised by the caller's thread
                errors.append(exc)

    threads = [threading.Thread(target=run, name=f"pgcopy-fk-{k}", daemon=True) for k in range(n)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(timeout=0.1)
                # again each time: a batch may begin after a cancel
                if sessions.interrupt and sessions.stopping():
                    sessions.cancel()
    except KeyboardInterrupt as exc:  # abandon: stop the server work first, start nothing more
        errors.insert(0, exc)
        sessions.cancel()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    for i in given_back:  # left when the threads with a session had ended
        if not (sessions.interrupt and sessions.stopping()):
            results[i] = call(items[i])
    return results


class _Redo(Exception):
    """A batch to run again alone, without the upfront LOCK (see ``_lock_statement``)."""


def _lock_statement(batch: list[ForeignKey], mode: str) -> sql.Composed:
    """Lock every table of the batch up front, in one global (sorted) order: batches on
    several sessions then never deadlock on each other, where each ALTER taking its two
    tables' locks in its own order could.  What the LOCK cannot do (no privilege on a
    referenced table, a deadlock with someone else...) sends the batch to the serial pass
    instead, which runs without it, as before.  It goes to the server in one string with
    the batch's first statements: a round trip less per batch."""
    tables = sorted({fk.table for fk in batch} | {fk.ref_table for fk in batch})
    names = sql.SQL(", ").join([sql.Identifier(*t) for t in tables])
    return sql.SQL("LOCK TABLE ONLY ") + names + sql.SQL(f" IN {mode} MODE")


def _touching(conn, fkeys: Sequence[ForeignKey], where: str) -> set[tuple]:
    """The FKs whose table or referenced table is one of the relations ``where`` selects."""
    cur = conn.cursor()
    cur.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE "
        + where
    )
    rel = {tuple(r) for r in cur.fetchall()}
    conn.commit()
    return {(fk.table, fk.name) for fk in fkeys if fk.table in rel or fk.ref_table in rel}


def _with_relatives(conn, fkeys: Sequence[ForeignKey]) -> set[tuple]:
    """FKs touching a partitioned table, a partition or an inheritance parent: an ALTER on
    those also locks tables not named in the batch, in an order no sort can control, so
    they run on one session, after the parallel batches."""
    return _touching(conn, fkeys, "c.relkind = 'p' OR c.relispartition OR c.relhassubclass")


def _in_parallel(sessions: Sessions, fkeys: Sequence[ForeignKey], run: Callable) -> list:
    """``run(cur, batch, lock)`` over lock-budget batches: on several sessions with the
    batch's tables locked up front, then on one session without that LOCK for the FKs with
    relatives and the batches that could not take it.  Returns every batch's result.

    Batches are positions in ``fkeys``, made FKs when they run: the plan's 20,000 FKs
    (a packed.Chunked) are never all objects at once (they left 12 MB of the coordinator's
    memory in use through the load)."""
    with sessions.session() as conn:
        size = batch_size(conn)
        alone = _with_relatives(conn, fkeys)

    def locked(conn, batch):
        if sessions.stopping():
            return None
        try:
            out = run(conn.cursor(), [fkeys[i] for i in batch], True)
        except _Redo:
            conn.rollback()
            return _Redo
        conn.commit()
        return out

    # positions in arrays, a batch a slice of them: lists of 40,000 ints were 2.7 MB the
    # coordinator kept through the load
    batches = list(
        _batches(array("I", (i for i, fk in enumerate(fkeys) if (fk.table, fk.name) not in alone)), size)
    )
    # FKs come sorted by table, so neighbouring batches often share a table (a chain's
    # link): a stride keeps the batches that run at the same time apart, instead of one
    # session waiting for the other's locks
    stride = max(2, sessions.target.parallel)
    batches = [b for r in range(stride) for b in batches[r::stride]]
    redo = array("I", (i for i, fk in enumerate(fkeys) if (fk.table, fk.name) in alone) if alone else ())
    results = []
    for batch, out in zip(batches, _each(sessions, batches, locked), strict=True):
        if out is _Redo:
            redo += batch
        elif out is not None:
            results.append(out)
    with sessions.session(len(redo)) as conn:
        cur = conn.cursor()
        for batch in _batches(redo, size):
            if sessions.stopping():
                break
            results.append(run(cur, [fkeys[i] for i in batch], False))
            conn.commit()
    return results


def _drop_batch(cur, batch: list[ForeignKey], lock: bool) -> None:
    drops = [_alter(fk, "DROP CONSTRAINT IF EXISTS") for fk in batch]
    try:  # one round trip for the whole batch, its LOCK included
        cur.execute(
            sql.SQL("; ").join(([_lock_statement(batch, "ACCESS EXCLUSIVE")] if lock else []) + drops)
        )
    except (psycopg2.errors.InsufficientPrivilege, psycopg2.errors.DeadlockDetected) as exc:
        # redone alone (where a DROP's own privilege error comes back); a lock timeout
        # fails the drop here, as it would alone: redoing it would wait again
        if lock:
            raise _Redo() from exc
        raise


def drop_all(
    target: RestoreTarget, fkeys: Sequence[ForeignKey], stopping: Callable[[], bool] = lambda: False
) -> None:
    """Drop in batched transactions on ``target.parallel`` sessions (the journal, written
    first, holds all of them).  A stop cancels the batches in progress and starts no more;
    what was dropped is put back from the journal like after any failure."""
    if not fkeys:
        return
    sessions = Sessions(target, stopping, interrupt=True)
    try:
        _in_parallel(sessions, fkeys, _drop_batch)
    finally:
        sessions.close()


def _present(conn, fkeys: list[ForeignKey]) -> dict[tuple, ForeignKey]:
    """The FKs now on the referencing tables of ``fkeys`` (not the whole catalog)."""
    cur = conn.cursor()
    tables = {fk.table for fk in fkeys}
    out = {(fk.table, fk.name): fk for fk in catalog.read_foreign_keys(cur, tables)}
    conn.commit()
    return out


# FKs whose tables' FKs are read from the catalog at once: at 20,000 FKs one read of all
# of them made 20 MB of rows and objects, for a check of one FK at a time
PRESENT_CHUNK = 1000


def _now(conn, fkeys: list[ForeignKey]) -> Iterator[tuple[ForeignKey, ForeignKey | None]]:
    """Each FK of ``fkeys`` and the FK of that name on its table now (None: absent),
    read PRESENT_CHUNK FKs at a time."""
    for part in _batches(fkeys, PRESENT_CHUNK):
        present = _present(conn, part)
        for fk in part:
            yield fk, present.get((fk.table, fk.name))


def _add_statement(fk: ForeignKey, validated_now: bool) -> sql.Composed:
    """ADD CONSTRAINT, and its COMMENT; the comment is a literal so that several of these
    can go to the server as one string."""
    add = _alter(fk, "ADD CONSTRAINT") + sql.SQL(" ") + fk.ddl()
    parts = [add if validated_now else add + sql.SQL(" NOT VALID")]
    if fk.comment is not None:
        parts.append(
            sql.SQL("COMMENT ON CONSTRAINT ")
            + sql.Identifier(fk.name)
            + sql.SQL(" ON ")
            + sql.Identifier(*fk.table)
            + sql.SQL(" IS ")
            + sql.Literal(fk.comment)
        )
    return sql.SQL("; ").join(parts)


def _add(cur, fk: ForeignKey, validated_now: bool) -> None:
    cur.execute(_add_statement(fk, validated_now))


@dataclass
class _Added:
    """What one batch of ADDs left to do: FKs to validate, FKs that failed, and the seconds
    of each FK added validated (for the ETA)."""

    to_validate: list[ForeignKey] = field(default_factory=list)
    missing: list[tuple[ForeignKey, str]] = field(default_factory=list)
    timings: dict[tuple, float] = field(default_factory=dict)
    settled: list[ForeignKey] = field(default_factory=list)  # nothing more to do to them


def _record(out: _Added, fk: ForeignKey, mode: str, seconds: float) -> None:
    """An FK just added as ``mode``: still to validate, or settled (with the seconds its
    validating ADD took, for the ETA)."""
    if mode == "not valid" and fk.validated:
        out.to_validate.append(fk)
    else:
        out.settled.append(fk)
        if mode != "not valid":
            out.timings[(fk.table, fk.name)] = seconds


def _redo_if_deadlock(exc: BaseException, lock: bool) -> None:
    """With the upfront LOCK a deadlock can only involve someone else: the batch is run
    again in the serial pass (see ``_lock_statement``)."""
    if lock and isinstance(exc, psycopg2.errors.DeadlockDetected):
        raise _Redo() from exc


def _add_together(
    cur, batch: list[ForeignKey], lock: bool, how: Callable[[ForeignKey], str]
) -> _Added | None:
    """The usual case in one round trip: the LOCK (with ``lock``) and every ADD of the
    batch as one string.  None when an ADD failed (rolled back to after the LOCK): the
    caller then adds them one by one.  A LOCK that failed leaves no savepoint to go back
    to: the batch is redone in the serial pass."""
    modes = {(fk.table, fk.name): how(fk) for fk in batch}
    t0 = time.monotonic()
    adds = sql.SQL("; ").join(_add_statement(fk, modes[(fk.table, fk.name)] != "not valid") for fk in batch)
    stmt = sql.SQL("SAVEPOINT pgcopy_fks; ") + adds + sql.SQL("; RELEASE SAVEPOINT pgcopy_fks")
    try:
        cur.execute(
            sql.SQL("; ").join([_lock_statement(batch, "SHARE ROW EXCLUSIVE"), stmt]) if lock else stmt
        )
    except psycopg2.Error as exc:
        _redo_if_deadlock(exc, lock)
        try:
            cur.execute("ROLLBACK TO SAVEPOINT pgcopy_fks")
        except psycopg2.Error:
            if lock:  # the LOCK itself failed
                raise _Redo() from exc
            raise
        return None
    checked = sum(mode != "not valid" for mode in modes.values())
    if checked:
        failpoints.hit("during-validate")  # validating ADDs executed, not committed
    out = _Added()
    for fk in batch:
        _record(out, fk, modes[(fk.table, fk.name)], (time.monotonic() - t0) / max(1, checked))
    return out


def _add_batch(cur, batch: list[ForeignKey], lock: bool, how: Callable[[ForeignKey], str]) -> _Added:
    """ADD each FK of the batch as ``how(fk)`` says: "not valid", "validated", or "quick"
    (validated, falling back to NOT VALID if the rows do not hold), each behind a
    savepoint so one failing FK does not undo the others."""
    together = _add_together(cur, batch, lock, how)
    if together is not None:
        return together
    out = _Added()
    for fk in batch:
        mode = how(fk)
        t0 = time.monotonic()
        cur.execute("SAVEPOINT pgcopy_fk")
        try:
            try:
                _add(cur, fk, validated_now=mode != "not valid")
            except psycopg2.errors.ForeignKeyViolation:
                if mode != "quick":
                    raise
                cur.execute("ROLLBACK TO SAVEPOINT pgcopy_fk")
                mode = "not valid"
                _add(cur, fk, validated_now=False)
            if mode != "not valid":
                failpoints.hit("during-validate")  # a validating ADD executed, not committed
            cur.execute("RELEASE SAVEPOINT pgcopy_fk")
        except Exception as exc:
            _redo_if_deadlock(exc, lock)
            cur.execute("ROLLBACK TO SAVEPOINT pgcopy_fk")
            out.missing.append((fk, error_line(exc)))
            continue
        _record(out, fk, mode, time.monotonic() - t0)
    return out


def _add_missing(
    sessions: Sessions, fkeys: list[ForeignKey], out: RestoreOutcome, small: Container = frozenset()
) -> _Added:
    """Re-create absent FKs; returns those to validate (absent or present NOT VALID), those
    settled (present as journaled, or added and needing nothing more) and the seconds of
    each FK added validated.

    An FK between two ``small`` tables is added validated in one statement: on
    tiny tables a separate VALIDATE and its commit cost more than the check itself, and
    holding both tables' locks for that check is brief.  If its rows do not hold, it is
    added NOT VALID instead, and VALIDATE reports why."""
    to_add = []
    result = _Added()
    with sessions.session(len(fkeys)) as conn:
        partitioned = _partitioned(conn, fkeys)
        for fk, now in _now(conn, fkeys):
            if now is None:
                to_add.append(fk)
            elif now.definition != fk.definition:
                out.missing.append((fk, f"another constraint of that name exists: {now.definition}"))
            elif fk.validated and not now.validated:
                result.to_validate.append(fk)
            else:
                result.settled.append(fk)

    def how(fk: ForeignKey) -> str:
        key = (fk.table, fk.name)
        if not fk.validated:
            return "not valid"
        return "validated" if key in partitioned else "quick" if between(fk, small) else "not valid"

    for added in _in_parallel(sessions, to_add, lambda cur, b, lock: _add_batch(cur, b, lock, how)):
        result.to_validate += added.to_validate
        result.settled += added.settled
        out.missing += added.missing
        result.timings.update(added.timings)
    return result


def _partitioned(conn, fkeys: list[ForeignKey]) -> set[tuple]:
    """FKs touching a partitioned table on either side.

    Before PostgreSQL 18 such an FK cannot be NOT VALID on the referencing side, and on
    the referenced side VALIDATE leaves the per-partition clones marked NOT VALID (seen on
    15), so these are added validated in one step."""
    return _touching(conn, fkeys, "c.relkind = 'p'")


def _validate_group(
    sessions: Sessions, conn, fks: list[ForeignKey], on_settled: _Heard | None
) -> list[tuple[ForeignKey, str | None]]:
    """VALIDATE the FKs of one table, one after another (two would wait on each other)."""
    out: list[tuple[ForeignKey, str | None]] = []
    for i, fk in enumerate(fks):
        if sessions.stopping():
            break
        t0 = time.monotonic()
        try:
            conn.cursor().execute(_alter(fk, "VALIDATE CONSTRAINT"))
            failpoints.hit("during-validate")
            conn.commit()
            out.append((fk, None))
        except Exception as exc:
            out.append((fk, error_line(exc)))
            try:
                conn.rollback()
            except psycopg2.Error:  # the session broke: the group's rest fails with it
                out += [(rest, error_line(exc)) for rest in fks[i + 1 :]]
                break
        if on_settled is not None:
            on_settled(fk, time.monotonic() - t0)
    return out


def _validate(sessions: Sessions, fkeys: list[ForeignKey], on_settled: _Heard | None) -> dict[tuple, str]:
    groups: dict[tuple, list[ForeignKey]] = {}
    for fk in fkeys:
        groups.setdefault(fk.table, []).append(fk)
    results = _each(
        sessions, list(groups.values()), lambda conn, g: _validate_group(sessions, conn, g, on_settled)
    )
    return {(fk.table, fk.name): err for group in results for fk, err in group if err}


def _by_position(on_settled: Settled | None, fkeys: list[ForeignKey], start: int) -> _Heard | None:
    """``on_settled`` told each FK's position, ``start`` plus its index in ``fkeys`` (the
    FKs handled are those objects)."""
    if on_settled is None:
        return None
    where = {id(fk): start + i for i, fk in enumerate(fkeys)}
    return lambda fk, seconds: on_settled(where[id(fk)], seconds)


# FKs put back at a time: as objects for the whole restore, 40,000 FKs held 22 MB in the
# coordinator after the load (tracemalloc); a window holds a tenth of that.  Every
# window's FKs are added before they are validated, as a whole restore's are.
WINDOW = 4096


def restore_all(
    target: RestoreTarget, fkeys: Sequence[ForeignKey], sessions: Sessions | None = None
) -> RestoreOutcome:
    """Put every FK of ``fkeys`` back exactly as recorded, then check what is there,
    WINDOW FKs at a time.  With ``sessions`` (kept open by the caller) a stop may leave
    some undone: they are reported missing, and the caller restores them later."""
    out = RestoreOutcome()
    own = sessions is None
    sessions = sessions or Sessions(target)
    try:
        for start in range(0, len(fkeys), WINDOW):
            # one object per FK throughout a window (a packed.Chunked makes new ones each pass)
            _restore_window(target, sessions, list(fkeys[start : start + WINDOW]), start, out)
        with sessions.session() as conn:
            make_durable(conn, target.session)  # before anyone removes the journal on our word
    finally:
        if own:
            sessions.close()
    return out


def _restore_window(
    target: RestoreTarget, sessions: Sessions, fkeys: list[ForeignKey], start: int, out: RestoreOutcome
) -> None:
    added = _add_missing(sessions, fkeys, out, target.small)
    failpoints.hit("after-add")
    heard = _by_position(target.on_settled, fkeys, start)
    if heard is not None:
        for fk in added.settled:
            heard(fk, added.timings.get((fk.table, fk.name), 0.0))
    failed = _validate(sessions, added.to_validate, heard)
    with sessions.session(len(fkeys)) as conn:
        _check(out, _now(conn, fkeys), failed)


def _check(out: RestoreOutcome, now: Iterator[tuple[ForeignKey, ForeignKey | None]], failed: dict) -> None:
    """Each FK as it now is against the journal's: restored, left NOT VALID, or missing."""
    missing_keys = {(fk.table, fk.name) for fk, _ in out.missing}
    for fk, there in now:
        key = (fk.table, fk.name)
        if key in missing_keys:
            continue
        if there is None or there.definition != fk.definition:
            why = (
                "not found after re-creation" if there is None else f"definition differs: {there.definition}"
            )
            out.missing.append((fk, why))
        elif fk.validated and not there.validated:
            out.not_valid.append((fk, failed.get(key, "left NOT VALID")))
        elif there.comment != fk.comment:
            out.missing.append((fk, "its comment differs from the journal's"))
        else:
            out.restored.append(fk)


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
