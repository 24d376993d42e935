"""`searchlite demo`: the whole product offline, on generated sample images and the bundled model."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from searchlite.sample_data import generate

DEMO_SEED = 20261122  # not used in training (train uses seed 0)


def run_demo(workdir: Path, count: int = 300, seed: int = DEMO_SEED, device: str = "auto",
             say: Callable[[str], None] = print, progress: Callable[[int, int], None] | None = None,
             before_queries: Callable[[], None] | None = None) -> dict:
    """Generate (or reuse) a test split, index it with the demo model, query it, and benchmark it."""
    from searchlite.evaluation.bench import format_table, run_bench
    from searchlite.evaluation.datasets import read_captions
    from searchlite.library import Library

    images = workdir / f"images-{seed}-{count}"
    if not (images / "captions.jsonl").is_file():
        say(f"generating {count} sample images in {images}")
        generate.generate(images, count, seed, "test")
    lib = Library(workdir / "library", device=device)
    stats = lib.index([images], ["demo"], progress=progress)
    if before_queries:
        before_queries()
    say(f"indexed: added {stats.added}, unchanged {stats.unchanged}, failed {stats.failed} "
        f"({stats.seconds:.1f}s); index {', '.join(stats.index.values())}")
    captions = {json.loads(line)["image"]: json.loads(line)["caption"]
                for line in (images / "captions.jsonl").read_text().splitlines() if line.strip()}

    def caption_of(path: str) -> str:
        return captions.get(Path(path).name, "?")

    # two captions of images in the set (unseen renders), and a partial description
    ordered = sorted(captions.values())
    queries = [ordered[len(ordered) // 3], ordered[2 * len(ordered) // 3], "three yellow triangles"]
    for text in queries:
        say(f'\nsearch "{text}"')
        for r in lib.search(text, "demo", k=3):
            mark = "*" if caption_of(r.path) == text else " "
            say(f"  {r.rank}. p={r.probability:.3f} {mark} {Path(r.path).name}  ({caption_of(r.path)})")
    say('\nsearch "a giraffe on the moon" --min-prob 0.5')
    hits = lib.search("a giraffe on the moon", "demo", k=3, min_prob=0.5)
    say("  no image matches" if not hits else "\n".join(f"  {r.rank}. p={r.probability:.3f} {r.path}" for r in hits))
    first = sorted(captions)[0]
    say(f"\nsimilar {first}  ({captions[first]})")
    for r in lib.similar(images / first, "demo", k=3):
        say(f"  {r.rank}. {Path(r.path).name}  ({caption_of(r.path)})")
    say("  (* = the image's caption is exactly the query)")
    say("\nbench (text->image and image->text retrieval on the generated test split)")
    result = run_bench(lib, read_captions(images), ["demo"])
    say(format_table(result))
    return result
