"""FAISS indexes keyed by store row: choice by size, factory strings, training on a sample, atomic
save, memory-mapped load, and search with an ``IDSelector`` (filters, deletions).

Every index uses inner product over L2-normalised vectors (= cosine).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from searchlite.errors import LibraryError
from searchlite.faults import crashpoint

log = logging.getLogger(__name__)

INDEX_TYPES = ("auto", "flat", "hnsw", "ivf", "ivfpq")
#: Below this many vectors 'auto' searches exactly (no FAISS file: the vector store is the index).
FLAT_MAX = 100_000
#: IVF over 8-bit codes up to this size; above, IVF-PQ (96 bytes a vector at d=768: 10 GB at 100M).
#: Both are re-scored exactly from the store. IVF rather than HNSW by default: a one-shot query on
#: a memory-mapped IVF index touches a few inverted lists, an HNSW query pages in most of the graph
#: (measured at 1M: +15 MB vs +700 MB RSS), and IVF-SQ8 reached recall@10 1.000 at 1 ms there.
IVF_MAX = 5_000_000
#: Coarse quantizer size cap at which k-means and list assignment stay affordable on a few CPU cores.
NLIST_CAP = 4096
HNSW_M = 32
#: Queries per FAISS range search / k-NN batch of :meth:`VectorIndex.within`.
RANGE_CHUNK = 256
EF_CONSTRUCTION = 80


def choose_type(n: int) -> str:
    """The index type 'auto' picks for n vectors."""
    if n < FLAT_MAX:
        return "flat"
    return "ivf" if n < IVF_MAX else "ivfpq"


def nlist_for(n: int) -> int:
    """IVF lists: FAISS's 4*sqrt(n) guideline, at least 39 training points per list, and capped
    at max(NLIST_CAP, sqrt(n)) so training and assignment stay affordable on a CPU."""
    return max(1, min(int(4 * math.sqrt(n)), max(NLIST_CAP, int(math.sqrt(n))), n // 39 or 1))


#: Vectors used to train a scalar quantizer's per-dimension ranges.
SQ_TRAINING = 65_536


def training_size(nlist: int, n: int) -> int:
    """IVF: FAISS wants >= 39 points per list and uses at most 256: 64 per list is a good middle.
    Scalar quantizers (one list): enough points to see each dimension's range."""
    return min(n, 64 * nlist if nlist > 1 else SQ_TRAINING)


def rescored(factory: str) -> bool:
    """Whether an index holds compressed codes whose scores are re-computed from the exact
    stored vectors (HNSW over SQ8, IVF-PQ); the store already holds every vector in float32."""
    return ",SQ" in factory or ",PQ" in factory


def factory_string(kind: str, n: int, dim: int) -> str:
    """The ``faiss.index_factory`` string for an index type at a given size."""
    if kind == "flat":
        return "IDMap,Flat"
    if kind == "hnsw":
        # graph over 8-bit codes: a quarter of the bytes of float32 (which the store already holds),
        # candidates re-scored exactly; recall@10 unchanged on embedding-like data (measured)
        return f"IDMap,HNSW{HNSW_M},SQ8"
    if kind == "ivf":
        return f"IVF{nlist_for(n)},SQ8"
    if kind == "ivfpq":
        m = next(m for m in (dim // 8, dim // 4, dim // 2, dim, 1) if m and dim % m == 0)
        nbits = max(1, min(8, int(math.log2(max(n // 39, 2)))))  # >= 39 training points per PQ centroid
        return f"IVF{nlist_for(n)},PQ{m}x{nbits}"
    raise ValueError(f"unknown index type {kind!r}; choose one of {', '.join(INDEX_TYPES)}")


def kind_of(factory: str) -> str:
    """The index type ('flat', 'hnsw', 'ivf', 'ivfpq') of a factory string."""
    if "HNSW" in factory:
        return "hnsw"
    if "IVF" in factory:
        return "ivfpq" if "PQ" in factory else "ivf"
    return "flat"


def bitmap_selector(rows: np.ndarray, size: int) -> tuple[Any, np.ndarray]:
    """An ``IDSelectorBitmap`` accepting exactly ``rows`` (ids < size); keep the array alive."""
    import faiss

    mask = np.zeros(max(size, 1), dtype=bool)
    mask[rows] = True
    bits = np.packbits(mask, bitorder="little")
    return faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits)), bits


def excluding_selector(rows: np.ndarray) -> tuple[Any, Any]:
    """An ``IDSelector`` rejecting ``rows``; returns (selector, what must stay alive with it)."""
    import faiss

    rows = np.ascontiguousarray(rows, dtype=np.int64)
    batch = faiss.IDSelectorBatch(len(rows), faiss.swig_ptr(rows))
    return faiss.IDSelectorNot(batch), (batch, rows)


@dataclass
class SearchParams:
    ef_search: int = 128
    nprobe: int | None = None
    widen: float = 1.0  # efSearch and nprobe grow by this factor (deeper windows of a ranking)


class VectorIndex:
    """One FAISS index (a segment) whose ids are store rows."""

    def __init__(self, index: Any, factory: str) -> None:
        self.index = index
        self.factory = factory

    @classmethod
    def empty(cls, kind: str, n: int, dim: int) -> VectorIndex:
        """An untrained index of a type sized for n vectors."""
        import faiss

        factory = factory_string(kind, max(n, 1), dim)
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        if kind == "hnsw":
            faiss.downcast_index(index.index).hnsw.efConstruction = EF_CONSTRUCTION
        return cls(index, factory)

    @classmethod
    def build(cls, kind: str, dim: int, ids: np.ndarray, vectors: np.ndarray, seed: int = 0) -> VectorIndex:
        """Build (and train) an index over in-memory vectors (benchmarks and small sets)."""
        if kind == "auto":
            kind = choose_type(len(ids))
        out = cls.empty(kind, len(ids), dim)
        if not out.is_trained:
            rng = np.random.default_rng(seed)
            size = training_size(out.nlist, len(ids))
            out.train(vectors if size >= len(ids) else vectors[np.sort(rng.choice(len(ids), size, replace=False))])
        out.add(ids, vectors)
        return out

    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    @property
    def nlist(self) -> int:
        import faiss

        ivf = faiss.try_extract_index_ivf(self.index)
        return int(ivf.nlist) if ivf is not None else 1

    def train(self, sample: np.ndarray) -> None:
        import faiss

        if len(sample) == 0:
            raise LibraryError(f"cannot train a {self.kind} index without vectors")
        ivf = faiss.try_extract_index_ivf(self.index)
        if ivf is not None and len(sample) > 100_000:
            ivf.cp.niter = 10  # k-means converges in a few passes on this many points; 25 costs 2.5x
        self.index.train(np.ascontiguousarray(sample, dtype=np.float32))

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def kind(self) -> str:
        return kind_of(self.factory)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32),
                                    np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> int:
        """Remove ids (IVF only: HNSW graphs cannot drop nodes). Returns how many were removed."""
        import faiss

        if self.kind not in ("ivf", "ivfpq") or not len(ids):
            return 0
        rows = np.ascontiguousarray(ids, dtype=np.int64)
        return int(self.index.remove_ids(faiss.IDSelectorBatch(len(rows), faiss.swig_ptr(rows))))

    def search(self, queries: np.ndarray, k: int, params: SearchParams | None = None, selector: Any = None,
               selectivity: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query; missing slots have id -1. With a selector accepting a
        fraction ``selectivity`` of the vectors, efSearch / nprobe grow by 1/selectivity so a
        filtered search explores as many accepted vectors as an unfiltered one."""
        import faiss

        params = params or SearchParams()
        k = max(1, min(k, self.ntotal or 1))
        boost = max(params.widen, 1.0) / max(selectivity, 1e-6)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        try:
            if self.kind == "hnsw":
                ef = int(min(max(params.ef_search, k) * boost, 16384))
                p = faiss.SearchParametersHNSW(efSearch=max(ef, k), sel=selector) if selector is not None \
                    else faiss.SearchParametersHNSW(efSearch=max(int(min(params.ef_search * params.widen, 16384)), k))
                return self.index.search(queries, k, params=p)
            ivf = faiss.try_extract_index_ivf(self.index)
            if ivf is not None:
                base = params.nprobe or min(ivf.nlist, max(16, ivf.nlist // 256))
                nprobe = int(min(ivf.nlist, math.ceil(base * boost)))
                p = faiss.SearchParametersIVF(nprobe=nprobe, sel=selector) if selector is not None \
                    else faiss.SearchParametersIVF(nprobe=nprobe)
                return self.index.search(queries, k, params=p)
            p = faiss.SearchParameters(sel=selector) if selector is not None else None
            return self.index.search(queries, k, params=p)
        except RuntimeError as exc:
            raise LibraryError(f"FAISS search failed on {self.factory}: {str(exc).splitlines()[0]}") from exc

    def within(self, queries: np.ndarray, radius: float, k_cap: int = 1024, params: SearchParams | None = None,
               selector: Any = None, k_min: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every (query position, id, index score) whose index score is at least ``radius``.

        Flat and IVF-SQ indexes answer with a FAISS range search, :data:`RANGE_CHUNK` queries at a
        time. HNSW has no safe range search (FAISS aborts the process in
        ``RangeSearchResult::do_allocation`` at d=768 from a few hundred queries) and IVF-PQ's
        approximate scores make radii unreliable, so those answer with k-NN searches whose k
        doubles, per query, while its k-th neighbour still scores at least ``radius`` (at most
        ``k_cap``), cut at the radius; with ``k_min`` the k-NN answers keep their ``k_min`` nearest
        whatever their score (compressed codes misjudge scores: the caller verifies). Scores are
        the index's own (approximate for compressed codes): callers re-score exactly."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        found_pos, found_ids, found_s = [], [], []
        for start in range(0, len(queries), RANGE_CHUNK):
            q = queries[start:start + RANGE_CHUNK]
            if self.kind in ("flat", "ivf"):
                p = self._params(params, selector)
                try:
                    lims, dist, ids = self.index.range_search(q, float(radius), params=p)
                except RuntimeError as exc:
                    raise LibraryError(f"FAISS range search failed on {self.factory}: "
                                       f"{str(exc).splitlines()[0]}") from exc
                pos = np.repeat(np.arange(len(q), dtype=np.int64), np.diff(lims).astype(np.int64))
                found_pos.append(pos + start)
                found_ids.append(ids.astype(np.int64))
                found_s.append(dist.astype(np.float32))
                continue
            pos, ids, sc = self._knn_within(q, radius, k_cap, params, selector, k_min)
            found_pos.append(pos + start)
            found_ids.append(ids)
            found_s.append(sc)
        if not found_pos:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        return np.concatenate(found_pos), np.concatenate(found_ids), np.concatenate(found_s)

    def _knn_within(self, q: np.ndarray, radius: float, k_cap: int, params: SearchParams | None,
                    selector: Any, k_min: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """k-NN with a radius cut; k doubles for the queries whose k-th neighbour is inside."""
        k = min(max(16, k_min), max(self.ntotal, 1))
        todo = np.arange(len(q))
        cap = max(1, min(k_cap, self.ntotal or 1))
        out_pos, out_ids, out_s = [], [], []
        while len(todo):
            base = params or SearchParams()
            wide = SearchParams(ef_search=max(base.ef_search, k), nprobe=base.nprobe)
            scores, ids = self.search(q[todo], k, wide, selector)
            inside = ((scores >= radius) | (np.arange(scores.shape[1]) < k_min)[None, :]) & (ids >= 0)
            # the k-th neighbour itself inside the radius: there may be more beyond k
            full = (scores[:, -1] >= radius) & (ids[:, -1] >= 0) if (k < cap and scores.shape[1] == k) \
                else np.zeros(len(todo), bool)
            done = ~full
            r, c = np.nonzero(inside & done[:, None])
            out_pos.append(todo[r].astype(np.int64))
            out_ids.append(ids[r, c].astype(np.int64))
            out_s.append(scores[r, c].astype(np.float32))
            if k >= cap and cap < self.ntotal and ((scores[:, -1] >= radius) & (ids[:, -1] >= 0)).any():
                log.warning("%d queries have more than %d neighbours at %.3f: the farthest are not returned",
                            int(((scores[:, -1] >= radius) & (ids[:, -1] >= 0)).sum()), cap, radius)
            k = min(k * 2, cap)
            todo = todo[full]
        return np.concatenate(out_pos), np.concatenate(out_ids), np.concatenate(out_s)

    def _params(self, params: SearchParams | None, selector: Any) -> Any:
        """FAISS search parameters for this index kind (IVF: ``nprobe`` or the default)."""
        import faiss

        params = params or SearchParams()
        ivf = faiss.try_extract_index_ivf(self.index)
        if ivf is not None:
            nprobe = min(ivf.nlist, params.nprobe or max(16, ivf.nlist // 256))
            return faiss.SearchParametersIVF(nprobe=nprobe, sel=selector) if selector is not None \
                else faiss.SearchParametersIVF(nprobe=nprobe)
        return faiss.SearchParameters(sel=selector) if selector is not None else None

    def save(self, path: Path) -> None:
        """Write to a temp file in the same folder, fsync, rename, fsync the folder: a reader sees
        the old file or the whole new one, and a crash never leaves a half-written index."""
        import faiss

        from searchlite.store.vectorstore import fsync_dir

        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        os.close(fd)
        try:
            faiss.write_index(self.index, tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            crashpoint("segment-written")
            os.replace(tmp, path)
            fsync_dir(path.parent)
        except RuntimeError as exc:
            raise LibraryError(f"cannot write the index {path}: {str(exc).splitlines()[0]}") from exc
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @classmethod
    def load(cls, path: Path, factory: str, mmap: bool = True) -> VectorIndex:
        """Load an index memory-mapped (read-only: a query touches only the pages it needs)."""
        import faiss

        if not path.exists():
            raise FileNotFoundError(path)
        flags = (faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY) if mmap else 0
        try:
            return cls(faiss.read_index(str(path), flags), factory)
        except RuntimeError as exc:
            if not path.exists():
                raise FileNotFoundError(path) from exc
            raise LibraryError(f"cannot read the index {path}: {str(exc).splitlines()[0]} "
                               "(`searchlite reindex` rebuilds it from the stored vectors)") from exc
