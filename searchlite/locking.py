"""The library's writer lock: one writer (index, import, reindex, compaction, migration, cache
fills) at a time; readers never take it (SQLite WAL snapshots and immutable files serve them)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from searchlite.errors import LibraryError

LOCK_FILE = "index.lock"


@contextlib.contextmanager
def library_lock(folder: Path, what: str = "index", wait: bool = False) -> Iterator[bool]:
    """Hold the writer lock of a library folder. With ``wait=False`` a busy lock raises
    :class:`LibraryError`; ``try_library_lock`` yields False instead."""
    with _flock(folder, wait) as got:
        if not got:
            raise LibraryError(f"another searchlite process is writing to {folder} (an index, import or reindex "
                               f"run); wait for it to finish, then run `searchlite {what}` again")
        yield True


@contextlib.contextmanager
def try_library_lock(folder: Path) -> Iterator[bool]:
    """Hold the writer lock if it is free; yields whether it was taken (for optional cache writes)."""
    with _flock(folder, wait=False) as got:
        yield got


@contextlib.contextmanager
def _flock(folder: Path, wait: bool) -> Iterator[bool]:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory lock
        yield True
        return
    try:
        fd = os.open(Path(folder) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise LibraryError(f"cannot open the library lock in {folder}: {exc.strerror or exc}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
