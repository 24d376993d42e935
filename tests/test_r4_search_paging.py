"""Round 4, issue 26 item 3: paging reaches every image on IVF and HNSW, in the exact order within
tolerance, without recomputing earlier pages; a --min-prob result set is complete."""

from __future__ import annotations

import numpy as np
import pytest
from test_storage import synthetic, write_parquet

from searchlite.library import Library
from searchlite.query import calibration, search_vectors, sigmoid
from searchlite.store.segments import ModelIndex

N = 5000


@pytest.fixture(scope="module")
def five_k(tmp_path_factory, hf_siglip):
    folder = tmp_path_factory.mktemp("paging")
    vectors = synthetic(N, seed=26)
    write_parquet(folder / "v.parquet", vectors)
    lib = Library(folder / "lib", device="cpu")
    lib.import_vectors(folder / "v.parquet", f"hf:{hf_siglip}")
    return lib, vectors, f"hf:{hf_siglip}"


@pytest.fixture
def count_searches(monkeypatch):
    calls = {"n": 0}
    search, exact = ModelIndex.search, getattr(ModelIndex, "exact_ranking", None)

    def counted(self, *args, **kwargs):
        calls["n"] += 1
        return search(self, *args, **kwargs)

    def counted_exact(self, *args, **kwargs):
        calls["n"] += 1
        return exact(self, *args, **kwargs)

    monkeypatch.setattr(ModelIndex, "search", counted)
    if exact is not None:
        monkeypatch.setattr(ModelIndex, "exact_ranking", counted_exact)
    return calls


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_r4_paging_reaches_every_image_in_exact_order(five_k, kind, count_searches):
    lib, vectors, spec = five_k
    lib.reindex(spec, kind)
    row = lib.model_row(spec)
    index = lib.model_index(row).refresh()
    assert index.segments and index.segments[0][1].kind == kind
    q = np.random.default_rng(3).normal(size=vectors.shape[1])
    q = (q / np.linalg.norm(q)).astype(np.float32)
    count_searches["n"] = 0
    pages = [search_vectors(lib.catalog, row, index, q, 100, offset=off) for off in range(0, N + 200, 100)]
    searches = count_searches["n"]
    ids = [r.image_id - 1 for p in pages for r in p]  # image ids follow the Parquet rows (1-based)
    assert len(ids) == N and len(set(ids)) == N  # every image once: no gap, no repeat
    assert [r.rank for p in pages for r in p] == list(range(1, N + 1))
    # the order: each position's exact cosine is the brute-force ranking's at that position, within tolerance
    exact = np.sort(vectors @ q)[::-1]
    got = vectors[ids] @ q
    assert np.abs(got - exact).max() < 0.05
    assert np.abs(got - exact).mean() < 0.002
    top = set(np.argsort(-(vectors @ q), kind="stable")[:100].tolist())
    assert len(top & set(ids[:100])) >= 95
    # 52 pages: windows double, so a handful of searches, not one (or more) per page
    assert searches <= 12, searches
    count_searches["n"] = 0
    again = search_vectors(lib.catalog, row, index, q, 100, offset=2500)
    assert [r.image_id - 1 for r in again] == ids[2500:2600]
    assert count_searches["n"] == 0  # page 25 read the kept ranking: nothing recomputed


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_r4_min_prob_result_set_is_complete(five_k, kind):
    lib, vectors, spec = five_k
    lib.reindex(spec, kind)
    row = lib.model_row(spec)
    index = lib.model_index(row).refresh()
    a, b = calibration(row)
    q = vectors[17] + 0.2 * synthetic(1, seed=17)[0]
    q = (q / np.linalg.norm(q)).astype(np.float32)
    probs = sigmoid(a * (vectors.astype(np.float64) @ q) + b)
    for p in np.quantile(probs, [0.5, 0.8]):  # 2,500 and 1,000 images above the cut
        expected = set(np.flatnonzero(probs >= p + 1e-6).tolist())
        borderline = set(np.flatnonzero(np.abs(probs - p) <= 1e-6).tolist())
        got = []
        for off in range(0, N, 250):
            got += [r.image_id - 1 for r in search_vectors(lib.catalog, row, index, q, 250, offset=off,
                                                           min_prob=float(p))]
        assert len(got) == len(set(got))
        assert expected <= set(got) <= expected | borderline
