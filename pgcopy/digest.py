"""An order-independent content digest of a table, computed on the server.

Each row becomes ``ROW(c1, c2, ...)::text`` over an explicit column list (the same on
both sides, so column order on disk does not matter), in pgcopy's pinned session settings,
converted to UTF8 bytes when the two servers' encodings differ; its md5's first 64 bits
are summed modulo 2^64 with the row count.  One scan per side, no sort, no big string.

It detects a changed value, a missing, extra or duplicated row, and two swapped column
values.  It cannot detect a 64-bit collision (about one chance in 1.8e19 per difference),
nor tell values apart that print the same text.  Floating-point output differs between
servers before PostgreSQL 12 and later ones (shortest-exact output came in 12), so a table
with float columns copied across that line is reported as not comparable exactly.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from psycopg2 import sql

from pgcopy.catalog import Key

MOD = 1 << 64


@dataclass(frozen=True)
class Digest:
    """A table's row count and order-independent checksum, as one server computed it."""

    rows: int
    value: int

    def __str__(self) -> str:
        return f"{self.rows:,} rows, digest {self.value:016x}"


def digest_query(key: Key, columns: tuple[str, ...], to_utf8: bool) -> sql.Composed:
    if columns:
        row = sql.SQL("ROW({})::text").format(sql.SQL(", ").join(sql.Identifier("t", c) for c in columns))
    else:
        row = sql.SQL("''")
    data = sql.SQL("convert_to({}, 'UTF8')").format(row) if to_utf8 else row
    return sql.SQL(
        "SELECT count(*), coalesce(sum(('x' || left(md5({}), 16))::bit(64)::bigint::numeric), 0)::text "
        "FROM ONLY {} t"
    ).format(data, sql.Identifier(*key))


def digest(cur, key: Key, columns: tuple[str, ...], to_utf8: bool) -> Digest:
    cur.execute(digest_query(key, columns, to_utf8))
    rows, total = cur.fetchone()
    return Digest(int(rows), int(total) % MOD)


def both(scur, dcur, key: Key, columns: tuple[str, ...], to_utf8: bool) -> tuple[Digest, Digest]:
    """Both sides at once: the source's scan in a thread (psycopg2 releases the GIL)."""
    box: list = []

    def run() -> None:
        try:
            box.append(digest(scur, key, columns, to_utf8))
        except BaseException as exc:  # re-raised below
            box.append(exc)

    t = threading.Thread(target=run, name="digest-source", daemon=True)
    t.start()
    try:
        d = digest(dcur, key, columns, to_utf8)
    finally:
        t.join()
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0], d


def inexact(src_major: int, dst_major: int, column_types: tuple[str, ...]) -> str | None:
    """Why a table cannot be compared exactly between these servers, if it cannot."""
    floats = any(
        t in ("real", "double precision") or t.startswith(("real[", "double precision["))
        for t in column_types
    )
    if floats and (src_major < 12) != (dst_major < 12):
        return "floating-point output differs between PostgreSQL 11 and older and 12 and newer"
    return None
