"""From two catalogs to a Plan: what to load, which FKs to drop and put back, what to check.

All preflight problems are collected and raised together, before anything changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from collections.abc import Sequence as SequenceOf
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pgcopy import catalog, formats, patterns, preflight
from pgcopy.catalog import ForeignKey, Key, Sequence, Table
from pgcopy.errors import PreflightError
from pgcopy.log import Logger
from pgcopy.packed import Chunked, Packed
from pgcopy.task import SMALL_BYTES, CopyTask, SequenceValue


@dataclass
class Sequences:
    """The sequences to set, and how (see pgcopy.sequences)."""

    sequences: SequenceOf[Sequence]  # a Chunked once planned
    in_load: set[Key] = field(default_factory=set)  # set inside their table's load
    # the others' values, read right after the snapshot, set after the load
    values: dict[Key, SequenceValue] = field(default_factory=dict)


@dataclass
class Plan:
    """Everything the run will do, worked out from both catalogs before anything changes."""

    tasks: SequenceOf[CopyTask]  # a Chunked as build_plan makes them
    fkeys: SequenceOf[ForeignKey]  # a Chunked too
    sequences: Packed[Sequences]
    matviews: list[Key]
    # loaded partitions -> their partitioned parents (other tables have none: no entry)
    ancestors: dict[Key, tuple[Key, ...]] = field(default_factory=dict)
    large_objects: int = 0  # on the source; not copied


BATCH_TABLES = 16
BATCH_BYTES = 2 << 20


def batches(tasks: SequenceOf[CopyTask], lock_budget: int, piped_only: bool = False) -> list[list[int]]:
    """Task indices to load together: big tables alone, small ones in batches of at most
    BATCH_TABLES tables, BATCH_BYTES of data and ``lock_budget`` lock entries (a batch's
    transaction holds its tables' locks to the commit).  Order is kept (largest first).
    ``piped_only`` (row mode, or a codec: options of the pipe) loads every table alone."""
    out: list[list[int]] = []
    group: list[int] = []
    nbytes = locks = 0
    for i, task in enumerate(tasks):
        if piped_only or not task.small:
            out.append([i])
            continue
        if group and (
            len(group) >= BATCH_TABLES
            or nbytes + task.data_bytes > BATCH_BYTES
            or locks + task.locks > lock_budget
        ):
            out.append(group)
            group, nbytes, locks = [], 0, 0
        group.append(i)
        nbytes += task.data_bytes
        locks += task.locks
    if group:
        out.append(group)
    return out


@dataclass(frozen=True)
class PlanInputs:
    """What the plan depends on besides the two catalogs."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    requested_format: str = "auto"
    index_rebuild_bytes: int | None = None


def build_plan(
    src_cur, dst_cur, inputs: PlanInputs, log: Logger, src_sizes: catalog.Sizes, dst_sizes: catalog.Sizes
) -> Plan:
    """Read both catalogs, run every preflight check (all problems at once), then plan.

    Sizes come from :func:`catalog.read_sizes` (read beforehand in short transactions):
    nothing here takes a lock on a user table."""
    fields, sequences = _planned(src_cur, dst_cur, inputs, log, src_sizes, dst_sizes)
    # packed once the catalogs are gone: pickling 40,000 sequences next to them raised
    # the planning's peak by 7.7 MB (the pickle's memo of every object)
    return Plan(sequences=Packed(sequences), **fields)


def _planned(src_cur, dst_cur, inputs, log, src_sizes, dst_sizes) -> tuple[dict, Sequences]:
    """The plan's fields but its sequences, and those; the catalogs die with this frame."""
    shared = catalog.Shared()  # for the plan's making only: the plan holds what it shares
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pgcopy-source-catalog") as source:
        src_read = source.submit(catalog.read_tables, src_cur, src_sizes, shared)  # beside ours
        dst_tables = catalog.read_tables(dst_cur, dst_sizes, shared)
        src_tables = src_read.result()
    matched = patterns.select_or_refuse(src_tables, inputs.include, inputs.exclude, log.warn)
    selected = [t for t in matched if t.kind != "partitioned parent"]
    if not selected:
        raise PreflightError(["no table matches the selection"])
    cats = preflight.read_catalogs(
        src_cur, dst_cur, selected, dst_tables, inputs.include, inputs.exclude, shared
    )
    problems = preflight.run_checks(cats)
    if problems:
        raise PreflightError(problems)
    in_load = _in_load(cats)
    tasks = _tasks(cats, inputs, in_load)
    loaded = [cats.dst_oid(t.key) for t in selected]
    loaded += [cats.dst_by_key[a].oid for t in selected for a in t.ancestors if a in cats.dst_by_key]
    fields = dict(
        tasks=tasks,
        fkeys=cats.fkeys,
        matviews=catalog.read_matviews(dst_cur, loaded),
        ancestors={t.key: t.ancestors for t in selected if t.ancestors},
        large_objects=catalog.large_objects(src_cur),
    )
    in_load_keys = {k for keys in in_load.values() for k in keys}
    return fields, Sequences(cats.sequences, in_load_keys)


def _in_load(c: preflight.Catalogs) -> dict[Key, tuple[Key, ...]]:
    """Loaded table -> the sequences it owns that are set inside its load transaction (the
    role owns them on the destination); the others are set after the load.

    The owned sequences' keys go with it: they came from an earlier pass over the packed
    sequences, and the tasks keep this pass's (at 40,000 sequences the two passes' keys
    were 13 MB of the planning's peak)."""
    sel = c.sel_keys
    out: dict[Key, list[Key]] = {}
    for s in c.sequences:
        if s.owner_table in sel and s.key in c.owned_sequences:
            out.setdefault(s.owner_table, []).append(s.key)
    c.owned_sequences = set()
    return {k: tuple(v) for k, v in out.items()}


def _tasks(
    c: preflight.Catalogs, inputs: PlanInputs, in_load: dict[Key, tuple[Key, ...]]
) -> Chunked[CopyTask]:
    """The tasks, largest first, packed as they are made."""
    src_types = formats.read_types(c.src_cur, (col.typid for cols in c.src_cols.values() for col in cols))
    dst_types = formats.read_types(c.dst_cur, (col.typid for cols in c.dst_cols.values() for col in cols))
    src_major = c.src_cur.connection.server_version // 10000
    dst_major = c.dst_cur.connection.server_version // 10000

    def decide(t: Table) -> tuple[str, str]:
        cols = [col for col in c.src_cols.get(t.oid, []) if not col.generated]
        dcols = {col.name: col for col in c.dst_cols.get(c.dst_oid(t.key), [])}
        sflags = [formats.type_flags(col.typid, src_types) for col in cols]
        dflags = [formats.type_flags(dcols[col.name].typid, dst_types) for col in cols if col.name in dcols]
        return formats.choose_format(inputs.requested_format, sflags, dflags, src_major, dst_major)

    # Rebuilding a big table's indexes after the COPY (in the same transaction) is much
    # cheaper than maintaining them row by row; it needs ownership, which is optional.
    rebuild: dict[Key, tuple[catalog.Index, ...]] = {}
    if inputs.index_rebuild_bytes is not None:
        big = [t for t in c.selected if t.data_bytes >= inputs.index_rebuild_bytes and t.key in c.owned]
        found = catalog.read_rebuildable_indexes(c.dst_cur, [c.dst_oid(t.key) for t in big])
        rebuild = {t.key: found[c.dst_oid(t.key)] for t in big if c.dst_oid(t.key) in found}
    facts = catalog.read_load_facts(c.dst_cur, [c.dst_oid(t.key) for t in c.selected])
    return Chunked(_each_task(c, in_load, decide, rebuild, facts))


def _each_task(
    c: preflight.Catalogs,
    in_load: dict[Key, tuple[Key, ...]],
    decide: Callable[[Table], tuple[str, str]],
    rebuild: dict[Key, tuple[catalog.Index, ...]],
    facts: dict[int, catalog.LoadFacts],
) -> Iterator[CopyTask]:
    # largest first: the order of the tasks' (-est_bytes, key), made in it
    for t in sorted(c.selected, key=lambda t: (-t.total_bytes, t.key)):
        dst = c.dst_by_key[t.key]
        fact = facts.get(dst.oid, catalog.LoadFacts(False, 1))
        small = t.data_bytes <= SMALL_BYTES and dst.data_bytes <= SMALL_BYTES
        cols = [col for col in c.src_cols.get(t.oid, []) if not col.generated]
        fmt, reason = decide(t)
        yield CopyTask(
            key=t.key,
            columns=c.shared(tuple(col.name for col in cols)),
            triggers=tuple(c.triggers.get(dst.oid, ())),
            est_rows=t.reltuples,
            est_bytes=t.total_bytes,
            dest_est_rows=dst.reltuples,
            dest_est_bytes=dst.total_bytes,
            column_types=c.shared(tuple(col.type for col in cols)),
            format=fmt,
            format_reason=reason,
            data_bytes=t.data_bytes,
            indexes=rebuild.get(t.key, ()),
            checks=c.checks.get(dst.oid, ()),
            clear="delete" if small and fact.deletable and t.key not in rebuild else "truncate",
            relations=fact.relations,
            sequences=in_load.get(t.key, ()),
        )
