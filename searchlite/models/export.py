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
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from searchlite.models.light import EXPORT_VERSION, OnnxTextEncoder, prepare_text
from searchlite.models.precision import PROBES, full_precision

log = logging.getLogger(__name__)

MAX_ABS = 1e-5
MIN_COS = 0.99999


def _hf_tokenizer_json(tok: Any, kwargs: dict, folder: Path | None = None) -> Any:
    """A `tokenizers` Tokenizer equivalent to a transformers tokenizer called with ``kwargs``."""
    from tokenizers import Regex, Tokenizer, normalizers

    if getattr(tok, "backend_tokenizer", None) is not None:
        fast = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    elif folder is not None and hasattr(tok, "sp_model") and getattr(tok, "vocab_file", None):
        # a slow SentencePiece SigLIP tokenizer: mirrored step for step on its own sentencepiece model
        from searchlite.models.light import SlowSentencePiece

        shutil.copyfile(tok.vocab_file, folder / "spiece.model")
        config = {"specials": {str(t): int(i) for i, t in tok.added_tokens_decoder.items()}, "unk": str(tok.unk_token),
                  "eos_id": int(tok.eos_token_id), "pad_id": int(tok.pad_token_id),
                  "lower": bool(getattr(tok, "do_lower_case", False)), "padding": kwargs.get("padding"),
                  "max_length": kwargs.get("max_length"), "truncation": bool(kwargs.get("truncation"))}
        return SlowSentencePiece(folder, config)
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
    max_length = int(kwargs.get("max_length") or min(getattr(tok, "model_max_length", 512), 4096))
    side = getattr(tok, "padding_side", "right")  # Gemma / SigLIP 2 tokenizers pad on the left
    if kwargs.get("truncation"):
        fast.enable_truncation(max_length, direction=getattr(tok, "truncation_side", "right"))
    if kwargs.get("padding") == "max_length":
        fast.enable_padding(length=max_length, pad_id=tok.pad_token_id, pad_token=tok.pad_token, direction=side)
    elif kwargs.get("padding"):
        fast.enable_padding(pad_id=tok.pad_token_id, pad_token=tok.pad_token, direction=side)
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


def _openclip_lang_meta(embedder: Any) -> dict | None:
    """nllb: how the reference tokenizer puts a language in front of the text (its template after
    ``set_language``, the code's place marked ``{lang}``) and every code it knows, for the light path."""
    default = getattr(embedder, "default_lang", None)
    if not default:
        return None
    inner = embedder.tokenizer.tokenizer
    embedder.tokenize(["a"])  # sets the default language on the shared tokenizer
    code_id = inner.convert_tokens_to_ids(default)

    def tokens(ids: list[int]) -> list[str]:
        return ["{lang}" if i == code_id else inner.convert_ids_to_tokens(i) for i in ids]

    prefix, suffix = tokens(list(inner.prefix_tokens)), tokens(list(inner.suffix_tokens))
    return {"default": default, "codes": {c: inner.convert_tokens_to_ids(c) for c in embedder.language_codes()},
            "single": [*prefix, "$A", *suffix],
            "special_ids": {t: inner.convert_tokens_to_ids(t) for t in prefix + suffix if t != "{lang}"}}


#: Languages checked on top of the default one when a model takes a language code.
CHECKED_LANGS = ("zho_Hans", "jpn_Jpan", "fra_Latn")


def _check_languages(embedder: Any, folder: Path, meta: dict) -> str | None:
    """For a model that takes a language code: token ids exact and embeddings within tolerance in
    other languages than the default too; the reason when not, else None."""
    light = OnnxTextEncoder(folder, {**meta, "valid": True})
    for code in [c for c in CHECKED_LANGS if c in meta["lang"]["codes"] and c != meta["lang"]["default"]]:
        ours = light.tokenize(PROBES, code)["input_ids"]
        reference = embedder.tokenize(PROBES, code).numpy()
        if ours.shape != reference.shape or not np.array_equal(ours, reference):
            return f"the exported tokenizer does not reproduce the model's token ids with language {code}"
        diff = light.embed_texts(PROBES, code) - embedder.embed_texts(PROBES, lang=code)
        if float(np.abs(diff).max()) > MAX_ABS:
            return f"ONNX embeddings differ from torch's with language {code} (max |d| {np.abs(diff).max():.2e})"
    return None


def _torch_ids(embedder: Any, texts: list[str]) -> np.ndarray:
    if hasattr(embedder, "text_kwargs"):
        return embedder.tokenize(texts, return_tensors="np")["input_ids"]
    return embedder.tokenize(texts).numpy()  # open_clip: nllb's default language set first


def _input_names(embedder: Any) -> list[str]:
    if hasattr(embedder, "text_kwargs"):  # exactly what the checkpoint's tokenizer emits
        return list(embedder.tokenize(["a"], return_tensors="np").keys())
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
            tokenizer, clean = _hf_tokenizer_json(embedder.tokenizer, embedder.text_kwargs, tmp), None
        else:
            lang = _openclip_lang_meta(embedder)  # sets the default language: the saved template's
            if lang:
                meta["lang"] = lang
            tokenizer, clean = _openclip_tokenizer_json(embedder.tokenizer)
        tokenizer.save(str(tmp / "tokenizer.json"))
        names = _input_names(embedder)
        prepare = dict(getattr(embedder, "text_rules", {}) or {})
        meta.update(inputs=names, clean=clean, prepare=prepare)
        light_ids = np.array([e.ids for e in tokenizer.encode_batch([prepare_text(_clean(t, clean), prepare)
                                                                     for t in PROBES])])
        with warnings.catch_warnings():  # transformers' notes on probes that hold literal special tokens
            warnings.simplefilter("ignore")
            torch_ids = _torch_ids(embedder, PROBES)
        if light_ids.shape != torch_ids.shape or not np.array_equal(light_ids, torch_ids):
            meta["reason"] = "the exported tokenizer does not reproduce the model's token ids"
        else:
            sample = {n: v for n, v in _tokenize_probes(tmp, names, clean, prepare).items()}
            _export_onnx(embedder, names, sample, tmp / "raw.onnx")
            _optimise(tmp / "raw.onnx", tmp / "text.onnx")
            (tmp / "raw.onnx").unlink()
            light = OnnxTextEncoder(tmp, {**meta, "valid": True}).embed_texts(PROBES)
            with full_precision(embedder), warnings.catch_warnings():  # the export is fp32: check it against torch's fp32
                warnings.simplefilter("ignore")
                reference = embedder.embed_texts(PROBES)
            max_abs = float(np.abs(light - reference).max())
            min_cos = float((light * reference).sum(axis=1).min())
            meta.update(max_abs_diff=max_abs, min_cosine=min_cos, valid=max_abs <= MAX_ABS and min_cos >= MIN_COS)
            if not meta["valid"]:
                meta["reason"] = f"ONNX embeddings differ from torch's (max |d| {max_abs:.2e}, min cos {min_cos:.7f})"
            elif meta.get("lang"):
                meta["reason"] = _check_languages(embedder, tmp, meta)
                meta["valid"] = meta["reason"] is None
    except Exception as exc:  # noqa: BLE001 - an export that cannot be made leaves the torch path
        meta["reason"] = f"export failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    meta["seconds"] = round(time.perf_counter() - start, 2)
    if not meta["valid"]:
        for name in ("text.onnx", "text.onnx.data", "tokenizer.json", "raw.onnx", "spiece.model"):
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


def _tokenize_probes(folder: Path, names: list[str], clean: str | None, prepare: dict) -> dict[str, np.ndarray]:
    from searchlite.models.light import load_tokenizer

    tokenizer = load_tokenizer(folder)
    encodings = tokenizer.encode_batch([prepare_text(_clean(t, clean), prepare) for t in PROBES[:2]])
    values = {"input_ids": [e.ids for e in encodings], "attention_mask": [e.attention_mask for e in encodings],
              "token_type_ids": [e.type_ids for e in encodings]}
    return {n: np.array(values[n], dtype=np.int64) for n in names}
