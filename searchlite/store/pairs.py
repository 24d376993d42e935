"""Candidate pairs of similar stored vectors, through the one search layer.

``similar_pairs`` answers "which pairs of these rows score at least t": each segment is asked with
:meth:`searchlite.vectors.VectorIndex.within` (a range search where FAISS has a safe one, a k-NN
with a radius cut elsewhere), the exact tail is scored block-wise from the store, and every
candidate is verified with the exact stored vectors. Memory is bounded by the chunk and the pairs
found: no n x n matrix is ever made. Clients (``searchlite.duplicates``) never touch FAISS.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

from searchlite.store.segments import ModelIndex
from searchlite.vectors import SearchParams, bitmap_selector, excluding_selector, rescored

log = logging.getLogger(__name__)

#: Query vectors read from the store at a time (memory: QUERY_CHUNK x the tail block of scores).
QUERY_CHUNK = 4096
#: Rows of the exact tail scored per block against a query chunk (4096 x 16384 floats = 256 MB).
TAIL_BLOCK = 16384
#: Inverted lists probed per query in IVF segments. A near copy lies in its original's cell or a
#: neighbouring one: planted pairs at 100k (IVF1264,SQ8), recall 0.98 at nprobe 1, 1.000 at 2, 4
#: and 16 (0.15, 0.25, 0.61 ms a query); ordinary search probes 16 for ranking far neighbours too.
NPROBE = 4
#: Compressed segments (SQ8, PQ) score approximately: search a little below the threshold, then verify.
MARGIN = 0.02
#: Nearest neighbours of a k-NN answer over compressed codes kept whatever their approximate score
#: (verified exactly): 4-bit PQ codes misjudge a near copy's cosine by more than MARGIN.
KNN_KEEP = 16
#: Most neighbours a k-NN answer (HNSW, IVF-PQ) collects per query before its radius cut.
K_CAP = 1024


def _chunks(index: ModelIndex, rows: np.ndarray, chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(rows, vectors) of sorted ``rows`` in pieces of at most ``chunk``, read with plain reads
    (not the memory map, so the process does not keep the whole store's pages)."""
    if not len(rows):
        return
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    for start, block in index.store.read_chunks(lo, hi, max(chunk, 1)):
        at = rows[(rows >= start) & (rows < start + len(block))]
        if len(at):
            yield at, np.ascontiguousarray(block[at - start])


def _selector(seg: Any, allowed: np.ndarray | None, dead: np.ndarray) -> tuple[Any, Any]:
    """(selector, what must stay alive) for one segment; (False, None): nothing of it is wanted."""
    if allowed is not None:
        inside = allowed[(allowed >= seg.row_lo) & (allowed < seg.row_hi)]
        return bitmap_selector(inside, seg.row_hi) if len(inside) else (False, None)
    inside = dead[(dead >= seg.row_lo) & (dead < seg.row_hi)]
    return excluding_selector(inside) if len(inside) else (None, None)


def similar_pairs(index: ModelIndex, rows: np.ndarray, threshold: float, chunk: int = QUERY_CHUNK,
                  k_cap: int = K_CAP) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (a < b) of ``rows`` (sorted live store rows) whose exact cosine is at least
    ``threshold``, as (a, b, similarity) arrays."""
    dead = index.snap.tombstones if index.snap is not None else np.zeros(0, np.int64)
    allowed = None if len(rows) == index.live else rows
    selectors = {seg.name: _selector(seg, allowed, dead) for seg, _ in index.segments}
    covered, committed = index.covered, index.store.committed
    tail = rows[rows >= covered]
    found_a, found_b, found_s = [], [], []
    for q_rows, q in _chunks(index, rows, chunk):
        cand_pos, cand_rows = [], []
        for seg, vi in index.segments:
            selector, _keep = selectors[seg.name]
            if selector is False:
                continue
            radius = threshold - (MARGIN if rescored(vi.factory) else 1e-6)
            params = SearchParams(ef_search=index.params.ef_search, nprobe=NPROBE)
            k_min = KNN_KEEP if rescored(vi.factory) else 0
            pos, hit, _ = vi.within(q, radius, k_cap, params, selector, k_min)
            cand_pos.append(pos)
            cand_rows.append(hit)
        for lo in range(0, len(tail), TAIL_BLOCK):  # the exact tail (the whole store below 100k)
            block_rows = tail[lo:lo + TAIL_BLOCK]
            qi, bi = np.nonzero(q @ index.store.get(block_rows).T >= threshold - 1e-6)
            cand_pos.append(qi.astype(np.int64))
            cand_rows.append(block_rows[bi])
        if not cand_pos:
            continue
        pos, hit = np.concatenate(cand_pos), np.concatenate(cand_rows)
        a = q_rows[pos]
        keep = (hit != a) & (hit >= 0) & (hit < committed)
        pos, a, hit = pos[keep], a[keep], hit[keep]
        if not len(hit):
            continue
        sims = np.empty(len(hit), np.float32)
        order = np.argsort(hit, kind="stable")
        for start in range(0, len(order), 65536):  # verify with the exact stored vectors
            at = order[start:start + 65536]
            sims[at] = np.einsum("ij,ij->i", q[pos[at]], index.store.get(hit[at]))
        ok = sims >= threshold
        found_a.append(np.minimum(a[ok], hit[ok]))
        found_b.append(np.maximum(a[ok], hit[ok]))
        found_s.append(sims[ok])
    if not found_a:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    a, b, s = np.concatenate(found_a), np.concatenate(found_b), np.concatenate(found_s)
    _, first = np.unique(a * (int(committed) + 1) + b, return_index=True)
    return a[first], b[first], s[first]


__all__ = ["K_CAP", "MARGIN", "NPROBE", "QUERY_CHUNK", "similar_pairs"]
