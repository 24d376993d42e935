"""The SQLite catalog (SQLAlchemy 2.0 ORM, WAL mode): images, models, embeddings, runs.

Embeddings (raw float32 vectors, one row per model and image) live in the catalog, so one SQLite
transaction commits an image and its vectors together: a crash loses at most the batch in flight,
and the FAISS index is a derived, rebuildable view of them. Row ids are AUTOINCREMENT, never reused,
so an id left behind in a FAISS index can never point at another image.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import (
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    func,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from searchlite.errors import LibraryError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
CATALOG_FILE = "catalog.sqlite"


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Meta(Base):
    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String, primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Root(Base):
    """A folder the user asked to index; image paths are stored relative to it."""

    __tablename__ = "roots"
    __table_args__ = {"sqlite_autoincrement": True}
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(String, unique=True)
    added_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ImageRow(Base):
    """One image file. A file whose content changes gets a new row (and id)."""

    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("root_id", "relpath"), {"sqlite_autoincrement": True})
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    root_id: Mapped[int] = mapped_column(ForeignKey("roots.id", ondelete="CASCADE"), index=True)
    relpath: Mapped[str] = mapped_column(String)
    size: Mapped[int] = mapped_column(Integer)
    mtime_ns: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    format: Mapped[str | None] = mapped_column(String(16))
    taken_at: Mapped[datetime | None] = mapped_column(DateTime, index=True)
    camera: Mapped[str | None] = mapped_column(String)
    status: Mapped[str] = mapped_column(String(8), default="pending", index=True)  # pending | ok | error
    error: Mapped[str | None] = mapped_column(Text)
    seen_run: Mapped[int] = mapped_column(Integer, default=0)
    indexed_at: Mapped[datetime | None] = mapped_column(DateTime)


class ModelRow(Base):
    """A model that has vectors in this library, with its score parameters and index settings."""

    __tablename__ = "models"
    __table_args__ = {"sqlite_autoincrement": True}
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[str] = mapped_column(String, unique=True)
    spec: Mapped[str] = mapped_column(String)
    dim: Mapped[int] = mapped_column(Integer)
    family: Mapped[str] = mapped_column(String(8))
    scale: Mapped[float] = mapped_column(Float)
    bias: Mapped[float] = mapped_column(Float, default=0.0)
    template: Mapped[str] = mapped_column(String)
    index_type: Mapped[str] = mapped_column(String(16), default="auto")  # requested: auto|flat|hnsw|ivf|ivfpq
    index_factory: Mapped[str | None] = mapped_column(String)  # what was built
    index_file: Mapped[str | None] = mapped_column(String)
    index_seq: Mapped[int] = mapped_column(Integer, default=0)  # highest embedding seq in index_file
    index_stale: Mapped[int] = mapped_column(Integer, default=0)  # deleted ids still inside index_file
    calib_a: Mapped[float | None] = mapped_column(Float)
    calib_b: Mapped[float | None] = mapped_column(Float)
    calib_report: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Embedding(Base):
    """A float32 vector of one image under one model. ``seq`` grows monotonically."""

    __tablename__ = "embeddings"
    __table_args__ = (UniqueConstraint("model_ref", "image_id"), Index("ix_embeddings_model_seq", "model_ref", "seq"),
                      {"sqlite_autoincrement": True})
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_ref: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class RunRow(Base):
    __tablename__ = "runs"
    __table_args__ = {"sqlite_autoincrement": True}
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    stats: Mapped[str | None] = mapped_column(Text)


def _migrate_v0_to_v1(engine: Engine) -> None:
    Base.metadata.create_all(engine)


def _migrate_v1_to_v2(engine: Engine) -> None:
    # readers check max(seq) per model on every query: O(log n) with this index, a scan without
    with engine.begin() as conn:
        conn.execute(text("CREATE INDEX IF NOT EXISTS ix_embeddings_model_seq ON embeddings (model_ref, seq)"))


#: Explicit, ordered schema migrations: MIGRATIONS[v] upgrades a version-v catalog to v+1.
#: A release that changes the schema appends a step here; nothing ever drops user data.
MIGRATIONS = [_migrate_v0_to_v1, _migrate_v1_to_v2]


def _set_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


class Catalog:
    """Opens (creating or migrating) ``catalog.sqlite`` in a library folder."""

    def __init__(self, folder: Path, create: bool = True) -> None:
        self.folder = Path(folder)
        path = self.folder / CATALOG_FILE
        if not path.exists() and not create:
            raise LibraryError(f"no searchlite library at {self.folder} (run `searchlite index` first)")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(f"sqlite:///{path}", future=True)
        event.listen(self.engine, "connect", _set_pragmas)
        self.Session = sessionmaker(self.engine, expire_on_commit=False)
        self._upgrade()

    def _upgrade(self) -> None:
        with self.engine.begin() as conn:
            has_meta = conn.execute(text("SELECT name FROM sqlite_master WHERE name='meta'")).first()
            version = 0
            if has_meta:
                row = conn.execute(text("SELECT value FROM meta WHERE key='schema_version'")).first()
                version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise LibraryError(
                f"this library was written by a newer searchlite (schema {version} > {SCHEMA_VERSION}); upgrade searchlite"
            )
        for step in range(version, SCHEMA_VERSION):
            log.info("migrating catalog schema %d -> %d", step, step + 1)
            MIGRATIONS[step](self.engine)
            with self.Session.begin() as s:
                s.merge(Meta(key="schema_version", value=str(step + 1)))

    @property
    def schema_version(self) -> int:
        with self.Session() as s:
            return int(s.get(Meta, "schema_version").value)

    # -- roots & models ----------------------------------------------------------------------
    def root_id(self, s: Session, path: Path) -> int:
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

    def model_row(self, s: Session, model_id: str) -> ModelRow | None:
        return s.scalar(select(ModelRow).where(ModelRow.model_id == model_id))

    def models(self) -> list[ModelRow]:
        with self.Session() as s:
            return list(s.scalars(select(ModelRow).order_by(ModelRow.id)))

    def register_model(self, embedder: Any, spec: str, index_type: str | None = None) -> ModelRow:
        """Create the model's row on first use (or update its index type when asked)."""
        from searchlite.models.registry import parse_spec

        spec = parse_spec(spec).canonical
        with self.Session.begin() as s:
            row = self.model_row(s, embedder.model_id)
            if row is None:
                row = ModelRow(model_id=embedder.model_id, spec=spec, dim=embedder.dim, family=embedder.family,
                               scale=embedder.score.scale, bias=embedder.score.bias, template=embedder.template,
                               index_type=index_type or "auto")
                s.add(row)
            elif index_type and index_type != row.index_type:
                row.index_type = index_type
            s.flush()
            s.expunge(row)
            return row

    # -- embeddings ----------------------------------------------------------------------------
    def iter_vectors(self, model_ref: int, after_seq: int = 0, chunk: int = 20000,
                     ) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        """Yield (ids, vectors, last_seq) chunks of a model's embeddings with seq > after_seq."""
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    select(Embedding.seq, Embedding.image_id, Embedding.vector)
                    .where(Embedding.model_ref == model_ref, Embedding.seq > after_seq)
                    .order_by(Embedding.seq).limit(chunk)
                ).all()
            if not rows:
                return
            ids = np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows))
            vecs = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32).reshape(len(rows), -1)
            after_seq = rows[-1][0]
            yield ids, vecs, after_seq

    def vectors_for(self, model_ref: int, image_ids: Iterable[int]) -> dict[int, np.ndarray]:
        """Stored vectors of some images under one model (joined in id batches)."""
        ids = list(image_ids)
        out: dict[int, np.ndarray] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(ids), 900):
                for image_id, blob in conn.execute(
                    select(Embedding.image_id, Embedding.vector).where(
                        Embedding.model_ref == model_ref, Embedding.image_id.in_(ids[start : start + 900]))
                ):
                    out[image_id] = np.frombuffer(blob, dtype=np.float32)
        return out

    def max_seq(self, model_ref: int) -> int:
        with self.engine.connect() as conn:
            return int(conn.scalar(select(func.coalesce(func.max(Embedding.seq), 0))
                                   .where(Embedding.model_ref == model_ref)))

    def count_vectors(self, model_ref: int) -> int:
        with self.engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(Embedding).where(Embedding.model_ref == model_ref)))

    def rows_with_vectors(self, model_ref: int, ids: Iterable[int]) -> dict[int, Any]:
        """Catalog rows (light Core rows, attribute access) of the ids that have a vector under the
        model: the join that turns FAISS ids into results and drops stale ones."""
        ids = [int(i) for i in ids if i >= 0]
        cols = [ImageRow.id, ImageRow.root_id, ImageRow.relpath, ImageRow.status, ImageRow.width, ImageRow.height,
                ImageRow.format, ImageRow.taken_at, ImageRow.mtime_ns]
        out: dict[int, Any] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(ids), 900):
                chunk = ids[start : start + 900]
                for row in conn.execute(select(*cols).join(Embedding, Embedding.image_id == ImageRow.id).where(
                        Embedding.model_ref == model_ref, ImageRow.id.in_(chunk))):
                    out[row.id] = row
        return out

    def find_image(self, path: Path) -> ImageRow | None:
        """The catalog row of a file on disk, if it is inside an indexed root."""
        path = path.resolve()
        for root_id, root in self.roots().items():
            try:
                rel = path.relative_to(root)
            except ValueError:
                continue
            with self.Session() as s:
                row = s.scalar(select(ImageRow).where(ImageRow.root_id == root_id, ImageRow.relpath == rel.as_posix()))
                if row is not None:
                    return row
        return None

    def delete_images(self, s: Session, ids: list[int]) -> None:
        for start in range(0, len(ids), 900):
            s.execute(delete(ImageRow).where(ImageRow.id.in_(ids[start : start + 900])))

    def counts(self) -> dict[str, Any]:
        with self.engine.connect() as conn:
            by_status = dict(conn.execute(select(ImageRow.status, func.count()).group_by(ImageRow.status)).all())
            per_model = dict(conn.execute(
                select(ModelRow.model_id, func.count(Embedding.seq))
                .join(Embedding, Embedding.model_ref == ModelRow.id, isouter=True).group_by(ModelRow.id)).all())
        return {"images": by_status, "vectors": per_model}

    def errors(self) -> list[tuple[str, str]]:
        roots = self.roots()
        with self.Session() as s:
            rows = s.scalars(select(ImageRow).where(ImageRow.status == "error").order_by(ImageRow.id))
            return [(str(Path(roots[r.root_id]) / r.relpath), r.error or "") for r in rows]
