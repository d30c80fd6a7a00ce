"""Helpers for end-to-end copy tests: load the fidelity schema, run pgcopy, compare states."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCHEMA = (HERE / "fidelity.sql").read_text()
DATA = (HERE / "fidelity_data.sql").read_text()
OWNER = "app_owner"
OWNER_PW = "owner-secret"


def load_fidelity(src, dst, owner: str | None = None) -> None:
    """Schema on both sides (as ``owner`` if given), data on the source, stale rows on the destination."""
    for db in (src, dst):
        if owner:
            db.execute(
                f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{owner}') THEN "
                f"CREATE ROLE {owner} LOGIN PASSWORD '{OWNER_PW}'; END IF; END $$"
            )
            db.execute(f'ALTER DATABASE "{db.dbname}" OWNER TO {owner}')
        prefix = f"SET ROLE {owner};\n" if owner else ""
        db.execute(prefix + SCHEMA)
    src.execute((f"SET ROLE {owner};\n" if owner else "") + DATA)
    dst.execute(
        "ALTER TABLE customers DISABLE TRIGGER customers_shout;"
        "INSERT INTO empty_src VALUES (1, 'stale'); INSERT INTO customers (name) VALUES ('stale');"
        "INSERT INTO animals VALUES (99, 'stale parent row');"
        "ALTER TABLE customers ENABLE TRIGGER customers_shout;"
    )


def owner_dsn(db) -> str:
    return db.cluster.dsn(db.dbname, user=OWNER, password=OWNER_PW)


def checksums(db) -> dict[str, tuple[int, str]]:
    """Per table (leaf or plain): row count and an md5 over the sorted row texts (ONLY the table)."""
    tables = db.query(
        """SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_' ORDER BY 1"""
    )
    out = {}
    for (name,) in tables:
        out[name] = tuple(
            db.query(
                f"SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM ONLY {name} t"
            )[0]
        )
    return out


def fk_state(db) -> list[tuple]:
    return db.query(
        """SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), convalidated
             FROM pg_constraint WHERE contype = 'f' ORDER BY 1, 2, 3"""
    )


def index_state(db) -> list[tuple]:
    """Every index: definition, constraint, CLUSTER/REPLICA IDENTITY marks and comments."""
    return db.query(
        """SELECT i.indrelid::regclass::text, pg_get_indexdef(i.indexrelid), c.conname,
                  pg_get_constraintdef(c.oid), i.indisclustered, i.indisreplident, i.indisvalid,
                  obj_description(i.indexrelid, 'pg_class'), obj_description(c.oid, 'pg_constraint'),
                  (SELECT relreplident FROM pg_class WHERE oid = i.indrelid)
             FROM pg_index i LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid
                  AND c.contype IN ('p', 'u', 'x')
            WHERE i.indrelid::regclass::text NOT LIKE 'pg_%' ORDER BY 1, 2"""
    )


def trigger_state(db) -> list[tuple]:
    return db.query(
        "SELECT tgrelid::regclass::text, tgname, tgenabled FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1, 2"
    )


def sequence_state(db) -> list[tuple]:
    return db.query("SELECT schemaname, sequencename, last_value FROM pg_sequences ORDER BY 1, 2")


def is_called(db, seq: str) -> bool:
    return db.scalar(f"SELECT is_called FROM {seq}")


def pgcopy(
    *args: str, state_dir, input: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    state = ["--state-dir", str(state_dir)] if state_dir is not None else []
    return subprocess.run(
        [sys.executable, "-m", "pgcopy", *args, *state],
        cwd=ROOT,
        capture_output=True,
        text=True,
        input=input,
        timeout=timeout,
    )


def answer_prompt(args: list[str], answer: str, timeout: float = 60) -> tuple[int, str]:
    """Run ``pgcopy *args`` on a pty (the prompt needs a terminal), type ``answer``;
    (exit code, stderr)."""
    import os
    import pty

    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pgcopy", *args],
            cwd=ROOT,
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        os.close(slave)
        os.write(master, (answer + "\n").encode())
        _, err = proc.communicate(timeout=timeout)
    finally:
        os.close(master)
    return proc.returncode, err


def descendants(pid: int) -> dict[int, str]:
    """Every live process below ``pid`` (read from /proc), with its command line."""
    parents, cmdlines = {}, {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                parents[int(p.name)] = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmdlines[int(p.name)] = (p / "cmdline").read_text().replace("\0", " ")
            except (OSError, IndexError, ValueError):
                pass
    out: dict[int, str] = {}
    todo = [pid]
    while todo:
        parent = todo.pop()
        kids = [c for c, pp in parents.items() if pp == parent]
        out.update((c, cmdlines.get(c, "")) for c in kids)
        todo += kids
    return out


def copy(src_dsn: str, dst_dsn: str, *extra: str, state_dir, **kw) -> subprocess.CompletedProcess:
    return pgcopy("copy", "-s", src_dsn, "-d", dst_dsn, *extra, state_dir=state_dir, **kw)


PGCOPY_BACKENDS = "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgcopy:%%'"


def sessions_opened(conn) -> int:
    """Sessions ever opened in ``conn``'s database, once pgcopy's have all ended (each
    backend reports its own as it exits); ``conn``, the test's own, opens none."""
    cur = conn.cursor()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        cur.execute(PGCOPY_BACKENDS)
        if not cur.fetchone()[0]:
            break
        time.sleep(0.1)
    cur.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
    return cur.fetchone()[0]


def sessions_at_limits(dbs, limits, monkeypatch, run) -> dict[str, list[int]]:
    """For each PGCOPY_SESSION_RELATIONS of ``limits``: ``run()``, then the sessions it
    opened in each of ``dbs``."""
    watch = [db.connect() for db in dbs]
    opened = {}
    try:
        for limit in limits:
            monkeypatch.setenv("PGCOPY_SESSION_RELATIONS", limit)
            before = [sessions_opened(c) for c in watch]
            run()
            opened[limit] = [sessions_opened(c) - n for c, n in zip(watch, before, strict=True)]
    finally:
        for c in watch:
            c.close()
    return opened


def role_with_limit(db, name: str, limit: int) -> str:
    """A login role of ``db``'s cluster (password: its name) at CONNECTION LIMIT
    ``limit``: the DSN of ``db`` as that role."""
    db.execute(
        f"DROP ROLE IF EXISTS {name}; CREATE ROLE {name} LOGIN PASSWORD '{name}' CONNECTION LIMIT {limit}"
    )
    return db.cluster.dsn(db.dbname, user=name, password=name)
