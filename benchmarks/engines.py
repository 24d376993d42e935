"""Image-embedding speed of the engines: torch fp32 vs ONNX fp32 vs ONNX int8 (the validated
``--precision int8`` recipe), tower-only and end to end on 12 MP JPEGs (draft decode + preprocessing +
tower), for random-initialised towers of the zoo's architectures (nothing is downloaded); plus the demo
model's R@1 / MRR and top-1 agreement with torch per engine and precision.

    python benchmarks/engines.py [--quick] [--threads 2] [--batch 8] [--only SUBSTRING] [--json]

``--quick``: one small architecture, two small JPEGs, a 48-image demo split (a smoke run, seconds).
Random-init cosines are not evidence of int8 fidelity (see searchlite.models.quantize): the demo
figures are. The CPU's model and flags are printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

ARCHS = [  # label, open_clip architecture
    ("ViT-B/32", "ViT-B-32-quickgelu"),
    ("SigLIP B/16", "ViT-B-16-SigLIP"),
    ("SigLIP 2 B/16", "ViT-B-16-SigLIP2"),
    ("MobileCLIP2-S2", "MobileCLIP2-S2"),
]
QUICK_ARCH = ("tiny ViT (quick)", "quick")


def cpu_description() -> dict:
    from searchlite.models.precision import _cpu_flags
    from searchlite.models.quantize import VNNI_FLAGS, cpu_vnni

    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 "unknown")
    flags = _cpu_flags()
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", *VNNI_FLAGS) if f in flags]
    return {"cpu": model, "flags": shown, "vnni": cpu_vnni()}


def build(arch: str):
    """(model, transform, image size) of a random-initialised open_clip architecture."""
    import open_clip

    if arch == "quick":
        cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
               "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1}}
        open_clip.factory._MODEL_CONFIGS["searchlite-quick"] = cfg
        arch = "searchlite-quick"
    model, _, transform = open_clip.create_model_and_transforms(arch, pretrained=None)
    size = model.visual.image_size
    return model.eval(), transform, int(size[0] if isinstance(size, (tuple, list)) else size)


def export_tower(model, size: int, folder: Path) -> tuple[Path, Path]:
    """fp32 and int8 image-tower graphs (the engine's own export and quantization code)."""
    from searchlite.models.export import _optimise
    from searchlite.models.onnx_export import _export_visual
    from searchlite.models.quantize import cpu_vnni, quantize_visual

    class Shim:  # what _export_visual needs of an embedder
        def __init__(self) -> None:
            self.model = model

        def _image_features(self, x):
            return model.encode_image(x)

    _export_visual(Shim(), np.zeros((2, 3, size, size), dtype=np.float32), folder / "raw.onnx")
    _optimise(folder / "raw.onnx", folder / "visual.onnx")
    return folder / "visual.onnx", quantize_visual(folder / "visual.onnx", reduce_range=cpu_vnni() is None)


def best_rate(fn, n: int, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return n / best


def make_jpegs(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        small = (rng.random((size[1] // 64, size[0] // 64, 3)) * 255).astype(np.uint8)
        path = folder / f"photo{i}.jpg"
        Image.fromarray(small).resize(size, Image.BICUBIC).save(path, quality=90)
        paths.append(path)
    return paths


def bench_arch(label: str, arch: str, args, jpegs: list[Path]) -> dict:
    import onnxruntime as ort
    import torch

    from searchlite.imaging import load_image
    from searchlite.models.pixels import PixelRecipe, _openclip_steps

    torch.set_num_threads(args.threads)
    model, transform, size = build(arch)
    recipe = PixelRecipe.from_list(_openclip_steps(transform))
    x = np.random.default_rng(1).standard_normal((args.batch, 3, size, size)).astype(np.float32)
    out: dict = {"model": label, "input": size}
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path, int8_path = export_tower(model, size, Path(tmp))
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        sessions = {"onnx-fp32": ort.InferenceSession(str(fp32_path), options, providers=["CPUExecutionProvider"]),
                    "onnx-int8": ort.InferenceSession(str(int8_path), options, providers=["CPUExecutionProvider"])}

        def tower(name: str, batch: np.ndarray):
            if name == "torch-fp32":
                with torch.inference_mode():
                    return model.encode_image(torch.from_numpy(batch)).numpy()
            return sessions[name].run(None, {"pixel_values": batch})[0]

        ref = tower("torch-fp32", x)
        ref /= np.linalg.norm(ref, axis=1, keepdims=True)
        for name in ("torch-fp32", "onnx-fp32", "onnx-int8"):
            out[f"tower {name} img/s"] = round(best_rate(lambda n=name: tower(n, x), args.batch, args.repeats), 2)
            got = tower(name, x)
            out[f"{name} min cos (random init)"] = round(float(
                (got / np.linalg.norm(got, axis=1, keepdims=True) * ref).sum(1).min()), 5)

            def end_to_end(n=name):
                pixels = np.stack([recipe(load_image(p, target_size=(size, size)).image) for p in jpegs])
                tower(n, pixels)

            out[f"e2e {name} img/s"] = round(best_rate(end_to_end, len(jpegs), max(1, args.repeats // 2)), 2)
    for kind in ("tower", "e2e"):
        base = out[f"{kind} torch-fp32 img/s"]
        out[f"{kind} int8 / torch fp32"] = round(out[f"{kind} onnx-int8 img/s"] / base, 2)
        out[f"{kind} onnx fp32 / torch fp32"] = round(out[f"{kind} onnx-fp32 img/s"] / base, 2)
    return out


def bench_demo(count: int) -> dict:
    """The demo model's text->image figures per engine/precision, and top-1 agreement with torch fp32."""
    from searchlite.evaluation.bench import run_bench
    from searchlite.evaluation.datasets import read_captions
    from searchlite.library import Library
    from searchlite.models.registry import load_onnx
    from searchlite.sample_data import generate

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "split"
        generate.generate(images, count, 20261122, "test")
        captions = read_captions(images)
        tops = {}
        for name, runtime, precision in (("torch-fp32", "torch", "fp32"), ("onnx-fp32", "onnx", "fp32"),
                                         ("onnx-int8", "onnx", "int8")):
            load_onnx.cache_clear()
            lib = Library(Path(tmp) / name, device="cpu", runtime=runtime, precision=precision)
            lib.index([images], ["demo"])
            t2i = run_bench(lib, captions, ["demo"])["models"]["demo"]["text_to_image"]
            texts = sorted({json.loads(line)["caption"] for line in (images / "captions.jsonl").read_text().splitlines()})
            tops[name] = [lib.search(t, "demo", k=1, template="{}")[0].path for t in texts]
            out[name] = {"recall@1": round(t2i["recall@1"], 4), "mrr": round(t2i["mrr"], 4),
                         "top1_agreement_with_torch": round(float(np.mean(
                             [a == b for a, b in zip(tops[name], tops["torch-fp32"])])), 4)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default="")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    archs = [QUICK_ARCH] if args.quick else [a for a in ARCHS if args.only.lower() in a[0].lower()]
    if args.quick:
        args.batch, args.repeats = 2, 1
    result = {"machine": cpu_description(), "threads": args.threads, "models": []}
    with tempfile.TemporaryDirectory() as tmp:
        jpegs = make_jpegs(Path(tmp), 2 if args.quick else 8, (640, 480) if args.quick else (4000, 3000))
        result["jpeg"] = "640x480" if args.quick else "4000x3000 (12 MP)"
        for label, arch in archs:
            result["models"].append(bench_arch(label, arch, args, jpegs))
    result["demo"] = bench_demo(48 if args.quick else 300)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"{result['machine']['cpu']} ({', '.join(result['machine']['flags'])}), {args.threads} threads, "
          f"JPEGs {result['jpeg']}")
    for row in result["models"]:
        print(json.dumps(row))
    for name, figures in result["demo"].items():
        print(f"demo {name}: {figures}")


if __name__ == "__main__":
    main()
