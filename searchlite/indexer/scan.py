"""Walk photo folders, and compare what is on disk with the catalog set-wise.

The scan writes nothing for an unchanged file: every file found goes into a TEMP table of one
connection held for the run (memory, not the catalog file); new files get a ``pending`` row,
unreadable entries an ``error`` row, and everything else (changed, moved, deleted) is decided by
SQL joins against that table. A no-op run over a million files costs the stat calls and a few
set operations.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import (
    Integer,
    LargeBinary,
    String,
    and_,
    bindparam,
    case,
    cast,
    func,
    insert,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection

from searchlite.catalog import Catalog, FsPath, ImageRow, Root, chunked, join_path
from searchlite.errors import LibraryError
from searchlite.imaging import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from searchlite.indexer.exclude import Excluder, inside_library, parse_stored, reanchor
from searchlite.indexer.identity import identity_of, identity_of_path
from searchlite.paths import as_bytes, to_db
from searchlite.rawphoto import RAW_EXTENSIONS

SCAN_CHUNK = 2000
log = logging.getLogger(__name__)

RAW_PAIRS = ("prefer-jpeg", "both")
#: The developed half of a RAW+JPEG pair (an iPhone's ProRAW pairs with a HEIC).
DEVELOPED = frozenset({".jpg", ".jpeg", ".heic", ".heif"})


@dataclass(frozen=True)
class FileEntry:
    """A candidate image file; ``error`` is set for entries that cannot even be stat'ed;
    ``companion`` is the RAW file paired with this JPEG (same folder, same stem)."""

    relpath: str
    size: int
    mtime_ns: int
    error: str | None = None
    companion: str | None = None
    dev: int | None = None  # the file's identity (see indexer/identity.py); None where unknown (URIs)
    inode: int | None = None
    symlink: bool = False  # reached through a file symlink (a weaker claim to be the canonical path)


@dataclass
class Skipped:
    """Files a scan leaves out because of their extension: ``by_extension`` (lower-case extension,
    '' for none -> count; videos included) and ``videos``, their share of it. The one place these
    counts are kept (the run summary reports them)."""

    videos: int = 0
    by_extension: dict[str, int] = field(default_factory=dict)

    def add(self, ext: str) -> None:
        self.by_extension[ext] = self.by_extension.get(ext, 0) + 1
        if ext in VIDEO_EXTENSIONS:
            self.videos += 1


def pair_raws(names: list[str]) -> tuple[list[str], dict[str, str]]:
    """For the files of one folder: the names to index, and developed name -> its RAW companion.
    A RAW whose stem has a JPEG/HEIC beside it is one photo with it, shown as the JPEG."""
    developed = {os.path.splitext(n)[0].lower(): n for n in names if os.path.splitext(n)[1].lower() in DEVELOPED}
    keep, companions = [], {}
    for name in names:
        stem, ext = os.path.splitext(name)
        partner = developed.get(stem.lower()) if ext.lower() in RAW_EXTENSIONS else None
        if partner is None:
            keep.append(name)
        else:
            companions[partner] = name
    return keep, companions


def walk(root: Path, include_hidden: bool = False, raw_pairs: str = "prefer-jpeg",
         skipped: Skipped | None = None, exclude: Excluder | None = None,
         library: Path | None = None) -> Iterator[FileEntry]:
    """Yield image files under ``root`` (streaming, sorted per folder).

    Symlinked folders are followed, but a folder already visited (same device and inode) is
    never entered twice, so symlink loops terminate. Dangling links come back with an error.
    With ``raw_pairs="prefer-jpeg"`` a RAW+JPEG pair yields the JPEG with the RAW as companion.
    Files of other extensions are counted in ``skipped``. Files and folders ``exclude`` rules out
    are skipped (see :mod:`searchlite.indexer.exclude`); an excluded folder is never entered, nor
    is the ``library``'s own folder (its thumbnails are not photos; the watcher's rule).
    """
    if library is not None and inside_library(root, library):
        # photos kept inside the library folder: index them as before; only a library kept
        # inside the indexed tree is left out
        library = None
    if exclude is not None and exclude.inside_excluded(root):
        return
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
        subdirs, files = [], []
        for entry in entries:
            if not include_hidden and entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if exclude is not None and exclude.excluded(entry.path, is_dir):
                continue
            if is_dir:
                if not inside_library(entry.path, library):
                    subdirs.append(Path(entry.path))
                continue
            ext = os.path.splitext(entry.name)[1].lower()
            if ext in IMAGE_EXTENSIONS:
                files.append(entry)
            elif skipped is not None:
                skipped.add(ext)
        names, companions = pair_raws([e.name for e in files]) if raw_pairs == "prefer-jpeg" else (
            [e.name for e in files], {})
        keep = set(names)
        for entry in files:
            if entry.name not in keep:
                continue
            rel = Path(entry.path).relative_to(root).as_posix()
            try:
                companion = companions.get(entry.name)
                companion = (Path(entry.path).parent / companion).relative_to(root).as_posix() if companion else None
                stat = entry.stat(follow_symlinks=True)
            except FileNotFoundError:
                yield FileEntry(rel, -1, 0, "dangling symlink" if entry.is_symlink() else "file vanished")
                continue
            except OSError as exc:
                yield FileEntry(rel, -1, 0, f"cannot stat: {exc.strerror or exc}")
                continue
            except Exception as exc:  # noqa: BLE001 - one odd entry is that file's error, never the run's
                yield FileEntry(rel, -1, 0, f"cannot scan: {type(exc).__name__}: {exc}")
                continue
            dev, inode = identity_of(stat)
            yield FileEntry(rel, stat.st_size, stat.st_mtime_ns, companion=companion, dev=dev, inode=inode,
                            symlink=entry.is_symlink())
        stack.extend(reversed(subdirs))


def under(root_id: int, prefix: str):
    """SQL condition: images of a root, inside a sub-folder prefix ('' = the whole root). Compared
    as bytes, so names stored as BLOBs (not UTF-8, see :mod:`searchlite.paths`) match too."""
    cond = ImageRow.root_id == root_id
    if not prefix:
        return cond
    raw = as_bytes(prefix)
    return and_(cond, func.substr(cast(ImageRow.relpath, LargeBinary), 1, len(raw)) == literal(raw, LargeBinary))


class ScanTable:
    """What one run found on disk, held in a TEMP table for set-wise comparison with the catalog.

    ``state`` per file: 'new' (no row, or a pending row from an interrupted run), 'changed'
    (size or mtime differs: it keeps answering with its old vector until a new one commits),
    'same', or 'error'.
    """

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.conn: Connection = catalog.engine.execution_options(write=True).connect()
        self.conn.exec_driver_sql("CREATE TEMP TABLE IF NOT EXISTS scan (root_id INTEGER, relpath TEXT, "
                                  "size INTEGER, mtime_ns INTEGER, image_id INTEGER, state TEXT, dev INTEGER, "
                                  "inode INTEGER, PRIMARY KEY (root_id, relpath)) WITHOUT ROWID")
        self.conn.exec_driver_sql("CREATE INDEX IF NOT EXISTS temp.ix_scan_inode ON scan (inode)")
        self.conn.exec_driver_sql("DELETE FROM temp.scan")
        self.conn.commit()
        self.unchanged = 0
        #: files found under a second path this run (one photo: not indexed again, see _canonical)
        self.aliases = 0

    def close(self) -> None:
        self.conn.exec_driver_sql("DROP TABLE IF EXISTS temp.scan")
        self.conn.commit()
        self.conn.close()

    def _canonical(self, root_id: int, entries: list[FileEntry], existing: dict) -> list[FileEntry]:
        """The entries that are photos of their own: a file whose (dev, inode) was already found this
        run under another path, or that an older catalog image still reaches under another path
        (checked by stat), is an alias of it, counted and left out (its own old row, if any, is
        swept). Within a chunk a plain file wins over a file symlink to it."""
        keyed = {e.inode for e in entries if e.inode is not None and not e.error}
        if not keyed:
            return entries
        conn = self.conn
        in_run: dict[tuple[int, int], tuple[int, object]] = {}
        found = text("SELECT dev, inode, root_id, relpath FROM temp.scan WHERE inode IN :ids").bindparams(
            bindparam("ids", expanding=True))
        known: dict[tuple[int, int], list] = {}
        for part in chunked(keyed):
            for dev, inode, rid, rel in conn.execute(found, {"ids": list(part)}):
                in_run.setdefault((dev, inode), (rid, rel))
            for r in conn.execute(select(ImageRow.id, ImageRow.root_id, ImageRow.relpath, ImageRow.dev,
                                         ImageRow.inode).where(ImageRow.inode.in_(part))):
                known.setdefault((r.dev, r.inode), []).append(r)
        roots = self.catalog.roots() if known else {}
        local: set[tuple[int, int]] = set()
        keep: list[FileEntry] = []
        for e in sorted(entries, key=lambda e: e.symlink):
            key = (e.dev, e.inode)
            if e.inode is None or e.error:
                keep.append(e)
                continue
            me = (root_id, to_db(e.relpath))
            own = existing.get(e.relpath)
            older = [r for r in known.get(key, ()) if (r.root_id, to_db(r.relpath)) != me
                     and (own is None or r.id < own.id) and r.root_id in roots and "://" not in roots[r.root_id]]
            if key in local or in_run.get(key, me) != me or any(
                    identity_of_path(join_path(roots[r.root_id], r.relpath)) == key for r in older):
                self.aliases += 1
                log.debug("alias: %s is a photo already found under another path", e.relpath)
                continue
            local.add(key)
            keep.append(e)
        return keep

    def add(self, root_id: int, entries: list[FileEntry]) -> None:
        """Classify a chunk of files against the catalog; writes rows only for new and unreadable files
        (and the identity of a file that lacks it or changed it)."""
        conn = self.conn
        rel = [e.relpath for e in entries]
        existing = {r.relpath: r for part in chunked(rel) for r in conn.execute(  # SCAN_CHUNK > 999 parameters
            select(ImageRow.id, ImageRow.relpath, ImageRow.size, ImageRow.mtime_ns, ImageRow.status, ImageRow.error,
                   ImageRow.companion, ImageRow.dev, ImageRow.inode).where(
                ImageRow.root_id == root_id, ImageRow.relpath.in_(part)))}
        entries = self._canonical(root_id, entries, existing)
        scanned, fresh, identities = [], [], []
        for e in entries:
            row = existing.get(e.relpath)
            if e.error:
                if row is None:
                    fresh.append(dict(root_id=root_id, relpath=e.relpath, size=-1, mtime_ns=0, status="error",
                                      error=e.error, companion=None))
                elif row.status != "error" or row.error != e.error:
                    conn.execute(update(ImageRow).where(ImageRow.id == row.id).values(status="error", error=e.error))
                scanned.append((e, row.id if row else None, "error"))
            elif row is None:
                fresh.append(dict(root_id=root_id, relpath=e.relpath, size=e.size, mtime_ns=e.mtime_ns,
                                  status="pending", error=None, companion=e.companion, dev=e.dev, inode=e.inode))
                scanned.append((e, None, "new"))
            elif row.status == "pending":
                scanned.append((e, row.id, "new"))
                if row.companion != e.companion:
                    conn.execute(update(ImageRow).where(ImageRow.id == row.id).values(companion=e.companion))
            elif row.size == e.size and row.mtime_ns == e.mtime_ns:
                self.unchanged += 1
                scanned.append((e, row.id, "same"))
            else:
                scanned.append((e, row.id, "changed"))
            if row is not None and not e.error and row.status != "pending" and row.companion != e.companion:
                conn.execute(update(ImageRow).where(ImageRow.id == row.id).values(companion=e.companion))
            if row is not None and not e.error and (row.dev, row.inode) != (e.dev, e.inode):
                identities.append({"_id": row.id, "_dev": e.dev, "_inode": e.inode})
        if identities:  # rows from before identities were stored (once), or a file replaced in place
            conn.execute(update(ImageRow).where(ImageRow.id == bindparam("_id")).values(
                dev=bindparam("_dev"), inode=bindparam("_inode")), identities)
        if fresh:
            for f in fresh:
                f.setdefault("dev", None)
                f.setdefault("inode", None)
            conn.execute(insert(ImageRow), fresh)
            ids = {rel: i for part in chunked(f["relpath"] for f in fresh) for rel, i in conn.execute(
                select(ImageRow.relpath, ImageRow.id).where(ImageRow.root_id == root_id, ImageRow.relpath.in_(part)))}
            scanned = [(e, image_id if image_id is not None else ids.get(e.relpath), state)
                       for e, image_id, state in scanned]
        if not scanned:
            conn.commit()
            return
        conn.execute(text("INSERT OR REPLACE INTO temp.scan VALUES (:root_id, :relpath, :size, :mtime_ns, "
                          ":image_id, :state, :dev, :inode)"),
                     [dict(root_id=root_id, relpath=to_db(e.relpath), size=e.size, mtime_ns=e.mtime_ns,
                           image_id=image_id, state=state, dev=e.dev, inode=e.inode)
                      for e, image_id, state in scanned])
        conn.commit()

    @staticmethod
    def _missing(root_id: int, prefix: str):
        """SQL condition: catalog images under a scanned root that the scan did not find."""
        on_disk = select(text("1")).select_from(text("temp.scan AS s")).where(
            text("s.root_id = images.root_id AND s.relpath = images.relpath")).exists()
        return and_(under(root_id, prefix), ~on_disk)

    def vanished(self, scanned: list[tuple[int, str]]) -> dict[str, int]:
        """sha256 -> image id of indexed images under the scanned roots that are no longer on disk
        (candidates for a move: a new file with the same content keeps their id and vectors)."""
        out: dict[str, int] = {}
        for root_id, prefix in scanned:
            for sha, image_id in self.conn.execute(select(ImageRow.sha256, ImageRow.id).where(
                    self._missing(root_id, prefix), ImageRow.status == "ok", ImageRow.sha256.is_not(None))):
                out.setdefault(sha, image_id)
        self.conn.rollback()
        return out

    def sweep(self, scanned: list[tuple[int, str]]) -> list[int]:
        """Delete the rows of files gone from disk (their vectors become tombstones)."""
        gone: list[int] = []
        for root_id, prefix in scanned:
            ids = list(self.conn.scalars(select(ImageRow.id).where(self._missing(root_id, prefix))))
            for start in range(0, len(ids), 900):
                self.conn.execute(ImageRow.__table__.delete().where(ImageRow.id.in_(ids[start:start + 900])))
            gone += ids
        self.conn.commit()
        return gone

    def work(self, after_id: int, limit: int) -> list:
        """Scanned files that need decoding, by image id: new, changed, or lacking a vector
        (the caller checks which models lack one)."""
        rows = self.conn.execute(text(
            "SELECT s.image_id, s.state, s.size, s.mtime_ns, i.sha256, i.relpath, i.root_id FROM temp.scan s "
            "JOIN images i ON i.id = s.image_id WHERE s.image_id > :after AND s.state != 'error' "
            "AND NOT (s.state = 'same' AND i.status = 'error') "
            "ORDER BY s.image_id LIMIT :limit").columns(
                image_id=Integer, state=String, size=Integer, mtime_ns=Integer, sha256=String, relpath=FsPath,
                root_id=Integer), {"after": after_id, "limit": limit}).all()
        self.conn.rollback()
        return rows

    def count(self, state: str) -> int:
        n = self.conn.execute(text("SELECT count(*) FROM temp.scan WHERE state = :s"), {"s": state}).scalar()
        self.conn.rollback()
        return int(n or 0)


def normalise_root(value: str | Path) -> str:
    """An absolute folder path, or a URI without a trailing slash (file:// URIs become paths);
    a one-line error when it is not a folder."""
    text = str(value)
    if text.startswith("file://"):
        from urllib.parse import unquote, urlparse

        text = unquote(urlparse(text).path)
    if "://" in text:
        from pyarrow import fs

        try:
            filesystem, inner = fs.FileSystem.from_uri(text)
            is_dir = filesystem.get_file_info(inner).type == fs.FileType.Directory
        except (OSError, ValueError) as exc:
            raise LibraryError(f"cannot list {text}: {exc}") from exc
        if not is_dir:
            raise LibraryError(f"not a folder: {text}")
        return text.rstrip("/")
    path = Path(text).expanduser().resolve()
    if not path.is_dir():
        raise LibraryError(f"not a folder: {path}")
    return str(path)


def walk_uri(uri: str, include_hidden: bool = False, raw_pairs: str = "prefer-jpeg",
             skipped: Skipped | None = None) -> Iterator[FileEntry]:
    """Image files under a URI (s3://, gs://, hdfs://... through pyarrow.fs), by folder, sorted."""
    from pyarrow import fs

    filesystem, inner = fs.FileSystem.from_uri(uri)
    infos = filesystem.get_file_info(fs.FileSelector(inner, recursive=True))
    folders: dict[str, list] = {}
    for info in infos:
        if info.type != fs.FileType.File:
            continue
        rel = info.path[len(inner.rstrip("/")) + 1:]
        if not include_hidden and any(part.startswith(".") for part in rel.split("/")):
            continue
        ext = os.path.splitext(rel)[1].lower()
        if ext in IMAGE_EXTENSIONS:
            folders.setdefault(rel.rpartition("/")[0], []).append((rel.rpartition("/")[2], info))
        elif skipped is not None:
            skipped.add(ext)
    for folder in sorted(folders):
        files = dict(sorted(folders[folder]))
        names, companions = pair_raws(list(files)) if raw_pairs == "prefer-jpeg" else (list(files), {})
        for name in names:
            info = files[name]
            prefix = f"{folder}/" if folder else ""
            companion = prefix + companions[name] if name in companions else None
            yield FileEntry(prefix + name, info.size, info.mtime_ns or 0, companion=companion)


def _prefixed(prefix: str, column):
    """SQL: ``prefix + column`` keeping the storage rule of :mod:`searchlite.paths` (the result
    is a BLOB of exact bytes when either part is not UTF-8, else TEXT)."""
    raw = literal(as_bytes(prefix), LargeBinary)
    as_blob = cast(raw.op("||")(cast(column, LargeBinary)), LargeBinary)
    if isinstance(to_db(prefix), bytes):
        return case((column.is_(None), None), else_=as_blob)
    return case((func.typeof(column) == "blob", as_blob), else_=literal(prefix, String).op("||")(column))


def resolve_root(catalog: Catalog, folder: str, carried: list[str] | None = None) -> tuple[int, str]:
    """The catalog root for a folder (or URI) and the relpath prefix of the folder inside it.

    A folder inside a known root is indexed as part of that root (no duplicate rows); a folder
    that contains known roots adopts them, so their images keep their ids and vectors, and their
    ``--exclude`` rules, re-anchored to the folder (stored with it; also appended to ``carried``).
    """
    if "://" in folder:
        with catalog.WriteSession.begin() as s:
            for root in s.scalars(select(Root).where(Root.path.like("%://%"))):
                if folder.startswith(root.path + "/"):
                    return root.id, folder[len(root.path) + 1:] + "/"
            return catalog.root_id(s, folder), ""
    folder = Path(folder)
    with catalog.WriteSession.begin() as s:
        roots = {r.id: Path(r.path) for r in s.scalars(select(Root)) if "://" not in r.path}
        for root_id, path in roots.items():
            if folder != path and folder.is_relative_to(path):
                return root_id, folder.relative_to(path).as_posix() + "/"
        root_id = catalog.root_id(s, folder)
        for child_id, path in roots.items():
            if path != folder and path.is_relative_to(folder):
                prefix = path.relative_to(folder).as_posix() + "/"
                rules = reanchor(parse_stored(s.get(Root, child_id).excludes), prefix)
                if rules:
                    parent = s.get(Root, root_id)
                    stored = parse_stored(parent.excludes)
                    parent.excludes = json.dumps(stored + [r for r in rules if r not in stored])
                    if carried is not None:
                        carried += rules
                s.execute(update(ImageRow).where(ImageRow.root_id == child_id).values(
                    root_id=root_id, relpath=_prefixed(prefix, ImageRow.relpath),
                    companion=_prefixed(prefix, ImageRow.companion)))
                s.execute(Root.__table__.delete().where(Root.id == child_id))
        return root_id, ""
