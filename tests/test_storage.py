"""Storage that scales (small sizes): vector files + segment indexes, filters inside the search,
O(changes) writes, Parquet import/export. Every ranking is checked against brute force."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from searchlite.cli.main import app
from searchlite.library import Library
from searchlite.query import Filters, search_vectors
from searchlite.store import builder

runner = CliRunner()
DIM = 32  # the tiny SigLIP's embedding size


def synthetic(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    """Low-intrinsic-dimension clustered unit vectors (how real embeddings behave)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, 8))
    latent = centres[rng.integers(0, 20, n)] + 0.6 * rng.normal(size=(n, 8))
    x = latent @ rng.normal(size=(8, dim)) + 0.05 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_parquet(path: Path, vectors: np.ndarray, start: int = 0, folder: str = "/data/photos", **extra) -> Path:
    n = len(vectors)
    table = {"path": [f"{folder}/{(start + i) % 7}/img{start + i:06d}.jpg" for i in range(n)],
             "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1]),
             "size": [1000 + start + i for i in range(n)], "mtime_ns": [10**18 + start + i for i in range(n)],
             "taken_at": [datetime(2020, 1, 1) + timedelta(days=start + i) for i in range(n)],
             "width": [100 + (start + i) % 50 for i in range(n)], "height": [80] * n}
    table.update(extra)
    pq.write_table(pa.table(table), path)
    return path


def brute(vectors: np.ndarray, q: np.ndarray, k: int, mask: np.ndarray | None = None) -> list[int]:
    scores = vectors @ q
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    order = np.lexsort((np.arange(len(scores)), -scores))[:k]
    return [int(i) for i in order if np.isfinite(scores[i])]


def ranks(lib: Library, row, q: np.ndarray, k: int, filters: Filters | None = None) -> list[int]:
    """Result image ids of a raw vector query (ids are 1.. in import order)."""
    return [r.image_id - 1 for r in search_vectors(lib.catalog, row, lib.model_index(row), q, k, filters)]


@pytest.fixture()
def imported(tmp_path, hf_siglip):
    vectors = synthetic(3000)
    write_parquet(tmp_path / "v.parquet", vectors)
    lib = Library(tmp_path / "lib", device="cpu")
    summary = lib.import_vectors(tmp_path / "v.parquet", f"hf:{hf_siglip}")
    assert summary["imported"] == 3000 and summary["skipped"] == 0
    return lib, vectors, f"hf:{hf_siglip}"


# ivfpq here is PQ4x6 (24 bits a vector at d=32), re-scored exactly: recall is bounded by the candidates
@pytest.mark.parametrize("kind, floor", [("flat", 1.0), ("hnsw", 0.97), ("ivf", 0.95), ("ivfpq", 0.9)])
def test_every_index_type_finds_the_exact_top_k(imported, kind, floor):
    lib, vectors, spec = imported
    from searchlite.vectors import kind_of

    described = lib.reindex(spec, kind)
    assert (kind_of(described) if kind != "flat" else described) == ("exact (flat)" if kind == "flat" else kind)
    row = lib.model_row(spec)
    index = lib.model_index(row)
    if kind in ("ivf", "ivfpq"):
        seg_index = index.segments[0][1]
        assert seg_index.nlist >= 30  # enough lists that nprobe matters: not everything is scanned
    queries = synthetic(40, seed=9)
    hits = sum(len(set(ranks(lib, row, q, 10)) & set(brute(vectors, q, 10))) for q in queries)
    assert hits / 400 >= floor


def test_filters_give_the_exact_top_k_among_matching_images(imported):
    lib, vectors, spec = imported
    lib.reindex(spec, "hnsw")
    row = lib.model_row(spec)
    ids = np.arange(len(vectors))
    days = ids  # taken_at = 2020-01-01 + i days
    folder = ids % 7
    q = synthetic(1, seed=5)[0]
    cases = [
        (Filters(folder=Path("/data/photos/3")), folder == 3),  # ~14%: ANN with a bitmap selector
        (Filters(after=datetime(2020, 1, 1) + timedelta(days=100), before=datetime(2020, 1, 1) + timedelta(days=129)),
         (days >= 100) & (days <= 129)),  # 1%: scored exactly
        (Filters(glob="*/5/img00*.jpg", min_width=140), (folder == 5) & (ids < 10000) & (100 + ids % 50 >= 140)),
    ]
    for filters, mask in cases:
        got = ranks(lib, row, q, 10, filters)
        expected = brute(vectors, q, 10, mask)
        assert len(set(got) & set(expected)) >= 9 and all(mask[i] for i in got)
    # a highly selective filter is exact, whatever the index
    got = ranks(lib, row, q, 10, cases[1][0])
    assert got == brute(vectors, q, 10, cases[1][1])


def test_export_then_import_gives_identical_results(imported, tmp_path, hf_siglip):
    lib, vectors, spec = imported
    out = runner.invoke(app, ["export", str(tmp_path / "out.parquet"), "-m", spec, "-L", str(lib.path), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["rows"] == 3000
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.schema.field("vector").type == pa.list_(pa.float32(), DIM)
    copy = Library(tmp_path / "copy", device="cpu")
    copy.import_vectors(tmp_path / "out.parquet", spec)
    a, b = lib.model_row(spec), copy.model_row(spec)
    for q in synthetic(5, seed=11):
        left = search_vectors(lib.catalog, a, lib.model_index(a), q, 10, None)
        right = search_vectors(copy.catalog, b, copy.model_index(b), q, 10, None)
        assert [(r.path, r.score, r.taken_at, r.width) for r in left] == [(r.path, r.score, r.taken_at, r.width)
                                                                          for r in right]


def test_import_skips_bad_rows_and_refuses_a_bad_schema(tmp_path, hf_siglip):
    good = synthetic(6)
    vectors = pa.array([list(good[0]), list(good[1][:5]), [float("nan")] * DIM, list(good[3]), [0.0] * DIM,
                        list(good[5])], pa.list_(pa.float32()))
    pq.write_table(pa.table({"path": ["/p/a.jpg", "/p/b.jpg", "/p/c.jpg", "relative.jpg", "/p/e.jpg", "/p/a.jpg"],
                             "vector": vectors}), tmp_path / "mixed.parquet")
    lib = Library(tmp_path / "lib", device="cpu")
    summary = lib.import_vectors(tmp_path / "mixed.parquet", f"hf:{hf_siglip}")
    assert (summary["imported"], summary["skipped"]) == (1, 4)  # /p/a.jpg twice: the last row wins
    reasons = " ".join(summary["problems"])
    for reason in ("vector length is not 32", "NaN", "absolute or a URI", "all zeros"):
        assert reason in reasons
    row = lib.model_row(f"hf:{hf_siglip}")
    stored = lib.stored_vectors(row, [1])[1]
    np.testing.assert_allclose(stored, good[5], atol=1e-6)
    pq.write_table(pa.table({"path": ["/p/x.jpg"], "embedding": [[0.1] * DIM]}), tmp_path / "wrong.parquet")
    out = runner.invoke(app, ["import", str(tmp_path / "wrong.parquet"), "-m", f"hf:{hf_siglip}",
                              "-L", str(tmp_path / "lib")])
    assert out.exit_code == 1 and "no 'vector' column" in str(out.exception)


def test_import_replaces_vectors_and_index_trusts_matching_files(tmp_path, hf_siglip):
    from PIL import Image

    from searchlite.imaging import load_image

    photos = tmp_path / "photos"
    photos.mkdir()
    paths = []
    for i in range(4):
        path = photos / f"p{i}.png"
        Image.new("RGB", (20 + i, 20), (60 * i, 0, 0)).save(path)
        paths.append(path)
    emb_spec = f"hf:{hf_siglip}"
    lib = Library(tmp_path / "lib", device="cpu")
    emb = lib.embedder(emb_spec)
    computed = emb.embed_images([load_image(p, target_size=emb.image_size).image for p in paths])
    stats = [p.stat() for p in paths]
    pq.write_table(pa.table({
        "path": [str(p) for p in paths],
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(computed.reshape(-1)), DIM),
        "size": [s.st_size for s in stats[:3]] + [None],
        "mtime_ns": [s.st_mtime_ns for s in stats[:3]] + [None],
        "sha256": [None, None, None, __import__("hashlib").sha256(paths[3].read_bytes()).hexdigest()]}),
        tmp_path / "done-elsewhere.parquet")
    assert lib.import_vectors(tmp_path / "done-elsewhere.parquet", emb_spec)["imported"] == 4
    run = lib.index([photos], [emb_spec])
    # size + mtime match (3), or the content hash does (1): nothing re-embedded
    assert (run.added, run.updated, run.unchanged) == (0, 0, 4)
    # a second import of the same path replaces its vector (and the old one is gone from search)
    flipped = -computed[:1]
    write = {"path": [str(paths[0])], "vector": pa.FixedSizeListArray.from_arrays(pa.array(flipped.reshape(-1)), DIM)}
    pq.write_table(pa.table(write), tmp_path / "again.parquet")
    assert lib.import_vectors(tmp_path / "again.parquet", emb_spec)["replaced"] == 1
    row = lib.model_row(emb_spec)
    top = search_vectors(lib.catalog, row, lib.model_index(row), flipped[0], 4, None)
    assert top[0].path == str(paths[0]) and top[0].score == pytest.approx(1.0, abs=1e-5)
    assert len(top) == 4


def _write_count() -> int:
    with open("/proc/self/io") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("wchar"))


def test_adding_images_writes_bytes_proportional_to_them(tmp_path, hf_siglip, monkeypatch):
    """Adding 50 images costs the same bytes whether the library holds 5,000 or 10,000 (O(new)),
    and a small fraction of a full build."""
    monkeypatch.setattr(builder, "TAIL_KEEP", 100)  # small thresholds, so 5,000 vectors make segments
    vectors = synthetic(10100)
    spec = f"hf:{hf_siglip}"
    for name, lo, hi in (("base", 0, 5000), ("add1", 5000, 5050), ("grow", 5050, 10050), ("add2", 10050, 10100)):
        write_parquet(tmp_path / f"{name}.parquet", vectors[lo:hi], start=lo)
    lib = Library(tmp_path / "lib", device="cpu")
    lib.register(spec, lib.embedder(spec), indexed=True, index_type="hnsw")  # model loaded before counting

    def written(name: str) -> int:
        with lib.catalog.engine.connect() as conn:  # start from an empty WAL: count only this step's pages
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        before = _write_count()
        lib.import_vectors(tmp_path / f"{name}.parquet", spec)
        return _write_count() - before

    full = written("base")
    small = written("add1")
    written("grow")
    large = written("add2")
    # 1% more images: a small share of a full build (the catalog's b-tree pages dominate at d=32;
    # benchmarks/scale.py measures the 5% target at 1M x 768)
    assert small <= 0.1 * full, (small, full)
    assert large <= 1.25 * small + 32_768, (small, large)  # independent of the library's size
    row = lib.model_row(spec)
    assert lib.model_index(row).describe().startswith("IDMap,HNSW32")
    q = synthetic(1, seed=3)[0]
    assert ranks(lib, row, q, 10)[:5] == brute(vectors, q, 5)


def test_segments_stay_exact_through_adds_deletes_merges_and_compaction(tmp_path, hf_siglip, monkeypatch):
    monkeypatch.setattr(builder, "TAIL_KEEP", 150)
    monkeypatch.setattr(builder, "MAX_DELTAS", 2)
    vectors = synthetic(2400, seed=4)
    spec = f"hf:{hf_siglip}"
    lib = Library(tmp_path / "lib", device="cpu")
    lib.register(spec, lib.embedder(spec), indexed=True, index_type="hnsw")
    alive = np.zeros(len(vectors), dtype=bool)
    seen = set()
    for step, start in enumerate(range(0, 2400, 400)):
        write_parquet(tmp_path / f"part{step}.parquet", vectors[start:start + 400], start=start)
        lib.import_vectors(tmp_path / f"part{step}.parquet", spec)
        alive[start:start + 400] = True
        # delete a few images of earlier batches (as a sweep would): tombstones
        victims = np.flatnonzero(alive)[::37][:8]
        with lib.catalog.WriteSession.begin() as s:
            from searchlite.catalog import ImageRow

            s.execute(ImageRow.__table__.delete().where(ImageRow.id.in_([int(v) + 1 for v in victims])))
        alive[victims] = False
        row = lib.model_row(spec)
        index = lib.model_index(row)
        seen.add(len(index.segments))
        for q in synthetic(3, seed=step):
            got = ranks(lib, row, q, 10)
            assert all(alive[i] for i in got)
            assert len(set(got) & set(brute(vectors, q, 10, alive))) >= 9
        if step == 3:
            lib.compact()
    assert max(seen) >= 2  # deltas were made along the way, and merged (MAX_DELTAS)


def test_a_no_op_index_run_writes_no_image_rows(tmp_path, hf_siglip):
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(30):
        Image.new("RGB", (16, 16), (i * 8, 0, 0)).save(photos / f"{i}.png")
    lib = Library(tmp_path / "lib", device="cpu")
    lib.index([photos], [f"hf:{hf_siglip}"])
    with lib.catalog.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE writes (n INTEGER)")
        for event in ("INSERT", "UPDATE", "DELETE"):
            conn.exec_driver_sql(f"CREATE TRIGGER count_{event.lower()} AFTER {event} ON images "
                                 "BEGIN INSERT INTO writes VALUES (1); END")
    stats = lib.index([photos])
    assert stats.unchanged == 30
    with lib.catalog.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM writes").scalar() == 0
    os.utime(photos / "3.png", ns=(1, 1))
    lib.index([photos])
    with lib.catalog.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM writes").scalar() == 1  # only the touched file


def test_scoring_scattered_rows_across_vector_files_equals_brute_force(tmp_path):
    from searchlite.store.vectorstore import VectorStore

    vectors = synthetic(5000, seed=3)
    store = VectorStore(tmp_path / "store", DIM, 0, file_rows=700)  # 8 files: rows cross file boundaries
    store.append(vectors)
    store.committed = len(vectors)
    rng = np.random.default_rng(1)
    q = synthetic(1, seed=4)[0]
    for rows in (rng.choice(5000, 3000, replace=False), np.arange(690, 720), np.array([4999, 0, 699, 700])):
        np.testing.assert_allclose(store.dot(rows, q, chunk=256), vectors[rows] @ q, rtol=0, atol=1e-6)
    with pytest.raises(IndexError):
        store.dot(np.array([5000]), q)


def test_filter_row_sets_are_exact_also_past_sqlites_string_limit(imported):
    """The filter's rows come back as one group_concat string; a match too long for SQLite's
    length limit is read row by row instead, with the same answer."""
    import sqlite3

    from sqlalchemy import event

    from searchlite.query import allowed_rows

    lib, vectors, spec = imported
    row = lib.model_row(spec)
    ids = np.arange(len(vectors))
    cases = [(Filters(folder=Path("/data/photos/3")), ids % 7 == 3),
             (Filters(after=datetime(2020, 1, 1) + timedelta(days=100), before=datetime(2020, 1, 1) + timedelta(days=129)),
              (ids >= 100) & (ids <= 129)),
             (Filters(glob="/nowhere/*"), np.zeros(len(ids), bool))]

    def expected(mask):
        mapping = lib.catalog.rows_of(row.id, [int(i) + 1 for i in ids[mask]])
        return sorted(mapping.values())

    for filters, mask in cases:
        assert allowed_rows(lib.catalog, row, filters).tolist() == expected(mask)
    engine = lib.catalog.engine

    def small_limit(dbapi_connection, _record):
        dbapi_connection.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 2000)  # ~400 rows of text

    engine.dispose()
    event.listen(engine, "connect", small_limit)
    try:
        for filters, mask in cases:
            assert allowed_rows(lib.catalog, row, filters).tolist() == expected(mask)
        with engine.connect() as conn:  # the limit really applied: the group_concat form fails
            from sqlalchemy import text
            from sqlalchemy.exc import DBAPIError

            with pytest.raises(DBAPIError, match="too big"):
                conn.execute(text("SELECT group_concat(store_row) FROM vectors")).scalar()
    finally:
        event.remove(engine, "connect", small_limit)
        engine.dispose()
