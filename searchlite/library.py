"""The Python API and the one road every front end takes (CLI, ``serve``, HTTP):
``Library(path).index(...)``, ``.search(...)``, ``.similar(...)``, ``.rerank(...)``, ``.compare(...)``.

Read methods never change what a library is: they may fill caches (re-scoring vectors of a
model that has not indexed the library, recent query embeddings) and record a moved model's
new location, nothing else.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import insert

from searchlite.catalog import Catalog, ModelRow, VectorRow
from searchlite.combined import combine, ensemble_text_vector, parse_query
from searchlite.config import DEFAULT_MODEL, default_library
from searchlite.errors import ModelLoadError, QueryError
from searchlite.indexer import Indexer, IndexStats
from searchlite.locking import library_lock, try_library_lock
from searchlite.models.base import Embedder
from searchlite.models.lazy import LazyEmbedder, is_loaded
from searchlite.models.light import EXPORT_VERSION
from searchlite.models.registry import load_embedder, parse_spec, same_model, stored_spec_missing
from searchlite.models.zoo import query_template
from searchlite.query import Filters, SearchResult, check_template, search_vectors
from searchlite.store import ModelIndex, VectorWriter
from searchlite.store.builder import SegmentBuilder
from searchlite.vectors import INDEX_TYPES

log = logging.getLogger(__name__)

__all__ = ["Library", "SearchResult", "Filters"]

#: Query embeddings kept per model in the library (Immich keeps an LRU of 100).
QUERY_CACHE = 100


class Library:
    """A searchlite library folder: catalog.sqlite + per-model vector files and FAISS segments."""

    def __init__(self, path: str | Path | None = None, *, device: str = "auto", batch_size: int = 32,
                 create: bool = True, precision: str = "auto", resident: bool = True,
                 read_only: bool | None = None, runtime: str = "auto") -> None:
        """``precision``: auto|fp32|bf16|fp16 for the torch models (see :mod:`searchlite.models.precision`);
        ``resident``: a long-lived process (the Python API, ``serve``, the web page), whose query texts
        take the faster of the ONNX fp32 and the torch reduced-precision text tower, measured once;
        the one-shot CLI passes False and keeps the light ONNX path (no torch import).
        ``read_only`` (default: detected, see :class:`Catalog`) opens the library as on read-only media.
        ``runtime``: auto|torch|onnx, the engine of the towers (see :mod:`searchlite.models.runtime`);
        ``precision="int8"`` runs the ONNX engine's validated int8 image tower."""
        from searchlite.models.precision import check_precision
        from searchlite.models.runtime import check_runtime

        self.path = (Path(path).expanduser() if path else default_library()).absolute()
        from searchlite.models.zoo import use_library

        use_library(self.path)  # its models.json adds zoo entries
        self.device = device
        self.batch_size = batch_size
        self.precision = check_precision(precision)
        self.runtime = check_runtime(runtime)
        self.resident = resident
        #: per model row: which text tower answers queries and the one-query timings that chose it
        self.text_paths: dict[int, dict[str, Any]] = {}
        self.catalog = Catalog(self.path, create=create, read_only=read_only)
        self._indexes: dict[int, ModelIndex] = {}
        self._embedders: dict[int, Embedder] = {}
        self._encoders: dict[int, Any] = {}
        self._duplicate_groups: Any = None  # round4-search: duplicate_cache.GroupsCache, made on first use
        #: held by the resident front ends (socket, HTTP) around each call: one request at a time
        self.lock = threading.RLock()
        if self.catalog.has_legacy_vectors():
            from searchlite.store.migrate import move_legacy_vectors

            self.catalog.require_writable("the upgrade of its pre-v3 vectors")
            move_legacy_vectors(self.catalog)

    # -- models ------------------------------------------------------------------------------------
    def embedder(self, spec: str) -> Embedder:
        return load_embedder(spec, device=self.device, batch_size=self.batch_size, precision=self.precision,
                             runtime=self.runtime)

    def embedder_for(self, row: ModelRow) -> Embedder:
        """The model of a catalog row (loaded once per process), with a clear error when its
        stored folder has moved."""
        emb = self._embedders.get(row.id)
        if emb is None:
            self._check_stored_model(row)
            onnx = self._library_onnx(row)
            if onnx is None:  # auto: the engine recorded for the model (e.g. a bundled export's)
                runtime = "onnx" if self.runtime == "auto" and row.runtime == "onnx" else self.runtime
                onnx = load_embedder(row.spec, device=self.device, batch_size=self.batch_size,
                                     precision=self.precision, runtime=runtime)
            emb = self._embedders[row.id] = onnx
        return emb

    # -- engines: a model's own ONNX export in the library (see searchlite.models.runtime) --------------
    def onnx_folder(self, row: ModelRow) -> Path:
        return self.path / "models" / str(row.id) / "onnx"

    def _wants_onnx(self, row: ModelRow) -> bool:
        from searchlite.models.runtime import torch_available

        if self.runtime == "onnx" or self.precision == "int8":
            return True
        return self.runtime == "auto" and (row.runtime == "onnx" or not torch_available())

    def _library_onnx(self, row: ModelRow) -> Embedder | None:
        """The ONNX engine on the library's own export of a model, when it should run there and has one."""
        from searchlite.models.onnx_model import read_model_meta
        from searchlite.models.registry import load_onnx

        folder = self.onnx_folder(row)
        meta = read_model_meta(folder) if self._wants_onnx(row) else None
        if meta is None or meta["model_id"] != row.model_id:
            return None
        return load_onnx(str(folder), self.batch_size, "int8" if self.precision == "int8" else "fp32")

    def _engine(self, row: ModelRow, emb: Embedder) -> tuple[ModelRow, Embedder]:
        """The embedder a model indexes with: the ONNX engine where asked for (exported into the library
        once, validated against torch; a failed export keeps torch and says why), recorded in the row.
        A model not loaded yet (a re-index that may embed nothing) stays unloaded: the choice is made
        when something first needs embedding."""
        if isinstance(emb, LazyEmbedder) and not emb.loaded:
            lazy = LazyEmbedder(lambda: self._engine(row, emb.get())[1], row.spec)
            self._embedders[row.id] = lazy
            return row, lazy
        if getattr(emb, "runtime", "torch") != "onnx" and self._wants_onnx(row):
            from searchlite.models.onnx_export import export_model

            folder = self.onnx_folder(row)
            try:
                done = json.loads((folder / "model.json").read_text()).get("model_id") == row.model_id
            except (OSError, ValueError):
                done = False
            meta = None if done else export_model(emb, folder)
            onnx = self._library_onnx(row)
            if onnx is not None:
                emb = onnx
            else:
                reason = (meta or json.loads((folder / "model.json").read_text())).get("reason")
                log.warning("%s stays on torch: its ONNX export is not valid (%s)", row.spec, reason)
        runtime = getattr(emb, "runtime", "torch")
        if row.runtime != runtime:
            row = self.catalog.update_model(row.id, runtime=runtime)
        self._embedders[row.id] = emb
        return row, emb

    @staticmethod
    def _check_stored_model(row: ModelRow) -> None:
        """A one-line error when the stored folder of a model row has moved (no model loaded)."""
        gone = stored_spec_missing(row.spec)
        if gone is not None:
            raise ModelLoadError(f"the model this library was indexed with is no longer at {gone} (moved or "
                                 f"deleted?); pass --model with its new location, e.g. --model hf:/new/path")

    def find_model(self, spec: str) -> ModelRow | None:
        """The catalog row of a spec's model, matched by weights for local folders; a moved folder's
        new location is recorded so later commands find it without --model."""
        parsed = parse_spec(spec)
        for row in self.catalog.models():
            if same_model(row.model_id, parsed.model_id):
                if row.spec != parsed.canonical and stored_spec_missing(row.spec) is not None \
                        and not self.catalog.read_only:
                    row = self.catalog.update_model(row.id, spec=parsed.canonical)
                return row
        return None

    def model_row(self, spec: str | None = None) -> ModelRow:
        """The row of a model that has indexed this library (default: the first one)."""
        indexed = self.catalog.models(indexed_only=True)
        if not indexed:
            raise QueryError(f"library {self.path} has no indexed images yet (run `searchlite index PATH`)")
        if spec is None:
            return indexed[0]
        row = self.find_model(spec)
        if row is None or not row.indexed:
            known = ", ".join(m.spec for m in indexed)
            raise QueryError(f"model {spec} has not indexed this library (indexed with: {known}); "
                             f"run `searchlite index PATH --model {spec}`")
        return row

    def register(self, spec: str, emb: Embedder, *, indexed: bool, index_type: str | None = None) -> ModelRow:
        """The model's row, created on first use; ``indexed`` only ever turns on (index/import)."""
        if index_type is not None and index_type not in INDEX_TYPES:
            raise QueryError(f"--index must be one of {', '.join(INDEX_TYPES)}")
        canonical = parse_spec(spec).canonical
        row = self.find_model(spec)
        if row is None:
            return self.catalog.add_model(model_id=emb.model_id, spec=canonical, dim=emb.dim, family=emb.family,
                                          scale=emb.score.scale, bias=emb.score.bias, template=emb.template,
                                          probability=probability_rule(emb),
                                          index_type=index_type or "auto", indexed=indexed)
        changes: dict[str, Any] = {}
        if indexed and not row.indexed:
            changes["indexed"] = True
        if index_type and index_type != row.index_type:
            changes["index_type"] = index_type
        if row.spec != canonical:
            changes["spec"] = canonical
        return self.catalog.update_model(row.id, **changes) if changes else row

    def model_index(self, row: ModelRow) -> ModelIndex:
        """The model's searchable index, caught up with everything committed (cached per process)."""
        index = self._indexes.get(row.id)
        if index is None:
            index = self._indexes[row.id] = ModelIndex(self.catalog, row.id, row.dim)
        return index.refresh()

    # -- writing -------------------------------------------------------------------------------------
    def index(self, paths: Sequence[str | Path], models: Sequence[str] = (), *, index_type: str | None = None,
              workers: int | None = None, draft: bool = True, include_hidden: bool = False,
              raw_pairs: str = "prefer-jpeg", progress: Callable[[int, int], None] | None = None,
              engine: str = "local", ray_address: str | None = None, gpus_per_worker: float = 1.0,
              shards: str | Path | None = None, exclude: Sequence[str] | None = None,
              default_excludes: bool | None = None, ocr: bool | None = None) -> IndexStats:
        """Incrementally index folders (or URIs) with one or more models (default: the models that
        have indexed this library, else the default model). ``engine="ray"`` runs decoding and
        embedding on Ray Data (``workers`` = model actors there). ``ocr`` reads the text in photos
        (True/False is kept with the library; None: the library's setting, off by default)."""
        self.catalog.require_writable("index")
        if engine not in ("local", "ray"):
            raise QueryError(f"unknown engine {engine!r}; choose local or ray")

        if models:
            specs = list(models)
        else:
            rows = self.catalog.models(indexed_only=True)
            for row in rows:
                self._check_stored_model(row)  # a clear error if a stored model folder has moved
            specs = [row.spec for row in rows] or [DEFAULT_MODEL]
        # a model the library knows loads only when something needs embedding (scan first); a new
        # one loads now (its row needs its dimension and score parameters)
        loaded = [(spec, LazyEmbedder(lambda spec=spec: self.embedder(spec), spec) if self.find_model(spec)
                   else self.embedder(spec)) for spec in specs]
        pairs = [(self.register(spec, emb, indexed=True, index_type=index_type), emb) for spec, emb in loaded]
        if engine != "ray":  # Ray's actors load the torch model themselves
            pairs = [self._engine(row, emb) for row, emb in pairs]
        from searchlite.indexer.textstage import TextStage, resolve_ocr  # round4-text

        text = TextStage(ocr=resolve_ocr(self.catalog, ocr))
        common = dict(batch_size=self.batch_size, draft=draft, include_hidden=include_hidden, raw_pairs=raw_pairs,
                      excludes=exclude, default_excludes=default_excludes,  # None: the rules stored with each root
                      text=text)
        if engine == "ray":
            from searchlite.indexer.ray_engine import RayIndexer

            indexer: Indexer = RayIndexer(self.catalog, pairs, specs=[spec for spec, _ in loaded], address=ray_address,
                                          gpus_per_worker=gpus_per_worker, ray_workers=workers,
                                          shards=Path(shards) if shards else None, device=self.device,
                                          precision=self.precision, **common)
        else:
            indexer = Indexer(self.catalog, pairs, workers=workers, **common)
        stats = indexer.run(list(paths), progress=progress)
        from searchlite.interchange import claim_roots

        claim_roots(self.catalog, list(paths))  # a folder imported from is the user's own once indexed
        for row, emb in pairs:  # a loaded model: the cheapest moment for the one-time export
            if is_loaded(emb):
                self.export_text(row, emb.get() if isinstance(emb, LazyEmbedder) else emb)
        return stats

    def reindex(self, model: str | None = None, index_type: str = "auto") -> str:
        """Rebuild a model's index segments from its stored vectors (no re-embedding)."""
        self.catalog.require_writable("reindex")
        row = self.model_row(model)
        if index_type not in INDEX_TYPES:
            raise QueryError(f"--index must be one of {', '.join(INDEX_TYPES)}")
        with library_lock(self.path, "reindex"):
            row = self.catalog.update_model(row.id, index_type=index_type)
            writer = VectorWriter(self.catalog, [row])
            factory = SegmentBuilder(self.catalog, row, writer.stores[row.id]).maintain(rebuild=True)
            from searchlite import textindex  # round4-text: the FTS indexes are rebuilt with the vectors

            with self.catalog.WriteSession.begin() as s:
                textindex.rebuild(s)
            return factory

    def compact(self, model: str | None = None) -> dict[str, str]:
        """Fold the exact tail into segments, merge deltas and drop deleted vectors from segments."""
        self.catalog.require_writable("compact")
        rows = [self.model_row(model)] if model else self.catalog.models(indexed_only=True)
        out = {}
        with library_lock(self.path, "compact"):
            for row in rows:
                writer = VectorWriter(self.catalog, [row])
                builder = SegmentBuilder(self.catalog, row, writer.stores[row.id])
                out[row.spec] = builder.maintain(final=False)
        return out

    def import_vectors(self, source: str | Path, model: str, *, root: str | None = None,
                       index_type: str | None = None, progress: Callable[[int, int], None] | None = None) -> dict:
        """Import vectors computed elsewhere from Parquet (see :mod:`searchlite.interchange`)."""
        from searchlite.interchange import import_parquet

        self.catalog.require_writable("import")
        emb = self.embedder(model)
        with library_lock(self.path, "import"):
            row = self.register(model, emb, indexed=True, index_type=index_type)
            summary = import_parquet(self.catalog, row, source, root=root, progress=progress)
        self.export_text(row, emb)
        return summary

    def export_vectors(self, model: str, out: str | Path) -> dict:
        """Write a model's vectors and image metadata as Parquet (the import schema)."""
        from searchlite.interchange import export_parquet

        row = self.model_row(model)
        return export_parquet(self.catalog, row, self.model_index(row).store, Path(out))

    # -- housekeeping (searchlite.duplicates, searchlite.watch) ----------------------------------------
    def duplicates(self, model: str | None = None, threshold: float | None = None, *,
                   filters: Filters | None = None, move_to: str | Path | None = None,
                   hash_distance: int | None = None) -> tuple[list, Any]:
        """Exact and near-duplicate groups (see :mod:`searchlite.duplicates`), largest first, each
        with its suggested keeper first; read-only unless ``move_to``, which moves every non-keeper
        there (under the writer lock) and records the moves. Returns (groups, MoveReport or None).
        Read-only results are computed once per library state (:mod:`searchlite.duplicate_cache`)."""
        from searchlite.duplicate_cache import GroupsCache, images_state
        from searchlite.duplicates import default_threshold, find_duplicates, move_duplicates

        row = self.model_row(model)
        cos = default_threshold(row.spec) if threshold is None else float(threshold)
        if move_to is None:
            index = self.model_index(row).refresh()
            if self._duplicate_groups is None:
                self._duplicate_groups = GroupsCache()
            cache = self._duplicate_groups
            key = cache.key(row.id, index.version, images_state(self.catalog), cos, hash_distance, filters)
            return cache.get(key, lambda: find_duplicates(self.catalog, row, index, cos, filters,
                                                          hash_distance=hash_distance)), None
        self.catalog.require_writable("duplicates --move-to")
        with library_lock(self.path, "duplicates --move-to"):
            groups = find_duplicates(self.catalog, row, self.model_index(row), cos, filters,
                                     hash_distance=hash_distance)
            return groups, move_duplicates(self.catalog, groups, Path(move_to))

    # -- vectors of images -----------------------------------------------------------------------
    def stored_vectors(self, row: ModelRow, image_ids: Sequence[int]) -> dict[int, np.ndarray]:
        """The stored vectors of some images under a model (those that have one)."""
        mapping = self.catalog.rows_of(row.id, image_ids)
        if not mapping:
            return {}
        vectors = self.model_index(row).store.get(np.fromiter(mapping.values(), dtype=np.int64))
        return dict(zip(mapping.keys(), vectors))

    def cache_vectors(self, row: ModelRow, vectors: dict[int, np.ndarray]) -> bool:
        """Keep re-scoring vectors for next time when no writer holds the library (a cache:
        it never makes the model 'indexed'). Returns whether they were stored."""
        if not vectors:
            return False
        if self.catalog.read_only:
            log.info("read-only library: re-scoring vectors not cached")
            return False
        with try_library_lock(self.path) as locked:
            if not locked:
                return False
            writer = VectorWriter(self.catalog, [row])
            have = self.catalog.rows_of(row.id, vectors)
            todo = {i: v for i, v in vectors.items() if i not in have and self.catalog.image(i) is not None}
            if not todo:
                return False
            rows = writer.append(row.id, np.stack(list(todo.values())))
            with writer.transaction() as s:
                s.execute(insert(VectorRow), [dict(model_ref=row.id, store_row=r, image_id=i)
                                              for r, i in zip(rows, todo)])
            return True

    def image_vector(self, image: str | Path, row: ModelRow) -> tuple[np.ndarray, int | None]:
        """A query image's vector: the stored one when the file is in the library, else embedded now."""

        path = Path(image).expanduser()
        if not path.is_file():
            raise QueryError(f"no such image: {image}")
        known = self.catalog.find_image(path)
        if known is not None:
            stored = self.stored_vectors(row, [known.id]).get(known.id)
            if stored is not None:
                return stored, known.id
        return self.embed_image(path, row), known.id if known else None

    def embed_image(self, image: Path | bytes, row: ModelRow) -> np.ndarray:
        """Decode (robustly, with the bomb guard) and embed one query image under a model."""
        from searchlite.imaging import load_image

        emb = self.embedder_for(row)
        try:
            loaded = load_image(image, target_size=emb.image_size)
        except Exception as exc:
            raise QueryError(f"cannot read the query image: {exc}") from exc
        return emb.embed_images([loaded.image])[0]

    # -- text encoders: the light ONNX path when exported and valid, else the torch model ---------------
    def export_folder(self, row: ModelRow) -> Path:
        return self.path / "models" / str(row.id) / "text"

    def text_encoder(self, row: ModelRow) -> Any:
        """What embeds query texts for a model: its validated ONNX export (no torch import) when
        present, else the torch model (loaded once per process). A resident library, or one asked
        for bf16/fp16 explicitly, takes the torch model instead when it runs in a validated
        reduced precision and answers one query faster (see :func:`searchlite.models.precision.faster_text_encoder`)."""
        encoder = self._encoders.get(row.id)
        if encoder is None:
            from searchlite.models.light import load_light_encoder

            light = load_light_encoder(self.export_folder(row))
            if light is None:
                encoder = self.embedder_for(row)
                self.text_paths[row.id] = {"encoder": f"torch-{getattr(encoder, 'precision', 'fp32')}"}
            elif self._wants_onnx(row) or getattr(self._embedders.get(row.id), "runtime", "") == "onnx":
                encoder, self.text_paths[row.id] = light, {"encoder": "onnx-fp32"}  # the model's engine is ONNX
            elif self.resident or self.precision in ("bf16", "fp16"):
                from searchlite.models.precision import faster_text_encoder

                encoder, self.text_paths[row.id] = faster_text_encoder(
                    light, lambda: self.embedder_for(row), self.precision, self.device,
                    prefer_torch=self.precision in ("bf16", "fp16") and not self.resident)
            else:
                encoder, self.text_paths[row.id] = light, {"encoder": "onnx-fp32"}
            self._encoders[row.id] = encoder
        return encoder

    def export_text(self, row: ModelRow, emb: Embedder | None = None, force: bool = False) -> dict:
        """Export (and validate) a model's text tower for the light query path; an existing export
        (or a recorded failure) of the same model is kept unless ``force``."""
        if force:
            self.catalog.require_writable("models export --force")
        folder = self.export_folder(row)
        if emb is None and row.runtime == "onnx":
            emb = self.embedder_for(row)
        if getattr(emb, "runtime", "torch") == "onnx":  # its text tower is exported already
            if (emb.folder / "text" / "meta.json").is_file():
                return _link_text_export(emb.folder / "text", folder)
            return {"valid": False, "reason": "the model's ONNX engine embeds texts itself (Immich's layout)"}
        from searchlite.models.export import export_text_tower

        if not force:
            try:
                meta = json.loads((folder / "meta.json").read_text())
                if meta.get("model_id") == row.model_id and meta.get("version") == EXPORT_VERSION:
                    return meta
            except (OSError, ValueError):
                pass
        meta = export_text_tower(emb or self.embedder_for(row), folder)
        self._encoders.pop(row.id, None)
        return meta

    # -- queries -------------------------------------------------------------------------------------
    def text_vectors(self, row: ModelRow, texts: Sequence[str], lang: str | None = None) -> np.ndarray:
        """Embeddings of already-templated texts under a model; ``lang``: the language code a model
        such as nllb-clip puts in front of the text (None: the model's default)."""
        encoder = self.text_encoder(row)
        if lang is None:
            return encoder.embed_texts(list(texts))
        if getattr(encoder, "default_lang", None) is None:
            raise QueryError(f"model {row.spec} takes no language code (got --lang {lang})")
        return encoder.embed_texts(list(texts), lang=lang)

    def _cached_query_vectors(self, row: ModelRow, keys: list[str], compute: Callable[[list[int]], np.ndarray],
                              ) -> np.ndarray:
        """Query embeddings through the library's query cache (the last QUERY_CACHE per model)."""
        found = self.catalog.cached_queries(row.id, keys)
        missing = [i for i, key in enumerate(keys) if key not in found]
        if missing:
            found.update({keys[i]: v for i, v in zip(missing, compute(missing))})
        self.catalog.cache_queries(row.id, {key: found[key] for key in keys}, keep=QUERY_CACHE)  # hits refreshed
        return np.stack([found[key] for key in keys])

    def query_vector(self, text: str, row: ModelRow, template: str | None = None, ensemble: bool = False,
                     cwd: str | Path | None = None, files: bool = True,
                     lang: str | None = None) -> tuple[np.ndarray, set[int]]:
        """The vector of a (possibly combined) query, and the ids of library images used as terms."""
        template = check_template(template)  # None: the model's template for each term's language
        own_ids: set[int] = set()
        tag = f"{lang}\x1f" if lang else ""  # a language asked for is part of the cache key

        def texts(values: list[str]) -> np.ndarray:
            if ensemble:
                return self._cached_query_vectors(row, [f"ensemble\x1f{tag}{v}" for v in values], lambda todo: np.stack(
                    [ensemble_text_vector(lambda t: self.text_vectors(row, t, lang), values[i]) for i in todo]))
            prompts = [(template or query_template(row.spec, row.family, row.template, v)).format(v) for v in values]
            return self._cached_query_vectors(row, [f"text\x1f{tag}{p}" for p in prompts],
                                              lambda todo: self.text_vectors(row, [prompts[i] for i in todo], lang))

        def image(path: str) -> np.ndarray:
            vec, own = self.image_vector(path, row)
            if own is not None:
                own_ids.add(own)
            return vec

        return combine(parse_query(text, base=cwd, files=files), texts, image), own_ids

    def search(self, text: str, model: str | None = None, k: int = 20, *, offset: int = 0,
               template: str | None = None, filters: Filters | None = None, min_prob: float | None = None,
               sort: str = "relevance", ensemble: bool = False, cwd: str | Path | None = None,
               files: bool = True, lang: str | None = None, mode: str = "hybrid",
               fusion: str = "prob") -> list[SearchResult]:
        """Text-to-image search; the text is wrapped in the model's prompt template. Combined
        queries ("beach + sunset - people", "2:cat + dog", "./photo.jpg + snow") are supported;
        ``ensemble`` averages the 80 OpenAI ImageNet templates (CLIP) instead of one template;
        ``files=False`` treats every term as text (queries that come from the network); ``lang``:
        the query's language code for models that take one (nllb-clip: FLORES-200, e.g. zho_Hans).
        ``mode``: ``hybrid`` (the embedding fused with the photos' text, results gain ``matches``),
        ``vector`` (the embedding alone) or ``text``; ``fusion``: ``prob`` or ``rrf`` (see searchlite.hybrid)."""
        if not text.strip():
            raise QueryError("empty query")
        _check_page(k, offset)
        # round4-hybrid
        from searchlite import hybrid

        hybrid.check_mode(mode, fusion)
        row = self.model_row(model)
        query, own_ids = self.query_vector(text, row, template, ensemble, cwd, files, lang=lang)
        if mode == "vector":
            return search_vectors(self.catalog, row, self.model_index(row), query, k, filters, exclude_images=own_ids,
                                  min_prob=min_prob, sort=sort, offset=offset)
        return hybrid.search(self.catalog, row, self.model_index(row), query, text, k, filters,
                             exclude_images=own_ids, min_prob=min_prob, sort=sort, offset=offset, mode=mode,
                             fusion=fusion, cwd=cwd, files=files)

    def similar(self, image: str | Path | int | bytes, model: str | None = None, k: int = 20, *, offset: int = 0,
                filters: Filters | None = None, min_prob: float | None = None,
                sort: str = "relevance") -> list[SearchResult]:
        """Image-to-image search from a file, an image's bytes (an upload) or a library image id;
        the query image itself is left out."""
        _check_page(k, offset)
        row = self.model_row(model)
        if isinstance(image, np.ndarray):  # a query vector already embedded by this model (an HTTP upload)
            vec, own_id = np.asarray(image, dtype=np.float32), None
        elif isinstance(image, bytes):
            vec, own_id = self.embed_image(image, row), None
        elif isinstance(image, int):
            vec = self.stored_vectors(row, [image]).get(image)
            if vec is None:
                raise QueryError(f"no indexed image with id {image}")
            own_id: int | None = image
        else:
            vec, own_id = self.image_vector(image, row)
        exclude = {own_id} if own_id is not None else set()
        return search_vectors(self.catalog, row, self.model_index(row), vec, k, filters, exclude_images=exclude,
                              min_prob=min_prob, sort=sort, offset=offset)

    def rerank(self, text: str, first: str | None, second: str, k: int = 20, **kwargs: Any) -> list[SearchResult]:
        """First stage from ``first``'s index, re-scored by ``second`` (see :func:`searchlite.rerank.rerank`)."""
        from searchlite.rerank import rerank

        return rerank(self, text, first, second, k, **kwargs)

    def compare(self, text: str, specs: Sequence[str], k: int = 10, **kwargs: Any) -> dict[str, list[SearchResult]]:
        """Side-by-side top-k of several models (see :func:`searchlite.rerank.compare`)."""
        from searchlite.rerank import compare

        return compare(self, text, specs, k, **kwargs)

    def calibrate(self, dataset: Any, spec: str, bench_library: Library, **kwargs: Any) -> dict:
        """Fit Platt scaling for a model on a dataset embedded in ``bench_library``; store it here."""
        from searchlite.calibration import calibrate

        return calibrate(bench_library, dataset, spec, target=self, **kwargs)

    def scores(self, text: str, image_id: int) -> dict[str, dict]:
        """Every indexed model's score of one image for a text query (models without its vector skipped)."""
        from searchlite.query import calibration, sigmoid

        out = {}
        for row in self.catalog.models(indexed_only=True):
            vec = self.stored_vectors(row, [image_id]).get(image_id)
            if vec is None:
                continue
            q, _ = self.query_vector(text, row, files=False)
            cos = float(vec @ q)
            a, b = calibration(row)
            out[row.spec] = {"score": cos, "logit": float(row.scale * cos + row.bias),
                             "probability": float(sigmoid(a * cos + b))}
        if not out:
            raise QueryError(f"no indexed image with id {image_id}")
        return out

    # -- information ---------------------------------------------------------------------------------
    def status(self) -> dict:
        counts = self.catalog.counts()
        counts["library"] = str(self.path)
        counts["roots"] = list(self.catalog.roots().values())
        models = []
        for m in self.catalog.models():
            entry = {"model": m.spec, "model_id": m.model_id, "family": m.family, "dim": m.dim,
                     "indexed": m.indexed, "index_type": m.index_type, "calibrated": m.calib_a is not None,
                     "precision": json.loads(m.precision) if m.precision else {},  # vectors written per precision
                     "runtime": m.runtime or "torch"}
            if m.indexed:
                index = self.model_index(m)
                entry.update(index=index.describe(), stale=int(len(index.snap.tombstones)))
            models.append(entry)
        counts["models"] = models
        from searchlite.indexer.textstage import text_status  # round4-text

        counts.update(text_status(self.catalog))
        return counts

    def errors(self) -> list[tuple[str, str]]:
        """(path, reason) of files that could not be read, then of photos whose OCR failed."""
        from searchlite.indexer.textstage import text_errors  # round4-text

        return self.catalog.errors() + text_errors(self.catalog)

    def image(self, image_id: int) -> tuple[Any, str] | None:
        """(catalog row, absolute path) of an image id, or None."""
        return self.catalog.image(image_id)


def zoo_listing(library: str | Path | None = None) -> list[dict]:
    """The model zoo as a list of objects (``alias``, ``spec``, ``family``, ``languages``, ``dim``,
    ``license``, ``params``, ``indexed``, ``default``, ...), with ``indexed`` true for the models that
    have indexed the library; models of the library the zoo does not list follow (alias None).
    Reads the library only if it exists (never creates one)."""
    from searchlite.errors import SearchliteError
    from searchlite.models.zoo import entries

    rows: list[ModelRow] = []
    try:
        rows = Library(library, create=False).catalog.models(indexed_only=True)
    except SearchliteError:
        pass  # no library there: nothing is indexed
    claimed: set[int] = set()
    out = []
    for alias, entry in entries().items():
        try:
            model_id = parse_spec(alias).model_id
        except ModelLoadError:
            model_id = None
        mine = [r for r in rows if model_id is not None and same_model(r.model_id, model_id)]
        claimed.update(r.id for r in mine)
        out.append({**entry.as_dict(), "indexed": bool(mine), "default": alias == DEFAULT_MODEL})
    for r in rows:
        if r.id not in claimed:
            out.append({"alias": None, "spec": r.spec, "family": r.family, "languages": [], "dim": r.dim,
                        "license": "?", "params": None, "templates": [r.template], "text": {}, "defaults": {},
                        "description": "", "lang": None, "indexed": True, "default": False})
    return out


def _link_text_export(source: Path, folder: Path) -> dict:
    """The ONNX engine's text tower as the library's light query export (hard links where possible)."""
    import os
    import shutil

    from searchlite.models.light import read_meta

    meta = read_meta(folder)
    if meta is not None:
        return meta
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, folder, copy_function=link)
    return read_meta(folder) or {}


def probability_rule(emb: Embedder) -> str:
    """How a model's scores become probabilities: its own sigmoid ("sigmoid") or a Platt fit ("platt")."""
    rule = getattr(emb, "probability", None)
    if rule in ("sigmoid", "platt"):
        return rule
    return "sigmoid" if emb.score.bias != 0.0 else "platt"


def _check_page(k: int, offset: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise QueryError(f"k must be a positive integer, got {k!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise QueryError(f"offset must be a non-negative integer, got {offset!r}")
