"""The incremental batch indexer: scan -> decode ahead in threads -> embed in batches -> commit.

Phases per run (under the library's writer lock):
1. scan every root into a TEMP table (nothing written for unchanged files, see ``scan.py``);
2. decode the files that need work in a thread pool that runs ahead of the model (bounded window),
   hashing each file once: a new file whose hash matches a vanished one is a move (keeps its id and
   vectors); a changed file with the same hash is unchanged (only its mtime is updated);
3. embed decoded batches with every requested model, append the vectors to the store (fsynced),
   then commit rows + the vector mapping in one catalog transaction per batch (the checkpoint: a
   crash loses at most the batch in flight). A changed image keeps answering with its old vector
   until its new one commits in the same transaction that retires the old one;
4. sweep files gone from disk; bring each model's index segments up to date (O(new) work).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import delete, insert, select, update

from searchlite.catalog import Catalog, ImageRow, ModelRow, RunRow, VectorRow, chunked, join_path, utcnow
from searchlite.errors import ImageDecodeError, LibraryError
from searchlite.imaging import load_image
from searchlite.indexer.exclude import excluder_for
from searchlite.indexer.scan import (
    RAW_PAIRS,
    SCAN_CHUNK,
    ScanTable,
    Skipped,
    normalise_root,
    resolve_root,
    walk,
    walk_uri,
)
from searchlite.locking import library_lock
from searchlite.models.base import DraftTarget, Embedder, InputSize, input_size_of, stack_inputs
from searchlite.phash import phash_of  # round4-search
from searchlite.store import VectorWriter
from searchlite.store.builder import SegmentBuilder

log = logging.getLogger(__name__)

#: Fold the exact tail into index segments at most this often during a run (seconds).
CHECKPOINT_SECONDS = 60.0


@dataclass
class IndexStats:
    """What one index run did."""

    added: int = 0
    updated: int = 0
    moved: int = 0
    removed: int = 0
    failed: int = 0
    unchanged: int = 0
    skipped: int = 0  # videos
    #: files left out for their extension (no decoder handles it): lower-case extension -> count, videos included
    skipped_by_extension: dict[str, int] = field(default_factory=dict)
    #: files found under a second path (a link, a hard link, a folder reached twice): one photo, not indexed again
    aliases: int = 0
    seconds: float = 0.0
    index: dict[str, str] = field(default_factory=dict)
    stages: dict[str, float | int | str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Work:
    """One file that needs decoding (and maybe embedding)."""

    image_id: int
    path: str  # absolute path or URI
    state: str  # new | changed | same
    old_sha: str | None
    size: int
    mtime_ns: int
    missing: list[int]  # positions in the model list that lack a vector for this image


@dataclass
class Done:
    """What decoding (and, in the Ray engine, embedding) found for one Work item."""

    work: Work
    sha: str | None = None
    error: str | None = None
    moved_from: int | None = None
    same_content: bool = False
    meta: dict | None = None
    pixels: dict[int, np.ndarray] | None = None  # model position -> preprocessed input (local engine)
    vectors: dict[int, np.ndarray] | None = None  # model position -> embedding (Ray engine)
    text: Any = None  # round4-text: the text stage's TextJob (metadata read, OCR queued)


def read_source(path: str) -> bytes:
    """The bytes of a local file or of a URI (file://, s3://, gs://... through pyarrow.fs)."""
    if "://" not in path:
        return Path(path).read_bytes()
    from pyarrow import fs

    filesystem, inner = fs.FileSystem.from_uri(path)
    with filesystem.open_input_stream(inner) as stream:
        return stream.read()


def decode(work: Work, preprocessors: Sequence[Callable], sizes: Sequence[InputSize | tuple[int, int]],
           vanished: dict[str, int], draft: bool) -> Done:
    """Read once, hash, decode, preprocess for each model that needs it (any thread or process):
    a new file whose hash matches a vanished image is that image moved; a changed file with the
    same hash needs only the models that lack a vector."""
    try:
        data = read_source(work.path)
    except (FileNotFoundError, PermissionError) as exc:  # the decode vocabulary: missing, permission denied
        from searchlite.decode_reasons import classify

        return Done(work, error=str(classify(exc)))
    except OSError as exc:
        return Done(work, error=f"cannot read: {exc.strerror or exc}")
    if not data:
        return Done(work, error="empty: the file has 0 bytes")
    sha = hashlib.sha256(data).hexdigest()
    same = work.old_sha == sha
    moved_from = vanished.get(sha) if work.state == "new" else None
    if moved_from is not None:
        return Done(work, sha=sha, moved_from=moved_from)
    # same content: only the models lacking a vector; new or changed content: every model
    needs = work.missing if same or work.state == "same" else list(range(len(preprocessors)))
    if not needs:
        return Done(work, sha=sha, same_content=same)
    try:
        target = DraftTarget(tuple(s if isinstance(s, InputSize) else InputSize(*s) for s in (sizes[i] for i in needs)))
        loaded = load_image(data, target_size=target, draft=draft, mtime_ns=work.mtime_ns,
                            suffix=os.path.splitext(work.path)[1])
        pixels = {i: preprocessors[i](loaded.image) for i in needs}
    except ImageDecodeError as exc:
        return Done(work, sha=sha, error=str(exc))
    except Exception as exc:  # noqa: BLE001 - one bad image must never stop a run
        return Done(work, sha=sha, error=f"cannot preprocess: {type(exc).__name__}: {exc}")
    meta = loaded.metadata()
    meta["phash"] = phash_of(loaded.image)  # round4-search: the duplicate hash, from this decode
    return Done(work, sha=sha, meta=meta, pixels=pixels, same_content=same)


def record_precision(s, model_ref: int, precision: str, count: int) -> None:
    """Add ``count`` vectors written in ``precision`` to the model's counts (``models.precision``,
    JSON), inside the caller's transaction."""
    stored = s.execute(select(ModelRow.precision).where(ModelRow.id == model_ref)).scalar()
    counts = json.loads(stored) if stored else {}
    counts[precision] = int(counts.get(precision, 0)) + int(count)
    s.execute(update(ModelRow).where(ModelRow.id == model_ref).values(precision=json.dumps(counts, sort_keys=True)))


class _InputSizes(Sequence):
    """The models' input sizes, each read when asked for (reading one loads a lazy model)."""

    def __init__(self, embedders: Sequence[Embedder]) -> None:
        self.embedders = embedders

    def __len__(self) -> int:
        return len(self.embedders)

    def __getitem__(self, i):  # type: ignore[override]
        return input_size_of(self.embedders[i])


class Indexer:
    """Runs one incremental index pass of some roots with some models."""

    def __init__(self, catalog: Catalog, models: Sequence[tuple[ModelRow, Embedder]], *, batch_size: int = 32,
                 raw_pairs: str = "prefer-jpeg", workers: int | None = None, draft: bool = True, include_hidden: bool = False,
                 checkpoint_seconds: float = CHECKPOINT_SECONDS, excludes: Sequence[str] | None = None,
                 default_excludes: bool | None = None, text: Any = None) -> None:
        self.catalog = catalog
        #: round4-text: the text stage (indexer/textstage.py: names, metadata, places, OCR); None: no text
        self.text = text
        #: exclusion rules given to this run (None: the ones stored with each root), see indexer/exclude.py
        self.excludes = list(excludes) if excludes is not None else None
        self.default_excludes = default_excludes
        self.models = [m for m, _ in models]
        self.embedders = [e for _, e in models]
        self.batch_size = batch_size
        self.workers = workers or max(1, min(8, os.cpu_count() or 1))
        self.draft = draft
        self.include_hidden = include_hidden
        if raw_pairs not in RAW_PAIRS:
            raise LibraryError(f"--raw-pairs must be one of {', '.join(RAW_PAIRS)}")
        self.raw_pairs = raw_pairs
        self.checkpoint_seconds = checkpoint_seconds
        self.stats = IndexStats()
        self._vanished: dict[str, int] = {}
        self._claimed: set[int] = set()  # vanished image ids taken by a moved file this run

    # -- what needs work ---------------------------------------------------------------------------
    def _work_items(self, scan: ScanTable) -> Iterator[Work]:
        roots = self.catalog.roots()
        last_id = 0
        while True:
            rows = scan.work(last_id, SCAN_CHUNK)
            if not rows:
                return
            have: dict[int, set[int]] = {}
            with self.catalog.Session() as s:
                for part in chunked(r.image_id for r in rows):  # SCAN_CHUNK > 999 parameters
                    for image_id, model_ref in s.execute(select(VectorRow.image_id, VectorRow.model_ref).where(
                            VectorRow.image_id.in_(part))).tuples():
                        have.setdefault(image_id, set()).add(model_ref)
                text_due = self.text.due(s, rows, roots) if self.text else set()  # round4-text
            for r in rows:
                missing = [i for i, m in enumerate(self.models) if m.id not in have.get(r.image_id, set())]
                if r.state == "same" and not missing and r.image_id not in text_due:
                    continue
                yield Work(r.image_id, join_path(roots[r.root_id], r.relpath), r.state, r.sha256, r.size,
                           r.mtime_ns, missing)
            last_id = rows[-1].image_id

    def _decode(self, work: Work, vanished: dict[str, int] | None = None) -> Done:
        """Runs in a decode thread; whatever goes wrong is that file's error, never the run's."""
        try:
            # resolved per model only when a file needs it: a lazy model loads for pixels, not for a hash
            done = decode(work, [lambda image, e=e: e.preprocess(image) for e in self.embedders],
                          _InputSizes(self.embedders), self._vanished if vanished is None else vanished, self.draft)
        except Exception as exc:  # noqa: BLE001 - one bad file must never stop a run
            return Done(work, error=f"cannot read: {type(exc).__name__}: {exc}")
        if self.text is not None:  # round4-text: metadata text here, OCR queued on its own thread
            try:
                self.text.prepare(done)
            except Exception as exc:  # noqa: BLE001 - text is extra: the photo is still indexed
                log.warning("no text for %s: %s", work.path, exc)
        return done

    def _claim(self, d: Done) -> Done:
        """A vanished image is claimed by one moved file only. Decoding runs ahead, so a second new
        file with the same content (a rename plus a copy) saw the same vanished id: it is decoded
        again as the new image it is."""
        if d.moved_from is None:
            return d
        if d.moved_from not in self._claimed:
            self._claimed.add(d.moved_from)
            return d
        return self._decode(d.work, vanished={})

    # -- embed + commit ------------------------------------------------------------------------------
    def _commit(self, batch: list[Done], writer: VectorWriter) -> None:
        """Embed what needs it, append the vectors (fsynced), then one catalog transaction."""
        batch = [self._claim(d) for d in batch]
        staged: dict[int, list[tuple[int, int]]] = {}  # image id -> [(model ref, store row)]
        made: dict[int, tuple[str, int]] = {}  # model ref -> (precision, vectors written)
        for i, emb in enumerate(self.embedders):
            members = [d for d in batch if d.pixels and i in d.pixels]
            vectors = [emb.embed_pixels(stack_inputs([d.pixels[i] for d in members]))] if members else []
            ready = [d for d in batch if d.vectors and i in d.vectors]
            members += ready
            vectors += [np.stack([d.vectors[i] for d in ready])] if ready else []
            if members:
                rows = writer.append(self.models[i].id, np.concatenate(vectors))
                for d, row in zip(members, rows):
                    staged.setdefault(d.work.image_id, []).append((self.models[i].id, row))
                # Ray vectors: the precision this process resolved for the same request (same policy)
                made[self.models[i].id] = (getattr(emb, "precision", "fp32"), len(members))
        now = utcnow()
        roots = self.catalog.roots() if self.text is not None else {}  # round4-text
        if self.text is not None:
            self.text.wait(batch)
        with writer.transaction() as s:
            for d in batch:
                row = self._apply(s, d, staged.get(d.work.image_id, []), now)
                if self.text is not None and row is not None:  # round4-text: same transaction as the row
                    self.text.apply(s, row, d, roots)
            for model_ref, (precision, count) in made.items():
                record_precision(s, model_ref, precision, count)

    def _apply(self, s, d: Done, vectors: list[tuple[int, int]], now) -> ImageRow | None:
        """Apply one decoded file to its catalog row; returns the row that now holds the file (a move: the old one)."""
        row = s.get(ImageRow, d.work.image_id)
        if row is None:
            return None
        work = d.work
        if d.error:
            row.status, row.error, row.sha256 = "error", d.error, d.sha
            row.size, row.mtime_ns = work.size, work.mtime_ns
            s.execute(delete(VectorRow).where(VectorRow.image_id == row.id))
            self.stats.failed += 1
            return row
        if d.moved_from is not None:
            old = s.get(ImageRow, d.moved_from)
            self._vanished.pop(d.sha, None)
            if old is not None:
                root_id, relpath, identity = row.root_id, row.relpath, (row.dev, row.inode)
                s.delete(row)
                s.flush()
                old.root_id, old.relpath, old.size, old.mtime_ns = root_id, relpath, work.size, work.mtime_ns
                old.dev, old.inode = identity
                self.stats.moved += 1
                return old
        if work.state == "changed" and not d.same_content:
            # new content: retire every model's old vector in the same transaction as the new ones
            s.execute(delete(VectorRow).where(VectorRow.image_id == row.id))
            self.stats.updated += 1
        elif work.state == "changed":
            self.stats.unchanged += 1  # touched, same bytes: nothing to re-embed
        elif work.state == "new":
            self.stats.added += 1
        row.sha256, row.size, row.mtime_ns = d.sha, work.size, work.mtime_ns
        if d.meta:
            for key, value in d.meta.items():
                setattr(row, key, value)
        row.status, row.error, row.indexed_at = "ok", None, now
        if vectors:
            s.execute(insert(VectorRow), [dict(model_ref=m, store_row=r, image_id=row.id) for m, r in vectors])
        return row

    # -- the run -------------------------------------------------------------------------------------
    def run(self, roots: Sequence[str | Path], progress: Callable[[int, int], None] | None = None) -> IndexStats:
        """Index ``roots`` (folders or URIs); ``progress(done, total)`` is called as images are processed."""
        folders = [normalise_root(r) for r in roots]
        with library_lock(self.catalog.folder, "index"):
            return self._run(folders, progress)

    def _run(self, roots: list[str], progress: Callable[[int, int], None] | None) -> IndexStats:
        start = time.perf_counter()
        with self.catalog.WriteSession.begin() as s:
            run_row = RunRow()
            s.add(run_row)
            s.flush()
            run_id = run_row.id
        writer = VectorWriter(self.catalog, self.models)
        self._before_scan(writer)
        scan = ScanTable(self.catalog)
        try:
            scanned = []
            for root in roots:
                carried: list[str] = []  # the rules of child roots this folder adopts, re-anchored
                root_id, prefix = resolve_root(self.catalog, root, carried)
                skipped = Skipped()
                lister = walk_uri if "://" in root else walk
                rules = {} if "://" in root else {"library": self.catalog.folder, "exclude": excluder_for(
                    self.catalog, root_id, self.catalog.roots()[root_id], self._patterns(root_id, prefix, carried),
                    self.default_excludes)}
                entries = lister(Path(root) if "://" not in root else root, self.include_hidden, self.raw_pairs,
                                 skipped, **rules)
                while chunk := [e for _, e in zip(range(SCAN_CHUNK), entries)]:
                    scan.add(root_id, [replace(e, relpath=prefix + e.relpath,
                                               companion=prefix + e.companion if e.companion else None)
                                       for e in chunk])
                scanned.append((root_id, prefix))
                self.stats.skipped += skipped.videos
                for ext, n in skipped.by_extension.items():
                    self.stats.skipped_by_extension[ext] = self.stats.skipped_by_extension.get(ext, 0) + n
            self.stats.unchanged = scan.unchanged
            self.stats.aliases = scan.aliases
            self._vanished = scan.vanished(scanned)
            total = scan.count("new") + scan.count("changed")
            self._embed_all(scan, writer, total, progress)
            gone = scan.sweep(scanned)
            self.stats.removed += len(gone)
        finally:
            scan.close()
            if self.text is not None:  # round4-text
                self.text.close()
                self.stats.stages.update(self.text.stats())
        self._maintain(writer, final=True)
        self.catalog.optimize()
        self.stats.seconds = round(time.perf_counter() - start, 3)
        with self.catalog.WriteSession.begin() as s:
            row = s.get(RunRow, run_id)
            row.finished_at = utcnow()
            row.stats = json.dumps(self.stats.as_dict())
        return self.stats

    def _patterns(self, root_id: int, prefix: str, carried: list[str]) -> list[str] | None:
        """The exclusion patterns this run gives a root (None: its stored ones). Patterns given for
        a folder inside a root are re-anchored to the root and added to its stored ones; rules
        carried over from adopted child roots are kept beside the patterns given."""
        if self.excludes is None:
            return None
        given = [p for p in self.excludes if p.strip()]
        if not prefix:
            return given + [r for r in carried if r not in given] if given else []  # `--exclude ''` clears
        if not given:
            return None  # `--exclude ''` for a sub-folder: nothing to clear there
        from searchlite.catalog import Root
        from searchlite.indexer.exclude import parse_stored, reanchor

        with self.catalog.Session() as s:
            stored = parse_stored(s.get(Root, root_id).excludes)
        return stored + [r for r in reanchor(given, prefix) if r not in stored]

    def _before_scan(self, writer: VectorWriter) -> None:
        """A hook for engines with work left over from an interrupted run (nothing locally)."""

    def _embed_all(self, scan: ScanTable, writer: VectorWriter, total: int,
                   progress: Callable[[int, int], None] | None) -> None:
        done = 0
        last_checkpoint = time.monotonic()
        window = self.workers * 4 + self.batch_size
        with ThreadPoolExecutor(self.workers, thread_name_prefix="decode") as pool:
            pending: deque[Future] = deque()
            items = self._work_items(scan)
            batch: list[Done] = []
            exhausted = False
            while pending or not exhausted:
                while not exhausted and len(pending) < window:
                    item = next(items, None)
                    if item is None:
                        exhausted = True
                    else:
                        pending.append(pool.submit(self._decode, item))
                if pending:
                    batch.append(pending.popleft().result())
                if batch and (len(batch) >= self.batch_size or (exhausted and not pending)):
                    self._commit(batch, writer)
                    done += len(batch)
                    batch = []
                    if progress:
                        progress(done, max(total, done))
                    if time.monotonic() - last_checkpoint > self.checkpoint_seconds:
                        self._maintain(writer, final=False)
                        last_checkpoint = time.monotonic()

    def _maintain(self, writer: VectorWriter, final: bool) -> None:
        for model in self.models:
            fresh = self.catalog.model(model.id)
            builder = SegmentBuilder(self.catalog, fresh, writer.stores[model.id])
            self.stats.index[fresh.model_id] = builder.maintain(final=final)


__all__ = ["IndexStats", "Indexer"]
