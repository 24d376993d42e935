"""Platt scaling for CLIP and ALIGN: fit ``probability = sigmoid(a * cos + b)`` on a captioned dataset.

Positives are (image, one of its captions) pairs; negatives are (image, caption of another
image) pairs sampled at ``negatives`` per positive. Quality is reported as expected calibration
error (10 equal-width bins) and Brier score, before (the uncalibrated fallback) and after fitting.
"""

from __future__ import annotations

import numpy as np


def fit_platt(cos: np.ndarray, labels: np.ndarray, iterations: int = 100) -> tuple[float, float]:
    """Maximum-likelihood (a, b) of ``sigmoid(a*cos + b)`` (logistic regression, L-BFGS in torch)."""
    import torch

    x = torch.as_tensor(np.asarray(cos, dtype=np.float64))
    y = torch.as_tensor(np.asarray(labels, dtype=np.float64))
    params = torch.tensor([10.0, 0.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([params], lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(params[0] * x + params[1], y)
        loss.backward()
        return loss

    opt.step(closure)
    a, b = params.detach().tolist()
    return float(a), float(b)


def expected_calibration_error(prob: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """Weighted mean |accuracy - confidence| over equal-width probability bins."""
    prob, labels = np.asarray(prob, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(prob, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(labels[mask].mean() - prob[mask].mean())
    return float(ece)


def brier(prob: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean((np.asarray(prob, dtype=np.float64) - labels) ** 2))


def sample_pairs(sims: np.ndarray, relevant: list[list[int]], negatives: int = 10, seed: int = 0,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(cosines, labels) of all positive (query, image) pairs and sampled negative pairs."""
    rng = np.random.default_rng(seed)
    cos, labels = [], []
    n_images = sims.shape[1]
    for q, rel in enumerate(relevant):
        rel_set = set(rel)
        for i in rel:
            cos.append(sims[q, i])
            labels.append(1.0)
        draws = rng.integers(0, n_images, size=negatives * max(1, len(rel)))
        for i in draws:
            if int(i) not in rel_set:
                cos.append(sims[q, i])
                labels.append(0.0)
    return np.asarray(cos), np.asarray(labels)


def calibrate(library, dataset, spec: str, target=None, negatives: int = 10, template: str | None = None) -> dict:
    """Fit (a, b) for a model on a dataset embedded in ``library`` (a bench library), and store
    them in ``target`` (default: ``library``) without making the model 'indexed' there."""
    import json

    from searchlite.evaluation.bench import dataset_vectors
    from searchlite.query import calibration, check_template, sigmoid

    check_template(template)
    library.index([dataset.root], [spec])
    texts, relevant, _ = dataset.queries()
    row = library.model_row(spec)
    img = dataset_vectors(library, dataset, spec)
    txt = library.text_vectors(row, [template.format(t) if template else t for t in texts])
    cos, labels = sample_pairs(txt @ img.T, relevant, negatives)
    a0, b0 = calibration(row)
    before = sigmoid(a0 * cos + b0)
    a, b = fit_platt(cos, labels)
    after = sigmoid(a * cos + b)
    report = {"model": spec, "a": a, "b": b, "pairs": int(len(labels)), "positives": int(labels.sum()),
              "before": {"ece": expected_calibration_error(before, labels), "brier": brier(before, labels),
                         "a": a0, "b": b0},
              "after": {"ece": expected_calibration_error(after, labels), "brier": brier(after, labels)}}
    if row.probability == "sigmoid":
        report["note"] = "a sigmoid-trained model (SigLIP) uses its own logit scale and bias; the fit is reported, not applied"
    fitted = {"calib_report": json.dumps(report)}
    if row.probability != "sigmoid":
        fitted.update(calib_a=a, calib_b=b)
    for lib in {id(library): library, id(target): target}.values():
        if lib is not None:
            model = lib.find_model(spec) or lib.register(spec, library.embedder(spec), indexed=False)
            lib.catalog.update_model(model.id, **fitted)
    return report
