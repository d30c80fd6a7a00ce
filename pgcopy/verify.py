"""Per-table checksums, to prove a destination equals its source."""

from __future__ import annotations

from psycopg2 import sql

from pgcopy import catalog
from pgcopy.catalog import Key

# Order-independent: the sum of each row's 64-bit md5 prefix, with the row count, so big
# tables need no sort and no giant string.
CHECKSUM_SQL = (
    "SELECT count(*), coalesce(sum(('x' || substr(md5(t::text), 1, 16))::bit(64)::bigint::numeric), 0)::text "
    "FROM ONLY {} t"
)


def checksums(conn) -> dict[Key, tuple[int, str]]:
    cur = conn.cursor()
    out = {}
    for t in catalog.read_tables(cur):
        if t.kind == "partitioned parent":
            continue
        cur.execute(sql.SQL(CHECKSUM_SQL).format(t.ident))
        count, total = cur.fetchone()
        out[t.key] = (count, total)
    conn.rollback()
    return out


def differences(source: dict, dest: dict) -> list[str]:
    out = []
    for key in sorted(source.keys() | dest.keys()):
        if source.get(key) != dest.get(key):
            out.append(f"{catalog.qualname(key)}: source {source.get(key)} vs destination {dest.get(key)}")
    return out
