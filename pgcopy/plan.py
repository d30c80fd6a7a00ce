"""From two catalogs to a Plan: what to load, which FKs to drop and put back, what to check.

All preflight problems are collected and raised together, before anything changes.
"""

from __future__ import annotations

import pickle
import zlib
from collections.abc import Iterable, Iterator
from collections.abc import Sequence as SequenceOf
from dataclasses import dataclass, field, replace
from itertools import islice
from typing import Generic, TypeVar

from pgcopy import catalog, formats, patterns, preflight
from pgcopy.catalog import ForeignKey, Key, Sequence, Table
from pgcopy.errors import PreflightError
from pgcopy.log import Logger
from pgcopy.task import SMALL_BYTES, CopyTask, SequenceValue

T = TypeVar("T")


class Packed(Generic[T]):
    """An object kept as compressed pickle bytes, made again by :meth:`open`.

    For what the coordinator needs only before or after the load: as objects it would stay
    in memory through the load, next to every worker (at 20,000 tables the sequences were
    6 MB of objects)."""

    __slots__ = ("data",)

    def __init__(self, obj: T):
        self.data = zlib.compress(pickle.dumps(obj, pickle.HIGHEST_PROTOCOL), 1)

    def open(self) -> T:
        return pickle.loads(zlib.decompress(self.data))

    def __eq__(self, other) -> bool:
        return isinstance(other, Packed) and self.open() == other.open()

    def __getstate__(self):
        return self.data

    def __setstate__(self, data: bytes) -> None:
        self.data = data


def _same_items(a, b) -> bool:
    """A list's equality, for the packed lists."""
    return len(a) == len(b) and all(x == y for x, y in zip(a, b, strict=True))


class Chunked(SequenceOf[T]):
    """A long list kept as compressed pickles of CHUNK items each; an item is made again
    when read, with the last few chunks read kept as objects.

    The plan's tasks and FKs are read through the load a few at a time (handed out, named
    on the display), and whole only before and after it.  As objects they held 18 MB at
    20,000 tables (14 objects a table) next to the workers; packed, under 1 MB."""

    __slots__ = ("chunks", "length", "_recent")  # chunks: one Packed list each
    CHUNK = 128
    RECENT = 4  # chunks kept as objects: the load reads a few neighbouring ones at a time

    def __init__(self, items: Iterable[T] = ()):
        self.chunks: list[Packed[list[T]]] = []
        self.length = 0
        it = iter(items)
        while part := list(islice(it, self.CHUNK)):
            self.chunks.append(Packed(part))
            self.length += len(part)
        # (chunk number, its items), newest first; replaced whole, never changed in place,
        # so the display's and the FK restore's threads can read it without a lock
        self._recent: tuple = ()

    def _chunk(self, c: int) -> list[T]:
        recent = self._recent
        for number, items in recent:
            if number == c:
                return items
        items = self.chunks[c].open()
        self._recent = ((c, items), *recent[: self.RECENT - 1])
        return items

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.length))]
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError("Chunked index out of range")
        return self._chunk(i // self.CHUNK)[i % self.CHUNK]

    def __iter__(self) -> Iterator[T]:
        for chunk in self.chunks:  # kept out of the recent chunks: a pass reads them all
            yield from chunk.open()

    def __eq__(self, other) -> bool:
        return _same_items(self, other) if isinstance(other, (Chunked, list)) else NotImplemented

    __hash__ = None  # a list's equality, a list's unhashability

    def __repr__(self) -> str:
        return f"Chunked({self.length} items in {len(self.chunks)} chunks)"

    def __getstate__(self):
        return self.chunks, self.length

    def __setstate__(self, state) -> None:
        self.chunks, self.length = state
        self._recent = ()


class Appended(Generic[T]):
    """A list that grows at its end and is read whole, kept as :class:`Chunked` keeps one:
    full chunks packed, the items after them as objects.

    For the load's results: as objects they grew the coordinator by 11 MB through the
    load at 40,000 tables, next to every worker."""

    __slots__ = ("chunks", "tail", "packed_items")

    def __init__(self, items: Iterable[T] = ()):
        self.chunks: list[Packed[list[T]]] = []
        self.tail: list[T] = []
        self.packed_items = 0
        for item in items:
            self.append(item)

    def append(self, item: T) -> None:
        self.tail.append(item)
        if len(self.tail) == Chunked.CHUNK:
            self.chunks.append(Packed(self.tail))
            self.packed_items += len(self.tail)
            self.tail = []

    def __len__(self) -> int:
        return self.packed_items + len(self.tail)

    def __iter__(self) -> Iterator[T]:
        for chunk in self.chunks:
            yield from chunk.open()
        yield from list(self.tail)

    def __eq__(self, other) -> bool:
        return _same_items(self, other) if isinstance(other, (Appended, list)) else NotImplemented

    __hash__ = None

    def __repr__(self) -> str:
        return f"Appended({len(self)} items)"


@dataclass
class Sequences:
    """The sequences to set, and how (see pgcopy.sequences)."""

    sequences: list[Sequence]
    owned: set[Key] = field(default_factory=set)  # destination sequences the role owns
    in_load: set[Key] = field(default_factory=set)  # set inside their table's load
    # the others' values, read right after the snapshot, set after the load
    values: dict[Key, SequenceValue] = field(default_factory=dict)


@dataclass
class Plan:
    """Everything the run will do, worked out from both catalogs before anything changes."""

    tasks: SequenceOf[CopyTask]  # a Chunked once planned (see :meth:`packed`)
    fkeys: SequenceOf[ForeignKey]
    sequences: Packed[Sequences]
    matviews: list[Key]
    # loaded partitions -> their partitioned parents (other tables have none: no entry)
    ancestors: dict[Key, tuple[Key, ...]] = field(default_factory=dict)
    large_objects: int = 0  # on the source; not copied

    def packed(self) -> Plan:
        """This plan with its tasks and FKs kept packed (:class:`Chunked`)."""
        return replace(self, tasks=Chunked(self.tasks), fkeys=Chunked(self.fkeys))


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
    # packed once the catalogs are gone: pickling 40,000 sequences next to them was the
    # planning's peak (the pickle's memo alone, 8 MB)
    return Plan(sequences=Packed(sequences), **fields)


def _planned(src_cur, dst_cur, inputs, log, src_sizes, dst_sizes) -> tuple[dict, Sequences]:
    """The plan's fields but its sequences, and those; the catalogs die with this frame."""
    shared = catalog.Shared()  # for the plan's making only: the plan holds what it shares
    src_tables = catalog.read_tables(src_cur, src_sizes, shared)
    dst_tables = catalog.read_tables(dst_cur, dst_sizes, shared)
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
    return fields, Sequences(cats.sequences, cats.owned_sequences, in_load_keys)


def _in_load(c: preflight.Catalogs) -> dict[Key, tuple[Key, ...]]:
    """Loaded table -> the sequences it owns that are set inside its load transaction (the
    role owns them on the destination); the others are set after the load."""
    sel = c.sel_keys
    out: dict[Key, list[Key]] = {}
    for s in c.sequences:
        if s.owner_table in sel and s.key in c.owned_sequences:
            out.setdefault(s.owner_table, []).append(s.key)
    return {k: tuple(v) for k, v in out.items()}


def _tasks(c: preflight.Catalogs, inputs: PlanInputs, in_load: dict[Key, tuple[Key, ...]]) -> list[CopyTask]:
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
    tasks = []
    for t in c.selected:
        dst = c.dst_by_key[t.key]
        fact = facts.get(dst.oid, catalog.LoadFacts(False, 1))
        small = t.data_bytes <= SMALL_BYTES and dst.data_bytes <= SMALL_BYTES
        cols = [col for col in c.src_cols.get(t.oid, []) if not col.generated]
        fmt, reason = decide(t)
        tasks.append(
            CopyTask(
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
        )
    tasks.sort(key=lambda task: (-task.est_bytes, task.key))  # largest first
    return tasks
