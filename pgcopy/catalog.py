"""Reading one database's catalog into small frozen dataclasses.

Everything comes from pg_class/pg_namespace/pg_constraint/pg_trigger, never from
information_schema (which hides objects and loses FK column pairing).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from psycopg2 import sql

Key = tuple[str, str]  # (schema, name)

KIND_NAMES = {"r": "table", "p": "partitioned parent"}


@dataclass(frozen=True)
class Table:
    oid: int
    schema: str
    name: str
    kind: str  # 'table', 'partition' or 'partitioned parent'
    unlogged: bool
    reltuples: float  # -1 when never analyzed
    total_bytes: int
    ancestors: tuple[Key, ...] = ()
    data_bytes: int = 0  # heap + TOAST, without indexes (pg_table_size)

    @property
    def key(self) -> Key:
        return (self.schema, self.name)

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


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # format_type()
    generated: bool
    identity: str  # '', 'a' (ALWAYS) or 'd' (BY DEFAULT)
    typid: int = 0


@dataclass(frozen=True)
class ForeignKey:
    name: str
    table: Key
    ref_table: Key
    definition: str  # pg_get_constraintdef without a trailing NOT VALID
    validated: bool

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "table": list(self.table),
            "ref_table": list(self.ref_table),
            "definition": self.definition,
            "validated": self.validated,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ForeignKey:
        return cls(d["name"], tuple(d["table"]), tuple(d["ref_table"]), d["definition"], d["validated"])


@dataclass(frozen=True)
class Trigger:
    table: Key
    name: str
    enabled: str  # pg_trigger.tgenabled: O, D, R or A


@dataclass(frozen=True)
class Sequence:
    schema: str
    name: str
    owner_table: Key | None

    @property
    def key(self) -> Key:
        return (self.schema, self.name)


TABLES_SQL = """
SELECT c.oid, n.nspname, c.relname, c.relkind, c.relispartition,
       c.relpersistence = 'u', c.reltuples,
       CASE WHEN c.relkind = 'p' THEN
            (SELECT coalesce(sum(pg_total_relation_size(t.relid)), 0)
               FROM pg_partition_tree(c.oid) t WHERE t.isleaf)
            ELSE pg_total_relation_size(c.oid) END,
       pg_table_size(c.oid),
       CASE WHEN c.relispartition THEN
            ARRAY(SELECT an.nspname || '.' || ac.relname
                    FROM pg_partition_ancestors(c.oid) WITH ORDINALITY a(relid, i)
                    JOIN pg_class ac ON ac.oid = a.relid
                    JOIN pg_namespace an ON an.oid = ac.relnamespace
                   WHERE a.relid <> c.oid ORDER BY a.i)
            ELSE ARRAY[]::text[] END,
       CASE WHEN c.relispartition THEN
            ARRAY(SELECT a.relid::oid FROM pg_partition_ancestors(c.oid) a WHERE a.relid <> c.oid)
            ELSE ARRAY[]::oid[] END
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
           AND NOT c.oid = ANY(coalesce(e.extconfig, '{}')))
 ORDER BY n.nspname, c.relname
"""


def read_tables(cur) -> list[Table]:
    """Ordinary tables, partitions and partitioned parents (no views, foreign or temp tables)."""
    cur.execute(TABLES_SQL)
    rows = cur.fetchall()
    # ancestors come back as "schema.name" strings; rebuild keys from oids to survive dots
    names = {r[0]: (r[1], r[2]) for r in rows}
    out = []
    for oid, schema, name, relkind, ispart, unlogged, reltuples, size, data_size, _anc, anc_oids in rows:
        kind = "partition" if ispart and relkind == "r" else KIND_NAMES[relkind]
        ancestors = tuple(names[a] for a in anc_oids if a in names)
        out.append(
            Table(oid, schema, name, kind, unlogged, float(reltuples), int(size), ancestors, int(data_size))
        )
    return out


def read_columns(cur, oids: Iterable[int]) -> dict[int, list[Column]]:
    cur.execute(
        """SELECT a.attrelid, a.attname, format_type(a.atttypid, a.atttypmod),
                  a.attgenerated <> '', a.attidentity, a.atttypid
             FROM pg_attribute a
            WHERE a.attrelid = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped
            ORDER BY a.attrelid, a.attnum""",
        (list(oids),),
    )
    out: dict[int, list[Column]] = {}
    for relid, name, typ, gen, ident, typid in cur.fetchall():
        out.setdefault(relid, []).append(Column(name, typ, gen, ident, typid))
    return out


def read_foreign_keys(cur) -> list[ForeignKey]:
    """Top-level FKs (partition clones, conparentid <> 0, come back with their parent)."""
    cur.execute(
        """SELECT con.conname, n.nspname, c.relname, fn.nspname, fc.relname,
                  pg_get_constraintdef(con.oid), con.convalidated
             FROM pg_constraint con
             JOIN pg_class c ON c.oid = con.conrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_class fc ON fc.oid = con.confrelid
             JOIN pg_namespace fn ON fn.oid = fc.relnamespace
            WHERE con.contype = 'f' AND con.conparentid = 0
            ORDER BY n.nspname, c.relname, con.conname"""
    )
    out = []
    for name, s, t, fs, ft, definition, validated in cur.fetchall():
        if definition.endswith(" NOT VALID"):
            definition = definition[: -len(" NOT VALID")]
        out.append(ForeignKey(name, (s, t), (fs, ft), definition, validated))
    return out


def read_triggers(cur, oids: Iterable[int]) -> dict[int, list[Trigger]]:
    cur.execute(
        """SELECT t.tgrelid, n.nspname, c.relname, t.tgname, t.tgenabled
             FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE t.tgrelid = ANY(%s) AND NOT t.tgisinternal
            ORDER BY t.tgrelid, t.tgname""",
        (list(oids),),
    )
    out: dict[int, list[Trigger]] = {}
    for relid, s, t, name, enabled in cur.fetchall():
        out.setdefault(relid, []).append(Trigger((s, t), name, enabled))
    return out


def read_sequences(cur) -> list[Sequence]:
    """Every sequence with the table that owns it (serial or identity), if any."""
    cur.execute(
        """SELECT n.nspname, s.relname, tn.nspname, t.relname
             FROM pg_class s JOIN pg_namespace n ON n.oid = s.relnamespace
             LEFT JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.oid
                  AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
             LEFT JOIN pg_class t ON t.oid = d.refobjid
             LEFT JOIN pg_namespace tn ON tn.oid = t.relnamespace
            WHERE s.relkind = 'S' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
              AND n.nspname !~ '^pg_(toast|temp_)'
            ORDER BY 1, 2"""
    )
    return [Sequence(s, n, (ts, tn) if tn else None) for s, n, ts, tn in cur.fetchall()]


def read_matviews(cur) -> list[Key]:
    """Populated materialized views, in dependency-safe (oid) order."""
    cur.execute(
        """SELECT n.nspname, c.relname FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind = 'm' AND c.relispopulated ORDER BY c.oid"""
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


@dataclass(frozen=True)
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
 WHERE i.indrelid = ANY(%s)
 ORDER BY i.indrelid, i.indexrelid
"""


def read_rebuildable_indexes(cur, oids: Iterable[int]) -> dict[int, tuple[Index, ...]]:
    """Per table, its indexes when every one of them can be dropped and rebuilt exactly."""
    cur.execute(INDEXES_SQL, (list(oids),))
    out: dict[int, list[Index]] = {}
    skip: set[int] = set()
    for relid, name, idef, con, condef, clustered, replident, comment, con_comment, odd in cur.fetchall():
        if odd:
            skip.add(relid)
        out.setdefault(relid, []).append(
            Index(name, idef, con, condef, clustered, replident, comment, con_comment)
        )
    return {relid: tuple(idx) for relid, idx in out.items() if relid not in skip}
