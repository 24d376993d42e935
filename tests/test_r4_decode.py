"""Round 4, the one decode entry point (issue 26 items 4, 12, 13, 14, 15): plugin registry set up
once, photo extensions derived from the installed decoders, one reason vocabulary, RAW metadata
without unpacking, reduced-size HEIF decodes and a pixel budget."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from searchlite.errors import ImageDecodeError
from searchlite.imaging import load_image

ROOT = Path(__file__).resolve().parents[1]


def _noise(w: int = 256, h: int = 192, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1)
    return Image.fromarray(np.clip(base + rng.integers(0, 40, base.shape), 0, 255).astype(np.uint8), "RGB")


def _error(source) -> str:
    with pytest.raises(ImageDecodeError) as err:
        load_image(source)
    return str(err.value)


# -- item 14: the plugin registry is initialised once, before the first open -------------------------
def test_an_ico_decodes_after_a_tga_in_the_same_process(tmp_path):
    Image.new("RGB", (40, 30), "red").save(tmp_path / "a.tga")
    rgba = np.random.default_rng(0).integers(0, 255, (128, 128, 4), dtype=np.uint8)
    # an uncompressed 128x128 entry: its header bytes also pass TGA's loose header check
    Image.fromarray(rgba, "RGBA").save(tmp_path / "b.ico", sizes=[(128, 128)], bitmap_format="bmp")
    code = (
        "import sys; from searchlite.imaging import load_image\n"
        f"load_image({str(tmp_path / 'a.tga')!r})\n"
        f"print(load_image(open({str(tmp_path / 'b.ico')!r}, 'rb').read()).image.size, "
        f"load_image({str(tmp_path / 'b.ico')!r}).format)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "(128, 128) ICO"  # Pillow's own reading of the file


# -- item 13: the extension list comes from the installed decoders ------------------------------------
def _write_formats(folder: Path) -> dict[str, Path]:
    pic = _noise(64, 48)
    files = {}
    files[".mpo"] = folder / "stereo.mpo"
    pic.save(files[".mpo"], "MPO", save_all=True, append_images=[_noise(64, 48, seed=1)])
    files[".apng"] = folder / "anim.apng"
    pic.save(files[".apng"], "PNG", save_all=True, append_images=[_noise(64, 48, seed=2)])
    files[".qoi"] = folder / "pic.qoi"
    pic.save(files[".qoi"], "QOI")
    files[".jpf"] = folder / "pic.jpf"
    pic.save(files[".jpf"], "JPEG2000")
    files[".j2c"] = folder / "pic.j2c"
    pic.save(files[".j2c"], "JPEG2000")
    files[".btf"] = folder / "pic.btf"
    pic.save(files[".btf"], "TIFF", big_tiff=True)
    files[".jps"] = folder / "pic.jps"
    pic.save(files[".jps"], "JPEG")
    return files


def test_photo_formats_pillow_reads_are_indexed_extensions(tmp_path):
    from searchlite.imaging import IMAGE_EXTENSIONS, NOT_PHOTOS

    files = _write_formats(tmp_path)
    for ext, path in files.items():
        assert ext in IMAGE_EXTENSIONS, ext
        decoded = load_image(path)
        assert decoded.image.size == (64, 48), ext
    assert {".psd", ".avifs", ".heic", ".dng", ".cr3", ".jpg"} <= IMAGE_EXTENSIONS
    assert not {".pdf", ".eps", ".mpeg"} & IMAGE_EXTENSIONS and ".pdf" in NOT_PHOTOS
    # every registered extension of a format Pillow can open is either a photo or explicitly not one
    Image.init()
    opened = {e for e, f in Image.registered_extensions().items() if f in Image.OPEN or f == "MPO"}
    from searchlite.imaging import VIDEO_EXTENSIONS

    assert opened <= IMAGE_EXTENSIONS | set(NOT_PHOTOS) | VIDEO_EXTENSIONS


def test_the_scan_picks_up_the_new_formats(tmp_path):
    from searchlite.indexer.scan import walk

    files = _write_formats(tmp_path)
    (tmp_path / "doc.pdf").write_bytes(b"%PDF-1.4\n")
    found = {Path(e.relpath).name for e in walk(tmp_path)}
    assert found == {p.name for p in files.values()}


def test_format_filter_knows_the_new_formats():
    from searchlite.imaging import format_names

    assert format_names(["psd"]) == ["PSD"] and format_names(["qoi"]) == ["QOI"]
    assert format_names(["jpg"]) == ["JPEG", "MPO"]


# -- item 15: one reason vocabulary, the library's message kept as detail ---------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_claiming(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
            + _png_chunk(b"IEND", b""))


def test_a_truncated_jpeg_is_truncated():
    buf = io.BytesIO()
    _noise(512, 384).save(buf, "JPEG", quality=95)
    assert _error(buf.getvalue()[: len(buf.getvalue()) // 2]).startswith("truncated: ")


def test_a_truncated_heic_keeps_libheifs_words():
    pillow_heif = pytest.importorskip("pillow_heif")
    buf = io.BytesIO()
    pillow_heif.from_pillow(_noise(128, 96)).save(buf, quality=90)
    error = _error(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert error.startswith("truncated: ") and "end of file" in error.lower(), error


def test_a_zero_byte_file_is_empty(tmp_path):
    (tmp_path / "zero.jpg").write_bytes(b"")
    assert _error(tmp_path / "zero.jpg").startswith("empty")
    assert _error(b"").startswith("empty")


def test_a_tiff_with_a_compression_libtiff_lacks_names_it(tmp_path):
    buf = io.BytesIO()
    _noise(64, 48).save(buf, "TIFF")  # uncompressed; then the Compression tag says WebP (50001)
    data = bytearray(buf.getvalue())
    ifd = struct.unpack("<I", data[4:8])[0]
    count = struct.unpack("<H", data[ifd:ifd + 2])[0]
    for i in range(count):
        entry = ifd + 2 + 12 * i
        if struct.unpack("<H", data[entry:entry + 2])[0] == 259:
            data[entry + 8:entry + 10] = struct.pack("<H", 50001)
    from PIL import features

    if not features.check_codec("libtiff"):
        pytest.skip("Pillow without libtiff")
    error = _error(bytes(data))
    try:  # only meaningful where this libtiff indeed lacks WebP
        with Image.open(io.BytesIO(bytes(data))) as im:
            im.load()
        pytest.skip("this libtiff decodes WebP")
    except OSError:
        pass
    assert error.startswith("unsupported compression webp: "), error


def test_a_bomb_ico_is_too_large():
    png = _png_claiming(40_000, 40_000)  # 1.6 GP claimed by the embedded PNG; the ICO directory says 256x256
    ico = struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 22) + png
    assert _error(ico).startswith("too large: ")


def test_a_png_with_a_huge_text_chunk_is_too_large():
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * (PngImagePlugin.MAX_TEXT_CHUNK + 10), zip=True)
    buf = io.BytesIO()
    _noise(32, 32).save(buf, "PNG", pnginfo=info)
    error = _error(buf.getvalue())
    assert error.startswith("too large: ") and "MAX_TEXT_CHUNK" in error  # the library's words kept


def test_a_broken_header_is_a_corrupt_header_not_a_non_image(tmp_path):
    assert _error(b"\xff\xd8\xff\xe0" + b"\x00" * 40).startswith("corrupt header: ")
    assert _error(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40).startswith("corrupt header: ")
    assert _error(b"this is a text file, not a photo").startswith("not an image")
    assert _error(tmp_path / "gone.jpg").startswith("missing")


def test_decoder_warnings_are_kept_with_the_file():
    import warnings

    from searchlite.decoders import capture_notes, init_decoders

    init_decoders()
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # this project's pytest config ignores UserWarning
        with capture_notes() as notes:
            warnings.warn_explicit("a decoder note", UserWarning, "PIL/TiffImagePlugin.py", 1)
    assert notes == ["UserWarning: a decoder note"]


# -- item 12: RAW metadata without unpacking, and truncated RAWs get a reason ------------------------
def _dng(tmp_path: Path, preview: bool = True) -> Path:
    pytest.importorskip("rawpy")
    pytest.importorskip("tifffile")
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from test_formats import write_dng
    finally:
        sys.path.pop(0)
    rgb = np.asarray(_noise(96, 64))
    return write_dng(tmp_path / ("p.dng" if preview else "np.dng"), rgb, preview=preview)


def test_the_raw_preview_path_never_unpacks_the_sensor_data(tmp_path, monkeypatch):
    import rawpy

    path = _dng(tmp_path)
    real_imread = rawpy.imread

    class NoUnpack:
        def __init__(self, raw):
            self._raw = raw

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._raw.close()

        @property
        def other(self):  # LibRaw's `other` unpacks the whole sensor data
            raise AssertionError("the preview path read raw.other")

        def postprocess(self, *a, **k):
            raise AssertionError("the preview path demosaicked")

        def __getattr__(self, name):
            return getattr(self._raw, name)

    monkeypatch.setattr(rawpy, "imread", lambda fp: NoUnpack(real_imread(fp)))
    loaded = load_image(path, target_size=(32, 32))
    assert loaded.image.size == (96, 64)
    assert loaded.taken_at is not None and loaded.taken_at.year == 2021  # from the file's EXIF


def test_a_truncated_raw_has_a_reason_not_libraw_bytes(tmp_path):
    data = _dng(tmp_path, preview=False).read_bytes()
    for cut in (len(data) // 2, 64):
        error = _error(data[:cut]) if False else None
        with pytest.raises(ImageDecodeError) as err:
            load_image(data[:cut], suffix=".dng")
        error = str(err.value)
        assert error.split(":")[0] in {"truncated", "corrupt data", "corrupt header"}, error
        assert "b'" not in error


# -- item 4: reduced-size decodes and the pixel budget ------------------------------------------------
def test_a_large_heic_is_decoded_reduced_to_what_the_model_needs(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    pic = _noise(1200, 900, seed=3)
    heif = pillow_heif.from_pillow(pic)
    heif.save(tmp_path / "big.heic", quality=90)
    from searchlite.pixelbudget import DECODE_BUDGET

    loaded = load_image(tmp_path / "big.heic", target_size=(224, 224))
    assert (loaded.width, loaded.height) == (1200, 900) and loaded.format == "HEIF"
    assert loaded.image.size == (300, 225)  # 1/4: the largest box reduction keeping 224 px
    full = pillow_heif.open_heif(tmp_path / "big.heic").to_pillow().convert("RGB")
    reference = np.asarray(full.reduce(4), dtype=np.int16)  # Pillow's box reduction of the full decode
    assert np.abs(np.asarray(loaded.image, dtype=np.int16) - reference).max() <= 1
    assert DECODE_BUDGET.in_use == 0
    exact = load_image(tmp_path / "big.heic", target_size=(224, 224), draft=False)
    assert exact.image.size == (1200, 900)  # --no-draft keeps the full decode


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_grid_heic_is_decoded_tile_by_tile_in_every_orientation(tmp_path, monkeypatch, orientation):
    pillow_heif = pytest.importorskip("pillow_heif")
    import searchlite.heifreduce

    rng = np.random.default_rng(orientation)
    low = Image.fromarray((rng.random((9, 12, 3)) * 255).astype(np.uint8))
    pic = np.asarray(low.resize((1200, 900), Image.Resampling.BICUBIC)).copy()
    pic[:100, :300] = 250  # a corner mark: a wrong rotation or tile placement shows
    exif = Image.Exif()
    exif[0x0112] = orientation
    heif = pillow_heif.from_pillow(Image.fromarray(pic))
    heif.info["exif"] = exif.tobytes()  # pillow-heif stores it as irot/imir transformations
    heif.save(tmp_path / "grid.heic", quality=90, tile_size=256, enc_params={"preset": "ultrafast"})

    def no_full_decode(*args, **kwargs):
        raise AssertionError("decoded in full, not tile by tile")

    monkeypatch.setattr(searchlite.heifreduce, "decode_reduced", no_full_decode)
    loaded = load_image(tmp_path / "grid.heic", target_size=(224, 224))
    full = pillow_heif.open_heif(tmp_path / "grid.heic").to_pillow().convert("RGB")  # libheif's own full decode
    assert (loaded.width, loaded.height) == full.size
    w, h = loaded.image.size
    assert min(w, h) >= 224 and full.size[0] // w == 4
    reference = full.crop((0, 0, w * 4, h * 4)).reduce(4)
    assert np.abs(np.asarray(loaded.image, dtype=np.int16) - np.asarray(reference, dtype=np.int16)).max() <= 1


def test_the_pixel_budget_bounds_pixels_in_flight_not_threads():
    from searchlite.pixelbudget import PixelBudget

    budget = PixelBudget(100)
    inside, most = [0], [0]
    lock = threading.Lock()

    def work(pixels: int) -> None:
        with budget.hold(pixels):
            with lock:
                inside[0] += pixels
                most[0] = max(most[0], inside[0])
            time.sleep(0.02)
            with lock:
                inside[0] -= pixels

    threads = [threading.Thread(target=work, args=(p,)) for p in (60, 60, 30, 150, 10, 60)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert most[0] <= 150 and budget.in_use == 0  # the 150 ran alone; nothing else ever exceeded 100
    assert budget.peak == most[0]
