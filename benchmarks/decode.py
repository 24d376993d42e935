"""Decode + preprocess speed of 12 MP photos per format: JPEG (full and draft), PNG, WebP, HEIC,
AVIF, and camera RAW (a DNG with its embedded JPEG preview, and one without a preview, which is
demosaiced at half size); and the effect of draft mode on embeddings.

    python benchmarks/decode.py [--images 6] [--model demo] [--arch ViT-B-16-SigLIP]
    python benchmarks/decode.py --quick     # one 1 MP photo per format: checks the benchmark runs

Synthetic 4000x3000 photos (smooth colour fields + texture + shapes, so JPEG sizes are realistic,
~2-4 MB) are written to a temp folder. Times are single-threaded, per image, medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from PIL import Image
from scratch import scratch_dir
from synthetic import dng, photo

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--size", type=int, default=224, help="model input size for the timing")
    parser.add_argument("--model", action="append", default=[], help="spec(s) to compare embeddings with")
    parser.add_argument("--arch", action="append", default=[],
                        help="open_clip architecture(s), random-init, to compare embeddings with")
    parser.add_argument("--quick", action="store_true", help="one small photo per format (a smoke run)")
    args = parser.parse_args()
    size = (1200, 900) if args.quick else (4000, 3000)
    if args.quick:
        args.images = 1
    import torch

    torch.set_num_threads(1)
    from searchlite.imaging import init_decoders, load_image

    init_decoders()  # also lets Pillow write the HEIC inputs
    folder = scratch_dir()
    jpgs, pngs, webps, heics, avifs, previews, bare = [], [], [], [], [], [], []
    for i in range(args.images):
        img = photo(i, size)
        jpgs.append(folder / f"{i}.jpg")
        img.save(jpgs[-1], quality=90)
        if i < 2:
            pngs.append(folder / f"{i}.png")
            img.save(pngs[-1], compress_level=1)
            webps.append(folder / f"{i}.webp")
            img.save(webps[-1], quality=90)
            heics.append(folder / f"{i}.heic")
            img.save(heics[-1], quality=90)
            avifs.append(folder / f"{i}.avif")
            img.save(avifs[-1], quality=80)
            try:
                previews.append(dng(folder / f"{i}-preview.dng", img, preview=True))
            except KeyError as exc:  # tifffile writes the JPEG preview with imagecodecs
                print(f"skipping the RAW-with-preview row: {exc}", file=sys.stderr)
            bare.append(dng(folder / f"{i}-bare.dng", img, preview=False))
    target = (args.size, args.size)

    def prep(path: Path, draft: bool, reducing_gap: float | None = None) -> Image.Image:
        im = load_image(path, target_size=target, draft=draft).image
        return im.resize(target, Image.Resampling.BICUBIC, reducing_gap=reducing_gap)

    rows = {}
    for name, files, kwargs in (("jpeg full", jpgs, {"draft": False}), ("jpeg draft", jpgs, {"draft": True}),
                                ("png full", pngs, {"draft": False}),
                                ("png reducing_gap=3", pngs, {"draft": False, "reducing_gap": 3.0}),
                                ("webp full", webps, {"draft": False}), ("heic", heics, {"draft": True}),
                                ("avif", avifs, {"draft": True}), ("raw: embedded jpeg preview", previews,
                                                                   {"draft": True}),
                                ("raw: half-size demosaic", bare, {"draft": True})):
        if not files:
            continue
        per = [timed(lambda f=f, kw=kwargs: prep(f, **kw), 3) for f in files]
        rows[name] = {"ms_per_image": round(1000 * statistics.median(per), 1),
                      "img_per_s_per_core": round(1 / statistics.median(per), 2)}
        print(f"{name:22} {rows[name]['ms_per_image']:8.1f} ms/img  {rows[name]['img_per_s_per_core']:6.2f} img/s/core",
              flush=True)
    speedup = rows["jpeg full"]["ms_per_image"] / max(rows["jpeg draft"]["ms_per_image"], 0.1)
    print(f"draft speed-up: {speedup:.2f}x")
    result = {"decode": rows, "draft_speedup": round(speedup, 2), "mean_jpeg_mb":
              round(statistics.mean(p.stat().st_size for p in jpgs) / 1e6, 2), "cosine_draft_vs_full": {}}
    from searchlite.models import load_embedder

    if args.arch:
        from synthetic import random_openclip_folder

        for arch in args.arch:
            args.model.append(f"openclip:{random_openclip_folder(arch, folder / arch)}")
    for spec in args.model:
        emb = load_embedder(spec, device="cpu")
        full = emb.embed_images([load_image(p, target_size=emb.image_size, draft=False).image for p in jpgs])
        draft = emb.embed_images([load_image(p, target_size=emb.image_size, draft=True).image for p in jpgs])
        cos = (full * draft).sum(1)
        result["cosine_draft_vs_full"][spec] = {"min": float(cos.min()), "mean": float(cos.mean())}
        print(f"{spec}: cosine draft vs full min {cos.min():.4f} mean {cos.mean():.4f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
