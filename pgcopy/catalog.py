"""Reading one database's catalog into small frozen dataclasses.

Everything comes from pg_class/pg_namespace/pg_constraint/pg_trigger, never from
information_schema (which hides objects and loses FK column pairing).
"""

from __future__ import annotations

import functools
import os
import sys
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields, replace

import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql

from pgcopy.errors import PreflightError
from pgcopy.records import by_position

Key = tuple[str, str]  # (schema, name)


class Shared(dict):
    """One object for each distinct key or tuple of names that a run's catalog reads
    return, like interned strings: otherwise every row makes its own, and a plan of
    10,000 tables held each table's key four times over (in its FKs and sequences, and
    the destination's copy) and each FK's column list anew, 4.5 MB of tuples."""

    def __call__(self, value):
        return self.setdefault(value, value)


# Catalog identifiers (type name) arrive interned: a schema's or table's name then exists
# once however many tables, columns, FKs and sequences name it (at 3,000 tables the plan
# held each name in up to ten copies).
NAME = psycopg2.extensions.new_type(
    (19,), "NAME", lambda value, cur: None if value is None else sys.intern(value)
)
NAME_ARRAY = psycopg2.extensions.new_array_type((1003,), "NAME[]", NAME)


# Rows of the reads that grow with the table count come this many at a time from a
# server-side cursor: libpq holds a whole result in memory, and the C heap a read of
# 40,000 rows used stays with the process (at 40,000 tables read_columns and
# read_foreign_keys grew the planning process by 18 and 25 MB; streamed, by 5 and 12).
FETCH_ROWS = 2000


def streamed(cur, query: str, params=None):
    """``query``'s rows, FETCH_ROWS at a time, in ``cur``'s connection's transaction
    (all at once on a connection in autocommit: a server-side cursor needs a transaction)."""
    if cur.connection.autocommit:
        cur.execute(query, params)
        yield from cur
        return
    # os.urandom, not secrets: that imports hashlib, and with it OpenSSL (4 MB)
    named = cur.connection.cursor(name="pgcopy_read_" + os.urandom(4).hex())
    named.itersize = FETCH_ROWS
    try:
        named.execute(query, params)
        yield from named
    finally:
        named.close()


def oid_array(oids: Iterable[int]) -> str:
    """An ``oid[]`` literal, for ``%s::oid[]``: psycopg2 adapts a list item by item, and a
    list of 40,000 oids grew a bare process by 5 MB, where one string grew it by 1."""
    return "{" + ",".join(map(str, oids)) + "}"


def int8s(data) -> array:
    """Numbers sent as ``int8send`` values end to end (a bytea, or None for none)."""
    out = array("Q")  # 8 bytes wide wherever pgcopy runs (CPython on 64-bit Linux and macOS)
    out.frombytes(data or b"")
    if sys.byteorder == "little":  # int8send is big-endian
        out.byteswap()
    return out


def text_array(values: Iterable[str]) -> str:
    """A ``text[]`` literal, for ``%s::text[]`` (see :func:`oid_array`): every element
    double-quoted, its quotes and backslashes escaped, as array input reads them."""
    quoted = ('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values)
    return "{" + ",".join(quoted) + "}"


def intern_names(conn) -> None:
    """Make ``conn``'s name values (and arrays of them) interned strings."""
    psycopg2.extensions.register_type(NAME, conn)
    psycopg2.extensions.register_type(NAME_ARRAY, conn)


KIND_NAMES = {"r": "table", "p": "partitioned parent"}


@dataclass(frozen=True, slots=True)
class Table:
    """A table, partition or partitioned parent, as one side's catalog shows it."""

    oid: int
    key: Key  # one tuple, shared by everything that names the table
    kind: str  # 'table', 'partition' or 'partitioned parent'
    unlogged: bool
    reltuples: float  # -1 when never analyzed
    total_bytes: int
    ancestors: tuple[Key, ...] = ()
    data_bytes: int = 0  # heap + TOAST, without indexes (pg_table_size)

    @property
    def schema(self) -> str:
        return self.key[0]

    @property
    def name(self) -> str:
        return self.key[1]

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    @property
    def qualname(self) -> str:
        return qualname(self.key)


def qualname(key: Key) -> str:
    """schema.name with quotes only where PostgreSQL would need them."""

    def q(part: str) -> str:
        plain = part.isidentifier() and part == part.lower() and part.isascii()
        return part if plain else '"' + part.replace('"', '""') + '"'

    return f"{q(key[0])}.{q(key[1])}"


def regclass_literal(key: Key) -> str:
    """``"schema"."name"``, for a ::regclass argument such as setval's."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in key)


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a table, as COPY and the preflight checks need it."""

    name: str
    type: str  # format_type()
    generated: bool
    identity: str  # '', 'a' (ALWAYS) or 'd' (BY DEFAULT)
    typid: int = 0


FK_ACTIONS = {"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}
FK_MATCH = {"f": "FULL", "p": "PARTIAL", "s": "SIMPLE"}


@functools.cache
def _fk_fields() -> tuple[str, ...]:
    return tuple(f.name for f in fields(ForeignKey))


@by_position
@dataclass(frozen=True, slots=True)
class ForeignKey:
    """One FK, in structured fields: the DDL that re-creates it is built from them with
    quoted identifiers, never from stored text.  ``definition`` (pg_get_constraintdef,
    without NOT VALID) is what the re-created FK must read back as."""

    name: str
    table: Key
    ref_table: Key
    definition: str
    validated: bool
    columns: tuple[str, ...] = ()
    ref_columns: tuple[str, ...] = ()
    match: str = "s"
    on_update: str = "a"
    on_delete: str = "a"
    deferrable: bool = False
    deferred: bool = False
    delete_set_columns: tuple[str, ...] = ()  # ON DELETE SET NULL (cols), 15+
    comment: str | None = None

    def ddl(self) -> sql.Composed:
        """``FOREIGN KEY (...) REFERENCES ...`` for ALTER TABLE ... ADD CONSTRAINT name."""
        # composed with +, not SQL.format, which parses its template at each call
        idents = lambda names: sql.SQL(", ").join([sql.Identifier(n) for n in names])  # noqa: E731
        parts = [
            sql.SQL("FOREIGN KEY ("),
            idents(self.columns),
            sql.SQL(") REFERENCES "),
            sql.Identifier(*self.ref_table),
            sql.SQL(" ("),
            idents(self.ref_columns),
            sql.SQL(
                f") MATCH {FK_MATCH[self.match]} ON UPDATE {FK_ACTIONS[self.on_update]}"
                f" ON DELETE {FK_ACTIONS[self.on_delete]}"
            ),
        ]
        if self.delete_set_columns:
            parts += [sql.SQL(" ("), idents(self.delete_set_columns), sql.SQL(")")]
        if self.deferrable:
            parts.append(sql.SQL(" DEFERRABLE INITIALLY " + ("DEFERRED" if self.deferred else "IMMEDIATE")))
        return sql.Composed(parts)

    def as_dict(self) -> dict:
        """For the journal: json writes the tuples as lists (``from_dict`` reads them back);
        ``fields()`` once per class, not per FK (35 us an FK)."""
        return {name: getattr(self, name) for name in _fk_fields()}

    @classmethod
    def from_dict(cls, d: dict) -> ForeignKey:
        """Rebuild from a journal entry, refusing anything that is not a plain FK record."""

        def names(v, n=None) -> tuple[str, ...]:
            if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
                raise ValueError(f"expected a list of names, got {v!r}")
            if n is not None and len(v) != n:
                raise ValueError(f"expected {n} names, got {v!r}")
            return tuple(v)

        if not isinstance(d.get("name"), str) or not d["name"]:
            raise ValueError("FK without a name")
        definition = d.get("definition")
        if not isinstance(definition, str) or not definition.startswith("FOREIGN KEY ("):
            raise ValueError(f"FK {d['name']!r}: definition must start with FOREIGN KEY")
        if d.get("match") not in FK_MATCH or d.get("on_update") not in FK_ACTIONS:
            raise ValueError(f"FK {d['name']!r}: unknown match or action")
        if d.get("on_delete") not in FK_ACTIONS:
            raise ValueError(f"FK {d['name']!r}: unknown action")
        for flag in ("validated", "deferrable", "deferred"):
            if not isinstance(d.get(flag), bool):
                raise ValueError(f"FK {d['name']!r}: {flag} must be true or false")
        comment = d.get("comment")
        if comment is not None and not isinstance(comment, str):
            raise ValueError(f"FK {d['name']!r}: comment must be text")
        columns = names(d.get("columns"))
        return cls(
            name=d["name"],
            table=names(d.get("table"), 2),
            ref_table=names(d.get("ref_table"), 2),
            definition=definition,
            validated=d["validated"],
            columns=columns,
            ref_columns=names(d.get("ref_columns"), len(columns)),
            match=d["match"],
            on_update=d["on_update"],
            on_delete=d["on_delete"],
            deferrable=d["deferrable"],
            deferred=d["deferred"],
            delete_set_columns=names(d.get("delete_set_columns") or [])
            if d.get("delete_set_columns")
            else (),
            comment=comment,
        )


@by_position
@dataclass(frozen=True, slots=True)
class Trigger:
    """A destination user trigger, held off during its table's load."""

    table: Key
    name: str
    enabled: str  # pg_trigger.tgenabled: O, D, R or A


@by_position
@dataclass(frozen=True, slots=True)
class Sequence:
    """A sequence, and the table that owns it (serial or identity), if any."""

    key: Key
    owner_table: Key | None
    # set inside its table's load (the role owns it on the destination): see pgcopy.sequences
    in_load: bool = False

    @property
    def schema(self) -> str:
        return self.key[0]

    @property
    def name(self) -> str:
        return self.key[1]


TABLES_SQL = """
SELECT c.oid, n.nspname, c.relname, c.relkind, c.relispartition,
       c.relpersistence = 'u', c.reltuples,
       -- the ancestors' names, nearest first: every row stands alone (see read_tables)
       CASE WHEN c.relispartition THEN
            ARRAY(SELECT array[an.nspname, ac.relname]
                    FROM pg_partition_ancestors(c.oid) WITH ORDINALITY a(relid, i)
                    JOIN pg_class ac ON ac.oid = a.relid
                    JOIN pg_namespace an ON an.oid = ac.relnamespace
                   WHERE a.relid <> c.oid ORDER BY a.i)
            ELSE ARRAY[]::name[] END
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p')
   AND c.relpersistence <> 't'
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname !~ '^pg_(toast|temp_)'
   -- tables created by an extension are its business, except the configuration
   -- tables it registers for dumping (pg_dump's rule)
   AND NOT EXISTS (
        SELECT 1 FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
         WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e'
           AND NOT c.oid = ANY(coalesce(e.extconfig, '{{}}')))
   {filter}
 ORDER BY n.nspname, c.relname
"""
# a few tables of the same list: by oid, or by (schema, name) pairs (another server's)
BY_OID = "AND c.oid = ANY(%s::oid[])"
BY_KEY = "AND (n.nspname, c.relname) IN (SELECT * FROM unnest(%s::text[], %s::text[]))"

# The size functions lock each relation they measure (AccessShareLock).  PostgreSQL 15
# releases each lock once measured (2 locks held after sizing 3,054 tables in one
# statement), but short transactions of this many tables keep the reads inside the lock
# budget on any server that would hold them to the end of the transaction.
SIZE_CHUNK = 20


class Sizes:
    """oid -> (pg_total_relation_size, pg_table_size), in three arrays sorted by oid.

    As a dict of tuples of ints, both sides' sizes grew the planning process by 20 MB at
    40,000 tables (about 250 bytes a table a side), held while both catalogs are read; as
    arrays, 20 bytes a table (an oid is 4 bytes)."""

    __slots__ = ("oids", "totals", "datas")

    def __init__(self, rows: Iterable[tuple[int, int, int]] = ()):
        """``rows``: (oid, total, data); in oid order, as :func:`read_sizes` reads them,
        or they are sorted here."""
        self.oids, self.totals, self.datas = array("I"), array("q"), array("q")
        for oid, total, data in rows:
            self.add(oid, total, data)
        if any(a >= b for a, b in zip(self.oids, self.oids[1:], strict=False)):
            order = sorted(range(len(self.oids)), key=self.oids.__getitem__)
            for name in self.__slots__:
                column = getattr(self, name)
                setattr(self, name, array(column.typecode, (column[i] for i in order)))

    def add(self, oid: int, total: int, data: int) -> None:
        self.oids.append(oid)
        self.totals.append(total)
        self.datas.append(data)

    def get(self, oid: int, default: tuple[int, int] = (0, 0)) -> tuple[int, int]:
        i = bisect_left(self.oids, oid)
        if i < len(self.oids) and self.oids[i] == oid:
            return self.totals[i], self.datas[i]
        return default

    def __len__(self) -> int:
        return len(self.oids)


# How long a size read waits for a table locked elsewhere (an ALTER, a LOCK TABLE): sizes
# only plan the load, so a table still locked after it is sized from the catalog's
# estimate instead (relpages, as of its last VACUUM or ANALYZE), and its own read or
# load then waits --lock-timeout like any other.  Without a limit the run waited in its
# catalog phase for as long as the lock was held, whatever --lock-timeout said.
SIZE_LOCK_WAIT = "200ms"

ESTIMATED_SIZES_SQL = """
SELECT c.oid,
       (c.relpages::bigint + coalesce(t.relpages, 0)) * current_setting('block_size')::bigint,
       coalesce((SELECT sum(i.relpages) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
                  WHERE x.indrelid = c.oid), 0)::bigint * current_setting('block_size')::bigint
  FROM pg_class c LEFT JOIN pg_class t ON t.oid = c.reltoastrelid
 WHERE c.oid = ANY(%s::oid[])"""


def read_sizes(conn, session_for: Callable[[int], psycopg2.extensions.connection] | None = None) -> Sizes:
    """Sizes of every ordinary table, a few tables per transaction (commits ``conn``).
    ``session_for(n)``: the session to measure ``n`` more tables on (default ``conn``):
    measuring opens each table and its indexes, which the server then keeps cached for
    the session's life (see connections.Renewing).

    Each few run as one statement in autocommit, its own transaction: one round trip,
    where BEGIN, the read and COMMIT took three (53 chunks a side at 1,053 tables)."""
    conn.commit()
    autocommit = conn.autocommit
    used = [conn]

    def measure(chunk) -> list[tuple[int, int, int]]:
        # a table, its TOAST table and an index or so: the relations it opens
        on = session_for(3 * len(chunk)) if session_for else conn
        if on is not used[-1]:
            used.append(on)
        on.autocommit = True
        return _chunk_sizes(on, on.cursor(), chunk)

    try:
        conn.autocommit = True
        cur = conn.cursor()
        # every oid in one value, 8 bytes each: as rows, their tuples and libpq's result
        # (both sides at once) grew the planning process by 5.5 MiB more at 40,000 tables
        cur.execute(
            """SELECT string_agg(int8send(c.oid::int8), ''::bytea ORDER BY c.oid)
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE c.relkind = 'r' AND c.relpersistence <> 't'
                  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_'"""
        )
        oids = int8s(cur.fetchone()[0])
        cur.close()
        return Sizes(
            row for i in range(0, len(oids), SIZE_CHUNK) for row in measure(oids[i : i + SIZE_CHUNK])
        )
    finally:
        for on in used:
            if not on.closed:
                on.autocommit = autocommit


def _chunk_sizes(conn, cur, chunk) -> list[tuple[int, int, int]]:
    """(oid, total, data) of a few tables in one transaction (one statement, or one
    transaction block); a locked one estimated."""
    try:
        rows = _measured(cur, chunk)
    except psycopg2.errors.LockNotAvailable:
        conn.rollback()
        rows = []
        for oid in chunk:  # find the locked ones; the others are measured
            try:
                rows += _measured(cur, [oid])
            except psycopg2.errors.LockNotAvailable:
                conn.rollback()
                cur.execute(ESTIMATED_SIZES_SQL, (oid_array([oid]),))
                rows += [(o, data + ix, data) for o, data, ix in cur.fetchall()]
            conn.commit()
    conn.commit()
    return rows


def _measured(cur, oids) -> list[tuple[int, int, int]]:
    # pg_total_relation_size is these two added up: it would size the table twice
    cur.execute(
        "SET LOCAL lock_timeout = %s; SELECT o, pg_table_size(o), pg_indexes_size(o) FROM unnest(%s::oid[]) o",
        (SIZE_LOCK_WAIT, oid_array(oids)),
    )
    return [(o, int(data or 0) + int(ix or 0), int(data or 0)) for o, data, ix in cur.fetchall()]


def read_tables(cur, sizes: Sizes | None = None, shared: Shared | None = None) -> list[Table]:
    """Ordinary tables, partitions and partitioned parents (no views, foreign or temp tables).

    ``sizes`` from :func:`read_sizes`; without it they are read here, which commits."""
    if sizes is None:
        sizes = read_sizes(cur.connection)
    share = shared if shared is not None else Shared()
    out: list[Table] = []
    # rows as they come, never a list of them: both sides' rows, read at once, were 10 MB
    # of the planning's peak at 20,000 tables.  A partitioned parent's size is its
    # leaves', known once they are read: parents are few, sized at the end.
    parents: dict[Key, int] = {}  # partitioned parent -> its position in out
    parent_total: dict[Key, int] = {}
    for table in iter_tables(cur, sizes, share):
        if table.kind == "partitioned parent":
            parents[table.key] = len(out)
        for a in table.ancestors:
            parent_total[a] = parent_total.get(a, 0) + table.total_bytes
        out.append(table)
    for key, i in parents.items():
        out[i] = replace(out[i], total_bytes=parent_total.get(key, 0))
    return out


def iter_tables(
    cur, sizes: Sizes, share: Shared, oids: Iterable[int] | None = None, keys: Iterable[Key] | None = None
) -> Iterator[Table]:
    """:func:`read_tables`' tables as the rows arrive, a partitioned parent sized 0; only
    those with one of ``oids``, or one of ``keys``, when given."""
    query, params = TABLES_SQL.format(filter=""), None
    if oids is not None:
        query, params = TABLES_SQL.format(filter=BY_OID), (oid_array(oids),)
    elif keys is not None:
        keys = list(keys)
        query = TABLES_SQL.format(filter=BY_KEY)
        params = (text_array(k[0] for k in keys), text_array(k[1] for k in keys))
    for oid, s, n, relkind, ispart, unlogged, reltuples, anc in streamed(cur, query, params):
        kind = "partition" if ispart and relkind == "r" else KIND_NAMES[relkind]
        ancestors = share(tuple(share((a, b)) for a, b in anc)) if anc else ()
        total, data = sizes.get(oid, (0, 0)) if relkind != "p" else (0, 0)
        yield Table(oid, share((s, n)), kind, unlogged, float(reltuples), total, ancestors, data)


def read_columns(cur, oids: Iterable[int], shared: Shared | None = None) -> dict[int, tuple[Column, ...]]:
    """Each table's columns in order.  Tables of one shape (a tenant's, a day's partition)
    share one tuple of shared columns: at 20,000 tables the planning held 161,000 Column
    objects, 10 MB, most of them equal."""
    share = shared if shared is not None else Shared()
    rows = streamed(
        cur,
        """SELECT a.attrelid, a.attname, format_type(a.atttypid, a.atttypmod),
                  a.attgenerated <> '', a.attidentity, a.atttypid
             FROM pg_attribute a
            WHERE a.attrelid = ANY(%s::oid[]) AND a.attnum > 0 AND NOT a.attisdropped
            ORDER BY a.attrelid, a.attnum""",
        (oid_array(oids),),
    )
    out: dict[int, list[Column]] = {}
    for relid, name, typ, gen, ident, typid in rows:
        # format_type's text, the same few strings for thousands of columns: interned
        out.setdefault(relid, []).append(share(Column(name, sys.intern(typ), gen, ident, typid)))
    return {relid: share(tuple(cols)) for relid, cols in out.items()}


FKEYS_SQL = """
SELECT con.conname, n.nspname, c.relname, fn.nspname, fc.relname,
       pg_get_constraintdef(con.oid), con.convalidated,
       ARRAY(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY k(n, i)
               JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.i),
       ARRAY(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY k(n, i)
               JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.i),
       con.confmatchtype, con.confupdtype, con.confdeltype, con.condeferrable, con.condeferred,
       {delset},
       obj_description(con.oid, 'pg_constraint'), con.conrelid, c.relkind
  FROM pg_constraint con
  JOIN pg_class c ON c.oid = con.conrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_class fc ON fc.oid = con.confrelid
  JOIN pg_namespace fn ON fn.oid = fc.relnamespace
 WHERE con.contype = 'f' AND con.conparentid = 0
 ORDER BY n.nspname, c.relname, con.conname
"""
DELSET_15 = """ARRAY(SELECT a.attname FROM unnest(con.confdelsetcols) WITH ORDINALITY k(n, i)
               JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.i)"""


def read_foreign_keys(
    cur, tables: Iterable[Key] | None = None, shared: Shared | None = None
) -> list[ForeignKey]:
    """Top-level FKs (partition clones, conparentid <> 0, come back with their parent);
    only those on ``tables`` when given (one query, however many)."""
    return list(foreign_keys(cur, tables, shared))


def foreign_keys(
    cur, tables: Iterable[Key] | None = None, shared: Shared | None = None
) -> Iterator[ForeignKey]:
    """:func:`read_foreign_keys` one at a time, as the rows arrive."""
    share = shared if shared is not None else Shared()
    delset = DELSET_15 if cur.connection.server_version >= 150000 else "ARRAY[]::name[]"
    query = FKEYS_SQL.format(delset=delset)
    params: tuple = ()
    if tables is not None:
        keys = list(tables)
        query = query.replace(
            " WHERE con.contype = 'f'",
            " JOIN unnest(%s::text[], %s::text[]) k(s, t) ON k.s = n.nspname AND k.t = c.relname"
            " WHERE con.contype = 'f'",
        )
        params = (text_array(k[0] for k in keys), text_array(k[1] for k in keys))
    for row in streamed(cur, query, params or None):
        yield _foreign_key(row, share)


def foreign_keys_on(cur, shared: Shared | None = None) -> Iterator[tuple[int, bool, ForeignKey]]:
    """Every top-level FK as (its table's oid, whether that table is partitioned, the FK),
    as the rows arrive."""
    share = shared if shared is not None else Shared()
    delset = DELSET_15 if cur.connection.server_version >= 150000 else "ARRAY[]::name[]"
    for row in streamed(cur, FKEYS_SQL.format(delset=delset)):
        yield row[-2], row[-1] == "p", _foreign_key(row, share)


def deparsed(definition: str | None, what: str) -> str:
    """A ``pg_get_*def`` result.  Those read the latest catalog, the scan that found the
    object its snapshot: NULL means the object was dropped in between, by DDL running on
    the destination, and a plan made of it would not be sound."""
    if definition is None:
        raise PreflightError(
            [
                f"{what} was dropped while pgcopy read the catalog: run again once no DDL runs on the destination"
            ]
        )
    return definition


def _foreign_key(row, share: Shared) -> ForeignKey:
    (
        name,
        s,
        t,
        fs,
        ft,
        definition,
        validated,
        cols,
        rcols,
        match,
        upd,
        dele,
        dfr,
        dfd,
        delset_cols,
        comment,
        _relid,
        _relkind,
    ) = row
    definition = deparsed(definition, f'foreign key "{name}" on {qualname((s, t))}')
    if definition.endswith(" NOT VALID"):
        definition = definition[: -len(" NOT VALID")]
    return ForeignKey(
        name,
        share((s, t)),
        share((fs, ft)),
        definition,
        validated,
        share(tuple(cols)),
        share(tuple(rcols)),
        match,
        upd,
        dele,
        dfr,
        dfd,
        tuple(delset_cols or ()),
        comment,
    )


@by_position
@dataclass(frozen=True, slots=True)
class CheckConstraint:
    """A NOT VALID CHECK on a destination table: COPY would check new rows against it, so
    the load drops it after the TRUNCATE and re-adds it NOT VALID before the commit."""

    name: str
    definition: str  # pg_get_constraintdef, ends with NOT VALID
    comment: str | None


def read_not_valid_checks(cur, oids: Iterable[int]) -> dict[int, tuple[CheckConstraint, ...]]:
    """Per table, its own (not inherited) NOT VALID CHECK constraints."""
    cur.execute(
        """SELECT con.conrelid, con.conname, pg_get_constraintdef(con.oid),
                  obj_description(con.oid, 'pg_constraint')
             FROM pg_constraint con
            WHERE con.conrelid = ANY(%s::oid[]) AND con.contype = 'c' AND NOT con.convalidated
              AND con.coninhcount = 0
            ORDER BY con.conrelid, con.conname""",
        (oid_array(oids),),
    )
    out: dict[int, list[CheckConstraint]] = {}
    for row in cur.fetchall():
        relid, check = _check_constraint(row)
        out.setdefault(relid, []).append(check)
    return {k: tuple(v) for k, v in out.items()}


def _check_constraint(row) -> tuple[int, CheckConstraint]:
    relid, name, definition, comment = row
    return relid, CheckConstraint(name, deparsed(definition, f'constraint "{name}"'), comment)


def read_triggers(cur, oids: Iterable[int], shared: Shared | None = None) -> dict[int, list[Trigger]]:
    share = shared if shared is not None else Shared()
    cur.execute(
        """SELECT t.tgrelid, n.nspname, c.relname, t.tgname, t.tgenabled
             FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE t.tgrelid = ANY(%s::oid[]) AND NOT t.tgisinternal
            ORDER BY t.tgrelid, t.tgname""",
        (oid_array(oids),),
    )
    out: dict[int, list[Trigger]] = {}
    for relid, s, t, name, enabled in cur.fetchall():
        out.setdefault(relid, []).append(Trigger(share((s, t)), name, enabled))
    return out


SEQUENCES_SQL = """
SELECT n.nspname, s.relname, tn.nspname, t.relname
  FROM pg_class s JOIN pg_namespace n ON n.oid = s.relnamespace
  LEFT JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.oid
       AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
  LEFT JOIN pg_class t ON t.oid = d.refobjid
  LEFT JOIN pg_namespace tn ON tn.oid = t.relnamespace
 WHERE s.relkind = 'S' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname !~ '^pg_(toast|temp_)'
 ORDER BY 1, 2"""

# from the tables' dependents (pg_depend's index on refobjid): filtered from every
# sequence's row instead, each chunk of 1,000 tables read all 20,000 sequences
OWNED_SEQUENCES_SQL = """
SELECT n.nspname, s.relname, tn.nspname, t.relname
  FROM pg_depend d
  JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
  JOIN pg_namespace n ON n.oid = s.relnamespace
  JOIN pg_class t ON t.oid = d.refobjid
  JOIN pg_namespace tn ON tn.oid = t.relnamespace
 WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = ANY(%s::oid[])
   AND d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
 ORDER BY 1, 2"""


def read_sequences(
    cur, shared: Shared | None = None, owners: Iterable[int] | None = None
) -> Iterator[Sequence]:
    """Every sequence with the table that owns it (serial or identity), if any, as the rows
    arrive; only those owned by a table of ``owners`` (oids) when given.  Only the owner's
    key is shared (one of ``shared``'s when it is there): the planning packs the sequences
    as they come, so a shared key of their own would keep each one's name alive (40,000
    sequences were 17 MB of objects)."""
    share = shared if shared is not None else Shared()
    if owners is None:
        rows = streamed(cur, SEQUENCES_SQL)
    else:
        rows = streamed(cur, OWNED_SEQUENCES_SQL, (oid_array(owners),))
    for s, n, ts, tn in rows:
        yield Sequence((s, n), share.get((ts, tn), (ts, tn)) if tn else None)


MATVIEWS_SQL = """
WITH RECURSIVE dep(oid, depth) AS (
    SELECT unnest(%s::oid[]), 0
  UNION
    -- the loaded partitions' partitioned parents
    SELECT a.relid, 0 FROM unnest(%s::oid[]) o, pg_partition_ancestors(o) a
  UNION
    -- a view or matview whose rewrite rule reads a relation already in the set
    SELECT r.ev_class, dep.depth + 1
      FROM dep
      JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass AND d.refobjid = dep.oid
           AND d.classid = 'pg_rewrite'::regclass
      JOIN pg_rewrite r ON r.oid = d.objid
     WHERE r.ev_class <> dep.oid AND dep.depth < 50
)
-- the populated matviews' rows, by oid (scanning pg_class for them took 40 ms a read at
-- 160,000 tables)
SELECT n.nspname, c.relname, m.depth, c.oid
  FROM (SELECT oid, max(depth) AS depth FROM dep WHERE oid = ANY(%s::oid[]) GROUP BY oid) m
  JOIN pg_class c ON c.oid = m.oid
  JOIN pg_namespace n ON n.oid = c.relnamespace
"""


class Matviews:
    """Populated materialized views that read, directly or through views, a loaded
    relation or its partitioned parents, found a chunk of loaded relations at a time
    (:meth:`read`): one read of every loaded oid made a literal of them, and its list of
    one string per oid grew the planning by 9.6 MiB at 160,000 tables.  Each matview keeps
    its longest path from a loaded relation, the longest over the chunks, so ``ordered``
    lists those on others after them (refresh order), as one read of them all did."""

    __slots__ = ("_found", "_populated")

    def __init__(self, cur):
        self._found: dict[Key, tuple[int, int]] = {}  # key -> (longest path, oid)
        cur.execute("SELECT oid FROM pg_class WHERE relkind = 'm' AND relispopulated")
        found = [r[0] for r in cur.fetchall()]  # none, or a few
        self._populated = oid_array(found) if found else None  # None: nothing to look for

    def read(self, cur, loaded: list[int]) -> None:
        if not loaded or self._populated is None:
            return
        oids = oid_array(loaded)
        cur.execute(MATVIEWS_SQL, (oids, oids, self._populated))
        for s, n, depth, oid in cur.fetchall():
            key = (s, n)
            self._found[key] = max(self._found.get(key, (depth, oid)), (depth, oid))

    def ordered(self) -> list[Key]:
        return sorted(self._found, key=self._found.__getitem__)


def large_objects(cur) -> int:
    cur.execute("SELECT count(*) FROM pg_largeobject_metadata")
    return int(cur.fetchone()[0])


def rls_filtered(cur, oids: Iterable[int]) -> list[Key]:
    """Tables whose row-level security applies to this session's role (row_security_active
    answers for the role, whatever row_security is set to)."""
    cur.execute(
        """SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.oid = ANY(%s::oid[]) AND c.relrowsecurity AND row_security_active(c.oid)
            ORDER BY 1, 2""",
        (oid_array(oids),),
    )
    return [tuple(r) for r in cur.fetchall()]


def database_identity(cur) -> tuple[str, int, str]:
    """(system_identifier, database oid, database name): equal means the same database."""
    cur.execute(
        """SELECT (SELECT system_identifier::text FROM pg_control_system()), d.oid, d.datname
             FROM pg_database d WHERE d.datname = current_database()"""
    )
    sysid, dboid, name = cur.fetchone()
    return sysid, int(dboid), name


@by_position
@dataclass(frozen=True, slots=True)
class Index:
    """One index of a destination table, as needed to drop and rebuild it exactly."""

    name: str
    indexdef: str  # pg_get_indexdef, for indexes that belong to no constraint
    constraint: str | None  # PK/unique/exclusion constraint owning the index
    condef: str | None  # pg_get_constraintdef of that constraint
    clustered: bool
    replident: bool
    comment: str | None
    con_comment: str | None


INDEXES_SQL = """
SELECT i.indrelid, ic.relname, pg_get_indexdef(i.indexrelid), con.conname, pg_get_constraintdef(con.oid),
       i.indisclustered, i.indisreplident,
       obj_description(i.indexrelid, 'pg_class'), obj_description(con.oid, 'pg_constraint'),
       -- what we do not rebuild: invalid indexes, other tablespaces, partitioned-index
       -- children, per-column statistics targets
       NOT i.indisvalid OR ic.reltablespace <> 0
         OR EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = i.indexrelid)
         OR EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = i.indexrelid
                     AND coalesce(a.attstattarget::int, -1) >= 0)
  FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
  LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid
       AND con.contype IN ('p', 'u', 'x')
 WHERE i.indrelid = ANY(%s::oid[])
 ORDER BY i.indrelid, i.indexrelid
"""


def read_rebuildable_indexes(cur, oids: Iterable[int]) -> dict[int, tuple[Index, ...]]:
    """Per table, its indexes when every one of them can be dropped and rebuilt exactly."""
    cur.execute(INDEXES_SQL, (oid_array(oids),))
    out: dict[int, list[Index]] = {}
    skip: set[int] = set()
    for row in cur.fetchall():
        relid, odd, index = _index(row)
        if odd:
            skip.add(relid)
        out.setdefault(relid, []).append(index)
    return {relid: tuple(idx) for relid, idx in out.items() if relid not in skip}


def _index(row) -> tuple[int, bool, Index]:
    """(its table, whether it is one we do not rebuild, the index) from INDEXES_SQL's row."""
    relid, name, idef, con, condef, clustered, replident, comment, con_comment, odd = row
    idef = deparsed(idef, f'index "{name}"')
    if con is not None:
        condef = deparsed(condef, f'constraint "{con}"')
    return relid, odd, Index(name, idef, con, condef, clustered, replident, comment, con_comment)


@dataclass(frozen=True, slots=True)
class LoadFacts:
    """What decides how a destination table is emptied and how many locks its load takes."""

    deletable: bool  # DELETE privilege and no ON DELETE rule: DELETE may stand in for TRUNCATE
    relations: int  # the table, its TOAST table and index, and its indexes: lock entries


def read_load_facts(cur, oids: Iterable[int]) -> dict[int, LoadFacts]:
    cur.execute(
        """SELECT c.oid,
                  has_table_privilege(c.oid, 'DELETE')
                    AND NOT EXISTS (SELECT 1 FROM pg_rewrite r WHERE r.ev_class = c.oid AND r.ev_type = '4'),
                  1 + (SELECT count(*) FROM pg_index i WHERE i.indrelid = c.oid)
                    + CASE WHEN c.reltoastrelid <> 0 THEN 2 ELSE 0 END
             FROM pg_class c WHERE c.oid = ANY(%s::oid[])""",
        (oid_array(oids),),
    )
    return {oid: LoadFacts(bool(ok), int(n)) for oid, ok, n in cur.fetchall()}


def locks_per_transaction(conn) -> int:
    """max_locks_per_transaction: each session's share of the server's lock table."""
    cur = conn.cursor()
    cur.execute("SELECT current_setting('max_locks_per_transaction')::int")
    value = cur.fetchone()[0]
    conn.commit()
    return value


def lock_holders(conn, key: Key) -> str:
    """'; held by pid N (user, application, state), ...' for the sessions holding a lock on
    the table, to append to a lock_timeout message; '' when none or unknown."""
    try:
        cur = conn.cursor()
        cur.execute(
            """SELECT DISTINCT a.pid, a.usename, a.application_name, a.state
                 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                WHERE l.relation = (quote_ident(%s) || '.' || quote_ident(%s))::regclass
                  AND l.granted AND a.pid <> pg_backend_pid()""",
            key,
        )
        holders = [f"pid {p} ({u}, {app or '-'}, {st})" for p, u, app, st in cur.fetchall()]
        conn.rollback()
    except Exception:
        return ""
    return f"; held by {', '.join(holders)}" if holders else ""
