"""Indexing pipeline efficiency: `searchlite index` throughput divided by the bound its two stages
allow on this machine, measured in the same run; and memory while indexing many images.

    python benchmarks/indexing.py efficiency [--images 24] [--arch ViT-B-16-SigLIP] [--device cpu]
        [--formats jpeg,heic,dng,png]   (a mixed library: HEIC, RAW with its JPEG preview, PNG)
    python benchmarks/indexing.py memory [--images 10000]

efficiency: a random-init open_clip model of a real architecture (same compute as trained
weights) saved as a local folder; 12 MP synthetic photos (see decode.py). Bound on a CPU-only box
(decode and model share the cores): 1 / (1/forward + 1/decode_over_all_cores); on a GPU:
min(forward, decode_over_all_cores). Model loading is excluded from every figure.

memory: peak RSS sampled every 50 ms while indexing N small images with a tiny model; the
printout shows RSS after each tenth of the run, which stays flat if memory is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from scratch import scratch_dir

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))


def random_openclip_folder(arch: str, folder: Path) -> Path:
    """A local open_clip folder with the architecture's config and random weights (no download)."""
    import open_clip
    import tiny_models
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    cfg = open_clip.get_model_config(arch)
    if "hf_tokenizer_name" in cfg.get("text_cfg", {}):
        from transformers import SiglipTokenizer

        sp = tiny_models.make_sentencepiece(folder / "_sp")
        SiglipTokenizer(vocab_file=str(sp), model_max_length=cfg["text_cfg"].get("context_length", 64)).save_pretrained(folder)
    pre = open_clip.get_pretrained_cfg(arch, open_clip.list_pretrained_tags_by_model(arch)[0]) \
        if open_clip.list_pretrained_tags_by_model(arch) else {}
    preprocess = {k: pre[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in pre}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": preprocess}))
    model = open_clip.create_model(arch, pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def efficiency(args) -> dict:
    import torch
    from decode import photo

    from searchlite.imaging import load_image
    from searchlite.indexer import Indexer
    from searchlite.library import Library
    from searchlite.models import load_embedder

    work = scratch_dir()
    photos = work / "photos"
    photos.mkdir()
    formats = args.formats.split(",")
    for i in range(args.images):
        save_photo(photo(i), photos / f"{i:04d}", formats[i % len(formats)])
    spec = f"openclip:{random_openclip_folder(args.arch, work / 'model')}"
    emb = load_embedder(spec, device=args.device, batch_size=args.batch_size)
    files = sorted(p for p in photos.iterdir() if p.suffix != ".jpg" or not (p.with_suffix(".dng")).exists())
    cores = os.cpu_count() or 1

    # stage 1: decode + preprocess over all cores
    def prep(p: Path) -> np.ndarray:
        return emb.preprocess(load_image(p, target_size=emb.image_size, draft=True).image)

    with ThreadPoolExecutor(cores) as pool:
        t = time.perf_counter()
        pixels = list(pool.map(prep, files))
        decode_rate = len(files) / (time.perf_counter() - t)
    # stage 2: model forward on ready batches
    stack = np.stack(pixels)
    emb.embed_pixels(stack[: args.batch_size])  # warm-up
    t = time.perf_counter()
    emb.embed_pixels(stack)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    forward_rate = len(files) / (time.perf_counter() - t)
    # the real pipeline
    lib = Library(work / "lib", device=args.device, batch_size=args.batch_size)
    indexer = Indexer(lib.catalog, [(lib.register(spec, emb, indexed=True), emb)], batch_size=args.batch_size,
                      workers=cores)
    t = time.perf_counter()
    indexer.run([photos])
    pipeline_rate = len(files) / (time.perf_counter() - t)
    on_gpu = args.device.startswith("cuda")
    bound = min(forward_rate, decode_rate) if on_gpu else 1 / (1 / forward_rate + 1 / decode_rate)
    result = {"arch": args.arch, "device": args.device, "cores": cores, "images": len(files), "formats": formats,
              "decode_img_s_all_cores": round(decode_rate, 2), "forward_img_s": round(forward_rate, 2),
              "bound_img_s": round(bound, 2), "pipeline_img_s": round(pipeline_rate, 2),
              "efficiency": round(pipeline_rate / bound, 3)}
    for k, v in result.items():
        print(f"{k:24} {v}")
    return result


def save_photo(img, stem: Path, fmt: str) -> None:
    """Write a photo in one of the formats of a real library (a DNG gets a full-size JPEG preview)."""
    if fmt == "heic":
        import pillow_heif

        pillow_heif.register_heif_opener()
        img.save(stem.with_suffix(".heic"), quality=90)
    elif fmt == "dng":
        from decode import dng

        dng(stem.with_suffix(".dng"), img, preview=True)
    elif fmt == "png":
        img.save(stem.with_suffix(".png"), compress_level=1)
    else:
        img.save(stem.with_suffix(".jpg"), quality=90)


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory(args) -> dict:
    import tiny_models
    from PIL import Image

    from searchlite.library import Library

    work = scratch_dir()
    model = tiny_models.build_siglip(work / "model")
    photos = work / "photos"
    rng = np.random.default_rng(0)
    for i in range(args.images):
        d = photos / f"{i // 1000:03d}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(d / f"{i:06d}.jpg")
    lib = Library(work / "lib", device="cpu", batch_size=64)
    lib.embedder(f"hf:{model}")
    samples: list[tuple[int, float]] = []
    progress_done = [0]
    stop = threading.Event()

    def sampler() -> None:
        while not stop.is_set():
            samples.append((progress_done[0], _rss_mb()))
            time.sleep(0.05)

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    start_rss = _rss_mb()
    lib.index([photos], [f"hf:{model}"], progress=lambda done, total: progress_done.__setitem__(0, done))
    stop.set()
    thread.join()
    tenths = []
    for t in range(1, 11):
        upto = [rss for done, rss in samples if done <= args.images * t / 10]
        tenths.append(round(max(upto), 1) if upto else None)
    result = {"images": args.images, "rss_start_mb": round(start_rss, 1), "peak_rss_by_tenth_mb": tenths}
    print(json.dumps(result))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("efficiency", "memory"))
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--arch", default="ViT-B-16-SigLIP")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--formats", default="jpeg", help="comma-separated mix: jpeg, heic, dng, png")
    args = parser.parse_args()
    if args.what == "efficiency":
        args.images = args.images or 24
        print(json.dumps(efficiency(args)))
    else:
        args.images = args.images or 10000
        memory(args)


if __name__ == "__main__":
    main()
