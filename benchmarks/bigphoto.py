"""Peak memory of an index run over very large HEICs (issue 26 item 4: goal <= 2 GB for two 200 MP photos).

    python benchmarks/bigphoto.py [--mp 200] [--files 2] [--model demo] [--compare-full]
    python benchmarks/bigphoto.py --quick          # 24 MP, for a smoke run on a small machine

Writes ``--files`` synthetic HEICs of ``--mp`` megapixels (3:4, 12,240 x 16,320 at 200 MP; a 512 px
grid, as phones store them; no embedded thumbnail, so the worst case: nothing smaller to fall back
on) into a scratch folder, runs ``searchlite index`` on it in a subprocess and reports that
subprocess's peak RSS (``getrusage(RUSAGE_CHILDREN).ru_maxrss``) against the goal. With
``--compare-full``, also the peak RSS of a subprocess that decodes one file the plain way (Pillow +
pillow-heif, full size), the cost before the reduced decode. Everything is removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scratch import scratch_dir

ROOT = Path(__file__).resolve().parents[1]
GOAL_MB = 2048


def size_for(mp: float) -> tuple[int, int]:
    """(width, height) of a 3:4 portrait photo of ``mp`` megapixels, both even."""
    width = int(math.sqrt(mp * 1e6 * 3 / 4)) // 16 * 16
    return width, int(width * 4 / 3) // 16 * 16


def write_heic(path: Path, size: tuple[int, int], seed: int) -> None:
    """A smooth colour field with mild noise (a realistic file size), saved as a 512 px-grid HEIC."""
    import pillow_heif

    rng = np.random.default_rng(seed)
    low = Image.fromarray((rng.random((24, 18, 3)) * 255).astype(np.uint8))
    img = low.resize(size, Image.Resampling.BILINEAR)
    heif = pillow_heif.from_pillow(img)
    del img
    heif.save(path, quality=70, tile_size=512, enc_params={"preset": "ultrafast"})  # x265: minutes, not hours


def child_peak_mb(argv: list[str], env: dict) -> tuple[float, float, subprocess.CompletedProcess]:
    """Run ``argv`` to completion; (its own peak RSS in MB from ``wait4``, seconds, the result).

    Linux carries a process's high-water RSS across ``exec``, so a child forked from a large parent
    reports the parent's size: the photos are therefore written by a child of their own, and this
    process stays small when it starts the measured one."""
    start = time.perf_counter()
    import threading

    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    errs: list[str] = []
    reader = threading.Thread(target=lambda: errs.append(proc.stderr.read()))
    reader.start()
    out = proc.stdout.read()
    reader.join()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (not Popen.wait: it would reap it)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    return usage.ru_maxrss / 1024, seconds, subprocess.CompletedProcess(argv, proc.returncode, out, "".join(errs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mp", type=float, default=200.0, help="megapixels per photo (200: 12,240 x 16,320)")
    parser.add_argument("--files", type=int, default=2)
    parser.add_argument("--model", default="demo", help="model spec or alias for the index run")
    parser.add_argument("--workers", type=int, default=None, help="decode threads (default: cores)")
    parser.add_argument("--quick", action="store_true", help="24 MP photos: a smoke run")
    parser.add_argument("--compare-full", action="store_true", help="also measure one plain full-size decode")
    args = parser.parse_args()
    mp = 24.0 if args.quick else args.mp
    size = (12_240, 16_320) if mp == 200 else size_for(mp)
    folder = scratch_dir("searchlite-bigphoto-")
    photos, library = folder / "photos", folder / "library"
    photos.mkdir()
    start = time.perf_counter()
    for i in range(args.files):  # in a child: this process must stay small (see child_peak_mb)
        code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); from bigphoto import write_heic; " \
               f"from pathlib import Path; write_heic(Path({str(photos / f'big-{i}.heic')!r}), {tuple(size)!r}, {i})"
        subprocess.run([sys.executable, "-c", code], check=True)
    print(f"wrote {args.files} x {size[0]}x{size[1]} HEIC in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result: dict = {"megapixels": round(size[0] * size[1] / 1e6, 1), "size": list(size), "files": args.files,
                    "file_mb": round(sum(p.stat().st_size for p in photos.iterdir()) / 1e6, 1), "goal_mb": GOAL_MB}
    if args.compare_full:  # first: each child reports its own peak (wait4)
        code = ("import sys, pillow_heif; from PIL import Image; pillow_heif.register_heif_opener(); "
                "Image.MAX_IMAGE_PIXELS = None; im = Image.open(sys.argv[1]); im.load(); im.convert('RGB')")
        peak, seconds, out = child_peak_mb([sys.executable, "-c", code, str(photos / "big-0.heic")], env)
        result["plain_full_decode"] = {"peak_rss_mb": round(peak), "seconds": round(seconds, 1),
                                       "ok": out.returncode == 0}
    argv = [sys.executable, "-m", "searchlite.cli.main", "index", str(photos), "-m", args.model, "-L", str(library),
            "--device", "cpu", "--json"] + (["--workers", str(args.workers)] if args.workers else [])
    peak, seconds, out = child_peak_mb(argv, env)
    if out.returncode != 0:
        raise SystemExit(f"index failed ({out.returncode}):\n{out.stderr[-3000:]}")
    try:  # the --json summary (one object, possibly spread over lines)
        summary = json.loads(out.stdout)
    except ValueError:
        summary = {"stdout_tail": out.stdout[-500:]}
    result["index"] = {"peak_rss_mb": round(peak) if peak == peak else None, "seconds": round(seconds, 1),
                       "summary": summary}
    result["within_goal"] = bool(peak == peak and peak <= GOAL_MB)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
