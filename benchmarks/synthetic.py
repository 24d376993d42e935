"""Synthetic inputs shared by the benchmarks: 12 MP photos, DNG files and random-weight open_clip
folders (no download). Decode and indexing benchmarks both use these; neither imports the other."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))


def photo(seed: int, size=(4000, 3000)) -> Image.Image:
    from searchlite.sample_data import generate as gen

    rng = np.random.default_rng(seed)
    low = rng.random((12, 16, 3)) * 255
    base = Image.fromarray(low.astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)
    arr = np.asarray(base, dtype=np.int16) + rng.integers(-18, 18, (size[1], size[0], 1), dtype=np.int16)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    scene = gen.sample_scene(random.Random(seed), "test")
    img.paste(gen.render(scene, random.Random(seed), 2000, 1500).resize((size[0] * 3 // 5, size[1] * 3 // 5)),
              (size[0] // 5, size[1] // 5))
    return img


def dng(path: Path, img: Image.Image, preview: bool) -> Path:
    """A 12 MP DNG: an RGGB mosaic, with a full-size JPEG preview (as cameras embed) or none."""
    import tifffile
    from test_formats import write_dng

    if not preview:
        return write_dng(path, np.asarray(img), preview=False)
    rgb = np.asarray(img)
    lin = (rgb.astype(np.float32) / 255.0) ** 2.2 * 4095
    cfa = np.zeros(rgb.shape[:2], np.uint16)
    cfa[0::2, 0::2], cfa[0::2, 1::2] = lin[0::2, 0::2, 0], lin[0::2, 1::2, 1]
    cfa[1::2, 0::2], cfa[1::2, 1::2] = lin[1::2, 0::2, 1], lin[1::2, 1::2, 2]
    common = [(50706, "B", 4, (1, 4, 0, 0), True), (50708, "s", 0, "bench", True), (274, "H", 1, 1, True)]
    raw_tags = [(33421, "H", 2, (2, 2), True), (33422, "B", 4, (0, 1, 1, 2), True), (50717, "H", 1, 4095, True),
                (50721, "2i", 9, (1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1), True),
                (50728, "2I", 3, (1, 1, 1, 1, 1, 1), True)]
    with tifffile.TiffWriter(path) as tw:  # JPEG-compressed preview (needs imagecodecs)
        tw.write(rgb, photometric="rgb", subfiletype=1, subifds=1, extratags=common, compression="jpeg",
                 compressionargs={"level": 90})
        tw.write(cfa, photometric=32803, subfiletype=0, extratags=raw_tags)
    return path


def random_openclip_folder(arch: str, folder: Path) -> Path:
    """A local open_clip folder with the architecture's config and random weights (no download)."""
    import open_clip
    import tiny_models
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    cfg = open_clip.get_model_config(arch)
    if "hf_tokenizer_name" in cfg.get("text_cfg", {}):
        from transformers import SiglipTokenizer

        sp = tiny_models.make_sentencepiece(folder / "_sp")
        SiglipTokenizer(vocab_file=str(sp), model_max_length=cfg["text_cfg"].get("context_length", 64)).save_pretrained(folder)
    pre = open_clip.get_pretrained_cfg(arch, open_clip.list_pretrained_tags_by_model(arch)[0]) \
        if open_clip.list_pretrained_tags_by_model(arch) else {}
    preprocess = {k: pre[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in pre}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": preprocess}))
    model = open_clip.create_model(arch, pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder
