"""The SQLite catalog (SQLAlchemy 2.0, WAL mode): roots, images, models, the vector mapping, runs.

The catalog is the truth for *which* images exist and which store row holds each image's vector
under each model; the vectors themselves live in the vector store (``searchlite.store``), and the
FAISS segments are derived from both. Deleting a mapping row leaves a durable tombstone (an SQL
trigger), so an index segment that still holds that row filters it until compaction removes it.
Image ids and store rows are never reused, so an id left behind anywhere can never point at
another image. The catalog knows nothing of models beyond the fields it stores.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    and_,
    create_engine,
    event,
    func,
    or_,
    select,
)
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from searchlite import migrations
from searchlite.errors import LibraryError
from searchlite.paths import as_bytes, from_db, printable, query_candidates, to_db
from searchlite.paths import is_writable as paths_is_writable

log = logging.getLogger(__name__)

SCHEMA_VERSION = len(migrations.STEPS)
CATALOG_FILE = "catalog.sqlite"


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class FsPath(TypeDecorator):
    """A file path or name, stored losslessly: TEXT when it is valid UTF-8, else a BLOB of the
    file system's exact bytes (see :mod:`searchlite.paths`). Comparisons bind the same way, so a
    name always meets its own storage class; ``bytes`` bind as they are (byte-range conditions)."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        return to_db(value)

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        return from_db(value)


class SafeText(TypeDecorator):
    """Text that may quote a file name (an error message): stored printable, never refused."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        return printable(value) if isinstance(value, str) else value


class Meta(Base):
    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String, primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Root(Base):
    """A folder (or URI prefix) holding images; image paths are stored relative to it."""

    __tablename__ = "roots"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(FsPath, unique=True)
    added_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    excludes: Mapped[str | None] = mapped_column(Text)  # JSON list of gitignore-style patterns (index --exclude)
    default_excludes: Mapped[bool] = mapped_column(Boolean, default=True)


class ImageRow(Base):
    """One image file. Its id survives moves and content changes (its vectors are replaced)."""

    __tablename__ = "images"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    root_id: Mapped[int] = mapped_column(ForeignKey("roots.id", ondelete="CASCADE"))
    relpath: Mapped[str] = mapped_column(FsPath)
    size: Mapped[int] = mapped_column(Integer)
    mtime_ns: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str | None] = mapped_column(String(64))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    format: Mapped[str | None] = mapped_column(String(16))
    taken_at: Mapped[datetime | None] = mapped_column(DateTime)  # wall-clock capture time
    taken_source: Mapped[str | None] = mapped_column(String(16))  # exif | exif-digitized | exif-datetime | raw | mtime
    taken_offset: Mapped[int | None] = mapped_column(Integer)  # minutes east of UTC, when the file says
    camera: Mapped[str | None] = mapped_column(String)
    companion: Mapped[str | None] = mapped_column(FsPath)  # relpath of a RAW file paired with this JPEG
    status: Mapped[str] = mapped_column(String(8), default="pending")  # pending | ok | error
    error: Mapped[str | None] = mapped_column(SafeText)
    indexed_at: Mapped[datetime | None] = mapped_column(DateTime)
    # round4-text: hybrid search (see migrations._V5_TEXT)
    lat: Mapped[float | None] = mapped_column(Float)
    lon: Mapped[float | None] = mapped_column(Float)
    text_sig: Mapped[str | None] = mapped_column(String)
    ocr_version: Mapped[str | None] = mapped_column(String(32))
    text_error: Mapped[str | None] = mapped_column(SafeText)
    # round4-scan: the file's identity on disk (device, inode; see indexer/identity.py)
    dev: Mapped[int | None] = mapped_column(Integer)
    inode: Mapped[int | None] = mapped_column(Integer)
    # round4-search: 64-bit perceptual hash, 16 hex digits (searchlite.phash)
    phash: Mapped[str | None] = mapped_column(String(16))


class ImageTextRow(Base):
    """One text field of an image (round4-text); FTS5 tables index it through triggers."""

    __tablename__ = "image_text"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    field: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(SafeText)


class ModelRow(Base):
    """A model known to this library: score parameters, calibration, index settings, store size.

    ``indexed`` is set only by ``index --model`` / ``import --model``: a model whose vectors were
    merely cached for re-scoring is not searchable and never changes what ``index`` does.
    """

    __tablename__ = "models"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[str] = mapped_column(String, unique=True)
    spec: Mapped[str] = mapped_column(String)
    dim: Mapped[int] = mapped_column(Integer)
    family: Mapped[str] = mapped_column(String(32))  # a zoo family name, e.g. 'siglip2-fixed' (SQLite ignores the length)
    scale: Mapped[float] = mapped_column(Float)
    bias: Mapped[float] = mapped_column(Float, default=0.0)
    template: Mapped[str] = mapped_column(String)
    index_type: Mapped[str] = mapped_column(String(16), default="auto")  # auto|flat|hnsw|ivf|ivfpq
    calib_a: Mapped[float | None] = mapped_column(Float)
    calib_b: Mapped[float | None] = mapped_column(Float)
    calib_report: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    indexed: Mapped[bool] = mapped_column(Boolean, default=True)
    store_rows: Mapped[int] = mapped_column(Integer, default=0)  # committed rows of the vector store
    #: how scores become probabilities: "sigmoid" (the model's own scale and bias) or "platt" (fitted)
    probability: Mapped[str] = mapped_column(String(16), default="platt")
    precision: Mapped[str | None] = mapped_column(Text)  # JSON: vectors stored per precision, e.g. {"bf16": 120}
    # round4-onnx
    #: the engine the model's vectors were last embedded with: "torch" | "onnx" (None: torch, before round 4)
    runtime: Mapped[str | None] = mapped_column(String(16))


class VectorRow(Base):
    """Which store row holds an image's vector under a model. Clustered by (model, image), so a
    filter's images map to their rows with one b-tree probe each; (model, store row) is indexed too."""

    __tablename__ = "vectors"
    model_ref: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    store_row: Mapped[int] = mapped_column(Integer)


class Tombstone(Base):
    """A store row whose mapping was deleted (filled by a trigger on ``vectors``)."""

    __tablename__ = "tombstones"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_ref: Mapped[int] = mapped_column(Integer)
    store_row: Mapped[int] = mapped_column(Integer)


class SegmentRow(Base):
    """One immutable FAISS file covering store rows [row_lo, row_hi) of a model."""

    __tablename__ = "index_segments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_ref: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String)
    kind: Mapped[str] = mapped_column(String(8))
    factory: Mapped[str] = mapped_column(String)
    row_lo: Mapped[int] = mapped_column(Integer)
    row_hi: Mapped[int] = mapped_column(Integer)
    count: Mapped[int] = mapped_column(Integer)
    trained_count: Mapped[int] = mapped_column(Integer)  # vectors the quantizer was trained for
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class QueryCacheRow(Base):
    __tablename__ = "query_cache"
    model_ref: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String, primary_key=True)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    used_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class RunRow(Base):
    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    stats: Mapped[str | None] = mapped_column(Text)


@dataclass(frozen=True)
class Snapshot:
    """A consistent view of one model's vectors for a reader: committed store rows, the index
    segments over them, and the tombstoned rows (sorted)."""

    store_rows: int
    segments: tuple[SegmentRow, ...]
    tombstones: np.ndarray
    live: int


def _busy_timeout_ms() -> int:
    return int(os.environ.get("SEARCHLITE_BUSY_TIMEOUT_MS", "30000"))


def _on_connect(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # transactions are begun explicitly (see _on_begin)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA temp_store=MEMORY")  # the indexer's scan table never touches the disk
    cur.execute(f"PRAGMA busy_timeout={_busy_timeout_ms()}")
    cur.close()


def _on_begin(conn: Any) -> None:
    # Reads get one snapshot for the whole transaction; writers take the write lock up front
    # (BEGIN IMMEDIATE), so they wait on busy_timeout instead of failing on a stale snapshot.
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")


def _on_connect_read_only(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA query_only=ON")  # a backstop: nothing below may write
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA temp_store=MEMORY")
    cur.execute(f"PRAGMA busy_timeout={_busy_timeout_ms()}")
    cur.close()


def read_only_forced() -> bool:
    """$SEARCHLITE_READ_ONLY=1 opens every library read-only (as on read-only media)."""
    return os.environ.get("SEARCHLITE_READ_ONLY", "").strip().lower() in ("1", "true", "yes")


def is_writable(folder: Path) -> bool:
    """Whether a library folder and its catalog file can be written (the one check: :func:`paths.is_writable`)."""
    return paths_is_writable(folder, folder / CATALOG_FILE)


class _ReadOnlySessions:
    """Stands in for the write sessionmaker of a read-only catalog: any write is a clear error."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _refuse(self) -> LibraryError:
        return LibraryError(f"the library at {self.folder} is read-only (read-only media, or "
                            f"$SEARCHLITE_READ_ONLY); searching works, changing it needs a writable copy")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise self._refuse()

    def begin(self, *args: Any, **kwargs: Any) -> Any:
        raise self._refuse()


class Catalog:
    """Opens (creating or migrating) ``catalog.sqlite`` in a library folder.

    ``read_only`` (default: when the folder is not writable, or $SEARCHLITE_READ_ONLY=1) opens an
    existing catalog with SQLite's ``mode=ro`` (and ``immutable=1`` when no -wal/-shm files are
    there, as after a clean close): reads work, caches are skipped, any write is a LibraryError.
    """

    def __init__(self, folder: Path, create: bool = True, read_only: bool | None = None) -> None:
        from searchlite.query_cache import shared

        self.folder = Path(folder)
        self.query_cache = shared()  # round4-server: query vectors off the catalog, in process memory
        self._cache_ns: tuple | None = None
        path = self.folder / CATALOG_FILE
        if read_only is None:
            read_only = read_only_forced() or (path.exists() and not is_writable(self.folder))
        self.read_only = bool(read_only)
        if not path.exists():
            if not create or self.read_only:
                raise LibraryError(f"no searchlite library at {self.folder} (run `searchlite index` first)")
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise LibraryError(f"cannot create the library folder {self.folder}: {exc.strerror or exc}") from exc
        if self.read_only:
            self.engine: Engine = _read_only_engine(path)
            event.listen(self.engine, "connect", _on_connect_read_only)
        else:
            # URL.create keeps '?' and '#' in the path literal (a URL string would cut it there)
            self.engine = create_engine(URL.create("sqlite", database=str(path)))
            event.listen(self.engine, "connect", _on_connect)
        event.listen(self.engine, "begin", _on_begin)
        self.Session = sessionmaker(self.engine, expire_on_commit=False)
        self.WriteSession = _ReadOnlySessions(self.folder) if self.read_only else \
            sessionmaker(self.engine.execution_options(write=True), expire_on_commit=False)
        self._upgrade()

    def require_writable(self, what: str) -> None:
        """A one-line LibraryError when this catalog is read-only (before ``what`` starts)."""
        if self.read_only:
            raise LibraryError(f"the library at {self.folder} is read-only (read-only media, or "
                               f"$SEARCHLITE_READ_ONLY): `{what}` needs a writable library")

    def _upgrade(self) -> None:
        with self.engine.connect() as conn:
            version = migrations.current_version(conn)
            conn.rollback()
        if version > SCHEMA_VERSION:
            raise LibraryError(f"this library was written by a newer searchlite (schema {version} > "
                               f"{SCHEMA_VERSION}); upgrade searchlite")
        if version == SCHEMA_VERSION:
            return
        if self.read_only:
            raise LibraryError(f"the library at {self.folder} needs an upgrade (schema {version} -> "
                               f"{SCHEMA_VERSION}) but is read-only; open it once where it is writable")
        with self.engine.execution_options(write=True).begin() as conn:
            version = migrations.current_version(conn)  # another process may have upgraded meanwhile
            for step in range(version, SCHEMA_VERSION):
                log.info("migrating catalog schema %d -> %d", step, step + 1)
                migrations.STEPS[step](conn)
                migrations.set_version(conn, step + 1)

    @property
    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            return migrations.current_version(conn)

    # -- roots -------------------------------------------------------------------------------
    def root_id(self, s: Session, path: str | Path) -> int:
        key = str(path)
        row = s.scalar(select(Root).where(Root.path == key))
        if row is None:
            row = Root(path=key)
            s.add(row)
            s.flush()
        return row.id

    def roots(self) -> dict[int, str]:
        with self.Session() as s:
            return {r.id: r.path for r in s.scalars(select(Root))}

    def locate(self, path: str) -> tuple[int, str] | None:
        """(root id, relpath) of a path inside a known root, looked up by each parent (O(depth)).
        Lexical: ``path`` is taken as it is (absolute and normalised); see :meth:`find_image`."""
        pure = PurePosixPath(path) if "://" not in path else None
        with self.Session() as s:
            if pure is not None:
                for parent in pure.parents:
                    root = s.scalar(select(Root.id).where(Root.path == str(parent)))
                    if root is not None:
                        return root, pure.relative_to(parent).as_posix()
                return None
            for root_id, root_path in s.execute(select(Root.id, Root.path).where(Root.path.like("%://%"))):
                if path.startswith(root_path.rstrip("/") + "/"):
                    return root_id, path[len(root_path.rstrip("/")) + 1:]
        return None

    def locate_all(self, path: str | Path) -> list[tuple[int, str]]:
        """Every (root id, relpath) a user's path names, by the one rule for paths under a root:
        first as given (absolute, normalised: a symlinked folder the scan followed is part of the
        stored path), then resolved (a root reached through a link to it)."""
        if "://" in str(path):
            found = self.locate(str(path))
            return [found] if found else []
        out: list[tuple[int, str]] = []
        for candidate in query_candidates(path):
            found = self.locate(candidate)
            if found is not None and found not in out:
                out.append(found)
        return out

    def find_image(self, path: str | Path) -> ImageRow | None:
        """The catalog row of a file, if it is inside a known root (see :meth:`locate_all`); a row
        found by the path as given must name the same file (``..`` after a link can mislead)."""
        with self.Session() as s:
            for root_id, relpath in self.locate_all(path):
                row = s.scalar(select(ImageRow).where(ImageRow.root_id == root_id, ImageRow.relpath == relpath))
                if row is None:
                    continue
                if "://" in str(path) or _same_file(str(path), join_path(s.get(Root, root_id).path, relpath)):
                    return row
        return None

    def folder_condition(self, folder: str | Path):
        """SQL condition on images (joined with roots): inside ``folder``, by the rule of
        :meth:`locate_all`; roots inside the folder count whole. Ranges on (root_id, relpath) use
        the unique index; names stored as BLOBs (not UTF-8) get their own byte range."""
        if "://" in str(folder):
            forms = [str(folder).rstrip("/")]
        else:
            forms = query_candidates(folder)
        roots = self.roots()
        inside: set[int] = set()
        ranges: set[tuple[int, str]] = set()
        for form in forms:
            top = form.rstrip("/")
            inside.update(rid for rid, path in roots.items() if path == top or path.startswith(top + "/"))
            located = self.locate(top + "/x")
            if located is not None and located[0] not in inside:
                ranges.add((located[0], located[1][:-1]))  # 'sub/dir/' (relpath of 'x' minus the 'x')
        parts = [ImageRow.root_id.in_(sorted(inside))] if inside else []
        for root_id, prefix in sorted(ranges):
            if root_id in inside:
                continue
            raw = as_bytes(prefix)
            by_bytes = and_(ImageRow.relpath >= raw, ImageRow.relpath < raw[:-1] + b"0")  # BLOB rows only
            if isinstance(to_db(prefix), str):  # TEXT sorts before every BLOB: two disjoint ranges
                by_text = and_(ImageRow.relpath >= prefix, ImageRow.relpath < prefix[:-1] + "0")
                parts.append(and_(ImageRow.root_id == root_id, or_(by_text, by_bytes)))
            else:
                parts.append(and_(ImageRow.root_id == root_id, by_bytes))
        return or_(*parts) if parts else ImageRow.id < 0

    def image(self, image_id: int) -> tuple[ImageRow, str] | None:
        """An image row and its absolute path (or URI)."""
        with self.Session() as s:
            row = s.get(ImageRow, image_id)
            if row is None:
                return None
            root = s.get(Root, row.root_id)
            return row, join_path(root.path, row.relpath)

    # -- models --------------------------------------------------------------------------------
    def models(self, indexed_only: bool = False) -> list[ModelRow]:
        with self.Session() as s:
            query = select(ModelRow).order_by(ModelRow.id)
            if indexed_only:
                query = query.where(ModelRow.indexed.is_(True))
            return list(s.scalars(query))

    def add_model(self, **fields: Any) -> ModelRow:
        """Insert a model row (or return the existing one with that model_id)."""
        with self.WriteSession.begin() as s:
            row = s.scalar(select(ModelRow).where(ModelRow.model_id == fields["model_id"]))
            if row is None:
                row = ModelRow(**fields)
                s.add(row)
                s.flush()
            return row

    def update_model(self, model_ref: int, **fields: Any) -> ModelRow:
        with self.WriteSession.begin() as s:
            row = s.get(ModelRow, model_ref)
            for key, value in fields.items():
                setattr(row, key, value)
            s.flush()
            return row

    def model(self, model_ref: int) -> ModelRow:
        with self.Session() as s:
            return s.get(ModelRow, model_ref)

    # -- vectors mapping --------------------------------------------------------------------------
    @contextlib.contextmanager
    def reading(self, session: Session | None = None) -> Iterator[Session]:
        """``session`` itself (a caller's read transaction: one consistent view across calls), or a
        fresh session closed on exit."""
        if session is not None:
            yield session
            return
        with self.Session() as s:
            yield s

    def rows_of(self, model_ref: int, image_ids: Iterable[int], session: Session | None = None) -> dict[int, int]:
        """image id -> store row for the images that have a vector under the model."""
        ids = [int(i) for i in image_ids]
        out: dict[int, int] = {}
        with self.reading(session) as s:
            for start in range(0, len(ids), 900):
                out.update(s.execute(select(VectorRow.image_id, VectorRow.store_row).where(
                    VectorRow.model_ref == model_ref, VectorRow.image_id.in_(ids[start:start + 900]))).tuples().all())
        return out

    def live_rows(self, model_ref: int, lo: int = 0, hi: int | None = None, chunk: int = 1 << 20) -> Iterator[np.ndarray]:
        """Sorted store rows in [lo, hi) that still hold a live vector, in chunks."""
        while True:
            with self.Session() as s:
                query = select(VectorRow.store_row).where(VectorRow.model_ref == model_ref, VectorRow.store_row >= lo)
                if hi is not None:
                    query = query.where(VectorRow.store_row < hi)
                rows = np.fromiter(s.scalars(query.order_by(VectorRow.store_row).limit(chunk)), dtype=np.int64)
            if not len(rows):
                return
            yield rows
            lo = int(rows[-1]) + 1

    def count_vectors(self, model_ref: int) -> int:
        with self.Session() as s:
            return int(s.scalar(select(func.count()).select_from(VectorRow).where(VectorRow.model_ref == model_ref)))

    def count_vectors_between(self, model_ref: int, lo: int, hi: int) -> int:
        with self.Session() as s:
            return int(s.scalar(select(func.count()).select_from(VectorRow).where(
                VectorRow.model_ref == model_ref, VectorRow.store_row >= lo, VectorRow.store_row < hi)))

    def snapshot(self, model_ref: int, session: Session | None = None) -> Snapshot:
        """Store size, segments and tombstones of a model, read in one transaction."""
        with self.reading(session) as s:
            model = s.get(ModelRow, model_ref)
            segments = tuple(s.scalars(select(SegmentRow).where(SegmentRow.model_ref == model_ref)
                                       .order_by(SegmentRow.row_lo)))
            dead = np.fromiter(s.scalars(select(Tombstone.store_row).where(Tombstone.model_ref == model_ref)
                                         .order_by(Tombstone.store_row)), dtype=np.int64)
            live = int(s.scalar(select(func.count()).select_from(VectorRow).where(VectorRow.model_ref == model_ref)))
            for seg in segments:
                s.expunge(seg)
            return Snapshot(model.store_rows, segments, dead, live)

    def version(self, model_ref: int, session: Session | None = None) -> tuple:
        """A cheap fingerprint of everything a snapshot depends on (store size, segments, tombstones)."""
        with self.reading(session) as s:
            return tuple(s.execute(select(
                select(ModelRow.store_rows).where(ModelRow.id == model_ref).scalar_subquery(),
                select(func.max(SegmentRow.id)).where(SegmentRow.model_ref == model_ref).scalar_subquery(),
                select(func.count(), ).select_from(Tombstone).where(Tombstone.model_ref == model_ref).scalar_subquery(),
                select(func.max(Tombstone.id)).where(Tombstone.model_ref == model_ref).scalar_subquery(),
            )).one())

    def results_for_rows(self, model_ref: int, rows: Iterable[int], session: Session | None = None) -> dict[int, Any]:
        """store row -> light image row (with ``root_path``) for rows that still map to an image."""
        rows = [int(r) for r in rows if r >= 0]
        cols = [VectorRow.store_row, ImageRow.id, ImageRow.relpath, ImageRow.width, ImageRow.height,
                ImageRow.format, ImageRow.taken_at, ImageRow.taken_offset, ImageRow.taken_source, ImageRow.size,
                ImageRow.companion, Root.path.label("root_path")]
        out: dict[int, Any] = {}
        with self.reading(session) as s:
            for start in range(0, len(rows), 900):
                query = (select(*cols).join(ImageRow, ImageRow.id == VectorRow.image_id)
                         .join(Root, Root.id == ImageRow.root_id)
                         .where(VectorRow.model_ref == model_ref, VectorRow.store_row.in_(rows[start:start + 900])))
                for row in s.execute(query):
                    out[row.store_row] = row
        return out

    def counts(self) -> dict[str, Any]:
        with self.Session() as s:
            by_status = dict(s.execute(select(ImageRow.status, func.count()).group_by(ImageRow.status)).tuples().all())
            per_model = dict(s.execute(
                select(ModelRow.model_id, func.count(VectorRow.store_row))
                .join(VectorRow, VectorRow.model_ref == ModelRow.id, isouter=True).group_by(ModelRow.id)).tuples().all())
        return {"images": by_status, "vectors": per_model}

    def errors(self) -> list[tuple[str, str]]:
        with self.Session() as s:
            rows = s.execute(select(Root.path, ImageRow.relpath, ImageRow.error).join(Root, Root.id == ImageRow.root_id)
                             .where(ImageRow.status == "error").order_by(ImageRow.id))
            return [(join_path(root, rel), err or "") for root, rel, err in rows]

    # round4-server: the query cache lives in bounded process memory, never in the catalog (a
    # search opens no write transaction); the query_cache table stays unused in old schemas.
    def cached_queries(self, model_ref: int, keys: list[str]) -> dict[str, np.ndarray]:
        """Cached query embeddings of a model, by key (see :mod:`searchlite.query_cache`)."""
        return self.query_cache.get(self._cache_key(model_ref), keys)

    def cache_queries(self, model_ref: int, vectors: dict[str, np.ndarray], keep: int) -> bool:
        """Remember query embeddings, keeping the ``keep`` most recent per model (in memory)."""
        self.query_cache.put(self._cache_key(model_ref), vectors, keep)
        return True

    def _cache_key(self, model_ref: int) -> tuple:
        """A model of this very catalog file (a library deleted and made again is another file)."""
        if self._cache_ns is None:
            info = os.stat(self.folder / CATALOG_FILE)
            self._cache_ns = (str(self.folder.resolve()), info.st_dev, info.st_ino)
        return (*self._cache_ns, model_ref)

    def optimize(self) -> None:
        """Refresh the query planner's statistics when the catalog has grown or shrunk by more than
        a quarter since they were taken. Without them (or with sampled ones) SQLite may scan every
        vector of a model to answer a filter on an indexed image column. A full ANALYZE: 0.7 s at 1M."""
        with self.engine.connect() as conn:
            conn.rollback()
            raw = conn.connection.driver_connection
            has_stats = raw.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'").fetchone()
            stat = raw.execute("SELECT stat FROM sqlite_stat1 WHERE idx = 'ix_images_root_id'").fetchone() \
                if has_stats else None
            rows = raw.execute("SELECT count(*) FROM vectors").fetchone()[0] + \
                raw.execute("SELECT coalesce(max(id), 0) FROM images").fetchone()[0]
            before = int(stat[0].split()[0]) if stat else None
            if before is None or abs(rows - 2 * before) > 0.25 * max(2 * before, 1000):
                raw.execute("PRAGMA analysis_limit=0")
                raw.execute("ANALYZE")

    def has_legacy_vectors(self) -> bool:
        """Whether a pre-v3 ``embeddings`` table with vectors still waits to be moved to the store."""
        with self.engine.connect() as conn:
            found = conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE name = 'embeddings'").first()
            conn.rollback()
        return found is not None


def _same_file(query: str, stored: str) -> bool:
    """Whether a query path names the stored file: False when the query names no file, True when
    only the stored one is gone (it is still that image's row)."""
    try:
        return os.path.samefile(query, stored)
    except OSError:
        return os.path.exists(query)


def on_read_only_medium(folder: Path) -> bool:
    """Whether a folder is on a medium mounted read-only (statvfs ST_RDONLY): nothing can change
    a catalog there, the one case SQLite's ``immutable`` is true."""
    try:
        return bool(hasattr(os, "statvfs") and os.statvfs(folder).f_flag & getattr(os, "ST_RDONLY", 1))
    except OSError:
        return False


def _read_only_engine(path: Path) -> Engine:
    """An engine over SQLite's read-only open of a catalog (``mode=ro``) that sees what another
    process writes later (a NAS share someone else indexes). Each session opens its own
    connection, chosen when it opens: while a writer is active (a -wal/-shm file exists) a plain
    read-only connection, which reads the WAL; when none is (no -wal: everything is in the main
    file) or on a read-only mount, ``immutable=1``, which needs no lock files, so a reader never
    creates any. A URI by ``creator``, so the path is escaped exactly."""
    import sqlite3
    from urllib.parse import quote

    from sqlalchemy.pool import NullPool, QueuePool

    base = f"file:{quote(as_bytes(str(path)))}?mode=ro"
    frozen = on_read_only_medium(path.parent)

    def connect() -> sqlite3.Connection:
        wal = not frozen and any(Path(f"{path}{suffix}").exists() for suffix in ("-wal", "-shm"))
        return sqlite3.connect(base if wal else base + "&immutable=1", uri=True, check_same_thread=False)

    # round4-server: pooled (kept) connections only where nothing can change the file
    return create_engine(URL.create("sqlite", database=str(path)), creator=connect,
                         poolclass=QueuePool if frozen else NullPool)


#: Values per SQL ``IN (...)`` list: each is a host parameter, and SQLite builds before 3.32 (and
#: some distributions' since) allow only 999 of them in a statement (stock builds: 32,766).
IN_CHUNK = 900


def chunked(values: Any, size: int = IN_CHUNK) -> Iterator[list]:
    """``values`` (any iterable) as lists of at most ``size``, for SQL ``IN`` lists."""
    values = list(values)
    for start in range(0, len(values), size):
        yield values[start:start + size]


def join_path(root: str, relpath: str) -> str:
    """A root and a relpath as one absolute path or URI."""
    return f"{root.rstrip('/')}/{relpath}"


def is_locked_error(exc: BaseException) -> bool:
    return isinstance(exc, OperationalError) and "locked" in str(exc).lower()


# round4-house: the roots an import made from a file's parent folder (catalog knowledge, read by
# interchange and thumbnails alike, so neither imports the other)
#: catalog meta key: the roots an import made from a file's parent folder (no --root, no known
#: root). The web server serves nothing under them until that folder is indexed or named with --root.
IMPORTED_ROOTS = "imported_parent_roots"


def imported_roots(catalog: Catalog, s: Session | None = None) -> set[str]:
    """Roots an import made from a parent folder that no `index` or `import --root` has claimed since."""
    import json

    if s is None:
        with catalog.Session() as s:
            return imported_roots(catalog, s)
    row = s.get(Meta, IMPORTED_ROOTS)
    return set(json.loads(row.value)) if row is not None else set()
