"""Readers for captioned datasets (text<->image) and labelled image sets (image<->image).

Supported:
- a folder with ``captions.jsonl`` (``{"image": "rel/path.jpg", "caption": "..."}`` per line) or
  ``captions.csv`` / ``captions.tsv`` (columns image, caption);
- COCO captions JSON (``annotations`` + ``images``) and Karpathy split files (``images[].sentences``;
  ``--split test`` selects COCO 5k / Flickr30k 1k test), with ``--images DIR``;
- Flickr30k-style CSV/TSV (image, caption; header optional; several rows per image);
- for image->image: a folder of class subfolders, or a pairs file (query, relevant).

Bad rows (missing image, empty caption) are reported, never fatal; a dataset with no usable row is.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from searchlite.errors import DatasetError
from searchlite.imaging import IMAGE_EXTENSIONS


@dataclass
class CaptionDataset:
    """Images and captions; ``caption_image[j]`` is the index of the image caption j describes."""

    root: Path
    images: list[Path] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    caption_image: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(self, image: Path, caption: str, where: str, index: dict[Path, int]) -> None:
        caption = (caption or "").strip()
        if not caption:
            self.problems.append(f"{where}: empty caption")
            return
        if not image.is_file():
            self.problems.append(f"{where}: missing image {image}")
            return
        if image not in index:
            index[image] = len(self.images)
            self.images.append(image)
        self.captions.append(caption)
        self.caption_image.append(index[image])

    def queries(self) -> tuple[list[str], list[list[int]], list[list[int]]]:
        """Unique caption texts, the images each one is relevant to, and per image its query ids.

        Identical caption texts form one query whose relevant set is every image carrying it."""
        texts: dict[str, int] = {}
        relevant: list[list[int]] = []
        per_image: list[set[int]] = [set() for _ in self.images]
        for cap, img in zip(self.captions, self.caption_image):
            q = texts.setdefault(cap, len(texts))
            if q == len(relevant):
                relevant.append([])
            if img not in relevant[q]:
                relevant[q].append(img)
            per_image[img].add(q)
        return list(texts), relevant, [sorted(s) for s in per_image]


def _rows_csv(path: Path) -> list[tuple[str, str]]:
    delim = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, newline="", encoding="utf-8") as fh:
        sample = fh.read(4096)
        fh.seek(0)
        if path.suffix.lower() not in (".tsv", ".csv"):
            delim = "\t" if "\t" in sample else ","
        rows = list(csv.reader(fh, delimiter=delim))
    if rows and [c.strip().lower() for c in rows[0][:2]] in (["image", "caption"], ["image_name", "comment"],
                                                               ["filename", "caption"], ["image", "text"]):
        rows = rows[1:]
    return [(r[0].strip().split("#")[0], r[-1] if len(r) > 2 else r[1]) for r in rows if len(r) >= 2]


def read_captions(path: str | Path, images: str | Path | None = None, split: str | None = None) -> CaptionDataset:
    """Read any supported captioned dataset (see module docstring)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"dataset not found: {path}")
    if path.is_dir():
        for name in ("captions.jsonl", "captions.csv", "captions.tsv"):
            if (path / name).is_file():
                return read_captions(path / name, images or path, split)
        raise DatasetError(f"{path} has no captions.jsonl, captions.csv or captions.tsv")
    root = Path(images).expanduser() if images else path.parent
    ds = CaptionDataset(root=root)
    index: dict[Path, int] = {}
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                ds.add(root / obj["image"], obj.get("caption", ""), f"{path.name}:{n}", index)
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                ds.problems.append(f"{path.name}:{n}: bad row ({exc})")
    elif suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if "annotations" in data:  # COCO captions
            files = {im["id"]: im["file_name"] for im in data.get("images", [])}
            for ann in data["annotations"]:
                name = files.get(ann.get("image_id"))
                if name is None:
                    ds.problems.append(f"annotation {ann.get('id')}: unknown image_id {ann.get('image_id')}")
                    continue
                ds.add(root / name, ann.get("caption", ""), f"annotation {ann.get('id')}", index)
        elif "images" in data:  # Karpathy split
            for im in data["images"]:
                if split and im.get("split") != split:
                    continue
                rel = Path(im.get("filepath", "")) / im["filename"]
                image = root / rel if (root / rel).exists() else root / im["filename"]
                for sent in im.get("sentences", []):
                    ds.add(image, sent.get("raw", ""), im["filename"], index)
        else:
            raise DatasetError(f"{path}: not a COCO captions or Karpathy split file")
    elif suffix in (".csv", ".tsv", ".txt", ".token"):
        for n, (name, caption) in enumerate(_rows_csv(path), 1):
            ds.add(root / name, caption, f"{path.name}:{n}", index)
    else:
        raise DatasetError(f"unsupported dataset file {path.name} (use .jsonl, .json, .csv or .tsv)")
    if not ds.captions:
        raise DatasetError(f"{path}: no usable caption rows ({len(ds.problems)} problems, first: "
                           f"{ds.problems[0] if ds.problems else 'empty file'})")
    return ds


@dataclass
class LabelledImages:
    """Images with class labels (same label = relevant to each other) or explicit relevant pairs."""

    images: list[Path]
    relevant: list[list[int]]  # per image, the other images relevant to it


def is_labelled_folder(path: str | Path) -> bool:
    """A folder without a captions file whose images sit in class subfolders."""
    path = Path(path).expanduser()
    if not path.is_dir() or any((path / n).is_file() for n in ("captions.jsonl", "captions.csv", "captions.tsv")):
        return False
    return any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir())


def read_labelled(path: str | Path) -> LabelledImages:
    """A folder of class subfolders, or a pairs file (query, relevant) in CSV/TSV."""
    path = Path(path).expanduser()
    if path.is_dir():
        images, labels = [], []
        for sub in sorted(p for p in path.iterdir() if p.is_dir()):
            for f in sorted(sub.rglob("*")):
                if f.suffix.lower() in IMAGE_EXTENSIONS:
                    images.append(f)
                    labels.append(sub.name)
        if not images:
            raise DatasetError(f"{path}: no class subfolders with images")
        by_label: dict[str, list[int]] = {}
        for i, lab in enumerate(labels):
            by_label.setdefault(lab, []).append(i)
        return LabelledImages(images, [[j for j in by_label[lab] if j != i] for i, lab in enumerate(labels)])
    pairs = _rows_csv(path)
    index: dict[Path, int] = {}
    images: list[Path] = []
    for a, b in pairs:
        for name in (a, b):
            p = path.parent / name
            if p not in index:
                index[p] = len(images)
                images.append(p)
    relevant: list[list[int]] = [[] for _ in images]
    for a, b in pairs:
        relevant[index[path.parent / a]].append(index[path.parent / b])
    return LabelledImages(images, relevant)
