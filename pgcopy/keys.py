"""Sets and indexes of table keys that do not grow by a Python object per key.

A key is a tuple of two names: in a set or as a dict key it costs its tuple, its name
string and a slot, about 150 bytes, and both the planning and the coordinator held one
such collection per table whatever the table count.  Here a key is its hash, 8 bytes in
a sorted array (12 with a position).  Hashes are for one process only (str hashes are
salted per process), and two keys of one hash (a chance of about 1 in 10^14 a lookup at
100,000 keys) would be taken for each other.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence

Key = tuple[str, str]


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
            self._hashes = array("q", sorted(set(self._hashes)))
            self._sorted = True
        h = hash(key)
        i = bisect_left(self._hashes, h)
        return i < len(self._hashes) and self._hashes[i] == h


class KeyIndex:
    """Each key's position in ``keys`` (the plan's tasks' keys), read like a dict."""

    __slots__ = ("_hashes", "_positions")

    def __init__(self, keys: Iterable[Key]):
        hashes = array("q", map(hash, keys))
        order = sorted(range(len(hashes)), key=hashes.__getitem__)
        self._hashes = array("q", (hashes[i] for i in order))
        self._positions = array("L", order)

    def get(self, key, default=None):
        h = hash(key)
        i = bisect_left(self._hashes, h)
        if i < len(self._hashes) and self._hashes[i] == h:
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
