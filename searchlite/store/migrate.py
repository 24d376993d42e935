"""Moving a pre-v3 library's vectors out of SQLite into the vector store (resumable).

Chunk by chunk, per model: the blobs are appended to the store and fsynced, then one catalog
transaction maps them and deletes those legacy rows. A crash at any point leaves every vector in
exactly one place (the legacy table, or the store + mapping); the next open carries on. Once the
legacy table is empty it is dropped, the old single-file indexes are removed, the file is
vacuumed (the blobs' pages given back), and the models' index segments are built.
"""

from __future__ import annotations

import logging

import numpy as np
from sqlalchemy import insert, text

from searchlite.catalog import Catalog, VectorRow
from searchlite.faults import crashpoint
from searchlite.locking import library_lock
from searchlite.store import VectorWriter
from searchlite.store.builder import SegmentBuilder
from searchlite.store.segments import model_folder

log = logging.getLogger(__name__)

CHUNK = 20_000


def move_legacy_vectors(catalog: Catalog, chunk: int | None = None) -> int:
    """Move every legacy vector blob into the store; returns how many were moved."""
    chunk = chunk or CHUNK
    moved = 0
    with library_lock(catalog.folder, "index"):
        if not catalog.has_legacy_vectors():
            return 0  # another process finished it while we waited
        log.warning("upgrading %s: moving vectors out of the catalog into vector files", catalog.folder)
        models = catalog.models()
        writer = VectorWriter(catalog, models)
        for model in models:
            while True:
                with catalog.Session() as s:
                    rows = s.execute(text("SELECT seq, image_id, vector FROM embeddings WHERE model_ref = :m "
                                          "ORDER BY seq LIMIT :n"), {"m": model.id, "n": chunk}).all()
                if not rows:
                    break
                vectors = np.frombuffer(b"".join(r.vector for r in rows), dtype=np.float32).reshape(len(rows), -1)
                store_rows = writer.append(model.id, vectors)
                crashpoint("migrate-appended")
                with writer.transaction() as s:
                    s.execute(insert(VectorRow), [dict(model_ref=model.id, store_row=r, image_id=row.image_id)
                                                  for r, row in zip(store_rows, rows)])
                    s.execute(text("DELETE FROM embeddings WHERE model_ref = :m AND seq <= :last"),
                              {"m": model.id, "last": rows[-1].seq})
                crashpoint("migrate-committed")
                moved += len(rows)
        with catalog.WriteSession.begin() as s:
            s.execute(text("DROP TABLE embeddings"))
        for model in models:
            for old in model_folder(catalog, model.id).glob("index-g*-s*.faiss"):
                old.unlink()
        raw = catalog.engine.raw_connection()  # VACUUM runs outside any transaction
        try:
            raw.driver_connection.execute("VACUUM")
        finally:
            raw.close()
        for model in catalog.models(indexed_only=True):
            SegmentBuilder(catalog, model, writer.stores[model.id]).maintain()
    log.warning("upgrade done: %d vectors moved", moved)
    return moved
