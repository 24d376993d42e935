"""The Ray engine: its overhead against the local engine on this machine, and how throughput scales
with model actors when the model stage is the bottleneck.

    python benchmarks/distributed.py [--images 48] [--arch ViT-B-16-SigLIP] [--sim-ms 50]

1. `index --engine local` vs `--engine ray` (a local Ray instance) on the same 12 MP JPEGs with the
   same random-init open_clip model: img/s of the indexing run (model loading excluded on both sides;
   Ray's own start-up reported apart).
2. Scaling by simulation: searchlite's decode stage feeding 1, 2, 4 model actors whose forward is a
   fixed wait per image (a stand-in for a GPU, so the actors do not compete for these two cores):
   throughput and efficiency per added actor.
Prints a table and one JSON line. Ray binds 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from scratch import scratch_dir

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))


class WaitActor:
    """A model stage that costs a fixed time per image (like a GPU) and returns random vectors."""

    def __init__(self, ms_per_image: float) -> None:
        self.seconds = ms_per_image / 1000

    def __call__(self, batch: dict) -> dict:
        n = len(batch["image_id"])
        time.sleep(self.seconds * n)
        return {"image_id": batch["image_id"], "vector_0": np.random.rand(n, 8).astype(np.float32)}


def engines(args, photos: Path, spec: str) -> dict:
    from searchlite.library import Library

    out = {}
    for engine in ("local", "ray"):
        lib = Library(scratch_dir() / "lib", device="cpu", batch_size=args.batch_size)
        lib.embedder(spec)  # model loading is not indexing
        t = time.perf_counter()
        stats = lib.index([photos], [spec], engine=engine)
        seconds = time.perf_counter() - t
        out[engine] = {"seconds": round(seconds, 2), "img_s": round(args.images / seconds, 2), "stages": stats.stages}
        print(f"{engine:6} {seconds:7.1f} s  {args.images / seconds:6.2f} img/s  {stats.stages or ''}", flush=True)
    ray_stages = out["ray"]["stages"]
    out["ratio_ray_over_local"] = round(out["ray"]["img_s"] / out["local"]["img_s"], 3)
    out["ratio_pipeline_only"] = round(ray_stages["wall_img_s"] / out["local"]["img_s"], 3) if ray_stages else None
    return out


def scaling(args, photos: Path) -> dict:
    import ray

    from searchlite.indexer.ray_engine import DecodeTask, start_ray
    from searchlite.models import load_embedder

    start_ray(None)
    emb = load_embedder("demo", device="cpu")
    files = sorted(photos.glob("*.jpg"))
    items = [dict(image_id=i, path=str(files[i % len(files)]), state="new", old_sha="", size=0, mtime_ns=0,
                  missing=[0]) for i in range(args.sim_images)]
    decode_fn = DecodeTask([emb.preprocessor()], [emb.image_size], {}, True)
    out = {}
    for actors in (1, 2, 4):
        ds = ray.data.from_items(items, override_num_blocks=max(1, len(items) // 8))
        ds = ds.map_batches(decode_fn, batch_size=8, num_cpus=1)
        ds = ds.map_batches(WaitActor, fn_constructor_args=(args.sim_ms,), batch_size=8,
                            compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=0.001)
        t, n = None, 0  # timed from the first batch out: worker start-up is not throughput
        for b in ds.iter_batches(batch_size=8, batch_format="numpy"):
            if t is None:
                t = time.perf_counter()
            else:
                n += len(b["image_id"])
        rate = n / (time.perf_counter() - t)
        out[actors] = {"img_s": round(rate, 2)}
    ideal = out[1]["img_s"]
    for actors, entry in out.items():
        entry["efficiency"] = round(entry["img_s"] / (ideal * actors), 3)
        print(f"{actors} simulated model actor(s): {entry['img_s']:7.2f} img/s, {entry['efficiency']:.0%} of linear",
              flush=True)
    ray.shutdown()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--arch", default="ViT-B-16-SigLIP")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--sim-ms", type=float, default=200.0,
                        help="simulated model cost per image (ms): 4 actors must stay below the decode capacity")
    parser.add_argument("--sim-images", type=int, default=160)
    args = parser.parse_args()
    from synthetic import photo, random_openclip_folder

    work = scratch_dir("searchlite-distributed-")
    photos = work / "photos"
    photos.mkdir()
    for i in range(args.images):
        photo(i).save(photos / f"{i:04d}.jpg", quality=90)
    spec = f"openclip:{random_openclip_folder(args.arch, work / 'model')}"
    result = {"machine": f"{os.cpu_count()} cores", "images": args.images, "arch": args.arch,
              "engines": engines(args, photos, spec), "scaling": scaling(args, photos), "sim_ms": args.sim_ms}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
