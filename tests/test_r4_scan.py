"""Round 4 (scan): one identity of a photo (device + inode), the library's own folder left out,
files skipped for their extension counted in the run summary."""

from __future__ import annotations

import json
import os
from pathlib import Path

from PIL import Image
from sqlalchemy import func, select
from typer.testing import CliRunner

from searchlite.catalog import ImageRow, VectorRow
from searchlite.cli.main import app
from searchlite.library import Library

runner = CliRunner()


def _photo(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), colour).save(path)


def _index(lib: Path, *args: str) -> dict:
    out = runner.invoke(app, ["index", *args, "-L", str(lib), "-m", "demo", "--json"])
    assert out.exit_code == 0, out.output
    return json.loads(out.output[out.output.index("{"):])


def _rows(lib: Path) -> list[tuple[str, int]]:
    library = Library(lib)
    roots = library.catalog.roots()
    with library.catalog.Session() as s:
        return [(f"{roots[r]}/{p}", i) for r, p, i in s.execute(select(ImageRow.root_id, ImageRow.relpath, ImageRow.id))]


def _physical(*folders: Path) -> set[tuple[int, int]]:
    """Brute force: every regular image file under the folders, by (device, inode), links followed."""
    out = set()
    for folder in folders:
        for dirpath, _, files in os.walk(folder, followlinks=True):
            for name in files:
                st = os.stat(os.path.join(dirpath, name))
                out.add((st.st_dev, st.st_ino))
    return out


def _linked_tree(tmp_path: Path) -> tuple[Path, Path]:
    photos, archive = tmp_path / "photos", tmp_path / "archive"
    _photo(archive / "a.jpg", (200, 10, 10))
    _photo(archive / "b.jpg", (10, 200, 10))
    _photo(photos / "c.jpg", (10, 10, 200))
    (photos / "arch").symlink_to(Path("..") / "archive")  # a folder link inside another root
    (photos / "0-link.jpg").symlink_to("c.jpg")  # a file link, sorted before its target
    os.link(photos / "c.jpg", photos / "hard.jpg")  # a hard link
    return photos, archive


def test_a_file_reached_through_several_paths_is_one_photo(tmp_path):
    photos, archive = _linked_tree(tmp_path)
    lib = tmp_path / "lib"
    summary = _index(lib, str(photos), str(archive))
    rows = _rows(lib)
    assert len(rows) == len(_physical(photos, archive)) == 3
    # the plain file wins over the file link; one of the two folder paths keeps a.jpg and b.jpg
    names = {Path(p).name for p, _ in rows}
    assert names == {"a.jpg", "b.jpg", "c.jpg"}
    assert summary["aliases"] == 4  # 0-link.jpg, hard.jpg, and a.jpg/b.jpg under their second path
    library = Library(lib)
    with library.catalog.Session() as s:
        assert s.scalar(select(func.count()).select_from(VectorRow)) == 3  # no second vector
    # a second run changes nothing, in either root order
    again = _index(lib, str(archive), str(photos))
    assert (again["added"], again["removed"], again["moved"], again["unchanged"]) == (0, 0, 0, 3)
    assert sorted(_rows(lib)) == sorted(rows)
    # duplicates never group a file with itself: three different photos, no group
    groups, _ = library.duplicates(threshold=0.999)
    assert all(len({os.path.realpath(m.path) for m in g.members}) == len(g.members) for g in groups)


def test_aliases_indexed_before_are_merged_and_the_link_target_stays(tmp_path):
    photos, archive = _linked_tree(tmp_path)
    lib = tmp_path / "lib"
    _index(lib, str(archive))
    first = dict(_rows(lib))
    _index(lib, str(photos))  # photos/arch/a.jpg is archive/a.jpg, already in the catalog: it stays there
    rows = dict(_rows(lib))
    assert len(rows) == 3
    for path, image_id in first.items():
        assert rows.get(path) == image_id  # same ids: nothing re-indexed, nothing moved


def test_a_renamed_file_is_not_taken_for_an_alias(tmp_path):
    photos = tmp_path / "photos"
    _photo(photos / "a.jpg", (1, 2, 3))
    lib = tmp_path / "lib"
    _index(lib, str(photos))
    (old_id,) = [i for _, i in _rows(lib)]
    os.rename(photos / "a.jpg", photos / "b.jpg")  # same inode, new name: a move
    summary = _index(lib, str(photos))
    assert summary["aliases"] == 0 and summary["moved"] == 1
    assert _rows(lib) == [(f"{photos}/b.jpg", old_id)]


def test_the_library_folder_inside_a_root_is_not_indexed(tmp_path):
    photos = tmp_path / "photos"
    _photo(photos / "a.jpg", (1, 2, 3))
    lib = photos / "lib"  # not hidden: only the library rule can leave it out
    lib.mkdir()
    _photo(lib / "thumbs" / "t1.jpg", (9, 9, 9))
    _photo(lib / "t2.png", (9, 9, 8))
    _index(lib, str(photos))
    assert [Path(p).name for p, _ in _rows(lib)] == ["a.jpg"]
    # reached through a link, the library is still its own folder
    (tmp_path / "alias").symlink_to(photos)
    _index(lib, str(tmp_path / "alias"))
    assert all("/lib/" not in p for p, _ in _rows(lib))


def test_the_library_rule_is_the_watchers_rule(tmp_path):
    from searchlite.indexer.exclude import inside_library

    lib = tmp_path / "photos" / ".lib"
    lib.mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "photos")
    assert inside_library(lib / "thumbs" / "x.jpg", lib)
    assert inside_library(tmp_path / "link" / ".lib" / "x.jpg", lib)
    assert not inside_library(tmp_path / "photos" / "x.jpg", lib)
    assert not inside_library(tmp_path / "photos" / ".lib2" / "x.jpg", lib)
    assert not inside_library(lib / "x.jpg", None)


def test_files_skipped_for_their_extension_are_counted(tmp_path):
    photos = tmp_path / "photos"
    _photo(photos / "a.jpg", (1, 2, 3))
    # .pdf is a format Pillow registers that is no photo (decoders.NOT_PHOTOS); .xyz nothing reads
    for name in ("clip.MOV", "x.pdf", "y.PDF", "notes.txt", "README", "sub/z.xyz"):
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        (photos / name).write_bytes(b"not indexed")
    (photos / ".hidden.pdf").write_bytes(b"hidden files are not counted")
    summary = _index(tmp_path / "lib", str(photos))
    assert summary["skipped_by_extension"] == {".mov": 1, ".pdf": 2, ".txt": 1, "": 1, ".xyz": 1}
    assert summary["skipped"] == 1  # videos, as before


def test_reanchored_rules_mean_the_same_paths(tmp_path):
    from searchlite.indexer.exclude import Excluder, reanchor

    child = ["junk/", "*.tmp.jpg", "/top.jpg", "a/b.jpg", "!junk/keep/", "# comment", "[x]*.jpg"]
    rules = reanchor(child, "y 2023[1]/")
    assert rules[0] == "/y 2023\\[1]/**/junk/" and rules[2] == "/y 2023\\[1]/top.jpg"
    parent = Excluder(tmp_path, rules, defaults=False)
    below = Excluder(tmp_path / "y 2023[1]", child, defaults=False)
    cases = [("junk", True), ("d/junk", True), ("x.tmp.jpg", False), ("d/e/x.tmp.jpg", False), ("top.jpg", False),
             ("d/top.jpg", False), ("a/b.jpg", False), ("d/a/b.jpg", False), ("ok.jpg", False), ("xz.jpg", False),
             ("d/x1.jpg", False)]
    for rel, is_dir in cases:  # the child's own Excluder is the reference
        assert parent.excluded(tmp_path / "y 2023[1]" / rel, is_dir) == below.excluded(
            tmp_path / "y 2023[1]" / rel, is_dir), rel
    assert not parent.excluded(tmp_path / "junk", True) and not parent.excluded(tmp_path / "top.jpg", False)


def test_a_parent_folder_keeps_a_child_roots_excludes(tmp_path):
    photos = tmp_path / "photos"
    for rel in ("y2023/a.jpg", "y2023/junk/j.jpg", "y2023/deep/junk/k.jpg", "y2023/x.tmp.jpg", "junk/p.jpg",
                "b.jpg", "x.tmp.jpg"):
        _photo(photos / rel, (len(rel) * 7 % 255, 1, 1))
    lib = tmp_path / "lib"
    _index(lib, str(photos / "y2023"), "--exclude", "junk/", "--exclude", "*.tmp.jpg")
    assert {Path(p).name for p, _ in _rows(lib)} == {"a.jpg"}
    _index(lib, str(photos))  # adopts the y2023 root: its rules stay, anchored at y2023/
    expected = {"y2023/a.jpg", "junk/p.jpg", "b.jpg", "x.tmp.jpg"}
    assert {str(Path(p).relative_to(photos)) for p, _ in _rows(lib)} == expected
    _index(lib, str(photos))  # and later runs keep them
    assert {str(Path(p).relative_to(photos)) for p, _ in _rows(lib)} == expected
    # rules given for a folder inside a root apply to that folder only
    _photo(photos / "y2024" / "tmp" / "t.jpg", (3, 3, 3))
    _photo(photos / "tmp" / "u.jpg", (4, 4, 4))
    _index(lib, str(photos / "y2024"), "--exclude", "tmp/")
    _index(lib, str(photos))
    expected |= {"tmp/u.jpg"}
    assert {str(Path(p).relative_to(photos)) for p, _ in _rows(lib)} == expected


def test_photos_kept_inside_the_library_folder_are_still_walked(tmp_path):
    from searchlite.indexer.scan import walk

    lib = tmp_path / "lib"
    _photo(lib / "photos" / "a.jpg", (1, 1, 1))
    _photo(tmp_path / "root" / "b.jpg", (2, 2, 2))
    _photo(tmp_path / "root" / "lib2" / "c.jpg", (3, 3, 3))
    assert [e.relpath for e in walk(lib / "photos", library=lib)] == ["a.jpg"]
    assert [e.relpath for e in walk(tmp_path / "root", library=tmp_path / "root" / "lib2")] == ["b.jpg"]
