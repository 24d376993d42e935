"""Real photo libraries: HEIC/AVIF, camera RAW (DNG with and without a preview), RAW+JPEG pairs,
Live Photo companions, capture dates, and corrupt files of each kind. Fixtures are written here
(pillow-heif, Pillow, tifffile); each photo's embedding is compared with the embedding of the same
pixels, turned upright independently (numpy), saved as PNG."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from searchlite.cli.main import app
from searchlite.library import Library

rawpy = pytest.importorskip("rawpy", reason="the raw extra is not installed")
pillow_heif = pytest.importorskip("pillow_heif")
tifffile = pytest.importorskip("tifffile")
pillow_heif.register_heif_opener()  # to write the HEIC fixtures

MTIME = datetime(2024, 5, 1, 12, 0, 0).timestamp()


def _picture(w: int = 96, h: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([(xx * 5) % 256, (yy * 7) % 256, ((xx + yy) * 3) % 256], -1).astype(np.uint8)
    rgb[: h // 4] = (250, 250, 250)  # a white band on top: rotation is visible
    return np.clip(rgb.astype(int) + rng.integers(0, 20, rgb.shape), 0, 255).astype(np.uint8)


def _exif(orientation: int = 1, taken: str | None = None, offset: str | None = None) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    ifd = exif.get_ifd(0x8769)
    if taken:
        ifd[0x9003] = taken
    if offset:
        ifd[0x9011] = offset
    return exif.tobytes()


def write_dng(path: Path, rgb: np.ndarray, preview: bool, orientation: int = 1,
              taken: str = "2021:06:15 14:30:00") -> Path:
    """A DNG (TIFF with DNG tags) LibRaw reads: an RGGB mosaic of ``rgb`` in a raw IFD, and with
    ``preview`` an 8-bit RGB preview in IFD0 (as cameras store it: unrotated; the flip tag says how)."""
    h, w, _ = rgb.shape
    lin = (rgb.astype(np.float32) / 255.0) ** 2.2 * 4095
    cfa = np.zeros((h, w), np.uint16)
    cfa[0::2, 0::2], cfa[0::2, 1::2] = lin[0::2, 0::2, 0], lin[0::2, 1::2, 1]
    cfa[1::2, 0::2], cfa[1::2, 1::2] = lin[1::2, 0::2, 1], lin[1::2, 1::2, 2]
    common = [(50706, "B", 4, (1, 4, 0, 0), True), (50707, "B", 4, (1, 1, 0, 0), True),
              (50708, "s", 0, "searchlite test camera", True), (271, "s", 0, "Searchlite", True),
              (272, "s", 0, "TestCam", True), (274, "H", 1, orientation, True), (36867, "s", 0, taken, True)]
    raw_tags = [(33421, "H", 2, (2, 2), True), (33422, "B", 4, (0, 1, 1, 2), True), (50714, "H", 1, 0, True),
                (50717, "H", 1, 4095, True), (50721, "2i", 9, (1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1), True),
                (50728, "2I", 3, (1, 1, 1, 1, 1, 1), True)]
    with tifffile.TiffWriter(path) as tw:
        if preview:
            tw.write(rgb, photometric="rgb", subfiletype=1, subifds=1, extratags=common)
            tw.write(cfa, photometric=32803, subfiletype=0, extratags=raw_tags)
        else:
            tw.write(cfa, photometric=32803, subfiletype=0, extratags=common + raw_tags)
    return path


@pytest.fixture(scope="module")
def shelf(tmp_path_factory, hf_siglip):
    """A folder of the formats, with reference PNGs of each photo's upright pixels in another folder."""
    root = tmp_path_factory.mktemp("formats")
    photos, refs = root / "photos", root / "refs"
    photos.mkdir()
    refs.mkdir()
    pic = _picture()
    upright = np.rot90(pic, k=-1)  # EXIF orientation 6 / LibRaw flip 6: 90 degrees clockwise
    Image.fromarray(pic).save(photos / "phone.heic", exif=_exif(6, "2020:02:03 04:05:06", "+09:00"), quality=95)
    with Image.open(photos / "phone.heic") as im:  # the reference: pillow-heif's own pixels, turned by numpy
        decoded = np.asarray(im.convert("RGB"))
    assert decoded.shape == upright.shape  # pillow-heif hands out the picture upright already
    Image.fromarray(decoded).save(refs / "phone.png")
    (photos / "phone.mov").write_bytes(b"\x00\x00\x00\x14ftypqt  not really a video")  # the Live Photo companion
    Image.fromarray(pic).save(photos / "web.avif", exif=_exif(6), quality=95)
    with Image.open(photos / "web.avif") as im:  # Pillow's AVIF pixels come unrotated, with the EXIF flag
        Image.fromarray(np.rot90(np.asarray(im.convert("RGB")), k=-1)).save(refs / "web.png")
    write_dng(photos / "with-preview.dng", pic, preview=True, orientation=6)
    Image.fromarray(upright).save(refs / "with-preview.png")
    write_dng(photos / "no-preview.dng", pic, preview=False, orientation=6)
    with rawpy.imread(str(photos / "no-preview.dng")) as raw:
        Image.fromarray(raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8)).save(refs / "no-preview.png")
    write_dng(photos / "pair.dng", _picture(seed=3), preview=True)
    Image.fromarray(_picture(seed=3)).save(photos / "pair.jpg", quality=95)
    Image.fromarray(_picture(seed=5)).save(photos / "dated.jpg", exif=_exif(1, "2019:07:04 10:00:00"))
    Image.fromarray(_picture(seed=6)).save(photos / "undated.png")
    (photos / "broken.heic").write_bytes((photos / "phone.heic").read_bytes()[:300])
    (photos / "corrupt.cr2").write_bytes(b"II*\x00" + os.urandom(3000))
    for p in photos.iterdir():
        os.utime(p, (MTIME, MTIME))
    spec = f"hf:{hf_siglip}"
    lib = Library(root / "lib", device="cpu")
    stats = lib.index([photos], [spec])
    refs_lib = Library(root / "refs-lib", device="cpu")
    refs_lib.index([refs], [spec])
    return root, photos, refs, lib, refs_lib, spec, stats


def _vector(lib: Library, spec: str, path: Path) -> np.ndarray:
    image = lib.catalog.find_image(path)
    return lib.stored_vectors(lib.model_row(spec), [image.id])[image.id]


@pytest.mark.parametrize("name", ["phone.heic", "web.avif", "with-preview.dng", "no-preview.dng"])
def test_each_format_embeds_like_its_upright_pixels(shelf, name):
    root, photos, refs, lib, refs_lib, spec, _ = shelf
    ours = _vector(lib, spec, photos / name)
    reference = _vector(refs_lib, spec, refs / (Path(name).stem + ".png"))
    assert float(ours @ reference) >= 0.999


def test_summary_pairs_videos_and_errors(shelf):
    root, photos, _, lib, _, spec, stats = shelf
    assert stats.skipped == 1  # the .mov, silently
    assert stats.failed == 2
    errors = dict(lib.errors())
    assert set(errors) == {str(photos / "broken.heic"), str(photos / "corrupt.cr2")}
    assert all(errors.values())
    paths = {r.path for r in lib.search("x", spec, k=100)}
    assert str(photos / "pair.jpg") in paths and str(photos / "pair.dng") not in paths  # one photo, shown as the JPEG
    assert len(paths) == 7
    out = CliRunner().invoke(app, ["search", "x", "-L", str(lib.path), "-k", "100", "--json"])
    pair = next(r for r in json.loads(out.stdout) if r["path"].endswith("pair.jpg"))
    assert pair["raw"] == str(photos / "pair.dng")


def test_both_indexes_each_half_of_a_pair(tmp_path, shelf):
    root, photos, _, _, _, spec, _ = shelf
    lib = Library(tmp_path / "lib", device="cpu")
    lib.index([photos], [spec], raw_pairs="both")
    paths = {r.path for r in lib.search("x", spec, k=100)}
    assert {str(photos / "pair.jpg"), str(photos / "pair.dng")} <= paths


def test_capture_dates_come_from_the_photo_not_the_file(shelf):
    from searchlite.query import Filters

    root, photos, _, lib, _, spec, _ = shelf
    rows = {Path(r.path).name: r for r in lib.search("x", spec, k=100)}
    assert rows["dated.jpg"].taken_at == "2019-07-04T10:00:00"
    assert rows["phone.heic"].taken_at == "2020-02-03T04:05:06+09:00"  # with its recorded offset
    assert rows["with-preview.dng"].taken_at == "2021-06-15T14:30:00"
    assert rows["undated.png"].taken_at == datetime.fromtimestamp(MTIME).isoformat()
    sources = {Path(p).name: s for p, s in _sources(lib).items()}
    assert sources["dated.jpg"] == "exif" and sources["undated.png"] == "mtime"
    early = lib.search("x", spec, k=100, filters=Filters(before=datetime(2020, 12, 31)))
    assert {Path(r.path).name for r in early} == {"dated.jpg", "phone.heic"}
    by_date = [Path(r.path).name for r in lib.search("x", spec, k=100, sort="date")]
    assert by_date[:3] == ["dated.jpg", "phone.heic", "with-preview.dng"]


def _sources(lib: Library) -> dict[str, str]:
    from sqlalchemy import select

    from searchlite.catalog import ImageRow, Root

    with lib.catalog.Session() as s:
        return {f"{root}/{rel}": src for root, rel, src in s.execute(
            select(Root.path, ImageRow.relpath, ImageRow.taken_source).join(Root, Root.id == ImageRow.root_id))}
