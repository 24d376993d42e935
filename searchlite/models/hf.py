"""Every transformers dual encoder of a family the zoo knows (SigLIP, SigLIP 2 fixed-res and NaFlex,
CLIP, ALIGN, Chinese-CLIP, MetaCLIP 2), exactly as the reference computes it.

The reference is the checkpoint's own processor and model: ``AutoProcessor.from_pretrained(ckpt)``
(PIL backend, the one the checkpoints were evaluated with) + ``AutoModel``. Images go through the
processor's image call and texts through its text call, so a processor's call defaults (SigLIP 2's
``max_num_patches``, ``padding="max_length"``, ``max_length=64``; ALIGN's padding) apply as in the
reference. The zoo adds only what the checkpoint files cannot say (``searchlite.models.zoo``):
the padding a processor without defaults needs (SigLIP's ``max_length`` 64, as the zero-shot pipeline
pads), lowercasing where the model was trained on lowercased text (SigLIP 2), the prompt template,
how scores become probabilities. The text tower receives exactly what the tokenizer emits (its
``model_input_names``): Google's SigLIP checkpoints pin ``["input_ids"]`` (no mask); a fine-tune
saved with transformers' defaults emits a mask, and then the tower gets it too.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from searchlite.errors import ModelLoadError
from searchlite.models.base import InputSize, ScoreParams, TorchEmbedder
from searchlite.models.light import prepare_text

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from searchlite.models.zoo import Family, ZooEntry

log = logging.getLogger(__name__)

#: Keys of the zoo's text rules that are tokenizer call arguments (the others prepare the text).
CALL_RULES = ("padding", "max_length")


def _offline_error(name: str, exc: BaseException) -> ModelLoadError:
    return ModelLoadError(
        f"cannot load model 'hf:{name}': its weights are not in the local Hugging Face cache and the hub "
        f"cannot be reached ({type(exc).__name__}). Connect to the internet once to download them, or pass "
        f"a local folder saved with save_pretrained: --model hf:/path/to/folder"
    )


def hf_family(model_type: str, tokenizer: Any) -> Family | None:
    """The zoo family of a transformers checkpoint: a family whose ``match`` names this model type
    and tokenizer class (SigLIP 2 fixed-res is a ``siglip`` checkpoint with a Gemma tokenizer), else
    the family named after the model type."""
    from searchlite.models.zoo import families

    name = type(tokenizer).__name__
    for fam in families().values():
        match = fam.match
        if match and match.get("model_type") == model_type and name in match.get("tokenizer", ()):
            return fam
    fam = families().get(model_type)
    return fam if fam is not None and fam.backend == "hf" else None


def input_size(image_processor: Any, kwargs: dict[str, Any]) -> InputSize:
    """What the image processor resizes to before any crop (the JPEG draft target)."""
    max_patches = kwargs.get("max_num_patches", getattr(image_processor, "max_num_patches", None))
    if max_patches:
        patch = int(kwargs.get("patch_size", getattr(image_processor, "patch_size", 16)))
        side = int(round(max_patches ** 0.5)) * patch
        return InputSize(side, side, patch, int(max_patches))
    size = image_processor.size
    size = dict(size) if not isinstance(size, dict) else size
    if size.get("shortest_edge"):
        edge = int(size["shortest_edge"])
        return InputSize(edge, edge)
    return InputSize(int(size["width"]), int(size["height"]))


class HFEmbedder(TorchEmbedder):
    """An Embedder backed by a transformers checkpoint (hub id or local folder)."""

    def __init__(self, source: str, model_id: str, device: str = "cpu", batch_size: int = 32,
                 precision: str = "auto", entry: ZooEntry | None = None) -> None:
        try:
            from transformers import AutoConfig, AutoModel, AutoProcessor
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            hf_logging.set_verbosity_error()  # config chatter; real load failures raise below
            # the SigLIP/T5 tokenizers warn "This sequence already has </s>" when a text (the precision
            # probes, a query) ends in the end token they then do not add again: expected, not news
            warnings.filterwarnings("ignore", message=r"This sequence already has ", category=UserWarning)
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
        from searchlite.models.zoo import families

        if config.model_type not in {f.match.get("model_type", f.name) for f in families().values()
                                     if f.backend == "hf"}:
            known = sorted({f.match.get("model_type", f.name) for f in families().values() if f.backend == "hf"})
            raise ModelLoadError(f"hf:{source} is a '{config.model_type}' checkpoint; searchlite supports "
                                 f"{', '.join(known)}")
        try:
            model = cached_first(AutoModel, trust_remote_code=False)
            processor = cached_first(AutoProcessor, backend="pil", trust_remote_code=False)
        except (OSError, ValueError) as exc:
            if local:
                raise ModelLoadError(f"cannot load the checkpoint in {source}: {exc}") from exc
            raise _offline_error(source, exc) from exc
        tokenizer = processor.tokenizer
        family = hf_family(config.model_type, tokenizer)
        if family is None:  # pragma: no cover - the model type check above admits only zoo families
            raise ModelLoadError(f"hf:{source}: no zoo family for model type {config.model_type!r}")

        model.eval().to(device)
        rules = {**family.text, **(entry.text if entry is not None else {})}
        # the processor's own call defaults (SigLIP 2, ALIGN) win over the zoo's padding rules
        own = dict(getattr(type(processor), "text_kwargs", {}) or {})
        self.text_rules = {k: v for k, v in rules.items() if k not in CALL_RULES}
        self.text_kwargs = {"truncation": True, **(own or {k: rules[k] for k in CALL_RULES if k in rules})}
        if self.text_kwargs.get("padding") == "longest":
            self.text_kwargs["padding"] = True
        context = getattr(getattr(config, "text_config", None), "max_position_embeddings", None)
        if context:  # never past the tower's own context (SigLIP 224/16 towers have 16 positions)
            self.text_kwargs["max_length"] = min(int(context), int(self.text_kwargs.get("max_length", context)))
        self.image_kwargs = dict(getattr(type(processor), "images_kwargs", {}) or {})

        super().__init__(
            model_id=model_id,
            family=family.name,
            template=(entry.template if entry is not None else family.templates[0]),
            score=score_params(model),
            image_size=(0, 0),
            preprocess_config=processor.image_processor.to_dict(),
            device=device,
            batch_size=batch_size,
            precision=precision,
        )
        self.input_size = input_size(processor.image_processor, self.image_kwargs)
        self.image_size = (self.input_size.width, self.input_size.height)
        self.probability = family.probability
        self.center = family.center
        self.model = model
        self.tokenizer = tokenizer
        self.processor = processor

    def preprocess(self, image: Image.Image) -> Any:
        return ProcessorPixels(self.processor)(image)

    def preprocessor(self) -> ProcessorPixels:
        """``preprocess`` without the model: picklable, for decode tasks in other processes."""
        return ProcessorPixels(self.processor)

    def tokenize(self, texts: list[str], return_tensors: str = "pt") -> dict[str, Any]:
        """Exactly what the reference feeds the text tower: the processor's text call (its own
        defaults, else the zoo's padding) on the prepared texts."""
        prepared = [prepare_text(t, self.text_rules) for t in texts]
        return dict(self.processor(text=prepared, return_tensors=return_tensors, **self.text_kwargs))

    def _image_features(self, pixels: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = pixels if isinstance(pixels, dict) else {"pixel_values": pixels}
        out = self.model.get_image_features(**inputs)
        return getattr(out, "pooler_output", out)

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        enc = {k: v.to(self.device) for k, v in self.tokenize(texts).items()}
        out = self.model.get_text_features(**enc)
        return getattr(out, "pooler_output", out)


def score_params(model: Any) -> ScoreParams:
    """How the checkpoint scales cosines to logits, read from its own parameters: SigLIP
    ``exp(logit_scale)`` and ``logit_bias``; ALIGN ``1 / temperature``; CLIP-like ``exp(logit_scale)``."""
    bias = getattr(model, "logit_bias", None)
    if bias is not None:
        return ScoreParams(scale=float(model.logit_scale.exp().item()), bias=float(bias.item()))
    temperature = getattr(model, "temperature", None)
    if temperature is not None:
        return ScoreParams(scale=float(1.0 / temperature.item()))
    return ScoreParams(scale=float(model.logit_scale.exp().item()))


class ProcessorPixels:
    """A transformers processor's image call as image -> model input: a float32 CHW array, or
    (NaFlex) a dict of fixed-shape arrays (patches padded to ``max_num_patches``, mask, shape)."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, image: Image.Image) -> Any:
        out = self.processor(images=image, return_tensors="np")
        arrays = {k: np.asarray(v)[0] for k, v in out.items()}
        if set(arrays) == {"pixel_values"}:
            return arrays["pixel_values"].astype(np.float32, copy=False)
        return {k: v.astype(np.float32, copy=False) if v.dtype.kind == "f" else v for k, v in arrays.items()}
