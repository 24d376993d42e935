"""Keeps each model's FAISS index in step with the vectors committed in the catalog.

Files: ``<library>/vectors/<model_ref>/index-g<generation>-s<seq>.faiss``. ``seq`` is the highest
embedding seq the file holds, so a reader adds whatever was committed after it (an index run in
progress, or one killed before it saved) and always answers from the last committed state. A new
generation is written atomically (temp file + rename); the previous one is kept for readers that
opened the folder a moment earlier.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from searchlite.catalog import Catalog, ModelRow
from searchlite.vectors import VectorIndex, choose_type, kind_of

log = logging.getLogger(__name__)

_NAME = re.compile(r"^index-g(\d+)-s(\d+)\.faiss$")
#: Rebuild an index whose type cannot remove ids once this share of it is stale.
STALE_REBUILD_FRACTION = 0.2


def _index_files(folder: Path) -> list[tuple[int, int, Path]]:
    if not folder.is_dir():
        return []
    out = []
    for p in folder.iterdir():
        m = _NAME.match(p.name)
        if m:
            out.append((int(m.group(1)), int(m.group(2)), p))
    return sorted(out)


class IndexStore:
    """The FAISS side of one model in one library."""

    def __init__(self, catalog: Catalog, model: ModelRow) -> None:
        self.catalog = catalog
        self.model = model
        self.folder = catalog.folder / "vectors" / str(model.id)

    def _build_all(self, kind: str) -> VectorIndex:
        chunks = list(self.catalog.iter_vectors(self.model.id))
        dim = self.model.dim
        ids = np.concatenate([c[0] for c in chunks]) if chunks else np.zeros(0, np.int64)
        vecs = np.concatenate([c[1] for c in chunks]) if chunks else np.zeros((0, dim), np.float32)
        if kind == "auto":
            kind = choose_type(len(ids))
        if kind in ("ivf", "ivfpq") and len(ids) == 0:
            kind = "flat"
        return VectorIndex.build(kind, dim, ids, vecs)

    def load(self, catch_up: bool = True, mmap: bool = True) -> tuple[VectorIndex, int]:
        """The current index and the seq it covers; built in memory when none was saved yet."""
        for _ in range(3):
            files = _index_files(self.folder)
            if not files:
                break
            _, seq, path = files[-1]
            behind = catch_up and self.catalog.max_seq(self.model.id) > seq
            try:
                index = VectorIndex.load(path, mmap=mmap and not behind)
            except (FileNotFoundError, RuntimeError):
                continue  # a writer replaced it between listing and opening: list again
            if behind:
                for ids, vecs, last in self.catalog.iter_vectors(self.model.id, after_seq=seq):
                    index.add(ids, vecs)
                    seq = last
            return index, seq
        seq = self.catalog.max_seq(self.model.id)
        return self._build_all(self.model.index_type), seq

    def sync(self, removed_ids: list[int] | None = None, rebuild: bool = False, kind: str | None = None) -> str:
        """Bring the saved index up to the catalog: add new vectors, drop deleted ids, rebuild when
        the type changes (explicitly or because 'auto' picks another at the new size), when too
        much of it is stale, or when it disagrees with the catalog. Returns the factory string."""
        requested = kind or self.model.index_type
        count = self.catalog.count_vectors(self.model.id)
        files = _index_files(self.folder)
        target = choose_type(count) if requested == "auto" else requested
        if (files and not rebuild and not removed_ids and requested == self.model.index_type
                and files[-1][1] == self.catalog.max_seq(self.model.id)
                and self.model.index_factory and kind_of(self.model.index_factory) == target):
            return self.model.index_factory  # nothing changed: do not rewrite a file that may be GBs
        index, seq, stale = None, 0, self.model.index_stale
        if files and not rebuild:
            index, seq = self.load(catch_up=True, mmap=False)
        if index is not None and removed_ids:
            if not index.remove(np.asarray(removed_ids, dtype=np.int64)):
                stale += len(removed_ids)
        if index is not None and (
            index.kind != target
            or index.ntotal - stale != count
            or (stale and stale > STALE_REBUILD_FRACTION * max(index.ntotal, 1))
        ):
            if index.ntotal - stale != count:
                log.info("index of %s disagrees with the catalog (%d - %d stale != %d); rebuilding",
                         self.model.model_id, index.ntotal, stale, count)
            index = None
        if index is None:
            index = self._build_all(target)
            seq, stale = self.catalog.max_seq(self.model.id), 0
        gen = (files[-1][0] + 1) if files else 1
        index.save(self.folder / f"index-g{gen}-s{seq}.faiss")
        for old_gen, _, path in files:
            if old_gen < gen - 1:
                path.unlink(missing_ok=True)
        with self.catalog.Session.begin() as s:
            row = s.get(ModelRow, self.model.id)
            row.index_factory, row.index_stale, row.index_type = index.factory, stale, requested
            row.index_file = f"index-g{gen}-s{seq}.faiss"
            row.index_seq = seq
        self.model.index_factory, self.model.index_stale, self.model.index_type = index.factory, stale, requested
        return index.factory
