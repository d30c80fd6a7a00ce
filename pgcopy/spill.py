"""What the coordinator keeps per table and FK through the load, in a file instead of its memory.

Through the load the coordinator holds a few numbers per table and FK (sizes, states,
expected work, the FKs each table waits for, the index of positions) and the packed
plan: about 100 bytes a table, 8 MB at 80,000 tables next to the workers, so its memory
grew with the table count.  Here they go into one temporary file, read and written a
page at a time with pread and pwrite: the kernel's page cache keeps them, not the
process (pgcopydb keeps its catalogs in SQLite files for the same reason), and each
array keeps its last few pages in memory.  The file is made in the state directory and
unlinked at once, so a run killed at any point leaves nothing behind.
"""

from __future__ import annotations

import os
import threading
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterator

from pgcopy.errors import PgcopyError

# Each array's pages kept in memory, and their size: a page of 4-byte items holds 4,096
# of them.  The load reads and writes its arrays roughly in the order it hands out the
# tables (largest first, which the arrays follow), so a few pages serve most accesses.
PAGE_BYTES = 1 << 14
KEPT_PAGES = 4


class Spill:
    """An unlinked temporary file (in ``directory``, else TMPDIR) that regions are added
    to at its end, from any thread."""

    def __init__(self, directory: str | None = None):
        import tempfile  # the coordinator's only: workers import this module's users

        try:
            self._file = tempfile.TemporaryFile(prefix="pgcopy-spill-", dir=directory)
        except OSError as exc:
            raise PgcopyError(
                f"cannot make the run's temporary file in {directory or tempfile.gettempdir()}: "
                f"{exc.strerror or exc}; nothing was changed"
            ) from None
        self.fd = self._file.fileno()
        self.size = 0
        self._lock = threading.Lock()

    def put(self, data, pad_to: int = 1) -> int:
        """Keep ``data`` (anything with the buffer protocol) at the file's end, padded with
        zeros to a multiple of ``pad_to`` bytes; its offset."""
        view = memoryview(data).cast("B")
        with self._lock:
            offset = self.size
            self.size += -(-len(view) // pad_to) * pad_to
            self.write(offset, view)
            if self.size > offset + len(view):
                os.ftruncate(self.fd, self.size)  # the padding: a hole, read as zeros
        return offset

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        if len(data) != length:
            raise OSError(f"pgcopy's temporary file is shorter than expected ({len(data)} of {length} bytes)")
        return data

    def write(self, offset: int, data) -> None:
        view = memoryview(data).cast("B")
        while view:
            written = os.pwrite(self.fd, view, offset)
            view, offset = view[written:], offset + written

    def close(self) -> None:
        self._file.close()


class SpilledBytes:
    """Bytes kept in a :class:`Spill`, read by slices (``data[a:b]``)."""

    __slots__ = ("spill", "offset", "length")

    def __init__(self, spill: Spill, data):
        self.spill, self.length = spill, len(data)
        self.offset = spill.put(data)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, s: slice) -> bytes:
        start, stop, step = s.indices(self.length)
        if step != 1:
            raise ValueError("SpilledBytes are read by contiguous slices")
        return self.spill.read(self.offset + start, max(0, stop - start))

    def __reduce__(self):
        raise TypeError("spilled data stays in the process that spilled it")


class FileArray:
    """A fixed-length ``array`` (or ``bytearray``: typecode "B") kept in a :class:`Spill`.

    Reads an item or a slice; writes an item.  The KEPT_PAGES pages used
    last stay in memory and are written back when dropped.  Every access takes the
    array's lock: the display's and the FK restore's threads read what the coordinator
    writes."""

    __slots__ = (
        "spill",
        "typecode",
        "bytes_like",
        "page_bytes",
        "per_page",
        "shift",
        "base",
        "length",
        "kept",
        "_lock",
    )

    def __init__(self, spill: Spill, items: array | bytearray, page_bytes: int = PAGE_BYTES):
        self.spill = spill
        self.bytes_like = not isinstance(items, array)  # a bytearray: read back as one
        self.typecode = "B" if self.bytes_like else items.typecode
        itemsize = array(self.typecode).itemsize
        self.page_bytes = page_bytes
        self.per_page = page_bytes // itemsize  # a power of two
        self.shift = self.per_page.bit_length() - 1
        self.length = len(items)
        self.base = spill.put(items, page_bytes)  # whole pages, one after another
        self.kept: dict[int, list] = {}  # page number -> [its items (an array), changed]
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.length

    def _page(self, n: int) -> list:
        """Page ``n``'s entry in ``kept``, read in if needed; the lock is held."""
        entry = self.kept.get(n)
        if entry is None:
            if len(self.kept) >= KEPT_PAGES:
                self._drop(next(iter(self.kept)))
            items = array(self.typecode)
            items.frombytes(self.spill.read(self.base + n * self.page_bytes, self.page_bytes))
            entry = self.kept[n] = [items, False]
        return entry

    def _drop(self, n: int) -> None:
        items, changed = self.kept.pop(n)
        if changed:
            self.spill.write(self.base + n * self.page_bytes, items)

    def __getitem__(self, i):
        if isinstance(i, slice):
            start, stop, step = i.indices(self.length)
            if step != 1:
                return array(self.typecode, (self[j] for j in range(start, stop, step)))
            out = array(self.typecode)
            with self._lock:
                while start < stop:
                    n, at = start >> self.shift, start & (self.per_page - 1)
                    take = min(stop - start, self.per_page - at)
                    out.extend(self._page(n)[0][at : at + take])
                    start += take
            return out
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError("FileArray index out of range")
        with self._lock:
            return self._page(i >> self.shift)[0][i & (self.per_page - 1)]

    def __setitem__(self, i: int, value) -> None:
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError("FileArray assignment index out of range")
        with self._lock:
            entry = self._page(i >> self.shift)
            entry[0][i & (self.per_page - 1)] = value
            entry[1] = True

    def __iter__(self) -> Iterator:
        for start in range(0, self.length, self.per_page):
            yield from self[start : start + self.per_page]

    def __eq__(self, other) -> bool:
        if isinstance(other, (FileArray, array, bytearray)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None

    def __reduce__(self):
        raise TypeError("spilled data stays in the process that spilled it")

    def __repr__(self) -> str:
        return f"FileArray({self.typecode!r}, {self.length} items)"


class SortedFileArray(FileArray):
    """A :class:`FileArray` of sorted numbers, searched like ``bisect_left``: each page's
    first item stays in memory, so a search reads one page, not a page per step."""

    __slots__ = ("fences",)

    def __init__(self, spill: Spill, items: array, page_bytes: int = PAGE_BYTES):
        super().__init__(spill, items, page_bytes)
        self.fences = array(items.typecode, items[:: self.per_page])

    def bisect_left(self, x) -> int:
        n = bisect_right(self.fences, x) - 1
        if n < 0:
            return 0
        # x > every item of the pages before n; the first item >= x is in page n, or is
        # page n + 1's first (the page's padding past the end is cut off)
        start = n << self.shift
        with self._lock:
            return start + bisect_left(self._page(n)[0], x, 0, min(self.per_page, self.length - start))


def spilled(spill: Spill, items):
    """``items`` (an array or bytearray) moved into ``spill``, once."""
    return items if isinstance(items, FileArray) else FileArray(spill, items)


def unspilled(items):
    """``items`` read back into memory from a :class:`Spill`; as they are if not spilled."""
    if not isinstance(items, FileArray):
        return items
    data = items[:]
    return bytearray(data.tobytes()) if items.bytes_like else data


M_MMAP_THRESHOLD = -3  # mallopt's parameter, from glibc's malloc.h


def unmap_big_frees() -> None:
    """Blocks of pgcopy.worker.MMAP_THRESHOLD bytes and more mapped on their own and
    unmapped when freed, in this process and the planning's forked child, as in the
    workers.  glibc otherwise raises its threshold to the largest block freed so far, and
    the catalog reads' buffers then stay in its heaps: at 40,000 tables the planning
    process peaked 4.6 MiB higher, and the coordinator 3.2 MiB (measured)."""
    from pgcopy.worker import MMAP_THRESHOLD

    _glibc("mallopt", M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def give_back() -> None:
    """Memory freed in this process returned to the system now: glibc keeps the freed
    pages of its heap for later, and an array moved into the file left its pages free."""
    _glibc("malloc_trim", 0)


def _glibc(name: str, *args: int) -> None:
    """Call glibc's ``name``; nothing where the C library has no such function."""
    import ctypes

    try:
        getattr(ctypes.CDLL(None), name)(*args)
    except (OSError, AttributeError):  # not glibc
        pass
