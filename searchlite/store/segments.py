"""Searching one model's vectors: immutable FAISS segments over store-row ranges plus an exact tail.

A model's index is a list of segments (``index_segments`` in the catalog), each a FAISS file over
store rows [row_lo, row_hi), opened memory-mapped; rows committed after the last segment (the
tail) are searched exactly, straight from the memory-mapped vector store. So a reader always
answers from the last committed state, an index run never rewrites a big file to make new images
searchable, and a one-shot query touches only the pages it needs.

Deleted vectors are tombstoned rows: rejected inside FAISS by an ``IDSelector`` and masked in the
exact tail. Filters arrive as the exact set of matching rows (from SQL): a small set is scored
exactly from the store, a large one becomes an ``IDSelectorBitmap`` inside the ANN search.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from searchlite.catalog import Catalog, SegmentRow, Snapshot
from searchlite.errors import LibraryError
from searchlite.store.ranking import RankingCache
from searchlite.store.vectorstore import VectorStore
from searchlite.vectors import SearchParams, VectorIndex, bitmap_selector, excluding_selector, rescored

log = logging.getLogger(__name__)

#: A filter matching at most this many images is answered by exact scoring of exactly those images.
EXACT_FILTER_MAX = 200_000
#: Candidates per wanted result from compressed segments, re-scored with the exact stored vectors.
REFINE = {"ivfpq": 10, "ivf": 4, "hnsw": 4}


def model_folder(catalog: Catalog, model_ref: int) -> Path:
    return catalog.folder / "vectors" / str(model_ref)


def top_k(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best (score desc, row asc) of parallel arrays: deterministic under ties."""
    if len(scores) > k:
        keep = np.argpartition(-scores, k - 1)[:k]
        # argpartition may cut a tie group: take every row scoring at least the k-th score
        kth = scores[keep].min()
        keep = np.flatnonzero(scores >= kth)
        scores, rows = scores[keep], rows[keep]
    order = np.lexsort((rows, -scores))[:k]
    return scores[order], rows[order]


class ModelIndex:
    """A process's searchable view of one model; :meth:`refresh` follows the catalog."""

    def __init__(self, catalog: Catalog, model_ref: int, dim: int, ef_search: int = 128) -> None:
        self.catalog = catalog
        self.model_ref = model_ref
        self.dim = dim
        self.folder = model_folder(catalog, model_ref)
        self.params = SearchParams(ef_search=ef_search)
        self.version: tuple | None = None
        self.snap: Snapshot | None = None
        self.segments: list[tuple[SegmentRow, VectorIndex]] = []
        self.store = VectorStore(self.folder, dim, 0)
        self._open: dict[str, VectorIndex] = {}
        self._dead_selectors: dict[str, tuple[Any, Any]] = {}
        self.rankings = RankingCache()  # pages of a query read its kept ranking (store/ranking.py)

    def refresh(self) -> ModelIndex:
        """Load what changed since the last call (new segments, tombstones, committed rows)."""
        with self.reading():
            return self

    @contextlib.contextmanager
    def reading(self) -> Iterator[Session]:
        """One catalog read transaction in which this index is exactly the catalog's state: the
        index is caught up inside it, and whatever a search reads from SQL in it (the filter's
        rows, exclusions, the result rows) belongs to the same snapshot as the vectors searched,
        however an index run commits meanwhile (SQLite WAL: a reader keeps its snapshot)."""
        for _ in range(10):
            with self.catalog.Session() as s:
                try:
                    self._catch_up(s)
                except FileNotFoundError:
                    continue  # a compaction replaced a file between our catalog read and open: read again
                yield s
                return
        raise LibraryError("the index keeps changing under this reader; try again")

    def _catch_up(self, s: Session) -> None:
        version = self.catalog.version(self.model_ref, s)
        if version == self.version:
            return
        snap = self.catalog.snapshot(self.model_ref, s)
        segments = [(seg, self._segment(seg)) for seg in snap.segments]
        self.snap, self.segments, self.version = snap, segments, version
        self._open = {seg.name: index for seg, index in segments}
        self._dead_selectors = {}
        self.rankings.clear()  # keyed by version too: this only frees the old state's rankings early
        if snap.store_rows < self.store.committed:
            self.store = VectorStore(self.folder, self.dim, snap.store_rows)  # store was compacted
        self.store.committed = snap.store_rows

    def _segment(self, seg: SegmentRow) -> VectorIndex:
        index = self._open.get(seg.name)
        if index is None:
            index = VectorIndex.load(self.folder / seg.name, seg.factory, mmap=True)
        return index

    @property
    def covered(self) -> int:
        return max((seg.row_hi for seg, _ in self.segments), default=0)

    @property
    def live(self) -> int:
        return self.snap.live if self.snap else 0

    def describe(self) -> str:
        """e.g. 'IDMap,HNSW32 + 2 deltas + 1204 exact' or 'exact (flat)'."""
        if not self.segments:
            return "exact (flat)"
        main = self.segments[0][0].factory
        deltas = len(self.segments) - 1
        tail = self.store.committed - self.covered
        return main + (f" + {deltas} delta{'s' * (deltas != 1)}" if deltas else "") + (f" + {tail} exact" if tail else "")

    # -- search ----------------------------------------------------------------------------------
    def is_exact(self, allowed: np.ndarray | None = None) -> bool:
        """Whether :meth:`search` with this filter is exact (every score computed, ranked by
        (score desc, row asc)): a filter small enough to be scored exactly, or no segment other
        than flat ones in front of the exact tail."""
        if allowed is not None and len(allowed) <= EXACT_FILTER_MAX:
            return True
        return all(seg.kind == "flat" and not rescored(seg.factory) for seg, _ in self.segments)

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None,
               exclude: np.ndarray | None = None, widen: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, rows) for one query vector. ``allowed``: sorted live rows a filter
        accepts (None: every live row). ``exclude``: rows to leave out (e.g. the query image).
        ``widen``: efSearch / nprobe grow by this factor (the deeper windows of a ranking)."""
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(-1)
        dead = self.snap.tombstones if self.snap is not None else np.zeros(0, np.int64)
        if exclude is not None and len(exclude):
            exclude = np.unique(np.asarray(exclude, dtype=np.int64))
            if allowed is not None:
                allowed = np.setdiff1d(allowed, exclude, assume_unique=True)
            dead = np.union1d(dead, exclude)
        if allowed is not None and len(allowed) <= EXACT_FILTER_MAX:
            return self._exact_rows(q, k, allowed)
        found_scores, found_rows = [], []
        s, r = self._exact_range(q, k, self.covered, self.store.committed, dead, allowed)
        found_scores.append(s)
        found_rows.append(r)
        params = SearchParams(ef_search=self.params.ef_search, nprobe=self.params.nprobe, widen=widen)
        for seg, index in self.segments:
            s, r = self._search_segment(seg, index, q, k, dead, allowed, exclude, params)
            found_scores.append(s)
            found_rows.append(r)
        return top_k(np.concatenate(found_scores), np.concatenate(found_rows), k)

    def _search_segment(self, seg: SegmentRow, index: VectorIndex, q: np.ndarray, k: int, dead: np.ndarray,
                        allowed: np.ndarray | None, exclude: np.ndarray | None,
                        params: SearchParams | None = None) -> tuple[np.ndarray, np.ndarray]:
        keep: Any = None
        selectivity = 1.0
        if allowed is not None:
            inside = allowed[(allowed >= seg.row_lo) & (allowed < seg.row_hi)]
            if not len(inside):
                return np.zeros(0, np.float32), np.zeros(0, np.int64)
            selector, keep = bitmap_selector(inside, seg.row_hi)
            selectivity = len(inside) / max(seg.count, 1)
        else:
            selector = self._dead_selector(seg, dead, exclude)
        exact = not rescored(seg.factory)
        wanted = k if exact else k * REFINE.get(seg.kind, 4)
        scores, rows = index.search(q[None, :], wanted, params or self.params, selector, selectivity)
        del keep
        rows = rows[0]
        valid = rows >= 0
        scores, rows = scores[0][valid], rows[valid]
        if not exact and len(rows):
            scores = self.store.dot(rows, q)  # compressed scores are approximate: re-score exactly
        return scores.astype(np.float32), rows.astype(np.int64)

    def _dead_selector(self, seg: SegmentRow, dead: np.ndarray, exclude: np.ndarray | None) -> Any:
        """A selector rejecting the segment's dead rows (``dead`` already holds ``exclude``);
        cached per snapshot unless the query adds its own exclusions."""
        inside = dead[(dead >= seg.row_lo) & (dead < seg.row_hi)]
        if not len(inside):
            return None
        if exclude is None or not len(exclude):
            cached = self._dead_selectors.get(seg.name)
            if cached is None:
                cached = self._dead_selectors[seg.name] = excluding_selector(inside)
            return cached[0]
        selector, self._keep = excluding_selector(inside)  # alive until the next search
        return selector

    def exact_ranking(self, query: np.ndarray, allowed: np.ndarray | None = None,
                      exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Every live row (of ``allowed``, less ``exclude``) scored exactly from the store and
        ranked by (score desc, row asc): the end of a ranking the approximate index cannot reach."""
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(-1)
        dead = self.snap.tombstones if self.snap is not None else np.zeros(0, np.int64)
        if exclude is not None and len(exclude):
            dead = np.union1d(dead, np.asarray(exclude, dtype=np.int64))
        if allowed is not None:
            rows = np.setdiff1d(allowed, dead, assume_unique=False)
            return top_k(self.store.dot(rows, q), rows, len(rows))
        return self._exact_range(q, max(self.store.committed, 1), 0, self.store.committed, dead, None)

    def _exact_range(self, q: np.ndarray, k: int, lo: int, hi: int, dead: np.ndarray,
                     allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        best_s, best_r = [np.zeros(0, np.float32)], [np.zeros(0, np.int64)]
        for start, block in self.store.view(lo, hi):
            scores = block @ q
            rows = np.arange(start, start + len(block), dtype=np.int64)
            mask = np.ones(len(block), dtype=bool)
            d = dead[(dead >= start) & (dead < start + len(block))]
            mask[d - start] = False
            if allowed is not None:
                a = allowed[(allowed >= start) & (allowed < start + len(block))]
                only = np.zeros(len(block), dtype=bool)
                only[a - start] = True
                mask &= only
            s, r = top_k(scores[mask], rows[mask], k)
            best_s.append(s)
            best_r.append(r)
        return top_k(np.concatenate(best_s), np.concatenate(best_r), k)

    def _exact_rows(self, q: np.ndarray, k: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return top_k(self.store.dot(rows, q), rows, k)  # rows <= EXACT_FILTER_MAX: 800 KB of scores
