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


# what an FK end is waiting for (see EarlyRestorer._end): a task index, or
NOT_LOADED = -1  # a table this run does not load: nothing
# -2 - n: the leaves of the n-th partitioned parent (EarlyRestorer.leaves)


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
                parents.setdefault(parent, array("L")).append(leaf)
        self.leaves = list(parents.values())
        number = {parent: n for n, parent in enumerate(parents)}
        # each FK's two ends as numbers, and the FKs still waiting by position: no FK
        # object is kept through the load (the plan holds them packed)
        self.ends = array("i")
        for fk in fkeys:
            self.ends.append(self._end(fk.table, number))
            self.ends.append(self._end(fk.ref_table, number))
        self.waiting = array("i", range(len(fkeys)))
        self.finished = bytearray(len(index))  # a byte per loaded table
        self.restored = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pgcopy-fk-early", daemon=True)

    def _end(self, key: Key, parent_number: dict[Key, int]) -> int:
        i = self.index.get(key)
        if i is not None:
            return i
        n = parent_number.get(key)
        return NOT_LOADED if n is None else -2 - n

    def start(self) -> None:
        if self.waiting:
            self._thread.start()

    def table_finished(self, key: Key) -> None:
        with self._lock:
            self.finished[self.index[key]] = 1

    def request_stop(self) -> None:
        """No new batches (the one in progress goes on until cancelled)."""
        self._stop.set()

    def stop(self) -> None:
        """No new batches; wait for the one in progress to end (a stop cancels its
        statements), then STEP 6 restores what is left on all its sessions."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _finished(self, end: int) -> bool:
        """Has every loaded table that an FK end covers finished?"""
        if end >= 0:
            return bool(self.finished[end])
        return end == NOT_LOADED or all(self.finished[i] for i in self.leaves[-2 - end])

    def _ready(self) -> array:
        """The FKs whose tables have all finished (their positions), out of the waiting."""
        with self._lock:
            ready, waiting = array("i"), array("i")
            for pos in self.waiting:
                done = self._finished(self.ends[2 * pos]) and self._finished(self.ends[2 * pos + 1])
                (ready if done else waiting).append(pos)
            self.waiting = waiting
        return ready

    def _restore(self, ready: array, sessions: fkmod.Sessions) -> fkmod.RestoreOutcome:
        # read a window at a time by restore_all: a list of every ready FK held them all
        # as objects at once (10,000 became ready together at the end of a 40,000-table
        # load, and the allocator kept the 5 MB they took through the rest of the run)
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
