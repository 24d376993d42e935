"""FAISS index types: choice by size, exact top-k on small sets, deletes, atomic save/load."""

from __future__ import annotations

import numpy as np
import pytest

from searchlite.vectors import VectorIndex, choose_type, factory_string


def _vectors(n: int, d: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 8)) @ rng.normal(size=(8, d)) + 0.1 * rng.normal(size=(n, d))
    return (latent / np.linalg.norm(latent, axis=1, keepdims=True)).astype(np.float32)


def _exact(vecs: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    return ids[np.argsort(-(vecs @ q.T).T, axis=1, kind="stable")[:, :k]]


def test_auto_choice_by_size():
    assert choose_type(1_000) == "flat"
    assert choose_type(500_000) == "hnsw"
    assert choose_type(5_000_000) == "ivf"
    assert choose_type(50_000_000) == "ivfpq"
    assert factory_string("ivf", 1_000_000, 768) == "IVF4000,Flat"
    assert factory_string("ivfpq", 1_000_000, 768).startswith("IVF4000,PQ96")


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_exact_top_k_on_small_set(kind):
    vecs = _vectors(600)
    ids = np.arange(1000, 1600, dtype=np.int64)
    index = VectorIndex.build(kind, 32, ids, vecs)
    assert index.kind == kind and index.ntotal == 600
    queries = _vectors(20, seed=1)
    _, got = index.search(queries, 10)
    np.testing.assert_array_equal(got, _exact(vecs, ids, queries, 10))


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_delete_and_atomic_save_load(tmp_path, kind):
    vecs = _vectors(200)
    ids = np.arange(200, dtype=np.int64)
    index = VectorIndex.build(kind, 32, ids, vecs)
    removed = index.remove(np.array([0, 1, 2]))
    assert removed == (kind != "hnsw")  # HNSW cannot remove: filtered at search instead
    path = tmp_path / "index.faiss"
    index.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["index.faiss"]  # no temp file left behind
    loaded = VectorIndex.load(path)
    assert loaded.kind == kind and loaded.ntotal == (197 if removed else 200)
    _, got = loaded.search(vecs[:1], 5)
    assert (0 not in got[0]) == removed
