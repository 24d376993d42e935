"""End-to-end query latency: warm (in-process: text encode + ANN search + catalog join) and cold
(process start to printed results), on a library of N synthetic images with a base-size model.

    python benchmarks/query.py [--n 100000] [--arch ViT-B-16-SigLIP] [--queries 20]

The model is a random-init open_clip ViT-B-16-SigLIP saved as a local folder (same compute as the
real one); the library gets N catalog rows with synthetic embedding-like vectors (see search.py),
so no images are decoded. Where the time goes is printed per stage.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def build_library(folder: Path, spec: str, n: int) -> None:
    from search import synthetic
    from sqlalchemy import insert

    from searchlite.catalog import Catalog, Embedding, ImageRow
    from searchlite.index_store import IndexStore
    from searchlite.models import load_embedder

    emb = load_embedder(spec, device="cpu")
    catalog = Catalog(folder)
    model = catalog.register_model(emb, spec)
    vecs = synthetic(n, emb.dim)
    with catalog.Session.begin() as s:
        root = catalog.root_id(s, folder / "photos")
    for start in range(0, n, 20000):
        m = min(20000, n - start)
        with catalog.engine.begin() as conn:
            conn.execute(insert(ImageRow), [
                {"id": start + i + 1, "root_id": root, "relpath": f"{(start + i) // 1000:04d}/{start + i:07d}.jpg",
                 "size": 1, "mtime_ns": 1, "status": "ok", "seen_run": 0, "width": 4000, "height": 3000}
                for i in range(m)])
            conn.execute(insert(Embedding), [
                {"model_ref": model.id, "image_id": start + i + 1, "vector": vecs[start + i].tobytes()}
                for i in range(m)])
    IndexStore(catalog, model).sync()


def random_hf_siglip_base(folder: Path) -> Path:
    """SiglipConfig() is google/siglip-base-patch16-224's architecture; random weights, tiny tokenizer."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    import tiny_models
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor, SiglipTokenizer

    sp = tiny_models.make_sentencepiece(folder / "_sp")
    tok = SiglipTokenizer(vocab_file=str(sp), model_max_length=64, model_input_names=["input_ids"])
    SiglipModel(SiglipConfig()).save_pretrained(folder)
    SiglipProcessor(image_processor=SiglipImageProcessor(), tokenizer=tok).save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--arch", default="ViT-B-16-SigLIP")
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--backend", choices=("hf", "openclip"), default="hf",
                        help="hf: a random SiglipModel with google/siglip-base-patch16-224's config (the "
                             "siglip-base alias); openclip: a random open_clip --arch")
    args = parser.parse_args()
    import faiss
    import torch
    from indexing import random_openclip_folder

    from searchlite.library import Library
    from searchlite.query import search_vectors

    work = Path(tempfile.mkdtemp())
    if args.backend == "hf":
        spec = f"hf:{random_hf_siglip_base(work / 'model')}"
        args.arch = "SiglipModel (siglip-base-patch16-224 config)"
    else:
        spec = f"openclip:{random_openclip_folder(args.arch, work / 'model')}"
    t = time.perf_counter()
    build_library(work / "lib", spec, args.n)
    print(f"built a library of {args.n} rows in {time.perf_counter() - t:.0f}s", flush=True)

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    lib = Library(work / "lib", device="cpu")
    row = lib.model_row(spec)
    index = lib.vector_index(row)
    emb = lib.embedder(spec)
    words = ["a dog on the beach", "sunset over the sea", "two cats", "a red car", "snow in the mountains"]
    lib.search(words[0], spec, k=10)  # warm-up
    encode, raw, join, total = [], [], [], []
    for i in range(args.queries):
        text = f"{words[i % len(words)]} {i}"
        t0 = time.perf_counter()
        q = emb.embed_texts([row.template.format(text)])[0]
        t1 = time.perf_counter()
        index.search(q[None, :], 10)
        t2 = time.perf_counter()
        search_vectors(lib.catalog, row, index, q, 10)
        t3 = time.perf_counter()
        lib.search(text, spec, k=10)
        t4 = time.perf_counter()
        encode.append(t1 - t0)
        raw.append(t2 - t1)
        join.append(t3 - t2)
        total.append(t4 - t3)
    ms = lambda xs: round(1000 * statistics.median(xs), 2)  # noqa: E731
    warm = {"text_encode_ms": ms(encode), "faiss_search_ms": ms(raw), "search_plus_catalog_join_ms": ms(join),
            "library_search_total_ms": ms(total), "index": index.factory}
    cold = []
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "searchlite", "search", "a dog on the beach", "-L", str(work / "lib"),
                        "-k", "10", "--device", "cpu"], check=True, capture_output=True)
        cold.append(time.perf_counter() - t)
    # the same CLI call with `searchlite serve` running for this library
    from searchlite.server import request

    server = subprocess.Popen([sys.executable, "-m", "searchlite", "serve", "-L", str(work / "lib"), "--device", "cpu"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while request(work / "lib", "ping", {}, timeout=1) is None:
        time.sleep(0.2)
    served = []
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "searchlite", "search", "a dog on the beach", "-L", str(work / "lib"),
                        "-k", "10"], check=True, capture_output=True)
        served.append(time.perf_counter() - t)
    server.kill()
    help_t = []
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "searchlite", "--help"], check=True, capture_output=True)
        help_t.append(time.perf_counter() - t)
    result = {"n": args.n, "arch": args.arch, "threads": 1, "warm": warm,
              "cold_cli_s": round(statistics.median(cold), 2), "cli_with_server_s": round(statistics.median(served), 2),
              "help_s": round(statistics.median(help_t), 3)}
    for k, v in warm.items():
        print(f"warm {k:28} {v}")
    print(f"cold CLI search (process start to results): {result['cold_cli_s']} s; with `searchlite serve` "
          f"running: {result['cli_with_server_s']} s; --help: {result['help_s']} s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
