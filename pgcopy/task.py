"""What a worker is handed: one table's load, worked out by the plan.

Its own module so a worker imports (and unpickles) this and the catalog's types, not the
planner and its preflight checks.
"""

from __future__ import annotations

from dataclasses import dataclass

from pgcopy import catalog
from pgcopy.catalog import Key, Trigger, qualname
from pgcopy.records import by_position

# Small tables cost more in per-table overhead than in data.  At most this big on the
# source, a table loads in a batch with other small tables (one destination transaction and
# one commit for the batch); at most this big on both sides, it is emptied with DELETE
# instead of TRUNCATE (no new relation files to create, sync and unlink: ~1.7 ms instead of
# ~6 ms a table with fsync on).
SMALL_BYTES = 1 << 20


@by_position
@dataclass(frozen=True, slots=True)
class SequenceValue:
    """A sequence's state on the source (``last_value``, ``is_called``)."""

    key: Key
    last_value: int
    is_called: bool


@by_position
@dataclass(frozen=True, slots=True)
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
    # NOT VALID CHECKs set aside after the TRUNCATE and re-added NOT VALID before the commit
    checks: tuple[catalog.CheckConstraint, ...] = ()
    # sequences this table owns: read from the source and set inside its load transaction,
    # right before the commit (see stream.set_sequences)
    sequences: tuple[Key, ...] = ()
    # how the destination is emptied: 'truncate', or 'delete' for a small table (see SMALL_BYTES)
    clear: str = "truncate"
    relations: int = 1  # destination relations the load locks (table, TOAST, indexes)

    @property
    def small(self) -> bool:
        return self.data_bytes <= SMALL_BYTES

    @property
    def locks(self) -> int:
        return self.relations + len(self.sequences)

    @property
    def qualname(self) -> str:
        return qualname(self.key)
