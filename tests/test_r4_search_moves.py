"""Round 4, issue 26 item 2 (the move half): a file indexed under two paths (a folder link inside a
root, a file link) is one photo: never grouped with itself, never moved as the keeper's "copy"."""

from __future__ import annotations

import os
import shutil

from searchlite.library import Library
from searchlite.sample_data import generate


def _inode(path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def test_r4_move_to_never_moves_the_kept_file(tmp_path):
    photos, archive = tmp_path / "photos", tmp_path / "archive"
    generate.generate(photos, 3, 11, "test")
    (photos / "captions.jsonl").unlink()
    a, b, c = sorted(photos.iterdir())
    archive.mkdir()
    shutil.move(str(c), archive / "c.jpg")  # archive/c.jpg is reached as photos/arch/c.jpg too
    (photos / "arch").symlink_to("../archive")
    (photos / "0-link.jpg").symlink_to(a.name)  # sorts before a.jpg: the old keeper rule kept the link
    shutil.copyfile(b, photos / "copy-of-b.jpg")  # a real copy: still grouped and moved
    lib = Library(tmp_path / "lib", device="cpu")
    lib.index([photos, archive], ["demo"])
    physical = {_inode(p) for p in (a, b, archive / "c.jpg")}

    groups, _ = lib.duplicates("demo", 0.99)
    for g in groups:  # no group holds one physical file twice
        ids = [_inode(m.path) for m in g.members]
        assert len(ids) == len(set(ids)), [m.path for m in g.members]
    target = tmp_path / "dups"
    groups, report = lib.duplicates("demo", 0.99, move_to=target)
    for g in groups:
        assert os.path.isfile(g.keep), g.keep  # the kept photo is still there
    # every original photo still exists where it was; only the real copy was moved
    for p in (a, b, archive / "c.jpg", photos / "0-link.jpg", photos / "arch" / "c.jpg"):
        assert p.is_file(), p
    assert {_inode(p) for p in (a, b, archive / "c.jpg")} == physical
    moved = {os.path.basename(old) for old, _ in report.moved}
    assert moved <= {"copy-of-b.jpg", b.name}
    assert len(moved) == 1


def test_r4_a_move_whose_source_is_the_keeper_file_is_refused(tmp_path):
    """Groups handed to move_duplicates directly (e.g. from a cache) are checked file by file."""
    from searchlite.duplicates import Group, Member, move_duplicates

    photos = tmp_path / "photos"
    generate.generate(photos, 1, 11, "test")
    (photos / "captions.jsonl").unlink()
    (a,) = sorted(photos.iterdir())
    (photos / "0-link.jpg").symlink_to(a.name)
    lib = Library(tmp_path / "lib", device="cpu")
    lib.index([photos], ["demo"])
    keep = lib.catalog.find_image(str(photos / "0-link.jpg"))
    other = lib.catalog.find_image(str(a))
    members = [Member(r.id, str(photos / r.relpath), 1.0, r.width, r.height, r.size, None, r.root_id, r.relpath)
               for r in (keep, other)]
    report = move_duplicates(lib.catalog, [Group(members[0].path, members)], tmp_path / "dups")
    assert report.moved == []
    assert [p for p, _ in report.skipped] == [str(a)] and "same file" in report.skipped[0][1]
    assert a.is_file() and (photos / "0-link.jpg").is_file()
