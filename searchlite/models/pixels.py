"""Image preprocessing without torch: a model's resize / crop / normalise recipe as data, run with
Pillow and numpy, step for step as the reference does it (torchvision's transforms for open_clip,
a transformers image processor's PIL backend for Hugging Face checkpoints).

A recipe is recorded at export (:func:`recipe_of`, which inspects the torch embedder) and saved with
the ONNX model; the export's validation compares the whole path (these pixels through the ONNX
tower) against torch's, so a recipe that differs from the reference is never used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

#: torchvision InterpolationMode names -> PIL resample codes
_TV_RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


class UnsupportedRecipe(ValueError):
    """The model preprocesses images in a way this module does not reproduce (the export says so)."""


def _short_edge_size(width: int, height: int, short: int) -> tuple[int, int]:
    """(width, height) with the short side ``short`` and the long side ``int(short * long / short_side)``
    (torchvision's and transformers' rule alike)."""
    if width <= height:
        return short, int(short * height / width)
    return int(short * width / height), short


def _crop(image: Image.Image, width: int, height: int, rounding: str) -> Image.Image:
    w, h = image.size
    if w < width or h < height:
        raise UnsupportedRecipe("a center crop larger than the resized image (padding) is not reproduced")
    if rounding == "round":  # torchvision
        left, top = int(round((w - width) / 2.0)), int(round((h - height) / 2.0))
    else:  # transformers
        left, top = (w - width) // 2, (h - height) // 2
    return image.crop((left, top, left + width, top + height))


@dataclass(frozen=True)
class PixelRecipe:
    """One image -> float32 CHW model input, from a recorded recipe (picklable, torch-free).

    ``steps``: a list of dicts, each ``{"op": ...}``: ``rgb`` (``white``: alpha composited over white); ``resize`` (``size`` [w, h] or
    ``short`` n, ``resample`` a PIL code); ``crop`` (``size`` [w, h], ``rounding`` round|floor);
    ``normalize`` (``scale``, ``mean``, ``std``, ``float64`` whether the rescale runs in float64,
    ``offset`` subtracted after the rescale and ``top_std`` a second division: EfficientNet's)."""

    steps: tuple[dict[str, Any], ...]

    @classmethod
    def from_list(cls, steps: list[dict[str, Any]]) -> PixelRecipe:
        return cls(tuple(dict(s) for s in steps))

    def to_list(self) -> list[dict[str, Any]]:
        return [dict(s) for s in self.steps]

    def __call__(self, image: Image.Image) -> np.ndarray:
        array: np.ndarray | None = None
        for step in self.steps:
            op = step["op"]
            if op == "rgb":
                if step.get("white") and image.mode in ("RGBA", "LA", "P"):  # transformers: alpha over white
                    from PIL import Image as PILImage

                    rgba = image.convert("RGBA")
                    image = PILImage.alpha_composite(PILImage.new("RGBA", rgba.size, (255, 255, 255)), rgba)
                image = image.convert("RGB") if image.mode != "RGB" else image
            elif op == "resize":
                size = step.get("size") or _short_edge_size(*image.size, int(step["short"]))
                image = image.resize((int(size[0]), int(size[1])), resample=int(step["resample"]))
            elif op == "crop":
                image = _crop(image, int(step["size"][0]), int(step["size"][1]), step.get("rounding", "round"))
            elif op == "normalize":
                raw = np.asarray(image.convert("RGB") if image.mode != "RGB" else image)
                if step.get("float64"):  # transformers: astype(float64) * scale, then float32
                    x = (raw.astype(np.float64) * float(step["scale"])).astype(np.float32)
                else:  # torchvision: to float32, divided by 255
                    x = raw.astype(np.float32) / np.float32(1.0 / float(step["scale"]))
                if step.get("offset"):  # EfficientNet (ALIGN): rescaled to [-1, 1]
                    x = x - np.float32(step["offset"])
                mean = np.asarray(step["mean"], dtype=np.float32)
                std = np.asarray(step["std"], dtype=np.float32)
                x = (x - mean) / std
                if step.get("top_std"):  # EfficientNet's include_top: divided by the std once more
                    x = x / np.asarray(step["top_std"], dtype=np.float32)
                array = x.transpose(2, 0, 1)
            else:
                raise UnsupportedRecipe(f"unknown preprocessing step {op!r}")
        if array is None:
            raise UnsupportedRecipe("the recipe has no normalize step")
        return np.ascontiguousarray(array, dtype=np.float32)


def _openclip_steps(transform: Any) -> list[dict[str, Any]]:
    """torchvision Compose -> steps (Resize, CenterCrop, the RGB conversion, ToTensor, Normalize)."""
    steps: list[dict[str, Any]] = []
    scale = None
    for t in getattr(transform, "transforms", [transform]):
        name = type(t).__name__
        if name == "Resize":
            mode = str(getattr(t.interpolation, "value", t.interpolation)).lower()
            if mode not in _TV_RESAMPLE or getattr(t, "max_size", None):
                raise UnsupportedRecipe(f"Resize with {mode} / max_size is not reproduced")
            size = t.size
            if isinstance(size, int) or len(size) == 1:
                steps.append({"op": "resize", "short": int(size if isinstance(size, int) else size[0]),
                              "resample": _TV_RESAMPLE[mode]})
            else:
                steps.append({"op": "resize", "size": [int(size[1]), int(size[0])], "resample": _TV_RESAMPLE[mode]})
        elif name == "CenterCrop":
            h, w = t.size
            steps.append({"op": "crop", "size": [int(w), int(h)], "rounding": "round"})
        elif name == "function" and getattr(t, "__name__", "") == "_convert_to_rgb":
            steps.append({"op": "rgb"})
        elif name == "MaybeConvertMode":
            if getattr(t, "mode", "RGB") != "RGB":
                raise UnsupportedRecipe(f"conversion to {t.mode} is not reproduced")
            steps.append({"op": "rgb"})
        elif name in ("ToTensor", "MaybeToTensor"):
            scale = 1.0 / 255.0
        elif name == "Normalize":
            if scale is None:
                raise UnsupportedRecipe("Normalize without ToTensor")
            steps.append({"op": "normalize", "scale": scale, "mean": [float(v) for v in t.mean],
                          "std": [float(v) for v in t.std], "float64": False})
        else:
            raise UnsupportedRecipe(f"open_clip transform step {name} is not reproduced")
    return steps


def _processor_steps(config: dict[str, Any]) -> list[dict[str, Any]]:
    """A transformers image processor's config (``to_dict()``) -> steps (its PIL backend's order)."""
    for flag in ("do_pad", "max_num_patches", "do_image_splitting"):
        if config.get(flag):
            raise UnsupportedRecipe(f"image processor option {flag} is not reproduced")
    steps: list[dict[str, Any]] = [{"op": "rgb", "white": True}] if config.get("do_convert_rgb", True) else []
    if config.get("do_resize", True):
        size = config.get("size") or {}
        resample = int(config.get("resample", 2))
        if size.get("shortest_edge") and not size.get("longest_edge"):
            steps.append({"op": "resize", "short": int(size["shortest_edge"]), "resample": resample})
        elif size.get("height") and size.get("width"):
            steps.append({"op": "resize", "size": [int(size["width"]), int(size["height"])], "resample": resample})
        else:
            raise UnsupportedRecipe(f"image processor size {size} is not reproduced")
    if config.get("do_center_crop"):
        crop = config.get("crop_size") or {}
        steps.append({"op": "crop", "size": [int(crop["width"]), int(crop["height"])], "rounding": "floor"})
    mean = config.get("image_mean") if config.get("do_normalize", True) else [0.0, 0.0, 0.0]
    std = config.get("image_std") if config.get("do_normalize", True) else [1.0, 1.0, 1.0]
    scale = float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else 1.0
    norm = {"op": "normalize", "scale": scale, "mean": [float(v) for v in mean], "std": [float(v) for v in std],
            "float64": True}
    if config.get("rescale_offset") and config.get("do_rescale", True):
        norm["offset"] = 1.0
    if config.get("include_top"):
        norm["top_std"] = [float(v) for v in config["image_std"]]
    steps.append(norm)
    return steps


def recipe_of(embedder: Any) -> PixelRecipe:
    """The torch embedder's preprocessing as a :class:`PixelRecipe` (UnsupportedRecipe when it
    cannot be reproduced without torch: NaFlex, padding, unknown steps)."""
    transform = getattr(embedder, "transform", None)
    if transform is not None:
        return PixelRecipe.from_list(_openclip_steps(transform))
    processor = getattr(embedder, "processor", None)
    if processor is None:
        raise UnsupportedRecipe(f"{type(embedder).__name__} has no known image preprocessing")
    return PixelRecipe.from_list(_processor_steps(processor.image_processor.to_dict()))
