"""Exporting a torch embedder's two towers into a searchlite ONNX model folder (read by
:class:`searchlite.models.onnx_model.OnnxEmbedder`), validated against torch before it is used.

The text tower goes through the one text export (:func:`searchlite.models.export.export_text_tower`,
the light query path); the image tower is traced here with the same exporter settings and saved
optimised the same way. Validation: probe images of several shapes and modes go through the recorded
preprocessing recipe and the ONNX tower, and through the torch embedder in fp32; every embedding must
be within :data:`~searchlite.models.export.MAX_ABS` (cosine >= :data:`~searchlite.models.export.MIN_COS`).
A failed export is written with ``valid: false`` and the reason; the model then stays on torch.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from searchlite.models.export import MAX_ABS, MIN_COS, _optimise, export_text_tower
from searchlite.models.onnx_model import FORMAT, META, VERSION, OnnxEmbedder
from searchlite.models.pixels import UnsupportedRecipe, recipe_of
from searchlite.models.precision import full_precision, probe_images

log = logging.getLogger(__name__)


def export_probe_images(size: tuple[int, int]) -> list:
    """The precision probes at the model's size, plus shapes and modes that exercise resize and crop
    (wide, tall, odd sizes, greyscale, RGBA)."""
    from PIL import Image

    base = probe_images(size)
    w, h = max(int(size[0]), 32), max(int(size[1]), 32)
    wide = base[3].resize((w * 2 + 7, h + 3))
    tall = base[0].resize((w + 5, h * 2 + 1))
    grey = base[1].resize((w + 13, h + 13)).convert("L")
    rgba = Image.merge("RGBA", (*base[2].split(), Image.new("L", base[2].size, 200)))
    return [*base, wide, tall, grey, rgba]


def _export_visual(embedder: Any, sample: np.ndarray, path: Path) -> None:
    import torch

    class ImageTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = embedder.model

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return embedder._image_features(pixel_values)

    tower = ImageTower().eval()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused attention kernel has no ONNX form
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(tower, (torch.from_numpy(sample),), str(path), input_names=["pixel_values"],
                              output_names=["features"],
                              dynamic_axes={"pixel_values": {0: "batch"}, "features": {0: "batch"}},
                              opset_version=17, dynamo=False)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _json_safe(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return None


def model_meta(embedder: Any, steps: list[dict]) -> dict[str, Any]:
    """What the ONNX engine needs to know of a torch embedder (model.json, before validation)."""
    from searchlite.models.base import input_size_of

    size = input_size_of(embedder)
    return {"format": FORMAT, "version": VERSION, "model_id": embedder.model_id, "family": embedder.family,
            "template": embedder.template, "score": {"scale": embedder.score.scale, "bias": embedder.score.bias},
            "probability": getattr(embedder, "probability", None) or ("sigmoid" if embedder.score.bias else "platt"),
            "center": _json_safe(getattr(embedder, "center", None)),
            "input_size": [size.width, size.height, size.patch, size.max_patches], "dim": int(embedder.dim),
            "preprocess": steps, "preprocess_config": _json_safe(dict(embedder.preprocess_config)) or {},
            "valid": False}


def export_model(embedder: Any, folder: Path) -> dict:
    """Export and validate both towers of a torch ``embedder`` into ``folder`` (written under a
    temporary name and renamed: readers see a whole export or none); returns its model.json."""
    start = time.perf_counter()
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=folder.name + ".tmp-"))
    meta: dict[str, Any] = {"format": FORMAT, "version": VERSION, "model_id": embedder.model_id, "valid": False}
    try:
        recipe = recipe_of(embedder)
        meta = model_meta(embedder, recipe.to_list())
        images = export_probe_images(embedder.image_size)
        sample = np.stack([recipe(im) for im in images[:2]])
        _export_visual(embedder, sample, tmp / "raw.onnx")
        _optimise(tmp / "raw.onnx", tmp / "visual.onnx")
        (tmp / "raw.onnx").unlink()
        text = export_text_tower(embedder, tmp / "text")
        if not text.get("valid"):
            meta["reason"] = f"text tower: {text.get('reason')}"
        else:
            with full_precision(embedder), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    reference = embedder.embed_images(images)
                except Exception:  # noqa: BLE001 - a processor without RGB conversion (EfficientNet): the
                    images = [im.convert("RGB") for im in images]  # pipeline decodes to RGB anyway
                    reference = embedder.embed_images(images)
            onnx = OnnxEmbedder(tmp, {**meta, "valid": True}).embed_images(images)
            max_abs = float(np.abs(onnx - reference).max())
            min_cos = float((onnx * reference).sum(axis=1).min())
            meta["image_check"] = {"max_abs_diff": max_abs, "min_cosine": min_cos, "probes": len(images),
                                   "text_max_abs_diff": text.get("max_abs_diff"),
                                   "text_min_cosine": text.get("min_cosine")}
            meta["valid"] = max_abs <= MAX_ABS and min_cos >= MIN_COS
            if not meta["valid"]:
                meta["reason"] = f"ONNX image embeddings differ from torch's (max |d| {max_abs:.2e}, min cos {min_cos:.7f})"
    except UnsupportedRecipe as exc:
        meta["reason"] = f"preprocessing not reproducible without torch: {exc}"
    except Exception as exc:  # noqa: BLE001 - an export that cannot be made leaves the model on torch
        meta["reason"] = f"export failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    meta["seconds"] = round(time.perf_counter() - start, 2)
    if not meta["valid"]:
        log.warning("%s not exported to ONNX: %s", embedder.model_id, meta.get("reason"))
        for name in ("visual.onnx", "visual.onnx.data", "raw.onnx"):
            (tmp / name).unlink(missing_ok=True)
    (tmp / META).write_text(json.dumps(meta, indent=1))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return meta
