"""Connection poolers in front of either server (a real PgBouncer): one that passes server
sessions between clients (transaction mode) is refused before pgcopy sets anything, since
every session setting would stay behind for the pooler's next client; a session-mode pool
is used as it is."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest

from pgcopy.sandbox import free_port
from tests.helpers import checksums, copy, pgcopy

REFUSED = "through a pooler that passes server sessions between clients"


@dataclass(frozen=True)
class Pool:
    dsn: str

    def query(self, query: str) -> list[tuple]:
        conn = psycopg2.connect(self.dsn)
        conn.autocommit = True
        try:
            cur = conn.cursor()
            cur.execute(query)
            return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def settings(self, names: str) -> set[tuple]:
        """What the pool's server sessions show a new client, over a few transactions."""
        return {row for _ in range(6) for row in self.query(f"SELECT {names}")}


def pgbouncer_binary() -> str:
    exe = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.access(exe, os.X_OK):
        if os.geteuid() == 0:  # bin/setup-venv installs it as root: its absence is a failure
            pytest.fail("pgbouncer is not installed (bin/setup-venv installs it when run as root)")
        pytest.skip("pgbouncer is not installed (bin/setup-venv installs it when run as root)")
    return exe


@contextmanager
def pgbouncer(db, mode: str, pool_size: int):
    """A PgBouncer in ``mode`` in front of ``db`` (the superuser, trusted on 127.0.0.1)."""
    exe = pgbouncer_binary()
    root = Path(tempfile.mkdtemp(prefix="pgcopy-pgbouncer-"))
    port = free_port()
    (root / "users.txt").write_text('"postgres" ""\n')
    (root / "pgbouncer.ini").write_text(
        f"[databases]\n{db.dbname} = host=127.0.0.1 port={db.cluster.port} dbname={db.dbname}\n"
        f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {root}/users.txt\npool_mode = {mode}\n"
        f"default_pool_size = {pool_size}\nmax_client_conn = 100\n"
        f"logfile = {root}/pgbouncer.log\npidfile = {root}/pgbouncer.pid\n"
    )
    owner = db.cluster.owner  # pgbouncer, like postgres, refuses to run as root
    if owner:
        pw = pwd.getpwnam(owner)
        for path in (root, *root.iterdir()):
            os.chown(path, pw.pw_uid, pw.pw_gid)
    prefix = ["runuser", "-u", owner, "--"] if owner else []
    proc = subprocess.Popen([*prefix, exe, str(root / "pgbouncer.ini")], stderr=subprocess.PIPE)
    pool = Pool(f"host=127.0.0.1 port={port} dbname={db.dbname} user=postgres")
    try:
        end = time.monotonic() + 15
        while True:
            try:
                pool.query("SELECT 1")
                break
            except psycopg2.OperationalError:
                if proc.poll() is not None or time.monotonic() > end:
                    raise AssertionError(f"pgbouncer did not start: {proc.stderr.read()!r}") from None
                time.sleep(0.1)
        yield pool
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(root, ignore_errors=True)


def load(src, dst) -> None:
    ddl = "CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id int REFERENCES a, x float8);"
    for db in (src, dst):
        db.execute(ddl)
    src.execute(
        "INSERT INTO a SELECT g, 'v' || g FROM generate_series(1, 300) g;"
        "INSERT INTO b SELECT g, g / 7.0 FROM generate_series(1, 300) g"
    )
    dst.execute("INSERT INTO a VALUES (1, 'old'); INSERT INTO b VALUES (1, 0.5)")


def test_a_source_behind_a_transaction_pooler_is_refused_and_its_sessions_left_alone(src, dst, tmp_path):
    """Before: the copy succeeded, and every client of the source's pooler then got
    read-only transactions ("cannot execute INSERT in a read-only transaction") and
    row_security off, from the server session pgcopy had set up."""
    load(src, dst)
    before = checksums(dst)
    with pgbouncer(src, "transaction", pool_size=2) as pool:
        r = copy(pool.dsn, dst.dsn, "--yes", "-p", "2", state_dir=tmp_path / "state")
        assert r.returncode == 2, r.stderr
        assert REFUSED in r.stderr and "Traceback" not in r.stderr, r.stderr
        listed = pgcopy("list", "-s", pool.dsn, state_dir=None)  # read-only commands too
        assert listed.returncode == 2 and REFUSED in listed.stderr, listed.stderr
        shown = "current_setting('default_transaction_read_only'), current_setting('row_security')"
        assert pool.settings(shown) == {("off", "on")}
        pool.query("CREATE TABLE written_through_the_pool (id int)")  # the application's writes
    assert checksums(dst) == before


@pytest.mark.parametrize("mode", ["transaction", "statement"])
def test_a_destination_behind_a_transaction_pooler_is_refused_unchanged(src, dst, tmp_path, mode):
    """Statement pooling refuses transaction blocks: the probe reads the server's pid
    without one, so it is refused as transaction pooling is."""
    load(src, dst)
    before = checksums(dst)
    with pgbouncer(dst, mode, pool_size=2) as pool:
        r = copy(src.dsn, pool.dsn, "--yes", "-p", "2", state_dir=tmp_path / "state")
        assert r.returncode == 2, r.stderr
        assert "the destination" in r.stderr and REFUSED in r.stderr, r.stderr
        default = dst.cluster.settings.get("extra_float_digits", "1")  # the server's, not pgcopy's 3
        assert default != "3" and pool.settings("current_setting('extra_float_digits')") == {(default,)}
    assert checksums(dst) == before
    assert len(dst.query("SELECT 1 FROM pg_constraint WHERE contype = 'f'")) == 1


def test_a_session_pooler_is_used_as_it_is(src, dst, tmp_path):
    load(src, dst)
    with pgbouncer(src, "session", pool_size=20) as pool:
        r = copy(pool.dsn, dst.dsn, "--yes", "-p", "2", state_dir=tmp_path / "state")
        assert r.returncode == 0, r.stderr
        # the pool resets a server session when its client leaves (DISCARD ALL)
        assert pool.settings("current_setting('default_transaction_read_only')") == {("off",)}
    assert checksums(dst) == checksums(src)
