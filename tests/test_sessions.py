"""What the run's other sessions take from its first connections: libpq's "prefer" tries of
SSL and GSSAPI encryption are skipped only where the first connection showed the server
does without them; an encrypted server keeps every session encrypted."""

from __future__ import annotations

import os
import pwd
import re
import subprocess

import psycopg2
import pytest

from pgcopy.connections import Session, connect, settled
from tests.helpers import checksums, copy


def _params(dsn: str) -> dict:
    return psycopg2.extensions.parse_dsn(dsn)


def test_a_server_without_ssl_is_not_asked_again(src):
    conn = psycopg2.connect(src.dsn)
    try:
        assert not conn.info.ssl_in_use
        params = _params(settled(src.dsn, conn))
        assert params["sslmode"] == "disable" and params["gssencmode"] == "disable"
        assert params["dbname"] == src.dbname  # the rest of the string as given
        assert _params(settled(src.uri, conn))["sslmode"] == "disable"  # a URI too
    finally:
        conn.close()


def test_modes_other_than_prefer_and_host_lists_are_left_alone(src):
    for extra in ("sslmode=allow gssencmode=disable", "sslmode=disable"):
        dsn = f"{src.dsn} {extra}"
        conn = psycopg2.connect(dsn)
        try:
            assert _params(settled(dsn, conn))["sslmode"] == _params(dsn)["sslmode"]
        finally:
            conn.close()
    port = src.cluster.port
    two = f"host=127.0.0.1,127.0.0.1 port={port},{port} dbname={src.dbname} user=postgres"
    conn = psycopg2.connect(two)
    try:
        assert settled(two, conn) == two  # the next session may reach the other host
    finally:
        conn.close()


@pytest.fixture
def ssl_cluster(tmp_path):
    """A destination that accepts SSL (a throwaway self-signed certificate) and logs each
    connection with its SSL state."""
    from pgcopy.sandbox import FAST_SETTINGS, throwaway_cluster

    with throwaway_cluster(dict(FAST_SETTINGS, log_connections="on")) as cluster:
        data = cluster.datadir
        subprocess.run(
            ["openssl", "req", "-new", "-x509", "-days", "2", "-nodes", "-subj", "/CN=127.0.0.1",
             "-keyout", str(data / "server.key"), "-out", str(data / "server.crt")],
            check=True, capture_output=True,
        )  # fmt: skip
        if cluster.owner:
            pw = pwd.getpwnam(cluster.owner)
            for name in ("server.key", "server.crt"):
                os.chown(data / name, pw.pw_uid, pw.pw_gid)
        os.chmod(data / "server.key", 0o600)
        conn = psycopg2.connect(cluster.dsn())
        conn.autocommit = True
        conn.cursor().execute("ALTER SYSTEM SET ssl = on")
        conn.cursor().execute("SELECT pg_reload_conf()")
        conn.close()
        yield cluster


def test_an_encrypted_destination_keeps_every_session_encrypted(src, ssl_cluster, state_dir):
    from tests.fix_clusters import Db

    dst = Db(ssl_cluster, "postgres")
    conn = psycopg2.connect(dst.dsn)
    try:
        assert conn.info.ssl_in_use, "the test server does not speak SSL"
        params = _params(settled(dst.dsn, conn))
        assert "sslmode" not in params and params["gssencmode"] == "disable"  # SSL stays "prefer"
    finally:
        conn.close()
    ddl = "".join(f"CREATE TABLE t{i} (id int PRIMARY KEY REFERENCES t0, v text);" for i in range(1, 12))
    src.execute(
        "CREATE TABLE t0 (id int PRIMARY KEY);" + ddl + "INSERT INTO t0 SELECT generate_series(1, 50);"
    )
    src.execute(
        "".join(f"INSERT INTO t{i} SELECT g, 'v' FROM generate_series(1, 50) g;" for i in range(1, 12))
    )
    dst.execute("CREATE TABLE t0 (id int PRIMARY KEY);" + ddl)
    r = copy(src.dsn, dst.dsn, "--yes", "-p", "3", state_dir=state_dir)
    assert r.returncode == 0, r.stderr
    assert checksums(dst) == checksums(src)
    ours = [
        line
        for line in ssl_cluster.logfile.read_text().splitlines()
        if "connection authorized" in line and "application_name=pgcopy:" in line
    ]
    assert len(ours) >= 4, ours  # the coordinator's, its FK sessions' and three workers'
    assert all(re.search(r"SSL enabled", line) for line in ours), ours


@pytest.fixture
def state_dir(tmp_path):
    return tmp_path / "state"


def test_sessions_are_pinned_whatever_the_database_and_role_set(src, dst):
    """The database sets another money format and isolation, the role another isolation:
    pgcopy's sessions read and write money as 'C' formats it, the source in repeatable
    read, the destination in read committed (what its loads and FK checks assume)."""
    for db, isolation in ((src, "read committed"), (dst, "serializable")):
        db.execute(
            f"ALTER DATABASE {db.dbname} SET lc_monetary = 'C.utf8';"
            f"ALTER DATABASE {db.dbname} SET default_transaction_isolation = '{isolation}'"
        )
    seen = {}
    for db, side in ((src, "source"), (dst, "destination")):
        conn = psycopg2.connect(db.dsn)  # what a session gets unpinned
        with conn.cursor() as cur:
            cur.execute("SHOW lc_monetary")
            assert cur.fetchone()[0] == "C.utf8"
        conn.close()
        conn = connect(db.dsn, side, Session.new())
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT current_setting('lc_monetary'), current_setting('default_transaction_isolation')"
                )
                seen[side] = cur.fetchone()
        finally:
            conn.close()
    assert seen == {"source": ("C", "repeatable read"), "destination": ("C", "read committed")}
