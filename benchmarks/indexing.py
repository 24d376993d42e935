"""Indexing pipeline efficiency: `searchlite index` throughput divided by the bound its two stages
allow on this machine, measured in the same run; and memory while indexing many images.

    python benchmarks/indexing.py efficiency [--images 24] [--arch ViT-B-16-SigLIP] [--device cpu]
        [--formats jpeg,heic,dng,png]   (a mixed library: HEIC, RAW with its JPEG preview, PNG)
    python benchmarks/indexing.py memory [--images 10000]
    python benchmarks/indexing.py precision [--images 64] [--repeats 2] [--workers N] [--demo-images 300]

precision: `searchlite index` of N generated 12 MP JPEGs with a SigLIP-base-size model (random
init, hub-free: a transformers SigLIP checkpoint folder with a tiny SentencePiece tokenizer, both
towers at base size: hidden 768, 12 layers, 12 heads, patch 16, 224 px), `--precision fp32` vs
`--precision auto` (and with `--with-bf16` forced bf16) in one run (alternating, `--repeats` times each, fresh libraries), timed by
`index --json` `seconds` (model load, validation and export excluded). Printed: img/s of each,
the ratio, the stage bound in the chosen precision (1 / (1/forward + 1/draft decode over all
cores)) and the pipeline's share of it, the min cosine between the two libraries' vectors, the
one-query time of the ONNX fp32 and torch reduced text towers, and the demo model's `bench`
R@1 / MRR (text->image) in fp32 and bf16 on a generated sample split.

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
from synthetic import random_openclip_folder

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))


def efficiency(args) -> dict:
    import torch
    from synthetic import photo

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
        from synthetic import dng

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


def siglip_base_folder(folder: Path) -> Path:
    """A SigLIP checkpoint folder of base size (both towers; random weights) with a tiny offline
    SentencePiece tokenizer, loadable as ``hf:<folder>``."""
    import tiny_models
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor, SiglipTokenizer

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    sp = tiny_models.make_sentencepiece(folder / "_sp")
    tokenizer = SiglipTokenizer(vocab_file=str(sp), model_max_length=64, model_input_names=["input_ids"])
    base = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
    text = dict(vocab_size=128, max_position_embeddings=64, projection_size=768, pad_token_id=0, eos_token_id=1,
                bos_token_id=None, **base)
    vision = dict(image_size=224, patch_size=16, num_channels=3, **base)
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).eval()
    processor = SiglipProcessor(image_processor=SiglipImageProcessor(size={"height": 224, "width": 224}),
                                tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _cli(*args: str, timeout: float = 1800) -> dict:
    """``searchlite ARGS --json`` in a fresh process (its own torch threads, nothing cached)."""
    import subprocess

    exe = Path(sys.executable).with_name("searchlite")
    env = {**os.environ, "SEARCHLITE_NO_SERVER": "1"}
    env.pop("SEARCHLITE_PRECISION", None)
    out = subprocess.run([str(exe), *args, "--json"], capture_output=True, text=True, timeout=timeout, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"searchlite {' '.join(args)} failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout)


def _vectors_by_path(lib_path: Path, spec: str) -> dict[str, np.ndarray]:
    from searchlite.library import Library

    lib = Library(lib_path, create=False, precision="fp32")
    row = lib.model_row(spec)
    with lib.catalog.Session() as s:
        from sqlalchemy import select

        from searchlite.catalog import ImageRow

        ids = [i for (i,) in s.execute(select(ImageRow.id))]
    vectors = lib.stored_vectors(row, ids)
    return {lib.image(i)[1]: v for i, v in vectors.items()}


def precision(args) -> dict:
    from synthetic import photo

    from searchlite.imaging import load_image
    from searchlite.models import load_embedder

    work = scratch_dir()
    photos = work / "photos"
    photos.mkdir()
    t = time.perf_counter()
    for i in range(args.images):
        photo(i).save(photos / f"{i:04d}.jpg", quality=90)
    print(f"wrote {args.images} 12 MP JPEGs in {time.perf_counter() - t:.0f} s", flush=True)
    spec = f"hf:{siglip_base_folder(work / 'siglip-base')}"
    cores = os.cpu_count() or 1
    extra = ["--batch-size", str(args.batch_size), "--device", "cpu"] + (["--workers", str(args.workers)]
                                                                        if args.workers else [])
    modes = ["fp32", "auto"] + (["bf16"] if args.with_bf16 else [])
    runs: dict[str, list[float]] = {mode: [] for mode in modes}
    libs: dict[str, Path] = {}
    for r in range(args.repeats):
        for mode in modes:
            lib = work / f"lib-{mode}-{r}"
            stats = _cli("index", str(photos), "-m", spec, "-L", str(lib), "--precision", mode, *extra)
            assert stats["added"] == args.images, stats
            runs[mode].append(args.images / stats["seconds"])
            libs[mode] = lib
            print(f"run {r + 1} {mode:5} {stats['seconds']:7.2f} s  {runs[mode][-1]:6.2f} img/s", flush=True)
    rates = {mode: float(np.median(v)) for mode, v in runs.items()}
    fp32_rate, auto_rate = rates["fp32"], rates["auto"]

    vectors = {mode: _vectors_by_path(libs[mode], spec) for mode in modes}
    min_cos = {mode: min(float(vectors["fp32"][p] @ vectors[mode][p]) for p in vectors["fp32"]) for mode in modes[1:]}

    # the stage bound in the chosen precision, measured in this process (same machine, same run)
    emb = load_embedder(spec, device="cpu", batch_size=args.batch_size, precision="auto")
    files = sorted(photos.iterdir())

    def prep(p: Path) -> np.ndarray:
        return emb.preprocess(load_image(p, target_size=emb.image_size, draft=True).image)

    with ThreadPoolExecutor(cores) as pool:
        t = time.perf_counter()
        pixels = np.stack(list(pool.map(prep, files)))
        decode_rate = len(files) / (time.perf_counter() - t)
    forward = {}
    for mode in modes:
        m = load_embedder(spec, device="cpu", batch_size=args.batch_size, precision=mode)
        m.embed_pixels(pixels[: args.batch_size])  # warm-up
        t = time.perf_counter()
        m.embed_pixels(pixels)
        forward[mode] = len(files) / (time.perf_counter() - t)
    bounds = {mode: 1 / (1 / forward[mode] + 1 / decode_rate) for mode in modes}

    # one query through the resident Library's choice of text tower
    from searchlite.library import Library

    resident = Library(libs["auto"], create=False, resident=True)
    resident.text_encoder(resident.model_row(spec))
    query = dict(resident.text_paths[resident.model_row(spec).id])
    # and every candidate timed, whatever this machine chose
    from searchlite.models.light import load_light_encoder
    from searchlite.models.precision import one_query_ms

    light = load_light_encoder(resident.export_folder(resident.model_row(spec)))
    query["one_query_ms_all"] = {"onnx-fp32": one_query_ms(light, repeats=5) if light else None,
                                 **{f"torch-{m}": one_query_ms(load_embedder(spec, device="cpu", precision=m), repeats=5)
                                    for m in ("fp32", "bf16")}}

    result = {"machine": f"{cores} cores, {_cpu_name()}", "load_avg_1m": round(os.getloadavg()[0], 2),
              "images": args.images, "precision_auto": emb.precision, "precision_note": emb.precision_note,
              "img_s": {k: round(v, 2) for k, v in rates.items()}, "ratio_auto": round(auto_rate / fp32_rate, 2),
              "ratio_to_fp32": {k: round(v / fp32_rate, 2) for k, v in rates.items()},
              "runs_img_s": {k: [round(x, 2) for x in v] for k, v in runs.items()},
              "forward_img_s": {k: round(v, 2) for k, v in forward.items()},
              "decode_img_s_all_cores": round(decode_rate, 2), "bound_img_s": {k: round(v, 2) for k, v in bounds.items()},
              "share_of_bound": {k: round(rates[k] / bounds[k], 3) for k in modes},
              "min_cosine_to_fp32": {k: round(v, 6) for k, v in min_cos.items()},
              "bf16_matmul_speedup": round(_speedup(), 2), "query_text_tower": query}
    for k, v in result.items():
        print(f"{k:24} {v}", flush=True)
    if args.demo_images:
        try:
            result["demo_bench"] = demo_bench(work, args.demo_images)
        except Exception as exc:  # noqa: BLE001 - the indexing figures above still stand
            result["demo_bench"] = f"failed: {exc}"
        print(f"{'demo_bench':24} {result['demo_bench']}")
    return result


def demo_bench(work: Path, count: int) -> dict:
    """The demo model's `searchlite bench` (text->image R@1, MRR) on a generated split, fp32 vs bf16."""
    from searchlite.demo import DEMO_SEED
    from searchlite.sample_data import generate

    images = work / "demo-images"
    generate.generate(images, count, DEMO_SEED, "test")
    out = {}
    for mode in ("fp32", "bf16"):
        res = _cli("bench", str(images), "-m", "demo", "--precision", mode, "-L", str(work / f"bench-{mode}"))
        t2i = next(iter(res["models"].values()))["text_to_image"]
        out[mode] = {"recall@1": round(t2i["recall@1"], 4), "mrr": round(t2i["mrr"], 4)}
    out["delta_recall@1"] = round(out["bf16"]["recall@1"] - out["fp32"]["recall@1"], 4)
    return out


def _speedup() -> float:
    from searchlite.models.precision import cpu_bf16_speedup

    return cpu_bf16_speedup()


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("efficiency", "memory", "precision"))
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--arch", default="ViT-B-16-SigLIP")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 16 (efficiency), 32 = index's (precision)")
    parser.add_argument("--formats", default="jpeg", help="comma-separated mix: jpeg, heic, dng, png")
    parser.add_argument("--repeats", type=int, default=2, help="precision: runs of each mode")
    parser.add_argument("--workers", type=int, default=None, help="precision: decode threads (default: cores)")
    parser.add_argument("--demo-images", type=int, default=300, help="precision: demo bench split (0: skip)")
    parser.add_argument("--with-bf16", action="store_true", help="precision: also run --precision bf16 (forced)")
    args = parser.parse_args()
    if args.what == "precision":
        args.images = args.images or 64
        args.batch_size = args.batch_size or 32
        print(json.dumps(precision(args)))
    elif args.what == "efficiency":
        args.images = args.images or 24
        args.batch_size = args.batch_size or 16
        print(json.dumps(efficiency(args)))
    else:
        args.images = args.images or 10000
        memory(args)


if __name__ == "__main__":
    main()
