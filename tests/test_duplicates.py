"""`searchlite duplicates`: planted duplicates found (against a brute-force reference), no chaining
on a crafted A~B~C set, the keeper rules, read-only by default, and --move-to keeping the library
consistent."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from searchlite.cli.main import app
from searchlite.duplicates import Member, choose_keeper, default_threshold, exif_fields
from searchlite.library import Library
from searchlite.sample_data import generate

runner = CliRunner()
DIM = 128  # the demo model's width: vectors are imported under it


def _write(path: Path, rows: list[dict], vectors: np.ndarray) -> Path:
    table = {"path": [r["path"] for r in rows],
             "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.astype(np.float32).reshape(-1)), DIM)}
    for key in ("sha256", "width", "height", "size", "taken_at", "companion"):
        if any(key in r for r in rows):
            table[key] = [r.get(key) for r in rows]
    pq.write_table(pa.table(table), path)
    return path


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _near(v: np.ndarray, cos: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector at exactly cosine ``cos`` from unit ``v``."""
    w = rng.normal(size=v.shape)
    w = _unit(w - (w @ v) * v)
    return cos * v + np.sqrt(1 - cos**2) * w


def _library(tmp_path: Path, rows: list[dict], vectors: np.ndarray, index_type: str | None = None) -> Library:
    lib = Library(tmp_path / "lib", device="cpu")
    lib.import_vectors(_write(tmp_path / "v.parquet", rows, vectors), "demo", root="/photos", index_type=index_type)
    if index_type:
        lib.reindex(None, index_type)
    return lib


def _groups(lib: Library, threshold: float) -> set[frozenset[str]]:
    groups, _ = lib.duplicates("demo", threshold)
    return {frozenset(m.path for m in g.members) for g in groups}


@pytest.mark.parametrize("index_type", [None, "ivf"])
def test_planted_duplicates_match_a_brute_force_reference(tmp_path, index_type):
    rng = np.random.default_rng(3)
    n = 2000 if index_type else 400
    vectors = _unit(rng.normal(size=(n, DIM)))
    planted = [(i, i + 1) for i in range(0, n - 1, 20)]
    for a, b in planted:
        vectors[b] = _near(vectors[a], rng.uniform(0.96, 0.995), rng)
    rows = [{"path": f"/photos/{i:05d}.jpg", "width": 100, "height": 100, "size": 1000} for i in range(n)]
    lib = _library(tmp_path, rows, vectors, index_type)
    # reference: every pair at or above the threshold by brute force (numpy), each its own group
    sims = vectors @ vectors.T
    ai, bi = np.nonzero(np.triu(sims >= 0.95, 1))
    expected = {frozenset({rows[a]["path"], rows[b]["path"]}) for a, b in zip(ai, bi)}
    assert expected == {frozenset({rows[a]["path"], rows[b]["path"]}) for a, b in planted}
    assert _groups(lib, 0.95) == expected
    groups, _ = lib.duplicates("demo", 0.95)
    for g in groups:  # the similarity is the exact cosine to the keeper
        keep = int(Path(g.keep).stem)
        other = int(Path(g.members[1].path).stem)
        assert g.members[0].path == g.keep and g.members[0].similarity == 1.0
        assert g.members[1].similarity == pytest.approx(float(sims[keep, other]), abs=1e-5)


def test_exact_copies_by_hash_are_grouped_whatever_their_vectors(tmp_path):
    """The hash alone groups them (vectors imported from elsewhere may differ)."""
    rng = np.random.default_rng(5)
    vectors = _unit(rng.normal(size=(6, DIM)))
    vectors[4] = _near(vectors[1], 0.5, rng)
    sha = hashlib.sha256(b"x").hexdigest()
    rows = [{"path": f"/photos/{i}.jpg", "size": 10, "width": 5, "height": 5} for i in range(6)]
    rows[1]["sha256"] = rows[4]["sha256"] = sha
    lib = _library(tmp_path, rows, vectors)
    groups, _ = lib.duplicates("demo", 0.999)
    assert [sorted(m.path for m in g.members) for g in groups] == [["/photos/1.jpg", "/photos/4.jpg"]]
    assert all(m.similarity == 1.0 for m in groups[0].members)


def test_no_chaining_on_a_b_c(tmp_path):
    """A~B and B~C at cosine 0.97, A and C at 0.88: C never joins A's group, whoever is kept."""
    rng = np.random.default_rng(7)
    a = _unit(rng.normal(size=DIM))
    w = _unit(rng.normal(size=DIM))
    w = _unit(w - (w @ a) * a)
    theta = np.arccos(0.97)
    b = np.cos(theta) * a + np.sin(theta) * w
    c = np.cos(2 * theta) * a + np.sin(2 * theta) * w
    far = _unit(rng.normal(size=(5, DIM)))
    vectors = np.vstack([a, b, c, far])
    assert vectors[0] @ vectors[1] == pytest.approx(0.97) and vectors[1] @ vectors[2] == pytest.approx(0.97)
    assert vectors[0] @ vectors[2] == pytest.approx(0.8818, abs=1e-3)
    names = ["A", "B", "C", "x0", "x1", "x2", "x3", "x4"]
    for biggest, expected in (("B", {"A", "B"}), ("A", {"A", "B"}), ("C", {"B", "C"})):
        rows = [{"path": f"/photos/{n}.jpg", "width": 4000 if n == biggest else 1000, "height": 3000, "size": 5}
                for n in names]
        lib = _library(tmp_path / biggest, rows, vectors)
        groups, _ = lib.duplicates("demo", 0.95)
        assert [{Path(m.path).stem for m in g.members} for g in groups] == [expected]
        assert Path(groups[0].keep).stem == (biggest if biggest in expected else "B")
        # chaining (connected components) would have made one group of three
        assert {Path(m.path).stem for g in groups for m in g.members} != {"A", "B", "C"}


def _m(i: int, **kw) -> Member:
    base = dict(image_id=i, path=f"/p/{i}.jpg", similarity=1.0, width=100, height=100, size=1000, taken_at=None)
    base.update(kw)
    return Member(**base)


def test_keeper_rules_in_order():
    exif = {"/p/1.jpg": 3, "/p/2.jpg": 9}.get
    count = lambda p: exif(p) or 0  # noqa: E731
    # most pixels wins over everything after it
    assert choose_keeper([_m(1, size=9999, companion="1.CR2"), _m(2, width=101)], count).image_id == 2
    # same pixels: the RAW of a pair (a RAW companion, or a RAW file) wins over a larger file
    assert choose_keeper([_m(1, size=9999), _m(2, companion="2.CR2")], count).image_id == 2
    assert choose_keeper([_m(1, size=9999), _m(2, path="/p/2.dng")], count).image_id == 2
    # then the largest file
    assert choose_keeper([_m(1, size=1000), _m(2, size=1001)], count).image_id == 2
    # then the most EXIF fields
    assert choose_keeper([_m(2), _m(1)], count).image_id == 2
    # then the oldest capture date (an unknown date loses)
    old, new = datetime(2001, 1, 1), datetime(2020, 1, 1)
    assert choose_keeper([_m(3, taken=new), _m(4, taken=old), _m(5)], count).image_id == 4


def test_exif_fields_counts_the_tags_of_a_file(tmp_path):
    path = tmp_path / "e.jpg"
    exif = Image.Exif()
    exif[0x010F] = "Maker"  # Make
    exif[0x0110] = "Model"  # Model
    exif[0x0132] = "2020:01:01 10:00:00"  # DateTime
    Image.new("RGB", (8, 8)).save(path, exif=exif)
    assert exif_fields(str(path)) == 3
    Image.new("RGB", (8, 8)).save(tmp_path / "n.jpg")
    assert exif_fields(str(tmp_path / "n.jpg")) == 0


def test_default_threshold_comes_from_the_zoo_else_a_constant():
    import searchlite.models.zoo as zoo

    assert default_threshold("demo") == zoo.entry("demo").defaults["duplicate_threshold"]
    assert default_threshold("hf:/some/local/folder") == 0.95


@pytest.fixture
def photos(tmp_path):
    """Six sample photos, a byte copy of two of them and a near copy (resized) of one, indexed."""
    root = tmp_path / "photos"
    generate.generate(root, 6, 11, "test")
    (root / "captions.jsonl").unlink()
    names = sorted(p.name for p in root.iterdir())
    (root / "backup" / "old").mkdir(parents=True)
    for name in names[:2]:
        shutil.copyfile(root / name, root / "backup" / "old" / name)  # newer mtime: the original is older
    with Image.open(root / names[2]) as im:
        im.convert("RGB").resize((im.width - 2, im.height - 2)).save(root / "backup" / "small.jpg", quality=95)
    lib = Library(tmp_path / "lib", device="cpu")
    lib.index([root], ["demo"])
    return lib, root, names


def _catalog_bytes(lib: Library) -> bytes:
    con = sqlite3.connect(lib.path / "catalog.sqlite")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return (lib.path / "catalog.sqlite").read_bytes()


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_cli_is_read_only_by_default_and_prints_the_json_contract(photos, tmp_path):
    lib, root, names = photos
    before, files = _catalog_bytes(lib), _tree(root)
    out = runner.invoke(app, ["duplicates", "-L", str(lib.path), "--threshold", "0.9", "--json"])
    assert out.exit_code == 0, out.output
    groups = json.loads(out.output)
    assert _catalog_bytes(lib) == before and _tree(root) == files
    by_keep = {Path(g["keep"]).name: g for g in groups}
    for name in names[:2]:  # a byte copy: grouped, the older original kept
        g = by_keep[name]
        assert str(root / "backup" / "old" / name) in [m["path"] for m in g["members"]]
    for g in groups:
        assert g["keep"] == g["members"][0]["path"]
        assert set(g["members"][0]) == {"path", "similarity", "width", "height", "size", "taken_at", "channel"}
    assert [len(g["members"]) for g in groups] == sorted((len(g["members"]) for g in groups), reverse=True)
    out = runner.invoke(app, ["duplicates", "-L", str(lib.path), "--threshold", "0.9", "--folder",
                              str(root / "backup")])
    assert out.exit_code == 0 and "no duplicates found" in out.output  # filters: both members must match


def test_move_to_a_folder_inside_an_indexed_folder_is_refused(photos):
    """The moved copies would be scanned again as part of that folder (and nested deeper on every run)."""
    from searchlite.errors import LibraryError

    lib, root, _ = photos
    before = sorted(p for p in root.rglob("*") if p.is_file())
    with pytest.raises(LibraryError, match="inside the library folder"):
        lib.duplicates("demo", 0.9, move_to=root / "dupes")
    assert sorted(p for p in root.rglob("*") if p.is_file()) == before and not (root / "dupes").exists()


def test_move_to_keeps_the_library_consistent(photos, tmp_path):
    lib, root, names = photos
    images_before = lib.status()["images"]
    target = tmp_path / "dups"
    groups, report = lib.duplicates("demo", 0.9, move_to=target)
    moved = dict(report.moved)
    assert report.skipped == []
    expected = {str(m.path): str(target / Path(m.path).relative_to(root)) for g in groups for m in g.members[1:]}
    assert moved == expected and len(moved) >= 2
    for old, new in moved.items():
        assert not Path(old).exists() and Path(new).is_file()  # moved, not copied or deleted
    for g in groups:
        assert Path(g.keep).is_file()
    # the catalog knows the new paths: similar() of a keeper finds its moved copy there
    for g in groups:
        keeper_id = lib.catalog.find_image(g.keep).id
        hits = [r.path for r in lib.similar(keeper_id, "demo", k=3)]
        assert moved[g.members[1].path] in hits
    assert lib.status()["images"] == images_before
    # a later index of both folders finds every file unchanged: nothing added, removed or re-embedded
    stats = Library(lib.path, device="cpu").index([root, target], ["demo"])
    assert (stats.added, stats.removed, stats.updated, stats.moved) == (0, 0, 0, 0)
    assert stats.unchanged == sum(images_before.values())
    # a second run finds no duplicates left in the original folder
    left, _ = lib.duplicates("demo", 0.9, filters=__import__("searchlite.query", fromlist=["Filters"]).Filters(
        folder=root))
    assert left == []


def test_move_to_never_overwrites(photos, tmp_path):
    lib, root, names = photos
    target = tmp_path / "dups"
    (target / "backup" / "old").mkdir(parents=True)
    (target / "backup" / "old" / names[0]).write_bytes(b"someone else's file")
    groups, report = lib.duplicates("demo", 0.9, move_to=target)
    assert any(names[0] in path for path, _ in report.skipped)
    assert (target / "backup" / "old" / names[0]).read_bytes() == b"someone else's file"
    assert (root / "backup" / "old" / names[0]).is_file()
