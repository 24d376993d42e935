"""The FAISS wrapper: choice by size, factory strings, selectors, atomic save, mmap load."""

from __future__ import annotations

import numpy as np
import pytest

from searchlite.vectors import (
    VectorIndex,
    bitmap_selector,
    choose_type,
    excluding_selector,
    factory_string,
    nlist_for,
    training_size,
)


def _vectors(n: int, d: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 8)) @ rng.normal(size=(8, d)) + 0.1 * rng.normal(size=(n, d))
    return (latent / np.linalg.norm(latent, axis=1, keepdims=True)).astype(np.float32)


def _exact(vecs: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    return ids[np.argsort(-(vecs @ q.T).T, axis=1, kind="stable")[:, :k]]


def test_auto_choice_by_size_and_ivf_sizing():
    assert choose_type(1_000) == "flat"
    assert choose_type(500_000) == "ivf"
    assert choose_type(4_000_000) == "ivf"
    assert choose_type(5_000_000) == "ivfpq"
    assert factory_string("hnsw", 500_000, 768) == "IDMap,HNSW32,SQ8"
    assert factory_string("ivf", 1_000_000, 768) == "IVF4000,SQ8"
    assert factory_string("ivfpq", 10_000_000, 768) == "IVF4096,PQ96x8"
    for n in (1_000, 100_000, 1_000_000, 10_000_000, 100_000_000):
        nlist = nlist_for(n)
        # FAISS wants >= 39 training points per list; we train on 64 per list (or everything)
        if nlist > 1:
            assert training_size(nlist, n) >= min(n, 39 * nlist) and training_size(nlist, n) <= 256 * nlist
        assert n // nlist >= 39
    assert nlist_for(100_000_000) == 10_000  # grows with sqrt(n) past the CPU cap


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_exact_top_k_on_small_set(kind):
    vecs = _vectors(600)
    ids = np.arange(1000, 1600, dtype=np.int64)
    index = VectorIndex.build(kind, 32, ids, vecs)
    assert index.kind == kind and index.ntotal == 600
    queries = _vectors(20, seed=1)
    _, got = index.search(queries, 10)
    if kind in ("hnsw", "ivf"):  # 8-bit codes: the right neighbours, in nearly the right order (the store re-scores)
        overlap = np.mean([len(set(g) & set(e)) / 10 for g, e in zip(got, _exact(vecs, ids, queries, 10))])
        assert overlap >= 0.95
    else:
        np.testing.assert_array_equal(got, _exact(vecs, ids, queries, 10))


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_selectors_filter_inside_the_search(kind):
    vecs = _vectors(3000)
    ids = np.arange(3000, dtype=np.int64) * 2  # sparse ids, like store rows after deletions
    index = VectorIndex.build(kind, 32, ids, vecs)
    q = _vectors(5, seed=3)
    allowed = ids[::7]
    selector, keep = bitmap_selector(allowed, int(ids.max()) + 1)
    for one in q:
        _, got = index.search(one[None], 10, selector=selector, selectivity=len(allowed) / len(ids))
        expected = _exact(vecs[::7], allowed, one[None], 10)
        assert set(got[0]) <= set(allowed)
        assert len(set(got[0]) & set(expected[0])) >= 9
    rejected = _exact(vecs, ids, q, 5)[:, :3].reshape(-1)
    selector, keep = excluding_selector(rejected)
    _, got = index.search(q, 5, selector=selector)
    assert not set(got.reshape(-1)) & set(rejected)
    del keep


def test_ivf_removes_ids_and_saves_atomically_and_maps(tmp_path):
    vecs = _vectors(2000)
    ids = np.arange(2000, dtype=np.int64)
    index = VectorIndex.build("ivf", 32, ids, vecs)
    assert index.remove(np.array([0, 1, 2])) == 3
    assert VectorIndex.build("hnsw", 32, ids[:50], vecs[:50]).remove(np.array([0])) == 0  # graphs cannot
    path = tmp_path / "index.faiss"
    index.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["index.faiss"]  # no temp file left behind
    loaded = VectorIndex.load(path, index.factory, mmap=True)
    assert loaded.kind == "ivf" and loaded.ntotal == 1997
    _, got = loaded.search(vecs[:1], 5)
    assert 0 not in got[0]
