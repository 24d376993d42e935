"""Exclusions: `index --exclude`, `.searchliteignore` files (gitignore syntax, relative to their
folder), default exclusions and --no-default-excludes, stored with the root, and a file excluded
after it was indexed leaving the library (counted as removed)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from sqlalchemy import select
from typer.testing import CliRunner

from searchlite.catalog import ImageRow, Root
from searchlite.cli.main import app
from searchlite.indexer.exclude import Excluder
from searchlite.library import Library

runner = CliRunner()


def test_excluder_rules_by_hand(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".searchliteignore").write_text("# a comment\n*.tmp.jpg\nraw/\n!raw/keep.jpg\n/top.jpg\n")
    ex = Excluder(tmp_path, ["private/", "*.bak.png"], defaults=True)
    r = tmp_path
    # defaults: at any depth, folders only
    assert ex.excluded(r / "@eaDir", True) and ex.excluded(r / "a" / "b" / "@eaDir", True)
    assert ex.excluded(r / "#recycle", True) and ex.excluded(r / ".Trash-1000", True)
    assert ex.excluded(r / "$RECYCLE.BIN", True) and ex.excluded(r / "cat.lrdata", True)
    assert ex.excluded(r / "x" / ".thumbnails", True)
    assert not ex.excluded(r / "@eaDir", False)  # a file named like the folder is a file
    # --exclude patterns, relative to the root
    assert ex.excluded(r / "private", True) and not ex.excluded(r / "private", False)
    assert ex.excluded(r / "a" / "x.bak.png", False) and not ex.excluded(r / "a" / "x.png", False)
    # the ignore file of sub/ applies below sub/ only, relative to sub/
    assert ex.excluded(r / "sub" / "a.tmp.jpg", False) and not ex.excluded(r / "a.tmp.jpg", False)
    assert ex.excluded(r / "sub" / "deep" / "raw", True)
    assert ex.excluded(r / "sub" / "top.jpg", False) and not ex.excluded(r / "sub" / "deep" / "top.jpg", False)
    assert not ex.excluded(r / "sub" / "plain.jpg", False)
    assert ex.inside_excluded(r / "a" / "@eaDir" / "deeper") and not ex.inside_excluded(r / "a" / "b")
    off = Excluder(tmp_path, [], defaults=False)
    assert not off.excluded(r / "@eaDir", True) and off.excluded(r / "sub" / "a.tmp.jpg", False)


def _photo(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), colour).save(path)


def _indexed(lib_path: Path) -> set[str]:
    lib = Library(lib_path)
    with lib.catalog.Session() as s:
        return set(s.scalars(select(ImageRow.relpath)))


def _index(lib: Path, *args: str) -> dict:
    out = runner.invoke(app, ["index", *args, "-L", str(lib), "-m", "demo", "--json"])
    assert out.exit_code == 0, out.output
    return json.loads(out.output[out.output.index("{"):])


def test_index_exclusions_are_stored_and_applied(tmp_path):
    root = tmp_path / "photos"
    files = {"a.png": (1, 0, 0), "@eaDir/x.png": (2, 0, 0), "sub/#recycle/y.png": (3, 0, 0),
             "cat.lrdata/p.png": (4, 0, 0), "sub/keep.png": (5, 0, 0), "sub/skip.png": (6, 0, 0),
             "sub/raw/r.png": (7, 0, 0), "private/q.png": (8, 0, 0), "sub/.thumbnails/t.png": (9, 0, 0)}
    for rel, colour in files.items():
        _photo(root / rel, colour)
    (root / "sub" / ".searchliteignore").write_text("skip.png\nraw/\n")
    lib = tmp_path / "lib"
    stats = _index(lib, str(root), "--exclude", "private/")
    assert _indexed(lib) == {"a.png", "sub/keep.png"}
    assert stats["added"] == 2
    with Library(lib).catalog.Session() as s:
        row = s.scalar(select(Root))
        assert json.loads(row.excludes) == ["private/"] and row.default_excludes is True
    # a later run (and a sub-folder run) keeps the stored rules
    assert _index(lib, str(root))["added"] == 0 and _indexed(lib) == {"a.png", "sub/keep.png"}
    assert _index(lib, str(root / "sub"))["added"] == 0 and _indexed(lib) == {"a.png", "sub/keep.png"}
    # the default exclusions off: those folders come in (.thumbnails is hidden as well: still out)
    stats = _index(lib, str(root), "--no-default-excludes")
    assert _indexed(lib) == {"a.png", "sub/keep.png", "@eaDir/x.png", "sub/#recycle/y.png", "cat.lrdata/p.png"}
    assert stats["added"] == 3
    # excluded after it was indexed: it leaves the library, counted as removed
    (root / "sub" / ".searchliteignore").write_text("skip.png\nraw/\nkeep.png\n")
    stats = _index(lib, str(root), "--default-excludes", "--exclude", "")
    assert stats["removed"] == 4 and stats["added"] == 1  # keep.png + the 3 default folders out; private/ in
    assert _indexed(lib) == {"a.png", "private/q.png"}
    with Library(lib).catalog.Session() as s:
        row = s.scalar(select(Root))
        assert row.excludes is None and row.default_excludes is True


def test_watcher_keeps_the_stored_exclusions(tmp_path):
    import time

    from searchlite.watch import start_watching

    root = tmp_path / "photos"
    _photo(root / "a.png", (1, 2, 3))
    lib = Library(tmp_path / "lib", device="cpu")
    lib.index([root], ["demo"], exclude=["skip/"])
    watcher = start_watching(lib, [root], ["demo"], debounce=0.3, rescan_every=None, initial_scan=False)
    try:
        _photo(root / "skip" / "s.png", (4, 5, 6))
        _photo(root / "@eaDir" / "e.png", (7, 8, 9))
        _photo(root / "b.png", (10, 11, 12))
        time.sleep(1.5)
        assert watcher.wait_idle(60)
    finally:
        watcher.stop()
    assert _indexed(lib.path) == {"a.png", "b.png"}
