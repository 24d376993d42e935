"""The one-shot query path: a cold `searchlite search` process vs the import of torch + transformers'
SigLIP modeling it no longer needs, warm text encoding ONNX Runtime vs torch, and export parity.

    python benchmarks/query.py [--n 100000 1000000] [--threads 1] [--runs 3]

The model has google/siglip-base-patch16-224's architecture (SiglipConfig()), random weights, a
tiny tokenizer; the library gets N synthetic vectors through `searchlite import` (which exports and
validates the text tower). Every cold search uses a new text, so the query cache cannot answer it.
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scratch import scratch_dir

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

BASELINE = "import torch, transformers.models.siglip.modeling_siglip"


def random_hf_siglip_base(folder: Path) -> Path:
    """SiglipConfig() is google/siglip-base-patch16-224's architecture; random weights, tiny tokenizer."""
    if (folder / "config.json").is_file():
        return folder
    import tiny_models
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor, SiglipTokenizer

    sp = tiny_models.make_sentencepiece(folder / "_sp")
    tok = SiglipTokenizer(vocab_file=str(sp), model_max_length=64, model_input_names=["input_ids"])
    SiglipModel(SiglipConfig()).save_pretrained(folder)
    SiglipProcessor(image_processor=SiglipImageProcessor(), tokenizer=tok).save_pretrained(folder)
    shutil.rmtree(folder / "_sp")
    return folder


def process_seconds(argv: list[str], env: dict) -> float:
    t = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:6])} failed:\n{out.stderr[-2000:]}")
    return time.perf_counter() - t


def build(work: Path, model: Path, n: int) -> Path:
    from scale import generator, write_shard

    from searchlite.library import Library

    lib_dir = work / f"lib-{n}"
    if (lib_dir / "catalog.sqlite").is_file():
        return lib_dir
    shard = work / f"vectors-{n}.parquet"
    write_shard(shard, generator(768), 0, n, 768)
    lib = Library(lib_dir, device="cpu")
    summary = lib.import_vectors(shard, f"hf:{model}")
    shard.unlink()
    print(f"  library of {n:,}: {summary['index']}, imported in {summary['seconds']:.0f} s", file=sys.stderr)
    return lib_dir


def cold(lib_dir: Path, runs: int, threads: int, tag: str) -> list[float]:
    env = {**os.environ, "SEARCHLITE_NO_SERVER": "1", "OMP_NUM_THREADS": str(threads)}
    return [process_seconds([sys.executable, "-m", "searchlite", "search", f"{tag} query number {i} about a dog",
                             "-L", str(lib_dir), "--json", "-k", "10"], env) for i in range(runs)]


def warm_encode(lib_dir: Path, threads: int) -> dict:
    import torch

    from searchlite.library import Library
    from searchlite.models.light import OnnxTextEncoder, read_meta

    torch.set_num_threads(threads)
    lib = Library(lib_dir, device="cpu")
    row = lib.model_row()
    folder = lib.export_folder(row)
    light = OnnxTextEncoder(folder, read_meta(folder), threads=threads)
    heavy = lib.embedder_for(row)
    texts = [f"a photo of a dog number {i} on the beach" for i in range(25)]
    for t in texts[:3]:
        light.embed_texts([t])
        heavy.embed_texts([t])
    onnx_ms = statistics.median(_time(lambda t=t: light.embed_texts([t])) for t in texts) * 1000
    torch_ms = statistics.median(_time(lambda t=t: heavy.embed_texts([t])) for t in texts) * 1000
    a, b = light.embed_texts(texts), heavy.embed_texts(texts)
    return {"threads": threads, "onnx_ms": round(onnx_ms, 2), "torch_ms": round(torch_ms, 2),
            "speedup": round(torch_ms / onnx_ms, 2), "max_abs_diff": float(np.abs(a - b).max()),
            "min_cosine": float((a * b).sum(1).min())}


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def parity(work: Path) -> dict:
    """Export and validate every family and backend (tiny checkpoints built offline)."""
    import tiny_models

    from searchlite.models import load_embedder
    from searchlite.models.export import export_text_tower

    builders = {"hf siglip": lambda f: tiny_models.build_siglip(f), "hf siglip (mask)":
                lambda f: tiny_models.build_siglip(f, attention_mask=True), "hf clip": tiny_models.build_clip,
                "hf align": tiny_models.build_align, "openclip clip": lambda f: tiny_models.build_openclip(f, "clip"),
                "openclip siglip": lambda f: tiny_models.build_openclip(f, "siglip")}
    out = {}
    for name, build_fn in builders.items():
        folder = build_fn(work / "tiny" / name.replace(" ", "-").replace("(", "").replace(")", ""))
        emb = load_embedder(("openclip:" if name.startswith("openclip") else "hf:") + str(folder), device="cpu")
        meta = export_text_tower(emb, work / "tiny-exports" / folder.name)
        out[name] = {k: meta.get(k) for k in ("valid", "max_abs_diff", "min_cosine", "reason") if k in meta}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or scratch_dir("searchlite-query-")
    work.mkdir(parents=True, exist_ok=True)
    model = random_hf_siglip_base(work / "siglip-base-random")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    result: dict = {"machine": f"{os.cpu_count()} cores", "threads": args.threads, "libraries": {}}
    for n in args.n:
        lib_dir = build(work, model, n)
        meta = json.loads((next((lib_dir / "models").iterdir()) / "text" / "meta.json").read_text())
        baseline = [process_seconds([sys.executable, "-c", BASELINE], env) for _ in range(args.runs)]
        light = cold(lib_dir, args.runs, args.threads, f"light{n}")
        moved = lib_dir / "models-aside"
        (lib_dir / "models").rename(moved)  # the torch path, for comparison
        try:
            heavy = cold(lib_dir, args.runs, args.threads, f"torch{n}")
        finally:
            moved.rename(lib_dir / "models")
        entry = {"export": {k: meta.get(k) for k in ("valid", "max_abs_diff", "min_cosine", "seconds")},
                 "baseline_import_s": statistics.median(baseline), "cold_light_s": statistics.median(light),
                 "cold_torch_s": statistics.median(heavy)}
        entry["ratio"] = round(entry["cold_light_s"] / entry["baseline_import_s"], 3)
        result["libraries"][n] = entry
        print(f"n={n:,}: cold search {entry['cold_light_s']:.2f} s (torch path {entry['cold_torch_s']:.2f} s); "
              f"`{BASELINE}` {entry['baseline_import_s']:.2f} s -> ratio {entry['ratio']:.2f} (target <= 0.4)",
              flush=True)
    result["warm_encode"] = warm_encode(build(work, model, args.n[0]), args.threads)
    w = result["warm_encode"]
    print(f"warm text encode ({args.threads} thread): ONNX {w['onnx_ms']:.1f} ms, torch {w['torch_ms']:.1f} ms -> "
          f"{w['speedup']:.2f}x; max |d| {w['max_abs_diff']:.1e}, min cos {w['min_cosine']:.7f}", flush=True)
    result["parity"] = parity(work)
    for name, p in result["parity"].items():
        print(f"export parity {name:18} valid={p['valid']} max|d| {p.get('max_abs_diff', float('nan')):.1e} "
              f"min cos {p.get('min_cosine', float('nan')):.7f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
