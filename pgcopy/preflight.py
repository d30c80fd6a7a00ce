"""Preflight: small checks over both catalogs, each returning its problems.

Every problem is reported at once (exit 2) before anything changes, and each says how to
fix it.  The checks read :class:`Catalogs`, which :func:`read_catalogs` fills with a
handful of set-based queries.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from collections.abc import Sequence as SequenceOf
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pgcopy import catalog, patterns
from pgcopy.catalog import CheckConstraint, ForeignKey, Key, Sequence, Table, Trigger, qualname
from pgcopy.packed import Chunked


@dataclass
class Catalogs:
    """What preflight and planning need from both sides, read once."""

    src_cur: object
    dst_cur: object
    selected: list[Table]  # leaf tables to load (source side)
    dst_by_key: dict[Key, Table]
    src_cols: dict[int, tuple[catalog.Column, ...]]
    dst_cols: dict[int, tuple[catalog.Column, ...]]
    fkeys: SequenceOf[ForeignKey]  # destination FKs touching a selected table (or its parents)
    leaves: dict[Key, list[Key]]  # destination: partitioned parents -> their leaves
    triggers: dict[int, list[Trigger]]  # destination oid -> user triggers
    checks: dict[int, tuple[CheckConstraint, ...]]  # destination oid -> NOT VALID CHECKs
    sequences: SequenceOf[Sequence]
    shared: catalog.Shared  # one tuple per distinct key or list of names (see catalog.Shared)
    owned: set[Key] = field(default_factory=set)  # destination tables the role owns
    owned_sequences: set[Key] = field(default_factory=set)

    @property
    def present(self) -> list[Table]:
        return [t for t in self.selected if t.key in self.dst_by_key]

    @functools.cached_property
    def sel_keys(self) -> set[Key]:
        return {t.key for t in self.selected}

    @functools.cached_property
    def rel_set(self) -> set[Key]:
        """Selected tables and their partitioned ancestors."""
        ancestors = {a for t in self.selected for a in t.ancestors}
        return self.sel_keys | ancestors if ancestors else self.sel_keys

    def leaves_of(self, key: Key) -> list[Key]:
        """The destination's leaf tables ``key`` stands for: itself unless partitioned."""
        return self.leaves.get(key, [key])

    def dst_oid(self, key: Key) -> int:
        return self.dst_by_key[key].oid


def _leaves_of(tables: list[Table]) -> dict[Key, list[Key]]:
    """Partitioned parents -> the leaf tables they stand for (a list per table was 5 MB
    at 40,000 tables; the others stand for themselves: :meth:`Catalogs.leaves_of`)."""
    out: dict[Key, list[Key]] = {t.key: [] for t in tables if t.kind == "partitioned parent"}
    for t in tables:
        if t.kind != "partitioned parent":
            for anc in t.ancestors:
                out.setdefault(anc, []).append(t.key)
    return out


def _sequences(src_cur, rel_set: set[Key], include, exclude, shared: catalog.Shared) -> Chunked[Sequence]:
    """Sequences owned by a selected table (or its parent), or standalone and matching;
    packed as they are read."""
    inc, exc = patterns.parse_patterns(include), patterns.parse_patterns(exclude)

    def wanted(seq: Sequence) -> bool:
        if seq.owner_table is not None:
            return seq.owner_table in rel_set
        return (not inc or any(p.matches(*seq.key) for p in inc)) and not any(
            p.matches(*seq.key) for p in exc
        )

    return Chunked(filter(wanted, catalog.read_sequences(src_cur, shared)))


def read_catalogs(
    src_cur,
    dst_cur,
    selected: list[Table],
    dst_tables: list[Table],
    include,
    exclude,
    shared: catalog.Shared | None = None,
) -> Catalogs:
    shared = shared if shared is not None else catalog.Shared()
    dst_by_key = {t.key: t for t in dst_tables}
    present = [t for t in selected if t.key in dst_by_key]
    dst_oids = [dst_by_key[t.key].oid for t in present]
    cats = Catalogs(
        src_cur=src_cur,
        dst_cur=dst_cur,
        selected=selected,
        dst_by_key=dst_by_key,
        src_cols={},
        dst_cols={},
        fkeys=[],
        leaves=_leaves_of(dst_tables),
        triggers={},
        checks={},
        sequences=[],
        shared=shared,
    )
    rel = cats.rel_set
    # the source's reads on a thread of their own, beside the destination's (two servers;
    # psycopg2 lets go of the GIL while it waits on one); in order on its one cursor
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pgcopy-source-catalog") as source:
        src_cols = source.submit(catalog.read_columns, src_cur, [t.oid for t in present], shared)
        sequences = source.submit(_sequences, src_cur, rel, include, exclude, shared)
        cats.dst_cols = catalog.read_columns(dst_cur, dst_oids, shared)
        cats.triggers = catalog.read_triggers(dst_cur, dst_oids, shared)
        cats.checks = catalog.read_not_valid_checks(dst_cur, dst_oids)
        # packed as they are read: the checks and the plan read them a few passes over
        fkeys = catalog.foreign_keys(dst_cur, shared=shared)
        cats.fkeys = Chunked(fk for fk in fkeys if fk.table in rel or fk.ref_table in rel)
        cats.src_cols, cats.sequences = src_cols.result(), sequences.result()
    return cats


# --- the checks: each (Catalogs) -> list of problems ---------------------------------


def missing_tables(c: Catalogs) -> list[str]:
    return [
        f"table {t.qualname} does not exist on the destination: create it there (the schemas must match)"
        for t in c.selected
        if t.key not in c.dst_by_key
    ]


def column_differences(c: Catalogs) -> list[str]:
    out = []
    for t in c.present:
        s = {col.name: col for col in c.src_cols.get(t.oid, [])}
        d = {col.name: col for col in c.dst_cols.get(c.dst_oid(t.key), [])}
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
        out += [f"table {t.qualname}: {x}" for x in sorted(diffs)]
    return out


def unselected_referencers(c: Catalogs) -> list[str]:
    """Truncating a table referenced from an unselected one would need CASCADE."""
    out = []
    sel, rel = c.sel_keys, c.rel_set
    for fk in c.fkeys:
        if fk.ref_table not in rel:
            continue
        for leaf in c.leaves_of(fk.table):
            if leaf not in sel:
                out.append(
                    f"destination table {qualname(leaf)} is not selected but its foreign key "
                    f"{fk.name} references selected table {qualname(fk.ref_table)}: loading it "
                    f"would break that key; add {qualname(leaf)} to --include or exclude "
                    f"{qualname(fk.ref_table)}"
                )
    return out


def source_privileges(c: Catalogs) -> list[str]:
    c.src_cur.execute(
        """SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.oid = ANY(%s::oid[]) AND NOT has_table_privilege(c.oid, 'SELECT') ORDER BY 1, 2""",
        (catalog.oid_array(t.oid for t in c.selected),),
    )
    return [
        f"no SELECT privilege on source table {qualname(k)}: GRANT SELECT to the source role"
        for k in c.src_cur.fetchall()
    ]


def destination_privileges(c: Catalogs) -> list[str]:
    """TRUNCATE and INSERT on every table loaded; ownership where the run must change DDL
    (FKs dropped and re-added, triggers held off, NOT VALID CHECKs set aside)."""
    sel = c.sel_keys
    fk_tables = {fk.table for fk in c.fkeys}
    trig = {k for k in c.dst_by_key if c.dst_oid(k) in c.triggers and k in sel}
    chk = {k for k in c.dst_by_key if c.dst_oid(k) in c.checks and k in sel}
    keys = {t.key for t in c.present} | {k for k in fk_tables if k in c.dst_by_key}
    rows = catalog.streamed(
        c.dst_cur,
        """SELECT n.nspname, c.relname, has_table_privilege(c.oid, 'TRUNCATE'),
                  has_table_privilege(c.oid, 'INSERT'), pg_has_role(c.relowner, 'USAGE')
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = ANY(%s::oid[])""",
        (catalog.oid_array(sorted(c.dst_oid(k) for k in keys)),),
    )
    out = []
    for s, n, can_truncate, can_insert, owner in rows:
        key = c.shared((s, n))
        if owner:
            c.owned.add(key)
        lacks = []
        if key in sel and not can_truncate:
            lacks.append("TRUNCATE")
        if key in sel and not can_insert:
            lacks.append("INSERT")
        if not owner:
            why = [
                w
                for w, needed in (
                    ("to drop and re-add its foreign keys", key in fk_tables),
                    ("to hold off its triggers", key in trig),
                    ("to set aside its NOT VALID CHECK constraints", key in chk),
                )
                if needed
            ]
            if why:
                lacks.append(f"ownership ({', '.join(why)})")
        if lacks:
            out.append(f"destination table {qualname(key)}: missing {', '.join(lacks)}")
    return out


def references_privileges(c: Catalogs) -> list[str]:
    """Re-adding an FK needs REFERENCES on the referenced columns: checked now, not after the load."""
    if not c.fkeys:
        return []
    # one JSON text made as the FKs are read: a list of lists first was 8 MB at 40,000 FKs
    refs = "[" + ",".join(json.dumps([qualname(fk.ref_table), fk.ref_columns]) for fk in c.fkeys) + "]"
    c.dst_cur.execute(
        """SELECT e.i FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY e(v, i)
            WHERE NOT (SELECT coalesce(bool_and(has_column_privilege((e.v->>0)::regclass, col, 'REFERENCES')), true)
                         FROM jsonb_array_elements_text(e.v->1) col)""",
        (refs,),
    )
    out = []
    for (i,) in c.dst_cur.fetchall():
        fk = c.fkeys[i - 1]
        out.append(
            f"foreign key {fk.name} on {qualname(fk.table)} must be re-added after the load, which "
            f"needs REFERENCES on {qualname(fk.ref_table)} ({', '.join(fk.ref_columns)}): "
            f"GRANT REFERENCES ON {qualname(fk.ref_table)} to the destination role"
        )
    return out


def sequence_problems(c: Catalogs) -> list[str]:
    if not c.sequences:
        return []
    names = catalog.text_array(qualname(s.key) for s in c.sequences)
    out = []
    rows = catalog.streamed(
        c.dst_cur,
        """SELECT n.nspname, s.relname, pg_has_role(s.relowner, 'USAGE')
             FROM pg_class s JOIN pg_namespace n ON n.oid = s.relnamespace WHERE s.relkind = 'S'""",
    )
    dst_seqs = {(s, n): owner for s, n, owner in rows}
    c.owned_sequences = {s.key for s in c.sequences if dst_seqs.get(s.key)}
    out += [
        f"sequence {qualname(s.key)} does not exist on the destination: create it there"
        for s in c.sequences
        if s.key not in dst_seqs
    ]
    del dst_seqs  # a dict of every destination sequence: not kept through the next reads
    c.src_cur.execute(
        "SELECT s FROM unnest(%s::text[]) s WHERE NOT has_sequence_privilege(s, 'SELECT')", (names,)
    )
    out += [f"no SELECT privilege on source sequence {r[0]}: GRANT SELECT" for r in c.src_cur.fetchall()]
    c.dst_cur.execute(
        "SELECT s FROM unnest(%s::text[]) s WHERE to_regclass(s) IS NOT NULL "
        "AND NOT has_sequence_privilege(s, 'UPDATE')",
        (names,),
    )
    out += [f"no UPDATE privilege on destination sequence {r[0]}: GRANT UPDATE" for r in c.dst_cur.fetchall()]
    return out


def source_rls(c: Catalogs) -> list[str]:
    """A policy that applies to the reading role would hand over a subset of the rows."""
    return [
        f"source table {qualname(k)} has row-level security that applies to the source role, so "
        "reading it would see only the rows its policies allow: connect as the table's owner "
        "(without FORCE ROW LEVEL SECURITY), a role with BYPASSRLS, or a superuser"
        for k in catalog.rls_filtered(c.src_cur, [t.oid for t in c.selected])
    ]


def destination_rls(c: Catalogs) -> list[str]:
    """COPY FROM into a table whose policies apply to the role is an error."""
    return [
        f"destination table {qualname(k)} has row-level security that applies to the destination "
        "role, and COPY FROM cannot load it: connect as its owner (without FORCE ROW LEVEL "
        "SECURITY), a role with BYPASSRLS, or a superuser"
        for k in catalog.rls_filtered(c.dst_cur, [c.dst_oid(t.key) for t in c.present])
    ]


CHECKS: tuple[Callable[[Catalogs], list[str]], ...] = (
    missing_tables,
    column_differences,
    unselected_referencers,
    source_privileges,
    destination_privileges,
    references_privileges,
    sequence_problems,
    source_rls,
    destination_rls,
)


def run_checks(c: Catalogs) -> list[str]:
    problems: list[str] = []
    for check in CHECKS:
        problems += check(c)
    return problems
