"""Issue 9: what lands is exactly what the source holds, whatever the two sides' encodings,
session settings, timeouts, row-level security and privileges.  The two sides differ
here the way users' servers differ."""

from __future__ import annotations

import itertools
import json
import os
import time

import psycopg2
import pytest

from pgcopy.sandbox import SUPERUSER
from tests.fix_clusters import Db
from tests.helpers import DATA, SCHEMA, checksums, copy, fk_state, load_fidelity, sequence_state

_n = itertools.count()

# one fixed set of session settings to compare values in, on both sides
COMPARE = (
    "SET DateStyle = ISO; SET IntervalStyle = postgres; SET extra_float_digits = 3; "
    "SET TimeZone = 'UTC'; SET bytea_output = hex"
)


@pytest.fixture
def state(tmp_path):
    return tmp_path / "state"


def admin(cluster, statement: str) -> None:
    """A statement that cannot run in a transaction block (CREATE/DROP DATABASE)."""
    conn = psycopg2.connect(cluster.dsn("postgres"))
    conn.autocommit = True
    try:
        conn.cursor().execute(statement)
    finally:
        conn.close()


@pytest.fixture
def make_db(clusters):
    """make_db(side, encoding=...) -> a fresh database on the source (0) or destination (1) cluster."""
    made: list[Db] = []

    def make(side: int, encoding: str = "UTF8") -> Db:
        cluster = clusters[side]
        name = f"f{side}_{os.getpid()}_{next(_n)}"
        admin(
            cluster,
            f"CREATE DATABASE {name} ENCODING '{encoding}' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
        )
        db = Db(cluster, name)
        made.append(db)
        return db

    yield make
    for db in made:
        admin(db.cluster, f"DROP DATABASE IF EXISTS {db.dbname} WITH (FORCE)")


def rows(db: Db, query: str) -> list[tuple]:
    conn = psycopg2.connect(db.dsn)
    conn.autocommit = True
    conn.set_client_encoding("UTF8")  # psycopg2 must know, to decode the same way on both sides
    try:
        cur = conn.cursor()
        cur.execute(COMPARE)
        cur.execute(query)
        return cur.fetchall()
    finally:
        conn.close()


MODES = {"binary": (), "text": ("--format", "text"), "rows": ("--no-copy-pipe",)}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("direction", ["latin1->utf8", "utf8->latin1"])
def test_encodings_round_trip(make_db, state, direction, mode):
    src_enc, dst_enc = ("LATIN1", "UTF8") if direction == "latin1->utf8" else ("UTF8", "LATIN1")
    src, dst = make_db(0, src_enc), make_db(1, dst_enc)
    for db in (src, dst):
        db.execute("CREATE TABLE t (id int PRIMARY KEY, s text, c char(3), j jsonb)")
    src.execute(
        "INSERT INTO t VALUES (1, 'café crème ÿ', 'äöü', '{\"k\": \"né\"}'), (2, 'plain', 'abc', '[]')"
    )
    dst.execute("INSERT INTO t VALUES (9, 'old', 'old', '{}')")
    r = copy(src.dsn, dst.dsn, "--yes", *MODES[mode], state_dir=state)
    assert r.returncode == 0, r.stderr
    q = "SELECT id, s, c, j::text FROM t ORDER BY id"
    assert rows(dst, q) == rows(src, q)
    assert rows(dst, q)[0][1] == "café crème ÿ"


def test_characters_the_destination_cannot_hold_fail_the_table(make_db, state):
    """UTF8 '€' into LATIN1: the server's conversion error fails that table, never stores junk."""
    src, dst = make_db(0, "UTF8"), make_db(1, "LATIN1")
    for db in (src, dst):
        db.execute("CREATE TABLE euro (id int, s text); CREATE TABLE fine (id int, s text)")
    src.execute("INSERT INTO euro VALUES (1, '5 €'); INSERT INTO fine VALUES (1, 'déjà vu')")
    dst.execute("INSERT INTO euro VALUES (7, 'old')")
    r = copy(src.dsn, dst.dsn, "--yes", state_dir=state)
    assert r.returncode == 4, r.stderr
    assert "euro" in r.stderr and "has no equivalent in encoding" in r.stderr
    assert rows(dst, "SELECT * FROM euro") == [(7, "old")]
    assert rows(dst, "SELECT * FROM fine") == [(1, "déjà vu")]


SETTINGS_TABLE = """
CREATE TABLE vals (id int PRIMARY KEY, iv interval, f8 float8, f4 float4, d date, ts timestamp,
                   tz timestamptz, tm timetz, b bytea, n numeric, m money, arr float8[])
"""
SETTINGS_DATA = """
INSERT INTO vals VALUES
 (1, '-1 day -02:00:00', 0.1, 0.1, '2024-02-03', '2024-02-03 04:05:06.789', '2024-02-03 04:05:06+05',
  '04:05:06+02', '\\x00ff5c27', 1.10, 12.34, '{0.3,1e-300}'),
 (2, '1 year 2 mons -3 days 04:05:06.5', 1/3::float8, 2/3::float4, '0099-12-31 BC', 'infinity',
  '1999-12-31 23:59:59.999999-08', '23:59:59-11', '', -0.0, -1, '{}'),
 (3, '-00:00:00.000001', 'NaN', '-Infinity', '2000-01-13', '1970-01-01', '-infinity', '00:00+00', NULL, 'NaN', 0, NULL)
"""


@pytest.mark.parametrize("mode", MODES)
def test_session_settings_and_timeouts_change_nothing(src, dst, state, mode):
    """Every output-affecting setting differs between the sides (database and role level),
    and the role has 300 ms statement and idle-in-transaction timeouts."""
    for db in (src, dst):
        db.execute(SETTINGS_TABLE)
    src.execute(
        SETTINGS_DATA + "; INSERT INTO vals SELECT g + 10, NULL, g / 7.0 FROM generate_series(1, 300000) g"
    )
    dst.execute("INSERT INTO vals (id) VALUES (1)")
    src.execute(
        f"ALTER DATABASE {src.dbname} SET IntervalStyle = 'sql_standard';"
        f"ALTER DATABASE {src.dbname} SET extra_float_digits = 0;"
        f"ALTER DATABASE {src.dbname} SET DateStyle = 'SQL, DMY';"
        f"ALTER DATABASE {src.dbname} SET TimeZone = 'America/New_York';"
        f"ALTER DATABASE {src.dbname} SET bytea_output = 'escape';"
        f"ALTER DATABASE {src.dbname} SET lc_monetary = 'C';"
    )
    dst.execute(
        f"ALTER DATABASE {dst.dbname} SET IntervalStyle = 'iso_8601';"
        f"ALTER DATABASE {dst.dbname} SET extra_float_digits = -3;"
        f"ALTER DATABASE {dst.dbname} SET DateStyle = 'German, MDY';"
        f"ALTER DATABASE {dst.dbname} SET TimeZone = 'Asia/Kolkata';"
    )
    for db in (src, dst):
        db.execute(
            f"ALTER ROLE {SUPERUSER} IN DATABASE {db.dbname} SET statement_timeout = '300ms';"
            f"ALTER ROLE {SUPERUSER} IN DATABASE {db.dbname} SET idle_in_transaction_session_timeout = '300ms';"
        )
    try:
        # -p 1: the snapshot's transaction sits idle far longer than 300 ms while tables load
        r = copy(src.dsn, dst.dsn, "--yes", "-p", "1", *MODES[mode], state_dir=state, timeout=300)
    finally:
        for db in (src, dst):
            db.execute(f"ALTER ROLE {SUPERUSER} IN DATABASE {db.dbname} RESET ALL")
    assert r.returncode == 0, r.stderr
    q = "SELECT v::text FROM vals v ORDER BY id"
    assert rows(dst, q) == rows(src, q)
    assert (
        rows(dst, "SELECT iv FROM vals WHERE id = 1")[0][0]
        == rows(src, "SELECT iv FROM vals WHERE id = 1")[0][0]
    )


# --- row-level security ----------------------------------------------------------------

RLS_SCHEMA = """
CREATE TABLE secret (id int PRIMARY KEY, owner_name text);
CREATE POLICY half ON secret USING (id % 2 = 0);
"""


def _role(db: Db, name: str, extra: str = "") -> str:
    db.execute(
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{name}') THEN "
        f"CREATE ROLE {name} LOGIN PASSWORD 'pw' {extra}; END IF; END $$"
    )
    return db.cluster.dsn(db.dbname, user=name, password="pw")


def _rls_setup(db: Db, *, enable: bool, force: bool, owner: str) -> None:
    db.execute(RLS_SCHEMA + f"ALTER TABLE secret OWNER TO {owner}; GRANT SELECT ON secret TO PUBLIC")
    if enable:
        db.execute("ALTER TABLE secret ENABLE ROW LEVEL SECURITY")
    if force:
        db.execute("ALTER TABLE secret FORCE ROW LEVEL SECURITY")


# (source RLS, reading role) -> expected: "copy" (all 1000 rows) or "refuse"
SOURCE_CASES = {
    "enabled-owner": (True, False, "owner", "copy"),
    "forced-owner": (True, True, "owner", "refuse"),
    "enabled-reader": (True, False, "reader", "refuse"),
    "forced-superuser": (True, True, "superuser", "copy"),
    "disabled-reader": (False, False, "reader", "copy"),
}


@pytest.mark.parametrize("case", SOURCE_CASES)
def test_source_rls_is_a_complete_copy_or_a_refusal(src, dst, state, case):
    enable, force, who, expect = SOURCE_CASES[case]
    owner_dsn = _role(src, "rls_owner")
    reader_dsn = _role(src, "rls_reader")
    _rls_setup(src, enable=enable, force=force, owner="rls_owner")
    src.execute("INSERT INTO secret SELECT g, 'x' FROM generate_series(1, 1000) g")
    dst.execute(RLS_SCHEMA + "INSERT INTO secret VALUES (-1, 'old')")
    source = {"owner": owner_dsn, "reader": reader_dsn, "superuser": src.dsn}[who]
    before = checksums(dst)
    r = copy(source, dst.dsn, "--yes", state_dir=state)
    if expect == "copy":
        assert r.returncode == 0, r.stderr
        assert dst.scalar("SELECT count(*) FROM secret") == 1000
    else:
        assert r.returncode == 2, r.stderr
        assert "row-level security" in r.stderr and "public.secret" in r.stderr
        assert checksums(dst) == before


@pytest.mark.parametrize("force", [False, True])
def test_destination_rls(src, dst, state, force):
    """COPY FROM cannot load a table whose policies apply to the role: refused before any change."""
    src.execute(RLS_SCHEMA + "INSERT INTO secret SELECT g, 'x' FROM generate_series(1, 100) g")
    owner_dsn = _role(dst, "rls_downer")
    _rls_setup(dst, enable=True, force=force, owner="rls_downer")
    dst.execute("INSERT INTO secret VALUES (-2, 'old')")
    before = checksums(dst)
    r = copy(src.dsn, owner_dsn, "--yes", state_dir=state)
    if force:
        assert r.returncode == 2, r.stderr
        assert "destination table public.secret has row-level security" in r.stderr
        assert checksums(dst) == before
    else:
        assert r.returncode == 0, r.stderr
        assert dst.scalar("SELECT count(*) FROM secret") == 100


# --- constraints and comments ----------------------------------------------------------


def test_not_valid_check_with_violating_rows_and_fk_comment(src, dst, state):
    for db in (src, dst):
        db.execute(
            "CREATE TABLE parent (id int PRIMARY KEY);"
            "CREATE TABLE child (id int, parent_id int CONSTRAINT child_parent_fk REFERENCES parent(id), qty int);"
            "COMMENT ON CONSTRAINT child_parent_fk ON child IS 'each child has a parent';"
        )
    # rows that violate the CHECK added afterwards, on both sides
    src.execute("INSERT INTO parent VALUES (1); INSERT INTO child VALUES (1, 1, 3), (2, 1, -7)")
    dst.execute("INSERT INTO child VALUES (0, NULL, -5)")
    for db in (src, dst):
        db.execute(
            "ALTER TABLE child ADD CONSTRAINT qty_positive CHECK (qty > 0) NOT VALID;"
            "COMMENT ON CONSTRAINT qty_positive ON child IS 'old rows may be negative'"
        )
    q_con = """SELECT conname, pg_get_constraintdef(oid), convalidated, obj_description(oid, 'pg_constraint')
                 FROM pg_constraint WHERE conrelid = 'child'::regclass ORDER BY 1"""
    before = dst.query(q_con)
    r = copy(src.dsn, dst.dsn, "--yes", state_dir=state)
    assert r.returncode == 0, r.stderr
    assert dst.query(q_con) == before
    assert checksums(dst) == checksums(src)


def test_missing_references_privilege_refused_before_any_change(src, dst, state):
    for db in (src, dst):
        db.execute(
            "CREATE TABLE parent (id int PRIMARY KEY); CREATE TABLE child (id int, pid int REFERENCES parent(id))"
        )
    src.execute("INSERT INTO parent VALUES (1), (2); INSERT INTO child VALUES (1, 2)")
    dst.execute("INSERT INTO parent VALUES (5); INSERT INTO child VALUES (9, 5)")
    role_dsn = _role(dst, "noref")
    # owns the child (may drop its FK), may load the parent, but may not reference it
    dst.execute("ALTER TABLE child OWNER TO noref; GRANT SELECT, INSERT, TRUNCATE ON parent TO noref")
    before = (checksums(dst), fk_state(dst))
    r = copy(src.dsn, role_dsn, "--yes", state_dir=state)
    assert r.returncode == 2, r.stderr
    assert "needs REFERENCES on public.parent (id)" in r.stderr
    assert (checksums(dst), fk_state(dst)) == before


def test_fk_to_a_table_the_role_may_only_reference(src, dst, state):
    """FK batches first lock their tables in one order (ACCESS EXCLUSIVE to drop, SHARE ROW
    EXCLUSIVE to add); a role that may reference a table but not lock it gets those FKs
    dropped and re-added without that LOCK, one batch at a time, instead of an error."""
    for db in (src, dst):
        db.execute(
            "CREATE TABLE parent (id int PRIMARY KEY); CREATE TABLE child (id int, pid int REFERENCES parent(id));"
            "CREATE TABLE other (id int PRIMARY KEY); CREATE TABLE other_child (id int, oid int REFERENCES other(id))"
        )
        db.execute("INSERT INTO parent VALUES (1), (2), (5); INSERT INTO other VALUES (1)")
    src.execute("INSERT INTO child VALUES (1, 2); INSERT INTO other_child VALUES (1, 1)")
    dst.execute("INSERT INTO child VALUES (9, 5)")
    role_dsn = _role(dst, "refonly")
    _role(src, "refonly")
    for db in (src, dst):
        db.execute(
            "ALTER TABLE child OWNER TO refonly; ALTER TABLE other OWNER TO refonly;"
            "ALTER TABLE other_child OWNER TO refonly; GRANT SELECT, REFERENCES ON parent TO refonly"
        )
    before = fk_state(dst)
    r = copy(
        src.cluster.dsn(src.dbname, user="refonly", password="pw"),
        role_dsn,
        "--yes",
        "--exclude",
        "parent",
        "--debug",
        state_dir=state,
    )
    assert r.returncode == 0, r.stderr
    assert fk_state(dst) == before
    assert dst.query("SELECT * FROM child") == [(1, 2)]
    assert dst.query("SELECT * FROM other_child") == [(1, 1)]


def test_one_violated_fk_in_a_batch_of_adds(src, dst, state):
    """FKs are re-added a batch per statement; when one of the batch fails (its rows do not
    hold), they are added one by one: the others end validated, that one NOT VALID."""
    for db in (src, dst):
        db.execute(
            "CREATE TABLE p (id int PRIMARY KEY);"
            + "".join(
                f"CREATE TABLE c{i} (id int, pid int CONSTRAINT c{i}_fk REFERENCES p(id));" for i in range(8)
            )
        )
    src.execute(
        "INSERT INTO p VALUES (1), (2), (3);" + "".join(f"INSERT INTO c{i} VALUES (1, 1);" for i in range(8))
    )
    src.execute("INSERT INTO c5 VALUES (2, 3)")
    dst.execute("INSERT INTO p VALUES (1), (2)")  # p is not copied: no 3 here
    r = copy(src.dsn, dst.dsn, "--yes", "--exclude", "p", state_dir=state)
    assert r.returncode == 4, r.stderr
    assert r.stderr.count("could not be validated") == 1 and "c5_fk on public.c5" in r.stderr
    valid = dict(dst.query("SELECT conname, convalidated FROM pg_constraint WHERE contype = 'f'"))
    assert valid == {f"c{i}_fk": i != 5 for i in range(8)}


def test_large_objects_named_in_plan_and_report_matviews_only_dependent(src, dst, state, tmp_path):
    for db in (src, dst):
        db.execute(
            "CREATE TABLE a (id int); CREATE TABLE b (id int);"
            "CREATE VIEW a_view AS SELECT id FROM a;"
            "CREATE MATERIALIZED VIEW a_count AS SELECT count(*) AS n FROM a_view;"
            "CREATE MATERIALIZED VIEW b_count AS SELECT count(*) AS n FROM b;"
        )
    src.execute("INSERT INTO a VALUES (1), (2); INSERT INTO b VALUES (1); SELECT lo_from_bytea(0, 'blob')")
    r = copy(src.dsn, dst.dsn, "--dry-run", "--include", "a", state_dir=state)
    assert r.returncode == 0, r.stderr
    assert "Large objects on the source: 1 (not copied)" in r.stdout
    assert "public.a_count" in r.stdout and "public.b_count" not in r.stdout
    report = tmp_path / "r.json"
    r = copy(src.dsn, dst.dsn, "--yes", "--include", "a", "--report", str(report), state_dir=state)
    assert r.returncode == 0, r.stderr
    data = json.loads(report.read_text())
    assert data["large_objects"] == 1
    assert data["matviews_refreshed"] == ["public.a_count"]
    assert dst.scalar("SELECT n FROM a_count") == 2
    assert dst.scalar("SELECT n FROM b_count") == 0
    assert "1 large objects; pgcopy does not copy them" in r.stderr


# --- self-copy versus a physical clone -------------------------------------------------


def test_physical_clone_is_copied_into_but_self_copy_refused(clusters, state):
    primary = clusters[0]
    name = f"clone_{os.getpid()}_{next(_n)}"
    admin(primary, f"CREATE DATABASE {name}")
    src = Db(primary, name)
    try:
        src.execute(SCHEMA)
        src.execute(DATA)
        clone_cluster = primary.clone()
        try:
            clone = Db(clone_cluster, name)
            sysid = "SELECT system_identifier FROM pg_control_system()"
            assert clone.scalar(sysid) == src.scalar(sysid)
            # production moves on after the clone was taken
            src.execute("DELETE FROM order_items WHERE line = 1; INSERT INTO empty_src VALUES (5, 'new')")
            r = copy(src.dsn, clone.dsn, "--yes", state_dir=state)
            assert r.returncode == 0, r.stderr
            assert checksums(clone) == checksums(src)
            assert fk_state(clone) == fk_state(src)
            r = copy(src.dsn, src.dsn, "--yes", state_dir=state)
            assert r.returncode == 2 and "the same database" in r.stderr, r.stderr
            # the other spelling of the same server and database is refused too
            r = copy(src.dsn, src.uri, "--yes", state_dir=state)
            assert r.returncode == 2 and "the same database" in r.stderr, r.stderr
        finally:
            clone_cluster.destroy()
    finally:
        admin(primary, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_a_hot_standby_source_is_copied_from(clusters, src, dst, state):
    """Refreshing staging from a read replica, not the primary: the snapshot is exported on
    the standby, and every row, FK and sequence arrives.  A standby shows each sequence as
    last WAL-logged, up to 32 values ahead of the primary's: never behind it.  The
    standby keeps its primary's configuration, where serializable is the default isolation
    (tests.fix_clusters), which a standby refuses: pgcopy's sessions name their own."""
    load_fidelity(src, dst)
    lsn = src.scalar("SELECT pg_current_wal_lsn()::text")
    standby = clusters[0].clone(standby=True)
    try:
        replica = Db(standby, src.dbname)
        end = time.monotonic() + 30
        while replica.scalar("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)) is not True:
            assert time.monotonic() < end, "the standby did not catch up"
            time.sleep(0.1)
        assert replica.scalar("SELECT pg_is_in_recovery()") is True
        r = copy(replica.dsn, dst.dsn, "--yes", "-p", "2", state_dir=state)
        assert r.returncode == 0, r.stderr
        assert checksums(dst) == checksums(src)
        assert fk_state(dst) == fk_state(src)
        ahead = {
            (s, n): (v or 0) - (w or 0)
            for (s, n, v), (_, _, w) in zip(sequence_state(dst), sequence_state(src), strict=True)
        }
        assert all(0 <= d <= 32 for d in ahead.values()), ahead
    finally:
        standby.destroy()


def test_standby_destination_refused(clusters, src, state):
    src.execute("CREATE TABLE t (id int)")
    standby = clusters[1].clone(standby=True)
    try:
        r = copy(src.dsn, standby.dsn("postgres"), "--yes", state_dir=state)
        assert r.returncode == 2 and "standby" in r.stderr, r.stderr
    finally:
        standby.destroy()
