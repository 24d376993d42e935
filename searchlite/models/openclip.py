"""Every open_clip architecture (CLIP, SigLIP / SigLIP 2, MobileCLIP2, PE-Core, MetaCLIP 2
worldwide, nllb-clip), exactly as open_clip's reference computes it:
``create_model_and_transforms`` + ``get_tokenizer`` + ``encode_image`` / ``encode_text``.

What a family needs beyond that is read from the architecture's own config: the tokenizer
(open_clip's bundled CLIP BPE, or a Hugging Face tokenizer the config names), its context length
and cleaning, the image mean/std and resize mode of the pretrained tag. Two seams are ours:

- **Hub tokenizers offline.** SigLIP, worldwide and nllb configs name a hub tokenizer
  (``timm/ViT-B-16-SigLIP``). It is taken from the local cache first; when it is not there and
  the hub cannot be reached (one request, no retries), loading fails at once naming the
  tokenizer, not the weights. ``tokenizer=<folder>`` (spec ``openclip:ARCH@weights.pt?tokenizer=/dir``,
  or a zoo entry's ``text.tokenizer``) points at a local copy instead.
- **A language code** (nllb-clip): NLLB's tokenizer puts its ``src_lang`` FLORES-200 code in
  front of the text (a prefix token, which the ``cls_pooler`` tower pools at). open_clip's
  ``tokenizer.set_language(code)`` no longer does it under transformers 5 (each call resets the
  prefix to ``src_lang``, eng_Latn unless set), so we set ``src_lang`` itself: the reference is
  ``get_tokenizer(name, src_lang=code)``. ``embed_texts(texts, lang=)`` sets it per call, defaulting
  to :attr:`OpenClipEmbedder.default_lang` (the zoo entry's ``lang``, else the tokenizer's own).
  Immich instead writes the code as text in front of the query (``f"{code}{text}"``), which with
  the default template gives ``[eng_Latn, code, ...]``: not what the reference tokenizer emits.

MobileCLIP2 is not reparameterised: open_clip's reference call (``create_model_and_transforms`` +
``eval()``) does not do it, and parity is with that call.
"""

from __future__ import annotations

import copy
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from searchlite.errors import ModelLoadError, QueryError
from searchlite.models.base import ScoreParams, TorchEmbedder

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

#: Seconds the one reachability request to the hub may take before we call it offline.
HUB_PROBE_TIMEOUT = 3.0


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT) -> bool:
    """Whether the Hugging Face hub answers one request (no retries); False in offline mode."""
    from huggingface_hub import constants, get_session

    if constants.is_offline_mode():
        return False
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception:  # noqa: BLE001 - any failure to reach it means: offline
        return False
    return True


def _cached_or_fetch(kind: str, arch: str, repo: str, loader: Any) -> Any:
    """``loader(local_files_only)`` from the local cache; from the hub only when it answers."""
    try:
        return loader(True)
    except (OSError, ValueError) as exc:
        cached_error = exc
    if not hub_reachable():
        raise ModelLoadError(
            f"cannot load openclip:{arch}: its {kind} '{repo}' is not in the local Hugging Face cache and the "
            f"hub cannot be reached (offline). Connect once to download it, or point at a local copy of the "
            f"{kind} folder: --model 'openclip:{arch}@<tag or weights file>?tokenizer=/path/to/folder'"
        ) from cached_error
    try:
        return loader(False)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load the {kind} '{repo}' of openclip:{arch}: {exc}") from exc


def _builtin_config(arch: str) -> dict | None:
    """A built-in architecture's JSON config, read from open_clip's package data without importing
    it (importing open_clip imports torch: seconds before an offline load could fail)."""
    import importlib.util
    import json

    spec = importlib.util.find_spec("open_clip")
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / "model_configs" / f"{arch}.json"
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
    return None


def _hub_cached(repo: str, files: tuple[str, ...] = ("tokenizer_config.json", "tokenizer.json")) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo, name), str) for name in files)


def preflight(arch: str, tokenizer: str | None) -> None:
    """Fail in well under a second, before torch is imported, when a built-in architecture's hub
    tokenizer (or nllb's hub text config) is neither cached nor downloadable."""
    if Path(arch).expanduser().is_dir() or tokenizer:
        return
    text_cfg = (_builtin_config(arch) or {}).get("text_cfg", {})
    needs = [("tokenizer", text_cfg.get("hf_tokenizer_name"), ("tokenizer_config.json", "tokenizer.json")),
             ("text model config", text_cfg.get("hf_model_name"), ("config.json",))]
    missing = [(kind, repo) for kind, repo, files in needs if repo and not Path(repo).is_dir()
               and not _hub_cached(repo, files)]
    if missing and not hub_reachable():
        kind, repo = missing[0]
        raise ModelLoadError(
            f"cannot load openclip:{arch}: its {kind} '{repo}' is not in the local Hugging Face cache and the "
            f"hub cannot be reached (offline). Connect once to download it, or point at a local copy of the "
            f"tokenizer folder: --model 'openclip:{arch}@<tag or weights file>?tokenizer=/path/to/folder'"
        )


def _hf_tokenizer(source: str, text_cfg: dict, local_files_only: bool) -> Any:
    """open_clip's ``HFTokenizer`` built as ``get_tokenizer`` builds it, from ``source``."""
    from open_clip.tokenizer import DEFAULT_CONTEXT_LENGTH, HFTokenizer

    kwargs = dict(text_cfg.get("tokenizer_kwargs") or {})
    return HFTokenizer(source, context_length=text_cfg.get("context_length", DEFAULT_CONTEXT_LENGTH),
                       tokenizer_mode=text_cfg.get("tokenizer_mode"), local_files_only=local_files_only, **kwargs)


def _text_model_config(arch: str, text_cfg: dict) -> None:
    """nllb / xlm-roberta towers build from a hub config (``hf_model_name``): make sure it is
    loadable now (cache, or the hub if it answers), so an offline load fails fast and says why."""
    name = text_cfg.get("hf_model_name")
    if not name or Path(name).is_dir():
        return
    from transformers import AutoConfig

    _cached_or_fetch("text model config", arch, name,
                     lambda local: AutoConfig.from_pretrained(name, local_files_only=local))


def _is_folder_tokenizer(tokenizer: str | None) -> bool:
    return bool(tokenizer) and Path(tokenizer).expanduser().is_dir()


class OpenClipEmbedder(TorchEmbedder):
    """An Embedder backed by open_clip: a built-in architecture with a pretrained tag or
    checkpoint file, or a local folder holding ``open_clip_config.json``, weights and (for
    Hugging Face tokenizers) the tokenizer files."""

    def __init__(self, arch: str, pretrained: str | None, model_id: str, device: str = "cpu",
                 batch_size: int = 32, precision: str = "auto", tokenizer: str | None = None,
                 lang: str | None = None) -> None:
        preflight(arch, tokenizer)
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
        weights = Path(pretrained).expanduser() if pretrained else None
        is_file = weights is not None and weights.is_file()
        if pretrained and not is_file:
            tags = open_clip.list_pretrained_tags_by_model(arch)
            if pretrained not in tags:
                raise ModelLoadError(
                    f"'{pretrained}' is neither a checkpoint file nor a pretrained tag of {arch} "
                    f"(tags: {', '.join(tags) or 'none'})"
                )
        if tokenizer and not _is_folder_tokenizer(tokenizer) and tokenizer.startswith((".", "/", "~")):
            raise ModelLoadError(f"tokenizer folder not found: {tokenizer}")

        # the tokenizer first: cheap, and offline it is the piece that is usually missing
        model_cfg = self._model_cfg(name)
        text_cfg = model_cfg.get("text_cfg", {})
        tok = self._tokenizer(name, arch, text_cfg, tokenizer)
        overrides: dict[str, Any] = {}
        if folder.is_dir() or not text_cfg.get("hf_model_name"):
            pass
        elif _is_folder_tokenizer(tokenizer) and (Path(tokenizer).expanduser() / "config.json").is_file():
            # a local folder given for an nllb-style tower serves its model config too
            # (the full checkpoint holds the text weights: build the tower from the config only)
            overrides["text_cfg"] = {**copy.deepcopy(text_cfg), "hf_model_name": str(Path(tokenizer).expanduser()),
                                     "hf_model_pretrained": False}
        else:
            _text_model_config(arch, text_cfg)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=str(weights) if is_file else pretrained, device=device, weights_only=True,
                **overrides,
            )
        except (OSError, RuntimeError, ValueError) as exc:
            text = str(exc).lower()
            if not is_file and ("connect" in text or "offline" in text or "resolve" in text or "hub" in text):
                raise ModelLoadError(
                    f"cannot load model 'openclip:{arch}@{pretrained}': the weights are not cached and the hub "
                    "cannot be reached. Connect once to download them, or pass a local checkpoint file: "
                    f"--model openclip:{arch}@/path/to/weights.safetensors"
                ) from exc
            raise ModelLoadError(f"cannot load open_clip model {arch}: {exc}") from exc

        model.eval()
        bias = getattr(model, "logit_bias", None)
        # the family (template, languages, score kind) is the zoo's knowledge, matched by architecture
        from searchlite.models.zoo import openclip_family

        family = openclip_family(None if folder.is_dir() else arch, sigmoid=bias is not None,
                                 tokenizer=type(getattr(tok, "tokenizer", tok)).__name__)
        score = ScoreParams(scale=float(model.logit_scale.exp().item()),
                            bias=float(bias.item()) if bias is not None else 0.0)
        cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
        size = cfg.get("size", getattr(model.visual, "image_size", 224))
        size = (size, size) if isinstance(size, int) else tuple(size)
        super().__init__(
            model_id=model_id,
            family=family.name,
            template=family.templates[0],
            score=score,
            image_size=(int(size[1]), int(size[0])),
            preprocess_config=cfg,
            device=device,
            batch_size=batch_size,
            precision=precision,
        )
        #: how scores become probabilities: the model's own sigmoid (SigLIP-style, it has a
        #: logit bias) or a fitted Platt calibration (CLIP-style)
        self.probability = family.probability
        self.model = model
        self.transform = preprocess
        self.tokenizer = tok
        self._lang_lock = threading.Lock()
        codes = self.language_codes()
        self.default_lang: str | None = None
        if codes:
            default = lang or getattr(tok.tokenizer, "src_lang", None) or "eng_Latn"
            self.default_lang = self.check_lang(default)
        elif lang:
            raise ModelLoadError(f"openclip:{arch} takes no language code (got lang={lang!r})")

    # -- loading helpers -------------------------------------------------------------------------
    @staticmethod
    def _model_cfg(name: str) -> dict:
        import json

        import open_clip

        if name.startswith("local-dir:"):
            path = Path(name.removeprefix("local-dir:")) / "open_clip_config.json"
            try:
                return json.loads(path.read_text(encoding="utf-8")).get("model_cfg", {})
            except (OSError, ValueError) as exc:
                raise ModelLoadError(f"cannot read {path}: {exc}") from exc
        return open_clip.get_model_config(name) or {}

    @staticmethod
    def _tokenizer(name: str, arch: str, text_cfg: dict, override: str | None) -> Any:
        """open_clip's tokenizer for ``name`` (``get_tokenizer``), with the hub never retried."""
        import open_clip

        hub_name = text_cfg.get("hf_tokenizer_name")
        if override:
            if not hub_name:
                raise ModelLoadError(f"openclip:{arch} uses open_clip's built-in tokenizer; drop tokenizer=")
            source = str(Path(override).expanduser()) if _is_folder_tokenizer(override) else override
            return _cached_or_fetch("tokenizer", arch, source, lambda local: _hf_tokenizer(source, text_cfg, local))
        if name.startswith("local-dir:") and hub_name:
            folder = name.removeprefix("local-dir:")
            try:
                return _hf_tokenizer(folder, text_cfg, True)
            except (OSError, ValueError) as exc:
                raise ModelLoadError(
                    f"the open_clip folder {folder} names a Hugging Face tokenizer ({hub_name}) but holds no "
                    f"tokenizer files: save one there (tokenizer.save_pretrained) ({exc})"
                ) from exc
        if hub_name:
            return _cached_or_fetch("tokenizer", arch, hub_name, lambda local: _hf_tokenizer(hub_name, text_cfg, local))
        try:
            return open_clip.get_tokenizer(name)
        except Exception as exc:  # noqa: BLE001 - e.g. SigLIP's sentencepiece download
            raise ModelLoadError(f"cannot load the tokenizer of openclip:{arch}: {exc}") from exc

    # -- languages (nllb) ------------------------------------------------------------------------
    def language_codes(self) -> list[str]:
        """The language codes the tokenizer takes (FLORES-200 for nllb), or [] when it takes none."""
        inner = getattr(self.tokenizer, "tokenizer", None)
        if inner is None or not callable(getattr(inner, "set_src_lang_special_tokens", None)):
            return []
        from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES

        vocab = inner.get_vocab()
        return [code for code in FAIRSEQ_LANGUAGE_CODES if code in vocab]

    def check_lang(self, lang: str) -> str:
        """``lang`` when the tokenizer knows it, else a one-line QueryError."""
        codes = self.language_codes()
        if lang not in codes:
            sample = ", ".join(c for c in ("eng_Latn", "zho_Hans", "jpn_Jpan", "fra_Latn") if c in codes)
            raise QueryError(f"unknown language code {lang!r} for {self.model_id} (FLORES-200 codes, e.g. {sample})")
        return lang

    # -- embedding -------------------------------------------------------------------------------
    def preprocess(self, image: Image.Image) -> np.ndarray:
        return self.transform(image).numpy().astype(np.float32, copy=False)

    def preprocessor(self) -> TransformPixels:
        """``preprocess`` without the model: picklable, for decode tasks in other processes."""
        return TransformPixels(self.transform)

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def tokenize(self, texts: list[str], lang: str | None = None) -> torch.Tensor:
        """The reference tokenizer's ids; for nllb with ``lang`` (default :attr:`default_lang`) set first."""
        if self.default_lang is None:
            if lang:
                raise QueryError(f"{self.model_id} takes no language code (got {lang!r})")
            return self.tokenizer(texts)
        code = self.check_lang(lang or self.default_lang)
        with self._lang_lock:  # the tokenizer's language is state: one caller at a time
            # NLLB's own setter: open_clip's set_language() calls set_src_lang_special_tokens, which
            # transformers 5 undoes at every call (it switches back to src_lang): a silent eng_Latn
            self.tokenizer.tokenizer.src_lang = code
            return self.tokenizer(texts)

    def _text_features(self, texts: list[str], lang: str | None = None) -> torch.Tensor:
        return self.model.encode_text(self.tokenize(texts, lang).to(self.device))

    def embed_texts(self, texts, lang: str | None = None) -> np.ndarray:  # noqa: ANN001 - Sequence[str]
        """Texts (already templated) -> float32 (n, d), L2-normalised; ``lang`` for nllb models."""
        if lang is None:
            return super().embed_texts(texts)
        import torch

        from searchlite.models.base import l2_normalize

        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = []
        with torch.inference_mode(), self._autocast():
            for start in range(0, len(texts), self.batch_size):
                chunk = texts[start:start + self.batch_size]
                out.append(self._text_features(chunk, lang).float().cpu().numpy())
        return l2_normalize(np.concatenate(out))


class TransformPixels:
    """open_clip's torchvision transform as image -> float32 CHW array."""

    def __init__(self, transform) -> None:
        self.transform = transform

    def __call__(self, image: Image.Image) -> np.ndarray:
        return self.transform(image).numpy().astype(np.float32, copy=False)
