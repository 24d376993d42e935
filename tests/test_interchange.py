"""Parquet export -> import keeps every column a filter or a result uses (issue 19, item 5):
the same searches, with every filter, give the same results in the copy as in the library that
indexed the photos, and a later `index` of the same folder calls the files unchanged yet keeps
their format, capture-date source and RAW companion. Files written before those columns existed
still import."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from searchlite.cli.main import app
from searchlite.library import Library
from searchlite.query import Filters

QUERY = "two big orange squares"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from searchlite.sample_data import generate

    root = tmp_path_factory.mktemp("interchange")
    photos = root / "photos"
    generate.generate(photos, 16, 3, "test")
    generate.generate(photos / "2023", 8, 4, "test")
    for i, path in enumerate(sorted(photos.rglob("*.*"))):
        when = datetime(2023, 3, 1 + i % 20, 9).timestamp() if "2023" in path.parts else datetime(2024, 8, 2).timestamp()
        os.utime(path, (when, when))
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Searchlite", "TestCam"  # make, model
    exif.get_ifd(0x8769)[0x9003] = "2022:07:04 18:30:00"
    Image.new("RGB", (120, 90), "orange").save(photos / "pair.jpg", exif=exif.tobytes())
    (photos / "pair.dng").write_bytes(b"II*\x00 a RAW beside its JPEG: one photo, shown as the JPEG")
    lib = Library(root / "lib", device="cpu")
    lib.index([photos], ["demo"])
    out = CliRunner().invoke(app, ["export", str(root / "out.parquet"), "-m", "demo", "-L", str(lib.path), "--json"])
    assert out.exit_code == 0, out.output
    copy = Library(root / "copy", device="cpu")
    copy.import_vectors(root / "out.parquet", "demo", root=str(photos))
    return root, photos, lib, copy


def _rows(lib: Library, filters: Filters) -> list[tuple]:
    return [(r.path, round(r.score, 6), r.taken_at, r.width, r.height, r.extra.get("raw"))
            for r in lib.search(QUERY, "demo", 100, filters=filters)]


def _cases(photos: Path) -> list[Filters]:
    return [Filters(formats=("PNG",)), Filters(formats=("JPEG",)),
            Filters(after=datetime(2024, 1, 1)), Filters(before=datetime(2023, 12, 31)),
            Filters(after=datetime(2022, 7, 4), before=datetime(2022, 7, 5)),
            Filters(min_width=300), Filters(min_height=250), Filters(folder=photos / "2023"),
            Filters(glob="*/2023/*.png"), Filters(formats=("PNG",), folder=photos / "2023", min_width=100)]


def test_the_export_carries_every_column_a_filter_or_result_uses(exported):
    root, photos, lib, _ = exported
    table = pq.read_table(root / "out.parquet").to_pylist()
    assert {"format", "companion", "taken_source", "camera", "width", "height", "taken_at"} <= set(table[0])
    pair = next(r for r in table if r["path"].endswith("pair.jpg"))
    assert pair["format"] == "JPEG" and pair["companion"] == str(photos / "pair.dng")
    assert pair["camera"] and "TestCam" in pair["camera"] and pair["taken_source"].startswith("exif")
    assert {r["format"] for r in table} == {"JPEG", "PNG"}


def test_export_then_import_gives_identical_search_results_with_every_filter(exported):
    _, photos, lib, copy = exported
    everything = _rows(lib, Filters())
    assert _rows(copy, Filters()) == everything
    for filters in _cases(photos):
        expected = _rows(lib, filters)
        assert expected and len(expected) < len(everything), filters  # each filter keeps some, drops some
        assert _rows(copy, filters) == expected, filters
    pair = next(r for r in everything if r[0].endswith("pair.jpg"))
    assert pair[5] == str(photos / "pair.dng")  # the RAW companion is a result field


def test_a_later_index_calls_imported_files_unchanged_and_keeps_their_columns(exported, tmp_path):
    root, photos, lib, _ = exported
    again = Library(tmp_path / "again", device="cpu")
    again.import_vectors(root / "out.parquet", "demo", root=str(photos))
    stats = again.index([photos])
    assert stats.added == 0 and stats.updated == 0 and stats.unchanged == len(_rows(lib, Filters()))
    for filters in _cases(photos):
        assert _rows(again, filters) == _rows(lib, filters), filters
    found = again.catalog.find_image(photos / "pair.jpg")
    assert found.format == "JPEG" and found.companion == "pair.dng" and found.camera


def test_a_file_without_the_new_columns_still_imports(exported, tmp_path):
    root, photos, lib, _ = exported
    table = pq.read_table(root / "out.parquet")
    old = table.select(["path", "vector", "sha256", "size", "mtime_ns", "width", "height", "taken_at"])
    pq.write_table(old, tmp_path / "old.parquet")
    summary = json.loads(json.dumps(Library(tmp_path / "old", device="cpu").import_vectors(tmp_path / "old.parquet",
                                                                                          "demo")))
    assert summary["imported"] == table.num_rows and summary["skipped"] == 0


def test_names_that_are_not_utf8_survive_export_and_import(tmp_path):
    """A file name that is not UTF-8 (bytes on POSIX) is exported escaped in `path` with its exact
    bytes in `path_bytes`, and imports back to the very file."""
    from searchlite.sample_data import generate

    photos = tmp_path / "photos"
    generate.generate(photos, 3, 1, "test")
    first = sorted(photos.glob("*.png"))[0]
    odd = os.fsdecode(os.path.join(os.fsencode(photos), b"bad\xff\xfename.png"))
    os.rename(first, odd)
    lib = Library(tmp_path / "lib", device="cpu")
    lib.index([photos], ["demo"])
    summary = lib.export_vectors("demo", tmp_path / "out.parquet")
    assert summary["rows"] == 3
    table = pq.read_table(tmp_path / "out.parquet")
    row = table.column("path").to_pylist().index(os.fsencode(odd).decode("utf-8", "backslashreplace"))
    assert table.column("path_bytes").to_pylist()[row] == os.fsencode(odd)
    copy = Library(tmp_path / "copy", device="cpu")
    assert copy.import_vectors(tmp_path / "out.parquet", "demo")["imported"] == 3
    paths = {r.path for r in copy.search("a photo", k=10)}
    assert odd in paths and os.path.exists(odd)
