"""The light text path: a model's text tower as an ONNX graph run by onnxruntime, its tokenizer as a
`tokenizers` JSON. Imports neither torch nor transformers, so a one-shot `searchlite search` starts
in a fraction of a second.

An export folder (written by :mod:`searchlite.models.export`, which validates it against the
torch path) holds ``text.onnx`` (its weights in ``text.onnx.data``), ``tokenizer.json`` (padding and truncation included) and
``meta.json``: the inputs the tower takes, the text cleaning open_clip applies before tokenizing
(none for Hugging Face checkpoints), and the validation figures. Only a folder whose meta says
``valid`` is used; anything missing or unreadable falls back to the torch path.
"""

from __future__ import annotations

import html
import json
import logging
import re
import string
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

EXPORT_VERSION = 1
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def clean_text(text: str, mode: str | None) -> str:
    """open_clip's text cleaning before its tokenizer (``basic_clean`` + the configured step):
    ftfy + HTML unescape, collapsed whitespace, then lower-casing or canonicalisation."""
    if not mode:
        return text
    import ftfy

    text = ftfy.fix_text(html.unescape(html.unescape(text))).strip()
    if mode == "canonicalize":
        text = re.sub(r"\s+", " ", text.lower().translate(_PUNCTUATION)).strip()
    else:
        text = re.sub(r"\s+", " ", text).strip()
        if mode == "lower":
            text = text.lower()
    return text


def read_meta(folder: Path) -> dict | None:
    """The export's meta.json when it is a complete, validated export of this format version."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("version") != EXPORT_VERSION or not meta.get("valid"):
        return None
    if not (folder / "text.onnx").is_file() or not (folder / "tokenizer.json").is_file():
        return None
    return meta


class OnnxTextEncoder:
    """``embed_texts`` of a model from its validated ONNX export (CPU, or CUDA when onnxruntime has it)."""

    def __init__(self, folder: Path, meta: dict, threads: int | None = None) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.meta = meta
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        # the saved graph is already optimised at export: skip the optimisation pass at load
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(str(folder / "text.onnx"), options, providers=providers)
        self.inputs = list(meta["inputs"])

    def tokenize(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        encodings = self.tokenizer.encode_batch([clean_text(t, self.meta.get("clean")) for t in texts])
        feeds = {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64)}
        if "attention_mask" in self.inputs:
            feeds["attention_mask"] = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        if "token_type_ids" in self.inputs:
            feeds["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
        return feeds

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts (already templated) -> float32 (n, d), L2-normalised."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.meta["dim"]), dtype=np.float32)
        out = []
        for start in range(0, len(texts), 64):
            out.append(self.session.run(None, self.tokenize(texts[start:start + 64]))[0])
        x = np.concatenate(out).astype(np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def load_light_encoder(folder: Path) -> OnnxTextEncoder | None:
    """The light encoder of an export folder, or None (no valid export, or onnxruntime missing)."""
    meta = read_meta(folder)
    if meta is None:
        return None
    try:
        return OnnxTextEncoder(folder, meta)
    except Exception as exc:  # noqa: BLE001 - any failure means: use the torch path
        log.warning("the text export in %s cannot be used (%s); using the torch model", folder, exc)
        return None
