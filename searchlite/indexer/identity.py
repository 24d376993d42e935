"""The identity of a photo on disk: (device, inode), so that one file reached through two paths
(a symlinked folder inside another root, a file symlink, a hard link) is one photo.

SQLite integers are signed 64-bit; a device or inode number at or above 2**63 (some network and
union file systems) is stored as its two's-complement value, so equality is kept.
"""

from __future__ import annotations

import os

_WRAP = 1 << 64
_TOP = 1 << 63


def _signed(value: int) -> int:
    return value - _WRAP if value >= _TOP else value


def identity_of(stat: os.stat_result) -> tuple[int | None, int | None]:
    """(dev, inode) of a stat result as stored in the catalog; (None, None) where the file
    system gives no inode (0), so such files are never taken for one another."""
    if not stat.st_ino:
        return None, None
    return _signed(int(stat.st_dev)), _signed(int(stat.st_ino))


def identity_of_path(path: str | os.PathLike) -> tuple[int | None, int | None]:
    """The identity of the file a path leads to now (symlinks followed); (None, None) if it is gone."""
    try:
        return identity_of(os.stat(path))
    except (OSError, ValueError):
        return None, None


__all__ = ["identity_of", "identity_of_path"]
