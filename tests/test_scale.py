"""Issue 11: thousands of tables on a server with default lock settings and few
connections; pgcopy's sessions stay inside their lock budget on both sides, and the source's
exporting transaction ends while the last tables are still loading."""

from __future__ import annotations

import threading
import time

import psycopg2
import pytest

from pgcopy.sandbox import FAST_SETTINGS, throwaway_cluster
from tests.fix_clusters import Db
from tests.helpers import OWNER, OWNER_PW, checksums, copy

TABLES = 600  # with max_connections = 30 the lock table holds 64 x 30 = 1,920 entries


@pytest.fixture(scope="module")
def small_clusters():
    settings = dict(FAST_SETTINGS, max_connections="30", max_locks_per_transaction="64")
    with throwaway_cluster(settings) as a, throwaway_cluster(settings) as b:
        yield a, b


def _schema(n: int) -> str:
    """A chain of n tables, each referencing the previous one, a self-reference every 50
    and a 3-table cycle; every table has a serial."""
    parts = ["CREATE SCHEMA s2; CREATE TABLE t0 (id serial PRIMARY KEY, v int);"]
    for i in range(1, n):
        schema = "s2." if i % 7 == 0 else ""
        prev = f"{'s2.' if (i - 1) % 7 == 0 and i - 1 else ''}t{i - 1}"
        self_ref = f", parent int REFERENCES {schema}t{i}(id)" if i % 50 == 0 else ""
        parts.append(
            f"CREATE TABLE {schema}t{i} (id serial PRIMARY KEY, prev int REFERENCES {prev}(id){self_ref});"
        )
    parts.append(
        "CREATE TABLE c1 (id int PRIMARY KEY, nxt int); CREATE TABLE c2 (id int PRIMARY KEY, nxt int REFERENCES c1(id));"
        "CREATE TABLE c3 (id int PRIMARY KEY, nxt int REFERENCES c2(id));"
        "ALTER TABLE c1 ADD FOREIGN KEY (nxt) REFERENCES c3(id);"
    )
    return "\n".join(parts)


def _data(n: int) -> str:
    parts = ["INSERT INTO t0 (v) SELECT g FROM generate_series(1, 5) g;"]
    for i in range(1, n):
        name = f"{'s2.' if i % 7 == 0 else ''}t{i}"
        parts.append(f"INSERT INTO {name} (prev) SELECT g FROM generate_series(1, 5) g;")
    parts.append(
        "INSERT INTO c1 VALUES (1, NULL); INSERT INTO c2 VALUES (1, 1); INSERT INTO c3 VALUES (1, 1);"
    )
    parts.append("UPDATE c1 SET nxt = 1;")
    return "\n".join(parts)


def _fresh(cluster, name: str, owner: str | None) -> Db:
    conn = psycopg2.connect(cluster.dsn("postgres"))
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    cur.execute(f"CREATE DATABASE {name}")
    if owner:
        cur.execute(
            f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{owner}') THEN "
            f"CREATE ROLE {owner} LOGIN PASSWORD '{OWNER_PW}'; END IF; END $$"
        )
        cur.execute(f"ALTER DATABASE {name} OWNER TO {owner}")
    conn.close()
    return Db(cluster, name)


class LockWatch(threading.Thread):
    """Samples pg_locks on the source: the most relation locks any pgcopy session held."""

    def __init__(self, db: Db):
        super().__init__(daemon=True)
        self.db, self.peak, self.stop, self.exporter_gone_while_loading = db, 0, False, False

    def run(self) -> None:
        conn = psycopg2.connect(self.db.dsn)
        conn.autocommit = True
        cur = conn.cursor()
        while not self.stop:
            cur.execute(
                """SELECT coalesce(max(n), 0) FROM (
                     SELECT count(*) n FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                      WHERE a.application_name LIKE 'pgcopy:%%' GROUP BY l.pid) x"""
            )
            self.peak = max(self.peak, cur.fetchone()[0])
            time.sleep(0.02)
        conn.close()


@pytest.mark.parametrize("as_owner", [True, False], ids=["owner", "superuser"])
def test_many_tables_on_a_default_lock_table(small_clusters, tmp_path, as_owner):
    owner = OWNER if as_owner else None
    src = _fresh(small_clusters[0], "scale_src", owner)
    dst = _fresh(small_clusters[1], "scale_dst", owner)
    prefix = f"SET ROLE {owner};\n" if owner else ""
    for db in (src, dst):
        db.execute(prefix + _schema(TABLES))
    src.execute(prefix + _data(TABLES))
    fks = dst.scalar("SELECT count(*) FROM pg_constraint WHERE contype = 'f'")
    assert fks > 600
    watch = LockWatch(src)
    watch.start()
    try:
        dsn = (
            (lambda db: db.cluster.dsn(db.dbname, user=OWNER, password=OWNER_PW))
            if owner
            else (lambda db: db.dsn)
        )
        r = copy(dsn(src), dsn(dst), "--yes", "-p", "4", "--debug", state_dir=tmp_path / "state", timeout=600)
    finally:
        watch.stop = True
        watch.join(5)
    assert r.returncode == 0, r.stderr[-3000:]
    assert checksums(dst) == checksums(src)
    assert dst.scalar("SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND convalidated") == fks
    assert dst.scalar("SELECT last_value FROM t0_id_seq") == 5
    # one table at a time per worker, and the coordinator's catalog reads: well inside 64
    assert 0 < watch.peak <= 40, watch.peak
    # the exporting transaction ended before the load did
    lines = r.stderr.splitlines()
    released = next(i for i, line in enumerate(lines) if "source snapshot released" in line)
    last_done = max(i for i, line in enumerate(lines) if "Completed" in line)
    assert released < last_done
