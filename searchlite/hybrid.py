"""Hybrid search: the embedding ranking fused with the text a photo carries (OCR, place, names,
camera, keywords, title, description), with ``matches`` saying why a photo matched.

``mode="vector"`` is the embedding search exactly as before; ``"text"`` ranks the text hits only;
``"hybrid"`` (the default) fuses both (:mod:`searchlite.fusion`). Probabilities keep the embedding's
meaning (its calibrated probability, also for photos found through their text); ``min_prob`` drops
results below it except text hits that matched exactly. Filters apply to both channels.
"""

from __future__ import annotations

import logging
from bisect import bisect_right
from datetime import datetime
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from searchlite.catalog import Catalog, ImageRow, ModelRow, Root, VectorRow
from searchlite.errors import QueryError
from searchlite.fusion import FUSIONS, fuse
from searchlite.query import DATE_POOL, SORTS, Filters, SearchResult, calibration, result_of, search_vectors, sigmoid
from searchlite.store import ModelIndex
from searchlite.textindex import fields_of
from searchlite.textquery import TextHit, search_text

log = logging.getLogger(__name__)

MODES = ("hybrid", "vector", "text")
#: text hits read per query term (best bm25 first)
TEXT_POOL = 200
#: how deep the text hits are read when filters reject the best ones
MAX_TEXT_POOL = 200_000


def check_mode(mode: str, fusion: str) -> None:
    if mode not in MODES:
        raise QueryError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if fusion not in FUSIONS:
        raise QueryError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")


def _text_candidates(catalog: Catalog, model: ModelRow, index: ModelIndex, query: np.ndarray, text: str,
                     filters: Filters, exclude: set[int], session: Session, cwd: str | Path | None = None,
                     files: bool = False) -> tuple[dict[int, TextHit], dict[int, SearchResult]]:
    """The text hits that pass the filters and have a vector under the model, with their results
    (cosine from the stored vector, so the probability is the embedding's)."""
    conds = filters.conditions(catalog) if filters.active() else []
    limit = TEXT_POOL
    while True:
        hits = search_text(session, text, limit, cwd, files)
        ids = [i for i in hits if i not in exclude]
        rows: dict[int, int] = {}
        for lo in range(0, len(ids), 900):
            rows.update(session.execute(
                select(ImageRow.id, VectorRow.store_row).join(Root, Root.id == ImageRow.root_id)
                .join(VectorRow, VectorRow.image_id == ImageRow.id)
                .where(VectorRow.model_ref == model.id, VectorRow.store_row < index.store.committed,
                       ImageRow.id.in_(ids[lo:lo + 900]), *conds)).tuples().all())
        # a selective filter may reject the best text hits: read deeper until enough pass or none are left
        if len(rows) >= TEXT_POOL or len(hits) < limit or limit >= MAX_TEXT_POOL:
            break
        limit *= 10
    if not rows:
        return {}, {}
    store_rows = np.fromiter(rows.values(), dtype=np.int64)
    cosines = index.store.get(store_rows).astype(np.float32) @ np.asarray(query, dtype=np.float32)
    joined = catalog.results_for_rows(model.id, store_rows.tolist(), session)
    a, b = calibration(model)
    results = {}
    for row, cos in zip(store_rows.tolist(), cosines.tolist()):
        hit = joined.get(row)
        if hit is not None:
            results[hit.id] = result_of(model, hit, cos, float(sigmoid(a * cos + b)))
    return {i: hits[i] for i in results}, results


def _annotate(results: list[SearchResult], hits: dict[int, TextHit], fields: dict[int, dict[str, str]]) -> None:
    """``matches`` (why each photo matched: [] for the embedding alone) and ``place`` when known."""
    for r in results:
        hit = hits.get(r.image_id)
        r.extra["matches"] = list(hit.matches) if hit else []
        place = fields.get(r.image_id, {}).get("place")
        if place:
            r.extra["place"] = place


def _merge_order(pool: list[SearchResult], others: list[SearchResult]) -> list[SearchResult]:
    """The embedding's order over the pool plus photos outside it: the pool keeps its order exactly,
    the others go where their cosine puts them."""
    neg = [-r.score for r in pool]
    keyed = [((j, 0, 0.0), r) for j, r in enumerate(pool)]
    keyed += [((bisect_right(neg, -r.score), -1, -r.score), r) for r in others]
    keyed.sort(key=lambda kr: (kr[0], kr[1].image_id))
    return [r for _, r in keyed]


def search(catalog: Catalog, model: ModelRow, index: ModelIndex, query: np.ndarray, text: str, k: int,
           filters: Filters | None = None, exclude_images: set[int] | None = None, min_prob: float | None = None,
           sort: str = "relevance", offset: int = 0, mode: str = "hybrid", fusion: str = "prob",
           cwd: str | Path | None = None, files: bool = False) -> list[SearchResult]:
    """Results [offset, offset+k) of the query in ``mode`` (see the module docstring); ``cwd`` and
    ``files`` as for :func:`searchlite.combined.parse_query` (image terms are not looked for in text)."""
    check_mode(mode, fusion)
    if sort not in SORTS:
        raise QueryError(f"unknown sort {sort!r}; choose one of {', '.join(SORTS)}")
    args = dict(filters=filters, exclude_images=exclude_images, min_prob=min_prob)
    if mode == "vector":
        return search_vectors(catalog, model, index, query, k, sort=sort, offset=offset, **args)
    filters = filters or Filters()
    # the embedding's top offset+k (photos without text evidence rank below them), or the date pool;
    # its ranking does not depend on k or offset, so a page of it is the vector search's page
    want = DATE_POOL if sort == "date" else offset + k
    pool = search_vectors(catalog, model, index, query, want, **args) if mode == "hybrid" else []
    with index.reading() as session:  # one read for the text hits and every candidate's fields
        hits, hit_results = _text_candidates(catalog, model, index, query, text, filters, exclude_images or set(),
                                             session, cwd, files)
        fields = fields_of(session, [r.image_id for r in pool] + list(hit_results))
    if mode == "hybrid" and not hits:  # nothing in the text: the embedding's ranking as it is
        results = (search_vectors(catalog, model, index, query, k, sort=sort, offset=offset, **args)
                   if sort == "date" else pool[offset:offset + k])
        _annotate(results, {}, fields if sort != "date" else _fields(catalog, results))
        return results
    # a text hit below min_prob stays only when it matched exactly
    kept = {i: r for i, r in hit_results.items()
            if min_prob is None or r.probability >= min_prob or hits[i].exact}
    text_order = sorted(kept, key=lambda i: (not hits[i].exact, -hits[i].evidence, -hits[i].score, i))
    if mode == "text":
        ranked = [kept[i] for i in text_order]
    else:
        by_id = {r.image_id: r for r in pool}  # the pool's own scores: its order is the embedding's
        others = [r for i, r in kept.items() if i not in by_id]
        merged = _merge_order(pool, others)
        by_id.update({r.image_id: r for r in others})
        order = fuse([r.image_id for r in merged], {i: r.probability for i, r in by_id.items()},
                     {i: hits[i].evidence for i in kept}, text_order, fusion)
        ranked = [by_id[i] for i, _ in order]
    if sort == "date":
        ranked.sort(key=lambda r: (r.sort_time or datetime.min, r.path))
    results = ranked[offset:offset + k]
    for rank, r in enumerate(results, 1 + offset):
        r.rank = rank
    _annotate(results, hits, fields)
    return results


def _fields(catalog: Catalog, results: list[SearchResult]) -> dict[int, dict[str, str]]:
    with catalog.Session() as s:
        return fields_of(s, [r.image_id for r in results])
