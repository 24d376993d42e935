"""The hybrid retrieval benchmark (``searchlite bench DATASET --hybrid``): recall@1/5 and MRR@10 of
``--mode vector``, ``text`` and ``hybrid`` (both fusions) on a set written by
:mod:`searchlite.sample_data.hybrid`, for all queries ("mixed"), the caption-only ones and each kind.

Text rows come from the generator's ground truth (``truth``: isolates the search side) or from the
index stage's own extraction (``extracted``: OCR, EXIF GPS places, XMP sidecars), when this build has it.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from searchlite.errors import SearchliteError
from searchlite.evaluation.metrics import recall_mrr

log = logging.getLogger(__name__)

#: (label, mode, fusion) of each method measured
METHODS = (("vector", "vector", "prob"), ("text", "text", "prob"), ("hybrid-prob", "hybrid", "prob"),
           ("hybrid-rrf", "hybrid", "rrf"))
DEPTH = 10


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_truth(library: Any, folder: Path) -> int:
    """Write the generator's ground-truth text rows (and positions, and name rows) into the library."""
    from sqlalchemy import select

    from searchlite.catalog import ImageRow
    from searchlite.textindex import replace_fields
    from searchlite.textnorm import name_words

    truth = {t["image"]: t for t in _jsonl(folder / "truth.jsonl")}
    written = 0
    with library.catalog.Session.begin() as s:
        for row in s.scalars(select(ImageRow)):
            t = truth.get(Path(row.relpath).name)
            if t is None:
                continue
            replace_fields(s, row.id, {"name": name_words(Path(row.relpath).name), **t["fields"]})
            row.lat, row.lon = t["lat"], t["lon"]
            written += 1
    return written


def index_set(library: Any, folder: Path, spec: str, source: str) -> None:
    """Index the set's photos and give them their text rows (``truth`` or ``extracted``)."""
    if source == "extracted":
        if "ocr" not in inspect.signature(library.index).parameters:
            raise SearchliteError("--extracted needs the index stage that reads text (index --ocr), which this "
                                  "build does not have; use --truth")
        library.index([folder], [spec], ocr=True)
        return
    if source != "truth":
        raise SearchliteError(f"unknown text source {source!r} (truth or extracted)")
    library.index([folder], [spec])
    load_truth(library, folder)


def run_hybrid_bench(library: Any, folder: str | Path, spec: str, source: str = "truth",
                     ks: Sequence[int] = (1, 5)) -> dict:
    """Index the set, run every query in every method, and return the metrics per query set."""
    folder = Path(folder).expanduser().resolve()
    if not (folder / "queries.jsonl").is_file() or not (folder / "truth.jsonl").is_file():
        raise SearchliteError(f"{folder} is not a hybrid benchmark set (python -m searchlite.sample_data.hybrid OUT)")
    index_set(library, folder, spec, source)
    queries = _jsonl(folder / "queries.jsonl")
    ranks: dict[str, list[int]] = {label: [] for label, _, _ in METHODS}
    identical = []
    for q in queries:
        relevant = set(q["relevant"])
        tops = {}
        for label, mode, fusion in METHODS:
            results = library.search(q["query"], spec, DEPTH, mode=mode, fusion=fusion, files=False)
            names = [Path(r.path).name for r in results]
            tops[label] = [r.image_id for r in results]
            ranks[label].append(next((i + 1 for i, n in enumerate(names) if n in relevant), 0))
        if q["kind"] == "caption":
            identical.append(tops["hybrid-prob"] == tops["vector"])
    kinds = [q["kind"] for q in queries]
    sets = {"mixed": [True] * len(queries), "caption": [k == "caption" for k in kinds],
            "text-channel": [not k.startswith("caption") for k in kinds]}
    sets.update({kind: [k == kind for k in kinds] for kind in sorted(set(kinds))})
    table: dict[str, dict[str, dict[str, float]]] = {}
    for name, mask in sets.items():
        mask_arr = np.array(mask, dtype=bool)
        table[name] = {}
        for label in ranks:
            # a query missed in the top DEPTH counts as a miss (rank 0 is left out of recall_mrr's means)
            r = np.array(ranks[label], dtype=np.int64)[mask_arr]
            scored = recall_mrr(np.where(r > 0, r, DEPTH + 1), ks, mrr_at=DEPTH)
            table[name][label] = {**{f"R@{k}": scored[f"recall@{k}"] for k in ks}, "MRR@10": scored[f"mrr@{DEPTH}"],
                                  "queries": int(mask_arr.sum())}
    return {"dataset": str(folder), "model": spec, "source": source, "images": len(_jsonl(folder / "captions.jsonl")),
            "table": table, "caption_top10_identical": float(np.mean(identical)) if identical else None}


def format_hybrid_table(result: dict) -> str:
    """The benchmark as a fixed-width table: one row per (query set, method)."""
    lines = [f"hybrid benchmark: {result['images']} images, model {result['model']}, text from {result['source']}",
             f"{'queries':<14} {'n':>4}  {'method':<12} {'R@1':>6} {'R@5':>6} {'MRR@10':>7}"]
    for name, methods in result["table"].items():
        for label, m in methods.items():
            lines.append(f"{name:<14} {m['queries']:>4}  {label:<12} {m['R@1']:>6.3f} {m['R@5']:>6.3f} "
                         f"{m['MRR@10']:>7.3f}")
    if result["caption_top10_identical"] is not None:
        lines.append(f"caption-only queries with hybrid top-10 == vector top-10: "
                     f"{100 * result['caption_top10_identical']:.0f}%")
    return "\n".join(lines)
