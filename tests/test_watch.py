"""Folder watching: after adds, modifications, moves (a folder rename too) and deletions while
watching, the library equals a fresh index of the same folders; a burst of files is indexed in
batches, not one by one; a locked library is retried, not skipped."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from searchlite.catalog import ImageRow, Root
from searchlite.library import Library
from searchlite.locking import library_lock
from searchlite.sample_data import generate
from searchlite.watch import start_watching

OPTIONS = dict(debounce=0.4, max_delay=3.0, rescan_every=None, initial_scan=False)


def _contents(lib: Library) -> dict[str, tuple[int, np.ndarray]]:
    """relative path -> (image id, demo vector) of every indexed image."""
    row = lib.model_row("demo")
    with lib.catalog.Session() as s:
        images = s.execute(select(ImageRow.id, ImageRow.relpath, Root.path).join(Root, Root.id == ImageRow.root_id)
                           .where(ImageRow.status == "ok")).all()
    vectors = lib.stored_vectors(row, [i for i, _, _ in images])
    return {f"{root}/{rel}": (i, vectors[i]) for i, rel, root in images}


def _settle(watcher, seconds: float = 1.5) -> None:
    time.sleep(seconds)  # let the last events arrive
    assert watcher.wait_idle(120), watcher.errors


def test_watched_library_equals_a_fresh_index(tmp_path):
    spare = tmp_path / "spare"
    generate.generate(spare, 3, 5, "test")
    root = tmp_path / "photos"
    generate.generate(root / "a", 4, 1, "test")
    generate.generate(root / "b" / "deep", 3, 2, "test")
    a = sorted(p.name for p in (root / "a").glob("test-*"))
    lib = Library(tmp_path / "lib", device="cpu")
    lib.index([root], ["demo"])
    before = _contents(lib)
    watcher = start_watching(lib, [root], ["demo"], **OPTIONS)
    try:
        shutil.copyfile(next(spare.glob("*.png")), root / "a" / "new.png")  # add
        with Image.open(next(spare.glob("*.jpg"))) as im:  # modify in place (new content, same name)
            im.save(root / "a" / a[1], quality=90) if a[1].endswith("jpg") else im.save(root / "a" / a[1])
        (root / "moved").mkdir()
        (root / "a" / a[2]).rename(root / "moved" / a[2])  # move to another folder
        (root / "b").rename(root / "renamed")  # folder rename
        (root / "a" / a[3]).unlink()  # delete
        _settle(watcher)
        time.sleep(0.5)
        (root / "a" / "late.jpg").write_bytes((next(spare.glob("*.jpg"))).read_bytes())  # after a run, too
        _settle(watcher)
    finally:
        watcher.stop()
    assert watcher.errors == []
    assert 1 <= len(watcher.runs) <= 6
    fresh = Library(tmp_path / "fresh", device="cpu")
    fresh.index([root], ["demo"])
    got, want = _contents(Library(lib.path, device="cpu")), _contents(fresh)
    assert sorted(got) == sorted(want)
    for path in want:
        np.testing.assert_allclose(got[path][1], want[path][1], atol=1e-6)
    # moves kept the image (its id, hence its vectors were not re-embedded)
    assert got[str(root / "moved" / a[2])][0] == before[str(root / "a" / a[2])][0]
    for old in [p for p in before if "/b/deep/" in p]:
        assert got[old.replace("/b/deep/", "/renamed/deep/")][0] == before[old][0]
    moved = sum(r.stats.moved for r in watcher.runs)
    assert moved == 1 + 3


def test_a_burst_of_files_is_indexed_in_batches(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    lib = Library(tmp_path / "lib", device="cpu")
    Image.new("RGB", (16, 16), (1, 2, 3)).save(root / "seed.png")
    lib.index([root], ["demo"])
    watcher = start_watching(lib, [root], ["demo"], **OPTIONS)
    try:
        (root / "burst").mkdir()
        for i in range(1000):
            Image.new("RGB", (16, 16), (i % 256, i // 256, 7)).save(root / "burst" / f"{i:04d}.png")
        _settle(watcher)
    finally:
        watcher.stop()
    assert watcher.errors == []
    assert sum(r.stats.added for r in watcher.runs) == 1000
    assert len(watcher.runs) <= 10  # batches, not one run per file
    assert Library(lib.path).status()["images"] == {"ok": 1001}


def test_a_locked_library_is_retried_later(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    lib = Library(tmp_path / "lib", device="cpu")
    Image.new("RGB", (16, 16), (1, 2, 3)).save(root / "seed.png")
    lib.index([root], ["demo"])
    watcher = start_watching(lib, [root], ["demo"], retry=0.5, **OPTIONS)
    try:
        with library_lock(lib.path, "test"):
            Image.new("RGB", (16, 16), (9, 9, 9)).save(root / "new.png")
            time.sleep(2.0)
            assert watcher.runs == []  # it could not write meanwhile
        _settle(watcher)
    finally:
        watcher.stop()
    assert sum(r.stats.added for r in watcher.runs) == 1
    assert Path(root / "new.png").is_file() and Library(lib.path).status()["images"] == {"ok": 2}


def _wait_for(predicate, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.3)
    return False


@pytest.mark.slow
def test_watch_and_serve_watch_commands_index_a_new_photo(tmp_path):
    """Both commands start watching (serve loads its models first: minutes on a busy 2-core box)."""
    import os
    import signal
    import subprocess
    import sys

    root = tmp_path / "photos"
    root.mkdir()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(root / "seed.png")
    lib = Library(tmp_path / "lib", device="cpu")
    lib.index([root], ["demo"])
    env = {**os.environ, "SEARCHLITE_NO_SERVER": "1"}
    for n, argv in enumerate((["watch", "--debounce", "0.3"], ["serve", "--watch"])):
        proc = subprocess.Popen([sys.executable, "-m", "searchlite", *argv, "-L", str(lib.path)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            line = proc.stdout.readline()
            while "watching" not in line and line:
                line = proc.stdout.readline()
            assert "watching" in line
            time.sleep(1.0)
            Image.new("RGB", (16, 16), (50 + n, 2, 3)).save(root / f"new{n}.png")
            found = _wait_for(lambda n=n: Library(lib.path).status()["images"].get("ok") == 2 + n, 420)
        finally:
            proc.send_signal(signal.SIGINT)
            out = proc.communicate(timeout=30)[0]
        assert found, (argv, line, out[-3000:], Library(lib.path).status()["images"])
