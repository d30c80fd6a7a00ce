"""Foreign keys restored during the load, as soon as every table they touch has finished.

The load's tail (the last big tables) and the FK validations of the tables already loaded
overlap instead of running one after the other.  This is an optimisation only: STEP 6 runs
``restore_all`` over every journaled FK afterwards, which skips FKs already exactly as
journaled, finishes anything this thread left undone, and makes the one final check before
the journal goes.
"""

from __future__ import annotations

import threading

from pgcopy import fkeys as fkmod
from pgcopy.catalog import ForeignKey, Key

POLL_SECONDS = 0.3


class EarlyRestorer:
    """A coordinator thread; ``table_finished`` is called for every table done or failed."""

    def __init__(
        self,
        target: fkmod.RestoreTarget,
        fkeys: list[ForeignKey],
        ancestors: dict[Key, tuple[Key, ...]],
        log,
        index: dict[Key, int] | None = None,
    ):
        """``ancestors`` has every loaded table; ``index`` numbers them (the display's)."""
        self.target, self.log = target, log
        # a key stands for the loaded tables it covers: itself, or a partitioned parent's
        # leaves; only parents get an entry (thousands of one-table sets cost 0.8 MB)
        self.leaves: dict[Key, list[Key]] = {}
        for leaf, parents in ancestors.items():
            for parent in parents:
                self.leaves.setdefault(parent, []).append(leaf)
        # a byte per loaded table, not a set (20,000 keys held 2 MB through the load)
        self.index = index if index is not None else {k: i for i, k in enumerate(ancestors)}
        # each FK waits for the tables its two ends cover (worked out at each round: a
        # tuple of them per FK held 1.1 MB at 10,000 FKs)
        self.waiting = list(fkeys)
        self.finished = bytearray(len(self.index))
        self.restored = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pgcopy-fk-early", daemon=True)

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

    def _covered_finished(self, k: Key) -> bool:
        """Has every loaded table that ``k`` covers finished?"""
        finished, index = self.finished, self.index
        i = index.get(k)
        if i is not None and not finished[i]:
            return False
        return all(finished[index[leaf]] for leaf in self.leaves.get(k, ()))

    def _ready(self) -> list[ForeignKey]:
        with self._lock:
            ready, waiting = [], []
            for fk in self.waiting:
                done = self._covered_finished(fk.table) and self._covered_finished(fk.ref_table)
                (ready if done else waiting).append(fk)
            self.waiting = waiting
        return ready

    def _run(self) -> None:
        # the same sessions for every round; a stop ends the round between two batches
        sessions = fkmod.Sessions(self.target, self._stop.is_set)
        try:
            while not self._stop.wait(POLL_SECONDS):
                ready = self._ready()
                if not ready:
                    continue
                try:
                    out = fkmod.restore_all(self.target, ready, sessions)
                    self.restored += len(out.restored)
                    self.log.debug(
                        f"{len(out.restored)} of {len(ready)} foreign keys restored during the load"
                    )
                except Exception as exc:  # STEP 6 does it again, and reports
                    self.log.debug(f"early foreign key restore stopped: {exc}")
                    return
        finally:
            sessions.close()
