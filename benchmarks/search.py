"""Search latency and recall at scale: searchlite's FAISS indexes vs exact search and the naive
numpy + Python ``sorted`` approach (rclip's), on synthetic vectors shaped like real embeddings.

    python benchmarks/search.py --n 100000 --dim 768 [--queries 200] [--threads 1]

Vectors: a 48-d clustered latent through a random linear map with a decaying spectrum, plus
small isotropic noise, L2-normalised (isotropic Gaussians would be an unrealistically hard case;
see ../shared/BENCHMARKING.md). Queries are held-out vectors of the same distribution.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import numpy as np


def synthetic(n: int, dim: int, seed: int = 0, latent: int = 48, clusters: int = 1000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, latent)).astype(np.float32)
    mix = (rng.normal(size=(latent, dim)) * (np.arange(1, latent + 1) ** -0.5)[:, None]).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        z = centers[rng.integers(0, clusters, m)] + 0.5 * rng.normal(size=(m, latent)).astype(np.float32)
        x = z @ mix + 0.02 * rng.normal(size=(m, dim)).astype(np.float32)
        out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="search threads")
    parser.add_argument("--build-threads", type=int, default=0, help="build threads (default: all cores)")
    parser.add_argument("--types", default="flat,hnsw,ivf,ivfpq")
    parser.add_argument("--naive-queries", type=int, default=5)
    args = parser.parse_args()
    import faiss

    from searchlite.vectors import SearchParams, VectorIndex

    faiss.omp_set_num_threads(args.threads)
    vecs = synthetic(args.n + args.queries, args.dim)
    queries, vecs = vecs[: args.queries], vecs[args.queries:]
    ids = np.arange(1, args.n + 1, dtype=np.int64)
    exact = faiss.IndexFlatIP(args.dim)
    exact.add(vecs)
    _, truth = exact.search(queries, 10)
    truth_ids = ids[truth]
    rows = []

    # naive peer approach: dot products in numpy, then Python sorted() over (score, path) tuples
    t_naive = []
    for q in queries[: args.naive_queries]:
        t = time.perf_counter()
        scores = vecs @ q
        sorted(zip(scores.tolist(), range(args.n)), reverse=True)[:10]
        t_naive.append(time.perf_counter() - t)
    naive_ms = 1000 * float(np.median(t_naive))
    rows.append({"index": "numpy + sorted (naive)", "recall@10": 1.0, "p50_ms": naive_ms, "p95_ms":
                 1000 * float(np.percentile(t_naive, 95)), "build_s": 0.0})
    for kind in args.types.split(","):
        before = rss_mb()
        faiss.omp_set_num_threads(args.build_threads or os.cpu_count() or 1)
        t = time.perf_counter()
        index = VectorIndex.build(kind, args.dim, ids, vecs)
        build = time.perf_counter() - t
        faiss.omp_set_num_threads(args.threads)
        settings = [SearchParams()] if kind == "flat" else (
            [SearchParams(ef_search=e) for e in (32, 64, 128)] if kind == "hnsw"
            else [SearchParams(nprobe=p) for p in (8, 16, 32)])
        for params in settings:
            lat, found = [], []
            for q in queries:
                t = time.perf_counter()
                _, got = index.search(q[None, :], 10, params)
                lat.append(time.perf_counter() - t)
                found.append(got[0])
            recall = float(np.mean([len(set(f) & set(g)) / 10 for f, g in zip(found, truth_ids)]))
            label = index.factory + ("" if kind == "flat" else f" ef={params.ef_search}" if kind == "hnsw"
                                     else f" nprobe={params.nprobe}")
            rows.append({"index": label, "recall@10": recall, "p50_ms": 1000 * float(np.median(lat)),
                         "p95_ms": 1000 * float(np.percentile(lat, 95)), "build_s": round(build, 1),
                         "rss_growth_mb": round(rss_mb() - before, 1)})
        del index
    print(f"n={args.n} dim={args.dim} threads={args.threads} queries={args.queries}")
    print(f"{'index':32} {'recall@10':>9} {'p50 ms':>9} {'p95 ms':>9} {'build s':>8} {'vs naive':>9}")
    for r in rows:
        print(f"{r['index']:32} {r['recall@10']:9.3f} {r['p50_ms']:9.3f} {r['p95_ms']:9.3f} {r['build_s']:8.1f} "
              f"{naive_ms / r['p50_ms']:8.0f}x")
    print(json.dumps({"n": args.n, "dim": args.dim, "threads": args.threads, "rows": rows}))


if __name__ == "__main__":
    main()
