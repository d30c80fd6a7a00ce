"""Preflight: checks over both catalogs, each returning its problems.

Every problem is reported at once (exit 2) before anything changes, and each says how to
fix it.  No catalog is held whole, whatever the table count: the planning (pgcopy.plan)
reads the tables a chunk at a time, and a table's checks run on its chunk
(:class:`Catalogs`); the FKs and sequences, which span tables, are checked as they stream
by (:func:`foreign_keys`, :func:`sequences`), against the selection kept as a
:class:`pgcopy.keys.KeySet`.
"""

from __future__ import annotations

import functools
import json
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace

from pgcopy import catalog, patterns
from pgcopy.catalog import CheckConstraint, ForeignKey, Key, Sequence, Table, Trigger, qualname
from pgcopy.keys import KeySet, argsort
from pgcopy.packed import Chunked


class Problems:
    """Problems as the checks find them, chunk after chunk; listed by check, in
    :data:`ORDER`, whatever order the chunks found them in."""

    ORDER = (
        "missing_tables",
        "column_differences",
        "unselected_referencers",
        "source_privileges",
        "destination_privileges",
        "references_privileges",
        "sequence_problems",
        "source_rls",
        "destination_rls",
    )

    def __init__(self):
        self.by_check: dict[str, list[str]] = {name: [] for name in self.ORDER}

    def add(self, check: str, found: Iterable[str]) -> None:
        self.by_check[check].extend(found)

    def __bool__(self) -> bool:
        return any(self.by_check.values())

    def listed(self) -> list[str]:
        return [p for name in self.ORDER for p in self.by_check[name]]


@dataclass
class Catalogs:
    """One chunk of the tables to load, with what their checks and tasks need from both
    sides."""

    src_cur: object
    dst_cur: object
    selected: list[Table]  # leaf tables to load (source side), in the plan's order
    dst_by_key: dict[Key, Table]  # the destination's tables of the same names
    src_cols: dict[int, tuple[catalog.Column, ...]]
    dst_cols: dict[int, tuple[catalog.Column, ...]]
    triggers: dict[int, list[Trigger]]  # destination oid -> user triggers
    checks: dict[int, tuple[CheckConstraint, ...]]  # destination oid -> NOT VALID CHECKs
    # the run's destination tables loaded but not owned by the role, whose ownership
    # problems are told once the FKs are read too (:func:`ownership`)
    unowned: array
    shared: catalog.Shared  # one tuple per distinct key or list of names (see catalog.Shared)
    owned: set[Key] = field(default_factory=set)  # destination tables the role owns

    @property
    def present(self) -> list[Table]:
        return [t for t in self.selected if t.key in self.dst_by_key]

    @functools.cached_property
    def sel_keys(self) -> set[Key]:
        return {t.key for t in self.selected}

    def dst_oid(self, key: Key) -> int:
        return self.dst_by_key[key].oid


def read_catalogs(
    src_cur,
    dst_cur,
    selected: list[Table],
    dst_sizes: catalog.Sizes,
    unowned: array,
    source: Executor,
) -> Catalogs:
    """A chunk's tables on the destination, their columns (both sides), triggers and NOT
    VALID CHECKs (the destination's).  The source's reads run on ``source``'s thread,
    beside the destination's (two servers; psycopg2 lets go of the GIL while it waits on
    one)."""
    shared = catalog.Shared()  # the chunk's: a plan-wide one would hold every key
    src_cols = source.submit(catalog.read_columns, src_cur, [t.oid for t in selected], shared)
    dst_by_key = {
        t.key: t for t in catalog.iter_tables(dst_cur, dst_sizes, shared, keys=[t.key for t in selected])
    }
    dst_oids = [dst_by_key[t.key].oid for t in selected if t.key in dst_by_key]
    return Catalogs(
        src_cur=src_cur,
        dst_cur=dst_cur,
        selected=selected,
        dst_by_key=dst_by_key,
        dst_cols=catalog.read_columns(dst_cur, dst_oids, shared),
        triggers=catalog.read_triggers(dst_cur, dst_oids, shared),
        checks=catalog.read_not_valid_checks(dst_cur, dst_oids),
        src_cols=src_cols.result(),
        unowned=unowned,
        shared=shared,
    )


# --- a chunk's checks: each (Catalogs) -> list of problems ------------------------------


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


PRIVILEGES_SQL = """
SELECT c.oid, n.nspname, c.relname, has_table_privilege(c.oid, 'TRUNCATE'),
       has_table_privilege(c.oid, 'INSERT'), pg_has_role(c.relowner, 'USAGE')
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = ANY(%s::oid[])
 ORDER BY 2, 3"""


def destination_privileges(c: Catalogs) -> list[str]:
    """TRUNCATE and INSERT on every table loaded.  A table the role does not own is kept
    for :func:`ownership`, which says all it lacks once the FKs are read too."""
    c.dst_cur.execute(PRIVILEGES_SQL, (catalog.oid_array(c.dst_oid(t.key) for t in c.present),))
    out = []
    for oid, s, n, can_truncate, can_insert, owner in c.dst_cur.fetchall():
        if not owner:
            c.unowned.append(oid)
            continue
        c.owned.add(c.shared((s, n)))
        out += _missing((s, n), _privileges_lacked(can_truncate, can_insert), [])
    return out


def _privileges_lacked(can_truncate: bool, can_insert: bool) -> list[str]:
    return [what for what, can in (("TRUNCATE", can_truncate), ("INSERT", can_insert)) if not can]


def _missing(key: Key, lacked: list[str], why: list[str]) -> list[str]:
    """The one line that says all a destination table lacks: ``lacked`` privileges, and
    ownership for the reasons ``why``; none if it lacks nothing."""
    lacks = lacked + ([f"ownership ({', '.join(why)})"] if why else [])
    return [f"destination table {qualname(key)}: missing {', '.join(lacks)}"] if lacks else []


def ownership(cur, unowned: array, outside: array, fk_oids: array) -> list[str]:
    """What the destination tables the role does not own lack: those loaded (``unowned``),
    TRUNCATE, INSERT, and ownership where the run must change DDL (FKs dropped and
    re-added, triggers held off, NOT VALID CHECKs set aside); those not loaded whose FKs the
    run drops (``outside``), ownership.  ``fk_oids``: the tables the run drops FKs of,
    sorted."""

    def drops_fks(oid: int) -> bool:
        i = bisect_left(fk_oids, oid)
        return i < len(fk_oids) and fk_oids[i] == oid

    out = []
    for oids, loaded in ((sorted(set(unowned)), True), (sorted(set(outside)), False)):
        for i in range(0, len(oids), BATCH):
            part = oids[i : i + BATCH]
            triggers = catalog.read_triggers(cur, part) if loaded else {}
            checks = catalog.read_not_valid_checks(cur, part) if loaded else {}
            cur.execute(PRIVILEGES_SQL, (catalog.oid_array(part),))
            for oid, s, n, can_truncate, can_insert, owner in cur.fetchall():
                if owner:
                    continue
                why = [
                    w
                    for w, needed in (
                        ("to drop and re-add its foreign keys", drops_fks(oid)),
                        ("to hold off its triggers", oid in triggers),
                        ("to set aside its NOT VALID CHECK constraints", oid in checks),
                    )
                    if needed
                ]
                lacked = _privileges_lacked(can_truncate, can_insert) if loaded else []
                out += _missing((s, n), lacked, why)
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
    source_privileges,
    destination_privileges,
    source_rls,
    destination_rls,
)


def run_checks(c: Catalogs, problems: Problems) -> None:
    for check in CHECKS:
        problems.add(check.__name__, check(c))


# --- what spans tables: FKs and sequences, checked as they stream by ------------------

# FKs checked for REFERENCES, sequences for existence and privileges, per statement
BATCH = 2000


@dataclass(frozen=True)
class Chosen:
    """The tables a run loads, as KeySets: what the FK and sequence checks ask."""

    sel: KeySet  # the selected leaf tables
    rel: KeySet  # those and their partitioned ancestors


def _unselected(leaf: Key, fk: ForeignKey) -> str:
    return (
        f"destination table {qualname(leaf)} is not selected but its foreign key "
        f"{fk.name} references selected table {qualname(fk.ref_table)}: loading it "
        f"would break that key; add {qualname(leaf)} to --include or exclude "
        f"{qualname(fk.ref_table)}"
    )


def foreign_keys(dst_cur, chosen: Chosen, problems: Problems) -> tuple[Chunked[ForeignKey], array, array]:
    """The destination's FKs that touch a selected table (or its parents), packed as they
    are read, and the tables they are on.  Checked on the way: a table not selected whose
    FK references a selected one (truncating that would need CASCADE), REFERENCES on the
    referenced columns (re-adding the FK needs it: checked now, not after the load).
    Also returns the oids of the tables whose FKs the run drops (sorted), and of those it
    does not load (for :func:`ownership`)."""
    cur = dst_cur.connection.cursor()  # beside the FKs' own, which streams them
    on = array("Q")  # the tables whose FKs the run drops
    outside = array("Q")  # those it does not load
    parents: list[tuple[int, ForeignKey]] = []  # partitioned ones referencing the selection
    batch: list[ForeignKey] = []
    shared = catalog.Shared()

    def relevant() -> Iterator[ForeignKey]:
        n = 0
        for relid, partitioned, fk in catalog.foreign_keys_on(dst_cur, shared):
            if fk.table not in chosen.rel and fk.ref_table not in chosen.rel:
                continue
            on.append(relid)
            if fk.table not in chosen.sel:
                outside.append(relid)
            if fk.ref_table in chosen.rel:
                if partitioned:
                    parents.append((relid, fk))
                elif fk.table not in chosen.sel:
                    problems.add("unselected_referencers", [_unselected(fk.table, fk)])
            batch.append(fk)
            if len(batch) == BATCH:
                problems.add("references_privileges", _references(cur, batch))
                batch.clear()
            yield fk
            n += 1
            if n % Chunked.CHUNK == 0:  # a chunk packs its own keys: no sharing past it
                shared.clear()

    fkeys = Chunked(relevant())
    problems.add("references_privileges", _references(cur, batch))
    problems.add("unselected_referencers", _unselected_leaves(cur, parents, chosen.sel))
    return fkeys, array("Q", (on[i] for i in argsort(on))), outside


def _references(cur, fks: list[ForeignKey]) -> list[str]:
    if not fks:
        return []
    refs = "[" + ",".join(json.dumps([qualname(fk.ref_table), fk.ref_columns]) for fk in fks) + "]"
    cur.execute(
        """SELECT e.i FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY e(v, i)
            WHERE NOT (SELECT coalesce(bool_and(has_column_privilege((e.v->>0)::regclass, col, 'REFERENCES')), true)
                         FROM jsonb_array_elements_text(e.v->1) col)""",
        (refs,),
    )
    out = []
    for (i,) in cur.fetchall():
        fk = fks[i - 1]
        out.append(
            f"foreign key {fk.name} on {qualname(fk.table)} must be re-added after the load, which "
            f"needs REFERENCES on {qualname(fk.ref_table)} ({', '.join(fk.ref_columns)}): "
            f"GRANT REFERENCES ON {qualname(fk.ref_table)} to the destination role"
        )
    return out


def _unselected_leaves(cur, parents: list[tuple[int, ForeignKey]], sel: KeySet) -> list[str]:
    """A partitioned table's FK to the selection: each of its leaves must be loaded."""
    if not parents:
        return []
    cur.execute(
        """SELECT o, n.nspname, c.relname
             FROM unnest(%s::oid[]) o, pg_partition_tree(o) t
             JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE t.isleaf AND c.relkind = 'r' ORDER BY 1, 2, 3""",
        (catalog.oid_array(sorted({relid for relid, _ in parents})),),
    )
    leaves: dict[int, list[Key]] = {}
    for relid, s, n in cur.fetchall():
        leaves.setdefault(relid, []).append((s, n))
    return [
        _unselected(leaf, fk) for relid, fk in parents for leaf in leaves.get(relid, ()) if leaf not in sel
    ]


def sequences(
    src_cur, dst_cur, chosen: Chosen, include, exclude, problems: Problems
) -> tuple[Chunked[Sequence], KeySet]:
    """Sequences owned by a selected table (or its parent), or standalone and matching;
    checked on both sides and packed as they are read; and the keys of those set inside
    their table's load (``in_load``: owned by a loaded table, and by the role on the
    destination)."""
    inc, exc = patterns.parse_patterns(include), patterns.parse_patterns(exclude)

    def wanted(seq: Sequence) -> bool:
        if seq.owner_table is not None:
            return seq.owner_table in chosen.rel
        return (not inc or any(p.matches(*seq.key) for p in inc)) and not any(
            p.matches(*seq.key) for p in exc
        )

    scur, dcur = src_cur.connection.cursor(), dst_cur.connection.cursor()

    def checked() -> Iterator[Sequence]:
        batch: list[Sequence] = []
        for seq in catalog.read_sequences(src_cur):
            if wanted(seq):
                batch.append(seq)
            if len(batch) == BATCH:
                yield from _checked_sequences(scur, dcur, batch, chosen.sel, problems)
                batch = []
        yield from _checked_sequences(scur, dcur, batch, chosen.sel, problems)

    packed = Chunked(checked())
    return packed, KeySet(s.key for s in packed if s.in_load)


def _checked_sequences(scur, dcur, batch: list[Sequence], sel: KeySet, problems: Problems) -> list[Sequence]:
    if not batch:
        return []
    names = catalog.text_array(qualname(s.key) for s in batch)
    dcur.execute(
        """SELECT s.oid IS NOT NULL, coalesce(pg_has_role(s.relowner, 'USAGE'), false),
                  coalesce(has_sequence_privilege(s.oid, 'UPDATE'), true)
             FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY k(sch, rel, i)
             LEFT JOIN (pg_class s JOIN pg_namespace n ON n.oid = s.relnamespace AND s.relkind = 'S')
                    ON n.nspname = k.sch AND s.relname = k.rel
            ORDER BY k.i""",
        (catalog.text_array(s.key[0] for s in batch), catalog.text_array(s.key[1] for s in batch)),
    )
    out, found = [], []
    for seq, (exists, owner, can_update) in zip(batch, dcur.fetchall(), strict=True):
        if not exists:
            found.append(f"sequence {qualname(seq.key)} does not exist on the destination: create it there")
        elif not can_update:
            found.append(f"no UPDATE privilege on destination sequence {qualname(seq.key)}: GRANT UPDATE")
        out.append(replace(seq, in_load=True) if owner and seq.owner_table in sel else seq)
    scur.execute("SELECT s FROM unnest(%s::text[]) s WHERE NOT has_sequence_privilege(s, 'SELECT')", (names,))
    found += [f"no SELECT privilege on source sequence {r[0]}: GRANT SELECT" for r in scur.fetchall()]
    problems.add("sequence_problems", found)
    return out
