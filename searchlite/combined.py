"""Combined queries: ``"beach + sunset - people"``, weights ``"2:cat + dog"``, image terms
``"./photo.jpg + snow"``.

Grammar: terms joined by `` + `` or `` - `` (operators need spaces around them, so "t-shirt"
stays one word). A term may start with a weight ``W:`` — a number, a colon, and right after it a
letter, a quote or the start of a path (``./``, ``../``, ``/``, ``~``): ``2:cat``, ``0.5:"a dog"``,
``2:./photo.jpg``. Anything else is literal text (``16:9 panorama``, ``0:00 on a clock``). A term
in matching quotes is literal text without them. A term that names an existing image file is an
image term (its stored or freshly computed embedding); any other term is text, wrapped in the
prompt template. The query vector is
``normalize(sum(sign_i * w_i * normalize(v_i)))``: every term counts by its weight, whatever
the norm of its embedding.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from searchlite.errors import QueryError
from searchlite.imaging import IMAGE_EXTENSIONS

_SPLIT = re.compile(r"\s+([+-])\s+")
#: a weight: a number and a colon followed at once by a letter, a quote or a path ("16:9" is text)
_WEIGHT = re.compile(r"^(-?\d+(?:\.\d+)?):(?=[^\W\d_]|[\"']|\.{1,2}/|/|~)(.+)$")
_QUOTED = re.compile(r"^([\"'])(.*)\1$", re.S)


@dataclass(frozen=True)
class Term:
    weight: float  # signed
    kind: str  # "text" | "image"
    value: str


def parse_query(query: str, base: str | Path | None = None, files: bool = True) -> list[Term]:
    """Split a query into signed, weighted text and image terms; relative image paths are
    resolved against ``base`` (default: the working directory). With ``files=False`` (queries from
    the network) every term is text: nothing on the server's disk is read."""
    parts = _SPLIT.split(f" {query.strip()} ".strip())
    if not parts or not parts[0].strip():
        raise QueryError("empty query")
    terms: list[Term] = []
    signs = ["+"] + parts[1::2]
    for sign, raw in zip(signs, parts[0::2]):
        raw = raw.strip()
        if not raw or re.match(r"^[+-](\s|$)", raw):
            raise QueryError(f"empty term in query: {query!r}")
        weight = 1.0
        m = _WEIGHT.match(raw)
        if m:
            weight, raw = float(m.group(1)), m.group(2).strip()
        quoted = _QUOTED.match(raw)
        if quoted:
            if not quoted.group(2).strip():
                raise QueryError(f"empty term in query: {query!r}")
            terms.append(Term(weight if sign == "+" else -weight, "text", quoted.group(2)))
            continue
        path = Path(raw).expanduser()
        if base is not None and not path.is_absolute():
            path = Path(base) / path
        is_image = files and path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
        if files and path.suffix.lower() in IMAGE_EXTENSIONS and not is_image and raw.startswith((".", "/", "~")):
            raise QueryError(f"image term not found: {raw}")
        terms.append(Term(weight if sign == "+" else -weight, "image" if is_image else "text",
                          str(path) if is_image else raw))
    return terms


def combine(terms: list[Term], text_vectors: Callable[[list[str]], np.ndarray],
            image_vector: Callable[[str], np.ndarray]) -> np.ndarray:
    """The normalised weighted sum of the terms' normalised embeddings."""
    texts = [t.value for t in terms if t.kind == "text"]
    text_vecs = iter(text_vectors(texts)) if texts else iter(())
    total = None
    for t in terms:
        v = next(text_vecs) if t.kind == "text" else image_vector(t.value)
        v = np.asarray(v, dtype=np.float64)
        v = t.weight * v / max(np.linalg.norm(v), 1e-12)
        total = v if total is None else total + v
    norm = np.linalg.norm(total)
    if norm < 1e-9:
        raise QueryError("the query's terms cancel out")
    return (total / norm).astype(np.float32)


def ensemble_text_vector(texts_to_vectors: Callable[[list[str]], np.ndarray], text: str) -> np.ndarray:
    """open_clip-style prompt ensembling over the 80 OpenAI ImageNet templates: normalise each
    template's embedding, average, renormalise."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    vecs = np.asarray(texts_to_vectors([t(text) for t in OPENAI_IMAGENET_TEMPLATES]), dtype=np.float64)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    mean = vecs.mean(axis=0)
    return (mean / np.linalg.norm(mean)).astype(np.float32)
