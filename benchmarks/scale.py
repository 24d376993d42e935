"""Storage at scale: import, build, add 1%, cold and warm queries, filters, on N synthetic vectors.

    python benchmarks/scale.py --n 1000000 [--dim 768] [--work DIR] [--queries 200]
    python benchmarks/scale.py --n 10000000

Vectors look like real embeddings (../shared/BENCHMARKING.md): a 48-d clustered latent through a
random linear map with a decaying spectrum, plus small isotropic noise, L2-normalised; queries are
held-out vectors of the same distribution. They are generated shard by shard (1M rows) into Parquet
and imported one shard at a time, so neither RAM nor disk ever holds two copies of 10M x 768.
Each phase runs in its own process, so its peak RSS is its own. Prints a table and one JSON line.

Phases: import (no index) -> build ('auto': exact below 100k, IVF-SQ8 below 5M, IVF-PQ above) -> exact ground truth
(streaming brute force over the store for the query sample) -> warm queries (one thread) -> a
filter matching 1% (images in one of 100 folders) -> a cold one-shot query (fresh process) ->
add 1% more images (the exact tail absorbs them; no index file is rewritten).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from scratch import scratch_dir

HERE = Path(__file__).resolve()
SHARD = 1_000_000
FOLDERS = 100  # images are spread over 100 folders: a folder filter matches 1%


def generator(dim: int, seed: int = 0, latent: int = 48, clusters: int = 1000):
    """A function (start, count, stream) -> vectors: deterministic chunks of one distribution."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, latent)).astype(np.float32)
    mix = (rng.normal(size=(latent, dim)) * (np.arange(1, latent + 1) ** -0.5)[:, None]).astype(np.float32)

    def make(start: int, count: int, stream: int = 0) -> np.ndarray:
        r = np.random.default_rng([seed, stream, start])
        z = centers[r.integers(0, clusters, count)] + 0.5 * r.normal(size=(count, latent)).astype(np.float32)
        x = z @ mix + 0.02 * r.normal(size=(count, dim)).astype(np.float32)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return make


def write_shard(path: Path, make, start: int, count: int, dim: int, chunk: int = 100_000) -> None:
    """A Parquet shard of the import schema, generated and written 100k rows at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    base = datetime(2015, 1, 1)
    with pq.ParquetWriter(path, schema=pa.schema([
            ("path", pa.string()), ("vector", pa.list_(pa.float32(), dim)), ("size", pa.int64()),
            ("mtime_ns", pa.int64()), ("width", pa.int32()), ("height", pa.int32()),
            ("taken_at", pa.timestamp("us"))])) as writer:
        for lo in range(start, start + count, chunk):
            n = min(chunk, start + count - lo)
            ids = np.arange(lo, lo + n)
            vectors = make(lo, n)
            writer.write_table(pa.table({
                "path": [f"/photos/{i % FOLDERS:03d}/{i:09d}.jpg" for i in ids],
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
                "size": pa.array(1_000_000 + ids, pa.int64()), "mtime_ns": pa.array(10**18 + ids, pa.int64()),
                "width": pa.array(np.full(n, 4000), pa.int32()), "height": pa.array(np.full(n, 3000), pa.int32()),
                "taken_at": pa.array([base + timedelta(minutes=int(i)) for i in ids], pa.timestamp("us")),
            }), row_group_size=65536)


def model_folder(work: Path, dim: int) -> Path:
    """A small SigLIP checkpoint whose embeddings are ``dim`` wide (import needs the model's dim,
    family and scores, not its compute)."""
    folder = work / f"model-{dim}"
    if (folder / "config.json").is_file():
        return folder
    sys.path.insert(0, str(HERE.parents[1] / "tests"))
    import tiny_models
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor, SiglipTokenizer

    sp = tiny_models.make_sentencepiece(folder / "_sp")
    tok = SiglipTokenizer(vocab_file=str(sp), model_max_length=64, model_input_names=["input_ids"])
    text = dict(vocab_size=128, hidden_size=dim, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                max_position_embeddings=64)
    vision = dict(image_size=32, patch_size=16, hidden_size=dim, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=4)
    SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).save_pretrained(folder)
    SiglipProcessor(image_processor=SiglipImageProcessor(size={"height": 32, "width": 32}),
                    tokenizer=tok).save_pretrained(folder)
    shutil.rmtree(folder / "_sp")
    return folder


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_now_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def written_bytes() -> int:
    with open("/proc/self/io") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("wchar"))


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# -- phases (each run as `python scale.py phase NAME ...` in its own process) ---------------------
def phase_import(args) -> dict:
    from searchlite.library import Library

    make = generator(args.dim)
    lib = Library(args.library, device="cpu")
    spec = f"hf:{args.model}"
    lib.embedder(spec)
    start, seconds, written = args.start, 0.0, 0
    while start < args.stop:
        count = min(SHARD, args.stop - start)
        shard = args.library.parent / f"shard-{start}.parquet"
        write_shard(shard, make, start, count, args.dim)
        before_w, t = written_bytes(), time.perf_counter()
        lib.import_vectors(shard, spec, index_type=args.index)
        seconds += time.perf_counter() - t
        written += written_bytes() - before_w
        shard.unlink()
        start += count
    return {"seconds": seconds, "written": written, "peak_rss_mb": peak_rss_mb()}


def phase_build(args) -> dict:
    from searchlite.library import Library

    lib = Library(args.library, device="cpu")
    before_w, t = written_bytes(), time.perf_counter()
    described = lib.reindex(None, args.build)
    seconds = time.perf_counter() - t
    segments = list((args.library / "vectors").rglob("seg-*.faiss"))
    return {"seconds": seconds, "written": written_bytes() - before_w, "peak_rss_mb": peak_rss_mb(),
            "index": described, "index_bytes": sum(p.stat().st_size for p in segments)}


def phase_truth(args) -> dict:
    """Exact top-k of the query sample by streaming brute force over the store."""
    import faiss

    from searchlite.library import Library

    queries = generator(args.dim)(0, args.queries, stream=1)
    lib = Library(args.library, device="cpu")
    row = lib.model_row()
    index = lib.model_index(row)
    live = np.concatenate(list(lib.catalog.live_rows(row.id)))
    best_s = np.full((len(queries), args.k), -np.inf, dtype=np.float32)
    best_r = np.full((len(queries), args.k), -1, dtype=np.int64)
    t = time.perf_counter()
    every = len(live) == index.store.committed
    for start, block in index.store.read_chunks(0, index.store.committed, 262_144):
        rows = np.arange(start, start + len(block))
        keep = np.ones(len(rows), bool) if every else np.isin(rows, live, assume_unique=True)
        scores, pos = faiss.knn(queries, np.ascontiguousarray(block[keep]), args.k, metric=faiss.METRIC_INNER_PRODUCT)
        merged_s = np.concatenate([best_s, scores], axis=1)
        merged_r = np.concatenate([best_r, rows[keep][pos]], axis=1)
        order = np.argsort(-merged_s, axis=1, kind="stable")[:, :args.k]
        best_s, best_r = np.take_along_axis(merged_s, order, 1), np.take_along_axis(merged_r, order, 1)
    np.save(args.library.parent / "truth.npy", best_r)
    return {"seconds": time.perf_counter() - t}


def phase_query(args) -> dict:
    """Warm latency on one thread: raw (segments + tail) and through search_vectors (catalog join),
    recall@k against the exact ground truth, and a 1% folder filter against its own brute force."""
    import faiss

    from searchlite.library import Library
    from searchlite.query import Filters, allowed_rows, search_vectors

    faiss.omp_set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    queries = generator(args.dim)(0, args.queries, stream=1)
    truth = np.load(args.library.parent / "truth.npy")
    lib = Library(args.library, device="cpu")
    row = lib.model_row()
    index = lib.model_index(row)
    out: dict = {"index": index.describe()}
    for ef in args.ef:
        index.params.ef_search = ef
        for q in queries[:10]:
            index.search(q, args.k)
        lat, found = [], []
        for q in queries:
            t = time.perf_counter()
            _, rows = index.search(q, args.k)
            lat.append((time.perf_counter() - t) * 1000)
            found.append(rows)
        recall = np.mean([len(set(f) & set(t)) / args.k for f, t in zip(found, truth)])
        out[f"raw_ef{ef}"] = {"recall": float(recall), "p50_ms": float(np.percentile(lat, 50)),
                              "p95_ms": float(np.percentile(lat, 95))}
    index.params.ef_search = 128
    lat = []
    for q in queries:
        t = time.perf_counter()
        search_vectors(lib.catalog, row, index, q, args.k)
        lat.append((time.perf_counter() - t) * 1000)
    out["search"] = {"p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95))}
    folder = Filters(folder=Path("/photos/042"))
    allowed = allowed_rows(lib.catalog, row, folder)
    lat, exact = [], 0
    for q in queries[:50]:
        t = time.perf_counter()
        got = search_vectors(lib.catalog, row, index, q, args.k, folder)
        lat.append((time.perf_counter() - t) * 1000)
        scores = index.store.get(allowed) @ q
        want = set(allowed[np.argsort(-scores, kind="stable")[:args.k]].tolist())
        got_rows = set(lib.catalog.rows_of(row.id, [r.image_id for r in got]).values())
        exact += got_rows == want
    out["filter_1pct"] = {"matching": int(len(allowed)), "p50_ms": float(np.percentile(lat, 50)),
                          "p95_ms": float(np.percentile(lat, 95)), "exact_top_k_share": exact / 50}
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def phase_cold(args) -> dict:
    """A one-shot query in a fresh process: the RSS it adds, and its time (library open to results)."""
    queries = generator(args.dim)(0, 1, stream=1)
    before = rss_now_mb()
    t = time.perf_counter()
    from searchlite.library import Library
    from searchlite.query import search_vectors

    lib = Library(args.library, device="cpu")
    row = lib.model_row()
    results = search_vectors(lib.catalog, row, lib.model_index(row), queries[0], args.k)
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "rss_added_mb": rss_now_mb() - before, "results": len(results)}


PHASES = {"import": phase_import, "build": phase_build, "truth": phase_truth, "query": phase_query,
          "cold": phase_cold}


def run_phase(name: str, args, **extra) -> dict:
    argv = [sys.executable, str(HERE), "phase", name, "--n", str(args.n), "--dim", str(args.dim),
            "--library", str(args.library), "--model", str(args.model), "--queries", str(args.queries),
            "--k", str(args.k), "--build", args.build, "--ef", *map(str, args.ef)]
    for key, value in extra.items():
        argv += [f"--{key}", str(value)]
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"phase {name} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"  {name}: {json.dumps(result)}", file=sys.stderr, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", nargs="?", default="run")
    parser.add_argument("phase_name", nargs="?")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--ef", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--add", type=float, default=0.01, help="fraction of images added after the build")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--library", type=Path)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--stop", type=int, default=0)
    parser.add_argument("--index", default="flat")
    parser.add_argument("--build", default="auto", help="index type to build (auto, hnsw, ivf, ivfpq)")
    args = parser.parse_args()
    if args.mode == "phase":
        print(json.dumps(PHASES[args.phase_name](args)))
        return
    work = args.work or scratch_dir("searchlite-scale-")
    work.mkdir(parents=True, exist_ok=True)
    args.library = work / "library"
    shutil.rmtree(args.library, ignore_errors=True)
    args.model = model_folder(work, args.dim)
    raw_bytes = args.n * args.dim * 4
    print(f"scale benchmark: n={args.n:,} d={args.dim} in {work} (raw vectors {raw_bytes / 2**30:.1f} GiB)",
          file=sys.stderr)
    imp = run_phase("import", args, start=0, stop=args.n, index="flat")
    build = run_phase("build", args)
    store_bytes = folder_bytes(args.library / "vectors") - build["index_bytes"]
    run_phase("truth", args)
    query = run_phase("query", args)
    cold = run_phase("cold", args)
    added = max(1, int(args.n * args.add))
    add = run_phase("import", args, start=args.n, stop=args.n + added, index="auto")
    run_phase("truth", args)
    after = run_phase("query", args)
    full_seconds, full_written = imp["seconds"] + build["seconds"], imp["written"] + build["written"]
    result = {
        "n": args.n, "dim": args.dim, "queries": args.queries, "machine": f"{os.cpu_count()} cores",
        "import": imp, "build": build, "store_bytes": store_bytes, "query": query, "cold": cold,
        "add": {**add, "images": added, "time_ratio": add["seconds"] / full_seconds,
                "bytes_ratio": add["written"] / full_written, "query_after": after},
        "targets": {
            "build_rss_ok": build["peak_rss_mb"] <= (1.3 * build["index_bytes"] / 2**20 + 1024),
            "add_time_ratio_ok": add["seconds"] / full_seconds <= 0.05,
            "add_bytes_ratio_ok": add["written"] / full_written <= 0.05,
            "cold_rss_ok": cold["rss_added_mb"] <= 0.25 * raw_bytes / 2**20,
            "filter_ok": query["filter_1pct"]["p50_ms"] <= 3 * query["search"]["p50_ms"],
        },
    }
    best = max((v for k, v in query.items() if k.startswith("raw_")), key=lambda v: v["recall"])
    rows = [
        ("import (no index)", f"{imp['seconds']:.0f} s, {imp['written'] / 2**30:.2f} GiB written, "
                              f"peak RSS {imp['peak_rss_mb']:.0f} MB"),
        ("build", f"{build['index']}: {build['seconds']:.0f} s, index {build['index_bytes'] / 2**20:.0f} MB, peak RSS "
                  f"{build['peak_rss_mb']:.0f} MB (target <= {1.3 * build['index_bytes'] / 2**20 + 1024:.0f})"),
        *[(f"raw search {k[4:]}", f"recall@{args.k} {v['recall']:.3f}, p50 {v['p50_ms']:.2f} ms, "
                                  f"p95 {v['p95_ms']:.2f} ms (1 thread)") for k, v in query.items() if k.startswith("raw_")],
        ("search + catalog join", f"p50 {query['search']['p50_ms']:.2f} ms, p95 {query['search']['p95_ms']:.2f} ms"),
        ("filter matching 1%", f"{query['filter_1pct']['matching']:,} images, p50 {query['filter_1pct']['p50_ms']:.2f} "
                               f"ms = {query['filter_1pct']['p50_ms'] / query['search']['p50_ms']:.2f}x unfiltered, "
                               f"exact top-k {query['filter_1pct']['exact_top_k_share']:.0%}"),
        ("cold one-shot query", f"{cold['seconds']:.2f} s, RSS +{cold['rss_added_mb']:.0f} MB "
                                f"({cold['rss_added_mb'] / (raw_bytes / 2**20):.1%} of raw vectors)"),
        (f"add {args.add:.0%} ({added:,})", f"{add['seconds']:.1f} s = {result['add']['time_ratio']:.2%} of a full "
                                            f"build's time, {add['written'] / 2**20:.0f} MB = "
                                            f"{result['add']['bytes_ratio']:.2%} of its bytes"),
        ("after the add", f"{after['index']}; search p50 {after['search']['p50_ms']:.2f} ms, recall "
                          f"{max(v['recall'] for k, v in after.items() if k.startswith('raw_')):.3f}"),
    ]
    print(f"{'what':24} result  (best raw recall {best['recall']:.3f})")
    for what, text in rows:
        print(f"{what:24} {text}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
