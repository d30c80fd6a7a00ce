"""Refusals, interruptions, crashes and recovery: the destination never loses anything."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import psycopg2
import pytest

from tests.helpers import (
    ROOT,
    checksums,
    copy,
    fk_state,
    load_fidelity,
    pgcopy,
    sequence_state,
    trigger_state,
)


@pytest.fixture
def state(tmp_path):
    return tmp_path / "state"


def snapshot_of(db):
    """Everything a refused or interrupted run must leave as it was."""
    return (checksums(db), fk_state(db), trigger_state(db), sequence_state(db))


class Running:
    """pgcopy in the background, its stderr collected line by line."""

    def __init__(self, args, state, env=None):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pgcopy", *args, "--state-dir", str(state)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for(self, text, timeout=60):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any(text in line for line in self.lines):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{text!r} never appeared:\n{''.join(self.lines)}")

    def wait_others_done(self, timeout=60):
        """Until every table but one has completed (the blocked one)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            text = "".join(self.lines)
            total = re.search(r"STEP 5: loading (\d+) tables", text)
            if total and text.count("Completed ") == int(total.group(1)) - 1:
                return
            time.sleep(0.05)
        raise AssertionError(f"the other tables never completed:\n{''.join(self.lines)}")

    def finish(self, timeout=60):
        out = self.proc.stdout.read()
        code = self.proc.wait(timeout)
        self._t.join(5)
        return code, out, "".join(self.lines)


def hold_lock(db, table, mode="ACCESS SHARE"):
    """An open transaction on the destination that blocks TRUNCATE of ``table``."""
    conn = psycopg2.connect(db.dsn)
    conn.cursor().execute(f"LOCK TABLE {table} IN {mode} MODE")
    return conn


def wait_blocked(db, timeout=30):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if db.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgcopy:%%' AND wait_event_type = 'Lock'"
        ):
            return
        time.sleep(0.05)
    raise AssertionError("pgcopy never waited on the lock")


@contextmanager
def copy_blocked_on_empty_src(src, dst, state, *extra):
    """A running copy whose worker waits for a lock on empty_src until the block ends; with
    more than one worker, every other table has completed by then."""
    lock = hold_lock(dst, "empty_src")
    try:
        run = Running(["copy", "-s", src.dsn, "-d", dst.dsn, "--yes", *extra], state)
        run.wait_for("Copying table public.empty_src")
        wait_blocked(dst)
        if "-p" not in extra or extra[extra.index("-p") + 1] != "1":
            run.wait_others_done()  # the other workers carry on with the rest
        yield run
    finally:
        lock.close()


# --- preflight refusals -------------------------------------------------------------


def assert_refused(dst, run, *messages) -> str:
    """``run()`` must exit 2 naming every message and leave the destination as it was."""
    before = snapshot_of(dst)
    r = run()
    assert r.returncode == 2, r.stderr
    for message in messages:
        assert message in r.stderr
    assert snapshot_of(dst) == before
    return r.stderr


def test_same_database_refused(src, state):
    src.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    before = checksums(src)
    # the same database reached through two different spellings
    r = copy(src.dsn, src.uri, "--yes", state_dir=state)
    assert r.returncode == 2
    assert "source and destination are the same database" in r.stderr
    assert checksums(src) == before


def test_schema_differences_all_listed(src, dst, state):
    load_fidelity(src, dst)
    dst.execute(
        'DROP TABLE tree; ALTER TABLE "Mixed Case" ALTER COLUMN "Col" TYPE numeric; ALTER TABLE loose ADD COLUMN extra int'
    )
    assert_refused(
        dst,
        lambda: copy(src.dsn, dst.dsn, "--yes", state_dir=state),
        "table public.tree does not exist on the destination",
        "column 'Col' is integer on the source but numeric on the destination",
        "column 'extra' (integer) exists only on the destination",
        "3 problems",
    )


def test_an_object_dropped_while_its_catalog_row_is_read_refuses_the_plan(dst):
    """The catalog scans see an FK, index or CHECK in their snapshot; pg_get_*def reads
    the latest catalog and gives NULL for one dropped since (seen while another session
    dropped 80,000 FKs): a one-line refusal, not a traceback from the planning, nor a
    plan that rebuilds an index from nothing."""
    from pgcopy import catalog
    from pgcopy.errors import PreflightError

    dst.execute(
        "CREATE TABLE p (id int CONSTRAINT p_pk PRIMARY KEY); CREATE TABLE c (p int CONSTRAINT c_p REFERENCES p);"
        "ALTER TABLE c ADD CONSTRAINT c_pos CHECK (p > 0) NOT VALID"
    )
    p_oid, c_oid = dst.scalar("SELECT 'p'::regclass::oid"), dst.scalar("SELECT 'c'::regclass::oid")
    with psycopg2.connect(dst.dsn) as conn, conn.cursor() as cur:
        cur.execute(catalog.FKEYS_SQL.format(delset="ARRAY[]::name[]"))
        (fk_row,) = cur.fetchall()
        cur.execute(catalog.INDEXES_SQL, (catalog.oid_array([p_oid]),))
        (index_row,) = cur.fetchall()
        ((_, (check,)),) = catalog.read_not_valid_checks(cur, [c_oid]).items()
    assert catalog._foreign_key(fk_row, catalog.Shared()).definition == "FOREIGN KEY (p) REFERENCES p(id)"
    assert catalog._index(index_row)[2].condef == "PRIMARY KEY (id)"
    assert check.definition == "CHECK ((p > 0)) NOT VALID"
    # the rows as the race returns them
    for read, row, what in (
        (
            lambda r: catalog._foreign_key(r, catalog.Shared()),
            (*fk_row[:5], None, *fk_row[6:]),
            'foreign key "c_p" on public.c',
        ),
        (catalog._index, (*index_row[:2], None, *index_row[3:]), 'index "p_pk"'),
        (catalog._index, (*index_row[:4], None, *index_row[5:]), 'constraint "p_pk"'),
        (catalog._check_constraint, (c_oid, "c_pos", None, None), 'constraint "c_pos"'),
    ):
        with pytest.raises(PreflightError, match=f"{what} was dropped while pgcopy read the catalog"):
            read(row)


def test_cascade_trap_refused(src, dst, state):
    load_fidelity(src, dst)
    dst.execute(
        "INSERT INTO customers (id, name) VALUES (7000, 'kept'); INSERT INTO xschema VALUES (9, 7000)"
    )
    assert_refused(
        dst,
        lambda: copy(src.dsn, dst.dsn, "--yes", "--include", "customers", state_dir=state),
        "destination table public.xschema is not selected but its foreign key xschema_cust_fkey "
        "references selected table public.customers",
        "add public.xschema to --include",
    )


def test_missing_privileges_refused(src, dst, state):
    load_fidelity(src, dst)
    for db in (src, dst):
        db.execute("DROP ROLE IF EXISTS weak; CREATE ROLE weak LOGIN PASSWORD 'weakpw'")
    src.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO weak; REVOKE SELECT ON public.tree FROM weak")
    dst.execute(
        "GRANT INSERT ON ALL TABLES IN SCHEMA public, other TO weak; GRANT USAGE ON SCHEMA other TO weak"
    )
    err = assert_refused(
        dst,
        lambda: copy(
            src.cluster.dsn(src.dbname, "weak", "weakpw"),
            dst.cluster.dsn(dst.dbname, "weak", "weakpw"),
            "--yes",
            "--exclude",
            "other.*",
            state_dir=state,
        ),
        "no SELECT privilege on source table public.tree",
        "destination table public.orders: missing TRUNCATE, ownership (to drop and re-add its foreign keys)",
        # told once the FKs are read too (preflight.ownership), one line a table
        "destination table public.customers: missing TRUNCATE, ownership (to hold off its triggers)",
    )
    assert "weakpw" not in err
    assert err.count("destination table public.orders:") == 1


def test_no_terminal_refused_at_once(src, dst, state):
    load_fidelity(src, dst)
    t = time.monotonic()
    assert_refused(
        dst,
        lambda: copy(src.dsn, dst.dsn, state_dir=state, input="yes\n"),
        "stdin is not a terminal",
        "--yes",
    )
    assert time.monotonic() - t < 30


def test_unknown_pattern_is_error(src, dst, state):
    load_fidelity(src, dst)
    r = copy(src.dsn, dst.dsn, "--yes", "--include", "nosuch*", state_dir=state)
    assert r.returncode == 2 and "no table matches the selection" in r.stderr


# --- failures, interruptions, crashes ----------------------------------------------------


def test_lock_timeout_fails_one_table_names_holder(src, dst, state):
    load_fidelity(src, dst)
    fks = fk_state(dst)
    lock = hold_lock(dst, "empty_src")
    try:
        r = copy(src.dsn, dst.dsn, "--yes", "--lock-timeout", "1s", state_dir=state)
    finally:
        lock.close()
    assert r.returncode == 4, r.stderr
    assert "Failed public.empty_src" in r.stderr and "lock timeout" in r.stderr and "held by pid" in r.stderr
    assert dst.query("SELECT * FROM empty_src") == [(1, "stale")]  # fully old
    ours, theirs = checksums(dst), checksums(src)
    assert all(ours[t] == theirs[t] for t in theirs if t != "public.empty_src")
    assert fk_state(dst) == fks


@pytest.mark.parametrize("alone", [[], ["--compress", "zstd"]], ids=["batched", "alone"])
def test_a_table_locked_on_the_source_fails_alone_after_the_lock_timeout(src, dst, state, alone):
    """An ALTER or LOCK TABLE on the source: sizing the table in the catalog phase does
    not wait for it (its size is the catalog's estimate), and its read waits
    --lock-timeout, then fails that table alone, naming the holder, as on the
    destination.  The run used to wait in its catalog phase, silently, for as long as the
    lock was held."""
    load_fidelity(src, dst)
    fks = fk_state(dst)
    lock = hold_lock(src, "empty_src", "ACCESS EXCLUSIVE")
    t0 = time.monotonic()
    try:
        r = copy(src.dsn, dst.dsn, "--yes", "--lock-timeout", "1s", *alone, state_dir=state, timeout=60)
    finally:
        lock.close()
    assert r.returncode == 4, r.stderr
    assert "Failed public.empty_src (source)" in r.stderr and "lock timeout" in r.stderr
    assert "held by pid" in r.stderr
    assert dst.query("SELECT * FROM empty_src") == [(1, "stale")]  # fully old
    ours, theirs = checksums(dst), checksums(src)
    assert all(ours[t] == theirs[t] for t in theirs if t != "public.empty_src")
    assert fk_state(dst) == fks
    assert time.monotonic() - t0 < 45


def test_a_standalone_sequence_locked_on_the_source_fails_the_run_before_any_change(src, dst, state):
    """A sequence no loaded table owns is read before anything changes: locked on the
    source (an uncommitted DROP SEQUENCE, say) it fails the run after
    --lock-timeout, naming it and its holder, with exit 1 and nothing touched; it used
    to wait there forever."""
    load_fidelity(src, dst)
    fks, before = fk_state(dst), checksums(dst)
    holder = psycopg2.connect(src.dsn)
    holder.cursor().execute("DROP SEQUENCE standalone_seq")  # not committed: a lock
    try:
        r = copy(src.dsn, dst.dsn, "--yes", "--lock-timeout", "1s", state_dir=state, timeout=60)
    finally:
        holder.close()  # rolled back
    assert r.returncode == 1, r.stderr
    assert "public.standalone_seq; held by pid" in r.stderr and "nothing was changed" in r.stderr
    assert "Traceback" not in r.stderr
    assert checksums(dst) == before and fk_state(dst) == fks
    assert not list(state.glob("*.json"))


def test_lock_held_on_an_fk_table_fails_the_drops_and_changes_nothing(src, dst, state):
    """FK drops run in parallel batches, each locking its tables first: a table locked
    elsewhere fails the run at the drops (after one lock timeout), and every FK dropped by
    then is put back from the journal; no row is touched."""
    load_fidelity(src, dst)
    fks, before = fk_state(dst), checksums(dst)
    lock = hold_lock(dst, "order_items")
    try:
        r = copy(src.dsn, dst.dsn, "--yes", "--lock-timeout", "1s", state_dir=state)
    finally:
        lock.close()
    assert r.returncode != 0, r.stderr
    assert "lock timeout" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert fk_state(dst) == fks and checksums(dst) == before
    assert not list(state.glob("*.json"))


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_signal_mid_copy_rolls_back_and_restores(src, dst, state, sig, code):
    load_fidelity(src, dst)
    fks, trigs = fk_state(dst), trigger_state(dst)
    with copy_blocked_on_empty_src(src, dst, state, "-p", "2") as run:
        os.kill(run.proc.pid, sig)
        rc, out, err = run.finish()
    assert rc == code, err
    assert "rolled back" in err and "public.empty_src" in err, err
    assert dst.query("SELECT * FROM empty_src") == [(1, "stale")]
    assert fk_state(dst) == fks and trigger_state(dst) == trigs
    assert not list(state.glob("*.json"))
    assert "COPY STATISTICS" in out


@pytest.mark.parametrize("then", ["recover", "rerun"])
def test_kill9_then_recover_or_rerun(src, dst, state, then):
    load_fidelity(src, dst)
    fks, trigs = fk_state(dst), trigger_state(dst)
    with copy_blocked_on_empty_src(src, dst, state, "-p", "2") as run:
        os.killpg(run.proc.pid, signal.SIGKILL)
        run.proc.wait(30)
    assert len(fk_state(dst)) < len(fks), "the kill left foreign keys dropped"
    assert dst.query("SELECT * FROM empty_src") == [(1, "stale")]  # never half-loaded
    assert trigger_state(dst) == trigs  # trigger changes die with their transaction
    assert list(state.glob("*.json"))
    if then == "recover":
        r = pgcopy("recover", "-d", dst.uri, state_dir=state)
        assert r.returncode == 0, r.stderr
        assert fk_state(dst) == fks
        r = pgcopy("recover", "-d", dst.uri, state_dir=state)
        assert r.returncode == 0 and "nothing to recover" in r.stderr
    else:
        r = copy(src.dsn, dst.dsn, "--yes", state_dir=state)
        assert r.returncode == 0, r.stderr
        assert "found the journal of an interrupted run" in r.stderr
        assert fk_state(dst) == fks and checksums(dst) == checksums(src)
    assert not list(state.glob("*.json"))


def test_validation_failure_keeps_fk_not_valid(src, dst, state):
    """A selected table referencing an unselected one whose rows differ: reported, exit 4."""
    load_fidelity(src, dst)
    r = copy(src.dsn, dst.dsn, "--yes", "--include", "xschema", state_dir=state)
    assert r.returncode == 4, r.stderr
    assert "xschema_cust_fkey on public.xschema -> public.customers could not be validated" in r.stderr
    assert dst.scalar("SELECT convalidated FROM pg_constraint WHERE conname = 'xschema_cust_fkey'") is False
    # the journal keeps the FK's original validity until it is valid again
    assert len(list(state.glob("*.json"))) == 1
    r = pgcopy("recover", "-d", dst.dsn, state_dir=state)
    assert r.returncode == 4 and "is kept" in r.stderr, r.stderr
    assert len(list(state.glob("*.json"))) == 1
    # once the whole set is copied, the FK validates and the journal goes
    r = copy(src.dsn, dst.dsn, "--yes", state_dir=state)
    assert r.returncode == 0, r.stderr
    assert dst.scalar("SELECT convalidated FROM pg_constraint WHERE conname = 'xschema_cust_fkey'") is True
    assert not list(state.glob("*.json"))


def test_source_writes_during_copy_read_from_one_snapshot(src, dst, state):
    load_fidelity(src, dst)
    # make the blocked table the largest so the single worker takes it first
    src.execute(
        "INSERT INTO empty_src SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g; ANALYZE empty_src"
    )
    expected = checksums(src)
    with copy_blocked_on_empty_src(src, dst, state, "-p", "1") as run:
        # the source moves on while the copy waits: new parents and children, a deleted child
        src.execute(
            "INSERT INTO customers (name) SELECT 'late' || g FROM generate_series(1, 50) g;"
            "INSERT INTO orders (customer_id, amount) SELECT id, 1 FROM customers WHERE name LIKE 'late%';"
            "DELETE FROM order_items WHERE line % 2 = 0;"
        )
    rc, out, err = run.finish()
    assert rc == 0, err
    assert checksums(dst) == expected
    assert fk_state(dst) == fk_state(src)


def test_recover_from_source_when_journal_is_lost(src, dst, state):
    load_fidelity(src, dst)
    fks = fk_state(dst)
    dst.execute(
        "ALTER TABLE orders DROP CONSTRAINT orders_customer_id_fkey; ALTER TABLE other.pair_refs DROP CONSTRAINT same_name"
    )
    r = pgcopy("recover", "-d", dst.dsn, state_dir=state)
    assert r.returncode == 0 and "nothing to recover" in r.stderr
    r = pgcopy("recover", "-d", dst.dsn, "-s", src.dsn, state_dir=state)
    assert r.returncode == 0, r.stderr
    assert "2 foreign keys exist on the source but not on the destination" in r.stderr
    assert fk_state(dst) == fks


@pytest.fixture(scope="module")
def lazy_wal_cluster():
    """A destination whose commits are synchronous by configuration and whose WAL writer
    waits 10 s before flushing what asynchronous commits wrote; wal_level minimal, so no
    background process writes WAL of its own (standby snapshots) while a test looks."""
    from pgcopy.sandbox import FAST_SETTINGS, throwaway_cluster

    settings = dict(
        FAST_SETTINGS,
        synchronous_commit="on",
        wal_writer_delay="10s",
        autovacuum="off",
        wal_level="minimal",
        max_wal_senders="0",
    )
    with throwaway_cluster(settings) as cluster:
        yield cluster


def _fk_chain(n: int) -> tuple[str, str]:
    """n tables with serials, each referencing the previous one and the first: 2n - 1 FKs."""
    ddl = "CREATE TABLE t0 (id serial PRIMARY KEY, up int REFERENCES t0);" + "".join(
        f"CREATE TABLE t{i} (id serial PRIMARY KEY, a int REFERENCES t{i - 1}, b int REFERENCES t0);"
        for i in range(1, n)
    )
    return ddl, "".join(f"INSERT INTO t{i} (id) SELECT generate_series(1, 5);" for i in range(n))


# What a run leaves unflushed when it is durable: at most a few records that need no
# flush (pruning when its last reads meet dead catalog tuples).  Its asynchronous commits
# leave tens of kB.
STRAY_WAL = 8192


def _unflushed(cluster) -> int:
    """Bytes of WAL inserted but not yet flushed."""
    conn = psycopg2.connect(cluster.dsn("postgres"))
    try:
        cur = conn.cursor()
        cur.execute("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), pg_current_wal_flush_lsn())")
        return int(cur.fetchone()[0])
    finally:
        conn.close()


def _killed_after_the_drop(src_dsn: str, dst_dsn: str, state) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "pgcopy", "copy", "-s", src_dsn, "-d", dst_dsn, "--yes", "-p", "2"]
        + ["--state-dir", str(state)],
        cwd=ROOT,
        env=dict(os.environ, PGCOPY_FAILPOINT="after-drop:kill"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == -signal.SIGKILL, r.stderr


def test_commits_are_asynchronous_until_the_run_makes_them_durable(src, lazy_wal_cluster, state):
    """Destination commits are asynchronous (synchronous_commit = off, as pgcopydb sets
    it): a run killed right after its FK drops leaves them committed but not yet flushed.
    A run that completes flushes everything it wrote before it removes the journal and
    reports, though the WAL writer would have waited 10 s."""
    from tests.fix_clusters import Db

    dst = Db(lazy_wal_cluster, "postgres")
    ddl, seed = _fk_chain(30)
    # free-standing sequences are set after the FKs are back (STEP 7): the last writes
    ddl += "".join(f"CREATE SEQUENCE free{i};" for i in range(200))
    seed += "".join(f"SELECT setval('free{i}', {i + 10});" for i in range(200))
    src.execute(ddl + seed)
    dst.execute(
        "".join(f"DROP TABLE IF EXISTS t{i} CASCADE;" for i in range(30))
        + "".join(f"DROP SEQUENCE IF EXISTS free{i};" for i in range(200))
        + ddl
    )
    _killed_after_the_drop(src.dsn, dst.dsn, state)
    assert _unflushed(lazy_wal_cluster) > STRAY_WAL, "the drops waited for a WAL flush"
    r = copy(src.dsn, dst.dsn, "--yes", "-p", "2", state_dir=state)  # finishes the killed run first
    assert r.returncode == 0, r.stderr
    assert _unflushed(lazy_wal_cluster) < STRAY_WAL, "the run's last commits were not flushed"
    assert checksums(dst) == checksums(src)
    assert dst.scalar("SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND convalidated") == 59
    assert dst.scalar("SELECT last_value FROM free199") == 209


def test_a_role_that_cannot_emit_the_flush_message_commits_synchronously(src, lazy_wal_cluster, state):
    """Without EXECUTE on pg_logical_emit_message a run could not make asynchronous commits
    durable, so its commits stay synchronous: killed right after the FK drops, everything
    it committed is flushed already."""
    admin = psycopg2.connect(lazy_wal_cluster.dsn("postgres"))
    admin.autocommit = True
    cur = admin.cursor()
    cur.execute("DROP DATABASE IF EXISTS plain WITH (FORCE)")
    cur.execute(
        "DO $$ BEGIN CREATE ROLE plain LOGIN PASSWORD 'pw'; EXCEPTION WHEN duplicate_object THEN END $$"
    )
    cur.execute("CREATE DATABASE plain OWNER plain")
    admin.close()
    admin = psycopg2.connect(lazy_wal_cluster.dsn("plain"))  # a function's grants are per database
    admin.autocommit = True
    admin.cursor().execute(
        "REVOKE EXECUTE ON FUNCTION pg_logical_emit_message(boolean, text, text) FROM PUBLIC"
    )
    admin.close()
    ddl, seed = _fk_chain(30)
    src.execute(ddl + seed)
    dst_dsn = lazy_wal_cluster.dsn("plain", "plain", "pw")
    conn = psycopg2.connect(dst_dsn)
    conn.autocommit = True
    conn.cursor().execute(ddl)
    conn.close()
    _killed_after_the_drop(src.dsn, dst_dsn, state)
    assert _unflushed(lazy_wal_cluster) < STRAY_WAL, "a commit did not wait for its flush"
    r = copy(src.dsn, dst_dsn, "--yes", "-p", "2", state_dir=state)
    assert r.returncode == 0, r.stderr
    assert _unflushed(lazy_wal_cluster) < STRAY_WAL


def test_make_durable_flushes_every_asynchronous_commit_before_it(lazy_wal_cluster):
    """On a session of a run with asynchronous commits, committed rows wait for the WAL
    writer (10 s here); make_durable returns once they are flushed."""
    from pgcopy.connections import Session, connect, make_durable

    dsn = lazy_wal_cluster.dsn("postgres")
    setup = psycopg2.connect(dsn)
    setup.autocommit = True
    setup.cursor().execute("DROP TABLE IF EXISTS durable; CREATE TABLE durable (v text)")
    session = Session.new().with_async_commit(setup)
    setup.close()
    assert session.async_commit
    conn = connect(dsn, "destination", session)
    cur = conn.cursor()
    for _ in range(20):
        cur.execute("INSERT INTO durable SELECT repeat('x', 1000) FROM generate_series(1, 10)")
        conn.commit()
    assert _unflushed(lazy_wal_cluster) > STRAY_WAL
    make_durable(conn, session)
    assert _unflushed(lazy_wal_cluster) == 0
    conn.close()
