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
from searchlite.query import calibration, sigmoid

log = logging.getLogger(__name__)


def dataset_vectors(library, dataset: CaptionDataset, spec: str) -> np.ndarray:
    """Image vectors of a dataset under one model, from the (bench) library; (n_images, d)."""
    row = library.model_row(spec)
    ids = []
    for path in dataset.images:
        found = library.catalog.find_image(path)
        ids.append(found.id if found is not None else None)
    vecs = library.catalog.vectors_for(row.id, [i for i in ids if i is not None])
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


def ann_quality(library, spec: str, queries: np.ndarray, k: int = 10) -> dict[str, float]:
    """recall@k of the library's index against exact search on the same vectors, and latency."""
    import faiss

    row = library.model_row(spec)
    index = library.vector_index(row)
    chunks = list(library.catalog.iter_vectors(row.id))
    ids = np.concatenate([c[0] for c in chunks])
    vecs = np.concatenate([c[1] for c in chunks])
    exact = faiss.IndexFlatIP(vecs.shape[1])
    exact.add(vecs)
    kk = min(k, len(ids))
    _, truth = exact.search(queries, kk)
    truth_ids = ids[truth]
    latencies, found = [], []
    for q in queries:
        t = time.perf_counter()
        _, got = index.search(q[None, :], kk)
        latencies.append((time.perf_counter() - t) * 1000)
        found.append(got[0])
    recall = np.mean([len(set(f) & set(t)) / kk for f, t in zip(found, truth_ids)])
    return {"index": index.factory, f"recall@{kk}": float(recall), "p50_ms": float(np.percentile(latencies, 50)),
            "p95_ms": float(np.percentile(latencies, 95)), "vectors": int(len(ids))}


def run_bench(library, dataset: CaptionDataset, specs: Sequence[str], reranks: Sequence[str] = (),
              ks: Sequence[int] = (1, 5, 10), template: str | None = None, candidates: int = 100,
              index_type: str | None = None, progress: Callable[[int, int], None] | None = None) -> dict:
    """Benchmark models on a captioned dataset; returns the ``--json`` object."""
    if not dataset.images:
        raise DatasetError("the dataset has no images")
    folders = sorted({p.parent for p in dataset.images})
    common = Path(*Path(folders[0]).parts[: min(len(Path(f).parts) for f in folders)]) if folders else dataset.root
    while not all(f.is_relative_to(common) for f in folders):
        common = common.parent
    needed = list(dict.fromkeys(list(specs) + [s for pair in reranks for s in pair.split(":", 1)]))
    library.index([common], needed, index_type=index_type, progress=progress)
    texts, relevant, per_image = dataset.queries()
    result: dict = {"dataset": {"images": len(dataset.images), "captions": len(dataset.captions),
                                "queries": len(texts), "problems": len(dataset.problems)},
                    "models": {}, "rerank": {}, "ann": {}}
    sims: dict[str, np.ndarray] = {}
    for spec in needed:
        emb = library.embedder(spec)
        img = dataset_vectors(library, dataset, spec)
        txt = emb.embed_texts([template.format(t) if template else t for t in texts])
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
    for pair in reranks:
        a, b = pair.split(":", 1)
        t2i = rerank_scores(sims[a], sims[b], candidates)
        i2t = rerank_scores(sims[a].T, sims[b].T, candidates)
        result["rerank"][pair] = {"text_to_image": retrieval_metrics(t2i, relevant, ks),
                                  "image_to_text": retrieval_metrics(i2t, per_image, ks),
                                  "candidates": candidates}
    return result


def format_table(result: dict) -> str:
    """A plain-text table of the bench result."""
    lines = []
    keys = [k for k in next(iter(result["models"].values()))["text_to_image"] if k.startswith("recall@")] \
        if result["models"] else []
    header = f"{'model':40} {'direction':14} " + " ".join(f"{k:>10}" for k in keys) + f" {'mrr':>8}"
    lines.append(header)
    rows = [(m, v) for m, v in result["models"].items()] + [(f"rerank {p}", v) for p, v in result["rerank"].items()]
    for name, v in rows:
        for direction in ("text_to_image", "image_to_text"):
            m = v[direction]
            lines.append(f"{name[:40]:40} {direction:14} " + " ".join(f"{m[k]:10.4f}" for k in keys)
                         + f" {m['mrr']:8.4f}")
    for name, v in result["models"].items():
        p = v["probability"]
        lines.append(f"{name[:40]:40} probability    median correct {p['median_positive']:.3f}, "
                     f"median wrong {p['median_negative']:.4f}")
    for name, a in result["ann"].items():
        rk = next(k for k in a if k.startswith("recall@"))
        lines.append(f"{name[:40]:40} ann {a['index']:18} {rk} {a[rk]:.4f}  p50 {a['p50_ms']:.3f} ms  "
                     f"p95 {a['p95_ms']:.3f} ms")
    return "\n".join(lines)
