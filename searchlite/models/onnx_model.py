"""The ``onnx`` engine: a model's two towers as ONNX graphs run by onnxruntime, its preprocessing as
a recorded recipe (:mod:`searchlite.models.pixels`). Imports neither torch nor transformers.

A searchlite ONNX model folder (written and validated by :mod:`searchlite.models.onnx_export`):

- ``model.json``: what the torch embedder knew (model id, family, template, score, probability
  rule, image size, preprocessing recipe, dim) and the export's validation figures;
- ``visual.onnx`` (+ ``visual.onnx.data``): the image tower, input ``pixel_values`` (n, 3, H, W),
  output ``features`` (n, d), unnormalised;
- ``text/``: the text tower export of :mod:`searchlite.models.light` (the light query path).

Only a folder whose ``model.json`` says ``valid`` is used.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from searchlite.models.base import InputSize, ScoreParams, batch_len, l2_normalize, stack_inputs
from searchlite.models.pixels import PixelRecipe

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

FORMAT = "searchlite-onnx"
VERSION = 1
META = "model.json"


def read_model_meta(folder: Path) -> dict | None:
    """The folder's model.json when it is a complete, validated export of this format."""
    try:
        meta = json.loads((Path(folder) / META).read_text())
    except (OSError, ValueError):
        return None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION or not meta.get("valid"):
        return None
    if not (Path(folder) / "visual.onnx").is_file():
        return None
    return meta


def session(path: Path, threads: int | None = None, optimised: bool = True) -> Any:
    """An onnxruntime session on CPU (or CUDA when this onnxruntime has it)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    if optimised:  # the saved graph is optimised at export: skip the pass at load
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    return ort.InferenceSession(str(path), options, providers=providers)


class OnnxEmbedder:
    """An :class:`~searchlite.models.base.Embedder` on onnxruntime, from a validated ONNX model folder."""

    runtime = "onnx"

    def __init__(self, folder: Path, meta: dict | None = None, batch_size: int = 32, threads: int | None = None,
                 visual: Path | None = None, text: tuple[Path, dict] | None = None) -> None:
        """``visual`` / ``text`` (folder, meta): towers elsewhere than this layout's (Immich's layout)."""
        from searchlite.errors import ModelLoadError
        from searchlite.models.light import OnnxTextEncoder, read_meta

        self.folder = Path(folder)
        meta = meta if meta is not None else read_model_meta(self.folder)
        if meta is None:
            raise ModelLoadError(f"{folder} holds no valid searchlite ONNX model (model.json)")
        self.meta = meta
        self.model_id: str = meta["model_id"]
        self.family: str = meta["family"]
        self.template: str = meta["template"]
        self.score = ScoreParams(float(meta["score"]["scale"]), float(meta["score"]["bias"]))
        self.probability: str = meta.get("probability", "platt")
        if meta.get("center") is not None:
            self.center = meta["center"]
        self.input_size = InputSize(*meta["input_size"])
        self.image_size: tuple[int, int] = (self.input_size.width, self.input_size.height)
        self.preprocess_config: dict[str, Any] = meta.get("preprocess_config", {})
        self.recipe = PixelRecipe.from_list(meta["preprocess"])
        self.batch_size = batch_size
        self.device = "cpu"
        self.precision = "fp32"
        self.precision_note = "fp32 (onnx)"
        self.precision_check: dict[str, Any] = {}
        self._dim = int(meta["dim"])
        self.visual_path = visual or self.folder / "visual.onnx"
        self.visual = session(self.visual_path, threads, optimised=visual is None)
        self.visual_input = self.visual.get_inputs()[0].name
        text_folder, text_meta = text if text is not None else (self.folder / "text", read_meta(self.folder / "text"))
        if text_meta is None:
            raise ModelLoadError(f"{folder} has no valid text tower export (text/meta.json)")
        self.text = OnnxTextEncoder(text_folder, text_meta, threads)
        self.default_lang = self.text.default_lang

    @property
    def dim(self) -> int:
        return self._dim

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return self.recipe(image)

    def preprocessor(self) -> PixelRecipe:
        return self.recipe

    def embed_pixels(self, pixels: Any) -> np.ndarray:
        n = batch_len(pixels)
        if not n:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = [self.visual.run(None, {self.visual_input: np.ascontiguousarray(pixels[s:s + self.batch_size],
                                                                              dtype=np.float32)})[0]
               for s in range(0, n, self.batch_size)]
        return l2_normalize(np.concatenate(out))

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.embed_pixels(stack_inputs([self.preprocess(im) for im in images]))

    def embed_texts(self, texts: Sequence[str], lang: str | None = None) -> np.ndarray:
        return self.text.embed_texts(texts, lang)

    def language_codes(self) -> list[str]:
        return sorted((self.text.meta.get("lang") or {}).get("codes", {}))
