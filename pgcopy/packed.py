"""Lists and objects kept as compressed pickles: what the coordinator holds for a whole
run (the plan's tasks, FKs and sequences, the load's results) but reads a few at a time,
or only before and after the load, is not kept as objects next to every worker."""

from __future__ import annotations

import pickle
import zlib
from array import array
from collections.abc import Iterable, Iterator
from collections.abc import Sequence as SequenceOf
from itertools import islice
from typing import Generic, TypeVar

from pgcopy.spill import Spill, SpilledBytes

T = TypeVar("T")


def pack(obj) -> bytes:
    return zlib.compress(pickle.dumps(obj, pickle.HIGHEST_PROTOCOL), 1)


def unpack(data):
    return pickle.loads(zlib.decompress(data))


class Packed(Generic[T]):
    """An object kept as compressed pickle bytes, made again by :meth:`open`.

    For what the coordinator needs only before or after the load: as objects it would stay
    in memory through the load, next to every worker (at 20,000 tables the sequences were
    6 MB of objects)."""

    __slots__ = ("data",)

    def __init__(self, obj: T):
        self.data = pack(obj)

    def open(self) -> T:
        return unpack(self.data[:])

    def spill_into(self, spill: Spill) -> None:
        """Its bytes moved into the run's file (pgcopy.spill)."""
        if not isinstance(self.data, SpilledBytes):
            self.data = SpilledBytes(spill, self.data)

    def __eq__(self, other) -> bool:
        return isinstance(other, Packed) and self.open() == other.open()

    def __getstate__(self):
        return self.data

    def __setstate__(self, data: bytes) -> None:
        self.data = data


class Chunks:
    """Packed chunks end to end in one buffer, with where each ends: no Python object
    per chunk.  Objects made for good while the load runs land in pages the FK restore's
    threads had filled for a moment, and keep Python's allocator from giving them back
    (traced at 40,000 tables: a ``Packed`` per chunk of results was most of what held the
    arenas added during the load)."""

    __slots__ = ("data", "ends")

    def __init__(self):
        self.data: bytearray | SpilledBytes = bytearray()
        self.ends = array("Q")

    def add(self, items: list) -> None:
        if isinstance(self.data, SpilledBytes):
            raise TypeError("spilled chunks are read only")
        self.data += pack(items)
        self.ends.append(len(self.data))

    def open(self, c: int) -> list:
        return unpack(self.data[self.ends[c - 1] if c else 0 : self.ends[c]])

    def __len__(self) -> int:
        return len(self.ends)

    def spill_into(self, spill: Spill) -> None:
        if not isinstance(self.data, SpilledBytes):
            self.data = SpilledBytes(spill, self.data)

    def __getstate__(self):
        return (self.data if isinstance(self.data, bytearray) else bytearray(self.data[:])), self.ends

    def __setstate__(self, state) -> None:
        self.data, self.ends = state


def _same_items(a, b) -> bool:
    """A list's equality, for the packed lists."""
    return len(a) == len(b) and all(x == y for x, y in zip(a, b, strict=True))


class Chunked(SequenceOf[T]):
    """A long list kept as compressed pickles of CHUNK items each; an item is made again
    when read, with the last few chunks read kept as objects.

    The plan's tasks and FKs are read through the load a few at a time (handed out, named
    on the display), and whole only before and after it.  As objects they held 18 MB at
    20,000 tables (14 objects a table) next to the workers; packed, under 1 MB."""

    __slots__ = ("chunks", "length", "_recent")
    CHUNK = 128
    RECENT = 4  # chunks kept as objects: the load reads a few neighbouring ones at a time
    # A list of at most this many chunks keeps every chunk it has read as objects, passes
    # included: a run reads its FKs and tasks whole a dozen times, 235 chunks unpickled
    # at 1,000 tables; the memory this holds (16 chunks a list) does not grow with the
    # table count.
    KEPT = 16

    def __init__(self, items: Iterable[T] = ()):
        self.chunks = Chunks()
        self.length = 0
        it = iter(items)
        while part := list(islice(it, self.CHUNK)):
            self.chunks.add(part)
            self.length += len(part)
        # (chunk number, its items), newest first; replaced whole, never changed in place,
        # so the display's and the FK restore's threads can read it without a lock
        self._recent: tuple = ()

    def _chunk(self, c: int) -> list[T]:
        recent = self._recent
        for number, items in recent:
            if number == c:
                return items
        items = self.chunks.open(c)
        keep = len(self.chunks) if len(self.chunks) <= self.KEPT else self.RECENT
        self._recent = ((c, items), *recent[: keep - 1])
        return items

    def __len__(self) -> int:
        return self.length

    def spill_into(self, spill: Spill) -> None:
        """Its packed chunks moved into the run's file (pgcopy.spill)."""
        self.chunks.spill_into(spill)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.length))]
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError("Chunked index out of range")
        return self._chunk(i // self.CHUNK)[i % self.CHUNK]

    def __iter__(self) -> Iterator[T]:
        if len(self.chunks) <= self.KEPT:
            for c in range(len(self.chunks)):
                yield from self._chunk(c)
            return
        for c in range(len(self.chunks)):  # kept out of the recent chunks: a pass reads them all
            yield from self.chunks.open(c)

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

    For the load's results: with them as objects the coordinator grew by 11 MB through
    the load at 40,000 tables, next to every worker; packed, by 4 MB."""

    __slots__ = ("chunks", "tail", "packed_items", "_last")

    def __init__(self, items: Iterable[T] = ()):
        self.chunks = Chunks()
        self.tail: list[T] = []
        self.packed_items = 0
        self._last: tuple = (-1, [])  # the chunk read last, as objects (see __getitem__)
        for item in items:
            self.append(item)

    def __getitem__(self, i: int) -> T:
        """The ``i``-th item; a packed one's chunk is kept as objects until another is
        read (reads that go roughly in order unpack each chunk about once)."""
        if not 0 <= i < len(self):
            raise IndexError("Appended index out of range")
        if i >= self.packed_items:
            return self.tail[i - self.packed_items]
        c = i // Chunked.CHUNK
        if self._last[0] != c:
            self._last = (c, self.chunks.open(c))
        return self._last[1][i % Chunked.CHUNK]

    def append(self, item: T) -> None:
        self.tail.append(item)
        if len(self.tail) == Chunked.CHUNK:
            self.chunks.add(self.tail)
            self.packed_items += len(self.tail)
            self.tail = []

    def __len__(self) -> int:
        return self.packed_items + len(self.tail)

    def __iter__(self) -> Iterator[T]:
        for c in range(len(self.chunks)):
            yield from self.chunks.open(c)
        yield from list(self.tail)

    def __eq__(self, other) -> bool:
        return _same_items(self, other) if isinstance(other, (Appended, list)) else NotImplemented

    __hash__ = None

    def __repr__(self) -> str:
        return f"Appended({len(self)} items)"
