"""OCR quality and cost (issue 27): word recall per script on rendered signs, and index throughput with
and without ``--ocr`` on 12 MP JPEGs.

    python benchmarks/ocr.py [--quick] [--signs 40] [--photos 20] [--model demo] [--json out.json]

recall: signs rendered with Pillow in Latin, Chinese, Japanese and Korean (Noto CJK; several sizes
and small rotations) on photo-like backgrounds, read by ``searchlite.ocr.OcrEngine``; a word counts
as found when its case-folded form (spaces ignored) is inside the recognised text.
throughput: ``Library.index`` of N generated 12 MP JPEGs, fresh library each run, with and without
OCR, on (a) photos without text, (b) a mix where 20% carry a sign. Printed: img/s, the OCR overhead,
and where OCR time goes (the detection gate on every photo vs. the full read on photos with text).
``--quick`` runs a handful of images (a smoke test; the real figures come from a full run).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scratch import scratch_dir  # noqa: E402

CJK_FONT = Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc")
LATIN_FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
#: script -> (collection face of Noto CJK, words)
WORDS = {
    "latin": (0, ["BOULANGERIE", "INVOICE 4711", "Hauptbahnhof", "PHARMACIE", "Exit 12", "Bäckerei", "OPEN",
                  "Gare du Nord"]),
    "chinese": (2, ["东京站 出口", "北京 南站", "欢迎光临", "地铁 入口", "停车场"]),
    "japanese": (0, ["東京駅 南口", "出口", "営業中", "新宿 西口", "ラーメン"]),
    "korean": (1, ["서울역", "출구", "영업중", "지하철 입구", "카페"]),
}


def _font(script: str, size: int) -> ImageFont.FreeTypeFont:
    face = WORDS[script][0]
    if CJK_FONT.exists():
        return ImageFont.truetype(str(CJK_FONT), size, index=face)
    if LATIN_FONT.exists():
        return ImageFont.truetype(str(LATIN_FONT), size)
    return ImageFont.load_default(size)


def background(seed: int, size: tuple[int, int]) -> Image.Image:
    """Photo-like pixels: smooth colour fields with a little grain (realistic JPEG sizes)."""
    rng = np.random.default_rng(seed)
    low = Image.fromarray((rng.random((9, 12, 3)) * 255).astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)
    arr = np.asarray(low, dtype=np.int16) + rng.integers(-10, 10, (size[1], size[0], 1), dtype=np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def sign(img: Image.Image, text: str, script: str, seed: int, scale: float = 1.0) -> Image.Image:
    """Paste a light sign with ``text`` (size and angle varied by ``seed``) onto ``img``."""
    rng = np.random.default_rng(seed)
    size = int(rng.integers(48, 110) * scale)
    font = _font(script, size)
    left, top, right, bottom = font.getbbox(text)
    pad = size // 3
    board = Image.new("RGB", (right - left + 2 * pad, bottom - top + 2 * pad), (245, 244, 236))
    ImageDraw.Draw(board).text((pad - left, pad - top), text, font=font, fill=(25, 25, 30))
    board = board.rotate(float(rng.uniform(-6, 6)), expand=True, fillcolor=(245, 244, 236))
    out = img.copy()
    x = int(rng.integers(0, max(1, out.width - board.width)))
    y = int(rng.integers(0, max(1, out.height - board.height)))
    out.paste(board, (x, y))
    return out


def _squash(text: str) -> str:
    from searchlite.textnorm import fold

    return fold(text).replace(" ", "")


def recall(n: int) -> dict:
    """Word recall per script on ``n`` rendered signs (900x600)."""
    from searchlite.ocr import OcrEngine

    engine = OcrEngine()
    found: dict[str, list[int]] = {s: [0, 0] for s in WORDS}
    timing = {"gate_s": 0.0, "read_s": 0.0}
    scripts = list(WORDS)
    for i in range(n):
        script = scripts[i % len(scripts)]
        words = WORDS[script][1]
        text = words[(i // len(scripts)) % len(words)]
        img = sign(background(i, (900, 600)).filter(ImageFilter.GaussianBlur(1)), text, script, seed=i)
        result = engine.read(img)
        timing["gate_s"] += result.gate_s
        timing["read_s"] += result.read_s
        got = _squash(result.text)
        for word in text.split():
            found[script][0] += _squash(word) in got
            found[script][1] += 1
    return {"recall": {s: round(f / t, 3) if t else None for s, (f, t) in found.items()},
            "words": {s: t for s, (_, t) in found.items()}, "seconds_per_image": round(sum(timing.values()) / n, 3),
            **{k: round(v / n, 3) for k, v in timing.items()}}


def photos(folder: Path, n: int, text_share: float, size: tuple[int, int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    scripts = list(WORDS)
    every = round(1 / text_share) if text_share else 0
    for i in range(n):
        img = background(1000 + i, size)
        if every and i % every == 0:
            script = scripts[i % len(scripts)]
            img = sign(img, WORDS[script][1][0], script, seed=i, scale=size[0] / 900 / 2)
        img.save(folder / f"p{i:04d}.jpg", quality=90)


def throughput(n: int, model: str, size: tuple[int, int]) -> dict:
    from searchlite.library import Library
    from searchlite.ocr import shared_engine

    work = scratch_dir("searchlite-bench-ocr-")
    photos(work / "warm", 1, 0.0, (64, 48))
    Library(work / "lib-warm").index([work / "warm"], [model])  # model load and export out of the timing
    shared_engine()  # the OCR models load once per process (~1-3 s), out of the timing too
    out: dict[str, dict] = {}
    for label, share in (("no_text", 0.0), ("mix_20pct", 0.2)):
        folder = work / label
        photos(folder, n, share, size)
        for ocr in (False, True):
            lib = Library(work / f"lib-{label}-{ocr}")
            start = time.perf_counter()
            stats = lib.index([folder], [model], ocr=ocr)
            seconds = time.perf_counter() - start
            out.setdefault(label, {})["ocr" if ocr else "plain"] = {
                "img_per_s": round(n / seconds, 3), "seconds": round(seconds, 2),
                **{k: v for k, v in stats.stages.items() if k.startswith(("ocr", "meta"))}}
        row = out[label]
        row["ocr_overhead"] = round(row["ocr"]["seconds"] / row["plain"]["seconds"] - 1, 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few images: a smoke test of the benchmark")
    parser.add_argument("--signs", type=int, default=40)
    parser.add_argument("--photos", type=int, default=20)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    signs, n = (8, 5) if args.quick else (args.signs, args.photos)
    size = (1600, 1200) if args.quick else (4000, 3000)
    result = {"signs": signs, "photos": n, "size": list(size), "recall": recall(signs),
              "throughput": throughput(n, args.model, size)}
    print(json.dumps(result, indent=1, ensure_ascii=False))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
