"""Per-table checksums, to prove a destination equals its source."""

from __future__ import annotations

from pgcopy import catalog, digest
from pgcopy.catalog import Key
from pgcopy.connections import PINNED, set_all


def checksums(conn) -> dict[Key, tuple[int, int]]:
    """Per leaf table: row count and the order-independent digest of :mod:`pgcopy.digest`
    over every column (the same computation as ``pgcopy verify``).  For databases nobody
    writes to (benchmarks, the demo): each table is read in its own transaction, so
    thousands of tables never fill the server's lock table."""
    cur = conn.cursor()
    # the digests read the columns' text: printed as pgcopy's sessions print it, whatever
    # either server's or database's defaults (a checksum of the same rows otherwise differed)
    set_all(cur, PINNED)
    conn.commit()  # the reads below roll back their transactions, never these settings
    tables = [t for t in catalog.read_tables(cur) if t.kind != "partitioned parent"]
    columns = catalog.read_columns(cur, [t.oid for t in tables])
    conn.rollback()
    out = {}
    for t in tables:
        d = digest.digest(cur, t.key, tuple(c.name for c in columns.get(t.oid, [])), False)
        out[t.key] = (d.rows, d.value)
        conn.rollback()
    return out


def differences(source: dict, dest: dict) -> list[str]:
    out = []
    for key in sorted(source.keys() | dest.keys()):
        if source.get(key) != dest.get(key):
            out.append(f"{catalog.qualname(key)}: source {source.get(key)} vs destination {dest.get(key)}")
    return out
