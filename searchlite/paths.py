"""File names as the file system has them, and the one rule for "a path under a root".

On POSIX a file name is bytes; Python hands it over as ``str`` with ``surrogateescape`` (a byte
that is not UTF-8, such as ``\\xff``, becomes ``\\udcff``), and that ``str`` is the real path for
every ``os`` / ``Path`` call. The catalog stores such a name losslessly as a BLOB of the exact
bytes (:func:`to_db` / :func:`from_db`); everything else stays TEXT. :func:`printable` is how a
name is shown (``bad\\xff.jpg``), never how it is looked up.

Paths under a root: a root is stored absolute and resolved; an image inside it is stored by the
relative path the scan walked, through any symlinked folder the scan followed (not resolved).
A path given by a user is matched first as given (absolute, normalised) and then resolved
(:func:`query_candidates`); a file is served only through :func:`real_file_inside`.
"""

from __future__ import annotations

import os
from pathlib import Path


def to_db(value: str | bytes | None) -> str | bytes | None:
    """A path for the catalog: the ``str`` itself when it is valid UTF-8, else its exact bytes."""
    if value is None or isinstance(value, bytes):
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(value)
    return value


def from_db(value: str | bytes | None) -> str | None:
    """A path read from the catalog (a BLOB comes back as the surrogate-escaped ``str``)."""
    if isinstance(value, bytes):
        return os.fsdecode(value)
    return value


def as_bytes(value: str) -> bytes:
    """The bytes of a path as the file system has them (UTF-8 for ordinary names)."""
    try:
        return os.fsencode(value)
    except UnicodeEncodeError:  # a lone surrogate that no file system name decodes to
        return value.encode("utf-8", "surrogatepass")


def printable(value: str) -> str:
    """A path (or any text holding one) for display: bytes that are not UTF-8 as ``\\xff``."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return as_bytes(value).decode("utf-8", "backslashreplace")


def query_candidates(path: str | Path) -> list[str]:
    """The forms a user's path is matched by, in order, without duplicates: as given (absolute,
    normalised, ``~`` expanded), resolved (symlinks followed), then with only a leading part
    resolved (a root is stored resolved, the path under it as the scan walked it: a link to the
    root *and* a symlinked folder inside it)."""
    given = os.path.normpath(os.path.abspath(os.path.expanduser(str(path))))
    out = [given]
    pure = Path(given)
    for head in [pure, *pure.parents][:64]:
        try:
            real = head.resolve()
        except (OSError, RuntimeError):
            continue
        form = str(real / pure.relative_to(head)) if head != pure else str(real)
        if form not in out:
            out.append(form)
    return out


def real_file_inside(root: str, relpath: str) -> Path | None:
    """The real file an indexed image names, if it may be read and served, else None.

    The rule: ``relpath`` is a plain relative path (no ``..``, ``.``, empty or absolute parts);
    a symlinked *folder* along it is followed, as the scan follows it; the file itself, once
    resolved, must lie inside the resolved root or inside the resolved target of the last
    symlinked folder on the way. So whatever the scan indexed through a folder link is servable,
    while a symlinked *file* (or any path trick) that leads out of its folder never is.
    """
    parts = relpath.split("/")
    if not relpath or relpath.startswith("/") or any(p in ("", ".", "..") for p in parts):
        return None
    try:
        base = Path(root).resolve(strict=True)
        current = Path(root)
        for part in parts[:-1]:
            current = current / part
            if current.is_symlink():
                base = current.resolve(strict=True)
                if not base.is_dir():
                    return None
        real = (current / parts[-1]).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not real.is_relative_to(base) or not real.is_file():
        return None
    return real


def is_writable(folder: Path, file: Path | None = None) -> bool:
    """Whether ``folder`` (and ``file`` in it, when given and present) can be written: the one
    writability check. ``os.access`` first, then probes that change nothing: a read-only mount in
    ``statvfs`` and an unnamed temporary file in the folder. The probes catch what ``os.access``
    misses (a read-only mount for root, NFS root squash, ACLs)."""
    import tempfile

    folder = Path(folder)
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        return False
    if file is not None and file.exists() and not os.access(file, os.W_OK):
        return False
    try:
        # never open (and close) a SQLite file itself here: closing any descriptor of it drops every
        # POSIX lock SQLite holds on it in this process (and another connection may then delete the
        # -shm of a catalog still in use). A read-only mount shows in statvfs.
        if hasattr(os, "statvfs") and os.statvfs(folder).f_flag & getattr(os, "ST_RDONLY", 1):
            return False
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError:
        return False
    return True
