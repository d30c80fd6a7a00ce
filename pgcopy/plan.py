"""From two catalogs to a Plan: what to load, which FKs to drop and put back, what to check.

Neither catalog is held whole: a chunk of tables at a time (see build_plan).  All preflight
problems are collected and raised together, before anything changes.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable, Iterator
from collections.abc import Sequence as SequenceOf
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pgcopy import catalog, formats, patterns, preflight
from pgcopy.catalog import ForeignKey, Key, Sequence, Table
from pgcopy.errors import PreflightError
from pgcopy.keys import KeyIndex, KeySet, argsort
from pgcopy.log import Logger
from pgcopy.packed import Chunked, Packed
from pgcopy.task import SMALL_BYTES, CopyTask, SequenceValue


@dataclass
class Sequences:
    """The sequences to set, and how (see pgcopy.sequences): those ``in_load`` inside
    their table's load, the others after it."""

    sequences: SequenceOf[Sequence]  # a Chunked once planned
    # the others' values, read right after the snapshot, set after the load
    values: dict[Key, SequenceValue] = field(default_factory=dict)


class Ancestry:
    """Each task's partitioned ancestors (nearest first; none for a table that is no
    partition), by the task's position: a task holds the number of its chain among the few
    distinct ones (4 bytes), where a dict of every partition's key held about 160 bytes a
    partition through the load."""

    __slots__ = ("chains", "of_task", "_numbers")

    def __init__(self):
        self.chains: list[tuple[Key, ...]] = [()]
        self.of_task = array("I")
        self._numbers: dict[tuple[Key, ...], int] = {(): 0}  # while it is made

    def extend(self, chains: Iterable[tuple[Key, ...]]) -> None:
        for ancestors in chains:
            n = self._numbers.setdefault(ancestors, len(self.chains))
            if n == len(self.chains):
                self.chains.append(ancestors)
            self.of_task.append(n)

    def __getitem__(self, position: int) -> tuple[Key, ...]:
        return self.chains[self.of_task[position]] if position < len(self.of_task) else ()

    def items(self) -> Iterator[tuple[int, tuple[Key, ...]]]:
        """(position, ancestors) of each task that loads a partition."""
        return ((i, self.chains[n]) for i, n in enumerate(self.of_task) if n)

    def __bool__(self) -> bool:
        return len(self.chains) > 1

    def __eq__(self, other) -> bool:
        return isinstance(other, Ancestry) and list(self.items()) == list(other.items())

    __hash__ = None

    def __getstate__(self):
        return self.chains, self.of_task

    def __setstate__(self, state) -> None:
        self.chains, self.of_task = state
        self._numbers = {}


@dataclass
class Plan:
    """Everything the run will do, worked out from both catalogs before anything changes."""

    tasks: SequenceOf[CopyTask]  # a Chunked as build_plan makes them
    fkeys: SequenceOf[ForeignKey]  # a Chunked too
    sequences: Packed[Sequences]
    matviews: list[Key]
    # the loaded partitions' partitioned parents, by task position
    ancestors: Ancestry = field(default_factory=Ancestry)
    large_objects: int = 0  # on the source; not copied
    index: KeyIndex | None = None  # the tasks' positions by key (see KeyIndex.from_hashes)

    def spill_into(self, spill) -> None:
        """What it holds per table and FK moved into the run's file (a pgcopy.spill.Spill)."""
        from pgcopy.spill import spilled

        for packed in (self.tasks, self.fkeys, self.sequences):
            if isinstance(packed, (Chunked, Packed)):
                packed.spill_into(spill)
        self.ancestors.of_task = spilled(spill, self.ancestors.of_task)
        if self.index is not None:
            self.index.spill_into(spill)


BATCH_TABLES = 16
BATCH_BYTES = 2 << 20


class Batches(SequenceOf[list[int]]):
    """Task indices to load together, in two arrays (the indices in order, where each
    batch ends): a list per batch and an int per table was 0.8 MB at 20,000 tables, held
    through the load."""

    __slots__ = ("indices", "ends")

    def __init__(self, groups=()):
        self.indices, self.ends = array("I"), array("I")
        for group in groups:
            self.add(group)

    def add(self, group) -> None:
        self.indices.extend(group)
        self.ends.append(len(self.indices))

    def spill_into(self, spill) -> None:
        from pgcopy.spill import spilled

        self.indices, self.ends = spilled(spill, self.indices), spilled(spill, self.ends)

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, b):
        if isinstance(b, slice):
            return [self[i] for i in range(*b.indices(len(self)))]
        if b < 0:
            b += len(self)
        if not 0 <= b < len(self):
            raise IndexError("batch out of range")
        return self.indices[self.ends[b - 1] if b else 0 : self.ends[b]].tolist()

    def __eq__(self, other) -> bool:
        return list(self) == list(other) if isinstance(other, (Batches, list)) else NotImplemented

    __hash__ = None


def batches(tasks: SequenceOf[CopyTask], lock_budget: int, piped_only: bool = False) -> Batches:
    """Task indices to load together: big tables alone, small ones in batches of at most
    BATCH_TABLES tables, BATCH_BYTES of data and ``lock_budget`` lock entries (a batch's
    transaction holds its tables' locks to the commit).  Order is kept (largest first).
    ``piped_only`` (row mode, or a codec: options of the pipe) loads every table alone."""
    out = Batches()
    group: list[int] = []
    nbytes = locks = 0
    for i, task in enumerate(tasks):
        if piped_only or not task.small:
            out.add((i,))
            continue
        if group and (
            len(group) >= BATCH_TABLES
            or nbytes + task.data_bytes > BATCH_BYTES
            or locks + task.locks > lock_budget
        ):
            out.add(group)
            group, nbytes, locks = [], 0, 0
        group.append(i)
        nbytes += task.data_bytes
        locks += task.locks
    if group:
        out.add(group)
    return out


@dataclass(frozen=True)
class PlanInputs:
    """What the plan depends on besides the two catalogs."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    requested_format: str = "auto"
    index_rebuild_bytes: int | None = None


# Tables planned at a time: their rows from both catalogs, their checks and their tasks
# (the catalogs whole grew the planning by 2 KB a table: 100 MB at 40,000 tables).
PLAN_CHUNK = 1000


def build_plan(
    src_cur,
    dst_cur,
    inputs: PlanInputs,
    log: Logger,
    src_sizes: catalog.Sizes,
    dst_sizes: catalog.Sizes,
    fk_cur=None,
    source_for: Callable[[int], object] | None = None,
) -> Plan:
    """Read both catalogs, run every preflight check (all problems at once), then plan.

    Sizes come from :func:`catalog.read_sizes` (read beforehand in short transactions):
    nothing here takes a lock on a user table.  Neither catalog is held whole: the
    selection is kept as arrays of oids and hashes (:func:`_choose`), then the tables
    are planned a chunk at a time, largest first (:func:`_chunk`), and the FKs and
    sequences checked and packed as they are read (pgcopy.preflight).  The FKs are read
    on ``fk_cur``, a destination session of their own, beside the chunks (on ``dst_cur``
    before them without it).  ``source_for(n)``: the source cursor to read ``n`` more
    tables on, in the same snapshot (a renewed session, see connections.Renewing);
    default ``src_cur``."""
    order, chosen = _choose(src_cur, src_sizes, inputs, log)
    large_objects = catalog.large_objects(src_cur)
    problems = preflight.Problems()
    ancestors = Ancestry()
    hashes = array("q")  # each task's key's, for the coordinator's index of them
    matviews = catalog.Matviews(dst_cur)  # those reading the loaded tables, read by chunk
    unowned = array("Q")  # loaded destination tables the role does not own
    # the source's reads on a thread of their own, beside the destination's; the FKs on
    # another, beside the chunks
    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="pgcopy-source-catalog") as source,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="pgcopy-fk-catalog") as fk_reader,
    ):
        seqs_read = source.submit(
            preflight.sequences, src_cur, dst_cur, chosen, inputs.include, inputs.exclude, problems
        )
        fks_read = fk_reader.submit(preflight.foreign_keys, fk_cur or dst_cur, chosen, problems)
        if fk_cur is None:
            fks_read.result()  # one destination session: the FKs first
        seqs, in_load = seqs_read.result()

        def each() -> Iterator[CopyTask]:
            cur = src_cur
            for i in range(0, len(order), PLAN_CHUNK):
                oids = order[i : i + PLAN_CHUNK]
                if source_for is not None:  # the previous chunk's reads are all done
                    cur = source_for(len(oids))
                chunk = _chunk(cur, dst_cur, oids, (src_sizes, dst_sizes), unowned, source)
                preflight.run_checks(chunk, problems)
                if not problems:  # refused anyway: no task made, no matview looked for
                    matviews.read(dst_cur, [chunk.dst_oid(t.key) for t in chunk.present])
                    ancestors.extend(t.ancestors for t in chunk.selected)  # the tasks' order
                    hashes.extend(hash(t.key) for t in chunk.selected)
                    yield from _tasks(chunk, inputs, _in_load(cur, chunk, in_load))

        tasks = Chunked(each())
        fkeys, fk_oids, outside = fks_read.result()
    problems.add("destination_privileges", preflight.ownership(dst_cur, unowned, outside, fk_oids))
    if problems:
        raise PreflightError(problems.listed())
    return Plan(
        tasks=tasks,
        fkeys=fkeys,
        sequences=Packed(Sequences(seqs)),
        matviews=matviews.ordered(),
        ancestors=ancestors,
        large_objects=large_objects,
        index=KeyIndex.from_hashes(hashes),
    )


def _same(value):
    return value


def _choose(src_cur, sizes: catalog.Sizes, inputs: PlanInputs, log: Logger) -> tuple[array, preflight.Chosen]:
    """The selected leaf tables' source oids, largest first (then by name), and the
    selection as KeySets; warnings for patterns that matched nothing."""
    chooser = patterns.Selector(
        patterns.parse_patterns(inputs.include), patterns.parse_patterns(inputs.exclude)
    )
    oids, totals = array("Q"), array("q")
    sel, rel = KeySet(), KeySet()
    matched = 0
    for t in catalog.iter_tables(src_cur, sizes, _same):  # in name order
        if not chooser.wants(t):
            continue
        matched += 1
        if t.kind == "partitioned parent":
            continue
        sel.add(t.key)
        rel.add(t.key)
        for a in t.ancestors:
            rel.add(a)
        oids.append(t.oid)
        totals.append(t.total_bytes)
    for text in chooser.unmatched:
        log.warn(f"pattern {text!r} matches no table")
    if not matched or not oids:
        raise PreflightError(["no table matches the selection"])
    # a stable sort: equal sizes stay in name order
    order = array("Q", (oids[i] for i in argsort(array("q", (-t for t in totals)))))
    return order, preflight.Chosen(sel, rel)


def _chunk(
    src_cur, dst_cur, oids, sizes: tuple[catalog.Sizes, catalog.Sizes], unowned: array, source
) -> preflight.Catalogs:
    """One chunk of the tables to load, read from both sides, in the plan's order."""
    by_oid = {t.oid: t for t in catalog.iter_tables(src_cur, sizes[0], _same, oids=oids)}
    selected = [by_oid[oid] for oid in oids]
    return preflight.read_catalogs(src_cur, dst_cur, selected, sizes[1], unowned, source)


def _in_load(src_cur, c: preflight.Catalogs, in_load: KeySet) -> dict[Key, tuple[Key, ...]]:
    """The chunk's tables -> the sequences each owns that are set inside its load
    transaction (see preflight.sequences); the others are set after the load."""
    out: dict[Key, list[Key]] = {}
    for s in catalog.read_sequences(src_cur, c.shared, owners=[t.oid for t in c.present]):
        if s.key in in_load and s.owner_table in c.sel_keys:
            out.setdefault(s.owner_table, []).append(s.key)
    return {k: tuple(v) for k, v in out.items()}


def _tasks(c: preflight.Catalogs, inputs: PlanInputs, in_load: dict[Key, tuple[Key, ...]]) -> list[CopyTask]:
    """The chunk's tasks, in its order."""
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
    return list(_each_task(c, in_load, decide, rebuild, facts))


def _each_task(
    c: preflight.Catalogs,
    in_load: dict[Key, tuple[Key, ...]],
    decide: Callable[[Table], tuple[str, str]],
    rebuild: dict[Key, tuple[catalog.Index, ...]],
    facts: dict[int, catalog.LoadFacts],
) -> Iterator[CopyTask]:
    for t in c.selected:
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
