"""The Python API: ``Library(path).index(...)``, ``.search(...)``, ``.similar(...)``.

The CLI is a thin layer over this class.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from searchlite.catalog import Catalog, ModelRow
from searchlite.combined import combine, ensemble_text_vector, parse_query
from searchlite.config import DEFAULT_MODEL, default_library
from searchlite.errors import QueryError
from searchlite.index_store import IndexStore
from searchlite.indexer import Indexer, IndexStats
from searchlite.models.base import Embedder
from searchlite.models.registry import load_embedder, parse_spec
from searchlite.query import Filters, SearchResult, search_vectors
from searchlite.vectors import VectorIndex

log = logging.getLogger(__name__)

__all__ = ["Library", "SearchResult", "Filters"]


class Library:
    """A searchlite library folder: catalog.sqlite + per-model vectors and FAISS indexes."""

    def __init__(self, path: str | Path | None = None, *, device: str = "auto", batch_size: int = 32,
                 create: bool = True) -> None:
        self.path = Path(path).expanduser() if path else default_library()
        self.device = device
        self.batch_size = batch_size
        self.catalog = Catalog(self.path, create=create)
        self._indexes: dict[int, tuple[VectorIndex, int]] = {}

    # -- models ------------------------------------------------------------------------------
    def embedder(self, spec: str) -> Embedder:
        return load_embedder(spec, device=self.device, batch_size=self.batch_size)

    def model_row(self, spec: str | None = None) -> ModelRow:
        """The catalog row of a model (default: the first model this library was indexed with)."""
        models = self.catalog.models()
        if not models:
            raise QueryError(f"library {self.path} has no indexed images yet (run `searchlite index PATH`)")
        if spec is None:
            return models[0]
        model_id = parse_spec(spec).model_id
        for m in models:
            if m.model_id == model_id or m.spec == spec:
                return m
        known = ", ".join(m.spec for m in models)
        raise QueryError(f"model {spec} has not indexed this library (indexed with: {known}); "
                         f"run `searchlite index PATH --model {spec}`")

    def vector_index(self, model: ModelRow) -> VectorIndex:
        """The model's FAISS index, caught up with everything committed (cached per process)."""
        current = self.catalog.max_seq(model.id)
        cached = self._indexes.get(model.id)
        if cached is None or cached[1] != current:
            index, seq = IndexStore(self.catalog, model).load()
            self._indexes[model.id] = (index.to_gpu_if_available(), seq)  # GPU FAISS when installed + GPU
        return self._indexes[model.id][0]

    # -- indexing -------------------------------------------------------------------------------
    def index(self, paths: Sequence[str | Path], models: Sequence[str] = (), *, index_type: str | None = None,
              workers: int | None = None, draft: bool = True, include_hidden: bool = False,
              progress: Callable[[int, int], None] | None = None) -> IndexStats:
        """Incrementally index folders with one or more models."""
        specs = list(models) or [m.spec for m in self.catalog.models()] or [DEFAULT_MODEL]
        embedders = [(spec, self.embedder(spec)) for spec in specs]
        indexer = Indexer(self.catalog, embedders, index_type=index_type, batch_size=self.batch_size,
                          workers=workers, draft=draft, include_hidden=include_hidden)
        stats = indexer.run([Path(p) for p in paths], progress=progress)
        self._indexes.clear()
        return stats

    def reindex(self, model: str | None = None, index_type: str = "auto") -> str:
        """Rebuild a model's FAISS index from its stored vectors (no re-embedding)."""
        row = self.model_row(model)
        factory = IndexStore(self.catalog, row).sync(rebuild=True, kind=index_type)
        self._indexes.pop(row.id, None)
        return factory

    # -- queries ----------------------------------------------------------------------------------
    def query_vector(self, text: str, row: ModelRow, template: str | None = None, ensemble: bool = False,
                     ) -> tuple[np.ndarray, set[int]]:
        """The vector of a (possibly combined) query, and the ids of library images used as terms."""
        emb = self.embedder(row.spec)
        own_ids: set[int] = set()

        def texts(values: list[str]) -> np.ndarray:
            if ensemble:
                return np.stack([ensemble_text_vector(emb.embed_texts, v) for v in values])
            return emb.embed_texts([(template or row.template).format(v) for v in values])

        def image(path: str) -> np.ndarray:
            vec, own = self.image_vector(path, row)
            if own is not None:
                own_ids.add(own)
            return vec

        return combine(parse_query(text), texts, image), own_ids

    def search(self, text: str, model: str | None = None, k: int = 20, *, template: str | None = None,
               filters: Filters | None = None, min_prob: float | None = None, sort: str = "relevance",
               ensemble: bool = False) -> list[SearchResult]:
        """Text-to-image search; the text is wrapped in the model's prompt template. Combined
        queries ("beach + sunset - people", "2:cat + dog", "./photo.jpg + snow") are supported;
        ``ensemble`` averages the 80 OpenAI ImageNet templates (CLIP) instead of one template."""
        if not text.strip():
            raise QueryError("empty query")
        row = self.model_row(model)
        query, own_ids = self.query_vector(text, row, template, ensemble)
        return search_vectors(self.catalog, row, self.vector_index(row), query, k, filters, exclude=own_ids,
                              min_prob=min_prob, sort=sort)

    def image_vector(self, image: str | Path, row: ModelRow) -> tuple[np.ndarray, int | None]:
        """A query image's vector: the stored one when the file is in the library, else embedded now."""
        from searchlite.imaging import load_image

        path = Path(image).expanduser()
        if not path.is_file():
            raise QueryError(f"no such image: {image}")
        known = self.catalog.find_image(path)
        if known is not None:
            stored = self.catalog.vectors_for(row.id, [known.id]).get(known.id)
            if stored is not None:
                return stored, known.id
        emb = self.embedder(row.spec)
        try:
            loaded = load_image(path, target_size=emb.image_size)
        except Exception as exc:
            raise QueryError(f"cannot read query image {image}: {exc}") from exc
        return emb.embed_images([loaded.image])[0], known.id if known else None

    def similar(self, image: str | Path, model: str | None = None, k: int = 20, *,
                filters: Filters | None = None, min_prob: float | None = None) -> list[SearchResult]:
        """Image-to-image search; the query image itself is left out of its results."""
        row = self.model_row(model)
        vec, own_id = self.image_vector(image, row)
        exclude = {own_id} if own_id is not None else set()
        return search_vectors(self.catalog, row, self.vector_index(row), vec, k, filters, exclude=exclude,
                              min_prob=min_prob)

    def status(self) -> dict:
        counts = self.catalog.counts()
        counts["library"] = str(self.path)
        counts["roots"] = list(self.catalog.roots().values())
        counts["models"] = [
            {"model": m.spec, "model_id": m.model_id, "family": m.family, "dim": m.dim,
             "index": m.index_factory, "index_type": m.index_type, "stale": m.index_stale,
             "calibrated": m.calib_a is not None}
            for m in self.catalog.models()
        ]
        return counts

    def errors(self) -> list[tuple[str, str]]:
        return self.catalog.errors()
