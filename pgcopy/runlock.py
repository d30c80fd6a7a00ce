"""One run per destination database: a session-level advisory lock held for the run's life.

The lock lives on the coordinator's own destination connection, so it goes away with
that connection however the run ends (a kill -9 included).  A second ``copy`` or
``recover`` refuses at once and names the holder from its ``application_name``
(``pgcopy:<host>:<pid>:<token>``) and session start.
"""

from __future__ import annotations

from pgcopy.errors import PreflightError

# pg_try_advisory_lock(int4, int4): 'pgcp' and 1; advisory locks are per database.
LOCK_KEY = (0x70676370, 1)

HOLDER_SQL = """
SELECT a.pid, a.application_name, a.backend_start, a.usename, a.client_addr
  FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE l.locktype = 'advisory' AND l.classid = %s AND l.objid = %s AND l.objsubid = 2
   AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


def holder(cur) -> str:
    cur.execute(HOLDER_SQL, LOCK_KEY)
    row = cur.fetchone()
    if row is None:
        return "another session (gone by now)"
    pid, app, started, user, addr = row
    who = app or "a session without application_name"
    when = f", connected since {started:%Y-%m-%d %H:%M:%S %Z}" if started else ""
    return f"{who} (backend pid {pid}, role {user or '?'}{f', from {addr}' if addr else ''}{when})"


def acquire(conn, what: str) -> None:
    """Take the run lock on ``conn`` or refuse naming who has it (exit 2, nothing changed)."""
    cur = conn.cursor()
    cur.execute("SELECT pg_try_advisory_lock(%s, %s)", LOCK_KEY)
    got = cur.fetchone()[0]
    if not got:
        who = holder(cur)
        conn.rollback()
        raise PreflightError(
            [
                f"another pgcopy run is working on {what}: {who}; wait for it to finish (one run per destination)"
            ]
        )
    conn.commit()
