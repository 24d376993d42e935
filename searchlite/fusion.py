"""Fusing the embedding ranking with the text channel's evidence.

Two rules, measured against each other by ``searchlite bench DATASET --hybrid``:

- ``prob`` (the default, "calibrated"): the embedding's calibrated probability ``p`` and the text
  channel's evidence ``t`` (0..1: how much a match in that field says the photo is meant, see
  :data:`searchlite.textquery.FIELD_EVIDENCE`) combine as independent signals, ``1 - (1-p)(1-t)``
  (noisy-OR). A photo without text evidence keeps ``p`` exactly, so photos the text does not match keep
  the embedding's order among themselves, and a query no text matches keeps the embedding's ranking.
- ``rrf``: reciprocal rank fusion, ``1/(60 + vector rank) + 1/(60 + text rank)`` (Cormack et al. 2009):
  scale-free, but it also reorders photos by rank alone, whatever the scores say.

Ties break on the embedding's order, then the image id, so results are deterministic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

FUSIONS = ("prob", "rrf")
RRF_K = 60


def noisy_or(p: float, t: float) -> float:
    """The probability that at least one of two independent signals is right."""
    return 1.0 - (1.0 - p) * (1.0 - t)


def fuse(vector_order: Sequence[int], probability: Mapping[int, float], evidence: Mapping[int, float],
         text_order: Sequence[int], method: str = "prob") -> list[tuple[int, float]]:
    """The fused ranking as (image id, fused score), best first.

    ``vector_order``: every candidate image id in the embedding's order (all text hits included);
    ``probability``: their calibrated probabilities; ``evidence``: text evidence of the text hits;
    ``text_order``: the text hits, best first."""
    if method not in FUSIONS:
        raise ValueError(f"unknown fusion {method!r}; choose one of {', '.join(FUSIONS)}")
    vrank = {image_id: r for r, image_id in enumerate(vector_order)}
    if method == "prob":
        scored = [(i, noisy_or(probability[i], evidence.get(i, 0.0))) for i in vector_order]
    else:
        trank = {image_id: r for r, image_id in enumerate(text_order)}
        scored = [(i, 1.0 / (RRF_K + 1 + vrank[i]) + (1.0 / (RRF_K + 1 + trank[i]) if i in trank else 0.0))
                  for i in vector_order]
    scored.sort(key=lambda pair: (-pair[1], vrank[pair[0]], pair[0]))
    return scored
