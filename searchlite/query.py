"""Query engine: templated text and image queries, ANN search joined with the catalog,
filters applied without losing results, and calibrated probabilities.

Probability = ``sigmoid(a * cos + b)``. SigLIP: ``a = exp(logit_scale)``, ``b = logit_bias`` (the
model's own probability). CLIP / ALIGN: Platt parameters fitted by ``searchlite calibrate`` and
stored per model; until then a documented fallback (:data:`FALLBACK_CENTER`).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from searchlite.catalog import Catalog, ImageRow, ModelRow
from searchlite.vectors import VectorIndex

#: Uncalibrated CLIP/ALIGN fallback: probability 0.5 at this cosine, slope = the model's logit scale.
#: Matching image-caption pairs of CLIP ViT-B/32 score ~0.30 cosine, unrelated ones ~0.15-0.20.
FALLBACK_CENTER = {"clip": 0.25, "align": 0.30}


def calibration(model: ModelRow) -> tuple[float, float]:
    """The (a, b) of ``sigmoid(a*cos + b)`` for a model."""
    if model.family == "siglip":
        return model.scale, model.bias
    if model.calib_a is not None and model.calib_b is not None:
        return model.calib_a, model.calib_b
    center = FALLBACK_CENTER.get(model.family, 0.25)
    return model.scale, -model.scale * center


def sigmoid(x: np.ndarray | float) -> np.ndarray | float:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


@dataclass
class Filters:
    """Result filters; all must hold."""

    glob: str | None = None  # fnmatch on the absolute path, e.g. "*/2023/*" or "*.png"
    folder: Path | None = None
    after: datetime | None = None  # capture time (EXIF, else file mtime)
    before: datetime | None = None
    min_width: int | None = None
    min_height: int | None = None
    formats: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {"glob": self.glob, "folder": str(self.folder) if self.folder else None,
                "after": self.after.isoformat() if self.after else None,
                "before": self.before.isoformat() if self.before else None,
                "min_width": self.min_width, "min_height": self.min_height, "formats": list(self.formats)}

    @classmethod
    def from_json(cls, data: dict | None) -> Filters:
        data = data or {}
        return cls(glob=data.get("glob"), folder=Path(data["folder"]) if data.get("folder") else None,
                   after=datetime.fromisoformat(data["after"]) if data.get("after") else None,
                   before=datetime.fromisoformat(data["before"]) if data.get("before") else None,
                   min_width=data.get("min_width"), min_height=data.get("min_height"),
                   formats=tuple(data.get("formats") or ()))

    def active(self) -> bool:
        return any([self.glob, self.folder, self.after, self.before, self.min_width, self.min_height, self.formats])

    def accept(self, row: ImageRow, path: Path) -> bool:
        if self.glob and not fnmatch.fnmatch(str(path), self.glob):
            return False
        if self.folder and not path.is_relative_to(self.folder):
            return False
        when = row.taken_at or datetime.fromtimestamp(row.mtime_ns / 1e9)
        if self.after and when < self.after:
            return False
        if self.before and when > self.before:
            return False
        if self.min_width and (row.width or 0) < self.min_width:
            return False
        if self.min_height and (row.height or 0) < self.min_height:
            return False
        return not (self.formats and (row.format or "").upper() not in {f.upper() for f in self.formats})


@dataclass
class SearchResult:
    """One ranked image."""

    rank: int
    path: str
    score: float  # cosine similarity
    logit: float  # model-scaled: scale*cos + bias (SigLIP), scale*cos (CLIP), cos/temperature (ALIGN)
    probability: float
    image_id: int
    width: int | None = None
    height: int | None = None
    taken_at: str | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> SearchResult:
        names = ("rank", "path", "score", "logit", "probability", "image_id", "width", "height", "taken_at")
        return cls(**{k: data.get(k) for k in names}, extra={k: v for k, v in data.items() if k not in names})

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("rank", "path", "score", "logit", "probability", "image_id", "width",
                                           "height", "taken_at")}
        d.update(self.extra)
        return d


def search_vectors(catalog: Catalog, model: ModelRow, index: VectorIndex, query: np.ndarray, k: int,
                   filters: Filters | None = None, exclude: set[int] | None = None,
                   min_prob: float | None = None, sort: str = "relevance") -> list[SearchResult]:
    """ANN search for one query vector, joined with the catalog.

    Over-fetches and doubles until ``k`` results pass every filter (or the index is exhausted), so
    filters and stale ids (deleted from the catalog but still in an HNSW graph) never lose results.
    """
    filters = filters or Filters()
    exclude = exclude or set()
    roots = catalog.roots()
    a, b = calibration(model)
    q = np.asarray(query, dtype=np.float32).reshape(1, -1)
    total = index.ntotal
    compressed = "PQ" in index.factory
    fetch = min(total, max(k * (4 if compressed else 2), k + len(exclude) + model.index_stale, 16))
    results: list[SearchResult] = []
    while True:
        scores, ids = index.search(q, fetch)
        pairs = [(float(s), int(i)) for s, i in zip(scores[0], ids[0]) if i >= 0 and int(i) not in exclude]
        if compressed:
            # PQ scores are approximate: re-score the candidates with the exact stored vectors
            exact = catalog.vectors_for(model.id, [i for _, i in pairs])
            pairs = sorted(((float(exact[i] @ q[0]), i) for _, i in pairs if i in exact), key=lambda p: (-p[0], p[1]))
        # one query: catalog rows of the candidates that still have a vector under this model
        rows = catalog.rows_with_vectors(model.id, [i for _, i in pairs])
        results = []
        for cos, image_id in pairs:
            row = rows.get(image_id)
            if row is None or row.status != "ok":
                continue
            path = Path(roots[row.root_id]) / row.relpath
            if filters.active() and not filters.accept(row, path):
                continue
            prob = float(sigmoid(a * cos + b))
            if min_prob is not None and prob < min_prob:
                continue
            results.append(SearchResult(0, str(path), cos, float(model.scale * cos + model.bias), prob, image_id,
                                        row.width, row.height,
                                        (row.taken_at.isoformat() if row.taken_at else None)))
        below_min = min_prob is not None and pairs and float(sigmoid(a * pairs[-1][0] + b)) < min_prob
        if len(results) >= k or fetch >= total or below_min:
            break
        fetch = min(total, fetch * 4)
    # identical scores: lower id first, so ranking is deterministic
    results.sort(key=lambda r: (-r.score, r.image_id))
    results = results[:k]
    if sort == "date":
        when = {i: (r.taken_at or datetime.fromtimestamp(r.mtime_ns / 1e9)) for i, r in rows.items()}
        results.sort(key=lambda r: (when[r.image_id], r.path))
    for rank, r in enumerate(results, 1):
        r.rank = rank
    return results

