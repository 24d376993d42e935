"""Re-score a candidate set with other backends, fuse rankings, and compare models side by side.

Fusion: ``replace`` (final order = model B's score), ``rrf`` (reciprocal-rank fusion,
``1/(60+rank_A) + 1/(60+rank_B)``), ``prob`` (mean of the two calibrated probabilities).
Model B scores each candidate exactly as B's own search would: the same query text, the same
template (or B's default), B's score parameters. B's vectors for candidates it has not embedded
are computed on the fly and cached in the library when no writer holds it; a cache never makes
B a model that has "indexed" the library.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np

from searchlite.catalog import ModelRow
from searchlite.errors import QueryError
from searchlite.imaging import load_image
from searchlite.query import SORTS, Filters, SearchResult, calibration, sigmoid

log = logging.getLogger(__name__)

FUSIONS = ("replace", "rrf", "prob")
RRF_K = 60


def _model_for_rescoring(lib, spec: str) -> ModelRow:
    row = lib.find_model(spec)
    return row if row is not None else lib.register(spec, lib.embedder(spec), indexed=False)


def _candidate_vectors(lib, row: ModelRow, results: Sequence[SearchResult]) -> dict[int, np.ndarray]:
    """Model B's vectors for the candidates: stored ones, the rest embedded now (and cached)."""
    have = lib.stored_vectors(row, [r.image_id for r in results])
    missing = [r for r in results if r.image_id not in have]
    if missing:
        emb = lib.embedder_for(row)
        images, ids = [], []
        for r in missing:
            try:
                images.append(load_image(Path(r.path), target_size=emb.image_size).image)
                ids.append(r.image_id)
            except Exception as exc:  # noqa: BLE001 - a file that vanished since indexing
                log.warning("cannot re-score %s: %s", r.path, exc)
        if images:
            fresh = dict(zip(ids, emb.embed_images(images)))
            lib.cache_vectors(row, fresh)
            have.update(fresh)
    return have


def rescore(lib, text: str, spec: str, candidates: Sequence[SearchResult], template: str | None = None,
            ensemble: bool = False, cwd: str | Path | None = None, files: bool = True) -> list[SearchResult]:
    """The candidates scored by one model (its own cosine, logit and probability), best first."""
    row = _model_for_rescoring(lib, spec)
    vecs = _candidate_vectors(lib, row, candidates)
    q, _ = lib.query_vector(text, row, template, ensemble, cwd, files)
    a, b = calibration(row)
    out = []
    for r in candidates:
        if r.image_id not in vecs:
            continue
        cos = float(vecs[r.image_id] @ q)
        out.append(SearchResult(0, r.path, cos, float(row.scale * cos + row.bias), float(sigmoid(a * cos + b)),
                                r.image_id, r.width, r.height, r.taken_at, dict(r.extra), r.sort_time))
    out.sort(key=lambda r: (-r.score, r.image_id))
    for rank, r in enumerate(out, 1):
        r.rank = rank
    return out


def rerank(lib, text: str, first: str | None, second: str, k: int = 20, candidates: int = 100,
           fusion: str = "replace", template: str | None = None, filters: Filters | None = None,
           min_prob: float | None = None, ensemble: bool = False, sort: str = "relevance",
           cwd: str | Path | None = None) -> list[SearchResult]:
    """First stage from model A's index, re-scored by model B, fused. The template, ensembling and
    filters apply to both stages; ``min_prob`` to the final probability; ``sort`` to the final list."""
    if fusion not in FUSIONS:
        raise QueryError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")
    if sort not in SORTS:
        raise QueryError(f"unknown sort {sort!r}; choose one of {', '.join(SORTS)}")
    first_row = lib.model_row(first)
    stage1 = lib.search(text, first, k=max(k, candidates), template=template, filters=filters, ensemble=ensemble,
                        cwd=cwd)
    stage2 = rescore(lib, text, second, stage1, template, ensemble, cwd)
    first_rank = {r.image_id: r for r in stage1}
    for r in stage2:
        a = first_rank[r.image_id]
        r.extra["first_stage"] = {"model": first_row.spec, "rank": a.rank, "score": a.score,
                                  "probability": a.probability}
        if fusion == "rrf":
            r.extra["fused"] = 1 / (RRF_K + a.rank) + 1 / (RRF_K + r.rank)
        elif fusion == "prob":
            r.extra["fused"] = (a.probability + r.probability) / 2
    if fusion != "replace":
        stage2.sort(key=lambda r: (-r.extra["fused"], r.image_id))
    if min_prob is not None:
        stage2 = [r for r in stage2 if (r.extra["fused"] if fusion == "prob" else r.probability) >= min_prob]
    stage2 = stage2[:k]
    if sort == "date":
        stage2.sort(key=lambda r: (r.sort_time or datetime.min, r.path))
    for rank, r in enumerate(stage2, 1):
        r.rank = rank
    return stage2


def compare(lib, text: str, specs: Sequence[str], k: int = 10, candidates: int = 100, shared_pool: bool = False,
            template: str | None = None, ensemble: bool = False, files: bool = True,
            filters: Filters | None = None) -> dict[str, list[SearchResult]]:
    """Top-k of each model, side by side. A model that has indexed the library searches its own
    index; otherwise (or with ``shared_pool``) it re-scores the first indexed model's candidate
    pool. ``filters`` apply to every model's results (and to the pool). Each result's
    ``extra["also_in"]`` lists the other models that ranked it in their top k."""
    if not specs:
        raise QueryError("--models needs at least one model")
    indexed = {spec: (lib.find_model(spec) is not None and lib.find_model(spec).indexed) for spec in specs}
    pool_model = next((s for s in specs if indexed[s]), None)
    pool: list[SearchResult] | None = None
    out: dict[str, list[SearchResult]] = {}
    for spec in specs:
        if indexed[spec] and not (shared_pool and spec != pool_model):
            out[spec] = lib.search(text, spec, k=k, template=template, ensemble=ensemble, files=files,
                                   filters=filters)
        else:
            if pool is None:
                pool = lib.search(text, pool_model, k=candidates, template=template, ensemble=ensemble, files=files,
                                  filters=filters)
            out[spec] = rescore(lib, text, spec, pool, template, ensemble, files=files)[:k]
    tops = {spec: {r.image_id for r in res} for spec, res in out.items()}
    for spec, res in out.items():
        for r in res:
            r.extra["also_in"] = [o for o in out if o != spec and r.image_id in tops[o]]
    return out
