"""Round 4 (scan): `import` takes format names through the scan's alias table, type-checks the
optional columns, refuses a non-Parquet file in one line, and resolves a relative --root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select

from searchlite.catalog import ImageRow
from searchlite.errors import LibraryError
from searchlite.library import Library
from searchlite.query import Filters


@pytest.fixture(scope="module")
def dim() -> int:
    from searchlite.models.registry import load_embedder

    return load_embedder("demo", device="cpu").dim


def _table(paths: list[str], dim: int, **columns) -> pa.Table:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((len(paths), dim)).astype(np.float32)
    return pa.table({"path": paths, "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
                     **columns})


def _formats(lib: Library) -> dict[str, str]:
    with lib.catalog.Session() as s:
        return {rel: fmt for rel, fmt in s.execute(select(ImageRow.relpath, ImageRow.format))}


def test_format_values_go_through_the_alias_table(tmp_path, dim):
    photos = tmp_path / "photos"
    names = ["a.jpg", "b.tif", "c.jpeg", "d.heic", "e.png"]
    pq.write_table(_table([str(photos / n) for n in names], dim, format=["jpg", "tif", "MPO", "heic", "Png"]),
                   tmp_path / "v.parquet")
    lib = Library(tmp_path / "lib", device="cpu")
    lib.import_vectors(tmp_path / "v.parquet", "demo", root=str(photos))
    # the documented aliases (imaging.FORMATS): jpg/MPO -> JPEG, tif -> TIFF, heic -> HEIF
    assert _formats(lib) == {"a.jpg": "JPEG", "b.tif": "TIFF", "c.jpeg": "JPEG", "d.heic": "HEIF", "e.png": "PNG"}
    found = lib.search("anything", k=10, filters=Filters(formats=("jpg",)))
    assert sorted(Path(r.path).name for r in found) == ["a.jpg", "c.jpeg"]


@pytest.mark.parametrize("column,values,bad_row", [
    ("width", ["640", "wide", "3"], 1),
    ("height", [None, 2.5, 3], 1),
    ("size", ["x", "1", "1"], 0),
    ("sha256", ["0" * 64, "xyz", None], 1),
    ("camera", [1, 2, 3], 0),
])
def test_optional_columns_are_type_checked(tmp_path, dim, column, values, bad_row):
    paths = [str(tmp_path / "p" / f"{i}.jpg") for i in range(3)]
    pq.write_table(_table(paths, dim, **{column: pa.array(values, pa.string() if column != "height" else None)
                                         if column != "camera" else pa.array(values)}), tmp_path / "v.parquet")
    lib = Library(tmp_path / "lib", device="cpu")
    with pytest.raises(LibraryError) as err:
        lib.import_vectors(tmp_path / "v.parquet", "demo")
    message = str(err.value)
    assert "\n" not in message and f"'{column}'" in message and f"row {bad_row}" in message
    with lib.catalog.Session() as s:
        assert s.scalar(select(func.count()).select_from(ImageRow)) == 0  # refused before any write


def test_integral_floats_are_whole_numbers(tmp_path, dim):
    paths = [str(tmp_path / "p" / f"{i}.jpg") for i in range(2)]
    pq.write_table(_table(paths, dim, width=[640.0, None]), tmp_path / "v.parquet")
    lib = Library(tmp_path / "lib", device="cpu")
    lib.import_vectors(tmp_path / "v.parquet", "demo")
    with lib.catalog.Session() as s:
        assert sorted(s.scalars(select(ImageRow.width)), key=str) == [640, None]


def test_a_file_that_is_not_parquet_is_one_line_and_a_nonzero_exit(tmp_path):
    bad = tmp_path / "vectors.parquet"
    bad.write_text("path,vector\n/x.jpg,1 2 3\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-m", "searchlite.cli.main", "import", str(bad), "-m", "demo",
                          "-L", str(tmp_path / "lib")], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "not a readable Parquet file" in out.stderr and str(bad) in out.stderr


def test_a_relative_root_is_taken_from_the_current_folder(tmp_path, dim, monkeypatch):
    photos = tmp_path / "photos"
    pq.write_table(_table([str(photos / "2023" / "a.jpg"), str(photos / "b.jpg")], dim), tmp_path / "v.parquet")
    monkeypatch.chdir(tmp_path)
    lib = Library(tmp_path / "lib", device="cpu")
    lib.import_vectors(tmp_path / "v.parquet", "demo", root="photos")
    assert set(lib.catalog.roots().values()) == {str(photos)}
    assert set(_formats(lib)) == {"2023/a.jpg", "b.jpg"}
