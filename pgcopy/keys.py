"""Sets and indexes of table keys that do not grow by a Python object per key.

A key is a tuple of two names: in a set or as a dict key it costs its tuple, its name
string and a slot, about 150 bytes, and both the planning and the coordinator held one
such collection per table whatever the table count.  Here a key is its hash, 8 bytes in
a sorted array (12 with a position).  Hashes are for one process only (str hashes are
salted per process), and two keys of one hash (a chance of about 1 in 10^14 a lookup at
100,000 keys) would be taken for each other.
"""

from __future__ import annotations

import heapq
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence

Key = tuple[str, str]


# Sorted in runs of this many, then merged: sorting a whole array makes a list of one
# Python int per item, and the sort of 80,000 positions with their keys grew the
# planning by several MB that its allocator kept.
RUN = 4096


def argsort(values: array) -> array:
    """The positions of ``values`` in ascending order of value, equal values in position
    order, as an array."""
    runs = [
        array("I", sorted(range(start, min(start + RUN, len(values))), key=values.__getitem__))
        for start in range(0, len(values), RUN)
    ]
    merged = heapq.merge(*(((values[i], i) for i in run) for run in runs))
    return array("I", (i for _, i in merged))


class KeySet:
    """Membership only; keys added in any order, sorted at the first lookup."""

    __slots__ = ("_hashes", "_sorted")

    def __init__(self, keys: Iterable[Key] = ()):
        self._hashes = array("q", map(hash, keys))
        self._sorted = False

    def add(self, key: Key) -> None:
        self._hashes.append(hash(key))
        self._sorted = False

    def __contains__(self, key) -> bool:
        if not self._sorted:
            hashes = self._hashes
            self._hashes = array("q", (hashes[i] for i in argsort(hashes)))
            self._sorted = True
        h = hash(key)
        i = bisect_left(self._hashes, h)
        return i < len(self._hashes) and self._hashes[i] == h


# Hashes made in one process are good in another only if both salt str hashes alike: a
# forked child does (the planning's, pgcopy.planner), an exec'd one need not.
PROBE = ("pgcopy", "hash salt")


class KeyIndex:
    """Each key's position in ``keys`` (the plan's tasks' keys), read like a dict.

    The planning makes it (:meth:`from_hashes`) and hands it over: its sort's transient
    list of 40,000 positions stayed in the coordinator's memory as 2.2 MB when made
    there.  :meth:`usable` says whether this process hashes as the maker did."""

    __slots__ = ("_hashes", "_positions", "probe")

    def __init__(self, keys: Iterable[Key]):
        self._sorted(array("q", map(hash, keys)))

    @classmethod
    def from_hashes(cls, hashes: array) -> KeyIndex:
        """From each key's hash (``hash(key)``), in the keys' order."""
        index = cls.__new__(cls)
        index._sorted(hashes)
        return index

    def _sorted(self, hashes: array) -> None:
        order = argsort(hashes)
        self._hashes = array("q", (hashes[i] for i in order))
        self._positions = array("I", order)
        self.probe = hash(PROBE)

    def spill_into(self, spill) -> None:
        """Its arrays moved into the run's file (a pgcopy.spill.Spill)."""
        from pgcopy.spill import FileArray, SortedFileArray

        if not isinstance(self._hashes, SortedFileArray):
            self._hashes = SortedFileArray(spill, self._hashes)
            self._positions = FileArray(spill, self._positions)

    def in_memory(self) -> None:
        """Its arrays read back from the run's file (lookups by key cost a page read there)."""
        from pgcopy.spill import unspilled

        self._hashes, self._positions = unspilled(self._hashes), unspilled(self._positions)

    def usable(self) -> bool:
        return self.probe == hash(PROBE)

    def __eq__(self, other) -> bool:
        if not isinstance(other, KeyIndex):
            return NotImplemented
        return (self._hashes, self._positions, self.probe) == (other._hashes, other._positions, other.probe)

    __hash__ = None

    def get(self, key, default=None):
        h = hash(key)
        hashes = self._hashes
        # spilled: a search of the one page that can hold it (pgcopy.spill)
        i = bisect_left(hashes, h) if isinstance(hashes, array) else hashes.bisect_left(h)
        if i < len(hashes) and hashes[i] == h:
            return self._positions[i]
        return default

    def __getitem__(self, key) -> int:
        i = self.get(key)
        if i is None:
            raise KeyError(key)
        return i

    def __contains__(self, key) -> bool:
        return self.get(key) is not None

    def __len__(self) -> int:
        return len(self._positions)


class TaskKeys(Sequence):
    """The tasks' keys by position, read from the (packed) tasks: no list of every key."""

    __slots__ = ("tasks",)

    def __init__(self, tasks: Sequence):
        self.tasks = tasks

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [t.key for t in self.tasks[i]]
        return self.tasks[i].key

    def __iter__(self) -> Iterator[Key]:
        return (t.key for t in self.tasks)
