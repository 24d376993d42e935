"""The incremental batch indexer: scan -> decode ahead in threads -> embed in batches -> commit.

Phases per run:
1. scan every root (streaming), marking unchanged files seen, and changed/new ones pending;
2. decode pending files in a thread pool that runs ahead of the model (bounded window), hashing
   each file once; a file whose hash matches a vanished one is a move and keeps its vectors;
3. embed decoded batches with every requested model and commit rows + vectors in one SQLite
   transaction per batch (the checkpoint: a crash loses at most the batch in flight);
4. sweep files gone from disk; sync each model's FAISS index (atomic write).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import and_, delete, exists, func, not_, or_, select, update

from searchlite.catalog import Catalog, Embedding, ImageRow, ModelRow, Root, RunRow, utcnow
from searchlite.errors import ImageDecodeError, LibraryError
from searchlite.imaging import load_image
from searchlite.index_store import IndexStore
from searchlite.indexer.scan import FileEntry, walk
from searchlite.models.base import Embedder

log = logging.getLogger(__name__)

SCAN_CHUNK = 1000


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """One index run per library at a time (searches never wait: SQLite WAL readers)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory lock
        yield
        return
    with open(lock_path, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise LibraryError(f"another `searchlite index` is running on {lock_path.parent}") from exc
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@dataclass
class IndexStats:
    """What one index run did."""

    added: int = 0
    updated: int = 0
    moved: int = 0
    removed: int = 0
    failed: int = 0
    unchanged: int = 0
    seconds: float = 0.0
    index: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Work:
    image_id: int
    path: Path
    old_sha: str | None
    is_new: bool
    missing: list[int]  # positions in the embedder list that lack a vector for this image
    recheck: bool  # pending: size/mtime changed (or new), so the content may differ


@dataclass
class _Done:
    work: _Work
    sha: str | None = None
    error: str | None = None
    moved_from: int | None = None
    same_content: bool = False
    meta: dict | None = None
    pixels: dict[int, np.ndarray] | None = None


class Indexer:
    """Runs one incremental index pass of some roots with some models."""

    def __init__(self, catalog: Catalog, embedders: Sequence[tuple[str, Embedder]], *, index_type: str | None = None,
                 batch_size: int = 32, workers: int | None = None, draft: bool = True, include_hidden: bool = False,
                 checkpoint_seconds: float = 300.0) -> None:
        self.catalog = catalog
        self.embedders = [e for _, e in embedders]
        self.models = [catalog.register_model(e, spec, index_type) for spec, e in embedders]
        self.index_type = index_type
        self.batch_size = batch_size
        self.workers = workers or max(1, min(8, os.cpu_count() or 1))
        self.draft = draft
        self.include_hidden = include_hidden
        self.checkpoint_seconds = checkpoint_seconds
        self.stats = IndexStats()
        self.removed_ids: list[int] = []
        self._vanished: dict[str, int] = {}

    # -- phase 1: scan -------------------------------------------------------------------------
    def _resolve_root(self, folder: Path) -> tuple[int, str]:
        """The catalog root for a folder and the relpath prefix of the folder inside it.

        A folder inside an indexed root is indexed as part of that root (no duplicate rows); a
        folder that contains indexed roots adopts them, so their images keep their ids and vectors.
        """
        with self.catalog.Session.begin() as s:
            roots = {r.id: Path(r.path) for r in s.scalars(select(Root))}
            for root_id, path in roots.items():
                if folder != path and folder.is_relative_to(path):
                    return root_id, folder.relative_to(path).as_posix() + "/"
            root_id = self.catalog.root_id(s, folder)
            for child_id, path in roots.items():
                if path != folder and path.is_relative_to(folder):
                    prefix = path.relative_to(folder).as_posix() + "/"
                    s.execute(update(ImageRow).where(ImageRow.root_id == child_id).values(
                        root_id=root_id, relpath=prefix + ImageRow.relpath))
                    s.execute(delete(Root).where(Root.id == child_id))
                    log.info("root %s is now part of %s", path, folder)
            return root_id, ""

    def _under(self, root_id: int, prefix: str):
        cond = ImageRow.root_id == root_id
        return and_(cond, func.substr(ImageRow.relpath, 1, len(prefix)) == prefix) if prefix else cond

    def _scan_root(self, root: Path, run: int) -> tuple[int, str]:
        root_id, prefix = self._resolve_root(root)
        entries = walk(root, self.include_hidden)
        while True:
            chunk = [e for _, e in zip(range(SCAN_CHUNK), entries)]
            if not chunk:
                break
            chunk = [FileEntry(prefix + e.relpath, e.size, e.mtime_ns, e.error) for e in chunk]
            with self.catalog.Session.begin() as s:
                rel = [e.relpath for e in chunk]
                existing = {r.relpath: r for r in s.scalars(
                    select(ImageRow).where(ImageRow.root_id == root_id, ImageRow.relpath.in_(rel)))}
                for e in chunk:
                    row = existing.get(e.relpath)
                    if e.error:
                        if row is None:
                            s.add(ImageRow(root_id=root_id, relpath=e.relpath, size=-1, mtime_ns=0, status="error",
                                           error=e.error, seen_run=run))
                        else:
                            row.status, row.error, row.seen_run = "error", e.error, run
                        continue
                    if row is None:
                        s.add(ImageRow(root_id=root_id, relpath=e.relpath, size=e.size, mtime_ns=e.mtime_ns,
                                       status="pending", seen_run=run))
                    elif row.size == e.size and row.mtime_ns == e.mtime_ns and row.status != "pending":
                        row.seen_run = run
                        self.stats.unchanged += 1
                    else:
                        row.size, row.mtime_ns, row.status, row.seen_run = e.size, e.mtime_ns, "pending", run
        with self.catalog.Session() as s:
            for sha, image_id in s.execute(select(ImageRow.sha256, ImageRow.id).where(
                    self._under(root_id, prefix), ImageRow.seen_run != run, ImageRow.status == "ok",
                    ImageRow.sha256.is_not(None))):
                self._vanished.setdefault(sha, image_id)
        return root_id, prefix

    # -- phase 2: what needs work ----------------------------------------------------------------
    def _work_items(self, run: int) -> Iterator[_Work]:
        roots = self.catalog.roots()
        last_id = 0
        lacks_vector = [not_(exists().where(and_(Embedding.image_id == ImageRow.id, Embedding.model_ref == m.id)))
                   for m in self.models]
        while True:
            with self.catalog.Session() as s:
                rows = list(s.scalars(
                    select(ImageRow).where(
                        ImageRow.id > last_id, ImageRow.seen_run == run,
                        or_(ImageRow.status == "pending", and_(ImageRow.status == "ok", or_(*lacks_vector))))
                    .order_by(ImageRow.id).limit(SCAN_CHUNK)))
                have: dict[int, set[int]] = {}
                ids = [r.id for r in rows]
                for image_id, model_ref in s.execute(select(Embedding.image_id, Embedding.model_ref).where(
                        Embedding.image_id.in_(ids))) if ids else []:
                    have.setdefault(image_id, set()).add(model_ref)
            if not rows:
                return
            for r in rows:
                got = have.get(r.id, set())
                missing = [i for i, m in enumerate(self.models) if m.id not in got]
                yield _Work(r.id, Path(roots[r.root_id]) / r.relpath, r.sha256, r.sha256 is None, missing,
                            r.status == "pending")
            last_id = rows[-1].id

    def _decode(self, work: _Work) -> _Done:
        """Runs in a worker thread: read once, hash, decode, preprocess for each model that needs it."""
        try:
            data = work.path.read_bytes()
        except OSError as exc:
            return _Done(work, error=f"cannot read: {exc.strerror or exc}")
        if not data:
            return _Done(work, error="empty file (0 bytes)")
        sha = hashlib.sha256(data).hexdigest()
        same = work.old_sha == sha
        moved_from = self._vanished.get(sha) if work.is_new else None
        if moved_from is not None:
            return _Done(work, sha=sha, moved_from=moved_from)
        # same content: only models lacking a vector; new or changed content: every model
        needs = work.missing if same or not work.recheck else list(range(len(self.embedders)))
        if not needs:
            return _Done(work, sha=sha, same_content=same)
        try:
            sizes = [self.embedders[i].image_size for i in needs]
            target = (max(s[0] for s in sizes), max(s[1] for s in sizes))
            loaded = load_image(data, target_size=target, draft=self.draft)
            pixels = {i: self.embedders[i].preprocess(loaded.image) for i in needs}
        except ImageDecodeError as exc:
            return _Done(work, sha=sha, error=str(exc))
        except Exception as exc:  # noqa: BLE001 - one bad image must never stop a run
            return _Done(work, sha=sha, error=f"cannot preprocess: {type(exc).__name__}: {exc}")
        meta = dict(width=loaded.width, height=loaded.height, format=loaded.format, taken_at=loaded.taken_at,
                    camera=loaded.camera)
        return _Done(work, sha=sha, meta=meta, pixels=pixels, same_content=same)

    # -- phase 3: embed + commit -------------------------------------------------------------------
    def _commit(self, batch: list[_Done], run: int) -> None:
        vectors: dict[int, dict[int, np.ndarray]] = {}
        for i, emb in enumerate(self.embedders):
            members = [d for d in batch if d.pixels and i in d.pixels]
            if members:
                out = emb.embed_pixels(np.stack([d.pixels[i] for d in members]))
                for d, v in zip(members, out):
                    vectors.setdefault(d.work.image_id, {})[i] = v
        now = utcnow()
        with self.catalog.Session.begin() as s:
            for d in batch:
                row = s.get(ImageRow, d.work.image_id)
                if row is None:
                    continue
                if d.error:
                    row.status, row.error, row.sha256 = "error", d.error, d.sha
                    self.stats.failed += 1
                    continue
                if d.moved_from is not None:
                    old = s.get(ImageRow, d.moved_from)
                    self._vanished.pop(d.sha, None)
                    if old is not None:
                        root_id, relpath, size, mtime = row.root_id, row.relpath, row.size, row.mtime_ns
                        s.delete(row)
                        s.flush()
                        old.root_id, old.relpath, old.size, old.mtime_ns = root_id, relpath, size, mtime
                        old.seen_run = run
                        self.stats.moved += 1
                        continue
                if not d.work.is_new and not d.same_content:
                    # content changed: the image gets a new id, so a stale FAISS entry can never match it
                    fields = {c: getattr(row, c) for c in ("root_id", "relpath", "size", "mtime_ns", "seen_run")}
                    self.removed_ids.append(row.id)
                    s.delete(row)
                    s.flush()
                    row = ImageRow(**fields)
                    s.add(row)
                    s.flush()
                    self.stats.updated += 1
                elif d.work.is_new:
                    self.stats.added += 1
                row.sha256 = d.sha
                if d.meta:
                    for k, v in d.meta.items():
                        setattr(row, k, v)
                row.status, row.error, row.indexed_at = "ok", None, now
                for i, v in vectors.get(d.work.image_id, {}).items():
                    s.add(Embedding(model_ref=self.models[i].id, image_id=row.id,
                                    vector=np.asarray(v, dtype=np.float32).tobytes()))

    def _sweep(self, scanned: list[tuple[int, str]], run: int) -> None:
        with self.catalog.Session.begin() as s:
            gone = list(s.scalars(select(ImageRow.id).where(
                or_(*[self._under(root_id, prefix) for root_id, prefix in scanned]), ImageRow.seen_run != run)))
            self.catalog.delete_images(s, gone)
        self.removed_ids.extend(gone)
        self.stats.removed += len(gone)

    def run(self, roots: Sequence[Path], progress: Callable[[int, int], None] | None = None) -> IndexStats:
        """Index ``roots``; ``progress(done, total)`` is called as images are processed."""
        with _exclusive(self.catalog.folder / "index.lock"):
            return self._run(roots, progress)

    def _run(self, roots: Sequence[Path], progress: Callable[[int, int], None] | None) -> IndexStats:
        start = time.perf_counter()
        roots = [Path(r).expanduser().resolve() for r in roots]
        for r in roots:
            if not r.is_dir():
                raise LibraryError(f"not a folder: {r}")
        with self.catalog.Session.begin() as s:
            run_row = RunRow()
            s.add(run_row)
            s.flush()
            run = run_row.id
        scanned = [self._scan_root(r, run) for r in roots]
        with self.catalog.Session() as s:
            total = s.scalar(select(func.count()).select_from(ImageRow).where(
                ImageRow.seen_run == run, ImageRow.status == "pending")) or 0
        done = 0
        last_sync = time.monotonic()
        window = self.workers * 4 + self.batch_size
        with ThreadPoolExecutor(self.workers, thread_name_prefix="decode") as pool:
            pending: deque[Future] = deque()
            items = self._work_items(run)
            batch: list[_Done] = []
            exhausted = False
            while pending or not exhausted:
                while not exhausted and len(pending) < window:
                    item = next(items, None)
                    if item is None:
                        exhausted = True
                    else:
                        pending.append(pool.submit(self._decode, item))
                if not pending:
                    break
                batch.append(pending.popleft().result())
                if len(batch) >= self.batch_size or (exhausted and not pending):
                    self._commit(batch, run)
                    done += len(batch)
                    batch = []
                    if progress:
                        progress(done, max(total, done))
                    if time.monotonic() - last_sync > self.checkpoint_seconds:
                        self._sync_indexes()
                        last_sync = time.monotonic()
            if batch:
                self._commit(batch, run)
                done += len(batch)
                if progress:
                    progress(done, max(total, done))
        self._sweep(scanned, run)
        self._sync_indexes()
        self.stats.seconds = round(time.perf_counter() - start, 3)
        with self.catalog.Session.begin() as s:
            row = s.get(RunRow, run)
            row.finished_at = utcnow()
            row.stats = json.dumps(self.stats.as_dict())
        return self.stats

    def _sync_indexes(self) -> None:
        removed, self.removed_ids = self.removed_ids, []
        for model in self.models:
            with self.catalog.Session() as s:
                fresh = s.get(ModelRow, model.id)
                s.expunge(fresh)
            store = IndexStore(self.catalog, fresh)
            self.stats.index[model.model_id] = store.sync(removed_ids=removed, kind=self.index_type)


__all__ = ["Indexer", "IndexStats"]
