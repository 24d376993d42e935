"""SigLIP, CLIP and ALIGN through Hugging Face transformers, with the reference preprocessing.

Parity with ``Model(**Processor(...))``: images go through the checkpoint's own image processor
(PIL backend, the one the checkpoints were evaluated with) and texts through its tokenizer with
the padding the zero-shot pipeline uses (SigLIP: ``max_length`` 64). The text tower receives
exactly what the checkpoint's tokenizer emits (its ``model_input_names``): Google's SigLIP
checkpoints pin ``["input_ids"]`` (no mask, the tower sees the pads); a fine-tune saved with
transformers' defaults emits an attention mask, and then the tower gets it too.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from searchlite.errors import ModelLoadError
from searchlite.models.base import DEFAULT_TEMPLATES, Family, ScoreParams, TorchEmbedder

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

_FAMILIES: dict[str, Family] = {"siglip": "siglip", "clip": "clip", "align": "align"}


def _offline_error(name: str, exc: BaseException) -> ModelLoadError:
    return ModelLoadError(
        f"cannot load model 'hf:{name}': its weights are not in the local Hugging Face cache and the hub "
        f"cannot be reached ({type(exc).__name__}). Connect to the internet once to download them, or pass "
        f"a local folder saved with save_pretrained: --model hf:/path/to/folder"
    )


def _image_size(processor: Any) -> tuple[int, int]:
    """The size the processor resizes to before any crop (used as the JPEG draft target)."""
    size = processor.size
    size = dict(size) if not isinstance(size, dict) else size
    if size.get("shortest_edge"):
        edge = int(size["shortest_edge"])
        return edge, edge
    return int(size["width"]), int(size["height"])


class HFEmbedder(TorchEmbedder):
    """An Embedder backed by a transformers checkpoint (hub id or local folder)."""

    def __init__(self, source: str, model_id: str, device: str = "cpu", batch_size: int = 32,
                 precision: str = "auto") -> None:
        try:
            from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            hf_logging.set_verbosity_error()  # config chatter; real load failures raise below
        except ImportError as exc:  # pragma: no cover - dependency missing
            raise ModelLoadError(f"transformers is not installed: {exc}") from exc

        path = Path(source).expanduser()
        local = path.is_dir()
        if not local and (source.startswith((".", "/", "~")) or path.exists()):
            raise ModelLoadError(f"model folder not found: {source} (expected a folder saved with save_pretrained)")
        ref = str(path) if local else source

        def cached_first(loader, **kwargs):
            # the local cache first: no hub round trips when the model is there (fast cold start)
            try:
                return loader.from_pretrained(ref, local_files_only=True, **kwargs)
            except OSError:
                if local:
                    raise
                return loader.from_pretrained(ref, **kwargs)

        try:
            config = cached_first(AutoConfig)
        except OSError as exc:
            if local:
                raise ModelLoadError(f"{source} holds no readable config.json: {exc}") from exc
            raise _offline_error(source, exc) from exc
        family = _FAMILIES.get(config.model_type)
        if family is None:
            raise ModelLoadError(
                f"hf:{source} is a '{config.model_type}' checkpoint; searchlite supports siglip, clip and align"
            )
        try:
            model = cached_first(AutoModel, trust_remote_code=False)
            tokenizer = cached_first(AutoTokenizer, trust_remote_code=False)
            processor = cached_first(AutoImageProcessor, backend="pil", trust_remote_code=False)
        except OSError as exc:
            if local:
                raise ModelLoadError(f"cannot load the checkpoint in {source}: {exc}") from exc
            raise _offline_error(source, exc) from exc

        model.eval().to(device)
        if family == "align":
            score = ScoreParams(scale=float(1.0 / model.temperature.item()))
        elif family == "siglip":
            score = ScoreParams(scale=float(model.logit_scale.exp().item()), bias=float(model.logit_bias.item()))
        else:
            score = ScoreParams(scale=float(model.logit_scale.exp().item()))

        super().__init__(
            model_id=model_id,
            family=family,
            template=DEFAULT_TEMPLATES[family],
            score=score,
            image_size=_image_size(processor),
            preprocess_config=processor.to_dict(),
            device=device,
            batch_size=batch_size,
            precision=precision,
        )
        self.model = model
        self.tokenizer = tokenizer
        self.processor = processor
        self.text_kwargs = self._text_kwargs(config, family)

    @staticmethod
    def _text_kwargs(config: Any, family: Family) -> dict[str, Any]:
        """Tokenizer arguments matching how each family was trained and how the pipeline calls it."""
        max_len = int(getattr(config.text_config, "max_position_embeddings", 64))
        if family == "siglip":
            # SigLIP pools the last position: it must see the same padding as in training.
            return {"padding": "max_length", "max_length": min(64, max_len), "truncation": True}
        if family == "align":
            return {"padding": "max_length", "max_length": min(64, max_len), "truncation": True}
        return {"padding": True, "max_length": max_len, "truncation": True}

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return self.processor(images=image, return_tensors="np")["pixel_values"][0].astype(np.float32)

    def preprocessor(self) -> ProcessorPixels:
        """``preprocess`` without the model: picklable, for decode tasks in other processes."""
        return ProcessorPixels(self.processor)

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.model.get_image_features(pixel_values=pixels)
        return getattr(out, "pooler_output", out)

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(texts, return_tensors="pt", **self.text_kwargs)
        enc = {k: v.to(self.device) for k, v in enc.items()}
        out = self.model.get_text_features(**enc)
        return getattr(out, "pooler_output", out)


class ProcessorPixels:
    """A transformers image processor as image -> float32 CHW array."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, image: Image.Image) -> np.ndarray:
        return self.processor(images=image, return_tensors="np")["pixel_values"][0].astype(np.float32)
