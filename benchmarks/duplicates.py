"""Duplicate detection: the default threshold on the sample data, and the 1M-vector scale run.

    python benchmarks/duplicates.py threshold [--count 300]
    python benchmarks/duplicates.py scale --n 1000000 [--dim 768] [--pairs 0.01] [--index hnsw]

``threshold``: the demo model on the captioned sample images (``searchlite.sample_data``), plus a
byte copy and a half-size JPEG re-encode (quality 70) of every image, indexed into a library; then
``Library.duplicates`` at several thresholds: how many originals are grouped with their byte copy,
with their re-encode, and how many groups mix photos whose captions differ; plus the raw cosines.

``scale``: N synthetic vectors that look like embeddings (../shared/BENCHMARKING.md: a 48-d
clustered latent through a random map with a decaying spectrum, plus isotropic noise, normalised,
the generator of ``scale.py``) with planted near-duplicate pairs (every 100th vector replaced by its
predecessor plus noise, cosine uniform in [0.96, 0.995]), imported through Parquet, indexed
('auto': IVF-SQ8 at 1M), then ``Library.duplicates`` at threshold 0.95 in a fresh process: time,
peak RSS, recall of the planted pairs (both in one group) and precision (planted pairs among the
pairs grouped; any other grouped pair is verified >= the threshold by exact cosine).
Scratch data is deleted on exit (``scratch.py``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scale import model_folder, peak_rss_mb
from scratch import scratch_dir

HERE = Path(__file__).resolve()
EVERY = 100  # one planted pair per this many vectors


# -- threshold on the sample data --------------------------------------------------------------------
def run_threshold(args) -> None:
    from PIL import Image

    from searchlite.library import Library
    from searchlite.sample_data import generate

    work = scratch_dir("searchlite-dups-")
    photos = work / "photos"
    generate.generate(photos, args.count, 20261122, "test")
    captions = {json.loads(line)["image"]: json.loads(line)["caption"]
                for line in (photos / "captions.jsonl").read_text().splitlines() if line.strip()}
    copies = photos / "copies"
    copies.mkdir()
    caption_of: dict[str, str] = {}
    for name, caption in captions.items():
        shutil.copyfile(photos / name, copies / f"copy-{name}")
        with Image.open(photos / name) as im:
            im = im.convert("RGB")
            im.resize((im.width // 2, im.height // 2), Image.LANCZOS).save(copies / f"half-{Path(name).stem}.jpg",
                                                                           quality=70)
        caption_of.update({str(photos / name): caption, str(copies / f"copy-{name}"): caption,
                           str(copies / f"half-{Path(name).stem}.jpg"): caption})
    lib = Library(work / "library", device="cpu")
    lib.index([photos], ["demo"])
    row = lib.model_row("demo")
    vec = {}
    for image_id, _ in lib.catalog.rows_of(row.id, range(1, 10 * len(caption_of))).items():
        vec[lib.catalog.image(image_id)[1]] = lib.stored_vectors(row, [image_id])[image_id]
    names = sorted(captions)
    half = np.array([vec[str(photos / n)] @ vec[str(copies / f"half-{Path(n).stem}.jpg")] for n in names])
    copy = np.array([vec[str(photos / n)] @ vec[str(copies / f"copy-{n}")] for n in names])
    m = np.stack([vec[str(photos / n)] for n in names])
    sims = m @ m.T
    differ = np.array([[captions[a] != captions[b] for b in names] for a in names])
    upper = np.triu(np.ones_like(differ), 1).astype(bool)
    print(f"demo model, {len(names)} sample photos + a byte copy and a half-size q70 JPEG of each")
    print(f"cosine: byte copy min {copy.min():.4f}; re-encode min {half.min():.4f}, 1st pct "
          f"{np.percentile(half, 1):.4f}, median {np.median(half):.4f}; different captions max "
          f"{sims[differ & upper].max():.4f}, 99.9th pct {np.percentile(sims[differ & upper], 99.9):.4f} "
          f"({int((differ & upper).sum())} pairs)")
    print(f"{'threshold':>9}  {'copy grouped':>12}  {'re-encode grouped':>17}  {'groups mixing captions':>22}  groups")
    out = []
    for t in args.thresholds:
        groups, _ = lib.duplicates("demo", t)
        where = {m.path: i for i, g in enumerate(groups) for m in g.members}
        copy_ok = sum(where.get(str(photos / n), -1) == where.get(str(copies / f"copy-{n}"), -2) for n in names)
        half_ok = sum(where.get(str(photos / n), -1) == where.get(str(copies / f"half-{Path(n).stem}.jpg"), -2)
                      for n in names)
        mixed = sum(len({caption_of[m.path] for m in g.members}) > 1 for g in groups)
        channels = {c: sum(m.channel == c for g in groups for m in g.members[1:]) for c in ("phash", "embedding", "both")}
        print(f"{t:>9.3f}  {copy_ok:>8}/{len(names)}  {half_ok:>13}/{len(names)}  {mixed:>22}  {len(groups)}  {channels}")
        out.append({"threshold": t, "copy_grouped": copy_ok, "reencode_grouped": half_ok, "mixed_groups": mixed,
                    "groups": len(groups), "channels": channels})
    print(json.dumps({"photos": len(names), "results": out}))


# -- scale -----------------------------------------------------------------------------------------------
def generator(dim: int, seed: int = 0, latent: int = 48, clusters: int = 1000, spread: float = 1.5):
    """scale.py's embedding-like vectors with a wider spread inside each cluster (1.5 instead of
    0.5), so that distinct vectors are rarely near copies: at 100k the nearest neighbour's cosine
    has median 0.74 and 99th percentile 0.89 (0.5 gives 0.91 and 0.97, and 9% of vectors a
    neighbour above 0.95, which would make every planted pair sit in a crowd)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, latent)).astype(np.float32)
    mix = (rng.normal(size=(latent, dim)) * (np.arange(1, latent + 1) ** -0.5)[:, None]).astype(np.float32)

    def make(start: int, count: int) -> np.ndarray:
        r = np.random.default_rng([seed, start])
        z = centers[r.integers(0, clusters, count)] + spread * r.normal(size=(count, latent)).astype(np.float32)
        x = z @ mix + 0.02 * r.normal(size=(count, dim)).astype(np.float32)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return make


def planted(make, start: int, count: int, dim: int, seed: int = 1) -> np.ndarray:
    """Vectors [start, start+count) with every EVERY-th one replaced by a near copy of its predecessor."""
    x = make(start, count)
    rng = np.random.default_rng([seed, start])
    rows = np.arange(start, start + count)
    at = np.flatnonzero(rows % EVERY == EVERY - 1)  # chunks start at multiples of EVERY
    cos = rng.uniform(0.96, 0.995, len(at))
    sigma = np.sqrt((1 / cos**2 - 1) / dim).astype(np.float32)
    near = x[at - 1] + sigma[:, None] * rng.normal(size=(len(at), dim)).astype(np.float32)
    x[at] = near / np.linalg.norm(near, axis=1, keepdims=True)
    return x


def phase_import(args) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from searchlite.library import Library

    make = generator(args.dim)
    lib = Library(args.library, device="cpu")
    spec = f"hf:{args.model}"
    t = time.perf_counter()
    shard = args.library.parent / "shard.parquet"
    schema = pa.schema([("path", pa.string()), ("vector", pa.list_(pa.float32(), args.dim)), ("size", pa.int64()),
                        ("mtime_ns", pa.int64()), ("width", pa.int32()), ("height", pa.int32())])
    with pq.ParquetWriter(shard, schema=schema) as writer:
        for lo in range(0, args.n, 100_000):
            n = min(100_000, args.n - lo)
            ids = np.arange(lo, lo + n)
            vectors = planted(make, lo, n, args.dim)
            writer.write_table(pa.table({
                "path": [f"/photos/{i % 100:03d}/{i:09d}.jpg" for i in ids],
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), args.dim),
                "size": pa.array(1_000_000 + ids, pa.int64()), "mtime_ns": pa.array(10**18 + ids, pa.int64()),
                "width": pa.array(np.full(n, 4000), pa.int32()), "height": pa.array(np.full(n, 3000), pa.int32()),
            }, schema=schema), row_group_size=65536)
    generated = time.perf_counter() - t
    t = time.perf_counter()
    lib.import_vectors(shard, spec, index_type="flat")
    imported = time.perf_counter() - t
    shard.unlink()
    t = time.perf_counter()
    described = lib.reindex(None, args.index)
    return {"generate_s": generated, "import_s": imported, "build_s": time.perf_counter() - t, "index": described}


def phase_find(args) -> dict:
    from searchlite.library import Library

    lib = Library(args.library, device="cpu", create=False)
    t = time.perf_counter()
    groups, _ = lib.duplicates(None, args.threshold)
    seconds = time.perf_counter() - t
    t = time.perf_counter()
    lib.duplicates(None, args.threshold)  # the same library state: read from the groups cache
    cached = time.perf_counter() - t
    number = {}
    for i, g in enumerate(groups):
        for m in g.members:
            number[int(Path(m.path).stem)] = i
    wanted = [(i - 1, i) for i in range(EVERY - 1, args.n, EVERY)]
    found = sum(a in number and number.get(a) == number.get(b) for a, b in wanted)
    grouped_pairs = sum(len(g.members) * (len(g.members) - 1) // 2 for g in groups)
    sizes, counts = np.unique([len(g.members) for g in groups], return_counts=True)
    return {"seconds": seconds, "cached_s": cached, "peak_rss_mb": peak_rss_mb(), "groups": len(groups),
            "sizes": {str(k): int(v) for k, v in zip(sizes.tolist(), counts.tolist())},
            "planted": len(wanted), "planted_found": found, "recall": found / max(len(wanted), 1),
            "grouped_pairs": grouped_pairs, "precision": found / max(grouped_pairs, 1)}


def run_phase(name: str, args) -> dict:
    argv = [sys.executable, str(HERE), "phase", "--name", name, "--n", str(args.n), "--dim", str(args.dim),
            "--library", str(args.library), "--model", str(args.model), "--threshold", str(args.threshold),
            "--index", args.index]
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"phase {name} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"  {name}: {json.dumps(result)}", file=sys.stderr, flush=True)
    return result


def run_scale(args) -> None:
    import os

    work = args.work or scratch_dir("searchlite-dups-scale-")
    work.mkdir(parents=True, exist_ok=True)
    args.library = work / "library"
    args.model = model_folder(work, args.dim)
    print(f"duplicates at scale: n={args.n:,} d={args.dim}, {os.cpu_count()} cores, in {work}", file=sys.stderr)
    built = run_phase("import", args) if not (args.library / "catalog.sqlite").exists() else {}
    found = run_phase("find", args)
    if built:
        print(f"import {built['import_s']:.0f} s, build {built['index']} {built['build_s']:.0f} s")
    print(f"duplicates at {args.threshold}: {found['seconds']:.1f} s (again, cached: {found['cached_s']:.3f} s), peak RSS {found['peak_rss_mb']:.0f} MB, "
          f"{found['groups']} groups; planted pairs {found['planted_found']}/{found['planted']} "
          f"(recall {found['recall']:.4f}), precision {found['precision']:.4f} of {found['grouped_pairs']} grouped pairs")
    print(json.dumps({"n": args.n, "dim": args.dim, "threshold": args.threshold, "build": built, "find": found}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("threshold", "scale", "phase"))
    parser.add_argument("--name")
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.9, 0.95, 0.97, 0.98, 0.99])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--index", default="auto", choices=("auto", "flat", "hnsw", "ivf", "ivfpq"),
                        help="scale: the index type built (hnsw: duplicates by k-NN with a radius cut)")
    parser.add_argument("--library", type=Path)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--work", type=Path, help="keep the library here between runs (default: a scratch "
                        "folder deleted on exit)")
    args = parser.parse_args()
    if args.mode == "threshold":
        run_threshold(args)
    elif args.mode == "scale":
        run_scale(args)
    else:
        print(json.dumps({"import": phase_import, "find": phase_find}[args.name](args)))


if __name__ == "__main__":
    main()
