"""The Embedder protocol every backend implements, and the shared torch plumbing."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    import torch
    from PIL import Image

from searchlite.models.precision import resolve_device  # noqa: F401 - re-exported: precision decides

log = logging.getLogger(__name__)

#: The architecture family: a key of zoo.json "families" (siglip, siglip2, clip, align, chinese_clip, ...).
Family = str

@dataclass(frozen=True)
class ScoreParams:
    """How the model turns a cosine similarity into a logit: ``logit = scale * cos + bias``.

    SigLIP: ``scale = exp(logit_scale)``, ``bias = logit_bias`` (the model's own sigmoid logit).
    CLIP: ``scale = exp(logit_scale)``, ``bias = 0``. ALIGN: ``scale = 1 / temperature``, ``bias = 0``.
    """

    scale: float
    bias: float = 0.0

    def logits(self, cos: np.ndarray | float) -> np.ndarray | float:
        """Model-scaled logits for cosine similarities."""
        return self.scale * cos + self.bias


@runtime_checkable
class Embedder(Protocol):
    """What the indexer, the query engine and the benchmarks need from a model."""

    model_id: str
    family: Family
    template: str
    score: ScoreParams
    image_size: tuple[int, int]
    preprocess_config: dict[str, Any]

    @property
    def dim(self) -> int: ...

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """One RGB PIL image -> float32 CHW model input (thread-safe, no torch state)."""

    def preprocessor(self) -> Callable[[Image.Image], np.ndarray]:
        """``preprocess`` as a picklable callable that does not carry the model (for other processes)."""

    def embed_pixels(self, pixels: Any) -> np.ndarray:
        """Stacked model inputs (n, C, H, W), or a dict of such batches (NaFlex) -> float32 (n, d), L2-normalised."""

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB PIL images -> float32 (n, d), L2-normalised."""

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts (already templated) -> float32 (n, d), L2-normalised."""


#: One model input: a float32 CHW array, or (NaFlex) a dict of fixed-shape arrays.
ModelInputs = Any


def stack_inputs(items: Sequence[ModelInputs]) -> ModelInputs:
    """Stack per-image model inputs into a batch (the one helper both engines use): arrays are
    stacked; dicts of arrays (NaFlex patches + mask + shapes) are stacked key by key."""
    if items and isinstance(items[0], dict):
        return {key: np.stack([item[key] for item in items]) for key in items[0]}
    return np.stack(items)


def batch_len(batch: ModelInputs) -> int:
    """The number of images in a stacked batch."""
    return len(next(iter(batch.values()))) if isinstance(batch, dict) else len(batch)


@dataclass(frozen=True)
class InputSize:
    """The size a model resizes an image to, as the JPEG draft target (never decode below it).

    Fixed-size models: ``(width, height)``. SigLIP 2 NaFlex keeps the aspect ratio with at most
    ``max_patches`` patches of ``patch`` pixels, so its target depends on the image's own size."""

    width: int
    height: int
    patch: int = 0
    max_patches: int = 0

    def for_image(self, width: int, height: int) -> tuple[int, int]:
        """The (width, height) this model resizes a ``width`` x ``height`` image to."""
        if not self.max_patches:
            return self.width, self.height
        from transformers.models.siglip2.image_processing_siglip2 import get_image_size_for_max_num_patches

        h, w = get_image_size_for_max_num_patches(height, width, self.patch, self.max_patches)
        return int(w), int(h)


@dataclass(frozen=True)
class DraftTarget:
    """The draft target of several models at once (picklable, for decode tasks in other processes):
    for an image of a given size, the largest input any of them needs."""

    sizes: tuple[InputSize, ...]

    def __call__(self, width: int, height: int) -> tuple[int, int]:
        wanted = [s.for_image(width, height) for s in self.sizes]
        return max(w for w, _ in wanted), max(h for _, h in wanted)


def input_size_of(embedder: Any) -> InputSize:
    """An embedder's :class:`InputSize` (its ``input_size``, else its fixed ``image_size``)."""
    size = getattr(embedder, "input_size", None)
    return size if isinstance(size, InputSize) else InputSize(*embedder.image_size)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float32 (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


@dataclass
class TorchEmbedder:
    """Shared device, batching and precision handling for torch backends.

    Subclasses set the model fields and implement ``_image_features`` and ``_text_features``
    returning unnormalised torch tensors.
    """

    model_id: str
    family: Family
    template: str
    score: ScoreParams
    image_size: tuple[int, int]
    preprocess_config: dict[str, Any]
    device: str = "cpu"
    batch_size: int = 32
    precision: str = "auto"  # after searchlite.models.precision.configure: fp32 | bf16 | fp16
    precision_note: str = ""  # why this precision (validation figures, or why it fell back to fp32)
    precision_check: dict[str, Any] = field(default_factory=dict, repr=False)
    _dim: int | None = field(default=None, repr=False)

    # -- hooks -----------------------------------------------------------------------------
    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _text_features(self, texts: list[str]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def preprocess(self, image: Image.Image) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self.embed_texts([""]).shape[1])
        return self._dim

    def _autocast(self):
        """bf16/fp16 autocast for a reduced precision (see :mod:`searchlite.models.precision`);
        a no-op in fp32, the exact fp32 path."""
        from searchlite.models.precision import autocast

        return autocast(self.device, self.precision)

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        import torch

        # floats go in as float32; integer inputs (NaFlex masks and shapes) keep their dtype
        dtype = np.int64 if np.issubdtype(np.asarray(array).dtype, np.integer) else np.float32
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=dtype))
        if self.device.startswith("cuda"):
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def embed_pixels(self, pixels: ModelInputs) -> np.ndarray:
        """Stacked model inputs -> float32 (n, d), L2-normalised. ``pixels`` is one (n, C, H, W)
        array, or a dict of arrays with a leading batch axis (SigLIP 2 NaFlex: ``pixel_values``,
        ``pixel_attention_mask``, ``spatial_shapes``), as :func:`stack_inputs` makes them."""
        import torch

        out = []
        n = batch_len(pixels)
        with torch.inference_mode(), self._autocast():
            for start in range(0, n, self.batch_size):
                part = slice(start, start + self.batch_size)
                if isinstance(pixels, dict):
                    feats = self._image_features({k: self._to_device(v[part]) for k, v in pixels.items()})
                else:
                    feats = self._image_features(self._to_device(pixels[part]))
                out.append(feats.float().cpu().numpy())
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return l2_normalize(np.concatenate(out))

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.embed_pixels(stack_inputs([self.preprocess(im) for im in images]))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        texts = list(texts)
        out = []
        with torch.inference_mode(), self._autocast():
            for start in range(0, len(texts), self.batch_size):
                out.append(self._text_features(texts[start : start + self.batch_size]).float().cpu().numpy())
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return l2_normalize(np.concatenate(out))
