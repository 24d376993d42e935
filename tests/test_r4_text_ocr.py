"""OCR with the real PP-OCR models (rapidocr wheel): rendered signs in Latin, Chinese and Japanese are read,
a photo without text gets no row, the --ocr choice is kept with the library, failures are listed, never fatal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from sqlalchemy import select

from searchlite.catalog import ImageRow
from searchlite.library import Library
from searchlite.textindex import fields_of
from searchlite.textnorm import fold

pytest.importorskip("rapidocr")

CJK_FONT = Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc")
#: text -> index of the face in the Noto CJK collection (0: Japanese, 2: Simplified Chinese)
SIGNS = {"BOULANGERIE": 0, "INVOICE 4711": 0, "东京站 出口": 2, "東京駅 南口": 0, "Hauptbahnhof": 0}


def _font(face: int, size: int) -> ImageFont.FreeTypeFont:
    if CJK_FONT.exists():
        return ImageFont.truetype(str(CJK_FONT), size, index=face)
    return ImageFont.load_default(size)


def render_sign(path: Path, text: str, face: int = 0, seed: int = 0, size: tuple[int, int] = (900, 600)) -> Path:
    """A photo-like picture (blurred noise) with a light sign carrying ``text``."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(6))
    draw = ImageDraw.Draw(img)
    draw.rectangle((60, 200, size[0] - 60, 400), fill=(245, 245, 235))
    draw.text((100, 245), text, font=_font(face, 84), fill=(20, 20, 20))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=92)
    return path


def plain_photo(path: Path, seed: int = 7, size: tuple[int, int] = (900, 600)) -> Path:
    """A smooth photo without text (a gradient sky over a darker ground)."""
    y = np.linspace(0, 1, size[1])[:, None, None]
    sky = np.array([90, 140, 220]) * (1 - y) + np.array([40, 90, 40]) * y
    img = Image.fromarray(np.broadcast_to(sky, (size[1], size[0], 3)).astype(np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=92)
    return path


def _squash(text: str) -> str:
    return fold(text).replace(" ", "")


def _ocr_rows(lib_dir: Path) -> dict[str, dict]:
    lib = Library(lib_dir)
    with lib.catalog.Session() as s:
        rows = {r.id: r for r in s.execute(select(ImageRow)).scalars()}
        text = fields_of(s, rows)
        return {rows[i].relpath: {"ocr": text.get(i, {}).get("ocr"), "version": rows[i].ocr_version,
                                  "error": rows[i].text_error, "status": rows[i].status} for i in rows}


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.run([sys.executable, "-m", "searchlite.cli.main", *args], check=True, env=env,
                          capture_output=True, text=True)


@pytest.mark.slow
def test_index_ocr_reads_signs_in_three_scripts_and_keeps_the_setting(tmp_path, hf_siglip):
    photos, lib_dir = tmp_path / "photos", tmp_path / "lib"
    cjk = CJK_FONT.exists()
    signs = {t: f for t, f in SIGNS.items() if cjk or t.isascii()}
    for i, (text, face) in enumerate(signs.items()):
        render_sign(photos / f"sign{i}.jpg", text, face, seed=i)
    plain_photo(photos / "sky.jpg")
    spec = f"hf:{hf_siglip}"
    _cli("index", str(photos), "--model", spec, "--library", str(lib_dir), "--ocr")
    rows = _ocr_rows(lib_dir)
    for i, text in enumerate(signs):
        got = rows[f"sign{i}.jpg"]
        assert got["ocr"] is not None and _squash(text) in _squash(got["ocr"]), (text, got)
        assert got["version"] and got["version"].startswith("rapidocr-") and got["error"] is None
    assert rows["sky.jpg"]["ocr"] is None and rows["sky.jpg"]["error"] is None and rows["sky.jpg"]["status"] == "ok"
    status = json.loads(_cli("status", "--json", "--library", str(lib_dir)).stdout)
    assert status["ocr_enabled"] is True and status["text"]["ocr"] == len(signs)

    # a later run without the flag keeps OCR on; --no-ocr turns it off (kept text stays searchable)
    render_sign(photos / "later.jpg", "BOULANGERIE", 0, seed=11)
    _cli("index", str(photos), "--library", str(lib_dir))
    assert "boulangerie" in fold(_ocr_rows(lib_dir)["later.jpg"]["ocr"] or "")
    render_sign(photos / "off.jpg", "Hauptbahnhof", 0, seed=12)
    _cli("index", str(photos), "--library", str(lib_dir), "--no-ocr")
    rows = _ocr_rows(lib_dir)
    assert rows["off.jpg"]["ocr"] is None and rows["off.jpg"]["version"] is None
    assert rows["sign0.jpg"]["ocr"] is not None
    assert json.loads(_cli("status", "--json", "--library", str(lib_dir)).stdout)["ocr_enabled"] is False


def test_ocr_failure_is_recorded_and_listed_not_fatal(tmp_path, hf_siglip, monkeypatch):
    from searchlite import ocr

    photos = tmp_path / "photos"
    plain_photo(photos / "fine.jpg")
    plain_photo(photos / "broken.jpg", seed=3)

    class Engine:
        def read(self, image, full=None):
            return ocr.OcrResult(lines=[])

    def load(path, side=ocr.READ_SIDE):
        if path.endswith("broken.jpg"):
            raise RuntimeError("onnxruntime exploded")
        return Image.new("RGB", (8, 8))

    monkeypatch.setattr(ocr, "load_for_ocr", load)
    monkeypatch.setattr(ocr, "shared_engine", lambda: Engine())
    lib = Library(tmp_path / "lib")
    stats = lib.index([photos], [f"hf:{hf_siglip}"], ocr=True)
    assert stats.added == 2 and stats.failed == 0
    rows = _ocr_rows(tmp_path / "lib")
    assert rows["broken.jpg"]["status"] == "ok" and "onnxruntime exploded" in rows["broken.jpg"]["error"]
    assert rows["fine.jpg"]["error"] is None and rows["fine.jpg"]["ocr"] is None
    assert [(Path(p).name, "onnxruntime exploded" in e) for p, e in lib.errors()] == [("broken.jpg", True)]
    assert lib.status()["text"]["ocr"] == 0


def test_gate_skips_recognition_on_photos_without_text():
    from searchlite.ocr import OcrEngine

    engine = OcrEngine()
    rng = np.random.default_rng(5)
    # grain over smooth colour: detection lights up the whole frame, which is not a line of text
    low = Image.fromarray((rng.random((9, 12, 3)) * 255).astype(np.uint8)).resize((1600, 1200))
    grain = np.asarray(low, dtype=np.int16) + rng.integers(-10, 10, (1200, 1600, 1), dtype=np.int16)
    plain = Image.fromarray(np.clip(grain, 0, 255).astype(np.uint8))
    result = engine.read(plain)
    assert result.lines == [] and result.read_s == 0.0 and result.gate_s > 0
    board = plain.copy()
    ImageDraw.Draw(board).rectangle((300, 500, 1300, 700), fill=(245, 245, 235))
    ImageDraw.Draw(board).text((340, 540), "INVOICE 4711", font=_font(0, 110), fill=(20, 20, 20))
    result = engine.read(board)
    assert result.read_s > 0 and "invoice4711" in _squash(result.text)
