"""Walk photo folders: image extensions (case-insensitive), hidden folders skipped, symlink loops cut."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from searchlite.imaging import IMAGE_EXTENSIONS


@dataclass(frozen=True)
class FileEntry:
    """A candidate image file; ``error`` is set for entries that cannot even be stat'ed."""

    relpath: str
    size: int
    mtime_ns: int
    error: str | None = None


def walk(root: Path, include_hidden: bool = False) -> Iterator[FileEntry]:
    """Yield image files under ``root`` (streaming, sorted per folder).

    Symlinked folders are followed, but a folder already visited (same device and inode) is
    never entered twice, so symlink loops terminate. Dangling links come back with an error.
    """
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            st = folder.stat()
        except OSError:
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen:
            continue
        seen.add(key)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        subdirs = []
        for entry in entries:
            if not include_hidden and entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                subdirs.append(Path(entry.path))
                continue
            if os.path.splitext(entry.name)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            rel = Path(entry.path).relative_to(root).as_posix()
            try:
                stat = entry.stat(follow_symlinks=True)
            except FileNotFoundError:
                yield FileEntry(rel, -1, 0, "dangling symlink" if entry.is_symlink() else "file vanished")
                continue
            except OSError as exc:
                yield FileEntry(rel, -1, 0, f"cannot stat: {exc.strerror or exc}")
                continue
            yield FileEntry(rel, stat.st_size, stat.st_mtime_ns)
        stack.extend(reversed(subdirs))
