"""From two catalogs to a Plan: what to load, which FKs to drop and put back, what to check.

All preflight problems are collected and raised together, before anything changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pgcopy import catalog, formats, patterns
from pgcopy.catalog import ForeignKey, Key, Sequence, Table, Trigger, qualname
from pgcopy.errors import PreflightError
from pgcopy.log import Logger


@dataclass(frozen=True)
class CopyTask:
    """One table to load, fully worked out so the worker makes no decisions."""

    key: Key
    columns: tuple[str, ...]
    triggers: tuple[Trigger, ...]  # destination user triggers to hold off, with their states
    est_rows: float
    est_bytes: int
    dest_est_rows: float
    dest_est_bytes: int
    column_types: tuple[str, ...] = ()  # format_type of each column, for row mode's casts
    format: str = "binary"  # COPY format: 'binary' or 'text'
    format_reason: str = "default"
    data_bytes: int = 0  # heap + TOAST on the source: what the stream is estimated from
    # indexes dropped after the TRUNCATE and rebuilt after the COPY, in the same transaction
    indexes: tuple[catalog.Index, ...] = ()

    @property
    def qualname(self) -> str:
        return qualname(self.key)


@dataclass
class Plan:
    tasks: list[CopyTask]
    fkeys: list[ForeignKey]
    sequences: list[Sequence]
    matviews: list[Key]
    replica: bool
    ancestors: dict[Key, tuple[Key, ...]] = field(default_factory=dict)  # partition -> parents


def _leaves_of(tables: list[Table]) -> dict[Key, list[Key]]:
    """Every table -> the leaf tables it stands for (itself unless partitioned)."""
    out: dict[Key, list[Key]] = {}
    for t in tables:
        if t.kind != "partitioned parent":
            out.setdefault(t.key, []).append(t.key)
            for anc in t.ancestors:
                out.setdefault(anc, []).append(t.key)
    for t in tables:
        out.setdefault(t.key, [])
    return out


def _compare_columns(key: Key, src: list[catalog.Column], dst: list[catalog.Column]) -> list[str]:
    s = {c.name: c for c in src}
    d = {c.name: c for c in dst}
    diffs = []
    for name in s.keys() - d.keys():
        diffs.append(f"column {name!r} ({s[name].type}) missing on the destination")
    for name in d.keys() - s.keys():
        diffs.append(f"column {name!r} ({d[name].type}) exists only on the destination")
    for name in s.keys() & d.keys():
        if s[name].type != d[name].type:
            diffs.append(
                f"column {name!r} is {s[name].type} on the source but {d[name].type} on the destination"
            )
        elif s[name].generated != d[name].generated:
            diffs.append(f"column {name!r} is generated on one side only")
    return [f"table {qualname(key)}: {d}" for d in sorted(diffs)]


def _privileges(cur, query: str, oids: list[int]) -> list[tuple]:
    cur.execute(query, (oids,))
    return cur.fetchall()


SRC_PRIVS = """
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.oid = ANY(%s) AND NOT has_table_privilege(c.oid, 'SELECT')
"""
DST_PRIVS = """
SELECT n.nspname, c.relname, has_table_privilege(c.oid, 'TRUNCATE'),
       has_table_privilege(c.oid, 'INSERT'), pg_has_role(c.relowner, 'USAGE')
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = ANY(%s)
"""


def replica_allowed(cur) -> bool:
    """May this role SET session_replication_role (superuser, or 15+ GRANT SET ON PARAMETER)?"""
    cur.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    if cur.fetchone()[0]:
        return True
    if cur.connection.server_version >= 150000:
        cur.execute("SELECT has_parameter_privilege('session_replication_role', 'SET')")
        return bool(cur.fetchone()[0])
    return False


def build_plan(
    src_cur,
    dst_cur,
    include,
    exclude,
    log: Logger,
    requested_format: str = "auto",
    index_rebuild_bytes: int | None = None,
) -> Plan:
    problems: list[str] = []
    src_tables = catalog.read_tables(src_cur)
    dst_tables = catalog.read_tables(dst_cur)
    matched = patterns.select_or_refuse(src_tables, include, exclude, log.warn)
    selected = [t for t in matched if t.kind != "partitioned parent"]
    if not selected:
        raise PreflightError(["no table matches the selection"])

    dst_by_key = {t.key: t for t in dst_tables}
    missing = [t for t in selected if t.key not in dst_by_key]
    problems += [f"table {t.qualname} does not exist on the destination" for t in missing]
    present = [t for t in selected if t.key in dst_by_key]

    src_cols = catalog.read_columns(src_cur, [t.oid for t in present])
    dst_cols = catalog.read_columns(dst_cur, [dst_by_key[t.key].oid for t in present])
    for t in present:
        problems += _compare_columns(t.key, src_cols.get(t.oid, []), dst_cols.get(dst_by_key[t.key].oid, []))

    # FKs on the destination that touch a selected table (or a partitioned ancestor of one)
    sel_keys = {t.key for t in selected}
    rel_set = sel_keys | {a for t in selected for a in t.ancestors}
    leaves = _leaves_of(dst_tables)
    fkeys = [
        fk for fk in catalog.read_foreign_keys(dst_cur) if fk.table in rel_set or fk.ref_table in rel_set
    ]
    for fk in fkeys:
        if fk.ref_table not in rel_set:
            continue
        for leaf in leaves.get(fk.table, [fk.table]):
            if leaf not in sel_keys:
                problems.append(
                    f"destination table {qualname(leaf)} is not selected but its foreign key "
                    f"{fk.name} references selected table {qualname(fk.ref_table)}: loading it "
                    f"would break that key; add {qualname(leaf)} to --include or exclude "
                    f"{qualname(fk.ref_table)}"
                )

    # privileges
    for s, n in _privileges(src_cur, SRC_PRIVS, [t.oid for t in selected]):
        problems.append(f"no SELECT privilege on source table {qualname((s, n))}")
    dst_oids = [dst_by_key[t.key].oid for t in present]
    triggers = catalog.read_triggers(dst_cur, dst_oids)
    needs_owner = {fk.table for fk in fkeys} | {k for k in dst_by_key if dst_by_key[k].oid in triggers}
    fk_tables = [dst_by_key[k].oid for k in needs_owner if k in dst_by_key]
    owned: set[Key] = set()
    for s, n, can_truncate, can_insert, owner in _privileges(
        dst_cur, DST_PRIVS, sorted(set(dst_oids + fk_tables))
    ):
        key = (s, n)
        if owner:
            owned.add(key)
        lacks = []
        if key in sel_keys and not can_truncate:
            lacks.append("TRUNCATE")
        if key in sel_keys and not can_insert:
            lacks.append("INSERT")
        if key in needs_owner and not owner:
            why = (
                "to drop and re-add its foreign keys"
                if any(fk.table == key for fk in fkeys)
                else "to hold off its triggers"
            )
            lacks.append(f"ownership ({why})")
        if lacks:
            problems.append(f"destination table {qualname(key)}: missing {', '.join(lacks)}")

    # sequences: owned by a selected table (or its parent), or standalone and matching
    seqs = []
    inc, exc = patterns.parse_patterns(include), patterns.parse_patterns(exclude)
    for seq in catalog.read_sequences(src_cur):
        if seq.owner_table is not None:
            if seq.owner_table in rel_set:
                seqs.append(seq)
        elif (not inc or any(p.matches(*seq.key) for p in inc)) and not any(p.matches(*seq.key) for p in exc):
            seqs.append(seq)
    dst_seqs = {s.key for s in catalog.read_sequences(dst_cur)}
    for seq in seqs:
        if seq.key not in dst_seqs:
            problems.append(f"sequence {qualname(seq.key)} does not exist on the destination")
    if seqs:
        src_cur.execute(
            "SELECT s FROM unnest(%s::text[]) s WHERE NOT has_sequence_privilege(s, 'SELECT')",
            ([qualname(s.key) for s in seqs],),
        )
        problems += [f"no SELECT privilege on source sequence {r[0]}" for r in src_cur.fetchall()]
        dst_cur.execute(
            "SELECT s FROM unnest(%s::text[]) s WHERE to_regclass(s) IS NOT NULL AND NOT has_sequence_privilege(s, 'UPDATE')",
            ([qualname(s.key) for s in seqs],),
        )
        problems += [f"no UPDATE privilege on destination sequence {r[0]}" for r in dst_cur.fetchall()]

    if problems:
        raise PreflightError(problems)

    src_types, dst_types = formats.read_types(src_cur), formats.read_types(dst_cur)
    src_major = src_cur.connection.server_version // 10000
    dst_major = dst_cur.connection.server_version // 10000

    def decide(t: Table) -> tuple[str, str]:
        cols = [c for c in src_cols.get(t.oid, []) if not c.generated]
        dcols = {c.name: c for c in dst_cols.get(dst_by_key[t.key].oid, [])}
        sflags = [formats.type_flags(c.typid, src_types) for c in cols]
        dflags = [formats.type_flags(dcols[c.name].typid, dst_types) for c in cols if c.name in dcols]
        return formats.choose_format(requested_format, sflags, dflags, src_major, dst_major)

    decisions = {t.key: decide(t) for t in selected}

    # Rebuilding a big table's indexes after the COPY (in the same transaction) is much
    # cheaper than maintaining them row by row; it needs ownership, which is optional.
    rebuild: dict[Key, tuple[catalog.Index, ...]] = {}
    if index_rebuild_bytes is not None:
        big = [t for t in selected if t.data_bytes >= index_rebuild_bytes and t.key in owned]
        found = catalog.read_rebuildable_indexes(dst_cur, [dst_by_key[t.key].oid for t in big])
        rebuild = {t.key: found[dst_by_key[t.key].oid] for t in big if dst_by_key[t.key].oid in found}
    tasks = [
        CopyTask(
            key=t.key,
            columns=tuple(c.name for c in src_cols.get(t.oid, []) if not c.generated),
            triggers=tuple(triggers.get(dst_by_key[t.key].oid, ())),
            est_rows=t.reltuples,
            est_bytes=t.total_bytes,
            dest_est_rows=dst_by_key[t.key].reltuples,
            dest_est_bytes=dst_by_key[t.key].total_bytes,
            column_types=tuple(c.type for c in src_cols.get(t.oid, []) if not c.generated),
            format=decisions[t.key][0],
            format_reason=decisions[t.key][1],
            data_bytes=t.data_bytes,
            indexes=rebuild.get(t.key, ()),
        )
        for t in selected
    ]
    tasks.sort(key=lambda task: (-task.est_bytes, task.key))  # largest first
    return Plan(
        tasks=tasks,
        fkeys=fkeys,
        sequences=seqs,
        matviews=catalog.read_matviews(dst_cur),
        replica=replica_allowed(dst_cur),
        ancestors={t.key: t.ancestors for t in selected},
    )
