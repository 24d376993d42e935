"""Re-score a candidate set with other backends, fuse rankings, and compare models side by side.

Fusion: ``replace`` (final order = model B's score), ``rrf`` (reciprocal-rank fusion,
``1/(60+rank_A) + 1/(60+rank_B)``), ``prob`` (mean of the two calibrated probabilities).
Candidates that model B has not indexed yet are embedded on the fly and their vectors stored, so
the next rerank (and a later ``searchlite index --model B``) reuses them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from searchlite.catalog import Embedding, ModelRow
from searchlite.errors import QueryError
from searchlite.imaging import load_image
from searchlite.models.registry import parse_spec
from searchlite.query import Filters, SearchResult, calibration, sigmoid

log = logging.getLogger(__name__)

FUSIONS = ("replace", "rrf", "prob")
RRF_K = 60


def _vectors_for_candidates(lib, row: ModelRow, spec: str, results: Sequence[SearchResult]) -> dict[int, np.ndarray]:
    """Model B's vectors for the candidates; missing ones are embedded now and stored."""
    have = lib.catalog.vectors_for(row.id, [r.image_id for r in results])
    missing = [r for r in results if r.image_id not in have]
    if missing:
        emb = lib.embedder(spec)
        images, ids = [], []
        for r in missing:
            try:
                images.append(load_image(Path(r.path), target_size=emb.image_size).image)
                ids.append(r.image_id)
            except Exception as exc:  # noqa: BLE001 - a file that vanished since indexing
                log.warning("cannot re-score %s: %s", r.path, exc)
        if images:
            vecs = emb.embed_images(images)
            with lib.catalog.Session.begin() as s:
                for image_id, v in zip(ids, vecs):
                    s.add(Embedding(model_ref=row.id, image_id=image_id, vector=v.astype(np.float32).tobytes()))
            have.update(zip(ids, vecs))
    return have


def rescore(lib, text: str, spec: str, candidates: Sequence[SearchResult], template: str | None = None,
            ) -> list[SearchResult]:
    """The candidates scored by one model (its own cosine, logit and probability), best first."""
    emb = lib.embedder(spec)
    row = lib.catalog.register_model(emb, spec)
    vecs = _vectors_for_candidates(lib, row, spec, candidates)
    q, _ = lib.query_vector(text, row, template)
    a, b = calibration(row)
    out = []
    for r in candidates:
        if r.image_id not in vecs:
            continue
        cos = float(vecs[r.image_id] @ q)
        out.append(SearchResult(0, r.path, cos, float(row.scale * cos + row.bias), float(sigmoid(a * cos + b)),
                                r.image_id, r.width, r.height, r.taken_at))
    out.sort(key=lambda r: (-r.score, r.image_id))
    for rank, r in enumerate(out, 1):
        r.rank = rank
    return out


def rerank(lib, text: str, first: str | None, second: str, k: int = 20, candidates: int = 100,
           fusion: str = "replace", template: str | None = None, filters: Filters | None = None,
           min_prob: float | None = None) -> list[SearchResult]:
    """First stage from model A's index, re-scored by model B, fused."""
    if fusion not in FUSIONS:
        raise QueryError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")
    stage1 = lib.search(text, first, k=max(k, candidates), filters=filters)
    stage2 = rescore(lib, text, second, stage1)
    first_rank = {r.image_id: r for r in stage1}
    for r in stage2:
        a = first_rank[r.image_id]
        r.extra = {"first_stage": {"model": lib.model_row(first).spec, "rank": a.rank, "score": a.score,
                                   "probability": a.probability}}
        if fusion == "rrf":
            r.extra["fused"] = 1 / (RRF_K + a.rank) + 1 / (RRF_K + r.rank)
        elif fusion == "prob":
            r.extra["fused"] = (a.probability + r.probability) / 2
    if fusion != "replace":
        stage2.sort(key=lambda r: (-r.extra["fused"], r.image_id))
    if min_prob is not None:
        stage2 = [r for r in stage2 if (r.extra.get("fused", r.probability) if fusion == "prob"
                                        else r.probability) >= min_prob]
    stage2 = stage2[:k]
    for rank, r in enumerate(stage2, 1):
        r.rank = rank
    return stage2


def compare(lib, text: str, specs: Sequence[str], k: int = 10, candidates: int = 100,
            shared_pool: bool = False) -> dict[str, list[SearchResult]]:
    """Top-k of each model, side by side. A model that has indexed the library searches its own
    index; otherwise (or with ``shared_pool``) it re-scores the first model's candidate pool.
    Each result's ``extra["also_in"]`` lists the other models that ranked it in their top k."""
    if not specs:
        raise QueryError("--models needs at least one model")
    indexed = {m.model_id for m in lib.catalog.models() if lib.catalog.count_vectors(m.id)}
    pool: list[SearchResult] | None = None
    out: dict[str, list[SearchResult]] = {}
    for spec in specs:
        own_index = parse_spec(spec).model_id in indexed and not (shared_pool and spec != specs[0])
        if own_index:
            out[spec] = lib.search(text, spec, k=k)
        else:
            if pool is None:
                pool = lib.search(text, specs[0] if parse_spec(specs[0]).model_id in indexed else None,
                                  k=candidates)
            out[spec] = rescore(lib, text, spec, pool)[:k]
    tops = {spec: {r.image_id for r in res} for spec, res in out.items()}
    for spec, res in out.items():
        for r in res:
            r.extra["also_in"] = [o for o in out if o != spec and r.image_id in tops[o]]
    return out
