"""Incremental indexing, crash-resume, awkward files, concurrent search, and index types."""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select

from searchlite.catalog import ImageRow, VectorRow
from searchlite.library import Library


def _photo(path: Path, seed: int, size: tuple[int, int] = (64, 48)) -> Path:
    rng = np.random.default_rng(seed)
    arr = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _photos(folder: Path, n: int, size: tuple[int, int]) -> None:
    for i in range(n):
        _photo(folder / f"{i:04d}.png", i, size=size)


def _counts(lib: Library) -> tuple[int, int]:
    with lib.catalog.Session() as s:
        images = s.scalar(select(func.count()).select_from(ImageRow).where(ImageRow.status == "ok"))
        vectors = s.scalar(select(func.count()).select_from(VectorRow))
    return images, vectors


def _all_paths(lib: Library, spec: str) -> set[str]:
    return {r.path for r in lib.search("a photo", spec, k=1000)}


def test_incremental_add_modify_rename_delete(tmp_path, hf_siglip):
    spec = f"hf:{hf_siglip}"
    photos = tmp_path / "photos"
    for i in range(6):
        _photo(photos / f"p{i}.png", i)
    lib = Library(tmp_path / "lib", device="cpu")
    stats = lib.index([photos], [spec])
    assert (stats.added, stats.failed) == (6, 0)
    assert _counts(lib) == (6, 6)
    first_ids = {r.path: r.image_id for r in lib.search("x", spec, k=10)}

    # nothing changed: nothing is embedded again, and the FAISS file is not rewritten
    index_files = sorted(p.name for p in (tmp_path / "lib" / "vectors").rglob("*.faiss"))
    stats = lib.index([photos], [spec])
    assert (stats.added, stats.updated, stats.moved, stats.removed, stats.unchanged) == (0, 0, 0, 0, 6)
    assert sorted(p.name for p in (tmp_path / "lib" / "vectors").rglob("*.faiss")) == index_files

    # rename keeps the id (and vector); modify keeps the id with a new vector; delete disappears; new file added
    (photos / "sub").mkdir()
    os.rename(photos / "p0.png", photos / "sub" / "renamed.png")
    _photo(photos / "p1.png", 100)
    (photos / "p2.png").unlink()
    _photo(photos / "p6.png", 6)
    stats = lib.index([photos], [spec])
    assert (stats.added, stats.updated, stats.moved, stats.removed) == (1, 1, 1, 1)
    assert _counts(lib) == (6, 6)
    after = {r.path: r.image_id for r in lib.search("x", spec, k=10)}
    assert after[str(photos / "sub" / "renamed.png")] == first_ids[str(photos / "p0.png")]
    assert after[str(photos / "p1.png")] == first_ids[str(photos / "p1.png")]
    from searchlite.imaging import load_image

    emb = lib.embedder(spec)
    fresh = emb.embed_images([load_image(photos / "p1.png", target_size=emb.image_size).image])[0]
    stored = lib.stored_vectors(lib.model_row(spec), [after[str(photos / "p1.png")]])
    np.testing.assert_allclose(stored[after[str(photos / "p1.png")]], fresh, atol=1e-6)
    assert str(photos / "p2.png") not in after and str(photos / "p6.png") in after
    assert len(after) == 6


def test_touch_without_content_change_does_not_reembed(tmp_path, hf_siglip):
    spec = f"hf:{hf_siglip}"
    photo = _photo(tmp_path / "photos" / "a.png", 1)
    lib = Library(tmp_path / "lib", device="cpu")
    lib.index([photo.parent], [spec])
    before = lib.search("x", spec, k=1)[0].image_id
    os.utime(photo, ns=(time.time_ns(), time.time_ns() + 10**9))
    stats = lib.index([photo.parent], [spec])
    assert (stats.added, stats.updated) == (0, 0)
    assert lib.search("x", spec, k=1)[0].image_id == before


def test_missing_root_is_an_error_and_deletes_nothing(tmp_path, hf_siglip):
    from searchlite.errors import LibraryError

    spec = f"hf:{hf_siglip}"
    photos = tmp_path / "photos"
    _photo(photos / "a.png", 1)
    lib = Library(tmp_path / "lib", device="cpu")
    lib.index([photos], [spec])
    shutil.move(photos, tmp_path / "unmounted")
    with pytest.raises(LibraryError):
        lib.index([photos], [spec])
    assert _counts(lib) == (1, 1)


def _png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def _awkward_corpus(folder: Path) -> tuple[list[Path], list[Path]]:
    """Valid images in every mode and odd shape, plus files that must fail with a reason."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rgb = Image.fromarray((rng.random((40, 60, 3)) * 255).astype(np.uint8))
    valid: list[Path] = []

    def save(img: Image.Image, name: str, **kw) -> None:
        img.save(folder / name, **kw)
        valid.append(folder / name)

    for mode in ("1", "L", "P", "RGB", "RGBA", "LA", "CMYK", "I", "F", "I;16"):
        ext = "tiff" if mode in ("I", "F", "I;16", "CMYK", "LA") else "png"
        save(rgb.convert(mode) if mode != "I;16" else Image.fromarray((rng.random((30, 30)) * 65535).astype(np.uint16)),
             f"mode {mode.replace(';', '_')}.{ext}")
    for fmt, ext in (("JPEG", "JPG"), ("BMP", "bmp"), ("WEBP", "webp"), ("GIF", "gif"), ("TIFF", "tif"),
                     ("PPM", "ppm"), ("TGA", "tga"), ("ICO", "ico")):
        save(rgb, f"format.{ext}", format=fmt)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW when displayed
    save(rgb, "rotated.jpg", exif=exif.tobytes())
    frames = [Image.new("RGB", (20, 20), c) for c in ("red", "green", "blue")]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=100)
    valid.append(folder / "animated.gif")
    save(Image.new("RGB", (1, 1), "white"), "one-pixel.png")
    save(Image.new("RGB", (4000, 20), "gray"), "strip 4000x20.png")
    save(Image.fromarray(np.tile((rng.random((1, 8000, 3)) * 255).astype(np.uint8), (6000, 1, 1))),
         "big-48mp.jpg", quality=70)
    save(rgb, "ünïcødé 写真 ☃.png")
    save(rgb, "   spaces   .png")

    invalid: list[Path] = []
    data = (folder / "format.JPG").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "zero.png").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not an image\n")
    (folder / "random.png").write_bytes(rng.bytes(5000))
    (folder / "bomb.png").write_bytes(_png_claiming(60000, 60000))
    os.symlink(folder / "does-not-exist.png", folder / "dangling.png")
    invalid += [folder / n for n in ("truncated.jpg", "zero.png", "text.jpg", "random.png", "bomb.png", "dangling.png")]
    (folder / "loop").mkdir()
    os.symlink(folder, folder / "loop" / "back-to-top")
    return valid, invalid


def test_awkward_files_are_indexed_or_reported(tmp_path, hf_siglip):
    from typer.testing import CliRunner

    from searchlite.cli.main import app

    valid, invalid = _awkward_corpus(tmp_path / "awkward")
    runner = CliRunner()
    result = runner.invoke(app, ["index", str(tmp_path / "awkward"), "-m", f"hf:{hf_siglip}",
                                 "-L", str(tmp_path / "lib"), "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    lib = Library(tmp_path / "lib", device="cpu")
    found = _all_paths(lib, f"hf:{hf_siglip}")
    assert found == {str(p) for p in valid}  # the symlink loop added no duplicates
    errors = dict(lib.errors())
    assert set(errors) == {str(p) for p in invalid}
    assert all(reason for reason in errors.values())
    assert "over searchlite's limit" in errors[str(tmp_path / "awkward" / "bomb.png")]  # our guard, not Pillow's
    assert "dangling" in errors[str(tmp_path / "awkward" / "dangling.png")]
    rotated = next(r for r in lib.search("x", f"hf:{hf_siglip}", k=100) if r.path.endswith("rotated.jpg"))
    assert (rotated.width, rotated.height) == (40, 60)  # EXIF orientation applied


def _index_cmd(photos: Path, lib: Path, spec: str, batch: int = 4) -> list[str]:
    return [sys.executable, "-m", "searchlite", "index", str(photos), "-m", spec, "-L", str(lib), "--device", "cpu",
            "--batch-size", str(batch), "--workers", "1", "--json"]


def _vector_count(lib_dir: Path) -> int:
    """Committed vectors, read with plain sqlite3 (cheap enough to poll every few ms)."""
    import sqlite3

    try:
        with sqlite3.connect(f"file:{lib_dir / 'catalog.sqlite'}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute("SELECT count(*) FROM vectors").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_kill_9_mid_run_then_resume_without_duplicates(tmp_path, hf_siglip):
    spec = f"hf:{hf_siglip}"
    photos = tmp_path / "photos"
    _photos(photos, 300, (160, 160))
    lib_dir = tmp_path / "lib"
    proc = subprocess.Popen(_index_cmd(photos, lib_dir, spec, batch=2), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    killed = False
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if _vector_count(lib_dir) >= 20:
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.005)
    proc.wait()
    if not killed:
        pytest.skip("indexing finished before it could be killed")
    partial = _counts(Library(lib_dir, device="cpu"))
    assert 0 < partial[1] < 300
    subprocess.run(_index_cmd(photos, lib_dir, spec), check=True, stdout=subprocess.DEVNULL)
    lib = Library(lib_dir, device="cpu")
    assert _counts(lib) == (300, 300)
    results = lib.search("x", spec, k=1000)
    assert len(results) == 300 and len({r.image_id for r in results}) == 300
    row = lib.model_row(spec)
    index = lib.model_index(row)
    assert index.live == 300 and index.store.committed == 300  # nothing duplicated in the store either


def test_search_during_indexing_answers_from_committed_state(tmp_path, hf_siglip):
    spec = f"hf:{hf_siglip}"
    photos = tmp_path / "photos"
    _photos(photos, 300, (96, 96))
    lib_dir = tmp_path / "lib"
    first = tmp_path / "first"
    _photo(first / "seed.png", 9999)
    Library(lib_dir, device="cpu").index([first], [spec])
    proc = subprocess.Popen(_index_cmd(photos, lib_dir, spec), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen_sizes = []
    while proc.poll() is None:
        lib = Library(lib_dir, device="cpu")
        results = lib.search("x", spec, k=1000)
        committed = _counts(lib)[0]
        assert len(results) <= committed
        assert len({r.image_id for r in results}) == len(results)
        seen_sizes.append(len(results))
        time.sleep(0.05)
    assert proc.returncode == 0, proc.stderr.read()
    assert len(Library(lib_dir, device="cpu").search("x", spec, k=1000)) == 301
    assert seen_sizes and min(seen_sizes) >= 1


def test_nested_roots_never_duplicate_images(tmp_path, hf_siglip):
    spec = f"hf:{hf_siglip}"
    photos = tmp_path / "photos"
    for i in range(3):
        _photo(photos / "2023" / f"a{i}.png", i)
    _photo(photos / "b.png", 10)
    lib = Library(tmp_path / "lib", device="cpu")
    lib.index([photos / "2023"], [spec])
    ids_before = {r.path: r.image_id for r in lib.search("x", spec, k=10)}
    stats = lib.index([photos], [spec])  # the parent adopts the indexed subfolder
    assert (stats.added, stats.removed) == (1, 0)
    after = {r.path: r.image_id for r in lib.search("x", spec, k=10)}
    assert len(after) == 4 and all(after[p] == i for p, i in ids_before.items())
    assert list(lib.catalog.roots().values()) == [str(photos)]
    (photos / "2023" / "a0.png").unlink()
    stats = lib.index([photos / "2023"], [spec])  # a subfolder of a root: swept only inside it
    assert (stats.added, stats.removed, stats.unchanged) == (0, 1, 2)
    assert _counts(lib) == (3, 3)


def test_one_index_run_at_a_time(tmp_path, hf_siglip):
    import fcntl

    from searchlite.errors import LibraryError

    lib = Library(tmp_path / "lib", device="cpu")
    _photo(tmp_path / "photos" / "a.png", 1)
    with open(tmp_path / "lib" / "index.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        with pytest.raises(LibraryError, match="another searchlite process is writing"):
            lib.index([tmp_path / "photos"], [f"hf:{hf_siglip}"])
    assert lib.index([tmp_path / "photos"], [f"hf:{hf_siglip}"]).added == 1
