"""Issue 13: `pgcopy verify` and `copy --verify` prove a copy table by table."""

from __future__ import annotations

import json

import pytest

from tests.helpers import (
    checksums,
    copy,
    fk_state,
    load_fidelity,
    pgcopy,
    sequence_state,
    sessions_at_limits,
    trigger_state,
)


@pytest.fixture
def state(tmp_path):
    return tmp_path / "state"


def everything(db):
    return (checksums(db), fk_state(db), trigger_state(db), sequence_state(db))


@pytest.fixture
def copied(src, dst, state):
    load_fidelity(src, dst)
    # no-PK tables with duplicate rows and NULLs
    for db in (src, dst):
        db.execute("CREATE TABLE dup (a int, b text, c int)")
    src.execute("INSERT INTO dup VALUES (1, 'x', 2), (1, 'x', 2), (NULL, NULL, NULL), (3, 'y', 4)")
    r = copy(src.dsn, dst.dsn, "--yes", state_dir=state)
    assert r.returncode == 0, r.stderr
    return src, dst


def test_verify_after_a_faithful_copy_changes_nothing(copied, tmp_path):
    src, dst = copied
    before = (everything(src), everything(dst))
    report = tmp_path / "v.json"
    r = pgcopy("verify", "-s", src.dsn, "-d", dst.dsn, "--report", str(report), state_dir=None)
    assert r.returncode == 0, r.stderr
    assert "tables match" in r.stderr and "DIFFER" not in r.stderr
    data = json.loads(report.read_text())
    assert data["exit_code"] == 0 and all(t["status"] == "match" for t in data["tables"])
    assert {t["table"] for t in data["tables"]} >= {"public.dup", "public.customers", "public.events_2024"}
    assert (everything(src), everything(dst)) == before


PLANTED = {
    "changed value": "UPDATE dup SET b = 'z' WHERE a = 3",
    "missing row": "DELETE FROM dup WHERE a = 3",
    "extra row": "INSERT INTO dup VALUES (9, 'extra', 9)",
    "duplicated row": "INSERT INTO dup VALUES (3, 'y', 4)",
    "swapped columns": "UPDATE dup SET a = c, c = a WHERE a = 3",
    "removed duplicate": "DELETE FROM dup WHERE ctid = (SELECT min(ctid) FROM dup WHERE a = 1)",
}


@pytest.mark.parametrize("kind", PLANTED)
def test_each_planted_difference_is_found_and_named(copied, kind):
    src, dst = copied
    dst.execute(PLANTED[kind])
    r = pgcopy("verify", "-s", src.dsn, "-d", dst.dsn, state_dir=None)
    assert r.returncode == 4, r.stderr
    assert "DIFFER public.dup" in r.stderr
    assert "DIFFER public.customers" not in r.stderr


def test_sequences_and_constraint_validity_compared(copied):
    src, dst = copied
    dst.execute(
        "SELECT setval('customers_id_seq', 999);"
        "ALTER TABLE orders DROP CONSTRAINT orders_customer_id_fkey;"
        "ALTER TABLE orders ADD CONSTRAINT orders_customer_id_fkey FOREIGN KEY (customer_id) REFERENCES customers(id) NOT VALID"
    )
    r = pgcopy("verify", "-s", src.dsn, "-d", dst.dsn, state_dir=None)
    assert r.returncode == 4, r.stderr
    assert "sequence public.customers_id_seq" in r.stderr
    assert (
        "foreign key orders_customer_id_fkey on public.orders is valid on the source but NOT VALID"
        in r.stderr
    )


def test_copy_verify_reports_each_table(src, dst, state, tmp_path):
    load_fidelity(src, dst)
    report = tmp_path / "r.json"
    r = copy(src.dsn, dst.dsn, "--yes", "--verify", "--report", str(report), state_dir=state)
    assert r.returncode == 0, r.stderr
    data = json.loads(report.read_text())
    copied = [t for t in data["tables"] if t["status"] == "copied"]
    assert copied and all(t["verified"] and t["verify_seconds"] >= 0 for t in copied)


def test_verify_between_encodings_and_session_settings(clusters, tmp_path):
    from tests.test_fidelity import admin

    names = [f"venc_{i}_{id(tmp_path) % 10000}" for i in range(2)]
    admin(
        clusters[0],
        f"CREATE DATABASE {names[0]} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
    )
    admin(
        clusters[1],
        f"CREATE DATABASE {names[1]} ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
    )
    from tests.fix_clusters import Db

    src, dst = Db(clusters[0], names[0]), Db(clusters[1], names[1])
    try:
        for db in (src, dst):
            db.execute("CREATE TABLE t (id int, s text, f float8, iv interval, d date)")
        src.execute(
            "INSERT INTO t VALUES (1, 'café', 0.1, '-1 day -02:00', '2024-02-03'), (2, 'ÿ', 1e-300, '1 mon', NULL)"
        )
        src.execute(
            f"ALTER DATABASE {names[0]} SET IntervalStyle = 'sql_standard'; ALTER DATABASE {names[0]} SET DateStyle = 'SQL, DMY'"
        )
        dst.execute(
            f"ALTER DATABASE {names[1]} SET extra_float_digits = -2; ALTER DATABASE {names[1]} SET TimeZone = 'Asia/Tokyo'"
        )
        r = copy(src.dsn, dst.dsn, "--yes", "--verify", "--format", "text", state_dir=tmp_path / "state")
        assert r.returncode == 0, r.stderr
        r = pgcopy("verify", "-s", src.dsn, "-d", dst.dsn, state_dir=None)
        assert r.returncode == 0, r.stderr
        dst.execute("UPDATE t SET s = 'cafe' WHERE id = 1")
        r = pgcopy("verify", "-s", src.dsn, "-d", dst.dsn, state_dir=None)
        assert r.returncode == 4 and "DIFFER public.t" in r.stderr, r.stderr
    finally:
        admin(clusters[0], f"DROP DATABASE {names[0]} WITH (FORCE)")
        admin(clusters[1], f"DROP DATABASE {names[1]} WITH (FORCE)")


def test_verify_bad_input_and_missing_table(copied):
    src, dst = copied
    dst.execute("DROP TABLE dup")
    r = pgcopy("verify", "-s", src.dsn, "-d", dst.dsn, state_dir=None)
    assert r.returncode == 4 and "MISSING public.dup" in r.stderr, r.stderr
    r = pgcopy(
        "verify", "-s", src.dsn, "-d", "host=127.0.0.1 port=1 dbname=x connect_timeout=2", state_dir=None
    )
    assert r.returncode == 1 and "cannot connect to destination" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("side", ["source", "destination"])
def test_a_table_locked_elsewhere_is_an_error_after_the_lock_timeout(copied, side):
    """A table under an ALTER or LOCK TABLE on either side is reported as an error once
    --lock-timeout has passed, and every other table is still compared; verify used to
    wait for as long as the lock was held, silently."""
    import psycopg2

    src, dst = copied
    db = src if side == "source" else dst
    holder = psycopg2.connect(db.dsn)
    holder.cursor().execute("LOCK TABLE dup IN ACCESS EXCLUSIVE MODE")
    try:
        r = pgcopy("verify", "-s", src.dsn, "-d", dst.dsn, "--lock-timeout", "1s", state_dir=None, timeout=60)
    finally:
        holder.close()
    assert r.returncode == 4, r.stderr
    assert "ERROR public.dup: canceling statement due to lock timeout" in r.stderr, r.stderr
    assert "match  public.customers" in r.stderr


def test_verify_renews_its_sessions_as_it_goes(copied, monkeypatch):
    """verify's readers replace their sessions as the workers do (see SESSION_RELATIONS),
    each in the snapshot: 2 relations a table, so a new pair every 2 tables here."""
    src, dst = copied

    def run() -> None:
        r = pgcopy("verify", "-s", src.dsn, "-d", dst.dsn, "-p", "2", state_dir=None)
        assert r.returncode == 0, r.stderr
        assert "tables match" in r.stderr and "DIFFER" not in r.stderr

    opened = sessions_at_limits((src, dst), ("1000000", "4"), monkeypatch, run)
    tables = src.scalar(
        "SELECT count(*) FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace"
    )
    grew = [n - m for n, m in zip(opened["4"], opened["1000000"], strict=True)]
    # a thread of k tables renews its pair (k - 1) // 2 times; 2 threads
    assert min(grew) >= tables // 2 - 2, (opened, tables)
