"""Load on `searchlite serve --http`: a bounded loopback run of concurrent clients with a mixed
workload (text search, similar-by-id, thumbnail, status); prints req/s, errors and p50/p99.

    python benchmarks/serve.py --demo [--count 300] [--seconds 30] [--clients 16]
    python benchmarks/serve.py --library PATH [--seconds 30] [--clients 16]

``--demo`` indexes ``--count`` bundled sample images with the demo model in a scratch folder
(removed on exit); ``--library`` uses an existing library (only read; thumbnails may be cached
into it). The mix is 50% text searches (every text distinct: no query-cache hits), 20%
similar-by-id, 20% thumbnails (several sizes: decodes and cache hits), 10% status. Each client
stops at the deadline; the server is stopped at the end. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.error import HTTPError
from urllib.parse import urlencode
from urllib.request import Request, urlopen

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from scratch import scratch_dir  # noqa: E402

WORDS = "red green blue yellow purple orange circle square triangle cross big small two three one".split()
KINDS = ["search"] * 5 + ["similar"] * 2 + ["thumbnail"] * 2 + ["status"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_library(folder: Path, count: int) -> Path:
    from searchlite.library import Library
    from searchlite.sample_data.generate import generate

    generate(folder / "photos", count, 7, "test")
    Library(folder / "lib", device="cpu").index([folder / "photos"], ["demo"])
    return folder / "lib"


def image_ids(library: Path) -> list[int]:
    from searchlite.library import Library

    return [r.image_id for r in Library(library, device="cpu", create=False).search("x", k=1000)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))] if ordered else float("nan")


def start_server(library: Path, port: int, token: str) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "-m", "searchlite", "serve", "-L", str(library), "--http",
                               f"127.0.0.1:{port}", "--token", token, "--device", "cpu",
                               "--idle-timeout", "120"],  # a forgotten server still goes away
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "SEARCHLITE_NO_SERVER": "1"})
    deadline = time.time() + 180
    while True:
        try:
            urlopen(Request(f"http://127.0.0.1:{port}/api/status", headers={"Authorization": f"Bearer {token}"}),
                    timeout=2).read()
            return server
        except OSError as exc:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                raise SystemExit("the server did not start") from exc
            time.sleep(0.3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--demo", action="store_true", help="index --count sample images with the demo model")
    source.add_argument("--library", type=Path, help="an existing library")
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    library = demo_library(scratch_dir("searchlite-serve-"), args.count) if args.demo else args.library
    ids = image_ids(library)
    if not ids:
        raise SystemExit("the library has no indexed images")
    port, token = free_port(), secrets.token_urlsafe(16)
    server = start_server(library, port, token)
    base = f"http://127.0.0.1:{port}"
    done: list[tuple[str, float, bool]] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + args.seconds

    def client(n: int) -> None:
        rng = random.Random(n)
        i = 0
        while time.perf_counter() < deadline:
            i += 1
            kind = rng.choice(KINDS)
            if kind == "search":
                url = f"{base}/api/search?" + urlencode({"q": " ".join(rng.choice(WORDS) for _ in range(3)) +
                                                         f" {n}-{i}", "k": 20})
            elif kind == "similar":
                url = f"{base}/api/similar?" + urlencode({"id": rng.choice(ids), "k": 20})
            elif kind == "thumbnail":
                url = f"{base}/api/thumbnail/{rng.choice(ids)}?size={rng.choice((64, 128, 256))}"
            else:
                url = f"{base}/api/status"
            started = time.perf_counter()
            try:
                with urlopen(Request(url, headers={"Authorization": f"Bearer {token}"}), timeout=60) as response:
                    body = response.read()
                ok = kind in ("status", "thumbnail") or bool(json.loads(body)["results"])
            except (HTTPError, OSError, ValueError):
                ok = False
            with lock:
                done.append((kind, (time.perf_counter() - started) * 1000, ok))

    try:
        started = time.perf_counter()
        threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(args.seconds + 90)
        wall = time.perf_counter() - started
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
    result = {"images": len(ids), "clients": args.clients, "seconds": round(wall, 2), "requests": len(done),
              "requests_per_s": round(len(done) / wall, 1), "errors": sum(not ok for _, _, ok in done),
              "machine": f"{os.cpu_count()} cores"}
    for kind in ("all", "search", "similar", "thumbnail", "status"):
        times = [ms for k, ms, _ in done if kind in ("all", k)]
        result[kind] = {"n": len(times), "p50_ms": round(percentile(times, 0.5), 1),
                        "p99_ms": round(percentile(times, 0.99), 1)}
        print(f"{kind:9} n={len(times):5}  p50 {result[kind]['p50_ms']:7.1f} ms  p99 {result[kind]['p99_ms']:7.1f} ms")
    print(f"{len(done)} requests from {args.clients} clients in {wall:.1f} s ({result['requests_per_s']} req/s), "
          f"{result['errors']} errors")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
