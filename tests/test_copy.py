"""End-to-end copies between two real clusters."""

import os
import pwd
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg2
import pytest

from pgcopy import sandbox
from tests.helpers import (
    answer_prompt,
    checksums,
    copy,
    fk_state,
    index_state,
    is_called,
    load_fidelity,
    owner_dsn,
    sequence_state,
    trigger_state,
)


@pytest.fixture
def state(tmp_path):
    return tmp_path / "state"


def assert_faithful(src, dst, fks_before, triggers_before, indexes_before=None):
    assert checksums(dst) == checksums(src)
    assert fk_state(dst) == fks_before
    assert trigger_state(dst) == triggers_before
    assert sequence_state(dst) == sequence_state(src)
    assert is_called(dst, "standalone_seq") == is_called(src, "standalone_seq")
    if indexes_before is not None:
        assert index_state(dst) == indexes_before


@pytest.mark.parametrize("role", ["superuser", "owner"])
def test_fidelity_copy(src, dst, state, role):
    load_fidelity(src, dst, owner=None if role == "superuser" else "app_owner")
    fks, trigs, idx = fk_state(dst), trigger_state(dst), index_state(dst)
    assert checksums(dst) != checksums(src)
    s, d = (src.dsn, dst.dsn) if role == "superuser" else (owner_dsn(src), owner_dsn(dst))
    r = copy(s, d, "--yes", "-p", "3", state_dir=state)
    assert r.returncode == 0, r.stderr
    assert_faithful(src, dst, fks, trigs, idx)
    # the user trigger did not fire during the load: names are not shouted
    assert dst.scalar("SELECT count(*) FROM customers WHERE name LIKE '%!'") == 0
    # the NOT VALID FK stays NOT VALID, its violating row copied
    assert dst.scalar("SELECT convalidated FROM pg_constraint WHERE conname = 'loose_cust_fk'") is False
    assert dst.scalar("SELECT count(*) FROM loose WHERE cust = 999999") == 1
    # inheritance: the parent got only its own rows, the stale parent row is gone
    assert dst.query("SELECT id FROM ONLY animals") == [(1,)]
    # identity/serial sequences continue after the copied rows
    dst.execute("INSERT INTO orders (customer_id, amount) VALUES (1, 1)")
    assert dst.scalar("SELECT max(id) FROM orders") == 1201
    # matview refreshed with the new rows; tables analyzed
    assert dst.scalar("SELECT n FROM customer_counts") == 500
    assert dst.scalar("SELECT reltuples FROM pg_class WHERE oid = 'orders'::regclass") == 1200
    assert "Rows copied:" in r.stdout and "5,566" in r.stdout
    assert not list(state.glob("*.json")), "journal removed after a complete restore"


def test_include_partitioned_parent_and_empty_source(src, dst, state):
    load_fidelity(src, dst)
    r = copy(
        src.dsn,
        dst.dsn,
        "--yes",
        "--include",
        "events,empty_src,customers,event_notes,xschema,loose,orders,order_items",
        state_dir=state,
    )
    assert r.returncode == 0, r.stderr
    ours, theirs = checksums(dst), checksums(src)
    for t in ("public.events_2024", "public.events_2025", "public.empty_src", "public.customers"):
        assert ours[t] == theirs[t]
    assert ours["public.empty_src"][0] == 0  # stale rows gone although the source is empty
    assert ours["public.tree"][0] == 0  # not selected: untouched (empty on the destination)


def test_dry_run_changes_nothing(src, dst, state):
    load_fidelity(src, dst)
    before = (checksums(dst), fk_state(dst), trigger_state(dst), sequence_state(dst))
    r = copy(src.dsn, dst.dsn, "--dry-run", state_dir=state)
    assert r.returncode == 0, r.stderr
    assert "Foreign keys to drop and restore: 10" in r.stdout
    assert "public.customers" in r.stdout and "2 triggers held off" in r.stdout
    assert (checksums(dst), fk_state(dst), trigger_state(dst), sequence_state(dst)) == before
    assert not state.exists() or not list(state.iterdir())


def test_confirmation_declined_and_accepted(src, dst, state, monkeypatch):
    """The prompt needs a terminal: drive it through a pty."""
    load_fidelity(src, dst)
    before = checksums(dst)
    args = ["copy", "-s", src.uri, "-d", dst.dsn + " password=topsecret", "--state-dir", str(state)]

    def run(answer: str) -> tuple[int, str]:
        return answer_prompt(args, answer)

    code, err = run("no")
    assert code == 3, err
    assert f"Destination: postgres@127.0.0.1:{dst.cluster.port}/{dst.dbname}" in err
    assert "topsecret" not in err and "public.customers: 1 rows now, 500 from the source" in err
    assert checksums(dst) == before
    code, err = run("yes")
    assert code == 0, err
    assert checksums(dst) == checksums(src)


def test_index_rebuild_keeps_every_index_exact(src, dst, state):
    load_fidelity(src, dst, owner="app_owner")
    before = index_state(dst)
    oids = dict(
        dst.query(
            "SELECT indexrelid::regclass::text, indexrelid::int FROM pg_index WHERE indrelid = 'bookings'::regclass"
        )
    )
    r = copy(owner_dsn(src), owner_dsn(dst), "--dry-run", "--index-rebuild-threshold", "0", state_dir=state)
    assert re.search(r"public\.bookings .* 5 indexes rebuilt after the load", r.stdout), r.stdout
    r = copy(owner_dsn(src), owner_dsn(dst), "--yes", "--index-rebuild-threshold", "0", state_dir=state)
    assert r.returncode == 0, r.stderr
    assert checksums(dst) == checksums(src)
    assert index_state(dst) == before
    after = dict(
        dst.query(
            "SELECT indexrelid::regclass::text, indexrelid::int FROM pg_index WHERE indrelid = 'bookings'::regclass"
        )
    )
    assert after.keys() == oids.keys() and all(after[k] != oids[k] for k in oids)  # really rebuilt
    # the default threshold (64 MB) leaves small tables' indexes alone
    r = copy(owner_dsn(src), owner_dsn(dst), "--yes", state_dir=state)
    assert (
        r.returncode == 0
        and dict(
            dst.query(
                "SELECT indexrelid::regclass::text, indexrelid::int FROM pg_index WHERE indrelid = 'bookings'::regclass"
            )
        )
        == after
    )


def test_copy_over_ssl_with_workers(tmp_path):
    """pgcopy hides Python's ssl module from psycopg2's first import (pgcopy/__init__.py):
    libpq does TLS with its own OpenSSL, so sslmode=require still works for the
    coordinator and every worker, on two servers whose session defaults differ."""
    if not shutil.which("openssl"):
        pytest.skip("no openssl command to make a certificate")
    certs = Path(tempfile.mkdtemp(prefix="pgcopy-certs-"))  # the server's user must reach it
    key, crt = certs / "server.key", certs / "server.crt"
    subprocess.run(
        ["openssl", "req", "-new", "-x509", "-days", "2", "-nodes", "-subj", "/CN=127.0.0.1"]
        + ["-keyout", str(key), "-out", str(crt)],
        check=True,
        capture_output=True,
    )
    key.chmod(0o600)
    certs.chmod(0o755)
    owner = sandbox._run_as()  # the user the servers run as, when the tests run as root
    if owner:
        pw = pwd.getpwnam(owner)
        for p in (key, crt):
            os.chown(p, pw.pw_uid, pw.pw_gid)
    tls = dict(sandbox.FAST_SETTINGS, ssl="on", ssl_cert_file=str(crt), ssl_key_file=str(key))
    src = dst = None
    try:
        src = sandbox.start_cluster(dict(tls, statement_timeout="2s", TimeZone="Asia/Kolkata"))
        dst = sandbox.start_cluster(dict(tls, DateStyle="SQL, DMY", idle_in_transaction_session_timeout="1s"))
        for c in (src, dst):
            with psycopg2.connect(c.dsn()) as conn, conn.cursor() as cur:
                cur.execute(
                    "CREATE TABLE t (id serial PRIMARY KEY, at timestamptz);"
                    "CREATE TABLE u (id int REFERENCES t)"
                )
                if c is src:
                    cur.execute(
                        "INSERT INTO t (at) SELECT '2026-01-02 03:04:05+00' FROM generate_series(1, 300);"
                        "INSERT INTO u SELECT id FROM t"
                    )
            conn.close()
        s, d = src.dsn() + " sslmode=require", dst.dsn() + " sslmode=require"
        r = copy(s, d, "--yes", "-p", "2", state_dir=tmp_path / "state")
        assert r.returncode == 0, r.stderr
        conn = psycopg2.connect(d)
        cur = conn.cursor()
        cur.execute("SELECT count(*), min(at AT TIME ZONE 'UTC')::text FROM t JOIN u USING (id)")
        assert cur.fetchone() == (300, "2026-01-02 03:04:05")
        assert conn.info.ssl_in_use
        conn.close()
    finally:
        for c in (src, dst):
            if c is not None:
                c.destroy()
        shutil.rmtree(certs, ignore_errors=True)


def test_the_prompt_does_not_wait_for_a_table_locked_elsewhere(src, dst, state):
    """The prompt counts small tables' rows; one locked on the source shows its estimate,
    marked, instead of holding the prompt until the lock is released."""
    import psycopg2

    load_fidelity(src, dst)
    holder = psycopg2.connect(src.dsn)
    holder.cursor().execute("LOCK TABLE customers IN ACCESS EXCLUSIVE MODE")
    try:
        code, err = answer_prompt(["copy", "-s", src.dsn, "-d", dst.dsn, "--state-dir", str(state)], "no")
    finally:
        holder.close()
    assert code == 3, err
    line = next(line for line in err.splitlines() if "public.customers:" in line)
    assert "(locked elsewhere) from the source" in line, line
