"""Optional compression stage of the COPY pipe: none, gzip or zstd.

psycopg2 writes once per row, so the source side is a C ``io.BufferedWriter`` in front of
a raw sink; the sink compresses each full buffer (256 KiB) and flushes a block, so even
very compressible data reaches the destination at least every 256 KiB of input and the
destination is never starved.  The destination side decompresses whole pipe reads.

Both database connections still carry uncompressed COPY data: inside one process this
stage costs CPU and saves no network bytes.  It exists to measure that cost honestly and
for streams that cross something slower than memory.
"""

from __future__ import annotations

import io
import os
import zlib
from dataclasses import dataclass

CODECS = ("gzip", "zstd")
DEFAULT_LEVEL = {"gzip": 1, "zstd": 1}  # speed first: the pipe never leaves the process
COMPRESSED_READ = 16 << 10


@dataclass(frozen=True)
class Codec:
    """The compression of the pipe between the two COPYs (--compress)."""

    name: str  # 'gzip' or 'zstd'
    level: int

    def compressor(self):
        if self.name == "gzip":
            c = zlib.compressobj(self.level, zlib.DEFLATED, 31)  # 31: gzip container
            return c.compress, lambda: c.flush(zlib.Z_SYNC_FLUSH), lambda: c.flush(zlib.Z_FINISH)
        import zstandard  # only workers that compress pay for the import

        c = zstandard.ZstdCompressor(level=self.level).compressobj()
        return (
            c.compress,
            lambda: c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK),
            lambda: c.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH),
        )

    def decompressor(self):
        if self.name == "gzip":
            return zlib.decompressobj(31).decompress
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress


class _CompressingSink(io.RawIOBase):
    """Raw sink under a BufferedWriter: compress each buffer-full, write it to the pipe."""

    def __init__(self, fd: int, codec: Codec):
        self._fd = fd
        self._compress, self._flush, self._finish = codec.compressor()
        self.in_bytes = 0
        self.out_bytes = 0

    def writable(self) -> bool:
        return True

    def _out(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self.out_bytes += len(data)

    def write(self, b) -> int:
        n = len(b)
        self.in_bytes += n
        self._out(self._compress(bytes(b)) + self._flush())
        return n

    def close(self) -> None:
        if not self.closed:
            try:
                self._out(self._finish())
            finally:
                os.close(self._fd)
        super().close()


def open_writer(fd: int, codec: Codec | None, buffer_size: int):
    """The object handed to COPY TO: always buffered in C."""
    if codec is None:
        return os.fdopen(fd, "wb", buffering=buffer_size)
    return io.BufferedWriter(_CompressingSink(fd, codec), buffer_size=buffer_size)


class DecompressingReader:
    """Wraps the pipe's raw read; never returns b'' before the real end of the stream."""

    def __init__(self, read, codec: Codec):
        self._read = read
        self._decompress = codec.decompressor()

    def __call__(self, size: int) -> tuple[bytes, int]:
        """Returns (decompressed data, compressed bytes consumed)."""
        consumed = 0
        while True:
            # small compressed reads: very compressible data (50x and more was measured on
            # pgbench's filler) would otherwise inflate one read into tens of MB
            raw = self._read(COMPRESSED_READ)
            consumed += len(raw)
            if not raw:
                return b"", consumed
            data = self._decompress(raw)
            if data:
                return data, consumed
