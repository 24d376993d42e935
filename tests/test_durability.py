"""kill -9 at every step of a vector-store write, a segment build / compaction and the v2 -> v3
migration (``SEARCHLITE_CRASH_AT`` makes a real subprocess SIGKILL itself there): nothing
committed is lost, nothing is duplicated, searches stay exact, and a rerun completes."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_storage import brute, synthetic, write_parquet

from searchlite.library import Library
from searchlite.query import search_vectors

FIXTURES = Path(__file__).parent / "fixtures"


def _run(args: list[str], crash: str | None = None, code: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "SEARCHLITE_NO_SERVER": "1"}
    if crash:
        env["SEARCHLITE_CRASH_AT"] = crash
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "searchlite", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True)


def _state(lib_dir: Path) -> tuple[int, int, int]:
    """(committed store rows, live vectors, distinct images with a vector), read with plain sqlite3."""
    with sqlite3.connect(lib_dir / "catalog.sqlite") as conn:
        rows = conn.execute("SELECT store_rows FROM models").fetchone()[0]
        live, images = conn.execute("SELECT count(*), count(DISTINCT image_id) FROM vectors").fetchone()
    return rows, live, images


def _assert_exact(lib_dir: Path, vectors: np.ndarray, alive: int, spec: str) -> None:
    lib = Library(lib_dir, device="cpu")
    row = lib.model_row(spec)
    for q in synthetic(5, seed=21):
        got = [r.image_id - 1 for r in search_vectors(lib.catalog, row, lib.model_index(row), q, 10, None)]
        assert len(set(got) & set(brute(vectors[:alive], q, 10))) >= 9 and max(got) < alive


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("parts")
    vectors = synthetic(3000, seed=2)
    for n in range(3):
        write_parquet(folder / f"part{n}.parquet", vectors[n * 1000:(n + 1) * 1000], start=n * 1000)
    return folder, vectors


@pytest.mark.slow
@pytest.mark.parametrize("point", ["store-written:2", "store-synced:2"])
def test_a_crash_while_writing_vectors_loses_nothing_committed(tmp_path, parts, hf_siglip, point):
    folder, vectors = parts
    spec = f"hf:{hf_siglip}"
    lib_dir = tmp_path / "lib"
    crashed = _run(["import", str(folder), "-m", spec, "-L", str(lib_dir), "--index", "hnsw"], crash=point)
    assert crashed.returncode == -9
    assert _state(lib_dir) == (1000, 1000, 1000)  # the first batch, committed; the second never was
    _assert_exact(lib_dir, vectors, 1000, spec)
    done = _run(["import", str(folder), "-m", spec, "-L", str(lib_dir), "--index", "hnsw"])
    assert done.returncode == 0, done.stderr
    rows, live, images = _state(lib_dir)
    assert (live, images) == (3000, 3000)  # every image exactly once
    assert rows == 4000  # part0 re-imported replaced its 1000 vectors; the half-written batch was discarded
    assert (lib_dir / "vectors" / "1" / "rows-000000.f32").stat().st_size == 4000 * 32 * 4
    _assert_exact(lib_dir, vectors, 3000, spec)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["segment-written", "segment-renamed", "segments-committed"])
def test_a_crash_while_building_or_replacing_segments_keeps_search_exact(tmp_path, parts, hf_siglip, point):
    folder, vectors = parts
    spec = f"hf:{hf_siglip}"
    lib_dir = tmp_path / "lib"
    assert _run(["import", str(folder), "-m", spec, "-L", str(lib_dir), "--index", "hnsw"]).returncode == 0
    crashed = _run(["reindex", "--index", "ivf", "-L", str(lib_dir)], crash=point)
    assert crashed.returncode == -9
    assert _state(lib_dir) == (3000, 3000, 3000)
    _assert_exact(lib_dir, vectors, 3000, spec)  # old or new segments, never a half
    assert _run(["reindex", "--index", "ivf", "-L", str(lib_dir)]).returncode == 0
    files = sorted(p.name for p in (lib_dir / "vectors" / "1").iterdir() if p.name.startswith("seg-"))
    assert len(files) == 1 and files[0].endswith(".faiss")  # leftovers of the crash were removed
    _assert_exact(lib_dir, vectors, 3000, spec)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["migrate-appended:2", "migrate-committed:2"])
def test_a_crash_during_the_v3_migration_resumes_without_loss(tmp_path, point):
    lib_dir = tmp_path / "lib"
    shutil.copytree(FIXTURES / "library-v2", lib_dir)
    with sqlite3.connect(lib_dir / "catalog.sqlite") as conn:
        blobs = {i: np.frombuffer(b, np.float32) for i, b in conn.execute("SELECT image_id, vector FROM embeddings")}
    code = ("import sys, searchlite.store.migrate as m; m.CHUNK = 5\n"
            "from searchlite.library import Library; Library(sys.argv[1])")
    crashed = _run([str(lib_dir)], crash=point, code=code)
    assert crashed.returncode == -9
    with sqlite3.connect(lib_dir / "catalog.sqlite") as conn:
        legacy = conn.execute("SELECT count(*) FROM embeddings").fetchone()[0]
        moved = conn.execute("SELECT count(*) FROM vectors").fetchone()[0]
    assert legacy + moved == 13 and moved in (5, 10)  # each vector in exactly one place
    lib = Library(lib_dir, device="cpu")  # resumes
    row = lib.model_row("demo")
    got = lib.stored_vectors(row, list(blobs))
    assert set(got) == set(blobs)
    for image_id, vec in blobs.items():
        np.testing.assert_array_equal(got[image_id], vec)
    rows, live, images = _state(lib_dir)
    assert (live, images) == (13, 13) and rows >= 13
