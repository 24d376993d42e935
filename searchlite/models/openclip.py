"""CLIP and SigLIP through open_clip, using open_clip's own preprocess and tokenizer."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from searchlite.errors import ModelLoadError
from searchlite.models.base import DEFAULT_TEMPLATES, ScoreParams, TorchEmbedder

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)


class OpenClipEmbedder(TorchEmbedder):
    """An Embedder backed by open_clip: a built-in architecture with a pretrained tag or
    checkpoint file, or a local folder holding ``open_clip_config.json`` and weights."""

    def __init__(self, arch: str, pretrained: str | None, model_id: str, device: str = "cpu",
                 batch_size: int = 32, precision: str = "auto") -> None:
        import open_clip

        folder = Path(arch).expanduser()
        if folder.is_dir():
            name, pretrained = f"local-dir:{folder}", None
        elif arch.startswith((".", "/", "~")):
            raise ModelLoadError(f"open_clip model folder not found: {arch}")
        elif arch not in open_clip.list_models():
            raise ModelLoadError(f"unknown open_clip architecture '{arch}' (see open_clip.list_models())")
        else:
            name = arch
        if pretrained and not Path(pretrained).expanduser().is_file():
            tags = open_clip.list_pretrained_tags_by_model(arch)
            if pretrained not in tags:
                raise ModelLoadError(
                    f"'{pretrained}' is neither a checkpoint file nor a pretrained tag of {arch} "
                    f"(tags: {', '.join(tags) or 'none'})"
                )
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=str(Path(pretrained).expanduser()) if pretrained and Path(pretrained).expanduser().is_file() else pretrained,
                device=device, weights_only=True,
            )
            tokenizer = open_clip.get_tokenizer(name)
        except (OSError, RuntimeError) as exc:
            text = str(exc).lower()
            if "connect" in text or "offline" in text or "resolve" in text or "hub" in text:
                raise ModelLoadError(
                    f"cannot load model 'openclip:{arch}@{pretrained}': the weights are not cached and the hub "
                    "cannot be reached. Connect once to download them, or pass a local checkpoint file: "
                    f"--model openclip:{arch}@/path/to/weights.safetensors"
                ) from exc
            raise ModelLoadError(f"cannot load open_clip model {arch}: {exc}") from exc

        model.eval()
        bias = getattr(model, "logit_bias", None)
        family = "siglip" if bias is not None else "clip"
        score = ScoreParams(scale=float(model.logit_scale.exp().item()),
                            bias=float(bias.item()) if bias is not None else 0.0)
        cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
        size = cfg.get("size", getattr(model.visual, "image_size", 224))
        size = (size, size) if isinstance(size, int) else tuple(size)
        super().__init__(
            model_id=model_id,
            family=family,
            template=DEFAULT_TEMPLATES[family],
            score=score,
            image_size=(int(size[1]), int(size[0])),
            preprocess_config=cfg,
            device=device,
            batch_size=batch_size,
            precision=precision,
        )
        self.model = model
        self.transform = preprocess
        self.tokenizer = tokenizer

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return self.transform(image).numpy().astype(np.float32, copy=False)

    def preprocessor(self) -> TransformPixels:
        """``preprocess`` without the model: picklable, for decode tasks in other processes."""
        return TransformPixels(self.transform)

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(texts).to(self.device))


class TransformPixels:
    """open_clip's torchvision transform as image -> float32 CHW array."""

    def __init__(self, transform) -> None:
        self.transform = transform

    def __call__(self, image: Image.Image) -> np.ndarray:
        return self.transform(image).numpy().astype(np.float32, copy=False)
