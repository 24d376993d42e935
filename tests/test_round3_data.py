"""Issue 19, data items: file names that are not UTF-8 (1), a rename plus a copy in one run (2),
read-only libraries (4), format aliases and MPO (6), photos under a symlinked folder (18)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select, update

from searchlite.catalog import Catalog, ImageRow, QueryCacheRow
from searchlite.errors import LibraryError, QueryError
from searchlite.library import Library
from searchlite.query import Filters

BAD = os.fsdecode(b"bad\xff\xfename.png")  # not UTF-8: Python's surrogate-escaped str is the real name
BAD_DIR = os.fsdecode(b"dir\xfe")


def _photo(path: Path, seed: int, size: tuple[int, int] = (64, 48), fmt: str | None = None) -> Path:
    rng = np.random.default_rng(seed)
    arr = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, fmt)
    return path


def _paths(lib: Library, spec: str | None = None, filters: Filters | None = None) -> set[str]:
    return {r.path for r in lib.search("a photo", spec, k=100, filters=filters)}


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "SEARCHLITE_NO_SERVER": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "searchlite", *args], capture_output=True, timeout=300, env=full)


# -- 1: file names that are not valid UTF-8 ---------------------------------------------------------------
def test_names_that_are_not_utf8_are_indexed_found_and_stored_exactly(tmp_path, hf_siglip):
    spec = f"hf:{hf_siglip}"
    photos = tmp_path / "photos"
    plain = _photo(photos / "plain.png", 1)
    bad = _photo(photos / BAD, 2)
    inner = _photo(photos / BAD_DIR / "inner.png", 3)
    nested = _photo(photos / BAD_DIR / BAD, 4)
    (photos / os.fsdecode(b"broken\xff.jpg")).write_bytes(b"not an image at all")
    expected = {str(p) for p in (plain, bad, inner, nested)}
    lib = Library(tmp_path / "lib", device="cpu")
    stats = lib.index([photos], [spec])  # old code: UnicodeEncodeError from ScanTable.add, nothing indexed
    assert (stats.added, stats.failed) == (4, 1)
    found = _paths(lib, spec)
    assert found == expected
    assert all(os.path.exists(p) for p in found)  # the result path is the real path

    # stored losslessly: a BLOB of the file system's exact bytes, ordinary names as TEXT
    raw = sqlite3.connect(tmp_path / "lib" / "catalog.sqlite")
    stored = dict(raw.execute("SELECT CAST(relpath AS BLOB), typeof(relpath) FROM images").fetchall())
    raw.close()
    assert stored[b"bad\xff\xfename.png"] == "blob"
    assert stored[b"dir\xfe/bad\xff\xfename.png"] == "blob"
    assert stored[b"plain.png"] == "text"

    # a second run finds every file unchanged (the scan's comparisons meet the BLOBs)
    stats = lib.index([photos], [spec])
    assert (stats.added, stats.updated, stats.moved, stats.removed, stats.unchanged) == (0, 0, 0, 0, 5)
    # the folder filter and a sub-folder index run (byte prefixes) reach names under an odd folder
    assert _paths(lib, spec, Filters(folder=photos / BAD_DIR)) == {str(inner), str(nested)}
    stats = lib.index([photos / BAD_DIR], [spec])
    assert (stats.added, stats.removed, stats.unchanged) == (0, 0, 2)
    nested.unlink()
    stats = lib.index([photos / BAD_DIR], [spec])
    assert (stats.removed, stats.unchanged) == (1, 1)
    assert _paths(lib, spec) == expected - {str(nested)}
    # similar by the odd path finds its stored vector (and leaves the query image out)
    own = lib.catalog.find_image(bad)
    assert own is not None and own.relpath == BAD
    assert own.id not in {r.image_id for r in lib.similar(bad, spec, k=10)}


def test_a_root_with_an_odd_name_is_adopted_by_its_parent_exactly(tmp_path, hf_siglip):
    spec = f"hf:{hf_siglip}"
    photos = tmp_path / "photos"
    inner = _photo(photos / BAD_DIR / "inner.png", 3)
    nested = _photo(photos / BAD_DIR / BAD, 4)
    top = _photo(photos / "top.png", 5)
    lib = Library(tmp_path / "lib", device="cpu")
    lib.index([photos / BAD_DIR], [spec])  # the root's own path is not UTF-8
    assert lib.catalog.find_image(nested) is not None
    ids = {r.path: r.image_id for r in lib.search("x", spec, k=10)}
    assert set(ids) == {str(inner), str(nested)}
    stats = lib.index([photos], [spec])  # the parent adopts the child root: relpaths get its prefix
    assert (stats.added, stats.removed, stats.unchanged) == (1, 0, 2)
    after = {r.path: r.image_id for r in lib.search("x", spec, k=10)}
    assert after == {**ids, str(top): after[str(top)]}  # same ids, exact paths
    assert list(lib.catalog.roots().values()) == [str(photos)]
    raw = sqlite3.connect(tmp_path / "lib" / "catalog.sqlite")
    stored = dict(raw.execute("SELECT CAST(relpath AS BLOB), typeof(relpath) FROM images").fetchall())
    raw.close()
    assert stored == {b"dir\xfe/inner.png": "blob", b"dir\xfe/bad\xff\xfename.png": "blob", b"top.png": "text"}


def test_odd_names_print_escaped_and_serve(tmp_path, hf_siglip):
    spec = f"hf:{hf_siglip}"
    photos = tmp_path / "photos"
    bad = _photo(photos / BAD, 2)
    _photo(photos / "plain.png", 1)
    (photos / os.fsdecode(b"broken\xff.jpg")).write_bytes(b"not an image at all")
    lib_dir = tmp_path / "lib"
    Library(lib_dir, device="cpu").index([photos], [spec])

    out = _cli("search", "x", "-L", str(lib_dir))
    assert out.returncode == 0, out.stderr
    assert b"bad\\xff\\xfename.png" in out.stdout  # escaped text, not raw bytes
    assert b"\xff" not in out.stdout
    out = _cli("search", "x", "-L", str(lib_dir), "--json")
    assert out.returncode == 0, out.stderr
    assert str(bad) in {r["path"] for r in json.loads(out.stdout)}  # \udcff escapes round-trip
    out = _cli("errors", "-L", str(lib_dir))
    assert out.returncode == 0, out.stderr
    assert b"broken\\xff.jpg" in out.stdout and b"\xff" not in out.stdout
    out = _cli("errors", "-L", str(lib_dir), "--json")
    assert [e["path"] for e in json.loads(out.stdout)] == [str(photos / os.fsdecode(b"broken\xff.jpg"))]

    from fastapi.testclient import TestClient

    from searchlite.web.app import create_app

    lib = Library(lib_dir, device="cpu")
    client = TestClient(create_app(lib), base_url="http://127.0.0.1")
    response = client.get("/api/search", params={"q": "x"})
    assert response.status_code == 200, response.text  # old code: a 500 (JSON is UTF-8)
    shown = {r["path"]: r["id"] for r in response.json()["results"]}
    escaped = str(photos) + "/bad\\xff\\xfename.png"  # shown escaped: JSON text is UTF-8
    assert escaped in shown
    image = client.get(f"/api/image/{shown[escaped]}")
    assert image.status_code == 200 and image.content == bad.read_bytes()


def test_one_odd_entry_never_stops_the_scan(tmp_path, monkeypatch, hf_siglip):
    """Whatever fails for one file while scanning or decoding is that file's error."""
    from searchlite.indexer import pipeline

    spec = f"hf:{hf_siglip}"
    photos = tmp_path / "photos"
    for i in range(3):
        _photo(photos / f"p{i}.png", i)
    real_decode = pipeline.decode

    def flaky(work, *args, **kwargs):
        if work.path.endswith("p1.png"):
            raise RuntimeError("boom")
        return real_decode(work, *args, **kwargs)

    monkeypatch.setattr(pipeline, "decode", flaky)
    lib = Library(tmp_path / "lib", device="cpu")
    stats = lib.index([photos], [spec])
    assert (stats.added, stats.failed) == (2, 1)
    assert lib.errors() == [(str(photos / "p1.png"), "cannot read: RuntimeError: boom")]


# -- 2: a rename plus a copy of the renamed file in one run -------------------------------------------------
def test_rename_plus_copy_keeps_both(tmp_path):
    photos = tmp_path / "photos"
    _photo(photos / "A.png", 1)
    _photo(photos / "D.png", 2)
    lib = Library(tmp_path / "lib", device="cpu")
    lib.index([photos], ["demo"])
    ids = {r.path: r.image_id for r in lib.search("x", k=10)}
    os.rename(photos / "A.png", photos / "B.png")
    shutil.copyfile(photos / "B.png", photos / "C.png")
    stats = lib.index([photos])
    assert (stats.moved, stats.added, stats.removed) == (1, 1, 0)  # old code: "moved 2", C or B lost
    after = {r.path: r.image_id for r in lib.search("x", k=10)}
    assert set(after) == {str(photos / n) for n in ("B.png", "C.png", "D.png")}
    moved = [p for p in ("B.png", "C.png") if after[str(photos / p)] == ids[str(photos / "A.png")]]
    assert len(moved) == 1  # exactly one of them kept A's id (and its vector)
    row = lib.model_row()
    vectors = lib.stored_vectors(row, [after[str(photos / "B.png")], after[str(photos / "C.png")]])
    assert len(vectors) == 2
    b, c = vectors.values()
    assert float(b @ c) > 0.9999  # the same content embeds to the same vector
    stats = lib.index([photos])  # and the next run has nothing to fix
    assert (stats.added, stats.moved, stats.removed, stats.unchanged) == (0, 0, 0, 3)


# -- 6: --format aliases, MPO ---------------------------------------------------------------------------------
def _mpo(path: Path, size: tuple[int, int] = (512, 384)) -> Path:
    rng = np.random.default_rng(7)
    first = Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))
    second = Image.fromarray((rng.random((size[1] // 4, size[0] // 4, 3)) * 255).astype(np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    first.save(path, "MPO", save_all=True, append_images=[second])
    return path


def test_mpo_decodes_as_jpeg_with_draft(tmp_path):
    from searchlite.imaging import load_image

    path = _mpo(tmp_path / "camera.jpg")
    with Image.open(path) as probe:
        assert probe.format == "MPO"  # what Pillow calls a JPEG with MPF data
    loaded = load_image(path, target_size=(64, 64), draft=True)
    assert loaded.format == "JPEG"
    assert (loaded.width, loaded.height) == (512, 384)
    assert max(loaded.image.size) < 512  # draft mode: libjpeg decoded it at a reduced scale
    assert load_image(path, target_size=(64, 64), draft=False).image.size == (512, 384)


def test_format_filter_aliases_and_old_mpo_rows(tmp_path, hf_siglip):
    spec = f"hf:{hf_siglip}"
    photos = tmp_path / "photos"
    mpo = _mpo(photos / "camera.jpg")
    png = _photo(photos / "shot.png", 1)
    tif = _photo(photos / "scan.tif", 2, fmt="TIFF")
    jpg = _photo(photos / "plain.jpeg", 3)
    lib = Library(tmp_path / "lib", device="cpu")
    lib.index([photos], [spec])
    with lib.catalog.Session() as s:
        assert s.scalar(select(ImageRow.format).where(ImageRow.relpath == "camera.jpg")) == "JPEG"  # not MPO

    def only(*names: str) -> set[str]:
        return _paths(lib, spec, Filters(formats=names))

    jpegs = {str(mpo), str(jpg)}
    for name in ("JPEG", "jpeg", "jpg", "JPG", "jpe", "jfif", "mpo", ".jpg"):
        assert only(name) == jpegs, name  # old code: jpg matched nothing, the MPO was not a JPEG
    assert only("tif") == only("TIFF") == {str(tif)}
    assert only("png", "tiff") == {str(png), str(tif)}
    with pytest.raises(QueryError, match="unknown image format 'bogus'.*JPEG.*PNG.*TIFF"):
        only("bogus")
    # a library written before MPO was stored as JPEG still matches --format JPEG
    with lib.catalog.WriteSession.begin() as s:
        s.execute(update(ImageRow).where(ImageRow.relpath == "camera.jpg").values(format="MPO"))
    assert only("JPEG") == jpegs
    out = _cli("search", "x", "-L", str(tmp_path / "lib"), "--format", "bogus")
    assert out.returncode == 1 and len(out.stderr.decode().strip().splitlines()) == 1
    assert "unknown image format" in out.stderr.decode()


# -- 18: photos under a symlinked folder ------------------------------------------------------------------
@pytest.fixture
def linked(tmp_path, hf_siglip):
    """A root with a real photo, a symlinked folder of 3 photos elsewhere, and a symlinked file
    that leads outside every root."""
    spec = f"hf:{hf_siglip}"
    elsewhere = tmp_path / "elsewhere"
    for i in range(3):
        _photo(elsewhere / "trip" / f"t{i}.png", 10 + i)
    outside = _photo(tmp_path / "private" / "secret.png", 20)
    photos = tmp_path / "photos"
    _photo(photos / "home.png", 1)
    os.symlink(elsewhere / "trip", photos / "trip")
    os.symlink(outside, photos / "link.png")
    lib = Library(tmp_path / "lib", device="cpu")
    stats = lib.index([photos], [spec])
    assert stats.added == 5
    return lib, spec, photos


def test_similar_by_a_path_through_a_folder_link_leaves_itself_out(linked):
    lib, spec, photos = linked
    query = photos / "trip" / "t0.png"
    own = lib.catalog.find_image(query)  # old code resolved the path out of the root: None
    assert own is not None and own.relpath == "trip/t0.png"
    results = lib.similar(query, spec, k=10)
    assert own.id not in {r.image_id for r in results}
    assert len(results) == 4
    # through a link to the root as well as the folder link inside it
    alias = photos.parent / "alias"
    os.symlink(photos, alias)
    assert lib.catalog.find_image(alias / "trip" / "t0.png").id == own.id
    assert own.id not in {r.image_id for r in lib.similar(alias / "trip" / "t0.png", spec, k=10)}
    # a path that normalises onto another stored file is not taken for it: trip/.. is elsewhere
    assert lib.catalog.find_image(photos / "trip" / ".." / "home.png") is None
    _photo(photos.parent / "elsewhere" / "home.png", 30)
    assert lib.catalog.find_image(photos / "trip" / ".." / "home.png") is None
    assert lib.catalog.find_image(photos / "home.png") is not None


def test_folder_filter_through_a_folder_link(linked):
    lib, spec, photos = linked
    trip = {str(photos / "trip" / f"t{i}.png") for i in range(3)}
    assert _paths(lib, spec, Filters(folder=photos / "trip")) == trip  # old code: nothing
    assert len(_paths(lib, spec, Filters(folder=photos))) == 5
    from searchlite.cli.common import parse_filters

    # the CLI keeps the folder as given (absolute), it does not resolve the link away
    assert parse_filters(photos / "trip", None, None, None, None, None, None).folder == photos / "trip"
    out = _cli("search", "x", "-L", str(lib.path), "--folder", str(photos / "trip"), "--paths")
    assert out.returncode == 0, out.stderr
    assert set(out.stdout.decode().split()) == trip


def test_serving_follows_folder_links_the_scan_followed_only(linked):
    from searchlite.thumbnails import NotServable, servable_path, thumbnail

    lib, spec, photos = linked
    by_path = {r.path: r.image_id for r in lib.search("x", spec, k=10)}
    trip_id = by_path[str(photos / "trip" / "t1.png")]
    _, real = servable_path(lib, trip_id)  # old code: 404, "outside its indexed folder"
    assert real == (photos / "trip" / "t1.png").resolve()
    assert thumbnail(lib, trip_id, 32).is_file()
    # a symlinked file that leads outside every root was indexed but is never served
    with pytest.raises(NotServable, match="outside"):
        servable_path(lib, by_path[str(photos / "link.png")])
    # nor is a path trick written into the catalog
    with lib.catalog.WriteSession.begin() as s:
        s.execute(update(ImageRow).where(ImageRow.id == trip_id).values(relpath="trip/../../private/secret.png"))
    with pytest.raises(NotServable):
        servable_path(lib, trip_id)


# -- 4: read-only libraries -----------------------------------------------------------------------------------
@pytest.fixture
def closed_library(tmp_path, hf_siglip):
    spec = f"hf:{hf_siglip}"
    photos = tmp_path / "photos"
    for i in range(4):
        _photo(photos / f"p{i}.png", i)
    lib_dir = tmp_path / "lib"
    lib = Library(lib_dir, device="cpu")
    lib.index([photos], [spec])
    lib.search("warm the light path", spec, k=2)
    del lib
    import gc

    gc.collect()
    return lib_dir, spec, photos


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_writability_detection(tmp_path, monkeypatch):
    from searchlite import catalog as catalog_module

    Catalog(tmp_path / "lib")
    assert Catalog(tmp_path / "lib").read_only is False
    real_access = os.access
    monkeypatch.setattr(catalog_module.os, "access",
                        lambda p, mode, *a, **k: False if mode & os.W_OK else real_access(p, mode, *a, **k))
    assert Catalog(tmp_path / "lib").read_only is True  # what os.access says (a read-only mount)
    monkeypatch.undo()

    import tempfile

    def refuse(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)  # the probe: os.access can be wrong (root, NFS)
    assert Catalog(tmp_path / "lib").read_only is True
    monkeypatch.undo()
    monkeypatch.setenv("SEARCHLITE_READ_ONLY", "1")
    assert Catalog(tmp_path / "lib").read_only is True
    with pytest.raises(LibraryError, match="no searchlite library"):
        Catalog(tmp_path / "nothing")  # nothing is created on read-only media


def test_read_only_library_answers_and_changes_nothing(closed_library):
    lib_dir, spec, photos = closed_library
    before = _snapshot(lib_dir)
    assert not (lib_dir / "catalog.sqlite-wal").exists()
    lib = Library(lib_dir, device="cpu", read_only=True)
    assert lib.catalog.read_only
    results = lib.search("a new query, not cached", spec, k=10)
    assert len(results) == 4
    assert len(lib.similar(photos / "p0.png", spec, k=10)) == 3
    assert lib.search("x", spec, k=10, filters=Filters(formats=("png",), folder=photos))
    assert lib.status()["images"] == {"ok": 4}
    assert lib.errors() == []
    from searchlite.thumbnails import thumbnail

    thumb = thumbnail(lib, results[0].image_id, 32)
    assert thumb.is_file() and not thumb.is_relative_to(lib_dir)
    summary = lib.export_vectors(spec, lib_dir.parent / "out.parquet")
    assert summary["rows"] == 4
    with pytest.raises(LibraryError, match="read-only"):
        lib.index([photos], [spec])
    with pytest.raises(LibraryError, match="read-only"):
        lib.import_vectors(lib_dir.parent / "out.parquet", spec)
    assert _snapshot(lib_dir) == before  # no cache row, no -wal/-shm, no thumbnail, no lock file
    with lib.catalog.Session() as s:
        cached = set(s.scalars(select(QueryCacheRow.key)))
    assert not any("not cached" in key for key in cached)


def test_read_only_library_needing_an_upgrade_is_one_line(closed_library):
    lib_dir, _, _ = closed_library
    from searchlite import migrations
    from searchlite.catalog import SCHEMA_VERSION

    writable = Catalog(lib_dir)
    with writable.engine.execution_options(write=True).begin() as conn:
        migrations.set_version(conn, SCHEMA_VERSION - 1)
    writable.engine.dispose()
    with pytest.raises(LibraryError, match="needs an upgrade .* read-only"):
        Catalog(lib_dir, read_only=True)


@pytest.mark.slow
def test_read_only_cli(closed_library):
    lib_dir, spec, photos = closed_library
    env = {"SEARCHLITE_READ_ONLY": "1"}
    before = _snapshot(lib_dir)
    for args in (["search", "x"], ["similar", str(photos / "p1.png")], ["status"], ["errors"]):
        out = _cli(*args, "-L", str(lib_dir), env=env)
        assert out.returncode == 0, (args, out.stderr)
    out = _cli("index", str(photos), "-L", str(lib_dir), env=env)
    assert out.returncode == 1
    assert out.stderr.decode().strip().splitlines() == [out.stderr.decode().strip()]
    assert "read-only" in out.stderr.decode()
    assert _snapshot(lib_dir) == before


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_read_only_for_a_user_who_cannot_write(closed_library):
    """The real case: another user (nobody) without write permission searches the library."""
    lib_dir, spec, _ = closed_library
    shared = Path(os.environ.get("TMPDIR", "/tmp")) / f"searchlite-ro-{os.getpid()}"
    shutil.copytree(lib_dir, shared / "lib")
    try:
        subprocess.run(["chmod", "-R", "a+rX,a-w", str(shared / "lib")], check=True)
        home = shared / "home"
        home.mkdir(mode=0o700)
        os.chown(home, 65534, 65534)
        env = {name: str(home) for name in ("HOME", "SEARCHLITE_CACHE", "XDG_CACHE_HOME", "XDG_DATA_HOME",
                                            "XDG_RUNTIME_DIR", "HF_HOME", "TORCH_HOME")}
        out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                              "searchlite", "search", "x", "-L", str(shared / "lib"), "--json"],
                             capture_output=True, timeout=300, env={**os.environ, "SEARCHLITE_NO_SERVER": "1", **env})
        if b"Permission denied" in out.stderr and b"site-packages" in out.stderr:
            pytest.skip("the venv is not readable by nobody")
        assert out.returncode == 0, out.stderr.decode()[-2000:]
        assert len(json.loads(out.stdout)) == 4
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(shared)], check=False)
        shutil.rmtree(shared, ignore_errors=True)
