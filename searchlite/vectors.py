"""FAISS indexes over catalog ids: choice by size, index_factory strings, atomic save, mmap load.

All indexes use inner product over L2-normalised vectors (= cosine). Ids are catalog image ids,
added with ``add_with_ids`` (``IDMap2`` around Flat and HNSW, native ids for IVF).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

INDEX_TYPES = ("auto", "flat", "hnsw", "ivf", "ivfpq")
#: Libraries below this size are searched exactly; exact search of 100k x 768 takes ~10 ms.
FLAT_MAX = 100_000
#: HNSW up to this size; above, IVF (cheaper to build, trained on a sample).
HNSW_MAX = 2_000_000
#: Above this size IVF-PQ (compressed codes) keeps memory in check.
IVFPQ_MIN = 20_000_000


def choose_type(n: int) -> str:
    """The index type 'auto' picks for a library of n vectors."""
    if n < FLAT_MAX:
        return "flat"
    if n < HNSW_MAX:
        return "hnsw"
    return "ivf" if n < IVFPQ_MIN else "ivfpq"


def _nlist(n: int) -> int:
    # FAISS guidelines: nlist ~ 4*sqrt(n) .. 16*sqrt(n), at least ~39 training points per list.
    return max(1, min(int(4 * math.sqrt(n)), n // 39 or 1))


def factory_string(kind: str, n: int, dim: int) -> str:
    """The ``faiss.index_factory`` string for an index type at a given size."""
    if kind == "flat":
        return "IDMap2,Flat"
    if kind == "hnsw":
        return "IDMap2,HNSW32"
    if kind == "ivf":
        return f"IVF{_nlist(n)},Flat"
    if kind == "ivfpq":
        m = next(m for m in (dim // 8, dim // 4, dim // 2, dim, 1) if m and dim % m == 0)
        nbits = max(1, min(8, int(math.log2(max(n, 2))) - 2))
        return f"IVF{_nlist(n)},PQ{m}x{nbits}"
    raise ValueError(f"unknown index type {kind!r}; choose one of {', '.join(INDEX_TYPES)}")


def kind_of(factory: str) -> str:
    """The index type ('flat', 'hnsw', 'ivf', 'ivfpq') of a factory string."""
    if "HNSW" in factory:
        return "hnsw"
    if "IVF" in factory:
        return "ivfpq" if "PQ" in factory else "ivf"
    return "flat"


def describe(index: object) -> str:
    """The factory-style description of a loaded index (e.g. 'IDMap2,HNSW32', 'IVF1024,Flat')."""
    import faiss

    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else faiss.downcast_index(index)
    prefix = "IDMap2," if isinstance(index, faiss.IndexIDMap) else ""
    if isinstance(inner, faiss.IndexHNSW):
        return f"{prefix}HNSW{inner.hnsw.nb_neighbors(1)}"
    if isinstance(inner, faiss.IndexIVFPQ):
        return f"{prefix}IVF{inner.nlist},PQ{inner.pq.M}x{inner.pq.nbits}"
    if isinstance(inner, faiss.IndexIVF):
        return f"{prefix}IVF{inner.nlist},Flat"
    return f"{prefix}Flat"


def _supports_remove(index: object) -> bool:
    import faiss

    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    return not isinstance(inner, faiss.IndexHNSW)


@dataclass
class SearchParams:
    ef_search: int = 128
    nprobe: int | None = None


class VectorIndex:
    """A FAISS index of one model's vectors, keyed by catalog image id."""

    def __init__(self, index: object, factory: str | None = None) -> None:
        self.index = index
        self.factory = factory or describe(index)

    @classmethod
    def build(cls, kind: str, dim: int, ids: np.ndarray, vectors: np.ndarray, seed: int = 0) -> VectorIndex:
        """Build (and train, for IVF) an index over all given vectors."""
        import faiss

        n = len(ids)
        if kind == "auto":
            kind = choose_type(n)
        factory = factory_string(kind, max(n, 1), dim)
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        if kind == "hnsw":
            faiss.downcast_index(index.index).hnsw.efConstruction = 80
        if not index.is_trained:
            if n == 0:
                raise ValueError(f"cannot train a {kind} index without vectors")
            rng = np.random.default_rng(seed)
            sample = vectors if n <= 256 * 1024 else vectors[rng.choice(n, 256 * 1024, replace=False)]
            index.train(np.ascontiguousarray(sample, dtype=np.float32))
        out = cls(index, factory)
        if n:
            out.add(ids, vectors)
        return out

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def kind(self) -> str:
        return kind_of(self.factory)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32),
                                np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> bool:
        """Remove ids where the index type supports it; False means 'filter at search instead'."""
        import faiss

        if not _supports_remove(self.index):
            return False
        self.index.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64)))
        return True

    def search(self, queries: np.ndarray, k: int, params: SearchParams | None = None,
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query; missing slots have id -1."""
        import faiss

        params = params or SearchParams()
        k = max(1, min(k, self.ntotal or 1))
        inner = faiss.downcast_index(self.index.index) if isinstance(self.index, faiss.IndexIDMap) else self.index
        if isinstance(inner, faiss.IndexHNSW):
            inner.hnsw.efSearch = max(params.ef_search, k)
        ivf = faiss.try_extract_index_ivf(self.index) if "IVF" in self.factory else None
        if ivf is not None:
            ivf.nprobe = params.nprobe or min(ivf.nlist, max(16, ivf.nlist // 64))
        scores, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return scores, ids

    def save(self, path: Path) -> None:
        """Write to a temp file in the same folder, fsync, then rename: readers never see half a file."""
        import faiss

        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        os.close(fd)
        try:
            faiss.write_index(self.index, tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @classmethod
    def load(cls, path: Path, mmap: bool = True) -> VectorIndex:
        """Load an index, memory-mapped where the type supports it (read-only then)."""
        import faiss

        if not path.exists():
            raise FileNotFoundError(path)
        if mmap:
            try:
                return cls(faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY))
            except RuntimeError:
                log.debug("index %s cannot be memory-mapped; reading it", path)
        return cls(faiss.read_index(str(path)))

    def to_gpu_if_available(self) -> VectorIndex:
        """Move Flat/IVF indexes to the GPU when a GPU build of FAISS and a GPU are present."""
        import faiss

        if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0 or self.kind == "hnsw":
            return self
        res = faiss.StandardGpuResources()
        return VectorIndex(faiss.index_cpu_to_gpu(res, 0, self.index), self.factory)
