"""Foreign keys restored during the load, as soon as every table they touch has finished.

The load's tail (the last big tables) and the FK validations of the tables already loaded
overlap instead of running one after the other.  This is an optimisation only: STEP 6 runs
``restore_all`` over every journaled FK afterwards, which skips FKs already exactly as
journaled, finishes anything this thread left undone, and makes the one final check before
the journal goes.
"""

from __future__ import annotations

import threading
from array import array
from collections.abc import Sequence
from dataclasses import replace

from pgcopy import fkeys as fkmod
from pgcopy.catalog import ForeignKey, Key
from pgcopy.keys import KeyIndex
from pgcopy.plan import Ancestry

POLL_SECONDS = 0.3


class EarlyRestorer:
    """A coordinator thread; ``table_finished`` is called for every table done or failed."""

    def __init__(
        self,
        target: fkmod.RestoreTarget,
        fkeys: Sequence[ForeignKey],
        ancestors: Ancestry,
        index: KeyIndex,
        log,
    ):
        """``fkeys``, the plan's (``target.on_settled`` hears their positions in it);
        ``ancestors``, the loaded partitions' parents; ``index`` numbers the loaded tables."""
        self.target, self.log = target, log
        self.fkeys, self.index = fkeys, index
        # a partitioned parent stands for its loaded leaves
        parents: dict[Key, array] = {}
        for leaf, ups in ancestors.items():  # by position
            for parent in ups:
                parents.setdefault(parent, array("I")).append(leaf)
        # Per FK, the number of its tables' loads not finished yet (a table the run does
        # not load: none), and per loaded table the FKs that wait for it: a finished table
        # makes its FKs ready at once.  Scanning every waiting FK at each poll took 13 ms at
        # 80,000 FKs, under the lock each finished table takes, all through the load.
        tables, fks = array("I"), array("I")  # (table, FK) pairs, in FK order
        self.left = array("I")
        for pos, fk in enumerate(fkeys):
            before = len(tables)
            for key in (fk.table, fk.ref_table):
                i = index.get(key)
                if i is not None:
                    tables.append(i)
                    fks.append(pos)
                elif key in parents:
                    tables.extend(parents[key])
                    fks.extend(pos for _ in parents[key])
            self.left.append(len(tables) - before)
        # the pairs grouped by table (a counting sort): the FKs of table i are
        # waiters[first[i]:first[i + 1]]
        self.first = array("I", bytes(4 * (len(index) + 1)))
        for t in tables:
            self.first[t + 1] += 1
        for i in range(len(index)):
            self.first[i + 1] += self.first[i]
        self.waiters = array("I", bytes(4 * len(tables)))
        fill = array("I", self.first)
        for t, pos in zip(tables, fks, strict=True):
            self.waiters[fill[t]] = pos
            fill[t] += 1
        del tables, fks, fill
        self.ready = array("I", (pos for pos, n in enumerate(self.left) if n == 0))
        self.finished = bytearray(len(index))  # a byte per loaded table
        self.restored = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pgcopy-fk-early", daemon=True)

    def spill_into(self, spill) -> None:
        """Its per-table and per-FK arrays moved into the run's file (a pgcopy.spill.Spill)."""
        from pgcopy.spill import spilled

        with self._lock:
            for name in ("left", "first", "waiters", "finished"):
                setattr(self, name, spilled(spill, getattr(self, name)))

    def start(self) -> None:
        if len(self.left):
            self._thread.start()

    def table_finished(self, key: Key, position: int | None = None) -> None:
        """``key`` finished (``position``: its place in the plan, when known)."""
        i = self.index[key] if position is None else position
        with self._lock:
            if self.finished[i]:
                return
            self.finished[i] = 1
            for pos in self.waiters[self.first[i] : self.first[i + 1]]:
                self.left[pos] -= 1
                if not self.left[pos]:
                    self.ready.append(pos)

    def request_stop(self) -> None:
        """No new batches (the one in progress goes on until cancelled)."""
        self._stop.set()

    def stop(self) -> None:
        """No new batches; wait for the one in progress to end (a stop cancels its
        statements), then STEP 6 restores what is left on all its sessions."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _ready(self) -> array:
        """The FKs whose tables have all finished since the last call (their positions,
        in the plan's order)."""
        with self._lock:
            ready, self.ready = self.ready, array("I")
        # The plan keeps its FKs packed by chunks, a few unpacked at a time.  Read in the
        # order tables finish (largest first, not the FKs' name order), a round's FKs
        # cost up to a chunk of 128 unpacked each (4,000 ready in shuffled order: 3,482
        # chunks, 0.78 s); in the plan's order, each chunk once a round (32, 0.01 s).
        return array("I", sorted(ready))

    def _restore(self, ready: array, sessions: fkmod.Sessions) -> fkmod.RestoreOutcome:
        # read a window at a time by restore_all: a list of every ready FK held them all
        # as objects at once, however many became ready together (2 MB in one round of a
        # 40,000-table load, traced)
        return fkmod.restore_all(renumbered(self.target, ready), At(self.fkeys, ready), sessions)

    def _run(self) -> None:
        # the same sessions for every round; a stop ends the round between two batches
        sessions = fkmod.Sessions(self.target, self._stop.is_set)
        try:
            while not self._stop.wait(POLL_SECONDS):
                ready = self._ready()
                if not ready:
                    continue
                try:
                    out = self._restore(ready, sessions)
                    self.restored += len(out.restored)
                    self.log.debug(
                        f"{len(out.restored)} of {len(ready)} foreign keys restored during the load"
                    )
                except Exception as exc:  # STEP 6 does it again, and reports
                    self.log.debug(f"early foreign key restore stopped: {exc}")
                    return
        finally:
            sessions.close()


class At(Sequence):
    """``items`` at ``positions``, read when asked."""

    __slots__ = ("items", "positions")

    def __init__(self, items: Sequence, positions: Sequence[int]):
        self.items, self.positions = items, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.items[p] for p in self.positions[i]]
        return self.items[self.positions[i]]


def renumbered(target: fkmod.RestoreTarget, positions: Sequence[int]) -> fkmod.RestoreTarget:
    """``target`` for restore_all over the plan's FKs at ``positions``: restore_all tells
    positions in the list it is given, the display hears the plan's."""
    heard = target.on_settled
    if heard is None:
        return target
    return replace(target, on_settled=lambda i, seconds: heard(positions[i], seconds))
