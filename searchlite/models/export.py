"""Exporting a model's text tower for the light query path (see :mod:`searchlite.models.light`).

The export is validated before it is used: on a fixed probe set its token ids must equal the torch
path's exactly, and its embeddings must match within 1e-5 (cosine >= 0.99999). An export that
fails is written with ``valid: false`` (and why), and queries keep using the torch model.
The folder is written under a temporary name and renamed, so readers see a whole export or none.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from searchlite.models.light import EXPORT_VERSION, OnnxTextEncoder

log = logging.getLogger(__name__)

#: Probe texts: case, punctuation, unicode, HTML entities, emoji, spacing, empty, and longer than any context.
PROBES = [
    "", "a photo of a cat", "This is a photo of two dogs in the snow.", "A RED car -- on the BEACH!!",
    "naïve café, Zürich, 東京の夜景", "t-shirt & jeans, 50% off", "emoji 🐶🏖️ and ☃", "   spaces    around   ",
    "punctuation: (a), [b]; {c}... 'quoted' \"double\"", "HTML &amp; entities &lt;b&gt;", "a photo of a " + "very " * 60 + "long dog",
    "1 2 3 numbers 2023-07-01", "UPPER lower MiXeD", "tab\tand\nnewline",
]
MAX_ABS = 1e-5
MIN_COS = 0.99999


def _hf_tokenizer_json(tok: Any, kwargs: dict) -> Any:
    """A `tokenizers` Tokenizer equivalent to a transformers tokenizer called with ``kwargs``."""
    from tokenizers import Regex, Tokenizer, normalizers

    if getattr(tok, "backend_tokenizer", None) is not None:
        fast = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    else:  # a SentencePiece tokenizer (SigLIP): convert, with SigLIP's canonicalisation in front
        fast = _sentencepiece_converter()(tok).converted()
        steps = [normalizers.Lowercase()] if getattr(tok, "do_lower_case", False) else []
        steps += [normalizers.Replace(Regex(r"[!-/:-@\[-`{-~]"), ""), normalizers.Replace(Regex(r"\s+"), " "),
                  normalizers.Strip()]
        if fast.normalizer is not None:
            steps.append(fast.normalizer)
        fast.normalizer = normalizers.Sequence(steps)
    fast.no_padding()
    fast.no_truncation()
    if kwargs.get("truncation"):
        fast.enable_truncation(int(kwargs["max_length"]))
    if kwargs.get("padding") == "max_length":
        fast.enable_padding(length=int(kwargs["max_length"]), pad_id=tok.pad_token_id, pad_token=tok.pad_token)
    elif kwargs.get("padding"):
        fast.enable_padding(pad_id=tok.pad_token_id, pad_token=tok.pad_token)
    return fast


def _sentencepiece_converter() -> type:
    """transformers' SentencePiece converter, ending each text with the tokenizer's EOS (SigLIP)."""
    from tokenizers import processors
    from transformers.convert_slow_tokenizer import SpmConverter

    class EosConverter(SpmConverter):
        def tokenizer(self, proto):  # noqa: ANN202 - transformers' hook
            if proto.trainer_spec.model_type != 2:
                return super().tokenizer(proto)
            # BPE SentencePiece models: transformers 5's converter calls its extractor with the wrong
            # arguments, so build the BPE model from the extractor directly (the id check validates it)
            from tokenizers import AddedToken, Tokenizer
            from tokenizers.models import BPE
            from transformers.convert_slow_tokenizer import SentencePieceExtractor

            tables = SentencePieceExtractor(self.original_tokenizer.vocab_file).extract(BPE)
            fast = Tokenizer(BPE(tables["vocab"], tables["merges"], unk_token=proto.trainer_spec.unk_piece,
                                 fuse_unk=True, byte_fallback=self.handle_byte_fallback, dropout=None))
            fast.add_tokens([AddedToken(p.piece, normalized=False, special=p.type == 3)
                             for p in proto.pieces if p.type in (3, 4)])
            return fast

        def post_processor(self):  # noqa: ANN202 - transformers' hook
            eos = self.original_tokenizer.eos_token
            eos_id = self.original_tokenizer.convert_tokens_to_ids(eos)
            return processors.TemplateProcessing(single=["$A", eos], pair=["$A", eos, "$B", eos],
                                                 special_tokens=[(eos, eos_id)])

    return EosConverter


def _openclip_tokenizer_json(tok: Any) -> tuple[Any, str | None]:
    """A `tokenizers` Tokenizer (and the cleaning mode) equivalent to an open_clip tokenizer."""
    import open_clip.tokenizer as oc_tok

    ctx = int(tok.context_length)
    if isinstance(tok, oc_tok.HFTokenizer):
        clean = next((name for name in ("canonicalize", "lower", "whitespace")
                      if tok.clean_fn is oc_tok.get_clean_fn(name)), None)
        kwargs = {"padding": "max_length", "max_length": ctx, "truncation": True}
        return _hf_tokenizer_json(tok.tokenizer, kwargs), clean
    from tokenizers import Tokenizer
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:  # open_clip's BPE tables as a CLIP vocab.json + merges.txt
        vocab = Path(tmp) / "vocab.json"
        merges = Path(tmp) / "merges.txt"
        vocab.write_text(json.dumps(tok.encoder))
        ranked = sorted(tok.bpe_ranks.items(), key=lambda kv: kv[1])
        merges.write_text("#version: 0.2\n" + "\n".join(" ".join(pair) for pair, _ in ranked) + "\n")
        sot, eot = tok.decoder[tok.sot_token_id], tok.decoder[tok.eot_token_id]
        hf = CLIPTokenizer(vocab=str(vocab), merges=str(merges), bos_token=sot, eos_token=eot, unk_token=eot,
                           pad_token=eot)
        fast = Tokenizer.from_str(hf.backend_tokenizer.to_str())
    fast.enable_truncation(ctx)
    fast.enable_padding(length=ctx, pad_id=0, pad_token="!")
    return fast, "lower"


def _torch_ids(embedder: Any, texts: list[str]) -> np.ndarray:
    if hasattr(embedder, "text_kwargs"):
        return embedder.tokenizer(texts, return_tensors="np", **embedder.text_kwargs)["input_ids"]
    return embedder.tokenizer(texts).numpy()


def _input_names(embedder: Any) -> list[str]:
    if hasattr(embedder, "text_kwargs"):  # exactly what the checkpoint's tokenizer emits
        return list(embedder.tokenizer(["a"], return_tensors="np", **embedder.text_kwargs).keys())
    return ["input_ids"]


def _export_onnx(embedder: Any, names: list[str], sample: dict[str, np.ndarray], path: Path) -> None:
    import torch

    class TextTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = embedder.model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            if not hasattr(embedder, "text_kwargs"):
                return self.model.encode_text(inputs[0])
            out = self.model.get_text_features(**dict(zip(names, inputs)))
            return getattr(out, "pooler_output", out)

    tower = TextTower().eval()
    args = tuple(torch.from_numpy(sample[n]) for n in names)
    axes = {n: {0: "batch", 1: "tokens"} for n in names}
    import warnings

    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused attention kernel has no ONNX form
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on shape-dependent branches
            torch.onnx.export(tower, args, str(path), input_names=names, output_names=["features"],
                              dynamic_axes={**axes, "features": {0: "batch"}}, opset_version=17, dynamo=False)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _optimise(raw: Path, out: Path) -> None:
    """Save the graph onnxruntime optimises at load, so a query's session skips that pass, with the
    weights beside it in ``text.onnx.data``: onnxruntime maps that file instead of parsing the
    weights out of the protobuf (a siglip-base tower's session: 0.16 s instead of 0.35-0.77 s)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(out)
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", out.name + ".data")
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(raw), options, providers=["CPUExecutionProvider"])


def export_text_tower(embedder: Any, folder: Path) -> dict:
    """Export and validate ``embedder``'s text tower into ``folder``; returns its meta."""
    start = time.perf_counter()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=folder.name + ".tmp-"))
    meta: dict[str, Any] = {"version": EXPORT_VERSION, "model_id": embedder.model_id, "dim": embedder.dim,
                            "valid": False}
    try:
        if hasattr(embedder, "text_kwargs"):
            tokenizer, clean = _hf_tokenizer_json(embedder.tokenizer, embedder.text_kwargs), None
        else:
            tokenizer, clean = _openclip_tokenizer_json(embedder.tokenizer)
        tokenizer.save(str(tmp / "tokenizer.json"))
        names = _input_names(embedder)
        meta.update(inputs=names, clean=clean)
        light_ids = np.array([e.ids for e in tokenizer.encode_batch([_clean(t, clean) for t in PROBES])])
        torch_ids = _torch_ids(embedder, PROBES)
        if light_ids.shape != torch_ids.shape or not np.array_equal(light_ids, torch_ids):
            meta["reason"] = "the exported tokenizer does not reproduce the model's token ids"
        else:
            sample = {n: v for n, v in _tokenize_probes(tmp, names, clean).items()}
            _export_onnx(embedder, names, sample, tmp / "raw.onnx")
            _optimise(tmp / "raw.onnx", tmp / "text.onnx")
            (tmp / "raw.onnx").unlink()
            light = OnnxTextEncoder(tmp, {**meta, "valid": True}).embed_texts(PROBES)
            from searchlite.models.precision import full_precision

            with full_precision(embedder):  # the export is fp32: check it against torch's fp32
                reference = embedder.embed_texts(PROBES)
            max_abs = float(np.abs(light - reference).max())
            min_cos = float((light * reference).sum(axis=1).min())
            meta.update(max_abs_diff=max_abs, min_cosine=min_cos, valid=max_abs <= MAX_ABS and min_cos >= MIN_COS)
            if not meta["valid"]:
                meta["reason"] = f"ONNX embeddings differ from torch's (max |d| {max_abs:.2e}, min cos {min_cos:.7f})"
    except Exception as exc:  # noqa: BLE001 - an export that cannot be made leaves the torch path
        meta["reason"] = f"export failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    meta["seconds"] = round(time.perf_counter() - start, 2)
    if not meta["valid"]:
        for name in ("text.onnx", "text.onnx.data", "tokenizer.json", "raw.onnx"):
            (tmp / name).unlink(missing_ok=True)
        log.warning("text tower of %s not exported for the light query path: %s", embedder.model_id, meta["reason"])
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return meta


def _clean(text: str, mode: str | None) -> str:
    from searchlite.models.light import clean_text

    return clean_text(text, mode)


def _tokenize_probes(folder: Path, names: list[str], clean: str | None) -> dict[str, np.ndarray]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    encodings = tokenizer.encode_batch([_clean(t, clean) for t in PROBES[:2]])
    values = {"input_ids": [e.ids for e in encodings], "attention_mask": [e.attention_mask for e in encodings],
              "token_type_ids": [e.type_ids for e in encodings]}
    return {n: np.array(values[n], dtype=np.int64) for n in names}
