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
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: 2: CJK / special-token probes and the recorded text preparation. Version-1 exports stay usable
#: (they were validated, and prepare nothing); the next index run re-exports them.
EXPORT_VERSION = 2
READABLE_VERSIONS = (1, 2)
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def clean_text(text: str, mode: str | None) -> str:
    """open_clip's text cleaning before its tokenizer, step for step as ``open_clip.tokenizer`` does
    it (``basic_clean``: ftfy, then HTML unescaped twice, stripped; then ``whitespace_clean``,
    ``whitespace_clean`` + lower-casing, or ``canonicalize_text``: "_" to space, punctuation
    removed, lower-cased, whitespace collapsed)."""
    if not mode:
        return text
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    if mode == "canonicalize":
        return " ".join(text.replace("_", " ").translate(_PUNCTUATION).lower().split()).strip()
    text = " ".join(text.split()).strip()
    return text.lower() if mode == "lower" else text


def prepare_text(text: str, rules: dict | None) -> str:
    """The text step before a Hugging Face tokenizer that the checkpoint's files do not say (the
    zoo's text rules, recorded in the export): lowercasing for models trained on lowercased text."""
    return text.lower() if rules and rules.get("lower") else text


class _Encoding:
    """What ``tokenizers`` returns per text (ids, mask, type ids), for :class:`SlowSentencePiece`."""

    def __init__(self, ids: list[int], mask: list[int]) -> None:
        self.ids, self.attention_mask, self.type_ids = ids, mask, [0] * len(ids)


class SlowSentencePiece:
    """transformers' SentencePiece SigLIP tokenizer (``SiglipTokenizer``, a "slow" one) step for step,
    on the same ``sentencepiece`` model, without transformers: the text is split on the tokenizer's
    added tokens (``</s>``, ``<unk>`` in the text are those tokens), each other piece is canonicalised
    (lowercased, punctuation removed, whitespace collapsed) and encoded behind the unk token (its
    "no dummy prefix" trick), EOS appended, then truncated and padded as the model's call does. A
    ``tokenizers`` conversion cannot split the text the same way; this mirrors it exactly (the export's
    probes check every id)."""

    def __init__(self, folder: Path, config: dict) -> None:
        import sentencepiece as spm

        self.config = config
        self.sp = spm.SentencePieceProcessor(model_file=str(folder / "spiece.model"))
        self.specials = dict(config["specials"])  # added token text -> id
        self.unk_length = len(self.sp.encode(config["unk"], out_type=str))

    def _canonical(self, text: str) -> str:
        if self.config.get("lower"):
            text = text.lower()
        return re.sub(r"\s+", " ", text.translate(_PUNCTUATION)).strip()

    def _split(self, text: str) -> list[tuple[str, bool]]:
        """The text cut at every added token (longest first, left to right), as the slow tokenizer's trie does."""
        if not self.specials:
            return [(text, False)]
        pattern = "(" + "|".join(re.escape(t) for t in sorted(self.specials, key=len, reverse=True)) + ")"
        return [(part, i % 2 == 1) for i, part in enumerate(re.split(pattern, text)) if part]

    def ids(self, text: str) -> list[int]:
        pieces: list[str] = []
        for part, special in self._split("\u2581" + text.replace("\u2581", " ")):
            if special:
                pieces.append(part)
                continue
            tokens = self.sp.encode(self.config["unk"] + self._canonical(part), out_type=str)
            pieces += tokens[self.unk_length:] if len(tokens) >= self.unk_length else tokens
        if len(pieces) > 1 and pieces[0] == "\u2581" and pieces[1] in self.specials:
            pieces = pieces[1:]
        ids = [self.specials[p] if p in self.specials else self.sp.piece_to_id(p) for p in pieces]
        eos = self.config["eos_id"]
        max_length = self.config.get("max_length")
        if self.config.get("truncation") and max_length and len(ids) + (not ids or ids[-1] != eos) > max_length:
            ids = ids[: max_length - 1]
        if not ids or ids[-1] != eos:
            ids = ids + [eos]
        return ids

    def encode_batch(self, texts: Sequence[str]) -> list[_Encoding]:
        batch = [self.ids(t) for t in texts]
        padding, max_length = self.config.get("padding"), self.config.get("max_length")
        width = max_length if padding == "max_length" else max((len(i) for i in batch), default=0) if padding else 0
        out = []
        for ids in batch:
            pad = max(0, width - len(ids))
            out.append(_Encoding(ids + [self.config["pad_id"]] * pad, [1] * len(ids) + [0] * pad))
        return out

    def save(self, path: str) -> None:
        """Write the config beside the copied ``spiece.model`` (the export's tokenizer file)."""
        Path(path).write_text(json.dumps({"searchlite_slow_sentencepiece": self.config}))


def load_tokenizer(folder: Path):  # noqa: ANN201 - a tokenizers.Tokenizer or a SlowSentencePiece
    """The export's tokenizer: a ``tokenizers`` JSON, or the slow SentencePiece mirror it names."""
    from tokenizers import Tokenizer

    text = (folder / "tokenizer.json").read_text()
    if text.startswith('{"searchlite_slow_sentencepiece"'):
        return SlowSentencePiece(folder, json.loads(text)["searchlite_slow_sentencepiece"])
    return Tokenizer.from_str(text)


def _query_error(message: str) -> Exception:
    from searchlite.errors import QueryError

    return QueryError(message)


def read_meta(folder: Path) -> dict | None:
    """The export's meta.json when it is a complete, validated export of this format version."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("version") not in READABLE_VERSIONS or not meta.get("valid"):
        return None
    if not (folder / "text.onnx").is_file() or not (folder / "tokenizer.json").is_file():
        return None
    return meta


class OnnxTextEncoder:
    """``embed_texts`` of a model from its validated ONNX export (CPU, or CUDA when onnxruntime has it)."""

    def __init__(self, folder: Path, meta: dict, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.meta = meta
        self.tokenizer = load_tokenizer(folder)
        pad = meta.get("pad")  # Immich's layout: padding and truncation are the reader's (see models.immich)
        if pad:
            self.tokenizer.enable_padding(length=pad["length"], pad_token=pad["token"],
                                          pad_id=self.tokenizer.token_to_id(pad["token"]))
            self.tokenizer.enable_truncation(max_length=pad["length"])
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if "onnx" not in meta:  # our export is optimised when saved: skip the optimisation pass at load
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(str(folder / meta.get("onnx", "text.onnx")), options, providers=providers)
        self.inputs = list(meta["inputs"])
        #: the graph's own input names (Immich's: "text") and id dtype (Immich's: int32)
        self.feed_names = dict(meta.get("feeds") or {})
        self.id_dtype = np.int32 if meta.get("int32") else np.int64
        #: nllb: the FLORES-200 code put in front of the text when none is asked for (None: takes none)
        self.default_lang: str | None = (meta.get("lang") or {}).get("default")
        self._lang: str | None = self.default_lang
        self._lang_lock = threading.Lock()

    def _set_lang(self, lang: str | None) -> None:
        """Point the tokenizer's template at a language code (nllb's ``src_lang`` prefix token)."""
        spec = self.meta.get("lang") or {}
        if not spec:
            if lang:
                raise _query_error(f"{self.meta.get('model_id')} takes no language code (got {lang!r})")
            return
        lang = lang or self.default_lang
        if lang not in spec["codes"]:
            raise _query_error(f"unknown language code {lang!r} for {self.meta.get('model_id')} (FLORES-200 "
                               "codes, e.g. eng_Latn, zho_Hans, jpn_Jpan)")
        if lang != self._lang:
            from tokenizers import processors

            single = [lang if t == "{lang}" else t for t in spec["single"]]
            specials = {t: spec["special_ids"].get(t, spec["codes"].get(t)) for t in single if t != "$A"}
            self.tokenizer.post_processor = processors.TemplateProcessing(
                single=single, special_tokens=list(specials.items()))
            self._lang = lang

    def tokenize(self, texts: Sequence[str], lang: str | None = None) -> dict[str, np.ndarray]:
        with self._lang_lock:  # the tokenizer's language is state: one caller at a time
            self._set_lang(lang)
            return self._tokenize(texts)

    def _tokenize(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        encodings = self.tokenizer.encode_batch([prepare_text(clean_text(t, self.meta.get("clean")),
                                                              self.meta.get("prepare")) for t in texts])
        feeds = {"input_ids": np.array([e.ids for e in encodings], dtype=self.id_dtype)}
        if "attention_mask" in self.inputs:
            feeds["attention_mask"] = np.array([e.attention_mask for e in encodings], dtype=self.id_dtype)
        if "token_type_ids" in self.inputs:
            feeds["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=self.id_dtype)
        return {self.feed_names.get(k, k): v for k, v in feeds.items()}

    def embed_texts(self, texts: Sequence[str], lang: str | None = None) -> np.ndarray:
        """Texts (already templated) -> float32 (n, d), L2-normalised; ``lang``: nllb's language code."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.meta["dim"]), dtype=np.float32)
        out = []
        for start in range(0, len(texts), 64):
            out.append(self.session.run(None, self.tokenize(texts[start:start + 64], lang))[0])
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
