"""Load on `searchlite serve --http`: a bounded loop of requests from concurrent clients against a
library of N images on 127.0.0.1; errors counted, p50/p95 latency per endpoint.

    python benchmarks/serve.py [--images 10000] [--requests 500] [--clients 8]

The library holds N synthetic vectors imported for the bundled demo model (search answers through
its ONNX text tower); the mix is 70% text searches (every text distinct: no query-cache hits),
20% similar-by-id, 10% status. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.error import HTTPError
from urllib.parse import urlencode
from urllib.request import urlopen

from scratch import scratch_dir

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

WORDS = "red green blue yellow purple orange circle square triangle cross big small two three one".split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build(folder: Path, n: int) -> Path:
    from scale import generator, write_shard

    from searchlite.library import Library

    shard = folder / "vectors.parquet"
    write_shard(shard, generator(128), 0, n, 128)
    Library(folder / "lib", device="cpu").import_vectors(shard, "demo")
    return folder / "lib"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    work = scratch_dir("searchlite-serve-")
    lib = build(work, args.images)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "searchlite", "serve", "-L", str(lib), "--http",
                               f"127.0.0.1:{port}", "--device", "cpu"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env={**os.environ, "SEARCHLITE_NO_SERVER": "1"})
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            urlopen(base + "/api/status", timeout=2).read()
            break
        except OSError as exc:
            if time.time() > deadline or server.poll() is not None:
                raise SystemExit("the server did not start") from exc
            time.sleep(0.3)
    rng = random.Random(0)

    def request(i: int) -> tuple[str, float, bool]:
        kind = "search" if i % 10 < 7 else "similar" if i % 10 < 9 else "status"
        if kind == "search":
            text = " ".join(rng.choice(WORDS) for _ in range(4)) + f" {i}"
            url = f"{base}/api/search?{urlencode({'q': text, 'k': 20})}"
        elif kind == "similar":
            url = f"{base}/api/similar?{urlencode({'id': rng.randint(1, args.images), 'k': 20})}"
        else:
            url = f"{base}/api/status"
        t = time.perf_counter()
        try:
            body = urlopen(url, timeout=60).read()
            ok = kind == "status" or len(json.loads(body)["results"]) == 20
        except (HTTPError, OSError, ValueError):
            ok = False
        return kind, (time.perf_counter() - t) * 1000, ok

    try:
        start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            done = list(pool.map(request, range(args.requests)))
        wall = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(10)
    result = {"images": args.images, "requests": args.requests, "clients": args.clients, "wall_s": round(wall, 2),
              "requests_per_s": round(args.requests / wall, 1), "errors": sum(not ok for _, _, ok in done),
              "machine": f"{os.cpu_count()} cores"}
    for kind in ("all", "search", "similar", "status"):
        times = [ms for k, ms, _ in done if kind in ("all", k)]
        result[kind] = {"n": len(times), "p50_ms": round(statistics.median(times), 1),
                        "p95_ms": round(sorted(times)[int(0.95 * (len(times) - 1))], 1)}
        print(f"{kind:8} n={len(times):4}  p50 {result[kind]['p50_ms']:7.1f} ms  p95 {result[kind]['p95_ms']:7.1f} ms")
    print(f"{args.requests} requests from {args.clients} clients in {wall:.1f} s ({result['requests_per_s']} req/s), "
          f"{result['errors']} errors")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
