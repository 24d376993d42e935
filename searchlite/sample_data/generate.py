"""Deterministic generator of a captioned image set whose captions describe the pictures.

Each image shows 1-3 identical shapes of one colour and size on a plain background; its caption
says exactly that: "two big red circles on a black background". Images vary in size, aspect
ratio, placement and format (JPEG / PNG), and are written as a folder + ``captions.jsonl`` in the
format ``searchlite bench`` reads.

Splits: ``train`` and ``test`` draw from the same compositions (with different seeds); ``novel``
uses only (colour, shape) pairs that never occur in ``train``/``test``.

    python -m searchlite.sample_data.generate OUT_DIR --count 300 --seed 7 --split test
"""

from __future__ import annotations

import argparse
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
           "purple": (140, 60, 180), "orange": (245, 140, 30)}
SHAPES = ("circle", "square", "triangle", "cross")
COUNTS = {1: "one", 2: "two", 3: "three"}
SIZES = ("small", "big")
BACKGROUNDS = {"white": (245, 245, 245), "black": (20, 20, 20), "gray": (128, 128, 128)}
#: (colour, shape) pairs held out of train/test for the 'novel' split.
NOVEL_PAIRS = {("red", "triangle"), ("green", "cross"), ("blue", "circle"), ("yellow", "square"),
               ("purple", "triangle"), ("orange", "circle")}


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    count: int
    size: str
    background: str

    @property
    def caption(self) -> str:
        noun = self.shape + ("es" if self.count > 1 and self.shape == "cross" else "s" if self.count > 1 else "")
        article = COUNTS[self.count] if self.count > 1 else "one"
        return f"{article} {self.size} {self.colour} {noun} on a {self.background} background"


def sample_scene(rng: random.Random, split: str) -> Scene:
    while True:
        scene = Scene(rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(list(COUNTS)), rng.choice(SIZES),
                      rng.choice(list(BACKGROUNDS)))
        if ((scene.colour, scene.shape) in NOVEL_PAIRS) == (split == "novel"):
            return scene


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: tuple) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        s = r * 0.9
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    elif shape == "triangle":
        pts = [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
        draw.polygon(pts, fill=fill)
    else:
        w = r * 0.35
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)


def render(scene: Scene, rng: random.Random, width: int | None = None, height: int | None = None) -> Image.Image:
    """Draw a scene at a random (or given) size; shapes never overlap."""
    width = width or rng.randint(160, 420)
    height = height or max(120, int(width * rng.uniform(0.6, 1.6)))
    bg = tuple(min(255, max(0, c + rng.randint(-12, 12))) for c in BACKGROUNDS[scene.background])
    img = Image.new("RGB", (width, height), bg)
    draw = ImageDraw.Draw(img)
    side = min(width, height)
    r = side * (rng.uniform(0.21, 0.25) if scene.size == "big" else rng.uniform(0.11, 0.14))
    if scene.count == 3 and scene.size == "big":
        r *= 0.8
    fill = tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in COLOURS[scene.colour])
    centers: list[tuple[float, float]] = []
    for _ in range(scene.count):
        for _attempt in range(200):
            cx, cy = rng.uniform(r, width - r), rng.uniform(r, height - r)
            if all((cx - x) ** 2 + (cy - y) ** 2 > (2.2 * r) ** 2 for x, y in centers):
                break
        centers.append((cx, cy))
        _draw_shape(draw, scene.shape, cx, cy, r, fill)
    return img


def generate(out: Path, count: int, seed: int, split: str = "test") -> Path:
    """Write ``count`` images and ``captions.jsonl`` into ``out``; returns the captions file."""
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"{split}:{seed}")
    lines = []
    for i in range(count):
        scene = sample_scene(rng, split)
        img = render(scene, rng)
        name = f"{split}-{seed}-{i:05d}." + ("jpg" if i % 3 else "png")
        if name.endswith("jpg"):
            img.save(out / name, quality=rng.randint(80, 95))
        else:
            img.save(out / name)
        lines.append(json.dumps({"image": name, "caption": scene.caption}))
    captions = out / "captions.jsonl"
    captions.write_text("\n".join(lines) + "\n")
    return captions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", choices=("train", "test", "novel"), default="test")
    args = parser.parse_args()
    path = generate(args.out, args.count, args.seed, args.split)
    print(f"wrote {args.count} images and {path}")


if __name__ == "__main__":
    main()
