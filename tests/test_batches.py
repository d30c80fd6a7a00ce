"""Small tables load in batches, one destination transaction each, emptied with DELETE where
that is exactly equivalent; every table still ends fully old or fully new."""

from __future__ import annotations

import json

import pytest

from tests.helpers import OWNER, OWNER_PW, checksums, copy, owner_dsn

N = 30


@pytest.fixture
def state(tmp_path):
    return tmp_path / "state"


def _tables(db, rows: str) -> None:
    db.execute(
        "".join(f"CREATE TABLE t{i} (id int PRIMARY KEY, v text);" for i in range(N))
        + "".join(f"INSERT INTO t{i} SELECT g, {rows} FROM generate_series(1, 5) g;" for i in range(N))
    )


def test_one_bad_table_fails_alone_and_its_batch_mates_load(src, dst, state, tmp_path):
    _tables(src, "'new ' || g")
    _tables(dst, "'old ' || g")
    src.execute("UPDATE t7 SET v = 'bad' WHERE id = 3")
    dst.execute("ALTER TABLE t7 ADD CONSTRAINT no_bad CHECK (v <> 'bad')")
    report = tmp_path / "r.json"
    r = copy(src.dsn, dst.dsn, "--yes", "-p", "2", "--report", str(report), state_dir=state)
    assert r.returncode == 4, r.stderr
    assert f"({N} small tables in " in r.stderr  # they were batched
    assert "Failed public.t7 (destination)" in r.stderr and "no_bad" in r.stderr
    assert dst.query("SELECT v FROM t7 ORDER BY id")[0] == ("old 1",)  # fully old
    ours, theirs = checksums(dst), checksums(src)
    assert all(ours[t] == theirs[t] for t in theirs if t != "public.t7")
    tables = {t["table"]: t for t in json.loads(report.read_text())["tables"]}
    assert tables["public.t1"]["batched"] and tables["public.t1"]["emptied_by"] == "delete"
    assert tables["public.t1"]["codec"] is None
    assert tables["public.t7"]["status"] == "failed"


def _serial_tables(src, dst) -> None:
    for db, word in ((src, "new"), (dst, "old")):
        db.execute(
            "".join(f"CREATE TABLE s{i} (id serial PRIMARY KEY, v text);" for i in range(N))
            + "".join(f"INSERT INTO s{i} (v) SELECT '{word}' FROM generate_series(1, 3);" for i in range(N))
        )
    src.execute("".join(f"SELECT setval('s{i}_id_seq', {100 + i});" for i in range(N)))


def test_a_sequence_that_cannot_be_set_fails_its_table_alone(src, dst, state):
    """Plain tables of a batch are emptied in one statement, and their sequences set in
    the commit's; when such a statement fails, the batch is loaded again one statement per
    table, so the table at fault fails alone (fully old, its sequence untouched) and the
    others load."""
    _serial_tables(src, dst)
    dst.execute("ALTER SEQUENCE s5_id_seq MAXVALUE 50")  # the source's 105 is out of its range
    r = copy(src.dsn, dst.dsn, "--yes", "-p", "1", state_dir=state)
    assert r.returncode == 4, r.stderr
    assert f"({N} small tables in " in r.stderr
    assert "Failed public.s5 (destination)" in r.stderr and "out of bounds" in r.stderr
    assert dst.query("SELECT DISTINCT v FROM s5") == [("old",)]
    assert dst.query("SELECT last_value, is_called FROM s5_id_seq") == [(3, True)]
    ours, theirs = checksums(dst), checksums(src)
    assert all(ours[t] == theirs[t] for t in theirs if t != "public.s5")
    assert dst.scalar("SELECT last_value FROM s6_id_seq") == 106


@pytest.mark.parametrize("role", ["owner", "superuser"])
def test_a_deferred_unique_key_fails_its_table_before_its_sequence_is_set(src, dst, state, role):
    """A deferred constraint would be checked at the commit, which follows the setvals in
    their message: load transactions check it at each statement's end instead (SET
    CONSTRAINTS ALL IMMEDIATE), so a table that breaks one fails at its COPY, alone, with
    its sequence untouched.  (The destination has a DEFERRABLE unique key the source
    lacks, and the source's rows repeat a value.)  As superuser too: its load
    transactions once ran with session_replication_role = replica, which skips the
    internal trigger that checks a deferrable key, and the duplicates landed (exit 0)."""
    _serial_tables(src, dst)
    if role == "owner":
        for db in (src, dst):
            db.execute(
                f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{OWNER}') THEN "
                f"CREATE ROLE {OWNER} LOGIN PASSWORD '{OWNER_PW}'; END IF; END $$;"
                + "".join(f"ALTER TABLE s{i} OWNER TO {OWNER};" for i in range(N))
            )
    src.execute("UPDATE s5 SET v = 'dup'")
    dst.execute("UPDATE s5 SET v = 'old' || id")  # the old rows hold it
    dst.execute("ALTER TABLE s5 ADD CONSTRAINT s5_v_unique UNIQUE (v) DEFERRABLE INITIALLY DEFERRED")
    before = dst.query("SELECT last_value, is_called FROM s5_id_seq")
    s, d = (owner_dsn(src), owner_dsn(dst)) if role == "owner" else (src.dsn, dst.dsn)
    r = copy(s, d, "--yes", "-p", "1", state_dir=state)
    assert r.returncode == 4, r.stderr
    assert "Failed public.s5 (destination)" in r.stderr and "s5_v_unique" in r.stderr
    assert dst.query("SELECT v FROM s5 ORDER BY id") == [("old1",), ("old2",), ("old3",)]
    assert dst.query("SELECT last_value, is_called FROM s5_id_seq") == before
    ours, theirs = checksums(dst), checksums(src)
    assert all(ours[t] == theirs[t] for t in theirs if t != "public.s5")


def test_a_session_using_a_sequence_does_not_hold_up_its_batch(src, dst, state):
    """The batch sets its sequences with setval in the commit's own message, which waits
    for no session that holds a sequence (ALTER SEQUENCE ... RESTART would wait for the
    lock timeout); the sequences end at the source's values."""
    _serial_tables(src, dst)
    holder = dst.connect()
    holder.autocommit = False
    try:
        holder.cursor().execute("SELECT nextval('s5_id_seq')")  # its lock on s5_id_seq stays held
        r = copy(src.dsn, dst.dsn, "--yes", "-p", "1", "--lock-timeout", "1s", state_dir=state)
    finally:
        holder.rollback()
        holder.close()
    assert r.returncode == 0, r.stderr
    assert checksums(dst) == checksums(src)
    assert [dst.scalar(f"SELECT last_value FROM s{i}_id_seq") for i in range(N)] == [
        100 + i for i in range(N)
    ]


def _copy_while_s5_waits(src_dsn: str, dst, state, meanwhile):
    """Run a copy (-p 1) while another destination session holds s5 open; once pgcopy's
    lock on s5 waits, run ``meanwhile()``, then release s5.  The copy's result."""
    import threading
    import time

    holder = dst.connect()
    holder.autocommit = False
    holder.cursor().execute("SELECT 1 FROM s5")  # pgcopy's lock on s5 waits for this one
    result = {}
    run = threading.Thread(
        target=lambda: result.update(
            r=copy(src_dsn, dst.dsn, "--yes", "-p", "1", "--lock-timeout", "60s", state_dir=state)
        )
    )
    run.start()
    try:
        deadline = time.monotonic() + 60
        while not dst.scalar("SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 's5'::regclass"):
            assert time.monotonic() < deadline and run.is_alive(), result
            time.sleep(0.05)
        meanwhile()
    finally:
        holder.rollback()
        holder.close()
        run.join(120)
    return result["r"]


def test_a_tables_sequences_are_read_from_the_source_when_its_load_commits(src, dst, state):
    """A table's own sequences are read from the source in its read transaction right
    before its load commits, not with the catalogs: a sequence that moved on in the
    meantime ends at its newer value (never behind the rows copied).  Here s5 waits for
    a lock held on the destination while the source's s5_id_seq moves on."""
    _serial_tables(src, dst)
    # after the snapshot and the plan
    r = _copy_while_s5_waits(src.dsn, dst, state, lambda: src.execute("SELECT setval('s5_id_seq', 500)"))
    assert r.returncode == 0, r.stderr
    assert checksums(dst) == checksums(src)
    assert dst.scalar("SELECT last_value FROM s5_id_seq") == 500
    assert [dst.scalar(f"SELECT last_value FROM s{i}_id_seq") for i in range(N) if i != 5] == [
        100 + i for i in range(N) if i != 5
    ]


def test_a_sequence_the_source_refuses_at_the_commit_fails_its_table_alone(src, dst, state):
    """When the read of a table's sequences at its commit fails (here the reader lost
    SELECT on s5_id_seq while s5 waited for its lock), that table rolls back fully old
    with its sequence untouched, the failure is the source's, and the other tables load."""
    _serial_tables(src, dst)
    src.execute(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'reader') THEN "
        "CREATE ROLE reader LOGIN PASSWORD 'reader-pw'; END IF; END $$;"
        + "".join(f"GRANT SELECT ON s{i}, s{i}_id_seq TO reader;" for i in range(N))
    )
    reader = src.cluster.dsn(src.dbname, user="reader", password="reader-pw")
    before = dst.query("SELECT last_value, is_called FROM s5_id_seq")
    r = _copy_while_s5_waits(
        reader, dst, state, lambda: src.execute("REVOKE SELECT ON s5_id_seq FROM reader")
    )
    assert r.returncode == 4, r.stderr
    assert "Failed public.s5 (source)" in r.stderr and "permission denied" in r.stderr
    assert dst.query("SELECT v FROM s5 ORDER BY id") == [("old",)] * 3
    assert dst.query("SELECT last_value, is_called FROM s5_id_seq") == before
    ours, theirs = checksums(dst), checksums(src)
    assert all(ours[t] == theirs[t] for t in theirs if t != "public.s5")


def test_delete_stands_in_for_truncate_only_where_it_changes_nothing_else(src, dst, state, tmp_path):
    """An ON DELETE rule would fire on DELETE (not on TRUNCATE): that table is truncated.
    A row-level ON DELETE trigger is held off like every user trigger."""
    for db in (src, dst):
        db.execute(
            "CREATE TABLE audit (what text);"
            "CREATE TABLE ruled (id int PRIMARY KEY, v text);"
            "CREATE TABLE trig (id int PRIMARY KEY, v text);"
        )
    src.execute("INSERT INTO ruled VALUES (1, 'new'); INSERT INTO trig VALUES (1, 'new')")
    dst.execute(
        "INSERT INTO ruled VALUES (1, 'old'), (2, 'old'); INSERT INTO trig VALUES (1, 'old'), (2, 'old');"
        "CREATE RULE log_delete AS ON DELETE TO ruled DO ALSO INSERT INTO audit VALUES ('rule: ' || OLD.id);"
        "CREATE FUNCTION log_trig() RETURNS trigger LANGUAGE plpgsql AS "
        "$$BEGIN INSERT INTO audit VALUES ('trigger: ' || OLD.id); RETURN OLD; END$$;"
        "CREATE TRIGGER log_delete BEFORE DELETE ON trig FOR EACH ROW EXECUTE FUNCTION log_trig();"
    )
    plan = tmp_path / "plan.json"
    r = copy(src.dsn, dst.dsn, "--dry-run", "--exclude", "audit", "--report", str(plan), state_dir=state)
    assert r.returncode == 0, r.stderr
    emptied = {t["table"]: t["emptied_by"] for t in json.loads(plan.read_text())["plan"]["tables"]}
    assert emptied == {"public.ruled": "truncate", "public.trig": "delete"}
    r = copy(src.dsn, dst.dsn, "--yes", "--exclude", "audit", state_dir=state)
    assert r.returncode == 0, r.stderr
    assert dst.query("SELECT * FROM audit") == []
    assert dst.query("SELECT * FROM ruled") == [(1, "new")] and dst.query("SELECT * FROM trig") == [
        (1, "new")
    ]
    assert dst.scalar("SELECT tgenabled FROM pg_trigger WHERE tgname = 'log_delete'") == "O"


def test_without_delete_privilege_the_table_is_truncated(src, dst, state):
    src.execute("CREATE TABLE nodel (id int PRIMARY KEY); INSERT INTO nodel VALUES (1), (2)")
    dst.execute(
        "CREATE TABLE nodel (id int PRIMARY KEY); INSERT INTO nodel VALUES (9);"
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'loader') THEN "
        "CREATE ROLE loader LOGIN PASSWORD 'loader-pw'; END IF; END $$;"
        "GRANT SELECT, INSERT, TRUNCATE ON nodel TO loader"
    )
    loader = dst.cluster.dsn(dst.dbname, user="loader", password="loader-pw")
    r = copy(src.dsn, loader, "--yes", "--include", "nodel", state_dir=state)
    assert r.returncode == 0, r.stderr
    assert dst.query("SELECT id FROM nodel ORDER BY id") == [(1,), (2,)]


def test_a_batched_table_past_the_spool_memory_spills_and_copies_whole(src, dst, state):
    """A small table's rows are spooled in memory up to SPOOL_MEMORY, then in a temporary
    file: compressible text TOASTed into a 100 kB heap streams ~2 MB, past the spool, and
    still lands whole inside its batch.  A worker imports tempfile only when that happens."""
    from pgcopy.batch import SPOOL_MEMORY

    for db in (src, dst):
        db.execute("CREATE TABLE big (id int PRIMARY KEY, v text); CREATE TABLE tiny (id int PRIMARY KEY)")
    src.execute(
        "INSERT INTO big SELECT g, repeat('x', 100000) FROM generate_series(1, 20) g; INSERT INTO tiny VALUES (1)"
    )
    assert src.scalar("SELECT pg_table_size('big')") < SPOOL_MEMORY
    r = copy(src.dsn, dst.dsn, "--yes", "-p", "1", state_dir=state)
    assert r.returncode == 0, r.stderr
    assert "(2 small tables in 1 batches)" in r.stderr
    assert checksums(dst) == checksums(src)


def test_the_spool_spills_past_its_limit():
    import subprocess
    import sys

    from pgcopy.batch import Spool

    spool = Spool(limit=10)
    for part in (b"12345", b"67890", b"abcdef"):
        spool.write(part)
    assert spool.spilled and spool.tell() == 16
    spool.seek(0)
    assert spool.read() == b"1234567890abcdef"
    spool.close()
    # the worker process's imports (what pgcopy.child starts) leave tempfile out
    probe = "import sys, pgcopy.worker; print('tempfile' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip()
        == "False"
    )


def test_the_per_table_statements_are_composed_without_parsing_a_template(src, monkeypatch):
    """The statements a worker makes for every table (its COPYs, the batch's LOCK,
    emptying, setvals and sequence read, ANALYZE) are put together with ``+``: SQL.format
    parses its template at each call, and that was a large part of a worker's CPU at
    thousands of tiny tables.  The text is what it was, identifiers quoted."""
    import psycopg2
    from psycopg2 import sql

    from pgcopy import batch, stream
    from pgcopy.task import CopyTask, SequenceValue

    def refuse(self, *a, **k):
        raise AssertionError("SQL.format in a per-table statement")

    key = ("we ird", 'Ta"ble')
    task = CopyTask(
        key=key,
        columns=("id", "Name"),
        triggers=(),
        est_rows=1,
        est_bytes=1,
        dest_est_rows=0,
        dest_est_bytes=0,
    )
    seq = SequenceValue(("public", "t_id_seq"), 5, True)
    conn = psycopg2.connect(src.dsn)
    try:
        monkeypatch.setattr(sql.SQL, "format", refuse)
        made = [
            stream.copy_to(task),
            stream.copy_from(task),
            batch._lock_nowait([key, ("public", "t")]),
            stream.setval(seq),
        ]
        made = [m.as_string(conn) for m in made]
        cur = conn.cursor()
        cur.execute("CREATE TEMP TABLE seqs (last_value bigint, is_called bool)")  # a stand-in FROM
        assert stream.read_sequences(cur, [("pg_temp", "seqs")]) == []
        monkeypatch.undo()
    finally:
        conn.close()
    assert made == [
        'COPY "we ird"."Ta""ble" ("id", "Name") TO STDOUT (FORMAT binary)',
        'COPY "we ird"."Ta""ble" ("id", "Name") FROM STDIN (FORMAT binary, FREEZE)',
        'SAVEPOINT pgcopy_lock; LOCK TABLE ONLY "we ird"."Ta""ble", "public"."t" IN ACCESS EXCLUSIVE MODE NOWAIT',
        'setval(\'"public"."t_id_seq"\', %s, %s)',
    ]


def test_a_partitioned_parents_sequence_is_set_when_one_of_its_leaves_loaded(src, dst, state):
    """A sequence owned by a partitioned parent is set after the load once any of its
    leaves has committed (here only one leaf is selected), and left alone when none has."""
    for db in (src, dst):
        db.execute(
            "CREATE TABLE pp (id serial, part int, PRIMARY KEY (id, part)) PARTITION BY LIST (part);"
            "CREATE TABLE pp1 PARTITION OF pp FOR VALUES IN (1); CREATE TABLE pp2 PARTITION OF pp FOR VALUES IN (2);"
            "CREATE TABLE qq (id serial, part int, PRIMARY KEY (id, part)) PARTITION BY LIST (part);"
            "CREATE TABLE qq1 PARTITION OF qq FOR VALUES IN (1);"
        )
    src.execute(
        "INSERT INTO pp (part) SELECT 1 + g % 2 FROM generate_series(1, 40) g; SELECT setval('pp_id_seq', 77);"
        "INSERT INTO qq (part) SELECT 1 FROM generate_series(1, 5) g; SELECT setval('qq_id_seq', 55)"
    )
    # qq1 fails on the destination alone: the source's ids 3 to 5 break a CHECK only it has
    dst.execute("INSERT INTO qq1 VALUES (2, 1); ALTER TABLE qq1 ADD CONSTRAINT low CHECK (id < 3)")
    r = copy(src.dsn, dst.dsn, "--yes", "--include", "public.pp1,public.qq1", state_dir=state)
    assert r.returncode == 4 and "Failed public.qq1 (destination)" in r.stderr, r.stderr
    assert (
        dst.scalar("SELECT count(*) FROM pp1") == 20 and dst.scalar("SELECT last_value FROM pp_id_seq") == 77
    )
    assert dst.scalar("SELECT last_value FROM qq_id_seq") == 1 and dst.query("TABLE qq1") == [(2, 1)]
