"""The bench runner: embed a captioned dataset (cached in a bench library), then retrieval metrics
per model and per rerank pair, calibration figures, and ANN quality against exact search."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from searchlite.errors import DatasetError
from searchlite.evaluation.datasets import CaptionDataset
from searchlite.evaluation.metrics import retrieval_metrics
from searchlite.query import calibration, check_template, sigmoid

log = logging.getLogger(__name__)


def dataset_vectors(library, dataset: CaptionDataset, spec: str) -> np.ndarray:
    """Image vectors of a dataset under one model, from the (bench) library; (n_images, d)."""
    row = library.model_row(spec)
    ids = []
    for path in dataset.images:
        found = library.catalog.find_image(path)
        ids.append(found.id if found is not None else None)
    vecs = library.stored_vectors(row, [i for i in ids if i is not None])
    out = np.zeros((len(ids), row.dim), dtype=np.float32)
    missing = 0
    for n, image_id in enumerate(ids):
        if image_id is not None and image_id in vecs:
            out[n] = vecs[image_id]
        else:
            missing += 1
    if missing:
        log.warning("%d dataset images could not be embedded (see `searchlite errors`)", missing)
    return out


def rerank_scores(first: np.ndarray, second: np.ndarray, candidates: int) -> np.ndarray:
    """Scores whose ranking is: model B's order inside model A's top-``candidates``, then A's order."""
    out = np.full_like(first, -np.inf, dtype=np.float64)
    c = min(candidates, first.shape[1])
    top = np.argsort(-first, axis=1, kind="stable")[:, :c]
    rows = np.arange(first.shape[0])[:, None]
    out[rows, top] = 10.0 + second[rows, top]  # cosines are <= 1, so candidates come first
    rest = out == -np.inf
    out[rest] = first[rest] - 10.0
    return out


def probability_summary(model, scores: np.ndarray, relevant: Sequence[Sequence[int]]) -> dict[str, float]:
    """Median calibrated probability of relevant and of irrelevant pairs (text->image)."""
    a, b = calibration(model)
    probs = sigmoid(a * scores + b)
    mask = np.zeros(scores.shape, dtype=bool)
    for q, rel in enumerate(relevant):
        mask[q, list(rel)] = True
    return {"median_positive": float(np.median(probs[mask])), "median_negative": float(np.median(probs[~mask]))}


class _LibraryIndex:
    """The library's own index (segments + exact tail) behind the interface ``_ann_one`` uses."""

    def __init__(self, index) -> None:
        self.index = index
        self.factory = index.describe()

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = self.index.search(q[0], k)
        return scores[None, :], rows[None, :]


def _ann_one(index, queries: np.ndarray, truth_ids: np.ndarray, k: int) -> dict[str, float]:
    latencies, found = [], []
    for q in queries:
        t = time.perf_counter()
        _, got = index.search(q[None, :], k)
        latencies.append((time.perf_counter() - t) * 1000)
        found.append(got[0])
    recall = np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truth_ids)])
    return {"index": index.factory, f"recall@{k}": float(recall), "p50_ms": float(np.percentile(latencies, 50)),
            "p95_ms": float(np.percentile(latencies, 95))}


def ann_quality(library, spec: str, queries: np.ndarray, k: int = 10,
                types: Sequence[str] = ("flat", "hnsw", "ivf", "ivfpq")) -> dict:
    """recall@k against exact search on the same vectors, with p50/p95 latency: for the library's
    own index (top-level keys) and for each index type built on the same vectors (``by_type``)."""
    import faiss

    from searchlite.vectors import VectorIndex

    row = library.model_row(spec)
    index = library.model_index(row)
    ids = np.concatenate(list(library.catalog.live_rows(row.id)))
    vecs = index.store.get(ids)
    exact = faiss.IndexFlatIP(vecs.shape[1])
    exact.add(vecs)
    kk = min(k, len(ids))
    _, truth = exact.search(queries, kk)
    truth_ids = ids[truth]
    out: dict = _ann_one(_LibraryIndex(index), queries, truth_ids, kk)
    out["vectors"] = int(len(ids))
    out["by_type"] = {}
    for kind in types:
        if kind == "ivfpq" and len(ids) < 1000:
            continue  # product quantisation needs more training vectors than this
        out["by_type"][kind] = _ann_one(VectorIndex.build(kind, vecs.shape[1], ids, vecs), queries, truth_ids, kk)
    return out


def run_image_bench(library, dataset, specs: Sequence[str], ks: Sequence[int] = (1, 5, 10),
                    index_type: str | None = None, progress: Callable[[int, int], None] | None = None) -> dict:
    """Image->image retrieval on labelled images (same class, or listed pairs, = relevant):
    recall@k, MRR and mAP, the query image itself left out."""
    from searchlite.evaluation.datasets import CaptionDataset

    common = _common_folder(dataset.images)
    library.index([common], list(specs), index_type=index_type, progress=progress)
    holder = CaptionDataset(root=common, images=list(dataset.images))
    result: dict = {"dataset": {"images": len(dataset.images)}, "models": {}, "rerank": {}, "ann": {}}
    for spec in specs:
        vecs = dataset_vectors(library, holder, spec)
        sims = vecs @ vecs.T
        np.fill_diagonal(sims, -np.inf)
        result["models"][spec] = {"image_to_image": retrieval_metrics(sims, dataset.relevant, ks, with_map=True),
                                  "model_id": library.model_row(spec).model_id}
        result["ann"][spec] = ann_quality(library, spec, vecs[: min(len(vecs), 500)], k=max(ks))
    return result


def _common_folder(paths: Sequence[Path]) -> Path:
    folders = sorted({p.parent for p in paths})
    common = folders[0]
    while not all(f.is_relative_to(common) for f in folders):
        common = common.parent
    return common


def split_pair(pair: str, known: Sequence[str] = ()) -> tuple[str, str]:
    """Split 'A:B' where the specs may contain ':' themselves (e.g. 'hf:x:openclip:y@z')."""
    from searchlite.errors import ModelLoadError
    from searchlite.models.registry import parse_spec

    candidates = []
    for i, ch in enumerate(pair):
        if ch != ":":
            continue
        a, b = pair[:i], pair[i + 1:]
        try:
            parse_spec(a)
            parse_spec(b)
        except ModelLoadError:
            continue
        candidates.append(((a in known) + (b in known), a, b))
    if not candidates:
        raise DatasetError(f"--rerank takes A:B with two model specs, got {pair!r}")
    _, a, b = max(candidates, key=lambda c: c[0])
    return a, b


def run_bench(library, dataset: CaptionDataset, specs: Sequence[str], reranks: Sequence[str] = (),
              ks: Sequence[int] = (1, 5, 10), template: str | None = None, candidates: int = 100,
              index_type: str | None = None, progress: Callable[[int, int], None] | None = None,
              lang: str | None = None) -> dict:
    """Benchmark models on a captioned dataset; returns the ``--json`` object. ``lang``: the
    captions' language code, for the models that take one (nllb-clip); the others ignore it."""
    if not dataset.images:
        raise DatasetError("the dataset has no images")
    check_template(template)
    common = _common_folder(dataset.images)
    pairs = {pair: split_pair(pair, specs) for pair in reranks}
    needed = list(dict.fromkeys(list(specs) + [s for ab in pairs.values() for s in ab]))
    library.index([common], needed, index_type=index_type, progress=progress)
    texts, relevant, per_image = dataset.queries()
    result: dict = {"dataset": {"images": len(dataset.images), "captions": len(dataset.captions),
                                "queries": len(texts), "problems": len(dataset.problems)},
                    "models": {}, "rerank": {}, "ann": {}}
    sims: dict[str, np.ndarray] = {}
    for spec in needed:
        img = dataset_vectors(library, dataset, spec)
        model_row = library.model_row(spec)
        code = lang if lang and getattr(library.text_encoder(model_row), "default_lang", None) else None
        txt = library.text_vectors(model_row, [template.format(t) if template else t for t in texts], code)
        s = txt @ img.T
        sims[spec] = s
        if spec in specs:
            row = library.model_row(spec)
            entry = {
                "text_to_image": retrieval_metrics(s, relevant, ks),
                "image_to_text": retrieval_metrics(s.T, per_image, ks),
                "probability": probability_summary(row, s, relevant),
                "model_id": row.model_id,
            }
            result["models"][spec] = entry
            result["ann"][spec] = ann_quality(library, spec, txt, k=max(ks))
    for pair, (a, b) in pairs.items():
        t2i = rerank_scores(sims[a], sims[b], candidates)
        i2t = rerank_scores(sims[a].T, sims[b].T, candidates)
        result["rerank"][pair] = {"text_to_image": retrieval_metrics(t2i, relevant, ks),
                                  "image_to_text": retrieval_metrics(i2t, per_image, ks),
                                  "candidates": candidates}
    return result


def format_table(result: dict) -> str:
    """A plain-text table of the bench result."""
    directions = ("text_to_image", "image_to_text", "image_to_image")
    rows = [(m, v) for m, v in result["models"].items()] + [(f"rerank {p}", v) for p, v in result["rerank"].items()]
    first = next((v[d] for _, v in rows for d in directions if d in v), {})
    keys = [k for k in first if k.startswith("recall@")]
    extra = ["mrr"] + (["map"] if "map" in first else [])
    lines = [f"{'model':40} {'direction':14} " + " ".join(f"{k:>10}" for k in keys + extra)]
    for name, v in rows:
        for direction in directions:
            if direction in v:
                m = v[direction]
                lines.append(f"{name[:40]:40} {direction:14} " + " ".join(f"{m[k]:10.4f}" for k in keys + extra))
    for name, v in result["models"].items():
        if "probability" in v:
            p = v["probability"]
            lines.append(f"{name[:40]:40} probability    median correct {p['median_positive']:.3f}, "
                         f"median wrong {p['median_negative']:.4f}")
    for name, a in result["ann"].items():
        for label, entry in [("index", a)] + list(a.get("by_type", {}).items()):
            rk = next(k for k in entry if k.startswith("recall@"))
            lines.append(f"{name[:40]:40} ann {label:6} {entry['index']:20} {rk} {entry[rk]:.4f}  "
                         f"p50 {entry['p50_ms']:.3f} ms  p95 {entry['p95_ms']:.3f} ms")
    return "\n".join(lines)
