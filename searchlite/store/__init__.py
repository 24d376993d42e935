"""Vector storage: append-only vector files per model (the truth for vectors) and the FAISS
segments derived from them. Storage knows nothing of models beyond their dimension."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
from sqlalchemy import update
from sqlalchemy.orm import Session

from searchlite.catalog import Catalog, ModelRow
from searchlite.store.segments import ModelIndex, model_folder
from searchlite.store.vectorstore import VectorStore

__all__ = ["ModelIndex", "VectorStore", "VectorWriter", "model_folder"]


class VectorWriter:
    """Appends vectors for several models and commits their store sizes with the catalog rows
    that reference them (library lock held): ``append`` (written + fsynced), then
    ``with writer.transaction() as session:`` add those rows; the store sizes are recorded in
    the same transaction, and a failed transaction forgets the appended vectors."""

    def __init__(self, catalog: Catalog, models: list[ModelRow]) -> None:
        self.catalog = catalog
        self.stores: dict[int, VectorStore] = {}
        for m in models:
            self.add_model(m)

    def add_model(self, model: ModelRow) -> VectorStore:
        store = self.stores.get(model.id)
        if store is None:
            fresh = self.catalog.model(model.id)
            store = VectorStore(model_folder(self.catalog, model.id), fresh.dim, fresh.store_rows)
            store.discard_uncommitted()
            self.stores[model.id] = store
        return store

    def append(self, model_ref: int, vectors: np.ndarray) -> range:
        return self.stores[model_ref].append(vectors)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        """The catalog transaction that commits what was appended since the last one."""
        try:
            with self.catalog.WriteSession.begin() as s:
                yield s
                self.record(s)
        except BaseException:
            self.rollback()
            raise
        self.committed()

    def record(self, s: Session) -> None:
        for model_ref, store in self.stores.items():
            if store.written != store.committed:
                s.execute(update(ModelRow).where(ModelRow.id == model_ref).values(store_rows=store.written))

    def committed(self) -> None:
        for store in self.stores.values():
            store.mark_committed(store.written)

    def rollback(self) -> None:
        for store in self.stores.values():
            store.rollback()
