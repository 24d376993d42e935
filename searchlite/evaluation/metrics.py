"""Retrieval metrics over score matrices (pure numpy).

Conventions (documented in the README):
- ``scores[q, i]`` is the score of item ``i`` for query ``q``; ``relevant[q]`` the items relevant to q.
- Ranking is by descending score; ties are broken by ascending item index (deterministic, and
  the same order as a stable sort on ``-score``).
- ``rank`` of a query is the 1-based position of its best-ranked relevant item.
- recall@k = share of queries whose rank <= k (CLIP_benchmark's definition: a hit if *any*
  relevant item is in the top k). MRR = mean of 1/rank; MRR@k counts 0 beyond k.
- Queries with no relevant item are left out of every mean (and counted in ``skipped``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def first_relevant_ranks(scores: np.ndarray, relevant: Sequence[Sequence[int]], batch: int = 256) -> np.ndarray:
    """1-based rank of the best relevant item per query (0 where a query has no relevant item)."""
    scores = np.asarray(scores)
    n_items = scores.shape[1]
    ranks = np.zeros(len(relevant), dtype=np.int64)
    idx = np.arange(n_items)
    for q, rel in enumerate(relevant):
        rel = np.asarray(list(rel), dtype=np.int64)
        if rel.size == 0:
            continue
        row = scores[q]
        s_rel = row[rel][:, None]
        # items ranked before relevant item j: higher score, or equal score and lower index
        before = (row[None, :] > s_rel) | ((row[None, :] == s_rel) & (idx[None, :] < rel[:, None]))
        ranks[q] = int(before.sum(axis=1).min()) + 1
    return ranks


def recall_mrr(ranks: np.ndarray, ks: Sequence[int] = (1, 5, 10), mrr_at: int | None = None) -> dict[str, float]:
    """recall@k for each k, MRR (and MRR@mrr_at) from first-relevant ranks (0 = no relevant item)."""
    valid = ranks[ranks > 0]
    out: dict[str, float] = {}
    if valid.size == 0:
        out.update({f"recall@{k}": float("nan") for k in ks})
        out["mrr"] = float("nan")
        return out
    for k in ks:
        out[f"recall@{k}"] = float(np.mean(valid <= k))
    out["mrr"] = float(np.mean(1.0 / valid))
    if mrr_at:
        out[f"mrr@{mrr_at}"] = float(np.mean(np.where(valid <= mrr_at, 1.0 / valid, 0.0)))
    out["queries"] = int(valid.size)
    out["skipped"] = int((ranks == 0).sum())
    return out


def average_precision(scores: np.ndarray, relevant: Sequence[Sequence[int]]) -> np.ndarray:
    """Average precision per query over the full ranking (NaN where nothing is relevant)."""
    scores = np.asarray(scores)
    out = np.full(len(relevant), np.nan)
    for q, rel in enumerate(relevant):
        rel = set(int(r) for r in rel)
        if not rel:
            continue
        order = np.argsort(-scores[q], kind="stable")
        hits = np.fromiter((i in rel for i in order), dtype=bool, count=len(order))
        positions = np.flatnonzero(hits) + 1
        out[q] = float(np.mean(np.arange(1, len(positions) + 1) / positions))
    return out


def retrieval_metrics(scores: np.ndarray, relevant: Sequence[Sequence[int]], ks: Sequence[int] = (1, 5, 10),
                      with_map: bool = False) -> dict[str, float]:
    """All metrics for one direction (e.g. text->image)."""
    out = recall_mrr(first_relevant_ranks(scores, relevant), ks, mrr_at=max(ks))
    if with_map:
        ap = average_precision(scores, relevant)
        out["map"] = float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")
    return out
