"""Query latency of hybrid search vs the embedding alone, warm, at N images.

    python benchmarks/hybrid.py --n 100000 [--runs 20]
    python benchmarks/hybrid.py --quick          # 2,000 images, a smoke run

The library gets N synthetic vectors for the bundled demo model through `searchlite import`, and text
rows like an indexed library's: a name row for every photo, OCR text on 10% (words of a 2,000-word
vocabulary), a place on 20% (six cities), keywords on 5%. Queries: a rare OCR word, a common place,
a keyword, and caption-like queries no text matches. Every search is timed after a warm-up run of the
same query (query vectors cached, pages in memory): the cost of the text channel and the fusion.
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

from scratch import scratch_dir

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

PLACES = ["Paris, Île-de-France, France", "Tokyo, 東京都, Japan", "Zürich, Switzerland", "Berlin, Germany",
          "Kyoto, 京都府, Japan", "Seoul, 서울특별시, South Korea"]
KEYWORDS = ["grandma", "wedding", "birthday", "hiking", "graduation", "christmas"]
QUERIES = {"ocr word (rare)": "w0042", "place (3% of photos)": "Paris", "keyword": "grandma",
           "CJK substring": "東京都", "caption (no text hit)": "two big red circles on a black background",
           "combined": "Paris + a yellow square"}


def build(work: Path, n: int) -> object:
    from scale import generator, write_shard
    from sqlalchemy import select

    from searchlite.catalog import ImageRow
    from searchlite.library import Library
    from searchlite.textindex import replace_fields
    from searchlite.textnorm import name_words

    lib = Library(work / "lib", device="cpu")
    dim = lib.embedder("demo").dim
    shard = work / "shard.parquet"
    write_shard(shard, generator(dim), 0, n, dim)
    lib.import_vectors(shard, "demo")
    shard.unlink()
    rng = random.Random(0)
    vocab = [f"w{i:04d}" for i in range(2000)]
    with lib.catalog.Session.begin() as s:
        for image_id, relpath in s.execute(select(ImageRow.id, ImageRow.relpath)):
            fields = {"name": name_words(Path(relpath).name), "folder": name_words(str(Path(relpath).parent))}
            u = rng.random()
            if u < 0.10:
                fields["ocr"] = " ".join(rng.sample(vocab, 4))
            if rng.random() < 0.20:
                fields["place"] = rng.choice(PLACES)
            if rng.random() < 0.05:
                fields["keywords"] = rng.choice(KEYWORDS)
            replace_fields(s, image_id, fields)
    return lib


def timed(lib, query: str, mode: str, runs: int) -> float:
    lib.search(query, "demo", 20, mode=mode, files=False)  # warm: the query vector cached, pages read
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        lib.search(query, "demo", 20, mode=mode, files=False)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="2,000 images, 3 runs")
    args = parser.parse_args()
    n, runs = (2000, 3) if args.quick else (args.n, args.runs)
    t = time.perf_counter()
    lib = build(scratch_dir(), n)
    build_s = time.perf_counter() - t
    rows = []
    for kind, query in QUERIES.items():
        vector, hybrid = timed(lib, query, "vector", runs), timed(lib, query, "hybrid", runs)
        rows.append({"query": kind, "vector_ms": round(vector, 2), "hybrid_ms": round(hybrid, 2),
                     "overhead_ms": round(hybrid - vector, 2)})
    print(f"{n} images (built in {build_s:.0f}s), median of {runs} warm searches, k=20")
    print(f"{'query':<24} {'vector ms':>10} {'hybrid ms':>10} {'overhead':>9}")
    for r in rows:
        print(f"{r['query']:<24} {r['vector_ms']:>10.2f} {r['hybrid_ms']:>10.2f} {r['overhead_ms']:>9.2f}")
    print(json.dumps({"n": n, "runs": runs, "rows": rows}))


if __name__ == "__main__":
    main()
