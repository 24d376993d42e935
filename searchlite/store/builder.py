"""Keeping one model's FAISS segments in step with its vector store (writers, library lock held).

Policy (Lucene/Milvus-style: immutable segments, small fresh ones, merged now and then):
- 'flat' (auto below 100k vectors): no FAISS file; the vector store is searched exactly.
- otherwise a *main* segment over rows [0, a) and up to MAX_DELTAS HNSW *deltas* over later ranges;
  rows after the last segment are the exact tail. A run folds the tail into a delta once it passes
  TAIL_MAX rows (TAIL_KEEP at the end of a run), so adding n images costs O(n) index work and I/O.
- deltas are merged into the main segment when they grow past a fraction of it (HNSW: rebuilt, so
  the total rebuild work stays a constant factor of the library, as in a growing array; IVF: their
  vectors are added to the trained main index, no retraining until the library quadruples);
- a segment whose tombstoned rows pass STALE_FRACTION is rebuilt without them (compaction).
Builds stream vectors from the store in chunks (memory: the index itself plus one chunk); IVF
kinds train on a sample of 64 vectors per list. Every new file is fsynced and renamed before the
catalog transaction that lists it; files the catalog no longer lists are removed afterwards.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator

import numpy as np
from sqlalchemy import delete

from searchlite.catalog import Catalog, ModelRow, SegmentRow, Snapshot, Tombstone
from searchlite.faults import crashpoint
from searchlite.store.segments import model_folder
from searchlite.store.vectorstore import VectorStore
from searchlite.vectors import VectorIndex, choose_type, kind_of, training_size

log = logging.getLogger(__name__)

TAIL_MAX = 50_000
TAIL_KEEP = 20_000
MAX_DELTAS = 8
HNSW_MERGE_FRACTION = 0.5
IVF_MERGE_FRACTION = 0.05
STALE_FRACTION = 0.2
RETRAIN_GROWTH = 4.0


class SegmentBuilder:
    """Builds, merges and compacts the FAISS segments of one model."""

    def __init__(self, catalog: Catalog, model: ModelRow, store: VectorStore, seed: int = 0) -> None:
        self.catalog = catalog
        self.model = model
        self.store = store
        self.folder = model_folder(catalog, model.id)
        self.seed = seed

    # -- policy ------------------------------------------------------------------------------------
    def maintain(self, final: bool = True, kind: str | None = None, rebuild: bool = False) -> str:
        """Bring the segments up to the store; returns a description of what serves queries."""
        self.remove_orphans()
        snap = self.catalog.snapshot(self.model.id)
        requested = kind or self.model.index_type
        target = choose_type(snap.live) if requested == "auto" else requested
        segments = list(snap.segments)
        if target == "flat":
            if segments:
                self._commit([], segments, clear=(0, 0))
            return "exact (flat)"
        main = segments[0] if segments else None
        dead_in = {seg.name: self._dead_count(snap, seg) for seg in segments}
        if (rebuild or main is None or kind_of(main.factory) != target or main.row_lo != 0
                or (target in ("ivf", "ivfpq") and snap.live > RETRAIN_GROWTH * main.trained_count)
                or dead_in[main.name] > STALE_FRACTION * max(main.count, 1)):
            self._build_main(target, snap.store_rows, segments)
            return self._summary()
        deltas = segments[1:]
        covered = max(seg.row_hi for seg in segments)
        if snap.store_rows - covered > (TAIL_KEEP if final else TAIL_MAX):
            delta = self._build(kind="hnsw", lo=covered, hi=snap.store_rows)
            if delta is not None:
                self._commit([delta], [], clear=(covered, snap.store_rows))
                deltas.append(delta)
        stale = [d for d in deltas if dead_in.get(d.name, 0) > STALE_FRACTION * max(d.count, 1)]
        fraction = HNSW_MERGE_FRACTION if target == "hnsw" else IVF_MERGE_FRACTION
        if deltas and (len(deltas) > MAX_DELTAS or stale or sum(d.count for d in deltas) > fraction * main.count):
            self._merge(main, deltas)
        return self._summary()

    def _summary(self) -> str:
        snap = self.catalog.snapshot(self.model.id)
        if not snap.segments:
            return "exact (flat)"
        deltas = len(snap.segments) - 1
        return snap.segments[0].factory + (f" + {deltas} delta{'s' * (deltas != 1)}" if deltas else "")

    @staticmethod
    def _dead_count(snap: Snapshot, seg: SegmentRow) -> int:
        dead = snap.tombstones
        return int(np.count_nonzero((dead >= seg.row_lo) & (dead < seg.row_hi)))

    # -- building --------------------------------------------------------------------------------
    def live_vectors(self, lo: int, hi: int, chunk: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(rows, vectors) of the live rows in [lo, hi), streamed from the store in chunks."""
        live_iter = self.catalog.live_rows(self.model.id, lo, hi)
        pending = np.zeros(0, np.int64)
        for start, block in self.store.read_chunks(lo, hi, chunk):
            end = start + len(block)
            while not len(pending) or pending[-1] < end - 1:
                nxt = next(live_iter, None)
                if nxt is None:
                    break
                pending = np.concatenate([pending, nxt])
            take = pending[pending < end]
            pending = pending[len(take):]
            if len(take):
                yield take, block[take - start]

    def _sample(self, lo: int, hi: int, size: int) -> np.ndarray:
        rows = np.concatenate(list(self.catalog.live_rows(self.model.id, lo, hi)) or [np.zeros(0, np.int64)])
        rng = np.random.default_rng(self.seed)
        if len(rows) > size:
            rows = np.sort(rng.choice(rows, size, replace=False))
        return self.store.read_rows(rows)

    def _build(self, kind: str, lo: int, hi: int) -> SegmentRow | None:
        """A segment over the live rows of [lo, hi); None when none is live."""
        live = self.catalog.count_vectors_between(self.model.id, lo, hi)
        if live == 0:
            return None
        index = VectorIndex.empty(kind, live, self.model.dim)
        trained = live
        if not index.is_trained:
            sample = self._sample(lo, hi, training_size(index.nlist, live))
            index.train(sample)
            del sample  # before the codes grow
        for rows, vectors in self.live_vectors(lo, hi):
            index.add(rows, vectors)
        name = f"seg-{lo:012d}-{hi:012d}-{secrets.token_hex(3)}.faiss"
        index.save(self.folder / name)
        return SegmentRow(model_ref=self.model.id, name=name, kind=index.kind, factory=index.factory, row_lo=lo,
                          row_hi=hi, count=index.ntotal, trained_count=trained)

    def _build_main(self, kind: str, hi: int, replaced: list[SegmentRow]) -> None:
        main = self._build(kind, 0, hi)
        self._commit([main] if main else [], replaced, clear=(0, hi))

    def _merge(self, main: SegmentRow, deltas: list[SegmentRow]) -> None:
        hi = max(d.row_hi for d in deltas)
        if main.kind == "hnsw":
            self._build_main("hnsw", hi, [main, *deltas])  # graphs do not merge: rebuild from the store
            return
        # IVF: the trained main index, minus its dead rows, plus the deltas' live vectors
        index = VectorIndex.load(self.folder / main.name, main.factory, mmap=False)
        snap = self.catalog.snapshot(self.model.id)
        index.remove(snap.tombstones[(snap.tombstones >= main.row_lo) & (snap.tombstones < main.row_hi)])
        for rows, vectors in self.live_vectors(main.row_hi, hi):
            index.add(rows, vectors)
        name = f"seg-{0:012d}-{hi:012d}-{secrets.token_hex(3)}.faiss"
        index.save(self.folder / name)
        merged = SegmentRow(model_ref=self.model.id, name=name, kind=index.kind, factory=index.factory, row_lo=0,
                            row_hi=hi, count=index.ntotal, trained_count=main.trained_count)
        self._commit([merged], [main, *deltas], clear=(0, hi))

    def _commit(self, added: list[SegmentRow], removed: list[SegmentRow], clear: tuple[int, int]) -> None:
        """List the new files and drop the replaced ones in one transaction, with the tombstones
        of the rows the new segments were built without; then delete the replaced files."""
        crashpoint("segment-renamed")
        with self.catalog.WriteSession.begin() as s:
            for seg in removed:
                s.execute(delete(SegmentRow).where(SegmentRow.model_ref == self.model.id, SegmentRow.name == seg.name))
            for seg in added:
                s.add(seg)
            lo, hi = clear
            if hi > lo:
                s.execute(delete(Tombstone).where(Tombstone.model_ref == self.model.id, Tombstone.store_row >= lo,
                                                  Tombstone.store_row < hi))
            s.flush()
            for seg in added:
                s.expunge(seg)
        crashpoint("segments-committed")
        for seg in removed:
            (self.folder / seg.name).unlink(missing_ok=True)

    def remove_orphans(self) -> None:
        """Delete segment files the catalog does not list and temp files a crash left behind."""
        if not self.folder.is_dir():
            return
        listed = {seg.name for seg in self.catalog.snapshot(self.model.id).segments}
        for path in self.folder.iterdir():
            if path.name.endswith(".tmp") or (path.suffix == ".faiss" and path.name not in listed):
                log.info("removing leftover %s", path.name)
                path.unlink(missing_ok=True)

