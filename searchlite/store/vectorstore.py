"""Append-only, memory-mappable vector files: one model's raw float32 vectors, outside SQLite.

Layout: ``<library>/vectors/<model ref>/rows-<n>.f32``, each file ``FILE_ROWS`` rows of ``dim``
little-endian float32 (file n holds store rows ``n*FILE_ROWS ..``). A store row is the vector's
permanent id: FAISS segments use it as their id, the catalog maps images to it.

Crash safety: the catalog's ``models.store_rows`` is the commit point. A writer (holding the
library lock) writes and fsyncs the new rows first, then commits the catalog transaction that
references them; bytes past ``store_rows`` (a crash in between) are ignored by readers and
truncated by the next writer. Nothing committed is ever rewritten.
"""

from __future__ import annotations

import logging
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from searchlite.errors import LibraryError
from searchlite.faults import crashpoint

log = logging.getLogger(__name__)

#: Rows per file: 2^18 rows is 768 MiB at d=768, so files stay a manageable size at any scale.
FILE_ROWS = 1 << 18
DTYPE = np.dtype("<f4")
PREFETCH_MAX = 4096  # get() of at most this many rows prefetches them (see _prefetch)


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class VectorStore:
    """The vector files of one model. Readers pass the committed row count from their snapshot."""

    def __init__(self, folder: Path, dim: int, committed: int, file_rows: int = FILE_ROWS) -> None:
        self.folder = Path(folder)
        self.dim = int(dim)
        self.committed = int(committed)
        self.file_rows = int(file_rows)
        self._maps: dict[int, np.memmap] = {}
        self._pending = self.committed

    def _path(self, n: int) -> Path:
        return self.folder / f"rows-{n:06d}.f32"

    @property
    def row_bytes(self) -> int:
        return self.dim * DTYPE.itemsize

    # -- writing (library lock held) -----------------------------------------------------------
    def discard_uncommitted(self) -> None:
        """Truncate bytes past the committed rows (left by a crash between write and commit)."""
        self._pending = self.committed
        last = self.committed // self.file_rows
        keep = (self.committed - last * self.file_rows) * self.row_bytes
        for path in sorted(self.folder.glob("rows-*.f32")):
            n = int(path.stem.split("-")[1])
            if n > last or (n == last and path.stat().st_size > keep):
                if n > last:
                    path.unlink()
                else:
                    with open(path, "r+b") as fh:
                        fh.truncate(keep)
                        os.fsync(fh.fileno())
                log.info("discarded uncommitted vectors in %s", path)
        self._maps.clear()

    def append(self, vectors: np.ndarray) -> range:
        """Write rows after everything written so far and fsync them; returns their row numbers.
        They become visible once the caller commits ``store_rows = range.stop`` in the catalog."""
        vectors = np.ascontiguousarray(vectors, dtype=DTYPE)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected vectors of dim {self.dim}, got shape {vectors.shape}")
        self.folder.mkdir(parents=True, exist_ok=True)
        start, done = self._pending, 0
        while done < len(vectors):
            row = start + done
            n, offset = divmod(row, self.file_rows)
            take = min(len(vectors) - done, self.file_rows - offset)
            path = self._path(n)
            created = not path.exists()
            with open(path, "r+b" if not created else "wb") as fh:
                fh.seek(offset * self.row_bytes)
                fh.write(vectors[done:done + take].tobytes())
                crashpoint("store-written")
                fh.flush()
                os.fsync(fh.fileno())
            if created:
                fsync_dir(self.folder)
            done += take
        self._pending = start + len(vectors)
        crashpoint("store-synced")
        return range(start, self._pending)

    @property
    def written(self) -> int:
        """Rows written so far (committed ones and those awaiting the catalog commit)."""
        return self._pending

    def mark_committed(self, rows: int) -> None:
        self.committed = self._pending = rows

    def rollback(self) -> None:
        """The catalog commit failed: forget (and truncate) what was appended since the last commit."""
        self.discard_uncommitted()

    # -- reading ---------------------------------------------------------------------------------
    def _map(self, n: int) -> np.memmap:
        m = self._maps.get(n)
        rows = min(self.file_rows, self.committed - n * self.file_rows)
        if m is None or len(m) < rows:
            path = self._path(n)
            try:
                m = np.memmap(path, dtype=DTYPE, mode="r", shape=(rows, self.dim))
            except (FileNotFoundError, ValueError) as exc:
                raise LibraryError(f"the vector file {path} is missing or shorter than the catalog says; "
                                   "the library is damaged (restore it, or re-index)") from exc
            self._maps[n] = m
        return m

    def get(self, rows: np.ndarray) -> np.ndarray:
        """Vectors of some rows (any order), read through the memory map: only their pages are touched."""
        rows = self._checked(rows)
        out = np.empty((len(rows), self.dim), dtype=DTYPE)
        for at, piece in self._pieces(rows):
            out[at] = piece
        return out

    def dot(self, rows: np.ndarray, query: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """``get(rows) @ query`` without materialising the rows: each piece of at most ``chunk`` rows
        is scored as it is gathered (a 1% filter at 1M, 10k scattered rows: 2.7 ms, not 5.4)."""
        rows = self._checked(rows)
        out = np.empty(len(rows), dtype=np.float32)
        for start in range(0, len(rows), chunk):
            for at, piece in self._pieces(rows[start:start + chunk]):
                out[start + at] = piece @ query
        return out

    def _checked(self, rows: np.ndarray) -> np.ndarray:
        """``rows`` as int64, range-checked against the committed rows; a few are prefetched."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.committed):
            raise IndexError("store row out of range")
        if 0 < len(rows) <= PREFETCH_MAX:
            self._prefetch(rows)
        return rows

    def _pieces(self, rows: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(positions in ``rows``, their vectors) for each vector file the checked rows touch."""
        files = rows // self.file_rows
        for n in np.unique(files):
            at = np.flatnonzero(files == n)
            yield at, np.take(self._map(int(n)), rows[at] - n * self.file_rows, axis=0)

    def _prefetch(self, rows: np.ndarray) -> None:
        """Ask the kernel for every row's pages at once (MADV_WILLNEED), so a few scattered rows
        (the re-scoring of compressed candidates) cost one parallel round of reads instead of one
        synchronous page fault, with its read-around, per row: 100 rows of a 10M store not in the
        page cache, 1.8 ms instead of ~100 ms on this machine's disk."""
        if not hasattr(mmap, "MADV_WILLNEED"):  # not on Windows
            return
        size = self.dim * DTYPE.itemsize
        for row in rows.tolist():
            n, offset = divmod(row, self.file_rows)
            start = offset * size
            page = start - start % mmap.PAGESIZE
            self._map(n)._mmap.madvise(mmap.MADV_WILLNEED, page, start + size - page)

    def view(self, lo: int, hi: int) -> Iterator[tuple[int, np.ndarray]]:
        """Memory-mapped (start row, array) pieces covering rows [lo, hi), one per file."""
        row = lo
        while row < hi:
            n, offset = divmod(row, self.file_rows)
            take = min(hi - row, self.file_rows - offset)
            yield row, self._map(n)[offset:offset + take]
            row += take

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """Vectors of sorted rows read with plain reads (no mapping): for a build's training sample,
        so the process does not map in the pages around every sampled row."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        handles: dict[int, int] = {}
        try:
            for i, row in enumerate(rows.tolist()):
                n, offset = divmod(row, self.file_rows)
                fd = handles.get(n)
                if fd is None:
                    fd = handles[n] = os.open(self._path(n), os.O_RDONLY)
                data = os.pread(fd, self.row_bytes, offset * self.row_bytes)
                if len(data) != self.row_bytes:
                    raise LibraryError(f"the vector file {self._path(n)} is shorter than the catalog says")
                out[i] = np.frombuffer(data, dtype=DTYPE)
        finally:
            for fd in handles.values():
                os.close(fd)
        return out

    def read_chunks(self, lo: int, hi: int, chunk: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        """(start row, array) chunks of rows [lo, hi) read with plain reads into fresh buffers: for
        streaming builds, so the process does not accumulate mapped pages of the whole store."""
        row = lo
        while row < hi:
            n, offset = divmod(row, self.file_rows)
            take = min(hi - row, self.file_rows - offset, chunk)
            with open(self._path(n), "rb") as fh:
                fh.seek(offset * self.row_bytes)
                data = np.fromfile(fh, dtype=DTYPE, count=take * self.dim)
            if len(data) != take * self.dim:
                raise LibraryError(f"the vector file {self._path(n)} is shorter than the catalog says")
            yield row, data.reshape(take, self.dim)
            row += take

    def close(self) -> None:
        self._maps.clear()
