"""Paging cost: one page of a query's ranking at growing offsets, on IVF and HNSW.

    python benchmarks/paging.py [--n 30000] [--dim 768] [--k 20] [--offsets 0 2500 10000]
    python benchmarks/paging.py --quick          # 3,000 vectors, d=64: a smoke run (seconds)

N synthetic embedding-like vectors (``scale.py``'s generator) are imported and indexed with each
index type; for a few queries, page [offset, offset+k) is timed twice: cold (a fresh query: the
ranking is computed as far as the page) and warm (the next page after it, read from the kept
ranking), plus the number of results reachable by paging to the end (every image, by design).
Scratch data is deleted on exit (``scratch.py``). Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scale import generator, model_folder
from scratch import scratch_dir

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))


def build(work: Path, n: int, dim: int):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from searchlite.library import Library

    make = generator(dim)
    vectors = make(0, n)
    shard = work / "v.parquet"
    pq.write_table(pa.table({"path": [f"/photos/{i % 100:03d}/{i:09d}.jpg" for i in range(n)],
                             "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)}), shard)
    lib = Library(work / "library", device="cpu")
    spec = f"hf:{model_folder(work, dim)}"
    lib.import_vectors(shard, spec, index_type="flat")
    return lib, spec, make


def measure(lib, spec: str, kind: str, queries: np.ndarray, k: int, offsets: list[int], full: bool) -> dict:
    from searchlite.query import search_vectors

    lib.reindex(spec, kind)
    row = lib.model_row(spec)
    index = lib.model_index(row)
    out: dict = {"index": index.describe(), "offsets": {}}
    for offset in offsets:
        cold, warm = [], []
        for q in queries:
            index.rankings.clear()
            t = time.perf_counter()
            search_vectors(lib.catalog, row, index, q, k, offset=offset)
            cold.append(time.perf_counter() - t)
            t = time.perf_counter()
            search_vectors(lib.catalog, row, index, q, k, offset=offset + k)
            warm.append(time.perf_counter() - t)
        out["offsets"][str(offset)] = {"cold_ms": 1000 * float(np.median(cold)), "warm_ms": 1000 * float(np.median(warm))}
    if full:
        index.rankings.clear()
        seen, offset = set(), 0
        while True:
            page = search_vectors(lib.catalog, row, index, queries[0], 1000, offset=offset)
            if not page:
                break
            seen.update(r.image_id for r in page)
            offset += 1000
        out["reachable"] = len(seen)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=30_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--offsets", type=int, nargs="+", default=[0, 2500, 10_000])
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--kinds", nargs="+", default=["ivf", "hnsw"])
    parser.add_argument("--quick", action="store_true", help="3,000 vectors at d=64, 2 queries: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.n, args.dim, args.queries, args.offsets = 3000, 64, 2, [0, 1000, 2500]
    work = scratch_dir("searchlite-paging-")
    lib, spec, make = build(work, args.n, args.dim)
    queries = make(args.n, args.queries, stream=1)
    results = {}
    print(f"paging: n={args.n:,} d={args.dim} k={args.k}, median of {args.queries} queries", file=sys.stderr)
    for kind in args.kinds:
        r = results[kind] = measure(lib, spec, kind, queries, args.k, args.offsets, full=True)
        for offset, t in r["offsets"].items():
            print(f"{kind:5} {r['index']:24} offset {int(offset):>7,}: cold {t['cold_ms']:8.1f} ms, "
                  f"next page {t['warm_ms']:6.1f} ms")
        print(f"{kind:5} reachable by paging: {r['reachable']:,} of {args.n:,}")
    print(json.dumps({"n": args.n, "dim": args.dim, "k": args.k, "results": results}))


if __name__ == "__main__":
    main()
